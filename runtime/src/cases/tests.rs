//! The golden-case format's refusals, shared by every runner.

use super::*;

fn parse(text: &str) -> Result<Cases, String> {
    Cases::parse(text, Path::new("x.cases.json")).map_err(|e| match e {
        CasesError::Invalid { message, .. } => message,
        other => other.to_string(),
    })
}

/// A file of one case whose `input` and `expect` are these.
fn one(input: &str, expect: &str) -> String {
    format!(r#"{{"cases": [{{"name": "c1", "input": {input}, "expect": {expect}}}]}}"#)
}

const ACK: &str = r#"{"verdict": "ack"}"#;

#[test]
fn a_well_formed_file_parses_in_file_order() {
    let cases = parse(&one(
        r#"{"subject": "a", "headers": [["k", "1"], ["k", "2"]], "payload_json": {"b": 1, "a": [1.0, -0]}}"#,
        r#"{"verdict": "retry", "delay_ms": 5}"#,
    ))
    .unwrap();
    let case = &cases.cases[0];
    assert_eq!(case.input.payload[..], br#"{"b":1,"a":[1.0,-0.0]}"#[..]);
    assert_eq!(case.input.headers.len(), 2);
    assert!(matches!(case.expect, Expect::Retry(Some(5))));
}

#[test]
fn config_keeps_the_file_order() {
    let text = r#"{"cases": [{"name": "c", "config": {"z": "1", "a": "2"}, "input": {"subject": "a"}, "expect": {"verdict": "ack"}}]}"#;
    let cases = parse(text).unwrap();
    assert_eq!(
        cases.cases[0].config,
        vec![("z".into(), "1".into()), ("a".into(), "2".into())]
    );
}

#[test]
fn every_invalid_file_is_refused_with_the_shared_error() {
    // The same list, with the same errors, refutes the SDK's, the
    // Python and the JavaScript runner: one spec, four runners.
    let listed: Value = serde_json::from_str(include_str!(
        "../../../plugins/testing/mirror/invalid-cases.json"
    ))
    .unwrap();
    let listed = listed["invalid"].as_array().unwrap();
    assert!(!listed.is_empty());
    for item in listed {
        let err = parse(&item["file"].to_string()).err().unwrap_or_default();
        let want = item["error"].as_str().unwrap();
        assert!(
            err.starts_with(want),
            "{}: gave {err:?}, want {want:?}",
            item["what"]
        );
    }
}

#[test]
fn base64_must_be_padded_and_canonical() {
    let ok = parse(&one(r#"{"subject": "a", "payload_base64": "AP8="}"#, ACK)).unwrap();
    assert_eq!(ok.cases[0].input.payload[..], [0, 255]);
    for bad in ["*P8=", "AA==AAAA", "A==="] {
        let input = format!(r#"{{"subject": "a", "payload_base64": "{bad}"}}"#);
        let err = parse(&one(&input, ACK)).err().unwrap_or_default();
        assert!(err.contains("canonical base64"), "{bad}: {err}");
    }
}

#[test]
fn payloads_compare_exactly_or_structurally() {
    let want = |payload: PayloadWant| MessageWant {
        subject: "s".into(),
        headers: vec![],
        payload,
    };
    let got = |payload: &str| Message::new("s", payload.as_bytes().to_vec());
    let json = |text: &str| PayloadWant::Json(serde_json::from_str(text).unwrap());
    assert!(
        compare_message(
            &want(json(r#"{"a":1,"b":[2]}"#)),
            &got(r#"{"b":[2], "a":1}"#)
        )
        .is_ok()
    );
    assert!(compare_message(&want(json(r#"{"a":1}"#)), &got(r#"{"a":1.0}"#)).is_err());
    assert!(compare_message(&want(json(r#"{"a":1}"#)), &got(r#"{"a":1,"b":2}"#)).is_err());
    assert!(compare_message(&want(PayloadWant::Bytes(vec![])), &got("x")).is_err());
    assert!(compare_message(&want(PayloadWant::Bytes(b"x".to_vec())), &got("x")).is_ok());
    let headers = MessageWant {
        headers: vec![("k".into(), "1".into())],
        ..want(PayloadWant::Bytes(vec![]))
    };
    let mut two = got("");
    two.headers = vec![("k".into(), "1".into()), ("k".into(), "1".into())];
    assert!(compare_message(&headers, &two).is_err());
}
