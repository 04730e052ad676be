//! The daemon's life: directories, the state lock, the image store, the pod sandboxes and
//! containers (with their recovery), the CRI socket, serving, and a clean shutdown on
//! SIGTERM/SIGINT. Containers keep running across the daemon's restarts: their shims outlive it.

use std::fs::{DirBuilder, Permissions};
use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bungeo_imagestore::{ImageStore, StoreConfig};
use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;
use tracing::{info, warn};

use crate::config::{CgroupDriver, Config};
use crate::containers::{ContainerSettings, Containers};
use crate::errors::{Error, Result};
use crate::image_service::CriImageService;
use crate::listener::CriSocket;
use crate::runtime_service::CriRuntimeService;
use crate::sandbox::{SandboxSettings, Sandboxes};
use crate::state_lock::StateLock;

/// Mode of the root directory: traversable, so container rootfs paths under it resolve for
/// container users, but not listable.
pub const ROOT_DIR_MODE: u32 = 0o711;
/// Mode of the state directory: sockets and the lock are root's alone.
pub const STATE_DIR_MODE: u32 = 0o700;
/// How long in-flight calls may run on after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Largest CRI message received or sent: kubelet's CRI client and containerd both allow
/// 16 MiB (tonic's default of 4 MiB refused a container whose arguments kubelet passes).
pub const MAX_MESSAGE: usize = 16 << 20;
/// How long cancelled work may take to let go of the store once the grace period is over.
const CLEANUP_GRACE: Duration = Duration::from_secs(3);

/// A daemon that holds its lock, its store and its socket, ready to serve.
pub struct Daemon {
    config: Arc<Config>,
    lock: StateLock,
    store: Arc<ImageStore>,
    sandboxes: Arc<Sandboxes>,
    containers: Arc<Containers>,
    socket: CriSocket,
    listener: UnixListener,
    /// The Prometheus metrics endpoint, when `[metrics] address` is set.
    metrics_listener: Option<tokio::net::TcpListener>,
    /// How long in-flight calls may run on after shutdown is asked for.
    pub shutdown_grace: Duration,
}

impl Daemon {
    /// Creates the directories, takes the state lock, opens the image store and binds the
    /// socket. Fails, touching nothing of a running daemon, when another holds the state dir.
    pub async fn start(config: Config) -> Result<Daemon> {
        config.validate()?;
        create_dir(&config.root, ROOT_DIR_MODE)?;
        create_dir(&config.state, STATE_DIR_MODE)?;
        let lock = StateLock::acquire(&config.state)?;
        crate::features::probe_at_start(&config.root).await;
        if config.cgroup_driver == CgroupDriver::Systemd
            && !Path::new("/run/systemd/system").exists()
        {
            warn!(
                "cgroup_driver is \"systemd\" but systemd is not running on this host; containers will not start until it is, or until cgroup_driver is \"cgroupfs\""
            );
        }
        let store = open_store(&config).await?;
        let store = Arc::new(store);
        let sandboxes = Arc::new(open_sandboxes(&config).await?);
        let containers = open_containers(&config, &store, &sandboxes).await?;
        let (socket, listener) = CriSocket::bind(&config.listen)?;
        let metrics_listener = bind_metrics(&config).await?;
        info!(
            listen = %config.listen.display(),
            root = %config.root.display(),
            state = %config.state.display(),
            version = env!("CARGO_PKG_VERSION"),
            "bungeo is serving CRI"
        );
        Ok(Daemon {
            config: Arc::new(config),
            lock,
            store,
            sandboxes,
            containers: Arc::new(containers),
            socket,
            listener,
            metrics_listener,
            shutdown_grace: SHUTDOWN_GRACE,
        })
    }

    /// The socket path clients connect to.
    pub fn socket_path(&self) -> &Path {
        self.socket.path()
    }

    /// Serves until `shutdown` completes (or the server fails), then lets in-flight calls
    /// finish for up to `shutdown_grace`, cancels pulls, closes the store, removes the socket
    /// and releases the lock.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let Daemon {
            config,
            lock,
            store,
            sandboxes,
            containers,
            socket,
            listener,
            metrics_listener,
            shutdown_grace,
        } = self;
        let events = Arc::clone(containers.events());
        if let Err(e) = events.start(container_event_builder(&containers, &sandboxes)) {
            warn!(error = %e, "cannot start the container event publisher: GetContainerEvents streams will stay silent");
        }
        let backend = Arc::new(crate::containers::stream::StreamBackend {
            containers: Arc::clone(&containers),
            sandboxes: Arc::clone(&sandboxes),
        });
        let (streaming, streaming_listener) =
            crate::streaming::Server::bind(&config.streaming, backend).await?;
        let streaming_stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(Arc::clone(&streaming).serve(streaming_listener, streaming_stop.clone()));
        let runtime_service =
            CriRuntimeService::new(config, Arc::clone(&sandboxes), Arc::clone(&containers))
                .with_streaming(streaming);
        let stats = runtime_service.stats();
        let images = CriImageService::new(Arc::clone(&store))
            .with_container_filesystems(container_filesystems(&containers, &stats));
        let pulls = images.pulls();
        let metrics_stop = tokio_util::sync::CancellationToken::new();
        if let Some(metrics_listener) = metrics_listener {
            let gauges =
                crate::metrics::GaugeSource::new(Arc::clone(&containers), Arc::clone(&sandboxes));
            let render: crate::metrics::Render =
                Arc::new(move || crate::metrics::global().render(&gauges.gauges()));
            tokio::spawn(crate::metrics::serve(
                metrics_listener,
                render,
                metrics_stop.clone(),
            ));
        }
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = Server::builder()
            .add_service(
                RuntimeServiceServer::new(runtime_service)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
            )
            .add_service(
                ImageServiceServer::new(images)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
            )
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                // A dropped sender also means stop.
                let _ = stop_rx.await;
            });
        let mut server = tokio::spawn(server);

        let stopped_early = tokio::select! {
            result = &mut server => Some(result),
            () = shutdown => None,
        };
        let served = match stopped_early {
            Some(result) => server_result(result),
            None => {
                info!(grace = ?shutdown_grace, "shutting down: finishing in-flight calls");
                // Event streams never finish by themselves: end them so the server can.
                events.close();
                metrics_stop.cancel();
                streaming_stop.cancel();
                let _ = stop_tx.send(());
                match tokio::time::timeout(shutdown_grace, &mut server).await {
                    Ok(result) => server_result(result),
                    Err(_) => {
                        // Cancelled pulls answer their clients with CANCELLED, which beats a
                        // connection that just drops; give those answers a moment to go out.
                        warn!(
                            "in-flight calls did not finish within {shutdown_grace:?}; cancelling them"
                        );
                        pulls.cancel();
                        match tokio::time::timeout(CLEANUP_GRACE, &mut server).await {
                            Ok(result) => server_result(result),
                            Err(_) => {
                                server.abort();
                                Ok(())
                            }
                        }
                    }
                }
            }
        };

        events.close();
        metrics_stop.cancel();
        // The lock must outlive every user of the store: a next daemon may start the moment
        // it is released, and clean up what it believes to be leftovers.
        let deadline = Instant::now() + CLEANUP_GRACE;
        if tokio::time::timeout(CLEANUP_GRACE, pulls.cancel_and_wait())
            .await
            .is_err()
        {
            warn!("pulls did not stop within {CLEANUP_GRACE:?} of being cancelled");
        }
        // The containers hold the store and the sandboxes: they go first.
        close_shared("the containers", containers, deadline).await;
        close_shared("the image store", store, deadline).await;
        close_shared("the sandbox records", sandboxes, deadline).await;
        let removed = socket.remove();
        let released = lock.release();
        info!("bungeo stopped");
        served.and(removed).and(released)
    }
}

/// Binds the metrics endpoint, if one is configured.
async fn bind_metrics(config: &Config) -> Result<Option<tokio::net::TcpListener>> {
    if config.metrics.address.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(&config.metrics.address)
        .await
        .map_err(|e| Error::io("bind metrics.address", &config.metrics.address, e))?;
    info!(address = %config.metrics.address, "serving Prometheus metrics at /metrics");
    Ok(Some(listener))
}

/// Turns a container fact into the event GetContainerEvents streams carry: the pod's status
/// and the statuses of its containers as they are when it is published.
fn container_event_builder(
    containers: &Arc<Containers>,
    sandboxes: &Arc<Sandboxes>,
) -> crate::events::EventBuilder {
    let containers = Arc::downgrade(containers);
    let sandboxes = Arc::downgrade(sandboxes);
    Box::new(move |fact| {
        let containers = containers.upgrade()?;
        let sandboxes = sandboxes.upgrade()?;
        let pod_sandbox_status = sandboxes
            .status(&fact.sandbox_id, false)
            .ok()
            .and_then(|s| s.status);
        Some(k8s_cri::v1::ContainerEventResponse {
            container_id: fact.container_id,
            container_event_type: fact.kind as i32,
            created_at: fact.at,
            pod_sandbox_status,
            containers_statuses: containers.statuses_of_pod(&fact.sandbox_id),
        })
    })
}

/// ImageFsInfo's container filesystem: the writable layers of every container, from the
/// stats cache (measured once when first seen, refreshed in the background).
fn container_filesystems(
    containers: &Arc<Containers>,
    stats: &Arc<crate::stats::StatsCollector>,
) -> crate::image_service::ContainerFilesystems {
    let containers = Arc::downgrade(containers);
    let stats = Arc::clone(stats);
    Arc::new(move || {
        let mut total = crate::stats::LayerUsage {
            measured_at: crate::containers::now_ns(),
            ..Default::default()
        };
        if let Some(containers) = containers.upgrade() {
            for record in containers.snapshots() {
                let upper = record.dir.join(crate::containers::record::UPPER_DIR);
                let usage = stats.layers().usage(&record.id, &upper);
                total.used_bytes += usage.used_bytes;
                total.inodes_used += usage.inodes_used;
            }
        }
        k8s_cri::v1::FilesystemUsage {
            timestamp: total.measured_at,
            fs_id: Some(k8s_cri::v1::FilesystemIdentifier {
                mountpoint: stats.layers_dir().to_string_lossy().into_owned(),
            }),
            used_bytes: Some(k8s_cri::v1::UInt64Value {
                value: total.used_bytes,
            }),
            inodes_used: Some(k8s_cri::v1::UInt64Value {
                value: total.inodes_used,
            }),
        }
    })
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<()> {
    // Registered before start so a signal during a long store open is not fatal mid-way.
    let shutdown = shutdown_signal()?;
    let daemon = Daemon::start(config).await?;
    daemon.serve(shutdown).await
}

/// Completes on the first SIGTERM or SIGINT.
pub fn shutdown_signal() -> Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Error::io("install SIGTERM handler", "signal", e))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| Error::io("install SIGINT handler", "signal", e))?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(signal = name, "shutdown requested");
    })
}

fn create_dir(path: &Path, mode: u32) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| Error::io("create directory", path, e))?;
    // An existing directory, or the umask, may have left another mode.
    std::fs::set_permissions(path, Permissions::from_mode(mode))
        .map_err(|e| Error::io("chmod", path, e))
}

async fn open_store(config: &Config) -> Result<ImageStore> {
    let store_config = StoreConfig {
        root: config.root.clone(),
        max_concurrent_downloads: config.image.max_concurrent_downloads,
        registries: config.registries.clone(),
    };
    tokio::task::spawn_blocking(move || ImageStore::open(store_config))
        .await
        .map_err(|e| Error::Task {
            task: "open image store",
            message: e.to_string(),
        })?
        .map_err(Error::from)
}

async fn open_sandboxes(config: &Config) -> Result<Sandboxes> {
    let settings = SandboxSettings::from_config(config);
    tokio::task::spawn_blocking(move || {
        let sandboxes = Sandboxes::open(settings)?;
        // Without it pods cannot start, but the node can still be inspected and fixed:
        // NetworkReady says what is wrong.
        if let Err(e) = sandboxes.network().install_default() {
            warn!(error = %e, "could not write the default pod network");
        }
        Ok(sandboxes)
    })
    .await
    .map_err(|e| Error::Task {
        task: "open pod sandboxes",
        message: e.to_string(),
    })?
}

async fn open_containers(
    config: &Config,
    store: &Arc<ImageStore>,
    sandboxes: &Arc<Sandboxes>,
) -> Result<Containers> {
    let settings = ContainerSettings::from_config(config);
    let (store, sandboxes) = (Arc::clone(store), Arc::clone(sandboxes));
    tokio::task::spawn_blocking(move || Containers::open(settings, store, sandboxes))
        .await
        .map_err(|e| Error::Task {
            task: "open containers",
            message: e.to_string(),
        })?
}

/// Drops the last reference to `shared` (closing its database) once the blocking calls
/// still holding it return, waiting no later than `deadline`.
async fn close_shared<T: Send + 'static>(what: &str, mut shared: Arc<T>, deadline: Instant) {
    loop {
        match Arc::try_unwrap(shared) {
            Ok(owned) => {
                tokio::task::spawn_blocking(move || drop(owned)).await.ok();
                return;
            }
            Err(still) if Instant::now() < deadline => {
                shared = still;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => {
                warn!("{what} is still in use by a blocking call; exiting anyway");
                return;
            }
        }
    }
}

fn server_result(
    joined: std::result::Result<
        std::result::Result<(), tonic::transport::Error>,
        tokio::task::JoinError,
    >,
) -> Result<()> {
    match joined {
        Ok(served) => served.map_err(Error::from),
        Err(e) => Err(Error::Task {
            task: "gRPC server",
            message: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    use std::path::PathBuf;

    use hyper_util::rt::TokioIo;
    use k8s_cri::v1 as cri;
    use k8s_cri::v1::image_service_client::ImageServiceClient;
    use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
    use tokio::net::UnixStream;
    use tonic::Code;
    use tonic::transport::{Channel, Endpoint, Uri};

    use super::*;
    use crate::state_lock::LOCK_FILE;

    fn test_config(dir: &Path) -> Config {
        Config {
            root: dir.join("root"),
            state: dir.join("state"),
            listen: dir.join("state/bungeo.sock"),
            cni: crate::config::CniConfig {
                conf_dir: dir.join("net.d"),
                ..Default::default()
            },
            ..Config::default()
        }
    }

    async fn connect(path: PathBuf) -> Channel {
        // The URI is required by the API but unused: the connector dials the socket.
        Endpoint::try_from("http://[::]:50051")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
            }))
            .await
            .unwrap()
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_cri_over_the_socket_and_cleans_up_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let config = test_config(dir.path());
        let daemon = Daemon::start(config.clone()).await.unwrap();
        let socket = daemon.socket_path().to_owned();
        assert_eq!(socket, config.listen);
        assert_eq!(mode(&config.root), ROOT_DIR_MODE);
        assert_eq!(mode(&config.state), STATE_DIR_MODE);
        assert!(std::fs::metadata(&socket).unwrap().file_type().is_socket());
        assert_eq!(mode(&socket), 0o660);
        let pid = std::fs::read_to_string(config.state.join(LOCK_FILE)).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());

        let Err(err) = Daemon::start(config.clone()).await else {
            panic!("a second daemon on the same state dir must not start");
        };
        assert_eq!(
            err.to_string(),
            format!(
                "another bungeo is already running with state dir {} (pid {})",
                config.state.display(),
                std::process::id()
            )
        );
        // The refused instance must not have taken the running one's socket away.
        assert!(socket.exists());

        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(daemon.serve(async {
            let _ = stopped.await;
        }));
        let channel = connect(socket.clone()).await;
        let mut runtime = RuntimeServiceClient::new(channel.clone());

        let version = runtime
            .version(cri::VersionRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(version.runtime_name, "bungeo");
        assert_eq!(version.runtime_api_version, "v1");

        let status = runtime
            .status(cri::StatusRequest { verbose: true })
            .await
            .unwrap()
            .into_inner();
        let conditions = status.status.unwrap().conditions;
        assert!(
            conditions
                .iter()
                .any(|c| c.r#type == "RuntimeReady" && c.status)
        );
        // The empty conf dir got bungeo's default network at start: ready where its plugins
        // are installed.
        assert!(config.cni.conf_dir.join("10-bungeo.conflist").exists());
        let plugins = Path::new("/usr/lib/cni/bridge").exists();
        assert!(conditions.iter().any(|c| c.r#type == "NetworkReady"
            && c.status == plugins
            && (plugins || c.reason == "NetworkPluginNotReady")));
        let effective: serde_json::Value = serde_json::from_str(&status.info["config"]).unwrap();
        assert_eq!(effective["listen"], config.listen.to_str().unwrap());

        let runtime_config = runtime
            .runtime_config(cri::RuntimeConfigRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            runtime_config.linux.unwrap().cgroup_driver(),
            cri::CgroupDriver::Cgroupfs
        );

        let listed = runtime
            .list_containers(cri::ListContainersRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(listed.containers.is_empty());
        let err = runtime
            .container_stats(cri::ContainerStatsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        // An event stream stays open until shutdown, which ends it cleanly.
        let mut events = runtime
            .get_container_events(cri::GetEventsRequest::default())
            .await
            .unwrap()
            .into_inner();

        // The image service answers on the same socket; these calls need no registry.
        let mut images = ImageServiceClient::new(channel);
        let listed = images
            .list_images(cri::ListImagesRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(listed.images.is_empty());
        let absent = images
            .image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: "busybox".to_owned(),
                    ..Default::default()
                }),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(absent.image, None);
        images
            .remove_image(cri::RemoveImageRequest {
                image: Some(cri::ImageSpec {
                    image: "busybox".to_owned(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
        let err = images
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: "Not A/Reference!".to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().contains("Not A/Reference!"),
            "{}",
            err.message()
        );
        let fs = images
            .image_fs_info(cri::ImageFsInfoRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(fs.image_filesystems.len(), 1);
        assert!(fs.image_filesystems[0].fs_id.is_some());
        // No containers: an empty writable-layer filesystem.
        assert_eq!(fs.container_filesystems.len(), 1);
        assert_eq!(
            fs.container_filesystems[0].used_bytes,
            Some(cri::UInt64Value { value: 0 })
        );

        stop.send(()).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), events.message())
            .await
            .expect("the event stream ends at shutdown");
        assert!(matches!(ended, Ok(None)), "{ended:?}");
        tokio::time::timeout(Duration::from_secs(20), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(!socket.exists(), "the socket must be removed at shutdown");
        let lock = StateLock::acquire(&config.state).unwrap();
        drop(lock);
    }

    #[tokio::test]
    async fn invalid_config_is_refused_before_anything_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        config.image.max_concurrent_downloads = 0;
        let Err(err) = Daemon::start(config.clone()).await else {
            panic!("an invalid config must not start");
        };
        assert!(
            err.to_string().contains("max_concurrent_downloads"),
            "{err}"
        );
        assert!(!config.root.exists() && !config.state.exists());
    }

    #[tokio::test]
    async fn existing_directories_get_their_modes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(0o755)).unwrap();
        create_dir(&path, STATE_DIR_MODE).unwrap();
        assert_eq!(mode(&path), STATE_DIR_MODE);
    }
}
