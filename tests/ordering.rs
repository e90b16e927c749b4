//! Per-key ordering: messages with the same key are processed and settled
//! in stream order, through retries held in place, a host killed with
//! messages in flight, and the redeliveries that follow.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sluice::config::Config;
use sluice::service::Service;

use crate::faults::Proc;
use crate::support::{
    config_file, consumer, js, nats, publish, read_stream, stream_len, verdict_config,
};

const KEYS: usize = 5;
const PER_KEY: usize = 200;
const LIMIT: Duration = Duration::from_secs(180);

/// Input `i`: key `k{i % KEYS}`, its `i / KEYS`-th message. Every seventh
/// fails its first two deliveries, every eleventh takes 3 ms of work; the
/// others pass through.
fn input(i: usize) -> (String, String) {
    let (key, n) = (i % KEYS, i / KEYS);
    let verb = if i % 7 == 3 {
        "flaky:3"
    } else if i % 11 == 5 {
        "work:3"
    } else {
        "next"
    };
    (format!("acme.in.k{key}"), format!("{verb}|k{key}|{n}"))
}

/// The outputs of each key, in the order the output stream stored them.
async fn outputs_by_key(js: &async_nats::jetstream::Context) -> BTreeMap<String, Vec<usize>> {
    let mut by_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for m in read_stream(js, "ACME_OUT").await {
        let text = String::from_utf8_lossy(&m.payload).into_owned();
        let mut parts = text.split('|').skip(1);
        let (Some(key), Some(n)) = (parts.next(), parts.next()) else {
            panic!("output {text:?} is not an input");
        };
        assert_eq!(m.subject.as_str(), format!("acme.out.{key}"), "{text}");
        by_key
            .entry(key.to_owned())
            .or_default()
            .push(n.parse().unwrap());
    }
    by_key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_messages_settle_in_stream_order_through_retries_and_a_host_kill() {
    let server = nats();
    let url = server.url();
    let text = verdict_config("5s", 10, "100ms").replace(
        "pipeline = [{ plugin = \"verdict\" }]",
        "pipeline = [{ plugin = \"verdict\" }]\nordering = \"subject\"\nmax_in_flight = 64",
    );
    assert!(text.contains("ordering"), "{text}");
    let (dir, path) = config_file(&text, &url);
    crate::faults::provision(&path, &url).await;
    let js = js(&url).await;
    let total = KEYS * PER_KEY;

    // The first host takes part of the stream and is killed with
    // messages in flight, some held for a retry.
    for i in 0..total / 2 {
        let (subject, payload) = input(i);
        publish(&js, &subject, &payload).await;
    }
    let mut first = Proc::run(&path, dir.path().join("first.log"));
    let started = Instant::now();
    loop {
        if stream_len(&js, "ACME_OUT").await >= 100 {
            break;
        }
        assert!(started.elapsed() < LIMIT, "no progress: {}", first.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    for i in total / 2..total {
        let (subject, payload) = input(i);
        publish(&js, &subject, &payload).await;
    }

    // The second one finds what the first left pending: redeliveries.
    let service = Service::start(Config::load(&path).unwrap()).await.unwrap();
    let started = Instant::now();
    while stream_len(&js, "ACME_OUT").await < total as u64 && started.elapsed() < LIMIT {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let by_key = outputs_by_key(&js).await;
    for (key, ns) in &by_key {
        let expected: Vec<usize> = (0..PER_KEY).collect();
        assert!(
            *ns == expected,
            "{key}: outputs out of order or missing: {:?}",
            ns.windows(2).find(|w| w[0] + 1 != w[1])
        );
    }
    assert_eq!(by_key.len(), KEYS, "{by_key:?}");
    let stats = service.stats()["acme"];
    assert!(stats.retried > 0, "retries were held in place: {stats:?}");
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    let mut c = consumer(&js, "ACME").await;
    let info = c.info().await.unwrap();
    assert!(
        info.delivered.consumer_sequence > total as u64,
        "the kill left messages to redeliver: {info:?}"
    );
    eprintln!(
        "ordering: {total} inputs over {KEYS} keys, {} deliveries, {} retries held in place on the second host",
        info.delivered.consumer_sequence, stats.retried
    );
    service.shutdown().await;
}
