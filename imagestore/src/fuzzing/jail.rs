//! A thread of its own for the unpack fuzz target, in a private mount namespace where every
//! mount is read-only except a fresh tmpfs over the temp dir, which holds nothing but the
//! sentinel tree: a write outside the layer either fails (EROFS) or lands in the tmpfs, where
//! the sentinel check sees it. Needs root (CAP_SYS_ADMIN); the fuzz run in CI is root.
//!
//! Only this thread is in the namespace (unshare acts on the calling thread), so libFuzzer's
//! own thread still writes its corpus and crash files to the real filesystem: the jail blocks
//! the signals libFuzzer handles (its handlers then run on another thread), and a panic in
//! the jail is caught and raised again by the caller.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Mutex, OnceLock};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

/// The jail thread's name; the panic hook lets its panics unwind to the catch.
const THREAD: &str = "bungeo-fuzz-jail";

type Job = Box<dyn FnOnce(&Path) + Send>;

/// A running jail thread.
pub struct Jail {
    jobs: Mutex<Sender<Job>>,
}

/// The process's jail, started on first use; `Err` says why there is none.
pub fn shared() -> &'static Result<Jail, String> {
    static JAIL: OnceLock<Result<Jail, String>> = OnceLock::new();
    JAIL.get_or_init(Jail::start)
}

impl Jail {
    fn start() -> Result<Jail, String> {
        let (jobs, rx) = channel::<Job>();
        let (ready_tx, ready) = channel::<Result<(), String>>();
        quiet_panics_in_the_jail();
        std::thread::Builder::new()
            .name(THREAD.to_string())
            .spawn(move || match enter() {
                Ok(dir) => {
                    let _ = ready_tx.send(Ok(()));
                    serve(&dir, rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| format!("spawn the jail thread: {e}"))?;
        ready
            .recv()
            .map_err(|_| "the jail thread died".to_string())??;
        Ok(Jail {
            jobs: Mutex::new(jobs),
        })
    }

    /// Runs `f` in the jail with the tmpfs directory (empty) and returns its result, or the
    /// message of its panic. The tmpfs is emptied afterwards.
    pub fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Path) -> R + Send + 'static,
    ) -> Result<R, String> {
        let (tx, rx) = channel();
        let job: Job = Box::new(move |dir| {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(dir)));
            empty(dir);
            let _ = tx.send(r.map_err(|p| panic_message(p.as_ref())));
        });
        self.jobs
            .lock()
            .map_err(|_| "the jail's queue is poisoned".to_string())?
            .send(job)
            .map_err(|_| "the jail thread is gone".to_string())?;
        rx.recv()
            .map_err(|_| "the jail thread is gone".to_string())?
    }
}

fn serve(dir: &Path, rx: Receiver<Job>) {
    for job in rx {
        job(dir);
    }
}

/// Enters the private namespace: every mount read-only, a tmpfs over the temp dir.
fn enter() -> Result<PathBuf, String> {
    let mut signals = SigSet::empty();
    for s in [
        Signal::SIGALRM,
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGXFSZ,
    ] {
        signals.add(s);
    }
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&signals), None)
        .map_err(|e| format!("block signals: {e}"))?;
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_FS)
        .map_err(|e| format!("unshare(CLONE_NEWNS): {e}"))?;
    // Nothing mounted here may propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("make / private: {e}"))?;
    read_only_recursively(Path::new("/"))?;
    let dir = std::env::temp_dir();
    mount(
        Some("tmpfs"),
        &dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("size=512m,mode=0700"),
    )
    .map_err(|e| format!("mount a tmpfs on {}: {e}", dir.display()))?;
    Ok(dir)
}

/// mount_setattr(2) with AT_RECURSIVE and MOUNT_ATTR_RDONLY on `path`.
fn read_only_recursively(path: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    let mut attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `c` is NUL-terminated, `attr` is a valid mount_attr whose size is passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_RECURSIVE,
            &mut attr as *mut libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r != 0 {
        return Err(format!(
            "mount_setattr({}, read-only, recursive): {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Removes everything in `dir`, including what a layer left without write permission.
fn empty(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                super::remove_tree(&path);
            } else {
                std::fs::remove_file(&path).ok();
            }
        }
    }
}

/// Lets a panic in the jail unwind to its catch: the fuzz harness's hook would abort the
/// process on the jail's thread, whose crash file would then land in the read-only namespace.
fn quiet_panics_in_the_jail() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some(THREAD) {
            eprintln!("in the unpack jail: {info}");
        } else {
            previous(info);
        }
    }));
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root only: inside, the real filesystem refuses writes and the temp dir is a private
    /// tmpfs; outside, nothing of it shows.
    #[test]
    fn the_jail_is_read_only_but_for_a_private_tmpfs() {
        if !nix::unistd::geteuid().is_root() {
            crate::test_skip::skip("root", "unshares a mount namespace");
            return;
        }
        let jail = shared().as_ref().expect("jail");
        let marker = format!("bungeo-jail-test-{}", std::process::id());
        let m = marker.clone();
        let (etc, tmp, listed) = jail
            .run(move |dir| {
                let etc =
                    std::fs::write(Path::new("/etc").join(&m), b"x").map_err(|e| e.raw_os_error());
                let tmp = std::fs::write(dir.join(&m), b"x").map(|_| ());
                let listed = std::fs::read_dir(dir).map(|rd| rd.count()).unwrap_or(0);
                (etc, tmp, listed)
            })
            .expect("run");
        assert_eq!(etc, Err(Some(libc::EROFS)));
        assert!(tmp.is_ok(), "{tmp:?}");
        assert_eq!(
            listed, 1,
            "the jail's temp dir held more than what the job made"
        );
        assert!(!Path::new("/etc").join(&marker).exists());
        assert!(!std::env::temp_dir().join(&marker).exists());
        // The tmpfs is emptied between jobs, and a panic comes back as an error.
        let left = jail
            .run(|dir| std::fs::read_dir(dir).map(|rd| rd.count()).unwrap_or(99))
            .expect("run");
        assert_eq!(left, 0);
        let err = jail.run(|_| panic!("boom")).unwrap_err();
        assert_eq!(err, "boom");
    }
}
