//! The baseline: plain async-nats code doing the host's JetStream work
//! (the same pull batching and in-flight limit, publish with a message id,
//! await the PubAck, ack) with no WebAssembly and no pipeline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use sluice::stats::{TenantStats, now_micros};

use super::BenchArgs;
use super::load::{Input, preload, publish_apart};
use super::measure::{fill_latency, rate_of, reset_latency, wait_done};
use super::procfs::Cpu;
use super::report::SystemResult;

pub(super) struct BaselineSetup {
    inputs: Vec<Input>,
    consumers: Vec<(consumer::PullConsumer, String)>,
}

impl BaselineSetup {
    pub(super) async fn new(
        js: &jetstream::Context,
        run_id: &str,
        tenants: usize,
    ) -> anyhow::Result<Self> {
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

    pub(super) fn streams(&self) -> Vec<String> {
        self.inputs.iter().flat_map(|i| i.streams.clone()).collect()
    }
}

/// Counters of a baseline run.
struct BaseStats {
    done: AtomicU64,
    stats: TenantStats,
}

pub(super) async fn run_baseline(
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
    let sent = publish_apart(js, url, &setup.inputs, rate, args.latency_phase(), payload).await?;
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
