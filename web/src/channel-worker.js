// The encrypted channel's service worker. Installed by the app's page for the app's own
// origin (the widget's `data-channel`, or navigator.serviceWorker.register with the same
// query), it fetches the gateway's attestation bundle, verifies it with the policy in its own
// script URL (quote, measurements, binding: verify.js; not the TLS keys, which the channel
// does not rely on), takes the channel key from the
// verified claims only, and from then on sends every request of the page to its own origin
// sealed (Oblivious HTTP of Binary HTTP, ohttp.js / bhttp.js) and opens the answers. If the
// bundle does not verify there is no fallback to plain requests: each fails, a navigation
// with a page that names the failed step. Other origins and the gateway's own
// /.well-known/gatehouse/ paths are left alone. The outer request carries no cookies
// (credentials omitted): what the page sends travels inside the seal or not at all.
import { verifyBundle, fromBase64 } from './verify.js';
import { SIMULATOR_ROOT_CA_B64 } from './roots.js';
import { decodeResponse, encodeRequest } from './bhttp.js';
import { firstKey, openResponse, sealRequest, REQUEST_MEDIA_TYPE } from './ohttp.js';

const BUNDLE_PATH = '/.well-known/gatehouse/attestation';
const CHANNEL_PATH = '/.well-known/gatehouse/channel';
const STATUS_PATH = '/.well-known/gatehouse/channel-status';
const RESERVED = '/.well-known/gatehouse/';
// Fields that belong to a hop, or that the browser sets and the seal must not repeat.
const SKIP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'te', 'upgrade', 'host', 'content-length', 'cookie', 'set-cookie', 'set-cookie2']);

/** The policy the worker was registered with (its script URL's query). */
export function policyFrom(search) {
  const q = new URLSearchParams(search);
  const list = (k) => (q.get(k) || '').split(/[\s,]+/).filter(Boolean);
  const policy = {};
  for (const k of ['mrtd', 'rtmr0', 'rtmr1', 'rtmr2', 'rtmr3']) if (q.get(k)) policy[k] = list(k);
  if (q.get('events')) policy.events = Object.fromEntries(list('events').map((kv) => kv.split('=', 2)));
  if (q.get('tcb_statuses')) policy.tcb_statuses = list('tcb_statuses');
  const simulator = q.has('insecure_trust_simulator_root');
  return {
    policy,
    acceptAnyMeasurements: q.has('accept_any_measurements'),
    simulator,
    simulatorRootDer: simulator ? fromBase64(SIMULATOR_ROOT_CA_B64) : undefined,
  };
}

/** Verifies the bundle and takes the channel key from its claims: {key} or {failed, detail}. */
export async function establish(fetchBundle, options) {
  let bundle;
  try {
    bundle = await fetchBundle();
  } catch (e) {
    return { failed: 'fetch', detail: `the attestation bundle could not be read: ${e.message}` };
  }
  const report = await verifyBundle(bundle, options);
  // The channel needs the TEE and its claims, not the TLS keys: it does not trust TLS.
  const bad = report.steps.find((s) => s.status === 'fail' && ['quote', 'policy', 'binding'].includes(s.step));
  if (bad) return { failed: bad.step, detail: bad.detail, report };
  const claim = bundle.claims && bundle.claims.channel;
  if (!claim || !claim.ohttp_keys) return { failed: 'channel', detail: 'the attested claims carry no channel key', report };
  try {
    return { key: firstKey(fromBase64(claim.ohttp_keys)), report };
  } catch (e) {
    return { failed: 'channel', detail: e.message, report };
  }
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function failure(request, state) {
  const line = `the encrypted channel is closed: verification failed at ${state.failed}: ${state.detail}`;
  const headers = { 'cache-control': 'no-store', 'x-gatehouse-channel': `failed:${state.failed}` };
  if (request.mode === 'navigate') {
    const html = `<!doctype html><meta charset="utf-8"><title>Not sent: the channel did not verify</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:3em auto;color:#222}h1{color:#b00020}code{background:#f4f4f4}</style>
<h1>Not sent: the channel to this app's TEE did not verify</h1>
<p id="gatehouse-channel-failed" data-step="${escapeHtml(state.failed)}">Failed step: <code>${escapeHtml(state.failed)}</code></p>
<p>${escapeHtml(state.detail)}</p>
<p>Nothing was sent in plain text. Reload once the gateway verifies again.</p>`;
    return new Response(html, { status: 502, headers: { ...headers, 'content-type': 'text/html; charset=utf-8' } });
  }
  return new Response(line + '\n', { status: 502, headers: { ...headers, 'content-type': 'text/plain; charset=utf-8' } });
}

/** Sends `request` through the channel with `key`; the app's answer as a Response. */
export async function through(request, key, fetcher = fetch) {
  const url = new URL(request.url);
  const fields = [['date', new Date().toUTCString()]];
  for (const [name, value] of request.headers) if (!SKIP.has(name)) fields.push([name, value]);
  const content = ['GET', 'HEAD'].includes(request.method) ? new Uint8Array() : new Uint8Array(await request.arrayBuffer());
  const inner = encodeRequest({ method: request.method, authority: url.host, path: url.pathname + url.search, fields, content });
  const { body, context } = await sealRequest(key, inner);
  const outer = await fetcher(new URL(CHANNEL_PATH, url.origin).href, {
    method: 'POST',
    headers: { 'content-type': REQUEST_MEDIA_TYPE },
    body,
    cache: 'no-store',
    credentials: 'omit',
    redirect: 'error',
  });
  if (outer.status !== 200) {
    const why = (await outer.text()).trim();
    return new Response(`the gateway refused the channel request: ${why}\n`, { status: 502, headers: { 'content-type': 'text/plain; charset=utf-8', 'x-gatehouse-channel': 'refused' } });
  }
  const answer = decodeResponse(await openResponse(context, new Uint8Array(await outer.arrayBuffer())));
  const headers = new Headers();
  for (const [name, value] of answer.fields) if (!SKIP.has(name)) headers.append(name, value);
  headers.set('x-gatehouse-channel', 'sealed');
  const empty = request.method === 'HEAD' || [204, 205, 304].includes(answer.status);
  return new Response(empty ? null : answer.content, { status: answer.status, headers });
}

// The worker itself (not when imported by tests).
if (typeof ServiceWorkerGlobalScope !== 'undefined' && self instanceof ServiceWorkerGlobalScope) {
  const options = policyFrom(self.location.search);
  let state = null;
  const ready = () =>
    (state ??= establish(async () => {
      const r = await fetch(BUNDLE_PATH, { cache: 'no-store', credentials: 'omit' });
      if (!r.ok) throw new Error(`${BUNDLE_PATH} answered ${r.status}`);
      return r.json();
    }, { ...options, domain: self.location.hostname }));
  self.addEventListener('install', (e) => e.waitUntil(ready().then(() => self.skipWaiting())));
  self.addEventListener('activate', (e) => e.waitUntil(self.clients.claim()));
  self.addEventListener('fetch', (event) => {
    const url = new URL(event.request.url);
    if (url.origin !== self.location.origin) return;
    if (url.pathname === STATUS_PATH) {
      event.respondWith(
        ready().then((s) =>
          Response.json(s.failed ? { state: 'failed', failed: s.failed, detail: s.detail } : { state: 'sealed', keyId: s.key.id }),
        ),
      );
      return;
    }
    if (url.pathname.startsWith(RESERVED)) return;
    event.respondWith(
      ready().then((s) => (s.failed ? failure(event.request, s) : through(event.request, s.key))).catch((e) =>
        failure(event.request, { failed: 'channel', detail: e.message }),
      ),
    );
  });
}
