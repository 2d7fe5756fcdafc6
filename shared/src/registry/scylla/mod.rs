//! The ScyllaDB registry: the [`Registry`] trait over CQL (ScyllaDB, or any CQL server such
//! as Apache Cassandra).
//!
//! This module owns the registry's schema (keyspace and the six tables, created
//! idempotently at connect), the session (contact points, credentials, token-aware and
//! DC-aware load balancing, the request timeout, the consistency level) and one prepared
//! statement per operation. Every lookup is one single-partition read, except
//! [`Registry::gateways`], which reads the small `gateways` table whole.
//!
//! `gateway_holdings` is the per-gateway index the Kubernetes reaper reads: a snapshot of
//! the gateway's holdings, rewritten whole by every heartbeat ([`Registry::refresh`]) as a
//! few shards of frozen lists under the gateway's partition. Overwriting a frozen list
//! replaces one cell, so churn leaves no per-key tombstones behind (see `docs/registry.md`).
//!
//! Errors from the driver (timeouts, no reachable node, server errors, unexpected rows)
//! become [`Error::RegistryUnavailable`] naming the operation and the table; nothing here
//! panics on what the network returns. The driver reconnects to a restarted node by
//! itself; while no node is reachable a call fails within the request timeout.

pub mod config;

pub use config::ScyllaConfig;

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, StreamExt as _, TryStreamExt as _};
use parking_lot::Mutex;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency, Statement};
use scylla::value::{CqlValue, Row};

use super::{ConnectionRecord, GatewayKeys, GatewayRecord, Holdings, Registry, TokenRecord};
use crate::batch::Batcher;
use crate::error::{Error, Result};

/// How many registry writes one [`Registry::refresh`] keeps in flight. Enough to hide the
/// round trip (20,000 rows at ~1 ms each take ~0.3 s instead of 20 s), small enough not to
/// flood the driver's per-connection request slots or the server's native-transport queue.
pub const REFRESH_CONCURRENCY: usize = 64;

/// At most this many keys (rooms, users and connections together) in one shard of a
/// gateway's holdings snapshot, so that no cell is large (1,000 ids of ~40 bytes: ~40 kB).
pub const SNAPSHOT_SHARD_KEYS: usize = 1_000;

/// Snapshot shards fetched per page by `gateway_keys` (each up to
/// [`SNAPSHOT_SHARD_KEYS`] keys).
const SNAPSHOT_PAGE_ROWS: i32 = 16;

/// The largest TTL CQL accepts: 20 years, in seconds.
const MAX_TTL_SECONDS: i32 = 630_720_000;

/// DDL (keyspace and tables) can take much longer than a read or a write: schema changes
/// are agreed on by every node. At least this long, or the request timeout if longer.
const SCHEMA_TIMEOUT: Duration = Duration::from_secs(60);

/// The tables, created with `CREATE TABLE IF NOT EXISTS` in the configured keyspace.
const TABLES: &[(&str, &str)] = &[
    (
        "connections",
        "connection_id text PRIMARY KEY, room_id text, user_id text, gateway_id text, \
         connected_at bigint, source_ip text, user_agent text",
    ),
    (
        "room_gateways",
        "room_id text, gateway_id text, PRIMARY KEY (room_id, gateway_id)",
    ),
    (
        "user_gateways",
        "user_id text, gateway_id text, PRIMARY KEY (user_id, gateway_id)",
    ),
    (
        "gateways",
        "gateway_id text PRIMARY KEY, internal_url text, started_at bigint",
    ),
    (
        "tokens",
        "user_id text, room_id text, token_hash text, fast_verifier text, created_at bigint, \
         PRIMARY KEY ((user_id, room_id))",
    ),
    // The per-gateway index: a snapshot of what the gateway holds, written by its heartbeat
    // in shards of at most `SNAPSHOT_SHARD_KEYS` keys. Each list is one frozen cell,
    // replaced whole on every heartbeat: no per-key cells, so no per-key tombstones.
    (
        "gateway_holdings",
        "gateway_id text, shard int, rooms frozen<list<text>>, users frozen<list<text>>, \
         connections frozen<list<text>>, PRIMARY KEY (gateway_id, shard)",
    ),
];

/// One prepared statement per registry operation, prepared once at connect.
struct Statements {
    upsert_gateway: PreparedStatement,
    remove_gateway: PreparedStatement,
    gateway: PreparedStatement,
    gateways: PreparedStatement,
    put_connection: PreparedStatement,
    remove_connection: PreparedStatement,
    connection: PreparedStatement,
    add_room_gateway: PreparedStatement,
    remove_room_gateway: PreparedStatement,
    room_gateways: PreparedStatement,
    add_user_gateway: PreparedStatement,
    remove_user_gateway: PreparedStatement,
    user_gateways: PreparedStatement,
    put_token: PreparedStatement,
    token: PreparedStatement,
    set_fast_verifier: PreparedStatement,
    delete_token: PreparedStatement,
    put_holdings: PreparedStatement,
    trim_holdings: PreparedStatement,
    gateway_holdings: PreparedStatement,
    clear_holdings: PreparedStatement,
}

/// A registry in ScyllaDB (or any CQL server).
pub struct ScyllaRegistry {
    session: Arc<Session>,
    keyspace: String,
    statements: Statements,
    /// How many snapshot shards this process last wrote per gateway, so that a heartbeat
    /// deletes the surplus shards only when the count went down (or is not known yet).
    snapshot_shards: Mutex<HashMap<String, usize>>,
    /// Room → gateways and user → gateways lookups, batched (see [`lookups`]).
    room_lookups: Lookups,
    user_lookups: Lookups,
}

/// Runs `statement` unpaged and deserializes every row as `R`; the error is the driver's text.
async fn fetch_rows<R>(
    session: &Session,
    statement: &PreparedStatement,
    values: impl SerializeRow,
) -> std::result::Result<Vec<R>, String>
where
    R: for<'f> scylla::deserialize::row::DeserializeRow<'f, 'f>,
{
    let result = session
        .execute_unpaged(statement, values)
        .await
        .map_err(|e| e.to_string())?;
    let rows = result.into_rows_result().map_err(|e| e.to_string())?;
    rows.rows::<R>()
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<R>, _>>()
        .map_err(|e| e.to_string())
}

/// A batcher of gateway-id lookups by partition key.
type Lookups = Batcher<String, Result<Vec<String>>>;

/// Keys per lookup request at most.
const LOOKUP_BATCH: usize = 64;
/// Lookup requests in flight at once per table; callers beyond wait and go in the next batch.
const LOOKUPS_IN_FLIGHT: usize = 4;

/// Batches concurrent lookups of `statement` (`SELECT key, gateway_id ... WHERE key IN ?`):
/// a lone lookup is sent at once; those that arrive while `LOOKUPS_IN_FLIGHT` requests are
/// out share the next one. Every caller gets its own key's rows, or the request's error.
/// Under load this turns thousands of single-partition requests per second into a few
/// hundred multi-partition ones (measured in docs/consumer.md).
fn lookups(session: Arc<Session>, statement: PreparedStatement, what: String) -> Lookups {
    Batcher::new(
        LOOKUP_BATCH,
        LOOKUPS_IN_FLIGHT,
        Arc::new(move |keys: Vec<String>| {
            let (session, statement, what) = (session.clone(), statement.clone(), what.clone());
            async move {
                let mut unique = keys.clone();
                unique.sort_unstable();
                unique.dedup();
                let found = fetch_rows::<(String, String)>(&session, &statement, (&unique,)).await;
                match found {
                    Ok(rows) => {
                        let mut by_key: HashMap<String, Vec<String>> = HashMap::new();
                        for (key, gateway_id) in rows {
                            by_key.entry(key).or_default().push(gateway_id);
                        }
                        keys.iter()
                            .map(|k| Ok(by_key.get(k).cloned().unwrap_or_default()))
                            .collect()
                    }
                    Err(e) => keys
                        .iter()
                        .map(|_| Err(Error::RegistryUnavailable(format!("{what}: {e}"))))
                        .collect(),
                }
            }
            .boxed()
        }),
    )
}

impl std::fmt::Debug for ScyllaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaRegistry")
            .field("keyspace", &self.keyspace)
            .finish_non_exhaustive()
    }
}

/// The configured consistency level (validated by `config`, re-checked here).
fn consistency(name: &str) -> Result<Consistency> {
    Ok(match name.to_ascii_uppercase().as_str() {
        "ONE" => Consistency::One,
        "TWO" => Consistency::Two,
        "THREE" => Consistency::Three,
        "QUORUM" => Consistency::Quorum,
        "ALL" => Consistency::All,
        "LOCAL_QUORUM" => Consistency::LocalQuorum,
        "EACH_QUORUM" => Consistency::EachQuorum,
        "LOCAL_ONE" => Consistency::LocalOne,
        other => {
            return Err(Error::Config(format!(
                "scylla consistency {other:?} is not a CQL consistency level"
            )));
        }
    })
}

/// The Paxos (LWT) consistency matching the regular one: a deployment that keeps its
/// requests inside the local datacenter (`LOCAL_*`, or a preferred DC without failover)
/// gets `LOCAL_SERIAL`, so an LWT never waits for a remote datacenter; otherwise `SERIAL`.
fn serial_consistency(c: Consistency, local_dc: bool) -> SerialConsistency {
    match c {
        Consistency::LocalQuorum | Consistency::LocalOne => SerialConsistency::LocalSerial,
        _ if local_dc => SerialConsistency::LocalSerial,
        _ => SerialConsistency::Serial,
    }
}

/// The TTL to bind for `USING TTL ?`: whole seconds, rounded up so that a row never
/// expires before the caller asked, at least 1 (0 would mean "never expires" in CQL) and at
/// most CQL's 20-year limit.
pub fn ttl_seconds(ttl: Duration) -> i32 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i32::try_from(secs)
        .unwrap_or(MAX_TTL_SECONDS)
        .clamp(1, MAX_TTL_SECONDS)
}

/// Milliseconds since the epoch as a CQL `bigint`.
fn to_bigint(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// A CQL `bigint` back to milliseconds since the epoch (a negative value reads as 0).
fn from_bigint(v: Option<i64>) -> u64 {
    v.and_then(|v| u64::try_from(v).ok()).unwrap_or(0)
}

impl ScyllaRegistry {
    /// Connects, creates the keyspace and the tables if absent, prepares the statements.
    pub async fn connect(config: &ScyllaConfig) -> Result<Self> {
        let ks = config.keyspace.as_str();
        let regular = consistency(&config.consistency)?;
        let serial = serial_consistency(regular, config.local_dc.is_some());

        // Token-aware: a prepared statement's partition key routes it to a replica of that
        // partition (no extra hop through a coordinator). DC-aware when a local DC is set:
        // only that DC's nodes are used (no failover, so LOCAL_* levels keep their meaning).
        let mut policy = DefaultPolicy::builder().token_aware(true);
        if let Some(dc) = &config.local_dc {
            policy = policy.prefer_datacenter(dc.clone());
        }
        // The request timeout bounds a whole call, retries included, so a call made while
        // no node answers fails within it instead of hanging.
        let profile = ExecutionProfile::builder()
            .consistency(regular)
            .serial_consistency(Some(serial))
            .request_timeout(Some(config.request_timeout))
            .load_balancing_policy(policy.build())
            .build();

        let mut builder = SessionBuilder::new()
            .known_nodes(&config.nodes)
            .connection_timeout(config.request_timeout.max(Duration::from_secs(1)))
            .default_execution_profile_handle(profile.into_handle());
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            builder = builder.user(user, password);
        }
        let session = builder.build().await.map_err(|e| {
            Error::RegistryUnavailable(format!(
                "scylla: cannot connect to {} (keyspace {ks}): {e}",
                config.nodes.join(",")
            ))
        })?;

        // Schema: idempotent, so every replica may run it at every start. The driver waits
        // for schema agreement after each DDL statement before returning.
        let schema_timeout = config.request_timeout.max(SCHEMA_TIMEOUT);
        let ddl = |cql: String| {
            let mut statement = Statement::new(cql);
            statement.set_request_timeout(Some(schema_timeout));
            statement
        };
        session
            .query_unpaged(
                ddl(format!(
                    "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}",
                    config.replication
                )),
                (),
            )
            .await
            .map_err(|e| {
                Error::RegistryUnavailable(format!("scylla: create keyspace {ks}: {e}"))
            })?;
        for (table, columns) in TABLES {
            session
                .query_unpaged(
                    ddl(format!(
                        "CREATE TABLE IF NOT EXISTS {ks}.{table} ({columns})"
                    )),
                    (),
                )
                .await
                .map_err(|e| {
                    Error::RegistryUnavailable(format!("scylla: create table {ks}.{table}: {e}"))
                })?;
        }

        let prepare = async |cql: String, idempotent: bool| -> Result<PreparedStatement> {
            let mut statement = session
                .prepare(cql.as_str())
                .await
                .map_err(|e| Error::RegistryUnavailable(format!("scylla: prepare {cql:?}: {e}")))?;
            // Idempotent statements (upserts, deletes, reads) may be retried by the driver
            // after a timeout; LWTs may not (a retry could see its own write and say "not
            // applied").
            statement.set_is_idempotent(idempotent);
            Ok(statement)
        };
        let statements = Statements {
            upsert_gateway: prepare(
                format!(
                    "INSERT INTO {ks}.gateways (gateway_id, internal_url, started_at) \
                     VALUES (?, ?, ?) USING TTL ?"
                ),
                true,
            )
            .await?,
            remove_gateway: prepare(
                format!("DELETE FROM {ks}.gateways WHERE gateway_id = ?"),
                true,
            )
            .await?,
            gateway: prepare(
                format!(
                    "SELECT gateway_id, internal_url, started_at FROM {ks}.gateways \
                     WHERE gateway_id = ?"
                ),
                true,
            )
            .await?,
            // The one read that is not a partition read: the table holds one row per live
            // gateway replica (rows expire with the heartbeat TTL), so reading it whole is
            // a handful of rows. Used by token revocation, which must reach every replica.
            gateways: prepare(
                format!("SELECT gateway_id, internal_url, started_at FROM {ks}.gateways"),
                true,
            )
            .await?,
            put_connection: prepare(
                format!(
                    "INSERT INTO {ks}.connections (connection_id, room_id, user_id, gateway_id, \
                     connected_at, source_ip, user_agent) VALUES (?, ?, ?, ?, ?, ?, ?) \
                     USING TTL ?"
                ),
                true,
            )
            .await?,
            remove_connection: prepare(
                format!("DELETE FROM {ks}.connections WHERE connection_id = ?"),
                true,
            )
            .await?,
            connection: prepare(
                format!(
                    "SELECT connection_id, room_id, user_id, gateway_id, connected_at, \
                     source_ip, user_agent FROM {ks}.connections WHERE connection_id = ?"
                ),
                true,
            )
            .await?,
            add_room_gateway: prepare(
                format!(
                    "INSERT INTO {ks}.room_gateways (room_id, gateway_id) VALUES (?, ?) \
                     USING TTL ?"
                ),
                true,
            )
            .await?,
            remove_room_gateway: prepare(
                format!("DELETE FROM {ks}.room_gateways WHERE room_id = ? AND gateway_id = ?"),
                true,
            )
            .await?,
            // Lookups go out in batches of concurrent callers (`lookups`): one request for
            // many partitions instead of one each.
            room_gateways: prepare(
                format!("SELECT room_id, gateway_id FROM {ks}.room_gateways WHERE room_id IN ?"),
                true,
            )
            .await?,
            add_user_gateway: prepare(
                format!(
                    "INSERT INTO {ks}.user_gateways (user_id, gateway_id) VALUES (?, ?) \
                     USING TTL ?"
                ),
                true,
            )
            .await?,
            remove_user_gateway: prepare(
                format!("DELETE FROM {ks}.user_gateways WHERE user_id = ? AND gateway_id = ?"),
                true,
            )
            .await?,
            user_gateways: prepare(
                format!("SELECT user_id, gateway_id FROM {ks}.user_gateways WHERE user_id IN ?"),
                true,
            )
            .await?,
            // Replaces the whole row: a new hash comes without the old hash's verifier
            // (`fast_verifier` is written, as null when absent). Tokens have no TTL; the
            // JWT's `exp` bounds a token's life, and the admin API deletes rows.
            put_token: prepare(
                format!(
                    "INSERT INTO {ks}.tokens (user_id, room_id, token_hash, fast_verifier, \
                     created_at) VALUES (?, ?, ?, ?, ?)"
                ),
                true,
            )
            .await?,
            token: prepare(
                format!(
                    "SELECT user_id, room_id, token_hash, fast_verifier, created_at \
                     FROM {ks}.tokens WHERE user_id = ? AND room_id = ?"
                ),
                true,
            )
            .await?,
            // LWT: the verifier is stored only if the row still holds the hash that was
            // verified, so a token replaced meanwhile never inherits the old verifier.
            set_fast_verifier: prepare(
                format!(
                    "UPDATE {ks}.tokens SET fast_verifier = ? WHERE user_id = ? AND room_id = ? \
                     IF token_hash = ?"
                ),
                false,
            )
            .await?,
            // LWT, so that the answer says whether a row existed (the admin API's 204/404).
            delete_token: prepare(
                format!("DELETE FROM {ks}.tokens WHERE user_id = ? AND room_id = ? IF EXISTS"),
                false,
            )
            .await?,
            put_holdings: prepare(
                format!(
                    "INSERT INTO {ks}.gateway_holdings (gateway_id, shard, rooms, users, \
                     connections) VALUES (?, ?, ?, ?, ?) USING TTL ?"
                ),
                true,
            )
            .await?,
            // A range delete: one range tombstone, only when a gateway's snapshot shrank.
            trim_holdings: prepare(
                format!("DELETE FROM {ks}.gateway_holdings WHERE gateway_id = ? AND shard >= ?"),
                true,
            )
            .await?,
            gateway_holdings: {
                let mut statement = prepare(
                    format!(
                        "SELECT rooms, users, connections FROM {ks}.gateway_holdings \
                         WHERE gateway_id = ?"
                    ),
                    true,
                )
                .await?;
                statement.set_page_size(SNAPSHOT_PAGE_ROWS);
                statement
            },
            // One partition tombstone for the whole snapshot of a reaped gateway.
            clear_holdings: prepare(
                format!("DELETE FROM {ks}.gateway_holdings WHERE gateway_id = ?"),
                true,
            )
            .await?,
        };

        let session = Arc::new(session);
        let room_lookups = lookups(
            session.clone(),
            statements.room_gateways.clone(),
            format!("scylla room_gateways ({ks}.room_gateways)"),
        );
        let user_lookups = lookups(
            session.clone(),
            statements.user_gateways.clone(),
            format!("scylla user_gateways ({ks}.user_gateways)"),
        );
        Ok(Self {
            session,
            keyspace: ks.to_owned(),
            statements,
            room_lookups,
            user_lookups,
            snapshot_shards: Mutex::new(HashMap::new()),
        })
    }

    /// The keyspace this registry uses.
    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    /// Drops this registry's keyspace and everything in it: for tests, which each use a
    /// keyspace of their own. Not available to the binaries.
    #[cfg(any(test, feature = "test-support"))]
    pub async fn drop_keyspace(&self) -> Result<()> {
        let mut statement = Statement::new(format!("DROP KEYSPACE IF EXISTS {}", self.keyspace));
        statement.set_request_timeout(Some(SCHEMA_TIMEOUT));
        self.session
            .query_unpaged(statement, ())
            .await
            .map(drop)
            .map_err(|e| {
                Error::RegistryUnavailable(format!("scylla: drop keyspace {}: {e}", self.keyspace))
            })
    }

    /// Runs a prepared statement; a failure names the operation and the table.
    async fn run(
        &self,
        op: &str,
        table: &str,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<QueryResult> {
        self.session
            .execute_unpaged(statement, values)
            .await
            .map_err(|e| self.unavailable(op, table, e))
    }

    fn unavailable(&self, op: &str, table: &str, e: impl Display) -> Error {
        Error::RegistryUnavailable(format!("scylla {op} ({}.{table}): {e}", self.keyspace))
    }

    /// Runs a statement that returns rows and deserializes every row as `R`.
    async fn rows<R>(
        &self,
        op: &str,
        table: &str,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Vec<R>>
    where
        R: for<'f> scylla::deserialize::row::DeserializeRow<'f, 'f>,
    {
        fetch_rows(&self.session, statement, values)
            .await
            .map_err(|e| self.unavailable(op, table, e))
    }

    /// Runs an LWT and reads its `[applied]` column. Cassandra answers `[applied]` first,
    /// followed by the current values when not applied; ScyllaDB may add the old values in
    /// both cases: the column is looked up by name, the rest ignored.
    async fn applied(
        &self,
        op: &str,
        table: &str,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<bool> {
        let result = self.run(op, table, statement, values).await?;
        let rows = result
            .into_rows_result()
            .map_err(|e| self.unavailable(op, table, e))?;
        let index = rows
            .column_specs()
            .get_by_name("[applied]")
            .map(|(i, _)| i)
            .ok_or_else(|| self.unavailable(op, table, "LWT answer without [applied]"))?;
        let row: Row = rows
            .first_row()
            .map_err(|e| self.unavailable(op, table, e))?;
        match row.columns.get(index) {
            Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
            other => Err(self.unavailable(
                op,
                table,
                format!("LWT [applied] is not a boolean: {other:?}"),
            )),
        }
    }

    /// Writes the snapshot of a gateway's holdings (the heartbeat's index): every shard,
    /// with the rows' TTL, then deletes the shards past the last one if this process does
    /// not know that there are none (first heartbeat here, or fewer shards than last time).
    async fn write_snapshot(
        &self,
        gateway_id: &str,
        holdings: &Holdings,
        ttl: Duration,
    ) -> Result<()> {
        let (op, table) = ("refresh", "gateway_holdings");
        let shards = snapshot_shards(holdings);
        let ttl = ttl_seconds(ttl);
        let count = shards.len();
        let shards = &shards;
        // Indexes and boxed futures, as in `refresh` (async_trait's `Send` lifetime check).
        let write = move |i: usize| -> BoxFuture<'_, Result<()>> {
            Box::pin(async move {
                let Some(shard) = shards.get(i) else {
                    return Ok(());
                };
                let index = i32::try_from(i).unwrap_or(i32::MAX);
                let values = (
                    gateway_id,
                    index,
                    &shard.rooms,
                    &shard.users,
                    &shard.connections,
                    ttl,
                );
                let statement = &self.statements.put_holdings;
                self.run(op, table, statement, values).await.map(drop)
            })
        };
        stream::iter(0..count)
            .map(write)
            .buffer_unordered(REFRESH_CONCURRENCY)
            .try_for_each(|()| async { Ok(()) })
            .await?;
        let previous = self.snapshot_shards.lock().get(gateway_id).copied();
        if previous.is_none_or(|previous| previous > count) {
            let first_surplus = i32::try_from(count).unwrap_or(i32::MAX);
            self.run(
                op,
                table,
                &self.statements.trim_holdings,
                (gateway_id, first_surplus),
            )
            .await?;
        }
        self.snapshot_shards
            .lock()
            .insert(gateway_id.to_owned(), count);
        Ok(())
    }

    /// The gateway ids under `key`, through the table's batcher.
    async fn lookup(&self, lookups: &Lookups, table: &str, key: &str) -> Result<Vec<String>> {
        lookups
            .submit(key.to_owned())
            .await
            .unwrap_or_else(|| Err(self.unavailable(table, table, "the lookup was lost")))
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
        self.run(
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
        self.run(
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
            .rows("gateways", "gateways", &self.statements.gateways, ())
            .await?;
        Ok(rows.into_iter().map(gateway_record).collect())
    }

    async fn put_connection(&self, c: &ConnectionRecord, ttl: Duration) -> Result<()> {
        self.run(
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
        )
        .await
        .map(drop)
    }

    async fn remove_connection(&self, connection_id: &str) -> Result<()> {
        self.run(
            "remove_connection",
            "connections",
            &self.statements.remove_connection,
            (connection_id,),
        )
        .await
        .map(drop)
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
        self.run(
            "add_room_gateway",
            "room_gateways",
            &self.statements.add_room_gateway,
            (room_id, gateway_id, ttl_seconds(ttl)),
        )
        .await
        .map(drop)
    }

    async fn remove_room_gateway(&self, room_id: &str, gateway_id: &str) -> Result<()> {
        self.run(
            "remove_room_gateway",
            "room_gateways",
            &self.statements.remove_room_gateway,
            (room_id, gateway_id),
        )
        .await
        .map(drop)
    }

    async fn room_gateways(&self, room_id: &str) -> Result<Vec<String>> {
        self.lookup(&self.room_lookups, "room_gateways", room_id)
            .await
    }

    async fn add_user_gateway(&self, user_id: &str, gateway_id: &str, ttl: Duration) -> Result<()> {
        self.run(
            "add_user_gateway",
            "user_gateways",
            &self.statements.add_user_gateway,
            (user_id, gateway_id, ttl_seconds(ttl)),
        )
        .await
        .map(drop)
    }

    async fn remove_user_gateway(&self, user_id: &str, gateway_id: &str) -> Result<()> {
        self.run(
            "remove_user_gateway",
            "user_gateways",
            &self.statements.remove_user_gateway,
            (user_id, gateway_id),
        )
        .await
        .map(drop)
    }

    async fn user_gateways(&self, user_id: &str) -> Result<Vec<String>> {
        self.lookup(&self.user_lookups, "user_gateways", user_id)
            .await
    }

    async fn put_token(&self, t: &TokenRecord) -> Result<()> {
        self.run(
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
        self.applied(
            "set_fast_verifier",
            "tokens",
            &self.statements.set_fast_verifier,
            (verifier, user_id, room_id, token_hash),
        )
        .await
    }

    async fn delete_token(&self, user_id: &str, room_id: &str) -> Result<bool> {
        self.applied(
            "delete_token",
            "tokens",
            &self.statements.delete_token,
            (user_id, room_id),
        )
        .await
    }

    /// The snapshot the gateway's last heartbeat wrote: every shard of its partition, read
    /// a page of [`SNAPSHOT_PAGE_ROWS`] shards at a time, concatenated. Keys opened since
    /// that heartbeat are not in it.
    async fn gateway_keys(&self, gateway_id: &str) -> Result<GatewayKeys> {
        let (op, table) = ("gateway_keys", "gateway_holdings");
        type Shard = (
            Option<Vec<String>>,
            Option<Vec<String>>,
            Option<Vec<String>>,
        );
        let shards: Vec<Shard> = self
            .session
            .execute_iter(self.statements.gateway_holdings.clone(), (gateway_id,))
            .await
            .map_err(|e| self.unavailable(op, table, e))?
            .rows_stream::<Shard>()
            .map_err(|e| self.unavailable(op, table, e))?
            .try_collect()
            .await
            .map_err(|e| self.unavailable(op, table, e))?;
        let mut keys = GatewayKeys::default();
        for (rooms, users, connections) in shards {
            keys.rooms.extend(rooms.unwrap_or_default());
            keys.users.extend(users.unwrap_or_default());
            keys.connections.extend(connections.unwrap_or_default());
        }
        Ok(keys)
    }

    async fn clear_gateway_keys(&self, gateway_id: &str) -> Result<()> {
        self.run(
            "clear_gateway_keys",
            "gateway_holdings",
            &self.statements.clear_holdings,
            (gateway_id,),
        )
        .await
        .map(drop)
    }

    /// The heartbeat. The gateway row first (it is what says "alive"), then the snapshot of
    /// the holdings (`gateway_holdings`, the reaper's index, before the rows it names), then
    /// every room, user and connection row with the new TTL, [`REFRESH_CONCURRENCY`] writes
    /// in flight.
    /// Single-partition writes in parallel rather than a multi-partition batch: each goes
    /// straight to its replicas (token-aware), no coordinator has to fan a big batch out.
    /// The first failure ends the refresh (the next heartbeat redoes it all), so a
    /// heartbeat against an unreachable cluster fails fast instead of failing 20,000 times.
    async fn refresh(
        &self,
        gateway: &GatewayRecord,
        holdings: &Holdings,
        ttl: Duration,
    ) -> Result<()> {
        self.upsert_gateway(gateway, ttl).await?;
        let gateway_id = gateway.gateway_id.as_str();
        self.write_snapshot(gateway_id, holdings, ttl).await?;
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

/// A gateway's holdings cut into snapshot shards of at most [`SNAPSHOT_SHARD_KEYS`] keys
/// in total, in order (rooms, then users, then connection ids). Always at least one shard,
/// empty when the gateway holds nothing, so that the snapshot says so.
fn snapshot_shards(holdings: &Holdings) -> Vec<GatewayKeys> {
    enum Kind {
        Room,
        User,
        Connection,
    }
    let keys = (holdings.rooms.iter().map(|k| (Kind::Room, k)))
        .chain(holdings.users.iter().map(|k| (Kind::User, k)))
        .chain((holdings.connections.iter()).map(|c| (Kind::Connection, &c.connection_id)));
    let mut shards = Vec::new();
    let mut shard = GatewayKeys::default();
    let mut in_shard = 0;
    for (kind, key) in keys {
        if in_shard == SNAPSHOT_SHARD_KEYS {
            shards.push(std::mem::take(&mut shard));
            in_shard = 0;
        }
        match kind {
            Kind::Room => shard.rooms.push(key.clone()),
            Kind::User => shard.users.push(key.clone()),
            Kind::Connection => shard.connections.push(key.clone()),
        }
        in_shard += 1;
    }
    shards.push(shard);
    shards
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_shards_hold_every_key_once_and_at_most_the_shard_size() {
        assert_eq!(
            snapshot_shards(&Holdings::default()),
            vec![GatewayKeys::default()]
        );
        let holdings = Holdings {
            rooms: (0..500).map(|i| format!("r{i}")).collect(),
            users: (0..700).map(|i| format!("u{i}")).collect(),
            connections: (0..1_800)
                .map(|i| ConnectionRecord {
                    connection_id: format!("c{i}"),
                    room_id: "r0".into(),
                    user_id: "u0".into(),
                    gateway_id: "g".into(),
                    connected_at: 1,
                    source_ip: "127.0.0.1".into(),
                    user_agent: "test".into(),
                })
                .collect(),
        };
        let shards = snapshot_shards(&holdings);
        assert_eq!(shards.len(), 3);
        let sizes: Vec<usize> = shards
            .iter()
            .map(|s| s.rooms.len() + s.users.len() + s.connections.len())
            .collect();
        assert_eq!(sizes, vec![1_000, 1_000, 1_000]);
        let mut all = GatewayKeys::default();
        for shard in shards {
            all.rooms.extend(shard.rooms);
            all.users.extend(shard.users);
            all.connections.extend(shard.connections);
        }
        assert_eq!(all.rooms, holdings.rooms);
        assert_eq!(all.users, holdings.users);
        assert_eq!(
            all.connections,
            (0..1_800).map(|i| format!("c{i}")).collect::<Vec<_>>()
        );
        // Exactly full: no empty trailing shard.
        let full = Holdings {
            rooms: (0..1_000).map(|i| format!("r{i}")).collect(),
            ..Holdings::default()
        };
        assert_eq!(snapshot_shards(&full).len(), 1);
    }

    #[test]
    fn ttl_rounds_up_to_whole_seconds_and_is_at_least_one() {
        assert_eq!(ttl_seconds(Duration::ZERO), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(1)), 1);
        assert_eq!(ttl_seconds(Duration::from_secs(30)), 30);
        assert_eq!(ttl_seconds(Duration::from_millis(30_001)), 31);
        assert_eq!(ttl_seconds(Duration::from_secs(u64::MAX)), MAX_TTL_SECONDS);
    }

    #[test]
    fn every_configurable_consistency_level_is_known() {
        for name in config::CONSISTENCY_LEVELS {
            assert!(consistency(name).is_ok(), "{name}");
        }
        assert!(consistency("SERIAL").is_err());
    }

    #[test]
    fn lwts_stay_in_the_local_dc_when_requests_do() {
        assert_eq!(
            serial_consistency(Consistency::LocalQuorum, false),
            SerialConsistency::LocalSerial
        );
        assert_eq!(
            serial_consistency(Consistency::Quorum, true),
            SerialConsistency::LocalSerial
        );
        assert_eq!(
            serial_consistency(Consistency::One, false),
            SerialConsistency::Serial
        );
    }

    #[test]
    fn epoch_milliseconds_survive_the_bigint_round_trip() {
        assert_eq!(
            from_bigint(Some(to_bigint(1_700_000_000_000))),
            1_700_000_000_000
        );
        assert_eq!(from_bigint(Some(-5)), 0);
        assert_eq!(from_bigint(None), 0);
    }
}
