//! SQS → consumer → three gateway processes sharing the CQL registry: a room, a user, a
//! connection and an exclusion, each target reached exactly once on whichever gateway
//! holds it; a poison message goes to the dead-letter queue with its reason.

use hermes_e2e::cluster::Cluster;
use hermes_e2e::sqs::{consumer_env, queues, send_body, sqs};
use hermes_e2e::*;
use serde_json::{Value, json};

const DELIVERED: &str = "hermes_queue_messages_total{outcome=\"delivered\",source=\"sqs\"}";

struct SqsCluster {
    cluster: Cluster,
    client: aws_sdk_sqs::Client,
    queue_url: String,
    dlq_url: String,
}

impl SqsCluster {
    async fn start() -> Self {
        let client = sqs().await;
        let (queue_url, dlq_url) = queues(&client, &unique("hermes-sqs-cluster"), 10).await;
        let cluster = Cluster::start_sqs(&[], consumer_env(&queue_url, &dlq_url)).await;
        Self {
            cluster,
            client,
            queue_url,
            dlq_url,
        }
    }

    /// Sends and waits until the consumer routed it (fixes the order of messages).
    async fn send_in_order(&self, body: Value) {
        let consumer = &self.cluster.consumer;
        let before = consumer.metric(DELIVERED).await;
        send_body(&self.client, &self.queue_url, &body.to_string()).await;
        eventually(|| async { consumer.metric(DELIVERED).await > before }).await;
    }
}

#[tokio::test]
async fn an_sqs_message_reaches_its_targets_on_every_gateway_exactly_once() {
    let c = SqsCluster::start().await;
    let mut members = Vec::new();
    for (i, gw) in c.cluster.gateways.iter().enumerate() {
        for j in 0..2 {
            let user = format!("user-{i}-{j}");
            let (ws, id) = gw.connect_modern(&gw.token(&user, "room").await).await;
            members.push((user, id, ws));
        }
    }
    let target = members[4].1.clone();
    let excluded = members[1].1.clone();
    for body in [
        json!({"user_id": "backend", "room_id": "room", "data": {"type": "all"}}),
        json!({"user_id": "backend", "room_id": "room", "to_user_id": "user-2-1", "data": {"type": "user"}}),
        json!({"user_id": "backend", "room_id": "room", "connection_id": target, "data": {"type": "connection"}}),
        json!({"user_id": "backend", "room_id": "room", "exclude_connection_id": excluded, "data": {"type": "excluding"}}),
        json!({"user_id": "backend", "room_id": "room", "data": {"type": "marker"}}),
    ] {
        c.send_in_order(body).await;
    }
    for (i, (user, _, ws)) in members.iter_mut().enumerate() {
        let mut expected = vec!["all"];
        if user == "user-2-1" {
            expected.push("user");
        }
        if i == 4 {
            expected.push("connection");
        }
        if i != 1 {
            expected.push("excluding");
        }
        expected.push("marker");
        let mut got = Vec::new();
        while got.last().map(String::as_str) != Some("marker") {
            let v = recv_json(ws).await;
            assert_eq!(v["user_id"], "backend", "the original format: {v}");
            got.push(v["data"]["type"].as_str().unwrap_or_default().to_owned());
        }
        assert_eq!(got, expected, "socket {i} ({user})");
    }
}

#[tokio::test]
async fn an_sqs_message_to_a_user_without_a_room_reaches_them_in_every_room() {
    let c = SqsCluster::start().await;
    let g = &c.cluster.gateways;
    let mut sockets = [
        (
            "alice",
            g[0].connect(&g[0].token("alice", "r1").await).await,
        ),
        (
            "alice",
            g[2].connect(&g[2].token("alice", "r2").await).await,
        ),
        ("bob", g[1].connect(&g[1].token("bob", "r1").await).await),
        ("bob", g[1].connect(&g[1].token("bob", "r2").await).await),
    ];
    // No room key at all.
    c.send_in_order(json!({"user_id": "backend", "to_user_id": "alice", "data": {"type": "user"}}))
        .await;
    for room in ["r1", "r2"] {
        c.send_in_order(json!({"user_id": "backend", "room_id": room, "data": {"type": "marker"}}))
            .await;
    }
    for (i, (user, ws)) in sockets.iter_mut().enumerate() {
        let mut got = Vec::new();
        while got.last().map(String::as_str) != Some("marker") {
            let v = recv_json(ws).await;
            got.push(v["data"]["type"].as_str().unwrap_or_default().to_owned());
        }
        let expected: &[&str] = if *user == "alice" {
            &["user", "marker"]
        } else {
            &["marker"]
        };
        assert_eq!(got, expected, "socket {i} ({user})");
    }
}

#[tokio::test]
async fn a_poison_sqs_message_is_dead_lettered_and_delivery_goes_on() {
    let c = SqsCluster::start().await;
    let gw = &c.cluster.gateways[2];
    let mut ws = gw.connect(&gw.token("watcher", "room").await).await;
    send_body(&c.client, &c.queue_url, "{\"user_id\": \"backend\"}").await;
    c.send_in_order(json!({"user_id": "backend", "room_id": "room", "data": {"type": "after"}}))
        .await;
    assert_eq!(recv_json(&mut ws).await["data"]["type"], "after");
    // The dead letter carries the reason, which names the missing field.
    eventually(|| async {
        let got = c
            .client
            .receive_message()
            .queue_url(&c.dlq_url)
            .message_attribute_names("All")
            .send()
            .await
            .ok()
            .and_then(|r| r.messages)
            .unwrap_or_default();
        got.first()
            .and_then(|m| m.message_attributes.as_ref())
            .and_then(|a| a.get("hermes-dead-reason"))
            .and_then(|v| v.string_value.clone())
            .is_some_and(|r| r.contains("room_id"))
    })
    .await;
}
