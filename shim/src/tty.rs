//! Terminals of tty containers and exec processes: a console socket the runtime sends the
//! pty master over (SCM_RIGHTS, runc's protocol), and window sizes.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

use crate::{Error, Result};

/// A listening console socket; its file is removed on drop.
#[derive(Debug)]
pub struct ConsoleSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    /// Binds `<dir>/<name>`, or a path in the temp dir when that is too long for a socket.
    pub fn bind(dir: &Path, name: &str) -> Result<Self> {
        let mut path = dir.join(name);
        if path.as_os_str().len() > 100 {
            path = std::env::temp_dir().join(format!("bungeo-shim-{}-{name}", std::process::id()));
        }
        // A stale socket from a crashed earlier attempt would make bind fail.
        let _ = std::fs::remove_file(&path);
        let listener =
            UnixListener::bind(&path).map_err(|e| Error::io("bind console socket", &path, e))?;
        Ok(Self { path, listener })
    }

    /// The path to give the runtime as `--console-socket`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the terminal master the runtime sent. The runtime connects and sends before it
    /// exits, so after a successful runtime command the connection is already queued.
    pub fn receive_master(&self) -> Result<OwnedFd> {
        self.listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("set console socket non-blocking", &self.path, e))?;
        let (conn, _) = self.listener.accept().map_err(|e| {
            Error::io(
                "accept on console socket (the runtime sent no terminal)",
                &self.path,
                e,
            )
        })?;
        conn.set_nonblocking(false)
            .map_err(|e| Error::io("set console connection blocking", &self.path, e))?;
        recv_fd(conn.as_raw_fd())
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Receives one fd sent with SCM_RIGHTS on the connected unix socket `sock`.
pub fn recv_fd(sock: RawFd) -> Result<OwnedFd> {
    let mut buf = [0u8; 512];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(|e| Error::sys("receive the terminal from the console socket", e))?;
    let cmsgs = msg
        .cmsgs()
        .map_err(|e| Error::sys("read the console socket's control message", e))?;
    for c in cmsgs {
        if let ControlMessageOwned::ScmRights(fds) = c {
            let mut fds = fds.into_iter();
            if let Some(fd) = fds.next() {
                for extra in fds {
                    // SAFETY: the kernel installed these fds for us and nobody else owns them.
                    drop(unsafe { OwnedFd::from_raw_fd(extra) });
                }
                // SAFETY: as above: a fresh fd in our table, owned by nobody else.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(Error::Runtime {
        command: "console socket".into(),
        message: "the runtime closed the console socket without sending a terminal".into(),
    })
}

/// Sets a terminal's window size.
pub fn set_winsize(fd: RawFd, rows: u16, cols: u16) -> Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct from a live pointer.
    let r = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
    if r < 0 {
        return Err(Error::sys("set terminal size", nix::errno::Errno::last()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{ControlMessage, sendmsg};
    use std::io::IoSlice;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_master_sent_by_the_runtime_is_received() {
        let dir = tempfile::tempdir().unwrap();
        let sock = ConsoleSocket::bind(dir.path(), "c.sock").unwrap();
        let path = sock.path().to_path_buf();
        assert!(path.starts_with(dir.path()));
        let f = std::fs::File::open("/dev/null").unwrap();
        {
            // As the runtime does: connect, send, close, exit, before the shim accepts.
            let c = UnixStream::connect(&path).unwrap();
            let fds = [f.as_raw_fd()];
            sendmsg::<()>(
                c.as_raw_fd(),
                &[IoSlice::new(b"/dev/pts/3")],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                None,
            )
            .unwrap();
        }
        let got = sock.receive_master().unwrap();
        let a = nix::sys::stat::fstat(&got).unwrap();
        let b = nix::sys::stat::fstat(&f).unwrap();
        assert_eq!((a.st_dev, a.st_ino), (b.st_dev, b.st_ino));
        // Nothing more was sent.
        assert!(sock.receive_master().is_err());
        drop(sock);
        assert!(!path.exists());
    }

    #[test]
    fn a_too_long_directory_falls_back_to_the_temp_dir() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("d".repeat(100));
        std::fs::create_dir(&deep).unwrap();
        let sock = ConsoleSocket::bind(&deep, "c.sock").unwrap();
        assert!(sock.path().starts_with(std::env::temp_dir()));
        assert!(sock.path().exists());
    }

    #[test]
    fn window_sizes_apply_to_a_pty() {
        let master = nix::pty::posix_openpt(nix::fcntl::OFlag::O_RDWR).unwrap();
        set_winsize(master.as_raw_fd(), 40, 132).unwrap();
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize into a live struct.
        let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(r, 0);
        assert_eq!((ws.ws_row, ws.ws_col), (40, 132));
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(set_winsize(f.as_raw_fd(), 1, 1).is_err());
    }
}
