//! The guest's half of the packed format of `handle-batch` (documented on the
//! `batch` interface in `wit/pipeline.wit`): deliveries are read from one
//! buffer and verdicts written into one. The host's half lives in the host
//! runtime; each side is tested against the format written out by hand.

use crate::{Message, Verdict};

const NEXT: u8 = 0;
const PUBLISH: u8 = 1;
const ACK: u8 = 2;
const DEAD_LETTER: u8 = 3;
const RETRY: u8 = 4;

/// One delivery: its origin's per-message facts and the message.
#[derive(Debug, PartialEq, Eq)]
pub struct Delivery {
    pub stream_seq: u64,
    pub delivered: u32,
    pub published_ms: u64,
    pub msg: Message,
}

/// Reads deliveries one at a time, so a handler's output for one message can
/// be written before the next is decoded. `None` after the last, or at the
/// first byte that does not fit the format (the host never sends that; the
/// caller then answers with no verdicts, which the host treats as a failed
/// batch).
pub struct Deliveries<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Deliveries<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Deliveries { buf, at: 0 }
    }

    /// Whether every byte was read.
    pub fn finished(&self) -> bool {
        self.at == self.buf.len()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())?;
        let b = &self.buf[self.at..end];
        self.at = end;
        Some(b)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Some(a)
    }

    fn len(&mut self) -> Option<usize> {
        self.array().map(|b| u32::from_le_bytes(b) as usize)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.len()?;
        self.take(n)
    }

    fn string(&mut self) -> Option<String> {
        std::str::from_utf8(self.bytes()?).ok().map(str::to_owned)
    }

    fn message(&mut self) -> Option<Message> {
        let subject = self.string()?;
        let n = self.len()?;
        // Each header takes at least its two lengths.
        let mut headers = Vec::with_capacity(n.min((self.buf.len() - self.at) / 8));
        for _ in 0..n {
            headers.push((self.string()?, self.string()?));
        }
        let payload = self.bytes()?.to_vec();
        Some(Message {
            subject,
            headers,
            payload,
        })
    }
}

impl Iterator for Deliveries<'_> {
    type Item = Delivery;

    fn next(&mut self) -> Option<Delivery> {
        if self.finished() {
            return None;
        }
        Some(Delivery {
            stream_seq: u64::from_le_bytes(self.array()?),
            delivered: u32::from_le_bytes(self.array()?),
            published_ms: u64::from_le_bytes(self.array()?),
            msg: self.message()?,
        })
    }
}

/// Append `verdict` to `out`. False if a length does not fit the format's
/// `u32`, which a guest's memory limit rules out in practice.
pub fn put_verdict(out: &mut Vec<u8>, verdict: &Verdict) -> bool {
    match verdict {
        Verdict::Next(msg) => {
            out.push(NEXT);
            put_message(out, msg)
        }
        Verdict::Publish(msgs) => {
            out.push(PUBLISH);
            put_len(out, msgs.len()) && msgs.iter().all(|m| put_message(out, m))
        }
        Verdict::Ack => {
            out.push(ACK);
            true
        }
        Verdict::DeadLetter(reason) => {
            out.push(DEAD_LETTER);
            put_bytes(out, reason.as_bytes())
        }
        Verdict::Retry(ms) => {
            out.push(RETRY);
            out.extend_from_slice(&ms.to_le_bytes());
            true
        }
    }
}

fn put_message(out: &mut Vec<u8>, msg: &Message) -> bool {
    put_bytes(out, msg.subject.as_bytes())
        && put_len(out, msg.headers.len())
        && msg
            .headers
            .iter()
            .all(|(k, v)| put_bytes(out, k.as_bytes()) && put_bytes(out, v.as_bytes()))
        && put_bytes(out, &msg.payload)
}

fn put_len(out: &mut Vec<u8>, n: usize) -> bool {
    match u32::try_from(n) {
        Ok(n) => {
            out.extend_from_slice(&n.to_le_bytes());
            true
        }
        Err(_) => false,
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) -> bool {
    put_len(out, b.len()) && {
        out.extend_from_slice(b);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le32(n: u32) -> [u8; 4] {
        n.to_le_bytes()
    }

    #[test]
    fn reads_deliveries_laid_out_as_the_wit_documents() {
        let buf: Vec<u8> = [
            &7u64.to_le_bytes()[..],
            &le32(2),
            &0x0102u64.to_le_bytes(),
            &le32(3),
            b"a.b",
            &le32(1),
            &le32(1),
            b"K",
            &le32(1),
            b"v",
            &le32(2),
            b"xy",
            // A second delivery, without headers or payload.
            &8u64.to_le_bytes(),
            &le32(1),
            &0u64.to_le_bytes(),
            &le32(1),
            b"c",
            &le32(0),
            &le32(0),
        ]
        .concat();
        let mut d = Deliveries::new(&buf);
        let got: Vec<Delivery> = d.by_ref().collect();
        assert!(d.finished());
        assert_eq!(
            got,
            vec![
                Delivery {
                    stream_seq: 7,
                    delivered: 2,
                    published_ms: 0x0102,
                    msg: Message {
                        subject: "a.b".into(),
                        headers: vec![("K".into(), "v".into())],
                        payload: b"xy".to_vec(),
                    },
                },
                Delivery {
                    stream_seq: 8,
                    delivered: 1,
                    published_ms: 0,
                    msg: Message {
                        subject: "c".into(),
                        headers: vec![],
                        payload: vec![],
                    },
                },
            ]
        );
    }

    #[test]
    fn stops_at_bytes_that_do_not_fit() {
        let mut buf: Vec<u8> = [&1u64.to_le_bytes()[..], &le32(1), &0u64.to_le_bytes()].concat();
        // A subject length past the end.
        buf.extend_from_slice(&le32(99));
        let mut d = Deliveries::new(&buf);
        assert_eq!(d.next(), None);
    }

    #[test]
    fn writes_every_verdict_as_the_wit_documents() {
        let msg = Message {
            subject: "s".into(),
            headers: vec![("H".into(), "1".into())],
            payload: b"p".to_vec(),
        };
        let packed_msg: Vec<u8> = [
            &le32(1)[..],
            b"s",
            &le32(1),
            &le32(1),
            b"H",
            &le32(1),
            b"1",
            &le32(1),
            b"p",
        ]
        .concat();
        let mut out = Vec::new();
        for v in [
            Verdict::Next(msg.clone()),
            Verdict::Publish(vec![msg.clone(), msg]),
            Verdict::Ack,
            Verdict::DeadLetter("no".into()),
            Verdict::Retry(300),
        ] {
            assert!(put_verdict(&mut out, &v));
        }
        let expected: Vec<u8> = [
            &[NEXT][..],
            &packed_msg,
            &[PUBLISH],
            &le32(2),
            &packed_msg,
            &packed_msg,
            &[ACK],
            &[DEAD_LETTER],
            &le32(2),
            b"no",
            &[RETRY],
            &le32(300),
        ]
        .concat();
        assert_eq!(out, expected);
    }
}
