// Reference plugin `route` in JavaScript: choose output subjects by content
// and subject.
//
// The same plugin as plugins/route (Rust); both pass plugins/route/cases.json.
// Each message is published, unchanged, to every subject the matching rules
// name. Config keys:
//
// - `rule.<N>.field` + `rule.<N>.equals`: the JSON value at the dot path is
//   a string equal to the text, or a number or boolean whose JSON text
//   equals it;
// - `rule.<N>.subject`: a NATS subject pattern (`*` one token, final `>` one
//   or more) the input subject matches;
// - `rule.<N>.to`: comma-separated output subjects (required); `{tenant}`
//   becomes the tenant;
// - `mode`: `first` (default) or `all`;
// - `unmatched`: `dead-letter` (default) or an output subject.
//
// A rule needs at least one condition; with both, both must hold. Rules run
// in numeric order of `N`. A message no rule matches goes to `unmatched` or
// is dead-lettered with `no route matched subject <subject>`.

import {
  GuestError,
  JsonFloat,
  MISSING,
  checkPath,
  exportHandler,
  getPath,
  hasWs,
  parseJson,
  parseU64,
  scalarText,
  stripWs,
} from "../lib/sluice-guest.js";

const TENANT = "{tenant}";
const ACCEPTED = ["mode", "unmatched", "rule.<N>.field", "rule.<N>.equals", "rule.<N>.subject", "rule.<N>.to"];
const ATTRIBUTES = ["field", "equals", "subject", "to"];

// --- subjects ------------------------------------------------------------------

function splitTokens(subject) {
  if (subject === "") throw new GuestError("empty subject");
  if (hasWs(subject)) throw new GuestError(`invalid subject "${subject}": contains whitespace`);
  const tokens = subject.split(".");
  if (tokens.includes("")) throw new GuestError(`invalid subject "${subject}": empty token`);
  return tokens;
}

/** A subject pattern: literal tokens, `*` for one token, a final `>` for one
 *  or more. */
class Pattern {
  constructor(pattern) {
    const tokens = splitTokens(pattern);
    tokens.forEach((token, k) => {
      if (token === ">" && k !== tokens.length - 1) {
        throw new GuestError(`invalid subject pattern "${pattern}": ">" must be the last token`);
      }
    });
    this.tokens = tokens;
  }

  matches(subject) {
    const remaining = subject.split(".");
    for (let k = 0; k < this.tokens.length; k++) {
      const token = this.tokens[k];
      if (k >= remaining.length) return false;
      if (token === ">") return true;
      if (token !== "*" && token !== remaining[k]) return false;
    }
    return remaining.length === this.tokens.length;
  }
}

function fill(template, tenant) {
  return template.split(TENANT).join(tenant);
}

/** An output subject: publishable once `{tenant}` is filled in. */
function checkTemplate(template) {
  const filled = fill(template, "tenant");
  let tokens;
  try {
    tokens = splitTokens(filled);
  } catch (err) {
    throw new GuestError(err.message.split(`"${filled}"`).join(`"${template}"`));
  }
  if (tokens.includes("*") || tokens.includes(">")) {
    throw new GuestError(`invalid output subject "${template}": wildcards cannot be published to`);
  }
}

// --- rules -----------------------------------------------------------------------

/** Run `check`, prefixing its error with the config key. */
function keyed(key, check) {
  try {
    return check();
  } catch (err) {
    if (err instanceof GuestError) throw new GuestError(`config key "${key}": ${err.message}`);
    throw err;
  }
}

class Rule {
  constructor(number, raw) {
    const key = (attr) => `rule.${number}.${attr}`;
    this.field = null;
    if (raw.field !== undefined && raw.equals !== undefined) {
      keyed(key("field"), () => checkPath(raw.field));
      this.field = [raw.field, raw.equals];
    } else if (raw.equals !== undefined) {
      throw new GuestError(`config key "${key("equals")}" needs "${key("field")}"`);
    } else if (raw.field !== undefined) {
      throw new GuestError(`config key "${key("field")}" needs "${key("equals")}"`);
    }
    this.subject = raw.subject === undefined ? null : keyed(key("subject"), () => new Pattern(raw.subject));
    if (this.field === null && this.subject === null) {
      throw new GuestError(
        `rule ${number} has no condition: set "${key("field")}" (with "${key("equals")}") or "${key("subject")}"`,
      );
    }
    if (raw.to === undefined) throw new GuestError(`rule ${number} has no "${key("to")}"`);
    this.to = raw.to.split(",").map((target) => {
      const trimmed = stripWs(target);
      keyed(key("to"), () => checkTemplate(trimmed));
      return trimmed;
    });
  }

  matches(subject, payload) {
    if (this.subject !== null && !this.subject.matches(subject)) return false;
    if (this.field !== null) {
      if (payload === MISSING) return false;
      const value = getPath(payload, this.field[0]);
      if (value === MISSING || !valueEquals(value, this.field[1])) return false;
    }
    return true;
  }
}

/** A string compares as itself, a number or boolean as its JSON text; null,
 *  arrays and objects never match. */
function valueEquals(value, text) {
  if (typeof value === "string") return value === text;
  const scalar =
    typeof value === "boolean" || typeof value === "number" || typeof value === "bigint" || value instanceof JsonFloat;
  return scalar && scalarText(value) === text;
}

function unknown(key) {
  return `unknown config key "${key}"; accepted keys: ${ACCEPTED.join(", ")}`;
}

/** `rule.<N>.<attr>` as `[N, attr]`, N a BigInt (rule numbers are u64). */
function ruleKey(key) {
  if (!key.startsWith("rule.")) throw new GuestError(unknown(key));
  const rest = key.slice("rule.".length);
  const dot = rest.indexOf(".");
  if (dot < 0) throw new GuestError(unknown(key));
  const number = rest.slice(0, dot);
  // Only plain digits: `+1` or ` 1` are typos, not rule 1.
  const parsed = parseU64(number);
  if (parsed === null) {
    throw new GuestError(`config key "${key}": rule number "${number}" is not a non-negative integer`);
  }
  return [parsed, rest.slice(dot + 1)];
}

/** The parsed table: rules in numeric order, mode, unmatched target. */
class Routes {
  constructor(config) {
    const raw = new Map();
    for (const [key, value] of config.entries) {
      if (key === "mode" || key === "unmatched") continue;
      const [number, attr] = ruleKey(key);
      if (!ATTRIBUTES.includes(attr)) throw new GuestError(unknown(key));
      const id = number.toString();
      if (!raw.has(id)) raw.set(id, { number, attrs: {} });
      raw.get(id).attrs[attr] = value;
    }
    const numbered = [...raw.values()].sort((a, b) => (a.number < b.number ? -1 : a.number > b.number ? 1 : 0));
    this.rules = numbered.map(({ number, attrs }) => new Rule(number, attrs));
    const mode = config.get("mode", "first");
    if (mode !== "first" && mode !== "all") {
      throw new GuestError(`config key "mode": expected "first" or "all", got "${mode}"`);
    }
    this.firstOnly = mode === "first";
    const unmatched = config.get("unmatched", "dead-letter");
    this.unmatched = null;
    if (unmatched !== "dead-letter") {
      keyed("unmatched", () => checkTemplate(unmatched));
      this.unmatched = unmatched;
    }
    this.needsPayload = this.rules.some((rule) => rule.field !== null);
  }

  /** Output subjects without duplicates, or null to dead-letter. */
  targets(subject, payload, tenant) {
    const targets = [];
    let matched = false;
    for (const rule of this.rules) {
      if (!rule.matches(subject, payload)) continue;
      matched = true;
      for (const template of rule.to) {
        const target = fill(template, tenant);
        if (!targets.includes(target)) targets.push(target);
      }
      if (this.firstOnly) break;
    }
    if (matched) return targets;
    return this.unmatched === null ? null : [fill(this.unmatched, tenant)];
  }
}

class Route {
  constructor(config) {
    this.routes = new Routes(config);
  }

  handle(origin, msg) {
    // A payload that is not JSON only fails the field conditions; subject
    // rules still apply to it.
    let payload = MISSING;
    if (this.routes.needsPayload) {
      try {
        payload = parseJson(msg.payload);
      } catch (err) {
        if (!(err instanceof GuestError)) throw err;
      }
    }
    const targets = this.routes.targets(msg.subject, payload, origin.tenant);
    if (targets === null) return { tag: "dead-letter", val: `no route matched subject ${msg.subject}` };
    return {
      tag: "publish",
      val: targets.map((subject) => ({ subject, headers: msg.headers, payload: msg.payload })),
    };
  }
}

export const { init, handle } = exportHandler(Route);
