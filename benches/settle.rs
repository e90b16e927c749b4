//! The settle path against a real nats-server: for each pulled message,
//! publish its output with a `Nats-Msg-Id`, await the PubAck, then ack the
//! source — what `Sink::settle` does for a `publish` outcome. Messages are
//! settled concurrently, a pull batch at a time, as the host does. Preloading
//! the inputs is not timed. Needs `nats-server` (scripts/setup installs it
//! into .tools/venv/bin).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// The allocator the `sluice` binary uses, so these figures match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use criterion::{Criterion, Throughput, criterion_main};
use futures::StreamExt;
use sluice::nats_server::NatsServer;
use sluice::pipeline::Outcome;
use sluice::sink::Sink;
use sluice::stats::TenantStats;
use sluice::{Message, Origin};

/// Messages pulled and settled together, as one pull batch of the host.
const BATCH: usize = 256;

fn nats_server() -> PathBuf {
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/nats-server");
    if local.is_file() {
        local
    } else {
        PathBuf::from("nats-server")
    }
}

fn settle(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = NatsServer::start_with(&nats_server(), None).unwrap();
    let (js, consumer) = rt.block_on(async {
        let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
        let input = js
            .create_stream(stream::Config {
                name: "IN".into(),
                subjects: vec!["in.>".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        js.create_stream(stream::Config {
            name: "OUT".into(),
            subjects: vec!["out.>".into()],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .unwrap();
        let consumer: consumer::PullConsumer = input
            .create_consumer(consumer::pull::Config {
                durable_name: Some("bench".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                max_ack_pending: 100_000,
                ..Default::default()
            })
            .await
            .unwrap();
        (js, consumer)
    });
    let sink = Arc::new(Sink::new(
        &js,
        Arc::from("bench"),
        "bench.dlq".into(),
        vec![Duration::from_secs(1)],
        5,
        Duration::from_secs(3600),
        256,
        Arc::new(TenantStats::default()),
    ));
    let payload = vec![b'x'; 256];

    let mut group = c.benchmark_group("settle");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.bench_function("publish-await-pubacks-then-ack", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                // Await PubAcks in windows: the context holds at most 5,000
                // unconfirmed publishes, and a permit only comes back when
                // its future is awaited.
                let mut pending = Vec::new();
                for _ in 0..iters {
                    pending.push(js.publish("in.x", payload.clone().into()).await.unwrap());
                    if pending.len() == 1000 {
                        for p in pending.drain(..) {
                            p.await.unwrap();
                        }
                    }
                }
                for p in pending {
                    p.await.unwrap();
                }
                let started = Instant::now();
                let mut left = iters as usize;
                while left > 0 {
                    let mut batch = consumer
                        .batch()
                        .max_messages(left.min(BATCH))
                        .expires(Duration::from_secs(5))
                        .messages()
                        .await
                        .unwrap();
                    let mut settling = Vec::new();
                    while let Some(Ok(msg)) = batch.next().await {
                        let sink = sink.clone();
                        settling.push(tokio::spawn(async move {
                            let info = msg.info().unwrap();
                            let origin = Origin {
                                tenant: "bench".into(),
                                stream: info.stream.to_owned(),
                                stream_seq: info.stream_sequence,
                                delivered: 1,
                                published_us: 0,
                            };
                            let source = Message {
                                subject: msg.subject.to_string(),
                                headers: sluice::headers::header_list(msg.headers.as_ref()),
                                payload: msg.payload.clone(),
                            };
                            let mut output = source.clone();
                            output.subject = "out.x".into();
                            output.headers.push((
                                "Nats-Msg-Id".into(),
                                format!("IN:{}:0", origin.stream_seq),
                            ));
                            let outcome = Outcome::Publish {
                                outputs: vec![output],
                                plugin: "bench@0".into(),
                            };
                            sink.settle(&msg, &origin, &source, outcome).await
                        }));
                    }
                    left -= settling.len();
                    for s in settling {
                        s.await.unwrap();
                    }
                }
                started.elapsed()
            })
        })
    });
    group.finish();
    drop(server);
}

// The macro generates an undocumented function.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(settle_path, super::settle);
}
criterion_main!(group::settle_path);
