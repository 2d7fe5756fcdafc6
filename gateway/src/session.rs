//! A socket's life, in one place. [`open`] turns an authorized upgrade into a socket
//! ([`ws::accept`]), admits it (the hub, then its registry rows, all before the 101 answer
//! so that a publish right after the handshake finds it) and spawns its task. The task
//! (`run`) is a `select!` over the hub's kill signal, the end of the connection, incoming
//! frames and a heartbeat tick; when it ends, `release` takes the socket out of the hub
//! and the registry. Outgoing pushes bypass the task (see `ws::Outbox`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use actix_http::ws::CloseReason;
use actix_web::dev::Payload;
use actix_web::{HttpRequest, HttpResponse};
use hermes_shared::auth::{AuthError, Ticket};
use hermes_shared::history::{self, Pos, Timing, now_micros};
use hermes_shared::ids::{new_message_id, now_millis, now_secs};
use hermes_shared::registry::ConnectionRecord;
use hermes_shared::wire::{
    ClientFrame, Frame, PublishMessage, connected_frame, error_frame, notification_v1, pong_frame,
    recovered_frame,
};
use tokio::time::Instant;

use crate::close;
use crate::error::HttpError;
use crate::hub::Connection;
use crate::routes::{Caller, RouteError, Selected};
use crate::state::{Gateway, Unremoved};
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

/// What an authorized upgrade asks for.
pub struct Admission<'a> {
    pub record: ConnectionRecord,
    /// The negotiated subprotocol: `hermes.v1` clients get the `connected` frame, and
    /// notifications with their `id` and `pos`.
    pub protocol: Option<&'a str>,
    /// When the token expires, seconds since the epoch: the socket is closed then (4001).
    pub token_exp: u64,
    /// The position a `hermes.v1` client resumes from (`since`), as it sent it.
    pub since: Option<String>,
    /// What this process knew of revocations when the connect started.
    pub ticket: Ticket,
    /// What the `$connect` route's answer set, if any.
    pub route_context: Option<Arc<str>>,
}

/// Accepts an authorized upgrade as a socket. Returns the 101 answer once the socket is
/// admitted; the refusal otherwise (400 for a bad handshake, 503 when the registry cannot
/// take its rows, 403 when the token was revoked meanwhile).
pub async fn open(
    gw: Arc<Gateway>,
    req: &HttpRequest,
    payload: Payload,
    admission: Admission<'_>,
) -> Result<HttpResponse, HttpError> {
    let Admission {
        record,
        protocol,
        token_exp,
        since,
        ticket,
        route_context,
    } = admission;
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
    let modern = protocol.is_some();
    let resume = since.filter(|_| modern);
    if modern {
        // First, before the socket is in the hub: nothing may come before it.
        let r = &record;
        let _ =
            outbox.push_text(connected_frame(&r.connection_id, &r.user_id, &r.room_id).as_str());
    }
    let conn = Connection::with_route_context(
        record,
        modern,
        outbox,
        token_exp,
        resume.is_some(),
        route_context,
    );
    if let Err(error) = admit(&gw, &conn).await {
        tracing::warn!(%error, "cannot register a connection");
        gw.hub.remove(&conn);
        return Err(HttpError::unavailable(
            "registry_unavailable",
            "the connection registry is unavailable; retry shortly",
        ));
    }
    // A revocation that reached this gateway while the token was checked or the socket
    // admitted wins: it may have closed the (user, room)'s sockets before this one was in
    // the hub.
    if gw
        .auth
        .revoked_since(&conn.record.user_id, &conn.record.room_id, ticket)
    {
        release(&gw, &conn).await;
        return Err(HttpError::from(&AuthError::Revoked));
    }
    gw.metrics.connects.with_label_values(&["accepted"]).inc();
    tracing::debug!(connection_id = conn.id(), room_id = %conn.record.room_id, "connected");
    actix_web::rt::spawn(run(gw, incoming, conn, resume));
    Ok(response)
}

/// Adds the socket to the hub and its rows to the registry: its `connections` row, and
/// the `room_gateways` / `user_gateways` rows unless another socket of that room / user
/// already finished writing them. A socket that joins while the first one's write is still
/// in flight writes the row too: its 101 never goes out on the strength of a write that has
/// not completed (and may fail), so a publish right after any socket's handshake finds it.
async fn admit(gw: &Gateway, conn: &Arc<Connection>) -> hermes_shared::Result<()> {
    let unwritten = gw.hub.insert(conn.clone());
    let ttl = gw.config.registry_row_ttl;
    let r = &conn.record;
    gw.registry.put_connection(r, ttl).await?;
    if unwritten.room_row {
        gw.registry
            .add_room_gateway(&r.room_id, &r.gateway_id, ttl)
            .await?;
        gw.hub.room_row_written(&r.room_id);
    }
    if unwritten.user_row {
        gw.registry
            .add_user_gateway(&r.user_id, &r.gateway_id, ttl)
            .await?;
        gw.hub.user_row_written(&r.user_id);
    }
    Ok(())
}

/// Runs a socket until it closes, then releases it. Pushes from the hub do not pass
/// through here: they go straight into the socket's outbox, which its connection writes from.
#[allow(clippy::manual_async_fn)] // an async block keeps the arguments once, not twice
fn run(
    gw: Arc<Gateway>,
    mut incoming: Incoming,
    conn: Arc<Connection>,
    resume: Option<String>,
) -> impl std::future::Future<Output = ()> {
    async move {
        let limits = &gw.config.limits;
        let outbox = conn.outbox.clone();
        let mut tick =
            tokio::time::interval_at(Instant::now() + limits.ping_interval, limits.ping_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        expire_with_token(&mut tick, conn.token_exp, limits.ping_interval);
        let mut last_frame = Instant::now();
        let mut awaiting_pong: Option<Instant> = None;
        let mut bucket = TokenBucket::new(limits.client_rate, limits.client_burst);

        let end = 'socket: {
            if let Some(since) = resume
                && let Err(end) = Box::pin(resume_from(&gw, &conn, &since)).await
            {
                break 'socket end;
            }
            loop {
                tokio::select! {
                    biased;
                    () = conn.killed() => break 'socket requested_end(&conn),
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
                        if now_secs() >= conn.token_exp {
                            break 'socket End::Close(close::TOKEN_EXPIRED, "token expired".into());
                        }
                        expire_with_token(&mut tick, conn.token_exp, limits.ping_interval);
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

        let (code, end_reason) = match end {
            End::Close(code, reason) => {
                outbox.close(Some(code), &reason);
                (code, Some(reason))
            }
            End::PeerClosed(reason) => {
                let code = reason.as_ref().map_or(1005, |r| u16::from(r.code));
                let description = reason.as_ref().and_then(|r| r.description.clone());
                // Echo the peer's code (RFC 6455 §5.5.1); a close without one gets none back.
                outbox.close(reason.map(|r| u16::from(r.code)), "");
                (code, description)
            }
            End::Vanished => (1006, None),
        };
        gw.metrics
            .closes
            .with_label_values(&[close::metric_label(code)])
            .inc();
        Box::pin(release(&gw, &conn)).await;
        if let Some(routes) = &gw.routes {
            let reason = match &end_reason {
                Some(reason) => reason.as_str(),
                None => "",
            };
            routes.disconnect(
                &Caller {
                    record: conn.record.clone(),
                    context: conn.route_context.clone(),
                },
                code,
                reason,
            );
        }
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
}

/// Sends a resuming socket what it missed since `since`, unless it closes first. Boxed
/// by its caller: the socket's task would otherwise carry the replay's state for its
/// whole life, and most sockets never resume.
async fn resume_from(gw: &Gateway, conn: &Connection, since: &str) -> Result<(), End> {
    tokio::select! {
        biased;
        () = conn.killed() => Err(requested_end(conn)),
        () = conn.outbox.gone() => Err(End::Vanished),
        replayed = tokio::time::timeout(REPLAY_TIMEOUT, replay(gw, conn, since)) => match replayed {
            Ok(result) => result,
            Err(_) => Err(End::Close(close::TRY_AGAIN_LATER, "the replay was not read in time; resume again".into())),
        },
    }
}

/// How the socket ends when the hub asks it to close.
fn requested_end(conn: &Connection) -> End {
    let (code, reason) = conn
        .requested_close()
        .unwrap_or((close::NORMAL, String::new()));
    End::Close(code, reason)
}

/// How long a resuming socket's replay may take (the client reading it included).
const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);

/// Makes the heartbeat tick fire when the token expires if that comes before the next
/// regular tick, so the socket is closed on time (4001) without a timer of its own.
fn expire_with_token(tick: &mut tokio::time::Interval, token_exp: u64, period: Duration) {
    let left = Duration::from_secs(token_exp.saturating_sub(now_secs()));
    if left < period {
        tick.reset_at(Instant::now() + left);
    }
}

/// Sends a resuming socket what it missed: the notifications of its room's and its
/// user's streams after its position (read from `since − lookback`: see
/// `hermes_shared::history`), then the `recovered` frame, then the notifications that
/// arrived live meanwhile, each once. A position that is not ours, older than the history
/// window or too far behind gets `recovered: false` and no replay; a history that cannot
/// be read closes the socket with 1013, so that the client resumes again, losing nothing.
async fn replay(gw: &Gateway, conn: &Connection, since: &str) -> Result<(), End> {
    let settings = gw.config.history;
    let since = Pos::parse(since);
    let window_start =
        now_micros().saturating_sub(u64::try_from(settings.ttl.as_micros()).unwrap_or(u64::MAX));
    let (entries, recovered) = match since {
        Some(since) if settings.enabled() && since.micros >= window_start => {
            let from = since.minus(Timing::new(gw.config.deliver_timeout).lookback());
            // The lookback's entries come on top of the ones the client may replay.
            let limit = settings.max.saturating_mul(2);
            let r = &conn.record;
            let room_stream = history::room_stream(&r.room_id);
            let user_stream = history::user_stream(&r.user_id);
            let (room, user) = tokio::join!(
                gw.registry.read_history(&room_stream, from, limit),
                gw.registry.read_history(&user_stream, from, limit),
            );
            match (room, user) {
                (Ok(room), Ok(user)) => {
                    gw.metrics.history_reads.with_label_values(&["ok"]).inc();
                    let mut entries = history::replay(vec![room.clone(), user.clone()], &r.room_id);
                    // The client has the notification whose position it sent.
                    entries.retain(|e| e.pos != since);
                    let after = entries.iter().filter(|e| e.pos > since).count();
                    if room.complete && user.complete && after <= settings.max {
                        (entries, true)
                    } else {
                        (Vec::new(), false)
                    }
                }
                (Err(error), _) | (_, Err(error)) => {
                    gw.metrics.history_reads.with_label_values(&["error"]).inc();
                    gw.metrics.resumes.with_label_values(&["failed"]).inc();
                    tracing::warn!(%error, "cannot read the history of a resuming socket");
                    return Err(End::Close(
                        close::TRY_AGAIN_LATER,
                        "history unavailable; resume again".into(),
                    ));
                }
            }
        }
        _ => (Vec::new(), false),
    };
    let missed = since.map_or(0, |since| entries.iter().filter(|e| e.pos > since).count());
    let outbox = &conn.outbox;
    let mut replayed = HashSet::with_capacity(entries.len());
    for e in entries {
        let pos = e.pos.encode();
        let text = notification_v1(&e.frame, &e.id, Some(&pos)).unwrap_or(e.frame);
        outbox
            .push_when_room(ws::text_frame(&text))
            .await
            .map_err(unsent)?;
        gw.metrics.replayed.inc();
        replayed.insert(e.id);
    }
    gw.metrics
        .resumes
        .with_label_values(&[if recovered {
            "recovered"
        } else {
            "not_recovered"
        }])
        .inc();
    outbox
        .push_text(recovered_frame(recovered, missed).as_str())
        .map_err(unsent)?;
    conn.finish_replay(replayed, gw.config.dedup.window)
        .map_err(unsent)
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
    if let Some(routes) = &gw.routes
        && let Selected::Route { key, url } = routes.select(text)
    {
        gw.metrics
            .messages_received
            .with_label_values(&["routed"])
            .inc();
        let (url, text) = (url.to_owned(), text.to_owned());
        let (gw, conn, routes) = (gw.clone(), conn.clone(), routes.clone());
        actix_web::rt::spawn(async move {
            let caller = Caller {
                record: conn.record.clone(),
                context: conn.route_context.clone(),
            };
            match routes.message(&caller, &key, &url, &text).await {
                Ok(Some(reply)) => {
                    conn.send_text(&reply, &gw.metrics);
                }
                Ok(None) => {}
                Err(error) => {
                    // The details (which backend, why) are in the gateway's log.
                    let (code, message) = match error {
                        RouteError::Busy => (
                            "route_busy",
                            "too many messages are being routed; send it again shortly".into(),
                        ),
                        RouteError::Refused { status } => (
                            "route_refused",
                            format!("the route's backend refused the message ({status})"),
                        ),
                        RouteError::Failed(_) => (
                            "route_failed",
                            "the route's backend did not answer; send it again".into(),
                        ),
                    };
                    conn.send_frame(&error_frame(code, &message), &gw.metrics);
                }
            }
        });
        return None;
    }
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
                room_id: Some(conn.record.room_id.clone()),
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
/// of that room or user arrived meanwhile). A delete that fails is tried again after the
/// next heartbeats ([`retry_removals`]).
async fn release(gw: &Gateway, conn: &Connection) {
    let edges = gw.hub.remove(conn);
    let r = &conn.record;
    remove_row(gw, Unremoved::Connection(r.connection_id.clone())).await;
    if edges.room_edge {
        remove_row(gw, Unremoved::Room(r.room_id.clone())).await;
    }
    if edges.user_edge {
        remove_row(gw, Unremoved::User(r.user_id.clone())).await;
    }
}

/// Deletes one of this gateway's rows: a closed socket's connection row, or a room or user
/// edge. An edge follows the hub: it is deleted only while no socket of its room or user is
/// held here, and written (again) when one is — one that arrived while the delete ran, or
/// by the time a retry comes. Keeps the row for a retry when a write or delete fails, and
/// says whether it did not.
async fn remove_row(gw: &Gateway, row: Unremoved) -> bool {
    let (registry, gateway_id) = (&gw.registry, gw.record.gateway_id.as_str());
    let row_ttl = gw.config.registry_row_ttl;
    let result = match &row {
        Unremoved::Connection(id) => registry.remove_connection(id, gateway_id).await,
        Unremoved::Room(room) => {
            settle_edge(
                || gw.hub.holds_room(room),
                || registry.remove_room_gateway(room, gateway_id),
                || registry.add_room_gateway(room, gateway_id, row_ttl),
            )
            .await
        }
        Unremoved::User(user) => {
            settle_edge(
                || gw.hub.holds_user(user),
                || registry.remove_user_gateway(user, gateway_id),
                || registry.add_user_gateway(user, gateway_id, row_ttl),
            )
            .await
        }
    };
    match result {
        Ok(()) => true,
        Err(error) => {
            let row_kind = row.kind();
            tracing::warn!(
                %error,
                row_kind,
                "cannot delete or re-write a row; the heartbeat will try again"
            );
            gw.keep_unremoved(row);
            false
        }
    }
}

/// Brings an edge in line with the hub: deleted when no socket of it is `held`, written
/// when one is (also one that arrived while the delete ran: a failed write is an error, so
/// the edge is tried again rather than left missing under a held socket).
async fn settle_edge<D, W>(
    held: impl Fn() -> bool,
    delete: impl FnOnce() -> D,
    write: impl FnOnce() -> W,
) -> hermes_shared::Result<()>
where
    D: Future<Output = hermes_shared::Result<()>>,
    W: Future<Output = hermes_shared::Result<()>>,
{
    if !held() {
        delete().await?;
        if !held() {
            return Ok(());
        }
    }
    write().await
}

/// Tries the deletes that failed again (after a successful heartbeat: the registry
/// answers), until one fails again: the rest wait for the next heartbeat.
pub(crate) async fn retry_removals(gw: &Gateway) {
    let mut rows = std::mem::take(&mut *gw.unremoved.lock()).into_iter();
    while let Some(row) = rows.next() {
        if !remove_row(gw, row).await {
            gw.unremoved.lock().extend(rows);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use async_trait::async_trait;
    use futures_util::FutureExt as _;
    use hermes_shared::auth::Authenticator;
    use hermes_shared::history::{HistoryEntry, HistoryPage, Pos};
    use hermes_shared::metrics::Metrics;
    use hermes_shared::registry::memory::MemoryRegistry;
    use hermes_shared::registry::{GatewayKeys, GatewayRecord, Registry, TokenRecord};
    use hermes_shared::router::{GatewayClient, LocalGateway, Router};
    use hermes_shared::{Error, Result};
    use tokio::sync::Semaphore;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::config::{GatewayConfig, Mode};
    use crate::deliver::Deliveries;
    use crate::hub::SessionHub;
    use crate::ws::Outbox;

    /// The memory registry, except that each `room_gateways` write waits for a permit the
    /// test hands out (a write in flight for as long as the test wants), and fails when
    /// the test says so.
    struct HeldRoomWrites {
        inner: MemoryRegistry,
        room_writes: Semaphore,
        fail_next: AtomicBool,
    }

    impl HeldRoomWrites {
        /// The memory registry with every room write held until released.
        fn new() -> Arc<Self> {
            Arc::new(Self {
                inner: MemoryRegistry::new(),
                room_writes: Semaphore::new(0),
                fail_next: AtomicBool::new(false),
            })
        }

        /// This test's room row: the gateways it names.
        async fn room_row(&self) -> Vec<String> {
            self.inner.room_gateways("room").await.expect("read")
        }

        /// Lets one held room write complete, failing it when `fail`.
        fn release_one(&self, fail: bool) {
            self.fail_next
                .store(fail, std::sync::atomic::Ordering::SeqCst);
            self.room_writes.add_permits(1);
        }
    }

    #[async_trait]
    impl Registry for HeldRoomWrites {
        async fn upsert_gateway(&self, g: &GatewayRecord, ttl: Duration) -> Result<()> {
            self.inner.upsert_gateway(g, ttl).await
        }
        async fn remove_gateway(&self, id: &str) -> Result<()> {
            self.inner.remove_gateway(id).await
        }
        async fn gateway(&self, id: &str) -> Result<Option<GatewayRecord>> {
            self.inner.gateway(id).await
        }
        async fn gateways(&self) -> Result<Vec<GatewayRecord>> {
            self.inner.gateways().await
        }
        async fn put_connection(&self, c: &ConnectionRecord, ttl: Duration) -> Result<()> {
            self.inner.put_connection(c, ttl).await
        }
        async fn remove_connection(&self, id: &str, gw: &str) -> Result<()> {
            self.inner.remove_connection(id, gw).await
        }
        async fn connection(&self, id: &str) -> Result<Option<ConnectionRecord>> {
            self.inner.connection(id).await
        }
        async fn add_room_gateway(&self, room: &str, gw: &str, ttl: Duration) -> Result<()> {
            self.room_writes
                .acquire()
                .await
                .map_err(|_| Error::registry_answer("the test closed the registry"))?
                .forget();
            if self
                .fail_next
                .swap(false, std::sync::atomic::Ordering::SeqCst)
            {
                return Err(Error::registry_answer(
                    "add_room_gateway: the test failed it",
                ));
            }
            self.inner.add_room_gateway(room, gw, ttl).await
        }
        async fn remove_room_gateway(&self, room: &str, gw: &str) -> Result<()> {
            self.inner.remove_room_gateway(room, gw).await
        }
        async fn room_gateways(&self, room: &str) -> Result<Vec<String>> {
            self.inner.room_gateways(room).await
        }
        async fn add_user_gateway(&self, user: &str, gw: &str, ttl: Duration) -> Result<()> {
            self.inner.add_user_gateway(user, gw, ttl).await
        }
        async fn remove_user_gateway(&self, user: &str, gw: &str) -> Result<()> {
            self.inner.remove_user_gateway(user, gw).await
        }
        async fn user_gateways(&self, user: &str) -> Result<Vec<String>> {
            self.inner.user_gateways(user).await
        }
        async fn put_token(&self, t: &TokenRecord) -> Result<()> {
            self.inner.put_token(t).await
        }
        async fn token(&self, user: &str, room: &str) -> Result<Option<TokenRecord>> {
            self.inner.token(user, room).await
        }
        async fn set_fast_verifier(&self, u: &str, r: &str, h: &str, v: &str) -> Result<bool> {
            self.inner.set_fast_verifier(u, r, h, v).await
        }
        async fn delete_token(&self, user: &str, room: &str) -> Result<bool> {
            self.inner.delete_token(user, room).await
        }
        async fn gateway_keys(&self, id: &str) -> Result<GatewayKeys> {
            self.inner.gateway_keys(id).await
        }
        async fn clear_gateway_keys(&self, id: &str) -> Result<()> {
            self.inner.clear_gateway_keys(id).await
        }
        async fn append_history(
            &self,
            entry: &HistoryEntry,
            ttl: Duration,
            keep: usize,
        ) -> Result<()> {
            self.inner.append_history(entry, ttl, keep).await
        }
        async fn read_history(
            &self,
            stream: &str,
            after: Pos,
            limit: usize,
        ) -> Result<HistoryPage> {
            self.inner.read_history(stream, after, limit).await
        }
    }

    /// A standalone gateway's state over `registry`, without servers.
    fn gateway(registry: Arc<dyn Registry>) -> Arc<Gateway> {
        let env = std::collections::HashMap::<&str, &str>::new();
        let config = GatewayConfig::from_strings(&env, Mode::Standalone).expect("config");
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(SessionHub::new(
            metrics.clone(),
            crate::hub::tests::dedup(16),
        ));
        let auth = Arc::new(Authenticator::new(
            config.auth.clone(),
            registry.clone(),
            metrics.clone(),
        ));
        let deliveries = Arc::new(Deliveries::new(hub.clone(), auth.clone(), metrics.clone()));
        let client = GatewayClient::new(
            &config.internal_secret,
            Duration::from_secs(1),
            metrics.clone(),
        )
        .expect("client");
        let local = LocalGateway {
            gateway_id: config.gateway_id.clone(),
            delivery: deliveries.clone(),
        };
        let router = Router::new(registry.clone(), client, Some(local), metrics.clone());
        let record = GatewayRecord {
            gateway_id: config.gateway_id.clone(),
            internal_url: "http://127.0.0.1:9".into(),
            started_at: 0,
        };
        Arc::new(Gateway {
            config,
            metrics,
            registry,
            hub,
            auth,
            deliveries,
            router,
            routes: None,
            record,
            ready: AtomicBool::new(true),
            accepting: AtomicBool::new(true),
            draining: CancellationToken::new(),
            stopping: CancellationToken::new(),
            unremoved: parking_lot::Mutex::new(Vec::new()),
        })
    }

    /// The size of the future `f` returns.
    fn future_size<A, B, C, D, F: std::future::Future>(_: impl FnOnce(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every socket's task is allocated for the socket's life, so what it carries is paid
    /// per socket: not the replay's state (its registry reads, timers and buffers: only
    /// resuming sockets need it, in a box of its own), nor its arguments twice (an `async
    /// fn` keeps them and its locals apart). The task's future was 1,504 bytes with the
    /// replay inline, 712 with the arguments kept twice, 536 without either (debug build).
    #[test]
    fn a_sockets_task_carries_neither_the_replay_nor_its_arguments_twice() {
        let task = future_size(run);
        assert!(task < 640, "the socket task's future is {task} bytes");
    }

    fn socket(gw: &Gateway, id: &str, user: &str) -> Arc<Connection> {
        let (outbox, _body) = Outbox::new(4, None);
        let record = ConnectionRecord {
            connection_id: id.into(),
            room_id: "room".into(),
            user_id: user.into(),
            gateway_id: gw.record.gateway_id.clone(),
            connected_at: 0,
            source_ip: String::new(),
            user_agent: String::new(),
        };
        Connection::new(record, true, outbox, u64::MAX, false)
    }

    /// Two first sockets of a room connecting together: the second is admitted (gets its
    /// 101) only once a `room_gateways` write has completed, also when the first one's
    /// write fails.
    #[tokio::test]
    async fn a_second_socket_of_a_room_is_admitted_only_after_the_room_row_is_written() {
        let registry = HeldRoomWrites::new();
        let gw = gateway(registry.clone());
        let (a, b) = (socket(&gw, "a", "ann"), socket(&gw, "b", "bob"));
        let mut first = Box::pin(admit(&gw, &a));
        let mut second = Box::pin(admit(&gw, &b));
        // Both are under way (the memory registry answers at once: one poll takes each as
        // far as the held room write); the room row is written by neither yet.
        for admission in [&mut first, &mut second] {
            assert!(
                admission.as_mut().now_or_never().is_none(),
                "admitted before the room row was written"
            );
        }
        assert!(registry.room_row().await.is_empty());

        // The first socket's write fails: it is refused; the second is still not admitted.
        registry.release_one(true);
        assert!(first.await.is_err(), "the first socket's write failed");
        assert!(
            second.as_mut().now_or_never().is_none(),
            "admitted on the strength of a failed write"
        );

        // Its own write completes: admitted, and the row is there.
        registry.release_one(false);
        second.await.expect("admitted");
        assert_eq!(
            registry.room_row().await,
            vec![gw.record.gateway_id.clone()]
        );

        // A third socket of the room needs no room write (none is let through any more).
        let c = socket(&gw, "c", "cyd");
        let third = admit(&gw, &c).now_or_never();
        assert!(
            matches!(third, Some(Ok(()))),
            "admitted at once, without a room write"
        );
    }

    /// A room edge whose write fails while a socket of the room is held is kept and
    /// written by the retry after the next heartbeat, never left missing.
    #[tokio::test]
    async fn a_room_edge_that_could_not_be_rewritten_is_written_by_the_retry() {
        let registry = HeldRoomWrites::new();
        let gw = gateway(registry.clone());
        let a = socket(&gw, "a", "ann");
        registry.release_one(false);
        admit(&gw, &a).await.expect("admitted");
        let id = gw.record.gateway_id.clone();
        // The edge is gone (a delete that raced with this socket's arrival), and writing
        // it again fails.
        registry
            .remove_room_gateway("room", &id)
            .await
            .expect("delete");
        registry.release_one(true);
        assert!(!remove_row(&gw, Unremoved::Room("room".into())).await);
        assert!(registry.room_row().await.is_empty());
        assert_eq!(gw.unremoved.lock().len(), 1, "kept for the retry");

        registry.release_one(false);
        retry_removals(&gw).await;
        assert_eq!(
            registry.room_row().await,
            vec![id.clone()],
            "the retry wrote the edge of the held room"
        );
        assert!(gw.unremoved.lock().is_empty());

        // Once the room's last socket is gone, the same row is deleted.
        gw.hub.remove(&a);
        assert!(remove_row(&gw, Unremoved::Room("room".into())).await);
        assert!(registry.room_row().await.is_empty());
    }
}
