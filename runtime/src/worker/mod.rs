//! Where the verdict rules meet the guest instances: a tenant's
//! [`Pipeline`] (its [`Chain`] of rules and the plugin [`Stage`]s that feed
//! it), and the worker threads that run its guest calls off the reactor
//! ([`pool`]), scheduled fairly between tenants ([`fair`]).

pub mod fair;
pub mod pool;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::pipeline::Chain;
use crate::subject::Template;
use crate::wasm::Plugin;

/// One stage: a plugin version with its config, belonging to one tenant's
/// pipeline. Its `id` keys the live instances that serve it, so instances
/// never cross tenants or versions.
#[derive(Debug)]
pub struct Stage {
    /// Unique for the life of the process.
    pub id: u64,
    /// The plugin version.
    pub plugin: Arc<Plugin>,
    /// Passed to `init`.
    pub config: Vec<(String, String)>,
}

impl Stage {
    /// A stage with a fresh id.
    pub fn new(plugin: Arc<Plugin>, config: Vec<(String, String)>) -> Arc<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Arc::new(Stage {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            plugin,
            config,
        })
    }
}

/// A tenant's pipeline: the chain's rules and the stages that feed it.
#[derive(Debug)]
pub struct Pipeline {
    /// The verdict rules.
    pub chain: Chain,
    /// The stages, in order.
    pub stages: Vec<Arc<Stage>>,
}

impl Pipeline {
    /// Build from stages; labels come from the plugin versions.
    pub fn new(
        tenant: &str,
        output: Template,
        permits: Vec<String>,
        stages: Vec<Arc<Stage>>,
    ) -> Self {
        Pipeline {
            chain: Chain {
                tenant: tenant.to_owned(),
                output,
                permits,
                labels: stages.iter().map(|s| s.plugin.label().to_owned()).collect(),
                caps: stages.iter().map(|s| s.plugin.limits().outputs).collect(),
            },
            stages,
        }
    }
}
