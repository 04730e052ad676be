//! OCI bundles for runtime tests: a rootfs made of Debian's static busybox and a `config.json`
//! built with `oci-spec`, starting from what `runc spec` writes and changed through knobs.
//!
//! Every bundle lives in its own temporary directory and gets a cgroups path of its own
//! (`/bungeo-test/<unique>`); dropping the bundle kills what is left in those cgroups, removes
//! them, unmounts anything left below the bundle and deletes the directory.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use oci_spec::runtime::{
    Arch, Capabilities, Capability, LinuxBuilder, LinuxCapabilities, LinuxCpuBuilder,
    LinuxDeviceCgroupBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompBuilder,
    LinuxSyscallBuilder, Mount, MountBuilder, PosixRlimit, PosixRlimitBuilder, PosixRlimitType,
    Process, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder, get_default_mounts,
};

use crate::mounts::unmount_under;

/// Where the busybox binary comes from (Debian's `busybox-static`).
pub const BUSYBOX: &str = "/bin/busybox";

/// The first component of every test bundle's cgroups path.
pub const CGROUP_PARENT: &str = "bungeo-test";

/// Where the cgroup hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Applets linked into `/bin`. Busybox's shell runs these in-process (no exec), so a test that
/// needs a real `execve` must name `/bin/busybox <applet>` itself.
pub const APPLETS: &[&str] = &[
    "sh", "id", "cat", "ls", "hostname", "sleep", "true", "false", "echo", "mount", "umount",
    "grep", "wc", "head", "tail", "touch", "mkdir", "rmdir", "rm", "stat", "ps", "sysctl",
    "readlink", "sed", "tr", "cut", "sort", "env", "pwd", "kill", "printf", "test", "uname", "cp",
    "ln", "chmod", "dd", "seq", "nproc", "whoami", "df",
];

/// `/etc/passwd` of every bundle: root and an unprivileged `app` (1000:1000).
pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          app:x:1000:1000:app:/home/app:/bin/sh\n";

/// `/etc/group` of every bundle: `extra` (2000) lists `app` as a member.
pub const GROUP: &str = "root:x:0:\napp:x:1000:\nextra:x:2000:app\n";

/// The capabilities `runc spec` grants.
pub const DEFAULT_CAPS: &[Capability] = &[
    Capability::AuditWrite,
    Capability::Kill,
    Capability::NetBindService,
];

/// Capability sets of the container process; each `None` set is left out of the spec.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    /// Bounding set.
    pub bounding: Option<Vec<Capability>>,
    /// Effective set.
    pub effective: Option<Vec<Capability>>,
    /// Permitted set.
    pub permitted: Option<Vec<Capability>>,
    /// Inheritable set.
    pub inheritable: Option<Vec<Capability>>,
    /// Ambient set.
    pub ambient: Option<Vec<Capability>>,
}

impl Caps {
    /// What `runc spec` writes: the defaults in every set except inheritable.
    pub fn runc_default() -> Self {
        let d = Some(DEFAULT_CAPS.to_vec());
        Self {
            bounding: d.clone(),
            effective: d.clone(),
            permitted: d.clone(),
            inheritable: None,
            ambient: d,
        }
    }

    /// `caps` in all five sets, so a non-root process keeps them across exec.
    pub fn all_sets(caps: &[Capability]) -> Self {
        let d = Some(caps.to_vec());
        Self {
            bounding: d.clone(),
            effective: d.clone(),
            permitted: d.clone(),
            inheritable: d.clone(),
            ambient: d,
        }
    }
}

/// Cgroup limits; each `None` is left out of the spec.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// `memory.limit` in bytes.
    pub memory_limit: Option<i64>,
    /// `cpu.quota` in microseconds per period.
    pub cpu_quota: Option<i64>,
    /// `cpu.period` in microseconds.
    pub cpu_period: Option<u64>,
    /// `cpu.shares`.
    pub cpu_shares: Option<u64>,
    /// `pids.limit`.
    pub pids_limit: Option<i64>,
}

/// The knobs of a test bundle. [`Default`] is what `runc spec` writes, with `sh` as command.
#[derive(Clone, Debug)]
pub struct BundleSpec {
    /// `process.args`.
    pub args: Vec<String>,
    /// `process.env`.
    pub env: Vec<String>,
    /// `process.cwd`.
    pub cwd: String,
    /// `process.user.uid`.
    pub uid: u32,
    /// `process.user.gid`.
    pub gid: u32,
    /// `process.user.additionalGids` (left out when empty).
    pub additional_gids: Vec<u32>,
    /// `hostname`.
    pub hostname: String,
    /// `root.readonly`.
    pub readonly_root: bool,
    /// `process.capabilities`.
    pub caps: Caps,
    /// `process.noNewPrivileges`.
    pub no_new_privileges: bool,
    /// `linux.seccomp`.
    pub seccomp: Option<LinuxSeccomp>,
    /// `process.rlimits`.
    pub rlimits: Vec<PosixRlimit>,
    /// `linux.sysctl`.
    pub sysctls: BTreeMap<String, String>,
    /// Mounts after the default ones (`/proc`, `/dev`, `/dev/pts`, `/dev/shm`, `/dev/mqueue`,
    /// `/sys`, `/sys/fs/cgroup`).
    pub mounts: Vec<Mount>,
    /// `linux.maskedPaths`.
    pub masked_paths: Vec<String>,
    /// `linux.readonlyPaths`.
    pub readonly_paths: Vec<String>,
    /// `linux.rootfsPropagation`.
    pub rootfs_propagation: Option<String>,
    /// `linux.resources` beyond the default device rule (deny all).
    pub resources: Resources,
    /// `linux.namespaces`, all new (no paths).
    pub namespaces: Vec<LinuxNamespaceType>,
}

impl Default for BundleSpec {
    fn default() -> Self {
        Self {
            args: vec!["sh".to_string()],
            env: vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
                "TERM=xterm".to_string(),
            ],
            cwd: "/".to_string(),
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            hostname: "runc".to_string(),
            readonly_root: true,
            caps: Caps::runc_default(),
            no_new_privileges: true,
            seccomp: None,
            rlimits: vec![rlimit(PosixRlimitType::RlimitNofile, 1024, 1024)],
            sysctls: BTreeMap::new(),
            mounts: Vec::new(),
            masked_paths: [
                "/proc/acpi",
                "/proc/asound",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/sys/firmware",
                "/proc/scsi",
            ]
            .map(String::from)
            .to_vec(),
            readonly_paths: [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ]
            .map(String::from)
            .to_vec(),
            rootfs_propagation: None,
            resources: Resources::default(),
            namespaces: vec![
                LinuxNamespaceType::Pid,
                LinuxNamespaceType::Network,
                LinuxNamespaceType::Ipc,
                LinuxNamespaceType::Uts,
                LinuxNamespaceType::Mount,
            ],
        }
    }
}

impl BundleSpec {
    /// The defaults with `args` as command.
    pub fn command(args: &[&str]) -> Self {
        Self {
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Self::default()
        }
    }

    /// The defaults with `/bin/sh -c script` as command.
    pub fn sh(script: &str) -> Self {
        Self::command(&["/bin/sh", "-c", script])
    }

    /// The `process` section.
    pub fn process(&self) -> Result<Process> {
        let mut user = UserBuilder::default().uid(self.uid).gid(self.gid);
        if !self.additional_gids.is_empty() {
            user = user.additional_gids(self.additional_gids.clone());
        }
        let set = |v: &Option<Vec<Capability>>| -> Option<Capabilities> {
            v.as_ref().map(|c| c.iter().copied().collect())
        };
        // The builder starts from oci-spec's defaults (every set filled): set all five.
        let mut caps = LinuxCapabilities::default();
        caps.set_bounding(set(&self.caps.bounding));
        caps.set_effective(set(&self.caps.effective));
        caps.set_permitted(set(&self.caps.permitted));
        caps.set_inheritable(set(&self.caps.inheritable));
        caps.set_ambient(set(&self.caps.ambient));
        let mut process = ProcessBuilder::default()
            .terminal(false)
            .user(user.build().context("process.user")?)
            .args(self.args.clone())
            .env(self.env.clone())
            .cwd(&self.cwd)
            .capabilities(caps)
            .no_new_privileges(self.no_new_privileges);
        if !self.rlimits.is_empty() {
            process = process.rlimits(self.rlimits.clone());
        }
        process.build().context("process")
    }

    /// The whole spec, with `cgroups_path` as `linux.cgroupsPath`.
    pub fn to_spec(&self, cgroups_path: &str) -> Result<Spec> {
        let namespaces = self
            .namespaces
            .iter()
            .map(|t| LinuxNamespaceBuilder::default().typ(*t).build())
            .collect::<std::result::Result<Vec<_>, _>>()
            .context("linux.namespaces")?;
        let mut resources = LinuxResourcesBuilder::default().devices(vec![
            LinuxDeviceCgroupBuilder::default()
                .allow(false)
                .access("rwm")
                .build()
                .context("linux.resources.devices")?,
        ]);
        let r = &self.resources;
        if let Some(limit) = r.memory_limit {
            resources = resources.memory(LinuxMemoryBuilder::default().limit(limit).build()?);
        }
        if r.cpu_quota.is_some() || r.cpu_period.is_some() || r.cpu_shares.is_some() {
            let mut cpu = LinuxCpuBuilder::default();
            if let Some(q) = r.cpu_quota {
                cpu = cpu.quota(q);
            }
            if let Some(p) = r.cpu_period {
                cpu = cpu.period(p);
            }
            if let Some(s) = r.cpu_shares {
                cpu = cpu.shares(s);
            }
            resources = resources.cpu(cpu.build()?);
        }
        if let Some(limit) = r.pids_limit {
            resources = resources.pids(LinuxPidsBuilder::default().limit(limit).build()?);
        }
        let mut linux = LinuxBuilder::default()
            .namespaces(namespaces)
            .resources(resources.build().context("linux.resources")?)
            .cgroups_path(PathBuf::from(cgroups_path))
            .masked_paths(self.masked_paths.clone())
            .readonly_paths(self.readonly_paths.clone());
        if !self.sysctls.is_empty() {
            linux = linux.sysctl(
                self.sysctls
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<std::collections::HashMap<_, _>>(),
            );
        }
        if let Some(seccomp) = &self.seccomp {
            linux = linux.seccomp(seccomp.clone());
        }
        if let Some(p) = &self.rootfs_propagation {
            linux = linux.rootfs_propagation(p);
        }
        let mut mounts = get_default_mounts();
        mounts.extend(self.mounts.iter().cloned());
        SpecBuilder::default()
            .version("1.0.2-dev")
            .root(
                RootBuilder::default()
                    .path("rootfs")
                    .readonly(self.readonly_root)
                    .build()
                    .context("root")?,
            )
            .process(self.process()?)
            .hostname(&self.hostname)
            .mounts(mounts)
            .linux(linux.build().context("linux")?)
            .build()
            .context("spec")
    }
}

/// An rlimit entry.
pub fn rlimit(typ: PosixRlimitType, soft: u64, hard: u64) -> PosixRlimit {
    // Infallible: every field has a value and the builder validates nothing else.
    PosixRlimitBuilder::default()
        .typ(typ)
        .soft(soft)
        .hard(hard)
        .build()
        .unwrap_or_default()
}

/// A bind mount of `source` at `destination` with `options` after `rbind`.
pub fn bind(source: &Path, destination: &str, options: &[&str]) -> Result<Mount> {
    let mut opts = vec!["rbind".to_string()];
    opts.extend(options.iter().map(|o| o.to_string()));
    MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(opts)
        .build()
        .with_context(|| format!("bind mount {}", source.display()))
}

/// A tmpfs at `destination`.
pub fn tmpfs(destination: &str, options: &[&str]) -> Result<Mount> {
    MountBuilder::default()
        .destination(destination)
        .typ("tmpfs")
        .source("tmpfs")
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .with_context(|| format!("tmpfs at {destination}"))
}

/// A seccomp profile that allows everything except `syscalls`, which fail with `errno`.
pub fn seccomp_deny(syscalls: &[&str], errno: u32) -> Result<LinuxSeccomp> {
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
        ])
        .syscalls(vec![
            LinuxSyscallBuilder::default()
                .names(syscalls.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(errno)
                .build()
                .context("seccomp syscall rule")?,
        ])
        .build()
        .context("seccomp")
}

/// A cgroups path no other bundle of this machine uses: `/bungeo-test/<pid>-<n>-<nanos>`.
pub fn unique_cgroups_path() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("/{CGROUP_PARENT}/{}-{n}-{nanos:08x}", std::process::id())
}

/// Writes a busybox rootfs (see [`APPLETS`], [`PASSWD`], [`GROUP`]) into `rootfs`.
pub fn write_rootfs(rootfs: &Path) -> Result<()> {
    for dir in [
        "bin", "etc", "proc", "sys", "dev", "tmp", "root", "home/app", "mnt", "run", "var",
    ] {
        let d = rootfs.join(dir);
        fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
    }
    let tmp = rootfs.join("tmp");
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777))
        .with_context(|| format!("chmod {}", tmp.display()))?;
    let home = rootfs.join("home/app");
    nix::unistd::chown(
        &home,
        Some(nix::unistd::Uid::from_raw(1000)),
        Some(nix::unistd::Gid::from_raw(1000)),
    )
    .or_else(|e| {
        // Unprivileged unit tests cannot chown; the runtime suites run as root.
        if e == nix::errno::Errno::EPERM {
            Ok(())
        } else {
            Err(e)
        }
    })
    .with_context(|| format!("chown {}", home.display()))?;
    let busybox = rootfs.join("bin/busybox");
    fs::copy(BUSYBOX, &busybox).with_context(|| {
        format!(
            "copy {BUSYBOX} (apt-get install busybox-static) to {}",
            busybox.display()
        )
    })?;
    fs::set_permissions(&busybox, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", busybox.display()))?;
    for applet in APPLETS {
        let link = rootfs.join("bin").join(applet);
        symlink("busybox", &link).with_context(|| format!("symlink {}", link.display()))?;
    }
    for (name, text) in [("passwd", PASSWD), ("group", GROUP)] {
        let path = rootfs.join("etc").join(name);
        fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

/// An OCI bundle in a temporary directory; removed, with its cgroups, on drop.
#[derive(Debug)]
pub struct Bundle {
    dir: tempfile::TempDir,
    cgroups_path: String,
    spec: Spec,
}

impl Bundle {
    /// Writes a busybox rootfs and the `config.json` for `knobs`.
    pub fn create(knobs: &BundleSpec) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("bungeo-bundle-")
            .tempdir()
            .context("bundle tempdir")?;
        write_rootfs(&dir.path().join("rootfs"))?;
        let cgroups_path = unique_cgroups_path();
        let spec = knobs.to_spec(&cgroups_path)?;
        let bundle = Self {
            dir,
            cgroups_path,
            spec,
        };
        bundle.write_config()?;
        Ok(bundle)
    }

    /// The bundle directory (what `--bundle` takes).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Its `rootfs` directory.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    /// The spec written to `config.json`.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// Replaces the spec and rewrites `config.json`.
    pub fn set_spec(&mut self, spec: Spec) -> Result<()> {
        self.spec = spec;
        self.write_config()
    }

    /// `linux.cgroupsPath`, e.g. `/bungeo-test/123-4-5f3a`.
    pub fn cgroups_path(&self) -> &str {
        &self.cgroups_path
    }

    /// The container's cgroup directory in the hierarchy mounted at `/sys/fs/cgroup/<mount>`.
    pub fn cgroup_dir(&self, mount: &str) -> PathBuf {
        Path::new(CGROUP_ROOT)
            .join(mount)
            .join(self.cgroups_path.trim_start_matches('/'))
    }

    /// The container's cgroup directories that exist now, in every hierarchy.
    pub fn existing_cgroup_dirs(&self) -> Vec<PathBuf> {
        cgroup_hierarchies()
            .into_iter()
            .map(|h| h.join(self.cgroups_path.trim_start_matches('/')))
            .filter(|d| d.is_dir())
            .collect()
    }

    /// Writes `process` as JSON into the bundle directory (for `exec --process`).
    pub fn write_process(&self, name: &str, process: &Process) -> Result<PathBuf> {
        let path = self.dir.path().join(name);
        let json = serde_json::to_vec_pretty(process).context("serialise process")?;
        fs::write(&path, json).with_context(|| format!("write {}", path.display()))?;
        Ok(path)
    }

    /// Kills what is left in the container's cgroups and removes them.
    pub fn remove_cgroups(&self) -> Result<()> {
        let mut errors = Vec::new();
        for dir in self.existing_cgroup_dirs() {
            if let Err(e) = remove_cgroup(&dir) {
                errors.push(format!("{e:#}"));
            }
        }
        anyhow::ensure!(errors.is_empty(), "{}", errors.join("; "));
        Ok(())
    }

    fn write_config(&self) -> Result<()> {
        let path = self.dir.path().join("config.json");
        let json = serde_json::to_vec_pretty(&self.spec).context("serialise config.json")?;
        let mut f =
            fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
        f.write_all(&json)
            .with_context(|| format!("write {}", path.display()))
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        if let Err(e) = self.remove_cgroups() {
            eprintln!("bundle {}: {e:#}", self.dir.path().display());
        }
        if let Err(e) = unmount_under(self.dir.path()) {
            eprintln!("bundle {}: {e:#}", self.dir.path().display());
        }
    }
}

/// Every cgroup hierarchy under [`CGROUP_ROOT`] (v1 controllers, named ones, the v2 one).
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(CGROUP_ROOT) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("cgroup.procs").exists())
        .collect();
    // A pure v2 host mounts the hierarchy at the root itself.
    if Path::new(CGROUP_ROOT).join("cgroup.procs").exists() {
        found.push(PathBuf::from(CGROUP_ROOT));
    }
    found.sort();
    found
}

/// SIGKILLs every process in the cgroup at `dir`, waits for it to empty, removes it.
pub fn remove_cgroup(dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // ESRCH: it exited meanwhile.
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("remove cgroup {}", dir.display()));
            }
            // EBUSY while the killed processes are still exiting.
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Removes the empty `/bungeo-test` parents left in every hierarchy (ignores busy ones).
pub fn remove_cgroup_parents() {
    for h in cgroup_hierarchies() {
        // ENOENT or EBUSY: absent, or another run still has containers there.
        let _ = fs::remove_dir(h.join(CGROUP_PARENT));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(knobs: &BundleSpec) -> serde_json::Value {
        serde_json::to_value(knobs.to_spec("/bungeo-test/x").unwrap()).unwrap()
    }

    #[test]
    fn default_matches_runc_spec() {
        let v = json(&BundleSpec::default());
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "network", "ipc", "uts", "mount"]);
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["process"]["noNewPrivileges"], true);
        assert_eq!(v["process"]["terminal"], false);
        let caps = &v["process"]["capabilities"];
        assert!(caps.get("inheritable").is_none(), "{caps}");
        let mut bounding: Vec<&str> = caps["bounding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        bounding.sort();
        assert_eq!(
            bounding,
            ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
        );
        assert_eq!(v["process"]["rlimits"][0]["type"], "RLIMIT_NOFILE");
        assert_eq!(v["linux"]["cgroupsPath"], "/bungeo-test/x");
        assert_eq!(v["linux"]["resources"]["devices"][0]["allow"], false);
        assert!(v["linux"]["resources"].get("memory").is_none());
        assert_eq!(v["linux"]["maskedPaths"].as_array().unwrap().len(), 10);
        assert_eq!(v["mounts"].as_array().unwrap().len(), 7);
        assert!(v["linux"].get("seccomp").is_none());
    }

    #[test]
    fn knobs_reach_the_spec() {
        let mut knobs = BundleSpec::sh("exit 3");
        knobs.uid = 1000;
        knobs.gid = 1000;
        knobs.additional_gids = vec![2000];
        knobs.hostname = "h".into();
        knobs.readonly_root = false;
        knobs.caps = Caps::all_sets(&[Capability::Chown]);
        knobs.no_new_privileges = false;
        knobs.seccomp = Some(seccomp_deny(&["mkdir"], 1).unwrap());
        knobs.sysctls.insert("kernel.shmmax".into(), "1".into());
        knobs
            .mounts
            .push(bind(Path::new("/srv"), "/data", &["ro", "rslave"]).unwrap());
        knobs.rootfs_propagation = Some("rshared".into());
        knobs.resources = Resources {
            memory_limit: Some(1 << 26),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            cpu_shares: Some(512),
            pids_limit: Some(64),
        };
        let v = json(&knobs);
        assert_eq!(v["process"]["args"][2], "exit 3");
        assert_eq!(v["process"]["user"]["uid"], 1000);
        assert_eq!(v["process"]["user"]["additionalGids"][0], 2000);
        assert_eq!(v["hostname"], "h");
        assert_eq!(v["root"]["readonly"], false);
        assert_eq!(v["process"]["capabilities"]["inheritable"][0], "CAP_CHOWN");
        assert_eq!(v["process"]["noNewPrivileges"], false);
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(
            v["linux"]["seccomp"]["syscalls"][0]["action"],
            "SCMP_ACT_ERRNO"
        );
        assert_eq!(v["linux"]["seccomp"]["syscalls"][0]["errnoRet"], 1);
        assert_eq!(v["linux"]["sysctl"]["kernel.shmmax"], "1");
        let data = &v["mounts"][7];
        assert_eq!(data["destination"], "/data");
        assert_eq!(
            data["options"],
            serde_json::json!(["rbind", "ro", "rslave"])
        );
        assert_eq!(v["linux"]["rootfsPropagation"], "rshared");
        let r = &v["linux"]["resources"];
        assert_eq!(r["memory"]["limit"], 1 << 26);
        assert_eq!(r["cpu"]["quota"], 50_000);
        assert_eq!(r["cpu"]["period"], 100_000);
        assert_eq!(r["cpu"]["shares"], 512);
        assert_eq!(r["pids"]["limit"], 64);
    }

    #[test]
    fn cgroups_paths_are_unique() {
        let a = unique_cgroups_path();
        let b = unique_cgroups_path();
        assert_ne!(a, b);
        assert!(a.starts_with("/bungeo-test/"), "{a}");
    }

    #[test]
    fn bundle_has_a_busybox_rootfs_and_a_config() {
        if !Path::new(BUSYBOX).exists() {
            crate::test_skip::skip(
                "busybox",
                &format!("{BUSYBOX} missing (apt-get install busybox-static)"),
            );
            return;
        }
        let bundle = Bundle::create(&BundleSpec::command(&["/bin/true"])).unwrap();
        let root = bundle.rootfs();
        assert!(root.join("bin/busybox").is_file());
        assert_eq!(
            fs::read_link(root.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert!(
            fs::read_to_string(root.join("etc/group"))
                .unwrap()
                .contains("extra:x:2000:app")
        );
        let mode = fs::metadata(root.join("tmp")).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o1777);
        let saved = Spec::load(bundle.path().join("config.json")).unwrap();
        assert_eq!(&saved, bundle.spec());
        assert!(
            bundle
                .cgroup_dir("memory")
                .ends_with(bundle.cgroups_path().trim_start_matches('/'))
        );
        let path = bundle.path().to_path_buf();
        drop(bundle);
        assert!(!path.exists());
    }
}
