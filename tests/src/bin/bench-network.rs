//! `hack/bench network`: RunPodSandbox latency on a bridge network, bungeo vs containerd in
//! the same run, interleaved pod by pod. bungeo runs its default network (the conflist it
//! writes into an empty conf dir: bridge + host-local + portmap + loopback), containerd a
//! conflist of the same shape; each on a bridge and subnet of its own. Prints p50/p90 and the
//! ratio against the goal, then stops and removes every pod, and the bridges go with the
//! daemons.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bungeo_tests::benchkit::{Setup, Side, Table, clean_up_after, goal, ratio_at};
use bungeo_tests::containerd::{Containerd, ContainerdCni};
use bungeo_tests::net::{self, TestNetwork};
use clap::Parser;
use k8s_cri::v1::PodSandboxStatusRequest;

#[derive(Parser)]
#[command(about = "RunPodSandbox latency on a bridge network: bungeo vs containerd")]
struct Args {
    /// Pods per daemon.
    #[arg(long, default_value_t = 50)]
    pods: usize,
}

/// The Kubernetes namespace and the cgroup root of the benchmark's pods.
const BENCH: &str = "bungeo-bench-network";

/// One daemon under test and what the benchmark measured on it.
struct Daemon {
    side: Side,
    subnet: String,
    starts: Vec<Duration>,
    stops: Vec<Duration>,
}

impl Daemon {
    fn new(side: Side, network: Option<&TestNetwork>) -> Result<Self> {
        let network = network.with_context(|| format!("{} has no test network", side.name))?;
        Ok(Self {
            side,
            subnet: network.subnet(),
            starts: Vec::new(),
            stops: Vec::new(),
        })
    }

    /// RunPodSandbox of pod `i`: its latency. The pod must have an address of the subnet.
    async fn start_pod(&mut self, i: usize) -> Result<Duration> {
        let config = self.side.pod_config(&format!("bench-{i}"))?;
        let t = Instant::now();
        let id = self.side.run_pod(config).await?;
        let took = t.elapsed();
        let name = self.side.name;
        let ip = self
            .side
            .cri
            .runtime
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: false,
            })
            .await
            .with_context(|| format!("{name}: PodSandboxStatus {id}"))?
            .into_inner()
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default();
        let prefix = self.subnet.trim_end_matches("0/24");
        ensure!(
            ip.starts_with(prefix),
            "{name}: pod bench-{i} has IP {ip:?}, not one of {}",
            self.subnet
        );
        Ok(took)
    }

    /// StopPodSandbox + RemovePodSandbox of the oldest pod left: their latency.
    async fn remove_pod(&mut self) -> Result<Duration> {
        let id = self.side.pods.first().cloned().context("no pod left")?;
        let t = Instant::now();
        self.side.remove_pod(&id).await?;
        Ok(t.elapsed())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.pods > 0, "--pods must be at least 1");
    ensure!(args.pods <= 250, "--pods must fit a /24 (at most 250)");
    let setup = Setup::start().await?;
    let bungeo = setup.bungeo().await?;
    let containerd = Containerd::start_with_cni(
        &setup.hosts,
        ContainerdCni::bridge(TestNetwork::allocate()?, "bungeo-bench", false),
    )
    .await?;
    let [b, c] = setup.sides(&bungeo, &containerd, BENCH).await?;
    let mut daemons = [
        Daemon::new(b, bungeo.network())?,
        Daemon::new(c, containerd.network())?,
    ];

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
    let result = clean_up_after(result, daemons.iter_mut().map(|d| &mut d.side)).await;
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
    let table = Table::new(40);
    println!("{}", table.header(""));
    let [b, c] = daemons;
    println!(
        "{}",
        table.percentile_rows("RunPodSandbox", &b.starts, &c.starts, &[50, 90], 1)
    );
    println!(
        "{}",
        table.percentile_rows(
            "StopPodSandbox+RemovePodSandbox",
            &b.stops,
            &c.stops,
            &[50, 90],
            1,
        )
    );
    let ratio = ratio_at(&b.starts, &c.starts, 50);
    println!(
        "{}",
        goal(
            "RunPodSandbox p50 <= 0.5x containerd's",
            ratio,
            ratio <= 0.5
        )
    );
}
