//! What an authentication answers: who the connection belongs to ([`Identity`]) and how
//! that was established ([`AuthPath`]), or why the connect is refused ([`AuthError`]).

/// Who a connection belongs to, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub room_id: String,
    /// JWT expiry, seconds since the epoch.
    pub exp: u64,
}

/// How an accepted connect was verified (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthPath {
    Cache,
    JwtOnly,
    FastVerifier,
    Bcrypt,
}

impl AuthPath {
    pub fn label(self) -> &'static str {
        match self {
            AuthPath::Cache => "cache",
            AuthPath::JwtOnly => "jwt_only",
            AuthPath::FastVerifier => "fast_verifier",
            AuthPath::Bcrypt => "bcrypt",
        }
    }
}

/// Why a connect was refused. Each maps to an HTTP status and a message a developer
/// can act on; none of them contains the token. [`AuthError::Unavailable`] keeps the
/// registry's or the pool's error as its source.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no token: pass ?token=<JWT> or Sec-WebSocket-Protocol: hermes.v1, bearer.<JWT>")]
    Missing,
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("the token's algorithm {0} is not allowed (allowed: {1})")]
    WrongAlgorithm(String, String),
    #[error("the token's signature does not match the shared secret")]
    BadSignature,
    #[error("the token has expired; request a new one")]
    Expired,
    #[error("the token has no `exp` claim; tokens must expire")]
    MissingExp,
    #[error("no token is registered for this user and room (create one with POST /v1/tokens)")]
    NoTokenRow,
    #[error("the token does not match the one registered for this user and room")]
    Mismatch,
    #[error(
        "the token was revoked: while this connect was checked, or before it was issued again; request a new one"
    )]
    Revoked,
    #[error("the Origin {0:?} is not allowed to connect")]
    OriginNotAllowed(String),
    #[error("token verification is busy; retry after {0} s")]
    Overloaded(u64),
    #[error("token verification is unavailable: {0}")]
    Unavailable(#[source] crate::error::Error),
}

impl AuthError {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Missing
            | AuthError::Malformed(_)
            | AuthError::WrongAlgorithm(..)
            | AuthError::BadSignature
            | AuthError::Expired
            | AuthError::MissingExp => 401,
            AuthError::NoTokenRow
            | AuthError::Mismatch
            | AuthError::Revoked
            | AuthError::OriginNotAllowed(_) => 403,
            AuthError::Overloaded(_) | AuthError::Unavailable(_) => 503,
        }
    }

    /// A stable machine-readable code (error bodies and metric labels).
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::Malformed(_) => "token_malformed",
            AuthError::WrongAlgorithm(..) => "token_algorithm",
            AuthError::BadSignature => "token_signature",
            AuthError::Expired => "token_expired",
            AuthError::MissingExp => "token_no_exp",
            AuthError::NoTokenRow => "token_not_registered",
            AuthError::Mismatch => "token_mismatch",
            AuthError::Revoked => "token_revoked",
            AuthError::OriginNotAllowed(_) => "origin_not_allowed",
            AuthError::Overloaded(_) => "overloaded",
            AuthError::Unavailable(_) => "unavailable",
        }
    }

    /// Seconds for `Retry-After`, when the refusal is temporary.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            AuthError::Overloaded(s) => Some(*s),
            AuthError::Unavailable(_) => Some(1),
            _ => None,
        }
    }
}
