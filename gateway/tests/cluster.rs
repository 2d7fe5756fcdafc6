//! Two gateway processes routing to each other over their deliver streams (and over
//! `POST /internal/v1/deliver` when told to). Gateway A holds the embedded registry;
//! gateway B uses it remotely.

use hermes_e2e::*;
use reqwest::Method;
use serde_json::json;

async fn pair() -> (Gateway, Gateway) {
    pair_over("stream").await
}

/// Two gateways whose routers use `transport` (`HERMES_DELIVER_TRANSPORT`).
async fn pair_over(transport: &str) -> (Gateway, Gateway) {
    let a = Gateway::start(&[
        ("HERMES_GATEWAY_ID", "gw-a"),
        ("HERMES_DELIVER_TRANSPORT", transport),
    ])
    .await;
    let b = Gateway::start(&[
        ("HERMES_GATEWAY_ID", "gw-b"),
        ("HERMES_REGISTRY", "remote"),
        ("HERMES_REGISTRY_URL", a.internal.as_str()),
        ("HERMES_DELIVER_TRANSPORT", transport),
    ])
    .await;
    (a, b)
}

#[tokio::test]
async fn a_room_spread_over_two_gateways_receives_every_message_once() {
    let (a, b) = pair().await;
    room_spread_over_two_gateways(&a, &b).await;
    // The routers delivered over their streams.
    for gw in [&a, &b] {
        assert_eq!(
            gw.metric("hermes_deliver_stream_connects_total{result=\"ok\"}")
                .await,
            1.0
        );
    }
}

#[tokio::test]
async fn over_http_a_room_spread_over_two_gateways_receives_every_message_once() {
    let (a, b) = pair_over("http").await;
    room_spread_over_two_gateways(&a, &b).await;
    for gw in [&a, &b] {
        assert_eq!(
            gw.metric("hermes_deliver_stream_connects_total{result=\"ok\"}")
                .await,
            0.0
        );
    }
}

/// Messages published on either gateway, or sent by a socket on one, reach the room's
/// sockets on both, once each.
async fn room_spread_over_two_gateways(a: &Gateway, b: &Gateway) {
    let (mut on_a, _) = a.connect_modern(&a.token("ann", "shared").await).await;
    let (mut on_b, _) = b.connect_modern(&b.token("bob", "shared").await).await;

    // Published on A: reaches the socket on B through B's deliver API.
    let (status, outcome) = a
        .publish(json!({"user_id": "ops", "room_id": "shared", "data": {"type": "one"}}))
        .await;
    assert_eq!(status, 202);
    assert_eq!(
        (outcome["gateways"].as_u64(), outcome["delivered"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(
        recv_notification(&mut on_a).await,
        json!({"user_id": "ops", "data": {"type": "one"}})
    );
    assert_eq!(
        recv_notification(&mut on_b).await,
        json!({"user_id": "ops", "data": {"type": "one"}})
    );

    // sendMessage from the socket on B reaches the socket on A.
    send_json(
        &mut on_b,
        json!({"action": "sendMessage", "data": {"type": "chat"}}),
    )
    .await;
    assert_eq!(
        recv_notification(&mut on_a).await,
        json!({"user_id": "bob", "data": {"type": "chat"}})
    );
    assert_eq!(
        recv_notification(&mut on_b).await,
        json!({"user_id": "bob", "data": {"type": "chat"}})
    );

    // Exactly once: the next frame on each socket is the next message.
    b.publish(json!({"user_id": "ops", "room_id": "shared", "data": {"type": "two"}}))
        .await;
    assert_eq!(recv_json(&mut on_a).await["data"]["type"], "two");
    assert_eq!(recv_json(&mut on_b).await["data"]["type"], "two");

    assert!(
        a.metric("hermes_deliver_requests_total{side=\"client\",status=\"200\"}")
            .await
            >= 1.0
    );
    assert!(
        b.metric("hermes_deliver_requests_total{side=\"server\",status=\"200\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn user_connection_and_admin_calls_cross_gateways() {
    let (a, b) = pair().await;
    let token = b.token("carl", "r").await;
    let (mut carl, carl_id) = b.connect_modern(&token).await;

    // To a user held by B, published on A.
    let (_, outcome) = a
        .publish(
            json!({"user_id": "ops", "room_id": "r", "to_user_id": "carl", "data": {"type": "dm"}}),
        )
        .await;
    assert_eq!(outcome["delivered"], 1);
    assert_eq!(recv_json(&mut carl).await["data"]["type"], "dm");

    // @connections on A for a socket held by B.
    let r = a
        .admin(Method::POST, &format!("/@connections/{carl_id}"))
        .body("{\"k\":1}")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    assert_eq!(recv_text(&mut carl).await, "{\"k\":1}");
    let r = a
        .admin(Method::GET, &format!("/production/@connections/{carl_id}"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);

    // Revocation through A closes the socket on B and B refuses the token afterwards.
    let r = a
        .admin(Method::DELETE, "/v1/tokens/r/carl")
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), 204);
    assert_eq!(recv_close(&mut carl).await, 4003);
    let (status, _, _) = b
        .refused(format!("{}?token={token}", b.ws_url()), &[])
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn rows_of_a_stopped_gateway_are_removed_and_routing_continues() {
    let (a, mut b) = pair().await;
    let (mut on_a, _) = a.connect_modern(&a.token("x", "room").await).await;
    let _on_b = b.connect(&b.token("y", "room").await).await;
    b.terminate();
    assert!(
        b.wait_exit(std::time::Duration::from_secs(30))
            .await
            .success()
    );
    // B deregistered its sockets and its gateway row while draining.
    let (status, outcome) = a
        .publish(json!({"user_id": "ops", "room_id": "room", "data": {"type": "after"}}))
        .await;
    assert_eq!(status, 202);
    assert_eq!(
        (outcome["gateways"].as_u64(), outcome["delivered"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(recv_json(&mut on_a).await["data"]["type"], "after");
}

/// Two tabs (or devices) of one user get their tokens from different replicas: the second
/// issue leaves the first token valid, on either gateway, reconnects included; one
/// revocation then closes every socket of them and refuses both tokens everywhere.
#[tokio::test]
async fn tokens_issued_again_do_not_fight_and_one_revocation_ends_them_all() {
    let (a, b) = pair().await;
    let first = a.token("two-tabs", "office").await;
    let mut first_tab = a.connect(&first).await;
    let second = b.token("two-tabs", "office").await;
    let mut second_tab = b.connect(&second).await;
    // The first tab's token still connects, here a reconnect on the other replica.
    let mut first_again = b.connect(&first).await;
    let (status, _) = a
        .publish(json!({"user_id": "ops", "room_id": "office", "data": {"type": "both"}}))
        .await;
    assert_eq!(status, 202);
    for ws in [&mut first_tab, &mut second_tab, &mut first_again] {
        assert_eq!(recv_json(ws).await["data"]["type"], "both");
    }

    let r = b
        .admin(Method::DELETE, "/v1/tokens/office/two-tabs")
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), 204);
    for ws in [&mut first_tab, &mut second_tab, &mut first_again] {
        assert_eq!(recv_close(ws).await, 4003);
    }
    for gw in [&a, &b] {
        for token in [&first, &second] {
            let (status, body, _) = gw
                .refused(format!("{}?token={token}", gw.ws_url()), &[])
                .await;
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (403, Some("token_not_registered"))
            );
        }
    }
}

/// The remote registry (what gateway B uses) against a real gateway's embedded one, over
/// `POST /internal/v1/registry`: the same contract as every registry.
#[tokio::test]
async fn the_remote_registry_meets_the_registry_contract() {
    let a = Gateway::start(&[("HERMES_GATEWAY_ID", "gw-a")]).await;
    let remote = hermes_shared::registry::remote::RemoteRegistry::new(
        &a.internal,
        INTERNAL_SECRET,
        std::time::Duration::from_secs(5),
    )
    .expect("remote registry");
    hermes_shared::registry::contract::run_all(&remote).await;
}
