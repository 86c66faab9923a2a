// RTMR3 replay, as attest/src/eventlog.rs does it: a runtime event's digest is recomputed from
// its name and payload (v1: SHA-384(type LE ‖ ":" ‖ name ‖ ":" ‖ payload); v2: SHA-384(JCS of
// {name, payload: hex, type})), other events are extended as given, and RTMR3 =
// SHA-384(rtmr ‖ digest) folded over the IMR-3 events from 48 zero bytes. Then each runtime
// payload is as measured as the quote itself, and a policy may pin events by name.

import canonicalize from 'canonicalize';
import { hex, fromHex } from './hex.js';

export const RUNTIME_EVENT_TYPE = 0x08000001;
const enc = new TextEncoder();

async function sha384(...parts) {
  const len = parts.reduce((n, p) => n + p.length, 0);
  const all = new Uint8Array(len);
  let at = 0;
  for (const p of parts) {
    all.set(p, at);
    at += p.length;
  }
  return new Uint8Array(await globalThis.crypto.subtle.digest('SHA-384', all));
}

const isRuntime = (e) => e.imr === 3 && e.event_type === RUNTIME_EVENT_TYPE;

async function runtimeDigest(e) {
  const version = e.version ?? 1;
  const payload = fromHex(e.event_payload || '');
  if (version === 1) {
    const type = new Uint8Array(4);
    new DataView(type.buffer).setUint32(0, RUNTIME_EVENT_TYPE, true);
    return sha384(type, enc.encode(':'), enc.encode(e.event || ''), enc.encode(':'), payload);
  }
  if (version === 2) {
    const jcs = canonicalize({ name: e.event || '', payload: hex(payload), type: RUNTIME_EVENT_TYPE });
    return sha384(enc.encode(jcs));
  }
  throw new Error(`event:${e.event}: unknown runtime-event version ${version}`);
}

/** The digest `e` extends its RTMR with; throws when a runtime event's digest lies. */
async function extendedDigest(e) {
  if (e.event_type !== RUNTIME_EVENT_TYPE) return fromHex(e.digest || '');
  const computed = await runtimeDigest(e);
  if (e.digest && e.digest.toLowerCase() !== hex(computed)) {
    throw new Error(`event:${e.event}: the event's digest is not the digest of its payload`);
  }
  return computed;
}

/** Folds the events of `imr` into an RTMR value (hex). */
export async function replay(events, imr) {
  let rtmr = new Uint8Array(48);
  for (const e of events.filter((x) => x.imr === imr)) {
    const digest = await extendedDigest(e);
    if (digest.length !== 48) throw new Error(`event ${JSON.stringify(e.event)} has a ${digest.length}-byte digest`);
    rtmr = await sha384(rtmr, digest);
  }
  return hex(rtmr);
}

/**
 * Checks that the IMR-3 events replay to `rtmr3` (hex) and that each pinned event (name →
 * hex payload) is there once with that payload; throws naming what differs.
 */
export async function checkEvents(events, rtmr3, pins) {
  const replayed = await replay(events, 3);
  if (replayed !== rtmr3) throw new Error(`rtmr3: the event log replays to ${replayed}, the quote has ${rtmr3}`);
  for (const [name, payload] of Object.entries(pins || {})) {
    const found = events.filter((e) => isRuntime(e) && e.event === name);
    if (found.length === 0) throw new Error(`event:${name}: not in the event log`);
    if (found.length > 1) throw new Error(`event:${name}: ambiguous: the event log has this runtime event more than once`);
    const got = (found[0].event_payload || '').toLowerCase();
    if (got !== payload.toLowerCase()) throw new Error(`event:${name}: payload ${got} is not the allowed ${payload}`);
  }
}
