//! The operator's view against a real nats-server: `/metrics` counts what
//! happened, `/readyz` follows the NATS connection.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use sluice::config::Config;
use sluice::service::Service;

use crate::support::{config_file, js, nats, publish, stream_len, verdict_config, wait_for};

const LIMIT: Duration = Duration::from_secs(30);

/// A plain HTTP/1.1 GET; returns the status code and body.
pub(crate) fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// `name{labels} value` lines as a map.
pub(crate) fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened_per_tenant() {
    let server = nats();
    let (_dir, path) = config_file(&verdict_config("2s", 3, "50ms"), &server.url());
    let mut service = Service::start(Config::load(&path).unwrap()).await.unwrap();
    let addr = service
        .serve_ops("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let js = js(&server.url()).await;
    wait_for("the stream", LIMIT, || async {
        js.get_stream("ACME").await.is_ok()
    })
    .await;
    for _ in 0..5 {
        publish(&js, "acme.in.x", "next").await;
    }
    publish(&js, "acme.in.x", "dead:no").await;
    publish(&js, "acme.in.x", "dead:no").await;
    publish(&js, "acme.in.x", "retry:10").await;
    publish(&js, "acme.in.x", "trap").await;
    wait_for("5 outputs and 4 dead letters", LIMIT, || async {
        stream_len(&js, "ACME_OUT").await == 5 && stream_len(&js, "ACME_DLQ").await == 4
    })
    .await;
    wait_for("every message settled", LIMIT, || async {
        service.stats()["acme"].acked + service.stats()["acme"].dead_lettered == 9
    })
    .await;

    let (code, text) = tokio::task::spawn_blocking(move || get(addr, "/metrics"))
        .await
        .unwrap();
    assert_eq!(code, 200, "{text}");
    let m = samples(&text);
    let at = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no {k} in\n{text}"));
    // 5 + 2 once each, retry and trap three deliveries each.
    assert_eq!(at(r#"sluice_messages_received_total{tenant="acme"}"#), 13.0);
    assert_eq!(at(r#"sluice_outputs_published_total{tenant="acme"}"#), 5.0);
    assert_eq!(at(r#"sluice_dead_letters_total{tenant="acme"}"#), 4.0);
    assert_eq!(at(r#"sluice_retries_total{tenant="acme"}"#), 4.0);
    assert_eq!(
        at(r#"sluice_outcomes_total{tenant="acme",plugin="verdict",outcome="publish"}"#),
        5.0
    );
    assert_eq!(
        at(r#"sluice_outcomes_total{tenant="acme",plugin="verdict",outcome="dead-letter"}"#),
        4.0
    );
    assert_eq!(
        at(r#"sluice_outcomes_total{tenant="acme",plugin="verdict",outcome="retry"}"#),
        4.0
    );
    assert_eq!(
        at(r#"sluice_guest_failures_total{tenant="acme",plugin="verdict",cause="trap"}"#),
        3.0
    );
    // How many messages a failed batch call (the trap's) took with it
    // depends on what each pull brought together; never more than arrived.
    let reruns = at(r#"sluice_batch_reruns_total{tenant="acme"}"#);
    assert!((0.0..=13.0).contains(&reruns), "{reruns}");
    assert_eq!(at(r#"sluice_in_flight{tenant="acme"}"#), 0.0);
    assert_eq!(at(r#"sluice_consumer_bound{tenant="acme"}"#), 1.0);
    assert_eq!(
        at(r#"sluice_handler_duration_seconds_count{tenant="acme"}"#),
        13.0
    );
    let digest = service.plugin_label("verdict").unwrap();
    let digest = digest.split('@').nth(1).unwrap();
    assert!(
        m.keys().any(
            |k| k.starts_with(r#"sluice_plugin_info{plugin="verdict",digest=""#)
                && k.contains(digest)
        ),
        "{text}"
    );
    // Never a subject in a label.
    assert!(!text.contains("acme.in.x"), "{text}");
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_nats_connection() {
    let mut server = nats();
    let (_dir, path) = config_file(&verdict_config("2s", 3, "50ms"), &server.url());
    let mut service = Service::start(Config::load(&path).unwrap()).await.unwrap();
    let addr = service
        .serve_ops("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let probe = |path: &'static str| tokio::task::spawn_blocking(move || get(addr, path));
    wait_for("ready", LIMIT, || async {
        probe("/readyz").await.unwrap().0 == 200
    })
    .await;
    let (code, body) = probe("/healthz").await.unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("connected"), "{body}");

    server.kill();
    wait_for("not ready while NATS is down", LIMIT, || async {
        probe("/readyz").await.unwrap().0 == 503
    })
    .await;
    let (code, body) = probe("/healthz").await.unwrap();
    assert_eq!(code, 200, "alive even without NATS");
    assert!(body.contains("disconnected"), "{body}");

    server.restart().unwrap();
    wait_for("ready again after the restart", LIMIT, || async {
        probe("/readyz").await.unwrap().0 == 200
    })
    .await;
    // And it processes again.
    let js = js(&server.url()).await;
    publish(&js, "acme.in.x", "next").await;
    wait_for("an output", LIMIT, || async {
        stream_len(&js, "ACME_OUT").await == 1
    })
    .await;
    service.shutdown().await;
}

/// A password in a server URL is a credential: `/healthz` and the metric
/// labels name the connection with it redacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_in_server_urls_never_reach_healthz_or_metrics() {
    let server = crate::support::nats_with(Some(
        "accounts { A: { jetstream: enabled, users: [ { user: ann, password: s3cret-pw } ] } }",
    ));
    let with_password = server.url().replace("nats://", "nats://ann:s3cret-pw@");
    let (_dir, path) = config_file(&verdict_config("2s", 3, "50ms"), &with_password);
    let mut service = Service::start(Config::load(&path).unwrap()).await.unwrap();
    let addr = service
        .serve_ops("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let probe = |path: &'static str| tokio::task::spawn_blocking(move || get(addr, path));
    wait_for("ready", LIMIT, || async {
        probe("/readyz").await.unwrap().0 == 200
    })
    .await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (code, body) = probe(path).await.unwrap();
        assert_eq!(code, 200, "{path}");
        assert!(
            !body.contains("s3cret-pw"),
            "{path} shows the password: {body}"
        );
    }
    let (_, body) = probe("/healthz").await.unwrap();
    assert!(body.contains("ann:***@"), "{body}");
    service.shutdown().await;
}

/// The hand-written responder kept a connection that sent nothing open for
/// as long as the client liked, with no cap on how many: a port scanner or
/// a slow client could hold the host's descriptors. Now a silent client is
/// cut after `host.ops_read_timeout` and connections past
/// `host.ops_max_connections` are closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_endpoint_cuts_silent_clients_and_caps_connections() {
    let server = nats();
    let config = verdict_config("2s", 3, "50ms").replace(
        "[host]",
        "[host]\nops_max_connections = 4\nops_read_timeout = \"500ms\"",
    );
    let (_dir, path) = config_file(&config, &server.url());
    let mut service = Service::start(Config::load(&path).unwrap()).await.unwrap();
    let addr = service
        .serve_ops("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let connect = move || {
        let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    // Blocks until the server closes the connection (or 10 s pass).
    let until_closed = |mut s: std::net::TcpStream| {
        let started = std::time::Instant::now();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
        started.elapsed()
    };

    let took = tokio::task::spawn_blocking(move || until_closed(connect()))
        .await
        .unwrap();
    assert!(
        took < Duration::from_secs(3),
        "a silent client held {took:?}"
    );

    let held: Vec<_> = (0..4).map(|_| connect()).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let took = tokio::task::spawn_blocking(move || until_closed(connect()))
        .await
        .unwrap();
    assert!(
        took < Duration::from_secs(1),
        "past the cap: closed at once, not after {took:?}"
    );
    drop(held);
    wait_for("/healthz answering again", LIMIT, || async {
        tokio::task::spawn_blocking(move || get(addr, "/healthz").0)
            .await
            .unwrap()
            == 200
    })
    .await;
    let (_, metrics) = tokio::task::spawn_blocking(move || get(addr, "/metrics"))
        .await
        .unwrap();
    let m = samples(&metrics);
    let value = |name: &str| {
        m.iter()
            .find(|(k, _)| k.split('{').next() == Some(name))
            .map_or(0.0, |(_, v)| *v)
    };
    assert!(
        value("sluice_ops_connections_refused_total") >= 1.0,
        "{metrics}"
    );
    assert!(value("sluice_ops_timeouts_total") >= 1.0, "{metrics}");
    service.shutdown().await;
}

/// A removed tenant's connection used to stay open, and in `/readyz`, for
/// good: one tenant pointed at a server that is down kept the host unready
/// after it was gone. Now the last tenant on a connection closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_tenant_closes_its_connection_and_readyz_follows() {
    let tenants = tempfile::tempdir().unwrap();
    let config = format!(
        "[host]\ntenants_dir = \"{}\"\n\n[plugins]\ndir = \"{{dist}}\"\n",
        tenants.path().display()
    );
    let (_dir, path) = config_file(&config, "nats://127.0.0.1:1");
    let mut service = Service::start(Config::load(&path).unwrap()).await.unwrap();
    let addr = service
        .serve_ops("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let probe = move || tokio::task::spawn_blocking(move || get(addr, "/readyz"));
    assert_eq!(
        probe().await.unwrap().0,
        200,
        "no tenants, nothing to wait for"
    );

    let gone = tenants.path().join("gone");
    std::fs::create_dir(&gone).unwrap();
    std::fs::write(
        gone.join("tenant.toml"),
        r#"
stream = "GONE"
filter = "gone.in.>"
output = "{tenant}.out.{subject[2..]}"
dead_letter = "gone.dlq"
pipeline = [{ plugin = "tenant-stamp" }]

[nats]
servers = ["nats://127.0.0.1:1"]
"#,
    )
    .unwrap();
    wait_for("the tenant to start, unready", LIMIT, || async {
        let (code, body) = probe().await.unwrap();
        code == 503 && body.contains("is unreachable")
    })
    .await;
    std::fs::remove_dir_all(&gone).unwrap();
    wait_for("ready again without it", LIMIT, || async {
        probe().await.unwrap().0 == 200
    })
    .await;
    service.shutdown().await;
}

/// A folder tenant's nkey file is rewritten and the old key is removed
/// from the server: the host used to keep the key it read at start and
/// reconnect with it for ever (authorization violations, nothing
/// processed). Now the changed file restarts that tenant on a new
/// connection with the new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_nkey_file_is_used_without_a_restart() {
    rotate_nkey(true).await;
}

/// The same for a tenant of the main config: its connection is checked
/// every second, and a changed file restarts the tenants on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_nkey_file_of_the_main_config_is_used_without_a_restart() {
    rotate_nkey(false).await;
}

/// Run tenant `acme` on an nkey (in a tenants folder, or in the main
/// config), rotate the key in the file and on the server, and check that
/// its messages still flow.
async fn rotate_nkey(in_folder: bool) {
    let (old, new) = (nkeys::KeyPair::new_user(), nkeys::KeyPair::new_user());
    let server_config = |key: &nkeys::KeyPair| {
        format!(
            "accounts {{ A: {{ jetstream: enabled, users: [ {{ nkey: {} }} ] }} }}\n",
            key.public_key()
        )
    };
    let server = crate::support::nats_with(Some(&server_config(&old)));
    let tenant = format!(
        r#"
stream = "ACME"
filter = "acme.in.>"
output = "{{tenant}}.out.{{subject[2..]}}"
dead_letter = "acme.dlq"
output_stream = "ACME_OUT"
pipeline = [{{ plugin = "tenant-stamp" }}]

[nats]
servers = ["{}"]
nkey_file = "user.nk"
"#,
        server.url()
    );
    let tenants = tempfile::tempdir().unwrap();
    let config = if in_folder {
        format!(
            "[host]\nprovision = true\ntenants_dir = \"{}\"\n\n[plugins]\ndir = \"{{dist}}\"\n",
            tenants.path().display()
        )
    } else {
        let tenant = tenant.replace("[nats]", "[tenants.acme.nats]");
        format!(
            "[host]\nprovision = true\n\n[plugins]\ndir = \"{{dist}}\"\n\n[tenants.acme]{tenant}"
        )
    };
    let (dir, path) = config_file(&config, &server.url());
    let key_file = if in_folder {
        tenants.path().join("acme/user.nk")
    } else {
        dir.path().join("user.nk")
    };
    std::fs::create_dir_all(key_file.parent().unwrap()).unwrap();
    std::fs::write(&key_file, old.seed().unwrap()).unwrap();
    let service = Service::start(Config::load(&path).unwrap()).await.unwrap();
    if in_folder {
        std::fs::write(tenants.path().join("acme/tenant.toml"), &tenant).unwrap();
    }
    let as_old = async_nats::ConnectOptions::with_nkey(old.seed().unwrap())
        .connect(server.url())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(as_old);
    wait_for("acme's stream", LIMIT, || async {
        js.get_stream("ACME").await.is_ok()
    })
    .await;
    publish(&js, "acme.in.x", r#"{"n":1}"#).await;
    wait_for("the first output", LIMIT, || async {
        stream_len(&js, "ACME_OUT").await == 1
    })
    .await;

    // Rotate: the file first, then the server forgets the old key.
    std::fs::write(&key_file, new.seed().unwrap()).unwrap();
    let conf = server.store_dir().parent().unwrap().join("server.conf");
    std::fs::write(&conf, server_config(&new)).unwrap();
    let reloaded = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(reloaded.success());
    let as_new = async_nats::ConnectOptions::with_nkey(new.seed().unwrap())
        .connect(server.url())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(as_new);
    publish(&js, "acme.in.x", r#"{"n":2}"#).await;
    wait_for("the second output, on the new key", LIMIT, || async {
        stream_len(&js, "ACME_OUT").await == 2
    })
    .await;
    service.shutdown().await;
}
