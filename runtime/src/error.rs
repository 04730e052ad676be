//! The one error type of the runtime crate. Every message names the object and what failed.

use std::path::PathBuf;

/// Everything that can go wrong creating and running containers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A syscall failed; `op` says which and on what (`mount proc on /x/proc`).
    #[error("{op}: {source}")]
    Sys {
        op: String,
        #[source]
        source: nix::Error,
    },

    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The OCI spec cannot be used as given.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),

    /// A CRI request field is invalid (maps to gRPC InvalidArgument).
    #[error("{0}")]
    InvalidArgument(String),

    /// No container with this id.
    #[error("container {0} does not exist")]
    NotFound(String),

    /// A container with this id exists already.
    #[error("container {0} already exists")]
    AlreadyExists(String),

    /// The operation does not fit the container's state.
    #[error("container {id} is {status}: {message}")]
    InvalidState {
        id: String,
        status: String,
        message: String,
    },

    /// cgroup setup, update, stats or removal failed.
    #[error("cgroups: {0}")]
    Cgroups(String),

    /// Building or loading a seccomp filter failed.
    #[error("seccomp: {0}")]
    Seccomp(String),

    /// Setting capabilities failed.
    #[error("capabilities: {0}")]
    Capabilities(String),

    /// The container's init or exec child reported this error before it could exec.
    #[error("{0}")]
    Child(String),

    /// Something this node or build does not support (e.g. AppArmor when the kernel lacks it).
    #[error("{0}")]
    Unsupported(String),

    /// No usable CNI network config: none in the directory, or one that does not parse; the
    /// message names the file or directory.
    #[error("{0}")]
    CniConfig(String),

    /// A CNI plugin failed, could not be run, or answered nonsense (boxed: it is large).
    #[error("{0}")]
    CniPlugin(Box<CniPluginFailure>),

    /// A CNI plugin binary is in none of the plugin directories.
    #[error("CNI plugin {plugin:?} not found in {dirs}")]
    CniPluginNotFound { plugin: String, dirs: String },
}

/// How a CNI plugin call failed. `code` is the CNI error code the plugin reported, if it
/// reported one; `message` its `msg` and `details`, or its stderr.
#[derive(Debug, thiserror::Error)]
#[error("plugin type={plugin:?} name={network:?} failed ({command}): {message}")]
pub struct CniPluginFailure {
    pub network: String,
    pub plugin: String,
    pub command: &'static str,
    pub code: Option<u64>,
    pub message: String,
}

/// Result of runtime operations.
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

    /// Wraps a failed syscall with what it was doing.
    pub fn sys(op: impl Into<String>, source: nix::Error) -> Self {
        Error::Sys {
            op: op.into(),
            source,
        }
    }
}
