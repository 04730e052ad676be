//! Running the OCI runtime's command line (`bungeo-runtime`, or runc: the same flags).
//!
//! The shim calls the runtime binary rather than linking the runtime library: the library's
//! `create` and `exec` fork and run Rust code in the child, which is only sound in a
//! single-threaded process, and the shim's ttrpc server is threaded. Going through `execve`
//! also keeps cgroups, seccomp and namespace code out of the long-lived shim's memory, and lets
//! the shim drive any runc-compatible runtime.
//!
//! Commands are reaped by the supervisor loop (the shim's single `waitpid(-1)`): a command is
//! registered under the state lock as it is spawned and its caller waits for the loop to record
//! the exit. Errors come from the runtime's `--log` (JSON lines), because for `create` and
//! `exec` the command's stdio belongs to the container.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::supervisor::{Shared, lock};
use crate::{Error, Result};

/// The runtime's log in the shim's state dir.
pub const RUNTIME_LOG: &str = "runtime.log";

/// How much of a command's stdout is read (only `ps` output is).
const STDOUT_LIMIT: u64 = 1 << 20;

/// The stdio of one runtime command.
#[derive(Debug)]
pub struct CommandIo {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
    /// Read stdout (then `stdout` must be `Stdio::piped()`).
    pub capture: bool,
}

impl CommandIo {
    /// All three on /dev/null.
    pub fn null() -> Self {
        Self {
            stdin: Stdio::null(),
            stdout: Stdio::null(),
            stderr: Stdio::null(),
            capture: false,
        }
    }

    /// stdout read back, the rest on /dev/null.
    pub fn capture() -> Self {
        Self {
            stdout: Stdio::piped(),
            capture: true,
            ..Self::null()
        }
    }
}

/// A command that succeeded.
#[derive(Debug)]
pub struct Finished {
    /// Its stdout, when captured.
    pub stdout: Vec<u8>,
    /// [`crate::state::State::seq`] when it was spawned (to claim exits of what it started).
    pub since: u64,
}

/// The name used for the runtime in messages: `bungeo-runtime start c1`.
fn describe(shared: &Shared, args: &[OsString]) -> String {
    let name = shared
        .cfg
        .runtime
        .file_name()
        .unwrap_or(shared.cfg.runtime.as_os_str())
        .to_string_lossy()
        .into_owned();
    let mut s = name;
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn log_path(shared: &Shared) -> PathBuf {
    shared.cfg.state_dir.join(RUNTIME_LOG)
}

/// Runs `<runtime> --root R --log L --log-format json [--systemd-cgroup] <args>`; fails with
/// the runtime's own error message when it exits non-zero.
pub fn run(shared: &Shared, args: &[OsString], io: CommandIo) -> Result<Finished> {
    let log = log_path(shared);
    let offset = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let mut cmd = Command::new(&shared.cfg.runtime);
    cmd.arg("--root")
        .arg(&shared.cfg.runtime_root)
        .arg("--log")
        .arg(&log)
        .arg("--log-format")
        .arg("json");
    if shared.cfg.systemd_cgroup {
        cmd.arg("--systemd-cgroup");
    }
    cmd.args(args)
        .stdin(io.stdin)
        .stdout(io.stdout)
        .stderr(io.stderr)
        .current_dir("/");
    let what = || describe(shared, args);
    let (mut child, since) = {
        let mut st = lock(&shared.state);
        let child = cmd.spawn().map_err(|e| Error::Runtime {
            command: what(),
            message: format!("cannot run {}: {e}", shared.cfg.runtime.display()),
        })?;
        st.add_command(child.id() as i32);
        (child, st.seq())
    };
    // `cmd` holds the parent's copies of fds handed to the child (the container's pipe ends):
    // they must close now, or the pipes never reach their end.
    drop(cmd);
    let pid = child.id() as i32;
    let mut stdout = Vec::new();
    if io.capture
        && let Some(out) = child.stdout.take()
    {
        let _ = out.take(STDOUT_LIMIT).read_to_end(&mut stdout);
    }
    let code = {
        let mut st = lock(&shared.state);
        loop {
            if let Some(code) = st.command_exit(pid) {
                break code;
            }
            st = shared.wait(st);
        }
    };
    if code != 0 {
        return Err(Error::Runtime {
            command: what(),
            message: error_message(&log, offset)
                .unwrap_or_else(|| format!("exited with status {code}")),
        });
    }
    Ok(Finished { stdout, since })
}

/// The last error the runtime logged after `offset`.
fn error_message(log: &std::path::Path, offset: u64) -> Option<String> {
    let mut f = std::fs::File::open(log).ok()?;
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut text = String::new();
    f.take(STDOUT_LIMIT).read_to_string(&mut text).ok()?;
    last_error(&text)
}

/// The `msg` of the last `"level":"error"` JSON line, else the last non-empty line.
pub fn last_error(text: &str) -> Option<String> {
    let mut fallback = None;
    let mut found = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) if v["level"] == "error" => {
                found = v["msg"].as_str().map(str::to_string);
            }
            Ok(_) => {}
            Err(_) => fallback = Some(line.to_string()),
        }
    }
    found.or(fallback)
}

/// `args` as owned strings.
pub fn args<const N: usize>(a: [&OsStr; N]) -> Vec<OsString> {
    a.iter().map(|s| s.to_os_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_logged_error_is_the_message() {
        let text = r#"{"level":"warning","msg":"libcgroups: no rdma","time":"T"}
{"level":"error","msg":"first","time":"T"}
{"level":"error","msg":"exec: \"nope\": executable file not found in $PATH","time":"T"}
"#;
        assert_eq!(
            last_error(text).unwrap(),
            "exec: \"nope\": executable file not found in $PATH"
        );
        assert_eq!(
            last_error("plain text failure\n").unwrap(),
            "plain text failure"
        );
        assert_eq!(last_error(r#"{"level":"info","msg":"x"}"#), None);
        assert_eq!(last_error(""), None);
    }
}
