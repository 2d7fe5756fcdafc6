//! P5: bcrypt isolation. N sockets in one room get steady publishes through the HTTP API;
//! the publish → receipt latency of every delivery is measured over a baseline window, then
//! over the same window while a flood of first-time connects runs (`hermes-bench flood`, a
//! child process). `p99_ratio` = delivery p99 during the flood / p99 of the baseline.
//!
//! - Hermes (`hermes-gateway standalone`, bcrypt cost 10, the default pool): the flood's
//!   tokens are issued through `POST /v1/tokens` for distinct users, then their fast
//!   verifier is removed through the internal registry API, so each is exactly a token row
//!   the original system wrote (bcrypt hash only): every first connect of one costs a bcrypt
//!   verify (Hermes stores the verifier at issue time, so a freshly issued token alone would
//!   not). A refused connect (503, bcrypt queue full) is retried with the same token.
//! - Centrifugo: the flood connects with new HS256 JWTs (a distinct `sub` each), made by the
//!   flood process as it goes; there is no bcrypt layer.
//!
//! Flood connects succeed, are counted and closed at once (no subscribe, a room of their
//! own): the flood is connect work only.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio_tungstenite::tungstenite;

use crate::holder::{self, HolderOpts, Holders};
use crate::measure::ms;
use crate::measure::now_micros;
use crate::servers::{self, INTERNAL_SECRET, Kind, Options, Server, Target};

/// The room of Hermes's flood tokens (not the measured room).
const FLOOD_ROOM: &str = "p5-flood";
/// How the driver hands Centrifugo's token secret to the flood process.
const SECRET_ENV: &str = "HERMES_BENCH_FLOOD_SECRET";

pub struct P5Args {
    pub sockets: usize,
    pub sources: Vec<IpAddr>,
    /// Publishes per second into the room, in both windows.
    pub rate: u64,
    /// Seconds of each measured window.
    pub window_seconds: u64,
    pub warmup_seconds: u64,
    /// Seconds the flood runs before its window is measured.
    pub ramp_seconds: u64,
    /// Hermes: first-time tokens issued for the flood.
    pub flood_tokens: usize,
    /// Flood connects in flight.
    pub flood_concurrency: usize,
    /// Pause before a refused flood connect is retried.
    pub flood_retry_ms: u64,
    /// Flood connect attempts per second at most (0: as fast as the in-flight limit allows).
    pub flood_rate: u64,
}

/// One measured window: `rate × seconds` publishes (`n` from `first`), then every delivery's
/// latency once all arrived (or 10 s after the last publish).
async fn window(
    server: &Server,
    holders: &mut Holders,
    first: u64,
    a: &P5Args,
    seconds: u64,
) -> Result<(Value, Histogram<u64>)> {
    holders.lat_reset().await?;
    let count = a.rate * seconds;
    let publisher = server.publisher();
    let errors = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(count as usize);
    let started = Instant::now();
    for i in 0..count {
        let due = started + Duration::from_secs_f64(i as f64 / a.rate as f64);
        if Instant::now() < due {
            tokio::time::sleep_until(due.into()).await;
        }
        let (p, errors) = (publisher.clone(), errors.clone());
        let data = json!({"n": first + i, "sent_us": now_micros()});
        tasks.push(tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(10), p.publish(data)).await;
            if !matches!(r, Ok(Ok(()))) {
                errors.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let publish_seconds = started.elapsed().as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    let want: Vec<u64> = holders
        .open_per_holder
        .iter()
        .map(|&n| n as u64 * count)
        .collect();
    holders
        .wait_received(&want, Duration::from_secs(10))
        .await?;
    let (received, h) = holders.latencies().await?;
    let expected: u64 = want.iter().sum();
    let v = json!({
        "publishes": count,
        "publish_seconds": publish_seconds,
        "publish_errors": errors.load(Ordering::SeqCst),
        "deliveries": received,
        "lost": expected.saturating_sub(received),
        "p50_ms": ms(&h, 0.5),
        "p99_ms": ms(&h, 0.99),
        "p999_ms": ms(&h, 0.999),
        "max_ms": h.max() as f64 / 1000.0,
    });
    Ok((v, h))
}

/// Hermes: `count` first-time tokens (distinct users of the flood room): issued, then their
/// fast verifier removed, so the first connect of each costs a bcrypt verify.
async fn first_time_tokens(server: &Server, count: usize) -> Result<Vec<Target>> {
    let internal = server
        .hermes_internal_url()
        .context("not a Hermes server")?
        .to_owned();
    let public = server
        .target
        .url
        .split("/production?")
        .next()
        .context("the socket URL")?
        .to_owned();
    let http = reqwest::Client::new();
    let one = |i: usize| {
        let (http, internal, public) = (http.clone(), internal.clone(), public.clone());
        async move {
            let user = format!("p5-flood-{i}");
            // The issue hashes on the bcrypt pool: a full queue answers 503, then retry.
            let deadline = Instant::now() + Duration::from_secs(120);
            let token = loop {
                if let Some(token) =
                    servers::request_token(&http, &internal, &user, FLOOD_ROOM).await?
                {
                    break token;
                }
                if Instant::now() > deadline {
                    bail!("POST /v1/tokens answered 503 Service Unavailable");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let registry = format!("{internal}/internal/v1/registry");
            let row: Value = http
                .post(&registry)
                .header("x-hermes-internal-secret", INTERNAL_SECRET)
                .json(&json!({"op": "token", "user_id": user, "room_id": FLOOD_ROOM}))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let mut row = row;
            if !row.is_object() {
                bail!("no token row for {user}: {row}");
            }
            row["fast_verifier"] = Value::Null;
            http.post(&registry)
                .header("x-hermes-internal-secret", INTERNAL_SECRET)
                .json(&json!({"op": "put_token", "token": row}))
                .send()
                .await?
                .error_for_status()?;
            anyhow::Ok(Target {
                kind: Kind::Hermes,
                url: format!("{public}/production?token={token}"),
                token,
                channel: String::new(),
            })
        }
    };
    // Half the bcrypt queue (64 by default) in flight.
    futures_util::stream::iter(0..count)
        .map(one)
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// The flood child process, as the driver sees it.
struct Flood {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    _scratch: Option<Scratch>,
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Flood {
    async fn start(server: &Server, o: &Options, a: &P5Args, tokens: &[Target]) -> Result<Self> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.arg("flood")
            .arg("--server")
            .arg(server.kind.name())
            .arg("--url")
            .arg(&server.target.url)
            .arg("--concurrency")
            .arg(a.flood_concurrency.to_string())
            .arg("--retry-ms")
            .arg(a.flood_retry_ms.to_string())
            .arg("--rate")
            .arg(a.flood_rate.to_string())
            .arg("--sources")
            .arg(
                a.sources
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            );
        let mut scratch = None;
        match server.kind {
            Kind::Hermes => {
                let path = std::env::temp_dir().join(format!(
                    "hermes-bench-flood-{}-{}.txt",
                    std::process::id(),
                    now_micros()
                ));
                holder::write_targets(&path, tokens)?;
                cmd.arg("--targets").arg(&path);
                scratch = Some(Scratch(path));
            }
            Kind::Centrifugo => {
                cmd.env(
                    SECRET_ENV,
                    servers::centrifugo_secret(&o.centrifugo_script).await?,
                );
            }
        }
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start the flood")?;
        let stdin = child.stdin.take().context("stdin")?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("the flood did not start in 30 s")??;
        if first.as_deref() != Some("started") {
            bail!("the flood did not start: {first:?}");
        }
        Ok(Self {
            child,
            stdin,
            lines,
            _scratch: scratch,
        })
    }

    /// Stops the flood; its report.
    async fn stop(mut self) -> Result<Value> {
        self.stdin.write_all(b"stop\n").await?;
        self.stdin.flush().await?;
        let line = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
            .await
            .context("no flood report in 30 s")??
            .context("the flood exited without a report")?;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        Ok(serde_json::from_str(&line)?)
    }
}

pub async fn p5(kind: Kind, o: &Options, a: &P5Args) -> Result<Value> {
    if a.sockets == 0 || a.rate == 0 || a.window_seconds == 0 || a.flood_concurrency == 0 {
        bail!("--sockets, --rate, --window-seconds and --flood-concurrency must be at least 1");
    }
    if a.sources.is_empty() {
        bail!("--sources is empty");
    }
    let server = Server::start(kind, o).await?;
    let mut holders = Holders::start_opts(
        &server.target,
        a.sockets,
        &a.sources,
        HolderOpts {
            latency: true,
            ..HolderOpts::default()
        },
    )
    .await?;
    eprintln!(
        "[p5 {}] {} sockets open ({} failed) in {:.1} s",
        kind.name(),
        holders.open,
        holders.failed,
        holders.connect_seconds
    );
    let started = Instant::now();
    let tokens = match kind {
        Kind::Hermes => first_time_tokens(&server, a.flood_tokens).await?,
        Kind::Centrifugo => Vec::new(),
    };
    let token_seconds = started.elapsed().as_secs_f64();
    if kind == Kind::Hermes {
        eprintln!(
            "[p5 hermes] {} first-time tokens (bcrypt cost 10, no fast verifier) in {token_seconds:.1} s",
            tokens.len()
        );
    }
    // Warm-up, then the baseline.
    let mut n = 0;
    window(&server, &mut holders, n, a, a.warmup_seconds.max(1)).await?;
    n += a.rate * a.warmup_seconds.max(1);
    let (baseline, base_h) = window(&server, &mut holders, n, a, a.window_seconds).await?;
    n += a.rate * a.window_seconds;
    eprintln!("[p5 {}] baseline {baseline}", kind.name());
    // The flood, its ramp, then the same window again.
    let flood = Flood::start(&server, o, a, &tokens).await?;
    tokio::time::sleep(Duration::from_secs(a.ramp_seconds)).await;
    let during = window(&server, &mut holders, n, a, a.window_seconds).await;
    let report = flood.stop().await;
    let (during, flood_h) = during?;
    let report = report?;
    eprintln!("[p5 {}] flood {during} {report}", kind.name());
    let base_p99 = ms(&base_h, 0.99);
    let flood_p99 = ms(&flood_h, 0.99);
    let result = json!({
        "scenario": "P5",
        "server": kind.name(),
        "sockets": holders.open,
        "connect_failures": holders.failed,
        "rate": a.rate,
        "window_seconds": a.window_seconds,
        "ramp_seconds": a.ramp_seconds,
        "latency": "publish -> receipt per delivery (every socket, every message)",
        "p99_ratio": if base_p99 > 0.0 { flood_p99 / base_p99 } else { 0.0 },
        "p50_ratio": if ms(&base_h, 0.5) > 0.0 { ms(&flood_h, 0.5) / ms(&base_h, 0.5) } else { 0.0 },
        "baseline_p50_ms": baseline["p50_ms"],
        "baseline_p99_ms": base_p99,
        "flood_p50_ms": during["p50_ms"],
        "flood_p99_ms": flood_p99,
        "baseline": baseline,
        "during_flood": during,
        "flood_tokens_issued": tokens.len(),
        "flood_token_seconds": token_seconds,
        "flood_concurrency": a.flood_concurrency,
        "flood_retry_ms": a.flood_retry_ms,
        "flood_rate_limit": a.flood_rate,
        "flood_ok": report["ok"],
        "flood_refused": report["refused"],
        "flood_failed": report["failed"],
        "flood_connects_per_s": report["ok_per_s"],
        "flood_attempts_per_s": report["attempts_per_s"],
        "flood_exhausted_after_s": report["exhausted_after_s"],
        "flood": report,
    });
    holders.stop().await;
    server.stop().await?;
    Ok(result)
}

/// `hermes-bench flood`: first-time connects, `concurrency` in flight, from `started` on
/// stdout until `stop` (or EOF) on stdin; then one JSON report line.
pub async fn flood(
    kind: Kind,
    url: String,
    targets: Option<PathBuf>,
    sources: Vec<IpAddr>,
    concurrency: usize,
    retry_ms: u64,
    rate: u64,
) -> Result<()> {
    if sources.is_empty() {
        bail!("--sources is empty");
    }
    let template = Target {
        kind,
        url: url.clone(),
        token: String::new(),
        channel: String::new(),
    };
    let (list, secret) = match kind {
        Kind::Hermes => {
            let path = targets.context("hermes needs --targets")?;
            (holder::read_targets(&path, &template)?, String::new())
        }
        Kind::Centrifugo => (
            Vec::new(),
            std::env::var(SECRET_ENV).with_context(|| format!("{SECRET_ENV} is not set"))?,
        ),
    };
    let list = Arc::new(list);
    let next = Arc::new(AtomicUsize::new(0));
    let (ok, refused, failed) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    // Set when the last worker found no token left: the flood has stopped by itself.
    let exhausted_us = Arc::new(AtomicU64::new(0));
    let active = Arc::new(AtomicUsize::new(concurrency));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let exp = now_micros() / 1_000_000 + 3600;
    // The next token: Hermes from the list, Centrifugo a new JWT.
    let take = {
        let (list, next, template) = (list.clone(), next.clone(), template.clone());
        move || -> Option<Target> {
            let i = next.fetch_add(1, Ordering::SeqCst);
            match kind {
                Kind::Hermes => list.get(i).cloned(),
                Kind::Centrifugo => {
                    let claims = json!({"sub": format!("p5-flood-{i}"), "exp": exp});
                    let token = servers::hs256_jwt_claims(&secret, &claims).ok()?;
                    Some(Target {
                        token,
                        ..template.clone()
                    })
                }
            }
        }
    };
    // With a rate limit, each attempt takes the next free slot of a shared schedule.
    let slot = Arc::new(std::sync::Mutex::new(tokio::time::Instant::now()));
    let interval = (rate > 0).then(|| Duration::from_secs_f64(1.0 / rate as f64));
    let mut workers = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let source = sources[w % sources.len()];
        let (take, mut stop, slot) = (take.clone(), stop_rx.clone(), slot.clone());
        let (ok, refused, failed, exhausted_us, active, first_error) = (
            ok.clone(),
            refused.clone(),
            failed.clone(),
            exhausted_us.clone(),
            active.clone(),
            first_error.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut current: Option<Target> = None;
            loop {
                let Some(t) = current.take().or_else(&take) else {
                    if active.fetch_sub(1, Ordering::SeqCst) == 1 {
                        let at = started.elapsed().as_micros() as u64;
                        exhausted_us.store(at.max(1), Ordering::SeqCst);
                    }
                    break;
                };
                if let Some(interval) = interval {
                    let at = {
                        let mut next = slot.lock().unwrap_or_else(|p| p.into_inner());
                        let at = (*next).max(tokio::time::Instant::now());
                        *next = at + interval;
                        at
                    };
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = stop.changed() => break,
                    }
                }
                let attempt =
                    tokio::time::timeout(Duration::from_secs(10), holder::open(&t, source));
                let r = tokio::select! {
                    r = attempt => r,
                    _ = stop.changed() => break,
                };
                let pause = match r {
                    Ok(Ok(ws)) => {
                        ok.fetch_add(1, Ordering::SeqCst);
                        drop(ws);
                        false
                    }
                    Ok(Err(e)) if overloaded(&e) => {
                        refused.fetch_add(1, Ordering::SeqCst);
                        current = Some(t);
                        true
                    }
                    other => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        let mut first = first_error.lock().unwrap_or_else(|p| p.into_inner());
                        if first.is_none() {
                            *first = Some(match other {
                                Ok(Err(e)) => format!("{e:#}"),
                                _ => "connect timed out after 10 s".into(),
                            });
                        }
                        true
                    }
                };
                if pause {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(retry_ms)) => {}
                        _ = stop.changed() => break,
                    }
                }
            }
        }));
    }
    println!("started");
    // Plain thread for stdin (tokio's io-std feature is not enabled in this workspace).
    let (in_tx, mut in_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            match line {
                Ok(l) if l.trim() == "stop" => break,
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        let _ = in_tx.send(());
    });
    let _ = in_rx.recv().await;
    let _ = stop_tx.send(true);
    let seconds = started.elapsed().as_secs_f64();
    for w in workers {
        let _ = w.await;
    }
    let (ok, refused, failed) = (
        ok.load(Ordering::SeqCst),
        refused.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst),
    );
    let exhausted = exhausted_us.load(Ordering::SeqCst);
    let report = json!({
        "seconds": seconds,
        "ok": ok,
        "refused": refused,
        "failed": failed,
        "ok_per_s": ok as f64 / seconds.max(1e-9),
        "attempts_per_s": (ok + refused + failed) as f64 / seconds.max(1e-9),
        "tokens": if kind == Kind::Hermes { json!(list.len()) } else { Value::Null },
        "exhausted_after_s": if exhausted > 0 { json!(exhausted as f64 / 1e6) } else { Value::Null },
        "first_error": *first_error.lock().unwrap_or_else(|p| p.into_inner()),
    });
    println!("{report}");
    Ok(())
}

/// A refusal for load (503, e.g. Hermes's full bcrypt queue): the same token is retried.
fn overloaded(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<tungstenite::Error>(),
        Some(tungstenite::Error::Http(r)) if r.status().as_u16() == 503
    )
}
