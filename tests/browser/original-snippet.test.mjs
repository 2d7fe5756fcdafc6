// The original browser snippet (fixtures/original.html), unchanged, against Hermes:
// `?token=` in the URL, `JSON.parse(event.data)`, dispatch on `message.data.type`.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setup, serveFixtures, collectConsole } from './harness.mjs';

// The legacy page lives on another origin (its own little HTTP server), as the
// original application's pages did; the gateway's default Origin policy lets it in.
let env;
let fixtures;
before(async () => { env = await setup(); fixtures = await serveFixtures(); });
after(async () => { await fixtures?.close(); await env?.cleanup(); });

async function openOriginal(context, token) {
  const page = await context.newPage();
  collectConsole(page);
  await page.goto(`${fixtures.url}/original.html?${new URLSearchParams({ ws: env.gw.wsUrl, token })}`);
  await page.waitForSelector('#status:text-is("open")');
  return page;
}

test("the original snippet's onmessage logic runs unchanged and its subscriber callback fires", async () => {
  const { gw } = env;
  const token = await gw.demoToken({ user_id: 'legacy-user', room_id: 'legacy-room' });
  assert.equal(token.user_id, 'legacy-user');
  assert.equal(token.room_id, 'legacy-room');
  assert.equal(token.stage, 'production');
  assert.equal(typeof token.token, 'string');
  assert.ok(token.expires_at > Date.now() / 1000, 'expires_at is in the future (unix seconds)');

  const context = await env.browser.newContext();
  try {
    const page = await openOriginal(context, token.token);

    // Another type first: it has no subscriber, and the snippet must not choke on it.
    await gw.publish({ user_id: 'backend', room_id: 'legacy-room', data: { type: 'other', n: 1 } });
    const data = { type: 'greeting', text: 'hello, legacy code', nested: { n: 42 } };
    await gw.publish({ user_id: 'backend', room_id: 'legacy-room', data });

    await page.waitForFunction(() => window.received.length > 0);
    assert.deepEqual(await page.evaluate(() => window.received), [data]);
    assert.equal(await page.textContent('li.greeting'), 'hello, legacy code');
    assert.deepEqual(page.consoleLines.filter((l) => l.startsWith('[pageerror]')), [], 'no exception in onmessage');
    assert.equal(await page.textContent('#status'), 'open');
  } finally {
    await context.close();
  }
});

test('the original snippet receives what another room member sends with sendMessage', async () => {
  const { gw } = env;
  const listener = await gw.demoToken({ user_id: 'listener', room_id: 'legacy-2' });
  const context = await env.browser.newContext();
  try {
    const page = await openOriginal(context, listener.token);

    // A second legacy client in the same room sends a sendMessage frame.
    const sender = await gw.demoToken({ user_id: 'sender', room_id: 'legacy-2' });
    await page.evaluate(({ wsUrl, token }) => new Promise((resolve, reject) => {
      const ws = new WebSocket(wsUrl + '?token=' + token);
      ws.onopen = () => { ws.send(JSON.stringify({ action: 'sendMessage', data: { type: 'greeting', text: 'from a peer' } })); resolve(); };
      ws.onclose = (e) => reject(new Error('closed ' + e.code));
      window.peer = ws;
    }), { wsUrl: gw.wsUrl, token: sender.token });

    await page.waitForFunction(() => window.received.length > 0);
    assert.deepEqual(await page.evaluate(() => window.received), [{ type: 'greeting', text: 'from a peer' }]);
  } finally {
    await context.close();
  }
});
