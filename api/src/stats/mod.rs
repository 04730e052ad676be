//! Container and pod stats for kubelet: ContainerStats, PodSandboxStats (and their lists) and
//! the cAdvisor-style metrics of ListPodSandboxMetrics, read from the cgroup files, the pods'
//! network namespaces and the writable layers.
//!
//! CPU `usage_nano_cores` is a rate between two samples, so the last sample of every
//! container and pod is kept in memory, as containerd does: the first call for an object
//! answers 0 (containerd 1.6's `getUsageNanoCores`), later calls the rate since the previous
//! call.

pub mod cadvisor;
pub mod layers;
pub mod netdev;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bungeo_runtime::cgroups::{
    CgroupStats, CpuStats, Hierarchy, MemoryStats, PidsStats, cgroupfs_path, systemd_path,
};
use k8s_cri::v1 as cri;
use tracing::{debug, warn};

use crate::config::CgroupDriver;
use crate::containers::{ContainerPhase, ContainerRecord, Containers, now_ns};
use crate::errors::{Error, Result};
use crate::records::{SandboxPhase, SandboxRecord};
use crate::sandbox::Sandboxes;

pub use layers::{LayerUsage, WritableLayers};
pub use netdev::InterfaceCounters;

/// A CPU sample older than this is forgotten (its object is gone or nobody asks any more).
const SAMPLE_TTL_NS: i64 = 600 * 1_000_000_000;

/// One CPU sample: cumulative usage and when it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CpuSample {
    usage_ns: u64,
    at: i64,
}

/// The rate between `previous` and `current` in nanoseconds of CPU per second (nano cores),
/// as containerd computes it; 0 without a previous sample or time between them.
fn nano_cores(previous: Option<CpuSample>, current: CpuSample) -> u64 {
    let Some(previous) = previous else {
        return 0;
    };
    let elapsed = current.at - previous.at;
    if elapsed <= 0 {
        return 0;
    }
    let used = current.usage_ns.saturating_sub(previous.usage_ns);
    (used as f64 / elapsed as f64 * 1e9) as u64
}

/// Whether a read takes part in the CPU rate (stats calls) or not (metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    Track,
    Skip,
}

/// What was read about one container.
#[derive(Debug, Clone)]
pub struct ContainerSample {
    pub record: ContainerRecord,
    /// Its cgroup, relative to the hierarchy roots.
    pub cgroup_path: Option<PathBuf>,
    pub cgroup: CgroupStats,
    pub nano_cores: u64,
    pub layer: LayerUsage,
    /// Nanoseconds since the epoch.
    pub at: i64,
}

/// What was read about one pod.
#[derive(Debug, Clone)]
pub struct PodSample {
    pub record: SandboxRecord,
    /// The pod cgroup, relative to the hierarchy roots; `None` without one.
    pub cgroup_path: Option<PathBuf>,
    /// The pod cgroup's usage, or the sum of its containers' when it has none.
    pub cgroup: CgroupStats,
    pub nano_cores: u64,
    /// `None` when the pod shares the node's network namespace or it cannot be read.
    pub network: Option<Vec<InterfaceCounters>>,
    pub containers: Vec<ContainerSample>,
    pub at: i64,
}

/// Reads stats; one per daemon, shared by the stats calls.
pub struct StatsCollector {
    hierarchy: Option<Hierarchy>,
    driver: CgroupDriver,
    /// The filesystem holding the writable layers (`fs_id.mountpoint`).
    layers_dir: PathBuf,
    layers: Arc<WritableLayers>,
    containers_cpu: Mutex<HashMap<String, CpuSample>>,
    pods_cpu: Mutex<HashMap<String, CpuSample>>,
}

fn value(v: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value: v })
}

impl StatsCollector {
    /// A collector for cgroups named with `driver`, whose writable layers live under
    /// `layers_dir`. The cgroup hierarchy is detected once.
    pub fn new(driver: CgroupDriver, layers_dir: PathBuf) -> StatsCollector {
        let hierarchy = match Hierarchy::detect() {
            Ok(h) => Some(h),
            Err(e) => {
                warn!(error = %e, "no cgroup hierarchy found: stats will have no CPU or memory");
                None
            }
        };
        StatsCollector::with_hierarchy(hierarchy, driver, layers_dir)
    }

    /// A collector reading `hierarchy` (tests give a fake one).
    pub fn with_hierarchy(
        hierarchy: Option<Hierarchy>,
        driver: CgroupDriver,
        layers_dir: PathBuf,
    ) -> StatsCollector {
        StatsCollector {
            hierarchy,
            driver,
            layers_dir,
            layers: Arc::new(WritableLayers::default()),
            containers_cpu: Mutex::new(HashMap::new()),
            pods_cpu: Mutex::new(HashMap::new()),
        }
    }

    /// The writable layer cache, which ImageFsInfo reads too.
    pub fn layers(&self) -> &Arc<WritableLayers> {
        &self.layers
    }

    /// Where the writable layers are (`fs_id.mountpoint`).
    pub fn layers_dir(&self) -> &Path {
        &self.layers_dir
    }

    /// The cgroup directory (relative to the hierarchy roots) of a container.
    fn container_cgroup(&self, record: &ContainerRecord) -> Option<PathBuf> {
        let rel = match self.driver {
            CgroupDriver::Cgroupfs => cgroupfs_path(&record.cgroups_path, &record.id),
            CgroupDriver::Systemd => systemd_path(&record.cgroups_path),
        };
        rel.map_err(|e| debug!(container_id = %record.id, error = %e, "no cgroup path"))
            .ok()
    }

    /// The pod cgroup (kubelet's cgroup parent), `None` when the pod has none.
    fn pod_cgroup(&self, record: &SandboxRecord) -> Option<PathBuf> {
        let parent = record.cgroup_parent.trim();
        if parent.is_empty() {
            return None;
        }
        let rel = match self.driver {
            CgroupDriver::Cgroupfs => cgroupfs_path(parent, &record.id),
            // The slice holding a scope in it is the slice itself.
            CgroupDriver::Systemd => systemd_path(&format!("{parent}:bungeo:probe"))
                .map(|p| p.parent().map(Path::to_path_buf).unwrap_or_default()),
        };
        rel.ok().filter(|p| !p.as_os_str().is_empty())
    }

    fn read_cgroup(&self, rel: Option<&Path>, what: &str) -> CgroupStats {
        let (Some(hierarchy), Some(rel)) = (&self.hierarchy, rel) else {
            return CgroupStats::default();
        };
        CgroupStats::read(hierarchy, rel).unwrap_or_else(|e| {
            debug!(cgroup = %rel.display(), error = %e, "cannot read the stats of {what}");
            CgroupStats::default()
        })
    }

    fn rate(
        &self,
        samples: &Mutex<HashMap<String, CpuSample>>,
        key: &str,
        cpu: &CpuStats,
        at: i64,
    ) -> u64 {
        let current = CpuSample {
            usage_ns: cpu.usage_ns,
            at,
        };
        let mut samples = crate::reservation::lock(samples);
        let previous = samples.insert(key.to_owned(), current);
        samples.retain(|_, s| at - s.at < SAMPLE_TTL_NS);
        nano_cores(previous, current)
    }

    /// Reads one container (its cgroup is gone once it exited: no CPU or memory then). With
    /// `rate`, the CPU rate since the previous such read is computed and this read kept for
    /// the next; without (metrics, which report cumulative time), the kept sample is left
    /// alone so scrapes do not shorten the stats calls' window.
    pub fn sample_container(&self, record: ContainerRecord, rate: Rate) -> ContainerSample {
        let rel = self.container_cgroup(&record);
        let live = record.phase != ContainerPhase::Exited;
        let cgroup = if live {
            self.read_cgroup(rel.as_deref(), "a container")
        } else {
            CgroupStats::default()
        };
        let at = now_ns();
        let nano_cores = match &cgroup.cpu {
            Some(cpu) if rate == Rate::Track => {
                self.rate(&self.containers_cpu, &record.id, cpu, at)
            }
            _ => 0,
        };
        let layer = self.layers.usage(
            &record.id,
            &record.dir.join(crate::containers::record::UPPER_DIR),
        );
        ContainerSample {
            record,
            cgroup_path: rel,
            cgroup,
            nano_cores,
            layer,
            at,
        }
    }

    /// ContainerStats: stats of the container `query` names.
    pub fn container_stats(
        &self,
        containers: &Containers,
        query: &str,
    ) -> Result<cri::ContainerStats> {
        let record = containers.record(query)?;
        // Its cgroup is gone: no figures to give, as containerd, whose deleted task has none.
        if !has_stats(&record) {
            return Err(Error::Refused(format!(
                "container {} does not run: it has no stats",
                record.id
            )));
        }
        Ok(self.cri_container(&self.sample_container(record, Rate::Track)))
    }

    /// ListContainerStats: every created or running container passing `filter` (an exited
    /// container has no cgroup left, and containerd leaves it out too).
    pub fn list_container_stats(
        &self,
        containers: &Containers,
        filter: Option<&cri::ContainerStatsFilter>,
    ) -> Vec<cri::ContainerStats> {
        if filter.is_none() {
            let ids = containers.ids();
            self.layers
                .retain(&ids.iter().map(String::as_str).collect::<HashSet<&str>>());
        }
        containers
            .records_where(|r| has_stats(r) && container_matches(filter, r))
            .into_iter()
            .map(|r| self.cri_container(&self.sample_container(r, Rate::Track)))
            .collect()
    }

    /// Reads the ready pods `pods` with their live containers.
    fn sample_pods(
        &self,
        containers: &Containers,
        pods: Vec<SandboxRecord>,
        rate: Rate,
    ) -> Vec<PodSample> {
        let ids: HashSet<&str> = pods.iter().map(|p| p.id.as_str()).collect();
        let mut by_pod: HashMap<String, Vec<ContainerRecord>> = HashMap::new();
        for c in containers.records_where(|c| has_stats(c) && ids.contains(c.sandbox_id.as_str())) {
            by_pod.entry(c.sandbox_id.clone()).or_default().push(c);
        }
        let pins: Vec<(usize, PathBuf)> = pods
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.namespaces.net.clone().map(|n| (i, n)))
            .collect();
        let paths: Vec<PathBuf> = pins.iter().map(|(_, p)| p.clone()).collect();
        let mut networks: Vec<Option<Vec<InterfaceCounters>>> = vec![None; pods.len()];
        for ((i, _), counters) in pins.iter().zip(netdev::read_all(&paths)) {
            networks[*i] = counters;
        }
        pods.into_iter()
            .zip(networks)
            .map(|(record, network)| {
                let containers: Vec<ContainerSample> = by_pod
                    .remove(&record.id)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| self.sample_container(c, rate))
                    .collect();
                let cgroup_path = self.pod_cgroup(&record);
                let cgroup = match &cgroup_path {
                    Some(rel) => self.read_cgroup(Some(rel), "a pod"),
                    None => sum(containers.iter().map(|c| &c.cgroup)),
                };
                let at = now_ns();
                let nano_cores = match &cgroup.cpu {
                    Some(cpu) if rate == Rate::Track => {
                        self.rate(&self.pods_cpu, &record.id, cpu, at)
                    }
                    _ => 0,
                };
                PodSample {
                    record,
                    cgroup_path,
                    cgroup,
                    nano_cores,
                    network,
                    containers,
                    at,
                }
            })
            .collect()
    }

    /// The ready pods passing `filter`, read.
    pub fn sample_ready_pods(
        &self,
        containers: &Containers,
        sandboxes: &Sandboxes,
        filter: Option<&cri::PodSandboxStatsFilter>,
        rate: Rate,
    ) -> Vec<PodSample> {
        let pods =
            sandboxes.records_where(|r| r.phase == SandboxPhase::Ready && pod_matches(filter, r));
        if pods.is_empty() {
            return Vec::new();
        }
        self.sample_pods(containers, pods, rate)
    }

    /// PodSandboxStats of the pod `query` names; FailedPrecondition when it is not ready (a
    /// stopped pod has no stats).
    pub fn pod_sandbox_stats(
        &self,
        containers: &Containers,
        sandboxes: &Sandboxes,
        query: &str,
    ) -> Result<cri::PodSandboxStats> {
        let record = sandboxes.record(query)?;
        if record.phase != SandboxPhase::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready: a stopped pod has no stats",
                record.id
            )));
        }
        let sample = self
            .sample_pods(containers, vec![record], Rate::Track)
            .pop()
            .ok_or_else(|| Error::NotFound(format!("pod sandbox {query} not found")))?;
        Ok(self.cri_pod(&sample))
    }

    /// ListPodSandboxStats: the ready pods passing `filter`.
    pub fn list_pod_sandbox_stats(
        &self,
        containers: &Containers,
        sandboxes: &Sandboxes,
        filter: Option<&cri::PodSandboxStatsFilter>,
    ) -> Vec<cri::PodSandboxStats> {
        self.sample_ready_pods(containers, sandboxes, filter, Rate::Track)
            .iter()
            .map(|p| self.cri_pod(p))
            .collect()
    }

    /// ListPodSandboxMetrics: the cAdvisor metrics of every ready pod and its containers.
    pub fn list_pod_sandbox_metrics(
        &self,
        containers: &Containers,
        sandboxes: &Sandboxes,
    ) -> Vec<cri::PodSandboxMetrics> {
        let fs = cadvisor::FsCapacity::of(&self.layers_dir);
        self.sample_ready_pods(containers, sandboxes, None, Rate::Skip)
            .iter()
            .map(|p| cadvisor::pod_metrics(p, &self.layers_dir, fs.as_ref()))
            .collect()
    }

    /// A sample in CRI terms.
    pub fn cri_container(&self, s: &ContainerSample) -> cri::ContainerStats {
        cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: s.record.id.clone(),
                metadata: s.record.config.metadata.clone(),
                labels: s.record.config.labels.clone(),
                annotations: s.record.config.annotations.clone(),
            }),
            cpu: s
                .cgroup
                .cpu
                .as_ref()
                .map(|c| cri_cpu(c, s.nano_cores, s.at)),
            memory: s.cgroup.memory.as_ref().map(|m| cri_memory(m, s.at)),
            swap: s.cgroup.memory.as_ref().and_then(|m| cri_swap(m, s.at)),
            writable_layer: Some(cri::FilesystemUsage {
                timestamp: s.layer.measured_at,
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: self.layers_dir.to_string_lossy().into_owned(),
                }),
                used_bytes: value(s.layer.used_bytes),
                inodes_used: value(s.layer.inodes_used),
            }),
        }
    }

    /// A pod sample in CRI terms.
    pub fn cri_pod(&self, p: &PodSample) -> cri::PodSandboxStats {
        let network = p.network.as_ref().map(|interfaces| {
            let usage = |i: &InterfaceCounters| cri::NetworkInterfaceUsage {
                name: i.name.clone(),
                rx_bytes: value(i.rx_bytes),
                rx_errors: value(i.rx_errors),
                tx_bytes: value(i.tx_bytes),
                tx_errors: value(i.tx_errors),
            };
            cri::NetworkUsage {
                timestamp: p.at,
                default_interface: interfaces
                    .iter()
                    .find(|i| i.name == netdev::DEFAULT_INTERFACE)
                    .map(usage),
                interfaces: interfaces.iter().map(usage).collect(),
            }
        });
        cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: p.record.id.clone(),
                metadata: p.record.config.metadata.clone(),
                labels: p.record.config.labels.clone(),
                annotations: p.record.config.annotations.clone(),
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: p
                    .cgroup
                    .cpu
                    .as_ref()
                    .map(|c| cri_cpu(c, p.nano_cores, p.at)),
                memory: p.cgroup.memory.as_ref().map(|m| cri_memory(m, p.at)),
                network,
                process: p.cgroup.pids.as_ref().map(|pids| cri::ProcessUsage {
                    timestamp: p.at,
                    process_count: value(pids.current),
                }),
                containers: p.containers.iter().map(|c| self.cri_container(c)).collect(),
            }),
            windows: None,
        }
    }
}

fn cri_cpu(cpu: &CpuStats, nano_cores: u64, at: i64) -> cri::CpuUsage {
    cri::CpuUsage {
        timestamp: at,
        usage_core_nano_seconds: value(cpu.usage_ns),
        usage_nano_cores: value(nano_cores),
    }
}

fn cri_memory(m: &MemoryStats, at: i64) -> cri::MemoryUsage {
    cri::MemoryUsage {
        timestamp: at,
        working_set_bytes: value(m.working_set_bytes),
        // Without a limit there is nothing to be available against (kubelet reads 0 so).
        available_bytes: m
            .limit_bytes
            .map(|limit| limit.saturating_sub(m.working_set_bytes))
            .and_then(value),
        usage_bytes: value(m.usage_bytes),
        rss_bytes: value(m.rss_bytes),
        page_faults: value(m.page_faults),
        major_page_faults: value(m.major_page_faults),
    }
}

fn cri_swap(m: &MemoryStats, at: i64) -> Option<cri::SwapUsage> {
    let used = m.swap_bytes?;
    Some(cri::SwapUsage {
        timestamp: at,
        swap_available_bytes: m
            .swap_limit_bytes
            .map(|limit| limit.saturating_sub(used))
            .and_then(value),
        swap_usage_bytes: value(used),
    })
}

/// The sum of containers' usage, for a pod without a cgroup of its own.
fn sum<'a>(all: impl Iterator<Item = &'a CgroupStats>) -> CgroupStats {
    let mut out = CgroupStats::default();
    for s in all {
        if let Some(c) = &s.cpu {
            let o = out.cpu.get_or_insert_with(CpuStats::default);
            o.usage_ns += c.usage_ns;
            o.user_ns += c.user_ns;
            o.system_ns += c.system_ns;
            o.periods += c.periods;
            o.throttled_periods += c.throttled_periods;
            o.throttled_ns += c.throttled_ns;
        }
        if let Some(m) = &s.memory {
            let o = out.memory.get_or_insert_with(MemoryStats::default);
            o.usage_bytes += m.usage_bytes;
            o.working_set_bytes += m.working_set_bytes;
            o.inactive_file_bytes += m.inactive_file_bytes;
            o.rss_bytes += m.rss_bytes;
            o.cache_bytes += m.cache_bytes;
            o.page_faults += m.page_faults;
            o.major_page_faults += m.major_page_faults;
            o.oom_kills += m.oom_kills;
            if let Some(swap) = m.swap_bytes {
                *o.swap_bytes.get_or_insert(0) += swap;
            }
        }
        if let Some(p) = &s.pids {
            let o = out.pids.get_or_insert_with(PidsStats::default);
            o.current += p.current;
        }
    }
    out
}

/// Whether a container passes a ListContainerStats filter (ids by prefix, as ListContainers).
/// Whether a container has a cgroup to read: created or running (an exited one has none
/// left, and containerd leaves it out too).
fn has_stats(r: &ContainerRecord) -> bool {
    r.phase != ContainerPhase::Exited && r.phase != ContainerPhase::Creating
}

fn container_matches(filter: Option<&cri::ContainerStatsFilter>, r: &ContainerRecord) -> bool {
    let Some(f) = filter else {
        return true;
    };
    crate::filters::id_matches(&f.id, &r.id)
        && crate::filters::id_matches(&f.pod_sandbox_id, &r.sandbox_id)
        && crate::filters::labels_match(&f.label_selector, &r.config.labels)
}

fn pod_matches(filter: Option<&cri::PodSandboxStatsFilter>, r: &SandboxRecord) -> bool {
    let Some(f) = filter else {
        return true;
    };
    crate::filters::id_matches(&f.id, &r.id)
        && crate::filters::labels_match(&f.label_selector, &r.config.labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_containerds_zero_first_then_cpu_per_second() {
        let at = |s: i64| s * 1_000_000_000;
        let first = CpuSample {
            usage_ns: 5_000_000_000,
            at: at(100),
        };
        assert_eq!(nano_cores(None, first), 0);
        // One core busy for 4 seconds.
        let second = CpuSample {
            usage_ns: 9_000_000_000,
            at: at(104),
        };
        assert_eq!(nano_cores(Some(first), second), 1_000_000_000);
        // Half a core.
        let third = CpuSample {
            usage_ns: 10_000_000_000,
            at: at(106),
        };
        assert_eq!(nano_cores(Some(second), third), 500_000_000);
        // No time passed, or the counter went back (a new cgroup): no rate to speak of.
        assert_eq!(nano_cores(Some(third), third), 0);
        let reset = CpuSample {
            usage_ns: 1,
            at: at(107),
        };
        assert_eq!(nano_cores(Some(third), reset), 0);
    }

    #[test]
    fn the_collector_keeps_one_sample_per_object() {
        let c = StatsCollector::with_hierarchy(None, CgroupDriver::Cgroupfs, PathBuf::from("/x"));
        let cpu = |usage_ns| CpuStats {
            usage_ns,
            ..Default::default()
        };
        assert_eq!(c.rate(&c.containers_cpu, "a", &cpu(0), 1_000_000_000), 0);
        assert_eq!(c.rate(&c.containers_cpu, "b", &cpu(7), 1_000_000_000), 0);
        assert_eq!(
            c.rate(&c.containers_cpu, "a", &cpu(2_000_000_000), 3_000_000_000),
            1_000_000_000
        );
        // Samples far older than the TTL are dropped when others are taken.
        c.rate(&c.containers_cpu, "a", &cpu(0), SAMPLE_TTL_NS * 2);
        assert!(!crate::reservation::lock(&c.containers_cpu).contains_key("b"));
    }

    #[test]
    fn memory_and_swap_read_as_kubelet_expects() {
        let m = MemoryStats {
            usage_bytes: 100 << 20,
            limit_bytes: Some(256 << 20),
            working_set_bytes: 80 << 20,
            rss_bytes: 70 << 20,
            swap_bytes: Some(1 << 20),
            swap_limit_bytes: Some(4 << 20),
            page_faults: 9,
            major_page_faults: 1,
            ..Default::default()
        };
        let cri = cri_memory(&m, 5);
        assert_eq!(cri.working_set_bytes.unwrap().value, 80 << 20);
        assert_eq!(cri.available_bytes.unwrap().value, 176 << 20);
        assert_eq!(cri.usage_bytes.unwrap().value, 100 << 20);
        assert_eq!(cri.rss_bytes.unwrap().value, 70 << 20);
        assert_eq!(
            (
                cri.page_faults.unwrap().value,
                cri.major_page_faults.unwrap().value
            ),
            (9, 1)
        );
        let swap = cri_swap(&m, 5).unwrap();
        assert_eq!(swap.swap_usage_bytes.unwrap().value, 1 << 20);
        assert_eq!(swap.swap_available_bytes.unwrap().value, 3 << 20);
        let unlimited = MemoryStats {
            limit_bytes: None,
            ..m
        };
        assert_eq!(cri_memory(&unlimited, 5).available_bytes, None);
    }

    #[test]
    fn a_pod_without_a_cgroup_sums_its_containers() {
        let one = CgroupStats {
            cpu: Some(CpuStats {
                usage_ns: 10,
                ..Default::default()
            }),
            memory: Some(MemoryStats {
                working_set_bytes: 100,
                usage_bytes: 150,
                ..Default::default()
            }),
            pids: Some(PidsStats {
                current: 2,
                limit: None,
            }),
            hugetlb: Vec::new(),
        };
        let total = sum([&one, &one, &CgroupStats::default()].into_iter());
        assert_eq!(total.cpu.unwrap().usage_ns, 20);
        let memory = total.memory.unwrap();
        assert_eq!((memory.working_set_bytes, memory.usage_bytes), (200, 300));
        assert_eq!(total.pids.unwrap().current, 4);
        assert_eq!(sum(std::iter::empty()), CgroupStats::default());
    }

    #[test]
    fn pod_cgroups_follow_the_driver() {
        let mut record: SandboxRecord = serde_json::from_value(serde_json::json!({
            "id": "p1", "phase": "ready", "created_at": 0,
            "config": serde_json::to_value(cri::PodSandboxConfig::default()).unwrap(),
            "runtime_handler": "", "hostname": "h", "cgroup_parent": "/kubepods/besteffort/pod1",
            "dir": "/d", "ns_dir": "/n", "namespaces": {"net": null, "ipc": null, "uts": null},
            "shm": null
        }))
        .unwrap();
        let fs = StatsCollector::with_hierarchy(None, CgroupDriver::Cgroupfs, PathBuf::new());
        assert_eq!(
            fs.pod_cgroup(&record),
            Some(PathBuf::from("kubepods/besteffort/pod1"))
        );
        record.cgroup_parent = "kubepods-besteffort-pod1.slice".into();
        let sd = StatsCollector::with_hierarchy(None, CgroupDriver::Systemd, PathBuf::new());
        assert_eq!(
            sd.pod_cgroup(&record),
            Some(PathBuf::from(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice"
            ))
        );
        record.cgroup_parent = String::new();
        assert_eq!(fs.pod_cgroup(&record), None);
    }
}
