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
//! With `--latency` (P3, P5) every received frame carrying `"sent_us":T` (µs since the epoch,
//! stamped by the driver at send time) is also recorded, receipt time − T, in the holder's HDR
//! histogram (per delivery, not per message):
//! - stdin `lat-reset` → the histogram and the receipt count are cleared → stdout `lat-reset`;
//! - stdin `wait <n> <timeout_ms>` → stdout `reached <received>` once the holder has received
//!   `n` such frames since the last reset, or when the timeout passes;
//! - stdin `lat` → stdout `lat <received> <histogram, V2 serialization, base64>`.
//!
//! With `--targets FILE` each socket has its own target: line *i* of the file is
//! `<url> <token>` (`-` for no token) for socket *i* of this holder.
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

use crate::measure::now_micros;
use crate::servers::{Kind, Target};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};

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
pub(crate) async fn open(t: &Target, source: IpAddr) -> Result<Ws> {
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

/// `"sent_us":T` of a delivered frame (the same cheap scan as [`seq_of`]).
fn sent_us_of(frame: &str) -> Option<u64> {
    let at = frame.find("\"sent_us\":")? + 10;
    let digits: &str = frame[at..].split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

struct Counters {
    count: Vec<AtomicU32>,
    last: Vec<AtomicU64>,
    expected: AtomicU32,
    open: AtomicUsize,
    /// `--latency`: receipt − `sent_us` of every frame carrying it, since the last reset.
    latency: Option<Latency>,
}

/// `HERMES_BENCH_SLOW_TRACE=DIR:MICROS`: receipts at least MICROS late are kept (send time,
/// latency) and appended to `DIR/holder-<pid>.txt` at each `lat` query, to see whether a
/// tail is clustered stalls or spread queueing. A diagnostic; off by default.
fn slow_trace() -> Option<&'static (String, u64)> {
    static AT: std::sync::OnceLock<Option<(String, u64)>> = std::sync::OnceLock::new();
    AT.get_or_init(|| {
        let v = std::env::var("HERMES_BENCH_SLOW_TRACE").ok()?;
        let (dir, us) = v.rsplit_once(':')?;
        Some((dir.to_owned(), us.parse().ok()?))
    })
    .as_ref()
}

struct Latency {
    histogram: std::sync::Mutex<Histogram<u64>>,
    slow: std::sync::Mutex<Vec<(u64, u64)>>,
    received: AtomicU64,
    /// A `wait` in progress: the count that wakes it.
    target: AtomicU64,
    reached: tokio::sync::Notify,
}

impl Latency {
    fn new() -> Result<Self> {
        Ok(Self {
            histogram: std::sync::Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
            slow: std::sync::Mutex::new(Vec::new()),
            received: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            reached: tokio::sync::Notify::new(),
        })
    }

    fn record(&self, sent_us: u64) {
        let us = now_micros().saturating_sub(sent_us).clamp(1, 600_000_000);
        if let Some((_, at)) = slow_trace()
            && us >= *at
        {
            self.slow
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((sent_us, us));
        }
        let _ = self
            .histogram
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(us);
        let n = self.received.fetch_add(1, Ordering::SeqCst) + 1;
        if n >= self.target.load(Ordering::SeqCst) {
            self.reached.notify_one();
        }
    }

    fn reset(&self) {
        self.histogram
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reset();
        self.slow.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.received.store(0, Ordering::SeqCst);
    }

    /// Waits until `n` frames were received since the last reset, at most `limit`.
    async fn wait(&self, n: u64, limit: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let reached = self.reached.notified();
            tokio::pin!(reached);
            // Registered before the check: a receipt in between still wakes this wait.
            reached.as_mut().enable();
            self.target.store(n, Ordering::SeqCst);
            let got = self.received.load(Ordering::SeqCst);
            if got >= n {
                break;
            }
            if tokio::time::timeout_at(deadline, reached).await.is_err() {
                break;
            }
        }
        self.target.store(u64::MAX, Ordering::SeqCst);
        self.received.load(Ordering::SeqCst)
    }

    fn dump(&self) -> Result<String> {
        let h = self
            .histogram
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut bytes = Vec::new();
        V2Serializer::new()
            .serialize(&h, &mut bytes)
            .map_err(|e| anyhow::anyhow!("serialize the histogram: {e:?}"))?;
        Ok(format!(
            "lat {} {}\n",
            self.received.load(Ordering::SeqCst),
            BASE64.encode(bytes)
        ))
    }
}

/// A holder's `lat` line, parsed: (frames received, their latency histogram in µs).
pub fn parse_lat(rest: &str) -> Result<(u64, Histogram<u64>)> {
    let mut it = rest.split_whitespace();
    let received = it.next().context("short lat line")?.parse()?;
    let bytes = BASE64.decode(it.next().context("short lat line")?)?;
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("deserialize a histogram: {e:?}"))?;
    Ok((received, h))
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
    /// `--targets`: socket *i*'s own target (else every socket uses `t`).
    per_socket: Option<Arc<Vec<Target>>>,
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
                let t = match &sh.per_socket {
                    Some(all) => all.get(i).unwrap_or(&sh.t),
                    None => &sh.t,
                };
                let started = std::time::Instant::now();
                let r = tokio::time::timeout(Duration::from_secs(10), open(t, source))
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

/// Reads a `--targets` file: `<url> <token>` per line (`-` for no token).
pub(crate) fn read_targets(path: &std::path::Path, template: &Target) -> Result<Vec<Target>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read the targets file {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(n, l)| {
            let mut it = l.split_whitespace();
            let (Some(url), Some(token), None) = (it.next(), it.next(), it.next()) else {
                bail!(
                    "{} line {}: expected `<url> <token>`",
                    path.display(),
                    n + 1
                );
            };
            Ok(Target {
                url: url.to_owned(),
                token: if token == "-" { "" } else { token }.to_owned(),
                ..template.clone()
            })
        })
        .collect()
}

/// Writes a `--targets` file for one holder (the driver's side of [`read_targets`]).
pub fn write_targets(path: &std::path::Path, targets: &[Target]) -> Result<()> {
    let mut text = String::new();
    for t in targets {
        if t.url.contains(char::is_whitespace) || t.token.contains(char::is_whitespace) {
            bail!("a target holds whitespace: {}", t.url);
        }
        let token = if t.token.is_empty() { "-" } else { &t.token };
        text.push_str(&format!("{} {token}\n", t.url));
    }
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

/// Options of a holder beyond one shared target.
#[derive(Clone, Debug, Default)]
pub struct HoldExtra {
    /// A file of per-socket targets (its line count is the socket count).
    pub targets: Option<std::path::PathBuf>,
    /// Record receipt − `sent_us` of every frame (see the module docs).
    pub latency: bool,
}

/// `hermes-bench hold`: the body of a holder process.
pub async fn hold(
    t: Target,
    count: usize,
    sources: Vec<IpAddr>,
    concurrency: usize,
    storm_concurrency: usize,
    extra: HoldExtra,
) -> Result<()> {
    if sources.is_empty() {
        bail!("--sources is empty");
    }
    let per_socket = match &extra.targets {
        Some(path) => {
            let all = read_targets(path, &t)?;
            if all.len() != count {
                bail!(
                    "{} holds {} targets for --count {count}",
                    path.display(),
                    all.len()
                );
            }
            Some(Arc::new(all))
        }
        None => None,
    };
    let counters = Arc::new(Counters {
        count: (0..MAX_SEQ).map(|_| AtomicU32::new(0)).collect(),
        last: (0..MAX_SEQ).map(|_| AtomicU64::new(0)).collect(),
        expected: AtomicU32::new(u32::MAX),
        open: AtomicUsize::new(0),
        latency: if extra.latency {
            Some(Latency::new()?)
        } else {
            None
        },
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
        per_socket,
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
        let mut words = line.split_whitespace();
        match (words.next().unwrap_or(""), &counters.latency) {
            ("lat-reset", Some(lat)) => {
                lat.reset();
                let _ = out_tx.send("lat-reset\n".into());
                continue;
            }
            ("lat", Some(lat)) => {
                if let Some((dir, _)) = slow_trace() {
                    let slow =
                        std::mem::take(&mut *lat.slow.lock().unwrap_or_else(|p| p.into_inner()));
                    let text: String = slow.iter().map(|(s, l)| format!("{s} {l}\n")).collect();
                    let path = format!("{dir}/holder-{}.txt", std::process::id());
                    let _ = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
                }
                let line = lat.dump().unwrap_or_else(|e| {
                    eprintln!("hermes-bench hold: {e:#}");
                    "lat 0 -\n".into()
                });
                let _ = out_tx.send(line);
                continue;
            }
            ("wait", Some(_)) => {
                let n = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                let ms = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                let counters = counters.clone();
                let out = out_tx.clone();
                tokio::spawn(async move {
                    if let Some(lat) = &counters.latency {
                        let got = lat.wait(n, Duration::from_millis(ms)).await;
                        let _ = out.send(format!("reached {got}\n"));
                    }
                });
                continue;
            }
            _ => {}
        }
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
            if let Some(lat) = &counters.latency
                && let Some(sent) = sent_us_of(frame)
            {
                lat.record(sent);
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
    /// The socket indexes of each holder (socket *i* uses per-socket target *i*).
    pub ranges: Vec<std::ops::Range<usize>>,
    /// Sockets each holder opened.
    pub open_per_holder: Vec<usize>,
    /// The directory of the per-socket target files, removed on drop.
    _scratch: Option<Scratch>,
}

/// A directory removed (with its files) when dropped.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How [`Holders::start_opts`] starts the holders.
pub struct HolderOpts {
    /// Connects in flight per holder.
    pub concurrency: usize,
    /// Reconnects in flight per holder in a `storm`.
    pub storm_concurrency: usize,
    /// One target per socket (`sockets` of them), else every socket uses the shared one.
    pub per_socket: Option<Vec<Target>>,
    /// Per-delivery latency histograms (`lat-reset`, `wait`, `lat`).
    pub latency: bool,
}

impl Default for HolderOpts {
    fn default() -> Self {
        Self {
            concurrency: 64,
            storm_concurrency: 64,
            per_socket: None,
            latency: false,
        }
    }
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
        let opts = HolderOpts {
            concurrency,
            storm_concurrency,
            ..HolderOpts::default()
        };
        Self::start_opts(t, sockets, sources, opts).await
    }

    /// Starts enough holders for `sockets` as `o` says and waits until every connect was
    /// tried.
    pub async fn start_opts(
        t: &Target,
        sockets: usize,
        sources: &[IpAddr],
        o: HolderOpts,
    ) -> Result<Self> {
        if sources.is_empty() {
            bail!("no source address");
        }
        if let Some(all) = &o.per_socket
            && all.len() != sockets
        {
            bail!("{} per-socket targets for {sockets} sockets", all.len());
        }
        let (concurrency, storm_concurrency) = (o.concurrency, o.storm_concurrency);
        let scratch = match o.per_socket {
            Some(_) => {
                let dir = std::env::temp_dir().join(format!(
                    "hermes-bench-{}-{}",
                    std::process::id(),
                    now_micros()
                ));
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("create {}", dir.display()))?;
                Some(Scratch(dir))
            }
            None => None,
        };
        let mut ranges = Vec::new();
        let exe = std::env::current_exe()?;
        let processes = sockets.div_ceil(PER_PROCESS).max(1);
        let (tx, rx) = mpsc::unbounded_channel();
        let mut children = Vec::new();
        let started = std::time::Instant::now();
        let mut left = sockets;
        for p in 0..processes {
            let n = left.div_ceil(processes - p);
            let first = sockets - left;
            left -= n;
            ranges.push(first..first + n);
            let mut extra: Vec<std::ffi::OsString> = Vec::new();
            if let (Some(all), Some(Scratch(dir))) = (&o.per_socket, &scratch) {
                let path = dir.join(format!("targets-{p}.txt"));
                write_targets(&path, &all[first..first + n])?;
                extra.push("--targets".into());
                extra.push(path.into_os_string());
            }
            if o.latency {
                extra.push("--latency".into());
            }
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
                .args(&extra)
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
            ranges,
            open_per_holder: vec![0; processes],
            _scratch: scratch,
        };
        let mut ready = 0;
        while ready < processes {
            let (p, line) = tokio::time::timeout(Duration::from_secs(300), h.lines.recv())
                .await
                .context("holders did not get ready in 300 s")?
                .context("a holder exited")?;
            if let Some(rest) = line.strip_prefix("conn ") {
                h.batches.push(parse_batch(rest)?);
            } else if let Some(rest) = line.strip_prefix("ready ") {
                let mut it = rest.split_whitespace().map(|v| v.parse::<usize>());
                let open = it.next().context("open")??;
                h.open += open;
                if let Some(slot) = h.open_per_holder.get_mut(p) {
                    *slot = open;
                }
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

    /// The holder processes' ids.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().filter_map(|(c, _)| c.id()).collect()
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

    /// Writes `line` to every holder's stdin.
    async fn tell_all(&mut self, line: &str) -> Result<()> {
        for (_, stdin) in &mut self.children {
            stdin.write_all(line.as_bytes()).await?;
            stdin.write_all(b"\n").await?;
            stdin.flush().await?;
        }
        Ok(())
    }

    /// The next holder line whose first word is `prefix` (others are dropped): (holder, rest).
    async fn next_answer(&mut self, prefix: &str, limit: Duration) -> Result<(usize, String)> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (p, line) = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .with_context(|| format!("no `{prefix}` answer from the holders"))?
                .context("a holder exited")?;
            let mut words = line.splitn(2, ' ');
            if words.next() == Some(prefix) {
                return Ok((p, words.next().unwrap_or("").to_owned()));
            }
        }
    }

    /// `--latency` holders: clears every latency histogram and receipt count.
    pub async fn lat_reset(&mut self) -> Result<()> {
        self.tell_all("lat-reset").await?;
        for _ in 0..self.children.len() {
            self.next_answer("lat-reset", Duration::from_secs(30))
                .await?;
        }
        Ok(())
    }

    /// `--latency` holders: waits until holder *p* has received `expected[p]` frames since
    /// the last reset, or `limit` passed; the total received.
    pub async fn wait_received(&mut self, expected: &[u64], limit: Duration) -> Result<u64> {
        let ms = limit.as_millis();
        for (p, (_, stdin)) in self.children.iter_mut().enumerate() {
            let n = expected.get(p).copied().unwrap_or(0);
            stdin
                .write_all(format!("wait {n} {ms}\n").as_bytes())
                .await?;
            stdin.flush().await?;
        }
        let mut total = 0;
        for _ in 0..self.children.len() {
            let (_, rest) = self
                .next_answer("reached", limit + Duration::from_secs(30))
                .await?;
            total += rest.trim().parse::<u64>()?;
        }
        Ok(total)
    }

    /// `--latency` holders: frames received since the last reset and their merged
    /// receipt − `sent_us` histogram (µs).
    pub async fn latencies(&mut self) -> Result<(u64, Histogram<u64>)> {
        self.tell_all("lat").await?;
        let mut merged = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        let mut received = 0;
        for _ in 0..self.children.len() {
            let (_, rest) = self.next_answer("lat", Duration::from_secs(30)).await?;
            let (n, h) = parse_lat(&rest)?;
            received += n;
            merged
                .add(&h)
                .map_err(|e| anyhow::anyhow!("merge histograms: {e:?}"))?;
        }
        Ok((received, merged))
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
