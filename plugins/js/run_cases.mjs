// Run a plugin's golden cases against its JavaScript version in Node.
//
//   node plugins/js/run_cases.mjs HANDLER_JS CASES_JSON
//
// The host runs the same files against the built component (tests/plugins.rs
// and tests/conformance.rs); this runner answers in a second, as the Rust
// plugins' native unit tests do. `scripts/build-plugins --check` runs it for
// every JS plugin. The handler is imported as it is (the reference plugins
// import no WIT interface), and each case calls `init` then `handle` on a
// fresh module instance, as the host does on a fresh component instance.
// Exit status 1 lists every failing case. Node before 21 lacks what the
// library's fast JSON paths use, so there it checks the exact paths; the
// components (tests/conformance.rs) check both.

import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [handlerPath, casesPath] = process.argv.slice(2);
if (!handlerPath || !casesPath) {
  process.stderr.write("usage: node run_cases.mjs HANDLER_JS CASES_JSON\n");
  process.exit(2);
}

const url = pathToFileURL(path.resolve(handlerPath)).href;
const libUrl = new URL("./lib/sluice-guest.js", import.meta.url).href;
const { dumpJson, decodeUtf8 } = await import(libUrl);
const cases = JSON.parse(fs.readFileSync(casesPath, "utf8")).cases;

// JSON.parse keeps the cases file's own key order for the keys used here
// (no integer-like keys), which is the order the payload is written in.
function toMap(value) {
  if (Array.isArray(value)) return value.map(toMap);
  if (value !== null && typeof value === "object") {
    return new Map(Object.entries(value).map(([k, v]) => [k, toMap(v)]));
  }
  return value;
}

function message(spec) {
  const payload =
    "payload_json" in spec ? dumpJson(toMap(spec.payload_json)) : new TextEncoder().encode(spec.payload ?? "");
  return { subject: spec.subject, headers: (spec.headers ?? []).map((h) => [...h]), payload };
}

function sameJson(a, b) {
  return JSON.stringify(sortKeys(a)) === JSON.stringify(sortKeys(b));
}

function sortKeys(value) {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(
      Object.keys(value)
        .sort()
        .map((k) => [k, sortKeys(value[k])]),
    );
  }
  return value;
}

function checkMessage(want, got) {
  if (want.subject !== got.subject) throw new Error(`expected subject ${want.subject}, got ${got.subject}`);
  if (JSON.stringify(want.headers ?? []) !== JSON.stringify(got.headers)) {
    throw new Error(`expected headers ${JSON.stringify(want.headers)}, got ${JSON.stringify(got.headers)}`);
  }
  const text = decodeUtf8(got.payload);
  if ("payload_json" in want) {
    if (!sameJson(JSON.parse(text), want.payload_json)) {
      throw new Error(`expected payload_json ${JSON.stringify(want.payload_json)}, got ${text}`);
    }
  } else if ("payload" in want && want.payload !== text) {
    throw new Error(`expected payload ${JSON.stringify(want.payload)}, got ${text}`);
  }
}

function check(expect, verdict) {
  const kind = expect.verdict;
  if (verdict.tag !== kind) throw new Error(`expected verdict ${kind}, got ${JSON.stringify(verdict.tag)} ${verdict.val}`);
  if (kind === "next") checkMessage(expect.message, verdict.val);
  if (kind === "publish") {
    if (expect.messages.length !== verdict.val.length) {
      throw new Error(`expected ${expect.messages.length} messages, got ${verdict.val.length}`);
    }
    expect.messages.forEach((want, k) => checkMessage(want, verdict.val[k]));
  }
  if (kind === "dead-letter" && !verdict.val.includes(expect.reason_contains ?? "")) {
    throw new Error(`reason ${JSON.stringify(verdict.val)} lacks ${JSON.stringify(expect.reason_contains)}`);
  }
  if (kind === "retry" && "delay_ms" in expect && verdict.val !== expect.delay_ms) {
    throw new Error(`expected a delay of ${expect.delay_ms} ms, got ${verdict.val}`);
  }
}

const failures = [];
for (const [k, c] of cases.entries()) {
  const name = c.name ?? `#${k}`;
  // A fresh module per case: the query string makes Node load it anew.
  const handler = await import(`${url}?case=${k}`);
  try {
    try {
      handler.init(Object.entries(c.config ?? {}));
    } catch (err) {
      throw new Error(`init failed: ${err}`);
    }
    const spec = c.origin ?? {};
    const origin = {
      tenant: spec.tenant ?? "acme",
      stream: spec.stream ?? "IN",
      streamSeq: spec.stream_seq ?? 1,
      delivered: spec.delivered ?? 1,
      publishedMs: spec.published_ms ?? 0,
    };
    check(c.expect, handler.handle(origin, message(c.input)));
  } catch (err) {
    failures.push(`case "${name}": ${err.message}`);
  }
}
if (failures.length) {
  process.stderr.write(`${failures.join("\n")}\n`);
  process.exit(1);
}
console.log(`${cases.length} passed, 0 failed: ${handlerPath}`);
