// Builds a JavaScript Sluice handler into a component with componentize-qjs,
// working around a name clash in componentize-qjs 0.4.5.
//
//   node build-handler.mjs --wit WIT_DIR --js HANDLER.js --out OUT.wasm [--module-root DIR]
//
// The handler is an ES module exporting `init(config)` and
// `handle(origin, msg)`, as the `handler` world of wit/pipeline.wit asks.
// scripts/build-plugins runs this file for the reference plugins, and
// `sluice build` runs a copy embedded in the binary, so both build JS the
// same way. componentize-qjs is found on PATH (scripts/build-plugins puts
// the repository's .tools/node first).
//
// Why not call `componentize-qjs --js handler.js` directly: its QuickJS
// runtime exports a core function named `init` of its own (the hook Wizer
// runs to snapshot the engine), so a world that exports `init` fails to link
// ("duplicate items detected"), and the finished component re-exports that
// hook as `init` too. So this script:
//
// 1. builds against a copy of the WIT whose `init` export is renamed
//    `sluice-init`, from a generated entry module that re-exports the
//    handler's `init` under that name (a hidden file beside the handler,
//    removed again afterwards);
// 2. rewrites the outer component's trailing alias/export pairs: drops the
//    runtime's `init` re-export and exports `sluice-init` as `init`, so the
//    component has exactly the world's exports. Nothing inside the wrapped
//    component changes; the host checks the result's types when it loads it.
//
// Anything else about the component layout that this does not expect is an
// error, never a guess: a newer componentize-qjs fails loudly here.

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";

const RENAMED = "sluice-init";
const RENAMED_JS = "sluiceInit";

/** A build failure with a message for the user. */
class BuildError extends Error {}

function fail(message) {
  throw new BuildError(message);
}

function parseArgs(argv) {
  const args = {};
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i];
    const value = argv[i + 1];
    if (!["--wit", "--js", "--out", "--module-root"].includes(key) || value === undefined) {
      fail(`usage: build-handler.mjs --wit DIR --js FILE --out FILE [--module-root DIR] (got ${key})`);
    }
    args[key.slice(2)] = value;
  }
  for (const key of ["wit", "js", "out"]) {
    if (!args[key]) fail(`missing --${key}`);
  }
  return args;
}

/** The componentize-qjs package's entry: beside the `componentize-qjs` on
 *  PATH. */
function findComponentizeQjs() {
  const candidates = [];
  for (const dir of (process.env.PATH || "").split(path.delimiter)) {
    if (dir) candidates.push(path.join(dir, "componentize-qjs"));
  }
  for (const bin of candidates) {
    let real;
    try {
      real = fs.realpathSync(bin);
    } catch {
      continue;
    }
    // npm links node_modules/.bin/componentize-qjs to the package's bin/.
    const pkg = path.resolve(path.dirname(real), "..");
    const index = path.join(pkg, "index.js");
    if (fs.existsSync(index) && fs.existsSync(path.join(pkg, "package.json"))) return index;
  }
  fail(
    "componentize-qjs is not on PATH: install it with `npm install componentize-qjs@0.4.5` " +
      "and put its node_modules/.bin on PATH (scripts/setup does this in .tools/node)",
  );
}

/** A copy of the WIT folder (or file) with the world's `init` export
 *  renamed. */
function renamedWit(wit, tmp) {
  const files = fs.statSync(wit).isDirectory()
    ? fs.readdirSync(wit).filter((f) => f.endsWith(".wit")).map((f) => path.join(wit, f))
    : [wit];
  let renamed = 0;
  for (const file of files) {
    const text = fs.readFileSync(file, "utf8");
    const out = text.replace(/^(\s*)export init:/gm, (_, indent) => {
      renamed += 1;
      return `${indent}export ${RENAMED}:`;
    });
    fs.writeFileSync(path.join(tmp, path.basename(file)), out);
  }
  if (renamed !== 1) fail(`expected one \`export init:\` in ${wit}, found ${renamed}`);
  return tmp;
}

// --- the component binary ------------------------------------------------

function readU32(bytes, at) {
  let value = 0;
  let shift = 0;
  for (;;) {
    if (at >= bytes.length) throw new Error("truncated LEB128");
    const b = bytes[at++];
    value += (b & 0x7f) * 2 ** shift;
    shift += 7;
    if (b < 0x80) return [value, at];
    if (shift > 35) throw new Error("LEB128 too long");
  }
}

function u32(value) {
  const out = [];
  do {
    let b = value & 0x7f;
    value = Math.floor(value / 128);
    if (value !== 0) b |= 0x80;
    out.push(b);
  } while (value !== 0);
  return out;
}

function name(text) {
  const bytes = Buffer.from(text, "utf8");
  return [...u32(bytes.length), ...bytes];
}

function section(id, payload) {
  return Buffer.from([id, ...u32(payload.length), ...payload]);
}

const SECTION_ALIAS = 6;
const SECTION_EXPORT = 11;
const SORT_FUNC = 0x01;
const ALIAS_INSTANCE_EXPORT = 0x00;

/** A one-item alias section `(alias export $instance "name" (func))`, or
 *  null. */
function parseAlias(payload) {
  try {
    let [count, at] = readU32(payload, 0);
    if (count !== 1 || payload[at] !== SORT_FUNC || payload[at + 1] !== ALIAS_INSTANCE_EXPORT) return null;
    let instance;
    [instance, at] = readU32(payload, at + 2);
    let len;
    [len, at] = readU32(payload, at);
    const text = payload.subarray(at, at + len).toString("utf8");
    return at + len === payload.length ? { instance, name: text } : null;
  } catch {
    return null;
  }
}

/** A one-item export section `(export "name" (func $index))` without a
 *  type ascription, or null. */
function parseExport(payload) {
  try {
    let [count, at] = readU32(payload, 0);
    if (count !== 1 || payload[at] !== 0x00) return null;
    let len;
    [len, at] = readU32(payload, at + 1);
    const text = payload.subarray(at, at + len).toString("utf8");
    at += len;
    if (payload[at] !== SORT_FUNC) return null;
    let index;
    [index, at] = readU32(payload, at + 1);
    return payload[at] === 0x00 && at + 1 === payload.length ? { name: text, index } : null;
  } catch {
    return null;
  }
}

/** Drop the runtime's `init` re-export and export `sluice-init` as `init`. */
function fixExports(bytes) {
  const header = Buffer.from([0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00]);
  if (bytes.length < 8 || !bytes.subarray(0, 8).equals(header)) {
    throw new Error("not a WebAssembly component");
  }
  const sections = [];
  let at = 8;
  while (at < bytes.length) {
    const id = bytes[at];
    const [size, start] = readU32(bytes, at + 1);
    sections.push({ id, start: at, payload: bytes.subarray(start, start + size) });
    at = start + size;
  }
  // The tail: (alias, export) pairs re-exporting the wrapped component's
  // functions, the last sections of the file.
  const pairs = [];
  let cut = sections.length;
  while (cut >= 2) {
    const [a, e] = [sections[cut - 2], sections[cut - 1]];
    const alias = a.id === SECTION_ALIAS ? parseAlias(a.payload) : null;
    const exp = e.id === SECTION_EXPORT ? parseExport(e.payload) : null;
    if (!alias || !exp || alias.name !== exp.name) break;
    pairs.unshift({ alias, exp });
    cut -= 2;
  }
  const names = pairs.map((p) => p.alias.name).sort().join(",");
  if (names !== ["handle", "init", RENAMED].sort().join(",")) {
    throw new Error(`unexpected component exports [${names}]; expected handle, init and ${RENAMED}`);
  }
  // Each alias adds a function, each export another: the first alias of the
  // tail is the function the first export names.
  const first = pairs[0].exp.index;
  const tail = [];
  for (const { alias, exp } of pairs) {
    if (alias.name === "init") continue;
    const index = first + tail.length;
    tail.push(
      section(SECTION_ALIAS, [1, SORT_FUNC, ALIAS_INSTANCE_EXPORT, ...u32(alias.instance), ...name(alias.name)]),
      section(SECTION_EXPORT, [1, 0x00, ...name(exp.name === RENAMED ? "init" : exp.name), SORT_FUNC, ...u32(index), 0x00]),
    );
  }
  const keep = cut < sections.length ? sections[cut].start : bytes.length;
  return Buffer.concat([bytes.subarray(0, keep), ...tail]);
}

// --- main ----------------------------------------------------------------

let tmp = null;
let entry = null;
try {
  const args = parseArgs(process.argv.slice(2));
  const handler = path.resolve(args.js);
  if (!fs.existsSync(handler)) fail(`no such file: ${handler}`);
  const moduleRoot = path.resolve(args["module-root"] || path.dirname(handler));
  const { componentize } = await import(pathToFileURL(findComponentizeQjs()).href);
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "sluice-js-"));
  const wit = renamedWit(path.resolve(args.wit), tmp);
  // The entry module only re-exports, so the handler's own imports resolve
  // from its folder as usual. It has to be a file beside the handler (the
  // loader resolves `./handler.js` from the entry's path).
  entry = path.join(path.dirname(handler), `.sluice-entry-${process.pid}.js`);
  const source = `export { init as ${RENAMED_JS}, handle } from ${JSON.stringify(`./${path.basename(handler)}`)};\n`;
  fs.writeFileSync(entry, source);
  const { component } = await componentize({
    witPath: wit,
    jsSource: source,
    jsPath: entry,
    moduleRoot,
    world: "handler",
    // Sluice calls guests synchronously; the async runtime would need the
    // component-model async ABI.
    sync: true,
  });
  const fixed = fixExports(component);
  const out = path.resolve(args.out);
  const partial = `${out}.tmp.${process.pid}`;
  fs.writeFileSync(partial, fixed);
  fs.renameSync(partial, out);
} catch (err) {
  process.stderr.write(`build-handler: ${err && err.message ? err.message : String(err)}\n`);
  process.exitCode = 1;
} finally {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  if (entry) fs.rmSync(entry, { force: true });
}
