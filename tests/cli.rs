//! The `sluice` binary as a user runs it: `handle` prints one JSON object and
//! exits 0 whatever the verdict; `check` validates a config and its plugins.

use std::io::Write;
use std::process::{Output, Stdio};

use serde_json::Value;

use crate::support::{plugin_path, sluice};

fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = sluice()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn handle_runs_one_plugin_and_prints_its_verdict() {
    let transform = plugin_path("transform");
    let out = run(
        &[
            "handle",
            "--plugin",
            transform.to_str().unwrap(),
            "--plugin-config",
            "rename.user=customer",
            "--subject",
            "acme.in.orders",
            "--header",
            "Correlation-Id=c1",
        ],
        br#"{"user":"ann","total":3}"#,
    );
    let v = json(&out);
    assert_eq!(v["verdict"], "next", "{v}");
    assert_eq!(v["message"]["subject"], "acme.in.orders");
    assert_eq!(
        v["message"]["headers"][0],
        serde_json::json!(["Correlation-Id", "c1"])
    );
    let payload: Value = serde_json::from_str(v["message"]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload, serde_json::json!({"customer": "ann", "total": 3}));
}

#[test]
fn handle_reports_dead_letters_and_traps_with_exit_0() {
    let transform = plugin_path("transform");
    let v = json(&run(
        &["handle", "--plugin", transform.to_str().unwrap()],
        b"not json",
    ));
    assert_eq!(v["verdict"], "dead-letter");
    assert!(
        v["reason"].as_str().unwrap().contains("not valid JSON"),
        "{v}"
    );

    let spin = plugin_path("spin");
    let v = json(&run(
        &[
            "handle",
            "--plugin",
            spin.to_str().unwrap(),
            "--deadline",
            "20ms",
        ],
        b"{}",
    ));
    assert_eq!(v["verdict"], "retry");
    assert_eq!(v["cause"]["kind"], "deadline", "{v}");

    let counter = plugin_path("counter");
    let v = json(&run(
        &["handle", "--plugin", counter.to_str().unwrap()],
        b"boom",
    ));
    assert_eq!(v["cause"]["kind"], "trap", "{v}");
}

#[test]
fn handle_prints_binary_payloads_as_base64() {
    let echo = plugin_path("echo");
    let v = json(&run(
        &["handle", "--plugin", echo.to_str().unwrap()],
        &[0xff, 0x00, 0xfe],
    ));
    assert_eq!(v["message"]["payload_base64"], "/wD+", "{v}");
    assert!(v["message"].get("payload").is_none());
}

#[test]
fn handle_runs_a_configured_pipeline() {
    let out = run(
        &[
            "handle",
            "--config",
            "examples/dev.toml",
            "--tenant",
            "acme",
            "--subject",
            "acme.in.orders",
        ],
        br#"{"type":"order","user":"ann","tenant_id":"globex"}"#,
    );
    let v = json(&out);
    assert_eq!(v["verdict"], "publish", "{v}");
    let first = &v["messages"][0];
    assert!(
        first["subject"].as_str().unwrap().starts_with("acme.out."),
        "{v}"
    );
    let payload: Value = serde_json::from_str(first["payload"].as_str().unwrap()).unwrap();
    assert_eq!(
        payload["tenant_id"], "acme",
        "the host-vouched tenant wins: {payload}"
    );
    let headers = first["headers"].as_array().unwrap();
    assert!(
        headers.contains(&serde_json::json!(["Sluice-Tenant", "acme"])),
        "{v}"
    );
}

#[test]
fn handle_fails_clearly_when_the_host_cannot_run_the_plugin() {
    let out = run(&["handle", "--plugin", "no/such/file.wasm"], b"{}");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no/such/file.wasm"), "{err}");

    // A file that is not a component at all.
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"\0asm garbage").unwrap();
    let out = run(&["handle", "--plugin", bogus.to_str().unwrap()], b"{}");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bogus") && err.contains("not a valid WebAssembly component"),
        "{err}"
    );

    // A config the plugin rejects.
    let transform = plugin_path("transform");
    let out = run(
        &[
            "handle",
            "--plugin",
            transform.to_str().unwrap(),
            "--plugin-config",
            "bogus=1",
        ],
        b"{}",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rejected its config") && err.contains("bogus"),
        "{err}"
    );
}

#[test]
fn check_accepts_the_example_and_names_the_key_of_a_bad_one() {
    let out = run(&["check", "--config", "examples/dev.toml"], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ok"), "{stdout}");
    // The Rust reference plugins are built with the SDK: batch handlers.
    assert!(
        stdout.contains("transform@") && stdout.contains(" (batch)"),
        "{stdout}"
    );

    let out = run(
        &[
            "check",
            "--config",
            "tests/golden/config/unknown-tenant-key.toml",
        ],
        b"",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown-tenant-key.toml") && err.contains("filtr"),
        "{err}"
    );

    // A stage config the plugin's init rejects is caught by check too.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sluice.toml");
    let example =
        std::fs::read_to_string(crate::support::root().join("examples/dev.toml")).unwrap();
    let dist = crate::support::root().join("plugins/dist");
    let broken = example
        .replace(
            "\"../plugins/dist\"",
            &format!("{:?}", dist.to_str().unwrap()),
        )
        .replacen("config = {", "config = { nonsense = \"1\",", 1);
    std::fs::write(&cfg, broken).unwrap();
    let out = run(&["check", "--config", cfg.to_str().unwrap()], b"");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pipeline[") && err.contains("nonsense"),
        "{err}"
    );
}

#[test]
fn bench_processes_every_message_and_writes_complete_json() {
    // Correctness only: a small run must settle every message on both sides
    // and report every field. Speed is measured by running the bench, not
    // by a test.
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("out.json");
    let svg_path = dir.path().join("out.svg");
    let trace_path = dir.path().join("trace.csv");
    let nats = crate::support::root().join(".tools/venv/bin/nats-server");
    let mut cmd = sluice();
    cmd.args([
        "bench",
        "--messages",
        "2000",
        "--latency-phase",
        "1s",
        "--tenants",
        "2",
        "--latency-load",
        "0.25",
        "--rounds",
        "2",
    ])
    .arg("--json")
    .arg(&json_path)
    .arg("--plot")
    .arg(&svg_path)
    .arg("--trace")
    .arg(&trace_path);
    if nats.is_file() {
        cmd.arg("--nats-server").arg(&nats);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let trace = std::fs::read_to_string(&trace_path).unwrap();
    assert!(trace.starts_with("system,unix_s,latency_ms\n"), "{trace}");
    for key in [
        "messages",
        "payload_bytes",
        "tenants",
        "stages",
        "sluice_msgs_per_sec",
        "baseline_msgs_per_sec",
        "ratio",
        "p50_ms",
        "p99_ms",
        "peak_rss_mib",
    ] {
        assert!(
            v.get(key).is_some_and(|x| !x.is_null()),
            "missing {key}: {v}"
        );
    }
    assert_eq!(v["messages"], 2000);
    assert_eq!(v["payload_bytes"], 256);
    assert_eq!(v["stages"], 3);
    assert_eq!(v["latency_load"], 0.25);
    // Two rounds, each listed; the details are the median round's.
    let rounds = v["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2, "{v}");
    let median = v["median_round"].as_u64().unwrap() as usize;
    assert!((1..=2).contains(&median), "{v}");
    assert_eq!(rounds[median - 1]["ratio"], v["ratio"], "{v}");
    assert!(
        rounds
            .iter()
            .all(|r| r["sluice_msgs_per_sec"].as_f64().unwrap() > 0.0)
    );
    // The latency phase published at a quarter of each system's peak.
    for system in ["sluice", "baseline"] {
        let peak = v[system]["msgs_per_sec"].as_f64().unwrap();
        let rate = v[system]["latency_rate"].as_f64().unwrap();
        assert!(
            (rate - (peak * 0.25).max(1.0)).abs() < 1e-6,
            "{system}: {v}"
        );
        // The bench started the server, so it counts the server's CPU too.
        for key in ["cpu_us_per_msg", "server_cpu_us_per_msg"] {
            assert!(
                v[system][key].as_f64().is_some_and(|x| x > 0.0),
                "{system} {key}: {v}"
            );
        }
        let sent = v[system]["latency_messages"].as_u64().unwrap();
        assert!(sent > 0, "{system}: {v}");
        let over_time = v[system]["p99_over_time"].as_array().unwrap();
        assert!(!over_time.is_empty(), "{system}: {v}");
        // Every latency of the phase is in the trace, once.
        let rows = trace
            .lines()
            .filter(|l| l.starts_with(&format!("{system},")))
            .count();
        assert_eq!(rows as u64, sent, "{system}");
    }
    assert_eq!(v["sluice"]["processed"], 2000, "{v}");
    assert_eq!(v["baseline"]["processed"], 2000, "{v}");
    assert!(v["sluice_msgs_per_sec"].as_f64().unwrap() > 0.0);
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    // Three panels, each with both systems.
    assert!(svg.starts_with("<svg"), "{svg}");
    assert_eq!(svg.matches("<polyline").count(), 6, "{svg}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("throughput (msg/s)") && table.contains("ratio"),
        "{table}"
    );
}

#[test]
fn bad_plugin_files_are_refused_with_a_message_that_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let echo = std::fs::read(plugin_path("echo")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.wasm", vec![], "not a valid WebAssembly component"),
        (
            "text.wasm",
            b"hello, world".to_vec(),
            "not a valid WebAssembly component",
        ),
        // A valid core module: WebAssembly, but not a component.
        (
            "core.wasm",
            b"\0asm\x01\0\0\0".to_vec(),
            "not a valid WebAssembly component",
        ),
        // A valid, empty component: it exports nothing, so it is no handler.
        (
            "empty-component.wasm",
            b"\0asm\x0d\0\x01\0".to_vec(),
            "is not a sluice handler",
        ),
        (
            "truncated.wasm",
            echo[..echo.len() / 2].to_vec(),
            "not a valid WebAssembly component",
        ),
    ];
    for (name, bytes, expected) in &cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = run(&["handle", "--plugin", path.to_str().unwrap()], b"{}");
        assert!(!out.status.success(), "{name} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        let stem = name.trim_end_matches(".wasm");
        assert!(
            err.contains(expected) && err.contains(stem),
            "{name}: {err}"
        );
        if *name == "empty-component.wasm" {
            assert!(err.contains("it exports: nothing"), "{err}");
        }
    }
    let out = run(&["handle", "--plugin", dir.path().to_str().unwrap()], b"{}");
    assert!(!out.status.success(), "a directory was accepted");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read plugin"));
}
