//! The CQL server restarted mid-stream: routing lookups fail while it is down, the
//! consumer retries those messages from its delay queues, and every socket that stayed
//! connected receives every message exactly once.

use hermes_e2e::cluster::{exactly_once_across, quantile};

#[tokio::test]
async fn every_message_is_delivered_exactly_once_across_a_cassandra_restart() {
    let mut latencies = exactly_once_across(
        "cassandra.sh",
        200,
        20,
        &[
            // Rows must outlive the outage; the consumer must keep retrying through it.
            ("HERMES_REGISTRY_TTL_SECONDS", "300"),
            ("HERMES_MAX_ATTEMPTS", "60"),
            ("HERMES_RETRY_DELAYS_MS", "500,1000,2000"),
        ],
    )
    .await;
    println!(
        "RabbitMQ -> socket across a CQL restart: p50 {:.1} ms, p99 {:.1} ms",
        quantile(&mut latencies, 0.5),
        quantile(&mut latencies, 0.99)
    );
}
