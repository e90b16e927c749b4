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
//! - [`source`] connects to NATS and binds (or provisions) streams and
//!   consumers; [`tenant`] runs each tenant's pull loop; [`sink`] publishes
//!   outputs and dead letters and settles the source; [`service`] ties them
//!   into the running host; [`unreadable`] finds and dead-letters stored
//!   messages the NATS client cannot parse;
//! - [`nats_server`] runs a throwaway nats-server for `sluice dev` and tests;
//! - [`subject`] validates and matches NATS subjects;
//! - [`telemetry`] sets up logging. The `sluice` command line lives in the
//!   binary (`src/cli/`), so nothing here can depend on it.

pub mod cases;
pub mod config;
pub mod headers;
pub mod logging;
pub mod message;
pub mod nats_server;
pub mod ops;
pub mod ordering;
pub mod pipeline;
pub mod registry;
pub mod service;
pub mod sink;
pub mod stats;
pub mod subject;
pub mod tenant;
pub mod topology;
pub mod unreadable;
pub mod wasm;
pub(crate) mod watch;
pub mod worker;

pub use message::{Message, Origin, OutputCaps, Verdict};
