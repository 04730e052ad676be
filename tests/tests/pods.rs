//! The CRI pod sandbox calls, run against bungeo and against containerd (the reference).
//!
//! Checks run side by side on one daemon per target, so each names its pods after itself
//! (the `check` label) and looks only at those. Every check removes what it made, also when
//! it fails. Where the two daemons legitimately answer differently the check says so and
//! asserts each daemon's own behaviour.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bungeo_tests::bungeo::Bungeo;
use bungeo_tests::cri::{Cri, Target};
use bungeo_tests::mounts::mounts_under;
use bungeo_tests::scene::{RESOLV_CONF, now_ns, pod_linux, test_dns};
use bungeo_tests::suite::{Ctx, Daemon, run_suite};
use bungeo_tests::{check, ensure_eq};
use k8s_cri::v1::{
    ListPodSandboxRequest, NamespaceMode, PodSandbox, PodSandboxConfig, PodSandboxFilter,
    PodSandboxMetadata, PodSandboxState, PodSandboxStateValue, PodSandboxStatusRequest,
    PodSandboxStatusResponse, RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest,
};
use tonic::Code;

fn main() {
    run_suite(vec![
        check!(run_status_list_stop_remove),
        check!(list_filters),
        check!(id_prefix_lookup),
        check!(ambiguous_id_prefix),
        check!(same_metadata_twice),
        check!(stop_unknown_id),
        check!(invalid_requests),
        check!(sandbox_files),
        check!(node_namespaces),
        check!(node_network_with_hostname),
        check!(concurrent_pods),
        check!(pinned_namespaces, only = Target::Bungeo),
        check!(cgroup_parent_recorded, only = Target::Bungeo),
        check!(restart_keeps_pods, only = Target::Bungeo),
        check!(kill9_mid_creation_is_consistent, only = Target::Bungeo),
    ])
}

/// The Kubernetes namespace of every test pod.
const POD_NAMESPACE: &str = "bungeo-e2e";

/// A pod config for `name`, labelled with the check it belongs to.
fn pod_config(ctx: &Ctx, check: &str, name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_string(),
            uid: format!("{}-{name}", ctx.unique(check)),
            namespace: POD_NAMESPACE.to_string(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        labels: HashMap::from([
            ("check".to_string(), check.to_string()),
            ("pod".to_string(), name.to_string()),
        ]),
        annotations: HashMap::from([(
            "bungeo.test/annotation".to_string(),
            format!("{name}: kept as given, \"quotes\" and all"),
        )]),
        dns_config: Some(test_dns()),
        linux: Some(pod_linux("")),
        ..Default::default()
    }
}

/// The pods a check made, removed at its end whatever happened in between.
struct Pods {
    cri: Cri,
    ids: Vec<String>,
}

impl Pods {
    fn new(ctx: &Ctx) -> Self {
        Self {
            cri: ctx.cri.clone(),
            ids: Vec::new(),
        }
    }

    /// RunPodSandbox; the new id is remembered for removal.
    async fn run(&mut self, config: PodSandboxConfig) -> Result<String> {
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let id = run_pod(&mut self.cri, config)
            .await
            .with_context(|| format!("RunPodSandbox {name}"))?;
        self.ids.push(id.clone());
        Ok(id)
    }

    /// Removes every pod made, reporting the first failure.
    async fn remove_all(mut self) -> Result<()> {
        let mut first = Ok(());
        for id in std::mem::take(&mut self.ids) {
            if let Err(e) = remove(&mut self.cri, &id).await
                && first.is_ok()
            {
                first = Err(e.context(format!("cleanup: RemovePodSandbox {id}")));
            }
        }
        first
    }
}

/// Runs `body` with a fresh [`Pods`], then removes them; the body's error wins.
async fn with_pods<F>(ctx: &Ctx, body: F) -> Result<()>
where
    F: AsyncFnOnce(&mut Pods) -> Result<()>,
{
    let mut pods = Pods::new(ctx);
    let result = body(&mut pods).await;
    let cleanup = pods.remove_all().await;
    result.and(cleanup)
}

async fn run_pod(cri: &mut Cri, config: PodSandboxConfig) -> Result<String, tonic::Status> {
    Ok(cri
        .runtime
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id)
}

async fn status_full(
    cri: &mut Cri,
    id: &str,
    verbose: bool,
) -> Result<PodSandboxStatusResponse, tonic::Status> {
    Ok(cri
        .runtime
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose,
        })
        .await?
        .into_inner())
}

async fn state(cri: &mut Cri, id: &str) -> Result<PodSandboxState> {
    let status = status_full(cri, id, false)
        .await
        .with_context(|| format!("PodSandboxStatus {id}"))?
        .status
        .context("PodSandboxStatus without status")?;
    Ok(status.state())
}

async fn stop(cri: &mut Cri, id: &str) -> Result<(), tonic::Status> {
    cri.runtime
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await?;
    Ok(())
}

async fn remove(cri: &mut Cri, id: &str) -> Result<()> {
    cri.runtime
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .with_context(|| format!("RemovePodSandbox {id}"))?;
    Ok(())
}

async fn list(cri: &mut Cri, filter: Option<PodSandboxFilter>) -> Result<Vec<PodSandbox>> {
    Ok(cri
        .runtime
        .list_pod_sandbox(ListPodSandboxRequest { filter })
        .await
        .context("ListPodSandbox")?
        .into_inner()
        .items)
}

fn filter(id: &str, state: Option<PodSandboxState>, labels: &[(&str, &str)]) -> PodSandboxFilter {
    PodSandboxFilter {
        id: id.to_string(),
        state: state.map(|s| PodSandboxStateValue { state: s as i32 }),
        label_selector: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// Ids of the pods a filter lists, sorted.
async fn listed_ids(cri: &mut Cri, f: PodSandboxFilter) -> Result<BTreeSet<String>> {
    Ok(list(cri, Some(f))
        .await?
        .into_iter()
        .map(|p| p.id)
        .collect())
}

fn sorted<'a>(ids: impl IntoIterator<Item = &'a String>) -> BTreeSet<String> {
    ids.into_iter().cloned().collect()
}

/// The verbose info document of a bungeo pod.
async fn bungeo_info(cri: &mut Cri, id: &str) -> Result<serde_json::Value> {
    let response = status_full(cri, id, true)
        .await
        .with_context(|| format!("PodSandboxStatus {id} verbose"))?;
    let info = response
        .info
        .get("info")
        .context("verbose status without info")?;
    serde_json::from_str(info).context("verbose info is not JSON")
}

/// A file of a pod's sandbox directory: bungeo says where in its verbose info; containerd
/// keeps them under its root.
async fn sandbox_file(ctx: &Ctx, cri: &mut Cri, id: &str, name: &str) -> Result<String> {
    let path = match ctx.daemon()? {
        Daemon::Bungeo(_) => {
            let info = bungeo_info(cri, id).await?;
            let key = if name == "resolv.conf" {
                "resolvConf"
            } else {
                name
            };
            PathBuf::from(
                info["files"][key]
                    .as_str()
                    .with_context(|| format!("no files.{key} in {info}"))?,
            )
        }
        Daemon::Containerd(c) => c
            .root()
            .join("io.containerd.grpc.v1.cri/sandboxes")
            .join(id)
            .join(name),
    };
    std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
}

async fn run_status_list_stop_remove(ctx: Ctx) -> Result<()> {
    with_pods(&ctx, async |pods| {
        let config = pod_config(&ctx, "lifecycle", "lifecycle");
        let before = now_ns();
        let id = pods.run(config.clone()).await?;
        let after = now_ns();
        ensure!(
            id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "id {id:?}"
        );
        let cri = &mut pods.cri;

        let response = status_full(cri, &id, false)
            .await
            .context("PodSandboxStatus")?;
        ensure!(
            response.info.is_empty(),
            "info without verbose: {:?}",
            response.info
        );
        let status = response.status.context("no status")?;
        ensure_eq!(status.id, id, "status id");
        ensure_eq!(status.metadata, config.metadata, "metadata");
        ensure_eq!(status.state(), PodSandboxState::SandboxReady, "state");
        ensure!(
            status.created_at >= before - 1_000_000_000
                && status.created_at <= after + 1_000_000_000,
            "created_at {} not within the call ({before}..{after})",
            status.created_at
        );
        ensure_eq!(status.labels, config.labels, "labels");
        ensure_eq!(status.annotations, config.annotations, "annotations");
        ensure_eq!(status.runtime_handler, "", "runtime handler");
        let network = status.network.context("no network status")?;
        ensure!(network.additional_ips.is_empty(), "{network:?}");
        let options = status
            .linux
            .and_then(|l| l.namespaces)
            .and_then(|n| n.options)
            .context("no namespace options")?;
        ensure_eq!(
            (options.network(), options.pid(), options.ipc()),
            (
                NamespaceMode::Pod,
                NamespaceMode::Container,
                NamespaceMode::Pod
            ),
            "namespace options"
        );

        let mine = [("check", "lifecycle")];
        let listed = list(cri, Some(filter("", None, &mine))).await?;
        ensure_eq!(listed.len(), 1, "pods listed");
        let pod = &listed[0];
        ensure_eq!(pod.id, id, "listed id");
        ensure_eq!(pod.metadata, config.metadata, "listed metadata");
        ensure_eq!(pod.state(), PodSandboxState::SandboxReady, "listed state");
        ensure_eq!(pod.created_at, status.created_at, "listed created_at");
        ensure_eq!(pod.labels, config.labels, "listed labels");
        ensure_eq!(pod.annotations, config.annotations, "listed annotations");

        stop(cri, &id).await.context("StopPodSandbox")?;
        ensure_eq!(
            state(cri, &id).await?,
            PodSandboxState::SandboxNotready,
            "state after stop"
        );
        stop(cri, &id).await.context("StopPodSandbox again")?;
        ensure_eq!(
            list(cri, Some(filter("", None, &mine))).await?[0].state(),
            PodSandboxState::SandboxNotready,
            "listed state after stop"
        );

        remove(cri, &id).await?;
        let err = status_full(cri, &id, false)
            .await
            .err()
            .context("PodSandboxStatus of a removed pod succeeded")?;
        ensure_eq!(
            err.code(),
            Code::NotFound,
            "status of a removed pod: {}",
            err.message()
        );
        ensure!(
            list(cri, Some(filter("", None, &mine))).await?.is_empty(),
            "a removed pod is listed"
        );
        remove(cri, &id)
            .await
            .context("RemovePodSandbox is not idempotent")?;
        Ok(())
    })
    .await
}

async fn list_filters(ctx: Ctx) -> Result<()> {
    with_pods(&ctx, async |pods| {
        let mut ids = Vec::new();
        for (name, tier) in [("filter-a", "web"), ("filter-b", "web"), ("filter-c", "db")] {
            let mut config = pod_config(&ctx, "filters", name);
            config.labels.insert("tier".into(), tier.into());
            ids.push(pods.run(config).await?);
        }
        let cri = &mut pods.cri;
        let mine = ("check", "filters");
        ensure_eq!(
            listed_ids(cri, filter("", None, &[mine])).await?,
            sorted(&ids),
            "by label"
        );
        ensure_eq!(
            listed_ids(cri, filter("", None, &[mine, ("tier", "web")])).await?,
            sorted(&ids[..2]),
            "by two labels"
        );
        ensure_eq!(
            listed_ids(cri, filter("", None, &[mine, ("tier", "cache")])).await?,
            BTreeSet::new(),
            "by a label value no pod has"
        );
        ensure_eq!(
            listed_ids(cri, filter(&ids[2], None, &[])).await?,
            sorted(&ids[2..]),
            "by full id"
        );
        ensure_eq!(
            listed_ids(cri, filter(&ids[1][..12], None, &[])).await?,
            sorted(&ids[1..2]),
            "by id prefix"
        );
        ensure_eq!(
            listed_ids(cri, filter(&ids[1], None, &[("tier", "db")])).await?,
            BTreeSet::new(),
            "id and label are ANDed"
        );
        stop(cri, &ids[0]).await.context("StopPodSandbox")?;
        ensure_eq!(
            listed_ids(
                cri,
                filter("", Some(PodSandboxState::SandboxNotready), &[mine])
            )
            .await?,
            sorted(&ids[..1]),
            "not ready"
        );
        ensure_eq!(
            listed_ids(
                cri,
                filter("", Some(PodSandboxState::SandboxReady), &[mine])
            )
            .await?,
            sorted(&ids[1..]),
            "ready"
        );
        ensure_eq!(
            listed_ids(
                cri,
                filter(
                    "",
                    Some(PodSandboxState::SandboxReady),
                    &[mine, ("tier", "web")]
                )
            )
            .await?,
            sorted(&ids[1..2]),
            "ready and labelled"
        );
        Ok(())
    })
    .await
}

async fn id_prefix_lookup(ctx: Ctx) -> Result<()> {
    with_pods(&ctx, async |pods| {
        let config = pod_config(&ctx, "prefix", "prefix");
        let id = pods.run(config).await?;
        let cri = &mut pods.cri;
        let prefix = &id[..12];
        let status = status_full(cri, prefix, false)
            .await
            .context("PodSandboxStatus by prefix")?
            .status
            .context("no status")?;
        ensure_eq!(status.id, id, "status by prefix");
        stop(cri, prefix)
            .await
            .context("StopPodSandbox by prefix")?;
        ensure_eq!(
            state(cri, &id).await?,
            PodSandboxState::SandboxNotready,
            "stopped by prefix"
        );
        remove(cri, prefix)
            .await
            .context("RemovePodSandbox by prefix")?;
        let err = status_full(cri, &id, false)
            .await
            .err()
            .context("the pod removed by prefix still has a status")?;
        ensure_eq!(err.code(), Code::NotFound, "{}", err.message());
        Ok(())
    })
    .await
}

async fn ambiguous_id_prefix(ctx: Ctx) -> Result<()> {
    with_pods(&ctx, async |pods| {
        // Pods until two ids share their first two characters; 1 in 256 per pair, so a few
        // dozen pods almost surely get there. Other checks' pods may share it too: the count
        // is then only a lower bound.
        let mut by_prefix: HashMap<String, Vec<String>> = HashMap::new();
        let mut shared = None;
        for i in 0..80 {
            let mut config = pod_config(&ctx, "ambiguous", &format!("ambiguous-{i}"));
            set_modes(&mut config, NamespaceMode::Node, NamespaceMode::Node);
            let id = pods.run(config).await?;
            let entry = by_prefix.entry(id[..2].to_string()).or_default();
            entry.push(id);
            if entry.len() > 1 {
                shared = Some(id_prefix_of(entry));
                break;
            }
        }
        let prefix = shared.context("80 pods without two sharing a 2-character id prefix")?;
        let err = status_full(&mut pods.cri, &prefix, false)
            .await
            .err()
            .context("PodSandboxStatus of an ambiguous prefix succeeded")?;
        match ctx.target {
            Target::Bungeo => {
                ensure_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
                ensure!(
                    err.message()
                        .contains(&format!("pod sandbox id prefix \"{prefix}\" is ambiguous")),
                    "message does not name the prefix: {}",
                    err.message()
                );
            }
            // containerd 1.6 answers Unknown: "Multiple IDs found with provided prefix".
            Target::Containerd => ensure!(
                err.code() == Code::Unknown && err.message().contains("Multiple IDs found"),
                "containerd: {:?} {}",
                err.code(),
                err.message()
            ),
        }
        Ok(())
    })
    .await
}

/// The two-character prefix the ids in `ids` share.
fn id_prefix_of(ids: &[String]) -> String {
    ids[0][..2].to_string()
}

/// Sets the network and IPC modes; a pod on the node's network gets no hostname, as kubelet
/// sends none (runc refuses a hostname without a UTS namespace of its own).
fn set_modes(config: &mut PodSandboxConfig, network: NamespaceMode, ipc: NamespaceMode) {
    if network == NamespaceMode::Node {
        config.hostname.clear();
    }
    let options = config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options
        .get_or_insert_with(Default::default);
    options.network = network as i32;
    options.ipc = ipc as i32;
}

async fn same_metadata_twice(ctx: Ctx) -> Result<()> {
    with_pods(&ctx, async |pods| {
        let config = pod_config(&ctx, "twice", "twice");
        let first = pods.run(config.clone()).await?;
        let err = run_pod(&mut pods.cri, config.clone())
            .await
            .err()
            .context("a second pod with the same metadata was created")?;
        match ctx.target {
            Target::Bungeo => {
                ensure_eq!(err.code(), Code::AlreadyExists, "{}", err.message());
                ensure!(
                    err.message().contains(&first),
                    "names the owner: {}",
                    err.message()
                );
            }
            // containerd 1.6 refuses with Unknown: "failed to reserve sandbox name ...".
            Target::Containerd => ensure!(
                err.code() == Code::Unknown
                    && err.message().contains("reserve")
                    && err.message().contains(&first),
                "containerd: {:?} {}",
                err.code(),
                err.message()
            ),
        }
        // The next attempt is another name; after removal the first is free again.
        let mut next = config.clone();
        next.metadata.as_mut().context("metadata")?.attempt = 1;
        pods.run(next).await.context("attempt 1")?;
        remove(&mut pods.cri, &first).await?;
        pods.run(config)
            .await
            .context("the same metadata after removal")?;
        Ok(())
    })
    .await
}

async fn stop_unknown_id(mut ctx: Ctx) -> Result<()> {
    let unknown = "0123456789abcdef".repeat(4);
    let stopped = stop(&mut ctx.cri, &unknown).await;
    match ctx.target {
        // The CRI: StopPodSandbox of a pod that is gone succeeds.
        Target::Bungeo => stopped.context("StopPodSandbox of an unknown id")?,
        // containerd 1.6 answers NotFound (see MACHINE-NOTES: bungeo follows the CRI).
        Target::Containerd => {
            let err = stopped
                .err()
                .context("containerd 1.6 stopped an unknown pod")?;
            ensure_eq!(err.code(), Code::NotFound, "{}", err.message());
        }
    }
    remove(&mut ctx.cri, &unknown)
        .await
        .context("RemovePodSandbox of an unknown id")?;
    let err = status_full(&mut ctx.cri, &unknown, false)
        .await
        .err()
        .context("PodSandboxStatus of an unknown id succeeded")?;
    ensure_eq!(err.code(), Code::NotFound, "{}", err.message());
    Ok(())
}

async fn invalid_requests(ctx: Ctx) -> Result<()> {
    with_pods(&ctx, async |pods| {
        let mut no_metadata = pod_config(&ctx, "invalid", "invalid");
        no_metadata.metadata = None;
        let mut no_uid = pod_config(&ctx, "invalid", "invalid");
        no_uid.metadata.as_mut().context("metadata")?.uid.clear();
        let err = run_pod(&mut pods.cri, no_metadata)
            .await
            .err()
            .context("RunPodSandbox without metadata succeeded")?;
        ensure!(err.message().contains("metadata"), "{}", err.message());
        match (ctx.target, run_pod(&mut pods.cri, no_uid).await) {
            (Target::Bungeo, Ok(id)) => {
                pods.ids.push(id);
                bail!("RunPodSandbox without a pod uid succeeded");
            }
            (Target::Bungeo, Err(err)) => {
                ensure_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
                ensure!(err.message().contains("metadata.uid"), "{}", err.message());
            }
            // containerd 1.6 does not check the metadata's fields.
            (Target::Containerd, Ok(id)) => pods.ids.push(id),
            (Target::Containerd, Err(_)) => {}
        }
        if ctx.target == Target::Bungeo {
            ensure_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        }
        let err = match pods
            .cri
            .runtime
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pod_config(&ctx, "invalid", "handler")),
                runtime_handler: "no-such-handler".into(),
            })
            .await
        {
            Ok(r) => {
                pods.ids.push(r.into_inner().pod_sandbox_id);
                bail!("RunPodSandbox with an unknown runtime handler succeeded");
            }
            Err(err) => err,
        };
        ensure!(
            err.message().contains("no-such-handler"),
            "{}",
            err.message()
        );
        if ctx.target == Target::Bungeo {
            ensure_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
            ensure!(
                err.message().contains("unknown runtime handler"),
                "{}",
                err.message()
            );
        }
        ensure!(
            list(&mut pods.cri, Some(filter("", None, &[("pod", "handler")])))
                .await?
                .is_empty(),
            "the pod refused for its handler is listed"
        );
        Ok(())
    })
    .await
}

async fn sandbox_files(ctx: Ctx) -> Result<()> {
    with_pods(&ctx, async |pods| {
        let config = pod_config(&ctx, "files", "files-pod");
        let id = pods.run(config).await?;
        let cri = &mut pods.cri;
        ensure_eq!(
            sandbox_file(&ctx, cri, &id, "resolv.conf").await?,
            RESOLV_CONF,
            "resolv.conf"
        );
        ensure_eq!(
            sandbox_file(&ctx, cri, &id, "hostname").await?,
            "files-pod\n",
            "hostname file"
        );
        let hosts = sandbox_file(&ctx, cri, &id, "hosts").await?;
        match ctx.target {
            // kubelet's managed layout, the pod's own name resolving locally.
            Target::Bungeo => {
                let lines: Vec<&str> = hosts.lines().collect();
                ensure!(lines.contains(&"127.0.0.1\tlocalhost"), "{hosts}");
                ensure!(
                    lines.contains(&"::1\tlocalhost ip6-localhost ip6-loopback"),
                    "{hosts}"
                );
                // The pod's own name resolves to its IP on the default network.
                let status = status_full(&mut pods.cri, &id, false).await?.status;
                let ip = status
                    .as_ref()
                    .and_then(|s| s.network.as_ref())
                    .map(|n| n.ip.clone())
                    .unwrap_or_default();
                ensure!(!ip.is_empty(), "the pod has no IP");
                let own = format!("{ip}\tfiles-pod");
                ensure_eq!(lines.last().copied(), Some(own.as_str()), "{hosts}");
            }
            // containerd 1.6 copies the node's /etc/hosts (kubelet bind-mounts its own over
            // it for pods on a pod network).
            Target::Containerd => {
                let node = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
                ensure_eq!(hosts, node, "containerd's hosts is the node's");
            }
        }

        // Without DNS config, the node's resolv.conf.
        let mut plain = pod_config(&ctx, "files", "files-plain");
        plain.dns_config = None;
        let plain_id = pods.run(plain).await?;
        let node = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        ensure_eq!(
            sandbox_file(&ctx, &mut pods.cri, &plain_id, "resolv.conf").await?,
            node,
            "resolv.conf without DNS config"
        );
        Ok(())
    })
    .await
}

async fn node_namespaces(ctx: Ctx) -> Result<()> {
    with_pods(&ctx, async |pods| {
        let mut config = pod_config(&ctx, "node-ns", "node-ns");
        set_modes(&mut config, NamespaceMode::Node, NamespaceMode::Node);
        config.dns_config = None;
        let id = pods.run(config).await?;
        let cri = &mut pods.cri;
        let status = status_full(cri, &id, false)
            .await?
            .status
            .context("no status")?;
        ensure_eq!(status.state(), PodSandboxState::SandboxReady, "state");
        let options = status
            .linux
            .and_then(|l| l.namespaces)
            .and_then(|n| n.options)
            .context("no namespace options")?;
        ensure_eq!(
            (options.network(), options.ipc()),
            (NamespaceMode::Node, NamespaceMode::Node),
            "namespace options"
        );
        ensure_eq!(
            status.network.map(|n| n.ip),
            Some(String::new()),
            "no pod IP"
        );
        let node_hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
        ensure_eq!(
            sandbox_file(&ctx, cri, &id, "hostname").await?,
            node_hostname,
            "a pod without a hostname has the node's"
        );
        let node_hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        ensure_eq!(
            sandbox_file(&ctx, cri, &id, "hosts").await?,
            node_hosts,
            "a pod on the node's network has the node's hosts"
        );
        if let Daemon::Bungeo(_) = ctx.daemon()? {
            let info = bungeo_info(cri, &id).await?;
            for kind in ["net", "ipc", "uts"] {
                ensure!(info["namespaces"][kind].is_null(), "{kind} pinned: {info}");
            }
            ensure!(info["shm"].is_null(), "shm mounted: {info}");
        }
        Ok(())
    })
    .await
}

/// A pod on the node's network that asks for a hostname of its own: it shares the node's UTS
/// namespace, so it cannot have one; containerd's runtime refuses it and so does the pod.
async fn node_network_with_hostname(ctx: Ctx) -> Result<()> {
    with_pods(&ctx, async |pods| {
        let mut config = pod_config(&ctx, "node-host", "node-host");
        set_modes(&mut config, NamespaceMode::Node, NamespaceMode::Node);
        config.hostname = "own-name".to_string();
        config.dns_config = None;
        let node_hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
        match run_pod(&mut pods.cri, config).await {
            Ok(id) => {
                pods.ids.push(id.clone());
                bail!("RunPodSandbox succeeded: pod {id}");
            }
            // containerd 1.6: "failed to create containerd task: ... runc create failed:
            // unable to set hostname without a private UTS namespace: unknown".
            Err(e) if e.code() == Code::Unknown => ensure!(
                e.message()
                    .contains("unable to set hostname without a private UTS namespace"),
                "message: {}",
                e.message()
            ),
            Err(e) => bail!("want Unknown, got {:?}: {}", e.code(), e.message()),
        }
        ensure_eq!(
            std::fs::read_to_string("/proc/sys/kernel/hostname")?,
            node_hostname,
            "the node's hostname"
        );
        let left = pods
            .cri
            .runtime
            .list_pod_sandbox(ListPodSandboxRequest {
                filter: Some(PodSandboxFilter {
                    label_selector: HashMap::from([("check".to_string(), "node-host".to_string())]),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .items;
        ensure!(left.is_empty(), "the refused pod is listed: {left:?}");
        Ok(())
    })
    .await
}

/// Mount points below `dir` whose path names one of `ids`.
fn mounts_of(dir: &Path, ids: &[String]) -> Result<Vec<PathBuf>> {
    Ok(mounts_under(dir)?
        .into_iter()
        .filter(|m| {
            ids.iter()
                .any(|id| m.to_string_lossy().contains(id.as_str()))
        })
        .collect())
}

async fn concurrent_pods(ctx: Ctx) -> Result<()> {
    const PODS: usize = 20;
    let mut tasks = Vec::new();
    for i in 0..PODS {
        let mut cri = ctx.cri.clone();
        let config = pod_config(&ctx, "concurrent", &format!("concurrent-{i}"));
        tasks.push(tokio::spawn(async move { run_pod(&mut cri, config).await }));
    }
    let mut ids = Vec::new();
    let mut failures = Vec::new();
    for task in tasks {
        match task.await? {
            Ok(id) => ids.push(id),
            Err(e) => failures.push(format!("{:?} {}", e.code(), e.message())),
        }
    }
    let mut pods = Pods::new(&ctx);
    pods.ids = ids.clone();
    let checked = async {
        ensure!(failures.is_empty(), "RunPodSandbox failed: {failures:?}");
        let listed =
            listed_ids(&mut pods.cri, filter("", None, &[("check", "concurrent")])).await?;
        ensure_eq!(listed, sorted(&ids), "listed pods");
        if let Daemon::Bungeo(b) = ctx.daemon()? {
            // Net, ipc, uts and shm: four mounts a pod.
            ensure_eq!(mounts_of(b.state(), &ids)?.len(), 3 * PODS, "pins");
            ensure_eq!(mounts_of(b.root(), &ids)?.len(), PODS, "shm mounts");
        }
        Ok(())
    }
    .await;

    // Removed concurrently too.
    let mut tasks = Vec::new();
    for id in std::mem::take(&mut pods.ids) {
        let mut cri = ctx.cri.clone();
        tasks.push(tokio::spawn(async move { remove(&mut cri, &id).await }));
    }
    let mut removal = Ok(());
    for task in tasks {
        if let Err(e) = task.await? {
            removal = removal.and(Err(e));
        }
    }
    checked?;
    removal?;
    ensure!(
        list(
            &mut pods.cri,
            Some(filter("", None, &[("check", "concurrent")]))
        )
        .await?
        .is_empty(),
        "removed pods are listed"
    );
    match ctx.daemon()? {
        Daemon::Bungeo(b) => {
            for dir in [b.state(), b.root()] {
                let left = mounts_of(dir, &ids)?;
                ensure!(
                    left.is_empty(),
                    "mounts left below {}: {left:?}",
                    dir.display()
                );
            }
            for (dir, what) in [
                (b.root().join("sandboxes"), "sandbox dirs"),
                (b.state().join("ns"), "pin dirs"),
            ] {
                let left: Vec<String> = std::fs::read_dir(&dir)
                    .with_context(|| format!("read {}", dir.display()))?
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| ids.contains(name))
                    .collect();
                ensure!(left.is_empty(), "{what} left: {left:?}");
            }
            for id in &ids {
                let err = status_full(&mut pods.cri, id, false)
                    .await
                    .err()
                    .with_context(|| format!("removed pod {id} still has a record"))?;
                ensure_eq!(err.code(), Code::NotFound, "{}", err.message());
            }
        }
        Daemon::Containerd(c) => {
            for dir in [c.state(), c.root()] {
                let left = mounts_of(dir, &ids)?;
                ensure!(
                    left.is_empty(),
                    "mounts left below {}: {left:?}",
                    dir.display()
                );
            }
        }
    }
    Ok(())
}

/// The namespace pins of a bungeo pod, from its verbose info.
fn pins(info: &serde_json::Value) -> Result<HashMap<&'static str, PathBuf>> {
    let mut out = HashMap::new();
    for kind in ["net", "ipc", "uts"] {
        let path = info["namespaces"][kind]
            .as_str()
            .with_context(|| format!("no {kind} pin in {info}"))?;
        out.insert(kind, PathBuf::from(path));
    }
    Ok(out)
}

fn nsenter(args: &[&str]) -> Result<String> {
    let out = Command::new("nsenter")
        .args(args)
        .output()
        .context("run nsenter")?;
    ensure!(
        out.status.success(),
        "nsenter {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn same_file(a: &Path, b: &Path) -> Result<bool> {
    let (ma, mb) = (std::fs::metadata(a)?, std::fs::metadata(b)?);
    Ok(ma.dev() == mb.dev() && ma.ino() == mb.ino())
}

async fn pinned_namespaces(ctx: Ctx) -> Result<()> {
    with_pods(&ctx, async |pods| {
        let id = pods.run(pod_config(&ctx, "pinned", "pinned-host")).await?;
        let info = bungeo_info(&mut pods.cri, &id).await?;
        let pins = pins(&info)?;
        let Daemon::Bungeo(b) = ctx.daemon()? else {
            bail!("bungeo only");
        };
        let ns_dir = b.state().canonicalize()?.join("ns").join(&id);
        for (kind, path) in &pins {
            ensure_eq!(path, &ns_dir.join(kind), "{kind} pin path");
            ensure!(
                !same_file(path, Path::new(&format!("/proc/self/ns/{kind}")))?,
                "the pod's {kind} namespace is the host's"
            );
        }
        let uts = format!("--uts={}", pins["uts"].display());
        ensure_eq!(
            nsenter(&[&uts, "hostname"])?,
            "pinned-host\n",
            "hostname in the pod"
        );
        ensure!(
            std::fs::read_to_string("/proc/sys/kernel/hostname")? != "pinned-host\n",
            "the node's hostname changed"
        );
        // A fresh network namespace: loopback, up, and the default network's eth0.
        let net = format!("--net={}", pins["net"].display());
        let dev = nsenter(&[&net, "cat", "/proc/net/dev"])?;
        let ifaces: Vec<&str> = dev
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next().map(str::trim))
            .collect();
        ensure_eq!(ifaces, vec!["lo", "eth0"], "interfaces in the pod");
        let flags = nsenter(&[&net, "cat", "/sys/class/net/lo/flags"]);
        // sysfs shows the reader's mount namespace's view; fall back to /proc when absent.
        if let Ok(flags) = flags {
            let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16)?;
            ensure!(flags & 1 == 1, "lo is down in the pod (flags {flags:#x})");
        }
        let shm = info["shm"].as_str().context("no shm")?;
        let mounts = mounts_under(Path::new(shm))?;
        ensure_eq!(mounts, vec![PathBuf::from(shm)], "shm tmpfs");
        let df = Command::new("df")
            .args(["-k", "--output=size", shm])
            .output()?;
        let size = String::from_utf8_lossy(&df.stdout);
        ensure!(size.contains("65536"), "shm is not 64 MiB: {size}");

        remove(&mut pods.cri, &id).await?;
        for path in pins.values() {
            ensure!(!path.exists(), "{} left after removal", path.display());
        }
        ensure!(!ns_dir.exists(), "{} left after removal", ns_dir.display());
        ensure!(!Path::new(shm).exists(), "{shm} left after removal");
        Ok(())
    })
    .await
}

async fn cgroup_parent_recorded(ctx: Ctx) -> Result<()> {
    with_pods(&ctx, async |pods| {
        let mut config = pod_config(&ctx, "cgroup", "cgroup");
        config.linux.as_mut().context("linux")?.cgroup_parent =
            "/kubepods/besteffort/pod-bungeo-e2e".into();
        let id = pods.run(config).await?;
        let info = bungeo_info(&mut pods.cri, &id).await?;
        ensure_eq!(
            info["cgroupParent"],
            "/kubepods/besteffort/pod-bungeo-e2e",
            "cgroup parent in the verbose info"
        );
        ensure_eq!(info["hostname"], "cgroup", "hostname in the verbose info");
        ensure_eq!(
            info["config"]["metadata"]["name"],
            "cgroup",
            "config in the verbose info"
        );
        let mut bad = pod_config(&ctx, "cgroup", "cgroup-bad");
        bad.linux.as_mut().context("linux")?.cgroup_parent = "/kubepods/../../escape".into();
        let err = run_pod(&mut pods.cri, bad)
            .await
            .err()
            .context("a cgroup parent with .. was accepted")?;
        ensure_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        Ok(())
    })
    .await
}

/// A daemon of the check's own, so restarts and crashes do not disturb other checks.
async fn own_daemon(ctx: &Ctx) -> Result<(Bungeo, Cri)> {
    let daemon = Bungeo::start(&ctx.fx.hosts).await?;
    let cri = Cri::connect(daemon.socket()).await?;
    Ok((daemon, cri))
}

async fn restart_keeps_pods(ctx: Ctx) -> Result<()> {
    let (mut daemon, mut cri) = own_daemon(&ctx).await?;
    let ready = run_pod(&mut cri, pod_config(&ctx, "restart", "restart-ready")).await?;
    let stopped = run_pod(&mut cri, pod_config(&ctx, "restart", "restart-stopped")).await?;
    stop(&mut cri, &stopped).await?;
    let before = list(&mut cri, None).await?;
    ensure_eq!(before.len(), 2, "pods before the restart");

    for how in ["SIGTERM", "SIGKILL"] {
        if how == "SIGKILL" {
            daemon.kill9()?;
        }
        daemon
            .restart()
            .await
            .with_context(|| format!("restart after {how}"))?;
        let mut cri = Cri::connect(daemon.socket()).await?;
        let after = list(&mut cri, None).await?;
        ensure_eq!(after, before, "pods after a restart following {how}");
        ensure_eq!(
            state(&mut cri, &ready).await?,
            PodSandboxState::SandboxReady,
            "after {how}"
        );
        let info = bungeo_info(&mut cri, &ready).await?;
        let uts = format!("--uts={}", pins(&info)?["uts"].display());
        ensure_eq!(
            nsenter(&[&uts, "hostname"])?,
            "restart-ready\n",
            "hostname after {how}"
        );
        let err = run_pod(&mut cri, pod_config(&ctx, "restart", "restart-ready"))
            .await
            .err()
            .context("the name of a pod was free after a restart")?;
        ensure_eq!(err.code(), Code::AlreadyExists, "{}", err.message());
    }

    // A reboot empties the state dir: pods are then not ready, and removable.
    daemon.kill9()?;
    bungeo_tests::mounts::unmount_under(daemon.state())?;
    std::fs::remove_dir_all(daemon.state().join("ns"))?;
    daemon.restart().await?;
    let mut cri = Cri::connect(daemon.socket()).await?;
    ensure_eq!(
        state(&mut cri, &ready).await?,
        PodSandboxState::SandboxNotready,
        "a pod whose namespaces are gone"
    );
    for id in [&ready, &stopped] {
        remove(&mut cri, id).await?;
    }
    ensure!(list(&mut cri, None).await?.is_empty(), "pods left");
    ensure!(
        mounts_under(daemon.root())?.is_empty(),
        "mounts left under the root"
    );
    Ok(())
}

async fn kill9_mid_creation_is_consistent(ctx: Ctx) -> Result<()> {
    const PODS: usize = 12;
    let (mut daemon, cri) = own_daemon(&ctx).await?;
    let mut tasks = Vec::new();
    for i in 0..PODS {
        let mut cri = cri.clone();
        let config = pod_config(&ctx, "kill9", &format!("kill9-{i}"));
        tasks.push(tokio::spawn(async move { run_pod(&mut cri, config).await }));
    }
    // Die while the calls are in flight: after the first answer, most are not done.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !tasks.iter().any(|t| t.is_finished()) {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no RunPodSandbox answered"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    daemon.kill9()?;
    let mut answered = Vec::new();
    for task in tasks {
        if let Ok(id) = task.await? {
            answered.push(id);
        }
    }
    daemon.restart().await?;
    let mut cri = Cri::connect(daemon.socket()).await?;
    let listed = list(&mut cri, None).await?;
    let listed_ids: BTreeSet<String> = listed.iter().map(|p| p.id.clone()).collect();
    // Every pod whose creation was answered exists; what was cut short is gone whole.
    for id in &answered {
        ensure!(
            listed_ids.contains(id),
            "answered pod {id} is gone after the crash"
        );
    }
    for pod in &listed {
        ensure_eq!(pod.state(), PodSandboxState::SandboxReady, "pod {}", pod.id);
        let info = bungeo_info(&mut cri, &pod.id).await?;
        for (kind, path) in pins(&info)? {
            ensure!(
                mounts_under(&path)?.contains(&path),
                "{kind} pin of listed pod {} not mounted",
                pod.id
            );
        }
    }
    let names_in = |dir: PathBuf| -> Result<BTreeSet<String>> {
        Ok(std::fs::read_dir(&dir)
            .with_context(|| format!("read {}", dir.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect())
    };
    ensure_eq!(
        names_in(daemon.root().join("sandboxes"))?,
        listed_ids,
        "sandbox dirs"
    );
    ensure_eq!(names_in(daemon.state().join("ns"))?, listed_ids, "pin dirs");
    let mounted = mounts_under(daemon.root())?.len() + mounts_under(daemon.state())?.len();
    ensure_eq!(mounted, 4 * listed.len(), "mounts after the restart");
    // Every name not taken by a listed pod is free again.
    for pod in &listed {
        remove(&mut cri, &pod.id).await?;
    }
    for i in 0..PODS {
        let id = run_pod(&mut cri, pod_config(&ctx, "kill9", &format!("kill9-{i}")))
            .await
            .with_context(|| format!("kill9-{i} again"))?;
        remove(&mut cri, &id).await?;
    }
    ensure!(list(&mut cri, None).await?.is_empty(), "pods left");
    ensure!(
        mounts_under(daemon.root())?.is_empty(),
        "mounts left under the root"
    );
    ensure!(
        mounts_under(daemon.state())?.is_empty(),
        "mounts left under the state"
    );
    Ok(())
}
