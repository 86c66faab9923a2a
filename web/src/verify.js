// Verifies a Gatehouse attestation bundle (GET /.well-known/gatehouse/attestation) where a
// browser can, step by step, each step saying what it checked and nothing more:
//
//   quote    the TDX quote is genuine under the pinned root at `now` (dcap-qvl), and its TCB
//            status is one the policy accepts
//   policy   MRTD and RTMR0-3 are among the policy's values, debug off unless allowed
//   binding  report data = SHA-512("gatehouse-bundle-v1:" ‖ JCS(claims)) (RFC 8785)
//   keys     every served chain's leaf key is listed in the claims as made in the TEE, and
//            (with `domain`) one of them serves that domain
//   ct       the gateway's CT watch, as quoted: clean, alert (a foreign key was logged for our
//            names) or stale; absent when the gateway runs no watch
//   caa      the gateway's own CAA verdict for the domain, as quoted
//
// `verified` needs quote, policy, binding and keys. `domainAttested` also needs CT clean and
// CAA locked: only then does every certificate a browser could accept for the name carry an
// attested key (up to CT's merge delay and locally installed roots). A page still cannot see
// its own connection's certificate: it says "this domain's keys are attested", never "this
// connection is verified".

import { Buffer } from 'buffer'; // Node's own; the npm package in a browser bundle
import qvl from '@phala/dcap-qvl';
import canonicalize from 'canonicalize';
import { AsnConvert } from '@peculiar/asn1-schema';
import { Certificate, SubjectAlternativeName, id_ce_subjectAltName } from '@peculiar/asn1-x509';
import { INTEL_SGX_ROOT_CA_B64 } from './roots.js';
import { hex, fromHex, fromBase64 } from './hex.js';
import { checkEvents } from './eventlog.js';

export { hex, fromHex, fromBase64 };

export const BUNDLE_TAG = 'gatehouse-bundle-v1:';
export const STEPS = ['quote', 'policy', 'binding', 'keys', 'ct', 'caa'];

const enc = new TextEncoder();

async function digest(alg, bytes) {
  return new Uint8Array(await globalThis.crypto.subtle.digest(alg, bytes));
}

/** SHA-512(tag ‖ JCS(claims)), hex: what the quote's report data must be. */
export async function expectedReportData(claims) {
  const jcs = canonicalize(claims);
  if (jcs === undefined) throw new Error('claims cannot be canonicalized');
  const tag = enc.encode(BUNDLE_TAG);
  const body = enc.encode(jcs);
  const all = new Uint8Array(tag.length + body.length);
  all.set(tag);
  all.set(body, tag.length);
  return hex(await digest('SHA-512', all));
}

/** The SHA-256 (hex) of a DER certificate's SubjectPublicKeyInfo, and its DNS names. */
export async function leafKey(der) {
  const cert = AsnConvert.parse(der, Certificate);
  const spki = new Uint8Array(AsnConvert.serialize(cert.tbsCertificate.subjectPublicKeyInfo));
  const names = [];
  for (const ext of cert.tbsCertificate.extensions || []) {
    if (ext.extnID !== id_ce_subjectAltName) continue;
    const san = AsnConvert.parse(ext.extnValue, SubjectAlternativeName);
    for (const n of san) if (n.dNSName) names.push(n.dNSName.toLowerCase());
  }
  return { spkiSha256: hex(await digest('SHA-256', spki)), names };
}

/** Whether certificate name `pattern` (maybe `*.x`) covers host `name`. */
export function nameCovers(pattern, name) {
  pattern = pattern.toLowerCase();
  name = name.toLowerCase().replace(/\.$/, '');
  if (pattern.startsWith('*.')) {
    const rest = name.split('.').slice(1).join('.');
    return rest === pattern.slice(2) && name.split('.')[0].length > 0;
  }
  return pattern === name;
}

function pinned(policy) {
  return ['mrtd', 'rtmr0', 'rtmr1', 'rtmr2', 'rtmr3'].some((k) => (policy[k] || []).length > 0);
}

/** The quote step; returns the verified report or throws with the reason. */
function checkQuote(bundle, opts) {
  const simulated = bundle.tee === 'tdx-simulated';
  let root;
  if (simulated) {
    if (!opts.simulatorRootDer) {
      throw new Error('a simulated quote (mock Intel PKI): refused unless the simulator root is trusted explicitly');
    }
    root = opts.simulatorRootDer;
  } else {
    root = fromBase64(INTEL_SGX_ROOT_CA_B64);
  }
  if (!bundle.collateral) throw new Error('the bundle carries no collateral');
  const verifier = qvl.QuoteVerifier.newWithRootCa(Buffer.from(root));
  const result = verifier.verify(Buffer.from(fromHex(bundle.quote)), bundle.collateral, opts.now);
  if (result.report.type !== 'td10' && result.report.type !== 'td15') {
    throw new Error(`not a TDX quote (${result.report.type})`);
  }
  return result;
}

/**
 * Verifies `bundle` (the parsed JSON). Options: `now` (unix seconds; default the clock),
 * `policy` ({mrtd, rtmr0..rtmr3: [hex], tcb_statuses: [...], allow_debug}),
 * `acceptAnyMeasurements`, `simulatorRootDer` (Uint8Array: trust simulated quotes; tests and
 * development only), `domain` (the name the page is about).
 * Returns {verified, domainAttested, failed, steps: [{step, status, detail}], measurements}.
 */
export async function verifyBundle(bundle, options = {}) {
  const opts = { now: Math.floor(Date.now() / 1000), policy: {}, ...options };
  const steps = [];
  const report = { verified: false, domainAttested: false, failed: null, steps, measurements: null };
  const ok = (step, detail) => steps.push({ step, status: 'ok', detail });
  const fail = (step, detail) => {
    steps.push({ step, status: 'fail', detail });
    report.failed = report.failed || step;
  };
  const skip = (step, detail) => steps.push({ step, status: 'skip', detail });

  // quote
  let result;
  try {
    result = checkQuote(bundle, opts);
    const accepted = ['UpToDate', ...(opts.policy.tcb_statuses || [])];
    if (!accepted.includes(result.status)) {
      throw new Error(`TCB status ${result.status} is not accepted by the policy`);
    }
    const root = bundle.tee === 'tdx-simulated' ? 'the simulator root (insecure)' : "Intel's SGX root";
    ok('quote', `${bundle.tee} quote under ${root}, TCB ${result.status}`);
  } catch (e) {
    fail('quote', e.message + (e.cause ? `: ${e.cause.message}` : ''));
    return finish(report);
  }
  const td = result.report.data;
  report.measurements = {
    mrtd: hex(td.mrTd),
    rtmr0: hex(td.rtMr0),
    rtmr1: hex(td.rtMr1),
    rtmr2: hex(td.rtMr2),
    rtmr3: hex(td.rtMr3),
    tcbStatus: result.status,
  };

  // policy
  const p = opts.policy;
  const debug = (td.tdAttributes[0] & 1) === 1;
  const mismatch = ['mrtd', 'rtmr0', 'rtmr1', 'rtmr2', 'rtmr3'].find(
    (k) => (p[k] || []).length > 0 && !p[k].map((v) => v.toLowerCase()).includes(report.measurements[k]),
  );
  const events = bundle.event_log || [];
  const eventPins = p.events || {};
  let eventProblem = null;
  if (events.length || Object.keys(eventPins).length) {
    eventProblem = await checkEvents(events, report.measurements.rtmr3, eventPins).then(
      () => null,
      (e) => e.message,
    );
  }
  if (debug && !p.allow_debug) fail('policy', 'the TD runs in debug mode (its memory is readable by the host)');
  else if (eventProblem) fail('policy', eventProblem);
  else if (mismatch) fail('policy', `${mismatch} ${report.measurements[mismatch]} is not in the policy`);
  else if (!pinned(p) && !Object.keys(eventPins).length && !opts.acceptAnyMeasurements) fail('policy', 'the policy pins no measurement: any TD running any software would pass');
  else {
    const n = Object.keys(eventPins).length;
    const said = [];
    if (pinned(p)) said.push(`MRTD ${report.measurements.mrtd.slice(0, 16)}…, measurements pinned`);
    if (n) said.push(`${n} RTMR3 event(s) pinned, the event log replayed`);
    ok('policy', said.length ? said.join('; ') : 'measurements not pinned (accepted by option)');
  }

  // binding
  const expected = await expectedReportData(bundle.claims);
  const quoted = hex(td.reportData);
  if (quoted !== expected) fail('binding', 'the quote does not bind these claims (report data differs from SHA-512(tag ‖ JCS(claims)))');
  else ok('binding', 'the quote binds SHA-512(gatehouse-bundle-v1 ‖ JCS(claims))');

  // keys
  const claims = bundle.claims || {};
  const current = (claims.spki_sha256 && claims.spki_sha256.current) || [];
  const origins = new Map((claims.keys || []).map((k) => [k.spki_sha256, k]));
  const chains = bundle.certificates || [];
  let keysFailed = null;
  let servesDomain = !opts.domain;
  if (chains.length === 0) keysFailed = 'the bundle carries no certificate chains';
  for (const chain of chains) {
    if (keysFailed) break;
    let leaf;
    try {
      leaf = await leafKey(fromBase64(chain[0]));
    } catch (e) {
      keysFailed = `a served certificate does not parse: ${e.message}`;
      break;
    }
    const claim = origins.get(leaf.spkiSha256);
    if (!current.includes(leaf.spkiSha256) || !claim) keysFailed = `the key ${leaf.spkiSha256.slice(0, 16)}… of ${leaf.names.join(', ')} is not in the quoted claims`;
    else if (claim.origin !== 'tee') keysFailed = `the key of ${leaf.names.join(', ')} was ${claim.origin}, not made in the TEE`;
    else if (opts.domain && leaf.names.some((n) => nameCovers(n, opts.domain))) servesDomain = true;
  }
  if (!keysFailed && !servesDomain) keysFailed = `no served certificate covers ${opts.domain}`;
  if (keysFailed) fail('keys', keysFailed);
  else ok('keys', `${chains.length} served chain(s), every key made in the TEE (at rest: ${claims.sealing || 'unknown'})`);

  // ct
  if (!claims.ct) skip('ct', 'the gateway runs no Certificate Transparency watch');
  else if (claims.ct.status === 'clean') ok('ct', `every logged certificate for its names carries one of its keys (checked ${when(claims.ct.checked_at)})`);
  else if (claims.ct.status === 'alert') fail('ct', `certificates with foreign keys were logged: serial ${(claims.ct.alerts || []).join(', ')}`);
  else skip('ct', `stale: the watch has not heard from its sources in time (last full answer ${claims.ct.checked_at ? when(claims.ct.checked_at) : 'never'})`);

  // caa
  const caa = claims.caa || [];
  const lines = caa.filter((l) => !opts.domain || domainUnder(opts.domain, l.split(':')[0]));
  if (!claims.acme_account_uri) skip('caa', 'no ACME account in the claims (certificates from a private CA)');
  else if (lines.length === 0) skip('caa', 'the claims carry no CAA verdict for this domain');
  else if (lines.every(caaLocked)) ok('caa', `issuance locked to ${claims.acme_account_uri}`);
  else fail('caa', lines.filter((l) => !caaLocked(l)).join('; '));

  return finish(report);
}

/** A unix time as an ISO date and time (UTC, to the minute). */
function when(unix) {
  const d = new Date(Number(unix) * 1000);
  return Number.isNaN(d.getTime()) ? String(unix) : `${d.toISOString().slice(0, 16).replace('T', ' ')} UTC`;
}

/** A claims CAA line, `<domain>: <verdict>` (caa::Verdict's Display), says locked. */
function caaLocked(line) {
  const at = line.indexOf(': ');
  return at > 0 && /^locked(:|$)/.test(line.slice(at + 2));
}

function domainUnder(domain, base) {
  domain = domain.toLowerCase();
  base = base.trim().toLowerCase();
  return domain === base || domain.endsWith(`.${base}`);
}

function finish(report) {
  const status = (s) => report.steps.find((x) => x.step === s)?.status;
  report.verified = ['quote', 'policy', 'binding', 'keys'].every((s) => status(s) === 'ok');
  report.domainAttested = report.verified && status('ct') === 'ok' && status('caa') === 'ok';
  return report;
}
