//! What the bench reports: each system's figures, the whole report as
//! `--json` writes it, the table on stdout and the `--trace` CSV.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

/// One system's results.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SystemResult {
    /// Messages settled in the throughput phase.
    pub processed: u64,
    /// Throughput: messages per second from first pull to last settle.
    pub msgs_per_sec: f64,
    /// Latency percentiles at the latency phase's share of peak
    /// throughput, milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// The rate of the latency phase, messages per second.
    pub latency_rate: f64,
    /// Messages the latency phase published, every one stored and settled.
    pub latency_messages: u64,
    /// Process CPU time during the throughput phase, seconds: from the
    /// consumers' start (for sluice, once its plugins are loaded) to the
    /// last settle.
    pub cpu_seconds: f64,
    /// `cpu_seconds` per message settled, µs.
    pub cpu_us_per_msg: f64,
    /// nats-server's CPU time over the same span, seconds, when the bench
    /// started the server (unknown with `--url`).
    pub server_cpu_seconds: Option<f64>,
    /// `server_cpu_seconds` per message settled, µs.
    pub server_cpu_us_per_msg: Option<f64>,
    /// Throughput samples (seconds since start, messages per second).
    #[serde(skip)]
    pub timeline: Vec<(f64, f64)>,
    /// Latency percentile curve (percentile, ms).
    #[serde(skip)]
    pub curve: Vec<(f64, f64)>,
    /// The latency phase's p99 in each 100 ms (seconds since the phase's
    /// first settle, ms).
    pub p99_over_time: Vec<(f64, f64)>,
    /// Every latency of the latency phase: (µs since the Unix epoch when
    /// it was recorded, latency µs).
    #[serde(skip)]
    pub trace: Vec<(u64, u64)>,
}

/// The whole report, as written by `--json`.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Messages per throughput phase.
    pub messages: u64,
    /// Payload size.
    pub payload_bytes: usize,
    /// Tenants.
    pub tenants: usize,
    /// Stages in each tenant's pipeline.
    pub stages: usize,
    /// In-flight messages per tenant.
    pub max_in_flight: usize,
    /// The latency phases' share of each system's peak.
    pub latency_load: f64,
    /// Sluice's throughput.
    pub sluice_msgs_per_sec: f64,
    /// The baseline's throughput.
    pub baseline_msgs_per_sec: f64,
    /// sluice / baseline.
    pub ratio: f64,
    /// Sluice's p50 latency at `latency_load` of its peak (half by
    /// default), ms.
    pub p50_ms: f64,
    /// Sluice's p90.
    pub p90_ms: f64,
    /// Sluice's p99.
    pub p99_ms: f64,
    /// Sluice's max.
    pub max_ms: f64,
    /// Peak resident memory of this process (host + baseline + driver), MiB.
    pub peak_rss_mib: f64,
    /// Which round (from 1) the figures above and the details below are
    /// from: the one with the median ratio.
    pub median_round: usize,
    /// Every round's main figures, in the order they ran.
    pub rounds: Vec<RoundSummary>,
    /// Sluice in detail.
    pub sluice: SystemResult,
    /// The baseline in detail.
    pub baseline: SystemResult,
}

/// A round's main figures, as the report lists them.
#[derive(Debug, Clone, Serialize)]
pub struct RoundSummary {
    /// sluice / baseline throughput.
    pub ratio: f64,
    /// Sluice's throughput.
    pub sluice_msgs_per_sec: f64,
    /// The baseline's throughput.
    pub baseline_msgs_per_sec: f64,
    /// Sluice's p99 latency, ms.
    pub sluice_p99_ms: f64,
    /// The baseline's p99 latency, ms.
    pub baseline_p99_ms: f64,
}

pub(super) fn print_table(r: &Report) {
    let (s, b) = (&r.sluice, &r.baseline);
    let ratio = |x: f64, y: f64| {
        if y > 0.0 {
            format!("{:.2}", x / y)
        } else {
            "-".into()
        }
    };
    println!(
        "{} messages of {} bytes, {} tenants, {} stage(s), {} in flight per tenant",
        r.messages, r.payload_bytes, r.tenants, r.stages, r.max_in_flight
    );
    println!(
        "{:<28} {:>12} {:>12} {:>8}",
        "", "sluice", "baseline", "ratio"
    );
    let rows: BTreeMap<u8, (&str, f64, f64)> = BTreeMap::from([
        (0, ("throughput (msg/s)", s.msgs_per_sec, b.msgs_per_sec)),
        (1, ("latency rate (msg/s)", s.latency_rate, b.latency_rate)),
        (2, ("latency p50 (ms)", s.p50_ms, b.p50_ms)),
        (3, ("latency p90 (ms)", s.p90_ms, b.p90_ms)),
        (4, ("latency p99 (ms)", s.p99_ms, b.p99_ms)),
        (5, ("latency max (ms)", s.max_ms, b.max_ms)),
        (
            6,
            ("cpu seconds (throughput)", s.cpu_seconds, b.cpu_seconds),
        ),
        (
            7,
            ("cpu µs per message", s.cpu_us_per_msg, b.cpu_us_per_msg),
        ),
    ]);
    for (name, x, y) in rows.values() {
        println!("{name:<28} {x:>12.2} {y:>12.2} {:>8}", ratio(*x, *y));
    }
    if let (Some(x), Some(y)) = (s.server_cpu_us_per_msg, b.server_cpu_us_per_msg) {
        println!(
            "{:<28} {x:>12.2} {y:>12.2} {:>8}",
            "nats-server µs per message",
            ratio(x, y)
        );
    }
    println!("{:<28} {:>12.1}", "peak RSS (MiB, process)", r.peak_rss_mib);
    if r.rounds.len() > 1 {
        let ratios: Vec<String> = r.rounds.iter().map(|x| format!("{:.2}", x.ratio)).collect();
        println!(
            "ratio by round: {} (the table is round {}, the median)",
            ratios.join(" "),
            r.median_round
        );
    }
    println!(
        "processed: sluice {} / baseline {}",
        s.processed, b.processed
    );
}

/// Both systems' latency traces as CSV.
pub(super) fn trace_csv(r: &Report) -> String {
    let mut out = String::from("system,unix_s,latency_ms\n");
    for (name, result) in [("sluice", &r.sluice), ("baseline", &r.baseline)] {
        for &(at, micros) in &result.trace {
            let _ = writeln!(
                out,
                "{name},{}.{:06},{:.3}",
                at / 1_000_000,
                at % 1_000_000,
                micros as f64 / 1000.0
            );
        }
    }
    out
}

/// Write `value` as JSON to `path` (`--json`), if given.
pub(super) fn write_json(path: Option<&Path>, value: &impl Serialize) -> anyhow::Result<()> {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(value)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
