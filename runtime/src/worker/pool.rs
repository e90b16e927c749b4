//! Guest calls are CPU work: they run on a fixed set of worker threads, never
//! on the tokio reactor, fed by a weighted fair queue with one lane per
//! tenant ([`super::fair`]), so one tenant's backlog cannot delay another's
//! messages. Backpressure is each tenant's own: it queues no more than its
//! `max_in_flight` admits, and waits for the reply without blocking a
//! reactor thread.
//!
//! Each worker keeps its own live instances, keyed by stage (one tenant, one
//! plugin version, one config), so an instance is never shared between
//! tenants or threads and needs no lock. A failed call drops its instance;
//! the next call on that stage gets a fresh one.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::fair::{FairQueue, Share};
use super::{Pipeline, Stage};
use crate::message::{FailureKind, GuestFailure, Message, Origin, Verdict};
use crate::pipeline::Outcome;
use crate::wasm::{GuestInstance, GuestOrigin, WasmError};

/// After this many calls a worker drops instances whose stage is gone (a
/// tenant removed, a plugin swapped). Sweeping is a map scan; 4096 calls
/// keeps it far off the per-message path while freeing old versions within
/// a fraction of a second under load.
const SWEEP_EVERY: u32 = 4096;

/// A batch's messages together stay within this fraction (1/N) of the
/// smallest memory limit among the pipeline's batching stages. The guest
/// holds a batch's inputs, its working copies and its outputs at once; an
/// eighth leaves them that several times over and the rest of the limit to
/// the guest itself.
const BATCH_MEMORY_SHARE: u64 = 8;

/// Split messages of these sizes, in order, into runs whose sizes add up to
/// at most `budget`; a message bigger than that is a run of its own.
fn batches_within(
    sizes: impl IntoIterator<Item = usize>,
    budget: usize,
) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let (mut start, mut end, mut total) = (0, 0, 0usize);
    for (i, size) in sizes.into_iter().enumerate() {
        if i > start && total.saturating_add(size) > budget {
            runs.push(start..i);
            start = i;
            total = 0;
        }
        total = total.saturating_add(size);
        end = i + 1;
    }
    if end > start {
        runs.push(start..end);
    }
    runs
}

/// A batch call runs under one call's deadline, so a stage's batches are
/// cut to what it can run in this fraction (1/N) of its deadline, judging by
/// the time per message it has taken so far. A stage that takes microseconds
/// is never cut; one near its deadline per message gets one call each.
const BATCH_DEADLINE_SHARE: u32 = 4;

/// What one worker keeps for one stage.
struct Slot {
    stage: Weak<Stage>,
    /// The live instance; `None` after a failure dropped it, until the next
    /// call makes a fresh one.
    instance: Option<GuestInstance>,
    /// A moving average of the time per message of a batching stage's
    /// successful calls. It outlives an instance a failure drops.
    pace: Option<Duration>,
}

impl Slot {
    /// Make `call` on the stage's instance (a fresh one if there is none),
    /// for `n` messages.
    fn call<R>(
        &mut self,
        stage: &Stage,
        tenant: &str,
        n: usize,
        call: impl FnOnce(&mut GuestInstance) -> Result<R, GuestFailure>,
    ) -> Result<R, GuestFailure> {
        let instance = match self.instance.take() {
            Some(instance) => instance,
            None => stage
                .plugin
                .instantiate(tenant, &stage.config)
                .map_err(|e| match e {
                    WasmError::InitFailed { failure, .. } => failure,
                    other => GuestFailure {
                        kind: FailureKind::Init,
                        message: other.to_string(),
                    },
                })?,
        };
        let instance = self.instance.insert(instance);
        // Only a batching stage's pace is ever used (to size its batches).
        let started = stage.plugin.batches().then(Instant::now);
        let result = call(instance);
        // A trapped instance may be in any state: never call it again. One
        // near its memory limit is replaced before it fails a message.
        let retire = result.is_err() || instance.worn_out();
        if let (Some(started), Ok(_)) = (started, &result) {
            let sample = started.elapsed() / u32::try_from(n.max(1)).unwrap_or(u32::MAX);
            self.pace = Some(self.pace.map_or(sample, |pace| (pace * 3 + sample) / 4));
        }
        if retire {
            self.instance = None;
        }
        result
    }

    /// How many messages one batch call may take: what fits in a share of
    /// the stage's deadline at its pace so far.
    fn batch_size(&self, stage: &Stage) -> usize {
        let Some(per_message) = self.pace else {
            return usize::MAX;
        };
        let budget = stage.plugin.limits().deadline / BATCH_DEADLINE_SHARE;
        let size = budget.as_nanos() / per_message.as_nanos().max(1);
        usize::try_from(size).unwrap_or(usize::MAX).max(1)
    }
}

/// What one thread keeps per stage: its live instance and its pace.
#[derive(Default)]
pub struct StageRunner {
    slots: HashMap<u64, Slot>,
    calls: u32,
}

impl StageRunner {
    /// Run `msg` through `pipeline` on this thread.
    pub fn run(&mut self, pipeline: &Pipeline, origin: &Origin, msg: &Message) -> Outcome {
        // Converted once: every stage sees the same origin.
        let guest_origin = GuestOrigin::from(origin);
        let outcome = pipeline.chain.run(origin, msg, |i, _, m| {
            self.call_with(&pipeline.stages[i], &guest_origin, m)
        });
        self.count_call();
        outcome
    }

    /// Run several messages through `pipeline` together: each stage that
    /// takes batches gets one call for all the messages still in the chain
    /// (see [`Chain::run_batch`](crate::pipeline::Chain::run_batch)). The
    /// messages of a failed batch run again one at a time, so a bad message
    /// fails alone. Outcomes come back in the messages' order.
    ///
    /// Large messages are split into smaller batches: a batch call holds all
    /// its messages in guest memory at once, and batching must never make a
    /// call run out of memory where calls one at a time would not.
    pub fn run_batch(
        &mut self,
        pipeline: &Pipeline,
        items: &[(Origin, Arc<Message>)],
    ) -> Vec<Outcome> {
        self.run_batch_noting_reruns(pipeline, items)
            .into_iter()
            .map(|(outcome, _)| outcome)
            .collect()
    }

    /// [`run_batch`](Self::run_batch), and for each message whether it ran
    /// again alone because its batch call failed (for the
    /// `sluice_batch_reruns` metric).
    pub fn run_batch_noting_reruns(
        &mut self,
        pipeline: &Pipeline,
        items: &[(Origin, Arc<Message>)],
    ) -> Vec<(Outcome, bool)> {
        // A batch call carries one tenant and stream for all its messages;
        // a tenant reads one stream, so a job's messages always share them.
        let shared = items.windows(2).all(|w| {
            let (a, b) = (&w[0].0, &w[1].0);
            a.tenant == b.tenant && a.stream == b.stream
        });
        let memory = pipeline
            .stages
            .iter()
            .filter(|s| s.plugin.batches())
            .map(|s| s.plugin.limits().memory)
            .min();
        let Some(memory) = memory.filter(|_| items.len() > 1 && shared) else {
            return self.one_at_a_time(pipeline, items);
        };
        let budget = usize::try_from(memory / BATCH_MEMORY_SHARE).unwrap_or(usize::MAX);
        let mut outcomes = Vec::with_capacity(items.len());
        for group in batches_within(items.iter().map(|(_, m)| m.size()), budget) {
            let group = &items[group];
            if group.len() == 1 {
                outcomes.extend(self.one_at_a_time(pipeline, group));
            } else {
                outcomes.extend(self.run_together(pipeline, group));
            }
        }
        outcomes
    }

    fn one_at_a_time(
        &mut self,
        pipeline: &Pipeline,
        items: &[(Origin, Arc<Message>)],
    ) -> Vec<(Outcome, bool)> {
        items
            .iter()
            .map(|(origin, msg)| (self.run(pipeline, origin, msg), false))
            .collect()
    }

    fn run_together(
        &mut self,
        pipeline: &Pipeline,
        items: &[(Origin, Arc<Message>)],
    ) -> Vec<(Outcome, bool)> {
        let sources: Vec<(&Origin, &Message)> = items.iter().map(|(o, m)| (o, &**m)).collect();
        // The last failed batch call, for the log: the chain keeps only
        // that its messages are undecided.
        let mut failed: Option<(usize, GuestFailure)> = None;
        let outcomes = pipeline.chain.run_batch(&sources, |i, who, msgs| {
            let origins: Vec<&Origin> = who.iter().map(|&k| sources[k].0).collect();
            let result = self.call_batch(&pipeline.stages[i], &origins, msgs);
            if who.len() > 1
                && let Err(failure) = &result
            {
                failed = Some((i, failure.clone()));
            }
            result
        });
        let undecided = outcomes.iter().filter(|o| o.is_none()).count();
        if undecided > 0
            && let Some((i, failure)) = failed
        {
            tracing::warn!(
                tenant = %pipeline.chain.tenant,
                plugin = %pipeline.stages[i].plugin.label(),
                messages = undecided,
                %failure,
                "a batch call failed; running its messages one at a time"
            );
        }
        let outcomes = outcomes
            .into_iter()
            .zip(items)
            .map(|(outcome, (origin, msg))| match outcome {
                Some(o) => (o, false),
                None => (self.run(pipeline, origin, msg), true),
            })
            .collect();
        self.count_call();
        outcomes
    }

    fn count_call(&mut self) {
        self.calls = self.calls.wrapping_add(1);
        if self.calls.is_multiple_of(SWEEP_EVERY) {
            self.sweep();
        }
    }

    /// Call one stage, creating its instance on first use.
    pub fn call(
        &mut self,
        stage: &Arc<Stage>,
        origin: &Origin,
        msg: Message,
    ) -> Result<Verdict, GuestFailure> {
        self.call_with(stage, &GuestOrigin::from(origin), msg)
    }

    fn call_with(
        &mut self,
        stage: &Arc<Stage>,
        origin: &GuestOrigin,
        msg: Message,
    ) -> Result<Verdict, GuestFailure> {
        self.slot(stage)
            .call(stage, origin.tenant(), 1, |i| i.handle_with(origin, msg))
    }

    /// One stage's call for the messages of a batch still in the chain,
    /// `msgs[j]` from `origins[j]`. A stage without the batch call gets a
    /// call per message, each with its own result, as outside a batch; so
    /// does each message of a stage whose pace allows only one per call.
    fn call_batch(
        &mut self,
        stage: &Arc<Stage>,
        origins: &[&Origin],
        msgs: Vec<Cow<'_, Message>>,
    ) -> Result<Vec<Result<Verdict, GuestFailure>>, GuestFailure> {
        let size = if stage.plugin.batches() {
            self.slot(stage).batch_size(stage)
        } else {
            1
        };
        let mut results = Vec::with_capacity(msgs.len());
        let mut msgs = msgs.into_iter();
        for part in origins.chunks(size) {
            if let [origin] = part {
                // A single call lowers an owned message: clone a borrowed
                // source here, as `run` does.
                results.extend(msgs.by_ref().take(1).map(|msg| {
                    self.call_with(stage, &GuestOrigin::from(*origin), msg.into_owned())
                }));
            } else {
                let part_msgs: Vec<Cow<'_, Message>> = msgs.by_ref().take(part.len()).collect();
                let tenant = part.first().map_or("", |o| o.tenant.as_str());
                let verdicts = self.slot(stage).call(stage, tenant, part.len(), |i| {
                    i.handle_batch(part, &part_msgs)
                })?;
                results.extend(verdicts.into_iter().map(Ok));
            }
        }
        Ok(results)
    }

    /// The stage's slot, made on first use.
    fn slot(&mut self, stage: &Arc<Stage>) -> &mut Slot {
        self.slots.entry(stage.id).or_insert_with(|| Slot {
            stage: Arc::downgrade(stage),
            instance: None,
            pace: None,
        })
    }

    /// Drop what is kept for stages nobody uses any more.
    pub fn sweep(&mut self) {
        self.slots.retain(|_, slot| slot.stage.strong_count() > 0);
    }

    /// Live instances held.
    pub fn len(&self) -> usize {
        self.slots.values().filter(|s| s.instance.is_some()).count()
    }

    /// Whether no instance is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One unit of work for a worker: messages admitted together, run one after
/// another on the same thread. Batching is what keeps the hand-off cheap:
/// one queue push, one worker wake-up and one reply per batch instead of
/// per message.
struct Job {
    pipeline: Arc<Pipeline>,
    items: Arc<[(Origin, Arc<Message>)]>,
    reply: oneshot::Sender<Vec<Ran>>,
    queued: Instant,
}

/// One message's outcome and how long its pipeline ran on the worker (not
/// counting time in the queue): its share of its batch's run.
#[derive(Debug)]
pub struct Ran {
    /// What the pipeline decided.
    pub outcome: Outcome,
    /// Time spent running it.
    pub took: Duration,
    /// Whether it ran again alone because its batch call failed.
    pub rerun: bool,
    /// How long its job waited in the queue for a worker.
    pub waited: Duration,
}

/// The pool stopped before the job ran.
#[derive(Debug, thiserror::Error)]
#[error("the worker pool has shut down")]
pub struct PoolClosed;

/// A fixed set of worker threads running pipelines.
pub struct WorkerPool {
    queue: Arc<FairQueue<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl WorkerPool {
    /// Start `workers` threads.
    pub fn new(workers: usize) -> std::io::Result<Self> {
        let queue: Arc<FairQueue<Job>> = Arc::default();
        let threads = (0..workers.max(1))
            .map(|i| {
                let queue = queue.clone();
                std::thread::Builder::new()
                    .name(format!("sluice-worker-{i}"))
                    .spawn(move || {
                        let mut runner = StageRunner::default();
                        while let Some(taken) = queue.pop() {
                            let job = &taken.job;
                            let started = Instant::now();
                            let waited = started.saturating_duration_since(job.queued);
                            let outcomes =
                                runner.run_batch_noting_reruns(&job.pipeline, &job.items);
                            let elapsed = started.elapsed();
                            queue.done(&taken, elapsed);
                            // Stages run the batch together, so each message
                            // is charged its share of the whole.
                            let took =
                                elapsed / u32::try_from(outcomes.len().max(1)).unwrap_or(u32::MAX);
                            let ran = outcomes
                                .into_iter()
                                .map(|(outcome, rerun)| Ran {
                                    outcome,
                                    took,
                                    rerun,
                                    waited,
                                })
                                .collect();
                            // The caller may have given up (shutdown); its
                            // messages will be redelivered.
                            let _ = taken.job.reply.send(ran);
                        }
                    })
            })
            .collect::<std::io::Result<_>>()?;
        Ok(WorkerPool { queue, threads })
    }

    /// Run `pipeline` on one message, in the lane of the pipeline's tenant
    /// at weight 1.
    pub async fn run(
        &self,
        pipeline: Arc<Pipeline>,
        origin: Origin,
        message: Arc<Message>,
    ) -> Result<Outcome, PoolClosed> {
        let share = Share {
            tenant: pipeline.chain.tenant.as_str().into(),
            weight: 1,
        };
        let mut ran = self
            .run_batch(&share, pipeline, Arc::from([(origin, message)]))
            .await?;
        ran.pop().map(|r| r.outcome).ok_or(PoolClosed)
    }

    /// Run `pipeline` on each message, in order, on one worker, when
    /// `share`'s lane is next; the results come back in the same order.
    pub async fn run_batch(
        &self,
        share: &Share,
        pipeline: Arc<Pipeline>,
        items: Arc<[(Origin, Arc<Message>)]>,
    ) -> Result<Vec<Ran>, PoolClosed> {
        let (reply, rx) = oneshot::channel();
        let messages = items.len();
        let job = Job {
            pipeline,
            items,
            reply,
            queued: Instant::now(),
        };
        self.queue
            .push(share, messages, job)
            .map_err(|_| PoolClosed)?;
        rx.await.map_err(|_| PoolClosed)
    }

    /// Jobs waiting for a worker, per tenant with any.
    pub fn queued(&self) -> Vec<(Arc<str>, usize)> {
        self.queue.queued()
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        // Closing the queue ends each worker's loop once it drains.
        self.queue.close();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::batches_within;

    #[test]
    fn batches_keep_within_the_budget_and_big_messages_go_alone() {
        assert_eq!(batches_within([10, 10, 10], 100), vec![0..3]);
        assert_eq!(batches_within([40, 40, 40, 10], 100), vec![0..2, 2..4]);
        assert_eq!(batches_within([500, 10, 10], 100), vec![0..1, 1..3]);
        assert_eq!(batches_within([10, 500, 10], 100), vec![0..1, 1..2, 2..3]);
        assert_eq!(
            batches_within([], 100),
            Vec::<std::ops::Range<usize>>::new()
        );
    }
}
