//! `hermes-shared`: what the gateway and the consumer both need, and nothing else.
//!
//! It owns the configuration (`config`), the wire types (`wire`), authentication
//! (`auth`: JWT, token hashing, bcrypt on a bounded pool, fast verifiers), the
//! connection registry (`registry`: the trait, its in-memory implementation and a
//! client for a registry served by another process), the router (`router`: resolve a
//! message's targets, group them by gateway, deliver over a link per gateway — one
//! WebSocket, the deliver stream, or HTTP), the natural batcher both the router and the
//! Scylla registry use (`batch`) and the Prometheus metrics (`metrics`).
//!
//! It must not hold sockets, HTTP servers or queue clients: those belong to the binaries.

pub mod auth;
pub mod batch;
pub mod config;
pub mod error;
pub mod history;
pub mod ids;
/// Stand-in HTTP peers on loopback for tests and the bench.
#[cfg(any(test, feature = "test-support"))]
pub mod loopback_http;
pub mod metrics;
pub mod process;
pub mod registry;
pub mod router;
pub mod routes;
pub mod wire;

pub use error::{Error, Result};
