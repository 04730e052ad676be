//! What this kernel can do for the pod features the CRI advertises per runtime handler:
//! recursive read-only mounts (`mount_setattr(MOUNT_ATTR_RDONLY, AT_RECURSIVE)`) and idmapped
//! mounts (`MOUNT_ATTR_IDMAP`) on the filesystems containers use. Each probe works on detached
//! mounts (fsmount, open_tree clones) that live in no mount namespace, so it changes nothing on
//! the host and needs no private mount namespace. Run once at daemon start; a probe that fails
//! says why, and the daemon advertises the feature only when the probe and the implementation
//! agree.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::sys::stat::{Mode, fstat, mkdirat};
use serde::Serialize;

use crate::namespaces::userns::{IdMap, new_user_namespace};
use crate::syscall::mount_api::{Param, clone_tree, new_fs, new_fs_with, setattr_fd};
use crate::{Error, Result};

/// Outcome of one probe: supported, or the reason it is not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "supported", content = "reason")]
pub enum Support {
    #[serde(rename = "yes")]
    Yes,
    #[serde(rename = "no")]
    No(String),
}

impl Support {
    pub fn is_yes(&self) -> bool {
        matches!(self, Support::Yes)
    }

    fn from_result(r: Result<()>) -> Support {
        match r {
            Ok(()) => Support::Yes,
            Err(e) => Support::No(crate::syscall::describe(&e)),
        }
    }
}

/// What the kernel probes found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelFeatures {
    /// `mount_setattr(MOUNT_ATTR_RDONLY, AT_RECURSIVE)` makes a mount tree read-only.
    pub recursive_read_only: Support,
    /// An unprivileged user namespace with a given mapping can be created.
    pub user_namespaces: Support,
    /// A tmpfs mount can be idmapped (pod shm, emptyDir in memory).
    pub idmap_tmpfs: Support,
    /// A bind of the root directory's filesystem can be idmapped (volumes, sandbox files).
    pub idmap_root_fs: Support,
    /// An overlay (a container rootfs) can be made over idmapped layers.
    pub idmap_overlay: Support,
}

impl KernelFeatures {
    /// Whether every idmapped-mount probe a pod in its own user namespace needs succeeded.
    pub fn idmapped_mounts(&self) -> bool {
        self.user_namespaces.is_yes()
            && self.idmap_tmpfs.is_yes()
            && self.idmap_root_fs.is_yes()
            && self.idmap_overlay.is_yes()
    }
}

/// The probes' mapping: container ids 0..65536 at a host range no real user has.
const PROBE_HOST_BASE: u32 = 3_000_000_000;
const PROBE_SIZE: u32 = 65_536;

static PROBED: OnceLock<KernelFeatures> = OnceLock::new();
static RECURSIVE_READ_ONLY: OnceLock<Support> = OnceLock::new();

/// Whether `mount_setattr(MOUNT_ATTR_RDONLY, AT_RECURSIVE)` works here, probed once per process
/// (the check for a CRI mount asking for `recursive_read_only`).
pub fn recursive_read_only_supported() -> bool {
    RECURSIVE_READ_ONLY
        .get_or_init(|| Support::from_result(probe_recursive_read_only()))
        .is_yes()
}

/// Probes once per process with `root` as the directory holding layers and container dirs;
/// later calls return the first answer whatever `root` they pass.
pub fn probe_once(root: &Path) -> &'static KernelFeatures {
    PROBED.get_or_init(|| probe(root))
}

/// The answer of [`probe_once`], if it ran in this process.
pub fn probed() -> Option<&'static KernelFeatures> {
    PROBED.get()
}

/// Runs every probe now. `root` must exist; a scratch directory is made and removed in it.
pub fn probe(root: &Path) -> KernelFeatures {
    let recursive_read_only = RECURSIVE_READ_ONLY
        .get_or_init(|| Support::from_result(probe_recursive_read_only()))
        .clone();
    let userns = new_user_namespace(&[probe_map()], &[probe_map()]);
    let (user_namespaces, idmap_tmpfs, idmap_root_fs, idmap_overlay) = match &userns {
        Err(e) => {
            let no = Support::No(format!(
                "no user namespace: {}",
                crate::syscall::describe(e)
            ));
            (no.clone(), no.clone(), no.clone(), no)
        }
        Ok(ns) => (
            Support::Yes,
            Support::from_result(probe_idmap_tmpfs(ns.as_fd())),
            Support::from_result(probe_idmap_path(root, ns.as_fd())),
            Support::from_result(probe_idmap_overlay(root, ns.as_fd())),
        ),
    };
    let found = KernelFeatures {
        recursive_read_only,
        user_namespaces,
        idmap_tmpfs,
        idmap_root_fs,
        idmap_overlay,
    };
    tracing::info!(features = ?found, "kernel feature probe");
    found
}

fn probe_map() -> IdMap {
    IdMap {
        container_id: 0,
        host_id: PROBE_HOST_BASE,
        size: PROBE_SIZE,
    }
}

fn dir_mode() -> Mode {
    Mode::from_bits_truncate(0o755)
}

fn probe_recursive_read_only() -> Result<()> {
    let mnt = new_fs("tmpfs", &[("size", "64k")])?;
    mkdirat(mnt.as_fd(), "before", dir_mode()).map_err(|e| Error::sys("mkdir in tmpfs", e))?;
    setattr_fd(mnt.as_fd(), true, libc::MOUNT_ATTR_RDONLY, 0, None)?;
    match mkdirat(mnt.as_fd(), "after", dir_mode()) {
        Err(Errno::EROFS) => Ok(()),
        Err(e) => Err(Error::sys("mkdir after mount_setattr(rro)", e)),
        Ok(()) => Err(Error::Unsupported(
            "the mount stayed writable after mount_setattr(MOUNT_ATTR_RDONLY, AT_RECURSIVE)".into(),
        )),
    }
}

/// Idmaps the detached mount `mnt` with `userns` and checks its root shows owner `uid` (on
/// disk) shifted into the probe's host range.
fn idmap_and_check(mnt: BorrowedFd<'_>, userns: BorrowedFd<'_>, what: &str) -> Result<()> {
    let before = fstat(mnt).map_err(|e| Error::sys(format!("stat {what}"), e))?;
    setattr_fd(mnt, false, libc::MOUNT_ATTR_IDMAP, 0, Some(userns)).map_err(|e| {
        Error::Unsupported(format!("idmap {what}: {}", crate::syscall::describe(&e)))
    })?;
    let after = fstat(mnt).map_err(|e| Error::sys(format!("stat idmapped {what}"), e))?;
    let want = PROBE_HOST_BASE + before.st_uid;
    if before.st_uid < PROBE_SIZE && after.st_uid != want {
        return Err(Error::Unsupported(format!(
            "idmapped {what} shows owner {} instead of {want}",
            after.st_uid
        )));
    }
    Ok(())
}

fn probe_idmap_tmpfs(userns: BorrowedFd<'_>) -> Result<()> {
    let mnt = new_fs("tmpfs", &[("size", "64k")])?;
    idmap_and_check(mnt.as_fd(), userns, "tmpfs")
}

fn probe_idmap_path(root: &Path, userns: BorrowedFd<'_>) -> Result<()> {
    let mnt = clone_tree(root, false)?;
    idmap_and_check(mnt.as_fd(), userns, &format!("bind of {}", root.display()))
}

/// A scratch directory in `root`, removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Overlay cannot itself be idmapped (it does not set FS_ALLOW_IDMAP); what works since Linux
/// 5.19 is an overlay over idmapped layers: the lower, upper and work directories are opened on
/// an idmapped clone of their filesystem and handed to overlay as fds (`lowerdir+` with
/// FSCONFIG_SET_FD, a 6.x kernel).
/// The overlay's root, owned on disk by the upper dir's owner, must show the shifted owner.
fn probe_idmap_overlay(root: &Path, userns: BorrowedFd<'_>) -> Result<()> {
    let dir = Scratch(root.join(format!(".features-probe-{}", std::process::id())));
    for sub in ["lower", "upper", "work"] {
        let p = dir.0.join(sub);
        std::fs::create_dir_all(&p).map_err(|e| Error::io("create", &p, e))?;
    }
    let layers = clone_tree(&dir.0, false)?;
    setattr_fd(
        layers.as_fd(),
        false,
        libc::MOUNT_ATTR_IDMAP,
        0,
        Some(userns),
    )
    .map_err(|e| {
        Error::Unsupported(format!(
            "idmap the layers' filesystem: {}",
            crate::syscall::describe(&e)
        ))
    })?;
    let open = |sub: &str| {
        nix::fcntl::openat(
            layers.as_fd(),
            sub,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::sys(format!("open idmapped {sub}"), e))
    };
    let (lower, upper, work) = (open("lower")?, open("upper")?, open("work")?);
    let before = fstat(upper.as_fd()).map_err(|e| Error::sys("stat idmapped upper", e))?;
    let mnt = new_fs_with(
        "overlay",
        &[
            ("lowerdir+", Param::Fd(lower.as_fd())),
            ("upperdir", Param::Fd(upper.as_fd())),
            ("workdir", Param::Fd(work.as_fd())),
        ],
    )?;
    let after = fstat(mnt.as_fd()).map_err(|e| Error::sys("stat overlay", e))?;
    if after.st_uid != before.st_uid || before.st_uid < PROBE_HOST_BASE {
        return Err(Error::Unsupported(format!(
            "overlay over idmapped layers shows owner {} (idmapped upper {})",
            after.st_uid, before.st_uid
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn support_serializes_with_its_reason() {
        let v = serde_json::to_value(Support::No("old kernel".into())).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"supported": "no", "reason": "old kernel"})
        );
        let v = serde_json::to_value(Support::Yes).unwrap();
        assert_eq!(v, serde_json::json!({"supported": "yes"}));
    }

    #[test]
    fn idmapped_mounts_need_every_probe() {
        let mut f = KernelFeatures {
            recursive_read_only: Support::Yes,
            user_namespaces: Support::Yes,
            idmap_tmpfs: Support::Yes,
            idmap_root_fs: Support::Yes,
            idmap_overlay: Support::Yes,
        };
        assert!(f.idmapped_mounts());
        f.idmap_overlay = Support::No("x".into());
        assert!(!f.idmapped_mounts());
    }

    #[test]
    fn probes_on_this_kernel() {
        if !nix::unistd::geteuid().is_root() {
            crate::test_skip::skip("root", "probes mounts and user namespaces");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let f = probe(dir.path());
        eprintln!("{f:?}");
        // What the running kernel has, by version: mount_setattr and idmapped mounts of
        // ext4/xfs came in 5.12, of tmpfs in 6.3 (Debian 12's 6.1 has no idmapped tmpfs, so
        // pods with user namespaces are not advertised there).
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut numbers = release
            .split(|c: char| !c.is_ascii_digit())
            .map(|n| n.parse::<u32>().unwrap_or(0));
        let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
        assert_eq!(f.user_namespaces, Support::Yes, "{f:?}");
        if version >= (5, 12) {
            assert_eq!(f.recursive_read_only, Support::Yes, "{release}: {f:?}");
        }
        if version >= (6, 3) {
            assert_eq!(f.idmap_tmpfs, Support::Yes, "{release}: {f:?}");
            assert!(f.idmapped_mounts(), "{release}: {f:?}");
        } else {
            assert!(matches!(f.idmap_tmpfs, Support::No(_)), "{release}: {f:?}");
            assert!(!f.idmapped_mounts(), "{release}: {f:?}");
        }
        // The scratch directory is gone again.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
