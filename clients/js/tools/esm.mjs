// Writes hermes.mjs, the ES module, from hermes.js, the classic script / CommonJS file:
// the same factory, wrapped as a module instead of UMD. No dependencies.
//
//   node tools/esm.mjs           rewrite hermes.mjs
//   node tools/esm.mjs --check   exit 1 (naming the fix) when hermes.mjs is not up to date
//
// Only hermes.js is edited by hand; test/package.test.mjs runs the check.
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const BEGIN = '// ---- hermes factory begin';
const END = '// ---- hermes factory end ----';

/** The text hermes.mjs must hold, given the text of hermes.js. */
export function esmFrom(umd) {
  const begin = umd.indexOf(BEGIN);
  const end = umd.indexOf(END);
  if (begin === -1 || end === -1 || end < begin) {
    throw new Error(`hermes.js must contain the markers "${BEGIN}" and "${END}"`);
  }
  // The factory's body, from the line after the begin marker to the end marker's line.
  const body = umd.slice(umd.indexOf('\n', begin) + 1, umd.lastIndexOf('\n', end) + 1);
  return [
    '/*!',
    ' * @hermes/client — the browser client of the Hermes WebSocket push service, as an ES module.',
    ' *',
    ' * GENERATED from hermes.js by tools/esm.mjs: edit hermes.js, then run `npm run esm`.',
    ' * Plain ES2018, no dependencies, no imports: load it as it is.',
    ' *',
    " *   import { connect } from '@hermes/client';          // or '/hermes.mjs' from a gateway",
    " *   const client = connect({ url: 'wss://push.example.com/production', token: getToken });",
    " *   client.on('greeting', (data, message) => console.log(data.text, 'from', message.user_id));",
    ' *',
    ' * The full reference is docs/client.md.',
    ' */',
    'const Hermes = (function () {',
    body + '})();',
    '',
    'export default Hermes;',
    'export const { version, STATES, Client, connect } = Hermes;',
    '',
  ].join('\n');
}

export const paths = { umd: path.join(root, 'hermes.js'), esm: path.join(root, 'hermes.mjs') };

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const want = esmFrom(readFileSync(paths.umd, 'utf8'));
  if (process.argv.includes('--check')) {
    let have = null;
    try { have = readFileSync(paths.esm, 'utf8'); } catch { /* missing */ }
    if (have !== want) {
      console.error('clients/js/hermes.mjs is not generated from hermes.js: run `npm run esm` in clients/js');
      process.exit(1);
    }
  } else {
    writeFileSync(paths.esm, want);
  }
}
