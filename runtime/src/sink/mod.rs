//! Settling a message: publish its outputs or its dead letter, wait for
//! JetStream to confirm them, and only then ack (or term) the source. This is
//! the one place an [`Outcome`] becomes `Ack`, `Nak(delay)` or `Term`.
//!
//! Outputs carry `Nats-Msg-Id = <tenant>:<stream>:<seq>:<index>` (set by the
//! pipeline) and dead letters `<tenant>:<stream>:<seq>:dlq`, so a
//! redelivered message re-published inside the stream's duplicate window is
//! dropped by JetStream: at-least-once input, effectively-once output.

mod letter;
mod policy;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures::future::join_all;

use crate::headers::{SOURCE_HEADERS_HEADER, header_bytes, header_map};
use crate::message::{Message, Origin};
use crate::pipeline::Outcome;
use crate::stats::TenantStats;
pub use policy::{Action, Event, Policy, backoff_for};

/// Room left in a dead letter for the protocol's own framing (the `HPUB`
/// line's sizes, `NATS/1.0`, line ends) beyond the headers counted.
const FRAMING: usize = 64;

/// Outputs of one message published before their PubAcks are awaited. A
/// fan-out is sent in windows of this size, so the number of PubAcks a
/// tenant waits for is bounded by `max_in_flight` × this, and the sink's
/// publish context allows that many: a large fan-out can never wait on
/// PubAck permits that only its own unsent window would free.
pub const PUBLISH_WINDOW: usize = 128;

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

/// Publishes and settles for one tenant.
pub struct Sink {
    js: jetstream::Context,
    tenant: Arc<str>,
    dead_letter: String,
    policy: Policy,
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
            policy: Policy {
                backoff,
                max_deliver,
                max_retry_delay,
            },
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
    /// and `source`, as the [`Policy`] decides.
    pub async fn settle(
        &self,
        msg: &jetstream::Message,
        origin: &Origin,
        source: &Message,
        outcome: Outcome,
    ) -> Settled {
        let tenant = &*self.tenant;
        let (stream, seq, delivered) = (&origin.stream, origin.stream_seq, origin.delivered);
        let plugin = outcome.plugin();
        let decided = self.policy.decide(Event::Decided(&outcome), delivered);
        self.stats.count_outcome(plugin, decided.kind());
        tracing::debug!(plugin, outcome = decided.kind(), "settling");
        let outputs: &[Message] = match &outcome {
            Outcome::Publish { outputs, .. } => outputs,
            _ => &[],
        };
        let mut action = decided;
        if action == Action::Publish
            && let Some((index, size, max)) = self.oversized(outputs)
        {
            self.stats.count_limit("max_payload");
            action = self
                .policy
                .decide(Event::Oversized { index, size, max }, delivered);
        }
        if action == Action::Publish {
            action = match self.publish_all(outputs).await {
                Ok(stored) => return self.published(msg, origin, stored).await,
                Err(e) => {
                    TenantStats::bump(&self.stats.publish_errors, 1);
                    let event = Event::OutputsUnstored {
                        stored: e.stored,
                        unroutable: e.is_unroutable(),
                        error: &e,
                    };
                    match self.policy.decide(event, delivered) {
                        Action::Nak(delay) => {
                            tracing::warn!(tenant, stream, seq, error = %e, "publishing outputs failed; nak, redelivery re-publishes with the same message ids");
                            Action::Nak(delay)
                        }
                        Action::DeadLetterIfNoStream(reason)
                            if self.no_stream_captures(outputs).await =>
                        {
                            tracing::warn!(tenant, stream, seq, error = %e, "no stream stores the outputs, on the last delivery; dead-lettering");
                            Action::DeadLetter(reason.into())
                        }
                        _ => {
                            tracing::error!(tenant, stream, seq, error = %e, "publishing outputs failed part-way or on the last delivery; holding the message and retrying until they are all stored");
                            Action::Hold
                        }
                    }
                }
            };
        }
        match action {
            Action::Ack | Action::Publish => self.ack(msg).await,
            Action::Nak(delay) => {
                if let Outcome::Retry {
                    failure: Some(f), ..
                } = &outcome
                {
                    tracing::debug!(tenant, stream, seq, plugin, failure = %f, "guest failed; retrying");
                }
                self.nak(msg, delay).await
            }
            // An unconfirmed "no stream" is held, as the policy says.
            Action::Hold | Action::DeadLetterIfNoStream(_) => {
                let stored = self.publish_until_stored(outputs, None).await;
                self.published(msg, origin, stored).await
            }
            Action::DeadLetter(reason) => {
                self.dead_letter(msg, origin, source, &reason, plugin).await
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
            Err(e) => {
                TenantStats::bump(&self.stats.publish_errors, 1);
                match self
                    .policy
                    .decide(Event::DeadLetterUnstored, origin.delivered)
                {
                    Action::Nak(delay) => {
                        tracing::warn!(tenant, stream, seq, subject = self.dead_letter, error = %e, "publishing the dead letter failed; nak for redelivery");
                        return self.nak(msg, delay).await;
                    }
                    _ => {
                        // The server's last delivery: a nak would lose
                        // the message. Hold it and keep trying.
                        tracing::error!(tenant, stream, seq, subject = self.dead_letter, error = %e, "the dead letter could not be stored on the server's last delivery; holding the message and retrying until it is");
                        self.publish_until_stored(&letter, None).await
                    }
                }
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
            let mut delay = self.policy.backoff(attempt);
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

/// Microseconds from `us` (Unix epoch microseconds) to now; 0 if the
/// clocks disagree.
fn micros_since(us: u64) -> u64 {
    crate::stats::now_micros().saturating_sub(us)
}
