//! The crate's error type, and the one place where errors become gRPC statuses.

use std::path::PathBuf;

use bungeo_imagestore::Error as StoreError;
use tonic::{Code, Status};

/// Everything that can stop the daemon from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config file that cannot be parsed.
    #[error("config file {path}: {message}")]
    ConfigFile { path: PathBuf, message: String },

    /// A configuration value the daemon cannot work with.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// Another daemon holds the state directory's lock.
    #[error("another bungeo is already running with state dir {} (pid {pid})", state.display())]
    AlreadyRunning { state: PathBuf, pid: String },

    /// Something is listening on the socket path already.
    #[error("socket {} is in use by another server", path.display())]
    SocketInUse { path: PathBuf },

    /// The socket path exists and is not a socket, so it is not ours to remove.
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },

    /// A filesystem or socket operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The image store failed to open.
    #[error("image store: {0}")]
    ImageStore(#[from] StoreError),

    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Server(#[from] tonic::transport::Error),

    /// Logging could not be set up.
    #[error("logging: {0}")]
    Logging(String),

    /// A background task panicked or was cancelled.
    #[error("{task}: {message}")]
    Task { task: &'static str, message: String },

    /// A CRI request that cannot be served as given; the message names the field or object.
    #[error("{0}")]
    InvalidArgument(String),

    /// The object a CRI call names does not exist.
    #[error("{0}")]
    NotFound(String),

    /// An object with the same identity exists already.
    #[error("{0}")]
    AlreadyExists(String),

    /// The records database failed.
    #[error("records database {}: {message}", path.display())]
    Records { path: PathBuf, message: String },

    /// A runtime mechanism (namespaces, mounts, cgroups) failed; `what` names the object.
    #[error("{what}: {source}")]
    Runtime {
        what: String,
        #[source]
        source: bungeo_runtime::Error,
    },

    /// The call does not fit the object's state (e.g. starting a container that has exited).
    #[error("{0}")]
    FailedPrecondition(String),

    /// A deadline the request set passed (an ExecSync timeout).
    #[error("{0}")]
    DeadlineExceeded(String),

    /// What cannot be done, found where containerd finds it (in its task service, or by its
    /// OCI runtime) and so reported with containerd's code, `Unknown`: ContainerStats of a
    /// container that does not run, a hostname for a pod on the node's network.
    #[error("{0}")]
    Refused(String),

    /// A container's shim failed a call, or could not be reached; `what` names the container
    /// and the call.
    #[error("{what}: {message}")]
    Shim { what: String, message: String },
}

/// Result of daemon operations.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an `io::Error` with the operation and path it came from.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

impl Error {
    /// Wraps a runtime error with what was being done to which object.
    pub fn runtime(what: impl Into<String>, source: bungeo_runtime::Error) -> Self {
        Error::Runtime {
            what: what.into(),
            source,
        }
    }
}

/// Maps a daemon error to the gRPC status CRI clients get. The message passes through.
pub fn status(err: &Error) -> Status {
    let code = match err {
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::NotFound(_) => Code::NotFound,
        Error::AlreadyExists(_) => Code::AlreadyExists,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
        Error::Refused(_) => Code::Unknown,
        Error::Runtime {
            source: bungeo_runtime::Error::InvalidArgument(_),
            ..
        } => Code::InvalidArgument,
        // Something this node does not offer (AppArmor off, a profile not loaded): the node
        // must change before the call can succeed.
        Error::Runtime {
            source: bungeo_runtime::Error::Unsupported(_),
            ..
        } => Code::FailedPrecondition,
        Error::ImageStore(e) => return store_status(e),
        _ => Code::Internal,
    };
    bounded(code, err.to_string())
}

/// Longest status message sent: messages quote the request's names, and a 1 MiB name
/// echoed into `grpc-message` overflows the client's HTTP/2 header limit, which kills the
/// whole connection (every call kubelet has in flight on it) instead of failing one call.
pub const MAX_STATUS_MESSAGE: usize = 4096;

/// A status whose message is cut to [`MAX_STATUS_MESSAGE`] bytes.
pub fn bounded(code: Code, mut message: String) -> Status {
    if message.len() > MAX_STATUS_MESSAGE {
        let mut end = MAX_STATUS_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let cut = message.len() - end;
        message.truncate(end);
        message.push_str(&format!("… ({cut} more bytes)"));
    }
    Status::new(code, message)
}

/// Prefix kubelet recognises in an `Unknown` pull error to report `RegistryUnavailable`
/// instead of a generic `ErrImagePull` (k8s.io/cri-api/pkg/errors, kubelet's `evalCRIPullErr`).
pub const REGISTRY_UNAVAILABLE: &str = "RegistryUnavailable";

/// Maps an image store error to the gRPC status CRI clients get. The message passes through.
pub fn store_status(err: &StoreError) -> Status {
    let message = err.to_string();
    let code = match err {
        StoreError::InvalidReference { .. } | StoreError::InvalidDigest(_) => Code::InvalidArgument,
        StoreError::ImageNotFound(_) | StoreError::RemoteNotFound { .. } => Code::NotFound,
        StoreError::Unauthorized { .. } => Code::PermissionDenied,
        // kubelet strips the code of `Unknown` pull errors and matches this prefix on the
        // message alone; any other code would hide it behind "rpc error: code = ...".
        StoreError::Registry { .. } => {
            return bounded(Code::Unknown, format!("{REGISTRY_UNAVAILABLE}: {message}"));
        }
        // The image exists but cannot be used as it is: retrying will not help until the
        // registry content (or the node) changes.
        StoreError::UnsupportedManifest { .. }
        | StoreError::NoMatchingPlatform { .. }
        | StoreError::DigestMismatch { .. }
        | StoreError::SizeMismatch { .. }
        | StoreError::Layer { .. } => Code::FailedPrecondition,
        StoreError::Config(_) => Code::FailedPrecondition,
        // A full disk is the node's resource running out, not a bug: kubelet's image GC
        // frees space and the pull is retried.
        StoreError::Io { source, .. } if out_of_space(source) => Code::ResourceExhausted,
        StoreError::Io { .. } | StoreError::Database(_) => Code::Internal,
    };
    bounded(code, message)
}

/// Whether an I/O error means the filesystem (or the quota on it) is full.
fn out_of_space(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Maps a failed blocking or spawned task (a panic, or cancellation at shutdown).
pub fn join_status(call: &str, err: &tokio::task::JoinError) -> Status {
    if err.is_cancelled() {
        Status::cancelled(format!("{call}: cancelled because bungeo is shutting down"))
    } else {
        Status::internal(format!("{call}: internal error: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(err: StoreError) -> Status {
        store_status(&err)
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let s = status(StoreError::InvalidReference {
            reference: "é".repeat(1 << 20),
            reason: "too long".to_owned(),
        });
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(
            s.message().len() < MAX_STATUS_MESSAGE + 64,
            "{}",
            s.message().len()
        );
        assert!(
            s.message().ends_with("more bytes)"),
            "{}",
            &s.message()[4000..]
        );
        let short = bounded(Code::NotFound, "pod x not found".into());
        assert_eq!(short.message(), "pod x not found");
    }

    #[test]
    fn reference_errors_are_invalid_argument_naming_the_reference() {
        let s = status(StoreError::InvalidReference {
            reference: "Busy Box".to_owned(),
            reason: "invalid character ' '".to_owned(),
        });
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("Busy Box"), "{}", s.message());
        assert_eq!(
            status(StoreError::InvalidDigest("md5:00".to_owned())).code(),
            Code::InvalidArgument
        );
    }

    #[test]
    fn missing_images_are_not_found() {
        assert_eq!(
            status(StoreError::ImageNotFound("busybox".to_owned())).code(),
            Code::NotFound
        );
        let s = status(StoreError::RemoteNotFound {
            reference: "docker.io/library/nope:latest".to_owned(),
            message: "manifest unknown".to_owned(),
        });
        assert_eq!(s.code(), Code::NotFound);
        assert!(s.message().contains("docker.io/library/nope:latest"));
    }

    #[test]
    fn refused_credentials_are_permission_denied() {
        let s = status(StoreError::Unauthorized {
            reference: "127.0.0.1:5001/private:1".to_owned(),
            message: "401".to_owned(),
        });
        assert_eq!(s.code(), Code::PermissionDenied);
        assert!(s.message().contains("127.0.0.1:5001/private:1"));
    }

    #[test]
    fn registry_failures_carry_kubelets_registry_unavailable_prefix() {
        let s = status(StoreError::Registry {
            reference: "127.0.0.1:1/x:1".to_owned(),
            message: "connection refused".to_owned(),
        });
        assert_eq!(s.code(), Code::Unknown);
        assert!(
            s.message().starts_with("RegistryUnavailable: "),
            "{}",
            s.message()
        );
        assert!(s.message().contains("connection refused"));
    }

    #[test]
    fn unusable_content_is_failed_precondition() {
        for err in [
            StoreError::UnsupportedManifest {
                reference: "r".to_owned(),
                message: "schema 1 manifests are not supported".to_owned(),
            },
            StoreError::NoMatchingPlatform {
                reference: "r".to_owned(),
                platform: "linux/amd64".to_owned(),
            },
            StoreError::DigestMismatch {
                expected: "sha256:aa".to_owned(),
                actual: "sha256:bb".to_owned(),
            },
            StoreError::SizeMismatch {
                digest: "sha256:aa".to_owned(),
                expected: 1,
                actual: 2,
            },
            StoreError::Layer {
                digest: "sha256:aa".to_owned(),
                message: "entry escapes the layer".to_owned(),
            },
            StoreError::Config("mirror \"::\" is not a URL".to_owned()),
        ] {
            let message = err.to_string();
            let s = status(err);
            assert_eq!(s.code(), Code::FailedPrecondition, "{message}");
            assert_eq!(s.message(), message);
        }
    }

    #[test]
    fn local_failures_are_internal() {
        let s = status(StoreError::io(
            "create",
            "/var/lib/bungeo/content",
            std::io::Error::from_raw_os_error(libc::EIO),
        ));
        assert_eq!(s.code(), Code::Internal);
        assert!(s.message().contains("/var/lib/bungeo/content"));
        assert_eq!(
            status(StoreError::Database("corrupt".to_owned())).code(),
            Code::Internal
        );
    }

    #[test]
    fn a_full_disk_is_resource_exhausted() {
        for errno in [libc::ENOSPC, libc::EDQUOT] {
            let s = status(StoreError::io(
                "write content ingest",
                "/var/lib/bungeo/content/ingest/x",
                std::io::Error::from_raw_os_error(errno),
            ));
            assert_eq!(s.code(), Code::ResourceExhausted);
            assert!(s.message().contains("/var/lib/bungeo/content/ingest/x"));
        }
    }

    #[test]
    fn daemon_errors_map_to_their_cri_codes() {
        let cases = [
            (Error::InvalidArgument("bad".into()), Code::InvalidArgument),
            (
                Error::NotFound("pod sandbox x not found".into()),
                Code::NotFound,
            ),
            (Error::AlreadyExists("taken".into()), Code::AlreadyExists),
            (
                Error::runtime(
                    "pod sandbox x",
                    bungeo_runtime::Error::InvalidArgument("sysctl".into()),
                ),
                Code::InvalidArgument,
            ),
            (
                Error::runtime(
                    "pod sandbox x: pin namespaces",
                    bungeo_runtime::Error::Child("boom".into()),
                ),
                Code::Internal,
            ),
            (
                Error::Records {
                    path: "/r/records.redb".into(),
                    message: "corrupt".into(),
                },
                Code::Internal,
            ),
        ];
        for (err, code) in cases {
            let message = err.to_string();
            let s = super::status(&err);
            assert_eq!(s.code(), code, "{message}");
            assert_eq!(s.message(), message);
        }
        // Store errors answer as the image service does.
        let s = super::status(&Error::ImageStore(StoreError::ImageNotFound(
            "busybox".into(),
        )));
        assert_eq!(s.code(), Code::NotFound);
        let s = super::status(&Error::runtime(
            "pod sandbox abc: pin namespaces",
            bungeo_runtime::Error::Child("boom".into()),
        ));
        assert_eq!(s.message(), "pod sandbox abc: pin namespaces: boom");
    }

    #[test]
    fn already_running_message_names_the_state_dir_and_pid() {
        let err = Error::AlreadyRunning {
            state: PathBuf::from("/run/bungeo"),
            pid: "4242".to_owned(),
        };
        assert_eq!(
            err.to_string(),
            "another bungeo is already running with state dir /run/bungeo (pid 4242)"
        );
    }
}
