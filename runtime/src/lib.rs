//! Container mechanisms for bungeo: OCI runtime spec generation from CRI requests, namespaces,
//! rootfs and mounts, cgroups and the security settings, and the container lifecycle (create,
//! start, exec, kill, delete) the shim and the `bungeo-runtime` command line drive.

pub mod apparmor;
pub mod capabilities;
pub mod cgroups;
pub mod cni;
pub mod container;
pub mod error;
pub mod features;
pub mod namespaces;
pub mod process_settings;
pub mod procfs;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
pub mod syscall;
#[cfg(test)]
#[path = "../../testsupport/skip.rs"]
mod test_skip;

pub use error::{Error, Result};
