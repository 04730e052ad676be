//! Concurrency and leaks: 100 pods on the bridge network, each with one running container,
//! created concurrently and removed concurrently, for `BUNGEO_LEAK_ROUNDS` rounds (default 3)
//! after a warm-up round. Every call must succeed, and after every round nothing may be left:
//! mounts, namespace pins, veths, IP allocations, cgroups, shims, files in the state dir and in
//! the root's sandboxes/ and containers/, records. After the rounds the daemon's descriptor
//! count and RSS must be back at their post-warm-up baseline.
//!
//! bungeo only: the figure is about bungeo's own bookkeeping, and containerd's pause
//! containers and shims would make the round take minutes without telling us more.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bungeo_tests::bungeo::Bungeo;
use bungeo_tests::cri::Cri;
use bungeo_tests::leftovers;
use bungeo_tests::mounts::mounts_under;
use bungeo_tests::net;
use bungeo_tests::procstat;
use bungeo_tests::workload::{
    self, BusyboxRegistry, container_config, pod_config, remove_container, remove_pod,
    run_container, run_pod,
};
use libtest_mimic::{Arguments, Failed, Trial};

/// Pods a round makes, all at once.
const PODS: usize = 100;
/// The Kubernetes namespace (and label) of the pods.
const NAMESPACE: &str = "bungeo-e2e-leaks";
/// The cgroup parent of every pod: nothing may be left below it.
const CGROUP_PARENT: &str = "/bungeo-e2e-leaks";
/// RSS growth tolerated over the baseline: the larger of this and [`RSS_SLACK_PERCENT`].
/// glibc's malloc keeps freed memory in per-thread arenas and the tokio workers that served a
/// round hold on to them; what matters is that the RSS does not grow with every round, and a
/// real leak of 100 pods' state per round would exceed this after three rounds.
const RSS_SLACK_BYTES: u64 = 8 << 20;
/// See [`RSS_SLACK_BYTES`].
const RSS_SLACK_PERCENT: u64 = 10;

fn main() {
    let args = Arguments::from_args();
    let trials = vec![Trial::test(
        "bungeo::pods_created_and_removed_leave_nothing",
        || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .enable_all()
                .build()
                .map_err(|e| Failed::from(format!("tokio runtime: {e}")))?;
            rt.block_on(leak_rounds())
                .map_err(|e| Failed::from(format!("{e:#}")))
        },
    )];
    libtest_mimic::run(&args, trials).exit()
}

async fn leak_rounds() -> Result<()> {
    let rounds = workload::env_knob("BUNGEO_LEAK_ROUNDS", 3)?;
    let reg = BusyboxRegistry::start().await?;
    let (bungeo, cri) = reg.bungeo("").await?;
    let result = run_rounds(&bungeo, cri, &reg.busybox(), rounds).await;
    leftovers::remove_cgroup_tree(CGROUP_PARENT);
    result.map_err(|e| e.context(format!("bungeo log:\n{}", bungeo.log_tail(30))))
}

/// What the daemon holds between rounds.
#[derive(Debug)]
struct Usage {
    fds: usize,
    rss: u64,
}

fn usage(pid: u32) -> Result<Usage> {
    Ok(Usage {
        fds: procstat::fd_count(pid)?,
        rss: procstat::rss_bytes(pid)?,
    })
}

async fn run_rounds(bungeo: &Bungeo, mut cri: Cri, image: &str, rounds: u64) -> Result<()> {
    let pid = bungeo.pid().context("bungeo has no pid")?;
    let state_files_before = procstat::files_below(bungeo.state());
    let start = Instant::now();
    one_round(bungeo, &cri, image, "warm-up").await?;
    check_nothing_left(bungeo, &mut cri, pid, &state_files_before, "warm-up").await?;
    let baseline = settled_usage(pid).await?;
    let baseline_fds = procstat::fd_targets(pid)?;
    eprintln!(
        "baseline after the warm-up round ({:.1?}): {} fds, RSS {:.1} MiB",
        start.elapsed(),
        baseline.fds,
        mib(baseline.rss)
    );
    for round in 1..=rounds {
        let t = Instant::now();
        let label = format!("round {round}");
        one_round(bungeo, &cri, image, &label).await?;
        check_nothing_left(bungeo, &mut cri, pid, &state_files_before, &label).await?;
        let now = usage(pid)?;
        eprintln!(
            "{label}/{rounds}: {PODS} pods and containers in {:.1?}, nothing left; {} fds, RSS {:.1} MiB",
            t.elapsed(),
            now.fds,
            mib(now.rss)
        );
    }
    let mut after = settled_usage(pid).await?;
    // Connections the last calls opened close on their own schedule: give them ten seconds.
    for _ in 0..100 {
        if after.fds <= baseline.fds {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = usage(pid)?;
    }
    let allowed = baseline.rss + RSS_SLACK_BYTES.max(baseline.rss * RSS_SLACK_PERCENT / 100);
    // Freed memory goes back to the system once the blocking threads of the rounds idle out
    // (tokio keeps them ten seconds) and the allocator trims their arenas: give it 30 seconds
    // of an idle daemon. Memory that is truly held stays above the bound.
    let idle_since = Instant::now();
    while after.rss > allowed && idle_since.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        after.rss = usage(pid)?.rss;
    }
    eprintln!("RSS settled after {:.1?} idle", idle_since.elapsed());
    eprintln!(
        "after {rounds} rounds: {} fds (baseline {}), RSS {:.1} MiB (baseline {:.1} MiB, allowed {:.1} MiB)",
        after.fds,
        baseline.fds,
        mib(after.rss),
        mib(baseline.rss),
        mib(allowed)
    );
    ensure!(
        after.fds <= baseline.fds,
        "bungeo holds {} descriptors after {rounds} rounds, {} after the warm-up; new: {:?}",
        after.fds,
        baseline.fds,
        new_descriptors(&baseline_fds, &procstat::fd_targets(pid)?)
    );
    ensure!(
        after.rss <= allowed,
        "bungeo's RSS grew from {:.1} MiB to {:.1} MiB over {rounds} rounds",
        mib(baseline.rss),
        mib(after.rss)
    );
    Ok(())
}

/// Descriptors in `after` beyond those in `before`, sockets with what `ss` says of them.
fn new_descriptors(before: &[String], after: &[String]) -> Vec<String> {
    let mut left: Vec<&String> = before.iter().collect();
    let sockets = net::command_output("ss", &["-axp"]).unwrap_or_default()
        + &net::command_output("ss", &["-atp"]).unwrap_or_default();
    let mut out = Vec::new();
    for fd in after {
        if let Some(i) = left.iter().position(|b| *b == fd) {
            left.remove(i);
            continue;
        }
        let inode = fd
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'));
        let seen: Vec<&str> = inode
            .map(|i| {
                sockets
                    .lines()
                    .filter(|l| l.split_whitespace().any(|w| w == i))
                    .collect()
            })
            .unwrap_or_default();
        out.push(format!("{fd} {seen:?}"));
    }
    out
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// The daemon's usage once in-flight work (closing connections, finished tasks) settled:
/// the lowest descriptor count seen over two seconds.
async fn settled_usage(pid: u32) -> Result<Usage> {
    let mut best = usage(pid)?;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let u = usage(pid)?;
        if u.fds < best.fds {
            best.fds = u.fds;
        }
        best.rss = u.rss;
    }
    Ok(best)
}

/// Creates `PODS` pods with a container each, all at once, then removes them all at once.
async fn one_round(bungeo: &Bungeo, cri: &Cri, image: &str, label: &str) -> Result<()> {
    let image: Arc<str> = Arc::from(image);
    let mut tasks = Vec::new();
    for i in 0..PODS {
        let mut cri = cri.clone();
        let image = image.clone();
        tasks.push(tokio::spawn(async move {
            let config = pod_config(NAMESPACE, &format!("leak-{i}"), CGROUP_PARENT);
            let pod = run_pod(&mut cri, config.clone()).await?;
            let container = run_container(
                &mut cri,
                &pod,
                &config,
                container_config("sleeper", &image, &["sleep", "3600"]),
            )
            .await
            .map(Some);
            anyhow::Ok((pod, container))
        }));
    }
    let mut pods = Vec::new();
    let mut failures = Vec::new();
    for task in tasks {
        match task.await.context("create task")? {
            Ok((pod, Ok(c))) => pods.push((pod, c)),
            Ok((pod, Err(e))) => {
                failures.push(format!("{e:#}"));
                pods.push((pod, None));
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    // Removal, concurrent too, runs whatever creation did so the next check sees its own
    // failure, not this round's debris.
    let mut tasks = Vec::new();
    for (pod, container) in pods {
        let mut cri = cri.clone();
        tasks.push(tokio::spawn(async move {
            if let Some(c) = container {
                remove_container(&mut cri, &c, 0).await?;
            }
            remove_pod(&mut cri, &pod).await
        }));
    }
    let mut removal = Vec::new();
    for task in tasks {
        if let Err(e) = task.await.context("remove task")? {
            removal.push(format!("{e:#}"));
        }
    }
    ensure!(
        failures.is_empty() && removal.is_empty(),
        "{label}: {} creations and {} removals of {PODS} failed; first: {:?} {:?}\n{}",
        failures.len(),
        removal.len(),
        failures.first(),
        removal.first(),
        bungeo.log_tail(10)
    );
    Ok(())
}

/// Every kind of leftover, named, or an error listing them.
async fn check_nothing_left(
    bungeo: &Bungeo,
    cri: &mut Cri,
    daemon_pid: u32,
    state_files_before: &[String],
    label: &str,
) -> Result<()> {
    let mut left: Vec<String> = Vec::new();
    let (pods, containers) = workload::listed(cri).await?;
    left.extend(pods.iter().map(|p| format!("pod record {p}")));
    left.extend(containers.iter().map(|c| format!("container record {c}")));
    for dir in [bungeo.state(), bungeo.root()] {
        left.extend(
            mounts_under(dir)?
                .into_iter()
                .map(|m| format!("mount {}", m.display())),
        );
    }
    for sub in ["sandboxes", "containers"] {
        left.extend(
            procstat::files_below(&bungeo.root().join(sub))
                .into_iter()
                .map(|f| format!("file {sub}/{f}")),
        );
    }
    // The state dir holds the socket, the lock and empty parents (ns/, shims/) after the
    // first pod; anything under them beyond that is a pod's or a container's.
    let before: BTreeSet<&String> = state_files_before.iter().collect();
    left.extend(
        procstat::files_below(bungeo.state())
            .into_iter()
            .filter(|f| !before.contains(f) && f.contains('/'))
            .map(|f| format!("state file {f}")),
    );
    let shims: Vec<i32> = leftovers::processes_mentioning(bungeo.state())
        .into_iter()
        .filter(|p| *p as u32 != daemon_pid)
        .collect();
    left.extend(shims.iter().map(|p| format!("process {p}")));
    left.extend(
        cgroups_below(CGROUP_PARENT)
            .into_iter()
            .map(|c| format!("cgroup {}", c.display())),
    );
    let network = bungeo.network().context("bungeo has no test network")?;
    left.extend(network.leftovers());
    for dir in allocation_dirs(bungeo.cni_conf_dir())? {
        left.extend(
            net::allocations(&dir)
                .into_iter()
                .filter(|(_, owner)| !owner.is_empty())
                .map(|(p, owner)| format!("IP allocation {} of {owner}", p.display())),
        );
    }
    ensure!(
        left.is_empty(),
        "{label}: {} leftovers: {:#?}",
        left.len(),
        &left[..left.len().min(40)]
    );
    Ok(())
}

/// The host-local data dirs of every network in the daemon's CNI conf dir.
fn allocation_dirs(conf_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in
        std::fs::read_dir(conf_dir).with_context(|| format!("read {}", conf_dir.display()))?
    {
        let path = entry?.path();
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            out.extend(net::host_local_dirs(&v));
        }
    }
    Ok(out)
}

/// Cgroups below `parent` in any hierarchy.
fn cgroups_below(parent: &str) -> Vec<PathBuf> {
    let rel = parent.trim_start_matches('/');
    let mut out = Vec::new();
    for hierarchy in leftovers::cgroup_hierarchies() {
        let Ok(entries) = std::fs::read_dir(hierarchy.join(rel)) else {
            continue;
        };
        out.extend(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    out
}
