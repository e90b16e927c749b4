"""Reference plugin `route` in Python: choose output subjects by content and
subject.

The same plugin as plugins/route (Rust); both pass plugins/route/cases.json.
Each message is published, unchanged, to every subject the matching rules
name. Config keys:

- `rule.<N>.field` + `rule.<N>.equals`: the JSON value at the dot path is a
  string equal to the text, or a number or boolean whose JSON text equals it;
- `rule.<N>.subject`: a NATS subject pattern (`*` one token, final `>` one or
  more) the input subject matches;
- `rule.<N>.to`: comma-separated output subjects (required); `{tenant}`
  becomes the tenant;
- `mode`: `first` (default) or `all`;
- `unmatched`: `dead-letter` (default) or an output subject.

A rule needs at least one condition; with both, both must hold. Rules run in
numeric order of `N`. A message no rule matches goes to `unmatched` or is
dead-lettered with `no route matched subject <subject>`.
"""

from wit_world.imports import types

from sluice_guest import (
    GuestError,
    MISSING,
    check_path,
    export_handler,
    get_path,
    has_ws,
    number_text,
    parse_json,
    parse_u64,
    strip_ws,
)

TENANT = "{tenant}"
ACCEPTED = [
    "mode",
    "unmatched",
    "rule.<N>.field",
    "rule.<N>.equals",
    "rule.<N>.subject",
    "rule.<N>.to",
]
ATTRIBUTES = ("field", "equals", "subject", "to")


# --- subjects ------------------------------------------------------------------


def split_tokens(subject):
    if not subject:
        raise GuestError("empty subject")
    if has_ws(subject):
        raise GuestError(f'invalid subject "{subject}": contains whitespace')
    tokens = subject.split(".")
    if "" in tokens:
        raise GuestError(f'invalid subject "{subject}": empty token')
    return tokens


class Pattern:
    """A subject pattern: literal tokens, `*` for one token, a final `>` for
    one or more."""

    def __init__(self, pattern):
        tokens = split_tokens(pattern)
        for index, token in enumerate(tokens):
            if token == ">" and index != len(tokens) - 1:
                raise GuestError(
                    f'invalid subject pattern "{pattern}": ">" must be the last token'
                )
        self.tokens = tokens

    def matches(self, subject):
        remaining = subject.split(".")
        for index, token in enumerate(self.tokens):
            if index >= len(remaining):
                return False
            if token == ">":
                return True
            if token != "*" and token != remaining[index]:
                return False
        return len(remaining) == len(self.tokens)


def fill(template, tenant):
    return template.replace(TENANT, tenant)


def check_template(template):
    """An output subject: publishable once `{tenant}` is filled in."""
    filled = fill(template, "tenant")
    try:
        tokens = split_tokens(filled)
    except GuestError as err:
        raise GuestError(str(err).replace(f'"{filled}"', f'"{template}"')) from None
    if "*" in tokens or ">" in tokens:
        raise GuestError(
            f'invalid output subject "{template}": wildcards cannot be published to'
        )


# --- rules -----------------------------------------------------------------------


class Rule:
    def __init__(self, number, raw):
        def key(attr):
            return f"rule.{number}.{attr}"

        self.number = number
        path, equals = raw.get("field"), raw.get("equals")
        if path is not None and equals is not None:
            try:
                check_path(path)
            except GuestError as err:
                raise GuestError(f'config key "{key("field")}": {err}') from None
            self.field = (path, equals)
        elif equals is not None:
            raise GuestError(f'config key "{key("equals")}" needs "{key("field")}"')
        elif path is not None:
            raise GuestError(f'config key "{key("field")}" needs "{key("equals")}"')
        else:
            self.field = None
        self.subject = None
        if raw.get("subject") is not None:
            try:
                self.subject = Pattern(raw["subject"])
            except GuestError as err:
                raise GuestError(f'config key "{key("subject")}": {err}') from None
        if self.field is None and self.subject is None:
            raise GuestError(
                f'rule {number} has no condition: set "{key("field")}" '
                f'(with "{key("equals")}") or "{key("subject")}"'
            )
        targets = raw.get("to")
        if targets is None:
            raise GuestError(f'rule {number} has no "{key("to")}"')
        self.to = []
        for target in targets.split(","):
            target = strip_ws(target)
            try:
                check_template(target)
            except GuestError as err:
                raise GuestError(f'config key "{key("to")}": {err}') from None
            self.to.append(target)

    def matches(self, subject, payload):
        if self.subject is not None and not self.subject.matches(subject):
            return False
        if self.field is not None:
            if payload is MISSING:
                return False
            path, equals = self.field
            value = get_path(payload, path)
            if value is MISSING or not value_equals(value, equals):
                return False
        return True


def value_equals(value, text):
    """A string compares as itself, a number or boolean as its JSON text;
    null, arrays and objects never match."""
    if isinstance(value, str):
        return value == text
    if isinstance(value, (bool, int, float)):
        return number_text(value) == text
    return False


def rule_key(key):
    """`rule.<N>.<attr>` as `(N, attr)`."""
    if not key.startswith("rule."):
        raise GuestError(unknown(key))
    number, dot, attr = key[len("rule.") :].partition(".")
    if not dot:
        raise GuestError(unknown(key))
    # Only plain digits: `+1` or ` 1` are typos, not rule 1.
    parsed = parse_u64(number)
    if parsed is not None:
        return parsed, attr
    raise GuestError(
        f'config key "{key}": rule number "{number}" is not a non-negative integer'
    )


def unknown(key):
    return f'unknown config key "{key}"; accepted keys: ' + ", ".join(ACCEPTED)


class Routes:
    """The parsed table: rules in numeric order, mode, unmatched target."""

    def __init__(self, config):
        raw = {}
        for key, value in config.entries:
            if key in ("mode", "unmatched"):
                continue
            number, attr = rule_key(key)
            if attr not in ATTRIBUTES:
                raise GuestError(unknown(key))
            raw.setdefault(number, {})[attr] = value
        self.rules = [Rule(number, raw[number]) for number in sorted(raw)]
        mode = config.get("mode", "first")
        if mode not in ("first", "all"):
            raise GuestError(
                f'config key "mode": expected "first" or "all", got "{mode}"'
            )
        self.first_only = mode == "first"
        unmatched = config.get("unmatched", "dead-letter")
        if unmatched == "dead-letter":
            self.unmatched = None
        else:
            try:
                check_template(unmatched)
            except GuestError as err:
                raise GuestError(f'config key "unmatched": {err}') from None
            self.unmatched = unmatched
        self.needs_payload = any(rule.field is not None for rule in self.rules)

    def targets(self, subject, payload, tenant):
        """Output subjects without duplicates, or None to dead-letter."""
        targets = []
        matched = False
        for rule in self.rules:
            if not rule.matches(subject, payload):
                continue
            matched = True
            for template in rule.to:
                target = fill(template, tenant)
                if target not in targets:
                    targets.append(target)
            if self.first_only:
                break
        if matched:
            return targets
        if self.unmatched is None:
            return None
        return [fill(self.unmatched, tenant)]


class Route:
    def __init__(self, config):
        self.routes = Routes(config)

    def handle(self, origin, msg):
        # A payload that is not JSON only fails the field conditions;
        # subject rules still apply to it.
        payload = MISSING
        if self.routes.needs_payload:
            try:
                payload = parse_json(msg.payload)
            except GuestError:
                payload = MISSING
        targets = self.routes.targets(msg.subject, payload, origin.tenant)
        if targets is None:
            return types.Verdict_DeadLetter(f"no route matched subject {msg.subject}")
        return types.Verdict_Publish(
            [types.Message(target, msg.headers, msg.payload) for target in targets]
        )


WitWorld = export_handler(Route)
