//! The loopback interface of the calling thread's network namespace, through the classic
//! interface ioctls: a fresh network namespace has `lo` down, and pods expect 127.0.0.1 to work
//! before any CNI plugin ran.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

use crate::error::{Error, Result};

const LOOPBACK: &[u8] = b"lo";

fn control_socket() -> Result<OwnedFd> {
    socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| Error::sys("socket for interface ioctls", e))
}

fn loopback_request() -> libc::ifreq {
    // SAFETY: ifreq is a plain C struct (a name array and a union of integers, sockaddrs and a
    // pointer) for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(LOOPBACK) {
        *dst = *src as libc::c_char;
    }
    req
}

fn get_flags(sock: &OwnedFd, req: &mut libc::ifreq) -> Result<()> {
    // SAFETY: SIOCGIFFLAGS reads the NUL-terminated name from `req` and writes the flags into
    // its union; `req` is a valid, exclusively borrowed ifreq for the whole call.
    let rc = unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCGIFFLAGS,
            req as *mut libc::ifreq,
        )
    };
    if rc < 0 {
        return Err(Error::sys("ioctl SIOCGIFFLAGS lo", Errno::last()));
    }
    Ok(())
}

/// Brings `lo` up in the calling thread's network namespace.
pub fn set_loopback_up() -> Result<()> {
    let sock = control_socket()?;
    let mut req = loopback_request();
    get_flags(&sock, &mut req)?;
    // SAFETY: SIOCGIFFLAGS above filled the flags member of the union, so reading it is
    // reading an initialised c_short.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS only reads the name and flags from `req`, a valid ifreq borrowed for
    // the whole call.
    let rc = unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCSIFFLAGS,
            &mut req as *mut libc::ifreq,
        )
    };
    if rc < 0 {
        return Err(Error::sys("ioctl SIOCSIFFLAGS lo up", Errno::last()));
    }
    Ok(())
}

/// Whether `lo` is up in the calling thread's network namespace.
pub fn loopback_is_up() -> Result<bool> {
    let sock = control_socket()?;
    let mut req = loopback_request();
    get_flags(&sock, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    Ok(flags & libc::IFF_UP as libc::c_short != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_loopback_is_up() {
        // The host's lo is always up on a working machine; this exercises the ioctl plumbing.
        assert!(loopback_is_up().expect("SIOCGIFFLAGS"));
    }

    #[test]
    fn request_names_lo() {
        let req = loopback_request();
        assert_eq!(req.ifr_name[0] as u8, b'l');
        assert_eq!(req.ifr_name[1] as u8, b'o');
        assert_eq!(req.ifr_name[2], 0);
    }
}
