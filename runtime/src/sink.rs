//! Settling a message: publish its outputs or its dead letter, wait for
//! JetStream to confirm them, and only then ack (or term) the source. This is
//! the one place an [`Outcome`] becomes `Ack`, `Nak(delay)` or `Term`.
//!
//! Outputs carry `Nats-Msg-Id = <stream>:<seq>:<index>` (set by the
//! pipeline) and dead letters `<stream>:<seq>:dlq`, so a redelivered message
//! re-published inside the stream's duplicate window is dropped by
//! JetStream: at-least-once input, effectively-once output.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind};
use futures::future::try_join_all;

use crate::message::{Message, Origin};
use crate::pipeline::{MSG_ID_HEADER, Outcome, PLUGIN_HEADER, TENANT_HEADER};
use crate::telemetry::TenantStats;

/// Why the message was dead-lettered.
pub const REASON_HEADER: &str = "Sluice-Reason";
/// The stream the source came from.
pub const SOURCE_STREAM_HEADER: &str = "Sluice-Source-Stream";
/// The source's stream sequence.
pub const SOURCE_SEQ_HEADER: &str = "Sluice-Source-Seq";
/// The source's subject.
pub const SOURCE_SUBJECT_HEADER: &str = "Sluice-Source-Subject";
/// How many deliveries the source had.
pub const DELIVERED_HEADER: &str = "Sluice-Delivered";

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
    stats: Arc<TenantStats>,
}

impl Sink {
    /// A sink publishing through `js`.
    pub fn new(
        js: jetstream::Context,
        tenant: Arc<str>,
        dead_letter: String,
        backoff: Vec<Duration>,
        max_deliver: u32,
        stats: Arc<TenantStats>,
    ) -> Self {
        Sink {
            js,
            tenant,
            dead_letter,
            backoff,
            max_deliver,
            stats,
        }
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
        let retry_delay = backoff_for(&self.backoff, origin.delivered);
        match outcome {
            Outcome::Publish { outputs, plugin } => match self.publish_all(outputs).await {
                Ok((count, duplicates)) => {
                    TenantStats::bump(&self.stats.published, 1);
                    TenantStats::bump(&self.stats.outputs, count - duplicates);
                    self.stats.record_latency(micros_since(origin.published_us));
                    self.ack(msg).await
                }
                Err(e) => {
                    TenantStats::bump(&self.stats.publish_errors, 1);
                    if origin.delivered >= self.max_deliver {
                        // Naking now would let the server's last delivery
                        // go by and drop the message unseen: keep it as a
                        // dead letter instead.
                        tracing::warn!(tenant, stream, seq, error = %e, "publishing outputs failed on the last delivery; dead-lettering");
                        let reason = format!(
                            "gave up after {} deliveries: publishing outputs failed: {e}",
                            origin.delivered
                        );
                        return self
                            .dead_letter(msg, origin, source, &reason, &plugin)
                            .await;
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
                self.nak(msg, delay.unwrap_or(retry_delay)).await
            }
            Outcome::DeadLetter { reason, plugin } => {
                self.dead_letter(msg, origin, source, &reason, &plugin)
                    .await
            }
        }
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
        let letter = self.dead_letter_message(origin, source, reason, plugin);
        match self.publish_all(vec![letter]).await {
            Ok((_, duplicates)) => {
                TenantStats::bump(&self.stats.dead_lettered, 1);
                TenantStats::bump(&self.stats.duplicates, duplicates);
                tracing::debug!(tenant, stream, seq, plugin, reason, "dead-lettered");
                if let Err(e) = msg.ack_with(AckKind::Term).await {
                    tracing::debug!(tenant, stream, seq, error = %e, "term not sent; the redelivery will be deduplicated");
                }
                Settled::Termed
            }
            Err(e) => {
                TenantStats::bump(&self.stats.publish_errors, 1);
                if origin.delivered > self.max_deliver {
                    // The consumer allows max_deliver + 1 deliveries: this
                    // was the last one the server will make.
                    tracing::error!(tenant, stream, seq, subject = self.dead_letter, error = %e, "the dead letter could not be stored on the server's last delivery; the message is lost unless an operator redelivers it");
                } else {
                    tracing::warn!(tenant, stream, seq, subject = self.dead_letter, error = %e, "publishing the dead letter failed; nak for redelivery");
                }
                self.nak(msg, backoff_for(&self.backoff, origin.delivered))
                    .await
            }
        }
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
        if let Err(e) = msg.ack_with(AckKind::Nak(Some(delay))).await {
            tracing::debug!(tenant = &*self.tenant, error = %e, "nak not sent; the message will be redelivered after ack_wait");
        }
        TenantStats::bump(&self.stats.retried, 1);
        Settled::Naked(delay)
    }

    /// Publish every message, then wait for all PubAcks together. Returns
    /// how many were confirmed and how many of those JetStream reported as
    /// duplicates.
    async fn publish_all(&self, messages: Vec<Message>) -> Result<(u64, u64), async_nats::Error> {
        let mut pending = Vec::with_capacity(messages.len());
        for m in messages {
            let headers = header_map(&m.headers);
            pending.push(
                self.js
                    .publish_with_headers(m.subject, headers, m.payload)
                    .await?
                    .into_future(),
            );
        }
        let acks = try_join_all(pending).await?;
        let duplicates = acks.iter().filter(|a| a.duplicate).count() as u64;
        Ok((acks.len() as u64, duplicates))
    }

    fn dead_letter_message(
        &self,
        origin: &Origin,
        source: &Message,
        reason: &str,
        plugin: &str,
    ) -> Message {
        let mut headers: Vec<(String, String)> = source
            .headers
            .iter()
            .filter(|(k, _)| {
                let k = k.to_ascii_lowercase();
                !k.starts_with("sluice-") && k != MSG_ID_HEADER.to_ascii_lowercase()
            })
            .cloned()
            .collect();
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
                format!("{}:{}:dlq", origin.stream, origin.stream_seq),
            ),
        ]);
        Message {
            subject: self.dead_letter.clone(),
            headers,
            payload: source.payload.clone(),
        }
    }
}

/// Microseconds from `us` (Unix epoch microseconds) to now; 0 if the
/// clocks disagree.
fn micros_since(us: u64) -> u64 {
    crate::telemetry::now_micros().saturating_sub(us)
}

/// Our header list as a NATS header map.
pub fn header_map(headers: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(k.as_str(), v.as_str());
    }
    map
}

/// A NATS header map as our header list.
pub fn header_list(map: Option<&HeaderMap>) -> Vec<(String, String)> {
    let Some(map) = map else { return Vec::new() };
    let mut out = Vec::new();
    for (name, values) in map.iter() {
        let name: &str = name.as_ref();
        for v in values {
            out.push((name.to_owned(), v.as_str().to_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wasm::{FailureKind, GuestFailure};

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
        let Outcome::DeadLetter { reason, plugin } = give_up_on_last_delivery(retry, 3, 3) else {
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
