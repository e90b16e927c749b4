// Test guest `mirror` in JavaScript: the verdict its config names, with the
// message exactly as it came.
//
// The same plugin as plugins/testing/mirror (Rust), whose doc comment lists
// the config keys; every language passes plugins/testing/mirror/cases.json,
// the edge cases of the golden-case format.

import { GuestError, exportHandler } from "../lib/sluice-guest.js";

const KINDS = ["next", "publish", "ack", "dead-letter", "retry"];

class Mirror {
  constructor(config) {
    config.rejectUnknown(["verdict", "to", "reason", "delay_ms", "origin_header"]);
    this.kind = config.get("verdict", "next");
    if (!KINDS.includes(this.kind)) throw new GuestError(`config key "verdict": unknown verdict "${this.kind}"`);
    const to = config.get("to");
    this.to = to === undefined ? null : to.split(",").filter((s) => s !== "");
    this.reason = config.get("reason", "mirrored");
    this.delay = 0;
    if (this.kind === "retry") {
      const text = config.get("delay_ms", "0");
      // Plain ASCII digits only, as the Rust version reads them.
      if (!/^[0-9]+$/.test(text) || BigInt(text) > 0xffffffffn) {
        throw new GuestError(`config key "delay_ms": "${text}" is not a u32`);
      }
      this.delay = Number(text);
    }
    this.originHeader = config.get("origin_header", null);
  }

  handle(origin, msg) {
    const headers = msg.headers.map(([k, v]) => [k, v]);
    if (this.originHeader !== null) {
      const { tenant, stream, streamSeq, delivered, publishedMs } = origin;
      headers.push([this.originHeader, [tenant, stream, streamSeq, delivered, publishedMs].join("/")]);
    }
    const copy = (subject) => ({ subject, headers, payload: msg.payload });
    switch (this.kind) {
      case "next":
        return { tag: "next", val: copy(msg.subject) };
      case "publish":
        return { tag: "publish", val: (this.to ?? [msg.subject]).map(copy) };
      case "ack":
        return { tag: "ack" };
      case "dead-letter":
        return { tag: "dead-letter", val: this.reason };
      default:
        return { tag: "retry", val: this.delay };
    }
  }
}

export const { init, handle } = exportHandler(Mirror);
