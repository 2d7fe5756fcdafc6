"""Publish one notification to Hermes through Amazon SQS (boto3).

Env: HERMES_SQS_QUEUE_URL (required), the standard AWS_* variables (AWS_REGION or
AWS_DEFAULT_REGION, credentials, AWS_ENDPOINT_URL_SQS for a local server), ROOM_ID (room-1).
Prints the message it published.
"""
import json
import os
import time
import uuid

import boto3

message = {
    "user_id": "backend",
    "room_id": os.environ.get("ROOM_ID", "room-1"),
    "data": {"type": "order.shipped", "order_id": 42, "via": "python/sqs"},
    "id": str(uuid.uuid4()),
    "published_at": int(time.time() * 1000),
}

# boto3 reads AWS_DEFAULT_REGION (or the profile's region), not AWS_REGION: pass it on.
sqs = boto3.client("sqs", region_name=os.environ.get("AWS_REGION"))
sqs.send_message(QueueUrl=os.environ["HERMES_SQS_QUEUE_URL"], MessageBody=json.dumps(message))
print(json.dumps(message))
