//! The host's half of the packed format that `handle-batch` uses (see the
//! `batch` interface in `wit/pipeline.wit`): deliveries are encoded into one
//! buffer, the guest's verdicts decoded from one. The guest's half lives in
//! the guest SDK. A guest's bytes are untrusted: decoding checks every length
//! and every string and reports where the bytes stop making sense.

use std::borrow::Borrow;

use bytes::Bytes;

use crate::message::{Message, Origin, Verdict};

const NEXT: u8 = 0;
const PUBLISH: u8 = 1;
const ACK: u8 = 2;
const DEAD_LETTER: u8 = 3;
const RETRY: u8 = 4;

/// A length that does not fit the format's `u32`. NATS caps messages far
/// below this, so only a caller bypassing NATS can hit it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooLarge;

/// Append the deliveries `(origins[j], msgs[j])` to `out`.
pub fn encode_deliveries<M: Borrow<Message>>(
    out: &mut Vec<u8>,
    origins: &[&Origin],
    msgs: &[M],
) -> Result<(), TooLarge> {
    out.reserve(msgs.iter().map(|m| m.borrow().size() + 32).sum());
    for (origin, msg) in origins.iter().zip(msgs) {
        let msg = msg.borrow();
        out.extend_from_slice(&origin.stream_seq.to_le_bytes());
        out.extend_from_slice(&origin.delivered.to_le_bytes());
        out.extend_from_slice(&origin.published_ms().to_le_bytes());
        encode_message(out, msg)?;
    }
    Ok(())
}

fn encode_message(out: &mut Vec<u8>, msg: &Message) -> Result<(), TooLarge> {
    bytes(out, msg.subject.as_bytes())?;
    len(out, msg.headers.len())?;
    for (name, value) in &msg.headers {
        bytes(out, name.as_bytes())?;
        bytes(out, value.as_bytes())?;
    }
    bytes(out, &msg.payload)
}

fn len(out: &mut Vec<u8>, n: usize) -> Result<(), TooLarge> {
    let n = u32::try_from(n).map_err(|_| TooLarge)?;
    out.extend_from_slice(&n.to_le_bytes());
    Ok(())
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) -> Result<(), TooLarge> {
    len(out, b.len())?;
    out.extend_from_slice(b);
    Ok(())
}

/// Decode exactly `count` verdicts that fill `buf`; the error says what is
/// wrong and at which byte. Payloads are cut from `buf`, not copied.
pub fn decode_verdicts(buf: Vec<u8>, count: usize) -> Result<Vec<Verdict>, String> {
    let buf = Bytes::from(buf);
    let mut r = Reader { buf: &buf, at: 0 };
    // Every verdict takes at least its tag byte, so a count past the buffer's
    // length is an error found below, never a huge allocation here.
    let mut verdicts = Vec::with_capacity(count.min(buf.len()));
    for k in 0..count {
        let verdict = r.verdict().map_err(|e| format!("verdict {k}: {e}"))?;
        verdicts.push(verdict);
    }
    if r.at != buf.len() {
        return Err(format!(
            "{} bytes after the last of {count} verdicts",
            buf.len() - r.at
        ));
    }
    Ok(verdicts)
}

struct Reader<'a> {
    /// The answer; payloads are cut from it.
    buf: &'a Bytes,
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| format!("{n} bytes wanted at byte {} of {}", self.at, self.buf.len()))?;
        let buf: &'a Bytes = self.buf;
        let b = &buf[self.at..end];
        self.at = end;
        Ok(b)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.array().map(u32::from_le_bytes)
    }

    fn len(&mut self) -> Result<usize, String> {
        // u32 always fits usize on the hosts wasmtime supports.
        self.u32().map(|n| n as usize)
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.len()?;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, String> {
        let at = self.at;
        let b = self.bytes()?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(format!("the string at byte {at} is not UTF-8")),
        }
    }

    fn message(&mut self) -> Result<Message, String> {
        let subject = self.string()?;
        let n = self.len()?;
        // Each header takes at least its two lengths: bound the reservation
        // by what the buffer can hold.
        let mut headers = Vec::with_capacity(n.min((self.buf.len() - self.at) / 8));
        for _ in 0..n {
            headers.push((self.string()?, self.string()?));
        }
        let payload = self.buf.slice_ref(self.bytes()?);
        Ok(Message {
            subject,
            headers,
            payload,
        })
    }

    fn verdict(&mut self) -> Result<Verdict, String> {
        let at = self.at;
        let [tag] = self.array()?;
        Ok(match tag {
            NEXT => Verdict::Next(self.message()?),
            PUBLISH => {
                let n = self.len()?;
                let mut outputs = Vec::with_capacity(n.min((self.buf.len() - self.at) / 12));
                for _ in 0..n {
                    outputs.push(self.message()?);
                }
                Verdict::Publish(outputs)
            }
            ACK => Verdict::Ack,
            DEAD_LETTER => Verdict::DeadLetter(self.string()?),
            RETRY => Verdict::Retry(self.u32()?),
            other => return Err(format!("unknown verdict tag {other} at byte {at}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(subject: &str, headers: &[(&str, &str)], payload: &[u8]) -> Message {
        Message {
            subject: subject.into(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            payload: Bytes::copy_from_slice(payload),
        }
    }

    /// The guest's encoding of verdicts, written out here by hand so the
    /// decoder is checked against the format, not against itself.
    fn put_message(out: &mut Vec<u8>, m: &Message) {
        encode_message(out, m).unwrap();
    }

    #[test]
    fn deliveries_are_laid_out_as_the_wit_documents() {
        let origin = Origin {
            tenant: "acme".into(),
            stream: "IN".into(),
            stream_seq: 7,
            delivered: 2,
            published_us: 0x0102 * 1000 + 999,
        };
        let mut out = Vec::new();
        encode_deliveries(&mut out, &[&origin], &[msg("a.b", &[("K", "v")], b"xy")]).unwrap();
        let expected: Vec<u8> = [
            &7u64.to_le_bytes()[..],
            &2u32.to_le_bytes(),
            &0x0102u64.to_le_bytes(),
            &3u32.to_le_bytes(),
            b"a.b",
            &1u32.to_le_bytes(),
            &1u32.to_le_bytes(),
            b"K",
            &1u32.to_le_bytes(),
            b"v",
            &2u32.to_le_bytes(),
            b"xy",
        ]
        .concat();
        assert_eq!(out, expected);
    }

    #[test]
    fn every_verdict_decodes() {
        let a = msg("a", &[("H", "1"), ("H", "2")], b"{}");
        let b = msg("b", &[], b"");
        let mut buf = vec![NEXT];
        put_message(&mut buf, &a);
        buf.push(PUBLISH);
        buf.extend_from_slice(&2u32.to_le_bytes());
        put_message(&mut buf, &a);
        put_message(&mut buf, &b);
        buf.push(ACK);
        buf.push(DEAD_LETTER);
        buf.extend_from_slice(&4u32.to_le_bytes());
        buf.extend_from_slice(b"why?");
        buf.push(RETRY);
        buf.extend_from_slice(&250u32.to_le_bytes());
        assert_eq!(
            decode_verdicts(buf, 5).unwrap(),
            vec![
                Verdict::Next(a.clone()),
                Verdict::Publish(vec![a, b]),
                Verdict::Ack,
                Verdict::DeadLetter("why?".into()),
                Verdict::Retry(250),
            ]
        );
    }

    #[test]
    fn malformed_verdicts_are_errors_that_say_where() {
        let mut next = vec![NEXT];
        put_message(&mut next, &msg("a", &[], b"xyz"));

        let err = decode_verdicts(next[..next.len() - 1].to_vec(), 1).unwrap_err();
        assert!(
            err.contains("verdict 0") && err.contains("bytes wanted"),
            "{err}"
        );
        let err = decode_verdicts(next.clone(), 2).unwrap_err();
        assert!(err.contains("verdict 1"), "{err}");
        let err = decode_verdicts(next.clone(), 0).unwrap_err();
        assert!(err.contains("after the last of 0"), "{err}");
        let err = decode_verdicts(vec![9], 1).unwrap_err();
        assert!(err.contains("unknown verdict tag 9"), "{err}");

        let mut bad = vec![DEAD_LETTER];
        bad.extend_from_slice(&2u32.to_le_bytes());
        bad.extend_from_slice(&[0xff, 0xfe]);
        let err = decode_verdicts(bad, 1).unwrap_err();
        assert!(err.contains("not UTF-8"), "{err}");

        // A header count far beyond the buffer fails on the bytes, without
        // reserving room for four billion headers first.
        let mut huge = vec![NEXT];
        huge.extend_from_slice(&1u32.to_le_bytes());
        huge.push(b'a');
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        let err = decode_verdicts(huge, 1).unwrap_err();
        assert!(err.contains("bytes wanted"), "{err}");
    }
}
