//! P8 idle registry cost: what sockets that do nothing cost the registry database.
//!
//! One `hermes-gateway serve` on a ScyllaDB registry (the test CQL server, a fresh keyspace
//! dropped after the run, P7's start), N sockets of one user in one room opened and then left
//! idle. After a settle period the CQL server's own count of the writes it applied to each
//! table of the keyspace is read (`system_views.local_write_latency`: on a one-node server
//! every write is local), again after the window; the difference per socket and hour is the
//! figure (`registry_writes_per_socket_hour`). The gateway's `hermes_connections_open` is
//! read at both ends: the sockets must have stayed open. Hermes only: Centrifugo keeps no
//! per-connection rows in a database.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use serde_json::{Value, json};

use crate::holder::Holders;
use crate::p7::{Cluster, start_hermes};
use crate::servers::Options;

pub struct P8Args {
    pub sockets: usize,
    pub sources: Vec<IpAddr>,
    /// Seconds between the last connect and the first count.
    pub settle_seconds: u64,
    /// The window whose writes are counted.
    pub seconds: u64,
    /// `HERMES_REGISTRY_TTL_SECONDS` of the gateway (the default configuration's 30 unless
    /// told otherwise: the figure is about the default).
    pub registry_ttl_seconds: u64,
    /// The CQL contact points.
    pub scylla_nodes: String,
}

pub async fn p8(o: &Options, a: &P8Args) -> Result<Value> {
    if a.sockets == 0 || a.seconds == 0 || a.sources.is_empty() {
        bail!("--sockets, --seconds and --sources must not be zero or empty");
    }
    let cluster = start_hermes(o, 1, a.registry_ttl_seconds, &a.scylla_nodes).await?;
    let mut holders = None;
    let outcome = measure(&cluster, a, &mut holders).await;
    cluster.stop().await;
    if let Some(h) = holders {
        h.stop().await;
    }
    outcome
}

async fn measure(c: &Cluster, a: &P8Args, holders: &mut Option<Holders>) -> Result<Value> {
    let keyspace = c.keyspace.as_deref().context("the gateway's keyspace")?;
    let internal = c
        .internal_urls
        .first()
        .context("the gateway's internal URL")?;
    let target = c
        .targets
        .first()
        .context("the gateway's WebSocket target")?;
    let metrics_url = format!("{internal}/metrics");
    let http = reqwest::Client::new();
    let cql = SessionBuilder::new()
        .known_nodes(a.scylla_nodes.split(',').map(str::trim))
        .build()
        .await
        .context("connect to the CQL server")?;

    let h = holders.insert(Holders::start(target, a.sockets, &a.sources).await?);
    eprintln!(
        "[p8 hermes] {} sockets open ({} failed) in {:.1} s; settling {} s",
        h.open, h.failed, h.connect_seconds, a.settle_seconds
    );
    if h.open == 0 {
        bail!("no socket opened");
    }
    tokio::time::sleep(Duration::from_secs(a.settle_seconds)).await;
    let open_before = connections_open(&http, &metrics_url).await?;
    let before = writes(&cql, keyspace).await?;
    let started = Instant::now();
    eprintln!(
        "[p8 hermes] counting the writes to {keyspace} for {} s ({open_before} sockets open)",
        a.seconds
    );
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let after = writes(&cql, keyspace).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let open_after = connections_open(&http, &metrics_url).await?;
    if open_after < open_before {
        bail!("sockets closed during the window: {open_before} open before, {open_after} after");
    }
    let by_table: BTreeMap<&str, i64> = after
        .iter()
        .map(|(t, n)| (t.as_str(), n - before.get(t).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let total: i64 = by_table.values().sum();
    let per_socket_hour = total as f64 / open_after as f64 * 3600.0 / elapsed;
    eprintln!(
        "[p8 hermes] {total} writes in {elapsed:.0} s: {:.1}/s, {per_socket_hour:.1} per socket-hour ({by_table:?})",
        total as f64 / elapsed
    );
    Ok(json!({
        "scenario": "p8",
        "server": "hermes",
        "setup": format!(
            "1 x hermes-gateway serve, ScyllaDB registry on {} (keyspace {keyspace}, dropped after the run), {} idle sockets of one user in one room",
            a.scylla_nodes, open_after
        ),
        "sockets": open_after,
        "failed": h.failed,
        "registry_ttl_seconds": a.registry_ttl_seconds,
        "settle_seconds": a.settle_seconds,
        "window_seconds": elapsed,
        "writes": total,
        "writes_per_second": total as f64 / elapsed,
        "registry_writes_per_socket_hour": per_socket_hour,
        "writes_by_table": by_table,
        "counted_by": "the CQL server: system_views.local_write_latency, count per table of the run's keyspace",
    }))
}

/// The writes the CQL server has applied to each table of `keyspace` since it started.
async fn writes(cql: &Session, keyspace: &str) -> Result<BTreeMap<String, i64>> {
    let rows = cql
        .query_unpaged(
            "SELECT table_name, count FROM system_views.local_write_latency WHERE keyspace_name = ?",
            (keyspace,),
        )
        .await
        .context("read system_views.local_write_latency")?
        .into_rows_result()
        .context("read system_views.local_write_latency")?;
    let mut counts = BTreeMap::new();
    for row in rows
        .rows::<(String, i64)>()
        .context("rows of system_views.local_write_latency")?
    {
        let (table, count) = row.context("a row of system_views.local_write_latency")?;
        counts.insert(table, count);
    }
    Ok(counts)
}

/// The gateway's `hermes_connections_open`.
async fn connections_open(http: &reqwest::Client, url: &str) -> Result<u64> {
    let text = http
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("GET {url}"))?
        .text()
        .await
        .with_context(|| format!("GET {url}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("hermes_connections_open "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .with_context(|| format!("no hermes_connections_open in {url}"))
}
