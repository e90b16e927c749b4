//! Test guest `garble`: `handle` passes every message on unchanged, but
//! `handle-batch` answers with bytes that break the packed format, as its
//! `mode` config key says:
//!
//! - `short`: one verdict fewer than the batch's count;
//! - `tag`: a verdict with a tag the format does not have;
//! - `trailing`: every verdict, then a stray byte;
//! - `utf8`: a dead-letter reason that is not UTF-8.
//!
//! The host's tests use it to prove that a batch call whose answer does not
//! decode fails as a whole and its messages run again one at a time.

use std::cell::RefCell;

use sluice_guest::bindings::exports::sluice::pipeline::batch;
use sluice_guest::bindings::{Guest, Message, Origin, Verdict};

thread_local! {
    static MODE: RefCell<String> = const { RefCell::new(String::new()) };
}

struct Garble;

impl Guest for Garble {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        let mode = config
            .into_iter()
            .find(|(k, _)| k == "mode")
            .map(|(_, v)| v)
            .ok_or("config key \"mode\" is required")?;
        if !["short", "tag", "trailing", "utf8"].contains(&mode.as_str()) {
            return Err(format!("config key \"mode\": unknown mode {mode:?}"));
        }
        MODE.with(|m| *m.borrow_mut() = mode);
        Ok(())
    }

    fn handle(_origin: Origin, msg: Message) -> Verdict {
        Verdict::Next(msg)
    }
}

/// An `ack` verdict in the packed format.
const ACK: u8 = 2;
/// A `dead-letter` verdict's tag.
const DEAD_LETTER: u8 = 3;

impl batch::Guest for Garble {
    fn handle_batch(_tenant: String, _stream: String, count: u32, _deliveries: Vec<u8>) -> Vec<u8> {
        let acks = vec![ACK; count as usize];
        MODE.with(|m| match m.borrow().as_str() {
            "short" => acks[1..].to_vec(),
            "tag" => [&acks[1..], &[9]].concat(),
            "trailing" => [&acks[..], &[ACK]].concat(),
            _ => {
                let mut out = acks[1..].to_vec();
                out.push(DEAD_LETTER);
                out.extend_from_slice(&2u32.to_le_bytes());
                out.extend_from_slice(&[0xff, 0xfe]);
                out
            }
        })
    }
}

sluice_guest::bindings::__export_world!(Garble with_types_in sluice_guest::bindings);
