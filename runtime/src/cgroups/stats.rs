//! Resource usage read from cgroup files, in one shape for v1 and v2: what kubelet's
//! ContainerStats and the shim's Stats need (CPU time, memory working set, pids, hugetlb).

use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::Path;

use super::hierarchy::{Hierarchy, Layout};
use crate::error::{Error, Result};

/// Usage of one cgroup; a controller that is not available there is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupStats {
    pub cpu: Option<CpuStats>,
    pub memory: Option<MemoryStats>,
    pub pids: Option<PidsStats>,
    pub hugetlb: Vec<HugetlbStats>,
}

/// CPU time, in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuStats {
    pub usage_ns: u64,
    pub user_ns: u64,
    pub system_ns: u64,
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_ns: u64,
}

/// Memory, in bytes. `working_set_bytes` is kubelet's: usage minus inactive file pages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryStats {
    pub usage_bytes: u64,
    /// `None` when unlimited.
    pub limit_bytes: Option<u64>,
    pub working_set_bytes: u64,
    pub inactive_file_bytes: u64,
    /// Anonymous memory (v1 `rss`, v2 `anon`).
    pub rss_bytes: u64,
    /// Page cache (v1 `cache`, v2 `file`).
    pub cache_bytes: u64,
    pub swap_bytes: Option<u64>,
    /// Swap the cgroup may use, `None` when unlimited or unknown (v1 without swap accounting).
    pub swap_limit_bytes: Option<u64>,
    pub page_faults: u64,
    pub major_page_faults: u64,
    /// Processes the OOM killer killed in this cgroup.
    pub oom_kills: u64,
}

/// Number of processes (tasks) and the limit, `None` when unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PidsStats {
    pub current: u64,
    pub limit: Option<u64>,
}

/// One huge page size, e.g. `2MB`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HugetlbStats {
    pub page_size: String,
    pub usage_bytes: u64,
    pub max_usage_bytes: Option<u64>,
    pub limit_bytes: Option<u64>,
    /// Allocations that failed because of the limit.
    pub failcnt: u64,
}

impl CgroupStats {
    /// Reads the usage of the cgroup at `rel` (relative to the hierarchy roots) without
    /// opening a [`super::Cgroup`]: for stats calls that read many cgroups in a row from one
    /// detected hierarchy. A cgroup that is gone reads as every controller `None`.
    pub fn read(hierarchy: &Hierarchy, rel: &Path) -> Result<CgroupStats> {
        match hierarchy.layout {
            Layout::V2 => {
                let Some(root) = &hierarchy.unified else {
                    return Ok(CgroupStats::default());
                };
                let dir = root.join(rel);
                Ok(CgroupStats {
                    cpu: v2_cpu(&dir)?,
                    memory: v2_memory(&dir)?,
                    pids: pids(&dir)?,
                    hugetlb: v2_hugetlb(&dir)?,
                })
            }
            Layout::V1 | Layout::Hybrid => {
                let dir = |c: &str| hierarchy.v1.get(c).map(|mount| mount.join(rel));
                let (cpuacct, cpu) = (dir("cpuacct"), dir("cpu"));
                Ok(CgroupStats {
                    cpu: v1_cpu(cpuacct.as_deref(), cpu.as_deref())?,
                    memory: dir("memory").map(|d| v1_memory(&d)).transpose()?.flatten(),
                    pids: dir("pids").map(|d| pids(&d)).transpose()?.flatten(),
                    hugetlb: match (dir("hugetlb"), &hierarchy.unified) {
                        (Some(d), _) => v1_hugetlb(&d)?,
                        (None, Some(root)) if hierarchy.layout == Layout::Hybrid => {
                            v2_hugetlb(&root.join(rel))?
                        }
                        _ => Vec::new(),
                    },
                })
            }
        }
    }
}

/// v1 reports "unlimited" as the largest page-aligned counter value.
const V1_UNLIMITED: u64 = 1 << 62;

/// Reads a file, `None` if it does not exist (controller not there).
fn read_opt(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

fn parse_u64(path: &Path, text: &str) -> Result<u64> {
    text.trim().parse().map_err(|_| {
        Error::Cgroups(format!(
            "{} holds {:?}, not a number",
            path.display(),
            text.trim()
        ))
    })
}

fn single(path: &Path) -> Result<Option<u64>> {
    read_opt(path)?.map(|t| parse_u64(path, &t)).transpose()
}

/// A limit: `max` or (v1) a huge value means unlimited.
fn limit(path: &Path) -> Result<Option<Option<u64>>> {
    let Some(text) = read_opt(path)? else {
        return Ok(None);
    };
    if text.trim() == "max" {
        return Ok(Some(None));
    }
    let value = parse_u64(path, &text)?;
    Ok(Some((value < V1_UNLIMITED).then_some(value)))
}

/// `key value` lines (memory.stat, cpu.stat, memory.events).
fn flat_keyed(path: &Path) -> Result<Option<HashMap<String, u64>>> {
    let Some(text) = read_opt(path)? else {
        return Ok(None);
    };
    let mut map = HashMap::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if let (Some(key), Some(value)) = (parts.next(), parts.next()) {
            map.insert(key.to_string(), parse_u64(path, value)?);
        }
    }
    Ok(Some(map))
}

fn get(map: &HashMap<String, u64>, key: &str) -> u64 {
    map.get(key).copied().unwrap_or(0)
}

/// pids.current and pids.max (same files in v1 and v2).
pub(crate) fn pids(dir: &Path) -> Result<Option<PidsStats>> {
    let Some(current) = single(&dir.join("pids.current"))? else {
        return Ok(None);
    };
    let limit = limit(&dir.join("pids.max"))?.flatten();
    Ok(Some(PidsStats { current, limit }))
}

/// v1 CPU from the cpuacct and cpu hierarchies (separate mounts on some nodes).
pub(crate) fn v1_cpu(cpuacct: Option<&Path>, cpu: Option<&Path>) -> Result<Option<CpuStats>> {
    let Some(cpuacct) = cpuacct else {
        return Ok(None);
    };
    let Some(usage_ns) = single(&cpuacct.join("cpuacct.usage"))? else {
        return Ok(None);
    };
    let mut stats = CpuStats {
        usage_ns,
        ..Default::default()
    };
    match (
        single(&cpuacct.join("cpuacct.usage_user"))?,
        single(&cpuacct.join("cpuacct.usage_sys"))?,
    ) {
        (Some(user), Some(system)) => {
            stats.user_ns = user;
            stats.system_ns = system;
        }
        // Older kernels only have cpuacct.stat, in clock ticks.
        _ => {
            if let Some(ticks) = flat_keyed(&cpuacct.join("cpuacct.stat"))? {
                let ns_per_tick = 1_000_000_000 / clock_ticks_per_second();
                stats.user_ns = get(&ticks, "user") * ns_per_tick;
                stats.system_ns = get(&ticks, "system") * ns_per_tick;
            }
        }
    }
    if let Some(cpu) = cpu
        && let Some(stat) = flat_keyed(&cpu.join("cpu.stat"))?
    {
        stats.periods = get(&stat, "nr_periods");
        stats.throttled_periods = get(&stat, "nr_throttled");
        stats.throttled_ns = get(&stat, "throttled_time");
    }
    Ok(Some(stats))
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// v2 CPU from cpu.stat, which every v2 cgroup has (usage even without the cpu controller).
pub(crate) fn v2_cpu(dir: &Path) -> Result<Option<CpuStats>> {
    let Some(stat) = flat_keyed(&dir.join("cpu.stat"))? else {
        return Ok(None);
    };
    Ok(Some(CpuStats {
        usage_ns: get(&stat, "usage_usec") * 1000,
        user_ns: get(&stat, "user_usec") * 1000,
        system_ns: get(&stat, "system_usec") * 1000,
        periods: get(&stat, "nr_periods"),
        throttled_periods: get(&stat, "nr_throttled"),
        throttled_ns: get(&stat, "throttled_usec") * 1000,
    }))
}

/// v1 memory; the `total_*` keys of memory.stat include child cgroups.
pub(crate) fn v1_memory(dir: &Path) -> Result<Option<MemoryStats>> {
    let Some(usage) = single(&dir.join("memory.usage_in_bytes"))? else {
        return Ok(None);
    };
    let stat = flat_keyed(&dir.join("memory.stat"))?.unwrap_or_default();
    let oom = flat_keyed(&dir.join("memory.oom_control"))?.unwrap_or_default();
    let memsw = single(&dir.join("memory.memsw.usage_in_bytes"))?;
    let memsw_limit = limit(&dir.join("memory.memsw.limit_in_bytes"))?.flatten();
    let limit_bytes = limit(&dir.join("memory.limit_in_bytes"))?.flatten();
    let inactive_file = get(&stat, "total_inactive_file");
    Ok(Some(MemoryStats {
        usage_bytes: usage,
        limit_bytes,
        working_set_bytes: usage.saturating_sub(inactive_file),
        inactive_file_bytes: inactive_file,
        rss_bytes: get(&stat, "total_rss"),
        cache_bytes: get(&stat, "total_cache"),
        swap_bytes: memsw.map(|sw| sw.saturating_sub(usage)),
        // v1 limits memory+swap together: what swap may take is the difference.
        swap_limit_bytes: memsw_limit
            .zip(limit_bytes)
            .map(|(both, memory)| both.saturating_sub(memory)),
        page_faults: get(&stat, "total_pgfault"),
        major_page_faults: get(&stat, "total_pgmajfault"),
        oom_kills: get(&oom, "oom_kill"),
    }))
}

/// v2 memory.
pub(crate) fn v2_memory(dir: &Path) -> Result<Option<MemoryStats>> {
    let Some(usage) = single(&dir.join("memory.current"))? else {
        return Ok(None);
    };
    let stat = flat_keyed(&dir.join("memory.stat"))?.unwrap_or_default();
    let events = flat_keyed(&dir.join("memory.events"))?.unwrap_or_default();
    let inactive_file = get(&stat, "inactive_file");
    Ok(Some(MemoryStats {
        usage_bytes: usage,
        limit_bytes: limit(&dir.join("memory.max"))?.flatten(),
        working_set_bytes: usage.saturating_sub(inactive_file),
        inactive_file_bytes: inactive_file,
        rss_bytes: get(&stat, "anon"),
        cache_bytes: get(&stat, "file"),
        swap_bytes: single(&dir.join("memory.swap.current"))?,
        swap_limit_bytes: limit(&dir.join("memory.swap.max"))?.flatten(),
        page_faults: get(&stat, "pgfault"),
        major_page_faults: get(&stat, "pgmajfault"),
        oom_kills: get(&events, "oom_kill"),
    }))
}

/// Page sizes with a `hugetlb.<size>.<suffix>` file in `dir`, sorted.
fn page_sizes(dir: &Path, suffix: &str) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list cgroup", dir, e)),
    };
    let mut sizes = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list cgroup", dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(size) = name
            .strip_prefix("hugetlb.")
            .and_then(|rest| rest.strip_suffix(suffix))
            .filter(|size| !size.contains('.'))
        {
            sizes.push(size.to_string());
        }
    }
    sizes.sort();
    Ok(sizes)
}

/// v1 hugetlb: `hugetlb.<size>.usage_in_bytes`, `.max_usage_in_bytes`, `.limit_in_bytes`,
/// `.failcnt`.
pub(crate) fn v1_hugetlb(dir: &Path) -> Result<Vec<HugetlbStats>> {
    page_sizes(dir, ".usage_in_bytes")?
        .into_iter()
        .map(|size| {
            let file = |suffix: &str| dir.join(format!("hugetlb.{size}.{suffix}"));
            Ok(HugetlbStats {
                usage_bytes: single(&file("usage_in_bytes"))?.unwrap_or(0),
                max_usage_bytes: single(&file("max_usage_in_bytes"))?,
                limit_bytes: limit(&file("limit_in_bytes"))?.flatten(),
                failcnt: single(&file("failcnt"))?.unwrap_or(0),
                page_size: size,
            })
        })
        .collect()
}

/// v2 hugetlb: `hugetlb.<size>.current`, `.max`, and `max` events in `.events`.
pub(crate) fn v2_hugetlb(dir: &Path) -> Result<Vec<HugetlbStats>> {
    page_sizes(dir, ".current")?
        .into_iter()
        .map(|size| {
            let file = |suffix: &str| dir.join(format!("hugetlb.{size}.{suffix}"));
            let events = flat_keyed(&file("events"))?.unwrap_or_default();
            Ok(HugetlbStats {
                usage_bytes: single(&file("current"))?.unwrap_or(0),
                max_usage_bytes: None,
                limit_bytes: limit(&file("max"))?.flatten(),
                failcnt: get(&events, "max"),
                page_size: size,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, entries: &[(&str, &str)]) {
        for (name, content) in entries {
            std::fs::write(dir.join(name), content).expect("write fixture");
        }
    }

    #[test]
    fn v1_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path();
        files(
            d,
            &[
                ("cpuacct.usage", "5000\n"),
                ("cpuacct.usage_user", "3000\n"),
                ("cpuacct.usage_sys", "2000\n"),
                (
                    "cpu.stat",
                    "nr_periods 7\nnr_throttled 2\nthrottled_time 900\n",
                ),
                ("memory.usage_in_bytes", "1000000\n"),
                ("memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory.memsw.usage_in_bytes", "1000100\n"),
                (
                    "memory.stat",
                    "cache 1\nrss 2\ntotal_cache 400000\ntotal_rss 500000\n\
                     total_inactive_file 300000\ntotal_pgfault 42\ntotal_pgmajfault 3\n",
                ),
                (
                    "memory.oom_control",
                    "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
                ),
                ("pids.current", "3\n"),
                ("pids.max", "max\n"),
                ("hugetlb.2MB.usage_in_bytes", "2097152\n"),
                ("hugetlb.2MB.max_usage_in_bytes", "4194304\n"),
                ("hugetlb.2MB.limit_in_bytes", "8388608\n"),
                ("hugetlb.2MB.failcnt", "5\n"),
            ],
        );
        let cpu = v1_cpu(Some(d), Some(d)).expect("cpu").expect("present");
        assert_eq!(
            cpu,
            CpuStats {
                usage_ns: 5000,
                user_ns: 3000,
                system_ns: 2000,
                periods: 7,
                throttled_periods: 2,
                throttled_ns: 900
            }
        );
        let mem = v1_memory(d).expect("memory").expect("present");
        assert_eq!(mem.limit_bytes, None);
        assert_eq!(mem.working_set_bytes, 700000);
        assert_eq!(mem.rss_bytes, 500000);
        assert_eq!(mem.cache_bytes, 400000);
        assert_eq!(mem.swap_bytes, Some(100));
        assert_eq!(
            (mem.page_faults, mem.major_page_faults, mem.oom_kills),
            (42, 3, 1)
        );
        assert_eq!(
            pids(d).expect("pids"),
            Some(PidsStats {
                current: 3,
                limit: None
            })
        );
        assert_eq!(
            v1_hugetlb(d).expect("hugetlb"),
            [HugetlbStats {
                page_size: "2MB".into(),
                usage_bytes: 2097152,
                max_usage_bytes: Some(4194304),
                limit_bytes: Some(8388608),
                failcnt: 5
            }]
        );
    }

    #[test]
    fn v1_cpu_falls_back_to_ticks() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path();
        files(
            d,
            &[
                ("cpuacct.usage", "10\n"),
                ("cpuacct.stat", "user 2\nsystem 1\n"),
            ],
        );
        let cpu = v1_cpu(Some(d), None).expect("cpu").expect("present");
        let tick = 1_000_000_000 / clock_ticks_per_second();
        assert_eq!((cpu.user_ns, cpu.system_ns), (2 * tick, tick));
    }

    #[test]
    fn v2_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path();
        files(
            d,
            &[
                (
                    "cpu.stat",
                    "usage_usec 5\nuser_usec 3\nsystem_usec 2\nnr_periods 1\nnr_throttled 1\n\
                     throttled_usec 4\n",
                ),
                ("memory.current", "1000\n"),
                ("memory.max", "4096\n"),
                ("memory.swap.current", "0\n"),
                (
                    "memory.stat",
                    "anon 600\nfile 300\ninactive_file 250\npgfault 9\npgmajfault 1\n",
                ),
                ("memory.events", "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n"),
                ("pids.current", "1\n"),
                ("pids.max", "32\n"),
                ("hugetlb.1GB.current", "0\n"),
                ("hugetlb.1GB.max", "max\n"),
                ("hugetlb.1GB.events", "max 0\n"),
                ("hugetlb.2MB.current", "2097152\n"),
                ("hugetlb.2MB.rsvd.current", "0\n"),
                ("hugetlb.2MB.max", "4194304\n"),
                ("hugetlb.2MB.events", "max 3\n"),
            ],
        );
        let cpu = v2_cpu(d).expect("cpu").expect("present");
        assert_eq!(
            (cpu.usage_ns, cpu.user_ns, cpu.system_ns),
            (5000, 3000, 2000)
        );
        assert_eq!(cpu.throttled_ns, 4000);
        let mem = v2_memory(d).expect("memory").expect("present");
        assert_eq!(mem.limit_bytes, Some(4096));
        assert_eq!(mem.working_set_bytes, 750);
        assert_eq!(
            (mem.rss_bytes, mem.cache_bytes, mem.oom_kills),
            (600, 300, 1)
        );
        assert_eq!(
            pids(d).expect("pids"),
            Some(PidsStats {
                current: 1,
                limit: Some(32)
            })
        );
        let huge = v2_hugetlb(d).expect("hugetlb");
        assert_eq!(huge.len(), 2, "{huge:?}");
        assert_eq!(huge[0].page_size, "1GB");
        assert_eq!(huge[0].limit_bytes, None);
        assert_eq!(huge[1].failcnt, 3);
        assert_eq!(huge[1].usage_bytes, 2097152);
    }

    #[test]
    fn missing_controllers_are_none_and_garbage_is_an_error() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path();
        assert_eq!(v2_memory(d).expect("memory"), None);
        assert_eq!(pids(d).expect("pids"), None);
        assert_eq!(v1_cpu(None, None).expect("cpu"), None);
        assert!(v2_hugetlb(d).expect("hugetlb").is_empty());
        files(d, &[("pids.current", "many\n")]);
        let err = pids(d).expect_err("garbage");
        assert!(err.to_string().contains("pids.current"), "{err}");
    }

    #[test]
    fn reads_a_cgroup_through_a_hierarchy_v2_and_hybrid() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("unified");
        let rel = Path::new("kubepods/pod1/c1");
        std::fs::create_dir_all(root.join(rel)).expect("mkdir");
        files(
            &root.join(rel),
            &[
                ("cpu.stat", "usage_usec 7\nuser_usec 4\nsystem_usec 3\n"),
                ("memory.current", "2000\n"),
                ("memory.max", "max\n"),
                ("memory.swap.current", "10\n"),
                ("memory.swap.max", "4096\n"),
                ("memory.stat", "anon 1500\ninactive_file 600\n"),
                ("pids.current", "2\n"),
            ],
        );
        let v2 = CgroupStats::read(&Hierarchy::v2(&root), rel).expect("v2");
        assert_eq!(v2.cpu.expect("cpu").usage_ns, 7000);
        let mem = v2.memory.expect("memory");
        assert_eq!((mem.working_set_bytes, mem.limit_bytes), (1400, None));
        assert_eq!(
            (mem.swap_bytes, mem.swap_limit_bytes),
            (Some(10), Some(4096))
        );
        assert_eq!(v2.pids.expect("pids").current, 2);
        let gone = CgroupStats::read(&Hierarchy::v2(&root), Path::new("gone")).expect("gone");
        assert_eq!(gone, CgroupStats::default());

        // Hybrid, with cpu and cpuacct on separate mounts as on the test machines.
        let mut v1 = std::collections::BTreeMap::new();
        for controller in ["cpu", "cpuacct", "memory", "pids"] {
            let mount = tmp.path().join(controller);
            std::fs::create_dir_all(mount.join(rel)).expect("mkdir");
            v1.insert(controller.to_string(), mount);
        }
        files(&v1["cpuacct"].join(rel), &[("cpuacct.usage", "123\n")]);
        files(&v1["cpu"].join(rel), &[("cpu.stat", "nr_periods 4\n")]);
        files(
            &v1["memory"].join(rel),
            &[
                ("memory.usage_in_bytes", "5000\n"),
                ("memory.limit_in_bytes", "8192\n"),
                ("memory.memsw.usage_in_bytes", "5000\n"),
                ("memory.memsw.limit_in_bytes", "16384\n"),
                ("memory.stat", "total_inactive_file 6000\ntotal_rss 3000\n"),
            ],
        );
        files(&v1["pids"].join(rel), &[("pids.current", "5\n")]);
        let hybrid = Hierarchy {
            layout: Layout::Hybrid,
            v1,
            unified: Some(root.clone()),
        };
        let stats = CgroupStats::read(&hybrid, rel).expect("hybrid");
        let cpu = stats.cpu.expect("cpu");
        assert_eq!((cpu.usage_ns, cpu.periods), (123, 4));
        let mem = stats.memory.expect("memory");
        // More inactive file than usage (counted at different moments): floored at 0.
        assert_eq!(mem.working_set_bytes, 0);
        assert_eq!(
            (mem.limit_bytes, mem.swap_limit_bytes),
            (Some(8192), Some(8192))
        );
        assert_eq!(mem.swap_bytes, Some(0));
        assert_eq!(stats.pids.expect("pids").current, 5);
    }
}
