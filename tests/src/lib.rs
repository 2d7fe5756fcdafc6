//! Harness of the integration and end-to-end tests: starts the real `hermes-gateway` and
//! `hermes-consumer` binaries, speaks WebSocket to gateways with a real client
//! (tokio-tungstenite), and tells where the real services are (set by
//! `scripts/services/up.sh` through `~/.cache/hermes/services.env`, read by the test
//! command). Every wait is on a condition, bounded by a deadline.
//!
//! Tests that need a service fail with a message saying how to start it rather than
//! skipping.

pub mod cluster;
pub mod consumer;
pub mod faults;
pub mod kube;
pub mod promql;
pub mod sqs;
pub use consumer::{AmqpPublisher, Consumer, env_refs, gateway_with_amqp_consumer, scylla_env};

/// The CQL server's contact point.
pub fn scylla_nodes() -> String {
    service_env("HERMES_TEST_SCYLLA_NODES", "127.0.0.1:9042")
}

/// The RabbitMQ URL.
pub fn amqp_url() -> String {
    service_env(
        "HERMES_TEST_AMQP_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    )
}

/// The SQS endpoint.
pub fn sqs_endpoint() -> String {
    service_env("HERMES_TEST_SQS_ENDPOINT", "http://127.0.0.1:9324")
}

fn service_env(key: &str, default: &str) -> String {
    std::env::var(key)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// A name no other test run uses (keyspaces, queues).
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{}", std::process::id(), nanos % 1_000_000_000)
}

/// Settings of a ScyllaDB registry on the test CQL server in `keyspace` (single node:
/// replication factor 1, consistency ONE).
pub fn scylla_config(
    keyspace: &str,
    request_timeout: std::time::Duration,
) -> hermes_shared::registry::scylla::ScyllaConfig {
    scylla_config_at(&scylla_nodes(), keyspace, request_timeout)
}

/// [`scylla_config`] for the CQL server at `nodes` (contact points, comma-separated).
pub fn scylla_config_at(
    nodes: &str,
    keyspace: &str,
    request_timeout: std::time::Duration,
) -> hermes_shared::registry::scylla::ScyllaConfig {
    hermes_shared::registry::scylla::ScyllaConfig {
        nodes: nodes.split(',').map(|n| n.trim().to_owned()).collect(),
        keyspace: keyspace.to_owned(),
        replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
        consistency: "ONE".into(),
        local_dc: None,
        username: None,
        password: None,
        request_timeout,
        schema: hermes_shared::registry::scylla::SchemaMode::Create,
    }
}

/// Connects a ScyllaDB registry to the test CQL server in `keyspace` (created if absent),
/// or panics saying how to start the server.
pub async fn scylla_registry(
    keyspace: &str,
    request_timeout: std::time::Duration,
) -> hermes_shared::registry::scylla::ScyllaRegistry {
    let config = scylla_config(keyspace, request_timeout);
    match hermes_shared::registry::scylla::ScyllaRegistry::connect(&config).await {
        Ok(registry) => registry,
        Err(e) => panic!(
            "the CQL server at {} is not usable ({e}); start it with scripts/services/up.sh \
             (or scripts/services/cassandra.sh start)",
            config.nodes.join(",")
        ),
    }
}

/// Path of a workspace binary: `HERMES_<NAME>_BIN` if set, else next to the running test
/// executable's directory (`target/debug/`), where cargo builds the workspace's binaries.
pub fn binary(name: &str) -> std::path::PathBuf {
    let var = format!("{}_BIN", name.to_ascii_uppercase().replace('-', "_"));
    if let Ok(path) = std::env::var(&var) {
        return path.into();
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/debug");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (or set {var})",
        path.display()
    );
    path
}

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const ADMIN_KEY: &str = "test-admin-key-0123456789";
pub const INTERNAL_SECRET: &str = "test-internal-secret-0123456789";
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789-abcdef";
/// Longest any single wait in these tests may take before it counts as a failure.
pub const DEADLINE: Duration = Duration::from_secs(15);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A running gateway process.
pub struct Gateway {
    child: Child,
    pub public: String,
    pub internal: String,
    /// Everything the process wrote to stderr (its logs).
    pub logs: Arc<Mutex<String>>,
    http: reqwest::Client,
}

impl Gateway {
    /// `hermes-gateway serve` with test secrets, a cheap bcrypt cost and `env` on top.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        Self::start_mode("serve", env).await
    }

    pub async fn start_mode(mode: &str, env: &[(&str, &str)]) -> Self {
        let gw = Self::spawn(mode, env).await;
        gw.wait_ready().await;
        gw
    }

    /// Starts `hermes-gateway <mode>` and returns once it listens, ready or not.
    pub async fn spawn(mode: &str, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(binary("hermes-gateway"));
        cmd.arg(mode)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HERMES_LISTEN", "127.0.0.1:0")
            .env("HERMES_INTERNAL_LISTEN", "127.0.0.1:0")
            .env("HERMES_ADMIN_KEY", ADMIN_KEY)
            .env("HERMES_INTERNAL_SECRET", INTERNAL_SECRET)
            .env("HERMES_JWT_SECRET", JWT_SECRET)
            .env("HERMES_BCRYPT_COST", "4")
            .env("HERMES_LOG", "debug")
            .env("HERMES_WORKERS", "2");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let (child, banner, logs) = spawn_announced(cmd, "hermes-gateway listening ").await;
        let field = |name: &str| {
            banner
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .expect("banner field")
                .to_owned()
        };
        Self {
            child,
            public: field("public"),
            internal: field("internal"),
            logs,
            http: reqwest::Client::new(),
        }
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let url = format!("{}/readyz", self.internal);
        eventually(|| async {
            self.http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
    }

    pub fn ws_url(&self) -> String {
        format!("{}/production", self.public.replace("http://", "ws://"))
    }

    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.internal))
            .bearer_auth(ADMIN_KEY)
    }

    /// Issues a token through `POST /v1/tokens`.
    pub async fn token(&self, user: &str, room: &str) -> String {
        let r = self
            .admin(reqwest::Method::POST, "/v1/tokens")
            .json(&json!({"user_id": user, "room_id": room}))
            .send()
            .await
            .expect("token request");
        assert_eq!(r.status(), 201, "POST /v1/tokens");
        let body: Value = r.json().await.expect("json");
        body["token"].as_str().expect("token").to_owned()
    }

    /// `POST /v1/publish`, returning status and body.
    pub async fn publish(&self, body: Value) -> (u16, Value) {
        let r = self
            .admin(reqwest::Method::POST, "/v1/publish")
            .json(&body)
            .send()
            .await
            .expect("publish request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Connects with `?token=` (the original clients).
    pub async fn connect(&self, token: &str) -> Ws {
        let url = format!("{}?token={token}", self.ws_url());
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("upgrade accepted");
        ws
    }

    /// Connects with the `hermes.v1` subprotocol; returns the socket and its connection id.
    pub async fn connect_modern(&self, token: &str) -> (Ws, String) {
        self.connect_v1(token, None).await
    }

    /// Connects with the `hermes.v1` subprotocol, resuming from `since` (the subprotocol
    /// item `since.<pos>`) when given; returns the socket (its `connected` frame read) and
    /// its connection id.
    pub async fn connect_v1(&self, token: &str, since: Option<&str>) -> (Ws, String) {
        let mut req = self.ws_url().into_client_request().expect("request");
        let mut protocols = format!("hermes.v1, bearer.{token}");
        if let Some(since) = since {
            protocols.push_str(&format!(", since.{since}"));
        }
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(&protocols).expect("header"),
        );
        let (mut ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .expect("upgrade accepted");
        assert_eq!(
            resp.headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap_or("")),
            Some("hermes.v1")
        );
        let hello = recv_json(&mut ws).await;
        assert_eq!(hello["event"], "connected");
        (
            ws,
            hello["connection_id"]
                .as_str()
                .expect("connection id")
                .to_owned(),
        )
    }

    /// Attempts an upgrade and returns the HTTP refusal (status, JSON body, Retry-After).
    pub async fn refused(
        &self,
        url: String,
        headers: &[(&str, &str)],
    ) -> (u16, Value, Option<String>) {
        let mut req = url.into_client_request().expect("request");
        for (k, v) in headers {
            req.headers_mut().insert(
                tungstenite::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok(_) => panic!("the upgrade was accepted"),
            Err(tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let retry = resp
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap_or("").to_owned());
                let body = resp
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                (status, body, retry)
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    /// Value of a metric line (name with labels exactly as exported), 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&format!("{}/metrics", self.internal), series).await
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill -9");
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        sigterm(&self.child);
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        wait_exit(&mut self.child, limit, "the gateway").await
    }

    pub fn logs(&self) -> String {
        self.logs.lock().expect("logs").clone()
    }

    /// The process id (while it runs).
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the gateway is running")
    }

    /// How many file descriptors the process holds for TCP connections on its public
    /// port (accepted sockets in any state, the listener aside), read from Linux's `/proc`.
    pub fn public_connection_fds(&self) -> usize {
        let pid = self.pid();
        let port: u16 = self
            .public
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the public port");
        let mut inodes = std::collections::HashSet::new();
        for table in ["tcp", "tcp6"] {
            let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
                continue;
            };
            for line in text.lines().skip(1) {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
                let (Some(local), Some(state), Some(inode)) =
                    (fields.get(1), fields.get(3), fields.get(9))
                else {
                    continue;
                };
                let local_port = local
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok());
                // State 0A is LISTEN.
                if local_port == Some(port) && *state != "0A" {
                    inodes.insert(format!("socket:[{inode}]"));
                }
            }
        }
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("/proc/<pid>/fd is readable")
            .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
            .filter(|target| inodes.contains(target.to_string_lossy().as_ref()))
            .count()
    }
}

/// The text a Prometheus endpoint (`url`, the whole `.../metrics` address) answers.
pub async fn metrics_text(url: &str) -> String {
    reqwest::get(url)
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// Value of one series on a Prometheus endpoint, 0 if absent.
pub async fn metric_value(url: &str, series: &str) -> f64 {
    metrics_text(url)
        .await
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Spawns `cmd` (stdout and stderr piped), collects its stderr (the logs) and waits for
/// the stdout line starting with `prefix` in which it announces where it listens; panics
/// with the logs if none comes within [`DEADLINE`].
pub async fn spawn_announced(cmd: Command, prefix: &str) -> (Child, String, Arc<Mutex<String>>) {
    spawn_announced_within(cmd, prefix, DEADLINE)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// [`spawn_announced`] with its own limit and an error instead of a panic: the error names
/// the line waited for and carries the logs written so far (benches start servers that take
/// longer than a test's deadline and report failures as errors).
pub async fn spawn_announced_within(
    mut cmd: Command,
    prefix: &str,
    limit: Duration,
) -> Result<(Child, String, Arc<Mutex<String>>), String> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let program = cmd.as_std().get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let logs = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().expect("stderr is piped");
    let sink = logs.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut s = sink.lock().expect("log buffer");
            s.push_str(&line);
            s.push('\n');
        }
    });
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let banner = tokio::time::timeout(limit, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with(prefix) {
                return Some(line);
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    let Some(banner) = banner else {
        return Err(format!(
            "{program} wrote no `{prefix}` line within {limit:?}; logs:\n{}",
            logs.lock().expect("logs")
        ));
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, banner, logs))
}

/// Polls `check` until it holds or the deadline passes (then panics).
pub async fn eventually<F, Fut>(check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    assert!(
        within(DEADLINE, Duration::from_millis(200), check)
            .await
            .is_some(),
        "condition not met before the deadline"
    );
}

/// Polls `check` until it holds (returns how long that took) or `limit` passes (`None`):
/// at once, then after 5 ms, doubling the wait up to `every`. A small `every` measures how
/// long something takes to within that much.
pub async fn within<F, Fut>(limit: Duration, every: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = tokio::time::Instant::now();
    let mut wait = Duration::from_millis(5).min(every);
    loop {
        if check().await {
            return Some(started.elapsed());
        }
        if started.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(every);
    }
}

/// The next text frame as JSON (control frames are skipped).
pub async fn recv_json(ws: &mut Ws) -> Value {
    serde_json::from_str(&recv_text(ws).await).expect("text frames are JSON")
}

/// The next notification on a `hermes.v1` socket, without the `id` (checked to be there)
/// and `pos` (checked to be a position when present) the protocol adds: what an original
/// client would have received.
pub async fn recv_notification(ws: &mut Ws) -> Value {
    let mut v = recv_json(ws).await;
    let object = v.as_object_mut().expect("a notification is a JSON object");
    let id = object.remove("id");
    assert!(
        id.as_ref().is_some_and(Value::is_string),
        "hermes.v1 notifications carry their id: {id:?}"
    );
    if let Some(pos) = object.remove("pos") {
        assert!(
            pos.as_str()
                .is_some_and(|p| p.len() == 24 && p.bytes().all(|b| b.is_ascii_hexdigit())),
            "a position is 24 hex digits: {pos}"
        );
    }
    v
}

/// The next text frame's raw text.
pub async fn recv_text(ws: &mut Ws) -> String {
    loop {
        let msg = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a frame before the deadline")
            .expect("the socket is open")
            .expect("no protocol error");
        match msg {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Reads until the server's close frame; returns its code (data frames are skipped).
pub async fn recv_close(ws: &mut Ws) -> u16 {
    loop {
        let msg = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a close before the deadline");
        match msg {
            Some(Ok(Message::Close(frame))) => return frame.map_or(1005, |f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("socket error before a close frame: {e}"),
            None => panic!("the socket ended without a close frame"),
        }
    }
}

pub async fn send_json(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

pub fn close_code(code: u16) -> CloseCode {
    CloseCode::from(code)
}

/// Sends SIGTERM to a child process.
/// Sends `signal` (`STOP`, `CONT`, ...) to process `pid` with kill(1).
pub fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

pub fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Waits at most `limit` for a child process (`what`, for the message) to exit.
pub async fn wait_exit(
    child: &mut tokio::process::Child,
    limit: Duration,
    what: &str,
) -> std::process::ExitStatus {
    tokio::time::timeout(limit, child.wait())
        .await
        .unwrap_or_else(|_| panic!("{what} did not exit within {limit:?}"))
        .expect("wait")
}

/// An HTTP endpoint on loopback that answers every request `200` and keeps the JSON body
/// of each (a route integration's backend, as far as a test needs one): its base URL and
/// the bodies, in order.
pub async fn http_sink() -> (String, Arc<Mutex<Vec<Value>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = bodies.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut seen: Vec<u8> = Vec::new();
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    // One request: its head, then Content-Length bytes of body.
                    let head_end = loop {
                        if let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&seen[..head_end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while seen.len() < head_end + length {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body: Vec<u8> = seen.drain(..head_end + length).skip(head_end).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                        kept.lock().expect("bodies").push(v);
                    }
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if socket.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, bodies)
}
