// The channel's client half: Binary HTTP round trips and key-list parsing here; sealing to
// the real gateway and opening its answers in tests/tests/encrypted_channel.rs, which runs
// scripts/channel-client.mjs against the binary (the Rust `ohttp`/`bhttp` crates on the other end).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeRequest, decodeResponse, encodeRequest, encodeResponse, writeVarint } from '../src/bhttp.js';
import { firstKey, openResponse, sealRequest } from '../src/ohttp.js';

test('binary HTTP requests and responses round trip, long fields included', () => {
  const content = new TextEncoder().encode('x'.repeat(70000));
  const req = { method: 'POST', scheme: 'https', authority: 'web.gw.test', path: '/a?b=c', fields: [['content-type', 'text/plain'], ['date', 'Fri, 04 Dec 2026 10:00:00 GMT']], content };
  const back = decodeRequest(encodeRequest(req));
  assert.equal(back.method, 'POST');
  assert.equal(back.path, '/a?b=c');
  assert.deepEqual(back.fields, req.fields);
  assert.equal(back.content.length, 70000);
  const resp = decodeResponse(encodeResponse({ status: 404, fields: [['x-a', 'b']], content: Uint8Array.of(1, 2) }));
  assert.equal(resp.status, 404);
  assert.deepEqual(resp.fields, [['x-a', 'b']]);
  assert.deepEqual([...resp.content], [1, 2]);
});

test('varints take the RFC 9000 sizes, and truncation is refused', () => {
  for (const [n, len] of [[63, 1], [64, 2], [16383, 2], [16384, 4]]) {
    const out = [];
    writeVarint(out, n);
    assert.equal(out.length, len, String(n));
  }
  const whole = encodeResponse({ status: 200, content: Uint8Array.of(1, 2, 3) });
  assert.throws(() => decodeResponse(whole.subarray(0, whole.length - 3)), /past the end|truncated/);
  assert.throws(() => decodeResponse(encodeRequest({ method: 'GET', authority: 'a', path: '/' })), /not a known-length response/);
});

function keyList(id, kem = 0x0020, suites = [[1, 1], [1, 3]]) {
  const config = [id, kem >> 8, kem & 0xff, ...new Array(32).fill(9), 0, suites.length * 4];
  for (const [kdf, aead] of suites) config.push(0, kdf, 0, aead);
  return Uint8Array.from([config.length >> 8, config.length & 0xff, ...config]);
}

test('the first X25519 key with AES-128-GCM is chosen from the claimed list', () => {
  const k = firstKey(Uint8Array.from([...keyList(5, 0x0010), ...keyList(7)]));
  assert.equal(k.id, 7, 'a P-256 key is skipped');
  assert.equal(k.publicKey.length, 32);
  assert.throws(() => firstKey(keyList(3, 0x0020, [[1, 3]])), /AES-128-GCM/);
});

test('a response opens only with its own request context', async () => {
  const key = firstKey(keyList(1));
  const request = encodeRequest({ method: 'GET', authority: 'a', path: '/' });
  const { body, context } = await sealRequest(key, request);
  assert.equal(body[0], 1, 'the key id leads');
  assert.equal(body.length, 7 + 32 + request.length + 16, 'header, enc, sealed request and tag');
  const junk = new Uint8Array(16 + 40);
  await assert.rejects(openResponse(context, junk), /does not open with this request's context/);
});

// The service worker's decision, on a real simulated bundle that carries a channel key
// (recorded from `gatehouse run`, the development defaults).
import { readFileSync } from 'node:fs';
import { establish, policyFrom } from '../src/channel-worker.js';

const channelBundle = () => JSON.parse(readFileSync(new URL('./fixtures/simulated-bundle-channel.json', import.meta.url)));
const workerOptions = (extra = '') => {
  const b = channelBundle();
  return { ...policyFrom(`?insecure_trust_simulator_root&accept_any_measurements${extra}`), now: b.claims.issued_at };
};

test('channel worker: the key is taken from a verified bundle only', async () => {
  const ok = await establish(async () => channelBundle(), workerOptions());
  assert.equal(ok.failed, undefined, JSON.stringify(ok.report && ok.report.steps));
  assert.equal(ok.key.id, 1);
  const b = channelBundle();
  // Another key put in the claims: the quote no longer binds them.
  b.claims.channel.ohttp_keys = b.claims.channel.ohttp_keys.replace('AC0BACBE', 'AC0CACBE');
  const swapped = await establish(async () => b, workerOptions());
  assert.equal(swapped.failed, 'binding');
  assert.equal(swapped.key, undefined, 'no key from an unverified bundle');
  const wrongMrtd = await establish(async () => channelBundle(), { ...workerOptions(`&mrtd=${'00'.repeat(48)}`), acceptAnyMeasurements: false });
  assert.equal(wrongMrtd.failed, 'policy');
  const gone = await establish(async () => { throw new Error('503'); }, workerOptions());
  assert.equal(gone.failed, 'fetch');
});

test('channel worker: the policy comes from the script URL', () => {
  const o = policyFrom('?mrtd=aa,bb&events=gatehouse-version=1.0&tcb_statuses=SWHardeningNeeded');
  assert.deepEqual(o.policy.mrtd, ['aa', 'bb']);
  assert.deepEqual(o.policy.events, { 'gatehouse-version': '1.0' });
  assert.deepEqual(o.policy.tcb_statuses, ['SWHardeningNeeded']);
  assert.equal(o.simulator, false);
  assert.equal(o.simulatorRootDer, undefined, 'the simulator root only when asked');
});
