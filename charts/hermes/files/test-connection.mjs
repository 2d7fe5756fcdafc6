// `helm test` for Hermes: issue a token with the admin API, open a WebSocket through the
// public Service, publish to the socket's room with the admin API, and wait for the
// notification. Node.js 22, standard library only (global fetch and WebSocket).
//
// Environment: HERMES_TEST_INTERNAL_URL (http://<internal service>:8081),
// HERMES_TEST_PUBLIC_URL (ws://<public service>:8080/<stage>), HERMES_ADMIN_KEY,
// HERMES_TEST_TIMEOUT_SECONDS.

const internalUrl = required("HERMES_TEST_INTERNAL_URL").replace(/\/+$/, "");
const publicUrl = required("HERMES_TEST_PUBLIC_URL");
const adminKey = required("HERMES_ADMIN_KEY");
const deadline = Date.now() + Number(process.env.HERMES_TEST_TIMEOUT_SECONDS || 60) * 1000;

const suffix = Math.random().toString(16).slice(2, 10);
const user = `helm-test-${suffix}`;
const room = `helm-test-${suffix}`;
const nonce = `nonce-${suffix}`;

function required(name) {
  const value = process.env[name];
  if (!value) fail(`${name} is not set`);
  return value;
}

function log(message) {
  console.log(`[hermes helm test] ${message}`);
}

function fail(message) {
  console.error(`[hermes helm test] FAILED: ${message}`);
  process.exit(1);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function admin(method, path, body) {
  const response = await fetch(`${internalUrl}${path}`, {
    method,
    headers: { authorization: `Bearer ${adminKey}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
  });
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    // not JSON: keep the text for the message
  }
  return { status: response.status, json, text };
}

// Retries `attempt` (which returns a value or throws) until it succeeds or time runs out:
// right after an install the gateways may still be starting.
async function retry(what, attempt) {
  let last = "no attempt";
  while (Date.now() < deadline) {
    try {
      return await attempt();
    } catch (error) {
      last = error.message;
      log(`${what}: ${last}; retrying`);
      await sleep(1000);
    }
  }
  fail(`${what}: ${last}`);
}

// The same URL without the upgrade runs the connect checks and answers 426 when the token
// would be accepted: it explains a refused upgrade, which WebSocket errors do not.
async function whyRefused(token) {
  try {
    const url = publicUrl.replace(/^ws/, "http");
    const response = await fetch(`${url}?token=${encodeURIComponent(token)}`, {
      signal: AbortSignal.timeout(5000),
    });
    return `HTTP ${response.status} ${await response.text()}`;
  } catch (error) {
    return error.message;
  }
}

function connect(token) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(publicUrl, ["hermes.v1", `bearer.${token}`]);
    const timer = setTimeout(() => {
      ws.close();
      reject(new Error("no connected event within 10 s"));
    }, 10000);
    const inbox = [];
    let waiter = null;
    ws.addEventListener("message", (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame.event === "connected") {
        clearTimeout(timer);
        resolve({ ws, connectionId: frame.connection_id, next: () => nextFrame() });
        return;
      }
      inbox.push(frame);
      if (waiter) waiter();
    });
    ws.addEventListener("error", async () => {
      clearTimeout(timer);
      reject(new Error(`upgrade refused or failed: ${await whyRefused(token)}`));
    });
    ws.addEventListener("close", (event) => {
      clearTimeout(timer);
      reject(new Error(`socket closed (${event.code} ${event.reason})`));
      if (waiter) waiter();
    });
    function nextFrame() {
      if (inbox.length > 0) return Promise.resolve(inbox.shift());
      return new Promise((done) => {
        waiter = () => {
          waiter = null;
          done(inbox.shift());
        };
      });
    }
  });
}

log(`admin API ${internalUrl}, WebSocket ${publicUrl}, user and room ${user}`);

const token = await retry("issue a token (POST /v1/tokens)", async () => {
  const r = await admin("POST", "/v1/tokens", { user_id: user, room_id: room, ttl_seconds: 600 });
  if (r.status !== 201 || !r.json?.token) throw new Error(`HTTP ${r.status} ${r.text}`);
  return r.json.token;
});
log("token issued");

const socket = await retry("connect", () => connect(token));
log(`connected, connection ${socket.connectionId}`);

// Publish until the socket receives it: a publish that races the registration of the
// socket's room finds no holder (delivered 0) and is simply sent again with a new id.
let received = null;
let attempt = 0;
while (!received && Date.now() < deadline) {
  attempt += 1;
  const r = await admin("POST", "/v1/publish", {
    user_id: "helm-test",
    room_id: room,
    id: `${nonce}-${attempt}`,
    data: { type: "helm-test", nonce },
  });
  if (r.status !== 202) {
    log(`publish ${attempt}: HTTP ${r.status} ${r.text}; retrying`);
    await sleep(1000);
    continue;
  }
  log(`publish ${attempt}: ${r.text}`);
  const frame = await Promise.race([socket.next(), sleep(3000).then(() => null)]);
  if (frame?.user_id === "helm-test" && frame?.data?.nonce === nonce) received = frame;
  else if (frame) log(`unexpected frame ${JSON.stringify(frame)}`);
}
socket.ws.close(1000);
if (!received) fail("no notification received before the deadline");
log(`received ${JSON.stringify(received)}`);

const cleanup = await admin("DELETE", `/v1/tokens/${encodeURIComponent(room)}/${encodeURIComponent(user)}`);
log(`token revoked: HTTP ${cleanup.status}`);
log("OK: token issued, socket connected, notification published and received");
process.exit(0);
