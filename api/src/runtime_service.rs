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
use crate::config::{CgroupDriver, CniConfig, Config};
use crate::containers::Containers;
use crate::errors::{join_status, status};
use crate::sandbox::Sandboxes;

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
}

impl CriRuntimeService {
    /// A service answering from `config`, running pods in `sandboxes` and their containers
    /// in `containers`.
    pub fn new(
        config: Arc<Config>,
        sandboxes: Arc<Sandboxes>,
        containers: Arc<Containers>,
    ) -> Self {
        CriRuntimeService {
            config,
            sandboxes,
            containers,
        }
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

    fn status_response(&self, verbose: bool) -> Result<cri::StatusResponse, Status> {
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
        }
        Ok(cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![runtime_ready, network_condition(&self.config.cni)],
            }),
            info,
            ..Default::default()
        })
    }
}

/// The `NetworkReady` condition. This is where the CNI state will be consulted once pod
/// networking exists; until then the truthful answer is "not ready".
pub fn network_condition(cni: &CniConfig) -> cri::RuntimeCondition {
    cri::RuntimeCondition {
        r#type: "NetworkReady".to_owned(),
        status: false,
        reason: NETWORK_NOT_READY_REASON.to_owned(),
        message: format!(
            "pod networking is not implemented in this build of bungeo yet (CNI config dir {} is not read)",
            cni.conf_dir.display()
        ),
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
        traced("Status", None, async { self.status_response(verbose) }).await
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
            self.blocking("PodSandboxStatus", move |s| {
                s.status(&request.pod_sandbox_id, request.verbose)
            })
            .await
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
        _request: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        not_yet("Exec").await
    }

    async fn attach(
        &self,
        _request: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        not_yet("Attach").await
    }

    async fn port_forward(
        &self,
        _request: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        not_yet("PortForward").await
    }

    async fn container_stats(
        &self,
        _request: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        not_yet("ContainerStats").await
    }

    async fn list_container_stats(
        &self,
        _request: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        not_yet("ListContainerStats").await
    }

    async fn pod_sandbox_stats(
        &self,
        _request: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        not_yet("PodSandboxStats").await
    }

    async fn list_pod_sandbox_stats(
        &self,
        _request: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        not_yet("ListPodSandboxStats").await
    }

    async fn update_runtime_config(
        &self,
        _request: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        not_yet("UpdateRuntimeConfig").await
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
        not_yet("GetContainerEvents").await
    }

    async fn list_metric_descriptors(
        &self,
        _request: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        not_yet("ListMetricDescriptors").await
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _request: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        not_yet("ListPodSandboxMetrics").await
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
            network.message.contains("not implemented"),
            "{}",
            network.message
        );
        assert!(s.info.is_empty());
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
        let err = match svc
            .get_container_events(Request::new(cri::GetEventsRequest::default()))
            .await
        {
            Ok(_) => panic!("GetContainerEvents should be unimplemented"),
            Err(e) => e,
        };
        assert_eq!(err.code(), tonic::Code::Unimplemented);
        assert!(err.message().contains("RuntimeService.GetContainerEvents"));
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
            hostname: "svc".into(),
            // PID mode CONTAINER: a shared pid namespace would start the real infra binary,
            // which the e2e suites cover.
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        pid: cri::NamespaceMode::Container as i32,
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
