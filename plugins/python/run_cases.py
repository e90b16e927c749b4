"""Run a plugin's golden cases against its Python version in plain CPython.

    python3 plugins/python/run_cases.py PLUGIN_DIR CASES_JSON

The host runs the same files against the built component (tests/plugins.rs
and tests/conformance.rs); this runner gives the answer in a second instead
of after a component build, as the Rust plugins' native unit tests do.
`scripts/build-plugins --check` runs it for every Python plugin.

It generates the `wit_world` bindings with componentize-py (on PATH) into a
temporary folder, imports PLUGIN_DIR/app.py beside plugins/python/lib, and
for each case calls `init` then `handle` on a fresh `WitWorld`, as the host
does on a fresh instance. Exit status 1 lists every failing case.
"""

import importlib
import json
import os
import subprocess
import sys
import tempfile

# No __pycache__ beside the sources: componentize-py would bundle it.
sys.dont_write_bytecode = True

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def main(plugin_dir, cases_path):
    with tempfile.TemporaryDirectory() as bindings:
        subprocess.run(
            ["componentize-py", "-d", os.path.join(ROOT, "wit"), "-w", "handler", "bindings", bindings],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        sys.path[:0] = [os.path.abspath(plugin_dir), os.path.join(HERE, "lib"), bindings]
        app = importlib.import_module("app")
        types = importlib.import_module("wit_world.imports.types")
        errors = importlib.import_module("componentize_py_types")
        with open(cases_path, encoding="utf-8") as f:
            cases = json.load(f)["cases"]
        failures = []
        for index, case in enumerate(cases):
            name = case.get("name", f"#{index}")
            try:
                run_case(app, types, errors, case)
            except CaseFailed as err:
                failures.append(f'case "{name}": {err}')
        if failures:
            print("\n".join(failures), file=sys.stderr)
            return 1
        print(f"{len(cases)} passed, 0 failed: {plugin_dir}")
        return 0


class CaseFailed(Exception):
    pass


def run_case(app, types, errors, case):
    from sluice_guest import dump_json

    config = list(case.get("config", {}).items())
    spec = case.get("origin", {})
    origin = types.Origin(
        spec.get("tenant", "acme"),
        spec.get("stream", "IN"),
        spec.get("stream_seq", 1),
        spec.get("delivered", 1),
        spec.get("published_ms", 0),
    )
    world = app.WitWorld()
    try:
        world.init(config)
    except errors.Err as err:
        raise CaseFailed(f"init failed: {err.value}") from None
    verdict = app.WitWorld().handle(origin, message(types, case["input"], dump_json))
    check(case["expect"], verdict, types)


def message(types, spec, dump_json):
    if "payload_json" in spec:
        payload = dump_json(spec["payload_json"])
    else:
        payload = spec.get("payload", "").encode("utf-8")
    headers = [tuple(pair) for pair in spec.get("headers", [])]
    return types.Message(spec["subject"], headers, payload)


def check(expect, verdict, types):
    kind = expect["verdict"]
    if kind == "next" and isinstance(verdict, types.Verdict_Next):
        return check_message(expect["message"], verdict.value)
    if kind == "publish" and isinstance(verdict, types.Verdict_Publish):
        wants = expect["messages"]
        if len(wants) != len(verdict.value):
            raise CaseFailed(f"expected {len(wants)} messages, got {describe(verdict)}")
        for want, got in zip(wants, verdict.value):
            check_message(want, got)
        return None
    if kind == "ack" and isinstance(verdict, types.Verdict_Ack):
        return None
    if kind == "dead-letter" and isinstance(verdict, types.Verdict_DeadLetter):
        needle = expect.get("reason_contains", "")
        if needle not in verdict.value:
            raise CaseFailed(f"reason {verdict.value!r} lacks {needle!r}")
        return None
    if kind == "retry" and isinstance(verdict, types.Verdict_Retry):
        if verdict.value != expect.get("delay_ms", verdict.value):
            raise CaseFailed(f"expected a delay of {expect['delay_ms']} ms, got {verdict.value}")
        return None
    raise CaseFailed(f"expected verdict {kind}, got {describe(verdict)}")


def check_message(want, got):
    if want["subject"] != got.subject:
        raise CaseFailed(f"expected subject {want['subject']!r}, got {got.subject!r}")
    headers = [tuple(pair) for pair in want.get("headers", [])]
    if headers != list(got.headers):
        raise CaseFailed(f"expected headers {headers}, got {got.headers}")
    if "payload_json" in want:
        actual = json.loads(got.payload)
        if actual != want["payload_json"]:
            raise CaseFailed(f"expected payload_json {want['payload_json']}, got {got.payload!r}")
    elif "payload" in want and want["payload"].encode("utf-8") != got.payload:
        raise CaseFailed(f"expected payload {want['payload']!r}, got {got.payload!r}")


def describe(verdict):
    return f"{type(verdict).__name__} {getattr(verdict, 'value', '')!r}"


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
