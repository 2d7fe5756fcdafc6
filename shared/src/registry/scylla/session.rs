//! The session and the schema: contact points, credentials, token-aware and DC-aware load
//! balancing, the request timeout and the consistency levels; the keyspace and the seven
//! tables, created idempotently at connect.

use std::time::Duration;

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::statement::{Consistency, SerialConsistency, Statement};

use super::config::{SchemaMode, ScyllaConfig};
use crate::error::{Error, Result};

/// DDL (keyspace and tables) can take much longer than a read or a write: schema changes
/// are agreed on by every node. At least this long, or the request timeout if longer.
const SCHEMA_TIMEOUT: Duration = Duration::from_secs(60);

/// The tables, created with `CREATE TABLE IF NOT EXISTS` in the configured keyspace: name,
/// columns and key, options.
const TABLES: &[(&str, &str, &str)] = &[
    (
        "connections",
        "connection_id text PRIMARY KEY, room_id text, user_id text, gateway_id text, \
         connected_at bigint, source_ip text, user_agent text",
        "",
    ),
    (
        "room_gateways",
        "room_id text, gateway_id text, PRIMARY KEY (room_id, gateway_id)",
        "",
    ),
    (
        "user_gateways",
        "user_id text, gateway_id text, PRIMARY KEY (user_id, gateway_id)",
        "",
    ),
    (
        "gateways",
        "gateway_id text PRIMARY KEY, internal_url text, started_at bigint",
        "",
    ),
    (
        "tokens",
        "user_id text, room_id text, token_hash text, fast_verifier text, created_at bigint, \
         PRIMARY KEY ((user_id, room_id))",
        "",
    ),
    // The per-gateway index (`index.rs`): an entry per room, user and connection row a
    // gateway holds, written and deleted with the row, spread over 64 partitions per
    // gateway so that the tombstones of its deletes stay far from the read limit; a short
    // gc_grace (a resurrected entry only costs a reap one more check) and single-SSTable
    // tombstone compactions, so that they are purged soon after.
    (
        "gateway_index",
        "gateway_id text, shard int, kind text, key text, \
         PRIMARY KEY ((gateway_id, shard), kind, key)",
        " WITH gc_grace_seconds = 10800 AND compaction = {'class': \
         'SizeTieredCompactionStrategy', 'unchecked_tombstone_compaction': 'true', \
         'tombstone_compaction_interval': '3600'}",
    ),
    // The streams' short history (`history.rs`): a partition per stream and minute, rows
    // in position order, every row with a TTL and never deleted, so time-window compaction
    // drops whole expired files.
    (
        "history",
        "stream text, bucket bigint, micros bigint, writer int, id text, room_id text, \
         frame text, published_at bigint, PRIMARY KEY ((stream, bucket), micros, writer)",
        " WITH compaction = {'class': 'TimeWindowCompactionStrategy', \
         'compaction_window_unit': 'MINUTES', 'compaction_window_size': 10} \
         AND gc_grace_seconds = 3600",
    ),
];

/// Opens a session to the configured cluster; creates the keyspace and the tables if
/// absent, or with `HERMES_SCYLLA_SCHEMA=verify` checks that they exist.
pub(super) async fn open(config: &ScyllaConfig) -> Result<Session> {
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
        Error::registry(
            format!(
                "scylla: cannot connect to {} (keyspace {ks})",
                config.nodes.join(",")
            ),
            e,
        )
    })?;

    match config.schema {
        SchemaMode::Create => create_schema(&session, config).await?,
        SchemaMode::Verify => verify_schema(&session, &config.keyspace).await?,
    }
    Ok(session)
}

/// The names of the tables the registry uses, in creation order.
pub fn table_names() -> Vec<&'static str> {
    TABLES.iter().map(|(name, _, _)| *name).collect()
}

/// The schema as a CQL script, for a DBA who creates it by hand (a login for Hermes
/// without CREATE, `HERMES_SCYLLA_SCHEMA=verify`): `schema/hermes.cql` is this with the
/// keyspace `hermes` and the default replication.
pub fn cql_script(keyspace: &str, replication: &str) -> String {
    let mut script = format!(
        "-- The Hermes registry's schema, printed by `hermes-gateway schema` (docs/registry.md).\n\
         -- Edit the keyspace's name and replication to yours, then: cqlsh -f hermes.cql\n\n\
         CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {replication};\n"
    );
    for (table, columns, options) in TABLES {
        script.push_str(&format!(
            "\nCREATE TABLE IF NOT EXISTS {keyspace}.{table} ({columns}){options};\n"
        ));
    }
    script
}

/// Creates the keyspace and the tables if absent (`hermes-gateway migrate`), whatever
/// `config.schema` says; answers the tables' names.
pub async fn migrate(config: &ScyllaConfig) -> Result<Vec<&'static str>> {
    let config = ScyllaConfig {
        schema: SchemaMode::Create,
        ..config.clone()
    };
    open(&config).await?;
    Ok(table_names())
}

/// `CREATE ... IF NOT EXISTS` of the keyspace and every table.
async fn create_schema(session: &Session, config: &ScyllaConfig) -> Result<()> {
    let ks = config.keyspace.as_str();
    // Idempotent, so every replica may run it at every start. The driver waits
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
        .map_err(|e| Error::registry(format!("scylla: create keyspace {ks}"), e))?;
    for (table, columns, options) in TABLES {
        session
            .query_unpaged(
                ddl(format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.{table} ({columns}){options}"
                )),
                (),
            )
            .await
            .map_err(|e| Error::registry(format!("scylla: create table {ks}.{table}"), e))?;
    }
    Ok(())
}

/// Checks that the keyspace and every table exist, without DDL: a missing one fails the
/// start with what to do.
async fn verify_schema(session: &Session, keyspace: &str) -> Result<()> {
    let rows = session
        .query_unpaged(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
            (keyspace,),
        )
        .await
        .map_err(|e| Error::registry(format!("scylla: read the tables of {keyspace}"), e))?
        .into_rows_result()
        .map_err(|e| Error::registry(format!("scylla: read the tables of {keyspace}"), e))?;
    let present: Vec<String> = rows
        .rows::<(String,)>()
        .map_err(|e| Error::registry(format!("scylla: read the tables of {keyspace}"), e))?
        .filter_map(|row| row.ok().map(|(name,)| name))
        .collect();
    let missing: Vec<&str> = table_names()
        .into_iter()
        .filter(|t| !present.iter().any(|p| p == t))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::Config(format!(
        "HERMES_SCYLLA_SCHEMA=verify: keyspace {keyspace} lacks the table(s) {}: run \
         `hermes-gateway migrate` once (a login allowed to CREATE), or have a DBA apply \
         `hermes-gateway schema` (schema/hermes.cql), or set HERMES_SCYLLA_SCHEMA=create",
        missing.join(", ")
    )))
}

/// Drops `keyspace` and everything in it (tests only).
#[cfg(any(test, feature = "test-support"))]
pub(super) async fn drop_keyspace(session: &Session, keyspace: &str) -> Result<()> {
    let mut statement = Statement::new(format!("DROP KEYSPACE IF EXISTS {keyspace}"));
    statement.set_request_timeout(Some(SCHEMA_TIMEOUT));
    session
        .query_unpaged(statement, ())
        .await
        .map(drop)
        .map_err(|e| Error::registry(format!("scylla: drop keyspace {keyspace}"), e))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_cql_script_is_the_schema_the_code_creates() {
        let committed = include_str!("../../../../schema/hermes.cql");
        let current = cql_script(
            "hermes",
            "{'class': 'SimpleStrategy', 'replication_factor': 1}",
        );
        assert_eq!(
            committed, current,
            "schema/hermes.cql is stale: HERMES_SCYLLA_KEYSPACE=hermes hermes-gateway schema > schema/hermes.cql"
        );
    }

    #[test]
    fn every_configurable_consistency_level_is_known() {
        for name in super::super::config::CONSISTENCY_LEVELS {
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
}
