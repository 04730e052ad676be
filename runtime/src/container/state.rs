//! A container's record on disk, `<state_root>/<id>/state.json`, and the status computed from
//! the live process: the recorded pid must exist, not be a zombie, and have the recorded start
//! time (a different start time means the pid was reused by another process).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxSeccomp, Process};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// File name of the record in the container's state dir.
pub const STATE_FILE: &str = "state.json";
/// File name of the start barrier in the container's state dir.
pub const EXEC_FIFO: &str = "exec.fifo";

/// A container's lifecycle status, as OCI `state` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Set up and waiting at the start barrier.
    Created,
    /// Started (the user's process runs).
    Running,
    /// Frozen through its cgroup.
    Paused,
    /// The init process is gone.
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// What is recorded about a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub oci_version: String,
    pub id: String,
    /// Host pid of the container's init.
    pub init_pid: i32,
    /// Field 22 of `/proc/<pid>/stat` when the init was created (clock ticks since boot).
    pub init_start_time: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// RFC 3339 creation time (UTC, nanoseconds).
    pub created: String,
    /// The cgroups path the container was created with (after defaulting).
    pub cgroups_path: String,
    pub systemd_cgroup: bool,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// The spec's process, the base of `exec` processes given on the command line.
    #[serde(default)]
    pub process: Option<Process>,
    /// The spec's seccomp filter, applied to exec'd processes too.
    #[serde(default)]
    pub seccomp: Option<LinuxSeccomp>,
    /// Set by `pause`, cleared by `resume`.
    #[serde(default)]
    pub paused: bool,
    /// Owner shown by `list` (empty: the runtime's own user, root).
    #[serde(default)]
    pub owner: String,
}

impl State {
    /// Reads `<dir>/state.json`.
    pub fn load(dir: &Path) -> Result<State> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
        serde_json::from_slice(&text).map_err(|e| {
            Error::InvalidArgument(format!("corrupt container state {}: {e}", path.display()))
        })
    }

    /// Writes `<dir>/state.json` atomically (temp file, rename), so a reader sees the old
    /// record or the new one, never a part.
    ///
    /// Not fsync'd, like runc's: the record describes processes, namespaces and cgroups that
    /// do not outlive the kernel, so after a crash of the node there is nothing left for it to
    /// describe (a record the crash truncated is removed by `delete --force`), and a crash of
    /// this process cannot lose what the page cache holds. An fsync costs about half a
    /// millisecond per save when the state root is on a disk, a tenth of a whole `create`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(STATE_FILE);
        let tmp = dir.join(".state.json.tmp");
        let data = serde_json::to_vec(self)
            .map_err(|e| Error::InvalidArgument(format!("encode container state: {e}")))?;
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        f.write_all(&data)
            .map_err(|e| Error::io("write", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io("rename", &path, e))
    }

    /// The status from the live process and the barrier fifo in `dir`.
    pub fn status(&self, dir: &Path) -> Status {
        if !process_alive(self.init_pid, self.init_start_time) {
            return Status::Stopped;
        }
        if dir.join(EXEC_FIFO).exists() {
            return Status::Created;
        }
        if self.paused {
            return Status::Paused;
        }
        Status::Running
    }
}

/// The OCI runtime spec's state object, as `state` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    pub oci_version: String,
    pub id: String,
    pub status: Status,
    /// 0 once stopped, like runc.
    pub pid: i32,
    pub bundle: PathBuf,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
    /// Non-standard but printed by runc too; containerd-style callers read it.
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
}

/// State (field 3) and start time (field 22) from `/proc/<pid>/stat`.
pub fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command (field 2) is in parentheses and may itself hold spaces and ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Whether `pid` is a live (not zombie, not dead) process started at `start_time`.
pub fn process_alive(pid: i32, start_time: u64) -> bool {
    if pid <= 0 {
        return false;
    }
    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => {}
        Err(_) => return false,
    }
    match proc_stat(pid) {
        Some((state, start)) => start == start_time && state != 'Z' && state != 'X',
        None => false,
    }
}

/// Now as RFC 3339 in UTC with nanoseconds (`2024-05-01T12:00:00.123456789Z`).
pub fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_nanos())
}

/// Formats seconds since the epoch as RFC 3339 UTC (with nanoseconds when non-zero).
pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    if nanos == 0 {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
    } else {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{nanos:09}Z")
    }
}

/// Container ids are restricted like runc's: letters, digits, `_`, `+`, `-`, `.`; no `.`/`..`.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 1024
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid container id format: {id:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339(1_700_000_000, 0), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = std::process::id() as i32;
        let (state, start) = proc_stat(me).unwrap();
        assert!(matches!(state, 'R' | 'S'));
        assert!(process_alive(me, start));
        assert!(!process_alive(me, start + 1));
        assert!(!process_alive(0, 0));
    }

    #[test]
    fn ids_are_validated() {
        for ok in ["abc", "a.b_c-d+e", "0123"] {
            validate_id(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", "../x"] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn state_round_trips_and_status_follows_the_process_and_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id() as i32;
        let (_, start) = proc_stat(me).unwrap();
        let mut s = State {
            oci_version: "1.0.2".into(),
            id: "c1".into(),
            init_pid: me,
            init_start_time: start,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: now_rfc3339(),
            cgroups_path: "/c1".into(),
            systemd_cgroup: false,
            annotations: HashMap::new(),
            process: None,
            seccomp: None,
            paused: false,
            owner: String::new(),
        };
        s.save(dir.path()).unwrap();
        assert_eq!(State::load(dir.path()).unwrap(), s);
        assert_eq!(s.status(dir.path()), Status::Running);
        std::fs::write(dir.path().join(EXEC_FIFO), b"").unwrap();
        assert_eq!(s.status(dir.path()), Status::Created);
        s.init_start_time += 1;
        assert_eq!(s.status(dir.path()), Status::Stopped);
    }
}
