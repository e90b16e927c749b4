//! Write a Sluice handler in Rust.
//!
//! A handler is a WebAssembly component that targets the `handler` world in
//! the repository's `wit/` directory. The host calls `init` once per instance
//! with the stage's configuration, then `handle` once per message, and turns
//! the returned [`Verdict`] into a publish, an ack, a retry or a dead letter.
//! This crate owns the generated bindings, so a plugin only implements
//! [`Handler`] and calls [`export_handler!`] once.
//!
//! # A plugin in twenty lines
//!
//! ```no_run
//! //! Adds `meta.greeting` to every JSON object payload.
//! use sluice_guest::{Config, Handler, Message, Origin, Verdict, set_path};
//!
//! struct Greet {
//!     greeting: String,
//! }
//!
//! impl Handler for Greet {
//!     fn init(config: Config) -> Result<Self, String> {
//!         config.reject_unknown(&["greeting"])?; // typos fail `sluice check`
//!         Ok(Self { greeting: config.get_or("greeting", "hello").to_owned() })
//!     }
//!
//!     fn handle(&self, origin: &Origin, mut msg: Message) -> Verdict {
//!         let text = format!("{} {}", self.greeting, origin.tenant);
//!         match msg.edit_json_object(|payload| set_path(payload, "meta.greeting", text.into())) {
//!             Ok(()) => Verdict::Next(msg),
//!             Err(reason) => Verdict::DeadLetter(reason), // not JSON: retrying cannot help
//!         }
//!     }
//! }
//!
//! sluice_guest::export_handler!(Greet);
//! ```
//!
//! The plugin crate is a `cdylib` (`[lib] crate-type = ["cdylib"]`) that
//! depends on `sluice-guest`. `cargo build --target wasm32-wasip2 --release`
//! then writes a component the host can load to
//! `target/wasm32-wasip2/release/<crate>.wasm`.
//!
//! The rules of the road:
//!
//! - `init` checks the whole configuration and fails with a message that
//!   names the key; [`Config::reject_unknown`] catches typos.
//! - `handle` turns bad input into a verdict, never a panic: a panic is a
//!   trap, which the host treats as a crash and retries.
//!   [`Verdict::DeadLetter`] is for messages no retry can fix,
//!   [`Verdict::Retry`] for a passing condition.
//! - Trust [`Origin`], not the payload, for the tenant.
//!
//! # What is here
//!
//! - [`Handler`] and [`export_handler!`]: the plugin's entry points.
//! - [`Message`], [`Origin`], [`Verdict`]: the WIT types. [`Message`] has
//!   header helpers ([`Message::header`], [`Message::set_header`],
//!   [`Message::remove_header`], all case-insensitive) and JSON helpers
//!   ([`Message::json`], [`Message::json_object`],
//!   [`Message::edit_json_object`], [`Message::set_json`]).
//! - [`get_path`], [`set_path`], [`remove_path`], [`check_path`]: dot paths
//!   (`"user.address.city"`) into a [`Value`].
//! - [`Message::edit_json_paths`] ([`JsonPaths`], [`JsonLiteral`]) and
//!   [`Message::json_view`] ([`JsonView`], [`Scalar`]): the same edits and
//!   lookups by dot path, several times faster on compact JSON because they
//!   skip building a [`Value`]; other payloads take the [`Value`] route and
//!   give the same bytes. The reference plugins use these.
//! - [`Config`]: the stage configuration, with lookups and
//!   [`Config::reject_unknown`].
//! - [`log`]: lines in the host's log, tagged with tenant and plugin.
//!
//! The helpers other than [`log`] are plain Rust and work in native unit
//! tests; [`log`] calls into the host and only works inside a component.

#[cfg(any(
    test,
    all(
        feature = "talc",
        target_family = "wasm",
        not(target_feature = "atomics")
    )
))]
mod alloc;
#[cfg(feature = "cases")]
pub mod cases;
mod compact;
mod config;
pub mod json;
pub mod log;
mod message;
mod paths;
mod wire;

/// The generated bindings for the `batch-handler` world. Plugins normally use the
/// re-exports at the crate root instead.
// Generated code: it needs `unsafe` for the canonical ABI and has the
// argument counts the ABI dictates.
#[allow(missing_docs, unsafe_code, clippy::too_many_arguments)]
pub mod bindings {
    // The one place the bindings are generated. `default_bindings_module`
    // and `pub_export_macro` let `export_handler!` expand in the plugin's
    // crate while the types and glue stay here.
    wit_bindgen::generate!({
        path: "../wit",
        // `batch-handler`: the `handler` world plus the `batch` interface,
        // which the SDK implements with the plugin's own `handle`.
        world: "batch-handler",
        pub_export_macro: true,
        export_macro_name: "__export_world",
        default_bindings_module: "sluice_guest::bindings",
        additional_derives: [PartialEq, Eq],
    });
}

/// Talc rather than the default dlmalloc, behind a cache of freed small
/// blocks ([`alloc`]). The canonical ABI and a handler's own work allocate
/// and free the same few sizes on every message, so a handler spends a large
/// share of each call in the allocator: measured with `cargo bench --bench
/// guest`, see docs/performance.md.
#[cfg(all(
    feature = "talc",
    target_family = "wasm",
    not(target_feature = "atomics")
))]
#[global_allocator]
static ALLOCATOR: alloc::Cached<talc::wasm::WasmDynamicTalc> =
    alloc::Cached::new(talc::wasm::new_wasm_dynamic_allocator());

pub use bindings::{Message, Origin, Verdict};
pub use compact::Scalar;
pub use config::Config;
pub use json::{check_path, get_path, remove_path, set_path};
pub use paths::{JsonLiteral, JsonPaths, JsonView};
pub use serde_json::{self, Value};

/// The reason `handle` dead-letters with when `init` has not succeeded on
/// this instance. The host never does this, but a stray call must not trap.
pub const NOT_INITIALISED: &str = "handler was not initialised";

/// A Sluice stage. [`export_handler!`] wires an implementation to the
/// component's exports.
pub trait Handler: Sized + 'static {
    /// Build the handler from the stage configuration. An error rejects the
    /// configuration: the host reports it and never uses this instance.
    fn init(config: Config) -> Result<Self, String>;

    /// Decide what happens to one message. Called many times on the same
    /// instance, which only ever serves one tenant.
    fn handle(&self, origin: &Origin, msg: Message) -> Verdict;
}

/// Export a [`Handler`] implementation as the component's `init`, `handle`
/// and `handle-batch` (which calls `handle` for each message of a batch).
/// Call it once per plugin crate, at the top level.
///
/// The instance that `init` returns lives in guest memory for the life of
/// the component instance; `handle` before a successful `init` dead-letters
/// with [`NOT_INITIALISED`] instead of trapping.
#[macro_export]
macro_rules! export_handler {
    ($handler:ty) => {
        const _: () = {
            ::std::thread_local! {
                static SLUICE_HANDLER: ::core::cell::RefCell<::core::option::Option<$handler>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            struct SluiceExport;

            impl $crate::bindings::Guest for SluiceExport {
                fn init(
                    config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::__private::init(&SLUICE_HANDLER, config)
                }

                fn handle(origin: $crate::Origin, msg: $crate::Message) -> $crate::Verdict {
                    $crate::__private::handle(&SLUICE_HANDLER, origin, msg)
                }
            }

            impl $crate::bindings::exports::sluice::pipeline::batch::Guest for SluiceExport {
                fn handle_batch(
                    tenant: ::std::string::String,
                    stream: ::std::string::String,
                    count: u32,
                    deliveries: ::std::vec::Vec<u8>,
                ) -> ::std::vec::Vec<u8> {
                    $crate::__private::handle_batch(
                        &SLUICE_HANDLER,
                        tenant,
                        stream,
                        count,
                        &deliveries,
                    )
                }
            }

    $crate::bindings::__export_world!(SluiceExport with_types_in $crate::bindings);
        };
    };
}

/// Support for [`export_handler!`]; not part of the API.
#[doc(hidden)]
pub mod __private {
    use std::cell::RefCell;
    use std::thread::LocalKey;

    use crate::wire::{self, Deliveries};
    use crate::{Config, Handler, Message, NOT_INITIALISED, Origin, Verdict};

    /// Where `export_handler!` keeps the instance built by `init`.
    pub type Slot<H> = LocalKey<RefCell<Option<H>>>;

    /// Run `H::init` and keep the result. A second `init` replaces the
    /// handler; a failed one leaves the slot as it was.
    pub fn init<H: Handler>(
        slot: &'static Slot<H>,
        config: Vec<(String, String)>,
    ) -> Result<(), String> {
        let handler = H::init(Config::new(config))?;
        slot.with(|cell| match cell.try_borrow_mut() {
            Ok(mut current) => {
                *current = Some(handler);
                Ok(())
            }
            // Only reachable if `init` re-entered itself through the host.
            Err(_) => Err("init called while the handler is in use".to_owned()),
        })
    }

    /// Call the stored handler, or dead-letter if there is none.
    pub fn handle<H: Handler>(slot: &'static Slot<H>, origin: Origin, msg: Message) -> Verdict {
        slot.with(|cell| match cell.try_borrow() {
            Ok(current) => match current.as_ref() {
                Some(handler) => handler.handle(&origin, msg),
                None => Verdict::DeadLetter(NOT_INITIALISED.to_owned()),
            },
            Err(_) => Verdict::DeadLetter(NOT_INITIALISED.to_owned()),
        })
    }

    /// [`handle`] for each packed delivery in turn, borrowing the handler
    /// once, each verdict packed as soon as it is made. One `Origin` serves
    /// the whole batch: only its per-message facts change. Deliveries that
    /// do not decode (the host never sends those) get no verdicts at all,
    /// which the host treats as a failed batch and reruns one by one.
    pub fn handle_batch<H: Handler>(
        slot: &'static Slot<H>,
        tenant: String,
        stream: String,
        count: u32,
        deliveries: &[u8],
    ) -> Vec<u8> {
        // Verdicts are mostly the messages again: start at their size. A
        // delivery takes at least 32 bytes, which bounds a bogus count.
        let mut out =
            Vec::with_capacity(deliveries.len() + 8 * (count as usize).min(deliveries.len() / 32));
        let mut origin = Origin {
            tenant,
            stream,
            stream_seq: 0,
            delivered: 0,
            published_ms: 0,
        };
        let mut reader = Deliveries::new(deliveries);
        slot.with(|cell| {
            let current = cell.try_borrow();
            let handler = current.as_ref().ok().and_then(|h| h.as_ref());
            for _ in 0..count {
                let Some(d) = reader.next() else {
                    return Vec::new();
                };
                let verdict = match handler {
                    Some(handler) => {
                        origin.stream_seq = d.stream_seq;
                        origin.delivered = d.delivered;
                        origin.published_ms = d.published_ms;
                        handler.handle(&origin, d.msg)
                    }
                    None => Verdict::DeadLetter(NOT_INITIALISED.to_owned()),
                };
                if !wire::put_verdict(&mut out, &verdict) {
                    return Vec::new();
                }
            }
            if reader.finished() { out } else { Vec::new() }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Upper {
        suffix: String,
    }

    impl Handler for Upper {
        fn init(config: Config) -> Result<Self, String> {
            config.reject_unknown(&["suffix"])?;
            Ok(Self {
                suffix: config.get_or("suffix", "!").to_owned(),
            })
        }

        fn handle(&self, _origin: &Origin, mut msg: Message) -> Verdict {
            msg.subject.push_str(&self.suffix);
            Verdict::Next(msg)
        }
    }

    thread_local! {
        static SLOT: std::cell::RefCell<Option<Upper>> = const { std::cell::RefCell::new(None) };
    }

    fn origin() -> Origin {
        Origin {
            tenant: "acme".into(),
            stream: "IN".into(),
            stream_seq: 1,
            delivered: 1,
            published_ms: 0,
        }
    }

    fn msg() -> Message {
        Message {
            subject: "a.b".into(),
            headers: vec![],
            payload: vec![],
        }
    }

    #[test]
    fn handle_before_init_dead_letters() {
        let verdict = __private::handle(&SLOT, origin(), msg());
        assert_eq!(verdict, Verdict::DeadLetter(NOT_INITIALISED.into()));
    }

    #[test]
    fn failed_init_is_reported_and_keeps_the_slot_empty() {
        let err = __private::init(&SLOT, vec![("bogus".into(), "1".into())]).unwrap_err();
        assert!(err.contains("bogus"), "{err}");
        let verdict = __private::handle(&SLOT, origin(), msg());
        assert_eq!(verdict, Verdict::DeadLetter(NOT_INITIALISED.into()));
    }

    /// Deliveries packed as the WIT documents, for subjects with no headers
    /// or payload.
    fn packed(subjects: &[&str]) -> Vec<u8> {
        let mut buf = Vec::new();
        for (k, s) in subjects.iter().enumerate() {
            buf.extend_from_slice(&(10 + k as u64).to_le_bytes());
            buf.extend_from_slice(&1u32.to_le_bytes());
            buf.extend_from_slice(&0u64.to_le_bytes());
            buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
            buf.extend_from_slice(s.as_bytes());
            buf.extend_from_slice(&0u32.to_le_bytes());
            buf.extend_from_slice(&0u32.to_le_bytes());
        }
        buf
    }

    fn verdicts(verdicts: &[Verdict]) -> Vec<u8> {
        let mut out = Vec::new();
        for v in verdicts {
            assert!(wire::put_verdict(&mut out, v));
        }
        out
    }

    fn next(subject: &str) -> Verdict {
        Verdict::Next(Message {
            subject: subject.into(),
            ..msg()
        })
    }

    #[test]
    fn a_batch_gets_one_verdict_per_delivery_in_order() {
        __private::init(&SLOT, vec![("suffix".into(), ".x".into())]).unwrap();
        let out = __private::handle_batch(
            &SLOT,
            "acme".into(),
            "IN".into(),
            3,
            &packed(&["a", "b", "c"]),
        );
        assert_eq!(out, verdicts(&[next("a.x"), next("b.x"), next("c.x")]));
    }

    #[test]
    fn a_batch_before_init_dead_letters_each_delivery() {
        let out =
            __private::handle_batch(&SLOT, "acme".into(), "IN".into(), 2, &packed(&["a", "b"]));
        let dead = Verdict::DeadLetter(NOT_INITIALISED.into());
        assert_eq!(out, verdicts(&[dead.clone(), dead]));
    }

    #[test]
    fn a_batch_that_does_not_match_its_count_gets_no_verdicts() {
        __private::init(&SLOT, vec![]).unwrap();
        let three = packed(&["a", "b", "c"]);
        for count in [2, 4] {
            let out = __private::handle_batch(&SLOT, "acme".into(), "IN".into(), count, &three);
            assert!(out.is_empty(), "count {count}");
        }
    }

    #[test]
    fn init_then_handle_uses_the_stored_handler() {
        __private::init(&SLOT, vec![("suffix".into(), ".x".into())]).unwrap();
        let verdict = __private::handle(&SLOT, origin(), msg());
        let mut expected = msg();
        expected.subject = "a.b.x".into();
        assert_eq!(verdict, Verdict::Next(expected));
    }
}
