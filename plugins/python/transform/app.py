"""Reference plugin `transform` in Python: reshape JSON object payloads.

The same plugin as plugins/transform (Rust), key for key and byte for byte;
both pass plugins/transform/cases.json. Configuration (flat keys; paths are
dot paths such as `user.name`):

- `rename.<from> = "<to>"`: move the value at `<from>` to `<to>`; a missing
  `<from>` is left alone.
- `remove = "p1,p2"`: delete these paths (comma-separated).
- `set.<path> = "<value>"`: put a value at `<path>`; the value is JSON when
  it parses (`42`, `true`, `{"a":1}`, `"\\"quoted\\""`), else the text.

Renames run first (in config order), then removals, then sets. Subject and
headers pass unchanged; the payload is written back as compact JSON. A
payload that is not a JSON object is dead-lettered.
"""

from wit_world.imports import types

from sluice_guest import (
    GuestError,
    MISSING,
    check_path,
    copy_json,
    dump_json,
    export_handler,
    parse_json,
    remove_path,
    set_path,
    strip_ws,
)



class Transform:
    """The edits of one stage, parsed and checked once in `init`."""

    def __init__(self, config):
        config.reject_unknown(["rename.*", "remove", "set.*"])
        self.renames = []
        for source, target in config.with_prefix("rename."):
            _checked(f"rename.{source}", source)
            _checked(f"rename.{source}", target)
            self.renames.append((source, target))
        self.removals = []
        listed = config.get("remove")
        if listed is not None:
            for path in listed.split(","):
                self.removals.append(_checked("remove", strip_ws(path)))
        self.sets = []
        for path, raw in config.with_prefix("set."):
            _checked(f"set.{path}", path)
            self.sets.append((path, _literal(raw)))

    def handle(self, origin, msg):
        try:
            payload = parse_json(msg.payload)
        except GuestError as err:
            return types.Verdict_DeadLetter(f"payload is not valid JSON: {err}")
        if not isinstance(payload, dict):
            return types.Verdict_DeadLetter("payload is not a JSON object")
        try:
            for source, target in self.renames:
                value = remove_path(payload, source)
                if value is not MISSING:
                    set_path(payload, target, value)
            for path in self.removals:
                remove_path(payload, path)
            for path, value in self.sets:
                # A copy: a later set may write into this value, and the
                # literal serves every message.
                set_path(payload, path, copy_json(value))
        except GuestError as err:
            return types.Verdict_DeadLetter(str(err))
        return types.Verdict_Next(types.Message(msg.subject, msg.headers, dump_json(payload)))


def _checked(key, path):
    """`path` if it is a usable dot path, else an error naming the key."""
    try:
        check_path(path)
    except GuestError as err:
        raise GuestError(f'config key "{key}": {err}') from None
    return path


def _literal(raw):
    """A `set.` value: JSON if it parses, otherwise the text itself."""
    try:
        return parse_json(raw)
    except GuestError:
        return raw


WitWorld = export_handler(Transform)
