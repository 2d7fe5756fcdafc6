//! The per-gateway index the Kubernetes reaper reads (`gateway_holdings`): a snapshot of a
//! gateway's holdings, rewritten whole by every heartbeat as a few shards of frozen lists
//! under the gateway's partition, and read back whole.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{self, StreamExt as _, TryStreamExt as _};
use parking_lot::Mutex;

use super::statements::{Cql, Statements, ttl_seconds};
use crate::error::Result;
use crate::registry::{GatewayKeys, Holdings};

/// At most this many keys (rooms, users and connections together) in one shard of a
/// gateway's holdings snapshot, so that no cell is large (1,000 ids of ~40 bytes: ~40 kB).
pub const SNAPSHOT_SHARD_KEYS: usize = 1_000;

/// Snapshot shards fetched per page by `gateway_keys` (each up to
/// [`SNAPSHOT_SHARD_KEYS`] keys).
pub(super) const SNAPSHOT_PAGE_ROWS: i32 = 16;

/// Writes and reads the snapshots; remembers how many shards this process last wrote per
/// gateway, so that a heartbeat deletes the surplus shards only when the count went down (or
/// is not known yet).
#[derive(Default)]
pub(super) struct Snapshots {
    shards_written: Mutex<HashMap<String, usize>>,
}

impl Snapshots {
    /// Writes the snapshot of a gateway's holdings (the heartbeat's index): every shard,
    /// with the rows' TTL, then deletes the shards past the last one if this process does
    /// not know that there are none (first heartbeat here, or fewer shards than last time).
    /// `in_flight` shard writes at once.
    pub(super) async fn write(
        &self,
        cql: &Cql,
        statements: &Statements,
        gateway_id: &str,
        holdings: &Holdings,
        ttl: Duration,
        in_flight: usize,
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
                let statement = &statements.put_holdings;
                cql.run(op, table, statement, values).await.map(drop)
            })
        };
        stream::iter(0..count)
            .map(write)
            .buffer_unordered(in_flight)
            .try_for_each(|()| async { Ok(()) })
            .await?;
        let previous = self.shards_written.lock().get(gateway_id).copied();
        if previous.is_none_or(|previous| previous > count) {
            let first_surplus = i32::try_from(count).unwrap_or(i32::MAX);
            cql.run(
                op,
                table,
                &statements.trim_holdings,
                (gateway_id, first_surplus),
            )
            .await?;
        }
        self.shards_written
            .lock()
            .insert(gateway_id.to_owned(), count);
        Ok(())
    }

    /// The snapshot the gateway's last heartbeat wrote: every shard of its partition, read
    /// a page of [`SNAPSHOT_PAGE_ROWS`] shards at a time, concatenated. Keys opened since
    /// that heartbeat are not in it.
    pub(super) async fn read(
        &self,
        cql: &Cql,
        statements: &Statements,
        gateway_id: &str,
    ) -> Result<GatewayKeys> {
        let (op, table) = ("gateway_keys", "gateway_holdings");
        type Shard = (
            Option<Vec<String>>,
            Option<Vec<String>>,
            Option<Vec<String>>,
        );
        let shards: Vec<Shard> = cql
            .session
            .execute_iter(statements.gateway_holdings.clone(), (gateway_id,))
            .await
            .map_err(|e| cql.unavailable(op, table, e))?
            .rows_stream::<Shard>()
            .map_err(|e| cql.unavailable(op, table, e))?
            .try_collect()
            .await
            .map_err(|e| cql.unavailable(op, table, e))?;
        let mut keys = GatewayKeys::default();
        for (rooms, users, connections) in shards {
            keys.rooms.extend(rooms.unwrap_or_default());
            keys.users.extend(users.unwrap_or_default());
            keys.connections.extend(connections.unwrap_or_default());
        }
        Ok(keys)
    }
}

/// A gateway's holdings cut into snapshot shards of at most [`SNAPSHOT_SHARD_KEYS`] keys
/// in total, in order (rooms, then users, then connection ids). Always at least one shard,
/// empty when the gateway holds nothing, so that the snapshot says so.
pub(super) fn snapshot_shards(holdings: &Holdings) -> Vec<GatewayKeys> {
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
    use crate::registry::ConnectionRecord;

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
}
