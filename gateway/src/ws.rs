//! The WebSocket plumbing of a socket, straight on actix-http (no actix-ws):
//!
//! - [`Outbox`]: the socket's bounded queue of frames that are already encoded. It *is* the
//!   response body the actix-http dispatcher writes from, so a push from the hub wakes the
//!   connection's I/O task directly: one wake-up per socket per message, no task in between.
//!   A message to a room is encoded once ([`text_frame`]) and every socket queues the same
//!   reference-counted bytes (server frames are not masked, so they are byte-identical).
//! - [`Incoming`]: the client's frames, decoded and reassembled, with the size limits.
//!
//! An idle socket holds no buffer here: the queue gives its memory back when drained, and
//! the read buffer is dropped whenever it is empty.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use actix_http::body::{BodySize, MessageBody};
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
use parking_lot::Mutex;

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

/// An accepted upgrade: the 101 response to return, whose body is the socket's outbox,
/// and the client's frames.
pub struct Accepted {
    pub response: HttpResponse,
    pub outbox: Outbox,
    pub incoming: Incoming,
}

/// Turns an upgrade request into a socket: checks the handshake (RFC 6455 §4.2.1) and
/// builds the 101 response (echoing the subprotocol), the outbox it writes from and the
/// reader of the request payload. Nothing is answered to the client until the response
/// is returned.
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
    let (outbox, body) = Outbox::new(settings.queue, settings.metrics);
    let response = handshake.message_body(body.boxed()).map_err(|error| {
        tracing::warn!(%error, "cannot build an upgrade response");
        HttpError::internal("the upgrade response could not be built")
    })?;
    let incoming = Incoming::new(payload, outbox.clone(), settings.max_message);
    Ok(Accepted {
        response: HttpResponse::from(response),
        outbox,
        incoming,
    })
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
    /// Encoded frames, with the producer's publish time (ms) for the end-to-end metric.
    frames: VecDeque<(Bytes, Option<u64>)>,
    /// The dispatcher polling the body, woken by a push.
    writer: Option<Waker>,
    /// The socket's task waiting in [`Outbox::gone`].
    watcher: Option<Waker>,
    /// A close frame is queued: nothing goes after it and the body ends once it is written.
    ending: bool,
    /// The body failed on purpose: the dispatcher drops the connection.
    aborted: bool,
    /// The body was dropped: the connection is gone.
    gone: bool,
    /// The socket's task waits in [`Outbox::push_when_room`] (its waker is `watcher`):
    /// the next frame written wakes it.
    wants_room: bool,
}

struct Shared {
    state: Mutex<State>,
    capacity: usize,
}

/// The producing side of a socket's outgoing frames; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
}

/// The response body of an upgraded socket: what the dispatcher writes.
pub struct OutboxBody {
    shared: Arc<Shared>,
    metrics: Option<Arc<Metrics>>,
}

impl Outbox {
    /// A queue of at most `capacity` data frames, and the body that drains it. With
    /// `metrics`, the body records publish → write latency of frames that carry a time.
    pub fn new(capacity: usize, metrics: Option<Arc<Metrics>>) -> (Self, OutboxBody) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                frames: VecDeque::new(),
                writer: None,
                watcher: None,
                ending: false,
                aborted: false,
                gone: false,
                wants_room: false,
            }),
            capacity: capacity.max(1),
        });
        (
            Self {
                shared: shared.clone(),
            },
            OutboxBody { shared, metrics },
        )
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
            let waker = {
                let mut state = self.shared.state.lock();
                if state.ending || state.gone || state.aborted {
                    return Poll::Ready(Err(PushError::Closed));
                }
                if state.frames.len() >= self.shared.capacity {
                    state.wants_room = true;
                    if !state
                        .watcher
                        .as_ref()
                        .is_some_and(|w| w.will_wake(cx.waker()))
                    {
                        state.watcher = Some(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
                if let Some(frame) = frame.take() {
                    state.frames.push_back((frame, None));
                }
                state.writer.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
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
        let waker = {
            let mut state = self.shared.state.lock();
            if state.ending || state.gone || state.aborted {
                return Err(PushError::Closed);
            }
            if state.frames.len() >= limit {
                return Err(PushError::Full);
            }
            state.frames.push_back((frame, at));
            state.writer.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Queues the close frame (`None`: a close without a status code, as an echo of a
    /// close that had none) after everything already queued; the body ends once it is
    /// written. Returns false when the socket was already closing or gone.
    pub fn close(&self, code: Option<u16>, reason: &str) -> bool {
        let frame = close_frame(code, reason);
        let waker = {
            let mut state = self.shared.state.lock();
            if state.ending || state.gone || state.aborted {
                return false;
            }
            state.frames.push_back((frame, None));
            state.ending = true;
            state.writer.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }

    /// The peer's side of the connection ended (it closed or reset it without a close
    /// frame) or nobody reads it anymore: unless a close frame is queued already, drops
    /// what is queued and ends the body now. The dispatcher then closes the connection
    /// (once the client's side has ended it does at once) instead of waiting for a body
    /// that would never end.
    fn hang_up(&self) {
        let waker = {
            let mut state = self.shared.state.lock();
            if state.ending || state.gone || state.aborted {
                return;
            }
            state.frames = VecDeque::new();
            state.ending = true;
            state.writer.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Drops the connection without waiting for queued frames to be written (a peer that
    /// never reads its close frame).
    pub fn abort(&self) {
        let waker = {
            let mut state = self.shared.state.lock();
            state.aborted = true;
            state.frames = VecDeque::new();
            state.writer.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Resolves once the body is dropped: the connection is over.
    pub async fn gone(&self) {
        poll_fn(|cx| {
            let mut state = self.shared.state.lock();
            if state.gone {
                return Poll::Ready(());
            }
            if !state
                .watcher
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                state.watcher = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// Frames queued and not yet handed to the writer.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.shared.state.lock().frames.len()
    }
}

impl OutboxBody {
    fn next_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, io::Error>>> {
        let (frame, at) = {
            let mut state = self.shared.state.lock();
            if state.aborted {
                return Poll::Ready(Some(Err(io::Error::other("connection aborted"))));
            }
            match state.frames.pop_front() {
                Some(item) => {
                    if state.frames.is_empty() && state.frames.capacity() > KEEP {
                        state.frames = VecDeque::new();
                    }
                    if state.wants_room {
                        state.wants_room = false;
                        if let Some(task) = state.watcher.clone() {
                            task.wake();
                        }
                    }
                    item
                }
                None if state.ending => return Poll::Ready(None),
                None => {
                    if !state
                        .writer
                        .as_ref()
                        .is_some_and(|w| w.will_wake(cx.waker()))
                    {
                        state.writer = Some(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
            }
        };
        if let (Some(at), Some(metrics)) = (at, &self.metrics) {
            let ms = now_millis().saturating_sub(at);
            metrics.end_to_end.observe(ms as f64 / 1000.0);
        }
        Poll::Ready(Some(Ok(frame)))
    }
}

#[cfg(test)]
impl OutboxBody {
    /// Takes the next queued frame without a dispatcher (tests).
    pub fn try_pop(&mut self) -> Option<Bytes> {
        self.shared.state.lock().frames.pop_front().map(|(f, _)| f)
    }
}

impl MessageBody for OutboxBody {
    type Error = io::Error;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        self.get_mut().next_frame(cx)
    }
}

impl Drop for OutboxBody {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.shared.state.lock();
            state.gone = true;
            state.frames = VecDeque::new();
            state.writer = None;
            state.watcher.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
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

/// The client's messages, read from the request payload of the upgrade.
///
/// It ends the socket's [`Outbox`] body when the client's side of the connection ends
/// (EOF or an I/O error without a close frame) and when it is dropped: the response of an
/// upgraded connection is otherwise an endless stream, and the dispatcher keeps a
/// connection whose response has not ended (see `hang_up`).
pub struct Incoming {
    payload: Payload,
    outbox: Outbox,
    buf: BytesMut,
    codec: Codec,
    max_message: usize,
    partial: Option<Partial>,
    ended: bool,
}

impl Incoming {
    /// Reads `payload`, refusing frames and messages larger than `max_message` bytes; the
    /// socket's outgoing frames go to `outbox`.
    pub fn new(payload: Payload, outbox: Outbox, max_message: usize) -> Self {
        Self {
            payload,
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
            match Pin::new(&mut self.payload).poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => {
                    if self.buf.is_empty() {
                        self.buf = BytesMut::from(bytes);
                    } else {
                        self.buf.extend_from_slice(&bytes);
                    }
                }
                Poll::Ready(Some(Err(_))) => {
                    self.read_half_ended();
                    return Poll::Ready(Some(Err(InboundError::Io)));
                }
                Poll::Ready(None) => {
                    self.read_half_ended();
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
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
mod tests {
    use std::task::Wake;

    use actix_http::error::PayloadError;

    use super::*;

    /// Counts its wake-ups.
    struct Counter(std::sync::atomic::AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn poll(body: &mut OutboxBody, waker: &Waker) -> Poll<Option<Result<Bytes, io::Error>>> {
        Pin::new(body).poll_next(&mut Context::from_waker(waker))
    }

    fn text_of(frame: &Bytes) -> &[u8] {
        // Unmasked frames under 126 bytes: two header bytes, then the payload.
        &frame[2..]
    }

    #[test]
    fn a_push_wakes_the_writer_and_frames_come_out_in_order() {
        let (outbox, mut body) = Outbox::new(8, None);
        let counter = Arc::new(Counter(0.into()));
        let waker = Waker::from(counter.clone());
        assert!(poll(&mut body, &waker).is_pending());
        outbox.push(text_frame("a"), None).expect("room");
        outbox.push_text("b").expect("room");
        assert_eq!(counter.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        for expected in [b"a", b"b"] {
            match poll(&mut body, &waker) {
                Poll::Ready(Some(Ok(frame))) => assert_eq!(text_of(&frame), expected),
                other => panic!("expected a frame, got {other:?}"),
            }
        }
        assert!(poll(&mut body, &waker).is_pending());
    }

    #[test]
    fn a_drained_queue_gives_its_memory_back() {
        let (outbox, mut body) = Outbox::new(1000, None);
        for _ in 0..100 {
            outbox.push(text_frame("x"), None).expect("room");
        }
        while body.try_pop().is_some() {}
        let waker = Waker::noop();
        assert!(poll(&mut body, waker).is_pending());
        outbox.push(text_frame("x"), None).expect("room");
        assert!(matches!(poll(&mut body, waker), Poll::Ready(Some(Ok(_)))));
        assert_eq!(outbox.shared.state.lock().frames.capacity(), 0);
    }

    #[test]
    fn a_full_queue_refuses_data_but_still_takes_the_close_frame_and_then_ends() {
        let (outbox, mut body) = Outbox::new(2, None);
        outbox.push(text_frame("1"), None).expect("room");
        outbox.push(text_frame("2"), None).expect("room");
        assert_eq!(outbox.push(text_frame("3"), None), Err(PushError::Full));
        assert!(outbox.close(Some(1013), "client too slow"));
        assert_eq!(outbox.push(text_frame("4"), None), Err(PushError::Closed));
        assert!(!outbox.close(Some(1000), ""), "a second close is refused");
        let waker = Waker::noop();
        let mut frames = Vec::new();
        while let Poll::Ready(Some(Ok(frame))) = poll(&mut body, waker) {
            frames.push(frame);
        }
        assert_eq!(frames.len(), 3);
        let close = &frames[2];
        assert_eq!(close[0], 0x88, "FIN + close opcode");
        assert_eq!(&close[2..4], &1013u16.to_be_bytes());
        assert_eq!(&close[4..], b"client too slow");
        assert!(matches!(poll(&mut body, waker), Poll::Ready(None)));
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

    #[test]
    fn an_aborted_body_fails_so_the_connection_is_dropped() {
        let (outbox, mut body) = Outbox::new(2, None);
        outbox.push(text_frame("unread"), None).expect("room");
        outbox.abort();
        assert!(matches!(
            poll(&mut body, Waker::noop()),
            Poll::Ready(Some(Err(_)))
        ));
    }

    #[tokio::test]
    async fn dropping_the_body_ends_the_socket_and_refuses_pushes() {
        let (outbox, body) = Outbox::new(2, None);
        let watcher = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.gone().await }
        });
        tokio::task::yield_now().await;
        drop(body);
        watcher.await.expect("gone resolves");
        assert_eq!(outbox.push_text("late"), Err(PushError::Closed));
    }

    fn client_frame(payload: &[u8], op: OpCode, fin: bool) -> Bytes {
        let mut buf = BytesMut::new();
        Parser::write_message(&mut buf, payload, op, fin, true);
        buf.freeze()
    }

    fn incoming(chunks: Vec<Bytes>, max: usize) -> Incoming {
        incoming_to(chunks, Outbox::new(4, None).0, max)
    }

    fn incoming_to(chunks: Vec<Bytes>, outbox: Outbox, max: usize) -> Incoming {
        let stream = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, PayloadError>));
        Incoming::new(
            Payload::Stream {
                payload: Box::pin(stream),
            },
            outbox,
            max,
        )
    }

    #[tokio::test]
    async fn the_end_of_the_clients_side_ends_the_body_without_the_queued_frames() {
        let (outbox, mut body) = Outbox::new(4, None);
        outbox.push(text_frame("never read"), None).expect("room");
        let mut rx = incoming_to(Vec::new(), outbox.clone(), 64);
        assert!(rx.next().await.is_none(), "EOF");
        assert!(
            matches!(poll(&mut body, Waker::noop()), Poll::Ready(None)),
            "the body ends at once, so the dispatcher lets the connection go"
        );
        assert_eq!(outbox.push_text("late"), Err(PushError::Closed));
    }

    #[tokio::test]
    async fn an_io_error_on_the_clients_side_ends_the_body() {
        let (outbox, mut body) = Outbox::new(4, None);
        let stream = futures_util::stream::iter([Err::<Bytes, _>(PayloadError::Incomplete(None))]);
        let mut rx = Incoming::new(
            Payload::Stream {
                payload: Box::pin(stream),
            },
            outbox,
            64,
        );
        assert!(matches!(rx.next().await, Some(Err(InboundError::Io))));
        assert!(matches!(poll(&mut body, Waker::noop()), Poll::Ready(None)));
    }

    #[test]
    fn dropping_the_reader_ends_the_body_but_keeps_a_queued_close_frame() {
        let (outbox, mut body) = Outbox::new(4, None);
        drop(incoming_to(Vec::new(), outbox.clone(), 64));
        assert!(matches!(poll(&mut body, Waker::noop()), Poll::Ready(None)));

        let (outbox, mut body) = Outbox::new(4, None);
        assert!(outbox.close(Some(1001), "bye"));
        drop(incoming_to(Vec::new(), outbox, 64));
        assert!(
            matches!(poll(&mut body, Waker::noop()), Poll::Ready(Some(Ok(_)))),
            "the close frame is still written"
        );
        assert!(matches!(poll(&mut body, Waker::noop()), Poll::Ready(None)));
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
            rx.next().await.map(Result::ok),
            Some(Some(Inbound::Ping(Bytes::new())))
        );
        assert_eq!(
            rx.next().await.map(Result::ok),
            Some(Some(Inbound::Text("hello".into())))
        );
        assert!(rx.next().await.is_none());
        assert_eq!(rx.buf.capacity(), 0, "an emptied read buffer is released");
    }

    #[tokio::test]
    async fn a_message_over_the_limit_is_refused_whole_or_in_fragments() {
        let mut rx = incoming(vec![client_frame(&[b'a'; 65], OpCode::Text, true)], 64);
        assert!(matches!(rx.next().await, Some(Err(InboundError::TooBig))));
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&client_frame(&[b'a'; 40], OpCode::Text, false));
        wire.extend_from_slice(&client_frame(&[b'a'; 40], OpCode::Continue, true));
        let mut rx = incoming(vec![wire.freeze()], 64);
        assert!(matches!(rx.next().await, Some(Err(InboundError::TooBig))));
        assert!(rx.next().await.is_none(), "nothing is read after an error");
    }

    #[tokio::test]
    async fn invalid_utf8_text_and_unmasked_frames_are_errors() {
        let mut rx = incoming(vec![client_frame(&[0xff, 0xfe], OpCode::Text, true)], 64);
        assert!(matches!(
            rx.next().await,
            Some(Err(InboundError::InvalidUtf8))
        ));
        let mut unmasked = BytesMut::new();
        Parser::write_message(&mut unmasked, b"hi", OpCode::Text, true, false);
        let mut rx = incoming(vec![unmasked.freeze()], 64);
        assert!(matches!(
            rx.next().await,
            Some(Err(InboundError::Protocol(_)))
        ));
    }
}
