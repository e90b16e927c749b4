//! Dot paths into JSON values: `"user.address.city"`.
//!
//! A path is a list of segments joined by `.`. A segment names an object
//! member, or, when the value there is an array and the segment is a decimal
//! number, an element. There is no escaping: a member whose name contains a
//! `.` cannot be addressed. Parsing payloads is left to `Message`.

use serde_json::{Map, Value};

/// Check that `path` is usable: not empty and without empty segments
/// (`"a..b"`, `".a"`, `"a."`). Plugins call this on paths from their config
/// in `init`, so a typo is reported once instead of on every message.
pub fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty path".to_owned());
    }
    if path.split('.').any(str::is_empty) {
        return Err(format!("invalid path \"{path}\": empty segment"));
    }
    Ok(())
}

/// The value at `path`, if every segment exists. An empty path is the value
/// itself.
pub fn get_path<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return Some(value);
    }
    path.split('.').try_fold(value, child)
}

/// Put `new` at `path`, creating missing intermediate objects and replacing
/// whatever was at the end. Fails, changing nothing, when the path is
/// invalid or an intermediate value is neither an object nor an array
/// holding that index (the value would have to be thrown away to continue).
pub fn set_path(value: &mut Value, path: &str, new: Value) -> Result<(), String> {
    check_path(path)?;
    // Walk (and create) down to the parent, then set the last segment.
    let (parent_path, last) = match path.rsplit_once('.') {
        Some((parent, last)) => (Some(parent), last),
        None => (None, path),
    };
    let mut current = value;
    let mut walked = 0;
    if let Some(parent_path) = parent_path {
        for segment in parent_path.split('.') {
            // The path of `current`, for the error message.
            let here = &path[..walked];
            current = match current {
                Value::Object(map) => map
                    .entry(segment)
                    .or_insert_with(|| Value::Object(Map::new())),
                Value::Array(items) => match array_index(segment, items.len()) {
                    Some(index) => &mut items[index],
                    None => return Err(cannot_set(path, here, &no_index(segment))),
                },
                other => return Err(cannot_set(path, here, &not_an_object(other))),
            };
            walked += segment.len() + usize::from(walked > 0);
        }
    }
    let here = &path[..walked];
    match current {
        Value::Object(map) => {
            map.insert(last.to_owned(), new);
            Ok(())
        }
        Value::Array(items) => match array_index(last, items.len()) {
            Some(index) => {
                items[index] = new;
                Ok(())
            }
            None => Err(cannot_set(path, here, &no_index(last))),
        },
        other => Err(cannot_set(path, here, &not_an_object(other))),
    }
}

/// Remove and return the value at `path`. Object members keep the order of
/// the others; array elements after it move down by one. Absent paths (and
/// invalid ones) return `None` and change nothing.
pub fn remove_path(value: &mut Value, path: &str) -> Option<Value> {
    check_path(path).ok()?;
    let (parent, last) = match path.rsplit_once('.') {
        Some((parent, last)) => (get_path_mut(value, parent)?, last),
        None => (value, path),
    };
    match parent {
        Value::Object(map) => map.shift_remove(last),
        Value::Array(items) => {
            let index = array_index(last, items.len())?;
            Some(items.remove(index))
        }
        _ => None,
    }
}

fn get_path_mut<'a>(value: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    path.split('.')
        .try_fold(value, |current, segment| match current {
            Value::Object(map) => map.get_mut(segment),
            Value::Array(items) => {
                let index = array_index(segment, items.len())?;
                items.get_mut(index)
            }
            _ => None,
        })
}

fn child<'a>(value: &'a Value, segment: &str) -> Option<&'a Value> {
    match value {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => items.get(array_index(segment, items.len())?),
        _ => None,
    }
}

/// A segment as an index into an array of `len` elements. Only plain
/// decimal digits count, so `"+1"` or `" 1"` are not indices.
fn array_index(segment: &str, len: usize) -> Option<usize> {
    if segment.is_empty() || !segment.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    segment.parse().ok().filter(|index| *index < len)
}

fn cannot_set(path: &str, at: &str, what: &str) -> String {
    if at.is_empty() {
        format!("cannot set \"{path}\": the value is {what}")
    } else {
        format!("cannot set \"{path}\": \"{at}\" is {what}")
    }
}

fn no_index(segment: &str) -> String {
    format!("an array without an element \"{segment}\"")
}

fn not_an_object(value: &Value) -> String {
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    format!("{kind}, not an object")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn check_path_rejects_empty_segments() {
        assert_eq!(check_path("a.b"), Ok(()));
        assert_eq!(check_path("a"), Ok(()));
        assert!(check_path("").is_err());
        assert!(check_path("a..b").is_err());
        assert!(check_path(".a").is_err());
        assert!(check_path("a.").is_err());
    }

    #[test]
    fn get_path_walks_objects_and_arrays() {
        let v = json!({"a": {"b": [10, {"c": true}]}});
        assert_eq!(get_path(&v, "a.b.0"), Some(&json!(10)));
        assert_eq!(get_path(&v, "a.b.1.c"), Some(&json!(true)));
        assert_eq!(get_path(&v, ""), Some(&v));
        assert_eq!(get_path(&v, "a.x"), None);
        assert_eq!(get_path(&v, "a.b.2"), None);
        assert_eq!(get_path(&v, "a.b.c"), None);
        assert_eq!(get_path(&v, "a.b.0.d"), None);
    }

    #[test]
    fn set_path_creates_intermediate_objects() {
        let mut v = json!({"a": 1});
        set_path(&mut v, "b.c.d", json!("x")).unwrap();
        assert_eq!(v, json!({"a": 1, "b": {"c": {"d": "x"}}}));
    }

    #[test]
    fn set_path_replaces_existing_values() {
        let mut v = json!({"a": {"b": 1, "c": 2}});
        set_path(&mut v, "a.b", json!({"z": null})).unwrap();
        assert_eq!(v, json!({"a": {"b": {"z": null}, "c": 2}}));
        set_path(&mut v, "a", json!(3)).unwrap();
        assert_eq!(v, json!({"a": 3}));
    }

    #[test]
    fn set_path_into_an_existing_array_element() {
        let mut v = json!({"items": [{"id": 1}, {"id": 2}]});
        set_path(&mut v, "items.1.id", json!(20)).unwrap();
        set_path(&mut v, "items.0", json!("first")).unwrap();
        assert_eq!(v, json!({"items": ["first", {"id": 20}]}));
        let err = set_path(&mut v, "items.5", json!(1)).unwrap_err();
        assert_eq!(
            err,
            "cannot set \"items.5\": \"items\" is an array without an element \"5\""
        );
    }

    #[test]
    fn set_path_refuses_to_overwrite_a_scalar_on_the_way() {
        let mut v = json!({"a": {"b": "text"}});
        let err = set_path(&mut v, "a.b.c", json!(1)).unwrap_err();
        assert_eq!(
            err,
            "cannot set \"a.b.c\": \"a.b\" is a string, not an object"
        );
        let err = set_path(&mut v, "a.b.c.d", json!(1)).unwrap_err();
        assert_eq!(
            err,
            "cannot set \"a.b.c.d\": \"a.b\" is a string, not an object"
        );
        assert_eq!(v, json!({"a": {"b": "text"}}));
        let mut scalar = json!(5);
        let err = set_path(&mut scalar, "a", json!(1)).unwrap_err();
        assert_eq!(
            err,
            "cannot set \"a\": the value is a number, not an object"
        );
        assert!(set_path(&mut v, "a..b", json!(1)).is_err());
    }

    #[test]
    fn remove_path_returns_the_value_and_keeps_member_order() {
        let mut v = json!({"a": {"x": 1, "y": 2, "z": 3}, "b": [1, 2, 3]});
        assert_eq!(remove_path(&mut v, "a.x"), Some(json!(1)));
        assert_eq!(remove_path(&mut v, "b.1"), Some(json!(2)));
        assert_eq!(remove_path(&mut v, "a.missing"), None);
        assert_eq!(remove_path(&mut v, "missing.deeper"), None);
        assert_eq!(remove_path(&mut v, "a.y.deeper"), None);
        assert_eq!(remove_path(&mut v, ""), None);
        assert_eq!(v.to_string(), r#"{"a":{"y":2,"z":3},"b":[1,3]}"#);
    }
}
