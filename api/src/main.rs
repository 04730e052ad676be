//! `bungeo`: parses flags and hands over to the library.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bungeo_api::cli::{Cli, Command, ConfigCommand};
use bungeo_api::{config, daemon, logging};
use clap::Parser;

/// Blocking store calls still running when the daemon has stopped get this long.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bungeo: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Config {
            action: ConfigCommand::Default,
        }) => {
            print!("{}", config::DEFAULT_TEMPLATE);
            Ok(())
        }
        None => {
            let config = cli.load_config().context("load configuration")?;
            logging::init(&config.log_level).context("set up logging")?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("start the async runtime")?;
            let result = runtime.block_on(daemon::run(config));
            runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
            result.context("daemon")
        }
    }
}
