//! `bungeo-shim infra`: the process that holds a pod's shared PID namespace. The launcher
//! forks a detacher that leaves the session (setsid), unshares a new PID namespace and forks
//! the infra, pid 1 of that namespace; the detacher writes the infra's host pid to the pidfile
//! and exits, so the infra is re-parented away from the daemon. The infra reaps whatever is
//! orphaned into it and exits on SIGTERM or SIGINT (pid 1 ignores signals it has no handler
//! for, even from outside its namespace).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, sigaction};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use crate::{Error, Result};

/// The infra's process name (comm), as `ps` shows it.
pub const INFRA_NAME: &str = "bungeo-infra";

/// Usage of the infra mode.
pub const USAGE: &str = "usage: bungeo-shim infra --pidfile <path>";

/// Parses the arguments after `infra`: the pidfile's path.
pub fn parse_args(args: &[std::ffi::OsString]) -> Result<PathBuf> {
    match args {
        [flag, path] if flag == "--pidfile" && !path.is_empty() => Ok(PathBuf::from(path)),
        _ => Err(Error::InvalidArgument(USAGE.to_owned())),
    }
}

/// Starts the infra and returns once its host pid is in `pidfile`. The caller must be
/// single-threaded (it forks and the children run Rust code).
pub fn launch(pidfile: &Path) -> Result<()> {
    // SAFETY: documented requirement: the caller is single-threaded.
    match unsafe { fork() }.map_err(|e| Error::sys("fork the infra's detacher", e))? {
        ForkResult::Child => {
            let code = match detach(pidfile) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("bungeo-shim infra: {e}");
                    1
                }
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child } => match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, 0)) => Ok(()),
            Ok(status) => Err(Error::Startup(format!(
                "the infra process did not start ({status:?})"
            ))),
            Err(e) => Err(Error::sys("wait for the infra's detacher", e)),
        },
    }
}

/// The detacher: a new session and pid namespace, the infra forked into it, its pid written.
fn detach(pidfile: &Path) -> Result<()> {
    nix::unistd::setsid().map_err(|e| Error::sys("setsid", e))?;
    unshare(CloneFlags::CLONE_NEWPID).map_err(|e| Error::sys("unshare(CLONE_NEWPID)", e))?;
    // SAFETY: single-threaded (inherited from `launch`'s requirement).
    match unsafe { fork() }.map_err(|e| Error::sys("fork the infra", e))? {
        ForkResult::Child => std::process::exit(infra()),
        ForkResult::Parent { child } => {
            if let Err(e) = write_pidfile(pidfile, child) {
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                return Err(e);
            }
            Ok(())
        }
    }
}

/// Temp file + rename: a reader sees no pid or the whole pid.
fn write_pidfile(path: &Path, pid: Pid) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io("create pidfile", &tmp, e))?;
    file.write_all(pid.to_string().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io("write pidfile", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("rename pidfile", path, e))
}

extern "C" fn exit_now(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe and ends the process without running anything else.
    unsafe { libc::_exit(0) }
}

extern "C" fn wake(_: libc::c_int) {}

/// pid 1 of the pod: reaps until told to stop. Returns only on a setup failure.
fn infra() -> i32 {
    let _ = nix::sys::prctl::set_name(c"bungeo-infra");
    let _ = std::env::set_current_dir("/");
    // The daemon may read our launcher's output until every copy of its pipes is closed.
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for target in 0..3 {
            // SAFETY: dup2 of a valid fd onto the stdio numbers, which this process owns.
            unsafe { libc::dup2(null.as_raw_fd(), target) };
        }
    }
    // SAFETY: closes only descriptors this process inherited and never uses.
    unsafe { libc::close_range(3, libc::c_uint::MAX, 0) };
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    // Blocked outside sigsuspend, so an exit between the reaping and the wait still wakes it.
    if sigprocmask_block(&chld).is_err() {
        return 1;
    }
    let handlers = [
        (Signal::SIGTERM, SigHandler::Handler(exit_now)),
        (Signal::SIGINT, SigHandler::Handler(exit_now)),
        (Signal::SIGCHLD, SigHandler::Handler(wake)),
    ];
    for (signal, handler) in handlers {
        let action = SigAction::new(handler, SaFlags::SA_RESTART, SigSet::empty());
        // SAFETY: the handlers only call async-signal-safe functions (or nothing).
        if unsafe { sigaction(signal, &action) }.is_err() {
            return 1;
        }
    }
    loop {
        while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
        SigSet::empty().suspend().ok();
    }
}

fn sigprocmask_block(set: &SigSet) -> nix::Result<()> {
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(set), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_need_exactly_a_pidfile() {
        let os = |v: &[&str]| v.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert_eq!(
            parse_args(&os(&["--pidfile", "/run/x"])).unwrap(),
            PathBuf::from("/run/x")
        );
        assert!(parse_args(&os(&[])).is_err());
        assert!(parse_args(&os(&["--pidfile"])).is_err());
        assert!(parse_args(&os(&["--pidfile", ""])).is_err());
        assert!(parse_args(&os(&["--other", "/run/x"])).is_err());
    }
}
