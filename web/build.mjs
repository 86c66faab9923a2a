// Builds what the gateway serves at https://attest.<base>/ into dist/ (committed: the Rust
// build embeds it and needs no npm):
//   widget.js   the badge an app embeds (script tag), verifier included; also the
//               verification page's script (its tag carries data-page)
//   channel-worker.js  the encrypted channel's service worker, served on each app's own
//               origin that enables it
//   index.html and page.css, the page
// esbuild's output is deterministic for a given lockfile, so a rebuild is byte-identical;
// `node build.mjs --check` builds in memory and fails, naming the file, if dist/ is stale
// (./scripts/test.sh runs it).
import * as esbuild from 'esbuild';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';

const check = process.argv.includes('--check');
const common = {
  bundle: true,
  minify: true,
  format: 'iife',
  platform: 'browser',
  target: ['chrome109', 'firefox115', 'safari16'],
  legalComments: 'eof',
  charset: 'utf8',
  define: { global: 'globalThis' },
  logLevel: 'warning',
  write: false,
};

async function bundle(entry) {
  const out = await esbuild.build({ ...common, entryPoints: [entry], outfile: 'out.js' });
  return Buffer.from(out.outputFiles[0].contents);
}

const files = {
  'widget.js': await bundle('src/widget.js'),
  'channel-worker.js': await bundle('src/channel-worker.js'),
  'index.html': readFileSync('src/page.html'),
  'page.css': readFileSync('src/page.css'),
};

let stale = [];
mkdirSync('dist', { recursive: true });
for (const [name, body] of Object.entries(files)) {
  const path = `dist/${name}`;
  const sri = createHash('sha384').update(body).digest('base64');
  if (check) {
    if (!existsSync(path) || !readFileSync(path).equals(body)) stale.push(path);
  } else {
    writeFileSync(path, body);
  }
  console.log(`${path}  ${(body.length / 1024).toFixed(1)} KiB  sha384-${sri}`);
}
if (stale.length) {
  console.error(`stale: ${stale.join(', ')} differ from a build of src/: run \`cd web && npm run build\` and commit dist/`);
  process.exit(1);
}
