//! `hack/bench network`: RunPodSandbox latency on a bridge network, bungeo vs containerd in
//! the same run, interleaved pod by pod. bungeo runs its default network (the conflist it
//! writes into an empty conf dir: bridge + host-local + portmap + loopback), containerd a
//! conflist of the same shape; each on a bridge and subnet of its own. Prints p50/p90 and the
//! ratio against the goal, then stops and removes every pod, and the bridges go with the
//! daemons.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bungeo_tests::bungeo::Bungeo;
use bungeo_tests::containerd::{Containerd, ContainerdCni};
use bungeo_tests::cri::Cri;
use bungeo_tests::images::{self, Catalog, PAUSE, PAUSE_REFERENCE, PLAIN, Pusher};
use bungeo_tests::leftovers;
use bungeo_tests::net::{self, TestNetwork};
use bungeo_tests::registry::Registry;
use bungeo_tests::registryhosts::RegistryHosts;
use clap::Parser;
use k8s_cri::v1::{
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StopPodSandboxRequest,
};

#[derive(Parser)]
#[command(about = "RunPodSandbox latency on a bridge network: bungeo vs containerd")]
struct Args {
    /// Pods per daemon.
    #[arg(long, default_value_t = 50)]
    pods: usize,
}

/// The Kubernetes namespace of the benchmark's pods.
const POD_NAMESPACE: &str = "bungeo-bench-network";
/// The first component of the pods' cgroup parents.
const CGROUP_ROOT: &str = "bungeo-bench-network";

/// One daemon under test and what the benchmark made and measured on it.
struct Daemon {
    name: &'static str,
    cri: Cri,
    subnet: String,
    pods: Vec<String>,
    starts: Vec<Duration>,
    stops: Vec<Duration>,
}

impl Daemon {
    async fn new(
        name: &'static str,
        socket: &std::path::Path,
        network: &TestNetwork,
    ) -> Result<Self> {
        Ok(Self {
            name,
            cri: Cri::connect(socket).await?,
            subnet: network.subnet(),
            pods: Vec::new(),
            starts: Vec::new(),
            stops: Vec::new(),
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
            hostname: name,
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Pod as i32,
                        pid: NamespaceMode::Container as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox of pod `i`: its latency. The pod must have an address of the subnet.
    async fn start_pod(&mut self, i: usize) -> Result<Duration> {
        let config = self.pod_config(i);
        let t = Instant::now();
        let id = self
            .cri
            .runtime
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .with_context(|| format!("{}: RunPodSandbox bench-{i}", self.name))?
            .into_inner()
            .pod_sandbox_id;
        let took = t.elapsed();
        self.pods.push(id.clone());
        let ip = self
            .cri
            .runtime
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: false,
            })
            .await
            .with_context(|| format!("{}: PodSandboxStatus {id}", self.name))?
            .into_inner()
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default();
        let prefix = self.subnet.trim_end_matches("0/24");
        ensure!(
            ip.starts_with(prefix),
            "{}: pod bench-{i} has IP {ip:?}, not one of {}",
            self.name,
            self.subnet
        );
        Ok(took)
    }

    /// StopPodSandbox + RemovePodSandbox of the oldest pod left: their latency.
    async fn remove_pod(&mut self) -> Result<Duration> {
        let id = self.pods.remove(0);
        let rt = &mut self.cri.runtime;
        let t = Instant::now();
        rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .with_context(|| format!("{}: StopPodSandbox {id}", self.name))?;
        rt.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .with_context(|| format!("{}: RemovePodSandbox {id}", self.name))?;
        Ok(t.elapsed())
    }

    /// Best effort: every pod still there stopped and removed, then the cgroup parent.
    async fn clean_up(&mut self) {
        while !self.pods.is_empty() {
            if let Err(e) = self.remove_pod().await {
                eprintln!("cleanup: {e:#}");
            }
        }
        leftovers::remove_cgroup_tree(&self.cgroup_parent());
        for hierarchy in leftovers::cgroup_hierarchies() {
            let _ = std::fs::remove_dir(hierarchy.join(CGROUP_ROOT));
        }
    }
}

/// Nearest-rank percentile of sorted `v`.
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
    ensure!(args.pods > 0, "--pods must be at least 1");
    ensure!(args.pods <= 250, "--pods must fit a /24 (at most 250)");
    let registry = Registry::start()?;
    let catalog = Catalog::build(&images::read_busybox()?, false)?;
    let pusher = Pusher::new(&registry.host(), None);
    pusher
        .push(PAUSE.repo, Some(PAUSE.tag), catalog.get(PAUSE)?)
        .await?;
    // Not used by the pods; pushed so the registry serves a docker.io library name too.
    images::push_all(&pusher, &catalog, &[PLAIN]).await?;
    let hosts = RegistryHosts {
        plain_http: vec![registry.host()],
        // containerd's sandbox image is a docker.io name: served by our registry.
        mirrors: BTreeMap::from([("docker.io".to_string(), vec![registry.host()])]),
        ..Default::default()
    };
    let bungeo = Bungeo::start(&hosts).await?;
    let containerd = Containerd::start_with_cni(
        &hosts,
        ContainerdCni::bridge(TestNetwork::allocate()?, "bungeo-bench", false),
    )
    .await?;
    let mut daemons = [
        Daemon::new(
            "bungeo",
            bungeo.socket(),
            bungeo.network().context("bungeo has no test network")?,
        )
        .await?,
        Daemon::new(
            "containerd",
            containerd.socket(),
            containerd
                .network()
                .context("containerd has no test network")?,
        )
        .await?,
    ];
    // Pulled ahead so containerd's first pod is not billed for it.
    daemons[1]
        .cri
        .pull(PAUSE_REFERENCE, None)
        .await
        .context("containerd: pull the pause image")?;

    let result = async {
        for i in 0..args.pods {
            for d in daemons.iter_mut() {
                let t = d.start_pod(i).await?;
                d.starts.push(t);
            }
        }
        for _ in 0..args.pods {
            for d in daemons.iter_mut() {
                let t = d.remove_pod().await?;
                d.stops.push(t);
            }
        }
        anyhow::Ok(())
    }
    .await;
    for d in daemons.iter_mut() {
        d.clean_up().await;
    }
    let left: Vec<String> = [bungeo.network(), containerd.network()]
        .into_iter()
        .flatten()
        .flat_map(|n| n.leftovers())
        .collect();
    drop(bungeo);
    drop(containerd);
    net::remove_idle_hostport_chains();
    result?;
    report(&args, &daemons);
    ensure!(
        left.is_empty(),
        "left after every pod was removed: {left:?}"
    );
    Ok(())
}

fn report(args: &Args, daemons: &[Daemon; 2]) {
    println!(
        "{} pods per daemon on a bridge network (bridge + host-local + portmap), \
         interleaved pod by pod, no containers",
        args.pods
    );
    println!(
        "{:<40} {:>12} {:>12} {:>8}",
        "", "bungeo", "containerd", "ratio"
    );
    let mut sorted = daemons.each_ref().map(|d| {
        let (mut s, mut t) = (d.starts.clone(), d.stops.clone());
        s.sort();
        t.sort();
        (s, t)
    });
    for (label, p) in [("p50", 0.5), ("p90", 0.9)] {
        let [b, c] = sorted.each_mut().map(|(s, _)| percentile(s, p));
        println!(
            "{:<40} {:>10.1}ms {:>10.1}ms {:>7.2}x",
            format!("RunPodSandbox {label}"),
            ms(b),
            ms(c),
            ms(b) / ms(c)
        );
    }
    for (label, p) in [("p50", 0.5), ("p90", 0.9)] {
        let [b, c] = sorted.each_mut().map(|(_, t)| percentile(t, p));
        println!(
            "{:<40} {:>10.1}ms {:>10.1}ms {:>7.2}x",
            format!("StopPodSandbox+RemovePodSandbox {label}"),
            ms(b),
            ms(c),
            ms(b) / ms(c)
        );
    }
    let [b50, c50] = sorted.each_mut().map(|(s, _)| percentile(s, 0.5));
    let ratio = ms(b50) / ms(c50);
    println!(
        "goal: RunPodSandbox p50 <= 0.5x containerd's: {ratio:.2}x -> {}",
        if ratio <= 0.5 { "MET" } else { "NOT MET" }
    );
}
