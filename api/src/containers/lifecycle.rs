//! StartContainer, StopContainer, RemoveContainer, and the watcher that learns of each
//! container's exit from its shim.

use std::str::FromStr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bungeo_shim::protos::ttrpc::Code;
use nix::sys::signal::Signal;
use tracing::{debug, info, info_span, warn};

use super::record::{
    ContainerPhase, ContainerRecord, ExitInfo, REASON_START_ERROR, REASON_UNKNOWN,
    START_ERROR_EXIT_CODE,
};
use super::{Containers, Entry, exit_from_disk, lock, not_found, now_ns, ns_of, shim_error};
use crate::errors::{Error, Result};
use crate::events::ContainerEvents;
use crate::sandbox::Sandboxes;
use crate::shims::{CallError, Shim, ShimPaths, ShimSettings};
use k8s_cri::v1::ContainerEventType;

/// How long a container may take to die after SIGKILL before StopContainer fails.
const KILL_WAIT: Duration = Duration::from_secs(30);

/// Stack of a watcher thread: it only blocks in a shim call and writes a record.
const WATCHER_STACK: usize = 256 << 10;

/// How often a watcher retries a shim that answers oddly before declaring the exit unknown.
const WATCH_RETRIES: u32 = 30;

/// The signal a stop starts with: the image's STOPSIGNAL (`SIGQUIT`, `QUIT` or `3`), else
/// SIGTERM.
fn stop_signal(raw: &str) -> i32 {
    let raw = raw.trim();
    if raw.is_empty() {
        return libc::SIGTERM;
    }
    if let Ok(n) = raw.parse::<i32>() {
        if Signal::try_from(n).is_ok() {
            return n;
        }
    } else {
        let upper = raw.to_ascii_uppercase();
        let name = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        if let Ok(s) = Signal::from_str(&name) {
            return s as i32;
        }
    }
    warn!(
        stop_signal = raw,
        "the image's STOPSIGNAL is not a signal: using SIGTERM"
    );
    libc::SIGTERM
}

impl Containers {
    /// StartContainer: starts a created container and watches for its exit.
    pub fn start(&self, query: &str) -> Result<()> {
        let (id, entry, _) = self.get(query)?;
        let _span = info_span!("container", container_id = %id).entered();
        let _ops = lock(&entry.ops);
        let record = entry.snapshot().ok_or_else(|| not_found(query))?;
        let what = record.display();
        if record.phase != ContainerPhase::Created {
            return Err(Error::FailedPrecondition(format!(
                "container {what} is {}: only a created container can start",
                super::record::cri_state(record.phase).as_str_name()
            )));
        }
        let started = match &record.start_error {
            Some(message) => Err(CallError::Status {
                code: Code::INTERNAL,
                message: message.clone(),
            }),
            None => Shim::connect(&record.shim, &id).and_then(|s| s.start("")),
        };
        match started {
            Ok(pid) => {
                self.update(&entry, |r| {
                    r.phase = ContainerPhase::Running;
                    r.started_at = now_ns();
                    r.pid = pid;
                })?;
                info!(pid, "container started");
                self.events.emit(
                    &id,
                    &record.sandbox_id,
                    ContainerEventType::ContainerStartedEvent,
                );
                self.watch(&id, &entry, &record.shim);
                Ok(())
            }
            Err(e) => {
                let err = shim_error(&what, "start", e);
                // As containerd: a failed start leaves an exited container saying why.
                let exit = ExitInfo {
                    exit_code: START_ERROR_EXIT_CODE,
                    finished_at: now_ns(),
                    reason: REASON_START_ERROR.to_owned(),
                    message: err.to_string(),
                };
                let mut stopped = false;
                if let Err(e) = self.update(&entry, |r| {
                    stopped = r.apply_exit(exit);
                }) {
                    warn!(error = %e, "recording the failed start");
                }
                if stopped {
                    self.events.emit(
                        &id,
                        &record.sandbox_id,
                        ContainerEventType::ContainerStoppedEvent,
                    );
                }
                Err(err)
            }
        }
    }

    /// Starts the thread that waits for the container's exit in its shim and records it.
    pub(super) fn watch(&self, id: &str, entry: &Arc<Entry>, paths: &ShimPaths) {
        let sandboxes = Arc::downgrade(&self.sandboxes);
        let events = Arc::clone(&self.events);
        let entry = Arc::clone(entry);
        let container_id = id.to_owned();
        let paths = paths.clone();
        let settings = self.shim.clone();
        let spawned = std::thread::Builder::new()
            .name("bungeo-watch".to_owned())
            .stack_size(WATCHER_STACK)
            .spawn(move || {
                let id = container_id;
                let _span = info_span!("container", container_id = %id).entered();
                let exit = wait_for_exit(&id, &paths);
                if exit.reason == REASON_UNKNOWN {
                    clean_up_after_dead_shim(&settings, &id);
                }
                record_exit(&sandboxes, &events, &entry, exit);
            });
        if let Err(e) = spawned {
            warn!(container_id = %id, error = %e, "cannot start the exit watcher");
        }
    }

    /// StopContainer: the stop signal, then SIGKILL once `timeout` seconds pass (at once for
    /// 0). Stopping a container that does not run, or does not exist, is fine.
    pub fn stop(&self, query: &str, timeout: i64) -> Result<()> {
        let Some((id, entry)) = self.lookup(query)? else {
            debug!(container_id = %query, "StopContainer of an unknown container: nothing to do");
            return Ok(());
        };
        let _span = info_span!("container", container_id = %id).entered();
        let _ops = lock(&entry.ops);
        self.stop_locked(&id, &entry, timeout)
    }

    /// Stops the container; the caller holds its `ops` lock.
    pub(super) fn stop_locked(&self, id: &str, entry: &Entry, timeout: i64) -> Result<()> {
        let Some(record) = entry.snapshot() else {
            return Ok(());
        };
        if record.phase != ContainerPhase::Running {
            return Ok(());
        }
        let what = record.display();
        let shim = match Shim::connect(&record.shim, id) {
            Ok(s) => s,
            Err(CallError::Gone(why)) => {
                // Its watcher will say the same; no need to wait for it.
                let exit = exit_from_disk(&record.shim).unwrap_or_else(|| {
                    ExitInfo::unknown(
                        now_ns(),
                        format!(
                            "the shim of container {id} is gone ({why}) and left no exit record"
                        ),
                    )
                });
                if exit.reason == REASON_UNKNOWN {
                    clean_up_after_dead_shim(&self.shim, id);
                }
                let mut stopped = false;
                self.update(entry, |r| {
                    stopped = r.apply_exit(exit);
                })?;
                if stopped {
                    self.events.emit(
                        id,
                        &record.sandbox_id,
                        ContainerEventType::ContainerStoppedEvent,
                    );
                }
                return Ok(());
            }
            Err(e) => return Err(shim_error(&what, "stop", e)),
        };
        if timeout > 0 {
            let signal = stop_signal(&record.stop_signal);
            info!(signal, timeout, "stopping container");
            match shim.kill("", signal, false) {
                Ok(()) => {}
                // Exited on its own meanwhile.
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(shim_error(&what, "signal", e)),
            }
            let grace = Duration::from_secs(u64::try_from(timeout).unwrap_or(0));
            if wait_not_running(entry, grace) {
                return Ok(());
            }
            info!("still running after the stop timeout: SIGKILL");
        }
        match shim.kill("", libc::SIGKILL, true) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(CallError::Status {
                code: Code::FAILED_PRECONDITION,
                ..
            }) => {}
            Err(e) => return Err(shim_error(&what, "kill", e)),
        }
        if wait_not_running(entry, KILL_WAIT) {
            Ok(())
        } else {
            Err(Error::Shim {
                what: format!("container {what}: stop"),
                message: format!("still running {KILL_WAIT:?} after SIGKILL"),
            })
        }
    }

    /// RemoveContainer: kills the container if it runs, deletes it in its shim and the shim,
    /// unmounts its rootfs and removes its writable layer, bundle and record. Removing an
    /// unknown container is fine.
    pub fn remove(&self, query: &str) -> Result<()> {
        let Some((id, entry)) = self.lookup(query)? else {
            debug!(container_id = %query, "RemoveContainer of an unknown container: nothing to do");
            return Ok(());
        };
        let _span = info_span!("container", container_id = %id).entered();
        self.remove_entry(&id, &entry)
    }

    pub(super) fn remove_entry(&self, id: &str, entry: &Entry) -> Result<()> {
        let _ops = lock(&entry.ops);
        let Some(record) = entry.snapshot() else {
            return Ok(());
        };
        if record.phase == ContainerPhase::Running {
            self.stop_locked(id, entry, 0)?;
        }
        self.teardown(id, &record.dir, &record.shim)?;
        self.records().delete_container(id)?;
        *lock(&entry.record) = None;
        entry.changed.notify_all();
        {
            let mut index = lock(&self.index);
            index.entries.remove(id);
            if index.names.get(&record.name).map(String::as_str) == Some(id) {
                index.names.remove(&record.name);
            }
        }
        self.events.emit(
            id,
            &record.sandbox_id,
            ContainerEventType::ContainerDeletedEvent,
        );
        info!("container removed");
        Ok(())
    }
}

/// Waits up to `limit` for the container to stop running; whether it did.
fn wait_not_running(entry: &Entry, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut guard = lock(&entry.record);
    loop {
        let running = guard
            .as_ref()
            .is_some_and(|r| r.phase == ContainerPhase::Running);
        if !running {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        guard = match entry.changed.wait_timeout(guard, left) {
            Ok((g, _)) => g,
            Err(poisoned) => poisoned.into_inner().0,
        };
    }
}

/// Kills what is left of a container whose shim died without recording its exit, and removes
/// its runtime state and cgroup (`<runtime> delete --force`, as containerd does after a dead
/// shim): unsupervised, it must not run on while it is reported exited. Failures are logged;
/// the container is reported exited either way.
pub(super) fn clean_up_after_dead_shim(settings: &ShimSettings, id: &str) {
    let mut cmd = std::process::Command::new(&settings.runtime);
    cmd.arg("--root").arg(&settings.runtime_root);
    if settings.systemd_cgroup {
        cmd.arg("--systemd-cgroup");
    }
    let output = cmd
        .args(["delete", "--force", id])
        .stdin(std::process::Stdio::null())
        .output();
    match output {
        Ok(o) if o.status.success() => {
            info!("its shim died: what was left of the container is killed and removed");
        }
        Ok(o) => warn!(
            status = %o.status,
            stderr = %String::from_utf8_lossy(&o.stderr).trim(),
            "its shim died and the runtime could not remove what is left of the container"
        ),
        Err(e) => warn!(
            runtime = %settings.runtime.display(),
            error = %e,
            "its shim died and the runtime could not be run to remove the container"
        ),
    }
}

/// Blocks until the container's init exits, and says how. The shim writes `exit.json` before
/// it answers Wait, so the file has the full story (the OOM kill too); a shim that is gone
/// without the file means the exit is unknown.
fn wait_for_exit(id: &str, paths: &ShimPaths) -> ExitInfo {
    let gone = |why: String| {
        exit_from_disk(paths).unwrap_or_else(|| {
            ExitInfo::unknown(
                now_ns(),
                format!("the shim of container {id} is gone ({why}) and left no exit record"),
            )
        })
    };
    let mut failures = 0;
    loop {
        match Shim::connect(paths, id).and_then(|s| s.wait("", None)) {
            Ok(w) => {
                return exit_from_disk(paths).unwrap_or_else(|| {
                    ExitInfo::observed(
                        i32::try_from(w.exit_status).unwrap_or(i32::MAX),
                        ns_of(w.exited_at),
                        false,
                    )
                });
            }
            Err(CallError::Gone(why)) => return gone(why),
            // The init was deleted under the watcher.
            Err(e) if e.is_not_found() => return gone(e.to_string()),
            Err(e) => {
                failures += 1;
                if failures >= WATCH_RETRIES {
                    return gone(format!("Wait kept failing: {e}"));
                }
                warn!(error = %e, "waiting for the container's exit; retrying");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Writes the exit into the record, unless the container ended otherwise meanwhile (a stop
/// that saw its shim gone, a removal). A daemon shutting down writes nothing: the next start
/// reads the exit from disk.
fn record_exit(
    sandboxes: &Weak<Sandboxes>,
    events: &ContainerEvents,
    entry: &Entry,
    exit: ExitInfo,
) {
    let Some(sandboxes) = sandboxes.upgrade() else {
        return;
    };
    let mut guard = lock(&entry.record);
    let Some(current) = guard.as_ref() else {
        return;
    };
    let mut next: ContainerRecord = current.clone();
    if !next.apply_exit(exit) {
        return;
    }
    if let Err(e) = sandboxes.records().put_container(&next) {
        // The exit is shown anyway; the next start of the daemon reads it from disk again.
        warn!(error = %e, "recording the container's exit");
    }
    info!(
        exit_code = next.exit_code,
        reason = %next.reason,
        "container exited"
    );
    // Only a push onto a queue: safe under the record lock, and before the waiters of a stop
    // or removal wake, so STOPPED always comes before DELETED.
    events.emit(
        &next.id,
        &next.sandbox_id,
        ContainerEventType::ContainerStoppedEvent,
    );
    *guard = Some(next);
    entry.changed.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals_are_read_the_ways_images_write_them() {
        assert_eq!(stop_signal(""), libc::SIGTERM);
        assert_eq!(stop_signal("SIGQUIT"), libc::SIGQUIT);
        assert_eq!(stop_signal("quit"), libc::SIGQUIT);
        assert_eq!(stop_signal("SIGRTMIN+3"), libc::SIGTERM);
        assert_eq!(stop_signal("9"), libc::SIGKILL);
        assert_eq!(stop_signal("SIGWINCH"), libc::SIGWINCH);
        assert_eq!(stop_signal("bogus"), libc::SIGTERM);
        assert_eq!(stop_signal("999"), libc::SIGTERM);
    }

    #[test]
    fn waiting_for_a_stop_ends_with_the_exit_or_the_deadline() {
        let mut r = super::super::record::tests::record("c1", "p1");
        r.phase = ContainerPhase::Running;
        let entry = Entry::new(r);
        let started = Instant::now();
        assert!(!wait_not_running(&entry, Duration::from_millis(50)));
        assert!(started.elapsed() >= Duration::from_millis(50));
        let e2 = Arc::clone(&entry);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let mut g = lock(&e2.record);
            g.as_mut()
                .unwrap()
                .apply_exit(ExitInfo::observed(0, 1, false));
            e2.changed.notify_all();
        });
        assert!(wait_not_running(&entry, Duration::from_secs(10)));
        t.join().unwrap();
    }
}
