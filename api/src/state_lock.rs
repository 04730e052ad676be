//! One daemon per state directory: an exclusive `flock` on `<state>/bungeo.lock`, holding the
//! owner's pid so the refusal can name it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::errors::{Error, Result};

/// File name of the lock inside the state directory.
pub const LOCK_FILE: &str = "bungeo.lock";

/// The held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct StateLock {
    path: PathBuf,
    file: Flock<File>,
}

impl StateLock {
    /// Takes the lock on `state`, or fails with `AlreadyRunning` naming the holder's pid.
    pub fn acquire(state: &Path) -> Result<StateLock> {
        let path = state.join(LOCK_FILE);
        // Not truncated on open: a refused second instance must still read the holder's pid.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io("open lock file", &path, e))?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                return Err(Error::AlreadyRunning {
                    state: state.to_owned(),
                    pid: read_pid(&mut file).unwrap_or_else(|| "unknown".to_owned()),
                });
            }
            Err((_, errno)) => {
                return Err(Error::io("lock", &path, std::io::Error::from(errno)));
            }
        };
        write_pid(&mut file, std::process::id())
            .map_err(|e| Error::io("write pid to lock file", &path, e))?;
        Ok(StateLock { path, file })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Clears the pid and releases the lock.
    pub fn release(self) -> Result<()> {
        self.file
            .set_len(0)
            .map_err(|e| Error::io("clear lock file", &self.path, e))?;
        let path = self.path.clone();
        self.file
            .unlock()
            .map_err(|(_, errno)| Error::io("unlock", path, std::io::Error::from(errno)))?;
        Ok(())
    }
}

fn read_pid(file: &mut File) -> Option<String> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    let pid = text.trim();
    pid.parse::<u32>().ok().map(|_| pid.to_owned())
}

fn write_pid(file: &mut File, pid: u32) -> std::io::Result<()> {
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    writeln!(file, "{pid}")?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_the_same_state_dir_is_refused_with_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path()).unwrap();
        let pid = std::fs::read_to_string(first.path()).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());

        // flock conflicts between open file descriptions even within one process.
        let err = StateLock::acquire(dir.path()).unwrap_err();
        let expected = format!(
            "another bungeo is already running with state dir {} (pid {})",
            dir.path().display(),
            std::process::id()
        );
        assert_eq!(err.to_string(), expected);

        first.release().unwrap();
        let again = StateLock::acquire(dir.path()).unwrap();
        drop(again);
    }

    #[test]
    fn a_stale_lock_file_from_a_dead_daemon_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOCK_FILE), "999999999\n").unwrap();
        let lock = StateLock::acquire(dir.path()).unwrap();
        let pid = std::fs::read_to_string(lock.path()).unwrap();
        assert_eq!(pid, format!("{}\n", std::process::id()));
    }

    #[test]
    fn unreadable_pid_is_reported_as_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE);
        std::fs::write(&path, "garbage").unwrap();
        let holder =
            Flock::lock(File::open(&path).unwrap(), FlockArg::LockExclusiveNonblock).unwrap();
        let err = StateLock::acquire(dir.path()).unwrap_err();
        assert!(err.to_string().ends_with("(pid unknown)"), "{err}");
        drop(holder);
    }
}
