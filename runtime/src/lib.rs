//! Sluice: a stream processor for NATS JetStream whose processing steps are
//! sandboxed WebAssembly components.
//!
//! The crate follows the flow of a message:
//!
//! - [`config`] reads and validates the TOML configuration;
//! - [`wasm`] compiles plugins, sandboxes their instances and runs guest
//!   calls on a pool of worker threads;
//! - [`plugin`] resolves the plugins a configuration names and builds each
//!   tenant's pipeline from them;
//! - [`pipeline`] applies the verdict rules to decide an [`pipeline::Outcome`];
//! - [`subject`] validates and matches NATS subjects;
//! - [`cli`] is the `sluice` command line; [`telemetry`] sets up logging.

pub mod cli;
pub mod config;
pub mod message;
pub mod pipeline;
pub mod plugin;
pub mod subject;
pub mod telemetry;
pub mod wasm;

pub use message::{Message, Origin, Verdict};
