//! `hermes-consumer`: pulls messages from RabbitMQ or SQS (`source`: `source::amqp`,
//! `source::sqs`), validates them (`processor`, the sources' sink), routes each to the
//! gateways holding its targets through the shared `Router`, and acknowledges a message only
//! once its routing outcome is known.
//!
//! Outcomes: delivered → ack; transient failure (registry down, a gateway not answering)
//! → retried after a backoff delay, dead-lettered after `HERMES_MAX_ATTEMPTS`; invalid
//! message → dead-lettered at once with the reason. Nothing is dropped silently.
//!
//! It must not hold sockets: gateways do.

pub mod config;
pub mod kube;
pub mod processor;
pub mod run;
pub mod source;

/// Errors of the consumer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Shared(#[from] hermes_shared::Error),
    #[error("broker: {0}")]
    Broker(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("kubernetes: {context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: ::kube::Error,
    },
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("server failed: {0}")]
    Server(#[from] std::io::Error),
}

/// `Result` with the consumer's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
