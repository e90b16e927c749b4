//! Poison bytes on the wire: messages a producer stored that the NATS
//! client cannot parse (a subject that is not UTF-8, header bytes that are
//! not a valid NATS header block). Published with a raw TCP producer, since
//! no client library would send them.

use std::io::{BufRead as _, BufReader, Write as _};
use std::time::Duration;

use sluice::config::Config;
use sluice::service::Service;

use crate::support::{
    config_file, header, js, nats, pair_config, publish, read_stream, settled, stream_len, wait_for,
};

const LIMIT: Duration = Duration::from_secs(60);

/// Publish raw protocol `ops` (each a complete `PUB`/`HPUB` with its
/// payload) on a fresh connection to `url`, then wait for the server's
/// `PONG` so every op has been processed.
fn raw_publish(url: &str, ops: &[Vec<u8>]) {
    let addr = url.trim_start_matches("nats://");
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("INFO "), "server greeting: {line}");
    writer
        .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true}\r\n")
        .unwrap();
    for op in ops {
        writer.write_all(op).unwrap();
    }
    writer.write_all(b"PING\r\n").unwrap();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert!(!line.starts_with("-ERR"), "server refused: {line}");
        if line.starts_with("PONG") {
            break;
        }
    }
}

/// `PUB subject payload`, with raw subject bytes.
fn pub_op(subject: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut op = b"PUB ".to_vec();
    op.extend_from_slice(subject);
    op.extend_from_slice(format!(" {}\r\n", payload.len()).as_bytes());
    op.extend_from_slice(payload);
    op.extend_from_slice(b"\r\n");
    op
}

/// `HPUB subject` with a raw header block (ending in the blank line).
fn hpub_op(subject: &[u8], headers: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut op = b"HPUB ".to_vec();
    op.extend_from_slice(subject);
    op.extend_from_slice(
        format!(" {} {}\r\n", headers.len(), headers.len() + payload.len()).as_bytes(),
    );
    op.extend_from_slice(headers);
    op.extend_from_slice(payload);
    op.extend_from_slice(b"\r\n");
    op
}

/// Two tenants on one connection: `acme` gets the poison, `globex` is the
/// neighbour. Both run `verdict` (`next` → one output).
fn config() -> String {
    pair_config(
        "",
        "ack_wait = \"2s\"\nmax_deliver = 3\nbackoff = [\"100ms\"]",
        "verdict",
    )
}

/// The poisons a producer can store, each with what its dead letter's
/// reason says. (A status line, `NATS/1.0 408`, is no poison: the server
/// stores the block without it.)
fn poisons() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "the subject is not valid UTF-8",
            pub_op(b"acme.in.\xff\xfe", b"next"),
        ),
        (
            "header name `Bad Name` is not visible ASCII",
            hpub_op(
                b"acme.in.badname",
                b"NATS/1.0\r\nBad Name: x\r\n\r\n",
                b"next",
            ),
        ),
        (
            "contains a bare CR",
            hpub_op(b"acme.in.cr", b"NATS/1.0\r\nX-A: a\rb\r\n\r\n", b"next"),
        ),
        (
            "the header block is not valid UTF-8",
            hpub_op(b"acme.in.utf8", b"NATS/1.0\r\nX-A: \xff\r\n\r\n", b"next"),
        ),
    ]
}

/// Start the host on a fresh server, store `ops` raw, then `n` ordinary
/// messages for each tenant; wait until everything is settled and return
/// acme's dead letters.
async fn run(ops: Vec<Vec<u8>>, n: u64) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let server = nats();
    let (_dir, path) = config_file(&config(), &server.url());
    let service = Service::start(Config::load(&path).unwrap()).await.unwrap();
    let js = js(&server.url()).await;
    wait_for("the input streams", LIMIT, || async {
        js.get_stream("ACME").await.is_ok() && js.get_stream("GLOBEX").await.is_ok()
    })
    .await;
    let poisons = ops.len() as u64;
    let url = server.url();
    tokio::task::spawn_blocking(move || raw_publish(&url, &ops))
        .await
        .unwrap();
    assert_eq!(stream_len(&js, "ACME").await, poisons, "all stored");
    for i in 0..n {
        publish(&js, &format!("globex.in.m{i}"), "next").await;
        publish(&js, &format!("acme.in.m{i}"), "next").await;
    }
    wait_for("the neighbour's outputs", LIMIT, || async {
        stream_len(&js, "GLOBEX_OUT").await == n
    })
    .await;
    wait_for("acme's outputs and dead letters", LIMIT, || async {
        stream_len(&js, "ACME_OUT").await == n && stream_len(&js, "ACME_DLQ").await == poisons
    })
    .await;
    settled(&js, "GLOBEX", "sluice").await;
    settled(&js, "ACME", "sluice").await;
    assert_eq!(stream_len(&js, "GLOBEX_DLQ").await, 0);
    // Nothing more comes: each poison has one dead letter, no more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stream_len(&js, "ACME_DLQ").await, poisons);
    let dead = read_stream(&js, "ACME_DLQ").await;
    service.shutdown().await;
    dead
}

/// Before: async-nats dropped the shared connection on every delivery of
/// each of these (the neighbour's messages in flight with it), and the
/// server gave up on them after max_deliver with no dead letter. Now the
/// sweep after the first drop finds them from the server's side: each ends
/// in a dead letter naming what is wrong, with the raw headers escaped,
/// and both tenants' ordinary messages all come out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_messages_are_dead_lettered_and_the_neighbour_flows() {
    let poisons = poisons();
    let dead = run(poisons.iter().map(|(_, op)| op.clone()).collect(), 50).await;
    for (seq, (want, _)) in poisons.iter().enumerate() {
        let seq = (seq + 1).to_string();
        let d = dead
            .iter()
            .find(|d| header(d, "Sluice-Source-Seq") == Some(&seq))
            .unwrap_or_else(|| panic!("no dead letter for seq {seq}"));
        let reason = header(d, "Sluice-Reason").unwrap();
        assert!(reason.starts_with("unreadable message: "), "{reason}");
        assert!(reason.contains(want), "seq {seq}: {reason}");
        assert_eq!(&d.payload[..], b"next", "the payload is kept");
        assert_eq!(header(d, "Sluice-Tenant"), Some("acme"));
        assert_eq!(
            header(d, "Nats-Msg-Id"),
            Some(format!("acme:ACME:{seq}:dlq").as_str())
        );
    }
    let cr = dead
        .iter()
        .find(|d| header(d, "Sluice-Source-Subject") == Some("acme.in.cr"))
        .unwrap();
    assert_eq!(
        header(cr, "Sluice-Source-Headers"),
        Some("NATS/1.0\\r\\nX-A: a\\rb\\r\\n\\r\\n")
    );
    let bad_subject = dead
        .iter()
        .find(|d| header(d, "Sluice-Source-Seq") == Some("1"))
        .unwrap();
    assert_eq!(
        header(bad_subject, "Sluice-Source-Subject"),
        Some("acme.in.\u{fffd}\u{fffd}")
    );
}

/// A header value with a bare CR makes async-nats panic in its connection
/// task: before, the client stopped for good and every tenant on it with
/// it ("channel closed" for ever). Now the host sees the dead client,
/// restarts its tenants on a new connection, and the sweep at bind
/// dead-letters the message before the server redelivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_kills_the_client_is_dead_lettered_on_a_new_connection() {
    let before = sluice::topology::client_restarts();
    let (_, cr) = poisons().swap_remove(2);
    let dead = run(vec![cr], 20).await;
    assert_eq!(dead.len(), 1);
    assert!(
        header(&dead[0], "Sluice-Reason")
            .unwrap()
            .contains("bare CR")
    );
    assert!(
        sluice::topology::client_restarts() > before,
        "the dead client was replaced"
    );
}
