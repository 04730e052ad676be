//! Messages between `create`/`exec` and their children over a CLOEXEC SOCK_SEQPACKET pair:
//! one datagram per message, so no framing, and EOF when every child copy is closed (the
//! child exec'd or died).

use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

use crate::{Error, Result};

/// A message on the sync socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Msg {
    /// child → parent: the host pid of the container process (from the first child).
    Pid(i32),
    /// child → parent: "I unshared a user namespace, write my uid/gid maps".
    MapIds,
    /// parent → child: maps written.
    MapsDone,
    /// parent → child: the process is in its cgroup and the cgroup's limits are set.
    Go,
    /// init → parent: set up and waiting at the start barrier.
    Ready,
    /// child → parent: setup failed; the text is for a person.
    Error(String),
}

const MAX_MSG: usize = 64 * 1024;

impl Msg {
    fn encode(&self) -> Vec<u8> {
        match self {
            Msg::Pid(p) => {
                let mut v = vec![b'P'];
                v.extend_from_slice(&p.to_le_bytes());
                v
            }
            Msg::MapIds => vec![b'U'],
            Msg::MapsDone => vec![b'M'],
            Msg::Go => vec![b'G'],
            Msg::Ready => vec![b'R'],
            Msg::Error(s) => {
                let mut v = vec![b'E'];
                let b = s.as_bytes();
                v.extend_from_slice(&b[..b.len().min(MAX_MSG - 1)]);
                v
            }
        }
    }

    fn decode(b: &[u8]) -> Result<Msg> {
        let bad = || {
            Error::Child(format!(
                "malformed message from the container process: {b:?}"
            ))
        };
        let (tag, rest) = b.split_first().ok_or_else(bad)?;
        Ok(match tag {
            b'P' => Msg::Pid(i32::from_le_bytes(rest.try_into().map_err(|_| bad())?)),
            b'U' => Msg::MapIds,
            b'M' => Msg::MapsDone,
            b'G' => Msg::Go,
            b'R' => Msg::Ready,
            b'E' => Msg::Error(String::from_utf8_lossy(rest).into_owned()),
            _ => return Err(bad()),
        })
    }
}

/// One end of the sync socket.
#[derive(Debug)]
pub(crate) struct Channel {
    fd: OwnedFd,
}

/// A connected pair `(parent end, child end)`, both CLOEXEC.
pub(crate) fn pair() -> Result<(Channel, Channel)> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::sys("socketpair for the container sync channel", e))?;
    Ok((Channel { fd: a }, Channel { fd: b }))
}

impl Channel {
    /// The socket's fd number, for the list of fds a child keeps open.
    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }

    /// Sends one message.
    pub(crate) fn send(&self, msg: &Msg) -> Result<()> {
        let buf = msg.encode();
        loop {
            // SAFETY: send reads `buf.len()` bytes from a live buffer on a valid socket fd.
            let r = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    buf.as_ptr().cast(),
                    buf.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if r >= 0 {
                return Ok(());
            }
            match Errno::last() {
                Errno::EINTR => continue,
                e => return Err(Error::sys("send on the container sync channel", e)),
            }
        }
    }

    /// Receives one message; `None` at EOF (every peer copy closed).
    pub(crate) fn recv(&self) -> Result<Option<Msg>> {
        self.recv_flags(0)
    }

    /// A message already queued, if any; `Ok(None)` when there is none (or at EOF).
    pub(crate) fn try_recv(&self) -> Result<Option<Msg>> {
        match self.recv_flags(libc::MSG_DONTWAIT) {
            Err(Error::Sys {
                source: Errno::EAGAIN,
                ..
            }) => Ok(None),
            other => other,
        }
    }

    fn recv_flags(&self, flags: libc::c_int) -> Result<Option<Msg>> {
        // Peek at the datagram's length first: most messages are one byte, and zeroing a
        // buffer for the largest one costs page faults in every process that receives.
        let mut probe = [0u8; 1];
        let len = loop {
            // SAFETY: recv writes at most one byte into a live buffer; MSG_TRUNC makes it
            // return the datagram's full length, MSG_PEEK leaves the datagram queued.
            let r = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    probe.as_mut_ptr().cast(),
                    probe.len(),
                    libc::MSG_PEEK | libc::MSG_TRUNC | flags,
                )
            };
            if r >= 0 {
                break (r as usize).clamp(1, MAX_MSG);
            }
            match Errno::last() {
                // The peer closed with one of our messages unread (a child that failed while
                // we sent it `Go`). The kernel reports that once, ahead of what the peer sent
                // before it closed: read on, for its last words or the end of file.
                Errno::EINTR | Errno::ECONNRESET => continue,
                e => return Err(Error::sys("receive on the container sync channel", e)),
            }
        };
        let mut buf = vec![0u8; len];
        loop {
            // SAFETY: recv writes at most `buf.len()` bytes into a live buffer.
            let r =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if r > 0 {
                return Msg::decode(&buf[..r as usize]).map(Some);
            }
            if r == 0 {
                return Ok(None);
            }
            match Errno::last() {
                Errno::EINTR | Errno::ECONNRESET => continue,
                e => return Err(Error::sys("receive on the container sync channel", e)),
            }
        }
    }

    /// Receives one message and requires it to be `want`; an `Error` message becomes
    /// `Error::Child` with its text.
    pub(crate) fn expect(&self, want: &Msg, during: &str) -> Result<()> {
        match self.recv()? {
            Some(m) if &m == want => Ok(()),
            Some(Msg::Error(e)) => Err(Error::Child(e)),
            Some(other) => Err(Error::Child(format!(
                "unexpected message {other:?} {during}"
            ))),
            None => Err(Error::Child(format!(
                "the container process exited {during}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_eof_is_seen() {
        let (a, b) = pair().unwrap();
        for m in [
            Msg::Pid(4242),
            Msg::MapIds,
            Msg::MapsDone,
            Msg::Go,
            Msg::Ready,
            Msg::Error("exec: \"/bin/nope\": no such file or directory".into()),
        ] {
            b.send(&m).unwrap();
            assert_eq!(a.recv().unwrap(), Some(m));
        }
        let long = "x".repeat(MAX_MSG * 2);
        b.send(&Msg::Error(long)).unwrap();
        assert_eq!(a.recv().unwrap(), Some(Msg::Error("x".repeat(MAX_MSG - 1))));
        assert_eq!(a.try_recv().unwrap(), None);
        b.send(&Msg::Go).unwrap();
        assert_eq!(a.try_recv().unwrap(), Some(Msg::Go));
        b.send(&Msg::Error("boom".into())).unwrap();
        let e = a.expect(&Msg::Ready, "during setup").unwrap_err();
        assert_eq!(e.to_string(), "boom");
        drop(b);
        assert_eq!(a.recv().unwrap(), None);
        assert!(Msg::decode(b"P12").is_err());
    }

    /// A child that fails while the parent sends it `Go` closes with `Go` unread; its error
    /// still reaches the parent (the kernel reports ECONNRESET first, once).
    #[test]
    fn the_last_words_of_a_peer_that_closed_with_unread_messages_arrive() {
        let (parent, child) = pair().unwrap();
        child.send(&Msg::Error("mount proc failed".into())).unwrap();
        parent.send(&Msg::Go).unwrap();
        drop(child);
        let e = parent.expect(&Msg::Ready, "during setup").unwrap_err();
        assert_eq!(e.to_string(), "mount proc failed");
        assert_eq!(parent.recv().unwrap(), None);
        assert_eq!(parent.try_recv().unwrap(), None);
    }
}
