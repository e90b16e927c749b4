//! Sluice's integration tests: one binary, one module per area. Every test
//! uses real components built from the sources in `plugins/` (run
//! `scripts/build-plugins` first; `scripts/test` does).

// Tests may unwrap and panic: a failed assumption is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod batch;
mod checker;
mod cli;
mod cluster;
mod config;
mod conformance;
mod faults;
mod hostile;
mod hotswap;
mod jetstream;
mod layering;
mod lost;
mod ops;
mod ordering;
mod plugins;
mod poison;
mod properties;
mod props;
mod sandbox;
mod scaffold;
mod scale;
mod standby;
mod support;
