// Oblivious HTTP (RFC 9458), the client half: a Binary HTTP request sealed to one of the
// gateway's channel keys (taken from a verified bundle's claims, never from elsewhere), and
// the response opened with that request's context only. HPKE is @hpke/core (X25519,
// HKDF-SHA256, AES-128-GCM); the response keys are derived with WebCrypto's HKDF, which is
// Extract then Expand, as §4.4 asks.
import { Aes128Gcm, CipherSuite, HkdfSha256 } from '@hpke/core';
import { DhkemX25519HkdfSha256 } from '@hpke/dhkem-x25519';

const KEM_X25519 = 0x0020;
const KDF_HKDF_SHA256 = 0x0001;
const AEAD_AES_128_GCM = 0x0001;
const NK = 16; // AES-128-GCM key
const NN = 12; // and nonce
const utf8 = new TextEncoder();

export const REQUEST_MEDIA_TYPE = 'message/ohttp-req';
export const RESPONSE_MEDIA_TYPE = 'message/ohttp-res';

function concat(...parts) {
  const n = parts.reduce((a, p) => a + p.length, 0);
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * The first usable key of an `application/ohttp-keys` list (RFC 9458 §3.2): its id and
 * public key, with AES-128-GCM among its suites.
 */
export function firstKey(list) {
  let at = 0;
  while (at + 2 <= list.length) {
    const len = (list[at] << 8) | list[at + 1];
    const c = list.subarray(at + 2, at + 2 + len);
    at += 2 + len;
    if (c.length < 3 + 32 + 2) continue;
    const id = c[0];
    const kem = (c[1] << 8) | c[2];
    if (kem !== KEM_X25519) continue;
    const publicKey = c.subarray(3, 35);
    const suitesLen = (c[35] << 8) | c[36];
    for (let i = 37; i + 4 <= 37 + suitesLen && i + 4 <= c.length; i += 4) {
      const kdf = (c[i] << 8) | c[i + 1];
      const aead = (c[i + 2] << 8) | c[i + 3];
      if (kdf === KDF_HKDF_SHA256 && aead === AEAD_AES_128_GCM) return { id, publicKey };
    }
  }
  throw new Error('the claimed key list has no X25519 key with HKDF-SHA256 and AES-128-GCM');
}

const suite = new CipherSuite({
  kem: new DhkemX25519HkdfSha256(),
  kdf: new HkdfSha256(),
  aead: new Aes128Gcm(),
});

/**
 * Seals `request` (Binary HTTP bytes) to `key` ({id, publicKey}).
 * @returns {Promise<{body: Uint8Array, context: object}>} the `message/ohttp-req` body, and
 *   what opens its response
 */
export async function sealRequest(key, request) {
  const hdr = Uint8Array.from([
    key.id,
    KEM_X25519 >> 8, KEM_X25519 & 0xff,
    KDF_HKDF_SHA256 >> 8, KDF_HKDF_SHA256 & 0xff,
    AEAD_AES_128_GCM >> 8, AEAD_AES_128_GCM & 0xff,
  ]);
  const info = concat(utf8.encode('message/bhttp request'), Uint8Array.of(0), hdr);
  const recipientPublicKey = await suite.kem.deserializePublicKey(key.publicKey);
  const sender = await suite.createSenderContext({ recipientPublicKey, info });
  const ct = new Uint8Array(await sender.seal(request));
  const enc = new Uint8Array(sender.enc);
  const secret = new Uint8Array(await sender.export(utf8.encode('message/bhttp response'), Math.max(NK, NN)));
  return { body: concat(hdr, enc, ct), context: { enc, secret } };
}

/**
 * Opens a `message/ohttp-res` body with the context of the request it answers.
 * @returns {Promise<Uint8Array>} the Binary HTTP response
 */
export async function openResponse(context, body) {
  const nonceLen = Math.max(NK, NN);
  if (body.length < nonceLen + 16) throw new Error('the encapsulated response is too short');
  const responseNonce = body.subarray(0, nonceLen);
  const salt = concat(context.enc, responseNonce);
  const ikm = await crypto.subtle.importKey('raw', context.secret, 'HKDF', false, ['deriveBits']);
  const expand = async (label, bytes) =>
    new Uint8Array(
      await crypto.subtle.deriveBits({ name: 'HKDF', hash: 'SHA-256', salt, info: utf8.encode(label) }, ikm, bytes * 8),
    );
  const key = await crypto.subtle.importKey('raw', await expand('key', NK), 'AES-GCM', false, ['decrypt']);
  const iv = await expand('nonce', NN);
  try {
    return new Uint8Array(await crypto.subtle.decrypt({ name: 'AES-GCM', iv }, key, body.subarray(nonceLen)));
  } catch {
    throw new Error('the response does not open with this request\'s context: tampered with, or the answer to another request');
  }
}
