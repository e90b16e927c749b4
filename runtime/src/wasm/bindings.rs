//! The one place `bindgen!` runs: host-side bindings of the `handler` and
//! `batch-handler` worlds in `wit/`. Everything else in the crate uses the
//! host's own message types and converts at this boundary.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "handler",
});

/// The `batch-handler` world, sharing the `handler` world's types and host
/// interface so one linker and one set of conversions serve both.
pub mod batch {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "batch-handler",
        with: {
            "sluice:pipeline/types": crate::wasm::bindings::sluice::pipeline::types,
            "sluice:pipeline/host": crate::wasm::bindings::sluice::pipeline::host,
        },
    });
}

use self::sluice::pipeline::types as wit;
use crate::message;

impl From<message::Message> for wit::Message {
    fn from(m: message::Message) -> Self {
        wit::Message {
            subject: m.subject,
            headers: m.headers,
            // Copies only if the payload is shared.
            payload: m.payload.into(),
        }
    }
}

impl From<wit::Message> for message::Message {
    fn from(m: wit::Message) -> Self {
        message::Message {
            subject: m.subject,
            headers: m.headers,
            payload: m.payload.into(),
        }
    }
}

impl From<&message::Origin> for wit::Origin {
    fn from(o: &message::Origin) -> Self {
        wit::Origin {
            tenant: o.tenant.clone(),
            stream: o.stream.clone(),
            stream_seq: o.stream_seq,
            delivered: o.delivered,
            published_ms: o.published_ms(),
        }
    }
}

impl From<wit::Verdict> for message::Verdict {
    fn from(v: wit::Verdict) -> Self {
        match v {
            wit::Verdict::Next(m) => message::Verdict::Next(m.into()),
            wit::Verdict::Publish(ms) => {
                message::Verdict::Publish(ms.into_iter().map(Into::into).collect())
            }
            wit::Verdict::Ack => message::Verdict::Ack,
            wit::Verdict::DeadLetter(r) => message::Verdict::DeadLetter(r),
            wit::Verdict::Retry(ms) => message::Verdict::Retry(ms),
        }
    }
}
