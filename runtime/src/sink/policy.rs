//! The settle policy, as one pure function: given what has happened to a
//! message so far and which delivery this is, what the sink does next. The
//! sink carries the [`Action`] out (publishes, acks, naks, terms, holds);
//! every rule about the last delivery is here and nowhere else.
//!
//! Deliveries: the host gives up on delivery `max_deliver` and dead-letters
//! the message itself, so it is kept with its reason. The consumer allows
//! one delivery more ([`crate::config::TenantLimits::server_max_deliver`]),
//! so that a dead letter that could not be stored on the host's last
//! delivery is tried again; on that one, the server's last, nothing may be
//! nak'ed, or the message would be lost.

use std::borrow::Cow;
use std::fmt::Display;
use std::time::Duration;

use crate::pipeline::Outcome;

/// What has happened to a message, as the sink saw it.
pub enum Event<'a> {
    /// The pipeline decided this.
    Decided(&'a Outcome),
    /// An output is bigger (with its headers) than the server's
    /// `max_payload`: output `index`, `size` bytes, over `max`.
    Oversized {
        /// Which output.
        index: usize,
        /// Its size with headers.
        size: usize,
        /// The server's `max_payload`.
        max: usize,
    },
    /// Publishing the outputs failed after `stored` of them were confirmed.
    OutputsUnstored {
        /// How many the server confirmed.
        stored: u64,
        /// The server had no responder for the subject: no stream may
        /// capture it (or a clustered stream is electing a leader).
        unroutable: bool,
        /// What failed, for the reason.
        error: &'a dyn Display,
    },
    /// The dead letter could not be stored.
    DeadLetterUnstored,
}

/// What the sink does next with the source message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<'a> {
    /// Publish the outputs; ack once all are confirmed.
    Publish,
    /// Ack now: nothing to publish.
    Ack,
    /// Nak, for a redelivery after this delay.
    Nak(Duration),
    /// Store a dead letter with this reason, then terminate the source.
    DeadLetter(Cow<'a, str>),
    /// Keep the message (in-progress acks) and publish the same messages,
    /// same ids, until all are stored: a nak would hand a half-published
    /// message to a redelivery that may run another plugin version, or, on
    /// the last delivery, to none at all.
    Hold,
    /// Ask the server whether a stream captures the outputs' subjects: if
    /// it confirms none does, dead-letter with this reason (waiting will
    /// not fix a configuration problem); on any other answer, hold.
    DeadLetterIfNoStream(String),
}

impl Action<'_> {
    /// The outcome this action carries out, as metrics and logs name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Publish | Action::Hold => "publish",
            Action::Ack => "ack",
            Action::Nak(_) => "retry",
            Action::DeadLetter(_) | Action::DeadLetterIfNoStream(_) => "dead-letter",
        }
    }
}

/// One tenant's settle settings.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Nak delay by delivery; the last entry repeats.
    pub backoff: Vec<Duration>,
    /// The delivery on which the host gives up.
    pub max_deliver: u32,
    /// No nak asks for a longer delay than this.
    pub max_retry_delay: Duration,
}

impl Policy {
    /// What to do after `event`, on delivery `delivered` (1 is the first).
    pub fn decide<'a>(&self, event: Event<'a>, delivered: u32) -> Action<'a> {
        let last = delivered >= self.max_deliver;
        match event {
            Event::Decided(Outcome::Publish { .. }) => Action::Publish,
            Event::Decided(Outcome::Ack { .. }) => Action::Ack,
            Event::Decided(Outcome::DeadLetter { reason, .. }) => {
                Action::DeadLetter(Cow::Borrowed(reason))
            }
            Event::Decided(Outcome::Retry { failure, .. }) if last => {
                let why = match failure {
                    Some(f) => format!("handler failed ({f})"),
                    None => "handler asked to retry".to_owned(),
                };
                Action::DeadLetter(Cow::Owned(format!(
                    "gave up after {delivered} deliveries: {why}"
                )))
            }
            // A guest's delay is its own number: capped, so that
            // `retry(u32::MAX)` waits an hour, not 49 days.
            Event::Decided(Outcome::Retry { delay, .. }) => Action::Nak(
                delay
                    .unwrap_or_else(|| self.backoff(delivered))
                    .min(self.max_retry_delay),
            ),
            // The server refuses it on every delivery: retrying cannot
            // help, so it is a dead letter now, not after max_deliver.
            Event::Oversized { index, size, max } => Action::DeadLetter(Cow::Owned(format!(
                "output {index} is {size} bytes with its headers, over the server's max_payload of {max} bytes"
            ))),
            Event::OutputsUnstored { stored, .. } if stored > 0 => Action::Hold,
            Event::OutputsUnstored {
                unroutable: true,
                error,
                ..
            } if last => Action::DeadLetterIfNoStream(format!(
                "gave up after {delivered} deliveries: publishing outputs failed: {error}"
            )),
            Event::OutputsUnstored { .. } if last => Action::Hold,
            Event::OutputsUnstored { .. } => Action::Nak(self.backoff(delivered)),
            Event::DeadLetterUnstored if delivered > self.max_deliver => Action::Hold,
            Event::DeadLetterUnstored => Action::Nak(self.backoff(delivered)),
        }
    }

    /// The backoff delay for delivery `delivered`, capped by
    /// `max_retry_delay`.
    pub fn backoff(&self, delivered: u32) -> Duration {
        backoff_for(&self.backoff, delivered).min(self.max_retry_delay)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{FailureKind, GuestFailure};

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn policy() -> Policy {
        Policy {
            backoff: vec![S(1), S(5)],
            max_deliver: 3,
            max_retry_delay: S(60),
        }
    }

    fn retry(delay: Option<Duration>, failure: Option<GuestFailure>) -> Outcome {
        Outcome::Retry {
            delay,
            failure,
            plugin: "p@1".into(),
        }
    }

    fn dead(reason: &str) -> Action<'static> {
        Action::DeadLetter(Cow::Owned(reason.to_owned()))
    }

    #[test]
    fn backoff_follows_deliveries_and_repeats_the_last() {
        let b = [S(1), S(5)];
        assert_eq!(backoff_for(&b, 1), S(1));
        assert_eq!(backoff_for(&b, 2), S(5));
        assert_eq!(backoff_for(&b, 9), S(5));
        assert_eq!(backoff_for(&[], 1), S(1));
    }

    #[test]
    fn a_decided_outcome_is_carried_out_as_it_is() {
        let p = policy();
        let publish = Outcome::Publish {
            outputs: Vec::new(),
            plugin: "p@1".into(),
        };
        let ack = Outcome::Ack {
            plugin: "p@1".into(),
        };
        let letter = Outcome::DeadLetter {
            reason: "bad".into(),
            plugin: "p@1".into(),
            limit: None,
        };
        for delivered in [1, 3, 4] {
            assert_eq!(
                p.decide(Event::Decided(&publish), delivered),
                Action::Publish
            );
            assert_eq!(p.decide(Event::Decided(&ack), delivered), Action::Ack);
            assert_eq!(p.decide(Event::Decided(&letter), delivered), dead("bad"));
        }
    }

    #[test]
    fn a_retry_naks_with_its_delay_or_the_backoff_capped() {
        let p = policy();
        let asked = retry(Some(Duration::from_millis(5)), None);
        assert_eq!(
            p.decide(Event::Decided(&asked), 2),
            Action::Nak(Duration::from_millis(5))
        );
        assert_eq!(
            p.decide(Event::Decided(&retry(None, None)), 1),
            Action::Nak(S(1))
        );
        assert_eq!(
            p.decide(Event::Decided(&retry(None, None)), 2),
            Action::Nak(S(5))
        );
        let forever = retry(Some(Duration::from_millis(u64::from(u32::MAX))), None);
        assert_eq!(p.decide(Event::Decided(&forever), 1), Action::Nak(S(60)));
    }

    #[test]
    fn the_last_delivery_turns_a_retry_into_a_dead_letter() {
        let p = policy();
        let asked = retry(Some(Duration::from_millis(5)), None);
        let Action::DeadLetter(reason) = p.decide(Event::Decided(&asked), 3) else {
            panic!("expected a dead letter")
        };
        assert!(
            reason.contains("3 deliveries") && reason.contains("asked to retry"),
            "{reason}"
        );
        let failed = retry(
            None,
            Some(GuestFailure {
                kind: FailureKind::Deadline,
                message: "slow".into(),
            }),
        );
        let Action::DeadLetter(reason) = p.decide(Event::Decided(&failed), 5) else {
            panic!("expected a dead letter")
        };
        assert!(reason.contains("deadline: slow"), "{reason}");
    }

    #[test]
    fn an_oversized_output_is_a_dead_letter_on_any_delivery() {
        let p = policy();
        for delivered in [1, 3] {
            let Action::DeadLetter(reason) = p.decide(
                Event::Oversized {
                    index: 2,
                    size: 2000,
                    max: 1024,
                },
                delivered,
            ) else {
                panic!("expected a dead letter")
            };
            assert!(reason.contains("output 2 is 2000 bytes"), "{reason}");
            assert!(reason.contains("max_payload of 1024"), "{reason}");
        }
    }

    #[test]
    fn outputs_partly_stored_are_held_on_any_delivery() {
        let p = policy();
        for (unroutable, delivered) in [(false, 1), (true, 1), (false, 3), (true, 3)] {
            let event = Event::OutputsUnstored {
                stored: 1,
                unroutable,
                error: &"timed out",
            };
            assert_eq!(p.decide(event, delivered), Action::Hold);
        }
    }

    #[test]
    fn outputs_not_stored_nak_until_the_last_delivery() {
        let p = policy();
        for unroutable in [false, true] {
            let event = Event::OutputsUnstored {
                stored: 0,
                unroutable,
                error: &"no responders",
            };
            assert_eq!(p.decide(event, 2), Action::Nak(S(5)));
        }
        let event = Event::OutputsUnstored {
            stored: 0,
            unroutable: false,
            error: &"timed out",
        };
        assert_eq!(p.decide(event, 3), Action::Hold);
        let event = Event::OutputsUnstored {
            stored: 0,
            unroutable: true,
            error: &"no responders",
        };
        let Action::DeadLetterIfNoStream(reason) = p.decide(event, 3) else {
            panic!("expected a confirmed dead letter")
        };
        assert!(
            reason.contains("3 deliveries") && reason.contains("no responders"),
            "{reason}"
        );
    }

    #[test]
    fn an_unstored_dead_letter_naks_until_the_servers_last_delivery() {
        let p = policy();
        assert_eq!(p.decide(Event::DeadLetterUnstored, 1), Action::Nak(S(1)));
        // The host's last: the server still has one delivery to give.
        assert_eq!(p.decide(Event::DeadLetterUnstored, 3), Action::Nak(S(5)));
        assert_eq!(p.decide(Event::DeadLetterUnstored, 4), Action::Hold);
    }

    #[test]
    fn an_action_names_the_outcome_it_carries_out() {
        assert_eq!(Action::Nak(S(1)).kind(), "retry");
        assert_eq!(dead("x").kind(), "dead-letter");
        assert_eq!(Action::Hold.kind(), "publish");
    }
}
