"""Connect tokens for Hermes (PyJWT), in the three ways docs/tokens.md describes.

    python mint_token.py issue|seed|off

- issue: ask Hermes (POST /v1/tokens on the internal listener): it stores bcrypt(token)
  for the user and room and returns the signed JWT. Env HERMES_ADMIN_URL, HERMES_ADMIN_KEY.
- seed: sign the JWT here, as the original application does: token = hex(sha256(user_id +
  passcode + room_id)), HS512 over {user_id, room_id, token, exp}. Its bcrypt hash must be
  registered (POST /v1/tokens once with the same HERMES_TOKEN_PASSCODE, or
  hermes-gateway import-tokens). Env HERMES_JWT_SECRET, HERMES_TOKEN_PASSCODE.
- off: for gateways with HERMES_TOKEN_CHECK=off the JWT alone decides: HS512 over
  {user_id, room_id, exp}, no token claim. Env HERMES_JWT_SECRET.

USER_ID (user-1), ROOM_ID (room-1), TOKEN_TTL_SECONDS (3600). Prints
{"token": <JWT>, "mints": N}: the token is asked for twice, and minted once.
"""
import hashlib
import json
import os
import sys
import time

import jwt  # PyJWT
import requests

TTL = int(os.environ.get("TOKEN_TTL_SECONDS", "3600"))


def issue(user_id, room_id):
    response = requests.post(
        f"{os.environ.get('HERMES_ADMIN_URL', 'http://127.0.0.1:8081')}/v1/tokens",
        json={"user_id": user_id, "room_id": room_id, "ttl_seconds": TTL},
        headers={"Authorization": f"Bearer {os.environ['HERMES_ADMIN_KEY']}"},
        timeout=10,
    )
    response.raise_for_status()
    body = response.json()
    return body["token"], body["expires_at"]


def seed(user_id, room_id):
    passcode = os.environ["HERMES_TOKEN_PASSCODE"]
    token = hashlib.sha256(f"{user_id}{passcode}{room_id}".encode()).hexdigest()
    exp = int(time.time()) + TTL
    claims = {"user_id": user_id, "room_id": room_id, "token": token, "exp": exp}
    return jwt.encode(claims, os.environ["HERMES_JWT_SECRET"], algorithm="HS512"), exp


def off(user_id, room_id):
    exp = int(time.time()) + TTL
    claims = {"user_id": user_id, "room_id": room_id, "exp": exp}
    return jwt.encode(claims, os.environ["HERMES_JWT_SECRET"], algorithm="HS512"), exp


class TokenCache:
    """One token per (user, room), minted again only when it is about to expire: a
    reconnecting page gets the same token, not a new one."""

    def __init__(self, mint, margin_seconds=60):
        self.mint, self.margin, self.tokens, self.mints = mint, margin_seconds, {}, 0

    def get(self, user_id, room_id):
        cached = self.tokens.get((user_id, room_id))
        if cached is None or cached[1] - self.margin <= time.time():
            cached = self.mint(user_id, room_id)
            self.mints += 1
            self.tokens[(user_id, room_id)] = cached
        return cached[0]


if __name__ == "__main__":
    cache = TokenCache({"issue": issue, "seed": seed, "off": off}[sys.argv[1]])
    user_id, room_id = os.environ.get("USER_ID", "user-1"), os.environ.get("ROOM_ID", "room-1")
    first = cache.get(user_id, room_id)
    again = cache.get(user_id, room_id)  # a reconnect: same token (unless it had expired)
    assert first == again or TTL <= cache.margin
    print(json.dumps({"token": first, "mints": cache.mints}))
