//! The narrow interface between container setup logic and the kernel.
//!
//! Rootfs preparation, mount planning and namespace handling call the kernel only through
//! [`Syscall`], so the same logic runs against [`linux::LinuxSyscall`] in a container's init and
//! against the recording [`test::TestSyscall`] in unit tests, without root.

pub mod linux;
pub mod mount_api;
pub mod test;

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use crate::Result;

pub use linux::LinuxSyscall;
pub use test::TestSyscall;

/// What a path names, as `lstat` (or `stat`, when following links) sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Dir,
    File,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

/// Kind of device node to create with [`Syscall::mknod`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Char,
    Block,
    Fifo,
}

/// The kernel operations container setup needs. Paths are absolute host (or, after
/// `pivot_root`, container) paths, already resolved inside the rootfs (see
/// [`crate::rootfs::secure_join`]); implementations must not follow a symlink in any component
/// of a path they create, remove, change or mount on.
pub trait Syscall {
    /// mount(2). `source`, `fstype` and `data` are passed as given.
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()>;

    /// Mounts a filesystem through the new mount API (fsopen, fsconfig string parameters in
    /// order, fsmount, move_mount), used where a parameter would not fit mount(2)'s one page of
    /// data (overlay's `lowerdir+`).
    fn mount_fs_params(&self, fstype: &str, params: &[(&str, &str)], target: &Path) -> Result<()>;

    /// mount_setattr(2) on the mount at `target` (`recursive`: AT_RECURSIVE), setting and
    /// clearing `MOUNT_ATTR_*` bits.
    fn mount_setattr(&self, target: &Path, recursive: bool, set: u64, clear: u64) -> Result<()>;

    /// umount2(2).
    fn umount2(&self, target: &Path, flags: MntFlags) -> Result<()>;

    /// Attaches the detached mount `mnt` (an idmapped bind made by the runtime before the
    /// container's user namespace was joined) at `target` with move_mount(2).
    fn attach_mount(&self, mnt: BorrowedFd<'_>, target: &Path) -> Result<()>;

    /// Bind-mounts the file or directory `source` refers to onto `target` (not recursive),
    /// without looking the source up by any path: open_tree on the fd, then move_mount onto the
    /// target, itself opened without following symlinks.
    fn bind_mount_fd(&self, source: BorrowedFd<'_>, target: &Path) -> Result<()>;

    /// Opens `path` (O_PATH, no symlink anywhere on the way, the last component included) and
    /// checks that it is the character device `major:minor`.
    fn open_char_device(&self, path: &Path, major: u64, minor: u64) -> Result<OwnedFd>;

    /// Makes `rootfs` the root: pivot_root(rootfs, rootfs), then the old root (stacked on top
    /// of the new one) is made rslave, so its unmount cannot propagate to the host, and is
    /// detached; the cwd ends at the new `/`. Only the old root's tree changes propagation: the
    /// new root's mounts keep theirs (an `rshared` bind stays a peer of the host's mount). No
    /// scratch directory is needed, so a read-only rootfs works.
    fn pivot_rootfs(&self, rootfs: &Path) -> Result<()>;

    /// The text of /proc/self/mountinfo.
    fn mountinfo(&self) -> Result<String>;

    /// chdir(2).
    fn chdir(&self, path: &Path) -> Result<()>;

    /// chroot(2).
    fn chroot(&self, path: &Path) -> Result<()>;

    /// sethostname(2).
    fn sethostname(&self, name: &str) -> Result<()>;

    /// setdomainname(2).
    fn setdomainname(&self, name: &str) -> Result<()>;

    /// setns(2) into the namespace `fd` refers to.
    fn setns(&self, fd: BorrowedFd<'_>, nstype: CloneFlags) -> Result<()>;

    /// unshare(2).
    fn unshare(&self, flags: CloneFlags) -> Result<()>;

    /// mknod(2) with exactly `perm` as permission bits (the umask does not apply).
    fn mknod(&self, path: &Path, kind: NodeKind, perm: u32, major: u64, minor: u64) -> Result<()>;

    /// symlink(2): creates `link` pointing at `target`.
    fn symlink(&self, target: &Path, link: &Path) -> Result<()>;

    /// Creates `path` and its missing parents as directories with `mode`, refusing to follow
    /// a symlink on the way.
    fn mkdir_all(&self, path: &Path, mode: u32) -> Result<()>;

    /// Creates an empty regular file (and missing parents) if nothing exists at `path`; a mount
    /// point for a bind-mounted file.
    fn create_file(&self, path: &Path) -> Result<()>;

    /// Removes a file or symlink; a missing path is not an error.
    fn remove_file(&self, path: &Path) -> Result<()>;

    /// lchown(2); `None` leaves the id unchanged.
    fn chown(&self, path: &Path, uid: Option<u32>, gid: Option<u32>) -> Result<()>;

    /// chmod(2).
    fn chmod(&self, path: &Path, mode: u32) -> Result<()>;

    /// What `path` is (`follow`: through symlinks), or `None` when it does not exist.
    fn file_kind(&self, path: &Path, follow: bool) -> Result<Option<FileKind>>;

    /// readlink(2).
    fn read_link(&self, path: &Path) -> Result<PathBuf>;

    /// The `MS_*` flags of the mount `path` is on (from statvfs), so a remount keeps them.
    fn mount_flags(&self, path: &Path) -> Result<MsFlags>;

    /// Bind-mounts `source` onto `target` (`recursive`: MS_REC).
    fn bind_mount(&self, source: &Path, target: &Path, recursive: bool) -> Result<()> {
        let mut flags = MsFlags::MS_BIND;
        if recursive {
            flags |= MsFlags::MS_REC;
        }
        self.mount(Some(source), target, Some("bind"), flags, None)
    }

    /// Remounts the bind mount at `target` with `flags` added to the flags it already has
    /// (which the kernel requires to be kept in a user namespace and we want kept anyway).
    fn remount_bind(&self, target: &Path, flags: MsFlags) -> Result<()> {
        let current = self.mount_flags(target)?;
        self.mount(
            None,
            target,
            None,
            current | flags | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
            None,
        )
    }

    /// Changes the propagation of the mount at `target` (one of MS_SHARED, MS_SLAVE,
    /// MS_PRIVATE, MS_UNBINDABLE, optionally with MS_REC).
    fn set_propagation(&self, target: &Path, flags: MsFlags) -> Result<()> {
        self.mount(None, target, None, flags, None)
    }
}

/// An error as a person reads it: a failed syscall as `op: no such file or directory` (Go's
/// and runc's wording) rather than nix's `ENOENT: No such file or directory`.
pub fn describe(e: &crate::Error) -> String {
    match e {
        crate::Error::Sys { op, source } => {
            let d = source.desc();
            let mut c = d.chars();
            let lower: String = match c.next() {
                Some(f) => f.to_lowercase().chain(c).collect(),
                None => String::new(),
            };
            format!("{op}: {lower}")
        }
        crate::Error::Child(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The `MS_*` flags mount(2) accepts, by their statvfs `ST_*` counterparts.
pub(crate) fn statvfs_to_ms(st: u64) -> MsFlags {
    let pairs: [(u64, MsFlags); 7] = [
        (libc::ST_RDONLY, MsFlags::MS_RDONLY),
        (libc::ST_NOSUID, MsFlags::MS_NOSUID),
        (libc::ST_NODEV, MsFlags::MS_NODEV),
        (libc::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (libc::ST_NOATIME, MsFlags::MS_NOATIME),
        (libc::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (libc::ST_RELATIME, MsFlags::MS_RELATIME),
    ];
    pairs
        .iter()
        .filter(|(st_bit, _)| st & st_bit != 0)
        .fold(MsFlags::empty(), |acc, (_, ms)| acc | *ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statvfs_flags_map_to_mount_flags() {
        let f = statvfs_to_ms(libc::ST_RDONLY | libc::ST_NOSUID | libc::ST_RELATIME);
        assert_eq!(
            f,
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_RELATIME
        );
        assert_eq!(statvfs_to_ms(0), MsFlags::empty());
    }
}
