//! Writes into procfs that a container cannot redirect (the CVE-2025-52881 class): a file is
//! opened with openat2 relative to a procfs root the runtime verified itself (a fresh detached
//! proc mount where the kernel allows one, else a `/proc` checked to be the root of a procfs),
//! never following a symlink, never crossing into a mount stacked below that root, and the
//! opened file is checked to be on procfs before anything is written to it.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, OFlag, OpenHow, ResolveFlag, openat2};

use crate::syscall::mount_api;
use crate::{Error, Result};

/// `f_type` of a procfs (linux/magic.h).
pub const PROC_SUPER_MAGIC: i64 = 0x9fa0;
/// The inode number of a procfs's root directory (fs/proc/internal.h).
const PROC_ROOT_INO: u64 = 1;

/// A verified procfs root, the only way the runtime writes into procfs in a container's
/// context.
#[derive(Debug)]
pub struct ProcRoot {
    fd: OwnedFd,
}

/// The filesystem magic of what `fd` refers to.
pub fn fs_magic(fd: BorrowedFd<'_>) -> nix::Result<i64> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: fstatfs fills the struct it is given a valid pointer to; fd is a live descriptor.
    let r = unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) };
    if r < 0 {
        return Err(Errno::last());
    }
    // SAFETY: fstatfs returned 0, so it initialised the struct.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64)
}

impl ProcRoot {
    /// A fresh procfs of the caller's pid namespace (fsopen/fsmount, detached: nothing in any
    /// mount namespace can stack on it), else the one at `/proc` once verified.
    pub fn open() -> Result<Self> {
        match Self::fresh() {
            Ok(r) => Ok(r),
            Err(_) => Self::at(Path::new("/proc")),
        }
    }

    /// A fresh detached procfs made with the new mount API.
    pub fn fresh() -> Result<Self> {
        let fd = mount_api::new_fs("proc", &[])?;
        Self::verify(fd, Path::new("(fresh proc mount)"))
    }

    /// The procfs mounted at `path`, which must be the root directory of a procfs reached
    /// without any symlink.
    pub fn at(path: &Path) -> Result<Self> {
        let fd = openat2(
            AT_FDCWD,
            path,
            OpenHow::new()
                .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
                .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS),
        )
        .map_err(|e| Error::sys(format!("open procfs root {}", path.display()), e))?;
        Self::verify(fd, path)
    }

    fn verify(fd: OwnedFd, what: &Path) -> Result<Self> {
        let magic = fs_magic(fd.as_fd())
            .map_err(|e| Error::sys(format!("fstatfs {}", what.display()), e))?;
        if magic != PROC_SUPER_MAGIC {
            return Err(Error::InvalidSpec(format!(
                "{} is not a procfs (filesystem magic {magic:#x}); refusing to write through it",
                what.display()
            )));
        }
        let st = nix::sys::stat::fstat(&fd)
            .map_err(|e| Error::sys(format!("fstat {}", what.display()), e))?;
        if st.st_ino != PROC_ROOT_INO {
            return Err(Error::InvalidSpec(format!(
                "{} is inside a procfs, not its root; refusing to write through it",
                what.display()
            )));
        }
        Ok(Self { fd })
    }

    /// Opens `rel` (relative, no `..`) below this root with `flags`, refusing symlinks,
    /// magic links and mount crossings on the way, and checks the result is on procfs.
    pub fn open_file(&self, rel: &Path, flags: OFlag) -> Result<OwnedFd> {
        let plain = rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !plain || CString::new(rel.as_os_str().as_bytes()).is_err() {
            return Err(Error::InvalidArgument(format!(
                "procfs path {} must be relative and without `..`",
                rel.display()
            )));
        }
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS
                    | ResolveFlag::RESOLVE_NO_XDEV,
            );
        let shown = || format!("/proc/{}", rel.display());
        let fd = openat2(self.fd.as_fd(), rel, how).map_err(|e| match e {
            Errno::ELOOP | Errno::EXDEV => Error::sys(
                format!(
                    "open {}: a symlink or a mount is in the way (refusing to leave procfs)",
                    shown()
                ),
                e,
            ),
            e => Error::sys(format!("open {}", shown()), e),
        })?;
        let magic =
            fs_magic(fd.as_fd()).map_err(|e| Error::sys(format!("fstatfs {}", shown()), e))?;
        if magic != PROC_SUPER_MAGIC {
            return Err(Error::InvalidSpec(format!(
                "{} is not on procfs (filesystem magic {magic:#x}); refusing to write it",
                shown()
            )));
        }
        Ok(fd)
    }

    /// Writes `value` to the procfs file `rel` in one write(2), as procfs expects.
    pub fn write(&self, rel: &Path, value: &[u8]) -> Result<()> {
        let fd = self.open_file(rel, OFlag::O_WRONLY)?;
        let n = nix::unistd::write(&fd, value)
            .map_err(|e| Error::sys(format!("write /proc/{}", rel.display()), e))?;
        if n != value.len() {
            return Err(Error::sys(
                format!(
                    "write /proc/{}: short write ({n} of {} bytes)",
                    rel.display(),
                    value.len()
                ),
                Errno::EIO,
            ));
        }
        Ok(())
    }

    /// [`Self::write`] to the calling process's own `/proc/<pid>/<rel>`, named by its pid in
    /// this procfs's pid namespace (`self` is a symlink, which the lookup refuses to follow).
    pub fn write_own(&self, rel: &Path, value: &[u8]) -> Result<()> {
        let pid = nix::unistd::getpid();
        self.write(&Path::new(&pid.to_string()).join(rel), value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespaces::forked::in_forked_child;

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn a_directory_that_is_not_procfs_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = ProcRoot::at(dir.path()).unwrap_err();
        assert!(e.to_string().contains("not a procfs"), "{e}");
        let e = ProcRoot::at(Path::new("/proc/sys")).unwrap_err();
        assert!(e.to_string().contains("not its root"), "{e}");
        let link = dir.path().join("proc");
        std::os::unix::fs::symlink("/proc", &link).unwrap();
        let e = ProcRoot::at(&link).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Sys {
                    source: Errno::ELOOP,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn symlinks_and_dotdot_inside_procfs_are_refused() {
        let proc = ProcRoot::at(Path::new("/proc")).unwrap();
        // `self` and `net` are symlinks in every procfs.
        let e = proc
            .open_file(Path::new("self/status"), OFlag::O_RDONLY)
            .unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        let e = proc
            .open_file(Path::new("net/dev"), OFlag::O_RDONLY)
            .unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        assert!(
            proc.open_file(Path::new("../etc/passwd"), OFlag::O_RDONLY)
                .is_err()
        );
        assert!(
            proc.open_file(Path::new("/etc/passwd"), OFlag::O_RDONLY)
                .is_err()
        );
        // What is plainly there opens.
        proc.open_file(Path::new("sys/kernel/ostype"), OFlag::O_RDONLY)
            .unwrap();
        let pid = nix::unistd::getpid().to_string();
        proc.open_file(&Path::new(&pid).join("status"), OFlag::O_RDONLY)
            .unwrap();
    }

    /// Root only: in a child with its own mount and network namespaces, a host directory
    /// bound over `/proc/sys/net/ipv4` holds `ip_unprivileged_port_start` as a symlink to
    /// `/proc/sys/kernel/core_pattern`. Writing through `/proc` refuses to cross that mount;
    /// a fresh procfs ignores it and writes the real sysctl; `core_pattern` never changes.
    #[test]
    fn a_mount_over_proc_sys_cannot_redirect_a_write() {
        if !root() {
            eprintln!("skipped: needs root (mount and network namespaces)");
            return;
        }
        let core = Path::new("/proc/sys/kernel/core_pattern");
        let before = std::fs::read(core).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(core, dir.path().join("ip_unprivileged_port_start")).unwrap();
        let src = dir.path().to_path_buf();
        let out = in_forked_child(move || {
            use nix::sched::{CloneFlags, unshare};
            unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("unshare: {e}"))?;
            let none: Option<&str> = None;
            nix::mount::mount(
                none,
                "/",
                none,
                nix::mount::MsFlags::MS_PRIVATE | nix::mount::MsFlags::MS_REC,
                none,
            )
            .map_err(|e| format!("make / private: {e}"))?;
            nix::mount::mount(
                Some(&src),
                "/proc/sys/net/ipv4",
                none,
                nix::mount::MsFlags::MS_BIND,
                none,
            )
            .map_err(|e| format!("bind: {e}"))?;
            let rel = Path::new("sys/net/ipv4/ip_unprivileged_port_start");
            let via_proc =
                match ProcRoot::at(Path::new("/proc")).and_then(|p| p.write(rel, b"1000")) {
                    Ok(()) => "written".to_string(),
                    Err(e) => e.to_string(),
                };
            let fresh = ProcRoot::fresh().and_then(|p| p.write(rel, b"1000"));
            let fresh = match fresh {
                Ok(()) => "written".to_string(),
                Err(e) => e.to_string(),
            };
            // What the container's init does with the spec's sysctls.
            let sysctls = [(
                "net.ipv4.ip_unprivileged_port_start".to_string(),
                "1000".to_string(),
            )]
            .into_iter()
            .collect();
            crate::process_settings::apply_sysctls(&sysctls).map_err(|e| e.to_string())?;
            let fd = ProcRoot::fresh()
                .and_then(|p| p.open_file(rel, OFlag::O_RDONLY))
                .map_err(|e| e.to_string())?;
            let set = std::io::read_to_string(std::fs::File::from(fd))
                .map_err(|e| format!("read back: {e}"))?;
            Ok(format!("{via_proc}\n{fresh}\n{}", set.trim()))
        });
        let after = std::fs::read(core).unwrap();
        if after != before {
            std::fs::write(core, &before).unwrap();
            panic!(
                "core_pattern was changed to {:?}",
                String::from_utf8_lossy(&after)
            );
        }
        let out = out.unwrap();
        let lines: Vec<&str> = out.split('\n').collect();
        assert!(lines[0].contains("refusing to leave procfs"), "{out}");
        assert_eq!(lines[1], "written", "{out}");
        // The new network namespace's own sysctl got the value, not the host's core_pattern.
        assert_eq!(lines[2], "1000", "{out}");
    }
}
