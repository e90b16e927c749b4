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
// Exit status 1 lists every failing case, or the file's error.
//
// The format is specified in docs/plugins.md ("The golden-case format"),
// and this runner implements it as the host's (runtime/src/cases.rs) and the
// Rust and Python ones do: a file with an unknown key, two payload keys in
// one message or another shape error is refused whole, naming the case and
// the key, before any case runs. The file is read with the library's
// `parseJson`, so it sees what serde_json sees: members in file order
// (integer-like keys too), integers apart from floats, big integers exact.
//
// Node before 21 lacks what the library's fast JSON paths use, so there it
// checks the exact paths; the components (tests/conformance.rs) check both.

import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

import { JsonFloat, decodeUtf8, dumpJson, encodeUtf8, parseJson } from "./lib/sluice-guest.js";

const CASE_KEYS = ["name", "config", "origin", "input", "expect"];
const ORIGIN_KEYS = ["tenant", "stream", "stream_seq", "delivered", "published_ms"];
const MESSAGE_KEYS = ["subject", "headers", "payload", "payload_json", "payload_base64"];
const PAYLOAD_KEYS = ["payload", "payload_json", "payload_base64"];
const EXTRA_KEYS = {
  next: ["message"],
  publish: ["messages"],
  ack: [],
  "dead-letter": ["reason_contains"],
  retry: ["delay_ms"],
};
const VERDICTS = Object.keys(EXTRA_KEYS);
const U32_MAX = 2n ** 32n - 1n;
const U64_MAX = 2n ** 64n - 1n;

/** The file is not a valid cases file; the message names case and key. */
export class CasesError extends Error {}

class CaseFailed extends Error {}

// --- reading the format -------------------------------------------------------

const at = (place, what) => (place ? `${place}: ${what}` : what);

function object(value, place, what) {
  if (!(value instanceof Map)) throw new CasesError(at(place, `${what} is not an object`));
  return value;
}

function knownKeys(map, allowed, place) {
  for (const key of map.keys()) {
    if (!allowed.includes(key)) {
      throw new CasesError(at(place, `unknown key "${key}" (expected one of: ${allowed.join(", ")})`));
    }
  }
}

function required(map, key, place) {
  if (!map.has(key)) throw new CasesError(at(place, `missing key "${key}"`));
  return map.get(key);
}

function string(value, key, place) {
  if (typeof value !== "string") throw new CasesError(at(place, `"${key}" is not a string`));
  return value;
}

function integer(value, key, max, place) {
  const whole = (typeof value === "number" && Number.isInteger(value)) || typeof value === "bigint";
  if (!whole || BigInt(value) < 0n || BigInt(value) > max) {
    throw new CasesError(at(place, `"${key}" is not an integer from 0 to ${max}`));
  }
  return value;
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Padded standard base64 in its one canonical spelling, else null. */
export function decodeBase64(text) {
  if (!BASE64.test(text)) return null;
  const bytes = new Uint8Array(Buffer.from(text, "base64"));
  return Buffer.from(bytes).toString("base64") === text ? bytes : null;
}

function messageParts(map, place) {
  knownKeys(map, MESSAGE_KEYS, place);
  const subject = string(required(map, "subject", place), "subject", place);
  const raw = map.has("headers") ? map.get("headers") : [];
  const ok =
    Array.isArray(raw) &&
    raw.every((pair) => Array.isArray(pair) && pair.length === 2 && pair.every((s) => typeof s === "string"));
  if (!ok) throw new CasesError(at(place, `"headers" is not a list of [name, value] strings`));
  const payloads = [...map.keys()].filter((key) => PAYLOAD_KEYS.includes(key));
  if (payloads.length > 1) {
    throw new CasesError(at(place, `more than one of "payload", "payload_json", "payload_base64"`));
  }
  const payload = payloads.length ? [payloads[0], map.get(payloads[0])] : null;
  return { subject, headers: raw.map(([n, v]) => [n, v]), payload };
}

function payloadBytes(key, value, place) {
  const text = string(value, key, place);
  if (key === "payload") return encodeUtf8(text);
  const bytes = decodeBase64(text);
  if (bytes === null) throw new CasesError(at(place, `"payload_base64" is not padded, canonical base64`));
  return bytes;
}

function message(map, place) {
  const { subject, headers, payload } = messageParts(map, place);
  let bytes = new Uint8Array(0);
  if (payload !== null) {
    bytes = payload[0] === "payload_json" ? dumpJson(payload[1]) : payloadBytes(payload[0], payload[1], place);
  }
  return { subject, headers, payload: bytes };
}

function messageWant(value, place) {
  const { subject, headers, payload } = messageParts(object(value, place, "the message"), place);
  let want = { bytes: new Uint8Array(0) };
  if (payload !== null) {
    want = payload[0] === "payload_json" ? { json: payload[1] } : { bytes: payloadBytes(payload[0], payload[1], place) };
  }
  return { subject, headers, ...want };
}

function origin(value) {
  const out = { tenant: "acme", stream: "IN", streamSeq: 1, delivered: 1, publishedMs: 0 };
  if (value === undefined) return out;
  knownKeys(object(value, "", `"origin"`), ORIGIN_KEYS, "origin");
  if (value.has("tenant")) out.tenant = string(value.get("tenant"), "tenant", "origin");
  if (value.has("stream")) out.stream = string(value.get("stream"), "stream", "origin");
  if (value.has("stream_seq")) out.streamSeq = Number(integer(value.get("stream_seq"), "stream_seq", U64_MAX, "origin"));
  if (value.has("delivered")) out.delivered = Number(integer(value.get("delivered"), "delivered", U32_MAX, "origin"));
  if (value.has("published_ms")) {
    out.publishedMs = Number(integer(value.get("published_ms"), "published_ms", U64_MAX, "origin"));
  }
  return out;
}

function expectation(value) {
  const map = object(value, "", `"expect"`);
  const kind = string(required(map, "verdict", "expect"), "verdict", "expect");
  if (!VERDICTS.includes(kind)) {
    throw new CasesError(`expect: "verdict" is "${kind}", not one of ${VERDICTS.join(", ")}`);
  }
  knownKeys(map, ["verdict", ...EXTRA_KEYS[kind]], "expect");
  switch (kind) {
    case "next":
      return { kind, message: messageWant(required(map, "message", "expect"), "expect.message") };
    case "publish": {
      const list = required(map, "messages", "expect");
      if (!Array.isArray(list)) throw new CasesError(`expect: "messages" is not an array`);
      return { kind, messages: list.map((m, i) => messageWant(m, `expect.messages[${i}]`)) };
    }
    case "dead-letter":
      return {
        kind,
        reason: map.has("reason_contains") ? string(map.get("reason_contains"), "reason_contains", "expect") : null,
      };
    case "retry":
      return {
        kind,
        delay: map.has("delay_ms") ? Number(integer(map.get("delay_ms"), "delay_ms", U32_MAX, "expect")) : null,
      };
    default:
      return { kind };
  }
}

function caseBody(map) {
  knownKeys(map, CASE_KEYS, "");
  const config = [];
  if (map.has("config")) {
    for (const [key, value] of object(map.get("config"), "", `"config"`)) {
      config.push([key, string(value, key, "config")]);
    }
  }
  return {
    name: map.get("name"),
    config,
    origin: origin(map.get("origin")),
    input: message(object(required(map, "input", ""), "", `"input"`), "input"),
    expect: expectation(required(map, "expect", "")),
  };
}

/** The cases of a file's text, checked against the spec, or a thrown
 *  `CasesError`. */
export function loadCases(text) {
  let data;
  try {
    data = parseJson(text);
  } catch (err) {
    throw new CasesError(`the file: ${err.message}`);
  }
  knownKeys(object(data, "", "the file"), ["cases"], "the file");
  const listed = required(data, "cases", "the file");
  if (!Array.isArray(listed)) throw new CasesError(`the file: "cases" is not an array`);
  if (!listed.length) throw new CasesError(`the file: "cases" is empty`);
  const cases = [];
  listed.forEach((value, index) => {
    const unnamed = `case #${index + 1}`;
    const map = object(value, unnamed, "the case");
    if (!map.has("name")) throw new CasesError(`${unnamed}: missing key "name"`);
    const name = map.get("name");
    if (typeof name !== "string" || !name) throw new CasesError(`${unnamed}: "name" is not a non-empty string`);
    let parsed;
    try {
      parsed = caseBody(map);
    } catch (err) {
      if (err instanceof CasesError) throw new CasesError(`case "${name}": ${err.message}`);
      throw err;
    }
    if (cases.some((c) => c.name === name)) throw new CasesError(`case "${name}": another case has the same name`);
    cases.push(parsed);
  });
  return cases;
}

// --- running -------------------------------------------------------------------

/** Structural equality as serde_json's `Value` has it: members in any
 *  order, and an integer never equals a float (`1` is not `1.0`). */
export function sameJson(a, b) {
  if (a instanceof Map) {
    if (!(b instanceof Map) || a.size !== b.size) return false;
    for (const [k, v] of a) if (!b.has(k) || !sameJson(v, b.get(k))) return false;
    return true;
  }
  if (Array.isArray(a)) return Array.isArray(b) && a.length === b.length && a.every((v, i) => sameJson(v, b[i]));
  if (a instanceof JsonFloat) return b instanceof JsonFloat && a.value === b.value;
  const isInt = (x) => typeof x === "number" || typeof x === "bigint";
  if (isInt(a)) return isInt(b) && BigInt(a) === BigInt(b);
  return a === b;
}

const sameBytes = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
const show = (bytes) => {
  try {
    return JSON.stringify(decodeUtf8(bytes));
  } catch {
    return `bytes [${[...bytes].join(",")}]`;
  }
};

function checkMessage(want, got) {
  if (want.subject !== got.subject) throw new CaseFailed(`expected subject ${want.subject}, got ${got.subject}`);
  if (JSON.stringify(want.headers) !== JSON.stringify(got.headers)) {
    throw new CaseFailed(`expected headers ${JSON.stringify(want.headers)}, got ${JSON.stringify(got.headers)}`);
  }
  if (!(got.payload instanceof Uint8Array)) throw new CaseFailed("the payload is not a Uint8Array");
  if ("json" in want) {
    let actual;
    try {
      actual = parseJson(got.payload);
    } catch (err) {
      throw new CaseFailed(`payload is not JSON (${err.message}): ${show(got.payload)}`);
    }
    if (!sameJson(actual, want.json)) {
      throw new CaseFailed(`expected payload_json ${show(dumpJson(want.json))}, got ${show(got.payload)}`);
    }
  } else if (!sameBytes(want.bytes, got.payload)) {
    throw new CaseFailed(`expected payload ${show(want.bytes)}, got ${show(got.payload)}`);
  }
}

function check(expect, verdict) {
  const { kind } = expect;
  if (verdict.tag !== kind) throw new CaseFailed(`expected verdict ${kind}, got ${JSON.stringify(verdict.tag)} ${verdict.val}`);
  if (kind === "next") checkMessage(expect.message, verdict.val);
  if (kind === "publish") {
    if (expect.messages.length !== verdict.val.length) {
      throw new CaseFailed(`expected ${expect.messages.length} messages, got ${verdict.val.length}`);
    }
    expect.messages.forEach((want, k) => {
      try {
        checkMessage(want, verdict.val[k]);
      } catch (err) {
        throw new CaseFailed(`message ${k}: ${err.message}`);
      }
    });
  }
  if (kind === "dead-letter" && expect.reason !== null && !verdict.val.includes(expect.reason)) {
    throw new CaseFailed(`reason ${JSON.stringify(verdict.val)} lacks ${JSON.stringify(expect.reason)}`);
  }
  if (kind === "retry" && expect.delay !== null && verdict.val !== expect.delay) {
    throw new CaseFailed(`expected a delay of ${expect.delay} ms, got ${verdict.val}`);
  }
}

/** Run parsed cases against the handler module at `handlerPath`; the
 *  failures, one line each. */
export async function runCases(handlerPath, cases) {
  const url = pathToFileURL(path.resolve(handlerPath)).href;
  const failures = [];
  for (const [k, c] of cases.entries()) {
    // A fresh module per case: the query string makes Node load it anew.
    const handler = await import(`${url}?case=${k}&t=${Date.now()}`);
    try {
      try {
        handler.init(c.config.map(([key, value]) => [key, value]));
      } catch (err) {
        throw new CaseFailed(`init failed: ${err instanceof Error ? err.message : err}`);
      }
      const msg = { ...c.input, headers: c.input.headers.map((h) => [...h]), payload: c.input.payload.slice() };
      check(c.expect, handler.handle({ ...c.origin }, msg));
    } catch (err) {
      if (!(err instanceof CaseFailed)) throw err;
      failures.push(`case "${c.name}": ${err.message}`);
    }
  }
  return failures;
}

async function main(argv) {
  const [handlerPath, casesPath] = argv;
  if (!handlerPath || !casesPath) {
    process.stderr.write("usage: node run_cases.mjs HANDLER_JS CASES_JSON\n");
    return 2;
  }
  let cases;
  try {
    cases = loadCases(fs.readFileSync(casesPath, "utf8"));
  } catch (err) {
    if (!(err instanceof CasesError)) throw err;
    process.stderr.write(`${casesPath}: ${err.message}\n`);
    return 1;
  }
  const failures = await runCases(handlerPath, cases);
  if (failures.length) {
    process.stderr.write(`${failures.join("\n")}\n`);
    return 1;
  }
  console.log(`${cases.length} passed, 0 failed: ${handlerPath}`);
  return 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  process.exitCode = await main(process.argv.slice(2));
}
