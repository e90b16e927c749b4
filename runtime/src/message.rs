//! The host's own message types: what a stage receives and returns, in the
//! shape of the WIT contract but independent of any bindings, so the pipeline,
//! the sink and the CLI speak these and only `wasm` converts.

use bytes::Bytes;

/// One NATS message as the pipeline sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// The NATS subject.
    pub subject: String,
    /// Headers in order; a name may repeat.
    pub headers: Vec<(String, String)>,
    /// The body, unchanged bytes. Shared, not copied: a payload pulled from
    /// NATS, cut from a guest's batch answer or published is the same
    /// buffer.
    pub payload: Bytes,
}

impl Message {
    /// A message with no headers.
    pub fn new(subject: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Message {
            subject: subject.into(),
            headers: Vec::new(),
            payload: payload.into(),
        }
    }

    /// Bytes it takes: subject, headers and payload.
    pub fn size(&self) -> usize {
        self.subject.len()
            + self.payload.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }

    /// The first value of header `name` (header names compare
    /// case-insensitively, as NATS and HTTP do).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Replace every header called `name` with one of `value`.
    pub fn set_header(&mut self, name: &str, value: impl Into<String>) {
        self.remove_header(name);
        self.headers.push((name.to_owned(), value.into()));
    }

    /// Remove every header called `name`.
    pub fn remove_header(&mut self, name: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }
}

/// A plugin's caps on what one verdict may produce, checked when the
/// verdict is lifted: past them the message is dead-lettered with a reason
/// naming the cap, instead of wedging the tenant's publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputCaps {
    /// Most outputs one verdict may publish.
    pub max_outputs: usize,
    /// Most bytes (subjects, headers, payloads) one message's outputs may
    /// add up to.
    pub max_bytes: usize,
    /// Longest output subject, in bytes.
    pub max_subject: usize,
}

impl Default for OutputCaps {
    /// The config's defaults (`[plugins]` `max_outputs`, `max_output_bytes`,
    /// `max_subject_bytes`).
    fn default() -> Self {
        use crate::config::{
            DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_MAX_OUTPUTS, DEFAULT_MAX_SUBJECT_BYTES,
        };
        // The defaults are far below usize::MAX on every target.
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        OutputCaps {
            max_outputs: size(DEFAULT_MAX_OUTPUTS),
            max_bytes: size(DEFAULT_MAX_OUTPUT_BYTES),
            max_subject: size(DEFAULT_MAX_SUBJECT_BYTES),
        }
    }
}

/// Facts about a message that the host vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    /// The tenant the message was pulled for.
    pub tenant: String,
    /// The JetStream stream it came from.
    pub stream: String,
    /// Its sequence in that stream.
    pub stream_seq: u64,
    /// Delivery count, 1 on the first delivery.
    pub delivered: u32,
    /// When JetStream stored it, µs since the Unix epoch. Guests see it in
    /// ms ([`Origin::published_ms`]); the host keeps µs so that the latency
    /// it records is not rounded up by as much as a millisecond.
    pub published_us: u64,
}

impl Origin {
    /// When JetStream stored it, ms since the Unix epoch, as guests see it.
    pub fn published_ms(&self) -> u64 {
        self.published_us / 1000
    }
}

/// A stage's decision, as in the WIT `verdict` variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Pass the message on to the next stage (or the default output).
    Next(Message),
    /// Publish these and end the chain.
    Publish(Vec<Message>),
    /// Consumed, nothing to emit.
    Ack,
    /// Never processable; the reason goes with the dead letter.
    DeadLetter(String),
    /// Redeliver after this many milliseconds.
    Retry(u32),
}

impl Verdict {
    /// The verdict's name as the CLI and metrics print it.
    pub fn kind(&self) -> &'static str {
        match self {
            Verdict::Next(_) => "next",
            Verdict::Publish(_) => "publish",
            Verdict::Ack => "ack",
            Verdict::DeadLetter(_) => "dead-letter",
            Verdict::Retry(_) => "retry",
        }
    }
}

/// How a guest call failed. A value, not an error: the pipeline turns it into
/// a retry, and the instance that failed is thrown away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFailure {
    /// The kind, a bounded set for metrics.
    pub kind: FailureKind,
    /// What happened, for logs and dead-letter reasons.
    pub message: String,
}

impl std::fmt::Display for GuestFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

/// The kinds of [`GuestFailure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The call ran past its epoch deadline.
    Deadline,
    /// The guest tried to grow memory past its limit.
    Memory,
    /// Any other trap: panic, unreachable, out-of-bounds access…
    Trap,
    /// `init` refused the stage config on a fresh instance.
    Init,
}

impl FailureKind {
    /// Label value for metrics and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Deadline => "deadline",
            FailureKind::Memory => "memory",
            FailureKind::Trap => "trap",
            FailureKind::Init => "init",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_compare_case_insensitively_and_set_replaces_all() {
        let mut m = Message::new("a", "x");
        m.headers.push(("Trace".into(), "1".into()));
        m.headers.push(("trace".into(), "2".into()));
        assert_eq!(m.header("TRACE"), Some("1"));
        m.set_header("Trace", "3");
        assert_eq!(m.headers, vec![("Trace".to_owned(), "3".to_owned())]);
        m.remove_header("tRaCe");
        assert!(m.headers.is_empty());
    }
}
