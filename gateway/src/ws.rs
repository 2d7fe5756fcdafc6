//! The WebSocket plumbing of a socket, straight on actix-http (no actix-ws).
//!
//! actix-http writes the `101 Switching Protocols` head; then the socket's connection is
//! taken over ([`TakeOver`], a Hermes patch to the vendored dispatcher) and this module is its
//! only reader and writer. The dispatcher's task ends there: no HTTP state, timers or
//! buffers stay behind an open socket.
//!
//! - [`Outbox`]: the socket's bounded queue of frames that are already encoded. A push
//!   writes the frame straight to the connection (a non-blocking `write` on the pushing
//!   thread) whenever nothing is queued before it, so a fan-out to many sockets is one write
//!   pass over them, with no task woken per socket. Only what the kernel does not take at
//!   once is queued, and the socket's own task writes it when the connection is writable
//!   ([`Outbox::gone`], which it always awaits). A message to a room is encoded once
//!   ([`text_frame`]) and every socket writes the same reference-counted bytes (server
//!   frames are not masked, so they are byte-identical).
//! - [`Incoming`]: the client's frames, decoded and reassembled, with the size limits.
//!
//! An idle socket holds no buffer here: the queue gives its memory back when drained, and
//! the read buffer is dropped whenever it is empty.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use actix_http::body::{BodySize, MessageBody};
use actix_http::h1::TakeOver;
use actix_http::ws::{
    CloseReason, Codec, Frame, HandshakeError, Item, OpCode, Parser, ProtocolError,
};
use actix_web::dev::Payload;
use actix_web::http::{StatusCode, header};
use actix_web::web::{Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse};
use bytestring::ByteString;
use futures_util::Stream;
use hermes_shared::ids::now_millis;
use hermes_shared::metrics::Metrics;
use parking_lot::{Mutex, MutexGuard};
use tokio::net::TcpStream;

use crate::close;
use crate::error::HttpError;

/// Capacity a drained queue may keep (a socket that receives now and then keeps this small
/// ring instead of allocating one per message).
const KEEP: usize = 4;
/// Control frames and replies may go this far past the queue's capacity, so that a socket
/// closed for being slow still gets its close frame.
const CONTROL_SLACK: usize = 16;
/// RFC 6455 §5.5: control frame payloads are at most 125 bytes (a close reason 123).
const MAX_CLOSE_REASON: usize = 123;
/// The most queued frames one vectored write hands to the kernel.
const WRITE_BATCH: usize = 64;
/// What one read asks the kernel for.
const READ_CHUNK: usize = 4096;

/// What a socket is accepted with.
pub struct SocketSettings<'a> {
    /// The subprotocol to answer, if one was negotiated.
    pub protocol: Option<&'a str>,
    /// The outbox's capacity in data frames.
    pub queue: usize,
    /// The largest frame or message the client may send, bytes.
    pub max_message: usize,
    /// Where the outbox records publish → write latency (none: not recorded).
    pub metrics: Option<Arc<Metrics>>,
}

/// An accepted upgrade: the 101 response to return (it takes the connection over once its
/// head is written), the socket's outbox, and the client's frames.
pub struct Accepted {
    pub response: HttpResponse,
    pub outbox: Outbox,
    pub incoming: Incoming,
}

/// Turns an upgrade request into a socket: checks the handshake (RFC 6455 §4.2.1) and
/// builds the 101 response (echoing the subprotocol), which hands the connection to the
/// outbox once written, and the reader of the client's frames. Nothing is answered to the
/// client until the response is returned; frames pushed before that wait in the outbox.
pub fn accept(
    req: &HttpRequest,
    payload: Payload,
    settings: SocketSettings<'_>,
) -> Result<Accepted, HttpError> {
    let mut handshake = actix_http::ws::handshake(req.head()).map_err(|e: HandshakeError| {
        HttpError::new(
            StatusCode::BAD_REQUEST,
            "bad_handshake",
            format!("invalid WebSocket handshake: {e}"),
        )
    })?;
    if let Some(protocol) = settings.protocol {
        handshake.insert_header((header::SEC_WEBSOCKET_PROTOCOL, protocol));
    }
    let (outbox, attach) = Outbox::new(settings.queue, settings.metrics);
    let mut response = handshake.message_body(Unpolled.boxed()).map_err(|error| {
        tracing::warn!(%error, "cannot build an upgrade response");
        HttpError::internal("the upgrade response could not be built")
    })?;
    response.extensions_mut().insert(attach.take_over());
    let incoming = Incoming::new(payload, outbox.clone(), settings.max_message);
    Ok(Accepted {
        response: HttpResponse::from(response),
        outbox,
        incoming,
    })
}

/// The body of a 101 whose connection is taken over: the dispatcher writes its head and
/// never polls it (were it polled, the take-over was lost, and it ends the connection).
struct Unpolled;

impl MessageBody for Unpolled {
    type Error = io::Error;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        tracing::error!("an upgraded connection was not taken over; closing it");
        Poll::Ready(None)
    }
}

/// An encoded, unmasked text frame carrying `text`.
pub fn text_frame(text: &str) -> Bytes {
    encode(text.as_bytes(), OpCode::Text)
}

fn encode(payload: &[u8], op: OpCode) -> Bytes {
    let mut buf = BytesMut::with_capacity(payload.len() + 10);
    Parser::write_message(&mut buf, payload, op, true, false);
    buf.freeze()
}

/// A close frame with `code` and `reason` (cut to 123 bytes on a character boundary).
fn close_frame(code: Option<u16>, reason: &str) -> Bytes {
    let Some(code) = code else {
        return encode(&[], OpCode::Close);
    };
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(&payload, OpCode::Close)
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue holds its capacity: the client reads too slowly.
    Full,
    /// The socket is closing or gone.
    Closed,
}

struct State {
    /// Encoded frames the connection has not taken yet (the first one possibly in part),
    /// with the producer's publish time (ms) for the end-to-end metric.
    frames: VecDeque<(Bytes, Option<u64>)>,
    /// The connection, once taken over; `None` before the 101 is written and after the end.
    io: Option<Arc<TcpStream>>,
    /// What the client sent after its request head, read before the take-over.
    carried: BytesMut,
    /// The socket's task, waiting in [`Outbox::gone`] (it writes the queue) or in
    /// [`Outbox::push_when_room`].
    task: Option<Waker>,
    /// The reader, waiting for the take-over.
    reader: Option<Waker>,
    /// A close frame is queued: nothing goes after it and the connection is shut down once
    /// it is written.
    ending: bool,
    /// The connection is over (or was never taken over).
    gone: bool,
    /// The socket's task waits in [`Outbox::push_when_room`]: the next frame written wakes it.
    wants_room: bool,
}

/// Wakers to wake once the state's lock is released.
#[derive(Default)]
#[must_use]
struct Wake(Option<Waker>, Option<Waker>);

impl Wake {
    fn wake(self) {
        for waker in [self.0, self.1].into_iter().flatten() {
            waker.wake();
        }
    }
}

impl State {
    /// Ends the connection: nothing queued is written anymore.
    fn end(&mut self, how: Shutdown) -> Wake {
        self.gone = true;
        self.frames = VecDeque::new();
        if let Some(io) = self.io.take() {
            // Already reset by the peer, say: the descriptor closes with the last owner.
            let _ = socket2::SockRef::from(&*io).shutdown(how);
        }
        Wake(self.task.take(), self.reader.take())
    }

    /// Writes queued frames until the queue is empty or the kernel takes no more
    /// (`WouldBlock`); other errors end the connection.
    fn write_queued(&mut self, io: &TcpStream, metrics: Option<&Metrics>) -> io::Result<()> {
        while !self.frames.is_empty() {
            let slices: Vec<IoSlice<'_>> = self
                .frames
                .iter()
                .take(WRITE_BATCH)
                .map(|(frame, _)| IoSlice::new(frame))
                .collect();
            let mut written = io.try_write_vectored(&slices)?;
            while written > 0 {
                let Some((frame, at)) = self.frames.front_mut() else {
                    break;
                };
                if written < frame.len() {
                    *frame = frame.slice(written..);
                    break;
                }
                written -= frame.len();
                observe(metrics, *at);
                self.frames.pop_front();
            }
        }
        if self.frames.capacity() > KEEP {
            self.frames = VecDeque::new();
        }
        Ok(())
    }
}

/// Records publish → write latency of a frame that carries its publish time.
fn observe(metrics: Option<&Metrics>, at: Option<u64>) {
    if let (Some(at), Some(metrics)) = (at, metrics) {
        let ms = now_millis().saturating_sub(at);
        metrics.end_to_end.observe(ms as f64 / 1000.0);
    }
}

fn would_block(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::WouldBlock
}

struct Shared {
    state: Mutex<State>,
    capacity: usize,
    metrics: Option<Arc<Metrics>>,
}

/// The producing side of a socket's outgoing frames; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
}

/// Hands the connection to its [`Outbox`] once the 101 is written. Dropped without that
/// (the client went away first), the socket ends.
pub struct Attach {
    outbox: Option<Outbox>,
}

impl Attach {
    /// The response extension that hands the connection over (the listener's streams are
    /// tokio `TcpStream`s).
    fn take_over(mut self) -> TakeOver {
        let outbox = self.outbox.take();
        let mut guard = Attach { outbox };
        TakeOver::new(move |io, read| match io.downcast::<TcpStream>() {
            Ok(io) => guard.attach(*io, read),
            Err(_) => tracing::error!("an upgraded connection is not a TCP stream; closing it"),
        })
    }

    /// Gives the socket its connection, with what the client sent after the request head.
    /// Whatever was pushed meanwhile is written now.
    pub fn attach(&mut self, io: TcpStream, read: BytesMut) {
        let Some(outbox) = self.outbox.take() else {
            return;
        };
        let io = Arc::new(io);
        let shared = &outbox.shared;
        let mut state = shared.state.lock();
        if state.gone {
            return;
        }
        state.carried = read;
        state.io = Some(io.clone());
        let mut wake = Wake(None, state.reader.take());
        if !state.frames.is_empty() {
            match state.write_queued(&io, shared.metrics.as_deref()) {
                Ok(()) => {}
                Err(e) if would_block(&e) => {}
                Err(_) => wake = state.end(Shutdown::Both),
            }
            if state.frames.is_empty() && state.ending && !state.gone {
                wake = state.end(Shutdown::Write);
            }
            if !state.frames.is_empty() {
                wake.0 = state.task.take();
            }
        }
        drop(state);
        wake.wake();
    }
}

impl Drop for Attach {
    fn drop(&mut self) {
        if let Some(outbox) = self.outbox.take() {
            let wake = outbox.shared.state.lock().end(Shutdown::Both);
            wake.wake();
        }
    }
}

impl Outbox {
    /// A queue of at most `capacity` data frames, and the handle that gives it its
    /// connection. With `metrics`, it records publish → write latency of frames that carry
    /// a time.
    pub fn new(capacity: usize, metrics: Option<Arc<Metrics>>) -> (Self, Attach) {
        let outbox = Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    frames: VecDeque::new(),
                    io: None,
                    carried: BytesMut::new(),
                    task: None,
                    reader: None,
                    ending: false,
                    gone: false,
                    wants_room: false,
                }),
                capacity: capacity.max(1),
                metrics,
            }),
        };
        let attach = Attach {
            outbox: Some(outbox.clone()),
        };
        (outbox, attach)
    }

    /// Queues an encoded data frame unless the queue is full or the socket is closing.
    pub fn push(&self, frame: Bytes, published_at: Option<u64>) -> Result<(), PushError> {
        self.enqueue(frame, published_at, self.shared.capacity)
    }

    /// Queues an encoded data frame, waiting while the queue is full (a replay sent at the
    /// pace the client reads); fails only when the socket is closing or gone.
    pub async fn push_when_room(&self, frame: Bytes) -> Result<(), PushError> {
        let mut frame = Some(frame);
        poll_fn(|cx| {
            let mut state = self.shared.state.lock();
            if state.ending || state.gone {
                return Poll::Ready(Err(PushError::Closed));
            }
            if state.frames.len() >= self.shared.capacity {
                state.wants_room = true;
                register(&mut state.task, cx);
                return Poll::Pending;
            }
            let Some(frame) = frame.take() else {
                return Poll::Ready(Ok(()));
            };
            let wake = self.offer(&mut state, frame, None, false);
            drop(state);
            wake.wake();
            Poll::Ready(Ok(()))
        })
        .await
    }

    /// The most data frames the queue holds.
    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// Queues a text frame that answers the client or comes from the gateway itself
    /// (`connected`, a pong, an error); these may exceed the capacity a little.
    pub fn push_text(&self, text: &str) -> Result<(), PushError> {
        self.push_control(text_frame(text))
    }

    /// Queues a ping with an empty payload.
    pub fn ping(&self) -> Result<(), PushError> {
        self.push_control(encode(&[], OpCode::Ping))
    }

    /// Queues a pong echoing `payload` (at most 125 bytes of it).
    pub fn pong(&self, payload: &[u8]) -> Result<(), PushError> {
        self.push_control(encode(&payload[..payload.len().min(125)], OpCode::Pong))
    }

    fn push_control(&self, frame: Bytes) -> Result<(), PushError> {
        self.enqueue(frame, None, self.shared.capacity + CONTROL_SLACK)
    }

    fn enqueue(&self, frame: Bytes, at: Option<u64>, limit: usize) -> Result<(), PushError> {
        let mut state = self.shared.state.lock();
        if state.ending || state.gone {
            return Err(PushError::Closed);
        }
        if state.frames.len() >= limit {
            return Err(PushError::Full);
        }
        let wake = self.offer(&mut state, frame, at, false);
        let lost = state.gone;
        drop(state);
        wake.wake();
        if lost {
            return Err(PushError::Closed);
        }
        Ok(())
    }

    /// Writes `frame` at once when nothing is queued before it and the connection is
    /// there; queues what the kernel did not take (and wakes the socket's task to write
    /// it). A `last` frame (the close) shuts the connection's sending side once written.
    fn offer(
        &self,
        state: &mut MutexGuard<'_, State>,
        frame: Bytes,
        at: Option<u64>,
        last: bool,
    ) -> Wake {
        let metrics = self.shared.metrics.as_deref();
        let Some(io) = state.io.clone() else {
            state.frames.push_back((frame, at));
            return Wake::default();
        };
        if !state.frames.is_empty() {
            state.frames.push_back((frame, at));
            return Wake(state.task.take(), None);
        }
        match io.try_write(&frame) {
            Ok(n) if n == frame.len() => {
                observe(metrics, at);
                if last {
                    return state.end(Shutdown::Write);
                }
                Wake::default()
            }
            Ok(n) => {
                state.frames.push_back((frame.slice(n..), at));
                Wake(state.task.take(), None)
            }
            Err(e) if would_block(&e) => {
                state.frames.push_back((frame, at));
                Wake(state.task.take(), None)
            }
            Err(_) => state.end(Shutdown::Both),
        }
    }

    /// Queues the close frame (`None`: a close without a status code, as an echo of a
    /// close that had none) after everything already queued; the connection's sending side
    /// is shut once it is written. Returns false when the socket was already closing or
    /// gone.
    pub fn close(&self, code: Option<u16>, reason: &str) -> bool {
        let frame = close_frame(code, reason);
        let mut state = self.shared.state.lock();
        if state.ending || state.gone {
            return false;
        }
        state.ending = true;
        let wake = self.offer(&mut state, frame, None, true);
        drop(state);
        wake.wake();
        true
    }

    /// The peer's side of the connection ended (it closed or reset it without a close
    /// frame) or nobody reads it anymore: unless a close frame is queued already, drops
    /// what is queued and ends the connection now.
    fn hang_up(&self) {
        let wake = {
            let mut state = self.shared.state.lock();
            if state.ending || state.gone {
                return;
            }
            state.end(Shutdown::Write)
        };
        wake.wake();
    }

    /// Drops the connection without waiting for queued frames to be written (a peer that
    /// never reads its close frame).
    pub fn abort(&self) {
        let wake = self.shared.state.lock().end(Shutdown::Both);
        wake.wake();
    }

    /// Writes what is queued as the connection takes it, and resolves once the connection
    /// is over (ended by either side, failed, or never taken over). The socket's task awaits
    /// this all its life: it is what writes frames the kernel did not take at once.
    pub async fn gone(&self) {
        poll_fn(|cx| self.poll_gone(cx)).await
    }

    fn poll_gone(&self, cx: &mut Context<'_>) -> Poll<()> {
        let shared = &self.shared;
        let mut state = shared.state.lock();
        loop {
            if state.gone {
                return Poll::Ready(());
            }
            let Some(io) = state.io.clone() else {
                break;
            };
            if state.frames.is_empty() {
                break;
            }
            match io.poll_write_ready(cx) {
                Poll::Pending => break,
                Poll::Ready(Err(_)) => {
                    let wake = state.end(Shutdown::Both);
                    drop(state);
                    wake.wake();
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(())) => {}
            }
            match state.write_queued(&io, shared.metrics.as_deref()) {
                Ok(()) => {
                    if state.ending {
                        let wake = state.end(Shutdown::Write);
                        drop(state);
                        wake.wake();
                        return Poll::Ready(());
                    }
                }
                Err(e) if would_block(&e) => {}
                Err(_) => {
                    let wake = state.end(Shutdown::Both);
                    drop(state);
                    wake.wake();
                    return Poll::Ready(());
                }
            }
        }
        let room = state.wants_room && state.frames.len() < shared.capacity;
        if room {
            state.wants_room = false;
        }
        register(&mut state.task, cx);
        drop(state);
        if room {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }

    /// Frames queued and not yet written.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.shared.state.lock().frames.len()
    }

    /// Takes the next queued frame (tests of sockets without a connection).
    #[cfg(test)]
    pub fn try_pop(&self) -> Option<Bytes> {
        self.shared.state.lock().frames.pop_front().map(|(f, _)| f)
    }
}

/// Keeps `cx`'s waker in `slot` (unless the one there wakes the same task).
fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        *slot = Some(cx.waker().clone());
    }
}

/// A whole message from the client (continuations reassembled).
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    Text(ByteString),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    Close(Option<CloseReason>),
}

/// Why the client's frames cannot be read further.
#[derive(Debug)]
pub enum InboundError {
    /// A frame or a reassembled message exceeds the limit.
    TooBig,
    /// A text message is not UTF-8.
    InvalidUtf8,
    /// The frames break RFC 6455.
    Protocol(ProtocolError),
    /// The connection failed or closed mid-stream.
    Io,
}

impl InboundError {
    /// The close code and reason this error deserves (RFC 6455 §7.4.1); `None` when the
    /// connection itself failed (nothing can be sent).
    pub fn close(self) -> Option<(u16, String)> {
        match self {
            InboundError::TooBig => Some((close::MESSAGE_TOO_BIG, "message too big".into())),
            InboundError::InvalidUtf8 => Some((
                close::INVALID_PAYLOAD,
                "text frame is not valid UTF-8".into(),
            )),
            InboundError::Io => None,
            InboundError::Protocol(other) => {
                Some((close::PROTOCOL_ERROR, format!("protocol error: {other}")))
            }
        }
    }
}

/// A message being reassembled from continuation frames.
struct Partial {
    text: bool,
    data: BytesMut,
}

/// The client's messages: what the dispatcher read before the take-over (the request
/// payload), then the connection itself.
///
/// It ends the socket (see `hang_up`) when the client's side of the connection ends (EOF or
/// an I/O error without a close frame) and when it is dropped, so no path of a socket's
/// task leaves a connection open behind it.
pub struct Incoming {
    /// What the dispatcher read before the connection was taken over (until it ends).
    payload: Option<Payload>,
    /// The connection, once taken over.
    io: Option<Arc<TcpStream>>,
    outbox: Outbox,
    buf: BytesMut,
    codec: Codec,
    max_message: usize,
    partial: Option<Partial>,
    ended: bool,
}

impl Incoming {
    /// Reads `payload`, then the connection once the outbox has it, refusing frames and
    /// messages larger than `max_message` bytes; the socket's outgoing frames go to `outbox`.
    pub fn new(payload: Payload, outbox: Outbox, max_message: usize) -> Self {
        Self {
            payload: Some(payload),
            io: None,
            outbox,
            buf: BytesMut::new(),
            codec: Codec::new().max_size(max_message),
            max_message,
            partial: None,
            ended: false,
        }
    }

    /// The next message; `None` once the connection has ended.
    pub async fn next(&mut self) -> Option<Result<Inbound, InboundError>> {
        poll_fn(|cx| self.poll_message(cx)).await
    }

    fn poll_message(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Inbound, InboundError>>> {
        loop {
            match self.decode() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Ok(None) => {}
                Err(error) => {
                    self.ended = true;
                    return Poll::Ready(Some(Err(error)));
                }
            }
            if self.ended {
                return Poll::Ready(None);
            }
            if let Some(payload) = self.payload.as_mut() {
                match Pin::new(payload).poll_next(cx) {
                    Poll::Ready(Some(Ok(bytes))) => self.append(&bytes),
                    Poll::Ready(Some(Err(_))) => {
                        self.read_half_ended();
                        return Poll::Ready(Some(Err(InboundError::Io)));
                    }
                    // The dispatcher let the connection go: to the outbox, or nowhere.
                    Poll::Ready(None) => self.payload = None,
                    Poll::Pending => return Poll::Pending,
                }
                continue;
            }
            let Some(io) = self.io.clone() else {
                let mut state = self.outbox.shared.state.lock();
                if let Some(io) = state.io.clone() {
                    let carried = std::mem::take(&mut state.carried);
                    drop(state);
                    self.io = Some(io);
                    self.append(&carried);
                    continue;
                }
                if state.gone {
                    drop(state);
                    self.ended = true;
                    return Poll::Ready(None);
                }
                register(&mut state.reader, cx);
                return Poll::Pending;
            };
            match io.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => {
                    self.read_half_ended();
                    return Poll::Ready(Some(Err(InboundError::Io)));
                }
                Poll::Ready(Ok(())) => {}
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                self.buf.reserve(READ_CHUNK);
            }
            match io.try_read_buf(&mut self.buf) {
                Ok(0) => {
                    self.read_half_ended();
                    return Poll::Ready(None);
                }
                Ok(_) => {}
                Err(e) if would_block(&e) => {}
                Err(_) => {
                    self.read_half_ended();
                    return Poll::Ready(Some(Err(InboundError::Io)));
                }
            }
        }
    }

    fn append(&mut self, bytes: &[u8]) {
        if self.buf.is_empty() {
            self.buf = BytesMut::from(bytes);
        } else {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The client's side is gone without a close frame: nothing more can be said to it.
    fn read_half_ended(&mut self) {
        self.ended = true;
        self.outbox.hang_up();
    }

    /// Decodes frames from the buffer until a whole message is ready or more bytes are needed.
    fn decode(&mut self) -> Result<Option<Inbound>, InboundError> {
        if self.ended {
            return Ok(None);
        }
        loop {
            let frame = match tokio_util::codec::Decoder::decode(&mut self.codec, &mut self.buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    // Drop the (possibly large) allocation of an emptied buffer: idle sockets
                    // hold none.
                    if self.buf.is_empty() && self.buf.capacity() > 0 {
                        self.buf = BytesMut::new();
                    }
                    return Ok(None);
                }
                Err(ProtocolError::Overflow) => return Err(InboundError::TooBig),
                Err(error) => return Err(InboundError::Protocol(error)),
            };
            let message = match frame {
                Frame::Text(bytes) => Inbound::Text(utf8(bytes)?),
                Frame::Binary(bytes) => Inbound::Binary(bytes),
                Frame::Ping(bytes) => Inbound::Ping(bytes),
                Frame::Pong(bytes) => Inbound::Pong(bytes),
                Frame::Close(reason) => Inbound::Close(reason),
                Frame::Continuation(item) => match self.continue_message(item)? {
                    Some(message) => message,
                    None => continue,
                },
            };
            return Ok(Some(message));
        }
    }

    /// Adds a continuation frame; the whole message once its last frame is in.
    fn continue_message(&mut self, item: Item) -> Result<Option<Inbound>, InboundError> {
        let (bytes, last) = match item {
            Item::FirstText(_) | Item::FirstBinary(_) if self.partial.is_some() => {
                return Err(InboundError::Protocol(ProtocolError::ContinuationStarted));
            }
            Item::FirstText(bytes) => {
                self.partial = Some(Partial {
                    text: true,
                    data: BytesMut::new(),
                });
                (bytes, false)
            }
            Item::FirstBinary(bytes) => {
                self.partial = Some(Partial {
                    text: false,
                    data: BytesMut::new(),
                });
                (bytes, false)
            }
            Item::Continue(bytes) => (bytes, false),
            Item::Last(bytes) => (bytes, true),
        };
        let Some(partial) = self.partial.as_mut() else {
            return Err(InboundError::Protocol(
                ProtocolError::ContinuationNotStarted,
            ));
        };
        if partial.data.len() + bytes.len() > self.max_message {
            self.partial = None;
            return Err(InboundError::TooBig);
        }
        partial.data.extend_from_slice(&bytes);
        if !last {
            return Ok(None);
        }
        let Some(Partial { text, data }) = self.partial.take() else {
            return Ok(None);
        };
        let data = data.freeze();
        Ok(Some(if text {
            Inbound::Text(utf8(data)?)
        } else {
            Inbound::Binary(data)
        }))
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.outbox.hang_up();
    }
}

fn utf8(bytes: Bytes) -> Result<ByteString, InboundError> {
    ByteString::try_from(bytes).map_err(|_| InboundError::InvalidUtf8)
}

#[cfg(test)]
impl Attach {
    /// Takes the next queued frame (tests of sockets without a connection).
    pub fn try_pop(&self) -> Option<Bytes> {
        self.outbox.as_ref().and_then(Outbox::try_pop)
    }
}

#[cfg(test)]
mod tests {
    use actix_http::error::PayloadError;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A connected loopback pair: (the server's side, the client's side).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"));
        let (client, accepted) = tokio::join!(client, listener.accept());
        (accepted.expect("accept").0, client.expect("connect"))
    }

    /// `f`'s output, or a failed test when it takes more than 10 s (a hang is a failure).
    async fn within<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(std::time::Duration::from_secs(10), f)
            .await
            .expect("done within 10 s")
    }

    /// Reads one unmasked server frame from `client`: (opcode byte, payload).
    async fn read_frame(client: &mut TcpStream) -> (u8, Vec<u8>) {
        within(read_frame_now(client)).await
    }

    async fn read_frame_now(client: &mut TcpStream) -> (u8, Vec<u8>) {
        let mut head = [0u8; 2];
        client.read_exact(&mut head).await.expect("frame head");
        let len = match head[1] & 0x7f {
            126 => usize::from(client.read_u16().await.expect("length")),
            127 => usize::try_from(client.read_u64().await.expect("length")).expect("size"),
            n => usize::from(n),
        };
        let mut payload = vec![0u8; len];
        client.read_exact(&mut payload).await.expect("payload");
        (head[0], payload)
    }

    async fn read_eof(client: &mut TcpStream) {
        let mut rest = Vec::new();
        let _ = within(client.read_to_end(&mut rest)).await;
        assert!(rest.is_empty(), "nothing after the end: {rest:?}");
    }

    #[tokio::test]
    async fn a_push_is_written_straight_to_the_connection_without_queueing() {
        let (server, mut client) = pair().await;
        let (outbox, mut attach) = Outbox::new(8, None);
        outbox.push_text("before").expect("room");
        assert_eq!(outbox.queued(), 1, "waits for the connection");
        attach.attach(server, BytesMut::new());
        assert_eq!(outbox.queued(), 0, "written when the connection came");
        outbox.push(text_frame("a"), None).expect("room");
        outbox.push_text("b").expect("room");
        assert_eq!(outbox.queued(), 0, "nothing waits for a task");
        for expected in [&b"before"[..], b"a", b"b"] {
            assert_eq!(read_frame(&mut client).await, (0x81, expected.to_vec()));
        }
    }

    #[tokio::test]
    async fn what_the_kernel_does_not_take_is_queued_and_written_in_order_by_the_socket_task() {
        let (server, mut client) = pair().await;
        let (outbox, mut attach) = Outbox::new(100_000, None);
        attach.attach(server, BytesMut::new());
        let chunk = "x".repeat(60_000);
        let mut sent = 0usize;
        while outbox.queued() < 3 {
            outbox
                .push_text(&format!("{sent:08}{chunk}"))
                .expect("room");
            sent += 1;
        }
        let task = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.gone().await }
        });
        for n in 0..sent {
            let (op, payload) = read_frame(&mut client).await;
            assert_eq!(op, 0x81);
            assert_eq!(&payload[..8], format!("{n:08}").as_bytes(), "in order");
            assert_eq!(payload.len(), 8 + chunk.len());
        }
        assert!(outbox.close(Some(1000), "done"));
        let (op, payload) = read_frame(&mut client).await;
        assert_eq!(op, 0x88);
        assert_eq!(&payload[2..], b"done");
        read_eof(&mut client).await;
        task.await
            .expect("gone resolves once the close frame is written");
        assert_eq!(outbox.queued(), 0);
        assert_eq!(
            outbox.shared.state.lock().frames.capacity(),
            0,
            "memory given back"
        );
    }

    #[tokio::test]
    async fn a_full_queue_refuses_data_but_still_takes_the_close_frame_and_then_ends() {
        let (outbox, mut attach) = Outbox::new(2, None);
        outbox.push(text_frame("1"), None).expect("room");
        outbox.push(text_frame("2"), None).expect("room");
        assert_eq!(outbox.push(text_frame("3"), None), Err(PushError::Full));
        assert!(outbox.close(Some(1013), "client too slow"));
        assert_eq!(outbox.push(text_frame("4"), None), Err(PushError::Closed));
        assert!(!outbox.close(Some(1000), ""), "a second close is refused");
        let (server, mut client) = pair().await;
        attach.attach(server, BytesMut::new());
        assert_eq!(read_frame(&mut client).await, (0x81, b"1".to_vec()));
        assert_eq!(read_frame(&mut client).await, (0x81, b"2".to_vec()));
        let (op, payload) = read_frame(&mut client).await;
        assert_eq!(op, 0x88, "FIN + close opcode");
        assert_eq!(&payload[..2], &1013u16.to_be_bytes());
        assert_eq!(&payload[2..], b"client too slow");
        read_eof(&mut client).await;
        within(outbox.gone()).await;
    }

    #[test]
    fn a_long_close_reason_is_cut_on_a_character_boundary() {
        let reason = "é".repeat(100);
        let frame = close_frame(Some(1008), &reason);
        let payload = &frame[2..];
        assert!(payload.len() <= 125);
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
        assert_eq!(payload.len(), 2 + 122);
    }

    #[tokio::test]
    async fn an_aborted_socket_drops_its_connection_and_what_is_queued() {
        let (server, mut client) = pair().await;
        let (outbox, mut attach) = Outbox::new(100_000, None);
        attach.attach(server, BytesMut::new());
        let chunk = "y".repeat(60_000);
        let mut pushed = 0;
        while outbox.queued() == 0 {
            outbox.push_text(&chunk).expect("room");
            pushed += text_frame(&chunk).len();
        }
        outbox.abort();
        within(outbox.gone()).await;
        assert_eq!(outbox.queued(), 0);
        assert_eq!(outbox.push_text("late"), Err(PushError::Closed));
        // The client reads what the kernel had taken, then the end; never the queued rest.
        let mut all = Vec::new();
        let _ = within(client.read_to_end(&mut all)).await;
        assert!(all.len() < pushed, "read {} of {pushed} bytes", all.len());
    }

    #[tokio::test]
    async fn a_socket_whose_connection_never_came_ends_and_refuses_pushes() {
        let (outbox, attach) = Outbox::new(2, None);
        let watcher = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.gone().await }
        });
        tokio::task::yield_now().await;
        drop(attach);
        within(watcher).await.expect("gone resolves");
        assert_eq!(outbox.push_text("late"), Err(PushError::Closed));
    }

    fn client_frame(payload: &[u8], op: OpCode, fin: bool) -> Bytes {
        let mut buf = BytesMut::new();
        Parser::write_message(&mut buf, payload, op, fin, true);
        buf.freeze()
    }

    fn payload_of(chunks: Vec<Result<Bytes, PayloadError>>) -> Payload {
        Payload::Stream {
            payload: Box::pin(futures_util::stream::iter(chunks)),
        }
    }

    /// A reader of `chunks` read before a take-over that never comes.
    fn incoming(chunks: Vec<Bytes>, max: usize) -> Incoming {
        let outbox = Outbox::new(4, None).0;
        Incoming::new(
            payload_of(chunks.into_iter().map(Ok).collect()),
            outbox,
            max,
        )
    }

    #[tokio::test]
    async fn bytes_from_before_and_after_the_take_over_are_read_in_order() {
        let (server, mut client) = pair().await;
        let (outbox, mut attach) = Outbox::new(4, None);
        let mut rx = Incoming::new(
            payload_of(vec![Ok(client_frame(b"one", OpCode::Text, true))]),
            outbox.clone(),
            64,
        );
        assert_eq!(
            within(rx.next()).await.map(Result::ok),
            Some(Some(Inbound::Text("one".into())))
        );
        let carried = client_frame(b"two", OpCode::Text, true);
        attach.attach(server, BytesMut::from(&carried[..]));
        client
            .write_all(&client_frame(b"three", OpCode::Text, true))
            .await
            .expect("write");
        for expected in ["two", "three"] {
            assert_eq!(
                within(rx.next()).await.map(Result::ok),
                Some(Some(Inbound::Text(expected.into())))
            );
        }
        client.shutdown().await.expect("shutdown");
        assert!(
            within(rx.next()).await.is_none(),
            "the client's end is the end"
        );
        within(outbox.gone()).await;
        assert_eq!(outbox.push_text("late"), Err(PushError::Closed));
        read_eof(&mut client).await;
    }

    #[tokio::test]
    async fn an_io_error_on_the_clients_side_ends_the_socket() {
        let (outbox, _attach) = Outbox::new(4, None);
        let mut rx = Incoming::new(
            payload_of(vec![Err(PayloadError::Incomplete(None))]),
            outbox.clone(),
            64,
        );
        assert!(matches!(
            within(rx.next()).await,
            Some(Err(InboundError::Io))
        ));
        within(outbox.gone()).await;
    }

    #[tokio::test]
    async fn dropping_the_reader_ends_the_socket_but_keeps_a_queued_close_frame() {
        let (server, mut client) = pair().await;
        let (outbox, mut attach) = Outbox::new(4, None);
        let rx = Incoming::new(payload_of(Vec::new()), outbox.clone(), 64);
        attach.attach(server, BytesMut::new());
        drop(rx);
        within(outbox.gone()).await;
        read_eof(&mut client).await;

        let (server, mut client) = pair().await;
        let (outbox, mut attach) = Outbox::new(4, None);
        assert!(outbox.close(Some(1001), "bye"));
        drop(Incoming::new(payload_of(Vec::new()), outbox.clone(), 64));
        attach.attach(server, BytesMut::new());
        let (op, payload) = read_frame(&mut client).await;
        assert_eq!(
            (op, &payload[2..]),
            (0x88, &b"bye"[..]),
            "the close frame is still written"
        );
        read_eof(&mut client).await;
    }

    #[tokio::test]
    async fn fragmented_text_is_reassembled_even_across_read_chunks() {
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&client_frame(b"hel", OpCode::Text, false));
        wire.extend_from_slice(&client_frame(b"", OpCode::Ping, true));
        wire.extend_from_slice(&client_frame(b"lo", OpCode::Continue, true));
        let wire = wire.freeze();
        // Split mid-frame: the decoder must wait for the rest.
        let mut rx = incoming(vec![wire.slice(..4), wire.slice(4..)], 64);
        assert_eq!(
            within(rx.next()).await.map(Result::ok),
            Some(Some(Inbound::Ping(Bytes::new())))
        );
        assert_eq!(
            within(rx.next()).await.map(Result::ok),
            Some(Some(Inbound::Text("hello".into())))
        );
        assert!(within(rx.next()).await.is_none());
        assert_eq!(rx.buf.capacity(), 0, "an emptied read buffer is released");
    }

    #[tokio::test]
    async fn a_message_over_the_limit_is_refused_whole_or_in_fragments() {
        let mut rx = incoming(vec![client_frame(&[b'a'; 65], OpCode::Text, true)], 64);
        assert!(matches!(
            within(rx.next()).await,
            Some(Err(InboundError::TooBig))
        ));
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&client_frame(&[b'a'; 40], OpCode::Text, false));
        wire.extend_from_slice(&client_frame(&[b'a'; 40], OpCode::Continue, true));
        let mut rx = incoming(vec![wire.freeze()], 64);
        assert!(matches!(
            within(rx.next()).await,
            Some(Err(InboundError::TooBig))
        ));
        assert!(
            within(rx.next()).await.is_none(),
            "nothing is read after an error"
        );
    }

    #[tokio::test]
    async fn invalid_utf8_text_and_unmasked_frames_are_errors() {
        let mut rx = incoming(vec![client_frame(&[0xff, 0xfe], OpCode::Text, true)], 64);
        assert!(matches!(
            within(rx.next()).await,
            Some(Err(InboundError::InvalidUtf8))
        ));
        let mut unmasked = BytesMut::new();
        Parser::write_message(&mut unmasked, b"hi", OpCode::Text, true, false);
        let mut rx = incoming(vec![unmasked.freeze()], 64);
        assert!(matches!(
            within(rx.next()).await,
            Some(Err(InboundError::Protocol(_)))
        ));
    }
}
