//! `sluice dev`: the whole thing on one machine. A throwaway nats-server with
//! JetStream, the example tenants and plugins (streams provisioned), sample
//! traffic at a gentle rate, and a live per-tenant summary until Ctrl-C.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use sluice::config::Config;
use sluice::nats_server::NatsServer;
use sluice::service::Service;

/// Arguments of `sluice dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// The config to run; its NATS servers are replaced by the local one.
    #[arg(long, default_value = "examples/dev.toml")]
    config: PathBuf,
    /// The nats-server binary.
    #[arg(long, default_value = "nats-server")]
    nats_server: PathBuf,
    /// Sample messages published per second, across tenants (0: none).
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// Seconds between summary lines.
    #[arg(long, default_value_t = 2)]
    every: u64,
    /// Serve /metrics, /healthz and /readyz here.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
}

/// Sample events: orders and refunds route, audit events route by subject,
/// and the rest shows the dead-letter path.
const SAMPLES: &[(&str, &str)] = &[
    (
        "in.orders",
        r#"{"type":"order","id":"o-{n}","user":"ann","total":42.5,"debug":{"trace":true},"tenant_id":"mallory"}"#,
    ),
    (
        "in.refunds",
        r#"{"type":"refund","id":"r-{n}","user":"bob","amount":7,"internal":"x"}"#,
    ),
    (
        "in.audit.login",
        r#"{"type":"login","user":"cy","at":"2026-11-24T00:00:00Z"}"#,
    ),
    ("in.misc", r#"{"type":"unknown","n":{n}}"#),
    ("in.broken", "this is not json {n}"),
];

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let mut config = Config::load(&args.config)?;
    let server = tokio::task::spawn_blocking({
        let binary = args.nats_server.clone();
        move || NatsServer::start_with(&binary, None)
    })
    .await
    .context("starting nats-server")??;
    println!(
        "nats-server with JetStream at {} (store {})",
        server.url(),
        server.store_dir().display()
    );
    config.nats.servers = vec![server.url()];
    for tenant in config.tenants.values_mut() {
        tenant.nats = None;
    }
    config.host.provision = true;
    let tenants: Vec<String> = config.tenants.keys().cloned().collect();
    let mut service = Service::start(config).await?;
    if let Some(addr) = args.metrics_addr {
        let local = service.serve_ops(addr).await?;
        println!("metrics at http://{local}/metrics");
    }
    println!(
        "tenants: {}; publishing {} sample messages/s; Ctrl-C to stop",
        tenants.join(", "),
        args.rate
    );

    let client = async_nats::connect(server.url())
        .await
        .context("connecting the traffic generator")?;
    let traffic = tokio::spawn(traffic(client, tenants.clone(), args.rate));
    let mut ticker = tokio::time::interval(Duration::from_secs(args.every.max(1)));
    ticker.tick().await;
    let signal = super::run::shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                for (id, s) in service.stats() {
                    println!(
                        "{id:>10}: processed {:>6}  published {:>6} ({:>6} outputs)  dead-lettered {:>5}  retried {:>5}  failures {:>4}",
                        s.received, s.published, s.outputs, s.dead_lettered, s.retried, s.failures
                    );
                }
            }
            r = &mut signal => { r?; break; }
        }
    }
    println!("stopping");
    traffic.abort();
    service.shutdown().await;
    drop(server);
    println!("stopped");
    Ok(())
}

async fn traffic(client: async_nats::Client, tenants: Vec<String>, rate: u32) {
    if rate == 0 || tenants.is_empty() {
        return;
    }
    let js = async_nats::jetstream::new(client);
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut n: u64 = 0;
    loop {
        ticker.tick().await;
        let tenant = &tenants[(n as usize) % tenants.len()];
        let (suffix, body) = SAMPLES[(n as usize / tenants.len()) % SAMPLES.len()];
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Correlation-Id", format!("dev-{n}").as_str());
        let subject = format!("{tenant}.{suffix}");
        let body = body.replace("{n}", &n.to_string());
        // Await the PubAck so a stream that is not there yet is noticed;
        // a failure just drops this sample.
        if let Ok(ack) = js.publish_with_headers(subject, headers, body.into()).await {
            let _ = ack.await;
        }
        n += 1;
    }
}
