//! Per-key ordering (`ordering = "subject"`, `"header:NAME"` or
//! `"field:NAME"` on a tenant): messages with the same key are processed
//! and settled one after another in stream order, while different keys run
//! in parallel.
//!
//! The tenant admits every message through [`Order`]: the first message of
//! a key runs at once; later ones of the same key wait, each keeping its
//! in-flight permit (and getting in-progress acks), until the one before
//! has settled. A retry of an ordered message is held in place (the host
//! waits out the delay and runs it again) instead of a nak, so a later
//! message of its key cannot overtake it.
//!
//! After a restart (or another host's loss) the consumer may have messages
//! delivered before and not yet acked; they come back as redeliveries,
//! possibly after newer messages and not necessarily in order. Until the
//! consumer's ack floor reaches the last sequence delivered before this
//! host bound it, [`Order`] is *recovering*: those older messages run one
//! at a time, each only once every message before it is acked (the ack
//! floor is just below it), and newer messages wait. The consumer's
//! `max_ack_pending` equals the tenant's `max_in_flight` for an ordered
//! tenant, so the waiting newer messages can never hold the permits the
//! older ones need.

use std::collections::{BTreeMap, HashMap, VecDeque};

/// What a tenant orders by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderingKey {
    /// The message's subject.
    Subject,
    /// A header's (first) value.
    Header(String),
    /// A field of the JSON payload: a top-level name, or a JSON pointer
    /// (`/a/b`) into nested objects.
    Field(String),
}

impl OrderingKey {
    /// Parse the config value; the error says what is accepted.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let expected = "expected \"subject\", \"header:NAME\" or \"field:NAME\" (a JSON pointer such as \"field:/order/id\" reaches into nested objects)";
        if raw == "subject" {
            return Ok(OrderingKey::Subject);
        }
        if let Some(name) = raw.strip_prefix("header:") {
            let visible = |c: char| c.is_ascii_graphic() && c != ':';
            if name.is_empty() || !name.chars().all(visible) {
                return Err(format!(
                    "`{raw}`: a header name is visible ASCII without `:`; {expected}"
                ));
            }
            return Ok(OrderingKey::Header(name.to_owned()));
        }
        if let Some(field) = raw.strip_prefix("field:") {
            if field.is_empty() {
                return Err(format!("`{raw}` names no field; {expected}"));
            }
            return Ok(OrderingKey::Field(field.to_owned()));
        }
        Err(format!("`{raw}`: {expected}"))
    }

    /// The key of a message; `None` when it has none (no such header, a
    /// payload that is not JSON or lacks the field). Messages without a key
    /// share one lane of their own.
    pub fn key_of(
        &self,
        subject: &str,
        headers: Option<&async_nats::HeaderMap>,
        payload: &[u8],
    ) -> Option<String> {
        match self {
            OrderingKey::Subject => Some(subject.to_owned()),
            OrderingKey::Header(name) => headers
                .and_then(|h| h.get(name.as_str()))
                .map(|v| v.as_str().to_owned()),
            OrderingKey::Field(field) => {
                let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
                let found = if field.starts_with('/') {
                    value.pointer(field)
                } else {
                    value.get(field)
                }?;
                match found {
                    // A string is its text; anything else its JSON, so
                    // 7 and "7" are different keys.
                    serde_json::Value::String(s) => Some(format!("s:{s}")),
                    serde_json::Value::Null => None,
                    other => Some(format!("j:{other}")),
                }
            }
        }
    }
}

/// A lane: one key's messages.
pub type Key = Option<String>;

/// Which waiting messages run next, per key, for one tenant. `T` is what
/// the tenant holds for a message (its delivery and permit).
pub struct Order<T> {
    lanes: HashMap<Key, VecDeque<(u64, T)>>,
    recovery: Option<Recovery<T>>,
}

struct Recovery<T> {
    /// The last stream sequence delivered before this host bound the
    /// consumer: recovery ends when the ack floor reaches it.
    until: u64,
    /// The ack floor as known: every sequence up to it is acked.
    floor: u64,
    /// Messages up to `until`, by sequence.
    older: BTreeMap<u64, (Key, T)>,
    /// One of them running.
    running: bool,
    /// Messages after `until`, in arrival order.
    newer: Vec<(u64, Key, T)>,
}

impl<T> Default for Order<T> {
    fn default() -> Self {
        Order {
            lanes: HashMap::new(),
            recovery: None,
        }
    }
}

impl<T> Order<T> {
    /// An order that starts recovering, when the consumer had messages
    /// pending at bind: delivered up to `until`, acked up to `floor`.
    pub fn recovering(until: u64, floor: u64) -> Self {
        let mut order = Order::default();
        if until > floor {
            order.recovery = Some(Recovery {
                until,
                floor,
                older: BTreeMap::new(),
                running: false,
                newer: Vec::new(),
            });
        }
        order
    }

    /// Whether older messages are still being recovered.
    pub fn is_recovering(&self) -> bool {
        self.recovery.is_some()
    }

    /// A message of stream sequence `seq` arrived: what may run now (it,
    /// or nothing while it waits).
    pub fn admit(&mut self, key: Key, seq: u64, item: T) -> Vec<(Key, u64, T)> {
        if let Some(r) = &mut self.recovery {
            if seq <= r.floor {
                // Acked already (a stale redelivery): nothing to do; the
                // caller's handle is dropped.
                return Vec::new();
            }
            if seq <= r.until {
                // A second delivery of one waiting replaces it.
                r.older.insert(seq, (key, item));
            } else {
                r.newer.push((seq, key, item));
            }
            return self.next_recovered();
        }
        match self.lanes.get_mut(&key) {
            Some(waiting) => {
                waiting.push_back((seq, item));
                Vec::new()
            }
            None => {
                self.lanes.insert(key.clone(), VecDeque::new());
                vec![(key, seq, item)]
            }
        }
    }

    /// The message of `key` at `seq` has settled (acked, dead-lettered, or
    /// left to a redelivery): what may run now.
    pub fn settled(&mut self, key: &Key, seq: u64) -> Vec<(Key, u64, T)> {
        if let Some(r) = &mut self.recovery {
            r.running = false;
            // Every message before it was acked when it started.
            r.floor = r.floor.max(seq);
            return self.next_recovered();
        }
        let Some(waiting) = self.lanes.get_mut(key) else {
            return Vec::new();
        };
        match waiting.pop_front() {
            Some((next_seq, item)) => vec![(key.clone(), next_seq, item)],
            None => {
                self.lanes.remove(key);
                Vec::new()
            }
        }
    }

    /// The consumer's ack floor, as the server reports it: what may run
    /// now.
    pub fn floor(&mut self, floor: u64) -> Vec<(Key, u64, T)> {
        match &mut self.recovery {
            Some(r) => {
                r.floor = r.floor.max(floor);
                self.next_recovered()
            }
            None => Vec::new(),
        }
    }

    /// The messages waiting (not running), for in-progress acks.
    pub fn waiting(&self) -> Vec<&T> {
        let mut all: Vec<&T> = self.lanes.values().flatten().map(|(_, t)| t).collect();
        if let Some(r) = &self.recovery {
            all.extend(r.older.values().map(|(_, t)| t));
            all.extend(r.newer.iter().map(|(_, _, t)| t));
        }
        all
    }

    /// In recovery: the oldest waiting message if every one before it is
    /// acked; once the floor reaches `until`, recovery ends and the newer
    /// messages enter their lanes, in stream order.
    fn next_recovered(&mut self) -> Vec<(Key, u64, T)> {
        let Some(r) = &mut self.recovery else {
            return Vec::new();
        };
        let floor = r.floor;
        // Deliveries of what is acked meanwhile have nothing left to do.
        r.older.retain(|seq, _| *seq > floor);
        if r.running {
            return Vec::new();
        }
        if floor < r.until {
            return match r.older.first_key_value() {
                Some((&seq, _)) if seq == floor + 1 => {
                    r.running = true;
                    r.older
                        .pop_first()
                        .map(|(seq, (key, item))| vec![(key, seq, item)])
                        .unwrap_or_default()
                }
                _ => Vec::new(),
            };
        }
        let Some(mut done) = self.recovery.take() else {
            return Vec::new();
        };
        done.newer.sort_by_key(|(seq, _, _)| *seq);
        let mut run = Vec::new();
        for (seq, key, item) in done.newer {
            run.extend(self.admit(key, seq, item));
        }
        run
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Key {
        Some(s.to_owned())
    }

    #[test]
    fn the_config_value_parses_or_says_what_is_accepted() {
        assert_eq!(OrderingKey::parse("subject"), Ok(OrderingKey::Subject));
        assert_eq!(
            OrderingKey::parse("header:Order-Id"),
            Ok(OrderingKey::Header("Order-Id".into()))
        );
        assert_eq!(
            OrderingKey::parse("field:/order/id"),
            Ok(OrderingKey::Field("/order/id".into()))
        );
        for bad in ["subjects", "header:", "header:a b", "field:", ""] {
            let e = OrderingKey::parse(bad).unwrap_err();
            assert!(e.contains("expected \"subject\""), "{bad}: {e}");
        }
    }

    #[test]
    fn keys_come_from_the_subject_a_header_or_a_field() {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Order-Id", "o-7");
        let p = br#"{"user":"ann","n":7,"order":{"id":"x"},"nul":null}"#;
        let key = |spec: &str, h: Option<&async_nats::HeaderMap>, p: &[u8]| {
            OrderingKey::parse(spec).unwrap().key_of("a.b", h, p)
        };
        assert_eq!(key("subject", None, p), k("a.b"));
        assert_eq!(key("header:Order-Id", Some(&h), p), k("o-7"));
        assert_eq!(key("header:Other", Some(&h), p), None);
        assert_eq!(key("field:user", None, p), k("s:ann"));
        assert_eq!(key("field:n", None, p), k("j:7"));
        assert_eq!(key("field:/order/id", None, p), k("s:x"));
        assert_eq!(key("field:nul", None, p), None);
        assert_eq!(key("field:user", None, b"not json"), None);
    }

    #[test]
    fn one_key_runs_in_order_and_other_keys_run_beside_it() {
        let mut o = Order::default();
        assert_eq!(o.admit(k("a"), 1, "a1").len(), 1);
        assert!(o.admit(k("a"), 2, "a2").is_empty(), "waits for a1");
        assert_eq!(o.admit(k("b"), 3, "b1").len(), 1, "b runs beside a");
        assert!(o.admit(k("a"), 4, "a3").is_empty());
        assert_eq!(o.waiting().len(), 2);
        let next = o.settled(&k("a"), 1);
        assert_eq!(next.iter().map(|n| n.2).collect::<Vec<_>>(), ["a2"]);
        let next = o.settled(&k("a"), 2);
        assert_eq!(next.iter().map(|n| n.2).collect::<Vec<_>>(), ["a3"]);
        assert!(o.settled(&k("a"), 4).is_empty());
        assert!(o.settled(&k("b"), 3).is_empty());
        assert!(o.lanes.is_empty(), "finished lanes are forgotten");
        assert_eq!(o.admit(None, 5, "none").len(), 1, "no key is a lane too");
    }

    #[test]
    fn recovery_runs_older_messages_in_sequence_before_any_newer_one() {
        // Delivered up to 10 before this host bound it; acked up to 5.
        let mut o = Order::recovering(10, 5);
        assert!(o.is_recovering());
        // A newer message and redeliveries, out of order.
        assert!(o.admit(k("a"), 11, "a11").is_empty());
        assert!(o.admit(k("a"), 8, "a8").is_empty(), "7 and 6 are not acked");
        assert!(o.admit(k("b"), 7, "b7").is_empty());
        assert_eq!(o.admit(k("a"), 6, "a6").len(), 1, "6 follows the floor");
        assert!(o.admit(k("c"), 12, "c12").is_empty(), "newer waits");
        let run: Vec<_> = o.settled(&k("a"), 6).into_iter().map(|r| r.2).collect();
        assert_eq!(run, ["b7"]);
        let run: Vec<_> = o.settled(&k("b"), 7).into_iter().map(|r| r.2).collect();
        assert_eq!(run, ["a8"]);
        // 9 and 10 were acked by the host before (the server says so).
        assert!(o.settled(&k("a"), 8).is_empty(), "9 is not known acked");
        let run: Vec<_> = o.floor(10).into_iter().map(|r| r.2).collect();
        assert!(!o.is_recovering());
        assert_eq!(run, ["a11", "c12"], "newer ones, in lanes, in order");
    }

    #[test]
    fn recovery_drops_stale_and_repeated_deliveries() {
        let mut o = Order::recovering(3, 1);
        assert!(o.admit(k("a"), 1, "stale").is_empty());
        assert!(o.admit(k("a"), 3, "first").is_empty());
        assert!(o.admit(k("a"), 3, "again").is_empty());
        assert_eq!(o.waiting(), [&"again"]);
        let run: Vec<_> = o.floor(2).into_iter().map(|r| r.2).collect();
        assert_eq!(run, ["again"]);
        assert!(o.settled(&k("a"), 3).is_empty());
        assert!(!o.is_recovering());
    }
}
