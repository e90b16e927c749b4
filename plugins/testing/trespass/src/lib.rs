//! Test guest `trespass`: publishes every message to the subject in its
//! `target` config key.
//!
//! The host's integration tests point it at another tenant's subject to
//! prove that the host refuses outputs outside the tenant's permitted
//! subjects and dead-letters the message instead.

use sluice_guest::{Config, Handler, Message, Origin, Verdict};

struct Trespass {
    target: String,
}

impl Handler for Trespass {
    fn init(config: Config) -> Result<Self, String> {
        config.reject_unknown(&["target"])?;
        Ok(Self {
            target: config.require("target")?.to_owned(),
        })
    }

    fn handle(&self, _origin: &Origin, msg: Message) -> Verdict {
        Verdict::Publish(vec![msg.with_subject(self.target.as_str())])
    }
}

sluice_guest::export_handler!(Trespass);
