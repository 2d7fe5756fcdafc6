// @hermes/client in headless Chromium against a real gateway, beyond what
// hermes-client.test.mjs covers with the classic script: the ES module (the gateway's
// /hermes.mjs, same origin and cross-origin, and the package's file served by an app),
// the liveness ping noticing a frozen gateway, `online` cutting a long backoff short, and
// a token function asked again after a refusal.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { setup, startGateway, openSameOriginPage, serveFixtures, collectConsole } from './harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const PACKAGE_MJS = path.resolve(here, '..', '..', 'clients', 'js', 'hermes.mjs');

// A page that imports the client as an ES module from `src` and records what it does.
// `start(options)`: options.tokens (a list: the token function hands them out in turn,
// the last one for good; 'demo:<user>:<room>' fetches a demo token) or options.token.
const modulePage = (src) => `<!doctype html><meta charset="utf-8"><title>@hermes/client module test</title>
<script type="module">
  import Hermes, { connect, STATES, version } from ${JSON.stringify(src)};
  window.log = { states: [], errors: [], notifications: [], tokens: 0 };
  window.moduleInfo = { version, open: STATES.OPEN, sameDefault: Hermes.connect === connect, globalHermes: typeof window.Hermes };
  window.start = function (options) {
    const opts = { ...options };
    if (opts.tokens) {
      const tokens = opts.tokens;
      delete opts.tokens;
      opts.token = async () => {
        const t = tokens[Math.min(log.tokens++, tokens.length - 1)];
        if (!t.startsWith('demo:')) return t;
        const [, user_id, room_id] = t.split(':');
        const r = await fetch('/demo/token', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ user_id, room_id }) });
        if (!r.ok) throw new Error('demo token ' + r.status);
        return (await r.json()).token;
      };
    }
    opts.onStateChange = (state, previous, detail) => log.states.push({ state, previous, ...detail });
    opts.onError = (e) => log.errors.push({ code: e.code, status: e.status, closeCode: e.closeCode });
    const client = window.client = connect(opts);
    client.on('*', (data, message) => log.notifications.push({ data, from: message.user_id }));
    return client.state;
  };
  window.ready = true;
</script>`;

let env;
before(async () => { env = await setup(); });
after(async () => { await env?.cleanup(); });

const waitState = (page, state, timeout) => page.waitForFunction((s) => window.client && window.client.state === s, state, { timeout });
const log = (page) => page.evaluate(() => window.log);

async function sameOriginModulePage(gw = env.gw) {
  const context = await env.browser.newContext();
  try {
    const page = await openSameOriginPage(context, gw, modulePage('/hermes.mjs'));
    await page.waitForFunction(() => window.ready === true);
    return { context, page };
  } catch (e) {
    await context.close();
    throw e;
  }
}

async function receivesIn(page, gw, room) {
  await gw.publish({ user_id: 'ops', room_id: room, data: { type: 'greeting', text: room } });
  await page.waitForFunction((r) => window.log.notifications.some((n) => n.data.text === r), room);
}

test('the gateway\'s /hermes.mjs works as <script type="module">: named and default exports, no global', async () => {
  const { context, page } = await sameOriginModulePage();
  try {
    const info = await page.evaluate(() => window.moduleInfo);
    assert.deepEqual(info, { version: info.version, open: 'open', sameDefault: true, globalHermes: 'undefined' });
    assert.match(info.version, /^\d+\.\d+\.\d+$/);
    await page.evaluate(() => start({ tokens: ['demo:mod-user:mod-room'] }));
    await waitState(page, 'open');
    await receivesIn(page, env.gw, 'mod-room');
  } finally {
    await context.close();
  }
});

test('a page of another origin imports the gateway\'s /hermes.mjs (CORS) and the package\'s hermes.mjs from its own server', async () => {
  const fixtures = await serveFixtures({
    'gateway-module.html': modulePage(env.gw.publicUrl + '/hermes.mjs'),
    'app-module.html': modulePage('./hermes.mjs'),
    'hermes.mjs': await readFile(PACKAGE_MJS),
  });
  const context = await env.browser.newContext();
  try {
    for (const [file, room] of [['gateway-module.html', 'x-mod-1'], ['app-module.html', 'x-mod-2']]) {
      const page = await context.newPage();
      collectConsole(page);
      await page.goto(`${fixtures.url}/${file}`);
      await page.waitForFunction(() => window.ready === true, null, { timeout: 10_000 })
        .catch((e) => { throw new Error(`${file}: the module did not load (${page.consoleLines.join('; ')}): ${e.message}`); });
      // The app's backend would mint it; /demo/token is not open to other origins.
      const { token } = await env.gw.demoToken({ user_id: 'x-user', room_id: room });
      await page.evaluate(({ url, token }) => start({ url, token }), { url: env.gw.wsUrl, token });
      await waitState(page, 'open');
      await receivesIn(page, env.gw, room);
    }
  } finally {
    await context.close();
    await fixtures.close();
  }
});

test('a frozen gateway (SIGSTOP) is noticed by the liveness ping within staleTimeout, and the client comes back resumed', async () => {
  const gw = await startGateway();
  const { context, page } = await sameOriginModulePage(gw);
  let frozen = false;
  try {
    await page.evaluate(() => start({ tokens: ['demo:frozen-user:frozen-room'], pingInterval: 300, staleTimeout: 700, backoffBase: 100, backoffCap: 500 }));
    await waitState(page, 'open');
    await receivesIn(page, gw, 'frozen-room');

    // The process stops answering; its sockets stay open (no FIN, no close frame).
    gw.process.kill('SIGSTOP');
    frozen = true;
    await waitState(page, 'reconnecting', 10_000);
    const l = await log(page);
    const dropped = l.states.find((s) => s.state === 'reconnecting');
    assert.equal(dropped.reason, 'stale', JSON.stringify(dropped));
    assert.equal(dropped.byClient, true);
    assert.ok(l.errors.some((e) => e.code === 'stale'), JSON.stringify(l.errors));

    gw.process.kill('SIGCONT');
    frozen = false;
    await waitState(page, 'open', 15_000);
    await receivesIn(page, gw, 'frozen-room');
  } finally {
    if (frozen) gw.process.kill('SIGCONT');
    await context.close();
    await gw.stop();
  }
});

test('going online cuts a long reconnect wait short', async () => {
  const gw = await startGateway();
  const context = await env.browser.newContext();
  let second;
  try {
    // Every random delay at its maximum: the wait after the restart is about a minute.
    await context.addInitScript(() => { Math.random = () => 0.999; });
    const page = await openSameOriginPage(context, gw, modulePage('/hermes.mjs'));
    await page.waitForFunction(() => window.ready === true);
    await page.evaluate(() => start({ tokens: ['demo:net-user:net-room'], restartJitter: 60_000, backoffBase: 60_000, backoffCap: 60_000 }));
    await waitState(page, 'open');

    await gw.stop(); // drains: 1012, the next attempt in ~60 s
    await waitState(page, 'reconnecting');
    assert.ok(await page.evaluate(() => client.reconnectDelay) > 50_000, 'a long wait is pending');
    second = await startGateway({ listen: gw.listen });

    // The browser loses and regains the network: `online` fires.
    await context.setOffline(true);
    await context.setOffline(false);
    await waitState(page, 'open', 10_000);
    await receivesIn(page, second, 'net-room');
  } finally {
    await context.close();
    await gw.stop();
    await second?.stop();
  }
});

test('a token refused with 401 makes the client ask its token function again, and the fresh token connects', async () => {
  const { context, page } = await sameOriginModulePage();
  try {
    // The app's first token is stale (here: garbage); the second comes from its backend.
    await page.evaluate(() => start({ tokens: ['stale.stale.stale', 'demo:retry-user:retry-room'] }));
    await waitState(page, 'open');
    const l = await log(page);
    assert.equal(l.tokens, 2, 'asked twice');
    assert.deepEqual(l.errors.map((e) => e.status), [401], 'the refusal is reported');
    const retry = l.states.find((s) => s.tokenRetry === 1);
    assert.ok(retry && retry.state === 'reconnecting' && retry.status === 401, JSON.stringify(l.states));
    assert.deepEqual(l.states.map((s) => s.state), ['connecting', 'reconnecting', 'open']);
    await receivesIn(page, env.gw, 'retry-room');
  } finally {
    await context.close();
  }
});
