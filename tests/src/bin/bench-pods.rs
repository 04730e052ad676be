//! `hack/bench pods`: 50 pods of one `sleep` container each on bungeo and on containerd in the
//! same run, interleaved pod by pod. Measures RunPodSandbox+CreateContainer+StartContainer
//! per pod, the memory of the daemon and its per-pod processes with every pod running, then
//! StopContainer+RemoveContainer+StopPodSandbox+RemovePodSandbox per pod; prints p50/p95,
//! memory per running container and the ratios against the goals.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bungeo_tests::bungeo::Bungeo;
use bungeo_tests::containerd::Containerd;
use bungeo_tests::cri::Cri;
use bungeo_tests::images::{self, Catalog, PAUSE, PAUSE_REFERENCE, PLAIN, Pusher};
use bungeo_tests::leftovers;
use bungeo_tests::registry::Registry;
use bungeo_tests::registryhosts::{RegistryHosts, toml_string};
use clap::Parser;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest,
};

#[derive(Parser)]
#[command(about = "Pod start, stop and memory benchmark: bungeo vs containerd")]
struct Args {
    /// Pods per daemon, each with one container.
    #[arg(long, default_value_t = 50)]
    pods: usize,
}

/// The Kubernetes namespace of the benchmark's pods.
const POD_NAMESPACE: &str = "bungeo-bench";
/// The first component of the pods' cgroup parents.
const CGROUP_ROOT: &str = "bungeo-bench-pods";
/// How containerd's pause processes show on their command line (the test pause image).
const PAUSE_ARG: &str = "2147483647";

/// One daemon under test and what the benchmark made and measured on it.
struct Daemon {
    name: &'static str,
    cri: Cri,
    logs: tempfile::TempDir,
    /// (pod id, container id) of every pod still there.
    pods: Vec<(String, String)>,
    starts: Vec<Duration>,
    stops: Vec<Duration>,
    memory: Option<Memory>,
}

/// Resident memory of a daemon and its per-pod processes, in KiB.
#[derive(Debug, Default, Clone, Copy)]
struct Memory {
    daemon_rss: u64,
    daemon_pss: u64,
    shims: usize,
    shims_rss: u64,
    shims_pss: u64,
    /// containerd's pause processes (bungeo has none).
    pauses: usize,
    pauses_rss: u64,
    pauses_pss: u64,
}

impl Memory {
    fn total_rss(&self) -> u64 {
        self.daemon_rss + self.shims_rss + self.pauses_rss
    }

    fn total_pss(&self) -> u64 {
        self.daemon_pss + self.shims_pss + self.pauses_pss
    }
}

impl Daemon {
    async fn new(name: &'static str, socket: &Path) -> Result<Self> {
        Ok(Self {
            name,
            cri: Cri::connect(socket).await?,
            logs: tempfile::Builder::new()
                .prefix("bungeo-bench-logs-")
                .tempdir()
                .context("create the pod log directory")?,
            pods: Vec::new(),
            starts: Vec::new(),
            stops: Vec::new(),
            memory: None,
        })
    }

    fn cgroup_parent(&self) -> String {
        format!("/{CGROUP_ROOT}/{}", self.name)
    }

    fn pod_config(&self, i: usize) -> PodSandboxConfig {
        let name = format!("bench-{i}");
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.clone(),
                uid: format!("bench-{}-{i}", self.name),
                namespace: POD_NAMESPACE.to_string(),
                attempt: 0,
            }),
            hostname: name.clone(),
            log_directory: self.logs.path().join(&name).to_string_lossy().into_owned(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Starts pod `i` with its container; the latency of the three calls.
    async fn start_pod(&mut self, i: usize, image: &str) -> Result<Duration> {
        let sandbox = self.pod_config(i);
        // kubelet makes the log directories before it calls.
        std::fs::create_dir_all(Path::new(&sandbox.log_directory).join("sleeper"))
            .context("create the container log directory")?;
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: "sleeper".into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            command: vec!["sleep".into(), "3600".into()],
            log_path: "sleeper/0.log".into(),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let rt = &mut self.cri.runtime;
        let t = Instant::now();
        let pod = rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(sandbox.clone()),
                runtime_handler: String::new(),
            })
            .await
            .with_context(|| format!("{}: RunPodSandbox bench-{i}", self.name))?
            .into_inner()
            .pod_sandbox_id;
        let created = rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(config),
                sandbox_config: Some(sandbox),
            })
            .await;
        let container = match created {
            Ok(r) => r.into_inner().container_id,
            Err(e) => {
                self.pods.push((pod, String::new()));
                return Err(e).with_context(|| format!("{}: CreateContainer bench-{i}", self.name));
            }
        };
        self.pods.push((pod, container.clone()));
        rt.start_container(StartContainerRequest {
            container_id: container.clone(),
        })
        .await
        .with_context(|| format!("{}: StartContainer {container}", self.name))?;
        Ok(t.elapsed())
    }

    /// Stops and removes the oldest pod left; the latency of the four calls.
    async fn remove_pod(&mut self) -> Result<Duration> {
        let (pod, container) = self.pods.remove(0);
        let rt = &mut self.cri.runtime;
        let t = Instant::now();
        if !container.is_empty() {
            // `sleep` as its namespace's init ignores SIGTERM: a grace period would only
            // measure the timeout, so both daemons kill at once (as on a forced delete).
            rt.stop_container(StopContainerRequest {
                container_id: container.clone(),
                timeout: 0,
            })
            .await
            .with_context(|| format!("{}: StopContainer {container}", self.name))?;
            rt.remove_container(RemoveContainerRequest {
                container_id: container.clone(),
            })
            .await
            .with_context(|| format!("{}: RemoveContainer {container}", self.name))?;
        }
        rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .with_context(|| format!("{}: StopPodSandbox {pod}", self.name))?;
        rt.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .with_context(|| format!("{}: RemovePodSandbox {pod}", self.name))?;
        Ok(t.elapsed())
    }

    /// Best effort: every pod still there stopped and removed, then the cgroup parent.
    async fn clean_up(&mut self) {
        while !self.pods.is_empty() {
            if let Err(e) = self.remove_pod().await {
                eprintln!("cleanup: {e:#}");
            }
        }
        let parent = self.cgroup_parent();
        leftovers::remove_cgroup_tree(&parent);
        for hierarchy in leftovers::cgroup_hierarchies() {
            let _ = std::fs::remove_dir(hierarchy.join(CGROUP_ROOT));
        }
    }
}

/// Pod network and IPC, a PID namespace per container: what kubelet asks by default.
fn namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// A `<Key>:  <n> kB` line of a `/proc/<pid>` file, in KiB (0 when the process is gone).
fn proc_kib(pid: i32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn rss(pid: i32) -> u64 {
    proc_kib(pid, "status", "VmRSS:")
}

fn pss(pid: i32) -> u64 {
    proc_kib(pid, "smaps_rollup", "Pss:")
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The daemon's and its per-pod processes' memory. Shims and the daemon name the daemon's
/// directory on their command lines; pause processes are the shims' descendants that run
/// the pause image's command.
fn measure(dir: &Path, daemon: i32, shim_comm: &str) -> Memory {
    let mentioning = leftovers::processes_mentioning(dir);
    // /proc/<pid>/comm holds at most 15 bytes.
    let shim_comm: String = shim_comm.chars().take(15).collect();
    let shims: Vec<i32> = mentioning
        .iter()
        .copied()
        .filter(|p| *p != daemon && comm(*p) == shim_comm)
        .collect();
    let pauses: BTreeSet<i32> = leftovers::with_descendants(&shims)
        .into_iter()
        .filter(|p| cmdline(*p).iter().any(|a| a == PAUSE_ARG))
        .collect();
    Memory {
        daemon_rss: rss(daemon),
        daemon_pss: pss(daemon),
        shims: shims.len(),
        shims_rss: shims.iter().map(|p| rss(*p)).sum(),
        shims_pss: shims.iter().map(|p| pss(*p)).sum(),
        pauses: pauses.len(),
        pauses_rss: pauses.iter().map(|p| rss(*p)).sum(),
        pauses_pss: pauses.iter().map(|p| pss(*p)).sum(),
    }
}

/// containerd's own pid: the `containerd` process naming its directory.
fn containerd_pid(dir: &Path) -> Result<i32> {
    leftovers::processes_mentioning(dir)
        .into_iter()
        .find(|p| comm(*p) == "containerd")
        .with_context(|| format!("no containerd process naming {}", dir.display()))
}

/// Nearest-rank percentile of sorted `v`.
fn percentile(v: &[Duration], p: f64) -> Duration {
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.pods > 0, "--pods must be at least 1");
    let registry = Registry::start()?;
    let catalog = Catalog::build(&images::read_busybox()?, false)?;
    let pusher = Pusher::new(&registry.host(), None);
    images::push_all(&pusher, &catalog, &[PLAIN]).await?;
    pusher
        .push(PAUSE.repo, Some(PAUSE.tag), catalog.get(PAUSE)?)
        .await?;
    let hosts = RegistryHosts {
        plain_http: vec![registry.host()],
        // containerd's sandbox image is a docker.io name: served by our registry.
        mirrors: BTreeMap::from([("docker.io".to_string(), vec![registry.host()])]),
        ..Default::default()
    };
    let mut config = hosts.bungeo_toml();
    let shim = std::env::var_os("BUNGEO_SHIM_BIN").map(PathBuf::from);
    if let Some(shim) = &shim {
        config.push_str(&format!(
            "\n[shim]\nbinary = {}\n",
            toml_string(&shim.to_string_lossy())
        ));
    }
    let bungeo = Bungeo::start_with_config(&config).await?;
    let containerd = Containerd::start(&hosts).await?;
    let bungeo_pid = bungeo.pid().context("bungeo has no pid")? as i32;
    let bungeo_dir = bungeo.root().parent().context("bungeo root")?.to_path_buf();
    let containerd_dir = containerd
        .root()
        .parent()
        .context("containerd root")?
        .to_path_buf();
    let containerd_pid = containerd_pid(&containerd_dir)?;
    let image = PLAIN.at(&registry.host());
    let mut daemons = [
        Daemon::new("bungeo", bungeo.socket()).await?,
        Daemon::new("containerd", containerd.socket()).await?,
    ];
    for d in daemons.iter_mut() {
        d.cri
            .pull(&image, None)
            .await
            .with_context(|| format!("{}: pull {image}", d.name))?;
    }
    // Pulled ahead so containerd's first pod is not billed for it.
    daemons[1]
        .cri
        .pull(PAUSE_REFERENCE, None)
        .await
        .context("containerd: pull the pause image")?;

    // Memory is taken between the starts and the removals, with every pod running; pods
    // are cleaned up whatever fails.
    let result = async {
        for i in 0..args.pods {
            for d in daemons.iter_mut() {
                let t = d.start_pod(i, &image).await?;
                d.starts.push(t);
            }
        }
        // Let the just-started processes settle (lazy faults, first log writes).
        tokio::time::sleep(Duration::from_secs(2)).await;
        check_running(&args, &mut daemons).await?;
        daemons[0].memory = Some(measure(&bungeo_dir, bungeo_pid, "bungeo-shim"));
        daemons[1].memory = Some(measure(
            &containerd_dir,
            containerd_pid,
            "containerd-shim-runc-v2",
        ));
        remove_all(&args, &mut daemons).await
    }
    .await;
    for d in daemons.iter_mut() {
        d.clean_up().await;
    }
    result?;
    report(&args, &daemons, shim.as_deref())
}

/// Every daemon runs exactly the benchmark's containers.
async fn check_running(args: &Args, daemons: &mut [Daemon; 2]) -> Result<()> {
    for d in daemons.iter_mut() {
        let running = d
            .cri
            .runtime
            .list_containers(k8s_cri::v1::ListContainersRequest { filter: None })
            .await
            .with_context(|| format!("{}: ListContainers", d.name))?
            .into_inner()
            .containers
            .iter()
            .filter(|c| c.state() == k8s_cri::v1::ContainerState::ContainerRunning)
            .count();
        ensure!(
            running == args.pods,
            "{}: {running} containers running, want {}",
            d.name,
            args.pods
        );
    }
    Ok(())
}

async fn remove_all(args: &Args, daemons: &mut [Daemon; 2]) -> Result<()> {
    for _ in 0..args.pods {
        for d in daemons.iter_mut() {
            let t = d.remove_pod().await?;
            d.stops.push(t);
        }
    }
    Ok(())
}

fn report(args: &Args, daemons: &[Daemon; 2], shim: Option<&Path>) -> Result<()> {
    let n = args.pods;
    println!(
        "{n} pods of one `sleep 3600` container each per daemon, interleaved pod by pod (shim: {})",
        shim.map_or_else(
            || "beside the bungeo binary".to_string(),
            |p| p.display().to_string()
        )
    );
    println!(
        "{:<44} {:>12} {:>12} {:>8}",
        "", "bungeo", "containerd", "ratio"
    );
    let mut sorted = daemons.each_ref().map(|d| {
        let (mut s, mut t) = (d.starts.clone(), d.stops.clone());
        s.sort();
        t.sort();
        (s, t)
    });
    for (label, p) in [("p50", 0.5), ("p95", 0.95)] {
        let [b, c] = sorted.each_mut().map(|(s, _)| percentile(s, p));
        println!(
            "{:<44} {:>10.1}ms {:>10.1}ms {:>7.2}x",
            format!("start (RunPodSandbox+Create+Start) {label}"),
            ms(b),
            ms(c),
            ms(b) / ms(c)
        );
    }
    for (label, p) in [("p50", 0.5), ("p95", 0.95)] {
        let [b, c] = sorted.each_mut().map(|(_, t)| percentile(t, p));
        println!(
            "{:<44} {:>10.1}ms {:>10.1}ms {:>7.2}x",
            format!("stop+remove (4 calls) {label}"),
            ms(b),
            ms(c),
            ms(b) / ms(c)
        );
    }
    let [mb, mc] = daemons.each_ref().map(|d| d.memory.unwrap_or_default());
    let row = |label: &str, b: f64, c: f64| {
        let ratio = if c > 0.0 {
            format!("{:>7.2}x", b / c)
        } else {
            format!("{:>8}", "-")
        };
        println!("{label:<44} {b:>9.1}MiB {c:>9.1}MiB {ratio}");
    };
    println!("memory with all {n} pods running (RSS; PSS in brackets)");
    row("  daemon RSS", mib(mb.daemon_rss), mib(mc.daemon_rss));
    row(
        &format!("  shims RSS (bungeo {}, containerd {})", mb.shims, mc.shims),
        mib(mb.shims_rss),
        mib(mc.shims_rss),
    );
    row(
        &format!(
            "  pause RSS (bungeo {}, containerd {})",
            mb.pauses, mc.pauses
        ),
        mib(mb.pauses_rss),
        mib(mc.pauses_rss),
    );
    row("  total RSS", mib(mb.total_rss()), mib(mc.total_rss()));
    row("  [total PSS]", mib(mb.total_pss()), mib(mc.total_pss()));
    let per = |total: u64| mib(total) / n as f64;
    let (pb, pc) = (per(mb.total_rss()), per(mc.total_rss()));
    row("  per running container RSS", pb, pc);
    row(
        "  [per running container PSS]",
        per(mb.total_pss()),
        per(mc.total_pss()),
    );
    let [b50, c50] = sorted.each_mut().map(|(s, _)| percentile(s, 0.5));
    let start_ratio = ms(b50) / ms(c50);
    let mem_ratio = pb / pc;
    let verdict = |ok: bool| if ok { "MET" } else { "NOT MET" };
    println!(
        "goal: start p50 <= 0.5x containerd's: {start_ratio:.2}x -> {}",
        verdict(start_ratio <= 0.5)
    );
    println!(
        "goal: memory per running container <= 0.25x containerd's: {mem_ratio:.2}x -> {}",
        verdict(mem_ratio <= 0.25)
    );
    ensure!(
        mb.shims == n && mc.shims == n && mc.pauses == n,
        "process counts off: bungeo {} shims, containerd {} shims and {} pause processes, \
         want {n} each",
        mb.shims,
        mc.shims,
        mc.pauses
    );
    Ok(())
}
