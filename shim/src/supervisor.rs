//! The shim's main loop, on the main thread: reaps children (SIGCHLD through a signalfd),
//! copies container output into the CRI log and stdin into processes through fixed buffers,
//! writes `exit.json` and reports exits once a process's output is done, and ends the shim
//! when it is told to. The ttrpc handlers run on the server's threads and talk to this loop
//! through [`Shared`].

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signalfd::SignalFd;

use crate::attach::{Attach, Slot};
use crate::config::Config;
use crate::cri_log::{CriLog, Stream};
use crate::exit_record::{self, ExitRecord};
use crate::state::{INIT, State};

/// Bytes moved per read; also the most a slow stdin reader can leave pending per pump.
const CHUNK: usize = 32 * 1024;

/// Where a pump's bytes go.
#[derive(Debug)]
pub enum Sink {
    /// The container's CRI log, tagged with the stream.
    Log(Stream),
    /// A non-blocking fd (a process's stdin, a terminal master, an exec's output FIFO).
    Fd(OwnedFd),
    /// Nowhere (the reader went away, or no log was asked for).
    Discard,
}

/// Copies one non-blocking source into a sink until the source ends.
#[derive(Debug)]
pub struct Pump {
    /// The process it belongs to ([`INIT`] or an exec id).
    pub owner: String,
    /// Output of the process (its exit waits for it), or input to it.
    pub output: bool,
    src: Option<OwnedFd>,
    sink: Sink,
    pending: Vec<u8>,
    /// Stop reading; finish once what is pending is written (CloseIO).
    closing: bool,
    /// Also hand what is read to attached clients, as this stream (the init's output).
    fanout: Option<Stream>,
}

impl Pump {
    /// A pump from `src`, which must be non-blocking, as must an `Fd` sink.
    pub fn new(owner: &str, output: bool, src: OwnedFd, sink: Sink) -> Self {
        Self {
            owner: owner.to_string(),
            output,
            src: Some(src),
            sink,
            pending: Vec::new(),
            closing: false,
            fanout: None,
        }
    }

    /// Makes the pump also pass its bytes to attached clients as `stream`.
    pub fn with_fanout(mut self, stream: Stream) -> Self {
        self.fanout = Some(stream);
        self
    }

    fn done(&self) -> bool {
        (self.src.is_none() || self.closing) && self.pending.is_empty()
    }

    fn wants_read(&self) -> Option<BorrowedFd<'_>> {
        if self.closing || !self.pending.is_empty() {
            return None;
        }
        self.src.as_ref().map(|s| s.as_fd())
    }

    fn wants_write(&self) -> Option<BorrowedFd<'_>> {
        match &self.sink {
            Sink::Fd(fd) if !self.pending.is_empty() => Some(fd.as_fd()),
            _ => None,
        }
    }
}

/// What the ttrpc handlers and the supervisor loop share.
#[derive(Debug)]
pub struct Shared {
    pub cfg: Config,
    pub state: Mutex<State>,
    /// Signalled whenever a process or command exit is recorded or reported.
    pub changed: Condvar,
    /// The container's log, written by the loop, reopened by Update.
    pub log: Mutex<Option<CriLog>>,
    new_pumps: Mutex<Vec<Pump>>,
    new_attach: Mutex<Option<Attach>>,
    wake: OwnedFd,
}

/// Locks, carrying on with the data when another thread panicked while holding the lock
/// (a handler's panic must not take the container's supervision down with it).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Shared state for the loop whose wake pipe's write end is `wake`.
    pub fn new(cfg: Config, wake: OwnedFd) -> Self {
        Self {
            cfg,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            log: Mutex::new(None),
            new_pumps: Mutex::new(Vec::new()),
            new_attach: Mutex::new(None),
            wake,
        }
    }

    /// Makes the loop look at the shared state again.
    pub fn wake(&self) {
        // EAGAIN: the pipe is full of wake-ups already, which is as good.
        let _ = nix::unistd::write(&self.wake, &[1]);
    }

    /// Hands pumps to the loop.
    pub fn add_pumps(&self, pumps: Vec<Pump>) {
        if pumps.is_empty() {
            return;
        }
        lock(&self.new_pumps).extend(pumps);
        self.wake();
    }

    /// Hands the init's attach socket to the loop.
    pub fn set_attach(&self, attach: Attach) {
        *lock(&self.new_attach) = Some(attach);
        self.wake();
    }

    /// Waits on [`Shared::changed`] with the state lock.
    pub fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(guard).unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs until the shim is told to exit. `signals` reads SIGCHLD; `wake` is the read end of the
/// pipe [`Shared::wake`] writes.
pub fn run(shared: &Shared, signals: &SignalFd, wake: &OwnedFd) {
    let mut pumps: Vec<Pump> = Vec::new();
    let mut attach: Option<Attach> = None;
    let mut buf = vec![0u8; CHUNK];
    let mut log_failed = false;
    loop {
        pumps.append(&mut lock(&shared.new_pumps));
        if let Some(a) = lock(&shared.new_attach).take() {
            attach = Some(a);
        }
        let now = Instant::now();
        let (due, deadline, exit_now) = {
            let mut st = lock(&shared.state);
            if st.reap() {
                shared.changed.notify_all();
            }
            for key in std::mem::take(&mut st.close_stdin) {
                for p in pumps.iter_mut().filter(|p| p.owner == key && !p.output) {
                    p.closing = true;
                }
                if key == INIT
                    && let Some(a) = attach.as_mut()
                {
                    a.close_stdin();
                }
            }
            pumps.retain(|p| !p.done());
            let due = st.due_exits(now, |key| pumps.iter().any(|p| p.output && p.owner == key));
            let exit_now = st.exit_at.is_some_and(|t| now >= t);
            (due, st.next_deadline(), exit_now)
        };
        if !due.is_empty() {
            publish(shared, &due);
            if due.iter().any(|k| k == INIT)
                && let Some(a) = attach.as_mut()
            {
                // Every byte of the init's output is queued for the clients by now.
                a.finish();
            }
            continue;
        }
        if exit_now {
            return;
        }

        let mut fds = Vec::with_capacity(2 + pumps.len());
        fds.push(PollFd::new(signals.as_fd(), PollFlags::POLLIN));
        fds.push(PollFd::new(wake.as_fd(), PollFlags::POLLIN));
        // (pump index, is-write) per poll entry after the first two.
        let mut slots = Vec::with_capacity(pumps.len());
        for (i, p) in pumps.iter().enumerate() {
            if let Some(fd) = p.wants_read() {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
                slots.push((i, false));
            }
            if let Some(fd) = p.wants_write() {
                fds.push(PollFd::new(fd, PollFlags::POLLOUT));
                slots.push((i, true));
            }
        }
        let attach_start = fds.len();
        let attach_fds = attach.as_ref().map(|a| a.poll_fds()).unwrap_or_default();
        let attach_slots: Vec<Slot> = attach_fds.iter().map(|(_, _, s)| *s).collect();
        fds.extend(
            attach_fds
                .into_iter()
                .map(|(fd, ev, _)| PollFd::new(fd, ev)),
        );
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let ms = d.saturating_duration_since(Instant::now()).as_millis() + 1;
                PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::MAX)
            }
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                crate::log(format_args!("poll: {e}"));
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        let attach_ready: Vec<(Slot, PollFlags)> = attach_slots
            .iter()
            .zip(&fds[attach_start..])
            .map(|(s, f)| (*s, f.revents().unwrap_or(PollFlags::empty())))
            .collect();
        drop(fds);
        if ready[0] {
            // The siginfo is not needed: every iteration reaps whatever has exited.
            while let Ok(Some(_)) = signals.read_signal() {}
        }
        if ready[1] {
            while matches!(nix::unistd::read(wake, &mut buf), Ok(n) if n > 0) {}
        }
        // Before the pumps: their output may drop clients, which renumbers the slots.
        if let Some(a) = attach.as_mut() {
            a.handle(&attach_ready, &mut buf);
        }
        for (k, &(i, write)) in slots.iter().enumerate() {
            if !ready[k + 2] {
                continue;
            }
            let p = &mut pumps[i];
            if write {
                flush(p);
            } else {
                fill(shared, p, &mut buf, &mut log_failed, attach.as_mut());
            }
        }
    }
}

/// Reads once from the pump's source and passes it on.
fn fill(
    shared: &Shared,
    p: &mut Pump,
    buf: &mut [u8],
    log_failed: &mut bool,
    attach: Option<&mut Attach>,
) {
    let Some(src) = &p.src else {
        return;
    };
    let n = match nix::unistd::read(src, buf) {
        Ok(n) => n,
        Err(Errno::EAGAIN) | Err(Errno::EINTR) => return,
        // EIO: the terminal's last user closed it, its end of stream.
        Err(_) => 0,
    };
    if n == 0 {
        p.src = None;
        if let Sink::Log(stream) = p.sink
            && let Some(log) = lock(&shared.log).as_mut()
            && let Err(e) = log.finish(stream)
        {
            report_log_error(log_failed, &e);
        }
        return;
    }
    let data = &buf[..n];
    // The log first: a client is never ahead of it.
    match &p.sink {
        Sink::Log(stream) => {
            if let Some(log) = lock(&shared.log).as_mut()
                && let Err(e) = log.write(*stream, data)
            {
                report_log_error(log_failed, &e);
            }
        }
        Sink::Discard => {}
        Sink::Fd(_) => {
            p.pending.extend_from_slice(data);
            flush(p);
        }
    }
    if let (Some(stream), Some(a)) = (p.fanout, attach) {
        a.broadcast(stream, data);
    }
}

/// Writes what is pending into an fd sink, as far as it takes it.
fn flush(p: &mut Pump) {
    let Sink::Fd(fd) = &p.sink else {
        p.pending.clear();
        return;
    };
    while !p.pending.is_empty() {
        match nix::unistd::write(fd, &p.pending) {
            Ok(n) => {
                p.pending.drain(..n);
            }
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => return,
            Err(_) => {
                // The reader is gone. Output keeps being drained so the process never blocks
                // on it; input has nowhere to go, so stop reading it.
                p.pending.clear();
                p.sink = Sink::Discard;
                if !p.output {
                    p.src = None;
                }
                return;
            }
        }
    }
    if p.pending.capacity() > CHUNK {
        p.pending = Vec::new();
    }
}

fn report_log_error(failed: &mut bool, e: &crate::Error) {
    // Once per failure streak: a full disk must not also fill the shim's own log.
    if !*failed {
        crate::log(format_args!("{e}"));
        *failed = true;
    }
}

/// Reports the exits of `keys`: the init's goes to `exit.json` first, then everyone waiting
/// is told.
fn publish(shared: &Shared, keys: &[String]) {
    let init_record = {
        let st = lock(&shared.state);
        keys.iter()
            .find(|k| k.as_str() == INIT)
            .and_then(|_| st.procs.get(INIT))
            .and_then(|p| Some(ExitRecord::new(p.exit?.code, p.exit?.at, p.oom_killed)))
    };
    if let Some(r) = &init_record
        && let Err(e) = exit_record::write(&shared.cfg.state_dir, r)
    {
        // Still report it: a live daemon learns it over ttrpc, which beats hanging.
        crate::log(format_args!("record the container's exit: {e}"));
    }
    let mut st = lock(&shared.state);
    for k in keys {
        if let Some(p) = st.procs.get_mut(k) {
            p.published = true;
            p.drain_until = None;
            // Nothing is left to resize; the pumps hold their own copies while they drain.
            p.console = None;
        }
    }
    drop(st);
    shared.changed.notify_all();
}

/// Makes an fd non-blocking (pumps never block the loop).
pub fn set_nonblocking(fd: &OwnedFd) -> crate::Result<()> {
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)
        .map_err(|e| crate::Error::sys("fcntl F_GETFL", e))?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags))
        .map_err(|e| crate::Error::sys(format!("set fd {} non-blocking", fd.as_raw_fd()), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::SfdFlags;
    use std::time::Duration;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        set_nonblocking(&r).unwrap();
        set_nonblocking(&w).unwrap();
        (r, w)
    }

    fn config(dir: &std::path::Path) -> Config {
        Config {
            id: "c".into(),
            bundle: dir.into(),
            state_dir: dir.into(),
            socket: dir.join("s.sock"),
            runtime: "/bin/false".into(),
            runtime_root: dir.into(),
            systemd_cgroup: false,
        }
    }

    /// Drives the loop on a thread without touching signals or children: the signalfd
    /// watches a signal nobody sends (SIGCHLD is not blocked here, so none arrives on it).
    #[test]
    fn pumps_copy_into_the_log_and_into_fds_and_close_stdin_on_request() {
        // The loop reaps any child of this test process.
        let _children = crate::tests::CHILDREN
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let (wake_r, wake_w) = pipe();
        let shared = std::sync::Arc::new(Shared::new(config(dir.path()), wake_w));
        let log_path = dir.path().join("c.log");
        *lock(&shared.log) = Some(CriLog::open(&log_path).unwrap());

        let (out_r, out_w) = pipe();
        let (in_r, in_w) = pipe();
        let (fifo_r, fifo_w) = pipe();
        shared.add_pumps(vec![
            Pump::new(INIT, true, out_r, Sink::Log(Stream::Stdout)),
            Pump::new("e1", false, fifo_r, Sink::Fd(in_w)),
        ]);
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGURG);
        let sfd =
            SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).unwrap();
        let s2 = shared.clone();
        let looper = std::thread::spawn(move || run(&s2, &sfd, &wake_r));

        nix::unistd::write(&out_w, b"one\ntwo").unwrap();
        drop(out_w);
        nix::unistd::write(&fifo_w, b"typed").unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < 5 && Instant::now() < deadline {
            let mut b = [0u8; 16];
            if let Ok(n) = nix::unistd::read(&in_r, &mut b) {
                got.extend_from_slice(&b[..n]);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(got, b"typed");
        lock(&shared.state).close_stdin.push("e1".into());
        shared.wake();
        // The process's stdin reaches its end once the pump is dropped.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut eof = false;
        while !eof && Instant::now() < deadline {
            let mut b = [0u8; 16];
            eof = matches!(nix::unistd::read(&in_r, &mut b), Ok(0));
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(eof, "stdin closed after CloseIO");
        let text = std::fs::read_to_string(&log_path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].ends_with(" stdout F one"), "{text}");
        assert!(lines[1].ends_with(" stdout P two"), "{text}");

        lock(&shared.state).exit_at = Some(Instant::now());
        shared.wake();
        looper.join().unwrap();
        drop(fifo_w);
    }

    /// The init's output reaches the log and an attached client, and the client's stdin
    /// reaches the container's stdin pipe, through the loop.
    #[test]
    fn init_output_fans_out_to_attach_clients_beside_the_log() {
        use std::io::{Read, Write};
        let _children = crate::tests::CHILDREN
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let (wake_r, wake_w) = pipe();
        let shared = std::sync::Arc::new(Shared::new(config(dir.path()), wake_w));
        let log_path = dir.path().join("c.log");
        *lock(&shared.log) = Some(CriLog::open(&log_path).unwrap());
        let (stdin_r, stdin_w) = pipe();
        shared.set_attach(Attach::bind(dir.path(), Some(stdin_w), false).unwrap());
        let (out_r, out_w) = pipe();
        shared.add_pumps(vec![
            Pump::new(INIT, true, out_r, Sink::Log(Stream::Stderr)).with_fanout(Stream::Stderr),
        ]);
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGURG);
        let sfd =
            SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).unwrap();
        let s2 = shared.clone();
        let looper = std::thread::spawn(move || run(&s2, &sfd, &wake_r));

        let mut client = crate::attach::connect(dir.path()).unwrap();
        client.write_all(&[crate::attach::MODE_STDIN]).unwrap();
        client.write_all(b"typed").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut typed = Vec::new();
        while typed.len() < 5 && Instant::now() < deadline {
            let mut b = [0u8; 16];
            if let Ok(n) = nix::unistd::read(&stdin_r, &mut b) {
                typed.extend_from_slice(&b[..n]);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(typed, b"typed");
        // The client is accepted by now (its stdin arrived), so it sees this output.
        nix::unistd::write(&out_w, b"oops\n").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut frame = [0u8; crate::attach::FRAME_HEADER + 5];
        client.read_exact(&mut frame).unwrap();
        assert_eq!(frame[0], crate::attach::FRAME_STDERR);
        assert_eq!(&frame[crate::attach::FRAME_HEADER..], b"oops\n");
        let text = std::fs::read_to_string(&log_path).unwrap();
        assert!(text.ends_with(" stderr F oops\n"), "{text}");

        lock(&shared.state).exit_at = Some(Instant::now());
        shared.wake();
        looper.join().unwrap();
        assert!(!dir.path().join(crate::attach::SOCKET).exists());
    }
}
