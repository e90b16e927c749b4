// Reference plugin `transform` in JavaScript: reshape JSON object payloads.
//
// The same plugin as plugins/transform (Rust), key for key and byte for
// byte; both pass plugins/transform/cases.json. Configuration (flat keys;
// paths are dot paths such as `user.name`):
//
// - `rename.<from> = "<to>"`: move the value at `<from>` to `<to>`; a
//   missing `<from>` is left alone.
// - `remove = "p1,p2"`: delete these paths (comma-separated).
// - `set.<path> = "<value>"`: put a value at `<path>`; the value is JSON
//   when it parses (`42`, `true`, `{"a":1}`, `"\"quoted\""`), else the text.
//
// Renames run first (in config order), then removals, then sets. Subject and
// headers pass unchanged; the payload is written back as compact JSON. A
// payload that is not a JSON object is dead-lettered.

import {
  GuestError,
  MISSING,
  checkPath,
  copyJson,
  dumpJson,
  exportHandler,
  parseJson,
  removePath,
  setPath,
  stripWs,
} from "../lib/sluice-guest.js";


/** The edits of one stage, parsed and checked once in `init`. */
class Transform {
  constructor(config) {
    config.rejectUnknown(["rename.*", "remove", "set.*"]);
    this.renames = config.withPrefix("rename.").map(([from, to]) => {
      checked(`rename.${from}`, from);
      checked(`rename.${from}`, to);
      return [from, to];
    });
    const listed = config.get("remove");
    this.removals = listed === undefined ? [] : listed.split(",").map((path) => checked("remove", stripWs(path)));
    this.sets = config.withPrefix("set.").map(([path, raw]) => {
      checked(`set.${path}`, path);
      return [path, literal(raw)];
    });
  }

  handle(origin, msg) {
    let payload;
    try {
      payload = parseJson(msg.payload);
    } catch (err) {
      if (err instanceof GuestError) return { tag: "dead-letter", val: `payload is not valid JSON: ${err.message}` };
      throw err;
    }
    if (!(payload instanceof Map)) return { tag: "dead-letter", val: "payload is not a JSON object" };
    try {
      for (const [from, to] of this.renames) {
        const value = removePath(payload, from);
        if (value !== MISSING) setPath(payload, to, value);
      }
      for (const path of this.removals) removePath(payload, path);
      // A copy: a later set may write into this value, and the literal
      // serves every message.
      for (const [path, value] of this.sets) setPath(payload, path, copyJson(value));
    } catch (err) {
      if (err instanceof GuestError) return { tag: "dead-letter", val: err.message };
      throw err;
    }
    return { tag: "next", val: { subject: msg.subject, headers: msg.headers, payload: dumpJson(payload) } };
  }
}

/** `path` if it is a usable dot path, else an error naming the key. */
function checked(key, path) {
  try {
    checkPath(path);
  } catch (err) {
    throw new GuestError(`config key "${key}": ${err.message}`);
  }
  return path;
}

/** A `set.` value: JSON if it parses, otherwise the text itself. */
function literal(raw) {
  try {
    return parseJson(raw);
  } catch {
    return raw;
  }
}

export const { init, handle } = exportHandler(Transform);
