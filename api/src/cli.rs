//! Command-line interface: `bungeo [flags]` runs the daemon, `bungeo config default` prints
//! the default configuration.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::errors::Result;

/// bungeo: a Kubernetes CRI container runtime.
#[derive(Debug, Parser)]
#[command(name = "bungeo", version, about)]
pub struct Cli {
    /// Config file [default: /etc/bungeo/config.toml when it exists]. Must exist when given.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Directory for persistent data (overrides `root`).
    #[arg(long, value_name = "PATH")]
    pub root: Option<PathBuf>,
    /// Directory for state lost at reboot (overrides `state`).
    #[arg(long, value_name = "PATH")]
    pub state: Option<PathBuf>,
    /// CRI unix socket path (overrides `listen`).
    #[arg(long, value_name = "PATH")]
    pub listen: Option<PathBuf>,
    /// Log filter: error, warn, info, debug, trace (overrides `log_level`; RUST_LOG wins).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Without a command, bungeo runs the daemon.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Commands other than running the daemon.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Configuration helpers.
    Config {
        /// What to do.
        #[command(subcommand)]
        action: ConfigCommand,
    },
}

/// `bungeo config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the full configuration file with every key at its default, commented.
    Default,
}

impl Cli {
    /// The effective configuration: defaults, then the config file, then these flags.
    pub fn load_config(&self) -> Result<Config> {
        let mut config = Config::load(self.config.as_deref())?;
        self.apply(&mut config);
        config.validate()?;
        Ok(config)
    }

    /// Applies the flags given over `config`.
    pub fn apply(&self, config: &mut Config) {
        if let Some(root) = &self.root {
            config.root = root.clone();
        }
        if let Some(state) = &self.state {
            config.state = state.clone();
        }
        if let Some(listen) = &self.listen {
            config.listen = listen.clone();
        }
        if let Some(level) = &self.log_level {
            config.log_level = level.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(
            &file,
            "root = \"/srv/from-file\"\nstate = \"/run/from-file\"\nlog_level = \"warn\"\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "bungeo",
            "--config",
            file.to_str().unwrap(),
            "--state",
            "/run/from-flag",
            "--listen",
            "/run/from-flag/cri.sock",
        ])
        .unwrap();
        let config = cli.load_config().unwrap();
        assert_eq!(config.root, PathBuf::from("/srv/from-file"));
        assert_eq!(config.state, PathBuf::from("/run/from-flag"));
        assert_eq!(config.listen, PathBuf::from("/run/from-flag/cri.sock"));
        assert_eq!(config.log_level, "warn");
        assert_eq!(config.image, Config::default().image);
        assert!(cli.command.is_none());
    }

    #[test]
    fn log_level_flag_overrides() {
        let cli = Cli::try_parse_from(["bungeo", "--log-level", "debug"]).unwrap();
        let mut config = Config::default();
        cli.apply(&mut config);
        assert_eq!(config.log_level, "debug");
    }

    #[test]
    fn config_default_is_a_command() {
        let cli = Cli::try_parse_from(["bungeo", "config", "default"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Config {
                action: ConfigCommand::Default
            })
        ));
    }

    #[test]
    fn flag_values_are_validated() {
        let cli = Cli::try_parse_from(["bungeo", "--root", "relative/dir"]).unwrap();
        let mut config = Config::default();
        cli.apply(&mut config);
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("root"), "{err}");
    }
}
