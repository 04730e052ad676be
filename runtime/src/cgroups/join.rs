//! A child process joining its container's cgroup by itself, so that no process is ever moved
//! by another one.
//!
//! Writing another process's pid to `cgroup.procs` takes the kernel's global
//! `cgroup_threadgroup_rwsem` for writing, and taking it from idle waits for an RCU grace
//! period: several milliseconds on a quiet node, far more on a busy one, and on the critical
//! path of every `create`. Two ways around it:
//!
//! - cgroup v1: a single-threaded process that writes `0` to a hierarchy's `tasks` file moves
//!   its only thread, so the whole process, and the kernel skips that lock for a thread moving
//!   itself (nothing else can change its thread group meanwhile).
//! - cgroup v2: `clone3(CLONE_INTO_CGROUP)` starts the child in its cgroup, so nothing moves.
//!   Where that cannot be used (an older kernel, or a user or cgroup namespace in between that
//!   takes away the permission), the child writes `0` to `cgroup.procs` itself, which costs
//!   what a move always cost.
//!
//! The parent opens every file: v1 and v2 both check a write against the credentials of the
//! file's opener, so the child may already be in a user namespace when it writes.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode;

use super::tree::PROCS;
use crate::error::{Error, Result};

/// The per-thread membership file of a cgroup v1 directory.
const TASKS: &str = "tasks";

/// Files that let a single-threaded child put itself into one cgroup (see the module docs).
#[derive(Debug)]
pub(crate) struct CgroupJoin {
    /// `tasks` in each v1 hierarchy's directory of the cgroup, open for writing.
    v1_tasks: Vec<(PathBuf, OwnedFd)>,
    /// The cgroup's directory in the v2 hierarchy, if the node has one.
    v2: Option<V2Join>,
}

#[derive(Debug)]
struct V2Join {
    path: PathBuf,
    /// The directory itself, for `CLONE_INTO_CGROUP`.
    dir: OwnedFd,
    /// Its `cgroup.procs`, open for writing, for when the clone cannot target the directory.
    procs: OwnedFd,
}

fn open_file(path: &Path, flags: OFlag) -> Result<OwnedFd> {
    open(path, flags | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| Error::sys(format!("open {}", path.display()), e))
}

/// Writes `0` ("the caller") to an open cgroup membership file.
fn write_self(fd: BorrowedFd<'_>) -> std::result::Result<(), Errno> {
    loop {
        // SAFETY: write(2) of one byte from a static buffer to an fd the caller owns.
        let r = unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) };
        if r >= 0 {
            return Ok(());
        }
        match Errno::last() {
            Errno::EINTR => continue,
            e => return Err(e),
        }
    }
}

impl CgroupJoin {
    /// Opens the files for the cgroup whose v1 directories are `v1_dirs` and whose v2
    /// directory (on a v2 or hybrid node) is `v2_dir`.
    pub(crate) fn open(v1_dirs: &[PathBuf], v2_dir: Option<&Path>) -> Result<CgroupJoin> {
        let v1_tasks = v1_dirs
            .iter()
            .map(|d| {
                let path = d.join(TASKS);
                open_file(&path, OFlag::O_WRONLY).map(|fd| (path, fd))
            })
            .collect::<Result<Vec<_>>>()?;
        let v2 = v2_dir
            .map(|d| -> Result<V2Join> {
                Ok(V2Join {
                    path: d.to_path_buf(),
                    dir: open_file(d, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?,
                    procs: open_file(&d.join(PROCS), OFlag::O_WRONLY)?,
                })
            })
            .transpose()?;
        Ok(CgroupJoin { v1_tasks, v2 })
    }

    /// Moves the calling process into the cgroup's v1 hierarchies, and into its v2 one too
    /// unless `v2_at_clone` (the caller will clone its child into it instead). The caller
    /// must be single-threaded: a v1 `tasks` write moves one thread only.
    pub(crate) fn join_self(&self, v2_at_clone: bool) -> std::result::Result<(), String> {
        for (path, fd) in &self.v1_tasks {
            write_self(fd.as_fd())
                .map_err(|e| format!("join cgroup {}: {}", path.display(), e.desc()))?;
        }
        if !v2_at_clone {
            self.join_v2_self()?;
        }
        Ok(())
    }

    /// Moves the calling process into the cgroup's v2 hierarchy (the slow way, see the module
    /// docs); nothing to do on a v1-only node.
    pub(crate) fn join_v2_self(&self) -> std::result::Result<(), String> {
        match &self.v2 {
            Some(v2) => write_self(v2.procs.as_fd()).map_err(|e| {
                format!(
                    "join cgroup {}: {}",
                    v2.path.join(PROCS).display(),
                    e.desc()
                )
            }),
            None => Ok(()),
        }
    }

    /// The fds [`join_self`](Self::join_self) writes to: every v1 `tasks` file and the v2
    /// `cgroup.procs`, not the v2 directory (a child keeps these open only until it joined).
    pub(crate) fn membership_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.v1_tasks
            .iter()
            .map(|(_, fd)| fd.as_raw_fd())
            .chain(self.v2.as_ref().map(|v| v.procs.as_raw_fd()))
            .collect()
    }

    /// The v2 directory to clone a child into, when the node has a v2 hierarchy.
    pub(crate) fn v2_dir(&self) -> Option<BorrowedFd<'_>> {
        self.v2.as_ref().map(|v| v.dir.as_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain directory stands in for a cgroup: the files are ordinary files, so what a join
    /// writes can be read back.
    #[test]
    fn opens_every_file_and_writes_zero_where_asked() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let v1: Vec<PathBuf> = ["cpu", "memory"]
            .iter()
            .map(|c| {
                let d = tmp.path().join(c);
                std::fs::create_dir(&d).expect("dir");
                std::fs::write(d.join(TASKS), "").expect("tasks");
                d
            })
            .collect();
        let v2 = tmp.path().join("unified");
        std::fs::create_dir(&v2).expect("dir");
        std::fs::write(v2.join(PROCS), "").expect("procs");

        let join = CgroupJoin::open(&v1, Some(&v2)).expect("open");
        assert!(join.v2_dir().is_some());
        let members = join.membership_fds();
        assert_eq!(members.len(), 3);
        let dir = join.v2_dir().map(|d| d.as_raw_fd());
        assert!(
            dir.is_some_and(|d| !members.contains(&d)),
            "the v2 directory is not kept"
        );
        join.join_self(true).expect("join");
        for d in &v1 {
            assert_eq!(std::fs::read_to_string(d.join(TASKS)).expect("read"), "0");
        }
        assert_eq!(std::fs::read_to_string(v2.join(PROCS)).expect("read"), "");
        join.join_v2_self().expect("join v2");
        assert_eq!(std::fs::read_to_string(v2.join(PROCS)).expect("read"), "0");
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let err = CgroupJoin::open(&[tmp.path().join("nope")], None).expect_err("missing");
        assert!(err.to_string().contains("nope/tasks"), "{err}");
        let join = CgroupJoin::open(&[], None).expect("nothing to open");
        assert!(join.v2_dir().is_none());
        join.join_self(false).expect("nothing to join");
    }
}
