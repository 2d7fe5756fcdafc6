// The AWS SDKs' ApiGatewayManagementApi clients, unchanged but for their endpoint, against
// a real `hermes-gateway standalone` that accepts Signature Version 4 for two access keys:
// @aws-sdk/client-apigatewaymanagementapi in this process, boto3's apigatewaymanagementapi
// through boto3_calls.py (one process per call). Each test opens real WebSockets and checks
// what their clients receive. No sleeps: everything waits on an event.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import { once } from 'node:events';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import readline from 'node:readline';
import WebSocket from 'ws';
import {
  ApiGatewayManagementApiClient,
  PostToConnectionCommand,
  GetConnectionCommand,
  DeleteConnectionCommand,
} from '@aws-sdk/client-apigatewaymanagementapi';

const here = path.dirname(fileURLToPath(import.meta.url));
const GATEWAY_BIN = process.env.HERMES_GATEWAY_BIN;
const PYTHON = process.env.HERMES_SDK_PYTHON || 'python3';
const ADMIN_KEY = 'sdk-test-admin-key-0123456789';
// Two keys, as an operator would give two applications.
const KEYS = [
  { id: 'AKIAHERMESSDKTEST1', secret: 'sdk/test+secret/one/0123456789abcdefghij' },
  { id: 'AKIAHERMESSDKTEST2', secret: 'sdk/test+secret/two/0123456789abcdefghij' },
];
const REGION = 'eu-central-1';
const START_TIMEOUT_MS = 30_000;

let gateway;

before(async () => {
  assert.ok(GATEWAY_BIN, 'set HERMES_GATEWAY_BIN (tests/sdk/run.sh does)');
  gateway = await startGateway();
});

after(async () => {
  if (gateway) await gateway.stop();
});

/** `hermes-gateway standalone` on free ports; resolves once it printed its addresses. */
async function startGateway() {
  const child = spawn(GATEWAY_BIN, ['standalone'], {
    env: {
      ...process.env,
      HERMES_LISTEN: '127.0.0.1:0',
      HERMES_INTERNAL_LISTEN: '127.0.0.1:0',
      HERMES_ADMIN_KEY: ADMIN_KEY,
      HERMES_SIGV4_CREDENTIALS: KEYS.map((k) => `${k.id}:${k.secret}`).join(','),
      HERMES_SIGV4_REGION: REGION,
      HERMES_LOG: 'debug',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs = [];
  readline.createInterface({ input: child.stderr }).on('line', (line) => {
    logs.push(line);
    if (process.env.HERMES_TEST_VERBOSE) process.stderr.write(`[gateway] ${line}\n`);
  });
  const exited = once(child, 'exit');
  const addresses = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the gateway did not start in time')), START_TIMEOUT_MS);
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      const m = /^hermes-gateway listening public=(\S+) internal=(\S+)$/.exec(line.trim());
      if (m) {
        clearTimeout(timer);
        resolve({ publicUrl: m[1], internalUrl: m[2] });
      }
    });
    exited.then(([code]) => reject(new Error(`the gateway exited (${code}):\n${logs.join('\n')}`)));
  });
  return {
    ...addresses,
    logs: () => logs.join('\n'),
    async stop() {
      child.kill('SIGTERM');
      await exited;
    },
  };
}

/** A hermes.v1 socket of a new user: resolves { ws, id, next(), closed }. */
async function openSocket(user) {
  const res = await fetch(`${gateway.internalUrl}/v1/tokens`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${ADMIN_KEY}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ user_id: user, room_id: 'sdk-room' }),
  });
  assert.equal(res.status, 201);
  const { token } = await res.json();
  const ws = new WebSocket(`${gateway.publicUrl.replace(/^http/, 'ws')}/production`, ['hermes.v1', `bearer.${token}`]);
  const frames = [];
  const waiting = [];
  ws.on('message', (data) => {
    const text = data.toString();
    const waiter = waiting.shift();
    if (waiter) waiter(text);
    else frames.push(text);
  });
  const next = () => (frames.length ? Promise.resolve(frames.shift()) : new Promise((resolve) => waiting.push(resolve)));
  const closed = once(ws, 'close').then(([code]) => code);
  const connected = JSON.parse(await next());
  assert.equal(connected.event, 'connected');
  return { ws, id: connected.connection_id, next, closed };
}

/** The JavaScript SDK's client, configured as application code configures it. */
function jsClient({ endpoint = `${gateway.internalUrl}/production`, key = KEYS[0], secret = key.secret, clockOffsetMs = 0 } = {}) {
  return new ApiGatewayManagementApiClient({
    endpoint,
    region: REGION,
    credentials: { accessKeyId: key.id, secretAccessKey: secret },
    // No retries: the SDK retries a clock-skew refusal after correcting its clock.
    maxAttempts: 1,
    systemClockOffset: clockOffsetMs,
  });
}

/** One boto3 call (boto3_calls.py); resolves its JSON answer. */
async function boto3(op, connectionId, { data, key = KEYS[1], secret = key.secret, clockOffsetSeconds = 0, endpoint = `${gateway.internalUrl}/production` } = {}) {
  const args = {
    endpoint, key_id: key.id, secret, region: REGION, op,
    connection_id: connectionId, data, clock_offset_seconds: clockOffsetSeconds,
  };
  const { stdout } = await promisify(execFile)(PYTHON, [path.join(here, 'boto3_calls.py'), JSON.stringify(args)], {
    env: { ...process.env, AWS_CONFIG_FILE: '/dev/null', AWS_SHARED_CREDENTIALS_FILE: '/dev/null' },
  });
  return JSON.parse(stdout);
}

/** The JavaScript SDK's error of a refused command. */
async function jsRefusal(client, command) {
  try {
    await client.send(command);
  } catch (e) {
    return { name: e.name, status: e.$metadata?.httpStatusCode, message: e.message };
  }
  assert.fail('the call was accepted');
}

// ---- @aws-sdk/client-apigatewaymanagementapi ---------------------------------------------

test('JavaScript SDK: PostToConnection sends the data to the socket as it is', async () => {
  const s = await openSocket('js-post');
  const data = JSON.stringify({ type: 'greeting', text: 'héllo from the JS SDK' });
  const out = await jsClient().send(new PostToConnectionCommand({ ConnectionId: s.id, Data: data }));
  assert.equal(out.$metadata.httpStatusCode, 200);
  assert.equal(await s.next(), data);
  s.ws.close();
});

test('JavaScript SDK: GetConnection answers when it connected, from where and its last activity', async () => {
  const s = await openSocket('js-get');
  const out = await jsClient().send(new GetConnectionCommand({ ConnectionId: s.id }));
  assert.ok(out.ConnectedAt instanceof Date && Math.abs(Date.now() - out.ConnectedAt) < 60_000, String(out.ConnectedAt));
  assert.ok(out.LastActiveAt instanceof Date);
  assert.equal(out.Identity.SourceIp, '127.0.0.1');
  s.ws.close();
});

test('JavaScript SDK: DeleteConnection closes the socket with 4004, and the connection is gone after', async () => {
  const s = await openSocket('js-delete');
  const client = jsClient();
  const out = await client.send(new DeleteConnectionCommand({ ConnectionId: s.id }));
  assert.equal(out.$metadata.httpStatusCode, 204);
  assert.equal(await s.closed, 4004);
  const gone = await jsRefusal(client, new GetConnectionCommand({ ConnectionId: s.id }));
  assert.deepEqual([gone.name, gone.status], ['GoneException', 410]);
});

test('JavaScript SDK: posting to a connection that is not there is GoneException (410)', async () => {
  const gone = await jsRefusal(jsClient(), new PostToConnectionCommand({ ConnectionId: 'L0SM9cOFvHcCIhw=', Data: 'x' }));
  assert.deepEqual([gone.name, gone.status], ['GoneException', 410]);
});

test('JavaScript SDK: an endpoint without the stage works too', async () => {
  const s = await openSocket('js-no-stage');
  await jsClient({ endpoint: gateway.internalUrl }).send(new PostToConnectionCommand({ ConnectionId: s.id, Data: 'no stage' }));
  assert.equal(await s.next(), 'no stage');
  s.ws.close();
});

test('JavaScript SDK: a wrong secret is 403 InvalidSignatureException and nothing is sent', async () => {
  const s = await openSocket('js-wrong-secret');
  const r = await jsRefusal(jsClient({ secret: 'not/the/secret/0123456789abcdefghijklmn' }), new PostToConnectionCommand({ ConnectionId: s.id, Data: 'forged' }));
  assert.deepEqual([r.name, r.status], ['InvalidSignatureException', 403]);
  assert.match(r.message, /signature we calculated does not match/);
  // The socket got nothing: the next frame it receives is the one sent with the right key.
  await jsClient().send(new PostToConnectionCommand({ ConnectionId: s.id, Data: 'genuine' }));
  assert.equal(await s.next(), 'genuine');
  s.ws.close();
});

test('JavaScript SDK: an unknown access key id is 403 UnrecognizedClientException', async () => {
  const r = await jsRefusal(jsClient({ key: { id: 'AKIAUNKNOWN', secret: KEYS[0].secret } }), new GetConnectionCommand({ ConnectionId: 'any' }));
  assert.deepEqual([r.name, r.status], ['UnrecognizedClientException', 403]);
});

test('JavaScript SDK: a request signed six minutes ago (a replay outside the skew) is 403 InvalidSignatureException', async () => {
  const r = await jsRefusal(jsClient({ clockOffsetMs: -6 * 60_000 }), new GetConnectionCommand({ ConnectionId: 'any' }));
  assert.deepEqual([r.name, r.status], ['InvalidSignatureException', 403]);
  assert.match(r.message, /^Signature expired: /);
});

// ---- boto3 apigatewaymanagementapi -------------------------------------------------------

test('boto3: post_to_connection sends the data to the socket as it is', async (t) => {
  const s = await openSocket('py-post');
  const data = JSON.stringify({ type: 'greeting', text: 'héllo from boto3' });
  const r = await boto3('post', s.id, { data });
  assert.deepEqual(r.ok, { status: 200 }, JSON.stringify(r));
  assert.equal(await s.next(), data);
  t.diagnostic(`boto3 sent ${r.path}`);
  s.ws.close();
});

test('boto3: get_connection answers when it connected, from where and its last activity', async () => {
  const s = await openSocket('py-get');
  const r = await boto3('get', s.id);
  assert.equal(r.ok?.status, 200, JSON.stringify(r));
  assert.ok(Math.abs(Date.now() - Date.parse(r.ok.connected_at)) < 60_000, r.ok.connected_at);
  assert.ok(!Number.isNaN(Date.parse(r.ok.last_active_at)));
  assert.equal(r.ok.source_ip, '127.0.0.1');
  s.ws.close();
});

test('boto3: delete_connection closes the socket with 4004, and the connection is GoneException after', async () => {
  const s = await openSocket('py-delete');
  const r = await boto3('delete', s.id);
  assert.deepEqual(r.ok, { status: 204 }, JSON.stringify(r));
  assert.equal(await s.closed, 4004);
  const gone = await boto3('get', s.id);
  assert.deepEqual(gone.error && [gone.error.code, gone.error.status, gone.error.is_gone], ['GoneException', 410, true], JSON.stringify(gone));
});

test('boto3: posting to a connection that is not there is GoneException (410)', async () => {
  const r = await boto3('post', 'L0SM9cOFvHcCIhw=', { data: 'x' });
  assert.deepEqual(r.error && [r.error.code, r.error.status, r.error.is_gone], ['GoneException', 410, true], JSON.stringify(r));
});

test('boto3: a wrong secret is 403 InvalidSignatureException', async () => {
  const r = await boto3('get', 'any', { secret: 'not/the/secret/0123456789abcdefghijklmn' });
  assert.deepEqual(r.error && [r.error.code, r.error.status], ['InvalidSignatureException', 403], JSON.stringify(r));
});

test('boto3: an unknown access key id is 403 UnrecognizedClientException', async () => {
  const r = await boto3('get', 'any', { key: { id: 'AKIAUNKNOWN', secret: KEYS[1].secret } });
  assert.deepEqual(r.error && [r.error.code, r.error.status], ['UnrecognizedClientException', 403], JSON.stringify(r));
});

test('boto3: a request signed six minutes ago (a replay outside the skew) is 403 InvalidSignatureException', async () => {
  const r = await boto3('get', 'any', { clockOffsetSeconds: -360 });
  assert.deepEqual(r.error && [r.error.code, r.error.status], ['InvalidSignatureException', 403], JSON.stringify(r));
  assert.match(r.error.message, /^Signature expired: /);
});

// ---- both ----------------------------------------------------------------------------------

test('the admin key keeps working on @connections beside the signatures', async () => {
  const s = await openSocket('bearer');
  const res = await fetch(`${gateway.internalUrl}/production/@connections/${s.id}`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${ADMIN_KEY}` },
    body: 'with the admin key',
  });
  assert.equal(res.status, 200);
  assert.equal(await s.next(), 'with the admin key');
  s.ws.close();
});

test('no signature, secret or token reaches the gateway logs', async () => {
  const logs = gateway.logs();
  for (const key of KEYS) assert.ok(!logs.includes(key.secret), 'a secret access key appeared in the logs');
  assert.ok(!/Signature=[0-9a-f]{64}/.test(logs), 'a signature appeared in the logs');
});
