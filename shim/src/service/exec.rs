//! Exec processes: Exec records the process, Start runs it through the runtime's `exec` with
//! its own stdio (or a terminal).

use std::path::Path;
use std::process::Stdio;

use containerd_shim_protos::api::ExecProcessRequest;

use super::{TaskService, read_pid};
use crate::config::validate_name;
use crate::runtime_cli::CommandIo;
use crate::state::{INIT, Phase, Proc};
use crate::stdio::{dup_nonblocking, open_output, open_stdin, pipe};
use crate::supervisor::{Pump, Sink, lock, set_nonblocking};
use crate::tty::ConsoleSocket;
use crate::{Error, Result};

impl TaskService {
    pub(super) fn start_exec(&self, key: &str) -> Result<u32> {
        let (terminal, stdin, stdout, stderr, spec) = {
            let mut st = lock(&self.shared.state);
            let init_live = st
                .procs
                .get(INIT)
                .is_some_and(|p| p.live() && p.exit.is_none());
            let p = st.procs.get_mut(key).ok_or_else(|| self.not_found(key))?;
            if p.pid != 0 || p.phase != Phase::Created {
                return Err(Error::FailedPrecondition(format!(
                    "exec process {key:?} was started already"
                )));
            }
            if !init_live {
                return Err(Error::FailedPrecondition(format!(
                    "container {} is not running: cannot start exec process {key:?}",
                    self.id()
                )));
            }
            // Claimed, so a second Start of the same process is refused.
            p.phase = Phase::Running;
            (
                p.terminal,
                p.stdin.clone(),
                p.stdout.clone(),
                p.stderr.clone(),
                p.spec.clone().unwrap_or_default(),
            )
        };
        let started = self.spawn_exec(key, terminal, &stdin, &stdout, &stderr, &spec);
        let mut st = lock(&self.shared.state);
        match started {
            Ok((pid, since, master)) => {
                if let Some(p) = st.procs.get_mut(key) {
                    p.console = master;
                }
                st.set_pid(key, pid, since);
                drop(st);
                // An exit reaped before the pid was known is reported by the loop: wake it.
                self.shared.wake();
                Ok(pid as u32)
            }
            Err(e) => {
                if let Some(p) = st.procs.get_mut(key) {
                    p.phase = Phase::Created;
                }
                Err(e)
            }
        }
    }

    /// Runs `exec --detach` with the process's stdio; returns (pid, seq, terminal master).
    pub(super) fn spawn_exec(
        &self,
        key: &str,
        terminal: bool,
        stdin: &str,
        stdout: &str,
        stderr: &str,
        spec: &Path,
    ) -> Result<(i32, u64, Option<std::os::fd::OwnedFd>)> {
        let pid_file = self.state_dir().join(format!("exec-{key}.pid"));
        let _ = std::fs::remove_file(&pid_file);
        let spec_arg = spec.to_string_lossy().into_owned();
        let pid_arg = pid_file.to_string_lossy().into_owned();
        let mut args = vec![
            "exec",
            "--process",
            &spec_arg,
            "--pid-file",
            &pid_arg,
            "--detach",
        ];
        let mut stdin_src = if stdin.is_empty() {
            None
        } else {
            Some(open_stdin(stdin)?)
        };
        let mut pumps = Vec::new();
        let console = if terminal {
            Some(ConsoleSocket::bind(
                self.state_dir(),
                &format!("{key}.sock"),
            )?)
        } else {
            None
        };
        let console_arg = console
            .as_ref()
            .map(|c| c.path().to_string_lossy().into_owned());
        let io = match &console_arg {
            Some(c) => {
                args.extend(["--console-socket", c.as_str()]);
                CommandIo::null()
            }
            None => {
                let output = |what, path: &str| -> Result<Stdio> {
                    if path.is_empty() {
                        Ok(Stdio::null())
                    } else {
                        Ok(Stdio::from(open_output(what, path, false)?))
                    }
                };
                let stdin = match stdin_src.take() {
                    Some(src) => {
                        let (in_r, in_w) = pipe()?;
                        set_nonblocking(&in_w)?;
                        pumps.push(Pump::new(key, false, src, Sink::Fd(in_w)));
                        Stdio::from(in_r)
                    }
                    None => Stdio::null(),
                };
                CommandIo {
                    stdin,
                    stdout: output("stdout", stdout)?,
                    stderr: output("stderr", stderr)?,
                    capture: false,
                }
            }
        };
        let fin = self.runtime(&args, io)?;
        let pid = read_pid(&pid_file)?;
        let master = match &console {
            None => None,
            Some(c) => {
                let master = c.receive_master()?;
                let sink = if stdout.is_empty() {
                    Sink::Discard
                } else {
                    Sink::Fd(open_output("stdout", stdout, true)?)
                };
                pumps.push(Pump::new(key, true, dup_nonblocking(&master)?, sink));
                if let Some(src) = stdin_src.take() {
                    pumps.push(Pump::new(
                        key,
                        false,
                        src,
                        Sink::Fd(dup_nonblocking(&master)?),
                    ));
                }
                Some(master)
            }
        };
        self.shared.add_pumps(pumps);
        Ok((pid, fin.since, master))
    }

    pub(super) fn do_exec(&self, req: &ExecProcessRequest) -> Result<()> {
        self.check_id(&req.id)?;
        validate_name("exec id", &req.exec_id)?;
        let any = req.spec.as_ref().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "exec process {:?}: no process spec given",
                req.exec_id
            ))
        })?;
        let mut process: serde_json::Value = serde_json::from_slice(&any.value).map_err(|e| {
            Error::InvalidArgument(format!(
                "exec process {:?}: the spec ({}) is not an OCI process as JSON: {e}",
                req.exec_id, any.type_url
            ))
        })?;
        let Some(obj) = process.as_object_mut() else {
            return Err(Error::InvalidArgument(format!(
                "exec process {:?}: the spec is not a JSON object",
                req.exec_id
            )));
        };
        if obj
            .get("args")
            .is_none_or(|a| a.as_array().is_none_or(|a| a.is_empty()))
        {
            return Err(Error::InvalidArgument(format!(
                "exec process {:?}: the spec has no args",
                req.exec_id
            )));
        }
        // The request's flag decides, as the runtime reads `terminal` from the JSON.
        obj.insert("terminal".into(), req.terminal.into());
        let spec_path = self.state_dir().join(format!("exec-{}.json", req.exec_id));
        let mut st = lock(&self.shared.state);
        if !st.procs.get(INIT).is_some_and(|p| p.live()) {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running: cannot exec",
                self.id()
            )));
        }
        if st.procs.contains_key(&req.exec_id) {
            return Err(Error::AlreadyExists(format!(
                "exec process {:?} exists already in container {}",
                req.exec_id,
                self.id()
            )));
        }
        let json = serde_json::to_vec(&process)
            .map_err(|e| Error::InvalidArgument(format!("exec process {:?}: {e}", req.exec_id)))?;
        std::fs::write(&spec_path, json)
            .map_err(|e| Error::io("write exec process spec", &spec_path, e))?;
        let mut p = Proc::new(0, req.terminal, &req.stdin, &req.stdout, &req.stderr);
        p.spec = Some(spec_path);
        st.procs.insert(req.exec_id.clone(), p);
        Ok(())
    }
}
