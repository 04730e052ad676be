//! A CRI v1 client over a unix socket, and the choice of daemons a suite runs against.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    AuthConfig, Image, ImageFilter, ImageFsInfoRequest, ImageFsInfoResponse, ImageSpec,
    ImageStatusRequest, ImageStatusResponse, ListImagesRequest, PullImageRequest,
    RemoveImageRequest, RuntimeConfigRequest, RuntimeConfigResponse, StatusRequest, StatusResponse,
    VersionRequest, VersionResponse,
};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Opens a gRPC channel to a unix socket (the URI is a placeholder tonic requires).
pub async fn connect(socket: &Path) -> Result<Channel> {
    let path: PathBuf = socket.to_path_buf();
    Endpoint::try_from("http://[::]:50051")
        .context("placeholder endpoint")?
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .with_context(|| format!("connect to {}", socket.display()))
}

/// Both CRI services on one channel.
#[derive(Debug, Clone)]
pub struct Cri {
    /// The RuntimeService client.
    pub runtime: RuntimeServiceClient<Channel>,
    /// The ImageService client.
    pub image: ImageServiceClient<Channel>,
}

impl Cri {
    /// Connects to a CRI socket.
    pub async fn connect(socket: &Path) -> Result<Self> {
        Ok(Self::from_channel(connect(socket).await?))
    }

    /// Wraps an open channel.
    pub fn from_channel(channel: Channel) -> Self {
        // Images and listings of a busy node exceed tonic's 4 MiB default.
        let limit = 64 << 20;
        Self {
            runtime: RuntimeServiceClient::new(channel.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            image: ImageServiceClient::new(channel)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        }
    }

    /// `RuntimeService.Version`.
    pub async fn version(&mut self) -> Result<VersionResponse> {
        Ok(self
            .runtime
            .version(VersionRequest {
                version: "v1".into(),
            })
            .await?
            .into_inner())
    }

    /// `RuntimeService.Status`.
    pub async fn status(&mut self, verbose: bool) -> Result<StatusResponse, tonic::Status> {
        Ok(self
            .runtime
            .status(StatusRequest { verbose })
            .await?
            .into_inner())
    }

    /// `RuntimeService.RuntimeConfig`.
    pub async fn runtime_config(&mut self) -> Result<RuntimeConfigResponse, tonic::Status> {
        Ok(self
            .runtime
            .runtime_config(RuntimeConfigRequest {})
            .await?
            .into_inner())
    }

    /// `ImageService.PullImage`; the image ref it answers.
    pub async fn pull(
        &mut self,
        image: &str,
        auth: Option<AuthConfig>,
    ) -> Result<String, tonic::Status> {
        let req = PullImageRequest {
            image: Some(image_spec(image)),
            auth,
            sandbox_config: None,
        };
        Ok(self.image.pull_image(req).await?.into_inner().image_ref)
    }

    /// `ImageService.ImageStatus`.
    pub async fn image_status_full(
        &mut self,
        image: &str,
        verbose: bool,
    ) -> Result<ImageStatusResponse, tonic::Status> {
        let req = ImageStatusRequest {
            image: Some(image_spec(image)),
            verbose,
        };
        Ok(self.image.image_status(req).await?.into_inner())
    }

    /// `ImageService.ImageStatus` without verbose info: the image, if the daemon has it.
    pub async fn image_status(&mut self, image: &str) -> Result<Option<Image>, tonic::Status> {
        Ok(self.image_status_full(image, false).await?.image)
    }

    /// `ImageService.ListImages`, filtered by `filter` if given.
    pub async fn list_images(&mut self, filter: Option<&str>) -> Result<Vec<Image>, tonic::Status> {
        let req = ListImagesRequest {
            filter: filter.map(|f| ImageFilter {
                image: Some(image_spec(f)),
            }),
        };
        Ok(self.image.list_images(req).await?.into_inner().images)
    }

    /// `ImageService.RemoveImage`.
    pub async fn remove_image(&mut self, image: &str) -> Result<(), tonic::Status> {
        let req = RemoveImageRequest {
            image: Some(image_spec(image)),
        };
        self.image.remove_image(req).await?;
        Ok(())
    }

    /// `ImageService.ImageFsInfo`.
    pub async fn image_fs_info(&mut self) -> Result<ImageFsInfoResponse, tonic::Status> {
        Ok(self
            .image
            .image_fs_info(ImageFsInfoRequest {})
            .await?
            .into_inner())
    }

    /// Connects and calls Version until it answers, `alive` fails, or `timeout` passes.
    pub async fn wait_ready(
        socket: &Path,
        timeout: Duration,
        mut alive: impl FnMut() -> Result<()>,
    ) -> Result<Self> {
        let deadline = Instant::now() + timeout;
        loop {
            alive()?;
            let last = match Self::connect(socket).await {
                Ok(mut cri) => match cri.version().await {
                    Ok(_) => return Ok(cri),
                    Err(err) => err,
                },
                Err(err) => err,
            };
            if Instant::now() >= deadline {
                return Err(last.context(format!(
                    "CRI on {} not ready after {timeout:?}",
                    socket.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An `ImageSpec` naming `image`.
pub fn image_spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.to_string(),
        ..ImageSpec::default()
    }
}

/// An `AuthConfig` with user name and password.
pub fn basic_auth(username: &str, password: &str) -> AuthConfig {
    AuthConfig {
        username: username.to_string(),
        password: password.to_string(),
        ..AuthConfig::default()
    }
}

/// A daemon a differential suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// The daemon of this repository.
    Bungeo,
    /// Debian's containerd, the reference.
    Containerd,
}

impl Target {
    /// Every target, in the order trials are listed.
    pub const ALL: [Target; 2] = [Target::Bungeo, Target::Containerd];

    /// The name used in trial names and in `BUNGEO_E2E_TARGETS`.
    pub fn name(self) -> &'static str {
        match self {
            Target::Bungeo => "bungeo",
            Target::Containerd => "containerd",
        }
    }

    /// Targets from `BUNGEO_E2E_TARGETS` (comma separated; default: all of them).
    pub fn from_env() -> Result<Vec<Target>> {
        match std::env::var("BUNGEO_E2E_TARGETS") {
            Ok(list) if !list.trim().is_empty() => Self::parse_list(&list),
            _ => Ok(Self::ALL.to_vec()),
        }
    }

    /// Parses `bungeo,containerd`.
    pub fn parse_list(list: &str) -> Result<Vec<Target>> {
        let mut out = Vec::new();
        for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let target = match word {
                "bungeo" => Target::Bungeo,
                "containerd" => Target::Containerd,
                other => anyhow::bail!(
                    "BUNGEO_E2E_TARGETS: unknown target {other:?} (want bungeo, containerd)"
                ),
            };
            if !out.contains(&target) {
                out.push(target);
            }
        }
        Ok(out)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_target_lists() {
        assert_eq!(
            Target::parse_list(" containerd , bungeo,containerd").unwrap(),
            vec![Target::Containerd, Target::Bungeo]
        );
        assert!(Target::parse_list("cri-o").is_err());
        assert!(Target::parse_list("").unwrap().is_empty());
    }

    #[tokio::test]
    async fn wait_ready_gives_up_when_the_daemon_is_dead() {
        let err = Cri::wait_ready(
            Path::new("/nonexistent/cri.sock"),
            Duration::from_secs(5),
            || anyhow::bail!("daemon exited"),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("daemon exited"));
    }
}
