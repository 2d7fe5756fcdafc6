// Publish one notification to Hermes through Amazon SQS (@aws-sdk/client-sqs).
// Env: HERMES_SQS_QUEUE_URL (required), the standard AWS_* variables (AWS_REGION,
// credentials, AWS_ENDPOINT_URL_SQS for a local server), ROOM_ID (room-1).
// Prints the message it published.
import { randomUUID } from 'node:crypto';
import { SQSClient, SendMessageCommand } from '@aws-sdk/client-sqs';

const message = {
  user_id: 'backend',
  room_id: process.env.ROOM_ID ?? 'room-1',
  data: { type: 'order.shipped', order_id: 42, via: 'node/sqs' },
  id: randomUUID(),
  published_at: Date.now(),
};

const sqs = new SQSClient({});
await sqs.send(new SendMessageCommand({
  QueueUrl: process.env.HERMES_SQS_QUEUE_URL,
  MessageBody: JSON.stringify(message),
}));
console.log(JSON.stringify(message));
