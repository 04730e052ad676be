//! Processes and cgroups a daemon under test may leave behind. Shims detach from their daemon
//! and outlive it on purpose, and containers are the shims' children: a test that fails
//! half-way, or a daemon stopped with containers running, must not leave them on the machine.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Every process's parent, from `/proc/<pid>/stat`.
fn parents() -> HashMap<i32, i32> {
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The command name may hold spaces and parentheses: fields start after the last ')'.
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
            .and_then(|s| s.parse::<i32>().ok());
        if let Some(ppid) = ppid {
            out.insert(pid, ppid);
        }
    }
    out
}

/// Processes with a command-line argument naming a path at or below `dir` (the shims of a
/// daemon started in `dir` name their sockets there), excluding this process.
pub fn processes_mentioning(dir: &Path) -> Vec<i32> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for pid in parents().into_keys() {
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let mentions = cmdline.split(|b| *b == 0).any(|arg| {
            let arg = String::from_utf8_lossy(arg);
            arg.starts_with(&needle) || arg.contains(&format!("={needle}"))
        });
        if mentions {
            out.push(pid);
        }
    }
    out
}

/// `roots` and every process below them.
pub fn with_descendants(roots: &[i32]) -> BTreeSet<i32> {
    let parents = parents();
    let mut found: BTreeSet<i32> = roots.iter().copied().collect();
    loop {
        let before = found.len();
        for (pid, ppid) in &parents {
            if found.contains(ppid) {
                found.insert(*pid);
            }
        }
        if found.len() == before {
            return found;
        }
    }
}

/// Kills (SIGKILL) every process mentioning a path below `dir` and all their descendants;
/// how many there were.
pub fn kill_processes_under(dir: &Path) -> usize {
    let pids = with_descendants(&processes_mentioning(dir));
    for pid in &pids {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    pids.len()
}

/// Every cgroup hierarchy of the node: the v1 controllers and the cgroup2 mount.
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.join("cgroup.procs").exists())
                .collect()
        })
        .unwrap_or_default();
    if Path::new("/sys/fs/cgroup/cgroup.procs").exists() {
        found.push(PathBuf::from("/sys/fs/cgroup"));
    }
    found
}

/// Removes the cgroup `rel` (a path like `/bungeo-e2e/x`) from every hierarchy, depth first,
/// killing what still runs in it; a cgroup another user still holds is left.
pub fn remove_cgroup_tree(rel: &str) {
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        return;
    }
    for hierarchy in cgroup_hierarchies() {
        remove_tree(&hierarchy.join(rel));
    }
}

fn remove_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) if Instant::now() > deadline => return,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_kills_a_process_naming_a_directory_and_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("marker");
        let mut child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg("sleep 600 & wait")
            .arg(&marker)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let deadline = Instant::now() + Duration::from_secs(10);
        while with_descendants(&[pid]).len() < 2 {
            assert!(Instant::now() < deadline, "sleep never started");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(processes_mentioning(dir.path()), vec![pid]);
        let family = with_descendants(&[pid]);
        assert_eq!(kill_processes_under(dir.path()), 2);
        child.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        for p in family {
            while Path::new(&format!("/proc/{p}")).exists()
                && std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .is_ok_and(|s| !s.contains(") Z"))
            {
                assert!(Instant::now() < deadline, "{p} survived");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
