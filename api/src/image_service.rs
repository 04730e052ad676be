//! CRI `ImageService` over the image store.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bungeo_imagestore::{Credentials, FsUsage, ImageRecord, ImageStore};
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_server::ImageService;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::call_trace::traced;
use crate::errors::{join_status, store_status};

/// The `ImageService` the daemon serves.
pub struct CriImageService {
    store: Arc<ImageStore>,
    pulls: PullTasks,
    container_fs: Option<ContainerFilesystems>,
}

/// Measures the containers' writable layers for ImageFsInfo (blocking).
pub type ContainerFilesystems = Arc<dyn Fn() -> cri::FilesystemUsage + Send + Sync>;

/// Pulls in flight, each in a task of its own, so shutdown can cancel them and wait until
/// they have let go of the store.
#[derive(Debug, Clone, Default)]
pub struct PullTasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl PullTasks {
    fn spawn<T, F>(&self, pull: F) -> tokio::task::JoinHandle<Result<T, Status>>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, Status>> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                result = pull => result,
                () = cancel.cancelled() => Err(Status::cancelled(
                    "PullImage: cancelled because bungeo is shutting down",
                )),
            }
        })
    }

    /// Cancels every pull in flight; later pulls are cancelled at once.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Cancels every pull, refuses new ones, and waits for the tasks to end.
    pub async fn cancel_and_wait(&self) {
        self.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl CriImageService {
    /// A service over `store`.
    pub fn new(store: Arc<ImageStore>) -> Self {
        CriImageService {
            store,
            pulls: PullTasks::default(),
            container_fs: None,
        }
    }

    /// Makes ImageFsInfo report the containers' filesystem (writable layers) through `fs`.
    pub fn with_container_filesystems(mut self, fs: ContainerFilesystems) -> Self {
        self.container_fs = Some(fs);
        self
    }

    /// A handle on the pulls in flight, for shutdown.
    pub fn pulls(&self) -> PullTasks {
        self.pulls.clone()
    }

    /// Runs a blocking store call off the async workers.
    async fn blocking<T, F>(&self, call: &str, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&ImageStore) -> bungeo_imagestore::Result<T> + Send + 'static,
    {
        let store = Arc::clone(&self.store);
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| f(&store)))
            .await
            .map_err(|e| join_status(call, &e))?
            .map_err(|e| store_status(&e))
    }

    async fn pull(
        &self,
        image: String,
        auth: Option<cri::AuthConfig>,
    ) -> Result<cri::PullImageResponse, Status> {
        let image = required_image("PullImage", &image)?;
        let credentials = auth.and_then(credentials_from_auth);
        let store = Arc::clone(&self.store);
        // A task of its own, so a client that gives up (kubelet retries, crictl is interrupted)
        // does not tear a shared download down halfway, and so a panic becomes an error status.
        let pull = async move {
            store
                .pull(&image, credentials)
                .await
                .map_err(|e| store_status(&e))
        };
        let started = std::time::Instant::now();
        let pulled = self
            .pulls
            .spawn(pull.in_current_span())
            .await
            .map_err(|e| join_status("PullImage", &e))
            .and_then(|r| r);
        crate::metrics::global().observe_pull(
            pulled.is_ok(),
            pulled.as_ref().map_or(0, |r| r.size),
            started.elapsed().as_secs_f64(),
        );
        let record = pulled?;
        tracing::info!(image_id = %record.id, "pulled");
        // containerd answers the image id, and kubelet records it as the container's image ref.
        Ok(cri::PullImageResponse {
            image_ref: record.id,
        })
    }

    async fn status(
        &self,
        image: String,
        verbose: bool,
    ) -> Result<cri::ImageStatusResponse, Status> {
        let image = required_image("ImageStatus", &image)?;
        let Some(record) = self.blocking("ImageStatus", move |s| s.get(&image)).await? else {
            // CRI: an absent image is an empty answer, not an error.
            return Ok(cri::ImageStatusResponse::default());
        };
        let mut info = HashMap::new();
        if verbose {
            info.insert("info".to_owned(), verbose_info(&record).to_string());
        }
        Ok(cri::ImageStatusResponse {
            image: Some(cri_image(&record)),
            info,
        })
    }

    async fn list(
        &self,
        filter: Option<cri::ImageFilter>,
    ) -> Result<cri::ListImagesResponse, Status> {
        let wanted = filter
            .and_then(|f| f.image)
            .map(|spec| spec.image)
            .filter(|image| !image.is_empty());
        let records = match wanted {
            Some(image) => self
                .blocking("ListImages", move |s| s.get(&image))
                .await?
                .into_iter()
                .collect(),
            None => self.blocking("ListImages", |s| s.list()).await?,
        };
        Ok(cri::ListImagesResponse {
            images: records.iter().map(cri_image).collect(),
        })
    }

    async fn remove(&self, image: String) -> Result<cri::RemoveImageResponse, Status> {
        let image = required_image("RemoveImage", &image)?;
        let found = self
            .blocking("RemoveImage", move |s| match s.remove(&image) {
                // CRI: removing what is already gone succeeds.
                Err(bungeo_imagestore::Error::ImageNotFound(_)) => Ok(false),
                other => other,
            })
            .await?;
        if found {
            tracing::info!("removed");
        } else {
            tracing::debug!("nothing to remove");
        }
        Ok(cri::RemoveImageResponse {})
    }

    async fn fs_info(&self) -> Result<cri::ImageFsInfoResponse, Status> {
        let usage = self.blocking("ImageFsInfo", |s| s.usage()).await?;
        let container_filesystems = match self.container_fs.clone() {
            Some(measure) => vec![
                tokio::task::spawn_blocking(move || measure())
                    .await
                    .map_err(|e| join_status("ImageFsInfo", &e))?,
            ],
            None => Vec::new(),
        };
        Ok(cri::ImageFsInfoResponse {
            image_filesystems: vec![filesystem_usage(&usage, now_unix_nanos())],
            container_filesystems,
        })
    }
}

fn required_image(call: &str, image: &str) -> Result<String, Status> {
    if image.trim().is_empty() {
        return Err(Status::invalid_argument(format!("{call}: no image given")));
    }
    Ok(image.to_owned())
}

fn image_of(spec: &Option<cri::ImageSpec>) -> &str {
    spec.as_ref().map_or("", |s| s.image.as_str())
}

/// CRI `AuthConfig` → store credentials; `None` when it carries nothing, so host credentials
/// from the config file still apply. `server_address` only tells which registry the
/// credentials were meant for; the pull's own reference decides where they are sent.
pub fn credentials_from_auth(auth: cri::AuthConfig) -> Option<Credentials> {
    let credentials = Credentials {
        username: auth.username,
        password: auth.password,
        auth: auth.auth,
        identity_token: auth.identity_token,
        registry_token: auth.registry_token,
    };
    (credentials != Credentials::default()).then_some(credentials)
}

/// The CRI `uid` / `username` pair for an image `USER` (`name`, `uid`, `uid:gid`, `name:group`),
/// decided the way containerd does: the user part is a uid when it parses as an integer.
pub fn user_fields(user: Option<&str>) -> (Option<cri::Int64Value>, String) {
    let Some(user) = user else {
        return (None, String::new());
    };
    let user_part = user.split(':').next().unwrap_or_default();
    match user_part.parse::<i64>() {
        Ok(uid) => (Some(cri::Int64Value { value: uid }), String::new()),
        Err(_) => (None, user_part.to_owned()),
    }
}

/// A store record as a CRI `Image`.
pub fn cri_image(record: &ImageRecord) -> cri::Image {
    let (uid, username) = user_fields(record.user());
    cri::Image {
        id: record.id.clone(),
        repo_tags: record.repo_tags.clone(),
        repo_digests: record.repo_digests.clone(),
        size: record.size,
        uid,
        username,
        spec: Some(cri::ImageSpec {
            image: record.id.clone(),
            ..Default::default()
        }),
        pinned: false,
    }
}

/// `ImageStatus` verbose info, shaped like containerd's (`chainID`, `imageSpec`) so tools that
/// read one read the other, plus the manifest digests.
pub fn verbose_info(record: &ImageRecord) -> serde_json::Value {
    let mut info = serde_json::json!({
        "chainID": record.chain_ids.last().cloned().unwrap_or_default(),
        "imageSpec": record.config,
        "manifestDigest": record.manifest_digest,
    });
    if let Some(index) = &record.index_digest {
        info["indexDigest"] = serde_json::Value::String(index.clone());
    }
    info
}

/// One CRI `FilesystemUsage` for the store's filesystem at `timestamp` (ns since the epoch).
pub fn filesystem_usage(usage: &FsUsage, timestamp: i64) -> cri::FilesystemUsage {
    cri::FilesystemUsage {
        timestamp,
        fs_id: Some(cri::FilesystemIdentifier {
            mountpoint: usage.mountpoint.to_string_lossy().into_owned(),
        }),
        used_bytes: Some(cri::UInt64Value {
            value: usage.used_bytes,
        }),
        inodes_used: Some(cri::UInt64Value {
            value: usage.inodes_used,
        }),
    }
}

fn now_unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[tonic::async_trait]
impl ImageService for CriImageService {
    async fn list_images(
        &self,
        request: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        let request = request.into_inner();
        let filter_image = request
            .filter
            .as_ref()
            .map(|f| image_of(&f.image).to_owned())
            .filter(|i| !i.is_empty());
        traced(
            "ListImages",
            filter_image.as_deref(),
            self.list(request.filter),
        )
        .await
    }

    async fn image_status(
        &self,
        request: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let request = request.into_inner();
        let image = image_of(&request.image).to_owned();
        traced(
            "ImageStatus",
            Some(&image),
            self.status(image.clone(), request.verbose),
        )
        .await
    }

    async fn pull_image(
        &self,
        request: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let request = request.into_inner();
        let image = image_of(&request.image).to_owned();
        traced(
            "PullImage",
            Some(&image),
            self.pull(image.clone(), request.auth),
        )
        .await
    }

    async fn remove_image(
        &self,
        request: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let image = image_of(&request.get_ref().image).to_owned();
        traced("RemoveImage", Some(&image), self.remove(image.clone())).await
    }

    async fn image_fs_info(
        &self,
        _request: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        traced("ImageFsInfo", None, self.fs_info()).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;

    fn record(user: Option<&str>) -> ImageRecord {
        let mut config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:11", "sha256:22"]},
        });
        if let Some(user) = user {
            config["config"]["User"] = serde_json::Value::String(user.to_owned());
        }
        ImageRecord {
            id: "sha256:c0ff".to_owned(),
            repo_tags: vec!["127.0.0.1:5000/busybox:1".to_owned()],
            repo_digests: vec!["127.0.0.1:5000/busybox@sha256:abcd".to_owned()],
            manifest_digest: "sha256:abcd".to_owned(),
            index_digest: None,
            size: 1234,
            chain_ids: vec!["sha256:11".to_owned(), "sha256:c4a1".to_owned()],
            layer_digests: vec!["sha256:l1".to_owned(), "sha256:l2".to_owned()],
            blobs: Vec::new(),
            config,
            created_unix: 0,
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn numeric_user_is_a_uid_and_a_name_is_a_username() {
        let cases: [(Option<&str>, Option<i64>, &str); 7] = [
            (None, None, ""),
            (Some("1000"), Some(1000), ""),
            (Some("0:0"), Some(0), ""),
            (Some("65534:65534"), Some(65534), ""),
            (Some("nobody"), None, "nobody"),
            (Some("www-data:www-data"), None, "www-data"),
            (Some("app:1000"), None, "app"),
        ];
        for (user, uid, name) in cases {
            let (got_uid, got_name) = user_fields(user);
            assert_eq!(got_uid.map(|u| u.value), uid, "{user:?}");
            assert_eq!(got_name, name, "{user:?}");
        }
    }

    #[test]
    fn record_becomes_a_cri_image() {
        let image = cri_image(&record(Some("1000:1000")));
        assert_eq!(image.id, "sha256:c0ff");
        assert_eq!(image.repo_tags, vec!["127.0.0.1:5000/busybox:1"]);
        assert_eq!(
            image.repo_digests,
            vec!["127.0.0.1:5000/busybox@sha256:abcd"]
        );
        assert_eq!(image.size, 1234);
        assert_eq!(image.uid, Some(cri::Int64Value { value: 1000 }));
        assert_eq!(image.username, "");
        assert_eq!(image.spec.unwrap().image, "sha256:c0ff");
        assert!(!image.pinned);

        let named = cri_image(&record(Some("nobody")));
        assert_eq!(named.uid, None);
        assert_eq!(named.username, "nobody");
        let unset = cri_image(&record(None));
        assert_eq!((unset.uid, unset.username.as_str()), (None, ""));
    }

    #[test]
    fn verbose_info_is_shaped_like_containerds() {
        let mut rec = record(None);
        let info = verbose_info(&rec);
        assert_eq!(info["chainID"], "sha256:c4a1");
        assert_eq!(info["imageSpec"], rec.config);
        assert_eq!(info["manifestDigest"], "sha256:abcd");
        assert!(info.get("indexDigest").is_none());
        rec.index_digest = Some("sha256:1dx".to_owned());
        rec.chain_ids.clear();
        let info = verbose_info(&rec);
        assert_eq!(info["indexDigest"], "sha256:1dx");
        assert_eq!(info["chainID"], "");
    }

    #[test]
    fn empty_auth_config_means_no_credentials() {
        assert_eq!(credentials_from_auth(cri::AuthConfig::default()), None);
        let only_address = cri::AuthConfig {
            server_address: "127.0.0.1:5001".to_owned(),
            ..Default::default()
        };
        assert_eq!(credentials_from_auth(only_address), None);
    }

    #[test]
    fn every_auth_config_field_reaches_the_credentials() {
        let creds = credentials_from_auth(cri::AuthConfig {
            username: "alice".to_owned(),
            password: "pw".to_owned(),
            auth: "YWxpY2U6cHc=".to_owned(),
            server_address: "127.0.0.1:5001".to_owned(),
            identity_token: "refresh".to_owned(),
            registry_token: "bearer".to_owned(),
        })
        .unwrap();
        assert_eq!(creds.username, "alice");
        assert_eq!(creds.password, "pw");
        assert_eq!(creds.auth, "YWxpY2U6cHc=");
        assert_eq!(creds.identity_token, "refresh");
        assert_eq!(creds.registry_token, "bearer");
        let token_only = credentials_from_auth(cri::AuthConfig {
            registry_token: "bearer".to_owned(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(token_only.registry_token, "bearer");
    }

    #[test]
    fn filesystem_usage_carries_mountpoint_bytes_and_inodes() {
        let usage = FsUsage {
            mountpoint: PathBuf::from("/var/lib/bungeo"),
            used_bytes: 4096,
            inodes_used: 12,
        };
        let fs = filesystem_usage(&usage, 1_700_000_000_000_000_000);
        assert_eq!(fs.timestamp, 1_700_000_000_000_000_000);
        assert_eq!(fs.fs_id.unwrap().mountpoint, "/var/lib/bungeo");
        assert_eq!(fs.used_bytes.unwrap().value, 4096);
        assert_eq!(fs.inodes_used.unwrap().value, 12);
    }

    #[test]
    fn empty_image_names_are_invalid_arguments() {
        let err = required_image("PullImage", " ").unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("PullImage"));
    }

    #[test]
    fn timestamps_are_nanoseconds() {
        // Seconds or milliseconds would land before 2001 when read as nanoseconds.
        assert!(now_unix_nanos() > 1_000_000_000_000_000_000);
    }
}
