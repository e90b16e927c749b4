//! The dead letter: the source message whole (or cut to fit the server's
//! `max_payload`), with the host's headers saying what happened to it.

use super::{FRAMING, Sink};
use crate::headers::{
    DELIVERED_HEADER, MSG_ID_HEADER, PLUGIN_HEADER, REASON_HEADER, SOURCE_HEADER_PREFIX,
    SOURCE_SEQ_HEADER, SOURCE_STREAM_HEADER, SOURCE_SUBJECT_HEADER, TENANT_HEADER,
    TRUNCATED_HEADER, header_bytes, host_owned,
};
use crate::message::{Message, Origin};

/// Longest `Sluice-Reason` kept; a guest's reason is its own text, and a
/// header is no place for a novel.
const MAX_REASON: usize = 1024;

impl Sink {
    /// The dead letter for `source`. `extra` host headers are added after
    /// Sluice's own; a `delivered` of 0 (not known) leaves out
    /// `Sluice-Delivered`.
    pub(super) fn dead_letter_message(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::{REASON_HEADER, TENANT_HEADER, TRUNCATED_HEADER};

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
}
