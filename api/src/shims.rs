//! The daemon's side of the per-container shims: where each shim lives, starting one, and the
//! Task API calls the container code makes, each with a deadline.
//!
//! Every call opens its own connection: calls are rare (create, start, stop, exec), a
//! connection is one socket and two short-lived client threads, and a fresh connection never
//! carries the state of a shim that was replaced. The one long call, the init's Wait, runs on
//! a connection of its own in the container's exit watcher.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use bungeo_shim::attach::StdioOptions;
use bungeo_shim::protos::TaskClient;
use bungeo_shim::protos::api::{
    CloseIORequest, ConnectRequest, CreateTaskRequest, DeleteRequest, ExecProcessRequest,
    KillRequest, ResizePtyRequest, ShutdownRequest, StartRequest, StateRequest,
    Status as TaskStatus, UpdateTaskRequest, WaitRequest,
};
use bungeo_shim::protos::protobuf::MessageField;
use bungeo_shim::protos::protobuf::well_known_types::any::Any;
use bungeo_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use bungeo_shim::protos::ttrpc::{self, Code, context};
use serde::{Deserialize, Serialize};

/// Directory of the shims' state dirs and sockets inside the daemon's state directory.
pub const SHIMS_DIR: &str = "shims";

/// Directory of the runtime's container state inside the daemon's state directory.
pub const RUNTIME_DIR: &str = "runtime";

/// How long an ordinary call may take. Create and Start run the runtime, which takes
/// milliseconds, but a loaded node can stretch that a lot.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The type URL containerd gives an OCI process spec in an Exec request.
const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

/// The type URL containerd gives OCI Linux resources in an Update request.
const RESOURCES_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

/// The binaries and runtime settings every shim gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimSettings {
    /// The `bungeo-shim` executable.
    pub shim: PathBuf,
    /// The OCI runtime the shim runs (`bungeo-runtime`).
    pub runtime: PathBuf,
    /// The runtime's `--root`.
    pub runtime_root: PathBuf,
    /// Pass `--systemd-cgroup` to the runtime.
    pub systemd_cgroup: bool,
}

/// Where one container's shim keeps its files and serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimPaths {
    /// `<state>/shims/<id>/`: `exit.json`, the shim's log, exec specs and outputs.
    pub state_dir: PathBuf,
    /// `<state>/shims/<id>.sock`.
    pub socket: PathBuf,
}

impl ShimPaths {
    /// The paths of container `id`'s shim under the daemon's state directory.
    pub fn new(state: &Path, id: &str) -> ShimPaths {
        let dir = state.join(SHIMS_DIR);
        ShimPaths {
            state_dir: dir.join(id),
            socket: dir.join(format!("{id}.sock")),
        }
    }

    /// The ttrpc address of the socket.
    pub fn address(&self) -> String {
        format!("unix://{}", self.socket.display())
    }
}

/// Why a shim call failed.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// No shim answers on the socket, or the connection broke: the shim is gone.
    Gone(String),
    /// The shim answered with an error status.
    Status { code: Code, message: String },
    /// No answer within the deadline.
    Timeout,
    /// Anything else (encoding, a transport oddity).
    Other(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Gone(m) => write!(f, "the shim is gone ({m})"),
            CallError::Status { message, .. } => f.write_str(message),
            CallError::Timeout => f.write_str("the shim did not answer in time"),
            CallError::Other(m) => f.write_str(m),
        }
    }
}

impl CallError {
    fn from_ttrpc(e: ttrpc::Error) -> CallError {
        match e {
            ttrpc::Error::RpcStatus(s) => CallError::Status {
                code: s.code(),
                message: s.message().to_string(),
            },
            ttrpc::Error::Socket(m) => CallError::Gone(m),
            ttrpc::Error::Eof | ttrpc::Error::RemoteClosed | ttrpc::Error::LocalClosed => {
                CallError::Gone(e.to_string())
            }
            // The sync client's deadline (and a receiver that vanished with the connection)
            // come as `Others`.
            ttrpc::Error::Others(m) if m.contains("timeout") => CallError::Timeout,
            ttrpc::Error::Others(m) if m.contains("Receiver error") => CallError::Gone(m),
            other => CallError::Other(other.to_string()),
        }
    }

    /// Whether the shim answered NOT_FOUND (no such process, or it has finished already).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            CallError::Status {
                code: Code::NOT_FOUND,
                ..
            }
        )
    }
}

/// Result of a shim call.
pub type CallResult<T> = std::result::Result<T, CallError>;

/// What the shim says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessState {
    pub status: TaskStatus,
    pub pid: u32,
    pub exit_status: u32,
    pub exited_at: Option<SystemTime>,
}

/// How a process exited, as Wait reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitResult {
    pub exit_status: u32,
    pub exited_at: SystemTime,
}

fn ctx(timeout: Option<Duration>) -> context::Context {
    match timeout {
        Some(t) => context::with_timeout(i64::try_from(t.as_nanos()).unwrap_or(i64::MAX)),
        None => context::Context::default(),
    }
}

fn time_of(ts: &MessageField<Timestamp>) -> Option<SystemTime> {
    let ts = ts.as_ref()?;
    if ts.seconds <= 0 && ts.nanos <= 0 {
        return None;
    }
    Some(
        UNIX_EPOCH
            + Duration::new(
                u64::try_from(ts.seconds).unwrap_or(0),
                u32::try_from(ts.nanos).unwrap_or(0),
            ),
    )
}

/// Starts the shim of container `id` (blocking: the launcher waits until the shim serves) and
/// connects to it.
pub fn launch(
    settings: &ShimSettings,
    paths: &ShimPaths,
    id: &str,
    bundle: &Path,
) -> CallResult<Shim> {
    let cfg = bungeo_shim::Config {
        id: id.to_owned(),
        bundle: bundle.to_owned(),
        state_dir: paths.state_dir.clone(),
        socket: paths.socket.clone(),
        runtime: settings.runtime.clone(),
        runtime_root: settings.runtime_root.clone(),
        systemd_cgroup: settings.systemd_cgroup,
    };
    let address = bungeo_shim::launch::launch(&settings.shim, &cfg)
        .map_err(|e| CallError::Other(format!("start the shim: {e}")))?;
    Shim::connect_address(id, &address)
}

/// A connection to one container's shim.
pub struct Shim {
    id: String,
    client: TaskClient,
}

impl Shim {
    /// Connects to the shim serving at `paths`; `Gone` when none does.
    pub fn connect(paths: &ShimPaths, id: &str) -> CallResult<Shim> {
        if !paths.socket.exists() {
            return Err(CallError::Gone(format!(
                "no socket at {}",
                paths.socket.display()
            )));
        }
        Shim::connect_address(id, &paths.address())
    }

    fn connect_address(id: &str, address: &str) -> CallResult<Shim> {
        // Connected here rather than by `ttrpc::Client::connect`, which leaks its socket when
        // the connect fails (a shim exiting, or not serving yet): one fd per failed attempt.
        let path = address.strip_prefix("unix://").unwrap_or(address);
        let stream = std::os::unix::net::UnixStream::connect(path)
            .map_err(|e| CallError::Gone(format!("connect to {address}: {e}")))?;
        let client = ttrpc::Client::new(std::os::fd::IntoRawFd::into_raw_fd(stream))
            .map_err(|e| CallError::Other(format!("set up a client on {address}: {e}")))?;
        Ok(Shim {
            id: id.to_owned(),
            client: TaskClient::new(client),
        })
    }

    /// The shim's own pid: proves it serves this container.
    pub fn shim_pid(&self) -> CallResult<u32> {
        let req = ConnectRequest {
            id: self.id.clone(),
            ..Default::default()
        };
        self.client
            .connect(ctx(Some(CALL_TIMEOUT)), &req)
            .map(|r| r.shim_pid)
            .map_err(CallError::from_ttrpc)
    }

    /// Creates the container's init: output to the CRI log at `log` (none: discarded), and to
    /// clients of its attach socket; `stdio` says whether the shim holds its stdin open.
    pub fn create(
        &self,
        bundle: &Path,
        log: Option<&Path>,
        terminal: bool,
        stdio: StdioOptions,
    ) -> CallResult<u32> {
        let log = log
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let req = CreateTaskRequest {
            id: self.id.clone(),
            bundle: bundle.to_string_lossy().into_owned(),
            terminal,
            stdout: log,
            options: MessageField::some(Any {
                type_url: bungeo_shim::attach::OPTIONS_TYPE_URL.to_owned(),
                value: stdio.to_json(),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.client
            .create(ctx(Some(CALL_TIMEOUT)), &req)
            .map(|r| r.pid)
            .map_err(CallError::from_ttrpc)
    }

    /// Starts the init (`exec_id` empty) or an exec process; its pid.
    pub fn start(&self, exec_id: &str) -> CallResult<u32> {
        let req = StartRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        self.client
            .start(ctx(Some(CALL_TIMEOUT)), &req)
            .map(|r| r.pid)
            .map_err(CallError::from_ttrpc)
    }

    /// The state of the init (`exec_id` empty) or an exec process.
    pub fn state(&self, exec_id: &str) -> CallResult<ProcessState> {
        let req = StateRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        let r = self
            .client
            .state(ctx(Some(CALL_TIMEOUT)), &req)
            .map_err(CallError::from_ttrpc)?;
        Ok(ProcessState {
            status: r.status.enum_value_or_default(),
            pid: r.pid,
            exit_status: r.exit_status,
            exited_at: time_of(&r.exited_at),
        })
    }

    /// Signals the init (with `all`, every process of the container) or an exec process.
    pub fn kill(&self, exec_id: &str, signal: i32, all: bool) -> CallResult<()> {
        let req = KillRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            signal: u32::try_from(signal).unwrap_or(0),
            all,
            ..Default::default()
        };
        self.client
            .kill(ctx(Some(CALL_TIMEOUT)), &req)
            .map(drop)
            .map_err(CallError::from_ttrpc)
    }

    /// Waits for the init or an exec process to exit, for at most `timeout` (None: forever).
    pub fn wait(&self, exec_id: &str, timeout: Option<Duration>) -> CallResult<WaitResult> {
        let req = WaitRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        let r = self
            .client
            .wait(ctx(timeout), &req)
            .map_err(CallError::from_ttrpc)?;
        Ok(WaitResult {
            exit_status: r.exit_status,
            exited_at: time_of(&r.exited_at).unwrap_or_else(SystemTime::now),
        })
    }

    /// Deletes the init (the shim exits soon after) or a finished exec process.
    pub fn delete(&self, exec_id: &str) -> CallResult<()> {
        let req = DeleteRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        self.client
            .delete(ctx(Some(CALL_TIMEOUT)), &req)
            .map(drop)
            .map_err(CallError::from_ttrpc)
    }

    /// Makes the shim exit now. The shim may close the connection before it answers, which is
    /// success too.
    pub fn shutdown(&self) -> CallResult<()> {
        let req = ShutdownRequest {
            id: self.id.clone(),
            now: true,
            ..Default::default()
        };
        match self.client.shutdown(ctx(Some(CALL_TIMEOUT)), &req) {
            Ok(_) => Ok(()),
            Err(e) => match CallError::from_ttrpc(e) {
                CallError::Gone(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Registers an exec process running `process` (an OCI Process as JSON) with its output
    /// written to the files or FIFOs `stdout` and `stderr`.
    pub fn exec(
        &self,
        exec_id: &str,
        process: Vec<u8>,
        stdout: &Path,
        stderr: &Path,
    ) -> CallResult<()> {
        let spec = Any {
            type_url: PROCESS_TYPE_URL.to_owned(),
            value: process,
            ..Default::default()
        };
        let req = ExecProcessRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            stdout: stdout.to_string_lossy().into_owned(),
            stderr: stderr.to_string_lossy().into_owned(),
            spec: MessageField::some(spec),
            ..Default::default()
        };
        self.client
            .exec(ctx(Some(CALL_TIMEOUT)), &req)
            .map(drop)
            .map_err(CallError::from_ttrpc)
    }

    /// Registers a streaming exec process: `stdin` (a FIFO, or empty for none) is copied into
    /// it; its output goes to the FIFOs `stdout` and `stderr` (with a terminal, all of it to
    /// `stdout`).
    pub fn exec_streaming(
        &self,
        exec_id: &str,
        process: Vec<u8>,
        stdin: &str,
        stdout: &str,
        stderr: &str,
        terminal: bool,
    ) -> CallResult<()> {
        let spec = Any {
            type_url: PROCESS_TYPE_URL.to_owned(),
            value: process,
            ..Default::default()
        };
        let req = ExecProcessRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            stdin: stdin.to_owned(),
            stdout: stdout.to_owned(),
            stderr: stderr.to_owned(),
            terminal,
            spec: MessageField::some(spec),
            ..Default::default()
        };
        self.client
            .exec(ctx(Some(CALL_TIMEOUT)), &req)
            .map(drop)
            .map_err(CallError::from_ttrpc)
    }

    /// Resizes the terminal of the init (`exec_id` empty) or an exec process.
    pub fn resize_pty(&self, exec_id: &str, width: u32, height: u32) -> CallResult<()> {
        let req = ResizePtyRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            width,
            height,
            ..Default::default()
        };
        self.client
            .resize_pty(ctx(Some(CALL_TIMEOUT)), &req)
            .map(drop)
            .map_err(CallError::from_ttrpc)
    }

    /// Closes the stdin of the init (`exec_id` empty) or an exec process.
    pub fn close_stdin(&self, exec_id: &str) -> CallResult<()> {
        let req = CloseIORequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            stdin: true,
            ..Default::default()
        };
        self.client
            .close_io(ctx(Some(CALL_TIMEOUT)), &req)
            .map(drop)
            .map_err(CallError::from_ttrpc)
    }

    /// Applies new cgroup `resources` (OCI LinuxResources as JSON) and/or reopens the log.
    pub fn update(&self, resources: Option<Vec<u8>>, reopen_log: bool) -> CallResult<()> {
        let mut req = UpdateTaskRequest {
            id: self.id.clone(),
            ..Default::default()
        };
        if let Some(value) = resources {
            req.resources = MessageField::some(Any {
                type_url: RESOURCES_TYPE_URL.to_owned(),
                value,
                ..Default::default()
            });
        }
        if reopen_log {
            req.annotations.insert(
                bungeo_shim::REOPEN_LOG_ANNOTATION.to_owned(),
                "true".to_owned(),
            );
        }
        self.client
            .update(ctx(Some(CALL_TIMEOUT)), &req)
            .map(drop)
            .map_err(CallError::from_ttrpc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_sit_under_the_state_dir() {
        let p = ShimPaths::new(Path::new("/run/bungeo"), "abc");
        assert_eq!(p.state_dir, PathBuf::from("/run/bungeo/shims/abc"));
        assert_eq!(p.socket, PathBuf::from("/run/bungeo/shims/abc.sock"));
        assert_eq!(p.address(), "unix:///run/bungeo/shims/abc.sock");
    }

    #[test]
    fn ttrpc_errors_are_sorted_by_what_the_caller_does_next() {
        let status = ttrpc::Error::RpcStatus(ttrpc::get_status(Code::NOT_FOUND, "gone already"));
        let e = CallError::from_ttrpc(status);
        assert!(e.is_not_found());
        assert_eq!(e.to_string(), "gone already");
        assert!(matches!(
            CallError::from_ttrpc(ttrpc::Error::Socket("reset".into())),
            CallError::Gone(_)
        ));
        assert_eq!(
            CallError::from_ttrpc(ttrpc::Error::Others(
                "Receive packet from Receiver timeout: timed out".into()
            )),
            CallError::Timeout
        );
        assert!(matches!(
            CallError::from_ttrpc(ttrpc::Error::Others(
                "Receive packet from Receiver error: disconnected".into()
            )),
            CallError::Gone(_)
        ));
    }

    #[test]
    fn a_missing_socket_means_the_shim_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let paths = ShimPaths::new(dir.path(), "c1");
        std::fs::create_dir(dir.path().join(SHIMS_DIR)).unwrap();
        assert!(matches!(
            Shim::connect(&paths, "c1"),
            Err(CallError::Gone(_))
        ));
        // A socket file nobody listens on (a shim killed with SIGKILL leaves one).
        let listener = std::os::unix::net::UnixListener::bind(&paths.socket).unwrap();
        drop(listener);
        assert!(matches!(
            Shim::connect(&paths, "c1"),
            Err(CallError::Gone(_))
        ));
    }

    #[test]
    fn failed_connects_leave_no_socket_open() {
        let dir = tempfile::tempdir().unwrap();
        let paths = ShimPaths::new(dir.path(), "c1");
        std::fs::create_dir(dir.path().join(SHIMS_DIR)).unwrap();
        drop(std::os::unix::net::UnixListener::bind(&paths.socket).unwrap());
        let sockets = || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|target| target.to_string_lossy().starts_with("socket:"))
                .count()
        };
        // Other tests of this binary open sockets too: a leak of one per attempt shows as at
        // least 200 more, their noise as a handful.
        let before = sockets();
        for _ in 0..200 {
            assert!(Shim::connect(&paths, "c1").is_err());
        }
        let after = sockets();
        assert!(
            after < before + 100,
            "{before} sockets before, {after} after"
        );
    }

    #[test]
    fn timestamps_convert_and_zero_means_none() {
        let mut ts = Timestamp::new();
        assert_eq!(time_of(&MessageField::some(ts.clone())), None);
        assert_eq!(time_of(&MessageField::none()), None);
        ts.seconds = 1_700_000_000;
        ts.nanos = 5;
        assert_eq!(
            time_of(&MessageField::some(ts)),
            Some(UNIX_EPOCH + Duration::new(1_700_000_000, 5))
        );
    }
}
