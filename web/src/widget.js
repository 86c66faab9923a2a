// The badge an app embeds in its own page:
//
//   <script src="https://attest.<base>/widget.js" integrity="sha384-…" crossorigin="anonymous"
//           data-mrtd="<hex>[,<hex>…]"></script>
//
// It fetches the gateway's bundle (from the script's own origin unless `data-bundle` names
// another URL), verifies it for the page's host name (or `data-domain`) under the measurement
// policy in its attributes, and shows a badge right after the script tag (or inside the
// element `data-target` names): green when the domain's keys are attested, amber when the TEE
// and keys verify but CT or CAA do not close the domain, red with the failing step otherwise.
//
// Attributes: data-mrtd, data-rtmr0 … data-rtmr3 (allowed values, comma separated),
// data-events (RTMR3 runtime events that must be present: `name=hexpayload`, comma separated;
// the event log is replayed against the quote),
// data-tcb-statuses (accepted besides UpToDate), data-allow-debug,
// data-accept-any-measurements (no pins: says so), data-insecure-trust-simulator-root
// (development only: says so), data-domain, data-bundle, data-target, data-open (details open),
// data-channel (install the encrypted channel's service worker for this page's origin, under
// the same policy, and show whether the page's requests travel sealed through it).
//
// The host element carries data-state (pending | attested | verified | failed),
// data-failed (the failing step), data-channel (sealed | failed | pending | unsupported, with
// data-channel), and `.gatehouseReport` (the verifier's whole report); a
// `gatehouse-attestation` event with the report as `detail` bubbles from it.

import { verifyBundle, fromBase64 } from './verify.js';
import { SIMULATOR_ROOT_CA_B64 } from './roots.js';
import { summarize, renderBadge, styleShadow } from './render.js';
import { startPage } from './page.js';

const BUNDLE_PATH = '/.well-known/gatehouse/attestation';

function list(value) {
  return (value || '').split(/[\s,]+/).filter(Boolean);
}

/** The options the script tag's attributes ask for. */
export function optionsFrom(data, scriptSrc, pageHost) {
  const policy = {};
  for (const k of ['mrtd', 'rtmr0', 'rtmr1', 'rtmr2', 'rtmr3']) {
    if (data[k]) policy[k] = list(data[k]);
  }
  if (data.events) {
    policy.events = Object.fromEntries(list(data.events).map((kv) => kv.split('=', 2)));
  }
  if (data.tcbStatuses) policy.tcb_statuses = list(data.tcbStatuses);
  if ('allowDebug' in data) policy.allow_debug = true;
  const simulator = 'insecureTrustSimulatorRoot' in data;
  return {
    domain: (data.domain || pageHost).toLowerCase(),
    bundleUrl: new URL(data.bundle || BUNDLE_PATH, data.bundle ? document.baseURI : scriptSrc).href,
    policy,
    acceptAnyMeasurements: 'acceptAnyMeasurements' in data,
    simulator,
    simulatorRootDer: simulator ? fromBase64(SIMULATOR_ROOT_CA_B64) : undefined,
    open: 'open' in data,
    channel: 'channel' in data,
    workerQuery: workerQuery(data),
  };
}

const WORKER_PATH = '/.well-known/gatehouse/channel-worker.js';
const STATUS_PATH = '/.well-known/gatehouse/channel-status';

/** The channel worker's policy, as its script URL's query (channel-worker.js reads it). */
function workerQuery(data) {
  const q = new URLSearchParams();
  for (const k of ['mrtd', 'rtmr0', 'rtmr1', 'rtmr2', 'rtmr3', 'events']) if (data[k]) q.set(k, list(data[k]).join(','));
  if (data.tcbStatuses) q.set('tcb_statuses', list(data.tcbStatuses).join(','));
  if ('acceptAnyMeasurements' in data) q.set('accept_any_measurements', '');
  if ('insecureTrustSimulatorRoot' in data) q.set('insecure_trust_simulator_root', '');
  return q.toString();
}

/**
 * Installs the channel's worker for this origin and asks it how this page's requests travel:
 * {state: sealed | failed | pending | unsupported, detail}.
 */
async function channelState(opts) {
  if (!('serviceWorker' in navigator)) return { state: 'unsupported', detail: 'this browser has no service workers: requests go over TLS only' };
  try {
    await navigator.serviceWorker.register(`${WORKER_PATH}?${opts.workerQuery}`, { scope: '/' });
  } catch (e) {
    return { state: 'failed', detail: `the channel worker could not be installed: ${e.message}` };
  }
  if (!navigator.serviceWorker.controller) {
    return { state: 'pending', detail: 'installed: the requests of this page load went over TLS only; the next ones are sealed' };
  }
  const s = await fetch(STATUS_PATH, { cache: 'no-store' }).then((r) => r.json()).catch(() => ({ state: 'failed', detail: 'no answer from the channel worker' }));
  if (s.state === 'sealed') return { state: 'sealed', detail: `this page's requests are sealed to the TEE's key ${s.keyId} (end to end, past any TLS interception)` };
  return { state: 'failed', detail: s.failed ? `verification failed at ${s.failed}: ${s.detail}` : s.detail };
}

async function run(host, shadow, opts) {
  host.dataset.state = 'pending';
  renderBadge(shadow, null);
  let report;
  try {
    const resp = await fetch(opts.bundleUrl, { cache: 'no-store', credentials: 'omit' });
    if (!resp.ok) throw new Error(`${opts.bundleUrl} answered ${resp.status}`);
    const bundle = await resp.json();
    report = await verifyBundle(bundle, opts);
  } catch (e) {
    report = {
      verified: false,
      domainAttested: false,
      failed: 'fetch',
      steps: [{ step: 'fetch', status: 'fail', detail: `the bundle could not be read: ${e.message}` }],
      measurements: null,
    };
  }
  const summary = summarize(report, opts.domain, opts.simulator);
  renderBadge(shadow, summary, { open: opts.open });
  if (opts.channel) {
    const ch = await channelState(opts);
    host.dataset.channel = ch.state;
    const status = { sealed: 'ok', failed: 'fail' }[ch.state] || 'skip';
    summary.rows.push({ step: 'channel', status, label: 'Channel', detail: ch.detail });
    renderBadge(shadow, summary, { open: opts.open });
  }
  host.gatehouseReport = report;
  host.dataset.state = summary.state;
  if (report.failed) host.dataset.failed = report.failed;
  host.dispatchEvent(new CustomEvent('gatehouse-attestation', { detail: report, bubbles: true }));
}

(function start() {
  const script = document.currentScript;
  if (!script) return; // loaded as a module or injected late: nothing to attach to
  if ('page' in script.dataset) return startPage(); // the verification page's own tag
  const opts = optionsFrom(script.dataset, script.src, location.hostname);
  const host = document.createElement('div');
  host.setAttribute('data-gatehouse-badge', '');
  const shadow = host.attachShadow({ mode: 'open' });
  styleShadow(shadow);
  const place = () => {
    const target = script.dataset.target && document.getElementById(script.dataset.target);
    if (target) target.append(host);
    else if (script.closest('body')) script.after(host);
    else document.body.prepend(host); // a script in <head>: the badge goes first in the body
  };
  const later = script.dataset.target || !script.closest('body');
  if (!later || document.readyState !== 'loading') place();
  else document.addEventListener('DOMContentLoaded', place, { once: true });
  run(host, shadow, opts);
})();
