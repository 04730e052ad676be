//! Attach: the container's live output fanned out to attached clients, and their input into
//! the container's stdin, over a unix stream socket in the shim's state dir (the idea of
//! conmon's attach socket).
//!
//! Protocol. A client connects to `<state dir>/`[`SOCKET`] and sends one mode byte:
//! [`MODE_OUTPUT`] (output only) or [`MODE_STDIN`] (what follows is the client's stdin, until
//! it shuts down its writing side). The shim sends frames: a type byte ([`FRAME_STDOUT`],
//! [`FRAME_STDERR`]; a terminal's output is all stdout), the length as a big-endian u32, the
//! bytes. Once the container's init has exited and every byte of its output has been sent,
//! the shim closes the connection.
//!
//! The container's stdin, when it was created with one ([`StdioOptions`]), is held open by
//! the shim across attach sessions; every attached client's stdin goes into it. With
//! `stdin_once` it is closed when the stdin of the first client that attached with stdin ends
//! (for a terminal, which cannot be half-closed, the shim stops passing input instead).
//!
//! Output never waits for a client: the CRI log is written first, and a client whose backlog
//! passes [`CLIENT_BACKLOG`] is disconnected, so a slow or vanished client costs the
//! container nothing and the log stays complete.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::poll::PollFlags;

use crate::cri_log::Stream;
use crate::{Error, Result};

/// The attach socket's name in the shim's state dir.
pub const SOCKET: &str = "attach.sock";
/// A client's first byte: it only reads output.
pub const MODE_OUTPUT: u8 = 0;
/// A client's first byte: what follows is stdin for the container.
pub const MODE_STDIN: u8 = 1;
/// Frame type of stdout bytes (and of a terminal's output).
pub const FRAME_STDOUT: u8 = 1;
/// Frame type of stderr bytes.
pub const FRAME_STDERR: u8 = 2;
/// Type byte and length before each frame's bytes.
pub const FRAME_HEADER: usize = 5;
/// Output queued for one client beyond which it is disconnected (the socket's own buffer
/// comes on top).
pub const CLIENT_BACKLOG: usize = 1 << 20;
/// Clients attached at once; more are turned away.
pub const MAX_CLIENTS: usize = 32;
/// The type URL of [`StdioOptions`] in a CreateTaskRequest's `options`.
pub const OPTIONS_TYPE_URL: &str = "io.bungeo.shim.v1.StdioOptions";

/// The CRI ContainerConfig's stdin settings, passed in Create's `options` as JSON.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StdioOptions {
    /// Keep the container's stdin open for attached clients.
    #[serde(default)]
    pub stdin: bool,
    /// Close it when the first attached client's stdin ends.
    #[serde(default)]
    pub stdin_once: bool,
}

impl StdioOptions {
    /// Parses the options of a Create request (`type_url`, JSON `value`).
    pub fn parse(type_url: &str, value: &[u8]) -> Result<Self> {
        if type_url != OPTIONS_TYPE_URL {
            return Err(Error::InvalidArgument(format!(
                "create options of type {type_url:?} are not understood (expected \
                 {OPTIONS_TYPE_URL:?})"
            )));
        }
        serde_json::from_slice(value)
            .map_err(|e| Error::InvalidArgument(format!("create options: {e}")))
    }

    /// The JSON to put in a Create request's `options`.
    pub fn to_json(&self) -> Vec<u8> {
        // Two booleans always serialize.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Runs `f` on `path`, or, when the path is too long for a unix socket address, on the same
/// file reached through `/proc/self/fd/<dir>/<name>`.
fn with_short_path<T>(
    path: &Path,
    f: impl FnOnce(&Path) -> std::io::Result<T>,
) -> std::io::Result<T> {
    // sun_path holds 108 bytes with its NUL.
    if path.as_os_str().len() <= 100 {
        return f(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return f(path);
    };
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)?;
    f(&Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name))
}

/// Connects to the attach socket of the shim whose state dir is `state_dir` (blocking; a
/// unix connect does not wait for the peer).
pub fn connect(state_dir: &Path) -> std::io::Result<UnixStream> {
    with_short_path(&state_dir.join(SOCKET), |p| UnixStream::connect(p))
}

/// Encodes a frame header.
pub fn frame_header(kind: u8, len: usize) -> [u8; FRAME_HEADER] {
    let n = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    [kind, n[0], n[1], n[2], n[3]]
}

#[derive(Debug)]
struct Client {
    id: u64,
    sock: UnixStream,
    /// Unknown until the first byte arrives.
    mode: Option<u8>,
    /// Still reading from the client (its mode byte, or its stdin).
    reading: bool,
    out: Vec<u8>,
    /// How much of `out` is sent.
    sent: usize,
    /// Close once `out` is sent (the container's output ended).
    closing: bool,
    gone: bool,
}

impl Client {
    fn backlog(&self) -> usize {
        self.out.len() - self.sent
    }

    /// Sends what is queued, as far as the socket takes it.
    fn flush(&mut self) {
        while self.sent < self.out.len() {
            match (&self.sock).write(&self.out[self.sent..]) {
                Ok(0) => {
                    self.gone = true;
                    return;
                }
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.gone = true;
                    return;
                }
            }
        }
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
            if self.out.capacity() > 256 * 1024 {
                self.out = Vec::new();
            }
            if self.closing {
                // Unread input at close would make the peer read a reset, not the end.
                let mut sink = [0u8; 512];
                while matches!((&self.sock).read(&mut sink), Ok(n) if n > 0) {}
                let _ = self.sock.shutdown(std::net::Shutdown::Both);
                self.gone = true;
            }
        } else if self.sent >= 64 * 1024 && self.sent * 2 >= self.out.len() {
            // Keep the buffer from growing by what was already sent.
            self.out.drain(..self.sent);
            self.sent = 0;
        }
    }
}

/// What one poll entry of the attach state stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Listener,
    Stdin,
    Client(usize),
}

/// The attach socket, its clients, and the container's stdin held open for them.
#[derive(Debug)]
pub struct Attach {
    path: PathBuf,
    listener: Option<UnixListener>,
    clients: Vec<Client>,
    next_id: u64,
    /// The write end of the container's stdin (a pipe, or a terminal master), non-blocking.
    stdin: Option<OwnedFd>,
    stdin_pending: Vec<u8>,
    /// Close stdin once what is pending is written.
    stdin_closing: bool,
    stdin_once: bool,
    /// The client whose end of stdin closes the container's (with `stdin_once`).
    stdin_owner: Option<u64>,
    /// The init exited: no new clients; the others are closed once their output is sent.
    ended: bool,
}

impl Attach {
    /// Binds `<state_dir>/`[`SOCKET`] (replacing a stale one) for a container whose stdin
    /// write end, if it has one, is `stdin` (it is made non-blocking).
    pub fn bind(state_dir: &Path, stdin: Option<OwnedFd>, stdin_once: bool) -> Result<Self> {
        let path = state_dir.join(SOCKET);
        let _ = std::fs::remove_file(&path);
        let listener = with_short_path(&path, |p| UnixListener::bind(p))
            .map_err(|e| Error::io("bind attach socket", &path, e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("set attach socket non-blocking", &path, e))?;
        if let Some(fd) = &stdin {
            crate::supervisor::set_nonblocking(fd)?;
        }
        Ok(Self {
            path,
            listener: Some(listener),
            clients: Vec::new(),
            next_id: 0,
            stdin,
            stdin_pending: Vec::new(),
            stdin_closing: false,
            stdin_once,
            stdin_owner: None,
            ended: false,
        })
    }

    /// Sets the container's stdin write end, once it is known (a terminal's master).
    pub fn set_stdin(&mut self, stdin: OwnedFd) {
        self.stdin = Some(stdin);
    }

    /// Where clients connect.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Clients attached now.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Whether the container's stdin is still open.
    pub fn stdin_open(&self) -> bool {
        self.stdin.is_some()
    }

    /// The fds to poll and what each stands for.
    pub fn poll_fds(&self) -> Vec<(BorrowedFd<'_>, PollFlags, Slot)> {
        let mut v = Vec::with_capacity(2 + self.clients.len());
        if let Some(l) = &self.listener {
            v.push((l.as_fd(), PollFlags::POLLIN, Slot::Listener));
        }
        if let Some(fd) = &self.stdin
            && !self.stdin_pending.is_empty()
        {
            v.push((fd.as_fd(), PollFlags::POLLOUT, Slot::Stdin));
        }
        for (i, c) in self.clients.iter().enumerate() {
            let mut flags = PollFlags::empty();
            // Input waits while the container has not taken the last of it.
            if c.reading && (c.mode.is_none() || self.stdin_pending.is_empty()) {
                flags |= PollFlags::POLLIN;
            }
            if c.backlog() > 0 {
                flags |= PollFlags::POLLOUT;
            }
            // Polled even with no events: a hang-up is always reported.
            v.push((c.sock.as_fd(), flags, Slot::Client(i)));
        }
        v
    }

    /// Handles what poll reported for the entries of [`Attach::poll_fds`]; `buf` is scratch.
    pub fn handle(&mut self, ready: &[(Slot, PollFlags)], buf: &mut [u8]) {
        for &(slot, revents) in ready {
            if revents.is_empty() {
                continue;
            }
            match slot {
                Slot::Listener => self.accept_all(),
                Slot::Stdin => self.flush_stdin(),
                Slot::Client(i) => {
                    if revents.contains(PollFlags::POLLIN) {
                        self.read_client(i, buf);
                    }
                    if revents.contains(PollFlags::POLLOUT) {
                        self.clients[i].flush();
                    }
                    if revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
                        self.clients[i].gone = true;
                    }
                }
            }
        }
        self.remove_gone();
    }

    fn accept_all(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        loop {
            match listener.accept() {
                Ok((sock, _)) => {
                    if self.ended || self.clients.len() >= MAX_CLIENTS {
                        if !self.ended {
                            crate::log(format_args!(
                                "attach: {MAX_CLIENTS} clients attached already; refusing one"
                            ));
                        }
                        continue;
                    }
                    if sock.set_nonblocking(true).is_err() {
                        continue;
                    }
                    self.next_id += 1;
                    self.clients.push(Client {
                        id: self.next_id,
                        sock,
                        mode: None,
                        reading: true,
                        out: Vec::new(),
                        sent: 0,
                        closing: false,
                        gone: false,
                    });
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    crate::log(format_args!("attach: accept: {e}"));
                    return;
                }
            }
        }
    }

    fn read_client(&mut self, i: usize, buf: &mut [u8]) {
        let c = &mut self.clients[i];
        if !c.reading {
            return;
        }
        let n = match (&c.sock).read(buf) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                return;
            }
            Err(_) => {
                c.gone = true;
                return;
            }
        };
        if n == 0 {
            c.reading = false;
            if c.mode == Some(MODE_STDIN) {
                let id = c.id;
                self.stdin_ended(id);
            } else {
                // An output-only client never half-closes: it is gone.
                c.gone = true;
            }
            return;
        }
        let mut data = &buf[..n];
        if c.mode.is_none() {
            match data[0] {
                MODE_OUTPUT => c.reading = false,
                MODE_STDIN => {
                    if self.stdin_once && self.stdin_owner.is_none() {
                        self.stdin_owner = Some(c.id);
                    }
                }
                other => {
                    crate::log(format_args!("attach: unknown client mode {other}"));
                    c.gone = true;
                    return;
                }
            }
            c.mode = Some(data[0]);
            data = &data[1..];
        }
        if c.mode == Some(MODE_STDIN) && !data.is_empty() {
            self.write_stdin(data);
        }
    }

    fn remove_gone(&mut self) {
        let mut ended = Vec::new();
        self.clients.retain(|c| {
            if c.gone && c.reading && c.mode == Some(MODE_STDIN) {
                ended.push(c.id);
            }
            !c.gone
        });
        for id in ended {
            self.stdin_ended(id);
        }
    }

    /// A client's stdin ended (or the client went away before it did).
    fn stdin_ended(&mut self, id: u64) {
        if self.stdin_once && self.stdin_owner == Some(id) {
            self.close_stdin();
        }
    }

    /// Closes the container's stdin once what is pending is written (CloseIO, stdin_once).
    pub fn close_stdin(&mut self) {
        self.stdin_closing = true;
        self.flush_stdin();
    }

    fn write_stdin(&mut self, data: &[u8]) {
        if self.stdin.is_none() || self.stdin_closing {
            return;
        }
        self.stdin_pending.extend_from_slice(data);
        self.flush_stdin();
    }

    fn flush_stdin(&mut self) {
        let Some(fd) = &self.stdin else {
            self.stdin_pending.clear();
            return;
        };
        let mut written = 0;
        let mut broken = false;
        while written < self.stdin_pending.len() {
            match nix::unistd::write(fd, &self.stdin_pending[written..]) {
                Ok(n) => written += n,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break,
                Err(_) => {
                    // The container closed its stdin or is gone: input has nowhere to go.
                    broken = true;
                    break;
                }
            }
        }
        self.stdin_pending.drain(..written);
        if broken {
            self.stdin = None;
            self.stdin_pending = Vec::new();
        } else if self.stdin_pending.is_empty() {
            if self.stdin_pending.capacity() > 64 * 1024 {
                self.stdin_pending = Vec::new();
            }
            if self.stdin_closing {
                self.stdin = None;
            }
        }
    }

    /// Queues `data` from the container's `stream` for every client. A client whose backlog
    /// would pass [`CLIENT_BACKLOG`] is disconnected instead.
    pub fn broadcast(&mut self, stream: Stream, data: &[u8]) {
        if self.clients.is_empty() || data.is_empty() {
            return;
        }
        let kind = match stream {
            Stream::Stdout => FRAME_STDOUT,
            Stream::Stderr => FRAME_STDERR,
        };
        let header = frame_header(kind, data.len());
        for c in &mut self.clients {
            if c.gone || c.closing {
                continue;
            }
            if c.backlog() + FRAME_HEADER + data.len() > CLIENT_BACKLOG {
                crate::log(format_args!(
                    "attach: a client fell {} bytes behind the container's output; \
                     disconnecting it",
                    c.backlog()
                ));
                let _ = c.sock.shutdown(std::net::Shutdown::Both);
                c.gone = true;
                continue;
            }
            c.out.extend_from_slice(&header);
            c.out.extend_from_slice(data);
            c.flush();
        }
        self.remove_gone();
    }

    /// The init exited and its output is all queued: stop listening, drop its stdin, and close
    /// each client once it has its output.
    pub fn finish(&mut self) {
        self.ended = true;
        self.listener = None;
        self.stdin = None;
        self.stdin_pending = Vec::new();
        for c in &mut self.clients {
            c.closing = true;
            c.reading = false;
            c.flush();
        }
        self.remove_gone();
    }
}

impl Drop for Attach {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{PollFd, PollTimeout, poll};
    use std::time::{Duration, Instant};

    /// Polls and handles once (at most `ms`).
    fn step(a: &mut Attach, ms: u16) {
        let entries = a.poll_fds();
        let mut fds: Vec<PollFd> = entries
            .iter()
            .map(|(f, e, _)| PollFd::new(*f, *e))
            .collect();
        let _ = poll(&mut fds, PollTimeout::from(ms));
        let ready: Vec<(Slot, PollFlags)> = fds
            .iter()
            .zip(&entries)
            .map(|(f, (_, _, s))| (*s, f.revents().unwrap_or(PollFlags::empty())))
            .collect();
        drop(fds);
        drop(entries);
        let mut buf = vec![0u8; 4096];
        a.handle(&ready, &mut buf);
    }

    fn step_until(a: &mut Attach, mut done: impl FnMut(&Attach) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done(a) {
            assert!(Instant::now() < deadline, "timed out");
            step(a, 20);
        }
    }

    /// Reads frames from a client socket until `want` bytes of payload or end of stream.
    fn read_frames(s: &mut UnixStream, want: usize) -> (Vec<(u8, Vec<u8>)>, bool) {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut raw = Vec::new();
        let mut frames = Vec::new();
        let mut got = 0;
        let mut eof = false;
        while got < want {
            let mut b = [0u8; 8192];
            match s.read(&mut b) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => raw.extend_from_slice(&b[..n]),
                Err(e) => panic!("read: {e}"),
            }
            while raw.len() >= FRAME_HEADER {
                let len = u32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]) as usize;
                if raw.len() < FRAME_HEADER + len {
                    break;
                }
                frames.push((raw[0], raw[FRAME_HEADER..FRAME_HEADER + len].to_vec()));
                got += len;
                raw.drain(..FRAME_HEADER + len);
            }
        }
        (frames, eof)
    }

    fn setup(stdin_once: bool) -> (tempfile::TempDir, Attach, OwnedFd) {
        let dir = tempfile::tempdir().unwrap();
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let a = Attach::bind(dir.path(), Some(w), stdin_once).unwrap();
        crate::supervisor::set_nonblocking(&r).unwrap();
        (dir, a, r)
    }

    fn read_pipe(r: &OwnedFd) -> Option<Vec<u8>> {
        let mut b = [0u8; 4096];
        match nix::unistd::read(r, &mut b) {
            Ok(n) => Some(b[..n].to_vec()),
            Err(_) => None,
        }
    }

    #[test]
    fn output_fans_out_to_every_client_with_its_stream() {
        let (dir, mut a, _r) = setup(false);
        let mut c1 = connect(dir.path()).unwrap();
        let mut c2 = connect(dir.path()).unwrap();
        c1.write_all(&[MODE_OUTPUT]).unwrap();
        c2.write_all(&[MODE_STDIN]).unwrap();
        step_until(&mut a, |a| a.client_count() == 2);
        a.broadcast(Stream::Stdout, b"out");
        a.broadcast(Stream::Stderr, b"err");
        for c in [&mut c1, &mut c2] {
            let (frames, _) = read_frames(c, 6);
            assert_eq!(
                frames,
                [
                    (FRAME_STDOUT, b"out".to_vec()),
                    (FRAME_STDERR, b"err".to_vec())
                ]
            );
        }
        // The init exits: each client gets the rest, then end of stream.
        a.broadcast(Stream::Stdout, b"last");
        a.finish();
        for c in [&mut c1, &mut c2] {
            let (frames, eof) = read_frames(c, usize::MAX);
            assert_eq!(frames, [(FRAME_STDOUT, b"last".to_vec())]);
            assert!(eof);
        }
        assert_eq!(a.client_count(), 0);
        assert!(
            connect(dir.path()).is_err(),
            "no new clients after the exit"
        );
    }

    #[test]
    fn stdin_of_every_client_reaches_the_container_and_stays_open() {
        let (dir, mut a, r) = setup(false);
        let mut c1 = connect(dir.path()).unwrap();
        c1.write_all(&[MODE_STDIN]).unwrap();
        c1.write_all(b"one").unwrap();
        step_until(&mut a, |a| {
            a.client_count() == 1 && a.stdin_pending.is_empty()
        });
        step(&mut a, 20);
        assert_eq!(read_pipe(&r).as_deref(), Some(&b"one"[..]));
        // Its stdin ends, then it leaves: without stdin_once the container's stays open.
        c1.shutdown(std::net::Shutdown::Write).unwrap();
        step_until(&mut a, |a| !a.clients[0].reading);
        drop(c1);
        step_until(&mut a, |a| a.client_count() == 0);
        assert!(a.stdin_open());
        let mut c2 = connect(dir.path()).unwrap();
        c2.write_all(&[MODE_STDIN, b't', b'w', b'o']).unwrap();
        step_until(&mut a, |a| a.client_count() == 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        while got != b"two" && Instant::now() < deadline {
            step(&mut a, 20);
            got.extend(read_pipe(&r).unwrap_or_default());
        }
        assert_eq!(got, b"two");
        // An output-only client's bytes after its mode byte are not stdin.
        let mut c3 = connect(dir.path()).unwrap();
        c3.write_all(&[MODE_OUTPUT, b'x']).unwrap();
        step_until(&mut a, |a| a.client_count() == 2);
        step(&mut a, 50);
        assert_eq!(read_pipe(&r), None);
    }

    #[test]
    fn stdin_once_closes_the_container_stdin_when_the_first_stdin_ends() {
        let (dir, mut a, r) = setup(true);
        // An output-only client does not claim stdin.
        let mut watcher = connect(dir.path()).unwrap();
        watcher.write_all(&[MODE_OUTPUT]).unwrap();
        let mut first = connect(dir.path()).unwrap();
        first.write_all(&[MODE_STDIN, b'h', b'i']).unwrap();
        step_until(&mut a, |a| a.client_count() == 2 && a.stdin_owner.is_some());
        let mut second = connect(dir.path()).unwrap();
        second.write_all(&[MODE_STDIN, b'!']).unwrap();
        step_until(&mut a, |a| {
            a.client_count() == 3 && a.clients[2].mode.is_some()
        });
        // The second client's end of stdin changes nothing.
        second.shutdown(std::net::Shutdown::Write).unwrap();
        step_until(&mut a, |a| !a.clients[2].reading);
        assert!(a.stdin_open());
        first.shutdown(std::net::Shutdown::Write).unwrap();
        step_until(&mut a, |a| !a.stdin_open());
        // Everything written before reaches the container, then end of file.
        let mut got = Vec::new();
        loop {
            let mut b = [0u8; 64];
            match nix::unistd::read(&r, &mut b) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&b[..n]),
                Err(e) => panic!("stdin still open: {e}"),
            }
        }
        assert_eq!(got, b"hi!");
        // The clients keep their output until the container's ends.
        a.broadcast(Stream::Stdout, b"bye");
        let (frames, _) = read_frames(&mut first, 3);
        assert_eq!(frames, [(FRAME_STDOUT, b"bye".to_vec())]);
    }

    #[test]
    fn stdin_once_data_arrives_before_the_end_of_file() {
        let (dir, mut a, r) = setup(true);
        let mut c = connect(dir.path()).unwrap();
        c.write_all(&[MODE_STDIN]).unwrap();
        c.write_all(b"payload").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        step_until(&mut a, |a| !a.stdin_open());
        let mut got = Vec::new();
        loop {
            let mut b = [0u8; 64];
            match nix::unistd::read(&r, &mut b) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&b[..n]),
                Err(e) => panic!("read: {e}"),
            }
        }
        assert_eq!(got, b"payload");
    }

    #[test]
    fn a_slow_client_is_disconnected_and_never_holds_output_back() {
        let (dir, mut a, _r) = setup(false);
        let slow = connect(dir.path()).unwrap();
        let mut fast = connect(dir.path()).unwrap();
        (&slow).write_all(&[MODE_OUTPUT]).unwrap();
        fast.write_all(&[MODE_OUTPUT]).unwrap();
        step_until(&mut a, |a| a.client_count() == 2);
        let chunk = vec![7u8; 32 * 1024];
        let total = CLIENT_BACKLOG * 3;
        let reader = std::thread::spawn(move || {
            let (frames, _) = read_frames(&mut fast, total);
            frames.iter().map(|f| f.1.len()).sum::<usize>()
        });
        // The slow client never reads: broadcasting never blocks, and it is dropped.
        let started = Instant::now();
        for _ in 0..total / chunk.len() {
            a.broadcast(Stream::Stdout, &chunk);
            step(&mut a, 0);
            // Give the fast reader a chance, as the poll loop would.
            while a
                .clients
                .iter()
                .any(|c| c.backlog() > CLIENT_BACKLOG / 2 && c.id == 2)
            {
                step(&mut a, 10);
            }
        }
        a.finish();
        step_until(&mut a, |a| a.client_count() == 0);
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(
            reader.join().unwrap(),
            total,
            "the fast client got everything"
        );
        // The slow one was cut off: it reads less than was written, then end of stream.
        let mut slow = slow;
        slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut n = 0;
        let mut b = vec![0u8; 65536];
        loop {
            match slow.read(&mut b) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(n < total, "slow client read {n} of {total}");
    }

    #[test]
    fn long_state_dirs_still_bind_and_connect() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("d".repeat(110));
        std::fs::create_dir(&deep).unwrap();
        let mut a = Attach::bind(&deep, None, false).unwrap();
        assert!(deep.join(SOCKET).exists());
        let mut c = connect(&deep).unwrap();
        c.write_all(&[MODE_STDIN, b'x']).unwrap();
        step_until(&mut a, |a| a.client_count() == 1);
        // No stdin: the bytes are dropped.
        step(&mut a, 20);
        assert!(!a.stdin_open());
        drop(a);
        assert!(!deep.join(SOCKET).exists());
    }

    #[test]
    fn options_parse_from_json_and_refuse_other_types() {
        let o = StdioOptions {
            stdin: true,
            stdin_once: true,
        };
        assert_eq!(
            StdioOptions::parse(OPTIONS_TYPE_URL, &o.to_json()).unwrap(),
            o
        );
        assert_eq!(
            StdioOptions::parse(OPTIONS_TYPE_URL, b"{}").unwrap(),
            StdioOptions::default()
        );
        assert!(StdioOptions::parse("other", &o.to_json()).is_err());
        assert!(StdioOptions::parse(OPTIONS_TYPE_URL, b"[").is_err());
    }
}
