//! The host under test: its generated config (or `--config`'s tenants) and
//! its two phases, run in process through `Service`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, bail};
use async_nats::jetstream;

use sluice::config::Config;
use sluice::service::Service;
use sluice::telemetry::TenantStats;

use super::BenchArgs;
use super::load::{Input, preload, publish_apart};
use super::measure::{fill_latency, per_second, reset_latency, span_of, wait_done};
use super::procfs::Cpu;
use super::report::SystemResult;

/// The config the host runs: generated (three reference plugins per tenant)
/// or, with `--config`, that file's tenants. Returns it with each tenant's
/// input and the number of stages.
pub(super) fn sluice_config(
    args: &BenchArgs,
    url: &str,
    run_id: &str,
) -> anyhow::Result<(Config, Vec<Input>, usize)> {
    if let Some(path) = &args.config {
        let mut config = Config::load(path)?;
        config.nats.servers = vec![url.to_owned()];
        config.host.provision = true;
        let mut inputs = Vec::new();
        for tenant in config.tenants.values_mut() {
            tenant.nats = None;
            tenant.max_in_flight = Some(args.max_in_flight);
            let mut streams = vec![tenant.stream.clone()];
            streams.extend(tenant.output_stream.clone());
            streams.extend(tenant.dead_letter_stream.clone());
            inputs.push(Input {
                subject: sluice::subject::concrete(&tenant.filter, "bench"),
                streams,
            });
        }
        let stages = config
            .tenants
            .values()
            .next()
            .map_or(0, |t| t.pipeline.len());
        return Ok((config, inputs, stages));
    }
    let plugins = std::path::absolute(&args.plugins).unwrap_or_else(|_| args.plugins.clone());
    if !plugins.join("transform.wasm").is_file() {
        bail!(
            "{} has no transform.wasm: build the reference plugins with scripts/build-plugins, or pass --plugins DIR",
            plugins.display()
        );
    }
    let mut text = format!(
        "[nats]\nservers = [{url:?}]\n[host]\nprovision = true\n[plugins]\ndir = {:?}\n[defaults]\nmax_in_flight = {}\n",
        plugins.display().to_string(),
        args.max_in_flight
    );
    let mut inputs = Vec::new();
    for t in 0..args.tenants {
        let id = format!("bench{t}");
        let (stream, out, dlq) = (
            format!("SLUICE{run_id}T{t}"),
            format!("SLUICE{run_id}T{t}_OUT"),
            format!("SLUICE{run_id}T{t}_DLQ"),
        );
        let _ = write!(
            text,
            r#"
[tenants.{id}]
stream = "{stream}"
filter = "{id}.in.>"
output = "{{tenant}}.out.{{subject[2..]}}"
dead_letter = "{id}.dlq"
output_stream = "{out}"
dead_letter_stream = "{dlq}"
pipeline = [
    {{ plugin = "transform", config = {{ rename = {{ user = "customer" }}, remove = "debug", set = {{ schema = "2" }} }} }},
    {{ plugin = "tenant-stamp" }},
    {{ plugin = "route", config = {{ rule = {{ 1 = {{ field = "type", equals = "order", to = "{{tenant}}.out.orders" }} }}, unmatched = "{{tenant}}.out.other" }} }},
]
"#
        );
        inputs.push(Input {
            subject: format!("{id}.in.orders"),
            streams: vec![stream, out, dlq],
        });
    }
    let config = Config::parse(&text, Path::new("bench.toml"))?;
    Ok((config, inputs, 3))
}

pub(super) async fn run_sluice(
    js: &jetstream::Context,
    url: &str,
    config: Config,
    inputs: &[Input],
    args: &BenchArgs,
    payload: &[u8],
) -> anyhow::Result<SystemResult> {
    // Provision and load before the host starts, as for the baseline, so
    // both are timed on a full backlog from their first pull.
    for (id, tenant) in &config.tenants {
        let mut report = sluice::source::Report::default();
        sluice::source::ensure_tenant(js, &config, id, tenant, true, &mut report)
            .await
            .with_context(|| format!("provisioning bench tenant {id}"))?;
    }
    preload(js, inputs, args.messages, payload).await?;
    let service = Service::start(config).await?;
    // Taken once the host has loaded its plugins, as the baseline's is
    // once its loops are spawned: loading is not per-message work (it was
    // 0.18 s, 7 % of a 200,000-message phase).
    let cpu = Cpu::now(args.server_pid);
    let settled = |service: &Service| -> u64 {
        service
            .stats()
            .values()
            .map(|s| s.acked + s.dead_lettered)
            .sum()
    };
    let timeline = wait_done(args.messages, "sluice", || settled(&service)).await?;
    let tenants = service.tenants();
    let processed = settled(&service);
    let (first, last) = span_of(tenants.values().map(|t| &*t.stats));
    let mut result = SystemResult {
        processed,
        timeline,
        msgs_per_sec: per_second(processed, first, last),
        ..Default::default()
    };
    cpu.fill(&mut result);
    for t in tenants.values() {
        reset_latency(&t.stats);
    }
    let rate = (result.msgs_per_sec * args.latency_load).max(1.0);
    let before = settled(&service);
    let sent = publish_apart(js, url, inputs, rate, args.latency_phase, payload).await?;
    wait_done(before + sent, "", || settled(&service)).await?;
    let merged = TenantStats::default();
    if let Ok(mut into) = merged.latency.lock() {
        let mut trace = Vec::new();
        for t in tenants.values() {
            if let Ok(mut l) = t.stats.latency.lock() {
                let _ = into.histogram.add(&l.histogram);
                trace.extend(l.trace.take().unwrap_or_default());
            }
        }
        trace.sort_unstable();
        into.trace = Some(trace);
    }
    fill_latency(&mut result, &merged, rate, sent, args.trace.is_some());
    service.shutdown().await;
    Ok(result)
}
