//! Poison is poison: a message that can never be delivered is dead-lettered at its first
//! attempt with its own reason, never retried, and the messages behind it are delivered.
//! Oversized `data` goes as `too_large`; a delivery a gateway refuses for good (here a 401:
//! the consumer's HERMES_INTERNAL_SECRET is not the gateways') goes as `rejected`, and
//! the consumer says at error level that its secret is wrong.

use std::time::{Duration, Instant};

use hermes_e2e::cluster::Cluster;
use hermes_e2e::*;
use serde_json::json;

/// The first message on the cluster queue's dead-letter queue, polled for until
/// [`DEADLINE`].
async fn dead_letter(c: &mut Cluster) -> (Vec<u8>, Vec<(String, String)>) {
    let dlq = format!("{}.dead-letter", c.queue);
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(m) = c.publisher.get(&dlq).await {
            return m;
        }
        assert!(Instant::now() < deadline, "no dead letter in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for the first dead letter and checks that it is the message `id`, dead-lettered
/// at its first attempt, counted once under `reason` (once the copy is on the dead-letter
/// queue and the original acknowledged) and never retried. Gives the dead letter's headers.
async fn dead_lettered_at_once(c: &mut Cluster, id: &str, reason: &str) -> Vec<(String, String)> {
    let (body, headers) = dead_letter(c).await;
    let original: serde_json::Value = serde_json::from_slice(&body).expect("the original body");
    assert_eq!(original["id"], id);
    assert_eq!(header(&headers, "x-hermes-attempts"), "LongLongInt(1)");
    let consumer = &c.consumer;
    let counter = format!("hermes_dead_letters_total{{reason=\"{reason}\"}}");
    eventually(|| async { consumer.metric(&counter).await == 1.0 }).await;
    assert_eq!(
        consumer
            .metric("hermes_queue_messages_total{outcome=\"retried\",source=\"amqp\"}")
            .await,
        0.0
    );
    headers
}

fn header(headers: &[(String, String)], name: &str) -> String {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn oversized_data_is_dead_lettered_at_once_as_too_large_and_the_next_message_delivered() {
    let mut c = Cluster::start(&[("HERMES_MAX_MESSAGE_BYTES", "4096")]).await;
    let gw = &c.gateways[0];
    let mut ws = gw.connect(&gw.token("watcher", "room").await).await;
    // 4097 bytes of JSON text (quotes included): one over the limit.
    c.send(
        json!({"user_id": "backend", "room_id": "room", "id": "big-1", "data": "x".repeat(4095)}),
    )
    .await;
    c.send(json!({"user_id": "backend", "room_id": "room", "data": {"type": "behind"}}))
        .await;
    assert_eq!(recv_json(&mut ws).await["data"]["type"], "behind");

    let headers = dead_lettered_at_once(&mut c, "big-1", "too_large").await;
    assert_eq!(
        header(&headers, "x-hermes-dead-reason"),
        "field `data` is 4097 bytes, more than the limit of 4096 bytes"
    );
    // The socket got the message behind it, and only that.
    c.send(json!({"user_id": "backend", "room_id": "room", "data": {"type": "marker"}}))
        .await;
    assert_eq!(recv_json(&mut ws).await["data"]["type"], "marker");
}

#[tokio::test]
async fn a_consumer_with_the_wrong_internal_secret_dead_letters_at_once_as_rejected_and_says_so() {
    // Five attempts allowed, a minute between them: a retry would show, and would take long.
    let mut c = Cluster::start_with_consumer_env(
        &[
            ("HERMES_MAX_ATTEMPTS", "5"),
            ("HERMES_RETRY_DELAYS_MS", "60000"),
        ],
        &[(
            "HERMES_INTERNAL_SECRET",
            "not-the-gateways-secret-0123456789",
        )],
    )
    .await;
    let gw = &c.gateways[2];
    let _ws = gw.connect(&gw.token("listener", "room").await).await;
    c.send(json!({"user_id": "backend", "room_id": "room", "id": "refused-1", "data": 1}))
        .await;

    let headers = dead_lettered_at_once(&mut c, "refused-1", "rejected").await;
    let reason = header(&headers, "x-hermes-dead-reason");
    assert!(
        reason.starts_with("gateway gw-3 rejected the request with 401: "),
        "{headers:?}"
    );
    let consumer = &c.consumer;
    assert!(consumer.metric("hermes_internal_auth_failures_total").await >= 1.0);
    let logs = consumer.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("HERMES_INTERNAL_SECRET"))
        .unwrap_or_else(|| panic!("an error line about the secret; logs:\n{logs}"));
    assert!(line.contains("gw-3"), "{line}");
    assert!(
        !logs.contains("not-the-gateways-secret") && !logs.contains(INTERNAL_SECRET),
        "a secret was logged:\n{logs}"
    );
    // Nothing waits for a retry.
    let queue = c.queue.clone();
    assert!(c.publisher.get(&queue).await.is_none());
}
