//! A socket's life, in one place. [`open`] turns an authorized upgrade into a socket
//! ([`ws::accept`]), admits it (the hub, then its registry rows, all before the 101 answer
//! so that a publish right after the handshake finds it) and spawns its task. The task
//! (`run`) is a `select!` over the hub's kill signal, the end of the connection, incoming
//! frames and a heartbeat tick; when it ends, `release` takes the socket out of the hub
//! and the registry. Outgoing pushes bypass the task (see `ws::Outbox`).

use std::sync::Arc;
use std::time::Duration;

use actix_http::ws::CloseReason;
use actix_web::dev::Payload;
use actix_web::{HttpRequest, HttpResponse};
use hermes_shared::ids::{new_message_id, now_millis};
use hermes_shared::registry::ConnectionRecord;
use hermes_shared::wire::{
    ClientFrame, Frame, PublishMessage, connected_frame, error_frame, pong_frame,
};
use tokio::time::Instant;

use crate::close;
use crate::error::HttpError;
use crate::hub::Connection;
use crate::state::Gateway;
use crate::ws::{self, Accepted, Inbound, InboundError, Incoming, PushError, SocketSettings};

/// How long a closed socket's peer has to read its close frame before the connection is cut.
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

/// Accepts an authorized upgrade as the socket `record`, speaking `protocol` when the
/// client negotiated one (`hermes.v1`: it gets the `connected` frame). Returns the 101
/// answer once the socket is admitted; the refusal otherwise (400 for a bad handshake,
/// 503 when the registry cannot take its rows).
pub async fn open(
    gw: Arc<Gateway>,
    req: &HttpRequest,
    payload: Payload,
    record: ConnectionRecord,
    protocol: Option<&str>,
) -> Result<HttpResponse, HttpError> {
    let limits = &gw.config.limits;
    let Accepted {
        response,
        outbox,
        incoming,
    } = ws::accept(
        req,
        payload,
        SocketSettings {
            protocol,
            queue: limits.send_queue,
            max_message: limits.max_message_bytes,
            metrics: Some(gw.metrics.clone()),
        },
    )?;
    let conn = Connection::new(record, protocol.is_some(), outbox);
    if let Err(error) = admit(&gw, &conn).await {
        tracing::warn!(%error, "cannot register a connection");
        gw.hub.remove(&conn);
        return Err(HttpError::unavailable(
            "registry_unavailable",
            "the connection registry is unavailable; retry shortly",
        ));
    }
    gw.metrics.connects.with_label_values(&["accepted"]).inc();
    tracing::debug!(connection_id = conn.id(), room_id = %conn.record.room_id, "connected");
    actix_web::rt::spawn(run(gw, incoming, conn));
    Ok(response)
}

/// Adds the socket to the hub and its rows to the registry: its `connections` row, and
/// the `room_gateways` / `user_gateways` rows when it is this gateway's first socket of
/// that room / user.
async fn admit(gw: &Gateway, conn: &Arc<Connection>) -> hermes_shared::Result<()> {
    let edges = gw.hub.insert(conn.clone());
    let ttl = gw.config.registry_ttl;
    let r = &conn.record;
    gw.registry.put_connection(r, ttl).await?;
    if edges.room_edge {
        gw.registry
            .add_room_gateway(&r.room_id, &r.gateway_id, ttl)
            .await?;
    }
    if edges.user_edge {
        gw.registry
            .add_user_gateway(&r.user_id, &r.gateway_id, ttl)
            .await?;
    }
    Ok(())
}

/// Runs a socket until it closes, then releases it. Pushes from the hub do not pass
/// through here: they go straight into the socket's outbox, which its connection writes from.
async fn run(gw: Arc<Gateway>, mut incoming: Incoming, conn: Arc<Connection>) {
    let limits = gw.config.limits.clone();
    let outbox = conn.outbox.clone();
    let mut tick =
        tokio::time::interval_at(Instant::now() + limits.ping_interval, limits.ping_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_frame = Instant::now();
    let mut awaiting_pong: Option<Instant> = None;
    let mut bucket = TokenBucket::new(limits.client_rate, limits.client_burst);

    let end = 'socket: {
        if conn.modern {
            let r = &conn.record;
            let frame = connected_frame(&r.connection_id, &r.user_id, &r.room_id);
            if outbox.push_text(frame.as_str()).is_err() {
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
                () = outbox.gone() => break 'socket End::Vanished,
                incoming = incoming.next() => {
                    let message = match incoming {
                        None => break 'socket End::Vanished,
                        Some(Err(error)) => break 'socket protocol_end(error),
                        Some(Ok(m)) => m,
                    };
                    last_frame = Instant::now();
                    conn.touch(now_millis());
                    let limited = !matches!(message, Inbound::Pong(_) | Inbound::Close(_)) && !bucket.take();
                    if limited {
                        gw.metrics.messages_received.with_label_values(&["rate_limited"]).inc();
                        break 'socket End::Close(close::POLICY_VIOLATION, "message rate limit exceeded".into());
                    }
                    let sent = match message {
                        Inbound::Text(text) => match handle_text(&gw, &conn, &text) {
                            Some(reply) => outbox.push_text(reply.as_str()),
                            None => Ok(()),
                        },
                        Inbound::Binary(_) => {
                            gw.metrics.messages_received.with_label_values(&["binary"]).inc();
                            let reply = error_frame("binary_not_supported", "send text frames with JSON like {\"action\":\"sendMessage\",\"data\":...}");
                            outbox.push_text(reply.as_str())
                        }
                        Inbound::Ping(bytes) => outbox.pong(&bytes),
                        Inbound::Pong(_) => {
                            awaiting_pong = None;
                            Ok(())
                        }
                        Inbound::Close(reason) => break 'socket End::PeerClosed(reason),
                    };
                    if let Err(error) = sent {
                        break 'socket unsent(error);
                    }
                }
                _ = tick.tick() => {
                    if last_frame.elapsed() >= limits.idle_timeout {
                        break 'socket End::Close(close::GOING_AWAY, "idle timeout".into());
                    }
                    if awaiting_pong.is_some_and(|at| at.elapsed() >= limits.pong_timeout) {
                        break 'socket End::Close(close::GOING_AWAY, "no pong: connection presumed dead".into());
                    }
                    if let Err(error) = outbox.ping() {
                        break 'socket unsent(error);
                    }
                    awaiting_pong.get_or_insert_with(Instant::now);
                }
            }
        }
    };

    let code = match end {
        End::Close(code, reason) => {
            outbox.close(Some(code), &reason);
            code
        }
        End::PeerClosed(reason) => {
            let code = reason.as_ref().map_or(1005, |r| u16::from(r.code));
            // Echo the peer's code (RFC 6455 §5.5.1); a close without one gets none back.
            outbox.close(reason.map(|r| u16::from(r.code)), "");
            code
        }
        End::Vanished => 1006,
    };
    gw.metrics
        .closes
        .with_label_values(&[&code.to_string()])
        .inc();
    release(&gw, &conn).await;
    if code != 1006 {
        // The close frame is queued behind what the client has not read yet. A client that
        // reads it closes the connection; one that never reads is cut off.
        if tokio::time::timeout(CLOSE_TIMEOUT, outbox.gone())
            .await
            .is_err()
        {
            outbox.abort();
        }
    }
}

/// How the socket ends when a frame of its own (a reply, a ping) cannot be queued.
fn unsent(error: PushError) -> End {
    match error {
        PushError::Full => End::Close(
            close::TRY_AGAIN_LATER,
            "client too slow: send queue full".into(),
        ),
        PushError::Closed => End::Vanished,
    }
}

/// The close an incoming protocol error deserves; none when the connection itself failed.
fn protocol_end(error: InboundError) -> End {
    error
        .close()
        .map_or(End::Vanished, |(code, reason)| End::Close(code, reason))
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
                    Ok(outcome) if outcome.failed.is_empty() && outcome.rejected.is_empty() => None,
                    Ok(outcome) => Some(format!(
                        "the message did not reach {} gateway(s); it may be missing for some members",
                        outcome.failed.len() + outcome.rejected.len()
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

/// Takes a closed socket out of the hub and its rows out of the registry (the room and
/// user rows only when it was this gateway's last socket there, written again if a socket
/// of that room or user arrived meanwhile).
async fn release(gw: &Gateway, conn: &Connection) {
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
