//! Device nodes in the container's `/dev`: the default set every container gets, the spec's
//! `linux.devices`, `/dev/ptmx` and the `/dev/fd`, stdio symlinks.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

use super::secure_join::secure_join;
use crate::syscall::{NodeKind, Syscall, describe};
use crate::{Error, Result};

/// A device node to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// Path in the container (`/dev/null`).
    pub path: PathBuf,
    pub kind: NodeKind,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The devices every container gets, as runc: null, zero, full, random, urandom, tty.
pub fn default_devices() -> Vec<DeviceNode> {
    [
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
    .into_iter()
    .map(|(p, major, minor)| DeviceNode {
        path: PathBuf::from(p),
        kind: NodeKind::Char,
        major,
        minor,
        mode: 0o666,
        uid: 0,
        gid: 0,
    })
    .collect()
}

fn from_spec(d: &LinuxDevice) -> Result<DeviceNode> {
    let kind = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => NodeKind::Char,
        LinuxDeviceType::B => NodeKind::Block,
        LinuxDeviceType::P => NodeKind::Fifo,
        LinuxDeviceType::A => {
            return Err(Error::InvalidSpec(format!(
                "device {} has type \"a\", which is only valid in cgroup rules",
                d.path().display()
            )));
        }
    };
    let num = |v: i64, what: &str| {
        u64::try_from(v).map_err(|_| {
            Error::InvalidSpec(format!("device {} has {what} {v}", d.path().display()))
        })
    };
    Ok(DeviceNode {
        path: d.path().clone(),
        kind,
        major: num(d.major(), "major")?,
        minor: num(d.minor(), "minor")?,
        mode: d.file_mode().unwrap_or(0o666) & 0o7777,
        uid: d.uid().unwrap_or(0),
        gid: d.gid().unwrap_or(0),
    })
}

/// Creates the default devices and the spec's (a spec device replaces a default one at the
/// same path). mknod is tried first; where it is not allowed (EPERM, e.g. in a user
/// namespace) or `bind` is set, the host's node at the same path is bound instead.
pub fn create_devices(
    sys: &dyn Syscall,
    rootfs: &Path,
    spec_devices: &[LinuxDevice],
    bind: bool,
) -> Result<()> {
    let mut nodes = default_devices();
    for d in spec_devices {
        let n = from_spec(d)?;
        nodes.retain(|x| x.path != n.path);
        nodes.push(n);
    }
    let mut bind = bind;
    for n in &nodes {
        let target = secure_join(sys, rootfs, &n.path)?;
        if target == rootfs {
            return Err(Error::InvalidSpec(format!(
                "device path {} resolves to the container's root",
                n.path.display()
            )));
        }
        if let Some(parent) = target.parent() {
            sys.mkdir_all(parent, 0o755)?;
        }
        let err = |e: Error| {
            Error::Child(format!(
                "create device {}: {}",
                n.path.display(),
                describe(&e)
            ))
        };
        if !bind {
            match sys.mknod(&target, n.kind, n.mode, n.major, n.minor) {
                Ok(()) => {
                    sys.chown(&target, Some(n.uid), Some(n.gid)).map_err(err)?;
                    continue;
                }
                Err(Error::Sys {
                    source: Errno::EEXIST,
                    ..
                }) => continue,
                Err(Error::Sys {
                    source: Errno::EPERM,
                    ..
                }) => bind = true,
                Err(e) => return Err(err(e)),
            }
        }
        sys.create_file(&target).map_err(err)?;
        sys.bind_mount(&n.path, &target, false).map_err(err)?;
    }
    Ok(())
}

/// `/dev/ptmx` as a symlink to the container's own devpts instance (`pts/ptmx`). `/dev` is
/// resolved inside the rootfs (an image whose `/dev` is a symlink must not lead this outside),
/// and the entry is removed and created relative to that directory.
pub fn setup_ptmx(sys: &dyn Syscall, rootfs: &Path) -> Result<()> {
    let ptmx = dev_dir(sys, rootfs)?.join("ptmx");
    sys.remove_file(&ptmx)?;
    sys.symlink(Path::new("pts/ptmx"), &ptmx)
}

/// `/dev/fd`, `/dev/stdin`, `/dev/stdout`, `/dev/stderr` (and `/dev/core` when the kernel has
/// `/proc/kcore`) as symlinks into `/proc/self`; an existing entry is left alone. `/dev` is
/// resolved inside the rootfs, as for [`setup_ptmx`].
pub fn setup_dev_symlinks(sys: &dyn Syscall, rootfs: &Path) -> Result<()> {
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    if sys.file_kind(Path::new("/proc/kcore"), false)?.is_some() {
        links.push(("/proc/kcore", "core"));
    }
    let dev = dev_dir(sys, rootfs)?;
    for (target, link) in links {
        let link = dev.join(link);
        if sys.file_kind(&link, false)?.is_none() {
            sys.symlink(Path::new(target), &link)?;
        }
    }
    Ok(())
}

/// The container's `/dev` as a host path inside `rootfs`, symlinks resolved as the container
/// would see them.
fn dev_dir(sys: &dyn Syscall, rootfs: &Path) -> Result<PathBuf> {
    let dev = secure_join(sys, rootfs, Path::new("/dev"))?;
    if dev == rootfs {
        return Err(Error::InvalidSpec(
            "/dev resolves to the container's root; refusing to create device links there".into(),
        ));
    }
    Ok(dev)
}
