//! Pinning a pod's namespaces: fresh net, ipc and uts namespaces are created by a short-lived
//! thread (namespaces are per thread, so the daemon's other threads are untouched and no fork of
//! a multi-threaded process is needed) and bind-mounted from `/proc/self/task/<tid>/ns/*` onto
//! files under the sandbox's directory. The bind mounts keep the namespaces alive after the
//! thread exits, until [`unpin`].

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

use super::{NsKind, set_loopback_up};
use crate::error::{Error, Result};

/// The kinds a sandbox can pin, in the order they are created and removed.
const PINNABLE: [NsKind; 3] = [NsKind::Net, NsKind::Ipc, NsKind::Uts];

/// Linux's HOST_NAME_MAX.
const HOST_NAME_MAX: usize = 64;

/// Where a sandbox's pinned namespaces are; `None` for a kind that was not pinned (the pod
/// shares the host's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PinnedNamespaces {
    /// The pod's own user namespace, which owns the others (pods with `hostUsers: false`).
    pub user: Option<PathBuf>,
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
}

impl PinnedNamespaces {
    /// The pin of `kind`, if it was pinned.
    pub fn path(&self, kind: NsKind) -> Option<&Path> {
        match kind {
            NsKind::Net => self.net.as_deref(),
            NsKind::Ipc => self.ipc.as_deref(),
            NsKind::Uts => self.uts.as_deref(),
            NsKind::User => self.user.as_deref(),
            _ => None,
        }
    }

    /// The pins that exist under `dir`, e.g. after a daemon restart.
    pub fn load(dir: &Path) -> PinnedNamespaces {
        let existing = |kind: NsKind| {
            let path = dir.join(kind.proc_name());
            path.exists().then_some(path)
        };
        PinnedNamespaces {
            user: existing(NsKind::User),
            net: existing(NsKind::Net),
            ipc: existing(NsKind::Ipc),
            uts: existing(NsKind::Uts),
        }
    }
}

/// Creates fresh namespaces of `kinds` (net, ipc and uts only), sets `hostname` in the new uts
/// namespace, brings `lo` up in the new net namespace, and pins each at `dir/<net|ipc|uts>`.
/// On failure everything created is removed again.
pub fn pin(dir: &Path, kinds: &[NsKind], hostname: Option<&str>) -> Result<PinnedNamespaces> {
    let kinds = validate(kinds, hostname)?;
    let mut rollback = Rollback::new(dir);

    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create namespace dir", dir, e))?;
        rollback.dir_created = true;
    }
    let mut targets = Vec::with_capacity(kinds.len());
    for kind in &kinds {
        let path = dir.join(kind.proc_name());
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(_) => rollback.files.push(path.clone()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(Error::InvalidArgument(format!(
                    "cannot pin {kind} namespace at {}: the file exists (already pinned?)",
                    path.display()
                )));
            }
            Err(e) => return Err(Error::io("create namespace pin", &path, e)),
        }
        targets.push((*kind, path));
    }

    let flags = kinds
        .iter()
        .fold(CloneFlags::empty(), |f, k| f | k.clone_flag());
    let hostname_owned = hostname.map(str::to_owned);
    let thread_targets = targets.clone();
    std::thread::Builder::new()
        .name("bungeo-ns-pin".into())
        .spawn(move || pin_in_thread(flags, hostname_owned.as_deref(), &thread_targets))
        .map_err(|e| Error::io("spawn namespace pinning thread", dir, e))?
        .join()
        .map_err(|_| {
            Error::Child(format!(
                "namespace pinning thread for {} panicked",
                dir.display()
            ))
        })??;

    rollback.disarm();
    let mut pinned = PinnedNamespaces::default();
    for (kind, path) in targets {
        match kind {
            NsKind::Net => pinned.net = Some(path),
            NsKind::Ipc => pinned.ipc = Some(path),
            NsKind::Uts => pinned.uts = Some(path),
            _ => {}
        }
    }
    Ok(pinned)
}

fn validate(kinds: &[NsKind], hostname: Option<&str>) -> Result<Vec<NsKind>> {
    if let Some(bad) = kinds.iter().find(|k| !PINNABLE.contains(k)) {
        return Err(Error::InvalidArgument(format!(
            "cannot pin a {bad} namespace: only net, ipc and uts namespaces are pinned"
        )));
    }
    let kinds: Vec<NsKind> = PINNABLE.into_iter().filter(|k| kinds.contains(k)).collect();
    if kinds.is_empty() {
        return Err(Error::InvalidArgument(
            "no namespace kinds to pin".to_string(),
        ));
    }
    if let Some(name) = hostname {
        if !kinds.contains(&NsKind::Uts) {
            return Err(Error::InvalidArgument(format!(
                "hostname {name:?} needs a new uts namespace, which was not requested"
            )));
        }
        if name.is_empty() || name.len() > HOST_NAME_MAX || name.contains('\0') {
            return Err(Error::InvalidArgument(format!(
                "invalid hostname {name:?}: must be 1 to {HOST_NAME_MAX} bytes without NUL"
            )));
        }
    }
    Ok(kinds)
}

/// Runs on a thread of its own: its namespaces are replaced, so it must not be reused.
fn pin_in_thread(
    flags: CloneFlags,
    hostname: Option<&str>,
    targets: &[(NsKind, PathBuf)],
) -> Result<()> {
    unshare(flags).map_err(|e| Error::sys(format!("unshare {flags:?}"), e))?;
    if let Some(name) = hostname {
        nix::unistd::sethostname(name)
            .map_err(|e| Error::sys(format!("sethostname {name:?} in the new uts namespace"), e))?;
    }
    if flags.contains(CloneFlags::CLONE_NEWNET) {
        set_loopback_up()?;
    }
    let tid = nix::unistd::gettid();
    for (kind, target) in targets {
        let source = format!("/proc/self/task/{tid}/ns/{}", kind.proc_name());
        mount(
            Some(source.as_str()),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| Error::sys(format!("bind mount {source} on {}", target.display()), e))?;
    }
    Ok(())
}

/// Pins the pid namespace of process `pid` at `dir/pid` (a pid namespace cannot be created
/// by a thread for itself: it takes a process that lives in it, such as the sandbox's infra).
/// [`unpin`] removes it with the others.
pub fn pin_pid_namespace_of(dir: &Path, pid: i32) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create namespace dir", dir, e))?;
    let target = dir.join(NsKind::Pid.proc_name());
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&target)
    {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            return Err(Error::InvalidArgument(format!(
                "cannot pin pid namespace at {}: the file exists (already pinned?)",
                target.display()
            )));
        }
        Err(e) => return Err(Error::io("create namespace pin", &target, e)),
    }
    let source = format!("/proc/{pid}/ns/pid");
    if let Err(e) = mount(
        Some(source.as_str()),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    ) {
        let _ = std::fs::remove_file(&target);
        return Err(Error::sys(
            format!("bind mount {source} on {}", target.display()),
            e,
        ));
    }
    Ok(target)
}

/// Undoes a partial [`pin`] when dropped armed.
struct Rollback<'a> {
    dir: &'a Path,
    dir_created: bool,
    files: Vec<PathBuf>,
    armed: bool,
}

impl<'a> Rollback<'a> {
    fn new(dir: &'a Path) -> Self {
        Rollback {
            dir,
            dir_created: false,
            files: Vec::new(),
            armed: true,
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for file in &self.files {
            if let Err(e) = unmount_all(file) {
                tracing::warn!(error = %e, "rolling back namespace pin");
            }
            if let Err(e) = std::fs::remove_file(file) {
                tracing::warn!(path = %file.display(), error = %e, "rolling back namespace pin");
            }
        }
        if self.dir_created
            && let Err(e) = std::fs::remove_dir(self.dir)
        {
            tracing::warn!(path = %self.dir.display(), error = %e, "rolling back namespace pin");
        }
    }
}

/// Unmounts every mount stacked on `path`; a path that is no mount point is fine.
fn unmount_all(path: &Path) -> Result<()> {
    // A pin is mounted once; the bound only guards against a loop on a misbehaving kernel.
    for _ in 0..16 {
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => return Ok(()),
            Err(e) => {
                return Err(Error::sys(format!("umount {}", path.display()), e));
            }
        }
    }
    Err(Error::sys(
        format!("umount {}: still mounted after 16 unmounts", path.display()),
        Errno::EBUSY,
    ))
}

/// Unmounts and removes the pins under `dir` and `dir` itself. Missing pins are fine, so this
/// can be repeated after a partial failure or a crash.
pub fn unpin(dir: &Path) -> Result<()> {
    // The user namespace last: it owns the others.
    for kind in PINNABLE.into_iter().chain([NsKind::Pid, NsKind::User]) {
        let path = dir.join(kind.proc_name());
        unmount_all(&path)?;
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove namespace pin", &path, e)),
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove namespace dir", dir, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespaces::forked::in_forked_child;
    use crate::namespaces::{join, loopback_is_up, same_namespace};

    /// Unpins on drop so a failing assertion leaves no mounts behind.
    struct Unpin(PathBuf);

    impl Drop for Unpin {
        fn drop(&mut self) {
            let _ = unpin(&self.0);
        }
    }

    fn is_mounted(path: &Path) -> bool {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let needle = path.to_string_lossy();
        mountinfo
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(needle.as_ref()))
    }

    #[test]
    fn validate_rejects_unpinnable_kinds_and_bad_hostnames() {
        assert!(validate(&[NsKind::Pid], None).is_err());
        assert!(validate(&[], None).is_err());
        assert!(validate(&[NsKind::Net], Some("host")).is_err());
        assert!(validate(&[NsKind::Uts], Some("")).is_err());
        assert!(validate(&[NsKind::Uts], Some(&"a".repeat(65))).is_err());
        let kinds = validate(&[NsKind::Uts, NsKind::Net, NsKind::Net], Some("pod-a")).expect("ok");
        assert_eq!(kinds, [NsKind::Net, NsKind::Uts]);
    }

    #[test]
    fn pin_creates_fresh_namespaces_and_unpin_removes_them() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("sandbox-a");
        let _guard = Unpin(dir.clone());

        let pinned = pin(
            &dir,
            &[NsKind::Net, NsKind::Ipc, NsKind::Uts],
            Some("pod-hostname"),
        )
        .expect("pin");
        assert_eq!(pinned, PinnedNamespaces::load(&dir));
        for kind in PINNABLE {
            let path = pinned.path(kind).expect("pinned");
            assert_eq!(path, dir.join(kind.proc_name()));
            assert!(is_mounted(path), "{} not mounted", path.display());
            let own = PathBuf::from(format!("/proc/self/ns/{}", kind.proc_name()));
            assert!(
                !same_namespace(path, &own).expect("stat"),
                "{kind} is the host's"
            );
        }

        let uts = dir.join("uts");
        let hostname = in_forked_child(|| {
            join(&uts, NsKind::Uts).map_err(|e| e.to_string())?;
            Ok(nix::sys::utsname::uname()
                .map_err(|e| e.to_string())?
                .nodename()
                .to_string_lossy()
                .into_owned())
        })
        .expect("child");
        assert_eq!(hostname, "pod-hostname");
        assert_ne!(
            nix::sys::utsname::uname().expect("uname").nodename(),
            "pod-hostname"
        );

        let net = dir.join("net");
        let lo = in_forked_child(|| {
            join(&net, NsKind::Net).map_err(|e| e.to_string())?;
            let up = loopback_is_up().map_err(|e| e.to_string())?;
            // A fresh namespace has only lo: no host interface may be visible.
            let ifaces: Vec<String> = std::fs::read_to_string("/proc/self/net/dev")
                .map_err(|e| e.to_string())?
                .lines()
                .skip(2)
                .filter_map(|l| l.split(':').next().map(|s| s.trim().to_string()))
                .collect();
            Ok(format!("{up} {}", ifaces.join(",")))
        })
        .expect("child");
        assert_eq!(lo, "true lo");

        unpin(&dir).expect("unpin");
        assert!(!dir.exists());
        for kind in PINNABLE {
            assert!(!is_mounted(&dir.join(kind.proc_name())));
        }
        unpin(&dir).expect("unpin is idempotent");
    }

    #[test]
    fn pin_pid_namespace_of_a_process_and_unpin_removes_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("sandbox-pid");
        let _guard = Unpin(dir.clone());
        let me = i32::try_from(std::process::id()).expect("pid");
        let pinned = pin_pid_namespace_of(&dir, me).expect("pin pid namespace");
        assert_eq!(pinned, dir.join("pid"));
        assert!(is_mounted(&pinned));
        assert!(same_namespace(&pinned, Path::new("/proc/self/ns/pid")).expect("stat"));
        assert!(pin_pid_namespace_of(&dir, me).is_err(), "pinned twice");
        unpin(&dir).expect("unpin");
        assert!(!is_mounted(&pinned));
        assert!(!dir.exists());
    }

    #[test]
    fn pin_only_requested_kinds_and_refuse_to_pin_twice() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("sandbox-b");
        let _guard = Unpin(dir.clone());

        let pinned = pin(&dir, &[NsKind::Ipc], None).expect("pin");
        assert!(pinned.net.is_none() && pinned.uts.is_none());
        assert!(!dir.join("net").exists());

        let err = pin(&dir, &[NsKind::Ipc, NsKind::Net], None).expect_err("pinned twice");
        assert!(err.to_string().contains("already pinned"), "{err}");
        // The failed attempt must not have touched the existing pin.
        assert!(is_mounted(&dir.join("ipc")));
        assert!(!dir.join("net").exists());
        unpin(&dir).expect("unpin");
        assert!(!dir.exists());
    }

    #[test]
    fn failed_pin_rolls_back() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("sandbox-c");
        let _guard = Unpin(dir.clone());
        // A directory where the uts pin would go: creating that pin fails after net's was made.
        std::fs::create_dir(&dir).expect("dir");
        std::fs::create_dir(dir.join("uts")).expect("blocker");
        let err = pin(&dir, &[NsKind::Net, NsKind::Uts], Some("x")).expect_err("blocked");
        assert!(err.to_string().contains("uts"), "{err}");
        assert!(!dir.join("net").exists(), "net pin not rolled back");
        assert!(dir.exists(), "a directory that existed before must stay");
    }
}
