// Types of @hermes/client (hermes.js: CommonJS, and the global `Hermes` of the classic
// script). hermes.d.mts re-exports them for the ES module. Reference: docs/client.md.

/** `client.state`. */
export type State = 'connecting' | 'open' | 'reconnecting' | 'closed' | 'unauthorized';

/** The state names, as `Hermes.STATES.OPEN` etc. */
export declare const STATES: Readonly<{
  CONNECTING: 'connecting';
  OPEN: 'open';
  RECONNECTING: 'reconnecting';
  CLOSED: 'closed';
  UNAUTHORIZED: 'unauthorized';
}>;

/** The client's version. */
export declare const version: string;

/** A notification frame: `{"user_id": <sender>, "data": ...}`, plus `id` and `pos` for hermes.v1 clients. */
export interface Message<D = unknown> {
  user_id: string;
  data: D;
  /** The message id (hermes.v1). */
  id?: string;
  /** The socket's position after this notification (hermes.v1), opaque. */
  pos?: string;
  [field: string]: unknown;
}

/** What `onStateChange` gets as `detail`; which fields are set depends on the cause. */
export interface StateDetail {
  /** The close code that caused the change (3000: the client dropped the socket itself). */
  code?: number;
  reason?: string;
  /** True when the client closed the socket itself (`close()`, `reconnect()`, a stale connection). */
  byClient?: boolean;
  /** The HTTP status the refusal probe got (401, 403, 503, ...). */
  status?: number;
  /** ms until the next attempt (state `reconnecting`). */
  delay?: number;
  /** Consecutive failed attempts (state `reconnecting`). */
  attempt?: number;
  /** Set when a 401/403 made the client ask its token function again: the how-manyth time. */
  tokenRetry?: number;
  connectionId?: string | null;
  userId?: string | null;
  roomId?: string | null;
}

/** What `onError` gets: an `Error` with a `code`. */
export interface HermesError extends Error {
  name: 'HermesError';
  /**
   * The server's code (`unauthorized`, `token_expired`, `revoked`, `origin_not_allowed`,
   * `overloaded`, ...) or the client's: `token_unavailable`, `connect_failed`, `bad_frame`,
   * `stale`, `token_revoked`, `closed_by_server`, `not_open`, `timeout`, `closed`.
   */
  code: string;
  /** HTTP status of a refused connect. */
  status?: number;
  /** WebSocket close code. */
  closeCode?: number;
  /** `'server'`: an error frame from the server (the socket stays open). */
  source?: 'server';
}

/** A JWT, or where to get one: called on every connect and reconnect. */
export type TokenSource = string | (() => string | PromiseLike<string>);

/** The subset of an event target the client listens on (`online`, `visibilitychange`). */
export interface WakeTarget {
  addEventListener(type: string, listener: () => void): void;
  removeEventListener(type: string, listener: () => void): void;
}

export interface Options {
  /** Required. */
  token: TokenSource;
  /** `ws(s)://host/stage`; default: this page's host and `stage`. */
  url?: string | null;
  /** Only for the default `url`. Default `'production'`. */
  stage?: string;
  /** Where the token travels. Default `'protocol'` (`Sec-WebSocket-Protocol: hermes.v1, bearer.<jwt>`). */
  tokenIn?: 'protocol' | 'query';
  /** Default `true`. */
  autoConnect?: boolean;
  /** ms; reconnect delays are `random(0, min(backoffCap, backoffBase * 2^attempt))`. Default 500. */
  backoffBase?: number;
  /** ms. Default 30000. */
  backoffCap?: number;
  /** ms a connection must stay open for the backoff to start over. Default 10000. */
  resetAfter?: number;
  /** ms; after close 1012 the next attempt is within this. Default 1000. */
  restartJitter?: number;
  /** After a connect that never opened, ask the server why (plain GET). Default `true`. */
  probe?: boolean;
  /** ms. Default 5000. */
  probeTimeout?: number;
  /** Resume from the last position after a reconnect (hermes.v1). Default `true`. */
  resume?: boolean;
  /** ms the ids of received notifications are remembered. Default 600000. */
  dedupWindow?: number;
  /** Ids remembered at most. Default 10000. */
  dedupMax?: number;
  /** ms without any frame before the client pings the server; 0: never. Default 20000. */
  pingInterval?: number;
  /** ms after that ping without any frame before the connection counts as dead and is replaced. Default 10000. */
  staleTimeout?: number;
  /** How many times a 401/403 makes the client ask a token function again before `unauthorized`. Default 1. */
  tokenRetries?: number;
  /** React to `online` and to the page becoming visible again. Default `true`. */
  wake?: boolean;
  onStateChange?: ((state: State, previous: State, detail: StateDetail) => void) | null;
  onError?: ((error: HermesError) => void) | null;
  onRecover?: ((recovered: boolean, missed: number) => void) | null;
  /** A WebSocket constructor instead of the global one (tests, other runtimes). */
  WebSocket?: unknown;
  /** A fetch instead of the global one (the refusal probe). */
  fetch?: unknown;
  /** Where `online` fires; default the global object. */
  window?: WakeTarget | null;
  /** Where `visibilitychange` fires, with `visibilityState`; default the global document. */
  document?: (WakeTarget & { visibilityState?: string }) | null;
}

/** Undoes a subscription. */
export type Unsubscribe = () => void;

export declare class Client {
  constructor(options: Options);
  readonly options: Options;
  /** The WebSocket URL in use, without the token. */
  readonly url: string;
  readonly state: State;
  /** From the `connected` frame (hermes.v1); `null` when not open. */
  readonly connectionId: string | null;
  readonly userId: string | null;
  readonly roomId: string | null;
  /** The last error passed to `onError`. */
  readonly lastError: HermesError | null;
  /** ms until the pending reconnect attempt, or `null`. */
  readonly reconnectDelay: number | null;
  /** The position of the latest notification; the next connect resumes from it. */
  readonly position: string | null;

  /** `fn(data, message)` for every notification whose `data.type === type`; `'*'`: every notification. */
  on<D = any>(type: string, fn: (data: D, message: Message<D>) => void): Unsubscribe;
  off(type: string, fn: (...args: any[]) => void): void;
  onStateChange(fn: (state: State, previous: State, detail: StateDetail) => void): Unsubscribe;
  onError(fn: (error: HermesError) => void): Unsubscribe;
  onRecover(fn: (recovered: boolean, missed: number) => void): Unsubscribe;

  /** Start again after `close()`, `closed` or `unauthorized`. */
  connect(): this;
  /** `{"action":"sendMessage","data":data}`; `false` when not open (nothing is queued). */
  send(data: unknown): boolean;
  /** `{"action":"ping"}`; resolves on the pong, rejects after `timeout` ms (default 10000) or on close. */
  ping(timeout?: number): Promise<void>;
  /** Drop the socket and connect again at once, resuming. */
  reconnect(): this;
  /** Stop for good (until `connect()`). */
  close(code?: number, reason?: string): this;
}

/** `new Client(options)`. */
export declare function connect(options: Options): Client;

/** The classic script's global: `<script src="/hermes.js">` defines `Hermes`. */
export as namespace Hermes;
