//! The conformance suite: the test any language version of a reference
//! plugin must pass. Every build in [`LANGUAGES`] of every plugin in
//! [`PLUGINS`] runs through the real host:
//!
//! - `plugins/<name>/cases.json`, unchanged, with zero failures: the cases
//!   file is the contract;
//! - the raw verdicts (messages byte for byte, dead-letter reasons, `init`
//!   refusals) of those cases and of extra probes aimed at where languages
//!   differ (number formatting, key order, big integers, Unicode, nesting,
//!   whitespace, config errors) must equal the Rust build's.
//!
//! Adding a language is a row in [`LANGUAGES`]: its builds are
//! `plugins/dist/<name><suffix>.wasm`, made by `scripts/build-plugins`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use sluice::cases::Cases;
use sluice::wasm::{Plugin, PluginLimits, Runtime, WasmError};
use sluice::worker::Stage;
use sluice::worker::pool::StageRunner;
use sluice::{Message, Origin, Verdict};

use crate::support::{origin, plugin_path, root};

/// A language a reference plugin is written in.
struct Language {
    /// For messages.
    name: &'static str,
    /// `plugins/dist/<plugin><suffix>.wasm`.
    suffix: &'static str,
    /// The memory its builds need to run, in MiB (see docs/plugins.md for
    /// the figures).
    memory_mib: u64,
}

/// The first row is the reference the others are compared with.
const LANGUAGES: &[Language] = &[
    Language {
        name: "Rust",
        suffix: "",
        memory_mib: 16,
    },
    Language {
        name: "Python",
        suffix: "-py",
        // The interpreter's heap starts at 12.3 MiB.
        memory_mib: 64,
    },
    Language {
        name: "JavaScript",
        suffix: "-js",
        memory_mib: 32,
    },
];

/// The reference plugins with a version in every language.
const PLUGINS: &[&str] = &["transform", "route"];

/// Generous deadlines: this checks behaviour, not speed, and debug builds
/// on a loaded machine are slow.
fn limits(memory_mib: u64) -> PluginLimits {
    PluginLimits {
        deadline: Duration::from_secs(5),
        memory: memory_mib << 20,
        ..PluginLimits::default()
    }
}

/// A runtime whose compiled code persists in cargo's temporary folder: the
/// Python builds take seconds to compile in a test build, and the cache is
/// keyed by content digest, so a rebuilt plugin is compiled afresh.
fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("compiled-plugins");
        Runtime::new(Some(cache)).unwrap()
    })
}

fn load(build: &str, limits: PluginLimits) -> Arc<Plugin> {
    runtime()
        .load_file(build, &plugin_path(build), limits)
        .unwrap()
}

#[test]
fn every_language_passes_the_golden_cases() {
    let mut report = Vec::new();
    for plugin in PLUGINS {
        let file = root().join(format!("plugins/{plugin}/cases.json"));
        let cases = Cases::load(&file).unwrap();
        assert!(!cases.is_empty(), "{} has no cases", file.display());
        for language in LANGUAGES {
            let build = format!("{plugin}{}", language.suffix);
            for failure in cases.run(&load(&build, limits(language.memory_mib))) {
                report.push(format!("{} {build}: {failure}", language.name));
            }
        }
    }
    assert!(
        report.is_empty(),
        "golden cases failed:\n{}",
        report.join("\n")
    );
}

/// The golden-case format's edge cases: every language's `mirror` through
/// the host. The SDK's, the Python and the JavaScript runners run the same
/// file natively (`scripts/build-plugins --check`), so a case the host reads
/// otherwise than they do fails here or there.
#[test]
fn every_language_passes_the_format_edge_cases() {
    let file = root().join("plugins/testing/mirror/cases.json");
    let cases = Cases::load(&file).unwrap();
    let mut report = Vec::new();
    for language in LANGUAGES {
        let build = format!("mirror{}", language.suffix);
        for failure in cases.run(&load(&build, limits(language.memory_mib))) {
            report.push(format!("{} {build}: {failure}", language.name));
        }
    }
    assert!(
        report.is_empty(),
        "edge cases failed:\n{}",
        report.join("\n")
    );
}

#[test]
fn every_language_gives_the_same_verdicts() {
    let mut report = Vec::new();
    for plugin in PLUGINS {
        let mut probes = case_probes(plugin);
        probes.extend(extra_probes(plugin));
        let results: Vec<Vec<String>> = LANGUAGES
            .iter()
            .map(|language| {
                let build = format!("{plugin}{}", language.suffix);
                let loaded = load(&build, limits(language.memory_mib));
                probes.iter().map(|probe| probe.run(&loaded)).collect()
            })
            .collect();
        let (reference, others) = results.split_first().unwrap();
        for (language, got) in LANGUAGES[1..].iter().zip(others) {
            for ((probe, want), got) in probes.iter().zip(reference).zip(got) {
                if want != got {
                    report.push(format!(
                        "{plugin}{} ({}) differs from Rust on {}:\n  Rust: {want}\n  {}: {got}",
                        language.suffix, language.name, probe.name, language.name
                    ));
                }
            }
        }
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}

#[test]
fn a_guest_that_leaks_is_replaced_before_it_runs_out_of_memory() {
    // componentize-py 0.25.1 guests keep part of every payload they return
    // (~0.4 KiB a call here). At this limit the Python transform would fail
    // its ~20,000th call; the worker pool retires an instance past three
    // quarters of its limit instead, so none fails.
    let limits = PluginLimits {
        deadline: Duration::from_secs(5),
        memory: 20 << 20,
        ..PluginLimits::default()
    };
    let config = vec![("set.seen".to_owned(), "true".to_owned())];
    let stage = Arc::new(Stage::new(load("transform-py", limits), config));
    let mut runner = StageRunner::default();
    let payload = format!("{{\"pad\":\"{}\"}}", "x".repeat(500));
    for call in 0..60_000 {
        let msg = Message::new("acme.in.x", payload.clone().into_bytes());
        match runner.call(&stage, &origin("acme"), msg) {
            Ok(Verdict::Next(_)) => {}
            other => panic!("call {call}: {other:?}"),
        }
    }
}

/// One input for every build: a stage config and a message.
struct Probe {
    name: String,
    config: Vec<(String, String)>,
    origin: Origin,
    msg: Message,
}

impl Probe {
    fn new(name: &str, config: &[(&str, &str)], subject: &str, payload: &[u8]) -> Probe {
        Probe {
            name: name.to_owned(),
            config: config
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            origin: origin("acme"),
            msg: Message {
                subject: subject.to_owned(),
                headers: vec![("X-Id".into(), "7".into()), ("x-id".into(), "8".into())],
                payload: payload.to_vec().into(),
            },
        }
    }

    /// What the build did, as comparable text: the `init` refusal, the
    /// verdict with every byte, or the failure.
    fn run(&self, plugin: &Arc<Plugin>) -> String {
        let mut instance = match plugin.instantiate(&self.origin.tenant, &self.config) {
            Ok(instance) => instance,
            Err(WasmError::InitRejected { message, .. }) => {
                return format!("init rejected: {message}");
            }
            Err(other) => return format!("init failed: {other}"),
        };
        match instance.handle(&self.origin, self.msg.clone()) {
            Ok(Verdict::Next(msg)) => format!("next {}", describe(&msg)),
            Ok(Verdict::Publish(msgs)) => {
                let msgs: Vec<String> = msgs.iter().map(describe).collect();
                format!("publish [{}]", msgs.join(", "))
            }
            Ok(Verdict::DeadLetter(reason)) => format!("dead-letter {:?}", comparable(&reason)),
            Ok(verdict) => format!("{verdict:?}"),
            Err(failure) => format!("guest failure: {failure}"),
        }
    }
}

/// A message with its payload as text where it is UTF-8, so a difference
/// reads as one.
fn describe(msg: &Message) -> String {
    let payload = match std::str::from_utf8(&msg.payload) {
        Ok(text) => format!("{text:?}"),
        Err(_) => format!("bytes {:?}", msg.payload),
    };
    format!("{:?} {:?} {payload}", msg.subject, msg.headers)
}

/// Parser messages are each language's own; that the payload is refused,
/// and why in general, is what must agree.
fn comparable(reason: &str) -> &str {
    const INVALID: &str = "payload is not valid JSON: ";
    if reason.starts_with(INVALID) {
        INVALID
    } else {
        reason
    }
}

/// The golden cases as probes: their verdicts must agree too, not only
/// pass.
fn case_probes(plugin: &str) -> Vec<Probe> {
    let file = root().join(format!("plugins/{plugin}/cases.json"));
    let text = std::fs::read_to_string(file).unwrap();
    let cases: Value = serde_json::from_str(&text).unwrap();
    cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| {
            let input = &case["input"];
            let payload = if let Some(json) = input.get("payload_json") {
                serde_json::to_vec(json).unwrap()
            } else if let Some(b64) = input.get("payload_base64") {
                base64::engine::general_purpose::STANDARD
                    .decode(b64.as_str().unwrap())
                    .unwrap()
            } else {
                input["payload"].as_str().unwrap_or("").as_bytes().to_vec()
            };
            let config: Vec<(String, String)> = case["config"]
                .as_object()
                .map(|map| {
                    map.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            let headers = input["headers"]
                .as_array()
                .map(|list| {
                    list.iter()
                        .map(|pair| {
                            (
                                pair[0].as_str().unwrap().to_owned(),
                                pair[1].as_str().unwrap().to_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let tenant = case["origin"]["tenant"].as_str().unwrap_or("acme");
            Probe {
                name: format!("case `{}`", case["name"].as_str().unwrap()),
                config,
                origin: origin(tenant),
                msg: Message {
                    subject: input["subject"].as_str().unwrap().to_owned(),
                    headers,
                    payload: payload.into(),
                },
            }
        })
        .collect()
}

/// Inputs aimed at where languages part ways with each other.
fn extra_probes(plugin: &str) -> Vec<Probe> {
    let deep = |levels: usize| {
        let mut text = "{\"a\":".to_owned();
        text.push_str(&"[".repeat(levels - 1));
        text.push_str(&"]".repeat(levels - 1));
        text.push('}');
        text.into_bytes()
    };
    match plugin {
        "transform" => {
            let sets: &[(&str, &str)] = &[
                ("set.f", "1.5e-7"),
                ("set.g", "0.0000123"),
                ("set.h", "-0"),
                ("set.i", "18446744073709551616"),
                ("set.j", "1e16"),
                ("set.k", "[1,2.0,{\"z\":null,\"1\":true}]"),
                ("set.l", "not json"),
                ("set.m", " 42 "),
                ("set.k.2.y", "\"into the set value\""),
            ];
            let numbers = br#"{"n":[1.0,1e2,1E-5,0.0001,12345678901234567890,-9223372036854775808,-9223372036854775809,9007199254740993,0.1,1e300,5e-324,-0.0,123456.789,1e15,1e-7]}"#;
            let text = "{\"s\":\"h\u{e9}llo \\u00e9 \\ud83d\\ude00 \\u0001\\u001f\\u007f \\t / \\\\ \\\" \u{2028}\",\"k\u{e9}y\":\"\u{2713}\"}";
            vec![
                Probe::new("number formats", sets, "acme.in.x", numbers),
                Probe::new(
                    "integer-like keys keep their order",
                    &[("rename.a", "0"), ("set.10", "x")],
                    "acme.in.x",
                    br#"{"2":"two","1":"one","a":1,"b":{"c":0}}"#,
                ),
                Probe::new(
                    "duplicate keys with numbers and objects",
                    &[("set.z", "1")],
                    "acme.in.x",
                    br#"{"a":1,"a":2.0,"o":{"x":1},"o":{"y":[3,4.5]},"s":"p","s":"q"}"#,
                ),
                Probe::new(
                    "an escaped integer-like key",
                    &[("set.b", "1")],
                    "acme.in.x",
                    br#"{"\u0031":1,"a":2,"\u00e9":3}"#,
                ),
                Probe::new(
                    "integer-like keys inside an array",
                    &[("set.n", "1")],
                    "acme.in.x",
                    br#"{"list":[{"1":"b","0":"a"},["x"]]}"#,
                ),
                Probe::new(
                    "a __proto__ key",
                    &[("set.__proto__.x", "1"), ("set.constructor", "2")],
                    "acme.in.x",
                    br#"{"__proto__":{"a":1},"b":2}"#,
                ),
                Probe::new(
                    "escaped surrogate pairs",
                    &[("set.z", "1")],
                    "acme.in.x",
                    br#"{"\ud83d\ude00":"\ud83d\ude00\u00e9","n":1.5}"#,
                ),
                Probe::new(
                    "many brackets, little depth",
                    &[("set.z", "1")],
                    "acme.in.x",
                    format!("{{\"a\":[{}[]]}}", "[],".repeat(140)).as_bytes(),
                ),
                Probe::new(
                    "a long payload with floats",
                    &[("set.z", "0.5")],
                    "acme.in.x",
                    format!("{{\"pad\":\"{}\",\"f\":[1.5,2e-6,3E+2]}}", "y".repeat(400)).as_bytes(),
                ),
                Probe::new(
                    "duplicate keys: last value, first place",
                    &[("set.z", "1")],
                    "acme.in.x",
                    br#"{"a":1,"b":2,"a":3}"#,
                ),
                Probe::new(
                    "unicode and escapes",
                    &[("set.t", "\u{e9}")],
                    "acme.in.x",
                    text.as_bytes(),
                ),
                Probe::new(
                    "a lone surrogate escape",
                    &[],
                    "acme.in.x",
                    br#"{"s":"\ud800"}"#,
                ),
                Probe::new(
                    "a lone low surrogate escape",
                    &[],
                    "acme.in.x",
                    br#"{"s":"\udc00x"}"#,
                ),
                Probe::new("invalid UTF-8", &[], "acme.in.x", b"{\"a\":\"\xff\"}"),
                Probe::new(
                    "a UTF-8 byte order mark",
                    &[],
                    "acme.in.x",
                    b"\xef\xbb\xbf{}",
                ),
                Probe::new("127 levels of nesting", &[], "acme.in.x", &deep(127)),
                Probe::new("128 levels of nesting", &[], "acme.in.x", &deep(128)),
                Probe::new("NaN", &[], "acme.in.x", br#"{"a":NaN}"#),
                Probe::new("a number out of range", &[], "acme.in.x", br#"{"a":1e400}"#),
                Probe::new("a trailing comma", &[], "acme.in.x", br#"{"a":1,}"#),
                Probe::new("a top-level string", &[], "acme.in.x", br#""text""#),
                Probe::new("empty", &[], "acme.in.x", b""),
                Probe::new(
                    "surrounding whitespace",
                    &[("remove", "b")],
                    "acme.in.x",
                    b" \t\r\n{ \"a\" : [ 1 , 2 ] , \"b\" : 3 }\n ",
                ),
                Probe::new(
                    "into an array element",
                    &[("set.items.1.id", "20"), ("set.items.0", "\"first\"")],
                    "acme.in.x",
                    br#"{"items":[{"id":1},{"id":2}]}"#,
                ),
                Probe::new(
                    "past the end of an array",
                    &[("set.items.5", "1")],
                    "acme.in.x",
                    br#"{"items":[1]}"#,
                ),
                Probe::new(
                    "an array index with a sign is not one",
                    &[("set.items.+0", "1")],
                    "acme.in.x",
                    br#"{"items":[1]}"#,
                ),
                Probe::new(
                    "through null",
                    &[("set.a.b", "1")],
                    "acme.in.x",
                    br#"{"a":null}"#,
                ),
                Probe::new(
                    "through a boolean, deeper",
                    &[("set.a.b.c", "1")],
                    "acme.in.x",
                    br#"{"a":{"b":false}}"#,
                ),
                Probe::new(
                    "a rename of null moves it",
                    &[("rename.a", "b.c"), ("remove", "x.0, y")],
                    "acme.in.x",
                    br#"{"a":null,"x":[1,2],"y":1}"#,
                ),
                Probe::new(
                    "a rename whose target is blocked",
                    &[("rename.a", "b.c")],
                    "acme.in.x",
                    br#"{"a":1,"b":"scalar"}"#,
                ),
                Probe::new("unknown key", &[("renmae.a", "b")], "acme.in.x", b"{}"),
                Probe::new("bare prefix", &[("rename.", "b")], "acme.in.x", b"{}"),
                Probe::new("empty removal", &[("remove", "a,,b")], "acme.in.x", b"{}"),
                Probe::new(
                    "removal trimmed of Unicode spaces",
                    &[("remove", "\u{a0}a\u{3000}, b ")],
                    "acme.in.x",
                    br#"{"a":1,"b":2,"c":3}"#,
                ),
                Probe::new(
                    "U+001C is not whitespace",
                    &[("remove", "\u{1c}a")],
                    "acme.in.x",
                    br#"{"a":1}"#,
                ),
                Probe::new(
                    "empty set segment",
                    &[("set.a..b", "1")],
                    "acme.in.x",
                    b"{}",
                ),
                Probe::new(
                    "empty rename target",
                    &[("rename.a", "")],
                    "acme.in.x",
                    b"{}",
                ),
            ]
        }
        "route" => {
            let rules: &[(&str, &str)] = &[
                ("mode", "all"),
                ("rule.1.field", "n"),
                ("rule.1.equals", "2.5"),
                ("rule.1.to", "out.float"),
                ("rule.2.field", "big"),
                ("rule.2.equals", "18446744073709551615"),
                ("rule.2.to", "out.big"),
                ("rule.3.field", "tiny"),
                ("rule.3.equals", "1e-7"),
                ("rule.3.to", "out.tiny"),
                ("rule.4.field", "flag"),
                ("rule.4.equals", "false"),
                ("rule.4.to", "out.flag"),
                ("rule.5.field", "list.1"),
                ("rule.5.equals", "x"),
                ("rule.5.to", "out.list, {tenant}.audit ,out.float"),
                ("rule.6.field", "whole"),
                ("rule.6.equals", "100.0"),
                ("rule.6.to", "out.whole"),
                ("rule.7.field", "nul"),
                ("rule.7.equals", "null"),
                ("rule.7.to", "out.null"),
            ];
            let payload = br#"{"n":2.5,"big":18446744073709551615,"tiny":1e-7,"flag":false,"list":["w","x"],"whole":1e2,"nul":null}"#;
            vec![
                Probe::new("values by their JSON text", rules, "acme.in.x", payload),
                Probe::new(
                    "rule numbers order numerically and merge",
                    &[
                        ("rule.10.subject", ">"),
                        ("rule.10.to", "ten"),
                        ("rule.09.subject", "acme.*"),
                        ("rule.9.to", "nine"),
                        ("rule.18446744073709551615.subject", ">"),
                        ("rule.18446744073709551615.to", "max"),
                        ("mode", "all"),
                    ],
                    "acme.in",
                    b"raw",
                ),
                Probe::new(
                    "patterns",
                    &[
                        ("rule.1.subject", "a*.>"),
                        ("rule.1.to", "one"),
                        ("rule.2.subject", "*.b.>"),
                        ("rule.2.to", "two"),
                        ("rule.3.subject", "*.b"),
                        ("rule.3.to", "three"),
                        ("mode", "all"),
                    ],
                    "a*.b.c",
                    b"",
                ),
                Probe::new(
                    "an empty subject",
                    &[("rule.1.subject", ">"), ("rule.1.to", "x")],
                    "",
                    b"",
                ),
                Probe::new(
                    "not JSON with a field rule",
                    &[
                        ("rule.1.field", "a"),
                        ("rule.1.equals", "1"),
                        ("rule.1.to", "x"),
                        ("unmatched", "{tenant}.{tenant}.rest"),
                    ],
                    "acme.in",
                    b"{\"a\":1",
                ),
                Probe::new(
                    "invalid UTF-8 with a field rule",
                    &[
                        ("rule.1.field", "a"),
                        ("rule.1.equals", "1"),
                        ("rule.1.to", "x"),
                    ],
                    "acme.in",
                    b"{\"a\":1,\"b\":\"\xc0\xaf\"}",
                ),
                Probe::new(
                    "a field rule on a top-level array",
                    &[
                        ("rule.1.field", "0"),
                        ("rule.1.equals", "1"),
                        ("rule.1.to", "x"),
                    ],
                    "acme.in",
                    b"[1]",
                ),
                Probe::new("rule number with a sign", &[("rule.+1.to", "x")], "a", b""),
                Probe::new(
                    "rule number too big",
                    &[("rule.18446744073709551616.to", "x")],
                    "a",
                    b"",
                ),
                Probe::new("rule without attribute", &[("rule.1", "x")], "a", b""),
                Probe::new("unknown attribute", &[("rule.1.form", "x")], "a", b""),
                Probe::new("unknown key", &[("rules.1.to", "x")], "a", b""),
                Probe::new("no condition", &[("rule.1.to", "x")], "a", b""),
                Probe::new("no target", &[("rule.1.subject", "x")], "a", b""),
                Probe::new(
                    "equals without field",
                    &[("rule.3.equals", "x"), ("rule.3.to", "y")],
                    "a",
                    b"",
                ),
                Probe::new(
                    "an empty field path",
                    &[
                        ("rule.1.field", "a..b"),
                        ("rule.1.equals", "x"),
                        ("rule.1.to", "y"),
                    ],
                    "a",
                    b"",
                ),
                Probe::new(
                    "> in the middle",
                    &[("rule.1.subject", "a.>.b"), ("rule.1.to", "y")],
                    "a",
                    b"",
                ),
                Probe::new(
                    "whitespace in a pattern",
                    &[("rule.1.subject", "a\u{a0}b"), ("rule.1.to", "y")],
                    "a",
                    b"",
                ),
                Probe::new(
                    "U+001C in a pattern is not whitespace",
                    &[("rule.1.subject", "a\u{1c}b"), ("rule.1.to", "y")],
                    "a\u{1c}b",
                    b"",
                ),
                Probe::new(
                    "a wildcard target",
                    &[("rule.1.subject", "a"), ("rule.1.to", "y.*")],
                    "a",
                    b"",
                ),
                Probe::new(
                    "an empty target",
                    &[("rule.1.subject", "a"), ("rule.1.to", "y,")],
                    "a",
                    b"",
                ),
                Probe::new(
                    "a bad template names the template",
                    &[("rule.1.subject", "a"), ("rule.1.to", "{tenant}..x")],
                    "a",
                    b"",
                ),
                Probe::new(
                    "a bad mode",
                    &[("rule.1.subject", "a"), ("rule.1.to", "y"), ("mode", "any")],
                    "a",
                    b"",
                ),
                Probe::new("a bad unmatched subject", &[("unmatched", "a b")], "a", b""),
            ]
        }
        other => panic!("no probes for plugin `{other}`"),
    }
}
