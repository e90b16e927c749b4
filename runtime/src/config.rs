//! The TOML configuration: schema, defaults and validation.
//!
//! Every table rejects unknown keys, every field is documented here (these
//! doc comments are the reference), and every error names the file and the
//! key path (`tenants.acme.pipeline[1].plugin`) so an operator can go
//! straight to the line. Loading never touches NATS or compiles plugins; that
//! is `sluice check`'s next step.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::subject::{self, Template};

/// A configuration problem, always tied to a file and a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in.
    pub file: PathBuf,
    /// The key path, e.g. `tenants.acme.output`; empty for the whole file.
    pub key: String,
    /// 1-based line, when the parser knows it.
    pub line: Option<usize>,
    /// What is wrong, in lowercase, without the key.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The host process: shutdown, provisioning.
    #[serde(default)]
    pub host: HostConfig,
    /// The guest runtime: worker threads, compiled-code cache.
    #[serde(default)]
    pub wasm: WasmConfig,
    /// Where plugins come from and their default limits.
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// Plugins declared by name with an explicit file and limits of their own;
    /// any other plugin name resolves to `<plugins.dir>/<name>.wasm`.
    #[serde(default)]
    pub plugin: BTreeMap<String, PluginConfig>,
    /// The NATS connection tenants use unless they set their own.
    #[serde(default)]
    pub nats: NatsConfig,
    /// Settings every tenant inherits unless it overrides them.
    #[serde(default)]
    pub defaults: TenantDefaults,
    /// Tenants by id.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantConfig>,
    /// Directory the file was read from; relative paths resolve against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file this was read from, for error messages.
    #[serde(skip)]
    pub file: PathBuf,
}

/// `[host]`: the process as a whole.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// On SIGTERM/SIGINT, how long in-flight messages may take to finish
    /// before the host exits and leaves the rest for redelivery. Default 10 s.
    #[serde(default = "default_grace", with = "duration")]
    pub shutdown_grace: Duration,
    /// Create missing streams and consumers at start-up (as `sluice
    /// provision` does) instead of only verifying them. Default false:
    /// operators often provision with credentials the host does not have.
    #[serde(default)]
    pub provision: bool,
    /// Replicas of the streams provisioning creates (1 to 5; 3 on a
    /// cluster, so a node's loss loses nothing). Existing streams are left
    /// as they are, with a warning if they have fewer. Default 1.
    #[serde(default = "default_stream_replicas")]
    pub stream_replicas: usize,
    /// A folder of tenants, one sub-folder each: `<dir>/<tenant>/tenant.toml`
    /// (the keys of a `[tenants.ID]` table) plus an optional `user.creds`.
    /// Watched: adding a folder starts that tenant, removing it stops it,
    /// editing it restarts only that tenant.
    #[serde(default)]
    pub tenants_dir: Option<PathBuf>,
    /// Serve `/metrics` (Prometheus), `/healthz` and `/readyz` here, e.g.
    /// `"127.0.0.1:9090"`. `--metrics-addr` overrides it.
    #[serde(default)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Connections the ops endpoint keeps open at once; more are closed at
    /// once. Default 64.
    #[serde(default = "default_ops_max_connections")]
    pub ops_max_connections: usize,
    /// How long the ops endpoint waits for a request's head (a connection
    /// lives at most four times this). Default 5 s.
    #[serde(default = "default_ops_read_timeout", with = "duration")]
    pub ops_read_timeout: Duration,
}

/// `[wasm]`: the guest runtime.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmConfig {
    /// Worker threads that run guest calls. Default: the number of cores.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Where compiled plugins are cached across restarts. Default:
    /// `$XDG_CACHE_HOME/sluice` or `~/.cache/sluice`; `""` turns the disk
    /// cache off.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
}

/// `[plugins]`: where plugins are found and their default limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Folder of `NAME.wasm` files; a stage's plugin NAME not declared under
    /// `[plugin.NAME]` is loaded from here.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Wall-clock budget of one guest call, e.g. `"100ms"`. Default 100 ms.
    #[serde(default = "default_deadline", with = "duration")]
    pub deadline: Duration,
    /// Linear-memory limit of one instance, e.g. `"64MiB"`. Default 64 MiB.
    #[serde(default = "default_memory", with = "bytes")]
    pub memory: u64,
    /// Most outputs one verdict may publish. Default 1000.
    #[serde(default = "default_max_outputs")]
    pub max_outputs: u64,
    /// Most bytes (subjects, headers and payloads) one message's outputs
    /// may add up to, e.g. `"16MiB"`. Default 16 MiB.
    #[serde(default = "default_max_output_bytes", with = "bytes")]
    pub max_output_bytes: u64,
    /// Longest output subject, in bytes. Default 1024.
    #[serde(default = "default_max_subject_bytes")]
    pub max_subject_bytes: u64,
    /// Most log lines (`host.log`, stdout, stderr) one instance may write
    /// per second. Default 100.
    #[serde(default = "default_log_lines_per_second")]
    pub log_lines_per_second: u32,
}

/// `[plugin.NAME]`: one plugin declared explicitly.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The component file.
    pub path: PathBuf,
    /// Overrides `plugins.deadline` for this plugin.
    #[serde(default, with = "opt_duration")]
    pub deadline: Option<Duration>,
    /// Overrides `plugins.memory` for this plugin.
    #[serde(default, with = "opt_bytes")]
    pub memory: Option<u64>,
    /// Overrides `plugins.max_outputs` for this plugin.
    #[serde(default)]
    pub max_outputs: Option<u64>,
    /// Overrides `plugins.max_output_bytes` for this plugin.
    #[serde(default, with = "opt_bytes")]
    pub max_output_bytes: Option<u64>,
    /// Overrides `plugins.max_subject_bytes` for this plugin.
    #[serde(default)]
    pub max_subject_bytes: Option<u64>,
    /// Overrides `plugins.log_lines_per_second` for this plugin.
    #[serde(default)]
    pub log_lines_per_second: Option<u32>,
}

/// `[nats]` (or `tenants.ID.nats`): how to reach NATS.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URLs. Default `["nats://127.0.0.1:4222"]`.
    #[serde(default = "default_servers")]
    pub servers: Vec<String>,
    /// Token authentication.
    #[serde(default)]
    pub token: Option<String>,
    /// User for user/password authentication (with `password`).
    #[serde(default)]
    pub user: Option<String>,
    /// Password for user/password authentication (with `user`).
    #[serde(default)]
    pub password: Option<String>,
    /// File holding an nkey seed.
    #[serde(default)]
    pub nkey_file: Option<PathBuf>,
    /// A `.creds` file (JWT and nkey seed).
    #[serde(default)]
    pub creds_file: Option<PathBuf>,
}

/// `[defaults]`: per-tenant settings every tenant inherits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantDefaults {
    /// Most messages a tenant holds between pull and settle. Default 256.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// A tenant's share of the worker threads when several have work
    /// queued: a tenant of weight 2 gets twice the worker time of one of
    /// weight 1. Default 1; 1 to 1000.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// JetStream ack wait of the tenant's consumer. Default 30 s.
    #[serde(default = "default_ack_wait", with = "duration")]
    pub ack_wait: Duration,
    /// Deliveries before a message that keeps failing is dead-lettered.
    /// Default 5.
    #[serde(default = "default_max_deliver")]
    pub max_deliver: u32,
    /// Redelivery delays after a guest failure, by delivery; the last one
    /// repeats. Default `["1s", "5s", "30s"]`.
    #[serde(default = "default_backoff", with = "duration_list")]
    pub backoff: Vec<Duration>,
    /// Longest redelivery delay a guest's `retry(ms)` or the backoff can ask
    /// for; longer ones are cut to it, so `retry(u32::MAX)` does not park a
    /// message for 49 days. Default 1 h.
    #[serde(default = "default_max_retry_delay", with = "duration")]
    pub max_retry_delay: Duration,
    /// Duplicate window of output and dead-letter streams that `provision`
    /// creates: a redelivered message re-published within it is dropped by
    /// JetStream. Must cover each tenant's redelivery span (`sluice check`
    /// says so; the host warns). Default 5 min.
    #[serde(default = "default_duplicate_window", with = "duration")]
    pub duplicate_window: Duration,
}

/// `[tenants.ID]`: one tenant.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The JetStream stream the tenant's input is in.
    pub stream: String,
    /// The durable pull consumer's name. Default `sluice`.
    #[serde(default = "default_consumer")]
    pub consumer: String,
    /// The consumer's filter subject, e.g. `acme.in.>`.
    pub filter: String,
    /// Template of the subject a message is published to when the last stage
    /// says `next`, e.g. `"{tenant}.out.{subject[2..]}"`.
    pub output: String,
    /// Where dead letters go, e.g. `acme.dlq`.
    pub dead_letter: String,
    /// Subject patterns outputs may be published to. Default: the literal
    /// prefix of `output` followed by `>`.
    #[serde(default)]
    pub permit: Option<Vec<String>>,
    /// The stages, in order.
    pub pipeline: Vec<StageConfig>,
    /// The stream that stores this tenant's outputs. `provision` creates it
    /// (capturing the permitted subjects, with a duplicate window) when it
    /// is missing; without it, outputs must land in a stream made by other
    /// means.
    #[serde(default)]
    pub output_stream: Option<String>,
    /// The stream that stores this tenant's dead letters; as `output_stream`.
    #[serde(default)]
    pub dead_letter_stream: Option<String>,
    /// The tenant's own NATS connection (another account, other
    /// credentials). Default: `[nats]`.
    #[serde(default)]
    pub nats: Option<NatsConfig>,
    /// Overrides `defaults.max_in_flight`.
    #[serde(default)]
    pub max_in_flight: Option<usize>,
    /// Overrides `defaults.weight`.
    #[serde(default)]
    pub weight: Option<u32>,
    /// Per-key ordering: `"subject"`, `"header:NAME"` or `"field:NAME"`
    /// (a JSON pointer, `field:/a/b`, reaches nested fields). Messages
    /// with the same key are processed and settled in stream order.
    /// Default: none (messages run concurrently, up to `max_in_flight`).
    #[serde(default)]
    pub ordering: Option<String>,
    /// Active/standby across hosts: one host at a time holds the tenant's
    /// consumer (a JetStream priority group with a pinned client); the
    /// others wait and one takes over within `takeover` of its loss.
    /// Default false.
    #[serde(default)]
    pub exclusive: bool,
    /// With `exclusive`: how long the holding host may go without pulling
    /// before another takes over. Default 5 s; 1 s to 1 h.
    #[serde(default, with = "opt_duration")]
    pub takeover: Option<Duration>,
    /// Overrides `defaults.ack_wait`.
    #[serde(default, with = "opt_duration")]
    pub ack_wait: Option<Duration>,
    /// Overrides `defaults.max_deliver`.
    #[serde(default)]
    pub max_deliver: Option<u32>,
    /// Overrides `defaults.backoff`.
    #[serde(default, with = "opt_duration_list")]
    pub backoff: Option<Vec<Duration>>,
    /// Overrides `defaults.max_retry_delay`.
    #[serde(default, with = "opt_duration")]
    pub max_retry_delay: Option<Duration>,
}

/// One stage of a tenant's pipeline.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// The plugin's name.
    pub plugin: String,
    /// The plugin's configuration, passed to its `init`. Nested tables
    /// flatten to dotted keys; numbers and booleans become strings.
    #[serde(default)]
    pub config: toml::Table,
}

// Defaults as named functions, shared by serde and `Default`.

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
/// A Rust handler answers in microseconds; 100 ms leaves room for cold caches
/// and interpreted guests while still catching a loop quickly.
const fn default_deadline() -> Duration {
    DEFAULT_DEADLINE
}
/// See [`default_deadline`].
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(100);
/// See [`default_memory`].
pub const DEFAULT_MEMORY: u64 = 64 * 1024 * 1024;
/// A guest logging in a loop must not flood the host's log (or its disk):
/// a hundred lines a second is more than anyone reads.
pub const DEFAULT_LOG_LINES_PER_SECOND: u32 = 100;
const fn default_log_lines_per_second() -> u32 {
    DEFAULT_LOG_LINES_PER_SECOND
}
/// Rust and QuickJS guests need a few MiB; 64 MiB leaves room for large
/// payloads without letting one instance take the host down.
const fn default_memory() -> u64 {
    DEFAULT_MEMORY
}
/// Fan-out is real (one order to many lines) but a thousand outputs per
/// message is already far past it; more is a guest gone wrong, and each
/// output is a publish the tenant waits for.
pub const DEFAULT_MAX_OUTPUTS: u64 = 1000;
/// Sixteen of the server's default 1 MiB messages.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 16 * 1024 * 1024;
/// nats-server refuses a protocol line over `max_control_line` (default
/// 4 KiB) by closing the connection, which every tenant on it shares; the
/// line holds the subject, a reply inbox and sizes. Real subjects are far
/// shorter than 1 KiB.
pub const DEFAULT_MAX_SUBJECT_BYTES: u64 = 1024;
const fn default_max_outputs() -> u64 {
    DEFAULT_MAX_OUTPUTS
}
const fn default_max_output_bytes() -> u64 {
    DEFAULT_MAX_OUTPUT_BYTES
}
const fn default_max_subject_bytes() -> u64 {
    DEFAULT_MAX_SUBJECT_BYTES
}
/// The most `max_subject_bytes` may be: under the server's default control
/// line with room for the rest of the `HPUB` line.
pub const MAX_SUBJECT_BYTES_LIMIT: u64 = 3072;
fn default_servers() -> Vec<String> {
    vec!["nats://127.0.0.1:4222".to_owned()]
}
/// Enough to keep the worker pool and the publish pipeline busy for one
/// tenant while a slow tenant cannot hold more than this much of the host.
const fn default_max_in_flight() -> usize {
    256
}
/// An exclusive tenant's standby takes over this long after the holder's
/// last pull: quick enough to be "within seconds", slow enough that a busy
/// holder (it pulls every few seconds at most) is never mistaken for gone.
pub const DEFAULT_TAKEOVER: Duration = Duration::from_secs(5);
/// Every tenant alike unless told otherwise.
const fn default_weight() -> u32 {
    1
}
/// JetStream's own default.
const fn default_ack_wait() -> Duration {
    Duration::from_secs(30)
}
/// Enough retries to ride out a restart of a downstream dependency.
const fn default_max_deliver() -> u32 {
    5
}
/// An hour: long enough for any sensible backoff, short enough that a
/// guest's typo cannot hide a message for weeks.
const fn default_max_retry_delay() -> Duration {
    Duration::from_secs(3600)
}
fn default_backoff() -> Vec<Duration> {
    vec![
        Duration::from_secs(1),
        Duration::from_secs(5),
        Duration::from_secs(30),
    ]
}
fn default_consumer() -> String {
    "sluice".to_owned()
}

/// Long enough for a handler mid-call and its publishes to finish; short
/// enough for an orchestrator's default kill timeout (30 s).
/// Prometheus and a probe or two need a handful; 64 leaves room for
/// several scrapers without letting a flood hold the host's descriptors.
const fn default_ops_max_connections() -> usize {
    64
}
/// One copy: what a single nats-server can hold.
const fn default_stream_replicas() -> usize {
    1
}
/// A scraper sends its request at once; five seconds is generous.
const fn default_ops_read_timeout() -> Duration {
    Duration::from_secs(5)
}
const fn default_grace() -> Duration {
    Duration::from_secs(10)
}
/// Covers the redelivery span of the default tenant settings (30 s ×
/// 6 deliveries + 1 s + 5 s + 3 × 30 s of backoff = 4 min 36 s; see
/// [`TenantLimits::redelivery_span`]). JetStream's own default of 2 min does not.
const fn default_duplicate_window() -> Duration {
    Duration::from_secs(300)
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            shutdown_grace: default_grace(),
            provision: false,
            stream_replicas: default_stream_replicas(),
            tenants_dir: None,
            metrics_addr: None,
            ops_max_connections: default_ops_max_connections(),
            ops_read_timeout: default_ops_read_timeout(),
        }
    }
}

impl Default for WasmConfig {
    fn default() -> Self {
        WasmConfig {
            workers: default_workers(),
            cache_dir: None,
        }
    }
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            dir: None,
            deadline: default_deadline(),
            memory: default_memory(),
            max_outputs: default_max_outputs(),
            max_output_bytes: default_max_output_bytes(),
            max_subject_bytes: default_max_subject_bytes(),
            log_lines_per_second: default_log_lines_per_second(),
        }
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            servers: default_servers(),
            token: None,
            user: None,
            password: None,
            nkey_file: None,
            creds_file: None,
        }
    }
}

impl Default for TenantDefaults {
    fn default() -> Self {
        TenantDefaults {
            max_in_flight: default_max_in_flight(),
            weight: default_weight(),
            ack_wait: default_ack_wait(),
            max_deliver: default_max_deliver(),
            backoff: default_backoff(),
            max_retry_delay: default_max_retry_delay(),
            duplicate_window: default_duplicate_window(),
        }
    }
}

/// A tenant's settings after defaults are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantLimits {
    /// See [`TenantDefaults::max_in_flight`].
    pub max_in_flight: usize,
    /// See [`TenantDefaults::weight`].
    pub weight: u32,
    /// See [`TenantConfig::ordering`] (validated before use).
    pub ordering: Option<crate::ordering::OrderingKey>,
    /// With [`TenantConfig::exclusive`], its `takeover`.
    pub exclusive: Option<Duration>,
    /// See [`TenantDefaults::ack_wait`].
    pub ack_wait: Duration,
    /// See [`TenantDefaults::max_deliver`].
    pub max_deliver: u32,
    /// See [`TenantDefaults::backoff`].
    pub backoff: Vec<Duration>,
    /// See [`TenantDefaults::max_retry_delay`].
    pub max_retry_delay: Duration,
}

impl TenantLimits {
    /// The deliveries the consumer allows: the host dead-letters on
    /// delivery `max_deliver` itself, and one more on the server's side
    /// means a host that crashed during that last delivery, or could not
    /// store its dead letter, still gets to dead-letter the message
    /// instead of the server silently giving up on it. The sink's settle
    /// policy holds, never naks, on this one.
    pub fn server_max_deliver(&self) -> u32 {
        self.max_deliver.saturating_add(1)
    }

    /// The longest a message can take from its first delivery to its last
    /// redelivery: `ack_wait` for each of the server's `max_deliver + 1`
    /// deliveries, plus the backoff (capped by `max_retry_delay`) before
    /// each of the host's. An output published early in that span is
    /// republished, same id, by any later delivery: the output stream's
    /// duplicate window must cover the span, or the copy is stored twice.
    pub fn redelivery_span(&self) -> Duration {
        let waits = self
            .ack_wait
            .saturating_mul(self.max_deliver.saturating_add(1));
        // Delivery d waits backoff[d - 1], the last entry repeating: the
        // listed entries once each, then the last for the deliveries past
        // them (counted, not iterated: max_deliver may be large).
        let capped = |d: &Duration| (*d).min(self.max_retry_delay);
        let listed = usize::try_from(self.max_deliver).unwrap_or(usize::MAX);
        let once = self
            .backoff
            .iter()
            .take(listed)
            .map(capped)
            .fold(waits, Duration::saturating_add);
        let beyond = self
            .max_deliver
            .saturating_sub(u32::try_from(self.backoff.len()).unwrap_or(u32::MAX));
        let last = self.backoff.last().map(capped).unwrap_or_default();
        once.saturating_add(last.saturating_mul(beyond))
    }
}

/// A plugin's file and limits after defaults are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSpec {
    /// The name stages use.
    pub name: String,
    /// The component file, resolved against the config's folder.
    pub path: PathBuf,
    /// Per-call deadline.
    pub deadline: Duration,
    /// Per-instance memory limit in bytes.
    pub memory: u64,
    /// Most outputs per verdict.
    pub max_outputs: u64,
    /// Most bytes of outputs per message.
    pub max_output_bytes: u64,
    /// Longest output subject in bytes.
    pub max_subject_bytes: u64,
    /// Most log lines per instance per second.
    pub log_lines_per_second: u32,
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            key: String::new(),
            line: None,
            message: format!("cannot read the file: {e}"),
        })?;
        Config::parse(&text, path)
    }

    /// Parse and validate config text; `path` names it in errors and anchors
    /// relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = from_toml(text, path)?;
        config.file = path.to_owned();
        config.base_dir = path.parent().map(Path::to_owned).unwrap_or_default();
        config.validate()?;
        Ok(config)
    }

    /// Read a tenant file (`<tenants_dir>/<id>/tenant.toml`: the keys of a
    /// `[tenants.ID]` table) and check it against this config. Errors name
    /// that file.
    pub fn load_tenant(&self, id: &str, path: &Path) -> Result<TenantConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            key: String::new(),
            line: None,
            message: format!("cannot read the file: {e}"),
        })?;
        let tenant: TenantConfig = from_toml(&text, path)?;
        let mut scoped = self.clone();
        scoped.file = path.to_owned();
        if let Some(dir) = path.parent() {
            scoped.base_dir = dir.to_owned();
        }
        scoped.validate_tenant(id, &tenant)?;
        Ok(tenant)
    }

    fn error(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            key: key.into(),
            line: None,
            message: message.into(),
        }
    }

    /// Cross-field checks that serde cannot express; each error names its
    /// key path.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=5).contains(&self.host.stream_replicas) {
            return Err(self.error("host.stream_replicas", "must be 1 to 5 (JetStream's range)"));
        }
        if self.host.ops_max_connections == 0 {
            return Err(self.error("host.ops_max_connections", "must be at least 1"));
        }
        if self.host.ops_read_timeout < Duration::from_millis(100)
            || self.host.ops_read_timeout > Duration::from_secs(3600)
        {
            return Err(self.error("host.ops_read_timeout", "must be between 100ms and 1h"));
        }
        if self.wasm.workers == 0 {
            return Err(self.error("wasm.workers", "must be at least 1"));
        }
        check_limits(self, "plugins", self.plugins.deadline, self.plugins.memory)?;
        check_output_caps(
            self,
            "plugins",
            Some(self.plugins.max_outputs),
            Some(self.plugins.max_output_bytes),
            Some(self.plugins.max_subject_bytes),
        )?;
        for (name, plugin) in &self.plugin {
            check_name(self, &format!("plugin.{name}"), name, "plugin name")?;
            check_output_caps(
                self,
                &format!("plugin.{}", key_segment(name)),
                plugin.max_outputs,
                plugin.max_output_bytes,
                plugin.max_subject_bytes,
            )?;
            if let Some(deadline) = plugin.deadline {
                check_limits(
                    self,
                    &format!("plugin.{name}"),
                    deadline,
                    plugin.memory.unwrap_or(1 << 20),
                )?;
            }
            if let Some(memory) = plugin.memory {
                check_limits(
                    self,
                    &format!("plugin.{name}"),
                    Duration::from_millis(1),
                    memory,
                )?;
            }
        }
        check_nats(self, "nats", &self.nats)?;
        check_tenant_limits(self, "defaults", &self.limits(None))?;
        for (id, tenant) in &self.tenants {
            let at = format!("tenants.{}", key_segment(id));
            check_name(self, &at, id, "tenant id")?;
            self.check_tenant(&at, id, tenant)?;
        }
        self.check_shared_durables()
    }

    /// Two tenants bound to one durable consumer would each get some of the
    /// other's messages and settle them through the wrong pipeline; that is
    /// only the same durable when they reach NATS the same way (another
    /// account has streams of its own).
    fn check_shared_durables(&self) -> Result<(), ConfigError> {
        let mut seen: Vec<(&str, &TenantConfig)> = Vec::new();
        for (id, tenant) in &self.tenants {
            let nats = tenant.nats.as_ref().unwrap_or(&self.nats);
            if let Some((other, _)) = seen.iter().find(|(_, t)| {
                t.stream == tenant.stream
                    && t.consumer == tenant.consumer
                    && t.nats.as_ref().unwrap_or(&self.nats) == nats
            }) {
                return Err(self.error(
                    format!("tenants.{}.consumer", key_segment(id)),
                    format!(
                        "tenants `{other}` and `{id}` would both bind consumer `{}` on stream `{}`; give each its own `consumer`",
                        tenant.consumer, tenant.stream
                    ),
                ));
            }
            seen.push((id, tenant));
        }
        Ok(())
    }

    fn check_tenant(&self, at: &str, id: &str, tenant: &TenantConfig) -> Result<(), ConfigError> {
        if tenant.takeover.is_some() && !tenant.exclusive {
            return Err(self.error(
                format!("{at}.takeover"),
                "applies only with `exclusive = true`",
            ));
        }
        if let Some(takeover) = tenant.takeover
            && !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&takeover)
        {
            return Err(self.error(format!("{at}.takeover"), "must be from 1s to 1h"));
        }
        if let Some(ordering) = &tenant.ordering {
            crate::ordering::OrderingKey::parse(ordering)
                .map_err(|e| self.error(format!("{at}.ordering"), e))?;
        }
        check_name(self, &format!("{at}.stream"), &tenant.stream, "stream name")?;
        check_name(
            self,
            &format!("{at}.consumer"),
            &tenant.consumer,
            "consumer name",
        )?;
        subject::validate_pattern(&tenant.filter)
            .map_err(|e| self.error(format!("{at}.filter"), e.to_string()))?;
        let output = Template::parse(&tenant.output)
            .map_err(|e| self.error(format!("{at}.output"), error_chain(&e)))?;
        subject::validate_subject(&tenant.dead_letter)
            .map_err(|e| self.error(format!("{at}.dead_letter"), e.to_string()))?;
        if subject::matches(&tenant.filter, &tenant.dead_letter) {
            return Err(self.error(
                format!("{at}.dead_letter"),
                format!(
                    "`{}` is inside the input filter `{}`; dead letters would be consumed again",
                    tenant.dead_letter, tenant.filter
                ),
            ));
        }
        let permits = self
            .permits(id, tenant, &output)
            .map_err(|m| self.error(format!("{at}.permit"), m))?;
        for (i, pattern) in permits.iter().enumerate() {
            subject::validate_pattern(pattern)
                .map_err(|e| self.error(format!("{at}.permit[{i}]"), e.to_string()))?;
            if crate::subject::pattern_overlaps(pattern, &tenant.filter) {
                return Err(self.error(
                    format!("{at}.permit[{i}]"),
                    format!(
                        "permitted pattern `{pattern}` overlaps the input filter `{}`; outputs would be consumed again",
                        tenant.filter
                    ),
                ));
            }
        }
        if tenant.pipeline.is_empty() {
            return Err(self.error(format!("{at}.pipeline"), "needs at least one stage"));
        }
        for (i, stage) in tenant.pipeline.iter().enumerate() {
            let key = format!("{at}.pipeline[{i}]");
            self.plugin_spec(&stage.plugin)
                .map_err(|m| self.error(format!("{key}.plugin"), m))?;
            flatten_stage_config(&stage.config)
                .map_err(|(k, m)| self.error(format!("{key}.config.{k}"), m))?;
        }
        if let Some(nats) = &tenant.nats {
            check_nats(self, &format!("{at}.nats"), nats)?;
        }
        check_tenant_limits(self, at, &self.limits(Some(tenant)))
    }

    /// The tenant's permitted output patterns: `permit`, or what `output`
    /// implies.
    fn permits(
        &self,
        id: &str,
        tenant: &TenantConfig,
        output: &Template,
    ) -> Result<Vec<String>, String> {
        match &tenant.permit {
            Some(list) if list.is_empty() => Err("must not be empty; leave it out to derive it from `output`".into()),
            Some(list) => Ok(list.clone()),
            None => output.implied_permit(id).map(|p| vec![p]).ok_or_else(|| {
                format!(
                    "cannot be derived from output `{}` (it starts with a placeholder); list the permitted subject patterns",
                    tenant.output
                )
            }),
        }
    }

    /// A tenant's permitted output patterns, after defaults.
    pub fn tenant_permits(&self, id: &str) -> Result<Vec<String>, ConfigError> {
        let at = format!("tenants.{}", key_segment(id));
        let tenant = self
            .tenants
            .get(id)
            .ok_or_else(|| self.error(&at, "no such tenant"))?;
        self.permits_of(id, tenant)
    }

    /// The permitted output patterns of tenant `id` configured as `tenant`.
    pub fn permits_of(&self, id: &str, tenant: &TenantConfig) -> Result<Vec<String>, ConfigError> {
        let at = format!("tenants.{}", key_segment(id));
        let output = Template::parse(&tenant.output)
            .map_err(|e| self.error(format!("{at}.output"), error_chain(&e)))?;
        self.permits(id, tenant, &output)
            .map_err(|m| self.error(format!("{at}.permit"), m))
    }

    /// Check one tenant (for example one read from the tenants folder)
    /// against this config's plugins and defaults.
    pub fn validate_tenant(&self, id: &str, tenant: &TenantConfig) -> Result<(), ConfigError> {
        let at = format!("tenants.{}", key_segment(id));
        check_name(self, &at, id, "tenant id")?;
        self.check_tenant(&at, id, tenant)
    }

    /// A tenant's limits after defaults; `None` gives the defaults alone.
    pub fn limits(&self, tenant: Option<&TenantConfig>) -> TenantLimits {
        let d = &self.defaults;
        TenantLimits {
            max_in_flight: tenant
                .and_then(|t| t.max_in_flight)
                .unwrap_or(d.max_in_flight),
            weight: tenant.and_then(|t| t.weight).unwrap_or(d.weight),
            ordering: tenant
                .and_then(|t| t.ordering.as_deref())
                .and_then(|o| crate::ordering::OrderingKey::parse(o).ok()),
            exclusive: tenant
                .filter(|t| t.exclusive)
                .map(|t| t.takeover.unwrap_or(DEFAULT_TAKEOVER)),
            ack_wait: tenant.and_then(|t| t.ack_wait).unwrap_or(d.ack_wait),
            max_deliver: tenant.and_then(|t| t.max_deliver).unwrap_or(d.max_deliver),
            backoff: tenant
                .and_then(|t| t.backoff.clone())
                .unwrap_or_else(|| d.backoff.clone()),
            max_retry_delay: tenant
                .and_then(|t| t.max_retry_delay)
                .unwrap_or(d.max_retry_delay),
        }
    }

    /// Where plugin `name` comes from and its limits. Errors are messages
    /// for the key that named the plugin.
    pub fn plugin_spec(&self, name: &str) -> Result<PluginSpec, String> {
        let d = &self.plugins;
        let caps = |p: Option<&PluginConfig>| {
            (
                p.and_then(|p| p.max_outputs).unwrap_or(d.max_outputs),
                p.and_then(|p| p.max_output_bytes)
                    .unwrap_or(d.max_output_bytes),
                p.and_then(|p| p.max_subject_bytes)
                    .unwrap_or(d.max_subject_bytes),
            )
        };
        let (max_outputs, max_output_bytes, max_subject_bytes) = caps(self.plugin.get(name));
        let log_lines_per_second = self
            .plugin
            .get(name)
            .and_then(|p| p.log_lines_per_second)
            .unwrap_or(d.log_lines_per_second);
        let (path, deadline, memory) = match self.plugin.get(name) {
            Some(p) => (
                self.base_dir.join(&p.path),
                p.deadline.unwrap_or(self.plugins.deadline),
                p.memory.unwrap_or(self.plugins.memory),
            ),
            None => match &self.plugins.dir {
                Some(dir) => (
                    self.base_dir.join(dir).join(format!("{name}.wasm")),
                    self.plugins.deadline,
                    self.plugins.memory,
                ),
                None => {
                    return Err(format!(
                        "unknown plugin `{name}`: declare it under [plugin.{name}] or set plugins.dir"
                    ));
                }
            },
        };
        Ok(PluginSpec {
            name: name.to_owned(),
            path,
            deadline,
            memory,
            max_outputs,
            max_output_bytes,
            max_subject_bytes,
            log_lines_per_second,
        })
    }

    /// Tenants whose output or dead-letter stream, made with
    /// `defaults.duplicate_window`, would forget a message id before its
    /// last redelivery republishes it: an error for `sluice check`, a
    /// warning when the host starts.
    pub fn check_duplicate_window(&self) -> Result<(), ConfigError> {
        for (id, tenant) in &self.tenants {
            self.check_duplicate_window_of(id, tenant)?;
        }
        Ok(())
    }

    /// [`check_duplicate_window`](Self::check_duplicate_window) for one
    /// tenant.
    pub fn check_duplicate_window_of(
        &self,
        id: &str,
        tenant: &TenantConfig,
    ) -> Result<(), ConfigError> {
        let window = self.defaults.duplicate_window;
        if tenant.output_stream.is_some() || tenant.dead_letter_stream.is_some() {
            let span = self.limits(Some(tenant)).redelivery_span();
            if window < span {
                return Err(self.error(
                    "defaults.duplicate_window",
                    format!(
                        "{} is shorter than tenant `{id}`'s redelivery span of {} (ack_wait × (max_deliver + 1) plus the backoffs): a redelivery after it would store outputs twice; raise it to at least {}",
                        humantime::format_duration(window),
                        humantime::format_duration(span),
                        humantime::format_duration(span)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Every plugin some tenant's pipeline uses, each once.
    pub fn used_plugins(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        let mut names = Vec::new();
        for tenant in self.tenants.values() {
            for stage in &tenant.pipeline {
                if seen.insert(stage.plugin.clone()) {
                    names.push(stage.plugin.clone());
                }
            }
        }
        names
    }
}

/// Deserialise TOML `text` (from `path`, which errors name) into `T`: the
/// one reader of the main file and the tenant files, so both report a bad
/// key with its dotted path, its line and a suggestion.
fn from_toml<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    let fail = |key: String, line: Option<usize>, message: String| ConfigError {
        file: path.to_owned(),
        key,
        line,
        message,
    };
    let de = toml::de::Deserializer::parse(text).map_err(|e| {
        fail(
            String::new(),
            line_of(text, e.span()),
            e.message().trim().to_owned(),
        )
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let key = if key == "." { String::new() } else { key };
        fail(
            key,
            line_of(text, inner.span()),
            suggest(inner.message().trim()),
        )
    })
}

/// A key as TOML writes it: bare when it can be, quoted otherwise.
fn key_segment(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

fn check_name(config: &Config, key: &str, name: &str, what: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(config.error(
            key,
            format!("{what} `{name}` may only contain letters, digits, `-` and `_`"),
        ))
    }
}

/// The compiled-code cache folder a config asks for (or the default).
pub fn cache_dir(config: Option<&Config>) -> Option<PathBuf> {
    match config.and_then(|c| c.wasm.cache_dir.clone()) {
        Some(dir) if dir.as_os_str().is_empty() => None,
        Some(dir) => config.map(|c| c.base_dir.join(dir)),
        None => default_cache_dir(),
    }
}

/// The default on-disk cache folder: `$XDG_CACHE_HOME/sluice` or
/// `~/.cache/sluice`.
pub fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("sluice"))
}

/// Guests need at least one 64 KiB page; a deadline under a millisecond is
/// below the epoch tick and would fail every call.
fn check_limits(
    config: &Config,
    at: &str,
    deadline: Duration,
    memory: u64,
) -> Result<(), ConfigError> {
    if deadline < Duration::from_millis(1) {
        return Err(config.error(format!("{at}.deadline"), "must be at least 1ms"));
    }
    if memory < 64 * 1024 {
        return Err(config.error(
            format!("{at}.memory"),
            "must be at least 64KiB (one WebAssembly page)",
        ));
    }
    Ok(())
}

/// Output caps, where set: at least one of each, and no subject the
/// server would close the connection over.
fn check_output_caps(
    config: &Config,
    at: &str,
    max_outputs: Option<u64>,
    max_output_bytes: Option<u64>,
    max_subject_bytes: Option<u64>,
) -> Result<(), ConfigError> {
    for (key, value) in [
        ("max_outputs", max_outputs),
        ("max_output_bytes", max_output_bytes),
        ("max_subject_bytes", max_subject_bytes),
    ] {
        if value == Some(0) {
            return Err(config.error(format!("{at}.{key}"), "must be at least 1"));
        }
    }
    if let Some(n) = max_subject_bytes
        && n > MAX_SUBJECT_BYTES_LIMIT
    {
        return Err(config.error(
            format!("{at}.max_subject_bytes"),
            format!("must be at most {MAX_SUBJECT_BYTES_LIMIT}: a longer subject does not fit nats-server's default 4 KiB protocol line, and the server closes the connection over it"),
        ));
    }
    Ok(())
}

/// Most messages one tenant may hold in flight.
const MAX_IN_FLIGHT_LIMIT: usize = 100_000;
/// Largest weight: a thousand to one is already more than one host's
/// workers can tell apart.
const MAX_WEIGHT: u32 = 1000;
/// Most deliveries a tenant may ask for.
const MAX_DELIVER_LIMIT: u32 = 1_000_000;
/// Longest ack_wait, backoff step or retry delay.
const MAX_DURATION_LIMIT: Duration = Duration::from_secs(30 * 24 * 3600);

fn check_tenant_limits(
    config: &Config,
    at: &str,
    limits: &TenantLimits,
) -> Result<(), ConfigError> {
    if limits.max_in_flight == 0 {
        return Err(config.error(format!("{at}.max_in_flight"), "must be at least 1"));
    }
    if limits.max_deliver == 0 {
        return Err(config.error(format!("{at}.max_deliver"), "must be at least 1"));
    }
    if !(1..=MAX_WEIGHT).contains(&limits.weight) {
        return Err(config.error(
            format!("{at}.weight"),
            format!("must be from 1 to {MAX_WEIGHT}"),
        ));
    }
    if limits.ack_wait < Duration::from_secs(1) {
        return Err(config.error(format!("{at}.ack_wait"), "must be at least 1s"));
    }
    if limits.backoff.is_empty() {
        return Err(config.error(format!("{at}.backoff"), "needs at least one delay"));
    }
    if limits.max_retry_delay.is_zero() {
        return Err(config.error(format!("{at}.max_retry_delay"), "must be more than 0s"));
    }
    // Upper bounds keep every later sum, product and conversion (to the
    // server's nanoseconds, to semaphore permits) far from overflowing.
    if limits.max_in_flight > MAX_IN_FLIGHT_LIMIT {
        return Err(config.error(
            format!("{at}.max_in_flight"),
            format!("must be at most {MAX_IN_FLIGHT_LIMIT}"),
        ));
    }
    if limits.max_deliver > MAX_DELIVER_LIMIT {
        return Err(config.error(
            format!("{at}.max_deliver"),
            format!("must be at most {MAX_DELIVER_LIMIT}"),
        ));
    }
    let durations = [
        ("ack_wait", limits.ack_wait),
        ("max_retry_delay", limits.max_retry_delay),
    ]
    .into_iter()
    .chain(limits.backoff.iter().map(|d| ("backoff", *d)));
    for (key, d) in durations {
        if d > MAX_DURATION_LIMIT {
            return Err(config.error(format!("{at}.{key}"), "must be at most 30d"));
        }
    }
    Ok(())
}

fn check_nats(config: &Config, at: &str, nats: &NatsConfig) -> Result<(), ConfigError> {
    if nats.servers.is_empty() {
        return Err(config.error(format!("{at}.servers"), "needs at least one server URL"));
    }
    for (i, url) in nats.servers.iter().enumerate() {
        let scheme_ok = ["nats://", "tls://", "ws://", "wss://"]
            .iter()
            .any(|s| url.starts_with(s))
            || !url.contains("://");
        if !scheme_ok || url.trim().is_empty() {
            return Err(config.error(
                format!("{at}.servers[{i}]"),
                format!("`{url}` is not a NATS URL (nats://host:port)"),
            ));
        }
    }
    let methods = [
        nats.token.is_some(),
        nats.user.is_some() || nats.password.is_some(),
        nats.nkey_file.is_some(),
        nats.creds_file.is_some(),
    ];
    if methods.iter().filter(|m| **m).count() > 1 {
        return Err(config.error(
            at,
            "set only one of token, user/password, nkey_file and creds_file",
        ));
    }
    if nats.user.is_some() != nats.password.is_some() {
        let missing = if nats.user.is_some() {
            "password"
        } else {
            "user"
        };
        return Err(config.error(format!("{at}.{missing}"), "user and password go together"));
    }
    Ok(())
}

/// Turn a stage's TOML table into the flat key/value list `init` receives.
/// Errors carry the offending key (relative to `config`) and a message.
pub fn flatten_stage_config(
    table: &toml::Table,
) -> Result<Vec<(String, String)>, (String, String)> {
    fn walk(
        prefix: &str,
        table: &toml::Table,
        out: &mut Vec<(String, String)>,
    ) -> Result<(), (String, String)> {
        for (k, v) in table {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(t) => walk(&key, t, out)?,
                toml::Value::Array(items) => {
                    let mut parts = Vec::with_capacity(items.len());
                    for item in items {
                        parts.push(scalar(item).ok_or_else(|| {
                            (
                                key.clone(),
                                "arrays may only hold strings, numbers or booleans".to_owned(),
                            )
                        })?);
                    }
                    out.push((key, parts.join(",")));
                }
                other => {
                    let s = scalar(other)
                        .ok_or_else(|| (key.clone(), "unsupported value type".to_owned()))?;
                    out.push((key, s));
                }
            }
        }
        Ok(())
    }
    fn scalar(v: &toml::Value) -> Option<String> {
        match v {
            toml::Value::String(s) => Some(s.clone()),
            toml::Value::Integer(i) => Some(i.to_string()),
            toml::Value::Float(f) => Some(f.to_string()),
            toml::Value::Boolean(b) => Some(b.to_string()),
            toml::Value::Datetime(d) => Some(d.to_string()),
            _ => None,
        }
    }
    let mut out = Vec::new();
    walk("", table, &mut out)?;
    Ok(out)
}

/// The error and its causes on one line, as `a: b: c`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> Option<usize> {
    let start = span?.start.min(text.len());
    Some(
        text.as_bytes()[..start]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1,
    )
}

/// Add "did you mean" to serde's unknown-field message when a valid key is
/// close to the one written (a typo rather than a misplaced key).
fn suggest(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_owned();
    };
    let Some((unknown, expected)) = rest.split_once('`') else {
        return message.to_owned();
    };
    let best = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|k| (strsim::damerau_levenshtein(unknown, k), k))
        .min();
    match best {
        Some((d, k)) if d <= 2 || (d <= 3 && unknown.len() > 6) => {
            format!(
                "unknown field `{unknown}`; did you mean `{k}`? (expected one of{})",
                expected.trim_start_matches(", expected one of")
            )
        }
        _ => message.to_owned(),
    }
}

/// Parse a size such as `64MiB`, `512KiB`, `1GiB`, `1000000` (bytes).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a size (expected e.g. \"64MiB\")"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}` (use B, KiB, MiB, GiB, KB, MB or GB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size `{text}` is too large"))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| {
        format!("`{text}` is not a duration ({e}; expected e.g. \"30s\" or \"100ms\")")
    })
}

mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

mod opt_duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

mod duration_list {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let items = Vec::<String>::deserialize(d)?;
        items
            .iter()
            .map(|s| super::parse_duration(s))
            .collect::<Result<_, _>>()
            .map_err(serde::de::Error::custom)
    }
}

mod opt_duration_list {
    use serde::Deserializer;
    use std::time::Duration;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Duration>>, D::Error> {
        super::duration_list::deserialize(d).map(Some)
    }
}

mod bytes {
    use serde::{Deserialize, Deserializer};
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Number(u64),
        Text(String),
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match Size::deserialize(d)? {
            Size::Number(n) => Ok(n),
            Size::Text(s) => super::parse_bytes(&s).map_err(serde::de::Error::custom),
        }
    }
}

mod opt_bytes {
    use serde::Deserializer;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        super::bytes::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [plugins]
        dir = "dist"

        [tenants.acme]
        stream = "ACME"
        filter = "acme.in.>"
        output = "{tenant}.out.{subject[2..]}"
        dead_letter = "acme.dlq"
        max_in_flight = 10
        pipeline = [
            { plugin = "transform", config = { rename = { user = "customer" }, remove = ["a", "b"], n = 3 } },
        ]
    "#;

    #[test]
    fn a_good_config_loads_with_defaults() {
        let c = Config::parse(GOOD, Path::new("/etc/sluice/sluice.toml")).unwrap();
        let acme = &c.tenants["acme"];
        assert_eq!(acme.consumer, "sluice");
        let limits = c.limits(Some(acme));
        assert_eq!(limits.max_in_flight, 10);
        assert_eq!(limits.max_deliver, 5);
        assert_eq!(c.tenant_permits("acme").unwrap(), vec!["acme.out.>"]);
        let spec = c.plugin_spec("transform").unwrap();
        assert_eq!(spec.path, Path::new("/etc/sluice/dist/transform.wasm"));
        assert_eq!(spec.deadline, Duration::from_millis(100));
        let flat = flatten_stage_config(&acme.pipeline[0].config).unwrap();
        assert!(flat.contains(&("rename.user".into(), "customer".into())));
        assert!(flat.contains(&("remove".into(), "a,b".into())));
        assert!(flat.contains(&("n".into(), "3".into())));
    }

    #[test]
    fn weight_defaults_to_1_and_is_bounded_with_the_key_named() {
        let c = Config::parse(GOOD, Path::new("sluice.toml")).unwrap();
        assert_eq!(c.limits(Some(&c.tenants["acme"])).weight, 1);
        let weighted = GOOD.replace("max_in_flight = 10", "weight = 3");
        let c = Config::parse(&weighted, Path::new("sluice.toml")).unwrap();
        assert_eq!(c.limits(Some(&c.tenants["acme"])).weight, 3);
        for bad in ["weight = 0", "weight = 1001"] {
            let text = GOOD.replace("max_in_flight = 10", bad);
            let e = Config::parse(&text, Path::new("sluice.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("tenants.acme.weight") && e.contains("must be from 1 to 1000"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_bad_ordering_names_the_key_and_what_is_accepted() {
        let text = GOOD.replace("max_in_flight = 10", "ordering = \"field\"");
        let e = Config::parse(&text, Path::new("sluice.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tenants.acme.ordering") && e.contains("\"header:NAME\""),
            "{e}"
        );
        let text = GOOD.replace("max_in_flight = 10", "ordering = \"header:Order-Id\"");
        let c = Config::parse(&text, Path::new("sluice.toml")).unwrap();
        assert_eq!(
            c.limits(Some(&c.tenants["acme"])).ordering,
            Some(crate::ordering::OrderingKey::Header("Order-Id".into()))
        );
    }

    #[test]
    fn takeover_needs_exclusive_and_is_bounded() {
        for (keys, want) in [
            ("takeover = \"3s\"", "applies only with `exclusive = true`"),
            (
                "exclusive = true\ntakeover = \"0s\"",
                "must be from 1s to 1h",
            ),
        ] {
            let text = GOOD.replace("max_in_flight = 10", keys);
            let e = Config::parse(&text, Path::new("sluice.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("tenants.acme.takeover") && e.contains(want),
                "{e}"
            );
        }
        let text = GOOD.replace("max_in_flight = 10", "exclusive = true");
        let c = Config::parse(&text, Path::new("sluice.toml")).unwrap();
        assert_eq!(
            c.limits(Some(&c.tenants["acme"])).exclusive,
            Some(DEFAULT_TAKEOVER)
        );
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("10"), Ok(10));
        assert!(parse_bytes("12 parsecs").is_err());
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn the_duplicate_window_must_cover_the_redelivery_span() {
        let defaults = Config::default().limits(None);
        // 30 s × 6 + 1 s + 5 s + 30 s × 3.
        assert_eq!(defaults.redelivery_span(), Duration::from_secs(276));
        assert!(TenantDefaults::default().duplicate_window >= defaults.redelivery_span());
        let capped = TenantLimits {
            max_retry_delay: Duration::from_secs(2),
            ..defaults.clone()
        };
        assert_eq!(
            capped.redelivery_span(),
            Duration::from_secs(180 + 1 + 2 + 2 * 3)
        );
        let huge = TenantLimits {
            ack_wait: Duration::MAX,
            max_deliver: u32::MAX,
            ..defaults
        };
        assert_eq!(
            huge.redelivery_span(),
            Duration::MAX,
            "saturates, never panics"
        );

        let text = format!("[defaults]\nduplicate_window = \"1m\"\n{GOOD}")
            .replace("max_in_flight = 10", "output_stream = \"ACME_OUT\"");
        let c = Config::parse(&text, Path::new("/etc/sluice/sluice.toml")).unwrap();
        let e = c.check_duplicate_window().unwrap_err().to_string();
        assert!(
            e.contains("defaults.duplicate_window: 1m is shorter than tenant"),
            "{e}"
        );
    }
}
