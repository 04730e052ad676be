//! Starting a shim: the launcher binds the ttrpc socket, forks the long-lived shim process and
//! waits until it serves; the shim process leaves the launcher's session (setsid), becomes a
//! child subreaper, puts its stdio on `/dev/null` and `<state dir>/shim.log`, and serves until
//! it is told to exit. When the launcher exits the shim is re-parented away from the daemon,
//! so the daemon can restart without taking containers with it.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

use containerd_shim_protos::{create_task, ttrpc};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::Mode;
use nix::unistd::{ForkResult, fork};

use crate::config::Config;
use crate::service::TaskService;
use crate::supervisor::{self, Shared};
use crate::{Error, Result};

/// The shim's own log (its stderr) in the state dir.
pub const SHIM_LOG: &str = "shim.log";

/// Starts the shim for `cfg` and returns its ttrpc address (`unix://<socket>`) once it serves.
///
/// Only the launching process returns; the forked shim process runs the supervisor and exits
/// the process when done. The caller must be single-threaded (it forks and the child carries
/// on running Rust code): the `bungeo-shim` binary calls this first thing in `main`.
pub fn start(cfg: &Config) -> Result<String> {
    cfg.validate()?;
    // Found now rather than at the first Create, when the daemon has moved on.
    if !cfg.runtime.is_file() {
        return Err(Error::InvalidArgument(format!(
            "--runtime {}: no such file",
            cfg.runtime.display()
        )));
    }
    let mut dirs = std::fs::DirBuilder::new();
    dirs.recursive(true).mode(0o700);
    dirs.create(&cfg.state_dir)
        .map_err(|e| Error::io("create state dir", &cfg.state_dir, e))?;
    if let Some(parent) = cfg.socket.parent() {
        dirs.create(parent)
            .map_err(|e| Error::io("create socket dir", parent, e))?;
    }
    if cfg.socket.exists() {
        if UnixStream::connect(&cfg.socket).is_ok() {
            return Err(Error::AlreadyExists(format!(
                "a shim already serves {}",
                cfg.socket.display()
            )));
        }
        std::fs::remove_file(&cfg.socket)
            .map_err(|e| Error::io("remove stale socket", &cfg.socket, e))?;
    }
    // Bound with mode 0600 from the start: no window where others could connect.
    let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(&cfg.socket);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(|e| Error::io("bind", &cfg.socket, e))?;
    let (ready_r, ready_w) = crate::stdio::pipe()?;
    // SAFETY: documented requirement: the caller is single-threaded, so the child may run any
    // of our code.
    match unsafe { fork() }.map_err(|e| Error::sys("fork the shim", e))? {
        ForkResult::Child => {
            drop(ready_r);
            let code = serve(cfg, listener, ready_w);
            std::process::exit(code);
        }
        ForkResult::Parent { child } => {
            drop(ready_w);
            drop(listener);
            let mut msg = String::new();
            let _ = std::fs::File::from(ready_r).read_to_string(&mut msg);
            if msg == "ok" {
                return Ok(cfg.address());
            }
            // It failed before serving and has exited (or is about to): reap it.
            let _ = nix::sys::wait::waitpid(child, None);
            let _ = std::fs::remove_file(&cfg.socket);
            let why = msg
                .strip_prefix("error: ")
                .map(str::to_string)
                .unwrap_or_else(|| {
                    format!(
                        "it exited during startup; see {}",
                        cfg.state_dir.join(SHIM_LOG).display()
                    )
                });
            Err(Error::Startup(format!(
                "shim for container {} did not start: {why}",
                cfg.id
            )))
        }
    }
}

/// The shim process: detaches, serves, returns the exit code.
fn serve(cfg: &Config, listener: UnixListener, ready: OwnedFd) -> i32 {
    let report = |msg: &str| {
        let _ = nix::unistd::write(&ready, msg.as_bytes());
    };
    let (server, shared, signals, wake) = match setup(cfg, listener) {
        Ok(v) => v,
        Err(e) => {
            crate::log(format_args!("startup failed: {e}"));
            report(&format!("error: {e}"));
            return 1;
        }
    };
    report("ok");
    drop(ready);
    crate::log(format_args!(
        "serving container {} on {}",
        cfg.id,
        cfg.socket.display()
    ));
    supervisor::run(&shared, &signals, &wake);
    let _ = std::fs::remove_file(&cfg.socket);
    crate::log(format_args!("container {}: shim exits", cfg.id));
    // Handler threads may be blocked in Wait; the process exit ends them. Dropping the
    // server would join them instead.
    std::mem::forget(server);
    0
}

type Setup = (ttrpc::Server, Arc<Shared>, SignalFd, OwnedFd);

fn setup(cfg: &Config, listener: UnixListener) -> Result<Setup> {
    nix::unistd::setsid().map_err(|e| Error::sys("setsid", e))?;
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| Error::sys("prctl(PR_SET_CHILD_SUBREAPER)", e))?;
    redirect_stdio(cfg)?;
    std::env::set_current_dir("/").map_err(|e| Error::io("chdir", "/", e))?;
    // One malloc arena for all threads: each extra arena would pin its own pages.
    // SAFETY: mallopt only tunes glibc's allocator; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    // Blocked before any thread exists, so every thread inherits the mask and SIGCHLD only
    // ever arrives through the signalfd.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
        .map_err(|e| Error::sys("block SIGCHLD", e))?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| Error::sys("signalfd", e))?;
    let (wake_r, wake_w) = crate::stdio::pipe()?;
    supervisor::set_nonblocking(&wake_r)?;
    supervisor::set_nonblocking(&wake_w)?;
    let shared = Arc::new(Shared::new(cfg.clone(), wake_w));
    let service = TaskService::new(shared.clone());
    let ttrpc_err = |op: &str| {
        let op = op.to_string();
        move |source| Error::Ttrpc { op, source }
    };
    // One connection (the daemon's) needs few workers: Wait blocks one, a second serves
    // everything else, and the pool grows while more calls block.
    let mut server = ttrpc::Server::new()
        .add_listener(listener.into_raw_fd())
        .map_err(ttrpc_err("listen"))?
        .register_service(create_task(Arc::new(service)))
        .set_thread_count_min(1)
        .set_thread_count_default(2)
        .set_thread_count_max(3);
    server
        .start()
        .map_err(ttrpc_err("start the ttrpc server"))?;
    Ok((server, shared, signals, wake_r))
}

fn redirect_stdio(cfg: &Config) -> Result<()> {
    let null = OpenOptions::new()
        .read(true)
        .open("/dev/null")
        .map_err(|e| Error::io("open", "/dev/null", e))?;
    let log_path = cfg.state_dir.join(SHIM_LOG);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(|e| Error::io("open shim log", &log_path, e))?;
    for (src, target) in [
        (null.as_raw_fd(), 0),
        (log.as_raw_fd(), 1),
        (log.as_raw_fd(), 2),
    ] {
        // SAFETY: dup2 of valid fds onto the stdio numbers, which we own from here on.
        if unsafe { libc::dup2(src, target) } < 0 {
            return Err(Error::sys(
                format!("redirect fd {target}"),
                nix::errno::Errno::last(),
            ));
        }
    }
    Ok(())
}
