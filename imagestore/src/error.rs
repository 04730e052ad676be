//! The one error type of the image store.

use std::path::PathBuf;

/// Everything that can go wrong in the image store. Each variant names the object concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A reference that cannot be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    /// No local image matches.
    #[error("image {0:?} not found")]
    ImageNotFound(String),

    /// The registry answered that the image or one of its blobs does not exist.
    #[error("{reference}: not found in registry: {message}")]
    RemoteNotFound { reference: String, message: String },

    /// The registry refused our credentials.
    #[error("{reference}: unauthorized: {message}")]
    Unauthorized { reference: String, message: String },

    /// Talking to the registry failed.
    #[error("{reference}: registry error: {message}")]
    Registry { reference: String, message: String },

    /// A manifest, index or config that we do not support or cannot parse.
    #[error("{reference}: {message}")]
    UnsupportedManifest { reference: String, message: String },

    /// No manifest in an index matches this node's platform.
    #[error("{reference}: no manifest for platform {platform} in the image index")]
    NoMatchingPlatform { reference: String, platform: String },

    /// Content did not hash to the digest that named it.
    #[error("digest mismatch for {expected}: content hashes to {actual}")]
    DigestMismatch { expected: String, actual: String },

    /// Content had a different size than its descriptor said.
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },

    /// A digest string we cannot use (only sha256 is supported).
    #[error("invalid digest {0:?}")]
    InvalidDigest(String),

    /// A layer archive that is malformed or tries something unsafe.
    #[error("layer {digest}: {message}")]
    Layer { digest: String, message: String },

    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The metadata database failed.
    #[error("metadata database: {0}")]
    Database(String),

    /// A configuration value is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Result of image store operations.
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

macro_rules! db_error {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Database(e.to_string())
            }
        }
    )*};
}
db_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
