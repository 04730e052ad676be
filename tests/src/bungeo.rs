//! The bungeo daemon under test, in its own root, state and socket, with restart and crash.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tempfile::TempDir;

use crate::cri::Cri;
use crate::mounts::unmount_under;
use crate::net::TestNetwork;
use crate::process::{Process, STOP_GRACE};
use crate::registryhosts::{RegistryHosts, toml_string};

/// The daemon binary: `BUNGEO_BIN`, else `bungeo` in the cargo profile directory this test
/// binary was built into (`target/<profile>/deps/..`), else `<workspace>/target/debug/bungeo`.
pub fn bungeo_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("BUNGEO_BIN") {
        return PathBuf::from(bin);
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        let profile_dir = if dir.file_name().is_some_and(|n| n == "deps") {
            dir.parent()
        } else {
            Some(dir)
        };
        if let Some(candidate) = profile_dir.map(|d| d.join("bungeo"))
            && candidate.is_file()
        {
            return candidate;
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/bungeo")
}

/// A running bungeo daemon; SIGTERM, unmount and removal of its directories on drop.
#[derive(Debug)]
pub struct Bungeo {
    process: Option<Process>,
    bin: PathBuf,
    root: PathBuf,
    state: PathBuf,
    socket: PathBuf,
    config: PathBuf,
    log: PathBuf,
    cni_conf: PathBuf,
    // Dropped after the daemon is stopped and its pods' namespaces are unmounted.
    network: Option<TestNetwork>,
    dir: TempDir,
}

/// The CNI setup of a bungeo under test, written as the `[cni]` table of its config.
#[derive(Debug, Default)]
pub struct BungeoCni {
    /// Files written into the daemon's own conf dir before it starts: (name, contents). With
    /// none, bungeo finds the dir empty and writes its default network there.
    pub conf_files: Vec<(String, String)>,
    /// Plugin directories; none: bungeo's defaults.
    pub bin_dirs: Vec<PathBuf>,
    /// The bridge and subnet of bungeo's default network; none: a fresh [`TestNetwork`].
    pub network: Option<TestNetwork>,
}

/// Whether `bin` knows the default network keys of `[cni]` (`default_bridge`,
/// `default_subnet`), from its `config default` output: a daemon without them refuses a
/// config naming them.
fn knows_default_network(bin: &Path) -> bool {
    static KNOWS: OnceLock<bool> = OnceLock::new();
    *KNOWS.get_or_init(|| {
        Command::new(bin)
            .args(["config", "default"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("default_bridge"))
    })
}

impl Bungeo {
    /// Starts bungeo reaching `hosts` over plain HTTP and waits for its CRI Version.
    pub async fn start(hosts: &RegistryHosts) -> Result<Self> {
        Self::start_with_config(&hosts.bungeo_toml()).await
    }

    /// Starts bungeo with this config file text. Unless it has a `[cni]` table, the daemon
    /// gets the harness's: an empty conf dir of its own and a fresh [`TestNetwork`] for its
    /// default network.
    pub async fn start_with_config(config: &str) -> Result<Self> {
        Self::start_with_cni(config, BungeoCni::default()).await
    }

    /// Starts bungeo with this config file text and this CNI setup (appended as `[cni]`; the
    /// text must not have its own).
    pub async fn start_with_cni(config: &str, cni: BungeoCni) -> Result<Self> {
        let bin = bungeo_binary();
        anyhow::ensure!(
            bin.is_file(),
            "bungeo binary not found at {} (run `cargo build --workspace --bins` or set BUNGEO_BIN)",
            bin.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("bungeo-daemon-")
            .tempdir()
            .context("create bungeo dir")?;
        let base = dir.path();
        let cni_conf = base.join("cni");
        let mut config = config.to_string();
        let mut network = None;
        if !config.lines().any(|l| l.trim() == "[cni]") {
            std::fs::create_dir_all(&cni_conf).context("create the CNI conf dir")?;
            for (name, text) in &cni.conf_files {
                let path = cni_conf.join(name);
                std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
            }
            let net = match cni.network {
                Some(n) => n,
                None => TestNetwork::allocate()?,
            };
            config.push_str(&format!(
                "\n[cni]\nconf_dir = {}\n",
                toml_string(&cni_conf.to_string_lossy())
            ));
            if !cni.bin_dirs.is_empty() {
                let dirs: Vec<String> = cni
                    .bin_dirs
                    .iter()
                    .map(|d| toml_string(&d.to_string_lossy()))
                    .collect();
                config.push_str(&format!("bin_dirs = [{}]\n", dirs.join(", ")));
            }
            if knows_default_network(&bin) {
                config.push_str(&format!(
                    "default_bridge = {}\ndefault_subnet = {}\n",
                    toml_string(net.bridge()),
                    toml_string(&net.subnet())
                ));
            }
            network = Some(net);
        }
        let config_path = base.join("config.toml");
        std::fs::write(&config_path, config).context("write bungeo config")?;
        let mut this = Self {
            process: None,
            bin,
            root: base.join("root"),
            state: base.join("state"),
            socket: base.join("bungeo.sock"),
            config: config_path,
            log: base.join("bungeo.log"),
            cni_conf,
            network,
            dir,
        };
        this.spawn().await?;
        Ok(this)
    }

    async fn spawn(&mut self) -> Result<()> {
        anyhow::ensure!(self.process.is_none(), "bungeo is already running");
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--state")
            .arg(&self.state)
            .arg("--listen")
            .arg(&self.socket)
            .arg("--config")
            .arg(&self.config)
            .arg("--log-level")
            // Our crates in detail; h2 and hyper at debug would drown them.
            .arg("bungeo_api=debug,bungeo_imagestore=debug,info");
        let mut process = Process::spawn("bungeo", cmd, &self.log, &self.log)?;
        let ready = Cri::wait_ready(&self.socket, Duration::from_secs(30), || {
            process.ensure_running()
        })
        .await;
        self.process = Some(process);
        ready.map(drop)
    }

    /// SIGKILL: the daemon dies mid-whatever, leaving its files as a crash would.
    pub fn kill9(&mut self) -> Result<()> {
        let mut p = self.process.take().context("bungeo is not running")?;
        p.kill9()?;
        Ok(())
    }

    /// SIGTERM, then how the daemon exited (killed if it outlasts [`STOP_GRACE`]).
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        let mut p = self.process.take().context("bungeo is not running")?;
        p.stop(STOP_GRACE)?
            .context("bungeo had already been reaped")
    }

    /// Waits up to `timeout` for the daemon to exit by itself (after a signal the test sent);
    /// how it exited.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let p = self.process.as_mut().context("bungeo is not running")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = p.exited()? {
                self.process = None;
                return Ok(status);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "bungeo still runs {timeout:?} later"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Process::pid)
    }

    /// Stops (SIGTERM) the daemon if it runs, then starts it again on the same directories.
    pub async fn restart(&mut self) -> Result<()> {
        if let Some(mut p) = self.process.take() {
            p.stop(STOP_GRACE)?;
        }
        self.spawn().await
    }

    /// The CRI socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `--root`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `--state`.
    pub fn state(&self) -> &Path {
        &self.state
    }

    /// The config file.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// The CNI conf dir the harness gave the daemon (`<dir>/cni`).
    pub fn cni_conf_dir(&self) -> &Path {
        &self.cni_conf
    }

    /// The bridge and subnet of the daemon's default network, when the harness chose them.
    pub fn network(&self) -> Option<&TestNetwork> {
        self.network.as_ref()
    }

    /// The daemon's log (stderr and stdout).
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The last lines of the daemon's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        crate::process::tail(&self.log, lines)
    }
}

impl Drop for Bungeo {
    fn drop(&mut self) {
        if let Some(mut p) = self.process.take()
            && let Err(err) = p.stop(STOP_GRACE)
        {
            eprintln!("stopping bungeo: {err:#}");
        }
        // Shims outlive the daemon on purpose; a test run must not.
        let killed = crate::leftovers::kill_processes_under(self.dir.path());
        if killed > 0 {
            eprintln!("killed {killed} shim and container processes bungeo left running");
        }
        if let Err(err) = unmount_under(self.dir.path()) {
            eprintln!("unmounting below {}: {err:#}", self.dir.path().display());
        }
        // The pods' network namespaces are gone now, and their veths with them: then the
        // bridge and firewall rules, and portmap's shared chains once no pod maps a port.
        if let Some(network) = self.network.take() {
            drop(network);
            crate::net::remove_idle_hostport_chains();
        }
    }
}
