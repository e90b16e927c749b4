//! Binding a tenant's consumer: verify (or provision) its streams and
//! consumer, and keep trying until it works or the tenant stops.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, TenantConfig};
use crate::topology::{self, Report};

/// A missing stream or consumer is re-checked this often: the operator may
/// be provisioning it right now.
const MISSING_RECHECK: Duration = Duration::from_secs(5);

/// Bind (or provision) the tenant's consumer, retrying until it works or
/// `cancel`; `None` if cancelled.
pub(super) async fn bind(
    id: &str,
    js: &async_nats::jetstream::Context,
    config: &Config,
    tenant_config: &TenantConfig,
    cancel: &CancellationToken,
) -> Option<async_nats::jetstream::consumer::PullConsumer> {
    let mut pause = Duration::from_millis(200);
    loop {
        let mut report = Report::default();
        let attempt = topology::ensure_tenant(
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
                let servers = topology::redacted_servers(
                    &topology::tenant_nats(config, tenant_config).servers,
                );
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
