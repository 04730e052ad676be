//! The bungeo daemon: the CRI gRPC server over the image store and the runtime crate, with
//! the pod sandbox state machine and its records.

pub mod call_trace;
pub mod cli;
pub mod config;
pub mod containers;
pub mod daemon;
pub mod errors;
pub mod events;
pub mod features;
pub mod filters;
pub mod ids;
pub mod image_service;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod network;
pub mod records;
mod reservation;
pub mod runtime_service;
pub mod sandbox;
pub mod sandbox_files;
pub mod shims;
pub mod state_lock;
pub mod stats;
pub mod streaming;
#[cfg(test)]
#[path = "../../testsupport/skip.rs"]
mod test_skip;
pub mod userns;

pub use config::Config;
pub use daemon::Daemon;
pub use errors::{Error, Result};
