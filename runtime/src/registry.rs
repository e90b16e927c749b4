//! The plugin registry: each plugin name's current compiled version, and the
//! pipelines built from them.
//!
//! A pipeline is only handed out after each of its stages has been
//! instantiated and has accepted its config, so a config that a plugin
//! rejects is caught at start-up (and by `sluice check`), and a new version
//! that rejects a stage's config is never swapped in. Versions are
//! immutable `Arc<Plugin>`s: swapping one in replaces the map entry and the
//! affected tenants' pipelines; messages already admitted keep the pipeline
//! (and so the versions) they started with.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context as _;

use crate::cases::Cases;
use crate::config::{self, Config, TenantConfig};
use crate::subject::Template;
use crate::wasm::{Plugin, PluginLimits, Runtime};
use crate::worker::{Pipeline, Stage};

/// Plugins by name, with their current version.
pub struct Registry {
    runtime: Arc<Runtime>,
    plugins: RwLock<BTreeMap<String, Arc<Plugin>>>,
}

/// Why a candidate version was refused.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// Not loadable: unreadable, not a component, not a handler.
    #[error(transparent)]
    Load(#[from] crate::wasm::WasmError),
    /// `NAME.cases.json` could not be read.
    #[error(transparent)]
    Cases(#[from] crate::cases::CasesError),
    /// Golden cases failed.
    #[error("failed {failed} of {total} golden cases in {}: {details}", file.display())]
    CasesFailed {
        /// The cases file.
        file: PathBuf,
        /// How many failed.
        failed: usize,
        /// How many there are.
        total: usize,
        /// The failures, joined.
        details: String,
    },
    /// A stage that uses the plugin cannot be built with the new version.
    #[error("tenant `{tenant}`: {cause:#}")]
    Stage {
        /// The tenant.
        tenant: String,
        /// Why.
        cause: anyhow::Error,
    },
}

impl Registry {
    /// An empty registry.
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Registry {
            runtime,
            plugins: RwLock::new(BTreeMap::new()),
        }
    }

    /// Load every plugin some tenant of `config` uses; any failure is an
    /// error naming the plugin.
    pub fn load(runtime: Arc<Runtime>, config: &Config) -> anyhow::Result<Self> {
        let registry = Registry::new(runtime);
        for name in config.used_plugins() {
            let spec = config
                .plugin_spec(&name)
                .map_err(|m| anyhow::anyhow!("{}: plugin `{name}`: {m}", config.file.display()))?;
            let plugin = registry
                .runtime
                .load_file(&name, &spec.path, limits_of(&spec))
                .with_context(|| format!("{}: loading plugin `{name}`", config.file.display()))?;
            tracing::info!(plugin = plugin.label(), path = %spec.path.display(), "plugin loaded");
            registry.insert(plugin);
        }
        Ok(registry)
    }

    /// The runtime plugins are compiled with.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The current version of plugin `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        self.plugins.read().ok()?.get(name).cloned()
    }

    /// Make `plugin` the current version of its name; returns the previous.
    pub fn insert(&self, plugin: Arc<Plugin>) -> Option<Arc<Plugin>> {
        let mut map = self.plugins.write().unwrap_or_else(|p| p.into_inner());
        map.insert(plugin.name().to_owned(), plugin)
    }

    /// Forget plugin `name`.
    pub fn remove(&self, name: &str) -> Option<Arc<Plugin>> {
        let mut map = self.plugins.write().unwrap_or_else(|p| p.into_inner());
        map.remove(name)
    }

    /// Every current version.
    pub fn all(&self) -> Vec<Arc<Plugin>> {
        self.plugins
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Load a candidate version of `name` from `bytes` and run its golden
    /// cases (`cases`, when the file exists). Nothing is swapped yet.
    pub fn candidate(
        &self,
        name: &str,
        bytes: &[u8],
        limits: PluginLimits,
        cases: Option<&Path>,
    ) -> Result<Arc<Plugin>, SwapError> {
        let plugin = self.runtime.load(name, bytes, limits)?;
        if let Some(file) = cases.filter(|f| f.is_file()) {
            let cases = Cases::load(file)?;
            let failures = cases.run(&plugin);
            if !failures.is_empty() {
                return Err(SwapError::CasesFailed {
                    file: file.to_owned(),
                    failed: failures.len(),
                    total: cases.len(),
                    details: failures.join("; "),
                });
            }
        }
        Ok(plugin)
    }

    /// Build tenant `id`'s pipeline from its config in `config`.
    pub fn pipeline(&self, config: &Config, id: &str) -> anyhow::Result<Pipeline> {
        let tenant = config
            .tenants
            .get(id)
            .with_context(|| format!("{}: no tenant `{id}`", config.file.display()))?;
        self.pipeline_for(config, id, tenant, None)
    }

    /// Build a pipeline for tenant `id` configured as `tenant`, using the
    /// current versions — or `candidate` for its name. Every stage is
    /// instantiated once to check that it accepts its config.
    pub fn pipeline_for(
        &self,
        config: &Config,
        id: &str,
        tenant: &TenantConfig,
        candidate: Option<&Arc<Plugin>>,
    ) -> anyhow::Result<Pipeline> {
        let file = config.file.display();
        let output = Template::parse(&tenant.output)
            .with_context(|| format!("{file}: tenants.{id}.output"))?;
        let permits = config.permits_of(id, tenant)?;
        let mut stages = Vec::with_capacity(tenant.pipeline.len());
        for (i, stage) in tenant.pipeline.iter().enumerate() {
            let key = format!("tenants.{id}.pipeline[{i}]");
            let plugin = match candidate {
                Some(c) if c.name() == stage.plugin => c.clone(),
                _ => self.get(&stage.plugin).with_context(|| {
                    format!(
                        "{file}: {key}.plugin: plugin `{}` is not loaded",
                        stage.plugin
                    )
                })?,
            };
            let settings = config::flatten_stage_config(&stage.config)
                .map_err(|(k, m)| anyhow::anyhow!("{file}: {key}.config.{k}: {m}"))?;
            // Instantiate once now so a rejected config fails here, not on
            // the first message. The instance is dropped: workers make their
            // own.
            plugin
                .instantiate(id, &settings)
                .with_context(|| format!("{file}: {key}.config"))?;
            stages.push(Stage::new(plugin, settings));
        }
        Ok(Pipeline::new(id, output, permits, stages))
    }
}

/// The wasm limits of a plugin spec.
pub fn limits_of(spec: &config::PluginSpec) -> PluginLimits {
    let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    PluginLimits {
        deadline: spec.deadline,
        memory: spec.memory,
        outputs: crate::message::OutputCaps {
            max_outputs: size(spec.max_outputs),
            max_bytes: size(spec.max_output_bytes),
            max_subject: size(spec.max_subject_bytes),
        },
        log_lines_per_second: spec.log_lines_per_second,
    }
}
