//! `sluice run` and `sluice provision`.

use std::path::Path;

use anyhow::Context as _;

use sluice::config::Config;
use sluice::service::Service;
use sluice::topology::{self, Connections, Report};

/// Run until SIGINT or SIGTERM, then shut down gracefully.
pub async fn run(path: &Path, metrics_addr: Option<std::net::SocketAddr>) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let metrics_addr = metrics_addr.or(config.host.metrics_addr);
    let mut service = Service::start(config).await?;
    if let Some(addr) = metrics_addr {
        service.serve_ops(addr).await?;
    }
    tracing::info!(tenants = service.tenants().len(), "sluice is running");
    shutdown_signal().await?;
    tracing::info!("shutting down: no more pulls, letting in-flight messages settle");
    service.shutdown().await;
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Create what is missing (or, with `verify`, only check), tenant by tenant;
/// print what was created and every difference found. Fails if anything is
/// missing (with `verify`) or cannot be created.
pub async fn provision(path: &Path, verify: bool) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let connections = Connections::default();
    let mut problems = Vec::new();
    for (id, tenant) in &config.tenants {
        let (client, _) = connections
            .get(topology::tenant_nats(&config, tenant), &config.base_dir)
            .await
            .with_context(|| format!("tenant `{id}`: connecting to NATS"))?;
        let js = topology::jetstream(client);
        let mut report = Report::default();
        let result = topology::ensure_tenant(&js, &config, id, tenant, !verify, &mut report).await;
        for created in &report.created {
            println!("{id}: created {created}");
        }
        for updated in &report.updated {
            println!("{id}: updated {updated}");
        }
        for warning in &report.warnings {
            println!("{id}: warning: {warning}");
        }
        match result {
            Ok(_) => println!("{id}: ok"),
            Err(e) => {
                let unreachable = !e.is_missing();
                let e = anyhow::Error::from(e);
                println!("{id}: {e:#}");
                let servers =
                    topology::redacted_servers(&topology::tenant_nats(&config, tenant).servers);
                if unreachable {
                    problems.push(format!(
                        "tenant `{id}`: {e:#} (is NATS at {servers} reachable?)"
                    ));
                } else {
                    problems.push(format!("tenant `{id}`: {e:#}"));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{}", problems.join("; "))
    }
}
