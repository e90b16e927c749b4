//! `--mode fairness`: does a noisy tenant slow the quiet ones down? One
//! noisy tenant and `--quiet` quiet ones, each with its own stream,
//! consumer and the reference pipeline, on one host (in process).
//!
//! The quiet tenants publish at `--quiet-rate` each throughout, and every
//! quiet message's latency is recorded (JetStream storing the input to the
//! output's PubAck, as in the throughput mode's latency phase). Phase A:
//! the quiet load, for `--latency-phase`. Then a pause, for A's messages to
//! drain, with the quiet load still on. Phase B: the noisy tenant joins,
//! publishing at `--noisy-factor` times the quiet rate. Each quiet message
//! counts in the phase in which it was stored; the figure is the quiet
//! tenants' p99 in B over their p99 in A.
//!
//! The quiet load never stops between the phases, and the noisy tenant
//! sends a trickle before B, so that both phases start with every tenant's
//! pulls short (an idle tenant's pulls lengthen to 30 s; that costs no
//! latency, but B should measure the neighbour, not a change of state).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream;
use serde::Serialize;

use sluice::config::Config;
use sluice::service::Service;
use sluice::stats::{TenantStats, now_micros};

use super::BenchArgs;
use super::load::{Input, delete_streams, publish_apart, sample_payload};
use super::measure::{
    merge_latency, quantile_ms, reset_latency, settled, take_trace, wait_bound, wait_done_within,
};
use super::report::write_json;
use super::sluice::{config_head, own_streams_tenant, reference_plugins};

/// Options of `--mode fairness`.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Fairness mode")]
pub struct FairnessArgs {
    /// Quiet tenants.
    #[arg(long, default_value_t = 4)]
    quiet: usize,
    /// Messages per second each quiet tenant publishes, in both phases.
    #[arg(long, default_value_t = 100.0)]
    quiet_rate: f64,
    /// The noisy tenant publishes at this many times the quiet rate in
    /// phase B.
    #[arg(long, default_value_t = 50.0)]
    noisy_factor: f64,
}

/// Between the phases, with only the quiet load on: A's messages settle,
/// and the host's and the server's queues with them, so B does not start
/// on A's tail. A's messages take a few ms each here.
const DRAIN_PAUSE: Duration = Duration::from_secs(2);
/// How long settling may stand still beyond the consumers' ack_wait: a
/// message waiting for a redelivery, then the host's next pull.
const REDELIVERY_MARGIN: Duration = Duration::from_secs(15);
/// The noisy tenant's rate before B, msgs/s: enough to keep it busy (see
/// the module's notes); a tenth of one quiet tenant's load.
const KEEPALIVE_RATE: f64 = 10.0;

/// The quiet tenants' latency in one phase.
#[derive(Debug, Serialize)]
pub struct QuietLatency {
    /// Quiet messages stored in the phase and settled.
    pub messages: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile over every quiet message, ms.
    pub p99_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
    /// How many took over a second (each a few ms when the host keeps up).
    pub over_1s: u64,
}

/// What `--mode fairness` reports (and `--json` writes).
#[derive(Debug, Serialize)]
pub struct FairnessReport {
    /// Quiet tenants.
    pub quiet_tenants: usize,
    /// Each quiet tenant's rate, msgs/s.
    pub quiet_rate: f64,
    /// The noisy tenant's target rate in phase B, msgs/s.
    pub noisy_target_rate: f64,
    /// Length of each phase's publishing, s.
    pub phase_s: f64,
    /// Phase A: quiet tenants alone.
    pub alone: QuietLatency,
    /// Phase B: beside the noisy tenant.
    pub beside_noisy: QuietLatency,
    /// Quiet p99 in B / in A (target ≤ 2).
    pub p99_ratio: f64,
    /// Quiet p50 in B / in A.
    pub p50_ratio: f64,
    /// Quiet messages published over both phases and the pause.
    pub quiet_published: u64,
    /// Of them, not settled by the end of the wait (0 in a good run).
    pub quiet_unsettled: u64,
    /// Messages the noisy tenant published in B.
    pub noisy_published: u64,
    /// The rate it published at, msgs/s.
    pub noisy_publish_rate: f64,
    /// The rate the host settled its messages at while B published, msgs/s.
    pub noisy_processed_rate: f64,
    /// Its messages still pending or unacked when B's publishing ended.
    pub noisy_backlog_at_end: u64,
    /// From then until its last message settled, s (none: not within the
    /// wait).
    pub noisy_drain_s: Option<f64>,
}

pub(super) async fn run(mut args: BenchArgs) -> anyhow::Result<()> {
    let f = &args.fairness;
    let (quiet_n, quiet_rate, factor) = (f.quiet, f.quiet_rate, f.noisy_factor);
    if quiet_n == 0 || quiet_rate <= 0.0 || factor <= 0.0 {
        bail!("--quiet, --quiet-rate and --noisy-factor must be above 0");
    }
    let (server, url) = args.server(None).await?;
    let client = async_nats::connect(&url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let js = sluice::topology::jetstream(client);
    let run_id = format!("{:x}", now_micros() % 0xffff_ffff);
    let plugins = reference_plugins(&args)?;
    let mut text = config_head(&url, plugins.path(), args.max_in_flight);
    let noisy = own_streams_tenant(&mut text, "noisy", &format!("FAIR{run_id}_NOISY"));
    let quiet: Vec<Input> = (0..quiet_n)
        .map(|i| {
            own_streams_tenant(
                &mut text,
                &format!("quiet-{i}"),
                &format!("FAIR{run_id}_QUIET{i}"),
            )
        })
        .collect();
    let config = Config::parse(&text, std::path::Path::new("bench-fairness.toml"))?;
    let ack_wait = config.limits(None).ack_wait;
    for (id, tenant) in &config.tenants {
        let mut report = sluice::topology::Report::default();
        sluice::topology::ensure_tenant(&js, &config, id, tenant, true, &mut report)
            .await
            .with_context(|| format!("provisioning bench tenant {id}"))?;
    }
    eprintln!(
        "fairness: {quiet_n} quiet tenants at {quiet_rate} msg/s each, then beside one noisy tenant at {} msg/s",
        quiet_rate * factor
    );
    let service = Service::start(config).await?;
    let tenants: Vec<(String, Arc<TenantStats>)> = service
        .tenants()
        .into_iter()
        .map(|(id, t)| (id, t.stats.clone()))
        .collect();
    let result = phases(&args, &js, &url, &tenants, &noisy, &quiet, ack_wait).await;
    service.shutdown().await;
    let streams = quiet.iter().chain([&noisy]).flat_map(|i| i.streams.clone());
    delete_streams(&js, streams).await;
    let report = result?;
    print_table(&report);
    write_json(args.json.as_deref(), &report)?;
    drop(server);
    Ok(())
}

/// Both phases on the running host.
async fn phases(
    args: &BenchArgs,
    js: &jetstream::Context,
    url: &str,
    tenants: &[(String, Arc<TenantStats>)],
    noisy: &Input,
    quiet: &[Input],
    ack_wait: Duration,
) -> anyhow::Result<FairnessReport> {
    let f = &args.fairness;
    let phase = args.latency_phase();
    let payload = sample_payload(args.payload_bytes);
    wait_bound(tenants, tenants.len()).await?;
    let quiet_stats: Vec<&TenantStats> = tenants
        .iter()
        .filter(|(id, _)| id.starts_with("quiet-"))
        .map(|(_, s)| &**s)
        .collect();
    let noisy_stats = tenants
        .iter()
        .find(|(id, _)| id == "noisy")
        .map(|(_, s)| s.clone())
        .context("the noisy tenant is not running")?;
    let quiet_done = || -> u64 { quiet_stats.iter().map(|s| settled(&s.snapshot())).sum() };
    let noisy_done = || settled(&noisy_stats.snapshot());
    let quiet_total = f.quiet_rate * quiet.len() as f64;
    let noisy_rate = f.quiet_rate * f.noisy_factor;
    for s in &quiet_stats {
        reset_latency(s);
    }
    // Phase B starts this long after A; its messages are the quiet ones
    // stored from then on.
    let b_offset = phase + DRAIN_PAUSE;
    let start_us = now_micros();
    let (a_end_us, b_start_us) = (start_us + micros(phase), start_us + micros(b_offset));
    eprintln!(
        "phase A: quiet tenants (and a {KEEPALIVE_RATE} msg/s noisy trickle) for {phase:?}, then a {DRAIN_PAUSE:?} pause, then phase B beside the noisy tenant for {phase:?}"
    );
    let noisy_in = std::slice::from_ref(noisy);
    let noisy_phase = async {
        let kept = publish_apart(js, url, noisy_in, KEEPALIVE_RATE, b_offset, &payload).await?;
        let started = Instant::now();
        let before = noisy_done();
        let sent = publish_apart(js, url, noisy_in, noisy_rate, phase, &payload).await?;
        let published_s = started.elapsed().as_secs_f64();
        Ok::<_, anyhow::Error>((kept, sent, noisy_done() - before, published_s))
    };
    let (quiet_sent, noisy_run) = tokio::join!(
        publish_apart(js, url, quiet, quiet_total, b_offset + phase, &payload),
        noisy_phase,
    );
    let (quiet_sent, (noisy_kept, noisy_sent, noisy_processed, published_s)) =
        (quiet_sent?, noisy_run?);
    let ended = Instant::now();
    let noisy_backlog_at_end = backlog(js, noisy).await?;
    // A message may wait for a redelivery (ack_wait); the limits leave
    // room for two.
    let stall = ack_wait + REDELIVERY_MARGIN;
    let limit = ack_wait * 2 + REDELIVERY_MARGIN;
    let (quiet_waited, noisy_drained) = tokio::join!(
        tokio::time::timeout(
            limit,
            wait_done_within(quiet_sent, "quiet", stall, quiet_done)
        ),
        async {
            let waited = tokio::time::timeout(
                limit,
                wait_done_within(noisy_kept + noisy_sent, "noisy", stall, noisy_done),
            )
            .await;
            (matches!(waited, Ok(Ok(_))), ended.elapsed().as_secs_f64())
        },
    );
    let quiet_settled = quiet_done();
    let trace = take_trace(&merge_latency(quiet_stats.iter().copied()));
    let stored_at = |&(at, latency): &(u64, u64)| at.saturating_sub(latency);
    let alone = quiet_latency(trace.iter().filter(|s| stored_at(s) < a_end_us));
    let beside_noisy = quiet_latency(trace.iter().filter(|s| stored_at(s) >= b_start_us));
    let (noisy_drained, noisy_drain_s) = noisy_drained;
    let ratio = |b: f64, a: f64| if a > 0.0 { b / a } else { 0.0 };
    let report = FairnessReport {
        quiet_tenants: quiet.len(),
        quiet_rate: f.quiet_rate,
        noisy_target_rate: noisy_rate,
        phase_s: phase.as_secs_f64(),
        p99_ratio: ratio(beside_noisy.p99_ms, alone.p99_ms),
        p50_ratio: ratio(beside_noisy.p50_ms, alone.p50_ms),
        alone,
        beside_noisy,
        quiet_published: quiet_sent,
        quiet_unsettled: quiet_sent.saturating_sub(quiet_settled),
        noisy_published: noisy_sent,
        noisy_publish_rate: noisy_sent as f64 / phase.as_secs_f64(),
        noisy_processed_rate: noisy_processed as f64 / published_s,
        noisy_backlog_at_end,
        noisy_drain_s: noisy_drained.then_some(noisy_drain_s),
    };
    if !matches!(quiet_waited, Ok(Ok(_))) {
        print_table(&report);
        bail!(
            "{} of {quiet_sent} quiet messages were not settled within {limit:?}",
            report.quiet_unsettled
        );
    }
    Ok(report)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Latency figures of the quiet messages of one phase (its trace samples).
fn quiet_latency<'a>(samples: impl Iterator<Item = &'a (u64, u64)>) -> QuietLatency {
    let mut sorted: Vec<u64> = samples.map(|&(_, l)| l).collect();
    sorted.sort_unstable();
    QuietLatency {
        messages: sorted.len() as u64,
        p50_ms: quantile_ms(&sorted, 0.50),
        p90_ms: quantile_ms(&sorted, 0.90),
        p99_ms: quantile_ms(&sorted, 0.99),
        max_ms: quantile_ms(&sorted, 1.0),
        over_1s: sorted.iter().filter(|&&l| l > 1_000_000).count() as u64,
    }
}

/// Messages of the tenant's consumer not yet delivered or not yet acked.
async fn backlog(js: &jetstream::Context, input: &Input) -> anyhow::Result<u64> {
    let name = input
        .streams
        .first()
        .context("a bench input without a stream")?;
    let stream = js
        .get_stream(name)
        .await
        .with_context(|| format!("looking up bench stream {name}"))?;
    let info = stream
        .consumer_info("sluice")
        .await
        .with_context(|| format!("reading consumer {name}/sluice"))?;
    Ok(info.num_pending + info.num_ack_pending as u64)
}

fn print_table(r: &FairnessReport) {
    println!(
        "{} quiet tenants at {} msg/s each; noisy tenant at {} msg/s in B; {:.0} s per phase",
        r.quiet_tenants, r.quiet_rate, r.noisy_target_rate, r.phase_s
    );
    println!(
        "{:<34} {:>10} {:>12} {:>8}",
        "quiet tenants", "A", "B: + noisy", "B / A"
    );
    let (a, b) = (&r.alone, &r.beside_noisy);
    for (name, x, y) in [
        ("latency p50 (ms)", a.p50_ms, b.p50_ms),
        ("latency p90 (ms)", a.p90_ms, b.p90_ms),
        ("latency p99 (ms)", a.p99_ms, b.p99_ms),
        ("latency max (ms)", a.max_ms, b.max_ms),
    ] {
        let ratio = if x > 0.0 { y / x } else { 0.0 };
        println!("{name:<34} {x:>10.2} {y:>12.2} {ratio:>8.2}");
    }
    println!("{:<34} {:>10} {:>12}", "messages", a.messages, b.messages);
    println!(
        "{:<34} {:>10} {:>12}",
        "of them over 1 s", a.over_1s, b.over_1s
    );
    let row = |name: &str, value: String| println!("{name:<34} {value:>23}");
    row(
        "noisy published (msg/s)",
        format!("{:.0}", r.noisy_publish_rate),
    );
    row(
        "noisy processed in B (msg/s)",
        format!("{:.0}", r.noisy_processed_rate),
    );
    row(
        "noisy backlog at B's end",
        r.noisy_backlog_at_end.to_string(),
    );
    row(
        "noisy drained after B (s)",
        r.noisy_drain_s
            .map_or_else(|| "not in the wait".to_owned(), |s| format!("{s:.2}")),
    );
    if r.quiet_unsettled > 0 {
        row("quiet messages unsettled", r.quiet_unsettled.to_string());
    }
    println!("quiet p99 ratio B/A: {:.2} (target ≤ 2)", r.p99_ratio);
}
