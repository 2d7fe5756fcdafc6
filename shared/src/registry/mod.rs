//! The connection registry: who holds which connection, which gateways hold a room or a
//! user, which gateways are alive, and the second-layer token hashes.
//!
//! The trait is shaped around partition lookups (room → gateways, user → gateways,
//! connection → gateway, (user, room) → token, gateway → its keys), never around scans, so
//! that the ScyllaDB implementation answers each call with one partition read.
//!
//! Liveness is per gateway, not per row: a gateway's heartbeat row (`gateways`, a short
//! TTL rewritten every [`heartbeat_interval`]) is what says whether the rows naming it are
//! real, and routers treat every row of a gateway without one as dead. The rows themselves
//! (connections, room and user edges) are written on connect and deleted on disconnect,
//! with a long TTL (`HERMES_REGISTRY_ROW_TTL_SECONDS`) as a safety net that the gateway
//! renews lazily, each row at its own time ([`refresh`]). The per-gateway index
//! ([`Registry::gateway_keys`]), written with the rows, lets the Kubernetes reaper, or the
//! gateway itself when it starts again under the same id, delete a dead gateway's rows
//! ([`Registry::reap_gateway`]).

pub mod config;
/// The behaviour every [`Registry`] must have (used by each implementation's tests and the
/// e2e tests, through the `test-support` feature).
#[cfg(any(test, feature = "test-support"))]
pub mod contract;
pub mod instrumented;
pub mod memory;
pub mod refresh;
pub mod remote;
pub mod scylla;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, StreamExt as _, TryStreamExt as _};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::history::{HistoryEntry, HistoryPage, Pos};
pub use config::RegistryKind;

/// Opens the registry a configuration names, timing every call in `metrics`.
/// `internal_secret` and `timeout` are used by the remote registry.
pub async fn connect(
    kind: &RegistryKind,
    internal_secret: &str,
    timeout: Duration,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<Arc<dyn Registry>> {
    let inner: Arc<dyn Registry> = match kind {
        RegistryKind::Memory => Arc::new(memory::MemoryRegistry::new()),
        RegistryKind::Remote { url } => {
            Arc::new(remote::RemoteRegistry::new(url, internal_secret, timeout)?)
        }
        RegistryKind::Scylla(config) => Arc::new(scylla::ScyllaRegistry::connect(config).await?),
    };
    Ok(Arc::new(instrumented::Instrumented::new(inner, metrics)))
}

/// A live gateway and where its internal API is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayRecord {
    pub gateway_id: String,
    /// Base URL of its internal listener, e.g. `http://10.0.0.5:8081`.
    pub internal_url: String,
    /// Milliseconds since the epoch.
    pub started_at: u64,
}

/// One WebSocket connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionRecord {
    pub connection_id: String,
    pub room_id: String,
    pub user_id: String,
    pub gateway_id: String,
    /// Milliseconds since the epoch.
    pub connected_at: u64,
    pub source_ip: String,
    pub user_agent: String,
}

/// The stored second-layer token of (user, room).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub user_id: String,
    pub room_id: String,
    /// `bcrypt(token)`, `$2a$`/`$2b$`/`$2y$`.
    pub token_hash: String,
    /// HMAC-SHA-256 of the token under the server-side verifier key, once verified.
    pub fast_verifier: Option<String>,
    /// Milliseconds since the epoch.
    pub created_at: u64,
}

/// The keys a gateway's rows are stored under (from the per-gateway index), for the reaper.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayKeys {
    pub rooms: Vec<String>,
    pub users: Vec<String>,
    pub connections: Vec<String>,
}

/// What `reap_gateway` deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaped {
    pub gateway_row: bool,
    pub rooms: usize,
    pub users: usize,
    pub connections: usize,
    /// The connection rows deleted (their sockets are gone with the gateway): the reaper
    /// sends their `$disconnect`.
    #[serde(default)]
    pub gone: Vec<ConnectionRecord>,
}

/// What one check-then-delete of [`Registry::reap_gateway`] found.
enum Found {
    Room(bool),
    User(bool),
    Connection(Option<ConnectionRecord>),
}

/// Heartbeats per TTL: a gateway writes its `gateways` row every [`heartbeat_interval`], a
/// third of the TTL the row is written with.
///
/// A router takes a gateway whose `gateways` row is missing for dead and deletes the rows
/// that point at it, so this is the liveness rule: **a gateway is dead once it has missed
/// two heartbeats in a row**. The row written by the last heartbeat it made lives
/// `HEARTBEATS_PER_TTL` intervals: two missed ones, and one more as the margin for the
/// write's latency, the clocks and a scheduler late to fire the tick.
pub const HEARTBEATS_PER_TTL: u32 = 3;

/// How often a gateway whose rows are written with `ttl` refreshes them
/// ([`HEARTBEATS_PER_TTL`] times per TTL).
pub fn heartbeat_interval(ttl: Duration) -> Duration {
    ttl / HEARTBEATS_PER_TTL
}

/// How many row checks and deletes one [`Registry::reap_gateway`] keeps in flight: a dead
/// gateway may have held tens of thousands of connections, each a read and a delete.
pub const REAP_CONCURRENCY: usize = 64;

/// Rows a gateway writes again: on a heartbeat, those whose turn it is ([`refresh`]), or
/// all of them after its heartbeat row may have lapsed.
#[derive(Debug, Clone, Default)]
pub struct Holdings {
    pub rooms: Vec<String>,
    pub users: Vec<String>,
    pub connections: Vec<ConnectionRecord>,
}

/// The registry operations. Every lookup is one partition read.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Writes (or refreshes) a gateway row with a TTL.
    async fn upsert_gateway(&self, gateway: &GatewayRecord, ttl: Duration) -> Result<()>;
    /// Deletes a gateway row.
    async fn remove_gateway(&self, gateway_id: &str) -> Result<()>;
    /// The live gateway row, if its TTL has not run out.
    async fn gateway(&self, gateway_id: &str) -> Result<Option<GatewayRecord>>;
    /// Every live gateway (a small table: one row per replica).
    async fn gateways(&self) -> Result<Vec<GatewayRecord>>;

    /// Writes (or refreshes) a connection row with a TTL, and its entry in the index of the
    /// gateway it names.
    async fn put_connection(&self, connection: &ConnectionRecord, ttl: Duration) -> Result<()>;
    /// Deletes a connection row, and its entry in the index of `gateway_id` (the gateway
    /// the row names).
    async fn remove_connection(&self, connection_id: &str, gateway_id: &str) -> Result<()>;
    /// The connection row.
    async fn connection(&self, connection_id: &str) -> Result<Option<ConnectionRecord>>;

    /// Records that a gateway holds sockets of a room.
    async fn add_room_gateway(&self, room_id: &str, gateway_id: &str, ttl: Duration) -> Result<()>;
    /// Records that a gateway holds no more sockets of a room.
    async fn remove_room_gateway(&self, room_id: &str, gateway_id: &str) -> Result<()>;
    /// Gateways holding sockets of a room.
    async fn room_gateways(&self, room_id: &str) -> Result<Vec<String>>;

    /// Records that a gateway holds sockets of a user.
    async fn add_user_gateway(&self, user_id: &str, gateway_id: &str, ttl: Duration) -> Result<()>;
    /// Records that a gateway holds no more sockets of a user.
    async fn remove_user_gateway(&self, user_id: &str, gateway_id: &str) -> Result<()>;
    /// Gateways holding sockets of a user.
    async fn user_gateways(&self, user_id: &str) -> Result<Vec<String>>;

    /// Stores (replaces) the token row of (user, room).
    async fn put_token(&self, token: &TokenRecord) -> Result<()>;
    /// The token row of (user, room).
    async fn token(&self, user_id: &str, room_id: &str) -> Result<Option<TokenRecord>>;
    /// Stores the fast verifier if the row still holds `token_hash` (a replaced token
    /// must not inherit the old one's verifier). Returns whether it was stored.
    async fn set_fast_verifier(
        &self,
        user_id: &str,
        room_id: &str,
        token_hash: &str,
        verifier: &str,
    ) -> Result<bool>;
    /// Deletes the token row. Returns whether one existed.
    async fn delete_token(&self, user_id: &str, room_id: &str) -> Result<bool>;

    /// The rooms, users and connections a gateway holds rows for, from the per-gateway
    /// index, which every write and delete of a row keeps (the memory registry reads its
    /// rows instead). A key may outlive its row (a delete that reached the row but not the
    /// index entry): callers check each row before acting on it.
    async fn gateway_keys(&self, gateway_id: &str) -> Result<GatewayKeys>;
    /// Deletes a gateway's whole index (after its rows are gone).
    async fn clear_gateway_keys(&self, gateway_id: &str) -> Result<()>;

    /// Records a notification in its stream's history for `ttl`. `keep` bounds the
    /// entries per stream where the store bounds them by number (memory); the Scylla
    /// store keeps them by time (its reads stop at the limit asked).
    async fn append_history(&self, entry: &HistoryEntry, ttl: Duration, keep: usize) -> Result<()>;
    /// The entries of `stream` after position `after`, in position order, at most `limit`
    /// ([`HistoryPage::complete`] is false when there were more, or when some were dropped).
    async fn read_history(&self, stream: &str, after: Pos, limit: usize) -> Result<HistoryPage>;

    /// Deletes the rows of a (dead) gateway that its index names: its gateway row, its
    /// `room_gateways` and `user_gateways` rows, and the connection rows that still name it
    /// (a connection id put again by another gateway is left alone), then its index. Counts
    /// the rows it found. Idempotent: a second call finds nothing. The index is cleared
    /// last, so a call that fails part-way can simply be repeated.
    async fn reap_gateway(&self, gateway_id: &str) -> Result<Reaped> {
        let keys = self.gateway_keys(gateway_id).await?;
        // The gateway row first: it is what says "alive".
        let gateway_row = self.gateway(gateway_id).await?.is_some();
        if gateway_row {
            self.remove_gateway(gateway_id).await?;
        }
        let (rooms, users) = (&keys.rooms, &keys.users);
        let connections = &keys.connections;
        // Items are indexes and the futures are boxed: a closure taking references would
        // trip the compiler's higher-ranked lifetime check of `async_trait`'s `Send` future.
        // Each check-then-delete answers (room, user, connection) found: 0 or 1 each.
        let reap_one = move |i: usize| -> BoxFuture<'_, Result<Found>> {
            if let Some(room) = rooms.get(i) {
                Box::pin(async move {
                    let found = self
                        .room_gateways(room)
                        .await?
                        .iter()
                        .any(|g| g == gateway_id);
                    if found {
                        self.remove_room_gateway(room, gateway_id).await?;
                    }
                    Ok(Found::Room(found))
                })
            } else if let Some(user) = users.get(i - rooms.len()) {
                Box::pin(async move {
                    let found = self
                        .user_gateways(user)
                        .await?
                        .iter()
                        .any(|g| g == gateway_id);
                    if found {
                        self.remove_user_gateway(user, gateway_id).await?;
                    }
                    Ok(Found::User(found))
                })
            } else if let Some(id) = connections.get(i - rooms.len() - users.len()) {
                Box::pin(async move {
                    let row = self
                        .connection(id)
                        .await?
                        .filter(|row| row.gateway_id == gateway_id);
                    if row.is_some() {
                        self.remove_connection(id, gateway_id).await?;
                    }
                    Ok(Found::Connection(row))
                })
            } else {
                Box::pin(async { Ok(Found::Room(false)) })
            }
        };
        let reaped = stream::iter(0..rooms.len() + users.len() + connections.len())
            .map(reap_one)
            .buffer_unordered(REAP_CONCURRENCY)
            .try_fold(
                Reaped {
                    gateway_row,
                    ..Reaped::default()
                },
                |mut reaped, found| async move {
                    match found {
                        Found::Room(found) => reaped.rooms += usize::from(found),
                        Found::User(found) => reaped.users += usize::from(found),
                        Found::Connection(Some(row)) => {
                            reaped.connections += 1;
                            reaped.gone.push(row);
                        }
                        Found::Connection(None) => {}
                    }
                    Ok(reaped)
                },
            )
            .await?;
        self.clear_gateway_keys(gateway_id).await?;
        Ok(reaped)
    }

    /// The heartbeat: writes the gateway row with `ttl` (what says "alive"), then writes
    /// `rows` again with `row_ttl` (the rows whose turn it is, see [`refresh`]; none on
    /// most heartbeats). The Scylla registry overrides this to write the rows in parallel.
    async fn refresh(
        &self,
        gateway: &GatewayRecord,
        ttl: Duration,
        rows: &Holdings,
        row_ttl: Duration,
    ) -> Result<()> {
        self.upsert_gateway(gateway, ttl).await?;
        for room in &rows.rooms {
            self.add_room_gateway(room, &gateway.gateway_id, row_ttl)
                .await?;
        }
        for user in &rows.users {
            self.add_user_gateway(user, &gateway.gateway_id, row_ttl)
                .await?;
        }
        for connection in &rows.connections {
            self.put_connection(connection, row_ttl).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Routers take a missing `gateways` row for a dead gateway: the row of a gateway's
    /// last heartbeat must outlive the next two heartbeats it misses, with a margin.
    #[test]
    fn a_gateway_row_outlives_two_missed_heartbeats_with_a_margin() {
        for ttl in [1, 2, 3, 10, 30, 3_600].map(Duration::from_secs) {
            let interval = heartbeat_interval(ttl);
            assert!(!interval.is_zero(), "ttl {ttl:?}");
            let two_missed = 2 * interval;
            let margin = ttl.saturating_sub(two_missed);
            assert!(
                margin >= interval,
                "ttl {ttl:?}: interval {interval:?} leaves a margin of {margin:?}"
            );
        }
    }
}
