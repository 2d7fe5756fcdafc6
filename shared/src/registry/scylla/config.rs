//! How to reach ScyllaDB and how to use it: `HERMES_SCYLLA_*` (docs/configuration.md,
//! docs/registry.md).

use std::time::Duration;

use crate::config::{Strings, num};
use crate::error::{Error, Result};

// The variables. Each is documented in docs/configuration.md.
pub const SCYLLA_NODES: &str = "HERMES_SCYLLA_NODES";
pub const SCYLLA_KEYSPACE: &str = "HERMES_SCYLLA_KEYSPACE";
pub const SCYLLA_REPLICATION: &str = "HERMES_SCYLLA_REPLICATION";
pub const SCYLLA_CONSISTENCY: &str = "HERMES_SCYLLA_CONSISTENCY";
pub const SCYLLA_LOCAL_DC: &str = "HERMES_SCYLLA_LOCAL_DC";
pub const SCYLLA_USERNAME: &str = "HERMES_SCYLLA_USERNAME";
pub const SCYLLA_PASSWORD: &str = "HERMES_SCYLLA_PASSWORD";
pub const SCYLLA_TIMEOUT: &str = "HERMES_SCYLLA_TIMEOUT_MS";
pub const SCYLLA_SCHEMA: &str = "HERMES_SCYLLA_SCHEMA";

/// What a process does about the keyspace and tables when it connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchemaMode {
    /// `create` (default): `CREATE ... IF NOT EXISTS` of the keyspace and every table.
    #[default]
    Create,
    /// `verify`: no DDL (for a login without CREATE, and for pods whose schema a single
    /// step made before them: `hermes-gateway migrate`, or a DBA from `schema/hermes.cql`);
    /// fails at start, naming what is missing, unless the keyspace and every table exist.
    Verify,
}

/// CQL consistency levels accepted by `HERMES_SCYLLA_CONSISTENCY`.
pub const CONSISTENCY_LEVELS: &[&str] = &[
    "ONE",
    "TWO",
    "THREE",
    "QUORUM",
    "ALL",
    "LOCAL_QUORUM",
    "EACH_QUORUM",
    "LOCAL_ONE",
];

/// How to reach ScyllaDB and how to use it.
#[derive(Clone, PartialEq, Eq)]
pub struct ScyllaConfig {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// Keyspace, default `hermes_<stage>` (non-alphanumerics become `_`).
    pub keyspace: String,
    /// The CQL replication map used when the keyspace is created.
    pub replication: String,
    /// One of [`CONSISTENCY_LEVELS`], for reads and writes.
    pub consistency: String,
    /// Datacenter to prefer (DC-aware, token-aware load balancing).
    pub local_dc: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// Create the schema at connect, or only check that it exists.
    pub schema: SchemaMode,
}

impl std::fmt::Debug for ScyllaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaConfig")
            .field("nodes", &self.nodes)
            .field("keyspace", &self.keyspace)
            .field("replication", &self.replication)
            .field("consistency", &self.consistency)
            .field("local_dc", &self.local_dc)
            .field("username", &self.username)
            .field("request_timeout", &self.request_timeout)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl ScyllaConfig {
    /// Reads `HERMES_SCYLLA_*`; the keyspace defaults to `hermes_<stage>`.
    pub fn from_strings(s: &dyn Strings, stage: &str) -> Result<Self> {
        let nodes: Vec<String> = s
            .get(SCYLLA_NODES)
            .unwrap_or_else(|| "127.0.0.1:9042".into())
            .split(',')
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        if nodes.is_empty() {
            return Err(Error::Config(format!("{SCYLLA_NODES}: the list is empty")));
        }
        for n in &nodes {
            if n.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(Error::Config(format!(
                    "{SCYLLA_NODES}: {n:?} must be host:port"
                )));
            }
        }
        let keyspace = s.get(SCYLLA_KEYSPACE).unwrap_or_else(|| {
            let stage: String = stage
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '_'
                    }
                })
                .collect();
            format!("hermes_{stage}")
        });
        if keyspace.is_empty()
            || keyspace.len() > 48
            || !keyspace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            || !keyspace.starts_with(|c: char| c.is_ascii_alphabetic())
        {
            return Err(Error::Config(format!(
                "{SCYLLA_KEYSPACE}: {keyspace:?} must be a letter then up to 47 letters, digits or '_'"
            )));
        }
        let replication = s
            .get(SCYLLA_REPLICATION)
            .unwrap_or_else(|| "{'class': 'SimpleStrategy', 'replication_factor': 1}".into());
        if !(replication.trim_start().starts_with('{') && replication.trim_end().ends_with('}'))
            || replication.contains(';')
        {
            return Err(Error::Config(format!(
                "{SCYLLA_REPLICATION}: must be a CQL map like {{'class': 'NetworkTopologyStrategy', 'dc1': 3}}"
            )));
        }
        let consistency = s
            .get(SCYLLA_CONSISTENCY)
            .unwrap_or_else(|| "LOCAL_QUORUM".into())
            .to_ascii_uppercase();
        if !CONSISTENCY_LEVELS.contains(&consistency.as_str()) {
            return Err(Error::Config(format!(
                "{SCYLLA_CONSISTENCY}: {consistency:?} must be one of {}",
                CONSISTENCY_LEVELS.join(", ")
            )));
        }
        let username = s.get(SCYLLA_USERNAME);
        let password = s.get(SCYLLA_PASSWORD);
        if username.is_some() != password.is_some() {
            return Err(Error::Config(format!(
                "{SCYLLA_USERNAME} and {SCYLLA_PASSWORD}: set both or neither"
            )));
        }
        Ok(ScyllaConfig {
            nodes,
            keyspace,
            replication,
            consistency,
            local_dc: s.get(SCYLLA_LOCAL_DC),
            username,
            password,
            request_timeout: Duration::from_millis(num(s, SCYLLA_TIMEOUT, 2_000u64)?.max(1)),
            schema: match s.get(SCYLLA_SCHEMA).as_deref().map(str::trim) {
                None | Some("" | "create") => SchemaMode::Create,
                Some("verify") => SchemaMode::Verify,
                Some(other) => {
                    return Err(Error::Config(format!(
                        "{SCYLLA_SCHEMA}: {other:?} must be create or verify"
                    )));
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::registry::config::{REGISTRY, RegistryKind};

    #[test]
    fn scylla_registry_defaults_to_a_keyspace_per_stage() {
        let env = HashMap::from([(REGISTRY, "scylla")]);
        let RegistryKind::Scylla(sc) =
            RegistryKind::from_strings(&env, "blue-green").expect("valid")
        else {
            panic!("scylla expected")
        };
        assert_eq!(sc.keyspace, "hermes_blue_green");
        assert_eq!(sc.nodes, vec!["127.0.0.1:9042".to_owned()]);
        assert_eq!(sc.consistency, "LOCAL_QUORUM");
        for (key, value) in [
            (SCYLLA_NODES, "nohost"),
            (SCYLLA_CONSISTENCY, "SOME"),
            (SCYLLA_KEYSPACE, "9lives"),
            (SCYLLA_REPLICATION, "{'class': 'x'}; DROP TABLE t"),
            (SCYLLA_USERNAME, "only-user"),
        ] {
            let mut env = env.clone();
            env.insert(key, value);
            let err = RegistryKind::from_strings(&env, "production")
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(key), "{key}={value}: {err}");
        }
    }

    #[test]
    fn debug_output_hides_the_password() {
        let env = HashMap::from([
            (SCYLLA_USERNAME, "hermes"),
            (SCYLLA_PASSWORD, "hunter2-password"),
        ]);
        let c = ScyllaConfig::from_strings(&env, "production").expect("valid");
        assert_eq!(c.password.as_deref(), Some("hunter2-password"));
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
