//! The connection registry: who holds which connection, which gateways hold a room or a
//! user, which gateways are alive, and the second-layer token hashes.
//!
//! The trait is shaped around partition lookups (room → gateways, user → gateways,
//! connection → gateway, (user, room) → token, gateway → its keys), never around scans, so
//! that the ScyllaDB implementation answers each call with one partition read. Rows written
//! with a TTL disappear when the gateway that wrote them stops refreshing them; the
//! per-gateway index ([`Registry::gateway_keys`]) lets the Kubernetes reaper delete a dead
//! gateway's rows at once instead ([`Registry::reap_gateway`]).

pub mod config;
pub mod instrumented;
pub mod memory;
pub mod remote;
pub mod scylla;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, StreamExt as _, TryStreamExt as _};
use serde::{Deserialize, Serialize};

use crate::error::Result;
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaped {
    pub gateway_row: bool,
    pub rooms: usize,
    pub users: usize,
    pub connections: usize,
}

/// How many row checks and deletes one [`Registry::reap_gateway`] keeps in flight: a dead
/// gateway may have held tens of thousands of connections, each a read and a delete.
pub const REAP_CONCURRENCY: usize = 64;

/// What a gateway refreshes on every heartbeat.
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

    /// Writes (or refreshes) a connection row with a TTL.
    async fn put_connection(&self, connection: &ConnectionRecord, ttl: Duration) -> Result<()>;
    /// Deletes a connection row.
    async fn remove_connection(&self, connection_id: &str) -> Result<()>;
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
    /// index. How fresh the index is depends on the implementation: the Scylla registry
    /// answers the snapshot its last heartbeat ([`Registry::refresh`]) wrote, so it misses
    /// what was added since and may still name what was removed since; the memory registry
    /// reads its rows. Callers check each row before acting on it.
    async fn gateway_keys(&self, gateway_id: &str) -> Result<GatewayKeys>;
    /// Deletes a gateway's whole index (after its rows are gone).
    async fn clear_gateway_keys(&self, gateway_id: &str) -> Result<()>;

    /// Deletes the rows of a (dead) gateway that its index names: its gateway row, its
    /// `room_gateways` and `user_gateways` rows, and the connection rows that still name it
    /// (a connection id put again by another gateway is left alone), then its index. Counts
    /// the rows it found. Idempotent: a second call finds nothing. The index is cleared
    /// last, so a call that fails part-way can simply be repeated. Rows the index does not
    /// name (Scylla: written after the gateway's last heartbeat) are left to their TTL.
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
        let reap_one = move |i: usize| -> BoxFuture<'_, Result<(usize, usize, usize)>> {
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
                    Ok((usize::from(found), 0, 0))
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
                    Ok((0, usize::from(found), 0))
                })
            } else if let Some(id) = connections.get(i - rooms.len() - users.len()) {
                Box::pin(async move {
                    let found = matches!(
                        self.connection(id).await?,
                        Some(row) if row.gateway_id == gateway_id
                    );
                    if found {
                        self.remove_connection(id).await?;
                    }
                    Ok((0, 0, usize::from(found)))
                })
            } else {
                Box::pin(async { Ok((0, 0, 0)) })
            }
        };
        let (rooms, users, connections) =
            stream::iter(0..rooms.len() + users.len() + connections.len())
                .map(reap_one)
                .buffer_unordered(REAP_CONCURRENCY)
                .try_fold((0, 0, 0), |(r, u, c), (dr, du, dc)| async move {
                    Ok((r + dr, u + du, c + dc))
                })
                .await?;
        self.clear_gateway_keys(gateway_id).await?;
        Ok(Reaped {
            gateway_row,
            rooms,
            users,
            connections,
        })
    }

    /// The heartbeat: refreshes the TTL of a gateway's row and of everything it holds.
    /// `holdings` is complete (everything the gateway holds now). Implementations that
    /// keep a per-gateway index write it here (the Scylla registry overrides this).
    async fn refresh(
        &self,
        gateway: &GatewayRecord,
        holdings: &Holdings,
        ttl: Duration,
    ) -> Result<()> {
        self.upsert_gateway(gateway, ttl).await?;
        for room in &holdings.rooms {
            self.add_room_gateway(room, &gateway.gateway_id, ttl)
                .await?;
        }
        for user in &holdings.users {
            self.add_user_gateway(user, &gateway.gateway_id, ttl)
                .await?;
        }
        for connection in &holdings.connections {
            self.put_connection(connection, ttl).await?;
        }
        Ok(())
    }
}

#[cfg(any(test, feature = "test-support"))]
pub mod contract {
    //! The behaviour every `Registry` implementation must have. Each implementation's
    //! tests call [`run_all`].

    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    fn conn(id: &str, gateway: &str) -> ConnectionRecord {
        ConnectionRecord {
            connection_id: id.into(),
            room_id: "room".into(),
            user_id: "user".into(),
            gateway_id: gateway.into(),
            connected_at: 1,
            source_ip: "127.0.0.1".into(),
            user_agent: "test".into(),
        }
    }

    pub async fn run_all(r: &dyn Registry) {
        gateways_are_listed_until_removed(r).await;
        room_and_user_lookups_return_holding_gateways(r).await;
        connections_are_found_by_id(r).await;
        fast_verifier_is_stored_only_for_the_same_hash(r).await;
        reap_gateway_deletes_every_row_of_that_gateway_only(r).await;
    }

    async fn gateways_are_listed_until_removed(r: &dyn Registry) {
        let g = GatewayRecord {
            gateway_id: "g1".into(),
            internal_url: "http://a".into(),
            started_at: 1,
        };
        r.upsert_gateway(&g, TTL).await.expect("upsert");
        assert_eq!(r.gateway("g1").await.expect("get"), Some(g.clone()));
        assert!(r.gateways().await.expect("list").contains(&g));
        r.remove_gateway("g1").await.expect("remove");
        assert_eq!(r.gateway("g1").await.expect("get"), None);
    }

    async fn room_and_user_lookups_return_holding_gateways(r: &dyn Registry) {
        r.add_room_gateway("r1", "g1", TTL).await.expect("add");
        r.add_room_gateway("r1", "g2", TTL).await.expect("add");
        r.add_room_gateway("r1", "g2", TTL)
            .await
            .expect("idempotent");
        let mut gws = r.room_gateways("r1").await.expect("lookup");
        gws.sort();
        assert_eq!(gws, vec!["g1".to_owned(), "g2".to_owned()]);
        r.remove_room_gateway("r1", "g1").await.expect("remove");
        assert_eq!(
            r.room_gateways("r1").await.expect("lookup"),
            vec!["g2".to_owned()]
        );
        assert!(r.room_gateways("nobody").await.expect("lookup").is_empty());

        r.add_user_gateway("u1", "g3", TTL).await.expect("add");
        assert_eq!(
            r.user_gateways("u1").await.expect("lookup"),
            vec!["g3".to_owned()]
        );
        r.remove_user_gateway("u1", "g3").await.expect("remove");
        assert!(r.user_gateways("u1").await.expect("lookup").is_empty());
    }

    async fn connections_are_found_by_id(r: &dyn Registry) {
        r.put_connection(&conn("c1", "g1"), TTL).await.expect("put");
        assert_eq!(
            r.connection("c1").await.expect("get"),
            Some(conn("c1", "g1"))
        );
        r.remove_connection("c1").await.expect("remove");
        assert_eq!(r.connection("c1").await.expect("get"), None);
        r.remove_connection("c1")
            .await
            .expect("removing twice is fine");
    }

    async fn fast_verifier_is_stored_only_for_the_same_hash(r: &dyn Registry) {
        let t = TokenRecord {
            user_id: "u".into(),
            room_id: "r".into(),
            token_hash: "$2b$04$hash-one".into(),
            fast_verifier: None,
            created_at: 1,
        };
        r.put_token(&t).await.expect("put");
        assert!(
            !r.set_fast_verifier("u", "r", "$2b$04$other", "v")
                .await
                .expect("set")
        );
        assert!(
            r.set_fast_verifier("u", "r", "$2b$04$hash-one", "v")
                .await
                .expect("set")
        );
        let stored = r.token("u", "r").await.expect("get").expect("row");
        assert_eq!(stored.fast_verifier.as_deref(), Some("v"));
        assert!(r.delete_token("u", "r").await.expect("delete"));
        assert!(!r.delete_token("u", "r").await.expect("delete twice"));
        assert_eq!(r.token("u", "r").await.expect("get"), None);
    }

    /// Two gateways hold the same room and user and a connection each, established by
    /// their heartbeats (`refresh`, which writes the index where there is one). A third
    /// connection id was held by the first gateway at its last heartbeat, then put again by
    /// the second. Reaping the first deletes exactly its rows, and reaping it again finds
    /// nothing.
    async fn reap_gateway_deletes_every_row_of_that_gateway_only(r: &dyn Registry) {
        let (g1, g2) = ("reap-g1", "reap-g2");
        let record = |g: &str| GatewayRecord {
            gateway_id: g.into(),
            internal_url: format!("http://{g}"),
            started_at: 1,
        };
        let holdings = |g: &str, rooms: &[&str], connections: &[&str]| Holdings {
            rooms: rooms.iter().map(|&room| room.into()).collect(),
            users: vec!["reap-user".into()],
            connections: connections.iter().map(|&id| conn(id, g)).collect(),
        };
        // g1's first heartbeat holds a room it then leaves; its next heartbeat no longer
        // holds it (the index follows the heartbeat, not the remove).
        r.refresh(
            &record(g1),
            &holdings(
                g1,
                &["reap-room", "reap-left"],
                &["reap-g1-conn", "reap-moved"],
            ),
            TTL,
        )
        .await
        .expect("heartbeat g1");
        r.remove_room_gateway("reap-left", g1)
            .await
            .expect("remove room");
        r.refresh(
            &record(g1),
            &holdings(g1, &["reap-room"], &["reap-g1-conn", "reap-moved"]),
            TTL,
        )
        .await
        .expect("heartbeat g1 again");
        // Then g1 dies, and "reap-moved" is put again by g2 (its heartbeat holds it).
        r.refresh(
            &record(g2),
            &holdings(g2, &["reap-room"], &["reap-g2-conn", "reap-moved"]),
            TTL,
        )
        .await
        .expect("heartbeat g2");

        let keys = r.gateway_keys(g1).await.expect("keys");
        assert_eq!(keys.rooms, vec!["reap-room".to_owned()]);
        assert_eq!(keys.users, vec!["reap-user".to_owned()]);
        assert!(keys.connections.contains(&"reap-g1-conn".to_owned()));

        assert_eq!(
            r.reap_gateway(g1).await.expect("reap"),
            Reaped {
                gateway_row: true,
                rooms: 1,
                users: 1,
                connections: 1,
            }
        );
        assert_eq!(r.gateway(g1).await.expect("get"), None);
        assert_eq!(r.connection("reap-g1-conn").await.expect("get"), None);
        assert_eq!(
            r.room_gateways("reap-room").await.expect("lookup"),
            vec![g2.to_owned()]
        );
        assert_eq!(
            r.user_gateways("reap-user").await.expect("lookup"),
            vec![g2.to_owned()]
        );
        assert_eq!(
            r.gateway_keys(g1).await.expect("keys"),
            GatewayKeys::default()
        );

        // The other gateway keeps everything, the moved connection included.
        assert!(r.gateway(g2).await.expect("get").is_some());
        assert_eq!(
            r.connection("reap-g2-conn").await.expect("get"),
            Some(conn("reap-g2-conn", g2))
        );
        assert_eq!(
            r.connection("reap-moved").await.expect("get"),
            Some(conn("reap-moved", g2))
        );
        let mut g2_connections = r.gateway_keys(g2).await.expect("keys").connections;
        g2_connections.sort();
        assert_eq!(g2_connections, vec!["reap-g2-conn", "reap-moved"]);

        assert_eq!(
            r.reap_gateway(g1).await.expect("reap again"),
            Reaped::default()
        );

        // Clean up, so that later checks on the same registry start empty.
        r.reap_gateway(g2).await.expect("reap g2");
        assert_eq!(r.connection("reap-moved").await.expect("get"), None);
        assert!(
            r.room_gateways("reap-room")
                .await
                .expect("lookup")
                .is_empty()
        );
    }
}
