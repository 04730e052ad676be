//! `hack/bench streaming`: exec and port-forward through the CRI streaming servers of bungeo
//! and containerd in one run, interleaved: ExecSync round trip (`true`), streaming exec round
//! trip (Exec call, SPDY upgrade, streams, `true`, exit status), and port-forward throughput
//! (an HTTP GET of 128 MiB from busybox httpd in the pod, over SPDY as kubectl speaks it).
//! Prints p50/p95 and MiB/s with ratios against the goals.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bungeo_tests::bungeo::Bungeo;
use bungeo_tests::containerd::Containerd;
use bungeo_tests::cri::Cri;
use bungeo_tests::images::{self, Catalog, PAUSE, PAUSE_REFERENCE, PLAIN, Pusher};
use bungeo_tests::leftovers;
use bungeo_tests::registry::Registry;
use bungeo_tests::registryhosts::{RegistryHosts, toml_string};
use bungeo_tests::streaming::exec::{self, Options, Transport};
use bungeo_tests::streaming::portforward::{self, PortForwarder};
use clap::Parser;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ExecRequest, ExecSyncRequest,
    ImageSpec, LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, PortForwardRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopPodSandboxRequest,
};

#[derive(Parser)]
#[command(about = "Exec latency and port-forward throughput: bungeo vs containerd")]
struct Args {
    /// Round trips per exec kind and daemon.
    #[arg(long, default_value_t = 50)]
    iterations: usize,
    /// MiB per port-forward transfer.
    #[arg(long, default_value_t = 128)]
    mib: usize,
    /// Port-forward transfers per daemon.
    #[arg(long, default_value_t = 3)]
    transfers: usize,
}

const POD_NAMESPACE: &str = "bungeo-bench";
const CGROUP_ROOT: &str = "bungeo-bench-streaming";
const HTTP_PORT: u16 = 8080;

struct Daemon {
    name: &'static str,
    cri: Cri,
    logs: tempfile::TempDir,
    pod: Option<String>,
    container: String,
    exec_sync: Vec<Duration>,
    exec_stream: Vec<Duration>,
    /// MiB/s of each transfer.
    forward: Vec<f64>,
}

fn namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

impl Daemon {
    async fn new(name: &'static str, socket: &Path) -> Result<Self> {
        Ok(Self {
            name,
            cri: Cri::connect(socket).await?,
            logs: tempfile::Builder::new()
                .prefix("bungeo-bench-logs-")
                .tempdir()
                .context("create the pod log directory")?,
            pod: None,
            container: String::new(),
            exec_sync: Vec::new(),
            exec_stream: Vec::new(),
            forward: Vec::new(),
        })
    }

    /// One pod running busybox httpd with a `mib` MiB random file to serve.
    async fn setup(&mut self, image: &str, mib: usize) -> Result<()> {
        let sandbox = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "streaming".into(),
                uid: format!("bench-streaming-{}", self.name),
                namespace: POD_NAMESPACE.into(),
                attempt: 0,
            }),
            hostname: "streaming".into(),
            log_directory: self.logs.path().to_string_lossy().into_owned(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: format!("/{CGROUP_ROOT}/{}", self.name),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        std::fs::create_dir_all(self.logs.path().join("httpd"))?;
        let rt = &mut self.cri.runtime;
        let pod = rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(sandbox.clone()),
                runtime_handler: String::new(),
            })
            .await
            .with_context(|| format!("{}: RunPodSandbox", self.name))?
            .into_inner()
            .pod_sandbox_id;
        self.pod = Some(pod.clone());
        let script = format!(
            "mkdir -p /www && head -c {} /dev/urandom > /www/big && exec /bin/busybox httpd -f -p {HTTP_PORT} -h /www",
            mib << 20
        );
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: "httpd".into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            command: vec!["sh".into(), "-c".into(), script],
            log_path: "httpd/0.log".into(),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod,
                config: Some(config),
                sandbox_config: Some(sandbox),
            })
            .await
            .with_context(|| format!("{}: CreateContainer", self.name))?
            .into_inner()
            .container_id;
        rt.start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .with_context(|| format!("{}: StartContainer", self.name))?;
        self.container = id;
        // Ready when httpd answers inside the pod.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self
                .cri
                .runtime
                .exec_sync(ExecSyncRequest {
                    container_id: self.container.clone(),
                    cmd: vec![
                        "wget".into(),
                        "-q".into(),
                        "-O".into(),
                        "/dev/null".into(),
                        format!("http://127.0.0.1:{HTTP_PORT}/big"),
                    ],
                    timeout: 30,
                })
                .await
                .with_context(|| format!("{}: ExecSync wget", self.name))?
                .into_inner();
            if r.exit_code == 0 {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{}: httpd not answering",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn exec_sync_once(&mut self) -> Result<Duration> {
        let t = Instant::now();
        let r = self
            .cri
            .runtime
            .exec_sync(ExecSyncRequest {
                container_id: self.container.clone(),
                cmd: vec!["true".into()],
                timeout: 10,
            })
            .await
            .with_context(|| format!("{}: ExecSync true", self.name))?
            .into_inner();
        let took = t.elapsed();
        ensure!(
            r.exit_code == 0,
            "{}: true exited {}",
            self.name,
            r.exit_code
        );
        Ok(took)
    }

    async fn exec_stream_once(&mut self) -> Result<Duration> {
        let opts = Options::new(Transport::SPDY);
        let t = Instant::now();
        let url = self
            .cri
            .runtime
            .exec(ExecRequest {
                container_id: self.container.clone(),
                cmd: vec!["true".into()],
                tty: false,
                stdin: false,
                stdout: true,
                stderr: true,
            })
            .await
            .with_context(|| format!("{}: Exec", self.name))?
            .into_inner()
            .url;
        let f = exec::exec(&url, &opts, None, &[])
            .await
            .with_context(|| format!("{}: exec over SPDY at {url}", self.name))?;
        let took = t.elapsed();
        ensure!(
            f.status.code == Some(0),
            "{}: streaming exec status {:?}",
            self.name,
            f.status.raw
        );
        Ok(took)
    }

    async fn forward_once(&mut self, mib: usize) -> Result<f64> {
        let pod = self.pod.clone().context("no pod")?;
        let t = Instant::now();
        let url = self
            .cri
            .runtime
            .port_forward(PortForwardRequest {
                pod_sandbox_id: pod,
                port: vec![i32::from(HTTP_PORT)],
            })
            .await
            .with_context(|| format!("{}: PortForward", self.name))?
            .into_inner()
            .url;
        let pf = PortForwarder::connect(&url, portforward::Transport::SPDY).await?;
        let mut conn = pf.dial(HTTP_PORT).await?;
        let (status, body) = portforward::http_get(&mut conn, "/big").await?;
        let took = t.elapsed();
        ensure!(
            status == 200 && body.len() == mib << 20,
            "{}: GET /big: {status}, {} bytes",
            self.name,
            body.len()
        );
        Ok(mib as f64 / took.as_secs_f64())
    }

    async fn clean_up(&mut self) {
        if let Some(pod) = self.pod.take() {
            let rt = &mut self.cri.runtime;
            if let Err(e) = rt
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: pod.clone(),
                })
                .await
            {
                eprintln!("{}: cleanup: StopPodSandbox: {e}", self.name);
            }
            if let Err(e) = rt
                .remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: pod,
                })
                .await
            {
                eprintln!("{}: cleanup: RemovePodSandbox: {e}", self.name);
            }
        }
        leftovers::remove_cgroup_tree(&format!("/{CGROUP_ROOT}/{}", self.name));
        for hierarchy in leftovers::cgroup_hierarchies() {
            let _ = std::fs::remove_dir(hierarchy.join(CGROUP_ROOT));
        }
    }
}

fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.iterations > 0 && args.transfers > 0 && args.mib > 0,
        "--iterations, --transfers and --mib must be at least 1"
    );
    let registry = Registry::start()?;
    let catalog = Catalog::build(&images::read_busybox()?, false)?;
    let pusher = Pusher::new(&registry.host(), None);
    images::push_all(&pusher, &catalog, &[PLAIN]).await?;
    pusher
        .push(PAUSE.repo, Some(PAUSE.tag), catalog.get(PAUSE)?)
        .await?;
    let hosts = RegistryHosts {
        plain_http: vec![registry.host()],
        mirrors: BTreeMap::from([("docker.io".to_string(), vec![registry.host()])]),
        ..Default::default()
    };
    let mut config = hosts.bungeo_toml();
    if let Some(shim) = std::env::var_os("BUNGEO_SHIM_BIN").map(PathBuf::from) {
        config.push_str(&format!(
            "\n[shim]\nbinary = {}\n",
            toml_string(&shim.to_string_lossy())
        ));
    }
    let bungeo = Bungeo::start_with_config(&config).await?;
    let containerd = Containerd::start(&hosts).await?;
    let image = PLAIN.at(&registry.host());
    let mut daemons = [
        Daemon::new("bungeo", bungeo.socket()).await?,
        Daemon::new("containerd", containerd.socket()).await?,
    ];
    for d in daemons.iter_mut() {
        d.cri
            .pull(&image, None)
            .await
            .with_context(|| format!("{}: pull {image}", d.name))?;
    }
    daemons[1]
        .cri
        .pull(PAUSE_REFERENCE, None)
        .await
        .context("containerd: pull the pause image")?;
    let result = async {
        for d in daemons.iter_mut() {
            d.setup(&image, args.mib).await?;
        }
        // One of each first, unmeasured: connections and caches warm.
        for d in daemons.iter_mut() {
            d.exec_sync_once().await?;
            d.exec_stream_once().await?;
        }
        for _ in 0..args.iterations {
            for d in daemons.iter_mut() {
                let t = d.exec_sync_once().await?;
                d.exec_sync.push(t);
                let t = d.exec_stream_once().await?;
                d.exec_stream.push(t);
            }
        }
        for _ in 0..args.transfers {
            for d in daemons.iter_mut() {
                let r = d.forward_once(args.mib).await?;
                d.forward.push(r);
            }
        }
        anyhow::Ok(())
    }
    .await;
    for d in daemons.iter_mut() {
        d.clean_up().await;
    }
    result?;
    report(&args, &daemons);
    Ok(())
}

fn report(args: &Args, daemons: &[Daemon; 2]) {
    let [b, c] = daemons;
    println!(
        "{} round trips per exec kind, {} port-forward transfers of {} MiB, per daemon, interleaved",
        args.iterations, args.transfers, args.mib
    );
    println!(
        "{:<44} {:>12} {:>12} {:>8}",
        "", "bungeo", "containerd", "ratio"
    );
    let row = |label: &str, vb: &[Duration], vc: &[Duration], p: f64| {
        let (x, y) = (ms(percentile(vb, p)), ms(percentile(vc, p)));
        println!("{label:<44} {x:>10.2}ms {y:>10.2}ms {:>7.2}x", x / y);
    };
    row("ExecSync `true` p50", &b.exec_sync, &c.exec_sync, 0.5);
    row("ExecSync `true` p95", &b.exec_sync, &c.exec_sync, 0.95);
    row(
        "exec `true` over SPDY (URL+upgrade+exit) p50",
        &b.exec_stream,
        &c.exec_stream,
        0.5,
    );
    row(
        "exec `true` over SPDY (URL+upgrade+exit) p95",
        &b.exec_stream,
        &c.exec_stream,
        0.95,
    );
    let (fb, fc) = (median(&b.forward), median(&c.forward));
    println!(
        "{:<44} {fb:>8.1}MiB/s {fc:>8.1}MiB/s {:>7.2}x",
        "port-forward GET over SPDY (median)",
        fb / fc
    );
    let verdict = |ok: bool| if ok { "MET" } else { "NOT MET" };
    let sync = ms(percentile(&b.exec_sync, 0.5)) / ms(percentile(&c.exec_sync, 0.5));
    let stream = ms(percentile(&b.exec_stream, 0.5)) / ms(percentile(&c.exec_stream, 0.5));
    println!(
        "goal: ExecSync latency p50 <= 0.5x containerd's: {sync:.2}x -> {}",
        verdict(sync <= 0.5)
    );
    println!(
        "goal: streaming exec latency p50 <= 0.5x containerd's: {stream:.2}x -> {}",
        verdict(stream <= 0.5)
    );
    println!(
        "goal: port-forward throughput >= containerd's: {:.2}x -> {}",
        fb / fc,
        verdict(fb >= fc)
    );
}
