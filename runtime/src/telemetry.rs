//! Logging: `tracing` with an `RUST_LOG`-style filter, as text or JSON, always
//! on stderr so that stdout stays clean for command output.

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Install the global subscriber. `default_filter` applies when `RUST_LOG` is
/// unset. Calling it twice is harmless (the second call does nothing).
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

use std::sync::atomic::{AtomicU64, Ordering};

/// Per-tenant counters of what the host did. Cheap to bump on the hot path
/// (relaxed atomics); read by `sluice dev`'s summary and the metrics.
#[derive(Debug, Default)]
pub struct TenantStats {
    /// Messages pulled from the tenant's consumer.
    pub received: AtomicU64,
    /// Sources acked after their outputs were confirmed (or with nothing to
    /// publish).
    pub acked: AtomicU64,
    /// Sources whose outputs were all confirmed by JetStream.
    pub published: AtomicU64,
    /// Output messages newly stored by JetStream (duplicates not counted).
    pub outputs: AtomicU64,
    /// Outputs (and dead letters) JetStream reported as duplicates: a
    /// redelivery re-published inside the duplicate window.
    pub duplicates: AtomicU64,
    /// Sources dead-lettered (and terminated).
    pub dead_lettered: AtomicU64,
    /// Sources nak'ed for redelivery.
    pub retried: AtomicU64,
    /// Guest failures (trap, deadline, memory, init).
    pub failures: AtomicU64,
    /// Publishes (outputs or dead letters) that failed or timed out.
    pub publish_errors: AtomicU64,
}

/// A point-in-time copy of [`TenantStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    /// See [`TenantStats::received`].
    pub received: u64,
    /// See [`TenantStats::acked`].
    pub acked: u64,
    /// See [`TenantStats::published`].
    pub published: u64,
    /// See [`TenantStats::outputs`].
    pub outputs: u64,
    /// See [`TenantStats::duplicates`].
    pub duplicates: u64,
    /// See [`TenantStats::dead_lettered`].
    pub dead_lettered: u64,
    /// See [`TenantStats::retried`].
    pub retried: u64,
    /// See [`TenantStats::failures`].
    pub failures: u64,
    /// See [`TenantStats::publish_errors`].
    pub publish_errors: u64,
}

impl TenantStats {
    /// Add one to a counter.
    pub fn bump(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Read every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            received: r(&self.received),
            acked: r(&self.acked),
            published: r(&self.published),
            outputs: r(&self.outputs),
            duplicates: r(&self.duplicates),
            dead_lettered: r(&self.dead_lettered),
            retried: r(&self.retried),
            failures: r(&self.failures),
            publish_errors: r(&self.publish_errors),
        }
    }
}
