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
//! connect that fails fails the requests waiting for it. A gateway that answers the
//! upgrade with 404 (a version without the stream) makes the stream hand every request
//! back as [`StreamError::Unsupported`], and the router delivers to it over HTTP.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use tokio::net::TcpStream;
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
    DELIVER_BATCH_MAX, DELIVER_STREAM_PATH, DELIVER_STREAM_PROTOCOL, DeliverBatch,
    DeliverBatchReply, DeliverRequest, DeliverResponse, SECRET_HEADER,
};

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
    sender: Arc<Mutex<Option<mpsc::UnboundedSender<Submission>>>>,
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
            match self.sender().send(submission) {
                Ok(()) => {
                    return answer.await.unwrap_or_else(|_| {
                        Err(StreamError::Failed(self.target.unreachable(
                            "the deliver stream ended before it answered".into(),
                        )))
                    });
                }
                Err(mpsc::error::SendError(back)) => {
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
    fn sender(&self) -> mpsc::UnboundedSender<Submission> {
        let mut slot = self.sender.lock();
        if let Some(tx) = slot.as_ref().filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
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
        match tokio_tungstenite::client_async(request, tcp).await {
            Ok((ws, _)) => Ok(ws),
            Err(WsError::Http(response)) if response.status().as_u16() == 404 => {
                Err(ConnectError::Unsupported)
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

/// Takes what else is queued right now (up to a frame's worth per call site).
fn drain_queued(rx: &mut mpsc::UnboundedReceiver<Submission>, into: &mut Vec<Submission>) {
    while let Ok(s) = rx.try_recv() {
        into.push(s);
    }
}

/// The stream's task: writes batches, matches answers, times requests out, reconnects.
async fn run(target: Arc<Target>, mut rx: mpsc::UnboundedReceiver<Submission>) {
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
                    Err(ConnectError::Failed(reason)) => {
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
                                .send(Err(StreamError::Failed(target.unreachable(reason.clone()))));
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
        let Some(ws) = link.ws.as_mut() else { continue };
        tokio::select! {
            submission = rx.recv() => {
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

/// Writes `batch` as frames of at most [`DELIVER_BATCH_MAX`] requests, flushed once.
async fn send(target: &Target, link: &mut Link, batch: &mut Vec<Submission>) {
    let Some(ws) = link.ws.as_mut() else {
        for s in batch.drain(..) {
            let _ = s.reply.send(Err(StreamError::Failed(
                target.unreachable("the deliver stream is not connected".into()),
            )));
        }
        return;
    };
    let deadline = Instant::now() + target.timeout;
    let mut written: Result<(), WsError> = Ok(());
    let mut requests = Vec::with_capacity(batch.len().min(DELIVER_BATCH_MAX));
    let mut chunks = batch.drain(..).peekable();
    while chunks.peek().is_some() {
        requests.clear();
        let mut replies = Vec::new();
        for s in chunks.by_ref().take(DELIVER_BATCH_MAX) {
            requests.push(s.request);
            replies.push(s.reply);
        }
        let seq = link.next_seq;
        link.next_seq += 1;
        let frame = match serde_json::to_string(&DeliverBatch {
            seq,
            requests: requests.as_slice(),
        }) {
            Ok(frame) => frame,
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(StreamError::Failed(Error::Invalid(format!(
                        "cannot encode a deliver request: {e}"
                    )))));
                }
                continue;
            }
        };
        link.in_flight.push_back(InFlight {
            seq,
            deadline,
            replies,
        });
        if written.is_ok() {
            written = ws.feed(Message::text(frame)).await;
        }
    }
    if written.is_ok() {
        written = ws.flush().await;
    }
    if let Err(e) = written {
        target.count("unreachable");
        link.fail_all(target, &format!("deliver stream write: {e}"));
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
    use crate::wire::{DeliverAction, Frame, Target as To};

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
                frame: Frame::from_text("{}"),
            },
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
