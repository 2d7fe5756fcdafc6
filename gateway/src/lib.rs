//! `hermes-gateway`: holds the browsers' WebSockets.
//!
//! - `upgrade`: the `$connect` route, the authorizer in front of a socket;
//! - `session`: a socket's life: admit (hub + registry rows), its task, release;
//! - `ws`: the WebSocket plumbing on actix-http (`accept`, the `Outbox` body, `Incoming`);
//! - `hub`: the sockets indexed by connection, room and user, and local delivery;
//! - `deliver`: the deliver handler, built once, behind the in-process router, `internal`
//!   (`POST /internal/v1/deliver*`) and `stream` (routers' deliver streams);
//! - `admin`: the admin API; `standalone`: the demo page; `browser_client`: `/hermes.js`;
//! - `error` (`HttpError`, every HTTP refusal) and `extract` (admin key, internal secret,
//!   `@connections` callers); `sigv4`: AWS Signature Version 4 on `@connections`;
//! - `server`: start, heartbeat, drain; `config`, `state`, `close`, `access_log`;
//!   `token_cmd`: the `token` subcommand; `import_tokens`: the `import-tokens` subcommand.
//!
//! It must not know about queues: the consumer owns those.

pub mod access_log;
pub mod admin;
pub mod admin_metrics;
pub mod browser_client;
pub mod close;
pub mod config;
pub mod dedup;
pub mod deliver;
pub mod error;
pub mod extract;
pub mod hub;
pub mod import_tokens;
pub mod internal;
pub mod routes;
pub mod schema_cmd;
pub mod server;
pub mod session;
pub mod sigv4;
pub mod standalone;
pub mod state;
pub mod stray_upgrade;
pub mod stream;
pub mod token_cmd;
pub mod upgrade;
pub mod ws;

/// Errors of the gateway library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Shared(#[from] hermes_shared::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Server(#[from] std::io::Error),
}

impl Error {
    /// True for a bad or missing setting (the binary exits 64 on those).
    pub fn is_config(&self) -> bool {
        matches!(self, Error::Shared(hermes_shared::Error::Config(_)))
    }
}

/// `Result` with the gateway's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
