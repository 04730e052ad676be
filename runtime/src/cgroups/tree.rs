//! The directories of one cgroup: creating them (with what v1 cpuset and v2 controller
//! delegation need first), moving a process in, listing processes, removing them.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

pub(crate) const PROCS: &str = "cgroup.procs";

/// How long removal retries a cgroup that is still busy (its last processes are exiting).
const REMOVE_TIMEOUT: Duration = Duration::from_secs(2);

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))
}

fn write(path: &Path, value: &str) -> Result<()> {
    // cgroup files take one value per write(2); no truncation or creation.
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| Error::Cgroups(format!("write {value:?} to {}: {e}", path.display())))
}

/// Creates `root/rel` with its missing parents.
pub(crate) fn create(root: &Path, rel: &Path) -> Result<PathBuf> {
    let dir = root.join(rel);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create cgroup", &dir, e))?;
    Ok(dir)
}

/// A new v1 cpuset cgroup starts with empty cpus and mems, and moving a task into it fails
/// with ENOSPC: copy them down from the nearest ancestor that has them.
pub(crate) fn inherit_cpuset(root: &Path, rel: &Path) -> Result<()> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let mut dir = root.to_path_buf();
        let mut value = read(&dir.join(file))?.trim().to_string();
        for component in rel.components() {
            dir.push(component);
            let path = dir.join(file);
            let own = read(&path)?.trim().to_string();
            if own.is_empty() {
                if value.is_empty() {
                    return Err(Error::Cgroups(format!(
                        "{} is empty and no ancestor has a value to inherit",
                        path.display()
                    )));
                }
                write(&path, &value)?;
            } else {
                value = own;
            }
        }
    }
    Ok(())
}

/// Enables `controllers` for the children of every ancestor of `root/rel` (root included, the
/// leaf excluded: a v2 cgroup with processes cannot delegate controllers), creating the
/// directories on the way. A controller that cannot be enabled is left out; a limit needing
/// it then fails when applied, naming the missing file.
pub(crate) fn create_delegated(root: &Path, rel: &Path, controllers: &[String]) -> Result<PathBuf> {
    let mut dir = root.to_path_buf();
    for component in rel.components() {
        let control = dir.join("cgroup.subtree_control");
        // A write waits for the kernel to finish tearing down recently removed cgroups below
        // (an RCU grace period after each removal): only write what is not enabled yet.
        let enabled = std::fs::read_to_string(&control).unwrap_or_default();
        for controller in controllers {
            if enabled.split_whitespace().any(|c| c == controller) {
                continue;
            }
            if let Err(e) = write(&control, &format!("+{controller}")) {
                tracing::debug!(error = %e, "cgroup controller not delegated");
            }
        }
        dir.push(component);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io("create cgroup", &dir, e)),
        }
    }
    Ok(dir)
}

/// Moves process `pid` into the cgroup at `dir`.
pub(crate) fn add_pid(dir: &Path, pid: i32) -> Result<()> {
    write(&dir.join(PROCS), &pid.to_string())
}

/// The processes in the cgroup at `dir` and in every cgroup below it, sorted.
pub(crate) fn pids(dir: &Path) -> Result<Vec<i32>> {
    let mut out = Vec::new();
    collect_pids(dir, &mut out)?;
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn collect_pids(dir: &Path, out: &mut Vec<i32>) -> Result<()> {
    let procs = dir.join(PROCS);
    let text = match std::fs::read_to_string(&procs) {
        Ok(text) => text,
        // A child cgroup removed while walking is simply gone.
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("read", procs, e)),
    };
    for line in text.lines().filter(|l| !l.is_empty()) {
        let pid = line.trim().parse().map_err(|_| {
            Error::Cgroups(format!("{} holds {line:?}, not a pid", procs.display()))
        })?;
        out.push(pid);
    }
    for child in subdirs(dir)? {
        collect_pids(&child, out)?;
    }
    Ok(())
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list cgroup", dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list cgroup", dir, e))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// Removes the cgroup at `dir` and every cgroup below it, deepest first. A cgroup whose last
/// processes are still exiting is busy for a moment: retried until [`REMOVE_TIMEOUT`]. A
/// missing directory is fine, so removal can be repeated.
pub(crate) fn remove(dir: &Path) -> Result<()> {
    // Usually there is nothing below and nobody inside: try before listing the directory.
    match std::fs::remove_dir(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    for child in subdirs(dir)? {
        remove(&child)?;
    }
    let deadline = Instant::now() + REMOVE_TIMEOUT;
    let mut delay = Duration::from_millis(5);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(100));
            }
            Err(e) => {
                let left = pids(dir).unwrap_or_default();
                return Err(Error::Cgroups(format!(
                    "remove {}: {e}{}",
                    dir.display(),
                    if left.is_empty() {
                        String::new()
                    } else {
                        format!(" (processes still inside: {left:?})")
                    }
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inherits_cpuset_from_the_nearest_ancestor() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        std::fs::write(root.join("cpuset.cpus"), "0-3\n").expect("write");
        std::fs::write(root.join("cpuset.mems"), "0\n").expect("write");
        let rel = Path::new("a/b");
        for dir in [root.join("a"), root.join("a/b")] {
            std::fs::create_dir(&dir).expect("dir");
            std::fs::write(dir.join("cpuset.cpus"), "").expect("write");
            std::fs::write(dir.join("cpuset.mems"), "").expect("write");
        }
        std::fs::write(root.join("a/cpuset.cpus"), "1\n").expect("write");
        inherit_cpuset(root, rel).expect("inherit");
        assert_eq!(read(&root.join("a/b/cpuset.cpus")).expect("read"), "1");
        assert_eq!(read(&root.join("a/b/cpuset.mems")).expect("read"), "0");
        assert_eq!(read(&root.join("a/cpuset.mems")).expect("read"), "0");
    }

    #[test]
    fn lists_pids_recursively_and_removes_deepest_first() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("ctr");
        std::fs::create_dir_all(dir.join("sub/deeper")).expect("dirs");
        std::fs::write(dir.join(PROCS), "30\n10\n").expect("write");
        std::fs::write(dir.join("sub").join(PROCS), "20\n10\n").expect("write");
        assert_eq!(pids(&dir).expect("pids"), [10, 20, 30]);
        std::fs::write(dir.join("sub").join(PROCS), "x\n").expect("write");
        assert!(pids(&dir).expect_err("garbage").to_string().contains("sub"));

        // A plain directory only empties once its files are gone; cgroupfs has no such rule,
        // so mimic it with an empty tree.
        for d in [dir.join("sub/deeper"), dir.join("sub"), dir.clone()] {
            std::fs::remove_file(d.join(PROCS)).ok();
        }
        remove(&dir).expect("remove");
        assert!(!dir.exists());
        remove(&dir).expect("removing twice is fine");
    }

    #[test]
    fn delegation_writes_every_ancestor_but_the_leaf() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        std::fs::write(root.join("cgroup.subtree_control"), "").expect("write");
        // The middle level gets its control file only once created, so its write is refused
        // here and must not stop the creation.
        let leaf =
            create_delegated(root, Path::new("a/b"), &["hugetlb".to_string()]).expect("create");
        assert_eq!(leaf, root.join("a/b"));
        assert!(leaf.is_dir());
        assert_eq!(
            read(&root.join("cgroup.subtree_control")).expect("read"),
            "+hugetlb"
        );
        assert!(!leaf.join("cgroup.subtree_control").exists());
    }
}
