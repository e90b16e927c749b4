//! Many tenants and idle tenants on one host: every tenant's messages are
//! processed, and a tenant that sat idle takes new messages on their first
//! delivery. No timing is asserted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use sluice::config::Config;
use sluice::service::Service;

use crate::support::{config_file, header, js, nats, publish, read_stream, tenant_block, wait_for};

const LIMIT: Duration = Duration::from_secs(120);

/// Every running tenant's consumer bound.
async fn all_bound(service: &Service, n: usize) {
    wait_for("every tenant bound", LIMIT, || async {
        let tenants = service.tenants();
        tenants.len() == n
            && tenants
                .values()
                .all(|t| t.stats.bound.load(Ordering::Relaxed))
    })
    .await;
}

/// A pull that has heard nothing for a while must still hand over what
/// arrives next. (A pull request with idle heartbeats once stopped reading
/// after its first heartbeat: messages arriving later sat unread until the
/// request timed out client-side and were then left to a redelivery.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tenant_takes_new_messages_on_their_first_delivery() {
    let server = nats();
    let text = format!(
        "[host]\nprovision = true\n[nats]\nservers = [\"{{url}}\"]\n[plugins]\ndir = \"{{dist}}\"\n[defaults]\nack_wait = \"3s\"\n{}",
        tenant_block("acme", "ACME", "tenant-stamp")
    );
    let (_dir, path) = config_file(&text, &server.url());
    let service = Service::start(Config::load(&path).unwrap()).await.unwrap();
    all_bound(&service, 1).await;
    let js = js(&server.url()).await;
    const N: u64 = 12;
    // Idle past several heartbeat intervals of the first pull, then a
    // message every 250 ms across the rest of its life and the next one's.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for i in 0..N {
        publish(&js, "acme.in.orders", &format!(r#"{{"n":{i}}}"#)).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    wait_for("every message acked", LIMIT, || async {
        service.stats()["acme"].acked == N
    })
    .await;
    // Every delivery, redeliveries included, takes a consumer sequence.
    let mut consumer = crate::support::consumer(&js, "ACME").await;
    let info = consumer.info().await.unwrap();
    assert_eq!(
        info.delivered.consumer_sequence, N,
        "each message delivered once, none left to a redelivery: {info:?}"
    );
    service.shutdown().await;
}

/// CI's reduced form of the thousand-tenant bench: 200 tenants, each its
/// own durable consumer with its own filter on one shared input stream,
/// provisioned by the host; every tenant processes every one of its
/// messages, once, into its own subjects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_tenants_on_one_shared_stream_each_process_all_their_messages() {
    const TENANTS: usize = 200;
    const EACH: usize = 5;
    let server = nats();
    let mut text = String::from(
        "[nats]\nservers = [\"{url}\"]\n[host]\nprovision = true\n[plugins]\ndir = \"{dist}\"\n",
    );
    for t in 0..TENANTS {
        text.push_str(&format!(
            r#"
[tenants.t{t}]
stream = "SCALE_IN"
consumer = "t{t}"
filter = "scale.in.t{t}.>"
output = "scale.out.{{tenant}}.{{subject[3..]}}"
dead_letter = "scale.dlq.t{t}"
output_stream = "SCALE_OUT"
dead_letter_stream = "SCALE_DLQ"
pipeline = [{{ plugin = "tenant-stamp" }}]
"#
        ));
    }
    let (_dir, path) = config_file(&text, &server.url());
    let service = Service::start(Config::load(&path).unwrap()).await.unwrap();
    all_bound(&service, TENANTS).await;
    let js = js(&server.url()).await;
    // Interleaved across tenants, as a shared stream sees them.
    for i in 0..EACH {
        for t in 0..TENANTS {
            publish(
                &js,
                &format!("scale.in.t{t}.orders"),
                &format!(r#"{{"n":{i}}}"#),
            )
            .await;
        }
    }
    let settled = || service.stats().values().map(|s| s.acked).sum::<u64>();
    let waited = std::time::Instant::now();
    while settled() < (TENANTS * EACH) as u64 && waited.elapsed() < LIMIT {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let behind: Vec<_> = service
        .stats()
        .into_iter()
        .filter(|(_, s)| s.acked != EACH as u64)
        .take(10)
        .collect();
    assert!(behind.is_empty(), "tenants not done: {behind:?}");
    let mut seen: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for m in read_stream(&js, "SCALE_OUT").await {
        let tenant = header(&m, "Sluice-Tenant").unwrap().to_owned();
        assert!(
            m.subject.as_str() == format!("scale.out.{tenant}.orders"),
            "{tenant}'s output on {}",
            m.subject
        );
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let fresh = seen
            .entry(tenant.clone())
            .or_default()
            .insert(v["n"].as_u64().unwrap());
        assert!(fresh, "{tenant}: output {v} twice");
    }
    let short: Vec<_> = seen.iter().filter(|(_, ns)| ns.len() != EACH).collect();
    assert!(
        seen.len() == TENANTS && short.is_empty(),
        "{} tenants with outputs, short: {short:?}",
        seen.len()
    );
    for (id, s) in service.stats() {
        assert!(
            s.acked == EACH as u64 && s.dead_lettered == 0,
            "{id}: {s:?}"
        );
    }
    service.shutdown().await;
}
