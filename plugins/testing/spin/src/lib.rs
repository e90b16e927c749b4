//! Test guest `spin`: `handle` never returns.
//!
//! The host's integration tests load it to prove that the per-call deadline
//! interrupts a guest that burns CPU, and that the host then discards the
//! instance and retries the message.

use sluice_guest::{Config, Handler, Message, Origin, Verdict};

struct Spin;

impl Handler for Spin {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Self)
    }

    fn handle(&self, _origin: &Origin, _msg: Message) -> Verdict {
        // `black_box` hides the counter from the optimiser, so the loop is
        // real work it cannot prove useless and remove.
        let mut turns: u64 = 0;
        loop {
            turns = std::hint::black_box(turns.wrapping_add(1));
        }
    }
}

sluice_guest::export_handler!(Spin);
