//! `tracing` to stderr, filtered by the configured level unless `RUST_LOG` says otherwise.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::errors::{Error, Result};

/// Level names a bare `log_level` directive may use.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// The filter the daemon logs with: `RUST_LOG` when set and non-empty, else `log_level`.
pub fn filter(log_level: &str, rust_log: Option<&str>) -> Result<EnvFilter> {
    let (source, directives) = match rust_log.filter(|v| !v.trim().is_empty()) {
        Some(env) => ("RUST_LOG", env),
        None => {
            check_levels(log_level)?;
            ("log_level", log_level)
        }
    };
    EnvFilter::try_new(directives)
        .map_err(|e| Error::Logging(format!("{source} {directives:?}: {e}")))
}

/// `EnvFilter` reads a bare word as a target to log at trace, so a misspelt level would
/// silently log almost nothing; in the config a bare word must be a level.
fn check_levels(log_level: &str) -> Result<()> {
    for directive in log_level.split(',').map(str::trim) {
        if !directive.contains('=') && !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            return Err(Error::Logging(format!(
                "log_level {log_level:?}: {directive:?} is not a level (one of {}), nor target=level",
                LEVELS.join(", ")
            )));
        }
    }
    Ok(())
}

/// Installs the global subscriber writing to stderr.
pub fn init(log_level: &str) -> Result<()> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = filter(log_level, rust_log.as_deref())?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only help a terminal; in journald or a log file they are noise.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .map_err(|e| Error::Logging(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_overrides_the_configured_level() {
        assert_eq!(filter("info", None).unwrap().to_string(), "info");
        assert_eq!(filter("info", Some("debug")).unwrap().to_string(), "debug");
        assert_eq!(filter("warn", Some("  ")).unwrap().to_string(), "warn");
        assert_eq!(
            filter("bungeo_api=debug,info", None).unwrap().to_string(),
            "bungeo_api=debug,info"
        );
    }

    #[test]
    fn a_bad_level_names_where_it_came_from() {
        let err = filter("loud", None).unwrap_err().to_string();
        assert!(err.contains("log_level") && err.contains("loud"), "{err}");
        let err = filter("info,bungeo_api=loud", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("log_level"), "{err}");
        assert!(filter("INFO", None).is_ok());
        let err = filter("info", Some("x=loud")).unwrap_err().to_string();
        assert!(err.contains("RUST_LOG"), "{err}");
    }
}
