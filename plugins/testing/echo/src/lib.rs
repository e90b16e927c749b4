//! Test guest `echo`: returns every message unchanged.
//!
//! The baseline for benchmarks: what a call costs when the handler does
//! nothing but receive and return the message. Any config is accepted.

use sluice_guest::{Config, Handler, Message, Origin, Verdict};

struct Echo;

impl Handler for Echo {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Self)
    }

    fn handle(&self, _origin: &Origin, msg: Message) -> Verdict {
        Verdict::Next(msg)
    }
}

sluice_guest::export_handler!(Echo);
