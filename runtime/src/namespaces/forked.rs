//! Test support: run a closure in a forked child and get its result back over a pipe, for tests
//! that change process-wide or irreversible state (capabilities, seccomp, rlimits, setns).

use std::io::{Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};

use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};

/// Runs `f` in a forked child; returns what it returned, or describes how the child died.
pub(crate) fn in_forked_child<F>(f: F) -> Result<String, String>
where
    F: FnOnce() -> Result<String, String>,
{
    // A lazily initialised global that another test thread is initialising at the moment of
    // the fork stays locked forever in the child. The capability table is the one the forked
    // tests use: initialise it here, in the parent, first.
    crate::capabilities::all_known();
    let (read_end, write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe2: {e}"))?;
    // SAFETY: the child only runs `f` and writes to a pipe before `_exit`; it never returns into
    // the test harness. Test closures stick to syscalls and allocation, which glibc keeps usable
    // in a child of a multi-threaded parent.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(read_end);
            let outcome = catch_unwind(AssertUnwindSafe(f))
                .unwrap_or_else(|_| Err("child panicked".to_string()));
            let message = match outcome {
                Ok(out) => format!("ok:{out}"),
                Err(err) => format!("err:{err}"),
            };
            let mut pipe = std::fs::File::from(write_end);
            let code = i32::from(pipe.write_all(message.as_bytes()).is_err());
            drop(pipe);
            // SAFETY: _exit ends the child without running the parent's atexit handlers or
            // destructors, which belong to the parent.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(write_end);
            // A child stuck on a lock some other thread held at the fork would hang the whole
            // test run: give up on it after two minutes, as a failure that says so.
            let mut fds = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&read_end),
                nix::poll::PollFlags::POLLIN,
            )];
            let ready = nix::poll::poll(
                &mut fds,
                nix::poll::PollTimeout::try_from(std::time::Duration::from_secs(120))
                    .unwrap_or(nix::poll::PollTimeout::MAX),
            );
            if matches!(ready, Ok(0)) {
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                let _ = waitpid(child, None);
                return Err("forked child hung for 120 s (a lock held at the fork?)".to_string());
            }
            let mut message = String::new();
            let read = std::fs::File::from(read_end).read_to_string(&mut message);
            let status = waitpid(child, None).map_err(|e| format!("waitpid: {e}"))?;
            read.map_err(|e| format!("read child pipe: {e}"))?;
            match status {
                WaitStatus::Exited(_, 0) => {}
                other => return Err(format!("child ended with {other:?}: {message}")),
            }
            if let Some(out) = message.strip_prefix("ok:") {
                Ok(out.to_string())
            } else if let Some(err) = message.strip_prefix("err:") {
                Err(err.to_string())
            } else {
                Err(format!("child sent no result: {message:?}"))
            }
        }
    }
}
