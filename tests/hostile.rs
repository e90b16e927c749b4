//! Hostile guests: the `hostile` test guest does, per message, what a guest
//! author out to hurt the host would. Each test runs it for tenant `acme`
//! beside a neighbour tenant `globex` (the `verdict` guest) on one host and
//! one nats-server, and shows that the host stays up, the neighbour's
//! messages all come out, the hostile message ends in its documented
//! outcome, and both consumers end with nothing pending or unacked.

use std::time::{Duration, Instant};

use sluice::config::Config;
use sluice::message::FailureKind;
use sluice::service::Service;
use sluice::wasm::{PluginLimits, WasmError};
use sluice::{Origin, OutputCaps};

use crate::support::{
    config_file, header, js, load, msg, nats, pair_config, publish, read_stream, settled,
    stream_len, wait_for,
};

const LIMIT: Duration = Duration::from_secs(60);
/// Messages the neighbour publishes alongside each hostile one.
const NEIGHBOUR: u64 = 50;

/// Two tenants: `acme` runs `hostile` with `[plugin.hostile]` settings
/// `plugin`, `globex` runs `verdict`. Each has its own input, output and
/// dead-letter streams; two deliveries, then a dead letter.
fn config(plugin: &str) -> String {
    pair_config(
        &format!("\n[plugin.hostile]\npath = \"{{dist}}/testing/hostile.wasm\"\n{plugin}\n"),
        "ack_wait = \"2s\"\nmax_deliver = 2\nbackoff = [\"100ms\"]\nmax_retry_delay = \"300ms\"",
        "hostile",
    )
}

/// Run one hostile `payload` for `acme` (with `[plugin.hostile]` settings
/// `plugin`) while `globex` gets [`NEIGHBOUR`] messages; wait until both
/// consumers are settled and return what `acme` stored as (outputs, dead
/// letters).
async fn run(
    plugin: &str,
    payload: &str,
) -> (
    Vec<async_nats::jetstream::message::StreamMessage>,
    Vec<async_nats::jetstream::message::StreamMessage>,
) {
    let server = nats();
    let (_dir, path) = config_file(&config(plugin), &server.url());
    let service = Service::start(Config::load(&path).unwrap()).await.unwrap();
    let js = js(&server.url()).await;
    wait_for("the input streams", LIMIT, || async {
        js.get_stream("ACME").await.is_ok() && js.get_stream("GLOBEX").await.is_ok()
    })
    .await;
    publish(&js, "acme.in.hostile", payload).await;
    for i in 0..NEIGHBOUR {
        publish(&js, &format!("globex.in.m{i}"), "next").await;
    }
    wait_for("the neighbour's outputs", LIMIT, || async {
        stream_len(&js, "GLOBEX_OUT").await == NEIGHBOUR
    })
    .await;
    settled(&js, "GLOBEX", "sluice").await;
    settled(&js, "ACME", "sluice").await;
    assert_eq!(stream_len(&js, "GLOBEX_DLQ").await, 0);
    let stored = (
        read_stream(&js, "ACME_OUT").await,
        read_stream(&js, "ACME_DLQ").await,
    );
    service.shutdown().await;
    stored
}

/// The one dead letter `acme` stored: its reason.
fn reason(dead: &[async_nats::jetstream::message::StreamMessage]) -> String {
    assert_eq!(dead.len(), 1, "one dead letter");
    header(&dead[0], "Sluice-Reason").unwrap().to_owned()
}

/// A guest blocked in `std::thread::sleep` (a WASI poll on a clock) is not
/// wasm code, so epoch interruption did not stop it: it pinned a worker
/// thread for its whole sleep. Now the wait is cut at the call's deadline,
/// in `handle`, in `handle-batch` and in `init`.
#[test]
fn a_sleeping_guest_ends_in_deadline_within_twice_its_deadline() {
    let deadline = Duration::from_millis(200);
    let plugin = load(
        "hostile",
        PluginLimits {
            deadline,
            ..crate::support::limits()
        },
    );
    let origin = Origin {
        stream_seq: 1,
        ..crate::support::origin("acme")
    };
    let within = |started: Instant| {
        let took = started.elapsed();
        assert!(took < deadline * 2 + Duration::from_millis(300), "{took:?}");
    };

    let mut instance = plugin.instantiate("acme", &[]).unwrap();
    let started = Instant::now();
    let failure = instance
        .handle(&origin, msg("acme.in.x", "sleep:60000"))
        .unwrap_err();
    assert_eq!(failure.kind, FailureKind::Deadline, "{failure}");
    within(started);

    let mut instance = plugin.instantiate("acme", &[]).unwrap();
    let started = Instant::now();
    let failure = instance
        .handle_batch(
            &[&origin, &origin],
            &[msg("acme.in.x", "next"), msg("acme.in.y", "sleep:60000")],
        )
        .unwrap_err();
    assert_eq!(failure.kind, FailureKind::Deadline, "{failure}");
    within(started);

    let started = Instant::now();
    let config = [("init_sleep_ms".to_owned(), "60000".to_owned())];
    match plugin.instantiate("acme", &config) {
        Err(WasmError::InitFailed { failure, .. }) => {
            assert_eq!(failure.kind, FailureKind::Deadline, "{failure}");
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("init slept past its deadline and succeeded"),
    }
    within(started);

    // A short sleep inside the deadline is a sleep like any other.
    let mut instance = plugin.instantiate("acme", &[]).unwrap();
    let started = Instant::now();
    instance
        .handle(&origin, msg("acme.in.x", "sleep:20"))
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(20));
}

/// On the host: the sleeping message is retried, then dead-lettered for its
/// deadline, while the neighbour's messages all come out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_guest_is_dead_lettered_and_its_neighbour_flows() {
    let (outputs, dead) = run("deadline = \"100ms\"", "sleep:600000").await;
    assert!(outputs.is_empty());
    let why = reason(&dead);
    assert!(why.contains("deadline"), "{why}");
}

/// 6,000 outputs used to be sent before any PubAck was awaited, past
/// async-nats's 5,000 in-flight PubAcks: the tenant wedged and the message
/// was dropped after max_deliver. Over the default `max_outputs` (1,000) it
/// is now a dead letter naming the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_thousand_outputs_are_dead_lettered_over_max_outputs() {
    let (outputs, dead) = run("", "fanout:6000").await;
    assert!(outputs.is_empty(), "nothing half-published");
    let why = reason(&dead);
    assert!(why.starts_with("limit max_outputs: 6000 outputs"), "{why}");
    assert_eq!(header(&dead[0], "Sluice-Delivered"), Some("1"));
}

/// With `max_outputs` raised, 6,000 outputs are published in bounded
/// windows (never past the in-flight PubAck limit) and all stored before
/// the source is acked; in-progress acks keep it from redelivery meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_thousand_allowed_outputs_are_all_stored() {
    let (outputs, dead) = run("max_outputs = 10000\ndeadline = \"5s\"", "fanout:6000").await;
    assert!(dead.is_empty(), "{:?}", dead.first().map(|d| &d.headers));
    assert_eq!(outputs.len(), 6000);
    let last = outputs
        .iter()
        .find(|m| header(m, "Nats-Msg-Id") == Some("acme:ACME:1:5999"));
    assert!(last.is_some(), "the last output, under its own id");
}

/// 200,000 small outputs: over `max_outputs`, a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_thousand_outputs_are_dead_lettered() {
    let (outputs, dead) = run("deadline = \"10s\"\nmemory = \"512MiB\"", "fanout:200000").await;
    assert!(outputs.is_empty());
    let why = reason(&dead);
    assert!(
        why.starts_with("limit max_outputs: 200000 outputs"),
        "{why}"
    );
}

/// One 64 MiB output: over `max_output_bytes` (16 MiB), a dead letter at
/// once rather than a publish the server refuses on every delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sixty_four_mebibyte_output_is_dead_lettered() {
    let (outputs, dead) = run(
        "deadline = \"10s\"\nmemory = \"512MiB\"",
        &format!("big:{}", 64 << 20),
    )
    .await;
    assert!(outputs.is_empty());
    let why = reason(&dead);
    assert!(why.starts_with("limit max_output_bytes"), "{why}");
    assert_eq!(header(&dead[0], "Sluice-Delivered"), Some("1"));
}

/// A 5,000-byte subject does not fit the server's 4 KiB protocol line: the
/// server closed the connection every tenant shares. Now it is refused
/// before it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_over_four_kilobytes_is_dead_lettered() {
    let (outputs, dead) = run("", "subject:5000").await;
    assert!(outputs.is_empty());
    let why = reason(&dead);
    assert!(
        why.starts_with("limit max_subject_bytes: output 0"),
        "{why}"
    );
}

/// A header name with CR/LF would inject protocol lines: refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_name_with_cr_lf_is_dead_lettered() {
    let (outputs, dead) = run("", "crlf").await;
    assert!(outputs.is_empty());
    let why = reason(&dead);
    assert!(why.contains("invalid name or value"), "{why}");
}

/// A guest's own `Nats-*` and `Sluice-*` headers are dropped: the host's
/// id, tenant and plugin stand, and no instruction to the output stream
/// (expected stream or sequence, TTL, rollup) gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_cannot_set_nats_or_sluice_headers() {
    let (outputs, dead) = run("", "claim").await;
    assert!(dead.is_empty());
    assert_eq!(outputs.len(), 1);
    let out = &outputs[0];
    assert_eq!(header(out, "Nats-Msg-Id"), Some("acme:ACME:1:0"));
    assert_eq!(header(out, "Sluice-Tenant"), Some("acme"));
    assert!(
        header(out, "Sluice-Plugin")
            .unwrap()
            .starts_with("hostile@")
    );
    for gone in [
        "Nats-Expected-Stream",
        "Nats-Expected-Last-Sequence",
        "Nats-TTL",
        "Nats-Rollup",
    ] {
        assert_eq!(header(out, gone), None, "{gone}");
    }
    assert_eq!(header(out, "X-Kept"), Some("yes"));
}

/// `retry(u32::MAX)` waits `max_retry_delay` (300 ms here), not 49 days:
/// the message is redelivered and dead-lettered on its last delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_forever_is_capped_and_dead_lettered() {
    let (outputs, dead) = run("", "retry-max").await;
    assert!(outputs.is_empty());
    let why = reason(&dead);
    assert!(why.contains("asked to retry"), "{why}");
    assert_eq!(header(&dead[0], "Sluice-Delivered"), Some("2"));
}

/// The caps are per plugin: a config cannot set one to 0, nor a subject
/// cap past what the server's protocol line holds.
#[test]
fn output_caps_are_checked_in_the_config() {
    let (_dir, path) = config_file(&config("max_outputs = 0"), "nats://127.0.0.1:1");
    let e = Config::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("plugin.hostile.max_outputs: must be at least 1"),
        "{e}"
    );
    let (_dir, path) = config_file(&config("max_subject_bytes = 5000"), "nats://127.0.0.1:1");
    let e = Config::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("plugin.hostile.max_subject_bytes: must be at most 3072"),
        "{e}"
    );
    let (_dir, path) = config_file(&config("max_outputs = 7"), "nats://127.0.0.1:1");
    let spec = Config::load(&path).unwrap().plugin_spec("hostile").unwrap();
    assert_eq!(spec.max_outputs, 7);
    assert_eq!(
        usize::try_from(spec.max_subject_bytes).unwrap(),
        OutputCaps::default().max_subject
    );
}

/// A guest logging in a loop used to write every line to the host's log;
/// now an instance gets `log_lines_per_second` and the rest are dropped
/// and counted.
#[test]
fn a_guest_that_floods_the_log_is_held_to_its_rate() {
    let plugin = load(
        "hostile",
        PluginLimits {
            log_lines_per_second: 10,
            ..crate::support::limits()
        },
    );
    let before = sluice::wasm::log_lines_dropped();
    let mut instance = plugin.instantiate("acme", &[]).unwrap();
    instance
        .handle(
            &crate::support::origin("acme"),
            msg("acme.in.x", "log:1000"),
        )
        .unwrap();
    // Other tests may drop lines at the same time; this one drops 990.
    assert!(sluice::wasm::log_lines_dropped() - before >= 990);
}
