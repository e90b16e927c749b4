//! The guest runtime: one wasmtime `Engine` with epoch interruption, the
//! compiled-component cache, loading a plugin file into a ready-to-instantiate
//! [`Plugin`], and [`GuestInstance`] — one live instance serving one tenant,
//! called under a deadline and a memory limit. Which instance serves which
//! message is the worker pool's business ([`pool`]); what a verdict means is
//! the pipeline's.

mod bindings;
mod cache;
mod instance;
mod sandbox;
/// The packed batch format; public for the property tests and fuzz targets.
pub mod wire;

use std::borrow::Borrow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::types::{ComponentItem, Type};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store, Trap};

use crate::message::{FailureKind, GuestFailure, Message, Origin, OutputCaps, Verdict};
use bindings::batch::{BatchHandler, BatchHandlerPre};
use bindings::{Handler, HandlerPre};
use sandbox::HostState;
pub use sandbox::log_lines_dropped;

pub use cache::{CompileCache, KEEP_IN_MEMORY, KEEP_ON_DISK};
pub use instance::{GuestInstance, GuestOrigin};
use instance::{classify, deadline_ticks};

/// An instance whose linear memory has grown past this share of its limit
/// (numerator / denominator) is retired after the call that grew it, and the
/// next call gets a fresh one. Memory never shrinks, so a guest that leaks —
/// componentize-py 0.25.1 guests keep part of every payload they return,
/// 0.25–0.4 KiB a call for 0.25–0.5 KiB payloads — or that once handled a
/// huge message would otherwise run into its limit and fail a message.
/// Three quarters leaves room for the next call's own growth; replacing a
/// Python instance costs about a millisecond, once per ~100k calls at a
/// 64 MiB limit.
const RETIRE_AT: (usize, usize) = (3, 4);

/// How often the epoch advances. Deadlines are counted in these ticks, so this
/// is their precision; 5 ms keeps the ticker thread's wake-ups negligible
/// while a 100 ms deadline stays within 5 %.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Failures to load, compile or initialise a plugin: host-side errors, as
/// opposed to a [`GuestFailure`] during a call.
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    /// The engine could not be created.
    #[error("cannot create the WebAssembly engine")]
    Engine(#[source] wasmtime::Error),
    /// The plugin file could not be read.
    #[error("cannot read plugin `{plugin}` from {}", path.display())]
    Read {
        /// Plugin name.
        plugin: String,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a WebAssembly component this engine can compile.
    #[error("plugin `{plugin}` is not a valid WebAssembly component")]
    Compile {
        /// Plugin name.
        plugin: String,
        /// The compiler's reason.
        #[source]
        source: wasmtime::Error,
    },
    /// A component, but not a Sluice handler.
    #[error("plugin `{plugin}` is not a sluice handler: {detail}")]
    NotHandler {
        /// Plugin name.
        plugin: String,
        /// What is missing and what the component exports instead.
        detail: String,
    },
    /// The guest's `init` rejected the stage config.
    #[error("plugin `{plugin}` rejected its config: {message}")]
    InitRejected {
        /// Plugin name.
        plugin: String,
        /// The guest's error text.
        message: String,
    },
    /// Instantiation or `init` trapped, ran out of time or memory.
    #[error("plugin `{plugin}` failed to start: {failure}")]
    InitFailed {
        /// Plugin name.
        plugin: String,
        /// How it failed.
        failure: GuestFailure,
    },
}

/// Per-plugin resource limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginLimits {
    /// Wall-clock budget of one call (and of instantiation plus `init`).
    pub deadline: Duration,
    /// Linear-memory limit in bytes.
    pub memory: u64,
    /// What one verdict may produce.
    pub outputs: OutputCaps,
    /// Most `host.log` lines (and stdout/stderr lines) an instance may
    /// write per second; the rest are dropped and counted.
    pub log_lines_per_second: u32,
}

impl Default for PluginLimits {
    /// The config's defaults for `[plugins]`.
    fn default() -> Self {
        PluginLimits {
            deadline: crate::config::DEFAULT_DEADLINE,
            memory: crate::config::DEFAULT_MEMORY,
            outputs: OutputCaps::default(),
            log_lines_per_second: crate::config::DEFAULT_LOG_LINES_PER_SECOND,
        }
    }
}

/// One compiled version of a plugin, ready to instantiate. Immutable: a new
/// file makes a new `Plugin`, so whoever holds an `Arc<Plugin>` keeps a
/// consistent version.
pub struct Plugin {
    name: Arc<str>,
    digest: String,
    label: Arc<str>,
    limits: PluginLimits,
    pre: Pre,
    engine: Engine,
}

/// A component ready to instantiate, by the world it targets.
enum Pre {
    /// `handler`: one `handle` call per message.
    Single(HandlerPre<HostState>),
    /// `batch-handler`: `handle-batch` as well.
    Batch(BatchHandlerPre<HostState>),
}

/// A live instance's exports, by world.
enum Exports {
    Single(Handler),
    Batch(BatchHandler),
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("label", &self.label)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Plugin {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Hex SHA-256 of the component file.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// `name@digest12`, as the `Sluice-Plugin` header carries it.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Its limits.
    pub fn limits(&self) -> PluginLimits {
        self.limits
    }

    /// Whether it takes several messages in one call (it targets the
    /// `batch-handler` world).
    pub fn batches(&self) -> bool {
        matches!(self.pre, Pre::Batch(_))
    }

    /// A fresh instance for `tenant`, initialised with `config`.
    pub fn instantiate(
        self: &Arc<Self>,
        tenant: &str,
        config: &[(String, String)],
    ) -> Result<GuestInstance, WasmError> {
        let state = HostState::new(Arc::from(tenant), self.name.clone(), &self.limits);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(deadline_ticks(self.limits.deadline));
        store.data_mut().start_call(self.limits.deadline);
        let failed = |store: &Store<HostState>, e: wasmtime::Error| WasmError::InitFailed {
            plugin: self.name.to_string(),
            failure: classify(store, &e),
        };
        let instantiated = match &self.pre {
            Pre::Single(pre) => pre.instantiate(&mut store).map(Exports::Single),
            Pre::Batch(pre) => pre.instantiate(&mut store).map(Exports::Batch),
        };
        let handler = match instantiated {
            Ok(h) => h,
            Err(e) => return Err(failed(&store, e)),
        };
        let init = match &handler {
            Exports::Single(h) => h.call_init(&mut store, config),
            Exports::Batch(h) => h.call_init(&mut store, config),
        };
        match init {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                return Err(WasmError::InitRejected {
                    plugin: self.name.to_string(),
                    message,
                });
            }
            Err(e) => return Err(failed(&store, e)),
        }
        Ok(GuestInstance {
            store,
            handler,
            plugin: self.clone(),
            packed: Vec::new(),
        })
    }
}

/// The engine, the linker with the sandbox's imports, the compile cache and
/// the epoch ticker. One per process; cheap to share behind an `Arc`.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    cache: CompileCache,
    ticker: Mutex<Option<JoinHandle<()>>>,
    stop: Arc<AtomicBool>,
}

impl Runtime {
    /// Create the engine; compiled code is cached in memory and, when
    /// `cache_dir` is set, on disk.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self, WasmError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        // Guests compile once and run millions of calls: optimise for speed.
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        // `SLUICE_PERF_MAP=1` names compiled guest functions in
        // /tmp/perf-PID.map, so `perf report` shows guest frames by name.
        if std::env::var_os("SLUICE_PERF_MAP").is_some_and(|v| v == "1") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(WasmError::Engine)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(WasmError::Engine)?;
        sandbox::bound_poll(&mut linker).map_err(WasmError::Engine)?;
        Handler::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(WasmError::Engine)?;

        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = engine.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("sluice-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| WasmError::Engine(e.into()))?
        };
        let cache = CompileCache::new(&engine, cache_dir);
        Ok(Runtime {
            engine,
            linker,
            cache,
            ticker: Mutex::new(Some(ticker)),
            stop,
        })
    }

    /// How many compiled versions the cache holds: (in memory, on disk).
    pub fn cached(&self) -> (usize, usize) {
        self.cache.counts()
    }

    /// Read and load the plugin file at `path`.
    pub fn load_file(
        &self,
        name: &str,
        path: &Path,
        limits: PluginLimits,
    ) -> Result<Arc<Plugin>, WasmError> {
        let bytes = std::fs::read(path).map_err(|source| WasmError::Read {
            plugin: name.to_owned(),
            path: path.to_owned(),
            source,
        })?;
        self.load(name, &bytes, limits)
    }

    /// Compile (or fetch from the cache) and check that the component is a
    /// Sluice handler: it must export `init` and `handle` of the `handler`
    /// world and import nothing the sandbox does not offer. One that also
    /// exports the `batch` interface (the `batch-handler` world) gets its
    /// messages in batches.
    pub fn load(
        &self,
        name: &str,
        bytes: &[u8],
        limits: PluginLimits,
    ) -> Result<Arc<Plugin>, WasmError> {
        let digest = hex(&Sha256::digest(bytes));
        let component = self
            .cache
            .get_or_compile(&self.engine, &digest, bytes)
            .map_err(|source| WasmError::Compile {
                plugin: name.to_owned(),
                source,
            })?;
        let not_handler = |e: wasmtime::Error| WasmError::NotHandler {
            plugin: name.to_owned(),
            detail: format!(
                "{} (it exports: {})",
                e.root_cause(),
                exports_of(&self.engine, &component)
            ),
        };
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(not_handler)?;
        // The bindings check that a `batch` export exists, not its signature
        // (a wrong one would only fail at instantiation), so it is checked
        // here. One of another shape (built against another version of the
        // WIT) is called one message at a time, like any `handler`, and the
        // operator hears why.
        let batch = match batch_export(&self.engine, &component) {
            BatchExport::Absent => None,
            BatchExport::Mismatched(why) => {
                tracing::warn!(
                    plugin = name,
                    "the plugin's `batch` export does not match this host's ({why}); it gets one `handle` call per message"
                );
                None
            }
            BatchExport::Matches => BatchHandlerPre::new(pre.clone()).ok(),
        };
        let pre = match batch {
            Some(batch) => Pre::Batch(batch),
            None => Pre::Single(HandlerPre::new(pre).map_err(not_handler)?),
        };
        Ok(Arc::new(Plugin {
            label: Arc::from(format!("{name}@{}", &digest[..12])),
            name: Arc::from(name),
            digest,
            limits,
            pre,
            engine: self.engine.clone(),
        }))
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(mut t) = self.ticker.lock()
            && let Some(t) = t.take()
        {
            let _ = t.join();
        }
    }
}

/// What a component exports as this package's `batch` interface.
enum BatchExport {
    /// Nothing: a plain `handler`.
    Absent,
    /// `handle-batch` as this host calls it.
    Matches,
    /// Something else (another version of the WIT): why not.
    Mismatched(String),
}

/// Check the component's `batch` export against the one `handle-batch`
/// this host calls: `(string, string, u32, list<u8>) -> list<u8>`.
fn batch_export(engine: &Engine, component: &Component) -> BatchExport {
    let ty = component.component_type();
    let Some(instance) = ty
        .exports(engine)
        .find(|(name, _)| name.starts_with("sluice:pipeline/batch"))
        .map(|(_, item)| item.ty)
    else {
        return BatchExport::Absent;
    };
    let ComponentItem::ComponentInstance(instance) = instance else {
        return BatchExport::Mismatched("`batch` is not an interface".into());
    };
    let Some(func) = instance
        .exports(engine)
        .find(|(name, _)| *name == "handle-batch")
        .map(|(_, item)| item.ty)
    else {
        return BatchExport::Mismatched("no `handle-batch` function".into());
    };
    let ComponentItem::ComponentFunc(func) = func else {
        return BatchExport::Mismatched("`handle-batch` is not a function".into());
    };
    let bytes = |t: &Type| matches!(t, Type::List(list) if matches!(list.ty(), Type::U8));
    let params: Vec<Type> = func.params().map(|(_, t)| t).collect();
    let results: Vec<Type> = func.results().collect();
    let params_match = matches!(
        params.as_slice(),
        [Type::String, Type::String, Type::U32, last] if bytes(last)
    );
    let results_match = matches!(results.as_slice(), [only] if bytes(only));
    if params_match && results_match {
        BatchExport::Matches
    } else {
        BatchExport::Mismatched(format!(
            "`handle-batch` takes {} parameters and returns {} results, not (string, string, u32, list<u8>) -> list<u8>",
            params.len(),
            results.len()
        ))
    }
}

fn exports_of(engine: &Engine, component: &Component) -> String {
    let ty = component.component_type();
    let names: Vec<String> = ty
        .exports(engine)
        .map(|(name, item)| match item.ty {
            ComponentItem::ComponentFunc(_) => format!("func {name}"),
            ComponentItem::ComponentInstance(_) => format!("instance {name}"),
            _ => name.to_owned(),
        })
        .collect();
    if names.is_empty() {
        "nothing".to_owned()
    } else {
        names.join(", ")
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
