// Runs every example in examples/ against real processes: a `hermes-gateway standalone`
// (bcrypt tokens, HERMES_TOKEN_PASSCODE set), a second one with HERMES_TOKEN_CHECK=off, and
// two `hermes-consumer`s sharing the first gateway's registry (HERMES_REGISTRY=remote), one
// reading a fresh RabbitMQ queue, one a fresh SQS queue (moto). Each producer example
// publishes one notification that a hermes.v1 WebSocket in its own room must receive
// (same id, same data, same sender); each token example's JWT must open a WebSocket on the
// gateway of its model. examples/run.sh installs the toolchains and starts this file.
// Waits are on events (a frame, a close, a line), with deadlines; no sleeps.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import { once } from 'node:events';
import { appendFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import readline from 'node:readline';
import WebSocket from 'ws';
import amqp from 'amqplib';
import { SQSClient, CreateQueueCommand, DeleteQueueCommand, GetQueueAttributesCommand } from '@aws-sdk/client-sqs';

const here = path.dirname(fileURLToPath(import.meta.url));
const env = process.env;
for (const name of ['HERMES_GATEWAY_BIN', 'HERMES_CONSUMER_BIN', 'HERMES_TEST_AMQP_URL', 'HERMES_TEST_SQS_ENDPOINT', 'HERMES_EXAMPLES_PYTHON', 'HERMES_EXAMPLES_GO_BIN']) {
  assert.ok(env[name], `${name} is not set (examples/run.sh sets it)`);
}
const JWT_SECRET = 'examples-jwt-secret-0123456789abcdef';
const ADMIN_KEY = 'examples-admin-key-0123456789';
const INTERNAL_SECRET = 'examples-internal-secret-0123456789';
const PASSCODE = 'examples-passcode-of-the-application';
const AWS = { AWS_REGION: 'us-east-1', AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test' };
const START_TIMEOUT_MS = 30_000;
const FRAME_TIMEOUT_MS = 20_000;
const RUN_TIMEOUT_MS = 60_000;
const run = randomBytes(4).toString('hex');

// How each language's examples are started (relative to examples/).
const LANGUAGES = {
  python: (name) => [env.HERMES_EXAMPLES_PYTHON, [`python/${name.replaceAll('-', '_')}.py`]],
  node: (name) => [process.execPath, [`node/${name}.mjs`]],
  go: (name) => [path.join(env.HERMES_EXAMPLES_GO_BIN, name), []],
  ruby: (name) => ['ruby', [`ruby/${name.replaceAll('-', '_')}.rb`]],
  curl: (name) => ['bash', [`curl/${{ 'publish-http': 'publish', 'mint-token': 'token' }[name]}.sh`]],
};
const PRODUCERS = [
  ...['python', 'node', 'go', 'ruby'].flatMap((lang) => ['rabbitmq', 'sqs', 'http'].map((p) => [lang, p])),
  ['curl', 'http'],
];
const TOKEN_LANGUAGES = ['python', 'node', 'go', 'ruby'];

let gateway; // bcrypt tokens
let gatewayOff; // HERMES_TOKEN_CHECK=off
const consumers = [];
const queue = `hermes-e2e-examples-${run}`;
let sqs;
let sqsQueues = [];

/** One line per example in the report run.sh prints. */
function report(line) {
  if (env.HERMES_EXAMPLES_REPORT) appendFileSync(env.HERMES_EXAMPLES_REPORT, `${line}\n`);
}

/** Starts `bin args` and resolves once a stdout line matches `banner`, with the match. */
async function startProcess(name, bin, args, processEnv, banner) {
  const child = spawn(bin, args, { env: processEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  const logs = [];
  for (const stream of [child.stdout, child.stderr]) {
    readline.createInterface({ input: stream }).on('line', (line) => {
      logs.push(line);
      if (env.HERMES_TEST_VERBOSE) process.stderr.write(`[${name}] ${line}\n`);
    });
  }
  const exited = once(child, 'exit');
  const match = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} did not start in time:\n${logs.join('\n')}`)), START_TIMEOUT_MS);
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      const m = banner.exec(line.trim());
      if (m) {
        clearTimeout(timer);
        resolve(m);
      }
    });
    exited.then(([code]) => reject(new Error(`${name} exited (${code}):\n${logs.join('\n')}`)));
  });
  return {
    match,
    logs: () => logs.join('\n'),
    async stop() {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await exited;
      }
    },
  };
}

function baseEnv(extra) {
  return {
    PATH: env.PATH,
    HERMES_JWT_SECRET: JWT_SECRET,
    HERMES_ADMIN_KEY: ADMIN_KEY,
    HERMES_INTERNAL_SECRET: INTERNAL_SECRET,
    HERMES_LOG: 'info',
    ...extra,
  };
}

async function startGateway(extra) {
  const p = await startProcess('gateway', env.HERMES_GATEWAY_BIN, ['standalone'], baseEnv({
    HERMES_LISTEN: '127.0.0.1:0',
    HERMES_INTERNAL_LISTEN: '127.0.0.1:0',
    HERMES_DRAIN_SECONDS: '1',
    ...extra,
  }), /^hermes-gateway listening public=(\S+) internal=(\S+)$/);
  return { ...p, publicUrl: p.match[1], internalUrl: p.match[2] };
}

/** A consumer of the first gateway's registry; resolves once its /readyz answers 200. */
async function startConsumer(extra) {
  const p = await startProcess(`consumer ${extra.HERMES_SOURCE}`, env.HERMES_CONSUMER_BIN, [], baseEnv({
    HERMES_REGISTRY: 'remote',
    HERMES_REGISTRY_URL: gateway.internalUrl,
    HERMES_CONSUMER_LISTEN: '127.0.0.1:0',
    HERMES_RETRY_DELAYS_MS: '1000',
    ...extra,
  }), /^hermes-consumer listening http=(\S+)$/);
  consumers.push(p);
  // Ready once its source consumes: poll /readyz until 200 (what the Rust tests do).
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    const ok = await fetch(`${p.match[1]}/readyz`).then((r) => r.status === 200, () => false);
    if (ok) return p;
    assert.ok(Date.now() < deadline, `the ${extra.HERMES_SOURCE} consumer is not ready:\n${p.logs()}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

before(async () => {
  gateway = await startGateway({ HERMES_TOKEN_PASSCODE: PASSCODE });
  gatewayOff = await startGateway({ HERMES_TOKEN_CHECK: 'off' });
  sqs = new SQSClient({ region: AWS.AWS_REGION, endpoint: env.HERMES_TEST_SQS_ENDPOINT, credentials: { accessKeyId: 'test', secretAccessKey: 'test' } });
  const dlq = (await sqs.send(new CreateQueueCommand({ QueueName: `hermes-examples-${run}-dlq` }))).QueueUrl;
  const dlqArn = (await sqs.send(new GetQueueAttributesCommand({ QueueUrl: dlq, AttributeNames: ['QueueArn'] }))).Attributes.QueueArn;
  const main = (await sqs.send(new CreateQueueCommand({
    QueueName: `hermes-examples-${run}`,
    Attributes: { RedrivePolicy: JSON.stringify({ deadLetterTargetArn: dlqArn, maxReceiveCount: '10' }) },
  }))).QueueUrl;
  sqsQueues = [main, dlq];
  await startConsumer({ HERMES_SOURCE: 'amqp', HERMES_AMQP_URL: env.HERMES_TEST_AMQP_URL, HERMES_AMQP_QUEUE: queue });
  await startConsumer({
    HERMES_SOURCE: 'sqs', HERMES_SQS_QUEUE_URL: main, HERMES_SQS_DEAD_LETTER_QUEUE_URL: dlq,
    HERMES_SQS_WAIT_SECONDS: '1', AWS_ENDPOINT_URL_SQS: env.HERMES_TEST_SQS_ENDPOINT, ...AWS,
  });
});

after(async () => {
  for (const p of [...consumers, gateway, gatewayOff]) if (p) await p.stop();
  for (const url of sqsQueues) await sqs.send(new DeleteQueueCommand({ QueueUrl: url })).catch(() => {});
  // The queue, and the retry and dead-letter queues the consumer declared beside it.
  const connection = await amqp.connect(env.HERMES_TEST_AMQP_URL);
  const channel = await connection.createChannel();
  for (const q of [queue, `${queue}.retry.1000ms`, `${queue}.dead-letter`]) await channel.deleteQueue(q);
  await connection.close();
});

/** Runs one example; resolves the JSON of its last stdout line. */
async function runExample(lang, name, args, extraEnv) {
  const [bin, baseArgs] = LANGUAGES[lang](name);
  const { stdout } = await new Promise((resolve, reject) => {
    execFile(bin, [...baseArgs, ...args], {
      cwd: here,
      timeout: RUN_TIMEOUT_MS,
      env: { ...env, ...extraEnv },
    }, (error, out, err) => (error ? reject(new Error(`${lang} ${name} failed: ${error.message}\n${err}`)) : resolve({ stdout: out })));
  });
  const last = stdout.trim().split('\n').at(-1);
  return JSON.parse(last);
}

async function issue(gw, userId, roomId) {
  const res = await fetch(`${gw.internalUrl}/v1/tokens`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${ADMIN_KEY}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ user_id: userId, room_id: roomId }),
  });
  assert.equal(res.status, 201, await res.clone().text());
  return (await res.json()).token;
}

/**
 * A hermes.v1 socket opened with `jwt`: resolves { connected, next(predicate), closed } once the
 * `connected` frame came, or { refused: {status, body} } when the upgrade was refused.
 */
async function connect(gw, jwt) {
  const ws = new WebSocket(`${gw.publicUrl.replace(/^http/, 'ws')}/production`, ['hermes.v1', `bearer.${jwt}`]);
  const frames = [];
  let wake = () => {};
  ws.on('message', (data) => {
    frames.push(JSON.parse(data.toString()));
    wake();
  });
  const closed = once(ws, 'close').then(([code]) => code);
  const refused = new Promise((resolve) => {
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (chunk) => { body += chunk; });
      res.on('end', () => resolve({ status: res.statusCode, body: JSON.parse(body || '{}') }));
    });
  });
  ws.on('error', () => {}); // a refused upgrade also emits an error; the status says why
  /** Resolves the first frame matching `predicate` (fails after FRAME_TIMEOUT_MS). */
  const next = (predicate) => new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no matching frame within ${FRAME_TIMEOUT_MS} ms; got ${JSON.stringify(frames)}`)), FRAME_TIMEOUT_MS);
    timer.unref(); // a refused socket's wait for `connected` does not hold the process
    const look = () => {
      const i = frames.findIndex(predicate);
      if (i >= 0) {
        clearTimeout(timer);
        wake = () => {};
        resolve(frames.splice(i, 1)[0]);
      } else wake = look;
    };
    look();
  });
  const connected = next((f) => f.event === 'connected').then((frame) => ({ connected: frame }));
  connected.catch(() => {}); // when refused, this wait fails unobserved
  const outcome = await Promise.race([connected, refused.then((r) => ({ refused: r }))]);
  return { ws, next, closed, ...outcome };
}

// ---- producers ---------------------------------------------------------------------------

for (const [lang, pathName] of PRODUCERS) {
  test(`${lang} publishes through ${pathName} and a socket in the room receives it`, async () => {
    const room = `examples-${lang}-${pathName}-${run}`;
    const listener = await connect(gateway, await issue(gateway, 'listener', room));
    assert.ok(listener.connected, JSON.stringify(listener.refused));
    let published = null;
    let received = false;
    try {
      published = await runExample(lang, `publish-${pathName}`, [], {
        ROOM_ID: room,
        HERMES_AMQP_URL: env.HERMES_TEST_AMQP_URL,
        HERMES_AMQP_QUEUE: queue,
        HERMES_SQS_QUEUE_URL: sqsQueues[0],
        AWS_ENDPOINT_URL_SQS: env.HERMES_TEST_SQS_ENDPOINT,
        ...AWS,
        HERMES_ADMIN_URL: gateway.internalUrl,
        HERMES_ADMIN_KEY: ADMIN_KEY,
      });
      assert.equal(published.room_id, room);
      const frame = await listener.next((f) => f.id === published.id);
      assert.deepEqual(frame.data, published.data);
      assert.equal(frame.user_id, published.user_id);
      received = true;
    } finally {
      report(`${lang.padEnd(6)} ${pathName.padEnd(8)} published ${published ? JSON.stringify(published.data) : '(nothing: the example failed)'} received ${received ? 'yes' : 'no'}`);
      listener.ws.close();
    }
  });
}

// ---- tokens ------------------------------------------------------------------------------

const MODELS = {
  // POST /v1/tokens from the example: Hermes stores bcrypt(token) and signs the JWT.
  issue: { gw: () => gateway, env: () => ({ HERMES_ADMIN_URL: gateway.internalUrl, HERMES_ADMIN_KEY: ADMIN_KEY }) },
  // Signed by the example with the application's passcode; the row is registered first, as
  // POST /v1/tokens (or import-tokens) does once per user and room.
  seed: { gw: () => gateway, env: () => ({ HERMES_JWT_SECRET: JWT_SECRET, HERMES_TOKEN_PASSCODE: PASSCODE }), register: true },
  // Signed by the example without a token claim, for a gateway with HERMES_TOKEN_CHECK=off.
  off: { gw: () => gatewayOff, env: () => ({ HERMES_JWT_SECRET: JWT_SECRET }) },
};

for (const lang of TOKEN_LANGUAGES) {
  for (const [model, how] of Object.entries(MODELS)) {
    test(`${lang} mints a ${model} token once that opens a WebSocket on a ${model === 'off' ? 'HERMES_TOKEN_CHECK=off' : 'bcrypt'} gateway`, async () => {
      const user = `user-${lang}-${model}`;
      const room = `tokens-${run}`;
      if (how.register) await issue(gateway, user, room);
      let ok = false;
      try {
        const out = await runExample(lang, 'mint-token', [model], { USER_ID: user, ROOM_ID: room, ...how.env() });
        assert.equal(out.mints, 1, 'asked twice, minted once');
        const socket = await connect(how.gw(), out.token);
        assert.ok(socket.connected, `refused: ${JSON.stringify(socket.refused)}`);
        assert.deepEqual([socket.connected.user_id, socket.connected.room_id], [user, room]);
        socket.ws.close();
        ok = true;
      } finally {
        report(`${lang.padEnd(6)} token    ${model.padEnd(5)} minted once, WebSocket opened ${ok ? 'yes' : 'no'}`);
      }
    });
  }
}

test('a JWT without the token claim is refused by a bcrypt gateway (token_malformed)', async () => {
  const out = await runExample('python', 'mint-token', ['off'], { USER_ID: 'u-no-claim', ROOM_ID: `tokens-${run}`, HERMES_JWT_SECRET: JWT_SECRET });
  const socket = await connect(gateway, out.token);
  assert.equal(socket.refused?.status, 401);
  assert.equal(socket.refused.body.error.code, 'token_malformed');
});

test('a seed token signed with another passcode is refused (token_mismatch)', async () => {
  const [user, room] = ['u-wrong-passcode', `tokens-${run}`];
  await issue(gateway, user, room);
  const out = await runExample('node', 'mint-token', ['seed'], {
    USER_ID: user, ROOM_ID: room, HERMES_JWT_SECRET: JWT_SECRET, HERMES_TOKEN_PASSCODE: 'not-the-passcode',
  });
  const socket = await connect(gateway, out.token);
  assert.equal(socket.refused?.status, 403);
  assert.equal(socket.refused.body.error.code, 'token_mismatch');
});

test('an expired token is refused (token_expired, 401)', async () => {
  // exp 120 s ago: past the gateway's 30 s leeway.
  const out = await runExample('go', 'mint-token', ['off'], { USER_ID: 'u-expired', ROOM_ID: `tokens-${run}`, HERMES_JWT_SECRET: JWT_SECRET, TOKEN_TTL_SECONDS: '-120' });
  const socket = await connect(gatewayOff, out.token);
  assert.equal(socket.refused?.status, 401);
  assert.equal(socket.refused.body.error.code, 'token_expired');
});

test('revoking a token closes its socket with 4003 and refuses the cached JWT after', async () => {
  const [user, room] = ['u-revoked', `tokens-${run}`];
  const out = await runExample('ruby', 'mint-token', ['issue'], {
    USER_ID: user, ROOM_ID: room, HERMES_ADMIN_URL: gateway.internalUrl, HERMES_ADMIN_KEY: ADMIN_KEY,
  });
  const socket = await connect(gateway, out.token);
  assert.ok(socket.connected, JSON.stringify(socket.refused));
  const res = await fetch(`${gateway.internalUrl}/v1/tokens/${room}/${user}`, { method: 'DELETE', headers: { Authorization: `Bearer ${ADMIN_KEY}` } });
  assert.equal(res.status, 204);
  assert.equal(await socket.closed, 4003);
  const again = await connect(gateway, out.token);
  assert.equal(again.refused?.status, 403);
  assert.match(again.refused.body.error.code, /^token_(revoked|not_registered)$/);
});

test('curl asks Hermes for a token (POST /v1/tokens) that opens a WebSocket', async () => {
  const [user, room] = ['user-curl-issue', `tokens-${run}`];
  let ok = false;
  try {
    const out = await runExample('curl', 'mint-token', [], { USER_ID: user, ROOM_ID: room, HERMES_ADMIN_URL: gateway.internalUrl, HERMES_ADMIN_KEY: ADMIN_KEY });
    assert.ok(out.expires_at > Date.now() / 1000, JSON.stringify(out));
    const socket = await connect(gateway, out.token);
    assert.ok(socket.connected, `refused: ${JSON.stringify(socket.refused)}`);
    assert.deepEqual([socket.connected.user_id, socket.connected.room_id], [user, room]);
    socket.ws.close();
    ok = true;
  } finally {
    report(`curl   token    issue asked once, WebSocket opened ${ok ? 'yes' : 'no'}`);
  }
});

test('with HERMES_TOKEN_CHECK=off, revoking closes the sockets (4003) but the JWT connects again until it expires', async () => {
  const [user, room] = ['u-off-revoked', `tokens-${run}`];
  const out = await runExample('python', 'mint-token', ['off'], { USER_ID: user, ROOM_ID: room, HERMES_JWT_SECRET: JWT_SECRET });
  const socket = await connect(gatewayOff, out.token);
  assert.ok(socket.connected, JSON.stringify(socket.refused));
  const res = await fetch(`${gatewayOff.internalUrl}/v1/tokens/${room}/${user}`, { method: 'DELETE', headers: { Authorization: `Bearer ${ADMIN_KEY}` } });
  assert.equal(res.status, 404, 'no token row exists in this model');
  assert.equal(await socket.closed, 4003);
  const again = await connect(gatewayOff, out.token);
  assert.ok(again.connected, JSON.stringify(again.refused));
  again.ws.close();
});

// ---- the docs' snippets ------------------------------------------------------------------

test('every snippet in docs/publishing.md and docs/tokens.md is cut from the example it names', async () => {
  const { readFileSync } = await import('node:fs');
  let snippets = 0;
  for (const doc of ['publishing.md', 'tokens.md']) {
    const text = readFileSync(path.join(here, '..', 'docs', doc), 'utf8');
    for (const [, body] of text.matchAll(/```[a-z]*\n([\s\S]*?)\n```/g)) {
      const m = /^(?:#|\/\/) (examples\/\S+)\n([\s\S]*)$/.exec(body);
      if (!m) continue;
      const source = readFileSync(path.join(here, '..', m[1]), 'utf8');
      assert.ok(source.includes(m[2]), `${doc}: the snippet of ${m[1]} is not in that file any more:\n${m[2]}`);
      snippets += 1;
    }
  }
  assert.ok(snippets >= 13, `found only ${snippets} snippets`);
});
