"""Test guest `mirror` in Python: the verdict its config names, with the
message exactly as it came.

The same plugin as plugins/testing/mirror (Rust), whose doc comment lists
the config keys; every language passes plugins/testing/mirror/cases.json,
the edge cases of the golden-case format.
"""

from wit_world.imports import types

from sluice_guest import GuestError, export_handler

KINDS = ("next", "publish", "ack", "dead-letter", "retry")
U32_MAX = (1 << 32) - 1


class Mirror:
    def __init__(self, config):
        config.reject_unknown(["verdict", "to", "reason", "delay_ms", "origin_header"])
        self.kind = config.get("verdict", "next")
        if self.kind not in KINDS:
            raise GuestError(f'config key "verdict": unknown verdict "{self.kind}"')
        to = config.get("to")
        self.to = None if to is None else [s for s in to.split(",") if s]
        self.reason = config.get("reason", "mirrored")
        self.delay = 0
        if self.kind == "retry":
            text = config.get("delay_ms", "0")
            # Plain ASCII digits only, as the Rust version reads them.
            if not (text.isascii() and text.isdigit()) or int(text) > U32_MAX:
                raise GuestError(f'config key "delay_ms": "{text}" is not a u32')
            self.delay = int(text)
        self.origin_header = config.get("origin_header")

    def handle(self, origin, msg):
        headers = list(msg.headers)
        if self.origin_header is not None:
            seen = "/".join(
                str(v)
                for v in (
                    origin.tenant,
                    origin.stream,
                    origin.stream_seq,
                    origin.delivered,
                    origin.published_ms,
                )
            )
            headers.append((self.origin_header, seen))
        msg = types.Message(msg.subject, headers, msg.payload)
        if self.kind == "next":
            return types.Verdict_Next(msg)
        if self.kind == "publish":
            subjects = [msg.subject] if self.to is None else self.to
            return types.Verdict_Publish([types.Message(s, headers, msg.payload) for s in subjects])
        if self.kind == "ack":
            return types.Verdict_Ack()
        if self.kind == "dead-letter":
            return types.Verdict_DeadLetter(self.reason)
        return types.Verdict_Retry(self.delay)


WitWorld = export_handler(Mirror)
