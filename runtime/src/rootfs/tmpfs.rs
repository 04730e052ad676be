//! A pod's shared `/dev/shm`: a size-limited tmpfs mounted on a host directory that every
//! container of the pod binds, and its removal.

use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use super::mountinfo::parse_mountinfo;
use crate::syscall::{LinuxSyscall, Syscall};
use crate::{Error, Result};

/// Mounts a tmpfs of `size` bytes on `target` (nosuid, nodev, noexec, mode 1777), the options
/// containerd gives a sandbox's `/dev/shm`. `target` must be an existing directory, not a
/// symlink.
pub fn mount_tmpfs(target: &Path, size: u64) -> Result<()> {
    mount_tmpfs_with(&LinuxSyscall, target, size)
}

/// [`mount_tmpfs`] through a given [`Syscall`].
pub fn mount_tmpfs_with(sys: &dyn Syscall, target: &Path, size: u64) -> Result<()> {
    if size == 0 {
        // tmpfs reads size=0 as "unlimited", the opposite of what a caller would mean.
        return Err(Error::InvalidArgument(format!(
            "tmpfs on {} needs a size above 0",
            target.display()
        )));
    }
    sys.mount(
        Some(Path::new("shm")),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(&format!("mode=1777,size={size}")),
    )
}

/// Detaches every mount stacked on `target`. A path that is no mount point, or does not
/// exist, is fine, so this can be repeated after a crash.
pub fn unmount(target: &Path) -> Result<()> {
    unmount_with(&LinuxSyscall, target)
}

/// [`unmount`] through a given [`Syscall`].
pub fn unmount_with(sys: &dyn Syscall, target: &Path) -> Result<()> {
    // One mount is the rule; the bound only guards against a loop on a misbehaving kernel.
    for _ in 0..16 {
        match sys.umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(Error::Sys {
                source: Errno::EINVAL | Errno::ENOENT,
                ..
            }) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Err(Error::sys(
        format!(
            "umount {}: still mounted after 16 unmounts",
            target.display()
        ),
        Errno::EBUSY,
    ))
}

/// Whether `path` is a mount point in this process's mount namespace (per
/// `/proc/self/mountinfo`, so a path that merely exists does not count).
pub fn is_mount_point(path: &Path) -> Result<bool> {
    let text = LinuxSyscall.mountinfo()?;
    Ok(parse_mountinfo(&text).iter().any(|m| m.mount_point == path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::TestSyscall;
    use crate::syscall::test::Call;

    /// Unmounts on drop so a failing assertion leaves no mount behind.
    struct Unmount(std::path::PathBuf);

    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = unmount(&self.0);
        }
    }

    #[test]
    fn mounts_a_tmpfs_with_the_sandbox_shm_options() {
        let sys = TestSyscall::new();
        mount_tmpfs_with(&sys, Path::new("/sb/shm"), 64 << 20).expect("mount");
        assert_eq!(
            sys.calls(),
            vec![Call::Mount {
                source: Some("shm".into()),
                target: "/sb/shm".into(),
                fstype: Some("tmpfs".into()),
                flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                data: Some("mode=1777,size=67108864".into()),
            }]
        );
        let err = mount_tmpfs_with(&sys, Path::new("/sb/shm"), 0).expect_err("size 0");
        assert!(err.to_string().contains("/sb/shm"), "{err}");
    }

    #[test]
    fn real_tmpfs_is_mounted_limited_and_unmounted_idempotently() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let target = tmp.path().join("shm");
        std::fs::create_dir(&target).expect("dir");
        let _guard = Unmount(target.clone());
        assert!(!is_mount_point(&target).expect("mountinfo"));

        mount_tmpfs(&target, 1 << 20).expect("mount");
        assert!(is_mount_point(&target).expect("mountinfo"));
        let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let mount = parse_mountinfo(&text)
            .into_iter()
            .find(|m| m.mount_point == target)
            .expect("listed");
        assert_eq!(mount.fstype, "tmpfs");
        assert!(mount.super_options.contains("size=1024k"), "{mount:?}");
        // 1777 is tmpfs' default mode, which mountinfo leaves out: ask the directory.
        let mode = std::fs::metadata(&target).expect("stat").permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o7777,
            0o1777
        );
        // Writing past the size limit must fail: the limit is what protects the node.
        let big = vec![0u8; 2 << 20];
        assert!(std::fs::write(target.join("big"), big).is_err());

        unmount(&target).expect("unmount");
        assert!(!is_mount_point(&target).expect("mountinfo"));
        assert!(
            !target.join("big").exists(),
            "the tmpfs content must be gone"
        );
        unmount(&target).expect("unmount again");
        unmount(&tmp.path().join("missing")).expect("unmount of a missing path");
    }

    #[test]
    fn refuses_a_symlinked_target() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).expect("dir");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let _guard = Unmount(real.clone());
        assert!(mount_tmpfs(&link, 1 << 20).is_err());
        assert!(!is_mount_point(&real).expect("mountinfo"));
    }
}
