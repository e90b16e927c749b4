//! The running host: load plugins, build each tenant's pipeline, connect,
//! bind (or provision) each tenant's consumer, run the pull loops, and on
//! shutdown stop pulling and let in-flight messages finish within a grace
//! period. `sluice run` and `sluice dev` are thin shells around this.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::plugin::Registry;
use crate::source::{self, Connections, Report};
use crate::telemetry::StatsSnapshot;
use crate::tenant::Tenant;
use crate::wasm::Runtime;
use crate::wasm::pool::WorkerPool;

/// A missing stream or consumer is re-checked this often: the operator may
/// be provisioning it right now.
const MISSING_RECHECK: Duration = Duration::from_secs(5);

/// The host, running.
pub struct Service {
    tenants: BTreeMap<String, Arc<Tenant>>,
    loops: Vec<JoinHandle<()>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    connections: Connections,
    grace: Duration,
    // Kept alive for the tenants' sake; dropped last.
    _pool: Arc<WorkerPool>,
    _runtime: Arc<Runtime>,
}

impl Service {
    /// Start every tenant of `config`.
    pub async fn start(config: Config) -> anyhow::Result<Service> {
        let runtime = Arc::new(Runtime::new(crate::cli::cache_dir(Some(&config)))?);
        let registry = Registry::load(&runtime, &config)?;
        let pool = Arc::new(
            WorkerPool::new(config.wasm.workers, config.wasm.queue)
                .context("starting the worker threads")?,
        );
        let config = Arc::new(config);
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let mut connections = Connections::default();
        let mut tenants = BTreeMap::new();
        let mut loops = Vec::new();
        for (id, tenant_config) in &config.tenants {
            let pipeline = registry.pipeline(&config, id)?;
            let nats = source::tenant_nats(&config, tenant_config);
            let client = connections
                .get(nats, &config.base_dir)
                .await
                .with_context(|| format!("tenant `{id}`: connecting to NATS"))?;
            let js = source::jetstream(client);
            let tenant = Tenant::new(
                id,
                pipeline,
                config.limits(Some(tenant_config)),
                tenant_config.dead_letter.clone(),
                pool.clone(),
                js.clone(),
            );
            tenants.insert(id.clone(), tenant.clone());
            loops.push(tokio::spawn(run_tenant(
                tenant,
                js,
                config.clone(),
                shutdown.clone(),
                tasks.clone(),
            )));
        }
        Ok(Service {
            tenants,
            loops,
            tasks,
            shutdown,
            connections,
            grace: config.host.shutdown_grace,
            _pool: pool,
            _runtime: runtime,
        })
    }

    /// Each tenant's counters.
    pub fn stats(&self) -> BTreeMap<String, StatsSnapshot> {
        self.tenants
            .iter()
            .map(|(id, t)| (id.clone(), t.stats.snapshot()))
            .collect()
    }

    /// The running tenants.
    pub fn tenants(&self) -> &BTreeMap<String, Arc<Tenant>> {
        &self.tenants
    }

    /// Stop pulling, give in-flight messages the grace period to settle,
    /// flush acks to the server, and return. What has not settled by then is
    /// redelivered by JetStream after its ack_wait.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for l in self.loops {
            let _ = l.await;
        }
        self.tasks.close();
        let in_flight: usize = self.tenants.values().map(|t| t.in_flight()).sum();
        if in_flight > 0 {
            tracing::info!(in_flight, grace = ?self.grace, "waiting for in-flight messages to settle");
        }
        if tokio::time::timeout(self.grace, self.tasks.wait())
            .await
            .is_err()
        {
            let left: usize = self.tenants.values().map(|t| t.in_flight()).sum();
            tracing::warn!(
                left,
                "grace period over; unsettled messages are left for redelivery"
            );
        }
        for client in self.connections.clients() {
            // Acks are fire-and-forget: make sure they leave the process.
            let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
        }
    }
}

/// Bind (or provision) the tenant's consumer, then pull until shutdown. A
/// missing stream or consumer is an operator's job: say so, and check again
/// periodically; a server that is down is waited for.
async fn run_tenant(
    tenant: Arc<Tenant>,
    js: async_nats::jetstream::Context,
    config: Arc<Config>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let id = tenant.id.to_string();
    let mut pause = Duration::from_millis(200);
    let consumer = loop {
        let mut report = Report::default();
        let attempt =
            source::ensure_tenant(&js, &config, &id, config.host.provision, &mut report).await;
        for created in &report.created {
            tracing::info!(tenant = id, "created {created}");
        }
        for warning in &report.warnings {
            tracing::warn!(tenant = id, "{warning}");
        }
        let wait = match attempt {
            Ok(consumer) => break consumer,
            Err(e) if e.is_missing() => {
                tracing::error!(tenant = id, error = %e, "tenant cannot start; checking again in {MISSING_RECHECK:?}");
                MISSING_RECHECK
            }
            Err(e) => {
                tracing::warn!(tenant = id, error = %format!("{:#}", anyhow::Error::from(e)), "cannot bind the consumer yet; retrying");
                pause = (pause * 2).min(Duration::from_secs(5));
                pause
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
    };
    tracing::info!(tenant = id, "consumer bound; pulling");
    if let Err(e) = tenant.pull_loop(consumer, shutdown, tasks).await {
        tracing::error!(tenant = id, "{e}");
    }
}
