//! Test guest `oldbatch`: a handler built against an older `wit/` (in
//! `wit/pipeline.wit` beside this crate), whose `batch` interface took typed
//! deliveries instead of packed ones. `handle` and `handle-batch` both pass
//! every message on unchanged.
//!
//! The host's tests load it to prove that a component whose `batch` export
//! has another shape still runs, one `handle` call per message, instead of
//! failing at every instantiation.

// The generated bindings and their export glue (expanded at `export!`
// below) need `unsafe` for the canonical ABI; the SDK hides this for
// ordinary plugins.
#![allow(unsafe_code)]

#[allow(missing_docs, clippy::too_many_arguments)]
mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "batch-handler",
    });
}

use bindings::exports::sluice::pipeline::batch::{self, Delivery};
use bindings::sluice::pipeline::types::{Message, Origin, Verdict};

struct OldBatch;

impl bindings::Guest for OldBatch {
    fn init(_config: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }

    fn handle(_origin: Origin, msg: Message) -> Verdict {
        Verdict::Next(msg)
    }
}

impl batch::Guest for OldBatch {
    fn handle_batch(_tenant: String, _stream: String, batch: Vec<Delivery>) -> Vec<Verdict> {
        batch.into_iter().map(|d| Verdict::Next(d.msg)).collect()
    }
}

bindings::export!(OldBatch with_types_in bindings);
