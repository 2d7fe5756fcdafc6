//! `GET /internal/v1/deliver-stream` on the real binary: who may open it, what a batch
//! does and gets back, what ends the stream.

use hermes_e2e::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const PROTOCOL: &str = "hermes.deliver.v1";

fn stream_url(gw: &Gateway) -> String {
    format!(
        "{}/internal/v1/deliver-stream",
        gw.internal.replace("http://", "ws://")
    )
}

/// Opens the deliver stream with the secret and the subprotocol.
async fn open(gw: &Gateway) -> Ws {
    let mut req = stream_url(gw).into_client_request().expect("request");
    let headers = req.headers_mut();
    headers.insert(
        "X-Hermes-Internal-Secret",
        HeaderValue::from_static(INTERNAL_SECRET),
    );
    headers.insert("Sec-WebSocket-Protocol", HeaderValue::from_static(PROTOCOL));
    let (ws, response) = tokio_tungstenite::connect_async(req)
        .await
        .expect("stream opened");
    assert_eq!(response.headers()["sec-websocket-protocol"], PROTOCOL);
    ws
}

fn send_to_user(id: &str, user: &str, data: Value) -> Value {
    json!({
        "id": id,
        "target": {"user": {"user_id": user}},
        "action": {"kind": "send", "frame": json!({"user_id": "ops", "data": data}).to_string()},
    })
}

#[tokio::test]
async fn a_batch_reaches_the_sockets_and_is_answered_request_by_request_under_its_number() {
    let gw = Gateway::start(&[]).await;
    let (mut ann, _) = gw.connect_modern(&gw.token("ann", "r").await).await;
    let mut stream = open(&gw).await;
    send_json(
        &mut stream,
        json!({"seq": 41, "requests": [
            send_to_user("m-1", "ann", json!({"n": 1})),
            send_to_user("m-2", "nobody", json!({"n": 2})),
            send_to_user("m-1", "ann", json!({"n": 1})),
        ]}),
    )
    .await;
    let reply = recv_json(&mut stream).await;
    assert_eq!(reply["seq"], 41);
    let answers: Vec<(u64, bool)> = reply["responses"]
        .as_array()
        .expect("responses")
        .iter()
        .map(|r| {
            (
                r["delivered"].as_u64().unwrap_or(99),
                r["duplicate"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    // Delivered, held by nobody here, a repeat of the first id.
    assert_eq!(answers, vec![(1, false), (0, false), (0, true)]);
    assert_eq!(
        recv_notification(&mut ann).await,
        json!({"user_id": "ops", "data": {"n": 1}})
    );

    // The next batch on the same stream, answered under its own number.
    send_json(
        &mut stream,
        json!({"seq": 42, "requests": [send_to_user("m-3", "ann", json!({"n": 3}))]}),
    )
    .await;
    assert_eq!(recv_json(&mut stream).await["seq"], 42);
    assert_eq!(recv_json(&mut ann).await["data"]["n"], 3);
    assert!(
        gw.metric("hermes_deliver_requests_total{side=\"server\",status=\"200\"}")
            .await
            >= 2.0
    );
}

#[tokio::test]
async fn a_stream_without_the_secret_or_the_subprotocol_is_refused() {
    let gw = Gateway::start(&[]).await;
    let (status, body, _) = gw
        .refused(stream_url(&gw), &[("Sec-WebSocket-Protocol", PROTOCOL)])
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _, _) = gw
        .refused(
            stream_url(&gw),
            &[
                ("Sec-WebSocket-Protocol", PROTOCOL),
                ("X-Hermes-Internal-Secret", "wrong-secret-wrong-secret"),
            ],
        )
        .await;
    assert_eq!(status, 401);
    let (status, body, _) = gw
        .refused(
            stream_url(&gw),
            &[("X-Hermes-Internal-Secret", INTERNAL_SECRET)],
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("protocol_missing"))
    );
}

#[tokio::test]
async fn a_frame_that_is_not_a_batch_closes_the_stream_with_1007() {
    let gw = Gateway::start(&[]).await;
    let mut stream = open(&gw).await;
    send_json(&mut stream, json!({"seq": "one", "requests": []})).await;
    assert_eq!(recv_close(&mut stream).await, 1007);
    assert!(
        gw.metric("hermes_deliver_requests_total{side=\"server\",status=\"400\"}")
            .await
            >= 1.0
    );
    // The gateway serves on: a new stream works.
    let mut stream = open(&gw).await;
    send_json(&mut stream, json!({"seq": 1, "requests": []})).await;
    assert_eq!(
        recv_json(&mut stream).await,
        json!({"seq": 1, "responses": []})
    );
}

#[tokio::test]
async fn a_stopping_gateway_closes_its_streams_with_1001_and_exits() {
    let mut gw = Gateway::start(&[("HERMES_DRAIN_SECONDS", "0")]).await;
    let mut stream = open(&gw).await;
    gw.terminate();
    assert_eq!(recv_close(&mut stream).await, 1001);
    assert!(
        gw.wait_exit(std::time::Duration::from_secs(20))
            .await
            .success()
    );
}
