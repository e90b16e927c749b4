//! Nothing lost, whatever a producer sends: dead letters that are always
//! storable, and message ids that no other tenant can collide with. Each
//! test runs a real nats-server and the `verdict` test guest.

use std::time::Duration;

use async_nats::HeaderMap;
use sluice::config::Config;
use sluice::service::Service;

use crate::support::{
    config_file, create_stream, header, js, nats, publish, read_stream, settled, stream_len,
    verdict_config, wait_for,
};

const LIMIT: Duration = Duration::from_secs(30);

/// A producer's `Nats-Expected-Stream: ACME` is right for the input stream
/// and wrong for every other: copied onto the dead letter, the dead-letter
/// stream refused it on every delivery and the message was lost. Now it is
/// kept renamed, and the dead letter is stored on the first delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producers_nats_headers_never_stop_a_dead_letter() {
    let server = nats();
    let (_dir, path) = config_file(&verdict_config("5s", 3, "100ms"), &server.url());
    let service = Service::start(Config::load(&path).unwrap()).await.unwrap();
    let js = js(&server.url()).await;
    wait_for("the input stream", LIMIT, || async {
        js.get_stream("ACME").await.is_ok()
    })
    .await;

    let mut headers = HeaderMap::new();
    headers.insert("Nats-Expected-Stream", "ACME");
    headers.insert("Correlation-Id", "c-1");
    js.publish_with_headers("acme.in.x", headers, "dead:bad input".into())
        .await
        .unwrap()
        .await
        .unwrap();
    wait_for("the dead letter", LIMIT, || async {
        stream_len(&js, "ACME_DLQ").await == 1
    })
    .await;
    settled(&js, "ACME", "sluice").await;

    let letters = read_stream(&js, "ACME_DLQ").await;
    let dead = &letters[0];
    assert_eq!(header(dead, "Sluice-Reason"), Some("bad input"));
    assert_eq!(
        header(dead, "Sluice-Delivered"),
        Some("1"),
        "stored at once"
    );
    assert_eq!(header(dead, "Nats-Expected-Stream"), None);
    assert_eq!(
        header(dead, "Sluice-Source-Nats-Expected-Stream"),
        Some("ACME")
    );
    assert_eq!(header(dead, "Correlation-Id"), Some("c-1"));
    assert_eq!(
        header(dead, "Nats-Msg-Id"),
        Some("acme:ACME:1:dlq"),
        "the host's id, not the producer's"
    );
    service.shutdown().await;
}

/// A message just under the server's `max_payload` fits the input stream,
/// but not once the host adds its dead-letter headers: it used to fail on
/// every delivery and be lost. Now the dead letter is cut to fit and says
/// how long the original was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_too_big_for_the_server_is_truncated_not_lost() {
    let server = nats();
    let (_dir, path) = config_file(&verdict_config("5s", 3, "100ms"), &server.url());
    let service = Service::start(Config::load(&path).unwrap()).await.unwrap();
    let js = js(&server.url()).await;
    wait_for("the input stream", LIMIT, || async {
        js.get_stream("ACME").await.is_ok()
    })
    .await;
    let max = js.client().server_info().max_payload;
    let mut payload = String::from("dead:too big to keep whole ");
    payload.push_str(&"x".repeat(max - payload.len() - 200));
    publish(&js, "acme.in.big", &payload).await;
    wait_for("the dead letter", LIMIT, || async {
        stream_len(&js, "ACME_DLQ").await == 1
    })
    .await;
    settled(&js, "ACME", "sluice").await;

    let letters = read_stream(&js, "ACME_DLQ").await;
    let dead = &letters[0];
    let full = payload.len().to_string();
    assert_eq!(header(dead, "Sluice-Truncated"), Some(full.as_str()));
    assert!(dead.payload.len() < payload.len());
    assert_eq!(&dead.payload[..], &payload.as_bytes()[..dead.payload.len()]);
    assert_eq!(
        header(dead, "Sluice-Delivered"),
        Some("1"),
        "stored at once"
    );
    service.shutdown().await;
}

/// Two tenants read the same sequences of one stream into one output and
/// one dead-letter stream. With ids of `<stream>:<seq>:<index>` the second
/// tenant's outputs were dropped as duplicates of the first's while its
/// sources were acked; with the tenant in the id both are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_on_one_stream_never_share_message_ids() {
    let server = nats();
    let js = js(&server.url()).await;
    create_stream(&js, "SHARED", &["shared.in.>"]).await;
    create_stream(&js, "SHARED_OUT", &["acme.out.>", "globex.out.>"]).await;
    create_stream(&js, "SHARED_DLQ", &["acme.dlq", "globex.dlq"]).await;
    let tenant = |id: &str| {
        format!(
            r#"
[tenants.{id}]
stream = "SHARED"
consumer = "{id}"
filter = "shared.in.>"
output = "{id}.out.{{subject[2..]}}"
dead_letter = "{id}.dlq"
pipeline = [{{ plugin = "verdict" }}]
"#
        )
    };
    let config = format!(
        r#"
[nats]
servers = ["{{url}}"]

[host]
provision = true

[plugin.verdict]
path = "{{dist}}/testing/verdict.wasm"
{}{}"#,
        tenant("acme"),
        tenant("globex")
    );
    let (_dir, path) = config_file(&config, &server.url());
    let service = Service::start(Config::load(&path).unwrap()).await.unwrap();

    let n = 20;
    for i in 0..n {
        let payload = if i % 4 == 3 { "dead:no" } else { "next" };
        publish(&js, &format!("shared.in.m{i}"), payload).await;
    }
    let outputs = n / 4 * 3;
    wait_for("both tenants' outputs and dead letters", LIMIT, || async {
        stream_len(&js, "SHARED_OUT").await == 2 * outputs
            && stream_len(&js, "SHARED_DLQ").await == 2 * (n - outputs)
    })
    .await;
    settled(&js, "SHARED", "acme").await;
    settled(&js, "SHARED", "globex").await;

    let stored = read_stream(&js, "SHARED_OUT").await;
    for id in ["acme", "globex"] {
        let mine = stored
            .iter()
            .filter(|m| header(m, "Sluice-Tenant") == Some(id))
            .count() as u64;
        assert_eq!(mine, outputs, "tenant {id}'s outputs");
    }
    assert!(
        stored
            .iter()
            .any(|m| header(m, "Nats-Msg-Id") == Some("globex:SHARED:1:0"))
    );
    service.shutdown().await;
}

/// A guest asking for `retry(u32::MAX)` used to park its message for 49
/// days; the delay is now capped by `max_retry_delay`, so the message is
/// redelivered and, on its last delivery, dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guests_longest_retry_is_capped_by_max_retry_delay() {
    let server = nats();
    let config = verdict_config("5s", 2, "100ms").replace(
        "backoff = [\"100ms\"]",
        "backoff = [\"100ms\"]\nmax_retry_delay = \"200ms\"",
    );
    let (_dir, path) = config_file(&config, &server.url());
    let service = Service::start(Config::load(&path).unwrap()).await.unwrap();
    let js = js(&server.url()).await;
    wait_for("the input stream", LIMIT, || async {
        js.get_stream("ACME").await.is_ok()
    })
    .await;
    publish(&js, "acme.in.x", &format!("retry:{}", u32::MAX)).await;
    wait_for("the dead letter", LIMIT, || async {
        stream_len(&js, "ACME_DLQ").await == 1
    })
    .await;
    settled(&js, "ACME", "sluice").await;
    let letters = read_stream(&js, "ACME_DLQ").await;
    assert_eq!(header(&letters[0], "Sluice-Delivered"), Some("2"));
    assert!(
        header(&letters[0], "Sluice-Reason")
            .unwrap()
            .contains("asked to retry")
    );
    service.shutdown().await;
}

/// A consumer made by hand with no delivery to spare and headers only: the
/// host used to warn and bind it anyway, so the server gave up on a failing
/// message before its dead letter and guests saw empty payloads. Now the
/// host refuses it, naming the setting and the fix, and `sluice provision`
/// updates it; an ack policy the server cannot change is refused even then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drifted_consumer_is_refused_and_provision_fixes_what_it_can() {
    use async_nats::jetstream::consumer::{self, AckPolicy};
    use sluice::topology::{Report, ensure_tenant};

    let server = nats();
    let js = js(&server.url()).await;
    create_stream(&js, "ACME", &["acme.in.>"]).await;
    create_stream(&js, "ACME_OUT", &["acme.out.>"]).await;
    create_stream(&js, "ACME_DLQ", &["acme.dlq"]).await;
    let stream = js.get_stream("ACME").await.unwrap();
    let by_hand = |name: &str, ack_policy, max_deliver, headers_only| consumer::pull::Config {
        durable_name: Some(name.to_owned()),
        filter_subject: "acme.in.>".to_owned(),
        ack_policy,
        max_deliver,
        headers_only,
        ..Default::default()
    };
    stream
        .create_consumer(by_hand("sluice", AckPolicy::Explicit, 3, true))
        .await
        .unwrap();
    let config = verdict_config("5s", 3, "100ms").replace("provision = true", "provision = false");
    let (_dir, path) = config_file(&config, &server.url());
    let config = Config::load(&path).unwrap();
    let tenant = config.tenants["acme"].clone();

    let mut report = Report::default();
    let e = ensure_tenant(&js, &config, "acme", &tenant, false, &mut report)
        .await
        .unwrap_err();
    assert!(e.is_missing(), "an operator's job: {e}");
    let text = e.to_string();
    assert!(
        text.starts_with("consumer ACME/sluice has max_deliver 3, the host needs at least 4"),
        "{text}"
    );
    assert!(text.contains("`sluice provision --config"), "{text}");

    // The running host does not bind it: a message waits, unprocessed.
    let service = Service::start(config.clone()).await.unwrap();
    publish(&js, "acme.in.x", "next").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stream_len(&js, "ACME_OUT").await, 0);
    service.shutdown().await;

    let mut report = Report::default();
    ensure_tenant(&js, &config, "acme", &tenant, true, &mut report)
        .await
        .unwrap();
    assert_eq!(report.updated.len(), 1, "{report:?}");
    assert!(
        report.updated[0].contains("max_deliver 3 → at least 4"),
        "{report:?}"
    );
    let mut fixed: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer("sluice").await.unwrap();
    let info = fixed.info().await.unwrap();
    assert_eq!(info.config.max_deliver, 4);
    assert!(!info.config.headers_only);

    // Bound now, the host processes the waiting message with its payload.
    let service = Service::start(config.clone()).await.unwrap();
    wait_for("the output", LIMIT, || async {
        stream_len(&js, "ACME_OUT").await == 1
    })
    .await;
    settled(&js, "ACME", "sluice").await;
    assert_eq!(&read_stream(&js, "ACME_OUT").await[0].payload[..], b"next");
    service.shutdown().await;

    // No acks at all: not even provisioning can change that.
    stream
        .create_consumer(by_hand("noack", AckPolicy::None, -1, false))
        .await
        .unwrap();
    let mut noack = tenant.clone();
    noack.consumer = "noack".to_owned();
    let e = ensure_tenant(&js, &config, "acme", &noack, true, &mut Report::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("has ack_policy none, the host needs explicit"),
        "{e}"
    );
    assert!(e.contains("nats consumer rm ACME noack"), "{e}");
}

/// The output stream holds two messages and refuses more; a message with
/// three outputs on its last delivery got two stored, then was
/// dead-lettered: half-published, and its dead letter said it failed. Now
/// the host holds it (in-progress acks keep the server from redelivering),
/// publishes the same outputs under the same ids until the stream has
/// room, and only then acks: three outputs, no dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_published_message_is_held_and_finished_never_dead_lettered() {
    use async_nats::jetstream::stream::{self, DiscardPolicy};

    let server = nats();
    let js = js(&server.url()).await;
    let full = stream::Config {
        name: "ACME_OUT".into(),
        subjects: vec!["acme.out.>".into()],
        max_messages: 2,
        discard: DiscardPolicy::New,
        ..Default::default()
    };
    js.create_stream(full.clone()).await.unwrap();
    let (_dir, path) = config_file(&verdict_config("5s", 1, "200ms"), &server.url());
    let service = Service::start(Config::load(&path).unwrap()).await.unwrap();
    wait_for("the input stream", LIMIT, || async {
        js.get_stream("ACME").await.is_ok()
    })
    .await;
    publish(&js, "acme.in.x", "publish:3").await;
    wait_for("two outputs stored", LIMIT, || async {
        stream_len(&js, "ACME_OUT").await == 2
    })
    .await;
    // Past ack_wait (2 s): still held, never redelivered, no dead letter.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut c = crate::support::consumer(&js, "ACME").await;
    let info = c.info().await.unwrap().clone();
    assert_eq!(info.num_ack_pending, 1, "held, not acked");
    assert_eq!(info.num_redelivered, 0, "in-progress acks kept it");
    assert_eq!(stream_len(&js, "ACME_DLQ").await, 0);

    js.update_stream(stream::Config {
        max_messages: 10,
        ..full
    })
    .await
    .unwrap();
    wait_for("the third output", LIMIT, || async {
        stream_len(&js, "ACME_OUT").await == 3
    })
    .await;
    settled(&js, "ACME", "sluice").await;
    assert_eq!(stream_len(&js, "ACME_DLQ").await, 0);
    let mut ids: Vec<String> = read_stream(&js, "ACME_OUT")
        .await
        .iter()
        .map(|m| header(m, "Nats-Msg-Id").unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["acme:ACME:1:0", "acme:ACME:1:1", "acme:ACME:1:2"]);
    service.shutdown().await;
}

/// A consumer deleted under a running host used to stop its tenant for
/// good: later messages waited until a restart. Now the host binds it again
/// (re-provisioning it here), and the new consumer's redelivery of what was
/// already processed is deduplicated by message id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_consumer_is_bound_again() {
    let server = nats();
    let (_dir, path) = config_file(&verdict_config("5s", 3, "100ms"), &server.url());
    let service = Service::start(Config::load(&path).unwrap()).await.unwrap();
    let js = js(&server.url()).await;
    wait_for("the input stream", LIMIT, || async {
        js.get_stream("ACME").await.is_ok()
    })
    .await;
    publish(&js, "acme.in.a", "next").await;
    wait_for("the first output", LIMIT, || async {
        stream_len(&js, "ACME_OUT").await == 1
    })
    .await;
    settled(&js, "ACME", "sluice").await;

    js.get_stream("ACME")
        .await
        .unwrap()
        .delete_consumer("sluice")
        .await
        .unwrap();
    publish(&js, "acme.in.b", "next").await;
    wait_for(
        "the second output, through a new consumer",
        LIMIT,
        || async { stream_len(&js, "ACME_OUT").await == 2 },
    )
    .await;
    settled(&js, "ACME", "sluice").await;
    assert_eq!(stream_len(&js, "ACME_OUT").await, 2, "the first, once");
    assert_eq!(
        service.stats()["acme"].duplicates,
        1,
        "its replay deduplicated"
    );
    service.shutdown().await;
}
