// A hermes.js client for the fault checker (tests/src/faults.rs), run by Node with its
// built-in WebSocket (node --experimental-websocket, Node 20+):
//
//   node --experimental-websocket tests/faults/hermes-client.mjs GATEWAYS_FILE TOKEN_FILE
//
// GATEWAYS_FILE holds the WebSocket URLs of the live gateways, one per line; the checker
// rewrites it as gateways come and go, and every (re)connect reads it and takes the next
// one, as a load balancer would. TOKEN_FILE holds the JWT, read again by the token
// function on every connect. One JSON line per event on stdout:
//   {"kind":"notification","id":"...","data_id":"...","pos":"...","sent_ms":N,"at_ms":N,"gateway":"ws://..."}
//   {"kind":"recovered","recovered":true,"missed":N}
//   {"kind":"state","state":"open"}
// hermes.js drops a notification whose id it already handed over: what is printed is what
// the application sees.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const Hermes = require('../../clients/js/hermes.js');

const [gatewaysFile, tokenFile] = process.argv.slice(2);
if (!gatewaysFile || !tokenFile) {
  console.error('usage: hermes-client.mjs GATEWAYS_FILE TOKEN_FILE');
  process.exit(2);
}
if (typeof WebSocket === 'undefined') {
  console.error('no WebSocket: run node with --experimental-websocket (Node 20) or Node 22+');
  process.exit(2);
}

let turn = 0;
let current = null;
function nextGateway() {
  const urls = readFileSync(gatewaysFile, 'utf8').split('\n').map((l) => l.trim()).filter(Boolean);
  if (urls.length === 0) throw new Error('no live gateway');
  current = urls[turn++ % urls.length];
  return current;
}

// The URL hermes.js passes is ignored: each socket goes to the next live gateway.
class RotatingWebSocket extends WebSocket {
  constructor(_url, protocols) {
    super(nextGateway(), protocols);
  }
}

const out = (event) => process.stdout.write(JSON.stringify(event) + '\n');

const client = Hermes.connect({
  url: 'ws://unused/production',
  token: () => readFileSync(tokenFile, 'utf8').trim(),
  WebSocket: RotatingWebSocket,
  backoffBase: 100,
  backoffCap: 1000,
  restartJitter: 200,
  probe: false,
});
client.on('*', (data, message) => {
  out({
    kind: 'notification',
    id: message.id,
    data_id: data && data.id,
    pos: message.pos,
    sent_ms: data && data.sent_ms,
    at_ms: Date.now(),
    gateway: current,
  });
});
client.onRecover((recovered, missed) => out({ kind: 'recovered', recovered, missed }));
client.onStateChange((state) => out({ kind: 'state', state }));
client.onError((e) => out({ kind: 'error', code: e.code, message: String(e.message) }));
process.on('SIGTERM', () => { client.close(); process.exit(0); });
