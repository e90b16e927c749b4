//! `--mode scale`: many tenants on one host. Every tenant has its own
//! durable consumer and the reference pipeline; by default they share one
//! input stream (`SCALE_IN`, tenant `t-i` filtering `scale.in.t-i.>`),
//! with `--accounts` each is in a NATS account of its own with its own
//! user, connection and streams.
//!
//! Measured: how long from `Service::start` until every consumer is bound
//! (what `/readyz` waits for), the CPU of the host and of the server while
//! every tenant sits idle, resident memory before, when ready and after the
//! idle period (and so per tenant), and then that a few messages per
//! tenant are all processed: a run where any tenant misses one fails,
//! naming the tenants.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, stream};
use futures::StreamExt as _;
use serde::Serialize;

use sluice::config::Config;
use sluice::service::Service;
use sluice::stats::{TenantStats, now_micros};

use super::BenchArgs;
use super::load::{Input, delete_streams, preload, sample_payload};
use super::measure::{
    merge_latency, progress, quantile_ms, reset_latency, settled, take_trace, wait_bound,
    wait_done_within,
};
use super::procfs::{Usage, rss_mib};
use super::report::write_json;
use super::sluice::{config_head, reference_pipeline, reference_plugins};

/// Options of `--mode scale`.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Scale mode")]
pub struct ScaleArgs {
    /// How long every tenant stays idle once ready, while the host's and
    /// the server's CPU are measured.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    idle: Duration,
    /// Messages published to each tenant after the idle period; every one
    /// must be processed.
    #[arg(long, default_value_t = 5)]
    per_tenant: u64,
    /// Each tenant in its own NATS account (user, connection, streams), on
    /// a nats-server this bench configures (not with `--url`).
    #[arg(long)]
    pub(super) accounts: bool,
}

/// How long the settling may stand still beyond the consumers' ack_wait: a
/// message delivered to a pull the host no longer reads is redelivered
/// after ack_wait, and the host's next pull may take another pull expiry
/// (5 s) to come.
const REDELIVERY_MARGIN: Duration = Duration::from_secs(15);
/// A message of the settling phase slower than this waited for something
/// other than the pipeline (on this machine each takes a few ms).
const SLOW: Duration = Duration::from_secs(1);
/// Provisioning calls in flight at once: the server's JetStream API takes
/// them one by one anyway; a few in flight hide the round trips without
/// queueing thousands of requests.
const PROVISION_CONCURRENCY: usize = 16;

/// What `--mode scale` reports (and `--json` writes).
#[derive(Debug, Serialize)]
pub struct ScaleReport {
    /// Tenants on the host.
    pub tenants: usize,
    /// Whether each tenant had its own account and connection.
    pub accounts: bool,
    /// Provisioning streams and consumers beforehand, by the bench, s
    /// (not part of the host's figures).
    pub provision_s: f64,
    /// From `Service::start` until it returned (plugins loaded, every
    /// tenant's task started), s.
    pub start_s: f64,
    /// From `Service::start` until every tenant's consumer was bound, s.
    pub ready_s: f64,
    /// The idle period, s.
    pub idle_s: f64,
    /// This process's CPU over the idle period, % of one core.
    pub host_idle_cpu_pct: f64,
    /// The server's CPU over the idle period, % of one core (unknown with
    /// `--url`).
    pub server_idle_cpu_pct: Option<f64>,
    /// This process's resident memory before the host started, MiB.
    pub rss_before_mib: f64,
    /// … once every tenant was ready.
    pub rss_ready_mib: f64,
    /// … after the idle period.
    pub rss_idle_mib: f64,
    /// (RSS after idle − RSS before start) / tenants, KiB.
    pub per_tenant_kib: f64,
    /// The server's resident memory before the host started and after the
    /// idle period, MiB (unknown with `--url`).
    pub server_rss_mib: Option<(f64, f64)>,
    /// Messages published to each tenant after the idle period.
    pub per_tenant_messages: u64,
    /// From the first of them published until all were settled, s.
    pub settle_s: f64,
    /// Their latency (stored to output PubAck), median, ms.
    pub settle_p50_ms: f64,
    /// 99th percentile, ms.
    pub settle_p99_ms: f64,
    /// Largest, ms.
    pub settle_max_ms: f64,
    /// How many of them took over a second.
    pub slow_messages: u64,
    /// Messages settled by the end of the wait (every one, in a good run).
    pub settled_messages: u64,
    /// Outputs the output streams stored.
    pub outputs_stored: u64,
    /// Tenants that had not processed all of their messages by the end of
    /// the wait, with their counts (none, in a good run).
    pub missing_tenants: Vec<String>,
}

/// How to reach one account's streams, and where its tenants' inputs go.
struct Account {
    js: jetstream::Context,
    inputs: Vec<Input>,
}

/// Each tenant's account, by index into the accounts.
type Owners = std::collections::HashMap<String, usize>;

pub(super) async fn run(mut args: BenchArgs) -> anyhow::Result<()> {
    let (n, k) = (args.tenants(), args.scale.per_tenant);
    if n == 0 || k == 0 {
        bail!("--tenants and --per-tenant must be at least 1");
    }
    if args.scale.accounts && args.url.is_some() {
        bail!("--accounts needs a nats-server the bench configures; leave out --url");
    }
    let secret = format!("{:x}", now_micros());
    let password = |i: usize| format!("pw-{i}-{secret}");
    let server_conf = args.scale.accounts.then(|| accounts_conf(n, password));
    let (server, url) = args.server(server_conf).await?;
    let server_pid = args.server_pid.map(|p| p.to_string());
    let plugins = reference_plugins(&args)?;
    let mut text = config_head(&url, plugins.path(), args.max_in_flight);
    let mut accounts = Vec::new();
    let mut owners = Owners::new();
    for i in 0..n {
        let id = format!("t-{i}");
        let nats = if args.scale.accounts {
            format!(
                "nats = {{ servers = [{url:?}], user = {id:?}, password = {:?} }}\n",
                password(i)
            )
        } else {
            String::new()
        };
        let _ = write!(
            text,
            r#"
[tenants.{id}]
stream = "SCALE_IN"
consumer = "{id}"
filter = "scale.in.{id}.>"
output = "scale.out.{{tenant}}.{{subject[3..]}}"
dead_letter = "scale.dlq.{id}"
output_stream = "SCALE_OUT"
dead_letter_stream = "SCALE_DLQ"
{nats}{}"#,
            reference_pipeline("scale.out.{tenant}")
        );
        let input = Input {
            subject: format!("scale.in.{id}.orders"),
            streams: ["SCALE_IN", "SCALE_OUT", "SCALE_DLQ"]
                .map(String::from)
                .to_vec(),
        };
        if args.scale.accounts || accounts.is_empty() {
            let client = if args.scale.accounts {
                async_nats::ConnectOptions::with_user_and_password(id.clone(), password(i))
                    .connect(&url)
                    .await
            } else {
                async_nats::connect(&url).await
            }
            .with_context(|| format!("connecting to {url} for tenant {id}"))?;
            accounts.push(Account {
                js: sluice::topology::jetstream(client),
                inputs: Vec::new(),
            });
        }
        if let Some(account) = accounts.last_mut() {
            account.inputs.push(input);
        }
        owners.insert(id, accounts.len() - 1);
    }
    let config = Config::parse(&text, Path::new("bench-scale.toml"))?;
    let ack_wait = config.limits(None).ack_wait;
    let layout = if args.scale.accounts {
        format!("{n} tenants, each in its own account with its own streams and connection")
    } else {
        format!("{n} tenants on one shared input stream (SCALE_IN), each its own consumer")
    };
    eprintln!("scale: {layout}, 3 stages each");
    let provisioned = Instant::now();
    provision(&accounts, &owners, &config).await?;
    let provision_s = provisioned.elapsed().as_secs_f64();

    let rss_before = rss_mib("self");
    let server_rss_before = server_pid.as_deref().map(rss_mib);
    let started = Instant::now();
    let service = Service::start(config).await?;
    let start_s = started.elapsed().as_secs_f64();
    let tenants: Vec<(String, Arc<TenantStats>)> = service
        .tenants()
        .into_iter()
        .map(|(id, t)| (id, t.stats.clone()))
        .collect();
    wait_bound(&tenants, n).await?;
    let ready_s = started.elapsed().as_secs_f64();
    let rss_ready = rss_mib("self");

    eprintln!("ready in {ready_s:.2} s; idle for {:?}", args.scale.idle);
    let host_cpu = Usage::start("self");
    let server_cpu = server_pid.as_deref().map(Usage::start);
    tokio::time::sleep(args.scale.idle).await;
    let host_idle_cpu_pct = host_cpu.percent();
    let server_idle_cpu_pct = server_cpu.as_ref().map(Usage::percent);
    let rss_idle = rss_mib("self");
    let server_rss_idle = server_pid.as_deref().map(rss_mib);

    let payload = sample_payload(args.payload_bytes);
    for (_, s) in &tenants {
        reset_latency(s);
    }
    let publishing = Instant::now();
    for account in &accounts {
        preload(
            &account.js,
            &account.inputs,
            k * account.inputs.len() as u64,
            &payload,
        )
        .await?;
    }
    let done = || -> u64 { tenants.iter().map(|(_, s)| settled(&s.snapshot())).sum() };
    let expected = k * n as u64;
    // A message may wait for a redelivery (ack_wait) more than once; the
    // limit gives it two, then reports what is still missing.
    let limit = ack_wait * 2 + REDELIVERY_MARGIN;
    let stall = ack_wait + REDELIVERY_MARGIN;
    let waited =
        tokio::time::timeout(limit, wait_done_within(expected, "settling", stall, done)).await;
    let settle_s = publishing.elapsed().as_secs_f64();
    let settled_messages = done();
    let merged = merge_latency(tenants.iter().map(|(_, s)| &**s));
    let mut latencies: Vec<u64> = take_trace(&merged).into_iter().map(|(_, l)| l).collect();
    latencies.sort_unstable();
    let slow_messages = latencies
        .iter()
        .filter(|&&l| l > SLOW.as_micros() as u64)
        .count() as u64;
    let missing: Vec<String> = tenants
        .iter()
        .filter_map(|(id, s)| {
            let s = s.snapshot();
            (s.acked != k || s.dead_lettered > 0).then(|| {
                format!(
                    "{id} (received {}, acked {}, dead-lettered {})",
                    s.received, s.acked, s.dead_lettered
                )
            })
        })
        .collect();
    let mut outputs_stored = 0;
    for account in &accounts {
        outputs_stored += stream_messages(&account.js, "SCALE_OUT").await?;
    }
    service.shutdown().await;
    for account in &accounts {
        let streams = account.inputs.first().map(|i| i.streams.clone());
        delete_streams(&account.js, streams.unwrap_or_default()).await;
    }
    if let Ok(Err(e)) = &waited
        && missing.is_empty()
    {
        bail!("{e:#}");
    }
    let report = ScaleReport {
        tenants: n,
        accounts: args.scale.accounts,
        provision_s,
        start_s,
        ready_s,
        idle_s: args.scale.idle.as_secs_f64(),
        host_idle_cpu_pct,
        server_idle_cpu_pct,
        rss_before_mib: rss_before,
        rss_ready_mib: rss_ready,
        rss_idle_mib: rss_idle,
        per_tenant_kib: (rss_idle - rss_before) * 1024.0 / n as f64,
        server_rss_mib: server_rss_before.zip(server_rss_idle),
        per_tenant_messages: k,
        settle_s,
        settle_p50_ms: quantile_ms(&latencies, 0.5),
        settle_p99_ms: quantile_ms(&latencies, 0.99),
        settle_max_ms: quantile_ms(&latencies, 1.0),
        slow_messages,
        settled_messages,
        outputs_stored,
        missing_tenants: missing,
    };
    print_table(&report, &layout);
    write_json(args.json.as_deref(), &report)?;
    drop(server);
    let missing = &report.missing_tenants;
    if !missing.is_empty() {
        bail!(
            "{} of {n} tenants did not process all of their {k} messages within {limit:?} ({settled_messages} of {expected} settled): {}",
            missing.len(),
            missing.join(", ")
        );
    }
    if outputs_stored != expected {
        bail!("the output streams stored {outputs_stored} outputs, expected {expected}");
    }
    Ok(())
}

/// The nats-server config of `--accounts`: account `T{i}` with JetStream
/// and one user, `t-{i}`, per tenant.
fn accounts_conf(n: usize, password: impl Fn(usize) -> String) -> String {
    let mut text = String::from("accounts {\n");
    for i in 0..n {
        let _ = writeln!(
            text,
            "  T{i}: {{ jetstream: enabled, users: [ {{ user: \"t-{i}\", password: \"{}\" }} ] }}",
            password(i)
        );
    }
    text.push_str("}\n");
    text
}

/// Create each account's three streams, then every tenant's consumer (as
/// `sluice provision` would), before the host starts: the host's ready
/// time is binding, not creating.
async fn provision(accounts: &[Account], owners: &Owners, config: &Config) -> anyhow::Result<()> {
    for account in accounts {
        for (name, subjects, window) in [
            ("SCALE_IN", "scale.in.>", None),
            (
                "SCALE_OUT",
                "scale.out.>",
                Some(config.defaults.duplicate_window),
            ),
            (
                "SCALE_DLQ",
                "scale.dlq.>",
                Some(config.defaults.duplicate_window),
            ),
        ] {
            let mut cfg = stream::Config {
                name: name.to_owned(),
                subjects: vec![subjects.to_owned()],
                ..Default::default()
            };
            if let Some(window) = window {
                cfg.duplicate_window = window;
            }
            account
                .js
                .create_stream(cfg)
                .await
                .with_context(|| format!("creating stream {name}"))?;
        }
    }
    let jobs = config.tenants.iter().filter_map(|(id, tenant)| {
        let account = accounts.get(*owners.get(id)?)?;
        Some((id, tenant, account.js.clone()))
    });
    let bar = progress(config.tenants.len() as u64, "consumers");
    let mut results = futures::stream::iter(jobs)
        .map(|(id, tenant, js)| async move {
            let mut report = sluice::topology::Report::default();
            sluice::topology::ensure_tenant(&js, config, id, tenant, true, &mut report)
                .await
                .with_context(|| format!("provisioning tenant {id}"))
        })
        .buffer_unordered(PROVISION_CONCURRENCY);
    while let Some(r) = results.next().await {
        r?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

/// Messages stored in a stream now.
async fn stream_messages(js: &jetstream::Context, name: &str) -> anyhow::Result<u64> {
    let mut stream = js
        .get_stream(name)
        .await
        .with_context(|| format!("looking up stream {name}"))?;
    let info = stream
        .info()
        .await
        .with_context(|| format!("reading stream {name}"))?;
    Ok(info.state.messages)
}

fn print_table(r: &ScaleReport, layout: &str) {
    println!("{layout}, 3 stages each");
    let row = |name: &str, value: String| println!("{name:<44} {value:>12}");
    let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
    row(
        "provisioning, by the bench (s)",
        format!("{:.2}", r.provision_s),
    );
    row("Service::start returned (s)", format!("{:.2}", r.start_s));
    row(
        "every consumer bound: ready (s)",
        format!("{:.2}", r.ready_s),
    );
    row(
        &format!("idle CPU, host ({:.0} s, % of a core)", r.idle_s),
        format!("{:.2}", r.host_idle_cpu_pct),
    );
    row(
        "idle CPU, nats-server (% of a core)",
        opt(r.server_idle_cpu_pct),
    );
    row("RSS before start (MiB)", format!("{:.1}", r.rss_before_mib));
    row("RSS when ready (MiB)", format!("{:.1}", r.rss_ready_mib));
    row("RSS after idle (MiB)", format!("{:.1}", r.rss_idle_mib));
    row(
        "per tenant, after idle (KiB)",
        format!("{:.1}", r.per_tenant_kib),
    );
    row(
        "nats-server RSS before / after idle (MiB)",
        r.server_rss_mib
            .map_or_else(|| "-".to_owned(), |(a, b)| format!("{a:.1} / {b:.1}")),
    );
    row(
        &format!("{} per tenant: settling took (s)", r.per_tenant_messages),
        format!("{:.2}", r.settle_s),
    );
    row(
        "  their latency p50 / p99 / max (ms)",
        format!(
            "{:.1} / {:.0} / {:.0}",
            r.settle_p50_ms, r.settle_p99_ms, r.settle_max_ms
        ),
    );
    row("  of them over 1 s", r.slow_messages.to_string());
    row(
        "  settled / outputs stored",
        format!("{} / {}", r.settled_messages, r.outputs_stored),
    );
    row(
        "  tenants missing messages",
        r.missing_tenants.len().to_string(),
    );
}
