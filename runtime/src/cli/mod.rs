//! The `sluice` command line: one subcommand per job, each in its own module.

mod check;
mod handle;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::telemetry::{self, LogFormat};

/// Sluice: sandboxed WebAssembly handlers for NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
pub struct Cli {
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a config and compile every plugin it names.
    Check {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run one plugin (or a configured pipeline) on one message read from
    /// stdin, without NATS, and print the verdict as JSON.
    Handle(handle::HandleArgs),
}

/// Run the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check { config } => {
            telemetry::init(cli.log_format, "warn");
            check::run(&config)
        }
        Command::Handle(args) => {
            telemetry::init(cli.log_format, "warn");
            handle::run(args)
        }
    }
}

/// The compiled-code cache folder a config asks for (or the default).
pub(crate) fn cache_dir(config: Option<&crate::config::Config>) -> Option<PathBuf> {
    match config.and_then(|c| c.wasm.cache_dir.clone()) {
        Some(dir) if dir.as_os_str().is_empty() => None,
        Some(dir) => config.map(|c| c.base_dir.join(dir)),
        None => crate::wasm::Runtime::default_cache_dir(),
    }
}
