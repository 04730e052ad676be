//! What the shim's end-to-end tests need: busybox bundles, a shim started through the real
//! binaries, and a teardown that leaves no process, cgroup or file behind even when a test
//! fails half-way.

#![allow(dead_code)]

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bungeo_shim::protos::TaskClient;
use bungeo_shim::protos::api::ConnectRequest;
use bungeo_shim::protos::ttrpc::context::{self, Context};
use bungeo_shim::{Config, launch};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[path = "../../../testsupport/skip.rs"]
mod test_skip;
pub use test_skip::skip;

/// Debian's busybox-static.
pub const BUSYBOX: &str = "/bin/busybox";

/// The first component of every test container's cgroups path.
pub const CGROUP_PARENT: &str = "bungeo-shim-test";

const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "sleep", "stty", "head", "tr", "true", "ls", "id",
];

/// Whether these tests can run here (root, busybox); says why not.
pub fn can_run() -> bool {
    if !nix::unistd::geteuid().is_root() {
        skip("root", "the shim runs containers");
        return false;
    }
    if !Path::new(BUSYBOX).exists() {
        skip(
            "busybox",
            &format!("{BUSYBOX} (apt-get install busybox-static)"),
        );
        return false;
    }
    true
}

/// The `bungeo-shim` binary cargo built for these tests.
pub fn shim_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bungeo-shim"))
}

/// `BUNGEO_RUNTIME_BIN`, else `bungeo-runtime` beside the shim binary (target/<profile>/).
pub fn runtime_bin() -> PathBuf {
    let bin = std::env::var_os("BUNGEO_RUNTIME_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| shim_bin().with_file_name("bungeo-runtime"));
    assert!(
        bin.is_file(),
        "bungeo-runtime not found at {} (cargo build -p bungeo-runtime, or set BUNGEO_RUNTIME_BIN)",
        bin.display()
    );
    bin
}

/// A unique container id for this process.
pub fn unique_id(name: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Every cgroup hierarchy mounted under /sys/fs/cgroup (v1 controllers and the v2 one).
fn hierarchies() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.join("cgroup.procs").exists())
                .collect()
        })
        .unwrap_or_default();
    if Path::new("/sys/fs/cgroup/cgroup.procs").exists() {
        found.push(PathBuf::from("/sys/fs/cgroup"));
    }
    found
}

/// The container's cgroup directories that exist now.
pub fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    hierarchies()
        .into_iter()
        .map(|h| h.join(CGROUP_PARENT).join(id))
        .filter(|d| d.is_dir())
        .collect()
}

/// Live harnesses of this process: the shared cgroup parent is removed only when none is left,
/// so a teardown never removes it while another test's runtime is creating a child in it.
static LIVE: std::sync::Mutex<usize> = std::sync::Mutex::new(0);

/// Kills what is left in the container's cgroups and removes them.
pub fn remove_cgroups(id: &str) {
    for dir in cgroup_dirs(id) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            match std::fs::remove_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if Instant::now() > deadline => {
                    eprintln!("teardown: remove {}: {e}", dir.display());
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

fn remove_cgroup_parent() {
    for h in hierarchies() {
        // Busy while another process's test containers are there: it removes it then.
        let _ = std::fs::remove_dir(h.join(CGROUP_PARENT));
    }
}

/// Whether a process exists (zombies count as gone).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Field `n` (1-based, as in proc(5)) of /proc/<pid>/stat.
pub fn stat_field(pid: i32, n: usize) -> Option<i64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_whitespace().nth(n - 3)?.parse().ok()
}

/// `VmRSS` of a process in kB.
pub fn rss_kb(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The memory lines of /proc/<pid>/status (VmRSS, RssAnon, RssFile, Threads), for reports.
pub fn memory_summary(pid: i32) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .filter(|l| {
            ["VmRSS:", "RssAnon:", "RssFile:", "Threads:"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Polls `cond` every 10 ms for up to `limit`.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A ttrpc context with a deadline.
pub fn ctx(secs: i64) -> Context {
    context::with_timeout(secs * 1_000_000_000)
}

/// One container: a busybox bundle, the shim's dirs, and (once launched) the shim.
pub struct Harness {
    pub tmp: tempfile::TempDir,
    pub id: String,
    pub cfg: Config,
    pub log: PathBuf,
    pub client: Option<TaskClient>,
    pub shim_pid: i32,
}

impl Harness {
    /// Writes a bundle running `args`; `adjust` may change the spec JSON.
    pub fn new(name: &str, args: &[&str], adjust: impl FnOnce(&mut serde_json::Value)) -> Self {
        *LIVE.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        let id = unique_id(name);
        let tmp = tempfile::Builder::new()
            .prefix("bungeo-shim-test-")
            .tempdir()
            .unwrap();
        // The container's users must reach files in here.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let bundle = tmp.path().join("bundle");
        let rootfs = bundle.join("rootfs");
        for d in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
        for a in APPLETS {
            symlink("busybox", rootfs.join("bin").join(a)).unwrap();
        }
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        let mut spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/bin", "TERM=xterm"],
                "cwd": "/",
                "capabilities": {
                    "bounding": ["CAP_KILL", "CAP_AUDIT_WRITE"],
                    "effective": ["CAP_KILL", "CAP_AUDIT_WRITE"],
                    "permitted": ["CAP_KILL", "CAP_AUDIT_WRITE"]
                },
                "noNewPrivileges": true
            },
            "root": {"path": "rootfs", "readonly": true},
            "hostname": "shimtest",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]}
            ],
            "linux": {
                "cgroupsPath": format!("/{CGROUP_PARENT}/{id}"),
                "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                               {"type": "uts"}, {"type": "mount"}],
                "maskedPaths": ["/proc/kcore"],
                "readonlyPaths": ["/proc/sys"]
            }
        });
        adjust(&mut spec);
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&spec).unwrap(),
        )
        .unwrap();
        let cfg = Config {
            id: id.clone(),
            bundle,
            state_dir: tmp.path().join("state"),
            socket: tmp.path().join("shim.sock"),
            runtime: runtime_bin(),
            runtime_root: tmp.path().join("runtime"),
            systemd_cgroup: false,
        };
        let log = tmp.path().join("logs").join("0.log");
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        Harness {
            tmp,
            id,
            cfg,
            log,
            client: None,
            shim_pid: 0,
        }
    }

    /// Starts the shim through the real binary and connects.
    pub fn launch(&mut self) -> &TaskClient {
        let address = launch::launch(&shim_bin(), &self.cfg).unwrap();
        assert_eq!(address, self.cfg.address());
        let client = launch::connect(&address).unwrap();
        let mut req = ConnectRequest::new();
        req.id = self.id.clone();
        let r = client.connect(ctx(10), &req).unwrap();
        self.shim_pid = r.shim_pid as i32;
        self.client = Some(client);
        self.client()
    }

    pub fn client(&self) -> &TaskClient {
        self.client.as_ref().expect("launched")
    }

    /// A path in the test's temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Waits (up to 10 s) for the shim process to be gone.
    pub fn shim_gone(&self) -> bool {
        eventually(Duration::from_secs(10), || !alive(self.shim_pid))
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.client = None;
        if self.shim_pid > 0 && alive(self.shim_pid) {
            let _ = kill(Pid::from_raw(self.shim_pid), Signal::SIGKILL);
        }
        remove_cgroups(&self.id);
        let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
        *live -= 1;
        if *live == 0 {
            remove_cgroup_parent();
        }
    }
}

/// The CRI log records of `path`: (timestamp, stream, tag, content), each timestamp checked to
/// be RFC 3339 with nanoseconds and recent.
pub fn log_records(path: &Path) -> Vec<(SystemTime, String, String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split_terminator('\n')
        .map(|line| {
            let mut f = line.splitn(4, ' ');
            let ts = f.next().unwrap();
            let at = bungeo_shim::rfc3339::parse(ts)
                .unwrap_or_else(|| panic!("bad timestamp in log line {line:?}"));
            let age = SystemTime::now().duration_since(at).unwrap_or_default();
            assert!(age < Duration::from_secs(300), "{line:?} is not recent");
            (
                at,
                f.next().unwrap_or_default().to_string(),
                f.next().unwrap_or_default().to_string(),
                f.next().unwrap_or_default().to_string(),
            )
        })
        .collect()
}
