//! The JetStream side of input: connections (one per distinct server set and
//! credentials, so tenants in the same account share one and tenants in
//! different accounts get their own), and the streams and consumers each
//! tenant reads from — verified by default, created when asked to, never
//! replaced, shrunk or deleted.

mod connect;

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};

pub use connect::{
    API_TIMEOUT, ConnectError, Connection, Connections, client_restarts, connect, connect_watched,
    is_dead, jetstream, redact_url, redacted_servers,
};

use crate::config::{Config, NatsConfig, TenantConfig};

/// The one priority group of an exclusive tenant's consumer.
pub const PIN_GROUP: &str = "sluice";

/// The NATS settings a tenant uses.
pub fn tenant_nats<'a>(config: &'a Config, tenant: &'a TenantConfig) -> &'a NatsConfig {
    tenant.nats.as_ref().unwrap_or(&config.nats)
}

/// Why a tenant's topology is not usable.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// A stream or consumer does not exist and we were only verifying.
    #[error("{what} does not exist; create it with `sluice provision --config {config}`")]
    Missing {
        /// `stream ACME` or `consumer ACME/sluice`.
        what: String,
        /// The config file, for the command.
        config: String,
    },
    /// An existing consumer has a setting under which the host would lose
    /// or misroute messages; the host refuses to bind it.
    #[error("{what} has {setting} {have}, the host needs {want}; {fix}")]
    Drifted {
        /// `consumer ACME/sluice`.
        what: String,
        /// The consumer setting.
        setting: &'static str,
        /// What the server has.
        have: String,
        /// What the host needs.
        want: String,
        /// How to fix it.
        fix: String,
    },
    /// The server could not be asked (down, timeout, permissions).
    #[error("cannot {action}: {reason}")]
    Api {
        /// What we tried.
        action: String,
        /// Why, as the client put it. Kept as text: async-nats errors repeat
        /// their causes in their own messages, so printing the chain would
        /// say the same thing several times.
        reason: String,
    },
}

impl TopologyError {
    /// Missing or drifted pieces need an operator; API errors may pass on
    /// their own.
    pub fn is_missing(&self) -> bool {
        matches!(
            self,
            TopologyError::Missing { .. } | TopologyError::Drifted { .. }
        )
    }
}

fn api(action: impl Into<String>) -> impl FnOnce(async_nats::Error) -> TopologyError {
    let action = action.into();
    move |source| TopologyError::Api {
        action,
        reason: source.to_string(),
    }
}

/// What `ensure` did, for the report `sluice provision` prints.
#[derive(Debug, Default)]
pub struct Report {
    /// Things created.
    pub created: Vec<String>,
    /// Things that exist and differ from the config in ways the host can
    /// live with (left as they are).
    pub warnings: Vec<String>,
    /// Consumers whose settings were updated to what the host needs
    /// (provisioning only).
    pub updated: Vec<String>,
}

/// Does the stream named `name` exist?
async fn stream_info(
    js: &jetstream::Context,
    name: &str,
) -> Result<Option<stream::Info>, TopologyError> {
    match js.get_stream(name).await {
        Ok(mut s) => Ok(Some(
            s.info()
                .await
                .map_err(|e| api(format!("read stream {name}"))(e.into()))?
                .clone(),
        )),
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            Ok(None)
        }
        Err(e) => Err(api(format!("look up stream {name}"))(e.into())),
    }
}

/// Make sure a stream exists capturing the tenant's own subjects (the
/// pair's first); create it when `create` (with the given duplicate window)
/// with the subjects of every tenant sharing it (the pair's second, called
/// only then: with a thousand tenants on one stream, computing them at
/// every bind was a million template checks), otherwise report it missing.
async fn ensure_stream(
    js: &jetstream::Context,
    name: &str,
    (subjects, whole): (
        &[String],
        impl FnOnce() -> Result<Vec<String>, TopologyError>,
    ),
    duplicate_window: Option<Duration>,
    create: Option<usize>,
    config_file: &str,
    report: &mut Report,
) -> Result<(), TopologyError> {
    match stream_info(js, name).await? {
        Some(info) => {
            if let Some(replicas) = create
                && info.config.num_replicas < replicas
            {
                report.warnings.push(format!(
                    "stream {name} has {} replica(s), fewer than host.stream_replicas = {replicas}; left as it is (`nats stream edit {name} --replicas {replicas}` raises it)",
                    info.config.num_replicas
                ));
            }
            for s in subjects {
                if !info
                    .config
                    .subjects
                    .iter()
                    .any(|have| crate::subject::matches(have, s) || have == s)
                {
                    report.warnings.push(format!(
                        "stream {name} does not capture `{s}` (its subjects: {}); left as it is",
                        info.config.subjects.join(", ")
                    ));
                }
            }
            if let Some(window) = duplicate_window
                && info.config.duplicate_window < window
            {
                report.warnings.push(format!(
                    "stream {name} has a duplicate window of {}, shorter than the configured {}; redeliveries after it may store duplicates",
                    humantime::format_duration(info.config.duplicate_window),
                    humantime::format_duration(window)
                ));
            }
            Ok(())
        }
        None if create.is_some() => {
            let subjects = whole()?;
            let mut cfg = stream::Config {
                name: name.to_owned(),
                subjects: subjects.clone(),
                storage: stream::StorageType::File,
                num_replicas: create.unwrap_or(1),
                ..Default::default()
            };
            if let Some(window) = duplicate_window {
                cfg.duplicate_window = window;
            }
            js.create_stream(cfg)
                .await
                .map_err(|e| api(format!("create stream {name}"))(e.into()))?;
            report
                .created
                .push(format!("stream {name} ({})", subjects.join(", ")));
            Ok(())
        }
        None => Err(TopologyError::Missing {
            what: format!("stream {name}"),
            config: config_file.to_owned(),
        }),
    }
}

/// Room for several hosts on the same durable consumer, each holding up to
/// max_in_flight; for an ordered tenant no more than one host's
/// max_in_flight, so that after a restart the messages the previous holder
/// left pending can always be delivered (see [`crate::ordering`]).
fn max_ack_pending(tenant: &TenantConfig, max_in_flight: usize) -> usize {
    if tenant.ordering.is_some() {
        max_in_flight
    } else {
        max_in_flight.saturating_mul(4)
    }
}

/// The consumer settings the host needs, from the tenant's config.
pub fn consumer_config(config: &Config, tenant: &TenantConfig) -> consumer::pull::Config {
    let limits = config.limits(Some(tenant));
    consumer::pull::Config {
        durable_name: Some(tenant.consumer.clone()),
        filter_subject: tenant.filter.clone(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: limits.ack_wait,
        // One more than the host's own (see `sink::Policy`).
        max_deliver: i64::from(limits.server_max_deliver()),
        max_ack_pending: i64::try_from(max_ack_pending(tenant, limits.max_in_flight))
            .unwrap_or(i64::MAX),
        // Active/standby: one pinned host at a time (see tenant::pinned).
        priority_policy: if limits.exclusive.is_some() {
            consumer::PriorityPolicy::PinnedClient
        } else {
            consumer::PriorityPolicy::None
        },
        priority_groups: match limits.exclusive {
            Some(_) => vec![PIN_GROUP.to_owned()],
            None => Vec::new(),
        },
        priority_timeout: limits.exclusive.unwrap_or_default(),
        ..Default::default()
    }
}

/// Add `subject` to a new stream's subjects unless one there covers it,
/// dropping those it covers: JetStream refuses overlapping subjects.
fn add_subject(subjects: &mut Vec<String>, subject: &str) {
    let covers = |pattern: &str, s: &str| pattern == s || crate::subject::matches(pattern, s);
    if subjects.iter().any(|have| covers(have, subject)) {
        return;
    }
    subjects.retain(|have| !covers(subject, have));
    subjects.push(subject.to_owned());
}

/// Verify (or, with `create`, provision) tenant `id`'s input stream and
/// consumer, and its output and dead-letter streams when named. Returns the
/// bound consumer.
pub async fn ensure_tenant(
    js: &jetstream::Context,
    config: &Config,
    id: &str,
    tenant: &TenantConfig,
    create: bool,
    report: &mut Report,
) -> Result<consumer::PullConsumer, TopologyError> {
    let file = config.file.display().to_string();
    // Every tenant of this config using the same stream in the same account
    // contributes its subjects, so a shared stream (input, output or dead
    // letters) is created whole, whichever tenant binds first.
    let nats = tenant_nats(config, tenant);
    let sharing = |stream: &str, of: fn(&TenantConfig) -> Option<&String>| {
        config
            .tenants
            .iter()
            .filter(|(_, t)| of(t).is_some_and(|s| s == stream) && tenant_nats(config, t) == nats)
            .collect::<Vec<_>>()
    };
    let own_filter = std::slice::from_ref(&tenant.filter);
    let inputs = || {
        let mut subjects: Vec<String> = vec![tenant.filter.clone()];
        for (_, t) in sharing(&tenant.stream, |t| Some(&t.stream)) {
            add_subject(&mut subjects, &t.filter);
        }
        Ok(subjects)
    };
    // Missing streams are created (with the configured replicas) only
    // when provisioning.
    let make = create.then_some(config.host.stream_replicas);
    ensure_stream(
        js,
        &tenant.stream,
        (own_filter, inputs),
        None,
        make,
        &file,
        report,
    )
    .await?;
    let window = Some(config.defaults.duplicate_window);
    if let Err(e) = config.check_duplicate_window_of(id, tenant) {
        report.warnings.push(e.to_string());
    }
    if let Some(out) = &tenant.output_stream {
        let permits_of = |id: &str, t: &TenantConfig| {
            config.permits_of(id, t).map_err(|e| TopologyError::Api {
                action: format!("derive tenant {id}'s permitted subjects"),
                reason: e.to_string(),
            })
        };
        let own = permits_of(id, tenant)?;
        let outputs = || {
            // Its own first: a tenant from the tenants folder is not among
            // the config's.
            let mut permits = Vec::new();
            for p in &own {
                add_subject(&mut permits, p);
            }
            for (other, t) in sharing(out, |t| t.output_stream.as_ref()) {
                for p in permits_of(other, t)? {
                    add_subject(&mut permits, &p);
                }
            }
            Ok(permits)
        };
        ensure_stream(js, out, (&own, outputs), window, make, &file, report).await?;
    }
    if let Some(dlq) = &tenant.dead_letter_stream {
        let own = std::slice::from_ref(&tenant.dead_letter);
        let letters = || {
            let mut dead = vec![tenant.dead_letter.clone()];
            for (_, t) in sharing(dlq, |t| t.dead_letter_stream.as_ref()) {
                add_subject(&mut dead, &t.dead_letter);
            }
            Ok(dead)
        };
        ensure_stream(js, dlq, (own, letters), window, make, &file, report).await?;
    }
    let wanted = consumer_config(config, tenant);
    let stream = js
        .get_stream(&tenant.stream)
        .await
        .map_err(|e| api(format!("open stream {}", tenant.stream))(e.into()))?;
    let name = format!("consumer {}/{}", tenant.stream, tenant.consumer);
    match stream.consumer_info(&tenant.consumer).await {
        Ok(info) => {
            let have = &info.config;
            if have.ack_wait != wanted.ack_wait {
                report.warnings.push(format!(
                    "{name} has ack_wait {:?}, the config says {:?}; the host sends in-progress acks by the server's",
                    have.ack_wait, wanted.ack_wait
                ));
            }
            let drift = drift(have, &wanted, tenant.ordering.is_some());
            let Some(&(setting, ref have_value, ref want_value)) = drift.first() else {
                return stream
                    .get_consumer(&tenant.consumer)
                    .await
                    .map_err(api(format!("open {name}")));
            };
            let drifted = |fix: String| TopologyError::Drifted {
                what: name.clone(),
                setting,
                have: have_value.clone(),
                want: want_value.clone(),
                fix,
            };
            if have.ack_policy != consumer::AckPolicy::Explicit {
                // The server cannot change a consumer's ack policy.
                return Err(drifted(format!(
                    "delete it (`nats consumer rm {} {}`) and run `sluice provision --config {file}`; it resumes from the stream's start unless you set a start sequence",
                    tenant.stream, tenant.consumer
                )));
            }
            if !create {
                return Err(drifted(format!(
                    "update it with `sluice provision --config {file}`"
                )));
            }
            let mut fixed = have.clone();
            fixed.filter_subject = wanted.filter_subject.clone();
            fixed.filter_subjects = Vec::new();
            fixed.max_deliver = wanted.max_deliver;
            fixed.headers_only = false;
            if tenant.ordering.is_some() {
                fixed.max_ack_pending = wanted.max_ack_pending;
            }
            fixed.priority_policy = wanted.priority_policy;
            fixed.priority_groups = wanted.priority_groups.clone();
            fixed.priority_timeout = wanted.priority_timeout;
            stream
                .update_consumer(fixed)
                .await
                .map_err(|e| api(format!("update {name}"))(e.into()))?;
            let what: Vec<String> = drift
                .iter()
                .map(|(k, h, w)| format!("{k} {h} → {w}"))
                .collect();
            report.updated.push(format!("{name}: {}", what.join(", ")));
            stream
                .get_consumer(&tenant.consumer)
                .await
                .map_err(api(format!("open {name}")))
        }
        Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => {
            if !create {
                return Err(TopologyError::Missing {
                    what: name,
                    config: file,
                });
            }
            let c = stream.create_consumer(wanted).await.map_err(|e| {
                api(format!(
                    "create consumer {}/{}",
                    tenant.stream, tenant.consumer
                ))(e.into())
            })?;
            report.created.push(format!(
                "consumer {}/{} (filter {})",
                tenant.stream, tenant.consumer, tenant.filter
            ));
            Ok(c)
        }
        Err(e) => Err(api(format!("look up {name}"))(e.into())),
    }
}

/// The settings of an existing consumer under which the host would lose or
/// misroute messages, as (setting, what it has, what the host needs):
/// acks that are not explicit (acks ignored, or messages gone on
/// delivery), no delivery to spare for the dead letter (the server gives
/// up first), headers only (guests see empty payloads), another filter
/// (another tenant's messages).
fn drift(
    have: &consumer::Config,
    wanted: &consumer::pull::Config,
    ordered: bool,
) -> Vec<(&'static str, String, String)> {
    let mut drift = Vec::new();
    if have.ack_policy != consumer::AckPolicy::Explicit {
        drift.push((
            "ack_policy",
            format!("{:?}", have.ack_policy).to_lowercase(),
            "explicit".to_owned(),
        ));
    }
    if have.max_deliver > 0 && have.max_deliver < wanted.max_deliver {
        drift.push((
            "max_deliver",
            have.max_deliver.to_string(),
            format!(
                "at least {} (the config's max_deliver and one spare delivery for the dead letter)",
                wanted.max_deliver
            ),
        ));
    }
    if have.headers_only {
        drift.push(("headers_only", "true".to_owned(), "false".to_owned()));
    }
    let filters_match = have.filter_subject == wanted.filter_subject
        || (have.filter_subject.is_empty()
            && have.filter_subjects.len() == 1
            && have.filter_subjects[0] == wanted.filter_subject);
    if !filters_match {
        let have_filter = if have.filter_subjects.is_empty() {
            have.filter_subject.clone()
        } else {
            have.filter_subjects.join(", ")
        };
        drift.push((
            "filter",
            format!("`{have_filter}`"),
            format!("`{}`", wanted.filter_subject),
        ));
    }
    // Exclusive or not, as the config says: a pull for the other kind
    // fails (async-nats refuses one-shot pulls of a pinned consumer; a
    // standby's pull without the group is refused by the server).
    let pinned = |c: &consumer::PriorityPolicy| *c == consumer::PriorityPolicy::PinnedClient;
    if pinned(&have.priority_policy) != pinned(&wanted.priority_policy)
        || have.priority_groups != wanted.priority_groups
        || (pinned(&wanted.priority_policy) && have.priority_timeout != wanted.priority_timeout)
    {
        let show = |policy: &consumer::PriorityPolicy, groups: &[String], timeout: Duration| {
            if pinned(policy) {
                format!(
                    "pinned_client, group {}, timeout {}",
                    groups.join(","),
                    humantime::format_duration(timeout)
                )
            } else {
                "no priority group".to_owned()
            }
        };
        drift.push((
            "priority_policy",
            show(
                &have.priority_policy,
                &have.priority_groups,
                have.priority_timeout,
            ),
            show(
                &wanted.priority_policy,
                &wanted.priority_groups,
                wanted.priority_timeout,
            ),
        ));
    }
    // An ordered tenant needs its cap (see `max_ack_pending`); another
    // host's larger one is fine for the rest.
    if ordered && (have.max_ack_pending <= 0 || have.max_ack_pending > wanted.max_ack_pending) {
        drift.push((
            "max_ack_pending",
            have.max_ack_pending.to_string(),
            format!(
                "at most {} (an ordered tenant's max_in_flight)",
                wanted.max_ack_pending
            ),
        ));
    }
    drift
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_streams_subjects_never_overlap() {
        let mut subjects = vec!["a.t1.>".to_owned()];
        for s in ["a.t10.>", "a.t1.>", "a.t1.x", "b.>"] {
            add_subject(&mut subjects, s);
        }
        assert_eq!(subjects, ["a.t1.>", "a.t10.>", "b.>"]);
        add_subject(&mut subjects, "a.>");
        assert_eq!(
            subjects,
            ["b.>", "a.>"],
            "a wider one replaces those it covers"
        );
    }
}
