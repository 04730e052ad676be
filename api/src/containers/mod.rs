//! Containers: their state machine (creating → created → running → exited → removed), their
//! pieces on disk (`<root>/containers/<id>/` with the writable layer, overlay work dir and the
//! OCI bundle whose `rootfs` is the overlay of the image's layers), and their shims, one per
//! container, which outlive the daemon.
//!
//! The daemon decides and records; the shim supervises. A container's exit is learnt from a
//! watcher thread blocked in the shim's Wait, and written to the record. On start the daemon
//! reconnects to every live shim, and a shim that is gone means its container exited: the
//! exit the shim wrote to `exit.json` before it reported it is read from disk.
//!
//! Crash safety: a record in the `creating` phase is committed before anything is made, and
//! marked `created` only once the shim holds the created container. A record still `creating`
//! when the daemon starts is what a `kill -9` mid-creation left, and its pieces are removed
//! with it. Removal deletes the record last, so a crash mid-removal leaves an exited container
//! that RemoveContainer finishes.
//!
//! Locks: per container, `ops` serialises the calls that change it (start, stop, remove,
//! update) and is held across shim calls; `record` is only held to read or replace the record,
//! so status and list calls never wait for a slow stop. Every method blocks: the CRI service
//! calls them off the async workers.

mod create;
mod exec;
mod lifecycle;
pub mod record;
pub mod stream;

use crate::reservation::ReservedNames;
pub(crate) use crate::reservation::{NameReservation, lock};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{DirBuilder, Permissions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bungeo_imagestore::ImageStore;
use bungeo_runtime::apparmor::AppArmor;
use k8s_cri::v1 as cri;
use tracing::{info, info_span, warn};

use crate::config::{CgroupDriver, Config};
use crate::errors::{Error, Result};
use crate::events::ContainerEvents;
use crate::ids;
use crate::records::Records;
use crate::sandbox::Sandboxes;
use crate::shims::{CallError, RUNTIME_DIR, SHIMS_DIR, Shim, ShimPaths, ShimSettings};

pub use record::{ContainerPhase, ContainerRecord, ExitInfo};

/// Directory of the containers inside the root directory.
pub const CONTAINERS_DIR: &str = "containers";
/// Name of the shim binary looked for beside the daemon's executable.
pub const SHIM_BINARY: &str = "bungeo-shim";
/// Name of the runtime binary looked for beside the daemon's executable.
pub const RUNTIME_BINARY: &str = "bungeo-runtime";

/// Mode of the containers' directories: traversed by the runtime, never browsed.
const CONTAINER_DIR_MODE: u32 = 0o711;

/// How objects are named in messages and id lookups.
const KIND: &str = "container";

/// What the containers need from the daemon's configuration.
#[derive(Debug, Clone)]
pub struct ContainerSettings {
    /// The daemon's root directory (persistent).
    pub root: PathBuf,
    /// The daemon's state directory (gone at reboot).
    pub state: PathBuf,
    /// Decides the form of the containers' cgroup paths.
    pub cgroup_driver: CgroupDriver,
    /// The shim and runtime binaries.
    pub shim: ShimSettings,
}

impl ContainerSettings {
    /// The settings a daemon with `config` uses: the shim and runtime binaries configured,
    /// else those beside the daemon's own executable.
    pub fn from_config(config: &Config) -> Self {
        let beside = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("/usr/local/bin"));
        let pick = |configured: &Path, name: &str| {
            if configured.as_os_str().is_empty() {
                beside.join(name)
            } else {
                configured.to_owned()
            }
        };
        ContainerSettings {
            root: config.root.clone(),
            state: config.state.clone(),
            cgroup_driver: config.cgroup_driver,
            shim: ShimSettings {
                shim: pick(&config.shim.binary, SHIM_BINARY),
                runtime: pick(&config.shim.runtime, RUNTIME_BINARY),
                runtime_root: config.state.join(RUNTIME_DIR),
                systemd_cgroup: config.cgroup_driver == CgroupDriver::Systemd,
            },
        }
    }
}

/// One container: the lock of the calls that change it, and its record (`None` once removed;
/// a caller may still hold the entry).
struct Entry {
    ops: Mutex<()>,
    record: Mutex<Option<ContainerRecord>>,
    /// Notified with `record` whenever the record changes (an exit above all).
    changed: Condvar,
}

impl Entry {
    fn new(record: ContainerRecord) -> Arc<Entry> {
        Arc::new(Entry {
            ops: Mutex::new(()),
            record: Mutex::new(Some(record)),
            changed: Condvar::new(),
        })
    }

    fn snapshot(&self) -> Option<ContainerRecord> {
        lock(&self.record).clone()
    }
}

/// The containers that exist, and the names reserved, including those of containers still
/// being created.
#[derive(Default)]
struct Index {
    entries: BTreeMap<String, Arc<Entry>>,
    /// Reservation name → container id.
    names: HashMap<String, String>,
}

/// Every container of the daemon.
pub struct Containers {
    containers_dir: PathBuf,
    state: PathBuf,
    cgroup_driver: CgroupDriver,
    shim: ShimSettings,
    store: Arc<ImageStore>,
    sandboxes: Arc<Sandboxes>,
    index: Mutex<Index>,
    /// The daemon's own `oom_score_adj`: containers cannot go below it (no CAP_SYS_RESOURCE).
    oom_score_adj: Option<i32>,
    /// What AppArmor offers on this node: the default profile is loaded at start.
    apparmor: AppArmor,
    /// Where CREATED, STARTED, STOPPED and DELETED are reported (GetContainerEvents).
    events: Arc<ContainerEvents>,
}

/// Nanoseconds since the epoch.
pub(crate) fn ns_of(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(crate) fn now_ns() -> i64 {
    ns_of(SystemTime::now())
}

fn create_dir(path: &Path, mode: u32, recursive: bool) -> Result<()> {
    DirBuilder::new()
        .recursive(recursive)
        .mode(mode)
        .create(path)
        .map_err(|e| Error::io("create directory", path, e))?;
    // The umask may have taken bits away.
    std::fs::set_permissions(path, Permissions::from_mode(mode))
        .map_err(|e| Error::io("chmod", path, e))
}

fn remove_dir_all(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove directory", path, e)),
    }
}

fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

fn not_found(query: &str) -> Error {
    Error::NotFound(format!("container {query} not found"))
}

/// A shim call's failure as the daemon's error, naming the container and the call.
fn shim_error(container: &str, call: &str, e: CallError) -> Error {
    Error::Shim {
        what: format!("container {container}: {call}"),
        message: e.to_string(),
    }
}

/// The exit the container's shim wrote to disk, if it wrote one.
fn exit_from_disk(paths: &ShimPaths) -> Option<ExitInfo> {
    match bungeo_shim::exit_record::read(&paths.state_dir) {
        Ok(Some(r)) => {
            let at = r.exited_at_time().map(ns_of).unwrap_or_else(now_ns);
            Some(ExitInfo::observed(r.exit_code, at, r.oom_killed))
        }
        Ok(None) => None,
        Err(e) => {
            warn!(error = %e, "the shim's exit record is unreadable");
            None
        }
    }
}

impl ReservedNames for Index {
    fn names(&mut self) -> &mut HashMap<String, String> {
        &mut self.names
    }
}

impl Containers {
    /// Opens the containers of `sandboxes`' records database, creates the directories, and
    /// recovers from whatever a previous daemon left: half-created containers are removed,
    /// live shims are watched again, and containers whose shim is gone get their exit from
    /// disk.
    pub fn open(
        settings: ContainerSettings,
        store: Arc<ImageStore>,
        sandboxes: Arc<Sandboxes>,
    ) -> Result<Containers> {
        let containers_dir = settings.root.join(CONTAINERS_DIR);
        create_dir(&containers_dir, CONTAINER_DIR_MODE, true)?;
        create_dir(&settings.state.join(SHIMS_DIR), 0o700, true)?;
        create_dir(&settings.shim.runtime_root, 0o700, true)?;
        if !settings.shim.shim.is_file() {
            warn!(
                shim = %settings.shim.shim.display(),
                "the shim binary is missing: containers cannot be created until it is there"
            );
        }
        let containers_dir = std::fs::canonicalize(&containers_dir)
            .map_err(|e| Error::io("resolve path", &containers_dir, e))?;
        let apparmor = prepare_apparmor(&settings.state);
        let containers = Containers {
            containers_dir,
            state: settings.state,
            cgroup_driver: settings.cgroup_driver,
            shim: settings.shim,
            store,
            sandboxes,
            index: Mutex::new(Index::default()),
            oom_score_adj: own_oom_score_adj(),
            apparmor,
            events: Arc::new(ContainerEvents::new()),
        };
        containers.recover()?;
        Ok(containers)
    }

    /// What AppArmor offers on this node (verbose `Status` says it).
    pub fn apparmor(&self) -> &AppArmor {
        &self.apparmor
    }

    fn records(&self) -> &Records {
        self.sandboxes.records()
    }

    fn recover(&self) -> Result<()> {
        let mut known = HashSet::new();
        for mut record in self.records().containers()? {
            let _span = info_span!("container", container_id = %record.id).entered();
            known.insert(record.id.clone());
            if record.phase == ContainerPhase::Creating {
                warn!("removing a container that a crash left half-created");
                match self.teardown(&record.id, &record.dir, &record.shim) {
                    Ok(()) => self.records().delete_container(&record.id)?,
                    Err(e) => warn!(
                        error = %e,
                        "could not remove it; its record stays for the next start"
                    ),
                }
                continue;
            }
            let before = record.clone();
            let watch = self.reconcile(&mut record);
            if record != before {
                self.records().put_container(&record)?;
            }
            let id = record.id.clone();
            let paths = record.shim.clone();
            let entry = Entry::new(record.clone());
            {
                let mut index = lock(&self.index);
                index.names.insert(record.name.clone(), id.clone());
                index.entries.insert(id.clone(), Arc::clone(&entry));
            }
            if watch {
                info!("reconnected to the container's shim");
                self.watch(&id, &entry, &paths);
            }
        }
        self.remove_orphans(&known)
    }

    /// Brings a created or running record in line with its shim after a restart; whether the
    /// container runs and needs a watcher.
    fn reconcile(&self, record: &mut ContainerRecord) -> bool {
        if matches!(
            record.phase,
            ContainerPhase::Exited | ContainerPhase::Creating
        ) {
            return false;
        }
        if record.start_error.is_some() {
            // Created without an init or a shim: nothing to reconcile until its start fails.
            return false;
        }
        use bungeo_shim::protos::api::Status;
        let state = Shim::connect(&record.shim, &record.id).and_then(|s| s.state(""));
        match state {
            Ok(s) => match s.status {
                Status::CREATED => false,
                Status::STOPPED => {
                    let exit = exit_from_disk(&record.shim).unwrap_or_else(|| {
                        ExitInfo::observed(
                            i32::try_from(s.exit_status).unwrap_or(i32::MAX),
                            s.exited_at.map(ns_of).unwrap_or_else(now_ns),
                            false,
                        )
                    });
                    record.apply_exit(exit);
                    false
                }
                _ => {
                    if record.phase == ContainerPhase::Created {
                        // A crash between the shim's Start and the record's update.
                        record.phase = ContainerPhase::Running;
                        record.started_at = now_ns();
                    }
                    true
                }
            },
            Err(CallError::Gone(why)) => {
                let exit = exit_from_disk(&record.shim).unwrap_or_else(|| {
                    ExitInfo::unknown(
                        now_ns(),
                        format!(
                            "the shim of container {} is gone ({why}) and left no exit record",
                            record.id
                        ),
                    )
                });
                info!(exit_code = exit.exit_code, reason = %exit.reason, "its shim is gone");
                if exit.reason == record::REASON_UNKNOWN {
                    lifecycle::clean_up_after_dead_shim(&self.shim, &record.id);
                }
                record.apply_exit(exit);
                false
            }
            Err(e) => {
                // Alive but not answering: watch it; the watcher retries.
                warn!(error = %e, "the container's shim does not answer");
                record.phase == ContainerPhase::Running
            }
        }
    }

    /// Removes container directories and shim directories that no record names. The
    /// creating marker makes these impossible for the daemon itself; this catches what
    /// someone else left.
    fn remove_orphans(&self, known: &HashSet<String>) -> Result<()> {
        for holder in self.store.holders()? {
            if !known.contains(&holder) {
                warn!(container_id = %holder, "releasing the image layers of a container that has no record");
                self.store.release(&holder)?;
            }
        }
        let mut orphans = HashSet::new();
        let shims_dir = self.state.join(SHIMS_DIR);
        for dir in [&self.containers_dir, &shims_dir] {
            let entries =
                std::fs::read_dir(dir).map_err(|e| Error::io("read directory", dir, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| Error::io("read directory", dir, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let name = name.strip_suffix(".sock").unwrap_or(&name).to_owned();
                if ids::is_full_id(&name) && !known.contains(&name) {
                    orphans.insert(name);
                }
            }
        }
        for id in orphans {
            warn!(container_id = %id, "removing the files of a container that has no record");
            let paths = ShimPaths::new(&self.state, &id);
            if let Err(e) = self.teardown(&id, &self.containers_dir.join(&id), &paths) {
                warn!(container_id = %id, error = %e, "could not remove them");
            }
        }
        Ok(())
    }

    /// The container `query` names (a full id or a unique prefix), if it exists.
    fn lookup(&self, query: &str) -> Result<Option<(String, Arc<Entry>)>> {
        let index = lock(&self.index);
        let Some(id) = ids::resolve(KIND, query, index.entries.keys().map(String::as_str))? else {
            return Ok(None);
        };
        Ok(index
            .entries
            .get(id)
            .map(|entry| (id.to_owned(), Arc::clone(entry))))
    }

    /// The container `query` names, or NotFound.
    fn get(&self, query: &str) -> Result<(String, Arc<Entry>, ContainerRecord)> {
        let (id, entry) = self.lookup(query)?.ok_or_else(|| not_found(query))?;
        let record = entry.snapshot().ok_or_else(|| not_found(query))?;
        Ok((id, entry, record))
    }

    /// Replaces a container's record through `change`, committed before it is visible.
    fn update(&self, entry: &Entry, change: impl FnOnce(&mut ContainerRecord)) -> Result<()> {
        let mut guard = lock(&entry.record);
        let Some(current) = guard.as_ref() else {
            return Err(Error::NotFound("the container was removed".to_owned()));
        };
        let mut next = current.clone();
        change(&mut next);
        if next != *current {
            self.records().put_container(&next)?;
            *guard = Some(next);
            entry.changed.notify_all();
        }
        Ok(())
    }

    /// ContainerStatus; `verbose` adds `info["info"]`, a JSON document with the pid, the OCI
    /// spec and the container's paths.
    pub fn status(&self, query: &str, verbose: bool) -> Result<cri::ContainerStatusResponse> {
        let (_, _, record) = self.get(query)?;
        let info = if verbose {
            let path = record.bundle().join(record::SPEC_FILE);
            // A container being removed may have lost its bundle already: no spec then.
            let spec = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            record::verbose_info(&record, spec)
        } else {
            HashMap::new()
        };
        Ok(cri::ContainerStatusResponse {
            status: Some(record::cri_status(&record)),
            info,
        })
    }

    /// The record of the container `query` names, or NotFound.
    pub fn record(&self, query: &str) -> Result<ContainerRecord> {
        self.get(query).map(|(_, _, record)| record)
    }

    /// The records of every container, in no particular order.
    pub fn snapshots(&self) -> Vec<ContainerRecord> {
        self.records_where(|_| true)
    }

    /// The records `keep` accepts, in no particular order. Only those are cloned: the stats
    /// calls want the live containers of a filter, and a record carries the whole config.
    pub fn records_where(&self, keep: impl Fn(&ContainerRecord) -> bool) -> Vec<ContainerRecord> {
        let entries: Vec<Arc<Entry>> = lock(&self.index).entries.values().cloned().collect();
        entries
            .iter()
            .filter_map(|e| lock(&e.record).as_ref().filter(|r| keep(r)).cloned())
            .collect()
    }

    /// The ids of every container.
    pub fn ids(&self) -> HashSet<String> {
        lock(&self.index).entries.keys().cloned().collect()
    }

    /// The statuses of the containers of pod sandbox `sandbox_id` (a full id), oldest first:
    /// what a container event carries.
    pub fn statuses_of_pod(&self, sandbox_id: &str) -> Vec<cri::ContainerStatus> {
        self.collect_sorted(|r| {
            (r.sandbox_id == sandbox_id && r.phase != ContainerPhase::Creating)
                .then(|| record::cri_status(r))
        })
    }

    /// What `convert` makes of each record it accepts, oldest container first. Records are
    /// read in place, not cloned: ListContainers runs every second on every node, and a
    /// record carries the whole container config.
    fn collect_sorted<T>(&self, convert: impl Fn(&ContainerRecord) -> Option<T>) -> Vec<T> {
        let entries: Vec<Arc<Entry>> = lock(&self.index).entries.values().cloned().collect();
        let mut out: Vec<(i64, String, T)> = entries
            .iter()
            .filter_map(|e| {
                let guard = lock(&e.record);
                let r = guard.as_ref()?;
                convert(r).map(|t| (r.created_at, r.id.clone(), t))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        out.into_iter().map(|(_, _, t)| t).collect()
    }

    /// The container event hub.
    pub fn events(&self) -> &Arc<ContainerEvents> {
        &self.events
    }

    /// ListContainers, oldest first.
    pub fn list(&self, filter: Option<&cri::ContainerFilter>) -> Vec<cri::Container> {
        self.collect_sorted(|r| record::matches(filter, r).then(|| record::cri_container(r)))
    }

    /// The containers of pod sandbox `sandbox_id` (a full id).
    fn of_pod(&self, sandbox_id: &str) -> Vec<(String, Arc<Entry>)> {
        let entries: Vec<(String, Arc<Entry>)> = lock(&self.index)
            .entries
            .iter()
            .map(|(id, e)| (id.clone(), Arc::clone(e)))
            .collect();
        entries
            .into_iter()
            .filter(|(_, e)| {
                lock(&e.record)
                    .as_ref()
                    .is_some_and(|r| r.sandbox_id == sandbox_id)
            })
            .collect()
    }

    /// The full id of the pod sandbox `query` names; `None` when there is none.
    fn pod_id(&self, query: &str) -> Result<Option<String>> {
        match self.sandboxes.record(query) {
            Ok(record) => Ok(Some(record.id)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// For StopPodSandbox: stops every container of the pod at once (SIGKILL, as containerd).
    pub fn stop_pod(&self, pod_query: &str) -> Result<()> {
        let Some(pod_id) = self.pod_id(pod_query)? else {
            return Ok(());
        };
        let mut first_error = None;
        for (id, entry) in self.of_pod(&pod_id) {
            let _span = info_span!("container", container_id = %id, pod_id = %pod_id).entered();
            let _ops = lock(&entry.ops);
            if let Err(e) = self.stop_locked(&id, &entry, 0) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// For RemovePodSandbox: removes every container of the pod.
    pub fn remove_pod(&self, pod_query: &str) -> Result<()> {
        let Some(pod_id) = self.pod_id(pod_query)? else {
            return Ok(());
        };
        let mut first_error = None;
        for (id, entry) in self.of_pod(&pod_id) {
            let _span = info_span!("container", container_id = %id, pod_id = %pod_id).entered();
            if let Err(e) = self.remove_entry(&id, &entry) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The daemon's own `oom_score_adj`, the floor of its containers'.
fn own_oom_score_adj() -> Option<i32> {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Loads the default AppArmor profile where the kernel enforces AppArmor, and says once what
/// `RuntimeDefault` means on this node.
fn prepare_apparmor(state: &Path) -> AppArmor {
    let host = bungeo_runtime::apparmor::LinuxAppArmor {
        stamp: state
            .join("apparmor")
            .join(bungeo_runtime::apparmor::DEFAULT_PROFILE),
    };
    let node = bungeo_runtime::apparmor::prepare(&host);
    match node {
        AppArmor::Enabled | AppArmor::Disabled => tracing::info!("AppArmor {}", node.describe()),
        AppArmor::NoParser | AppArmor::LoadFailed(_) => {
            tracing::warn!("AppArmor {}", node.describe())
        }
    }
    node
}

#[cfg(test)]
pub(crate) mod tests;
