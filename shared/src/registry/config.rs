//! Which registry the process uses: `HERMES_REGISTRY` and `HERMES_REGISTRY_URL`
//! (docs/configuration.md).

use super::scylla::config::ScyllaConfig;
use crate::config::Strings;
use crate::error::{Error, Result};

pub const REGISTRY: &str = "HERMES_REGISTRY";
pub const REGISTRY_URL: &str = "HERMES_REGISTRY_URL";

/// Which registry implementation the process uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryKind {
    /// In-process memory (standalone mode, unit tests).
    Memory,
    /// The embedded registry of another Hermes process, reached over its internal API
    /// (development and tests without a database).
    Remote { url: String },
    /// ScyllaDB (or any CQL server): production.
    Scylla(ScyllaConfig),
}

impl RegistryKind {
    /// Reads `HERMES_REGISTRY` and what the chosen registry needs.
    pub fn from_strings(s: &dyn Strings, stage: &str) -> Result<Self> {
        match s.get(REGISTRY).as_deref() {
            None | Some("memory") => Ok(RegistryKind::Memory),
            Some("remote") => match s.get(REGISTRY_URL) {
                Some(url) => Ok(RegistryKind::Remote {
                    url: url.trim_end_matches('/').to_owned(),
                }),
                None => Err(Error::Config(format!(
                    "{REGISTRY_URL}: required when {REGISTRY}=remote"
                ))),
            },
            Some("scylla") => Ok(RegistryKind::Scylla(ScyllaConfig::from_strings(s, stage)?)),
            Some(other) => Err(Error::Config(format!(
                "{REGISTRY}: {other:?} must be memory, remote or scylla"
            ))),
        }
    }
}
