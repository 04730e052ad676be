//! Opening the stdio a request names: FIFOs or files the daemon made, and the pipes between
//! the shim and a process.

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::supervisor::set_nonblocking;
use crate::{Error, Result};

/// A pipe, both ends close-on-exec: (read, write).
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))
}

/// A request's path must be absolute: the shim runs in `/`, the daemon elsewhere.
fn absolute<'a>(what: &str, path: &'a str) -> Result<&'a Path> {
    let p = Path::new(path);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(Error::InvalidArgument(format!(
            "{what} {path:?} must be an absolute path"
        )))
    }
}

/// Opens a stdin FIFO for reading without waiting for a writer (non-blocking). Until a writer
/// comes the supervisor's poll reports nothing on it; once the last writer leaves it reads
/// as ended, and the process's stdin is closed.
pub fn open_stdin(path: &str) -> Result<OwnedFd> {
    let p = absolute("stdin", path)?;
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(p)
        .map(OwnedFd::from)
        .map_err(|e| Error::io("open stdin", p, e))
}

/// Opens where an exec process writes its output: a FIFO read-write (so opening never waits
/// for the reader and never fails without one), or a file, created and appended to.
pub fn open_output(what: &str, path: &str, nonblocking: bool) -> Result<OwnedFd> {
    let p = absolute(what, path)?;
    let mut flags = libc::O_CLOEXEC;
    if nonblocking {
        flags |= libc::O_NONBLOCK;
    }
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(flags)
        .open(p)
        .map(OwnedFd::from)
        .map_err(|e| Error::io("open", p, e))
}

/// A non-blocking, close-on-exec duplicate of `fd`.
pub fn dup_nonblocking(fd: &OwnedFd) -> Result<OwnedFd> {
    let d = fd
        .try_clone()
        .map_err(|e| Error::io("duplicate", "<terminal>", e))?;
    set_nonblocking(&d)?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_open_without_a_peer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("in");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let r = open_stdin(fifo.to_str().unwrap()).unwrap();
        let mut b = [0u8; 4];
        // No writer yet: read says end-of-file or would-block, never blocks.
        assert!(matches!(
            nix::unistd::read(&r, &mut b),
            Ok(0) | Err(nix::errno::Errno::EAGAIN)
        ));
        let out = dir.path().join("out");
        nix::unistd::mkfifo(&out, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let w = open_output("stdout", out.to_str().unwrap(), false).unwrap();
        nix::unistd::write(&w, b"hi").unwrap();
        let file = dir.path().join("file");
        let f = open_output("stdout", file.to_str().unwrap(), true).unwrap();
        nix::unistd::write(&f, b"x").unwrap();
        nix::unistd::write(&f, b"y").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"xy");
    }

    #[test]
    fn relative_paths_are_refused() {
        let e = open_stdin("in.fifo").unwrap_err().to_string();
        assert_eq!(e, "stdin \"in.fifo\" must be an absolute path");
        assert!(open_output("stderr", "x", false).is_err());
    }
}
