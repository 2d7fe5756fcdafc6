// Test harness: starts a real `hermes-gateway standalone` process on port 0,
// launches Debian's headless Chromium through playwright-core, and gives the tests
// small helpers for the admin API. No sleeps: everything waits on a condition.
import { spawn } from 'node:child_process';
import http from 'node:http';
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import readline from 'node:readline';
import { randomBytes } from 'node:crypto';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, '..', '..');

export const GATEWAY_BIN = process.env.HERMES_GATEWAY_BIN
  || path.resolve(repoRoot, process.env.CARGO_TARGET_DIR || 'target', 'debug', 'hermes-gateway');
export const CHROMIUM_BIN = process.env.HERMES_CHROMIUM_BIN || '/usr/bin/chromium';

// Every gateway started here, so none outlives a test file whatever fails.
const running = new Set();

/** Stop every gateway this process started (SIGTERM, SIGKILL after 15 s). */
export async function stopAllGateways() {
  await Promise.all([...running].map((gw) => gw.stop()));
}

const LISTENING = /^hermes-gateway listening public=(\S+) internal=(\S+)$/;
const START_TIMEOUT_MS = 30_000;
const STOP_GRACE_MS = 15_000;

/** Polls `/readyz` until it answers 200 (at most START_TIMEOUT_MS). */
async function waitReady(internalUrl, child, logTail) {
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    const ok = await fetch(internalUrl + '/readyz').then((r) => r.status === 200, () => false);
    if (ok) return;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`gateway not ready within ${START_TIMEOUT_MS} ms\n--- gateway stderr (tail) ---\n${logTail.join('\n')}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/**
 * Start `hermes-gateway standalone`. `listen` defaults to 127.0.0.1:0 (pass the old
 * address to restart on the same port). Resolves once the process printed its
 * `hermes-gateway listening public=... internal=...` line and its `/readyz` answers 200.
 */
export async function startGateway({ listen = '127.0.0.1:0', internalListen = '127.0.0.1:0', env = {} } = {}) {
  if (!existsSync(GATEWAY_BIN)) throw new Error(`gateway binary not found: ${GATEWAY_BIN} (set HERMES_GATEWAY_BIN)`);
  const adminKey = env.HERMES_ADMIN_KEY || 'test-admin-' + randomBytes(12).toString('hex');
  const child = spawn(GATEWAY_BIN, ['standalone'], {
    env: {
      ...process.env,
      RUST_LOG: process.env.RUST_LOG || 'info',
      HERMES_LISTEN: listen,
      HERMES_INTERNAL_LISTEN: internalListen,
      HERMES_ADMIN_KEY: adminKey,
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });

  // Keep the last lines of stderr for diagnostics; never echo them unless asked.
  const logTail = [];
  readline.createInterface({ input: child.stderr }).on('line', (line) => {
    logTail.push(line);
    if (logTail.length > 200) logTail.shift();
    if (process.env.HERMES_TEST_VERBOSE) process.stderr.write(`[gateway] ${line}\n`);
  });
  const exited = once(child, 'exit').then(([code, signal]) => ({ code, signal }));
  const entry = { stop: () => stopChild(child, exited) };
  running.add(entry);
  exited.then(() => running.delete(entry));

  const stdout = readline.createInterface({ input: child.stdout });
  const addresses = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error(`gateway did not print its listening line within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
    function fail(err) {
      clearTimeout(timer);
      child.kill('SIGKILL');
      err.message += `\n--- gateway stderr (tail) ---\n${logTail.join('\n')}`;
      reject(err);
    }
    stdout.on('line', (line) => {
      const m = LISTENING.exec(line.trim());
      if (m) {
        clearTimeout(timer);
        resolve({ publicUrl: m[1], internalUrl: m[2] });
      }
    });
    exited.then(({ code, signal }) => fail(new Error(`gateway exited before listening (code ${code}, signal ${signal})`)));
  });

  const publicUrl = addresses.publicUrl.replace(/\/$/, '');
  const internalUrl = addresses.internalUrl.replace(/\/$/, '');
  // Sockets are accepted once /readyz answers 200 (1 s after the gateway registered;
  // upgrades before that get 503 `starting`).
  await waitReady(internalUrl, child, logTail);
  const gw = {
    process: child,
    adminKey,
    publicUrl,
    internalUrl,
    wsUrl: publicUrl.replace(/^http/, 'ws') + '/production',
    listen: new URL(publicUrl).host,
    exited,
    logs: () => logTail.join('\n'),

    /** SIGTERM (the gateway drains), SIGKILL after 15 s. Resolves with the exit status. */
    stop: () => stopChild(child, exited),

    /** Admin API call on the internal listener; resolves { status, body, headers }. */
    async admin(method, urlPath, body) {
      const res = await fetch(internalUrl + urlPath, {
        method,
        headers: { Authorization: `Bearer ${adminKey}`, ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}) },
        body: body !== undefined ? JSON.stringify(body) : undefined,
      });
      return { status: res.status, body: await parseBody(res), headers: res.headers };
    },

    /** POST /demo/token on the public listener; resolves the JSON answer. */
    async demoToken(body = {}) {
      const res = await fetch(publicUrl + '/demo/token', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify(body),
      });
      const json = await parseBody(res);
      if (res.status !== 200) throw new Error(`POST /demo/token answered ${res.status}: ${JSON.stringify(json)}`);
      return json;
    },

    /** Publish a notification through the admin API; asserts 202. */
    async publish(message) {
      const res = await gw.admin('POST', '/v1/publish', message);
      if (res.status !== 202) throw new Error(`POST /v1/publish answered ${res.status}: ${JSON.stringify(res.body)}`);
      return res.body;
    },
  };
  return gw;
}

async function stopChild(child, exited) {
  if (child.exitCode !== null || child.signalCode !== null) return exited;
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS);
  const status = await exited;
  clearTimeout(timer);
  return status;
}

async function parseBody(res) {
  const text = await res.text();
  try { return JSON.parse(text); } catch { return text; }
}

/** Launch Debian's Chromium headless (fresh temporary profile for every launch). */
export async function launchBrowser(extraArgs = []) {
  if (!existsSync(CHROMIUM_BIN)) throw new Error(`${CHROMIUM_BIN} not found: apt-get install -y chromium (tests/browser/run.sh does it)`);
  return chromium.launch({
    executablePath: CHROMIUM_BIN,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--no-first-run', '--disable-quic', '--disable-sync', ...extraArgs],
  });
}

/**
 * Open a page whose HTML comes from us but whose origin is the gateway's public
 * origin, like the demo page (the app and the gateway on one host).
 *
 * How: navigate to the gateway's own `/hermes.js` (a real 200 from a loopback
 * address; `query` is appended and ignored by the gateway, but stays in the page's
 * location), then replace the document with `html`: URL and origin stay. (A
 * `page.route` fulfilment would not do: Chromium then treats the document as
 * public-network content, and its Local Network Access checks block WebSockets to
 * 127.0.0.1.)
 */
export async function openSameOriginPage(context, gw, html, query = '') {
  const page = await context.newPage();
  collectConsole(page);
  const res = await page.goto(gw.publicUrl + '/hermes.js' + query);
  if (!res || res.status() !== 200) throw new Error(`GET /hermes.js answered ${res && res.status()}`);
  await page.setContent(html);
  return page;
}

/**
 * Serve tests/browser/fixtures/ (plus `extra`: { 'name.html': html or a Buffer }) over HTTP on
 * 127.0.0.1:0: another origin than the gateway's, as for an application whose
 * pages connect to a push service on its own host.
 */
export async function serveFixtures(extra = {}) {
  const server = http.createServer(async (req, res) => {
    const name = path.basename(new URL(req.url, 'http://x').pathname);
    try {
      const body = name in extra ? extra[name] : await readFile(path.join(here, 'fixtures', name));
      res.writeHead(200, { 'Content-Type': contentType(name) });
      res.end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    close: () => new Promise((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
}

function contentType(name) {
  if (name.endsWith('.html')) return 'text/html; charset=utf-8';
  if (name.endsWith('.js') || name.endsWith('.mjs')) return 'text/javascript; charset=utf-8';
  return 'application/octet-stream';
}

export async function readFixture(name) {
  return readFile(path.join(here, 'fixtures', name), 'utf8');
}

/** Keep page console errors and uncaught exceptions; print them when HERMES_TEST_VERBOSE is set. */
export function collectConsole(page) {
  const lines = [];
  page.on('console', (msg) => {
    lines.push(`[console.${msg.type()}] ${msg.text()}`);
    if (process.env.HERMES_TEST_VERBOSE) process.stderr.write(`[page] ${msg.type()}: ${msg.text()}\n`);
  });
  page.on('pageerror', (err) => {
    lines.push(`[pageerror] ${err.message}`);
    if (process.env.HERMES_TEST_VERBOSE) process.stderr.write(`[page] error: ${err.message}\n`);
  });
  page.consoleLines = lines;
  return lines;
}

/** Set up one browser + gateway for a test file; returns { gw, browser, cleanup }. */
export async function setup(options = {}) {
  const browser = await launchBrowser();
  let gw;
  try {
    gw = await startGateway(options);
  } catch (e) {
    await browser.close();
    throw e;
  }
  return {
    gw,
    browser,
    async cleanup() {
      await browser.close().catch(() => {});
      await stopAllGateways();
    },
  };
}
