//! User-wide targets (DESIGN.md, "API Gateway compatibility"; decision 0030): a message with
//! `to_user_id` and no `room_id` reaches that user's sockets in every room, on every gateway
//! that holds one, over `POST /v1/publish` and RabbitMQ (SQS: `sqs_cluster.rs`); with a
//! `room_id` it stays scoped to that room. Three gateway processes and the consumer on the
//! real CQL server and RabbitMQ.

use hermes_e2e::cluster::Cluster;
use hermes_e2e::*;
use serde_json::json;

/// The `data.type` of each notification up to and including the `marker`.
async fn types_until_marker(ws: &mut Ws) -> Vec<String> {
    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some("marker") {
        let v = recv_notification(ws).await;
        got.push(v["data"]["type"].as_str().unwrap_or_default().to_owned());
    }
    got
}

#[tokio::test]
async fn a_user_without_a_room_is_reached_in_every_room_over_http_and_rabbitmq() {
    let mut c = Cluster::start(&[]).await;
    // Alice in room r1 on gw-1 and in room r2 on gw-3; Bob in both rooms on gw-2.
    let g = &c.gateways;
    let (mut alice_r1, _) = g[0].connect_modern(&g[0].token("alice", "r1").await).await;
    let (mut alice_r2, _) = g[2].connect_modern(&g[2].token("alice", "r2").await).await;
    let (mut bob_r1, _) = g[1].connect_modern(&g[1].token("bob", "r1").await).await;
    let (mut bob_r2, _) = g[1].connect_modern(&g[1].token("bob", "r2").await).await;

    // Over HTTP, through the gateway that holds none of Alice's sockets.
    let (status, body) = c.gateways[1]
        .publish(json!({"user_id": "backend", "to_user_id": "alice", "data": {"type": "http"}}))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["delivered"], 2, "both of Alice's sockets: {body}");
    // Over RabbitMQ, with no room key at all.
    c.send_in_order(json!({"user_id": "backend", "to_user_id": "alice", "data": {"type": "amqp"}}))
        .await;
    // Scoped to a room, it stays in that room.
    c.send_in_order(json!({"user_id": "backend", "room_id": "r2", "to_user_id": "alice", "data": {"type": "scoped"}}))
        .await;
    for room in ["r1", "r2"] {
        c.send_in_order(json!({"user_id": "backend", "room_id": room, "data": {"type": "marker"}}))
            .await;
    }

    assert_eq!(
        types_until_marker(&mut alice_r1).await,
        ["http", "amqp", "marker"]
    );
    assert_eq!(
        types_until_marker(&mut alice_r2).await,
        ["http", "amqp", "scoped", "marker"]
    );
    assert_eq!(types_until_marker(&mut bob_r1).await, ["marker"]);
    assert_eq!(types_until_marker(&mut bob_r2).await, ["marker"]);
}

#[tokio::test]
async fn a_message_without_a_room_or_a_user_is_refused_naming_room_id() {
    let c = Cluster::start(&[]).await;
    let (status, body) = c.gateways[0]
        .publish(json!({"user_id": "backend", "data": {"type": "nowhere"}}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string().contains(
            "`room_id` is required (it may be left out only with `to_user_id` or `connection_id`)"
        ),
        "{body}"
    );
}
