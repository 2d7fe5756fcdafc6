// Publish one notification through the admin API, POST /v1/publish (fetch).
// Env: HERMES_ADMIN_URL (http://127.0.0.1:8081, the internal listener), HERMES_ADMIN_KEY
// (required), ROOM_ID (room-1). Prints the message it published.
import { randomUUID } from 'node:crypto';

const adminUrl = process.env.HERMES_ADMIN_URL ?? 'http://127.0.0.1:8081';
const message = {
  user_id: 'backend',
  room_id: process.env.ROOM_ID ?? 'room-1',
  data: { type: 'order.shipped', order_id: 42, via: 'node/http' },
  id: randomUUID(),
  published_at: Date.now(),
};

const response = await fetch(`${adminUrl}/v1/publish`, {
  method: 'POST',
  headers: {
    Authorization: `Bearer ${process.env.HERMES_ADMIN_KEY}`,
    'Content-Type': 'application/json',
  },
  body: JSON.stringify(message),
});
// 202 {"id","delivered","gone","gateways"}; 400 names the bad field; 502 when a gateway failed.
if (response.status !== 202) throw new Error(`POST /v1/publish: ${response.status} ${await response.text()}`);
console.log(JSON.stringify(message));
