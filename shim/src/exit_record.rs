//! `<state dir>/exit.json`: how the container's init ended, written crash-safe before the
//! shim reports the exit to anyone, so a daemon that restarts after the shim is gone still
//! learns the exit code, the time and whether the OOM killer struck.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::{Error, Result, rfc3339};

/// The file name inside the shim's state dir.
pub const EXIT_FILE: &str = "exit.json";

/// How the container's init exited.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit code, or 128 + the signal number when a signal killed it.
    pub exit_code: i32,
    /// When the shim reaped it, RFC 3339 with nanoseconds.
    pub exited_at: String,
    /// Whether the container's memory cgroup saw an OOM kill while it ran.
    pub oom_killed: bool,
}

impl ExitRecord {
    /// A record for an exit at `at`.
    pub fn new(exit_code: i32, at: SystemTime, oom_killed: bool) -> Self {
        Self {
            exit_code,
            exited_at: rfc3339::format(at),
            oom_killed,
        }
    }

    /// `exited_at` as a time (None when the file holds something unparsable).
    pub fn exited_at_time(&self) -> Option<SystemTime> {
        rfc3339::parse(&self.exited_at)
    }
}

/// The path of the record in `state_dir`.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(EXIT_FILE)
}

/// Writes the record: temp file, fsync, rename over `exit.json`, fsync of the directory.
pub fn write(state_dir: &Path, record: &ExitRecord) -> Result<()> {
    let tmp = state_dir.join(".exit.json.tmp");
    let json = serde_json::to_vec(record).map_err(|e| {
        Error::io(
            "serialise exit record",
            &tmp,
            std::io::Error::other(e.to_string()),
        )
    })?;
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| Error::io("create", &tmp, e))?;
    f.write_all(&json)
        .map_err(|e| Error::io("write", &tmp, e))?;
    f.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
    drop(f);
    let dest = path(state_dir);
    std::fs::rename(&tmp, &dest).map_err(|e| Error::io("rename exit record to", &dest, e))?;
    File::open(state_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync", state_dir, e))
}

/// Reads the record; `None` when the container has not exited (no file).
pub fn read(state_dir: &Path) -> Result<Option<ExitRecord>> {
    let p = path(state_dir);
    let text = match std::fs::read(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read exit record", &p, e)),
    };
    serde_json::from_slice(&text).map(Some).map_err(|e| {
        Error::io(
            "parse exit record",
            &p,
            std::io::Error::other(e.to_string()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let at = UNIX_EPOCH + Duration::new(1_709_251_198, 123_456_789);
        let r = ExitRecord::new(137, at, true);
        write(dir.path(), &r).unwrap();
        let back = read(dir.path()).unwrap().unwrap();
        assert_eq!(back, r);
        assert_eq!(back.exited_at_time(), Some(at));
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path(dir.path())).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "exit_code": 137,
                "exited_at": "2024-02-29T23:59:58.123456789Z",
                "oom_killed": true
            })
        );
        // A second exit record replaces the first and leaves no temp file behind.
        write(dir.path(), &ExitRecord::new(0, at, false)).unwrap();
        assert_eq!(read(dir.path()).unwrap().unwrap().exit_code, 0);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [EXIT_FILE]);
    }

    #[test]
    fn a_damaged_record_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), b"{\"exit_code\":").unwrap();
        let e = read(dir.path()).unwrap_err().to_string();
        assert!(e.starts_with("parse exit record "), "{e}");
        assert!(e.contains("exit.json"), "{e}");
    }
}
