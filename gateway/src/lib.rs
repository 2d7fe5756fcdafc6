//! `hermes-gateway`: holds the browsers' WebSockets.
//!
//! It authenticates each upgrade (`upgrade`), runs one task per socket (`session`), keeps
//! its sockets indexed by room and user (`hub`), registers them in the registry, delivers
//! pushes routed to it (`internal`, and `stream` for routers' deliver streams), serves the admin API (`admin`), and drains on
//! SIGTERM (`server`). `hermes-gateway standalone` adds the demo page (`standalone`).
//!
//! It must not know about queues: the consumer owns those.

pub mod access_log;
pub mod admin;
pub mod close;
pub mod config;
pub mod hub;
pub mod internal;
pub mod server;
pub mod session;
pub mod standalone;
pub mod state;
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
