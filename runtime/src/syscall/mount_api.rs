//! The new mount API on file descriptors (open_tree, fsopen/fsmount, mount_setattr on a mount
//! fd): detached mounts that live in no mount namespace, so the daemon can probe and prepare
//! mounts without touching the host's mount table and without a private mount namespace
//! (which a multi-threaded process cannot unshare).

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;

use crate::{Error, Result};

fn path_cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidArgument(format!("path {} contains a NUL byte", p.display())))
}

fn own(r: libc::c_long, op: impl FnOnce() -> String) -> Result<OwnedFd> {
    if r < 0 {
        return Err(Error::sys(op(), Errno::last()));
    }
    let fd = i32::try_from(r).map_err(|_| Error::sys(op(), Errno::EBADF))?;
    // SAFETY: `fd` was just returned by the kernel as a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A detached copy of the mount at `path` (`recursive`: with every mount below it), as
/// `open_tree(OPEN_TREE_CLONE)` makes it; it disappears when the fd is closed.
pub fn clone_tree(path: &Path, recursive: bool) -> Result<OwnedFd> {
    let c = path_cstr(path)?;
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: open_tree reads the NUL-terminated path for the duration of the call.
    let r = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    own(r, || format!("open_tree {}", path.display()))
}

/// A value of one fsconfig parameter.
#[derive(Debug, Clone, Copy)]
pub enum Param<'a> {
    /// FSCONFIG_SET_STRING.
    Str(&'a str),
    /// FSCONFIG_SET_FD: a directory fd, e.g. an idmapped layer for overlay's `lowerdir+`.
    Fd(BorrowedFd<'a>),
}

/// A new detached filesystem of `fstype` configured with string `params` in order (fsopen,
/// fsconfig, fsmount).
pub fn new_fs(fstype: &str, params: &[(&str, &str)]) -> Result<OwnedFd> {
    let params: Vec<(&str, Param<'_>)> = params.iter().map(|(k, v)| (*k, Param::Str(v))).collect();
    new_fs_with(fstype, &params)
}

/// [`new_fs`] with string or fd parameters.
pub fn new_fs_with(fstype: &str, params: &[(&str, Param<'_>)]) -> Result<OwnedFd> {
    let t = CString::new(fstype)
        .map_err(|_| Error::InvalidArgument(format!("{fstype:?} contains a NUL byte")))?;
    // SAFETY: fsopen reads the NUL-terminated type name.
    let r = unsafe { libc::syscall(libc::SYS_fsopen, t.as_ptr(), libc::FSOPEN_CLOEXEC) };
    let fs = own(r, || format!("fsopen {fstype}"))?;
    for (key, value) in params {
        let k = CString::new(*key)
            .map_err(|_| Error::InvalidArgument(format!("{key:?} contains a NUL byte")))?;
        let r = match value {
            Param::Str(v) => {
                let v = CString::new(*v)
                    .map_err(|_| Error::InvalidArgument(format!("{v:?} contains a NUL byte")))?;
                // SAFETY: FSCONFIG_SET_STRING reads two NUL-terminated strings alive for the
                // call.
                unsafe {
                    libc::syscall(
                        libc::SYS_fsconfig,
                        fs.as_raw_fd(),
                        libc::FSCONFIG_SET_STRING,
                        k.as_ptr(),
                        v.as_ptr(),
                        0,
                    )
                }
            }
            // SAFETY: FSCONFIG_SET_FD reads the NUL-terminated key and takes the fd (valid for
            // the call) in `aux`; the value pointer must be NULL.
            Param::Fd(fd) => unsafe {
                libc::syscall(
                    libc::SYS_fsconfig,
                    fs.as_raw_fd(),
                    libc::FSCONFIG_SET_FD,
                    k.as_ptr(),
                    std::ptr::null::<libc::c_char>(),
                    fd.as_raw_fd(),
                )
            },
        };
        if r < 0 {
            return Err(Error::sys(
                format!("fsconfig {fstype} {key}={value:?}"),
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
        return Err(Error::sys(format!("create {fstype}"), Errno::last()));
    }
    // SAFETY: fsmount takes the configured context fd and flags and returns a mount fd.
    let r = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), libc::FSMOUNT_CLOEXEC, 0) };
    own(r, || format!("fsmount {fstype}"))
}

/// mount_setattr(2) on the mount `fd` refers to (`recursive`: AT_RECURSIVE), setting and
/// clearing `MOUNT_ATTR_*` bits; `userns` goes with `MOUNT_ATTR_IDMAP`.
pub fn setattr_fd(
    fd: BorrowedFd<'_>,
    recursive: bool,
    set: u64,
    clear: u64,
    userns: Option<BorrowedFd<'_>>,
) -> Result<()> {
    let mut attr = libc::mount_attr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: userns.map_or(0, |u| u.as_raw_fd() as u64),
    };
    let mut flags = libc::AT_EMPTY_PATH;
    if recursive {
        flags |= libc::AT_RECURSIVE;
    }
    let empty = c"";
    // SAFETY: mount_setattr reads `attr` (its size given) and the empty path; fd is valid.
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
        return Err(Error::sys("mount_setattr", Errno::last()));
    }
    Ok(())
}

/// Attaches the detached mount `mnt` on `target` (move_mount), which must not be a symlink.
pub fn attach(mnt: BorrowedFd<'_>, target: &Path) -> Result<()> {
    let c = path_cstr(target)?;
    let empty = c"";
    // SAFETY: move_mount reads the NUL-terminated strings; `mnt` is a valid mount fd.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn recursive_read_only_on_a_detached_tmpfs_refuses_writes() {
        if !root() {
            crate::test_skip::skip("root", "mounts a tmpfs");
            return;
        }
        let mnt = new_fs("tmpfs", &[("size", "64k")]).unwrap();
        // Writable first, so the refusal below comes from the attribute.
        nix::sys::stat::mkdirat(
            mnt.as_fd(),
            "a",
            nix::sys::stat::Mode::from_bits_truncate(0o755),
        )
        .unwrap();
        setattr_fd(mnt.as_fd(), true, libc::MOUNT_ATTR_RDONLY, 0, None).unwrap();
        let e = nix::sys::stat::mkdirat(
            mnt.as_fd(),
            "b",
            nix::sys::stat::Mode::from_bits_truncate(0o755),
        )
        .unwrap_err();
        assert_eq!(e, Errno::EROFS);
    }

    #[test]
    fn errors_name_the_path() {
        let e = clone_tree(Path::new("/nonexistent/bungeo-x"), false).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/bungeo-x"), "{e}");
    }
}
