//! Run a plugin's golden cases (`cases.json`) against its [`Handler`] in a
//! native unit test.
//!
//! The host runs the same files through its real pipeline, and every
//! language version of a plugin must pass them; running them here too
//! catches a wrong case or a wrong plugin before any component is built.
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
//! delivered 1, published_ms 0. A payload is `payload_json` (serialised
//! compactly on input, compared structurally on output) or `payload` (a raw
//! UTF-8 string, compared exactly). Expectations: `next` + `message`,
//! `publish` + `messages`, `ack`, `dead-letter` + `reason_contains`, `retry`
//! + `delay_ms`.

use serde_json::Value;

use crate::{Config, Handler, Message, Origin, Verdict};

/// Run every case in `cases_json` through a fresh `H` (one `init` per case,
/// as the host builds an instance per stage config). Returns a report of
/// every failing case, or of a malformed file.
pub fn run<H: Handler>(cases_json: &str) -> Result<(), String> {
    let file: Value =
        serde_json::from_str(cases_json).map_err(|err| format!("cases file: {err}"))?;
    let cases = file
        .get("cases")
        .and_then(Value::as_array)
        .ok_or("cases file: no \"cases\" array")?;
    if cases.is_empty() {
        return Err("cases file: \"cases\" is empty".to_owned());
    }
    let failures: Vec<String> = cases
        .iter()
        .enumerate()
        .filter_map(|(index, case)| {
            let name = case
                .get("name")
                .and_then(Value::as_str)
                .map_or_else(|| format!("#{index}"), str::to_owned);
            run_case::<H>(case)
                .err()
                .map(|err| format!("case \"{name}\": {err}"))
        })
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

fn run_case<H: Handler>(case: &Value) -> Result<(), String> {
    let config = match case.get("config") {
        None => Config::default(),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(key, value)| match value {
                Value::String(value) => Ok((key.clone(), value.clone())),
                _ => Err(format!("config value of \"{key}\" is not a string")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("\"config\" is not an object".to_owned()),
    };
    let origin = origin(case.get("origin"))?;
    let input = message(case.get("input").ok_or("no \"input\"")?)?;
    let expect = case.get("expect").ok_or("no \"expect\"")?;
    let handler = H::init(config).map_err(|err| format!("init failed: {err}"))?;
    let verdict = handler.handle(&origin, input);
    check(expect, &verdict).map_err(|err| format!("{err}; got {}", describe(&verdict)))
}

fn origin(value: Option<&Value>) -> Result<Origin, String> {
    let empty = Value::Object(serde_json::Map::new());
    let value = value.unwrap_or(&empty);
    let text = |key: &str, default: &str| -> Result<String, String> {
        match value.get(key) {
            None => Ok(default.to_owned()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(format!("origin.{key} is not a string")),
        }
    };
    let number = |key: &str, default: u64| -> Result<u64, String> {
        match value.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| format!("origin.{key} is not a non-negative integer")),
        }
    };
    Ok(Origin {
        tenant: text("tenant", "acme")?,
        stream: text("stream", "IN")?,
        stream_seq: number("stream_seq", 1)?,
        delivered: u32::try_from(number("delivered", 1)?)
            .map_err(|_| "origin.delivered does not fit in u32".to_owned())?,
        published_ms: number("published_ms", 0)?,
    })
}

fn message(value: &Value) -> Result<Message, String> {
    let subject = value
        .get("subject")
        .and_then(Value::as_str)
        .ok_or("message without a string \"subject\"")?;
    let mut msg = Message::new(subject, Vec::new());
    msg.headers = headers(value)?;
    match (value.get("payload_json"), value.get("payload")) {
        (Some(json), None) => msg.set_json(json),
        (None, Some(Value::String(raw))) => msg.payload = raw.as_bytes().to_vec(),
        (None, None) => {}
        _ => return Err("message needs one of \"payload_json\" or a string \"payload\"".into()),
    }
    Ok(msg)
}

fn headers(value: &Value) -> Result<Vec<(String, String)>, String> {
    let Some(list) = value.get("headers") else {
        return Ok(Vec::new());
    };
    list.as_array()
        .ok_or("\"headers\" is not an array")?
        .iter()
        .map(|pair| match pair.as_array().map(Vec::as_slice) {
            Some([Value::String(name), Value::String(value)]) => Ok((name.clone(), value.clone())),
            _ => Err(format!(
                "header {pair} is not a [name, value] pair of strings"
            )),
        })
        .collect()
}

fn check(expect: &Value, verdict: &Verdict) -> Result<(), String> {
    let kind = expect
        .get("verdict")
        .and_then(Value::as_str)
        .ok_or("expect without a string \"verdict\"")?;
    match (kind, verdict) {
        ("next", Verdict::Next(msg)) => check_message(
            expect.get("message").ok_or("expect without \"message\"")?,
            msg,
        ),
        ("publish", Verdict::Publish(msgs)) => {
            let expected = expect
                .get("messages")
                .and_then(Value::as_array)
                .ok_or("expect without a \"messages\" array")?;
            if expected.len() != msgs.len() {
                return Err(format!(
                    "expected {} published messages, got {}",
                    expected.len(),
                    msgs.len()
                ));
            }
            expected
                .iter()
                .zip(msgs)
                .enumerate()
                .try_for_each(|(index, (want, got))| {
                    check_message(want, got).map_err(|err| format!("message {index}: {err}"))
                })
        }
        ("ack", Verdict::Ack) => Ok(()),
        ("dead-letter", Verdict::DeadLetter(reason)) => {
            let needle = expect
                .get("reason_contains")
                .and_then(Value::as_str)
                .ok_or("expect without a string \"reason_contains\"")?;
            if reason.contains(needle) {
                Ok(())
            } else {
                Err(format!("reason does not contain \"{needle}\""))
            }
        }
        ("retry", Verdict::Retry(delay)) => {
            let want = expect
                .get("delay_ms")
                .and_then(Value::as_u64)
                .ok_or("expect without a numeric \"delay_ms\"")?;
            if u64::from(*delay) == want {
                Ok(())
            } else {
                Err(format!("expected a delay of {want} ms"))
            }
        }
        ("next" | "publish" | "ack" | "dead-letter" | "retry", _) => {
            Err(format!("expected verdict {kind}"))
        }
        (other, _) => Err(format!("unknown expected verdict \"{other}\"")),
    }
}

fn check_message(expect: &Value, got: &Message) -> Result<(), String> {
    let want = message(expect)?;
    if want.subject != got.subject {
        return Err(format!("expected subject {:?}", want.subject));
    }
    if want.headers != got.headers {
        return Err(format!("expected headers {:?}", want.headers));
    }
    match expect.get("payload_json") {
        Some(json) => {
            let actual: Value = serde_json::from_slice(&got.payload)
                .map_err(|err| format!("payload is not JSON ({err})"))?;
            if &actual != json {
                return Err(format!("expected payload_json {json}"));
            }
        }
        None => {
            if want.payload != got.payload {
                return Err(format!(
                    "expected payload {:?}",
                    String::from_utf8_lossy(&want.payload)
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
