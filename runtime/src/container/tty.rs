//! Terminals: the container side allocates a pty in its own devpts and hands the master to
//! whoever listens on the console socket (SCM_RIGHTS, like runc); the caller side receives it.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::pty::{grantpt, posix_openpt, unlockpt};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use crate::rootfs;
use crate::syscall::Syscall;
use crate::{Error, Result};

/// Sends `fd` over the unix socket `sock` with `name` as the payload.
pub fn send_fd(sock: BorrowedFd<'_>, fd: RawFd, name: &str) -> Result<()> {
    let fds = [fd];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let payload = if name.is_empty() { "pty" } else { name };
    let iov = [IoSlice::new(payload.as_bytes())];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .map_err(|e| Error::sys("send the terminal over the console socket", e))?;
    Ok(())
}

/// Receives one fd sent with [`send_fd`] (or runc's equivalent) from `sock`.
pub fn recv_fd(sock: BorrowedFd<'_>) -> Result<OwnedFd> {
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| Error::sys("receive the terminal from the console socket", e))?;
    for c in msg
        .cmsgs()
        .map_err(|e| Error::sys("read the console socket's control message", e))?
    {
        if let ControlMessageOwned::ScmRights(fds) = c
            && let Some(fd) = fds.first()
        {
            // SAFETY: the kernel just installed this fd in our table for us; nobody else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
        }
    }
    Err(Error::Child(
        "the container closed the console socket without sending a terminal".into(),
    ))
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

/// The first major of the Unix98 pty slaves (`/dev/pts/N`); there are eight (136..=143).
const PTS_MAJOR: u64 = 136;

/// The pty number of a master (TIOCGPTN).
pub(crate) fn pty_index(master: BorrowedFd<'_>) -> Result<u32> {
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int to a live pointer; master is a valid fd.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) };
    if r < 0 {
        return Err(Error::sys("TIOCGPTN", nix::errno::Errno::last()));
    }
    Ok(n)
}

/// Opens the slave of `master` without any path: TIOCGPTPEER (Linux 4.13) hands out the peer
/// of this very master, so no `/dev/pts/N` a racer could swap is looked up. Older kernels
/// open the devpts path, without following a symlink; [`verify_slave`] checks either.
fn open_slave(master: BorrowedFd<'_>, index: u32) -> Result<OwnedFd> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new fd or -1.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    if r >= 0 {
        // SAFETY: the kernel just returned this new fd; nothing else owns it.
        return Ok(unsafe { OwnedFd::from_raw_fd(r) });
    }
    let err = nix::errno::Errno::last();
    if !matches!(err, nix::errno::Errno::EINVAL | nix::errno::Errno::ENOTTY) {
        return Err(Error::sys("TIOCGPTPEER", err));
    }
    let path = format!("/dev/pts/{index}");
    nix::fcntl::open(
        Path::new(&path),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::sys(format!("open {path}"), e))
}

/// Checks that `slave` is the pty slave number `index`: a character device with the pts
/// major and minor for that number.
pub fn verify_slave(slave: BorrowedFd<'_>, index: u32) -> Result<()> {
    let st = nix::sys::stat::fstat(slave).map_err(|e| Error::sys("fstat the pty slave", e))?;
    let is_char = st.st_mode & libc::S_IFMT == libc::S_IFCHR;
    let want = (PTS_MAJOR + u64::from(index) / 256, u64::from(index) % 256);
    let got = (
        nix::sys::stat::major(st.st_rdev),
        nix::sys::stat::minor(st.st_rdev),
    );
    if !is_char || got != want {
        return Err(Error::Child(format!(
            "the terminal opened for pty {index} is not its slave (mode {:o}, device {}:{}, want {}:{})",
            st.st_mode, got.0, got.1, want.0, want.1
        )));
    }
    Ok(())
}

/// A new pty from `/dev/ptmx` (the container's devpts): the master, its verified slave, and
/// the slave's name.
pub fn open_pty() -> Result<(OwnedFd, OwnedFd, String)> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| Error::sys("open /dev/ptmx", e))?;
    grantpt(&master).map_err(|e| Error::sys("grantpt", e))?;
    unlockpt(&master).map_err(|e| Error::sys("unlockpt", e))?;
    let index = pty_index(master.as_fd())?;
    let slave = open_slave(master.as_fd(), index)?;
    verify_slave(slave.as_fd(), index)?;
    Ok((master.into(), slave, format!("/dev/pts/{index}")))
}

/// In the container process: allocates a pty from `/dev/ptmx` (the container's devpts),
/// optionally binds its slave, by fd, on `/dev/console` (the init does), sends the master over
/// `console_sock`, and makes the slave the controlling terminal and stdio. Must run after
/// setsid().
pub fn setup_console(
    sys: &dyn Syscall,
    console_sock: BorrowedFd<'_>,
    size: Option<(u16, u16)>,
    mount_console: bool,
) -> Result<()> {
    let (master, slave, name) = open_pty()?;
    if mount_console {
        rootfs::mount_console(sys, slave.as_fd())?;
    }
    if let Some((rows, cols)) = size {
        set_winsize(master.as_raw_fd(), rows, cols)?;
    }
    send_fd(console_sock, master.as_raw_fd(), &name)?;
    drop(master);
    for target in 0..3 {
        // SAFETY: dup2 onto the stdio numbers; both fds are valid.
        if unsafe { libc::dup2(slave.as_raw_fd(), target) } < 0 {
            return Err(Error::sys(
                "dup2 the terminal onto stdio",
                nix::errno::Errno::last(),
            ));
        }
    }
    // SAFETY: TIOCSCTTY on stdin (now the slave) with arg 0; the caller is a session leader.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
        return Err(Error::sys(
            "make the terminal the controlling terminal",
            nix::errno::Errno::last(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn the_slave_is_opened_from_its_master_and_verified() {
        let (master, slave, name) = open_pty().unwrap();
        let index = pty_index(master.as_fd()).unwrap();
        assert_eq!(name, format!("/dev/pts/{index}"));
        let st = nix::sys::stat::fstat(&slave).unwrap();
        assert_eq!(
            st.st_rdev,
            nix::sys::stat::makedev(PTS_MAJOR + u64::from(index) / 256, u64::from(index) % 256)
        );
        verify_slave(slave.as_fd(), index).unwrap();
        // Another pty's slave, or anything else, is refused.
        let e = verify_slave(slave.as_fd(), index + 1).unwrap_err();
        assert!(e.to_string().contains("not its slave"), "{e}");
        let null = std::fs::File::open("/dev/null").unwrap();
        assert!(verify_slave(null.as_fd(), index).is_err());
        // What is written on the slave comes out of the master: they are one pty.
        nix::unistd::write(&slave, b"ping\n").unwrap();
        let mut buf = [0u8; 16];
        let n = nix::unistd::read(&master, &mut buf).unwrap();
        assert!(buf[..n].starts_with(b"ping"), "{:?}", &buf[..n]);
    }

    #[test]
    fn fds_pass_over_a_unix_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = std::fs::File::open("/dev/null").unwrap();
        send_fd(a.as_fd(), f.as_raw_fd(), "/dev/pts/7").unwrap();
        let got = recv_fd(b.as_fd()).unwrap();
        assert_ne!(got.as_raw_fd(), f.as_raw_fd());
        let st = nix::sys::stat::fstat(&got).unwrap();
        let orig = nix::sys::stat::fstat(&f).unwrap();
        assert_eq!(st.st_rdev, orig.st_rdev);
        drop(a);
        assert!(recv_fd(b.as_fd()).is_err());
    }
}
