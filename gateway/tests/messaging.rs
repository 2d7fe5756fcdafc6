//! Frames and routing on one gateway: `sendMessage` fan-out, publish by room, user,
//! connection and exclusion, the API-Gateway-compatible `@connections` API, revocation,
//! error frames, and the admin API's own refusals.

use futures_util::SinkExt;
use hermes_e2e::*;
use reqwest::Method;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn send_message_reaches_everyone_in_the_senders_room_only() {
    let gw = Gateway::start(&[]).await;
    let mut alice = gw.connect(&gw.token("alice", "room-a").await).await;
    let mut bob = gw.connect(&gw.token("bob", "room-a").await).await;
    let mut carol = gw.connect(&gw.token("carol", "room-b").await).await;

    send_json(
        &mut alice,
        json!({"action": "sendMessage", "data": {"type": "chat", "text": "hi"}}),
    )
    .await;
    let expected = json!({"user_id": "alice", "data": {"type": "chat", "text": "hi"}});
    assert_eq!(recv_json(&mut alice).await, expected);
    assert_eq!(recv_json(&mut bob).await, expected);

    // Carol's first frame is the one later published to her own room.
    let (status, _) = gw
        .publish(json!({"user_id": "ops", "room_id": "room-b", "data": {"type": "b"}}))
        .await;
    assert_eq!(status, 202);
    assert_eq!(recv_json(&mut carol).await["data"]["type"], "b");
}

#[tokio::test]
async fn publish_targets_a_room_a_user_a_connection_and_honours_the_exclusion() {
    let gw = Gateway::start(&[]).await;
    let (mut a1, a1_id) = gw.connect_modern(&gw.token("ann", "r").await).await;
    let (mut a2, _a2_id) = gw.connect_modern(&gw.token("ann", "r").await).await;
    let (mut b, b_id) = gw.connect_modern(&gw.token("ben", "r").await).await;

    // Room: all three, in the original format.
    let (status, outcome) = gw
        .publish(json!({"user_id": "ops", "room_id": "r", "data": {"type": "room"}}))
        .await;
    assert_eq!(status, 202);
    assert_eq!(
        (outcome["delivered"].as_u64(), outcome["gateways"].as_u64()),
        (Some(3), Some(1))
    );
    for ws in [&mut a1, &mut a2, &mut b] {
        assert_eq!(
            recv_notification(ws).await,
            json!({"user_id": "ops", "data": {"type": "room"}})
        );
    }

    // User: both of ann's sockets, not ben's.
    let (_, outcome) = gw.publish(json!({"user_id": "ops", "room_id": "r", "to_user_id": "ann", "data": {"type": "user"}})).await;
    assert_eq!(outcome["delivered"], 2);
    assert_eq!(recv_json(&mut a1).await["data"]["type"], "user");
    assert_eq!(recv_json(&mut a2).await["data"]["type"], "user");

    // Connection: ben's socket only.
    let (_, outcome) = gw.publish(json!({"user_id": "ops", "room_id": "r", "connection_id": b_id, "data": {"type": "conn"}})).await;
    assert_eq!(outcome["delivered"], 1);
    assert_eq!(recv_json(&mut b).await["data"]["type"], "conn");

    // Exclusion: the room but a1.
    let (_, outcome) = gw.publish(json!({"user_id": "ops", "room_id": "r", "exclude_connection_id": a1_id, "data": {"type": "excl"}})).await;
    assert_eq!(outcome["delivered"], 2);
    assert_eq!(recv_json(&mut a2).await["data"]["type"], "excl");
    assert_eq!(recv_json(&mut b).await["data"]["type"], "excl");
    // a1 skipped it: its next frame is the next room message.
    gw.publish(json!({"user_id": "ops", "room_id": "r", "data": {"type": "after"}}))
        .await;
    assert_eq!(recv_json(&mut a1).await["data"]["type"], "after");

    // A connection that does not exist is reported gone.
    let (_, outcome) = gw
        .publish(json!({"user_id": "ops", "room_id": "r", "connection_id": "nope", "data": 1}))
        .await;
    assert_eq!(
        (outcome["delivered"].as_u64(), outcome["gone"].as_u64()),
        (Some(0), Some(1))
    );
}

#[tokio::test]
async fn original_clients_receive_only_notifications_and_modern_clients_get_their_id_first() {
    let gw = Gateway::start(&[]).await;
    let token = gw.token("orig", "r").await;
    let mut original = gw.connect(&token).await;
    gw.publish(json!({"user_id": "ops", "room_id": "r", "data": {"type": "first"}}))
        .await;
    // The very first frame of a query-token client is a notification.
    assert_eq!(
        recv_json(&mut original).await,
        json!({"user_id": "ops", "data": {"type": "first"}})
    );
    let (_modern, id) = gw.connect_modern(&token).await;
    assert_eq!(id.len(), 16);
}

#[tokio::test]
async fn bad_client_frames_get_error_frames_and_the_socket_stays_usable() {
    let gw = Gateway::start(&[]).await;
    let mut ws = gw.connect(&gw.token("u", "r").await).await;
    let cases = [
        (Message::text("{not json"), "malformed_json"),
        (Message::text("[1,2,3]"), "not_an_object"),
        (Message::text(r#"{"data": 1}"#), "missing_action"),
        (Message::text(r#"{"action": "launch"}"#), "unknown_action"),
        (
            Message::text(r#"{"action": "sendMessage"}"#),
            "missing_data",
        ),
        (Message::binary(vec![1u8, 2, 3]), "binary_not_supported"),
    ];
    for (frame, code) in cases {
        ws.send(frame).await.expect("send");
        let reply = recv_json(&mut ws).await;
        assert_eq!(reply["error"]["code"], code, "{reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    send_json(&mut ws, json!({"action": "ping"})).await;
    assert_eq!(recv_json(&mut ws).await, json!({"event": "pong"}));
}

#[tokio::test]
async fn connections_api_behaves_like_api_gateway() {
    let gw = Gateway::start(&[]).await;
    let (mut ws, id) = gw.connect_modern(&gw.token("u", "r").await).await;

    // POST: the body is sent as-is.
    for path in [
        format!("/@connections/{id}"),
        format!("/production/@connections/{id}"),
    ] {
        let r = gw
            .admin(Method::POST, &path)
            .body("raw text, not JSON")
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 200);
        assert_eq!(recv_text(&mut ws).await, "raw text, not JSON");
    }

    // GET: API Gateway's shape.
    let r = gw
        .admin(Method::GET, &format!("/@connections/{id}"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    let info: serde_json::Value = r.json().await.expect("json");
    assert_eq!(info["identity"]["sourceIp"], "127.0.0.1");
    assert!(
        info["connectedAt"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert!(info["lastActiveAt"].as_str().is_some());

    // Wrong stage.
    let r = gw
        .admin(Method::GET, &format!("/staging/@connections/{id}"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);

    // DELETE disconnects (4004: do not reconnect).
    let r = gw
        .admin(Method::DELETE, &format!("/@connections/{id}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    assert_eq!(recv_close(&mut ws).await, 4004);

    // Gone afterwards, for every verb.
    eventually(|| async {
        gw.admin(Method::GET, &format!("/@connections/{id}"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 410)
    })
    .await;
    let r = gw
        .admin(Method::POST, &format!("/@connections/{id}"))
        .body("x")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 410);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["__type"], "GoneException");
    let r = gw
        .admin(Method::DELETE, &format!("/@connections/{id}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 410);
}

#[tokio::test]
async fn revoking_a_token_closes_the_users_sockets_in_that_room_and_refuses_it_after() {
    let gw = Gateway::start(&[]).await;
    let token = gw.token("mallory", "r1").await;
    let other_room = gw.token("mallory", "r2").await;
    let mut in_r1 = gw.connect(&token).await;
    let mut in_r2 = gw.connect(&other_room).await;

    let r = gw
        .admin(Method::DELETE, "/v1/tokens/r1/mallory")
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), 204);
    assert_eq!(recv_close(&mut in_r1).await, 4003);
    let (status, body, _) = gw
        .refused(format!("{}?token={token}", gw.ws_url()), &[])
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("token_not_registered"))
    );

    // The same user in another room is untouched.
    gw.publish(json!({"user_id": "ops", "room_id": "r2", "data": {"type": "still-here"}}))
        .await;
    assert_eq!(recv_json(&mut in_r2).await["data"]["type"], "still-here");

    let r = gw
        .admin(Method::DELETE, "/v1/tokens/r1/mallory")
        .send()
        .await
        .expect("revoke again");
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn admin_api_refuses_missing_keys_and_names_the_bad_field() {
    let gw = Gateway::start(&[]).await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/v1/publish", gw.internal))
        .json(&json!({}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 401);
    let r = http
        .post(format!("{}/v1/publish", gw.internal))
        .bearer_auth("wrong-key-wrong-key-wrong")
        .json(&json!({}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 401);

    let cases = [
        ("/v1/publish", json!({"user_id": "u", "data": 1}), "room_id"),
        (
            "/v1/publish",
            json!({"user_id": true, "room_id": "r", "data": 1}),
            "user_id",
        ),
        (
            "/v1/publish",
            json!({"user_id": "u", "room_id": "r"}),
            "data",
        ),
        ("/v1/tokens", json!({"room_id": "r"}), "user_id"),
        (
            "/v1/tokens",
            json!({"user_id": "u", "room_id": "r", "ttl_seconds": -5}),
            "ttl_seconds",
        ),
    ];
    for (path, body, field) in cases {
        let r = gw
            .admin(Method::POST, path)
            .json(&body)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 400, "{path} {body}");
        let err: serde_json::Value = r.json().await.expect("json");
        assert!(
            err["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(field)),
            "{err}"
        );
    }
    let r = gw
        .admin(Method::POST, "/v1/publish")
        .body("{{{")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 400);

    // The internal API wants its own secret.
    let r = http
        .post(format!("{}/internal/v1/deliver", gw.internal))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn metrics_health_and_readiness_are_served_without_auth() {
    let gw = Gateway::start(&[]).await;
    let _ws = gw.connect(&gw.token("m", "r").await).await;
    assert_eq!(gw.metric("hermes_connections_open").await, 1.0);
    assert_eq!(
        gw.metric("hermes_connects_total{result=\"accepted\"}")
            .await,
        1.0
    );
    let http = reqwest::Client::new();
    for path in ["/healthz", "/readyz"] {
        let r = http
            .get(format!("{}{path}", gw.internal))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200, "{path}");
    }
}

/// `POST /internal/v1/deliver-batch`: every request of the array is delivered and answered,
/// in order; a batch over the limit or a wrong secret is refused whole.
#[tokio::test]
async fn a_deliver_batch_is_delivered_and_answered_request_by_request() {
    let gw = Gateway::start(&[]).await;
    let mut alice = gw.connect(&gw.token("alice", "batch-room").await).await;
    let mut bob = gw.connect(&gw.token("bob", "batch-room").await).await;
    let send = |id: &str, user: &str, data: &str| {
        json!({"id": id, "target": {"user": {"user_id": user, "room_id": "batch-room"}},
               "action": {"kind": "send", "frame": json!({"user_id": "s", "data": data}).to_string()}})
    };
    let batch = json!([
        send("b1", "alice", "one"),
        send("b2", "nobody", "lost"),
        send("b3", "bob", "three"),
        send("b1", "alice", "again")
    ]);
    let http = reqwest::Client::new();
    let post = |body: serde_json::Value, secret: &'static str| {
        http.post(format!("{}/internal/v1/deliver-batch", gw.internal))
            .header("x-hermes-internal-secret", secret)
            .json(&body)
            .send()
    };
    let r = post(batch, INTERNAL_SECRET).await.expect("post");
    assert_eq!(r.status(), 200);
    let answers: serde_json::Value = r.json().await.expect("json");
    let delivered: Vec<_> = answers
        .as_array()
        .expect("an array")
        .iter()
        .map(|a| (a["delivered"].as_u64(), a["duplicate"].as_bool()))
        .collect();
    assert_eq!(
        delivered,
        vec![
            (Some(1), Some(false)),
            (Some(0), Some(false)),
            (Some(1), Some(false)),
            (Some(0), Some(true)),
        ]
    );
    assert_eq!(
        recv_json(&mut alice).await,
        json!({"user_id": "s", "data": "one"})
    );
    assert_eq!(
        recv_json(&mut bob).await,
        json!({"user_id": "s", "data": "three"})
    );

    let too_many = serde_json::Value::Array(vec![send("x", "alice", "x"); 33]);
    let r = post(too_many, INTERNAL_SECRET).await.expect("post");
    assert_eq!(r.status(), 400);
    let r = post(json!([send("y", "alice", "y")]), "wrong")
        .await
        .expect("post");
    assert_eq!(r.status(), 401);
    // Nothing of the refused batches reached a socket: the next frame is the next message.
    let r = post(json!([send("z", "alice", "next")]), INTERNAL_SECRET)
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    assert_eq!(
        recv_json(&mut alice).await,
        json!({"user_id": "s", "data": "next"})
    );
}
