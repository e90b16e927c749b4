//! What the host did, per tenant: counters and latencies that are cheap to
//! bump on the hot path, read by the metrics, `sluice dev`'s summary and
//! `sluice bench`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Per-tenant counters of what the host did. Cheap to bump on the hot path
/// (relaxed atomics); read by `sluice dev`'s summary, `sluice bench` and the
/// metrics.
#[derive(Debug)]
pub struct TenantStats {
    /// End-to-end latency of published messages, in microseconds: from when
    /// JetStream stored the source to when the last output's PubAck came
    /// back.
    pub latency: std::sync::Mutex<Latencies>,
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
    /// Stored messages the NATS client could not read, found by a sweep
    /// and dead-lettered (counted in `dead_lettered` too).
    pub unreadable: AtomicU64,
    /// Publishes (outputs or dead letters) that failed or timed out.
    pub publish_errors: AtomicU64,
    /// When the first message was received, µs since the Unix epoch (0:
    /// not yet).
    pub first_received_us: AtomicU64,
    /// When the last message was settled, µs since the Unix epoch.
    pub last_settled_us: AtomicU64,
    /// Outcomes by (plugin name, outcome kind): which stage decided what.
    pub outcomes: std::sync::Mutex<
        std::collections::HashMap<String, std::collections::HashMap<&'static str, u64>>,
    >,
    /// Messages dead-lettered because their outputs broke a host limit, by
    /// the limit's config key (`max_outputs`, `max_payload`…).
    pub limit_hits: std::sync::Mutex<std::collections::HashMap<&'static str, u64>>,
    /// Guest failures by (plugin name, cause).
    pub failure_causes: std::sync::Mutex<std::collections::HashMap<(String, &'static str), u64>>,
    /// Messages that ran through the pipeline again, one at a time, because
    /// a batch call they were in failed.
    pub batch_reruns: AtomicU64,
    /// Time each message's pipeline ran on a worker (queueing not included).
    pub handler_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Time each job waited in the worker pool's queue for a worker: what
    /// other tenants' work (fairly shared) and its own backlog cost it.
    pub queue_wait_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Messages pending in the consumer, sampled from consumer info.
    pub lag: AtomicU64,
    /// Messages between pull and settle right now.
    pub in_flight: AtomicU64,
    /// Whether the tenant's consumer is bound (the pull loop runs).
    pub bound: std::sync::atomic::AtomicBool,
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
    /// Guest failures (trap, deadline, memory, init): the sum of
    /// [`TenantStats::failure_causes`].
    pub failures: u64,
    /// See [`TenantStats::publish_errors`].
    pub publish_errors: u64,
}

/// End-to-end latencies, in microseconds.
#[derive(Debug)]
pub struct Latencies {
    /// Every latency recorded.
    pub histogram: hdrhistogram::Histogram<u64>,
    /// When set (`sluice bench` sets it for its latency phase), every
    /// sample as well, in order: (µs since the Unix epoch when it was
    /// recorded, latency µs). Shows *when* a tail happened, which a
    /// histogram cannot.
    pub trace: Option<Vec<(u64, u64)>>,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            histogram: latency_histogram(),
            trace: None,
        }
    }
}

/// Latencies are kept from 1 µs to 10 min at 3 significant digits: ~20 KB
/// per tenant, and a slow minute still lands in the histogram.
#[allow(clippy::expect_used)] // Constant, valid bounds: this cannot fail.
fn latency_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

impl Default for TenantStats {
    fn default() -> Self {
        TenantStats {
            latency: std::sync::Mutex::new(Latencies::default()),
            received: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            published: AtomicU64::new(0),
            outputs: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            unreadable: AtomicU64::new(0),
            publish_errors: AtomicU64::new(0),
            first_received_us: AtomicU64::new(0),
            last_settled_us: AtomicU64::new(0),
            outcomes: Default::default(),
            failure_causes: Default::default(),
            limit_hits: Default::default(),
            batch_reruns: AtomicU64::new(0),
            // 50 µs to ~3.3 s: a Rust pipeline lands in the first buckets,
            // an interpreted one or a queue under load further up.
            handler_seconds: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.0, 17),
            ),
            queue_wait_seconds: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.0, 17),
            ),
            lag: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            bound: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl TenantStats {
    /// Record one end-to-end latency.
    pub fn record_latency(&self, micros: u64) {
        if let Ok(mut l) = self.latency.lock() {
            l.histogram.saturating_record(micros.max(1));
            if let Some(trace) = &mut l.trace {
                trace.push((now_micros(), micros));
            }
        }
    }

    /// Note that a message was received (keeps the first time).
    pub fn mark_received(&self) {
        Self::bump(&self.received, 1);
        if self.first_received_us.load(Ordering::Relaxed) == 0 {
            let _ = self.first_received_us.compare_exchange(
                0,
                now_micros(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Note that a message was settled (keeps the latest time).
    pub fn mark_settled(&self) {
        self.last_settled_us
            .fetch_max(now_micros(), Ordering::Relaxed);
    }

    /// Count an outcome decided by `plugin` (a `name@digest` label; only
    /// the name is kept, so the label set stays bounded across versions).
    pub fn count_outcome(&self, plugin: &str, kind: &'static str) {
        let name = plugin.split('@').next().unwrap_or(plugin);
        if let Ok(mut m) = self.outcomes.lock() {
            // Look up by `&str` first: this runs per message, and the
            // plugin's entry exists after its first message.
            match m.get_mut(name) {
                Some(by_kind) => *by_kind.entry(kind).or_default() += 1,
                None => {
                    m.entry(name.to_owned()).or_default().insert(kind, 1);
                }
            }
        }
    }

    /// Count a guest failure of `plugin` by cause.
    pub fn count_failure(&self, plugin: &str, cause: &'static str) {
        let name = plugin.split('@').next().unwrap_or(plugin);
        if let Ok(mut m) = self.failure_causes.lock() {
            *m.entry((name.to_owned(), cause)).or_default() += 1;
        }
    }

    /// Count one message dead-lettered for breaking `limit`.
    pub fn count_limit(&self, limit: &'static str) {
        if let Ok(mut m) = self.limit_hits.lock() {
            *m.entry(limit).or_default() += 1;
        }
    }

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
            failures: self
                .failure_causes
                .lock()
                .map_or(0, |causes| causes.values().sum()),
            publish_errors: r(&self.publish_errors),
        }
    }
}

/// Microseconds since the Unix epoch.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
