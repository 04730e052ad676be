//! cgroup v1 limits written straight to the controller files, for the resources every
//! container has (devices; cpu shares, quota, period, burst; cpuset; memory limit, swap,
//! reservation and OOM killer; pids).
//!
//! libcgroups' v1 manager writes the same files, but building one re-reads
//! /proc/self/mountinfo and /proc/self/cgroup through freshly verified procfs handles for
//! each of its twelve controllers, about a millisecond per container on every create. This
//! module writes what the manager would, in the manager's per-controller order and with its
//! messages, and [`handles`] says when a request holds anything else (block I/O, network,
//! RDMA, v1 hugetlb, real-time or idle CPU, kernel memory, swappiness, ...): then the caller
//! hands the whole request to libcgroups.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxCpu, LinuxMemory, LinuxResources};

use super::device_policy::DEFAULT_DEVICE_RULES;

/// Reading and writing cgroup files; errors are worded as libcgroups words them.
pub(crate) trait CgroupFiles {
    /// Writes `data` in one write(2) to an existing file.
    fn write(&self, path: &Path, data: &str) -> Result<(), FileError>;
    /// Reads a whole file.
    fn read(&self, path: &Path) -> Result<String, String>;
}

/// A failed write: whether the open or the write itself failed, and the errno.
#[derive(Debug)]
pub(crate) struct FileError {
    message: String,
    errno: Option<i32>,
}

impl FileError {
    fn open(path: &Path, err: &std::io::Error) -> FileError {
        FileError {
            message: format!("failed to open {}: {err}", path.display()),
            errno: err.raw_os_error(),
        }
    }

    fn write(path: &Path, data: &str, err: &std::io::Error) -> FileError {
        FileError {
            message: format!("failed to write {data} to {}: {err}", path.display()),
            errno: err.raw_os_error(),
        }
    }
}

/// The cgroup filesystem.
pub(crate) struct Fs;

impl CgroupFiles for Fs {
    fn write(&self, path: &Path, data: &str) -> Result<(), FileError> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| FileError::open(path, &e))?;
        f.write_all(data.as_bytes())
            .map_err(|e| FileError::write(path, data, &e))
    }

    fn read(&self, path: &Path) -> Result<String, String> {
        std::fs::read_to_string(path).map_err(|e| format!("failed to read {}: {e}", path.display()))
    }
}

/// Whether [`apply`] covers everything in `resources`.
pub(crate) fn handles(resources: &LinuxResources) -> bool {
    let cpu_ok = resources.cpu().as_ref().is_none_or(|c| {
        c.realtime_runtime().is_none() && c.realtime_period().is_none() && c.idle().is_none()
    });
    let memory_ok = resources.memory().as_ref().is_none_or(|m| {
        m.kernel().is_none()
            && m.kernel_tcp().is_none()
            && m.swappiness().is_none()
            && m.use_hierarchy().is_none()
            && m.check_before_update().is_none()
    });
    cpu_ok
        && memory_ok
        && resources.block_io().is_none()
        && resources.network().is_none()
        && resources.rdma().is_none()
        && resources
            .hugepage_limits()
            .as_ref()
            .is_none_or(|h| h.is_empty())
        && resources.unified().as_ref().is_none_or(|u| u.is_empty())
}

/// Writes `resources` into the cgroup whose directory per v1 controller is `dirs`. Only call
/// it when [`handles`] is true.
pub(crate) fn apply(
    files: &dyn CgroupFiles,
    dirs: &BTreeMap<String, PathBuf>,
    resources: &LinuxResources,
) -> Result<(), String> {
    let dir = |controller: &str| {
        dirs.get(controller).ok_or_else(|| {
            format!(
                "cgroup {controller} is required to fulfill the request, but is not supported \
                 by this system"
            )
        })
    };
    let write = |path: PathBuf, data: &str| files.write(&path, data).map_err(|e| e.message);
    if let Some(cpu) = resources.cpu() {
        if cpu.cpus().is_some() || cpu.mems().is_some() {
            let d = dir("cpuset")?;
            if let Some(cpus) = cpu.cpus() {
                write(d.join("cpuset.cpus"), cpus)?;
            }
            if let Some(mems) = cpu.mems() {
                write(d.join("cpuset.mems"), mems)?;
            }
        }
        if cpu.shares().is_some() || cpu.period().is_some() || cpu.quota().is_some() {
            apply_cpu(&write, dir("cpu")?, cpu)?;
        }
    }
    if let Some(memory) = resources.memory() {
        apply_memory(files, dir("memory")?, memory)?;
    }
    if let Some(pids) = resources.pids() {
        let limit = if pids.limit() > 0 {
            pids.limit().to_string()
        } else {
            "max".to_string()
        };
        write(dir("pids")?.join("pids.max"), &limit)?;
    }
    // libcgroups always needs the devices controller: the default rules go in every time.
    let devices = dir("devices")?;
    for rule in resources.devices().iter().flatten() {
        let file = if rule.allow() {
            "devices.allow"
        } else {
            "devices.deny"
        };
        write(devices.join(file), &rule.to_string())?;
    }
    for rule in DEFAULT_DEVICE_RULES {
        write(devices.join("devices.allow"), rule)?;
    }
    Ok(())
}

fn apply_cpu(
    write: &dyn Fn(PathBuf, &str) -> Result<(), String>,
    dir: &Path,
    cpu: &LinuxCpu,
) -> Result<(), String> {
    // Zero means "leave as is".
    if let Some(shares) = cpu.shares().filter(|v| *v != 0) {
        write(dir.join("cpu.shares"), &shares.to_string())?;
    }
    if let Some(period) = cpu.period().filter(|v| *v != 0) {
        write(dir.join("cpu.cfs_period_us"), &period.to_string())?;
    }
    if let Some(quota) = cpu.quota().filter(|v| *v != 0) {
        write(dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
    }
    if let Some(burst) = cpu.burst() {
        write(dir.join("cpu.cfs_burst_us"), &burst.to_string())?;
    }
    Ok(())
}

const MEMORY_LIMIT: &str = "memory.limit_in_bytes";
const MEMORY_SWAP_LIMIT: &str = "memory.memsw.limit_in_bytes";

/// The memory limit as libcgroups reads it ("max" is unlimited).
fn memory_limit(files: &dyn CgroupFiles, dir: &Path) -> Result<i64, String> {
    let path = dir.join(MEMORY_LIMIT);
    let text = files.read(&path)?;
    let text = text.trim();
    if text == "max" {
        return Ok(i64::MAX);
    }
    text.parse().map_err(|e| {
        format!(
            "failed to parse memory limit {text:?} from {}: {e}",
            path.display()
        )
    })
}

fn usage(files: &dyn CgroupFiles, dir: &Path, file: &str) -> Result<u64, String> {
    let path = dir.join(file);
    let text = files.read(&path)?;
    let text = text.trim();
    if text == "max" {
        return Ok(u64::MAX);
    }
    text.parse()
        .map_err(|e| format!("failed to parse {text:?} from {}: {e}", path.display()))
}

fn set_memory(files: &dyn CgroupFiles, dir: &Path, limit: i64) -> Result<(), String> {
    if limit == 0 {
        return Ok(());
    }
    match files.write(&dir.join(MEMORY_LIMIT), &limit.to_string()) {
        Ok(()) => Ok(()),
        // The usage is above the new limit: say how far.
        Err(FileError {
            errno: Some(libc::EBUSY),
            ..
        }) => Err(format!(
            "unable to set memory limit to {limit} (current usage: {}, peak usage: {})",
            usage(files, dir, "memory.usage_in_bytes")?,
            usage(files, dir, "memory.max_usage_in_bytes")?
        )),
        Err(e) => Err(e.message),
    }
}

fn set_swap(files: &dyn CgroupFiles, dir: &Path, swap: i64) -> Result<(), String> {
    if swap == 0 {
        return Ok(());
    }
    files
        .write(&dir.join(MEMORY_SWAP_LIMIT), &swap.to_string())
        .map_err(|e| e.message)
}

/// The kernel refuses memory+swap below memory, so growing both must raise swap first.
fn set_memory_and_swap(
    files: &dyn CgroupFiles,
    dir: &Path,
    limit: i64,
    swap: i64,
    swap_first: bool,
) -> Result<(), String> {
    if swap_first {
        set_swap(files, dir, swap)?;
        set_memory(files, dir, limit)?;
    }
    set_memory(files, dir, limit)?;
    set_swap(files, dir, swap)
}

fn apply_memory(files: &dyn CgroupFiles, dir: &Path, memory: &LinuxMemory) -> Result<(), String> {
    match (memory.limit(), memory.swap()) {
        (Some(limit), Some(swap)) => {
            let current = memory_limit(files, dir)?;
            set_memory_and_swap(files, dir, limit, swap, swap == -1 || current < swap)?;
        }
        (Some(-1), None) => set_memory_and_swap(files, dir, -1, -1, true)?,
        (Some(limit), None) => {
            let current = memory_limit(files, dir)?;
            set_memory_and_swap(files, dir, limit, 0, current < 0)?;
        }
        (None, swap) => set_memory_and_swap(files, dir, 0, swap.unwrap_or(0), false)?,
    }
    let write = |file: &str, data: &str| files.write(&dir.join(file), data).map_err(|e| e.message);
    if let Some(reservation) = memory.reservation().filter(|r| *r != 0) {
        write("memory.soft_limit_in_bytes", &reservation.to_string())?;
    }
    let disable = memory.disable_oom_killer().unwrap_or(false);
    write("memory.oom_control", if disable { "1" } else { "0" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxBlockIo, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType,
        LinuxHugepageLimitBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
    };
    use std::cell::RefCell;
    use std::collections::HashMap;

    /// Records writes; reads come from a map, EBUSY from a set of paths.
    #[derive(Default)]
    struct Recorder {
        writes: RefCell<Vec<(String, String)>>,
        contents: HashMap<String, String>,
        busy: Vec<String>,
    }

    impl CgroupFiles for Recorder {
        fn write(&self, path: &Path, data: &str) -> Result<(), FileError> {
            let p = path.display().to_string();
            if self.busy.contains(&p) {
                return Err(FileError::write(
                    path,
                    data,
                    &std::io::Error::from_raw_os_error(libc::EBUSY),
                ));
            }
            self.writes.borrow_mut().push((p, data.to_string()));
            Ok(())
        }

        fn read(&self, path: &Path) -> Result<String, String> {
            self.contents
                .get(&path.display().to_string())
                .cloned()
                .ok_or_else(|| format!("failed to read {}", path.display()))
        }
    }

    fn dirs() -> BTreeMap<String, PathBuf> {
        ["cpu", "cpuset", "memory", "pids", "devices", "freezer"]
            .iter()
            .map(|c| (c.to_string(), PathBuf::from(format!("/cg/{c}/x"))))
            .collect()
    }

    fn deny_all() -> oci_spec::runtime::LinuxDeviceCgroup {
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .expect("rule")
    }

    #[test]
    fn the_runc_spec_default_writes_only_device_rules() {
        let rec = Recorder::default();
        let res = LinuxResourcesBuilder::default()
            .devices(vec![
                deny_all(),
                LinuxDeviceCgroupBuilder::default()
                    .allow(true)
                    .typ(LinuxDeviceType::C)
                    .major(4i64)
                    .minor(64i64)
                    .access("rw")
                    .build()
                    .expect("rule"),
            ])
            .build()
            .expect("resources");
        assert!(handles(&res));
        apply(&rec, &dirs(), &res).expect("apply");
        let writes = rec.writes.borrow();
        assert_eq!(
            writes[0],
            ("/cg/devices/x/devices.deny".into(), "a *:* rwm".into())
        );
        assert_eq!(
            writes[1],
            ("/cg/devices/x/devices.allow".into(), "c 4:64 rw".into())
        );
        let defaults: Vec<&str> = writes[2..].iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(defaults, DEFAULT_DEVICE_RULES);
        assert!(
            writes[2..]
                .iter()
                .all(|(p, _)| p.ends_with("devices.allow"))
        );
    }

    #[test]
    fn kubelet_resources_are_written_in_libcgroups_order() {
        let mut rec = Recorder::default();
        rec.contents.insert(
            "/cg/memory/x/memory.limit_in_bytes".into(),
            "9223372036854771712\n".into(),
        );
        let res = LinuxResourcesBuilder::default()
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(512u64)
                    .quota(50_000i64)
                    .period(100_000u64)
                    .cpus("0-1")
                    .build()
                    .expect("cpu"),
            )
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64 << 20)
                    .swap(64 << 20)
                    .reservation(32 << 20)
                    .build()
                    .expect("memory"),
            )
            .pids(
                LinuxPidsBuilder::default()
                    .limit(0i64)
                    .build()
                    .expect("pids"),
            )
            .build()
            .expect("resources");
        assert!(handles(&res));
        apply(&rec, &dirs(), &res).expect("apply");
        let writes: Vec<(String, String)> = rec.writes.borrow()[..9].to_vec();
        let want = [
            ("cpuset/x/cpuset.cpus", "0-1"),
            ("cpu/x/cpu.shares", "512"),
            ("cpu/x/cpu.cfs_period_us", "100000"),
            ("cpu/x/cpu.cfs_quota_us", "50000"),
            ("memory/x/memory.limit_in_bytes", "67108864"),
            ("memory/x/memory.memsw.limit_in_bytes", "67108864"),
            ("memory/x/memory.soft_limit_in_bytes", "33554432"),
            ("memory/x/memory.oom_control", "0"),
            ("pids/x/pids.max", "max"),
        ];
        for ((path, value), (want_path, want_value)) in writes.iter().zip(want) {
            assert_eq!(path, &format!("/cg/{want_path}"));
            assert_eq!(value, want_value);
        }
    }

    #[test]
    fn growing_swap_past_the_current_limit_writes_swap_first() {
        let mut rec = Recorder::default();
        rec.contents
            .insert("/cg/memory/x/memory.limit_in_bytes".into(), "1000\n".into());
        let memory = LinuxMemoryBuilder::default()
            .limit(2000)
            .swap(3000)
            .disable_oom_killer(true)
            .build()
            .expect("memory");
        apply_memory(&rec, Path::new("/m"), &memory).expect_err("no limit file under /m");
        apply_memory(&rec, Path::new("/cg/memory/x"), &memory).expect("apply");
        let values: Vec<String> = rec
            .writes
            .borrow()
            .iter()
            .map(|(p, v)| format!("{}={v}", p.rsplit('/').next().unwrap_or_default()))
            .collect();
        assert_eq!(
            values,
            [
                "memory.memsw.limit_in_bytes=3000",
                "memory.limit_in_bytes=2000",
                "memory.limit_in_bytes=2000",
                "memory.memsw.limit_in_bytes=3000",
                "memory.oom_control=1",
            ]
        );
    }

    #[test]
    fn a_limit_below_usage_says_how_far() {
        let mut rec = Recorder::default();
        for (file, v) in [
            ("memory.limit_in_bytes", "max"),
            ("memory.usage_in_bytes", "5000"),
            ("memory.max_usage_in_bytes", "6000"),
        ] {
            rec.contents.insert(format!("/cg/m/{file}"), v.into());
        }
        rec.busy.push("/cg/m/memory.limit_in_bytes".into());
        let memory = LinuxMemoryBuilder::default()
            .limit(10)
            .build()
            .expect("memory");
        let err = apply_memory(&rec, Path::new("/cg/m"), &memory).expect_err("busy");
        assert_eq!(
            err,
            "unable to set memory limit to 10 (current usage: 5000, peak usage: 6000)"
        );
    }

    #[test]
    fn anything_else_is_left_to_libcgroups() {
        let plain = LinuxResourcesBuilder::default().build().expect("resources");
        assert!(handles(&plain));
        let mut r = plain.clone();
        r.set_block_io(Some(LinuxBlockIo::default()));
        assert!(!handles(&r));
        let mut r = plain.clone();
        r.set_cpu(Some(
            LinuxCpuBuilder::default().idle(1i64).build().expect("cpu"),
        ));
        assert!(!handles(&r));
        let mut r = plain.clone();
        r.set_memory(Some(
            LinuxMemoryBuilder::default()
                .swappiness(10u64)
                .build()
                .expect("memory"),
        ));
        assert!(!handles(&r));
        let mut r = plain.clone();
        r.set_hugepage_limits(Some(vec![
            LinuxHugepageLimitBuilder::default()
                .page_size("2MB")
                .limit(1i64)
                .build()
                .expect("hugepages"),
        ]));
        assert!(!handles(&r));
    }

    #[test]
    fn a_missing_controller_is_named() {
        let rec = Recorder::default();
        let mut d = dirs();
        d.remove("devices");
        let res = LinuxResourcesBuilder::default().build().expect("resources");
        let err = apply(&rec, &d, &res).expect_err("no devices controller");
        assert_eq!(
            err,
            "cgroup devices is required to fulfill the request, but is not supported by this system"
        );
    }
}
