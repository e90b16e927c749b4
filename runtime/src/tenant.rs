//! One tenant at run time: its pull loop, its in-flight permits and the
//! processing of each message from pull to settle.
//!
//! The pull loop never asks JetStream for more messages than the tenant has
//! free permits, so no message waits in a client buffer burning its
//! ack_wait; the worker pool serves tenants in weighted fair order, so one
//! noisy tenant cannot take it from the others. A failing message never
//! ends the loop; transient errors (server restarting) are logged and the
//! loop carries on with a growing pause; only a deleted consumer stops the
//! tenant.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, AckKind};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::config::TenantLimits;
use crate::message::{Message, Origin};
use crate::sink::{self, Sink};
use crate::stats::TenantStats;
use crate::worker::Pipeline;
use crate::worker::fair::Share;

mod ordered;
pub(crate) mod pinned;
mod pull;
use crate::worker::pool::{Ran, WorkerPool};
use ordered::{Admitted, Lane, Ordered};

/// How often an ordered tenant that is recovering asks for the consumer's
/// ack floor (what the previous holder had acked is learnt only so).
const FLOOR_POLL: Duration = Duration::from_millis(250);

/// Aborts a task when dropped: the pull loop's helpers end with it.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Most messages one worker-pool job carries. Messages that arrive together
/// share a job (one hand-off to a worker thread and one reply instead of one
/// per message); the cap bounds how long the first waits for the last:
/// about 0.2 ms at the reference pipeline's cost.
const MAX_JOB: usize = 32;
/// Pauses after errors grow from the first to the second, doubling: quick
/// recovery from a blip, no busy loop while NATS is down.
const ERROR_PAUSE: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// In-progress acks stop after this many ack_waits: a message that has not
/// finished by then is left to redelivery rather than held forever.
const MAX_PROGRESS_ACK_WAITS: u32 = 10;

/// The tenant's consumer (or its stream) was deleted: its pull loop stops
/// and the tenant binds again.
#[derive(Debug, thiserror::Error)]
#[error("consumer {stream}/{consumer} of tenant `{tenant}` was deleted")]
pub struct ConsumerDeleted {
    /// Tenant id.
    pub tenant: String,
    /// Stream name.
    pub stream: String,
    /// Consumer name.
    pub consumer: String,
}

/// A tenant's running state.
pub struct Tenant {
    /// Its id.
    pub id: Arc<str>,
    /// The current pipeline; replaced atomically on a plugin swap.
    pub pipeline: ArcSwap<Pipeline>,
    /// Its limits.
    pub limits: TenantLimits,
    /// Counters.
    pub stats: Arc<TenantStats>,
    permits: Arc<Semaphore>,
    pool: Arc<WorkerPool>,
    /// Its lane and weight in the pool's queue.
    share: Share,
    /// Per-key ordering, when the tenant asks for it.
    ordered: Option<Ordered>,
    /// For an exclusive tenant: the pin this host holds, if it is the one.
    pin: Option<Arc<pinned::PinId>>,
    /// Its connection's JetStream context, for pinned pulls.
    js: jetstream::Context,
    sink: Sink,
    /// The bound consumer's `ack_wait` in ms (the config's until bound): an
    /// existing consumer may differ from the config, and in-progress acks
    /// must come before the server's redelivery, not the config's.
    ack_wait_ms: std::sync::atomic::AtomicU64,
}

impl Tenant {
    /// A tenant processing through `pool` and publishing through `js`.
    pub fn new(
        id: &str,
        pipeline: Pipeline,
        limits: TenantLimits,
        dead_letter: String,
        pool: Arc<WorkerPool>,
        js: jetstream::Context,
    ) -> Arc<Self> {
        let id: Arc<str> = Arc::from(id);
        let stats = Arc::new(TenantStats::default());
        let ordered = limits.ordering.clone().map(Ordered::new);
        let sink = Sink::new(
            &js,
            id.clone(),
            dead_letter,
            limits.backoff.clone(),
            limits.max_deliver,
            limits.max_retry_delay,
            limits.max_in_flight,
            stats.clone(),
        );
        Arc::new(Tenant {
            sink: if ordered.is_some() {
                sink.holding_retries()
            } else {
                sink
            },
            ordered,
            pin: limits.exclusive.map(|_| Arc::default()),
            js: js.clone(),
            permits: Arc::new(Semaphore::new(limits.max_in_flight)),
            ack_wait_ms: std::sync::atomic::AtomicU64::new(millis(limits.ack_wait)),
            pipeline: ArcSwap::from_pointee(pipeline),
            share: Share {
                tenant: id.clone(),
                weight: limits.weight,
            },
            id,
            limits,
            stats,
            pool,
        })
    }

    /// For an exclusive tenant: whether this host holds its consumer now.
    pub fn pinned(&self) -> Option<bool> {
        self.pin.as_ref().map(|p| p.held())
    }

    /// The bound consumer's `ack_wait`.
    fn ack_wait(&self) -> Duration {
        Duration::from_millis(self.ack_wait_ms.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Messages currently between pull and settle (permits reserved for a
    /// pull still waiting on the server are not counted).
    pub fn in_flight(&self) -> usize {
        usize::try_from(
            self.stats
                .in_flight
                .load(std::sync::atomic::Ordering::Relaxed),
        )
        .unwrap_or(usize::MAX)
    }

    /// Sweep the consumer for stored messages the client cannot read (see
    /// [`crate::unreadable`]): once bound, then after every reconnect of
    /// the tenant's connection (`connects` moves), until `shutdown` (the
    /// caller also aborts it when the pull loop ends). Each one found is
    /// dead-lettered and terminated.
    pub async fn sweep_unreadable(
        self: Arc<Self>,
        js: jetstream::Context,
        mut consumer: PullConsumer,
        mut connects: tokio::sync::watch::Receiver<u64>,
        shutdown: CancellationToken,
    ) {
        let mut sweeper = crate::unreadable::Sweeper::new(js, consumer.cached_info());
        let mut info = Some(consumer.cached_info().clone());
        loop {
            if let Some(info) = info.take() {
                self.sweep_once(&mut sweeper, &info).await;
            }
            tokio::select! {
                changed = connects.changed() => if changed.is_err() { return },
                () = shutdown.cancelled() => return,
            }
            // Where the consumer stands now; the connection may need a
            // moment after the reconnect.
            for pause in [100, 500, 2000] {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(pause)) => {}
                    () = shutdown.cancelled() => return,
                }
                match consumer.info().await {
                    Ok(i) => {
                        info = Some(i.clone());
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(tenant = &*self.id, error = %e, "consumer info for a sweep")
                    }
                }
            }
        }
    }

    /// One sweep from where the consumer stands (`info`).
    async fn sweep_once(
        &self,
        sweeper: &mut crate::unreadable::Sweeper,
        info: &jetstream::consumer::Info,
    ) {
        let tenant = &*self.id;
        let found = match sweeper.sweep(info).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(tenant, error = %e, "sweeping for unreadable messages failed; trying again at the next reconnect");
                return;
            }
        };
        for f in found {
            tracing::error!(
                tenant,
                stream = info.stream_name,
                seq = f.stored.seq,
                subject = f.stored.subject,
                problem = f.problem,
                "a stored message the NATS client cannot read (it drops the connection on each delivery); dead-lettering it"
            );
            self.sink
                .dead_letter_unreadable(&f, &info.stream_name)
                .await;
            sweeper.settled(f.stored.seq).await;
        }
    }

    /// Process `admitted` on a tracked task. The pipeline is taken here, at
    /// admission: a message admitted before a plugin swap finishes on the
    /// old version, one admitted after it uses the new one.
    fn spawn_batch(
        self: &Arc<Self>,
        tasks: &TaskTracker,
        admitted: Vec<(jetstream::Message, OwnedSemaphorePermit)>,
    ) {
        if admitted.is_empty() {
            return;
        }
        let admitted = match &self.ordered {
            // Only those whose turn it is run now; the rest wait in their
            // key's lane.
            Some(o) => o.admit(admitted),
            None => admitted.into_iter().map(|(m, p)| (m, p, None)).collect(),
        };
        self.spawn_now(tasks, admitted);
    }

    fn spawn_now(self: &Arc<Self>, tasks: &TaskTracker, admitted: Vec<Admitted>) {
        if admitted.is_empty() {
            return;
        }
        let pipeline = self.pipeline.load_full();
        let this = self.clone();
        let tracker = tasks.clone();
        tasks.spawn(async move { this.process(admitted, pipeline, tracker).await });
    }

    /// This host has just been pinned to an exclusive tenant's consumer
    /// (at start, or taking over from a host that stopped pulling). An
    /// ordered tenant starts over from where the consumer stands: what the
    /// previous holder left pending runs first, in order.
    async fn took_over(&self, consumer: &PullConsumer) {
        tracing::info!(
            tenant = &*self.id,
            "this host now holds the tenant's consumer (active)"
        );
        let Some(o) = &self.ordered else { return };
        let mut consumer = consumer.clone();
        for pause in [0, 100, 500, 2000] {
            tokio::time::sleep(Duration::from_millis(pause)).await;
            match consumer.info().await {
                Ok(info) => {
                    o.bind(info);
                    return;
                }
                Err(e) => {
                    tracing::warn!(tenant = &*self.id, error = %e, "consumer info after taking over")
                }
            }
        }
        // Without it, the pending messages cannot be ordered: better to
        // hand this pull back (the caller's pull ends on the error below
        // soon enough) than to run them out of order.
        tracing::error!(
            tenant = &*self.id,
            "no consumer info after taking over; ordering from the last bind"
        );
    }

    /// A message of an ordered tenant settled: run the next of its key.
    fn release(self: &Arc<Self>, lane: Option<Lane>, tasks: &TaskTracker) {
        if let (Some(o), Some(lane)) = (&self.ordered, lane) {
            let next = o.settled(lane);
            self.spawn_now(tasks, next);
        }
    }

    /// While an ordered tenant's pull loop runs: in-progress acks for its
    /// waiting messages every half ack_wait, and while recovering, the
    /// consumer's ack floor every [`FLOOR_POLL`].
    async fn ordered_upkeep(self: Arc<Self>, mut consumer: PullConsumer, tasks: TaskTracker) {
        let Some(o) = &self.ordered else { return };
        let mut last_progress = Instant::now();
        loop {
            tokio::time::sleep(FLOOR_POLL).await;
            if o.is_recovering()
                && let Ok(info) = consumer.info().await
            {
                let ready = o.floor(info.ack_floor.stream_sequence);
                self.spawn_now(&tasks, ready);
            }
            if last_progress.elapsed() >= self.ack_wait() / 2 {
                last_progress = Instant::now();
                o.keep_waiting().await;
            }
        }
    }

    /// Messages admitted together, from pull to settle: their pipelines run
    /// as one worker-pool job, then each settles on its own (its outputs
    /// published and confirmed, then its ack), all at once. Each message's
    /// permit is released when it has settled.
    async fn process(
        self: Arc<Self>,
        admitted: Vec<Admitted>,
        pipeline: Arc<Pipeline>,
        tasks: TaskTracker,
    ) {
        let tenant = &*self.id;
        let mut held = Vec::with_capacity(admitted.len());
        let mut items = Vec::with_capacity(admitted.len());
        for (msg, permit, lane) in admitted {
            self.stats.mark_received();
            let origin = match msg.info() {
                Ok(info) => Origin {
                    tenant: tenant.to_owned(),
                    stream: info.stream.to_owned(),
                    stream_seq: info.stream_sequence,
                    delivered: u32::try_from(info.delivered).unwrap_or(u32::MAX),
                    published_us: u64::try_from(info.published.unix_timestamp_nanos() / 1_000)
                        .unwrap_or(0),
                },
                Err(e) => {
                    // Not a JetStream delivery (no ack subject): nothing to
                    // settle.
                    tracing::warn!(tenant, subject = %msg.subject, error = %e, "message without JetStream metadata; skipped");
                    continue;
                }
            };
            let source = Arc::new(Message {
                subject: msg.subject.to_string(),
                headers: crate::headers::header_list(msg.headers.as_ref()),
                payload: msg.payload.clone(),
            });
            items.push((origin, source));
            held.push(Held {
                msg,
                lane,
                _permit: permit,
                _counted: InFlight::enter(&self.stats),
            });
        }
        if items.is_empty() {
            return;
        }
        let items: Arc<[(Origin, Arc<Message>)]> = Arc::from(items);
        let work = self.pool.run_batch(&self.share, pipeline, items.clone());
        tokio::pin!(work);
        let started = Instant::now();
        let half = self.ack_wait() / 2;
        let give_up = self.ack_wait().saturating_mul(MAX_PROGRESS_ACK_WAITS);
        let result = loop {
            tokio::select! {
                r = &mut work => break r,
                () = tokio::time::sleep(half) => {
                    if started.elapsed() < give_up {
                        // Tell JetStream we are still at it, so it does not
                        // redeliver to another host meanwhile.
                        for h in &held {
                            let _ = h.msg.ack_with(AckKind::Progress).await;
                        }
                    }
                }
            }
        };
        let Ok(ran) = result else {
            // The pool is shutting down: hand the messages back now rather
            // than after ack_wait.
            for h in &held {
                let _ = h.msg.ack_with(AckKind::Nak(None)).await;
            }
            return;
        };
        if let Some(first) = ran.first() {
            // One wait per job: its messages waited together.
            self.stats
                .queue_wait_seconds
                .observe(first.waited.as_secs_f64());
        }
        let settles = held.into_iter().zip(items.iter()).zip(ran).map(
            |((mut held, (origin, source)), ran)| {
                // One span per message, at debug: a debug log anywhere
                // below it carries the tenant, stream and sequence.
                let span = tracing::debug_span!(
                    "message",
                    tenant,
                    stream = %origin.stream,
                    seq = origin.stream_seq,
                    delivered = origin.delivered,
                );
                let lane = held.lane.take();
                let (this, tasks) = (&self, &tasks);
                async move {
                    this.settle(held, origin, source, ran).await;
                    // Its permit is back: the next of its key may run.
                    this.release(lane, tasks);
                }
                .instrument(span)
            },
        );
        futures::future::join_all(settles).await;
    }

    /// Count one message's outcome and settle it. An ordered tenant's
    /// retry is held in place: run again after its delay, counted as the
    /// next delivery, until it settles otherwise (the last delivery
    /// dead-letters, as a redelivery's would).
    async fn settle(&self, held: Held<'_>, origin: &Origin, source: &Arc<Message>, ran: Ran) {
        let mut settled = self.settle_once(&held, origin, source, ran).await;
        let mut again = origin.clone();
        while self.ordered.is_some() && matches!(settled, sink::Settled::Naked(_)) {
            again.delivered = again.delivered.saturating_add(1);
            let pipeline = self.pipeline.load_full();
            let items: Arc<[(Origin, Arc<Message>)]> = Arc::from([(again.clone(), source.clone())]);
            let run = self.pool.run_batch(&self.share, pipeline, items);
            let Some(ran) = self
                .progressing(&held.msg, run)
                .await
                .ok()
                .and_then(|mut r| r.pop())
            else {
                // Shutting down: hand it back for a redelivery.
                let _ = held.msg.ack_with(AckKind::Nak(None)).await;
                return;
            };
            settled = self.settle_once(&held, &again, source, ran).await;
        }
    }

    /// `work`, with in-progress acks for `msg` every half ack_wait while it
    /// runs: publishing a large fan-out, holding a message whose outputs
    /// cannot be stored yet, or waiting out an ordered retry can take
    /// longer than ack_wait, and JetStream would redeliver (to this host or
    /// another) a message that is still being settled.
    async fn progressing<F: std::future::Future>(
        &self,
        msg: &jetstream::Message,
        work: F,
    ) -> F::Output {
        tokio::pin!(work);
        let half = self.ack_wait() / 2;
        loop {
            tokio::select! {
                out = &mut work => return out,
                () = tokio::time::sleep(half) => {
                    let _ = msg.ack_with(AckKind::Progress).await;
                }
            }
        }
    }

    /// Count one outcome and settle it once.
    async fn settle_once(
        &self,
        held: &Held<'_>,
        origin: &Origin,
        source: &Message,
        ran: Ran,
    ) -> sink::Settled {
        self.stats.handler_seconds.observe(ran.took.as_secs_f64());
        if ran.rerun {
            self.stats
                .batch_reruns
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let outcome = ran.outcome;
        if let crate::pipeline::Outcome::Retry {
            failure: Some(f),
            plugin,
            ..
        } = &outcome
        {
            self.stats.count_failure(plugin, f.kind.as_str());
        }
        if let crate::pipeline::Outcome::DeadLetter {
            limit: Some(limit), ..
        } = &outcome
        {
            self.stats.count_limit(limit);
        }
        let settling = self.sink.settle(&held.msg, origin, source, outcome);
        let settled = self.progressing(&held.msg, settling).await;
        self.stats.mark_settled();
        settled
    }
}

/// A message being processed, with what it holds until it has settled.
struct Held<'a> {
    msg: jetstream::Message,
    /// Its place in its key's lane, for an ordered tenant.
    lane: Option<Lane>,
    /// Its in-flight permit: released on drop.
    _permit: OwnedSemaphorePermit,
    _counted: InFlight<'a>,
}

/// Counts a message in flight for as long as it lives.
struct InFlight<'a>(&'a TenantStats);

impl<'a> InFlight<'a> {
    fn enter(stats: &'a TenantStats) -> Self {
        stats
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InFlight(stats)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `d` in whole milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
