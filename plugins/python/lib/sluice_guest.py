"""Helpers for Sluice handlers written in Python: the Python counterpart of
the Rust `guest-sdk`, shared by the reference plugins in plugins/python/.

It owns what a handler needs beyond the generated `wit_world` bindings:

- `export_handler`: the `WitWorld` class for a handler class, the
  counterpart of the Rust SDK's `export_handler!` (`init` builds the
  handler from a `Config`, `handle` calls it, a `GuestError` from the
  constructor refuses the config);
- `Config`: the stage configuration (`get`, `with_prefix`,
  `reject_unknown`), with the Rust SDK's error texts;
- `parse_json` / `dump_json`: JSON with the same rules as the Rust
  plugins' serde_json (key order kept, integers and floats kept apart,
  the same number formatting, nesting limit and refusals), so a Python
  plugin writes the same bytes as its Rust twin;
- `check_path`, `get_path`, `set_path`, `remove_path`: dot paths
  (`user.address.city`) into parsed JSON;
- `strip_ws`, `has_ws`: whitespace as Rust's `char::is_whitespace` sees it.

Only `export_handler` imports the bindings (when it is called), so the
rest runs in plain CPython without them. Errors meant for a verdict or an `init` refusal are raised as
`GuestError` with the text to use.
"""

import json
import re

__all__ = [
    "export_handler",
    "NOT_INITIALISED",
    "Config",
    "GuestError",
    "parse_json",
    "dump_json",
    "copy_json",
    "number_text",
    "parse_u64",
    "check_path",
    "get_path",
    "set_path",
    "remove_path",
    "strip_ws",
    "has_ws",
    "MISSING",
]


class GuestError(Exception):
    """A failure whose text is meant for a dead-letter reason or an `init`
    refusal."""


class _Missing:
    """The absence of a value, as opposed to JSON `null` (`None`)."""

    def __repr__(self):
        return "MISSING"


MISSING = _Missing()

# --- exports -------------------------------------------------------------------

# The reason `handle` dead-letters with before a successful `init`, as the
# Rust SDK words it. The host never does this, but a stray call must not
# trap.
NOT_INITIALISED = "handler was not initialised"


def export_handler(handler_class):
    """The `WitWorld` class componentize-py looks for, serving
    `handler_class`:

        class Greet:
            def __init__(self, config):      # a `Config`
                config.reject_unknown(["greeting"])
                ...
            def handle(self, origin, msg):   # -> a `types.Verdict_*`
                ...

        WitWorld = export_handler(Greet)

    `init` builds `handler_class(Config(config))`; a `GuestError` it raises
    refuses the config with its text, and the previous handler (if any)
    stays. componentize-py makes a new `WitWorld` for every call, so the
    handler lives here, for the life of the instance, not on `self`.
    `handle` before a successful `init` dead-letters with
    `NOT_INITIALISED`."""
    import wit_world
    from componentize_py_types import Err
    from wit_world.imports import types

    current = []

    class WitWorld(wit_world.WitWorld):
        def init(self, config):
            try:
                handler = handler_class(Config(config))
            except GuestError as err:
                raise Err(str(err)) from None
            current[:] = [handler]

        def handle(self, origin, msg):
            if not current:
                return types.Verdict_DeadLetter(NOT_INITIALISED)
            return current[0].handle(origin, msg)

    return WitWorld

# --- whitespace ---------------------------------------------------------------

# Unicode White_Space, which Rust's `char::is_whitespace` and `str::trim`
# use. Python's `str.isspace` and `str.strip` also count U+001C..U+001F,
# so the plugins use this set to accept and refuse the same config.
_WS = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
_HAS_WS = re.compile("[" + re.escape(_WS) + "]")


def strip_ws(text):
    """`text` without leading and trailing whitespace (Rust's `str::trim`)."""
    return text.strip(_WS)


def has_ws(text):
    """Whether `text` contains any whitespace character."""
    return _HAS_WS.search(text) is not None


# --- configuration -------------------------------------------------------------


class Config:
    """The configuration of one stage: flat key/value strings in host order."""

    def __init__(self, entries):
        self.entries = [(str(k), str(v)) for k, v in entries]

    def get(self, key, default=None):
        """The value of `key`; when it repeats, the last one wins."""
        for k, v in reversed(self.entries):
            if k == key:
                return v
        return default

    def with_prefix(self, prefix):
        """`(rest, value)` for every key starting with `prefix`, in order."""
        return [(k[len(prefix) :], v) for k, v in self.entries if k.startswith(prefix)]

    def reject_unknown(self, accepted):
        """Refuse the first key `accepted` does not allow. An entry is an
        exact key or a prefix pattern ending in `.*`, which needs something
        after the prefix."""
        for key, _ in self.entries:
            if not any(_accepts(pattern, key) for pattern in accepted):
                message = f'unknown config key "{key}"'
                if accepted:
                    message += "; accepted keys: " + ", ".join(accepted)
                else:
                    message += "; this plugin takes no configuration"
                raise GuestError(message)


def _accepts(pattern, key):
    if pattern.endswith("*"):
        prefix = pattern[:-1]
        return len(key) > len(prefix) and key.startswith(prefix)
    return key == pattern


# --- JSON ------------------------------------------------------------------------

# serde_json reads integers that fit in i64 or u64 as integers and any other
# number as an f64; it refuses numbers beyond f64 and nesting of 128 levels.
_I64_MIN = -(1 << 63)
_U64_MAX = (1 << 64) - 1
_MAX_DEPTH = 128

def _parse_float(text):
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("number out of range")
    return value


def _parse_int(text):
    if text == "-0":
        # serde_json reads `-0` as the float -0.0 (written back as `-0.0`).
        return -0.0
    value = int(text)
    if _I64_MIN <= value <= _U64_MAX:
        return value
    return _parse_float(text)


def _parse_constant(name):
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(
    parse_float=_parse_float, parse_int=_parse_int, parse_constant=_parse_constant
)
# A lone surrogate escape (`"\ud800"`) is invalid for serde_json; Python
# accepts it. Only payloads that contain such an escape are searched.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


def parse_json(data):
    """Parse `data` (bytes or str) as serde_json would, or raise
    `GuestError` with the parser's reason. Objects are dicts (insertion
    ordered), arrays lists, integers ints, other numbers floats."""
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    except UnicodeDecodeError as err:
        raise GuestError(f"invalid UTF-8: {err.reason} at byte {err.start}") from None
    if text.count("[") + text.count("{") >= _MAX_DEPTH and _too_deep(text):
        raise GuestError("recursion limit exceeded")
    try:
        value = _DECODER.decode(text)
    except (ValueError, RecursionError) as err:
        raise GuestError(str(err)) from None
    if _SURROGATE_ESCAPE.search(text) and _has_surrogate(value):
        raise GuestError("lone surrogate in hex escape")
    return value


def _too_deep(text):
    """Whether brackets outside strings nest `_MAX_DEPTH` deep. Checked
    before parsing, so a deep payload never reaches the recursive parser."""
    depth = 0
    for match in _BRACKETS.finditer(_STRINGS.sub("", text)):
        if match.group() in "[{":
            depth += 1
            if depth >= _MAX_DEPTH:
                return True
        else:
            depth -= 1
    return False


def _has_surrogate(value):
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def number_text(value):
    """A number as serde_json writes it: integers in full, floats in the
    shortest form that reads back the same, as `1.0`, `0.00001`, `1e-6`
    or `1.5e+16` (decimal from 1e-5 up to 1e16). Python's `repr` agrees
    except below 1e-4, where it writes `1e-05`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = repr(value)
    if "e-" not in text:
        return text
    mantissa, exponent = text.split("e")
    exponent = int(exponent)
    if exponent == -5:
        sign = "-" if mantissa.startswith("-") else ""
        digits = mantissa.lstrip("-").replace(".", "")
        return f"{sign}0.0000{digits}"
    return f"{mantissa}e{exponent}"


def dump_json(value):
    """`value` as compact JSON bytes, written as serde_json would. The C
    encoder writes everything but small floats (`1e-05`) the same way, so
    its output is kept unless it may hold one; then a pure-Python writer
    (slower, exact) writes it again. A string holding such text only costs
    the second pass."""
    text = _ENCODER.encode(value)
    if _SMALL_FLOAT.search(text) is None:
        return text.encode("utf-8")
    parts = []
    _write(value, parts)
    return "".join(parts).encode("utf-8")


# ensure_ascii=False: serde_json writes non-ASCII characters as they are and
# escapes only `"`, `\` and control characters, as this encoder does.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_encode_string = json.encoder.encode_basestring
_SMALL_FLOAT = re.compile(r"[0-9]e-")


def _write(value, parts):
    if value is None:
        parts.append("null")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif isinstance(value, str):
        parts.append(_encode_string(value))
    elif isinstance(value, (int, float)):
        parts.append(number_text(value))
    elif isinstance(value, dict):
        parts.append("{")
        first = True
        for key, item in value.items():
            if not first:
                parts.append(",")
            first = False
            parts.append(_encode_string(key))
            parts.append(":")
            _write(item, parts)
        parts.append("}")
    else:
        parts.append("[")
        for index, item in enumerate(value):
            if index:
                parts.append(",")
            _write(item, parts)
        parts.append("]")


def copy_json(value):
    """A deep copy of a parsed JSON value (scalars are shared: immutable)."""
    if isinstance(value, dict):
        return {key: copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [copy_json(item) for item in value]
    return value


# --- dot paths ---------------------------------------------------------------------


def check_path(path):
    """Raise `GuestError` unless `path` is usable: not empty, no empty
    segments."""
    if not path:
        raise GuestError("empty path")
    if "" in path.split("."):
        raise GuestError(f'invalid path "{path}": empty segment')


def parse_u64(text):
    """`text` as a u64 as Rust's `str::parse` reads it, but plain ASCII
    digits only (no sign); else None."""
    if not text or not text.isascii() or not text.isdigit():
        return None
    # Leading zeros are allowed; past 20 digits it cannot fit (and `int`
    # refuses very long digit strings outright).
    if len(text.lstrip("0")) > 20:
        return None
    value = int(text)
    return value if value <= _U64_MAX else None


def _index(segment, length):
    """`segment` as an index into an array of `length`, or None."""
    index = parse_u64(segment)
    return index if index is not None and index < length else None


def get_path(value, path):
    """The value at `path`, or `MISSING`. An empty path is `value`."""
    if not path:
        return value
    current = value
    for segment in path.split("."):
        if isinstance(current, dict):
            current = current.get(segment, MISSING)
            if current is MISSING:
                return MISSING
        elif isinstance(current, list):
            index = _index(segment, len(current))
            if index is None:
                return MISSING
            current = current[index]
        else:
            return MISSING
    return current


def set_path(value, path, new):
    """Put `new` at `path`, creating missing intermediate objects and
    replacing what is at the end. Raises `GuestError`, changing nothing,
    when an intermediate value is neither an object nor an array holding
    that index."""
    check_path(path)
    segments = path.split(".")
    current = value
    for depth, segment in enumerate(segments[:-1]):
        if isinstance(current, dict):
            if segment not in current:
                current[segment] = {}
            current = current[segment]
        elif isinstance(current, list):
            index = _index(segment, len(current))
            if index is None:
                raise GuestError(_cannot_set(path, segments[:depth], _no_index(segment)))
            current = current[index]
        else:
            raise GuestError(_cannot_set(path, segments[:depth], _not_an_object(current)))
    last = segments[-1]
    if isinstance(current, dict):
        current[last] = new
    elif isinstance(current, list):
        index = _index(last, len(current))
        if index is None:
            raise GuestError(_cannot_set(path, segments[:-1], _no_index(last)))
        current[index] = new
    else:
        raise GuestError(_cannot_set(path, segments[:-1], _not_an_object(current)))


def remove_path(value, path):
    """Remove and return the value at `path`, or `MISSING` when there is
    none. Object members keep their order; later array elements move
    down."""
    try:
        check_path(path)
    except GuestError:
        return MISSING
    parent_path, _, last = path.rpartition(".")
    parent = get_path(value, parent_path) if parent_path else value
    if isinstance(parent, dict):
        return parent.pop(last, MISSING)
    if isinstance(parent, list):
        index = _index(last, len(parent))
        return MISSING if index is None else parent.pop(index)
    return MISSING


def _cannot_set(path, walked, what):
    if walked:
        at = ".".join(walked)
        return f'cannot set "{path}": "{at}" is {what}'
    return f'cannot set "{path}": the value is {what}'


def _no_index(segment):
    return f'an array without an element "{segment}"'


def _not_an_object(value):
    if value is None:
        kind = "null"
    elif isinstance(value, bool):
        kind = "a boolean"
    elif isinstance(value, (int, float)):
        kind = "a number"
    elif isinstance(value, str):
        kind = "a string"
    elif isinstance(value, list):
        kind = "an array"
    else:
        kind = "an object"
    return f"{kind}, not an object"
