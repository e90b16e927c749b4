//! Helpers on the WIT [`Message`]: headers by name and the payload as JSON.
//!
//! Header names compare ASCII case-insensitively, as NATS and HTTP tooling
//! treat them; values are returned as they are. The order of headers is kept
//! so the host can pass them on unchanged.

use serde_json::Value;

use crate::Message;

impl Message {
    /// A message with no headers.
    pub fn new(subject: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            subject: subject.into(),
            headers: Vec::new(),
            payload: payload.into(),
        }
    }

    /// The same message on another subject.
    #[must_use]
    pub fn with_subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = subject.into();
        self
    }

    /// The value of the first header called `name`, in any letter case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of the headers called `name`, in any letter case, in
    /// order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Make `name: value` the only header of that name (in any letter
    /// case). It takes the place of the first one there was, so the order
    /// of the others is kept; otherwise it is appended.
    pub fn set_header(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self
            .headers
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(&name))
        {
            Some(first) => {
                // Nothing before `first` matches, so its index survives.
                let mut index = 0;
                self.headers.retain(|(n, _)| {
                    let keep = index <= first || !n.eq_ignore_ascii_case(&name);
                    index += 1;
                    keep
                });
                self.headers[first] = (name, value);
            }
            None => self.headers.push((name, value)),
        }
    }

    /// Remove every header called `name`, in any letter case. Returns
    /// whether there was one.
    pub fn remove_header(&mut self, name: &str) -> bool {
        let before = self.headers.len();
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.len() != before
    }

    /// The payload parsed as JSON. The error reads `payload is not valid
    /// JSON: <parser error>`, fit to be a dead-letter reason.
    pub fn json(&self) -> Result<Value, String> {
        serde_json::from_slice(&self.payload)
            .map_err(|err| format!("payload is not valid JSON: {err}"))
    }

    /// The payload parsed as a JSON object (returned as a [`Value`] that is
    /// always [`Value::Object`], so the path helpers apply). Besides the
    /// errors of [`Message::json`], valid JSON of another kind gives
    /// `payload is not a JSON object`.
    pub fn json_object(&self) -> Result<Value, String> {
        let value = self.json()?;
        if value.is_object() {
            Ok(value)
        } else {
            Err("payload is not a JSON object".to_owned())
        }
    }

    /// Parse the payload as a JSON object, let `edit` change it, and write
    /// it back as compact JSON. On any error (from parsing or from `edit`)
    /// the payload is left as it was and the error is returned, ready to be
    /// a dead-letter reason.
    pub fn edit_json_object<F>(&mut self, edit: F) -> Result<(), String>
    where
        F: FnOnce(&mut Value) -> Result<(), String>,
    {
        let mut value = self.json_object()?;
        edit(&mut value)?;
        self.set_json(&value);
        Ok(())
    }

    /// Replace the payload with `value` as compact JSON.
    pub fn set_json(&mut self, value: &Value) {
        // Serialising a `Value` cannot fail (its map keys are strings);
        // `to_vec` writes straight into the buffer, without going through
        // `Display` and a formatter as `to_string` does.
        self.payload = serde_json::to_vec(value).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn msg(headers: &[(&str, &str)], payload: &str) -> Message {
        Message {
            subject: "acme.in".into(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            payload: payload.as_bytes().to_vec(),
        }
    }

    fn pairs(m: &Message) -> Vec<(&str, &str)> {
        m.headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn header_lookup_ignores_case() {
        let m = msg(&[("Trace", "1"), ("x-id", "a"), ("X-Id", "b")], "");
        assert_eq!(m.header("X-ID"), Some("a"));
        assert_eq!(m.header("trace"), Some("1"));
        assert_eq!(m.header("missing"), None);
        assert_eq!(m.header_values("x-id").collect::<Vec<_>>(), vec!["a", "b"]);
    }

    #[test]
    fn set_header_replaces_every_header_of_that_name_in_place() {
        let mut m = msg(&[("A", "1"), ("x-id", "a"), ("B", "2"), ("X-ID", "b")], "");
        m.set_header("X-Id", "c");
        assert_eq!(pairs(&m), vec![("A", "1"), ("X-Id", "c"), ("B", "2")]);
    }

    #[test]
    fn set_header_appends_a_new_name() {
        let mut m = msg(&[("A", "1")], "");
        m.set_header("B", "2");
        assert_eq!(pairs(&m), vec![("A", "1"), ("B", "2")]);
    }

    #[test]
    fn remove_header_removes_all_and_reports_it() {
        let mut m = msg(&[("a", "1"), ("B", "2"), ("A", "3")], "");
        assert!(m.remove_header("A"));
        assert_eq!(pairs(&m), vec![("B", "2")]);
        assert!(!m.remove_header("A"));
    }

    #[test]
    fn json_reports_parse_errors_as_reasons() {
        let m = msg(&[], "{not json");
        let err = m.json().unwrap_err();
        assert!(err.starts_with("payload is not valid JSON: "), "{err}");
        assert_eq!(msg(&[], "[1]").json(), Ok(json!([1])));
    }

    #[test]
    fn json_object_rejects_other_kinds() {
        assert_eq!(
            msg(&[], "[1]").json_object(),
            Err("payload is not a JSON object".to_owned())
        );
        assert_eq!(
            msg(&[], "\"s\"").json_object(),
            Err("payload is not a JSON object".to_owned())
        );
        assert_eq!(msg(&[], r#"{"a":1}"#).json_object(), Ok(json!({"a": 1})));
        assert!(
            msg(&[], "")
                .json_object()
                .unwrap_err()
                .contains("not valid JSON")
        );
    }

    #[test]
    fn set_json_writes_compact_json_in_member_order() {
        let mut m = msg(&[], "");
        m.set_json(&json!({"z": 1, "a": [true, null]}));
        assert_eq!(m.payload, br#"{"z":1,"a":[true,null]}"#);
    }

    #[test]
    fn edit_json_object_writes_back_only_on_success() {
        let mut m = msg(&[], r#"{"a": 1}"#);
        m.edit_json_object(|v| crate::set_path(v, "b", json!(2)))
            .unwrap();
        assert_eq!(m.payload, br#"{"a":1,"b":2}"#);
        let err = m
            .edit_json_object(|v| {
                crate::set_path(v, "c", json!(3))?;
                Err("no".to_owned())
            })
            .unwrap_err();
        assert_eq!(err, "no");
        assert_eq!(m.payload, br#"{"a":1,"b":2}"#);
        let mut m = msg(&[], "[]");
        assert_eq!(
            m.edit_json_object(|_| Ok(())),
            Err("payload is not a JSON object".to_owned())
        );
        assert_eq!(m.payload, b"[]");
    }

    #[test]
    fn constructors() {
        let m = Message::new("a.b", "x").with_subject("c.d");
        assert_eq!(m.subject, "c.d");
        assert!(m.headers.is_empty());
        assert_eq!(m.payload, b"x");
    }
}
