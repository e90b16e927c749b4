//! `--mode hosts`: throughput of 1, 2, … `--hosts` `sluice run` processes
//! on one config, sharing the same durable consumers (`--tenants`, each
//! its own stream, and the reference pipeline).
//!
//! For each host count: fresh streams, the backlog of `--messages` stored,
//! the hosts started together. Start-up is subtracted: the clock starts
//! once every host answers `/readyz`, and what the output streams already
//! held then (settled by the hosts that were ready first) is not counted;
//! the rate is the rest over the time until the output streams hold every
//! expected output. The hosts are then stopped (SIGTERM) and the outputs
//! checked: exactly one per input, by count and by distinct `Nats-Msg-Id`.
//! Rounds alternate the order of the host counts; ratios are to one host in
//! the same round.
//!
//! (Holding the backlog back until every host is ready, by pausing the
//! consumers or loading it later, leaves the hosts' first pulls idle, and
//! an idle pull takes no messages for up to nine seconds: see "Idle
//! tenants" in docs/performance.md.)

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use serde::Serialize;

use sluice::config::Config;
use sluice::stats::now_micros;

use super::BenchArgs;
use super::child::Host;
use super::load::{Input, delete_streams, preload, sample_payload};
use super::measure::progress;
use super::procfs::Usage;
use super::report::write_json;
use super::sluice::{config_head, own_streams_tenant, reference_plugins};

/// Options of `--mode hosts`.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Hosts mode")]
pub struct HostsArgs {
    /// Run 1, 2, … this many hosts.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=16))]
    hosts: u32,
}

/// How long the hosts may take to report ready: loading three small
/// plugins from the compile cache takes well under a second, a cold cache
/// a few seconds.
const READY_LIMIT: Duration = Duration::from_secs(60);
/// How often the hosts' `/readyz` are asked while they start: each answer
/// is a few hundred µs.
const READY_POLL: Duration = Duration::from_millis(10);
/// How often the output streams are counted while a run goes: 25 ms is
/// ~1 % of a run of a few seconds, and the 40 stream-info requests a second
/// cost the server little.
const POLL: Duration = Duration::from_millis(25);
/// A run whose outputs stop growing for this long has failed.
const STALL: Duration = Duration::from_secs(30);
/// A host's SIGTERM drain: its in-flight messages settle within the
/// default shutdown grace (10 s); more means it hung.
const STOP_LIMIT: Duration = Duration::from_secs(20);

/// One host count's run.
#[derive(Debug, Clone, Serialize)]
pub struct HostsRun {
    /// Hosts.
    pub hosts: u32,
    /// From the first host's start until all answered `/readyz`, s (not
    /// part of the throughput).
    pub ready_s: f64,
    /// Outputs already stored then, by the hosts ready first (not part of
    /// the throughput).
    pub before_ready: u64,
    /// From then until every output was stored, s.
    pub seconds: f64,
    /// (Inputs − `before_ready`) / `seconds`.
    pub msgs_per_sec: f64,
    /// CPU of all hosts over that span, µs per message.
    pub host_cpu_us_per_msg: f64,
    /// Outputs stored (must equal the inputs).
    pub outputs: u64,
    /// Distinct `Nats-Msg-Id`s among them (must equal the inputs).
    pub distinct_ids: u64,
}

/// One host count over all rounds.
#[derive(Debug, Serialize)]
pub struct HostsSummary {
    /// Hosts.
    pub hosts: u32,
    /// Median throughput, msgs/s.
    pub median_msgs_per_sec: f64,
    /// Median of the rounds' ratios to one host.
    pub median_ratio: f64,
    /// Each round's ratio to one host, in round order.
    pub ratios: Vec<f64>,
}

/// What `--mode hosts` reports (and `--json` writes).
#[derive(Debug, Serialize)]
pub struct HostsReport {
    /// Tenants.
    pub tenants: usize,
    /// Inputs per run, across tenants.
    pub messages: u64,
    /// Every run, by round.
    pub rounds: Vec<Vec<HostsRun>>,
    /// By host count.
    pub summary: Vec<HostsSummary>,
}

pub(super) async fn run(mut args: BenchArgs) -> anyhow::Result<()> {
    if args.tenants() == 0 || args.messages == 0 {
        bail!("--tenants and --messages must be at least 1");
    }
    let (server, url) = args.server(None).await?;
    let client = async_nats::connect(&url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let js = sluice::topology::jetstream(client);
    let plugins = reference_plugins(&args)?;
    let dir = tempfile::Builder::new()
        .prefix("sluice-bench-hosts-")
        .tempdir()?;
    let bench_id = format!("{:x}", now_micros() % 0xffff_ffff);
    let payload = sample_payload(args.payload_bytes);
    let bench = Bench {
        args: &args,
        js: &js,
        url: &url,
        dir: dir.path(),
        plugins: plugins.path(),
        payload: &payload,
    };
    let max = args.hosts.hosts;
    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        // Odd rounds run the largest count first, so that no count is
        // always the one measured on a server that has run longest.
        let order: Vec<u32> = if round.is_multiple_of(2) {
            (1..=max).collect()
        } else {
            (1..=max).rev().collect()
        };
        let mut runs = Vec::new();
        for hosts in order {
            eprintln!("round {} of {}: {hosts} host(s)", round + 1, args.rounds);
            let run_id = format!("{bench_id}R{round}H{hosts}");
            runs.push(run_hosts(&bench, &run_id, hosts).await?);
        }
        runs.sort_by_key(|r| r.hosts);
        rounds.push(runs);
    }
    let summary = (1..=max).map(|hosts| summarize(&rounds, hosts)).collect();
    let report = HostsReport {
        tenants: args.tenants(),
        messages: args.messages,
        rounds,
        summary,
    };
    print_table(&report);
    write_json(args.json.as_deref(), &report)?;
    drop(server);
    Ok(())
}

/// What every run of a bench shares.
struct Bench<'a> {
    args: &'a BenchArgs,
    js: &'a jetstream::Context,
    url: &'a str,
    /// Configs and host logs.
    dir: &'a Path,
    plugins: &'a Path,
    payload: &'a [u8],
}

/// One host count on fresh streams, deleted afterwards.
async fn run_hosts(bench: &Bench<'_>, run_id: &str, hosts: u32) -> anyhow::Result<HostsRun> {
    let Bench { args, js, .. } = *bench;
    let mut text = config_head(bench.url, bench.plugins, args.max_in_flight);
    let inputs: Vec<Input> = (0..args.tenants())
        .map(|t| {
            own_streams_tenant(
                &mut text,
                &format!("bench{t}"),
                &format!("HOSTS{run_id}T{t}"),
            )
        })
        .collect();
    let path = bench.dir.join(format!("{run_id}.toml"));
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    let config = Config::parse(&text, &path)?;
    let result = measured(bench, &config, &inputs, &path, run_id, hosts).await;
    delete_streams(js, inputs.iter().flat_map(|i| i.streams.clone())).await;
    result
}

/// Start the hosts on a provisioned, loaded config; measure; stop them;
/// check the outputs.
async fn measured(
    bench: &Bench<'_>,
    config: &Config,
    inputs: &[Input],
    path: &Path,
    run_id: &str,
    hosts: u32,
) -> anyhow::Result<HostsRun> {
    let Bench {
        args,
        js,
        dir,
        payload,
        ..
    } = *bench;
    for (id, tenant) in &config.tenants {
        let mut report = sluice::topology::Report::default();
        sluice::topology::ensure_tenant(js, config, id, tenant, true, &mut report)
            .await
            .with_context(|| format!("provisioning bench tenant {id}"))?;
    }
    preload(js, inputs, args.messages, payload).await?;
    let outputs: Vec<String> = config
        .tenants
        .values()
        .filter_map(|t| t.output_stream.clone())
        .collect();
    let launched = Instant::now();
    let mut running = Vec::new();
    for i in 0..hosts {
        running.push(Host::start(
            path,
            dir.join(format!("{run_id}-host{i}.log")),
        )?);
    }
    let mut ready = vec![false; running.len()];
    while ready.contains(&false) {
        for (host, ready) in running.iter_mut().zip(&mut ready) {
            if !*ready {
                *ready = host.ready().await?;
            }
            if !*ready && launched.elapsed() > READY_LIMIT {
                bail!(
                    "a host was not ready within {READY_LIMIT:?}; its log ends with:\n{}",
                    host.log_tail()
                );
            }
        }
        tokio::time::sleep(READY_POLL).await;
    }
    // From here every host runs: what the first ones settled while the
    // others started is subtracted.
    let all_ready = Instant::now();
    let ready_s = launched.elapsed().as_secs_f64();
    let before_ready = stored_now(js, &outputs).await?;
    let cpu: Vec<Usage> = running
        .iter()
        .map(|h| Usage::start(&h.pid().to_string()))
        .collect();
    wait_outputs(js, &outputs, args.messages).await?;
    let seconds = all_ready.elapsed().as_secs_f64();
    let cpu_seconds: f64 = cpu.iter().map(Usage::seconds).sum();
    let counted = args.messages.saturating_sub(before_ready);
    for host in &mut running {
        if !host.stop(STOP_LIMIT).await? {
            tracing::warn!("a host did not exit within {STOP_LIMIT:?} of SIGTERM and was killed");
        }
    }
    let (mut stored, mut distinct) = (0, 0);
    for name in &outputs {
        let (s, d) = count_outputs(js, name).await?;
        stored += s;
        distinct += d;
    }
    if stored != args.messages || distinct != args.messages {
        bail!(
            "{hosts} host(s): {} inputs, but the output streams hold {stored} messages with {distinct} distinct ids",
            args.messages
        );
    }
    Ok(HostsRun {
        hosts,
        ready_s,
        before_ready,
        seconds,
        msgs_per_sec: counted as f64 / seconds,
        host_cpu_us_per_msg: cpu_seconds / counted.max(1) as f64 * 1e6,
        outputs: stored,
        distinct_ids: distinct,
    })
}

/// Messages stored in the output streams now.
async fn stored_now(js: &jetstream::Context, streams: &[String]) -> anyhow::Result<u64> {
    let mut total = 0;
    for name in streams {
        total += js.get_stream(name).await?.info().await?.state.messages;
    }
    Ok(total)
}

/// Poll the output streams until they hold `expected` messages.
async fn wait_outputs(
    js: &jetstream::Context,
    streams: &[String],
    expected: u64,
) -> anyhow::Result<()> {
    let bar = progress(expected, "outputs");
    let (mut last, mut last_change) = (0, Instant::now());
    loop {
        let now = stored_now(js, streams).await?;
        bar.set_position(now.min(expected));
        if now >= expected {
            bar.finish_and_clear();
            return Ok(());
        }
        if now != last {
            (last, last_change) = (now, Instant::now());
        } else if last_change.elapsed() > STALL {
            bar.abandon();
            bail!("the outputs stalled at {now} of {expected}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Messages in an output stream, and distinct `Nats-Msg-Id`s among them
/// (read back with an ordered consumer).
async fn count_outputs(js: &jetstream::Context, name: &str) -> anyhow::Result<(u64, u64)> {
    let mut stream = js.get_stream(name).await?;
    let stored = stream.info().await?.state.messages;
    let reader = stream
        .create_consumer(consumer::pull::OrderedConfig::default())
        .await
        .with_context(|| format!("reading back {name}"))?;
    let mut messages = reader.messages().await?;
    let mut ids = HashSet::new();
    for _ in 0..stored {
        let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
        let Ok(Some(Ok(m))) = next else { break };
        if let Some(id) = m.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")) {
            ids.insert(id.to_string());
        }
    }
    Ok((stored, ids.len() as u64))
}

/// The median of some figures (the lower one of an even count).
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0.0)
}

fn summarize(rounds: &[Vec<HostsRun>], hosts: u32) -> HostsSummary {
    let rate = |runs: &[HostsRun], h: u32| {
        runs.iter()
            .find(|r| r.hosts == h)
            .map_or(0.0, |r| r.msgs_per_sec)
    };
    let ratios: Vec<f64> = rounds
        .iter()
        .map(|runs| {
            let one = rate(runs, 1);
            if one > 0.0 {
                rate(runs, hosts) / one
            } else {
                0.0
            }
        })
        .collect();
    HostsSummary {
        hosts,
        median_msgs_per_sec: median(rounds.iter().map(|runs| rate(runs, hosts)).collect()),
        median_ratio: median(ratios.clone()),
        ratios,
    }
}

fn print_table(r: &HostsReport) {
    println!(
        "{} messages, {} tenants sharing durables, 3 stages, {} round(s)",
        r.messages,
        r.tenants,
        r.rounds.len()
    );
    println!(
        "{:>5} {:>12} {:>8} {:>20} {:>9} {:>13} {:>11}",
        "hosts", "msg/s", "ratio", "ratio by round", "ready s", "before ready", "cpu µs/msg"
    );
    for s in &r.summary {
        let by_round: Vec<String> = s.ratios.iter().map(|x| format!("{x:.2}")).collect();
        let runs = r.rounds.iter().flatten().filter(|x| x.hosts == s.hosts);
        let ready = median(runs.clone().map(|x| x.ready_s).collect());
        let before = median(runs.clone().map(|x| x.before_ready as f64).collect());
        let cpu = median(runs.map(|x| x.host_cpu_us_per_msg).collect());
        println!(
            "{:>5} {:>12.0} {:>8.2} {:>20} {:>9.2} {:>13.0} {:>11.1}",
            s.hosts,
            s.median_msgs_per_sec,
            s.median_ratio,
            by_round.join(" "),
            ready,
            before,
            cpu
        );
    }
    println!("(medians over the rounds; every run stored exactly one output per input)");
}
