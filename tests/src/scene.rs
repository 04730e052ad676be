//! The pods and containers of one differential check (a [`Scene`]): pod and container
//! configs as kubelet sends them, the CRI calls the suites make on them, and a teardown that
//! removes every pod, the check's log directory and its cgroup parent whatever happened.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use k8s_cri::v1::{
    Container, ContainerConfig, ContainerFilter, ContainerMetadata, ContainerState,
    ContainerStatus, ContainerStatusRequest, CreateContainerRequest, DnsConfig, ExecSyncRequest,
    ExecSyncResponse, ImageSpec, LinuxContainerConfig, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListContainersRequest, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxMetadata, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest,
};
use tonic::Code;

use crate::cri::{Cri, Target};
use crate::crilog::{self, LogLine};
use crate::images::ImageName;
use crate::leftovers;
use crate::suite::Ctx;

/// How long a container may take to get to where a check waits for it.
pub const WAIT: Duration = Duration::from_secs(30);

/// Owned copies of `s`, for the string lists of CRI messages.
pub fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|x| x.to_string()).collect()
}

/// Now, in nanoseconds since the epoch (0 if the clock is before it).
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Pod network and IPC, a PID namespace per container: what kubelet asks by default.
pub fn pod_namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// The resolv.conf both daemons write for a pod asking for [`test_dns`].
pub const RESOLV_CONF: &str = "search bungeo-e2e.svc.cluster.local svc.cluster.local\n\
                               nameserver 10.96.0.10\n\
                               nameserver 10.96.0.11\n\
                               options ndots:5 timeout:2\n";

/// The DNS settings the test pods ask for (a cluster's, which nothing needs to answer).
pub fn test_dns() -> DnsConfig {
    DnsConfig {
        servers: strings(&["10.96.0.10", "10.96.0.11"]),
        searches: strings(&["bungeo-e2e.svc.cluster.local", "svc.cluster.local"]),
        options: strings(&["ndots:5", "timeout:2"]),
    }
}

/// A container of `image` running `command` (none: the image's), logging to `<name>/0.log`
/// in its pod's log directory, in [`pod_namespaces`].
pub fn container(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.to_string(),
            ..Default::default()
        }),
        command: strings(command),
        log_path: format!("{name}/0.log"),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(pod_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Linux part of a pod config: under `cgroup_parent` (empty: the daemon's default), in
/// [`pod_namespaces`].
pub fn pod_linux(cgroup_parent: &str) -> LinuxPodSandboxConfig {
    LinuxPodSandboxConfig {
        cgroup_parent: cgroup_parent.to_string(),
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(pod_namespaces()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The container's Linux security context, made if missing.
pub fn security(config: &mut ContainerConfig) -> &mut LinuxContainerSecurityContext {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// The pod's Linux security context, made if missing.
pub fn pod_security(config: &mut PodSandboxConfig) -> &mut LinuxSandboxSecurityContext {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// Where a suite puts its pods: their Kubernetes namespace and the first component of their
/// cgroup parents (shared by the suite's checks, removed by the last one to finish).
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// The Kubernetes namespace of every pod.
    pub namespace: &'static str,
    /// The first component of every pod's cgroup parent.
    pub cgroup_root: &'static str,
}

/// A check's pods (and so their containers), log directory and cgroup parent, all removed by
/// [`Scene::finish`].
pub struct Scene {
    /// The client of the daemon under test.
    pub cri: Cri,
    /// That daemon.
    pub target: Target,
    /// `<check>-<target>`: unique among the checks running on one daemon.
    pub unique: String,
    /// The pods' log directories are under it.
    pub logs: tempfile::TempDir,
    /// Sandbox configs by pod id (CreateContainer sends its pod's config, as kubelet does).
    pub pods: Vec<(String, PodSandboxConfig)>,
    /// Log paths by container id.
    pub log_paths: HashMap<String, PathBuf>,
    layout: Layout,
}

impl Scene {
    /// An empty scene on `cri`, with a fresh log directory.
    pub fn new(cri: Cri, target: Target, unique: String, layout: Layout) -> Result<Self> {
        let logs = tempfile::Builder::new()
            .prefix("bungeo-e2e-logs-")
            .tempdir()
            .context("create the pod log directory")?;
        Ok(Self {
            cri,
            target,
            unique,
            logs,
            pods: Vec::new(),
            log_paths: HashMap::new(),
            layout,
        })
    }

    /// An empty scene for `check` on `cri`, a client of `ctx`'s daemon.
    pub fn for_check(ctx: &Ctx, cri: Cri, check: &str, layout: Layout) -> Result<Self> {
        Self::new(cri, ctx.target, ctx.unique(check), layout)
    }

    /// Pulls `image` on `cri`, then an empty scene for `check`: for suites whose scenes run
    /// containers of one image.
    pub async fn with_image(
        ctx: &Ctx,
        mut cri: Cri,
        check: &str,
        layout: Layout,
        image: &str,
    ) -> Result<Self> {
        cri.pull(image, None)
            .await
            .with_context(|| format!("pull {image}"))?;
        Self::for_check(ctx, cri, check, layout)
    }

    /// `/<cgroup root>/<unique>`.
    pub fn cgroup_parent(&self) -> String {
        format!("/{}/{}", self.layout.cgroup_root, self.unique)
    }

    /// A pod named `name` (also its hostname) labelled `check=<unique>`, logging under the
    /// scene's directory, under the scene's cgroup parent, in [`pod_namespaces`].
    pub fn pod_config(&self, name: &str) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_string(),
                uid: format!("{}-{name}", self.unique),
                namespace: self.layout.namespace.to_string(),
                attempt: 0,
            }),
            hostname: name.to_string(),
            log_directory: self.logs.path().join(name).to_string_lossy().into_owned(),
            labels: HashMap::from([("check".to_string(), self.unique.clone())]),
            linux: Some(pod_linux(&self.cgroup_parent())),
            ..Default::default()
        }
    }

    /// RunPodSandbox of `config` (its log directory made first, as kubelet does); the pod is
    /// removed by [`Scene::finish`].
    pub async fn try_run_pod(&mut self, config: PodSandboxConfig) -> Result<String, tonic::Status> {
        let _ = std::fs::create_dir_all(&config.log_directory);
        let id = self
            .cri
            .runtime
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id;
        self.pods.push((id.clone(), config));
        Ok(id)
    }

    /// [`Scene::try_run_pod`], failing with the pod named.
    pub async fn run_pod(&mut self, config: PodSandboxConfig) -> Result<String> {
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        self.try_run_pod(config)
            .await
            .with_context(|| format!("RunPodSandbox {name}"))
    }

    /// RunPodSandbox of [`Scene::pod_config`] for `name`.
    pub async fn pod(&mut self, name: &str) -> Result<String> {
        let config = self.pod_config(name);
        self.run_pod(config).await
    }

    /// Pulls a test image; its reference.
    pub async fn image(&mut self, ctx: &Ctx, name: ImageName) -> Result<String> {
        let reference = ctx.fx.reference(name);
        self.cri
            .pull(&reference, None)
            .await
            .with_context(|| format!("pull {reference}"))?;
        Ok(reference)
    }

    /// The config pod `pod` was run with.
    pub fn sandbox_config(&self, pod: &str) -> Result<PodSandboxConfig> {
        self.pods
            .iter()
            .find(|(id, _)| id == pod)
            .map(|(_, c)| c.clone())
            .context("not a pod of this check")
    }

    /// CreateContainer in `pod` (the container's log directory made first, as kubelet does).
    pub async fn try_create(
        &mut self,
        pod: &str,
        config: ContainerConfig,
    ) -> Result<String, tonic::Status> {
        let sandbox = self
            .sandbox_config(pod)
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        let log = Path::new(&sandbox.log_directory).join(&config.log_path);
        if let Some(dir) = log.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let id = self
            .cri
            .runtime
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.to_string(),
                config: Some(config),
                sandbox_config: Some(sandbox),
            })
            .await?
            .into_inner()
            .container_id;
        self.log_paths.insert(id.clone(), log);
        Ok(id)
    }

    /// [`Scene::try_create`], failing with the container named.
    pub async fn create(&mut self, pod: &str, config: ContainerConfig) -> Result<String> {
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        self.try_create(pod, config)
            .await
            .with_context(|| format!("CreateContainer {name}"))
    }

    /// StartContainer.
    pub async fn start(&mut self, id: &str) -> Result<()> {
        self.cri
            .runtime
            .start_container(StartContainerRequest {
                container_id: id.to_string(),
            })
            .await
            .with_context(|| format!("StartContainer {id}"))?;
        Ok(())
    }

    /// CreateContainer then StartContainer.
    pub async fn run(&mut self, pod: &str, config: ContainerConfig) -> Result<String> {
        let id = self.create(pod, config).await?;
        self.start(&id).await?;
        Ok(id)
    }

    /// StopContainer with `timeout` seconds of grace.
    pub async fn stop(&mut self, id: &str, timeout: i64) -> Result<(), tonic::Status> {
        self.cri
            .runtime
            .stop_container(StopContainerRequest {
                container_id: id.to_string(),
                timeout,
            })
            .await?;
        Ok(())
    }

    /// RemoveContainer.
    pub async fn remove(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.cri
            .runtime
            .remove_container(RemoveContainerRequest {
                container_id: id.to_string(),
            })
            .await?;
        Ok(())
    }

    /// ContainerStatus: the status and the info map.
    pub async fn status_full(
        &mut self,
        id: &str,
        verbose: bool,
    ) -> Result<(ContainerStatus, HashMap<String, String>), tonic::Status> {
        let r = self
            .cri
            .runtime
            .container_status(ContainerStatusRequest {
                container_id: id.to_string(),
                verbose,
            })
            .await?
            .into_inner();
        let status = r
            .status
            .ok_or_else(|| tonic::Status::internal("ContainerStatus without status"))?;
        Ok((status, r.info))
    }

    /// ContainerStatus, not verbose.
    pub async fn status(&mut self, id: &str) -> Result<ContainerStatus> {
        Ok(self
            .status_full(id, false)
            .await
            .with_context(|| format!("ContainerStatus {id}"))?
            .0)
    }

    /// The verbose info document (`info["info"]`).
    pub async fn info(&mut self, id: &str) -> Result<serde_json::Value> {
        let (_, info) = self
            .status_full(id, true)
            .await
            .with_context(|| format!("ContainerStatus {id} (verbose)"))?;
        let text = info
            .get("info")
            .context("no info[\"info\"] in verbose status")?;
        serde_json::from_str(text).context("info[\"info\"] is not JSON")
    }

    /// The container's init pid from the verbose info (both daemons give it).
    pub async fn pid(&mut self, id: &str) -> Result<i32> {
        let info = self.info(id).await?;
        let pid = info["pid"].as_i64().context("no pid in the verbose info")?;
        ensure!(pid > 0, "pid {pid}");
        Ok(pid as i32)
    }

    /// ListContainers with `filter`.
    pub async fn list(&mut self, filter: ContainerFilter) -> Result<Vec<Container>> {
        Ok(self
            .cri
            .runtime
            .list_containers(ListContainersRequest {
                filter: Some(filter),
            })
            .await
            .context("ListContainers")?
            .into_inner()
            .containers)
    }

    /// The ids ListContainers gives for `filter`, sorted.
    pub async fn listed_ids(&mut self, filter: ContainerFilter) -> Result<Vec<String>> {
        let mut ids: Vec<String> = self.list(filter).await?.into_iter().map(|c| c.id).collect();
        ids.sort();
        Ok(ids)
    }

    /// Waits for the container to exit; its status then.
    pub async fn exited(&mut self, id: &str) -> Result<ContainerStatus> {
        let deadline = Instant::now() + WAIT;
        loop {
            let status = self.status(id).await?;
            if status.state() == ContainerState::ContainerExited {
                return Ok(status);
            }
            ensure!(
                Instant::now() < deadline,
                "container {id} still {:?} after {WAIT:?}",
                status.state()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The container's log, once `done` holds for it (logs are written as they come).
    pub async fn log_when(
        &self,
        id: &str,
        done: impl Fn(&[LogLine]) -> bool,
    ) -> Result<Vec<LogLine>> {
        let path = self.log_paths.get(id).context("no log path")?;
        let deadline = Instant::now() + WAIT;
        loop {
            let log = crilog::read_log(path)?;
            if done(&log) {
                return Ok(log);
            }
            ensure!(
                Instant::now() < deadline,
                "log {} after {WAIT:?}: {log:?}",
                path.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The stdout lines of the container's log, once it has at least `n`.
    pub async fn stdout(&self, id: &str, n: usize) -> Result<Vec<String>> {
        let log = self
            .log_when(id, |l| crilog::stream_lines(l, "stdout").len() >= n)
            .await?;
        Ok(crilog::stream_lines(&log, "stdout"))
    }

    /// ExecSync of `cmd` with `timeout` seconds.
    pub async fn exec(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<ExecSyncResponse, tonic::Status> {
        Ok(self
            .cri
            .runtime
            .exec_sync(ExecSyncRequest {
                container_id: id.to_string(),
                cmd: strings(cmd),
                timeout,
            })
            .await?
            .into_inner())
    }

    /// Removes every pod left (and so every container) and the cgroup parent; the first
    /// failure is returned after everything was tried.
    pub async fn finish(mut self) -> Result<()> {
        let mut first = Ok(());
        for (id, _) in std::mem::take(&mut self.pods) {
            let stopped = self
                .cri
                .runtime
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await;
            let removed = self
                .cri
                .runtime
                .remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await;
            // A check may have removed the pod itself (containerd then says NotFound).
            let gone_is_fine = |r: Result<(), tonic::Status>| match r {
                Err(e) if e.code() == Code::NotFound => Ok(()),
                other => other,
            };
            let result = gone_is_fine(stopped.map(drop)).and(gone_is_fine(removed.map(drop)));
            if let Err(e) = result
                && first.is_ok()
            {
                first = Err(anyhow::anyhow!("cleanup: remove pod {id}: {e}"));
            }
        }
        let parent = self.cgroup_parent();
        let root = self.layout.cgroup_root;
        tokio::task::spawn_blocking(move || {
            leftovers::remove_cgroup_tree(&parent);
            // Other checks may still use the shared root: then it stays for them.
            for hierarchy in leftovers::cgroup_hierarchies() {
                let _ = std::fs::remove_dir(hierarchy.join(root));
            }
        })
        .await?;
        first
    }
}

/// Makes a suite's own scene type, a struct holding a [`Scene`] in field `$field`, usable as
/// one: `Deref` and `DerefMut` to it (so the suite's methods add to or shadow the shared ones)
/// and `From` for [`run_in`].
#[macro_export]
macro_rules! wraps_scene {
    ($t:ident, $field:tt) => {
        impl From<$t> for $crate::scene::Scene {
            fn from(s: $t) -> Self {
                s.$field
            }
        }

        impl std::ops::Deref for $t {
            type Target = $crate::scene::Scene;
            fn deref(&self) -> &$crate::scene::Scene {
                &self.$field
            }
        }

        impl std::ops::DerefMut for $t {
            fn deref_mut(&mut self) -> &mut $crate::scene::Scene {
                &mut self.$field
            }
        }
    };
}

/// Runs `body` on `scene`, then tears the scene down ([`Scene::finish`]); the body's error
/// wins. `S` is a [`Scene`] or a suite's own scene built around one.
pub async fn run_in<S, F>(mut scene: S, body: F) -> Result<()>
where
    S: Into<Scene>,
    F: AsyncFnOnce(&mut S) -> Result<()>,
{
    let result = body(&mut scene).await;
    let cleanup = scene.into().finish().await;
    result.and(cleanup)
}

/// Runs `body` in a fresh scene for `check` on the check's daemon, then tears it down.
pub async fn with_scene<F>(ctx: &Ctx, layout: Layout, check: &str, body: F) -> Result<()>
where
    F: AsyncFnOnce(&mut Scene) -> Result<()>,
{
    run_in(Scene::for_check(ctx, ctx.cri.clone(), check, layout)?, body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_fill_what_kubelet_sends() {
        let mut c = container("web", "registry/busybox:latest", &["sleep", "1"]);
        assert_eq!(c.log_path, "web/0.log");
        assert_eq!(c.command, vec!["sleep", "1"]);
        assert_eq!(
            c.image.as_ref().map(|i| i.image.as_str()),
            Some("registry/busybox:latest")
        );
        let ns = security(&mut c).namespace_options.clone().unwrap();
        assert_eq!(ns.network(), NamespaceMode::Pod);
        assert_eq!(ns.pid(), NamespaceMode::Container);
        assert_eq!(ns.ipc(), NamespaceMode::Pod);
        security(&mut c).readonly_rootfs = true;
        assert!(c.linux.unwrap().security_context.unwrap().readonly_rootfs);
        let mut p = PodSandboxConfig::default();
        pod_security(&mut p).namespace_options = Some(pod_namespaces());
        assert!(
            p.linux
                .unwrap()
                .security_context
                .unwrap()
                .namespace_options
                .is_some()
        );
        assert!(now_ns() > 1_600_000_000_000_000_000);
    }
}
