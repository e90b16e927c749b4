//! Reference plugin `transform`: reshape JSON object payloads.
//!
//! Configuration (flat keys; paths are dot paths such as `user.name`):
//!
//! - `rename.<from> = "<to>"`: move the value at `<from>` to `<to>`; a
//!   missing `<from>` is left alone.
//! - `remove = "p1,p2"`: delete these paths (comma-separated).
//! - `set.<path> = "<value>"`: put a value at `<path>`. The value is parsed as
//!   JSON when it parses (`42`, `true`, `null`, `{"a":1}`, `"\"quoted\""`),
//!   otherwise it is the string as written.
//!
//! Renames run first (in config order), then removals, then sets, so a set
//! can fill a field that a rename just vacated. The result is the same
//! message, subject and headers untouched, with a compact JSON payload. A
//! payload that is not a JSON object is dead-lettered: no transform can
//! apply to it, however often it is retried.

use sluice_guest::serde_json;
use sluice_guest::{
    Config, Handler, JsonLiteral, JsonPaths, Message, Origin, Value, Verdict, check_path,
};

/// The edits of one stage, parsed and checked once in `init`.
struct Transform {
    renames: Vec<(String, String)>,
    removals: Vec<String>,
    sets: Vec<(String, JsonLiteral)>,
}

impl Handler for Transform {
    fn init(config: Config) -> Result<Self, String> {
        config.reject_unknown(&["rename.*", "remove", "set.*"])?;
        let renames = config
            .with_prefix("rename.")
            .map(|(from, to)| {
                checked(&format!("rename.{from}"), from)?;
                checked(&format!("rename.{from}"), to)?;
                Ok((from.to_owned(), to.to_owned()))
            })
            .collect::<Result<_, String>>()?;
        let removals = match config.get("remove") {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|path| checked("remove", path.trim()).map(str::to_owned))
                .collect::<Result<_, String>>()?,
        };
        let sets = config
            .with_prefix("set.")
            .map(|(path, raw)| {
                checked(&format!("set.{path}"), path)?;
                Ok((path.to_owned(), JsonLiteral::new(literal(raw))))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            renames,
            removals,
            sets,
        })
    }

    fn handle(&self, _origin: &Origin, mut msg: Message) -> Verdict {
        match msg.edit_json_paths(|payload| self.apply(payload)) {
            Ok(()) => Verdict::Next(msg),
            Err(reason) => Verdict::DeadLetter(reason),
        }
    }
}

impl Transform {
    fn apply(&self, payload: &mut JsonPaths<'_, '_>) -> Result<(), String> {
        for (from, to) in &self.renames {
            payload.rename(from, to)?;
        }
        for path in &self.removals {
            payload.remove(path)?;
        }
        for (path, value) in &self.sets {
            payload.set(path, value)?;
        }
        Ok(())
    }
}

/// `path` if it is a usable dot path, else an error naming the config key.
fn checked<'a>(key: &str, path: &'a str) -> Result<&'a str, String> {
    check_path(path).map_err(|err| format!("config key \"{key}\": {err}"))?;
    Ok(path)
}

/// A `set.` value: JSON if it parses, otherwise the text itself, so
/// `set.status = "done"` needs no inner quotes.
fn literal(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
}

sluice_guest::export_handler!(Transform);

#[cfg(test)]
mod tests {
    use sluice_guest::serde_json::json;

    use super::*;

    fn transform(pairs: &[(&str, &str)]) -> Result<Transform, String> {
        Transform::init(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    fn run(t: &Transform, payload: &str) -> Verdict {
        let origin = Origin {
            tenant: "acme".into(),
            stream: "IN".into(),
            stream_seq: 1,
            delivered: 1,
            published_ms: 0,
        };
        t.handle(&origin, Message::new("acme.in", payload))
    }

    fn payload(verdict: Verdict) -> Value {
        match verdict {
            Verdict::Next(msg) => serde_json::from_slice(&msg.payload).unwrap(),
            other => panic!("expected next, got {other:?}"),
        }
    }

    #[test]
    fn rename_remove_set_in_that_order() {
        let t = transform(&[
            ("set.id", "\"new\""),
            ("remove", "b, c.d"),
            ("rename.id", "old_id"),
        ])
        .unwrap();
        let out = payload(run(&t, r#"{"id":7,"b":1,"c":{"d":2,"e":3}}"#));
        assert_eq!(out, json!({"old_id": 7, "c": {"e": 3}, "id": "new"}));
    }

    #[test]
    fn set_values_are_json_when_they_parse() {
        assert_eq!(literal("42"), json!(42));
        assert_eq!(literal("true"), json!(true));
        assert_eq!(literal("null"), json!(null));
        assert_eq!(literal(r#"{"a":[1]}"#), json!({"a": [1]}));
        assert_eq!(literal("\"7\""), json!("7"));
        assert_eq!(literal("done"), json!("done"));
        assert_eq!(literal(""), json!(""));
    }

    #[test]
    fn missing_rename_source_is_a_no_op() {
        let t = transform(&[("rename.a", "b")]).unwrap();
        assert_eq!(payload(run(&t, r#"{"x":1}"#)), json!({"x": 1}));
    }

    #[test]
    fn non_objects_are_dead_lettered() {
        let t = transform(&[]).unwrap();
        assert_eq!(
            run(&t, "[1]"),
            Verdict::DeadLetter("payload is not a JSON object".into())
        );
        match run(&t, "nope") {
            Verdict::DeadLetter(reason) => {
                assert!(
                    reason.starts_with("payload is not valid JSON: "),
                    "{reason}"
                )
            }
            other => panic!("expected dead-letter, got {other:?}"),
        }
    }

    #[test]
    fn config_errors_name_the_key() {
        let err = transform(&[("renmae.a", "b")]).err().unwrap();
        assert!(err.contains("\"renmae.a\""), "{err}");
        let err = transform(&[("remove", "a,,b")]).err().unwrap();
        assert!(err.contains("\"remove\""), "{err}");
        let err = transform(&[("set.a..b", "1")]).err().unwrap();
        assert!(err.contains("\"set.a..b\""), "{err}");
        let err = transform(&[("rename.a", "")]).err().unwrap();
        assert!(err.contains("\"rename.a\""), "{err}");
    }

    #[test]
    fn golden_cases() {
        if let Err(report) = sluice_guest::cases::run::<Transform>(include_str!("../cases.json")) {
            panic!("{report}");
        }
    }
}
