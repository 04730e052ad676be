//! The container's init: Create (pipes or a terminal, the CRI log, the runtime's `create`),
//! Start, and Delete.

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use containerd_shim_protos::api::{CreateTaskRequest, StartRequest};

use super::{EXIT_AFTER_DELETE, TaskService, read_pid};
use crate::attach::{Attach, StdioOptions};
use crate::cri_log::{CriLog, Stream};
use crate::oom::OomCounter;
use crate::runtime_cli::CommandIo;
use crate::state::{Exit, INIT, Phase, Proc};
use crate::stdio::{dup_nonblocking, open_stdin, pipe};
use crate::supervisor::{Pump, Sink, lock, set_nonblocking};
use crate::tty::ConsoleSocket;
use crate::{Error, Result};

impl TaskService {
    pub(super) fn do_create(&self, req: &CreateTaskRequest) -> Result<u32> {
        self.check_id(&req.id)?;
        if !req.bundle.is_empty() && Path::new(&req.bundle) != self.shared.cfg.bundle {
            return Err(Error::InvalidArgument(format!(
                "bundle {} differs from the shim's {}",
                req.bundle,
                self.shared.cfg.bundle.display()
            )));
        }
        if !req.rootfs.is_empty() {
            return Err(Error::Unimplemented(
                "bungeo-shim mounts no rootfs: mount it into the bundle before Create".into(),
            ));
        }
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            return Err(Error::Unimplemented(
                "bungeo-shim does not restore checkpoints".into(),
            ));
        }
        if !req.stderr.is_empty() && req.stderr != req.stdout {
            return Err(Error::InvalidArgument(format!(
                "stderr {:?} must be empty or the same CRI log path as stdout {:?}: both \
                 streams go to one log",
                req.stderr, req.stdout
            )));
        }
        {
            let mut st = lock(&self.shared.state);
            if st.deleted || st.procs.contains_key(INIT) {
                return Err(Error::AlreadyExists(format!(
                    "container {} was created already",
                    self.id()
                )));
            }
            st.procs.insert(
                INIT.to_string(),
                Proc::new(0, req.terminal, &req.stdin, &req.stdout, &req.stderr),
            );
        }
        let created = self.create_init(req);
        if created.is_err() {
            lock(&self.shared.state).procs.remove(INIT);
            self.shared.changed.notify_all();
        }
        created
    }

    pub(super) fn create_init(&self, req: &CreateTaskRequest) -> Result<u32> {
        let opts = match req.options.as_ref() {
            Some(any) => StdioOptions::parse(&any.type_url, &any.value)?,
            None => StdioOptions::default(),
        };
        if opts.stdin && !req.stdin.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "container {}: stdin is either a FIFO ({}) or held open for attach, not both",
                self.id(),
                req.stdin
            )));
        }
        if !req.stdout.is_empty() {
            let path = Path::new(&req.stdout);
            if !path.is_absolute() {
                return Err(Error::InvalidArgument(format!(
                    "log path {:?} must be absolute",
                    req.stdout
                )));
            }
            *lock(&self.shared.log) = Some(CriLog::open(path)?);
        }
        let sink = |stream| {
            if req.stdout.is_empty() {
                Sink::Discard
            } else {
                Sink::Log(stream)
            }
        };
        let pid_file = self.state_dir().join("init.pid");
        let _ = std::fs::remove_file(&pid_file);
        let mut stdin_src = if req.stdin.is_empty() {
            None
        } else {
            Some(open_stdin(&req.stdin)?)
        };
        let mut pumps = Vec::new();
        // The container's stdin write end, held open for attached clients.
        let mut attach_stdin = None;
        let bundle = self.shared.cfg.bundle.to_string_lossy().into_owned();
        let pid_arg = pid_file.to_string_lossy().into_owned();
        let mut args = vec!["create", "--bundle", &bundle, "--pid-file", &pid_arg];
        let console = if req.terminal {
            Some(ConsoleSocket::bind(self.state_dir(), "console.sock")?)
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
                let (out_r, out_w) = pipe()?;
                let (err_r, err_w) = pipe()?;
                set_nonblocking(&out_r)?;
                set_nonblocking(&err_r)?;
                pumps.push(
                    Pump::new(INIT, true, out_r, sink(Stream::Stdout)).with_fanout(Stream::Stdout),
                );
                pumps.push(
                    Pump::new(INIT, true, err_r, sink(Stream::Stderr)).with_fanout(Stream::Stderr),
                );
                let stdin = match stdin_src.take() {
                    Some(src) => {
                        let (in_r, in_w) = pipe()?;
                        set_nonblocking(&in_w)?;
                        pumps.push(Pump::new(INIT, false, src, Sink::Fd(in_w)));
                        Stdio::from(in_r)
                    }
                    None if opts.stdin => {
                        let (in_r, in_w) = pipe()?;
                        attach_stdin = Some(in_w);
                        Stdio::from(in_r)
                    }
                    None => Stdio::null(),
                };
                CommandIo {
                    stdin,
                    stdout: Stdio::from(out_w),
                    stderr: Stdio::from(err_w),
                    capture: false,
                }
            }
        };
        // Bound before the container exists, so no output can come before a client could.
        let mut attach = Some(Attach::bind(
            self.state_dir(),
            attach_stdin.take(),
            opts.stdin_once,
        )?);
        let fin = self.runtime(&args, io)?;
        let mut finish = || -> Result<(i32, Option<std::os::fd::OwnedFd>)> {
            let pid = read_pid(&pid_file)?;
            let Some(console) = &console else {
                return Ok((pid, None));
            };
            let master = console.receive_master()?;
            pumps.push(
                Pump::new(INIT, true, dup_nonblocking(&master)?, sink(Stream::Stdout))
                    .with_fanout(Stream::Stdout),
            );
            if opts.stdin
                && let Some(a) = attach.as_mut()
            {
                // A terminal's input is its master: attached clients type into it.
                a.set_stdin(dup_nonblocking(&master)?);
            }
            if let Some(src) = stdin_src.take() {
                pumps.push(Pump::new(
                    INIT,
                    false,
                    src,
                    Sink::Fd(dup_nonblocking(&master)?),
                ));
            }
            Ok((pid, Some(master)))
        };
        let (pid, master) = match finish() {
            Ok(v) => v,
            Err(e) => {
                // The container exists but cannot be supervised: take it down again.
                let _ = self.runtime(&["delete", "--force"], CommandIo::null());
                return Err(e);
            }
        };
        self.shared.add_pumps(std::mem::take(&mut pumps));
        if let Some(a) = attach {
            self.shared.set_attach(a);
        }
        let oom = OomCounter::for_pid(pid);
        if oom.is_none() {
            crate::log(format_args!(
                "no memory cgroup OOM counter found for pid {pid}: OOM kills go unreported"
            ));
        }
        let mut st = lock(&self.shared.state);
        if let Some(p) = st.procs.get_mut(INIT) {
            p.console = master;
            p.oom = oom;
        }
        st.set_pid(INIT, pid, fin.since);
        drop(st);
        // An exit reaped before the pid was known is reported by the loop: wake it.
        self.shared.wake();
        Ok(pid as u32)
    }

    pub(super) fn do_start(&self, req: &StartRequest) -> Result<u32> {
        self.check_id(&req.id)?;
        let key = req.exec_id.as_str();
        if key == INIT {
            let pid = {
                let st = lock(&self.shared.state);
                let p = st.procs.get(INIT).ok_or_else(|| self.not_found(INIT))?;
                if p.pid <= 0 || p.phase != Phase::Created || p.exit.is_some() {
                    return Err(Error::FailedPrecondition(format!(
                        "container {} cannot start: it is not in the created state",
                        self.id()
                    )));
                }
                p.pid
            };
            self.runtime(&["start"], CommandIo::null())?;
            let mut st = lock(&self.shared.state);
            if let Some(p) = st.procs.get_mut(INIT)
                && p.phase == Phase::Created
            {
                p.phase = Phase::Running;
            }
            return Ok(pid as u32);
        }
        self.start_exec(key)
    }

    pub(super) fn delete_init(&self) -> Result<(i32, Option<Exit>)> {
        let (live, created) = {
            let st = lock(&self.shared.state);
            let p = st.procs.get(INIT).ok_or_else(|| self.not_found(INIT))?;
            (p.live(), p.phase == Phase::Created && p.exit.is_none())
        };
        if live && !created {
            return Err(Error::FailedPrecondition(format!(
                "container {} is running: kill it and wait before Delete",
                self.id()
            )));
        }
        // A created init is killed by the runtime; it then exits like any other.
        self.runtime(&["delete", "--force"], CommandIo::null())?;
        let (pid, exit) = self.wait_exit(INIT)?;
        let mut st = lock(&self.shared.state);
        st.procs.clear();
        st.deleted = true;
        st.close_stdin.push(INIT.to_string());
        st.exit_at = Some(Instant::now() + EXIT_AFTER_DELETE);
        drop(st);
        self.shared.changed.notify_all();
        self.shared.wake();
        Ok((pid, Some(exit)))
    }
}
