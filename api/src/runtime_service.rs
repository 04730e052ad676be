//! CRI `RuntimeService`: version, status, runtime config, the pod sandbox calls and the
//! container calls; streaming (Exec, Attach, PortForward), stats and events answer
//! `Unimplemented` until they are built.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

use crate::call_trace::traced;
use crate::config::{CgroupDriver, Config};
use crate::containers::Containers;
use crate::errors::{join_status, status};
use crate::network::PodNetworks;
use crate::sandbox::Sandboxes;
use crate::stats::StatsCollector;

/// CRI `VersionResponse.version`: the kubelet runtime API version string.
pub const KUBELET_API_VERSION: &str = "0.1.0";
/// CRI `VersionResponse.runtime_name`.
pub const RUNTIME_NAME: &str = "bungeo";
/// CRI `VersionResponse.runtime_api_version`.
pub const RUNTIME_API_VERSION: &str = "v1";

/// Reason kubelet shows for a node whose pod network is not ready (the same string
/// containerd and CRI-O use).
pub const NETWORK_NOT_READY_REASON: &str = "NetworkPluginNotReady";

/// The `RuntimeService` the daemon serves.
pub struct CriRuntimeService {
    config: Arc<Config>,
    sandboxes: Arc<Sandboxes>,
    containers: Arc<Containers>,
    stats: Arc<StatsCollector>,
    /// Where Exec, Attach and PortForward URLs point; None: those calls are unavailable.
    streaming: Option<Arc<crate::streaming::Server>>,
}

impl CriRuntimeService {
    /// A service answering from `config`, running pods in `sandboxes` and their containers
    /// in `containers`.
    pub fn new(
        config: Arc<Config>,
        sandboxes: Arc<Sandboxes>,
        containers: Arc<Containers>,
    ) -> Self {
        let stats = Arc::new(StatsCollector::new(
            config.cgroup_driver,
            config.root.join(crate::containers::CONTAINERS_DIR),
        ));
        CriRuntimeService {
            config,
            sandboxes,
            containers,
            stats,
            streaming: None,
        }
    }

    /// Serves Exec, Attach and PortForward through `server`.
    pub fn with_streaming(mut self, server: Arc<crate::streaming::Server>) -> Self {
        self.streaming = Some(server);
        self
    }

    fn streaming(&self, method: &str) -> Result<&crate::streaming::Server, Status> {
        self.streaming.as_deref().ok_or_else(|| {
            Status::unavailable(format!("{method}: the streaming server is not running"))
        })
    }

    /// The stats collector (its writable layer cache also serves ImageFsInfo).
    pub fn stats(&self) -> Arc<StatsCollector> {
        Arc::clone(&self.stats)
    }

    /// Runs a blocking stats read off the async workers.
    async fn stats_blocking<T, F>(&self, call: &str, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&StatsCollector, &Containers, &Sandboxes) -> crate::errors::Result<T>
            + Send
            + 'static,
    {
        let (stats, containers, sandboxes) = (
            Arc::clone(&self.stats),
            Arc::clone(&self.containers),
            Arc::clone(&self.sandboxes),
        );
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| f(&stats, &containers, &sandboxes)))
            .await
            .map_err(|e| join_status(call, &e))?
            .map_err(|e| status(&e))
    }

    /// Runs a blocking container call off the async workers, to its end even if the client
    /// gives up (a container is never left half-created or half-removed).
    async fn containers_blocking<T, F>(&self, call: &str, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Containers) -> crate::errors::Result<T> + Send + 'static,
    {
        let containers = Arc::clone(&self.containers);
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| f(&containers)))
            .await
            .map_err(|e| join_status(call, &e))?
            .map_err(|e| status(&e))
    }

    /// Runs a blocking sandbox call off the async workers. The call runs to its end even if
    /// the client gives up, so a sandbox is never left half-built by a cancelled request.
    async fn blocking<T, F>(&self, call: &str, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Sandboxes) -> crate::errors::Result<T> + Send + 'static,
    {
        let sandboxes = Arc::clone(&self.sandboxes);
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| f(&sandboxes)))
            .await
            .map_err(|e| join_status(call, &e))?
            .map_err(|e| status(&e))
    }

    fn status_response(
        &self,
        verbose: bool,
        network: cri::RuntimeCondition,
    ) -> Result<cri::StatusResponse, Status> {
        let runtime_ready = cri::RuntimeCondition {
            r#type: "RuntimeReady".to_owned(),
            status: true,
            reason: String::new(),
            message: String::new(),
        };
        let mut info = HashMap::new();
        if verbose {
            let json = serde_json::to_string(&self.config.redacted())
                .map_err(|e| Status::internal(format!("Status: encode the config as JSON: {e}")))?;
            info.insert("config".to_owned(), json);
            info.insert("runtime".to_owned(), self.runtime_facts().to_string());
        }
        Ok(cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![runtime_ready, network],
            }),
            info,
            runtime_handlers: crate::features::runtime_handlers(&self.config),
            features: Some(crate::features::runtime_features()),
        })
    }
}

/// The `NetworkReady` condition: true once a valid CNI config (with its plugins) is loadable
/// from the conf dir, which is re-read whenever it changes; else why not. Blocks (files).
pub fn network_condition(networks: &PodNetworks) -> cri::RuntimeCondition {
    let (status, reason, message) = match networks.readiness() {
        Ok(_) => (true, String::new(), String::new()),
        Err(why) => (
            false,
            NETWORK_NOT_READY_REASON.to_owned(),
            format!("Network plugin returns error: cni config load failed: {why}"),
        ),
    };
    cri::RuntimeCondition {
        r#type: "NetworkReady".to_owned(),
        status,
        reason,
        message,
    }
}

impl CriRuntimeService {
    /// Facts about the running daemon for verbose Status: version, cgroup layout and driver,
    /// what it holds, where its metrics are.
    fn runtime_facts(&self) -> serde_json::Value {
        let layout = bungeo_runtime::cgroups::detect()
            .map(|l| l.to_string())
            .unwrap_or_else(|e| format!("unknown: {e}"));
        let containers = self.containers.snapshots();
        let running = containers
            .iter()
            .filter(|c| c.phase == crate::containers::ContainerPhase::Running)
            .count();
        serde_json::json!({
            "name": RUNTIME_NAME,
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "cgroupLayout": layout,
            "cgroupDriver": self.config.cgroup_driver,
            "podSandboxes": self.sandboxes.list(None).len(),
            "containers": containers.len(),
            "containersRunning": running,
            "containerEventSubscribers": self.containers.events().subscribers(),
            "metricsAddress": self.config.metrics.address,
            "apparmor": self.containers.apparmor().describe(),
        })
    }
}

fn cri_cgroup_driver(driver: CgroupDriver) -> cri::CgroupDriver {
    match driver {
        CgroupDriver::Cgroupfs => cri::CgroupDriver::Cgroupfs,
        CgroupDriver::Systemd => cri::CgroupDriver::Systemd,
    }
}

fn unimplemented(method: &str) -> Status {
    Status::unimplemented(format!(
        "RuntimeService.{method} is not implemented by bungeo yet"
    ))
}

/// Declares `RuntimeService` methods that exist in the CRI but not in this build yet.
async fn not_yet<T>(method: &'static str) -> Result<Response<T>, Status> {
    traced(method, None, async { Err(unimplemented(method)) }).await
}

type ContainerEventStream =
    Pin<Box<dyn Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RuntimeService for CriRuntimeService {
    async fn version(
        &self,
        _request: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        traced("Version", None, async {
            Ok(cri::VersionResponse {
                version: KUBELET_API_VERSION.to_owned(),
                runtime_name: RUNTIME_NAME.to_owned(),
                runtime_version: env!("CARGO_PKG_VERSION").to_owned(),
                runtime_api_version: RUNTIME_API_VERSION.to_owned(),
            })
        })
        .await
    }

    async fn status(
        &self,
        request: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        let verbose = request.get_ref().verbose;
        traced("Status", None, async {
            let network = self
                .blocking("Status", |s| Ok(network_condition(s.network())))
                .await?;
            self.status_response(verbose, network)
        })
        .await
    }

    async fn runtime_config(
        &self,
        _request: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        traced("RuntimeConfig", None, async {
            Ok(cri::RuntimeConfigResponse {
                linux: Some(cri::LinuxRuntimeConfiguration {
                    cgroup_driver: cri_cgroup_driver(self.config.cgroup_driver).into(),
                }),
            })
        })
        .await
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let request = request.into_inner();
        traced("RunPodSandbox", None, async {
            let pod_sandbox_id = self
                .blocking("RunPodSandbox", move |s| s.run(&request))
                .await?;
            Ok(cri::RunPodSandboxResponse { pod_sandbox_id })
        })
        .await
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        traced("StopPodSandbox", None, async {
            // Its containers first: a stopped pod runs nothing.
            let pod = id.clone();
            self.containers_blocking("StopPodSandbox", move |c| c.stop_pod(&pod))
                .await?;
            self.blocking("StopPodSandbox", move |s| s.stop(&id))
                .await?;
            Ok(cri::StopPodSandboxResponse {})
        })
        .await
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        traced("RemovePodSandbox", None, async {
            let pod = id.clone();
            self.containers_blocking("RemovePodSandbox", move |c| c.remove_pod(&pod))
                .await?;
            self.blocking("RemovePodSandbox", move |s| s.remove(&id))
                .await?;
            Ok(cri::RemovePodSandboxResponse {})
        })
        .await
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let request = request.into_inner();
        traced("PodSandboxStatus", None, async {
            let mut response = self
                .blocking("PodSandboxStatus", move |s| {
                    s.status(&request.pod_sandbox_id, request.verbose)
                })
                .await?;
            // kubelet's Evented PLEG takes the pod's container statuses from here (a response
            // with a timestamp), so they must be the pod's, not an empty list.
            if let Some(status) = &response.status {
                response.containers_statuses = self.containers.statuses_of_pod(&status.id);
            }
            Ok(response)
        })
        .await
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let filter = request.into_inner().filter;
        traced("ListPodSandbox", None, async {
            // In memory, but a sandbox being removed holds its lock for a moment.
            let items = self
                .blocking("ListPodSandbox", move |s| Ok(s.list(filter.as_ref())))
                .await?;
            Ok(cri::ListPodSandboxResponse { items })
        })
        .await
    }

    async fn create_container(
        &self,
        request: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let request = request.into_inner();
        let image = request
            .config
            .as_ref()
            .and_then(|c| c.image.as_ref())
            .map(|i| i.image.clone());
        traced("CreateContainer", image.as_deref(), async {
            let container_id = self
                .containers_blocking("CreateContainer", move |c| c.create(&request))
                .await?;
            Ok(cri::CreateContainerResponse { container_id })
        })
        .await
    }

    async fn start_container(
        &self,
        request: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        traced("StartContainer", None, async {
            self.containers_blocking("StartContainer", move |c| c.start(&id))
                .await?;
            Ok(cri::StartContainerResponse {})
        })
        .await
    }

    async fn stop_container(
        &self,
        request: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let request = request.into_inner();
        traced("StopContainer", None, async {
            self.containers_blocking("StopContainer", move |c| {
                c.stop(&request.container_id, request.timeout)
            })
            .await?;
            Ok(cri::StopContainerResponse {})
        })
        .await
    }

    async fn remove_container(
        &self,
        request: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        traced("RemoveContainer", None, async {
            self.containers_blocking("RemoveContainer", move |c| c.remove(&id))
                .await?;
            Ok(cri::RemoveContainerResponse {})
        })
        .await
    }

    async fn list_containers(
        &self,
        request: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let filter = request.into_inner().filter;
        traced("ListContainers", None, async {
            // In memory: no blocking call.
            Ok(cri::ListContainersResponse {
                containers: self.containers.list(filter.as_ref()),
            })
        })
        .await
    }

    async fn container_status(
        &self,
        request: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let request = request.into_inner();
        traced("ContainerStatus", None, async {
            self.containers_blocking("ContainerStatus", move |c| {
                c.status(&request.container_id, request.verbose)
            })
            .await
        })
        .await
    }

    async fn update_container_resources(
        &self,
        request: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let request = request.into_inner();
        traced("UpdateContainerResources", None, async {
            self.containers_blocking("UpdateContainerResources", move |c| {
                c.update_resources(&request)
            })
            .await?;
            Ok(cri::UpdateContainerResourcesResponse {})
        })
        .await
    }

    async fn reopen_container_log(
        &self,
        request: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        let id = request.into_inner().container_id;
        traced("ReopenContainerLog", None, async {
            self.containers_blocking("ReopenContainerLog", move |c| c.reopen_log(&id))
                .await?;
            Ok(cri::ReopenContainerLogResponse {})
        })
        .await
    }

    async fn exec_sync(
        &self,
        request: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let request = request.into_inner();
        traced("ExecSync", None, async {
            self.containers_blocking("ExecSync", move |c| c.exec_sync(&request))
                .await
        })
        .await
    }

    async fn exec(
        &self,
        request: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        let r = request.into_inner();
        traced("Exec", None, async {
            let server = self.streaming("Exec")?;
            let query = r.container_id.clone();
            let id = self
                .containers_blocking("Exec", move |c| c.check_streamable(&query))
                .await?;
            crate::streaming::validate_streams(r.stdin, r.stdout, r.stderr, r.tty)
                .map_err(|e| status(&e))?;
            if r.cmd.is_empty() {
                return Err(Status::invalid_argument("Exec: cmd must name a command"));
            }
            let url = server.url_for(crate::streaming::Request::Exec(
                crate::streaming::CommandRequest {
                    container_id: id,
                    cmd: r.cmd,
                    tty: r.tty,
                    stdin: r.stdin,
                    stdout: r.stdout,
                    stderr: r.stderr,
                },
            ));
            Ok(cri::ExecResponse { url })
        })
        .await
    }

    async fn attach(
        &self,
        request: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        let r = request.into_inner();
        traced("Attach", None, async {
            let server = self.streaming("Attach")?;
            let query = r.container_id.clone();
            let id = self
                .containers_blocking("Attach", move |c| c.check_streamable(&query))
                .await?;
            crate::streaming::validate_streams(r.stdin, r.stdout, r.stderr, r.tty)
                .map_err(|e| status(&e))?;
            let url = server.url_for(crate::streaming::Request::Attach(
                crate::streaming::CommandRequest {
                    container_id: id,
                    cmd: Vec::new(),
                    tty: r.tty,
                    stdin: r.stdin,
                    stdout: r.stdout,
                    stderr: r.stderr,
                },
            ));
            Ok(cri::AttachResponse { url })
        })
        .await
    }

    async fn port_forward(
        &self,
        request: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let r = request.into_inner();
        traced("PortForward", None, async {
            let server = self.streaming("PortForward")?;
            let query = r.pod_sandbox_id.clone();
            let record = self
                .blocking("PortForward", move |s| s.record(&query))
                .await?;
            if record.phase != crate::records::SandboxPhase::Ready {
                return Err(Status::failed_precondition(format!(
                    "PortForward: pod sandbox {} is not ready",
                    record.id
                )));
            }
            let ports = r
                .port
                .iter()
                .map(|p| {
                    u16::try_from(*p).ok().filter(|p| *p > 0).ok_or_else(|| {
                        Status::invalid_argument(format!("PortForward: invalid port {p}"))
                    })
                })
                .collect::<Result<Vec<u16>, Status>>()?;
            let url = server.url_for(crate::streaming::Request::PortForward {
                sandbox_id: record.id,
                ports,
            });
            Ok(cri::PortForwardResponse { url })
        })
        .await
    }

    async fn container_stats(
        &self,
        request: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let id = request.into_inner().container_id;
        traced("ContainerStats", None, async {
            if id.is_empty() {
                return Err(Status::invalid_argument(
                    "ContainerStats: no container id given",
                ));
            }
            let stats = self
                .stats_blocking("ContainerStats", move |s, c, _| s.container_stats(c, &id))
                .await?;
            Ok(cri::ContainerStatsResponse { stats: Some(stats) })
        })
        .await
    }

    async fn list_container_stats(
        &self,
        request: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let filter = request.into_inner().filter;
        traced("ListContainerStats", None, async {
            let stats = self
                .stats_blocking("ListContainerStats", move |s, c, _| {
                    Ok(s.list_container_stats(c, filter.as_ref()))
                })
                .await?;
            Ok(cri::ListContainerStatsResponse { stats })
        })
        .await
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        traced("PodSandboxStats", None, async {
            if id.is_empty() {
                return Err(Status::invalid_argument(
                    "PodSandboxStats: no pod sandbox id given",
                ));
            }
            let stats = self
                .stats_blocking("PodSandboxStats", move |s, c, p| {
                    s.pod_sandbox_stats(c, p, &id)
                })
                .await?;
            Ok(cri::PodSandboxStatsResponse { stats: Some(stats) })
        })
        .await
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let filter = request.into_inner().filter;
        traced("ListPodSandboxStats", None, async {
            let stats = self
                .stats_blocking("ListPodSandboxStats", move |s, c, p| {
                    Ok(s.list_pod_sandbox_stats(c, p, filter.as_ref()))
                })
                .await?;
            Ok(cri::ListPodSandboxStatsResponse { stats })
        })
        .await
    }

    async fn update_runtime_config(
        &self,
        request: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        let pod_cidr = request
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        traced("UpdateRuntimeConfig", None, async {
            // Only bungeo's own default network follows the pod CIDR (as with containerd).
            self.blocking("UpdateRuntimeConfig", move |s| {
                s.network().update_pod_cidr(&pod_cidr)
            })
            .await?;
            Ok(cri::UpdateRuntimeConfigResponse {})
        })
        .await
    }

    async fn checkpoint_container(
        &self,
        _request: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        not_yet("CheckpointContainer").await
    }

    type GetContainerEventsStream = ContainerEventStream;

    async fn get_container_events(
        &self,
        _request: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        traced("GetContainerEvents", None, async {
            Ok(self.containers.events().subscribe())
        })
        .await
    }

    async fn list_metric_descriptors(
        &self,
        _request: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        traced("ListMetricDescriptors", None, async {
            Ok(cri::ListMetricDescriptorsResponse {
                descriptors: crate::stats::cadvisor::descriptors(),
            })
        })
        .await
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _request: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        traced("ListPodSandboxMetrics", None, async {
            let pod_metrics = self
                .stats_blocking("ListPodSandboxMetrics", |s, c, p| {
                    Ok(s.list_pod_sandbox_metrics(c, p))
                })
                .await?;
            Ok(cri::ListPodSandboxMetricsResponse { pod_metrics })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::SandboxSettings;
    use bungeo_imagestore::HostConfig;

    /// A service whose sandboxes live in a temporary directory, whatever `config` says.
    struct TestService {
        svc: CriRuntimeService,
        _dir: tempfile::TempDir,
    }

    impl std::ops::Deref for TestService {
        type Target = CriRuntimeService;

        fn deref(&self) -> &CriRuntimeService {
            &self.svc
        }
    }

    fn service(config: Config) -> TestService {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = SandboxSettings::from_config(&config);
        settings.root = dir.path().join("root");
        settings.state = dir.path().join("state");
        // Never the node's /etc/cni/net.d.
        settings.network.conf_dir = dir.path().join("net.d");
        settings.network.data_dir = dir.path().join("root/cni/networks");
        let sandboxes = Arc::new(Sandboxes::open(settings).unwrap());
        let containers = crate::containers::tests::open_in(dir.path(), &config, &sandboxes);
        TestService {
            svc: CriRuntimeService::new(Arc::new(config), sandboxes, Arc::new(containers)),
            _dir: dir,
        }
    }

    #[tokio::test]
    async fn version_names_bungeo_and_cri_v1() {
        let v = service(Config::default())
            .version(Request::new(cri::VersionRequest::default()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(v.runtime_name, "bungeo");
        assert_eq!(v.runtime_api_version, "v1");
        assert_eq!(v.version, "0.1.0");
        assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));
    }

    #[tokio::test]
    async fn status_reports_runtime_ready_and_network_not_ready_truthfully() {
        let s = service(Config::default())
            .status(Request::new(cri::StatusRequest { verbose: false }))
            .await
            .unwrap()
            .into_inner();
        let conditions = s.status.unwrap().conditions;
        let runtime = conditions
            .iter()
            .find(|c| c.r#type == "RuntimeReady")
            .unwrap();
        assert!(runtime.status);
        let network = conditions
            .iter()
            .find(|c| c.r#type == "NetworkReady")
            .unwrap();
        assert!(!network.status);
        assert_eq!(network.reason, "NetworkPluginNotReady");
        assert!(
            network.message.contains("no network config found in"),
            "{}",
            network.message
        );
        assert!(s.info.is_empty());
    }

    #[tokio::test]
    async fn network_turns_ready_with_a_config_and_follows_the_pod_cidr() {
        let svc = service(Config::default());
        let networks = svc.sandboxes.network();
        let path = networks.install_default().unwrap().unwrap();
        let network_ready = || async {
            let s = svc
                .status(Request::new(cri::StatusRequest { verbose: false }))
                .await
                .unwrap()
                .into_inner();
            s.status
                .unwrap()
                .conditions
                .into_iter()
                .find(|c| c.r#type == "NetworkReady")
                .unwrap()
        };
        let ready = network_ready().await;
        if !std::path::Path::new("/usr/lib/cni/bridge").exists() {
            // Without the plugins the reason names the one missing.
            assert!(ready.message.contains("not found"), "{}", ready.message);
            crate::test_skip::skip(
                "cni-plugins",
                "no /usr/lib/cni/bridge: ready network untested",
            );
            return;
        }
        assert!(ready.status, "{ready:?}");
        assert_eq!((ready.reason.as_str(), ready.message.as_str()), ("", ""));

        let update = |cidr: &str| cri::UpdateRuntimeConfigRequest {
            runtime_config: Some(cri::RuntimeConfig {
                network_config: Some(cri::NetworkConfig {
                    pod_cidr: cidr.to_owned(),
                }),
            }),
        };
        svc.update_runtime_config(Request::new(update("10.244.7.0/24")))
            .await
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("10.244.7.0/24") && !text.contains("10.88.0.0/16"),
            "{text}"
        );
        let err = svc
            .update_runtime_config(Request::new(update("not-a-cidr")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        svc.update_runtime_config(Request::new(cri::UpdateRuntimeConfigRequest::default()))
            .await
            .unwrap();

        std::fs::write(&path, "{ broken").unwrap();
        let broken = network_ready().await;
        assert!(!broken.status);
        assert!(
            broken.message.contains("10-bungeo.conflist"),
            "{}",
            broken.message
        );
    }

    #[tokio::test]
    async fn verbose_status_returns_the_effective_config_without_secrets() {
        let mut config = Config::default();
        config.image.max_concurrent_downloads = 7;
        config.registries.hosts.insert(
            "127.0.0.1:5001".to_owned(),
            HostConfig {
                username: "alice".to_owned(),
                password: "hunter2".to_owned(),
                ..HostConfig::default()
            },
        );
        let s = service(config.clone())
            .status(Request::new(cri::StatusRequest { verbose: true }))
            .await
            .unwrap()
            .into_inner();
        let json: serde_json::Value = serde_json::from_str(&s.info["config"]).unwrap();
        assert_eq!(json["image"]["max_concurrent_downloads"], 7);
        assert_eq!(json["root"], "/var/lib/bungeo");
        assert_eq!(json["cgroup_driver"], "cgroupfs");
        let host = &json["registries"]["hosts"]["127.0.0.1:5001"];
        assert_eq!(host["username"], "alice");
        assert_eq!(host["password"], "<redacted>");
        assert!(!s.info["config"].contains("hunter2"));
    }

    #[tokio::test]
    async fn runtime_config_reports_the_configured_cgroup_driver() {
        for (driver, expected) in [
            (CgroupDriver::Cgroupfs, cri::CgroupDriver::Cgroupfs),
            (CgroupDriver::Systemd, cri::CgroupDriver::Systemd),
        ] {
            let config = Config {
                cgroup_driver: driver,
                ..Config::default()
            };
            let r = service(config)
                .runtime_config(Request::new(cri::RuntimeConfigRequest::default()))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.linux.unwrap().cgroup_driver(), expected);
        }
    }

    #[tokio::test]
    async fn calls_not_built_yet_answer_unimplemented_with_their_name() {
        let svc = service(Config::default());
        let err = svc
            .checkpoint_container(Request::new(cri::CheckpointContainerRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unimplemented);
        assert_eq!(
            err.message(),
            "RuntimeService.CheckpointContainer is not implemented by bungeo yet"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stats_calls_answer_with_cri_codes_and_empty_lists() {
        let svc = service(Config::default());
        let err = svc
            .container_stats(Request::new(cri::ContainerStatsRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let err = svc
            .container_stats(Request::new(cri::ContainerStatsRequest {
                container_id: "0123".into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        let err = svc
            .pod_sandbox_stats(Request::new(cri::PodSandboxStatsRequest {
                pod_sandbox_id: "0123".into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        let list = svc
            .list_container_stats(Request::new(cri::ListContainerStatsRequest::default()))
            .await
            .unwrap()
            .into_inner();
        assert!(list.stats.is_empty());
        let pods = svc
            .list_pod_sandbox_stats(Request::new(cri::ListPodSandboxStatsRequest::default()))
            .await
            .unwrap()
            .into_inner();
        assert!(pods.stats.is_empty());
        let descriptors = svc
            .list_metric_descriptors(Request::new(cri::ListMetricDescriptorsRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .descriptors;
        assert!(
            descriptors
                .iter()
                .any(|d| d.name == "container_memory_working_set_bytes")
        );
        // A subscription is a stream that stays open until shutdown.
        let stream = svc
            .get_container_events(Request::new(cri::GetEventsRequest::default()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(svc.containers.events().subscribers(), 1);
        drop(stream);
        assert_eq!(svc.containers.events().subscribers(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pod_sandbox_calls_answer_with_cri_codes() {
        let svc = service(Config::default());
        let err = svc
            .run_pod_sandbox(Request::new(cri::RunPodSandboxRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("config is required"),
            "{}",
            err.message()
        );

        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "svc".into(),
                uid: "uid-svc".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            // On the node's network: no name of its own, as kubelet sends.
            hostname: String::new(),
            // PID mode CONTAINER: a shared pid namespace would start the real infra binary,
            // which the e2e suites cover. The node's network: this service has no CNI config.
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        pid: cri::NamespaceMode::Container as i32,
                        network: cri::NamespaceMode::Node as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let run = |handler: &str| cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_owned(),
        };
        let err = svc
            .run_pod_sandbox(Request::new(run("kata")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("unknown runtime handler \"kata\""),
            "{}",
            err.message()
        );
        // A pod of its own network needs a network config, which this node lacks.
        let mut own_network = run("");
        let options = own_network
            .config
            .as_mut()
            .and_then(|c| c.linux.as_mut())
            .and_then(|l| l.security_context.as_mut())
            .and_then(|s| s.namespace_options.as_mut())
            .unwrap();
        options.network = cri::NamespaceMode::Pod as i32;
        let err = svc
            .run_pod_sandbox(Request::new(own_network))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(
            err.message().contains("pod network is not ready"),
            "{}",
            err.message()
        );

        let id = svc
            .run_pod_sandbox(Request::new(run("")))
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id;
        let err = svc
            .run_pod_sandbox(Request::new(run("")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists);

        let status = svc
            .pod_sandbox_status(Request::new(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id[..8].to_owned(),
                verbose: false,
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.status.unwrap().id, id);
        let listed = svc
            .list_pod_sandbox(Request::new(cri::ListPodSandboxRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .items;
        assert_eq!(listed.len(), 1);

        svc.stop_pod_sandbox(Request::new(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        }))
        .await
        .unwrap();
        svc.remove_pod_sandbox(Request::new(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        }))
        .await
        .unwrap();
        let err = svc
            .pod_sandbox_status(Request::new(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: false,
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(err.message().contains(&id), "{}", err.message());
        // Unknown ids: stop and remove are idempotent, status is NotFound.
        for unknown in ["0123", &"f".repeat(64)] {
            svc.stop_pod_sandbox(Request::new(cri::StopPodSandboxRequest {
                pod_sandbox_id: unknown.to_owned(),
            }))
            .await
            .unwrap();
            svc.remove_pod_sandbox(Request::new(cri::RemovePodSandboxRequest {
                pod_sandbox_id: unknown.to_owned(),
            }))
            .await
            .unwrap();
        }
    }
}
