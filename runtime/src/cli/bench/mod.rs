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
//! This module holds the arguments. `throughput` runs the rounds; the
//! others each own one part of them: the baseline system, the host under
//! test, the load (inputs, preloading, the load generator), the
//! measurements taken while a phase runs, /proc, the report and the plot.

mod baseline;
mod load;
mod measure;
mod plot;
mod procfs;
mod report;
mod sluice;
mod throughput;

use std::path::PathBuf;
use std::time::Duration;

pub use throughput::run;

/// Arguments of `sluice bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// An existing NATS server to use instead of starting one.
    #[arg(long)]
    url: Option<String>,
    /// The nats-server binary to start (without `--url`).
    #[arg(long, default_value = "nats-server")]
    nats_server: PathBuf,
    /// Messages per throughput phase, across tenants.
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Size of each input payload (a JSON object).
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Tenants (each with its own stream, consumer and pipeline).
    #[arg(long, default_value_t = 2)]
    tenants: usize,
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
    /// Length of each latency phase.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    latency_phase: Duration,
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
