// Connect tokens for Hermes (jsonwebtoken), in the three ways docs/tokens.md describes.
//
//   node mint-token.mjs issue|seed|off
//
// - issue: ask Hermes (POST /v1/tokens): it stores bcrypt(token) for the user and room and
//   returns the signed JWT. Env HERMES_ADMIN_URL, HERMES_ADMIN_KEY.
// - seed: sign here, as the original application does: token = hex(sha256(user_id +
//   passcode + room_id)), HS512 over {user_id, room_id, token, exp}; its bcrypt hash is
//   registered by POST /v1/tokens (same HERMES_TOKEN_PASSCODE) or import-tokens.
//   Env HERMES_JWT_SECRET, HERMES_TOKEN_PASSCODE.
// - off: for gateways with HERMES_TOKEN_CHECK=off: HS512 over {user_id, room_id, exp}.
//   Env HERMES_JWT_SECRET.
// USER_ID (user-1), ROOM_ID (room-1), TOKEN_TTL_SECONDS (3600). Prints
// {"token": <JWT>, "mints": N}: the token is asked for twice, and minted once.
import { createHash } from 'node:crypto';
import jwt from 'jsonwebtoken';

const TTL = Number(process.env.TOKEN_TTL_SECONDS ?? 3600);
const now = () => Math.floor(Date.now() / 1000);

async function issue(userId, roomId) {
  const adminUrl = process.env.HERMES_ADMIN_URL ?? 'http://127.0.0.1:8081';
  const response = await fetch(`${adminUrl}/v1/tokens`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${process.env.HERMES_ADMIN_KEY}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ user_id: userId, room_id: roomId, ttl_seconds: TTL }),
  });
  if (response.status !== 201) throw new Error(`POST /v1/tokens: ${response.status} ${await response.text()}`);
  const { token, expires_at: exp } = await response.json();
  return { token, exp };
}

function seed(userId, roomId) {
  const passcode = process.env.HERMES_TOKEN_PASSCODE;
  const token = createHash('sha256').update(`${userId}${passcode}${roomId}`).digest('hex');
  const exp = now() + TTL;
  const claims = { user_id: userId, room_id: roomId, token, exp };
  return { token: jwt.sign(claims, process.env.HERMES_JWT_SECRET, { algorithm: 'HS512' }), exp };
}

function off(userId, roomId) {
  const exp = now() + TTL;
  const claims = { user_id: userId, room_id: roomId, exp };
  return { token: jwt.sign(claims, process.env.HERMES_JWT_SECRET, { algorithm: 'HS512' }), exp };
}

/** One token per (user, room), minted again only when it is about to expire. */
class TokenCache {
  constructor(mint, marginSeconds = 60) {
    Object.assign(this, { mint, margin: marginSeconds, tokens: new Map(), mints: 0 });
  }
  async get(userId, roomId) {
    const key = JSON.stringify([userId, roomId]);
    let cached = this.tokens.get(key);
    if (!cached || cached.exp - this.margin <= now()) {
      cached = await this.mint(userId, roomId);
      this.mints += 1;
      this.tokens.set(key, cached);
    }
    return cached.token;
  }
}

const cache = new TokenCache({ issue, seed, off }[process.argv[2]]);
const userId = process.env.USER_ID ?? 'user-1';
const roomId = process.env.ROOM_ID ?? 'room-1';
const first = await cache.get(userId, roomId);
const again = await cache.get(userId, roomId); // a reconnect: the same token
if (first !== again && TTL > cache.margin) throw new Error('the cache minted twice');
console.log(JSON.stringify({ token: first, mints: cache.mints }));
