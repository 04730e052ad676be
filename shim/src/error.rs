//! The one error type of the shim crate. Every message names the container or process and
//! what was wrong; [`Error::code`] maps it to the ttrpc status code in one place.

use std::path::PathBuf;

use containerd_shim_protos::ttrpc;

/// Everything that can go wrong starting the shim or serving its Task API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A syscall failed; `op` says which and on what.
    #[error("{op}: {source}")]
    Sys {
        op: String,
        #[source]
        source: nix::Error,
    },

    /// A request or a command-line flag is invalid.
    #[error("{0}")]
    InvalidArgument(String),

    /// No such container or exec process in this shim.
    #[error("{0}")]
    NotFound(String),

    /// The container or exec process exists already.
    #[error("{0}")]
    AlreadyExists(String),

    /// The request does not fit the process's state (e.g. deleting a running process).
    #[error("{0}")]
    FailedPrecondition(String),

    /// This shim does not implement the request (or this form of it).
    #[error("{0}")]
    Unimplemented(String),

    /// The OCI runtime command failed; `message` is its own error text.
    #[error("{command}: {message}")]
    Runtime { command: String, message: String },

    /// The shim could not start (reported to the process that launched it).
    #[error("{0}")]
    Startup(String),

    /// A ttrpc client call failed (launching or talking to a shim).
    #[error("{op}: {source}")]
    Ttrpc {
        op: String,
        #[source]
        source: ttrpc::Error,
    },
}

/// Result of shim operations.
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

    /// The ttrpc status code this error is reported with.
    pub fn code(&self) -> ttrpc::Code {
        match self {
            Error::InvalidArgument(_) => ttrpc::Code::INVALID_ARGUMENT,
            Error::NotFound(_) => ttrpc::Code::NOT_FOUND,
            Error::AlreadyExists(_) => ttrpc::Code::ALREADY_EXISTS,
            Error::FailedPrecondition(_) => ttrpc::Code::FAILED_PRECONDITION,
            Error::Unimplemented(_) => ttrpc::Code::UNIMPLEMENTED,
            Error::Io { .. }
            | Error::Sys { .. }
            | Error::Runtime { .. }
            | Error::Startup(_)
            | Error::Ttrpc { .. } => ttrpc::Code::INTERNAL,
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_their_status_codes() {
        let e: ttrpc::Error = Error::NotFound("exec process \"x\" not found".into()).into();
        match e {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), ttrpc::Code::NOT_FOUND);
                assert_eq!(s.message(), "exec process \"x\" not found");
            }
            other => panic!("{other:?}"),
        }
        let e = Error::Runtime {
            command: "bungeo-runtime start c1".into(),
            message: "container c1 is stopped".into(),
        };
        assert_eq!(e.code(), ttrpc::Code::INTERNAL);
        assert_eq!(
            e.to_string(),
            "bungeo-runtime start c1: container c1 is stopped"
        );
    }
}
