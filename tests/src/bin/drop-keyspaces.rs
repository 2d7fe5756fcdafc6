//! `drop-keyspaces PREFIX...`: drops every keyspace of the test CQL server
//! (`HERMES_TEST_SCYLLA_NODES`) whose name starts with one of the prefixes.
//!
//! Tests and benchmarks create a keyspace per test or run and leave it behind. Each one is a
//! set of tables, and a Cassandra node keeps per-table state on its heap: after a few
//! hundred of them the 1 GiB heap of `scripts/services/cassandra.sh` was full and the node
//! spent most of a core in back-to-back old-generation collections (700–1,300 ms each),
//! which showed up as the tail of every benchmark sharing the box. `scripts/test.sh` runs
//! this before and after its tests, `scripts/bench/run.sh` before P3 and P7.

use std::process::ExitCode;
use std::time::Duration;

use scylla::client::session_builder::SessionBuilder;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let prefixes: Vec<String> = std::env::args().skip(1).collect();
    if prefixes.is_empty()
        || prefixes
            .iter()
            .any(|p| p.is_empty() || p.starts_with("system"))
    {
        eprintln!("usage: drop-keyspaces PREFIX... (non-empty prefixes, never `system`)");
        return ExitCode::from(64);
    }
    match run(&prefixes).await {
        Ok(dropped) => {
            println!("drop-keyspaces: dropped {dropped} keyspace(s)");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("drop-keyspaces: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(prefixes: &[String]) -> Result<usize, String> {
    let nodes: Vec<String> = hermes_e2e::scylla_nodes()
        .split(',')
        .map(str::to_owned)
        .collect();
    let session = SessionBuilder::new()
        .known_nodes(&nodes)
        .connection_timeout(Duration::from_secs(5))
        .build()
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", nodes.join(",")))?;
    let names: Vec<String> = session
        .query_unpaged("SELECT keyspace_name FROM system_schema.keyspaces", ())
        .await
        .map_err(|e| e.to_string())?
        .into_rows_result()
        .map_err(|e| e.to_string())?
        .rows::<(String,)>()
        .map_err(|e| e.to_string())?
        .map(|row| row.map(|(name,)| name).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let mut dropped = 0;
    for name in names
        .iter()
        .filter(|n| prefixes.iter().any(|p| n.starts_with(p.as_str())))
    {
        // Names come from the server and are quoted: no CQL injection from a test's name.
        let cql = format!("DROP KEYSPACE IF EXISTS \"{}\"", name.replace('"', "\"\""));
        session
            .query_unpaged(cql, ())
            .await
            .map_err(|e| format!("cannot drop {name}: {e}"))?;
        dropped += 1;
    }
    Ok(dropped)
}
