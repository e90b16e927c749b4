//! The running host: load plugins, build each tenant's pipeline, connect,
//! bind (or provision) each tenant's consumer, run the pull loops, watch the
//! plugin and tenant folders, and on shutdown stop pulling and let in-flight
//! messages finish within a grace period. `sluice run` and `sluice dev` are
//! thin shells around this.
//!
//! Each role has its file: [`lifecycle`] starts and stops one tenant,
//! [`bind`] binds its consumer, [`connections`] supervises the connections,
//! [`swap`] validates and swaps plugin versions, [`folder`] follows the
//! tenants folder.

mod bind;
mod connections;
mod folder;
mod lifecycle;
mod swap;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::registry::Registry;
use crate::stats::StatsSnapshot;
use crate::tenant::Tenant;
use crate::topology::Connections;
use crate::wasm::Runtime;
use crate::watch::FolderWatch;
use crate::worker::pool::WorkerPool;
use lifecycle::{Running, drain};

/// Where a tenant came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantSource {
    /// The main config file; fixed for the life of the process.
    Config,
    /// The tenants folder; follows the folder.
    Folder,
}

/// Plugin reload counts.
#[derive(Debug, Default)]
pub struct ReloadStats {
    /// New versions swapped in.
    pub ok: AtomicU64,
    /// Candidate versions rejected.
    pub failed: AtomicU64,
    /// The last rejection, as logged (names the file and the reason).
    pub last_error: Mutex<Option<String>>,
}

impl ReloadStats {
    /// (swapped in, rejected) so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

struct Inner {
    config: Arc<Config>,
    registry: Registry,
    pool: Arc<WorkerPool>,
    /// Every connection made: the one registry of them.
    connections: Connections,
    tenants: Mutex<BTreeMap<String, Running>>,
    reloads: ReloadStats,
    /// Serialises swaps and tenant changes so two rescans never interleave.
    changes: tokio::sync::Mutex<()>,
}

impl crate::ops::Status for Inner {
    fn tenants(&self) -> Vec<Arc<Tenant>> {
        self.lock_tenants()
            .values()
            .map(|r| r.tenant.clone())
            .collect()
    }

    fn plugins(&self) -> Vec<(String, String)> {
        self.registry
            .all()
            .iter()
            .map(|p| (p.name().to_owned(), p.digest().to_owned()))
            .collect()
    }

    fn reloads(&self) -> (u64, u64) {
        self.reloads.counts()
    }

    fn connections(&self) -> Vec<(String, bool)> {
        self.connections
            .all()
            .into_iter()
            .map(|c| (c.label.clone(), c.is_up()))
            .collect()
    }
}

/// The host, running.
pub struct Service {
    inner: Arc<Inner>,
    watchers: Vec<JoinHandle<()>>,
    shutdown: CancellationToken,
}

impl Service {
    /// Start every tenant of `config` (and of its tenants folder), and watch
    /// the plugin and tenant folders.
    pub async fn start(config: Config) -> anyhow::Result<Service> {
        let runtime = Arc::new(Runtime::new(crate::config::cache_dir(Some(&config)))?);
        let registry = Registry::load(runtime, &config)?;
        let pool =
            Arc::new(WorkerPool::new(config.wasm.workers).context("starting the worker threads")?);
        let inner = Arc::new(Inner {
            config: Arc::new(config),
            registry,
            pool,
            connections: Connections::default(),
            tenants: Mutex::new(BTreeMap::new()),
            reloads: ReloadStats::default(),
            changes: tokio::sync::Mutex::new(()),
        });
        let shutdown = CancellationToken::new();
        // Plugins in the folder that no configured tenant uses yet, so that
        // tenants added later can.
        inner.clone().rescan_plugins().await;
        let ids: Vec<String> = inner.config.tenants.keys().cloned().collect();
        for id in ids {
            let tenant = inner.config.tenants[&id].clone();
            inner
                .start_tenant(&id, tenant, TenantSource::Config, None)
                .await?;
        }
        let mut watchers = vec![tokio::spawn(
            inner.clone().supervise_connections(shutdown.clone()),
        )];
        if let Some(dir) = inner.plugins_dir() {
            let rescan: Rescan = |i| Box::pin(i.rescan_plugins());
            watchers.push(tokio::spawn(
                inner.watch(&dir, "plugin", false, &shutdown, rescan)?,
            ));
        }
        if let Some(dir) = inner.tenants_dir() {
            let rescan: Rescan = |i| Box::pin(i.rescan_tenants());
            let follow = inner.watch(&dir, "tenants", true, &shutdown, rescan)?;
            // Watching first, so nothing that lands during this scan is
            // missed; following after it, so two scans never overlap. The
            // scan is awaited: `start` returns with the folder's tenants
            // running.
            inner.clone().rescan_tenants().await;
            watchers.push(tokio::spawn(follow));
        }
        Ok(Service {
            inner,
            watchers,
            shutdown,
        })
    }

    /// Each tenant's counters.
    pub fn stats(&self) -> BTreeMap<String, StatsSnapshot> {
        self.inner
            .lock_tenants()
            .iter()
            .map(|(id, r)| (id.clone(), r.tenant.stats.snapshot()))
            .collect()
    }

    /// The running tenants.
    pub fn tenants(&self) -> BTreeMap<String, Arc<Tenant>> {
        self.inner
            .lock_tenants()
            .iter()
            .map(|(id, r)| (id.clone(), r.tenant.clone()))
            .collect()
    }

    /// Serve `/metrics`, `/healthz` and `/readyz` on `addr`; returns the
    /// bound address.
    pub async fn serve_ops(
        &mut self,
        addr: std::net::SocketAddr,
    ) -> anyhow::Result<std::net::SocketAddr> {
        let status: Arc<dyn crate::ops::Status> = self.inner.clone();
        let limits = crate::ops::OpsLimits {
            max_connections: self.inner.config.host.ops_max_connections,
            read_timeout: self.inner.config.host.ops_read_timeout,
        };
        let (local, handle) = crate::ops::serve(addr, status, limits)
            .await
            .with_context(|| format!("listening on {addr} for metrics"))?;
        self.watchers.push(handle);
        tracing::info!(addr = %local, "serving /metrics, /healthz and /readyz");
        Ok(local)
    }

    /// Plugin reloads so far (swapped in, rejected).
    pub fn reloads(&self) -> (u64, u64) {
        self.inner.reloads.counts()
    }

    /// The last rejected plugin version's error (file and reason).
    pub fn last_reload_error(&self) -> Option<String> {
        self.inner
            .reloads
            .last_error
            .lock()
            .ok()
            .and_then(|l| l.clone())
    }

    /// The current `name@digest` of plugin `name`.
    pub fn plugin_label(&self, name: &str) -> Option<String> {
        self.inner.registry.get(name).map(|p| p.label().to_owned())
    }

    /// Stop pulling, give in-flight messages the grace period to settle,
    /// flush acks to the server, and return. What has not settled by then is
    /// redelivered by JetStream after its ack_wait.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for w in self.watchers {
            w.abort();
        }
        let _guard = self.inner.changes.lock().await;
        let running: Vec<(String, Running)> = std::mem::take(&mut *self.inner.lock_tenants())
            .into_iter()
            .collect();
        for (_, r) in &running {
            r.cancel.cancel();
        }
        let grace = self.inner.config.host.shutdown_grace;
        let in_flight: usize = running.iter().map(|(_, r)| r.tenant.in_flight()).sum();
        if in_flight > 0 {
            tracing::info!(
                in_flight,
                ?grace,
                "waiting for in-flight messages to settle"
            );
        }
        let drains = running.into_iter().map(|(_, r)| drain(r, grace));
        futures::future::join_all(drains).await;
        for c in self.inner.connections.all() {
            // Acks are fire-and-forget: make sure they leave the process.
            let _ = tokio::time::timeout(Duration::from_secs(2), c.client.flush()).await;
        }
    }
}

/// The entries of `dir` that `keep` accepts, by the name `name` gives them,
/// sorted; hidden ones (and names that are not UTF-8) skipped. An
/// unreadable folder has none: it is looked at again on the next change.
fn entries(
    dir: &Path,
    keep: impl Fn(&Path) -> bool,
    name: impl Fn(&Path) -> Option<&std::ffi::OsStr>,
) -> Vec<(String, PathBuf)> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(String, PathBuf)> = read
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| keep(p))
        .filter_map(|p| {
            let n = name(&p)?.to_str()?.to_owned();
            (!n.starts_with('.')).then_some((n, p))
        })
        .collect();
    found.sort();
    found
}

type Rescan = fn(Arc<Inner>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl Inner {
    fn lock_tenants(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Running>> {
        self.tenants.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn plugins_dir(&self) -> Option<PathBuf> {
        self.in_base(self.config.plugins.dir.as_deref())
    }

    fn tenants_dir(&self) -> Option<PathBuf> {
        self.in_base(self.config.host.tenants_dir.as_deref())
    }

    /// A folder the config names, relative to the config's own folder.
    fn in_base(&self, dir: Option<&Path>) -> Option<PathBuf> {
        dir.map(|d| self.config.base_dir.join(d))
    }

    /// Start watching the `what` folder `dir`; the future returned runs
    /// `rescan` after each settled change, until `stop`.
    fn watch(
        self: &Arc<Self>,
        dir: &Path,
        what: &str,
        recursive: bool,
        stop: &CancellationToken,
        rescan: Rescan,
    ) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
        let mut watch = FolderWatch::new(dir, recursive)
            .with_context(|| format!("watching the {what} folder {}", dir.display()))?;
        let (inner, stop) = (self.clone(), stop.clone());
        Ok(async move {
            loop {
                tokio::select! {
                    tick = watch.changed() => if tick.is_none() { return },
                    () = stop.cancelled() => return,
                }
                rescan(inner.clone()).await;
            }
        })
    }
}
