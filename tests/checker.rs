//! The one proof every fault test ends with. Each input carries a unique id
//! in its payload (`{"id":N}` becomes one output, `dead:N` a dead letter,
//! through the `verdict` guest); at the end, per tenant: the input ids are
//! exactly the output ids plus the dead-letter ids, no id is in both, no
//! (id, subject) is stored twice, and the consumer has nothing pending or
//! unacked.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream;
use serde_json::Value;

use futures::StreamExt as _;

use crate::support::stream_len;

/// One tenant's streams and consumer.
#[derive(Debug, Clone)]
pub struct Flow {
    /// Tenant id; its inputs go to `<tenant>.in.x`.
    pub tenant: String,
    /// Input stream.
    pub input: String,
    /// Output stream.
    pub output: String,
    /// Dead-letter stream.
    pub dead: String,
    /// Durable consumer on the input stream.
    pub consumer: String,
}

impl Flow {
    /// Tenant `id` with streams `ID`, `ID_OUT`, `ID_DLQ` and consumer
    /// `sluice` (the layout of [`crate::support::tenant_block`]).
    pub fn of(id: &str) -> Flow {
        let upper = id.to_uppercase();
        Flow {
            tenant: id.to_owned(),
            input: upper.clone(),
            output: format!("{upper}_OUT"),
            dead: format!("{upper}_DLQ"),
            consumer: "sluice".to_owned(),
        }
    }
}

/// Every tenth input asks to be dead-lettered, so both settle paths cross
/// every fault.
pub fn is_dead(i: u64) -> bool {
    i % 10 == 9
}

/// Input `i`'s payload.
pub fn payload(i: u64) -> String {
    if is_dead(i) {
        format!("dead:{i}")
    } else {
        format!(r#"{{"id":{i}}}"#)
    }
}

/// The id a stored input, output or dead letter carries.
fn id_of(payload: &[u8]) -> Option<u64> {
    let mut text = std::str::from_utf8(payload).ok()?;
    // A slow input (`sleep:MS:REST`, for the `hostile` guest) carries its
    // id in REST.
    if let Some(rest) = text.strip_prefix("sleep:") {
        text = rest.split_once(':')?.1;
    }
    if let Some(n) = text.strip_prefix("dead:") {
        return n.parse().ok();
    }
    serde_json::from_str::<Value>(text).ok()?["id"].as_u64()
}

/// Publish inputs `ids` for `flow`, a window at a time, each under its own
/// `Nats-Msg-Id`, retrying a window until JetStream confirms all of it: a
/// retry after a lost PubAck is dropped as a duplicate, so the input
/// stream holds every id exactly once even across a fault.
pub async fn publish(js: &jetstream::Context, flow: &Flow, ids: std::ops::Range<u64>) {
    publish_with(js, flow, ids, payload).await;
}

/// [`publish`] with payloads from `payload`.
pub async fn publish_with(
    js: &jetstream::Context,
    flow: &Flow,
    ids: std::ops::Range<u64>,
    payload: impl Fn(u64) -> String,
) {
    let subject = format!("{}.in.x", flow.tenant);
    let ids: Vec<u64> = ids.collect();
    for window in ids.chunks(256) {
        let started = Instant::now();
        loop {
            let mut acks = Vec::with_capacity(window.len());
            let mut failed = None;
            for &i in window {
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("in-{i}").as_str());
                match js
                    .publish_with_headers(subject.clone(), headers, payload(i).into())
                    .await
                {
                    Ok(ack) => acks.push(ack.into_future()),
                    Err(e) => {
                        failed = Some(e.to_string());
                        break;
                    }
                }
            }
            for ack in futures::future::join_all(acks).await {
                if let Err(e) = ack {
                    failed = failed.or(Some(e.to_string()));
                }
            }
            match failed {
                None => break,
                Some(e) => {
                    assert!(
                        started.elapsed() < Duration::from_secs(120),
                        "publishing inputs for {}: {e}",
                        flow.tenant
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// What one tenant's streams hold.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Inputs stored.
    pub inputs: usize,
    /// Outputs stored.
    pub outputs: usize,
    /// Dead letters stored.
    pub dead: usize,
    /// Input ids in neither outputs nor dead letters.
    pub lost: Vec<u64>,
    /// Ids stored more than once with the same subject (outputs or dead
    /// letters).
    pub duplicated: Vec<u64>,
    /// Ids both output and dead-lettered.
    pub overlap: Vec<u64>,
    /// Stored messages without an id (should be none).
    pub unknown: usize,
}

/// Every message of stream `name` as (subject, payload), read through an
/// ephemeral consumer (one request per message would take minutes for
/// these streams).
pub async fn read_all(js: &jetstream::Context, name: &str) -> Vec<(String, bytes::Bytes)> {
    use jetstream::consumer::{AckPolicy, pull};
    let mut stream = js.get_stream(name).await.unwrap();
    let total = stream.info().await.unwrap().state.messages as usize;
    let mut out = Vec::with_capacity(total);
    if total == 0 {
        return out;
    }
    let consumer = stream
        .create_consumer(pull::Config {
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    while out.len() < total {
        let next = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .unwrap_or_else(|_| panic!("reading {name}: {} of {total}", out.len()))
            .unwrap_or_else(|| panic!("reading {name}: the consumer ended"));
        match next {
            Ok(m) => out.push((m.subject.to_string(), m.payload.clone())),
            // A missed heartbeat or a leader change while a loaded cluster
            // settles: the stream pulls again and carries on (no acks, so
            // nothing comes twice).
            Err(e) => eprintln!("reading {name}: {e}; carrying on"),
        }
    }
    out
}

/// Read `flow`'s streams and compare them.
pub async fn tally(js: &jetstream::Context, flow: &Flow) -> Tally {
    let inputs = read_all(js, &flow.input).await;
    let outputs = read_all(js, &flow.output).await;
    let dead = read_all(js, &flow.dead).await;
    let mut t = Tally {
        inputs: inputs.len(),
        outputs: outputs.len(),
        dead: dead.len(),
        ..Tally::default()
    };
    let mut seen: HashMap<(u64, String), usize> = HashMap::new();
    let mut kinds: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
    for ((subject, payload), is_output) in outputs
        .iter()
        .map(|m| (m, true))
        .chain(dead.iter().map(|m| (m, false)))
    {
        let Some(id) = id_of(payload) else {
            t.unknown += 1;
            continue;
        };
        *seen.entry((id, subject.clone())).or_default() += 1;
        let k = kinds.entry(id).or_default();
        if is_output {
            k.0 += 1;
        } else {
            k.1 += 1;
        }
    }
    t.duplicated = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|((id, _), _)| *id)
        .collect();
    t.duplicated.sort_unstable();
    t.overlap = kinds
        .iter()
        .filter(|(_, (o, d))| *o > 0 && *d > 0)
        .map(|(id, _)| *id)
        .collect();
    for (_, payload) in &inputs {
        match id_of(payload) {
            Some(id) if !kinds.contains_key(&id) => t.lost.push(id),
            Some(_) => {}
            None => t.unknown += 1,
        }
    }
    t
}

/// Whether `flow`'s consumer has nothing pending or unacked.
async fn drained(js: &jetstream::Context, flow: &Flow) -> Option<jetstream::consumer::Info> {
    let stream = js.get_stream(&flow.input).await.ok()?;
    stream.consumer_info(&flow.consumer).await.ok()
}

/// Wait (up to `limit`, without failing) until each flow has `n` results
/// stored and a drained consumer; returns how long that took.
pub async fn wait_settled(
    js: &jetstream::Context,
    flows: &[Flow],
    n: u64,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    'wait: while started.elapsed() < limit {
        for f in flows {
            let stored = stream_len(js, &f.output).await + stream_len(js, &f.dead).await;
            let idle = drained(js, f)
                .await
                .is_some_and(|i| i.num_ack_pending == 0 && i.num_pending == 0);
            if stored < n || !idle {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue 'wait;
            }
        }
        break;
    }
    started.elapsed()
}

/// The proof: for each flow, `n` inputs, every one in exactly one of
/// outputs and dead letters, nothing stored twice, the consumer drained.
/// Returns the tallies (for figures in a closing note).
pub async fn assert_nothing_lost(js: &jetstream::Context, flows: &[Flow], n: u64) -> Vec<Tally> {
    let mut tallies = Vec::new();
    for f in flows {
        let t = tally(js, f).await;
        let dead = (0..n).filter(|i| is_dead(*i)).count();
        let want = Tally {
            inputs: n as usize,
            outputs: n as usize - dead,
            dead,
            ..Tally::default()
        };
        let shown = |v: &[u64]| format!("{} (first {:?})", v.len(), &v[..v.len().min(10)]);
        assert!(
            t == want,
            "tenant {}: {} inputs, {} outputs, {} dead letters (want {}/{}/{}); lost {}, duplicated {}, overlap {}, unknown {}",
            f.tenant,
            t.inputs,
            t.outputs,
            t.dead,
            want.inputs,
            want.outputs,
            want.dead,
            shown(&t.lost),
            shown(&t.duplicated),
            shown(&t.overlap),
            t.unknown
        );
        let info = drained(js, f).await.expect("consumer info");
        assert_eq!(
            (info.num_ack_pending, info.num_pending),
            (0, 0),
            "tenant {}: nothing unacked or pending",
            f.tenant
        );
        tallies.push(t);
    }
    tallies
}

/// (outputs, dead letters, lost, duplicated) per tally, for a fault
/// test's figures line.
pub fn figures(tallies: &[Tally]) -> Vec<(usize, usize, usize, usize)> {
    tallies
        .iter()
        .map(|t| (t.outputs, t.dead, t.lost.len(), t.duplicated.len()))
        .collect()
}
