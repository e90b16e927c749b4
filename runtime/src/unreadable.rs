//! Stored messages the NATS client cannot read, found from the server's
//! side and dead-lettered.
//!
//! A producer can store bytes that no Sluice connection can take delivery
//! of: a subject that is not UTF-8, or a header block async-nats 0.51
//! rejects. On each delivery of such a message async-nats drops the whole
//! connection, which every tenant on it shares, and a header value with a
//! bare CR makes it panic in its connection task, which stops the client
//! for good. The message itself is never seen, so the pull loop cannot
//! settle it; the server would redeliver it (dropping the connection each
//! time) until `max_deliver`, then give up on it silently.
//!
//! The fix belongs in async-nats's parser (skip or surface an unparseable
//! message rather than drop the connection; never assert on server data).
//! Until then, without a fork: after every (re)connect each tenant sweeps
//! the messages its consumer has delivered but not had acked, reading them
//! with `STREAM.MSG.GET`, whose JSON reply carries the header block as
//! base64 and the subject with invalid UTF-8 replaced. A message that
//! async-nats could not parse is dead-lettered with its reason and the
//! raw header block (escaped), and terminated with an ack subject built by
//! hand. Each stored message is looked at once per bound consumer: the
//! sweep remembers how far it has read.

use std::collections::BTreeSet;

use async_nats::jetstream::{self, response::Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Most messages one sweep reads. Work is remembered, so a sweep cut short
/// goes on from there at the next reconnect; the cap only bounds one
/// sweep's API requests.
const MAX_SWEEP: u64 = 100_000;
/// Most bytes of a raw header block copied (escaped) into a dead letter.
pub const MAX_HEADER_COPY: usize = 4096;

/// A stored message, read from the server's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its subject, invalid UTF-8 replaced by U+FFFD.
    pub subject: String,
    /// Its stream sequence.
    pub seq: u64,
    /// Its raw header block (empty: no headers).
    pub headers: Vec<u8>,
    /// Its payload.
    pub payload: bytes::Bytes,
}

/// What would keep async-nats from reading a message with this header
/// block, or `None` if it reads it. Follows async-nats 0.51's `HMSG`
/// parsing step by step (`connection.rs`): UTF-8, a `NATS/1.0` version
/// line, an optional three-digit status, `Name: value` lines with folded
/// continuations, names of visible ASCII without `:`, values without CR or
/// LF (a bare CR inside a value passes the line split and then trips an
/// assertion: a panic in the client's connection task).
///
/// A stored message that carries a status is reported too: async-nats
/// would take it for a server status (a pull's 408, a heartbeat's 100)
/// rather than a message, and it would never be processed.
pub fn header_problem(block: &[u8]) -> Option<String> {
    parse_headers(block).err()
}

/// The `(name, value)` pairs of a header block async-nats can read, or
/// what keeps it from reading them.
pub fn parse_headers(block: &[u8]) -> Result<Vec<(String, String)>, String> {
    if block.is_empty() {
        return Ok(Vec::new());
    }
    let text = std::str::from_utf8(block).map_err(|e| {
        format!(
            "the header block is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        )
    })?;
    let mut lines = text.lines().peekable();
    let version = lines.next().unwrap_or_default();
    let Some(suffix) = version.strip_prefix("NATS/1.0").map(str::trim) else {
        return Err("the header block does not start with `NATS/1.0`".to_owned());
    };
    let status = suffix.split_once(' ').map_or(suffix, |(s, _)| s.trim());
    if !status.is_empty() {
        return Err(format!(
            "the header block carries a status (`{}`), which the client reads as a server status, not a message",
            escape(status.as_bytes(), 64)
        ));
    }
    let mut headers = Vec::new();
    let mut index = 0;
    while let Some(line) = lines.next() {
        index += 1;
        if line.is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("header line {index} has no `:`"));
        };
        if name.contains(|c: char| !c.is_ascii_graphic() || c == ':') {
            return Err(format!(
                "header name `{}` is not visible ASCII",
                escape(name.as_bytes(), 64)
            ));
        }
        let mut value = value.trim_start().to_owned();
        while let Some(more) = lines.next_if(|s| s.starts_with(char::is_whitespace)) {
            value.push_str(more);
        }
        value.truncate(value.trim_end().len());
        if value.contains(['\r', '\n']) {
            return Err(format!(
                "the value of header `{name}` contains a bare CR (the client panics on it)"
            ));
        }
        headers.push((name.to_owned(), value));
    }
    Ok(headers)
}

/// `bytes` with anything but printable ASCII escaped (`\r`, `\xff`…), cut
/// to about `max` characters with `…` marking the cut.
pub fn escape(bytes: &[u8], max: usize) -> String {
    let mut out = String::new();
    for b in bytes {
        if out.len() >= max {
            out.push('…');
            break;
        }
        out.extend(std::ascii::escape_default(*b).map(char::from));
    }
    out
}

/// The ack subject of a delivery of `seq` (JetStream's v1 layout: stream,
/// consumer, delivery count, stream and consumer sequences, timestamp,
/// pending). The server looks the delivery up by stream sequence, so the
/// counts a real delivery would carry are not needed.
pub fn ack_subject(stream: &str, consumer: &str, seq: u64) -> String {
    format!("$JS.ACK.{stream}.{consumer}.1.{seq}.{seq}.0.0")
}

#[derive(Serialize)]
struct GetRequest<'a> {
    seq: u64,
    next_by_subj: &'a str,
}

#[derive(Deserialize)]
struct GetReply {
    message: RawStored,
}

#[derive(Deserialize)]
struct RawStored {
    subject: String,
    seq: u64,
    #[serde(default)]
    hdrs: Option<String>,
    #[serde(default)]
    data: Option<String>,
}

/// JetStream's "no message found".
const NO_MESSAGE: u64 = 10037;

/// The first message of `stream` at or after `seq` whose subject matches
/// `filter`, or `None` past the end.
async fn next_stored(
    js: &jetstream::Context,
    stream: &str,
    seq: u64,
    filter: &str,
) -> Result<Option<Stored>, async_nats::Error> {
    let request = GetRequest {
        seq,
        next_by_subj: filter,
    };
    let reply: Response<GetReply> = js
        .request(format!("STREAM.MSG.GET.{stream}"), &request)
        .await?;
    let raw = match reply {
        Response::Ok(r) => r.message,
        Response::Err { error } if error.error_code().0 == NO_MESSAGE => return Ok(None),
        Response::Err { error } => return Err(error.into()),
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let headers = match raw.hdrs {
        Some(h) => b64.decode(h)?,
        None => Vec::new(),
    };
    let payload = match raw.data {
        Some(d) => b64.decode(d)?,
        None => Vec::new(),
    };
    Ok(Some(Stored {
        subject: raw.subject,
        seq: raw.seq,
        headers,
        payload: payload.into(),
    }))
}

/// Why async-nats cannot read `m`, or `None` if it can. A subject shown
/// with U+FFFD is checked against the server: asked for the next message
/// on exactly that (UTF-8) subject from `m.seq`, it returns `m` only if the
/// stored bytes are that UTF-8; a subject that was not UTF-8 matches
/// nothing there.
async fn problem(
    js: &jetstream::Context,
    stream: &str,
    m: &Stored,
) -> Result<Option<String>, async_nats::Error> {
    if m.subject.contains('\u{FFFD}') {
        // A failed request proves nothing: the sweep fails and runs again
        // at the next reconnect, rather than dead-letter a message that
        // may be readable.
        let same = next_stored(js, stream, m.seq, &m.subject).await?;
        if same.is_none_or(|s| s.seq != m.seq) {
            return Ok(Some(
                "the subject is not valid UTF-8 (shown with U+FFFD in place of the invalid bytes)"
                    .to_owned(),
            ));
        }
    }
    Ok(header_problem(&m.headers))
}

/// One tenant's sweep state for one bound consumer.
pub struct Sweeper {
    js: jetstream::Context,
    stream: String,
    consumer: String,
    filter: String,
    /// Every message up to here was read (and found readable, or handled).
    read_through: u64,
    /// Unreadable messages dead-lettered and terminated, until the ack
    /// floor passes them: a term lost on the way is sent again.
    termed: BTreeSet<u64>,
}

/// An unreadable message found by a sweep.
#[derive(Debug)]
pub struct Found {
    /// The message, as stored.
    pub stored: Stored,
    /// Why the client cannot read it.
    pub problem: String,
    /// The ack subject to settle it on.
    pub ack_subject: String,
}

impl Sweeper {
    /// Sweeps of `consumer` on `js`.
    pub fn new(js: jetstream::Context, info: &jetstream::consumer::Info) -> Self {
        let filter = if info.config.filter_subject.is_empty() {
            ">".to_owned()
        } else {
            info.config.filter_subject.clone()
        };
        Sweeper {
            js,
            stream: info.stream_name.clone(),
            consumer: info.name.clone(),
            filter,
            read_through: 0,
            termed: BTreeSet::new(),
        }
    }

    /// Read what the consumer delivered past its ack floor (`info`) and not
    /// read yet; return the unreadable messages. Terms that may have been
    /// lost are sent again first.
    pub async fn sweep(
        &mut self,
        info: &jetstream::consumer::Info,
    ) -> Result<Vec<Found>, async_nats::Error> {
        let floor = info.ack_floor.stream_sequence;
        let delivered = info.delivered.stream_sequence;
        self.termed = self.termed.split_off(&(floor + 1));
        for seq in &self.termed {
            self.term(*seq).await;
        }
        let mut seq = floor.max(self.read_through) + 1;
        let mut found = Vec::new();
        let mut read = 0;
        while seq <= delivered && read < MAX_SWEEP {
            let Some(m) = next_stored(&self.js, &self.stream, seq, &self.filter).await? else {
                break;
            };
            if m.seq > delivered {
                break;
            }
            read += 1;
            self.read_through = m.seq;
            seq = m.seq + 1;
            if let Some(problem) = problem(&self.js, &self.stream, &m).await? {
                found.push(Found {
                    ack_subject: ack_subject(&self.stream, &self.consumer, m.seq),
                    stored: m,
                    problem,
                });
            }
        }
        Ok(found)
    }

    /// `seq` was dead-lettered: terminate it (and again at later sweeps
    /// while the ack floor is below it).
    pub async fn settled(&mut self, seq: u64) {
        self.termed.insert(seq);
        self.term(seq).await;
    }

    async fn term(&self, seq: u64) {
        let client = self.js.client();
        let subject = ack_subject(&self.stream, &self.consumer, seq);
        let sent: Result<(), async_nats::Error> =
            match client.publish(subject, "+TERM".into()).await {
                Ok(()) => client.flush().await.map_err(Into::into),
                Err(e) => Err(e.into()),
            };
        if let Err(e) = sent {
            tracing::debug!(stream = self.stream, seq, error = %e, "term not sent; the next sweep sends it again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_header_blocks_parse_as_async_nats_does() {
        assert_eq!(parse_headers(b""), Ok(vec![]));
        assert_eq!(
            parse_headers(b"NATS/1.0\r\nA: 1\r\nB:  two \r\n folded\r\n\r\n"),
            Ok(vec![
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), "two  folded".to_owned())
            ])
        );
        // A trailing CR is whitespace, trimmed; only one inside stays.
        assert_eq!(
            parse_headers(b"NATS/1.0\r\nA: x\r\r\n\r\n"),
            Ok(vec![("A".to_owned(), "x".to_owned())])
        );
    }

    #[test]
    fn every_way_async_nats_fails_is_named() {
        let cases: [(&[u8], &str); 6] = [
            (b"NATS/1.0\r\nA: \xff\r\n\r\n", "not valid UTF-8"),
            (b"HTTP/1.1\r\n\r\n", "does not start with `NATS/1.0`"),
            (b"NATS/1.0 abc\r\n\r\n", "status (`abc`)"),
            (b"NATS/1.0 408 Request Timeout\r\n\r\n", "status (`408`)"),
            (b"NATS/1.0\r\nno colon\r\n\r\n", "line 1 has no `:`"),
            (b"NATS/1.0\r\nA: a\rb\r\n\r\n", "bare CR"),
        ];
        for (block, want) in cases {
            let got = header_problem(block).unwrap_or_default();
            assert!(got.contains(want), "{}: {got}", escape(block, 100));
        }
        let got = header_problem(b"NATS/1.0\r\nBad Name: x\r\n\r\n").unwrap_or_default();
        assert!(got.contains("`Bad Name` is not visible ASCII"), "{got}");
    }

    #[test]
    fn escaped_bytes_are_printable_and_bounded() {
        assert_eq!(escape(b"A: \xff\r\n", 100), "A: \\xff\\r\\n");
        let long = escape(&[0u8; 100], 10);
        assert!(long.ends_with('…') && long.len() < 20, "{long}");
    }

    #[test]
    fn ack_subjects_follow_the_v1_layout() {
        assert_eq!(
            ack_subject("ACME", "sluice", 7),
            "$JS.ACK.ACME.sluice.1.7.7.0.0"
        );
    }
}
