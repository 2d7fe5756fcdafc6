// The standalone demo page (GET /) in headless Chromium against a real gateway.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setup, collectConsole } from './harness.mjs';

let env;
before(async () => { env = await setup(); });
after(async () => { await env?.cleanup(); });

async function openDemo(query = '') {
  const context = await env.browser.newContext();
  const page = await context.newPage();
  collectConsole(page);
  await page.goto(env.gw.publicUrl + '/' + query);
  await page.waitForSelector('#state[data-state="open"]');
  return { context, page };
}

test('the demo page receives a notification published through the admin API and renders it', async () => {
  const { context, page } = await openDemo();
  try {
    const connectionId = (await page.textContent('#connection-id')).trim();
    assert.notEqual(connectionId, '–', 'the connection id is shown once open');
    assert.ok(connectionId.length > 0);
    const roomId = (await page.textContent('#room-id')).trim();
    assert.equal(roomId, 'demo', 'the default demo room');
    assert.match((await page.textContent('#user-id')).trim(), /^demo-/);

    const text = `hello from the admin API ${Date.now()}`;
    const outcome = await env.gw.publish({ user_id: 'ops', room_id: roomId, data: { type: 'greeting', text } });
    assert.equal(typeof outcome, 'object');

    const item = page.locator('li.notification', { hasText: text });
    await item.waitFor();
    assert.equal(await item.getAttribute('data-type'), 'greeting');
    assert.equal((await item.locator('.type').textContent()).trim(), 'greeting');
    assert.equal((await item.locator('.text').textContent()).trim(), text);
    assert.match(await item.locator('.meta').textContent(), /from ops/);
  } finally {
    await context.close();
  }
});

test('the demo page renders notification text as text, never as HTML, and shows non-text data as JSON', async () => {
  const { context, page } = await openDemo('?room=safe-room');
  try {
    assert.equal((await page.textContent('#room-id')).trim(), 'safe-room');
    const hostile = '<img src=x onerror="window.__pwned=1"><b>bold</b>';
    await env.gw.publish({ user_id: 'ops', room_id: 'safe-room', data: { type: 'greeting', text: hostile } });
    await env.gw.publish({ user_id: 'ops', room_id: 'safe-room', data: { type: 'metrics', cpu: 0.5, tags: ['a'] } });

    const item = page.locator('li.notification[data-type="greeting"]');
    await item.waitFor();
    assert.equal(await item.locator('.text').textContent(), hostile);
    assert.equal(await page.locator('#notifications img, #notifications b').count(), 0);
    assert.equal(await page.evaluate(() => window.__pwned), undefined);

    const json = page.locator('li.notification[data-type="metrics"] pre.text');
    await json.waitFor();
    assert.deepEqual(JSON.parse(await json.textContent()), { type: 'metrics', cpu: 0.5, tags: ['a'] });
  } finally {
    await context.close();
  }
});

test('a message sent from the demo page reaches every page in the room, the sender included', async () => {
  const room = `chat-${Date.now()}`;
  const a = await openDemo(`?room=${room}&user=alice`);
  const b = await openDemo(`?room=${room}&user=bob`);
  try {
    const text = 'hi from alice';
    await a.page.fill('#message-text', text);
    await a.page.click('#send-button');
    for (const { page } of [a, b]) {
      const item = page.locator('li.notification[data-type="chat"]', { hasText: text });
      await item.waitFor();
      assert.match(await item.locator('.meta').textContent(), /from alice/);
    }
    assert.equal(await a.page.inputValue('#message-text'), '', 'the input is cleared after sending');
  } finally {
    await a.context.close();
    await b.context.close();
  }
});

test('the demo page shows the curl command that publishes to its room', async () => {
  const { context, page } = await openDemo();
  try {
    const curl = (await page.textContent('#curl')).trim();
    assert.equal(curl, `curl -X POST http://127.0.0.1:8081/v1/publish -H "Authorization: Bearer $HERMES_ADMIN_KEY" -d '{"user_id":"ops","room_id":"demo","data":{"type":"greeting","text":"hello"}}'`);
    assert.deepEqual(page.consoleLines.filter((l) => l.startsWith('[pageerror]')), []);
  } finally {
    await context.close();
  }
});

test('the demo page drops its connection, resumes, shows the recovery and every notification once', async () => {
  const { context, page } = await openDemo('?room=resume-room');
  try {
    const before = `before the drop ${Date.now()}`;
    await env.gw.publish({ user_id: 'ops', room_id: 'resume-room', data: { type: 'greeting', text: before } });
    await page.locator('li.notification', { hasText: before }).waitFor();

    await page.click('#drop-button');
    const away = [`while away 1 ${Date.now()}`, `while away 2 ${Date.now()}`];
    for (const text of away) {
      await env.gw.publish({ user_id: 'ops', room_id: 'resume-room', data: { type: 'greeting', text } });
    }
    await page.waitForSelector('#recovery[data-recovered="true"]');
    assert.match(await page.textContent('#recovery'), /^Resumed: \d+ missed notifications? delivered\.$/);
    for (const text of away) await page.locator('li.notification', { hasText: text }).waitFor();
    await page.waitForSelector('#state[data-state="open"]');
    const after = `after the resume ${Date.now()}`;
    await env.gw.publish({ user_id: 'ops', room_id: 'resume-room', data: { type: 'greeting', text: after } });
    await page.locator('li.notification', { hasText: after }).waitFor();
    for (const text of [before, ...away, after]) {
      assert.equal(await page.locator('li.notification', { hasText: text }).count(), 1, `${text} once`);
    }
  } finally {
    await context.close();
  }
});
