//! The crate's error type.

use std::time::Duration;

/// Everything that can go wrong in `hermes-shared`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is missing or invalid. The message names the variable.
    #[error("{0}")]
    Config(String),

    /// The registry could not answer (network, timeout, server error).
    #[error("registry unavailable: {0}")]
    RegistryUnavailable(String),

    /// A gateway's internal deliver API failed or could not be reached.
    #[error("gateway {gateway_id} unreachable: {reason}")]
    GatewayUnreachable { gateway_id: String, reason: String },

    /// The bcrypt pool is saturated; retry after the given delay.
    #[error("token verification is overloaded, retry in {retry_after:?}")]
    Overloaded { retry_after: Duration },

    /// An input (message, request body) is invalid. The message names the field.
    #[error("{0}")]
    Invalid(String),

    /// Hashing or signing failed for an internal reason.
    #[error("crypto failure: {0}")]
    Crypto(String),
}

impl Error {
    /// A short label for Prometheus metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::RegistryUnavailable(_) => "registry_unavailable",
            Error::GatewayUnreachable { .. } => "gateway_unreachable",
            Error::Overloaded { .. } => "overloaded",
            Error::Invalid(_) => "invalid",
            Error::Crypto(_) => "crypto",
        }
    }

    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::RegistryUnavailable(_)
                | Error::GatewayUnreachable { .. }
                | Error::Overloaded { .. }
        )
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
