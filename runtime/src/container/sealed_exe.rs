//! Running from a sealed copy of our own binary (CVE-2019-5736).
//!
//! The processes that join a container (a container's init, an exec'd process) are forks of the
//! runtime and run its code until their `execve`, so their `/proc/<pid>/exe` names whatever
//! binary the runtime runs from. If that is the host's binary, a container process that can
//! open the link holds the host binary and can write to it once nothing runs it any more.
//! Those processes are kept non-dumpable (which shuts `/proc/<pid>/exe` to a container without
//! `CAP_SYS_PTRACE`), and the commands that fork them (`create`, `run`, `exec`) first
//! re-execute themselves from a sealed clone, so even a process that may open the link gets a
//! file that cannot be written, like runc's (`libcontainer/exeseal`):
//!
//! - first choice, a private overlayfs: the binary's directory as the upper of two lower
//!   layers, mounted detached (reachable from no mount namespace) and read-only. Overlayfs
//!   without an upper layer cannot be written at all, and nothing is copied: the clone costs a
//!   few syscalls and the one more `execve`. It needs `CAP_SYS_ADMIN`.
//! - else a memfd copy sealed against writing, growing, shrinking and further sealing. The
//!   copy costs a `sendfile` of the whole binary into memory on every command, and the memory
//!   lasts while a process maps it (the command, and its child until its `execve`).

use std::ffi::{CString, OsString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use nix::errno::Errno;

use crate::{Error, Result};

/// The seals a copy must carry: no more seals, no shrinking, no growing, no writing.
const SEALS: libc::c_int =
    libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

/// `MFD_EXEC` (Linux 6.3): asks for an executable memfd where `vm.memfd_noexec` would make it
/// non-executable by default.
const MFD_EXEC: libc::c_uint = 0x10;

/// Set in the environment of the re-executed command, so that a copy that somehow does not
/// look sealed fails instead of re-executing forever.
const MARKER: &str = "_BUNGEO_RUNTIME_SEALED_EXE";

const SELF_EXE: &str = "/proc/self/exe";

/// `OVERLAYFS_SUPER_MAGIC`.
const OVERLAYFS_MAGIC: libc::c_long = 0x794c_7630;

/// Whether `fd` is a memfd carrying every seal in [`SEALS`].
fn is_sealed(fd: &File) -> bool {
    // SAFETY: F_GET_SEALS reads flags of an fd we own; a file that is not a memfd gives EINVAL.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & SEALS == SEALS
}

/// Whether `fd` is a file on a read-only overlayfs mount (what [`sealed_overlay`] makes).
fn is_readonly_overlay(fd: &File) -> bool {
    // SAFETY: an all-zero statfs is a valid value for fstatfs to overwrite.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs writes into a live struct of the right type.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    if st.f_type as libc::c_long != OVERLAYFS_MAGIC {
        return false;
    }
    // SAFETY: an all-zero statvfs is a valid value for fstatvfs to overwrite.
    let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatvfs writes into a live struct of the right type.
    unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut vfs) == 0 && vfs.f_flag & libc::ST_RDONLY != 0 }
}

/// Whether this process runs from a sealed clone of its binary (see the module docs).
pub fn running_sealed() -> Result<bool> {
    let exe = File::open(SELF_EXE).map_err(|e| Error::io("open", SELF_EXE, e))?;
    Ok(is_sealed(&exe) || is_readonly_overlay(&exe))
}

/// `\` and `:` escaped for an overlayfs `lowerdir` list.
fn escape_lowerdir(p: &Path) -> Result<String> {
    let s = p
        .to_str()
        .ok_or_else(|| Error::InvalidArgument(format!("{} is not UTF-8", p.display())))?;
    Ok(s.replace('\\', "\\\\").replace(':', "\\:"))
}

/// An `O_PATH` fd of our binary seen through a detached, read-only overlayfs whose top lower
/// layer is the binary's directory and whose other one is `scratch` (an overlay without an
/// upper layer needs two, and they must not overlap).
pub fn sealed_overlay(scratch: &Path) -> Result<OwnedFd> {
    use crate::syscall::mount_api::{new_fs, setattr_fd};
    let bin = std::fs::read_link(SELF_EXE).map_err(|e| Error::io("readlink", SELF_EXE, e))?;
    let (Some(dir), Some(name)) = (bin.parent(), bin.file_name()) else {
        return Err(Error::Unsupported(format!(
            "the runtime binary {} has no directory",
            bin.display()
        )));
    };
    let lower = format!("{}:{}", escape_lowerdir(dir)?, escape_lowerdir(scratch)?);
    let mnt = new_fs("overlay", &[("lowerdir", &lower), ("xino", "off")])?;
    setattr_fd(
        mnt.as_fd(),
        false,
        libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
        0,
        None,
    )?;
    let c = CString::new(name.as_bytes())
        .map_err(|_| Error::InvalidArgument(format!("{name:?} holds a NUL byte")))?;
    // SAFETY: openat relative to the mount fd with a NUL-terminated name; checked below.
    let fd = unsafe {
        libc::openat(
            mnt.as_raw_fd(),
            c.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(Error::sys(
            format!("open {} through a private overlayfs", bin.display()),
            Errno::last(),
        ));
    }
    // SAFETY: openat just returned this fd and nothing else owns it. The mount fd closes
    // when `mnt` drops; the mount itself lives on as long as this file is open.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn memfd() -> Result<OwnedFd> {
    let name = c"bungeo-runtime:sealed";
    let base = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: memfd_create with a NUL-terminated name; the result is checked.
    let mut fd = unsafe { libc::memfd_create(name.as_ptr(), base | MFD_EXEC) };
    if fd < 0 && Errno::last() == Errno::EINVAL {
        // A kernel before 6.3 does not know MFD_EXEC; its memfds are executable anyway.
        // SAFETY: as above.
        fd = unsafe { libc::memfd_create(name.as_ptr(), base) };
    }
    if fd < 0 {
        return Err(Error::sys(
            "memfd_create for a sealed copy of the runtime",
            Errno::last(),
        ));
    }
    // SAFETY: memfd_create just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Copies `/proc/self/exe` into a new memfd and seals it (see [`SEALS`]).
pub fn sealed_copy() -> Result<OwnedFd> {
    let src = File::open(SELF_EXE).map_err(|e| Error::io("open", SELF_EXE, e))?;
    let len = src
        .metadata()
        .map_err(|e| Error::io("stat", SELF_EXE, e))?
        .len();
    let dst = memfd()?;
    let mut copied = 0u64;
    while copied < len {
        let chunk = usize::try_from(len - copied)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        // SAFETY: sendfile between two fds we own, from the source's own file offset.
        let n = unsafe {
            libc::sendfile(
                dst.as_raw_fd(),
                src.as_raw_fd(),
                std::ptr::null_mut(),
                chunk,
            )
        };
        match n {
            n if n > 0 => copied += n as u64,
            0 => break,
            _ if Errno::last() == Errno::EINTR => continue,
            _ => {
                return Err(Error::sys(
                    "copy the runtime binary into a memfd",
                    Errno::last(),
                ));
            }
        }
    }
    if copied != len {
        return Err(Error::Unsupported(format!(
            "copy the runtime binary into a memfd: {copied} of {len} bytes"
        )));
    }
    // SAFETY: fchmod on an fd we own: read and execute only, like the binary's own use.
    unsafe { libc::fchmod(dst.as_raw_fd(), 0o555) };
    // SAFETY: F_ADD_SEALS sets flags on a memfd we own.
    if unsafe { libc::fcntl(dst.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } < 0 {
        return Err(Error::sys(
            "seal the memfd copy of the runtime",
            Errno::last(),
        ));
    }
    Ok(dst)
}

fn cstrings(items: impl Iterator<Item = OsString>) -> Result<Vec<CString>> {
    items
        .map(|s| {
            CString::new(s.into_vec())
                .map_err(|_| Error::InvalidArgument("an argument holds a NUL byte".into()))
        })
        .collect()
}

/// Re-executes this program, with the same arguments and environment, from a sealed clone of
/// itself ([`sealed_overlay`] with `scratch`, created if missing, else [`sealed_copy`]),
/// unless it already runs from one. Returns `Ok` only in a process that runs sealed. Call it
/// before any thread starts: it reads and sets the environment.
pub fn reexec_sealed(scratch: &Path) -> Result<()> {
    if running_sealed()? {
        if std::env::var_os(MARKER).is_some() {
            // SAFETY: the caller is single-threaded (documented requirement), so nothing reads
            // the environment concurrently.
            unsafe { std::env::remove_var(MARKER) };
        }
        return Ok(());
    }
    if std::env::var_os(MARKER).is_some() {
        return Err(Error::Unsupported(
            "re-executed from a sealed copy of the runtime, but /proc/self/exe is not sealed"
                .into(),
        ));
    }
    let clone = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(scratch)
        .map_err(|e| Error::io("create", scratch, e))
        .and_then(|()| sealed_overlay(scratch));
    let copy = match clone {
        Ok(fd) => fd,
        Err(e) => {
            tracing::debug!(error = %e, "no private overlayfs for the runtime binary; copying it");
            sealed_copy()?
        }
    };
    let args = cstrings(std::env::args_os())?;
    let mut env = cstrings(std::env::vars_os().map(|(k, v)| {
        let mut kv = k;
        kv.push("=");
        kv.push(v);
        kv
    }))?;
    env.push(
        CString::new(format!("{MARKER}=1")).map_err(|_| Error::InvalidArgument(MARKER.into()))?,
    );
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: execveat on the sealed clone (AT_EMPTY_PATH: the fd itself) with NULL-terminated
    // arrays of pointers into CStrings that outlive the call; it returns only on failure. The
    // fd is close-on-exec, which an ELF binary does not need after the exec.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            copy.as_raw_fd(),
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    Err(Error::sys(
        "re-execute the runtime from its sealed copy",
        Errno::last(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn the_copy_is_sealed_identical_and_refuses_writes() {
        let copy = File::from(sealed_copy().expect("sealed copy"));
        assert!(is_sealed(&copy));
        let mut ours = Vec::new();
        File::open(SELF_EXE)
            .and_then(|mut f| f.read_to_end(&mut ours))
            .expect("read /proc/self/exe");
        let mut theirs = Vec::new();
        File::open(format!("/proc/self/fd/{}", copy.as_raw_fd()))
            .and_then(|mut f| f.read_to_end(&mut theirs))
            .expect("read the copy");
        assert!(ours == theirs, "the copy differs from /proc/self/exe");
        // A writable reopen is refused outright (F_SEAL_WRITE), and so is growing it.
        let w = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{}", copy.as_raw_fd()));
        match w {
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}"),
            Ok(mut f) => {
                let e = f.write_all(b"x").expect_err("a write into a sealed copy");
                assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
            }
        }
        // SAFETY: ftruncate on an fd we own.
        let r = unsafe { libc::ftruncate(copy.as_raw_fd(), 1) };
        assert_eq!(r, -1);
        // The test binary runs from its file on disk, not from a copy.
        assert!(!running_sealed().expect("check self"));
    }

    #[test]
    fn the_overlay_clone_is_our_binary_and_read_only() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: a private overlayfs needs root");
            return;
        }
        let scratch = tempfile::tempdir().expect("tempdir");
        let fd = sealed_overlay(scratch.path()).expect("overlay clone");
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let clone = File::open(&path).expect("reopen the clone");
        assert!(is_readonly_overlay(&clone));
        let mut ours = Vec::new();
        File::open(SELF_EXE)
            .and_then(|mut f| f.read_to_end(&mut ours))
            .expect("read /proc/self/exe");
        let mut theirs = Vec::new();
        (&clone).read_to_end(&mut theirs).expect("read the clone");
        assert!(ours == theirs, "the clone differs from /proc/self/exe");
        let e = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect_err("a writable open of the clone");
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    }

    #[test]
    fn lowerdir_separators_are_escaped() {
        assert_eq!(
            escape_lowerdir(Path::new("/a:b\\c")).expect("utf-8"),
            "/a\\:b\\\\c"
        );
    }
}
