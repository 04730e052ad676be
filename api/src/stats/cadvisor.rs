//! The cAdvisor-compatible metrics of `ListMetricDescriptors` and `ListPodSandboxMetrics`,
//! which kubelet serves on `/metrics/cadvisor` when it takes pod and container stats from the
//! CRI (`PodAndContainerStatsFromCRI`): the names and labels dashboards already query.
//!
//! CRI metric values are unsigned integers, so the `*_seconds_total` counters are whole
//! seconds. Container metrics carry cAdvisor's labels (`container`, `id` = the cgroup path,
//! `image`, `name` = the container id, `namespace`, `pod`); network metrics are the pod's
//! (`container` empty, as cAdvisor's pod-level series) with an `interface` label; filesystem
//! metrics add the `device` the writable layers are on.

use std::path::Path;

use k8s_cri::v1 as cri;

use super::{ContainerSample, PodSample};

/// Labels every container and pod metric has, in this order.
pub const BASE_LABELS: [&str; 6] = ["container", "id", "image", "name", "namespace", "pod"];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Extra {
    None,
    Cpu,
    Interface,
    Device,
}

impl Extra {
    fn key(self) -> Option<&'static str> {
        match self {
            Extra::None => None,
            Extra::Cpu => Some("cpu"),
            Extra::Interface => Some("interface"),
            Extra::Device => Some("device"),
        }
    }
}

struct Descriptor {
    name: &'static str,
    help: &'static str,
    counter: bool,
    extra: Extra,
}

const fn d(name: &'static str, help: &'static str, counter: bool, extra: Extra) -> Descriptor {
    Descriptor {
        name,
        help,
        counter,
        extra,
    }
}

/// Every metric this runtime reports.
const DESCRIPTORS: &[Descriptor] = &[
    d(
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        true,
        Extra::Cpu,
    ),
    d(
        "container_cpu_user_seconds_total",
        "Cumulative user cpu time consumed in seconds.",
        true,
        Extra::None,
    ),
    d(
        "container_cpu_system_seconds_total",
        "Cumulative system cpu time consumed in seconds.",
        true,
        Extra::None,
    ),
    d(
        "container_cpu_cfs_periods_total",
        "Number of elapsed enforcement period intervals.",
        true,
        Extra::None,
    ),
    d(
        "container_cpu_cfs_throttled_periods_total",
        "Number of throttled period intervals.",
        true,
        Extra::None,
    ),
    d(
        "container_cpu_cfs_throttled_seconds_total",
        "Total time duration the container has been throttled.",
        true,
        Extra::None,
    ),
    d(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        false,
        Extra::None,
    ),
    d(
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        false,
        Extra::None,
    ),
    d(
        "container_memory_rss",
        "Size of RSS in bytes.",
        false,
        Extra::None,
    ),
    d(
        "container_memory_cache",
        "Number of bytes of page cache memory.",
        false,
        Extra::None,
    ),
    d(
        "container_memory_swap",
        "Container swap usage in bytes.",
        false,
        Extra::None,
    ),
    d(
        "container_spec_memory_limit_bytes",
        "Memory limit for the container.",
        false,
        Extra::None,
    ),
    d(
        "container_oom_events_total",
        "Count of out of memory events observed for the container.",
        true,
        Extra::None,
    ),
    d(
        "container_processes",
        "Number of processes running inside the container.",
        false,
        Extra::None,
    ),
    d(
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        false,
        Extra::Device,
    ),
    d(
        "container_fs_inodes_used",
        "Number of inodes the container uses on this filesystem.",
        false,
        Extra::Device,
    ),
    d(
        "container_fs_limit_bytes",
        "Number of bytes that can be consumed by the container on this filesystem.",
        false,
        Extra::Device,
    ),
    d(
        "container_fs_inodes_total",
        "Number of Inodes.",
        false,
        Extra::Device,
    ),
    d(
        "container_fs_inodes_free",
        "Number of available Inodes.",
        false,
        Extra::Device,
    ),
    d(
        "container_last_seen",
        "Last time a container was seen by the exporter.",
        false,
        Extra::None,
    ),
    d(
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
        true,
        Extra::Interface,
    ),
    d(
        "container_network_receive_packets_total",
        "Cumulative count of packets received.",
        true,
        Extra::Interface,
    ),
    d(
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving.",
        true,
        Extra::Interface,
    ),
    d(
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving.",
        true,
        Extra::Interface,
    ),
    d(
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
        true,
        Extra::Interface,
    ),
    d(
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted.",
        true,
        Extra::Interface,
    ),
    d(
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting.",
        true,
        Extra::Interface,
    ),
    d(
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting.",
        true,
        Extra::Interface,
    ),
];

/// ListMetricDescriptors.
pub fn descriptors() -> Vec<cri::MetricDescriptor> {
    DESCRIPTORS
        .iter()
        .map(|d| cri::MetricDescriptor {
            name: d.name.to_owned(),
            help: d.help.to_owned(),
            label_keys: BASE_LABELS
                .iter()
                .copied()
                .chain(d.extra.key())
                .map(str::to_owned)
                .collect(),
        })
        .collect()
}

fn descriptor(name: &str) -> Option<&'static Descriptor> {
    DESCRIPTORS.iter().find(|d| d.name == name)
}

/// Size and inodes of the filesystem holding the writable layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsCapacity {
    pub bytes: u64,
    pub inodes: u64,
    pub inodes_free: u64,
}

impl FsCapacity {
    /// statvfs of `dir`; `None` when it cannot be read.
    pub fn of(dir: &Path) -> Option<FsCapacity> {
        let s = nix::sys::statvfs::statvfs(dir).ok()?;
        Some(FsCapacity {
            bytes: s.blocks() * s.fragment_size(),
            inodes: s.files(),
            inodes_free: s.files_free(),
        })
    }
}

/// Builds the metrics of one object (a pod or a container), all sharing its base labels.
struct Builder {
    base: Vec<String>,
    at: i64,
    out: Vec<cri::Metric>,
}

impl Builder {
    fn new(base: Vec<String>, at: i64) -> Builder {
        Builder {
            base,
            at,
            out: Vec::new(),
        }
    }

    fn push(&mut self, name: &str, value: u64, extra: Option<&str>) {
        let Some(d) = descriptor(name) else {
            return;
        };
        let mut labels = self.base.clone();
        if d.extra != Extra::None {
            labels.push(extra.unwrap_or_default().to_owned());
        }
        self.out.push(cri::Metric {
            name: name.to_owned(),
            timestamp: self.at,
            metric_type: if d.counter {
                cri::MetricType::Counter
            } else {
                cri::MetricType::Gauge
            } as i32,
            label_values: labels,
            value: Some(cri::UInt64Value { value }),
        });
    }
}

const NS_PER_S: u64 = 1_000_000_000;

fn pod_labels(p: &PodSample) -> (String, String) {
    let meta = p.record.config.metadata.clone().unwrap_or_default();
    (meta.namespace, meta.name)
}

fn container_metrics(
    c: &ContainerSample,
    pod: &PodSample,
    device: &str,
    fs: Option<&FsCapacity>,
) -> cri::ContainerMetrics {
    let (namespace, pod_name) = pod_labels(pod);
    let name = c
        .record
        .config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let id = c
        .cgroup_path
        .as_ref()
        .map(|p| format!("/{}", p.display()))
        .unwrap_or_default();
    let mut b = Builder::new(
        vec![
            name,
            id,
            c.record.image.name.clone(),
            c.record.id.clone(),
            namespace,
            pod_name,
        ],
        c.at,
    );
    if let Some(cpu) = &c.cgroup.cpu {
        b.push(
            "container_cpu_usage_seconds_total",
            cpu.usage_ns / NS_PER_S,
            Some("total"),
        );
        b.push(
            "container_cpu_user_seconds_total",
            cpu.user_ns / NS_PER_S,
            None,
        );
        b.push(
            "container_cpu_system_seconds_total",
            cpu.system_ns / NS_PER_S,
            None,
        );
        b.push("container_cpu_cfs_periods_total", cpu.periods, None);
        b.push(
            "container_cpu_cfs_throttled_periods_total",
            cpu.throttled_periods,
            None,
        );
        b.push(
            "container_cpu_cfs_throttled_seconds_total",
            cpu.throttled_ns / NS_PER_S,
            None,
        );
    }
    if let Some(m) = &c.cgroup.memory {
        b.push("container_memory_usage_bytes", m.usage_bytes, None);
        b.push(
            "container_memory_working_set_bytes",
            m.working_set_bytes,
            None,
        );
        b.push("container_memory_rss", m.rss_bytes, None);
        b.push("container_memory_cache", m.cache_bytes, None);
        b.push("container_memory_swap", m.swap_bytes.unwrap_or(0), None);
        // cAdvisor writes 0 for no limit.
        b.push(
            "container_spec_memory_limit_bytes",
            m.limit_bytes.unwrap_or(0),
            None,
        );
        b.push("container_oom_events_total", m.oom_kills, None);
    }
    if let Some(p) = &c.cgroup.pids {
        b.push("container_processes", p.current, None);
    }
    b.push("container_fs_usage_bytes", c.layer.used_bytes, Some(device));
    b.push(
        "container_fs_inodes_used",
        c.layer.inodes_used,
        Some(device),
    );
    if let Some(fs) = fs {
        b.push("container_fs_limit_bytes", fs.bytes, Some(device));
        b.push("container_fs_inodes_total", fs.inodes, Some(device));
        b.push("container_fs_inodes_free", fs.inodes_free, Some(device));
    }
    b.push(
        "container_last_seen",
        u64::try_from(c.at / 1_000_000_000).unwrap_or(0),
        None,
    );
    cri::ContainerMetrics {
        container_id: c.record.id.clone(),
        metrics: b.out,
    }
}

/// The metrics of a pod: its network counters, and its containers' metrics.
pub fn pod_metrics(
    p: &PodSample,
    layers_dir: &Path,
    fs: Option<&FsCapacity>,
) -> cri::PodSandboxMetrics {
    let device = layers_dir.to_string_lossy();
    let (namespace, pod_name) = pod_labels(p);
    let mut b = Builder::new(
        vec![
            String::new(),
            p.cgroup_path
                .as_ref()
                .map(|c| format!("/{}", c.display()))
                .unwrap_or_default(),
            String::new(),
            p.record.id.clone(),
            namespace,
            pod_name,
        ],
        p.at,
    );
    for i in p.network.iter().flatten() {
        let iface = Some(i.name.as_str());
        b.push("container_network_receive_bytes_total", i.rx_bytes, iface);
        b.push(
            "container_network_receive_packets_total",
            i.rx_packets,
            iface,
        );
        b.push(
            "container_network_receive_packets_dropped_total",
            i.rx_dropped,
            iface,
        );
        b.push("container_network_receive_errors_total", i.rx_errors, iface);
        b.push("container_network_transmit_bytes_total", i.tx_bytes, iface);
        b.push(
            "container_network_transmit_packets_total",
            i.tx_packets,
            iface,
        );
        b.push(
            "container_network_transmit_packets_dropped_total",
            i.tx_dropped,
            iface,
        );
        b.push(
            "container_network_transmit_errors_total",
            i.tx_errors,
            iface,
        );
    }
    cri::PodSandboxMetrics {
        pod_sandbox_id: p.record.id.clone(),
        metrics: b.out,
        container_metrics: p
            .containers
            .iter()
            .map(|c| container_metrics(c, p, &device, fs))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn descriptors_are_unique_and_name_cadvisors_metrics() {
        let all = descriptors();
        let names: HashSet<&str> = all.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names.len(), all.len());
        for wanted in [
            "container_cpu_usage_seconds_total",
            "container_memory_working_set_bytes",
            "container_memory_usage_bytes",
            "container_memory_rss",
            "container_network_receive_bytes_total",
            "container_network_transmit_errors_total",
            "container_fs_usage_bytes",
            "container_fs_inodes_total",
            "container_processes",
            "container_last_seen",
        ] {
            assert!(names.contains(wanted), "{wanted}");
        }
        let cpu = all
            .iter()
            .find(|d| d.name == "container_cpu_usage_seconds_total")
            .unwrap();
        assert_eq!(
            cpu.label_keys,
            [
                "container",
                "id",
                "image",
                "name",
                "namespace",
                "pod",
                "cpu"
            ]
        );
        for d in &all {
            // Prometheus names: counters end in _total, and nothing but [a-z_].
            assert!(
                d.name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{}",
                d.name
            );
            // Counters end in _total (cAdvisor's container_fs_inodes_total is a gauge).
            if descriptor(&d.name).unwrap().counter {
                assert!(d.name.ends_with("_total"), "{}", d.name);
            }
        }
    }

    #[test]
    fn every_metric_has_a_value_per_label_key() {
        let mut b = Builder::new(vec!["c".into(); 6], 1);
        b.push("container_fs_usage_bytes", 5, Some("/var/lib/bungeo"));
        b.push("container_memory_rss", 6, None);
        b.push("not_a_metric", 7, None);
        assert_eq!(b.out.len(), 2);
        let keys = |name: &str| {
            descriptors()
                .into_iter()
                .find(|d| d.name == name)
                .unwrap()
                .label_keys
                .len()
        };
        for m in &b.out {
            assert_eq!(m.label_values.len(), keys(&m.name), "{}", m.name);
        }
        assert_eq!(b.out[0].metric_type, cri::MetricType::Gauge as i32);
        assert!(FsCapacity::of(Path::new("/")).unwrap().bytes > 0);
    }
}
