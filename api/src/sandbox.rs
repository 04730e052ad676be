//! Pod sandboxes: their state machine (creating → ready → not ready → removed) and their pieces
//! on disk: `<root>/sandboxes/<id>/` with `hostname`, `hosts`, `resolv.conf` and the `shm`
//! tmpfs, and the pinned net, ipc and uts namespaces under `<state>/ns/<id>/`. There is no
//! pause process: the pins keep the namespaces alive. Only a pod that shares one pid namespace
//! (PID mode POD) gets an infra process (`bungeo-shim infra`), pid 1 of that namespace, whose
//! namespace is pinned beside the others; it is killed when the pod stops.
//!
//! A pod with its own network namespace gets its CNI network (see [`crate::network`]): ADD
//! once its namespaces are pinned, then its `hosts` file names its IPs. DEL runs at
//! StopPodSandbox, as containerd does, and again at RemovePodSandbox unless it succeeded
//! already. A DEL that cannot find a plugin binary (uninstalled since) is logged and taken as
//! done, since a DEL that can never succeed would wedge the pod forever; what the plugin held
//! (an IP allocation) may then stay behind. Any other DEL failure fails the call, for kubelet
//! to retry.
//!
//! Crash safety: a record in the `creating` phase is committed before anything is made, and
//! marked `ready` only once everything is. It holds what DEL needs before ADD runs. A record still `creating` when the daemon starts is
//! what a `kill -9` mid-creation left, and its pieces are removed with it. Removal deletes the
//! record last, so a crash mid-removal leaves a not-ready pod that RemovePodSandbox finishes.
//!
//! Every method blocks (mounts, files, the database): the CRI service calls them off the async
//! workers.

use crate::reservation::{NameReservation, ReservedNames, lock};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{DirBuilder, Permissions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bungeo_runtime::cgroups::cgroupfs_path;
use bungeo_runtime::namespaces::{self, NsKind};
use bungeo_runtime::process_settings::validate_sysctls;
use bungeo_runtime::rootfs;
use k8s_cri::v1 as cri;
use serde_json::json;
use tracing::{debug, info, info_span, warn};

use crate::config::{CgroupDriver, Config};
use crate::errors::{Error, Result};
use crate::filters;
use crate::ids;
use crate::network::{NetworkSettings, PodNetworks};
use crate::records::{
    InfraProcess, NamespacePins, RECORDS_FILE, Records, SandboxPhase, SandboxRecord,
};
use crate::sandbox_files::{
    HOSTNAME_FILE, HOSTS_FILE, NodeFiles, RESOLV_CONF_FILE, SHM_DIR, render_hostname, render_hosts,
    render_resolv_conf, validate_hostname,
};

/// Directory of the sandboxes' files inside the root directory.
pub const SANDBOXES_DIR: &str = "sandboxes";
/// Directory of the namespace pins inside the state directory.
pub const NS_DIR: &str = "ns";
/// Size of a pod's `/dev/shm` tmpfs (containerd's and Docker's default).
pub const SHM_SIZE: u64 = 64 << 20;
/// The infra process's pidfile in the sandbox's directory.
const INFRA_PIDFILE: &str = "infra.pid";
/// Mode of a sandbox's directory: its files are bound into containers, never browsed.
const SANDBOX_DIR_MODE: u32 = 0o711;
/// Mode of the files in it: containers of any user read them.
const SANDBOX_FILE_MODE: u32 = 0o644;

/// How objects are named in messages and id lookups.
const KIND: &str = "pod sandbox";
/// Longest pod name, namespace or uid: a Kubernetes name is a DNS subdomain of at most 253.
const MAX_METADATA_LEN: usize = 253;

/// What the sandboxes need from the daemon's configuration and the node.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    /// The daemon's root directory (persistent).
    pub root: PathBuf,
    /// The daemon's state directory (gone at reboot).
    pub state: PathBuf,
    /// Decides how `cgroup_parent` is checked.
    pub cgroup_driver: CgroupDriver,
    /// Runtime handlers accepted besides "".
    pub runtime_handlers: Vec<String>,
    /// The node's resolv.conf, hosts and hostname.
    pub node: NodeFiles,
    /// The `bungeo-shim` executable, which runs the infra of pods sharing a pid namespace.
    pub shim: PathBuf,
    /// Pod networking (CNI).
    pub network: NetworkSettings,
}

impl SandboxSettings {
    /// The settings a daemon with `config` uses.
    pub fn from_config(config: &Config) -> Self {
        SandboxSettings {
            root: config.root.clone(),
            state: config.state.clone(),
            cgroup_driver: config.cgroup_driver,
            runtime_handlers: config.runtime_handlers.clone(),
            node: NodeFiles::default(),
            shim: crate::containers::ContainerSettings::from_config(config)
                .shim
                .shim,
            network: NetworkSettings::from_config(config),
        }
    }
}

/// One sandbox's record; `None` once it is removed (a caller may still hold the slot).
type Slot = Arc<Mutex<Option<SandboxRecord>>>;

/// The sandboxes that exist (ready or not), and the names reserved, including those of
/// sandboxes still being created.
#[derive(Default)]
struct Index {
    slots: BTreeMap<String, Slot>,
    /// Reservation name (`name_namespace_uid_attempt`) → sandbox id.
    names: HashMap<String, String>,
}

/// Every pod sandbox of the daemon.
pub struct Sandboxes {
    sandboxes_dir: PathBuf,
    ns_dir: PathBuf,
    cgroup_driver: CgroupDriver,
    runtime_handlers: Vec<String>,
    node: NodeFiles,
    shim: PathBuf,
    network: PodNetworks,
    records: Records,
    index: Mutex<Index>,
}

/// What a validated RunPodSandbox request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    /// The reservation name.
    name: String,
    /// The hostname for the files and the uts namespace.
    hostname: String,
    host_network: bool,
    host_ipc: bool,
    /// PID mode POD: the containers share one pid namespace, held by an infra process.
    shared_pid: bool,
    /// The rendered resolv.conf, or `None` to copy the node's.
    resolv_conf: Option<String>,
}

/// The name a sandbox's metadata reserves, as containerd builds it: a second sandbox with the
/// same pod name, namespace, uid and attempt is refused while the first exists.
fn reservation_name(metadata: &cri::PodSandboxMetadata) -> String {
    format!(
        "{}_{}_{}_{}",
        metadata.name, metadata.namespace, metadata.uid, metadata.attempt
    )
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
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

fn write_file(path: &Path, content: &str) -> Result<()> {
    std::fs::write(path, content).map_err(|e| Error::io("write", path, e))?;
    std::fs::set_permissions(path, Permissions::from_mode(SANDBOX_FILE_MODE))
        .map_err(|e| Error::io("chmod", path, e))
}

/// Mount points of this process's mount namespace.
fn mount_points() -> Result<HashSet<PathBuf>> {
    let path = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    Ok(rootfs::mountinfo::parse_mountinfo(&text)
        .into_iter()
        .map(|m| m.mount_point)
        .collect())
}

/// Whether every namespace pin and the shm tmpfs of a sandbox are still mounted.
fn pieces_mounted(record: &SandboxRecord, mounts: &HashSet<PathBuf>) -> bool {
    record.namespaces.iter().all(|(_, p)| mounts.contains(p))
        && record.shm.as_ref().is_none_or(|p| mounts.contains(p))
}

impl ReservedNames for Index {
    fn names(&mut self) -> &mut HashMap<String, String> {
        &mut self.names
    }
}

impl Sandboxes {
    /// Opens the records, creates the directories, and recovers from whatever a previous
    /// daemon left: half-created sandboxes are removed, sandboxes whose namespaces or shm are
    /// gone are marked not ready, and sandbox directories or pins without a record go.
    pub fn open(settings: SandboxSettings) -> Result<Sandboxes> {
        let sandboxes_dir = settings.root.join(SANDBOXES_DIR);
        let ns_dir = settings.state.join(NS_DIR);
        create_dir(&sandboxes_dir, SANDBOX_DIR_MODE, true)?;
        create_dir(&ns_dir, 0o700, true)?;
        // Mount points are compared with /proc/self/mountinfo, which shows resolved paths
        // (a state dir under /var/run is mounted under /run).
        let canonical =
            |p: &Path| std::fs::canonicalize(p).map_err(|e| Error::io("resolve path", p, e));
        let records = Records::open(&settings.root.join(RECORDS_FILE))?;
        let sandboxes = Sandboxes {
            sandboxes_dir: canonical(&sandboxes_dir)?,
            ns_dir: canonical(&ns_dir)?,
            cgroup_driver: settings.cgroup_driver,
            runtime_handlers: settings.runtime_handlers,
            node: settings.node,
            shim: settings.shim,
            network: PodNetworks::new(settings.network),
            records,
            index: Mutex::new(Index::default()),
        };
        sandboxes.recover()?;
        Ok(sandboxes)
    }

    fn recover(&self) -> Result<()> {
        let mounts = mount_points()?;
        let mut known = HashSet::new();
        let mut index = lock(&self.index);
        for mut record in self.records.sandboxes()? {
            let _span = info_span!("pod", pod_id = %record.id).entered();
            known.insert(record.id.clone());
            match record.phase {
                SandboxPhase::Creating => {
                    warn!("removing a pod sandbox that a crash left half-created");
                    kill_infra(&record);
                    // An ADD the crash cut short may still be running: it must not finish
                    // after the DEL below.
                    let killed = bungeo_runtime::cni::kill_orphan_plugins(&record.id);
                    if killed > 0 {
                        warn!(killed, "killed CNI plugin processes the crash left running");
                    }
                    let released = self.release_network(&mut record);
                    match released.and(self.teardown(&record.id, &record.dir, &record.ns_dir)) {
                        Ok(()) => self.records.delete_sandbox(&record.id)?,
                        Err(e) => warn!(
                            error = %e,
                            "could not remove it; its record stays for the next start"
                        ),
                    }
                    continue;
                }
                SandboxPhase::Ready if !pieces_mounted(&record, &mounts) => {
                    warn!("its namespaces or /dev/shm are gone (a reboot?): marking it not ready");
                    record.phase = SandboxPhase::NotReady;
                    self.records.put_sandbox(&record)?;
                }
                SandboxPhase::Ready | SandboxPhase::NotReady => {}
            }
            if let Some(metadata) = &record.config.metadata {
                index
                    .names
                    .insert(reservation_name(metadata), record.id.clone());
            }
            index
                .slots
                .insert(record.id.clone(), Arc::new(Mutex::new(Some(record))));
        }
        drop(index);
        self.remove_orphans(&known)
    }

    /// Removes sandbox directories and pins that no record names. The creating marker makes
    /// these impossible for the daemon itself; this catches what someone else left.
    fn remove_orphans(&self, known: &HashSet<String>) -> Result<()> {
        let mut orphans = HashSet::new();
        for dir in [&self.sandboxes_dir, &self.ns_dir] {
            let entries =
                std::fs::read_dir(dir).map_err(|e| Error::io("read directory", dir, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| Error::io("read directory", dir, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if ids::is_full_id(&name) && !known.contains(&name) {
                    orphans.insert(name);
                }
            }
        }
        for id in orphans {
            warn!(pod_id = %id, "removing the files of a pod sandbox that has no record");
            if let Err(e) =
                self.teardown(&id, &self.sandboxes_dir.join(&id), &self.ns_dir.join(&id))
            {
                warn!(pod_id = %id, error = %e, "could not remove them");
            }
        }
        Ok(())
    }

    /// Checks a RunPodSandbox request and works out what it asks for.
    fn plan(&self, config: &cri::PodSandboxConfig, runtime_handler: &str) -> Result<Plan> {
        let metadata = config.metadata.as_ref().ok_or_else(|| {
            Error::InvalidArgument("RunPodSandbox: config.metadata is required".to_owned())
        })?;
        for (field, value) in [
            ("name", &metadata.name),
            ("namespace", &metadata.namespace),
            ("uid", &metadata.uid),
        ] {
            if value.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "RunPodSandbox: config.metadata.{field} is required"
                )));
            }
            // The names go into the CNI plugins' environment, and no Kubernetes name is longer.
            if value.len() > MAX_METADATA_LEN {
                return Err(Error::InvalidArgument(format!(
                    "RunPodSandbox: config.metadata.{field} is {} bytes long, more than {MAX_METADATA_LEN}",
                    value.len()
                )));
            }
        }
        let name = reservation_name(metadata);
        let invalid = |message: String| Error::InvalidArgument(format!("pod {name}: {message}"));
        if !runtime_handler.is_empty()
            && !self.runtime_handlers.iter().any(|h| h == runtime_handler)
        {
            let known: Vec<String> = std::iter::once("\"\"".to_owned())
                .chain(self.runtime_handlers.iter().map(|h| format!("{h:?}")))
                .collect();
            return Err(invalid(format!(
                "unknown runtime handler {runtime_handler:?} (this node has {})",
                known.join(", ")
            )));
        }

        let linux = config.linux.clone().unwrap_or_default();
        let ns = linux
            .security_context
            .as_ref()
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_default();
        let mode = |m: i32| cri::NamespaceMode::try_from(m).unwrap_or(cri::NamespaceMode::Pod);
        for (kind, m) in [("network", ns.network), ("ipc", ns.ipc), ("pid", ns.pid)] {
            if mode(m) == cri::NamespaceMode::Target {
                return Err(invalid(format!(
                    "{kind} namespace mode TARGET is for containers, not pod sandboxes"
                )));
            }
        }
        // Validated by the CRI's rules; a valid POD request is refused there until
        // bungeo implements it (USER_NAMESPACES_IMPLEMENTED).
        crate::userns::validate(ns.userns_options.as_ref()).map_err(invalid)?;
        let host_network = mode(ns.network) == cri::NamespaceMode::Node;
        let host_ipc = mode(ns.ipc) == cri::NamespaceMode::Node;
        let shared_pid = mode(ns.pid) == cri::NamespaceMode::Pod;

        validate_sysctls(&linux.sysctls, host_ipc, host_network)
            .map_err(|e| Error::runtime(format!("pod {name}"), e))?;
        self.check_cgroup_parent(&linux.cgroup_parent)
            .map_err(|e| invalid(e.to_string()))?;
        validate_hostname(&config.hostname).map_err(|e| invalid(e.to_string()))?;
        if host_network && !config.hostname.is_empty() {
            // The pod shares the node's uts namespace: it cannot be named. containerd puts the
            // name into the sandbox's spec and runc refuses it; kubelet sends none for these.
            return Err(Error::Refused(format!(
                "pod {name}: unable to set hostname without a private UTS namespace: a pod on \
                 the node's network has the node's hostname"
            )));
        }
        let resolv_conf =
            render_resolv_conf(config.dns_config.as_ref()).map_err(|e| invalid(e.to_string()))?;
        // A pod on the node's network (which asks for no name: refused above) has the node's.
        let hostname = if config.hostname.is_empty() {
            self.node.node_hostname()?
        } else {
            config.hostname.clone()
        };
        Ok(Plan {
            name,
            hostname,
            host_network,
            host_ipc,
            shared_pid,
            resolv_conf,
        })
    }

    fn check_cgroup_parent(&self, parent: &str) -> Result<()> {
        if parent.is_empty() {
            return Ok(());
        }
        match self.cgroup_driver {
            CgroupDriver::Cgroupfs => cgroupfs_path(parent, "pod")
                .map(drop)
                .map_err(|e| Error::InvalidArgument(format!("cgroup_parent: {e}"))),
            CgroupDriver::Systemd => {
                if parent.ends_with(".slice") && !parent.contains('/') {
                    Ok(())
                } else {
                    Err(Error::InvalidArgument(format!(
                        "cgroup_parent {parent:?} is not a systemd slice (the systemd cgroup \
                         driver is configured)"
                    )))
                }
            }
        }
    }

    fn reserve(&self, name: &str, id: &str) -> Result<NameReservation<'_, Index>> {
        let mut index = lock(&self.index);
        if let Some(owner) = index.names.get(name) {
            return Err(Error::AlreadyExists(format!(
                "pod sandbox name {name:?} is reserved for pod sandbox {owner}"
            )));
        }
        Ok(NameReservation::take(&self.index, &mut index, name, id))
    }

    /// RunPodSandbox: creates a ready sandbox and returns its id. On failure nothing of it is
    /// left: no pins, no mount, no directory, no record.
    pub fn run(&self, request: &cri::RunPodSandboxRequest) -> Result<String> {
        let config = request.config.as_ref().ok_or_else(|| {
            Error::InvalidArgument("RunPodSandbox: config is required".to_owned())
        })?;
        let plan = self.plan(config, &request.runtime_handler)?;
        let id = ids::generate();
        let _span = info_span!("pod", pod_id = %id).entered();
        let reservation = self.reserve(&plan.name, &id)?;
        let mut record = self.begin(&id, request, config, &plan)?;
        self.records.put_sandbox(&record)?;
        let built = self.build(&mut record, &plan).and_then(|()| {
            record.phase = SandboxPhase::Ready;
            self.records.put_sandbox(&record)
        });
        if let Err(e) = built {
            self.roll_back(&mut record);
            return Err(e);
        }
        reservation.keep();
        info!(name = %plan.name, "pod sandbox is ready");
        lock(&self.index)
            .slots
            .insert(id.clone(), Arc::new(Mutex::new(Some(record))));
        Ok(id)
    }

    /// The record of a sandbox about to be built, in the `creating` phase, with the network it
    /// will get (not yet added): a crash from the moment it is committed leads to a DEL.
    fn begin(
        &self,
        id: &str,
        request: &cri::RunPodSandboxRequest,
        config: &cri::PodSandboxConfig,
        plan: &Plan,
    ) -> Result<SandboxRecord> {
        let mut record = self.new_record(id, request, config, plan);
        if !plan.host_network {
            let netns = record.ns_dir.join(NsKind::Net.proc_name());
            record.network = Some(self.network.prepare(id, &netns, config)?);
        }
        Ok(record)
    }

    /// The record of a sandbox about to be built, in the `creating` phase.
    fn new_record(
        &self,
        id: &str,
        request: &cri::RunPodSandboxRequest,
        config: &cri::PodSandboxConfig,
        plan: &Plan,
    ) -> SandboxRecord {
        SandboxRecord {
            id: id.to_owned(),
            phase: SandboxPhase::Creating,
            created_at: now_ns(),
            config: config.clone(),
            runtime_handler: request.runtime_handler.clone(),
            hostname: plan.hostname.clone(),
            cgroup_parent: config
                .linux
                .as_ref()
                .map(|l| l.cgroup_parent.clone())
                .unwrap_or_default(),
            dir: self.sandboxes_dir.join(id),
            ns_dir: self.ns_dir.join(id),
            namespaces: NamespacePins::default(),
            shm: None,
            infra: None,
            network: None,
        }
    }

    /// The steps of creation, in the order a crash may interrupt them.
    fn build(&self, record: &mut SandboxRecord, plan: &Plan) -> Result<()> {
        self.write_files(record, plan)?;
        if !plan.host_ipc {
            record.shm = Some(self.mount_shm(record)?);
        }
        record.namespaces = self.pin(record, plan)?;
        if let Some(net) = record.network.as_mut() {
            self.network.add(net)?;
            if !net.ips.is_empty() {
                write_file(
                    &record.dir.join(HOSTS_FILE),
                    &render_hosts(&plan.hostname, &net.ips),
                )?;
            }
        }
        if plan.shared_pid {
            // Recorded before anything else: a crash from here on kills it at the next start.
            let infra = self.start_infra(record)?;
            record.infra = Some(infra);
            self.records.put_sandbox(record)?;
            let pinned =
                namespaces::pin_pid_namespace_of(&record.ns_dir, infra.pid).map_err(|e| {
                    Error::runtime(
                        format!("pod sandbox {}: pin its pid namespace", record.id),
                        e,
                    )
                })?;
            record.namespaces.pid = Some(pinned);
        }
        Ok(())
    }

    /// Runs `bungeo-shim infra`, which returns once the infra runs, detached, and its pid is
    /// in the pidfile.
    fn start_infra(&self, record: &SandboxRecord) -> Result<InfraProcess> {
        let failed = |message: String| Error::Shim {
            what: format!("pod sandbox {}: start its infra process", record.id),
            message,
        };
        let pidfile = record.dir.join(INFRA_PIDFILE);
        let output = std::process::Command::new(&self.shim)
            .arg("infra")
            .arg("--pidfile")
            .arg(&pidfile)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| failed(format!("run {}: {e}", self.shim.display())))?;
        if !output.status.success() {
            return Err(failed(format!(
                "{} infra: {}: {}",
                self.shim.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        let text = std::fs::read_to_string(&pidfile)
            .map_err(|e| Error::io("read infra pidfile", &pidfile, e))?;
        let pid: i32 = text
            .trim()
            .parse()
            .map_err(|_| failed(format!("{} holds no pid: {text:?}", pidfile.display())))?;
        let start_time = proc_start_time(pid)
            .ok_or_else(|| failed(format!("infra process {pid} exited at once")))?;
        debug!(pid, "infra process started");
        Ok(InfraProcess { pid, start_time })
    }

    fn write_files(&self, record: &SandboxRecord, plan: &Plan) -> Result<()> {
        create_dir(&record.dir, SANDBOX_DIR_MODE, false)?;
        write_file(
            &record.dir.join(HOSTNAME_FILE),
            &render_hostname(&plan.hostname),
        )?;
        // A pod on the node's network sees the node's names, as with containerd and CRI-O.
        let hosts = if plan.host_network {
            NodeFiles::read_or_empty(&self.node.hosts)?
        } else {
            render_hosts(&plan.hostname, &[])
        };
        write_file(&record.dir.join(HOSTS_FILE), &hosts)?;
        let resolv_conf = match &plan.resolv_conf {
            Some(text) => text.clone(),
            None => NodeFiles::read_or_empty(&self.node.resolv_conf)?,
        };
        write_file(&record.dir.join(RESOLV_CONF_FILE), &resolv_conf)
    }

    fn mount_shm(&self, record: &SandboxRecord) -> Result<PathBuf> {
        let shm = record.dir.join(SHM_DIR);
        create_dir(&shm, 0o755, false)?;
        rootfs::mount_tmpfs(&shm, SHM_SIZE)
            .map_err(|e| Error::runtime(format!("pod sandbox {}: mount /dev/shm", record.id), e))?;
        Ok(shm)
    }

    fn pin(&self, record: &SandboxRecord, plan: &Plan) -> Result<NamespacePins> {
        let mut kinds = Vec::new();
        if !plan.host_network {
            // The pod's hostname lives in its uts namespace, which follows the network: a pod
            // on the node's network has the node's name (as in Kubernetes).
            kinds.extend([NsKind::Net, NsKind::Uts]);
        }
        if !plan.host_ipc {
            kinds.push(NsKind::Ipc);
        }
        let hostname =
            (!plan.host_network && !plan.hostname.is_empty()).then_some(plan.hostname.as_str());
        // A pod with its own user namespace pins it first, owning the others (api/src/userns.rs).
        let userns = crate::userns::pin_for_pod(&record.config, &record.ns_dir, &kinds, hostname)?;
        let pinned = match userns {
            Some(pinned) => pinned,
            None if kinds.is_empty() => return Ok(NamespacePins::default()),
            None => namespaces::pin(&record.ns_dir, &kinds, hostname).map_err(|e| {
                Error::runtime(format!("pod sandbox {}: pin namespaces", record.id), e)
            })?,
        };
        Ok(NamespacePins {
            net: pinned.net,
            ipc: pinned.ipc,
            uts: pinned.uts,
            pid: None,
        })
    }

    /// Undoes a failed creation. What cannot be undone stays with its `creating` record, for
    /// the next start to finish.
    fn roll_back(&self, record: &mut SandboxRecord) {
        kill_infra(record);
        let released = self.release_network(record);
        match released.and(self.teardown(&record.id, &record.dir, &record.ns_dir)) {
            Ok(()) => {
                if let Err(e) = self.records.delete_sandbox(&record.id) {
                    warn!(error = %e, "rolling back a failed RunPodSandbox");
                }
            }
            Err(e) => warn!(
                error = %e,
                "rolling back a failed RunPodSandbox; the next start of bungeo retries"
            ),
        }
    }

    /// DEL of the sandbox's network unless it is done already; marks it torn down in `record`
    /// (the caller commits it). A plugin binary or a recorded config that cannot be found or
    /// read is logged and taken as done (see the module doc); a plugin's failure is returned.
    fn release_network(&self, record: &mut SandboxRecord) -> Result<()> {
        let Some(net) = record.network.as_mut() else {
            return Ok(());
        };
        if net.torn_down {
            return Ok(());
        }
        match self.network.del(net) {
            Ok(()) => debug!(network = %net.name, "pod network deleted"),
            Err(
                e @ (bungeo_runtime::Error::CniPluginNotFound { .. }
                | bungeo_runtime::Error::CniConfig(_)),
            ) => warn!(
                network = %net.name,
                error = %e,
                "cannot delete the pod network; taking it as gone (an IP allocation may be left)"
            ),
            Err(e) => {
                return Err(Error::FailedPrecondition(format!(
                    "pod sandbox {}: tear down network {:?}: {e}",
                    record.id, net.name
                )));
            }
        }
        net.torn_down = true;
        Ok(())
    }

    /// Removes a sandbox's pins, shm mount and directory. Each step accepts what is already
    /// gone, so it can be repeated after any crash, and each is tried even when another
    /// failed; the first failure is returned.
    fn teardown(&self, id: &str, dir: &Path, ns_dir: &Path) -> Result<()> {
        let mut first_error = None;
        // Nothing can be pinned below a directory that does not exist (or is no directory).
        if ns_dir.is_dir()
            && let Err(e) = namespaces::unpin(ns_dir)
        {
            first_error.get_or_insert(Error::runtime(
                format!("pod sandbox {id}: unpin namespaces"),
                e,
            ));
        }
        match rootfs::unmount(&dir.join(SHM_DIR)) {
            Ok(()) => match std::fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    first_error.get_or_insert(Error::io("remove pod sandbox directory", dir, e));
                }
            },
            // The directory stays: removing it would empty the still-mounted tmpfs and fail.
            Err(e) => {
                first_error.get_or_insert(Error::runtime(
                    format!("pod sandbox {id}: unmount /dev/shm"),
                    e,
                ));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The sandbox `query` names (a full id or a unique prefix), if it exists.
    fn lookup(&self, query: &str) -> Result<Option<(String, Slot)>> {
        let index = lock(&self.index);
        let Some(id) = ids::resolve(KIND, query, index.slots.keys().map(String::as_str))? else {
            return Ok(None);
        };
        Ok(index
            .slots
            .get(id)
            .map(|slot| (id.to_owned(), Arc::clone(slot))))
    }

    /// StopPodSandbox: marks the sandbox not ready. Its namespaces stay pinned until removal.
    /// Stopping a stopped or unknown sandbox is fine (the CRI asks for idempotence).
    pub fn stop(&self, query: &str) -> Result<()> {
        let Some((id, slot)) = self.lookup(query)? else {
            debug!(pod_id = %query, "StopPodSandbox of an unknown pod sandbox: nothing to do");
            return Ok(());
        };
        let _span = info_span!("pod", pod_id = %id).entered();
        let mut guard = lock(&slot);
        let Some(record) = guard.as_mut() else {
            return Ok(());
        };
        // Its containers are stopped by now, so nothing of the pod runs in its pid namespace.
        kill_infra(record);
        let mut updated = record.clone();
        if updated.phase == SandboxPhase::Ready {
            updated.phase = SandboxPhase::NotReady;
            info!("pod sandbox stopped");
        }
        // Its namespace stays pinned until removal, but its network goes now, as with
        // containerd: a stopped pod holds no IP.
        let released = self.release_network(&mut updated);
        if updated != *record {
            self.records.put_sandbox(&updated)?;
            *record = updated;
        }
        released
    }

    fn set_phase(&self, record: &mut SandboxRecord, phase: SandboxPhase) -> Result<()> {
        let mut updated = record.clone();
        updated.phase = phase;
        self.records.put_sandbox(&updated)?;
        *record = updated;
        Ok(())
    }

    /// RemovePodSandbox: stops the sandbox if needed, unpins its namespaces, unmounts its shm,
    /// removes its directory and, last, its record. Removing an unknown sandbox is fine.
    pub fn remove(&self, query: &str) -> Result<()> {
        let Some((id, slot)) = self.lookup(query)? else {
            debug!(pod_id = %query, "RemovePodSandbox of an unknown pod sandbox: nothing to do");
            return Ok(());
        };
        let _span = info_span!("pod", pod_id = %id).entered();
        let mut guard = lock(&slot);
        let Some(record) = guard.as_mut() else {
            return Ok(());
        };
        if record.phase == SandboxPhase::Ready {
            // Should the removal be cut short, the pod must not look ready with pieces gone.
            self.set_phase(record, SandboxPhase::NotReady)?;
        }
        kill_infra(record);
        let mut updated = record.clone();
        let released = self.release_network(&mut updated);
        if updated != *record {
            self.records.put_sandbox(&updated)?;
            *record = updated;
        }
        released?;
        self.teardown(&record.id, &record.dir, &record.ns_dir)?;
        self.records.delete_sandbox(&record.id)?;
        let name = record.config.metadata.as_ref().map(reservation_name);
        *guard = None;
        drop(guard);
        let mut index = lock(&self.index);
        index.slots.remove(&id);
        if let Some(name) = name
            && index.names.get(&name) == Some(&id)
        {
            index.names.remove(&name);
        }
        info!("pod sandbox removed");
        Ok(())
    }

    /// The daemon's pod networking.
    pub fn network(&self) -> &PodNetworks {
        &self.network
    }

    /// The records database, which the containers share (one redb file per daemon).
    pub fn records(&self) -> &Records {
        &self.records
    }

    /// The record of the sandbox `query` names (a full id or a unique prefix); NotFound when
    /// there is none.
    pub fn record(&self, query: &str) -> Result<SandboxRecord> {
        let not_found = || Error::NotFound(format!("pod sandbox {query} not found"));
        let (_, slot) = self.lookup(query)?.ok_or_else(not_found)?;
        let record = lock(&slot).clone();
        record.ok_or_else(not_found)
    }

    /// The records `keep` accepts, oldest first; only those are cloned (the stats calls).
    pub fn records_where(&self, keep: impl Fn(&SandboxRecord) -> bool) -> Vec<SandboxRecord> {
        let slots: Vec<Slot> = lock(&self.index).slots.values().cloned().collect();
        let mut out: Vec<SandboxRecord> = slots
            .iter()
            .filter_map(|slot| lock(slot).as_ref().filter(|r| keep(r)).cloned())
            .collect();
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        out
    }

    /// PodSandboxStatus; `verbose` adds `info["info"]`, a JSON document with the sandbox's
    /// pins, files, cgroup parent, hostname and config.
    pub fn status(&self, query: &str, verbose: bool) -> Result<cri::PodSandboxStatusResponse> {
        let record = self.record(query)?;
        let mut info = HashMap::new();
        if verbose {
            info.insert("info".to_owned(), verbose_info(&record).to_string());
        }
        Ok(cri::PodSandboxStatusResponse {
            status: Some(cri_status(&record)),
            info,
            // The service adds the container statuses, which the sandboxes do not know.
            containers_statuses: Vec::new(),
            timestamp: now_ns(),
        })
    }

    /// ListPodSandbox, oldest first.
    pub fn list(&self, filter: Option<&cri::PodSandboxFilter>) -> Vec<cri::PodSandbox> {
        let slots: Vec<Slot> = lock(&self.index).slots.values().cloned().collect();
        let mut out: Vec<cri::PodSandbox> = slots
            .iter()
            .filter_map(|slot| lock(slot).as_ref().map(cri_sandbox))
            .filter(|s| filters::sandbox_matches(filter, &s.id, s.state(), &s.labels))
            .collect();
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        out
    }
}

/// Field 22 (starttime) of `/proc/<pid>/stat`, `None` when there is no such process.
fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The comm (field 2) may hold spaces and parentheses: count from the last ')'.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the infra process still runs (the same process, not a later one with its pid).
pub fn infra_running(infra: &InfraProcess) -> bool {
    proc_start_time(infra.pid) == Some(infra.start_time)
}

/// Kills a sandbox's infra process, if it has one that still runs.
fn kill_infra(record: &SandboxRecord) {
    let Some(infra) = record.infra else {
        return;
    };
    if !infra_running(&infra) {
        return;
    }
    match nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(infra.pid),
        nix::sys::signal::Signal::SIGKILL,
    ) {
        Ok(()) => debug!(pid = infra.pid, "infra process killed"),
        Err(e) => warn!(pid = infra.pid, error = %e, "could not kill the infra process"),
    }
}

fn cri_state(phase: SandboxPhase) -> cri::PodSandboxState {
    match phase {
        SandboxPhase::Ready => cri::PodSandboxState::SandboxReady,
        SandboxPhase::Creating | SandboxPhase::NotReady => cri::PodSandboxState::SandboxNotready,
    }
}

fn cri_sandbox(record: &SandboxRecord) -> cri::PodSandbox {
    cri::PodSandbox {
        id: record.id.clone(),
        metadata: record.config.metadata.clone(),
        state: cri_state(record.phase).into(),
        created_at: record.created_at,
        labels: record.config.labels.clone(),
        annotations: record.config.annotations.clone(),
        runtime_handler: record.runtime_handler.clone(),
    }
}

fn cri_status(record: &SandboxRecord) -> cri::PodSandboxStatus {
    let requested = record
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default();
    cri::PodSandboxStatus {
        id: record.id.clone(),
        metadata: record.config.metadata.clone(),
        state: cri_state(record.phase).into(),
        created_at: record.created_at,
        network: Some(network_status(record)),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: Some(cri::NamespaceOption {
                    network: requested.network,
                    pid: requested.pid,
                    ipc: requested.ipc,
                    ..Default::default()
                }),
            }),
        }),
        labels: record.config.labels.clone(),
        annotations: record.config.annotations.clone(),
        runtime_handler: record.runtime_handler.clone(),
    }
}

/// The pod's IPs while it is ready: the first of its CNI result (IPv4 first) and the others.
/// A pod on the node's network has none (kubelet uses the node's), nor has a stopped pod, as
/// with containerd.
fn network_status(record: &SandboxRecord) -> cri::PodSandboxNetworkStatus {
    let ips = match &record.network {
        Some(net) if record.phase == SandboxPhase::Ready && !net.torn_down => net.ips.as_slice(),
        _ => &[],
    };
    cri::PodSandboxNetworkStatus {
        ip: ips.first().cloned().unwrap_or_default(),
        additional_ips: ips
            .iter()
            .skip(1)
            .map(|ip| cri::PodIp { ip: ip.clone() })
            .collect(),
    }
}

fn verbose_info(record: &SandboxRecord) -> serde_json::Value {
    json!({
        "id": record.id,
        "phase": record.phase,
        "sandboxDir": record.dir,
        "namespaces": record.namespaces,
        "shm": record.shm,
        "files": {
            "hostname": record.dir.join(HOSTNAME_FILE),
            "hosts": record.dir.join(HOSTS_FILE),
            "resolvConf": record.dir.join(RESOLV_CONF_FILE),
        },
        "hostname": record.hostname,
        "cgroupParent": record.cgroup_parent,
        "runtimeHandler": record.runtime_handler,
        "network": record.network.as_ref().map(|n| json!({
            "name": n.name,
            "ifname": n.args.ifname,
            "netns": n.args.netns,
            "ips": n.ips,
            "result": n.result,
            "tornDown": n.torn_down,
            "config": serde_json::from_str::<serde_json::Value>(&n.conflist).ok(),
        })),
        "config": record.config,
    })
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// A sandbox root, state dir and node files in a temporary directory; whatever is still
    /// mounted below it is detached on drop, so a failing test leaves nothing behind.
    struct Env {
        dir: tempfile::TempDir,
    }

    impl Env {
        fn new() -> Env {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(
                dir.path().join("node-resolv.conf"),
                "nameserver 192.0.2.53\n",
            )
            .unwrap();
            std::fs::write(
                dir.path().join("node-hosts"),
                "127.0.0.1 localhost node-1\n",
            )
            .unwrap();
            std::fs::write(dir.path().join("node-hostname"), "node-1\n").unwrap();
            let env = Env { dir };
            env.install_fake_network();
            env
        }

        /// A network of one fake plugin, `fakenet`, that "allocates" an address per pod as a
        /// file under `cni-state/alloc/` (left there if its ADD fails after it, as a real IPAM
        /// would), frees it on DEL, and logs every call as `COMMAND id netns` to
        /// `cni-state/log`. `cni-state/fail-add` makes its ADD fail.
        fn install_fake_network(&self) {
            let base = self.dir.path();
            let state = base.join("cni-state");
            std::fs::create_dir_all(state.join("alloc")).unwrap();
            std::fs::create_dir_all(base.join("cni-bin")).unwrap();
            std::fs::create_dir_all(base.join("cni-conf")).unwrap();
            let script = format!(
                r#"#!/bin/sh
state="{state}"
cat > /dev/null
echo "$CNI_COMMAND $CNI_CONTAINERID $CNI_NETNS" >> "$state/log"
case "$CNI_COMMAND" in
ADD)
  n=$(ls "$state/alloc" | wc -l)
  n=$((n + 2))
  echo "$n" > "$state/alloc/$CNI_CONTAINERID"
  if [ -e "$state/fail-add" ]; then
    echo '{{"cniVersion":"1.0.0","code":11,"msg":"fakenet is out of addresses","details":"try later"}}'
    exit 1
  fi
  echo '{{"cniVersion":"1.0.0","interfaces":[{{"name":"eth0","sandbox":"'"$CNI_NETNS"'"}}],"ips":[{{"address":"fd77::'$n'/64","interface":0}},{{"address":"10.77.0.'$n'/24","gateway":"10.77.0.1","interface":0}}]}}'
  ;;
DEL)
  if [ -e "$state/fail-del" ]; then
    echo '{{"cniVersion":"1.0.0","code":11,"msg":"fakenet cannot let go"}}'
    exit 1
  fi
  rm -f "$state/alloc/$CNI_CONTAINERID"
  ;;
esac
"#,
                state = state.display()
            );
            let plugin = base.join("cni-bin/fakenet");
            std::fs::write(&plugin, script).unwrap();
            std::fs::set_permissions(&plugin, Permissions::from_mode(0o755)).unwrap();
            std::fs::write(
                base.join("cni-conf/10-fake.conflist"),
                r#"{"cniVersion":"1.0.0","name":"fake","plugins":[{"type":"fakenet"}]}"#,
            )
            .unwrap();
        }

        /// The fake plugin's calls, `COMMAND id netns` each.
        fn cni_calls(&self) -> Vec<String> {
            std::fs::read_to_string(self.dir.path().join("cni-state/log"))
                .unwrap_or_default()
                .lines()
                .map(|l| l.trim_end().to_owned())
                .collect()
        }

        /// Addresses the fake plugin holds, by sandbox id.
        fn allocations(&self) -> Vec<String> {
            self.entries("cni-state/alloc")
        }

        fn settings(&self) -> SandboxSettings {
            let base = self.dir.path();
            SandboxSettings {
                root: base.join("root"),
                state: base.join("state"),
                cgroup_driver: CgroupDriver::Cgroupfs,
                runtime_handlers: vec!["fast".to_owned()],
                node: NodeFiles {
                    resolv_conf: base.join("node-resolv.conf"),
                    hosts: base.join("node-hosts"),
                    hostname: base.join("node-hostname"),
                },
                // Unit tests make no infra (their pods use PID mode CONTAINER): the e2e
                // suites cover it with the real binary.
                shim: base.join("no-bungeo-shim"),
                network: NetworkSettings {
                    conf_dir: base.join("cni-conf"),
                    bin_dirs: vec![base.join("cni-bin")],
                    default_bridge: "bgtunused0".to_owned(),
                    default_subnet: "10.250.0.0/24".to_owned(),
                    plugin_timeout: std::time::Duration::from_secs(10),
                    data_dir: base.join("root/cni/networks"),
                },
            }
        }

        fn open(&self) -> Sandboxes {
            Sandboxes::open(self.settings()).unwrap()
        }

        fn base(&self) -> PathBuf {
            self.dir.path().canonicalize().unwrap()
        }

        fn mounts(&self) -> Vec<PathBuf> {
            let base = self.base();
            mount_points()
                .unwrap()
                .into_iter()
                .filter(|m| m.starts_with(&base))
                .collect()
        }

        fn entries(&self, sub: &str) -> Vec<String> {
            match std::fs::read_dir(self.dir.path().join(sub)) {
                Ok(entries) => entries
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect(),
                Err(_) => Vec::new(),
            }
        }

        /// Asserts that nothing of any sandbox is left: no mount, directory, pin or record.
        fn assert_empty(&self, sandboxes: &Sandboxes) {
            assert_eq!(self.allocations(), Vec::<String>::new());
            assert_eq!(self.mounts(), Vec::<PathBuf>::new());
            assert_eq!(self.entries("root/sandboxes"), Vec::<String>::new());
            assert_eq!(self.entries("state/ns"), Vec::<String>::new());
            assert_eq!(sandboxes.records.sandboxes().unwrap(), vec![]);
            assert!(sandboxes.list(None).is_empty());
        }
    }

    impl Drop for Env {
        fn drop(&mut self) {
            let mut mounts = self.mounts();
            mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
            for m in mounts {
                let _ = rootfs::unmount(&m);
            }
        }
    }

    fn pod_config(name: &str) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.to_owned(),
                uid: format!("uid-{name}"),
                namespace: "default".to_owned(),
                attempt: 0,
            }),
            hostname: format!("{name}-host"),
            labels: HashMap::from([
                ("app".to_owned(), name.to_owned()),
                ("tier".to_owned(), "test".to_owned()),
            ]),
            annotations: HashMap::from([("note".to_owned(), "unchanged".to_owned())]),
            dns_config: Some(cri::DnsConfig {
                servers: vec!["10.96.0.10".to_owned()],
                searches: vec!["default.svc.cluster.local".to_owned()],
                options: vec!["ndots:5".to_owned()],
            }),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: format!("/kubepods/besteffort/pod{name}"),
                sysctls: HashMap::from([(
                    "net.ipv4.ip_unprivileged_port_start".to_owned(),
                    "0".to_owned(),
                )]),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        pid: cri::NamespaceMode::Container as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn with_modes(
        mut config: cri::PodSandboxConfig,
        network: i32,
        ipc: i32,
    ) -> cri::PodSandboxConfig {
        let linux = config.linux.get_or_insert_with(Default::default);
        linux.sysctls.clear();
        if network == NODE {
            // kubelet names no pod on the node's network.
            config.hostname.clear();
        }
        let linux = config.linux.get_or_insert_with(Default::default);
        linux.security_context = Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network,
                ipc,
                pid: cri::NamespaceMode::Container as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
        config
    }

    fn request(config: cri::PodSandboxConfig) -> cri::RunPodSandboxRequest {
        cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        }
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    const NODE: i32 = cri::NamespaceMode::Node as i32;
    const POD: i32 = cri::NamespaceMode::Pod as i32;

    #[test]
    fn run_builds_a_ready_sandbox_that_remove_takes_apart() {
        let env = Env::new();
        let sandboxes = env.open();
        let id = sandboxes.run(&request(pod_config("web"))).unwrap();
        assert!(ids::is_full_id(&id), "{id}");

        let record = sandboxes.records.sandbox(&id).unwrap().unwrap();
        assert_eq!(record.phase, SandboxPhase::Ready);
        assert_eq!(record.cgroup_parent, "/kubepods/besteffort/podweb");
        let dir = env.base().join("root/sandboxes").join(&id);
        let ns = env.base().join("state/ns").join(&id);
        assert_eq!(record.dir, dir);
        assert_eq!(read(&dir.join("hostname")), "web-host\n");
        // Written after the ADD: the pod's name on its IPs, IPv4 first.
        assert_eq!(
            read(&dir.join("hosts")),
            render_hosts("web-host", &["10.77.0.2".to_owned(), "fd77::2".to_owned()])
        );
        assert!(read(&dir.join("hosts")).ends_with("10.77.0.2\tweb-host\nfd77::2\tweb-host\n"));
        assert_eq!(
            env.cni_calls(),
            vec![format!("ADD {id} {}", ns.join("net").display())]
        );
        assert_eq!(
            read(&dir.join("resolv.conf")),
            "search default.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
        let mode = std::fs::metadata(dir.join("hosts"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);

        let mounts = env.mounts();
        for path in [
            ns.join("net"),
            ns.join("ipc"),
            ns.join("uts"),
            dir.join("shm"),
        ] {
            assert!(
                mounts.contains(&path),
                "{} not mounted: {mounts:?}",
                path.display()
            );
        }
        assert_eq!(mounts.len(), 4, "{mounts:?}");
        let out = Command::new("nsenter")
            .arg(format!("--uts={}", ns.join("uts").display()))
            .arg("hostname")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "web-host\n");

        let status = sandboxes.status(&id, true).unwrap();
        let s = status.status.unwrap();
        assert_eq!(s.id, id);
        assert_eq!(s.state(), cri::PodSandboxState::SandboxReady);
        assert_eq!(s.created_at, record.created_at);
        assert!(s.created_at > 0);
        assert_eq!(s.metadata.unwrap().name, "web");
        assert_eq!(s.labels["app"], "web");
        assert_eq!(s.annotations["note"], "unchanged");
        let network = s.network.unwrap();
        assert_eq!(network.ip, "10.77.0.2");
        assert_eq!(
            network.additional_ips,
            vec![cri::PodIp {
                ip: "fd77::2".to_owned()
            }]
        );
        let options = s.linux.unwrap().namespaces.unwrap().options.unwrap();
        assert_eq!(options.network, POD);
        let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
        assert_eq!(info["namespaces"]["net"], ns.join("net").to_str().unwrap());
        assert_eq!(info["namespaces"]["uts"], ns.join("uts").to_str().unwrap());
        assert_eq!(info["shm"], dir.join("shm").to_str().unwrap());
        assert_eq!(info["cgroupParent"], "/kubepods/besteffort/podweb");
        assert_eq!(info["hostname"], "web-host");
        assert_eq!(info["config"]["metadata"]["uid"], "uid-web");
        assert_eq!(info["network"]["name"], "fake");
        assert_eq!(info["network"]["ifname"], "eth0");
        assert_eq!(
            info["network"]["result"]["ips"][1]["address"],
            "10.77.0.2/24"
        );
        assert!(sandboxes.status(&id, false).unwrap().info.is_empty());

        sandboxes.stop(&id).unwrap();
        let stopped = sandboxes.status(&id, false).unwrap().status.unwrap();
        assert_eq!(stopped.state(), cri::PodSandboxState::SandboxNotready);
        // The network goes at stop, as with containerd: no IP any more.
        assert_eq!(
            stopped.network.unwrap(),
            cri::PodSandboxNetworkStatus::default()
        );
        assert_eq!(env.allocations(), Vec::<String>::new());
        // Stopping keeps the namespaces for the removal.
        assert_eq!(env.mounts().len(), 4);
        sandboxes.stop(&id).unwrap();
        sandboxes.remove(&id).unwrap();
        env.assert_empty(&sandboxes);
        // One DEL: neither the second stop nor the removal repeated it.
        let calls = env.cni_calls();
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert_eq!(calls[1], format!("DEL {id} {}", ns.join("net").display()));
        assert!(matches!(
            sandboxes.status(&id, false),
            Err(Error::NotFound(_))
        ));
        sandboxes.remove(&id).unwrap();
        sandboxes.stop(&id).unwrap();
    }

    #[test]
    fn remove_of_a_ready_sandbox_stops_it_first() {
        let env = Env::new();
        let sandboxes = env.open();
        let id = sandboxes.run(&request(pod_config("direct"))).unwrap();
        sandboxes.remove(&id[..12]).unwrap();
        env.assert_empty(&sandboxes);
    }

    #[test]
    fn node_namespaces_are_not_pinned() {
        let env = Env::new();
        let sandboxes = env.open();
        let base = env.base();

        let mut named = with_modes(pod_config("named"), NODE, NODE);
        named.hostname = "named-host".into();
        let err = sandboxes.run(&request(named)).unwrap_err();
        assert!(matches!(err, Error::Refused(_)), "{err:?}");
        assert!(err.to_string().contains("without a private UTS"), "{err}");
        env.assert_empty(&sandboxes);

        let host = sandboxes
            .run(&request(with_modes(pod_config("host"), NODE, NODE)))
            .unwrap();
        let record = sandboxes.records.sandbox(&host).unwrap().unwrap();
        assert_eq!(record.namespaces, NamespacePins::default());
        assert_eq!(record.shm, None);
        assert!(!base.join("state/ns").join(&host).exists());
        assert!(!record.dir.join("shm").exists());
        // On the node's network the pod sees the node's names.
        assert_eq!(
            read(&record.dir.join("hosts")),
            "127.0.0.1 localhost node-1\n"
        );
        // ... and has the node's name, whatever the request said.
        assert_eq!(read(&record.dir.join("hostname")), "node-1\n");
        assert_eq!(record.hostname, "node-1");
        assert_eq!(record.network, None);
        let status = sandboxes.status(&host, false).unwrap().status.unwrap();
        assert_eq!(
            status.network.unwrap(),
            cri::PodSandboxNetworkStatus::default()
        );
        assert_eq!(env.mounts(), Vec::<PathBuf>::new());

        let ipc_only = sandboxes
            .run(&request(with_modes(pod_config("ipc-only"), NODE, POD)))
            .unwrap();
        let record = sandboxes.records.sandbox(&ipc_only).unwrap().unwrap();
        let ns = base.join("state/ns").join(&ipc_only);
        assert_eq!(
            record.namespaces,
            NamespacePins {
                net: None,
                ipc: Some(ns.join("ipc")),
                uts: None,
                pid: None,
            }
        );
        assert_eq!(record.shm, Some(record.dir.join("shm")));

        let net_only = sandboxes
            .run(&request(with_modes(pod_config("net-only"), POD, NODE)))
            .unwrap();
        let record = sandboxes.records.sandbox(&net_only).unwrap().unwrap();
        assert!(record.namespaces.net.is_some() && record.namespaces.uts.is_some());
        assert!(record.namespaces.ipc.is_none() && record.shm.is_none());
        let status = sandboxes.status(&net_only, false).unwrap().status.unwrap();
        let options = status.linux.unwrap().namespaces.unwrap().options.unwrap();
        assert_eq!((options.network, options.ipc), (POD, NODE));

        for id in [&host, &ipc_only, &net_only] {
            sandboxes.remove(id).unwrap();
        }
        env.assert_empty(&sandboxes);
        // Only the pod with its own network namespace met the plugin.
        let calls = env.cni_calls();
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert!(
            calls.iter().all(|c| c.contains(net_only.as_str())),
            "{calls:?}"
        );
    }

    #[test]
    fn no_dns_config_copies_the_nodes_resolv_conf_and_no_hostname_takes_the_nodes() {
        let env = Env::new();
        let sandboxes = env.open();
        let mut config = pod_config("plain");
        config.dns_config = None;
        config.hostname.clear();
        let id = sandboxes.run(&request(config)).unwrap();
        let record = sandboxes.records.sandbox(&id).unwrap().unwrap();
        assert_eq!(
            read(&record.dir.join("resolv.conf")),
            "nameserver 192.0.2.53\n"
        );
        assert_eq!(read(&record.dir.join("hostname")), "node-1\n");
        sandboxes.remove(&id).unwrap();
    }

    #[test]
    fn invalid_requests_are_refused_before_anything_is_made() {
        let env = Env::new();
        let sandboxes = env.open();
        let invalid = |config: Option<cri::PodSandboxConfig>, handler: &str, needle: &str| {
            let err = sandboxes
                .run(&cri::RunPodSandboxRequest {
                    config,
                    runtime_handler: handler.to_owned(),
                })
                .unwrap_err();
            assert!(
                matches!(
                    crate::errors::status(&err).code(),
                    tonic::Code::InvalidArgument
                ),
                "{err:?}"
            );
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        };
        invalid(None, "", "config is required");
        let mut c = pod_config("x");
        c.metadata = None;
        invalid(Some(c), "", "metadata is required");
        for field in ["name", "namespace", "uid"] {
            let mut c = pod_config("x");
            let m = c.metadata.as_mut().unwrap();
            match field {
                "name" => m.name.clear(),
                "namespace" => m.namespace.clear(),
                _ => m.uid.clear(),
            }
            invalid(Some(c), "", &format!("metadata.{field} is required"));
        }
        invalid(
            Some(pod_config("x")),
            "kata",
            "unknown runtime handler \"kata\"",
        );
        let mut c = with_modes(pod_config("x"), NODE, POD);
        c.linux.as_mut().unwrap().sysctls =
            HashMap::from([("net.core.somaxconn".to_owned(), "1024".to_owned())]);
        invalid(Some(c), "", "net.core.somaxconn");
        let mut c = pod_config("x");
        c.linux.as_mut().unwrap().sysctls =
            HashMap::from([("kernel.panic".to_owned(), "1".to_owned())]);
        invalid(Some(c), "", "kernel.panic");
        let mut c = pod_config("x");
        c.linux.as_mut().unwrap().cgroup_parent = "/kubepods/../escape".to_owned();
        invalid(Some(c), "", "cgroup_parent");
        let mut c = pod_config("x");
        c.hostname = "two words".to_owned();
        invalid(Some(c), "", "hostname");
        let mut c = pod_config("x");
        c.dns_config.as_mut().unwrap().servers = vec!["1.1.1.1\nx".to_owned()];
        invalid(Some(c), "", "dns_config.servers[0]");
        let mut c = with_modes(pod_config("x"), POD, POD);
        let ns = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
        ns.namespace_options.as_mut().unwrap().pid = cri::NamespaceMode::Target as i32;
        invalid(Some(c.clone()), "", "TARGET");
        let ns = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
        let options = ns.namespace_options.as_mut().unwrap();
        options.pid = POD;
        options.userns_options = Some(cri::UserNamespace {
            mode: POD,
            ..Default::default()
        });
        invalid(Some(c), "", "userns_options");
        env.assert_empty(&sandboxes);

        // A listed handler is accepted and reported.
        let id = sandboxes
            .run(&cri::RunPodSandboxRequest {
                config: Some(pod_config("fast")),
                runtime_handler: "fast".to_owned(),
            })
            .unwrap();
        assert_eq!(
            sandboxes
                .status(&id, false)
                .unwrap()
                .status
                .unwrap()
                .runtime_handler,
            "fast"
        );
        sandboxes.remove(&id).unwrap();
    }

    #[test]
    fn the_same_metadata_twice_is_already_exists_until_removed() {
        let env = Env::new();
        let sandboxes = env.open();
        let first = sandboxes.run(&request(pod_config("twice"))).unwrap();
        let err = sandboxes.run(&request(pod_config("twice"))).unwrap_err();
        assert!(matches!(err, Error::AlreadyExists(_)), "{err:?}");
        assert!(err.to_string().contains(&first), "{err}");
        assert!(
            err.to_string().contains("twice_default_uid-twice_0"),
            "{err}"
        );
        // Stopped is not gone: the name stays taken.
        sandboxes.stop(&first).unwrap();
        assert!(sandboxes.run(&request(pod_config("twice"))).is_err());
        // Another attempt is another name.
        let mut next = pod_config("twice");
        next.metadata.as_mut().unwrap().attempt = 1;
        let second = sandboxes.run(&request(next)).unwrap();
        sandboxes.remove(&first).unwrap();
        let third = sandboxes.run(&request(pod_config("twice"))).unwrap();
        assert_eq!(sandboxes.list(None).len(), 2);
        for id in [second, third] {
            sandboxes.remove(&id).unwrap();
        }
        env.assert_empty(&sandboxes);
    }

    #[test]
    fn prefixes_filters_and_ambiguity() {
        let env = Env::new();
        let sandboxes = env.open();
        // 17 ids over 16 hex digits: at least two share their first character.
        let mut created = Vec::new();
        for i in 0..17 {
            let mut config = with_modes(pod_config(&format!("p{i}")), NODE, NODE);
            config
                .labels
                .insert("parity".to_owned(), (i % 2).to_string());
            created.push(sandboxes.run(&request(config)).unwrap());
        }
        let mut firsts: HashMap<char, usize> = HashMap::new();
        for id in &created {
            *firsts.entry(id.chars().next().unwrap()).or_default() += 1;
        }
        let (shared, count) = firsts.iter().find(|(_, n)| **n > 1).unwrap();
        let err = sandboxes.status(&shared.to_string(), false).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        assert!(
            err.to_string().contains(
                &format!("{shared:?} is ambiguous: it matches {count}").replace('\'', "\"")
            ),
            "{err}"
        );
        assert!(sandboxes.stop(&shared.to_string()).is_err());
        assert!(matches!(
            sandboxes.status("", false),
            Err(Error::InvalidArgument(_))
        ));
        let status = sandboxes.status(&created[3][..20], false).unwrap();
        assert_eq!(status.status.unwrap().id, created[3]);

        let listed = sandboxes.list(None);
        assert_eq!(
            listed.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
            created,
            "oldest first"
        );
        let filter = |id: &str, state: Option<cri::PodSandboxState>, labels: &[(&str, &str)]| {
            cri::PodSandboxFilter {
                id: id.to_owned(),
                state: state.map(|s| cri::PodSandboxStateValue { state: s as i32 }),
                label_selector: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }
        };
        let ids_of = |f: cri::PodSandboxFilter| -> Vec<String> {
            sandboxes.list(Some(&f)).into_iter().map(|s| s.id).collect()
        };
        assert_eq!(
            ids_of(filter(&created[5][..10], None, &[])),
            vec![created[5].clone()]
        );
        assert_eq!(
            ids_of(filter(&created[5], None, &[])),
            vec![created[5].clone()]
        );
        sandboxes.stop(&created[0]).unwrap();
        sandboxes.stop(&created[1]).unwrap();
        assert_eq!(
            ids_of(filter("", Some(cri::PodSandboxState::SandboxNotready), &[])),
            created[..2].to_vec()
        );
        assert_eq!(
            ids_of(filter("", Some(cri::PodSandboxState::SandboxReady), &[])).len(),
            15
        );
        let odd: Vec<String> = created.iter().skip(1).step_by(2).cloned().collect();
        assert_eq!(ids_of(filter("", None, &[("parity", "1")])), odd);
        assert_eq!(
            ids_of(filter(
                "",
                Some(cri::PodSandboxState::SandboxReady),
                &[("parity", "1"), ("tier", "test")]
            )),
            odd[1..].to_vec()
        );
        assert!(ids_of(filter("", None, &[("parity", "1"), ("tier", "prod")])).is_empty());

        for id in &created {
            sandboxes.remove(id).unwrap();
        }
        env.assert_empty(&sandboxes);
    }

    #[test]
    fn records_survive_a_restart_and_lost_pins_mean_not_ready() {
        let env = Env::new();
        let sandboxes = env.open();
        let kept = sandboxes.run(&request(pod_config("kept"))).unwrap();
        let stopped = sandboxes.run(&request(pod_config("stopped"))).unwrap();
        let lost = sandboxes.run(&request(pod_config("lost"))).unwrap();
        sandboxes.stop(&stopped).unwrap();
        let before = sandboxes.list(None);
        drop(sandboxes);

        // What a reboot does to one pod: /run is empty, so its pins and tmpfs are gone.
        let lost_record = {
            let records = Records::open(&env.dir.path().join("root").join(RECORDS_FILE)).unwrap();
            records.sandbox(&lost).unwrap().unwrap()
        };
        namespaces::unpin(&lost_record.ns_dir).unwrap();
        rootfs::unmount(lost_record.shm.as_ref().unwrap()).unwrap();

        let sandboxes = env.open();
        let after = sandboxes.list(None);
        assert_eq!(after.len(), 3);
        for (b, a) in before.iter().zip(&after) {
            assert_eq!(
                (&b.id, b.created_at, &b.labels),
                (&a.id, a.created_at, &a.labels)
            );
        }
        let state = |id: &str| sandboxes.status(id, false).unwrap().status.unwrap().state();
        assert_eq!(state(&kept), cri::PodSandboxState::SandboxReady);
        assert_eq!(state(&stopped), cri::PodSandboxState::SandboxNotready);
        assert_eq!(state(&lost), cri::PodSandboxState::SandboxNotready);
        assert_eq!(
            sandboxes.records.sandbox(&lost).unwrap().unwrap().phase,
            SandboxPhase::NotReady
        );
        // Names stay reserved across the restart.
        assert!(matches!(
            sandboxes.run(&request(pod_config("kept"))),
            Err(Error::AlreadyExists(_))
        ));
        for id in [kept, stopped, lost] {
            sandboxes.remove(&id).unwrap();
        }
        env.assert_empty(&sandboxes);
    }

    /// A `kill -9` after each step of RunPodSandbox: the process stops with the `creating`
    /// record committed and the steps so far done, nothing rolled back. The next start must
    /// leave no trace of the sandbox.
    #[test]
    fn a_crash_between_creation_steps_is_cleaned_up_at_the_next_start() {
        let env = Env::new();
        for steps in 0..=4 {
            let sandboxes = env.open();
            let config = pod_config(&format!("crash{steps}"));
            let req = request(config.clone());
            let plan = sandboxes.plan(&config, "").unwrap();
            let id = ids::generate();
            let mut record = sandboxes.begin(&id, &req, &config, &plan).unwrap();
            sandboxes.records.put_sandbox(&record).unwrap();
            if steps >= 1 {
                sandboxes.write_files(&record, &plan).unwrap();
            }
            if steps >= 2 {
                record.shm = Some(sandboxes.mount_shm(&record).unwrap());
            }
            if steps >= 3 {
                record.namespaces = sandboxes.pin(&record, &plan).unwrap();
                assert_eq!(env.mounts().len(), 4);
            }
            if steps >= 4 {
                // The ADD ran; the record with its result was never written.
                sandboxes
                    .network
                    .add(record.network.as_mut().unwrap())
                    .unwrap();
                assert_eq!(env.allocations(), vec![id.clone()]);
            }
            drop(sandboxes);

            let sandboxes = env.open();
            env.assert_empty(&sandboxes);
            // Whatever step it reached, the start asked for a DEL.
            assert!(
                env.cni_calls()
                    .iter()
                    .any(|c| c.starts_with(&format!("DEL {id}"))),
                "{:?}",
                env.cni_calls()
            );
            // Its name is free again.
            let again = sandboxes.run(&req).unwrap();
            sandboxes.remove(&again).unwrap();
        }
    }

    #[test]
    fn a_failing_plugin_fails_the_run_with_its_message_and_leaves_nothing() {
        let env = Env::new();
        let sandboxes = env.open();
        let flag = env.dir.path().join("cni-state/fail-add");
        std::fs::write(&flag, "").unwrap();
        let err = sandboxes.run(&request(pod_config("nonet"))).unwrap_err();
        let status = crate::errors::status(&err);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(
            status.message().contains(
                "set up network \"fake\": plugin type=\"fakenet\" name=\"fake\" failed (add): \
                 fakenet is out of addresses: try later"
            ),
            "{}",
            status.message()
        );
        // The ADD that failed half-way was followed by a DEL with the same id and netns.
        let calls = env.cni_calls();
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert!(
            calls[0].starts_with("ADD ") && calls[1].starts_with("DEL "),
            "{calls:?}"
        );
        assert_eq!(calls[0][4..], calls[1][4..]);
        env.assert_empty(&sandboxes);
        std::fs::remove_file(&flag).unwrap();
        let id = sandboxes.run(&request(pod_config("nonet"))).unwrap();
        sandboxes.remove(&id).unwrap();
        env.assert_empty(&sandboxes);
    }

    #[test]
    fn without_a_network_config_pods_wait_but_host_network_pods_run() {
        let env = Env::new();
        let sandboxes = env.open();
        let conf = env.dir.path().join("cni-conf/10-fake.conflist");
        let text = read(&conf);
        std::fs::remove_file(&conf).unwrap();
        let err = sandboxes.run(&request(pod_config("early"))).unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
        assert!(err.to_string().contains("no network config found"), "{err}");
        env.assert_empty(&sandboxes);
        let host = sandboxes
            .run(&request(with_modes(pod_config("host"), NODE, NODE)))
            .unwrap();
        // The config appears: the next call sees it.
        std::fs::write(&conf, text).unwrap();
        assert!(sandboxes.network().readiness().is_ok());
        let id = sandboxes.run(&request(pod_config("early"))).unwrap();
        for id in [host, id] {
            sandboxes.remove(&id).unwrap();
        }
        env.assert_empty(&sandboxes);

        let mut config = pod_config("slow");
        config.annotations.insert(
            "kubernetes.io/ingress-bandwidth".to_owned(),
            "fast".to_owned(),
        );
        let err = sandboxes.run(&request(config)).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        assert!(err.to_string().contains("ingress-bandwidth"), "{err}");
        env.assert_empty(&sandboxes);
    }

    #[test]
    fn the_network_is_deleted_after_a_restart_and_a_failed_del_is_retried() {
        let env = Env::new();
        let sandboxes = env.open();
        let kept = sandboxes.run(&request(pod_config("kept"))).unwrap();
        let stopped = sandboxes.run(&request(pod_config("stopped"))).unwrap();
        // A DEL that fails fails the stop, for kubelet to retry; the pod is not ready and
        // still holds its address.
        let flag = env.dir.path().join("cni-state/fail-del");
        std::fs::write(&flag, "").unwrap();
        let err = sandboxes.stop(&stopped).unwrap_err();
        assert!(err.to_string().contains("fakenet cannot let go"), "{err}");
        assert_eq!(env.allocations().len(), 2);
        let status = sandboxes.status(&stopped, false).unwrap().status.unwrap();
        assert_eq!(status.state(), cri::PodSandboxState::SandboxNotready);
        assert!(sandboxes.remove(&stopped).is_err());
        std::fs::remove_file(&flag).unwrap();
        sandboxes.stop(&stopped).unwrap();
        assert_eq!(env.allocations(), vec![kept.clone()]);
        drop(sandboxes);

        let sandboxes = env.open();
        let status = sandboxes.status(&kept, false).unwrap().status.unwrap();
        assert_eq!(status.network.unwrap().ip, "10.77.0.2");
        // The recorded network can still be checked against its ADD result.
        let record = sandboxes.record(&kept).unwrap();
        sandboxes
            .network()
            .check(record.network.as_ref().unwrap())
            .unwrap();
        let before = env.cni_calls().len();
        assert!(
            env.cni_calls()[before - 1].starts_with(&format!("CHECK {kept} ")),
            "{:?}",
            env.cni_calls()
        );
        sandboxes.remove(&stopped).unwrap();
        assert_eq!(env.cni_calls().len(), before, "its DEL was done at stop");
        sandboxes.remove(&kept).unwrap();
        let calls = env.cni_calls();
        assert_eq!(calls.len(), before + 1);
        assert!(
            calls[before].starts_with(&format!("DEL {kept} ")),
            "{calls:?}"
        );
        env.assert_empty(&sandboxes);
    }

    /// Removes a bridge on drop, however the test ends.
    struct Bridge(String);

    impl Drop for Bridge {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["link", "del", &self.0]).output();
        }
    }

    #[test]
    fn root_pods_get_the_default_bridge_network_with_the_real_plugins() {
        if !Path::new("/usr/lib/cni/bridge").exists() {
            crate::test_skip::skip("cni-plugins", "no /usr/lib/cni/bridge");
            return;
        }
        let env = Env::new();
        let tag = std::process::id()
            ^ SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .subsec_nanos();
        let bridge = Bridge(format!("bgt{:x}", tag & 0xffffff));
        let subnet = format!("10.250.{}.0/24", tag % 200 + 20);
        let mut settings = env.settings();
        settings.network = NetworkSettings {
            conf_dir: env.dir.path().join("real-conf"),
            bin_dirs: vec![PathBuf::from("/usr/lib/cni")],
            default_bridge: bridge.0.clone(),
            default_subnet: subnet.clone(),
            plugin_timeout: std::time::Duration::from_secs(60),
            data_dir: env.dir.path().join("root/cni/networks"),
        };
        let sandboxes = Sandboxes::open(settings.clone()).unwrap();
        sandboxes.network().install_default().unwrap().unwrap();
        let mut config = pod_config("real");
        config.port_mappings = vec![cri::PortMapping {
            protocol: cri::Protocol::Tcp as i32,
            container_port: 80,
            host_port: 18000 + (tag % 1000) as i32,
            host_ip: "127.0.0.1".to_owned(),
        }];
        let id = sandboxes.run(&request(config)).unwrap();
        let status = sandboxes.status(&id, false).unwrap().status.unwrap();
        let ip = status.network.unwrap().ip;
        let prefix = subnet.trim_end_matches("0/24");
        assert!(ip.starts_with(prefix), "{ip} not in {subnet}");
        let record = sandboxes.records.sandbox(&id).unwrap().unwrap();
        assert!(read(&record.dir.join("hosts")).ends_with(&format!("{ip}\treal-host\n")));
        let net = record.namespaces.net.clone().unwrap();
        let addrs = Command::new("nsenter")
            .arg(format!("--net={}", net.display()))
            .args(["ip", "-o", "addr"])
            .output()
            .unwrap();
        let addrs = String::from_utf8_lossy(&addrs.stdout).into_owned();
        assert!(addrs.contains(&format!("eth0    inet {ip}/24")), "{addrs}");
        assert!(
            addrs.contains("lo    inet 127.0.0.1/8"),
            "lo is up: {addrs}"
        );
        let allocations = env.dir.path().join("root/cni/networks/bungeo");
        assert!(allocations.join(&ip).exists());

        // A restart in between: the removal still deletes the network.
        drop(sandboxes);
        let sandboxes = Sandboxes::open(settings).unwrap();
        sandboxes.remove(&id).unwrap();
        assert!(!allocations.join(&ip).exists());
        let rules = Command::new("iptables-save")
            .args(["-t", "nat"])
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&rules.stdout).contains(&id),
            "iptables rules of the pod left behind"
        );
        env.assert_empty(&sandboxes);
    }

    #[test]
    fn a_plugin_uninstalled_since_does_not_wedge_the_removal() {
        let env = Env::new();
        let sandboxes = env.open();
        let id = sandboxes.run(&request(pod_config("orphaned"))).unwrap();
        std::fs::remove_file(env.dir.path().join("cni-bin/fakenet")).unwrap();
        assert!(sandboxes.network().readiness().is_err());
        sandboxes.remove(&id).unwrap();
        // What the plugin held stays behind: nothing can free it without the plugin.
        assert_eq!(env.allocations(), vec![id.clone()]);
        std::fs::remove_file(env.dir.path().join("cni-state/alloc").join(&id)).unwrap();
        env.assert_empty(&sandboxes);
    }

    #[test]
    fn files_and_pins_without_a_record_are_removed_at_start() {
        let env = Env::new();
        let sandboxes = env.open();
        let config = pod_config("orphan");
        let req = request(config.clone());
        let plan = sandboxes.plan(&config, "").unwrap();
        let record = sandboxes.new_record(&ids::generate(), &req, &config, &plan);
        sandboxes.write_files(&record, &plan).unwrap();
        sandboxes.mount_shm(&record).unwrap();
        sandboxes.pin(&record, &plan).unwrap();
        // Not an id: not ours to judge, left alone.
        std::fs::create_dir(env.dir.path().join("root/sandboxes/keep-me")).unwrap();
        drop(sandboxes);

        let sandboxes = env.open();
        assert_eq!(env.mounts(), Vec::<PathBuf>::new());
        assert_eq!(env.entries("root/sandboxes"), vec!["keep-me".to_owned()]);
        assert_eq!(env.entries("state/ns"), Vec::<String>::new());
        assert!(sandboxes.list(None).is_empty());
    }

    #[test]
    fn a_failed_creation_leaves_nothing() {
        let env = Env::new();
        let sandboxes = env.open();
        // Pinning fails: where the pins would go is a file.
        let ns_dir = env.dir.path().join("state/ns");
        std::fs::remove_dir(&ns_dir).unwrap();
        std::fs::write(&ns_dir, "in the way").unwrap();
        let err = sandboxes.run(&request(pod_config("fails"))).unwrap_err();
        assert!(err.to_string().contains("pin namespaces"), "{err}");
        assert_eq!(env.mounts(), Vec::<PathBuf>::new());
        assert_eq!(env.entries("root/sandboxes"), Vec::<String>::new());
        assert_eq!(sandboxes.records.sandboxes().unwrap(), vec![]);
        assert!(sandboxes.list(None).is_empty());
        // The name was given back.
        std::fs::remove_file(&ns_dir).unwrap();
        std::fs::create_dir(&ns_dir).unwrap();
        let id = sandboxes.run(&request(pod_config("fails"))).unwrap();
        sandboxes.remove(&id).unwrap();
        env.assert_empty(&sandboxes);
    }

    #[test]
    fn concurrent_runs_and_removes_leave_nothing() {
        let env = Env::new();
        let sandboxes = Arc::new(env.open());
        let threads: Vec<_> = (0..20)
            .map(|i| {
                let sandboxes = Arc::clone(&sandboxes);
                std::thread::spawn(move || sandboxes.run(&request(pod_config(&format!("c{i}")))))
            })
            .collect();
        let ids: Vec<String> = threads
            .into_iter()
            .map(|t| t.join().unwrap().unwrap())
            .collect();
        assert_eq!(sandboxes.list(None).len(), 20);
        assert_eq!(env.mounts().len(), 80);
        let threads: Vec<_> = ids
            .into_iter()
            .map(|id| {
                let sandboxes = Arc::clone(&sandboxes);
                std::thread::spawn(move || sandboxes.remove(&id))
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        env.assert_empty(&sandboxes);
    }

    #[test]
    fn systemd_driver_wants_a_slice_parent() {
        let env = Env::new();
        let mut settings = env.settings();
        settings.cgroup_driver = CgroupDriver::Systemd;
        let sandboxes = Sandboxes::open(settings).unwrap();
        assert!(
            sandboxes
                .check_cgroup_parent("kubepods-besteffort-pod1.slice")
                .is_ok()
        );
        assert!(sandboxes.check_cgroup_parent("").is_ok());
        assert!(
            sandboxes
                .check_cgroup_parent("/kubepods/besteffort")
                .is_err()
        );
    }
}
