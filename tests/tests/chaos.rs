//! Chaos: bungeo is `kill -9`ed at random moments under a load of mixed CRI calls and
//! restarted, round after round; after each round every container that ran still runs, every
//! record matches what is on the node (processes, mounts, netns pins, IP allocations, veths,
//! cgroups, shims), nothing is half done, and kubelet-style retries of the calls the crash
//! cut short succeed. Also: a shim killed with SIGKILL, a container process killed from
//! outside, and a CNI plugin that fails or hangs.
//!
//! bungeo only: containerd is not what is under test here (its crash recovery is its own
//! business), so there is no differential side.
//!
//! `BUNGEO_CHAOS_ROUNDS` sets the number of rounds (default 10, a few minutes; the hardening
//! run is 100); `BUNGEO_CHAOS_SEED` replays the kill moments of an earlier run (the seed is
//! printed).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use bungeo_tests::bungeo::{Bungeo, BungeoCni};
use bungeo_tests::cri::Cri;
use bungeo_tests::images::{self, Catalog, PLAIN, Pusher, ZSTD};
use bungeo_tests::leftovers;
use bungeo_tests::mounts::mounts_under;
use bungeo_tests::net::{self, TestNetwork};
use bungeo_tests::registry::Registry;
use bungeo_tests::registryhosts::{RegistryHosts, toml_string};
use bungeo_tests::scene::{pod_linux, strings};
use bungeo_tests::workload::{self, container_config};
use k8s_cri::v1::{
    ContainerConfig, ContainerFilter, ContainerState, ContainerStatsRequest,
    ContainerStatusRequest, CreateContainerRequest, ExecSyncRequest, ListContainerStatsRequest,
    ListContainersRequest, ListPodSandboxRequest, PodSandboxConfig, PodSandboxMetadata,
    PodSandboxState, PodSandboxStatusRequest, RemoveContainerRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};
use libtest_mimic::{Arguments, Failed, Trial};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::runtime::Runtime;
use tonic::Code;

/// The Kubernetes namespace of every test pod.
const POD_NAMESPACE: &str = "bungeo-e2e-chaos";
/// The first component of every test pod's cgroup parent.
const CGROUP_ROOT: &str = "bungeo-e2e-chaos";
/// Rounds without `BUNGEO_CHAOS_ROUNDS`.
const DEFAULT_ROUNDS: usize = 10;
/// Concurrent tasks cycling pods and containers through their whole life.
const CHURN_TASKS: usize = 3;
/// Long-running containers kept across rounds (beyond these the oldest is reaped).
const KEEP: usize = 3;
/// How long something may take to get where a check waits for it.
const WAIT: Duration = Duration::from_secs(30);
/// Rounds with findings after which the run stops (the state is suspect by then).
const MAX_FAILED_ROUNDS: usize = 3;

/// A shared setup, made by the first trial that runs.
type SharedEnv = Arc<OnceLock<std::result::Result<Arc<Env>, String>>>;

/// One trial: its name and body.
type Test = (&'static str, fn(Arc<Env>) -> Result<()>);

fn main() {
    let args = Arguments::from_args();
    let env: SharedEnv = Arc::new(OnceLock::new());
    let tests: [Test; 5] = [
        ("kill9_rounds", |e| e.block(kill9_rounds(e.clone()))),
        ("shim_killed", |e| e.block(shim_killed(e.clone()))),
        ("container_killed", |e| e.block(container_killed(e.clone()))),
        ("cni_plugin_fails", |e| e.block(cni_plugin_fails(e.clone()))),
        ("cni_plugin_hangs", |e| e.block(cni_plugin_hangs(e.clone()))),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, run)| {
            let env = env.clone();
            Trial::test(format!("bungeo::{name}"), move || {
                let env = env
                    .get_or_init(|| Env::setup().map(Arc::new).map_err(|e| format!("{e:#}")))
                    .as_ref()
                    .map_err(|e| Failed::from(format!("setup: {e}")))?
                    .clone();
                run(env).map_err(|e| Failed::from(format!("{e:#}")))
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    // process::exit skips destructors: stop the registry first.
    drop(Arc::try_unwrap(env).ok().and_then(OnceLock::into_inner));
    conclusion.exit()
}

/// A registry with the two test images. Fields drop in order: the runtime last.
struct Env {
    _registry: Registry,
    hosts: RegistryHosts,
    /// What containers run (pulled once per daemon, never removed).
    run_image: String,
    /// What the load removes and pulls again.
    churn_image: String,
    rt: Runtime,
}

impl Env {
    fn setup() -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .context("tokio runtime")?;
        let catalog = Catalog::build(&images::read_busybox()?, false)?;
        let registry = Registry::start()?;
        rt.block_on(async {
            let pusher = Pusher::new(&registry.host(), None);
            images::push_all(&pusher, &catalog, &[PLAIN, ZSTD]).await
        })?;
        let hosts = RegistryHosts {
            plain_http: vec![registry.host()],
            ..Default::default()
        };
        Ok(Self {
            run_image: PLAIN.at(&registry.host()),
            churn_image: ZSTD.at(&registry.host()),
            _registry: registry,
            hosts,
            rt,
        })
    }

    fn block<F: Future<Output = Result<()>>>(&self, f: F) -> Result<()> {
        self.rt.block_on(f)
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

fn parent_of(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rfind(')')
        .and_then(|i| s[i + 1..].split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// The 64-hex ids inside `text`.
fn ids_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut run = String::new();
    for c in text.chars().chain(std::iter::once('/')) {
        if c.is_ascii_hexdigit() && !c.is_ascii_uppercase() {
            run.push(c);
        } else {
            if run.len() == 64 {
                out.push(run.clone());
            }
            run.clear();
        }
    }
    out
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// xorshift64*: the kill moments, replayable from a printed seed.
struct Rng(u64);

impl Rng {
    fn from_env() -> Self {
        let seed = std::env::var("BUNGEO_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("chaos: BUNGEO_CHAOS_SEED={seed}");
        Rng(seed.max(1))
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// A bungeo of the test's own with a log directory and cgroup parent of its own.
struct Node {
    daemon: Bungeo,
    cri: Cri,
    logs: tempfile::TempDir,
    cgroup_parent: String,
}

impl Node {
    async fn start(env: &Env, what: &str) -> Result<Self> {
        Self::with_daemon(Bungeo::start(&env.hosts).await?, what).await
    }

    async fn with_daemon(daemon: Bungeo, what: &str) -> Result<Self> {
        let cri = Cri::connect(daemon.socket()).await?;
        let logs = tempfile::Builder::new()
            .prefix("bungeo-e2e-chaos-logs-")
            .tempdir()?;
        Ok(Self {
            daemon,
            cri,
            logs,
            cgroup_parent: format!("/{CGROUP_ROOT}/{what}-{}", std::process::id()),
        })
    }

    fn pod_config(&self, name: &str, role: &str) -> PodSandboxConfig {
        let log_directory = self.logs.path().join(name);
        let _ = std::fs::create_dir_all(&log_directory);
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_string(),
                uid: format!("uid-{name}"),
                namespace: POD_NAMESPACE.to_string(),
                attempt: 0,
            }),
            hostname: name.chars().take(63).collect(),
            log_directory: log_directory.to_string_lossy().into_owned(),
            labels: HashMap::from([("chaos".to_string(), role.to_string())]),
            linux: Some(pod_linux(&self.cgroup_parent)),
            ..Default::default()
        }
    }

    async fn restart(&mut self) -> Result<()> {
        self.daemon.restart().await?;
        self.cri = Cri::connect(self.daemon.socket()).await?;
        Ok(())
    }

    /// What is on the node that bungeo's records do not explain, and records that the node
    /// does not back: each a line. `strict`: no pod or container may exist at all.
    async fn inconsistencies(&mut self, strict: bool) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let pods = self
            .cri
            .runtime
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await?
            .into_inner()
            .items;
        let containers = self
            .cri
            .runtime
            .list_containers(ListContainersRequest { filter: None })
            .await?
            .into_inner()
            .containers;
        if strict {
            for p in &pods {
                out.push(format!("pod {} ({:?}) left", p.id, p.state()));
            }
            for c in &containers {
                out.push(format!("container {} ({:?}) left", c.id, c.state()));
            }
        }
        let pod_ids: HashSet<String> = pods.iter().map(|p| p.id.clone()).collect();
        let container_ids: HashSet<String> = containers.iter().map(|c| c.id.clone()).collect();
        let root = self.daemon.root().canonicalize()?;
        let state = self.daemon.state().canonicalize()?;
        let mut explained: HashSet<PathBuf> = HashSet::new();
        for pod in &pods {
            let status = self
                .cri
                .runtime
                .pod_sandbox_status(PodSandboxStatusRequest {
                    pod_sandbox_id: pod.id.clone(),
                    verbose: true,
                })
                .await
                .with_context(|| format!("PodSandboxStatus {}", pod.id))?
                .into_inner();
            let info: serde_json::Value =
                serde_json::from_str(status.info.get("info").map(String::as_str).unwrap_or("{}"))?;
            let ready = pod.state() == PodSandboxState::SandboxReady;
            let mounted = mounts_under(&state)?;
            for kind in ["net", "ipc", "uts"] {
                let Some(pin) = info["namespaces"][kind].as_str().map(PathBuf::from) else {
                    if ready {
                        out.push(format!("ready pod {} has no {kind} pin", pod.id));
                    }
                    continue;
                };
                if ready && !mounted.contains(&pin) {
                    out.push(format!(
                        "ready pod {}: {kind} pin {} is not mounted",
                        pod.id,
                        pin.display()
                    ));
                }
                explained.insert(pin);
            }
            let dir = root.join("sandboxes").join(&pod.id);
            if ready && !dir.is_dir() {
                out.push(format!("ready pod {} has no directory", pod.id));
            }
            explained.insert(dir.join("shm"));
        }
        for c in &containers {
            if !pod_ids.contains(&c.pod_sandbox_id) {
                out.push(format!(
                    "container {} of pod {} that is not listed",
                    c.id, c.pod_sandbox_id
                ));
            }
            let status = self
                .cri
                .runtime
                .container_status(ContainerStatusRequest {
                    container_id: c.id.clone(),
                    verbose: true,
                })
                .await
                .with_context(|| format!("ContainerStatus {}", c.id))?
                .into_inner();
            let info: serde_json::Value =
                serde_json::from_str(status.info.get("info").map(String::as_str).unwrap_or("{}"))?;
            if let Some(rootfs) = info["rootfs"].as_str() {
                explained.insert(PathBuf::from(rootfs));
            }
            let pid = info["pid"].as_i64().unwrap_or(0) as i32;
            if matches!(
                c.state(),
                ContainerState::ContainerRunning | ContainerState::ContainerCreated
            ) {
                if pid <= 0 || !alive(pid) {
                    out.push(format!(
                        "container {} is {:?} but its process {pid} is gone",
                        c.id,
                        c.state()
                    ));
                    continue;
                }
                let shim = parent_of(pid).unwrap_or(0);
                if shim <= 1 || !alive(shim) || !cmdline(shim).contains("shim") {
                    out.push(format!(
                        "container {} is {:?} but its shim is gone (parent {shim}: {:?})",
                        c.id,
                        c.state(),
                        cmdline(shim)
                    ));
                }
            }
        }
        // Mounts.
        for m in mounts_under(&root)?
            .into_iter()
            .chain(mounts_under(&state)?)
        {
            if !explained.contains(&m) {
                out.push(format!("mount {} that no record explains", m.display()));
            }
        }
        // Directories named after objects.
        for id in names_in(&root.join("sandboxes")) {
            if !pod_ids.contains(&id) {
                out.push(format!("sandbox directory {id} without a pod"));
            }
        }
        for id in names_in(&state.join("ns")) {
            if !pod_ids.contains(&id) {
                out.push(format!("namespace pin directory {id} without a pod"));
            }
        }
        for id in names_in(&root.join("containers")) {
            if !container_ids.contains(&id) {
                out.push(format!("container directory {id} without a container"));
            }
        }
        for name in names_in(&state.join("shims")) {
            if ids_in(&name).iter().any(|id| !container_ids.contains(id)) {
                out.push(format!("shim file {name} without a container"));
            }
        }
        // Network: every IP allocation belongs to a pod, every veth on the bridge to one.
        let allocations = net::allocations(&root.join("cni"));
        for (path, owner) in &allocations {
            if !pod_ids.contains(owner) {
                out.push(format!(
                    "IP allocation {} of {owner}, which is no pod",
                    path.display()
                ));
            }
        }
        if let Some(network) = self.daemon.network() {
            let ports = network.bridge_ports();
            if ports.len() > allocations.len() {
                out.push(format!(
                    "{} veths on {} but {} IP allocations: {ports:?}",
                    ports.len(),
                    network.bridge(),
                    allocations.len()
                ));
            }
        }
        // Processes: shims and infra processes name their container's or pod's id.
        let dir = root.parent().context("daemon dir")?;
        let daemon = self.daemon.pid().map(|p| p as i32);
        for pid in leftovers::processes_mentioning(dir) {
            if Some(pid) == daemon || !alive(pid) {
                continue;
            }
            let line = cmdline(pid);
            let ids = ids_in(&line);
            if ids.is_empty()
                || ids
                    .iter()
                    .any(|id| !container_ids.contains(id) && !pod_ids.contains(id))
            {
                out.push(format!("process {pid} without a record: {line}"));
            }
        }
        // cgroups below the test's parent.
        for hierarchy in leftovers::cgroup_hierarchies() {
            let base = hierarchy.join(self.cgroup_parent.trim_start_matches('/'));
            let mut stack = vec![base];
            while let Some(d) = stack.pop() {
                for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                        continue;
                    }
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let known = ids_in(&name)
                        .iter()
                        .all(|id| container_ids.contains(id) || pod_ids.contains(id));
                    if !known || (strict && !ids_in(&name).is_empty()) {
                        out.push(format!(
                            "cgroup {} without a record",
                            entry.path().display()
                        ));
                    }
                    stack.push(entry.path());
                }
            }
        }
        Ok(out)
    }

    /// Stops and removes every pod (and its containers) not in `keep`; every call must
    /// succeed, as kubelet's would after a crash.
    async fn remove_pods_except(&mut self, keep: &HashSet<String>) -> Vec<String> {
        let mut out = Vec::new();
        let pods = match self
            .cri
            .runtime
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await
        {
            Ok(r) => r.into_inner().items,
            Err(e) => return vec![format!("ListPodSandbox: {e}")],
        };
        for pod in pods.iter().filter(|p| !keep.contains(&p.id)) {
            let containers = self
                .cri
                .runtime
                .list_containers(ListContainersRequest {
                    filter: Some(ContainerFilter {
                        pod_sandbox_id: pod.id.clone(),
                        ..Default::default()
                    }),
                })
                .await
                .map(|r| r.into_inner().containers)
                .unwrap_or_default();
            for c in containers {
                if let Err(e) = call(&mut self.cri, &Call::StopContainer(c.id.clone())).await {
                    out.push(format!("cleanup: StopContainer {}: {e}", c.id));
                }
                if let Err(e) = call(&mut self.cri, &Call::RemoveContainer(c.id.clone())).await {
                    out.push(format!("cleanup: RemoveContainer {}: {e}", c.id));
                }
            }
            for c in [
                Call::StopPod(pod.id.clone()),
                Call::RemovePod(pod.id.clone()),
            ] {
                if let Err(e) = call(&mut self.cri, &c).await {
                    out.push(format!("cleanup: {}: {e}", c.name()));
                }
            }
        }
        out
    }

    /// Removes the test's cgroups and the daemon's processes; the daemon goes with `self`.
    fn tear_down(&self) {
        leftovers::remove_cgroup_tree(&self.cgroup_parent);
        for hierarchy in leftovers::cgroup_hierarchies() {
            let _ = std::fs::remove_dir(hierarchy.join(CGROUP_ROOT));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.tear_down();
    }
}

/// One CRI call of the load, kept while it is in flight so the crash's victims can be
/// retried the way kubelet would.
#[derive(Debug, Clone)]
enum Call {
    RunPod(Box<PodSandboxConfig>),
    CreateContainer {
        pod: String,
        sandbox: Box<PodSandboxConfig>,
        config: Box<ContainerConfig>,
    },
    StartContainer(String),
    ExecSync(String),
    ContainerStats(String),
    ListContainerStats,
    StopContainer(String),
    RemoveContainer(String),
    StopPod(String),
    RemovePod(String),
    Pull(String),
    RemoveImage(String),
}

impl Call {
    fn name(&self) -> String {
        match self {
            Call::RunPod(c) => format!(
                "RunPodSandbox {}",
                c.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("")
            ),
            Call::CreateContainer { pod, config, .. } => format!(
                "CreateContainer {} in {pod}",
                config
                    .metadata
                    .as_ref()
                    .map(|m| m.name.as_str())
                    .unwrap_or("")
            ),
            Call::StartContainer(id) => format!("StartContainer {id}"),
            Call::ExecSync(id) => format!("ExecSync {id}"),
            Call::ContainerStats(id) => format!("ContainerStats {id}"),
            Call::ListContainerStats => "ListContainerStats".into(),
            Call::StopContainer(id) => format!("StopContainer {id}"),
            Call::RemoveContainer(id) => format!("RemoveContainer {id}"),
            Call::StopPod(id) => format!("StopPodSandbox {id}"),
            Call::RemovePod(id) => format!("RemovePodSandbox {id}"),
            Call::Pull(r) => format!("PullImage {r}"),
            Call::RemoveImage(r) => format!("RemoveImage {r}"),
        }
    }
}

/// Makes `c`; the id it made, if any.
async fn call(cri: &mut Cri, c: &Call) -> Result<Option<String>, tonic::Status> {
    let rt = &mut cri.runtime;
    Ok(match c {
        Call::RunPod(config) => Some(
            rt.run_pod_sandbox(RunPodSandboxRequest {
                config: Some((**config).clone()),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id,
        ),
        Call::CreateContainer {
            pod,
            sandbox,
            config,
        } => Some(
            rt.create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some((**config).clone()),
                sandbox_config: Some((**sandbox).clone()),
            })
            .await?
            .into_inner()
            .container_id,
        ),
        Call::StartContainer(id) => {
            rt.start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await?;
            None
        }
        Call::ExecSync(id) => {
            let r = rt
                .exec_sync(ExecSyncRequest {
                    container_id: id.clone(),
                    cmd: strings(&["echo", "chaos"]),
                    timeout: 10,
                })
                .await?
                .into_inner();
            if r.exit_code != 0 || r.stdout != b"chaos\n" {
                return Err(tonic::Status::internal(format!(
                    "exec answered {} {:?} {:?}",
                    r.exit_code,
                    String::from_utf8_lossy(&r.stdout),
                    String::from_utf8_lossy(&r.stderr)
                )));
            }
            None
        }
        Call::ContainerStats(id) => {
            rt.container_stats(ContainerStatsRequest {
                container_id: id.clone(),
            })
            .await?;
            None
        }
        Call::ListContainerStats => {
            rt.list_container_stats(ListContainerStatsRequest { filter: None })
                .await?;
            None
        }
        Call::StopContainer(id) => {
            rt.stop_container(StopContainerRequest {
                container_id: id.clone(),
                timeout: 0,
            })
            .await?;
            None
        }
        Call::RemoveContainer(id) => {
            rt.remove_container(RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await?;
            None
        }
        Call::StopPod(id) => {
            rt.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await?;
            None
        }
        Call::RemovePod(id) => {
            rt.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await?;
            None
        }
        Call::Pull(r) => Some(cri.pull(r, None).await?),
        Call::RemoveImage(r) => {
            cri.remove_image(r).await?;
            None
        }
    })
}

/// A load task's view of the round: the call in flight, and failures seen while the daemon
/// was up.
#[derive(Default)]
struct Shared {
    in_flight: Mutex<Vec<Option<Call>>>,
    failures: Mutex<Vec<String>>,
    /// Set just before the kill: failures from then on are the crash's.
    killed: AtomicBool,
    /// A container the keeper started before the kill: (pod, container, pid).
    kept: Mutex<Option<(String, String, i32)>>,
}

/// Runs `c` as task `slot`'s call in flight; `None` when it failed (the task stops).
/// RunPodSandbox, then CreateContainer `name` running `command` in it, each tracked;
/// `None` once a call fails or the daemon is gone.
async fn tracked_pod_and_container(
    shared: &Shared,
    slot: usize,
    cri: &mut Cri,
    pod_config: &PodSandboxConfig,
    (name, image, command): (&str, &str, &[&str]),
) -> Option<(String, String)> {
    let Some(Some(pod)) = tracked(
        shared,
        slot,
        cri,
        Call::RunPod(Box::new(pod_config.clone())),
    )
    .await
    else {
        return None;
    };
    let create = Call::CreateContainer {
        pod: pod.clone(),
        sandbox: Box::new(pod_config.clone()),
        config: Box::new(container_config(name, image, command)),
    };
    let Some(Some(id)) = tracked(shared, slot, cri, create).await else {
        return None;
    };
    Some((pod, id))
}

async fn tracked(shared: &Shared, slot: usize, cri: &mut Cri, c: Call) -> Option<Option<String>> {
    if let Ok(mut f) = shared.in_flight.lock() {
        f[slot] = Some(c.clone());
    }
    match call(cri, &c).await {
        Ok(made) => {
            if let Ok(mut f) = shared.in_flight.lock() {
                f[slot] = None;
            }
            Some(made)
        }
        Err(e) => {
            if !shared.killed.load(Ordering::SeqCst)
                && let Ok(mut f) = shared.failures.lock()
            {
                f.push(format!("{} failed with the daemon up: {e}", c.name()));
            }
            None
        }
    }
}

/// Pods and containers through their whole life, over and over.
async fn churn(
    shared: Arc<Shared>,
    slot: usize,
    mut cri: Cri,
    pods: Vec<PodSandboxConfig>,
    image: String,
) {
    for pod_config in pods {
        let work = ("work", image.as_str(), &["sleep", "1000"][..]);
        let Some((pod, id)) =
            tracked_pod_and_container(&shared, slot, &mut cri, &pod_config, work).await
        else {
            return;
        };
        for c in [
            Call::StartContainer(id.clone()),
            Call::ExecSync(id.clone()),
            Call::ContainerStats(id.clone()),
            Call::ListContainerStats,
            Call::StopContainer(id.clone()),
            Call::RemoveContainer(id.clone()),
            Call::StopPod(pod.clone()),
            Call::RemovePod(pod.clone()),
        ] {
            if tracked(&shared, slot, &mut cri, c).await.is_none() {
                return;
            }
        }
    }
}

/// Removes the image and pulls it again, over and over.
async fn image_churn(shared: Arc<Shared>, slot: usize, mut cri: Cri, image: String) {
    loop {
        for c in [Call::RemoveImage(image.clone()), Call::Pull(image.clone())] {
            if tracked(&shared, slot, &mut cri, c).await.is_none() {
                return;
            }
        }
    }
}

/// A pod with a long-running container, kept for the next rounds if it runs before the kill.
async fn keeper(
    shared: Arc<Shared>,
    slot: usize,
    mut cri: Cri,
    pod_config: PodSandboxConfig,
    image: String,
) {
    let kept = ("kept", image.as_str(), &["sleep", "100000"][..]);
    let Some((pod, id)) =
        tracked_pod_and_container(&shared, slot, &mut cri, &pod_config, kept).await
    else {
        return;
    };
    if tracked(&shared, slot, &mut cri, Call::StartContainer(id.clone()))
        .await
        .is_none()
    {
        return;
    }
    let Ok(pid) = container_pid(&mut cri, &id).await else {
        return;
    };
    // Kept only if the daemon still answered after the pid was read: the container then ran
    // before the kill.
    if !shared.killed.load(Ordering::SeqCst)
        && let Ok(mut kept) = shared.kept.lock()
    {
        *kept = Some((pod, id, pid));
    }
}

/// Stops and removes a kept container and its pod (what the round's load may be doing to a
/// container when the kill comes).
async fn reaper(shared: Arc<Shared>, slot: usize, mut cri: Cri, pod: String, id: String) {
    for c in [
        Call::StopContainer(id.clone()),
        Call::RemoveContainer(id),
        Call::StopPod(pod.clone()),
        Call::RemovePod(pod),
    ] {
        if tracked(&shared, slot, &mut cri, c).await.is_none() {
            return;
        }
    }
}

async fn container_pid(cri: &mut Cri, id: &str) -> Result<i32> {
    Ok(workload::container_pid(cri, id).await? as i32)
}

async fn container_state(cri: &mut Cri, id: &str) -> Result<k8s_cri::v1::ContainerStatus> {
    cri.runtime
        .container_status(ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .context("ContainerStatus without a status")
}

/// Kubelet's retry of a call the crash cut short; what went wrong, if anything.
async fn retry(cri: &mut Cri, c: &Call) -> Option<String> {
    let r = call(cri, c).await;
    let bad = |e: &tonic::Status| {
        Some(format!(
            "retry of {}: {:?} {}",
            c.name(),
            e.code(),
            e.message()
        ))
    };
    match (c, r) {
        (_, Ok(_)) => None,
        // The first attempt got through: the name is taken by what it made.
        (Call::RunPod(_) | Call::CreateContainer { .. }, Err(e))
            if e.code() == Code::AlreadyExists =>
        {
            None
        }
        // The first attempt started it: what matters is that it did.
        (Call::StartContainer(id), Err(e)) => match container_state(cri, id).await {
            Ok(s) if s.state() != ContainerState::ContainerCreated => None,
            Ok(s) => Some(format!(
                "retry of {}: {} and the container is still {:?}",
                c.name(),
                e.message(),
                s.state()
            )),
            Err(_) => bad(&e),
        },
        // A container stopped or removed by the first attempt has nothing to exec or measure.
        (Call::ExecSync(id) | Call::ContainerStats(id), Err(e)) => {
            match container_state(cri, id).await {
                Ok(s) if s.state() == ContainerState::ContainerRunning => bad(&e),
                _ => None,
            }
        }
        (_, Err(e)) => bad(&e),
    }
}

async fn kill9_rounds(env: Arc<Env>) -> Result<()> {
    let rounds: usize = std::env::var("BUNGEO_CHAOS_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS);
    let mut rng = Rng::from_env();
    let mut node = Node::start(&env, "rounds").await?;
    node.cri
        .pull(&env.run_image, None)
        .await
        .context("pull the image containers run")?;
    let started = Instant::now();
    // Kept containers: (pod, container, pid), oldest first.
    let mut kept: Vec<(String, String, i32)> = Vec::new();
    let (mut survived, mut lost, mut leaks, mut checked, mut interrupted) = (0, 0, 0, 0, 0);
    let mut findings: Vec<String> = Vec::new();
    let mut failed_rounds = 0;
    for round in 0..rounds {
        let mut problems = Vec::new();
        let shared = Arc::new(Shared::default());
        let tasks = CHURN_TASKS + 3;
        if let Ok(mut f) = shared.in_flight.lock() {
            *f = vec![None; tasks];
        }
        let mut handles = Vec::new();
        for t in 0..CHURN_TASKS {
            let pods = (0..100)
                .map(|i| node.pod_config(&format!("churn-{round}-{t}-{i}"), "churn"))
                .collect();
            handles.push(tokio::spawn(churn(
                shared.clone(),
                t,
                node.cri.clone(),
                pods,
                env.run_image.clone(),
            )));
        }
        handles.push(tokio::spawn(image_churn(
            shared.clone(),
            CHURN_TASKS,
            node.cri.clone(),
            env.churn_image.clone(),
        )));
        handles.push(tokio::spawn(keeper(
            shared.clone(),
            CHURN_TASKS + 1,
            node.cri.clone(),
            node.pod_config(&format!("kept-{round}"), "kept"),
            env.run_image.clone(),
        )));
        if kept.len() >= KEEP {
            let (pod, id, _) = kept.remove(0);
            handles.push(tokio::spawn(reaper(
                shared.clone(),
                CHURN_TASKS + 2,
                node.cri.clone(),
                pod,
                id,
            )));
        }
        let delay = Duration::from_millis(100 + rng.below(1900));
        tokio::time::sleep(delay).await;
        shared.killed.store(true, Ordering::SeqCst);
        node.daemon.kill9()?;
        for h in handles {
            tokio::time::timeout(WAIT, h)
                .await
                .context("a load task still runs after the kill")??;
        }
        problems.extend(
            shared
                .failures
                .lock()
                .map(|f| f.clone())
                .unwrap_or_default(),
        );
        if let Ok(mut k) = shared.kept.lock()
            && let Some(new) = k.take()
        {
            kept.push(new);
        }
        node.restart()
            .await
            .with_context(|| format!("round {round}: restart after kill -9"))?;

        // Every kept container runs on, in the same process.
        for (_, id, pid) in &kept {
            checked += 1;
            let fine = match container_state(&mut node.cri, id).await {
                Ok(s) if s.state() == ContainerState::ContainerRunning => {
                    match container_pid(&mut node.cri, id).await {
                        Ok(p) if p == *pid && alive(*pid) => None,
                        Ok(p) => Some(format!("pid {p}, was {pid}, alive: {}", alive(*pid))),
                        Err(e) => Some(format!("{e:#}")),
                    }
                }
                Ok(s) => Some(format!(
                    "{:?} ({} {} {})",
                    s.state(),
                    s.exit_code,
                    s.reason,
                    s.message
                )),
                Err(e) => Some(format!("{e:#}")),
            };
            if let Some(why) = fine {
                lost += 1;
                problems.push(format!("kept container {id} lost: {why}"));
            }
        }
        // Records match the node, half-done operations included.
        let found = node.inconsistencies(false).await?;
        leaks += found.len();
        problems.extend(found.into_iter().map(|f| format!("after the restart: {f}")));
        // Kubelet retries what the crash cut short.
        let cut: Vec<Call> = shared
            .in_flight
            .lock()
            .map(|f| f.iter().flatten().cloned().collect())
            .unwrap_or_default();
        interrupted += cut.len();
        for c in &cut {
            if let Some(p) = retry(&mut node.cri, c).await {
                problems.push(p);
            }
        }
        // A retried kept pod whose container was cut short is not kept: it goes.
        let keep: HashSet<String> = kept.iter().map(|(p, _, _)| p.clone()).collect();
        problems.extend(node.remove_pods_except(&keep).await);
        let found = node.inconsistencies(false).await?;
        leaks += found.len();
        problems.extend(found.into_iter().map(|f| format!("after the cleanup: {f}")));
        eprintln!(
            "chaos: round {round}: killed after {delay:?}, {} calls cut short, {} kept containers, {} findings",
            cut.len(),
            kept.len(),
            problems.len()
        );
        if problems.is_empty() {
            survived += 1;
        } else {
            failed_rounds += 1;
            for p in &problems {
                eprintln!("chaos: round {round}: {p}");
            }
            findings.extend(problems.into_iter().map(|p| format!("round {round}: {p}")));
            if failed_rounds >= MAX_FAILED_ROUNDS {
                eprintln!("chaos: stopping after {failed_rounds} rounds with findings");
                break;
            }
        }
    }
    // The end: everything goes, and nothing may be left.
    findings.extend(node.remove_pods_except(&HashSet::new()).await);
    let found = node.inconsistencies(true).await?;
    leaks += found.len();
    findings.extend(found.into_iter().map(|f| format!("at the end: {f}")));
    let root = node.daemon.root().to_path_buf();
    let network = node
        .daemon
        .network()
        .map(|n| n.leftovers())
        .unwrap_or_default();
    leaks += network.len();
    findings.extend(network.into_iter().map(|f| format!("at the end: {f}")));
    for dir in [root.join("sandboxes"), root.join("containers")] {
        let left = names_in(&dir);
        if !left.is_empty() {
            leaks += left.len();
            findings.push(format!("at the end: left in {}: {left:?}", dir.display()));
        }
    }
    eprintln!(
        "chaos: {survived}/{rounds} rounds survived, {lost} containers lost of {checked} checks, \
         {leaks} leaks found, {interrupted} calls cut short and retried, {:?}",
        started.elapsed()
    );
    ensure!(
        findings.is_empty(),
        "{} findings:\n{}\n--- last lines of the bungeo log ---\n{}",
        findings.len(),
        findings.join("\n"),
        node.daemon.log_tail(30)
    );
    Ok(())
}

/// A pod with one running `sleep`: (pod, container, pid).
async fn running_container(
    node: &mut Node,
    env: &Env,
    name: &str,
) -> Result<(String, String, i32)> {
    node.cri.pull(&env.run_image, None).await?;
    let config = node.pod_config(name, "single");
    let pod = call(&mut node.cri, &Call::RunPod(Box::new(config.clone())))
        .await?
        .context("no pod id")?;
    let id = call(
        &mut node.cri,
        &Call::CreateContainer {
            pod: pod.clone(),
            sandbox: Box::new(config),
            config: Box::new(container_config(
                "sleeper",
                &env.run_image,
                &["sleep", "1000"],
            )),
        },
    )
    .await?
    .context("no container id")?;
    call(&mut node.cri, &Call::StartContainer(id.clone())).await?;
    let pid = container_pid(&mut node.cri, &id).await?;
    Ok((pod, id, pid))
}

/// Waits until the container is reported EXITED.
async fn exited(node: &mut Node, id: &str) -> Result<k8s_cri::v1::ContainerStatus> {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = container_state(&mut node.cri, id).await?;
        if s.state() == ContainerState::ContainerExited {
            return Ok(s);
        }
        ensure!(
            Instant::now() < deadline,
            "container {id} still {:?} {WAIT:?} later",
            s.state()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Removes every pod and checks that nothing is left.
async fn finish(node: &mut Node) -> Result<()> {
    let mut findings = node.remove_pods_except(&HashSet::new()).await;
    findings.extend(node.inconsistencies(true).await?);
    ensure!(
        findings.is_empty(),
        "after removing everything: {findings:#?}"
    );
    Ok(())
}

async fn shim_killed(env: Arc<Env>) -> Result<()> {
    let mut node = Node::start(&env, "shim").await?;
    let (_, id, pid) = running_container(&mut node, &env, "shim-killed").await?;
    let shim = parent_of(pid).context("no parent")?;
    ensure!(
        cmdline(shim).contains("shim"),
        "the container's parent {shim} is no shim: {}",
        cmdline(shim)
    );
    kill(Pid::from_raw(shim), Signal::SIGKILL)?;
    let s = exited(&mut node, &id).await?;
    ensure!(
        !s.reason.is_empty() && s.message.contains("shim"),
        "a container whose shim was killed: reason {:?}, message {:?}",
        s.reason,
        s.message
    );
    ensure!(
        s.exit_code != 0 && s.finished_at > 0,
        "exit code {} at {}",
        s.exit_code,
        s.finished_at
    );
    // Reported exited, so it must not run on unsupervised.
    let deadline = Instant::now() + WAIT;
    while alive(pid) {
        ensure!(
            Instant::now() < deadline,
            "the container process {pid} outlives its shim, reported exited"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The same after a restart: not lost, not running.
    node.restart().await?;
    let s = container_state(&mut node.cri, &id).await?;
    ensure!(
        s.state() == ContainerState::ContainerExited,
        "after a restart: {:?}",
        s.state()
    );
    finish(&mut node).await
}

async fn container_killed(env: Arc<Env>) -> Result<()> {
    let mut node = Node::start(&env, "ctr").await?;
    let (_, id, pid) = running_container(&mut node, &env, "container-killed").await?;
    kill(Pid::from_raw(pid), Signal::SIGKILL)?;
    let s = exited(&mut node, &id).await?;
    ensure!(
        (s.exit_code, s.reason.as_str()) == (137, "Error"),
        "a container killed with SIGKILL: exit code {}, reason {:?}, message {:?}",
        s.exit_code,
        s.reason,
        s.message
    );
    finish(&mut node).await
}

/// A daemon whose CNI conf dir holds a bridge network followed by `plugin` (its script is
/// `script`), with `plugin_timeout` seconds per plugin call.
async fn node_with_plugin(
    env: &Env,
    network: &TestNetwork,
    plugin: &str,
    script: &str,
    plugin_timeout: u64,
) -> Result<(Node, tempfile::TempDir)> {
    let dir = tempfile::Builder::new()
        .prefix("bungeo-e2e-chaos-cni-")
        .tempdir()?;
    let (conf, bin) = (dir.path().join("conf"), dir.path().join("bin"));
    std::fs::create_dir_all(&conf)?;
    std::fs::create_dir_all(&bin)?;
    let path = bin.join(plugin);
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    let mut list = network.conflist("bungeo-e2e-chaos", false);
    list["plugins"]
        .as_array_mut()
        .context("plugins")?
        .push(serde_json::json!({ "type": plugin }));
    std::fs::write(conf.join("10-chaos.conflist"), list.to_string())?;
    let mut config = env.hosts.bungeo_toml();
    config.push_str(&format!(
        "\n[cni]\nconf_dir = {}\nbin_dirs = [{}, \"/usr/lib/cni\"]\nplugin_timeout = {plugin_timeout}\n",
        toml_string(&conf.to_string_lossy()),
        toml_string(&bin.to_string_lossy()),
    ));
    let daemon = Bungeo::start_with_cni(&config, BungeoCni::default()).await?;
    Ok((Node::with_daemon(daemon, plugin).await?, dir))
}

/// After a RunPodSandbox that failed: no pod, and nothing of one on the node or the network.
async fn nothing_left(node: &mut Node, network: &TestNetwork) -> Result<()> {
    let mut findings = node.inconsistencies(true).await?;
    findings.extend(network.leftovers());
    let state = node.daemon.state().to_path_buf();
    for dir in [node.daemon.root().join("sandboxes"), state.join("ns")] {
        let left = names_in(&dir);
        if !left.is_empty() {
            findings.push(format!("left in {}: {left:?}", dir.display()));
        }
    }
    ensure!(
        findings.is_empty(),
        "after the failed RunPodSandbox: {findings:#?}"
    );
    Ok(())
}

async fn cni_plugin_fails(env: Arc<Env>) -> Result<()> {
    const MESSAGE: &str = "chaos plugin refuses the pod";
    let script = format!(
        r#"#!/bin/sh
case "$CNI_COMMAND" in
VERSION) echo '{{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}}' ;;
ADD) cat >/dev/null; echo '{{"cniVersion":"1.0.0","code":11,"msg":"{MESSAGE}"}}'; exit 1 ;;
*) cat >/dev/null ;;
esac
"#
    );
    let network = TestNetwork::allocate()?;
    let (mut node, _dir) = node_with_plugin(&env, &network, "chaos-fail", &script, 10).await?;
    let config = node.pod_config("cni-fails", "single");
    let err = match call(&mut node.cri, &Call::RunPod(Box::new(config))).await {
        Ok(id) => bail!("RunPodSandbox succeeded with a failing plugin: {id:?}"),
        Err(e) => e,
    };
    ensure!(
        err.message().contains(MESSAGE),
        "the plugin's message is not in the error: {:?} {}",
        err.code(),
        err.message()
    );
    nothing_left(&mut node, &network).await
}

/// Processes whose environment holds `marker`.
fn processes_with_env(marker: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == marker.as_bytes()))
        })
        .filter(|pid| alive(*pid))
        .collect()
}

async fn cni_plugin_hangs(env: Arc<Env>) -> Result<()> {
    const TIMEOUT: u64 = 2;
    let marker = format!("BUNGEO_CHAOS_HANG={}", std::process::id());
    // The plugin hangs in a child of its own, as a plugin stuck in a helper would.
    let script = format!(
        r#"#!/bin/sh
export {marker}
case "$CNI_COMMAND" in
VERSION) echo '{{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}}' ;;
ADD) cat >/dev/null; sleep 1000 ;;
*) cat >/dev/null ;;
esac
"#
    );
    let network = TestNetwork::allocate()?;
    let (mut node, _dir) = node_with_plugin(&env, &network, "chaos-hang", &script, TIMEOUT).await?;
    let config = node.pod_config("cni-hangs", "single");
    let mut cri = node.cri.clone();
    let started = Instant::now();
    let run = tokio::spawn(async move { call(&mut cri, &Call::RunPod(Box::new(config))).await });
    // Meanwhile the daemon answers other calls at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        let t = Instant::now();
        node.cri.version().await?;
        node.cri
            .runtime
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await?;
        node.cri.image_fs_info().await?;
        ensure!(
            t.elapsed() < Duration::from_secs(1),
            "the daemon took {:?} to answer while a plugin hangs",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let result = tokio::time::timeout(WAIT, run)
        .await
        .context("RunPodSandbox still waits for the hanging plugin")??;
    let took = started.elapsed();
    let err = match result {
        Ok(id) => bail!("RunPodSandbox succeeded with a hanging plugin: {id:?}"),
        Err(e) => e,
    };
    ensure!(
        took >= Duration::from_secs(TIMEOUT) && took < Duration::from_secs(TIMEOUT * 5 + 5),
        "RunPodSandbox failed after {took:?} with a plugin timeout of {TIMEOUT}s"
    );
    ensure!(
        err.message().contains("timed out") && err.message().contains("chaos-hang"),
        "the error does not say the plugin timed out: {:?} {}",
        err.code(),
        err.message()
    );
    let hung = processes_with_env(&marker);
    for pid in &hung {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    ensure!(
        hung.is_empty(),
        "processes of the timed-out plugin still run: {hung:?}"
    );
    nothing_left(&mut node, &network).await
}
