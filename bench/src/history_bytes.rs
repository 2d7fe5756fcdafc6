//! What one history entry costs the CQL server in memory and on disk.
//!
//! Appends `entries` notifications, each with its own `data` of `data_bytes` (a JSON string
//! of random base64 characters: about as incompressible as notification text gets, so the
//! disk figure is an upper bound for real payloads, which compress better), to `streams`
//! user streams (each entry also names its room, as a user stream's entries do) through the
//! ScyllaDB
//! registry's own append path (`Registry::append_history`: the batched unlogged writes the
//! router makes), in a fresh keyspace, with the history's default TTL. Then it reads the
//! table's memtable size (`nodetool tablestats`), has the server flush it (`nodetool
//! flush`), and reads the SSTables' live bytes and compression ratio: the bytes one entry
//! takes in the memtable and on disk, per replica. The CQL server's CPU over the appends
//! (the `java` processes', as P3 counts it) gives its CPU per entry at the rate the appends
//! ran. The keyspace is dropped at the end.
//! Hermes only (Centrifugo's history lives in Redis or memory, not in a CQL table).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt as _;
use hermes_shared::history::{Clock, HistoryEntry, user_stream};
use hermes_shared::registry::Registry as _;
use hermes_shared::registry::scylla::ScyllaRegistry;
use hermes_shared::wire::Frame;
use serde_json::{Value, json};

use crate::measure::{Watch, pids_named, ticks};

/// What to write (`hermes-bench history-bytes --help`).
#[derive(clap::Args)]
pub struct HistoryBytesArgs {
    /// Entries to append.
    #[arg(long, default_value_t = 200_000)]
    pub entries: usize,
    /// Bytes of each notification's `data` (a JSON string of that length, quotes included).
    #[arg(long, default_value_t = 200)]
    pub data_bytes: usize,
    /// User streams the entries go to, in turn.
    #[arg(long, default_value_t = 10_000)]
    pub streams: usize,
    /// Appends per second (0: as fast as the registry's batcher takes them). The CQL
    /// server's CPU per entry depends on the rate (batches are smaller at a lower one).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// CQL contact points of the registry.
    #[arg(
        long,
        env = "HERMES_TEST_SCYLLA_NODES",
        default_value = "127.0.0.1:9042"
    )]
    pub scylla_nodes: String,
    /// The command that runs `nodetool` against that server (its arguments follow).
    #[arg(long, default_value = "scripts/services/cassandra.sh nodetool")]
    pub nodetool: String,
}

/// The history TTL the entries are written with: the default `HERMES_HISTORY_TTL_SECONDS`,
/// far longer than a run, so that nothing expires before it is counted.
const TTL: Duration = Duration::from_secs(300);

/// Appends in flight at once (the consumer's default concurrency).
const CONCURRENCY: usize = 64;

pub async fn history_bytes(a: &HistoryBytesArgs) -> Result<Value> {
    if a.entries == 0 || a.streams == 0 || a.data_bytes < 2 {
        bail!("--entries and --streams must be positive and --data-bytes at least 2");
    }
    let keyspace = format!("hermes_bench_history_bytes_{}", std::process::id());
    let config = hermes_e2e::scylla_config_at(&a.scylla_nodes, &keyspace, Duration::from_secs(30));
    let registry = Arc::new(
        ScyllaRegistry::connect(&config)
            .await
            .map_err(|e| anyhow::anyhow!("connect to the CQL server: {e}"))?,
    );
    let outcome = measure(&registry, &keyspace, a).await;
    if let Err(e) = registry.drop_keyspace().await {
        eprintln!("[history-bytes] could not drop the keyspace {keyspace}: {e}");
    }
    outcome
}

async fn measure(
    registry: &Arc<ScyllaRegistry>,
    keyspace: &str,
    a: &HistoryBytesArgs,
) -> Result<Value> {
    let clock = Clock::new();
    let mut random = Base64Noise(u64::from(std::process::id()) | 1);
    let mut value_bytes = 0usize;
    let mut frame_bytes = 0usize;
    let entries: Vec<HistoryEntry> = (0..a.entries)
        .map(|i| {
            let data = format!("\"{}\"", random.text(a.data_bytes - 2));
            let data = serde_json::value::RawValue::from_string(data)?;
            let frame = Frame::notification("bench-publisher", &data)
                .as_str()
                .to_owned();
            frame_bytes = frame.len();
            let entry = HistoryEntry {
                stream: user_stream(&format!("bench-user-{:06}", i % a.streams)),
                pos: clock.next(),
                id: hermes_shared::ids::new_message_id(),
                room_id: Some(format!("bench-room-{:04}", i % 1_000)),
                frame,
                published_at: Some(hermes_shared::ids::now_millis()),
            };
            value_bytes += entry.column_bytes();
            Ok(entry)
        })
        .collect::<Result<_>>()?;
    let watch: Watch = vec![("cassandra", pids_named("java"))];
    let ticks_before = ticks(&watch);
    let started = Instant::now();
    let rate = a.rate;
    let failures = futures_util::stream::iter(entries.into_iter().enumerate())
        .then(|(i, entry)| async move {
            if rate > 0 {
                let due = Duration::from_secs_f64(i as f64 / rate as f64);
                tokio::time::sleep_until((started + due).into()).await;
            }
            entry
        })
        .map(|entry| {
            let registry = registry.clone();
            async move { registry.append_history(&entry, TTL, usize::MAX).await }
        })
        .buffer_unordered(CONCURRENCY)
        .filter(|r| std::future::ready(r.is_err()))
        .count()
        .await;
    if failures > 0 {
        bail!("{failures} of {} appends failed", a.entries);
    }
    let write_seconds = started.elapsed().as_secs_f64();
    // Clock ticks are 1/100 s on Linux (CLK_TCK).
    let cql_cpu_seconds = ticks(&watch)[0].saturating_sub(ticks_before[0]) as f64 / 100.0;

    let table = format!("{keyspace}.history");
    let before = tablestats(&a.nodetool, &table).await?;
    nodetool(&a.nodetool, &["flush", keyspace, "history"]).await?;
    let after = tablestats(&a.nodetool, &table).await?;
    let n = a.entries as f64;
    let live = stat(&after, "Space used (live)")?;
    Ok(json!({
        "scenario": "history_bytes",
        "entries": a.entries,
        "streams": a.streams,
        "data_bytes": a.data_bytes,
        "frame_bytes": frame_bytes,
        "value_bytes_per_entry": value_bytes as f64 / n,
        "memtable_bytes_per_entry": stat(&before, "Memtable data size")? / n,
        "memtable_off_heap_bytes_per_entry": stat(&before, "Memtable off heap memory used")? / n,
        "disk_bytes_per_entry": live / n,
        "sstable_compression_ratio": stat(&after, "SSTable Compression Ratio")?,
        "partitions_estimate": stat(&after, "Number of partitions (estimate)")?,
        "rate": a.rate,
        "write_seconds": write_seconds,
        "appends_per_second": n / write_seconds,
        "cql_server_cpu_us_per_entry": cql_cpu_seconds * 1e6 / n,
        "ttl_seconds": TTL.as_secs(),
        "how": "Registry::append_history into a fresh keyspace; nodetool tablestats before and after nodetool flush",
    }))
}

/// Random text of base64 characters (xorshift64: no dependency, and random enough to leave
/// a compressor little to find).
struct Base64Noise(u64);

impl Base64Noise {
    fn text(&mut self, len: usize) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        (0..len)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                char::from(ALPHABET[(self.0 >> 58) as usize])
            })
            .collect()
    }
}

async fn nodetool(command: &str, args: &[&str]) -> Result<String> {
    let mut words = command.split_whitespace();
    let program = words.next().context("--nodetool is empty")?;
    let output = tokio::process::Command::new(program)
        .args(words)
        .args(args)
        .output()
        .await
        .with_context(|| format!("run {command} {}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "{command} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

async fn tablestats(command: &str, table: &str) -> Result<String> {
    nodetool(command, &["tablestats", table]).await
}

/// The number after `name:` in `nodetool tablestats` output.
fn stat(text: &str, name: &str) -> Result<f64> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(name))
        .filter_map(|rest| rest.trim_start().strip_prefix(':'))
        .find_map(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no {name:?} in nodetool tablestats:\n{text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLESTATS: &str = "Total number of tables: 8\n----------------\nKeyspace : ks\n\
        \tTable: history\n\tSSTable count: 1\n\tSpace used (live): 31736468\n\
        \tSpace used (total): 40000000\n\tSSTable Compression Ratio: 0.41234\n\
        \tNumber of partitions (estimate): 168427\n\tMemtable cell count: 76302\n\
        \tMemtable data size: 0\n\tMemtable off heap memory used: 1048576\n";

    #[test]
    fn tablestats_figures_are_read_by_their_exact_name() {
        let read = |name: &str| stat(TABLESTATS, name).expect(name);
        assert_eq!(read("Space used (live)"), 31_736_468.0);
        assert_eq!(read("SSTable Compression Ratio"), 0.41234);
        assert_eq!(read("Number of partitions (estimate)"), 168_427.0);
        assert_eq!(read("Memtable data size"), 0.0);
        assert_eq!(read("Memtable off heap memory used"), 1_048_576.0);
        let missing = stat(TABLESTATS, "Space used by snapshots")
            .expect_err("a figure the output does not have");
        assert!(format!("{missing:#}").contains("Space used by snapshots"));
    }
}
