//! The `bungeo` process itself: one daemon per state dir, clean shutdown on signals, the
//! embedded default config, the socket's mode, and the RuntimeService basics over CRI.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bungeo_tests::bungeo::{Bungeo, bungeo_binary};
use bungeo_tests::cri::Cri;
use bungeo_tests::fakeregistry::FakeRegistry;
use bungeo_tests::images;
use bungeo_tests::layer::{Compression, Flavor, Layer, LayerTree, SeededBytes};
use bungeo_tests::process::{Process, tail};
use bungeo_tests::registryhosts::{RegistryHosts, toml_string};
use k8s_cri::v1::{CgroupDriver, CheckpointContainerRequest, ListContainersRequest};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic::Code;

/// How long a refused second daemon may take to give up.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// A config whose CNI dir is empty and private, so nothing on the host decides NetworkReady.
fn config_text(dir: &Path) -> String {
    format!(
        "[cni]\nconf_dir = {}\n",
        toml_string(&dir.join("cni").to_string_lossy())
    )
}

async fn start() -> Result<(Bungeo, tempfile::TempDir)> {
    let dir = tempfile::Builder::new()
        .prefix("bungeo-daemon-test-")
        .tempdir()?;
    let mut config = RegistryHosts::default().bungeo_toml();
    config.push_str(&config_text(dir.path()));
    Ok((Bungeo::start_with_config(&config).await?, dir))
}

/// Runs `bungeo` with `args` to its end (killed after `timeout`); its status and stderr.
fn run_to_end(
    args: &[&std::ffi::OsStr],
    dir: &Path,
    timeout: Duration,
) -> Result<(ExitStatus, String)> {
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut cmd = Command::new(bungeo_binary());
    cmd.args(args);
    let started = Instant::now();
    let mut p = Process::spawn("second bungeo", cmd, &out, &err)?;
    loop {
        if let Some(status) = p.exited()? {
            return Ok((status, tail(&err, 50)));
        }
        ensure!(
            started.elapsed() < timeout,
            "bungeo {args:?} still runs after {timeout:?}; stderr:\n{}",
            tail(&err, 50)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_state_dir_refuses_to_start() -> Result<()> {
    let (first, _dir) = start().await?;
    let other = tempfile::tempdir()?;
    let pid = first.pid().context("first bungeo has no pid")?;
    let (status, stderr) = run_to_end(
        &[
            "--config".as_ref(),
            first.config().as_os_str(),
            "--root".as_ref(),
            other.path().join("root").as_os_str(),
            "--state".as_ref(),
            first.state().as_os_str(),
            "--listen".as_ref(),
            other.path().join("other.sock").as_os_str(),
        ],
        other.path(),
        REFUSAL_TIMEOUT,
    )?;
    ensure!(!status.success(), "the second daemon exited with {status}");
    ensure!(
        stderr.contains("already running"),
        "stderr does not say another bungeo is already running:\n{stderr}"
    );
    ensure!(
        stderr.contains(&first.state().display().to_string()) && stderr.contains(&pid.to_string()),
        "stderr does not name the state dir {} and pid {pid}:\n{stderr}",
        first.state().display()
    );
    ensure!(
        !other.path().join("other.sock").exists(),
        "the refused daemon left a socket behind"
    );
    ensure!(first.socket().exists(), "the first daemon's socket is gone");
    let version = Cri::connect(first.socket()).await?.version().await?;
    ensure!(
        version.runtime_name == "bungeo",
        "first daemon after the refusal: {version:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_socket_refuses_to_start() -> Result<()> {
    let (first, _dir) = start().await?;
    let other = tempfile::tempdir()?;
    let (status, stderr) = run_to_end(
        &[
            "--config".as_ref(),
            first.config().as_os_str(),
            "--root".as_ref(),
            other.path().join("root").as_os_str(),
            "--state".as_ref(),
            other.path().join("state").as_os_str(),
            "--listen".as_ref(),
            first.socket().as_os_str(),
        ],
        other.path(),
        REFUSAL_TIMEOUT,
    )?;
    ensure!(!status.success(), "the second daemon exited with {status}");
    ensure!(
        stderr.contains(&first.socket().display().to_string()) && stderr.contains("in use"),
        "stderr does not say the socket {} is in use:\n{stderr}",
        first.socket().display()
    );
    Cri::connect(first.socket())
        .await?
        .version()
        .await
        .context("the first daemon after the refusal")?;
    Ok(())
}

async fn stops_cleanly_on(signal: Signal) -> Result<()> {
    let (mut daemon, _dir) = start().await?;
    let socket = daemon.socket().to_path_buf();
    let pid = daemon.pid().context("bungeo has no pid")?;
    kill(Pid::from_raw(i32::try_from(pid)?), signal)?;
    let status = daemon.wait_exit(Duration::from_secs(15))?;
    ensure!(
        status.code() == Some(0),
        "bungeo exited with {status} after {signal}; log:\n{}",
        daemon.log_tail(20)
    );
    ensure!(
        !socket.exists(),
        "{} is left after {signal}",
        socket.display()
    );
    let log = std::fs::read_to_string(daemon.log())?;
    ensure!(
        log.contains(signal.as_str()),
        "the log does not say {signal} was received:\n{}",
        daemon.log_tail(20)
    );
    // The lock went with it: the next daemon starts on the same directories.
    daemon.restart().await?;
    Cri::connect(daemon.socket()).await?.version().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_removes_the_socket() -> Result<()> {
    stops_cleanly_on(Signal::SIGTERM).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_cleanly_and_removes_the_socket() -> Result<()> {
    stops_cleanly_on(Signal::SIGINT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_default_is_a_config_that_starts_a_daemon() -> Result<()> {
    let out = Command::new(bungeo_binary())
        .args(["config", "default"])
        .output()
        .context("run bungeo config default")?;
    ensure!(
        out.status.success(),
        "bungeo config default: {}",
        out.status
    );
    let text = String::from_utf8(out.stdout).context("bungeo config default is not UTF-8")?;
    for key in [
        "root = \"/var/lib/bungeo\"",
        "state = \"/run/bungeo\"",
        "listen = \"/run/bungeo/bungeo.sock\"",
        "log_level = ",
        "cgroup_driver = \"cgroupfs\"",
        "[image]",
        "max_concurrent_downloads = ",
        "[registries.hosts]",
        "[cni]",
    ] {
        ensure!(
            text.contains(key),
            "bungeo config default lacks {key:?}:\n{text}"
        );
    }
    // The harness overrides --root, --state and --listen with flags, so nothing touches /var
    // or /run; everything else is the printed default.
    let daemon = Bungeo::start_with_config(&text).await?;
    let mut cri = Cri::connect(daemon.socket()).await?;
    let version = cri.version().await?;
    ensure!(
        version.runtime_name == "bungeo" && version.runtime_api_version == "v1",
        "{version:?}"
    );
    let status = cri.status(true).await?;
    let config: serde_json::Value = serde_json::from_str(
        status
            .info
            .get("config")
            .context("verbose Status has no config")?,
    )?;
    ensure!(
        config["root"] == daemon.root().to_string_lossy().as_ref()
            && config["listen"] == daemon.socket().to_string_lossy().as_ref(),
        "the effective config does not show the flags over the file: {config}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_runtime_basics_on_a_root_only_socket() -> Result<()> {
    let (daemon, dir) = start().await?;
    let meta = std::fs::metadata(daemon.socket())?;
    ensure!(
        meta.file_type().is_socket(),
        "{} is not a socket",
        daemon.socket().display()
    );
    ensure!(
        meta.permissions().mode() & 0o7777 == 0o660,
        "socket mode {:o}, want 660",
        meta.permissions().mode() & 0o7777
    );
    ensure!(meta.uid() == 0, "socket owned by uid {}", meta.uid());
    let log = std::fs::read_to_string(daemon.log())?;
    ensure!(
        log.contains("serving CRI"),
        "no start message on stderr:\n{}",
        daemon.log_tail(20)
    );

    let mut cri = Cri::connect(daemon.socket()).await?;
    let version = cri.version().await?;
    ensure!(
        version.runtime_name == "bungeo" && version.runtime_api_version == "v1",
        "{version:?}"
    );

    let status = cri.status(false).await?;
    let conditions = status.status.context("Status without status")?.conditions;
    let condition = |t: &str| conditions.iter().find(|c| c.r#type == t);
    let runtime = condition("RuntimeReady").context("no RuntimeReady condition")?;
    ensure!(runtime.status, "RuntimeReady is false: {runtime:?}");
    let network = condition("NetworkReady").context("no NetworkReady condition")?;
    // The harness gives the daemon an empty CNI conf dir: bungeo writes its default bridge
    // network there at start, whose plugins are installed, so the network is ready.
    ensure!(
        network.status && network.reason.is_empty(),
        "NetworkReady must be true with the embedded default network: {network:?}"
    );
    let conflist = dir.path().join("cni").join("10-bungeo.conflist");
    ensure!(conflist.exists(), "{} was not written", conflist.display());
    ensure!(
        status.info.is_empty(),
        "info without verbose: {:?}",
        status.info
    );

    let runtime_config = cri.runtime_config().await?;
    let driver = runtime_config
        .linux
        .context("RuntimeConfig without linux")?
        .cgroup_driver();
    ensure!(driver == CgroupDriver::Cgroupfs, "cgroup driver {driver:?}");

    // A call this build does not have answers Unimplemented, naming itself.
    let err = cri
        .runtime
        .checkpoint_container(CheckpointContainerRequest::default())
        .await
        .err()
        .context("CheckpointContainer succeeded")?;
    ensure!(
        err.code() == Code::Unimplemented && err.message().contains("CheckpointContainer"),
        "CheckpointContainer: {:?} {}",
        err.code(),
        err.message()
    );
    let listed = cri
        .runtime
        .list_containers(ListContainersRequest::default())
        .await
        .context("ListContainers")?
        .into_inner();
    ensure!(
        listed.containers.is_empty(),
        "containers on a new daemon: {:?}",
        listed.containers
    );
    Ok(())
}

/// Files (not directories) below `dir`.
fn files_below(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("read {}", d.display()))? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            } else {
                out.push(entry.path());
            }
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_pull_cancels_it_and_exits_cleanly() -> Result<()> {
    // One layer of incompressible data whose transfer the registry holds half way.
    let mut tree = LayerTree::new();
    tree.file("data.bin", 0o644, SeededBytes::new(7).take(2 << 20));
    let layer = Layer::new(&tree.tar()?, Compression::Gzip, Flavor::Oci)?;
    let image = images::derived(&[layer], "sigterm-mid-pull", false)?;
    let registry = FakeRegistry::start().await?;
    registry.publish("held/busybox", "t", &image);
    let held = &image.host_layers()[0].blob;
    let _stall = registry.stall_blob(&held.digest, held.data.len() / 2);
    let hosts = RegistryHosts {
        plain_http: vec![registry.host()],
        ..RegistryHosts::default()
    };
    let mut daemon = Bungeo::start(&hosts).await?;
    let reference = format!("{}/held/busybox:t", registry.host());
    let pulling = {
        let (mut cri, reference) = (Cri::connect(daemon.socket()).await?, reference.clone());
        tokio::spawn(async move { cri.pull(&reference, None).await })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while registry.blob_fetches_in("held/busybox", &held.digest) == 0 {
        ensure!(
            Instant::now() < deadline,
            "the pull never reached the held layer"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = daemon.pid().context("bungeo has no pid")?;
    kill(Pid::from_raw(i32::try_from(pid)?), Signal::SIGTERM)?;
    // In-flight calls get the daemon's grace period (10 s), then pulls are cancelled.
    let status = tokio::task::block_in_place(|| daemon.wait_exit(Duration::from_secs(30)))?;
    ensure!(
        status.code() == Some(0),
        "bungeo exited with {status} after SIGTERM mid-pull; log:\n{}",
        daemon.log_tail(30)
    );
    let err = match pulling.await? {
        Ok(id) => anyhow::bail!("the held pull finished with {id} although the blob never did"),
        Err(e) => e,
    };
    ensure!(
        err.code() == Code::Cancelled && err.message().contains("shutting down"),
        "the cancelled pull answered {:?} {}",
        err.code(),
        err.message()
    );
    ensure!(
        !daemon.socket().exists(),
        "the socket is left after SIGTERM"
    );
    let ingest = files_below(&daemon.root().join("content/ingest"))?;
    ensure!(
        ingest.is_empty(),
        "temp files left by the cancelled pull: {ingest:?}"
    );

    daemon.restart().await?;
    let mut cri = Cri::connect(daemon.socket()).await?;
    ensure!(
        cri.list_images(None).await?.is_empty(),
        "a cancelled pull is listed after restart"
    );
    let snapshots: Vec<_> = std::fs::read_dir(daemon.root().join("snapshots"))?.collect();
    ensure!(
        snapshots.is_empty(),
        "snapshots left by a cancelled pull after restart: {snapshots:?}"
    );
    Ok(())
}
