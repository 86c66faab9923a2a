// Binary HTTP (RFC 9292), known-length form: what the encrypted channel seals. A request is
// encoded from its parts, a response decoded into status, fields and content. Small enough
// to keep here: the format is varints and length-prefixed strings (the gateway reads it with
// the `bhttp` crate, the RFC editor's; the e2e test checks the two agree).

const utf8 = new TextEncoder();

/** A QUIC variable-length integer (RFC 9000 §16). */
export function writeVarint(out, n) {
  if (n < 0x40) out.push(n);
  else if (n < 0x4000) out.push(0x40 | (n >> 8), n & 0xff);
  else if (n < 0x40000000) out.push(0x80 | (n >>> 24), (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff);
  else throw new RangeError(`length ${n} too large for the channel`);
}

function writeBytes(out, bytes) {
  writeVarint(out, bytes.length);
  for (const b of bytes) out.push(b);
}

function fieldSection(out, fields) {
  const section = [];
  for (const [name, value] of fields) {
    writeBytes(section, utf8.encode(name.toLowerCase()));
    writeBytes(section, utf8.encode(value));
  }
  writeBytes(out, section);
}

/**
 * Encodes a request. `fields` is an iterable of [name, value]; `content` a Uint8Array.
 * @returns {Uint8Array}
 */
export function encodeRequest({ method, scheme = 'https', authority, path, fields = [], content = new Uint8Array() }) {
  const out = [];
  writeVarint(out, 0); // known-length request
  writeBytes(out, utf8.encode(method));
  writeBytes(out, utf8.encode(scheme));
  writeBytes(out, utf8.encode(authority));
  writeBytes(out, utf8.encode(path));
  fieldSection(out, fields);
  writeBytes(out, content);
  writeVarint(out, 0); // no trailers
  return Uint8Array.from(out);
}

class Reader {
  constructor(bytes) {
    this.b = bytes;
    this.at = 0;
  }
  done() {
    return this.at >= this.b.length;
  }
  varint() {
    if (this.done()) throw new Error('binary HTTP: truncated');
    const first = this.b[this.at];
    const len = 1 << (first >> 6);
    if (this.at + len > this.b.length) throw new Error('binary HTTP: truncated varint');
    let n = first & 0x3f;
    for (let i = 1; i < len; i++) n = n * 256 + this.b[this.at + i];
    this.at += len;
    return n;
  }
  bytes() {
    const n = this.varint();
    if (this.at + n > this.b.length) throw new Error('binary HTTP: a length past the end');
    const v = this.b.subarray(this.at, this.at + n);
    this.at += n;
    return v;
  }
  fields() {
    const section = new Reader(this.bytes());
    const decoder = new TextDecoder();
    const fields = [];
    while (!section.done()) fields.push([decoder.decode(section.bytes()), decoder.decode(section.bytes())]);
    return fields;
  }
}

/**
 * Decodes a known-length response: informational responses skipped, then the final status,
 * its fields and content (trailers, when present, ignored).
 * @returns {{status: number, fields: Array<[string, string]>, content: Uint8Array}}
 */
export function decodeResponse(bytes) {
  const r = new Reader(bytes);
  const framing = r.varint();
  if (framing !== 1) throw new Error(`binary HTTP: framing ${framing}, not a known-length response`);
  for (;;) {
    const status = r.varint();
    const fields = r.fields();
    if (status >= 100 && status < 200) continue;
    if (status < 200 || status > 599) throw new Error(`binary HTTP: status ${status}`);
    const content = r.done() ? new Uint8Array() : r.bytes();
    return { status, fields, content };
  }
}

/** Decodes a known-length request (for tests). */
export function decodeRequest(bytes) {
  const r = new Reader(bytes);
  const framing = r.varint();
  if (framing !== 0) throw new Error(`binary HTTP: framing ${framing}, not a known-length request`);
  const d = new TextDecoder();
  const method = d.decode(r.bytes());
  const scheme = d.decode(r.bytes());
  const authority = d.decode(r.bytes());
  const path = d.decode(r.bytes());
  const fields = r.fields();
  const content = r.done() ? new Uint8Array() : r.bytes();
  return { method, scheme, authority, path, fields, content };
}

/** Encodes a known-length response (for tests). */
export function encodeResponse({ status, fields = [], content = new Uint8Array() }) {
  const out = [];
  writeVarint(out, 1);
  writeVarint(out, status);
  fieldSection(out, fields);
  writeBytes(out, content);
  writeVarint(out, 0);
  return Uint8Array.from(out);
}
