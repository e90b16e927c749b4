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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use sluice::config::Config;
use sluice::nats_server::NatsServer;
use sluice::service::Service;
use sluice::telemetry::{TenantStats, now_micros};

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

/// Sampling period of the throughput timeline and of completion checks.
const SAMPLE: Duration = Duration::from_millis(100);
/// A phase that makes no progress for this long has failed.
const STALL: Duration = Duration::from_secs(30);
/// How long the input streams may take to store the last of what the load
/// generator sent.
const STORE_WAIT: Duration = Duration::from_secs(5);

pub async fn run(mut args: BenchArgs) -> anyhow::Result<()> {
    if args.tenants == 0 || args.messages == 0 {
        bail!("--tenants and --messages must be at least 1");
    }
    let (server, url) = match &args.url {
        Some(url) => (None, url.clone()),
        None => {
            let binary = args.nats_server.clone();
            let server = tokio::task::spawn_blocking(move || NatsServer::start_with(&binary, None))
                .await
                .context("starting nats-server")??;
            let url = server.url();
            (Some(server), url)
        }
    };
    args.server_pid = server.as_ref().and_then(NatsServer::pid);
    let client = async_nats::connect(&url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let js = sluice::source::jetstream(client.clone());
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
        tenants: args.tenants,
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
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
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
    let base = BaselineSetup::new(js, run_id, args.tenants).await?;
    eprintln!(
        "baseline: plain async-nats consume → publish → ack, {} tenants",
        args.tenants
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

/// Delete a finished system's streams. Best effort: a stream left behind
/// costs the next system some memory, not its correctness.
async fn delete_streams(js: &jetstream::Context, names: impl IntoIterator<Item = String>) {
    for name in names {
        if let Err(e) = js.delete_stream(&name).await {
            tracing::warn!(stream = %name, error = %e, "could not delete a bench stream");
        }
    }
}

/// A JSON object of exactly `size` bytes (at least the fixed fields).
pub fn sample_payload(size: usize) -> Vec<u8> {
    let mut p = String::from(
        r#"{"type":"order","id":"o-1042","user":"ann","debug":true,"total":129.5,"pad":""#,
    );
    while p.len() + 2 < size {
        p.push('x');
    }
    p.push_str("\"}");
    p.into_bytes()
}

/// Where one tenant's inputs go, and the streams to clean up.
#[derive(Clone)]
struct Input {
    subject: String,
    streams: Vec<String>,
}

struct BaselineSetup {
    inputs: Vec<Input>,
    consumers: Vec<(consumer::PullConsumer, String)>,
}

impl BaselineSetup {
    async fn new(js: &jetstream::Context, run_id: &str, tenants: usize) -> anyhow::Result<Self> {
        let mut inputs = Vec::new();
        let mut consumers = Vec::new();
        for t in 0..tenants {
            let (input, output) = (format!("BASE{run_id}T{t}"), format!("BASE{run_id}T{t}_OUT"));
            let stream = js
                .create_stream(stream::Config {
                    name: input.clone(),
                    subjects: vec![format!("base{run_id}t{t}.in.>")],
                    ..Default::default()
                })
                .await
                .context("creating a baseline stream")?;
            js.create_stream(stream::Config {
                name: output.clone(),
                subjects: vec![format!("base{run_id}t{t}.out.>")],
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .context("creating a baseline output stream")?;
            let c = stream
                .create_consumer(consumer::pull::Config {
                    durable_name: Some("bench".into()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    max_ack_pending: 100_000,
                    ..Default::default()
                })
                .await
                .context("creating a baseline consumer")?;
            inputs.push(Input {
                subject: format!("base{run_id}t{t}.in.orders"),
                streams: vec![input, output],
            });
            consumers.push((c, format!("base{run_id}t{t}.out.orders")));
        }
        Ok(BaselineSetup { inputs, consumers })
    }

    fn streams(&self) -> Vec<String> {
        self.inputs.iter().flat_map(|i| i.streams.clone()).collect()
    }
}

/// Publish `n` messages spread over `inputs`, awaiting PubAcks in windows.
async fn preload(
    js: &jetstream::Context,
    inputs: &[Input],
    n: u64,
    payload: &[u8],
) -> anyhow::Result<()> {
    let bar = progress(n, "loading");
    let payload = bytes::Bytes::copy_from_slice(payload);
    let mut pending = Vec::with_capacity(1000);
    for i in 0..n {
        let input = &inputs[(i as usize) % inputs.len()];
        pending.push(js.publish(input.subject.clone(), payload.clone()).await?);
        if pending.len() == 1000 {
            for p in pending.drain(..) {
                p.await?;
            }
            bar.inc(1000);
        }
    }
    for p in pending.drain(..) {
        p.await?;
    }
    bar.finish_and_clear();
    Ok(())
}

/// [`publish_at`] on a thread, a runtime and a connection of its own, so the
/// load generator does not compete with the system under test for its
/// runtime's threads or its connection's socket. Returns how many messages
/// it published, after checking that the input streams stored every one.
async fn publish_apart(
    js: &jetstream::Context,
    url: &str,
    inputs: &[Input],
    rate: f64,
    duration: Duration,
    payload: &[u8],
) -> anyhow::Result<u64> {
    let before = stored(js, inputs).await?;
    let (url_owned, inputs_owned, payload) = (url.to_owned(), inputs.to_vec(), payload.to_vec());
    let sent = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let client = async_nats::connect(&url_owned)
                .await
                .with_context(|| format!("cannot connect the load generator to {url_owned}"))?;
            publish_at(&client, &inputs_owned, rate, duration, &payload).await
        })
    })
    .await??;
    // The generator's connection has written everything, but the server
    // may still be storing the last of it: wait a little for the count.
    // More is fine (another publisher on a server given with `--url`);
    // fewer, once the wait is over, means messages were lost.
    let waited = Instant::now();
    loop {
        let stored = stored(js, inputs).await?.saturating_sub(before);
        if stored >= sent {
            return Ok(sent);
        }
        if waited.elapsed() > STORE_WAIT {
            bail!(
                "the load generator published {sent} messages but the input streams stored {stored}"
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Messages ever stored by the input streams (the first stream of each
/// input): their last sequences, which acks and retention do not lower.
async fn stored(js: &jetstream::Context, inputs: &[Input]) -> anyhow::Result<u64> {
    let mut total = 0;
    for input in inputs {
        let Some(name) = input.streams.first() else {
            continue;
        };
        let mut stream = js
            .get_stream(name)
            .await
            .with_context(|| format!("looking up bench stream {name}"))?;
        let info = stream
            .info()
            .await
            .with_context(|| format!("reading bench stream {name}"))?;
        total += info.state.last_sequence;
    }
    Ok(total)
}

/// Publish at `rate` messages/s for `duration`, spread over `inputs`;
/// returns how many were published.
///
/// These are core NATS publishes, which the input streams capture, not
/// JetStream publishes awaiting a PubAck each: the generator stands in for
/// producers that would run on other machines, and a PubAck per message
/// costs the server a reply and the generator a reply subscription, a
/// future and a JSON parse, all on the two cores the systems under test
/// share (the latency phase runs at a share of a peak measured without any
/// of that). [`publish_apart`] checks afterwards that every message was
/// stored, so none is lost unseen. The schedule is kept from the start
/// time, in 1 ms ticks, so a late tick sends what is due rather than
/// drifting the rate.
async fn publish_at(
    client: &async_nats::Client,
    inputs: &[Input],
    rate: f64,
    duration: Duration,
    payload: &[u8],
) -> anyhow::Result<u64> {
    let payload = bytes::Bytes::copy_from_slice(payload);
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while started.elapsed() < duration {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            let input = &inputs[(sent as usize) % inputs.len()];
            client
                .publish(input.subject.clone(), payload.clone())
                .await
                .context("load generator publish")?;
            sent += 1;
        }
    }
    client.flush().await.context("load generator flush")?;
    Ok(sent)
}

/// Counters of a baseline run.
struct BaseStats {
    done: AtomicU64,
    stats: TenantStats,
}

async fn run_baseline(
    js: &jetstream::Context,
    url: &str,
    setup: &BaselineSetup,
    args: &BenchArgs,
    payload: &[u8],
) -> anyhow::Result<SystemResult> {
    preload(js, &setup.inputs, args.messages, payload).await?;
    let shared = Arc::new(BaseStats {
        done: AtomicU64::new(0),
        stats: TenantStats::default(),
    });
    let stop = CancellationToken::new();
    let mut loops = Vec::new();
    for (consumer, output) in &setup.consumers {
        loops.push(tokio::spawn(baseline_loop(
            js.clone(),
            consumer.clone(),
            output.clone(),
            args.max_in_flight,
            shared.clone(),
            stop.clone(),
        )));
    }
    let cpu = Cpu::now(args.server_pid);
    let done = |s: &Arc<BaseStats>| s.done.load(Ordering::Relaxed);
    let timeline = wait_done(args.messages, "baseline", || done(&shared)).await?;
    let mut result = SystemResult {
        processed: done(&shared),
        timeline,
        ..Default::default()
    };
    cpu.fill(&mut result);
    result.msgs_per_sec = rate_of(&shared.stats, result.processed);
    // Latency at a share of peak.
    reset_latency(&shared.stats);
    let rate = (result.msgs_per_sec * args.latency_load).max(1.0);
    let before = done(&shared);
    let sent = publish_apart(js, url, &setup.inputs, rate, args.latency_phase, payload).await?;
    wait_done(before + sent, "", || done(&shared)).await?;
    fill_latency(&mut result, &shared.stats, rate, sent, args.trace.is_some());
    stop.cancel();
    for l in loops {
        let _ = l.await;
    }
    Ok(result)
}

/// The baseline's pull loop: the host's batching and permits, then publish
/// with a message id, await the PubAck, ack — no WebAssembly, no pipeline.
async fn baseline_loop(
    js: jetstream::Context,
    consumer: consumer::PullConsumer,
    output: String,
    max_in_flight: usize,
    shared: Arc<BaseStats>,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let output: Arc<str> = Arc::from(output);
    while !stop.is_cancelled() {
        let first = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            () = stop.cancelled() => return,
        };
        let mut held = vec![first];
        while let Ok(p) = permits.clone().try_acquire_owned() {
            held.push(p);
        }
        let Ok(mut batch) = consumer
            .batch()
            .max_messages(held.len())
            .expires(Duration::from_secs(1))
            .messages()
            .await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        loop {
            let next = tokio::select! {
                n = batch.next() => n,
                () = stop.cancelled() => return,
            };
            let Some(Ok(msg)) = next else { break };
            let Some(permit) = held.pop() else { break };
            let (js, output, shared) = (js.clone(), output.clone(), shared.clone());
            tokio::spawn(async move {
                let _permit = permit;
                shared.stats.mark_received();
                let Ok(info) = msg.info() else { return };
                let published_us =
                    u64::try_from(info.published.unix_timestamp_nanos() / 1_000).unwrap_or(0);
                let mut headers = msg.headers.clone().unwrap_or_default();
                headers.insert(
                    "Nats-Msg-Id",
                    format!("{}:{}:0", info.stream, info.stream_sequence).as_str(),
                );
                let sent = js
                    .publish_with_headers(output.to_string(), headers, msg.payload.clone())
                    .await;
                let confirmed = match sent {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                };
                if confirmed {
                    let _ = msg.ack().await;
                    shared
                        .stats
                        .record_latency(now_micros().saturating_sub(published_us));
                    shared.done.fetch_add(1, Ordering::Relaxed);
                } else {
                    let _ = msg.ack_with(AckKind::Nak(None)).await;
                }
                shared.stats.mark_settled();
            });
        }
    }
}

/// The config the host runs: generated (three reference plugins per tenant)
/// or, with `--config`, that file's tenants. Returns it with each tenant's
/// input and the number of stages.
fn sluice_config(
    args: &BenchArgs,
    url: &str,
    run_id: &str,
) -> anyhow::Result<(Config, Vec<Input>, usize)> {
    if let Some(path) = &args.config {
        let mut config = Config::load(path)?;
        config.nats.servers = vec![url.to_owned()];
        config.host.provision = true;
        let mut inputs = Vec::new();
        for tenant in config.tenants.values_mut() {
            tenant.nats = None;
            tenant.max_in_flight = Some(args.max_in_flight);
            let mut streams = vec![tenant.stream.clone()];
            streams.extend(tenant.output_stream.clone());
            streams.extend(tenant.dead_letter_stream.clone());
            inputs.push(Input {
                subject: sluice::subject::concrete(&tenant.filter, "bench"),
                streams,
            });
        }
        let stages = config
            .tenants
            .values()
            .next()
            .map_or(0, |t| t.pipeline.len());
        return Ok((config, inputs, stages));
    }
    let plugins = std::path::absolute(&args.plugins).unwrap_or_else(|_| args.plugins.clone());
    if !plugins.join("transform.wasm").is_file() {
        bail!(
            "{} has no transform.wasm: build the reference plugins with scripts/build-plugins, or pass --plugins DIR",
            plugins.display()
        );
    }
    let mut text = format!(
        "[nats]\nservers = [{url:?}]\n[host]\nprovision = true\n[plugins]\ndir = {:?}\n[defaults]\nmax_in_flight = {}\n",
        plugins.display().to_string(),
        args.max_in_flight
    );
    let mut inputs = Vec::new();
    for t in 0..args.tenants {
        let id = format!("bench{t}");
        let (stream, out, dlq) = (
            format!("SLUICE{run_id}T{t}"),
            format!("SLUICE{run_id}T{t}_OUT"),
            format!("SLUICE{run_id}T{t}_DLQ"),
        );
        let _ = write!(
            text,
            r#"
[tenants.{id}]
stream = "{stream}"
filter = "{id}.in.>"
output = "{{tenant}}.out.{{subject[2..]}}"
dead_letter = "{id}.dlq"
output_stream = "{out}"
dead_letter_stream = "{dlq}"
pipeline = [
    {{ plugin = "transform", config = {{ rename = {{ user = "customer" }}, remove = "debug", set = {{ schema = "2" }} }} }},
    {{ plugin = "tenant-stamp" }},
    {{ plugin = "route", config = {{ rule = {{ 1 = {{ field = "type", equals = "order", to = "{{tenant}}.out.orders" }} }}, unmatched = "{{tenant}}.out.other" }} }},
]
"#
        );
        inputs.push(Input {
            subject: format!("{id}.in.orders"),
            streams: vec![stream, out, dlq],
        });
    }
    let config = Config::parse(&text, Path::new("bench.toml"))?;
    Ok((config, inputs, 3))
}

async fn run_sluice(
    js: &jetstream::Context,
    url: &str,
    config: Config,
    inputs: &[Input],
    args: &BenchArgs,
    payload: &[u8],
) -> anyhow::Result<SystemResult> {
    // Provision and load before the host starts, as for the baseline, so
    // both are timed on a full backlog from their first pull.
    for (id, tenant) in &config.tenants {
        let mut report = sluice::source::Report::default();
        sluice::source::ensure_tenant(js, &config, id, tenant, true, &mut report)
            .await
            .with_context(|| format!("provisioning bench tenant {id}"))?;
    }
    preload(js, inputs, args.messages, payload).await?;
    let service = Service::start(config).await?;
    // Taken once the host has loaded its plugins, as the baseline's is
    // once its loops are spawned: loading is not per-message work (it was
    // 0.18 s, 7 % of a 200,000-message phase).
    let cpu = Cpu::now(args.server_pid);
    let settled = |service: &Service| -> u64 {
        service
            .stats()
            .values()
            .map(|s| s.acked + s.dead_lettered)
            .sum()
    };
    let timeline = wait_done(args.messages, "sluice", || settled(&service)).await?;
    let tenants = service.tenants();
    let processed = settled(&service);
    let (first, last) = span_of(tenants.values().map(|t| &*t.stats));
    let mut result = SystemResult {
        processed,
        timeline,
        msgs_per_sec: per_second(processed, first, last),
        ..Default::default()
    };
    cpu.fill(&mut result);
    for t in tenants.values() {
        reset_latency(&t.stats);
    }
    let rate = (result.msgs_per_sec * args.latency_load).max(1.0);
    let before = settled(&service);
    let sent = publish_apart(js, url, inputs, rate, args.latency_phase, payload).await?;
    wait_done(before + sent, "", || settled(&service)).await?;
    let merged = TenantStats::default();
    if let Ok(mut into) = merged.latency.lock() {
        let mut trace = Vec::new();
        for t in tenants.values() {
            if let Ok(mut l) = t.stats.latency.lock() {
                let _ = into.histogram.add(&l.histogram);
                trace.extend(l.trace.take().unwrap_or_default());
            }
        }
        trace.sort_unstable();
        into.trace = Some(trace);
    }
    fill_latency(&mut result, &merged, rate, sent, args.trace.is_some());
    service.shutdown().await;
    Ok(result)
}

/// Wait until `done()` reaches `target`, sampling the throughput timeline;
/// fails when nothing moves for `STALL`.
async fn wait_done(
    target: u64,
    label: &str,
    done: impl Fn() -> u64,
) -> anyhow::Result<Vec<(f64, f64)>> {
    let bar = if label.is_empty() {
        ProgressBar::hidden()
    } else {
        progress(target, label)
    };
    let started = Instant::now();
    let mut timeline = Vec::new();
    let (mut last, mut last_change) = (done(), Instant::now());
    let mut prev = (0.0, last);
    while last < target {
        tokio::time::sleep(SAMPLE).await;
        let now = done();
        let t = started.elapsed().as_secs_f64();
        if now > prev.1 || !timeline.is_empty() {
            timeline.push((t, (now - prev.1) as f64 / (t - prev.0)));
        }
        prev = (t, now);
        bar.set_position(now.min(target));
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() > STALL {
            bar.abandon();
            bail!("stalled at {now} of {target} messages");
        }
    }
    bar.finish_and_clear();
    Ok(timeline)
}

fn progress(total: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>9} [{bar:40}] {pos}/{len} {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_owned());
    bar
}

fn span_of<'a>(stats: impl Iterator<Item = &'a TenantStats>) -> (u64, u64) {
    let mut first = u64::MAX;
    let mut last = 0;
    for s in stats {
        let f = s.first_received_us.load(Ordering::Relaxed);
        if f > 0 {
            first = first.min(f);
        }
        last = last.max(s.last_settled_us.load(Ordering::Relaxed));
    }
    (first, last)
}

fn per_second(n: u64, first_us: u64, last_us: u64) -> f64 {
    if last_us <= first_us || first_us == u64::MAX {
        return 0.0;
    }
    n as f64 / ((last_us - first_us) as f64 / 1e6)
}

fn rate_of(stats: &TenantStats, n: u64) -> f64 {
    let (first, last) = span_of(std::iter::once(stats));
    per_second(n, first, last)
}

/// Start a latency phase: an empty histogram, and every sample traced.
fn reset_latency(stats: &TenantStats) {
    if let Ok(mut l) = stats.latency.lock() {
        l.histogram.reset();
        l.trace = Some(Vec::new());
    }
}

/// Window of the latency-over-time series.
const WINDOW_US: u64 = 100_000;

/// The p99 of each [`WINDOW_US`] of a latency trace, by when the samples
/// were recorded: (seconds since the first sample, ms). A p99 over the
/// whole phase cannot tell a steady tail from a few stalls; this can.
fn p99_over_time(trace: &[(u64, u64)]) -> Vec<(f64, f64)> {
    let Some(start) = trace.iter().map(|s| s.0).min() else {
        return Vec::new();
    };
    let mut windows: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for &(at, micros) in trace {
        windows
            .entry((at - start) / WINDOW_US)
            .or_default()
            .push(micros);
    }
    windows
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_unstable();
            let p99 = v[(v.len() * 99 / 100).min(v.len() - 1)];
            ((k * WINDOW_US) as f64 / 1e6, p99 as f64 / 1000.0)
        })
        .collect()
}

/// Fill `result`'s latency figures from a finished latency phase; its
/// trace is kept only for `--trace`.
fn fill_latency(
    result: &mut SystemResult,
    stats: &TenantStats,
    rate: f64,
    sent: u64,
    keep_trace: bool,
) {
    result.latency_rate = rate;
    result.latency_messages = sent;
    if let Ok(mut l) = stats.latency.lock() {
        let h = &l.histogram;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        result.p50_ms = ms(0.50);
        result.p90_ms = ms(0.90);
        result.p99_ms = ms(0.99);
        result.max_ms = h.max() as f64 / 1000.0;
        result.curve = [0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 100.0]
            .iter()
            .map(|p| (*p, ms(p / 100.0)))
            .collect();
        let trace = l.trace.take().unwrap_or_default();
        result.p99_over_time = p99_over_time(&trace);
        if keep_trace {
            result.trace = trace;
        }
    }
}

/// CPU time of this process and of the server (its /proc name and its
/// time), at the start of a phase.
struct Cpu {
    process: f64,
    server: Option<(String, f64)>,
}

impl Cpu {
    fn now(server: Option<u32>) -> Self {
        Cpu {
            process: cpu_seconds("self"),
            server: server.map(|pid| {
                let pid = pid.to_string();
                let spent = cpu_seconds(&pid);
                (pid, spent)
            }),
        }
    }

    /// The CPU spent since `self`, in total and per settled message.
    fn fill(&self, result: &mut SystemResult) {
        let per_msg = |s: f64| s / result.processed.max(1) as f64 * 1e6;
        result.cpu_seconds = cpu_seconds("self") - self.process;
        result.cpu_us_per_msg = per_msg(result.cpu_seconds);
        if let Some((pid, before)) = &self.server {
            let spent = cpu_seconds(pid) - before;
            result.server_cpu_seconds = Some(spent);
            result.server_cpu_us_per_msg = Some(per_msg(spent));
        }
    }
}

/// User plus system CPU time of process `pid` ("self" for this one), from
/// /proc (Linux); 0 where it cannot be read.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start at
    // the last ')'; utime and stime are fields 14 and 15, in clock ticks of
    // 1/100 s on Linux.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(11) + tick(12)) / 100.0
}

/// Peak resident set size of this process, MiB (VmHWM).
fn peak_rss_mib() -> f64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0.0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn print_table(r: &Report) {
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
fn trace_csv(r: &Report) -> String {
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

/// One line of a plot: name, colour, points.
type Series<'a> = (&'a str, &'a str, &'a [(f64, f64)]);

/// Three panels as SVG: throughput over time, latency by percentile, p99
/// over time. Drawn by hand: two polylines per panel do not justify a
/// plotting library and its font stack.
fn plot(r: &Report) -> String {
    let (w, h) = (800.0, 300.0);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{}" font-family="sans-serif" font-size="12">"#,
        h * 3.0 + 60.0
    );
    let panel = |svg: &mut String,
                 top: f64,
                 title: &str,
                 xlabel: &str,
                 ylabel: &str,
                 series: &[Series<'_>]| {
        let (left, right, bottom) = (60.0, w - 20.0, top + h - 30.0);
        let all = series.iter().flat_map(|(_, _, pts)| pts.iter());
        let xmax = all.clone().map(|p| p.0).fold(0.0_f64, f64::max).max(1e-9);
        let ymax = all.map(|p| p.1).fold(0.0_f64, f64::max).max(1e-9);
        let _ = write!(
            svg,
            r#"<text x="{left}" y="{}" font-weight="bold">{title}</text><line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/><line x1="{left}" y1="{}" x2="{left}" y2="{bottom}" stroke="black"/><text x="{}" y="{}">{xlabel}</text><text x="5" y="{}">{ylabel}</text><text x="5" y="{}">{ymax:.1}</text>"#,
            top + 15.0,
            top + 25.0,
            (left + right) / 2.0,
            bottom + 20.0,
            top + 40.0,
            top + 30.0
        );
        for (i, (name, color, pts)) in series.iter().enumerate() {
            let points: Vec<String> = pts
                .iter()
                .map(|(x, y)| {
                    format!(
                        "{:.1},{:.1}",
                        left + x / xmax * (right - left),
                        bottom - y / ymax * (bottom - top - 25.0)
                    )
                })
                .collect();
            let _ = write!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/><text x="{}" y="{}" fill="{color}">{name}</text>"#,
                points.join(" "),
                right - 120.0,
                top + 15.0 + 15.0 * i as f64
            );
        }
    };
    panel(
        &mut svg,
        0.0,
        "Throughput over time",
        "seconds",
        "msg/s",
        &[
            ("sluice", "#1f77b4", &r.sluice.timeline),
            ("baseline", "#ff7f0e", &r.baseline.timeline),
        ],
    );
    panel(
        &mut svg,
        h + 20.0,
        &format!(
            "Latency at {:.0} % of peak throughput",
            r.latency_load * 100.0
        ),
        "percentile",
        "ms",
        &[
            ("sluice", "#1f77b4", &r.sluice.curve),
            ("baseline", "#ff7f0e", &r.baseline.curve),
        ],
    );
    panel(
        &mut svg,
        2.0 * (h + 20.0),
        "Latency p99 per 100 ms, over the latency phase",
        "seconds",
        "ms",
        &[
            ("sluice", "#1f77b4", &r.sluice.p99_over_time),
            ("baseline", "#ff7f0e", &r.baseline.p99_over_time),
        ],
    );
    svg.push_str("</svg>\n");
    svg
}
