//! The bungeo daemon: the CRI gRPC server over the image store (and, later, the runtime).

pub mod call_trace;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod errors;
pub mod image_service;
pub mod listener;
pub mod logging;
pub mod runtime_service;
pub mod state_lock;

pub use config::Config;
pub use daemon::Daemon;
pub use errors::{Error, Result};
