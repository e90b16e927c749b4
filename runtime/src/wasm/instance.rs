//! A live instance: one tenant, one plugin version, called under a
//! deadline and a memory limit, and how a failed call is told apart
//! (deadline, memory, trap).

use super::*;

/// Call `handle-batch` and decode its answer.
fn call_batch(
    store: &mut Store<HostState>,
    h: &BatchHandler,
    (tenant, stream, count, packed): (&str, &str, u32, &[u8]),
    n: usize,
) -> Result<Vec<Verdict>, GuestFailure> {
    // The answer is copied out of the guest: wasmtime runs the guest's
    // `post-return`, which frees it, before the call returns.
    let answer = h
        .sluice_pipeline_batch()
        .call_handle_batch(&mut *store, tenant, stream, count, packed)
        .map_err(|e| classify(store, &e))?;
    wire::decode_verdicts(answer, n).map_err(|e| GuestFailure {
        kind: FailureKind::Trap,
        message: format!("handle-batch returned malformed verdicts: {e}"),
    })
}

pub(super) fn deadline_ticks(deadline: Duration) -> u64 {
    // +1: the current tick may be almost over when the call starts.
    u64::try_from(deadline.as_nanos().div_ceil(EPOCH_TICK.as_nanos())).unwrap_or(u64::MAX) + 1
}

/// Tell a deadline or memory-limit trap from any other.
pub(super) fn classify(store: &Store<HostState>, e: &wasmtime::Error) -> GuestFailure {
    let kind = if store.data().limiter.hit {
        FailureKind::Memory
    } else if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt)
        || e.downcast_ref::<sandbox::BlockedPastDeadline>().is_some()
    {
        FailureKind::Deadline
    } else {
        FailureKind::Trap
    };
    let message = match kind {
        FailureKind::Deadline => "handler ran past its deadline".to_owned(),
        _ => {
            // The root cause is the useful part (`wasm trap: unreachable`);
            // the backtrace wasmtime attaches is too long for a header.
            let mut text = e.root_cause().to_string();
            if let Some(trap) = e.downcast_ref::<Trap>()
                && !text.contains(&trap.to_string())
            {
                text = format!("{trap}: {text}");
            }
            text
        }
    };
    GuestFailure { kind, message }
}

/// An [`Origin`] in the form the guest call takes.
pub struct GuestOrigin(bindings::sluice::pipeline::types::Origin);

impl From<&Origin> for GuestOrigin {
    fn from(o: &Origin) -> Self {
        GuestOrigin(o.into())
    }
}

impl GuestOrigin {
    /// The tenant it names.
    pub fn tenant(&self) -> &str {
        &self.0.tenant
    }
}

/// A live instance serving one tenant with one plugin version.
pub struct GuestInstance {
    pub(super) store: Store<HostState>,
    pub(super) handler: Exports,
    pub(super) plugin: Arc<Plugin>,
    /// The buffer `handle-batch` packs its deliveries into, reused.
    pub(super) packed: Vec<u8>,
}

impl std::fmt::Debug for GuestInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestInstance")
            .field("plugin", &self.plugin.label)
            .finish()
    }
}

impl GuestInstance {
    /// The version this instance runs.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// Its linear memory in bytes: the most it has grown to.
    pub fn memory_size(&self) -> usize {
        self.store.data().limiter.size
    }

    /// Whether the instance has grown so close to its memory limit that it
    /// should be replaced by a fresh one before its next call (see
    /// [`RETIRE_AT`]).
    pub fn worn_out(&self) -> bool {
        let limit = usize::try_from(self.plugin.limits.memory).unwrap_or(usize::MAX);
        let (num, den) = RETIRE_AT;
        self.memory_size() > limit / den * num
    }

    /// Call `handle` under the plugin's deadline. After an `Err` the
    /// instance's state is undefined: drop it.
    pub fn handle(&mut self, origin: &Origin, msg: Message) -> Result<Verdict, GuestFailure> {
        self.handle_with(&GuestOrigin::from(origin), msg)
    }

    /// [`handle`](Self::handle) with an origin already converted, so a
    /// pipeline converts it once per message rather than once per stage.
    pub fn handle_with(
        &mut self,
        origin: &GuestOrigin,
        msg: Message,
    ) -> Result<Verdict, GuestFailure> {
        self.store
            .set_epoch_deadline(deadline_ticks(self.plugin.limits.deadline));
        self.store
            .data_mut()
            .start_call(self.plugin.limits.deadline);
        let msg = msg.into();
        let verdict = match &self.handler {
            Exports::Single(h) => h.call_handle(&mut self.store, &origin.0, &msg),
            Exports::Batch(h) => h.call_handle(&mut self.store, &origin.0, &msg),
        };
        match verdict {
            Ok(v) => Ok(v.into()),
            Err(e) => Err(classify(&self.store, &e)),
        }
    }

    /// Call `handle-batch` under one call's deadline: `msgs[j]` came from
    /// `origins[j]`, and all of those share one tenant and stream. A plugin
    /// without the batch call gets one `handle` call per message instead.
    /// After an `Err` the instance's state is undefined: drop it. An answer
    /// that is not exactly one well-formed verdict per message is a trap,
    /// whose message says where the bytes stop making sense.
    pub fn handle_batch<M: Borrow<Message>>(
        &mut self,
        origins: &[&Origin],
        msgs: &[M],
    ) -> Result<Vec<Verdict>, GuestFailure> {
        let (Exports::Batch(h), Some(first)) = (&self.handler, origins.first()) else {
            return self.handle_each(origins, msgs);
        };
        // Reused from batch to batch, so encoding rarely allocates.
        self.packed.clear();
        if wire::encode_deliveries(&mut self.packed, origins, msgs).is_err() {
            // Past the format's 4 GiB lengths: one message at a time, each of
            // which then fails on its own.
            return self.handle_each(origins, msgs);
        }
        let n = msgs.len();
        // A batch is cut to a share of the memory limit, far below u32::MAX
        // messages; saturating keeps a bogus count a guest error, not a panic.
        let count = u32::try_from(n).unwrap_or(u32::MAX);
        self.store
            .set_epoch_deadline(deadline_ticks(self.plugin.limits.deadline));
        self.store
            .data_mut()
            .start_call(self.plugin.limits.deadline);
        call_batch(
            &mut self.store,
            h,
            (&first.tenant, &first.stream, count, &self.packed),
            n,
        )
    }

    /// One `handle` call per message, for a batch this instance cannot take
    /// in one call.
    fn handle_each<M: Borrow<Message>>(
        &mut self,
        origins: &[&Origin],
        msgs: &[M],
    ) -> Result<Vec<Verdict>, GuestFailure> {
        origins
            .iter()
            .zip(msgs)
            .map(|(origin, msg)| self.handle(origin, msg.borrow().clone()))
            .collect()
    }
}
