//! Recovery (DESIGN.md, "Recovery"): `hermes.v1` notifications carry `id` and `pos`; a
//! socket that resumes with `since` receives what it missed in order, then the `recovered`
//! frame, then live notifications; a position the server cannot serve is answered with
//! `recovered: false`, never by refusing the socket. Against the real `hermes-gateway`
//! standalone (its in-memory history).

use hermes_e2e::*;
use serde_json::{Value, json};

fn publish_body(room: &str, data: Value) -> Value {
    json!({"user_id": "ops", "room_id": room, "data": data})
}

/// The next frame, which must be a notification; returns it and its position.
async fn next_notification(ws: &mut Ws) -> (Value, String) {
    let v = recv_json(ws).await;
    let pos = v["pos"]
        .as_str()
        .unwrap_or_else(|| panic!("a notification with a position: {v}"))
        .to_owned();
    assert!(v["id"].is_string(), "with an id: {v}");
    (v, pos)
}

#[tokio::test]
async fn a_resume_replays_what_was_missed_in_order_then_recovered_then_live() {
    let gw = Gateway::start(&[]).await;
    let token = gw.token("ann", "r").await;
    let (mut first, _) = gw.connect_modern(&token).await;
    gw.publish(publish_body("r", json!({"n": 1}))).await;
    let (seen, since) = next_notification(&mut first).await;
    assert_eq!(seen["data"]["n"], 1);
    drop(first);

    // While ann is away: two room messages, one to her in this room, one to her in
    // another room, one to another room.
    gw.publish(publish_body("r", json!({"n": 2}))).await;
    gw.publish(publish_body("r", json!({"n": 3}))).await;
    gw.publish(json!({"user_id": "ops", "room_id": "r", "to_user_id": "ann", "data": {"n": 4}}))
        .await;
    gw.publish(
        json!({"user_id": "ops", "room_id": "elsewhere", "to_user_id": "ann", "data": {"n": 99}}),
    )
    .await;
    gw.publish(publish_body("other", json!({"n": 98}))).await;

    let (mut again, _) = gw.connect_v1(&token, Some(&since)).await;
    let mut last = since.clone();
    for n in [2, 3, 4] {
        let (v, pos) = next_notification(&mut again).await;
        assert_eq!(v["data"]["n"], n, "missed ones in order: {v}");
        assert_eq!(v["user_id"], "ops");
        assert!(pos > last, "positions grow: {pos} after {last}");
        last = pos;
    }
    assert_eq!(
        recv_json(&mut again).await,
        json!({"event": "recovered", "recovered": true, "missed": 3})
    );
    gw.publish(publish_body("r", json!({"n": 5}))).await;
    let (v, pos) = next_notification(&mut again).await;
    assert_eq!(v["data"]["n"], 5, "then live ones");
    assert!(pos > last);
    assert_eq!(
        gw.metric("hermes_resumes_total{outcome=\"recovered\"}")
            .await,
        1.0
    );
    assert_eq!(gw.metric("hermes_replayed_messages_total").await, 3.0);
}

#[tokio::test]
async fn a_resume_with_nothing_missed_is_recovered_with_nothing_replayed() {
    let gw = Gateway::start(&[]).await;
    let token = gw.token("bob", "r").await;
    let (mut ws, _) = gw.connect_modern(&token).await;
    gw.publish(publish_body("r", json!({"n": 1}))).await;
    let (_, since) = next_notification(&mut ws).await;
    drop(ws);
    let (mut again, _) = gw.connect_v1(&token, Some(&since)).await;
    assert_eq!(
        recv_json(&mut again).await,
        json!({"event": "recovered", "recovered": true, "missed": 0}),
        "the notification at the position itself is not sent again"
    );
}

#[tokio::test]
async fn a_foreign_or_too_old_position_is_not_recovered_and_the_socket_stays_open() {
    let gw = Gateway::start(&[("HERMES_HISTORY_TTL_SECONDS", "60")]).await;
    let token = gw.token("cid", "r").await;
    // 24 hex digits, but two hours old: outside the 60 s window.
    let old_micros = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as u64)
        - 7_200_000_000;
    let too_old = format!("{old_micros:016x}00000001");
    for since in ["not-a-position", too_old.as_str()] {
        let (mut ws, _) = gw.connect_v1(&token, Some(since)).await;
        assert_eq!(
            recv_json(&mut ws).await,
            json!({"event": "recovered", "recovered": false, "missed": 0}),
            "{since}"
        );
        gw.publish(publish_body("r", json!({"live": since}))).await;
        let (v, _) = next_notification(&mut ws).await;
        assert_eq!(v["data"]["live"], since, "live notifications follow");
    }
    assert_eq!(
        gw.metric("hermes_resumes_total{outcome=\"not_recovered\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn original_clients_keep_the_original_frames_and_history_off_means_no_position() {
    let gw = Gateway::start(&[("HERMES_HISTORY_TTL_SECONDS", "0")]).await;
    let token = gw.token("dan", "r").await;
    let mut original = gw.connect(&token).await;
    let (mut modern, _) = gw.connect_modern(&token).await;
    gw.publish(publish_body("r", json!({"n": 1}))).await;
    assert_eq!(
        recv_json(&mut original).await,
        json!({"user_id": "ops", "data": {"n": 1}})
    );
    let v = recv_json(&mut modern).await;
    assert!(v["id"].is_string() && v.get("pos").is_none(), "{v}");
    // With history off, a resume is answered, never refused.
    drop(modern);
    let (mut again, _) = gw
        .connect_v1(&token, Some("00000000000000000000000a"))
        .await;
    assert_eq!(
        recv_json(&mut again).await,
        json!({"event": "recovered", "recovered": false, "missed": 0})
    );
}

#[tokio::test]
async fn the_same_id_in_two_rooms_is_two_messages_and_a_repeat_in_one_room_is_dropped() {
    let gw = Gateway::start(&[]).await;
    let mut a = gw.connect(&gw.token("eve", "room-a").await).await;
    let mut b = gw.connect(&gw.token("eve", "room-b").await).await;
    for room in ["room-a", "room-b"] {
        let (status, outcome) = gw
            .publish(json!({"user_id": "ops", "room_id": room, "id": "same-id", "data": room}))
            .await;
        assert_eq!((status, outcome["delivered"].as_u64()), (202, Some(1)));
    }
    assert_eq!(recv_json(&mut a).await["data"], "room-a");
    assert_eq!(recv_json(&mut b).await["data"], "room-b");
    let (_, outcome) = gw
        .publish(json!({"user_id": "ops", "room_id": "room-a", "id": "same-id", "data": "again"}))
        .await;
    assert_eq!(outcome["delivered"], 0, "a repeat: {outcome}");
    gw.publish(json!({"user_id": "ops", "room_id": "room-a", "data": "next"}))
        .await;
    assert_eq!(
        recv_json(&mut a).await["data"],
        "next",
        "nothing in between"
    );
}

#[tokio::test]
async fn a_socket_is_closed_with_4001_when_its_token_expires() {
    let gw = Gateway::start(&[]).await;
    let r = gw
        .admin(reqwest::Method::POST, "/v1/tokens")
        .json(&json!({"user_id": "fay", "room_id": "r", "ttl_seconds": 2}))
        .send()
        .await
        .expect("issue");
    assert_eq!(r.status(), 201);
    let token = r.json::<Value>().await.expect("json")["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let (mut ws, _) = gw.connect_modern(&token).await;
    assert_eq!(recv_close(&mut ws).await, 4001);
}

#[tokio::test]
async fn a_notification_to_a_user_without_a_room_is_replayed_in_whichever_room_they_resume() {
    let gw = Gateway::start(&[]).await;
    let in_r = gw.token("eve", "r").await;
    let in_s = gw.token("eve", "s").await;
    let (mut ws, _) = gw.connect_modern(&in_r).await;
    gw.publish(publish_body("r", json!({"n": 1}))).await;
    let (_, since) = next_notification(&mut ws).await;
    drop(ws);

    // While eve is away: one to her in no room, one to her in room r only.
    gw.publish(json!({"user_id": "ops", "to_user_id": "eve", "data": {"n": 2}}))
        .await;
    gw.publish(json!({"user_id": "ops", "room_id": "r", "to_user_id": "eve", "data": {"n": 3}}))
        .await;

    // Back in room s: the user-wide one, not the one scoped to room r.
    let (mut s, _) = gw.connect_v1(&in_s, Some(&since)).await;
    let (v, _) = next_notification(&mut s).await;
    assert_eq!(v["data"]["n"], 2, "{v}");
    assert_eq!(
        recv_json(&mut s).await,
        json!({"event": "recovered", "recovered": true, "missed": 1})
    );
    // Back in room r: both, in order.
    let (mut r, _) = gw.connect_v1(&in_r, Some(&since)).await;
    for n in [2, 3] {
        let (v, _) = next_notification(&mut r).await;
        assert_eq!(v["data"]["n"], n, "{v}");
    }
    assert_eq!(
        recv_json(&mut r).await,
        json!({"event": "recovered", "recovered": true, "missed": 2})
    );
}
