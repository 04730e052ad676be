//! Security of the endpoint (bungeo only: these are properties of bungeo's own files and
//! listeners):
//! - the CRI socket is 0660 and root's; the state dir is 0700 and the root 0711 (traversable
//!   so paths below it resolve, not listable), both root's, nothing in their first two levels
//!   is world-writable, and an unprivileged process can reach neither the daemon's socket nor a
//!   shim's;
//! - the streaming server listens only on the configured address and port, refuses made-up
//!   and reused tokens (404); the metrics server is off by default and, when configured,
//!   listens only there;
//! - neither the daemon nor a shim listens on an abstract unix socket (which a container in
//!   the node's network namespace could reach), and their socket paths do not exist inside a
//!   container, host network or not;
//! - `/proc` and `/sys` masks hold in an unprivileged container: masked files read empty,
//!   masked dirs list empty, `/proc/sys` and `/sys` refuse writes.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bungeo_tests::bungeo::Bungeo;
use bungeo_tests::cri::Cri;
use bungeo_tests::net::{command_output, free_tcp_port, http_get};
use bungeo_tests::streaming::exec::{self, Options, RemoteCommand, Transport};
use bungeo_tests::workload::{
    BusyboxRegistry, container_config, exec_sync, pod_config, remove_pod, run_container, run_pod,
};
use k8s_cri::v1::{ExecRequest, NamespaceMode, PodSandboxConfig};
use libtest_mimic::{Arguments, Failed, Trial};

const NAMESPACE: &str = "bungeo-e2e-endpoint";

type Shared = Arc<OnceLock<std::result::Result<Arc<BusyboxRegistry>, String>>>;
type CheckFn = fn(Arc<BusyboxRegistry>) -> Pin<Box<dyn Future<Output = Result<()>>>>;

fn main() {
    let args = Arguments::from_args();
    let shared: Shared = Arc::new(OnceLock::new());
    let checks: Vec<(&str, CheckFn)> = vec![
        ("socket_and_directories_are_root_only", |r| {
            Box::pin(socket_and_directories_are_root_only(r))
        }),
        ("streaming_and_metrics_listen_only_where_configured", |r| {
            Box::pin(streaming_and_metrics_listen_only_where_configured(r))
        }),
        ("no_socket_reachable_from_containers", |r| {
            Box::pin(no_socket_reachable_from_containers(r))
        }),
        ("proc_and_sys_masks_hold", |r| {
            Box::pin(proc_and_sys_masks_hold(r))
        }),
    ];
    let trials = checks
        .into_iter()
        .map(|(name, check)| {
            let shared = shared.clone();
            Trial::test(format!("bungeo::{name}"), move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(4)
                    .enable_all()
                    .build()
                    .map_err(|e| Failed::from(format!("tokio runtime: {e}")))?;
                let reg = shared
                    .get_or_init(|| {
                        rt.block_on(BusyboxRegistry::start())
                            .map(Arc::new)
                            .map_err(|e| format!("{e:#}"))
                    })
                    .clone()
                    .map_err(Failed::from)?;
                rt.block_on(check(reg))
                    .map_err(|e| Failed::from(format!("{e:#}")))
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    // process::exit skips destructors: stop the registry first.
    drop(shared);
    conclusion.exit()
}

/// A daemon with one pod (its own network, or the node's) running a sleeping container.
struct Scene {
    bungeo: Bungeo,
    cri: Cri,
    pod: String,
    container: String,
}

impl Scene {
    async fn start(reg: &BusyboxRegistry, extra: &str, host_network: bool) -> Result<Self> {
        let (bungeo, mut cri) = reg.bungeo(extra).await?;
        let mut config: PodSandboxConfig = pod_config(NAMESPACE, "endpoint", "");
        if host_network {
            // kubelet names no pod on the node's network: it has the node's hostname.
            config.hostname.clear();
        }
        if host_network
            && let Some(ns) = config
                .linux
                .as_mut()
                .and_then(|l| l.security_context.as_mut())
                .and_then(|s| s.namespace_options.as_mut())
        {
            ns.network = NamespaceMode::Node as i32;
        }
        let pod = run_pod(&mut cri, config.clone()).await?;
        let mut c = container_config("sleeper", &reg.busybox(), &["sleep", "3600"]);
        if host_network
            && let Some(ns) = c
                .linux
                .as_mut()
                .and_then(|l| l.security_context.as_mut())
                .and_then(|s| s.namespace_options.as_mut())
        {
            ns.network = NamespaceMode::Node as i32;
        }
        match run_container(&mut cri, &pod, &config, c).await {
            Ok(container) => Ok(Self {
                bungeo,
                cri,
                pod,
                container,
            }),
            Err(e) => {
                let _ = remove_pod(&mut cri, &pod).await;
                Err(e)
            }
        }
    }

    async fn finish(mut self, result: Result<()>) -> Result<()> {
        let removal = remove_pod(&mut self.cri, &self.pod).await;
        result
            .and(removal)
            .map_err(|e| e.context(format!("bungeo log:\n{}", self.bungeo.log_tail(15))))
    }
}

fn mode(path: &Path) -> Result<(u32, u32, u32)> {
    let m = std::fs::symlink_metadata(path).with_context(|| format!("stat {}", path.display()))?;
    Ok((m.permissions().mode() & 0o7777, m.uid(), m.gid()))
}

/// Connects to the unix socket `path` from a thread that has dropped to uid and gid 65534
/// with no supplementary groups and so no capabilities; what `connect` said.
fn connect_unprivileged(path: &Path) -> Result<std::io::Result<()>> {
    let path = path.to_path_buf();
    std::thread::spawn(move || -> Result<std::io::Result<()>> {
        // Raw syscalls change this thread's credentials only (glibc's wrappers would change
        // every thread of the test); the thread ends right after.
        // SAFETY: setgroups with an empty list, setresgid and setresuid take no pointers
        // into memory this code does not own; failure is checked.
        let ok = unsafe {
            libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) == 0
                && libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534) == 0
                && libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) == 0
        };
        ensure!(ok, "drop privileges: {}", std::io::Error::last_os_error());
        Ok(std::os::unix::net::UnixStream::connect(&path).map(drop))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the unprivileged thread panicked"))?
}

/// Path sockets a process listens on, and abstract ones (`@name`), from `ss -xlp`. A path
/// bound through `/proc/self/fd/<dir>/` (to stay under the length limit) is resolved to the
/// directory it names.
fn unix_listeners(pid: u32) -> Result<Vec<String>> {
    let out = command_output("ss", &["-xlpH"])?;
    let needle = format!("pid={pid},");
    Ok(out
        .lines()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|name| match name.strip_prefix("/proc/self/fd/") {
            Some(rest) => {
                let (fd, file) = rest.split_once('/').unwrap_or((rest, ""));
                std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                    .map(|dir| dir.join(file).to_string_lossy().into_owned())
                    .unwrap_or_else(|_| socket_named(pid, file).unwrap_or_else(|| name.to_string()))
            }
            None => name.to_string(),
        })
        .collect())
}

/// The socket called `file` in a directory the process `pid` works below: the descriptor it
/// bound through is closed by now, so look in the state dirs its command line names.
fn socket_named(pid: u32, file: &str) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    for arg in cmdline.split(|b| *b == 0) {
        let arg = String::from_utf8_lossy(arg);
        let arg = arg.rsplit_once('=').map_or(&*arg, |(_, v)| v);
        let path = Path::new(arg);
        if !path.is_absolute() {
            continue;
        }
        let dir = if path.is_dir() { path } else { path.parent()? };
        for rel in bungeo_tests::procstat::files_below(dir) {
            let candidate = dir.join(&rel);
            if candidate.file_name().is_some_and(|n| n == file)
                && std::fs::symlink_metadata(&candidate).is_ok_and(|m| m.file_type().is_socket())
            {
                return Some(candidate.to_string_lossy().into_owned());
            }
        }
    }
    None
}

/// `address:port` of every TCP socket a process listens on, from `ss -tlnp`.
fn tcp_listeners(pid: u32) -> Result<BTreeSet<String>> {
    let out = command_output("ss", &["-tlnpH"])?;
    let needle = format!("pid={pid},");
    Ok(out
        .lines()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect())
}

/// The shims of the daemon: processes whose command line names its state dir.
fn shim_pids(bungeo: &Bungeo) -> Vec<u32> {
    let daemon = bungeo.pid();
    bungeo_tests::leftovers::processes_mentioning(bungeo.state())
        .into_iter()
        .map(|p| p as u32)
        .filter(|p| Some(*p) != daemon)
        .collect()
}

async fn socket_and_directories_are_root_only(reg: Arc<BusyboxRegistry>) -> Result<()> {
    let scene = Scene::start(&reg, "", false).await?;
    let result = async {
        let b = &scene.bungeo;
        let (m, uid, gid) = mode(b.socket())?;
        ensure!(
            std::fs::symlink_metadata(b.socket())?
                .file_type()
                .is_socket(),
            "{} is not a socket",
            b.socket().display()
        );
        ensure!(
            (m, uid, gid) == (0o660, 0, 0),
            "CRI socket: mode {m:o} owner {uid}:{gid}"
        );
        let (m, uid, _) = mode(b.state())?;
        ensure!((m, uid) == (0o700, 0), "state dir: mode {m:o} owner {uid}");
        // 0711: container users must be able to resolve paths below the root (bind-mount
        // sources such as the pod's hosts file); nobody but root may list or change it.
        let (m, uid, _) = mode(b.root())?;
        ensure!((m, uid) == (0o711, 0), "root dir: mode {m:o} owner {uid}");
        let mut open = Vec::new();
        for base in [b.root(), b.state()] {
            for rel in bungeo_tests::procstat::files_below(base) {
                if rel.matches('/').count() > 1 {
                    continue;
                }
                let path = base.join(&rel);
                let (m, _, _) = mode(&path)?;
                let symlink = std::fs::symlink_metadata(&path)?.file_type().is_symlink();
                if m & 0o002 != 0 && !symlink {
                    open.push(format!("{} {m:o}", path.display()));
                }
            }
        }
        ensure!(
            open.is_empty(),
            "world-writable below the root or state dir: {open:?}"
        );
        let shims = shim_pids(b);
        ensure!(!shims.is_empty(), "no shim found for the running container");
        let mut sockets = vec![b.socket().to_path_buf()];
        for shim in &shims {
            sockets.extend(
                unix_listeners(*shim)?
                    .into_iter()
                    .filter(|s| s.starts_with('/'))
                    .map(Into::into),
            );
        }
        ensure!(sockets.len() > 1, "the shims listen on no path socket");
        for socket in &sockets {
            // sun_path holds 107 bytes: a longer path cannot be named in connect() at all,
            // by anyone; it must then be below the state dir the others prove closed.
            if socket.as_os_str().len() > 107 {
                ensure!(
                    socket.starts_with(b.state()),
                    "{} is outside the state dir",
                    socket.display()
                );
                continue;
            }
            match connect_unprivileged(socket)? {
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
                other => bail!("uid 65534 connecting to {}: {other:?}", socket.display()),
            }
        }
        eprintln!("refused to uid 65534: {sockets:?}");
        anyhow::Ok(())
    }
    .await;
    scene.finish(result).await
}

/// Whether something accepts TCP connections at `addr`.
fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

async fn exec_url(cri: &mut Cri, container: &str) -> Result<String> {
    Ok(cri
        .runtime
        .exec(ExecRequest {
            container_id: container.to_string(),
            cmd: vec!["true".into()],
            stdout: true,
            stderr: true,
            ..Default::default()
        })
        .await
        .context("Exec")?
        .into_inner()
        .url)
}

async fn streaming_and_metrics_listen_only_where_configured(
    reg: Arc<BusyboxRegistry>,
) -> Result<()> {
    // Defaults: streaming on loopback at a port of its choice, no metrics.
    let mut scene = Scene::start(&reg, "", false).await?;
    let result = async {
        let url = exec_url(&mut scene.cri, &scene.container).await?;
        let pid = scene.bungeo.pid().context("no pid")?;
        let listeners = tcp_listeners(pid)?;
        ensure!(
            listeners.len() == 1
                && listeners
                    .iter()
                    .all(|l| l.starts_with("127.0.0.1:") && url.contains(l.as_str())),
            "default config: bungeo listens on {listeners:?}, its exec URL is {url}"
        );
        anyhow::Ok(())
    }
    .await;
    scene.finish(result).await?;

    let (port, metrics_port) = (free_tcp_port()?, free_tcp_port()?);
    let extra = format!(
        "\n[streaming]\naddress = \"127.0.0.1\"\nport = {port}\n\n[metrics]\naddress = \"127.0.0.1:{metrics_port}\"\n"
    );
    let mut scene = Scene::start(&reg, &extra, false).await?;
    let result = async {
        let url = exec_url(&mut scene.cri, &scene.container).await?;
        ensure!(
            url.starts_with(&format!("http://127.0.0.1:{port}/")),
            "exec URL {url} is not on 127.0.0.1:{port}"
        );
        let pid = scene.bungeo.pid().context("no pid")?;
        let listeners = tcp_listeners(pid)?;
        let want: BTreeSet<String> = [
            format!("127.0.0.1:{port}"),
            format!("127.0.0.1:{metrics_port}"),
        ]
        .into();
        ensure!(
            listeners == want,
            "bungeo listens on {listeners:?}, want {want:?}"
        );
        for p in [port, metrics_port] {
            let other: SocketAddr = format!("127.0.0.2:{p}").parse()?;
            ensure!(!accepts(other), "{other} accepts connections");
        }
        let (status, body) = http_get(format!("127.0.0.1:{metrics_port}").parse()?, "/metrics")?;
        ensure!(status.contains(" 200"), "GET /metrics: {status}");
        ensure!(!body.is_empty(), "GET /metrics: empty body");
        // A made-up token and a used one are refused (the streaming suite covers every
        // transport and port-forward; this is the configured address).
        let (base, _) = url.rsplit_once('/').context("URL without a token")?;
        let opts = Options::new(Transport::SPDY).protocols(&["v4.channel.k8s.io"]);
        let err = RemoteCommand::open(&format!("{base}/NotAToken"), &opts)
            .await
            .err()
            .context("a made-up token was accepted")?;
        ensure!(err.http_status() == Some(404), "made-up token: {err}");
        let f = exec::exec(&url, &opts, None, &[]).await?;
        ensure!(
            f.status.code == Some(0),
            "first use of {url}: {:?}",
            f.status
        );
        let err = RemoteCommand::open(&url, &opts)
            .await
            .err()
            .context("a reused token was accepted")?;
        ensure!(err.http_status() == Some(404), "reused token: {err}");
        anyhow::Ok(())
    }
    .await;
    scene.finish(result).await
}

async fn no_socket_reachable_from_containers(reg: Arc<BusyboxRegistry>) -> Result<()> {
    let mut scene = Scene::start(&reg, "", true).await?;
    let result = async {
        let b = &scene.bungeo;
        let mut pids = shim_pids(b);
        ensure!(!pids.is_empty(), "no shim found for the running container");
        pids.push(b.pid().context("no pid")?);
        let mut paths = Vec::new();
        for pid in &pids {
            for l in unix_listeners(*pid)? {
                // ss prints abstract names with a leading '@'.
                ensure!(
                    l.starts_with('/'),
                    "process {pid} listens on the unix socket {l:?}, not a path below the \
                     root-only state dir"
                );
                paths.push(l);
            }
        }
        // The daemon's own socket is where --listen says (the harness puts it beside the
        // state dir); every shim socket must be below the root-only state dir.
        let strays: Vec<&String> = paths
            .iter()
            .filter(|p| Path::new(p) != b.socket() && !Path::new(p).starts_with(b.state()))
            .collect();
        ensure!(strays.is_empty(), "sockets outside the state dir: {strays:?}");
        // Inside a container in the node's network namespace: the abstract sockets it sees
        // (all of the node's) include none of ours, and our socket paths do not exist.
        let out = exec_sync(&mut scene.cri, &scene.container, &["cat", "/proc/net/unix"]).await?;
        let table = String::from_utf8_lossy(&out.stdout);
        let abstract_names: Vec<&str> = table
            .lines()
            .filter_map(|l| l.split_whitespace().nth(7))
            .filter(|n| n.starts_with('@'))
            .collect();
        let ours: Vec<&&str> = abstract_names
            .iter()
            .filter(|n| n.contains("bungeo") || n.contains("shim"))
            .collect();
        ensure!(ours.is_empty(), "abstract sockets visible in the container: {ours:?}");
        let mut probes = vec![b.socket().to_string_lossy().into_owned()];
        probes.extend(paths.iter().cloned());
        for p in &probes {
            let r = exec_sync(&mut scene.cri, &scene.container, &["test", "-e", p]).await?;
            ensure!(r.exit_code != 0, "{p} exists inside the container");
        }
        eprintln!(
            "listeners of the daemon and its shim: {paths:?}; {} abstract sockets on the node, none ours",
            abstract_names.len()
        );
        anyhow::Ok(())
    }
    .await;
    scene.finish(result).await
}

async fn proc_and_sys_masks_hold(reg: Arc<BusyboxRegistry>) -> Result<()> {
    let mut scene = Scene::start(&reg, "", false).await?;
    let result = async {
        let c = scene.container.clone();
        let cri = &mut scene.cri;
        // Masked files read empty (bind-mounted /dev/null); masked dirs list empty.
        for file in ["/proc/keys", "/proc/timer_list"] {
            let r = exec_sync(cri, &c, &["cat", file]).await?;
            ensure!(
                r.stdout.is_empty(),
                "{file} is readable in the container: {} bytes",
                r.stdout.len()
            );
        }
        let r = exec_sync(cri, &c, &["ls", "-A", "/sys/firmware"]).await?;
        ensure!(
            r.exit_code == 0 && r.stdout.is_empty(),
            "/sys/firmware lists {:?} (exit {})",
            String::from_utf8_lossy(&r.stdout),
            r.exit_code
        );
        // Opening for writing (without writing anything) fails on the read-only mounts.
        for file in [
            "/proc/sys/kernel/domainname",
            "/proc/sys/vm/overcommit_memory",
            "/sys/class/net/lo/mtu",
        ] {
            let r = exec_sync(cri, &c, &["sh", "-c", &format!(": > {file}")]).await?;
            ensure!(
                r.exit_code != 0,
                "{file} opened for writing in the container"
            );
        }
        let r = exec_sync(cri, &c, &["mkdir", "/sys/fs/cgroup/bungeo-e2e-probe"]).await?;
        ensure!(r.exit_code != 0, "made a cgroup from inside the container");
        let mounts = exec_sync(cri, &c, &["cat", "/proc/self/mountinfo"]).await?;
        let mounts = String::from_utf8_lossy(&mounts.stdout);
        for point in ["/proc/sys", "/sys"] {
            let line = mounts
                .lines()
                .find(|l| l.split(' ').nth(4) == Some(point))
                .with_context(|| format!("{point} is not a mount point in the container"))?;
            let opts = line.split(' ').nth(5).unwrap_or_default();
            ensure!(
                opts.split(',').any(|o| o == "ro"),
                "{point} is mounted {opts} in the container"
            );
        }
        anyhow::Ok(())
    }
    .await;
    scene.finish(result).await
}
