//! The queue in front of the worker threads: one lane per tenant, served in
//! weighted fair order by worker time, so one tenant's backlog cannot delay
//! the others' messages.
//!
//! A first-in, first-out channel (what the pool had) serves jobs in the
//! order they were queued: a tenant that queues a thousand jobs makes every
//! other tenant's next job wait behind all of them. Here each tenant's jobs
//! wait in a lane of their own, and a free worker takes the next job of the
//! lane that has had the least worker time for its weight (start-time fair
//! queueing). A lane's *tag* is its worker time so far divided by its
//! weight; the lane with the smallest tag goes next. A job is charged an
//! estimate (the lane's recent time per message) when it is taken, so the
//! next free worker sees it, and corrected to what it really took when it
//! finishes. A lane with nothing queued or running is forgotten: when it has
//! work again its tag starts at the tag of the job taken last (the queue's
//! clock), so time away is no credit, and removed tenants leave nothing.
//!
//! The queue itself is unbounded: what a tenant can queue is bounded by its
//! `max_in_flight` (each queued job holds at least one of its permits).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Who queued a job and with what share of the workers.
#[derive(Debug, Clone)]
pub struct Share {
    /// The tenant's id: one lane per tenant.
    pub tenant: Arc<str>,
    /// Its weight (1 or more): a tenant of weight 2 with a backlog gets
    /// twice the worker time of a tenant of weight 1 with a backlog.
    pub weight: u32,
}

/// A job taken from the queue, with what is needed to charge its lane for
/// it when it is done.
pub struct Taken<T> {
    /// The job.
    pub job: T,
    lane: Arc<str>,
    messages: usize,
    estimate: u64,
}

/// Weighted fair queue of jobs of cost `cost(job)` messages.
pub struct FairQueue<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        FairQueue {
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
        }
    }
}

impl<T> FairQueue<T> {
    /// Queue `job` (of `messages` messages) in `share`'s lane; gives it back
    /// if the queue is closed.
    pub fn push(&self, share: &Share, messages: usize, job: T) -> Result<(), T> {
        let mut state = self.lock();
        if state.closed {
            return Err(job);
        }
        state.push(share, messages, job);
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// The next job in fair order, waiting for one; `None` once the queue
    /// is closed and empty.
    pub fn pop(&self) -> Option<Taken<T>> {
        let mut state = self.lock();
        loop {
            if let Some(taken) = state.take() {
                return Some(taken);
            }
            if state.closed {
                return None;
            }
            state = self
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Charge a finished job's lane with the worker time it took.
    pub fn done(&self, taken: &Taken<T>, took: Duration) {
        self.lock().done(taken, took);
    }

    /// Accept no more jobs; workers drain what is queued, then stop.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// Jobs queued (not yet taken) per tenant with any.
    pub fn queued(&self) -> Vec<(Arc<str>, usize)> {
        let state = self.lock();
        state
            .lanes
            .iter()
            .filter(|(_, l)| !l.jobs.is_empty())
            .map(|(id, l)| (id.clone(), l.jobs.len()))
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A worker that panicked mid-update leaves plain counters behind;
        // the queue stays usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Lane<T> {
    jobs: VecDeque<(usize, T)>,
    weight: u64,
    /// Worker time charged so far divided by the weight, in nanoseconds.
    tag: u64,
    /// Recent worker time per message, nanoseconds (0 until measured).
    pace: u64,
    /// Jobs taken and not yet done.
    running: usize,
    /// While it has jobs queued, the lane's key in `State::order` is
    /// `(tag, arrival, id)`.
    arrival: u64,
}

struct State<T> {
    lanes: HashMap<Arc<str>, Lane<T>>,
    /// Lanes with queued jobs, by (tag, arrival), smallest first.
    order: BTreeSet<(u64, u64, Arc<str>)>,
    /// The tag of the job taken last: an idle lane's start.
    clock: u64,
    /// Arrival counter: ties between equal tags go to the earlier lane.
    arrivals: u64,
    closed: bool,
}

impl<T> Default for State<T> {
    fn default() -> Self {
        State {
            lanes: HashMap::new(),
            order: BTreeSet::new(),
            clock: 0,
            arrivals: 0,
            closed: false,
        }
    }
}

impl<T> State<T> {
    fn push(&mut self, share: &Share, messages: usize, job: T) {
        let clock = self.clock;
        let lane = self
            .lanes
            .entry(share.tenant.clone())
            .or_insert_with(|| Lane {
                jobs: VecDeque::new(),
                weight: u64::from(share.weight.max(1)),
                tag: clock,
                pace: 0,
                running: 0,
                arrival: 0,
            });
        lane.weight = u64::from(share.weight.max(1));
        lane.jobs.push_back((messages, job));
        if lane.jobs.len() == 1 {
            // Back from idle: no credit for the time it was away.
            lane.tag = lane.tag.max(clock);
            self.arrivals += 1;
            lane.arrival = self.arrivals;
            self.order
                .insert((lane.tag, lane.arrival, share.tenant.clone()));
        }
    }

    fn take(&mut self) -> Option<Taken<T>> {
        let (tag, _, id) = self.order.pop_first()?;
        let lane = self.lanes.get_mut(&id)?;
        let (messages, job) = lane.jobs.pop_front()?;
        self.clock = self.clock.max(tag);
        let estimate = lane.pace.saturating_mul(messages as u64);
        lane.tag = lane.tag.saturating_add(estimate / lane.weight);
        lane.running += 1;
        if !lane.jobs.is_empty() {
            // Keeps its arrival: among equal tags, order is stable.
            self.order.insert((lane.tag, lane.arrival, id.clone()));
        }
        Some(Taken {
            job,
            lane: id,
            messages,
            estimate,
        })
    }

    fn done(&mut self, taken: &Taken<T>, took: Duration) {
        let id = &taken.lane;
        let Some(lane) = self.lanes.get_mut(id) else {
            return;
        };
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        // The estimate was charged when the job was taken; charge the rest
        // (or give back the excess).
        let old = lane.tag;
        lane.tag = lane
            .tag
            .saturating_sub(taken.estimate / lane.weight)
            .saturating_add(took / lane.weight);
        let sample = took / (taken.messages.max(1) as u64);
        lane.pace = if lane.pace == 0 {
            sample
        } else {
            (lane.pace.saturating_mul(3).saturating_add(sample)) / 4
        };
        lane.running = lane.running.saturating_sub(1);
        if !lane.jobs.is_empty() && old != lane.tag {
            self.order.remove(&(old, lane.arrival, id.clone()));
            self.order.insert((lane.tag, lane.arrival, id.clone()));
        }
        if lane.jobs.is_empty() && lane.running == 0 {
            self.lanes.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(tenant: &str, weight: u32) -> Share {
        Share {
            tenant: tenant.into(),
            weight,
        }
    }

    /// Take the next job and finish it at once, each message costing 1 ms.
    fn serve(state: &mut State<u32>) -> Option<u32> {
        let taken = state.take()?;
        state.done(&taken, Duration::from_millis(1));
        Some(taken.job)
    }

    #[test]
    fn a_backlog_does_not_delay_another_tenants_next_job() {
        let mut state = State::default();
        for i in 0..1000 {
            state.push(&share("noisy", 1), 1, i);
        }
        // The noisy tenant has run a while when a quiet one queues a job.
        for _ in 0..10 {
            serve(&mut state);
        }
        state.push(&share("quiet", 1), 1, 5000);
        let next: Vec<u32> = (0..2).filter_map(|_| serve(&mut state)).collect();
        assert!(
            next.contains(&5000),
            "quiet job within the next two: {next:?}"
        );
    }

    #[test]
    fn backlogged_tenants_share_by_weight() {
        let mut state = State::default();
        for i in 0..300 {
            state.push(&share("a", 1), 1, i);
            state.push(&share("b", 2), 1, 1000 + i);
        }
        let served: Vec<u32> = (0..150).filter_map(|_| serve(&mut state)).collect();
        let b = served.iter().filter(|j| **j >= 1000).count();
        assert!((95..=105).contains(&b), "b has twice a's share: {b} of 150");
        // Within a lane, jobs keep their order.
        let a: Vec<u32> = served.iter().copied().filter(|j| *j < 1000).collect();
        assert!(a.windows(2).all(|w| w[0] < w[1]), "{a:?}");
    }

    #[test]
    fn worker_time_not_message_count_is_shared() {
        // a's messages cost 10 times b's: b gets about ten jobs per a job.
        let mut state = State::default();
        for i in 0..200 {
            state.push(&share("a", 1), 1, i);
            state.push(&share("b", 1), 1, 1000 + i);
        }
        let mut served = Vec::new();
        for _ in 0..110 {
            let Some(t) = state.take() else { break };
            let cost = if t.job < 1000 { 10 } else { 1 };
            state.done(&t, Duration::from_millis(cost));
            served.push(t.job);
        }
        let a = served.iter().filter(|j| **j < 1000).count();
        assert!((8..=13).contains(&a), "a ran {a} of 110");
    }

    #[test]
    fn an_idle_tenant_banks_no_credit_and_gone_lanes_are_forgotten() {
        let mut state = State::default();
        state.push(&share("early", 1), 1, 1);
        serve(&mut state);
        assert!(state.lanes.is_empty(), "a finished lane is forgotten");
        for i in 0..100 {
            state.push(&share("busy", 1), 1, 100 + i);
        }
        for _ in 0..50 {
            serve(&mut state);
        }
        // Back after being idle for 50 jobs: it gets its turn next, but
        // not 50 turns in a row.
        for i in 0..10 {
            state.push(&share("early", 1), 1, 10 + i);
        }
        let next: Vec<u32> = (0..10).filter_map(|_| serve(&mut state)).collect();
        let early = next.iter().filter(|j| **j < 100).count();
        assert!((4..=6).contains(&early), "alternates: {next:?}");
    }

    #[test]
    fn a_closed_queue_refuses_jobs_and_drains() {
        let queue = FairQueue::default();
        queue.push(&share("a", 1), 1, 1).unwrap();
        queue.close();
        assert_eq!(queue.push(&share("a", 1), 1, 2), Err(2));
        assert_eq!(queue.pop().map(|t| t.job), Some(1));
        assert!(queue.pop().is_none());
    }
}
