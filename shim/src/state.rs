//! The shim's process table and the bookkeeping of every child it reaps.
//!
//! The shim is a subreaper: the container's init and exec processes are re-parented to it when
//! the runtime command that created them exits, and it also reaps the runtime commands
//! themselves. One `waitpid(-1)` loop (in [`State::reap`]) takes every exit, under the state
//! lock; a runtime command is registered under the same lock when it is spawned, so its exit
//! can never be taken before anyone knows to look for it. An exit of a pid nobody has claimed
//! yet (an exec process that ends before its runtime command has told us its pid) is kept,
//! stamped with a sequence number, so only a registration that started before it can claim it.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::oom::OomCounter;

/// The key of the container's init in the process table (exec ids are never empty).
pub const INIT: &str = "";

/// How long a reaped process's output may keep flowing (from processes it left behind that
/// still hold its stdout) before its exit is reported anyway.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// How many unclaimed exits are remembered (orphans of a container without its own pid
/// namespace end up here too).
const UNCLAIMED_LIMIT: usize = 128;

/// The lifecycle step of a process, before its exit is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Exec: configured by `Exec`, not started. Init: created, waiting at the start barrier.
    Created,
    Running,
    Paused,
}

/// An exit as reaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, or 128 + signal.
    pub code: i32,
    pub at: SystemTime,
}

/// The container's init or one exec process.
#[derive(Debug)]
pub struct Proc {
    /// Host pid, 0 until the process exists.
    pub pid: i32,
    pub phase: Phase,
    /// Set when reaped.
    pub exit: Option<Exit>,
    /// When an exit is reported even if output is still open.
    pub drain_until: Option<Instant>,
    /// Whether the exit has been reported (Wait returns, State says stopped).
    pub published: bool,
    pub terminal: bool,
    /// The request's stdio paths, reported back by State.
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    /// The terminal master, for resizing.
    pub console: Option<OwnedFd>,
    /// Exec: the process JSON given to the runtime.
    pub spec: Option<PathBuf>,
    /// Init: the memory cgroup's OOM kill counter.
    pub oom: Option<OomCounter>,
    /// Init: whether the OOM killer struck, decided when it was reaped.
    pub oom_killed: bool,
}

impl Proc {
    /// A process that does not exist yet, or (with `pid`) was just created.
    pub fn new(pid: i32, terminal: bool, stdin: &str, stdout: &str, stderr: &str) -> Self {
        Self {
            pid,
            phase: Phase::Created,
            exit: None,
            drain_until: None,
            published: false,
            terminal,
            stdin: stdin.to_string(),
            stdout: stdout.to_string(),
            stderr: stderr.to_string(),
            console: None,
            spec: None,
            oom: None,
            oom_killed: false,
        }
    }

    /// Exists and its exit has not been reported.
    pub fn live(&self) -> bool {
        self.pid > 0 && !self.published
    }

    /// The reported exit, once published.
    pub fn published_exit(&self) -> Option<Exit> {
        if self.published { self.exit } else { None }
    }
}

#[derive(Debug, Clone, Copy)]
struct Unclaimed {
    seq: u64,
    pid: i32,
    exit: Exit,
}

/// Everything the ttrpc handlers and the supervisor loop share, under one lock.
#[derive(Debug, Default)]
pub struct State {
    /// The init ([`INIT`]) and exec processes by id.
    pub procs: HashMap<String, Proc>,
    /// The init was deleted: the shim has nothing left to do.
    pub deleted: bool,
    /// Exec ids whose stdin is to be closed (CloseIO).
    pub close_stdin: Vec<String>,
    /// When the shim exits (after Shutdown, or a while after the init's Delete).
    pub exit_at: Option<Instant>,
    /// Runtime commands running, with their exit code once reaped.
    commands: HashMap<i32, Option<i32>>,
    unclaimed: VecDeque<Unclaimed>,
    /// Counts reaped exits.
    seq: u64,
}

impl State {
    /// The sequence number of the last reaped exit: exits after this one belong to processes
    /// started from now on.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Remembers a runtime command so that its exit is kept for [`State::command_exit`].
    pub fn add_command(&mut self, pid: i32) {
        self.commands.insert(pid, None);
    }

    /// The exit code of a command registered with [`State::add_command`], once reaped
    /// (forgotten after it is returned).
    pub fn command_exit(&mut self, pid: i32) -> Option<i32> {
        match self.commands.get(&pid) {
            Some(Some(code)) => {
                let code = *code;
                self.commands.remove(&pid);
                Some(code)
            }
            _ => None,
        }
    }

    /// Records the pid of `key` (started by a command spawned when [`State::seq`] was
    /// `since`), taking its exit if it was reaped before anyone knew its pid.
    pub fn set_pid(&mut self, key: &str, pid: i32, since: u64) {
        let early = self
            .unclaimed
            .iter()
            .position(|u| u.pid == pid && u.seq > since);
        let Some(p) = self.procs.get_mut(key) else {
            return;
        };
        p.pid = pid;
        if let Some(i) = early
            && let Some(u) = self.unclaimed.remove(i)
        {
            Self::exited(p, key, u.exit);
        }
    }

    fn exited(p: &mut Proc, key: &str, exit: Exit) {
        p.exit = Some(exit);
        p.drain_until = Some(Instant::now() + DRAIN_LIMIT);
        if key == INIT {
            p.oom_killed = p.oom.as_ref().is_some_and(|o| o.killed_since_start());
        }
    }

    /// Takes an exit of `pid`. Returns whether anyone may be waiting for it.
    pub fn record_exit(&mut self, pid: i32, exit: Exit) -> bool {
        self.seq += 1;
        if let Some(slot) = self.commands.get_mut(&pid) {
            *slot = Some(exit.code);
            return true;
        }
        if let Some((key, p)) = self
            .procs
            .iter_mut()
            .find(|(_, p)| p.pid == pid && p.exit.is_none())
        {
            Self::exited(p, key, exit);
            return true;
        }
        if self.unclaimed.len() == UNCLAIMED_LIMIT {
            self.unclaimed.pop_front();
        }
        self.unclaimed.push_back(Unclaimed {
            seq: self.seq,
            pid,
            exit,
        });
        false
    }

    /// Reaps every child that has exited. Returns whether a known process or command ended.
    pub fn reap(&mut self) -> bool {
        let mut known = false;
        loop {
            let (pid, code) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as i32),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return known,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    crate::log(format_args!("waitpid: {e}"));
                    return known;
                }
            };
            let exit = Exit {
                code,
                at: SystemTime::now(),
            };
            known |= self.record_exit(pid.as_raw(), exit);
        }
    }

    /// Processes reaped whose exit may be reported now: their output is done (as told by
    /// `output_open`) or they have waited [`DRAIN_LIMIT`] for it.
    pub fn due_exits(&self, now: Instant, output_open: impl Fn(&str) -> bool) -> Vec<String> {
        self.procs
            .iter()
            .filter(|(key, p)| {
                p.exit.is_some()
                    && !p.published
                    && (!output_open(key) || p.drain_until.is_some_and(|d| now >= d))
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The earliest time the supervisor must look again without any event.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.procs
            .values()
            .filter(|p| p.exit.is_some() && !p.published)
            .filter_map(|p| p.drain_until)
            .chain(self.exit_at)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: i32) -> Exit {
        Exit {
            code,
            at: SystemTime::now(),
        }
    }

    #[test]
    fn a_command_exit_goes_to_its_caller_only() {
        let mut s = State::default();
        s.add_command(10);
        assert_eq!(s.command_exit(10), None);
        assert!(s.record_exit(10, exit(1)));
        assert_eq!(s.command_exit(10), Some(1));
        assert_eq!(s.command_exit(10), None);
    }

    #[test]
    fn a_known_process_exit_waits_for_its_output() {
        let mut s = State::default();
        s.procs
            .insert(INIT.into(), Proc::new(20, false, "", "", ""));
        assert!(s.record_exit(20, exit(3)));
        let p = &s.procs[INIT];
        assert_eq!(p.exit.unwrap().code, 3);
        assert!(p.live(), "reaped but not reported yet");
        let now = Instant::now();
        assert!(s.due_exits(now, |_| true).is_empty());
        assert_eq!(s.due_exits(now, |_| false), [INIT]);
        assert_eq!(s.due_exits(now + DRAIN_LIMIT, |_| true), [INIT]);
        assert!(s.next_deadline().unwrap() <= now + DRAIN_LIMIT);
    }

    #[test]
    fn an_early_exit_is_claimed_only_by_a_later_registration() {
        let mut s = State::default();
        s.procs.insert("e1".into(), Proc::new(0, false, "", "", ""));
        s.procs.insert("e2".into(), Proc::new(0, false, "", "", ""));
        // An orphan with pid 30 ended long before e1's command started.
        assert!(!s.record_exit(30, exit(9)));
        let since = s.seq();
        // e1 (pid 31) ends before its runtime command reported the pid.
        assert!(!s.record_exit(31, exit(4)));
        s.set_pid("e1", 31, since);
        assert_eq!(s.procs["e1"].exit.unwrap().code, 4);
        // pid 30 reused by e2: the old orphan's exit is not e2's.
        s.set_pid("e2", 30, since);
        assert_eq!(s.procs["e2"].exit, None);
        assert!(s.record_exit(30, exit(0)));
        assert_eq!(s.procs["e2"].exit.unwrap().code, 0);
    }

    #[test]
    fn unclaimed_exits_are_bounded() {
        let mut s = State::default();
        for pid in 0..(UNCLAIMED_LIMIT as i32 + 50) {
            s.record_exit(1000 + pid, exit(0));
        }
        assert_eq!(s.unclaimed.len(), UNCLAIMED_LIMIT);
        assert_eq!(s.unclaimed.front().unwrap().pid, 1050);
    }

    #[test]
    // The children are reaped by `State::reap`, the code under test.
    #[allow(clippy::zombie_processes)]
    fn reaping_collects_exit_codes_and_signals() {
        // Children of the test process itself: no other test may reap meanwhile.
        let _children = crate::tests::CHILDREN
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut s = State::default();
        let a = std::process::Command::new("/bin/sh")
            .args(["-c", "exit 7"])
            .spawn()
            .unwrap();
        let b = std::process::Command::new("/bin/sh")
            .args(["-c", "kill -TERM $$"])
            .spawn()
            .unwrap();
        s.add_command(a.id() as i32);
        s.add_command(b.id() as i32);
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut ca, mut cb) = (None, None);
        while (ca.is_none() || cb.is_none()) && Instant::now() < deadline {
            s.reap();
            ca = ca.or_else(|| s.command_exit(a.id() as i32));
            cb = cb.or_else(|| s.command_exit(b.id() as i32));
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(ca, Some(7));
        assert_eq!(cb, Some(128 + 15));
    }
}
