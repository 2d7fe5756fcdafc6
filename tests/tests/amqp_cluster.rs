//! RabbitMQ → consumer → three gateway processes sharing a ScyllaDB registry (a real CQL
//! server): targets on every gateway receive each message exactly once, poison goes to
//! the dead-letter queue with its reason, and a gateway killed with SIGKILL disappears
//! from the registry without pausing delivery to the others.

use std::time::{Duration, Instant};

use hermes_e2e::cluster::{self, Cluster};
use hermes_e2e::*;
use serde_json::json;

#[tokio::test]
async fn a_rabbitmq_message_reaches_its_targets_on_every_gateway_exactly_once() {
    let mut c = Cluster::start(&[]).await;
    // Two sockets of the room on each gateway.
    let mut members = Vec::new();
    for (i, gw) in c.gateways.iter().enumerate() {
        for j in 0..2 {
            let user = format!("user-{i}-{j}");
            let token = gw.token(&user, "room").await;
            let (ws, id) = gw.connect_modern(&token).await;
            members.push((user, id, ws));
        }
    }

    // The original message: every member, in the original format.
    c.send(json!({"user_id": "backend", "room_id": "room", "data": {"type": "all", "n": 1}}))
        .await;
    for (_, _, ws) in &mut members {
        assert_eq!(
            recv_notification(ws).await,
            json!({"user_id": "backend", "data": {"type": "all", "n": 1}})
        );
    }

    // To one user (held by the second gateway).
    c.send_in_order(json!({"user_id": "backend", "room_id": "room", "to_user_id": "user-1-0", "data": {"type": "user"}})).await;
    // To one connection (held by the third gateway).
    let target = members[5].1.clone();
    c.send_in_order(json!({"user_id": "backend", "room_id": "room", "connection_id": target, "data": {"type": "connection"}})).await;
    // The room but one connection (held by the first gateway).
    let excluded = members[0].1.clone();
    c.send_in_order(json!({"user_id": "backend", "room_id": "room", "exclude_connection_id": excluded, "data": {"type": "excluding"}})).await;
    // A marker to everyone: after it, nothing else may arrive.
    c.send_in_order(json!({"user_id": "backend", "room_id": "room", "data": {"type": "marker"}}))
        .await;

    for (i, (user, _, ws)) in members.iter_mut().enumerate() {
        let mut expected = Vec::new();
        if user == "user-1-0" {
            expected.push("user");
        }
        if i == 5 {
            expected.push("connection");
        }
        if i != 0 {
            expected.push("excluding");
        }
        expected.push("marker");
        let mut got = Vec::new();
        while got.last() != Some(&"marker".to_owned()) {
            got.push(
                recv_json(ws).await["data"]["type"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
        assert_eq!(
            got, expected,
            "socket {i} ({user}) got exactly its messages, once"
        );
    }
    assert_eq!(
        c.consumer
            .metric("hermes_queue_messages_total{outcome=\"delivered\",source=\"amqp\"}")
            .await,
        5.0
    );
}

#[tokio::test]
async fn every_message_of_a_burst_is_acknowledged_before_the_consumer_stops() {
    // Routed 64 at a time over three gateways, the messages finish out of order. Once the
    // consumer has stopped, any message it left unacknowledged would be back in the queue.
    let mut c = Cluster::start(&[]).await;
    let mut sockets = c.members("burst", 1).await;
    let count = 400;
    for i in 0..count {
        c.send(
            json!({"user_id": "backend", "room_id": "burst", "id": format!("b-{i}"), "data": i}),
        )
        .await;
    }
    for ws in &mut sockets {
        for _ in 0..count {
            recv_json(ws).await;
        }
    }
    let consumer = &c.consumer;
    eventually(|| async { consumer.metric(cluster::DELIVERED).await >= f64::from(count) }).await;
    let Cluster {
        consumer,
        mut publisher,
        queue,
        ..
    } = c;
    assert!(consumer.stop().await.success(), "a clean exit");
    assert!(
        publisher.get(&queue).await.is_none(),
        "no message was left unacknowledged"
    );
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_with_its_reason_and_delivery_goes_on() {
    let mut c = Cluster::start(&[]).await;
    let gw = &c.gateways[1];
    let mut ws = gw.connect(&gw.token("watcher", "room").await).await;
    let queue = c.queue.clone();
    c.publisher.publish(&queue, b"this is not json").await;
    c.send(json!({"user_id": "backend", "room_id": 4.2, "data": 1}))
        .await;
    c.send(json!({"user_id": "backend", "room_id": "room", "data": {"type": "after-poison"}}))
        .await;
    assert_eq!(recv_json(&mut ws).await["data"]["type"], "after-poison");

    let dlq = format!("{queue}.dead-letter");
    let mut dead = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while dead.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "two dead letters expected, got {}",
            dead.len()
        );
        match c.publisher.get(&dlq).await {
            Some(m) => dead.push(m),
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let reason = |headers: &Vec<(String, String)>| {
        headers
            .iter()
            .find(|(k, _)| k == "x-hermes-dead-reason")
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(dead[0].0, b"this is not json");
    assert!(
        reason(&dead[0].1).contains("not valid JSON"),
        "{:?}",
        dead[0].1
    );
    assert!(
        reason(&dead[1].1).contains("`room_id` must be a string or an integer"),
        "{:?}",
        dead[1].1
    );
    assert_eq!(
        c.consumer
            .counter_once_at("hermes_dead_letters_total{reason=\"invalid_message\"}", 2.0)
            .await,
        2.0
    );
}

#[tokio::test]
async fn a_message_for_a_gateway_that_never_answers_is_retried_then_dead_lettered_with_its_attempts()
 {
    let mut c = Cluster::start(&[
        ("HERMES_MAX_ATTEMPTS", "3"),
        ("HERMES_RETRY_DELAYS_MS", "200,400"),
    ])
    .await;
    // A live gateway row whose internal API nobody answers, holding the room.
    let registry = scylla_registry(&c.keyspace, Duration::from_secs(5)).await;
    use hermes_shared::registry::{GatewayRecord, Registry};
    registry
        .upsert_gateway(
            &GatewayRecord {
                gateway_id: "gw-silent".into(),
                internal_url: "http://127.0.0.1:9".into(),
                started_at: 0,
            },
            Duration::from_secs(120),
        )
        .await
        .expect("gateway row");
    registry
        .add_room_gateway("silent-room", "gw-silent", Duration::from_secs(120))
        .await
        .expect("room row");
    c.send(json!({"user_id": "backend", "room_id": "silent-room", "data": 1, "id": "silent-1"}))
        .await;

    // Two retries through the delay queues, then the dead-letter queue.
    let dlq = format!("{}.dead-letter", c.queue);
    let deadline = Instant::now() + DEADLINE;
    let (body, headers) = loop {
        assert!(Instant::now() < deadline, "no dead letter in time");
        match c.publisher.get(&dlq).await {
            Some(m) => break m,
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).expect("the original body")["id"],
        "silent-1"
    );
    assert_eq!(header("x-hermes-attempts"), "LongLongInt(3)");
    assert_eq!(header("x-hermes-id"), "silent-1");
    assert!(
        header("x-hermes-dead-reason")
            .starts_with("attempts_exhausted: gateways did not answer: gw-silent"),
        "{headers:?}"
    );
    let consumer = &c.consumer;
    assert_eq!(
        consumer
            .metric("hermes_queue_messages_total{outcome=\"retried\",source=\"amqp\"}")
            .await,
        2.0
    );
    assert_eq!(
        consumer
            .counter_once_at(
                "hermes_dead_letters_total{reason=\"attempts_exhausted\"}",
                1.0
            )
            .await,
        1.0
    );
    // Nothing is left behind: not in the queue, not in a delay queue.
    let queue = c.queue.clone();
    assert!(c.publisher.get(&queue).await.is_none());
}

#[tokio::test]
async fn a_killed_gateway_leaves_the_registry_and_the_others_keep_receiving() {
    // A drain shorter than the short TTL: a shared registry refuses one as long as it.
    let mut c = Cluster::start(&[
        ("HERMES_REGISTRY_TTL_SECONDS", "3"),
        ("HERMES_DRAIN_SECONDS", "2"),
    ])
    .await;
    let mut alive = Vec::new();
    for i in [0usize, 2] {
        let gw = &c.gateways[i];
        alive.push(
            gw.connect(&gw.token(&format!("alive-{i}"), "room").await)
                .await,
        );
    }
    let doomed = &c.gateways[1];
    let _doomed_socket = doomed.connect(&doomed.token("doomed", "room").await).await;
    c.gateways[1].kill().await;

    // Keep publishing; the live gateways get every message without waiting for a retry.
    let mut worst = Duration::ZERO;
    for n in 0..20u64 {
        let sent = Instant::now();
        c.send(json!({"user_id": "backend", "room_id": "room", "data": {"n": n}}))
            .await;
        for ws in &mut alive {
            assert_eq!(recv_json(ws).await["data"]["n"], n);
        }
        worst = worst.max(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        worst < Duration::from_millis(1000),
        "a delivery waited for a retry: {worst:?}"
    );

    // Its heartbeat row expires with its TTL, and with it every row that names it stops
    // counting (its other rows have a long TTL, hours: a reaper, a restart under its id or
    // a router that meets them deletes them). Publishing goes on reaching the live gateways
    // at once after that too.
    let registry =
        hermes_shared::registry::scylla::ScyllaRegistry::connect(&scylla_config(&c.keyspace))
            .await
            .expect("registry");
    use hermes_shared::registry::Registry as _;
    eventually(|| async { registry.gateway("gw-2").await.is_ok_and(|g| g.is_none()) }).await;
    for n in 100..110u64 {
        let sent = Instant::now();
        c.send(json!({"user_id": "backend", "room_id": "room", "data": {"n": n}}))
            .await;
        for ws in &mut alive {
            assert_eq!(recv_json(ws).await["data"]["n"], n);
        }
        assert!(
            sent.elapsed() < Duration::from_millis(1000),
            "a delivery after the gateway row expired waited {:?}",
            sent.elapsed()
        );
    }
}

fn scylla_config(keyspace: &str) -> hermes_shared::registry::scylla::ScyllaConfig {
    let env: std::collections::HashMap<String, String> = scylla_env(keyspace).into_iter().collect();
    match hermes_shared::registry::RegistryKind::from_strings(&env, "production").expect("valid") {
        hermes_shared::registry::RegistryKind::Scylla(c) => c,
        _ => unreachable!("scylla_env selects scylla"),
    }
}

#[tokio::test]
async fn the_admin_api_works_across_replicas_on_the_shared_registry() {
    let c = Cluster::start(&[]).await;
    let (a, b, third) = (&c.gateways[0], &c.gateways[1], &c.gateways[2]);
    // A token issued by one replica is accepted by another (bcrypt row + verifier in CQL).
    let token = a.token("roamer", "r").await;
    let (mut on_b, id) = b.connect_modern(&token).await;

    // Publish through a third replica's admin API.
    let (status, outcome) = third
        .publish(json!({"user_id": "ops", "room_id": "r", "data": {"type": "x"}}))
        .await;
    assert_eq!((status, outcome["gateways"].as_u64()), (202, Some(1)));
    assert_eq!(recv_json(&mut on_b).await["data"]["type"], "x");

    // @connections on A for the socket B holds.
    let r = a
        .admin(reqwest::Method::POST, &format!("/@connections/{id}"))
        .body("hi")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    assert_eq!(recv_text(&mut on_b).await, "hi");
    let r = a
        .admin(
            reqwest::Method::GET,
            &format!("/production/@connections/{id}"),
        )
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);

    // Revocation through the third replica closes the socket on B; every replica refuses it.
    let r = third
        .admin(reqwest::Method::DELETE, "/v1/tokens/r/roamer")
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), 204);
    assert_eq!(recv_close(&mut on_b).await, 4003);
    for gw in &c.gateways {
        let (status, _, _) = gw
            .refused(format!("{}?token={token}", gw.ws_url()), &[])
            .await;
        assert_eq!(status, 403);
    }
    // Gone afterwards (once B has deregistered the socket).
    eventually(|| async {
        a.admin(reqwest::Method::GET, &format!("/@connections/{id}"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 410)
    })
    .await;
}
