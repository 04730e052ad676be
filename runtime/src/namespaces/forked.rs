//! Test support: run a closure in a forked child and get its result back over a pipe, for tests
//! that change process-wide or irreversible state (capabilities, seccomp, rlimits, setns), and
//! write the executables tests run from such a child.

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

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

/// Copies `from` to the executable `to` from a forked child; see [`write_executable`].
pub(crate) fn copy_executable(from: &Path, to: &Path) -> Result<(), String> {
    write_in_child(to, |f| {
        std::io::copy(&mut std::fs::File::open(from)?, f).map(drop)
    })
    .map_err(|e| format!("copy {} to {e}", from.display()))
}

/// Writes `contents` to the executable `to` from a forked child.
///
/// Test threads fork all the time (a container's init, an exec'd process, a CNI plugin), and
/// a child holds every descriptor the test process had open at the fork until it execs or
/// exits: a container's init holds them until its test starts it. While any process holds
/// the file open for writing, every execve of it fails with ETXTBSY, so an executable written
/// by a test thread could not run whenever another thread forked during the write. Written by
/// a child of its own, the file is open for writing in that child only, which forks nothing.
pub(crate) fn write_executable(to: &Path, contents: &[u8]) -> Result<(), String> {
    write_in_child(to, |f| f.write_all(contents))
}

/// Creates or truncates `to` with mode 0755 in a forked child and lets `fill` write it there.
fn write_in_child(
    to: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<(), String> {
    in_forked_child(|| {
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o755)
                .open(to)?;
            fill(&mut f)?;
            // The mode given to open is masked by the umask.
            f.set_permissions(std::fs::Permissions::from_mode(0o755))
        };
        write()
            .map(|()| String::new())
            .map_err(|e| format!("{}: {e}", to.display()))
    })
    .map(drop)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::Path;
    use std::time::{Duration, Instant};

    use nix::sys::signal::{Signal, kill};
    use nix::sys::wait::waitpid;
    use nix::unistd::{ForkResult, fork};

    use super::copy_executable;

    /// A child forked while the copy is under way, which lives on (as a container's init does
    /// until it is started), leaves the copy runnable: the write happens in another process.
    #[test]
    fn an_executable_copied_while_a_long_lived_child_is_forked_still_runs() {
        let dir = tempfile::tempdir().unwrap();
        // The copy reads from a fifo, so it is held open half-way, its target created and
        // open for writing, until this test feeds it.
        let src = dir.path().join("src");
        nix::unistd::mkfifo(&src, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let dst = dir.path().join("sh");
        let copier = {
            let (src, dst) = (src.clone(), dst.clone());
            std::thread::spawn(move || copy_executable(&src, &dst))
        };
        // The copier's open of the fifo for reading waits for this writer.
        let deadline = Instant::now() + Duration::from_secs(30);
        let feed = loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(&src)
            {
                Ok(f) => break f,
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                    assert!(
                        Instant::now() < deadline,
                        "the copy never opened its source"
                    );
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => panic!("open the fifo: {e}"),
            }
        };
        nix::fcntl::fcntl(
            &feed,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
        )
        .unwrap();
        // The target exists once the copy has opened it for writing (O_CREAT).
        while !dst.exists() {
            assert!(
                Instant::now() < deadline,
                "the copy never created its target"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        // The holder keeps what this process has open on the target (as a container's init
        // forked now would) and nothing else: other descriptors, such as the pipe the copier
        // waits on for its child's result, would keep the copier from finishing.
        let keep = fds_open_on(&dst.canonicalize().unwrap());
        // SAFETY: the child only makes syscalls (close_range, pause) until the parent kills it.
        let holder = match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                close_all_but(&keep);
                loop {
                    // SAFETY: pause sleeps until the parent's SIGKILL.
                    unsafe { libc::pause() };
                }
            }
            ForkResult::Parent { child } => child,
        };
        let body = std::fs::read("/bin/sh").unwrap();
        let fed = std::io::Write::write_all(&mut &feed, &body);
        drop(feed);
        let copied = copier.join().unwrap();
        let ran = std::process::Command::new(&dst)
            .args(["-c", "exit 7"])
            .status();
        kill(holder, Signal::SIGKILL).unwrap();
        waitpid(holder, None).unwrap();
        fed.unwrap();
        copied.unwrap();
        assert_eq!(
            ran.map(|s| s.code()).map_err(|e| e.to_string()),
            Ok(Some(7))
        );
    }

    /// This process's descriptors open on `path`.
    fn fds_open_on(path: &Path) -> Vec<i32> {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l == path))
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect()
    }

    /// Closes every descriptor from 3 up except `keep` (async-signal-safe: close_range).
    fn close_all_but(keep: &[i32]) {
        let mut keep: Vec<u32> = keep.iter().map(|&k| k as u32).collect();
        keep.sort_unstable();
        let mut from = 3u32;
        for k in keep.into_iter().chain([u32::MAX]) {
            if k > from {
                // SAFETY: close_range only closes descriptors of this (forked) process.
                unsafe { libc::syscall(libc::SYS_close_range, from, k - 1, 0) };
            }
            from = k.saturating_add(1);
        }
    }
}
