//! Pods and containers for the hardening suites (leaks, faults, endpoint): a registry with
//! the busybox test image, a bungeo reaching it, and the few CRI calls those suites make, each
//! failing with the call and the object named.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_cri::v1::{
    ContainerConfig, ContainerStatusRequest, CreateContainerRequest, ExecSyncRequest,
    ExecSyncResponse, ListContainersRequest, ListPodSandboxRequest, PodSandboxConfig,
    PodSandboxMetadata, RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};

use crate::bungeo::Bungeo;
use crate::cri::Cri;
use crate::images::{self, Catalog, PLAIN, Pusher};
use crate::registry::Registry;
use crate::registryhosts::RegistryHosts;
use crate::scene::{self, strings};

/// A docker-registry holding the busybox test image.
pub struct BusyboxRegistry {
    /// The registry.
    pub registry: Registry,
    /// The test images (only [`PLAIN`] is pushed; the rest are there to derive from).
    pub catalog: Catalog,
}

impl BusyboxRegistry {
    /// Starts a registry and pushes [`PLAIN`] to it.
    pub async fn start() -> Result<Self> {
        let catalog = Catalog::build(&images::read_busybox()?, false)?;
        let registry = Registry::start()?;
        Pusher::new(&registry.host(), None)
            .push(PLAIN.repo, Some(PLAIN.tag), catalog.get(PLAIN)?)
            .await
            .context("push busybox")?;
        Ok(Self { registry, catalog })
    }

    /// `host/busybox:latest`.
    pub fn busybox(&self) -> String {
        PLAIN.at(&self.registry.host())
    }

    /// The registry configuration a daemon needs to pull from it.
    pub fn hosts(&self) -> RegistryHosts {
        RegistryHosts {
            plain_http: vec![self.registry.host()],
            ..Default::default()
        }
    }

    /// Starts a bungeo reaching the registry, with `extra` appended to its config, and pulls
    /// busybox into it.
    pub async fn bungeo(&self, extra: &str) -> Result<(Bungeo, Cri)> {
        let mut config = self.hosts().bungeo_toml();
        config.push_str(extra);
        let bungeo = Bungeo::start_with_config(&config).await?;
        let mut cri = Cri::connect(bungeo.socket()).await?;
        cri.pull(&self.busybox(), None)
            .await
            .context("pull busybox")?;
        Ok((bungeo, cri))
    }
}

/// A pod config named `name` in Kubernetes namespace `namespace`, in its own network, IPC and
/// UTS namespaces, under `cgroup_parent` (empty: the daemon's default).
pub fn pod_config(namespace: &str, name: &str, cgroup_parent: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_string(),
            uid: format!("{namespace}-{name}-uid"),
            namespace: namespace.to_string(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        log_directory: String::new(),
        labels: HashMap::from([("suite".to_string(), namespace.to_string())]),
        linux: Some(scene::pod_linux(cgroup_parent)),
        ..Default::default()
    }
}

/// A container of `image` running `command`, logging to `<name>.log` in its pod's log
/// directory (if the pod has one), unprivileged, in the pod's network and IPC namespaces.
pub fn container_config(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        log_path: format!("{name}.log"),
        ..scene::container(name, image, command)
    }
}

/// RunPodSandbox.
pub async fn run_pod(cri: &mut Cri, config: PodSandboxConfig) -> Result<String> {
    let name = config.metadata.as_ref().map(|m| m.name.clone());
    Ok(cri
        .runtime
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .with_context(|| format!("RunPodSandbox {name:?}"))?
        .into_inner()
        .pod_sandbox_id)
}

/// CreateContainer then StartContainer in pod `pod` (whose config is `pod_config`).
pub async fn run_container(
    cri: &mut Cri,
    pod: &str,
    pod_config: &PodSandboxConfig,
    config: ContainerConfig,
) -> Result<String> {
    let name = config.metadata.as_ref().map(|m| m.name.clone());
    let id = cri
        .runtime
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.to_string(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        })
        .await
        .with_context(|| format!("CreateContainer {name:?} in pod {pod}"))?
        .into_inner()
        .container_id;
    cri.runtime
        .start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .with_context(|| format!("StartContainer {id}"))?;
    Ok(id)
}

/// StopContainer (with `timeout` seconds of grace) and RemoveContainer.
pub async fn remove_container(cri: &mut Cri, id: &str, timeout: i64) -> Result<()> {
    cri.runtime
        .stop_container(StopContainerRequest {
            container_id: id.to_string(),
            timeout,
        })
        .await
        .with_context(|| format!("StopContainer {id}"))?;
    cri.runtime
        .remove_container(RemoveContainerRequest {
            container_id: id.to_string(),
        })
        .await
        .with_context(|| format!("RemoveContainer {id}"))?;
    Ok(())
}

/// StopPodSandbox and RemovePodSandbox.
pub async fn remove_pod(cri: &mut Cri, id: &str) -> Result<()> {
    cri.runtime
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .with_context(|| format!("StopPodSandbox {id}"))?;
    cri.runtime
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .with_context(|| format!("RemovePodSandbox {id}"))?;
    Ok(())
}

/// Ids of every pod and every container the daemon has records of.
pub async fn listed(cri: &mut Cri) -> Result<(Vec<String>, Vec<String>)> {
    let pods = cri
        .runtime
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .context("ListPodSandbox")?
        .into_inner()
        .items
        .into_iter()
        .map(|p| p.id)
        .collect();
    let containers = cri
        .runtime
        .list_containers(ListContainersRequest { filter: None })
        .await
        .context("ListContainers")?
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect();
    Ok((pods, containers))
}

/// The container's main process id, from bungeo's verbose ContainerStatus.
pub async fn container_pid(cri: &mut Cri, id: &str) -> Result<u32> {
    let status = cri
        .runtime
        .container_status(ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: true,
        })
        .await
        .with_context(|| format!("ContainerStatus {id}"))?
        .into_inner();
    let info = status.info.get("info").context("no verbose info")?;
    let v: serde_json::Value = serde_json::from_str(info).context("verbose info is not JSON")?;
    v["pid"]
        .as_u64()
        .filter(|p| *p > 0)
        .map(|p| p as u32)
        .with_context(|| format!("no pid in the verbose info of {id}: {info}"))
}

/// ExecSync of `cmd` in container `id`.
pub async fn exec_sync(cri: &mut Cri, id: &str, cmd: &[&str]) -> Result<ExecSyncResponse> {
    Ok(cri
        .runtime
        .exec_sync(ExecSyncRequest {
            container_id: id.to_string(),
            cmd: strings(cmd),
            timeout: 30,
        })
        .await
        .with_context(|| format!("ExecSync {cmd:?} in {id}"))?
        .into_inner())
}

/// An integer from the environment, or `default` when unset; a value that does not parse is
/// an error, not a silent default.
pub fn env_knob(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("{name}={v:?} is not a whole number")),
        Err(_) => Ok(default),
    }
}

/// A directory for big test output on disk (`/var/tmp`, never a tmpfs), removed on drop.
pub fn disk_tempdir(prefix: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(Path::new("/var/tmp"))
        .context("create a directory in /var/tmp")
}

/// How long the suites wait for a container to reach a state.
pub const WAIT: Duration = Duration::from_secs(60);
