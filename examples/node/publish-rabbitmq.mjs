// Publish one notification to Hermes through RabbitMQ (amqplib).
// Env: HERMES_AMQP_URL (amqp://guest:guest@127.0.0.1:5672/%2f), HERMES_AMQP_QUEUE
// (hermes-messageQueue), ROOM_ID (room-1). Prints the message it published.
import { randomUUID } from 'node:crypto';
import amqp from 'amqplib';

const url = process.env.HERMES_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672/%2f';
const queue = process.env.HERMES_AMQP_QUEUE ?? 'hermes-messageQueue';

const message = {
  user_id: 'backend', // the sender, shown to browsers
  room_id: process.env.ROOM_ID ?? 'room-1',
  data: { type: 'order.shipped', order_id: 42, via: 'node/rabbitmq' },
  id: randomUUID(), // dedup id: a redelivery is pushed once
  published_at: Date.now(), // milliseconds since the epoch
};

const connection = await amqp.connect(url);
const channel = await connection.createConfirmChannel(); // the broker confirms each publish
await channel.assertQueue(queue, { durable: true }); // as the consumer declares it
channel.publish('', queue, Buffer.from(JSON.stringify(message)), {
  persistent: true, // delivery mode 2: survives a broker restart
  contentType: 'application/json',
  messageId: message.id,
});
await channel.waitForConfirms(); // rejects if the broker refused it
await connection.close();
console.log(JSON.stringify(message));
