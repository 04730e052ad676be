//! `hack/bench stats`: with 50 pods of one `sleep` container each running on bungeo and on
//! containerd in the same run, the latency of ListContainerStats and ListPodSandboxStats (what
//! kubelet calls every few seconds on every node), calls alternating between the daemons;
//! prints p50/p90 and the ratio against the goal (bungeo's p50 at most half containerd's).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bungeo_tests::bungeo::Bungeo;
use bungeo_tests::containerd::Containerd;
use bungeo_tests::cri::Cri;
use bungeo_tests::images::{self, Catalog, PAUSE, PAUSE_REFERENCE, PLAIN, Pusher};
use bungeo_tests::leftovers;
use bungeo_tests::registry::Registry;
use bungeo_tests::registryhosts::RegistryHosts;
use clap::Parser;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    ListContainerStatsRequest, ListPodSandboxStatsRequest, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopPodSandboxRequest,
};

#[derive(Parser)]
#[command(about = "ListContainerStats and ListPodSandboxStats latency: bungeo vs containerd")]
struct Args {
    /// Pods per daemon, each with one container.
    #[arg(long, default_value_t = 50)]
    pods: usize,
    /// Timed calls of each kind per daemon.
    #[arg(long, default_value_t = 100)]
    iterations: usize,
    /// Untimed calls first (the first call of a container measures its writable layer).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
}

const POD_NAMESPACE: &str = "bungeo-bench";
const CGROUP_ROOT: &str = "bungeo-bench-stats";

struct Daemon {
    name: &'static str,
    cri: Cri,
    logs: tempfile::TempDir,
    pods: Vec<String>,
    containers: Vec<Duration>,
    sandboxes: Vec<Duration>,
}

fn namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
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
            containers: Vec::new(),
            sandboxes: Vec::new(),
        })
    }

    fn cgroup_parent(&self) -> String {
        format!("/{CGROUP_ROOT}/{}", self.name)
    }

    async fn start_pod(&mut self, i: usize, image: &str) -> Result<()> {
        let name = format!("stats-{i}");
        let sandbox = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.clone(),
                uid: format!("stats-{}-{i}", self.name),
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
        };
        std::fs::create_dir_all(Path::new(&sandbox.log_directory).join("sleeper"))?;
        let rt = &mut self.cri.runtime;
        let pod = rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(sandbox.clone()),
                runtime_handler: String::new(),
            })
            .await
            .with_context(|| format!("{}: RunPodSandbox {name}", self.name))?
            .into_inner()
            .pod_sandbox_id;
        self.pods.push(pod.clone());
        let container = rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod,
                config: Some(ContainerConfig {
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
                }),
                sandbox_config: Some(sandbox),
            })
            .await
            .with_context(|| format!("{}: CreateContainer in {name}", self.name))?
            .into_inner()
            .container_id;
        rt.start_container(StartContainerRequest {
            container_id: container,
        })
        .await
        .with_context(|| format!("{}: StartContainer in {name}", self.name))?;
        Ok(())
    }

    /// One ListContainerStats: its latency and how many containers it reported.
    async fn list_containers(&mut self) -> Result<(Duration, usize)> {
        let t = Instant::now();
        let n = self
            .cri
            .runtime
            .list_container_stats(ListContainerStatsRequest { filter: None })
            .await
            .with_context(|| format!("{}: ListContainerStats", self.name))?
            .into_inner()
            .stats
            .len();
        Ok((t.elapsed(), n))
    }

    /// One ListPodSandboxStats: its latency and how many pods it reported.
    async fn list_pods(&mut self) -> Result<(Duration, usize)> {
        let t = Instant::now();
        let n = self
            .cri
            .runtime
            .list_pod_sandbox_stats(ListPodSandboxStatsRequest { filter: None })
            .await
            .with_context(|| format!("{}: ListPodSandboxStats", self.name))?
            .into_inner()
            .stats
            .len();
        Ok((t.elapsed(), n))
    }

    async fn clean_up(&mut self) {
        for pod in std::mem::take(&mut self.pods) {
            let rt = &mut self.cri.runtime;
            let stopped = rt
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: pod.clone(),
                })
                .await;
            let removed = rt
                .remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: pod.clone(),
                })
                .await;
            if let Err(e) = stopped.and(removed) {
                eprintln!("cleanup: {}: pod {pod}: {e}", self.name);
            }
        }
        leftovers::remove_cgroup_tree(&self.cgroup_parent());
        for hierarchy in leftovers::cgroup_hierarchies() {
            let _ = std::fs::remove_dir(hierarchy.join(CGROUP_ROOT));
        }
    }
}

fn percentile(v: &[Duration], p: f64) -> Duration {
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.pods > 0 && args.iterations > 0,
        "--pods and --iterations must be at least 1"
    );
    let registry = Registry::start()?;
    let catalog = Catalog::build(&images::read_busybox()?, false)?;
    let pusher = Pusher::new(&registry.host(), None);
    images::push_all(&pusher, &catalog, &[PLAIN]).await?;
    pusher
        .push(PAUSE.repo, Some(PAUSE.tag), catalog.get(PAUSE)?)
        .await?;
    let hosts = RegistryHosts {
        plain_http: vec![registry.host()],
        mirrors: BTreeMap::from([("docker.io".to_string(), vec![registry.host()])]),
        ..Default::default()
    };
    let bungeo = Bungeo::start(&hosts).await?;
    let containerd = Containerd::start(&hosts).await?;
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
    daemons[1]
        .cri
        .pull(PAUSE_REFERENCE, None)
        .await
        .context("containerd: pull the pause image")?;

    let result = async {
        for i in 0..args.pods {
            for d in daemons.iter_mut() {
                d.start_pod(i, &image).await?;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        for _ in 0..args.warmup {
            for d in daemons.iter_mut() {
                d.list_containers().await?;
                d.list_pods().await?;
            }
        }
        for _ in 0..args.iterations {
            for d in daemons.iter_mut() {
                let (t, n) = d.list_containers().await?;
                ensure!(
                    n == args.pods,
                    "{}: ListContainerStats reported {n} containers, want {}",
                    d.name,
                    args.pods
                );
                d.containers.push(t);
                let (t, n) = d.list_pods().await?;
                ensure!(
                    n == args.pods,
                    "{}: ListPodSandboxStats reported {n} pods, want {}",
                    d.name,
                    args.pods
                );
                d.sandboxes.push(t);
            }
        }
        anyhow::Ok(())
    }
    .await;
    for d in daemons.iter_mut() {
        d.clean_up().await;
    }
    result?;
    report(&args, &mut daemons);
    Ok(())
}

fn report(args: &Args, daemons: &mut [Daemon; 2]) {
    println!(
        "{} pods of one `sleep 3600` container each per daemon; {} calls of each kind per daemon, alternating",
        args.pods, args.iterations
    );
    println!(
        "{:<28} {:>12} {:>12} {:>8}",
        "", "bungeo", "containerd", "ratio"
    );
    let mut ratios = Vec::new();
    for (label, pick) in [
        ("ListContainerStats", 0usize),
        ("ListPodSandboxStats", 1usize),
    ] {
        let sorted = daemons.each_mut().map(|d| {
            let v = if pick == 0 {
                &mut d.containers
            } else {
                &mut d.sandboxes
            };
            v.sort();
            v.clone()
        });
        for (p_label, p) in [("p50", 0.5), ("p90", 0.9)] {
            let [b, c] = sorted.each_ref().map(|v| percentile(v, p));
            let ratio = ms(b) / ms(c);
            println!(
                "{:<28} {:>10.2}ms {:>10.2}ms {:>7.2}x",
                format!("{label} {p_label}"),
                ms(b),
                ms(c),
                ratio
            );
            if p_label == "p50" {
                ratios.push((label, ratio));
            }
        }
    }
    for (label, ratio) in ratios {
        let verdict = if ratio <= 0.5 { "MET" } else { "NOT MET" };
        println!("goal: {label} p50 <= 0.5x containerd's: {ratio:.2}x -> {verdict}");
    }
}
