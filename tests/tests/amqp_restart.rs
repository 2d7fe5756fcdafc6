//! RabbitMQ restarted mid-stream: every message published reaches every socket that
//! stayed connected exactly once (persistent messages in a durable queue, unacknowledged
//! ones redelivered, repeats dropped by message id on the gateways).

use hermes_e2e::cluster::{exactly_once_across, quantile};

#[tokio::test]
async fn every_message_is_delivered_exactly_once_across_a_rabbitmq_restart() {
    let mut latencies = exactly_once_across("rabbitmq.sh", 300, 30, &[]).await;
    println!(
        "RabbitMQ -> socket over a replica hop, all messages (restart included): p50 {:.1} ms, p99 {:.1} ms",
        quantile(&mut latencies, 0.5),
        quantile(&mut latencies, 0.99)
    );
}
