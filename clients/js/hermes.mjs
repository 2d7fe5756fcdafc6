/*!
 * @hermes/client — the browser client of the Hermes WebSocket push service, as an ES module.
 *
 * GENERATED from hermes.js by tools/esm.mjs: edit hermes.js, then run `npm run esm`.
 * Plain ES2018, no dependencies, no imports: load it as it is.
 *
 *   import { connect } from '@hermes/client';          // or '/hermes.mjs' from a gateway
 *   const client = connect({ url: 'wss://push.example.com/production', token: getToken });
 *   client.on('greeting', (data, message) => console.log(data.text, 'from', message.user_id));
 *
 * The full reference is docs/client.md.
 */
const Hermes = (function () {
  'use strict';

  var VERSION = '0.2.0';
  var SUBPROTOCOL = 'hermes.v1';

  /** Connection states, as found in `client.state`. */
  var STATES = Object.freeze({
    CONNECTING: 'connecting', // first attempt (or after connect() restarted the client)
    OPEN: 'open', // socket open; notifications flow
    RECONNECTING: 'reconnecting', // lost or refused; waiting for / making the next attempt
    CLOSED: 'closed', // stopped: close() was called, or the server said "do not come back"
    UNAUTHORIZED: 'unauthorized', // stopped: the token was refused (401/403) or revoked (4003)
  });

  var DEFAULTS = {
    url: null, // ws(s)://host/stage; default: the page's host and `stage`
    stage: 'production',
    token: null, // string, or function returning a string or a Promise of one
    tokenIn: 'protocol', // 'protocol' (Sec-WebSocket-Protocol: hermes.v1, bearer.<jwt>) | 'query' (?token=)
    autoConnect: true,
    backoffBase: 500, // ms; full-jitter exponential backoff: random(0, min(cap, base * 2^attempt))
    backoffCap: 30000, // ms
    resetAfter: 10000, // ms a connection must stay open for the backoff to start over
    restartJitter: 1000, // ms; after close 1012 (server restarting) the next try is within this
    probe: true, // after a connect that never opened, ask the server why (plain GET)
    probeTimeout: 5000, // ms
    resume: true, // after a reconnect, ask for what was missed since the last notification (hermes.v1)
    dedupWindow: 600000, // ms the ids of received notifications are remembered, to drop repeats
    dedupMax: 10000, // ids remembered at most
    pingInterval: 20000, // ms without any frame from the server before the client pings ({"action":"ping"}); 0: never
    staleTimeout: 10000, // ms after that ping without any frame: the connection is presumed dead, reconnect
    tokenRetries: 1, // refused with 401/403: ask a token function again this many times before `unauthorized`
    wake: true, // react to the browser going `online` and to the page becoming visible again
    onStateChange: null,
    onRecover: null,
    onError: null,
    WebSocket: null, // constructor override (tests, non-browser runtimes)
    fetch: null, // fetch override, used by the probe
    window: null, // where `online` fires (default: the global object); tests, other runtimes
    document: null, // where `visibilitychange` fires, with `visibilityState` (default: the global document)
  };

  // Close codes that mean "do not reconnect": 4000–4099 (application), which
  // includes 4003 token revoked and 4004 disconnected by the server (admin API).
  var CLOSE_RESTART = 1012;
  var CLOSE_CLIENT_RECONNECT = 3000; // sent by the client when it drops a socket to connect again
  var CLOSE_TOKEN_EXPIRED = 4001;
  var CLOSE_REVOKED = 4003;
  function isNoReconnectCode(code) {
    return code >= 4000 && code <= 4099;
  }

  function HermesError(code, message, extra) {
    var err = new Error(message);
    err.name = 'HermesError';
    err.code = code;
    if (extra) Object.keys(extra).forEach(function (k) { err[k] = extra[k]; });
    return err;
  }

  // Handler exceptions must not break the client or the other handlers: rethrow
  // them asynchronously so they still show up in the console / error reporting.
  function safeCall(fn, args) {
    try {
      fn.apply(null, args);
    } catch (e) {
      setTimeout(function () { throw e; }, 0);
    }
  }

  function defaultUrl(stage) {
    if (typeof location === 'undefined') throw new Error('Hermes: options.url is required outside a browser');
    var scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return scheme + '//' + location.host + '/' + encodeURIComponent(stage);
  }

  function withQueryToken(url, token) {
    return url + (url.indexOf('?') === -1 ? '?' : '&') + 'token=' + encodeURIComponent(token);
  }

  class Client {
    constructor(options) {
      this.options = Object.assign({}, DEFAULTS, options || {});
      if (this.options.token == null) throw new TypeError('Hermes: options.token is required');
      this.url = this.options.url || defaultUrl(this.options.stage);

      /** One of STATES' values. */
      this.state = STATES.CLOSED;
      /** Set by the server's `connected` frame (subprotocol clients only). */
      this.connectionId = null;
      this.userId = null;
      this.roomId = null;
      /** The last error reported through onError, or null. */
      this.lastError = null;
      /** Delay in ms before the pending reconnect attempt (set when one is scheduled). */
      this.reconnectDelay = null;

      /** The position of the last notification (hermes.v1): a reconnect resumes from it. */
      this.position = null;

      this._handlers = Object.create(null); // data.type (or '*') -> [fn]
      this._seen = new Map(); // id of a received notification -> when (ms)
      this._recoverListeners = [];
      this._stateListeners = [];
      this._errorListeners = [];
      this._pongWaiters = [];
      this._ws = null;
      this._timer = null;
      this._attempt = 0; // consecutive failed attempts, drives the backoff
      this._authRetries = 0; // refusals (401/403) answered by asking the token function again
      this._openedAt = 0;
      this._lastFrameAt = 0; // when the current socket last received a frame (or opened)
      this._frames = 0; // frames the current socket received
      this._pingSentAt = 0; // when the liveness ping still unanswered was sent; 0: none
      this._framesAtPing = 0; // `_frames` when it was sent: any frame after it answers it
      this._liveTimer = null;
      this._wakeHandlers = null; // the `online` / `visibilitychange` listeners while running
      this._serverAskedToWait = false; // the pending reconnect honours a 503's Retry-After
      this._gen = 0; // bumped by connect()/close(): stale async work checks it and gives up

      if (typeof this.options.onStateChange === 'function') this.onStateChange(this.options.onStateChange);
      if (typeof this.options.onError === 'function') this.onError(this.options.onError);
      if (typeof this.options.onRecover === 'function') this.onRecover(this.options.onRecover);
      if (this.options.autoConnect) this.connect();
    }

    // ---- subscriptions -------------------------------------------------------

    /**
     * Call `fn(data, message)` for each notification whose `data.type === type`
     * (`'*'`: every notification). Returns a function that unsubscribes.
     */
    on(type, fn) {
      (this._handlers[type] = this._handlers[type] || []).push(fn);
      var self = this;
      return function () { self.off(type, fn); };
    }

    off(type, fn) {
      var list = this._handlers[type];
      if (!list) return;
      var i = list.indexOf(fn);
      if (i !== -1) list.splice(i, 1);
    }

    /** `fn(state, previousState, detail)` on every state change. Returns an unsubscribe function. */
    onStateChange(fn) {
      return this._listen(this._stateListeners, fn);
    }

    /** `fn(error)` with `error.code` (server or client code), `error.message`, maybe `error.status`/`closeCode`. */
    onError(fn) {
      return this._listen(this._errorListeners, fn);
    }

    /**
     * `fn(recovered, missed)` after a reconnect that resumed: `recovered` true means every
     * notification missed meanwhile has been delivered (`missed` of them); false means the
     * gap was too long or the history is gone: reload the state by other means.
     */
    onRecover(fn) {
      return this._listen(this._recoverListeners, fn);
    }

    _listen(list, fn) {
      list.push(fn);
      return function () {
        var i = list.indexOf(fn);
        if (i !== -1) list.splice(i, 1);
      };
    }

    // ---- commands ------------------------------------------------------------

    /** Start (or restart, after close() or unauthorized). Does nothing while already running. */
    connect() {
      if (this.state !== STATES.CLOSED && this.state !== STATES.UNAUTHORIZED) return this;
      this._gen++;
      this._attempt = 0;
      this._authRetries = 0;
      this._listenForWake();
      this._setState(STATES.CONNECTING, {});
      this._open(this._gen);
      return this;
    }

    /** Broadcast `data` to the room (action sendMessage). Returns false when not open. */
    send(data) {
      return this._sendFrame({ action: 'sendMessage', data: data });
    }

    /** Application-level ping; resolves on the server's pong, rejects after `timeout` ms or on close. */
    ping(timeout) {
      var self = this;
      return new Promise(function (resolve, reject) {
        if (!self._sendFrame({ action: 'ping' })) return reject(HermesError('not_open', 'Hermes: not connected'));
        var waiter = { resolve: resolve, reject: reject };
        waiter.timer = setTimeout(function () {
          self._pongWaiters.splice(self._pongWaiters.indexOf(waiter), 1);
          reject(HermesError('timeout', 'Hermes: no pong'));
        }, timeout || 10000);
        self._pongWaiters.push(waiter);
      });
    }

    /**
     * Drop the current connection and connect again at once, resuming from the last
     * position (what a lost network does, on purpose: the demo page's "Drop the connection").
     */
    reconnect() {
      if (!this._ws || this.state === STATES.CLOSED || this.state === STATES.UNAUTHORIZED) return this;
      this._drop('reconnect', 0);
      return this;
    }

    /** Stop for good (until connect() is called again). */
    close(code, reason) {
      this._gen++;
      clearTimeout(this._timer);
      this._timer = null;
      this.reconnectDelay = null;
      this._stopLiveness();
      var ws = this._ws;
      this._ws = null;
      if (ws) {
        this._detach(ws);
        try { ws.close(code || 1000, reason || ''); } catch (e) { /* already closing */ }
      }
      this._rejectPongs();
      this.connectionId = null;
      if (this.state !== STATES.CLOSED) this._setState(STATES.CLOSED, { code: code || 1000, reason: reason || '', byClient: true });
      return this;
    }

    // ---- internals -----------------------------------------------------------

    _sendFrame(obj) {
      var ws = this._ws;
      if (!ws || ws.readyState !== 1 /* OPEN */) return false;
      ws.send(JSON.stringify(obj));
      return true;
    }

    _setState(state, detail) {
      var previous = this.state;
      if (previous === state) return;
      this.state = state;
      if (state === STATES.OPEN) this._authRetries = 0;
      if (state === STATES.CLOSED || state === STATES.UNAUTHORIZED) this._stopListeningForWake();
      var listeners = this._stateListeners.slice();
      for (var i = 0; i < listeners.length; i++) safeCall(listeners[i], [state, previous, detail || {}]);
    }

    _reportError(err) {
      this.lastError = err;
      var listeners = this._errorListeners.slice();
      for (var i = 0; i < listeners.length; i++) safeCall(listeners[i], [err]);
    }

    // Resolve the token (a function is called on every attempt), then open the socket.
    _open(gen) {
      var self = this;
      var token = this.options.token;
      Promise.resolve()
        .then(function () { return typeof token === 'function' ? token() : token; })
        .then(function (jwt) {
          if (typeof jwt !== 'string' || jwt === '') throw new Error('the token function returned no token');
          return jwt;
        })
        .then(
          function (jwt) {
            if (gen === self._gen) self._openSocket(gen, jwt);
          },
          function (e) {
            // The app's token source failed (its backend down?): report it and try again later.
            if (gen !== self._gen) return;
            self._reportError(HermesError('token_unavailable', 'Hermes: could not get a token: ' + (e && e.message ? e.message : e)));
            self._scheduleReconnect(gen, { reason: 'token_unavailable' }, null);
          }
        );
    }

    _openSocket(gen, jwt) {
      var WS = this.options.WebSocket || (typeof WebSocket !== 'undefined' ? WebSocket : null);
      var useQuery = this.options.tokenIn === 'query';
      var ws;
      try {
        if (!WS) throw new Error('no WebSocket implementation (pass options.WebSocket)');
        var protocols = [SUBPROTOCOL, 'bearer.' + jwt];
        if (this.options.resume && this.position) protocols.push('since.' + this.position);
        ws = useQuery ? new WS(withQueryToken(this.url, jwt)) : new WS(this.url, protocols);
      } catch (e) {
        // A malformed URL or token (e.g. characters not allowed in a subprotocol) throws synchronously.
        this._reportError(HermesError('connect_failed', 'Hermes: ' + (e && e.message ? e.message : e)));
        this._scheduleReconnect(gen, { reason: 'connect_failed' }, null);
        return;
      }
      this._ws = ws;
      var self = this;
      var opened = false;

      ws.onopen = function () {
        if (gen !== self._gen) return;
        opened = true;
        self._openedAt = Date.now();
        self._lastFrameAt = self._openedAt;
        self._pingSentAt = 0;
        self._armLiveness(gen, ws, self.options.pingInterval);
        // With the hermes.v1 subprotocol the server's first frame is `connected`;
        // we report `open` once we know the connection id. Query clients get no
        // such frame, so they are open as soon as the socket is.
        if (ws.protocol !== SUBPROTOCOL) self._setState(STATES.OPEN, { connectionId: null });
      };

      ws.onmessage = function (event) {
        if (gen !== self._gen) return;
        self._lastFrameAt = Date.now();
        self._frames++;
        self._onFrame(event.data);
      };

      ws.onclose = function (event) {
        if (gen !== self._gen) return;
        self._ws = null;
        self._stopLiveness();
        self._rejectPongs();
        self.connectionId = null;
        self._onClose(gen, event.code, event.reason || '', opened, jwt);
      };

      // `error` is always followed by `close`, where everything is decided.
      ws.onerror = function () {};
    }

    _detach(ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    }

    _onFrame(text) {
      var message;
      try {
        message = JSON.parse(text);
      } catch (e) {
        this._reportError(HermesError('bad_frame', 'Hermes: the server sent a frame that is not JSON'));
        return;
      }
      if (!message || typeof message !== 'object') return;

      if (message.event === 'connected') {
        this.connectionId = message.connection_id || null;
        this.userId = message.user_id || null;
        this.roomId = message.room_id || null;
        this._setState(STATES.OPEN, { connectionId: this.connectionId, userId: this.userId, roomId: this.roomId });
        return;
      }
      if (message.event === 'pong') {
        var w = this._pongWaiters.shift();
        if (w) { clearTimeout(w.timer); w.resolve(); }
        return;
      }
      if (message.event === 'recovered') {
        var recovered = message.recovered === true;
        var missed = message.missed || 0;
        var recoverListeners = this._recoverListeners.slice();
        for (var r = 0; r < recoverListeners.length; r++) safeCall(recoverListeners[r], [recovered, missed]);
        return;
      }
      if (message.error) {
        this._reportError(HermesError(message.error.code || 'server_error', message.error.message || 'server error', { source: 'server' }));
        return;
      }
      if ('data' in message) {
        // A notification, exactly the original wire format: {"user_id": sender, "data": ...}.
        // Should a frame ever beat the `connected` frame, we are open all the same.
        if (this.state !== STATES.OPEN) this._setState(STATES.OPEN, { connectionId: this.connectionId });
        // hermes.v1 adds `id` and `pos`: a resume may send again what arrived just before
        // the position (or a retry re-sent): each id is handed to the app once.
        if (typeof message.id === 'string') {
          if (this._seen.has(message.id)) return;
          this._remember(message.id);
        }
        if (typeof message.pos === 'string' && (this.position === null || message.pos > this.position)) {
          this.position = message.pos;
        }
        var data = message.data;
        var type = data && typeof data === 'object' ? data.type : undefined;
        var handlers = (type !== undefined && this._handlers[type] ? this._handlers[type] : []).concat(this._handlers['*'] || []);
        for (var i = 0; i < handlers.length; i++) safeCall(handlers[i], [data, message]);
      }
    }

    _remember(id) {
      var now = Date.now();
      this._seen.set(id, now);
      // Map keeps insertion order: the oldest ids are first.
      var window = this.options.dedupWindow;
      var max = this.options.dedupMax;
      for (var entry of this._seen) {
        if (this._seen.size <= max && now - entry[1] <= window) break;
        this._seen.delete(entry[0]);
      }
    }

    _rejectPongs() {
      var waiters = this._pongWaiters;
      this._pongWaiters = [];
      waiters.forEach(function (w) { clearTimeout(w.timer); w.reject(HermesError('closed', 'Hermes: connection closed')); });
    }

    _onClose(gen, code, reason, opened, jwt) {
      var detail = { code: code, reason: reason };
      if (opened && Date.now() - this._openedAt >= this.options.resetAfter) this._attempt = 0;

      if (code === CLOSE_TOKEN_EXPIRED && typeof this.options.token === 'function') {
        // The token ran out: the token function gives a fresh one; resume at once.
        // (Should it give the expired one again, the refused connect asks it again up to
        // `tokenRetries` times, then the client stops with `unauthorized`.)
        return this._scheduleReconnect(gen, detail, 0);
      }
      if (code === CLOSE_REVOKED) {
        this._reportError(HermesError('token_revoked', reason || 'Hermes: the token was revoked', { closeCode: code }));
        return this._setState(STATES.UNAUTHORIZED, detail);
      }
      if (isNoReconnectCode(code)) {
        this._reportError(HermesError('closed_by_server', reason || 'Hermes: closed by the server (' + code + ')', { closeCode: code }));
        return this._setState(STATES.CLOSED, detail);
      }
      if (code === CLOSE_RESTART) {
        // The server is draining (rolling restart): come back soon, spread out.
        return this._scheduleReconnect(gen, detail, Math.random() * this.options.restartJitter);
      }
      if (!opened && this.options.probe) {
        // The browser hides why an upgrade was refused (it only says 1006);
        // the same URL answers a plain GET with the verdict. The state stays
        // connecting/reconnecting meanwhile.
        return this._probe(gen, jwt, detail);
      }
      this._scheduleReconnect(gen, detail, null);
    }

    _probe(gen, jwt, detail) {
      var self = this;
      var doFetch = this.options.fetch || (typeof fetch !== 'undefined' ? fetch.bind(typeof window !== 'undefined' ? window : undefined) : null);
      if (!doFetch) return this._scheduleReconnect(gen, detail, null);

      var httpUrl = this.url.replace(/^ws(s?):/i, 'http$1:');
      var init = { method: 'GET', cache: 'no-store', headers: {} };
      if (this.options.tokenIn === 'query') httpUrl = withQueryToken(httpUrl, jwt);
      else init.headers.Authorization = 'Bearer ' + jwt;
      var controller = typeof AbortController !== 'undefined' ? new AbortController() : null;
      var timer = null;
      if (controller) {
        init.signal = controller.signal;
        timer = setTimeout(function () { controller.abort(); }, this.options.probeTimeout);
      }

      doFetch(httpUrl, init)
        .then(function (res) {
          return res.text().then(function (text) {
            var body = null;
            try { body = JSON.parse(text); } catch (e) { /* not JSON */ }
            return { status: res.status, body: body, retryAfter: res.headers.get('Retry-After') };
          });
        })
        .then(
          function (verdict) {
            clearTimeout(timer);
            if (gen !== self._gen) return;
            var status = verdict.status;
            var e = verdict.body && verdict.body.error ? verdict.body.error : {};
            if (status === 401 || status === 403) {
              self._reportError(HermesError(e.code || (status === 401 ? 'unauthorized' : 'forbidden'), e.message || 'Hermes: connection refused (' + status + ')', { status: status }));
              if (self._mayRetryToken()) {
                // The token may just have run out or been replaced: a token function
                // gets asked again (at once) before the client gives up.
                self._authRetries++;
                return self._scheduleReconnect(gen, Object.assign({}, detail, { status: status, tokenRetry: self._authRetries }), 0);
              }
              return self._setState(STATES.UNAUTHORIZED, Object.assign({}, detail, { status: status }));
            }
            var delay = null;
            if (status !== 426) {
              // 503 overloaded (honour Retry-After), 404 wrong stage, 5xx...: report, keep trying.
              self._reportError(HermesError(e.code || 'connect_failed', e.message || 'Hermes: connection refused (' + status + ')', { status: status }));
              var seconds = parseInt(verdict.retryAfter, 10);
              if (status === 503 && seconds > 0) delay = seconds * 1000 + Math.random() * self.options.restartJitter;
            }
            // 426 means the token would be accepted: a transient failure; retry.
            self._scheduleReconnect(gen, Object.assign({}, detail, { status: status }), delay);
          },
          function () {
            // Server unreachable (restarting, network down) or a cross-origin probe
            // the server does not allow: we know nothing more; keep trying.
            clearTimeout(timer);
            if (gen !== self._gen) return;
            self._scheduleReconnect(gen, detail, null);
          }
        );
    }

    _mayRetryToken() {
      return typeof this.options.token === 'function' && this._authRetries < this.options.tokenRetries;
    }

    // Drop the current socket on purpose and connect again after `delay` (null: backoff).
    _drop(reason, delay) {
      var ws = this._ws;
      var gen = this._gen;
      this._ws = null;
      this._stopLiveness();
      if (ws) {
        this._detach(ws);
        try { ws.close(CLOSE_CLIENT_RECONNECT, reason); } catch (e) { /* already closing */ }
      }
      this._rejectPongs();
      this.connectionId = null;
      if (Date.now() - this._openedAt >= this.options.resetAfter) this._attempt = 0;
      this._scheduleReconnect(gen, { code: CLOSE_CLIENT_RECONNECT, reason: reason, byClient: true }, delay);
    }

    // ---- liveness: an application-level ping when the server has been silent -------
    //
    // The server's protocol pings are answered by the browser and invisible to pages, so
    // a connection whose peer vanished (a laptop asleep, a NAT that forgot it, a frozen
    // gateway) would look open until the server's idle timeout. Instead: after
    // `pingInterval` ms without any frame, send {"action":"ping"}; the server answers
    // {"event":"pong"}; when no frame at all arrives within `staleTimeout` ms of that ping,
    // drop the socket and reconnect (resuming from the last position). One timer per
    // socket, re-armed from the time of the last frame, so busy sockets cost nothing.

    _armLiveness(gen, ws, delay) {
      clearTimeout(this._liveTimer);
      this._liveTimer = null;
      if (!(this.options.pingInterval > 0)) return;
      var self = this;
      this._liveTimer = setTimeout(function () {
        self._liveTimer = null;
        if (gen === self._gen && ws === self._ws) self._checkLiveness(gen, ws, false);
      }, Math.max(0, delay));
    }

    _stopLiveness() {
      clearTimeout(this._liveTimer);
      this._liveTimer = null;
      this._pingSentAt = 0;
    }

    // `now`: check at once (a wake-up), pinging even if the interval has not passed.
    _checkLiveness(gen, ws, now) {
      var t = Date.now();
      var stale = this.options.staleTimeout;
      if (this._pingSentAt && this._frames > this._framesAtPing) this._pingSentAt = 0; // answered
      if (this._pingSentAt) {
        var waited = t - this._pingSentAt;
        if (waited >= stale) {
          this._reportError(HermesError('stale', 'Hermes: no answer from the server within ' + stale + ' ms; reconnecting'));
          return this._drop('stale', null);
        }
        return this._armLiveness(gen, ws, stale - waited);
      }
      var silent = t - this._lastFrameAt;
      if (now || silent >= this.options.pingInterval) {
        if (this._sendFrame({ action: 'ping' })) {
          this._pingSentAt = t;
          this._framesAtPing = this._frames;
        }
        return this._armLiveness(gen, ws, stale);
      }
      this._armLiveness(gen, ws, this.options.pingInterval - silent);
    }

    // ---- wake-ups: the network came back, the page is visible again ----------------

    _listenForWake() {
      if (this._wakeHandlers || !this.options.wake) return;
      var win = this.options.window || (typeof self !== 'undefined' ? self : typeof window !== 'undefined' ? window : null);
      var doc = this.options.document || (typeof document !== 'undefined' ? document : null);
      var client = this;
      var handlers = { win: null, doc: null, online: null, visible: null };
      if (win && typeof win.addEventListener === 'function') {
        handlers.win = win;
        handlers.online = function () { client._wake('online'); };
        win.addEventListener('online', handlers.online);
      }
      if (doc && typeof doc.addEventListener === 'function') {
        handlers.doc = doc;
        handlers.visible = function () { if (doc.visibilityState === 'visible') client._wake('visible'); };
        doc.addEventListener('visibilitychange', handlers.visible);
      }
      this._wakeHandlers = handlers;
    }

    _stopListeningForWake() {
      var h = this._wakeHandlers;
      if (!h) return;
      this._wakeHandlers = null;
      if (h.win) h.win.removeEventListener('online', h.online);
      if (h.doc) h.doc.removeEventListener('visibilitychange', h.visible);
    }

    // `online`, or the page became visible: a client waiting out a backoff tries at once
    // (with the backoff started over; not a wait a 503's Retry-After asked for); an open one checks it is still connected: after a
    // silence longer than its own liveness check allows (the machine slept, the tab was
    // frozen) it reconnects at once, otherwise it pings now (`online`, or a silence of
    // `pingInterval`) and reconnects if no answer comes within `staleTimeout`.
    _wake(kind) {
      var gen = this._gen;
      if (this.state === STATES.RECONNECTING && this._timer && !this._serverAskedToWait) {
        clearTimeout(this._timer);
        this._timer = null;
        this.reconnectDelay = null;
        this._attempt = 0;
        this._open(gen);
        return;
      }
      var ws = this._ws;
      if (this.state !== STATES.OPEN || !ws || !(this.options.pingInterval > 0)) return;
      var silent = Date.now() - this._lastFrameAt;
      if (silent > this.options.pingInterval + this.options.staleTimeout) {
        this._drop(kind === 'online' ? 'online' : 'asleep', 0);
      } else if (kind === 'online' || silent >= this.options.pingInterval) {
        if (!this._pingSentAt) this._checkLiveness(gen, ws, true);
      }
    }

    // delay: null for the normal full-jitter backoff, or an explicit delay in ms.
    _scheduleReconnect(gen, detail, delay) {
      if (gen !== this._gen) return;
      // A server that answered 503 with Retry-After asked for this wait: wake-ups keep it.
      this._serverAskedToWait = detail.status === 503 && delay != null;
      if (delay == null) {
        var ceiling = Math.min(this.options.backoffCap, this.options.backoffBase * Math.pow(2, this._attempt));
        delay = Math.random() * ceiling;
        this._attempt++;
      }
      var self = this;
      clearTimeout(this._timer);
      this._timer = setTimeout(function () {
        self._timer = null;
        self.reconnectDelay = null;
        if (gen === self._gen) self._open(gen);
      }, delay);
      this.reconnectDelay = Math.round(delay);
      // Emitted after arming the timer, so a listener may call close() from here.
      // Already reconnecting (a later failed attempt): no state change, no event.
      this._setState(STATES.RECONNECTING, Object.assign({}, detail, { delay: this.reconnectDelay, attempt: this._attempt }));
    }
  }

  return {
    version: VERSION,
    STATES: STATES,
    Client: Client,
    /** `Hermes.connect(options)` is `new Hermes.Client(options)`. */
    connect: function (options) { return new Client(options); },
  };
})();

export default Hermes;
export const { version, STATES, Client, connect } = Hermes;
