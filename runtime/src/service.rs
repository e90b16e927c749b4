//! The running host: load plugins, build each tenant's pipeline, connect,
//! bind (or provision) each tenant's consumer, run the pull loops, watch the
//! plugin and tenant folders, and on shutdown stop pulling and let in-flight
//! messages finish within a grace period. `sluice run` and `sluice dev` are
//! thin shells around this.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, TenantConfig};
use crate::plugin::{self, Registry, SwapError};
use crate::source::{self, Connections, Report};
use crate::telemetry::StatsSnapshot;
use crate::tenant::Tenant;
use crate::wasm::Runtime;
use crate::wasm::pool::WorkerPool;
use crate::watch::FolderWatch;

/// A missing stream or consumer is re-checked this often: the operator may
/// be provisioning it right now.
const MISSING_RECHECK: Duration = Duration::from_secs(5);

/// Where a tenant came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantSource {
    /// The main config file; fixed for the life of the process.
    Config,
    /// The tenants folder; follows the folder.
    Folder,
}

/// How often connections are checked for a client that stopped for good.
const CONNECTION_CHECK: Duration = Duration::from_secs(1);

/// Connections restarted because their client stopped for good, since
/// start (`sluice_nats_client_restarts_total`).
static CLIENT_RESTARTS: AtomicU64 = AtomicU64::new(0);

/// [`CLIENT_RESTARTS`].
pub fn client_restarts() -> u64 {
    CLIENT_RESTARTS.load(Ordering::Relaxed)
}

struct Running {
    tenant: Arc<Tenant>,
    config: TenantConfig,
    source: TenantSource,
    /// What its relative paths are relative to, if not the main config's
    /// folder.
    base_dir: Option<PathBuf>,
    cancel: CancellationToken,
    handle: JoinHandle<()>,
    tasks: TaskTracker,
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

struct Inner {
    config: Arc<Config>,
    registry: Registry,
    pool: Arc<WorkerPool>,
    connections: tokio::sync::Mutex<Connections>,
    tenants: Mutex<BTreeMap<String, Running>>,
    reloads: ReloadStats,
    /// Serialises swaps and tenant changes so two rescans never interleave.
    changes: tokio::sync::Mutex<()>,
    /// Every connection made, for health checks and the supervisor.
    clients: Mutex<Vec<Connected>>,
}

/// One connection made, as the health checks and the supervisor see it.
#[derive(Clone)]
struct Connected {
    nats: crate::config::NatsConfig,
    /// Its servers (passwords redacted) and whose it is.
    label: String,
    client: async_nats::Client,
    /// What its credentials paths are relative to.
    base: PathBuf,
    /// The digest of its credentials files when it connected: a rotated
    /// `.creds` or nkey file restarts its tenants on a new connection.
    credentials: Option<String>,
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
        (
            self.reloads.ok.load(Ordering::Relaxed),
            self.reloads.failed.load(Ordering::Relaxed),
        )
    }

    fn connections(&self) -> Vec<(String, bool)> {
        let clients = self.clients.lock().map(|c| c.clone()).unwrap_or_default();
        clients
            .into_iter()
            .map(|c| {
                let up = c.client.connection_state() == async_nats::connection::State::Connected;
                (c.label, up)
            })
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
            connections: tokio::sync::Mutex::new(Connections::default()),
            tenants: Mutex::new(BTreeMap::new()),
            reloads: ReloadStats::default(),
            changes: tokio::sync::Mutex::new(()),
            clients: Mutex::new(Vec::new()),
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
        let r = &self.inner.reloads;
        (
            r.ok.load(Ordering::Relaxed),
            r.failed.load(Ordering::Relaxed),
        )
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
        for client in self.inner.connections.lock().await.clients() {
            // Acks are fire-and-forget: make sure they leave the process.
            let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
        }
    }
}

/// Stop one tenant's loop and wait (up to `grace`) for its in-flight
/// messages.
async fn drain(r: Running, grace: Duration) {
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

type Rescan = fn(Arc<Inner>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl Inner {
    fn lock_tenants(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Running>> {
        self.tenants.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn plugins_dir(&self) -> Option<PathBuf> {
        self.config
            .plugins
            .dir
            .as_ref()
            .map(|d| self.config.base_dir.join(d))
    }

    fn tenants_dir(&self) -> Option<PathBuf> {
        self.config
            .host
            .tenants_dir
            .as_ref()
            .map(|d| self.config.base_dir.join(d))
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

    /// Start a tenant's loop (replacing nothing: the caller stopped any
    /// previous one). `base_dir` anchors the tenant's relative paths.
    async fn start_tenant(
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
        let nats = source::tenant_nats(&self.config, &tenant_config).clone();
        let base = base_dir.unwrap_or(&self.config.base_dir).to_owned();
        let (client, connects) = self
            .connections
            .lock()
            .await
            .get(&nats, &base)
            .await
            .with_context(|| format!("tenant `{id}`: connecting to NATS"))?;
        if let Ok(mut clients) = self.clients.lock() {
            // One entry per distinct connection (one client may serve
            // several tenants).
            if !clients.iter().any(|c| c.nats == nats) {
                let mut label = nats
                    .servers
                    .iter()
                    .map(|s| source::redact_url(s))
                    .collect::<Vec<_>>()
                    .join(",");
                if let Some(user) = &nats.user {
                    label.push_str(&format!(" (user {user})"));
                } else if nats.creds_file.is_some()
                    || nats.nkey_file.is_some()
                    || nats.token.is_some()
                {
                    label.push_str(&format!(" (credentials {})", clients.len() + 1));
                }
                clients.push(Connected {
                    credentials: credentials_digest(&nats, &base),
                    nats: nats.clone(),
                    label,
                    client: client.clone(),
                    base: base.clone(),
                });
            }
        }
        let js = source::jetstream(client);
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

    async fn stop_tenant(&self, id: &str) {
        let running = self.lock_tenants().remove(id);
        if let Some(r) = running {
            let nats = source::tenant_nats(&self.config, &r.config).clone();
            drain(r, self.config.host.shutdown_grace).await;
            tracing::info!(tenant = id, "tenant stopped");
            self.release_connection(&nats).await;
        }
    }

    /// Check every connection each [`CONNECTION_CHECK`]. One whose client
    /// has stopped for good (see [`source::is_dead`]) has its tenants
    /// restarted on a new one (their unread messages are then swept before
    /// the server redelivers them); so does one whose `.creds` or nkey
    /// file changed, once two checks in a row read the same new content.
    async fn supervise_connections(self: Arc<Self>, shutdown: CancellationToken) {
        // A changed credentials digest, by connection, waiting to be seen
        // again: a file caught mid-write must not restart tenants with it.
        let mut changed: HashMap<crate::config::NatsConfig, String> = HashMap::new();
        loop {
            tokio::select! {
                () = tokio::time::sleep(CONNECTION_CHECK) => {}
                () = shutdown.cancelled() => return,
            }
            let clients = self.clients.lock().map(|c| c.clone()).unwrap_or_default();
            for c in clients {
                if source::is_dead(&c.client).await {
                    CLIENT_RESTARTS.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        connection = c.label,
                        "the NATS client stopped for good (it panicked on a message it could not parse); restarting its tenants on a new connection"
                    );
                    self.restart_connection(&c.nats).await;
                    continue;
                }
                // A file that cannot be read now (being rewritten) is not
                // a change.
                let Some(now) = credentials_digest(&c.nats, &c.base) else {
                    continue;
                };
                if Some(&now) == c.credentials.as_ref() {
                    changed.remove(&c.nats);
                } else if changed.get(&c.nats) == Some(&now) {
                    changed.remove(&c.nats);
                    tracing::info!(
                        connection = c.label,
                        "credentials file changed; restarting the tenants on this connection with it"
                    );
                    self.restart_connection(&c.nats).await;
                } else {
                    changed.insert(c.nats.clone(), now);
                }
            }
        }
    }

    /// Stop every tenant on the connection for `nats` (which closes it) and
    /// start them again on a new one.
    async fn restart_connection(self: &Arc<Self>, nats: &crate::config::NatsConfig) {
        let _guard = self.changes.lock().await;
        let on_it: Vec<(String, TenantConfig, TenantSource, Option<PathBuf>)> = self
            .lock_tenants()
            .iter()
            .filter(|(_, r)| source::tenant_nats(&self.config, &r.config) == nats)
            .map(|(id, r)| (id.clone(), r.config.clone(), r.source, r.base_dir.clone()))
            .collect();
        for (id, ..) in &on_it {
            self.stop_tenant(id).await;
        }
        for (id, tc, source, base_dir) in on_it {
            if let Err(e) = self
                .start_tenant(&id, tc, source, base_dir.as_deref())
                .await
            {
                tracing::error!(tenant = id, error = %format!("{e:#}"), "tenant cannot restart on a new connection");
            }
        }
    }

    /// Close the connection for `nats` if no running tenant uses it any
    /// more: a removed tenant's connection would otherwise stay open (and
    /// in `/readyz`) for good, and a restarted one would keep credentials
    /// that were rotated.
    async fn release_connection(&self, nats: &crate::config::NatsConfig) {
        let used = self
            .lock_tenants()
            .values()
            .any(|r| source::tenant_nats(&self.config, &r.config) == nats);
        if used {
            return;
        }
        if let Ok(mut clients) = self.clients.lock() {
            clients.retain(|c| c.nats != *nats);
        }
        let client = self.connections.lock().await.remove(nats);
        if let Some(client) = client {
            // Drain flushes what the stopped tenant still had to send.
            let _ = tokio::time::timeout(Duration::from_secs(2), client.drain()).await;
        }
    }

    /// Compare the plugin folder with the registry: load new and changed
    /// files as candidates, swap those that pass, and unload removed ones
    /// that no pipeline uses.
    async fn rescan_plugins(self: Arc<Self>) {
        let Some(dir) = self.plugins_dir() else {
            return;
        };
        let _guard = self.changes.lock().await;
        let mut seen = HashSet::new();
        for (name, path) in wasm_files(&dir) {
            // Plugins declared with their own path elsewhere are not the
            // folder's to change.
            if self.config.plugin.contains_key(&name) {
                continue;
            }
            seen.insert(name.clone());
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let digest = format!("{:x}", Sha256::digest(&bytes));
            if self
                .registry
                .get(&name)
                .is_some_and(|p| p.digest() == digest)
            {
                continue;
            }
            match self.clone().swap(&name, bytes, &path).await {
                Ok(label) => {
                    self.reloads.ok.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(plugin = label, file = %path.display(), "plugin version live");
                }
                Err(e) => {
                    let current = self.registry.get(&name).map(|p| p.label().to_owned());
                    let error = format!("{}: {:#}", path.display(), anyhow::Error::from(e));
                    // The error first, then the count: whoever sees the
                    // count go up finds the error in place.
                    if let Ok(mut last) = self.reloads.last_error.lock() {
                        *last = Some(error.clone());
                    }
                    self.reloads.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        plugin = name,
                        file = %path.display(),
                        error,
                        serving = current.as_deref().unwrap_or("nothing"),
                        "new plugin version rejected; the previous version keeps serving"
                    );
                }
            }
        }
        for plugin in self.registry.all() {
            let name = plugin.name();
            if seen.contains(name) || self.config.plugin.contains_key(name) {
                continue;
            }
            let users: Vec<String> = self
                .lock_tenants()
                .iter()
                .filter(|(_, r)| r.config.pipeline.iter().any(|s| s.plugin == name))
                .map(|(id, _)| id.clone())
                .collect();
            if users.is_empty() {
                self.registry.remove(name);
                tracing::info!(plugin = plugin.label(), "plugin file removed; unloaded");
            } else {
                tracing::warn!(
                    plugin = plugin.label(),
                    tenants = users.join(", "),
                    "plugin file removed but pipelines use it; keeping the loaded version"
                );
            }
        }
    }

    /// Validate a candidate off the hot path, build the new pipelines of
    /// every tenant that uses it (each stage's `init` must accept its
    /// config), then swap: registry first, then each tenant's pipeline.
    async fn swap(
        self: Arc<Self>,
        name: &str,
        bytes: Vec<u8>,
        path: &Path,
    ) -> Result<String, SwapError> {
        let tenants: Vec<(String, Arc<Tenant>, TenantConfig)> = self
            .lock_tenants()
            .iter()
            .filter(|(_, r)| r.config.pipeline.iter().any(|s| s.plugin == name))
            .map(|(id, r)| (id.clone(), r.tenant.clone(), r.config.clone()))
            .collect();
        let inner = self.clone();
        let name = name.to_owned();
        let cases = path.with_file_name(format!("{name}.cases.json"));
        let built = tokio::task::spawn_blocking(move || {
            let spec = inner
                .config
                .plugin_spec(&name)
                .map_err(|m| SwapError::Stage {
                    tenant: String::new(),
                    cause: anyhow::anyhow!(m),
                })?;
            let candidate =
                inner
                    .registry
                    .candidate(&name, &bytes, plugin::limits_of(&spec), Some(&cases))?;
            let mut pipelines = Vec::with_capacity(tenants.len());
            for (id, tenant, tc) in tenants {
                let pipeline = inner
                    .registry
                    .pipeline_for(&inner.config, &id, &tc, Some(&candidate))
                    .map_err(|cause| SwapError::Stage {
                        tenant: id.clone(),
                        cause,
                    })?;
                pipelines.push((tenant, pipeline));
            }
            Ok::<_, SwapError>((candidate, pipelines))
        })
        .await
        .map_err(|e| SwapError::Stage {
            tenant: String::new(),
            cause: e.into(),
        })?;
        let (candidate, pipelines) = built?;
        self.registry.insert(candidate.clone());
        for (tenant, pipeline) in pipelines {
            tenant.pipeline.store(Arc::new(pipeline));
        }
        Ok(candidate.label().to_owned())
    }

    /// Compare the tenants folder with the running folder tenants: start
    /// new ones, restart changed ones, stop removed ones. A broken
    /// `tenant.toml` is reported and leaves every other tenant (and that
    /// tenant's running version, if any) alone.
    async fn rescan_tenants(self: Arc<Self>) {
        let Some(dir) = self.tenants_dir() else {
            return;
        };
        let _guard = self.changes.lock().await;
        let mut wanted: BTreeMap<String, (TenantConfig, PathBuf)> = BTreeMap::new();
        let mut broken: HashSet<String> = HashSet::new();
        for (id, folder) in tenant_folders(&dir) {
            let file = folder.join("tenant.toml");
            if self.config.tenants.contains_key(&id) {
                tracing::warn!(tenant = id, file = %file.display(), "a tenant of this id is in the main config; the folder is ignored");
                continue;
            }
            match self.config.load_tenant(&id, &file) {
                Ok(mut tc) => {
                    absolutize_credentials(&mut tc, &folder, &self.config);
                    wanted.insert(id, (tc, folder));
                }
                Err(e) => {
                    tracing::warn!(tenant = id, error = %e, "tenant file rejected; other tenants are not affected");
                    broken.insert(id);
                }
            }
        }
        let running: BTreeMap<String, TenantConfig> = self
            .lock_tenants()
            .iter()
            .filter(|(_, r)| r.source == TenantSource::Folder)
            .map(|(id, r)| (id.clone(), r.config.clone()))
            .collect();
        for (id, _) in running
            .iter()
            .filter(|(id, _)| !wanted.contains_key(*id) && !broken.contains(*id))
        {
            self.stop_tenant(id).await;
        }
        for (id, (tc, folder)) in wanted {
            // A rotated credentials file alone is the supervisor's to
            // follow (see `supervise_connections`).
            match running.get(&id) {
                Some(current) if *current == tc => continue,
                Some(_) => self.stop_tenant(&id).await,
                None => {}
            }
            if let Err(e) = self
                .start_tenant(&id, tc, TenantSource::Folder, Some(&folder))
                .await
            {
                tracing::warn!(tenant = id, error = %format!("{e:#}"), "tenant cannot start; other tenants are not affected");
            }
        }
    }
}

/// `NAME.wasm` files in `dir` (hidden and temporary files skipped).
fn wasm_files(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "wasm"))
        .filter_map(|p| {
            let name = p.file_stem()?.to_str()?.to_owned();
            (!name.starts_with('.')).then_some((name, p))
        })
        .collect();
    files.sort();
    files
}

/// `<dir>/<id>/` folders holding a `tenant.toml`.
fn tenant_folders(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut folders: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.join("tenant.toml").is_file())
        .filter_map(|p| {
            let id = p.file_name()?.to_str()?.to_owned();
            (!id.starts_with('.')).then_some((id, p))
        })
        .collect();
    folders.sort();
    folders
}

/// A folder tenant's credential files are relative to its folder, and a
/// The SHA-256 of `nats`'s `.creds` and nkey files (relative to `base`),
/// `None` if it names none or none can be read: what tells a rotated
/// credential from an unchanged one.
fn credentials_digest(nats: &crate::config::NatsConfig, base: &Path) -> Option<String> {
    let mut hasher = Sha256::new();
    let mut any = false;
    for path in [&nats.creds_file, &nats.nkey_file].into_iter().flatten() {
        if let Ok(bytes) = std::fs::read(base.join(path)) {
            hasher.update(&bytes);
            any = true;
        }
    }
    any.then(|| format!("{:x}", hasher.finalize()))
}

/// `user.creds` beside `tenant.toml` is its credentials when it names none.
/// Absolute paths also keep two tenants' `user.creds` from sharing a
/// connection.
fn absolutize_credentials(tc: &mut TenantConfig, folder: &Path, config: &Config) {
    let creds = folder.join("user.creds");
    if tc.nats.is_none() && creds.is_file() {
        let mut nats = config.nats.clone();
        nats.token = None;
        nats.user = None;
        nats.password = None;
        nats.nkey_file = None;
        nats.creds_file = Some(creds);
        tc.nats = Some(nats);
    }
    if let Some(nats) = &mut tc.nats {
        for file in [&mut nats.creds_file, &mut nats.nkey_file]
            .into_iter()
            .flatten()
        {
            if file.is_relative() {
                *file = folder.join(&*file);
            }
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

/// Bind (or provision) the tenant's consumer, retrying until it works or
/// `cancel`; `None` if cancelled.
async fn bind(
    id: &str,
    js: &async_nats::jetstream::Context,
    config: &Config,
    tenant_config: &TenantConfig,
    cancel: &CancellationToken,
) -> Option<async_nats::jetstream::consumer::PullConsumer> {
    let mut pause = Duration::from_millis(200);
    loop {
        let mut report = Report::default();
        let attempt = source::ensure_tenant(
            js,
            config,
            id,
            tenant_config,
            config.host.provision,
            &mut report,
        )
        .await;
        for created in &report.created {
            tracing::info!(tenant = id, "created {created}");
        }
        for updated in &report.updated {
            tracing::info!(tenant = id, "updated {updated}");
        }
        for warning in &report.warnings {
            tracing::warn!(tenant = id, "{warning}");
        }
        let wait = match attempt {
            Ok(consumer) => return Some(consumer),
            Err(e) if e.is_missing() => {
                tracing::error!(tenant = id, error = %e, "tenant cannot start; checking again in {MISSING_RECHECK:?}");
                MISSING_RECHECK
            }
            Err(e) => {
                let servers =
                    source::redacted_servers(&source::tenant_nats(config, tenant_config).servers);
                tracing::warn!(tenant = id, %servers, error = %format!("{:#}", anyhow::Error::from(e)), "cannot bind the consumer yet (is NATS reachable?); retrying");
                pause = (pause * 2).min(Duration::from_secs(5));
                pause
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = cancel.cancelled() => return None,
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
