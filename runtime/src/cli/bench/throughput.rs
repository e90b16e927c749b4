//! The throughput mode's driver: rounds of both systems, each system on its
//! own fresh streams, and the report of the median round.

use anyhow::{Context as _, bail};
use async_nats::jetstream;

use sluice::stats::now_micros;

use super::BenchArgs;
use super::baseline::{BaselineSetup, run_baseline};
use super::load::{delete_streams, sample_payload};
use super::plot::plot;
use super::procfs::peak_rss_mib;
use super::report::{Report, RoundSummary, SystemResult, print_table, trace_csv, write_json};
use super::sluice::{run_sluice, sluice_config};

pub async fn run(mut args: BenchArgs) -> anyhow::Result<()> {
    if args.tenants() == 0 || args.messages == 0 {
        bail!("--tenants and --messages must be at least 1");
    }
    let (server, url) = args.server(None).await?;
    let client = async_nats::connect(&url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let js = sluice::topology::jetstream(client.clone());
    let bench_id = format!("{:x}", now_micros() % 0xffff_ffff);
    let payload = sample_payload(args.payload_bytes);

    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        if args.rounds > 1 {
            eprintln!("round {} of {}", round + 1, args.rounds);
        }
        rounds.push(run_round(&js, &url, &args, &bench_id, round, &payload).await?);
    }
    let peak_rss_mib = peak_rss_mib();
    let summaries: Vec<RoundSummary> = rounds.iter().map(Round::summary).collect();
    // The median round by ratio (the lower one of an even count).
    let mut order: Vec<usize> = (0..rounds.len()).collect();
    order.sort_by(|&a, &b| rounds[a].ratio().total_cmp(&rounds[b].ratio()));
    let median = order[(order.len() - 1) / 2];
    let round = rounds.swap_remove(median);
    let ratio = round.ratio();
    let Round {
        stages,
        mut sluice,
        mut baseline,
    } = round;
    baseline.timeline.shrink_to_fit();
    sluice.timeline.shrink_to_fit();
    let report = Report {
        messages: args.messages,
        payload_bytes: payload.len(),
        tenants: args.tenants(),
        stages,
        max_in_flight: args.max_in_flight,
        latency_load: args.latency_load,
        sluice_msgs_per_sec: sluice.msgs_per_sec,
        baseline_msgs_per_sec: baseline.msgs_per_sec,
        ratio,
        p50_ms: sluice.p50_ms,
        p90_ms: sluice.p90_ms,
        p99_ms: sluice.p99_ms,
        max_ms: sluice.max_ms,
        peak_rss_mib,
        median_round: median + 1,
        rounds: summaries,
        sluice,
        baseline,
    };
    print_table(&report);
    write_json(args.json.as_deref(), &report)?;
    if let Some(path) = &args.trace {
        std::fs::write(path, trace_csv(&report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, plot(&report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    drop(server);
    Ok(())
}

/// One round: both systems, each on its own fresh streams.
struct Round {
    stages: usize,
    sluice: SystemResult,
    baseline: SystemResult,
}

impl Round {
    /// sluice / baseline throughput.
    fn ratio(&self) -> f64 {
        if self.baseline.msgs_per_sec > 0.0 {
            self.sluice.msgs_per_sec / self.baseline.msgs_per_sec
        } else {
            0.0
        }
    }

    fn summary(&self) -> RoundSummary {
        RoundSummary {
            ratio: self.ratio(),
            sluice_msgs_per_sec: self.sluice.msgs_per_sec,
            baseline_msgs_per_sec: self.baseline.msgs_per_sec,
            sluice_p99_ms: self.sluice.p99_ms,
            baseline_p99_ms: self.baseline.p99_ms,
        }
    }
}

/// The baseline, then sluice (the baseline's memory is small, so the peak
/// RSS read after sluice's phases is the host's), then their streams are
/// deleted so that a later round does not pay for this one's data.
async fn run_round(
    js: &jetstream::Context,
    url: &str,
    args: &BenchArgs,
    bench_id: &str,
    round: u32,
    payload: &[u8],
) -> anyhow::Result<Round> {
    let run_id = format!("{bench_id}R{round}");
    // Odd rounds run sluice first, so that neither system is always the
    // one measured on a server that has run longer.
    let (baseline, (sluice, stages)) = if round.is_multiple_of(2) {
        let baseline = baseline_system(js, url, args, &run_id, payload).await?;
        (
            baseline,
            sluice_system(js, url, args, &run_id, payload).await?,
        )
    } else {
        let sluice = sluice_system(js, url, args, &run_id, payload).await?;
        (
            baseline_system(js, url, args, &run_id, payload).await?,
            sluice,
        )
    };
    Ok(Round {
        stages,
        sluice,
        baseline,
    })
}

/// The baseline's phases on streams of its own, deleted when it is done:
/// a system must not run beside the other's stored messages and duplicate
/// windows, which enlarge nats-server's heap and lengthen its garbage
/// collections (measured: 12–34 ms marks alone, 42–67 ms with the other
/// system's streams still held).
async fn baseline_system(
    js: &jetstream::Context,
    url: &str,
    args: &BenchArgs,
    run_id: &str,
    payload: &[u8],
) -> anyhow::Result<SystemResult> {
    let base = BaselineSetup::new(js, run_id, args.tenants()).await?;
    eprintln!(
        "baseline: plain async-nats consume → publish → ack, {} tenants",
        args.tenants()
    );
    let result = run_baseline(js, url, &base, args, payload).await;
    delete_streams(js, base.streams()).await;
    result
}

/// Sluice's phases on streams of its own, deleted when it is done; returns
/// its result and the number of stages.
async fn sluice_system(
    js: &jetstream::Context,
    url: &str,
    args: &BenchArgs,
    run_id: &str,
    payload: &[u8],
) -> anyhow::Result<(SystemResult, usize)> {
    let (config, inputs, stages) = sluice_config(args, url, run_id)?;
    eprintln!(
        "sluice: {} stage(s) per tenant, {} tenants",
        stages,
        inputs.len()
    );
    let result = run_sluice(js, url, config, &inputs, args, payload).await;
    delete_streams(js, inputs.iter().flat_map(|i| i.streams.clone())).await;
    Ok((result?, stages))
}
