//! Containers from OCI bundles, in runc's model: `create` sets up the container and leaves
//! its init waiting at a start barrier, `start` releases it, `state` reports the OCI state,
//! `kill` signals, `exec` runs more processes inside, `delete` removes what is left.
//!
//! State lives in `<state_root>/<id>/` (`state.json`, `exec.fifo` until started).
//!
//! **Threads**: `create` and `exec` fork, and the children run Rust code (allocating) until
//! they exec. That is only sound when the calling process has a single thread, as the
//! `bungeo-runtime` command line does. A multi-threaded program (a tokio multi-thread
//! runtime, anything that spawned threads) must not call them directly: fork a helper first,
//! or run the `bungeo-runtime` binary.
//!
//! `create` clones the container's init with CLONE_PARENT, so it is a child of the caller,
//! as are `exec`'d processes: the caller reaps them (see [`wait_exit_code`]).
//!
//! **Binary**: those children run the caller's binary until they exec, inside the container's
//! namespaces. They are non-dumpable, but a caller should also run from a sealed copy of
//! itself ([`sealed_exe::reexec_sealed`], as `bungeo-runtime` does for `create`, `run` and
//! `exec`), so that no container process can ever reach the caller's binary on the host.

mod channel;
mod create;
mod exec;
mod init;
mod process;
pub mod sealed_exe;
pub mod signal;
pub mod state;
pub mod tty;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use oci_spec::runtime::Process;

use crate::cgroups::{Cgroup, Driver};
use crate::{Error, Result};

pub use create::wait_exit_code;
pub use process::no_capabilities;
pub use signal::parse_signal;
pub use state::{OciState, State, Status};

/// Where a container process's terminal master goes.
#[derive(Debug)]
pub enum ConsoleSocket {
    /// A listening unix socket to connect to (`--console-socket`).
    Path(PathBuf),
    /// An already connected unix socket.
    Fd(OwnedFd),
}

/// What `create` needs.
#[derive(Debug)]
pub struct CreateOptions {
    pub id: String,
    /// The bundle directory (holds `config.json`).
    pub bundle: PathBuf,
    /// The state root (`/run/bungeo-runtime` by default on the command line).
    pub root: PathBuf,
    /// Required when the spec's process has `terminal: true`.
    pub console_socket: Option<ConsoleSocket>,
    /// Written with the init's host pid once created.
    pub pid_file: Option<PathBuf>,
    /// Use the systemd cgroup driver (`cgroupsPath` as `slice:prefix:name`).
    pub systemd_cgroup: bool,
    /// Number of fds after stdio to pass to the container (3, 4, …), as runc's
    /// `--preserve-fds`.
    pub preserve_fds: u32,
}

/// What `exec` needs.
#[derive(Debug)]
pub struct ExecOptions {
    pub process: Process,
    pub console_socket: Option<ConsoleSocket>,
    pub pid_file: Option<PathBuf>,
    pub preserve_fds: u32,
}

/// A container with a state dir.
#[derive(Debug)]
pub struct Container {
    root: PathBuf,
    dir: PathBuf,
    state: State,
}

impl Container {
    /// Creates a container from the bundle; on return its init waits at the start barrier.
    /// On failure nothing is left: child killed, cgroup and state dir removed; a failure in
    /// the container's setup is `Error::Child` with the child's message.
    pub fn create(opts: &CreateOptions) -> Result<Container> {
        create::create(opts)
    }

    /// Loads the container `id` from `root`.
    pub fn load(root: &Path, id: &str) -> Result<Container> {
        state::validate_id(id)?;
        let dir = root.join(id);
        if !dir.join(state::STATE_FILE).exists() {
            return Err(Error::NotFound(id.to_string()));
        }
        Ok(Container {
            root: root.to_path_buf(),
            state: State::load(&dir)?,
            dir,
        })
    }

    /// Every container under `root`, sorted by id (unreadable entries skipped).
    pub fn list(root: &Path) -> Result<Vec<Container>> {
        let rd = match std::fs::read_dir(root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read state root", root, e)),
        };
        let mut out: Vec<Container> = rd
            .flatten()
            .filter_map(|e| Container::load(root, e.file_name().to_str()?).ok())
            .collect();
        out.sort_by(|a, b| a.state.id.cmp(&b.state.id));
        Ok(out)
    }

    pub fn id(&self) -> &str {
        &self.state.id
    }

    /// Host pid of the init.
    pub fn pid(&self) -> i32 {
        self.state.init_pid
    }

    pub fn bundle(&self) -> &Path {
        &self.state.bundle
    }

    /// The record as stored.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The state dir (`<root>/<id>`).
    pub fn state_dir(&self) -> &Path {
        &self.dir
    }

    /// The state root the container lives under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The current status, from the live process.
    pub fn status(&self) -> Status {
        self.state.status(&self.dir)
    }

    /// The OCI state object (`state` command).
    pub fn oci_state(&self) -> OciState {
        let status = self.status();
        OciState {
            oci_version: self.state.oci_version.clone(),
            id: self.state.id.clone(),
            status,
            pid: if status == Status::Stopped {
                0
            } else {
                self.state.init_pid
            },
            bundle: self.state.bundle.clone(),
            annotations: self.state.annotations.clone(),
            rootfs: self.state.rootfs.clone(),
            created: self.state.created.clone(),
            owner: self.state.owner.clone(),
        }
    }

    fn invalid(&self, status: Status, message: &str) -> Error {
        Error::InvalidState {
            id: self.state.id.clone(),
            status: status.to_string(),
            message: message.to_string(),
        }
    }

    /// Releases the init from the start barrier; it then execs the user's process.
    pub fn start(&mut self) -> Result<()> {
        let status = self.status();
        match status {
            Status::Created => {}
            Status::Stopped => {
                return Err(self.invalid(status, "cannot start a container that has stopped"));
            }
            _ => return Err(self.invalid(status, "cannot start an already running container")),
        }
        let fifo = self.dir.join(state::EXEC_FIFO);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&fifo)
            .map_err(|e| Error::io("open start barrier", &fifo, e))?;
        loop {
            let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(&f), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(100u16)) {
                Ok(0) | Err(Errno::EINTR) => {
                    if self.status() == Status::Stopped {
                        return Err(self.invalid(
                            Status::Stopped,
                            "the container's init exited before it was started",
                        ));
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => return Err(Error::sys("poll the start barrier", e)),
            }
            let mut b = [0u8; 1];
            match nix::unistd::read(&f, &mut b) {
                Ok(1) => break,
                // The writer side closed without a byte: the init died at the barrier.
                Ok(_) => {
                    return Err(self.invalid(
                        Status::Stopped,
                        "the container's init exited at the start barrier",
                    ));
                }
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => continue,
                Err(e) => return Err(Error::sys("read the start barrier", e)),
            }
        }
        std::fs::remove_file(&fifo).map_err(|e| Error::io("remove start barrier", &fifo, e))?;
        Ok(())
    }

    fn cgroup(&self) -> Result<Cgroup> {
        let driver = if self.state.systemd_cgroup {
            Driver::Systemd
        } else {
            Driver::Cgroupfs
        };
        // The cgroup exists since create: nothing to make, and removal must not remake it.
        Cgroup::open(&self.state.cgroups_path, &self.state.id, driver)
    }

    /// Sends `signal` to the init, or with `all` to every process in the container's cgroup.
    pub fn kill(&self, signal: Signal, all: bool) -> Result<()> {
        if all {
            return self.cgroup()?.kill_all(signal as i32);
        }
        let status = self.status();
        if status == Status::Stopped {
            return Err(self.invalid(status, "container not running"));
        }
        kill(Pid::from_raw(self.state.init_pid), signal)
            .map_err(|e| Error::sys(format!("kill {} {signal}", self.state.init_pid), e))
    }

    /// Pids of every process in the container's cgroup.
    pub fn pids(&self) -> Result<Vec<i32>> {
        self.cgroup()?.pids()
    }

    /// Applies new cgroup resource limits (UpdateContainerResources).
    pub fn update(&self, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        let s = self.status();
        if s == Status::Stopped {
            return Err(self.invalid(s, "container not running"));
        }
        self.cgroup()?.apply(resources)
    }

    /// Freezes every process in the container (cgroup freezer).
    pub fn pause(&mut self) -> Result<()> {
        match self.status() {
            Status::Running | Status::Created => {}
            s => return Err(self.invalid(s, "container not running")),
        }
        self.cgroup()?.freeze()?;
        self.state.paused = true;
        self.state.save(&self.dir)
    }

    /// Thaws a paused container.
    pub fn resume(&mut self) -> Result<()> {
        let s = self.status();
        if s != Status::Paused {
            return Err(self.invalid(s, "container not paused"));
        }
        self.cgroup()?.thaw()?;
        self.state.paused = false;
        self.state.save(&self.dir)
    }

    /// Removes the container. A created container's init is killed; a running (or paused)
    /// one is refused unless `force`, which kills every process in it first.
    pub fn delete(self, force: bool) -> Result<()> {
        let status = self.status();
        match status {
            Status::Stopped | Status::Created => {}
            Status::Running | Status::Paused if !force => {
                return Err(self.invalid(
                    status,
                    "cannot delete a running container (stop it first, or use force)",
                ));
            }
            _ => {}
        }
        let cg = self.cgroup()?;
        if status != Status::Stopped {
            if status == Status::Paused {
                let _ = cg.thaw();
            }
            let _ = kill(Pid::from_raw(self.state.init_pid), Signal::SIGKILL);
            self.wait_stopped(Duration::from_secs(10))?;
        }
        // Without its own pid namespace the container's other processes outlive the init.
        if !cg.pids().unwrap_or_default().is_empty() {
            cg.kill_all(Signal::SIGKILL as i32)?;
        }
        cg.delete()?;
        std::fs::remove_dir_all(&self.dir).map_err(|e| Error::io("remove state dir", &self.dir, e))
    }

    fn wait_stopped(&self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while self.status() != Status::Stopped {
            // Reap it when it is our child; harmless (ECHILD) otherwise.
            let _ = nix::sys::wait::waitpid(
                Pid::from_raw(self.state.init_pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
            if Instant::now() > deadline {
                return Err(self.invalid(self.status(), "the init did not exit after SIGKILL"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Starts another process in the container (namespaces, cgroup, the given process's user,
    /// capabilities, no_new_privs, env and cwd, the container's seccomp filter). Returns its
    /// host pid; it is the caller's child.
    pub fn exec(&self, opts: &ExecOptions) -> Result<i32> {
        exec::exec(self, opts)
    }

    /// The annotations from the spec.
    pub fn annotations(&self) -> &HashMap<String, String> {
        &self.state.annotations
    }
}

/// Root-only tests that run real containers from a busybox bundle (Debian's busybox-static).
/// They skip, saying so, when not root or without /bin/busybox.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespaces::forked::copy_executable;
    use std::os::unix::fs::symlink;

    const BUSYBOX: &str = "/bin/busybox";

    fn can_run() -> bool {
        if !nix::unistd::geteuid().is_root() {
            crate::test_skip::skip("root", "runs real containers");
            return false;
        }
        if !Path::new(BUSYBOX).exists() {
            crate::test_skip::skip("busybox", &format!("{BUSYBOX} (busybox-static)"));
            return false;
        }
        true
    }

    struct Bundle {
        _tmp: tempfile::TempDir,
        id: String,
        dir: PathBuf,
        out: PathBuf,
        root: PathBuf,
    }

    /// A test that fails half-way must not leave a container or cgroup behind.
    impl Drop for Bundle {
        fn drop(&mut self) {
            if let Ok(c) = Container::load(&self.root, &self.id) {
                let _ = c.delete(true);
            }
        }
    }

    /// A bundle with a busybox rootfs, `/out` bound from a host dir, and a spec built from
    /// `bungeo-runtime spec`'s defaults plus `adjust`.
    fn bundle(id: &str, args: &[&str], adjust: impl FnOnce(&mut serde_json::Value)) -> Bundle {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("bundle");
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        // Not with fs::copy: a container another test forks meanwhile would hold it open for
        // writing until started, and exec'ing it would fail with ETXTBSY (see the helper).
        copy_executable(Path::new(BUSYBOX), &rootfs.join("bin/busybox")).unwrap();
        for a in [
            "sh", "id", "cat", "ls", "hostname", "sleep", "grep", "echo", "true", "mkdir",
        ] {
            symlink("busybox", rootfs.join("bin").join(a)).unwrap();
        }
        std::fs::write(rootfs.join("marker"), "from-the-bundle\n").unwrap();
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nu:x:1000:1000::/home/u:/bin/sh\n",
        )
        .unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        // Reachable and writable for the non-root users some tests run as.
        std::fs::set_permissions(
            tmp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let mut spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/bin", "TERM=xterm"],
                "cwd": "/",
                "capabilities": {
                    "bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"],
                    "effective": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"],
                    "permitted": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"]
                },
                "noNewPrivileges": true
            },
            "root": {"path": "rootfs", "readonly": true},
            "hostname": "testhost",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                 "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
                {"destination": "/out", "type": "bind", "source": out, "options": ["rbind", "rw"]}
            ],
            "linux": {
                "cgroupsPath": format!("/bungeo-test/{id}"),
                "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                               {"type": "uts"}, {"type": "mount"}],
                "maskedPaths": ["/proc/kcore", "/sys/firmware"],
                "readonlyPaths": ["/proc/sys"]
            }
        });
        adjust(&mut spec);
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_vec_pretty(&spec).unwrap(),
        )
        .unwrap();
        let root = tmp.path().join("state");
        Bundle {
            _tmp: tmp,
            id: id.to_string(),
            dir,
            out,
            root,
        }
    }

    fn opts(b: &Bundle, id: &str) -> CreateOptions {
        CreateOptions {
            id: id.to_string(),
            bundle: b.dir.clone(),
            root: b.root.clone(),
            console_socket: None,
            pid_file: Some(b.out.join("pidfile")),
            systemd_cgroup: false,
            preserve_fds: 0,
        }
    }

    /// Host cgroup directories of `/bungeo-test/<id>` that still exist.
    fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
        let mut found = Vec::new();
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for e in rd.flatten() {
                let d = e.path().join("bungeo-test").join(id);
                if d.exists() {
                    found.push(d);
                }
            }
        }
        let v2 = Path::new("/sys/fs/cgroup/bungeo-test").join(id);
        if v2.exists() {
            found.push(v2);
        }
        found
    }

    /// The process is in `/bungeo-test/<id>` in every hierarchy (v1 ones and the v2 one).
    fn assert_in_every_hierarchy(pid: i32, id: &str) {
        let own = read(Path::new(&format!("/proc/{pid}/cgroup")));
        let want = format!("/bungeo-test/{id}");
        assert!(!own.is_empty());
        for line in own.lines() {
            assert!(line.ends_with(&want), "{line} is not {want}:\n{own}");
        }
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    }

    /// `start` returns once the init is released; its execve follows a moment later.
    fn wait_until_exec(pid: i32, cmdline: &str) {
        let path = format!("/proc/{pid}/cmdline");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let now = std::fs::read_to_string(&path).unwrap_or_default();
            if now == cmdline {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "pid {pid} did not exec {cmdline:?}: {now:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn create_start_wait_shows_the_settings_inside() {
        if !can_run() {
            return;
        }
        let id = format!("t-settings-{}", std::process::id());
        let script = "hostname > /out/hostname; grep -E 'NoNewPrivs|CapEff' /proc/self/status > /out/status; \
                      echo $$ > /out/pid; cat /marker > /out/marker; id > /out/id; \
                      touch /rootfs-write 2> /out/rofs; cat /proc/kcore > /out/kcore 2>&1; \
                      echo $HOME > /out/home";
        let b = bundle(&id, &["sh", "-c", script], |_| {});
        let mut c = Container::create(&opts(&b, &id)).unwrap();
        assert_eq!(c.status(), Status::Created);
        let pid = c.pid();
        assert_eq!(read(&b.out.join("pidfile")), pid.to_string());
        assert_eq!(
            Container::load(&b.root, &id).unwrap().oci_state().status,
            Status::Created
        );
        assert!(!cgroup_dirs(&id).is_empty(), "the container has a cgroup");
        assert!(c.pids().unwrap().contains(&pid));
        assert_in_every_hierarchy(pid, &id);
        c.start().unwrap();
        assert_eq!(wait_exit_code(pid).unwrap(), 0);
        assert_eq!(c.status(), Status::Stopped);
        assert_eq!(c.oci_state().pid, 0);
        assert_eq!(read(&b.out.join("hostname")).trim(), "testhost");
        let status = read(&b.out.join("status"));
        assert!(status.contains("NoNewPrivs:\t1"), "{status}");
        // CAP_KILL (5), CAP_NET_BIND_SERVICE (10), CAP_AUDIT_WRITE (29).
        assert!(status.contains("CapEff:\t0000000020000420"), "{status}");
        assert_eq!(read(&b.out.join("pid")).trim(), "1");
        assert_eq!(read(&b.out.join("marker")), "from-the-bundle\n");
        assert!(read(&b.out.join("id")).starts_with("uid=0(root) gid=0"));
        assert!(read(&b.out.join("rofs")).contains("Read-only file system"));
        assert_eq!(read(&b.out.join("home")).trim(), "/root");
        let kcore = read(&b.out.join("kcore"));
        assert!(
            kcore.is_empty() || kcore.contains("No such file"),
            "masked: {kcore}"
        );
        c.delete(false).unwrap();
        assert!(!b.root.join(&id).exists(), "state dir removed");
        assert!(
            cgroup_dirs(&id).is_empty(),
            "cgroup removed: {:?}",
            cgroup_dirs(&id)
        );
        assert!(matches!(
            Container::load(&b.root, &id),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn exec_into_a_running_container_then_kill_and_delete() {
        if !can_run() {
            return;
        }
        let id = format!("t-exec-{}", std::process::id());
        let b = bundle(&id, &["sleep", "100"], |_| {});
        let mut c = Container::create(&opts(&b, &id)).unwrap();
        let e = c
            .exec(&ExecOptions {
                process: serde_json::from_value(serde_json::json!({
                    "user": {"uid": 0, "gid": 0}, "args": ["true"], "env": ["PATH=/bin"], "cwd": "/"
                }))
                .unwrap(),
                console_socket: None,
                pid_file: None,
                preserve_fds: 0,
            })
            .map(wait_exit_code);
        assert!(
            matches!(e, Ok(Ok(0))),
            "exec into a created container: {e:?}"
        );
        c.start().unwrap();
        assert_eq!(c.status(), Status::Running);
        wait_until_exec(c.pid(), "sleep\x00100\x00");
        // The test process ignores SIGPIPE (Rust's runtime does); the container must not.
        let status = read(Path::new(&format!("/proc/{}/status", c.pid())));
        assert!(status.contains("SigIgn:\t0000000000000000"), "{status}");
        assert!(status.contains("SigBlk:\t0000000000000000"), "{status}");
        assert!(matches!(
            c.start(),
            Err(Error::InvalidState { ref status, .. }) if status == "running"
        ));
        let process = |args: &[&str], uid: u32| -> Process {
            serde_json::from_value(serde_json::json!({
                "user": {"uid": uid, "gid": uid}, "args": args, "env": ["PATH=/bin"], "cwd": "/out",
                "noNewPrivileges": true
            }))
            .unwrap()
        };
        let exec = |p: Process| {
            c.exec(&ExecOptions {
                process: p,
                console_socket: None,
                pid_file: None,
                preserve_fds: 0,
            })
        };
        let pid = exec(process(
            &["sh", "-c", "cat /proc/1/cmdline > cmd; echo $$ > pid; hostname > host; id > id; grep CapEff /proc/self/status > caps; cat /proc/self/cgroup > cg; cat /proc/1/cgroup > cg1"],
            1000,
        ))
        .unwrap();
        assert_eq!(wait_exit_code(pid).unwrap(), 0);
        assert_eq!(read(&b.out.join("cmd")), "sleep\x00100\x00");
        assert_ne!(read(&b.out.join("pid")).trim(), "1");
        assert_eq!(read(&b.out.join("host")).trim(), "testhost");
        assert!(read(&b.out.join("id")).starts_with("uid=1000(u) gid=1000"));
        assert!(read(&b.out.join("caps")).contains("0000000000000000"));
        // In every hierarchy the init's cgroup (the exec joins it by itself).
        let cgroups = read(&b.out.join("cg"));
        assert!(cgroups.contains(&id), "{cgroups}");
        assert_eq!(cgroups, read(&b.out.join("cg1")));
        let pid = exec(process(&["sh", "-c", "exit 3"], 0)).unwrap();
        assert_eq!(wait_exit_code(pid).unwrap(), 3);
        let err = exec(process(&["nope"], 0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "exec: \"nope\": executable file not found in $PATH"
        );
        assert_eq!(c.pids().unwrap(), vec![c.pid()]);

        c.kill(Signal::SIGKILL, false).unwrap();
        assert_eq!(wait_exit_code(c.pid()).unwrap(), 128 + 9);
        assert_eq!(c.status(), Status::Stopped);
        assert!(c.kill(Signal::SIGTERM, false).is_err());
        c.delete(false).unwrap();
        assert!(!b.root.join(&id).exists());
        assert!(cgroup_dirs(&id).is_empty());
    }

    #[test]
    fn a_running_container_is_deleted_only_with_force() {
        if !can_run() {
            return;
        }
        let id = format!("t-force-{}", std::process::id());
        let b = bundle(&id, &["sleep", "100"], |_| {});
        let mut c = Container::create(&opts(&b, &id)).unwrap();
        c.start().unwrap();
        let pid = c.pid();
        let c = match c.delete(false) {
            Err(Error::InvalidState { .. }) => Container::load(&b.root, &id).unwrap(),
            other => panic!("delete of a running container: {other:?}"),
        };
        c.delete(true).unwrap();
        assert_eq!(wait_exit_code(pid).unwrap_or(137), 137);
        assert!(!b.root.join(&id).exists());
        assert!(cgroup_dirs(&id).is_empty());
    }

    #[test]
    fn a_failing_command_gives_a_clear_error_and_leaves_nothing() {
        if !can_run() {
            return;
        }
        let id = format!("t-fail-{}", std::process::id());
        let b = bundle(&id, &["/bin/nope"], |_| {});
        let e = Container::create(&opts(&b, &id)).unwrap_err();
        assert!(matches!(e, Error::Child(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "exec: \"/bin/nope\": no such file or directory"
        );
        assert!(!b.root.join(&id).exists());
        assert!(cgroup_dirs(&id).is_empty());

        // A working directory the image lacks is created, as runc does.
        let b = bundle(&id, &["true"], |s| s["process"]["cwd"] = "/nodir".into());
        let c = Container::create(&opts(&b, &id)).expect("a missing cwd is created");
        assert!(b.dir.join("rootfs/nodir").is_dir());
        c.delete(true).expect("delete");
        assert!(!b.root.join(&id).exists());
    }

    #[test]
    fn a_proc_symlink_out_of_the_rootfs_is_refused() {
        if !can_run() {
            return;
        }
        let id = format!("t-escape-{}", std::process::id());
        let b = bundle(&id, &["true"], |_| {});
        symlink("/", b.dir.join("rootfs/proc")).unwrap();
        let e = Container::create(&opts(&b, &id)).unwrap_err();
        assert!(e.to_string().contains("mount proc (proc) on /proc"), "{e}");
        assert!(!b.root.join(&id).exists());
        assert!(cgroup_dirs(&id).is_empty());
    }

    #[test]
    fn seccomp_applies_to_the_init_and_exec_processes() {
        if !can_run() {
            return;
        }
        let id = format!("t-seccomp-{}", std::process::id());
        let b = bundle(
            &id,
            &[
                "sh",
                "-c",
                "grep Seccomp: /proc/self/status > /out/s; mkdir /out/d 2> /out/e; touch /out/done; sleep 100",
            ],
            |s| {
                s["process"]["noNewPrivileges"] = false.into();
                s["linux"]["seccomp"] = serde_json::json!({
                    "defaultAction": "SCMP_ACT_ALLOW",
                    "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
                });
            },
        );
        let mut c = Container::create(&opts(&b, &id)).unwrap();
        c.start().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !b.out.join("done").exists() {
            assert!(
                Instant::now() < deadline,
                "the container script did not finish"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(read(&b.out.join("s")).trim(), "Seccomp:\t2");
        assert!(read(&b.out.join("e")).contains("Operation not permitted"));
        assert!(!b.out.join("d").exists());
        let pid = c
            .exec(&ExecOptions {
                process: serde_json::from_value(serde_json::json!({
                    "user": {"uid": 0, "gid": 0}, "args": ["sh", "-c", "mkdir /out/d2 2> /out/e2"],
                    "env": ["PATH=/bin"], "cwd": "/", "noNewPrivileges": true
                }))
                .unwrap(),
                console_socket: None,
                pid_file: None,
                preserve_fds: 0,
            })
            .unwrap();
        assert_eq!(wait_exit_code(pid).unwrap(), 1);
        assert!(!b.out.join("d2").exists());
        assert!(read(&b.out.join("e2")).contains("Operation not permitted"));
        c.delete(true).unwrap();
        let _ = wait_exit_code(pid);
        assert!(cgroup_dirs(&id).is_empty());
    }

    /// In a user namespace the kernel would refuse to clone the container process into its
    /// cgroup v2 directory, so the setup process joins it itself: every hierarchy still.
    #[test]
    fn a_user_namespace_container_is_in_every_hierarchy() {
        if !can_run() {
            return;
        }
        let id = format!("t-userns-{}", std::process::id());
        let b = bundle(
            &id,
            &[
                "sh",
                "-c",
                "cat /proc/self/uid_map > /out/map; cat /proc/keys > /out/keys; \
                 cat /proc/sys/kernel/shmmni > /out/shmmni",
            ],
            |s| {
                // Masking by fd and sysctls through a verified procfs work in a user namespace
                // too.
                s["linux"]["maskedPaths"] = serde_json::json!(["/proc/keys", "/proc/timer_list"]);
                s["linux"]["sysctl"] = serde_json::json!({"kernel.shmmni": "1234"});
                let map = serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
                s["linux"]["namespaces"]
                    .as_array_mut()
                    .unwrap()
                    .push(serde_json::json!({"type": "user"}));
                s["linux"]["uidMappings"] = map.clone();
                s["linux"]["gidMappings"] = map;
                // sysfs and cgroupfs need more than this test's user namespace can give.
                s["mounts"]
                    .as_array_mut()
                    .unwrap()
                    .retain(|m| !m["destination"].as_str().unwrap().starts_with("/sys"));
            },
        );
        // The namespace's root cannot create mount points in a rootfs the host's root owns.
        for d in ["proc", "dev", "out"] {
            std::fs::create_dir_all(b.dir.join("rootfs").join(d)).unwrap();
        }
        let mut c = Container::create(&opts(&b, &id)).unwrap();
        let pid = c.pid();
        assert_in_every_hierarchy(pid, &id);
        c.start().unwrap();
        assert_eq!(wait_exit_code(pid).unwrap(), 0);
        assert_eq!(
            read(&b.out.join("map"))
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["0", "100000", "65536"]
        );
        assert_eq!(read(&b.out.join("keys")), "");
        assert_eq!(read(&b.out.join("shmmni")).trim(), "1234");
        c.delete(false).unwrap();
        assert!(cgroup_dirs(&id).is_empty());
    }

    /// The container's `/dev/console` is the very pty whose master was handed over: same
    /// device numbers as the master's slave, and as the container's stdin.
    #[test]
    fn the_console_is_the_slave_of_the_master_handed_over() {
        if !can_run() {
            return;
        }
        let id = format!("t-console-{}", std::process::id());
        let script = "/bin/busybox stat -L -c %t:%T /dev/console /proc/self/fd/0 > /out/rdev";
        let b = bundle(&id, &["sh", "-c", script], |s| {
            s["process"]["terminal"] = true.into();
        });
        let (mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut o = opts(&b, &id);
        o.console_socket = Some(ConsoleSocket::Fd(theirs.into()));
        let mut c = Container::create(&o).unwrap();
        let master = tty::recv_fd(std::os::fd::AsFd::as_fd(&mine)).unwrap();
        let index = tty::pty_index(std::os::fd::AsFd::as_fd(&master)).unwrap();
        c.start().unwrap();
        assert_eq!(wait_exit_code(c.pid()).unwrap(), 0);
        let want = format!("{:x}:{:x}", 136 + index / 256, index % 256);
        let seen = read(&b.out.join("rdev"));
        let lines: Vec<&str> = seen.lines().collect();
        assert_eq!(lines, vec![want.as_str(), want.as_str()], "{seen:?}");
        c.delete(false).unwrap();
    }

    #[test]
    fn a_terminal_is_sent_over_the_console_socket() {
        if !can_run() {
            return;
        }
        let id = format!("t-tty-{}", std::process::id());
        let b = bundle(&id, &["sh", "-c", "tty; ls /dev/console"], |s| {
            s["process"]["terminal"] = true.into();
        });
        let (mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut o = opts(&b, &id);
        o.console_socket = Some(ConsoleSocket::Fd(theirs.into()));
        let mut c = Container::create(&o).unwrap();
        let master = tty::recv_fd(std::os::fd::AsFd::as_fd(&mine)).unwrap();
        c.start().unwrap();
        let code = wait_exit_code(c.pid()).unwrap();
        let mut f = std::fs::File::from(master);
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut f, &mut out);
        assert_eq!(code, 0, "{out:?}");
        assert!(out.contains("/dev/pts/0"), "{out:?}");
        assert!(out.contains("/dev/console"), "{out:?}");
        c.delete(false).unwrap();
    }
}
