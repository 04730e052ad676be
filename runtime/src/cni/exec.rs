//! Running one plugin binary: found in the plugin directories in order, given its environment
//! and stdin, killed when it overruns its time, its stdout read as a result or as the spec's
//! error object.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;

/// Where plugins are and how long one may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plugins {
    pub bin_dirs: Vec<PathBuf>,
    pub timeout: Duration,
}

/// How a plugin call failed, before it is named with its network and plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExecFailure {
    pub code: Option<u64>,
    pub message: String,
}

impl Plugins {
    /// `CNI_PATH`: the plugin directories joined with `:`.
    pub fn cni_path(&self) -> String {
        self.bin_dirs
            .iter()
            .map(|d| d.to_string_lossy())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The executable of plugin `plugin_type` in the first directory that has one.
    pub fn find(&self, plugin_type: &str) -> Option<PathBuf> {
        if plugin_type.is_empty() || plugin_type.contains('/') {
            return None;
        }
        self.bin_dirs.iter().map(|d| d.join(plugin_type)).find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    }

    /// Runs `binary` with `env` added to the daemon's environment and `stdin`, and returns its
    /// stdout when it exits 0. A failure carries the plugin's own `msg` and `details` when it
    /// printed the spec's error object, its stderr otherwise.
    pub(crate) fn exec(
        &self,
        binary: &Path,
        env: &[(&'static str, String)],
        stdin: &[u8],
    ) -> std::result::Result<Vec<u8>, ExecFailure> {
        let fail = |message: String| ExecFailure {
            code: None,
            message,
        };
        let mut child = Command::new(binary)
            // A group of its own, so a kill reaches what the plugin started too (a helper it
            // waits on would otherwise outlive it, holding our pipes or the pod's resources).
            .process_group(0)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("run {}: {e}", binary.display())))?;
        // Configs are a few KiB, far below a pipe's buffer: this write does not wait for the
        // plugin to read.
        if let Some(mut input) = child.stdin.take()
            && let Err(e) = input.write_all(stdin)
            && e.kind() != ErrorKind::BrokenPipe
        {
            kill_group(&mut child);
            let _ = child.wait();
            return Err(fail(format!("write config to {}: {e}", binary.display())));
        }
        let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
            kill_group(&mut child);
            let _ = child.wait();
            return Err(fail("plugin pipes missing".to_owned()));
        };
        let deadline = Instant::now() + self.timeout;
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let (mut out_open, mut err_open) = (true, true);
        let mut buf = [0u8; 8192];
        while out_open || err_open {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                kill_group(&mut child);
                let _ = child.wait();
                return Err(fail(format!(
                    "timed out after {}s and was killed",
                    self.timeout.as_secs_f64()
                )));
            }
            let mut fds = Vec::with_capacity(2);
            if out_open {
                fds.push(PollFd::new(out.as_fd(), PollFlags::POLLIN));
            }
            if err_open {
                fds.push(PollFd::new(err.as_fd(), PollFlags::POLLIN));
            }
            let millis = PollTimeout::try_from(left.as_millis().max(1)).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, millis) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    kill_group(&mut child);
                    let _ = child.wait();
                    return Err(fail(format!("poll plugin output: {e}")));
                }
            }
            let ready: Vec<bool> = fds
                .iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            drop(fds);
            let mut i = 0;
            for (open, pipe, sink) in [
                (&mut out_open, &mut out as &mut dyn Read, &mut stdout),
                (&mut err_open, &mut err as &mut dyn Read, &mut stderr),
            ] {
                if !*open {
                    continue;
                }
                if ready[i] {
                    match pipe.read(&mut buf) {
                        Ok(0) => *open = false,
                        Ok(n) => sink.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => {
                            kill_group(&mut child);
                            let _ = child.wait();
                            return Err(fail(format!("read plugin output: {e}")));
                        }
                    }
                }
                i += 1;
            }
        }
        let status = child
            .wait()
            .map_err(|e| fail(format!("wait for {}: {e}", binary.display())))?;
        if status.success() {
            return Ok(stdout);
        }
        Err(plugin_error(&stdout, &stderr, &status.to_string()))
    }
}

/// SIGKILL to the plugin's process group (it leads one, see `exec`), then the plugin itself
/// should the group be gone already.
fn kill_group(child: &mut std::process::Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = child.kill();
}

/// The failure a plugin reported: its error object (`code`, `msg`, `details`) when stdout has
/// one, else its stderr, else its exit status.
fn plugin_error(stdout: &[u8], stderr: &[u8], status: &str) -> ExecFailure {
    if let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(stdout) {
        let msg = obj.get("msg").and_then(Value::as_str).unwrap_or_default();
        let details = obj
            .get("details")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !msg.is_empty() || !details.is_empty() {
            let message = match (msg.is_empty(), details.is_empty()) {
                (false, false) => format!("{msg}: {details}"),
                (false, true) => msg.to_owned(),
                _ => details.to_owned(),
            };
            return ExecFailure {
                code: obj.get("code").and_then(Value::as_u64),
                message,
            };
        }
    }
    let stderr = String::from_utf8_lossy(stderr);
    let stdout = String::from_utf8_lossy(stdout);
    let text = [stderr.trim(), stdout.trim()]
        .into_iter()
        .find(|s| !s.is_empty())
        .unwrap_or("no output");
    ExecFailure {
        code: None,
        message: format!("{status}: {text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespaces::forked::write_executable;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        write_executable(&path, format!("#!/bin/sh\n{body}\n").as_bytes()).unwrap();
        path
    }

    fn plugins(dirs: &[&Path]) -> Plugins {
        Plugins {
            bin_dirs: dirs.iter().map(|d| d.to_path_buf()).collect(),
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn plugins_are_found_in_the_directories_in_order() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let p = plugins(&[a.path(), &a.path().join("missing"), b.path()]);
        assert_eq!(p.find("bridge"), None);
        let in_b = script(b.path(), "bridge", "true");
        assert_eq!(p.find("bridge"), Some(in_b));
        let in_a = script(a.path(), "bridge", "true");
        assert_eq!(p.find("bridge"), Some(in_a.clone()));
        // Not executable: not a plugin.
        std::fs::set_permissions(&in_a, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(p.find("bridge"), Some(b.path().join("bridge")));
        assert_eq!(p.find("../bridge"), None);
        assert_eq!(
            p.cni_path(),
            format!(
                "{}:{}:{}",
                a.path().display(),
                a.path().join("missing").display(),
                b.path().display()
            )
        );
    }

    #[test]
    fn stdout_comes_back_with_env_and_stdin_given() {
        let dir = tempfile::tempdir().unwrap();
        let bin = script(
            dir.path(),
            "echo",
            "printf '%s|' \"$CNI_COMMAND\" \"$CNI_IFNAME\"; cat",
        );
        let out = plugins(&[dir.path()])
            .exec(
                &bin,
                &[("CNI_COMMAND", "ADD".into()), ("CNI_IFNAME", "eth0".into())],
                b"{\"x\":1}",
            )
            .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "ADD|eth0|{\"x\":1}");
    }

    #[test]
    fn errors_carry_the_plugins_message_and_details() {
        let dir = tempfile::tempdir().unwrap();
        let p = plugins(&[dir.path()]);
        let bin = script(
            dir.path(),
            "fails",
            r#"echo '{"cniVersion":"1.0.0","code":11,"msg":"no IPs left","details":"range 10.0.0.0/30 is full"}'; exit 1"#,
        );
        let err = p.exec(&bin, &[], b"{}").unwrap_err();
        assert_eq!(err.code, Some(11));
        assert_eq!(err.message, "no IPs left: range 10.0.0.0/30 is full");
        let bin = script(dir.path(), "stderr", "echo 'bad things' >&2; exit 3");
        let err = p.exec(&bin, &[], b"{}").unwrap_err();
        assert_eq!(err.code, None);
        assert!(
            err.message.contains("bad things") && err.message.contains('3'),
            "{err:?}"
        );
        let err = p.exec(&dir.path().join("nope"), &[], b"{}").unwrap_err();
        assert!(err.message.contains("nope"), "{err:?}");
    }

    #[test]
    fn a_plugin_overrunning_its_time_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = plugins(&[dir.path()]);
        p.timeout = Duration::from_millis(300);
        let bin = script(dir.path(), "slow", "exec sleep 30");
        let started = Instant::now();
        let err = p.exec(&bin, &[], b"{}").unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(err.message.contains("timed out"), "{err:?}");
    }

    #[test]
    fn a_plugin_overrunning_its_time_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = plugins(&[dir.path()]);
        p.timeout = Duration::from_millis(300);
        let pidfile = dir.path().join("child.pid");
        let bin = script(
            dir.path(),
            "hangs",
            &format!("sleep 30 & echo $! > {}; wait", pidfile.display()),
        );
        let err = p.exec(&bin, &[], b"{}").unwrap_err();
        assert!(err.message.contains("timed out"), "{err:?}");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Killed, then reaped by init: gone or a zombie for a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z"))
        {
            assert!(
                Instant::now() < deadline,
                "the plugin's child {pid} survived"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
