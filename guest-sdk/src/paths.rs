//! Path edits and reads on a message's JSON payload that take the fast path
//! when they can: [`Message::edit_json_paths`] and [`Message::json_view`].
//!
//! Both give exactly what the `serde_json` helpers give
//! ([`Message::edit_json_object`] with [`set_path`](crate::set_path) and
//! friends, [`get_path`](crate::get_path)), byte for byte. For compact JSON
//! they skip building a [`Value`] and formatting it again, which is most of
//! what a simple handler costs; other input takes the `serde_json` route.

use std::sync::Arc;

use serde_json::Value;

use crate::compact::{Node, Object, Unsupported};
use crate::json::{get_path, remove_path, set_path};
use crate::{Message, Scalar};

/// A JSON value to [`set`](JsonPaths::set), prepared once (in `init`) so
/// each message only copies its text.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonLiteral {
    value: Value,
    /// Its compact text, unless it is an object (objects stay editable).
    text: Option<Arc<[u8]>>,
}

impl JsonLiteral {
    /// Prepare `value`.
    pub fn new(value: Value) -> Self {
        let text = match &value {
            Value::Object(_) => None,
            // Serialising a `Value` cannot fail.
            other => serde_json::to_vec(other).ok().map(Arc::from),
        };
        Self { value, text }
    }

    /// The value.
    pub fn value(&self) -> &Value {
        &self.value
    }

    fn node(&self) -> Node<'static> {
        match &self.text {
            Some(text) => Node::Shared(text.clone()),
            None => Node::from_value(&self.value),
        }
    }
}

impl From<Value> for JsonLiteral {
    fn from(value: Value) -> Self {
        Self::new(value)
    }
}

/// The payload object as [`Message::edit_json_paths`] hands it to its
/// closure. Paths are dot paths as in [`set_path`](crate::set_path).
pub struct JsonPaths<'d, 'a> {
    target: Target<'d, 'a>,
    /// An edit the fast path cannot do was asked for: start over slowly.
    unsupported: bool,
}

enum Target<'d, 'a> {
    Fast(&'d mut Object<'a>),
    Slow(&'d mut Value),
}

impl JsonPaths<'_, '_> {
    /// The result of a fast-path edit. One the fast path cannot do marks
    /// the whole edit to be redone on a `Value`; the error is never seen by
    /// the caller.
    fn fast(&mut self, done: Result<(), Unsupported>) -> Result<(), String> {
        done.map_err(|Unsupported| {
            self.unsupported = true;
            String::new()
        })
    }

    /// Move the value at `from` to `to`; nothing happens if `from` is
    /// absent. Fails as [`set_path`](crate::set_path) does.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<(), String> {
        match &mut self.target {
            Target::Fast(object) => {
                let done = match object.remove(from) {
                    Ok(Some(node)) => object.set(to, node),
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                };
                self.fast(done)
            }
            Target::Slow(value) => match remove_path(value, from) {
                Some(moved) => set_path(value, to, moved),
                None => Ok(()),
            },
        }
    }

    /// Remove the value at `path`, if there is one.
    pub fn remove(&mut self, path: &str) -> Result<(), String> {
        match &mut self.target {
            Target::Fast(object) => {
                let done = object.remove(path).map(drop);
                self.fast(done)
            }
            Target::Slow(value) => {
                remove_path(value, path);
                Ok(())
            }
        }
    }

    /// Put `literal` at `path`, creating missing objects on the way. Fails
    /// as [`set_path`](crate::set_path) does.
    pub fn set(&mut self, path: &str, literal: &JsonLiteral) -> Result<(), String> {
        match &mut self.target {
            Target::Fast(object) => {
                let done = object.set(path, literal.node());
                self.fast(done)
            }
            Target::Slow(value) => set_path(value, path, literal.value.clone()),
        }
    }

    /// Put a string at `path`: [`set`](Self::set) for a value known only
    /// per message.
    pub fn set_str(&mut self, path: &str, text: &str) -> Result<(), String> {
        match &mut self.target {
            Target::Fast(object) => {
                let mut quoted = Vec::with_capacity(text.len() + 2);
                // Writing a `str` into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut quoted, text);
                let done = object.set(path, Node::Text(quoted.into()));
                self.fast(done)
            }
            Target::Slow(value) => set_path(value, path, Value::from(text)),
        }
    }
}

/// A read-only look at a payload, for handlers that decide by content.
pub struct JsonView<'a> {
    bytes: &'a [u8],
    parsed: Parsed<'a>,
}

enum Parsed<'a> {
    Fast(Object<'a>),
    Slow(Value),
    /// Not JSON: every lookup finds nothing.
    Invalid,
}

impl JsonView<'_> {
    /// Whether the payload is valid JSON.
    pub fn is_json(&self) -> bool {
        !matches!(self.parsed, Parsed::Invalid)
    }

    /// The scalar at `path` (see [`get_path`](crate::get_path)), or `None`
    /// if the payload has nothing there or is not JSON.
    pub fn scalar(&self, path: &str) -> Option<Scalar<'_>> {
        match &self.parsed {
            Parsed::Fast(object) => match object.get(path) {
                Ok(found) => found.map(Scalar::of_node),
                // A path into an array: read it the slow way.
                Err(Unsupported) => {
                    let value: Value = serde_json::from_slice(self.bytes).ok()?;
                    get_path(&value, path).map(|v| Scalar::of(v).into_owned())
                }
            },
            Parsed::Slow(value) => get_path(value, path).map(Scalar::of),
            Parsed::Invalid => None,
        }
    }
}

impl Message {
    /// Edit the payload, which must be a JSON object, by dot path; the
    /// result is written back as compact JSON. Same results and errors as
    /// [`edit_json_object`](Self::edit_json_object) with the `json` path
    /// helpers, but compact payloads are edited without a [`Value`].
    ///
    /// `edit` may run twice: if it asks for an edit the fast path cannot do
    /// (a path through an array, say), it is run again on a [`Value`]. It
    /// should only make [`JsonPaths`] calls.
    pub fn edit_json_paths<F>(&mut self, mut edit: F) -> Result<(), String>
    where
        F: FnMut(&mut JsonPaths<'_, '_>) -> Result<(), String>,
    {
        let fast = match Object::parse(&self.payload) {
            Ok(mut object) => {
                let mut paths = JsonPaths {
                    target: Target::Fast(&mut object),
                    unsupported: false,
                };
                let result = edit(&mut paths);
                if paths.unsupported {
                    None
                } else {
                    Some(result.map(|()| object.to_vec(self.payload.len())))
                }
            }
            Err(Unsupported) => None,
        };
        if let Some(result) = fast {
            self.payload = result?;
            return Ok(());
        }
        self.edit_json_object(|value| {
            edit(&mut JsonPaths {
                target: Target::Slow(value),
                unsupported: false,
            })
        })
    }

    /// A read-only view of the payload as JSON, for [`JsonView::scalar`]
    /// lookups. Any payload gives a view; one that is not JSON has nothing
    /// in it.
    pub fn json_view(&self) -> JsonView<'_> {
        let parsed = match Object::parse(&self.payload) {
            Ok(object) => Parsed::Fast(object),
            Err(Unsupported) => match serde_json::from_slice(&self.payload) {
                Ok(value) => Parsed::Slow(value),
                Err(_) => Parsed::Invalid,
            },
        };
        JsonView {
            bytes: &self.payload,
            parsed,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn msg(payload: &str) -> Message {
        Message::new("a.b", payload)
    }

    fn edit(payload: &str) -> Result<String, String> {
        let stamp = JsonLiteral::new(json!({"v": 2}));
        let mut m = msg(payload);
        m.edit_json_paths(|p| {
            p.rename("user", "customer")?;
            p.remove("debug")?;
            p.set("meta", &stamp)?;
            p.set_str("meta.tenant", "acme")
        })?;
        Ok(String::from_utf8(m.payload).unwrap())
    }

    #[test]
    fn compact_and_spaced_payloads_edit_to_the_same_bytes() {
        // A rename appends the member at its new path, as `set_path` does.
        let want = r#"{"n":[1,2],"customer":"ann","meta":{"v":2,"tenant":"acme"}}"#;
        assert_eq!(
            edit(r#"{"user":"ann","debug":true,"n":[1,2]}"#).unwrap(),
            want
        );
        assert_eq!(
            edit(r#"{ "user" : "ann", "debug": true, "n": [1, 2] }"#).unwrap(),
            want
        );
    }

    #[test]
    fn errors_are_the_slow_paths() {
        assert_eq!(edit("[1]").unwrap_err(), "payload is not a JSON object");
        assert!(
            edit("nope")
                .unwrap_err()
                .starts_with("payload is not valid JSON: ")
        );
        let mut m = msg(r#"{"a":"text"}"#);
        let err = m.edit_json_paths(|p| p.set_str("a.b", "x")).unwrap_err();
        assert_eq!(err, "cannot set \"a.b\": \"a\" is a string, not an object");
        assert_eq!(m.payload, br#"{"a":"text"}"#);
    }

    #[test]
    fn paths_into_arrays_are_edited_the_slow_way() {
        let mut m = msg(r#"{"items":[{"id":1},{"id":2}]}"#);
        let mut runs = 0;
        m.edit_json_paths(|p| {
            runs += 1;
            p.set_str("items.1.id", "b")
        })
        .unwrap();
        assert_eq!(runs, 2);
        assert_eq!(m.payload, br#"{"items":[{"id":1},{"id":"b"}]}"#);
    }

    #[test]
    fn views_read_scalars_from_every_kind_of_payload() {
        let m = msg(r#"{"type":"order","n":1.5,"items":[{"id":"x"}],"ok":true}"#);
        let view = m.json_view();
        assert_eq!(view.scalar("type"), Some(Scalar::String("order".into())));
        assert_eq!(view.scalar("n"), Some(Scalar::Number("1.5".into())));
        assert_eq!(view.scalar("items.0.id"), Some(Scalar::String("x".into())));
        assert_eq!(view.scalar("ok"), Some(Scalar::Bool(true)));
        assert_eq!(view.scalar("items"), Some(Scalar::Composite));
        assert_eq!(view.scalar("missing"), None);
        let spaced = msg(r#"{ "n": 1e2 }"#);
        assert_eq!(
            spaced.json_view().scalar("n"),
            Some(Scalar::Number("100.0".into()))
        );
        let bad = msg("not json");
        assert!(!bad.json_view().is_json());
        assert_eq!(bad.json_view().scalar("n"), None);
    }
}
