"""Publish one notification to Hermes through RabbitMQ (pika).

Env: HERMES_AMQP_URL (amqp://guest:guest@127.0.0.1:5672/%2f), HERMES_AMQP_QUEUE
(hermes-messageQueue), ROOM_ID (room-1). Prints the message it published.
"""
import json
import os
import time
import uuid

import pika

url = os.environ.get("HERMES_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
queue = os.environ.get("HERMES_AMQP_QUEUE", "hermes-messageQueue")

message = {
    "user_id": "backend",                      # the sender, shown to browsers
    "room_id": os.environ.get("ROOM_ID", "room-1"),
    "data": {"type": "order.shipped", "order_id": 42, "via": "python/rabbitmq"},
    "id": str(uuid.uuid4()),                   # dedup id: a redelivery is pushed once
    "published_at": int(time.time() * 1000),   # milliseconds since the epoch
}

connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
channel.queue_declare(queue=queue, durable=True)  # as the consumer declares it
channel.confirm_delivery()                         # basic_publish raises if the broker refuses
channel.basic_publish(
    exchange="",                                   # the default exchange...
    routing_key=queue,                             # ...routes by queue name
    body=json.dumps(message).encode(),
    properties=pika.BasicProperties(
        delivery_mode=pika.DeliveryMode.Persistent,  # survives a broker restart
        content_type="application/json",
        message_id=message["id"],
    ),
    mandatory=True,                                # unroutable = an error, not a silent drop
)
connection.close()
print(json.dumps(message))
