//! `sluice bench`: end-to-end throughput and latency of the host against a
//! real nats-server, side by side with a baseline of plain async-nats code
//! doing the same consume → publish → await PubAck → ack work with the same
//! batch and concurrency settings and no WebAssembly.
//!
//! Each system runs two phases on its own streams: *throughput* (N messages
//! published beforehand, timed from the first pull to the last settle) and
//! *latency* (messages published at half of that system's measured peak, or
//! the share `--latency-load` gives, for a few seconds, each timed from
//! JetStream storing the input to the output's PubAck). Each system's
//! streams are deleted before the other runs, and rounds alternate which
//! system goes first. The machine is shared and noisy, so the figure that
//! matters is the ratio measured in the same run.
//!
//! That is `--mode throughput`, the default. The other modes each measure
//! one more property of the host on the same pipeline: `scale` (many
//! tenants on one host: time to ready, idle cost, memory per tenant),
//! `fairness` (a quiet tenant's latency beside a noisy one) and `hosts`
//! (throughput of several `sluice run` processes sharing the durables).
//!
//! This module holds the arguments and picks the mode; each mode has its
//! own file. `throughput` runs the rounds; the other modules each own one
//! part of them: the baseline system, the host under test, the load
//! (inputs, preloading, the load generator), the measurements taken while a
//! phase runs, /proc, the report and the plot.

mod baseline;
mod child;
mod fairness;
mod hosts;
mod load;
mod measure;
mod plot;
mod procfs;
mod report;
mod scale;
mod sluice;
mod throughput;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use ::sluice::nats_server::NatsServer;

/// What `sluice bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Throughput and latency of the host beside a plain async-nats
    /// baseline.
    Throughput,
    /// Many tenants on one host: time until every consumer is bound, idle
    /// CPU, memory per tenant, and every tenant's messages processed.
    Scale,
    /// A quiet tenant's latency alone and beside a noisy tenant.
    Fairness,
    /// Throughput of 1, 2, … `sluice run` processes on the same durables.
    Hosts,
}

/// Run the chosen mode.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.mode {
        Mode::Throughput => throughput::run(args).await,
        Mode::Scale => scale::run(args).await,
        Mode::Fairness => fairness::run(args).await,
        Mode::Hosts => hosts::run(args).await,
    }
}

/// Arguments of `sluice bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(long, value_enum, default_value = "throughput")]
    mode: Mode,
    /// An existing NATS server to use instead of starting one.
    #[arg(long)]
    url: Option<String>,
    /// The nats-server binary to start (without `--url`).
    #[arg(long, default_value = "nats-server")]
    nats_server: PathBuf,
    /// Messages per throughput phase, across tenants (throughput and hosts
    /// modes).
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Size of each input payload (a JSON object).
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Tenants (each with its own consumer and pipeline). Default 2; in
    /// scale mode 1000, or 50 with `--accounts`. Fairness mode has its own
    /// (`--quiet`).
    #[arg(long)]
    tenants: Option<usize>,
    /// Run the pipeline of this config's first tenant instead of the three
    /// reference plugins.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Folder of the reference plugins (default pipeline).
    #[arg(long, default_value = "plugins/dist")]
    plugins: PathBuf,
    /// In-flight messages per tenant, for both systems.
    #[arg(long, default_value_t = 512)]
    max_in_flight: usize,
    /// Length of each latency phase. Default 5 s; 10 s in fairness mode.
    #[arg(long, value_parser = humantime::parse_duration)]
    latency_phase: Option<Duration>,
    /// The latency phase publishes at this share of each system's measured
    /// peak (0.5: half of peak). Lower shares show the latency of a system
    /// with headroom; the phase's own publishing competes for the same
    /// machine.
    #[arg(long, default_value_t = 0.5, value_parser = share)]
    latency_load: f64,
    /// Run both systems this many times, alternating, each round on fresh
    /// streams; the report is the round with the median ratio, and lists
    /// every round. On a shared, noisy machine one round can be far off.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The process id of the nats-server this bench started, whose CPU it
    /// then counts too (not an option: unknown with `--url`).
    #[arg(skip)]
    server_pid: Option<u32>,
    /// Draw throughput over time, the latency distributions and the p99
    /// over time (SVG).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write every latency of the reported round's latency phases as CSV
    /// (`system,unix_s,latency_ms`; `unix_s` is when it was recorded, in
    /// seconds since the Unix epoch), to line a tail up with what else
    /// happened then, such as the server's garbage collections.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Scale mode.
    #[command(flatten)]
    scale: scale::ScaleArgs,
    /// Fairness mode.
    #[command(flatten)]
    fairness: fairness::FairnessArgs,
    /// Hosts mode.
    #[command(flatten)]
    hosts: hosts::HostsArgs,
}

impl BenchArgs {
    /// `--tenants`, or the mode's default.
    fn tenants(&self) -> usize {
        self.tenants.unwrap_or(match self.mode {
            Mode::Scale if self.scale.accounts => 50,
            Mode::Scale => 1000,
            _ => 2,
        })
    }

    /// `--latency-phase`, or the mode's default.
    fn latency_phase(&self) -> Duration {
        self.latency_phase.unwrap_or(match self.mode {
            Mode::Fairness => Duration::from_secs(10),
            _ => Duration::from_secs(5),
        })
    }

    /// The server to run against: `--url`'s, or a nats-server started here
    /// (with `config`'s text, for accounts), whose process id the CPU
    /// counts then use. Returns it (to keep it alive) and its URL.
    async fn server(
        &mut self,
        config: Option<String>,
    ) -> anyhow::Result<(Option<NatsServer>, String)> {
        if let Some(url) = &self.url {
            return Ok((None, url.clone()));
        }
        let binary = self.nats_server.clone();
        let server =
            tokio::task::spawn_blocking(move || NatsServer::start_with(&binary, config.as_deref()))
                .await
                .context("starting nats-server")??;
        self.server_pid = server.pid();
        let url = server.url();
        Ok((Some(server), url))
    }
}

/// A `--latency-load` share: above 0, at most 1.
fn share(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(x) if x > 0.0 && x <= 1.0 => Ok(x),
        _ => Err(format!(
            "expected a share of peak above 0 and at most 1, got `{raw}`"
        )),
    }
}
