//! How a socket ends, whatever its client did: a TCP FIN without a close frame (the client
//! process exited), a reset, a proper close frame, or a peer that stops reading and
//! answering. Each time the gateway lets the connection go at once: its file descriptor is
//! closed, the hub forgets it, and a SIGTERM afterwards ends the process without waiting
//! for connections that are not there.
//!
//! The clients are raw TCP sockets that speak just enough HTTP for the upgrade, so that
//! the test decides exactly what goes on the wire.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hermes_e2e::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// How soon a connection whose peer is gone must be released.
const RELEASED_WITHIN: Duration = Duration::from_secs(3);

fn public_addr(gw: &Gateway) -> SocketAddr {
    gw.public
        .trim_start_matches("http://")
        .parse()
        .expect("the public address")
}

/// Sends the upgrade request of an original (`?token=`) client on `stream` and reads the
/// 101 answer; such clients get no frame until the first ping.
async fn upgrade(mut stream: TcpStream, gw: &Gateway, token: &str) -> TcpStream {
    let request = format!(
        "GET /production?token={token} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        public_addr(gw)
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the upgrade");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut byte))
            .await
            .expect("the upgrade is answered")
            .expect("read");
        assert_eq!(n, 1, "the connection ended during the upgrade");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
}

async fn raw_socket(gw: &Gateway, token: &str) -> TcpStream {
    let stream = TcpStream::connect(public_addr(gw)).await.expect("connect");
    upgrade(stream, gw, token).await
}

/// Waits until the hub holds `n` sockets.
async fn open_sockets(gw: &Gateway, n: usize) {
    eventually(|| async { gw.metric("hermes_connections_open").await == n as f64 }).await;
}

/// Asserts that within `limit` the hub holds no socket and the process holds no file
/// descriptor for a connection on its public port.
async fn assert_released(gw: &Gateway, limit: Duration, what: &str) {
    let released = within(limit, Duration::from_millis(50), || async {
        gw.metric("hermes_connections_open").await == 0.0 && gw.public_connection_fds() == 0
    })
    .await;
    assert!(
        released.is_some(),
        "{what}: after {limit:?} the gateway still holds {} public connection fds and {} sockets",
        gw.public_connection_fds(),
        gw.metric("hermes_connections_open").await
    );
}

/// Sends SIGTERM and asserts that the process exits successfully within `limit`.
async fn assert_exits_within(gw: &mut Gateway, limit: Duration) {
    let signalled = Instant::now();
    gw.terminate();
    let status = gw.wait_exit(limit + Duration::from_secs(5)).await;
    assert!(status.success(), "exit status {status:?}");
    assert!(
        signalled.elapsed() <= limit,
        "the gateway took {:?} to exit after SIGTERM (limit {limit:?})",
        signalled.elapsed()
    );
}

#[tokio::test]
async fn clients_that_exit_without_a_close_frame_release_their_fds_at_once_and_sigterm_exits_promptly()
 {
    const CLIENTS: usize = 400;
    let mut gw = Gateway::start(&[
        ("HERMES_DRAIN_SECONDS", "1"),
        ("HERMES_SHUTDOWN_GRACE_SECONDS", "20"),
    ])
    .await;
    let token = gw.token("leaver", "r").await;
    let mut sockets = Vec::new();
    for _ in 0..CLIENTS {
        sockets.push(raw_socket(&gw, &token).await);
    }
    open_sockets(&gw, CLIENTS).await;
    assert_eq!(gw.public_connection_fds(), CLIENTS);

    // The client process exits: each socket ends with a FIN and no close frame.
    drop(sockets);
    assert_released(&gw, RELEASED_WITHIN, "FIN without a close frame").await;
    assert_eq!(
        gw.metric(r#"hermes_socket_closes_total{code="1006"}"#)
            .await,
        CLIENTS as f64
    );

    // Nothing is left to drain or to finish: the process exits long before its grace ends.
    assert_exits_within(&mut gw, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_reset_connection_is_released_at_once() {
    const CLIENTS: usize = 50;
    let gw = Gateway::start(&[]).await;
    let token = gw.token("resetter", "r").await;
    let mut sockets = Vec::new();
    for _ in 0..CLIENTS {
        sockets.push(raw_socket(&gw, &token).await);
    }
    open_sockets(&gw, CLIENTS).await;
    for socket in sockets {
        // SO_LINGER 0: closing sends a RST instead of a FIN.
        socket2::SockRef::from(&socket)
            .set_linger(Some(Duration::ZERO))
            .expect("SO_LINGER");
        drop(socket);
    }
    assert_released(&gw, RELEASED_WITHIN, "RST").await;
}

#[tokio::test]
async fn a_close_frame_is_echoed_then_the_server_closes_the_connection() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;

    let gw = Gateway::start(&[]).await;
    let token = gw.token("polite", "r").await;
    let mut ws = gw.connect(&token).await;
    open_sockets(&gw, 1).await;
    ws.send(Message::Close(Some(CloseFrame {
        code: close_code(1000),
        reason: "bye".into(),
    })))
    .await
    .expect("send the close frame");
    assert_eq!(recv_close(&mut ws).await, 1000, "the echo carries our code");
    // After the closing handshake the server closes the TCP connection (RFC 6455 §7.1.1).
    let end = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("the server ends the connection");
    assert!(
        !matches!(end, Some(Ok(_))),
        "nothing follows the close: {end:?}"
    );
    assert_released(&gw, RELEASED_WITHIN, "close frame").await;
    assert_eq!(
        gw.metric(r#"hermes_socket_closes_total{code="1000"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_peer_that_stops_answering_is_closed_by_the_pong_timeout_and_released() {
    let mut gw = Gateway::start(&[
        ("HERMES_PING_INTERVAL_SECONDS", "1"),
        ("HERMES_PONG_TIMEOUT_SECONDS", "1"),
        ("HERMES_DRAIN_SECONDS", "1"),
        ("HERMES_SHUTDOWN_GRACE_SECONDS", "20"),
    ])
    .await;
    let token = gw.token("silent", "r").await;
    // Half-open: the socket stays up but its peer never reads nor answers a ping.
    let _silent = raw_socket(&gw, &token).await;
    open_sockets(&gw, 1).await;
    eventually(|| async {
        gw.metric(r#"hermes_socket_closes_total{code="1001"}"#)
            .await
            == 1.0
    })
    .await;
    // The close frame it never reads does not hold the connection longer than the close
    // timeout (5 s).
    assert_released(&gw, Duration::from_secs(7), "half-open").await;
    assert_exits_within(&mut gw, Duration::from_secs(5)).await;
}

/// A socket with a small receive window on which nothing is ever read, and enough 64 KiB
/// messages published to its room that the gateway's writes to it pile up in the kernel and
/// in the connection's write buffer.
async fn stuck_socket(gw: &Gateway, token: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(public_addr(gw)).await.expect("connect");
    upgrade(stream, gw, token).await
}

async fn publish_blobs(gw: &Gateway, room: &str, n: usize) {
    let blob = "x".repeat(64 * 1024);
    for _ in 0..n {
        gw.publish(json!({"user_id": "ops", "room_id": room, "data": {"blob": blob}}))
            .await;
    }
}

#[tokio::test]
async fn a_peer_that_stops_reading_with_its_buffers_full_is_cut_off_and_released() {
    let mut gw = Gateway::start(&[
        ("HERMES_SEND_QUEUE", "4"),
        ("HERMES_PING_INTERVAL_SECONDS", "1"),
        ("HERMES_PONG_TIMEOUT_SECONDS", "2"),
        ("HERMES_DRAIN_SECONDS", "1"),
        ("HERMES_SHUTDOWN_GRACE_SECONDS", "20"),
    ])
    .await;
    let token = gw.token("stuck", "stuck-room").await;
    let _stuck = stuck_socket(&gw, &token).await;
    open_sockets(&gw, 1).await;
    let mut published = 0;
    while gw.metric("hermes_send_queue_overflows_total").await < 1.0 {
        assert!(published < 200, "the stuck client was never cut off");
        publish_blobs(&gw, "stuck-room", 1).await;
        published += 1;
    }
    // Closed with 1013, but neither its close frame nor anything else can be written any
    // more: the connection is dropped once its data has waited unacknowledged for the
    // heartbeat's ping interval + pong timeout (3 s).
    assert_released(&gw, Duration::from_secs(8), "full buffers").await;
    assert_exits_within(&mut gw, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn sigterm_ends_the_process_within_the_grace_period_while_clients_hold_their_sockets() {
    const CLIENTS: usize = 5;
    let mut gw = Gateway::start(&[
        ("HERMES_SEND_QUEUE", "256"),
        ("HERMES_DRAIN_SECONDS", "1"),
        ("HERMES_SHUTDOWN_GRACE_SECONDS", "3"),
    ])
    .await;
    let token = gw.token("holder", "held-room").await;
    // They never read, so neither what is published to them nor their 1012 close frames
    // can be written: nothing but the gateway's own deadline ends these connections.
    let mut sockets = Vec::new();
    for _ in 0..CLIENTS {
        sockets.push(stuck_socket(&gw, &token).await);
    }
    open_sockets(&gw, CLIENTS).await;
    // More than the kernel buffers (4 MiB at most here) hold: the rest waits in the
    // connections' write buffers and queues.
    publish_blobs(&gw, "held-room", 100).await;
    assert_eq!(gw.metric("hermes_send_queue_overflows_total").await, 0.0);
    assert_eq!(gw.public_connection_fds(), CLIENTS);
    assert_exits_within(&mut gw, Duration::from_secs(1 + 3)).await;
    drop(sockets);
}
