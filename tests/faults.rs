//! Faults a host meets in production, injected against a real nats-server
//! and the real binary: the server killed mid-stream and restarted, the host
//! killed and restarted, a SIGTERM with messages in flight, `sluice dev`
//! stopped with Ctrl-C, and a host started before its server. Each test that
//! carries traffic ends with the same proof: every input is in the outputs or
//! the dead letters exactly once, and the consumer has nothing pending.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use sluice::config::Config;
use sluice::nats_server::free_port;
use sluice::service::Service;

use crate::support::{
    config_file, js, nats, nats_on_port, nats_server_binary, nats_with, sluice, stream_len,
    verdict_config, wait_for,
};

/// Deadline for a condition that normally holds within seconds: long
/// enough for a loaded 2-core machine and the redeliveries after a crash.
const LIMIT: Duration = Duration::from_secs(60);

/// Inputs queued before a fault: a backlog big enough that the fault finds
/// the host with hundreds of messages in flight, small enough to stay quick
/// on a small machine.
const N: usize = 1000;
/// Inputs in all: `N` before the fault, the rest after it.
const TOTAL: usize = N + N / 5;

/// One tenant through the `verdict` test guest: a JSON input becomes one
/// output, a `dead:` input a dead letter. Outputs and dead letters are
/// stored (with provisioning's 2-minute duplicate window, which is what
/// drops a re-published output), and `ack_wait` is short so what a crashed
/// host held is redelivered fast. `max_deliver` leaves room for the extra
/// deliveries a crash causes, so none of them ends as a dead letter.
fn config() -> String {
    verdict_config("5s", 10, "100ms")
}

/// nats-server writes asynchronously; SIGKILLed, it can lose messages it
/// already confirmed. Syncing every write keeps the server's own losses out
/// of a test about the host's.
const SYNC_ALWAYS: &str = "jetstream { sync_interval: always }";

/// Create the tenant's streams and consumer without starting a host, so
/// inputs can queue up before one runs.
pub(crate) async fn provision(path: &Path, url: &str) {
    let config = Config::load(path).unwrap();
    let js = sluice::topology::jetstream(async_nats::connect(url).await.unwrap());
    let mut report = sluice::topology::Report::default();
    sluice::topology::ensure_tenant(
        &js,
        &config,
        "acme",
        &config.tenants["acme"],
        true,
        &mut report,
    )
    .await
    .unwrap();
}

/// Publish inputs `ids`, each under its own `Nats-Msg-Id` and retried until
/// JetStream confirms it: a retry after a lost PubAck is dropped as a
/// duplicate, so the input stream holds every id exactly once.
async fn publish_inputs(url: &str, ids: Range<usize>) {
    let js = js(url).await;
    crate::checker::publish(&js, &acme(), ids.start as u64..ids.end as u64).await;
}

async fn consumer_info(js: &jetstream::Context) -> Option<consumer::Info> {
    let stream = js.get_stream("ACME").await.ok()?;
    stream.consumer_info("sluice").await.ok()
}

/// Poll the consumer without pausing until the host has acked some inputs
/// and holds others unacked: the middle of a stream, where a crash finds
/// messages pulled, perhaps processed and published, but not acked. Should
/// the host get through the whole backlog between two polls (a very fast
/// host on a starved test thread), this returns anyway: the fault then hits
/// an idle host, a weaker test but not a wrong one.
async fn wait_mid_stream(js: &jetstream::Context) {
    let started = Instant::now();
    loop {
        if let Some(i) = consumer_info(js).await {
            let busy =
                i.num_ack_pending > 0 && i.delivered.stream_sequence > i.num_ack_pending as u64;
            let done = i.num_ack_pending == 0 && i.num_pending == 0;
            if busy || done {
                return;
            }
        }
        assert!(
            started.elapsed() < LIMIT,
            "timed out waiting for the host to start on the backlog"
        );
        tokio::task::yield_now().await;
    }
}

/// Wait (without failing) until `n` results are stored and the consumer has
/// nothing pending or unacked; [`assert_exactly_once`] then says what is
/// wrong if that never happened.
async fn wait_settled(js: &jetstream::Context, n: usize) {
    crate::checker::wait_settled(js, &[acme()], n as u64, LIMIT).await;
}

/// Inputs `0..n` each appear exactly once in outputs ∪ dead letters, every
/// stored output has its own message id, and the consumer is drained.
async fn assert_exactly_once(js: &jetstream::Context, n: usize) {
    crate::checker::assert_nothing_lost(js, &[acme()], n as u64).await;
}

/// The one tenant of [`config`].
fn acme() -> crate::checker::Flow {
    crate::checker::Flow::of("acme")
}

/// A `sluice` child process. Dropped while running (a failed test), it gets
/// SIGINT so it can stop its own children, then SIGKILL.
pub(crate) struct Proc {
    pub(crate) child: Child,
    log: PathBuf,
}

impl Proc {
    /// `sluice run --config CONFIG`, stderr (its log) to `log`.
    pub(crate) fn run(config: &Path, log: PathBuf) -> Proc {
        Proc::run_with(config, log, &[])
    }

    /// `sluice run --config CONFIG` with more arguments.
    pub(crate) fn run_with(config: &Path, log: PathBuf, more: &[&str]) -> Proc {
        let child = sluice()
            .args(["run", "--config", config.to_str().unwrap()])
            .args(more)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Proc { child, log }
    }

    pub(crate) fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// The exit status, or `None` if it is still running after `limit`.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if started.elapsed() >= limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its log so far, for failure messages.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal("INT");
            if self.wait_exit(Duration::from_secs(15)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_killed_mid_stream_recovers_without_a_restart() {
    server_killed_mid_stream(Some(SYNC_ALWAYS)).await;
}

/// The same with nats-server's default `sync_interval` (2 min): a SIGKILL
/// loses nothing either, since what was written is in the OS page cache,
/// which survives the process. What the default risks is an OS crash or a
/// power cut (Jepsen's 2.12.1 analysis), which no test here can make:
/// docs/guarantees.md recommends `sync_interval: always` where that
/// matters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_with_default_sync_killed_mid_stream_loses_nothing() {
    server_killed_mid_stream(None).await;
}

/// The server SIGKILLed mid-stream and restarted (with `sync`, if given).
async fn server_killed_mid_stream(sync: Option<&str>) {
    use crate::checker::{Flow, assert_nothing_lost, publish};
    const N: u64 = 20_000;
    let mut server = nats_with(sync);
    let url = server.url();
    let (_dir, path) = config_file(&shared_config(), &url);
    let service = Service::start(Config::load(&path).unwrap()).await.unwrap();
    let js = sluice::topology::jetstream(async_nats::connect(&url).await.unwrap());
    wait_for("the input streams", LIMIT, || async {
        js.get_stream("ACME").await.is_ok() && js.get_stream("GLOBEX").await.is_ok()
    })
    .await;
    let flows = [Flow::of("acme"), Flow::of("globex")];
    // A backlog, so the kill finds the host busy; more inputs after the
    // restart, so some always arrive while the host is recovering.
    for f in &flows {
        publish(&js, f, 0..N / 2).await;
    }
    wait_for("a tenth of acme's outputs", LIMIT, || async {
        stream_len(&js, "ACME_OUT").await >= N / 10
    })
    .await;

    let killed = Instant::now();
    tokio::task::block_in_place(|| server.kill());
    // Down long enough for the host's pulls and publishes to fail.
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| server.restart()).unwrap();

    let js = js_retrying(&url).await;
    for f in &flows {
        publish(&js, f, N / 2..N).await;
    }
    crate::checker::wait_settled(&js, &flows, N, Duration::from_secs(120)).await;
    let tallies = assert_nothing_lost(&js, &flows, N).await;
    eprintln!(
        "server SIGKILL ({}): {N} inputs per tenant, settled {:.1} s after the kill; {:?}",
        sync.unwrap_or("default sync"),
        killed.elapsed().as_secs_f64(),
        crate::checker::figures(&tallies)
    );
    service.shutdown().await;
}

/// A JetStream context that reconnects (the server was just restarted).
async fn js_retrying(url: &str) -> jetstream::Context {
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(url)
        .await
        .unwrap();
    sluice::topology::jetstream(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_killed_mid_stream_and_restarted_loses_and_duplicates_nothing() {
    let server = nats();
    let url = server.url();
    let (dir, path) = config_file(&config(), &url);
    provision(&path, &url).await;
    publish_inputs(&url, 0..N).await;
    let js = js(&url).await;

    let mut first = Proc::run(&path, dir.path().join("first.log"));
    wait_mid_stream(&js).await;
    // SIGKILL: whatever it pulled and did not ack is redelivered after
    // ack_wait, and what it had already published for those is published
    // again under the same message ids.
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    publish_inputs(&url, N..TOTAL).await;
    let mut second = Proc::run(&path, dir.path().join("second.log"));
    wait_settled(&js, TOTAL).await;
    assert!(
        matches!(second.child.try_wait(), Ok(None)),
        "the second host exited: {}",
        second.log()
    );
    assert_exactly_once(&js, TOTAL).await;
    second.signal("TERM");
    let status = tokio::task::block_in_place(|| second.wait_exit(LIMIT));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}: {}",
        second.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_0_within_the_grace_period_and_loses_nothing() {
    let server = nats();
    let url = server.url();
    let (dir, path) = config_file(&config(), &url);
    provision(&path, &url).await;
    publish_inputs(&url, 0..N).await;
    let js = js(&url).await;

    let mut host = Proc::run(&path, dir.path().join("host.log"));
    wait_mid_stream(&js).await;
    host.signal("TERM");
    // The config's 5 s grace plus room for a loaded machine: a bound for a
    // hang, not a measurement.
    let status = tokio::task::block_in_place(|| host.wait_exit(Duration::from_secs(5) + LIMIT));
    assert!(
        status.is_some_and(|s| s.code() == Some(0)),
        "{status:?}: {}",
        host.log()
    );
    assert!(host.log().contains("shutting down"), "{}", host.log());

    // What the first host left (unpulled, or pulled and not settled) goes
    // to the next one, with more inputs.
    publish_inputs(&url, N..TOTAL).await;
    let service = Service::start(Config::load(&path).unwrap()).await.unwrap();
    wait_settled(&js, TOTAL).await;
    assert_exactly_once(&js, TOTAL).await;
    service.shutdown().await;
}

#[test]
fn sluice_dev_processes_traffic_and_stops_cleanly_on_sigint() {
    let mut child = sluice()
        .args(["dev", "--rate", "50", "--every", "1", "--nats-server"])
        .arg(nats_server_binary())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut dev = Proc {
        child,
        log: PathBuf::new(),
    };
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let next_line = |seen: &mut Vec<String>, deadline: Instant| -> Option<String> {
        let wait = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(wait).ok()?;
        seen.push(line.clone());
        Some(line)
    };

    let deadline = Instant::now() + LIMIT;
    let mut seen = Vec::new();
    let mut port = None;
    let (mut acme, mut globex) = (0u64, 0u64);
    while acme == 0 || globex == 0 {
        let Some(line) = next_line(&mut seen, deadline) else {
            panic!(
                "no summary with traffic for both tenants; stdout:\n{}",
                seen.join("\n")
            );
        };
        if let Some(rest) = line.split_once("nats://").map(|(_, r)| r) {
            let addr = rest.split_whitespace().next().unwrap();
            port = Some(addr.rsplit_once(':').unwrap().1.parse::<u16>().unwrap());
        }
        if let Some((id, rest)) = line.trim_start().split_once(": processed ") {
            let processed: u64 = rest.split_whitespace().next().unwrap().parse().unwrap();
            match id {
                "acme" => acme = processed,
                "globex" => globex = processed,
                _ => {}
            }
        }
    }
    let port = port.expect("the nats-server URL is printed first");

    dev.signal("INT");
    let status = dev.wait_exit(LIMIT);
    // The reader ends at EOF, after the last line.
    while next_line(&mut seen, Instant::now() + Duration::from_secs(5)).is_some() {}
    assert!(
        status.is_some_and(|s| s.code() == Some(0)),
        "{status:?}; stdout:\n{}",
        seen.join("\n")
    );
    assert_eq!(
        seen.last().map(String::as_str),
        Some("stopped"),
        "{}",
        seen.join("\n")
    );
    // The nats-server it started is gone with it.
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "the dev nats-server on port {port} still accepts connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_started_before_nats_waits_and_then_processes() {
    let port = free_port().unwrap();
    let url = format!("nats://127.0.0.1:{port}");
    let (_dir, path) = config_file(&config(), &url);
    // Starting must not wait for the server: the host comes up first in
    // many deployments.
    let service = tokio::time::timeout(LIMIT, Service::start(Config::load(&path).unwrap()))
        .await
        .expect("Service::start waits for a server that is not there")
        .unwrap();
    // Let it fail to connect and to provision a few times.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let _server = tokio::task::spawn_blocking(move || nats_on_port(port))
        .await
        .unwrap();
    let js = js(&url).await;
    wait_for("the host to provision and bind", LIMIT, || async {
        consumer_info(&js).await.is_some()
    })
    .await;
    let n = 100;
    publish_inputs(&url, 0..n).await;
    wait_settled(&js, n).await;
    assert_exactly_once(&js, n).await;
    assert!(service.stats()["acme"].received >= n as u64);
    service.shutdown().await;
}

/// Two tenants on the hosts of [`several_hosts`], processed by the
/// `verdict` guest; `ack_wait` short enough that a killed host's messages
/// come back quickly.
fn shared_config() -> String {
    crate::support::pair_config(
        "",
        "ack_wait = \"3s\"\nmax_deliver = 10\nbackoff = [\"100ms\"]",
        "verdict",
    )
}

/// `hosts` `sluice run` processes on one config and the same durable
/// consumers, 20,000 inputs per tenant for two tenants; host 0 is
/// SIGKILLed half-way. Its unacked messages go to the others after
/// ack_wait; what it had published for them is published again under the
/// same ids and dropped as duplicates: nothing lost, nothing stored twice.
async fn several_hosts(hosts: usize) {
    use crate::checker::{Flow, assert_nothing_lost, publish, wait_settled};
    const N: u64 = 20_000;
    let server = nats_with(Some(SYNC_ALWAYS));
    let url = server.url();
    let (dir, path) = config_file(&shared_config(), &url);
    let config = Config::load(&path).unwrap();
    let js = sluice::topology::jetstream(async_nats::connect(&url).await.unwrap());
    for (id, tenant) in &config.tenants {
        let mut report = sluice::topology::Report::default();
        sluice::topology::ensure_tenant(&js, &config, id, tenant, true, &mut report)
            .await
            .unwrap();
    }
    let flows = [Flow::of("acme"), Flow::of("globex")];
    for f in &flows {
        publish(&js, f, 0..N / 2).await;
    }
    let mut procs: Vec<Proc> = (0..hosts)
        .map(|i| Proc::run(&path, dir.path().join(format!("host{i}.log"))))
        .collect();
    wait_for("a fifth of acme's outputs", LIMIT, || async {
        stream_len(&js, "ACME_OUT").await >= N / 5
    })
    .await;
    let killed = Instant::now();
    procs[0].child.kill().unwrap();
    procs[0].child.wait().unwrap();
    for f in &flows {
        publish(&js, f, N / 2..N).await;
    }
    let took = wait_settled(&js, &flows, N, Duration::from_secs(120)).await;
    let tallies = assert_nothing_lost(&js, &flows, N).await;
    eprintln!(
        "{hosts} hosts, one SIGKILLed: {N} inputs per tenant, settled {:.1} s after the kill ({:.1} s of it waiting); {:?}",
        killed.elapsed().as_secs_f64(),
        took.as_secs_f64(),
        crate::checker::figures(&tallies)
    );
    for p in &mut procs[1..] {
        assert!(
            matches!(p.child.try_wait(), Ok(None)),
            "a surviving host exited: {}",
            p.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_on_the_same_durables_one_killed_lose_and_duplicate_nothing() {
    several_hosts(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_on_the_same_durables_one_killed_lose_and_duplicate_nothing() {
    several_hosts(3).await;
}

/// acme's output stream and globex's dead-letter stream are full (small
/// `max_msgs`, discard new) while 20,000 inputs per tenant arrive. While
/// they are, no source is acked without its result stored: every input
/// not yet in the outputs or dead letters is still pending or unacked.
/// Once the limits are raised, everything comes out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_output_and_dead_letter_streams_hold_sources_until_raised() {
    use crate::checker::{Flow, assert_nothing_lost, publish, wait_settled};
    use async_nats::jetstream::stream::{self, DiscardPolicy};
    const N: u64 = 20_000;
    let server = nats_with(Some(SYNC_ALWAYS));
    let url = server.url();
    let js = sluice::topology::jetstream(async_nats::connect(&url).await.unwrap());
    let full = |name: &str, subject: &str, max: i64| stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        max_messages: max,
        discard: DiscardPolicy::New,
        duplicate_window: Duration::from_secs(300),
        ..Default::default()
    };
    let (out_limit, dlq_limit) = (1000, 100);
    js.create_stream(full("ACME_OUT", "acme.out.>", out_limit))
        .await
        .unwrap();
    js.create_stream(full("GLOBEX_DLQ", "globex.dlq", dlq_limit))
        .await
        .unwrap();
    let (_dir, path) = config_file(&shared_config(), &url);
    let service = Service::start(Config::load(&path).unwrap()).await.unwrap();
    wait_for("the input streams", LIMIT, || async {
        js.get_stream("ACME").await.is_ok() && js.get_stream("GLOBEX").await.is_ok()
    })
    .await;
    let flows = [Flow::of("acme"), Flow::of("globex")];
    for f in &flows {
        publish(&js, f, 0..N).await;
    }
    wait_for("both full streams to fill", LIMIT, || async {
        stream_len(&js, "ACME_OUT").await == out_limit as u64
            && stream_len(&js, "GLOBEX_DLQ").await == dlq_limit as u64
    })
    .await;
    // Well past a few ack_waits (3 s) with the streams full.
    tokio::time::sleep(Duration::from_secs(8)).await;
    for f in &flows {
        let stored = stream_len(&js, &f.output).await + stream_len(&js, &f.dead).await;
        let stream = js.get_stream(&f.input).await.unwrap();
        let info = stream.consumer_info(&f.consumer).await.unwrap();
        assert!(
            info.num_pending + info.num_ack_pending as u64 >= N - stored,
            "{}: a source was acked without its result: {stored} stored, {} pending, {} unacked",
            f.tenant,
            info.num_pending,
            info.num_ack_pending
        );
    }
    assert_eq!(stream_len(&js, "ACME_OUT").await, out_limit as u64);
    assert_eq!(stream_len(&js, "GLOBEX_DLQ").await, dlq_limit as u64);

    let raised = Instant::now();
    js.update_stream(full("ACME_OUT", "acme.out.>", -1))
        .await
        .unwrap();
    js.update_stream(full("GLOBEX_DLQ", "globex.dlq", -1))
        .await
        .unwrap();
    wait_settled(&js, &flows, N, Duration::from_secs(120)).await;
    let tallies = assert_nothing_lost(&js, &flows, N).await;
    eprintln!(
        "full streams raised: {N} inputs per tenant, settled {:.1} s after; {:?}",
        raised.elapsed().as_secs_f64(),
        crate::checker::figures(&tallies)
    );
    service.shutdown().await;
}

/// Two hosts on the same durables, `ack_wait` 2 s, and every 2,000th input
/// takes its handler 3 s: past ack_wait, and holding up the messages
/// queued behind it on a worker. In-progress acks keep the server from
/// handing any of them to the other host: not one redelivery, nothing
/// processed twice, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_slower_than_ack_wait_is_never_redelivered_to_the_other_host() {
    use crate::checker::{Flow, assert_nothing_lost, payload, publish_with, wait_settled};
    const N: u64 = 20_000;
    let server = nats_with(Some(SYNC_ALWAYS));
    let url = server.url();
    let config = shared_config()
        .replace("ack_wait = \"3s\"", "ack_wait = \"2s\"")
        .replace(
            "pipeline = [{ plugin = \"verdict\" }]",
            "pipeline = [{ plugin = \"hostile\" }, { plugin = \"verdict\" }]",
        )
        .replace(
            "[defaults]",
            "[plugin.hostile]\npath = \"{dist}/testing/hostile.wasm\"\ndeadline = \"5s\"\n\n[defaults]",
        );
    let (_dir, path) = config_file(&config, &url);
    let hosts = [
        Service::start(Config::load(&path).unwrap()).await.unwrap(),
        Service::start(Config::load(&path).unwrap()).await.unwrap(),
    ];
    let js = sluice::topology::jetstream(async_nats::connect(&url).await.unwrap());
    wait_for("the input streams", LIMIT, || async {
        js.get_stream("ACME").await.is_ok() && js.get_stream("GLOBEX").await.is_ok()
    })
    .await;
    let flows = [Flow::of("acme"), Flow::of("globex")];
    let slow = |i: u64| {
        if i % 2000 == 1000 {
            format!("sleep:3000:{}", payload(i))
        } else {
            payload(i)
        }
    };
    for f in &flows {
        publish_with(&js, f, 0..N, slow).await;
    }
    let took = wait_settled(&js, &flows, N, Duration::from_secs(180)).await;
    let tallies = assert_nothing_lost(&js, &flows, N).await;
    for f in &flows {
        let stream = js.get_stream(&f.input).await.unwrap();
        let info = stream.consumer_info(&f.consumer).await.unwrap();
        assert_eq!(info.num_redelivered, 0, "{}: redelivered", f.tenant);
    }
    let received: u64 = hosts
        .iter()
        .flat_map(|h| h.stats().into_values())
        .map(|s| s.received)
        .sum();
    assert_eq!(received, 2 * N, "each input received once, by one host");
    eprintln!(
        "slow handler: {N} inputs per tenant, 10 of them 3 s each; settled in {:.1} s; {:?}",
        took.as_secs_f64(),
        crate::checker::figures(&tallies)
    );
    for h in hosts {
        h.shutdown().await;
    }
}

/// Each tenant in its own NATS account; acme's user is removed from the
/// server's config (a reload) mid-stream, then put back. Meanwhile acme's
/// connection is refused: `/readyz` says so, naming it, and the host keeps
/// trying; globex, on its own connection, finishes its 20,000 inputs
/// untouched. Once the user is back, acme finishes too: nothing lost,
/// nothing stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_credentials_stop_only_their_tenant_and_nothing_is_lost() {
    use crate::checker::{Flow, assert_nothing_lost, publish, wait_settled};
    const N: u64 = 20_000;
    let accounts = |acme: bool| {
        let acme_user = if acme {
            "{ user: acme, password: apass }"
        } else {
            ""
        };
        format!(
            "{SYNC_ALWAYS}\naccounts {{\n  A: {{ jetstream: enabled, users: [ {acme_user} ] }}\n  \
             B: {{ jetstream: enabled, users: [ {{ user: globex, password: gpass }} ] }}\n}}\n"
        )
    };
    let server = nats_with(Some(&accounts(true)));
    let url = server.url();
    let config = shared_config()
        .replace(
            "[tenants.acme]\n",
            "[tenants.acme]\nnats = { servers = [\"{url}\"], user = \"acme\", password = \"apass\" }\n",
        )
        .replace(
            "[tenants.globex]\n",
            "[tenants.globex]\nnats = { servers = [\"{url}\"], user = \"globex\", password = \"gpass\" }\n",
        );
    let (_dir, path) = config_file(&config, &url);
    let mut service = Service::start(Config::load(&path).unwrap()).await.unwrap();
    let addr = service
        .serve_ops("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let readyz = move || tokio::task::spawn_blocking(move || crate::ops::get(addr, "/readyz"));
    let acme_js = crate::support::js_as(&url, "acme", "apass").await;
    let globex_js = crate::support::js_as(&url, "globex", "gpass").await;
    wait_for("both input streams", LIMIT, || async {
        acme_js.get_stream("ACME").await.is_ok() && globex_js.get_stream("GLOBEX").await.is_ok()
    })
    .await;
    let (acme, globex) = (Flow::of("acme"), Flow::of("globex"));
    publish(&acme_js, &acme, 0..N / 2).await;
    publish(&globex_js, &globex, 0..N / 2).await;
    wait_for("some of acme's outputs", LIMIT, || async {
        stream_len(&acme_js, "ACME_OUT").await >= N / 20
    })
    .await;

    // Revoke: the server reloads without acme's user.
    let conf = server.store_dir().parent().unwrap().join("server.conf");
    let reload = |text: String| {
        std::fs::write(&conf, text).unwrap();
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &server.pid().unwrap().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    let revoked = Instant::now();
    reload(accounts(false));
    wait_for(
        "/readyz to name acme's refused connection",
        LIMIT,
        || async {
            let (code, body) = readyz().await.unwrap();
            code == 503 && body.contains("user acme")
        },
    )
    .await;
    let (_, body) = readyz().await.unwrap();
    assert!(!body.contains("user globex"), "globex is fine: {body}");
    publish(&globex_js, &globex, N / 2..N).await;
    wait_settled(
        &globex_js,
        std::slice::from_ref(&globex),
        N,
        Duration::from_secs(120),
    )
    .await;
    assert_nothing_lost(&globex_js, std::slice::from_ref(&globex), N).await;
    let globex_outputs = stream_len(&globex_js, "GLOBEX_OUT").await;
    eprintln!(
        "revoked: globex finished {N} inputs ({globex_outputs} outputs) {:.1} s after acme's user was removed",
        revoked.elapsed().as_secs_f64()
    );

    // Restore: acme reconnects and finishes.
    reload(accounts(true));
    let restored = Instant::now();
    // SIGHUP reloads in the background: acme's user may not be back yet.
    let acme_js = loop {
        match async_nats::ConnectOptions::with_user_and_password("acme".into(), "apass".into())
            .connect(&url)
            .await
        {
            Ok(client) => break async_nats::jetstream::new(client),
            Err(e) if restored.elapsed() < LIMIT => {
                eprintln!("acme cannot connect yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("acme's user was restored {LIMIT:?} ago, still: {e}"),
        }
    };
    publish(&acme_js, &acme, N / 2..N).await;
    wait_settled(
        &acme_js,
        std::slice::from_ref(&acme),
        N,
        Duration::from_secs(120),
    )
    .await;
    let tallies = assert_nothing_lost(&acme_js, std::slice::from_ref(&acme), N).await;
    eprintln!(
        "restored: acme finished {N} inputs {:.1} s after its user came back; {:?}",
        restored.elapsed().as_secs_f64(),
        crate::checker::figures(&tallies)
    );
    wait_for("ready again", LIMIT, || async {
        readyz().await.unwrap().0 == 200
    })
    .await;
    service.shutdown().await;
}
