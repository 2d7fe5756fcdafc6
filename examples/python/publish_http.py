"""Publish one notification through the admin API, POST /v1/publish (requests).

Env: HERMES_ADMIN_URL (http://127.0.0.1:8081, the internal listener), HERMES_ADMIN_KEY
(required), ROOM_ID (room-1). Prints the message it published.
"""
import json
import os
import time
import uuid

import requests

admin_url = os.environ.get("HERMES_ADMIN_URL", "http://127.0.0.1:8081")
message = {
    "user_id": "backend",
    "room_id": os.environ.get("ROOM_ID", "room-1"),
    "data": {"type": "order.shipped", "order_id": 42, "via": "python/http"},
    "id": str(uuid.uuid4()),
    "published_at": int(time.time() * 1000),
}

response = requests.post(
    f"{admin_url}/v1/publish",
    json=message,
    headers={"Authorization": f"Bearer {os.environ['HERMES_ADMIN_KEY']}"},
    timeout=10,
)
response.raise_for_status()  # 202 {"id","delivered","gone","gateways"}; 502 when a gateway failed
print(json.dumps(message))
