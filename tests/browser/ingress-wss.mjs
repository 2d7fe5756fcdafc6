// wss:// through a TLS reverse proxy in front of an installed release
// (scripts/kube/ingress-on-node.sh makes the proxy, the certificate and the tokens, then
// runs `node --test ingress-wss.mjs`): headless Chromium opens the proxy's wss:// URL with
// the original snippet (`?token=`) and with hermes.js (the subprotocol token), and each
// receives a notification published to the release's RabbitMQ queue.
//
// Environment (required unless marked optional):
//   HERMES_WSS_URL     wss://HOST:PORT/STAGE of the proxy
//   HERMES_RESOLVE     optional: Chromium --host-resolver-rules (HOST to the proxy's
//                      address); without it HOST is resolved as usual
//   HERMES_SPKI        optional: base64 SHA-256 of the proxy certificate's public key, the
//                      one certificate Chromium trusts besides its own roots; without it
//                      the ingress's certificate must chain to those roots
//   HERMES_TOKEN_ORIGINAL, HERMES_TOKEN_CLIENT  connect tokens of two users of HERMES_ROOM
//   HERMES_ROOM        the room
//   HERMES_PUBLISH     a command that publishes its one argument (a JSON body) to RabbitMQ
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { launchBrowser, serveFixtures, collectConsole } from './harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const need = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is required (run scripts/kube/ingress-on-node.sh)`);
  return value;
};
const WSS = need('HERMES_WSS_URL');
const ROOM = need('HERMES_ROOM');

const CLIENT_PAGE = `<!doctype html><meta charset="utf-8"><title>hermes.js through the proxy</title>
<script src="/hermes.js"></script>
<script>
  window.received = [];
  window.start = function (url, token) {
    window.client = Hermes.connect({ url: url, token: token });
    window.client.on('greeting', function (data) { window.received.push(data); });
  };
</script>`;

let browser;
let fixtures;
before(async () => {
  const args = [];
  if (process.env.HERMES_RESOLVE) args.push(`--host-resolver-rules=${process.env.HERMES_RESOLVE}`);
  if (process.env.HERMES_SPKI) args.push(`--ignore-certificate-errors-spki-list=${process.env.HERMES_SPKI}`);
  browser = await launchBrowser(args);
  const hermesJs = await readFile(path.resolve(here, '..', '..', 'clients', 'js', 'hermes.js'));
  fixtures = await serveFixtures({ 'hermes.js': hermesJs, 'client.html': CLIENT_PAGE });
});
after(async () => { await fixtures?.close(); await browser?.close(); });

async function publish(data) {
  const body = JSON.stringify({ user_id: 'backend', room_id: ROOM, data });
  await promisify(execFile)(need('HERMES_PUBLISH'), [body]);
}

test('the original snippet connects with wss:// through the TLS proxy and receives a notification published to RabbitMQ', async () => {
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    collectConsole(page);
    const query = new URLSearchParams({ ws: WSS, token: need('HERMES_TOKEN_ORIGINAL') });
    await page.goto(`${fixtures.url}/original.html?${query}`);
    await page.waitForSelector('#status:text-is("open")');
    const data = { type: 'greeting', text: 'through the proxy, to the original snippet' };
    await publish(data);
    await page.waitForFunction(() => window.received.length > 0);
    assert.deepEqual(await page.evaluate(() => window.received), [data]);
  } finally {
    await context.close();
  }
});

test('hermes.js connects with wss:// and the subprotocol token through the TLS proxy and receives a notification published to RabbitMQ', async () => {
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    collectConsole(page);
    await page.goto(`${fixtures.url}/client.html`);
    await page.evaluate(({ url, token }) => window.start(url, token), { url: WSS, token: need('HERMES_TOKEN_CLIENT') });
    await page.waitForFunction(() => window.client.state === 'open');
    const data = { type: 'greeting', text: 'through the proxy, to hermes.js' };
    await publish(data);
    await page.waitForFunction(() => window.received.length > 0);
    assert.deepEqual(await page.evaluate(() => window.received), [data]);
    assert.deepEqual(page.consoleLines.filter((l) => l.startsWith('[pageerror]')), []);
  } finally {
    await context.close();
  }
});
