//! The streams' short history in CQL: table `history`, a partition per stream and minute
//! (`bucket`), rows clustered by position (`micros`, `writer`), each written with the
//! history TTL and never deleted. A read after a position walks the buckets from the
//! position's minute to now, one partition read each, until it has the rows it may
//! return.

use std::time::Duration;

use scylla::statement::prepared::PreparedStatement;

use super::statements::{Cql, ttl_seconds};
use crate::error::{Error, Result};
use crate::history::{HistoryEntry, HistoryPage, Pos, now_micros};

/// The width of a bucket: a minute of positions.
const BUCKET_MICROS: u64 = 60_000_000;

/// The buckets a read walks at most (a week of minutes: the longest history TTL).
const MAX_BUCKETS: u64 = 7 * 24 * 60 + 1;

type HistoryRow = (
    i64,
    i32,
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
);

/// The prepared statements of the history table.
pub(super) struct HistoryStatements {
    append: PreparedStatement,
    read: PreparedStatement,
}

impl HistoryStatements {
    pub(super) async fn prepare(cql: &Cql) -> Result<Self> {
        let ks = &cql.keyspace;
        let prepare = async |text: String| {
            let mut statement = cql
                .session
                .prepare(text.as_str())
                .await
                .map_err(|e| Error::registry(format!("scylla: prepare {text:?}"), e))?;
            // The same entry written twice is the same row: retrying is safe.
            statement.set_is_idempotent(true);
            Ok::<_, Error>(statement)
        };
        Ok(Self {
            append: prepare(format!(
                "INSERT INTO {ks}.history (stream, bucket, micros, writer, id, room_id, frame, \
                 published_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?"
            ))
            .await?,
            read: prepare(format!(
                "SELECT micros, writer, id, room_id, frame, published_at FROM {ks}.history \
                 WHERE stream = ? AND bucket = ? AND (micros, writer) > (?, ?) LIMIT ?"
            ))
            .await?,
        })
    }

    pub(super) async fn append(
        &self,
        cql: &Cql,
        entry: &HistoryEntry,
        ttl: Duration,
    ) -> Result<()> {
        cql.run(
            "append_history",
            "history",
            &self.append,
            (
                &entry.stream,
                bucket(entry.pos.micros),
                micros(entry.pos.micros),
                writer_to_cql(entry.pos.writer),
                &entry.id,
                &entry.room_id,
                &entry.frame,
                entry
                    .published_at
                    .map(|ms| i64::try_from(ms).unwrap_or(i64::MAX)),
                ttl_seconds(ttl),
            ),
        )
        .await
        .map(drop)
    }

    pub(super) async fn read(
        &self,
        cql: &Cql,
        stream: &str,
        after: Pos,
        limit: usize,
    ) -> Result<HistoryPage> {
        let wanted = limit.saturating_add(1);
        let first = u64::try_from(bucket(after.micros)).unwrap_or(0);
        let last = u64::try_from(bucket(now_micros())).unwrap_or(0);
        let first = first.max(last.saturating_sub(MAX_BUCKETS));
        let mut entries = Vec::new();
        for b in first..=last {
            if entries.len() >= wanted {
                break;
            }
            let room = i32::try_from(wanted - entries.len()).unwrap_or(i32::MAX);
            let rows: Vec<HistoryRow> = cql
                .rows(
                    "read_history",
                    "history",
                    &self.read,
                    (
                        stream,
                        i64::try_from(b).unwrap_or(i64::MAX),
                        micros(after.micros),
                        writer_to_cql(after.writer),
                        room,
                    ),
                )
                .await?;
            entries.extend(rows.into_iter().map(
                |(micros, writer, id, room_id, frame, published_at)| HistoryEntry {
                    stream: stream.to_owned(),
                    pos: Pos {
                        micros: u64::try_from(micros).unwrap_or(0),
                        writer: writer_from_cql(writer),
                    },
                    id,
                    room_id,
                    frame: frame.unwrap_or_default(),
                    published_at: published_at.and_then(|ms| u64::try_from(ms).ok()),
                },
            ));
        }
        let complete = entries.len() <= limit;
        entries.truncate(limit);
        Ok(HistoryPage { entries, complete })
    }
}

/// The bucket of a position: its minute since the epoch.
fn bucket(micros: u64) -> i64 {
    i64::try_from(micros / BUCKET_MICROS).unwrap_or(i64::MAX)
}

/// A writer id as CQL's signed `int`, in the same order (the sign bit flipped), so that
/// rows cluster, and `(micros, writer) > (?, ?)` compares, as positions do.
fn writer_to_cql(writer: u32) -> i32 {
    i32::from_ne_bytes((writer ^ 0x8000_0000).to_ne_bytes())
}

fn writer_from_cql(writer: i32) -> u32 {
    u32::from_ne_bytes(writer.to_ne_bytes()) ^ 0x8000_0000
}

fn micros(micros: u64) -> i64 {
    i64::try_from(micros).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_is_a_minute_of_positions() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(59_999_999), 0);
        assert_eq!(bucket(60_000_000), 1);
    }

    #[test]
    fn writer_ids_survive_cqls_signed_int_in_order() {
        let writers = [0u32, 1, 0x7fff_ffff, 0x8000_0000, 0x8000_0001, u32::MAX];
        for w in writers {
            assert_eq!(writer_from_cql(writer_to_cql(w)), w);
        }
        for pair in writers.windows(2) {
            assert!(writer_to_cql(pair[0]) < writer_to_cql(pair[1]), "{pair:?}");
        }
    }
}
