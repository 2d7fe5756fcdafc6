//! `hermes-gateway migrate` and `hermes-gateway schema`: the registry's schema made by one
//! step before any replica starts (the chart's pre-install/pre-upgrade Job), or by a DBA
//! from a CQL script, so that replicas never race to create tables (concurrent `CREATE
//! TABLE` of one table on a fresh cluster can leave the nodes disagreeing on its id) and
//! can run with a login that may not CREATE (`HERMES_SCYLLA_SCHEMA=verify`).
//! Configuration: the `HERMES_SCYLLA_*` variables the replicas use, whatever
//! `HERMES_REGISTRY` says.

use hermes_shared::config::{Strings, stage};
use hermes_shared::registry::scylla::{self, ScyllaConfig};

use crate::Result;

fn config(strings: &dyn Strings) -> Result<ScyllaConfig> {
    Ok(ScyllaConfig::from_strings(strings, &stage(strings))?)
}

/// Creates the keyspace and the tables if absent, waiting for schema agreement after each,
/// and says so on stdout.
pub async fn migrate(strings: &dyn Strings) -> Result<()> {
    let config = config(strings)?;
    let tables = scylla::migrate(&config).await?;
    println!(
        "hermes-gateway migrate: keyspace {} with tables {} ready on {}",
        config.keyspace,
        tables.join(", "),
        config.nodes.join(",")
    );
    Ok(())
}

/// Prints the schema as CQL for the configured keyspace and replication.
pub fn schema(strings: &dyn Strings) -> Result<()> {
    let config = config(strings)?;
    print!(
        "{}",
        scylla::cql_script(&config.keyspace, &config.replication)
    );
    Ok(())
}
