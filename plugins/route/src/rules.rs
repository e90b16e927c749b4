//! The routing table: parsed from the stage config once, then asked for the
//! targets of each message.
//!
//! Config keys:
//!
//! - `rule.<N>.field` + `rule.<N>.equals`: the JSON value at the dot path is
//!   a string equal to the text, or a number or boolean whose JSON text
//!   equals it.
//! - `rule.<N>.subject`: a NATS subject pattern the input subject matches.
//! - `rule.<N>.to`: comma-separated output subjects (required); `{tenant}`
//!   becomes the tenant.
//! - `mode`: `first` (default) or `all`.
//! - `unmatched`: `dead-letter` (default) or an output subject.
//!
//! A rule needs at least one condition; with both, both must hold. Rules run
//! in numeric order of `N`, whatever order the keys came in.

use std::collections::BTreeMap;

use sluice_guest::{Config, JsonView, Scalar, check_path};

use crate::subject::{Pattern, Template};

/// How many matching rules decide the targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The first matching rule alone.
    First,
    /// Every matching rule, targets merged in rule order.
    All,
}

/// One `rule.<N>.*` group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The `N` in the keys, for error messages.
    pub number: u64,
    /// `field` and the text it must equal.
    pub field: Option<(String, String)>,
    /// The pattern the input subject must match.
    pub subject: Option<Pattern>,
    /// Output subject templates.
    pub to: Vec<Template>,
}

/// The parsed config of a `route` stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routes {
    /// In numeric order of `N`.
    pub rules: Vec<Rule>,
    /// First match or all matches.
    pub mode: Mode,
    /// Where unmatched messages go; `None` dead-letters them.
    pub unmatched: Option<Template>,
}

/// The keys of one rule as written, before they are checked together.
#[derive(Default)]
struct RawRule<'a> {
    field: Option<&'a str>,
    equals: Option<&'a str>,
    subject: Option<&'a str>,
    to: Option<&'a str>,
}

const ACCEPTED: &[&str] = &[
    "mode",
    "unmatched",
    "rule.<N>.field",
    "rule.<N>.equals",
    "rule.<N>.subject",
    "rule.<N>.to",
];

impl Routes {
    /// Parse and check the whole table, naming the key of the first problem.
    pub fn parse(config: &Config) -> Result<Self, String> {
        let mut raw: BTreeMap<u64, RawRule<'_>> = BTreeMap::new();
        for (key, value) in config.iter() {
            match key {
                "mode" | "unmatched" => {}
                _ => {
                    let (number, attr) = rule_key(key)?;
                    let rule = raw.entry(number).or_default();
                    let slot = match attr {
                        "field" => &mut rule.field,
                        "equals" => &mut rule.equals,
                        "subject" => &mut rule.subject,
                        "to" => &mut rule.to,
                        _ => return Err(unknown(key)),
                    };
                    *slot = Some(value);
                }
            }
        }
        let rules = raw
            .into_iter()
            .map(|(number, raw)| Rule::check(number, raw))
            .collect::<Result<_, _>>()?;
        let mode = match config.get_or("mode", "first") {
            "first" => Mode::First,
            "all" => Mode::All,
            other => {
                return Err(format!(
                    "config key \"mode\": expected \"first\" or \"all\", got \"{other}\""
                ));
            }
        };
        let unmatched = match config.get_or("unmatched", "dead-letter") {
            "dead-letter" => None,
            subject => Some(
                Template::parse(subject)
                    .map_err(|err| format!("config key \"unmatched\": {err}"))?,
            ),
        };
        Ok(Self {
            rules,
            mode,
            unmatched,
        })
    }

    /// Whether any rule looks at the payload, so a message's JSON is only
    /// parsed when it matters.
    pub fn needs_payload(&self) -> bool {
        self.rules.iter().any(|rule| rule.field.is_some())
    }

    /// The output subjects for a message, without duplicates, or `None` when
    /// nothing matched and unmatched messages are dead-lettered. `payload`
    /// is `None` when it is not JSON; field conditions then fail.
    pub fn targets(
        &self,
        subject: &str,
        payload: Option<&JsonView<'_>>,
        tenant: &str,
    ) -> Option<Vec<String>> {
        let mut targets: Vec<String> = Vec::new();
        let mut matched = false;
        for rule in self
            .rules
            .iter()
            .filter(|rule| rule.matches(subject, payload))
        {
            matched = true;
            for template in &rule.to {
                let target = template.fill(tenant);
                if !targets.contains(&target) {
                    targets.push(target);
                }
            }
            if self.mode == Mode::First {
                break;
            }
        }
        if matched {
            Some(targets)
        } else {
            self.unmatched
                .as_ref()
                .map(|template| vec![template.fill(tenant)])
        }
    }
}

impl Rule {
    fn check(number: u64, raw: RawRule<'_>) -> Result<Self, String> {
        let key = |attr: &str| format!("rule.{number}.{attr}");
        let field = match (raw.field, raw.equals) {
            (Some(path), Some(equals)) => {
                check_path(path)
                    .map_err(|err| format!("config key \"{}\": {err}", key("field")))?;
                Some((path.to_owned(), equals.to_owned()))
            }
            (None, Some(_)) => {
                return Err(format!(
                    "config key \"{}\" needs \"{}\"",
                    key("equals"),
                    key("field")
                ));
            }
            (Some(_), None) => {
                return Err(format!(
                    "config key \"{}\" needs \"{}\"",
                    key("field"),
                    key("equals")
                ));
            }
            (None, None) => None,
        };
        let subject = raw
            .subject
            .map(Pattern::parse)
            .transpose()
            .map_err(|err| format!("config key \"{}\": {err}", key("subject")))?;
        if field.is_none() && subject.is_none() {
            return Err(format!(
                "rule {number} has no condition: set \"{}\" (with \"{}\") or \"{}\"",
                key("field"),
                key("equals"),
                key("subject")
            ));
        }
        let to = raw
            .to
            .ok_or_else(|| format!("rule {number} has no \"{}\"", key("to")))?;
        let to = to
            .split(',')
            .map(|target| {
                Template::parse(target.trim())
                    .map_err(|err| format!("config key \"{}\": {err}", key("to")))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            number,
            field,
            subject,
            to,
        })
    }

    fn matches(&self, subject: &str, payload: Option<&JsonView<'_>>) -> bool {
        let subject_ok = self
            .subject
            .as_ref()
            .is_none_or(|pattern| pattern.matches(subject));
        let field_ok = self.field.as_ref().is_none_or(|(path, equals)| {
            payload
                .and_then(|payload| payload.scalar(path))
                .is_some_and(|value| value_equals(&value, equals))
        });
        subject_ok && field_ok
    }
}

/// A string compares as itself, a number or boolean as its JSON text;
/// null, arrays and objects never match.
fn value_equals(value: &Scalar<'_>, text: &str) -> bool {
    match value {
        Scalar::String(s) => s == text,
        Scalar::Number(n) => n == text,
        Scalar::Bool(b) => (if *b { "true" } else { "false" }) == text,
        Scalar::Null | Scalar::Composite => false,
    }
}

/// Split `rule.<N>.<attr>` into its number and attribute.
fn rule_key(key: &str) -> Result<(u64, &str), String> {
    let rest = key.strip_prefix("rule.").ok_or_else(|| unknown(key))?;
    let (number, attr) = rest.split_once('.').ok_or_else(|| unknown(key))?;
    // Only plain digits: `+1` or ` 1` are typos, not rule 1.
    let parsed = if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) {
        number.parse().ok()
    } else {
        None
    };
    let number = parsed.ok_or_else(|| {
        format!("config key \"{key}\": rule number \"{number}\" is not a non-negative integer")
    })?;
    Ok((number, attr))
}

fn unknown(key: &str) -> String {
    format!(
        "unknown config key \"{key}\"; accepted keys: {}",
        ACCEPTED.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use sluice_guest::serde_json::{self, json};
    use sluice_guest::{Message, Value};

    use super::*;

    fn routes(pairs: &[(&str, &str)]) -> Result<Routes, String> {
        Routes::parse(
            &pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    fn targets(r: &Routes, subject: &str, payload: Option<Value>) -> Option<Vec<String>> {
        let msg = payload.map(|v| Message::new(subject, serde_json::to_vec(&v).unwrap()));
        let view = msg.as_ref().map(Message::json_view);
        r.targets(subject, view.as_ref(), "acme")
    }

    #[test]
    fn rules_run_in_numeric_order() {
        let r = routes(&[
            ("rule.10.subject", ">"),
            ("rule.10.to", "ten"),
            ("rule.9.subject", ">"),
            ("rule.9.to", "nine"),
        ])
        .unwrap();
        assert_eq!(
            r.rules.iter().map(|r| r.number).collect::<Vec<_>>(),
            [9, 10]
        );
        assert_eq!(targets(&r, "a", None), Some(vec!["nine".to_owned()]));
    }

    #[test]
    fn field_equals_strings_numbers_and_booleans() {
        let r = routes(&[
            ("rule.1.field", "a.kind"),
            ("rule.1.equals", "x"),
            ("rule.1.to", "s"),
            ("rule.2.field", "n"),
            ("rule.2.equals", "2"),
            ("rule.2.to", "n"),
            ("rule.3.field", "b"),
            ("rule.3.equals", "true"),
            ("rule.3.to", "b"),
        ])
        .unwrap();
        assert!(r.needs_payload());
        let t = |v: Value| targets(&r, "in", Some(v));
        assert_eq!(t(json!({"a": {"kind": "x"}})), Some(vec!["s".to_owned()]));
        assert_eq!(t(json!({"n": 2})), Some(vec!["n".to_owned()]));
        assert_eq!(t(json!({"n": "2"})), Some(vec!["n".to_owned()]));
        assert_eq!(t(json!({"n": 2.5})), None);
        assert_eq!(t(json!({"b": true})), Some(vec!["b".to_owned()]));
        assert_eq!(t(json!({"b": null})), None);
        assert_eq!(t(json!({"a": {"kind": ["x"]}})), None);
        assert_eq!(targets(&r, "in", None), None);
    }

    #[test]
    fn both_conditions_must_hold() {
        let r = routes(&[
            ("rule.1.field", "k"),
            ("rule.1.equals", "v"),
            ("rule.1.subject", "acme.in.*"),
            ("rule.1.to", "hit"),
            ("unmatched", "miss"),
        ])
        .unwrap();
        let hit = Some(vec!["hit".to_owned()]);
        let miss = Some(vec!["miss".to_owned()]);
        assert_eq!(targets(&r, "acme.in.x", Some(json!({"k": "v"}))), hit);
        assert_eq!(targets(&r, "acme.other.x", Some(json!({"k": "v"}))), miss);
        assert_eq!(targets(&r, "acme.in.x", Some(json!({"k": "w"}))), miss);
    }

    #[test]
    fn mode_all_merges_targets_without_duplicates() {
        let pairs = [
            ("rule.1.subject", "acme.>"),
            ("rule.1.to", "a, {tenant}.b"),
            ("rule.2.subject", "*.in"),
            ("rule.2.to", "acme.b,c"),
            ("rule.3.subject", "never"),
            ("rule.3.to", "d"),
        ];
        let first = routes(&pairs).unwrap();
        assert_eq!(
            targets(&first, "acme.in", None),
            Some(vec!["a".to_owned(), "acme.b".to_owned()])
        );
        let mut with_all = pairs.to_vec();
        with_all.push(("mode", "all"));
        let all = routes(&with_all).unwrap();
        assert!(!all.needs_payload());
        assert_eq!(
            targets(&all, "acme.in", None),
            Some(vec!["a".to_owned(), "acme.b".to_owned(), "c".to_owned()])
        );
    }

    #[test]
    fn unmatched_is_templated_or_dead_letters() {
        let r = routes(&[("rule.1.subject", "x"), ("rule.1.to", "y")]).unwrap();
        assert_eq!(r.unmatched, None);
        assert_eq!(targets(&r, "z", None), None);
        let r = routes(&[
            ("rule.1.subject", "x"),
            ("rule.1.to", "y"),
            ("unmatched", "{tenant}.unrouted"),
        ])
        .unwrap();
        assert_eq!(
            targets(&r, "z", None),
            Some(vec!["acme.unrouted".to_owned()])
        );
    }

    #[test]
    fn config_errors() {
        let err = |pairs: &[(&str, &str)]| routes(pairs).unwrap_err();
        assert!(err(&[("rules.1.to", "x")]).starts_with("unknown config key \"rules.1.to\""));
        assert!(err(&[("rule.1.from", "x")]).starts_with("unknown config key \"rule.1.from\""));
        assert!(err(&[("rule.1", "x")]).starts_with("unknown config key \"rule.1\""));
        assert_eq!(
            err(&[("rule.one.to", "x")]),
            "config key \"rule.one.to\": rule number \"one\" is not a non-negative integer"
        );
        assert!(err(&[("rule.-1.to", "x")]).contains("not a non-negative integer"));
        assert_eq!(
            err(&[("rule.1.subject", "x")]),
            "rule 1 has no \"rule.1.to\""
        );
        assert!(err(&[("rule.1.to", "x")]).starts_with("rule 1 has no condition"));
        assert_eq!(
            err(&[("rule.1.equals", "x"), ("rule.1.to", "y")]),
            "config key \"rule.1.equals\" needs \"rule.1.field\""
        );
        assert_eq!(
            err(&[("rule.1.field", "x"), ("rule.1.to", "y")]),
            "config key \"rule.1.field\" needs \"rule.1.equals\""
        );
        assert_eq!(
            err(&[("rule.1.subject", "x"), ("rule.1.to", "y"), ("mode", "any")]),
            "config key \"mode\": expected \"first\" or \"all\", got \"any\""
        );
        assert!(err(&[("rule.1.subject", "a.>.b"), ("rule.1.to", "y")]).contains("rule.1.subject"));
        assert!(err(&[("rule.1.subject", "a"), ("rule.1.to", "y,")]).contains("rule.1.to"));
        assert!(err(&[("rule.1.subject", "a"), ("rule.1.to", "y.*")]).contains("rule.1.to"));
        assert!(err(&[("unmatched", "a..b")]).contains("\"unmatched\""));
    }
}
