//! Socket holders: child processes (`hermes-bench hold`) that each open a share of the
//! sockets (the open-file limit is per process) from several 127.0.0.x source addresses,
//! with small tungstenite buffers, keep them alive through the server's heartbeats, and
//! report each benchmark message once every one of their sockets has received it.
//!
//! Holder protocol, one line each way:
//! - stdout `ready <open> <failed>` once every connect was tried;
//! - stdout `done <seq> <last_receipt_us>` when all of its sockets received message `seq`;
//! - stdin `status` → stdout `open <n>`; stdin closed → the holder exits.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::now_micros;
use crate::servers::{Kind, Target};

/// Message sequence numbers a run may use (slots of the receipt counters).
pub const MAX_SEQ: usize = 1 << 16;
/// Sockets per holder process (the open-file limit here is 20,000 per process).
pub const PER_PROCESS: usize = 9_500;

type Ws = WebSocketStream<TcpStream>;

fn ws_config() -> WebSocketConfig {
    // Small buffers: the generator's own memory must not be what limits the socket count.
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(64 * 1024))
        .max_frame_size(Some(64 * 1024))
}

/// Opens one socket from `source` and joins the benchmark room / channel.
async fn open(t: &Target, source: IpAddr) -> Result<Ws> {
    let mut request = t.url.as_str().into_client_request()?;
    request
        .headers_mut()
        .insert("Origin", HeaderValue::from_static("http://127.0.0.1"));
    let host = request.uri().host().context("host")?.to_owned();
    let port = request.uri().port_u16().unwrap_or(80);
    let addr: SocketAddr = format!("{host}:{port}").parse()?;
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config())).await?;
    if t.kind == Kind::Centrifugo {
        // Centrifugo's JSON protocol: connect with the JWT, then subscribe.
        let connect =
            serde_json::json!({"id": 1, "connect": {"token": t.token, "name": "hermes-bench"}});
        ws.send(Message::text(connect.to_string())).await?;
        expect_reply(&mut ws, 1).await?;
        let sub = serde_json::json!({"id": 2, "subscribe": {"channel": t.channel}});
        ws.send(Message::text(sub.to_string())).await?;
        expect_reply(&mut ws, 2).await?;
    }
    Ok(ws)
}

async fn expect_reply(ws: &mut Ws, id: u64) -> Result<()> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .context("no reply from centrifugo")?;
        let text = match m {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
            other => bail!("socket ended: {other:?}"),
        };
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            if v["id"].as_u64() == Some(id) {
                if v.get("error").is_some() {
                    bail!("centrifugo refused: {line}");
                }
                return Ok(());
            }
        }
    }
}

/// `"seq":N,"sent_us":T` from a delivered frame without a JSON parse per receipt (the same
/// cost for both servers: only the payload the benchmark publishes is looked at).
fn seq_of(frame: &str) -> Option<usize> {
    let at = frame.find("\"seq\":")? + 6;
    let digits: &str = frame[at..].split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

struct Counters {
    count: Vec<AtomicU32>,
    last: Vec<AtomicU64>,
    expected: AtomicU32,
    open: AtomicUsize,
}

/// `hermes-bench hold`: the body of a holder process.
pub async fn hold(t: Target, count: usize, sources: Vec<IpAddr>, concurrency: usize) -> Result<()> {
    let counters = Arc::new(Counters {
        count: (0..MAX_SEQ).map(|_| AtomicU32::new(0)).collect(),
        last: (0..MAX_SEQ).map(|_| AtomicU64::new(0)).collect(),
        expected: AtomicU32::new(u32::MAX),
        open: AtomicUsize::new(0),
    });
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<String>();
    // Plain threads for stdin/stdout (tokio's io-std feature is not enabled in this workspace).
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        while let Some(line) = out_rx.blocking_recv() {
            if stdout.write_all(line.as_bytes()).is_err() || stdout.flush().is_err() {
                break;
            }
        }
    });
    let t = Arc::new(t);
    let failed = AtomicUsize::new(0);
    let first_error = std::sync::Mutex::new(None::<String>);
    futures_util::stream::iter(0..count)
        .for_each_concurrent(concurrency, |i| {
            let t = t.clone();
            let counters = counters.clone();
            let out = out_tx.clone();
            let source = sources[i % sources.len()];
            let failed = &failed;
            let first_error = &first_error;
            async move {
                match open(&t, source).await {
                    Ok(ws) => {
                        counters.open.fetch_add(1, Ordering::SeqCst);
                        tokio::spawn(read_loop(ws, t.kind, counters, out));
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        let mut first = first_error.lock().unwrap_or_else(|p| p.into_inner());
                        if first.is_none() {
                            *first = Some(format!("{e:#}"));
                        }
                    }
                }
            }
        })
        .await;
    let open_now = counters.open.load(Ordering::SeqCst);
    counters
        .expected
        .store(u32::try_from(open_now)?, Ordering::SeqCst);
    if let Some(e) = first_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        eprintln!("hermes-bench hold: first connect error: {e}");
    }
    let _ = out_tx.send(format!(
        "ready {open_now} {}\n",
        failed.load(Ordering::SeqCst)
    ));
    let (in_tx, mut in_rx) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if in_tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = in_rx.recv().await {
        if line.trim() == "status" {
            let _ = out_tx.send(format!("open {}\n", counters.open.load(Ordering::SeqCst)));
        }
    }
    drop(out_tx);
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    std::process::exit(0);
}

async fn read_loop(
    mut ws: Ws,
    kind: Kind,
    counters: Arc<Counters>,
    out: mpsc::UnboundedSender<String>,
) {
    while let Some(Ok(m)) = ws.next().await {
        let Message::Text(text) = m else { continue };
        for frame in text.lines() {
            if kind == Kind::Centrifugo && frame == "{}" {
                // Centrifugo's application-level ping: answer with a pong.
                if ws.send(Message::text("{}")).await.is_err() {
                    break;
                }
                continue;
            }
            let Some(seq) = seq_of(frame) else { continue };
            let slot = seq % MAX_SEQ;
            counters.last[slot].fetch_max(now_micros(), Ordering::SeqCst);
            let n = counters.count[slot].fetch_add(1, Ordering::SeqCst) + 1;
            if n == counters.expected.load(Ordering::SeqCst) {
                let last = counters.last[slot].load(Ordering::SeqCst);
                let _ = out.send(format!("done {seq} {last}\n"));
            }
        }
    }
    counters.open.fetch_sub(1, Ordering::SeqCst);
}

/// The holder processes of one run, as seen from the driver.
pub struct Holders {
    children: Vec<(Child, ChildStdin)>,
    pub lines: mpsc::UnboundedReceiver<(usize, String)>,
    pub open: usize,
    pub failed: usize,
    pub connect_seconds: f64,
}

impl Holders {
    /// Starts enough holders for `sockets` and waits until every connect was tried.
    pub async fn start(t: &Target, sockets: usize, sources: &[IpAddr]) -> Result<Self> {
        let exe = std::env::current_exe()?;
        let processes = sockets.div_ceil(PER_PROCESS).max(1);
        let (tx, rx) = mpsc::unbounded_channel();
        let mut children = Vec::new();
        let started = std::time::Instant::now();
        let mut left = sockets;
        for p in 0..processes {
            let n = left.div_ceil(processes - p);
            left -= n;
            // Each holder starts at a different source address.
            let mut own: Vec<IpAddr> = sources.to_vec();
            own.rotate_left(p % sources.len().max(1));
            let mut child = Command::new(&exe)
                .arg("hold")
                .arg("--server")
                .arg(t.kind.name())
                .arg("--url")
                .arg(&t.url)
                .arg("--token")
                .arg(&t.token)
                .arg("--channel")
                .arg(&t.channel)
                .arg("--count")
                .arg(n.to_string())
                .arg("--sources")
                .arg(
                    own.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                )
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .context("start a holder")?;
            let stdin = child.stdin.take().context("stdin")?;
            let stdout = child.stdout.take().context("stdout")?;
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if tx.send((p, l)).is_err() {
                        break;
                    }
                }
            });
            children.push((child, stdin));
        }
        let mut h = Holders {
            children,
            lines: rx,
            open: 0,
            failed: 0,
            connect_seconds: 0.0,
        };
        let mut ready = 0;
        while ready < processes {
            let (_, line) = tokio::time::timeout(Duration::from_secs(300), h.lines.recv())
                .await
                .context("holders did not get ready in 300 s")?
                .context("a holder exited")?;
            if let Some(rest) = line.strip_prefix("ready ") {
                let mut it = rest.split_whitespace().map(|v| v.parse::<usize>());
                h.open += it.next().context("open")??;
                h.failed += it.next().context("failed")??;
                ready += 1;
            }
        }
        h.connect_seconds = started.elapsed().as_secs_f64();
        Ok(h)
    }

    pub fn processes(&self) -> usize {
        self.children.len()
    }

    /// Sockets still open across the holders.
    pub async fn open_now(&mut self) -> Result<usize> {
        for (_, stdin) in &mut self.children {
            stdin.write_all(b"status\n").await?;
            stdin.flush().await?;
        }
        let mut answers = 0;
        let mut open = 0;
        while answers < self.children.len() {
            let (_, line) = tokio::time::timeout(Duration::from_secs(30), self.lines.recv())
                .await
                .context("no status from the holders")?
                .context("a holder exited")?;
            if let Some(n) = line.strip_prefix("open ") {
                open += n.trim().parse::<usize>()?;
                answers += 1;
            }
        }
        Ok(open)
    }

    pub async fn stop(self) {
        for (mut child, stdin) in self.children {
            drop(stdin);
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}
