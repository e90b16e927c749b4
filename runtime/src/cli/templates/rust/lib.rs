//! {{name}}: a Sluice handler. The host calls `init` once per instance with
//! the stage's config, then `handle` once per message; the verdict decides
//! what happens to the message (`Next`, `Publish`, `Ack`, `DeadLetter`,
//! `Retry`). See wit/pipeline.wit for the contract.

// The generated bindings take one argument per WIT field; `cargo clippy`
// on this project would otherwise flag code that is not yours.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({ path: "wit", world: "handler" });

use sluice::pipeline::host::{Level, log};

struct Handler;

impl Guest for Handler {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        // Refuse what you do not understand: a typo in the stage config then
        // fails `sluice check` instead of being ignored.
        match config.first() {
            Some((key, _)) => Err(format!(
                "unknown config key \"{key}\"; this plugin takes no configuration"
            )),
            None => Ok(()),
        }
    }

    fn handle(origin: Origin, msg: Message) -> Verdict {
        log(Level::Debug, &format!("{} for {}", msg.subject, origin.tenant));
        // Pass the message on unchanged to the next stage.
        Verdict::Next(msg)
    }
}

export!(Handler);
