//! Many tenants and idle tenants on one host: every tenant's messages are
//! processed, and a tenant that sat idle takes new messages on their first
//! delivery. No timing is asserted.

use std::sync::atomic::Ordering;
use std::time::Duration;

use sluice::config::Config;
use sluice::service::Service;

use crate::support::{config_file, js, nats, publish, tenant_block, wait_for};

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
