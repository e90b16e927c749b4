//! The fast path for JSON payloads: a compact JSON object read into a tree of
//! objects whose other values stay as borrowed text, edited by dot path and
//! written back by copying that text.
//!
//! `serde_json` builds a `Value` for every number and string and formats each
//! again on the way out; for the reference plugins that was most of a call.
//! This path only accepts input that `serde_json` would write back byte for
//! byte: compact (no whitespace), numbers in the form serde_json prints, no
//! escapes other than the ones serde_json writes, no duplicate keys, valid
//! UTF-8. For such input, copying a value's text gives exactly what parsing
//! it into a `Value` and serialising it would. Anything else — and any edit
//! that would have to look inside an array — is [`Unsupported`], and the
//! caller does the work with `serde_json` instead, so both paths always give
//! the same bytes (`tests` check this on a corpus).

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::Value;

/// The fast path cannot take this payload or this edit: use `serde_json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unsupported;

/// Deeper nesting goes the slow way (serde_json's own limit is 128).
const MAX_DEPTH: usize = 64;

/// Objects with more members go the slow way: duplicate keys are checked
/// by comparing each key with the ones before it.
const MAX_MEMBERS: usize = 64;

/// A value in the tree.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node<'a> {
    /// A string, number, literal or array, as compact canonical JSON text.
    Text(Cow<'a, [u8]>),
    /// The same, shared with a value prepared once ([`JsonLiteral`]).
    ///
    /// [`JsonLiteral`]: crate::JsonLiteral
    Shared(Arc<[u8]>),
    /// An object, whose members can be edited by path.
    Object(Object<'a>),
}

/// An object's members in order. Keys are unescaped UTF-8 text, kept as
/// bytes: they are only compared and copied, never need checking again.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Object<'a> {
    members: Vec<(Cow<'a, [u8]>, Node<'a>)>,
}

impl<'a> Node<'a> {
    /// The node for a `Value`: objects become editable, the rest text.
    pub(crate) fn from_value(value: &Value) -> Node<'static> {
        match value {
            Value::Object(map) => Node::Object(Object {
                members: map
                    .iter()
                    .map(|(k, v)| (Cow::Owned(k.clone().into_bytes()), Node::from_value(v)))
                    .collect(),
            }),
            // Serialising a `Value` cannot fail.
            other => Node::Text(Cow::Owned(serde_json::to_vec(other).unwrap_or_default())),
        }
    }

    /// The node for text already known to be canonical JSON that is not an
    /// object (a precomputed value), borrowed.
    pub(crate) fn text(text: &'a [u8]) -> Node<'a> {
        Node::Text(Cow::Borrowed(text))
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Node::Text(text) => out.extend_from_slice(text),
            Node::Shared(text) => out.extend_from_slice(text),
            Node::Object(object) => object.write(out),
        }
    }

    fn is_array(&self) -> bool {
        self.as_text().and_then(<[u8]>::first) == Some(&b'[')
    }

    /// The text of anything but an object.
    fn as_text(&self) -> Option<&[u8]> {
        match self {
            Node::Text(text) => Some(text),
            Node::Shared(text) => Some(text),
            Node::Object(_) => None,
        }
    }
}

impl<'a> Object<'a> {
    /// Read `bytes` if it is a compact JSON object this path can take.
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Object<'a>, Unsupported> {
        // UTF-8 is checked per string, and only for strings that are not
        // ASCII: outside strings the parser accepts nothing but ASCII.
        let mut parser = Parser { bytes, pos: 0 };
        if parser.peek() != Some(b'{') {
            return Err(Unsupported);
        }
        let object = parser.object(0)?;
        if parser.pos == bytes.len() {
            Ok(object)
        } else {
            Err(Unsupported)
        }
    }

    /// Compact JSON text, as `serde_json::to_vec` writes the same value.
    pub(crate) fn to_vec(&self, size_hint: usize) -> Vec<u8> {
        // Room for what edits typically add without a reallocation.
        let mut out = Vec::with_capacity(size_hint + 64);
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (index, (key, value)) in self.members.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            write_key(key, matches!(key, Cow::Borrowed(_)), out);
            out.push(b':');
            value.write(out);
        }
        out.push(b'}');
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.members
            .iter()
            .position(|(k, _)| k.as_ref() == key.as_bytes())
    }

    /// The value at `path`. `Ok(None)` when a segment is missing or the
    /// value there is a scalar; a path through an array is unsupported.
    pub(crate) fn get(&self, path: &str) -> Result<Option<&Node<'a>>, Unsupported> {
        let mut segments = segments(path);
        let mut current = match segments.next() {
            Some(first) => match self.position(first) {
                Some(i) => &self.members[i].1,
                None => return Ok(None),
            },
            None => return Ok(None),
        };
        for segment in segments {
            current = match current {
                Node::Object(object) => match object.position(segment) {
                    Some(i) => &object.members[i].1,
                    None => return Ok(None),
                },
                node if node.is_array() => return Err(Unsupported),
                Node::Text(_) | Node::Shared(_) => return Ok(None),
            };
        }
        Ok(Some(current))
    }

    /// Remove and return the value at `path`, keeping the order of the
    /// other members, as `json::remove_path` does.
    pub(crate) fn remove(&mut self, path: &str) -> Result<Option<Node<'a>>, Unsupported> {
        let last_dot = path.bytes().rposition(|b| b == b'.');
        let (parent, last) = match last_dot.map(|at| (&path[..at], &path[at + 1..])) {
            Some((parent, last)) => match self.get_mut(parent)? {
                Some(Node::Object(object)) => (object, last),
                Some(node) if node.is_array() => return Err(Unsupported),
                Some(Node::Text(_) | Node::Shared(_)) | None => return Ok(None),
            },
            None => (self, path),
        };
        Ok(parent
            .position(last)
            .map(|index| parent.members.remove(index).1))
    }

    fn get_mut(&mut self, path: &str) -> Result<Option<&mut Node<'a>>, Unsupported> {
        let mut segments = segments(path);
        let mut current = match segments.next().and_then(|first| self.position(first)) {
            Some(i) => &mut self.members[i].1,
            None => return Ok(None),
        };
        for segment in segments {
            if current.is_array() {
                return Err(Unsupported);
            }
            current = match current {
                Node::Object(object) => match object.position(segment) {
                    Some(i) => &mut object.members[i].1,
                    None => return Ok(None),
                },
                Node::Text(_) | Node::Shared(_) => return Ok(None),
            };
        }
        Ok(Some(current))
    }

    /// Put `new` at `path`, creating missing objects on the way, as
    /// `json::set_path` does. Paths through arrays or scalars (the latter
    /// an error there) are unsupported, so that error text has one source.
    pub(crate) fn set(&mut self, path: &str, new: Node<'a>) -> Result<(), Unsupported> {
        let mut current = self;
        let mut segments = segments(path).peekable();
        while let Some(segment) = segments.next() {
            let index = match current.position(segment) {
                Some(index) => index,
                None => {
                    current.members.push((
                        Cow::Owned(segment.as_bytes().to_vec()),
                        Node::Object(Object::default()),
                    ));
                    current.members.len() - 1
                }
            };
            let slot = &mut current.members[index].1;
            if segments.peek().is_none() {
                *slot = new;
                return Ok(());
            }
            current = match slot {
                Node::Object(object) => object,
                Node::Text(_) | Node::Shared(_) => return Err(Unsupported),
            };
        }
        // `path` was empty: `check_path` rejects that before edits run.
        Err(Unsupported)
    }
}

/// The segments of a dot path, as `path.split('.')` gives them: paths are a
/// few bytes long, and a plain scan beats setting up a searcher for each.
fn segments(path: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(path);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.bytes().position(|b| b == b'.') {
            Some(at) => {
                rest = Some(&current[at + 1..]);
                Some(&current[..at])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// Write `key` as a JSON string. Keys read from the payload (`parsed`, the
/// borrowed ones) never need escapes: those payloads go the slow way. Keys
/// from a path or a `Value` might.
fn write_key(key: &[u8], parsed: bool, out: &mut Vec<u8>) {
    if !parsed && key.iter().any(|&b| b == b'"' || b == b'\\' || b < 0x20) {
        // Only keys from paths or a `Value` get here, and both are `str`s;
        // writing a `str` into a Vec cannot fail.
        if let Ok(key) = std::str::from_utf8(key) {
            let _ = serde_json::to_writer(&mut *out, key);
        }
    } else {
        out.push(b'"');
        out.extend_from_slice(key);
        out.push(b'"');
    }
}

/// How many bytes at the start of `bytes` a string can hold as they are:
/// printable ASCII other than `"` and `\\`. Sixteen bytes at a time where
/// the component is built with SIMD (`+simd128`, as `plugins/` is), else
/// eight, as strings are most of a payload's bytes.
fn plain_run(bytes: &[u8]) -> usize {
    let run = wide_plain_run(bytes);
    run + bytes[run..]
        .iter()
        .take_while(|&&b| (0x20..0x80).contains(&b) && b != b'"' && b != b'\\')
        .count()
}

/// [`plain_run`] over whole 16-byte blocks: the first special byte in them,
/// or where the last whole block ends.
#[cfg(all(target_family = "wasm", target_feature = "simd128"))]
#[allow(unsafe_code)]
fn wide_plain_run(bytes: &[u8]) -> usize {
    use core::arch::wasm32::{
        i8x16_bitmask, i8x16_eq, i8x16_lt, i8x16_splat, v128, v128_load, v128_or,
    };
    let mut run = 0;
    while run + 16 <= bytes.len() {
        // SAFETY: the 16 bytes at `run` are in bounds; `v128.load` takes
        // any alignment.
        let block = unsafe { v128_load(bytes.as_ptr().add(run).cast::<v128>()) };
        // Signed, bytes below 0x20 and from 0x80 up are both below 0x20.
        let special = v128_or(
            i8x16_lt(block, i8x16_splat(0x20)),
            v128_or(
                i8x16_eq(block, i8x16_splat(b'"' as i8)),
                i8x16_eq(block, i8x16_splat(b'\\' as i8)),
            ),
        );
        let mask = i8x16_bitmask(special);
        if mask != 0 {
            return run + mask.trailing_zeros() as usize;
        }
        run += 16;
    }
    run
}

/// [`plain_run`] over whole 8-byte words, without SIMD.
#[cfg(not(all(target_family = "wasm", target_feature = "simd128")))]
fn wide_plain_run(bytes: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut run = 0;
    for chunk in bytes.chunks_exact(8) {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        // A byte's high bit is set in `special` if it is `"`, `\\`, below
        // 0x20 or non-ASCII (the classic "has zero byte" test, per byte).
        let quote = x ^ (ONES * u64::from(b'"'));
        let backslash = x ^ (ONES * u64::from(b'\\'));
        let special = (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | x.wrapping_sub(ONES * 0x20)
            | x;
        let special = special & HIGH;
        if special != 0 {
            return run + (special.trailing_zeros() / 8) as usize;
        }
        run += 8;
    }
    run
}

/// A number's printed text, on the stack: the longest f64 serde_json prints
/// is 24 bytes.
#[derive(Default)]
struct Printed {
    buf: [u8; 32],
    len: usize,
}

impl Printed {
    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::io::Write for Printed {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let end = self.len + bytes.len();
        let slot = self
            .buf
            .get_mut(self.len..end)
            .ok_or(std::io::ErrorKind::WriteZero)?;
        slot.copy_from_slice(bytes);
        self.len = end;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether serde_json prints the float `text` back as it is, decided
/// without parsing it, for the common case: no exponent, at least 1 in
/// magnitude (no leading zero) and at most 15 significant digits, the last
/// of them a non-zero fraction digit. Any two such decimals are different
/// doubles (an f64 keeps 15 significant digits), so the shortest decimal
/// that reads back as this double is this one; and serde_json (zmij) prints
/// numbers below 1e16 in plain notation, exactly as written here. Other
/// floats return false and are checked by printing them.
fn plain_float_prints_as_written(text: &[u8], int_digits: usize, frac_digits: usize) -> bool {
    let digits = if text.first() == Some(&b'-') {
        &text[1..]
    } else {
        text
    };
    // Nothing but the digits and the point: no exponent.
    digits.len() == int_digits + 1 + frac_digits
        && frac_digits > 0
        && int_digits + frac_digits <= 15
        && digits.first() != Some(&b'0')
        && digits.last() != Some(&b'0')
}

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn expect(&mut self, byte: u8) -> Result<(), Unsupported> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(Unsupported)
        }
    }

    /// An object starting at `pos`.
    fn object(&mut self, depth: usize) -> Result<Object<'a>, Unsupported> {
        if depth > MAX_DEPTH {
            return Err(Unsupported);
        }
        self.expect(b'{')?;
        let mut members: Vec<(Cow<'a, [u8]>, Node<'a>)> = Vec::with_capacity(8);
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Object { members });
        }
        loop {
            let key = self.key()?;
            if members.len() >= MAX_MEMBERS || members.iter().any(|(k, _)| k.as_ref() == key) {
                return Err(Unsupported);
            }
            self.expect(b':')?;
            let value = self.value(depth + 1)?;
            members.push((Cow::Borrowed(key), value));
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Object { members });
                }
                _ => return Err(Unsupported),
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Node<'a>, Unsupported> {
        let start = self.pos;
        match self.peek() {
            Some(b'{') => return self.object(depth).map(Node::Object),
            Some(b'[') => self.array(depth)?,
            Some(b'"') => {
                self.string()?;
            }
            Some(b't') => self.literal(b"true")?,
            Some(b'f') => self.literal(b"false")?,
            Some(b'n') => self.literal(b"null")?,
            Some(b'-' | b'0'..=b'9') => self.number()?,
            _ => return Err(Unsupported),
        }
        Ok(Node::text(&self.bytes[start..self.pos]))
    }

    /// Check an array's elements (objects in it too: no duplicate keys)
    /// and step over it; it stays text.
    fn array(&mut self, depth: usize) -> Result<(), Unsupported> {
        if depth > MAX_DEPTH {
            return Err(Unsupported);
        }
        self.expect(b'[')?;
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.value(depth + 1)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(Unsupported),
            }
        }
    }

    /// A key: a string without escapes, so its text is its value.
    fn key(&mut self) -> Result<&'a [u8], Unsupported> {
        let start = self.pos + 1;
        if self.string()? {
            return Err(Unsupported);
        }
        Ok(&self.bytes[start..self.pos - 1])
    }

    /// Step over a string; whether it has escapes. Only the escapes
    /// serde_json writes for the same text are accepted (`\/` and `\u`
    /// would come back different).
    fn string(&mut self) -> Result<bool, Unsupported> {
        self.expect(b'"')?;
        let start = self.pos;
        let mut escaped = false;
        let mut ascii = true;
        loop {
            self.pos += plain_run(&self.bytes[self.pos..]);
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    match self.bytes.get(self.pos + 1) {
                        Some(b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't') => {}
                        _ => return Err(Unsupported),
                    }
                    escaped = true;
                    self.pos += 2;
                }
                Some(0x80..=0xff) => {
                    ascii = false;
                    self.pos += 1;
                }
                // Control characters must be escaped in JSON.
                Some(_) | None => return Err(Unsupported),
            }
        }
        if !ascii {
            std::str::from_utf8(&self.bytes[start..self.pos - 1]).map_err(|_| Unsupported)?;
        }
        Ok(escaped)
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Unsupported> {
        if self.bytes[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(Unsupported)
        }
    }

    /// A number in the form serde_json prints it: integers that fit its
    /// integer types without `-0`; other numbers only if formatting the
    /// parsed value gives the same text.
    fn number(&mut self) -> Result<(), Unsupported> {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let digits_start = self.pos;
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(Unsupported),
        }
        let int_digits = self.pos - digits_start;
        let mut integer = true;
        let mut frac_digits = 0;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            let frac_start = self.pos;
            self.at_least_one_digit()?;
            frac_digits = self.pos - frac_start;
            integer = false;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.at_least_one_digit()?;
            integer = false;
        }
        let text = &self.bytes[start..self.pos];
        if integer {
            // u64 holds every 19-digit number, i64 every 18-digit one.
            let fits = if negative {
                int_digits <= 18 && text != b"-0"
            } else {
                int_digits <= 19
            };
            return if fits { Ok(()) } else { Err(Unsupported) };
        }
        if plain_float_prints_as_written(text, int_digits, frac_digits) {
            return Ok(());
        }
        // Parse and print it as serde_json does (into a `Value`, whose
        // floats go through these same two steps) and compare.
        let value: f64 = serde_json::from_slice(text).map_err(|_| Unsupported)?;
        let mut printed = Printed::default();
        match serde_json::to_writer(&mut printed, &value) {
            Ok(()) if printed.as_bytes() == text => Ok(()),
            _ => Err(Unsupported),
        }
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    fn at_least_one_digit(&mut self) -> Result<(), Unsupported> {
        let before = self.pos;
        self.digits();
        if self.pos > before {
            Ok(())
        } else {
            Err(Unsupported)
        }
    }
}

/// A scalar read from a payload, for comparisons: strings unescaped,
/// numbers as the text serde_json prints for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scalar<'a> {
    /// A string's value.
    String(Cow<'a, str>),
    /// A number, as serde_json prints it (`42`, `1.5`, `-3`).
    Number(Cow<'a, str>),
    /// `true` or `false`.
    Bool(bool),
    /// `null`.
    Null,
    /// An array or an object.
    Composite,
}

impl<'a> Scalar<'a> {
    /// The same scalar, owning its text.
    pub fn into_owned(self) -> Scalar<'static> {
        match self {
            Scalar::String(s) => Scalar::String(Cow::Owned(s.into_owned())),
            Scalar::Number(n) => Scalar::Number(Cow::Owned(n.into_owned())),
            Scalar::Bool(b) => Scalar::Bool(b),
            Scalar::Null => Scalar::Null,
            Scalar::Composite => Scalar::Composite,
        }
    }

    /// The scalar a `Value` holds.
    pub fn of(value: &'a Value) -> Scalar<'a> {
        match value {
            Value::String(s) => Scalar::String(Cow::Borrowed(s)),
            Value::Number(n) => Scalar::Number(Cow::Owned(n.to_string())),
            Value::Bool(b) => Scalar::Bool(*b),
            Value::Null => Scalar::Null,
            Value::Array(_) | Value::Object(_) => Scalar::Composite,
        }
    }

    /// The scalar a node holds (its text is canonical).
    pub(crate) fn of_node(node: &'a Node<'_>) -> Scalar<'a> {
        let Some(text) = node.as_text() else {
            return Scalar::Composite;
        };
        match text.first() {
            Some(b'"') => {
                let inner = &text[1..text.len() - 1];
                if !inner.contains(&b'\\')
                    && let Ok(s) = std::str::from_utf8(inner)
                {
                    return Scalar::String(Cow::Borrowed(s));
                }
                match serde_json::from_slice::<String>(text) {
                    Ok(s) => Scalar::String(Cow::Owned(s)),
                    Err(_) => Scalar::Composite,
                }
            }
            Some(b't') => Scalar::Bool(true),
            Some(b'f') => Scalar::Bool(false),
            Some(b'n') => Scalar::Null,
            Some(b'[') | None => Scalar::Composite,
            Some(_) => match std::str::from_utf8(text) {
                Ok(s) => Scalar::Number(Cow::Borrowed(s)),
                Err(_) => Scalar::Composite,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::json::{get_path, remove_path, set_path};

    /// Inputs both paths must agree on: compact ones the fast path takes
    /// and every kind of input it must refuse.
    const CORPUS: &[&str] = &[
        r#"{"type":"order","id":"o-1042","user":"ann","debug":true,"total":129.5,"pad":"xx"}"#,
        r#"{}"#,
        r#"{"a":{"b":{"c":1}},"d":[1,{"e":2}],"f":null,"g":false}"#,
        r#"{"user":{"name":"x","tags":["a","b"]},"n":-12,"z":0,"big":18446744073709551615}"#,
        r#"{"q":"say \"hi\"\\ \n\t","r":"é ü 🎉"}"#,
        r#"{"f":1.0,"g":0.1,"h":1e-7,"i":1.5e+300,"j":-0.0}"#,
        r#"{"f":1e2}"#,
        r#"{"f":1E+2}"#,
        r#"{"n":-0}"#,
        r#"{"n":123456789012345678901234}"#,
        r#"{"n":-1234567890123456789}"#,
        r#"{"s":"\/"}"#,
        r#"{"s":"\u00e9"}"#,
        r#"{"\u0041":1}"#,
        r#"{"a":1,"a":2}"#,
        r#"{"a":[{"b":1,"b":2}]}"#,
        r#"{ "a": 1 }"#,
        r#"{"a":1} "#,
        r#"{"a":01}"#,
        r#"{"a":1.}"#,
        r#"{"a":tru}"#,
        r#"{"a":"unterminated}"#,
        r#"[1,2]"#,
        r#""text""#,
        r#"not json"#,
        r#"{"items":[{"id":1},{"id":2}],"user":"bob"}"#,
        r#"{"user":"text","debug":{"x":1}}"#,
        r#"{"customer":{"id":3},"user":{"id":4}}"#,
    ];

    /// Edit sequences exercising rename, remove and set, including paths
    /// into arrays, through scalars and onto missing parents.
    fn scripts() -> Vec<Vec<Op>> {
        use Op::*;
        vec![
            vec![
                Rename("user", "customer"),
                Remove("debug"),
                Set("schema", json!("2")),
            ],
            vec![Set("tenant_id", json!("acme"))],
            vec![Set("meta.source.id", json!(7)), Remove("a.b.c")],
            vec![Rename("user.name", "customer"), Rename("a.b", "x.y.z")],
            vec![Set("items.1.id", json!(20)), Remove("d.1")],
            vec![Set("user.tags", json!({"v": [1, 2], "w": null}))],
            vec![Set("user.deep.er", json!(true))],
            vec![Set("key\"with\\escapes", json!("v"))],
            vec![Remove("missing.deeper"), Rename("missing", "other")],
            vec![Set("f", json!(1.25)), Set("q", json!("é\u{1}"))],
        ]
    }

    #[derive(Debug, Clone)]
    enum Op {
        Rename(&'static str, &'static str),
        Remove(&'static str),
        Set(&'static str, Value),
    }

    fn slow(input: &str, ops: &[Op]) -> Result<Vec<u8>, String> {
        let mut value: Value = serde_json::from_str(input).map_err(|e| e.to_string())?;
        if !value.is_object() {
            return Err("not an object".into());
        }
        for op in ops {
            match op {
                Op::Rename(from, to) => {
                    if let Some(v) = remove_path(&mut value, from) {
                        set_path(&mut value, to, v)?;
                    }
                }
                Op::Remove(path) => {
                    remove_path(&mut value, path);
                }
                Op::Set(path, new) => set_path(&mut value, path, new.clone())?,
            }
        }
        Ok(serde_json::to_vec(&value).unwrap())
    }

    fn fast(input: &str, ops: &[Op]) -> Result<Vec<u8>, Unsupported> {
        let mut object = Object::parse(input.as_bytes())?;
        for op in ops {
            match op {
                Op::Rename(from, to) => {
                    if let Some(node) = object.remove(from)? {
                        object.set(to, node)?;
                    }
                }
                Op::Remove(path) => {
                    object.remove(path)?;
                }
                Op::Set(path, new) => object.set(path, Node::from_value(new))?,
            }
        }
        Ok(object.to_vec(input.len()))
    }

    #[test]
    fn fast_and_slow_paths_agree_byte_for_byte() {
        let mut fast_runs = 0;
        for input in CORPUS {
            for ops in scripts() {
                if let Ok(got) = fast(input, &ops) {
                    fast_runs += 1;
                    let want = slow(input, &ops).unwrap_or_else(|e| {
                        panic!("{input} {ops:?}: fast path accepted what fails: {e}")
                    });
                    assert_eq!(
                        String::from_utf8_lossy(&got),
                        String::from_utf8_lossy(&want),
                        "{input} {ops:?}"
                    );
                }
            }
        }
        // Most of the corpus and scripts must actually take the fast path.
        assert!(fast_runs > 60, "only {fast_runs} fast runs");
    }

    #[test]
    fn parse_accepts_exactly_what_serde_json_writes_back_unchanged() {
        for input in CORPUS {
            let accepted = Object::parse(input.as_bytes()).is_ok();
            let round_trips = serde_json::from_str::<Value>(input)
                .ok()
                .filter(Value::is_object)
                .and_then(|v| serde_json::to_string(&v).ok())
                .is_some_and(|out| out == *input);
            if accepted {
                assert!(
                    round_trips,
                    "accepted {input}, which changes on a round trip"
                );
            }
        }
        for refused in [
            r#"{"a":1,"a":2}"#,
            r#"{ "a": 1 }"#,
            r#"{"f":1e2}"#,
            r#"{"f":1.5e300}"#,
            r#"{"n":-0}"#,
            r#"{"s":"\/"}"#,
            r#"{"a":[{"b":1,"b":2}]}"#,
        ] {
            assert_eq!(Object::parse(refused.as_bytes()).err(), Some(Unsupported));
        }
        for accepted in [CORPUS[0], CORPUS[2], CORPUS[4], CORPUS[5]] {
            assert!(Object::parse(accepted.as_bytes()).is_ok(), "{accepted}");
        }
    }

    #[test]
    fn segments_split_as_str_split_does() {
        for path in ["a", "a.b", "a.b.c", "", ".", "a..b", ".a", "a.", "é.ü"] {
            assert_eq!(
                segments(path).collect::<Vec<_>>(),
                path.split('.').collect::<Vec<_>>(),
                "{path:?}"
            );
        }
    }

    #[test]
    fn floats_taken_without_printing_them_print_back_the_same() {
        // Every float the shortcut takes, from a spread of digit patterns,
        // signs and magnitudes, is one serde_json prints back unchanged.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut taken = 0;
        for _ in 0..200_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let int_digits = 1 + (seed % 15) as usize;
            let frac_digits = 1 + ((seed >> 8) % 16) as usize;
            let digits = format!("{}{:019}", 1 + seed % 9, (seed >> 4) % 10u64.pow(19));
            let mut text = String::new();
            if seed & 1 == 1 {
                text.push('-');
            }
            text.push_str(&digits[..int_digits]);
            text.push('.');
            text.push_str(&digits[int_digits..(int_digits + frac_digits).min(20)]);
            let frac_digits = text.len() - text.find('.').unwrap() - 1;
            if !plain_float_prints_as_written(text.as_bytes(), int_digits, frac_digits) {
                continue;
            }
            taken += 1;
            let value: f64 = text.parse().unwrap();
            assert_eq!(serde_json::to_string(&value).unwrap(), text);
        }
        assert!(taken > 10_000, "only {taken} taken");
        for (text, int_digits, frac_digits) in [
            ("129.5", 3, 1),
            ("-1.25", 1, 2),
            ("1.50", 1, 2),
            ("0.5", 1, 1),
            ("12345678.12345678", 8, 8),
        ] {
            let prints: f64 = text.parse().unwrap();
            let same = serde_json::to_string(&prints).unwrap() == text;
            if plain_float_prints_as_written(text.as_bytes(), int_digits, frac_digits) {
                assert!(same, "{text}");
            }
        }
        assert!(plain_float_prints_as_written(b"129.5", 3, 1));
        assert!(!plain_float_prints_as_written(b"1.50", 1, 2));
        assert!(!plain_float_prints_as_written(b"0.5", 1, 1));
    }

    #[test]
    fn scalars_read_the_same_from_both_paths() {
        let doc = r#"{"s":"a\"b","t":"plain","n":-12.5,"b":false,"z":null,"l":[1],"o":{"k":1}}"#;
        let value: Value = serde_json::from_str(doc).unwrap();
        let object = Object::parse(doc.as_bytes()).unwrap();
        for key in ["s", "t", "n", "b", "z", "l", "o"] {
            let fast = Scalar::of_node(object.get(key).unwrap().unwrap());
            let slow = Scalar::of(get_path(&value, key).unwrap());
            assert_eq!(fast, slow, "{key}");
        }
        assert_eq!(object.get("l.0"), Err(Unsupported));
        assert!(object.get("t.x").unwrap().is_none());
        assert!(object.get("o.k").unwrap().is_some());
    }
}
