//! The crate's error type.
//!
//! A variant caused by another error keeps it as its [`source`](std::error::Error::source)
//! (the driver's, the HTTP client's, the file system's), typed, instead of a copy of its
//! text. Its `Display` still ends with the cause's message, as it did when the cause was
//! formatted in: a log line or an HTTP error body that prints the error alone (`%error`)
//! keeps saying why, and code that needs the cause (is it a timeout?) downcasts `source()`.
//! A reporter that walks the source chain would print the cause twice; nothing in Hermes
//! does.

use std::fmt;
use std::time::Duration;

/// The error another error was caused by.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in `hermes-shared`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is missing or invalid. The message names the variable.
    #[error("{0}")]
    Config(String),

    /// A configuration value, file or client cannot be used because of another error (a URL
    /// that does not parse, a file that cannot be read, an HTTP client that cannot be built).
    /// The context names the variable or the client.
    #[error("{context}: {source}")]
    ConfigSource {
        context: String,
        #[source]
        source: Cause,
    },

    /// The registry could not answer (network, timeout, server error). The context names
    /// the operation (and, for CQL, the table); the source is the driver's or the HTTP
    /// client's error, absent when the answer itself was wrong (a status, a missing column).
    #[error("registry unavailable: {context}{}", Because(.source))]
    RegistryUnavailable {
        context: String,
        #[source]
        source: Option<Cause>,
    },

    /// A gateway's internal deliver API failed or could not be reached. The reason says
    /// what failed (a request, an answer); the source is the HTTP or WebSocket client's
    /// error, absent when the answer itself was wrong (a status, a count).
    #[error("gateway {gateway_id} unreachable: {reason}{}", Because(.source))]
    GatewayUnreachable {
        gateway_id: String,
        reason: String,
        #[source]
        source: Option<Cause>,
    },

    /// A gateway's internal API refused the request for good: the same request would be
    /// refused again (see [`Error::rejected`] for which statuses). `reason` is what the
    /// gateway said, clipped.
    #[error("gateway {gateway_id} rejected the request with {status}: {reason}")]
    GatewayRejected {
        gateway_id: String,
        status: u16,
        reason: String,
    },

    /// The bcrypt pool is saturated; retry after the given delay.
    #[error("token verification is overloaded, retry in {retry_after:?}")]
    Overloaded { retry_after: Duration },

    /// An input (message, request body) is invalid. The message names the field.
    #[error("{0}")]
    Invalid(String),

    /// An input is larger than its configured limit.
    #[error("field `{field}` is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        field: &'static str,
        size: usize,
        limit: usize,
    },

    /// Hashing or signing failed for an internal reason.
    #[error("crypto failure: {context}: {source}")]
    Crypto {
        context: &'static str,
        #[source]
        source: Cause,
    },
}

impl Error {
    /// The registry failed to answer `context` because of `source`.
    pub fn registry(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::RegistryUnavailable {
            context: context.into(),
            source: Some(Box::new(source)),
        }
    }

    /// The registry answered `context` with something unusable; `context` says what.
    pub fn registry_answer(context: impl Into<String>) -> Self {
        Error::RegistryUnavailable {
            context: context.into(),
            source: None,
        }
    }

    /// Gateway `gateway_id` could not be reached or answered wrongly; `reason` says how.
    pub fn unreachable(gateway_id: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::GatewayUnreachable {
            gateway_id: gateway_id.into(),
            reason: reason.into(),
            source: None,
        }
    }

    /// A request to gateway `gateway_id` (`reason` says which) failed because of `source`.
    pub fn unreachable_by(
        gateway_id: impl Into<String>,
        reason: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::GatewayUnreachable {
            gateway_id: gateway_id.into(),
            reason: reason.into(),
            source: Some(Box::new(source)),
        }
    }

    /// Gateway `gateway_id` answered `status` to a request, and would answer it again:
    /// 400 (the request is malformed), 401 and 403 (the internal secrets differ: a
    /// configuration error), 413 (the request is larger than the gateway accepts). Every
    /// other status (404, 408, 429, 5xx...) is [`Error::GatewayUnreachable`], transient:
    /// a gateway restarting or a rollout with two versions may answer them for a while.
    /// `reason` is the gateway's answer (the caller clips it).
    pub fn rejected(gateway_id: impl Into<String>, status: u16, reason: impl Into<String>) -> Self {
        Error::GatewayRejected {
            gateway_id: gateway_id.into(),
            status,
            reason: reason.into(),
        }
    }

    /// Whether a gateway answering `status` rejects the request for good (see
    /// [`Error::rejected`]).
    pub fn is_rejection(status: u16) -> bool {
        matches!(status, 400 | 401 | 403 | 413)
    }

    /// A configuration file or client (`context`) failed because of `source`.
    pub fn config_source(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::ConfigSource {
            context: context.into(),
            source: Box::new(source),
        }
    }

    /// Hashing or signing (`context`) failed because of `source`.
    pub fn crypto(
        context: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Crypto {
            context,
            source: Box::new(source),
        }
    }

    /// A short label for Prometheus metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Config(_) | Error::ConfigSource { .. } => "config",
            Error::RegistryUnavailable { .. } => "registry_unavailable",
            Error::GatewayUnreachable { .. } => "gateway_unreachable",
            Error::GatewayRejected { .. } => "gateway_rejected",
            Error::Overloaded { .. } => "overloaded",
            Error::Invalid(_) => "invalid",
            Error::TooLarge { .. } => "too_large",
            Error::Crypto { .. } => "crypto",
        }
    }

    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::RegistryUnavailable { .. }
                | Error::GatewayUnreachable { .. }
                | Error::Overloaded { .. }
        )
    }
}

/// `": <cause>"` when there is a cause, nothing otherwise.
struct Because<'a>(&'a Option<Cause>);

impl fmt::Display for Because<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(cause) => write!(f, ": {cause}"),
            None => Ok(()),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn a_cause_is_kept_typed_and_its_message_still_shown() {
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
        let e = Error::registry("scylla token (ks.tokens)", io);
        assert_eq!(
            e.to_string(),
            "registry unavailable: scylla token (ks.tokens): timed out"
        );
        let cause = e.source().expect("a source");
        assert_eq!(
            cause.downcast_ref::<std::io::Error>().map(|e| e.kind()),
            Some(std::io::ErrorKind::TimedOut)
        );
        assert!(e.is_transient());

        let e = Error::registry_answer("http://r/internal/v1/registry: 500 Internal Server Error");
        assert_eq!(
            e.to_string(),
            "registry unavailable: http://r/internal/v1/registry: 500 Internal Server Error"
        );
        assert!(e.source().is_none());

        let e = Error::config_source(
            "HERMES_CONFIG_FILE: cannot read /nope",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert_eq!(e.metric_label(), "config");
        assert!(
            e.to_string()
                .starts_with("HERMES_CONFIG_FILE: cannot read /nope: ")
        );
        assert!(!e.is_transient());
    }
}
