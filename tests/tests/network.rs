//! Pod networking through CNI, run against bungeo and against containerd (the reference):
//! pods on a bridge network talking to each other, pod IPs, DNS, hostname and hosts files,
//! host-network pods, hostPorts, a failing plugin, IP release at StopPodSandbox, NetworkReady
//! following the conf dir, and (bungeo only) its default network, DEL after a daemon restart
//! and UpdateRuntimeConfig's pod CIDR.
//!
//! Each daemon gets a bridge and subnet of its own ([`TestNetwork`]): bungeo through the
//! harness's `[cni]` table (an empty conf dir, so bungeo writes its default network on that
//! bridge), containerd through a conflist of the same shape. Traffic goes only between pods
//! of one test network and from this process to pod addresses and to the bridge's own
//! address. Every check removes its pods and then checks that their veths, IP allocations,
//! firewall rules, cached results and network namespaces are gone. The bridge plugin turns
//! `net.ipv4.ip_forward` on; that stays, as it does on any node running pods.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bungeo_tests::bungeo::{Bungeo, BungeoCni};
use bungeo_tests::containerd::{Containerd, ContainerdCni};
use bungeo_tests::cri::{Cri, Target};
use bungeo_tests::ensure_eq;
use bungeo_tests::images::{self, Catalog, PAUSE, PLAIN, Pusher};
use bungeo_tests::net::{self, TestNetwork};
use bungeo_tests::registry::Registry;
use bungeo_tests::registryhosts::RegistryHosts;
use bungeo_tests::scene::{self, Layout, RESOLV_CONF, security, test_dns};
use bungeo_tests::suite::{CHECK_TIMEOUT, Daemon};
use k8s_cri::v1::{
    ExecSyncResponse, ListPodSandboxRequest, NamespaceMode, NetworkConfig, PodSandboxConfig,
    PodSandboxFilter, PodSandboxStatus, PodSandboxStatusRequest, PortMapping, Protocol,
    RemovePodSandboxRequest, RuntimeConfig, StopPodSandboxRequest, UpdateRuntimeConfigRequest,
};
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::Value;
use tokio::runtime::Runtime;

/// The future a check returns.
type CheckFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>;

/// One check: its name, its body, and the target it is limited to.
#[derive(Clone, Copy)]
struct Check {
    name: &'static str,
    run: fn(Ctx) -> CheckFuture,
    only: Option<Target>,
}

macro_rules! check {
    ($f:ident) => {
        Check {
            name: stringify!($f),
            run: |ctx| Box::pin($f(ctx)),
            only: None,
        }
    };
    ($f:ident, only = $t:expr) => {
        Check {
            name: stringify!($f),
            run: |ctx| Box::pin($f(ctx)),
            only: Some($t),
        }
    };
}

fn main() {
    run(vec![
        check!(pods_exchange_data),
        check!(pod_ip_in_subnet),
        check!(dns_hostname_and_hosts),
        check!(host_network_pod),
        check!(host_port),
        check!(stop_releases_ip),
        check!(failing_plugin_leaves_nothing),
        check!(network_ready_follows_conf_dir),
        check!(dual_stack),
        check!(default_network_written, only = Target::Bungeo),
        check!(del_after_restart, only = Target::Bungeo),
        check!(pod_cidr_update, only = Target::Bungeo),
    ])
}

/// The Kubernetes namespace of every test pod.
const POD_NAMESPACE: &str = "bungeo-e2e-network";
/// The first component of every test pod's cgroup parent.
const CGROUP_ROOT: &str = "bungeo-e2e-network";
/// Name of the bridge network containerd's conflists define.
const CONTAINERD_NETWORK: &str = "bungeo-e2e";
/// The port the test web servers listen on inside their pods.
const HTTP_PORT: u16 = 8080;
/// How long a pod may take to get where a check waits for it.
const WAIT: Duration = Duration::from_secs(30);
/// The type of the failing CNI plugin.
const FAKE_PLUGIN: &str = "bungeo-e2e-fake";
/// What the failing plugin says.
const FAKE_MESSAGE: &str = "bungeo-e2e-fake refuses the pod";

// ---------------------------------------------------------------------------------------
// The runner: a registry with the test images, one daemon per target on a test network,
// one trial per (target, check).

/// What every check shares. Fields drop in order: daemons first, the runtime last.
struct Fixture {
    daemons: Vec<(Target, OnceLock<std::result::Result<Daemon, String>>)>,
    registry: Registry,
    hosts: RegistryHosts,
    rt: Runtime,
}

impl Fixture {
    fn setup(targets: &[Target]) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .context("tokio runtime")?;
        let removed = net::remove_stale_bridges();
        if removed > 0 {
            eprintln!("removed {removed} test bridges a crashed run left");
        }
        let catalog = Catalog::build(&images::read_busybox()?, false)?;
        let registry = Registry::start()?;
        rt.block_on(async {
            let pusher = Pusher::new(&registry.host(), None);
            images::push_all(&pusher, &catalog, &[PLAIN]).await?;
            // containerd's sandbox image, as images::PAUSE_REFERENCE names it.
            pusher
                .push(PAUSE.repo, Some(PAUSE.tag), catalog.get(PAUSE)?)
                .await
                .map(drop)
        })?;
        let hosts = RegistryHosts {
            plain_http: vec![registry.host()],
            mirrors: [("docker.io".to_string(), vec![registry.host()])].into(),
            credentials: Default::default(),
        };
        Ok(Self {
            daemons: targets.iter().map(|t| (*t, OnceLock::new())).collect(),
            registry,
            hosts,
            rt,
        })
    }

    /// The shared daemon for `target`, started on first use.
    fn daemon(&self, target: Target) -> Result<&Daemon> {
        let (_, cell) = self
            .daemons
            .iter()
            .find(|(t, _)| *t == target)
            .with_context(|| format!("{target} is not a target of this run"))?;
        cell.get_or_init(|| {
            self.rt
                .block_on(start_daemon(target, &self.hosts))
                .map_err(|e| format!("{e:#}"))
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{target} did not start: {e}"))
    }

    /// The test image, as the daemons pull it.
    fn image(&self) -> String {
        PLAIN.at(&self.registry.host())
    }
}

/// bungeo with the harness's network (its default conflist on a test bridge), containerd
/// with a conflist of the same shape on a test bridge of its own.
async fn start_daemon(target: Target, hosts: &RegistryHosts) -> Result<Daemon> {
    Ok(match target {
        Target::Bungeo => Daemon::Bungeo(Bungeo::start(hosts).await?),
        Target::Containerd => Daemon::Containerd(
            Containerd::start_with_cni(
                hosts,
                ContainerdCni::bridge(TestNetwork::allocate()?, CONTAINERD_NETWORK, false),
            )
            .await?,
        ),
    })
}

/// What a check gets.
#[derive(Clone)]
struct Ctx {
    target: Target,
    cri: Cri,
    fx: Arc<Fixture>,
}

impl Ctx {
    fn daemon(&self) -> Result<&Daemon> {
        self.fx.daemon(self.target)
    }

    fn unique(&self, what: &str) -> String {
        format!("{what}-{}", self.target.name())
    }
}

type Shared = Arc<OnceLock<std::result::Result<Arc<Fixture>, String>>>;

fn run_trial(fx: &Shared, targets: &[Target], target: Target, check: Check) -> Result<(), Failed> {
    let fx = fx
        .get_or_init(|| {
            Fixture::setup(targets)
                .map(Arc::new)
                .map_err(|e| format!("suite setup failed: {e:#}"))
        })
        .as_ref()
        .map_err(|e| Failed::from(e.clone()))?
        .clone();
    let daemon = fx
        .daemon(target)
        .map_err(|e| Failed::from(format!("{e:#}")))?;
    let socket = daemon.socket().to_path_buf();
    let result = fx.rt.block_on(async {
        let cri = Cri::connect(&socket).await?;
        let ctx = Ctx {
            target,
            cri,
            fx: fx.clone(),
        };
        match tokio::time::timeout(CHECK_TIMEOUT, (check.run)(ctx)).await {
            Ok(r) => r,
            Err(_) => bail!("timed out after {CHECK_TIMEOUT:?}"),
        }
    });
    result.map_err(|e| {
        Failed::from(format!(
            "{e:#}\n--- last lines of the {target} log ---\n{}",
            daemon.log_tail(25)
        ))
    })
}

fn run(checks: Vec<Check>) -> ! {
    let args = Arguments::from_args();
    let targets = match Target::from_env() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e:#}");
            std::process::exit(2);
        }
    };
    let fixture: Shared = Arc::new(OnceLock::new());
    let mut trials = Vec::new();
    for target in &targets {
        for check in &checks {
            if check.only.is_some_and(|only| only != *target) {
                continue;
            }
            let (fx, all, target, check) = (fixture.clone(), targets.clone(), *target, *check);
            trials.push(Trial::test(
                format!("{}::{}", target.name(), check.name),
                move || run_trial(&fx, &all, target, check),
            ));
        }
    }
    let conclusion = libtest_mimic::run(&args, trials);
    let ran = fixture.get().is_some();
    // process::exit skips destructors: stop the daemons (and remove their bridges) first.
    match Arc::try_unwrap(fixture) {
        Ok(cell) => drop(cell.into_inner()),
        Err(_) => eprintln!("warning: a trial still holds the fixture; it is not torn down"),
    }
    if ran {
        // portmap's shared chains outlive the last pod; with no mapping left they go.
        net::remove_idle_hostport_chains();
        let left = net::node_leftovers();
        if !left.is_empty() {
            eprintln!(
                "the network suite left on the node:\n  {}",
                left.join("\n  ")
            );
            std::process::exit(101);
        }
    }
    conclusion.exit()
}

// ---------------------------------------------------------------------------------------
// Pods and containers of one check.

const LAYOUT: Layout = Layout {
    namespace: POD_NAMESPACE,
    cgroup_root: CGROUP_ROOT,
};

/// The network of a pod as the check saw it while the pod ran.
#[derive(Debug, Clone)]
struct PodNet {
    id: String,
    ip: IpAddr,
    netns: PathBuf,
    veth: String,
}

/// A check's pods (with their containers), log directory and cgroup parent, removed at its
/// end whatever happened: a [`scene::Scene`] with the test DNS config and the pod-level calls
/// of this suite.
struct Scene {
    base: scene::Scene,
    /// The busybox reference, pulled.
    image: String,
}

bungeo_tests::wraps_scene!(Scene, base);

impl Scene {
    async fn new(ctx: &Ctx, mut cri: Cri, check: &str) -> Result<Self> {
        let image = ctx.fx.image();
        cri.pull(&image, None)
            .await
            .with_context(|| format!("pull {image}"))?;
        let base = scene::Scene::new(cri, ctx.target, ctx.unique(check), LAYOUT)?;
        Ok(Self { base, image })
    }

    /// A pod named `name` on the pod network, with the test DNS config and its name as
    /// hostname.
    fn pod_config(&self, name: &str) -> PodSandboxConfig {
        PodSandboxConfig {
            dns_config: Some(test_dns()),
            ..self.base.pod_config(name)
        }
    }

    /// A pod `name` with the default config.
    async fn pod(&mut self, name: &str) -> Result<String> {
        let config = self.pod_config(name);
        self.run_pod(config).await
    }

    /// Creates and starts a container `name` running `command` in `pod`, in the pod's
    /// namespaces.
    async fn container(&mut self, pod: &str, name: &str, command: &[&str]) -> Result<String> {
        let sandbox = self.sandbox_config(pod)?;
        let mut config = scene::container(name, &self.image, command);
        security(&mut config).namespace_options = sandbox
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone());
        self.base.run(pod, config).await
    }

    /// A `sleep` container, for ExecSync.
    async fn sleeper(&mut self, pod: &str) -> Result<String> {
        self.container(pod, "sleeper", &["sleep", "3600"]).await
    }

    /// A busybox httpd on [`HTTP_PORT`] serving `/index.html` = `body`.
    async fn web_server(&mut self, pod: &str, body: &str) -> Result<String> {
        let script = format!(
            "mkdir -p /www && echo {body} > /www/index.html && \
             exec busybox httpd -f -p {HTTP_PORT} -h /www"
        );
        self.container(pod, "httpd", &["sh", "-c", &script]).await
    }

    async fn exec(&mut self, container: &str, cmd: &[&str]) -> Result<ExecSyncResponse> {
        self.base
            .exec(container, cmd, 20)
            .await
            .with_context(|| format!("ExecSync {cmd:?}"))
    }

    /// ExecSync that must exit 0; its stdout.
    async fn output(&mut self, container: &str, cmd: &[&str]) -> Result<String> {
        let r = self.exec(container, cmd).await?;
        ensure!(
            r.exit_code == 0,
            "{cmd:?} exited {}: {}{}",
            r.exit_code,
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        );
        Ok(String::from_utf8_lossy(&r.stdout).into_owned())
    }

    /// `wget` of `url` from `container`, retried until it answers (servers take a moment).
    /// Debian's static busybox wget crashes with `-T`: ExecSync's timeout bounds it instead.
    async fn fetch(&mut self, container: &str, url: &str) -> Result<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let r = self
                .exec(container, &["wget", "-q", "-O", "-", url])
                .await?;
            if r.exit_code == 0 {
                return Ok(String::from_utf8_lossy(&r.stdout).into_owned());
            }
            ensure!(
                Instant::now() < deadline,
                "wget {url} still fails after {WAIT:?}: exit {}: {}",
                r.exit_code,
                String::from_utf8_lossy(&r.stderr)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn status_full(&mut self, pod: &str, verbose: bool) -> Result<(PodSandboxStatus, Value)> {
        let r = self
            .cri
            .runtime
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod.to_string(),
                verbose,
            })
            .await
            .with_context(|| format!("PodSandboxStatus {pod}"))?
            .into_inner();
        let info = match r.info.get("info") {
            Some(text) => serde_json::from_str(text).context("verbose info is not JSON")?,
            None => Value::Null,
        };
        Ok((r.status.context("PodSandboxStatus without status")?, info))
    }

    /// The pod's IP and additional IPs from PodSandboxStatus.
    async fn ips(&mut self, pod: &str) -> Result<(String, Vec<String>)> {
        let (status, _) = self.status_full(pod, false).await?;
        let network = status.network.context("no network status")?;
        Ok((
            network.ip,
            network.additional_ips.into_iter().map(|p| p.ip).collect(),
        ))
    }

    /// Where the pod's network namespace is pinned: bungeo names it in its verbose info,
    /// containerd in the runtime spec of its verbose info.
    async fn netns(&mut self, pod: &str) -> Result<Option<PathBuf>> {
        let (_, info) = self.status_full(pod, true).await?;
        Ok(match self.target {
            Target::Bungeo => info["namespaces"]["net"].as_str().map(PathBuf::from),
            Target::Containerd => info["runtimeSpec"]["linux"]["namespaces"]
                .as_array()
                .and_then(|all| {
                    all.iter()
                        .find(|n| n["type"] == "network")
                        .and_then(|n| n["path"].as_str())
                })
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
        })
    }

    /// The pod's network as seen now: its IP (checked to be inside `network`), its netns
    /// and the node end of its veth.
    async fn observe(&mut self, pod: &str, network: &TestNetwork) -> Result<PodNet> {
        let (ip, _) = self.ips(pod).await?;
        let ip: IpAddr = ip
            .parse()
            .with_context(|| format!("pod IP {ip:?} is not an address"))?;
        ensure!(
            network.contains(&ip),
            "pod IP {ip} is not in {}",
            network.subnet()
        );
        let netns = self.netns(pod).await?.context("no network namespace")?;
        let veth = net::host_veth(&netns)?;
        ensure!(
            network.bridge_ports().contains(&veth),
            "veth {veth} is not on {} (ports {:?})",
            network.bridge(),
            network.bridge_ports()
        );
        Ok(PodNet {
            id: pod.to_string(),
            ip,
            netns,
            veth,
        })
    }

    async fn stop(&mut self, pod: &str) -> Result<()> {
        self.cri
            .runtime
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.to_string(),
            })
            .await
            .with_context(|| format!("StopPodSandbox {pod}"))?;
        Ok(())
    }

    async fn remove(&mut self, pod: &str) -> Result<()> {
        self.cri
            .runtime
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.to_string(),
            })
            .await
            .with_context(|| format!("RemovePodSandbox {pod}"))?;
        self.pods.retain(|(id, _)| id != pod);
        Ok(())
    }
}

/// Runs `body` in a fresh scene on `cri`, then tears the scene down; the body's error wins.
async fn with_scene<F>(ctx: &Ctx, cri: Cri, check: &str, body: F) -> Result<()>
where
    F: AsyncFnOnce(&mut Scene) -> Result<()>,
{
    scene::run_in(Scene::new(ctx, cri, check).await?, body).await
}

// ---------------------------------------------------------------------------------------
// What the daemons hold.

/// The CNI conf dir and test network of a daemon.
fn cni_of(daemon: &Daemon) -> Result<(&Path, &TestNetwork)> {
    Ok(match daemon {
        Daemon::Bungeo(b) => (
            b.cni_conf_dir(),
            b.network().context("bungeo has no test network")?,
        ),
        Daemon::Containerd(c) => (
            c.cni_conf_dir(),
            c.network().context("containerd has no test network")?,
        ),
    })
}

/// The host-local data dirs of every config in `conf_dir`, and `extra`.
fn allocation_dirs(conf_dir: &Path, extra: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![extra.to_path_buf()];
    let mut files: Vec<PathBuf> = std::fs::read_dir(conf_dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for file in files {
        if let Ok(text) = std::fs::read_to_string(&file)
            && let Ok(list) = serde_json::from_str::<Value>(&text)
        {
            dirs.extend(net::host_local_dirs(&list));
        }
    }
    dirs
}

/// IP allocations (path, owner) in `dirs` of `ip` or owned by `id`.
fn allocations_of(dirs: &[PathBuf], ip: Option<&IpAddr>, id: &str) -> Vec<(PathBuf, String)> {
    // Dirs may nest (a network's own data dir and the per-network dir below it).
    let found: std::collections::BTreeMap<PathBuf, String> = dirs
        .iter()
        .flat_map(|d| net::allocations(d))
        .filter(|(path, owner)| {
            owner == id
                || ip.is_some_and(|ip| path.file_name().is_some_and(|n| *n == *ip.to_string()))
        })
        .collect();
    found.into_iter().collect()
}

/// Whether the pin of a network namespace is still there (mounted or not).
fn netns_left(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

/// Fails with what is left of `pod`'s network: its IP allocation, veth, firewall rules,
/// cached CNI result and, once removed (`removed`), its network namespace.
fn ensure_released(pod: &PodNet, dirs: &[PathBuf], removed: bool) -> Result<()> {
    let mut left = Vec::new();
    for (path, owner) in allocations_of(dirs, Some(&pod.ip), &pod.id) {
        left.push(format!("IP allocation {} ({owner})", path.display()));
    }
    if net::link_exists(&pod.veth) {
        left.push(format!("veth {}", pod.veth));
    }
    for (family, table, rule) in net::all_rules() {
        if net::rule_addresses(&rule).contains(&pod.ip) {
            left.push(format!("IPv{family} {table} rule {rule}"));
        }
    }
    for name in net::cached_results(&pod.id) {
        left.push(format!("cached CNI result {}/{name}", net::LIBCNI_RESULTS));
    }
    if removed && netns_left(&pod.netns) {
        left.push(format!("network namespace {}", pod.netns.display()));
    }
    ensure!(
        left.is_empty(),
        "pod {} ({}) left: {left:?}",
        pod.id,
        pod.ip
    );
    Ok(())
}

/// The node's `NetworkReady` condition: (status, reason).
async fn network_ready(cri: &mut Cri) -> Result<(bool, String)> {
    let status = cri.status(false).await.context("Status")?;
    let condition = status
        .status
        .context("Status without status")?
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .context("no NetworkReady condition")?;
    Ok((condition.status, condition.reason))
}

/// Polls `NetworkReady` until it is `want`.
async fn wait_network_ready(cri: &mut Cri, want: bool) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        let (ready, reason) = network_ready(cri).await?;
        if ready == want {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "NetworkReady still {ready} ({reason}) after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes a file atomically (a watcher of the directory never sees it half-written).
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp-bungeo-e2e");
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
}

// ---------------------------------------------------------------------------------------
// Checks on the shared daemons.

async fn pods_exchange_data(ctx: Ctx) -> Result<()> {
    let daemon = ctx.daemon()?;
    let (conf_dir, network) = cni_of(daemon)?;
    let dirs = allocation_dirs(conf_dir, network.ipam_dir());
    let mut seen = Vec::new();
    let result = with_scene(&ctx, ctx.cri.clone(), "exchange", async |s| {
        let server_pod = s.pod("server").await?;
        let client_pod = s.pod("client").await?;
        let body = format!("hello-from-{}", s.unique);
        s.web_server(&server_pod, &body).await?;
        let client = s.sleeper(&client_pod).await?;
        let server_net = s.observe(&server_pod, network).await?;
        let client_net = s.observe(&client_pod, network).await?;
        seen = vec![server_net.clone(), client_net.clone()];
        ensure!(
            server_net.ip != client_net.ip,
            "both pods have {}",
            server_net.ip
        );
        let url = format!("http://{}:{HTTP_PORT}/index.html", server_net.ip);
        let got = s.fetch(&client, &url).await?;
        ensure_eq!(got.trim(), body, "what the client pod fetched from {url}");
        // And the node reaches the pod too (through the bridge's own address).
        let (status, got) = tokio::task::spawn_blocking(move || {
            net::http_get(SocketAddr::new(server_net.ip, HTTP_PORT), "/index.html")
        })
        .await??;
        ensure!(status.contains("200"), "status from the node: {status}");
        ensure_eq!(got.trim(), body, "what the node fetched");
        // The client pod's traffic leaves from its own address, which the server sees.
        let echo = s
            .output(
                &client,
                &["sh", "-c", "busybox ip -o -4 addr show dev eth0"],
            )
            .await?;
        ensure!(
            echo.contains(&format!("inet {}/", client_net.ip)),
            "eth0 of the client pod: {echo}"
        );
        Ok(())
    })
    .await;
    result?;
    for pod in &seen {
        ensure_released(pod, &dirs, true)?;
    }
    Ok(())
}

async fn pod_ip_in_subnet(ctx: Ctx) -> Result<()> {
    let daemon = ctx.daemon()?;
    let (conf_dir, network) = cni_of(daemon)?;
    let dirs = allocation_dirs(conf_dir, network.ipam_dir());
    let mut seen = None;
    with_scene(&ctx, ctx.cri.clone(), "ip", async |s| {
        let pod = s.pod("ip").await?;
        let (ip, additional) = s.ips(&pod).await?;
        ensure!(
            additional.is_empty(),
            "additional IPs of a single-stack pod: {additional:?}"
        );
        let pod_net = s.observe(&pod, network).await?;
        seen = Some(pod_net.clone());
        ensure_eq!(pod_net.ip.to_string(), ip, "status IP");
        let in_pod = net::pod_addresses(&pod_net.netns)?;
        ensure_eq!(in_pod, vec![pod_net.ip], "addresses of eth0 in the pod");
        let allocated = allocations_of(&dirs, Some(&pod_net.ip), &pod);
        ensure!(
            allocated.len() == 1 && allocated[0].1 == pod,
            "host-local allocation of {ip} for {pod} in {dirs:?}: {allocated:?}"
        );
        ensure_eq!(
            pod_net.netns.exists(),
            true,
            "netns {}",
            pod_net.netns.display()
        );
        Ok(())
    })
    .await?;
    if let Some(pod) = seen {
        ensure_released(&pod, &dirs, true)?;
    }
    Ok(())
}

async fn dns_hostname_and_hosts(ctx: Ctx) -> Result<()> {
    let (_, network) = cni_of(ctx.daemon()?)?;
    with_scene(&ctx, ctx.cri.clone(), "dns", async |s| {
        let pod = s.pod("dns-pod").await?;
        let c = s.sleeper(&pod).await?;
        ensure_eq!(
            s.output(&c, &["cat", "/etc/resolv.conf"]).await?,
            RESOLV_CONF,
            "resolv.conf from the DNS config"
        );
        ensure_eq!(
            s.output(&c, &["cat", "/etc/hostname"]).await?,
            "dns-pod\n",
            "/etc/hostname"
        );
        ensure_eq!(s.output(&c, &["hostname"]).await?, "dns-pod\n", "hostname");
        let hosts = s.output(&c, &["cat", "/etc/hosts"]).await?;
        let ip = s.observe(&pod, network).await?.ip;
        match s.target {
            // What kubelet expects of the runtime: localhost, and the pod's own name at its
            // IP.
            Target::Bungeo => {
                let lines: Vec<&str> = hosts.lines().collect();
                ensure!(lines.contains(&"127.0.0.1\tlocalhost"), "{hosts}");
                let want = format!("{ip}\tdns-pod");
                ensure_eq!(
                    lines.last().copied(),
                    Some(want.as_str()),
                    "last line of /etc/hosts:\n{hosts}"
                );
            }
            // containerd 1.6 copies the node's (kubelet mounts its own over it).
            Target::Containerd => {
                let node = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
                ensure_eq!(hosts, node, "containerd's /etc/hosts is the node's");
            }
        }

        // Without a DNS config, the node's resolv.conf.
        let mut plain = s.pod_config("dns-plain");
        plain.dns_config = None;
        let plain_pod = s.run_pod(plain).await?;
        let c = s.sleeper(&plain_pod).await?;
        let node = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        ensure_eq!(
            s.output(&c, &["cat", "/etc/resolv.conf"]).await?,
            node,
            "resolv.conf without a DNS config"
        );
        Ok(())
    })
    .await
}

async fn host_network_pod(ctx: Ctx) -> Result<()> {
    let daemon = ctx.daemon()?;
    let (conf_dir, network) = cni_of(daemon)?;
    let dirs = allocation_dirs(conf_dir, network.ipam_dir());
    with_scene(&ctx, ctx.cri.clone(), "hostnet", async |s| {
        let mut config = s.pod_config("hostnet");
        // kubelet sends no hostname and no DNS config for a pod on the node's network.
        config.hostname.clear();
        config.dns_config = None;
        let ns = config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .and_then(|s| s.namespace_options.as_mut())
            .context("namespace options")?;
        ns.network = NamespaceMode::Node as i32;
        let pod = s.run_pod(config).await?;
        let (ip, additional) = s.ips(&pod).await?;
        ensure_eq!(
            (ip.as_str(), additional.len()),
            ("", 0),
            "IPs of a host-network pod"
        );
        let c = s.sleeper(&pod).await?;
        let node_hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
        ensure_eq!(
            s.output(&c, &["hostname"]).await?,
            node_hostname,
            "hostname in a host-network pod"
        );
        let node_net = std::fs::read_link("/proc/self/ns/net")?;
        let pod_net = s.output(&c, &["readlink", "/proc/self/ns/net"]).await?;
        ensure_eq!(
            pod_net.trim(),
            node_net.to_string_lossy(),
            "network namespace of a host-network pod"
        );
        // No CNI call: nothing allocated, cached or pinned for it.
        let allocated = allocations_of(&dirs, None, &pod);
        ensure!(allocated.is_empty(), "IP allocated: {allocated:?}");
        let cached = net::cached_results(&pod);
        ensure!(cached.is_empty(), "CNI result cached: {cached:?}");
        ensure_eq!(s.netns(&pod).await?, None, "a network namespace of its own");
        Ok(())
    })
    .await
}

async fn host_port(ctx: Ctx) -> Result<()> {
    let daemon = ctx.daemon()?;
    let (conf_dir, network) = cni_of(daemon)?;
    let dirs = allocation_dirs(conf_dir, network.ipam_dir());
    let gateway = IpAddr::V4(network.gateway());
    let port = net::free_tcp_port()?;
    let mut seen = None;
    with_scene(&ctx, ctx.cri.clone(), "hostport", async |s| {
        let mut config = s.pod_config("hostport");
        config.port_mappings = vec![PortMapping {
            protocol: Protocol::Tcp as i32,
            container_port: i32::from(HTTP_PORT),
            host_port: i32::from(port),
            host_ip: String::new(),
        }];
        let pod = s.run_pod(config).await?;
        let body = format!("hostport-{}", s.unique);
        s.web_server(&pod, &body).await?;
        seen = Some(s.observe(&pod, network).await?);
        // The node's own addresses: the bridge's, and loopback (portmap's snat sets
        // route_localnet on the bridge and masquerades 127.0.0.1, so that works too).
        for host in [gateway, IpAddr::from([127, 0, 0, 1])] {
            let addr = SocketAddr::new(host, port);
            let deadline = Instant::now() + WAIT;
            let got = loop {
                match tokio::task::spawn_blocking(move || net::http_get(addr, "/index.html"))
                    .await?
                {
                    Ok((status, got)) if status.contains("200") => break got,
                    Ok(other) if Instant::now() > deadline => bail!("{addr}: {other:?}"),
                    Err(e) if Instant::now() > deadline => return Err(e),
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            };
            ensure_eq!(got.trim(), body, "GET http://{addr}/index.html");
        }
        Ok(())
    })
    .await?;
    let seen = seen.context("no pod")?;
    ensure_released(&seen, &dirs, true)?;
    let addr = SocketAddr::new(gateway, port);
    let after = tokio::task::spawn_blocking(move || net::http_get(addr, "/")).await?;
    ensure!(
        after.is_err(),
        "{addr} still answers after the pod is gone: {after:?}"
    );
    Ok(())
}

async fn stop_releases_ip(ctx: Ctx) -> Result<()> {
    let daemon = ctx.daemon()?;
    let (conf_dir, network) = cni_of(daemon)?;
    let dirs = allocation_dirs(conf_dir, network.ipam_dir());
    with_scene(&ctx, ctx.cri.clone(), "stop", async |s| {
        let pod = s.pod("stop").await?;
        let pod_net = s.observe(&pod, network).await?;
        ensure!(
            !allocations_of(&dirs, Some(&pod_net.ip), &pod).is_empty(),
            "no allocation of {} in {dirs:?}",
            pod_net.ip
        );
        s.stop(&pod).await?;
        ensure_released(&pod_net, &dirs, false).context("after StopPodSandbox")?;
        s.stop(&pod).await.context("StopPodSandbox again")?;
        s.remove(&pod)
            .await
            .context("RemovePodSandbox after the stop")?;
        ensure_released(&pod_net, &dirs, true).context("after RemovePodSandbox")?;
        // The address is free for the next pod (host-local may or may not hand out the same
        // one; it must hand out one).
        let next = s.pod("stop-next").await?;
        s.observe(&next, network).await?;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Checks with daemons of their own.

/// A daemon of the check's own for `ctx.target` with these CNI files in its conf dir and a
/// plugin dir holding `extra_plugins` (name, script) beside the system's plugins.
struct OwnDaemon {
    daemon: Daemon,
    cri: Cri,
    _bin: Option<tempfile::TempDir>,
}

impl OwnDaemon {
    async fn start(
        ctx: &Ctx,
        conf_files: Vec<(String, String)>,
        network: TestNetwork,
        extra_plugins: &[(&str, &str)],
    ) -> Result<Self> {
        let bin = if extra_plugins.is_empty() {
            None
        } else {
            let dir = tempfile::Builder::new()
                .prefix("bungeo-e2e-cni-bin-")
                .tempdir()
                .context("create a CNI bin dir")?;
            for (name, script) in extra_plugins {
                let path = dir.path().join(name);
                std::fs::write(&path, script)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            }
            Some(dir)
        };
        let daemon = match ctx.target {
            Target::Bungeo => {
                let mut bin_dirs = Vec::new();
                if let Some(d) = &bin {
                    bin_dirs = vec![d.path().to_path_buf(), PathBuf::from("/usr/lib/cni")];
                }
                Daemon::Bungeo(
                    Bungeo::start_with_cni(
                        &ctx.fx.hosts.bungeo_toml(),
                        BungeoCni {
                            conf_files,
                            bin_dirs,
                            network: Some(network),
                        },
                    )
                    .await?,
                )
            }
            Target::Containerd => {
                // containerd 1.6 searches one plugin dir: the system's plugins join ours.
                let bin_dir = match &bin {
                    Some(d) => {
                        for entry in std::fs::read_dir("/usr/lib/cni")?.flatten() {
                            std::os::unix::fs::symlink(
                                entry.path(),
                                d.path().join(entry.file_name()),
                            )?;
                        }
                        d.path().to_path_buf()
                    }
                    None => PathBuf::from("/usr/lib/cni"),
                };
                Daemon::Containerd(
                    Containerd::start_with_cni(
                        &ctx.fx.hosts,
                        ContainerdCni {
                            conf_files,
                            bin_dir,
                            network: Some(network),
                        },
                    )
                    .await?,
                )
            }
        };
        let cri = Cri::connect(daemon.socket()).await?;
        Ok(Self {
            daemon,
            cri,
            _bin: bin,
        })
    }
}

/// The failing plugin: logs its calls beside itself, refuses every ADD with a CNI error,
/// and has nothing to undo on DEL.
fn fake_plugin() -> String {
    format!(
        r#"#!/bin/sh
echo "$CNI_COMMAND $CNI_CONTAINERID $CNI_NETNS" >> "$(dirname "$0")/calls.log"
case "$CNI_COMMAND" in
VERSION)
  echo '{{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}}' ;;
ADD)
  cat > /dev/null
  echo '{{"cniVersion":"1.0.0","code":11,"msg":"{FAKE_MESSAGE}","details":"on purpose"}}'
  exit 1 ;;
*)
  cat > /dev/null ;;
esac
"#
    )
}

async fn failing_plugin_leaves_nothing(ctx: Ctx) -> Result<()> {
    let network = TestNetwork::allocate()?;
    // bridge (with host-local) succeeds first, so the runtime has a veth and an address to
    // take back when the next plugin of the chain fails.
    let mut list = network.conflist("bungeo-e2e-fail", false);
    list["plugins"]
        .as_array_mut()
        .context("plugins")?
        .push(serde_json::json!({ "type": FAKE_PLUGIN }));
    let script = fake_plugin();
    let own = OwnDaemon::start(
        &ctx,
        vec![("10-fail.conflist".into(), list.to_string())],
        network,
        &[(FAKE_PLUGIN, &script)],
    )
    .await?;
    let calls_log = own
        ._bin
        .as_ref()
        .map(|d| d.path().join("calls.log"))
        .context("no bin dir")?;
    let (conf_dir, network) = cni_of(&own.daemon)?;
    let dirs = allocation_dirs(conf_dir, network.ipam_dir());
    with_scene(&ctx, own.cri.clone(), "fail", async |s| {
        let config = s.pod_config("fail");
        let err = match s.try_run_pod(config).await {
            Ok(id) => bail!("RunPodSandbox succeeded with a failing plugin: {id}"),
            Err(e) => e,
        };
        ensure!(
            err.message().contains(FAKE_MESSAGE),
            "the plugin's message is not in the error: {:?} {}",
            err.code(),
            err.message()
        );
        let calls = std::fs::read_to_string(&calls_log).unwrap_or_default();
        let add = calls
            .lines()
            .find(|l| l.starts_with("ADD "))
            .with_context(|| format!("the plugin was not called with ADD: {calls:?}"))?;
        let mut words = add.split_whitespace().skip(1);
        let (id, netns) = (
            words.next().unwrap_or_default().to_string(),
            PathBuf::from(words.next().unwrap_or_default()),
        );
        let pods = s
            .cri
            .runtime
            .list_pod_sandbox(ListPodSandboxRequest {
                filter: Some(PodSandboxFilter::default()),
            })
            .await?
            .into_inner()
            .items;
        ensure!(pods.is_empty(), "pods listed after the failure: {pods:?}");
        let left = network.leftovers();
        ensure!(left.is_empty(), "left on the network: {left:?}");
        let allocated = allocations_of(&dirs, None, &id);
        ensure!(allocated.is_empty(), "IP allocated: {allocated:?}");
        ensure!(
            !netns_left(&netns),
            "network namespace {} left",
            netns.display()
        );
        ensure!(
            net::cached_results(&id).is_empty(),
            "cached results of {id} left"
        );
        if let Daemon::Bungeo(b) = &own.daemon {
            for dir in [b.state().join("ns"), b.root().join("sandboxes")] {
                let names: Vec<_> = std::fs::read_dir(&dir)
                    .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
                    .unwrap_or_default();
                ensure!(names.is_empty(), "left in {}: {names:?}", dir.display());
            }
        }
        Ok(())
    })
    .await
}

async fn network_ready_follows_conf_dir(ctx: Ctx) -> Result<()> {
    let network = TestNetwork::allocate()?;
    let valid = network.conflist("bungeo-e2e-ready", false).to_string();
    let mut own = OwnDaemon::start(
        &ctx,
        vec![("10-net.conflist".into(), "{ this is not JSON".into())],
        network,
        &[],
    )
    .await?;
    let (ready, reason) = network_ready(&mut own.cri).await?;
    ensure_eq!(
        (ready, reason.as_str()),
        (false, "NetworkPluginNotReady"),
        "NetworkReady with a broken config"
    );
    let (conf_dir, network) = cni_of(&own.daemon)?;
    if ctx.target == Target::Bungeo {
        // A config is there, broken or not: bungeo does not put its own beside it.
        ensure!(
            !conf_dir.join("10-bungeo.conflist").exists(),
            "bungeo wrote its default network beside the operator's config"
        );
    }
    write_atomically(&conf_dir.join("10-net.conflist"), &valid)?;
    wait_network_ready(&mut own.cri, true).await?;
    let conf_dir = conf_dir.to_path_buf();
    with_scene(&ctx, own.cri.clone(), "ready", async |s| {
        let pod = s.pod("ready").await?;
        s.observe(&pod, network).await?;
        Ok(())
    })
    .await?;
    let left = network.leftovers();
    ensure!(left.is_empty(), "left on the network: {left:?}");
    // An emptied conf dir: not ready again.
    std::fs::remove_file(conf_dir.join("10-net.conflist"))?;
    wait_network_ready(&mut own.cri, false).await
}

async fn dual_stack(ctx: Ctx) -> Result<()> {
    let network = TestNetwork::allocate()?;
    let list = network.conflist("bungeo-e2e-dual", true).to_string();
    let own = OwnDaemon::start(&ctx, vec![("10-dual.conflist".into(), list)], network, &[]).await?;
    let (conf_dir, network) = cni_of(&own.daemon)?;
    let dirs = allocation_dirs(conf_dir, network.ipam_dir());
    let mut seen = None;
    with_scene(&ctx, own.cri.clone(), "dual", async |s| {
        let pod = s.pod("dual").await?;
        let (_, additional) = s.ips(&pod).await?;
        let pod_net = s.observe(&pod, network).await?;
        ensure!(pod_net.ip.is_ipv4(), "the first IP is {}", pod_net.ip);
        seen = Some(pod_net.clone());
        ensure_eq!(additional.len(), 1, "additional IPs {additional:?}");
        let v6: IpAddr = additional[0].parse().context("additional IP")?;
        ensure!(
            v6.is_ipv6() && network.contains(&v6),
            "additional IP {v6} not in {}",
            network.subnet_v6()
        );
        let in_pod = net::pod_addresses(&pod_net.netns)?;
        for ip in [pod_net.ip, v6] {
            ensure!(
                in_pod.contains(&ip),
                "{ip} not on eth0 in the pod: {in_pod:?}"
            );
        }
        ensure_eq!(
            allocations_of(&dirs, None, &pod).len(),
            2,
            "host-local allocations of the pod"
        );
        Ok(())
    })
    .await?;
    if let Some(pod) = seen {
        ensure_released(&pod, &dirs, true)?;
    }
    let left = network.leftovers();
    ensure!(left.is_empty(), "left on the network: {left:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// bungeo only.

/// bungeo found its conf dir empty and wrote its default network there: the bridge and
/// subnet of its `[cni]` config, host-local keeping its data under bungeo's root, portmap.
/// Pods get their addresses from it, and their loopback is up.
async fn default_network_written(ctx: Ctx) -> Result<()> {
    let Daemon::Bungeo(b) = ctx.daemon()? else {
        bail!("bungeo only");
    };
    let network = b.network().context("no test network")?;
    let path = b.cni_conf_dir().join("10-bungeo.conflist");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let list: Value = serde_json::from_str(&text).context("the default conflist is not JSON")?;
    ensure_eq!(list["name"], "bungeo", "network name");
    let plugins = list["plugins"].as_array().context("no plugins")?;
    let types: Vec<&str> = plugins.iter().filter_map(|p| p["type"].as_str()).collect();
    for want in ["bridge", "portmap"] {
        ensure!(types.contains(&want), "no {want} plugin in {types:?}");
    }
    let bridge = plugins
        .iter()
        .find(|p| p["type"] == "bridge")
        .context("bridge")?;
    ensure_eq!(bridge["bridge"], network.bridge(), "bridge device");
    ensure_eq!(bridge["ipam"]["type"], "host-local", "IPAM");
    ensure!(
        text.contains(&format!("\"{}\"", network.subnet())),
        "subnet {} not in {text}",
        network.subnet()
    );
    let dirs = net::host_local_dirs(&list);
    let root = b.root().canonicalize()?;
    ensure!(
        !dirs.is_empty()
            && dirs
                .iter()
                .all(|d| d.starts_with(&root) || d.starts_with(b.root())),
        "host-local data dirs {dirs:?} are not under the root {}",
        root.display()
    );
    let (ready, reason) = network_ready(&mut ctx.cri.clone()).await?;
    ensure!(ready, "NetworkReady false: {reason}");
    let mut seen = None;
    with_scene(&ctx, ctx.cri.clone(), "default", async |s| {
        let pod = s.pod("default").await?;
        let pod_net = s.observe(&pod, network).await?;
        ensure_eq!(
            allocations_of(&dirs, Some(&pod_net.ip), &pod).len(),
            1,
            "allocation in {dirs:?}"
        );
        // Loopback is up too (a plugin of the chain, or a call of its own).
        let ns = format!("--net={}", pod_net.netns.display());
        let lo = net::command_output("nsenter", &[&ns, "ip", "-o", "link", "show", "lo"])?;
        ensure!(lo.contains(",UP"), "lo in the pod: {lo}");
        seen = Some(pod_net);
        Ok(())
    })
    .await?;
    if let Some(pod) = seen {
        ensure_released(&pod, &dirs, true)?;
    }
    Ok(())
}

/// The CNI DEL of a pod still runs, from what bungeo recorded, after the daemon restarted
/// (SIGTERM) and after it crashed (SIGKILL).
async fn del_after_restart(ctx: Ctx) -> Result<()> {
    let mut daemon = Bungeo::start(&ctx.fx.hosts).await?;
    let cri = Cri::connect(daemon.socket()).await?;
    let conf_dir = daemon.cni_conf_dir().to_path_buf();
    let ipam = daemon
        .network()
        .context("no test network")?
        .ipam_dir()
        .to_path_buf();
    let mut scene = Scene::new(&ctx, cri, "restart").await?;
    let result = async {
        let dirs = allocation_dirs(&conf_dir, &ipam);
        let a = scene.pod("restart-term").await?;
        let b = scene.pod("restart-kill").await?;
        let network = daemon.network().context("no test network")?;
        let net_a = scene.observe(&a, network).await?;
        let net_b = scene.observe(&b, network).await?;
        for (how, pod) in [("SIGTERM", &net_a), ("SIGKILL", &net_b)] {
            if how == "SIGKILL" {
                daemon.kill9()?;
            }
            daemon
                .restart()
                .await
                .with_context(|| format!("restart after {how}"))?;
            scene.cri = Cri::connect(daemon.socket()).await?;
            let network = daemon.network().context("no test network")?;
            ensure!(
                network.bridge_ports().contains(&pod.veth),
                "veth {} gone before the pod was stopped",
                pod.veth
            );
            scene.stop(&pod.id).await?;
            scene.remove(&pod.id).await?;
            ensure_released(pod, &dirs, true).with_context(|| format!("after {how}"))?;
        }
        let left = daemon.network().context("no test network")?.leftovers();
        ensure!(left.is_empty(), "left on the network: {left:?}");
        Ok(())
    }
    .await;
    let cleanup = scene.base.finish().await;
    result.and(cleanup)
}

/// UpdateRuntimeConfig's pod CIDR moves bungeo's default network: pods made after it get
/// addresses of the new range, and bungeo's own conflist names it. kubelet sends the pod CIDR
/// when the node gets it, before it runs pods, which is the order here. (The bridge plugin
/// refuses a second gateway address on a bridge that already has one, so a change while pods
/// of the old range run is out of scope. containerd 1.6 uses the pod CIDR only to fill in a
/// conf template, `conf_template`, which the suite does not use.)
async fn pod_cidr_update(ctx: Ctx) -> Result<()> {
    let daemon = Bungeo::start(&ctx.fx.hosts).await?;
    let cri = Cri::connect(daemon.socket()).await?;
    let network = daemon.network().context("no test network")?;
    // A second slot holds the new range, so no other daemon is given it meanwhile.
    let moved = TestNetwork::allocate()?;
    let dirs: Vec<PathBuf> = allocation_dirs(daemon.cni_conf_dir(), network.ipam_dir())
        .into_iter()
        .chain([moved.ipam_dir().to_path_buf()])
        .collect();
    let mut seen = Vec::new();
    with_scene(&ctx, cri, "cidr", async |s| {
        s.cri
            .runtime
            .update_runtime_config(UpdateRuntimeConfigRequest {
                runtime_config: Some(RuntimeConfig {
                    network_config: Some(NetworkConfig {
                        pod_cidr: moved.subnet(),
                    }),
                }),
            })
            .await
            .context("UpdateRuntimeConfig")?;
        let conflist = daemon.cni_conf_dir().join("10-bungeo.conflist");
        let text = std::fs::read_to_string(&conflist)
            .with_context(|| format!("read {}", conflist.display()))?;
        ensure!(
            text.contains(&format!("\"{}\"", moved.subnet())),
            "{} does not name {}: {text}",
            conflist.display(),
            moved.subnet()
        );
        for name in ["cidr-a", "cidr-b"] {
            let pod = s.pod(name).await?;
            let (ip, _) = s.ips(&pod).await?;
            let ip: IpAddr = ip.parse().with_context(|| format!("pod IP {ip:?}"))?;
            ensure!(
                moved.contains(&ip),
                "pod IP {ip} after the update is not in {}",
                moved.subnet()
            );
            let netns = s.netns(&pod).await?.context("no netns")?;
            let in_pod = net::pod_addresses(&netns)?;
            ensure_eq!(in_pod, vec![ip], "addresses of eth0 in the pod");
            seen.push(PodNet {
                id: pod.clone(),
                ip,
                veth: net::host_veth(&netns)?,
                netns,
            });
        }
        Ok(())
    })
    .await?;
    let dirs: Vec<PathBuf> = dirs
        .into_iter()
        .chain(allocation_dirs(daemon.cni_conf_dir(), moved.ipam_dir()))
        .collect();
    for pod in &seen {
        ensure_released(pod, &dirs, true)?;
    }
    Ok(())
}
