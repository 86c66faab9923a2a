// The verification page served at https://attest.<base>/ (its script tag is the widget's,
// marked `data-page`: one script for both, so the binary and the browser cache hold one copy
// of the verifier): a person types a domain (and the
// measurements they trust); the page fetches a bundle (the one named, else the domain's own
// /.well-known/gatehouse/attestation, else this gateway's), verifies it in the browser and
// shows each step. `?domain=<name>` fills the form and verifies at once.

import { verifyBundle, fromBase64 } from './verify.js';
import { SIMULATOR_ROOT_CA_B64 } from './roots.js';
import { summarize, renderBadge, styleShadow } from './render.js';

const BUNDLE_PATH = '/.well-known/gatehouse/attestation';
const $ = (id) => document.getElementById(id);

/** The first bundle that answers among `urls`: [url, bundle]. */
async function fetchBundle(urls) {
  const errors = [];
  for (const url of urls) {
    try {
      const resp = await fetch(url, { cache: 'no-store', credentials: 'omit', signal: AbortSignal.timeout(5000) });
      if (!resp.ok) throw new Error(`answered ${resp.status}`);
      return [url, await resp.json()];
    } catch (e) {
      errors.push(`${url}: ${e.message}`);
    }
  }
  throw new Error(errors.join('; '));
}

function bundleUrls(domain) {
  const named = $('bundle').value.trim();
  if (named) return [new URL(named, location.href).href];
  const own = `https://${domain}${BUNDLE_PATH}`;
  const here = new URL(BUNDLE_PATH, location.href).href;
  return own === here ? [here] : [own, here];
}

function showMeasurements(m) {
  const table = $('measurements');
  table.replaceChildren();
  if (!m) return;
  for (const [k, v] of Object.entries(m)) {
    const tr = document.createElement('tr');
    const a = document.createElement('td');
    const b = document.createElement('td');
    a.textContent = k;
    b.textContent = v;
    tr.append(a, b);
    table.append(tr);
  }
}

async function verify(shadow) {
  const domain = $('domain').value.trim().toLowerCase().replace(/\.$/, '');
  if (!domain) return;
  const simulator = $('sim').checked;
  const opts = {
    domain,
    policy: { mrtd: $('mrtd').value.split(/[\s,]+/).filter(Boolean) },
    acceptAnyMeasurements: $('any').checked,
    simulatorRootDer: simulator ? fromBase64(SIMULATOR_ROOT_CA_B64) : undefined,
  };
  document.body.dataset.state = 'pending';
  $('result').hidden = false;
  renderBadge(shadow, null);
  let report;
  try {
    const [url, bundle] = await fetchBundle(bundleUrls(domain));
    $('source').textContent = `Bundle from ${url}`;
    report = await verifyBundle(bundle, opts);
  } catch (e) {
    $('source').textContent = 'No bundle could be read.';
    report = {
      verified: false,
      domainAttested: false,
      failed: 'fetch',
      steps: [{ step: 'fetch', status: 'fail', detail: e.message }],
      measurements: null,
    };
  }
  const summary = summarize(report, domain, simulator);
  renderBadge(shadow, summary, { open: true });
  showMeasurements(report.measurements);
  document.body.dataset.state = summary.state;
  document.body.dataset.failed = report.failed || '';
}

/** The widget's script tag for this gateway, with its SHA-384 for Subresource Integrity. */
async function showSnippet() {
  const src = new URL('/widget.js', location.href).href;
  let integrity = '';
  try {
    const body = await (await fetch(src, { cache: 'no-store' })).arrayBuffer();
    const digest = new Uint8Array(await crypto.subtle.digest('SHA-384', body));
    integrity = ` integrity="sha384-${btoa(String.fromCharCode(...digest))}" crossorigin="anonymous"`;
  } catch {
    // the snippet without a hash
  }
  $('snippet').textContent = `<script src="${src}"${integrity}\n        data-mrtd="<the MRTD you trust>"></script>`;
}

/** Attaches the page's handlers once the document is parsed. */
export function startPage() {
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', attach, { once: true });
  else attach();
}

function attach() {
  const host = $('badge');
  const shadow = host.attachShadow({ mode: 'open' });
  styleShadow(shadow);
  $('form').addEventListener('submit', (e) => {
    e.preventDefault();
    verify(shadow);
  });
  showSnippet();
  const q = new URLSearchParams(location.search);
  document.body.dataset.ready = '1';
  if (q.get('domain')) {
    $('domain').value = q.get('domain');
    verify(shadow);
  }
}
