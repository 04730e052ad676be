//! Garbage CRI requests against bungeo: empty messages, oversized fields, contradictory fields
//! and unknown ids for every RuntimeService and ImageService call. Each must answer a gRPC
//! error with a code that names the fault (InvalidArgument, NotFound, FailedPrecondition,
//! OutOfRange, ResourceExhausted, PermissionDenied, Unimplemented; never Unknown or Internal, which is what a
//! panic or an unmapped error looks like), or success where the CRI asks for it; the daemon
//! must answer Version after each, must log no panic, and once the batch is done nothing it
//! created may be left (pods, containers, files under the state dir and the root's sandboxes/
//! and containers/, mounts).
//!
//! bungeo only: what is checked is bungeo's own input handling; containerd's answers differ in
//! codes without telling us anything about bungeo.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use anyhow::{Context, Result, bail, ensure};
use bungeo_tests::cri::Cri;
use bungeo_tests::mounts::mounts_under;
use bungeo_tests::procstat;
use bungeo_tests::workload::{
    BusyboxRegistry, container_config, listed, pod_config, remove_container, remove_pod, run_pod,
};
use k8s_cri::v1::{
    AttachRequest, AuthConfig, CheckpointContainerRequest, ContainerConfig, ContainerFilter,
    ContainerStatsRequest, ContainerStatusRequest, CreateContainerRequest, Device, ExecRequest,
    ExecSyncRequest, ImageSpec, ImageStatusRequest, KeyValue, LinuxContainerResources,
    ListContainerStatsRequest, ListContainersRequest, ListImagesRequest, ListPodSandboxRequest,
    Mount, NamespaceMode, PodSandboxConfig, PodSandboxStatsRequest, PodSandboxStatusRequest,
    PortForwardRequest, PortMapping, PullImageRequest, RemoveContainerRequest, RemoveImageRequest,
    RemovePodSandboxRequest, ReopenContainerLogRequest, RunPodSandboxRequest,
    StartContainerRequest, StatusRequest, StopContainerRequest, StopPodSandboxRequest,
    UpdateContainerResourcesRequest, UpdateRuntimeConfigRequest, UserNamespace,
};
use libtest_mimic::{Arguments, Failed, Trial};
use tonic::{Code, Status};

const NAMESPACE: &str = "bungeo-e2e-cri-input";
const MIB: usize = 1 << 20;

fn main() {
    let args = Arguments::from_args();
    let trials = vec![Trial::test("bungeo::garbage_requests", || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Failed::from(format!("tokio runtime: {e}")))?;
        rt.block_on(garbage_requests())
            .map_err(|e| Failed::from(format!("{e:#}")))
    })];
    libtest_mimic::run(&args, trials).exit()
}

/// What a case must answer.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// Success: the CRI asks for it (idempotent stop/remove of unknown ids, empty listings).
    Ok,
    /// An error with this code.
    Code(Code),
    /// Any error naming the fault.
    Error,
    /// Success or such an error: the CRI does not say (e.g. 10k labels).
    Either,
}

/// Something a case made that must be removed again.
enum Made {
    Nothing,
    Pod(String),
    Container(String),
}

type Call = Pin<Box<dyn Future<Output = Result<Made, Status>> + Send>>;

/// Codes that name a fault in the request or the object; Unknown and Internal do not.
fn names_the_fault(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::ResourceExhausted
            | Code::PermissionDenied
            | Code::Unimplemented
    )
}

fn big(n: usize) -> String {
    "a".repeat(n)
}

fn many(n: usize, prefix: &str) -> HashMap<String, String> {
    (0..n)
        .map(|i| (format!("{prefix}.example.com/k{i}"), format!("v{i}")))
        .collect()
}

fn pod_req(config: Option<PodSandboxConfig>, handler: &str) -> RunPodSandboxRequest {
    RunPodSandboxRequest {
        config,
        runtime_handler: handler.to_string(),
    }
}

async fn garbage_requests() -> Result<()> {
    let reg = BusyboxRegistry::start().await?;
    let (bungeo, mut cri) = reg.bungeo("").await?;
    let image = reg.busybox();
    let state_before = procstat::files_below(bungeo.state());
    let root_dirs = ["sandboxes", "containers"].map(|d| bungeo.root().join(d));
    let root_before: Vec<_> = root_dirs.iter().map(|d| procstat::files_below(d)).collect();

    // One real pod for the container cases.
    let pod_cfg = pod_config(NAMESPACE, "host", "");
    let pod = run_pod(&mut cri, pod_cfg.clone()).await?;
    let cases = cases(&cri, &pod, &pod_cfg, &image);
    let total = cases.len();
    let mut failures = Vec::new();
    for (name, want, call) in cases {
        let got = call.await;
        let line = match &got {
            Ok(_) => "ok".to_string(),
            Err(s) => format!("{:?}: {}", s.code(), truncate(s.message())),
        };
        eprintln!("{name}: {line}");
        let fine = match (&got, want) {
            (Ok(_), Want::Ok | Want::Either) => true,
            (Err(s), Want::Code(c)) => s.code() == c,
            (Err(s), Want::Error | Want::Either) => names_the_fault(s.code()),
            _ => false,
        };
        if !fine {
            failures.push(format!("{name}: got {line}, want {want:?}"));
        }
        match got {
            Ok(Made::Pod(id)) => remove_pod(&mut cri, &id).await?,
            Ok(Made::Container(id)) => remove_container(&mut cri, &id, 0).await?,
            _ => {}
        }
        if let Err(e) = cri.version().await {
            // A call that kills the connection fails every other call on it: a finding even
            // when the daemon survives (the channel reconnects for the next call).
            failures.push(format!(
                "{name}: the connection broke: {}",
                truncate(&format!("{e:#}"))
            ));
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            if let Err(e) = cri.version().await {
                bail!(
                    "bungeo stopped answering after {name}: {}\n{}",
                    truncate(&format!("{e:#}")),
                    truncate(&bungeo.log_tail(30))
                );
            }
        }
    }
    remove_pod(&mut cri, &pod).await?;

    let log = std::fs::read_to_string(bungeo.log()).context("read the bungeo log")?;
    if let Some(line) = log.lines().find(|l| l.contains("panicked")) {
        failures.push(format!("the daemon panicked: {}", truncate(line)));
    }
    let (pods, containers) = listed(&mut cri).await?;
    ensure!(
        pods.is_empty() && containers.is_empty(),
        "left after the batch: pods {pods:?}, containers {containers:?}"
    );
    let state_after = procstat::files_below(bungeo.state());
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
    let mounts = [mounts_under(bungeo.root())?, mounts_under(bungeo.state())?].concat();
    // The image's snapshots are mounted by nothing once its containers are gone.
    ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
    eprintln!("{total} garbage requests, {} wrong answers", failures.len());
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

/// Every case: (name, expected answer, the call).
fn cases(
    cri: &Cri,
    pod: &str,
    pod_cfg: &PodSandboxConfig,
    image: &str,
) -> Vec<(String, Want, Call)> {
    let mut v: Vec<(String, Want, Call)> = Vec::new();
    let mut add = |name: &str, want: Want, call: Call| v.push((name.to_string(), want, call));

    // RunPodSandbox.
    let run_pod_case = |req: RunPodSandboxRequest| -> Call {
        let mut c = cri.clone();
        Box::pin(async move {
            let id = c
                .runtime
                .run_pod_sandbox(req)
                .await?
                .into_inner()
                .pod_sandbox_id;
            Ok(Made::Pod(id))
        })
    };
    add(
        "RunPodSandbox: empty",
        Want::Code(Code::InvalidArgument),
        run_pod_case(pod_req(None, "")),
    );
    add(
        "RunPodSandbox: no metadata",
        Want::Code(Code::InvalidArgument),
        run_pod_case(pod_req(Some(PodSandboxConfig::default()), "")),
    );
    let with = |f: &dyn Fn(&mut PodSandboxConfig)| {
        let mut c = pod_config(NAMESPACE, "garbage", "");
        f(&mut c);
        c
    };
    add(
        "RunPodSandbox: 1 MiB name",
        Want::Error,
        run_pod_case(pod_req(
            Some(with(&|c| {
                c.metadata.as_mut().map_or((), |m| m.name = big(MIB))
            })),
            "",
        )),
    );
    add(
        "RunPodSandbox: 1 MiB hostname",
        Want::Error,
        run_pod_case(pod_req(Some(with(&|c| c.hostname = big(MIB))), "")),
    );
    add(
        "RunPodSandbox: 10k labels and annotations",
        Want::Either,
        run_pod_case(pod_req(
            Some(with(&|c| {
                c.labels.extend(many(10_000, "l"));
                c.annotations = many(10_000, "a");
            })),
            "",
        )),
    );
    add(
        "RunPodSandbox: unknown runtime handler",
        Want::Error,
        run_pod_case(pod_req(Some(with(&|_| {})), "no-such-handler")),
    );
    add(
        "RunPodSandbox: ports out of range, bad host IP",
        Want::Error,
        run_pod_case(pod_req(
            Some(with(&|c| {
                c.port_mappings = vec![PortMapping {
                    protocol: 0,
                    container_port: -1,
                    host_port: 70000,
                    host_ip: "not-an-ip".into(),
                }]
            })),
            "",
        )),
    );
    add(
        "RunPodSandbox: unknown protocol",
        Want::Error,
        run_pod_case(pod_req(
            Some(with(&|c| {
                c.port_mappings = vec![PortMapping {
                    protocol: 99,
                    container_port: 80,
                    host_port: 8080,
                    host_ip: String::new(),
                }]
            })),
            "",
        )),
    );
    add(
        "RunPodSandbox: privileged with a user namespace",
        Want::Error,
        run_pod_case(pod_req(
            Some(with(&|c| {
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
            })),
            "",
        )),
    );
    add(
        "RunPodSandbox: bad sysctl",
        Want::Error,
        run_pod_case(pod_req(
            Some(with(&|c| {
                c.linux.get_or_insert_with(Default::default).sysctls =
                    HashMap::from([("../../proc/sys/kernel/panic".into(), "1".into())]);
            })),
            "",
        )),
    );

    // CreateContainer.
    let create =
        |pod: &str, config: Option<ContainerConfig>, sandbox: Option<PodSandboxConfig>| -> Call {
            let mut c = cri.clone();
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
        };
    let ctr = |f: &dyn Fn(&mut ContainerConfig)| {
        let mut c = container_config("garbage", image, &["sleep", "1"]);
        f(&mut c);
        Some(c)
    };
    let sb = Some(pod_cfg.clone());
    add(
        "CreateContainer: empty",
        Want::Error,
        create("", None, None),
    );
    add(
        "CreateContainer: unknown pod",
        Want::Code(Code::NotFound),
        create("no-such-pod", ctr(&|_| {}), sb.clone()),
    );
    add(
        "CreateContainer: no config",
        Want::Code(Code::InvalidArgument),
        create(pod, None, sb.clone()),
    );
    add(
        "CreateContainer: no metadata",
        Want::Code(Code::InvalidArgument),
        create(pod, ctr(&|c| c.metadata = None), sb.clone()),
    );
    add(
        "CreateContainer: no image",
        Want::Error,
        create(pod, ctr(&|c| c.image = None), sb.clone()),
    );
    add(
        "CreateContainer: empty image",
        Want::Error,
        create(
            pod,
            ctr(&|c| c.image = Some(ImageSpec::default())),
            sb.clone(),
        ),
    );
    add(
        "CreateContainer: image not pulled",
        Want::Error,
        create(
            pod,
            ctr(&|c| {
                c.image
                    .as_mut()
                    .map_or((), |i| i.image = "127.0.0.1:1/none:x".into())
            }),
            sb.clone(),
        ),
    );
    add(
        "CreateContainer: 1 MiB name",
        Want::Either,
        create(
            pod,
            ctr(&|c| c.metadata.as_mut().map_or((), |m| m.name = big(MIB))),
            sb.clone(),
        ),
    );
    add(
        "CreateContainer: 10k labels and annotations",
        Want::Either,
        create(
            pod,
            ctr(&|c| {
                c.labels = many(10_000, "l");
                c.annotations = many(10_000, "a");
            }),
            sb.clone(),
        ),
    );
    add(
        "CreateContainer: 100k environment variables",
        Want::Either,
        create(
            pod,
            ctr(&|c| {
                c.envs = (0..100_000)
                    .map(|i| KeyValue {
                        key: format!("K{i}"),
                        value: "v".into(),
                    })
                    .collect();
            }),
            sb.clone(),
        ),
    );
    add(
        "CreateContainer: environment names with = and NUL",
        Want::Error,
        create(
            pod,
            ctr(&|c| {
                c.envs = vec![KeyValue {
                    key: "A=B\0C".into(),
                    value: "v".into(),
                }];
            }),
            sb.clone(),
        ),
    );
    add(
        "CreateContainer: 4 MiB of arguments",
        Want::Either,
        create(pod, ctr(&|c| c.args = vec![big(MIB); 4]), sb.clone()),
    );
    add(
        "CreateContainer: NUL in the command",
        Want::Error,
        create(pod, ctr(&|c| c.command = vec!["sh\0x".into()]), sb.clone()),
    );
    add(
        "CreateContainer: negative resources",
        Want::Error,
        create(
            pod,
            ctr(&|c| {
                c.linux.get_or_insert_with(Default::default).resources =
                    Some(LinuxContainerResources {
                        cpu_shares: -1,
                        memory_limit_in_bytes: -5,
                        cpu_quota: -7,
                        cpu_period: -1,
                        ..Default::default()
                    });
            }),
            sb.clone(),
        ),
    );
    add(
        "CreateContainer: recursive_read_only without readonly",
        Want::Code(Code::InvalidArgument),
        create(
            pod,
            ctr(&|c| {
                c.mounts = vec![Mount {
                    container_path: "/mnt".into(),
                    host_path: "/tmp".into(),
                    readonly: false,
                    recursive_read_only: true,
                    ..Default::default()
                }];
            }),
            sb.clone(),
        ),
    );
    add(
        "CreateContainer: relative mount paths",
        Want::Error,
        create(
            pod,
            ctr(&|c| {
                c.mounts = vec![Mount {
                    container_path: "mnt".into(),
                    host_path: "relative/host".into(),
                    ..Default::default()
                }];
            }),
            sb.clone(),
        ),
    );
    add(
        "CreateContainer: missing device",
        Want::Error,
        create(
            pod,
            ctr(&|c| {
                c.devices = vec![Device {
                    container_path: "/dev/x".into(),
                    host_path: "/dev/no-such-device".into(),
                    permissions: "rwm".into(),
                }];
            }),
            sb.clone(),
        ),
    );
    add(
        "CreateContainer: tty with stdin_once but no stdin",
        Want::Either,
        create(
            pod,
            ctr(&|c| {
                c.tty = true;
                c.stdin_once = true;
            }),
            sb.clone(),
        ),
    );
    add(
        "CreateContainer: log path escaping the log directory",
        Want::Either,
        create(
            pod,
            ctr(&|c| c.log_path = "../../../../etc/bungeo-garbage.log".into()),
            sb.clone(),
        ),
    );

    // Calls on unknown ids.
    macro_rules! call {
        ($name:expr, $want:expr, $client:ident . $method:ident ( $req:expr )) => {{
            let mut c = cri.clone();
            let req = $req;
            add(
                $name,
                $want,
                Box::pin(async move {
                    c.$client.$method(req).await?;
                    Ok(Made::Nothing)
                }),
            );
        }};
    }
    let nf = Want::Code(Code::NotFound);
    call!(
        "StartContainer: unknown",
        nf,
        runtime.start_container(StartContainerRequest {
            container_id: "nope".into()
        })
    );
    call!(
        "StartContainer: empty",
        Want::Error,
        runtime.start_container(StartContainerRequest::default())
    );
    call!(
        "StopContainer: unknown (idempotent)",
        Want::Ok,
        runtime.stop_container(StopContainerRequest {
            container_id: "nope".into(),
            timeout: -5
        })
    );
    call!(
        "RemoveContainer: unknown (idempotent)",
        Want::Ok,
        runtime.remove_container(RemoveContainerRequest {
            container_id: "nope".into()
        })
    );
    call!(
        "ContainerStatus: unknown",
        nf,
        runtime.container_status(ContainerStatusRequest {
            container_id: "nope".into(),
            verbose: true
        })
    );
    call!(
        "ContainerStatus: empty",
        Want::Error,
        runtime.container_status(ContainerStatusRequest::default())
    );
    call!(
        "PodSandboxStatus: unknown",
        nf,
        runtime.pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: "nope".into(),
            verbose: true
        })
    );
    call!(
        "StopPodSandbox: unknown (idempotent)",
        Want::Ok,
        runtime.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: "nope".into()
        })
    );
    call!(
        "RemovePodSandbox: unknown (idempotent)",
        Want::Ok,
        runtime.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: "nope".into()
        })
    );
    call!(
        "ExecSync: unknown",
        nf,
        runtime.exec_sync(ExecSyncRequest {
            container_id: "nope".into(),
            cmd: vec!["true".into()],
            timeout: -1
        })
    );
    call!(
        "ExecSync: empty",
        Want::Error,
        runtime.exec_sync(ExecSyncRequest::default())
    );
    call!(
        "Exec: unknown",
        nf,
        runtime.exec(ExecRequest {
            container_id: "nope".into(),
            cmd: vec!["sh".into()],
            stdout: true,
            ..Default::default()
        })
    );
    call!(
        "Exec: no streams",
        Want::Error,
        runtime.exec(ExecRequest {
            container_id: "nope".into(),
            cmd: vec!["sh".into()],
            ..Default::default()
        })
    );
    call!(
        "Exec: tty with stderr",
        Want::Error,
        runtime.exec(ExecRequest {
            container_id: "nope".into(),
            cmd: vec!["sh".into()],
            tty: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        })
    );
    call!(
        "Attach: unknown",
        nf,
        runtime.attach(AttachRequest {
            container_id: "nope".into(),
            stdout: true,
            ..Default::default()
        })
    );
    call!(
        "PortForward: unknown",
        nf,
        runtime.port_forward(PortForwardRequest {
            pod_sandbox_id: "nope".into(),
            port: vec![80]
        })
    );
    call!(
        "PortForward: port out of range",
        Want::Error,
        runtime.port_forward(PortForwardRequest {
            pod_sandbox_id: pod.to_string(),
            port: vec![-1, 70000]
        })
    );
    call!(
        "UpdateContainerResources: unknown",
        nf,
        runtime.update_container_resources(UpdateContainerResourcesRequest {
            container_id: "nope".into(),
            ..Default::default()
        })
    );
    call!(
        "ReopenContainerLog: unknown",
        nf,
        runtime.reopen_container_log(ReopenContainerLogRequest {
            container_id: "nope".into()
        })
    );
    call!(
        "ContainerStats: unknown",
        nf,
        runtime.container_stats(ContainerStatsRequest {
            container_id: "nope".into()
        })
    );
    call!(
        "PodSandboxStats: unknown",
        nf,
        runtime.pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: "nope".into()
        })
    );
    call!(
        "ListContainers: garbage filter",
        Want::Ok,
        runtime.list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                id: big(MIB),
                state: None,
                pod_sandbox_id: "\u{fffd}".into(),
                label_selector: many(1000, "s")
            })
        })
    );
    call!(
        "ListPodSandbox: empty",
        Want::Ok,
        runtime.list_pod_sandbox(ListPodSandboxRequest::default())
    );
    call!(
        "ListContainerStats: empty",
        Want::Ok,
        runtime.list_container_stats(ListContainerStatsRequest::default())
    );
    call!(
        "UpdateRuntimeConfig: empty",
        Want::Ok,
        runtime.update_runtime_config(UpdateRuntimeConfigRequest::default())
    );
    call!(
        "Status: empty",
        Want::Ok,
        runtime.status(StatusRequest::default())
    );
    call!(
        "CheckpointContainer: unknown",
        Want::Error,
        runtime.checkpoint_container(CheckpointContainerRequest {
            container_id: "nope".into(),
            ..Default::default()
        })
    );

    // ImageService.
    let spec = |s: &str| {
        Some(ImageSpec {
            image: s.to_string(),
            ..Default::default()
        })
    };
    let pull = |image: Option<ImageSpec>, auth: Option<AuthConfig>| PullImageRequest {
        image,
        auth,
        sandbox_config: None,
    };
    call!(
        "PullImage: empty",
        Want::Code(Code::InvalidArgument),
        image.pull_image(pull(None, None))
    );
    call!(
        "PullImage: empty name",
        Want::Code(Code::InvalidArgument),
        image.pull_image(pull(spec(""), None))
    );
    call!(
        "PullImage: 1 MiB name",
        Want::Code(Code::InvalidArgument),
        image.pull_image(pull(spec(&big(MIB)), None))
    );
    call!(
        "PullImage: NUL in name",
        Want::Code(Code::InvalidArgument),
        image.pull_image(pull(spec("busy\0box"), None))
    );
    call!(
        "PullImage: garbage auth",
        Want::Error,
        image.pull_image(pull(
            spec(image),
            Some(AuthConfig {
                auth: "%%% not base64".into(),
                ..Default::default()
            })
        ))
    );
    call!(
        "ImageStatus: empty",
        Want::Error,
        image.image_status(ImageStatusRequest::default())
    );
    call!(
        "ImageStatus: unknown",
        Want::Ok,
        image.image_status(ImageStatusRequest {
            image: spec("127.0.0.1:1/none:x"),
            verbose: true
        })
    );
    call!(
        "ImageStatus: 1 MiB name",
        Want::Either,
        image.image_status(ImageStatusRequest {
            image: spec(&big(MIB)),
            verbose: false
        })
    );
    call!(
        "RemoveImage: empty",
        Want::Error,
        image.remove_image(RemoveImageRequest::default())
    );
    call!(
        "RemoveImage: unknown (idempotent)",
        Want::Ok,
        image.remove_image(RemoveImageRequest {
            image: spec("127.0.0.1:1/none:x")
        })
    );
    call!(
        "ListImages: garbage filter",
        Want::Either,
        image.list_images(ListImagesRequest {
            filter: Some(k8s_cri::v1::ImageFilter {
                image: spec(&big(MIB))
            })
        })
    );
    v
}
