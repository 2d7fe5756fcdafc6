//! The fault checker: three gateways, a RabbitMQ consumer and an SQS consumer on the real
//! Cassandra, RabbitMQ and SQS servers; three publishers at a steady rate with unique ids
//! (RabbitMQ without any id, so the consumer derives one; SQS; `POST /v1/publish`, retried
//! until accepted); clients on every gateway, Rust ones speaking `hermes.v1` with resume and
//! `hermes.js` ones in Node, each recording every notification it receives. Faults are made
//! one after the other under steady publishing; per fault the checker reports, like a
//! Jepsen total-queue check, the notifications **lost** (published, accepted, and never
//! received by a client) and **duplicated** (received twice on one socket, or, for
//! `hermes.js`, handed twice to the application), separately. It also counts **repeats**:
//! notifications sent again to a client's new socket after a resume (the replay reads a
//! little before the client's position), which the protocol has clients drop by id, and
//! which are not duplicates the application sees.
//!
//! `scripts/faults.sh` runs it on its own; `tests/tests/faults.rs` in the test command.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::{AmqpPublisher, Consumer, Gateway, amqp_url, env_refs, scylla_env, signal, unique};

/// The room every client is in and every notification goes to.
const ROOM: &str = "faults";

/// The gateway the SIGSTOP stops.
const FROZEN_SLOT: usize = 2;

/// The start of the steady publishing before the faults that [`OthersP99::steady`] leaves
/// out.
const WARM_UP_MS: u64 = 1_000;

/// A fault made under steady publishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGTERM every gateway in turn, each replaced once it has exited.
    RollingRestart,
    /// kill -9 one gateway, then start a replacement.
    KillGateway,
    /// SIGSTOP one gateway for longer than the deliver timeout, then SIGCONT.
    FreezeGateway,
    /// kill -9 the RabbitMQ consumer while it holds unacknowledged messages, then start it.
    KillConsumer,
    /// Restart RabbitMQ.
    RabbitRestart,
    /// Restart Cassandra.
    CassandraRestart,
    /// Restart the SQS server.
    SqsRestart,
}

impl Fault {
    /// Every fault, in the order they are made. The SIGSTOP comes first, from the steady publishing: after a kill -9
    /// the dead gateway's rows live until the routers see it missed two heartbeats (20 s
    /// with the default TTL, longer than the settle; on Kubernetes the pod watch knows at
    /// once), and until then every message to its room is retried for it. A SIGSTOP in that
    /// aftermath would measure the two faults together.
    pub const ALL: [Fault; 7] = [
        Fault::FreezeGateway,
        Fault::RollingRestart,
        Fault::KillGateway,
        Fault::KillConsumer,
        Fault::RabbitRestart,
        Fault::SqsRestart,
        Fault::CassandraRestart,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::RollingRestart => "rolling SIGTERM of every gateway",
            Fault::KillGateway => "kill -9 of a gateway",
            Fault::FreezeGateway => "SIGSTOP of a gateway, then SIGCONT",
            Fault::KillConsumer => "kill -9 of the consumer",
            Fault::RabbitRestart => "RabbitMQ restart",
            Fault::SqsRestart => "SQS server restart",
            Fault::CassandraRestart => "Cassandra restart",
        }
    }
}

/// How hard the checker pushes.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Notifications per second from each of the three publishers.
    pub rate: u64,
    /// `hermes.v1` clients in Rust.
    pub rust_clients: usize,
    /// `hermes.js` clients in Node.
    pub node_clients: usize,
    /// Steady publishing before the first fault and after each one.
    pub settle: Duration,
    pub faults: Vec<Fault>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            rate: 10,
            rust_clients: 6,
            node_clients: 2,
            settle: Duration::from_secs(4),
            faults: Fault::ALL.to_vec(),
        }
    }
}

/// The p99 latency (ms) at the Rust clients of the gateways the SIGSTOP does not stop, of
/// the notifications published through the queues.
#[derive(Debug, Clone, Copy)]
pub struct OthersP99 {
    /// Published while the gateway was stopped (from the SIGSTOP to the SIGCONT).
    pub during: f64,
    /// Published in the steady publishing before the faults: the baseline.
    pub before: f64,
    /// The same without its first second ([`WARM_UP_MS`]), when the first notifications
    /// on new sockets and broker connections are slower: for the record.
    pub steady: f64,
}

/// What one fault cost.
#[derive(Debug, Clone)]
pub struct FaultReport {
    /// The fault's name, or the steady publishing's before the first fault.
    pub name: String,
    /// Notifications published (and accepted) while it was made and settled.
    pub published: usize,
    /// Client × notification pairs never received.
    pub lost: usize,
    /// Client × notification pairs received twice on one socket (Rust clients) or handed
    /// twice to the application (`hermes.js`).
    pub duplicated: usize,
    /// Notifications sent again to a client's new socket after a resume (dropped by id).
    pub repeats: usize,
    /// For the SIGSTOP: the p99 latency of what the other gateways' clients received.
    pub others_p99_ms: Option<OthersP99>,
    /// Anything else worth saying (the first few losses, by client).
    pub note: String,
}

impl FaultReport {
    /// The fault's name, or the baseline's.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// One line of the checker's table.
    pub fn line(&self) -> String {
        let mut line = format!(
            "fault {:<36} published {:>5}  lost {:>3}  duplicated {:>3}  repeats {:>4}",
            self.name(),
            self.published,
            self.lost,
            self.duplicated,
            self.repeats,
        );
        if let Some(p) = &self.others_p99_ms {
            line.push_str(&format!(
                "  others' p99 {:.0} ms (before the faults {:.0} ms, their steady part {:.0} ms)",
                p.during, p.before, p.steady
            ));
        }
        if !self.note.is_empty() {
            line.push_str(&format!("  ({})", self.note));
        }
        line
    }
}

/// A notification as a client received it.
#[derive(Debug, Clone)]
struct Receipt {
    /// The publisher's id (`data.id`).
    id: String,
    /// How long after it was published it arrived, ms.
    latency_ms: u64,
    /// The gateway (slot) whose socket got it; `usize::MAX` for `hermes.js` clients.
    gateway: usize,
}

/// What one client received.
#[derive(Default)]
struct ClientLog {
    name: String,
    receipts: Vec<Receipt>,
    /// Repeats dropped by id on a later socket.
    repeats: Vec<String>,
    /// Ids received twice on the same socket, or handed twice to the app.
    duplicates: Vec<String>,
}

/// The gateways' addresses by slot, as clients and publishers find them (a load
/// balancer's view): `None` while a slot's gateway is down.
#[derive(Default)]
struct Directory {
    slots: Vec<Option<(String, String)>>,
}

impl Directory {
    /// The `n`-th live gateway (round robin): its slot, WebSocket URL and internal URL.
    fn pick(&self, n: usize) -> Option<(usize, String, String)> {
        let live: Vec<(usize, &(String, String))> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
            .collect();
        if live.is_empty() {
            return None;
        }
        let (slot, (ws, internal)) = live[n % live.len()];
        Some((slot, ws.clone(), internal.clone()))
    }
}

struct World {
    env: Vec<(String, String)>,
    gateways: Vec<Option<Gateway>>,
    directory: Arc<Mutex<Directory>>,
    gateways_file: PathBuf,
    generation: usize,
    amqp: Consumer,
    amqp_env: Vec<(String, String)>,
    sqs: Consumer,
    queue: String,
    sqs_queue: String,
    sqs_queue_url: String,
    /// For the SIGSTOP: when the gateway was stopped and when it was sent SIGCONT.
    frozen_ms: Option<(u64, u64)>,
}

async fn start_gateway(env: &[(String, String)], slot: usize, generation: usize) -> Gateway {
    let mut env = env.to_vec();
    env.push((
        "HERMES_GATEWAY_ID".into(),
        format!("gw-{slot}-{generation}"),
    ));
    Gateway::start(&env_refs(&env)).await
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn services_script(name: &str) -> String {
    format!("{}/../scripts/services/{name}", env!("CARGO_MANIFEST_DIR"))
}

async fn run_script(name: &str, args: &[&str]) {
    // Into a file, not a pipe: a service the script starts keeps its output open.
    let log = std::env::temp_dir().join(format!("{}.log", unique("hermes-faults-script")));
    let file = std::fs::File::create(&log).expect("a log file");
    let status = Command::new("bash")
        .arg(services_script(name))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().expect("log file"))
        .stderr(file)
        .status()
        .await
        .expect("the service script runs");
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(status.success(), "{name} {args:?} failed: {output}");
}

impl World {
    async fn start() -> Self {
        let keyspace = unique("e2e_faults");
        let queue = unique("hermes-e2e-faults");
        let mut env = scylla_env(&keyspace);
        for (k, v) in [
            // A frozen gateway is given up on after 1 s; retries come soon and often, so
            // that no fault exhausts a message's attempts.
            ("HERMES_DELIVER_TIMEOUT_MS", "1000"),
            ("HERMES_RETRY_DELAYS_MS", "500,1000,2000"),
            ("HERMES_MAX_ATTEMPTS", "60"),
            ("HERMES_SQS_VISIBILITY_TIMEOUT_SECONDS", "10"),
            ("HERMES_DRAIN_SECONDS", "2"),
            ("HERMES_SHUTDOWN_GRACE_SECONDS", "6"),
            ("HERMES_SCYLLA_TIMEOUT_MS", "1000"),
        ] {
            env.push((k.into(), v.into()));
        }
        let gateways_file =
            std::env::temp_dir().join(format!("{}.gateways", unique("hermes-faults")));
        let directory = Arc::new(Mutex::new(Directory {
            slots: vec![None, None, None],
        }));
        let mut gateways = Vec::new();
        let mut generation = 0;
        // One after the other: the first creates the schema.
        for slot in 0..3 {
            generation += 1;
            let gw = start_gateway(&env, slot, generation).await;
            directory.lock().expect("directory").slots[slot] =
                Some((gw.ws_url(), gw.internal.clone()));
            gateways.push(Some(gw));
        }
        let mut publisher = AmqpPublisher::new();
        publisher.declare(&queue).await;
        let mut amqp_env = env.clone();
        amqp_env.extend([
            ("HERMES_SOURCE".to_owned(), "amqp".to_owned()),
            ("HERMES_AMQP_URL".to_owned(), amqp_url()),
            ("HERMES_AMQP_QUEUE".to_owned(), queue.clone()),
        ]);
        let amqp = Consumer::start(&env_refs(&amqp_env)).await;
        let sqs_queue = unique("hermes-e2e-faults-sqs");
        let (queue_url, dlq_url) =
            crate::sqs::queues(&crate::sqs::sqs().await, &sqs_queue, 60).await;
        let mut sqs_env = env.clone();
        sqs_env.extend(crate::sqs::consumer_env(&queue_url, &dlq_url));
        let sqs = Consumer::start(&env_refs(&sqs_env)).await;
        let world = Self {
            env,
            gateways,
            directory,
            gateways_file,
            generation,
            amqp,
            amqp_env,
            sqs,
            queue,
            sqs_queue,
            sqs_queue_url: queue_url,
            frozen_ms: None,
        };
        world.write_gateways_file();
        world
    }

    async fn start_gateway(&mut self, slot: usize) {
        self.generation += 1;
        let gw = start_gateway(&self.env, slot, self.generation).await;
        self.directory.lock().expect("directory").slots[slot] =
            Some((gw.ws_url(), gw.internal.clone()));
        self.gateways[slot] = Some(gw);
        self.write_gateways_file();
    }

    /// Takes a gateway out of the directory (a load balancer stops sending to a pod that
    /// is terminating or dead).
    fn unlist(&mut self, slot: usize) {
        self.directory.lock().expect("directory").slots[slot] = None;
        self.write_gateways_file();
    }

    fn write_gateways_file(&self) {
        let urls: Vec<String> = self
            .directory
            .lock()
            .expect("directory")
            .slots
            .iter()
            .flatten()
            .map(|(ws, _)| ws.clone())
            .collect();
        let tmp = self.gateways_file.with_extension("tmp");
        std::fs::write(&tmp, urls.join("\n")).expect("write the gateways file");
        std::fs::rename(&tmp, &self.gateways_file).expect("replace the gateways file");
    }

    fn gateway(&self, slot: usize) -> &Gateway {
        self.gateways[slot].as_ref().expect("a gateway in the slot")
    }

    async fn make(&mut self, fault: Fault) -> String {
        match fault {
            Fault::RollingRestart => {
                for slot in 0..3 {
                    self.unlist(slot);
                    let mut gw = self.gateways[slot].take().expect("gateway");
                    gw.terminate();
                    let status = gw.wait_exit(Duration::from_secs(30)).await;
                    assert!(status.success(), "a drained gateway exits 0: {status}");
                    self.start_gateway(slot).await;
                }
                String::new()
            }
            Fault::KillGateway => {
                self.unlist(1);
                let mut gw = self.gateways[1].take().expect("gateway");
                gw.kill().await;
                tokio::time::sleep(Duration::from_secs(2)).await;
                self.start_gateway(1).await;
                String::new()
            }
            Fault::FreezeGateway => {
                // Measured by the caller around it.
                let pid = self.gateway(FROZEN_SLOT).pid();
                let stopped = now_ms();
                signal(pid, "STOP");
                tokio::time::sleep(Duration::from_secs(4)).await;
                self.frozen_ms = Some((stopped, now_ms()));
                signal(pid, "CONT");
                String::new()
            }
            Fault::KillConsumer => {
                self.amqp.kill().await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.amqp = Consumer::start(&env_refs(&self.amqp_env)).await;
                String::new()
            }
            Fault::RabbitRestart => {
                run_script("rabbitmq.sh", &["restart"]).await;
                String::new()
            }
            Fault::SqsRestart => {
                // The SQS server here (moto) keeps its queues in memory: a restart empties
                // them. Its publisher pauses first (see `publish_sqs`), the queues are made
                // again after the restart.
                run_script("sqs.sh", &["restart"]).await;
                crate::sqs::queues(&crate::sqs::sqs().await, &self.sqs_queue, 60).await;
                String::new()
            }
            Fault::CassandraRestart => {
                run_script("cassandra.sh", &["restart"]).await;
                String::new()
            }
        }
    }

    async fn stop(mut self) {
        // HERMES_FAULTS_LOGS=DIR keeps every process's log for a look afterwards.
        if let Some(dir) = std::env::var_os("HERMES_FAULTS_LOGS") {
            let dir = PathBuf::from(dir);
            let _ = std::fs::create_dir_all(&dir);
            for (slot, gw) in self.gateways.iter().enumerate() {
                if let Some(gw) = gw {
                    let _ = std::fs::write(dir.join(format!("gateway-{slot}.log")), gw.logs());
                }
            }
            let _ = std::fs::write(dir.join("consumer-amqp.log"), self.amqp.logs());
            let _ = std::fs::write(dir.join("consumer-sqs.log"), self.sqs.logs());
        }
        for gw in self.gateways.iter_mut().flatten() {
            gw.kill().await;
        }
        self.amqp.kill().await;
        self.sqs.kill().await;
        let _ = std::fs::remove_file(&self.gateways_file);
    }
}

/// Every notification accepted by a publisher: its id and when it was published.
#[derive(Default)]
struct Ledger {
    published: Mutex<Vec<(String, u64)>>,
}

impl Ledger {
    fn add(&self, id: String, at_ms: u64) {
        self.published.lock().expect("ledger").push((id, at_ms));
    }
}

/// Shared by the publishers (or the clients): stop, and pause the SQS publisher.
#[derive(Default)]
struct Switches {
    stop: std::sync::atomic::AtomicBool,
    pause_sqs: std::sync::atomic::AtomicBool,
}

impl Switches {
    fn stopped(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn set(flag: &std::sync::atomic::AtomicBool, on: bool) {
        flag.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

fn notification(id: &str, with_id: bool) -> Value {
    let sent_ms = now_ms();
    let mut body = json!({"user_id": "checker", "room_id": ROOM,
                          "data": {"id": id, "sent_ms": sent_ms}});
    if with_id {
        body["id"] = json!(id);
    }
    body
}

/// RabbitMQ, with publisher confirms, without any id: the consumer derives one.
async fn publish_amqp(queue: String, rate: u64, ledger: Arc<Ledger>, switches: Arc<Switches>) {
    let mut publisher = AmqpPublisher::new();
    let mut tick = steady(rate);
    let mut n = 0u64;
    while !switches.stopped() {
        tick.tick().await;
        let id = format!("amqp-{n}");
        n += 1;
        let body = notification(&id, false);
        publisher.publish(&queue, body.to_string().as_bytes()).await;
        ledger.add(id, body["data"]["sent_ms"].as_u64().unwrap_or(0));
    }
}

/// SQS, with the id in the body (a resend after an unanswered send is the same message).
async fn publish_sqs(queue_url: String, rate: u64, ledger: Arc<Ledger>, switches: Arc<Switches>) {
    let sqs = crate::sqs::sqs().await;
    let mut tick = steady(rate);
    let mut n = 0u64;
    while !switches.stopped() {
        tick.tick().await;
        if switches.pause_sqs.load(std::sync::atomic::Ordering::SeqCst) {
            continue;
        }
        let id = format!("sqs-{n}");
        n += 1;
        let body = notification(&id, true);
        loop {
            match sqs
                .send_message()
                .queue_url(&queue_url)
                .message_body(body.to_string())
                .send()
                .await
            {
                Ok(_) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        ledger.add(id, body["data"]["sent_ms"].as_u64().unwrap_or(0));
    }
}

/// A publisher's ticks, `rate` per second. A publisher held up (an HTTP request to the
/// stopped gateway waits for its timeout) goes on at the same rate afterwards instead of
/// catching up with a burst: publishing stays steady, so the latency during a fault is
/// compared with the baseline under the same load.
fn steady(rate: u64) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// `POST /v1/publish` to the next live gateway, with the id in the body; an answer other
/// than 202 (a gateway not reached: 502; the registry down: 503) is sent again, to the
/// next gateway, as a producer would.
async fn publish_http(
    directory: Arc<Mutex<Directory>>,
    rate: u64,
    ledger: Arc<Ledger>,
    switches: Arc<Switches>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("HTTP client");
    let mut tick = steady(rate);
    let mut n = 0u64;
    let mut turn = 0usize;
    while !switches.stopped() {
        tick.tick().await;
        let id = format!("http-{n}");
        n += 1;
        let body = notification(&id, true);
        loop {
            turn += 1;
            let target = directory.lock().expect("directory").pick(turn);
            let Some((_, _, internal)) = target else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let answer = http
                .post(format!("{internal}/v1/publish"))
                .bearer_auth(crate::ADMIN_KEY)
                .json(&body)
                .send()
                .await;
            if answer.is_ok_and(|r| r.status() == 202) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ledger.add(id, body["data"]["sent_ms"].as_u64().unwrap_or(0));
    }
}

/// A `hermes.v1` client in Rust: connects to the next live gateway, resumes from the last
/// position it received, drops (and counts as a repeat) a notification it already has,
/// and counts a notification received twice on one socket as a duplicate.
async fn rust_client(
    n: usize,
    token: String,
    directory: Arc<Mutex<Directory>>,
    log: Arc<Mutex<ClientLog>>,
    switches: Arc<Switches>,
) {
    let mut position: Option<String> = None;
    let mut seen = std::collections::HashSet::new();
    let mut attempt = n;
    while !switches.stopped() {
        attempt += 1;
        let target = directory.lock().expect("directory").pick(attempt);
        let Some((slot, url, _)) = target else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut req = match url.into_client_request() {
            Ok(req) => req,
            Err(_) => continue,
        };
        let mut protocols = format!("hermes.v1, bearer.{token}");
        if let Some(pos) = &position {
            protocols.push_str(&format!(", since.{pos}"));
        }
        let Ok(value) = HeaderValue::from_str(&protocols) else {
            continue;
        };
        req.headers_mut().insert("Sec-WebSocket-Protocol", value);
        let ws = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(req),
        )
        .await;
        let Ok(Ok((mut ws, _))) = ws else {
            tokio::time::sleep(Duration::from_millis(100 + (attempt as u64 % 5) * 50)).await;
            continue;
        };
        let mut on_this_socket = std::collections::HashSet::new();
        loop {
            if switches.stopped() {
                break;
            }
            let frame = match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
                Ok(frame) => frame,
                Err(_) => continue,
            };
            let text = match frame {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) | Message::Binary(_),
                )) => continue,
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
            };
            let Ok(v) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            let Some(id) = v["data"]["id"].as_str().map(str::to_owned) else {
                continue;
            };
            if let Some(pos) = v["pos"].as_str()
                && position.as_deref().is_none_or(|p| pos > p)
            {
                position = Some(pos.to_owned());
            }
            let mut log = log.lock().expect("log");
            if !on_this_socket.insert(id.clone()) {
                log.duplicates.push(id);
                continue;
            }
            if !seen.insert(id.clone()) {
                log.repeats.push(id);
                continue;
            }
            let at_ms = now_ms();
            log.receipts.push(Receipt {
                latency_ms: at_ms.saturating_sub(v["data"]["sent_ms"].as_u64().unwrap_or(at_ms)),
                id,
                gateway: slot,
            });
        }
        let _ = ws.close(None).await;
        tokio::time::sleep(Duration::from_millis(100 + (attempt as u64 % 5) * 50)).await;
    }
}

/// A `hermes.js` client in Node (tests/faults/hermes-client.mjs): what it prints is what
/// the application sees.
async fn node_client(
    gateways_file: PathBuf,
    token: String,
    log: Arc<Mutex<ClientLog>>,
    switches: Arc<Switches>,
) {
    let token_file = gateways_file.with_extension(format!("token-{}", unique("t")));
    std::fs::write(&token_file, &token).expect("write the token file");
    let script = format!("{}/faults/hermes-client.mjs", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new("node")
        .arg("--experimental-websocket")
        .arg("--no-warnings")
        .arg(&script)
        .arg(&gateways_file)
        .arg(&token_file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (Node.js 20 or later)");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = std::collections::HashSet::new();
    loop {
        if switches.stopped() {
            break;
        }
        let line = match tokio::time::timeout(Duration::from_millis(200), lines.next_line()).await {
            Ok(line) => line,
            Err(_) => continue,
        };
        let Ok(Some(line)) = line else { break };
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if v["kind"] != "notification" {
            continue;
        }
        // The publisher's id (the server's `id` for RabbitMQ messages is derived).
        let Some(data_id) = v["data_id"].as_str().map(str::to_owned) else {
            continue;
        };
        let mut log = log.lock().expect("log");
        if !seen.insert(data_id.clone()) {
            log.duplicates.push(data_id);
            continue;
        }
        let at_ms = v["at_ms"].as_u64().unwrap_or_else(now_ms);
        log.receipts.push(Receipt {
            latency_ms: at_ms.saturating_sub(v["sent_ms"].as_u64().unwrap_or(at_ms)),
            id: data_id,
            gateway: usize::MAX,
        });
    }
    let _ = child.kill().await;
    let _ = std::fs::remove_file(&token_file);
}

/// One stretch of the run: a fault and the steady publishing after it.
struct Phase {
    name: String,
    start_ms: u64,
    end_ms: u64,
    /// For the SIGSTOP: when the gateway was stopped and continued.
    frozen: Option<(u64, u64)>,
}

/// Runs the checker: starts the world, the clients and the publishers, makes each fault,
/// waits until every client has every notification (or a minute passes), and reports
/// per fault; the first row is the steady publishing before any fault.
pub async fn run(settings: &Settings) -> Vec<FaultReport> {
    let mut world = World::start().await;
    let ledger = Arc::new(Ledger::default());
    let publishing = Arc::new(Switches::default());
    let listening = Arc::new(Switches::default());

    let admin = world.gateway(0).internal.clone();
    let (logs, clients) = spawn_clients(
        settings,
        &admin,
        crate::ADMIN_KEY,
        &world.directory,
        &world.gateways_file,
        &listening,
    )
    .await;
    warm_up(&logs, &admin, crate::ADMIN_KEY).await;

    let publishers = [
        tokio::spawn(publish_amqp(
            world.queue.clone(),
            settings.rate,
            ledger.clone(),
            publishing.clone(),
        )),
        tokio::spawn(publish_sqs(
            world.sqs_queue_url.clone(),
            settings.rate,
            ledger.clone(),
            publishing.clone(),
        )),
        tokio::spawn(publish_http(
            world.directory.clone(),
            settings.rate,
            ledger.clone(),
            publishing.clone(),
        )),
    ];

    let mut phases = Vec::new();
    let start_ms = now_ms();
    tokio::time::sleep(settings.settle).await;
    phases.push(Phase {
        name: STEADY.to_owned(),
        start_ms,
        end_ms: now_ms(),
        frozen: None,
    });
    for &fault in &settings.faults {
        let start_ms = now_ms();
        println!("faults: making {}", fault.name());
        if fault == Fault::SqsRestart {
            Switches::set(&publishing.pause_sqs, true);
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        world.frozen_ms = None;
        world.make(fault).await;
        Switches::set(&publishing.pause_sqs, false);
        tokio::time::sleep(settings.settle).await;
        phases.push(Phase {
            name: fault.name().to_owned(),
            start_ms,
            end_ms: now_ms(),
            frozen: world.frozen_ms.filter(|_| fault == Fault::FreezeGateway),
        });
    }
    let logs = settle_and_stop(&ledger, &publishing, publishers, logs, &listening, clients).await;
    world.stop().await;
    let published: Vec<(String, u64)> = ledger.published.lock().expect("ledger").clone();
    phases
        .iter()
        .map(|phase| report(phase, &phases[0], &published, &logs))
        .collect()
}

/// The name of the first row: the steady publishing before any fault.
const STEADY: &str = "none (steady publishing)";

/// Issues a token per client (`POST /v1/tokens` at `admin`) and starts the clients: the
/// Rust ones take the directory's gateways, the `hermes.js` ones the gateways file.
async fn spawn_clients(
    settings: &Settings,
    admin: &str,
    admin_key: &str,
    directory: &Arc<Mutex<Directory>>,
    gateways_file: &std::path::Path,
    listening: &Arc<Switches>,
) -> (Vec<Arc<Mutex<ClientLog>>>, Vec<tokio::task::JoinHandle<()>>) {
    let http = reqwest::Client::new();
    let mut logs = Vec::new();
    let mut clients = Vec::new();
    for k in 0..settings.rust_clients + settings.node_clients {
        let rust = k < settings.rust_clients;
        let name = if rust {
            format!("rust-{k}")
        } else {
            format!("node-{k}")
        };
        let answer = http
            .post(format!("{admin}/v1/tokens"))
            .bearer_auth(admin_key)
            .json(&json!({"user_id": name, "room_id": ROOM}))
            .send()
            .await
            .expect("POST /v1/tokens");
        assert_eq!(answer.status(), 201, "POST /v1/tokens at {admin}");
        let body: Value = answer.json().await.expect("the token as JSON");
        let token = body["token"].as_str().expect("a token").to_owned();
        let log = Arc::new(Mutex::new(ClientLog {
            name,
            ..ClientLog::default()
        }));
        clients.push(if rust {
            tokio::spawn(rust_client(
                k,
                token,
                directory.clone(),
                log.clone(),
                listening.clone(),
            ))
        } else {
            tokio::spawn(node_client(
                gateways_file.to_owned(),
                token,
                log.clone(),
                listening.clone(),
            ))
        });
        logs.push(log);
    }
    (logs, clients)
}

/// Every client is in the room before publishing starts: warm-up notifications (`POST
/// /v1/publish` at `admin`) until each has one.
async fn warm_up(logs: &[Arc<Mutex<ClientLog>>], admin: &str, admin_key: &str) {
    let http = reqwest::Client::new();
    let warmed = crate::within(
        Duration::from_secs(60),
        Duration::from_millis(300),
        || async {
            let _ = http
                .post(format!("{admin}/v1/publish"))
                .bearer_auth(admin_key)
                .json(&json!({"user_id": "checker", "room_id": ROOM,
                          "data": {"id": format!("warmup-{}", now_ms()), "sent_ms": now_ms()}}))
                .send()
                .await;
            logs.iter().all(|log| {
                log.lock()
                    .expect("log")
                    .receipts
                    .iter()
                    .any(|r| r.id.starts_with("warmup-"))
            })
        },
    )
    .await;
    assert!(warmed.is_some(), "every client connected within a minute");
}

/// Stops the publishers, waits until every client has every notification (or a minute
/// passes), stops the clients and gives back what each received.
async fn settle_and_stop(
    ledger: &Ledger,
    publishing: &Switches,
    publishers: impl IntoIterator<Item = tokio::task::JoinHandle<()>>,
    logs: Vec<Arc<Mutex<ClientLog>>>,
    listening: &Switches,
    clients: Vec<tokio::task::JoinHandle<()>>,
) -> Vec<ClientLog> {
    println!("faults: publishing stopped; waiting for every client to have every notification");
    Switches::set(&publishing.stop, true);
    for p in publishers {
        let _ = p.await;
    }
    let published: Vec<(String, u64)> = ledger.published.lock().expect("ledger").clone();
    let _ = crate::within(
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            logs.iter().all(|log| {
                let log = log.lock().expect("log");
                let got: std::collections::HashSet<&str> =
                    log.receipts.iter().map(|r| r.id.as_str()).collect();
                published.iter().all(|(id, _)| got.contains(id.as_str()))
            })
        },
    )
    .await;
    Switches::set(&listening.stop, true);
    for c in clients {
        let _ = c.await;
    }
    logs.into_iter()
        .map(|l| std::mem::take(&mut *l.lock().expect("log")))
        .collect()
}

/// A release installed elsewhere (a Kubernetes cluster: `scripts/kube/upgrade-on-node.sh`),
/// reached the way its users reach it.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The gateways' WebSocket URL through their Service (a load balancer's address).
    pub ws_url: String,
    /// One gateway's internal URL (admin API): tokens and the warm-up.
    pub admin_url: String,
    pub admin_key: String,
    /// The release's RabbitMQ queue (the broker at `HERMES_TEST_AMQP_URL`).
    pub queue: String,
}

/// The checker against an installed release: the clients (through the Service) and a
/// RabbitMQ publisher at `settings.rate`, steady publishing for `settings.settle`, then
/// `disruption` (named `name`, e.g. a `helm upgrade`) under that publishing, the settle
/// again, and the same report as [`run`]: the steady row, then the disruption's.
/// `disruption` answers an error to stop the run (the report is then not made).
pub async fn run_installed<F, Fut>(
    installed: &Installed,
    settings: &Settings,
    name: &str,
    disruption: F,
) -> Result<Vec<FaultReport>, String>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let ledger = Arc::new(Ledger::default());
    let publishing = Arc::new(Switches::default());
    let listening = Arc::new(Switches::default());
    let directory = Arc::new(Mutex::new(Directory {
        slots: vec![Some((
            installed.ws_url.clone(),
            installed.admin_url.clone(),
        ))],
    }));
    let gateways_file =
        std::env::temp_dir().join(format!("{}.gateways", unique("hermes-installed")));
    std::fs::write(&gateways_file, &installed.ws_url).expect("write the gateways file");
    let admin = installed.admin_url.as_str();
    let key = installed.admin_key.as_str();
    let (logs, clients) =
        spawn_clients(settings, admin, key, &directory, &gateways_file, &listening).await;
    warm_up(&logs, admin, key).await;
    let publishers = [tokio::spawn(publish_amqp(
        installed.queue.clone(),
        settings.rate,
        ledger.clone(),
        publishing.clone(),
    ))];
    let start_ms = now_ms();
    tokio::time::sleep(settings.settle).await;
    let steady = Phase {
        name: STEADY.to_owned(),
        start_ms,
        end_ms: now_ms(),
        frozen: None,
    };
    let start_ms = now_ms();
    println!("faults: making {name}");
    let made = disruption().await;
    tokio::time::sleep(settings.settle).await;
    let phases = [
        steady,
        Phase {
            name: name.to_owned(),
            start_ms,
            end_ms: now_ms(),
            frozen: None,
        },
    ];
    let logs = settle_and_stop(&ledger, &publishing, publishers, logs, &listening, clients).await;
    let _ = std::fs::remove_file(&gateways_file);
    made?;
    let published: Vec<(String, u64)> = ledger.published.lock().expect("ledger").clone();
    Ok(phases
        .iter()
        .map(|phase| report(phase, &phases[0], &published, &logs))
        .collect())
}

fn report(
    phase: &Phase,
    baseline: &Phase,
    published: &[(String, u64)],
    logs: &[ClientLog],
) -> FaultReport {
    let in_phase: HashMap<&str, u64> = published
        .iter()
        .filter(|(_, at)| *at >= phase.start_ms && *at < phase.end_ms)
        .map(|(id, at)| (id.as_str(), *at))
        .collect();
    let mut lost = 0;
    let mut duplicated = 0;
    let mut repeats = 0;
    let mut missing = Vec::new();
    for log in logs {
        let got: std::collections::HashSet<&str> =
            log.receipts.iter().map(|r| r.id.as_str()).collect();
        let mut ids: Vec<&&str> = in_phase.keys().collect();
        ids.sort();
        for id in ids {
            if !got.contains(*id) {
                lost += 1;
                if missing.len() < 5 {
                    missing.push(format!("{} missed {id}", log.name));
                }
            }
        }
        duplicated += log
            .duplicates
            .iter()
            .filter(|id| in_phase.contains_key(id.as_str()))
            .count();
        repeats += log
            .repeats
            .iter()
            .filter(|id| in_phase.contains_key(id.as_str()))
            .count();
    }
    let others_p99_ms = phase.frozen.map(|(stopped, continued)| OthersP99 {
        during: others_p99(published, logs, stopped, continued),
        before: others_p99(published, logs, baseline.start_ms, baseline.end_ms),
        steady: others_p99(
            published,
            logs,
            baseline.start_ms + WARM_UP_MS,
            baseline.end_ms,
        ),
    });
    FaultReport {
        name: phase.name.clone(),
        published: in_phase.len(),
        lost,
        duplicated,
        repeats,
        others_p99_ms,
        note: {
            let mut by_source: std::collections::BTreeMap<&str, usize> = Default::default();
            for log in logs {
                let got: std::collections::HashSet<&str> =
                    log.receipts.iter().map(|r| r.id.as_str()).collect();
                for id in in_phase.keys().filter(|id| !got.contains(*id)) {
                    *by_source
                        .entry(id.split('-').next().unwrap_or("?"))
                        .or_default() += 1;
                }
            }
            let mut note = missing.join(", ");
            if !by_source.is_empty() {
                note.push_str(&format!("; lost by source {by_source:?}"));
            }
            note
        },
    }
}

/// The p99 latency (ms) at the Rust clients on the gateways other than the one the
/// SIGSTOP stops (slot 2) of the notifications published through the queues in
/// `[from, to)`.
fn others_p99(published: &[(String, u64)], logs: &[ClientLog], from: u64, to: u64) -> f64 {
    let window: std::collections::HashSet<&str> = published
        .iter()
        .filter(|(_, at)| *at >= from && *at < to)
        // Through the queues: an HTTP publisher that picks the stopped gateway waits for
        // its own request, which is not delivery.
        .filter(|(id, _)| !id.starts_with("http-"))
        .map(|(id, _)| id.as_str())
        .collect();
    let mut latencies: Vec<f64> = logs
        .iter()
        .flat_map(|l| l.receipts.iter())
        .filter(|r| r.gateway != FROZEN_SLOT && r.gateway != usize::MAX)
        .filter(|r| window.contains(r.id.as_str()))
        .map(|r| r.latency_ms as f64)
        .collect();
    crate::cluster::quantile(&mut latencies, 0.99)
}

/// The checker's table: one line per fault, then `faults: N lost, M duplicated across K
/// faults`; with the totals of lost and duplicated.
pub fn summary(reports: &[FaultReport]) -> (String, usize, usize) {
    let mut text: Vec<String> = reports.iter().map(FaultReport::line).collect();
    let lost: usize = reports.iter().map(|r| r.lost).sum();
    let duplicated: usize = reports.iter().map(|r| r.duplicated).sum();
    text.push(format!(
        "faults: {lost} lost, {duplicated} duplicated across {} faults",
        reports.len().saturating_sub(1)
    ));
    (text.join("\n"), lost, duplicated)
}
