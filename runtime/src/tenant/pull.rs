//! The pull loop: pull requests sized to the free permits, their messages
//! admitted as they arrive, errors paused on.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::{FutureExt as _, StreamExt as _};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{AbortOnDrop, ConsumerDeleted, ERROR_PAUSE, MAX_JOB, Tenant, millis, pinned};

/// How long one pull request waits server-side for messages while the
/// tenant is busy. A shutdown, a reconnect or a deleted consumer ends a
/// pull at once, so the expiry only sets how often an idle pull is renewed.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// Each pull that comes back empty doubles the next one's expiry, up to
/// this: a thousand idle tenants then cost the server a pull request every
/// 30 ms instead of every 5 ms. A message arriving for an idle tenant is
/// delivered at once to its waiting pull; the first with messages brings
/// the expiry back to `PULL_EXPIRES`.
const IDLE_PULL_EXPIRES: Duration = Duration::from_secs(30);

/// Largest single pull. JetStream serves big batches fine; the cap keeps one
/// request's messages from arriving as one huge burst.
const MAX_PULL: usize = 1024;

/// What ends a pull early, besides its own expiry.
struct PullEnds<'a> {
    /// The consumer pulled from.
    consumer: &'a PullConsumer,
    shutdown: &'a CancellationToken,
    /// Moves at each reconnect of the tenant's connection.
    connects: &'a mut tokio::sync::watch::Receiver<u64>,
}

/// The next reconnect; never, once the connection's supervisor is gone.
async fn reconnected(connects: &mut tokio::sync::watch::Receiver<u64>) {
    if connects.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl Tenant {
    /// Pull and process until `shutdown`. Messages that arrive together are
    /// processed together: one task tracked by `tasks` (so the caller can
    /// wait for them) and one worker-pool job per [`MAX_JOB`] messages.
    pub async fn pull_loop(
        self: Arc<Self>,
        consumer: PullConsumer,
        mut connects: tokio::sync::watch::Receiver<u64>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Result<(), ConsumerDeleted> {
        let tenant = &*self.id;
        let server_ack_wait = consumer.cached_info().config.ack_wait;
        if !server_ack_wait.is_zero() {
            self.ack_wait_ms.store(
                millis(server_ack_wait),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        let upkeep = self.ordered.as_ref().map(|o| {
            if o.bind(consumer.cached_info()) {
                tracing::info!(
                    tenant,
                    "ordered: messages delivered before this bind are pending; they run first, in stream order"
                );
            }
            tokio::spawn(self.clone().ordered_upkeep(consumer.clone(), tasks.clone()))
        });
        let _upkeep = AbortOnDrop(upkeep);
        let mut pause = ERROR_PAUSE.0;
        let mut expires = PULL_EXPIRES;
        // Reconnects before this pull started are not news to it.
        connects.mark_unchanged();
        while !shutdown.is_cancelled() {
            // Wait for one free permit, then take every other free one, up
            // to one pull's worth.
            let first = tokio::select! {
                p = self.permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                () = shutdown.cancelled() => break,
            };
            let mut permits: Vec<OwnedSemaphorePermit> = vec![first];
            while permits.len() < MAX_PULL {
                match self.permits.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let ends = PullEnds {
                consumer: &consumer,
                shutdown: &shutdown,
                connects: &mut connects,
            };
            let pulled = if let Some(pin) = &self.pin {
                // The holder must pull again well within the takeover
                // time, or the server hands the consumer to a standby.
                let takeover = self
                    .limits
                    .exclusive
                    .unwrap_or(crate::config::DEFAULT_TAKEOVER);
                let expires = expires.min(takeover / 2);
                match pinned::pull(&consumer, &self.js, pin.clone(), permits.len(), expires).await {
                    Ok(pull) => self.consume(pull, permits, &tasks, ends, &mut pause).await,
                    Err(e) => Err(e),
                }
            } else {
                match consumer
                    .batch()
                    .max_messages(permits.len())
                    .expires(expires)
                    // No idle heartbeat: async-nats' `Batch` consumes one
                    // without asking to be woken again, so a pull that had
                    // heard one stopped reading until its client-side timeout
                    // (expiry + 5 s) and what arrived meanwhile was left to a
                    // redelivery (tests/scale.rs). A dead connection still
                    // ends the pull by then, and idle tenants cost the server
                    // no heartbeat a second each.
                    .messages()
                    .await
                {
                    Ok(batch) => self.consume(batch, permits, &tasks, ends, &mut pause).await,
                    Err(e) => Err(e.into()),
                }
            };
            match pulled {
                Ok(0) => expires = (expires * 2).min(IDLE_PULL_EXPIRES),
                Ok(_) => expires = PULL_EXPIRES,
                Err(e) => {
                    tracing::warn!(tenant, error = %e, "pull failed; retrying");
                    self.pause_after_error(&consumer, &shutdown, &mut pause)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Admit one pull's messages as they arrive, each with one of `permits`,
    /// until the pull is complete, `shutdown` or a reconnect. Messages
    /// already waiting behind the one that woke the loop are admitted with
    /// it and share a job, up to [`MAX_JOB`]. Permits left when the pull
    /// ends are released. Returns how many messages the pull brought.
    async fn consume<S>(
        self: &Arc<Self>,
        mut batch: S,
        mut permits: Vec<OwnedSemaphorePermit>,
        tasks: &TaskTracker,
        ends: PullEnds<'_>,
        pause: &mut Duration,
    ) -> Result<usize, async_nats::Error>
    where
        S: futures::Stream<Item = Result<jetstream::Message, async_nats::Error>> + Unpin,
    {
        let tenant = &*self.id;
        let mut admitted = Vec::new();
        let mut received = 0;
        loop {
            let next = match batch.next().now_or_never() {
                Some(next) => next,
                None => {
                    // Nothing more has arrived: hand over what was
                    // admitted, then wait.
                    self.spawn_batch(tasks, std::mem::take(&mut admitted));
                    tokio::select! {
                        n = batch.next() => n,
                        () = ends.shutdown.cancelled() => return Ok(received),
                        // A server that restarted has forgotten this pull:
                        // ask again now instead of at its client-side
                        // timeout. (Messages the old pull was sent and
                        // lost are redelivered after ack_wait.)
                        // Counted as busy: the next pull starts short.
                        () = reconnected(ends.connects) => return Ok(received.max(1)),
                    }
                }
            };
            match next {
                Some(Ok(msg)) => {
                    *pause = ERROR_PAUSE.0;
                    received += 1;
                    if let Some(pin) = &self.pin
                        && pin.take_fresh()
                    {
                        self.took_over(ends.consumer).await;
                    }
                    // What the consumer had left when this was sent: the
                    // lag, kept current at no cost while messages flow.
                    if let Ok(info) = msg.info() {
                        self.stats
                            .lag
                            .store(info.pending, std::sync::atomic::Ordering::Relaxed);
                    }
                    match permits.pop() {
                        Some(permit) => admitted.push((msg, permit)),
                        // The server never sends more than asked for;
                        // should it, the message is left to redelivery.
                        None => tracing::warn!(
                            tenant,
                            "received more messages than requested; leaving the extra for redelivery"
                        ),
                    }
                    if admitted.len() == MAX_JOB {
                        self.spawn_batch(tasks, std::mem::take(&mut admitted));
                    }
                }
                Some(Err(e)) => {
                    self.spawn_batch(tasks, admitted);
                    return Err(e);
                }
                // The pull is complete (or expired): ask again.
                None => {
                    self.spawn_batch(tasks, admitted);
                    return Ok(received);
                }
            }
        }
    }

    /// Sleep after an error; a deleted consumer ends the loop.
    async fn pause_after_error(
        &self,
        consumer: &PullConsumer,
        shutdown: &CancellationToken,
        pause: &mut Duration,
    ) -> Result<(), ConsumerDeleted> {
        let mut consumer = consumer.clone();
        // A consumer (or its stream) that is gone will not come back by
        // pulling again: the caller binds it afresh.
        if let Err(e) = consumer.info().await
            && matches!(
                e.kind(),
                jetstream::context::ConsumerInfoErrorKind::NotFound
                    | jetstream::context::ConsumerInfoErrorKind::StreamNotFound
            )
        {
            let cached = consumer.cached_info();
            return Err(ConsumerDeleted {
                tenant: self.id.to_string(),
                stream: cached.stream_name.clone(),
                consumer: cached.name.clone(),
            });
        }
        tokio::select! {
            () = tokio::time::sleep(*pause) => {}
            () = shutdown.cancelled() => {}
        }
        *pause = (*pause * 2).min(ERROR_PAUSE.1);
        Ok(())
    }
}
