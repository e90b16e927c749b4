//! Settling a message: publish its outputs or its dead letter, wait for
//! JetStream to confirm them, and only then ack (or term) the source. This is
//! the one place an [`Outcome`] becomes `Ack`, `Nak(delay)` or `Term`.
//!
//! Outputs carry `Nats-Msg-Id = <tenant>:<stream>:<seq>:<index>` (set by the
//! pipeline) and dead letters `<tenant>:<stream>:<seq>:dlq`, so a
//! redelivered message re-published inside the stream's duplicate window is
//! dropped by JetStream: at-least-once input, effectively-once output.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures::future::join_all;

use crate::headers::{
    DELIVERED_HEADER, MSG_ID_HEADER, PLUGIN_HEADER, REASON_HEADER, SOURCE_HEADER_PREFIX,
    SOURCE_HEADERS_HEADER, SOURCE_SEQ_HEADER, SOURCE_STREAM_HEADER, SOURCE_SUBJECT_HEADER,
    TENANT_HEADER, TRUNCATED_HEADER, header_bytes, header_map, host_owned,
};
use crate::message::{Message, Origin};
use crate::pipeline::Outcome;
use crate::stats::TenantStats;

/// Room left in a dead letter for the protocol's own framing (the `HPUB`
/// line's sizes, `NATS/1.0`, line ends) beyond the headers counted.
const FRAMING: usize = 64;

/// Outputs of one message published before their PubAcks are awaited. A
/// fan-out is sent in windows of this size, so the number of PubAcks a
/// tenant waits for is bounded by `max_in_flight` × this, and the sink's
/// publish context allows that many: a large fan-out can never wait on
/// PubAck permits that only its own unsent window would free.
pub const PUBLISH_WINDOW: usize = 128;

/// Longest `Sluice-Reason` kept; a guest's reason is its own text, and a
/// header is no place for a novel.
const MAX_REASON: usize = 1024;

/// What was done to the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Acked: outputs confirmed, or nothing to publish.
    Acked,
    /// Nak'ed for redelivery after this delay.
    Naked(Duration),
    /// Dead letter confirmed, source terminated.
    Termed,
}

/// The backoff delay for a delivery: the n-th entry, the last one repeating.
pub fn backoff_for(backoff: &[Duration], delivered: u32) -> Duration {
    let i = usize::try_from(delivered.saturating_sub(1)).unwrap_or(usize::MAX);
    backoff
        .get(i)
        .or(backoff.last())
        .copied()
        .unwrap_or(Duration::from_secs(1))
}

/// On the last allowed delivery a retry (asked for or caused by a guest
/// failure) becomes a dead letter: the host, not the server, gives up, so
/// the message is kept with its reason.
pub fn give_up_on_last_delivery(outcome: Outcome, delivered: u32, max_deliver: u32) -> Outcome {
    match outcome {
        Outcome::Retry {
            failure, plugin, ..
        } if delivered >= max_deliver => {
            let why = match failure {
                Some(f) => format!("handler failed ({f})"),
                None => "handler asked to retry".to_owned(),
            };
            Outcome::DeadLetter {
                reason: format!("gave up after {delivered} deliveries: {why}"),
                plugin,
                limit: None,
            }
        }
        other => other,
    }
}

/// Publishes and settles for one tenant.
pub struct Sink {
    js: jetstream::Context,
    tenant: Arc<str>,
    dead_letter: String,
    backoff: Vec<Duration>,
    max_deliver: u32,
    /// No nak asks for a longer delay than this.
    max_retry_delay: Duration,
    stats: Arc<TenantStats>,
    /// Retries are held in place, not nak'ed (see [`Sink::holding_retries`]).
    hold_retries: bool,
}

impl Sink {
    /// A sink publishing on `js`'s connection, for a tenant with at most
    /// `max_in_flight` messages in flight.
    #[allow(clippy::too_many_arguments)] // One tenant's settle settings.
    pub fn new(
        js: &jetstream::Context,
        tenant: Arc<str>,
        dead_letter: String,
        backoff: Vec<Duration>,
        max_deliver: u32,
        max_retry_delay: Duration,
        max_in_flight: usize,
        stats: Arc<TenantStats>,
    ) -> Self {
        let client = js.client();
        // Room for every window of every message in flight; async-nats's
        // default of 5,000 would let 40 fan-outs deadlock each other.
        let inflight = max_in_flight
            .saturating_mul(PUBLISH_WINDOW)
            .clamp(PUBLISH_WINDOW, tokio::sync::Semaphore::MAX_PERMITS);
        let js = jetstream::ContextBuilder::new()
            .timeout(crate::topology::API_TIMEOUT)
            .max_ack_inflight(inflight)
            .build(client);
        Sink {
            js,
            tenant,
            dead_letter,
            backoff,
            max_deliver,
            max_retry_delay,
            stats,
            hold_retries: false,
        }
    }

    /// A sink that holds a message to be retried instead of a nak: it
    /// waits out the delay and returns [`Settled::Naked`] without telling
    /// the server, for the caller to run the message again in place (an
    /// ordered tenant's, so a later message of its key cannot overtake it).
    pub fn holding_retries(mut self) -> Self {
        self.hold_retries = true;
        self
    }

    /// Carry out `outcome` for `msg`, whose origin and content are `origin`
    /// and `source`.
    pub async fn settle(
        &self,
        msg: &jetstream::Message,
        origin: &Origin,
        source: &Message,
        outcome: Outcome,
    ) -> Settled {
        let tenant = &*self.tenant;
        let (stream, seq) = (&origin.stream, origin.stream_seq);
        let retry_delay = backoff_for(&self.backoff, origin.delivered).min(self.max_retry_delay);
        match outcome {
            Outcome::Publish { outputs, plugin } if self.oversized(&outputs).is_some() => {
                let (index, size, max) = self.oversized(&outputs).unwrap_or_default();
                self.stats.count_limit("max_payload");
                // The server refuses it on every delivery: retrying cannot
                // help, so it is a dead letter now, not after max_deliver.
                let reason = format!(
                    "output {index} is {size} bytes with its headers, over the server's max_payload of {max} bytes"
                );
                self.dead_letter(msg, origin, source, &reason, &plugin)
                    .await
            }
            Outcome::Publish { outputs, plugin } => match self.publish_all(&outputs).await {
                Ok(stored) => self.published(msg, origin, stored).await,
                Err(e) => {
                    TenantStats::bump(&self.stats.publish_errors, 1);
                    if origin.delivered >= self.max_deliver
                        && e.is_unroutable()
                        && self.no_stream_captures(&outputs).await
                    {
                        // No stream captures the output subject and none
                        // was stored: a configuration problem that waiting
                        // will not fix. The message is kept whole, with
                        // its reason, rather than held for ever.
                        tracing::warn!(tenant, stream, seq, error = %e, "no stream stores the outputs, on the last delivery; dead-lettering");
                        let reason = format!(
                            "gave up after {} deliveries: publishing outputs failed: {e}",
                            origin.delivered
                        );
                        return self
                            .dead_letter(msg, origin, source, &reason, &plugin)
                            .await;
                    }
                    if e.stored > 0 || origin.delivered >= self.max_deliver {
                        // Some outputs are stored (or, on the last delivery,
                        // may be): a dead letter now would leave the message
                        // half-published, and a nak would hand it to a
                        // redelivery that may run another plugin version
                        // (a hot swap) whose outputs under the same ids
                        // would be dropped as duplicates of these, or to no
                        // delivery at all. Keep the message (the tenant
                        // sends in-progress acks) and publish the same
                        // outputs, same ids, until they are all stored.
                        tracing::error!(tenant, stream, seq, error = %e, "publishing outputs failed part-way or on the last delivery; holding the message and retrying until they are all stored");
                        let stored = self.publish_until_stored(&outputs, None).await;
                        return self.published(msg, origin, stored).await;
                    }
                    tracing::warn!(tenant, stream, seq, error = %e, "publishing outputs failed; nak, redelivery re-publishes with the same message ids");
                    self.nak(msg, retry_delay).await
                }
            },
            Outcome::Ack { .. } => self.ack(msg).await,
            Outcome::Retry {
                delay,
                failure,
                plugin,
            } => {
                if let Some(f) = &failure {
                    tracing::debug!(tenant, stream, seq, plugin, failure = %f, "guest failed; retrying");
                }
                // A guest's delay is its own number: capped, so that
                // `retry(u32::MAX)` waits an hour, not 49 days.
                let delay = delay.unwrap_or(retry_delay).min(self.max_retry_delay);
                self.nak(msg, delay).await
            }
            Outcome::DeadLetter { reason, plugin, .. } => {
                self.dead_letter(msg, origin, source, &reason, &plugin)
                    .await
            }
        }
    }

    /// Whether the server says, when asked, that no stream captures one of
    /// `outputs`' subjects. A publish without a responder looks the same
    /// while a clustered stream elects a new leader; a failed or timed-out
    /// answer is not a no, so the caller holds the message instead of
    /// dead-lettering one that is only waiting for the election.
    async fn no_stream_captures(&self, outputs: &[Message]) -> bool {
        let mut asked: Vec<&str> = Vec::new();
        for m in outputs {
            if asked.contains(&m.subject.as_str()) {
                continue;
            }
            // A bound on the API calls one message can cost; past it the
            // message is held, as for an unknown answer.
            if asked.len() == 16 {
                return false;
            }
            asked.push(&m.subject);
            if let Err(e) = self.js.stream_by_subject(m.subject.as_str()).await
                && e.kind() == jetstream::context::GetStreamByNameErrorKind::NotFound
            {
                return true;
            }
        }
        false
    }

    /// Store the dead letter, then terminate the source; if it cannot be
    /// stored, nak so a later delivery tries again.
    async fn dead_letter(
        &self,
        msg: &jetstream::Message,
        origin: &Origin,
        source: &Message,
        reason: &str,
        plugin: &str,
    ) -> Settled {
        let tenant = &*self.tenant;
        let (stream, seq) = (&origin.stream, origin.stream_seq);
        let letter = [self.dead_letter_message(origin, source, reason, plugin, Vec::new())];
        let (_, duplicates) = match self.publish_all(&letter).await {
            Ok(stored) => stored,
            Err(e) if origin.delivered > self.max_deliver => {
                // The consumer allows max_deliver + 1 deliveries: this is
                // the last one the server will make, so a nak would lose
                // the message. Hold it and keep trying.
                TenantStats::bump(&self.stats.publish_errors, 1);
                tracing::error!(tenant, stream, seq, subject = self.dead_letter, error = %e, "the dead letter could not be stored on the server's last delivery; holding the message and retrying until it is");
                self.publish_until_stored(&letter, None).await
            }
            Err(e) => {
                TenantStats::bump(&self.stats.publish_errors, 1);
                tracing::warn!(tenant, stream, seq, subject = self.dead_letter, error = %e, "publishing the dead letter failed; nak for redelivery");
                let delay = backoff_for(&self.backoff, origin.delivered).min(self.max_retry_delay);
                return self.nak(msg, delay).await;
            }
        };
        TenantStats::bump(&self.stats.dead_lettered, 1);
        TenantStats::bump(&self.stats.duplicates, duplicates);
        tracing::debug!(tenant, stream, seq, plugin, reason, "dead-lettered");
        if let Err(e) = msg.ack_with(AckKind::Term).await {
            tracing::debug!(tenant, stream, seq, error = %e, "term not sent; the redelivery will be deduplicated");
        }
        Settled::Termed
    }

    /// Dead-letter a stored message the client cannot read (found by a
    /// sweep, see [`crate::unreadable`]); returns once it is stored.
    pub async fn dead_letter_unreadable(&self, found: &crate::unreadable::Found, stream: &str) {
        use crate::unreadable::{MAX_HEADER_COPY, escape, parse_headers};
        let tenant = &*self.tenant;
        let m = &found.stored;
        let origin = Origin {
            tenant: tenant.to_owned(),
            stream: stream.to_owned(),
            stream_seq: m.seq,
            delivered: 0,
            published_us: 0,
        };
        let (headers, extra) = match parse_headers(&m.headers) {
            Ok(headers) => (headers, Vec::new()),
            // The block itself is what cannot be read: it goes along
            // whole, escaped, as one header.
            Err(_) => (
                Vec::new(),
                vec![(
                    SOURCE_HEADERS_HEADER.to_owned(),
                    escape(&m.headers, MAX_HEADER_COPY),
                )],
            ),
        };
        let source = Message {
            subject: m.subject.clone(),
            headers,
            payload: m.payload.clone(),
        };
        let reason = format!(
            "unreadable message: {} (the NATS client drops the connection on it)",
            found.problem
        );
        let letter = [self.dead_letter_message(&origin, &source, &reason, "", extra)];
        let (_, duplicates) = match self.publish_all(&letter).await {
            Ok(stored) => stored,
            Err(e) => {
                // A redelivery would drop the connection again: hold the
                // message with in-progress acks until it is stored.
                TenantStats::bump(&self.stats.publish_errors, 1);
                tracing::warn!(tenant, stream, seq = m.seq, subject = self.dead_letter, error = %e, "the dead letter of an unreadable message could not be stored; holding the message and retrying");
                self.publish_until_stored(&letter, Some(&found.ack_subject))
                    .await
            }
        };
        TenantStats::bump(&self.stats.dead_lettered, 1);
        TenantStats::bump(&self.stats.unreadable, 1);
        TenantStats::bump(&self.stats.duplicates, duplicates);
    }

    /// Every output of a message is stored: count them and ack the source.
    async fn published(
        &self,
        msg: &jetstream::Message,
        origin: &Origin,
        (count, duplicates): (u64, u64),
    ) -> Settled {
        TenantStats::bump(&self.stats.published, 1);
        TenantStats::bump(&self.stats.outputs, count - duplicates);
        TenantStats::bump(&self.stats.duplicates, duplicates);
        self.stats.record_latency(micros_since(origin.published_us));
        self.ack(msg).await
    }

    /// Publish `messages` again and again, with the tenant's backoff
    /// (capped by `max_retry_delay`) between tries, until all are stored.
    /// For the server's last delivery, which a nak would give up: the
    /// message is held (and kept from redelivery by in-progress acks) for
    /// as long as its outputs cannot be stored, and the tenant's in-flight
    /// limit turns a broken output stream into back-pressure. A message
    /// the tenant does not hold itself names its ack subject in
    /// `keep_alive`: each try then sends the in-progress ack, at least
    /// every 500 ms (half the shortest ack_wait the config allows).
    async fn publish_until_stored(
        &self,
        messages: &[Message],
        keep_alive: Option<&str>,
    ) -> (u64, u64) {
        let mut attempt: u32 = 1;
        loop {
            let mut delay = backoff_for(&self.backoff, attempt).min(self.max_retry_delay);
            if let Some(ack) = keep_alive {
                let _ = self
                    .js
                    .client()
                    .publish(ack.to_owned(), "+WPI".into())
                    .await;
                delay = delay.min(Duration::from_millis(500));
            }
            tokio::time::sleep(delay).await;
            match self.publish_all(messages).await {
                Ok(stored) => return stored,
                Err(e) => {
                    TenantStats::bump(&self.stats.publish_errors, 1);
                    tracing::warn!(tenant = &*self.tenant, error = %e, attempt, "publishing still fails; retrying");
                }
            }
            attempt = attempt.saturating_add(1);
        }
    }

    /// The first output the server would refuse for its size: its index,
    /// its size with headers, and the server's `max_payload`.
    fn oversized(&self, outputs: &[Message]) -> Option<(usize, usize, usize)> {
        let max = self.max_payload();
        if max == 0 {
            return None;
        }
        outputs.iter().enumerate().find_map(|(i, m)| {
            let size = header_bytes(&m.headers) + m.payload.len() + FRAMING;
            (size > max).then_some((i, size, max))
        })
    }

    /// The size no output or dead letter may exceed: the `max_payload` of
    /// the server the connection is on now (it may change on a reconnect;
    /// before the first INFO, the protocol's default).
    fn max_payload(&self) -> usize {
        self.js.client().max_payload()
    }

    async fn ack(&self, msg: &jetstream::Message) -> Settled {
        // Fire-and-forget: the outputs are already stored under
        // deterministic ids, so a lost ack costs a deduplicated redelivery,
        // not a duplicate.
        if let Err(e) = msg.ack().await {
            tracing::debug!(tenant = &*self.tenant, error = %e, "ack not sent; the message will be redelivered");
        }
        TenantStats::bump(&self.stats.acked, 1);
        Settled::Acked
    }

    async fn nak(&self, msg: &jetstream::Message, delay: Duration) -> Settled {
        if self.hold_retries {
            // The caller sends in-progress acks meanwhile.
            tokio::time::sleep(delay).await;
            TenantStats::bump(&self.stats.retried, 1);
            return Settled::Naked(delay);
        }
        if let Err(e) = msg.ack_with(AckKind::Nak(Some(delay))).await {
            tracing::debug!(tenant = &*self.tenant, error = %e, "nak not sent; the message will be redelivered after ack_wait");
        }
        TenantStats::bump(&self.stats.retried, 1);
        Settled::Naked(delay)
    }

    /// Publish the messages in windows of [`PUBLISH_WINDOW`]: send a
    /// window, then wait for its PubAcks together. Returns how many were
    /// confirmed and how many of those JetStream reported as duplicates.
    /// On an error some may be stored: a retry sends the same ids, which
    /// the server deduplicates.
    async fn publish_all(&self, messages: &[Message]) -> Result<(u64, u64), Unstored> {
        let (mut count, mut duplicates) = (0, 0);
        for window in messages.chunks(PUBLISH_WINDOW) {
            let mut pending = Vec::with_capacity(window.len());
            let mut failed = None;
            for m in window {
                let headers = header_map(&m.headers);
                match self
                    .js
                    .publish_with_headers(m.subject.clone(), headers, m.payload.clone())
                    .await
                {
                    Ok(ack) => pending.push(ack.into_future()),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            // Every PubAck of the window is awaited, even after a failure,
            // so `stored` says how many outputs the server has.
            for ack in join_all(pending).await {
                match ack {
                    Ok(a) => {
                        count += 1;
                        duplicates += u64::from(a.duplicate);
                    }
                    Err(e) => failed = failed.or(Some(e)),
                }
            }
            if let Some(error) = failed {
                return Err(Unstored {
                    stored: count,
                    error,
                });
            }
        }
        Ok((count, duplicates))
    }

    /// The dead letter for `source`. `extra` host headers are added after
    /// Sluice's own; a `delivered` of 0 (not known) leaves out
    /// `Sluice-Delivered`.
    fn dead_letter_message(
        &self,
        origin: &Origin,
        source: &Message,
        reason: &str,
        plugin: &str,
        extra: Vec<(String, String)>,
    ) -> Message {
        // Sluice's own headers are rewritten below; a producer's `Nats-*`
        // headers are kept renamed, never as instructions to the server.
        let mut headers: Vec<(String, String)> = Vec::with_capacity(source.headers.len() + 9);
        for (k, v) in &source.headers {
            if k.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("nats-")) {
                headers.push((format!("{SOURCE_HEADER_PREFIX}{k}"), v.clone()));
            } else if !host_owned(k) {
                headers.push((k.clone(), v.clone()));
            }
        }
        let reason: String = reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let mut end = reason.len().min(MAX_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        headers.extend([
            (REASON_HEADER.to_owned(), reason[..end].to_owned()),
            (TENANT_HEADER.to_owned(), self.tenant.to_string()),
            (SOURCE_STREAM_HEADER.to_owned(), origin.stream.clone()),
            (SOURCE_SEQ_HEADER.to_owned(), origin.stream_seq.to_string()),
            (SOURCE_SUBJECT_HEADER.to_owned(), source.subject.clone()),
            (PLUGIN_HEADER.to_owned(), plugin.to_owned()),
            (DELIVERED_HEADER.to_owned(), origin.delivered.to_string()),
            (
                MSG_ID_HEADER.to_owned(),
                format!(
                    "{}:{}:{}:dlq",
                    self.tenant, origin.stream, origin.stream_seq
                ),
            ),
        ]);
        if origin.delivered == 0 {
            headers.retain(|(k, _)| k != DELIVERED_HEADER);
        }
        headers.extend(extra);
        let payload = fit_dead_letter(&mut headers, &source.payload, self.max_payload());
        Message {
            subject: self.dead_letter.clone(),
            headers,
            payload,
        }
    }
}

/// A publish that failed, after `stored` of the messages were confirmed.
#[derive(Debug)]
struct Unstored {
    stored: u64,
    error: jetstream::context::PublishError,
}

impl Unstored {
    /// No stream captures the subject (the server had no responder for
    /// it) and nothing was stored: retrying cannot help.
    fn is_unroutable(&self) -> bool {
        self.stored == 0
            && self.error.kind() == jetstream::context::PublishErrorKind::StreamNotFound
    }
}

impl std::fmt::Display for Unstored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.stored > 0 {
            write!(f, "{} (after {} stored)", self.error, self.stored)
        } else {
            write!(f, "{}", self.error)
        }
    }
}

/// The payload a dead letter can carry within the server's `max_payload`
/// (headers count against it too). A dead letter too big to store would
/// fail on every delivery and be lost after the last: so the producer's
/// own headers go first (the Sluice-* ones, added last, say what happened),
/// then the payload is cut, and `Sluice-Truncated` gives its full length.
/// A `max_payload` of 0 (no INFO yet) means no limit known.
fn fit_dead_letter(
    headers: &mut Vec<(String, String)>,
    payload: &bytes::Bytes,
    max_payload: usize,
) -> bytes::Bytes {
    if max_payload == 0 || header_bytes(headers) + payload.len() + FRAMING <= max_payload {
        return payload.clone();
    }
    headers.push((TRUNCATED_HEADER.to_owned(), payload.len().to_string()));
    // Drop the producer's headers, oldest first, until the host's fit with
    // room for some payload; the host's own are a fixed, bounded set.
    let host_start = headers
        .iter()
        .position(|(k, _)| k == REASON_HEADER)
        .unwrap_or(0);
    let mut producer: Vec<(String, String)> = headers.drain(..host_start).collect();
    while !producer.is_empty()
        && header_bytes(&producer) + header_bytes(headers) + FRAMING > max_payload / 2
    {
        producer.remove(0);
    }
    producer.append(headers);
    *headers = producer;
    let room = max_payload.saturating_sub(header_bytes(headers) + FRAMING);
    payload.slice(..room.min(payload.len()))
}

/// Microseconds from `us` (Unix epoch microseconds) to now; 0 if the
/// clocks disagree.
fn micros_since(us: u64) -> u64 {
    crate::stats::now_micros().saturating_sub(us)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{FailureKind, GuestFailure};

    fn host_headers() -> Vec<(String, String)> {
        vec![
            ("Producer".to_owned(), "p".repeat(300)),
            (REASON_HEADER.to_owned(), "bad".to_owned()),
            (TENANT_HEADER.to_owned(), "acme".to_owned()),
        ]
    }

    #[test]
    fn a_dead_letter_that_fits_is_left_whole() {
        let mut headers = host_headers();
        let payload = bytes::Bytes::from_static(b"small");
        assert_eq!(fit_dead_letter(&mut headers, &payload, 4096), payload);
        assert_eq!(headers, host_headers());
        assert_eq!(fit_dead_letter(&mut headers, &payload, 0), payload);
    }

    #[test]
    fn a_dead_letter_too_big_is_cut_to_fit_with_the_hosts_headers_kept() {
        let payload = bytes::Bytes::from(vec![b'x'; 5000]);
        let mut headers = host_headers();
        let cut = fit_dead_letter(&mut headers, &payload, 512);
        assert!(header_bytes(&headers) + cut.len() + FRAMING <= 512);
        assert!(!cut.is_empty());
        assert!(
            headers
                .iter()
                .any(|(k, v)| k == TRUNCATED_HEADER && v == "5000")
        );
        assert!(headers.iter().any(|(k, _)| k == REASON_HEADER));
        // The 300-byte producer header would leave too little payload.
        assert!(!headers.iter().any(|(k, _)| k == "Producer"));

        let mut headers = host_headers();
        let cut = fit_dead_letter(&mut headers, &payload, 4096);
        assert!(headers.iter().any(|(k, _)| k == "Producer"));
        assert!(header_bytes(&headers) + cut.len() + FRAMING <= 4096);
    }

    #[test]
    fn backoff_follows_deliveries_and_repeats_the_last() {
        let b = [Duration::from_secs(1), Duration::from_secs(5)];
        assert_eq!(backoff_for(&b, 1), Duration::from_secs(1));
        assert_eq!(backoff_for(&b, 2), Duration::from_secs(5));
        assert_eq!(backoff_for(&b, 9), Duration::from_secs(5));
        assert_eq!(backoff_for(&[], 1), Duration::from_secs(1));
    }

    #[test]
    fn the_last_delivery_turns_a_retry_into_a_dead_letter() {
        let retry = Outcome::Retry {
            delay: Some(Duration::from_millis(5)),
            failure: None,
            plugin: "p@1".into(),
        };
        assert_eq!(give_up_on_last_delivery(retry.clone(), 2, 3), retry);
        let Outcome::DeadLetter { reason, plugin, .. } = give_up_on_last_delivery(retry, 3, 3)
        else {
            panic!("expected a dead letter")
        };
        assert_eq!(plugin, "p@1");
        assert!(
            reason.contains("3 deliveries") && reason.contains("asked to retry"),
            "{reason}"
        );

        let failed = Outcome::Retry {
            delay: None,
            failure: Some(GuestFailure {
                kind: FailureKind::Deadline,
                message: "slow".into(),
            }),
            plugin: "p@1".into(),
        };
        let Outcome::DeadLetter { reason, .. } = give_up_on_last_delivery(failed, 5, 5) else {
            panic!("expected a dead letter")
        };
        assert!(reason.contains("deadline: slow"), "{reason}");
        let ack = Outcome::Ack {
            plugin: "p@1".into(),
        };
        assert_eq!(give_up_on_last_delivery(ack.clone(), 9, 3), ack);
    }
}
