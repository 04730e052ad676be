//! What the `hack/bench` binaries share: a registry with busybox and the pause image, bungeo
//! and containerd started side by side on it, one [`Side`] per daemon for pods and their
//! clean-up, and the figures and table rows every report prints (nearest-rank percentiles,
//! bungeo/containerd ratios, goal verdicts).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_cri::v1::{ContainerConfig, PodSandboxConfig};

use crate::bungeo::Bungeo;
use crate::containerd::Containerd;
use crate::cri::Cri;
use crate::images::{PAUSE, PAUSE_REFERENCE, Pusher};
use crate::leftovers;
use crate::registryhosts::{RegistryHosts, toml_string};
use crate::workload::{self, BusyboxRegistry};

/// A registry with busybox and the pause image, and how the daemons reach it.
pub struct Setup {
    /// The registry; [`BusyboxRegistry::busybox`] names the image the pods run.
    pub registry: BusyboxRegistry,
    /// Plain HTTP to the registry, which also mirrors docker.io: containerd's sandbox image
    /// is a docker.io name.
    pub hosts: RegistryHosts,
    /// The shim bungeo runs: `$BUNGEO_SHIM_BIN` (the size-tuned build `hack/bench` names),
    /// else the one beside the bungeo binary.
    pub shim: Option<PathBuf>,
}

impl Setup {
    /// Starts the registry and pushes busybox and the pause image to it.
    pub async fn start() -> Result<Self> {
        let registry = BusyboxRegistry::start().await?;
        Pusher::new(&registry.registry.host(), None)
            .push(PAUSE.repo, Some(PAUSE.tag), registry.catalog.get(PAUSE)?)
            .await
            .context("push the pause image")?;
        let hosts = RegistryHosts {
            mirrors: BTreeMap::from([("docker.io".to_string(), vec![registry.registry.host()])]),
            ..registry.hosts()
        };
        Ok(Self {
            registry,
            hosts,
            shim: std::env::var_os("BUNGEO_SHIM_BIN").map(PathBuf::from),
        })
    }

    /// The busybox image the pods run.
    pub fn image(&self) -> String {
        self.registry.busybox()
    }

    /// Starts bungeo on the registry, with [`shim`](Self::shim) if set.
    pub async fn bungeo(&self) -> Result<Bungeo> {
        let mut config = self.hosts.bungeo_toml();
        if let Some(shim) = &self.shim {
            config.push_str(&format!(
                "\n[shim]\nbinary = {}\n",
                toml_string(&shim.to_string_lossy())
            ));
        }
        Bungeo::start_with_config(&config).await
    }

    /// Starts containerd on the registry, its pods on the loopback network.
    pub async fn containerd(&self) -> Result<Containerd> {
        Containerd::start(&self.hosts).await
    }

    /// Starts bungeo ([`bungeo`](Self::bungeo)) and containerd
    /// ([`containerd`](Self::containerd)) and makes their [`sides`](Self::sides).
    pub async fn start_daemons(
        &self,
        bench: &'static str,
    ) -> Result<(Bungeo, Containerd, [Side; 2])> {
        let bungeo = self.bungeo().await?;
        let containerd = self.containerd().await?;
        let sides = self.sides(&bungeo, &containerd, bench).await?;
        Ok((bungeo, containerd, sides))
    }

    /// Connects to both daemons and pulls busybox into each, and the pause image into
    /// containerd, so no measured call is billed for a pull. Pods are named and
    /// cgroup-parented after `bench`.
    pub async fn sides(
        &self,
        bungeo: &Bungeo,
        containerd: &Containerd,
        bench: &'static str,
    ) -> Result<[Side; 2]> {
        let mut sides = [
            Side::connect("bungeo", bungeo.socket(), bench).await?,
            Side::connect("containerd", containerd.socket(), bench).await?,
        ];
        let image = self.image();
        for side in sides.iter_mut() {
            side.cri
                .pull(&image, None)
                .await
                .with_context(|| format!("{}: pull {image}", side.name))?;
        }
        sides[1]
            .cri
            .pull(PAUSE_REFERENCE, None)
            .await
            .context("containerd: pull the pause image")?;
        Ok(sides)
    }
}

/// One daemon under test: its CRI client, a log directory for its pods, and the pods it
/// still has, removed with their cgroups by [`clean_up`](Self::clean_up).
pub struct Side {
    /// `bungeo` or `containerd`, as the reports and errors name it.
    pub name: &'static str,
    /// The CRI client.
    pub cri: Cri,
    /// The Kubernetes namespace of the pods and the first component of their cgroup parents.
    bench: &'static str,
    logs: tempfile::TempDir,
    /// Pods made through [`run_pod`](Self::run_pod) and not yet removed, oldest first.
    pub pods: Vec<String>,
}

impl Side {
    /// Connects to the daemon on `socket`.
    pub async fn connect(name: &'static str, socket: &Path, bench: &'static str) -> Result<Self> {
        Ok(Self {
            name,
            cri: Cri::connect(socket).await?,
            bench,
            logs: tempfile::Builder::new()
                .prefix("bungeo-bench-logs-")
                .tempdir()
                .context("create the pod log directory")?,
            pods: Vec::new(),
        })
    }

    /// The cgroup parent of this daemon's pods, below one root per benchmark.
    pub fn cgroup_parent(&self) -> String {
        format!("/{}/{}", self.bench, self.name)
    }

    /// A pod config named `name` (kubelet's default namespaces) with a log directory of its
    /// own, made here as kubelet makes it before it calls.
    pub fn pod_config(&self, name: &str) -> Result<PodSandboxConfig> {
        let mut config = workload::pod_config(self.bench, name, &self.cgroup_parent());
        let logs = self.logs.path().join(name);
        std::fs::create_dir_all(&logs)
            .with_context(|| format!("create the log directory {}", logs.display()))?;
        config.log_directory = logs.to_string_lossy().into_owned();
        Ok(config)
    }

    /// A container config logging to `<name>/0.log` in `pod`'s log directory, as kubelet
    /// lays it out; the directory is made here.
    pub fn container_config(
        pod: &PodSandboxConfig,
        name: &str,
        image: &str,
        command: &[&str],
    ) -> Result<ContainerConfig> {
        let dir = Path::new(&pod.log_directory).join(name);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("create the log directory {}", dir.display()))?;
        let mut config = workload::container_config(name, image, command);
        config.log_path = format!("{name}/0.log");
        Ok(config)
    }

    /// RunPodSandbox; the pod is [`clean_up`](Self::clean_up)'s from then on.
    pub async fn run_pod(&mut self, config: PodSandboxConfig) -> Result<String> {
        let id = workload::run_pod(&mut self.cri, config)
            .await
            .with_context(|| self.name)?;
        self.pods.push(id.clone());
        Ok(id)
    }

    /// CreateContainer then StartContainer in `pod`.
    pub async fn run_container(
        &mut self,
        pod: &str,
        pod_config: &PodSandboxConfig,
        config: ContainerConfig,
    ) -> Result<String> {
        workload::run_container(&mut self.cri, pod, pod_config, config)
            .await
            .with_context(|| self.name)
    }

    /// StopPodSandbox and RemovePodSandbox (which take the pod's containers with them).
    pub async fn remove_pod(&mut self, id: &str) -> Result<()> {
        workload::remove_pod(&mut self.cri, id)
            .await
            .with_context(|| self.name)?;
        self.pods.retain(|p| p != id);
        Ok(())
    }

    /// Best effort: every pod left stopped and removed, then the benchmark's cgroups.
    pub async fn clean_up(&mut self) {
        for pod in std::mem::take(&mut self.pods) {
            if let Err(e) = workload::remove_pod(&mut self.cri, &pod).await {
                eprintln!("cleanup: {}: {e:#}", self.name);
            }
        }
        leftovers::remove_cgroup_tree(&self.cgroup_parent());
        for hierarchy in leftovers::cgroup_hierarchies() {
            let _ = std::fs::remove_dir(hierarchy.join(self.bench));
        }
    }
}

/// [`Side::clean_up`] of every side, then `result`: what a benchmark run left is removed
/// whether the run failed or not.
pub async fn clean_up_after<'a, T>(
    result: Result<T>,
    sides: impl IntoIterator<Item = &'a mut Side>,
) -> Result<T> {
    for side in sides {
        side.clean_up().await;
    }
    result
}

/// The value at `percent` (nearest rank) of `values`, in any order; none when empty.
pub fn percentile<T: Copy + Ord>(values: &[T], percent: usize) -> Option<T> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort();
    // Whole numbers: `0.9 * 70` in floating point is just above 63 and would round up a rank.
    let rank = (percent * sorted.len())
        .div_ceil(100)
        .clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// A duration in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// [`percentile`] in milliseconds; NaN (printed as such) when there are no samples.
pub fn ms_percentile(values: &[Duration], percent: usize) -> f64 {
    percentile(values, percent).map_or(f64::NAN, ms)
}

/// bungeo's `percent` percentile over containerd's.
pub fn ratio_at(bungeo: &[Duration], containerd: &[Duration], percent: usize) -> f64 {
    ms_percentile(bungeo, percent) / ms_percentile(containerd, percent)
}

/// The middle value (the upper of the two for an even count); 0 when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// `MET` or `NOT MET`.
pub fn verdict(met: bool) -> &'static str {
    if met { "MET" } else { "NOT MET" }
}

/// `goal: <what>: <ratio>x -> MET`.
pub fn goal(what: &str, ratio: f64, met: bool) -> String {
    format!("goal: {what}: {ratio:.2}x -> {}", verdict(met))
}

/// The ratio column: bungeo's figure over containerd's, or `-` when containerd's is zero.
pub fn ratio_cell(bungeo: f64, containerd: f64) -> String {
    if containerd > 0.0 {
        format!("{:>7.2}x", bungeo / containerd)
    } else {
        format!("{:>8}", "-")
    }
}

/// The bungeo | containerd | ratio table of the daemon benchmarks, its label column
/// `width` wide.
#[derive(Debug, Clone, Copy)]
pub struct Table {
    width: usize,
}

impl Table {
    /// A table whose label column is `width` characters wide.
    pub fn new(width: usize) -> Self {
        Self { width }
    }

    /// The header line, `first` over the label column.
    pub fn header(&self, first: &str) -> String {
        format!(
            "{first:<w$} {:>12} {:>12} {:>8}",
            "bungeo",
            "containerd",
            "ratio",
            w = self.width
        )
    }

    /// A row of two already formatted cells and their ratio.
    pub fn row(&self, label: &str, bungeo: &str, containerd: &str, ratio: &str) -> String {
        format!("{label:<w$} {bungeo} {containerd} {ratio}", w = self.width)
    }

    /// A row of two times in milliseconds, with `decimals` places.
    pub fn ms_row(&self, label: &str, bungeo: f64, containerd: f64, decimals: usize) -> String {
        self.row(
            label,
            &format!("{bungeo:>10.decimals$}ms"),
            &format!("{containerd:>10.decimals$}ms"),
            &ratio_cell(bungeo, containerd),
        )
    }

    /// A row of the `percent` percentiles of two sets of durations, in milliseconds.
    pub fn percentile_row(
        &self,
        label: &str,
        bungeo: &[Duration],
        containerd: &[Duration],
        percent: usize,
        decimals: usize,
    ) -> String {
        self.ms_row(
            label,
            ms_percentile(bungeo, percent),
            ms_percentile(containerd, percent),
            decimals,
        )
    }

    /// One [`percentile_row`](Self::percentile_row) a line per percent, labelled
    /// `<label> p<percent>`.
    pub fn percentile_rows(
        &self,
        label: &str,
        bungeo: &[Duration],
        containerd: &[Duration],
        percents: &[usize],
        decimals: usize,
    ) -> String {
        percents
            .iter()
            .map(|p| {
                let label = format!("{label} p{p}");
                self.percentile_row(&label, bungeo, containerd, *p, decimals)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A row of two sizes in MiB.
    pub fn mib_row(&self, label: &str, bungeo: f64, containerd: f64) -> String {
        self.row(
            label,
            &format!("{bungeo:>9.1}MiB"),
            &format!("{containerd:>9.1}MiB"),
            &ratio_cell(bungeo, containerd),
        )
    }

    /// A row of two throughputs in MiB/s.
    pub fn rate_row(&self, label: &str, bungeo: f64, containerd: f64) -> String {
        self.row(
            label,
            &format!("{bungeo:>8.1}MiB/s"),
            &format!("{containerd:>8.1}MiB/s"),
            &ratio_cell(bungeo, containerd),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<u32> = (1..=10).rev().collect();
        assert_eq!(percentile(&v, 50), Some(5));
        assert_eq!(percentile(&v, 90), Some(9));
        assert_eq!(percentile(&v, 95), Some(10));
        assert_eq!(percentile(&v, 100), Some(10));
        assert_eq!(percentile(&v, 0), Some(1));
        assert_eq!(percentile(&[7u32], 90), Some(7));
        assert_eq!(percentile::<u32>(&[], 50), None);
        // 90% of 70 is rank 63 exactly, not 64.
        let v: Vec<u32> = (1..=70).collect();
        assert_eq!(percentile(&v, 90), Some(63));
    }

    #[test]
    fn milliseconds_of_percentiles() {
        let v = [30, 10, 20].map(Duration::from_millis);
        assert_eq!(ms_percentile(&v, 50), 20.0);
        assert!(ms_percentile(&[], 50).is_nan());
        assert_eq!(ms(Duration::from_micros(1500)), 1.5);
    }

    #[test]
    fn median_is_the_upper_middle() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 3.0);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn goal_lines() {
        assert_eq!(
            goal("start p50 <= 0.5x containerd's", 0.254, true),
            "goal: start p50 <= 0.5x containerd's: 0.25x -> MET"
        );
        assert_eq!(goal("x", 1.5, false), "goal: x: 1.50x -> NOT MET");
    }

    #[test]
    fn table_rows_line_up() {
        let t = Table::new(20);
        assert_eq!(
            t.header(""),
            "                           bungeo   containerd    ratio"
        );
        assert_eq!(
            t.header("image"),
            "image                      bungeo   containerd    ratio"
        );
        let row = t.ms_row("RunPodSandbox p50", 40.54, 103.8, 1);
        assert_eq!(
            row,
            "RunPodSandbox p50          40.5ms      103.8ms    0.39x"
        );
        assert_eq!(row.len(), t.header("").len());
        assert_eq!(
            t.ms_row("big:256m", 1265.4, 3551.0, 0),
            "big:256m                   1265ms       3551ms    0.36x"
        );
        let v = [2, 1, 4, 3].map(Duration::from_millis);
        assert_eq!(
            t.percentile_row("p50", &v, &v, 50, 2),
            "p50                        2.00ms       2.00ms    1.00x"
        );
        let slow = [4, 2, 6, 8].map(Duration::from_millis);
        assert_eq!(
            t.percentile_rows("ExecSync", &v, &slow, &[50, 95], 1),
            "ExecSync p50                2.0ms        4.0ms    0.50x\n\
             ExecSync p95                4.0ms        8.0ms    0.50x"
        );
        assert_eq!(ratio_at(&v, &slow, 50), 0.5);
        assert_eq!(
            t.mib_row("  daemon RSS", 2.8, 15.9),
            "  daemon RSS               2.8MiB      15.9MiB    0.18x"
        );
        assert_eq!(
            t.mib_row("  pause RSS", 0.0, 0.0),
            "  pause RSS                0.0MiB       0.0MiB        -"
        );
        assert_eq!(
            t.rate_row("forward", 290.7, 83.9),
            "forward                 290.7MiB/s     83.9MiB/s    3.46x"
        );
    }
}
