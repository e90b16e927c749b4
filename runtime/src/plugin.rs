//! The plugins a configuration names, loaded and compiled once, and the
//! pipelines built from them. A pipeline is only handed out after each of its
//! stages has been instantiated and has accepted its config, so a config that
//! a plugin rejects is caught at start-up (and by `sluice check`), not on the
//! first message.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context as _;

use crate::config::{self, Config};
use crate::pipeline::{Pipeline, Stage};
use crate::subject::Template;
use crate::wasm::{Limits, Plugin, Runtime};

/// Plugins by name.
pub struct Registry {
    plugins: BTreeMap<String, Arc<Plugin>>,
}

impl Registry {
    /// Load every plugin some tenant of `config` uses.
    pub fn load(runtime: &Runtime, config: &Config) -> anyhow::Result<Self> {
        let mut plugins = BTreeMap::new();
        for name in config.used_plugins() {
            let spec = config
                .plugin_spec(&name)
                .map_err(|m| anyhow::anyhow!("{}: plugin `{name}`: {m}", config.file.display()))?;
            let limits = Limits {
                deadline: spec.deadline,
                memory: spec.memory,
            };
            let plugin = runtime
                .load_file(&name, &spec.path, limits)
                .with_context(|| format!("{}: loading plugin `{name}`", config.file.display()))?;
            tracing::info!(plugin = plugin.label(), path = %spec.path.display(), "plugin loaded");
            plugins.insert(name, plugin);
        }
        Ok(Registry { plugins })
    }

    /// The current version of plugin `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Plugin>> {
        self.plugins.get(name)
    }

    /// All loaded plugins.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Plugin>> {
        self.plugins.values()
    }

    /// Build tenant `id`'s pipeline, checking that every stage's plugin
    /// accepts its config.
    pub fn pipeline(&self, config: &Config, id: &str) -> anyhow::Result<Pipeline> {
        let file = config.file.display();
        let tenant = config
            .tenants
            .get(id)
            .with_context(|| format!("{file}: no tenant `{id}`"))?;
        let output = Template::parse(&tenant.output)
            .with_context(|| format!("{file}: tenants.{id}.output"))?;
        let permits = config.tenant_permits(id)?;
        let mut stages = Vec::with_capacity(tenant.pipeline.len());
        for (i, stage) in tenant.pipeline.iter().enumerate() {
            let key = format!("tenants.{id}.pipeline[{i}]");
            let plugin = self.get(&stage.plugin).with_context(|| {
                format!(
                    "{file}: {key}.plugin: plugin `{}` is not loaded",
                    stage.plugin
                )
            })?;
            let settings = config::flatten_stage_config(&stage.config)
                .map_err(|(k, m)| anyhow::anyhow!("{file}: {key}.config.{k}: {m}"))?;
            // Instantiate once now so a rejected config fails here, not on
            // the first message. The instance is dropped: workers make their
            // own.
            plugin
                .instantiate(id, &settings)
                .with_context(|| format!("{file}: {key}.config"))?;
            stages.push(Stage::new(plugin.clone(), settings));
        }
        Ok(Pipeline::new(id, output, permits, stages))
    }
}
