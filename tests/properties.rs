//! Properties every input from outside the process must keep, as plain
//! functions of that input: the bounded `proptest` run in CI
//! (`tests/props.rs`) and the `cargo fuzz` targets (`fuzz/`) call the same
//! ones. Each panics only if the property breaks.

use std::path::Path;

use sluice::config::Config;
use sluice::message::{Message, Origin, OutputCaps, Verdict};
use sluice::pipeline::{Chain, Outcome};
use sluice::subject::{Template, matches, validate_subject};

/// Any config text: parsing (and validating) ends in a config or an error,
/// never a panic.
pub fn config_text(text: &str) {
    let _ = Config::parse(text, Path::new("/nonexistent/sluice.toml"));
}

/// Any output template, tenant and input subject: parsing and rendering
/// never panic.
pub fn template(template: &str, tenant: &str, subject: &str) {
    if let Ok(t) = Template::parse(template) {
        let _ = t.render(tenant, subject);
        let _ = t.implied_permit(tenant);
    }
}

/// Any bytes as the packed verdicts of a batch of `count`: decoded into
/// exactly `count` verdicts, or an error.
pub fn wire(bytes: &[u8], count: usize) {
    if let Ok(v) = sluice::wasm::wire::decode_verdicts(bytes.to_vec(), count) {
        assert_eq!(v.len(), count, "decoded a different number of verdicts");
    }
}

/// Any header block a producer stored: what the host parses from it can be
/// handed to the NATS client (whose `append` asserts), so a dead letter
/// carrying them can always be built.
pub fn header_block(bytes: &[u8]) {
    if let Ok(headers) = sluice::unreadable::parse_headers(bytes) {
        let _ = sluice::headers::header_map(&headers);
    }
}

/// One output a guest may return: subject, headers, payload.
pub type RawOutput = (String, Vec<(String, String)>, Vec<u8>);

/// A verdict built from raw parts: `kind` picks the variant.
pub fn verdict_of(kind: u8, outputs: Vec<RawOutput>, text: String, ms: u32) -> Verdict {
    let message = |(subject, headers, payload): RawOutput| Message {
        subject,
        headers,
        payload: payload.into(),
    };
    match kind % 5 {
        0 => Verdict::Next(
            outputs
                .into_iter()
                .next()
                .map(message)
                .unwrap_or_else(|| Message::new(text, "x")),
        ),
        1 => Verdict::Publish(outputs.into_iter().map(message).collect()),
        2 => Verdict::Ack,
        3 => Verdict::DeadLetter(text),
        _ => Verdict::Retry(ms),
    }
}

/// Any verdict from a guest, through a one-stage chain for tenant `acme`
/// (permits `acme.>`, small caps): the host never panics, every output it
/// would publish has a valid subject inside the tenant's permits, headers
/// the NATS client accepts, and fits the caps; anything else is a dead
/// letter with a reason.
pub fn verdict(v: Verdict) {
    let caps = OutputCaps {
        max_outputs: 64,
        max_bytes: 64 * 1024,
        max_subject: 256,
    };
    let chain = Chain {
        tenant: "acme".to_owned(),
        output: Template::parse("{tenant}.out.{subject[2..]}").expect("a valid template"),
        permits: vec!["acme.>".to_owned()],
        labels: vec!["p@1".to_owned()],
        caps: vec![caps],
    };
    let origin = Origin {
        tenant: "acme".to_owned(),
        stream: "ACME".to_owned(),
        stream_seq: 1,
        delivered: 1,
        published_us: 0,
    };
    let source = Message::new("acme.in.x", "x");
    match chain.run(&origin, &source, |_, _, _| Ok(v.clone())) {
        Outcome::Publish { outputs, .. } => {
            assert!(outputs.len() <= caps.max_outputs);
            for o in &outputs {
                validate_subject(&o.subject).expect("a published subject is valid");
                assert!(o.subject.len() <= caps.max_subject);
                assert!(
                    matches("acme.>", &o.subject),
                    "outside permits: {}",
                    o.subject
                );
                let _ = sluice::headers::header_map(&o.headers);
            }
        }
        Outcome::DeadLetter { reason, .. } => assert!(!reason.is_empty(), "a reason"),
        Outcome::Ack { .. } | Outcome::Retry { .. } => {}
    }
}
