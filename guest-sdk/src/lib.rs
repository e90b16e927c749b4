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

#[cfg(feature = "cases")]
pub mod cases;
mod compact;
mod config;
pub mod json;
pub mod log;
mod message;
mod paths;

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

/// Talc rather than the default dlmalloc. The canonical ABI allocates (and
/// frees after the call) every string and list that crosses the boundary,
/// so a handler spends a large share of each call in the allocator:
/// measured with `cargo bench --bench guest`, see docs/performance.md.
#[cfg(all(
    feature = "talc",
    target_family = "wasm",
    not(target_feature = "atomics")
))]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

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
                    batch: ::std::vec::Vec<$crate::__private::Delivery>,
                ) -> ::std::vec::Vec<$crate::Verdict> {
                    $crate::__private::handle_batch(&SLUICE_HANDLER, tenant, stream, batch)
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

    pub use crate::bindings::exports::sluice::pipeline::batch::Delivery;
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

    /// [`handle`] for each delivery in turn, borrowing the handler once.
    /// One `Origin` serves the whole batch: only its per-message facts change.
    pub fn handle_batch<H: Handler>(
        slot: &'static Slot<H>,
        tenant: String,
        stream: String,
        batch: Vec<Delivery>,
    ) -> Vec<Verdict> {
        slot.with(|cell| match cell.try_borrow() {
            Ok(current) => match current.as_ref() {
                Some(handler) => {
                    let mut origin = Origin {
                        tenant,
                        stream,
                        stream_seq: 0,
                        delivered: 0,
                        published_ms: 0,
                    };
                    batch
                        .into_iter()
                        .map(|d| {
                            origin.stream_seq = d.stream_seq;
                            origin.delivered = d.delivered;
                            origin.published_ms = d.published_ms;
                            handler.handle(&origin, d.msg)
                        })
                        .collect()
                }
                None => not_initialised(batch.len()),
            },
            Err(_) => not_initialised(batch.len()),
        })
    }

    fn not_initialised(n: usize) -> Vec<Verdict> {
        (0..n)
            .map(|_| Verdict::DeadLetter(NOT_INITIALISED.to_owned()))
            .collect()
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

    #[test]
    fn a_batch_gets_one_verdict_per_delivery_in_order() {
        __private::init(&SLOT, vec![("suffix".into(), ".x".into())]).unwrap();
        let batch = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(k, s)| __private::Delivery {
                stream_seq: 10 + k as u64,
                delivered: 1,
                published_ms: 0,
                msg: Message {
                    subject: (*s).into(),
                    ..msg()
                },
            })
            .collect();
        let verdicts = __private::handle_batch(&SLOT, "acme".into(), "IN".into(), batch);
        let subjects: Vec<String> = verdicts
            .into_iter()
            .map(|v| match v {
                Verdict::Next(m) => m.subject,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(subjects, ["a.x", "b.x", "c.x"]);
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
