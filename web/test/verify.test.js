// The verifier on a real bundle (a gateway's development defaults: simulated TDX quote under
// the simulator's mock Intel PKI, whose root the tests trust explicitly), and on that bundle
// with one thing changed at a time: each change fails at its own step.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { verifyBundle, leafKey, fromBase64, nameCovers } from '../src/verify.js';

const fixture = (name) => new URL(`./fixtures/${name}`, import.meta.url);
const bundle = () => JSON.parse(readFileSync(fixture('simulated-bundle.json')));
const simulatorRootDer = new Uint8Array(readFileSync(fixture('simulator-root.der')));
const base = () => ({
  now: bundle().claims.issued_at,
  simulatorRootDer,
  acceptAnyMeasurements: true,
});
const step = (report, name) => report.steps.find((s) => s.step === name);

test('browser verifier: a good bundle passes every step it can check', async () => {
  const r = await verifyBundle(bundle(), { ...base(), domain: 'demo.localhost' });
  assert.equal(r.failed, null, JSON.stringify(r.steps));
  assert.equal(r.verified, true);
  assert.match(r.measurements.mrtd, /^[0-9a-f]{96}$/);
  assert.equal(r.measurements.tcbStatus, 'UpToDate');
  assert.equal(step(r, 'ct').status, 'skip', 'no CT watch: nothing claimed');
  assert.equal(step(r, 'caa').status, 'skip', 'no ACME account: nothing claimed');
  assert.equal(r.domainAttested, false, 'without CT and CAA the domain is not claimed attested');
});

test('browser verifier: a policy pinned to the measured MRTD passes; another MRTD fails at policy', async () => {
  const first = await verifyBundle(bundle(), base());
  const mrtd = first.measurements.mrtd;
  const pinnedOk = await verifyBundle(bundle(), { ...base(), acceptAnyMeasurements: false, policy: { mrtd: [mrtd] } });
  assert.equal(pinnedOk.verified, true, JSON.stringify(pinnedOk.steps));
  const other = await verifyBundle(bundle(), { ...base(), policy: { mrtd: ['00'.repeat(48)] } });
  assert.equal(other.failed, 'policy');
  assert.match(step(other, 'policy').detail, /mrtd .* is not in the policy/);
  const unpinned = await verifyBundle(bundle(), { ...base(), acceptAnyMeasurements: false });
  assert.equal(unpinned.failed, 'policy');
  assert.match(step(unpinned, 'policy').detail, /pins no measurement/);
});

test('browser verifier: a simulated quote fails at quote unless its root is trusted', async () => {
  const r = await verifyBundle(bundle(), { ...base(), simulatorRootDer: undefined });
  assert.equal(r.failed, 'quote');
  assert.match(step(r, 'quote').detail, /simulated quote/);
  assert.equal(r.verified, false);
});

test('browser verifier: one flipped byte of the quote fails at quote', async () => {
  const b = bundle();
  const i = 700 * 2; // inside the signed body
  const flipped = (parseInt(b.quote.slice(i, i + 2), 16) ^ 1).toString(16).padStart(2, '0');
  b.quote = b.quote.slice(0, i) + flipped + b.quote.slice(i + 2);
  const r = await verifyBundle(b, base());
  assert.equal(r.failed, 'quote', JSON.stringify(r.steps));
  assert.equal(r.verified, false);
});

test('browser verifier: changed claims fail at binding', async () => {
  const b = bundle();
  b.claims.issued_at += 1;
  const r = await verifyBundle(b, base());
  assert.equal(r.failed, 'binding');
  assert.equal(r.verified, false);
});

test('browser verifier: one flipped byte of a served key fails at keys', async () => {
  const b = bundle();
  const der = fromBase64(b.certificates[0][0]);
  const { spkiSha256 } = await leafKey(der);
  // The key's last byte (the end of the EC point inside the SubjectPublicKeyInfo).
  const spkiEnd = findSpkiEnd(der);
  der[spkiEnd - 1] ^= 1;
  assert.notEqual((await leafKey(der)).spkiSha256, spkiSha256);
  b.certificates[0][0] = btoa(String.fromCharCode(...der));
  const r = await verifyBundle(b, base());
  assert.equal(r.failed, 'keys', JSON.stringify(r.steps));
  assert.match(step(r, 'keys').detail, /is not in the quoted claims/);
});

test('browser verifier: expired collateral fails at quote at a fixed time', async () => {
  const r = await verifyBundle(bundle(), { ...base(), now: 4_000_000_000 });
  assert.equal(r.failed, 'quote');
  assert.match(step(r, 'quote').detail, /expired/);
});

test('browser verifier: a CT alert in the claims fails ct by serial; stale claims nothing', async () => {
  const alert = bundle();
  alert.claims.ct = { status: 'alert', checked_at: 1, alerts: ['0badc0de'] };
  const r = await verifyBundle(alert, base());
  assert.equal(step(r, 'ct').status, 'fail');
  assert.match(step(r, 'ct').detail, /0badc0de/);
  const stale = bundle();
  stale.claims.ct = { status: 'stale', checked_at: null, alerts: [] };
  const s = await verifyBundle(stale, base());
  assert.equal(step(s, 'ct').status, 'skip');
  assert.match(step(s, 'ct').detail, /stale/);
  // Either way the claims changed after quoting: binding fails too.
  assert.equal(step(s, 'binding').status, 'fail');
});

test('browser verifier: wildcard names cover one label only', () => {
  assert.equal(nameCovers('*.gw.test', 'app.gw.test'), true);
  assert.equal(nameCovers('*.gw.test', 'a.b.gw.test'), false);
  assert.equal(nameCovers('*.gw.test', 'gw.test'), false);
  assert.equal(nameCovers('gw.test', 'GW.test.'), true);
});

/** The end offset of the SubjectPublicKeyInfo in a DER certificate (P-256: 91 bytes). */
function findSpkiEnd(der) {
  // SEQUENCE { SEQUENCE { OID ecPublicKey ... } BIT STRING }: find the ecPublicKey OID.
  const oid = [0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
  for (let i = 0; i < der.length - oid.length; i++) {
    if (oid.every((b, j) => der[i + j] === b)) {
      const start = i - 4; // 30 59 30 13
      return start + 2 + der[start + 1];
    }
  }
  throw new Error('no EC key');
}

test('browser verifier: RTMR3 events replay to the quote and pin by payload', async () => {
  const b = bundle();
  const [ev] = b.event_log;
  const pinOk = await verifyBundle(bundle(), { ...base(), acceptAnyMeasurements: false, policy: { events: { [ev.event]: ev.event_payload } } });
  assert.equal(pinOk.verified, true, JSON.stringify(pinOk.steps));
  assert.match(step(pinOk, 'policy').detail, /1 RTMR3 event\(s\) pinned/);
  const wrong = await verifyBundle(bundle(), { ...base(), policy: { events: { [ev.event]: '00' } } });
  assert.equal(wrong.failed, 'policy');
  assert.match(step(wrong, 'policy').detail, /payload .* is not the allowed 00/);
  const missing = await verifyBundle(bundle(), { ...base(), policy: { events: { 'app-id': 'ab' } } });
  assert.match(step(missing, 'policy').detail, /event:app-id: not in the event log/);
  // A payload changed in the log (its digest left as it was): caught before any pin.
  const lied = bundle();
  lied.event_log[0].event_payload = '31';
  const r = await verifyBundle(lied, base());
  assert.equal(r.failed, 'policy');
  assert.match(step(r, 'policy').detail, /digest is not the digest of its payload/);
  // The digest recomputed to match the changed payload: the replay no longer gives RTMR3.
  lied.event_log[0].digest = '';
  const r2 = await verifyBundle(lied, base());
  assert.match(step(r2, 'policy').detail, /rtmr3: the event log replays to/);
});

test('browser verifier: CAA lines are read as the gateway writes them (caa::Verdict)', async () => {
  const withCaa = async (lines) => {
    const b = bundle();
    b.claims.acme_account_uri = 'https://ca.test/acct/1';
    b.claims.caa = lines;
    return step(await verifyBundle(b, { ...base(), domain: 'web.gw.test' }), 'caa');
  };
  assert.equal((await withCaa(['gw.test: locked: only our account may issue'])).status, 'ok');
  const unlocked = await withCaa(['gw.test: UNLOCKED: no CAA issue record applies to gw.test: any CA may issue']);
  assert.equal(unlocked.status, 'fail');
  assert.match(unlocked.detail, /UNLOCKED/);
  assert.equal((await withCaa(['gw.test: BLOCKED: x', 'other.test: locked'])).status, 'fail');
  assert.equal((await withCaa(['other.test: locked'])).status, 'skip', 'no verdict for this domain');
});
