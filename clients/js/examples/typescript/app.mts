// A TypeScript page script using @hermes/client as an ES module. Compiled by the tests
// with `tsc --noEmit` (strict) against the packed tarball: the types must cover this.
import { connect, STATES, type HermesError, type Message, type State } from '@hermes/client';
import Hermes from '@hermes/client';

interface Greeting {
  type: 'greeting';
  text: string;
}

async function fetchToken(): Promise<string> {
  const res = await fetch('/api/hermes-token', { method: 'POST' });
  const body = (await res.json()) as { token: string };
  return body.token;
}

const client = connect({
  url: 'wss://push.example.com/production',
  token: fetchToken, // asked again on every reconnect, and after a 401/403
  pingInterval: 15_000,
  staleTimeout: 5_000,
  onStateChange: (state: State, previous: State, detail) => {
    document.body.dataset.push = state;
    if (state === STATES.RECONNECTING) console.info(`retrying in ${detail.delay} ms (from ${previous})`);
  },
});

const stop = client.on<Greeting>('greeting', (data: Greeting, message: Message<Greeting>) => {
  console.log(data.text, 'from', message.user_id, 'at', message.pos ?? 'no position');
});
client.on('*', (data) => console.debug('notification', data));
client.onError((error: HermesError) => console.warn('hermes:', error.code, error.status ?? '', error.message));
client.onRecover((recovered, missed) => {
  if (!recovered) location.reload();
  else console.info(`caught up on ${missed} notifications`);
});

const sent: boolean = client.send({ type: 'chat', text: 'hello room' });
client.ping(2_000).then(() => console.log('alive', sent), (e: HermesError) => console.warn(e.code));
stop();

const other = new Hermes.Client({ token: 'a.jwt.token', autoConnect: false, tokenIn: 'query' });
const id: string | null = other.connectionId;
other.connect().close(1000, 'done');
console.log(Hermes.version, id, client.state satisfies State);

// The types reject what the client would reject.
// @ts-expect-error: token is required
connect({ url: 'wss://push.example.com/production' });
// @ts-expect-error: no such token placement
connect({ token: 't', tokenIn: 'header' });
// @ts-expect-error: not a state
const wrong: State = 'opened';
console.log(wrong);
