//! Starting and stopping one tenant: build its pipeline, get its
//! connection, run its loop (bind, pull, sample lag, sweep for unreadable
//! messages) and drain it on the way out.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::bind::bind;
use super::{Inner, TenantSource};
use crate::config::{Config, TenantConfig};
use crate::tenant::Tenant;
use crate::topology;

pub(super) struct Running {
    pub(super) tenant: Arc<Tenant>,
    pub(super) config: TenantConfig,
    pub(super) source: TenantSource,
    /// What its relative paths are relative to, if not the main config's
    /// folder.
    pub(super) base_dir: Option<PathBuf>,
    pub(super) cancel: CancellationToken,
    pub(super) handle: JoinHandle<()>,
    pub(super) tasks: TaskTracker,
}

/// Stop one tenant's loop and wait (up to `grace`) for its in-flight
/// messages.
pub(super) async fn drain(r: Running, grace: Duration) {
    r.cancel.cancel();
    let _ = r.handle.await;
    r.tasks.close();
    if tokio::time::timeout(grace, r.tasks.wait()).await.is_err() {
        tracing::warn!(
            tenant = &*r.tenant.id,
            left = r.tenant.in_flight(),
            "grace period over; unsettled messages are left for redelivery"
        );
    }
}

impl Inner {
    /// Start a tenant's loop (replacing nothing: the caller stopped any
    /// previous one). `base_dir` anchors the tenant's relative paths.
    pub(super) async fn start_tenant(
        self: &Arc<Self>,
        id: &str,
        tenant_config: TenantConfig,
        source: TenantSource,
        base_dir: Option<&Path>,
    ) -> anyhow::Result<()> {
        let pipeline = {
            let (inner, id, tc) = (self.clone(), id.to_owned(), tenant_config.clone());
            tokio::task::spawn_blocking(move || {
                inner.registry.pipeline_for(&inner.config, &id, &tc, None)
            })
            .await??
        };
        let nats = topology::tenant_nats(&self.config, &tenant_config).clone();
        let base = base_dir.unwrap_or(&self.config.base_dir).to_owned();
        let (client, connects) = self
            .connections
            .get(&nats, &base)
            .await
            .with_context(|| format!("tenant `{id}`: connecting to NATS"))?;
        let js = topology::jetstream(client);
        let tenant = Tenant::new(
            id,
            pipeline,
            self.config.limits(Some(&tenant_config)),
            tenant_config.dead_letter.clone(),
            self.pool.clone(),
            js.clone(),
        );
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let handle = tokio::spawn(run_tenant(
            tenant.clone(),
            js,
            self.config.clone(),
            tenant_config.clone(),
            connects,
            cancel.clone(),
            tasks.clone(),
        ));
        let previous = self.lock_tenants().insert(
            id.to_owned(),
            Running {
                tenant,
                base_dir: base_dir.map(Path::to_owned),
                config: tenant_config,
                source,
                cancel,
                handle,
                tasks,
            },
        );
        if let Some(previous) = previous {
            // Not expected (callers stop first); never leave a loop orphaned.
            drain(previous, self.config.host.shutdown_grace).await;
        }
        tracing::info!(tenant = id, ?source, "tenant started");
        Ok(())
    }

    pub(super) async fn stop_tenant(&self, id: &str) {
        let running = self.lock_tenants().remove(id);
        if let Some(r) = running {
            let nats = topology::tenant_nats(&self.config, &r.config).clone();
            drain(r, self.config.host.shutdown_grace).await;
            tracing::info!(tenant = id, "tenant stopped");
            self.release_connection(&nats).await;
        }
    }
}

/// Bind (or provision) the tenant's consumer, then pull until cancelled. A
/// missing stream or consumer is an operator's job: say so, and check again
/// periodically; a server that is down is waited for.
async fn run_tenant(
    tenant: Arc<Tenant>,
    js: async_nats::jetstream::Context,
    config: Arc<Config>,
    tenant_config: TenantConfig,
    connects: tokio::sync::watch::Receiver<u64>,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    let id = tenant.id.to_string();
    // A deleted consumer or stream is bound again (re-provisioned when
    // host.provision is on), with the same backoff as a first bind: the
    // tenant never stops for good while the host runs.
    while !cancel.is_cancelled() {
        let Some(consumer) = bind(&id, &js, &config, &tenant_config, &cancel).await else {
            return;
        };
        tracing::info!(tenant = id, "consumer bound; pulling");
        tenant.stats.bound.store(true, Ordering::Relaxed);
        let sampler = tokio::spawn(sample_lag(tenant.clone(), consumer.clone(), cancel.clone()));
        let sweeper = tokio::spawn(tenant.clone().sweep_unreadable(
            js.clone(),
            consumer.clone(),
            connects.clone(),
            cancel.clone(),
        ));
        let pulled = tenant
            .clone()
            .pull_loop(consumer, connects.clone(), cancel.clone(), tasks.clone())
            .await;
        tenant.stats.bound.store(false, Ordering::Relaxed);
        sampler.abort();
        sweeper.abort();
        if let Err(e) = pulled {
            tracing::error!(tenant = id, "{e}; binding it again");
        }
    }
}

/// How often consumer lag is sampled with a consumer info request while
/// it is not kept current by deliveries (each message says what the
/// consumer has left). A JetStream API request is cheap, but a thousand
/// tenants sampling every 5 s were 200 requests a second.
const LAG_SAMPLE: Duration = Duration::from_secs(30);

fn millis_u64(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

async fn sample_lag(
    tenant: Arc<Tenant>,
    mut consumer: async_nats::jetstream::consumer::PullConsumer,
    cancel: CancellationToken,
) {
    // Tenants bound together sample apart: each at its own offset in the
    // period, taken from its id.
    let offset = {
        use std::hash::{Hash as _, Hasher as _};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        tenant.id.hash(&mut h);
        Duration::from_millis(h.finish() % millis_u64(LAG_SAMPLE))
    };
    // Binding fetched the consumer's info already.
    let bound = consumer.cached_info().num_pending;
    tenant.stats.lag.store(bound, Ordering::Relaxed);
    let mut wait = offset;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = cancel.cancelled() => return,
        }
        if let Ok(info) = consumer.info().await {
            tenant.stats.lag.store(info.num_pending, Ordering::Relaxed);
        }
        wait = LAG_SAMPLE;
    }
}
