//! Plugins a killed daemon left running. A plugin runs in a process group of its own and
//! outlives the daemon that started it: an ADD cut short by a crash may still finish after
//! the next start has sent its DEL, and would then leave an IP allocation and NAT rules for a
//! pod that no longer exists. Before cleaning up a half-created pod, its plugins (found by
//! `CNI_CONTAINERID` in their environment, which their own children inherit) are killed.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, getpgid};
use tracing::warn;

/// How long killed plugins may take to be gone.
const GONE_WAIT: Duration = Duration::from_secs(5);

/// Whether a process environment (NUL-separated `KEY=value`) is a plugin call for `id`.
fn is_plugin_of(environ: &[u8], id: &str) -> bool {
    let wanted = format!("CNI_CONTAINERID={id}");
    let mut container = false;
    let mut command = false;
    for var in environ.split(|&b| b == 0) {
        container |= var == wanted.as_bytes();
        command |= var.starts_with(b"CNI_COMMAND=");
    }
    container && command
}

/// The processes under `proc` whose environment names a plugin call for `id`.
fn plugins_of(proc: &Path, id: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(proc) else {
        return Vec::new();
    };
    let own = std::process::id() as i32;
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != own)
        .filter(|pid| {
            // A process that is gone, or a kernel thread, has no readable environment.
            std::fs::read(proc.join(pid.to_string()).join("environ"))
                .is_ok_and(|environ| is_plugin_of(&environ, id))
        })
        .collect()
}

/// Kills every plugin process still running for the pod `id` (and the process groups they
/// lead), and waits until they are gone. Returns how many were found.
pub fn kill_orphan_plugins(id: &str) -> usize {
    let proc = Path::new("/proc");
    let found = plugins_of(proc, id);
    for &pid in &found {
        let target = Pid::from_raw(pid);
        // A plugin leads its own group (see exec.rs); its children are in it.
        let _ = match getpgid(Some(target)) {
            Ok(group) if group == target => killpg(group, Signal::SIGKILL),
            _ => kill(target, Signal::SIGKILL),
        };
    }
    let deadline = Instant::now() + GONE_WAIT;
    while !found.is_empty() && !plugins_of(proc, id).is_empty() {
        if Instant::now() >= deadline {
            warn!(pod_id = %id, "CNI plugin processes of the pod did not go away after SIGKILL");
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    found.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    #[test]
    fn environments_match_only_plugin_calls_for_the_id() {
        let id = "abc";
        assert!(is_plugin_of(
            b"PATH=/bin\0CNI_COMMAND=ADD\0CNI_CONTAINERID=abc\0",
            id
        ));
        assert!(!is_plugin_of(
            b"CNI_COMMAND=ADD\0CNI_CONTAINERID=abcd\0",
            id
        ));
        assert!(!is_plugin_of(b"CNI_CONTAINERID=abc\0", id));
        assert!(!is_plugin_of(b"", id));
    }

    #[test]
    fn a_running_plugin_and_its_children_are_killed() {
        let id = format!("orphan-test-{}", std::process::id());
        let mut child = Command::new("sh")
            .args(["-c", "sleep 100 & wait"])
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", &id)
            .process_group(0)
            .spawn()
            .expect("spawn sh");
        // The shell and its sleep both carry the environment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while plugins_of(Path::new("/proc"), &id).len() < 2 {
            assert!(Instant::now() < deadline, "the fake plugin did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(kill_orphan_plugins(&id), 2);
        let _ = child.wait();
        assert!(plugins_of(Path::new("/proc"), &id).is_empty());
        assert_eq!(kill_orphan_plugins(&id), 0);
    }
}
