// What the badge says for each kind of report (the DOM itself is tested in Chromium by
// tests/tests/browser_widget.rs).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { summarize } from '../src/render.js';

const report = (statuses, extra = {}) => {
  const steps = Object.entries(statuses).map(([step, status]) => ({ step, status, detail: `${step} ${status}` }));
  const ok = (s) => statuses[s] === 'ok';
  const verified = ['quote', 'policy', 'binding', 'keys'].every(ok);
  return { steps, verified, domainAttested: verified && ok('ct') && ok('caa'), failed: steps.find((s) => s.status === 'fail')?.step ?? null, measurements: null, ...extra };
};
const all = { quote: 'ok', policy: 'ok', binding: 'ok', keys: 'ok' };

test('browser badge: attested only when CT is clean and CAA locked', () => {
  const s = summarize(report({ ...all, ct: 'ok', caa: 'ok' }), 'app.example', false);
  assert.equal(s.state, 'attested');
  assert.equal(s.title, 'The keys of app.example are attested');
});

test('browser badge: verified but not closed names what is open', () => {
  const s = summarize(report({ ...all, ct: 'skip', caa: 'ok' }), 'app.example', false);
  assert.equal(s.state, 'verified');
  assert.match(s.title, /not closed by Certificate Transparency$/);
});

test('browser badge: a failure names its step and detail; a simulated TEE says so', () => {
  const s = summarize(report({ quote: 'ok', policy: 'fail' }), 'app.example', true);
  assert.equal(s.state, 'failed');
  assert.match(s.title, /^Attestation failed at policy: policy fail/);
  assert.match(s.title, /SIMULATED TEE: proves nothing/);
  assert.equal(s.rows.find((r) => r.step === 'keys').status, 'not checked');
});

test('browser badge: a CT alert or unlocked CAA is red, not a gap', () => {
  const ct = summarize(report({ ...all, ct: 'fail', caa: 'ok' }), 'app.example', false);
  assert.equal(ct.state, 'failed');
  assert.match(ct.title, /^Attestation failed at ct: ct fail/);
  const caa = summarize(report({ ...all, ct: 'ok', caa: 'fail' }), 'app.example', false);
  assert.equal(caa.state, 'failed');
});
