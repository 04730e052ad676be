//! Image references, registry pulls, a sha256-verified content store, layer unpack into
//! overlay snapshots shared by chain ID, image records and garbage collection.

pub mod compression;
pub mod content;
pub mod error;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod metadata;
pub mod platform;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod snapshots;
pub mod store;
#[cfg(test)]
#[path = "../../testsupport/skip.rs"]
mod test_skip;
pub mod unpack;
pub mod whiteout;

pub use error::{Error, Result};
pub use reference::Reference;
pub use registry::{Credentials, HostConfig, RegistriesConfig};
pub use store::{FsUsage, ImageRecord, ImageStore, StoreConfig};
