//! The deliver stream: one WebSocket from a router to each gateway it delivers to
//! ([`DELIVER_STREAM_PATH`] on the gateway's internal listener, subprotocol
//! [`DELIVER_STREAM_PROTOCOL`], the shared secret in [`SECRET_HEADER`]; all three, and the
//! frames, are in [`crate::wire`]).
//!
//! A router sends [`DeliverBatch`] frames (`{"seq", "requests": [...]}`) and the gateway
//! answers each with a [`DeliverBatchReply`] (`{"seq", "responses": [...]}`, one answer per
//! request, in order). Requests are pipelined: a request submitted while others are
//! written or awaited goes out in the next frame without waiting for their answers, and
//! everything submitted while the stream's task was busy goes out together (at most
//! [`DELIVER_BATCH_MAX`] per frame, one write). Compared with one HTTP request per
//! delivery, a message costs neither side a request parse, a routing pass nor a syscall
//! of its own.
//!
//! Failure semantics are those of the HTTP call it replaces: a request not answered within
//! the client's timeout fails (and the connection is dropped, so a stalled gateway gets a
//! fresh connection next time); a connection that breaks fails the requests it carried; a
//! connect that fails fails the requests waiting for it.
//!
//! Nothing waits without a bound: a write (and its flush) that a gateway does not take in
//! within the client's timeout fails the requests in flight and drops the connection (a
//! frozen gateway's TCP window fills, and the write would otherwise wait for ever); the
//! socket carries `TCP_USER_TIMEOUT` = that timeout, so the kernel gives up on data left
//! unacknowledged as well; at most [`MAX_OUTSTANDING`] requests wait in the stream or in
//! flight, and one beyond that fails at once. A frame holds at most [`DELIVER_BATCH_MAX`]
//! requests and at most [`FRAME_BYTES`] of JSON (a request larger than that goes alone), so
//! one large notification never makes a frame the gateway refuses. A gateway that answers the
//! upgrade with 404 (a version without the stream) makes the stream hand every request
//! back as [`StreamError::Unsupported`], and the router delivers to it over HTTP.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::GatewayClient;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::wire::{
    DELIVER_BATCH_MAX, DELIVER_STREAM_PATH, DELIVER_STREAM_PROTOCOL, DeliverBatchReply,
    DeliverRequest, DeliverResponse, SECRET_HEADER,
};

/// Requests one stream holds at most, queued and in flight together; one more fails at once
/// (a gateway that stopped answering must not collect every message of the router).
pub const MAX_OUTSTANDING: usize = 4_096;

/// A frame's JSON is at most this long, unless one request alone is longer. Under every
/// gateway's frame limit: 32 × (2 × its message limit + 64 KiB) ≥ 2 MiB.
pub const FRAME_BYTES: usize = 1024 * 1024;

/// Why a request submitted to a stream was not answered.
#[derive(Debug)]
pub enum StreamError {
    /// The gateway did not answer: what an HTTP call would have failed with.
    Failed(Error),
    /// The gateway has no deliver stream (an older version): deliver this request over HTTP.
    Unsupported(Box<DeliverRequest>),
}

type Answer = Result<DeliverResponse, StreamError>;

struct Submission {
    request: DeliverRequest,
    reply: oneshot::Sender<Answer>,
}

/// The stream to one gateway; cheap to clone. Its task connects on first use, reconnects
/// after a failure when the next request comes, and ends when the last clone is dropped.
#[derive(Clone)]
pub struct DeliverStream {
    target: Arc<Target>,
    sender: Arc<Mutex<Option<mpsc::Sender<Submission>>>>,
}

/// Where a stream connects and what it needs to.
struct Target {
    gateway_id: String,
    /// `ws://host:port/internal/v1/deliver-stream`.
    url: String,
    secret: Arc<str>,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl DeliverStream {
    /// A stream to the gateway whose internal API is at `base_url`; `None` when that is not
    /// a plain `http://` URL (the stream speaks no TLS: such a gateway is delivered to
    /// over HTTP).
    pub fn new(gateway_id: &str, base_url: &str, client: &GatewayClient) -> Option<Self> {
        let rest = base_url.strip_prefix("http://")?;
        let url = format!("ws://{}{DELIVER_STREAM_PATH}", rest.trim_end_matches('/'));
        // Refuse what the handshake could not parse, rather than failing every request.
        url.as_str().into_client_request().ok()?;
        Some(Self {
            target: Arc::new(Target {
                gateway_id: gateway_id.to_owned(),
                url,
                secret: client.secret().clone(),
                timeout: client.timeout(),
                metrics: client.metrics().clone(),
            }),
            sender: Arc::new(Mutex::new(None)),
        })
    }

    /// Delivers one request and waits for the gateway's answer to it.
    pub async fn submit(&self, request: DeliverRequest) -> Answer {
        let (reply, answer) = oneshot::channel();
        let mut submission = Submission { request, reply };
        // A task that ended (its runtime shut down) is replaced once.
        for _ in 0..2 {
            match self.sender().try_send(submission) {
                Ok(()) => {
                    return answer.await.unwrap_or_else(|_| {
                        Err(StreamError::Failed(self.target.unreachable(
                            "the deliver stream ended before it answered".into(),
                        )))
                    });
                }
                Err(TrySendError::Full(_)) => {
                    self.target.count("overloaded");
                    return Err(StreamError::Failed(self.target.unreachable(format!(
                        "{MAX_OUTSTANDING} deliveries are already waiting for it"
                    ))));
                }
                Err(TrySendError::Closed(back)) => {
                    submission = back;
                    self.sender.lock().take();
                }
            }
        }
        Err(StreamError::Failed(
            self.target
                .unreachable("the deliver stream cannot run".into()),
        ))
    }

    /// The sender of the running task, started if there is none.
    fn sender(&self) -> mpsc::Sender<Submission> {
        let mut slot = self.sender.lock();
        if let Some(tx) = slot.as_ref().filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        // The task takes what is queued only while fewer than MAX_OUTSTANDING are in flight,
        // so queued and in flight together stay within twice that at most.
        let (tx, rx) = mpsc::channel(MAX_OUTSTANDING);
        tokio::spawn(run(self.target.clone(), rx));
        *slot = Some(tx.clone());
        tx
    }
}

impl Target {
    fn unreachable(&self, reason: String) -> Error {
        Error::unreachable(self.gateway_id.clone(), reason)
    }

    fn count(&self, status: &str) {
        self.metrics
            .deliver_requests
            .with_label_values(&["client", status])
            .inc();
    }
}

type Ws = WebSocketStream<TcpStream>;

/// Why a connect failed.
enum ConnectError {
    /// The gateway has no stream endpoint.
    Unsupported,
    Failed(String),
    /// The gateway refused the upgrade for good (401, 403: the internal secrets differ).
    Rejected {
        status: u16,
        reason: String,
    },
}

impl ConnectError {
    /// What a request waiting for the connect fails with.
    fn error(&self, target: &Target) -> Error {
        match self {
            ConnectError::Rejected { status, reason } => {
                Error::rejected(target.gateway_id.clone(), *status, reason.clone())
            }
            ConnectError::Failed(reason) => target.unreachable(reason.clone()),
            ConnectError::Unsupported => {
                target.unreachable("the gateway has no deliver stream".into())
            }
        }
    }
}

/// Opens the WebSocket (no Nagle: frames are small and must not wait for an ACK).
async fn connect(target: &Target) -> Result<Ws, ConnectError> {
    let mut request = target
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| ConnectError::Failed(format!("bad stream URL: {e}")))?;
    let headers = request.headers_mut();
    let secret = HeaderValue::from_str(&target.secret)
        .map_err(|_| ConnectError::Failed("the internal secret is not a header value".into()))?;
    headers.insert(SECRET_HEADER, secret);
    headers.insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(DELIVER_STREAM_PROTOCOL),
    );
    let uri = request.uri();
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    let addr = format!("{host}:{}", uri.port_u16().unwrap_or(80));
    let open = async {
        let tcp = TcpStream::connect(&addr)
            .await
            .map_err(|e| ConnectError::Failed(format!("connect {addr}: {e}")))?;
        tcp.set_nodelay(true)
            .map_err(|e| ConnectError::Failed(format!("TCP_NODELAY: {e}")))?;
        // Data the gateway does not acknowledge (or cannot take: a shut window) in time
        // fails the connection in the kernel too, not after tcp_retries2 (~15 minutes).
        #[cfg(target_os = "linux")]
        if let Err(e) = socket2::SockRef::from(&tcp).set_tcp_user_timeout(Some(target.timeout)) {
            tracing::debug!(error = %e, "cannot set TCP_USER_TIMEOUT on a deliver stream");
        }
        match tokio_tungstenite::client_async(request, tcp).await {
            Ok((ws, _)) => Ok(ws),
            Err(WsError::Http(response)) if response.status().as_u16() == 404 => {
                Err(ConnectError::Unsupported)
            }
            Err(WsError::Http(response)) if matches!(response.status().as_u16(), 401 | 403) => {
                let status = response.status().as_u16();
                super::http::note_rejection(&target.metrics, &target.gateway_id, status);
                Err(ConnectError::Rejected {
                    status,
                    reason: format!("the stream upgrade was refused with {}", response.status()),
                })
            }
            Err(WsError::Http(response)) => Err(ConnectError::Failed(format!(
                "the stream upgrade was refused with {}",
                response.status()
            ))),
            Err(e) => Err(ConnectError::Failed(format!("stream handshake: {e}"))),
        }
    };
    tokio::time::timeout(target.timeout.min(Duration::from_secs(2)), open)
        .await
        .unwrap_or_else(|_| Err(ConnectError::Failed("connect timed out".into())))
}

/// A frame written and not answered yet.
struct InFlight {
    seq: u64,
    deadline: Instant,
    replies: Vec<oneshot::Sender<Answer>>,
}

/// The stream's state between events.
struct Link {
    ws: Option<Ws>,
    in_flight: VecDeque<InFlight>,
    next_seq: u64,
    /// The gateway has no stream: every request is handed back.
    unsupported: bool,
}

impl Link {
    /// Fails everything in flight and drops the connection.
    fn fail_all(&mut self, target: &Target, reason: &str) {
        if self.ws.take().is_some() && !self.in_flight.is_empty() {
            tracing::debug!(gateway_id = %target.gateway_id, reason, "deliver stream lost");
        }
        for frame in self.in_flight.drain(..) {
            for reply in frame.replies {
                let _ = reply.send(Err(StreamError::Failed(target.unreachable(reason.into()))));
            }
        }
    }
}

impl Link {
    /// Requests written and not answered yet.
    fn outstanding(&self) -> usize {
        self.in_flight.iter().map(|f| f.replies.len()).sum()
    }
}

/// Takes what else is queued right now, up to [`MAX_OUTSTANDING`] in all.
fn drain_queued(rx: &mut mpsc::Receiver<Submission>, into: &mut Vec<Submission>) {
    while into.len() < MAX_OUTSTANDING {
        match rx.try_recv() {
            Ok(s) => into.push(s),
            Err(_) => break,
        }
    }
}

/// The stream's task: writes batches, matches answers, times requests out, reconnects.
async fn run(target: Arc<Target>, mut rx: mpsc::Receiver<Submission>) {
    let mut link = Link {
        ws: None,
        in_flight: VecDeque::new(),
        next_seq: 0,
        unsupported: false,
    };
    let mut batch: Vec<Submission> = Vec::new();
    loop {
        if link.ws.is_none() {
            // Idle and disconnected: wait for work, then connect for it.
            let Some(first) = rx.recv().await else { return };
            batch.push(first);
            drain_queued(&mut rx, &mut batch);
            if !link.unsupported {
                match connect(&target).await {
                    Ok(ws) => {
                        target
                            .metrics
                            .deliver_stream_connects
                            .with_label_values(&["ok"])
                            .inc();
                        link.ws = Some(ws);
                    }
                    Err(ConnectError::Unsupported) => {
                        target
                            .metrics
                            .deliver_stream_connects
                            .with_label_values(&["unsupported"])
                            .inc();
                        tracing::info!(gateway_id = %target.gateway_id, "the gateway has no deliver stream; delivering to it over HTTP");
                        link.unsupported = true;
                    }
                    Err(failure) => {
                        target
                            .metrics
                            .deliver_stream_connects
                            .with_label_values(&["failed"])
                            .inc();
                        target.count("unreachable");
                        drain_queued(&mut rx, &mut batch);
                        for s in batch.drain(..) {
                            let _ = s
                                .reply
                                .send(Err(StreamError::Failed(failure.error(&target))));
                        }
                        continue;
                    }
                }
            }
            if link.unsupported {
                drain_queued(&mut rx, &mut batch);
                for s in batch.drain(..) {
                    let _ = s
                        .reply
                        .send(Err(StreamError::Unsupported(Box::new(s.request))));
                }
                continue;
            }
            drain_queued(&mut rx, &mut batch);
            send(&target, &mut link, &mut batch).await;
            continue;
        }
        let deadline = link.in_flight.front().map(|f| f.deadline);
        // Take more only while the gateway keeps up; meanwhile new requests wait in the
        // channel, and fail at once when it is full.
        let room = link.outstanding() < MAX_OUTSTANDING;
        let Some(ws) = link.ws.as_mut() else { continue };
        tokio::select! {
            submission = rx.recv(), if room => {
                let Some(first) = submission else {
                    // Every handle is gone: close politely and end.
                    let _ = ws.close(None).await;
                    link.fail_all(&target, "the deliver stream was closed");
                    return;
                };
                batch.push(first);
                drain_queued(&mut rx, &mut batch);
                send(&target, &mut link, &mut batch).await;
            }
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => answer(&target, &mut link, text.as_str()),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Binary(_))) => {
                    target.count("bad_answer");
                    link.fail_all(&target, "the gateway sent a binary frame on the deliver stream");
                }
                Some(Ok(Message::Close(frame))) => {
                    let why = frame.map(|f| format!("the gateway closed the deliver stream ({}: {})", u16::from(f.code), f.reason)).unwrap_or_else(|| "the gateway closed the deliver stream".into());
                    target.count("unreachable");
                    link.fail_all(&target, &why);
                }
                Some(Err(e)) => {
                    target.count("unreachable");
                    link.fail_all(&target, &format!("deliver stream: {e}"));
                }
                None => {
                    target.count("unreachable");
                    link.fail_all(&target, "the deliver stream ended");
                }
            },
            () = sleep_until(deadline), if deadline.is_some() => {
                target.count("timeout");
                link.fail_all(&target, "the gateway did not answer in time");
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Writes `batch` as frames of at most [`DELIVER_BATCH_MAX`] requests and [`FRAME_BYTES`],
/// flushed once; the writes and the flush must be done by the client's timeout.
async fn send(target: &Target, link: &mut Link, batch: &mut Vec<Submission>) {
    if link.ws.is_none() {
        for s in batch.drain(..) {
            let _ = s.reply.send(Err(StreamError::Failed(
                target.unreachable("the deliver stream is not connected".into()),
            )));
        }
        return;
    }
    let deadline = Instant::now() + target.timeout;
    let mut frames = Vec::new();
    let mut frame = FrameBuilder::default();
    for s in batch.drain(..) {
        let request = match serde_json::to_string(&s.request) {
            Ok(json) => json,
            Err(e) => {
                let _ = s.reply.send(Err(StreamError::Failed(Error::Invalid(format!(
                    "cannot encode a deliver request: {e}"
                )))));
                continue;
            }
        };
        if !frame.fits(&request) {
            frames.push(std::mem::take(&mut frame));
        }
        frame.push(request, s.reply);
    }
    if !frame.replies.is_empty() {
        frames.push(frame);
    }
    let mut texts = Vec::with_capacity(frames.len());
    for frame in frames {
        let seq = link.next_seq;
        link.next_seq += 1;
        texts.push(frame.text(seq));
        link.in_flight.push_back(InFlight {
            seq,
            deadline,
            replies: frame.replies,
        });
    }
    let Some(ws) = link.ws.as_mut() else { return };
    let write = async {
        for text in texts {
            ws.feed(Message::text(text)).await?;
        }
        ws.flush().await
    };
    match tokio::time::timeout_at(deadline, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            target.count("unreachable");
            link.fail_all(target, &format!("deliver stream write: {e}"));
        }
        Err(_) => {
            target.count("timeout");
            target.metrics.deliver_stalled_writes.inc();
            link.fail_all(
                target,
                &format!(
                    "the gateway did not take in a write within {} ms",
                    target.timeout.as_millis()
                ),
            );
        }
    }
}

/// One frame being put together: the requests' JSON, joined by commas, and their callers.
#[derive(Default)]
struct FrameBuilder {
    requests: String,
    replies: Vec<oneshot::Sender<Answer>>,
}

impl FrameBuilder {
    /// Whether `request` may join this frame (an empty frame takes anything).
    fn fits(&self, request: &str) -> bool {
        self.replies.is_empty()
            || (self.replies.len() < DELIVER_BATCH_MAX
                && self.requests.len() + 1 + request.len() <= FRAME_BYTES)
    }

    fn push(&mut self, request: String, reply: oneshot::Sender<Answer>) {
        if !self.replies.is_empty() {
            self.requests.push(',');
        }
        self.requests.push_str(&request);
        self.replies.push(reply);
    }

    /// The frame: a [`crate::wire::DeliverBatch`] (`{"seq":…,"requests":[…]}`).
    fn text(&self, seq: u64) -> String {
        format!(r#"{{"seq":{seq},"requests":[{}]}}"#, self.requests)
    }
}

/// Hands a reply frame's answers to their callers.
fn answer(target: &Target, link: &mut Link, text: &str) {
    let reply: DeliverBatchReply = match serde_json::from_str(text) {
        Ok(reply) => reply,
        Err(e) => {
            target.count("bad_answer");
            link.fail_all(target, &format!("bad answer on the deliver stream: {e}"));
            return;
        }
    };
    // Answers come in order; one for a frame that timed out is not in the list any more.
    let Some(at) = link.in_flight.iter().position(|f| f.seq == reply.seq) else {
        return;
    };
    let Some(frame) = link.in_flight.remove(at) else {
        return;
    };
    if reply.responses.len() != frame.replies.len() {
        target.count("bad_answer");
        let why = format!(
            "bad answer: {} answers to {} requests",
            reply.responses.len(),
            frame.replies.len()
        );
        for r in frame.replies {
            let _ = r.send(Err(StreamError::Failed(target.unreachable(why.clone()))));
        }
        return;
    }
    target.count("200");
    for (r, response) in frame.replies.into_iter().zip(reply.responses) {
        let _ = r.send(Ok(response));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::future::join_all;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

    use super::*;
    use crate::wire::{DeliverAction, DeliverBatch, Frame, Target as To};

    const SECRET: &str = "secret-secret-secret";

    fn client(timeout: Duration) -> GatewayClient {
        GatewayClient::new(SECRET, timeout, Arc::new(Metrics::new())).expect("client")
    }

    fn request(n: usize) -> DeliverRequest {
        DeliverRequest {
            id: Some(format!("m{n}")),
            target: To::User {
                user_id: format!("u{n}"),
                room_id: None,
            },
            exclude_connection_id: None,
            published_at: None,
            action: DeliverAction::Send {
                raw: false,
                frame: Frame::from_text("{}"),
            },
            pos: None,
            expires_at: None,
        }
    }

    /// How a fake gateway treats a connection.
    #[derive(Clone, Copy)]
    enum Behaviour {
        /// Answers every request with `delivered` = the number in its id.
        Answer,
        /// Reads and never answers.
        Silent,
        /// Closes the connection on the first frame.
        Hang,
    }

    /// A deliver stream endpoint on loopback. The `n`-th connection (from 0) behaves as
    /// `behaviours[n]` (the last one repeats). Counts connections and frames; checks the
    /// secret and the subprotocol of every upgrade.
    async fn fake_gateway(
        behaviours: Vec<Behaviour>,
    ) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (connections, frames) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (c, f) = (connections.clone(), frames.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let n = c.fetch_add(1, Ordering::SeqCst);
                let behaviour = behaviours[n.min(behaviours.len() - 1)];
                let f = f.clone();
                tokio::spawn(async move {
                    // The error type is tungstenite's, an HTTP response.
                    #[allow(clippy::result_large_err)]
                    let check = |req: &Request, mut response: Response| {
                        assert_eq!(req.uri().path(), DELIVER_STREAM_PATH);
                        assert_eq!(req.headers()[SECRET_HEADER], SECRET);
                        assert_eq!(
                            req.headers()["Sec-WebSocket-Protocol"],
                            DELIVER_STREAM_PROTOCOL
                        );
                        response.headers_mut().insert(
                            "Sec-WebSocket-Protocol",
                            HeaderValue::from_static(DELIVER_STREAM_PROTOCOL),
                        );
                        Ok(response)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, check).await else {
                        return;
                    };
                    while let Some(Ok(message)) = ws.next().await {
                        let Message::Text(text) = message else {
                            continue;
                        };
                        f.fetch_add(1, Ordering::SeqCst);
                        let batch: DeliverBatch<Vec<DeliverRequest>> =
                            serde_json::from_str(text.as_str()).expect("a batch");
                        match behaviour {
                            Behaviour::Silent => continue,
                            Behaviour::Hang => return,
                            Behaviour::Answer => {}
                        }
                        let responses = batch
                            .requests
                            .iter()
                            .map(|r| DeliverResponse {
                                delivered: r
                                    .id
                                    .as_deref()
                                    .and_then(|id| id[1..].parse().ok())
                                    .unwrap_or(0),
                                gone: Vec::new(),
                                duplicate: false,
                            })
                            .collect();
                        let reply = DeliverBatchReply {
                            seq: batch.seq,
                            responses,
                        };
                        let text = serde_json::to_string(&reply).expect("json");
                        if ws.send(Message::text(text)).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, connections, frames)
    }

    #[tokio::test]
    async fn concurrent_requests_share_frames_and_each_gets_its_own_answer() {
        let (url, connections, frames) = fake_gateway(vec![Behaviour::Answer]).await;
        let stream =
            DeliverStream::new("g", &url, &client(Duration::from_secs(2))).expect("http URL");
        let answers = join_all((1..=200).map(|n| stream.submit(request(n)))).await;
        for (n, answer) in (1..=200).zip(answers) {
            match answer {
                Ok(response) => assert_eq!(response.delivered, n),
                Err(e) => panic!("request {n}: {e:?}"),
            }
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
        let frames = frames.load(Ordering::SeqCst);
        assert!(
            frames <= 200 / 4,
            "200 concurrent requests took {frames} frames"
        );
    }

    #[tokio::test]
    async fn a_gateway_that_does_not_answer_fails_the_request_in_time_and_the_next_one_reconnects()
    {
        let (url, connections, _) = fake_gateway(vec![Behaviour::Silent, Behaviour::Answer]).await;
        let stream =
            DeliverStream::new("g", &url, &client(Duration::from_millis(300))).expect("http URL");
        let started = Instant::now();
        match stream.submit(request(1)).await {
            Err(StreamError::Failed(Error::GatewayUnreachable { reason, .. })) => {
                assert!(reason.contains("did not answer"), "{reason}");
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        let answer = stream
            .submit(request(7))
            .await
            .expect("answered on a new connection");
        assert_eq!(answer.delivered, 7);
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_broken_stream_fails_what_it_carried_and_the_next_request_reconnects() {
        let (url, connections, _) = fake_gateway(vec![Behaviour::Hang, Behaviour::Answer]).await;
        let stream =
            DeliverStream::new("g", &url, &client(Duration::from_secs(5))).expect("http URL");
        let started = Instant::now();
        assert!(matches!(
            stream.submit(request(1)).await,
            Err(StreamError::Failed(Error::GatewayUnreachable { .. }))
        ));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "failed at once, not at the timeout"
        );
        assert_eq!(
            stream.submit(request(3)).await.expect("answered").delivered,
            3
        );
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_gateway_without_the_stream_gets_its_requests_handed_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp
                    .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let stream =
            DeliverStream::new("g", &url, &client(Duration::from_secs(2))).expect("http URL");
        for n in [4, 5] {
            match stream.submit(request(n)).await {
                Err(StreamError::Unsupported(back)) => assert_eq!(back.id, request(n).id),
                other => panic!("expected the request back, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn an_unreachable_gateway_fails_the_request() {
        let stream = DeliverStream::new("g", "http://127.0.0.1:9", &client(Duration::from_secs(2)))
            .expect("http URL");
        assert!(matches!(
            stream.submit(request(1)).await,
            Err(StreamError::Failed(Error::GatewayUnreachable { .. }))
        ));
    }

    /// A request whose notification is `bytes` long.
    fn large_request(n: usize, bytes: usize) -> DeliverRequest {
        let mut r = request(n);
        r.action = DeliverAction::Send {
            raw: false,
            frame: Frame::from_text(format!("\"{}\"", "x".repeat(bytes))),
        };
        r
    }

    #[tokio::test]
    async fn large_requests_are_split_into_frames_under_the_byte_bound_and_all_answered() {
        let (url, _, frames) = fake_gateway(vec![Behaviour::Answer]).await;
        let stream =
            DeliverStream::new("g", &url, &client(Duration::from_secs(5))).expect("http URL");
        // 12 requests of 300 KB: at most 3 fit in a frame of FRAME_BYTES.
        let answers = join_all((1..=12).map(|n| stream.submit(large_request(n, 300_000)))).await;
        for (n, answer) in (1..=12).zip(answers) {
            assert_eq!(answer.expect("answered").delivered, n);
        }
        assert!(
            frames.load(Ordering::SeqCst) >= 4,
            "12 × 300 KB in frames of 1 MiB"
        );

        let mut small = FrameBuilder::default();
        let (tx, _rx) = oneshot::channel();
        small.push("{}".into(), tx);
        assert!(!small.fits(&"x".repeat(FRAME_BYTES)), "over the byte bound");
        let empty = FrameBuilder::default();
        assert!(
            empty.fits(&"x".repeat(2 * FRAME_BYTES)),
            "a large request goes alone"
        );
        let text = small.text(7);
        let parsed: DeliverBatch<Vec<serde_json::Value>> =
            serde_json::from_str(&text).expect("a deliver batch");
        assert_eq!((parsed.seq, parsed.requests.len()), (7, 1));
    }

    #[tokio::test]
    async fn a_gateway_that_stops_reading_fails_the_stalled_write_at_the_deadline() {
        // A gateway that accepts the stream, then reads nothing (a SIGSTOPped process): with
        // small socket buffers the router's write fills them and can go no further.
        let listener = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        listener.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        listener
            .bind(
                &"127.0.0.1:0"
                    .parse::<std::net::SocketAddr>()
                    .expect("addr")
                    .into(),
            )
            .expect("bind");
        listener.listen(16).expect("listen");
        listener.set_nonblocking(true).expect("nonblocking");
        let listener = TcpListener::from_std(listener.into()).expect("tokio listener");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                // The error type is tungstenite's, an HTTP response.
                #[allow(clippy::result_large_err)]
                let respond = |_: &Request, mut response: Response| {
                    response.headers_mut().insert(
                        "Sec-WebSocket-Protocol",
                        HeaderValue::from_static(DELIVER_STREAM_PROTOCOL),
                    );
                    Ok(response)
                };
                if let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, respond).await {
                    held.push(ws);
                }
            }
        });
        let metrics = Arc::new(Metrics::new());
        let client = GatewayClient::new(SECRET, Duration::from_millis(300), metrics.clone())
            .expect("client");
        let stream = DeliverStream::new("g", &url, &client).expect("http URL");
        // 32 MB in all: far more than the socket buffers hold.
        let answers = tokio::time::timeout(
            Duration::from_secs(20),
            join_all((1..=32).map(|n| stream.submit(large_request(n, 1_000_000)))),
        )
        .await
        .expect("every request fails instead of waiting for ever");
        for answer in answers {
            assert!(matches!(
                answer,
                Err(StreamError::Failed(Error::GatewayUnreachable { .. }))
            ));
        }
        assert!(
            metrics.deliver_stalled_writes.get() >= 1,
            "the write was cut off at its deadline"
        );
    }

    #[tokio::test]
    async fn requests_beyond_the_outstanding_bound_fail_at_once() {
        let (url, _, _) = fake_gateway(vec![Behaviour::Silent]).await;
        let stream =
            DeliverStream::new("g", &url, &client(Duration::from_secs(2))).expect("http URL");
        let answers = join_all((0..3 * MAX_OUTSTANDING).map(|n| stream.submit(request(n)))).await;
        let refused = answers
            .iter()
            .filter(|a| {
                matches!(a, Err(StreamError::Failed(Error::GatewayUnreachable { reason, .. }))
                    if reason.contains("already waiting"))
            })
            .count();
        assert!(refused >= MAX_OUTSTANDING, "{refused} refused at once");
        assert!(
            answers.iter().all(|a| a.is_err()),
            "a silent gateway answers nothing"
        );
    }

    #[test]
    fn only_plain_http_gateways_get_a_stream() {
        let c = client(Duration::from_secs(1));
        assert!(DeliverStream::new("g", "https://10.0.0.1:8081", &c).is_none());
        assert!(DeliverStream::new("g", "10.0.0.1:8081", &c).is_none());
        assert_eq!(
            DeliverStream::new("g", "http://10.0.0.1:8081/", &c).map(|s| s.target.url.clone()),
            Some("ws://10.0.0.1:8081/internal/v1/deliver-stream".into())
        );
    }
}
