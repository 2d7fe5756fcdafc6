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
    // One socket keeps the drain going while we try to connect.
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
