//! The reference plugins' golden cases (`plugins/<name>/cases.json`) run
//! through the real host: each case's config goes to `init`, its input
//! through `handle`, and the verdict must match. The same files are the
//! conformance suite for every language's version of a plugin.

use std::path::Path;

use base64::Engine as _;
use serde_json::Value;
use sluice::pipeline::Stage;
use sluice::wasm::pool::StageRunner;
use sluice::{Message, Origin, Verdict};

use crate::support::{limits, load, root};

/// Run every case of `cases_file` against the built plugin `plugin`;
/// returns the failures (case name and what differed).
pub fn run_cases(plugin: &str, cases_file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(cases_file).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let cases = doc["cases"]
        .as_array()
        .expect("cases.json has a `cases` array");
    assert!(!cases.is_empty(), "{} has no cases", cases_file.display());
    let plugin = load(plugin, limits());
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap_or("<unnamed>").to_owned();
        let config: Vec<(String, String)> = case["config"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let origin = origin_of(&case["origin"]);
        let input = message_of(&case["input"]);
        let stage = Stage::new(plugin.clone(), config);
        let got = StageRunner::default().call(&stage, &origin, input);
        if let Err(diff) = compare(&case["expect"], got) {
            failures.push(format!("{name}: {diff}"));
        }
    }
    failures
}

fn origin_of(v: &Value) -> Origin {
    Origin {
        tenant: v["tenant"].as_str().unwrap_or("acme").to_owned(),
        stream: v["stream"].as_str().unwrap_or("IN").to_owned(),
        stream_seq: v["stream_seq"].as_u64().unwrap_or(1),
        delivered: v["delivered"].as_u64().map_or(1, |d| d as u32),
        published_ms: v["published_ms"].as_u64().unwrap_or(0),
    }
}

fn headers_of(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    (
                        h[0].as_str().unwrap().to_owned(),
                        h[1].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn message_of(v: &Value) -> Message {
    let payload = if let Some(json) = v.get("payload_json") {
        serde_json::to_vec(json).unwrap()
    } else if let Some(b64) = v["payload_base64"].as_str() {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    } else {
        v["payload"].as_str().unwrap_or("").as_bytes().to_vec()
    };
    Message {
        subject: v["subject"].as_str().unwrap().to_owned(),
        headers: headers_of(&v["headers"]),
        payload,
    }
}

fn compare_message(want: &Value, got: &Message) -> Result<(), String> {
    if want["subject"].as_str() != Some(got.subject.as_str()) {
        return Err(format!(
            "subject: want {}, got {}",
            want["subject"], got.subject
        ));
    }
    let want_headers = headers_of(&want["headers"]);
    if want_headers != got.headers {
        return Err(format!(
            "headers: want {want_headers:?}, got {:?}",
            got.headers
        ));
    }
    if let Some(json) = want.get("payload_json") {
        let parsed: Value = serde_json::from_slice(&got.payload).map_err(|e| {
            format!(
                "payload is not JSON ({e}): {}",
                String::from_utf8_lossy(&got.payload)
            )
        })?;
        if &parsed != json {
            return Err(format!("payload: want {json}, got {parsed}"));
        }
    } else if let Some(text) = want["payload"].as_str()
        && text.as_bytes() != got.payload
    {
        return Err(format!(
            "payload: want {text:?}, got {:?}",
            String::from_utf8_lossy(&got.payload)
        ));
    }
    Ok(())
}

fn compare(want: &Value, got: Result<Verdict, sluice::wasm::GuestFailure>) -> Result<(), String> {
    let got = got.map_err(|f| format!("guest failed: {f}"))?;
    let kind = want["verdict"].as_str().unwrap();
    if kind != got.kind() {
        return Err(format!("verdict: want {kind}, got {got:?}"));
    }
    match got {
        Verdict::Next(m) => compare_message(&want["message"], &m),
        Verdict::Publish(ms) => {
            let wants = want["messages"].as_array().unwrap();
            if wants.len() != ms.len() {
                return Err(format!(
                    "want {} messages, got {}: {ms:?}",
                    wants.len(),
                    ms.len()
                ));
            }
            wants
                .iter()
                .zip(&ms)
                .try_for_each(|(w, m)| compare_message(w, m))
        }
        Verdict::Ack => Ok(()),
        Verdict::DeadLetter(reason) => match want["reason_contains"].as_str() {
            Some(part) if !reason.contains(part) => {
                Err(format!("reason {reason:?} lacks {part:?}"))
            }
            _ => Ok(()),
        },
        Verdict::Retry(ms) => match want["delay_ms"].as_u64() {
            Some(d) if d != u64::from(ms) => Err(format!("delay: want {d}, got {ms}")),
            _ => Ok(()),
        },
    }
}

fn check(plugin: &str) {
    let failures = run_cases(plugin, &root().join(format!("plugins/{plugin}/cases.json")));
    assert!(
        failures.is_empty(),
        "{plugin} failed golden cases:\n{}",
        failures.join("\n")
    );
}

#[test]
fn transform_passes_its_golden_cases() {
    check("transform");
}

#[test]
fn tenant_stamp_passes_its_golden_cases() {
    check("tenant-stamp");
}

#[test]
fn route_passes_its_golden_cases() {
    check("route");
}

#[test]
fn the_comparison_catches_a_wrong_verdict() {
    // Guard against a runner that passes everything: a deliberately wrong
    // expectation must fail.
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.json");
    std::fs::write(
        &cases,
        r#"{"cases": [
            {"name": "wrong verdict", "input": {"subject": "acme.in.x", "payload_json": {"a": 1}}, "expect": {"verdict": "ack"}},
            {"name": "wrong payload", "input": {"subject": "acme.in.x", "payload_json": {"a": 1}},
             "expect": {"verdict": "next", "message": {"subject": "acme.in.x", "headers": [], "payload_json": {"a": 2}}}}
        ]}"#,
    )
    .unwrap();
    let failures = run_cases("transform", &cases);
    assert_eq!(failures.len(), 2, "{failures:?}");
}

#[test]
fn a_plugin_that_rejects_its_config_fails_init_with_the_reason() {
    let plugin = load("transform", limits());
    let err = plugin
        .instantiate("acme", &[("no-such-key".into(), "x".into())])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("rejected its config") && err.contains("no-such-key"),
        "{err}"
    );
}
