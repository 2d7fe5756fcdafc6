//! One task per socket: a `select!` over the hub's kill signal, the socket's bounded
//! outgoing queue, incoming frames and a heartbeat tick.

use std::sync::Arc;
use std::time::Duration;

use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError, Session};
use futures_util::StreamExt as _;
use hermes_shared::ids::{new_message_id, now_millis};
use hermes_shared::wire::{
    ClientFrame, Frame, PublishMessage, connected_frame, error_frame, pong_frame,
};
use tokio::time::Instant;

use crate::close;
use crate::hub::{Connection, Outbound};
use crate::state::Gateway;

/// How long a close frame may wait behind a full outgoing buffer.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Messages per second with a burst, refilled continuously.
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How the loop ended.
enum End {
    /// We close with this code and reason.
    Close(u16, String),
    /// The peer sent a close frame; echo its code.
    PeerClosed(Option<CloseReason>),
    /// The peer vanished (TCP closed, I/O error): nothing to send.
    Vanished,
}

/// Runs a socket until it closes, then deregisters it.
pub async fn run(
    gw: Arc<Gateway>,
    mut session: Session,
    stream: actix_ws::MessageStream,
    conn: Arc<Connection>,
    mut outgoing: crate::queue::Receiver<Outbound>,
) {
    let limits = gw.config.limits.clone();
    let mut stream = stream
        .max_frame_size(limits.max_message_bytes)
        .aggregate_continuations()
        .max_continuation_size(limits.max_message_bytes);
    let mut tick =
        tokio::time::interval_at(Instant::now() + limits.ping_interval, limits.ping_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_frame = Instant::now();
    let mut awaiting_pong: Option<Instant> = None;
    let mut bucket = TokenBucket::new(limits.client_rate, limits.client_burst);

    let end = 'socket: {
        if conn.modern {
            let r = conn.record.clone();
            let frame = connected_frame(&r.connection_id, &r.user_id, &r.room_id);
            if session.text(frame.text()).await.is_err() {
                break 'socket End::Vanished;
            }
        }
        loop {
            tokio::select! {
                biased;
                () = conn.killed() => {
                    let (code, reason) = conn.requested_close().unwrap_or((close::NORMAL, String::new()));
                    break 'socket End::Close(code, reason);
                }
                out = outgoing.pop() => {
                    let Outbound::Frame(frame, published_at) = out;
                    tokio::select! {
                        biased;
                        () = conn.killed() => {
                            let (code, reason) = conn.requested_close().unwrap_or((close::NORMAL, String::new()));
                            break 'socket End::Close(code, reason);
                        }
                        sent = session.text(frame.text()) => {
                            if sent.is_err() {
                                break 'socket End::Vanished;
                            }
                        }
                    }
                    if let Some(at) = published_at {
                        let ms = now_millis().saturating_sub(at);
                        gw.metrics.end_to_end.observe(ms as f64 / 1000.0);
                    }
                }
                incoming = stream.next() => {
                    let message = match incoming {
                        None => break 'socket End::Vanished,
                        Some(Err(error)) => break 'socket protocol_end(&error),
                        Some(Ok(m)) => m,
                    };
                    last_frame = Instant::now();
                    conn.touch(now_millis());
                    match message {
                        AggregatedMessage::Text(text) => {
                            if !bucket.take() {
                                gw.metrics.messages_received.with_label_values(&["rate_limited"]).inc();
                                break 'socket End::Close(close::POLICY_VIOLATION, "message rate limit exceeded".into());
                            }
                            if let Some(reply) = handle_text(&gw, &conn, &text)
                                && session.text(reply.text()).await.is_err()
                            {
                                break 'socket End::Vanished;
                            }
                        }
                        AggregatedMessage::Binary(_) => {
                            gw.metrics.messages_received.with_label_values(&["binary"]).inc();
                            if !bucket.take() {
                                break 'socket End::Close(close::POLICY_VIOLATION, "message rate limit exceeded".into());
                            }
                            let reply = error_frame("binary_not_supported", "send text frames with JSON like {\"action\":\"sendMessage\",\"data\":...}");
                            if session.text(reply.text()).await.is_err() {
                                break 'socket End::Vanished;
                            }
                        }
                        AggregatedMessage::Ping(bytes) => {
                            if !bucket.take() {
                                break 'socket End::Close(close::POLICY_VIOLATION, "message rate limit exceeded".into());
                            }
                            if session.pong(&bytes).await.is_err() {
                                break 'socket End::Vanished;
                            }
                        }
                        AggregatedMessage::Pong(_) => awaiting_pong = None,
                        AggregatedMessage::Close(reason) => break 'socket End::PeerClosed(reason),
                    }
                }
                _ = tick.tick() => {
                    if last_frame.elapsed() >= limits.idle_timeout {
                        break 'socket End::Close(close::GOING_AWAY, "idle timeout".into());
                    }
                    if awaiting_pong.is_some_and(|at| at.elapsed() >= limits.pong_timeout) {
                        break 'socket End::Close(close::GOING_AWAY, "no pong: connection presumed dead".into());
                    }
                    if session.ping(b"").await.is_err() {
                        break 'socket End::Vanished;
                    }
                    awaiting_pong.get_or_insert_with(Instant::now);
                }
            }
        }
    };

    let code = match end {
        End::Close(code, reason) => {
            let reason = CloseReason {
                code: CloseCode::from(code),
                description: Some(reason),
            };
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.close(Some(reason))).await;
            code
        }
        End::PeerClosed(reason) => {
            let code = reason.as_ref().map_or(1005, |r| u16::from(r.code));
            let echo = reason.map(|r| CloseReason {
                code: r.code,
                description: None,
            });
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.close(echo)).await;
            code
        }
        End::Vanished => 1006,
    };
    gw.metrics
        .closes
        .with_label_values(&[&code.to_string()])
        .inc();
    deregister(&gw, &conn).await;
}

/// The close an incoming protocol error deserves (RFC 6455 §7.4.1).
fn protocol_end(error: &ProtocolError) -> End {
    match error {
        ProtocolError::Overflow => End::Close(close::MESSAGE_TOO_BIG, "message too big".into()),
        ProtocolError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => End::Close(
            close::INVALID_PAYLOAD,
            "text frame is not valid UTF-8".into(),
        ),
        ProtocolError::Io(e) if e.to_string().contains("maximum continuation size") => {
            End::Close(close::MESSAGE_TOO_BIG, "message too big".into())
        }
        ProtocolError::Io(_) => End::Vanished,
        other => End::Close(close::PROTOCOL_ERROR, format!("protocol error: {other}")),
    }
}

/// Handles a text frame; returns a frame to send back to this socket, if any.
fn handle_text(gw: &Arc<Gateway>, conn: &Arc<Connection>, text: &str) -> Option<Frame> {
    match ClientFrame::parse(text) {
        Ok(ClientFrame::Ping) => {
            gw.metrics
                .messages_received
                .with_label_values(&["ping"])
                .inc();
            Some(pong_frame())
        }
        Ok(ClientFrame::SendMessage { data }) => {
            gw.metrics
                .messages_received
                .with_label_values(&["send_message"])
                .inc();
            let message = PublishMessage {
                user_id: conn.record.user_id.clone(),
                room_id: conn.record.room_id.clone(),
                data,
                to_user_id: None,
                connection_id: None,
                exclude_connection_id: None,
                id: Some(new_message_id()),
                published_at: Some(now_millis()),
            };
            let gw = gw.clone();
            let conn = conn.clone();
            // Through the router, like any publish: it reaches the room on every replica.
            actix_web::rt::spawn(async move {
                let failure = match gw.router.publish(&message).await {
                    Ok(outcome) if outcome.failed.is_empty() => None,
                    Ok(outcome) => Some(format!(
                        "the message did not reach {} gateway(s); it may be missing for some members",
                        outcome.failed.len()
                    )),
                    Err(error) => {
                        tracing::warn!(%error, "sendMessage routing failed");
                        Some("the message could not be routed; try again".to_owned())
                    }
                };
                if let Some(message) = failure {
                    conn.send_frame(&error_frame("delivery_failed", &message), &gw.metrics);
                }
            });
            None
        }
        Err(e) => {
            gw.metrics
                .messages_received
                .with_label_values(&["invalid"])
                .inc();
            Some(error_frame(e.code, &e.message))
        }
    }
}

/// Removes a closed socket from the hub and the registry.
pub async fn deregister(gw: &Gateway, conn: &Connection) {
    let edges = gw.hub.remove(conn);
    let r = &conn.record;
    let registry = &gw.registry;
    if let Err(error) = registry.remove_connection(&r.connection_id).await {
        tracing::warn!(%error, "cannot remove a connection row; its TTL will");
    }
    if edges.room_edge {
        if let Err(error) = registry
            .remove_room_gateway(&r.room_id, &gw.record.gateway_id)
            .await
        {
            tracing::warn!(%error, "cannot remove a room row; its TTL will");
        }
        // A socket of the room may have arrived while the row was being removed.
        if gw.hub.holds_room(&r.room_id) {
            let _ = registry
                .add_room_gateway(&r.room_id, &gw.record.gateway_id, gw.config.registry_ttl)
                .await;
        }
    }
    if edges.user_edge {
        if let Err(error) = registry
            .remove_user_gateway(&r.user_id, &gw.record.gateway_id)
            .await
        {
            tracing::warn!(%error, "cannot remove a user row; its TTL will");
        }
        if gw.hub.holds_user(&r.user_id) {
            let _ = registry
                .add_user_gateway(&r.user_id, &gw.record.gateway_id, gw.config.registry_ttl)
                .await;
        }
    }
}
