// Helpers for Sluice handlers written in JavaScript: the JS counterpart of
// the Rust `guest-sdk`, shared by the reference plugins in plugins/js/.
//
// It owns what a handler needs beyond the WIT types:
//
// - `exportHandler`: the world's `init` and `handle` for a handler class,
//   the counterpart of the Rust SDK's `export_handler!`;
// - `Config`: the stage configuration (`get`, `withPrefix`, `rejectUnknown`)
//   with the Rust SDK's error texts;
// - `parseJson` / `dumpJson`: JSON with the same rules as the Rust plugins'
//   serde_json. `JSON.parse` cannot serve: it loses integer precision past
//   2^53, turns `1.0` into `1`, and orders integer-like object keys first.
//   Here objects are `Map`s (insertion order), integers are numbers (or
//   BigInts past 2^53), other numbers are `JsonFloat`s, and the writer uses
//   serde_json's number format, so a JS plugin writes the same bytes as its
//   Rust twin;
// - `checkPath`, `getPath`, `setPath`, `removePath`: dot paths into parsed
//   JSON (`MISSING` for absent, as opposed to JSON null);
// - `decodeUtf8`, `encodeUtf8`: strict UTF-8 (QuickJS has no TextDecoder);
// - `stripWs`, `hasWs`: whitespace as Rust's `char::is_whitespace` sees it.
//
// No state, no imports: it runs in Node too. Failures meant for a verdict
// or an `init` refusal are thrown as `GuestError`.

/** A failure whose message is a dead-letter reason or an `init` refusal. */
export class GuestError extends Error {}

// --- exports ------------------------------------------------------------------

/** The reason `handle` dead-letters with before a successful `init`, as the
 *  Rust SDK words it. The host never does this, but a stray call must not
 *  trap. */
export const NOT_INITIALISED = "handler was not initialised";

/** The world's exports for `HandlerClass`:
 *
 *      class Greet {
 *        constructor(config) { config.rejectUnknown(["greeting"]); ... }  // a `Config`
 *        handle(origin, msg) { return { tag: "next", val: msg }; }
 *      }
 *      export const { init, handle } = exportHandler(Greet);
 *
 *  `init` builds `new HandlerClass(new Config(config))`; a `GuestError` it
 *  throws refuses the config with its message (the world wants a thrown
 *  string), and the previous handler (if any) stays. `handle` before a
 *  successful `init` dead-letters with `NOT_INITIALISED`. A retry delay
 *  past 2^31 - 1 ms reaches the host as 2^31 - 1 (componentize-qjs 0.4.5
 *  lowers a u32 through an i32). */
export function exportHandler(HandlerClass) {
  let handler = null;
  return {
    init(config) {
      try {
        handler = new HandlerClass(new Config(config));
      } catch (err) {
        throw err instanceof GuestError ? err.message : err;
      }
    },
    handle(origin, msg) {
      if (handler === null) return { tag: "dead-letter", val: NOT_INITIALISED };
      // componentize-qjs 0.4.5 lifts a u32 past 2^31 - 1 as a negative
      // number; `>>> 0` reads the same bits back as the u32 the host sent.
      origin.delivered >>>= 0;
      return handler.handle(origin, msg);
    },
  };
}

/** The absence of a value, as opposed to JSON null. */
export const MISSING = Symbol("missing");

/** A JSON number that is not an integer, kept apart so `1.0` stays `1.0`. */
export class JsonFloat {
  constructor(value) {
    this.value = value;
  }
}

// --- whitespace ---------------------------------------------------------------

// Unicode White_Space, as Rust's `char::is_whitespace` and `str::trim` use
// it. JavaScript's `\s` and `trim` differ (they include U+FEFF, exclude
// U+0085), so the plugins accept and refuse the same config with this set.
const WS = "\\t\\n\\v\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const HAS_WS = new RegExp(`[${WS}]`);
const TRIM = new RegExp(`^[${WS}]+|[${WS}]+$`, "g");

/** `text` without leading and trailing whitespace (Rust's `str::trim`). */
export function stripWs(text) {
  return text.replace(TRIM, "");
}

/** Whether `text` contains any whitespace character. */
export function hasWs(text) {
  return HAS_WS.test(text);
}

// --- configuration -------------------------------------------------------------

/** The configuration of one stage: `[key, value]` pairs in host order. */
export class Config {
  constructor(entries) {
    this.entries = entries.map(([k, v]) => [String(k), String(v)]);
  }

  /** The value of `key` (the last one when it repeats), or `fallback`. */
  get(key, fallback = undefined) {
    for (let i = this.entries.length - 1; i >= 0; i--) {
      if (this.entries[i][0] === key) return this.entries[i][1];
    }
    return fallback;
  }

  /** `[rest, value]` for every key starting with `prefix`, in order. */
  withPrefix(prefix) {
    return this.entries.filter(([k]) => k.startsWith(prefix)).map(([k, v]) => [k.slice(prefix.length), v]);
  }

  /** Refuse the first key `accepted` does not allow: an exact key, or a
   *  prefix pattern ending in `.*` that needs something after the prefix. */
  rejectUnknown(accepted) {
    for (const [key] of this.entries) {
      if (accepted.some((pattern) => accepts(pattern, key))) continue;
      let message = `unknown config key "${key}"`;
      message += accepted.length
        ? `; accepted keys: ${accepted.join(", ")}`
        : "; this plugin takes no configuration";
      throw new GuestError(message);
    }
  }
}

function accepts(pattern, key) {
  if (pattern.endsWith("*")) {
    const prefix = pattern.slice(0, -1);
    return key.length > prefix.length && key.startsWith(prefix);
  }
  return key === pattern;
}

// --- UTF-8 -----------------------------------------------------------------------

// QuickJS has no TextDecoder/TextEncoder, and a loop over the bytes in JS
// costs ~0.1 µs a byte there. Native built-ins do the work instead: base64
// moves bytes to and from a Latin-1 string, and `escape` with
// `decodeURIComponent` (which refuses overlong forms, surrogates and code
// points past U+10FFFF, as Rust does) turns UTF-8 into text and back.
const NON_ASCII = /[^\x00-\x7f]/;
const toLatin1 =
  typeof Uint8Array.prototype.toBase64 === "function"
    ? (bytes) => atob(bytes.toBase64())
    : (bytes) => {
        let text = "";
        for (let i = 0; i < bytes.length; i += 8192) {
          text += String.fromCharCode.apply(null, bytes.subarray(i, i + 8192));
        }
        return text;
      };
const fromLatin1 =
  typeof Uint8Array.fromBase64 === "function"
    ? (text) => Uint8Array.fromBase64(btoa(text))
    : (text) => Uint8Array.from(text, (c) => c.charCodeAt(0));

/** Decode strictly (no overlongs, surrogates or values past U+10FFFF). */
export function decodeUtf8(bytes) {
  const latin1 = toLatin1(bytes);
  if (!NON_ASCII.test(latin1)) return latin1;
  try {
    return decodeURIComponent(escape(latin1));
  } catch {
    throw new GuestError("invalid UTF-8");
  }
}

/** Encode a well-formed string as UTF-8. */
export function encodeUtf8(text) {
  return fromLatin1(NON_ASCII.test(text) ? unescape(encodeURIComponent(text)) : text);
}

// --- JSON ------------------------------------------------------------------------

// serde_json keeps integers that fit in i64 or u64 exact and reads any other
// number as an f64; it refuses numbers beyond f64 and nesting 128 deep.
const I64_MIN = -(2n ** 63n);
const U64_MAX = 2n ** 64n - 1n;
const MAX_DEPTH = 128;
const NUMBER = /-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/y;
const PLAIN = /[^"\\\u0000-\u001f]*/y;
const ESCAPES = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };

// The native parser reads some texts differently from serde_json: an object
// key that is an array index (JavaScript objects order those first), a lone
// surrogate escape (accepted), nesting past serde_json's limit. The fast
// path spots them and hands the text to the exact parser below.
const INDEX = /^(?:0|[1-9][0-9]*)$/;
const REPARSE = Symbol("reparse exactly");
// The fast paths need a reviver that sees source text and `JSON.rawJSON`
// (QuickJS-ng has both; Node has them from version 21). Without them every
// text takes the exact paths.
const NATIVE_JSON = (() => {
  try {
    let seen = false;
    JSON.parse("1", (key, value, context) => {
      seen = context !== undefined && context.source === "1";
      return value;
    });
    return seen && typeof JSON.rawJSON === "function";
  } catch {
    return false;
  }
})();

/** Parse `input` (bytes or a string) as serde_json would, or throw a
 *  `GuestError` with the reason. */
export function parseJson(input) {
  const text = typeof input === "string" ? input : decodeUtf8(input);
  if (!NATIVE_JSON || tooDeep(text)) return parseExact(text);
  // The native parser is far faster than any parser written in JS here
  // (QuickJS interprets, ~0.1 µs per loop step). Its reviver sees each
  // value's source text, which keeps integers and floats apart, and turns
  // objects into Maps, bottom up.
  const reviver = text.indexOf("\\u") >= 0 ? reviveEscaped : revive;
  try {
    return JSON.parse(text, reviver);
  } catch (err) {
    if (err === REPARSE) return parseExact(text);
    if (err instanceof GuestError) throw err;
    throw new GuestError(err instanceof Error ? err.message : String(err));
  }
}

function revive(key, value, context) {
  // Array elements have index keys too; only an object's matter.
  if (key.length && key.charCodeAt(0) <= 0x39 && INDEX.test(key) && !Array.isArray(this)) {
    throw REPARSE;
  }
  if (typeof value === "number") {
    // No source for a value whose key repeats (the later one won).
    const source = context === undefined ? undefined : context.source;
    if (source === undefined) throw REPARSE;
    return numberFrom(source, value);
  }
  if (value !== null && typeof value === "object" && !Array.isArray(value)) {
    return new Map(Object.entries(value));
  }
  return value;
}

/** `revive`, for text with `\u` escapes: one may be a lone surrogate. */
function reviveEscaped(key, value, context) {
  if (!key.isWellFormed() || (typeof value === "string" && !value.isWellFormed())) throw REPARSE;
  return revive.call(this, key, value, context);
}

/** Whether brackets may nest `MAX_DEPTH` deep: there are that many. Cheap
 *  for short texts (128 levels take 256 characters). */
function tooDeep(text) {
  if (text.length < 2 * MAX_DEPTH) return false;
  let count = 0;
  for (const open of ["[", "{"]) {
    for (let at = text.indexOf(open); at >= 0; at = text.indexOf(open, at + 1)) {
      if (++count >= MAX_DEPTH) return true;
    }
  }
  return false;
}

/** A number as serde_json reads `literal`: an integer when it has no
 *  fraction or exponent and fits in i64 or u64, else a float. */
function numberFrom(literal, value) {
  if (!Number.isFinite(value)) throw new GuestError("number out of range");
  if (literal.indexOf(".") >= 0 || literal.indexOf("e") >= 0 || literal.indexOf("E") >= 0) {
    return new JsonFloat(value);
  }
  if (literal === "-0") return new JsonFloat(-0);
  // Up to 15 digits is always a safe integer.
  if (literal.length <= 15 || Number.isSafeInteger(value)) return value;
  const big = BigInt(literal);
  return big >= I64_MIN && big <= U64_MAX ? big : new JsonFloat(value);
}

/** The parser for what the native one cannot do exactly (see
 *  `parseJson`): slow in QuickJS, but exact in every case. */
function parseExact(text) {
  let i = 0;
  let depth = 0;

  const fail = (what) => {
    let line = 1;
    let column = 0;
    for (let k = 0; k < i && k < text.length; k++) {
      if (text.charCodeAt(k) === 10) {
        line += 1;
        column = 0;
      } else {
        column += 1;
      }
    }
    throw new GuestError(`${what} at line ${line} column ${column + 1}`);
  };
  const ws = () => {
    for (;;) {
      const c = text.charCodeAt(i);
      if (c === 32 || c === 10 || c === 13 || c === 9) i += 1;
      else return;
    }
  };
  const string = () => {
    // At the opening quote.
    i += 1;
    let out = "";
    for (;;) {
      PLAIN.lastIndex = i;
      PLAIN.test(text);
      out += text.slice(i, PLAIN.lastIndex);
      i = PLAIN.lastIndex;
      if (i >= text.length) fail("EOF while parsing a string");
      const c = text[i];
      if (c === '"') {
        i += 1;
        return out;
      }
      if (c !== "\\") fail("control character (\\u0000-\\u001F) found while parsing a string");
      const e = text[i + 1];
      if (e === undefined) fail("EOF while parsing a string");
      if (e !== "u") {
        if (!(e in ESCAPES)) fail("invalid escape");
        out += ESCAPES[e];
        i += 2;
        continue;
      }
      const unit = hex4(i + 2);
      i += 6;
      if (unit >= 0xdc00 && unit <= 0xdfff) fail("lone leading surrogate in hex escape");
      if (unit >= 0xd800 && unit <= 0xdbff) {
        if (text[i] !== "\\" || text[i + 1] !== "u") fail("unexpected end of hex escape");
        const low = hex4(i + 2);
        if (low < 0xdc00 || low > 0xdfff) fail("lone leading surrogate in hex escape");
        i += 6;
        out += String.fromCharCode(unit, low);
      } else {
        out += String.fromCharCode(unit);
      }
    }
  };
  const hex4 = (at) => {
    const digits = text.slice(at, at + 4);
    if (!/^[0-9a-fA-F]{4}$/.test(digits)) {
      i = at;
      fail(digits.length < 4 ? "EOF while parsing a string" : "invalid escape");
    }
    return parseInt(digits, 16);
  };
  const number = () => {
    NUMBER.lastIndex = i;
    const m = NUMBER.exec(text);
    if (!m) fail("invalid number");
    i = NUMBER.lastIndex;
    const value = Number(m[0]);
    if (!Number.isFinite(value)) fail("number out of range");
    return numberFrom(m[0], value);
  };
  const value = () => {
    ws();
    const c = text[i];
    if (c === "{") {
      if (++depth >= MAX_DEPTH) fail("recursion limit exceeded");
      i += 1;
      const map = new Map();
      ws();
      if (text[i] === "}") {
        i += 1;
        depth -= 1;
        return map;
      }
      for (;;) {
        ws();
        if (text[i] !== '"') fail(i >= text.length ? "EOF while parsing an object" : "key must be a string");
        const key = string();
        ws();
        if (text[i] !== ":") fail(i >= text.length ? "EOF while parsing an object" : "expected `:`");
        i += 1;
        map.set(key, value());
        ws();
        if (text[i] === ",") {
          i += 1;
          continue;
        }
        if (text[i] === "}") {
          i += 1;
          depth -= 1;
          return map;
        }
        fail(i >= text.length ? "EOF while parsing an object" : "expected `,` or `}`");
      }
    }
    if (c === "[") {
      if (++depth >= MAX_DEPTH) fail("recursion limit exceeded");
      i += 1;
      const list = [];
      ws();
      if (text[i] === "]") {
        i += 1;
        depth -= 1;
        return list;
      }
      for (;;) {
        list.push(value());
        ws();
        if (text[i] === ",") {
          i += 1;
          continue;
        }
        if (text[i] === "]") {
          i += 1;
          depth -= 1;
          return list;
        }
        fail(i >= text.length ? "EOF while parsing a list" : "expected `,` or `]`");
      }
    }
    if (c === '"') return string();
    if (c === "-" || (c >= "0" && c <= "9")) return number();
    for (const [word, result] of [["true", true], ["false", false], ["null", null]]) {
      if (text.startsWith(word, i)) {
        i += word.length;
        return result;
      }
    }
    return fail(i >= text.length ? "EOF while parsing a value" : "expected value");
  };

  const result = value();
  ws();
  if (i < text.length) fail("trailing characters");
  return result;
}

/** A float as serde_json writes it: the shortest text that reads back the
 *  same, decimal from 1e-5 up to 1e16 (`0.00001`, `100.0`), otherwise
 *  `1e-6` or `1.5e+16`. */
export function floatText(x) {
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  // String() gives the shortest round-trip digits; only their layout
  // differs from Rust's.
  let text = String(x);
  let sign = "";
  if (text[0] === "-") {
    sign = "-";
    text = text.slice(1);
  }
  let mantissa = text;
  let exponent = 0;
  const e = text.indexOf("e");
  if (e >= 0) {
    mantissa = text.slice(0, e);
    exponent = Number(text.slice(e + 1));
  }
  const dot = mantissa.indexOf(".");
  const whole = dot >= 0 ? mantissa.slice(0, dot) : mantissa;
  const all = whole + (dot >= 0 ? mantissa.slice(dot + 1) : "");
  let lead = 0;
  while (all[lead] === "0") lead += 1;
  const digits = all.slice(lead).replace(/0+$/, "");
  // x = 0.d1d2... * 10^(point), so d1.d2... * 10^(point - 1).
  const point = exponent + whole.length - lead;
  const exp = point - 1;
  if (exp >= -5 && exp <= 15) {
    if (exp < 0) return `${sign}0.${"0".repeat(-exp - 1)}${digits}`;
    if (digits.length <= point) return `${sign}${digits}${"0".repeat(point - digits.length)}.0`;
    return `${sign}${digits.slice(0, point)}.${digits.slice(point)}`;
  }
  const rest = digits.length > 1 ? `.${digits.slice(1)}` : "";
  return `${sign}${digits[0]}${rest}e${exp < 0 ? "-" : "+"}${Math.abs(exp)}`;
}

/** A parsed JSON scalar as serde_json writes it (`null`, `true`, `42`,
 *  `1.5`); strings are quoted. */
export function scalarText(value) {
  if (value === null) return "null";
  if (value === true) return "true";
  if (value === false) return "false";
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "bigint") return value.toString();
  if (value instanceof JsonFloat) return floatText(value.value);
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : floatText(value);
  throw new GuestError("not a JSON scalar");
}

const HAS_INDEX_KEY = Symbol("index key");

/** `value` as compact JSON bytes, written as serde_json would. */
export function dumpJson(value) {
  let text;
  try {
    if (!NATIVE_JSON) throw HAS_INDEX_KEY;
    // The native writer, with Maps as plain objects and numbers as raw
    // JSON text, unless a Map has a key a plain object would reorder.
    text = JSON.stringify(value, replace);
  } catch (err) {
    if (err !== HAS_INDEX_KEY) throw err;
    const parts = [];
    write(value, parts);
    text = parts.join("");
  }
  return encodeUtf8(text);
}

function replace(key, value) {
  if (value instanceof Map) {
    for (const k of value.keys()) if (INDEX.test(k)) throw HAS_INDEX_KEY;
    return Object.fromEntries(value);
  }
  if (value instanceof JsonFloat) return JSON.rawJSON(floatText(value.value));
  if (typeof value === "bigint") return JSON.rawJSON(value.toString());
  return value;
}

function write(value, parts) {
  if (value instanceof Map) {
    parts.push("{");
    let first = true;
    for (const [key, item] of value) {
      if (!first) parts.push(",");
      first = false;
      // JSON.stringify escapes exactly what serde_json escapes: `"`, `\`
      // and control characters (strings here never hold lone surrogates).
      parts.push(JSON.stringify(key), ":");
      write(item, parts);
    }
    parts.push("}");
  } else if (Array.isArray(value)) {
    parts.push("[");
    for (let k = 0; k < value.length; k++) {
      if (k) parts.push(",");
      write(value[k], parts);
    }
    parts.push("]");
  } else {
    parts.push(scalarText(value));
  }
}

/** A deep copy of a parsed JSON value (scalars are immutable and shared). */
export function copyJson(value) {
  if (value instanceof Map) {
    const copy = new Map();
    for (const [key, item] of value) copy.set(key, copyJson(item));
    return copy;
  }
  if (Array.isArray(value)) return value.map(copyJson);
  return value;
}

// --- dot paths ---------------------------------------------------------------------

/** Throw a `GuestError` unless `path` is usable: not empty, no empty
 *  segments. */
export function checkPath(path) {
  if (path === "") throw new GuestError("empty path");
  if (path.split(".").includes("")) throw new GuestError(`invalid path "${path}": empty segment`);
}

/** `text` as a u64 as Rust's `str::parse` reads it, but plain ASCII digits
 *  only; else null. A BigInt. */
export function parseU64(text) {
  if (!/^[0-9]+$/.test(text)) return null;
  const value = BigInt(text);
  return value <= U64_MAX ? value : null;
}

function index(segment, length) {
  const value = parseU64(segment);
  return value !== null && value < BigInt(length) ? Number(value) : null;
}

/** The value at `path`, or `MISSING`. An empty path is `value` itself. */
export function getPath(value, path) {
  if (path === "") return value;
  let current = value;
  for (const segment of path.split(".")) {
    if (current instanceof Map) {
      if (!current.has(segment)) return MISSING;
      current = current.get(segment);
    } else if (Array.isArray(current)) {
      const k = index(segment, current.length);
      if (k === null) return MISSING;
      current = current[k];
    } else {
      return MISSING;
    }
  }
  return current;
}

/** Put `item` at `path`, creating missing intermediate objects. Throws a
 *  `GuestError`, changing nothing, when an intermediate value is neither an
 *  object nor an array holding that index. */
export function setPath(value, path, item) {
  checkPath(path);
  const segments = path.split(".");
  let current = value;
  for (let depth = 0; depth < segments.length - 1; depth++) {
    const segment = segments[depth];
    if (current instanceof Map) {
      if (!current.has(segment)) current.set(segment, new Map());
      current = current.get(segment);
    } else if (Array.isArray(current)) {
      const k = index(segment, current.length);
      if (k === null) throw new GuestError(cannotSet(path, segments.slice(0, depth), noIndex(segment)));
      current = current[k];
    } else {
      throw new GuestError(cannotSet(path, segments.slice(0, depth), notAnObject(current)));
    }
  }
  const last = segments[segments.length - 1];
  const walked = segments.slice(0, -1);
  if (current instanceof Map) {
    current.set(last, item);
  } else if (Array.isArray(current)) {
    const k = index(last, current.length);
    if (k === null) throw new GuestError(cannotSet(path, walked, noIndex(last)));
    current[k] = item;
  } else {
    throw new GuestError(cannotSet(path, walked, notAnObject(current)));
  }
}

/** Remove and return the value at `path`, or `MISSING`. Object members keep
 *  their order; later array elements move down. */
export function removePath(value, path) {
  try {
    checkPath(path);
  } catch {
    return MISSING;
  }
  const dot = path.lastIndexOf(".");
  const parent = dot >= 0 ? getPath(value, path.slice(0, dot)) : value;
  const last = path.slice(dot + 1);
  if (parent instanceof Map) {
    if (!parent.has(last)) return MISSING;
    const removed = parent.get(last);
    parent.delete(last);
    return removed;
  }
  if (Array.isArray(parent)) {
    const k = index(last, parent.length);
    return k === null ? MISSING : parent.splice(k, 1)[0];
  }
  return MISSING;
}

function cannotSet(path, walked, what) {
  return walked.length
    ? `cannot set "${path}": "${walked.join(".")}" is ${what}`
    : `cannot set "${path}": the value is ${what}`;
}

function noIndex(segment) {
  return `an array without an element "${segment}"`;
}

function notAnObject(value) {
  let kind;
  if (value === null) kind = "null";
  else if (typeof value === "boolean") kind = "a boolean";
  else if (typeof value === "string") kind = "a string";
  else if (Array.isArray(value)) kind = "an array";
  else if (value instanceof Map) kind = "an object";
  else kind = "a number";
  return `${kind}, not an object`;
}
