// hermes.js (as served by the gateway at /hermes.js) in headless Chromium against a
// real gateway: subprotocol auth, dispatch, send/ping, refusals, revocation, the
// admin disconnect, reconnecting through a gateway restart, and waking from a long backoff
// when the page becomes visible or the browser comes back online.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setup, startGateway, openSameOriginPage, serveFixtures, collectConsole } from './harness.mjs';

// A blank same-origin page with the gateway's /hermes.js and a recorder: `start(options)`
// creates a client (options.tokenUrl: a token function that POSTs to /demo/token with
// that body on every (re)connect) and logs everything it does into window.log.
const page = (hermesSrc) => `<!doctype html><meta charset="utf-8"><title>hermes.js test</title>
<script src="${hermesSrc}"></script>
<script>
  window.log = { states: [], errors: [], notifications: [], greetings: [], tokens: 0 };
  window.start = function (options) {
    var opts = Object.assign({}, options);
    if (opts.tokenBody) {
      var body = JSON.stringify(opts.tokenBody);
      delete opts.tokenBody;
      opts.token = function () {
        log.tokens++;
        return fetch('/demo/token', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: body })
          .then(function (r) { if (!r.ok) throw new Error('demo token ' + r.status); return r.json(); })
          .then(function (j) { return j.token; });
      };
    }
    opts.onStateChange = function (state, previous, detail) {
      log.states.push({ state: state, previous: previous, code: detail.code, status: detail.status, connectionId: window.client ? window.client.connectionId : null });
    };
    opts.onError = function (e) {
      log.errors.push({ code: e.code, message: e.message, status: e.status, closeCode: e.closeCode, source: e.source });
    };
    var client = window.client = Hermes.connect(opts);
    client.on('greeting', function (data, message) { log.greetings.push({ data: data, from: message.user_id }); });
    client.on('*', function (data, message) { log.notifications.push({ data: data, from: message.user_id }); });
    return client.state;
  };
</script>`;
const PAGE = page('/hermes.js');

let env;
before(async () => { env = await setup(); });
after(async () => { await env?.cleanup(); });

async function newPage(gw = env.gw) {
  const context = await env.browser.newContext();
  try {
    return { context, page: await openSameOriginPage(context, gw, PAGE) };
  } catch (e) {
    await context.close();
    throw e;
  }
}

const waitState = (page, state) => page.waitForFunction((s) => window.client && window.client.state === s, state);
const log = (page) => page.evaluate(() => window.log);

test('hermes.js connects with the hermes.v1 subprotocol, reports open with a connection id, and dispatches by data.type', async () => {
  const token = await env.gw.demoToken({ user_id: 'hjs-user', room_id: 'hjs-room' });
  const { context, page } = await newPage();
  try {
    assert.equal(await page.evaluate(() => typeof window.Hermes), 'object');
    assert.equal(await page.evaluate((t) => start({ token: t }), token.token), 'connecting');
    await waitState(page, 'open');
    const info = await page.evaluate(() => ({ id: client.connectionId, user: client.userId, room: client.roomId, url: client.url }));
    assert.ok(info.id, 'connection id set');
    assert.equal(info.user, 'hjs-user');
    assert.equal(info.room, 'hjs-room');
    assert.equal(info.url, env.gw.wsUrl, 'the default URL is this host, stage production');

    await env.gw.publish({ user_id: 'ops', room_id: 'hjs-room', data: { type: 'other', n: 1 } });
    await env.gw.publish({ user_id: 'ops', room_id: 'hjs-room', data: { type: 'greeting', text: 'hi' } });
    await page.waitForFunction(() => window.log.notifications.length === 2);
    const l = await log(page);
    assert.deepEqual(l.greetings, [{ data: { type: 'greeting', text: 'hi' }, from: 'ops' }]);
    assert.deepEqual(l.notifications.map((n) => n.data.type), ['other', 'greeting']);
    assert.deepEqual(l.states.map((s) => s.state), ['connecting', 'open'], 'connecting -> open, nothing else');
    assert.deepEqual(l.errors, []);
  } finally {
    await context.close();
  }
});

test('hermes.js send() broadcasts to the room, the sender included, and ping() gets a pong', async () => {
  const token = await env.gw.demoToken({ user_id: 'talker', room_id: 'talk-room' });
  const { context, page } = await newPage();
  try {
    await page.evaluate((t) => start({ token: t }), token.token);
    await waitState(page, 'open');
    await page.evaluate(() => client.ping(5000));
    assert.equal(await page.evaluate(() => client.send({ type: 'greeting', text: 'echo' })), true);
    await page.waitForFunction(() => window.log.greetings.length === 1);
    assert.deepEqual((await log(page)).greetings, [{ data: { type: 'greeting', text: 'echo' }, from: 'talker' }]);
  } finally {
    await context.close();
  }
});

test('hermes.js with tokenIn "query" connects like the original client', async () => {
  const token = await env.gw.demoToken({ user_id: 'q-user', room_id: 'q-room' });
  const { context, page } = await newPage();
  try {
    await page.evaluate((t) => start({ token: t, tokenIn: 'query' }), token.token);
    await waitState(page, 'open');
    await env.gw.publish({ user_id: 'ops', room_id: 'q-room', data: { type: 'greeting', text: 'via query' } });
    await page.waitForFunction(() => window.log.greetings.length === 1);
  } finally {
    await context.close();
  }
});

test('hermes.js stops with state unauthorized for a bad token and reports the 401', async () => {
  const { context, page } = await newPage();
  try {
    await page.evaluate(() => start({ token: 'garbage.garbage.garbage' }));
    await waitState(page, 'unauthorized');
    const l = await log(page);
    assert.equal(l.errors.length, 1);
    assert.equal(l.errors[0].status, 401);
    assert.ok(l.errors[0].code && l.errors[0].code !== 'unauthorized', `the server's error code is passed on (got ${l.errors[0].code})`);
    assert.deepEqual(l.states.map((s) => s.state), ['connecting', 'unauthorized'], 'no reconnect loop');
    assert.equal(await page.evaluate(() => client.reconnectDelay), null);
  } finally {
    await context.close();
  }
});

test('hermes.js stops with state unauthorized when its token is revoked (4003), and a new attempt is refused with 403', async () => {
  const issued = await env.gw.admin('POST', '/v1/tokens', { user_id: 'rev-user', room_id: 'rev-room' });
  assert.equal(issued.status, 201, JSON.stringify(issued.body));
  assert.equal(typeof issued.body.token, 'string');
  assert.equal(typeof issued.body.expires_at, 'number');
  const { context, page } = await newPage();
  try {
    await page.evaluate((t) => start({ token: t }), issued.body.token);
    await waitState(page, 'open');

    const revoked = await env.gw.admin('DELETE', '/v1/tokens/rev-room/rev-user');
    assert.equal(revoked.status, 204, JSON.stringify(revoked.body));
    await waitState(page, 'unauthorized');
    let l = await log(page);
    assert.equal(l.states.at(-1).code, 4003);
    assert.equal(l.errors.at(-1).code, 'token_revoked');

    // Trying again with the same token: refused before the upgrade; the probe says why.
    await page.evaluate(() => { log.errors = []; log.states = []; client.connect(); });
    await waitState(page, 'unauthorized');
    l = await log(page);
    assert.deepEqual(l.states.map((s) => s.state), ['connecting', 'unauthorized']);
    assert.equal(l.errors.length, 1);
    assert.ok([401, 403].includes(l.errors[0].status), `refused with 401/403, got ${JSON.stringify(l.errors[0])}`);
  } finally {
    await context.close();
  }
});

test('hermes.js closes for good (state closed, code 4004) when the server disconnects it through the admin API', async () => {
  const token = await env.gw.demoToken({ user_id: 'kick-user', room_id: 'kick-room' });
  const { context, page } = await newPage();
  try {
    await page.evaluate((t) => start({ token: t }), token.token);
    await waitState(page, 'open');
    const id = await page.evaluate(() => client.connectionId);
    const res = await env.gw.admin('DELETE', `/@connections/${encodeURIComponent(id)}`);
    assert.ok(res.status === 204 || res.status === 200, `DELETE /@connections answered ${res.status} ${JSON.stringify(res.body)}`);
    await waitState(page, 'closed');
    const l = await log(page);
    assert.equal(l.states.at(-1).code, 4004);
    assert.equal(l.errors.at(-1).closeCode, 4004);
    assert.equal(await page.evaluate(() => client.reconnectDelay), null);
  } finally {
    await context.close();
  }
});

test('hermes.js reconnects after the gateway drains (1012) and comes back on the same port', async () => {
  // Its own gateway: this test stops it.
  const gw = await startGateway();
  const { context, page } = await newPage(gw);
  let second;
  try {
    await page.evaluate(() => start({ tokenBody: { user_id: 'phoenix', room_id: 'restart-room' }, backoffBase: 100, backoffCap: 1000 }));
    await waitState(page, 'open');
    const firstId = await page.evaluate(() => client.connectionId);

    const stopping = gw.stop();
    await waitState(page, 'reconnecting');
    const status = await stopping;
    assert.equal(status.signal, null, `gateway exited by itself after SIGTERM (${JSON.stringify(status)})`);
    let l = await log(page);
    assert.equal(l.states.find((s) => s.state === 'reconnecting').code, 1012, 'drain closes with 1012');

    second = await startGateway({ listen: gw.listen });
    assert.equal(second.publicUrl, gw.publicUrl);
    await waitState(page, 'open');
    const secondId = await page.evaluate(() => client.connectionId);
    assert.ok(secondId && secondId !== firstId, 'a new connection');

    await second.publish({ user_id: 'ops', room_id: 'restart-room', data: { type: 'greeting', text: 'after restart' } });
    await page.waitForFunction(() => window.log.greetings.length === 1);
    l = await log(page);
    assert.ok(l.tokens >= 2, 'the token function ran again on reconnect');
    assert.deepEqual(l.errors.filter((e) => e.status === 401 || e.status === 403), []);
  } finally {
    await context.close();
    await gw.stop();
    await second?.stop();
  }
});

// Stops `gw`, then waits until `page`'s client is waiting out its backoff after the failed
// attempt (the page's Math.random is pinned, so that backoff is 99 % of a minute, not a
// draw that may be short), and returns when that wait would end (ms since the epoch, the
// page's clock).
async function stopAndWaitForALongBackoff(page, gw) {
  await gw.stop();
  await page.waitForFunction(() => window.client.state === 'reconnecting' && window.client.reconnectDelay >= 20000);
  return page.evaluate(() => Date.now() + window.client.reconnectDelay);
}

test('hermes.js waiting out a long backoff reconnects at once when the page becomes visible again and when the browser comes back online', async () => {
  const gw = await startGateway();
  const { context, page } = await newPage(gw);
  let second;
  try {
    // Full jitter draws each backoff in [0, 60 s): pinned near the top, a wake-up is the only
    // way the client can be back within the test's time.
    await page.evaluate(() => { Math.random = () => 0.99; });
    await page.evaluate(() => start({ tokenBody: { user_id: 'sleeper', room_id: 'wake-room' }, backoffBase: 60000, backoffCap: 60000 }));
    await waitState(page, 'open');

    // The page is hidden, then visible again: the real document's visibilitychange, which
    // hermes.js listens to by default (no document passed in).
    let backoffEnds = await stopAndWaitForALongBackoff(page, gw);
    second = await startGateway({ listen: gw.listen });
    await page.evaluate(() => {
      const set = (state) => {
        Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => state });
        document.dispatchEvent(new Event('visibilitychange'));
      };
      set('hidden');
      set('visible');
    });
    await waitState(page, 'open');
    let openedAt = await page.evaluate(() => Date.now());
    assert.ok(openedAt < backoffEnds, `open ${backoffEnds - openedAt} ms before the backoff would have ended`);
    await second.publish({ user_id: 'ops', room_id: 'wake-room', data: { type: 'greeting', text: 'visible again' } });
    await page.waitForFunction(() => window.log.greetings.length === 1);

    // The browser goes offline and online again (Chromium's network emulation fires the
    // window's real offline and online events).
    backoffEnds = await stopAndWaitForALongBackoff(page, second);
    const third = await startGateway({ listen: gw.listen });
    second = third;
    await context.setOffline(true);
    await context.setOffline(false);
    await waitState(page, 'open');
    openedAt = await page.evaluate(() => Date.now());
    assert.ok(openedAt < backoffEnds, `open ${backoffEnds - openedAt} ms before the backoff would have ended`);
    await third.publish({ user_id: 'ops', room_id: 'wake-room', data: { type: 'greeting', text: 'online again' } });
    await page.waitForFunction(() => window.log.greetings.length === 2);
  } finally {
    await context.close();
    await gw.stop();
    await second?.stop();
  }
});

// An application page on another origin than the gateway (its own HTTP server), with
// the gateway's hermes.js and an explicit url.
async function newCrossOriginPage(fixtures) {
  const context = await env.browser.newContext();
  const p = await context.newPage();
  collectConsole(p);
  await p.goto(fixtures.url + '/cross.html');
  return { context, page: p };
}

test('hermes.js on a page of another origin connects and receives notifications', async () => {
  const fixtures = await serveFixtures({ 'cross.html': page(env.gw.publicUrl + '/hermes.js') });
  const token = await env.gw.demoToken({ user_id: 'x-user', room_id: 'x-room' });
  const { context, page: p } = await newCrossOriginPage(fixtures);
  try {
    await p.evaluate(({ t, url }) => start({ token: t, url }), { t: token.token, url: env.gw.wsUrl });
    await waitState(p, 'open');
    await env.gw.publish({ user_id: 'ops', room_id: 'x-room', data: { type: 'greeting', text: 'cross-origin' } });
    await p.waitForFunction(() => window.log.greetings.length === 1);
  } finally {
    await context.close();
    await fixtures.close();
  }
});

test('hermes.js on a page of another origin learns why it was refused and stops (unauthorized)', async () => {
  const fixtures = await serveFixtures({ 'cross.html': page(env.gw.publicUrl + '/hermes.js') });
  const { context, page: p } = await newCrossOriginPage(fixtures);
  try {
    await p.evaluate((url) => start({ token: 'garbage.garbage.garbage', url, backoffBase: 50, backoffCap: 200 }), env.gw.wsUrl);
    // Either it stops at unauthorized, or it keeps retrying without learning why.
    await p.waitForFunction(() => window.client.state === 'unauthorized'
      || (window.client.state === 'reconnecting' && window.client._attempt >= 3));
    assert.equal(await p.evaluate(() => window.client.state), 'unauthorized');
    assert.equal((await log(p)).errors[0].status, 401);
  } finally {
    await context.close();
    await fixtures.close();
  }
});
