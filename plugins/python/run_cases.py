"""Run a plugin's golden cases against its Python version in plain CPython.

    python3 plugins/python/run_cases.py PLUGIN_DIR CASES_JSON

The host runs the same files against the built component (tests/plugins.rs
and tests/conformance.rs); this runner gives the answer in a second instead
of after a component build, as the Rust plugins' native unit tests do.
`scripts/build-plugins --check` runs it for every Python plugin.

The format is specified in docs/plugins.md ("The golden-case format"), and
this runner implements it as the host's (runtime/src/cases.rs) and the
Rust and JavaScript ones do: a file with an unknown key, two payload keys
in one message or another shape error is refused whole, naming the case
and the key, before any case runs.

It generates the `wit_world` bindings with componentize-py (on PATH) into a
temporary folder, imports PLUGIN_DIR/app.py beside plugins/python/lib, and
for each case calls `init` then `handle` on a fresh `WitWorld`, as the host
does on a fresh instance (the plugin module is loaded afresh for every
case, so module-level state does not leak between cases). Exit status 1
lists every failing case, or the file's error.
"""

import base64
import binascii
import importlib
import os
import subprocess
import sys
import tempfile

# No __pycache__ beside the sources: componentize-py would bundle it.
sys.dont_write_bytecode = True

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(HERE, "lib"))

from sluice_guest import GuestError, dump_json, parse_json  # noqa: E402

CASE_KEYS = ["name", "config", "origin", "input", "expect"]
ORIGIN_KEYS = ["tenant", "stream", "stream_seq", "delivered", "published_ms"]
MESSAGE_KEYS = ["subject", "headers", "payload", "payload_json", "payload_base64"]
PAYLOAD_KEYS = ["payload", "payload_json", "payload_base64"]
VERDICTS = ["next", "publish", "ack", "dead-letter", "retry"]
EXTRA_KEYS = {
    "next": ["message"],
    "publish": ["messages"],
    "ack": [],
    "dead-letter": ["reason_contains"],
    "retry": ["delay_ms"],
}
U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1


class CasesError(Exception):
    """The file is not a valid cases file; the text names case and key."""


class CaseFailed(Exception):
    pass


# --- reading the format -------------------------------------------------------


def _at(place, what):
    return f"{place}: {what}" if place else what


def _object(value, place, what):
    if not isinstance(value, dict):
        raise CasesError(_at(place, f"{what} is not an object"))
    return value


def _known_keys(obj, allowed, place):
    for key in obj:
        if key not in allowed:
            raise CasesError(
                _at(place, f'unknown key "{key}" (expected one of: {", ".join(allowed)})')
            )


def _required(obj, key, place):
    if key not in obj:
        raise CasesError(_at(place, f'missing key "{key}"'))
    return obj[key]


def _string(value, key, place):
    if not isinstance(value, str):
        raise CasesError(_at(place, f'"{key}" is not a string'))
    return value


def _integer(value, key, maximum, place):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise CasesError(_at(place, f'"{key}" is not an integer from 0 to {maximum}'))
    return value


def decode_base64(text):
    """Padded standard base64 in its one canonical spelling, else None."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if base64.b64encode(data).decode("ascii") == text else None


def _message_parts(obj, place):
    _known_keys(obj, MESSAGE_KEYS, place)
    subject = _string(_required(obj, "subject", place), "subject", place)
    raw = obj.get("headers", [])
    ok = isinstance(raw, list) and all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in raw
    )
    if not ok:
        raise CasesError(_at(place, '"headers" is not a list of [name, value] strings'))
    headers = [(name, value) for name, value in raw]
    payloads = [key for key in obj if key in PAYLOAD_KEYS]
    if len(payloads) > 1:
        raise CasesError(
            _at(place, 'more than one of "payload", "payload_json", "payload_base64"')
        )
    payload = (payloads[0], obj[payloads[0]]) if payloads else None
    return subject, headers, payload


def _payload_bytes(key, value, place):
    text = _string(value, key, place)
    if key == "payload":
        return text.encode("utf-8")
    data = decode_base64(text)
    if data is None:
        raise CasesError(_at(place, '"payload_base64" is not padded, canonical base64'))
    return data


def _message(obj, place):
    """An input message as `(subject, headers, payload bytes)`."""
    subject, headers, payload = _message_parts(obj, place)
    if payload is None:
        data = b""
    elif payload[0] == "payload_json":
        data = dump_json(payload[1])
    else:
        data = _payload_bytes(payload[0], payload[1], place)
    return subject, headers, data


def _message_want(value, place):
    """An expected message: `(subject, headers, ("bytes" | "json", want))`."""
    subject, headers, payload = _message_parts(_object(value, place, "the message"), place)
    if payload is None:
        want = ("bytes", b"")
    elif payload[0] == "payload_json":
        want = ("json", payload[1])
    else:
        want = ("bytes", _payload_bytes(payload[0], payload[1], place))
    return subject, headers, want


def _origin(value):
    origin = {"tenant": "acme", "stream": "IN", "stream_seq": 1, "delivered": 1, "published_ms": 0}
    if value is None:
        return origin
    _known_keys(_object(value, "", '"origin"'), ORIGIN_KEYS, "origin")
    for key in ("tenant", "stream"):
        if key in value:
            origin[key] = _string(value[key], key, "origin")
    for key, maximum in (("stream_seq", U64_MAX), ("delivered", U32_MAX), ("published_ms", U64_MAX)):
        if key in value:
            origin[key] = _integer(value[key], key, maximum, "origin")
    return origin


def _expect(value):
    obj = _object(value, "", '"expect"')
    kind = _string(_required(obj, "verdict", "expect"), "verdict", "expect")
    if kind not in VERDICTS:
        raise CasesError(f'expect: "verdict" is "{kind}", not one of {", ".join(VERDICTS)}')
    _known_keys(obj, ["verdict"] + EXTRA_KEYS[kind], "expect")
    if kind == "next":
        return kind, _message_want(_required(obj, "message", "expect"), "expect.message")
    if kind == "publish":
        messages = _required(obj, "messages", "expect")
        if not isinstance(messages, list):
            raise CasesError('expect: "messages" is not an array')
        return kind, [_message_want(m, f"expect.messages[{i}]") for i, m in enumerate(messages)]
    if kind == "dead-letter":
        reason = obj.get("reason_contains")
        return kind, None if reason is None else _string(reason, "reason_contains", "expect")
    if kind == "retry":
        delay = obj.get("delay_ms")
        return kind, None if delay is None else _integer(delay, "delay_ms", U32_MAX, "expect")
    return kind, None


def _case_body(obj):
    _known_keys(obj, CASE_KEYS, "")
    config = []
    if "config" in obj:
        for key, value in _object(obj["config"], "", '"config"').items():
            config.append((key, _string(value, key, "config")))
    return {
        "name": obj["name"],
        "config": config,
        "origin": _origin(obj.get("origin")),
        "input": _message(_object(_required(obj, "input", ""), "", '"input"'), "input"),
        "expect": _expect(_required(obj, "expect", "")),
    }


def load_cases(text):
    """The cases of a file's text, checked against the spec, or
    `CasesError`."""
    try:
        # serde_json's reading (integers and floats kept apart, members in
        # order), as the Rust runners see the same file.
        data = parse_json(text)
    except GuestError as err:
        raise CasesError(f"the file: {err}") from None
    _known_keys(_object(data, "", "the file"), ["cases"], "the file")
    listed = _required(data, "cases", "the file")
    if not isinstance(listed, list):
        raise CasesError('the file: "cases" is not an array')
    if not listed:
        raise CasesError('the file: "cases" is empty')
    cases = []
    for index, value in enumerate(listed):
        unnamed = f"case #{index + 1}"
        obj = _object(value, unnamed, "the case")
        name = obj.get("name")
        if name is None:
            raise CasesError(f'{unnamed}: missing key "name"')
        if not isinstance(name, str) or not name:
            raise CasesError(f'{unnamed}: "name" is not a non-empty string')
        try:
            case = _case_body(obj)
        except CasesError as err:
            raise CasesError(f'case "{name}": {err}') from None
        if any(c["name"] == name for c in cases):
            raise CasesError(f'case "{name}": another case has the same name')
        cases.append(case)
    return cases


# --- running -------------------------------------------------------------------


def same_json(a, b):
    """Structural equality as serde_json's `Value` has it: members in any
    order, and an integer never equals a float (`1` is not `1.0`)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(same_json(v, b[k]) for k, v in a.items())
        )
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same_json, a, b))
    if isinstance(a, (int, float, str)) or a is None:
        return type(a) is type(b) and a == b
    return False


def bindings_dir(tmp):
    """Generate the `wit_world` bindings into `tmp` and put them on the
    path, with the shared library."""
    subprocess.run(
        ["componentize-py", "-d", os.path.join(ROOT, "wit"), "-w", "handler", "bindings", tmp],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    if tmp not in sys.path:
        sys.path.append(tmp)


def run_cases(plugin_dir, cases):
    """Run parsed cases against PLUGIN_DIR/app.py; the failures, one line
    each. Needs the bindings on the path (`bindings_dir`)."""
    types = importlib.import_module("wit_world.imports.types")
    errors = importlib.import_module("componentize_py_types")
    plugin_dir = os.path.abspath(plugin_dir)
    failures = []
    for case in cases:
        sys.path.insert(0, plugin_dir)
        sys.modules.pop("app", None)
        try:
            app = importlib.import_module("app")
            run_case(app, types, errors, case)
        except CaseFailed as err:
            failures.append(f'case "{case["name"]}": {err}')
        finally:
            sys.path.remove(plugin_dir)
    return failures


def run_case(app, types, errors, case):
    spec = case["origin"]
    origin = types.Origin(
        spec["tenant"], spec["stream"], spec["stream_seq"], spec["delivered"], spec["published_ms"]
    )
    try:
        app.WitWorld().init(list(case["config"]))
    except errors.Err as err:
        raise CaseFailed(f"init failed: {err.value}") from None
    subject, headers, payload = case["input"]
    verdict = app.WitWorld().handle(origin, types.Message(subject, list(headers), payload))
    check(case["expect"], verdict, types)


def check(expect, verdict, types):
    kind, want = expect
    if kind == "next" and isinstance(verdict, types.Verdict_Next):
        return check_message(want, verdict.value)
    if kind == "publish" and isinstance(verdict, types.Verdict_Publish):
        if len(want) != len(verdict.value):
            raise CaseFailed(f"expected {len(want)} messages, got {describe(verdict)}")
        for index, (w, got) in enumerate(zip(want, verdict.value)):
            try:
                check_message(w, got)
            except CaseFailed as err:
                raise CaseFailed(f"message {index}: {err}") from None
        return None
    if kind == "ack" and isinstance(verdict, types.Verdict_Ack):
        return None
    if kind == "dead-letter" and isinstance(verdict, types.Verdict_DeadLetter):
        if want is not None and want not in verdict.value:
            raise CaseFailed(f"reason {verdict.value!r} lacks {want!r}")
        return None
    if kind == "retry" and isinstance(verdict, types.Verdict_Retry):
        if want is not None and verdict.value != want:
            raise CaseFailed(f"expected a delay of {want} ms, got {verdict.value}")
        return None
    raise CaseFailed(f"expected verdict {kind}, got {describe(verdict)}")


def check_message(want, got):
    subject, headers, (how, payload) = want
    if subject != got.subject:
        raise CaseFailed(f"expected subject {subject!r}, got {got.subject!r}")
    if headers != list(got.headers):
        raise CaseFailed(f"expected headers {headers}, got {got.headers}")
    if how == "json":
        try:
            actual = parse_json(got.payload)
        except GuestError as err:
            raise CaseFailed(f"payload is not JSON ({err}): {got.payload!r}") from None
        if not same_json(actual, payload):
            raise CaseFailed(f"expected payload_json {dump_json(payload)!r}, got {got.payload!r}")
    elif bytes(got.payload) != payload:
        raise CaseFailed(f"expected payload {payload!r}, got {got.payload!r}")
    return None


def describe(verdict):
    return f"{type(verdict).__name__} {getattr(verdict, 'value', '')!r}"


def main(plugin_dir, cases_path):
    with open(cases_path, encoding="utf-8") as f:
        text = f.read()
    try:
        cases = load_cases(text)
    except CasesError as err:
        print(f"{cases_path}: {err}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        bindings_dir(tmp)
        failures = run_cases(plugin_dir, cases)
    if failures:
        print("\n".join(failures), file=sys.stderr)
        return 1
    print(f"{len(cases)} passed, 0 failed: {plugin_dir}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
