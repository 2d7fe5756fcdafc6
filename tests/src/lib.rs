//! Harness of the end-to-end tests: where the real services are (set by
//! `scripts/services/up.sh` through `~/.cache/hermes/services.env`, read by the test
//! command) and helpers shared by the test files in `tests/tests/`.
//!
//! These tests need the services running; they fail with a message saying how to start
//! them rather than skipping.

/// The CQL server's contact point.
pub fn scylla_nodes() -> String {
    service_env("HERMES_TEST_SCYLLA_NODES", "127.0.0.1:9042")
}

/// The RabbitMQ URL.
pub fn amqp_url() -> String {
    service_env(
        "HERMES_TEST_AMQP_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    )
}

/// The SQS endpoint.
pub fn sqs_endpoint() -> String {
    service_env("HERMES_TEST_SQS_ENDPOINT", "http://127.0.0.1:9324")
}

fn service_env(key: &str, default: &str) -> String {
    std::env::var(key)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// A name no other test run uses (keyspaces, queues).
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{}", std::process::id(), nanos % 1_000_000_000)
}
