//! Measurements taken while a phase runs: waiting for a count with a
//! progress bar and a throughput timeline, rates from the tenants' first
//! and last timestamps, and latency figures from their histograms.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};

use sluice::stats::{StatsSnapshot, TenantStats};

use super::report::SystemResult;

/// Readiness is polled this often: fine enough for a figure in seconds.
const READY_POLL: Duration = Duration::from_millis(10);
/// Sampling period of the throughput timeline and of completion checks.
const SAMPLE: Duration = Duration::from_millis(100);
/// A phase that makes no progress for this long has failed.
const STALL: Duration = Duration::from_secs(30);

/// Wait until `done()` reaches `target`, sampling the throughput timeline;
/// fails when nothing moves for `STALL`.
pub(super) async fn wait_done(
    target: u64,
    label: &str,
    done: impl Fn() -> u64,
) -> anyhow::Result<Vec<(f64, f64)>> {
    wait_done_within(target, label, STALL, done).await
}

/// [`wait_done`], failing when nothing moves for `stall`: longer than a
/// consumer's `ack_wait` where a message may legitimately wait for its
/// redelivery.
pub(super) async fn wait_done_within(
    target: u64,
    label: &str,
    stall: Duration,
    done: impl Fn() -> u64,
) -> anyhow::Result<Vec<(f64, f64)>> {
    let bar = if label.is_empty() {
        ProgressBar::hidden()
    } else {
        progress(target, label)
    };
    let started = Instant::now();
    let mut timeline = Vec::new();
    let (mut last, mut last_change) = (done(), Instant::now());
    let mut prev = (0.0, last);
    while last < target {
        tokio::time::sleep(SAMPLE).await;
        let now = done();
        let t = started.elapsed().as_secs_f64();
        if now > prev.1 || !timeline.is_empty() {
            timeline.push((t, (now - prev.1) as f64 / (t - prev.0)));
        }
        prev = (t, now);
        bar.set_position(now.min(target));
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() > stall {
            bar.abandon();
            bail!("stalled at {now} of {target} messages");
        }
    }
    bar.finish_and_clear();
    Ok(timeline)
}

pub(super) fn progress(total: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>9} [{bar:40}] {pos}/{len} {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_owned());
    bar
}

pub(super) fn span_of<'a>(stats: impl Iterator<Item = &'a TenantStats>) -> (u64, u64) {
    let mut first = u64::MAX;
    let mut last = 0;
    for s in stats {
        let f = s.first_received_us.load(Ordering::Relaxed);
        if f > 0 {
            first = first.min(f);
        }
        last = last.max(s.last_settled_us.load(Ordering::Relaxed));
    }
    (first, last)
}

pub(super) fn per_second(n: u64, first_us: u64, last_us: u64) -> f64 {
    if last_us <= first_us || first_us == u64::MAX {
        return 0.0;
    }
    n as f64 / ((last_us - first_us) as f64 / 1e6)
}

pub(super) fn rate_of(stats: &TenantStats, n: u64) -> f64 {
    let (first, last) = span_of(std::iter::once(stats));
    per_second(n, first, last)
}

/// Start a latency phase: an empty histogram, and every sample traced.
pub(super) fn reset_latency(stats: &TenantStats) {
    if let Ok(mut l) = stats.latency.lock() {
        l.histogram.reset();
        l.trace = Some(Vec::new());
    }
}

/// Window of the latency-over-time series.
const WINDOW_US: u64 = 100_000;

/// The p99 of each [`WINDOW_US`] of a latency trace, by when the samples
/// were recorded: (seconds since the first sample, ms). A p99 over the
/// whole phase cannot tell a steady tail from a few stalls; this can.
fn p99_over_time(trace: &[(u64, u64)]) -> Vec<(f64, f64)> {
    let Some(start) = trace.iter().map(|s| s.0).min() else {
        return Vec::new();
    };
    let mut windows: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for &(at, micros) in trace {
        windows
            .entry((at - start) / WINDOW_US)
            .or_default()
            .push(micros);
    }
    windows
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_unstable();
            let p99 = v[(v.len() * 99 / 100).min(v.len() - 1)];
            ((k * WINDOW_US) as f64 / 1e6, p99 as f64 / 1000.0)
        })
        .collect()
}

/// Fill `result`'s latency figures from a finished latency phase; its
/// trace is kept only for `--trace`.
pub(super) fn fill_latency(
    result: &mut SystemResult,
    stats: &TenantStats,
    rate: f64,
    sent: u64,
    keep_trace: bool,
) {
    result.latency_rate = rate;
    result.latency_messages = sent;
    if let Ok(mut l) = stats.latency.lock() {
        let h = &l.histogram;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        result.p50_ms = ms(0.50);
        result.p90_ms = ms(0.90);
        result.p99_ms = ms(0.99);
        result.max_ms = h.max() as f64 / 1000.0;
        result.curve = [0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 100.0]
            .iter()
            .map(|p| (*p, ms(p / 100.0)))
            .collect();
        let trace = l.trace.take().unwrap_or_default();
        result.p99_over_time = p99_over_time(&trace);
        if keep_trace {
            result.trace = trace;
        }
    }
}

/// Messages a tenant has settled for good: acked (published or with
/// nothing to publish) or dead-lettered.
pub(super) fn settled(s: &StatsSnapshot) -> u64 {
    s.acked + s.dead_lettered
}

/// The latencies (histogram and trace) of several tenants as one.
pub(super) fn merge_latency<'a>(stats: impl Iterator<Item = &'a TenantStats>) -> TenantStats {
    let merged = TenantStats::default();
    if let Ok(mut into) = merged.latency.lock() {
        let mut trace = Vec::new();
        for s in stats {
            if let Ok(mut l) = s.latency.lock() {
                let _ = into.histogram.add(&l.histogram);
                trace.extend(l.trace.take().unwrap_or_default());
            }
        }
        trace.sort_unstable();
        into.trace = Some(trace);
    }
    merged
}

/// Wait until every tenant's consumer is bound; fails, naming the tenants
/// still unbound, when the count stops moving for `STALL`.
pub(super) async fn wait_bound(
    tenants: &[(String, Arc<TenantStats>)],
    n: usize,
) -> anyhow::Result<()> {
    let bar = progress(n as u64, "binding");
    let bound = || {
        tenants
            .iter()
            .filter(|(_, s)| s.bound.load(Ordering::Relaxed))
            .count()
    };
    let (mut last, mut last_change) = (bound(), Instant::now());
    while last < n {
        tokio::time::sleep(READY_POLL).await;
        let now = bound();
        bar.set_position(now as u64);
        if now != last {
            (last, last_change) = (now, Instant::now());
        } else if last_change.elapsed() > STALL {
            bar.abandon();
            let unbound: Vec<&str> = tenants
                .iter()
                .filter(|(_, s)| !s.bound.load(Ordering::Relaxed))
                .map(|(id, _)| id.as_str())
                .take(20)
                .collect();
            bail!(
                "only {now} of {n} tenants bound their consumer, none more for {STALL:?}; unbound: {}{}",
                unbound.join(", "),
                if n - now > unbound.len() { ", …" } else { "" }
            );
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// Take the trace of `stats` (every sample since [`reset_latency`]): (µs
/// since the Unix epoch when recorded, latency µs), in recording order.
pub(super) fn take_trace(stats: &TenantStats) -> Vec<(u64, u64)> {
    stats
        .latency
        .lock()
        .ok()
        .and_then(|mut l| l.trace.take())
        .unwrap_or_default()
}

/// The `q` quantile (0 to 1) of sorted latencies, ms; 0 when empty.
pub(super) fn quantile_ms(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len() - 1);
    sorted[i] as f64 / 1000.0
}
