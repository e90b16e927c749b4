//! The load: where each tenant's inputs go, the backlog published before a
//! throughput phase, the paced load generator of a latency phase (with its
//! check that every message was stored), and deleting a system's streams.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream;

use super::measure::progress;

/// How long the input streams may take to store the last of what the load
/// generator sent.
const STORE_WAIT: Duration = Duration::from_secs(5);

/// Delete a finished system's streams. Best effort: a stream left behind
/// costs the next system some memory, not its correctness.
pub(super) async fn delete_streams(
    js: &jetstream::Context,
    names: impl IntoIterator<Item = String>,
) {
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
pub(super) struct Input {
    pub(super) subject: String,
    pub(super) streams: Vec<String>,
}

/// Publish `n` messages spread over `inputs`, awaiting PubAcks in windows.
pub(super) async fn preload(
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
pub(super) async fn publish_apart(
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
