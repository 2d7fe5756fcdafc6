//! The connection registry: who holds which connection, which gateways hold a room or a
//! user, which gateways are alive, and the second-layer token hashes.
//!
//! The trait is shaped around partition lookups (room → gateways, user → gateways,
//! connection → gateway, (user, room) → token), never around scans, so that the
//! ScyllaDB implementation answers each call with one partition read. Rows written with a
//! TTL disappear when the gateway that wrote them stops refreshing them.

pub mod instrumented;
pub mod memory;
pub mod remote;
pub mod scylla;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::RegistryKind;
use crate::error::Result;

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

    /// Refreshes the TTL of a gateway's row and of everything it holds.
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
}
