//! A gateway that stops reading (SIGSTOP: its sockets stay open, nothing resets them) holds
//! up only the messages that target it: the router's circuit for it opens, the other
//! gateways' members keep receiving, and once it runs again the retries reach it alone —
//! the gateways that had answered are not sent the message a second time.

use std::collections::BTreeSet;

use hermes_e2e::cluster::Cluster;
use hermes_e2e::*;
use serde_json::json;

const MESSAGES: u64 = 30;

/// The `n`s a socket receives up to the marker, in the order they came.
async fn until_marker(ws: &mut Ws) -> Vec<u64> {
    let mut got = Vec::new();
    loop {
        let data = &recv_json(ws).await["data"];
        if data["marker"] == true {
            return got;
        }
        got.push(data["n"].as_u64().expect("a numbered message"));
    }
}

#[tokio::test]
async fn a_frozen_gateway_delays_only_its_own_members_and_its_retries_reach_it_alone() {
    let mut c = Cluster::start(&[("HERMES_DELIVER_TIMEOUT_MS", "500")]).await;
    let mut members = Vec::new();
    for (i, gw) in c.gateways.iter().enumerate() {
        let token = gw.token(&format!("member-{i}"), "room").await;
        members.push(gw.connect(&token).await);
    }
    let frozen = c.gateways[1].pid();
    signal(frozen, "STOP");

    for n in 0..MESSAGES {
        c.send(json!({"user_id": "backend", "room_id": "room", "data": {"n": n}}))
            .await;
    }
    // The running gateways' members get every message while gw-2 is stopped.
    let all: BTreeSet<u64> = (0..MESSAGES).collect();
    for i in [0, 2] {
        let mut got = BTreeSet::new();
        while got.len() < all.len() {
            let n = recv_json(&mut members[i]).await["data"]["n"]
                .as_u64()
                .expect("n");
            assert!(got.insert(n), "member {i} got {n} twice");
        }
        assert_eq!(got, all);
    }
    // The consumer stopped sending to it.
    let consumer = &c.consumer;
    eventually(|| async {
        consumer
            .metric("hermes_deliver_breaker_state{gateway=\"gw-2\"}")
            .await
            >= 1.0
    })
    .await;
    assert!(
        consumer
            .metric("hermes_deliver_breaker_events_total{event=\"opened\"}")
            .await
            >= 1.0
    );

    signal(frozen, "CONT");
    // Its member gets every message, each once, from the retries.
    let mut got = BTreeSet::new();
    while got.len() < all.len() {
        let n = recv_json(&mut members[1]).await["data"]["n"]
            .as_u64()
            .expect("n");
        assert!(got.insert(n), "the frozen gateway's member got {n} twice");
    }
    c.send_in_order(json!({"user_id": "backend", "room_id": "room", "data": {"marker": true}}))
        .await;
    for (i, ws) in members.iter_mut().enumerate() {
        assert_eq!(
            until_marker(ws).await,
            Vec::<u64>::new(),
            "member {i}: nothing more"
        );
    }
    // The retries went to gw-2 alone: the others never saw a message a second time.
    for i in [0, 2] {
        assert_eq!(
            c.gateways[i]
                .metric("hermes_messages_dropped_total{reason=\"duplicate\"}")
                .await,
            0.0,
            "gw-{} was sent a retry",
            i + 1
        );
    }
    assert_eq!(
        c.consumer
            .metric("hermes_queue_messages_total{outcome=\"dead_lettered\",source=\"amqp\"}")
            .await,
        0.0
    );
}
