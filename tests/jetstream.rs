//! The host against a real nats-server: every verdict's exact JetStream
//! effect, the max_deliver rule, tenants in parallel, and tenants in separate
//! NATS accounts.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::HeaderMap;
use serde_json::Value;
use sluice::config::Config;
use sluice::service::Service;

use crate::support::{
    config_file, create_stream, header, js, js_as, nats, nats_with, publish, read_stream,
    stream_len, verdict_config, wait_for,
};

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_verdict_has_exactly_its_jetstream_effect() {
    let server = nats();
    let (_dir, path) = config_file(&verdict_config("5s", 3, "100ms"), &server.url());
    let service = Service::start(Config::load(&path).unwrap()).await.unwrap();
    let js = js(&server.url()).await;
    wait_for("the input stream", LIMIT, || async {
        js.get_stream("ACME").await.is_ok()
    })
    .await;

    let inputs = [
        ("acme.in.a", "next"),
        ("acme.in.b", "ack"),
        ("acme.in.c", "dead:bad input"),
        ("acme.in.d", "publish:2"),
        ("acme.in.e", "outside"),
        ("acme.in.f", "retry:50"),
        ("acme.in.g", "trap"),
    ];
    for (subject, payload) in inputs {
        let mut headers = HeaderMap::new();
        headers.insert("Correlation-Id", format!("c-{payload}").as_str());
        headers.insert("Sluice-Tenant", "globex"); // a producer's claim the host must not trust
        js.publish_with_headers(subject, headers, payload.to_owned().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    wait_for("3 outputs and 4 dead letters", LIMIT, || async {
        stream_len(&js, "ACME_OUT").await == 3 && stream_len(&js, "ACME_DLQ").await == 4
    })
    .await;
    let consumer = crate::support::consumer(&js, "ACME").await;
    wait_for("nothing pending or unacked", LIMIT, || {
        let mut c = consumer.clone();
        async move {
            let i = c.info().await.unwrap();
            i.num_ack_pending == 0 && i.num_pending == 0
        }
    })
    .await;

    // Outputs: `next` to the default output, `publish:2` as two numbered
    // outputs, host headers set, the producer's headers passed through and
    // its tenant claim overwritten.
    let outputs = read_stream(&js, "ACME_OUT").await;
    let by_id = |id: &str| {
        outputs
            .iter()
            .find(|m| header(m, "Nats-Msg-Id") == Some(id))
            .unwrap()
    };
    let next = by_id("acme:ACME:1:0");
    assert_eq!(next.subject.as_str(), "acme.out.a");
    assert_eq!(&next.payload[..], b"next");
    assert_eq!(header(next, "Correlation-Id"), Some("c-next"));
    for m in &outputs {
        assert_eq!(header(m, "Sluice-Tenant"), Some("acme"));
        assert!(header(m, "Sluice-Plugin").unwrap().starts_with("verdict@"));
    }
    assert_eq!(by_id("acme:ACME:4:0").subject.as_str(), "acme.out.p0");
    assert_eq!(by_id("acme:ACME:4:1").subject.as_str(), "acme.out.p1");

    // Dead letters: the original payload and headers, plus every Sluice-*
    // header.
    let letters = read_stream(&js, "ACME_DLQ").await;
    let by_seq = |seq: &str| {
        letters
            .iter()
            .find(|m| header(m, "Sluice-Source-Seq") == Some(seq))
            .unwrap()
    };
    let dead = by_seq("3");
    assert_eq!(dead.subject.as_str(), "acme.dlq");
    assert_eq!(&dead.payload[..], b"dead:bad input");
    assert_eq!(header(dead, "Sluice-Reason"), Some("bad input"));
    assert_eq!(header(dead, "Sluice-Tenant"), Some("acme"));
    assert_eq!(header(dead, "Sluice-Source-Stream"), Some("ACME"));
    assert_eq!(header(dead, "Sluice-Source-Subject"), Some("acme.in.c"));
    assert_eq!(header(dead, "Sluice-Delivered"), Some("1"));
    assert_eq!(header(dead, "Correlation-Id"), Some("c-dead:bad input"));
    assert!(
        header(dead, "Sluice-Plugin")
            .unwrap()
            .starts_with("verdict@")
    );
    let outside = header(by_seq("5"), "Sluice-Reason").unwrap();
    assert!(
        outside.contains("elsewhere.out") && outside.contains("permitted"),
        "{outside}"
    );
    // Retry and trap: redelivered until max_deliver (3), then dead-lettered.
    let retried = by_seq("6");
    assert_eq!(header(retried, "Sluice-Delivered"), Some("3"));
    assert!(
        header(retried, "Sluice-Reason")
            .unwrap()
            .contains("asked to retry")
    );
    let trapped = by_seq("7");
    assert_eq!(header(trapped, "Sluice-Delivered"), Some("3"));
    assert!(
        header(trapped, "Sluice-Reason").unwrap().contains("trap"),
        "{:?}",
        header(trapped, "Sluice-Reason")
    );

    let stats = service.stats()["acme"];
    assert_eq!(stats.acked, 3, "{stats:?}");
    assert_eq!(stats.dead_lettered, 4, "{stats:?}");
    assert_eq!(
        stats.retried, 4,
        "two naks each for retry and trap: {stats:?}"
    );
    assert_eq!(
        stats.received, 11,
        "7 messages, 2 of them delivered 3 times: {stats:?}"
    );
    service.shutdown().await;
}

const TWO_TENANTS: &str = r#"
[nats]
servers = ["{url}"]

[host]
provision = true

[plugins]
dir = "{dist}"

[tenants.acme]
stream = "ACME"
filter = "acme.in.>"
output = "{tenant}.out.{subject[2..]}"
dead_letter = "acme.dlq"
output_stream = "ACME_OUT"
max_in_flight = 32
pipeline = [
    { plugin = "transform", config = { rename = { user = "customer" } } },
    { plugin = "tenant-stamp" },
    { plugin = "route", config = { rule = { 1 = { field = "type", equals = "order", to = "{tenant}.out.orders" } }, unmatched = "dead-letter" } },
]

[tenants.globex]
stream = "GLOBEX"
filter = "globex.in.>"
output = "{tenant}.out.{subject[2..]}"
dead_letter = "globex.dlq"
output_stream = "GLOBEX_OUT"
max_in_flight = 32
pipeline = [
    { plugin = "tenant-stamp", config = { field = "account" } },
    { plugin = "route", config = { rule = { 1 = { field = "type", equals = "order", to = "{tenant}.out.orders" } }, unmatched = "dead-letter" } },
]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_run_in_parallel_and_each_output_carries_its_own_tenant() {
    let server = nats();
    let (_dir, path) = config_file(TWO_TENANTS, &server.url());
    let service = Service::start(Config::load(&path).unwrap()).await.unwrap();
    let js = js(&server.url()).await;
    wait_for("both input streams", LIMIT, || async {
        js.get_stream("ACME").await.is_ok() && js.get_stream("GLOBEX").await.is_ok()
    })
    .await;
    const N: usize = 300;
    for i in 0..N {
        // Interleaved, and each claiming to be the other tenant.
        let body = format!(
            r#"{{"type":"order","user":"u{i}","tenant_id":"globex","account":"acme","n":{i}}}"#
        );
        publish(&js, "acme.in.orders", &body).await;
        publish(&js, "globex.in.orders", &body).await;
    }
    wait_for("every output", LIMIT, || async {
        stream_len(&js, "ACME_OUT").await == N as u64
            && stream_len(&js, "GLOBEX_OUT").await == N as u64
    })
    .await;
    for (tenant, stream, field) in [
        ("acme", "ACME_OUT", "tenant_id"),
        ("globex", "GLOBEX_OUT", "account"),
    ] {
        let outputs = read_stream(&js, stream).await;
        let mut ns = HashSet::new();
        for m in &outputs {
            assert_eq!(m.subject.as_str(), format!("{tenant}.out.orders"));
            assert_eq!(header(m, "Sluice-Tenant"), Some(tenant));
            let v: Value = serde_json::from_slice(&m.payload).unwrap();
            assert_eq!(v[field], tenant, "{v}");
            ns.insert(v["n"].as_u64().unwrap());
        }
        assert_eq!(ns.len(), N, "{tenant}: every input exactly once");
    }
    let acme: Value =
        serde_json::from_slice(&read_stream(&js, "ACME_OUT").await[0].payload).unwrap();
    assert!(
        acme.get("customer").is_some() && acme.get("user").is_none(),
        "{acme}"
    );
    service.shutdown().await;
}

const ACCOUNTS_SERVER: &str = r#"
accounts {
  A: { jetstream: enabled, users: [ { user: alice, password: pa } ] }
  B: { jetstream: enabled, users: [ { user: bob, password: pb } ] }
}
"#;

const ACCOUNTS_CONFIG: &str = r#"
[host]
provision = true

[plugins]
dir = "{dist}"

[tenants.acme]
stream = "EVENTS"
filter = "events.in.>"
output = "events.out.{subject[2..]}"
dead_letter = "events.dlq"
output_stream = "EVENTS_OUT"
pipeline = [{ plugin = "tenant-stamp" }]
nats = { servers = ["{url}"], user = "alice", password = "pa" }

[tenants.globex]
stream = "EVENTS"
filter = "events.in.>"
output = "events.out.{subject[2..]}"
dead_letter = "events.dlq"
output_stream = "EVENTS_OUT"
pipeline = [{ plugin = "tenant-stamp" }]
nats = { servers = ["{url}"], user = "bob", password = "pb" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_in_separate_accounts_each_use_their_own_connection() {
    let server = nats_with(Some(ACCOUNTS_SERVER));
    let (_dir, path) = config_file(ACCOUNTS_CONFIG, &server.url());
    let service = Service::start(Config::load(&path).unwrap()).await.unwrap();
    let alice = js_as(&server.url(), "alice", "pa").await;
    let bob = js_as(&server.url(), "bob", "pb").await;
    // The same stream name and subjects exist once per account.
    wait_for("the streams in both accounts", LIMIT, || async {
        alice.get_stream("EVENTS").await.is_ok() && bob.get_stream("EVENTS").await.is_ok()
    })
    .await;
    for i in 0..20 {
        publish(&alice, "events.in.x", &format!(r#"{{"n":{i}}}"#)).await;
    }
    for i in 0..30 {
        publish(&bob, "events.in.x", &format!(r#"{{"n":{i}}}"#)).await;
    }
    wait_for("outputs in both accounts", LIMIT, || async {
        stream_len(&alice, "EVENTS_OUT").await == 20 && stream_len(&bob, "EVENTS_OUT").await == 30
    })
    .await;
    for (js, tenant) in [(&alice, "acme"), (&bob, "globex")] {
        for m in read_stream(js, "EVENTS_OUT").await {
            assert_eq!(header(&m, "Sluice-Tenant"), Some(tenant));
            let v: Value = serde_json::from_slice(&m.payload).unwrap();
            assert_eq!(v["tenant_id"], tenant);
        }
    }
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_provisioning_a_missing_stream_is_named_with_the_command_to_create_it() {
    let server = nats();
    let js = js(&server.url()).await;
    create_stream(&js, "OTHER", &["other.>"]).await;
    let (_dir, path) = config_file(
        &verdict_config("5s", 3, "100ms").replace("provision = true", "provision = false"),
        &server.url(),
    );
    let out = crate::support::sluice()
        .args(["provision", "--verify", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("stream ACME does not exist")
            && stdout.contains("sluice provision --config"),
        "{stdout}"
    );
    // `provision` creates it all, and a second run finds nothing to do.
    let out = crate::support::sluice()
        .args(["provision", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("created stream ACME") && stdout.contains("created consumer ACME/sluice"),
        "{stdout}"
    );
    let out = crate::support::sluice()
        .args(["provision", "--verify", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("created"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_that_cannot_be_stored_are_dead_lettered_on_the_last_delivery() {
    // No output stream: every output publish fails. The message must end up
    // as a dead letter, not vanish after the server's last delivery.
    let server = nats();
    let config = verdict_config("5s", 3, "100ms")
        .replace("output_stream = \"ACME_OUT\"\n", "")
        .replace("max_deliver = 3", "max_deliver = 2");
    let (_dir, path) = config_file(&config, &server.url());
    let service = Service::start(Config::load(&path).unwrap()).await.unwrap();
    let js = js(&server.url()).await;
    wait_for("the input stream", LIMIT, || async {
        js.get_stream("ACME").await.is_ok()
    })
    .await;
    publish(&js, "acme.in.a", "next").await;
    wait_for("the dead letter", LIMIT, || async {
        stream_len(&js, "ACME_DLQ").await == 1
    })
    .await;
    let letter = &read_stream(&js, "ACME_DLQ").await[0];
    let reason = header(letter, "Sluice-Reason").unwrap();
    assert!(
        reason.contains("gave up after 2 deliveries")
            && reason.contains("publishing outputs failed"),
        "{reason}"
    );
    assert_eq!(&letter.payload[..], b"next");
    let stats = service.stats()["acme"];
    assert_eq!(stats.publish_errors, 2, "{stats:?}");
    assert_eq!(stats.dead_lettered, 1, "{stats:?}");
    service.shutdown().await;
}

const MIXED_LANGUAGES: &str = r#"
[nats]
servers = ["{url}"]

[host]
provision = true

[plugins]
dir = "{dist}"
# Python instances start at ~12 MiB and compile slowly on first load.
memory = "64MiB"
deadline = "500ms"

[tenants.acme]
stream = "ACME"
filter = "acme.in.>"
output = "{tenant}.out.{subject[2..]}"
dead_letter = "acme.dlq"
output_stream = "ACME_OUT"
dead_letter_stream = "ACME_DLQ"
pipeline = [
    { plugin = "transform-py", config = { rename = { user = "customer" }, remove = "debug" } },
    { plugin = "tenant-stamp" },
    { plugin = "route-js", config = { rule = { 1 = { field = "type", equals = "order", to = "{tenant}.out.orders" } }, unmatched = "dead-letter" } },
]

[tenants.globex]
stream = "GLOBEX"
filter = "globex.in.>"
output = "{tenant}.out.{subject[2..]}"
dead_letter = "globex.dlq"
output_stream = "GLOBEX_OUT"
pipeline = [
    { plugin = "transform", config = { rename = { user = "customer" }, remove = "debug" } },
    { plugin = "tenant-stamp" },
    { plugin = "route", config = { rule = { 1 = { field = "type", equals = "order", to = "{tenant}.out.orders" } }, unmatched = "dead-letter" } },
]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_stages_run_through_jetstream_beside_rust_ones() {
    let server = nats();
    let (_dir, path) = config_file(MIXED_LANGUAGES, &server.url());
    let service = Service::start(Config::load(&path).unwrap()).await.unwrap();
    let js = js(&server.url()).await;
    wait_for("both input streams", LIMIT, || async {
        js.get_stream("ACME").await.is_ok() && js.get_stream("GLOBEX").await.is_ok()
    })
    .await;
    const N: usize = 50;
    for i in 0..N {
        let body = format!(r#"{{"type":"order","user":"u{i}","debug":true,"n":{i}}}"#);
        publish(&js, "acme.in.orders", &body).await;
        publish(&js, "globex.in.orders", &body).await;
    }
    // One that the JavaScript route cannot route: dead-lettered by it.
    publish(&js, "acme.in.misc", r#"{"type":"other"}"#).await;
    wait_for(
        "every output and the dead letter",
        Duration::from_secs(120),
        || async {
            stream_len(&js, "ACME_OUT").await == N as u64
                && stream_len(&js, "GLOBEX_OUT").await == N as u64
                && stream_len(&js, "ACME_DLQ").await == 1
        },
    )
    .await;
    // Same input, same pipeline shape: the mixed-language tenant's outputs
    // equal the all-Rust tenant's, but for the tenant.
    let by_n = |mut v: Vec<async_nats::jetstream::message::StreamMessage>| {
        v.sort_by_key(|m| serde_json::from_slice::<Value>(&m.payload).unwrap()["n"].as_u64());
        v
    };
    let mixed = by_n(read_stream(&js, "ACME_OUT").await);
    let rust = by_n(read_stream(&js, "GLOBEX_OUT").await);
    for (m, r) in mixed.iter().zip(&rust) {
        let mut a: Value = serde_json::from_slice(&m.payload).unwrap();
        let mut b: Value = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(a["tenant_id"], "acme");
        assert_eq!(b["tenant_id"], "globex");
        a["tenant_id"] = Value::Null;
        b["tenant_id"] = Value::Null;
        assert_eq!(a, b);
        assert!(
            a.get("customer").is_some() && a.get("debug").is_none(),
            "{a}"
        );
        assert_eq!(m.subject.as_str(), "acme.out.orders");
        assert!(header(m, "Sluice-Plugin").unwrap().starts_with("route-js@"));
    }
    let letter = &read_stream(&js, "ACME_DLQ").await[0];
    assert!(
        header(letter, "Sluice-Plugin")
            .unwrap()
            .starts_with("route-js@")
    );
    let stats = service.stats();
    assert_eq!(stats["acme"].failures, 0, "{:?}", stats["acme"]);
    service.shutdown().await;
}
