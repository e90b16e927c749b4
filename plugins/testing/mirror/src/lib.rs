//! Test guest `mirror`: returns the verdict its config names, with the
//! message exactly as it came (bytes, headers and their order), so its
//! golden cases (`cases.json`) test the case runners rather than a plugin.
//! Every language has it (plugins/python/mirror, plugins/js/mirror), and
//! all four case runners run its cases: they are the edge cases of the
//! golden-case format (docs/plugins.md).
//!
//! Config: `verdict` = `next` (default), `publish`, `ack`, `dead-letter` or
//! `retry`; `to` = comma-separated subjects to publish the message to
//! (default: its own subject; empty: publish nothing); `reason` (default
//! `mirrored`); `delay_ms` (default 0); `origin_header` = a header name to
//! append with `tenant/stream/stream_seq/delivered/published_ms`.

use sluice_guest::{Config, Handler, Message, Origin, Verdict};

enum Kind {
    Next,
    Publish(Option<Vec<String>>),
    Ack,
    DeadLetter(String),
    Retry(u32),
}

struct Mirror {
    kind: Kind,
    origin_header: Option<String>,
}

impl Handler for Mirror {
    fn init(config: Config) -> Result<Self, String> {
        config.reject_unknown(&["verdict", "to", "reason", "delay_ms", "origin_header"])?;
        let kind = match config.get_or("verdict", "next") {
            "next" => Kind::Next,
            "publish" => Kind::Publish(config.get("to").map(|to| {
                to.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })),
            "ack" => Kind::Ack,
            "dead-letter" => Kind::DeadLetter(config.get_or("reason", "mirrored").to_owned()),
            "retry" => {
                let text = config.get_or("delay_ms", "0");
                // Plain digits only (Rust's parse takes "+5"), as the Python
                // and JS versions read them.
                let delay = Some(text)
                    .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| format!("config key \"delay_ms\": \"{text}\" is not a u32"))?;
                Kind::Retry(delay)
            }
            other => {
                return Err(format!(
                    "config key \"verdict\": unknown verdict \"{other}\""
                ));
            }
        };
        Ok(Mirror {
            kind,
            origin_header: config.get("origin_header").map(str::to_owned),
        })
    }

    fn handle(&self, origin: &Origin, mut msg: Message) -> Verdict {
        if let Some(name) = &self.origin_header {
            let seen = format!(
                "{}/{}/{}/{}/{}",
                origin.tenant,
                origin.stream,
                origin.stream_seq,
                origin.delivered,
                origin.published_ms
            );
            msg.headers.push((name.clone(), seen));
        }
        match &self.kind {
            Kind::Next => Verdict::Next(msg),
            Kind::Publish(None) => Verdict::Publish(vec![msg]),
            Kind::Publish(Some(to)) => Verdict::Publish(
                to.iter()
                    .map(|subject| msg.clone().with_subject(subject.clone()))
                    .collect(),
            ),
            Kind::Ack => Verdict::Ack,
            Kind::DeadLetter(reason) => Verdict::DeadLetter(reason.clone()),
            Kind::Retry(ms) => Verdict::Retry(*ms),
        }
    }
}

sluice_guest::export_handler!(Mirror);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_cases() {
        if let Err(report) = sluice_guest::cases::run::<Mirror>(include_str!("../cases.json")) {
            panic!("{report}");
        }
    }

    #[test]
    fn a_wrong_expectation_fails() {
        // The runner must be able to fail: the same input, a wrong payload.
        let wrong = r#"{"cases": [{"name": "w", "input": {"subject": "s", "payload_base64": "AP8="},
            "expect": {"verdict": "next", "message": {"subject": "s", "payload_base64": "AP4="}}}]}"#;
        assert!(sluice_guest::cases::run::<Mirror>(wrong).is_err());
    }
}
