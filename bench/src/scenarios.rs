//! P1 (idle sockets) and P2 (room fan-out), the same for Hermes and Centrifugo. Each run
//! starts a fresh server process and prints one JSON object on stdout.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::holder::{self, BatchReport, Holders, MAX_SEQ};
use crate::measure::ms;
use crate::measure::{now_micros, rss_kib};
use crate::servers::{Kind, Options, Publisher, Server, Target};

/// utime + stime of a process, in clock ticks (/proc/PID/stat fields 14 and 15).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')').context("stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?)
}

fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// CPU microseconds per second of wall time the process used over `window`.
async fn cpu_us_per_s(pid: u32, window: Duration) -> Result<f64> {
    let tck = clock_ticks_per_second() as f64;
    let c0 = cpu_ticks(pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let c1 = cpu_ticks(pid)?;
    Ok((c1 - c0) as f64 * 1e6 / tck / t0.elapsed().as_secs_f64())
}

pub struct P1Args {
    pub sockets: usize,
    pub sources: Vec<IpAddr>,
    pub idle_seconds: u64,
    pub baseline_seconds: u64,
}

pub async fn p1(kind: Kind, o: &Options, a: &P1Args) -> Result<Value> {
    let server = Server::start(kind, o).await?;
    let pid = server.pid;
    // Settle, then the baseline: RSS and idle CPU without any socket.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = rss_kib(pid)?;
    let cpu_before = cpu_us_per_s(pid, Duration::from_secs(a.baseline_seconds)).await?;
    let mut holders = Holders::start(&server.target, a.sockets, &a.sources).await?;
    eprintln!(
        "[p1 {}] {} sockets open ({} failed) in {:.1} s by {} holder processes",
        kind.name(),
        holders.open,
        holders.failed,
        holders.connect_seconds,
        holders.processes()
    );
    // One heartbeat cycle (and a margin) with every socket connected.
    tokio::time::sleep(Duration::from_secs(o.heartbeat_seconds + 3)).await;
    let open_after_heartbeat = holders.open_now().await?;
    let rss_after = rss_kib(pid)?;
    let cpu_after = cpu_us_per_s(pid, Duration::from_secs(a.idle_seconds)).await?;
    let open_at_end = holders.open_now().await?;
    let n = holders.open.max(1) as f64;
    let result = json!({
        "scenario": "P1",
        "server": kind.name(),
        "sockets": holders.open,
        "connect_failures": holders.failed,
        "open_after_heartbeat": open_after_heartbeat,
        "open_at_end": open_at_end,
        "connect_seconds": holders.connect_seconds,
        "holder_processes": holders.processes(),
        "heartbeat_seconds": o.heartbeat_seconds,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_per_socket_kib": (rss_after.saturating_sub(rss_before)) as f64 / n,
        "idle_cpu_us_per_s_before": cpu_before,
        "idle_cpu_us_per_s_after": cpu_after,
        "idle_seconds": a.idle_seconds,
        "cpu_us_per_socket_s": (cpu_after - cpu_before).max(0.0) / n,
    });
    holders.stop().await;
    server.stop().await?;
    Ok(result)
}

pub struct P2Args {
    pub sockets: usize,
    pub sources: Vec<IpAddr>,
    /// Publishes per second, tried in this order.
    pub rates: Vec<u64>,
    pub step_seconds: u64,
    pub p99_limit_ms: f64,
}

/// Receipts of the benchmark messages: the holders' `done` lines, collected from one or
/// more groups of holders (P2: one server; P7: one group per server process).
#[derive(Default)]
pub struct Receipts {
    /// seq → (holders done, latest last receipt).
    done: Arc<Mutex<HashMap<usize, (usize, u64)>>>,
    collectors: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Receipts {
    fn drop(&mut self) {
        for c in &self.collectors {
            c.abort();
        }
    }
}

impl Receipts {
    /// Takes over the holders' output lines (`holders.lines` is left empty: their `status`
    /// answers no longer reach the driver) and records every `done` line.
    pub fn collect(&mut self, holders: &mut Holders) {
        let mut lines =
            std::mem::replace(&mut holders.lines, tokio::sync::mpsc::unbounded_channel().1);
        let done = self.done.clone();
        self.collectors.push(tokio::spawn(async move {
            while let Some((_, line)) = lines.recv().await {
                let Some(rest) = line.strip_prefix("done ") else {
                    continue;
                };
                let mut it = rest
                    .split_whitespace()
                    .filter_map(|v| v.parse::<u64>().ok());
                let (Some(seq), Some(last)) = (it.next(), it.next()) else {
                    continue;
                };
                let mut r = done.lock().await;
                let e = r.entry(seq as usize).or_insert((0, 0));
                e.0 += 1;
                e.1 = e.1.max(last);
            }
        }));
    }

    /// Publishes message `seq` (a warm-up, outside any measurement) and waits until all
    /// `processes` holders reported it.
    pub async fn warm_up(
        &self,
        publisher: &Publisher,
        seq: usize,
        processes: usize,
        limit: Duration,
    ) -> Result<()> {
        publisher
            .publish(json!({"seq": seq, "sent_us": now_micros(), "warmup": true}))
            .await?;
        let deadline = Instant::now() + limit;
        while self.done.lock().await.get(&seq).map(|e| e.0) != Some(processes) {
            if Instant::now() > deadline {
                anyhow::bail!(
                    "the warm-up message did not reach every socket in {} s",
                    limit.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// What a publish ramp tries: P2 and P7.
pub struct RampArgs {
    /// Publishes per second, tried in this order.
    pub rates: Vec<f64>,
    pub step_seconds: u64,
    pub p99_limit_ms: f64,
    /// How long after a step's last publish its messages may still arrive (P2: 3 s); one
    /// that has not reached every socket by then counts as lost.
    pub drain: Duration,
}

/// The steps of a ramp and the two steps it reports.
pub struct Ramp {
    pub steps: Vec<Value>,
    /// The highest step that was sustained: every message reached every socket, the
    /// publisher kept its schedule and the p99 stayed within the limit (or null).
    pub best: Value,
    /// The highest step in which every message reached every socket on schedule, whatever
    /// its p99 (or null).
    pub best_any: Value,
}

/// An integral number as a JSON integer, anything else as a float.
fn num(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// Publishes to the `sockets` sockets of `processes` holders at each rate in turn,
/// `step_seconds` per rate, each payload `{"seq", "sent_us"}` stamped at send time, and
/// measures every message from its send to its receipt on the last socket. Stops after the
/// first step that loses a message or falls behind its schedule. `seq` is the last sequence
/// number used so far (it is advanced).
pub async fn ramp(
    label: &str,
    publisher: &Publisher,
    receipts: &Receipts,
    processes: usize,
    sockets: usize,
    seq: &mut usize,
    a: &RampArgs,
) -> Result<Ramp> {
    let mut steps = Vec::new();
    let mut best: Option<Value> = None;
    // Highest step with no loss and the publisher on schedule, whatever its p99.
    let mut best_any: Option<Value> = None;
    for &rate in &a.rates {
        if !(rate.is_finite() && rate > 0.0) {
            continue;
        }
        let total = ((rate * a.step_seconds as f64).round() as usize).max(1);
        if *seq + total + 1 >= MAX_SEQ {
            break;
        }
        let first = *seq + 1;
        let mut sent = HashMap::with_capacity(total);
        let publish_errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
        let interval = Duration::from_secs_f64(1.0 / rate);
        let started = Instant::now();
        let first_sent_us = now_micros();
        let mut tasks = Vec::with_capacity(total);
        for i in 0..total {
            tokio::time::sleep_until((started + interval.mul_f64(i as f64)).into()).await;
            *seq += 1;
            let s = *seq;
            let t = now_micros();
            sent.insert(s, t);
            let p = publisher.clone();
            let errors = publish_errors.clone();
            let first_error = first_error.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = p.publish(json!({"seq": s, "sent_us": t})).await {
                    errors.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    first_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert_with(|| format!("{e:#}"));
                }
            }));
        }
        let last = *seq;
        let publish_seconds = started.elapsed().as_secs_f64();
        for t in tasks {
            let _ = t.await;
        }
        // Wait for the step's messages (at most `drain` after the last publish).
        let wait_until = Instant::now() + a.drain;
        loop {
            let complete = {
                let r = receipts.done.lock().await;
                (first..=last)
                    .filter(|s| r.get(s).is_some_and(|e| e.0 == processes))
                    .count()
            };
            if complete == total || Instant::now() > wait_until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        let mut last_receipt = first_sent_us;
        let mut complete = 0usize;
        {
            let r = receipts.done.lock().await;
            for s in first..=last {
                if let (Some(&(n, at)), Some(&t)) = (r.get(&s), sent.get(&s))
                    && n == processes
                {
                    h.record(at.saturating_sub(t).max(1))?;
                    last_receipt = last_receipt.max(at);
                    complete += 1;
                }
            }
        }
        let lost = total - complete;
        let span_s = (last_receipt.saturating_sub(first_sent_us)) as f64 / 1e6;
        let deliveries_per_s = if span_s > 0.0 {
            (complete * sockets) as f64 / span_s
        } else {
            0.0
        };
        let p50 = h.value_at_quantile(0.5) as f64 / 1000.0;
        let p99 = h.value_at_quantile(0.99) as f64 / 1000.0;
        let errors = publish_errors.load(std::sync::atomic::Ordering::SeqCst);
        // Sustained: every message reached every socket, the publisher kept its schedule,
        // and p99 publish → last receipt stayed within the limit.
        let on_schedule = publish_seconds <= a.step_seconds as f64 * 1.1;
        let delivered = lost == 0 && errors == 0 && on_schedule;
        let sustained = delivered && p99 <= a.p99_limit_ms;
        let mut step = json!({
            "publishes_per_s": num(rate),
            "offered_deliveries_per_s": num((rate * sockets as f64).round()),
            "deliveries_per_s": deliveries_per_s,
            // Over at least the step's length: a step of a few messages is not credited with
            // the speed of one message's fan-out (P7).
            "window_deliveries_per_s": (complete * sockets) as f64 / span_s.max(a.step_seconds as f64),
            "p50_ms": p50,
            "p99_ms": p99,
            "max_ms": h.max() as f64 / 1000.0,
            "messages": total,
            "lost": lost,
            "publish_errors": errors,
            "publish_seconds": publish_seconds,
            "delivered": delivered,
            "sustained": sustained,
        });
        if let Some(e) = first_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            step["first_publish_error"] = json!(e);
        }
        eprintln!("[{label}] {step}");
        steps.push(step.clone());
        if sustained {
            best = Some(step.clone());
        }
        if delivered {
            best_any = Some(step);
        } else {
            // Higher rates would only lose more.
            break;
        }
    }
    Ok(Ramp {
        steps,
        best: best.unwrap_or(Value::Null),
        best_any: best_any.unwrap_or(Value::Null),
    })
}

pub async fn p2(kind: Kind, o: &Options, a: &P2Args) -> Result<Value> {
    let server = Server::start(kind, o).await?;
    let publisher = server.publisher();
    let v = p2_room(kind.name(), &server.target, &publisher, a).await;
    server.stop().await?;
    v
}

/// P2's room of `a.sockets` on `target` and its publish ramp through `publisher`; the
/// report is labelled `server` (P2: the server's name; ws-floor: `ws-floor`).
pub async fn p2_room(
    server: &str,
    target: &Target,
    publisher: &Publisher,
    a: &P2Args,
) -> Result<Value> {
    let mut holders = Holders::start(target, a.sockets, &a.sources).await?;
    eprintln!(
        "[p2 {server}] {} sockets open ({} failed) in {:.1} s",
        holders.open, holders.failed, holders.connect_seconds
    );
    let processes = holders.processes();
    let mut receipts = Receipts::default();
    receipts.collect(&mut holders);
    // Warm-up: one message through every socket before the measured steps.
    let mut seq = 1usize;
    receipts
        .warm_up(publisher, seq, processes, Duration::from_secs(10))
        .await?;
    let sockets = holders.open;
    let ramp_args = RampArgs {
        rates: a.rates.iter().map(|&r| r as f64).collect(),
        step_seconds: a.step_seconds,
        p99_limit_ms: a.p99_limit_ms,
        drain: Duration::from_secs(3),
    };
    let label = format!("p2 {server}");
    let Ramp {
        steps,
        best,
        best_any,
    } = ramp(
        &label, publisher, &receipts, processes, sockets, &mut seq, &ramp_args,
    )
    .await?;
    drop(receipts);
    holders.stop().await;
    Ok(json!({
        "scenario": "P2",
        "server": server,
        "sockets": sockets,
        "step_seconds": a.step_seconds,
        "p99_limit_ms": a.p99_limit_ms,
        "deliveries_per_s": best["deliveries_per_s"],
        "p50_ms": best["p50_ms"],
        "p99_ms": best["p99_ms"],
        "publishes_per_s": best["publishes_per_s"],
        // Without the p99 limit: the highest step with every message delivered on schedule.
        "max_deliveries_per_s_any_p99": best_any["deliveries_per_s"],
        "max_step_p50_ms": best_any["p50_ms"],
        "max_step_p99_ms": best_any["p99_ms"],
        "max_step_publishes_per_s": best_any["publishes_per_s"],
        "steps": steps,
    }))
}

pub struct P4Args {
    pub sockets: usize,
    pub sources: Vec<IpAddr>,
    /// Connects in flight per holder while the rate is measured.
    pub concurrency: usize,
    /// Reconnects in flight per holder in the storm.
    pub storm_concurrency: usize,
    pub settle_seconds: u64,
}

/// Merged `conn` / `storm` reports: (ok, failed, first start → last success in s, histogram).
fn merge(batches: &[BatchReport]) -> Result<(usize, usize, f64, Histogram<u64>)> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let (mut ok, mut failed) = (0, 0);
    let first = batches.iter().map(|b| b.first_start_us).min().unwrap_or(0);
    let last = batches.iter().map(|b| b.last_ok_us).max().unwrap_or(0);
    for b in batches {
        ok += b.ok;
        failed += b.failed;
        for &us in &b.latencies_us {
            h.record(us.max(1))?;
        }
    }
    Ok((ok, failed, last.saturating_sub(first) as f64 / 1e6, h))
}

/// P4: `sockets` clients connect (`concurrency` in flight per holder, one token that has
/// already had its first verify), then all are dropped at once and reconnect.
pub async fn p4(kind: Kind, o: &Options, a: &P4Args) -> Result<Value> {
    let server = Server::start(kind, o).await?;
    // Connect only: no subscribe after Centrifugo's `connect` (Hermes joins through the token).
    let mut target = server.target.clone();
    target.channel = String::new();
    // The token's first verify (Hermes: JWT + bcrypt) happens here, outside the measurement.
    holder::open_once(&target, a.sources[0]).await?;
    let mut holders = Holders::start_with(
        &target,
        a.sockets,
        &a.sources,
        a.concurrency,
        a.storm_concurrency,
    )
    .await?;
    let (ok, failed, seconds, h) = merge(&holders.batches)?;
    let connects_per_s = if seconds > 0.0 {
        ok as f64 / seconds
    } else {
        0.0
    };
    eprintln!(
        "[p4 {}] {ok} connects ({failed} failed) in {seconds:.2} s: {connects_per_s:.0}/s, p50 {:.2} ms p99 {:.2} ms",
        kind.name(),
        ms(&h, 0.5),
        ms(&h, 0.99)
    );
    tokio::time::sleep(Duration::from_secs(a.settle_seconds)).await;
    let open_before_storm = holders.open_now().await?;
    let storm = holders.storm().await?;
    let (storm_ok, storm_failed, storm_seconds, sh) = merge(&storm)?;
    eprintln!(
        "[p4 {}] storm: {storm_ok} reconnects ({storm_failed} failed) in {storm_seconds:.2} s, p50 {:.2} ms p99 {:.2} ms",
        kind.name(),
        ms(&sh, 0.5),
        ms(&sh, 0.99)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let open_after_storm = holders.open_now().await?;
    let result = json!({
        "scenario": "P4",
        "server": kind.name(),
        "sockets": a.sockets,
        "holder_processes": holders.processes(),
        "concurrency_per_holder": a.concurrency,
        "connects": ok,
        "connect_failures": failed,
        "connect_seconds": seconds,
        "connects_per_s": connects_per_s,
        "p50_ms": ms(&h, 0.5),
        "p99_ms": ms(&h, 0.99),
        "max_ms": h.max() as f64 / 1000.0,
        "open_before_storm": open_before_storm,
        "storm_concurrency_per_holder": a.storm_concurrency,
        "storm_reconnects": storm_ok,
        "storm_failures": storm_failed,
        "storm_seconds": storm_seconds,
        "storm_p50_ms": ms(&sh, 0.5),
        "storm_p99_ms": ms(&sh, 0.99),
        "storm_max_ms": sh.max() as f64 / 1000.0,
        "open_after_storm": open_after_storm,
    });
    holders.stop().await;
    server.stop().await?;
    Ok(result)
}
