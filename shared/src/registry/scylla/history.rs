//! The streams' short history in CQL: table `history`, a partition per stream and minute
//! (`bucket`), rows clustered by position (`micros`, `writer`), each written with the
//! history TTL and never deleted. A read after a position walks the buckets from the
//! position's minute to now, one partition read each, until it has the rows it may
//! return.
//!
//! Appends are batched naturally ([`Batcher`]): a lone append is one `INSERT` sent at once;
//! those that arrive while [`APPENDS_IN_FLIGHT`] requests are out share the next requests,
//! each an `UNLOGGED BATCH` of at most [`BATCH_PARTITIONS`] partitions and
//! [`BATCH_BYTES`] of values (under Cassandra's default warning thresholds, so no batch
//! ever draws a warning into the log). Every notification is on the server before its
//! caller's append returns, as with one `INSERT` each. Measured (`hermes-bench
//! history-bytes`, bench/README.md): at 5,000 appends/s a request carries about 4 rows, and
//! about 7 when appends come as fast as they can be written (18,600 a second here).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::join_all;
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;

use super::statements::{Cql, ttl_seconds};
use crate::batch::Batcher;
use crate::error::{Error, Result};
use crate::history::{HistoryEntry, HistoryPage, Pos, now_micros};

/// Appends taken from the queue at once (split further into batches by the bounds below).
const APPENDS_PER_TURN: usize = 256;
/// Append requests in flight at once; appends beyond wait and go in the next requests.
const APPENDS_IN_FLIGHT: usize = 4;
/// Partitions one batch touches at most: Cassandra warns above 10
/// (`unlogged_batch_across_partitions_warn_threshold`).
const BATCH_PARTITIONS: usize = 10;
/// The bytes of values one batch carries at most: Cassandra warns above 5 KiB
/// (`batch_size_warn_threshold`). A larger entry goes alone as a plain `INSERT`.
const BATCH_BYTES: usize = 5 * 1024 - 512;

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

/// The prepared statements of the history table, and the batcher of its appends.
pub(super) struct HistoryStatements {
    appends: Batcher<(HistoryEntry, Duration), Result<()>>,
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
        let append = prepare(format!(
            "INSERT INTO {ks}.history (stream, bucket, micros, writer, id, room_id, frame, \
             published_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?"
        ))
        .await?;
        let context = format!("scylla append_history ({ks}.history)");
        let session = cql.session.clone();
        Ok(Self {
            appends: Batcher::new(
                APPENDS_PER_TURN,
                APPENDS_IN_FLIGHT,
                Arc::new(move |items: Vec<(HistoryEntry, Duration)>| {
                    let (session, append, context) =
                        (session.clone(), append.clone(), context.clone());
                    async move { write_appends(&session, &append, &context, items).await }.boxed()
                }),
            ),
            read: prepare(format!(
                "SELECT micros, writer, id, room_id, frame, published_at FROM {ks}.history \
                 WHERE stream = ? AND bucket = ? AND (micros, writer) > (?, ?) LIMIT ?"
            ))
            .await?,
        })
    }

    /// Writes one entry, alone or in a batch with the appends that arrived with it.
    pub(super) async fn append(&self, entry: &HistoryEntry, ttl: Duration) -> Result<()> {
        self.appends
            .submit((entry.clone(), ttl))
            .await
            .unwrap_or_else(|| {
                Err(Error::registry_answer(
                    "scylla append_history: the write was lost (the runtime is shutting down)",
                ))
            })
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

/// One entry's values for the append statement.
type AppendRow<'a> = (
    &'a str,
    i64,
    i64,
    i32,
    &'a str,
    &'a Option<String>,
    &'a str,
    Option<i64>,
    i32,
);

fn append_row((entry, ttl): &(HistoryEntry, Duration)) -> AppendRow<'_> {
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
        ttl_seconds(*ttl),
    )
}

/// The bytes an entry's values take in a batch (what Cassandra's size threshold counts):
/// its columns' and an allowance of 12 for the TTL (4) and the statement's framing.
fn value_bytes(entry: &HistoryEntry) -> usize {
    entry.column_bytes() + 12
}

/// Splits the appends into groups (index ranges, in order) that each fit one batch: at
/// most [`BATCH_PARTITIONS`] partitions and [`BATCH_BYTES`] of values; an entry larger
/// than that alone is a group of one (sent as a plain `INSERT`).
fn groups(items: &[(HistoryEntry, Duration)]) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    let mut partitions: HashSet<(&str, i64)> = HashSet::new();
    for (i, (entry, _)) in items.iter().enumerate() {
        let size = value_bytes(entry);
        let partition = (entry.stream.as_str(), bucket(entry.pos.micros));
        let new_partition = !partitions.contains(&partition);
        let full = i > start
            && (bytes + size > BATCH_BYTES
                || (new_partition && partitions.len() >= BATCH_PARTITIONS));
        if full {
            groups.push(start..i);
            start = i;
            bytes = 0;
            partitions.clear();
        }
        bytes += size;
        partitions.insert(partition);
    }
    if start < items.len() {
        groups.push(start..items.len());
    }
    groups
}

/// Writes the appends taken in one turn: one request per group, all at once; every entry
/// answers with its own group's result.
async fn write_appends(
    session: &Session,
    append: &PreparedStatement,
    context: &str,
    items: Vec<(HistoryEntry, Duration)>,
) -> Vec<Result<()>> {
    let groups = groups(&items);
    let requests = groups.iter().map(|range| {
        let group = &items[range.clone()];
        async move {
            if let [one] = group {
                session.execute_unpaged(append, append_row(one)).await
            } else {
                let mut batch = Batch::new(BatchType::Unlogged);
                for _ in group {
                    batch.append_statement(append.clone());
                }
                // The same entries written again are the same rows: retrying is safe.
                batch.set_is_idempotent(true);
                let rows: Vec<AppendRow<'_>> = group.iter().map(append_row).collect();
                session.batch(&batch, rows).await
            }
        }
    });
    let answers = join_all(requests).await;
    let mut results = Vec::with_capacity(items.len());
    for (range, answer) in groups.iter().zip(answers) {
        match answer {
            Ok(_) => results.extend(range.clone().map(|_| Ok(()))),
            Err(cause) => {
                // One failed request answers every entry in it with the driver's error.
                let cause: Arc<dyn std::error::Error + Send + Sync> = Arc::new(cause);
                results.extend(range.clone().map(|_| {
                    Err(Error::RegistryUnavailable {
                        context: context.to_owned(),
                        source: Some(Box::new(cause.clone())),
                    })
                }));
            }
        }
    }
    results
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

    fn entry(stream: &str, minute: u64, frame_len: usize) -> (HistoryEntry, Duration) {
        let entry = HistoryEntry {
            stream: stream.to_owned(),
            pos: Pos {
                micros: minute * BUCKET_MICROS,
                writer: 1,
            },
            id: "m".to_owned(),
            room_id: None,
            frame: "x".repeat(frame_len),
            published_at: None,
        };
        (entry, Duration::from_secs(60))
    }

    #[test]
    fn a_batch_touches_at_most_ten_partitions_and_keeps_the_order() {
        let items: Vec<_> = (0..25).map(|i| entry(&format!("u:{i}"), 0, 10)).collect();
        assert_eq!(groups(&items), vec![0..10, 10..20, 20..25]);
        // Entries of one partition do not count twice; another minute is another partition.
        let mut items: Vec<_> = (0..30).map(|_| entry("r:a", 0, 10)).collect();
        items.extend((0..10).map(|i| entry("r:a", i + 1, 10)));
        assert_eq!(groups(&items), vec![0..39, 39..40]);
    }

    #[test]
    fn a_batch_stays_under_the_size_warning_and_a_large_entry_goes_alone() {
        let items: Vec<_> = (0..8).map(|_| entry("r:a", 0, 1_000)).collect();
        let split = groups(&items);
        assert!(split.len() > 1, "{split:?}");
        for range in &split {
            let bytes: usize = items[range.clone()]
                .iter()
                .map(|(e, _)| value_bytes(e))
                .sum();
            assert!(bytes <= BATCH_BYTES, "{range:?}: {bytes}");
        }
        let items = vec![
            entry("r:a", 0, 10),
            entry("r:a", 0, 20_000),
            entry("r:a", 0, 10),
        ];
        assert_eq!(groups(&items), vec![0..1, 1..2, 2..3]);
        assert!(groups(&[]).is_empty());
    }

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
