//! Garbage CRI requests: empty messages, oversized fields, contradictory fields and unknown ids
//! for every RuntimeService and ImageService call, against bungeo and containerd 1.6.
//!
//! Every case names the one answer bungeo must give (a gRPC code, or success) and why, and
//! containerd 1.6's answer where it differs: each daemon must give exactly its answer. Where
//! they differ, bungeo's is the documented one: the CRI's (idempotent stops, log paths inside
//! the log directory), or gRPC's own codes, where containerd 1.6 answers Unknown ("not enough
//! error information") to a request it refused as invalid, or accepts what cannot work and
//! fails later. bungeo must answer Version after each call, and once the batch is done nothing
//! it created may be left.
//! bungeo must also log no panic and leave no file under its state dir, its root's sandboxes/
//! and containers/, and no mount. The log path case must write no file outside the pod's log
//! directory.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use anyhow::{Context, Result, bail, ensure};
use bungeo_tests::check;
use bungeo_tests::cri::{Cri, Target};
use bungeo_tests::images::PLAIN;
use bungeo_tests::mounts::mounts_under;
use bungeo_tests::procstat;
use bungeo_tests::suite::{Ctx, Daemon, run_suite};
use bungeo_tests::workload::{
    container_config, listed, pod_config, remove_container, remove_pod, run_pod,
};
use k8s_cri::v1::{
    AttachRequest, AuthConfig, CheckpointContainerRequest, ContainerConfig, ContainerFilter,
    ContainerStatsRequest, ContainerStatusRequest, CreateContainerRequest, Device, ExecRequest,
    ExecSyncRequest, ImageFilter, ImageSpec, ImageStatusRequest, KeyValue, LinuxContainerResources,
    ListContainerStatsRequest, ListContainersRequest, ListImagesRequest, ListPodSandboxRequest,
    Mount, NamespaceMode, PodSandboxConfig, PodSandboxStatsRequest, PodSandboxStatusRequest,
    PortForwardRequest, PortMapping, PullImageRequest, RemoveContainerRequest, RemoveImageRequest,
    RemovePodSandboxRequest, ReopenContainerLogRequest, RunPodSandboxRequest,
    StartContainerRequest, StatusRequest, StopContainerRequest, StopPodSandboxRequest,
    UpdateContainerResourcesRequest, UpdateRuntimeConfigRequest, UserNamespace,
};
use tonic::{Code, Status};

const NAMESPACE: &str = "bungeo-e2e-cri-input";
const MIB: usize = 1 << 20;

fn main() {
    run_suite(vec![check!(garbage_requests)]);
}

/// What a case must answer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    /// Success.
    Ok,
    /// An error with this code.
    Code(Code),
    /// Not sent: the daemon could not be cleaned up after it (`why` says how).
    NotSent,
}

const OK: Want = Want::Ok;
const INVALID: Want = Want::Code(Code::InvalidArgument);
const NOT_FOUND: Want = Want::Code(Code::NotFound);
const UNKNOWN: Want = Want::Code(Code::Unknown);

/// One garbage request.
struct Case {
    name: &'static str,
    /// The answer bungeo must give.
    want: Want,
    /// containerd 1.6's answer where it is not `want`.
    containerd: Option<Want>,
    /// Why `want` is the answer (and, if so, why containerd's differs).
    why: &'static str,
    call: fn(&Env) -> Call,
}

impl Case {
    fn want_of(&self, target: Target) -> Want {
        match (target, self.containerd) {
            (Target::Containerd, Some(w)) => w,
            _ => self.want,
        }
    }
}

/// Something a case made that must be removed again.
enum Made {
    Nothing,
    Pod(String),
    Container(String),
}

type Call = Pin<Box<dyn Future<Output = Result<Made, Status>> + Send>>;

/// What the cases' calls need.
struct Env {
    cri: Cri,
    pod: String,
    pod_cfg: PodSandboxConfig,
    image: String,
    /// The file a log path escaping the pod's log directory would name.
    escape: PathBuf,
}

fn big(n: usize) -> String {
    "a".repeat(n)
}

fn many(n: usize, prefix: &str) -> HashMap<String, String> {
    (0..n)
        .map(|i| (format!("{prefix}.example.com/k{i}"), format!("v{i}")))
        .collect()
}

fn spec(s: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: s.to_string(),
        ..Default::default()
    })
}

fn pull(image: Option<ImageSpec>, auth: Option<AuthConfig>) -> PullImageRequest {
    PullImageRequest {
        image,
        auth,
        sandbox_config: None,
    }
}

/// `rpc!(env, runtime.method(request))`: the call, answering [`Made::Nothing`].
macro_rules! rpc {
    ($env:expr, $client:ident . $method:ident ( $req:expr )) => {{
        let mut c = $env.cri.clone();
        let req = $req;
        Box::pin(async move {
            c.$client.$method(req).await?;
            Ok(Made::Nothing)
        }) as Call
    }};
}

impl Env {
    fn run_pod(&self, config: Option<PodSandboxConfig>, handler: &str) -> Call {
        let mut c = self.cri.clone();
        let req = RunPodSandboxRequest {
            config,
            runtime_handler: handler.to_string(),
        };
        Box::pin(async move {
            let id = c
                .runtime
                .run_pod_sandbox(req)
                .await?
                .into_inner()
                .pod_sandbox_id;
            Ok(Made::Pod(id))
        })
    }

    /// A valid pod config changed by `f`.
    fn garbage_pod(&self, f: impl FnOnce(&mut PodSandboxConfig)) -> Call {
        let mut c = pod_config(NAMESPACE, "garbage", "");
        f(&mut c);
        self.run_pod(Some(c), "")
    }

    fn create(
        &self,
        pod: &str,
        config: Option<ContainerConfig>,
        sandbox: Option<PodSandboxConfig>,
    ) -> Call {
        let mut c = self.cri.clone();
        let req = CreateContainerRequest {
            pod_sandbox_id: pod.to_string(),
            config,
            sandbox_config: sandbox,
        };
        Box::pin(async move {
            let id = c
                .runtime
                .create_container(req)
                .await?
                .into_inner()
                .container_id;
            Ok(Made::Container(id))
        })
    }

    fn ctr(&self, f: impl FnOnce(&mut ContainerConfig)) -> Option<ContainerConfig> {
        let mut c = container_config("garbage", &self.image, &["sleep", "1"]);
        f(&mut c);
        Some(c)
    }

    /// A valid container in the pod, changed by `f`.
    fn garbage_container(&self, f: impl FnOnce(&mut ContainerConfig)) -> Call {
        self.create(&self.pod, self.ctr(f), Some(self.pod_cfg.clone()))
    }
}

async fn garbage_requests(ctx: Ctx) -> Result<()> {
    let mut cri = ctx.cri.clone();
    let image = ctx.fx.reference(PLAIN);
    cri.pull(&image, None).await.context("pull busybox")?;
    let daemon = ctx.daemon()?;
    let bungeo = match daemon {
        Daemon::Bungeo(b) => Some(b),
        Daemon::Containerd(_) => None,
    };
    let state_before = bungeo.map(|b| procstat::files_below(b.state()));
    let root_dirs = ["sandboxes", "containers"].map(|d| daemon.root().join(d));
    let root_before: Vec<_> = root_dirs.iter().map(|d| procstat::files_below(d)).collect();

    // One real pod for the container cases, logging into a directory of its own.
    let logs = tempfile::Builder::new()
        .prefix("bungeo-cri-input-logs-")
        .tempdir()
        .context("log directory")?;
    let mut pod_cfg = pod_config(NAMESPACE, "host", "");
    pod_cfg.log_directory = logs.path().join("pod").to_string_lossy().into_owned();
    let pod = run_pod(&mut cri, pod_cfg.clone()).await?;
    let env = Env {
        cri: cri.clone(),
        pod: pod.clone(),
        pod_cfg,
        image,
        escape: PathBuf::from(format!(
            "/etc/bungeo-cri-input-{}-{}.log",
            ctx.target,
            std::process::id()
        )),
    };
    ensure!(
        !env.escape.exists(),
        "{} exists before the batch",
        env.escape.display()
    );
    let cases = cases();
    let total = cases.len();
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.name;
        let want = case.want_of(ctx.target);
        if want == Want::NotSent {
            eprintln!("{name}: not sent to {}", ctx.target);
            continue;
        }
        let got = (case.call)(&env).await;
        let got_want = match &got {
            Ok(_) => Want::Ok,
            Err(s) => Want::Code(s.code()),
        };
        let line = match &got {
            Ok(_) => "ok".to_string(),
            Err(s) => format!("{:?}: {}", s.code(), truncate(s.message())),
        };
        eprintln!("{name}: {line}");
        if got_want != want {
            failures.push(format!("{name}: got {line}, want {want:?} ({})", case.why));
        }
        if env.escape.exists() {
            failures.push(format!(
                "{name}: wrote {} outside the log directory",
                env.escape.display()
            ));
            std::fs::remove_file(&env.escape).ok();
        }
        match got {
            Ok(Made::Pod(id)) => remove_pod(&mut cri, &id).await?,
            Ok(Made::Container(id)) => remove_container(&mut cri, &id, 0).await?,
            _ => {}
        }
        if let Err(e) = cri.version().await {
            // A call that kills the connection fails every other call on it: a finding even
            // when the daemon survives (the channel reconnects for the next call). containerd
            // 1.6 does it (the 1 MiB PullImage); its robustness is not under test.
            let broke = format!(
                "{name}: the connection broke: {}",
                truncate(&format!("{e:#}"))
            );
            if bungeo.is_some() {
                failures.push(broke);
            } else {
                eprintln!("{broke}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            if let Err(e) = cri.version().await {
                bail!(
                    "{} stopped answering after {name}: {}",
                    ctx.target,
                    truncate(&format!("{e:#}"))
                );
            }
        }
    }
    remove_pod(&mut cri, &pod).await?;
    // Nothing but the pod's own log directory may have appeared beside it.
    let beside = procstat::files_below(logs.path());
    ensure!(
        beside.iter().all(|f| f == "pod" || f.starts_with("pod/")),
        "files outside the pod's log directory: {beside:?}"
    );

    let (pods, containers) = listed(&mut cri).await?;
    ensure!(
        pods.is_empty() && containers.is_empty(),
        "left after the batch: pods {pods:?}, containers {containers:?}"
    );
    if let (Some(b), Some(state_before)) = (bungeo, state_before) {
        let log = std::fs::read_to_string(b.log()).context("read the bungeo log")?;
        if let Some(line) = log.lines().find(|l| l.contains("panicked")) {
            failures.push(format!("the daemon panicked: {}", truncate(line)));
        }
        let state_after = procstat::files_below(b.state());
        ensure!(
            state_after == state_before,
            "files under the state dir changed: {state_before:?} -> {state_after:?}"
        );
        for (dir, before) in root_dirs.iter().zip(root_before) {
            let after = procstat::files_below(dir);
            ensure!(
                after == before,
                "{} changed: {before:?} -> {after:?}",
                dir.display()
            );
        }
        let mounts = [mounts_under(b.root())?, mounts_under(b.state())?].concat();
        // The image's snapshots are mounted by nothing once its containers are gone.
        ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
    }
    eprintln!(
        "{}: {total} garbage requests, {} wrong answers",
        ctx.target,
        failures.len()
    );
    ensure!(
        failures.is_empty(),
        "wrong answers:\n{}",
        failures.join("\n")
    );
    Ok(())
}

fn truncate(s: &str) -> String {
    let mut out: String = s.chars().take(300).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// A log path that climbs out of any log directory to `escape`.
fn escaping_log_path(escape: &Path) -> String {
    format!(
        "{}{}",
        "../".repeat(32),
        escape.to_string_lossy().trim_start_matches('/')
    )
}

/// Every case, in the order they run.
fn cases() -> Vec<Case> {
    vec![
        // RunPodSandbox.
        Case {
            name: "RunPodSandbox: empty",
            want: INVALID,
            containerd: Some(UNKNOWN),
            why: "no config: an invalid request; containerd 1.6 answers Unknown to it",
            call: |e| e.run_pod(None, ""),
        },
        Case {
            name: "RunPodSandbox: no metadata",
            want: INVALID,
            containerd: Some(UNKNOWN),
            why: "metadata names the pod; containerd 1.6 answers Unknown",
            call: |e| e.run_pod(Some(PodSandboxConfig::default()), ""),
        },
        Case {
            name: "RunPodSandbox: 1 MiB name",
            want: INVALID,
            containerd: Some(Want::NotSent),
            why: "no Kubernetes name is over 253 bytes; containerd 1.6 fails in CNI (E2BIG) with Unknown and keeps a sandbox it cannot stop (CNI DEL fails the same way)",
            call: |e| {
                e.garbage_pod(|c| {
                    if let Some(m) = c.metadata.as_mut() {
                        m.name = big(MIB);
                    }
                })
            },
        },
        Case {
            name: "RunPodSandbox: 1 MiB hostname",
            want: INVALID,
            containerd: Some(UNKNOWN),
            why: "no hostname is over 64 bytes; containerd 1.6 has runc fail with Unknown",
            call: |e| e.garbage_pod(|c| c.hostname = big(MIB)),
        },
        Case {
            name: "RunPodSandbox: 10k labels and annotations",
            want: OK,
            containerd: None,
            why: "containerd: the CRI sets no limit on labels",
            call: |e| {
                e.garbage_pod(|c| {
                    c.labels.extend(many(10_000, "l"));
                    c.annotations = many(10_000, "a");
                })
            },
        },
        Case {
            name: "RunPodSandbox: unknown runtime handler",
            want: INVALID,
            containerd: Some(UNKNOWN),
            why: "the node has no such handler; containerd 1.6 answers Unknown",
            call: |e| {
                let c = pod_config(NAMESPACE, "garbage", "");
                e.run_pod(Some(c), "no-such-handler")
            },
        },
        Case {
            name: "RunPodSandbox: ports out of range, bad host IP",
            want: INVALID,
            containerd: Some(OK),
            why: "no such port can be mapped; containerd 1.6 hands them to CNI, and its test network has no portmap plugin",
            call: |e| {
                e.garbage_pod(|c| {
                    c.port_mappings = vec![PortMapping {
                        protocol: 0,
                        container_port: -1,
                        host_port: 70000,
                        host_ip: "not-an-ip".into(),
                    }]
                })
            },
        },
        Case {
            name: "RunPodSandbox: unknown protocol",
            want: INVALID,
            containerd: Some(OK),
            why: "the Protocol enum has no 99; containerd 1.6 hands it to CNI, and its test network has no portmap plugin",
            call: |e| {
                e.garbage_pod(|c| {
                    c.port_mappings = vec![PortMapping {
                        protocol: 99,
                        container_port: 80,
                        host_port: 8080,
                        host_ip: String::new(),
                    }]
                })
            },
        },
        Case {
            name: "RunPodSandbox: privileged with a user namespace",
            want: INVALID,
            containerd: Some(OK),
            why: "mode POD without mappings is invalid; containerd 1.6 has no user namespaces and ignores it",
            call: |e| {
                e.garbage_pod(|c| {
                    let sc = c
                        .linux
                        .get_or_insert_with(Default::default)
                        .security_context
                        .get_or_insert_with(Default::default);
                    sc.privileged = true;
                    sc.namespace_options
                        .get_or_insert_with(Default::default)
                        .userns_options = Some(UserNamespace {
                        mode: NamespaceMode::Pod as i32,
                        uids: Vec::new(),
                        gids: Vec::new(),
                    });
                })
            },
        },
        Case {
            name: "RunPodSandbox: bad sysctl",
            want: INVALID,
            containerd: Some(UNKNOWN),
            why: "no sysctl has that name; containerd 1.6 has runc fail with Unknown",
            call: |e| {
                e.garbage_pod(|c| {
                    c.linux.get_or_insert_with(Default::default).sysctls =
                        HashMap::from([("../../proc/sys/kernel/panic".into(), "1".into())]);
                })
            },
        },
        // CreateContainer.
        Case {
            name: "CreateContainer: empty",
            want: INVALID,
            containerd: Some(UNKNOWN),
            why: "no config: an invalid request; containerd 1.6 answers Unknown (empty pod id)",
            call: |e| e.create("", None, None),
        },
        Case {
            name: "CreateContainer: unknown pod",
            want: NOT_FOUND,
            containerd: None,
            why: "containerd: no such pod",
            call: |e| e.create("no-such-pod", e.ctr(|_| {}), Some(e.pod_cfg.clone())),
        },
        Case {
            name: "CreateContainer: no config",
            want: INVALID,
            containerd: Some(UNKNOWN),
            why: "no config: an invalid request; containerd 1.6 answers Unknown",
            call: |e| e.create(&e.pod, None, Some(e.pod_cfg.clone())),
        },
        Case {
            name: "CreateContainer: no metadata",
            want: INVALID,
            containerd: Some(UNKNOWN),
            why: "metadata names the container; containerd 1.6 answers Unknown",
            call: |e| e.garbage_container(|c| c.metadata = None),
        },
        Case {
            name: "CreateContainer: no image",
            want: INVALID,
            containerd: Some(UNKNOWN),
            why: "the image is required; containerd 1.6 answers Unknown",
            call: |e| e.garbage_container(|c| c.image = None),
        },
        Case {
            name: "CreateContainer: empty image",
            want: INVALID,
            containerd: Some(UNKNOWN),
            why: "the image is required; containerd 1.6 answers Unknown",
            call: |e| e.garbage_container(|c| c.image = Some(ImageSpec::default())),
        },
        Case {
            name: "CreateContainer: image not pulled",
            want: NOT_FOUND,
            containerd: None,
            why: "containerd: CreateContainer does not pull",
            call: |e| e.garbage_container(|c| c.image = spec("127.0.0.1:1/none:x")),
        },
        Case {
            name: "CreateContainer: 1 MiB name",
            want: OK,
            containerd: None,
            why: "containerd: the CRI sets no limit on a container's name",
            call: |e| {
                e.garbage_container(|c| {
                    if let Some(m) = c.metadata.as_mut() {
                        m.name = big(MIB);
                    }
                })
            },
        },
        Case {
            name: "CreateContainer: 10k labels and annotations",
            want: OK,
            containerd: None,
            why: "containerd: the CRI sets no limit on labels",
            call: |e| {
                e.garbage_container(|c| {
                    c.labels = many(10_000, "l");
                    c.annotations = many(10_000, "a");
                })
            },
        },
        Case {
            name: "CreateContainer: 100k environment variables",
            want: OK,
            containerd: None,
            why: "containerd: the CRI sets no limit; the kernel may refuse the exec later",
            call: |e| {
                e.garbage_container(|c| {
                    c.envs = (0..100_000)
                        .map(|i| KeyValue {
                            key: format!("K{i}"),
                            value: "v".into(),
                        })
                        .collect();
                })
            },
        },
        Case {
            name: "CreateContainer: environment names with = and NUL",
            want: INVALID,
            containerd: Some(OK),
            why: "NUL cannot reach execve; containerd 1.6 accepts it and fails at start",
            call: |e| {
                e.garbage_container(|c| {
                    c.envs = vec![KeyValue {
                        key: "A=B\0C".into(),
                        value: "v".into(),
                    }];
                })
            },
        },
        Case {
            name: "CreateContainer: 4 MiB of arguments",
            want: OK,
            containerd: None,
            why: "containerd (and kubelet's client) accept CRI messages of up to 16 MiB",
            call: |e| e.garbage_container(|c| c.args = vec![big(MIB); 4]),
        },
        Case {
            name: "CreateContainer: NUL in the command",
            want: INVALID,
            containerd: Some(OK),
            why: "NUL cannot reach execve; containerd 1.6 accepts it and fails at start",
            call: |e| e.garbage_container(|c| c.command = vec!["sh\0x".into()]),
        },
        Case {
            name: "CreateContainer: negative resources",
            want: INVALID,
            containerd: Some(OK),
            why: "no limit is negative; containerd 1.6 passes them on to runc",
            call: |e| {
                e.garbage_container(|c| {
                    c.linux.get_or_insert_with(Default::default).resources =
                        Some(LinuxContainerResources {
                            cpu_shares: -1,
                            memory_limit_in_bytes: -5,
                            cpu_quota: -7,
                            cpu_period: -1,
                            ..Default::default()
                        });
                })
            },
        },
        Case {
            name: "CreateContainer: recursive_read_only without readonly",
            want: INVALID,
            containerd: Some(OK),
            why: "the CRI: recursive_read_only requires readonly; containerd 1.6 predates the field",
            call: |e| {
                e.garbage_container(|c| {
                    c.mounts = vec![Mount {
                        container_path: "/mnt".into(),
                        host_path: "/tmp".into(),
                        readonly: false,
                        recursive_read_only: true,
                        ..Default::default()
                    }];
                })
            },
        },
        Case {
            name: "CreateContainer: relative mount paths",
            want: INVALID,
            containerd: Some(OK),
            why: "a mount's paths are absolute; containerd 1.6 passes them on",
            call: |e| {
                e.garbage_container(|c| {
                    c.mounts = vec![Mount {
                        container_path: "mnt".into(),
                        host_path: "relative/host".into(),
                        ..Default::default()
                    }];
                })
            },
        },
        Case {
            name: "CreateContainer: missing device",
            want: INVALID,
            containerd: Some(UNKNOWN),
            why: "the request names a device the host lacks; containerd 1.6 answers Unknown (lstat)",
            call: |e| {
                e.garbage_container(|c| {
                    c.devices = vec![Device {
                        container_path: "/dev/x".into(),
                        host_path: "/dev/no-such-device".into(),
                        permissions: "rwm".into(),
                    }];
                })
            },
        },
        Case {
            name: "CreateContainer: tty with stdin_once but no stdin",
            want: OK,
            containerd: None,
            why: "containerd: stdin_once without stdin has nothing to close",
            call: |e| {
                e.garbage_container(|c| {
                    c.tty = true;
                    c.stdin_once = true;
                })
            },
        },
        Case {
            name: "CreateContainer: log path escaping the log directory",
            want: INVALID,
            containerd: Some(OK),
            why: "the CRI: log_path is relative to the pod's log_directory; containerd 1.6 joins it unchecked (and opens it only at start)",
            call: |e| e.garbage_container(|c| c.log_path = escaping_log_path(&e.escape)),
        },
        // Calls on unknown ids.
        Case {
            name: "StartContainer: unknown",
            want: NOT_FOUND,
            containerd: None,
            why: "containerd: no such container",
            call: |e| {
                rpc!(
                    e,
                    runtime.start_container(StartContainerRequest {
                        container_id: "nope".into()
                    })
                )
            },
        },
        Case {
            name: "StartContainer: empty",
            want: INVALID,
            containerd: Some(UNKNOWN),
            why: "an empty id names nothing; containerd 1.6 answers Unknown",
            call: |e| rpc!(e, runtime.start_container(StartContainerRequest::default())),
        },
        Case {
            name: "StopContainer: unknown (idempotent)",
            want: OK,
            containerd: Some(NOT_FOUND),
            why: "the CRI: StopContainer is idempotent; containerd 1.6 answers NotFound",
            call: |e| {
                rpc!(
                    e,
                    runtime.stop_container(StopContainerRequest {
                        container_id: "nope".into(),
                        timeout: -5
                    })
                )
            },
        },
        Case {
            name: "RemoveContainer: unknown (idempotent)",
            want: OK,
            containerd: None,
            why: "the CRI: removing a container that is not there succeeds",
            call: |e| {
                rpc!(
                    e,
                    runtime.remove_container(RemoveContainerRequest {
                        container_id: "nope".into()
                    })
                )
            },
        },
        Case {
            name: "ContainerStatus: unknown",
            want: NOT_FOUND,
            containerd: None,
            why: "containerd: no such container",
            call: |e| {
                rpc!(
                    e,
                    runtime.container_status(ContainerStatusRequest {
                        container_id: "nope".into(),
                        verbose: true
                    })
                )
            },
        },
        Case {
            name: "ContainerStatus: empty",
            want: INVALID,
            containerd: Some(UNKNOWN),
            why: "an empty id names nothing; containerd 1.6 answers Unknown",
            call: |e| {
                rpc!(
                    e,
                    runtime.container_status(ContainerStatusRequest::default())
                )
            },
        },
        Case {
            name: "PodSandboxStatus: unknown",
            want: NOT_FOUND,
            containerd: None,
            why: "containerd: no such pod",
            call: |e| {
                rpc!(
                    e,
                    runtime.pod_sandbox_status(PodSandboxStatusRequest {
                        pod_sandbox_id: "nope".into(),
                        verbose: true
                    })
                )
            },
        },
        Case {
            name: "StopPodSandbox: unknown (idempotent)",
            want: OK,
            containerd: Some(NOT_FOUND),
            why: "the CRI: StopPodSandbox is idempotent; containerd 1.6 answers NotFound",
            call: |e| {
                rpc!(
                    e,
                    runtime.stop_pod_sandbox(StopPodSandboxRequest {
                        pod_sandbox_id: "nope".into()
                    })
                )
            },
        },
        Case {
            name: "RemovePodSandbox: unknown (idempotent)",
            want: OK,
            containerd: None,
            why: "the CRI: removing a pod that is not there succeeds",
            call: |e| {
                rpc!(
                    e,
                    runtime.remove_pod_sandbox(RemovePodSandboxRequest {
                        pod_sandbox_id: "nope".into()
                    })
                )
            },
        },
        Case {
            name: "ExecSync: unknown",
            want: NOT_FOUND,
            containerd: None,
            why: "containerd: no such container",
            call: |e| {
                rpc!(
                    e,
                    runtime.exec_sync(ExecSyncRequest {
                        container_id: "nope".into(),
                        cmd: vec!["true".into()],
                        timeout: -1
                    })
                )
            },
        },
        Case {
            name: "ExecSync: empty",
            want: INVALID,
            containerd: Some(UNKNOWN),
            why: "an empty id names nothing; containerd 1.6 answers Unknown",
            call: |e| rpc!(e, runtime.exec_sync(ExecSyncRequest::default())),
        },
        Case {
            name: "Exec: unknown",
            want: NOT_FOUND,
            containerd: None,
            why: "containerd: no such container",
            call: |e| {
                rpc!(
                    e,
                    runtime.exec(ExecRequest {
                        container_id: "nope".into(),
                        cmd: vec!["sh".into()],
                        stdout: true,
                        ..Default::default()
                    })
                )
            },
        },
        Case {
            name: "Exec: no streams",
            want: NOT_FOUND,
            containerd: None,
            why: "containerd: the container is looked up before the streams",
            call: |e| {
                rpc!(
                    e,
                    runtime.exec(ExecRequest {
                        container_id: "nope".into(),
                        cmd: vec!["sh".into()],
                        ..Default::default()
                    })
                )
            },
        },
        Case {
            name: "Exec: tty with stderr",
            want: NOT_FOUND,
            containerd: None,
            why: "containerd: the container is looked up before the streams",
            call: |e| {
                rpc!(
                    e,
                    runtime.exec(ExecRequest {
                        container_id: "nope".into(),
                        cmd: vec!["sh".into()],
                        tty: true,
                        stdout: true,
                        stderr: true,
                        ..Default::default()
                    })
                )
            },
        },
        Case {
            name: "Attach: unknown",
            want: NOT_FOUND,
            containerd: None,
            why: "containerd: no such container",
            call: |e| {
                rpc!(
                    e,
                    runtime.attach(AttachRequest {
                        container_id: "nope".into(),
                        stdout: true,
                        ..Default::default()
                    })
                )
            },
        },
        Case {
            name: "PortForward: unknown",
            want: NOT_FOUND,
            containerd: None,
            why: "containerd: no such pod",
            call: |e| {
                rpc!(
                    e,
                    runtime.port_forward(PortForwardRequest {
                        pod_sandbox_id: "nope".into(),
                        port: vec![80]
                    })
                )
            },
        },
        Case {
            name: "PortForward: port out of range",
            want: INVALID,
            containerd: Some(OK),
            why: "no such port; containerd 1.6 hands out the URL and fails the stream",
            call: |e| {
                rpc!(
                    e,
                    runtime.port_forward(PortForwardRequest {
                        pod_sandbox_id: e.pod.clone(),
                        port: vec![-1, 70000]
                    })
                )
            },
        },
        Case {
            name: "UpdateContainerResources: unknown",
            want: NOT_FOUND,
            containerd: None,
            why: "containerd: no such container",
            call: |e| {
                rpc!(
                    e,
                    runtime.update_container_resources(UpdateContainerResourcesRequest {
                        container_id: "nope".into(),
                        ..Default::default()
                    })
                )
            },
        },
        Case {
            name: "ReopenContainerLog: unknown",
            want: NOT_FOUND,
            containerd: None,
            why: "containerd: no such container",
            call: |e| {
                rpc!(
                    e,
                    runtime.reopen_container_log(ReopenContainerLogRequest {
                        container_id: "nope".into()
                    })
                )
            },
        },
        Case {
            name: "ContainerStats: unknown",
            want: NOT_FOUND,
            containerd: None,
            why: "containerd: no such container",
            call: |e| {
                rpc!(
                    e,
                    runtime.container_stats(ContainerStatsRequest {
                        container_id: "nope".into()
                    })
                )
            },
        },
        Case {
            name: "PodSandboxStats: unknown",
            want: NOT_FOUND,
            containerd: None,
            why: "containerd: no such pod",
            call: |e| {
                rpc!(
                    e,
                    runtime.pod_sandbox_stats(PodSandboxStatsRequest {
                        pod_sandbox_id: "nope".into()
                    })
                )
            },
        },
        Case {
            name: "ListContainers: garbage filter",
            want: OK,
            containerd: None,
            why: "containerd: a filter that matches nothing lists nothing",
            call: |e| {
                rpc!(
                    e,
                    runtime.list_containers(ListContainersRequest {
                        filter: Some(ContainerFilter {
                            id: big(MIB),
                            state: None,
                            pod_sandbox_id: "\u{fffd}".into(),
                            label_selector: many(1000, "s")
                        })
                    })
                )
            },
        },
        Case {
            name: "ListPodSandbox: empty",
            want: OK,
            containerd: None,
            why: "containerd: no filter lists every pod",
            call: |e| {
                rpc!(
                    e,
                    runtime.list_pod_sandbox(ListPodSandboxRequest::default())
                )
            },
        },
        Case {
            name: "ListContainerStats: empty",
            want: OK,
            containerd: None,
            why: "containerd: no filter lists every container",
            call: |e| {
                rpc!(
                    e,
                    runtime.list_container_stats(ListContainerStatsRequest::default())
                )
            },
        },
        Case {
            name: "UpdateRuntimeConfig: empty",
            want: OK,
            containerd: None,
            why: "containerd: no pod CIDR changes nothing",
            call: |e| {
                rpc!(
                    e,
                    runtime.update_runtime_config(UpdateRuntimeConfigRequest::default())
                )
            },
        },
        Case {
            name: "Status: empty",
            want: OK,
            containerd: None,
            why: "containerd: Status has no required field",
            call: |e| rpc!(e, runtime.status(StatusRequest::default())),
        },
        Case {
            name: "CheckpointContainer: unknown",
            want: Want::Code(Code::Unimplemented),
            containerd: None,
            why: "containerd 1.6: checkpointing is not implemented",
            call: |e| {
                rpc!(
                    e,
                    runtime.checkpoint_container(CheckpointContainerRequest {
                        container_id: "nope".into(),
                        ..Default::default()
                    })
                )
            },
        },
        // ImageService.
        Case {
            name: "PullImage: empty",
            want: INVALID,
            containerd: Some(UNKNOWN),
            why: "the image is required; containerd 1.6 answers Unknown",
            call: |e| rpc!(e, image.pull_image(pull(None, None))),
        },
        Case {
            name: "PullImage: empty name",
            want: INVALID,
            containerd: Some(UNKNOWN),
            why: "the empty string is no reference; containerd 1.6 answers Unknown",
            call: |e| rpc!(e, image.pull_image(pull(spec(""), None))),
        },
        Case {
            name: "PullImage: 1 MiB name",
            want: INVALID,
            containerd: Some(Want::Code(Code::Internal)),
            why: "no reference is over 255 bytes; containerd 1.6 echoes the name into grpc-message, past the client's header limit (h2 error)",
            call: |e| rpc!(e, image.pull_image(pull(spec(&big(MIB)), None))),
        },
        Case {
            name: "PullImage: NUL in name",
            want: INVALID,
            containerd: Some(UNKNOWN),
            why: "NUL is no reference character; containerd 1.6 answers Unknown",
            call: |e| rpc!(e, image.pull_image(pull(spec("busy\0box"), None))),
        },
        Case {
            name: "PullImage: garbage auth",
            want: Want::Code(Code::PermissionDenied),
            containerd: Some(OK),
            why: "auth that does not decode cannot authenticate; containerd 1.6 decodes it only if the registry asks",
            call: |e| {
                rpc!(
                    e,
                    image.pull_image(pull(
                        spec(&e.image),
                        Some(AuthConfig {
                            auth: "%%% not base64".into(),
                            ..Default::default()
                        })
                    ))
                )
            },
        },
        Case {
            name: "ImageStatus: empty",
            want: INVALID,
            containerd: Some(UNKNOWN),
            why: "the image is required; containerd 1.6 answers Unknown",
            call: |e| rpc!(e, image.image_status(ImageStatusRequest::default())),
        },
        Case {
            name: "ImageStatus: unknown",
            want: OK,
            containerd: None,
            why: "the CRI: an image that is not there has a nil status, not an error",
            call: |e| {
                rpc!(
                    e,
                    image.image_status(ImageStatusRequest {
                        image: spec("127.0.0.1:1/none:x"),
                        verbose: true
                    })
                )
            },
        },
        Case {
            name: "ImageStatus: 1 MiB name",
            want: INVALID,
            containerd: Some(OK),
            why: "no reference is over 255 bytes, as PullImage says; containerd 1.6 looks it up as an id and finds none",
            call: |e| {
                rpc!(
                    e,
                    image.image_status(ImageStatusRequest {
                        image: spec(&big(MIB)),
                        verbose: false
                    })
                )
            },
        },
        Case {
            name: "RemoveImage: empty",
            want: INVALID,
            containerd: Some(UNKNOWN),
            why: "the image is required; containerd 1.6 answers Unknown",
            call: |e| rpc!(e, image.remove_image(RemoveImageRequest::default())),
        },
        Case {
            name: "RemoveImage: unknown (idempotent)",
            want: OK,
            containerd: None,
            why: "the CRI: removing an image that is not there succeeds",
            call: |e| {
                rpc!(
                    e,
                    image.remove_image(RemoveImageRequest {
                        image: spec("127.0.0.1:1/none:x")
                    })
                )
            },
        },
        Case {
            name: "ListImages: garbage filter",
            want: INVALID,
            containerd: Some(OK),
            why: "no reference is over 255 bytes, as PullImage says; containerd 1.6 lists nothing",
            call: |e| {
                rpc!(
                    e,
                    image.list_images(ListImagesRequest {
                        filter: Some(ImageFilter {
                            image: spec(&big(MIB))
                        })
                    })
                )
            },
        },
    ]
}
