//! Generated bad input against the real gateway binary: HTTP requests to both listeners
//! (any method, the real paths and others, right and wrong credentials, bodies that are
//! almost right), raw bytes that are not HTTP, and text frames on an open socket. Every
//! request gets an answer that is not a server error, every bad frame an error frame, and
//! the gateway stays ready with no panic in its log.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hermes_e2e::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// One generated HTTP request, as raw parts.
#[derive(Debug, Clone)]
struct Request {
    internal: bool,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\nhost: gw\r\n", self.method, self.target);
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str(&format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            self.body.len()
        ));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9_-]{1,12}",
        Just("%00".to_owned()),
        Just("%ZZ".to_owned()),
        Just("..".to_owned()),
        Just("x".repeat(300)),
        "[%a-f0-9]{1,9}",
    ]
}

fn target() -> impl Strategy<Value = String> {
    let path = prop_oneof![
        Just("/v1/publish".to_owned()),
        Just("/v1/tokens".to_owned()),
        (segment(), segment()).prop_map(|(r, u)| format!("/v1/tokens/{r}/{u}")),
        segment().prop_map(|c| format!("/@connections/{c}")),
        segment().prop_map(|c| format!("/production/@connections/{c}")),
        Just("/production".to_owned()),
        Just("/".to_owned()),
        Just("/healthz".to_owned()),
        Just("/readyz".to_owned()),
        Just("/metrics".to_owned()),
        Just("/hermes.js".to_owned()),
        Just("/internal/v1/deliver".to_owned()),
        Just("/internal/v1/deliver-batch".to_owned()),
        Just("/internal/v1/deliver-stream".to_owned()),
        segment().prop_map(|c| format!("/internal/v1/connections/{c}")),
        Just("/internal/v1/registry".to_owned()),
        segment().prop_map(|s| format!("/{s}")),
    ];
    let query = prop_oneof![
        Just(String::new()),
        "[a-z=&%0-9.]{0,24}".prop_map(|q| format!("?{q}")),
        "[a-zA-Z0-9._-]{0,40}".prop_map(|t| format!("?token={t}")),
    ];
    (path, query).prop_map(|(p, q)| format!("{p}{q}"))
}

/// Bodies that are nearly what an endpoint takes, and bytes that are nothing.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let id = prop_oneof![
        "[a-z0-9]{0,8}".prop_map(Value::String),
        any::<i64>().prop_map(|n| json!(n)),
        Just(Value::Null),
        Just(json!({})),
        Just(json!([1])),
        Just(json!(1.5)),
    ];
    let publish = (
        id.clone(),
        id.clone(),
        id.clone(),
        prop::option::of(id.clone()),
    )
        .prop_map(|(user, room, data, to)| {
            let mut m = json!({"user_id": user, "room_id": room, "data": data});
            if let Some(to) = to {
                m["to_user_id"] = to;
            }
            serde_json::to_vec(&m).expect("JSON")
        });
    let token = (id.clone(), id, any::<i64>()).prop_map(|(user, room, ttl)| {
        serde_json::to_vec(&json!({"user_id": user, "room_id": room, "ttl_seconds": ttl}))
            .expect("JSON")
    });
    prop_oneof![
        Just(Vec::new()),
        publish,
        token,
        prop::collection::vec(any::<u8>(), 0..200),
        Just(b"[{\"id\":null}]".to_vec()),
        Just(vec![b'['; 5000]),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    let method = prop_oneof![
        Just("GET"),
        Just("POST"),
        Just("PUT"),
        Just("DELETE"),
        Just("PATCH"),
        Just("OPTIONS"),
        Just("HEAD"),
        Just("BREW"),
    ];
    let authorization = prop_oneof![
        Just(None),
        Just(Some(format!("Bearer {ADMIN_KEY}"))),
        "[ -~]{0,30}".prop_map(Some),
        Just(Some(
            "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/execute-api/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature=00"
                .to_owned()
        )),
    ];
    let secret = prop_oneof![
        Just(None),
        Just(Some(INTERNAL_SECRET.to_owned())),
        "[ -~]{0,20}".prop_map(Some),
    ];
    let upgrade = prop_oneof![
        3 => Just(Vec::new()),
        1 => ("[ -~]{0,30}", prop_oneof![Just("13"), Just("8"), Just("x")]).prop_map(
            |(protocol, version)| {
                vec![
                    ("upgrade".to_owned(), "websocket".to_owned()),
                    ("connection".to_owned(), "Upgrade".to_owned()),
                    ("sec-websocket-key".to_owned(), "dGhlIHNhbXBsZSBub25jZQ==".to_owned()),
                    ("sec-websocket-version".to_owned(), version.to_owned()),
                    ("sec-websocket-protocol".to_owned(), protocol),
                ]
            }
        ),
    ];
    let content_type = prop_oneof![
        Just(None),
        Just(Some("application/json")),
        Just(Some("text/plain")),
        Just(Some("application/x-www-form-urlencoded")),
    ];
    (
        any::<bool>(),
        method,
        target(),
        authorization,
        secret,
        upgrade,
        content_type,
        body(),
    )
        .prop_map(
            |(internal, method, target, authorization, secret, upgrade, content_type, body)| {
                let mut headers = upgrade;
                if let Some(a) = authorization {
                    headers.push(("authorization".to_owned(), a));
                }
                if let Some(s) = secret {
                    headers.push(("x-hermes-internal-secret".to_owned(), s));
                }
                if let Some(c) = content_type {
                    headers.push(("content-type".to_owned(), c.to_owned()));
                }
                Request {
                    internal,
                    method: method.to_owned(),
                    target,
                    headers,
                    body,
                }
            },
        )
}

/// Sends raw bytes to `addr` and reads the answer's status line: `Some(status)`, or `None`
/// when the gateway closed the connection without answering.
async fn exchange(addr: &str, bytes: &[u8]) -> Result<Option<u16>, String> {
    let addr = addr.trim_start_matches("http://");
    let mut socket = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // A write may fail once the gateway refused and closed: the answer is what counts.
    let _ = socket.write_all(bytes).await;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
            if seen.windows(2).any(|w| w == b"\r\n") {
                return;
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .map_err(|_| "no answer and no close within the deadline".to_owned())?;
    if seen.is_empty() {
        return Ok(None);
    }
    let line = String::from_utf8_lossy(&seen);
    let status = line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {line:?}"))?;
    Ok(Some(status))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Runs `cases` generated cases of `test` against `gw`, without shrinking (each try of a
/// failing case may wait out the deadline); a failure shows the case and the gateway's log.
fn run_cases<S: Strategy>(
    gw: &Gateway,
    cases: u32,
    strategy: &S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 0,
        ..Config::default()
    });
    if let Err(e) = runner.run(strategy, test) {
        panic!("{e}\nlogs:\n{}", gw.logs());
    }
}

fn assert_still_well(rt: &tokio::runtime::Runtime, gw: &Gateway) {
    rt.block_on(gw.wait_ready());
    let logs = gw.logs();
    assert!(!logs.contains("panicked"), "the gateway panicked:\n{logs}");
}

#[test]
fn any_http_request_to_either_listener_is_answered_without_a_server_error() {
    let rt = runtime();
    let gw = rt.block_on(Gateway::start(&[]));
    run_cases(&gw, 400, &request(), |r| {
        let addr = if r.internal { &gw.internal } else { &gw.public };
        let status = rt
            .block_on(exchange(addr, &r.bytes()))
            .map_err(TestCaseError::fail)?;
        let status =
            status.ok_or_else(|| TestCaseError::fail("closed without answering a request"))?;
        prop_assert!(status < 500, "{} {} answered {status}", r.method, r.target);
        Ok(())
    });
    assert_still_well(&rt, &gw);
}

#[test]
fn bytes_that_are_not_http_are_refused_or_dropped_and_the_gateway_stays_up() {
    let rt = runtime();
    let gw = rt.block_on(Gateway::start(&[]));
    let garbage = (
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 1..300),
        any::<bool>(),
    );
    run_cases(&gw, 200, &garbage, |(internal, mut bytes, terminate)| {
        if terminate {
            bytes.extend_from_slice(b"\r\n\r\n");
        }
        let addr = if internal { &gw.internal } else { &gw.public };
        // A bare close is a fine answer to bytes that are not HTTP, as is a 4xx; a
        // server error, or no answer at all, is not.
        match rt.block_on(exchange(addr, &bytes)) {
            Ok(None) => {}
            Ok(Some(status)) => prop_assert!(status < 500, "answered {status}"),
            // Bytes that never end a request head: the gateway waits for the rest, as it
            // should, until its own request timeout.
            Err(e) if !terminate && e.starts_with("no answer") => {}
            Err(e) => prop_assert!(false, "{e}"),
        }
        Ok(())
    });
    assert_still_well(&rt, &gw);
}

#[test]
fn every_bad_text_frame_on_an_open_socket_gets_an_error_frame_and_the_socket_stays_open() {
    let rt = runtime();
    // No message-rate limit in the way: the frames come as fast as they are answered.
    let gw = rt.block_on(Gateway::start(&[
        ("HERMES_CLIENT_MESSAGES_PER_SECOND", "1000000"),
        ("HERMES_CLIENT_MESSAGES_BURST", "1000000"),
    ]));
    // `run` takes a `Fn`: the socket is borrowed mutably inside each case.
    let ws = std::cell::RefCell::new(rt.block_on(async {
        let token = gw.token("fuzz", "room").await;
        gw.connect_modern(&token).await.0
    }));
    let frame = prop_oneof![
        "\\PC{0,60}",
        any::<i64>().prop_map(|n| n.to_string()),
        "[ -~]{0,40}".prop_map(|a| json!({"action": a}).to_string()),
        "[ -~]{0,40}".prop_map(|a| format!("{{\"action\": {a}}}")),
        Just(r#"{"action":"sendMessage"}"#.to_owned()),
        Just(r#"{"action":null,"data":1}"#.to_owned()),
        Just("{".repeat(200)),
    ];
    run_cases(&gw, 300, &frame, |text| {
        // What the frame is, from the client's side: a ping, a sendMessage, or neither.
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        let action = parsed
            .as_ref()
            .and_then(|v| v.get("action"))
            .and_then(Value::as_str);
        let has_data = parsed.as_ref().is_some_and(|v| v.get("data").is_some());
        if action == Some("ping") || (action == Some("sendMessage") && has_data) {
            return Ok(());
        }
        let mut ws = ws.borrow_mut();
        let reply = rt.block_on(async {
            ws.send(Message::text(text.clone()))
                .await
                .map_err(|e| e.to_string())?;
            match tokio::time::timeout(DEADLINE, ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => Ok(t.to_string()),
                other => Err(format!("no text frame: {other:?}")),
            }
        });
        let reply = reply.map_err(TestCaseError::fail)?;
        let reply: Value = serde_json::from_str(&reply)
            .map_err(|e| TestCaseError::fail(format!("reply is not JSON: {e}")))?;
        let code = reply["error"]["code"].as_str().unwrap_or_default();
        prop_assert!(
            [
                "malformed_json",
                "not_an_object",
                "missing_action",
                "missing_data",
                "unknown_action"
            ]
            .contains(&code),
            "{text:?} answered {reply}"
        );
        Ok(())
    });
    // The socket still works.
    let mut ws = ws.into_inner();
    rt.block_on(async {
        send_json(&mut ws, json!({"action": "ping"})).await;
        let pong = tokio::time::timeout(Duration::from_secs(15), recv_json(&mut ws))
            .await
            .expect("a pong");
        assert_eq!(pong, json!({"event": "pong"}));
    });
    assert_still_well(&rt, &gw);
}

/// actix-http reads the body of a WebSocket upgrade request as the rest of the connection:
/// on a route that is not a WebSocket endpoint it is refused at once (400), with or without
/// credentials, instead of its handler waiting for a body until the client closes.
#[tokio::test]
async fn a_websocket_upgrade_on_a_route_that_is_not_one_is_refused_at_once() {
    let gw = Gateway::start(&[]).await;
    let upgrade = "upgrade: websocket\r\nconnection: Upgrade\r\n\
                   sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n";
    for (method, path) in [
        ("POST", "/v1/publish"),
        ("POST", "/v1/tokens"),
        ("GET", "/@connections/abc"),
        ("POST", "/production/@connections/abc"),
        ("POST", "/internal/v1/deliver"),
        ("POST", "/internal/v1/deliver-batch"),
    ] {
        for credentials in [
            format!("authorization: Bearer {ADMIN_KEY}\r\n"),
            format!("x-hermes-internal-secret: {INTERNAL_SECRET}\r\n"),
            String::new(),
        ] {
            let request = format!(
                "{method} {path} HTTP/1.1\r\nhost: gw\r\n{upgrade}{credentials}\
                 content-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}"
            );
            let status = exchange(&gw.internal, request.as_bytes()).await;
            assert_eq!(status, Ok(Some(400)), "{method} {path} {credentials:?}");
        }
    }
}
