//! The containerd shim Task API (`containerd.task.v3.Task` over ttrpc) for one container.
//!
//! Conventions of this shim, beyond the API's own:
//! - **Create**: `stdout` is the path of the container's CRI log (both streams go there,
//!   tagged; `stderr` must be empty or the same path); empty discards output. `stdin` is an
//!   optional FIFO copied into the container's stdin, which is closed when the FIFO's last
//!   writer leaves or on CloseIO (a daemon that keeps stdin open across attach sessions holds
//!   a writer of its own). `options` may carry [`crate::attach::StdioOptions`] (type URL
//!   [`crate::attach::OPTIONS_TYPE_URL`]): with `stdin` the shim holds the container's stdin
//!   open itself for attached clients (instead of a FIFO), `stdin_once` closes it after the
//!   first client's stdin ends. The init's output also goes to clients of the attach socket
//!   ([`crate::attach`]). `rootfs` must be empty: the daemon mounts the rootfs into the
//!   bundle itself.
//! - **Exec**: `spec` is an OCI `Process` as JSON (containerd's typeurl encoding). `stdout` and
//!   `stderr` are FIFOs (or files) handed to the process as they are; `stdin` is a FIFO copied
//!   in. With a terminal, the terminal's output goes to `stdout`.
//! - **Update**: `resources` is an OCI `LinuxResources` as JSON; the annotation
//!   [`REOPEN_LOG_ANNOTATION`] reopens the CRI log file (ReopenContainerLog).
//! - **Delete** of the init makes the shim exit [`EXIT_AFTER_DELETE`] later; **Shutdown**
//!   makes it exit at once when nothing runs (or regardless, with `now`). The connection then
//!   closes: a client treats a closed connection after Shutdown as success.

mod exec;
mod init;

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use containerd_shim_protos::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest,
    PidsResponse, ProcessInfo, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, Status,
    UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{EnumOrUnknown, MessageField};
use containerd_shim_protos::{Task, ttrpc};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::runtime_cli::{self, CommandIo};
use crate::state::{Exit, INIT, Phase};
use crate::supervisor::{Shared, lock};
use crate::tty::set_winsize;
use crate::{Error, Result};

/// An Update with this annotation (any value) reopens the container's log file.
pub const REOPEN_LOG_ANNOTATION: &str = "io.bungeo.shim.reopen-log";

/// How long the shim stays after the init's Delete, for a Shutdown or a last State.
pub const EXIT_AFTER_DELETE: Duration = Duration::from_secs(2);

/// How long the shim stays after Shutdown, so the reply can leave.
const EXIT_AFTER_SHUTDOWN: Duration = Duration::from_millis(100);

/// The Task service of one shim.
#[derive(Debug, Clone)]
pub struct TaskService {
    shared: Arc<Shared>,
}

fn timestamp(t: SystemTime) -> MessageField<Timestamp> {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    MessageField::some(ts)
}

fn display(key: &str) -> String {
    if key == INIT {
        "the container's init".to_string()
    } else {
        format!("exec process {key:?}")
    }
}

impl TaskService {
    /// The service over the shim's shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    fn id(&self) -> &str {
        &self.shared.cfg.id
    }

    fn state_dir(&self) -> &Path {
        &self.shared.cfg.state_dir
    }

    fn check_id(&self, id: &str) -> Result<()> {
        if id == self.id() {
            Ok(())
        } else {
            Err(Error::NotFound(format!(
                "container {id:?} not found: this shim serves {:?}",
                self.id()
            )))
        }
    }

    fn not_found(&self, key: &str) -> Error {
        if key == INIT {
            Error::NotFound(format!("container {} has not been created", self.id()))
        } else {
            Error::NotFound(format!(
                "exec process {key:?} not found in container {}",
                self.id()
            ))
        }
    }

    /// Runs the runtime with `args` then the container id.
    fn runtime(&self, args: &[&str], io: CommandIo) -> Result<runtime_cli::Finished> {
        let mut a: Vec<OsString> = args.iter().map(OsString::from).collect();
        a.push(self.id().into());
        runtime_cli::run(&self.shared, &a, io)
    }

    /// Waits until the exit of `key` is reported.
    fn wait_exit(&self, key: &str) -> Result<(i32, Exit)> {
        let mut st = lock(&self.shared.state);
        loop {
            let p = st.procs.get(key).ok_or_else(|| self.not_found(key))?;
            if let Some(e) = p.published_exit() {
                return Ok((p.pid, e));
            }
            st = self.shared.wait(st);
        }
    }

    fn do_state(&self, req: &StateRequest) -> Result<StateResponse> {
        self.check_id(&req.id)?;
        let st = lock(&self.shared.state);
        let p = st
            .procs
            .get(&req.exec_id)
            .ok_or_else(|| self.not_found(&req.exec_id))?;
        let status = match (p.published, p.pid, p.phase) {
            (true, _, _) => Status::STOPPED,
            (false, 0, _) | (false, _, Phase::Created) => Status::CREATED,
            (false, _, Phase::Running) => Status::RUNNING,
            (false, _, Phase::Paused) => Status::PAUSED,
        };
        let mut r = StateResponse::new();
        r.id = req.id.clone();
        r.exec_id = req.exec_id.clone();
        r.bundle = self.shared.cfg.bundle.to_string_lossy().into_owned();
        r.pid = p.pid.max(0) as u32;
        r.status = EnumOrUnknown::new(status);
        r.stdin = p.stdin.clone();
        r.stdout = p.stdout.clone();
        r.stderr = p.stderr.clone();
        r.terminal = p.terminal;
        if let Some(e) = p.published_exit() {
            r.exit_status = e.code as u32;
            r.exited_at = timestamp(e.at);
        }
        Ok(r)
    }

    fn do_kill(&self, req: &KillRequest) -> Result<()> {
        self.check_id(&req.id)?;
        let sig = Signal::try_from(req.signal as i32)
            .map_err(|_| Error::InvalidArgument(format!("unknown signal {}", req.signal)))?;
        let key = req.exec_id.as_str();
        if key == INIT && req.all {
            if !lock(&self.shared.state).procs.contains_key(INIT) {
                return Err(self.not_found(INIT));
            }
            let signal = req.signal.to_string();
            let a = runtime_cli::args([
                "kill".as_ref(),
                "--all".as_ref(),
                self.id().as_ref(),
                signal.as_ref(),
            ]);
            return match runtime_cli::run(&self.shared, &a, CommandIo::null()) {
                Ok(_) => Ok(()),
                // Nothing left to signal is not a failure.
                Err(_)
                    if lock(&self.shared.state)
                        .procs
                        .get(INIT)
                        .is_some_and(|p| p.exit.is_some()) =>
                {
                    Ok(())
                }
                Err(e) => Err(e),
            };
        }
        // Under the lock: an unreaped process keeps its pid, so the signal cannot reach a
        // stranger that reused it.
        let st = lock(&self.shared.state);
        let p = st.procs.get(key).ok_or_else(|| self.not_found(key))?;
        if p.pid <= 0 {
            return Err(Error::FailedPrecondition(format!(
                "{} has not started",
                display(key)
            )));
        }
        if p.exit.is_some() {
            return Err(Error::NotFound(format!(
                "{} of container {} has already finished",
                display(key),
                self.id()
            )));
        }
        kill(Pid::from_raw(p.pid), sig)
            .map_err(|e| Error::sys(format!("kill {} ({}) with {sig}", display(key), p.pid), e))
    }

    fn do_delete(&self, req: &DeleteRequest) -> Result<DeleteResponse> {
        self.check_id(&req.id)?;
        let key = req.exec_id.as_str();
        let (pid, exit) = if key == INIT {
            self.delete_init()?
        } else {
            let mut st = lock(&self.shared.state);
            let p = st.procs.get(key).ok_or_else(|| self.not_found(key))?;
            if p.live() {
                return Err(Error::FailedPrecondition(format!(
                    "exec process {key:?} is still running: kill it and wait before Delete"
                )));
            }
            let p = st.procs.remove(key).ok_or_else(|| self.not_found(key))?;
            st.close_stdin.push(key.to_string());
            drop(st);
            self.shared.wake();
            if let Some(spec) = &p.spec {
                let _ = std::fs::remove_file(spec);
            }
            let _ = std::fs::remove_file(self.state_dir().join(format!("exec-{key}.pid")));
            (p.pid, p.published_exit())
        };
        let mut r = DeleteResponse::new();
        r.pid = pid.max(0) as u32;
        if let Some(e) = exit {
            r.exit_status = e.code as u32;
            r.exited_at = timestamp(e.at);
        }
        Ok(r)
    }

    fn do_pids(&self, req: &PidsRequest) -> Result<PidsResponse> {
        self.check_id(&req.id)?;
        if !lock(&self.shared.state).procs.contains_key(INIT) {
            return Err(self.not_found(INIT));
        }
        let out = self.runtime(&["ps", "--format", "json"], CommandIo::capture())?;
        let pids: Vec<i32> = serde_json::from_slice(&out.stdout).map_err(|e| Error::Runtime {
            command: "ps".into(),
            message: format!("unexpected output: {e}"),
        })?;
        let mut r = PidsResponse::new();
        r.processes = pids
            .into_iter()
            .map(|pid| {
                let mut i = ProcessInfo::new();
                i.pid = pid as u32;
                i
            })
            .collect();
        Ok(r)
    }

    fn do_resize(&self, req: &ResizePtyRequest) -> Result<()> {
        self.check_id(&req.id)?;
        let st = lock(&self.shared.state);
        let p = st
            .procs
            .get(&req.exec_id)
            .ok_or_else(|| self.not_found(&req.exec_id))?;
        let c = p.console.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(format!("{} has no terminal", display(&req.exec_id)))
        })?;
        let clamp = |v: u32| v.min(u32::from(u16::MAX)) as u16;
        set_winsize(c.as_raw_fd(), clamp(req.height), clamp(req.width))
    }

    fn do_close_io(&self, req: &CloseIORequest) -> Result<()> {
        self.check_id(&req.id)?;
        let mut st = lock(&self.shared.state);
        if !st.procs.contains_key(&req.exec_id) {
            return Err(self.not_found(&req.exec_id));
        }
        if req.stdin {
            st.close_stdin.push(req.exec_id.clone());
            drop(st);
            self.shared.wake();
        }
        Ok(())
    }

    fn do_update(&self, req: &UpdateTaskRequest) -> Result<()> {
        self.check_id(&req.id)?;
        if let Some(any) = req.resources.as_ref() {
            let path = self.state_dir().join("resources.json");
            std::fs::write(&path, &any.value)
                .map_err(|e| Error::io("write resources", &path, e))?;
            let arg = path.to_string_lossy().into_owned();
            self.runtime(&["update", "--resources", &arg], CommandIo::null())?;
        }
        if req.annotations.contains_key(REOPEN_LOG_ANNOTATION) {
            match lock(&self.shared.log).as_mut() {
                Some(log) => log.reopen()?,
                None => {
                    return Err(Error::FailedPrecondition(format!(
                        "container {} has no log file to reopen",
                        self.id()
                    )));
                }
            }
        }
        Ok(())
    }

    fn set_phase(&self, cmd: &str, phase: Phase) -> Result<()> {
        if !lock(&self.shared.state).procs.contains_key(INIT) {
            return Err(self.not_found(INIT));
        }
        self.runtime(&[cmd], CommandIo::null())?;
        if let Some(p) = lock(&self.shared.state).procs.get_mut(INIT) {
            p.phase = phase;
        }
        Ok(())
    }

    fn do_shutdown(&self, req: &ShutdownRequest) -> Result<()> {
        self.check_id(&req.id)?;
        let mut st = lock(&self.shared.state);
        let mut live: Vec<String> = st
            .procs
            .iter()
            .filter(|(_, p)| p.live())
            .map(|(k, _)| display(k))
            .collect();
        live.sort();
        if !live.is_empty() && !req.now {
            return Err(Error::FailedPrecondition(format!(
                "container {} still has live processes ({}): delete them first, or shut down \
                 with `now`",
                self.id(),
                live.join(", ")
            )));
        }
        st.exit_at = Some(Instant::now() + EXIT_AFTER_SHUTDOWN);
        drop(st);
        self.shared.wake();
        Ok(())
    }
}

fn read_pid(path: &Path) -> Result<i32> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read pid file", path, e))?;
    text.trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            Error::InvalidArgument(format!("pid file {} holds {text:?}", path.display()))
        })
}

/// The ttrpc face: every method maps its error to a status in one place ([`Error::code`]).
impl Task for TaskService {
    fn create(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        let pid = self.do_create(&req)?;
        let mut r = CreateTaskResponse::new();
        r.pid = pid;
        Ok(r)
    }

    fn start(&self, _ctx: &ttrpc::TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        let pid = self.do_start(&req)?;
        let mut r = StartResponse::new();
        r.pid = pid;
        Ok(r)
    }

    fn state(&self, _ctx: &ttrpc::TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        Ok(self.do_state(&req)?)
    }

    fn kill(&self, _ctx: &ttrpc::TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        self.do_kill(&req)?;
        Ok(Empty::new())
    }

    fn exec(&self, _ctx: &ttrpc::TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        self.do_exec(&req)?;
        Ok(Empty::new())
    }

    fn resize_pty(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: ResizePtyRequest,
    ) -> ttrpc::Result<Empty> {
        self.do_resize(&req)?;
        Ok(Empty::new())
    }

    fn close_io(&self, _ctx: &ttrpc::TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        self.do_close_io(&req)?;
        Ok(Empty::new())
    }

    fn wait(&self, _ctx: &ttrpc::TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        self.check_id(&req.id)?;
        let (_, e) = self.wait_exit(&req.exec_id)?;
        let mut r = WaitResponse::new();
        r.exit_status = e.code as u32;
        r.exited_at = timestamp(e.at);
        Ok(r)
    }

    fn delete(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: DeleteRequest,
    ) -> ttrpc::Result<DeleteResponse> {
        Ok(self.do_delete(&req)?)
    }

    fn pids(&self, _ctx: &ttrpc::TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        Ok(self.do_pids(&req)?)
    }

    fn pause(&self, _ctx: &ttrpc::TtrpcContext, req: PauseRequest) -> ttrpc::Result<Empty> {
        self.check_id(&req.id)?;
        self.set_phase("pause", Phase::Paused)?;
        Ok(Empty::new())
    }

    fn resume(&self, _ctx: &ttrpc::TtrpcContext, req: ResumeRequest) -> ttrpc::Result<Empty> {
        self.check_id(&req.id)?;
        self.set_phase("resume", Phase::Running)?;
        Ok(Empty::new())
    }

    fn update(&self, _ctx: &ttrpc::TtrpcContext, req: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        self.do_update(&req)?;
        Ok(Empty::new())
    }

    fn stats(&self, _ctx: &ttrpc::TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        self.check_id(&req.id)?;
        Err(Error::Unimplemented(
            "bungeo-shim does not report stats yet: read the container's cgroup instead".into(),
        )
        .into())
    }

    fn connect(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: ConnectRequest,
    ) -> ttrpc::Result<ConnectResponse> {
        self.check_id(&req.id)?;
        let mut r = ConnectResponse::new();
        r.shim_pid = std::process::id();
        r.task_pid = lock(&self.shared.state)
            .procs
            .get(INIT)
            .map(|p| p.pid.max(0) as u32)
            .unwrap_or(0);
        r.version = concat!("bungeo-shim ", env!("CARGO_PKG_VERSION")).to_string();
        Ok(r)
    }

    fn shutdown(&self, _ctx: &ttrpc::TtrpcContext, req: ShutdownRequest) -> ttrpc::Result<Empty> {
        self.do_shutdown(&req)?;
        Ok(Empty::new())
    }
}
