//! Child processes the harness starts (registries, daemons), stopped and reaped on drop.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a process gets after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// A started process with its output in log files; SIGTERM, then SIGKILL, and reaped on drop.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Process {
    /// Starts `cmd` with stdout and stderr appended to the given files (they may be the same).
    pub fn spawn(name: &str, mut cmd: Command, stdout: &Path, stderr: &Path) -> Result<Self> {
        let out = append(stdout)?;
        let err = if stdout == stderr {
            out.try_clone()
                .with_context(|| format!("duplicate {}", stdout.display()))?
        } else {
            append(stderr)?
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
            stdout: stdout.to_path_buf(),
            stderr: stderr.to_path_buf(),
        })
    }

    /// The process id, while the process has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(status)` once the process has exited (it is reaped then).
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            None => Ok(None),
            Some(child) => child
                .try_wait()
                .with_context(|| format!("wait for {}", self.name)),
        }
    }

    /// Errors with the tail of the process's log if it has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.exited()? {
            anyhow::bail!(
                "{} exited ({status}); last output:\n{}",
                self.name,
                self.log_tail(40)
            );
        }
        Ok(())
    }

    /// SIGKILL without grace, then reap: what a crash looks like to the files it left.
    pub fn kill9(&mut self) -> Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .with_context(|| format!("{} is not running", self.name))?;
        // The child may already be gone; the wait below reports how it ended either way.
        let _ = child.kill();
        child
            .wait()
            .with_context(|| format!("reap {} after SIGKILL", self.name))
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; reaps the process.
    pub fn stop(&mut self, grace: Duration) -> Result<Option<ExitStatus>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
        // ESRCH only means it exited between try_wait and here.
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(Some(status));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        Ok(Some(
            child
                .wait()
                .with_context(|| format!("reap {}", self.name))?,
        ))
    }

    /// The last `lines` lines of stderr (and stdout if it is a different file), for messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut out = tail(&self.stderr, lines);
        if self.stdout != self.stderr {
            out.push_str(&tail(&self.stdout, lines));
        }
        out
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Err(err) = self.stop(STOP_GRACE) {
            eprintln!("stopping {}: {err:#}", self.name);
        }
    }
}

fn append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open log {}", path.display()))
}

/// The last `lines` lines of a file, or a note that it cannot be read.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            let mut out = all[start..].join("\n");
            out.push('\n');
            out
        }
        Err(err) => format!("({}: {err})\n", path.display()),
    }
}

/// Polls `probe` every 50 ms until it yields a value, `check` fails, or `timeout` passes.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<()>,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        check()?;
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_kills_a_process_that_ignores_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "trap '' TERM; echo ready; while :; do sleep 0.1; done",
        ]);
        let mut p = Process::spawn("stubborn", cmd, &log, &log).unwrap();
        wait_for(
            "ready",
            Duration::from_secs(5),
            || Ok(()),
            || tail(&log, 1).contains("ready").then_some(()),
        )
        .unwrap();
        let started = Instant::now();
        let status = p.stop(Duration::from_millis(300)).unwrap().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    #[test]
    fn stop_terminates_and_reaps() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut p = Process::spawn("sleep", cmd, &log, &log).unwrap();
        assert!(p.exited().unwrap().is_none());
        let status = p.stop(Duration::from_secs(5)).unwrap().unwrap();
        assert!(!status.success());
        assert!(p.pid().is_none());
    }

    #[test]
    fn ensure_running_reports_the_output_of_a_dead_process() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo boom-marker >&2; exit 3"]);
        let mut p = Process::spawn("sh", cmd, &log, &log).unwrap();
        let err = wait_for(
            "exit",
            Duration::from_secs(5),
            || p.ensure_running(),
            || None::<()>,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("boom-marker"), "{err:#}");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "a\nb\nc\n").unwrap();
        assert_eq!(tail(&f, 2), "b\nc\n");
    }
}
