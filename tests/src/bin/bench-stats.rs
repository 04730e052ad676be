//! `hack/bench stats`: with 50 pods of one `sleep` container each running on bungeo and on
//! containerd in the same run, the latency of ListContainerStats and ListPodSandboxStats (what
//! kubelet calls every few seconds on every node), calls alternating between the daemons;
//! prints p50/p90 and the ratio against the goal (bungeo's p50 at most half containerd's).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bungeo_tests::benchkit::{Setup, Side, Table, clean_up_after, goal, ratio_at};
use clap::Parser;
use k8s_cri::v1::{ListContainerStatsRequest, ListPodSandboxStatsRequest};

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

/// The Kubernetes namespace and the cgroup root of the benchmark's pods.
const BENCH: &str = "bungeo-bench-stats";

struct Daemon {
    side: Side,
    containers: Vec<Duration>,
    sandboxes: Vec<Duration>,
}

impl Daemon {
    fn new(side: Side) -> Self {
        Self {
            side,
            containers: Vec::new(),
            sandboxes: Vec::new(),
        }
    }

    async fn start_pod(&mut self, i: usize, image: &str) -> Result<()> {
        let sandbox = self.side.pod_config(&format!("stats-{i}"))?;
        let config = Side::container_config(&sandbox, "sleeper", image, &["sleep", "3600"])?;
        let pod = self.side.run_pod(sandbox.clone()).await?;
        self.side.run_container(&pod, &sandbox, config).await?;
        Ok(())
    }

    /// One ListContainerStats: its latency and how many containers it reported.
    async fn list_containers(&mut self) -> Result<(Duration, usize)> {
        let t = Instant::now();
        let n = self
            .side
            .cri
            .runtime
            .list_container_stats(ListContainerStatsRequest { filter: None })
            .await
            .with_context(|| format!("{}: ListContainerStats", self.side.name))?
            .into_inner()
            .stats
            .len();
        Ok((t.elapsed(), n))
    }

    /// One ListPodSandboxStats: its latency and how many pods it reported.
    async fn list_pods(&mut self) -> Result<(Duration, usize)> {
        let t = Instant::now();
        let n = self
            .side
            .cri
            .runtime
            .list_pod_sandbox_stats(ListPodSandboxStatsRequest { filter: None })
            .await
            .with_context(|| format!("{}: ListPodSandboxStats", self.side.name))?
            .into_inner()
            .stats
            .len();
        Ok((t.elapsed(), n))
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.pods > 0 && args.iterations > 0,
        "--pods and --iterations must be at least 1"
    );
    let setup = Setup::start().await?;
    // Kept until the end: dropping one stops its daemon.
    let (_bungeo, _containerd, sides) = setup.start_daemons(BENCH).await?;
    let image = setup.image();
    let mut daemons = sides.map(Daemon::new);

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
                    d.side.name,
                    args.pods
                );
                d.containers.push(t);
                let (t, n) = d.list_pods().await?;
                ensure!(
                    n == args.pods,
                    "{}: ListPodSandboxStats reported {n} pods, want {}",
                    d.side.name,
                    args.pods
                );
                d.sandboxes.push(t);
            }
        }
        anyhow::Ok(())
    }
    .await;
    clean_up_after(result, daemons.iter_mut().map(|d| &mut d.side)).await?;
    report(&args, &daemons);
    Ok(())
}

fn report(args: &Args, daemons: &[Daemon; 2]) {
    println!(
        "{} pods of one `sleep 3600` container each per daemon; {} calls of each kind per daemon, alternating",
        args.pods, args.iterations
    );
    let table = Table::new(28);
    println!("{}", table.header(""));
    let [b, c] = daemons;
    let kinds = [
        ("ListContainerStats", &b.containers, &c.containers),
        ("ListPodSandboxStats", &b.sandboxes, &c.sandboxes),
    ];
    for (label, vb, vc) in kinds {
        println!("{}", table.percentile_rows(label, vb, vc, &[50, 90], 2));
    }
    for (label, vb, vc) in kinds {
        let ratio = ratio_at(vb, vc, 50);
        let what = format!("{label} p50 <= 0.5x containerd's");
        println!("{}", goal(&what, ratio, ratio <= 0.5));
    }
}
