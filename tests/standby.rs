//! Active/standby (`exclusive = true`): two hosts on one tenant's durable
//! consumer, exactly one of them processing; SIGKILLed, the other takes
//! over within seconds and nothing is lost. The tenant is ordered too, so
//! the takeover runs the recovery of what the lost host left pending.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use crate::checker::{Flow, assert_nothing_lost, publish, wait_settled};
use crate::faults::Proc;
use crate::ops::{get, samples};
use crate::support::{config_file, js, nats, stream_len, verdict_config, wait_for};

const LIMIT: Duration = Duration::from_secs(120);
const N: u64 = 4000;

fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A host's `(pinned, received)` for acme, from its /metrics; `None`
/// while it does not answer.
async fn state(addr: SocketAddr) -> Option<(f64, f64)> {
    let (code, text) = tokio::task::spawn_blocking(move || get(addr, "/metrics"))
        .await
        .unwrap();
    if code != 200 {
        return None;
    }
    let m = samples(&text);
    let pinned = *m.get(r#"sluice_consumer_pinned{tenant="acme"}"#)?;
    let received = m
        .get(r#"sluice_messages_received_total{tenant="acme"}"#)
        .copied()
        .unwrap_or(0.0);
    Some((pinned, received))
}

fn host(path: &std::path::Path, log: std::path::PathBuf, addr: SocketAddr) -> Proc {
    Proc::run_with(path, log, &["--metrics-addr", &addr.to_string()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_is_active_and_the_standby_takes_over_after_sigkill() {
    let server = nats();
    let url = server.url();
    let text = verdict_config("5s", 10, "100ms").replace(
        "pipeline = [{ plugin = \"verdict\" }]",
        "pipeline = [{ plugin = \"verdict\" }]\nexclusive = true\ntakeover = \"2s\"\nordering = \"subject\"",
    );
    assert!(text.contains("exclusive"), "{text}");
    let (dir, path) = config_file(&text, &url);
    crate::faults::provision(&path, &url).await;
    let js = js(&url).await;
    let acme = Flow::of("acme");
    publish(&js, &acme, 0..N / 2).await;

    let addrs = [free_addr(), free_addr()];
    let mut hosts: Vec<Proc> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| host(&path, dir.path().join(format!("host{i}.log")), *a))
        .collect();
    wait_for("a quarter of the outputs", LIMIT, || async {
        stream_len(&js, "ACME_OUT").await >= N / 4
    })
    .await;
    // Exactly one is active; the standby has received nothing.
    let mut states = Vec::new();
    for a in addrs {
        states.push(state(a).await.expect("both hosts serve /metrics"));
    }
    let active = match states.as_slice() {
        [(1.0, _), (0.0, 0.0)] => 0,
        [(0.0, 0.0), (1.0, _)] => 1,
        other => panic!(
            "want one active host and an idle standby, got (pinned, received) {other:?}\n{}\n{}",
            hosts[0].log(),
            hosts[1].log()
        ),
    };
    let standby = 1 - active;

    hosts[active].child.kill().unwrap();
    hosts[active].child.wait().unwrap();
    let killed = Instant::now();
    publish(&js, &acme, N / 2..N).await;
    wait_for("the standby to take over", LIMIT, || async {
        matches!(state(addrs[standby]).await, Some((1.0, r)) if r > 0.0)
    })
    .await;
    let takeover = killed.elapsed();
    wait_settled(&js, std::slice::from_ref(&acme), N, LIMIT).await;
    let tallies = assert_nothing_lost(&js, std::slice::from_ref(&acme), N).await;
    eprintln!(
        "standby took over {:.1} s after the SIGKILL (takeover = 2s); {:?}",
        takeover.as_secs_f64(),
        crate::checker::figures(&tallies)
    );
    assert!(
        matches!(hosts[standby].child.try_wait(), Ok(None)),
        "{}",
        hosts[standby].log()
    );
}
