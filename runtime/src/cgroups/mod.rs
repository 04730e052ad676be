//! Container cgroups through `libcgroups`, on cgroup v1, hybrid and v2 nodes.
//!
//! libcgroups applies resource limits and freezes (it knows the per-file quirks: v2 weight and
//! swap conversions, the rarer v1 controllers). This module adds what it lacks for bungeo:
//! creating the cgroup up front (v1 cpuset inheritance, v2 controller delegation), letting a
//! container's first process join it without the cost of moving a process (`CgroupJoin`),
//! hybrid nodes where hugetlb lives only in the cgroup2 hierarchy (libcgroups' v1 manager
//! would refuse hugepage limits there), the v1 limits every container has written directly
//! (building libcgroups' v1 manager costs about a millisecond, see `v1_limits`), and removal,
//! process listing, signalling and stats read directly from the cgroup files so they work
//! with whatever controllers a node has. cgroup v2 has no devices controller: there the
//! device rules are folded as v1 folds them and enforced by an eBPF program attached to the
//! cgroup (`device_policy`, `device_bpf`), which libcgroups does only when built with libbpf.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use libcgroups::common::{CgroupManager, ControllerOpt, FreezerState};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxResources, LinuxResourcesBuilder};

use crate::error::{Error, Result};

mod device_bpf;
mod device_policy;
mod hierarchy;
mod join;
mod stats;
mod tree;
mod v1_limits;

pub use hierarchy::{Hierarchy, Layout, cgroupfs_path, systemd_path};
pub(crate) use join::CgroupJoin;
pub use stats::{CgroupStats, CpuStats, HugetlbStats, MemoryStats, PidsStats};

/// Which component names and creates cgroups, as kubelet's `cgroupDriver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// bungeo writes the cgroup filesystem itself; `cgroupsPath` is a path like
    /// `/kubepods/burstable/pod<uid>/<container>`.
    Cgroupfs,
    /// systemd creates a scope per container; `cgroupsPath` is `slice:prefix:name`.
    Systemd,
}

/// Where systemd, when it is the init system, keeps its runtime state.
const SYSTEMD_RUN_DIR: &str = "/run/systemd/system";

/// How long libcgroups' systemd manager waits for a process to show up in its new scope.
const SYSTEMD_SCOPE_TIMEOUT: Duration = Duration::from_secs(5);

/// How this node's cgroups are mounted.
pub fn detect() -> Result<Layout> {
    Ok(Hierarchy::detect()?.layout)
}

fn unified_root(hierarchy: &Hierarchy) -> Result<&PathBuf> {
    hierarchy
        .unified
        .as_ref()
        .ok_or_else(|| Error::Cgroups("cgroup v2 layout without a cgroup2 mount".to_string()))
}

/// On a hybrid node: whether hugetlb is a cgroup2 controller and not a v1 one, so hugepage
/// limits go to the cgroup2 side.
fn hybrid_hugetlb(hierarchy: &Hierarchy) -> Result<bool> {
    Ok(!hierarchy.v1.contains_key("hugetlb")
        && hierarchy
            .unified_controllers()?
            .iter()
            .any(|c| c == "hugetlb"))
}

/// One container's (or pod's) cgroup, in every hierarchy the node has.
pub struct Cgroup {
    rel: PathBuf,
    backend: Backend,
}

enum Backend {
    V1 {
        /// Built on first use: its constructor re-reads the mount table per controller.
        manager: OnceLock<libcgroups::v1::manager::Manager>,
        /// Controller (or `name=...` hierarchy) → this cgroup's directory there.
        dirs: BTreeMap<String, PathBuf>,
        /// On hybrid nodes, this cgroup in the cgroup2 hierarchy.
        unified: Option<UnifiedSide>,
    },
    V2 {
        manager: libcgroups::v2::manager::Manager,
        dir: PathBuf,
    },
    Systemd {
        manager: Box<libcgroups::systemd::manager::Manager>,
        dir: PathBuf,
    },
}

/// The cgroup2 half of a cgroup on a hybrid node.
struct UnifiedSide {
    root: PathBuf,
    dir: PathBuf,
    /// hugetlb is a cgroup2 controller here and not a v1 one, so hugepage limits go here.
    hugetlb: bool,
}

fn cg_err<E: Display>(what: impl Display) -> impl FnOnce(E) -> Error {
    move |e| Error::Cgroups(format!("{what}: {e}"))
}

fn controller_opt(resources: &LinuxResources) -> ControllerOpt<'_> {
    ControllerOpt {
        resources,
        disable_oom_killer: resources
            .memory()
            .as_ref()
            .and_then(|m| m.disable_oom_killer())
            .unwrap_or(false),
        oom_score_adj: None,
        freezer_state: None,
    }
}

impl Cgroup {
    /// Opens the cgroup at `cgroups_path` (the OCI spec's `linux.cgroupsPath`), creating its
    /// directories when absent. An empty path means `/bungeo/<container_id>`.
    pub fn new(cgroups_path: &str, container_id: &str, driver: Driver) -> Result<Cgroup> {
        match driver {
            Driver::Cgroupfs => Cgroup::create(&Hierarchy::detect()?, cgroups_path, container_id),
            Driver::Systemd => {
                Cgroup::new_systemd(cgroups_path, container_id, Path::new(SYSTEMD_RUN_DIR))
            }
        }
    }

    /// Like [`Cgroup::new`] but creates nothing: for a container's existing cgroup (signals,
    /// updates, freezing, removal). Missing directories show up as errors of what uses them,
    /// and removal of a missing cgroup succeeds.
    pub fn open(cgroups_path: &str, container_id: &str, driver: Driver) -> Result<Cgroup> {
        let hierarchy = match driver {
            Driver::Cgroupfs => Hierarchy::detect()?,
            Driver::Systemd => {
                return Cgroup::new_systemd(cgroups_path, container_id, Path::new(SYSTEMD_RUN_DIR));
            }
        };
        let rel = cgroupfs_path(cgroups_path, container_id)?;
        match hierarchy.layout {
            Layout::V2 => Cgroup::v2(&hierarchy, rel),
            Layout::V1 | Layout::Hybrid => {
                let dirs = hierarchy
                    .v1
                    .iter()
                    .map(|(controller, mount)| (controller.clone(), mount.join(&rel)))
                    .collect();
                let unified = match (hierarchy.layout, &hierarchy.unified) {
                    (Layout::Hybrid, Some(root)) => Some(UnifiedSide {
                        root: root.clone(),
                        dir: root.join(&rel),
                        hugetlb: hybrid_hugetlb(&hierarchy)?,
                    }),
                    _ => None,
                };
                Ok(Cgroup::v1(rel, dirs, unified))
            }
        }
    }

    /// Like [`Cgroup::new`] with the cgroupfs driver, in the given hierarchy: any cgroup2
    /// mount for [`Hierarchy::v2`], or the node's own v1/hybrid hierarchy (libcgroups finds
    /// v1 mounts itself, so other v1 hierarchies are refused).
    pub fn new_in(hierarchy: &Hierarchy, cgroups_path: &str, container_id: &str) -> Result<Cgroup> {
        if hierarchy.layout != Layout::V2 && *hierarchy != Hierarchy::detect()? {
            return Err(Error::InvalidArgument(
                "cgroup v1 hierarchies other than the node's own are not supported".to_string(),
            ));
        }
        Cgroup::create(hierarchy, cgroups_path, container_id)
    }

    fn create(hierarchy: &Hierarchy, cgroups_path: &str, container_id: &str) -> Result<Cgroup> {
        let rel = cgroupfs_path(cgroups_path, container_id)?;
        match hierarchy.layout {
            Layout::V2 => {
                let root = unified_root(hierarchy)?;
                tree::create_delegated(root, &rel, &hierarchy.unified_controllers()?)?;
                Cgroup::v2(hierarchy, rel)
            }
            Layout::V1 | Layout::Hybrid => Cgroup::create_v1(hierarchy, rel),
        }
    }

    fn v2(hierarchy: &Hierarchy, rel: PathBuf) -> Result<Cgroup> {
        let root = unified_root(hierarchy)?;
        let manager = libcgroups::v2::manager::Manager::new(root.clone(), rel.clone())
            .map_err(cg_err(format!("cgroup v2 manager for {}", rel.display())))?;
        Ok(Cgroup {
            backend: Backend::V2 {
                manager,
                dir: root.join(&rel),
            },
            rel,
        })
    }

    fn v1(rel: PathBuf, dirs: BTreeMap<String, PathBuf>, unified: Option<UnifiedSide>) -> Cgroup {
        Cgroup {
            rel,
            backend: Backend::V1 {
                manager: OnceLock::new(),
                dirs,
                unified,
            },
        }
    }

    fn create_v1(hierarchy: &Hierarchy, rel: PathBuf) -> Result<Cgroup> {
        let mut dirs = BTreeMap::new();
        let mut unified = None;
        let created = (|| -> Result<()> {
            for (controller, mount) in &hierarchy.v1 {
                let dir = tree::create(mount, &rel)?;
                dirs.insert(controller.clone(), dir);
                if controller == "cpuset" {
                    tree::inherit_cpuset(mount, &rel)?;
                }
            }
            if let (Layout::Hybrid, Some(root)) = (hierarchy.layout, &hierarchy.unified) {
                let hugetlb = hybrid_hugetlb(hierarchy)?;
                let delegate = if hugetlb {
                    vec!["hugetlb".to_string()]
                } else {
                    Vec::new()
                };
                let dir = tree::create_delegated(root, &rel, &delegate)?;
                unified = Some(UnifiedSide {
                    root: root.clone(),
                    dir,
                    hugetlb,
                });
            }
            Ok(())
        })();
        if let Err(e) = created {
            for dir in dirs.values().chain(unified.as_ref().map(|u| &u.dir)) {
                let _ = tree::remove(dir);
            }
            return Err(e);
        }
        Ok(Cgroup::v1(rel, dirs, unified))
    }

    /// libcgroups' v1 manager for this cgroup, built the first time it is needed.
    fn v1_manager<'a>(
        &self,
        cell: &'a OnceLock<libcgroups::v1::manager::Manager>,
    ) -> Result<&'a libcgroups::v1::manager::Manager> {
        if let Some(m) = cell.get() {
            return Ok(m);
        }
        let m = libcgroups::v1::manager::Manager::new(&Path::new("/").join(&self.rel)).map_err(
            cg_err(format!("cgroup v1 manager for {}", self.rel.display())),
        )?;
        Ok(cell.get_or_init(|| m))
    }

    fn new_systemd(cgroups_path: &str, container_id: &str, run_dir: &Path) -> Result<Cgroup> {
        let running = std::fs::symlink_metadata(run_dir)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        if !running {
            return Err(Error::Unsupported(format!(
                "systemd cgroup driver requested but systemd is not running (no {})",
                run_dir.display()
            )));
        }
        let hierarchy = Hierarchy::detect()?;
        let root = match (&hierarchy.layout, &hierarchy.unified) {
            (Layout::V2, Some(root)) => root.clone(),
            (layout, _) => {
                return Err(Error::Unsupported(format!(
                    "the systemd cgroup driver needs cgroup v2; this node has {layout}: \
                     use the cgroupfs driver"
                )));
            }
        };
        let rel = systemd_path(cgroups_path)?;
        let manager = libcgroups::systemd::manager::Manager::new(
            root.clone(),
            PathBuf::from(cgroups_path),
            container_id.to_string(),
            true,
            SYSTEMD_SCOPE_TIMEOUT,
        )
        .map_err(cg_err(format!("systemd cgroup manager for {cgroups_path}")))?;
        Ok(Cgroup {
            backend: Backend::Systemd {
                manager: Box::new(manager),
                dir: root.join(&rel),
            },
            rel,
        })
    }

    /// The cgroup's path relative to the hierarchy roots.
    pub fn path(&self) -> &Path {
        &self.rel
    }

    /// Every directory of this cgroup (one per hierarchy).
    pub fn dirs(&self) -> Vec<PathBuf> {
        match &self.backend {
            Backend::V1 { dirs, unified, .. } => {
                let mut out: Vec<PathBuf> = dirs.values().cloned().collect();
                out.extend(unified.as_ref().map(|u| u.dir.clone()));
                out.sort();
                // Comounted controllers (cpu,cpuacct) share a directory.
                out.dedup();
                out
            }
            Backend::V2 { dir, .. } | Backend::Systemd { dir, .. } => vec![dir.clone()],
        }
    }

    /// What a child needs to join this cgroup by itself before it creates the container's
    /// process (`CgroupJoin`); `None` with the systemd driver, where [`Cgroup::add_task`]
    /// (systemd creating the scope) is the way in.
    pub(crate) fn child_join(&self) -> Result<Option<CgroupJoin>> {
        match &self.backend {
            Backend::V1 { dirs, unified, .. } => {
                let mut v1: Vec<PathBuf> = dirs.values().cloned().collect();
                v1.sort();
                // Comounted controllers (cpu,cpuacct) share a directory.
                v1.dedup();
                CgroupJoin::open(&v1, unified.as_ref().map(|u| u.dir.as_path())).map(Some)
            }
            Backend::V2 { dir, .. } => CgroupJoin::open(&[], Some(dir)).map(Some),
            Backend::Systemd { .. } => Ok(None),
        }
    }

    /// Moves process `pid` (and, as cgroups go, its future children) into this cgroup.
    pub fn add_task(&self, pid: i32) -> Result<()> {
        match &self.backend {
            Backend::V1 { .. } | Backend::V2 { .. } => {
                for dir in self.dirs() {
                    tree::add_pid(&dir, pid)?;
                }
                Ok(())
            }
            Backend::Systemd { manager, .. } => manager
                .add_task(nix029::unistd::Pid::from_raw(pid))
                .map_err(cg_err(format!(
                    "add process {pid} to {}",
                    self.rel.display()
                ))),
        }
    }

    /// Applies resource limits; also how UpdateContainerResources changes them.
    pub fn apply(&self, resources: &LinuxResources) -> Result<()> {
        let what = || format!("apply resources to cgroup {}", self.rel.display());
        match &self.backend {
            Backend::V1 {
                manager,
                dirs,
                unified,
            } => {
                if resources.unified().as_ref().is_some_and(|u| !u.is_empty()) {
                    return Err(Error::InvalidArgument(format!(
                        "unified (cgroup v2) resources for cgroup {} need a cgroup v2 node",
                        self.rel.display()
                    )));
                }
                let hugepages = resources.hugepage_limits().clone().unwrap_or_default();
                let mut v1_resources = resources.clone();
                if !hugepages.is_empty() && !dirs.contains_key("hugetlb") {
                    let Some(side) = unified.as_ref().filter(|u| u.hugetlb) else {
                        return Err(Error::Unsupported(format!(
                            "hugepage limits for cgroup {}: this node has no hugetlb controller",
                            self.rel.display()
                        )));
                    };
                    let only_hugepages = LinuxResourcesBuilder::default()
                        .hugepage_limits(hugepages)
                        .build()
                        .map_err(cg_err(what()))?;
                    libcgroups::v2::manager::Manager::new(side.root.clone(), self.rel.clone())
                        .and_then(|m| m.apply(&controller_opt(&only_hugepages)))
                        .map_err(cg_err(what()))?;
                    v1_resources.set_hugepage_limits(None);
                }
                if v1_limits::handles(&v1_resources) {
                    return v1_limits::apply(&v1_limits::Fs, dirs, &v1_resources)
                        .map_err(cg_err(what()));
                }
                self.v1_manager(manager)?
                    .apply(&controller_opt(&v1_resources))
                    .map_err(cg_err(what()))
            }
            Backend::V2 { manager, dir } => {
                // libcgroups (built without libbpf) leaves device rules alone on cgroup v2;
                // they are compiled and attached here, before any other limit, so a policy
                // that cannot be enforced fails the call with nothing else changed.
                if let Some(rules) = resources.devices().as_ref().filter(|d| !d.is_empty()) {
                    let policy = device_policy::DevicePolicy::for_container(rules)?;
                    device_bpf::install(dir, &policy)?;
                }
                manager
                    .apply(&controller_opt(resources))
                    .map_err(cg_err(what()))
            }
            Backend::Systemd { manager, .. } => manager
                .apply(&controller_opt(resources))
                .map_err(cg_err(what())),
        }
    }

    /// Current usage, from whatever controllers this cgroup has.
    pub fn stats(&self) -> Result<CgroupStats> {
        match &self.backend {
            Backend::V1 { dirs, unified, .. } => {
                let dir = |c: &str| dirs.get(c).map(PathBuf::as_path);
                Ok(CgroupStats {
                    cpu: stats::v1_cpu(dir("cpuacct"), dir("cpu"))?,
                    memory: dir("memory").map(stats::v1_memory).transpose()?.flatten(),
                    pids: dir("pids").map(stats::pids).transpose()?.flatten(),
                    hugetlb: match (dir("hugetlb"), unified) {
                        (Some(d), _) => stats::v1_hugetlb(d)?,
                        (None, Some(side)) => stats::v2_hugetlb(&side.dir)?,
                        (None, None) => Vec::new(),
                    },
                })
            }
            Backend::V2 { dir, .. } | Backend::Systemd { dir, .. } => Ok(CgroupStats {
                cpu: stats::v2_cpu(dir)?,
                memory: stats::v2_memory(dir)?,
                pids: stats::pids(dir)?,
                hugetlb: stats::v2_hugetlb(dir)?,
            }),
        }
    }

    /// The processes in this cgroup and its sub-cgroups.
    pub fn pids(&self) -> Result<Vec<i32>> {
        match &self.backend {
            Backend::V1 { dirs, .. } => {
                // Every process is in every v1 hierarchy; read one that containers always
                // have, preferring the freezer's, which kill_all relies on.
                let dir = ["freezer", "pids", "devices", "memory", "cpu"]
                    .iter()
                    .find_map(|c| dirs.get(*c))
                    .or_else(|| dirs.values().next())
                    .ok_or_else(|| {
                        Error::Cgroups(format!("cgroup {} has no directory", self.rel.display()))
                    })?;
                tree::pids(dir)
            }
            Backend::V2 { dir, .. } | Backend::Systemd { dir, .. } => tree::pids(dir),
        }
    }

    fn set_frozen(&self, state: FreezerState) -> Result<()> {
        let what = || format!("set cgroup {} to {state:?}", self.rel.display());
        match &self.backend {
            Backend::V1 { manager, .. } => self
                .v1_manager(manager)?
                .freeze(state)
                .map_err(cg_err(what())),
            Backend::V2 { manager, .. } => manager.freeze(state).map_err(cg_err(what())),
            Backend::Systemd { manager, .. } => manager.freeze(state).map_err(cg_err(what())),
        }
    }

    /// Stops every process in the cgroup until [`Cgroup::thaw`].
    pub fn freeze(&self) -> Result<()> {
        self.set_frozen(FreezerState::Frozen)
    }

    /// Lets frozen processes run again.
    pub fn thaw(&self) -> Result<()> {
        self.set_frozen(FreezerState::Thawed)
    }

    /// Sends `signal` to every process in the cgroup. The cgroup is frozen meanwhile so a
    /// process cannot fork away from the signal; where freezing fails the signal is sent
    /// anyway.
    pub fn kill_all(&self, signal: i32) -> Result<()> {
        let sig = Signal::try_from(signal)
            .map_err(|_| Error::InvalidArgument(format!("{signal} is not a signal number")))?;
        // Nothing to signal: do not freeze, which would recreate a removed v1 freezer cgroup.
        if self.pids()?.is_empty() {
            return Ok(());
        }
        let frozen = match self.freeze() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "signalling cgroup processes without freezing them");
                false
            }
        };
        let sent = (|| -> Result<()> {
            for pid in self.pids()? {
                match kill(Pid::from_raw(pid), sig) {
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(e) => {
                        return Err(Error::sys(
                            format!(
                                "kill process {pid} of cgroup {} with {sig}",
                                self.rel.display()
                            ),
                            e,
                        ));
                    }
                }
            }
            Ok(())
        })();
        if frozen {
            let thawed = self.thaw();
            sent?;
            thawed
        } else {
            sent
        }
    }

    /// Removes the cgroup's directories (and any sub-cgroups). Processes must have exited:
    /// a cgroup still busy after a short wait is an error naming them. Removing a removed
    /// cgroup is fine. Parent cgroups (pod, QoS class) are left alone.
    pub fn delete(&self) -> Result<()> {
        if let Backend::Systemd { manager, .. } = &self.backend {
            manager.remove().map_err(cg_err(format!(
                "remove systemd scope of {}",
                self.rel.display()
            )))?;
        }
        let mut first_error = None;
        for dir in self.dirs() {
            if let Err(e) = tree::remove(&dir) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxHugepageLimitBuilder,
        LinuxMemoryBuilder, LinuxPidsBuilder,
    };
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Child, Command};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    const MIB: i64 = 1024 * 1024;

    /// A unique parent cgroup for one test, removed (processes killed first) on drop.
    struct TestParent {
        hierarchy: Hierarchy,
        rel: PathBuf,
    }

    impl TestParent {
        fn new(hierarchy: Hierarchy, name: &str) -> TestParent {
            static N: AtomicUsize = AtomicUsize::new(0);
            let rel = PathBuf::from(format!(
                "bungeo-test-{}-{}-{name}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            TestParent { hierarchy, rel }
        }

        fn child_path(&self) -> String {
            format!("/{}/ctr", self.rel.display())
        }
    }

    impl Drop for TestParent {
        fn drop(&mut self) {
            let roots: Vec<&PathBuf> = self
                .hierarchy
                .v1
                .values()
                .chain(self.hierarchy.unified.iter())
                .collect();
            for root in &roots {
                let dir = root.join(&self.rel);
                let _ = std::fs::write(dir.join("ctr/freezer.state"), "THAWED");
                let _ = std::fs::write(dir.join("ctr/cgroup.freeze"), "0");
                for pid in tree::pids(&dir).unwrap_or_default() {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            for root in roots {
                let _ = tree::remove(&root.join(&self.rel));
            }
        }
    }

    /// A CPU-burning shell, killed and reaped on drop. Like a container's init it waits to be
    /// released before it execs, so its memory is charged to the cgroup it was moved into
    /// (cgroup v1 does not move charges with a process).
    struct Busy(Child);

    impl Busy {
        fn start() -> Busy {
            Busy(
                Command::new("sh")
                    .args(["-c", "read _ && exec sh -c 'while :; do :; done'"])
                    .stdin(std::process::Stdio::piped())
                    .spawn()
                    .expect("spawn busy loop"),
            )
        }

        fn release(&mut self) {
            use std::io::Write;
            let mut stdin = self.0.stdin.take().expect("stdin");
            stdin.write_all(b"go\n").expect("release busy loop");
        }

        fn pid(&self) -> i32 {
            self.0.id() as i32
        }

        /// utime + stime in clock ticks.
        fn cpu_ticks(&self) -> u64 {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .expect("comm")
                .1
                .split_whitespace()
                .collect();
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
        }

        fn wait(mut self) -> std::process::ExitStatus {
            self.0.wait().expect("wait for busy loop")
        }

        /// Whether the process gets CPU time within `how_long` (it is polled, so a loaded
        /// machine only makes a running process slower to show, never a false "frozen").
        fn runs_during(&self, how_long: Duration) -> bool {
            let before = self.cpu_ticks();
            let deadline = Instant::now() + how_long;
            while Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
                if self.cpu_ticks() > before {
                    return true;
                }
            }
            self.cpu_ticks() > before
        }
    }

    impl Drop for Busy {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn read_file(dir: &Path, file: &str) -> String {
        std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("read {}/{file}: {e}", dir.display()))
            .trim()
            .to_string()
    }

    fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn has_2mb_hugepages() -> bool {
        Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB").exists()
    }

    fn hugepage_limit(bytes: i64) -> Vec<oci_spec::runtime::LinuxHugepageLimit> {
        vec![
            LinuxHugepageLimitBuilder::default()
                .page_size("2MB")
                .limit(bytes)
                .build()
                .expect("hugepage limit"),
        ]
    }

    #[test]
    fn systemd_driver_without_systemd_is_unsupported() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let missing = tmp.path().join("run/systemd/system");
        let err = Cgroup::new_systemd("system.slice:bungeo:abc", "abc", &missing)
            .err()
            .expect("no systemd");
        assert!(matches!(err, Error::Unsupported(_)), "{err}");
        assert!(
            err.to_string()
                .starts_with("systemd cgroup driver requested but systemd is not running (no "),
            "{err}"
        );
        if !Path::new(SYSTEMD_RUN_DIR).exists() {
            let err = Cgroup::new("system.slice:bungeo:abc", "abc", Driver::Systemd)
                .err()
                .expect("no systemd here");
            assert_eq!(
                err.to_string(),
                "systemd cgroup driver requested but systemd is not running (no /run/systemd/system)"
            );
        }
    }

    #[test]
    fn cgroups_can_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Cgroup>();
    }

    #[test]
    fn foreign_v1_hierarchies_are_refused() {
        let mut fake = Hierarchy::detect().expect("detect");
        fake.layout = Layout::V1;
        fake.v1
            .insert("memory".into(), PathBuf::from("/tmp/not-a-cgroup"));
        fake.unified = None;
        let err = Cgroup::new_in(&fake, "/x", "x").err().expect("refused");
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    }

    /// The whole lifecycle on this node's own hierarchy (hybrid here, v2 on modern nodes).
    #[test]
    fn lifecycle_on_the_nodes_hierarchy() {
        let hierarchy = Hierarchy::detect().expect("detect");
        let layout = hierarchy.layout;
        let parent = TestParent::new(hierarchy.clone(), "node");
        let cg = Cgroup::new(&parent.child_path(), "ctr", Driver::Cgroupfs).expect("create");
        let dirs = cg.dirs();
        assert!(!dirs.is_empty());
        for dir in &dirs {
            assert!(dir.is_dir(), "{} not created", dir.display());
        }

        let hugepages = has_2mb_hugepages()
            && match layout {
                Layout::V2 => hierarchy
                    .unified_controllers()
                    .expect("controllers")
                    .contains(&"hugetlb".to_string()),
                _ => hierarchy.v1.contains_key("hugetlb") || hierarchy.unified.is_some(),
            };
        let mut resources = LinuxResourcesBuilder::default()
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(512u64)
                    .quota(50_000i64)
                    .period(100_000u64)
                    .cpus("0")
                    .mems("0")
                    .build()
                    .expect("cpu"),
            )
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64 * MIB)
                    .swap(128 * MIB)
                    .build()
                    .expect("memory"),
            )
            .pids(
                LinuxPidsBuilder::default()
                    .limit(32i64)
                    .build()
                    .expect("pids"),
            )
            // What kubelet sends: deny everything, then allow what the container may use.
            .devices(vec![
                LinuxDeviceCgroupBuilder::default()
                    .allow(false)
                    .access("rwm")
                    .build()
                    .expect("deny all"),
                LinuxDeviceCgroupBuilder::default()
                    .allow(true)
                    .typ(LinuxDeviceType::C)
                    .major(1i64)
                    .minor(3i64)
                    .access("rwm")
                    .build()
                    .expect("allow /dev/null"),
            ])
            .build()
            .expect("resources");
        if hugepages {
            resources.set_hugepage_limits(Some(hugepage_limit(4 * MIB)));
        }
        cg.apply(&resources).expect("apply");

        let at = |controller: &str| -> PathBuf {
            match layout {
                Layout::V2 => dirs[0].clone(),
                _ => hierarchy.v1[controller].join(cg.path()),
            }
        };
        match layout {
            Layout::V2 => {
                let d = &dirs[0];
                assert_eq!(read_file(d, "cpu.max"), "50000 100000");
                assert_eq!(read_file(d, "cpuset.cpus"), "0");
                assert_eq!(read_file(d, "memory.max"), (64 * MIB).to_string());
                assert_eq!(read_file(d, "memory.swap.max"), (64 * MIB).to_string());
                assert_eq!(read_file(d, "pids.max"), "32");
            }
            _ => {
                assert_eq!(read_file(&at("cpu"), "cpu.shares"), "512");
                assert_eq!(read_file(&at("cpu"), "cpu.cfs_quota_us"), "50000");
                assert_eq!(read_file(&at("cpu"), "cpu.cfs_period_us"), "100000");
                assert_eq!(read_file(&at("cpuset"), "cpuset.cpus"), "0");
                assert_eq!(read_file(&at("cpuset"), "cpuset.mems"), "0");
                assert_eq!(
                    read_file(&at("memory"), "memory.limit_in_bytes"),
                    (64 * MIB).to_string()
                );
                assert_eq!(
                    read_file(&at("memory"), "memory.memsw.limit_in_bytes"),
                    (128 * MIB).to_string()
                );
                assert_eq!(read_file(&at("pids"), "pids.max"), "32");
                let devices = read_file(&at("devices"), "devices.list");
                assert!(!devices.contains("a *:* rwm"), "{devices}");
                assert!(devices.lines().any(|l| l == "c 1:3 rwm"), "{devices}");
                assert!(!devices.lines().any(|l| l.starts_with("b 8:")), "{devices}");
            }
        }
        if hugepages {
            let dir = match (layout, hierarchy.v1.contains_key("hugetlb")) {
                (Layout::V2, _) => dirs[0].clone(),
                (_, true) => at("hugetlb"),
                (_, false) => hierarchy.unified.as_ref().expect("unified").join(cg.path()),
            };
            let file = if layout != Layout::V2 && hierarchy.v1.contains_key("hugetlb") {
                "hugetlb.2MB.limit_in_bytes"
            } else {
                "hugetlb.2MB.max"
            };
            assert_eq!(read_file(&dir, file), (4 * MIB).to_string());
        }

        let mut busy = Busy::start();
        cg.add_task(busy.pid()).expect("add task");
        busy.release();
        assert_eq!(cg.pids().expect("pids"), [busy.pid()]);
        let own_cgroups =
            std::fs::read_to_string(format!("/proc/{}/cgroup", busy.pid())).expect("cgroup");
        let expected = format!("/{}", cg.path().display());
        for line in own_cgroups.lines() {
            assert!(line.ends_with(&expected), "{line} is not {expected}");
        }
        assert!(busy.runs_during(Duration::from_secs(10)));

        let stats = cg.stats().expect("stats");
        let cpu = stats.cpu.expect("cpu stats");
        assert!(
            cpu.usage_ns > 0 && cpu.user_ns + cpu.system_ns > 0,
            "{cpu:?}"
        );
        let memory = stats.memory.expect("memory stats");
        assert!(memory.usage_bytes > 0, "{memory:?}");
        assert_eq!(memory.limit_bytes, Some((64 * MIB) as u64));
        assert!(memory.working_set_bytes <= memory.usage_bytes);
        assert_eq!(
            stats.pids,
            Some(PidsStats {
                current: 1,
                limit: Some(32)
            })
        );
        if hugepages {
            let two_mb = stats
                .hugetlb
                .iter()
                .find(|h| h.page_size == "2MB")
                .expect("2MB hugetlb stats");
            assert_eq!(two_mb.limit_bytes, Some((4 * MIB) as u64));
        }

        cg.freeze().expect("freeze");
        match layout {
            Layout::V2 => assert!(read_file(&dirs[0], "cgroup.events").contains("frozen 1")),
            _ => assert_eq!(read_file(&at("freezer"), "freezer.state"), "FROZEN"),
        }
        assert!(
            !busy.runs_during(Duration::from_millis(300)),
            "frozen process ran"
        );
        cg.thaw().expect("thaw");
        assert!(
            busy.runs_during(Duration::from_secs(10)),
            "thawed process did not run"
        );

        // UpdateContainerResources: only the memory limit changes.
        let update = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(32 * MIB)
                    .swap(128 * MIB)
                    .build()
                    .expect("memory"),
            )
            .build()
            .expect("resources");
        cg.apply(&update).expect("update");
        assert_eq!(
            cg.stats()
                .expect("stats")
                .memory
                .expect("memory")
                .limit_bytes,
            Some((32 * MIB) as u64)
        );

        cg.kill_all(libc::SIGKILL).expect("kill_all");
        let status = busy.wait();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        wait_until("an empty cgroup", || {
            cg.pids().map(|p| p.is_empty()).unwrap_or(false)
        });

        cg.delete().expect("delete");
        for dir in &dirs {
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
        cg.delete().expect("deleting twice is fine");
    }

    /// The cgroup v2 code paths on a cgroup2 hierarchy. On this hybrid node the cgroup2
    /// hierarchy holds only hugetlb, so cpu, memory and pids limits cannot be tested here;
    /// creation, delegation, processes, freezing, signalling, cpu.stat and hugetlb can.
    #[test]
    fn v2_paths_on_the_cgroup2_hierarchy() {
        let node = Hierarchy::detect().expect("detect");
        let Some(root) = node.unified.clone() else {
            crate::test_skip::skip("cgroup2", "no cgroup2 hierarchy on this node");
            return;
        };
        let hierarchy = Hierarchy::v2(root);
        let controllers = hierarchy.unified_controllers().expect("controllers");
        let parent = TestParent::new(hierarchy.clone(), "v2");
        let cg = Cgroup::new_in(&hierarchy, &parent.child_path(), "ctr").expect("create");
        let dirs = cg.dirs();
        assert_eq!(dirs.len(), 1);
        let dir = &dirs[0];
        assert!(dir.is_dir());
        let parent_control = read_file(dir.parent().expect("parent"), "cgroup.subtree_control");
        for c in &controllers {
            assert!(
                parent_control.contains(c.as_str()),
                "{c} not delegated: {parent_control}"
            );
        }

        let hugepages = has_2mb_hugepages() && controllers.iter().any(|c| c == "hugetlb");
        if hugepages {
            let res = LinuxResourcesBuilder::default()
                .hugepage_limits(hugepage_limit(8 * MIB))
                .build()
                .expect("resources");
            cg.apply(&res).expect("apply hugetlb");
            assert_eq!(read_file(dir, "hugetlb.2MB.max"), (8 * MIB).to_string());
        }
        if !controllers.iter().any(|c| c == "memory") {
            let res = LinuxResourcesBuilder::default()
                .memory(
                    LinuxMemoryBuilder::default()
                        .limit(64 * MIB)
                        .build()
                        .expect("memory"),
                )
                .build()
                .expect("resources");
            let err = cg.apply(&res).expect_err("no memory controller");
            assert!(err.to_string().contains("memory.max"), "{err}");
        }

        let mut busy = Busy::start();
        cg.add_task(busy.pid()).expect("add task");
        busy.release();
        assert_eq!(cg.pids().expect("pids"), [busy.pid()]);
        assert!(busy.runs_during(Duration::from_secs(10)));
        let stats = cg.stats().expect("stats");
        assert!(stats.cpu.expect("cpu.stat").usage_ns > 0);
        if !controllers.iter().any(|c| c == "memory") {
            assert_eq!(stats.memory, None);
        }
        if hugepages {
            let two_mb = stats
                .hugetlb
                .iter()
                .find(|h| h.page_size == "2MB")
                .expect("2MB");
            assert_eq!(two_mb.limit_bytes, Some((8 * MIB) as u64));
        }

        cg.freeze().expect("freeze");
        assert!(read_file(dir, "cgroup.events").contains("frozen 1"));
        assert!(
            !busy.runs_during(Duration::from_millis(300)),
            "frozen process ran"
        );
        cg.thaw().expect("thaw");
        assert!(
            busy.runs_during(Duration::from_secs(10)),
            "thawed process did not run"
        );

        cg.kill_all(libc::SIGTERM).expect("kill_all");
        let status = busy.wait();
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        wait_until("an empty cgroup", || {
            cg.pids().map(|p| p.is_empty()).unwrap_or(false)
        });
        cg.delete().expect("delete");
        assert!(!dir.exists());
    }

    /// Opens each device node (and makes one) from a process inside `cg`; one line per
    /// attempt: the path, then `ok` or the shell's error.
    fn probe_devices(cg: &Cgroup, scratch: &Path, block: (u32, u32)) -> String {
        use std::io::{Read, Write};
        let script = r#"read _
try() { if out=$( (eval "$1") 2>&1 ); then echo "$2 ok"; else echo "$2 $out"; fi; }
try 'exec 3</dev/null' null
try 'exec 3</dev/kmsg' kmsg
try "mknod $0/blk b $1 $2" mknod
try "exec 3<$0/blk" block
rm -f "$0/blk""#;
        let mut child = Command::new("sh")
            .args(["-c", script])
            .arg(scratch)
            .args([block.0.to_string(), block.1.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn probe");
        cg.add_task(child.id() as i32).expect("add probe");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"go\n")
            .expect("release probe");
        let mut out = String::new();
        child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut out)
            .expect("probe output");
        assert!(child.wait().expect("wait probe").success(), "{out}");
        out
    }

    fn verdict<'a>(out: &'a str, what: &str) -> &'a str {
        out.lines()
            .find_map(|l| l.strip_prefix(what)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {what} line in {out}"))
    }

    /// cgroup v2 has no devices files: the rules are enforced by the eBPF program attached to
    /// the cgroup, and must allow and deny what the v1 controller would.
    #[test]
    fn v2_device_rules_are_enforced_with_ebpf() {
        let node = Hierarchy::detect().expect("detect");
        let Some(root) = node.unified.clone() else {
            crate::test_skip::skip("cgroup2", "no cgroup2 hierarchy on this node");
            return;
        };
        // A block device of this machine that opens (an empty CD drive answers ENOMEDIUM
        // whatever the cgroup says), opened read-only through a node made in scratch.
        let scratch = tempfile::tempdir().expect("tempdir");
        let opens = |(major, minor): (u32, u32)| {
            let node = scratch.path().join("candidate");
            let _ = std::fs::remove_file(&node);
            nix::sys::stat::mknod(
                &node,
                nix::sys::stat::SFlag::S_IFBLK,
                nix::sys::stat::Mode::from_bits_truncate(0o600),
                nix::sys::stat::makedev(u64::from(major), u64::from(minor)),
            )
            .is_ok()
                && std::fs::File::open(&node).is_ok()
        };
        let block = std::fs::read_dir("/sys/dev/block")
            .expect("/sys/dev/block")
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                let (major, minor) = name.split_once(':')?;
                Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?))
            })
            .find(|d| opens(*d))
            .expect("a block device that opens");
        let _ = std::fs::remove_file(scratch.path().join("candidate"));
        let hierarchy = Hierarchy::v2(root);
        let parent = TestParent::new(hierarchy.clone(), "v2dev");
        let cg = Cgroup::new_in(&hierarchy, &parent.child_path(), "ctr").expect("create");
        let dir = cg.dirs().remove(0);

        let unrestricted = probe_devices(&cg, scratch.path(), block);
        assert_eq!(verdict(&unrestricted, "kmsg"), "ok", "{unrestricted}");
        assert_eq!(verdict(&unrestricted, "block"), "ok", "{unrestricted}");

        let deny_all = LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .expect("deny all");
        // Applies the rules (always as one attached program), then probes from inside.
        let enforce = |rules: Vec<oci_spec::runtime::LinuxDeviceCgroup>| {
            let resources = LinuxResourcesBuilder::default()
                .devices(rules)
                .build()
                .expect("resources");
            cg.apply(&resources).expect("apply device rules");
            assert_eq!(device_bpf::attached(&dir).expect("query"), 1);
            probe_devices(&cg, scratch.path(), block)
        };
        let out = enforce(vec![deny_all.clone()]);
        assert_eq!(verdict(&out, "null"), "ok", "{out}");
        assert_eq!(verdict(&out, "mknod"), "ok", "mknod is allowed: {out}");
        for denied in ["kmsg", "block"] {
            assert!(
                verdict(&out, denied).contains("Operation not permitted"),
                "{denied}: {out}"
            );
        }

        // An update replaces the program: still one attached, and the new rules hold.
        let allow = |typ, major: u32, minor: u32| {
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(typ)
                .major(i64::from(major))
                .minor(i64::from(minor))
                .access("r")
                .build()
                .expect("allow rule")
        };
        let out = enforce(vec![
            deny_all,
            allow(LinuxDeviceType::C, 1, 11),
            allow(LinuxDeviceType::B, block.0, block.1),
        ]);
        assert_eq!(verdict(&out, "kmsg"), "ok", "{out}");
        assert_eq!(verdict(&out, "block"), "ok", "{out}");

        // Limits without device rules leave the policy alone.
        cg.apply(&LinuxResources::default()).expect("apply nothing");
        assert_eq!(device_bpf::attached(&dir).expect("query"), 1);

        // A rule the controller has no word for fails the call and attaches nothing new.
        let fifo = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::P)
            .access("r")
            .build()
            .expect("fifo rule");
        let bad = LinuxResourcesBuilder::default()
            .devices(vec![fifo])
            .build()
            .expect("resources");
        let err = cg.apply(&bad).expect_err("type p refused");
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert_eq!(device_bpf::attached(&dir).expect("query"), 1);

        cg.delete().expect("delete");
        assert!(!dir.exists());
    }

    #[test]
    fn hybrid_has_no_v1_hugetlb_but_routes_limits_to_cgroup2() {
        let node = Hierarchy::detect().expect("detect");
        if node.layout != Layout::Hybrid || node.v1.contains_key("hugetlb") || !has_2mb_hugepages()
        {
            crate::test_skip::skip(
                "hybrid-hugetlb",
                "not a hybrid node with 2 MiB hugepages and no v1 hugetlb",
            );
            return;
        }
        let parent = TestParent::new(node.clone(), "huge");
        let cg = Cgroup::new(&parent.child_path(), "ctr", Driver::Cgroupfs).expect("create");
        let res = LinuxResourcesBuilder::default()
            .hugepage_limits(hugepage_limit(2 * MIB))
            .pids(
                LinuxPidsBuilder::default()
                    .limit(-1i64)
                    .build()
                    .expect("pids"),
            )
            .build()
            .expect("resources");
        cg.apply(&res).expect("apply");
        let unified = node.unified.as_ref().expect("unified").join(cg.path());
        assert_eq!(
            read_file(&unified, "hugetlb.2MB.max"),
            (2 * MIB).to_string()
        );
        assert_eq!(
            read_file(&node.v1["pids"].join(cg.path()), "pids.max"),
            "max"
        );
        cg.delete().expect("delete");
    }
}
