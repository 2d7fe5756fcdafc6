//! The `SessionHub`: this gateway's sockets, indexed by connection, room and user.
//!
//! Delivery never blocks: each socket has its own bounded queue (`ws::Outbox`, which its
//! connection writes from); a socket whose queue is full is closed with 1013 (try again
//! later) instead of growing memory or slowing anyone else down. A message is encoded into
//! a WebSocket frame once, and every socket that receives it queues the same bytes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use hermes_shared::history::{CLOCK_ALLOWANCE, Pos};
use hermes_shared::ids::now_millis;
use hermes_shared::metrics::Metrics;
use hermes_shared::registry::{ConnectionRecord, Holdings, refresh};
use hermes_shared::router::LocalDelivery;
use hermes_shared::wire::{
    ConnectionInfo, DeliverAction, DeliverRequest, DeliverResponse, Frame, Identity, Target,
    notification_v1, rfc3339_millis,
};
use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;

use crate::close;
use crate::config::DedupSettings;
use crate::dedup::{Key, Seen, SeenIds};
use crate::ws::{self, Outbox, PushError};

/// One open socket, as the hub sees it.
pub struct Connection {
    pub record: ConnectionRecord,
    /// True for `hermes.v1` subprotocol clients.
    pub modern: bool,
    /// The socket's outgoing frames (the response body the connection writes from).
    pub outbox: Outbox,
    /// Cancelled when the socket must close; the code and reason are in `close_with`.
    kill: CancellationToken,
    close_with: Mutex<Option<(u16, String)>>,
    /// Milliseconds since the epoch of the last frame from the client.
    last_active: AtomicU64,
    /// When the socket's token expires, seconds since the epoch: it is closed then (4001).
    pub token_exp: u64,
    /// A resuming socket's replay (boxed: a socket that is not resuming pays one pointer).
    resume: Mutex<Option<Box<Resume>>>,
    /// What the `$connect` route's answer set (JSON), for the socket's later route events.
    pub route_context: Option<Arc<str>>,
}

/// A resuming socket's state: while its replay is sent, the notifications that arrive live
/// wait here; afterwards, for the de-duplication window, a live delivery of a notification
/// the replay already sent (a retry that reaches this gateway after the replay read it from
/// history) is not sent again.
#[derive(Default)]
struct Resume {
    /// `Some` while the replay is sent.
    held: Option<Vec<Held>>,
    /// Ids the replay sent.
    replayed: HashSet<String>,
    /// Until when `replayed` is consulted.
    until: Option<Instant>,
}

/// A live notification held while its socket's replay is sent.
struct Held {
    id: String,
    pos: Option<Pos>,
    frame: Bytes,
    published_at: Option<u64>,
}

impl Connection {
    /// A connection whose frames go to `outbox`, for a token that expires at `token_exp`
    /// (seconds since the epoch). A `resuming` socket holds live notifications until its
    /// replay is sent.
    pub fn new(
        record: ConnectionRecord,
        modern: bool,
        outbox: Outbox,
        token_exp: u64,
        resuming: bool,
    ) -> Arc<Self> {
        Self::with_route_context(record, modern, outbox, token_exp, resuming, None)
    }

    /// [`Connection::new`] with what the `$connect` route's answer set.
    pub fn with_route_context(
        record: ConnectionRecord,
        modern: bool,
        outbox: Outbox,
        token_exp: u64,
        resuming: bool,
        route_context: Option<Arc<str>>,
    ) -> Arc<Self> {
        let now = record.connected_at;
        Arc::new(Self {
            record,
            modern,
            outbox,
            kill: CancellationToken::new(),
            close_with: Mutex::new(None),
            last_active: AtomicU64::new(now),
            token_exp,
            resume: Mutex::new(resuming.then(|| {
                Box::new(Resume {
                    held: Some(Vec::new()),
                    ..Resume::default()
                })
            })),
            route_context,
        })
    }

    /// Sends the notifications held during the replay, in position order, except those
    /// the replay sent (`replayed` ids); from then on notifications go out as they come,
    /// but for `keep` a notification the replay sent is not sent again.
    pub fn finish_replay(
        &self,
        replayed: HashSet<String>,
        keep: Duration,
    ) -> Result<(), PushError> {
        let mut resume = self.resume.lock();
        let Some(state) = resume.as_mut() else {
            return Ok(());
        };
        let mut frames = state.held.take().unwrap_or_default();
        frames.sort_by_key(|h| h.pos);
        for h in frames {
            if !replayed.contains(&h.id) {
                self.outbox.push(h.frame, h.published_at)?;
            }
        }
        if replayed.is_empty() {
            *resume = None;
        } else {
            state.replayed = replayed;
            state.until = Some(Instant::now() + keep);
        }
        Ok(())
    }

    /// Queues a notification for a `hermes.v1` socket: held while its replay is sent,
    /// queued otherwise. False (and the socket closed with 1013) when there is no room.
    fn push_notification(
        &self,
        frame: &Bytes,
        id: &str,
        pos: Option<Pos>,
        published_at: Option<u64>,
        metrics: &Metrics,
    ) -> bool {
        {
            let mut resume = self.resume.lock();
            if let Some(state) = resume.as_mut() {
                if let Some(held) = state.held.as_mut() {
                    if held.len() < self.outbox.capacity() {
                        held.push(Held {
                            id: id.to_owned(),
                            pos,
                            frame: frame.clone(),
                            published_at,
                        });
                        return true;
                    }
                    drop(resume);
                    self.overflowed(metrics);
                    return false;
                }
                if state.until.is_some_and(|until| Instant::now() < until) {
                    if state.replayed.contains(id) {
                        metrics
                            .messages_dropped
                            .with_label_values(&["duplicate"])
                            .inc();
                        // It has it: the replay sent it.
                        return true;
                    }
                } else {
                    *resume = None;
                }
            }
        }
        self.push(frame.clone(), published_at, metrics)
    }

    pub fn id(&self) -> &str {
        &self.record.connection_id
    }

    /// Asks the socket's task to close with `code`. The first request wins.
    pub fn close(&self, code: u16, reason: &str) {
        {
            let mut slot = self.close_with.lock();
            if slot.is_none() {
                *slot = Some((code, reason.to_owned()));
            }
        }
        self.kill.cancel();
    }

    /// The close requested by the hub, if any.
    pub fn requested_close(&self) -> Option<(u16, String)> {
        self.close_with.lock().clone()
    }

    /// Resolves when the hub asks the socket to close.
    pub fn killed(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.kill.cancelled()
    }

    /// Records client activity.
    pub fn touch(&self, now_ms: u64) {
        self.last_active.store(now_ms, Ordering::Relaxed);
    }

    /// Queues a frame for this socket alone (an error frame, say).
    pub fn send_frame(&self, frame: &Frame, metrics: &Metrics) -> bool {
        self.send_text(frame.as_str(), metrics)
    }

    /// Queues a text frame for this socket alone (a route's reply).
    pub fn send_text(&self, text: &str, metrics: &Metrics) -> bool {
        self.push(ws::text_frame(text), None, metrics)
    }

    /// The socket's queue is full: it is closed with 1013 (try again later).
    fn overflowed(&self, metrics: &Metrics) {
        if !self.kill.is_cancelled() {
            metrics.send_queue_overflows.inc();
            tracing::info!(
                connection_id = self.id(),
                "send queue full; closing a slow client"
            );
        }
        metrics
            .messages_dropped
            .with_label_values(&["queue_full"])
            .inc();
        self.close(close::TRY_AGAIN_LATER, "client too slow: send queue full");
    }

    /// Queues an encoded frame without waiting. Returns false (and closes the socket with
    /// 1013) when the queue is full.
    fn push(&self, frame: Bytes, published_at: Option<u64>, metrics: &Metrics) -> bool {
        match self.outbox.push(frame, published_at) {
            Ok(()) => true,
            Err(PushError::Full) => {
                self.overflowed(metrics);
                false
            }
            Err(PushError::Closed) => {
                metrics
                    .messages_dropped
                    .with_label_values(&["closed"])
                    .inc();
                false
            }
        }
    }
}

#[derive(Default)]
struct Index {
    connections: HashMap<String, Arc<Connection>>,
    rooms: HashMap<String, Members>,
    users: HashMap<String, Members>,
}

/// This gateway's sockets of one room (or one user), and whether the registry row that
/// says so (`room_gateways` / `user_gateways`) is known to be written.
#[derive(Default)]
struct Members {
    sockets: HashMap<String, Arc<Connection>>,
    /// Set once a member's write of the row completed. Until then every socket that joins
    /// writes the row itself before its 101 (an idempotent upsert), rather than trusting a
    /// write still in flight, which may yet fail. A flag, not a shared future to wait on:
    /// no allocation per room or user, and a socket never waits for another's write.
    row_written: bool,
}

/// Whether a connection was the first (on insert) or last (on remove) of its room/user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    pub room_edge: bool,
    pub user_edge: bool,
}

/// Which registry rows a socket joining the hub must write before its 101: those of its
/// room and user that no member has finished writing yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unwritten {
    pub room_row: bool,
    pub user_row: bool,
}

/// The gateway's sockets.
pub struct SessionHub {
    index: RwLock<Index>,
    /// The number of open sockets, for waiters (the drain).
    count: tokio::sync::watch::Sender<usize>,
    dedup: Mutex<SeenIds>,
    metrics: Arc<Metrics>,
}

impl SessionHub {
    pub fn new(metrics: Arc<Metrics>, dedup: DedupSettings) -> Self {
        Self {
            index: RwLock::new(Index::default()),
            count: tokio::sync::watch::Sender::new(0),
            dedup: Mutex::new(SeenIds::new(dedup.window, dedup.max)),
            metrics,
        }
    }

    /// Adds a socket. Returns the rows of its room and user that are not known to be
    /// written: the caller writes them, then reports each with [`Self::room_row_written`] /
    /// [`Self::user_row_written`].
    pub fn insert(&self, conn: Arc<Connection>) -> Unwritten {
        let mut index = self.index.write();
        let id = conn.id().to_owned();
        let room = index.rooms.entry(conn.record.room_id.clone()).or_default();
        let room_row = !room.row_written;
        room.sockets.insert(id.clone(), conn.clone());
        let user = index.users.entry(conn.record.user_id.clone()).or_default();
        let user_row = !user.row_written;
        user.sockets.insert(id.clone(), conn.clone());
        index.connections.insert(id, conn);
        self.metrics
            .connections_open
            .set(index.connections.len() as i64);
        self.count.send_replace(index.connections.len());
        Unwritten { room_row, user_row }
    }

    /// A member's write of the room's `room_gateways` row completed: sockets that join from
    /// now on need not write it. (The caller is still a member, so this is the entry its
    /// write was for: an entry goes only with its last member.)
    pub fn room_row_written(&self, room_id: &str) {
        if let Some(members) = self.index.write().rooms.get_mut(room_id) {
            members.row_written = true;
        }
    }

    /// As [`Self::room_row_written`], for the user's `user_gateways` row.
    pub fn user_row_written(&self, user_id: &str) {
        if let Some(members) = self.index.write().users.get_mut(user_id) {
            members.row_written = true;
        }
    }

    /// Removes a socket. Idempotent: a second call reports no edge.
    pub fn remove(&self, conn: &Connection) -> Membership {
        let mut index = self.index.write();
        if index.connections.remove(conn.id()).is_none() {
            return Membership {
                room_edge: false,
                user_edge: false,
            };
        }
        let room_edge = remove_from(&mut index.rooms, &conn.record.room_id, conn.id());
        let user_edge = remove_from(&mut index.users, &conn.record.user_id, conn.id());
        self.metrics
            .connections_open
            .set(index.connections.len() as i64);
        self.count.send_replace(index.connections.len());
        Membership {
            room_edge,
            user_edge,
        }
    }

    /// True when some local socket is in the room.
    pub fn holds_room(&self, room_id: &str) -> bool {
        self.index.read().rooms.contains_key(room_id)
    }

    /// True when some local socket belongs to the user.
    pub fn holds_user(&self, user_id: &str) -> bool {
        self.index.read().users.contains_key(user_id)
    }

    /// Number of open sockets.
    pub fn len(&self) -> usize {
        self.index.read().connections.len()
    }

    /// True when no socket is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves once no socket is open.
    pub async fn wait_empty(&self) {
        let mut rx = self.count.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Every open socket (for draining).
    pub fn all(&self) -> Vec<Arc<Connection>> {
        self.index.read().connections.values().cloned().collect()
    }

    /// Every row this gateway holds: what a heartbeat writes again after its gateway row
    /// may have lapsed.
    pub fn holdings(&self) -> Holdings {
        self.holdings_where(|_| true)
    }

    /// The rows whose turn to be written again comes in `(after_ms, upto_ms]`
    /// (milliseconds since the epoch), with rows written again every `period`: see
    /// [`hermes_shared::registry::refresh`].
    pub fn holdings_due(&self, after_ms: u64, upto_ms: u64, period: Duration) -> Holdings {
        let period_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
        self.holdings_where(|key| refresh::due(key, after_ms, upto_ms, period_ms))
    }

    fn holdings_where(&self, keep: impl Fn(&str) -> bool) -> Holdings {
        let index = self.index.read();
        Holdings {
            rooms: index.rooms.keys().filter(|k| keep(k)).cloned().collect(),
            users: index.users.keys().filter(|k| keep(k)).cloned().collect(),
            connections: index
                .connections
                .iter()
                .filter(|(id, _)| keep(id))
                .map(|(_, c)| c.record.clone())
                .collect(),
        }
    }

    fn for_each_target(
        &self,
        target: &Target,
        exclude: Option<&str>,
        mut f: impl FnMut(&Arc<Connection>),
    ) -> Vec<String> {
        let index = self.index.read();
        let mut gone = Vec::new();
        let excluded = |c: &Connection| exclude.is_some_and(|e| e == c.id());
        match target {
            Target::Room { room_id } => {
                if let Some(members) = index.rooms.get(room_id) {
                    members
                        .sockets
                        .values()
                        .filter(|c| !excluded(c))
                        .for_each(&mut f);
                }
            }
            Target::User { user_id, room_id } => {
                if let Some(members) = index.users.get(user_id) {
                    members
                        .sockets
                        .values()
                        .filter(|c| !excluded(c))
                        .filter(|c| room_id.as_ref().is_none_or(|r| *r == c.record.room_id))
                        .for_each(&mut f);
                }
            }
            Target::Connections(ids) => {
                for id in ids {
                    match index.connections.get(id) {
                        Some(c) if !excluded(c) => f(c),
                        Some(_) => {}
                        None => gone.push(id.clone()),
                    }
                }
            }
        }
        gone
    }
}

impl SessionHub {
    /// Closes the targeted sockets with `code`; counts them and lists ids not held here.
    fn close_targets(
        &self,
        target: &Target,
        exclude: Option<&str>,
        code: u16,
        reason: &str,
    ) -> DeliverResponse {
        let mut delivered = 0usize;
        let gone = self.for_each_target(target, exclude, |c| {
            c.close(code, reason);
            delivered += 1;
        });
        DeliverResponse {
            delivered,
            gone,
            duplicate: false,
        }
    }
}

impl SessionHub {
    /// Remembers that message `id` is being delivered to `target` here, unless it was
    /// within the de-duplication window ([`Seen::Duplicate`]: a redelivery); the key
    /// forgets it again.
    fn remember(&self, target: &Target, id: &str) -> (Key, Seen) {
        let mut seen = self.dedup.lock();
        let key = seen.key(target, id);
        let evicted = seen.evicted;
        let found = seen.check_and_insert(key);
        if seen.evicted > evicted {
            self.metrics.dedup_evictions.inc_by(seen.evicted - evicted);
        }
        self.metrics.dedup_ids.set(seen.len() as i64);
        (key, found)
    }
}

/// True when a delivery that expires at `expires_at` (ms since the epoch) arrives too late,
/// clock allowance included.
fn expired(expires_at: u64) -> bool {
    let allowance = u64::try_from(CLOCK_ALLOWANCE.as_millis()).unwrap_or(u64::MAX);
    now_millis() > expires_at.saturating_add(allowance)
}

fn remove_from(map: &mut HashMap<String, Members>, key: &str, id: &str) -> bool {
    match map.get_mut(key) {
        Some(members) => {
            members.sockets.remove(id);
            if members.sockets.is_empty() {
                map.remove(key);
                true
            } else {
                false
            }
        }
        None => false,
    }
}

impl LocalDelivery for SessionHub {
    fn deliver(&self, request: &DeliverRequest) -> DeliverResponse {
        let exclude = request.exclude_connection_id.as_deref();
        match &request.action {
            DeliverAction::Send { frame, raw } => {
                if request.expires_at.is_some_and(expired) {
                    // The router counted it failed; its retry is recorded anew.
                    self.metrics
                        .messages_dropped
                        .with_label_values(&["expired"])
                        .inc();
                    return DeliverResponse::default();
                }
                let remembered = request
                    .id
                    .as_deref()
                    .map(|id| self.remember(&request.target, id));
                if let Some((_, Seen::Duplicate)) = remembered {
                    self.metrics
                        .messages_dropped
                        .with_label_values(&["duplicate"])
                        .inc();
                    return DeliverResponse {
                        delivered: 0,
                        gone: Vec::new(),
                        duplicate: true,
                    };
                }
                // Encoded once: every socket queues the same bytes; `hermes.v1` sockets
                // get the notification with its id and position (encoded once too, when
                // one of them is a target).
                let plain = ws::text_frame(frame.as_str());
                let notification = match (&request.id, raw) {
                    (Some(id), false) => Some(id.as_str()),
                    _ => None,
                };
                let pos = request.pos.as_deref();
                let mut modern: Option<Option<Bytes>> = None;
                let mut delivered = 0usize;
                let gone = self.for_each_target(&request.target, exclude, |c| {
                    let pushed = match notification {
                        Some(id) if c.modern => {
                            let v1 = modern.get_or_insert_with(|| {
                                notification_v1(frame.as_str(), id, pos).map(|t| ws::text_frame(&t))
                            });
                            match v1 {
                                Some(v1) => c.push_notification(
                                    v1,
                                    id,
                                    pos.and_then(Pos::parse),
                                    request.published_at,
                                    &self.metrics,
                                ),
                                None => c.push(plain.clone(), request.published_at, &self.metrics),
                            }
                        }
                        _ => c.push(plain.clone(), request.published_at, &self.metrics),
                    };
                    if pushed {
                        delivered += 1;
                    }
                });
                self.metrics.messages_delivered.inc_by(delivered as u64);
                if delivered == 0
                    && let Some((key, Seen::New)) = remembered
                {
                    // Nothing here got it: a retry may still reach sockets that arrive
                    // meanwhile (a router that sends to every gateway reaches gateways
                    // without targets on every attempt).
                    self.dedup.lock().forget(key);
                }
                DeliverResponse {
                    delivered,
                    gone,
                    duplicate: false,
                }
            }
            DeliverAction::Close { code, reason } => {
                self.close_targets(&request.target, exclude, *code, reason)
            }
            // Revocation needs the authenticator too: see `deliver::Deliveries`.
            DeliverAction::Revoke { user_id, room_id } => {
                let target = Target::User {
                    user_id: user_id.clone(),
                    room_id: Some(room_id.clone()),
                };
                self.close_targets(&target, None, close::TOKEN_REVOKED, "token revoked")
            }
            // Only the authenticator's cache: see `deliver::Deliveries`.
            DeliverAction::Forget { .. } => DeliverResponse::default(),
        }
    }

    fn connection_info(&self, connection_id: &str) -> Option<ConnectionInfo> {
        let index = self.index.read();
        let c = index.connections.get(connection_id)?;
        Some(ConnectionInfo {
            connected_at: rfc3339_millis(c.record.connected_at),
            identity: Identity {
                source_ip: c.record.source_ip.clone(),
                user_agent: c.record.user_agent.clone(),
            },
            last_active_at: rfc3339_millis(c.last_active.load(Ordering::Relaxed)),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ws::OutboxBody;

    pub(crate) fn dedup(max: usize) -> DedupSettings {
        DedupSettings {
            window: Duration::from_secs(300),
            max,
        }
    }

    fn conn(id: &str, room: &str, user: &str, queue: usize) -> (Arc<Connection>, OutboxBody) {
        let (outbox, body) = Outbox::new(queue, None);
        let conn = Connection::new(
            ConnectionRecord {
                connection_id: id.into(),
                room_id: room.into(),
                user_id: user.into(),
                gateway_id: "g".into(),
                connected_at: 0,
                source_ip: String::new(),
                user_agent: String::new(),
            },
            true,
            outbox,
            u64::MAX,
            false,
        );
        (conn, body)
    }

    fn send(target: Target, id: Option<&str>, exclude: Option<&str>) -> DeliverRequest {
        DeliverRequest {
            id: id.map(Into::into),
            target,
            exclude_connection_id: exclude.map(Into::into),
            published_at: None,
            action: DeliverAction::Send {
                raw: false,
                frame: Frame::from_text("{}"),
            },
            pos: None,
            expires_at: None,
        }
    }

    /// Two first sockets of a room arriving together both write the room row (the first
    /// one's write may still be in flight, or fail); once a write completed, sockets that
    /// join need not; a room that emptied starts over.
    #[test]
    fn every_socket_writes_the_room_and_user_rows_until_one_write_completed() {
        let hub = SessionHub::new(Arc::new(Metrics::new()), dedup(16));
        let (a, _ra) = conn("a", "r", "u", 4);
        let (b, _rb) = conn("b", "r", "u", 4);
        let (c, _rc) = conn("c", "r", "v", 4);
        let both = Unwritten {
            room_row: true,
            user_row: true,
        };
        assert_eq!(hub.insert(a.clone()), both);
        // a's writes are in flight: b must not get its 101 on their strength.
        assert_eq!(hub.insert(b.clone()), both);
        hub.room_row_written("r");
        assert_eq!(
            hub.insert(c.clone()),
            Unwritten {
                room_row: false,
                user_row: true
            }
        );
        hub.user_row_written("u");
        for x in [&a, &b, &c] {
            hub.remove(x);
        }
        // The room emptied (its row is removed): its next first socket writes it again.
        assert_eq!(hub.insert(a.clone()), both);
        // A write reported for a room or user this gateway no longer holds is ignored.
        hub.remove(&a);
        hub.room_row_written("r");
        hub.user_row_written("u");
        assert_eq!(hub.insert(a), both);
    }

    #[test]
    fn last_members_are_reported() {
        let hub = SessionHub::new(Arc::new(Metrics::new()), dedup(16));
        let (a, _ra) = conn("a", "r", "u", 4);
        let (b, _rb) = conn("b", "r", "v", 4);
        hub.insert(a.clone());
        hub.insert(b.clone());
        assert_eq!(
            hub.remove(&a),
            Membership {
                room_edge: false,
                user_edge: true
            }
        );
        assert_eq!(
            hub.remove(&a),
            Membership {
                room_edge: false,
                user_edge: false
            }
        );
        assert_eq!(
            hub.remove(&b),
            Membership {
                room_edge: true,
                user_edge: true
            }
        );
        assert!(hub.is_empty());
    }

    #[test]
    fn room_delivery_skips_the_excluded_connection_and_user_delivery_filters_by_room() {
        let hub = SessionHub::new(Arc::new(Metrics::new()), dedup(16));
        let (a, mut ra) = conn("a", "r", "u", 4);
        let (b, mut rb) = conn("b", "r", "v", 4);
        let (c, mut rc) = conn("c", "other", "u", 4);
        for x in [&a, &b, &c] {
            hub.insert(x.clone());
        }
        let r = hub.deliver(&send(
            Target::Room {
                room_id: "r".into(),
            },
            None,
            Some("a"),
        ));
        assert_eq!(r.delivered, 1);
        assert!(ra.try_pop().is_none());
        assert!(rb.try_pop().is_some());
        let r = hub.deliver(&send(
            Target::User {
                user_id: "u".into(),
                room_id: Some("other".into()),
            },
            None,
            None,
        ));
        assert_eq!(r.delivered, 1);
        assert!(rc.try_pop().is_some());
        assert!(ra.try_pop().is_none());
        let r = hub.deliver(&send(
            Target::Connections(vec!["a".into(), "zz".into()]),
            None,
            None,
        ));
        assert_eq!((r.delivered, r.gone), (1, vec!["zz".to_owned()]));
    }

    #[test]
    fn a_message_id_that_reached_no_socket_is_not_remembered() {
        let hub = SessionHub::new(Arc::new(Metrics::new()), dedup(8));
        let room = || Target::Room {
            room_id: "r".into(),
        };
        let first = hub.deliver(&send(room(), Some("m1"), None));
        assert_eq!((first.delivered, first.duplicate), (0, false));
        // A socket of the room arrives before the retry: the retry reaches it, once.
        let (a, mut ra) = conn("a", "r", "u", 8);
        hub.insert(a);
        let retry = hub.deliver(&send(room(), Some("m1"), None));
        assert_eq!((retry.delivered, retry.duplicate), (1, false));
        assert!(hub.deliver(&send(room(), Some("m1"), None)).duplicate);
        assert!(ra.try_pop().is_some());
        assert!(ra.try_pop().is_none());
    }

    fn notification(id: &str, pos: Option<Pos>) -> DeliverRequest {
        let mut r = send(
            Target::Room {
                room_id: "r".into(),
            },
            Some(id),
            None,
        );
        r.action = DeliverAction::Send {
            frame: Frame::from_text(format!(r#"{{"user_id":"u","data":"{id}"}}"#)),
            raw: false,
        };
        r.pos = pos.map(Pos::encode);
        r
    }

    fn v1_text(id: &str, pos: Option<Pos>) -> Bytes {
        let frame = format!(r#"{{"user_id":"u","data":"{id}"}}"#);
        let text = notification_v1(&frame, id, pos.map(Pos::encode).as_deref()).expect("object");
        ws::text_frame(&text)
    }

    #[test]
    fn hermes_v1_sockets_get_id_and_pos_original_ones_the_original_frame_and_raw_stays_raw() {
        let hub = SessionHub::new(Arc::new(Metrics::new()), dedup(16));
        let (modern, mut rm) = conn("m", "r", "u", 4);
        let (outbox, mut ro) = Outbox::new(4, None);
        let mut record = modern.record.clone();
        record.connection_id = "o".into();
        let original = Connection::new(record, false, outbox, u64::MAX, false);
        hub.insert(modern.clone());
        hub.insert(original);
        let pos = Pos {
            micros: 7,
            writer: 9,
        };
        assert_eq!(hub.deliver(&notification("n1", Some(pos))).delivered, 2);
        assert_eq!(rm.try_pop(), Some(v1_text("n1", Some(pos))));
        assert_eq!(
            ro.try_pop(),
            Some(ws::text_frame(r#"{"user_id":"u","data":"n1"}"#))
        );
        // API Gateway's POST @connections: the body as it is, for everyone.
        let mut raw = notification("n2", None);
        raw.action = DeliverAction::Send {
            frame: Frame::from_text("plain text"),
            raw: true,
        };
        hub.deliver(&raw);
        assert_eq!(rm.try_pop(), Some(ws::text_frame("plain text")));
        assert_eq!(ro.try_pop(), Some(ws::text_frame("plain text")));
    }

    #[test]
    fn a_delivery_that_arrives_after_it_expired_is_dropped_and_not_remembered() {
        let metrics = Arc::new(Metrics::new());
        let hub = SessionHub::new(metrics.clone(), dedup(16));
        let (a, mut ra) = conn("a", "r", "u", 4);
        hub.insert(a);
        let mut late = notification("m", None);
        late.expires_at = Some(now_millis() - 5_000);
        assert_eq!(hub.deliver(&late), DeliverResponse::default());
        assert!(ra.try_pop().is_none());
        assert_eq!(
            metrics
                .messages_dropped
                .with_label_values(&["expired"])
                .get(),
            1
        );
        // Within the clock allowance it is on time; the retry of the expired one is new.
        late.expires_at = Some(now_millis() - 200);
        assert_eq!(hub.deliver(&late).delivered, 1);
    }

    #[test]
    fn notifications_held_during_a_replay_follow_it_in_position_order_each_once() {
        let hub = SessionHub::new(Arc::new(Metrics::new()), dedup(16));
        let (outbox, mut body) = Outbox::new(8, None);
        let (plain, _keep) = conn("x", "r", "u", 1);
        let resuming = Connection::new(plain.record.clone(), true, outbox, u64::MAX, true);
        hub.insert(resuming.clone());
        let at = |micros| Some(Pos { micros, writer: 1 });
        // Live while the replay is sent: held, out of position order, one also replayed.
        for (id, pos) in [("m3", at(30)), ("m1", at(10)), ("m2", at(20))] {
            assert_eq!(hub.deliver(&notification(id, pos)).delivered, 1);
        }
        assert!(body.try_pop().is_none(), "nothing before the replay");
        let replayed = HashSet::from(["m1".to_owned()]);
        resuming
            .finish_replay(replayed, Duration::from_secs(60))
            .expect("room");
        assert_eq!(body.try_pop(), Some(v1_text("m2", at(20))));
        assert_eq!(body.try_pop(), Some(v1_text("m3", at(30))));
        assert!(body.try_pop().is_none(), "m1 came with the replay");
        // From now on, straight to the socket; a retry of what the replay sent is not
        // sent again to this socket.
        hub.deliver(&notification("m4", at(40)));
        assert_eq!(body.try_pop(), Some(v1_text("m4", at(40))));
        let mut retry = notification("m1", at(50));
        retry.target = Target::User {
            user_id: "u".into(),
            room_id: Some("r".into()),
        };
        assert_eq!(hub.deliver(&retry).delivered, 1);
        assert!(body.try_pop().is_none(), "the replay gave it m1 already");
    }

    #[test]
    fn a_resuming_socket_that_holds_more_than_its_queue_is_closed_with_1013() {
        let hub = SessionHub::new(Arc::new(Metrics::new()), dedup(16));
        let (outbox, _body) = Outbox::new(2, None);
        let (plain, _keep) = conn("x", "r", "u", 1);
        let resuming = Connection::new(plain.record.clone(), true, outbox, u64::MAX, true);
        hub.insert(resuming.clone());
        for n in 0..3 {
            hub.deliver(&notification(&format!("m{n}"), None));
        }
        assert_eq!(
            resuming.requested_close().map(|(code, _)| code),
            Some(close::TRY_AGAIN_LATER)
        );
    }

    #[test]
    fn a_redelivered_message_id_is_sent_once() {
        let hub = SessionHub::new(Arc::new(Metrics::new()), dedup(2));
        let (a, mut ra) = conn("a", "r", "u", 8);
        hub.insert(a);
        let room = || Target::Room {
            room_id: "r".into(),
        };
        assert!(!hub.deliver(&send(room(), Some("m1"), None)).duplicate);
        assert!(hub.deliver(&send(room(), Some("m1"), None)).duplicate);
        // The window holds 2 ids: m1 falls out after two others.
        hub.deliver(&send(room(), Some("m2"), None));
        hub.deliver(&send(room(), Some("m3"), None));
        assert!(!hub.deliver(&send(room(), Some("m1"), None)).duplicate);
        let mut n = 0;
        while ra.try_pop().is_some() {
            n += 1;
        }
        assert_eq!(n, 4);
    }

    #[test]
    fn a_full_queue_closes_only_that_socket_with_1013() {
        let metrics = Arc::new(Metrics::new());
        let hub = SessionHub::new(metrics.clone(), dedup(0));
        let (slow, _keep_slow_queue) = conn("slow", "r", "u", 1);
        let (fast, mut rf) = conn("fast", "r", "v", 8);
        hub.insert(slow.clone());
        hub.insert(fast.clone());
        for _ in 0..3 {
            hub.deliver(&send(
                Target::Room {
                    room_id: "r".into(),
                },
                None,
                None,
            ));
            assert!(rf.try_pop().is_some());
        }
        assert_eq!(
            slow.requested_close().map(|c| c.0),
            Some(close::TRY_AGAIN_LATER)
        );
        assert_eq!(fast.requested_close(), None);
        assert_eq!(metrics.send_queue_overflows.get(), 1);
    }
}
