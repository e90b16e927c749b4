//! Golden cases: a plugin's `cases.json` (input message → expected verdict)
//! run through the real host. A new plugin version that ships
//! `NAME.cases.json` must pass them before it is swapped in, and every
//! language version of a reference plugin must pass the same file.
//!
//! The format is specified once, in docs/plugins.md ("The golden-case
//! format"); this runner, the Rust SDK's (`guest-sdk/src/cases.rs`) and the
//! Python and JavaScript ones (`plugins/python/run_cases.py`,
//! `plugins/js/run_cases.mjs`) implement it alike, and all four run
//! `plugins/testing/mirror/cases.json`, which exercises its corners:
//!
//! ```json
//! {"cases": [{
//!   "name": "renames a field",
//!   "config": {"rename.user": "customer"},
//!   "origin": {"tenant": "acme"},
//!   "input": {"subject": "acme.in.x", "headers": [["k", "v"]], "payload_json": {"user": 1}},
//!   "expect": {"verdict": "next", "message": {"subject": "acme.in.x", "headers": [["k", "v"]], "payload_json": {"customer": 1}}}
//! }]}
//! ```
//!
//! In short: a case has `name` (unique), `config` (string values, passed in
//! file order), `origin` (`tenant`, `stream`, `stream_seq`, `delivered`,
//! `published_ms`), `input` and `expect`. A message has `subject`,
//! `headers` (`[name, value]` pairs, order and repeats significant) and at
//! most one of `payload` (UTF-8 text), `payload_json` (written compactly in
//! file order on input, compared structurally on output) and
//! `payload_base64` (padded, canonical); none means an empty payload, on
//! input and in an expectation alike. `expect` is `next` + `message`,
//! `publish` + `messages`, `ack`, `dead-letter` (+ `reason_contains`) or
//! `retry` (+ `delay_ms`). Every other key is an error that names the case
//! and the key, and the whole file is refused before any case runs.

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::Value;

mod json;

use crate::message::{Message, Origin, Verdict};
use crate::wasm::{Plugin, WasmError};
use json::Json;

/// A cases file could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum CasesError {
    /// Reading failed.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not JSON.
    #[error("{} is not a valid cases file", path.display())]
    Parse {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// JSON, but not the golden-case format.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong, naming the case and the key.
        message: String,
    },
}

/// What an expected message's payload must be.
#[derive(Debug)]
enum PayloadWant {
    /// These bytes exactly (`payload`, `payload_base64`, or none: empty).
    Bytes(Vec<u8>),
    /// JSON equal to this one (`payload_json`).
    Json(Value),
}

#[derive(Debug)]
struct MessageWant {
    subject: String,
    headers: Vec<(String, String)>,
    payload: PayloadWant,
}

#[derive(Debug)]
enum Expect {
    Next(MessageWant),
    Publish(Vec<MessageWant>),
    Ack,
    DeadLetter(Option<String>),
    Retry(Option<u32>),
}

#[derive(Debug)]
struct Case {
    name: String,
    config: Vec<(String, String)>,
    origin: Origin,
    input: Message,
    expect: Expect,
}

/// The cases of a file, parsed.
pub struct Cases {
    cases: Vec<Case>,
}

impl Cases {
    /// Read and parse a cases file.
    pub fn load(path: &Path) -> Result<Cases, CasesError> {
        let text = std::fs::read_to_string(path).map_err(|source| CasesError::Read {
            path: path.to_owned(),
            source,
        })?;
        Cases::parse(&text, path)
    }

    /// Parse cases text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Cases, CasesError> {
        let json: Json = serde_json::from_str(text).map_err(|source| CasesError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let cases = cases_of(&json).map_err(|message| CasesError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(Cases { cases })
    }

    /// How many cases there are.
    pub fn len(&self) -> usize {
        self.cases.len()
    }

    /// Whether there are none (a parsed file always has some).
    pub fn is_empty(&self) -> bool {
        self.cases.is_empty()
    }

    /// Run every case on a fresh instance of `plugin` (one `init` per case,
    /// as the host makes one instance per stage config). Returns one line per
    /// failed case; empty when all pass.
    pub fn run(&self, plugin: &Arc<Plugin>) -> Vec<String> {
        self.cases
            .iter()
            .filter_map(|case| {
                run_case(plugin, case)
                    .err()
                    .map(|e| format!("case \"{}\": {e}", case.name))
            })
            .collect()
    }
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

type Members = [(String, Json)];

/// `where` and a message, as every error reads: `input: missing key
/// "subject"`; at a case's top level, just the message.
fn at(place: &str, what: impl std::fmt::Display) -> String {
    if place.is_empty() {
        what.to_string()
    } else {
        format!("{place}: {what}")
    }
}

fn object<'a>(value: &'a Json, place: &str, what: &str) -> Result<&'a Members, String> {
    match value {
        Json::Object(members) => Ok(members),
        _ => Err(at(place, format!("{what} is not an object"))),
    }
}

/// Refuse the first key not in `allowed`.
fn known_keys(members: &Members, allowed: &[&str], place: &str) -> Result<(), String> {
    match members.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        Some((key, _)) => Err(at(
            place,
            format!(
                "unknown key \"{key}\" (expected one of: {})",
                allowed.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

fn get<'a>(members: &'a Members, key: &str) -> Option<&'a Json> {
    members.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn required<'a>(members: &'a Members, key: &str, place: &str) -> Result<&'a Json, String> {
    get(members, key).ok_or_else(|| at(place, format!("missing key \"{key}\"")))
}

fn string(value: &Json, key: &str, place: &str) -> Result<String, String> {
    match value {
        Json::String(s) => Ok(s.clone()),
        _ => Err(at(place, format!("\"{key}\" is not a string"))),
    }
}

fn integer(value: &Json, key: &str, max: u64, place: &str) -> Result<u64, String> {
    match value {
        Json::Number(n) => n.as_u64().filter(|v| *v <= max),
        _ => None,
    }
    .ok_or_else(|| {
        at(
            place,
            format!("\"{key}\" is not an integer from 0 to {max}"),
        )
    })
}

fn cases_of(file: &Json) -> Result<Vec<Case>, String> {
    let members = object(file, "", "the file")?;
    known_keys(members, &["cases"], "the file")?;
    let Json::Array(list) = required(members, "cases", "the file")? else {
        return Err("the file: \"cases\" is not an array".to_owned());
    };
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

fn case_of(value: &Json, index: usize) -> Result<Case, String> {
    let unnamed = format!("case #{}", index + 1);
    let members = object(value, &unnamed, "the case")?;
    let name = match get(members, "name") {
        Some(Json::String(name)) if !name.is_empty() => name.clone(),
        Some(_) => return Err(at(&unnamed, "\"name\" is not a non-empty string")),
        None => return Err(at(&unnamed, "missing key \"name\"")),
    };
    case_body(members, name.clone()).map_err(|e| format!("case \"{name}\": {e}"))
}

fn case_body(members: &Members, name: String) -> Result<Case, String> {
    known_keys(members, CASE_KEYS, "")?;
    let config = match get(members, "config") {
        None => Vec::new(),
        Some(value) => object(value, "", "\"config\"")?
            .iter()
            .map(|(k, v)| Ok((k.clone(), string(v, k, "config")?)))
            .collect::<Result<_, String>>()?,
    };
    let origin = origin_of(get(members, "origin"))?;
    let input = required(members, "input", "")?;
    let input = message_of(object(input, "", "\"input\"")?, "input")?;
    let expect = expect_of(required(members, "expect", "")?)?;
    Ok(Case {
        name,
        config,
        origin,
        input,
        expect,
    })
}

fn origin_of(value: Option<&Json>) -> Result<Origin, String> {
    let mut origin = Origin {
        tenant: "acme".into(),
        stream: "IN".into(),
        stream_seq: 1,
        delivered: 1,
        published_us: 0,
    };
    let Some(value) = value else {
        return Ok(origin);
    };
    let members = object(value, "", "\"origin\"")?;
    known_keys(members, ORIGIN_KEYS, "origin")?;
    if let Some(v) = get(members, "tenant") {
        origin.tenant = string(v, "tenant", "origin")?;
    }
    if let Some(v) = get(members, "stream") {
        origin.stream = string(v, "stream", "origin")?;
    }
    if let Some(v) = get(members, "stream_seq") {
        origin.stream_seq = integer(v, "stream_seq", u64::MAX, "origin")?;
    }
    if let Some(v) = get(members, "delivered") {
        let delivered = integer(v, "delivered", u32::MAX.into(), "origin")?;
        origin.delivered = u32::try_from(delivered).unwrap_or(u32::MAX);
    }
    if let Some(v) = get(members, "published_ms") {
        let ms = integer(v, "published_ms", u64::MAX, "origin")?;
        origin.published_us = ms.saturating_mul(1000);
    }
    Ok(origin)
}

/// Subject, headers and the payload key (if any) of a message object.
type Parts<'a> = (String, Vec<(String, String)>, Option<(&'a str, &'a Json)>);

fn message_parts<'a>(members: &'a Members, place: &str) -> Result<Parts<'a>, String> {
    known_keys(members, MESSAGE_KEYS, place)?;
    let subject = string(required(members, "subject", place)?, "subject", place)?;
    let headers = match get(members, "headers") {
        None => Vec::new(),
        Some(Json::Array(pairs)) => pairs
            .iter()
            .map(|pair| match pair {
                Json::Array(nv) => match nv.as_slice() {
                    [Json::String(n), Json::String(v)] => Some((n.clone(), v.clone())),
                    _ => None,
                },
                _ => None,
            })
            .collect::<Option<_>>()
            .ok_or_else(|| at(place, "\"headers\" is not a list of [name, value] strings"))?,
        Some(_) => {
            return Err(at(
                place,
                "\"headers\" is not a list of [name, value] strings",
            ));
        }
    };
    let payloads: Vec<(&str, &Json)> = members
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

/// The bytes of `payload` or `payload_base64`.
fn payload_bytes(key: &str, value: &Json, place: &str) -> Result<Vec<u8>, String> {
    let text = string(value, key, place)?;
    if key == "payload" {
        return Ok(text.into_bytes());
    }
    // The standard engine insists on padding and zero trailing bits: the one
    // canonical spelling the other runners accept.
    base64::engine::general_purpose::STANDARD
        .decode(&text)
        .map_err(|_| at(place, "\"payload_base64\" is not padded, canonical base64"))
}

fn message_of(members: &Members, place: &str) -> Result<Message, String> {
    let (subject, headers, payload) = message_parts(members, place)?;
    let payload = match payload {
        None => Vec::new(),
        Some(("payload_json", json)) => serde_json::to_vec(json).map_err(|e| at(place, e))?,
        Some((key, value)) => payload_bytes(key, value, place)?,
    };
    Ok(Message {
        subject,
        headers,
        payload: payload.into(),
    })
}

fn message_want(value: &Json, place: &str) -> Result<MessageWant, String> {
    let (subject, headers, payload) = message_parts(object(value, place, "the message")?, place)?;
    let payload = match payload {
        None => PayloadWant::Bytes(Vec::new()),
        Some(("payload_json", json)) => PayloadWant::Json(json.to_value()),
        Some((key, value)) => PayloadWant::Bytes(payload_bytes(key, value, place)?),
    };
    Ok(MessageWant {
        subject,
        headers,
        payload,
    })
}

fn expect_of(value: &Json) -> Result<Expect, String> {
    let members = object(value, "", "\"expect\"")?;
    let kind = string(required(members, "verdict", "expect")?, "verdict", "expect")?;
    let (extra, expect): (&[&str], _) = match kind.as_str() {
        "next" => (&["message"], None),
        "publish" => (&["messages"], None),
        "ack" => (&[], Some(Expect::Ack)),
        "dead-letter" => (&["reason_contains"], None),
        "retry" => (&["delay_ms"], None),
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
    known_keys(members, &allowed, "expect")?;
    if let Some(expect) = expect {
        return Ok(expect);
    }
    Ok(match kind.as_str() {
        "next" => Expect::Next(message_want(
            required(members, "message", "expect")?,
            "expect.message",
        )?),
        "publish" => {
            let Json::Array(list) = required(members, "messages", "expect")? else {
                return Err("expect: \"messages\" is not an array".to_owned());
            };
            Expect::Publish(
                list.iter()
                    .enumerate()
                    .map(|(i, m)| message_want(m, &format!("expect.messages[{i}]")))
                    .collect::<Result<_, _>>()?,
            )
        }
        "dead-letter" => Expect::DeadLetter(
            get(members, "reason_contains")
                .map(|v| string(v, "reason_contains", "expect"))
                .transpose()?,
        ),
        _ => Expect::Retry(
            get(members, "delay_ms")
                .map(|v| integer(v, "delay_ms", u32::MAX.into(), "expect"))
                .transpose()?
                .map(|ms| u32::try_from(ms).unwrap_or(u32::MAX)),
        ),
    })
}

// --- running --------------------------------------------------------------

fn run_case(plugin: &Arc<Plugin>, case: &Case) -> Result<(), String> {
    let mut instance = plugin
        .instantiate(&case.origin.tenant, &case.config)
        .map_err(|e| match e {
            WasmError::InitRejected { message, .. } => {
                format!("init rejected the config: {message}")
            }
            other => other.to_string(),
        })?;
    let verdict = instance
        .handle(&case.origin, case.input.clone())
        .map_err(|f| format!("the guest failed: {f}"))?;
    compare(&case.expect, &verdict)
}

fn compare_message(want: &MessageWant, got: &Message) -> Result<(), String> {
    if want.subject != got.subject {
        return Err(format!(
            "subject: want {:?}, got {:?}",
            want.subject, got.subject
        ));
    }
    if want.headers != got.headers {
        return Err(format!(
            "headers: want {:?}, got {:?}",
            want.headers, got.headers
        ));
    }
    match &want.payload {
        PayloadWant::Json(json) => {
            let parsed: Value = serde_json::from_slice(&got.payload).map_err(|e| {
                format!(
                    "payload is not JSON ({e}): {}",
                    String::from_utf8_lossy(&got.payload)
                )
            })?;
            if &parsed != json {
                return Err(format!("payload: want {json}, got {parsed}"));
            }
        }
        PayloadWant::Bytes(bytes) => {
            if bytes[..] != got.payload[..] {
                return Err(format!(
                    "payload: want {:?}, got {:?}",
                    String::from_utf8_lossy(bytes),
                    String::from_utf8_lossy(&got.payload)
                ));
            }
        }
    }
    Ok(())
}

fn compare(want: &Expect, got: &Verdict) -> Result<(), String> {
    match (want, got) {
        (Expect::Next(w), Verdict::Next(m)) => compare_message(w, m),
        (Expect::Publish(wants), Verdict::Publish(ms)) => {
            if wants.len() != ms.len() {
                return Err(format!(
                    "want {} messages, got {}: {ms:?}",
                    wants.len(),
                    ms.len()
                ));
            }
            wants
                .iter()
                .zip(ms)
                .enumerate()
                .try_for_each(|(i, (w, m))| {
                    compare_message(w, m).map_err(|e| format!("message {i}: {e}"))
                })
        }
        (Expect::Ack, Verdict::Ack) => Ok(()),
        (Expect::DeadLetter(part), Verdict::DeadLetter(reason)) => match part {
            Some(part) if !reason.contains(part.as_str()) => {
                Err(format!("reason {reason:?} lacks {part:?}"))
            }
            _ => Ok(()),
        },
        (Expect::Retry(delay), Verdict::Retry(ms)) => match delay {
            Some(d) if d != ms => Err(format!("delay: want {d}, got {ms}")),
            _ => Ok(()),
        },
        _ => Err(format!("verdict: want {}, got {got:?}", want.kind())),
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

#[cfg(test)]
mod tests;
