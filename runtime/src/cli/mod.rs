//! The `sluice` command line: one subcommand per job, each in its own module.

mod bench;
mod check;
mod dev;
mod handle;
mod new;
mod run;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use sluice::logging;

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

/// How log lines are written (the library's [`logging::LogFormat`], as a
/// command-line value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl From<LogFormat> for logging::LogFormat {
    fn from(format: LogFormat) -> Self {
        match format {
            LogFormat::Text => logging::LogFormat::Text,
            LogFormat::Json => logging::LogFormat::Json,
        }
    }
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
    /// Run the configured tenants until SIGINT/SIGTERM.
    Run {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
        /// Serve /metrics, /healthz and /readyz here (overrides
        /// host.metrics_addr).
        #[arg(long)]
        metrics_addr: Option<std::net::SocketAddr>,
    },
    /// Create missing streams and consumers (never replacing, shrinking or
    /// deleting what exists); report differences.
    Provision {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
        /// Only check; create nothing, fail if something is missing.
        #[arg(long)]
        verify: bool,
    },
    /// A local nats-server, the example tenants and plugins, sample traffic
    /// and a live summary, until Ctrl-C.
    Dev(dev::DevArgs),
    /// Start a handler: NAME/ with a skeleton in Rust, Python or JavaScript,
    /// the WIT contract and a golden-case file.
    New(new::NewArgs),
    /// Build the handler in a folder into NAME.wasm, whatever its language.
    Build(new::BuildArgs),
    /// End-to-end throughput and latency against a real nats-server, side
    /// by side with a plain async-nats baseline.
    Bench(bench::BenchArgs),
}

/// Run the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check { config } => {
            logging::init(cli.log_format.into(), "warn");
            check::run(&config)
        }
        Command::Handle(args) => {
            logging::init(cli.log_format.into(), "warn");
            handle::run(args)
        }
        Command::Run {
            config,
            metrics_addr,
        } => {
            logging::init(cli.log_format.into(), "info");
            tokio_runtime()?.block_on(run::run(&config, metrics_addr))
        }
        Command::Provision { config, verify } => {
            logging::init(cli.log_format.into(), "warn");
            tokio_runtime()?.block_on(run::provision(&config, verify))
        }
        Command::Dev(args) => {
            logging::init(cli.log_format.into(), "warn");
            tokio_runtime()?.block_on(dev::run(args))
        }
        Command::New(args) => new::new(args),
        Command::Build(args) => new::build(args),
        Command::Bench(args) => {
            logging::init(cli.log_format.into(), "warn");
            tokio_runtime()?.block_on(bench::run(args))
        }
    }
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sluice-io")
        .build()?)
}
