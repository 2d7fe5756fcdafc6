//! The ScyllaDB registry: the [`Registry`] trait over CQL (ScyllaDB, or any CQL server such
//! as Apache Cassandra).
//!
//! `session` opens the session (contact points, credentials, token-aware and DC-aware load
//! balancing, the request timeout, the consistency level) and creates the schema (keyspace
//! and the tables, idempotently at connect); `statements` holds one prepared statement
//! per operation and runs them; `lookups` batches the room → gateways and user → gateways
//! reads; `index` writes and reads the per-gateway index the reaper reads. This module maps
//! the [`Registry`] operations onto them. Every lookup is one single-partition read, except
//! [`Registry::gateways`], which reads the small `gateways` table whole.
//!
//! Each room, user and connection row is written together with its entry in the index of
//! the gateway it names (two single-partition writes in parallel), and deleted with it.
//!
//! Errors from the driver (timeouts, no reachable node, server errors, unexpected rows)
//! become [`Error::RegistryUnavailable`] naming the operation and the table; nothing here
//! panics on what the network returns. The driver reconnects to a restarted node by
//! itself; while no node is reachable a call fails within the request timeout.

pub mod config;
mod history;
mod index;
mod lookups;
mod session;
mod statements;

pub use config::{SchemaMode, ScyllaConfig};
pub use index::INDEX_SHARDS;
pub use session::{cql_script, migrate, table_names};
pub use statements::ttl_seconds;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::{BoxFuture, try_join};
use futures_util::stream::{self, StreamExt as _, TryStreamExt as _};

use super::{ConnectionRecord, GatewayKeys, GatewayRecord, Holdings, Registry, TokenRecord};
use crate::error::Result;
use crate::history::{HistoryEntry, HistoryPage, Pos};
use index::Kind;
use lookups::Lookups;
use scylla::statement::prepared::PreparedStatement;
use statements::{Cql, Statements, from_bigint, to_bigint};

/// How many registry writes one [`Registry::refresh`] keeps in flight. Enough to hide the
/// round trip (20,000 rows at ~1 ms each take ~0.3 s instead of 20 s), small enough not to
/// flood the driver's per-connection request slots or the server's native-transport queue.
pub const REFRESH_CONCURRENCY: usize = 64;

/// A registry in ScyllaDB (or any CQL server).
pub struct ScyllaRegistry {
    cql: Cql,
    statements: Statements,
    /// Room → gateways and user → gateways lookups, batched (see `lookups`).
    room_lookups: Lookups,
    user_lookups: Lookups,
    history: history::HistoryStatements,
}

impl std::fmt::Debug for ScyllaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaRegistry")
            .field("keyspace", &self.cql.keyspace)
            .finish_non_exhaustive()
    }
}

impl ScyllaRegistry {
    /// Connects, creates the keyspace and the tables if absent, prepares the statements.
    pub async fn connect(config: &ScyllaConfig) -> Result<Self> {
        let ks = config.keyspace.as_str();
        let session = session::open(config).await?;
        let statements = Statements::prepare(&session, ks).await?;
        let session = Arc::new(session);
        let room_lookups = Lookups::new(
            session.clone(),
            statements.room_gateways.clone(),
            format!("scylla room_gateways ({ks}.room_gateways)"),
        );
        let user_lookups = Lookups::new(
            session.clone(),
            statements.user_gateways.clone(),
            format!("scylla user_gateways ({ks}.user_gateways)"),
        );
        let cql = Cql {
            session,
            keyspace: ks.to_owned(),
        };
        let history = history::HistoryStatements::prepare(&cql).await?;
        Ok(Self {
            cql,
            statements,
            room_lookups,
            user_lookups,
            history,
        })
    }

    /// The keyspace this registry uses.
    pub fn keyspace(&self) -> &str {
        &self.cql.keyspace
    }

    /// Drops this registry's keyspace and everything in it: for tests, which each use a
    /// keyspace of their own. Not available to the binaries.
    #[cfg(any(test, feature = "test-support"))]
    pub async fn drop_keyspace(&self) -> Result<()> {
        session::drop_keyspace(&self.cql.session, &self.cql.keyspace).await
    }
}

type GatewayRow = (String, Option<String>, Option<i64>);

fn gateway_record((gateway_id, internal_url, started_at): GatewayRow) -> GatewayRecord {
    GatewayRecord {
        gateway_id,
        internal_url: internal_url.unwrap_or_default(),
        started_at: from_bigint(started_at),
    }
}

#[async_trait]
impl Registry for ScyllaRegistry {
    async fn upsert_gateway(&self, gateway: &GatewayRecord, ttl: Duration) -> Result<()> {
        self.cql
            .run(
                "upsert_gateway",
                "gateways",
                &self.statements.upsert_gateway,
                (
                    &gateway.gateway_id,
                    &gateway.internal_url,
                    to_bigint(gateway.started_at),
                    ttl_seconds(ttl),
                ),
            )
            .await
            .map(drop)
    }

    async fn remove_gateway(&self, gateway_id: &str) -> Result<()> {
        self.cql
            .run(
                "remove_gateway",
                "gateways",
                &self.statements.remove_gateway,
                (gateway_id,),
            )
            .await
            .map(drop)
    }

    async fn gateway(&self, gateway_id: &str) -> Result<Option<GatewayRecord>> {
        let rows: Vec<GatewayRow> = self
            .cql
            .rows(
                "gateway",
                "gateways",
                &self.statements.gateway,
                (gateway_id,),
            )
            .await?;
        Ok(rows.into_iter().next().map(gateway_record))
    }

    async fn gateways(&self) -> Result<Vec<GatewayRecord>> {
        // A whole-table read, on purpose: see the statement's comment (one row per replica).
        let rows: Vec<GatewayRow> = self
            .cql
            .rows("gateways", "gateways", &self.statements.gateways, ())
            .await?;
        Ok(rows.into_iter().map(gateway_record).collect())
    }

    async fn put_connection(&self, c: &ConnectionRecord, ttl: Duration) -> Result<()> {
        let row = self.cql.run(
            "put_connection",
            "connections",
            &self.statements.put_connection,
            (
                &c.connection_id,
                &c.room_id,
                &c.user_id,
                &c.gateway_id,
                to_bigint(c.connected_at),
                &c.source_ip,
                &c.user_agent,
                ttl_seconds(ttl),
            ),
        );
        let entry = self.index_put(&c.gateway_id, Kind::Connection, &c.connection_id, ttl);
        try_join(row, entry).await.map(drop)
    }

    async fn remove_connection(&self, connection_id: &str, gateway_id: &str) -> Result<()> {
        let row = self.cql.run(
            "remove_connection",
            "connections",
            &self.statements.remove_connection,
            (connection_id,),
        );
        let entry = self.index_remove(gateway_id, Kind::Connection, connection_id);
        try_join(row, entry).await.map(drop)
    }

    async fn connection(&self, connection_id: &str) -> Result<Option<ConnectionRecord>> {
        type ConnectionRow = (
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<ConnectionRow> = self
            .cql
            .rows(
                "connection",
                "connections",
                &self.statements.connection,
                (connection_id,),
            )
            .await?;
        Ok(rows.into_iter().next().map(
            |(connection_id, room_id, user_id, gateway_id, connected_at, source_ip, user_agent)| {
                ConnectionRecord {
                    connection_id,
                    room_id: room_id.unwrap_or_default(),
                    user_id: user_id.unwrap_or_default(),
                    gateway_id: gateway_id.unwrap_or_default(),
                    connected_at: from_bigint(connected_at),
                    source_ip: source_ip.unwrap_or_default(),
                    user_agent: user_agent.unwrap_or_default(),
                }
            },
        ))
    }

    async fn add_room_gateway(&self, room_id: &str, gateway_id: &str, ttl: Duration) -> Result<()> {
        self.add_edge(Edge::Room, room_id, gateway_id, ttl).await
    }

    async fn remove_room_gateway(&self, room_id: &str, gateway_id: &str) -> Result<()> {
        self.remove_edge(Edge::Room, room_id, gateway_id).await
    }

    async fn room_gateways(&self, room_id: &str) -> Result<Vec<String>> {
        self.room_lookups.get(room_id).await
    }

    async fn add_user_gateway(&self, user_id: &str, gateway_id: &str, ttl: Duration) -> Result<()> {
        self.add_edge(Edge::User, user_id, gateway_id, ttl).await
    }

    async fn remove_user_gateway(&self, user_id: &str, gateway_id: &str) -> Result<()> {
        self.remove_edge(Edge::User, user_id, gateway_id).await
    }

    async fn user_gateways(&self, user_id: &str) -> Result<Vec<String>> {
        self.user_lookups.get(user_id).await
    }

    async fn put_token(&self, t: &TokenRecord) -> Result<()> {
        self.cql
            .run(
                "put_token",
                "tokens",
                &self.statements.put_token,
                (
                    &t.user_id,
                    &t.room_id,
                    &t.token_hash,
                    t.fast_verifier.as_deref(),
                    to_bigint(t.created_at),
                ),
            )
            .await
            .map(drop)
    }

    async fn token(&self, user_id: &str, room_id: &str) -> Result<Option<TokenRecord>> {
        type TokenRow = (String, String, Option<String>, Option<String>, Option<i64>);
        let rows: Vec<TokenRow> = self
            .cql
            .rows(
                "token",
                "tokens",
                &self.statements.token,
                (user_id, room_id),
            )
            .await?;
        Ok(rows.into_iter().next().map(
            |(user_id, room_id, token_hash, fast_verifier, created_at)| TokenRecord {
                user_id,
                room_id,
                token_hash: token_hash.unwrap_or_default(),
                fast_verifier,
                created_at: from_bigint(created_at),
            },
        ))
    }

    async fn set_fast_verifier(
        &self,
        user_id: &str,
        room_id: &str,
        token_hash: &str,
        verifier: &str,
    ) -> Result<bool> {
        self.cql
            .applied(
                "set_fast_verifier",
                "tokens",
                &self.statements.set_fast_verifier,
                (verifier, user_id, room_id, token_hash),
            )
            .await
    }

    async fn delete_token(&self, user_id: &str, room_id: &str) -> Result<bool> {
        self.cql
            .applied(
                "delete_token",
                "tokens",
                &self.statements.delete_token,
                (user_id, room_id),
            )
            .await
    }

    async fn gateway_keys(&self, gateway_id: &str) -> Result<GatewayKeys> {
        index::read(&self.cql, &self.statements, gateway_id).await
    }

    async fn clear_gateway_keys(&self, gateway_id: &str) -> Result<()> {
        index::clear(&self.cql, &self.statements, gateway_id).await
    }

    async fn append_history(
        &self,
        entry: &HistoryEntry,
        ttl: Duration,
        _keep: usize,
    ) -> Result<()> {
        self.history.append(entry, ttl).await
    }

    async fn read_history(&self, stream: &str, after: Pos, limit: usize) -> Result<HistoryPage> {
        self.history.read(&self.cql, stream, after, limit).await
    }

    /// The heartbeat. The gateway row first (it is what says "alive"), then the rows whose
    /// turn it is, each with its index entry, [`REFRESH_CONCURRENCY`] writes in flight.
    /// Single-partition writes in parallel rather than a multi-partition batch: each goes
    /// straight to its replicas (token-aware), no coordinator has to fan a big batch out.
    /// The first failure ends the refresh (the next heartbeat redoes it), so a heartbeat
    /// against an unreachable cluster fails fast instead of failing 20,000 times.
    async fn refresh(
        &self,
        gateway: &GatewayRecord,
        ttl: Duration,
        holdings: &Holdings,
        row_ttl: Duration,
    ) -> Result<()> {
        self.upsert_gateway(gateway, ttl).await?;
        let gateway_id = gateway.gateway_id.as_str();
        let ttl = row_ttl;
        let (rooms, users) = (&holdings.rooms, &holdings.users);
        let connections = &holdings.connections;
        // Items are indexes and the futures are boxed: a closure taking references would
        // trip the compiler's higher-ranked lifetime check of `async_trait`'s `Send` future.
        let write = move |i: usize| -> BoxFuture<'_, Result<()>> {
            if let Some(room) = rooms.get(i) {
                Box::pin(self.add_room_gateway(room, gateway_id, ttl))
            } else if let Some(user) = users.get(i - rooms.len()) {
                Box::pin(self.add_user_gateway(user, gateway_id, ttl))
            } else if let Some(c) = connections.get(i - rooms.len() - users.len()) {
                Box::pin(self.put_connection(c, ttl))
            } else {
                Box::pin(async { Ok(()) })
            }
        };
        stream::iter(0..rooms.len() + users.len() + connections.len())
            .map(write)
            .buffer_unordered(REFRESH_CONCURRENCY)
            .try_for_each(|()| async { Ok(()) })
            .await
    }
}

/// An operation's name and its prepared statement.
type Op<'a> = (&'static str, &'a PreparedStatement);

/// Which edge: a gateway holds sockets of a room, or of a user. (A connection row is not an
/// edge, so it has no variant here and `edge` needs no arm for it.)
#[derive(Debug, Clone, Copy)]
enum Edge {
    Room,
    User,
}

impl Edge {
    /// The kind of the edge's `gateway_index` entry.
    fn kind(self) -> Kind {
        match self {
            Edge::Room => Kind::Room,
            Edge::User => Kind::User,
        }
    }
}

impl ScyllaRegistry {
    /// The table, and the (operation, statement) that adds and that removes, of an edge.
    fn edge(&self, edge: Edge) -> (&'static str, Op<'_>, Op<'_>) {
        let s = &self.statements;
        match edge {
            Edge::User => (
                "user_gateways",
                ("add_user_gateway", &s.add_user_gateway),
                ("remove_user_gateway", &s.remove_user_gateway),
            ),
            Edge::Room => (
                "room_gateways",
                ("add_room_gateway", &s.add_room_gateway),
                ("remove_room_gateway", &s.remove_room_gateway),
            ),
        }
    }

    /// Writes an edge and its index entry, in parallel.
    async fn add_edge(&self, edge: Edge, key: &str, gateway_id: &str, ttl: Duration) -> Result<()> {
        let (table, (op, add), _) = self.edge(edge);
        let row = (self.cql).run(op, table, add, (key, gateway_id, ttl_seconds(ttl)));
        let entry = self.index_put(gateway_id, edge.kind(), key, ttl);
        try_join(row, entry).await.map(drop)
    }

    /// Deletes an edge and its index entry, in parallel.
    async fn remove_edge(&self, edge: Edge, key: &str, gateway_id: &str) -> Result<()> {
        let (table, _, (op, remove)) = self.edge(edge);
        let row = (self.cql).run(op, table, remove, (key, gateway_id));
        let entry = self.index_remove(gateway_id, edge.kind(), key);
        try_join(row, entry).await.map(drop)
    }

    /// Writes an index entry (see `index`).
    async fn index_put(
        &self,
        gateway_id: &str,
        kind: Kind,
        key: &str,
        ttl: Duration,
    ) -> Result<()> {
        index::put(&self.cql, &self.statements, gateway_id, kind, key, ttl).await
    }

    /// Deletes an index entry (see `index`).
    async fn index_remove(&self, gateway_id: &str, kind: Kind, key: &str) -> Result<()> {
        index::remove(&self.cql, &self.statements, gateway_id, kind, key).await
    }
}
