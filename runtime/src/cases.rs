//! Golden cases: a plugin's `cases.json` (input message → expected verdict)
//! run through the real host. A new plugin version that ships
//! `NAME.cases.json` must pass them before it is swapped in, and every
//! language version of a reference plugin must pass the same file.
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
//! Payloads are `payload_json` (serialised compactly on input, compared
//! structurally), `payload` (UTF-8, exact) or `payload_base64`. Expectations:
//! `next` + `message`, `publish` + `messages`, `ack`, `dead-letter` (+
//! `reason_contains`), `retry` (+ `delay_ms`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;

use crate::message::{Message, Origin, Verdict};
use crate::wasm::{Plugin, WasmError};

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
    /// Not the expected JSON shape.
    #[error("{} is not a valid cases file", path.display())]
    Parse {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CasesFile {
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    origin: OriginSpec,
    input: MessageSpec,
    expect: Value,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OriginSpec {
    tenant: Option<String>,
    stream: Option<String>,
    stream_seq: Option<u64>,
    delivered: Option<u32>,
    published_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageSpec {
    subject: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
    payload: Option<String>,
    payload_json: Option<Value>,
    payload_base64: Option<String>,
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
        let file: CasesFile = serde_json::from_str(text).map_err(|source| CasesError::Parse {
            path: path.to_owned(),
            source,
        })?;
        Ok(Cases { cases: file.cases })
    }

    /// How many cases there are.
    pub fn len(&self) -> usize {
        self.cases.len()
    }

    /// Whether there are none.
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
                    .map(|e| format!("case `{}`: {e}", case.name))
            })
            .collect()
    }
}

fn run_case(plugin: &Arc<Plugin>, case: &Case) -> Result<(), String> {
    let origin = Origin {
        tenant: case.origin.tenant.clone().unwrap_or_else(|| "acme".into()),
        stream: case.origin.stream.clone().unwrap_or_else(|| "IN".into()),
        stream_seq: case.origin.stream_seq.unwrap_or(1),
        delivered: case.origin.delivered.unwrap_or(1),
        published_us: case.origin.published_ms.unwrap_or(0).saturating_mul(1000),
    };
    let config: Vec<(String, String)> = case
        .config
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let input = message_of(&case.input)?;
    let mut instance = plugin
        .instantiate(&origin.tenant, &config)
        .map_err(|e| match e {
            WasmError::InitRejected { message, .. } => {
                format!("init rejected the config: {message}")
            }
            other => other.to_string(),
        })?;
    let verdict = instance
        .handle(&origin, input)
        .map_err(|f| format!("the guest failed: {f}"))?;
    compare(&case.expect, &verdict)
}

fn message_of(spec: &MessageSpec) -> Result<Message, String> {
    let payload = if let Some(json) = &spec.payload_json {
        serde_json::to_vec(json).map_err(|e| e.to_string())?
    } else if let Some(b64) = &spec.payload_base64 {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("bad payload_base64: {e}"))?
    } else {
        spec.payload.clone().unwrap_or_default().into_bytes()
    };
    Ok(Message {
        subject: spec.subject.clone(),
        headers: spec.headers.clone(),
        payload: payload.into(),
    })
}

fn headers_of(v: &Value) -> Vec<(String, String)> {
    serde_json::from_value(v.clone()).unwrap_or_default()
}

fn compare_message(want: &Value, got: &Message) -> Result<(), String> {
    if want["subject"].as_str() != Some(got.subject.as_str()) {
        return Err(format!(
            "subject: want {}, got {:?}",
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

fn compare(want: &Value, got: &Verdict) -> Result<(), String> {
    let kind = want["verdict"].as_str().unwrap_or("<missing>");
    if kind != got.kind() {
        return Err(format!("verdict: want {kind}, got {got:?}"));
    }
    match got {
        Verdict::Next(m) => compare_message(&want["message"], m),
        Verdict::Publish(ms) => {
            let empty = Vec::new();
            let wants = want["messages"].as_array().unwrap_or(&empty);
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
            Some(d) if d != u64::from(*ms) => Err(format!("delay: want {d}, got {ms}")),
            _ => Ok(()),
        },
    }
}
