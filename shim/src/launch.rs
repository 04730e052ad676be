//! The daemon's side: starting a shim with the `bungeo-shim` binary and connecting to it.

use std::path::Path;
use std::process::{Command, Stdio};

use containerd_shim_protos::{TaskClient, ttrpc};

use crate::config::Config;
use crate::{Error, Result};

/// Runs `binary` (the `bungeo-shim` executable) for `cfg` and returns the address it serves
/// on. The launcher process exits once the shim serves, so the shim is no child of the caller.
pub fn launch(binary: &Path, cfg: &Config) -> Result<String> {
    cfg.validate()?;
    let out = Command::new(binary)
        .args(cfg.to_args())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io("run", binary, e))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(Error::Startup(format!(
            "{} for container {} failed ({}): {}",
            binary.display(),
            cfg.id,
            out.status,
            stderr.trim()
        )));
    }
    let address = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !address.starts_with("unix://") {
        return Err(Error::Startup(format!(
            "{} for container {} printed {address:?}, not a unix:// address",
            binary.display(),
            cfg.id
        )));
    }
    Ok(address)
}

/// A Task API client on `address` (`unix:///run/bungeo/shims/<id>.sock`).
pub fn connect(address: &str) -> Result<TaskClient> {
    let client = ttrpc::Client::connect(address).map_err(|source| Error::Ttrpc {
        op: format!("connect to shim at {address}"),
        source,
    })?;
    Ok(TaskClient::new(client))
}
