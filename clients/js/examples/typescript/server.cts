// The same package from CommonJS TypeScript (e.g. a Node service holding a socket with
// Node's global WebSocket). Compiled by the tests with `tsc --noEmit`.
import Hermes = require('@hermes/client');

const client: Hermes.Client = Hermes.connect({
  url: 'ws://127.0.0.1:8080/production',
  token: () => Promise.resolve(process.env.HERMES_TOKEN ?? ''),
  wake: false,
});
client.onStateChange((state) => {
  if (state === Hermes.STATES.UNAUTHORIZED) process.exitCode = 1;
});
client.on('*', (data, message) => console.log(message.user_id, JSON.stringify(data)));
