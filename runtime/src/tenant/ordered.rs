//! An ordered tenant's side of [`crate::ordering`]: its deliveries go
//! through the key lanes before they run, each settle lets the next of its
//! key run, waiting messages get in-progress acks, and after a bind with
//! messages left pending the ack floor is followed until recovery ends.

use std::sync::{Mutex, MutexGuard, PoisonError};

use async_nats::jetstream::{self, AckKind};
use tokio::sync::OwnedSemaphorePermit;

use crate::ordering::{Key, Order, OrderingKey};

/// A message's place in its lane: the bind it came with (a settle from
/// before a rebind must not move the new lanes), its key and its sequence.
pub(super) type Lane = (u64, Key, u64);

/// A delivery with its permit, and its lane when ordered.
pub(super) type Admitted = (jetstream::Message, OwnedSemaphorePermit, Option<Lane>);

/// A message waiting for its turn, keeping its permit.
struct Waiting {
    msg: jetstream::Message,
    permit: OwnedSemaphorePermit,
}

struct State {
    epoch: u64,
    order: Order<Waiting>,
}

/// The ordering of one tenant's messages.
pub(super) struct Ordered {
    key: OrderingKey,
    state: Mutex<State>,
}

impl Ordered {
    pub(super) fn new(key: OrderingKey) -> Self {
        Ordered {
            key,
            state: Mutex::new(State {
                epoch: 0,
                order: Order::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain data: usable after a panic elsewhere.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Start afresh on a (re)bound consumer; recovering when it has
    /// messages delivered before and not acked. Returns whether it is.
    pub(super) fn bind(&self, info: &jetstream::consumer::Info) -> bool {
        let mut state = self.lock();
        state.epoch += 1;
        state.order = if info.num_ack_pending > 0 {
            Order::recovering(
                info.delivered.stream_sequence,
                info.ack_floor.stream_sequence,
            )
        } else {
            Order::default()
        };
        state.order.is_recovering()
    }

    /// Whether messages left pending at bind are still being recovered.
    pub(super) fn is_recovering(&self) -> bool {
        self.lock().order.is_recovering()
    }

    /// Admit deliveries: those that may run now, with their lanes.
    pub(super) fn admit(
        &self,
        batch: Vec<(jetstream::Message, OwnedSemaphorePermit)>,
    ) -> Vec<Admitted> {
        let mut state = self.lock();
        let epoch = state.epoch;
        let mut run = Vec::new();
        for (msg, permit) in batch {
            // Without metadata it is skipped later, never settled: it
            // needs no lane.
            let Ok(seq) = msg.info().map(|i| i.stream_sequence) else {
                run.push((msg, permit, None));
                continue;
            };
            let key = self
                .key
                .key_of(msg.subject.as_str(), msg.headers.as_ref(), &msg.payload);
            let ready = state.order.admit(key, seq, Waiting { msg, permit });
            run.extend(lanes(epoch, ready));
        }
        run
    }

    /// The message of `lane` settled: what may run now.
    pub(super) fn settled(&self, lane: Lane) -> Vec<Admitted> {
        let (epoch, key, seq) = lane;
        let mut state = self.lock();
        if state.epoch != epoch {
            return Vec::new();
        }
        let ready = state.order.settled(&key, seq);
        lanes(epoch, ready)
    }

    /// The consumer's ack floor, while recovering: what may run now.
    pub(super) fn floor(&self, floor: u64) -> Vec<Admitted> {
        let mut state = self.lock();
        let epoch = state.epoch;
        let ready = state.order.floor(floor);
        lanes(epoch, ready)
    }

    /// Tell the server every waiting message is still being worked on.
    pub(super) async fn keep_waiting(&self) {
        let waiting: Vec<jetstream::Message> = self
            .lock()
            .order
            .waiting()
            .into_iter()
            .map(|w| w.msg.clone())
            .collect();
        for msg in waiting {
            let _ = msg.ack_with(AckKind::Progress).await;
        }
    }
}

fn lanes(epoch: u64, ready: Vec<(Key, u64, Waiting)>) -> Vec<Admitted> {
    ready
        .into_iter()
        .map(|(key, seq, w)| (w.msg, w.permit, Some((epoch, key, seq))))
        .collect()
}
