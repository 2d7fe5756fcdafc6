//! Socket holders: child processes (`hermes-bench hold`) that each open a share of the
//! sockets (the open-file limit is per process) from several 127.0.0.x source addresses,
//! with small tungstenite buffers, keep them alive through the server's heartbeats, and
//! report each benchmark message once every one of their sockets has received it.
//!
//! Holder protocol, one line each way:
//! - stdout `conn <ok> <failed> <first_start_us> <last_ok_us> <latencies_us,...>` then
//!   `ready <open> <failed>` once every connect was tried;
//! - stdout `done <seq> <last_receipt_us>` when all of its sockets received message `seq`;
//! - stdin `status` → stdout `open <n>`;
//! - stdin `storm` → every socket is dropped at once (TCP closed, no close frame), then all
//!   `count` are reconnected with `storm_concurrency` in flight → stdout
//!   `storm <ok> <failed> <first_start_us> <last_ok_us> <latencies_us,...>`;
//! - stdin closed → the holder exits.
//!
//! A connect's latency runs from the TCP connect to the 101 (Hermes) or to the reply to
//! Centrifugo's `connect` command (its JWT check); an empty channel skips the subscribe.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, watch};
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

/// One connect from the driver (P4's warm-up: the token's first, bcrypt, verify).
pub async fn open_once(t: &Target, source: IpAddr) -> Result<()> {
    let ws = tokio::time::timeout(Duration::from_secs(10), open(t, source))
        .await
        .context("warm-up connect timed out")??;
    drop(ws);
    Ok(())
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
    // Closed with a RST: no TIME_WAIT left behind to slow the port search of later binds
    // (a run opens up to 38,000 sockets from 4 source addresses).
    socket.set_zero_linger()?;
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
        if t.channel.is_empty() {
            return Ok(ws);
        }
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

/// Outcome of one batch of connects in a holder.
struct Batch {
    ok: usize,
    failed: usize,
    first_start_us: u64,
    last_ok_us: u64,
    latencies_us: Vec<u64>,
    first_error: Option<String>,
}

impl Batch {
    fn line(&self, tag: &str) -> String {
        let lat = if self.latencies_us.is_empty() {
            "-".to_owned()
        } else {
            self.latencies_us
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        format!(
            "{tag} {} {} {} {} {lat}\n",
            self.ok, self.failed, self.first_start_us, self.last_ok_us
        )
    }
}

/// What every socket task of a holder shares.
#[derive(Clone)]
struct Shared {
    t: Arc<Target>,
    counters: Arc<Counters>,
    out: mpsc::UnboundedSender<String>,
    /// Bumped to drop every open socket at once.
    stop: watch::Receiver<u64>,
}

/// Opens `count` sockets, `concurrency` in flight, each handed to a reader task.
async fn connect_all(sh: &Shared, count: usize, sources: &[IpAddr], concurrency: usize) -> Batch {
    let failed = AtomicUsize::new(0);
    let ok = AtomicUsize::new(0);
    let last_ok = AtomicU64::new(0);
    let first_error = std::sync::Mutex::new(None::<String>);
    let latencies = std::sync::Mutex::new(Vec::with_capacity(count));
    let first_start_us = now_micros();
    futures_util::stream::iter(0..count)
        .for_each_concurrent(concurrency, |i| {
            let sh = sh.clone();
            let source = sources[i % sources.len()];
            let (failed, ok, last_ok, first_error, latencies) =
                (&failed, &ok, &last_ok, &first_error, &latencies);
            async move {
                let started = std::time::Instant::now();
                let r = tokio::time::timeout(Duration::from_secs(10), open(&sh.t, source))
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("connect timed out after 10 s")));
                match r {
                    Ok(ws) => {
                        let us = started.elapsed().as_micros() as u64;
                        last_ok.fetch_max(now_micros(), Ordering::SeqCst);
                        ok.fetch_add(1, Ordering::SeqCst);
                        latencies
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(us.max(1));
                        sh.counters.open.fetch_add(1, Ordering::SeqCst);
                        tokio::spawn(read_loop(
                            ws,
                            sh.t.kind,
                            sh.counters.clone(),
                            sh.out.clone(),
                            sh.stop.clone(),
                        ));
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
    Batch {
        ok: ok.into_inner(),
        failed: failed.into_inner(),
        first_start_us,
        last_ok_us: last_ok.into_inner(),
        latencies_us: latencies.into_inner().unwrap_or_else(|p| p.into_inner()),
        first_error: first_error.into_inner().unwrap_or_else(|p| p.into_inner()),
    }
}

/// `hermes-bench hold`: the body of a holder process.
pub async fn hold(
    t: Target,
    count: usize,
    sources: Vec<IpAddr>,
    concurrency: usize,
    storm_concurrency: usize,
) -> Result<()> {
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
    let (stop_tx, stop_rx) = watch::channel(0u64);
    let sh = Shared {
        t: Arc::new(t),
        counters: counters.clone(),
        out: out_tx.clone(),
        stop: stop_rx,
    };
    let batch = connect_all(&sh, count, &sources, concurrency).await;
    let open_now = counters.open.load(Ordering::SeqCst);
    counters
        .expected
        .store(u32::try_from(open_now)?, Ordering::SeqCst);
    if let Some(e) = &batch.first_error {
        eprintln!("hermes-bench hold: first connect error: {e}");
    }
    let _ = out_tx.send(batch.line("conn"));
    let _ = out_tx.send(format!("ready {open_now} {}\n", batch.failed));
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
        match line.trim() {
            "status" => {
                let _ = out_tx.send(format!("open {}\n", counters.open.load(Ordering::SeqCst)));
            }
            "storm" => {
                // Drop every socket at once, wait until their tasks are gone, reconnect all.
                stop_tx.send_modify(|g| *g += 1);
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while counters.open.load(Ordering::SeqCst) > 0
                    && std::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let sh = Shared {
                    stop: stop_tx.subscribe(),
                    ..sh.clone()
                };
                let batch = connect_all(&sh, count, &sources, storm_concurrency).await;
                if let Some(e) = &batch.first_error {
                    eprintln!("hermes-bench hold: first storm reconnect error: {e}");
                }
                let _ = out_tx.send(batch.line("storm"));
            }
            _ => {}
        }
    }
    drop(out_tx);
    drop(sh);
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    std::process::exit(0);
}

async fn read_loop(
    mut ws: Ws,
    kind: Kind,
    counters: Arc<Counters>,
    out: mpsc::UnboundedSender<String>,
    mut stop: watch::Receiver<u64>,
) {
    stop.mark_unchanged();
    loop {
        let m = tokio::select! {
            m = ws.next() => m,
            _ = stop.changed() => break,
        };
        let Some(Ok(m)) = m else { break };
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

/// A holder's `conn` or `storm` line, parsed.
pub struct BatchReport {
    pub ok: usize,
    pub failed: usize,
    pub first_start_us: u64,
    pub last_ok_us: u64,
    pub latencies_us: Vec<u64>,
}

fn parse_batch(rest: &str) -> Result<BatchReport> {
    let mut it = rest.split_whitespace();
    let mut num = || -> Result<u64> { Ok(it.next().context("short batch line")?.parse()?) };
    let (ok, failed, first_start_us, last_ok_us) = (num()?, num()?, num()?, num()?);
    let latencies_us = match it.next() {
        None | Some("-") => Vec::new(),
        Some(l) => l.split(',').map(str::parse).collect::<Result<_, _>>()?,
    };
    Ok(BatchReport {
        ok: usize::try_from(ok)?,
        failed: usize::try_from(failed)?,
        first_start_us,
        last_ok_us,
        latencies_us,
    })
}

/// The holder processes of one run, as seen from the driver.
pub struct Holders {
    children: Vec<(Child, ChildStdin)>,
    pub lines: mpsc::UnboundedReceiver<(usize, String)>,
    pub open: usize,
    pub failed: usize,
    pub connect_seconds: f64,
    /// Each holder's initial connects.
    pub batches: Vec<BatchReport>,
}

impl Holders {
    /// Starts enough holders for `sockets` and waits until every connect was tried.
    pub async fn start(t: &Target, sockets: usize, sources: &[IpAddr]) -> Result<Self> {
        Self::start_with(t, sockets, sources, 64, 64).await
    }

    /// As `start`, with `concurrency` connects in flight per holder (and
    /// `storm_concurrency` for a later `storm`).
    pub async fn start_with(
        t: &Target,
        sockets: usize,
        sources: &[IpAddr],
        concurrency: usize,
        storm_concurrency: usize,
    ) -> Result<Self> {
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
                .arg("--concurrency")
                .arg(concurrency.to_string())
                .arg("--storm-concurrency")
                .arg(storm_concurrency.to_string())
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
            batches: Vec::new(),
        };
        let mut ready = 0;
        while ready < processes {
            let (_, line) = tokio::time::timeout(Duration::from_secs(300), h.lines.recv())
                .await
                .context("holders did not get ready in 300 s")?
                .context("a holder exited")?;
            if let Some(rest) = line.strip_prefix("conn ") {
                h.batches.push(parse_batch(rest)?);
            } else if let Some(rest) = line.strip_prefix("ready ") {
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

    /// Every holder drops all its sockets at once and reconnects them; one report each.
    pub async fn storm(&mut self) -> Result<Vec<BatchReport>> {
        for (_, stdin) in &mut self.children {
            stdin.write_all(b"storm\n").await?;
            stdin.flush().await?;
        }
        let mut out = Vec::new();
        while out.len() < self.children.len() {
            let (_, line) = tokio::time::timeout(Duration::from_secs(300), self.lines.recv())
                .await
                .context("the storm did not end in 300 s")?
                .context("a holder exited")?;
            if let Some(rest) = line.strip_prefix("storm ") {
                out.push(parse_batch(rest)?);
            }
        }
        Ok(out)
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
