//! [`Syscall`] on the real kernel.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, OFlag, OpenHow, ResolveFlag, openat2};
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::{Mode, SFlag};

use super::{FileKind, NodeKind, Syscall, statvfs_to_ms};
use crate::{Error, Result};

/// The real kernel. Stateless; every call is the syscall it names, with mount targets opened
/// without following symlinks (`RESOLVE_NO_SYMLINKS`) and mounted through `/proc/self/fd/N` or
/// `move_mount` on the fd, and entries made, removed or changed with the `*at` calls relative
/// to a parent directory reached the same way, so a path component swapped for a symlink
/// between planning and acting is refused rather than followed out of the rootfs.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSyscall;

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidArgument(format!("path {} contains a NUL byte", p.display())))
}

fn cstr_str(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::InvalidArgument(format!("{s:?} contains a NUL byte")))
}

/// Opens `path` as an O_PATH fd, refusing any symlink on the way (including the last component).
fn open_nofollow(path: &Path) -> nix::Result<OwnedFd> {
    openat2(
        AT_FDCWD,
        path,
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS),
    )
}

fn refuse_symlink(op: &str, path: &Path, e: Errno) -> Error {
    if e == Errno::ELOOP {
        Error::sys(
            format!(
                "{op} {}: a path component is a symlink (refusing to follow it)",
                path.display()
            ),
            e,
        )
    } else {
        Error::sys(format!("{op} {}", path.display()), e)
    }
}

fn describe_mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
) -> String {
    if flags.contains(MsFlags::MS_REMOUNT) {
        format!("remount {} ({flags:?})", target.display())
    } else if flags.contains(MsFlags::MS_BIND) {
        format!(
            "bind mount {} on {}",
            source.map(|s| s.display().to_string()).unwrap_or_default(),
            target.display()
        )
    } else if source.is_none() && fstype.is_none() {
        format!("set propagation of {} ({flags:?})", target.display())
    } else {
        format!(
            "mount {} on {}",
            fstype.or(source.and_then(|s| s.to_str())).unwrap_or("?"),
            target.display()
        )
    }
}

/// Opens the directory `path`, creating missing components, never following a symlink.
fn open_dir_creating(path: &Path, mode: u32) -> Result<OwnedFd> {
    // Usually everything exists already: one lookup instead of one per component.
    let whole = openat2(
        AT_FDCWD,
        path,
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS),
    );
    match whole {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(refuse_symlink("open", path, e)),
    }
    let mut dir = openat2(
        AT_FDCWD,
        "/",
        OpenHow::new().flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC),
    )
    .map_err(|e| Error::sys("open /", e))?;
    let mut walked = PathBuf::from("/");
    for comp in path.components() {
        let name = match comp {
            Component::RootDir | Component::CurDir => continue,
            Component::Prefix(_) | Component::ParentDir => {
                return Err(Error::InvalidArgument(format!(
                    "mkdir {}: path must be absolute and without ..",
                    path.display()
                )));
            }
            Component::Normal(n) => n,
        };
        walked.push(name);
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS);
        let next = match openat2(dir.as_fd(), name, how) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                match nix::sys::stat::mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(mode)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(Error::sys(format!("mkdir {}", walked.display()), e)),
                }
                openat2(dir.as_fd(), name, how).map_err(|e| refuse_symlink("open", &walked, e))?
            }
            Err(e) => return Err(refuse_symlink("open", &walked, e)),
        };
        dir = next;
    }
    Ok(dir)
}

fn split_parent(path: &Path) -> Result<(&Path, &OsStr)> {
    match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) => Ok((p, n)),
        _ => Err(Error::InvalidArgument(format!(
            "{} has no parent directory",
            path.display()
        ))),
    }
}

/// The parent directory of `path`, reached without following any symlink, and the last
/// component, for the `*at` calls that then act on exactly that entry.
fn open_parent<'a>(op: &str, path: &'a Path) -> Result<(OwnedFd, &'a OsStr)> {
    let (parent, name) = split_parent(path)?;
    let dir = openat2(
        AT_FDCWD,
        parent,
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS),
    )
    .map_err(|e| refuse_symlink(op, path, e))?;
    Ok((dir, name))
}

/// A detached, non-recursive bind mount of what `fd` refers to (open_tree on the fd itself).
fn clone_fd_tree(fd: BorrowedFd<'_>) -> nix::Result<OwnedFd> {
    let empty = c"";
    // SAFETY: open_tree reads the empty NUL-terminated path and looks at `fd` only
    // (AT_EMPTY_PATH); it returns a new fd or -1.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            fd.as_raw_fd(),
            empty.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    let raw = i32::try_from(r).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this new fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()> {
        let what = || describe_mount(source, target, fstype, flags);
        let fd = open_nofollow(target).map_err(|e| refuse_symlink(&what(), target, e))?;
        let proc_path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let res = nix::mount::mount(source, &proc_path, fstype, flags, data);
        // Without a /proc (a container that mounts none) the fd path does not exist; the target
        // was just checked to be free of symlinks, so mounting on it by name is the same mount.
        let res = match res {
            Err(Errno::ENOENT) if !Path::new("/proc/self/fd").exists() => {
                nix::mount::mount(source, target, fstype, flags, data)
            }
            other => other,
        };
        res.map_err(|e| Error::sys(what(), e))
    }

    fn mount_fs_params(&self, fstype: &str, params: &[(&str, &str)], target: &Path) -> Result<()> {
        let fstype_c = cstr_str(fstype)?;
        // SAFETY: fsopen takes a NUL-terminated string and flags; it returns a new fd or -1.
        let fs =
            unsafe { libc::syscall(libc::SYS_fsopen, fstype_c.as_ptr(), libc::FSOPEN_CLOEXEC) };
        if fs < 0 {
            return Err(Error::sys(format!("fsopen {fstype}"), Errno::last()));
        }
        // SAFETY: fs is a fresh fd returned by fsopen that nothing else owns.
        let fs = unsafe { OwnedFd::from_raw_fd(fs as i32) };
        for (key, value) in params {
            let k = cstr_str(key)?;
            let v = cstr_str(value)?;
            // SAFETY: fsconfig with FSCONFIG_SET_STRING reads two NUL-terminated strings that
            // live for the duration of the call.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_fsconfig,
                    fs.as_raw_fd(),
                    libc::FSCONFIG_SET_STRING,
                    k.as_ptr(),
                    v.as_ptr(),
                    0,
                )
            };
            if r < 0 {
                return Err(Error::sys(
                    format!("fsconfig {fstype} {key}={value}"),
                    Errno::last(),
                ));
            }
        }
        // SAFETY: FSCONFIG_CMD_CREATE takes no key or value pointers.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                libc::FSCONFIG_CMD_CREATE,
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_char>(),
                0,
            )
        };
        if r < 0 {
            return Err(Error::sys(
                format!("create {fstype} filesystem"),
                Errno::last(),
            ));
        }
        // SAFETY: fsmount takes the configured fs context fd and flags; returns a mount fd.
        let mnt =
            unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), libc::FSMOUNT_CLOEXEC, 0) };
        if mnt < 0 {
            return Err(Error::sys(format!("fsmount {fstype}"), Errno::last()));
        }
        // SAFETY: mnt is a fresh fd returned by fsmount that nothing else owns.
        let mnt = unsafe { OwnedFd::from_raw_fd(mnt as i32) };
        let target_fd = open_nofollow(target)
            .map_err(|e| refuse_symlink(&format!("mount {fstype} on"), target, e))?;
        let empty = c"";
        // SAFETY: move_mount attaches the detached mount `mnt` on the directory `target_fd`
        // refers to; both fds are valid and the empty path strings are NUL-terminated.
        let r = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                mnt.as_raw_fd(),
                empty.as_ptr(),
                target_fd.as_raw_fd(),
                empty.as_ptr(),
                libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
            )
        };
        if r < 0 {
            return Err(Error::sys(
                format!("mount {fstype} on {}", target.display()),
                Errno::last(),
            ));
        }
        Ok(())
    }

    fn mount_setattr(&self, target: &Path, recursive: bool, set: u64, clear: u64) -> Result<()> {
        let fd = open_nofollow(target).map_err(|e| refuse_symlink("mount_setattr", target, e))?;
        let mut attr = libc::mount_attr {
            attr_set: set,
            attr_clr: clear,
            propagation: 0,
            userns_fd: 0,
        };
        let mut flags = libc::AT_EMPTY_PATH;
        if recursive {
            flags |= libc::AT_RECURSIVE;
        }
        let empty = c"";
        // SAFETY: mount_setattr reads `attr` (size given) and the empty path; fd is valid.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                fd.as_raw_fd(),
                empty.as_ptr(),
                flags as libc::c_uint,
                &mut attr as *mut libc::mount_attr,
                std::mem::size_of::<libc::mount_attr>(),
            )
        };
        if r < 0 {
            return Err(Error::sys(
                format!("mount_setattr {}", target.display()),
                Errno::last(),
            ));
        }
        Ok(())
    }

    fn attach_mount(&self, mnt: BorrowedFd<'_>, target: &Path) -> Result<()> {
        let target_fd =
            open_nofollow(target).map_err(|e| refuse_symlink("move_mount onto", target, e))?;
        let empty = c"";
        // SAFETY: move_mount attaches the detached mount `mnt` on the directory or file
        // `target_fd` refers to; both fds are valid and the empty paths are NUL-terminated.
        let r = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                mnt.as_raw_fd(),
                empty.as_ptr(),
                target_fd.as_raw_fd(),
                empty.as_ptr(),
                libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
            )
        };
        if r < 0 {
            return Err(Error::sys(
                format!("move_mount onto {}", target.display()),
                Errno::last(),
            ));
        }
        Ok(())
    }

    fn bind_mount_fd(&self, source: BorrowedFd<'_>, target: &Path) -> Result<()> {
        match clone_fd_tree(source) {
            Ok(tree) => self.attach_mount(tree.as_fd(), target),
            // Before Linux 5.2: the fd's magic link is the source, resolved by the kernel to
            // the open file itself, not by name.
            Err(Errno::ENOSYS) => {
                let via = PathBuf::from(format!("/proc/self/fd/{}", source.as_raw_fd()));
                self.mount(Some(&via), target, Some("bind"), MsFlags::MS_BIND, None)
            }
            Err(e) => Err(Error::sys(
                format!("open_tree (bind source for {})", target.display()),
                e,
            )),
        }
    }

    fn open_char_device(&self, path: &Path, major: u64, minor: u64) -> Result<OwnedFd> {
        let fd = openat2(
            AT_FDCWD,
            path,
            OpenHow::new()
                .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
                .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS),
        )
        .map_err(|e| refuse_symlink("open", path, e))?;
        let st = nix::sys::stat::fstat(&fd)
            .map_err(|e| Error::sys(format!("fstat {}", path.display()), e))?;
        let is_char = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR;
        let (got_major, got_minor) = (
            nix::sys::stat::major(st.st_rdev),
            nix::sys::stat::minor(st.st_rdev),
        );
        if !is_char || (got_major, got_minor) != (major, minor) {
            return Err(Error::InvalidSpec(format!(
                "{} is not the character device {major}:{minor} (mode {:o}, device {got_major}:{got_minor})",
                path.display(),
                st.st_mode,
            )));
        }
        Ok(fd)
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> Result<()> {
        nix::mount::umount2(target, flags)
            .map_err(|e| Error::sys(format!("umount {}", target.display()), e))
    }

    fn pivot_rootfs(&self, rootfs: &Path) -> Result<()> {
        let dir_flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
        let old_root = nix::fcntl::open("/", dir_flags, Mode::empty())
            .map_err(|e| Error::sys("open the old root", e))?;
        let new_root = nix::fcntl::open(rootfs, dir_flags, Mode::empty())
            .map_err(|e| Error::sys(format!("open new root {}", rootfs.display()), e))?;
        nix::unistd::pivot_root(rootfs, rootfs)
            .map_err(|e| Error::sys(format!("pivot_root {}", rootfs.display()), e))?;
        // After pivot_root(x, x) the old root is stacked on the new one, but the path "/" still
        // resolves to the new root's own top (a lookup never crosses into a mount on its
        // starting point). A recursive change of "/" would therefore turn every mount of the
        // container into a slave too, cutting `rshared` binds off from their host peers. The
        // old root's own directory, reached through an fd taken before the pivot, names
        // exactly the old tree (runc does the same with fchdir and ".").
        nix::unistd::fchdir(&old_root).map_err(|e| Error::sys("chdir to the old root", e))?;
        nix::mount::mount(
            None::<&str>,
            ".",
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| Error::sys("make the old root rslave", e))?;
        nix::mount::umount2(".", MntFlags::MNT_DETACH)
            .map_err(|e| Error::sys("unmount the old root", e))?;
        nix::unistd::fchdir(&new_root).map_err(|e| Error::sys("chdir to the new root", e))
    }

    fn mountinfo(&self) -> Result<String> {
        std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| Error::io("read", "/proc/self/mountinfo", e))
    }

    fn chdir(&self, path: &Path) -> Result<()> {
        nix::unistd::chdir(path).map_err(|e| Error::sys(format!("chdir {}", path.display()), e))
    }

    fn chroot(&self, path: &Path) -> Result<()> {
        nix::unistd::chroot(path).map_err(|e| Error::sys(format!("chroot {}", path.display()), e))
    }

    fn sethostname(&self, name: &str) -> Result<()> {
        nix::unistd::sethostname(name).map_err(|e| Error::sys(format!("sethostname {name}"), e))
    }

    fn setdomainname(&self, name: &str) -> Result<()> {
        let c = cstr_str(name)?;
        // SAFETY: setdomainname reads `len` bytes from a valid buffer.
        let r = unsafe { libc::setdomainname(c.as_ptr(), name.len()) };
        if r < 0 {
            return Err(Error::sys(format!("setdomainname {name}"), Errno::last()));
        }
        Ok(())
    }

    fn setns(&self, fd: BorrowedFd<'_>, nstype: CloneFlags) -> Result<()> {
        nix::sched::setns(fd, nstype).map_err(|e| Error::sys(format!("setns {nstype:?}"), e))
    }

    fn unshare(&self, flags: CloneFlags) -> Result<()> {
        nix::sched::unshare(flags).map_err(|e| Error::sys(format!("unshare {flags:?}"), e))
    }

    fn mknod(&self, path: &Path, kind: NodeKind, perm: u32, major: u64, minor: u64) -> Result<()> {
        let sflag = match kind {
            NodeKind::Char => SFlag::S_IFCHR,
            NodeKind::Block => SFlag::S_IFBLK,
            NodeKind::Fifo => SFlag::S_IFIFO,
        };
        let dev = nix::sys::stat::makedev(major, minor);
        let (dir, name) = open_parent("mknod", path)?;
        nix::sys::stat::mknodat(&dir, name, sflag, Mode::from_bits_truncate(perm), dev)
            .map_err(|e| Error::sys(format!("mknod {}", path.display()), e))?;
        // mknod applies the umask; the spec's mode is meant exactly.
        nix::sys::stat::fchmodat(
            &dir,
            name,
            Mode::from_bits_truncate(perm),
            nix::sys::stat::FchmodatFlags::NoFollowSymlink,
        )
        .map_err(|e| Error::sys(format!("chmod {}", path.display()), e))
    }

    fn symlink(&self, target: &Path, link: &Path) -> Result<()> {
        let (dir, name) = open_parent("symlink", link)?;
        nix::unistd::symlinkat(target, &dir, name)
            .map_err(|e| Error::sys(format!("symlink {}", link.display()), e))
    }

    fn mkdir_all(&self, path: &Path, mode: u32) -> Result<()> {
        open_dir_creating(path, mode).map(drop)
    }

    fn create_file(&self, path: &Path) -> Result<()> {
        let (parent, name) = split_parent(path)?;
        let dir = open_dir_creating(parent, 0o755)?;
        // What exists already (a device node, a fifo) is only looked at, never opened for I/O.
        let look = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS);
        match openat2(dir.as_fd(), name, look) {
            Ok(fd) => {
                let st = nix::sys::stat::fstat(&fd)
                    .map_err(|e| Error::sys(format!("fstat {}", path.display()), e))?;
                if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK {
                    return Err(refuse_symlink("create", path, Errno::ELOOP));
                }
                return Ok(());
            }
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(refuse_symlink("create", path, e)),
        }
        let create = OpenHow::new()
            .flags(
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_RDONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
            )
            .mode(Mode::from_bits_truncate(0o755))
            .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS);
        match openat2(dir.as_fd(), name, create) {
            Ok(fd) => {
                drop(fd);
                Ok(())
            }
            // Made by someone else between the look and the create: look again, once.
            Err(Errno::EEXIST) => {
                let fd = openat2(dir.as_fd(), name, look)
                    .map_err(|e| refuse_symlink("create", path, e))?;
                drop(fd);
                Ok(())
            }
            Err(e) => Err(refuse_symlink("create", path, e)),
        }
    }

    fn remove_file(&self, path: &Path) -> Result<()> {
        let (dir, name) = open_parent("remove", path)?;
        match nix::unistd::unlinkat(&dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(Error::sys(format!("remove {}", path.display()), e)),
        }
    }

    fn chown(&self, path: &Path, uid: Option<u32>, gid: Option<u32>) -> Result<()> {
        let (dir, name) = open_parent("chown", path)?;
        nix::unistd::fchownat(
            &dir,
            name,
            uid.map(nix::unistd::Uid::from_raw),
            gid.map(nix::unistd::Gid::from_raw),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| Error::sys(format!("chown {}", path.display()), e))
    }

    fn chmod(&self, path: &Path, mode: u32) -> Result<()> {
        let (dir, name) = open_parent("chmod", path)?;
        nix::sys::stat::fchmodat(
            &dir,
            name,
            Mode::from_bits_truncate(mode),
            nix::sys::stat::FchmodatFlags::NoFollowSymlink,
        )
        .map_err(|e| Error::sys(format!("chmod {}", path.display()), e))
    }

    fn file_kind(&self, path: &Path, follow: bool) -> Result<Option<FileKind>> {
        let st = if follow {
            nix::sys::stat::stat(path)
        } else {
            nix::sys::stat::lstat(path)
        };
        let st = match st {
            Ok(st) => st,
            Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => return Ok(None),
            Err(e) => return Err(Error::sys(format!("stat {}", path.display()), e)),
        };
        let kind = match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
            SFlag::S_IFDIR => FileKind::Dir,
            SFlag::S_IFLNK => FileKind::Symlink,
            SFlag::S_IFCHR => FileKind::CharDevice,
            SFlag::S_IFBLK => FileKind::BlockDevice,
            SFlag::S_IFIFO => FileKind::Fifo,
            SFlag::S_IFSOCK => FileKind::Socket,
            _ => FileKind::File,
        };
        Ok(Some(kind))
    }

    fn read_link(&self, path: &Path) -> Result<PathBuf> {
        std::fs::read_link(path).map_err(|e| Error::io("readlink", path, e))
    }

    fn mount_flags(&self, path: &Path) -> Result<MsFlags> {
        let c = cstr(path)?;
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
        // SAFETY: statvfs fills the struct it is given a valid pointer to.
        let r = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
        if r < 0 {
            return Err(Error::sys(
                format!("statvfs {}", path.display()),
                Errno::last(),
            ));
        }
        // SAFETY: statvfs returned 0, so it initialised the struct.
        let st = unsafe { st.assume_init() };
        Ok(statvfs_to_ms(st.f_flag))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespaces::forked::in_forked_child;

    #[test]
    fn mkdir_all_and_create_file_refuse_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let sys = LinuxSyscall;
        sys.mkdir_all(&root.join("a/b/c"), 0o755).unwrap();
        assert!(root.join("a/b/c").is_dir());
        sys.create_file(&root.join("a/b/f")).unwrap();
        assert!(root.join("a/b/f").is_file());
        std::os::unix::fs::symlink("/", root.join("esc")).unwrap();
        let err = sys.mkdir_all(&root.join("esc/tmp/x"), 0o755).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        let err = sys.create_file(&root.join("esc/f")).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(
            sys.file_kind(&root.join("esc"), false).unwrap(),
            Some(FileKind::Symlink)
        );
        assert_eq!(
            sys.file_kind(&root.join("esc"), true).unwrap(),
            Some(FileKind::Dir)
        );
        assert_eq!(sys.file_kind(&root.join("nope"), false).unwrap(), None);
        assert_eq!(
            sys.read_link(&root.join("esc")).unwrap(),
            PathBuf::from("/")
        );
    }

    /// Root only, in a forked child's own mount namespace: a bind in the new root that shares a
    /// peer group with a mount outside it is still shared after the pivot (only the old root
    /// becomes a slave), the old root is gone and the cwd is the new `/`.
    #[test]
    fn pivot_rootfs_slaves_only_the_old_root() {
        if !nix::unistd::geteuid().is_root() {
            crate::test_skip::skip("root", "pivot_root in a new mount namespace");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let shared = base.join("shared");
        let rootfs = base.join("rootfs");
        for d in [&shared, &rootfs.join("mnt"), &rootfs.join("proc")] {
            std::fs::create_dir_all(d).unwrap();
        }
        let seen = in_forked_child(|| {
            fn m(
                src: Option<&Path>,
                target: &Path,
                flags: MsFlags,
            ) -> std::result::Result<(), String> {
                nix::mount::mount(src, target, None::<&str>, flags, None::<&str>)
                    .map_err(|e| format!("mount {src:?} on {}: {e}", target.display()))
            }
            nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare: {e}"))?;
            // Nothing below may reach the host's mount namespace.
            m(None, Path::new("/"), MsFlags::MS_PRIVATE | MsFlags::MS_REC)?;
            m(Some(&shared), &shared, MsFlags::MS_BIND)?;
            m(None, &shared, MsFlags::MS_SHARED)?;
            m(Some(&rootfs), &rootfs, MsFlags::MS_BIND | MsFlags::MS_REC)?;
            m(
                Some(&shared),
                &rootfs.join("mnt"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
            )?;
            m(
                Some(Path::new("/proc")),
                &rootfs.join("proc"),
                MsFlags::MS_BIND,
            )?;
            LinuxSyscall
                .pivot_rootfs(&rootfs)
                .map_err(|e| e.to_string())?;
            let cwd = std::env::current_dir().map_err(|e| format!("cwd: {e}"))?;
            let text = std::fs::read_to_string("/proc/self/mountinfo")
                .map_err(|e| format!("mountinfo: {e}"))?;
            let mounts = crate::rootfs::mountinfo::parse_mountinfo(&text);
            let roots: Vec<String> = mounts
                .iter()
                .filter(|m| m.mount_point == Path::new("/"))
                .map(|m| m.root.display().to_string())
                .collect();
            let mnt = mounts
                .iter()
                .find(|m| m.mount_point == Path::new("/mnt"))
                .map(|m| m.optional.join(" "))
                .ok_or("no /mnt after the pivot")?;
            Ok(format!("{}\n{}\n{mnt}", cwd.display(), roots.join(",")))
        })
        .unwrap();
        let lines: Vec<&str> = seen.split('\n').collect();
        assert_eq!(lines[0], "/");
        assert!(
            lines[1].ends_with("/rootfs") && !lines[1].contains(','),
            "the old root is still mounted on /: {}",
            lines[1]
        );
        assert!(
            lines[2].starts_with("shared:") && !lines[2].contains("master:"),
            "/mnt lost its host peers: {:?}",
            lines[2]
        );
    }

    #[test]
    fn entries_are_made_and_removed_only_below_symlink_free_parents() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let host = root.join("host");
        std::fs::create_dir(&host).unwrap();
        std::fs::write(host.join("ptmx"), "host file").unwrap();
        std::fs::create_dir_all(root.join("rootfs")).unwrap();
        std::os::unix::fs::symlink(&host, root.join("rootfs/dev")).unwrap();
        let sys = LinuxSyscall;
        let dev = root.join("rootfs/dev");
        let refused = |r: Result<()>| {
            let e = r.unwrap_err();
            assert!(e.to_string().contains("symlink"), "{e}");
        };
        refused(sys.remove_file(&dev.join("ptmx")));
        refused(sys.symlink(Path::new("pts/ptmx"), &dev.join("fd")));
        refused(sys.mknod(&dev.join("null"), NodeKind::Fifo, 0o666, 0, 0));
        refused(sys.chown(&dev.join("ptmx"), Some(0), Some(0)));
        refused(sys.chmod(&dev.join("ptmx"), 0o777));
        refused(sys.create_file(&dev.join("console")));
        let names: Vec<_> = std::fs::read_dir(&host)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("ptmx")]);
        assert_eq!(
            std::fs::read_to_string(host.join("ptmx")).unwrap(),
            "host file"
        );
        // Without a symlink on the way each works, on exactly the entry named.
        let real = root.join("rootfs/realdev");
        std::fs::create_dir(&real).unwrap();
        sys.symlink(Path::new("pts/ptmx"), &real.join("ptmx"))
            .unwrap();
        assert_eq!(
            std::fs::read_link(real.join("ptmx")).unwrap(),
            PathBuf::from("pts/ptmx")
        );
        sys.remove_file(&real.join("ptmx")).unwrap();
        sys.remove_file(&real.join("ptmx")).unwrap();
        sys.mknod(&real.join("fifo"), NodeKind::Fifo, 0o640, 0, 0)
            .unwrap();
        let mode = std::fs::symlink_metadata(real.join("fifo")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o640
        );
        // An existing fifo is a fine mount point and is not opened (which would block).
        sys.create_file(&real.join("fifo")).unwrap();
    }

    #[test]
    fn only_the_real_null_device_is_opened_as_one() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let sys = LinuxSyscall;
        std::fs::write(root.join("file"), "").unwrap();
        std::os::unix::fs::symlink("/dev/null", root.join("link")).unwrap();
        for p in ["file", "link", "missing"] {
            assert!(sys.open_char_device(&root.join(p), 1, 3).is_err(), "{p}");
        }
        assert!(sys.open_char_device(Path::new("/dev/zero"), 1, 3).is_err());
        let fd = sys.open_char_device(Path::new("/dev/null"), 1, 3).unwrap();
        let st = nix::sys::stat::fstat(&fd).unwrap();
        assert_eq!(st.st_rdev, nix::sys::stat::makedev(1, 3));
    }

    /// Root only, in a forked child's own mount namespace: a bind from an fd lands on the
    /// target (the null device over a file reads empty) without the source being looked up.
    #[test]
    fn bind_mount_fd_binds_the_open_file() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let target = root.join("secret");
        std::fs::write(&target, "secret").unwrap();
        let out = in_forked_child(move || {
            nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare: {e}"))?;
            nix::mount::mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_PRIVATE | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| format!("private: {e}"))?;
            let null = LinuxSyscall
                .open_char_device(Path::new("/dev/null"), 1, 3)
                .map_err(|e| e.to_string())?;
            LinuxSyscall
                .bind_mount_fd(null.as_fd(), &target)
                .map_err(|e| e.to_string())?;
            let st = nix::sys::stat::stat(&target).map_err(|e| e.to_string())?;
            let text = std::fs::read_to_string(&target).map_err(|e| e.to_string())?;
            Ok(format!(
                "{}:{}:{text}",
                nix::sys::stat::major(st.st_rdev),
                nix::sys::stat::minor(st.st_rdev)
            ))
        })
        .unwrap();
        assert_eq!(out, "1:3:");
    }

    #[test]
    fn mount_refuses_symlinked_target_before_calling_mount() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::os::unix::fs::symlink("/", root.join("proc")).unwrap();
        let err = LinuxSyscall
            .mount(
                None,
                &root.join("proc"),
                Some("proc"),
                MsFlags::empty(),
                None,
            )
            .unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
    }
}
