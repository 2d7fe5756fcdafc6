// hermes.js decision logic (backoff, close codes, the refusal probe, dispatch, liveness,
// wake-ups, token retries), run in Node against a scripted fake WebSocket and fake fetch.
// No gateway, no browser: tests/browser covers the real thing; these pin down the rules.
import { test, beforeEach, mock } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const Hermes = require('../hermes.js');

class FakeWebSocket {
  static instances = [];
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.protocol = '';
    this.sent = [];
    FakeWebSocket.instances.push(this);
  }
  send(text) { this.sent.push(JSON.parse(text)); }
  close(code) { this.readyState = 3; this.closedByClient = code; }
  // Test controls: what the server does.
  serverOpen() {
    this.readyState = 1;
    this.protocol = Array.isArray(this.protocols) && this.protocols.includes('hermes.v1') ? 'hermes.v1' : '';
    this.onopen && this.onopen({});
  }
  serverSend(obj) { this.onmessage && this.onmessage({ data: typeof obj === 'string' ? obj : JSON.stringify(obj) }); }
  serverClose(code, reason = '') { this.readyState = 3; this.onclose && this.onclose({ code, reason }); }
  refuse() { this.readyState = 3; this.onerror && this.onerror({}); this.onclose && this.onclose({ code: 1006, reason: '' }); }
}

/** Resolve once `predicate()` is truthy, checking after each macrotask (no fixed sleeps). */
async function until(predicate, what, limitMs = 5000) {
  const start = performance.now();
  while (!predicate()) {
    if (performance.now() - start > limitMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setImmediate(r));
  }
}

function fakeFetch(status, body, headers = {}) {
  const calls = [];
  const fn = async (url, init) => {
    calls.push({ url, init });
    return {
      status,
      headers: { get: (name) => headers[name] ?? headers[name.toLowerCase()] ?? null },
      text: async () => JSON.stringify(body),
    };
  };
  fn.calls = calls;
  return fn;
}

function makeClient(options = {}) {
  const states = [];
  const errors = [];
  const client = Hermes.connect({
    url: 'ws://gw.test/production',
    token: 'jwt-1',
    WebSocket: FakeWebSocket,
    fetch: fakeFetch(426, { ok: true }),
    backoffBase: 5,
    backoffCap: 40,
    onStateChange: (state, prev, detail) => states.push({ state, prev, detail }),
    onError: (err) => errors.push(err),
    ...options,
  });
  return { client, states, errors };
}

const lastSocket = () => FakeWebSocket.instances[FakeWebSocket.instances.length - 1];
const socketCount = (n) => () => FakeWebSocket.instances.length >= n;

beforeEach(() => { FakeWebSocket.instances = []; });

test('exports Hermes for CommonJS with Client, connect and the state names', () => {
  assert.equal(typeof Hermes.Client, 'function');
  assert.equal(typeof Hermes.connect, 'function');
  assert.deepEqual(Object.values(Hermes.STATES).sort(), ['closed', 'connecting', 'open', 'reconnecting', 'unauthorized']);
});

test('puts the token in the subprotocol list by default, in the query when asked', async () => {
  const a = makeClient();
  await until(socketCount(1), 'a socket');
  assert.equal(lastSocket().url, 'ws://gw.test/production');
  assert.deepEqual(lastSocket().protocols, ['hermes.v1', 'bearer.jwt-1']);
  a.client.close();

  const b = makeClient({ tokenIn: 'query', token: 'a.b+c' });
  await until(socketCount(2), 'a second socket');
  assert.equal(lastSocket().url, 'ws://gw.test/production?token=a.b%2Bc');
  assert.equal(lastSocket().protocols, undefined);
  b.client.close();
});

test('is open after the connected frame and exposes the connection id', async () => {
  const { client, states } = makeClient();
  assert.equal(client.state, 'connecting');
  await until(socketCount(1), 'a socket');
  lastSocket().serverOpen();
  assert.equal(client.state, 'connecting', 'waits for the connected frame');
  lastSocket().serverSend({ event: 'connected', connection_id: 'c-1', user_id: 'u', room_id: 'r' });
  assert.equal(client.state, 'open');
  assert.equal(client.connectionId, 'c-1');
  assert.equal(client.userId, 'u');
  assert.equal(client.roomId, 'r');
  assert.deepEqual(states.map((s) => s.state), ['connecting', 'open']);
  client.close();
  assert.equal(client.state, 'closed');
  assert.equal(lastSocket().closedByClient, 1000);
});

test('query clients are open when the socket opens', async () => {
  const { client } = makeClient({ tokenIn: 'query' });
  await until(socketCount(1), 'a socket');
  lastSocket().serverOpen();
  assert.equal(client.state, 'open');
  client.close();
});

test('dispatches notifications by data.type and to the catch-all, with the whole message', async () => {
  const { client, errors } = makeClient();
  const got = [];
  client.on('greeting', (data, message) => got.push(['greeting', data, message.user_id]));
  const off = client.on('other', () => got.push(['other']));
  client.on('*', (data) => got.push(['*', data.type]));
  off();
  await until(socketCount(1), 'a socket');
  lastSocket().serverOpen();
  lastSocket().serverSend({ event: 'connected', connection_id: 'c', user_id: 'u', room_id: 'r' });
  lastSocket().serverSend({ user_id: 'ops', data: { type: 'greeting', text: 'hi' } });
  lastSocket().serverSend({ user_id: 'ops', data: { type: 'other' } });
  lastSocket().serverSend({ error: { code: 'unknown_action', message: 'no such action' } });
  assert.deepEqual(got, [
    ['greeting', { type: 'greeting', text: 'hi' }, 'ops'],
    ['*', 'greeting'],
    ['*', 'other'],
  ]);
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, 'unknown_action');
  assert.equal(client.state, 'open', 'an error frame does not close');
  client.close();
});

test('send and ping write the documented frames; send is refused when not open', async () => {
  const { client } = makeClient();
  assert.equal(client.send({ a: 1 }), false);
  await until(socketCount(1), 'a socket');
  const ws = lastSocket();
  ws.serverOpen();
  ws.serverSend({ event: 'connected', connection_id: 'c', user_id: 'u', room_id: 'r' });
  assert.equal(client.send({ type: 'chat', text: 'x' }), true);
  const pong = client.ping(1000);
  ws.serverSend({ event: 'pong' });
  await pong;
  assert.deepEqual(ws.sent, [{ action: 'sendMessage', data: { type: 'chat', text: 'x' } }, { action: 'ping' }]);
  client.close();
});

test('calls a token function on every attempt and reconnects with full-jitter backoff', async () => {
  let calls = 0;
  const { client, states } = makeClient({ token: async () => `jwt-${++calls}`, backoffBase: 4, backoffCap: 16 });
  for (let n = 1; n <= 5; n++) {
    await until(socketCount(n), `attempt ${n}`);
    assert.deepEqual(lastSocket().protocols, ['hermes.v1', `bearer.jwt-${n}`]);
    lastSocket().serverOpen();
    lastSocket().serverSend({ event: 'connected', connection_id: `c${n}`, user_id: 'u', room_id: 'r' });
    lastSocket().serverClose(1006);
    // Each drop after a short-lived connection backs off further: random(0, min(cap, base * 2^k)).
    const ceiling = Math.min(16, 4 * 2 ** (n - 1));
    const last = states[states.length - 1];
    assert.equal(last.state, 'reconnecting');
    assert.equal(last.detail.code, 1006);
    assert.ok(last.detail.delay >= 0 && last.detail.delay <= ceiling, `delay ${last.detail.delay} within ${ceiling}`);
  }
  assert.equal(calls, 5);
  client.close();
});

test('close 1012 (server restarting) reconnects within the restart jitter, without backing off', async () => {
  const { client, states } = makeClient({ backoffBase: 100000, backoffCap: 100000, restartJitter: 50 });
  await until(socketCount(1), 'a socket');
  lastSocket().serverOpen();
  lastSocket().serverSend({ event: 'connected', connection_id: 'c', user_id: 'u', room_id: 'r' });
  lastSocket().serverClose(1012, 'service restart');
  const last = states[states.length - 1];
  assert.equal(last.state, 'reconnecting');
  assert.equal(last.detail.code, 1012);
  assert.ok(last.detail.delay <= 50);
  await until(socketCount(2), 'the reconnect after 1012');
  client.close();
});

for (const [code, expected, errorCode] of [[4003, 'unauthorized', 'token_revoked'], [4004, 'closed', 'closed_by_server'], [4099, 'closed', 'closed_by_server']]) {
  test(`close ${code} stops for good with state ${expected} and reports it`, async () => {
    const { client, errors, states } = makeClient();
    await until(socketCount(1), 'a socket');
    lastSocket().serverOpen();
    lastSocket().serverSend({ event: 'connected', connection_id: 'c', user_id: 'u', room_id: 'r' });
    lastSocket().serverClose(code, 'bye');
    assert.equal(client.state, expected);
    assert.equal(states[states.length - 1].detail.code, code);
    assert.equal(errors[errors.length - 1].code, errorCode);
    assert.equal(errors[errors.length - 1].closeCode, code);
    assert.equal(client.reconnectDelay, null, 'no reconnect scheduled');
    // connect() starts it again.
    client.connect();
    await until(socketCount(2), 'a socket after connect()');
    client.close();
  });
}

for (const status of [401, 403]) {
  test(`a refused connect is probed and a ${status} stops with state unauthorized`, async () => {
    const fetch = fakeFetch(status, { error: { code: status === 401 ? 'token_expired' : 'token_revoked', message: 'nope' } });
    const { client, errors } = makeClient({ fetch });
    await until(socketCount(1), 'a socket');
    lastSocket().refuse();
    await until(() => client.state === 'unauthorized', 'state unauthorized');
    assert.equal(fetch.calls.length, 1);
    assert.equal(fetch.calls[0].url, 'http://gw.test/production');
    assert.equal(fetch.calls[0].init.headers.Authorization, 'Bearer jwt-1');
    assert.equal(errors[0].status, status);
    assert.equal(errors[0].code, status === 401 ? 'token_expired' : 'token_revoked');
    assert.equal(FakeWebSocket.instances.length, 1, 'no further attempt');
  });
}

test('query clients probe with ?token= and wss becomes https', async () => {
  const fetch = fakeFetch(401, { error: { code: 'invalid_token', message: 'bad' } });
  const { client } = makeClient({ fetch, tokenIn: 'query', url: 'wss://gw.test/production' });
  await until(socketCount(1), 'a socket');
  lastSocket().refuse();
  await until(() => client.state === 'unauthorized', 'state unauthorized');
  assert.equal(fetch.calls[0].url, 'https://gw.test/production?token=jwt-1');
});

test('a probe answering 426 (token fine) keeps reconnecting', async () => {
  const { client, errors } = makeClient();
  await until(socketCount(1), 'a socket');
  lastSocket().refuse();
  await until(socketCount(2), 'a second attempt');
  assert.equal(client.state, 'reconnecting');
  assert.equal(errors.length, 0);
  client.close();
});

test('a probe answering 503 reports overload and waits Retry-After', async () => {
  const fetch = fakeFetch(503, { error: { code: 'overloaded', message: 'busy' } }, { 'Retry-After': '7' });
  const { client, errors, states } = makeClient({ fetch });
  await until(socketCount(1), 'a socket');
  lastSocket().refuse();
  await until(() => client.state === 'reconnecting', 'state reconnecting');
  assert.equal(errors[0].code, 'overloaded');
  assert.ok(states[states.length - 1].detail.delay >= 7000);
  client.close();
});

test('a failing probe (server unreachable) keeps reconnecting', async () => {
  const fetch = async () => { throw new TypeError('fetch failed'); };
  const { client } = makeClient({ fetch });
  await until(socketCount(1), 'a socket');
  lastSocket().refuse();
  await until(socketCount(2), 'a second attempt');
  client.close();
});

test('a failing token function is reported and retried', async () => {
  let calls = 0;
  const { client, errors } = makeClient({
    token: () => { calls++; if (calls === 1) throw new Error('backend down'); return 'jwt-ok'; },
  });
  await until(socketCount(1), 'an attempt after the token function recovered');
  assert.equal(errors[0].code, 'token_unavailable');
  assert.deepEqual(lastSocket().protocols, ['hermes.v1', 'bearer.jwt-ok']);
  client.close();
});

test('close() during a pending reconnect cancels it', async () => {
  const { client } = makeClient({ backoffBase: 1, backoffCap: 1 });
  await until(socketCount(1), 'a socket');
  lastSocket().serverOpen();
  lastSocket().serverClose(1006);
  client.close();
  assert.equal(client.state, 'closed');
  assert.equal(client.reconnectDelay, null);
  assert.equal(client._timer, null, 'the reconnect timer is cleared');
  assert.equal(FakeWebSocket.instances.length, 1);
});

test('after a drop hermes.js resumes from the last position, hands each id to the app once, and reports the recovery', async () => {
  const seen = [];
  const recoveries = [];
  const { client } = makeClient({ onRecover: (recovered, missed) => recoveries.push({ recovered, missed }) });
  client.on('*', (data) => seen.push(data.n));
  await until(socketCount(1), 'the first socket');
  const first = lastSocket();
  assert.deepEqual(first.protocols, ['hermes.v1', 'bearer.jwt-1'], 'no position yet');
  first.serverOpen();
  first.serverSend({ event: 'connected', connection_id: 'c1', user_id: 'u', room_id: 'r' });
  first.serverSend({ user_id: 's', data: { n: 1 }, id: 'm1', pos: '000000000000000100000001' });
  first.serverSend({ user_id: 's', data: { n: 2 }, id: 'm2', pos: '000000000000000200000001' });
  assert.equal(client.position, '000000000000000200000001');
  first.serverClose(1006);

  await until(socketCount(2), 'the reconnect');
  const second = lastSocket();
  assert.deepEqual(second.protocols, ['hermes.v1', 'bearer.jwt-1', 'since.000000000000000200000001']);
  second.serverOpen();
  second.serverSend({ event: 'connected', connection_id: 'c2', user_id: 'u', room_id: 'r' });
  // The replay repeats m2 (read from a little before the position), then what was missed.
  second.serverSend({ user_id: 's', data: { n: 2 }, id: 'm2', pos: '000000000000000200000001' });
  second.serverSend({ user_id: 's', data: { n: 3 }, id: 'm3', pos: '000000000000000300000001' });
  second.serverSend({ event: 'recovered', recovered: true, missed: 1 });
  second.serverSend({ user_id: 's', data: { n: 4 }, id: 'm4', pos: '000000000000000400000001' });
  assert.deepEqual(seen, [1, 2, 3, 4], 'each notification once, in order');
  assert.deepEqual(recoveries, [{ recovered: true, missed: 1 }]);
  assert.equal(client.position, '000000000000000400000001');
  client.close();
});

test('hermes.js asks its token function again and reconnects at once when the token expires (4001)', async () => {
  let calls = 0;
  const { client, states } = makeClient({ token: () => `jwt-${++calls}` });
  await until(socketCount(1), 'the first socket');
  lastSocket().serverOpen();
  lastSocket().serverSend({ event: 'connected', connection_id: 'c1', user_id: 'u', room_id: 'r' });
  lastSocket().serverClose(4001, 'token expired');
  await until(socketCount(2), 'the reconnect');
  assert.deepEqual(lastSocket().protocols, ['hermes.v1', 'bearer.jwt-2'], 'a fresh token');
  assert.equal(states.at(-1).detail.delay, 0, 'at once');
  client.close();
});

test('hermes.js with a fixed token stops (closed) when the token expires (4001)', async () => {
  const { client, states } = makeClient();
  await until(socketCount(1), 'the first socket');
  lastSocket().serverOpen();
  lastSocket().serverClose(4001, 'token expired');
  assert.equal(client.state, 'closed');
  assert.equal(states.at(-1).detail.code, 4001);
});

// ---- liveness: the application-level ping and staleTimeout ------------------------

/** An open hermes.v1 socket of `client` (the connected frame received). */
async function openSocket(n = FakeWebSocket.instances.length + 1) {
  await until(socketCount(n), `socket ${n}`);
  const ws = lastSocket();
  ws.serverOpen();
  ws.serverSend({ event: 'connected', connection_id: `c${n}`, user_id: 'u', room_id: 'r' });
  return ws;
}
const pings = (ws) => ws.sent.filter((f) => f.action === 'ping').length;

test('a silent connection is pinged after pingInterval and kept while the server answers', async () => {
  const { client, states } = makeClient({ pingInterval: 15, staleTimeout: 200 });
  const ws = await openSocket(1);
  // Answer each ping with a pong, as the gateway does; five rounds in a row.
  for (let n = 1; n <= 5; n++) {
    await until(() => pings(ws) >= n, `ping ${n}`);
    ws.serverSend({ event: 'pong' });
  }
  assert.equal(FakeWebSocket.instances.length, 1, 'no reconnect while pongs come back');
  assert.equal(client.state, 'open');
  assert.deepEqual(states.map((s) => s.state), ['connecting', 'open']);
  client.close();
});

test('a connection that stays silent after a ping for staleTimeout is dropped and replaced, resuming', async () => {
  const { client, states, errors } = makeClient({ pingInterval: 10, staleTimeout: 30 });
  const first = await openSocket(1);
  first.serverSend({ user_id: 's', data: { n: 1 }, id: 'm1', pos: '000000000000000100000001' });
  await until(() => pings(first) === 1, 'the liveness ping');
  // No pong: the server (or the path to it) is gone without a close.
  await until(() => client.state === 'reconnecting', 'the stale connection dropped');
  assert.equal(first.closedByClient, 3000, 'the client closes the dead socket itself');
  const reconnecting = states.at(-1);
  assert.equal(reconnecting.detail.reason, 'stale');
  assert.equal(reconnecting.detail.byClient, true);
  assert.equal(errors.at(-1).code, 'stale');
  await until(socketCount(2), 'the replacement socket');
  assert.deepEqual(lastSocket().protocols, ['hermes.v1', 'bearer.jwt-1', 'since.000000000000000100000001'], 'resumes from the last position');
  client.close();
});

test('any frame after the ping counts as an answer, not only the pong', async () => {
  const { client } = makeClient({ pingInterval: 10, staleTimeout: 40 });
  const ws = await openSocket(1);
  await until(() => pings(ws) === 1, 'the first ping');
  ws.serverSend({ user_id: 's', data: { type: 'busy' } });
  await until(() => pings(ws) === 2, 'the next ping, after another silence');
  ws.serverSend({ user_id: 's', data: { type: 'busy' } });
  await until(() => pings(ws) === 3, 'a third ping');
  assert.equal(FakeWebSocket.instances.length, 1);
  assert.equal(client.state, 'open');
  client.close();
});

test('pingInterval 0 turns the liveness ping off', async () => {
  const { client } = makeClient({ pingInterval: 0, staleTimeout: 1 });
  const ws = await openSocket(1);
  assert.equal(client._liveTimer, null, 'no timer armed');
  ws.serverSend({ user_id: 's', data: {} });
  assert.equal(pings(ws), 0);
  client.close();
});

test('close() stops the liveness timer', async () => {
  const { client } = makeClient({ pingInterval: 10, staleTimeout: 10 });
  await openSocket(1);
  assert.notEqual(client._liveTimer, null);
  client.close();
  assert.equal(client._liveTimer, null);
});

// ---- wake-ups: online, visibilitychange ---------------------------------------------

function wakeTargets(visibilityState = 'visible') {
  const window = new EventTarget();
  const document = new EventTarget();
  document.visibilityState = visibilityState;
  return { window, document };
}

test('going online while waiting out a long backoff reconnects at once', async () => {
  const targets = wakeTargets();
  const { client, states } = makeClient({ ...targets, backoffBase: 600000, backoffCap: 600000 });
  await until(socketCount(1), 'a socket');
  lastSocket().serverOpen();
  lastSocket().serverClose(1006); // network lost
  assert.equal(client.state, 'reconnecting');
  targets.window.dispatchEvent(new Event('online'));
  assert.equal(FakeWebSocket.instances.length, 1, 'the attempt is asynchronous (token first)');
  await until(socketCount(2), 'the attempt the online event triggered');
  assert.equal(client.reconnectDelay, null, 'the backoff timer was cancelled');
  assert.equal(client._attempt, 0, 'the backoff starts over');
  assert.equal(states.at(-1).state, 'reconnecting', 'still reconnecting until the socket opens');
  client.close();
});

test('a page becoming visible while waiting out a backoff reconnects at once; a hidden one does not', async () => {
  const targets = wakeTargets('hidden');
  const { client } = makeClient({ ...targets, backoffBase: 600000, backoffCap: 600000 });
  await until(socketCount(1), 'a socket');
  lastSocket().serverOpen();
  lastSocket().serverClose(1006);
  targets.document.dispatchEvent(new Event('visibilitychange'));
  await new Promise((r) => setImmediate(r));
  assert.notEqual(client.reconnectDelay, null, 'hidden: the backoff timer stands');
  targets.document.visibilityState = 'visible';
  targets.document.dispatchEvent(new Event('visibilitychange'));
  await until(socketCount(2), 'the attempt on becoming visible');
  client.close();
});

test('a wait a 503 asked for with Retry-After is kept when the page becomes visible', async () => {
  const targets = wakeTargets();
  const fetch = fakeFetch(503, { error: { code: 'overloaded', message: 'busy' } }, { 'Retry-After': '30' });
  const { client } = makeClient({ ...targets, fetch });
  await until(socketCount(1), 'a socket');
  lastSocket().refuse();
  await until(() => client.reconnectDelay >= 30000, 'the Retry-After wait');
  targets.document.dispatchEvent(new Event('visibilitychange'));
  targets.window.dispatchEvent(new Event('online'));
  await new Promise((r) => setImmediate(r));
  assert.ok(client.reconnectDelay >= 30000, 'still waiting');
  assert.equal(FakeWebSocket.instances.length, 1, 'no early attempt');
  client.close();
});

test('after a sleep longer than the liveness check allows, becoming visible reconnects at once', async (t) => {
  const targets = wakeTargets();
  t.mock.timers.enable({ apis: ['Date'], now: 1_000_000 });
  const { client, states } = makeClient({ ...targets, pingInterval: 20000, staleTimeout: 10000 });
  const first = await openSocket(1);
  first.serverSend({ user_id: 's', data: { n: 1 }, id: 'm1', pos: '000000000000000100000001' });
  // The laptop sleeps five minutes: the clock jumps, no timer has run.
  t.mock.timers.setTime(1_000_000 + 300_000);
  targets.document.dispatchEvent(new Event('visibilitychange'));
  assert.equal(client.state, 'reconnecting');
  assert.equal(states.at(-1).detail.reason, 'asleep');
  assert.equal(first.closedByClient, 3000);
  await until(socketCount(2), 'the reconnect after the sleep');
  assert.deepEqual(lastSocket().protocols.at(-1), 'since.000000000000000100000001');
  client.close();
});

test('becoming visible after a silence of pingInterval (but no sleep) pings at once', async (t) => {
  const targets = wakeTargets();
  t.mock.timers.enable({ apis: ['Date'], now: 1_000_000 });
  const { client } = makeClient({ ...targets, pingInterval: 20000, staleTimeout: 10000 });
  const ws = await openSocket(1);
  targets.document.dispatchEvent(new Event('visibilitychange'));
  assert.equal(pings(ws), 0, 'recently heard from: nothing to check');
  t.mock.timers.setTime(1_000_000 + 25_000);
  targets.document.dispatchEvent(new Event('visibilitychange'));
  assert.equal(pings(ws), 1, 'pinged at once');
  assert.equal(client.state, 'open', 'not dropped: it may well be alive');
  client.close();
});

test('going online while open pings at once and reconnects when no answer comes within staleTimeout', async () => {
  const targets = wakeTargets();
  const { client, states } = makeClient({ ...targets, pingInterval: 600000, staleTimeout: 30 });
  const ws = await openSocket(1);
  targets.window.dispatchEvent(new Event('online'));
  assert.equal(pings(ws), 1, 'pinged at once');
  await until(() => client.state === 'reconnecting', 'the stale connection dropped');
  assert.equal(states.at(-1).detail.reason, 'stale');
  await until(socketCount(2), 'the replacement socket');
  client.close();
});

test('the wake-up listeners are removed when the client stops, and added again by connect()', async () => {
  const listeners = { online: 0, visibilitychange: 0 };
  const counting = (target) => {
    const add = target.addEventListener.bind(target);
    const remove = target.removeEventListener.bind(target);
    target.addEventListener = (type, fn) => { listeners[type]++; add(type, fn); };
    target.removeEventListener = (type, fn) => { listeners[type]--; remove(type, fn); };
    return target;
  };
  const targets = wakeTargets();
  const { client } = makeClient({ window: counting(targets.window), document: counting(targets.document) });
  assert.deepEqual(listeners, { online: 1, visibilitychange: 1 });
  client.close();
  assert.deepEqual(listeners, { online: 0, visibilitychange: 0 });
  client.connect();
  assert.deepEqual(listeners, { online: 1, visibilitychange: 1 });
  client.close();
  const off = makeClient({ window: counting(targets.window), document: counting(targets.document), wake: false });
  assert.deepEqual(listeners, { online: 0, visibilitychange: 0 }, 'wake: false listens to nothing');
  off.client.close();
});

// ---- a token function is asked again on 401/403 before giving up --------------------

for (const status of [401, 403]) {
  test(`a ${status} makes the client ask its token function again, and it gives up when the new token is refused too`, async () => {
    let calls = 0;
    const fetch = fakeFetch(status, { error: { code: 'token_expired', message: 'nope' } });
    const { client, states, errors } = makeClient({ fetch, token: () => `jwt-${++calls}` });
    await until(socketCount(1), 'the first attempt');
    lastSocket().refuse();
    await until(socketCount(2), 'the attempt with a fresh token');
    assert.deepEqual(lastSocket().protocols, ['hermes.v1', 'bearer.jwt-2']);
    const retry = states.at(-1);
    assert.equal(retry.state, 'reconnecting');
    assert.equal(retry.detail.status, status);
    assert.equal(retry.detail.tokenRetry, 1);
    assert.equal(retry.detail.delay, 0, 'at once');
    lastSocket().refuse();
    await until(() => client.state === 'unauthorized', 'state unauthorized');
    assert.equal(calls, 2, 'asked twice, not more');
    assert.equal(FakeWebSocket.instances.length, 2);
    assert.deepEqual(errors.map((e) => e.status), [status, status], 'each refusal reported');
  });
}

test('a fresh token after a 401 connects, and a later 401 is given its retry again', async () => {
  let calls = 0;
  let verdict = 401;
  const fetch = async (url, init) => ({
    status: verdict,
    headers: { get: () => null },
    text: async () => JSON.stringify(verdict === 426 ? { ok: true } : { error: { code: 'token_expired', message: 'expired' } }),
  });
  const { client } = makeClient({ fetch, token: () => `jwt-${++calls}`, backoffBase: 1, backoffCap: 1 });
  await until(socketCount(1), 'the first attempt');
  lastSocket().refuse();
  await openSocket(2); // the fresh token is accepted
  assert.equal(client.state, 'open');
  lastSocket().serverClose(1006);
  await until(socketCount(3), 'the reconnect');
  lastSocket().refuse(); // refused again, much later: a new retry
  await until(socketCount(4), 'the retry with a fresh token');
  assert.equal(calls, 4);
  assert.notEqual(client.state, 'unauthorized');
  client.close();
});

test('tokenRetries 0, or a fixed token, stops at the first 401', async () => {
  const fetch = fakeFetch(401, { error: { code: 'invalid_token', message: 'bad' } });
  let calls = 0;
  const a = makeClient({ fetch, token: () => `jwt-${++calls}`, tokenRetries: 0 });
  await until(socketCount(1), 'an attempt');
  lastSocket().refuse();
  await until(() => a.client.state === 'unauthorized', 'unauthorized');
  assert.equal(calls, 1);
  const b = makeClient({ fetch, token: 'fixed' });
  await until(socketCount(2), 'an attempt');
  lastSocket().refuse();
  await until(() => b.client.state === 'unauthorized', 'unauthorized');
  assert.equal(FakeWebSocket.instances.length, 2);
});

test('a token function that keeps giving the expired token after 4001 ends unauthorized, not in a loop', async () => {
  const fetch = fakeFetch(401, { error: { code: 'token_expired', message: 'expired' } });
  const { client } = makeClient({ fetch, token: () => 'the-same-expired-jwt' });
  await openSocket(1);
  lastSocket().serverClose(4001, 'token expired');
  await until(socketCount(2), 'the reconnect at once');
  lastSocket().refuse();
  await until(socketCount(3), 'one more try with whatever the function gives');
  lastSocket().refuse();
  await until(() => client.state === 'unauthorized', 'unauthorized');
  assert.equal(FakeWebSocket.instances.length, 3);
});
