//! Debian's containerd as the reference daemon, in its own directories with its own socket.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use tempfile::TempDir;

use crate::cri::Cri;
use crate::images::PAUSE_REFERENCE;
use crate::mounts::unmount_under;
use crate::net::TestNetwork;
use crate::process::{Process, STOP_GRACE};
use crate::registryhosts::{RegistryHosts, toml_string};

/// The containerd binary; `BUNGEO_CONTAINERD` overrides it.
pub fn containerd_binary() -> PathBuf {
    std::env::var_os("BUNGEO_CONTAINERD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/containerd"))
}

/// A running containerd; stopped, unmounted and removed on drop.
#[derive(Debug)]
pub struct Containerd {
    process: Option<Process>,
    socket: PathBuf,
    root: PathBuf,
    state: PathBuf,
    log: PathBuf,
    cni_conf: PathBuf,
    // Dropped after the process is stopped and the pods' namespaces are unmounted.
    network: Option<TestNetwork>,
    dir: TempDir,
}

/// The CNI setup of a containerd under test.
#[derive(Debug)]
pub struct ContainerdCni {
    /// Files written into containerd's own CNI conf dir before it starts: (name, contents).
    pub conf_files: Vec<(String, String)>,
    /// The one plugin directory containerd 1.6 searches.
    pub bin_dir: PathBuf,
    /// The network the configs put pods on, cleaned up when containerd is dropped.
    pub network: Option<TestNetwork>,
}

impl ContainerdCni {
    /// Loopback only ([`LOOPBACK_CONFLIST`]): what suites without pod networking use.
    pub fn loopback() -> Self {
        Self {
            conf_files: vec![(
                LOOPBACK_CONFLIST_NAME.to_string(),
                LOOPBACK_CONFLIST.to_string(),
            )],
            bin_dir: PathBuf::from("/usr/lib/cni"),
            network: None,
        }
    }

    /// The bridge network of [`TestNetwork::conflist`] (the shape of bungeo's default),
    /// named `name`, as `10-<name>.conflist`.
    pub fn bridge(network: TestNetwork, name: &str, dual_stack: bool) -> Self {
        Self {
            conf_files: vec![(
                format!("10-{name}.conflist"),
                network.conflist(name, dual_stack).to_string(),
            )],
            bin_dir: PathBuf::from("/usr/lib/cni"),
            network: Some(network),
        }
    }
}

impl Containerd {
    /// Starts containerd with the CRI plugin, reaching `hosts` over plain HTTP, and waits
    /// until its CRI Version call answers. Pods get the loopback network.
    pub async fn start(hosts: &RegistryHosts) -> Result<Self> {
        Self::start_with_cni(hosts, ContainerdCni::loopback()).await
    }

    /// [`start`](Self::start) with this CNI setup.
    pub async fn start_with_cni(hosts: &RegistryHosts, cni: ContainerdCni) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("bungeo-containerd-")
            .tempdir()
            .context("create containerd dir")?;
        let base = dir.path();
        let root = base.join("root");
        let state = base.join("state");
        let certs_d = base.join("certs.d");
        let cni_conf = base.join("cni");
        for d in [&root, &state, &certs_d, &cni_conf] {
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
        }
        hosts.write_containerd_certs_d(&certs_d)?;
        for (name, text) in &cni.conf_files {
            let path = cni_conf.join(name);
            std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        }
        let socket = base.join("containerd.sock");
        let config = config_toml(
            &root,
            &state,
            &socket,
            &certs_d,
            &cni_conf,
            &cni.bin_dir,
            base,
        );
        let config_path = base.join("config.toml");
        std::fs::write(&config_path, config).context("write containerd config")?;
        let log = base.join("containerd.log");
        let mut cmd = Command::new(containerd_binary());
        cmd.arg("--config")
            .arg(&config_path)
            .arg("--root")
            .arg(&root)
            .arg("--state")
            .arg(&state)
            .arg("--address")
            .arg(&socket)
            .arg("--log-level")
            .arg("info");
        let process = Process::spawn("containerd", cmd, &log, &log)?;
        let mut this = Self {
            process: Some(process),
            socket,
            root,
            state,
            log,
            cni_conf,
            network: cni.network,
            dir,
        };
        this.wait_ready().await?;
        Ok(this)
    }

    async fn wait_ready(&mut self) -> Result<Cri> {
        let process = self.process.as_mut().context("containerd is not running")?;
        Cri::wait_ready(&self.socket, Duration::from_secs(60), || {
            process.ensure_running()
        })
        .await
    }

    /// The gRPC socket, which serves CRI too.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// containerd's `--root`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// containerd's `--state`.
    pub fn state(&self) -> &Path {
        &self.state
    }

    /// containerd's CNI conf dir (it watches it: configs written later are loaded).
    pub fn cni_conf_dir(&self) -> &Path {
        &self.cni_conf
    }

    /// The network containerd's CNI config puts pods on, when the harness made one.
    pub fn network(&self) -> Option<&TestNetwork> {
        self.network.as_ref()
    }

    /// containerd's log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The last lines of containerd's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        crate::process::tail(&self.log, lines)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut p) = self.process.take()
            && let Err(err) = p.stop(STOP_GRACE)
        {
            eprintln!("stopping containerd: {err:#}");
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

/// File name of the CNI network containerd's pods get.
pub const LOOPBACK_CONFLIST_NAME: &str = "10-loopback.conflist";
/// A CNI network of the loopback interface alone: no host interfaces, bridges or firewall
/// rules to clean up after a test. containerd 1.6 refuses a pod whose network result has no
/// address for `eth0` ("failed to find network info for sandbox"), so the `static` IPAM
/// plugin, run as the last plugin of the chain, answers one: an address of TEST-NET-1 that
/// is configured nowhere (static touches no namespace, and its DEL does nothing).
pub const LOOPBACK_CONFLIST: &str = r#"{"cniVersion":"0.4.0","name":"bungeo-loopback","plugins":[{"type":"loopback"},{"type":"static","ipam":{"addresses":[{"address":"192.0.2.10/24"}]}}]}"#;

/// containerd's config (version 2): CRI on, oom_score_adj restricted (no CAP_SYS_RESOURCE
/// here), cgroupfs for runc, registries from `certs_d`, the test registry's pause image as
/// the sandbox image, and nothing written outside `base`.
fn config_toml(
    root: &Path,
    state: &Path,
    socket: &Path,
    certs_d: &Path,
    cni_conf: &Path,
    cni_bin: &Path,
    base: &Path,
) -> String {
    let s = |p: &Path| toml_string(&p.to_string_lossy());
    format!(
        r#"version = 2
root = {root}
state = {state}
# Snapshotters that cannot work here only slow the start and fill the log.
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = {socket}

[ttrpc]
  address = {ttrpc}

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {sandbox_image}
  restrict_oom_score_adj = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = false

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = {cni_bin}
  conf_dir = {cni}

[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = {certs}
"#,
        root = s(root),
        state = s(state),
        socket = s(socket),
        ttrpc = s(&socket.with_extension("sock.ttrpc")),
        opt = s(&base.join("opt")),
        cni = s(cni_conf),
        cni_bin = s(cni_bin),
        certs = s(certs_d),
        sandbox_image = toml_string(PAUSE_REFERENCE),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_points_everything_into_the_temp_dir() {
        let base = Path::new("/tmp/x");
        let text = config_toml(
            &base.join("root"),
            &base.join("state"),
            &base.join("c.sock"),
            &base.join("certs.d"),
            &base.join("cni"),
            Path::new("/usr/lib/cni"),
            base,
        );
        assert!(text.contains("restrict_oom_score_adj = true"));
        assert!(text.contains("SystemdCgroup = false"));
        assert!(text.contains("config_path = \"/tmp/x/certs.d\""));
        assert!(text.contains("path = \"/tmp/x/opt\""));
        assert!(text.contains("address = \"/tmp/x/c.sock.ttrpc\""));
        assert!(text.contains("sandbox_image = \"docker.io/bungeo/pause:1\""));
        assert!(text.contains("bin_dir = \"/usr/lib/cni\""));
        assert!(text.contains("conf_dir = \"/tmp/x/cni\""));
    }
}
