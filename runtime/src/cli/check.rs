//! `sluice check`: load the config, compile every plugin, and build every
//! tenant's pipeline (which runs each stage's `init` on its config). The
//! first problem ends the check with an error naming the file and key.

use std::path::Path;
use std::sync::Arc;

use sluice::config::Config;
use sluice::registry::Registry;
use sluice::wasm::Runtime;

pub fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    config.check_duplicate_window()?;
    let runtime = Arc::new(Runtime::new(sluice::config::cache_dir(Some(&config)))?);
    let registry = Registry::load(runtime, &config)?;
    for id in config.tenants.keys() {
        registry.pipeline(&config, id)?;
    }
    // Whether a plugin takes batches is worth seeing: it is a property of
    // the component (its world), not of the config.
    let plugins: Vec<String> = registry
        .all()
        .iter()
        .map(|p| {
            if p.batches() {
                format!("{} (batch)", p.label())
            } else {
                p.label().to_owned()
            }
        })
        .collect();
    println!(
        "{}: ok ({} tenant{}, plugins: {})",
        path.display(),
        config.tenants.len(),
        if config.tenants.len() == 1 { "" } else { "s" },
        if plugins.is_empty() {
            "none".to_owned()
        } else {
            plugins.join(", ")
        }
    );
    Ok(())
}
