//! Limits and close codes: message size, invalid UTF-8, protocol errors, the message rate
//! limit, the idle timeout and heartbeat, and the slow-consumer bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::{SinkExt, StreamExt};
use hermes_e2e::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

#[tokio::test]
async fn protocol_violations_get_their_rfc6455_close_codes() {
    let gw = Gateway::start(&[("HERMES_MAX_MESSAGE_BYTES", "1024")]).await;
    let token = gw.token("u", "r").await;

    let mut ws = gw.connect(&token).await;
    ws.send(Message::text("x".repeat(2048)))
        .await
        .expect("send");
    assert_eq!(recv_close(&mut ws).await, 1009, "too big");

    let mut ws = gw.connect(&token).await;
    ws.send(Message::Frame(Frame::message(
        vec![0xff, 0xfe, 0xfd],
        OpCode::Data(Data::Text),
        true,
    )))
    .await
    .expect("send");
    assert_eq!(recv_close(&mut ws).await, 1007, "invalid UTF-8");

    let mut ws = gw.connect(&token).await;
    ws.send(Message::Frame(Frame::message(
        vec![1u8],
        OpCode::Data(Data::Reserved(3)),
        true,
    )))
    .await
    .expect("send");
    assert_eq!(recv_close(&mut ws).await, 1002, "reserved opcode");

    // The process is unharmed.
    let mut ws = gw.connect(&token).await;
    send_json(&mut ws, json!({"action": "ping"})).await;
    assert_eq!(recv_json(&mut ws).await, json!({"event": "pong"}));
}

#[tokio::test]
async fn a_client_over_the_message_rate_is_closed_with_1008() {
    let gw = Gateway::start(&[
        ("HERMES_CLIENT_MESSAGES_PER_SECOND", "1"),
        ("HERMES_CLIENT_MESSAGES_BURST", "3"),
    ])
    .await;
    let mut ws = gw.connect(&gw.token("spammer", "r").await).await;
    for _ in 0..10 {
        if ws
            .send(Message::text(r#"{"action":"ping"}"#))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(recv_close(&mut ws).await, 1008);
    assert_eq!(
        gw.metric("hermes_messages_received_total{kind=\"rate_limited\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_silent_client_is_closed_after_the_idle_timeout() {
    let gw = Gateway::start(&[
        ("HERMES_IDLE_TIMEOUT_SECONDS", "1"),
        ("HERMES_PING_INTERVAL_SECONDS", "1"),
    ])
    .await;
    let mut ws = gw.connect(&gw.token("sleepy", "r").await).await;
    // The client reads nothing, so it answers no ping: the server closes it.
    eventually(|| async { gw.metric("hermes_socket_closes_total{code=\"1001\"}").await == 1.0 })
        .await;
    assert_eq!(recv_close(&mut ws).await, 1001);
    assert_eq!(gw.metric("hermes_connections_open").await, 0.0);
}

#[tokio::test]
async fn a_listening_client_is_kept_alive_by_its_pongs() {
    let gw = Gateway::start(&[
        ("HERMES_IDLE_TIMEOUT_SECONDS", "2"),
        ("HERMES_PING_INTERVAL_SECONDS", "1"),
    ])
    .await;
    let mut ws = gw.connect(&gw.token("listener", "r").await).await;
    // Read (and so answer) four server pings: twice the idle timeout goes by.
    let mut pings = 0;
    while pings < 4 {
        match tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a frame")
            .expect("open")
            .expect("ok")
        {
            Message::Ping(_) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    gw.publish(json!({"user_id": "ops", "room_id": "r", "data": {"type": "alive"}}))
        .await;
    assert_eq!(recv_json(&mut ws).await["data"]["type"], "alive");
}

#[tokio::test]
async fn a_slow_client_fills_only_its_own_queue_and_is_closed_with_1013() {
    let gw = Gateway::start(&[
        ("HERMES_SEND_QUEUE", "4"),
        ("HERMES_MAX_MESSAGE_BYTES", "131072"),
    ])
    .await;
    // The slow client never reads until the end.
    let mut slow = gw.connect(&gw.token("slow", "room").await).await;
    let mut fast = gw.connect(&gw.token("fast", "room").await).await;
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let reader = tokio::spawn(async move {
        let mut expected = 0u64;
        loop {
            let v = recv_json(&mut fast).await;
            assert_eq!(
                v["data"]["n"].as_u64(),
                Some(expected),
                "in order, none missing"
            );
            expected += 1;
            counter.store(expected as usize, Ordering::SeqCst);
        }
    });

    let blob = "x".repeat(64 * 1024);
    let mut published = 0usize;
    while gw.metric("hermes_send_queue_overflows_total").await < 1.0 {
        assert!(published < 2000, "the slow client was never cut off");
        let (status, _) = gw
            .publish(json!({"user_id": "ops", "room_id": "room", "data": {"n": published, "blob": blob}}))
            .await;
        assert_eq!(status, 202);
        published += 1;
        // The fast client keeps up with every message.
        let target = published;
        let r = received.clone();
        eventually(|| {
            let r = r.clone();
            async move { r.load(Ordering::SeqCst) >= target }
        })
        .await;
    }
    assert!(
        !reader.is_finished(),
        "the fast client is still connected and in order"
    );
    reader.abort();
    assert_eq!(recv_close(&mut slow).await, 1013);
    println!("slow client cut off after {published} messages of 64 KiB");
}

#[tokio::test]
async fn a_published_message_over_the_size_limit_is_refused_with_413_and_one_at_it_delivered() {
    let gw = Gateway::start(&[("HERMES_MAX_MESSAGE_BYTES", "1024")]).await;
    let mut ws = gw.connect(&gw.token("u", "r").await).await;
    // A JSON string of 1024 bytes, its quotes included: at the limit.
    let at_limit = "x".repeat(1022);
    let (status, body) = gw
        .publish(json!({"user_id": "ops", "room_id": "r", "data": at_limit}))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(recv_json(&mut ws).await["data"], at_limit);

    let (status, body) = gw
        .publish(json!({"user_id": "ops", "room_id": "r", "data": "x".repeat(1023)}))
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "too_large");
    assert_eq!(
        body["error"]["message"],
        "field `data` is 1025 bytes, more than the limit of 1024 bytes (HERMES_MAX_MESSAGE_BYTES)"
    );
    // A body far over any message is refused before it is parsed, in the same shape.
    let (status, body) = gw
        .publish(json!({"user_id": "ops", "room_id": "r", "data": "x".repeat(200_000)}))
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "too_large");
    // Nothing else reached the socket: the next frame is the next message.
    gw.publish(json!({"user_id": "ops", "room_id": "r", "data": "after"}))
        .await;
    assert_eq!(recv_json(&mut ws).await["data"], "after");
}
