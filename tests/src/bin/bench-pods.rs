//! `hack/bench pods`: 50 pods of one `sleep` container each on bungeo and on containerd in the
//! same run, interleaved pod by pod. Measures RunPodSandbox+CreateContainer+StartContainer
//! per pod, the memory of the daemon and its per-pod processes with every pod running, then
//! StopContainer+RemoveContainer+StopPodSandbox+RemovePodSandbox per pod; prints p50/p95,
//! memory per running container and the ratios against the goals.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bungeo_tests::benchkit::{Setup, Side, Table, clean_up_after, goal, ratio_at};
use bungeo_tests::leftovers;
use bungeo_tests::{procstat, workload};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Pod start, stop and memory benchmark: bungeo vs containerd")]
struct Args {
    /// Pods per daemon, each with one container.
    #[arg(long, default_value_t = 50)]
    pods: usize,
}

/// The Kubernetes namespace and the cgroup root of the benchmark's pods.
const BENCH: &str = "bungeo-bench-pods";
/// How containerd's pause processes show on their command line (the test pause image).
const PAUSE_ARG: &str = "2147483647";

/// One daemon under test and what the benchmark made and measured on it.
struct Daemon {
    side: Side,
    /// (pod id, container id) of every pod started and not yet removed; [`Side::clean_up`]
    /// removes whatever a failure leaves.
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
    fn new(side: Side) -> Self {
        Self {
            side,
            pods: Vec::new(),
            starts: Vec::new(),
            stops: Vec::new(),
            memory: None,
        }
    }

    /// Starts pod `i` with its container; the latency of the three calls.
    async fn start_pod(&mut self, i: usize, image: &str) -> Result<Duration> {
        let sandbox = self.side.pod_config(&format!("bench-{i}"))?;
        let config = Side::container_config(&sandbox, "sleeper", image, &["sleep", "3600"])?;
        let t = Instant::now();
        let pod = self.side.run_pod(sandbox.clone()).await?;
        let container = self.side.run_container(&pod, &sandbox, config).await?;
        let took = t.elapsed();
        self.pods.push((pod, container));
        Ok(took)
    }

    /// Stops and removes the oldest pod left; the latency of the four calls.
    async fn remove_pod(&mut self) -> Result<Duration> {
        let (pod, container) = self.pods.first().cloned().context("no pod left")?;
        let t = Instant::now();
        // `sleep` as its namespace's init ignores SIGTERM: a grace period would only measure
        // the timeout, so both daemons kill at once (as on a forced delete).
        workload::remove_container(&mut self.side.cri, &container, 0)
            .await
            .with_context(|| self.side.name)?;
        self.side.remove_pod(&pod).await?;
        let took = t.elapsed();
        self.pods.remove(0);
        Ok(took)
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
    u32::try_from(pid)
        .ok()
        .and_then(|pid| procstat::rss_bytes(pid).ok())
        .map_or(0, |bytes| bytes / 1024)
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

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.pods > 0, "--pods must be at least 1");
    let setup = Setup::start().await?;
    let (bungeo, containerd, sides) = setup.start_daemons(BENCH).await?;
    let bungeo_pid = bungeo.pid().context("bungeo has no pid")? as i32;
    let bungeo_dir = bungeo.root().parent().context("bungeo root")?.to_path_buf();
    let containerd_dir = containerd
        .root()
        .parent()
        .context("containerd root")?
        .to_path_buf();
    let containerd_pid = containerd_pid(&containerd_dir)?;
    let image = setup.image();
    let mut daemons = sides.map(Daemon::new);

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
    clean_up_after(result, daemons.iter_mut().map(|d| &mut d.side)).await?;
    report(&args, &daemons, setup.shim.as_deref())
}

/// Every daemon runs exactly the benchmark's containers.
async fn check_running(args: &Args, daemons: &mut [Daemon; 2]) -> Result<()> {
    for d in daemons.iter_mut() {
        let running = d
            .side
            .cri
            .runtime
            .list_containers(k8s_cri::v1::ListContainersRequest { filter: None })
            .await
            .with_context(|| format!("{}: ListContainers", d.side.name))?
            .into_inner()
            .containers
            .iter()
            .filter(|c| c.state() == k8s_cri::v1::ContainerState::ContainerRunning)
            .count();
        ensure!(
            running == args.pods,
            "{}: {running} containers running, want {}",
            d.side.name,
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
    let table = Table::new(44);
    println!("{}", table.header(""));
    let [b, c] = daemons;
    println!(
        "{}",
        table.percentile_rows(
            "start (RunPodSandbox+Create+Start)",
            &b.starts,
            &c.starts,
            &[50, 95],
            1,
        )
    );
    println!(
        "{}",
        table.percentile_rows("stop+remove (4 calls)", &b.stops, &c.stops, &[50, 95], 1)
    );
    let [mb, mc] = [b, c].map(|d| d.memory.unwrap_or_default());
    let row = |label: &str, b: f64, c: f64| println!("{}", table.mib_row(label, b, c));
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
    let start_ratio = ratio_at(&b.starts, &c.starts, 50);
    let mem_ratio = pb / pc;
    println!(
        "{}",
        goal(
            "start p50 <= 0.5x containerd's",
            start_ratio,
            start_ratio <= 0.5
        )
    );
    println!(
        "{}",
        goal(
            "memory per running container <= 0.25x containerd's",
            mem_ratio,
            mem_ratio <= 0.25
        )
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
