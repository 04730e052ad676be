//! User namespaces with given id mappings, made outside any container: for a pod's pinned user
//! namespace and for the idmapped-mount probes. A multi-threaded process cannot unshare a user
//! namespace, so a forked child does it and waits while its parent writes the maps and takes a
//! reference (an fd, or a bind mount of `/proc/<child>/ns/user`); then the child is killed.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid, fork};

use super::{NsKind, PinnedNamespaces};
use crate::error::{Error, Result};

/// One line of a `uid_map` or `gid_map`: `size` ids from `container_id` on map to `host_id` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub container_id: u32,
    pub host_id: u32,
    pub size: u32,
}

/// The text the kernel takes in `/proc/<pid>/{uid,gid}_map`.
pub fn map_text(maps: &[IdMap]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.size))
        .collect()
}

/// A child sitting in a fresh user namespace; killed and reaped on drop.
struct Holder {
    pid: Pid,
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = kill(self.pid, Signal::SIGKILL);
        let _ = waitpid(self.pid, None);
    }
}

fn errno_byte(e: Errno) -> u8 {
    u8::try_from(e as i32).unwrap_or(u8::MAX)
}

fn read_code(pipe: &mut File, child: Pid, step: &str) -> Result<()> {
    let mut code = [0u8; 1];
    pipe.read_exact(&mut code)
        .map_err(|e| Error::io("read from", format!("user namespace child {child}"), e))?;
    if code[0] != 0 {
        return Err(Error::sys(
            step.to_owned(),
            Errno::from_raw(i32::from(code[0])),
        ));
    }
    Ok(())
}

/// Closes every fd from 3 up except `keep` (close_range, async-signal-safe).
fn close_all_but(keep: &[i32]) {
    let mut keep: Vec<u32> = keep.iter().filter_map(|k| u32::try_from(*k).ok()).collect();
    keep.sort_unstable();
    let mut from: u32 = 3;
    for k in keep.into_iter().chain([u32::MAX]) {
        if k > from {
            // SAFETY: close_range only closes descriptors of this (forked) process.
            unsafe { libc::syscall(libc::SYS_close_range, from, k - 1, 0) };
        }
        from = k.saturating_add(1);
    }
}

/// Forks a child that unshares a user namespace; `maps` writes its id maps; then the child
/// runs `then` in it (as the namespace's owner, with every capability there) and waits to be
/// killed. `then` must stick to syscalls: it runs in the child of a multi-threaded process.
fn spawn_holder(
    uids: &[IdMap],
    gids: &[IdMap],
    then: &dyn Fn() -> std::result::Result<(), Errno>,
) -> Result<Holder> {
    let (from_child, to_parent) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::sys("pipe2 for a user namespace", e))?;
    let (from_parent, to_child) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::sys("pipe2 for a user namespace", e))?;
    // SAFETY: the child only makes syscalls (unshare, read, write, what `then` does, pause,
    // _exit), so forking a multi-threaded daemon is sound; it never returns into the parent's
    // code.
    match unsafe { fork() }.map_err(|e| Error::sys("fork for a user namespace", e))? {
        ForkResult::Child => {
            drop(from_child);
            drop(to_child);
            // Hold nothing of the parent's (sockets, pipes of other children) while waiting.
            close_all_but(&[to_parent.as_raw_fd(), from_parent.as_raw_fd()]);
            let mut up = File::from(to_parent);
            let mut down = File::from(from_parent);
            let code = match unshare(CloneFlags::CLONE_NEWUSER) {
                Ok(()) => 0,
                Err(e) => errno_byte(e),
            };
            let _ = up.write_all(&[code]);
            let mut go = [0u8; 1];
            if code == 0 && down.read_exact(&mut go).is_ok() {
                let code = match then() {
                    Ok(()) => 0,
                    Err(e) => errno_byte(e),
                };
                let _ = up.write_all(&[code]);
            }
            loop {
                // SAFETY: pause only sleeps until a signal (the parent's SIGKILL) arrives.
                unsafe { libc::pause() };
            }
        }
        ForkResult::Parent { child } => {
            drop(to_parent);
            drop(from_parent);
            let holder = Holder { pid: child };
            let mut up = File::from(from_child);
            let mut down = File::from(to_child);
            read_code(&mut up, child, "unshare a user namespace")?;
            write_maps(child, uids, gids)?;
            down.write_all(&[1])
                .map_err(|e| Error::io("write to", format!("user namespace child {child}"), e))?;
            read_code(
                &mut up,
                child,
                "set up namespaces in the new user namespace",
            )?;
            Ok(holder)
        }
    }
}

fn write_maps(pid: Pid, uids: &[IdMap], gids: &[IdMap]) -> Result<()> {
    for (file, maps) in [("uid_map", uids), ("gid_map", gids)] {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, map_text(maps)).map_err(|e| Error::io("write", &path, e))?;
    }
    Ok(())
}

/// A new user namespace with these mappings, held by the returned fd (usable as the
/// `userns_fd` of an idmapped mount or with setns).
pub fn new_user_namespace(uids: &[IdMap], gids: &[IdMap]) -> Result<OwnedFd> {
    let holder = spawn_holder(uids, gids, &|| Ok(()))?;
    let path = format!("/proc/{}/ns/user", holder.pid);
    let f = File::open(&path).map_err(|e| Error::io("open", &path, e))?;
    Ok(OwnedFd::from(f))
}

/// Creates a pod's user namespace with these mappings and, owned by it, fresh namespaces of
/// `kinds` (net, ipc, uts: so the pod's root administers its own network, hostname and IPC,
/// as containerd 2 and CRI-O do), with `hostname` set and `lo` up; pins all of them at
/// `dir/<user|net|ipc|uts>`. On failure everything made is removed again; [`super::unpin`]
/// removes them later.
pub fn pin_in_user_namespace(
    dir: &Path,
    uids: &[IdMap],
    gids: &[IdMap],
    kinds: &[NsKind],
    hostname: Option<&str>,
) -> Result<PinnedNamespaces> {
    if let Some(bad) = kinds
        .iter()
        .find(|k| !matches!(k, NsKind::Net | NsKind::Ipc | NsKind::Uts))
    {
        return Err(Error::InvalidArgument(format!(
            "cannot pin a {bad} namespace in a pod user namespace"
        )));
    }
    if hostname.is_some() && !kinds.contains(&NsKind::Uts) {
        return Err(Error::InvalidArgument(
            "a hostname needs a new uts namespace".to_owned(),
        ));
    }
    let hostname_c = hostname
        .map(|h| {
            std::ffi::CString::new(h)
                .map_err(|_| Error::InvalidArgument(format!("hostname {h:?} contains NUL")))
        })
        .transpose()?;
    let flags = kinds
        .iter()
        .fold(CloneFlags::empty(), |f, k| f | k.clone_flag());
    let then = || -> std::result::Result<(), Errno> {
        unshare(flags)?;
        if let Some(h) = &hostname_c {
            // SAFETY: sethostname reads `len` bytes of the NUL-terminated name.
            let r = unsafe { libc::sethostname(h.as_ptr(), h.as_bytes().len()) };
            Errno::result(r)?;
        }
        if flags.contains(CloneFlags::CLONE_NEWNET) {
            super::set_loopback_up().map_err(|e| match e {
                Error::Sys { source, .. } => source,
                _ => Errno::EIO,
            })?;
        }
        Ok(())
    };
    let holder = spawn_holder(uids, gids, &then)?;

    let created_dir = !dir.exists();
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create namespace dir", dir, e))?;
    let mut pinned = PinnedNamespaces::default();
    let mut done: Vec<PathBuf> = Vec::new();
    let all: Vec<NsKind> = std::iter::once(NsKind::User)
        .chain(kinds.iter().copied())
        .collect();
    let result = (|| -> Result<()> {
        for kind in &all {
            let target = dir.join(kind.proc_name());
            File::options()
                .write(true)
                .create_new(true)
                .open(&target)
                .map_err(|e| Error::io("create namespace pin", &target, e))?;
            done.push(target.clone());
            let source = format!("/proc/{}/ns/{}", holder.pid, kind.proc_name());
            mount(
                Some(source.as_str()),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| Error::sys(format!("bind mount {source} on {}", target.display()), e))?;
            match kind {
                NsKind::User => pinned.user = Some(target),
                NsKind::Net => pinned.net = Some(target),
                NsKind::Ipc => pinned.ipc = Some(target),
                NsKind::Uts => pinned.uts = Some(target),
                _ => {}
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        for t in &done {
            let _ = nix::mount::umount2(t, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(t);
        }
        if created_dir {
            let _ = std::fs::remove_dir(dir);
        }
        return Err(e);
    }
    Ok(pinned)
}

/// Reads a process's or pinned namespace's `uid_map`-style file back into mappings.
pub fn parse_map(text: &str) -> Vec<IdMap> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().map(str::parse::<u32>);
            Some(IdMap {
                container_id: f.next()?.ok()?,
                host_id: f.next()?.ok()?,
                size: f.next()?.ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_render_and_parse_back() {
        let m = [
            IdMap {
                container_id: 0,
                host_id: 100_000,
                size: 65_536,
            },
            IdMap {
                container_id: 65_536,
                host_id: 7,
                size: 1,
            },
        ];
        let text = map_text(&m);
        assert_eq!(text, "0 100000 65536\n65536 7 1\n");
        assert_eq!(parse_map(&format!("  {text}garbage\n")), m);
    }

    #[test]
    fn a_new_user_namespace_has_the_maps() {
        if !nix::unistd::geteuid().is_root() {
            crate::test_skip::skip("root", "writes id maps of a new user namespace");
            return;
        }
        let map = [IdMap {
            container_id: 0,
            host_id: 2_000_000,
            size: 1000,
        }];
        let fd = new_user_namespace(&map, &map).unwrap();
        // The fd keeps the namespace after its child is gone; another process can read it.
        let link = std::fs::read_link(format!("/proc/self/fd/{}", {
            use std::os::fd::AsRawFd;
            fd.as_raw_fd()
        }))
        .unwrap();
        assert!(link.to_string_lossy().starts_with("user:["), "{link:?}");
        let own = std::fs::read_link("/proc/self/ns/user").unwrap();
        assert_ne!(link, own);
    }

    #[test]
    fn pod_namespaces_are_owned_by_the_pod_user_namespace() {
        use std::os::fd::{AsRawFd, FromRawFd};
        use std::os::unix::fs::MetadataExt;
        if !nix::unistd::geteuid().is_root() {
            crate::test_skip::skip("root", "writes id maps of a new user namespace");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ns");
        let map = [IdMap {
            container_id: 0,
            host_id: 2_100_000,
            size: 65_536,
        }];
        let pinned = pin_in_user_namespace(
            &dir,
            &map,
            &map,
            &[NsKind::Net, NsKind::Uts, NsKind::Ipc],
            Some("pod-a"),
        )
        .unwrap();
        struct Unpin(PathBuf);
        impl Drop for Unpin {
            fn drop(&mut self) {
                let _ = crate::namespaces::unpin(&self.0);
            }
        }
        let _unpin = Unpin(dir.clone());
        let user = pinned.user.clone().unwrap();
        let user_ino = std::fs::metadata(&user).unwrap().ino();
        for ns in [&pinned.net, &pinned.uts, &pinned.ipc] {
            let f = File::open(ns.as_ref().unwrap()).unwrap();
            // NS_GET_USERNS: the user namespace owning this namespace.
            // SAFETY: the ioctl takes no argument and returns a new fd or -1.
            let owner = unsafe { libc::ioctl(f.as_raw_fd(), 0xb701) };
            assert!(owner >= 0, "{}", std::io::Error::last_os_error());
            // SAFETY: `owner` is a new fd the ioctl returned.
            let owner = unsafe { File::from_raw_fd(owner) };
            assert_eq!(owner.metadata().unwrap().ino(), user_ino);
        }
        assert!(dir.join("user").exists() && dir.join("net").exists());
        drop(_unpin);
        assert!(!dir.exists());
    }
}
