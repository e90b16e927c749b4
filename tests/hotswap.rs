//! Hot swap against a real nats-server and real files: plugin versions
//! replaced under traffic in different ways, bad versions rejected while the
//! old one serves, and tenants added and removed through their folder.

use std::path::Path;
use std::time::{Duration, Instant};

use sluice::config::Config;
use sluice::service::Service;

use crate::support::{
    config_file, header, js, plugin_path, publish, read_stream, stream_len, wait_for,
};

const LIMIT: Duration = Duration::from_secs(60);

/// A different but equally valid version of a component: the same code with
/// a custom section appended (custom sections may appear anywhere).
fn variant(base: &[u8], tag: &str) -> Vec<u8> {
    let name = b"sluice-test-version";
    let mut body = vec![name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(tag.as_bytes());
    let mut out = base.to_vec();
    out.push(0); // custom section id
    out.push(body.len() as u8); // size (LEB128; < 128 here)
    out.extend_from_slice(&body);
    out
}

fn digest_label(name: &str, bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let hex = format!("{:x}", Sha256::digest(bytes));
    format!("{name}@{}", &hex[..12])
}

fn swap_config(plugins: &Path) -> String {
    format!(
        r#"
[nats]
servers = ["{{url}}"]

[host]
provision = true

[plugins]
dir = "{}"

[defaults]
max_in_flight = 64
ack_wait = "5s"

[tenants.acme]
stream = "ACME"
filter = "acme.in.>"
output = "{{tenant}}.out.{{subject[2..]}}"
dead_letter = "acme.dlq"
output_stream = "ACME_OUT"
dead_letter_stream = "ACME_DLQ"
pipeline = [{{ plugin = "relay" }}]
"#,
        plugins.display()
    )
}

/// Wait until `label` is live; returns how long that took from `since`.
async fn live(service: &Service, label: &str, since: Instant) -> Duration {
    wait_for(&format!("{label} to go live"), LIMIT, || async {
        service.plugin_label("relay").as_deref() == Some(label)
    })
    .await;
    since.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_replaced_three_ways_under_traffic_loses_nothing_and_versions_follow_in_order() {
    let server = crate::support::nats();
    let plugins = tempfile::tempdir().unwrap();
    let target = plugins.path().join("relay.wasm");
    let base = std::fs::read(plugin_path("echo")).unwrap();
    let versions: Vec<Vec<u8>> = (1..=4).map(|i| variant(&base, &format!("v{i}"))).collect();
    let labels: Vec<String> = versions.iter().map(|v| digest_label("relay", v)).collect();
    std::fs::write(&target, &versions[0]).unwrap();

    let (_dir, path) = config_file(&swap_config(plugins.path()), &server.url());
    let service = Service::start(Config::load(&path).unwrap()).await.unwrap();
    assert_eq!(
        service.plugin_label("relay").as_deref(),
        Some(labels[0].as_str())
    );
    let js = js(&server.url()).await;
    wait_for("the input stream", LIMIT, || async {
        js.get_stream("ACME").await.is_ok()
    })
    .await;

    // Continuous traffic from another task while the file is replaced:
    // at least 5,000 messages, and 500 more after the last swap is live.
    let swapped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let (js, swapped) = (js.clone(), swapped.clone());
        tokio::spawn(async move {
            let mut i: u64 = 0;
            let mut tail = 500;
            while tail > 0 {
                let ack = js
                    .publish("acme.in.x", format!("{{\"i\":{i}}}").into())
                    .await
                    .unwrap();
                i += 1;
                if i.is_multiple_of(100) {
                    ack.await.unwrap();
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
                if i >= 5000 && swapped.load(std::sync::atomic::Ordering::Relaxed) {
                    tail -= 1;
                }
            }
            i
        })
    };
    let outputs_reach = |n: u64| {
        let js = js.clone();
        async move {
            wait_for(&format!("{n} outputs"), LIMIT, || async {
                stream_len(&js, "ACME_OUT").await >= n
            })
            .await;
        }
    };
    let mut took = Vec::new();

    // 1. Written in place (truncate and write).
    outputs_reach(1000).await;
    let t = Instant::now();
    std::fs::write(&target, &versions[1]).unwrap();
    took.push(live(&service, &labels[1], t).await);

    // 2. Written to a temporary file, then renamed over the old one.
    outputs_reach(2500).await;
    let t = Instant::now();
    let tmp = plugins.path().join(".relay.wasm.partial");
    std::fs::write(&tmp, &versions[2]).unwrap();
    std::fs::rename(&tmp, &target).unwrap();
    took.push(live(&service, &labels[2], t).await);

    // 3. Copied over from elsewhere, as `cp` does.
    outputs_reach(4000).await;
    let elsewhere = tempfile::tempdir().unwrap();
    let src = elsewhere.path().join("relay.wasm");
    std::fs::write(&src, &versions[3]).unwrap();
    let t = Instant::now();
    std::fs::copy(&src, &target).unwrap();
    took.push(live(&service, &labels[3], t).await);

    swapped.store(true, std::sync::atomic::Ordering::Relaxed);
    let n = producer.await.unwrap();
    outputs_reach(n).await;
    println!("time from file landing to new version live: {took:?}");

    let stats = service.stats()["acme"];
    assert_eq!(stats.retried, 0, "{stats:?}");
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    assert_eq!(stats.failures, 0, "{stats:?}");
    assert_eq!(service.reloads(), (3, 0));

    // Each output names exactly one version; in input order, the versions
    // only ever move forward, and all four served.
    let mut outputs = read_stream(&js, "ACME_OUT").await;
    assert_eq!(outputs.len() as u64, n, "every input exactly once");
    outputs.sort_by_key(|m| {
        let id = header(m, "Nats-Msg-Id").unwrap();
        id.split(':').nth(2).unwrap().parse::<u64>().unwrap()
    });
    let mut current = 0;
    let mut used = vec![0u64; 4];
    for m in &outputs {
        let label = header(m, "Sluice-Plugin").unwrap();
        let v = labels
            .iter()
            .position(|l| l == label)
            .unwrap_or_else(|| panic!("unknown version {label}"));
        assert!(
            v >= current,
            "version {} served after version {}",
            v + 1,
            current + 1
        );
        current = v;
        used[v] += 1;
    }
    assert!(
        used.iter().all(|n| *n > 0),
        "every version served: {used:?}"
    );
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_versions_are_rejected_and_the_old_version_keeps_serving() {
    let server = crate::support::nats();
    let plugins = tempfile::tempdir().unwrap();
    let target = plugins.path().join("relay.wasm");
    let good = std::fs::read(plugin_path("echo")).unwrap();
    std::fs::write(&target, &good).unwrap();
    let label = digest_label("relay", &good);
    let (_dir, path) = config_file(&swap_config(plugins.path()), &server.url());
    let service = Service::start(Config::load(&path).unwrap()).await.unwrap();
    let js = js(&server.url()).await;
    wait_for("the input stream", LIMIT, || async {
        js.get_stream("ACME").await.is_ok()
    })
    .await;

    let bad: [(&str, Vec<u8>, &str); 3] = [
        (
            "corrupt",
            b"\0asm\x0d\0\x01\0garbage that is not a component".to_vec(),
            "not a valid WebAssembly component",
        ),
        // A valid, empty core module: WebAssembly, but not a component.
        (
            "core module",
            b"\0asm\x01\0\0\0".to_vec(),
            "not a valid WebAssembly component",
        ),
        (
            "fails its golden cases",
            variant(&good, "v2"),
            "golden cases",
        ),
    ];
    for (i, (what, bytes, expected)) in bad.iter().enumerate() {
        if *what == "fails its golden cases" {
            // The new version must turn `next` into `ack` to pass; echo does not.
            std::fs::write(
                plugins.path().join("relay.cases.json"),
                r#"{"cases": [{"name": "acks", "input": {"subject": "acme.in.x", "payload": "x"}, "expect": {"verdict": "ack"}}]}"#,
            )
            .unwrap();
        }
        std::fs::write(&target, bytes).unwrap();
        wait_for(
            &format!("the {what} version to be rejected"),
            LIMIT,
            || async { service.reloads().1 == i as u64 + 1 },
        )
        .await;
        let error = service.last_reload_error().unwrap();
        assert!(
            error.contains("relay.wasm") && error.contains(expected),
            "{what}: {error}"
        );
        assert_eq!(
            service.plugin_label("relay").as_deref(),
            Some(label.as_str()),
            "{what}"
        );
        // The old version still serves.
        publish(&js, "acme.in.x", &format!("after {what}")).await;
        wait_for("the output", LIMIT, || async {
            stream_len(&js, "ACME_OUT").await == i as u64 + 1
        })
        .await;
        let out = read_stream(&js, "ACME_OUT").await;
        assert_eq!(
            header(out.last().unwrap(), "Sluice-Plugin"),
            Some(label.as_str())
        );
    }
    assert_eq!(service.reloads(), (0, 3));
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_folder_added_at_runtime_flows_and_removed_stops_without_loss() {
    let server = crate::support::nats();
    let tenants = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[nats]
servers = ["{{url}}"]

[host]
provision = true
tenants_dir = "{}"

[plugins]
dir = "{{dist}}"
"#,
        tenants.path().display()
    );
    let (_dir, path) = config_file(&config, &server.url());
    // Zero tenants at start.
    let service = Service::start(Config::load(&path).unwrap()).await.unwrap();
    assert!(service.tenants().is_empty());

    // A broken tenant next to a good one affects only itself.
    let broken = tenants.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(broken.join("tenant.toml"), "stream = \"B\"\nfilter = 12\n").unwrap();
    let acme = tenants.path().join("acme");
    std::fs::create_dir(&acme).unwrap();
    std::fs::write(
        acme.join("tenant.toml"),
        r#"
stream = "ACME"
filter = "acme.in.>"
output = "{tenant}.out.{subject[2..]}"
dead_letter = "acme.dlq"
output_stream = "ACME_OUT"
pipeline = [{ plugin = "tenant-stamp" }]
"#,
    )
    .unwrap();
    let js = js(&server.url()).await;
    wait_for("acme to start", LIMIT, || async {
        service.tenants().contains_key("acme")
    })
    .await;
    assert!(!service.tenants().contains_key("broken"));
    wait_for("acme's stream", LIMIT, || async {
        js.get_stream("ACME").await.is_ok()
    })
    .await;
    for i in 0..100 {
        publish(&js, "acme.in.x", &format!(r#"{{"i":{i}}}"#)).await;
    }
    wait_for("100 outputs", LIMIT, || async {
        stream_len(&js, "ACME_OUT").await == 100
    })
    .await;

    // Removed: the loop stops; what arrives afterwards stays in the stream.
    std::fs::remove_dir_all(&acme).unwrap();
    wait_for("acme to stop", LIMIT, || async {
        !service.tenants().contains_key("acme")
    })
    .await;
    for i in 100..150 {
        publish(&js, "acme.in.x", &format!(r#"{{"i":{i}}}"#)).await;
    }
    let consumer = crate::support::consumer(&js, "ACME").await;
    let mut c = consumer.clone();
    let info = c.info().await.unwrap();
    assert_eq!(info.num_ack_pending, 0, "nothing left half-processed");
    assert_eq!(info.num_pending, 50, "the rest remain in the stream");
    assert_eq!(stream_len(&js, "ACME_OUT").await, 100);
    service.shutdown().await;
}

/// Every swap brings a new version; the compile caches used to keep every
/// one for good, in memory and on disk. Now each keeps the versions used
/// last, and an evicted version still in use keeps working.
#[test]
fn the_compile_caches_keep_only_the_versions_used_last() {
    use sluice::wasm::{KEEP_IN_MEMORY, KEEP_ON_DISK, Runtime};
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(Some(dir.path().to_owned())).unwrap();
    let bytes = std::fs::read(plugin_path("echo")).unwrap();
    let plugins: Vec<_> = (0..KEEP_ON_DISK + 4)
        .map(|i| {
            let v = variant(&bytes, &format!("v{i}"));
            runtime.load("echo", &v, crate::support::limits()).unwrap()
        })
        .collect();
    assert_eq!(runtime.cached(), (KEEP_IN_MEMORY, KEEP_ON_DISK));
    // The first version left both caches long ago; it still runs.
    let mut first = plugins[0].instantiate("acme", &[]).unwrap();
    let origin = crate::support::origin("acme");
    assert!(
        first
            .handle(&origin, crate::support::msg("acme.in.x", "{}"))
            .is_ok()
    );
}

/// A message with three outputs gets two stored (the output stream holds
/// two and refuses more), and the plugin is swapped before the stream has
/// room. Before, the source was nak'ed on its first delivery and the
/// redelivery ran the new version: its outputs 0 and 1 were dropped as
/// duplicates of the old version's, output 2 came from the new one, so one
/// message mixed two versions. Now a partly published message is held and
/// finished with the same outputs: all three from the version it first
/// ran, and messages after the swap run the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_half_published_across_a_swap_is_finished_by_its_first_version() {
    use async_nats::jetstream::stream::{self, DiscardPolicy};

    let server = crate::support::nats();
    let js = js(&server.url()).await;
    let full = stream::Config {
        name: "ACME_OUT".into(),
        subjects: vec!["acme.out.>".into()],
        max_messages: 2,
        discard: DiscardPolicy::New,
        ..Default::default()
    };
    js.create_stream(full.clone()).await.unwrap();
    let plugins = tempfile::tempdir().unwrap();
    let target = plugins.path().join("relay.wasm");
    let base = std::fs::read(plugin_path("verdict")).unwrap();
    let (old, new) = (variant(&base, "old"), variant(&base, "new"));
    let (old_label, new_label) = (digest_label("relay", &old), digest_label("relay", &new));
    std::fs::write(&target, &old).unwrap();
    let (_dir, path) = config_file(&swap_config(plugins.path()), &server.url());
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
    let t = Instant::now();
    std::fs::write(&target, &new).unwrap();
    live(&service, &new_label, t).await;
    // Past ack_wait (5 s): the first delivery is still held.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut c = crate::support::consumer(&js, "ACME").await;
    assert_eq!(
        c.info().await.unwrap().num_redelivered,
        0,
        "held, not nak'ed"
    );

    js.update_stream(stream::Config {
        max_messages: 10,
        ..full
    })
    .await
    .unwrap();
    publish(&js, "acme.in.y", "publish:1").await;
    wait_for("four outputs", LIMIT, || async {
        stream_len(&js, "ACME_OUT").await == 4
    })
    .await;
    crate::support::settled(&js, "ACME", "sluice").await;
    let stored = read_stream(&js, "ACME_OUT").await;
    // (id, version) of the outputs of source sequence `seq`.
    let by = |seq: u64| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = stored
            .iter()
            .map(|m| {
                (
                    header(m, "Nats-Msg-Id").unwrap().to_owned(),
                    header(m, "Sluice-Plugin").unwrap().to_owned(),
                )
            })
            .filter(|(id, _)| id.starts_with(&format!("acme:ACME:{seq}:")))
            .collect();
        v.sort();
        v
    };
    let first: Vec<(String, String)> = (0..3)
        .map(|i| (format!("acme:ACME:1:{i}"), old_label.clone()))
        .collect();
    assert_eq!(by(1), first, "all three from the first version");
    assert_eq!(
        by(2),
        [("acme:ACME:2:0".to_owned(), new_label.clone())],
        "after the swap, the new version"
    );
    service.shutdown().await;
}
