//! Run a plugin's golden cases (`cases.json`) against its [`Handler`] in a
//! native unit test.
//!
//! The host runs the same files through its real pipeline, and every
//! language version of a plugin must pass them; running them here too
//! catches a wrong case or a wrong plugin before any component is built.
//!
//! The format is specified in docs/plugins.md ("The golden-case format");
//! the host's runner (`runtime/src/cases.rs`) and the Python and
//! JavaScript ones implement the same spec, and all four run
//! `plugins/testing/mirror/cases.json`, which exercises its corners:
//!
//! ```json
//! {"cases": [{
//!   "name": "...",
//!   "config": {"key": "value"},
//!   "origin": {"tenant": "acme"},
//!   "input": {"subject": "s", "headers": [["k", "v"]], "payload_json": {}},
//!   "expect": {"verdict": "next", "message": {"subject": "s", "headers": [], "payload_json": {}}}
//! }]}
//! ```
//!
//! `origin` fields default to tenant `acme`, stream `IN`, stream_seq 1,
//! delivered 1, published_ms 0. A message carries at most one of `payload`
//! (UTF-8 text, compared exactly), `payload_json` (written compactly in
//! file order on input, compared structurally on output) and
//! `payload_base64` (padded, canonical; compared exactly); none is an empty
//! payload. Expectations: `next` + `message`, `publish` + `messages`,
//! `ack`, `dead-letter` (+ `reason_contains`), `retry` (+ `delay_ms`). Any
//! other key fails the whole file with the case and the key.

use serde_json::{Map, Value};

use crate::{Config, Handler, Message, Origin, Verdict};

/// Run every case in `cases_json` through a fresh `H` (one `init` per case,
/// as the host builds an instance per stage config). Returns a report of
/// every failing case, or of a malformed file (then no case runs).
pub fn run<H: Handler>(cases_json: &str) -> Result<(), String> {
    let cases = parse(cases_json)?;
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            run_case::<H>(case)
                .err()
                .map(|err| format!("case \"{}\": {err}", case.name))
        })
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

/// What an expected message's payload must be.
enum PayloadWant {
    /// These bytes exactly (`payload`, `payload_base64`, or none: empty).
    Bytes(Vec<u8>),
    /// JSON equal to this (`payload_json`).
    Json(Value),
}

struct MessageWant {
    subject: String,
    headers: Vec<(String, String)>,
    payload: PayloadWant,
}

enum Expect {
    Next(MessageWant),
    Publish(Vec<MessageWant>),
    Ack,
    DeadLetter(Option<String>),
    Retry(Option<u32>),
}

struct Case {
    name: String,
    config: Vec<(String, String)>,
    origin: Origin,
    input: Message,
    expect: Expect,
}

// --- reading the format ---------------------------------------------------

const CASE_KEYS: &[&str] = &["name", "config", "origin", "input", "expect"];
const ORIGIN_KEYS: &[&str] = &[
    "tenant",
    "stream",
    "stream_seq",
    "delivered",
    "published_ms",
];
const MESSAGE_KEYS: &[&str] = &[
    "subject",
    "headers",
    "payload",
    "payload_json",
    "payload_base64",
];
const PAYLOAD_KEYS: &[&str] = &["payload", "payload_json", "payload_base64"];
const VERDICTS: &[&str] = &["next", "publish", "ack", "dead-letter", "retry"];

fn at(place: &str, what: impl std::fmt::Display) -> String {
    if place.is_empty() {
        what.to_string()
    } else {
        format!("{place}: {what}")
    }
}

fn object<'a>(value: &'a Value, place: &str, what: &str) -> Result<&'a Map<String, Value>, String> {
    value
        .as_object()
        .ok_or_else(|| at(place, format!("{what} is not an object")))
}

fn known_keys(map: &Map<String, Value>, allowed: &[&str], place: &str) -> Result<(), String> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(key) => Err(at(
            place,
            format!(
                "unknown key \"{key}\" (expected one of: {})",
                allowed.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

fn required<'a>(map: &'a Map<String, Value>, key: &str, place: &str) -> Result<&'a Value, String> {
    map.get(key)
        .ok_or_else(|| at(place, format!("missing key \"{key}\"")))
}

fn string(value: &Value, key: &str, place: &str) -> Result<String, String> {
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| at(place, format!("\"{key}\" is not a string")))
}

fn integer(value: &Value, key: &str, max: u64, place: &str) -> Result<u64, String> {
    value.as_u64().filter(|v| *v <= max).ok_or_else(|| {
        at(
            place,
            format!("\"{key}\" is not an integer from 0 to {max}"),
        )
    })
}

fn parse(text: &str) -> Result<Vec<Case>, String> {
    let file: Value = serde_json::from_str(text).map_err(|err| format!("the file: {err}"))?;
    let map = object(&file, "", "the file")?;
    known_keys(map, &["cases"], "the file")?;
    let list = required(map, "cases", "the file")?
        .as_array()
        .ok_or("the file: \"cases\" is not an array")?;
    if list.is_empty() {
        return Err("the file: \"cases\" is empty".to_owned());
    }
    let mut cases: Vec<Case> = Vec::with_capacity(list.len());
    for (index, value) in list.iter().enumerate() {
        let case = case_of(value, index)?;
        if cases.iter().any(|c| c.name == case.name) {
            return Err(format!(
                "case \"{}\": another case has the same name",
                case.name
            ));
        }
        cases.push(case);
    }
    Ok(cases)
}

fn case_of(value: &Value, index: usize) -> Result<Case, String> {
    let unnamed = format!("case #{}", index + 1);
    let map = object(value, &unnamed, "the case")?;
    let name = match map.get("name") {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        Some(_) => return Err(at(&unnamed, "\"name\" is not a non-empty string")),
        None => return Err(at(&unnamed, "missing key \"name\"")),
    };
    case_body(map, name.clone()).map_err(|e| format!("case \"{name}\": {e}"))
}

fn case_body(map: &Map<String, Value>, name: String) -> Result<Case, String> {
    known_keys(map, CASE_KEYS, "")?;
    let config = match map.get("config") {
        None => Vec::new(),
        Some(value) => object(value, "", "\"config\"")?
            .iter()
            .map(|(k, v)| Ok((k.clone(), string(v, k, "config")?)))
            .collect::<Result<_, String>>()?,
    };
    let origin = origin_of(map.get("origin"))?;
    let input = object(required(map, "input", "")?, "", "\"input\"")?;
    let input = message_of(input, "input")?;
    let expect = expect_of(required(map, "expect", "")?)?;
    Ok(Case {
        name,
        config,
        origin,
        input,
        expect,
    })
}

fn origin_of(value: Option<&Value>) -> Result<Origin, String> {
    let mut origin = Origin {
        tenant: "acme".into(),
        stream: "IN".into(),
        stream_seq: 1,
        delivered: 1,
        published_ms: 0,
    };
    let Some(value) = value else {
        return Ok(origin);
    };
    let map = object(value, "", "\"origin\"")?;
    known_keys(map, ORIGIN_KEYS, "origin")?;
    if let Some(v) = map.get("tenant") {
        origin.tenant = string(v, "tenant", "origin")?;
    }
    if let Some(v) = map.get("stream") {
        origin.stream = string(v, "stream", "origin")?;
    }
    if let Some(v) = map.get("stream_seq") {
        origin.stream_seq = integer(v, "stream_seq", u64::MAX, "origin")?;
    }
    if let Some(v) = map.get("delivered") {
        let delivered = integer(v, "delivered", u32::MAX.into(), "origin")?;
        origin.delivered = u32::try_from(delivered).unwrap_or(u32::MAX);
    }
    if let Some(v) = map.get("published_ms") {
        origin.published_ms = integer(v, "published_ms", u64::MAX, "origin")?;
    }
    Ok(origin)
}

type Parts<'a> = (String, Vec<(String, String)>, Option<(&'a str, &'a Value)>);

fn message_parts<'a>(map: &'a Map<String, Value>, place: &str) -> Result<Parts<'a>, String> {
    known_keys(map, MESSAGE_KEYS, place)?;
    let subject = string(required(map, "subject", place)?, "subject", place)?;
    let bad_headers = || at(place, "\"headers\" is not a list of [name, value] strings");
    let headers = match map.get("headers") {
        None => Vec::new(),
        Some(value) => value
            .as_array()
            .ok_or_else(bad_headers)?
            .iter()
            .map(|pair| match pair.as_array().map(Vec::as_slice) {
                Some([Value::String(n), Value::String(v)]) => Some((n.clone(), v.clone())),
                _ => None,
            })
            .collect::<Option<_>>()
            .ok_or_else(bad_headers)?,
    };
    let payloads: Vec<(&str, &Value)> = map
        .iter()
        .filter(|(k, _)| PAYLOAD_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    match payloads.as_slice() {
        [] => Ok((subject, headers, None)),
        [one] => Ok((subject, headers, Some(*one))),
        _ => Err(at(
            place,
            "more than one of \"payload\", \"payload_json\", \"payload_base64\"",
        )),
    }
}

fn payload_bytes(key: &str, value: &Value, place: &str) -> Result<Vec<u8>, String> {
    let text = string(value, key, place)?;
    if key == "payload" {
        return Ok(text.into_bytes());
    }
    decode_base64(&text)
        .ok_or_else(|| at(place, "\"payload_base64\" is not padded, canonical base64"))
}

fn message_of(map: &Map<String, Value>, place: &str) -> Result<Message, String> {
    let (subject, headers, payload) = message_parts(map, place)?;
    let mut msg = Message::new(subject, Vec::new());
    msg.headers = headers;
    match payload {
        None => {}
        Some(("payload_json", json)) => msg.set_json(json),
        Some((key, value)) => msg.payload = payload_bytes(key, value, place)?,
    }
    Ok(msg)
}

fn message_want(value: &Value, place: &str) -> Result<MessageWant, String> {
    let (subject, headers, payload) = message_parts(object(value, place, "the message")?, place)?;
    let payload = match payload {
        None => PayloadWant::Bytes(Vec::new()),
        Some(("payload_json", json)) => PayloadWant::Json(json.clone()),
        Some((key, value)) => PayloadWant::Bytes(payload_bytes(key, value, place)?),
    };
    Ok(MessageWant {
        subject,
        headers,
        payload,
    })
}

fn expect_of(value: &Value) -> Result<Expect, String> {
    let map = object(value, "", "\"expect\"")?;
    let kind = string(required(map, "verdict", "expect")?, "verdict", "expect")?;
    let extra: &[&str] = match kind.as_str() {
        "next" => &["message"],
        "publish" => &["messages"],
        "ack" => &[],
        "dead-letter" => &["reason_contains"],
        "retry" => &["delay_ms"],
        other => {
            return Err(format!(
                "expect: \"verdict\" is \"{other}\", not one of {}",
                VERDICTS.join(", ")
            ));
        }
    };
    let allowed: Vec<&str> = std::iter::once("verdict")
        .chain(extra.iter().copied())
        .collect();
    known_keys(map, &allowed, "expect")?;
    Ok(match kind.as_str() {
        "next" => Expect::Next(message_want(
            required(map, "message", "expect")?,
            "expect.message",
        )?),
        "publish" => Expect::Publish(
            required(map, "messages", "expect")?
                .as_array()
                .ok_or("expect: \"messages\" is not an array")?
                .iter()
                .enumerate()
                .map(|(i, m)| message_want(m, &format!("expect.messages[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        "ack" => Expect::Ack,
        "dead-letter" => Expect::DeadLetter(
            map.get("reason_contains")
                .map(|v| string(v, "reason_contains", "expect"))
                .transpose()?,
        ),
        _ => Expect::Retry(
            map.get("delay_ms")
                .map(|v| integer(v, "delay_ms", u32::MAX.into(), "expect"))
                .transpose()?
                .map(|ms| u32::try_from(ms).unwrap_or(u32::MAX)),
        ),
    })
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, in its one canonical spelling (unused
/// trailing bits zero), as the host's `base64` crate accepts it.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (index, quad) in bytes.chunks(4).enumerate() {
        let last = index + 1 == bytes.len() / 4;
        let pad = quad.iter().rev().take_while(|&&b| b == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut bits = 0u32;
        for &b in &quad[..4 - pad] {
            let digit = BASE64.iter().position(|&c| c == b)?;
            bits = bits << 6 | digit as u32;
        }
        bits <<= 6 * pad;
        let decoded = [(bits >> 16) as u8, (bits >> 8) as u8, bits as u8];
        let keep = 3 - pad;
        if decoded[keep..].iter().any(|&b| b != 0) {
            return None;
        }
        out.extend_from_slice(&decoded[..keep]);
    }
    Some(out)
}

// --- running --------------------------------------------------------------

fn run_case<H: Handler>(case: &Case) -> Result<(), String> {
    let handler =
        H::init(Config::new(case.config.clone())).map_err(|err| format!("init failed: {err}"))?;
    let verdict = handler.handle(&case.origin, case.input.clone());
    check(&case.expect, &verdict).map_err(|err| format!("{err}; got {}", describe(&verdict)))
}

fn check(expect: &Expect, verdict: &Verdict) -> Result<(), String> {
    match (expect, verdict) {
        (Expect::Next(want), Verdict::Next(msg)) => check_message(want, msg),
        (Expect::Publish(wants), Verdict::Publish(msgs)) => {
            if wants.len() != msgs.len() {
                return Err(format!(
                    "expected {} published messages, got {}",
                    wants.len(),
                    msgs.len()
                ));
            }
            wants
                .iter()
                .zip(msgs)
                .enumerate()
                .try_for_each(|(index, (want, got))| {
                    check_message(want, got).map_err(|err| format!("message {index}: {err}"))
                })
        }
        (Expect::Ack, Verdict::Ack) => Ok(()),
        (Expect::DeadLetter(needle), Verdict::DeadLetter(reason)) => match needle {
            Some(needle) if !reason.contains(needle.as_str()) => {
                Err(format!("reason does not contain \"{needle}\""))
            }
            _ => Ok(()),
        },
        (Expect::Retry(want), Verdict::Retry(delay)) => match want {
            Some(want) if want != delay => Err(format!("expected a delay of {want} ms")),
            _ => Ok(()),
        },
        _ => Err(format!("expected verdict {}", expect.kind())),
    }
}

impl Expect {
    fn kind(&self) -> &'static str {
        match self {
            Expect::Next(_) => "next",
            Expect::Publish(_) => "publish",
            Expect::Ack => "ack",
            Expect::DeadLetter(_) => "dead-letter",
            Expect::Retry(_) => "retry",
        }
    }
}

fn check_message(want: &MessageWant, got: &Message) -> Result<(), String> {
    if want.subject != got.subject {
        return Err(format!("expected subject {:?}", want.subject));
    }
    if want.headers != got.headers {
        return Err(format!("expected headers {:?}", want.headers));
    }
    match &want.payload {
        PayloadWant::Json(json) => {
            let actual: Value = serde_json::from_slice(&got.payload)
                .map_err(|err| format!("payload is not JSON ({err})"))?;
            if &actual != json {
                return Err(format!("expected payload_json {json}"));
            }
        }
        PayloadWant::Bytes(bytes) => {
            if *bytes != got.payload {
                return Err(format!(
                    "expected payload {:?}",
                    String::from_utf8_lossy(bytes)
                ));
            }
        }
    }
    Ok(())
}

fn describe(verdict: &Verdict) -> String {
    let msg = |m: &Message| {
        format!(
            "{{subject: {:?}, headers: {:?}, payload: {:?}}}",
            m.subject,
            m.headers,
            String::from_utf8_lossy(&m.payload)
        )
    };
    match verdict {
        Verdict::Next(m) => format!("next {}", msg(m)),
        Verdict::Publish(ms) => format!(
            "publish [{}]",
            ms.iter().map(msg).collect::<Vec<_>>().join(", ")
        ),
        Verdict::Ack => "ack".to_owned(),
        Verdict::DeadLetter(reason) => format!("dead-letter {reason:?}"),
        Verdict::Retry(delay) => format!("retry {delay}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Passes every message on unchanged.
    struct Echo;

    impl Handler for Echo {
        fn init(_config: Config) -> Result<Self, String> {
            Ok(Echo)
        }

        fn handle(&self, _origin: &Origin, msg: Message) -> Verdict {
            Verdict::Next(msg)
        }
    }

    fn one(input: &str, expect: &str) -> String {
        format!(r#"{{"cases": [{{"name": "c1", "input": {input}, "expect": {expect}}}]}}"#)
    }

    const INPUT: &str = r#"{"subject": "a"}"#;

    fn next(message: &str) -> String {
        format!(r#"{{"verdict": "next", "message": {message}}}"#)
    }

    #[test]
    fn every_invalid_file_is_refused_with_the_shared_error() {
        // The same list, with the same errors, refutes the host's, the
        // Python and the JavaScript runner: one spec, four runners.
        let listed: Value = serde_json::from_str(include_str!(
            "../../plugins/testing/mirror/invalid-cases.json"
        ))
        .unwrap();
        let listed = listed["invalid"].as_array().unwrap();
        assert!(!listed.is_empty());
        for item in listed {
            let err = run::<Echo>(&item["file"].to_string()).unwrap_err();
            let want = item["error"].as_str().unwrap();
            assert!(
                err.starts_with(want),
                "{}: gave {err:?}, want {want:?}",
                item["what"]
            );
        }
    }

    #[test]
    fn base64_payloads_are_decoded_and_must_be_canonical() {
        assert_eq!(decode_base64("").unwrap(), b"");
        assert_eq!(decode_base64("AP8=").unwrap(), [0, 255]);
        assert_eq!(decode_base64("eyJhIjoxfQ==").unwrap(), br#"{"a":1}"#);
        assert_eq!(decode_base64("AAEC").unwrap(), [0, 1, 2]);
        for bad in ["AP8", "AP9=", "A P8=", "*P8=", "AA==AAAA", "A==="] {
            assert_eq!(decode_base64(bad), None, "{bad}");
        }
        let case = one(
            r#"{"subject": "a", "payload_base64": "AP8="}"#,
            &next(r#"{"subject": "a", "payload_base64": "AP8="}"#),
        );
        assert_eq!(run::<Echo>(&case), Ok(()));
        let wrong = one(
            r#"{"subject": "a", "payload_base64": "AP8="}"#,
            &next(r#"{"subject": "a", "payload_base64": "AP4="}"#),
        );
        assert!(run::<Echo>(&wrong).is_err());
    }

    #[test]
    fn a_missing_payload_is_an_empty_one_on_both_sides() {
        let case = one(INPUT, &next(INPUT));
        assert_eq!(run::<Echo>(&case), Ok(()));
        let wrong = one(r#"{"subject": "a", "payload": "x"}"#, &next(INPUT));
        assert!(run::<Echo>(&wrong).is_err());
    }

    #[test]
    fn json_payloads_compare_by_structure_and_number_kind() {
        let input = r#"{"subject": "a", "payload": "{\"b\":[1],\"a\":1}"}"#;
        let same = one(
            input,
            &next(r#"{"subject": "a", "payload_json": {"a": 1, "b": [1]}}"#),
        );
        assert_eq!(run::<Echo>(&same), Ok(()));
        let float = one(
            input,
            &next(r#"{"subject": "a", "payload_json": {"a": 1.0, "b": [1]}}"#),
        );
        assert!(run::<Echo>(&float).is_err());
        // On input, payload_json is written in the file's order.
        let ordered = one(
            r#"{"subject": "a", "payload_json": {"z": 1, "a": 2.0}}"#,
            &next(r#"{"subject": "a", "payload": "{\"z\":1,\"a\":2.0}"}"#),
        );
        assert_eq!(run::<Echo>(&ordered), Ok(()));
    }
}
