//! Plugin hot swap: compare the plugin folder with the registry, validate
//! each new version off the hot path (it loads, passes its golden cases,
//! and every stage that uses it accepts its config), then swap it in.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use sha2::{Digest, Sha256};

use super::Inner;
use crate::config::TenantConfig;
use crate::registry::{self, SwapError};
use crate::tenant::Tenant;

impl Inner {
    /// Compare the plugin folder with the registry: load new and changed
    /// files as candidates, swap those that pass, and unload removed ones
    /// that no pipeline uses.
    pub(super) async fn rescan_plugins(self: Arc<Self>) {
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
            let candidate = inner.registry.candidate(
                &name,
                &bytes,
                registry::limits_of(&spec),
                Some(&cases),
            )?;
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
}

/// `NAME.wasm` files in `dir` (hidden and temporary files skipped).
fn wasm_files(dir: &Path) -> Vec<(String, PathBuf)> {
    super::entries(
        dir,
        |p| p.is_file() && p.extension().is_some_and(|e| e == "wasm"),
        |p| p.file_stem(),
    )
}
