//! cgroup resources and `oom_score_adj` from the CRI `LinuxContainerResources`, as containerd
//! sets them: a memory limit also caps memory+swap at the same value where swap accounting
//! exists (so no swap), unless `memory_swap_limit_in_bytes` says otherwise. A PID limit is not part of a container's CRI resources: kubelet sets it on the
//! pod's cgroup.

use k8s_cri::v1::LinuxContainerResources;
use oci_spec::runtime::{LinuxCpu, LinuxHugepageLimit, LinuxMemory, LinuxResources};

use super::host::SpecHost;
use crate::{Error, Result};

fn non_negative(v: i64, what: &str, name: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| {
        Error::InvalidArgument(format!("container {name}: {what} {v} must not be negative"))
    })
}

/// The resources of the container, `None` when the request carries none. Zero means "not
/// set" for every field; hugepage limits are dropped with a warning when the hugetlb controller
/// is missing (containerd's default `tolerate_missing_hugetlb_controller`), and the swap limit
/// when swap accounting is off.
pub(super) fn resources(
    r: Option<&LinuxContainerResources>,
    host: &dyn SpecHost,
    name: &str,
) -> Result<Option<LinuxResources>> {
    let Some(r) = r else {
        return Ok(None);
    };
    let mut cpu = LinuxCpu::default();
    if r.cpu_period != 0 {
        cpu.set_period(Some(non_negative(r.cpu_period, "cpu_period", name)?));
    }
    if r.cpu_quota != 0 {
        cpu.set_quota(Some(r.cpu_quota));
    }
    if r.cpu_shares != 0 {
        cpu.set_shares(Some(non_negative(r.cpu_shares, "cpu_shares", name)?));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.set_cpus(Some(r.cpuset_cpus.clone()));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.set_mems(Some(r.cpuset_mems.clone()));
    }
    let mut memory = LinuxMemory::default();
    let swap_available = host.swap_available();
    if r.memory_limit_in_bytes != 0 {
        memory.set_limit(Some(r.memory_limit_in_bytes));
        // Memory+swap equal to the memory limit: no swap unless the CRI asks for it.
        if swap_available {
            memory.set_swap(Some(r.memory_limit_in_bytes));
        }
    }
    if r.memory_swap_limit_in_bytes != 0 {
        if swap_available {
            memory.set_swap(Some(r.memory_swap_limit_in_bytes));
        } else {
            tracing::warn!(
                container = name,
                "swap accounting is not available: ignoring the swap limit"
            );
        }
    }
    let mut out = LinuxResources::default();
    out.set_cpu(Some(cpu));
    out.set_memory(Some(memory));
    if !r.hugepage_limits.is_empty() {
        if host.hugetlb_available() {
            let limits = r
                .hugepage_limits
                .iter()
                .map(|h| {
                    let mut l = LinuxHugepageLimit::default();
                    l.set_page_size(h.page_size.clone());
                    l.set_limit(i64::try_from(h.limit).unwrap_or(i64::MAX));
                    l
                })
                .collect();
            out.set_hugepage_limits(Some(limits));
        } else {
            tracing::warn!(
                container = name,
                "hugetlb cgroup controller is missing: ignoring hugepage limits"
            );
        }
    }
    if !r.unified.is_empty() {
        out.set_unified(Some(r.unified.clone()));
    }
    Ok(Some(out))
}

/// The process `oom_score_adj`: the CRI value raised to at least `floor` (the daemon's own
/// value, which an unprivileged writer cannot go below); `None` without CRI resources.
pub(super) fn oom_score_adj(
    r: Option<&LinuxContainerResources>,
    floor: Option<i32>,
    name: &str,
) -> Result<Option<i32>> {
    let Some(r) = r else {
        return Ok(None);
    };
    if !(-1000..=1000).contains(&r.oom_score_adj) {
        return Err(Error::InvalidArgument(format!(
            "container {name}: oom_score_adj {} is outside -1000..1000",
            r.oom_score_adj
        )));
    }
    let adj = r.oom_score_adj as i32;
    Ok(Some(floor.map_or(adj, |f| adj.max(f))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::host::tests_support::FakeHost;
    use k8s_cri::v1::HugepageLimit;
    use serde_json::json;

    fn full() -> LinuxContainerResources {
        LinuxContainerResources {
            cpu_period: 100000,
            cpu_quota: 50000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            oom_score_adj: -998,
            cpuset_cpus: "0-1".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 20,
            }],
            unified: [("memory.high".to_string(), "1000000".to_string())].into(),
            memory_swap_limit_in_bytes: 128 << 20,
        }
    }

    #[test]
    fn all_fields() {
        let host = FakeHost {
            hugetlb: true,
            swap: true,
            ..Default::default()
        };
        let r = resources(Some(&full()), &host, "c").unwrap().unwrap();
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({
                "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"},
                "memory": {"limit": 67108864, "swap": 134217728},
                "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
                "unified": {"memory.high": "1000000"},
            })
        );
    }

    #[test]
    fn missing_controllers_drop_their_limits_and_zero_means_unset() {
        let host = FakeHost::default();
        let r = resources(Some(&full()), &host, "c").unwrap().unwrap();
        assert!(r.hugepage_limits().is_none());
        assert_eq!(r.memory().unwrap().swap(), None);
        // With swap accounting, a memory limit alone also caps memory+swap.
        let swap = FakeHost {
            swap: true,
            ..Default::default()
        };
        let mut only_limit = full();
        only_limit.memory_swap_limit_in_bytes = 0;
        let r = resources(Some(&only_limit), &swap, "c").unwrap().unwrap();
        assert_eq!(r.memory().unwrap().swap(), Some(64 << 20));
        let empty = resources(Some(&LinuxContainerResources::default()), &host, "c")
            .unwrap()
            .unwrap();
        assert_eq!(
            serde_json::to_value(&empty).unwrap(),
            json!({"cpu": {}, "memory": {}})
        );
        assert!(resources(None, &host, "c").unwrap().is_none());
    }

    #[test]
    fn negative_shares_or_period_are_invalid() {
        let host = FakeHost::default();
        let mut r = full();
        r.cpu_shares = -2;
        assert!(
            resources(Some(&r), &host, "c")
                .unwrap_err()
                .to_string()
                .contains("cpu_shares -2")
        );
        let mut r = full();
        r.cpu_period = -1;
        assert!(resources(Some(&r), &host, "c").is_err());
        let mut r = full();
        r.cpu_quota = -1;
        assert_eq!(
            resources(Some(&r), &host, "c")
                .unwrap()
                .unwrap()
                .cpu()
                .as_ref()
                .unwrap()
                .quota(),
            Some(-1)
        );
    }

    #[test]
    fn oom_score_adj_is_clamped_to_the_floor() {
        let r = full();
        assert_eq!(oom_score_adj(Some(&r), None, "c").unwrap(), Some(-998));
        assert_eq!(oom_score_adj(Some(&r), Some(0), "c").unwrap(), Some(0));
        let mut high = full();
        high.oom_score_adj = 1000;
        assert_eq!(
            oom_score_adj(Some(&high), Some(-500), "c").unwrap(),
            Some(1000)
        );
        assert_eq!(oom_score_adj(None, Some(0), "c").unwrap(), None);
        high.oom_score_adj = 1001;
        assert!(oom_score_adj(Some(&high), None, "c").is_err());
    }
}
