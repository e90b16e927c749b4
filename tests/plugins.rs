//! The reference plugins' golden cases (`plugins/<name>/cases.json`) run
//! through the real host: each case's config goes to `init`, its input
//! through `handle`, and the verdict must match. The same files are the
//! conformance suite for every language's version of a plugin.

use std::path::Path;

use sluice::cases::Cases;

use crate::support::{limits, load, root};

/// Run every case of `cases_file` against the built plugin `plugin`;
/// returns the failures.
pub fn run_cases(plugin: &str, cases_file: &Path) -> Vec<String> {
    let cases = Cases::load(cases_file).unwrap();
    assert!(!cases.is_empty(), "{} has no cases", cases_file.display());
    cases.run(&load(plugin, limits()))
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
