// Tests of run_cases.mjs itself: it refuses every file in
// plugins/testing/mirror/invalid-cases.json with the error the other three
// runners give, and a wrong expectation fails.
//
//   node plugins/js/test_run_cases.mjs
//
// `scripts/build-plugins --check` runs it.

import assert from "node:assert/strict";
import fs from "node:fs";
import test from "node:test";

import { dumpJson, decodeUtf8, parseJson } from "./lib/sluice-guest.js";
import { CasesError, decodeBase64, loadCases, runCases, sameJson } from "./run_cases.mjs";

const here = new URL(".", import.meta.url);
const mirror = new URL("mirror/handler.js", here).pathname;
const invalid = new URL("../testing/mirror/invalid-cases.json", here);

test("every invalid file is refused with the shared error", () => {
  const listed = parseJson(fs.readFileSync(invalid, "utf8")).get("invalid");
  assert.ok(listed.length);
  for (const item of listed) {
    const text = decodeUtf8(dumpJson(item.get("file")));
    assert.throws(
      () => loadCases(text),
      (err) => err instanceof CasesError && err.message.startsWith(item.get("error")),
      `${item.get("what")}: want ${item.get("error")}`,
    );
  }
});

test("base64 must be padded and canonical", () => {
  assert.deepEqual([...decodeBase64("AP8=")], [0, 255]);
  assert.deepEqual([...decodeBase64("")], []);
  for (const bad of ["AP8", "AP9=", "A P8=", "AA==AAAA", "-_8="]) assert.equal(decodeBase64(bad), null, bad);
});

test("numbers compare by kind", () => {
  const p = (text) => parseJson(text);
  assert.ok(sameJson(p('{"a":[1,2.5],"b":1}'), p('{"b":1,"a":[1,2.5]}')));
  assert.ok(!sameJson(p("1"), p("1.0")));
  assert.ok(!sameJson(p("true"), p("1")));
  assert.ok(!sameJson(p('{"a":1}'), p('{"a":1,"b":2}')));
  assert.ok(sameJson(p("18446744073709551615"), p("18446744073709551615")));
});

test("a right expectation passes and a wrong one fails", async () => {
  const text = (b64) =>
    `{"cases": [{"name": "w", "input": {"subject": "s", "payload_base64": "AP8="}, ` +
    `"expect": {"verdict": "next", "message": {"subject": "s", "payload_base64": "${b64}"}}}]}`;
  assert.deepEqual(await runCases(mirror, loadCases(text("AP8="))), []);
  const failures = await runCases(mirror, loadCases(text("AP4=")));
  assert.equal(failures.length, 1);
  assert.match(failures[0], /^case "w": expected payload/);
});

test("a missing expected payload means empty", async () => {
  const text =
    '{"cases": [{"name": "e", "input": {"subject": "s", "payload": "x"}, ' +
    '"expect": {"verdict": "next", "message": {"subject": "s"}}}]}';
  assert.equal((await runCases(mirror, loadCases(text))).length, 1);
});
