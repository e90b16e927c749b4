//! Pulls for an exclusive tenant: its consumer has a priority group with
//! the `pinned_client` policy, so the server delivers to one host at a
//! time (the pinned one) and holds the others' pulls on standby until the
//! pinned host has not pulled for the consumer's `priority_timeout`. Then
//! it pins another and its deliveries carry the new `Nats-Pin-Id`.
//!
//! async-nats' one-shot `Batch` refuses such consumers and its `Stream`
//! pulls on its own schedule, not the tenant's permits; this is the
//! tenant's own pull, with the pin id it was given sent in each request
//! (`id`), as the JetStream API has it.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use async_nats::{StatusCode, Subscriber};
use futures::{FutureExt as _, Stream, StreamExt as _};

use crate::topology::PIN_GROUP as GROUP;

/// The pin id this host holds for a tenant, if any.
#[derive(Default)]
pub(super) struct PinId {
    id: Mutex<Option<String>>,
    /// Set when a new pin arrives, until the tenant has seen it.
    fresh: std::sync::atomic::AtomicBool,
}

impl PinId {
    fn get(&self) -> Option<String> {
        self.id
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, id: Option<String>) {
        let mut held = self.id.lock().unwrap_or_else(PoisonError::into_inner);
        if *held != id {
            match &id {
                Some(_) => self.fresh.store(true, std::sync::atomic::Ordering::Relaxed),
                None => {
                    tracing::info!("this host no longer holds the tenant's consumer; standing by")
                }
            }
            *held = id;
        }
    }

    /// Whether a new pin arrived since the last call.
    pub(super) fn take_fresh(&self) -> bool {
        self.fresh.swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether this host is the pinned one.
    pub(super) fn held(&self) -> bool {
        self.get().is_some()
    }
}

/// One pull request's deliveries.
pub(super) struct PinnedPull {
    sub: Subscriber,
    context: jetstream::Context,
    pin: Arc<PinId>,
    left: usize,
    deadline: Pin<Box<tokio::time::Sleep>>,
    done: bool,
}

/// Ask for up to `batch` messages, waiting up to `expires` server-side.
pub(super) async fn pull(
    consumer: &PullConsumer,
    context: &jetstream::Context,
    pin: Arc<PinId>,
    batch: usize,
    expires: Duration,
) -> Result<PinnedPull, async_nats::Error> {
    let client = context.client();
    let inbox = client.new_inbox();
    let sub = client.subscribe(inbox.clone()).await?;
    let info = consumer.cached_info();
    let mut request = serde_json::json!({
        "batch": batch,
        "expires": u64::try_from(expires.as_nanos()).unwrap_or(u64::MAX),
        "group": GROUP,
    });
    if let (Some(id), Some(fields)) = (pin.get(), request.as_object_mut()) {
        fields.insert("id".to_owned(), id.into());
    }
    // The host's contexts use the default API prefix (source::jetstream).
    let subject = format!(
        "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
        info.stream_name, info.name
    );
    client
        .publish_with_reply(subject, inbox, serde_json::to_vec(&request)?.into())
        .await?;
    Ok(PinnedPull {
        sub,
        context: context.clone(),
        pin,
        left: batch,
        // The server ends the request at `expires`; this is in case its
        // word is lost (a dead connection).
        deadline: Box::pin(tokio::time::sleep(expires + Duration::from_secs(5))),
        done: false,
    })
}

impl Stream for PinnedPull {
    type Item = Result<jetstream::Message, async_nats::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done || this.left == 0 {
            return Poll::Ready(None);
        }
        if this.deadline.poll_unpin(cx).is_ready() {
            this.done = true;
            return Poll::Ready(None);
        }
        loop {
            let Poll::Ready(next) = this.sub.poll_next_unpin(cx) else {
                return Poll::Pending;
            };
            let Some(message) = next else {
                this.done = true;
                return Poll::Ready(None);
            };
            match message.status {
                None | Some(StatusCode::OK) => {
                    let pin = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("Nats-Pin-Id"))
                        .map(|v| v.as_str().to_owned());
                    if pin.is_some() {
                        this.pin.set(pin);
                    }
                    this.left -= 1;
                    return Poll::Ready(Some(Ok(jetstream::Message {
                        message,
                        context: this.context.clone(),
                    })));
                }
                // Looped, not returned: returning Pending here would leave
                // nothing to wake the task.
                Some(StatusCode::IDLE_HEARTBEAT) => continue,
                Some(StatusCode::PIN_ID_MISMATCH) => {
                    // Another host holds it now: stand by (pull without id).
                    this.pin.set(None);
                    this.done = true;
                    return Poll::Ready(None);
                }
                Some(
                    StatusCode::TIMEOUT | StatusCode::NOT_FOUND | StatusCode::REQUEST_TERMINATED,
                ) if message.description.as_deref() != Some("Consumer Deleted") => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Some(status) => {
                    this.done = true;
                    let why = message.description.unwrap_or_default();
                    return Poll::Ready(Some(Err(format!(
                        "pull request ended with {status}: {why}"
                    )
                    .into())));
                }
            }
        }
    }
}
