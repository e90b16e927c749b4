// {{name}}: a Sluice handler in JavaScript (QuickJS, through
// componentize-qjs).
//
// The host calls `init` once per instance with the stage's config, then
// `handle` once per message; the verdict (`{ tag: "next", val: msg }`,
// `"publish"` with a list, `"ack"`, `"dead-letter"` with a reason, `"retry"`
// with a delay in ms) decides what happens to the message. See
// wit/pipeline.wit for the contract. A message is `{ subject, headers,
// payload }` with the payload a Uint8Array; the origin is `{ tenant,
// stream, streamSeq, delivered, publishedMs }`.

import { log } from "sluice:pipeline/host@0.1.0";

/** An error is a thrown string: it rejects the stage config. */
export function init(config) {
  // Refuse what you do not understand: a typo in the stage config then
  // fails `sluice check` instead of being ignored.
  for (const [key] of config) {
    throw `unknown config key "${key}"; this plugin takes no configuration`;
  }
}

export function handle(origin, msg) {
  log("debug", `${msg.subject} for ${origin.tenant}`);
  // Pass the message on unchanged to the next stage.
  return { tag: "next", val: msg };
}
