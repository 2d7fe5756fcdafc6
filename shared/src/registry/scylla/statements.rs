//! The CQL of every registry operation, prepared once at connect, the values bound to it,
//! and how a statement is run: a failure names the operation and the table.

use std::sync::Arc;
use std::time::Duration;

use scylla::client::session::Session;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};

use super::index::INDEX_PAGE_ROWS;
use crate::error::{Cause, Error, Result};

/// The largest TTL CQL accepts: 20 years, in seconds.
const MAX_TTL_SECONDS: i32 = 630_720_000;

/// One prepared statement per registry operation, prepared once at connect.
pub(super) struct Statements {
    pub(super) upsert_gateway: PreparedStatement,
    pub(super) remove_gateway: PreparedStatement,
    pub(super) gateway: PreparedStatement,
    pub(super) gateways: PreparedStatement,
    pub(super) put_connection: PreparedStatement,
    pub(super) remove_connection: PreparedStatement,
    pub(super) connection: PreparedStatement,
    pub(super) add_room_gateway: PreparedStatement,
    pub(super) remove_room_gateway: PreparedStatement,
    pub(super) room_gateways: PreparedStatement,
    pub(super) add_user_gateway: PreparedStatement,
    pub(super) remove_user_gateway: PreparedStatement,
    pub(super) user_gateways: PreparedStatement,
    pub(super) put_token: PreparedStatement,
    pub(super) token: PreparedStatement,
    pub(super) set_fast_verifier: PreparedStatement,
    pub(super) delete_token: PreparedStatement,
    pub(super) put_index: PreparedStatement,
    pub(super) remove_index: PreparedStatement,
    pub(super) gateway_index: PreparedStatement,
    pub(super) clear_index: PreparedStatement,
}

impl Statements {
    /// Prepares every statement in keyspace `ks`.
    pub(super) async fn prepare(session: &Session, ks: &str) -> Result<Self> {
        let prepare = async |cql: String, idempotent: bool| -> Result<PreparedStatement> {
            let mut statement = session
                .prepare(cql.as_str())
                .await
                .map_err(|e| Error::registry(format!("scylla: prepare {cql:?}"), e))?;
            // Idempotent statements (upserts, deletes, reads) may be retried by the driver
            // after a timeout; LWTs may not (a retry could see its own write and say "not
            // applied").
            statement.set_is_idempotent(idempotent);
            Ok(statement)
        };
        Ok(Self {
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
            put_index: prepare(
                format!(
                    "INSERT INTO {ks}.gateway_index (gateway_id, shard, kind, key) \
                     VALUES (?, ?, ?, ?) USING TTL ?"
                ),
                true,
            )
            .await?,
            remove_index: prepare(
                format!(
                    "DELETE FROM {ks}.gateway_index WHERE gateway_id = ? AND shard = ? \
                     AND kind = ? AND key = ?"
                ),
                true,
            )
            .await?,
            gateway_index: {
                let mut statement = prepare(
                    format!(
                        "SELECT kind, key FROM {ks}.gateway_index \
                         WHERE gateway_id = ? AND shard = ?"
                    ),
                    true,
                )
                .await?;
                statement.set_page_size(INDEX_PAGE_ROWS);
                statement
            },
            // One partition tombstone per shard of a reaped gateway's index.
            clear_index: prepare(
                format!("DELETE FROM {ks}.gateway_index WHERE gateway_id = ? AND shard = ?"),
                true,
            )
            .await?,
        })
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
pub(super) fn to_bigint(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// A CQL `bigint` back to milliseconds since the epoch (a negative value reads as 0).
pub(super) fn from_bigint(v: Option<i64>) -> u64 {
    v.and_then(|v| u64::try_from(v).ok()).unwrap_or(0)
}

/// The session and the keyspace it works in: how a prepared statement is run, its rows read
/// and an LWT's answer told, every failure naming the operation and the table.
pub(super) struct Cql {
    pub(super) session: Arc<Session>,
    pub(super) keyspace: String,
}

impl Cql {
    /// Runs a prepared statement; a failure names the operation and the table.
    pub(super) async fn run(
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

    /// `scylla {op} ({keyspace}.{table})`: what a failure names.
    fn context(&self, op: &str, table: &str) -> String {
        format!("scylla {op} ({}.{table})", self.keyspace)
    }

    /// The driver failed `op` on `table` with `e`.
    pub(super) fn unavailable(
        &self,
        op: &str,
        table: &str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error::registry(self.context(op, table), e)
    }

    /// The server answered `op` on `table` with something unusable, as `what` says.
    fn bad_answer(&self, op: &str, table: &str, what: &str) -> Error {
        Error::registry_answer(format!("{}: {what}", self.context(op, table)))
    }

    /// Runs a statement that returns rows and deserializes every row as `R`.
    pub(super) async fn rows<R>(
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
            .map_err(|cause| Error::RegistryUnavailable {
                context: self.context(op, table),
                source: Some(cause),
            })
    }

    /// Runs an LWT and reads its `[applied]` column. Cassandra answers `[applied]` first,
    /// followed by the current values when not applied; ScyllaDB may add the old values in
    /// both cases: the column is looked up by name, the rest ignored.
    pub(super) async fn applied(
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
            .ok_or_else(|| self.bad_answer(op, table, "LWT answer without [applied]"))?;
        let row: Row = rows
            .first_row()
            .map_err(|e| self.unavailable(op, table, e))?;
        match row.columns.get(index) {
            Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
            other => Err(self.bad_answer(
                op,
                table,
                &format!("LWT [applied] is not a boolean: {other:?}"),
            )),
        }
    }
}

/// Runs `statement` unpaged and deserializes every row as `R`; the error is the driver's
/// (executing, reading the rows or deserializing one).
pub(super) async fn fetch_rows<R>(
    session: &Session,
    statement: &PreparedStatement,
    values: impl SerializeRow,
) -> std::result::Result<Vec<R>, Cause>
where
    R: for<'f> scylla::deserialize::row::DeserializeRow<'f, 'f>,
{
    let result = session.execute_unpaged(statement, values).await?;
    let rows = result.into_rows_result()?;
    Ok(rows.rows::<R>()?.collect::<Result<Vec<R>, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_to_whole_seconds_and_is_at_least_one() {
        assert_eq!(ttl_seconds(Duration::ZERO), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(1)), 1);
        assert_eq!(ttl_seconds(Duration::from_secs(30)), 30);
        assert_eq!(ttl_seconds(Duration::from_millis(30_001)), 31);
        assert_eq!(ttl_seconds(Duration::from_secs(u64::MAX)), MAX_TTL_SECONDS);
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
