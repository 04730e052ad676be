//! `bungeo-shim`: the supervisor of one container, and its client side for the daemon.
//!
//! The daemon starts one shim per container ([`launch::launch`], or the binary's flags, see
//! [`config::Config`]). The shim detaches from the daemon (new session, re-parented away), is a
//! child subreaper so the container's processes are its children, keeps the container's stdio,
//! writes the CRI log ([`cri_log`]) and fans the init's output out to attached clients
//! ([`attach`]), records the init's exit in `exit.json` before reporting it
//! ([`exit_record`], with OOM kills from the memory cgroup, [`oom`]), and serves the containerd
//! shim Task API over ttrpc on a 0600 unix socket ([`service`]). Containers are created and
//! changed through the OCI runtime's command line ([`runtime_cli`] says why).
//!
//! Threads: the main thread runs the supervisor loop (reaping, log and stdin copying, exit
//! reporting, [`supervisor`]); the synchronous ttrpc server serves requests on a few threads
//! of its own. No async runtime: the shim is a long-lived process per container, so its memory
//! counts many times over.

pub mod attach;
pub mod config;
pub mod cri_log;
pub mod detach;
pub mod error;
pub mod exit_record;
pub mod infra;
pub mod launch;
pub mod oom;
pub mod rfc3339;
pub mod runtime_cli;
pub mod service;
pub mod state;
pub mod stdio;
pub mod supervisor;
#[cfg(test)]
#[path = "../../testsupport/skip.rs"]
mod test_skip;
pub mod tty;

pub use config::Config;
pub use error::{Error, Result};
pub use exit_record::ExitRecord;
pub use service::REOPEN_LOG_ANNOTATION;

/// The Task API types and client (containerd-shim-protos), for the daemon.
pub use containerd_shim_protos as protos;

/// Writes one line to the shim's log (its stderr, `<state dir>/shim.log`).
pub(crate) fn log(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    // A full disk must not bring the shim down: the line is dropped instead.
    let _ = writeln!(
        std::io::stderr(),
        "{} {args}",
        rfc3339::format(std::time::SystemTime::now())
    );
}

#[cfg(test)]
mod tests {
    /// Held by unit tests that reap children of the test process (`waitpid(-1)`), so they
    /// never take each other's.
    pub static CHILDREN: std::sync::Mutex<()> = std::sync::Mutex::new(());
}
