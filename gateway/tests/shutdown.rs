//! Graceful shutdown on SIGTERM: unready, no new sockets, every socket closed with 1012
//! spread over the drain window, exit 0 within the grace period.

use std::time::{Duration, Instant};

use hermes_e2e::*;

#[tokio::test]
async fn sigterm_drains_sockets_with_1012_spread_over_the_window_and_exits() {
    let mut gw = Gateway::start(&[
        ("HERMES_DRAIN_SECONDS", "2"),
        ("HERMES_SHUTDOWN_GRACE_SECONDS", "8"),
    ])
    .await;
    let token = gw.token("u", "r").await;
    let mut sockets = Vec::new();
    for _ in 0..4 {
        sockets.push(gw.connect(&token).await);
    }
    let internal = gw.internal.clone();
    let signalled = Instant::now();
    gw.terminate();

    // Readiness turns off at once so load balancers stop sending.
    let http = reqwest::Client::new();
    eventually(|| async {
        http.get(format!("{internal}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 503)
    })
    .await;

    // Every socket is told to reconnect (1012), not all at the same moment.
    let closes = futures_util::future::join_all(sockets.iter_mut().map(|ws| async move {
        let code = recv_close(ws).await;
        (code, Instant::now())
    }))
    .await;
    for (code, _) in &closes {
        assert_eq!(*code, 1012);
    }
    let first = closes.iter().map(|c| c.1).min().expect("closes");
    let last = closes.iter().map(|c| c.1).max().expect("closes");
    assert!(
        last - first >= Duration::from_millis(1000),
        "closes spread over the 2 s window, got {:?}",
        last - first
    );

    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(8),
        "within the grace period"
    );
}

#[tokio::test]
async fn a_draining_gateway_refuses_new_sockets() {
    let mut gw = Gateway::start(&[
        ("HERMES_DRAIN_SECONDS", "3"),
        ("HERMES_SHUTDOWN_GRACE_SECONDS", "6"),
    ])
    .await;
    let token = gw.token("u", "r").await;
    // Two sockets keep the drain going while we try to connect: the second closes half the
    // drain window after the first (one alone is closed at once, and how long the gateway
    // then lives depends on how its connections end, not on the drain).
    let mut first = gw.connect(&token).await;
    let mut held = gw.connect(&token).await;
    let url = format!("{}?token={token}", gw.ws_url());
    gw.terminate();
    let internal = gw.internal.clone();
    let http = reqwest::Client::new();
    eventually(|| async {
        http.get(format!("{internal}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 503)
    })
    .await;
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => panic!("a draining gateway accepted a socket"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        Err(_) => {} // the listener no longer accepts: refused outright
    }
    assert_eq!(recv_close(&mut first).await, 1012);
    assert_eq!(recv_close(&mut held).await, 1012);
    assert!(gw.wait_exit(Duration::from_secs(8)).await.success());
}

/// Routers that send to every listed gateway must list a gateway before it holds a socket:
/// one whose row was never written (its registry is unreachable) accepts none.
#[tokio::test]
async fn a_gateway_accepts_no_socket_before_its_row_is_written() {
    let gw = Gateway::spawn(
        "serve",
        &[
            ("HERMES_REGISTRY", "remote"),
            // The discard port: nothing listens there, so no heartbeat succeeds.
            ("HERMES_REGISTRY_URL", "http://127.0.0.1:9"),
        ],
    )
    .await;
    let (status, body, retry) = gw
        .refused(format!("{}?token=anything", gw.ws_url()), &[])
        .await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "starting", "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!(
        gw.metric(r#"hermes_connects_total{result="starting"}"#)
            .await,
        1.0
    );
}

/// The heartbeat goes on through the drain: a socket the drain has not closed yet keeps its
/// rows after their TTL has run out since the signal. The gateway's own memory registry
/// allows a drain longer than its TTL (a shared one refuses it, see tests/cli.rs), so a
/// 1 s TTL and a 6 s drain make the gap plain: without a heartbeat, every row written
/// before the signal is gone 1 s after it, while the second socket stays open for 3 s.
#[tokio::test]
async fn rows_of_sockets_still_open_during_a_drain_are_refreshed_past_their_ttl() {
    let mut gw = Gateway::start(&[
        ("HERMES_REGISTRY_TTL_SECONDS", "1"),
        ("HERMES_DRAIN_SECONDS", "6"),
        ("HERMES_SHUTDOWN_GRACE_SECONDS", "12"),
    ])
    .await;
    let token = gw.token("u", "drain-room").await;
    let (mut one, one_id) = gw.connect_modern(&token).await;
    let (mut two, two_id) = gw.connect_modern(&token).await;
    let signalled = Instant::now();
    gw.terminate();

    // The drain closes one socket at once and the other 3 s in. Two TTLs after the signal
    // (the time that passes is what is under test, not a wait for an event), the rows
    // written before it have expired unless the heartbeat refreshed them.
    tokio::time::sleep_until((signalled + Duration::from_secs(2)).into()).await;
    let mut open = Vec::new();
    for id in [&one_id, &two_id] {
        let status = gw
            .admin(reqwest::Method::GET, &format!("/@connections/{id}"))
            .send()
            .await
            .expect("GET @connections")
            .status()
            .as_u16();
        if status == 200 {
            open.push(id.clone());
        } else {
            assert_eq!(status, 410, "{id}");
        }
    }
    assert_eq!(
        open.len(),
        1,
        "exactly the socket not closed yet has its row"
    );
    // The gateway row and the room row are fresh too: a publish reaches that socket.
    let (status, outcome) = gw
        .publish(serde_json::json!({"user_id": "ops", "room_id": "drain-room", "data": {"n": 1}}))
        .await;
    assert_eq!(status, 202, "{outcome}");
    assert_eq!(outcome["delivered"].as_u64(), Some(1), "{outcome}");

    // A 200 comes from the hub: that socket was open when its row was read.
    let still_open = if open[0] == one_id {
        &mut one
    } else {
        &mut two
    };
    assert_eq!(recv_json(still_open).await["data"]["n"], 1);
    assert_eq!(recv_close(still_open).await, 1012);
    assert!(gw.wait_exit(Duration::from_secs(12)).await.success());
}
