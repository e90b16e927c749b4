//! The host under test: its generated config (or `--config`'s tenants) and
//! its two phases, run in process through `Service`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use async_nats::jetstream;

use super::BenchArgs;
use super::load::{Input, preload, publish_apart};
use super::measure::{
    fill_latency, merge_latency, per_second, reset_latency, settled, span_of, wait_done,
};
use super::procfs::Cpu;
use super::report::SystemResult;
use sluice::config::Config;
use sluice::service::Service;

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
    let mut text = config_head(url, &plugins_dir(args)?, args.max_in_flight);
    let mut inputs = Vec::new();
    for t in 0..args.tenants() {
        let id = format!("bench{t}");
        inputs.push(own_streams_tenant(
            &mut text,
            &id,
            &format!("SLUICE{run_id}T{t}"),
        ));
    }
    let config = Config::parse(&text, Path::new("bench.toml"))?;
    Ok((config, inputs, 3))
}

/// `--plugins`, absolute, once it is known to hold the reference plugins.
pub(super) fn plugins_dir(args: &BenchArgs) -> anyhow::Result<PathBuf> {
    let plugins = std::path::absolute(&args.plugins).unwrap_or_else(|_| args.plugins.clone());
    if !plugins.join("transform.wasm").is_file() {
        bail!(
            "{} has no transform.wasm: build the reference plugins with scripts/build-plugins, or pass --plugins DIR",
            plugins.display()
        );
    }
    Ok(plugins)
}

/// The start of a generated config: the server, provisioning on, the
/// plugins folder and the in-flight limit; tenants follow.
pub(super) fn config_head(url: &str, plugins: &Path, max_in_flight: usize) -> String {
    format!(
        "[nats]\nservers = [{url:?}]\n[host]\nprovision = true\n[plugins]\ndir = {:?}\n[defaults]\nmax_in_flight = {}\n",
        plugins.display().to_string(),
        max_in_flight
    )
}

/// Append tenant `id` to a generated config, with streams of its own
/// (`{stream}`, `{stream}_OUT`, `{stream}_DLQ`) and the reference
/// pipeline; returns where its inputs go.
pub(super) fn own_streams_tenant(text: &mut String, id: &str, stream: &str) -> Input {
    let (out, dlq) = (format!("{stream}_OUT"), format!("{stream}_DLQ"));
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
{}"#,
        reference_pipeline("{tenant}.out")
    );
    Input {
        subject: format!("{id}.in.orders"),
        streams: vec![stream.to_owned(), out, dlq],
    }
}

/// The three reference stages as a tenant's `pipeline` key: transform
/// (rename, remove, set), tenant-stamp, and route, which sends orders to
/// `{out}.orders` and anything else to `{out}.other` (`out` may use
/// `{tenant}`).
pub(super) fn reference_pipeline(out: &str) -> String {
    format!(
        r#"pipeline = [
    {{ plugin = "transform", config = {{ rename = {{ user = "customer" }}, remove = "debug", set = {{ schema = "2" }} }} }},
    {{ plugin = "tenant-stamp" }},
    {{ plugin = "route", config = {{ rule = {{ 1 = {{ field = "type", equals = "order", to = "{out}.orders" }} }}, unmatched = "{out}.other" }} }},
]
"#
    )
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
        let mut report = sluice::topology::Report::default();
        sluice::topology::ensure_tenant(js, &config, id, tenant, true, &mut report)
            .await
            .with_context(|| format!("provisioning bench tenant {id}"))?;
    }
    preload(js, inputs, args.messages, payload).await?;
    let service = Service::start(config).await?;
    // Taken once the host has loaded its plugins, as the baseline's is
    // once its loops are spawned: loading is not per-message work (it was
    // 0.18 s, 7 % of a 200,000-message phase).
    let cpu = Cpu::now(args.server_pid);
    let done = |service: &Service| -> u64 { service.stats().values().map(settled).sum() };
    let timeline = wait_done(args.messages, "sluice", || done(&service)).await?;
    let tenants = service.tenants();
    let processed = done(&service);
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
    let before = done(&service);
    let sent = publish_apart(js, url, inputs, rate, args.latency_phase(), payload).await?;
    wait_done(before + sent, "", || done(&service)).await?;
    let merged = merge_latency(tenants.values().map(|t| &*t.stats));
    fill_latency(&mut result, &merged, rate, sent, args.trace.is_some());
    service.shutdown().await;
    Ok(result)
}

/// The three reference plugins of the generated pipeline.
const REFERENCE_PLUGINS: [&str; 3] = ["transform", "tenant-stamp", "route"];

/// A temporary plugins folder with only the reference plugins, copied from
/// `--plugins`. The host loads every plugin in its folder, and
/// plugins/dist also holds the Python and JavaScript builds, which no bench
/// tenant runs but which would add their memory and compile time to every
/// figure. The copies have the same digests, so the compile cache serves
/// them.
pub(super) fn reference_plugins(args: &BenchArgs) -> anyhow::Result<tempfile::TempDir> {
    let from = plugins_dir(args)?;
    let dir = tempfile::Builder::new()
        .prefix("sluice-bench-plugins-")
        .tempdir()?;
    for name in REFERENCE_PLUGINS {
        let file = format!("{name}.wasm");
        std::fs::copy(from.join(&file), dir.path().join(&file))
            .with_context(|| format!("copying {}", from.join(&file).display()))?;
    }
    Ok(dir)
}
