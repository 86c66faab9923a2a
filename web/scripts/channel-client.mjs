// Sends one request through a gateway's encrypted channel with this package's client half
// and prints what came back as JSON. Used by tests/tests/encrypted_channel.rs (the gateway's
// CA in NODE_EXTRA_CA_CERTS):
//   node scripts/channel-client.mjs <host> <port> <ohttp_keys base64> <marker>
import https from 'node:https';
import { decodeResponse, encodeRequest } from '../src/bhttp.js';
import { firstKey, openResponse, sealRequest, REQUEST_MEDIA_TYPE } from '../src/ohttp.js';

const [host, port, keysB64, marker] = process.argv.slice(2);
const key = firstKey(new Uint8Array(Buffer.from(keysB64, 'base64')));
const request = encodeRequest({
  method: 'POST',
  authority: host,
  path: '/from-node',
  fields: [['date', new Date().toUTCString()], ['content-type', 'text/plain']],
  content: new TextEncoder().encode(marker),
});
const { body, context } = await sealRequest(key, request);
const answer = await new Promise((resolve, reject) => {
  const req = https.request(
    { host: '127.0.0.1', port, servername: host, method: 'POST', path: '/.well-known/gatehouse/channel',
      headers: { host, 'content-type': REQUEST_MEDIA_TYPE, 'content-length': body.length } },
    (res) => {
      const parts = [];
      res.on('data', (d) => parts.push(d));
      res.on('end', () => resolve({ status: res.statusCode, type: res.headers['content-type'], body: Buffer.concat(parts) }));
    },
  );
  req.on('error', reject);
  req.end(Buffer.from(body));
});
if (answer.status !== 200) {
  console.log(JSON.stringify({ outer: answer.status, text: answer.body.toString() }));
  process.exit(1);
}
const inner = decodeResponse(await openResponse(context, new Uint8Array(answer.body)));
console.log(JSON.stringify({
  outer: answer.status,
  type: answer.type,
  status: inner.status,
  fields: inner.fields,
  content: new TextDecoder().decode(inner.content),
  sealed: answer.body.toString('latin1'),
}));
