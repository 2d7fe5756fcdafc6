//! The per-gateway index the reaper reads (`gateway_index`): one row per room, user and
//! connection a gateway holds rows for, written with the row itself and deleted with it,
//! with the same TTL. It is never behind: a row that exists has its index entry (both are
//! written before the socket's 101), so a reaper finds every row of a dead gateway.
//!
//! A gateway's entries are spread over [`INDEX_SHARDS`] partitions (`(gateway_id,
//! shard)`, the shard from the key's [`stable_hash`]): deletes leave tombstones, and a
//! gateway with heavy churn must not pile them all into one partition that a reap has to
//! read through (a read that meets 100,000 tombstones fails: docs/registry.md). The
//! table's `gc_grace_seconds` is short (3 h): an entry whose delete is lost to a replica
//! down longer than that comes back, and a reap then checks the row it names and finds it
//! gone, which is harmless.

use futures_util::stream::{self, StreamExt as _, TryStreamExt as _};

use super::statements::{Cql, Statements, ttl_seconds};
use crate::error::Result;
use crate::registry::GatewayKeys;
use crate::registry::refresh::stable_hash;

/// Partitions per gateway in `gateway_index`.
pub const INDEX_SHARDS: i32 = 64;

/// Index rows fetched per page when a reap reads a gateway's index.
pub(super) const INDEX_PAGE_ROWS: i32 = 1_000;

/// What an index entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Room,
    User,
    Connection,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Room => "room",
            Kind::User => "user",
            Kind::Connection => "connection",
        }
    }
}

/// The shard of a key: the same in every process (the gateway writes the entry, a router
/// or the reaper may delete it).
pub(super) fn shard(key: &str) -> i32 {
    let shards = u64::try_from(INDEX_SHARDS).unwrap_or(1);
    i32::try_from(stable_hash(key) % shards).unwrap_or(0)
}

/// Writes the entry of `key` in `gateway_id`'s index with `ttl`.
pub(super) async fn put(
    cql: &Cql,
    statements: &Statements,
    gateway_id: &str,
    kind: Kind,
    key: &str,
    ttl: std::time::Duration,
) -> Result<()> {
    let values = (gateway_id, shard(key), kind.as_str(), key, ttl_seconds(ttl));
    cql.run("index_put", "gateway_index", &statements.put_index, values)
        .await
        .map(drop)
}

/// Deletes the entry of `key` from `gateway_id`'s index.
pub(super) async fn remove(
    cql: &Cql,
    statements: &Statements,
    gateway_id: &str,
    kind: Kind,
    key: &str,
) -> Result<()> {
    let values = (gateway_id, shard(key), kind.as_str(), key);
    cql.run(
        "index_remove",
        "gateway_index",
        &statements.remove_index,
        values,
    )
    .await
    .map(drop)
}

/// Every entry of `gateway_id`'s index: each shard read in pages of [`INDEX_PAGE_ROWS`],
/// the shards concurrently.
pub(super) async fn read(
    cql: &Cql,
    statements: &Statements,
    gateway_id: &str,
) -> Result<GatewayKeys> {
    let (op, table) = ("gateway_keys", "gateway_index");
    let read_shard = |shard: i32| async move {
        cql.session
            .execute_iter(statements.gateway_index.clone(), (gateway_id, shard))
            .await
            .map_err(|e| cql.unavailable(op, table, e))?
            .rows_stream::<(Option<String>, String)>()
            .map_err(|e| cql.unavailable(op, table, e))?
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| cql.unavailable(op, table, e))
    };
    let shards: Vec<Vec<(Option<String>, String)>> = stream::iter(0..INDEX_SHARDS)
        .map(read_shard)
        .buffered(usize::try_from(INDEX_SHARDS).unwrap_or(1))
        .try_collect()
        .await?;
    let mut keys = GatewayKeys::default();
    for (kind, key) in shards.into_iter().flatten() {
        match kind.as_deref() {
            Some("room") => keys.rooms.push(key),
            Some("user") => keys.users.push(key),
            Some("connection") => keys.connections.push(key),
            // A kind a later version added: not this version's to reap.
            _ => {}
        }
    }
    Ok(keys)
}

/// Deletes `gateway_id`'s whole index: one partition tombstone per shard.
pub(super) async fn clear(cql: &Cql, statements: &Statements, gateway_id: &str) -> Result<()> {
    stream::iter(0..INDEX_SHARDS)
        .map(|shard| {
            cql.run(
                "clear_gateway_keys",
                "gateway_index",
                &statements.clear_index,
                (gateway_id, shard),
            )
        })
        .buffer_unordered(usize::try_from(INDEX_SHARDS).unwrap_or(1))
        .try_for_each(|_| async { Ok(()) })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys spread over every shard, and a key's shard never changes (it is stored).
    #[test]
    fn keys_spread_over_every_shard_and_keep_theirs() {
        let mut per_shard = vec![0usize; usize::try_from(INDEX_SHARDS).expect("shards")];
        for i in 0..64_000 {
            let s = shard(&format!("0f8d2c1e-{i:08}"));
            assert!((0..INDEX_SHARDS).contains(&s));
            per_shard[usize::try_from(s).expect("shard")] += 1;
        }
        assert!(
            per_shard.iter().all(|n| (800..1_200).contains(n)),
            "{per_shard:?}"
        );
        assert_eq!(shard("a"), shard("a"));
        // FNV-1a("foobar") = 0x8594_4171_f739_67e8; mod 64 = 0x28.
        assert_eq!(shard("foobar"), 40);
    }
}
