//! Test guest `counter`: counts its calls and traps on request.
//!
//! - Every message comes back as `next` with header `X-Calls: <n>`, where
//!   `n` counts the calls on this instance from 1. The count lives in guest
//!   memory, so the host's tests can see whether an instance was reused or
//!   replaced (after a trap it starts at 1 again).
//! - A payload of exactly `boom` panics, which is a trap for the host.
//! - A `reject` key in the config makes `init` fail with
//!   `init rejected: <value>`.

use std::sync::atomic::{AtomicU64, Ordering};

use sluice_guest::{Config, Handler, Message, Origin, Verdict};

/// Calls on this instance. A static rather than a field so it is plainly
/// instance memory, the thing the host's reuse tests observe.
static CALLS: AtomicU64 = AtomicU64::new(0);

struct Counter;

impl Handler for Counter {
    fn init(config: Config) -> Result<Self, String> {
        match config.get("reject") {
            Some(value) => Err(format!("init rejected: {value}")),
            None => Ok(Self),
        }
    }

    fn handle(&self, _origin: &Origin, mut msg: Message) -> Verdict {
        let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        if msg.payload == b"boom" {
            // The trap is the point: the host must survive it, discard this
            // instance and retry the message.
            #[allow(clippy::panic)]
            {
                panic!("boom requested on call {calls}");
            }
        }
        msg.set_header("X-Calls", calls.to_string());
        Verdict::Next(msg)
    }
}

sluice_guest::export_handler!(Counter);
