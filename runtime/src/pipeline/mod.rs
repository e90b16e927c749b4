//! The stage chain and the verdict rules, as pure logic: given how to call a
//! stage, run one message through a tenant's stages and decide the
//! [`Outcome`]. No NATS and no wasmtime here — the worker pool supplies the
//! stage calls, and only the JetStream side turns an outcome into
//! ack/nak/term.

use std::borrow::Cow;
use std::time::Duration;

use crate::headers::{MSG_ID_HEADER, PLUGIN_HEADER, TENANT_HEADER, host_owned, valid_header};
use crate::message::GuestFailure;
use crate::message::{Message, Origin, OutputCaps, Verdict};
use crate::subject::{self, Template};

/// What the pipeline decided for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Publish these (zero outputs never gets here: that is an ack); ack the
    /// source once all are confirmed.
    Publish {
        /// Outputs with host headers set and subjects checked.
        outputs: Vec<Message>,
        /// Label of the stage that ended the chain.
        plugin: String,
    },
    /// Ack the source; nothing to publish.
    Ack {
        /// Label of the stage that decided.
        plugin: String,
    },
    /// Publish the original to the dead-letter subject with `reason`, then
    /// terminate the source.
    DeadLetter {
        /// Why, for the `Sluice-Reason` header.
        reason: String,
        /// Label of the stage that decided (or produced the refused output).
        plugin: String,
        /// The host limit the outputs broke, if that is why (counted in
        /// `sluice_limit_hits`); `None` for a guest's own verdict.
        limit: Option<&'static str>,
    },
    /// Nak the source for redelivery.
    Retry {
        /// The guest's requested delay; `None` means the tenant's backoff.
        delay: Option<Duration>,
        /// Set when a guest failure (not a verdict) caused the retry.
        failure: Option<GuestFailure>,
        /// Label of the stage concerned.
        plugin: String,
    },
}

impl Outcome {
    /// The `name@digest` of the stage that decided.
    pub fn plugin(&self) -> &str {
        match self {
            Outcome::Publish { plugin, .. }
            | Outcome::Ack { plugin }
            | Outcome::DeadLetter { plugin, .. }
            | Outcome::Retry { plugin, .. } => plugin,
        }
    }

    /// Bounded label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Publish { .. } => "publish",
            Outcome::Ack { .. } => "ack",
            Outcome::DeadLetter { .. } => "dead-letter",
            Outcome::Retry { .. } => "retry",
        }
    }
}

/// Where one stage leaves a message.
enum Step {
    /// On to the next stage with this message.
    Next(Message),
    /// The chain ended.
    Done(Outcome),
}

/// The pure part of a tenant's pipeline: what it needs to apply the verdict
/// rules, without the plugins themselves.
#[derive(Debug, Clone)]
pub struct Chain {
    /// The tenant's id.
    pub tenant: String,
    /// Where `next` after the last stage publishes.
    pub output: Template,
    /// Subject patterns outputs must match.
    pub permits: Vec<String>,
    /// Label (`name@digest`) of each stage, in order.
    pub labels: Vec<String>,
    /// Each stage's caps on its outputs, in order.
    pub caps: Vec<OutputCaps>,
}

impl Chain {
    /// Run `source` through the stages. `call(i, origin, msg)` runs stage
    /// `i`. The source itself is left untouched for dead-lettering.
    pub fn run<F>(&self, origin: &Origin, source: &Message, mut call: F) -> Outcome
    where
        F: FnMut(usize, &Origin, Message) -> Result<Verdict, GuestFailure>,
    {
        let mut msg = source.clone();
        for i in 0..self.labels.len() {
            match self.step(i, origin, source, call(i, origin, msg)) {
                Step::Next(m) => msg = m,
                Step::Done(outcome) => return outcome,
            }
        }
        self.finish(origin, source, msg)
    }

    /// Run several sources through the stages together: each stage is
    /// called once with every message still in the chain, as
    /// `call(i, indices, messages)` where `indices` says which source each
    /// message came from. The call answers for each message (a verdict, or
    /// that message's own failure, as in [`run`](Self::run)), or fails as a
    /// whole. The outcomes come back in the sources' order.
    ///
    /// A whole call that failed for one message is that message's failure.
    /// One that failed for several is nobody's in particular: those sources
    /// get `None`, for the caller to run again one at a time so that a bad
    /// message fails alone.
    ///
    /// The first stage gets the sources themselves, borrowed: a batch call
    /// only copies them into the guest, so nothing clones them first.
    pub fn run_batch<'s, F>(
        &self,
        sources: &[(&Origin, &'s Message)],
        mut call: F,
    ) -> Vec<Option<Outcome>>
    where
        F: FnMut(
            usize,
            &[usize],
            Vec<Cow<'s, Message>>,
        ) -> Result<Vec<Result<Verdict, GuestFailure>>, GuestFailure>,
    {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; sources.len()];
        let mut who: Vec<usize> = (0..sources.len()).collect();
        let mut msgs: Vec<Cow<'s, Message>> =
            sources.iter().map(|(_, m)| Cow::Borrowed(*m)).collect();
        for i in 0..self.labels.len() {
            if who.is_empty() {
                return outcomes;
            }
            let verdicts = match call(i, &who, msgs) {
                Ok(v) if v.len() == who.len() => v,
                // The wrong number of verdicts: treat it like a failed batch
                // rather than pair verdicts with the wrong messages.
                Ok(_) => return outcomes,
                Err(failure) if who.len() == 1 => vec![Err(failure)],
                Err(_) => return outcomes,
            };
            let mut next_who = Vec::with_capacity(who.len());
            let mut next_msgs = Vec::with_capacity(who.len());
            for (k, result) in who.into_iter().zip(verdicts) {
                let (origin, source) = sources[k];
                match self.step(i, origin, source, result) {
                    Step::Next(m) => {
                        next_who.push(k);
                        next_msgs.push(Cow::Owned(m));
                    }
                    Step::Done(outcome) => outcomes[k] = Some(outcome),
                }
            }
            who = next_who;
            msgs = next_msgs;
        }
        for (k, msg) in who.into_iter().zip(msgs) {
            let (origin, source) = sources[k];
            outcomes[k] = Some(self.finish(origin, source, msg.into_owned()));
        }
        outcomes
    }

    /// Apply stage `i`'s result: the message goes on, or the chain ends.
    fn step(
        &self,
        i: usize,
        origin: &Origin,
        source: &Message,
        result: Result<Verdict, GuestFailure>,
    ) -> Step {
        let label = &self.labels[i];
        let verdict = match result {
            Ok(v) => v,
            Err(failure) => {
                return Step::Done(Outcome::Retry {
                    delay: None,
                    failure: Some(failure),
                    plugin: label.clone(),
                });
            }
        };
        Step::Done(match verdict {
            Verdict::Next(m) => return Step::Next(m),
            Verdict::Publish(outputs) => self.publish(origin, source, outputs, i),
            Verdict::Ack => Outcome::Ack {
                plugin: label.clone(),
            },
            Verdict::DeadLetter(reason) => Outcome::DeadLetter {
                // A dead letter always says why; a guest that gave no
                // reason is named instead.
                reason: if reason.trim().is_empty() {
                    format!("dead-lettered by {label}, which gave no reason")
                } else {
                    reason
                },
                plugin: label.clone(),
                limit: None,
            },
            Verdict::Retry(ms) => Outcome::Retry {
                delay: Some(Duration::from_millis(ms.into())),
                failure: None,
                plugin: label.clone(),
            },
        })
    }

    /// `next` after the last stage: publish to the default output.
    fn finish(&self, origin: &Origin, source: &Message, mut msg: Message) -> Outcome {
        msg.subject = self.output.render(&self.tenant, &msg.subject);
        self.publish(
            origin,
            source,
            vec![msg],
            self.labels.len().saturating_sub(1),
        )
    }

    /// Check stage `stage`'s outputs against its caps, then every output's
    /// subject and headers, then stamp the host's headers. One refused
    /// output dead-letters the whole message: publishing only some outputs
    /// would be a partial result nobody asked for.
    fn publish(
        &self,
        origin: &Origin,
        source: &Message,
        outputs: Vec<Message>,
        stage: usize,
    ) -> Outcome {
        let label = self.labels.get(stage).map_or("", String::as_str);
        if outputs.is_empty() {
            return Outcome::Ack {
                plugin: label.to_owned(),
            };
        }
        let caps = self.caps.get(stage).copied().unwrap_or_default();
        if let Some((limit, reason)) = over_caps(&outputs, &caps) {
            return Outcome::DeadLetter {
                reason,
                plugin: label.to_owned(),
                limit: Some(limit),
            };
        }
        for out in &outputs {
            if let Some((name, _)) = out.headers.iter().find(|(k, v)| !valid_header(k, v)) {
                return Outcome::DeadLetter {
                    reason: format!(
                        "output refused: header `{}` has an invalid name or value (empty name, `:`, whitespace or line breaks)",
                        name.escape_debug()
                    ),
                    plugin: label.to_owned(),
                    limit: None,
                };
            }
            if let Err(e) = subject::validate_subject(&out.subject) {
                return Outcome::DeadLetter {
                    reason: format!("output refused: {e}"),
                    plugin: label.to_owned(),
                    limit: None,
                };
            }
            if !self
                .permits
                .iter()
                .any(|p| subject::matches(p, &out.subject))
            {
                return Outcome::DeadLetter {
                    reason: format!(
                        "output subject `{}` is outside tenant `{}`'s permitted subjects ({})",
                        out.subject,
                        self.tenant,
                        self.permits.join(", ")
                    ),
                    plugin: label.to_owned(),
                    limit: None,
                };
            }
        }
        let outputs = outputs
            .into_iter()
            .enumerate()
            .map(|(index, out)| self.stamp(origin, source, out, index, label))
            .collect();
        Outcome::Publish {
            outputs,
            plugin: label.to_owned(),
        }
    }

    fn stamp(
        &self,
        origin: &Origin,
        source: &Message,
        mut out: Message,
        index: usize,
        label: &str,
    ) -> Message {
        out.headers.retain(|(k, _)| !host_owned(k));
        // Pass through the source's headers (correlation id, traceparent…)
        // that the guest neither kept nor replaced.
        for (k, v) in &source.headers {
            if !host_owned(k) && out.header(k).is_none() {
                out.headers.push((k.clone(), v.clone()));
            }
        }
        out.headers
            .push((TENANT_HEADER.to_owned(), self.tenant.clone()));
        out.headers
            .push((PLUGIN_HEADER.to_owned(), label.to_owned()));
        out.headers
            .push((MSG_ID_HEADER.to_owned(), msg_id(origin, index)));
        out
    }
}

/// Why `outputs` break `caps`, naming the cap's config key; `None` if they
/// keep within them. Checked before anything is published: a verdict over
/// a cap cannot be published whole, so it is a dead letter, never a part.
fn over_caps(outputs: &[Message], caps: &OutputCaps) -> Option<(&'static str, String)> {
    if outputs.len() > caps.max_outputs {
        return Some((
            "max_outputs",
            format!(
                "limit max_outputs: {} outputs, over the plugin's max_outputs of {}",
                outputs.len(),
                caps.max_outputs
            ),
        ));
    }
    if let Some((i, out)) = outputs
        .iter()
        .enumerate()
        .find(|(_, o)| o.subject.len() > caps.max_subject)
    {
        return Some((
            "max_subject_bytes",
            format!(
                "limit max_subject_bytes: output {i}'s subject is {} bytes, over the plugin's max_subject_bytes of {}",
                out.subject.len(),
                caps.max_subject
            ),
        ));
    }
    let bytes = outputs.iter().fold(0usize, |sum, o| {
        let headers = o.headers.iter().map(|(k, v)| k.len() + v.len() + 4);
        sum.saturating_add(o.subject.len() + o.payload.len() + headers.sum::<usize>())
    });
    if bytes > caps.max_bytes {
        return Some((
            "max_output_bytes",
            format!(
                "limit max_output_bytes: outputs of {bytes} bytes, over the plugin's max_output_bytes of {}",
                caps.max_bytes
            ),
        ));
    }
    None
}

/// `TENANT:STREAM:SEQ:INDEX`: the same for every delivery of a source, so
/// the server drops a republished output. The tenant is part of it because
/// two tenants may read the same sequence of a shared stream into a shared
/// output stream: without it the second tenant's real outputs would be
/// dropped as duplicates of the first's while its source is acked. Without
/// `format!`, which costs more than the rest of the stamping together.
fn msg_id(origin: &Origin, index: usize) -> String {
    let mut seq = itoa::Buffer::new();
    let seq = seq.format(origin.stream_seq);
    let mut idx = itoa::Buffer::new();
    let idx = idx.format(index);
    let mut id = String::with_capacity(
        origin.tenant.len() + origin.stream.len() + seq.len() + idx.len() + 3,
    );
    id.push_str(&origin.tenant);
    id.push(':');
    id.push_str(&origin.stream);
    id.push(':');
    id.push_str(seq);
    id.push(':');
    id.push_str(idx);
    id
}

#[cfg(test)]
mod tests;
