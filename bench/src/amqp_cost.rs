//! What the AMQP client costs the consumer per message: CPU and context switches of a
//! process that does only the consumer's share of the work — consume with its prefetch,
//! parse each JSON body, acknowledge each message — on one runtime thread, as
//! `hermes-consumer` runs by default. By default (`--ack source`) that process runs the
//! consumer's own RabbitMQ source (`hermes_consumer::source::amqp`: lapin, its topology, its
//! header reading, its batched acknowledgements) with a sink that only parses; `--ack
//! acker|channel|handed` run a bare lapin loop instead, acknowledging each message the way
//! named (see [`Ack`]).
//!
//! `hermes-bench amqp-cost` publishes P3's persistent messages (the same publisher, confirms
//! awaited off the schedule) at `--rate` for a warm-up, then for `--seconds`, into a queue
//! that `hermes-bench amqp-cost-consumer`, a child process, consumes. Over the measured
//! window it reads the child's CPU time (the sum of its threads' `schedstat` run time, and
//! `utime + stime` from `/proc/<pid>/stat`) and context switches (the sum of its threads'
//! `voluntary_ctxt_switches` and `nonvoluntary_ctxt_switches`), and divides by the messages
//! the child consumed and acknowledged in it. The child's own latency (publish → parsed)
//! comes with it, as does the broker's CPU and the box's load average before the run (the
//! figures are only as quiet as the box).
//!
//! The child answers the driver on stdin/stdout: `ready` once consuming, `count` → its
//! number of messages, `reset` → forget the latencies so far, `stats` → JSON latencies.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{FutureExt, TryStreamExt};
use hdrhistogram::Histogram;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, ChildStdout, Command};

use hermes_consumer::source::amqp::{AmqpSettings, AmqpSource};
use hermes_consumer::source::policy::RetryPolicy;
use hermes_consumer::source::{DeadLettered, Delivery, Incoming, Outcome, Routed, Sink, Source};
use tokio_util::sync::CancellationToken;

use crate::measure::{Watch, cpu_percent, pids_named, ticks};
use crate::measure::{ms, now_micros};
use crate::publisher::user;
use crate::publisher::{Publisher, amqp_connect, schedule};

pub struct AmqpCostArgs {
    pub amqp_url: String,
    pub queue: String,
    pub rate: u64,
    pub seconds: u64,
    pub warmup_seconds: u64,
    /// The publisher's turn (`schedule`); zero: each message at its own time.
    pub publish_slot: Duration,
    pub prefetch: u16,
    pub ack: Ack,
}

/// How the child consumes and acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ack {
    /// `hermes-consumer`'s own RabbitMQ source (`hermes_consumer::source::amqp`, its
    /// topology, header reading and batched acknowledgements), with a sink that only parses
    /// the body and answers "ack".
    Source,
    /// A bare lapin loop acknowledging with `Delivery::ack`, awaited: lapin's documented
    /// way. The ack goes through lapin's internal RPC task, which spawns a task per ack, and
    /// wakes the I/O thread twice.
    Acker,
    /// A bare lapin loop acknowledging with `Channel::basic_ack`, awaited until lapin's I/O
    /// thread has written it.
    Channel,
    /// A bare lapin loop handing `Channel::basic_ack` to lapin without awaiting it: the I/O
    /// thread writes it without waking the runtime back.
    Handed,
}

impl Ack {
    fn name(self) -> &'static str {
        match self {
            Ack::Source => "source",
            Ack::Acker => "acker",
            Ack::Channel => "channel",
            Ack::Handed => "handed",
        }
    }
}

/// CPU and context switches of a process so far, all its threads summed.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    /// `schedstat` run time of every thread, ns.
    run_ns: u64,
    /// `utime + stime` of the process, clock ticks (1/100 s).
    ticks: u64,
    voluntary: u64,
    nonvoluntary: u64,
    threads: u64,
}

fn usage(pid: u32) -> Result<Usage> {
    let mut u = Usage::default();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("the child's stat")?;
    let fields: Vec<&str> = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 2..))
        .context("a stat line")?
        .split_whitespace()
        .collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    u.ticks = field(11) + field(12);
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = task?.path();
        // A thread may end between the listing and the reads: it is then not counted.
        if let Ok(s) = std::fs::read_to_string(dir.join("schedstat")) {
            u.run_ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        if let Ok(status) = std::fs::read_to_string(dir.join("status")) {
            u.threads += 1;
            for line in status.lines() {
                let value = |prefix: &str| {
                    line.strip_prefix(prefix)
                        .and_then(|v| v.trim().parse::<u64>().ok())
                };
                if let Some(v) = value("voluntary_ctxt_switches:") {
                    u.voluntary += v;
                } else if let Some(v) = value("nonvoluntary_ctxt_switches:") {
                    u.nonvoluntary += v;
                }
            }
        }
    }
    Ok(u)
}

/// The driver's end of the child's stdin and stdout.
struct ChildIo {
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl ChildIo {
    async fn ask(&mut self, command: &str) -> Result<String> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        self.stdin.flush().await?;
        tokio::time::timeout(Duration::from_secs(10), self.stdout.next_line())
            .await
            .context("the consumer did not answer in time")??
            .context("the consumer is gone")
    }

    async fn count(&mut self) -> Result<u64> {
        let line = self.ask("count").await?;
        line.strip_prefix("count ")
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("not a count: {line}"))
    }

    /// Polls the count until it reaches `want` (30 s at most).
    async fn wait_count(&mut self, want: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.count().await?;
            if got >= want {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the consumer got {got} of {want} messages within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub async fn run(a: &AmqpCostArgs) -> Result<Value> {
    if a.rate == 0 || a.seconds == 0 {
        bail!("--rate and --seconds must be at least 1");
    }
    let loadavg_before = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let connection = amqp_connect(&a.amqp_url)
        .await
        .context("connect to RabbitMQ (scripts/services/up.sh)")?;
    // The queue, empty, before the consumer takes from it.
    let publisher = Publisher::new(&connection, &a.queue).await?;

    let mut child = Command::new(std::env::current_exe()?)
        .arg("amqp-cost-consumer")
        .arg("--amqp-url")
        .arg(&a.amqp_url)
        .arg("--queue")
        .arg(&a.queue)
        .arg("--prefetch")
        .arg(a.prefetch.to_string())
        .arg("--ack")
        .arg(a.ack.name())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("start the consumer")?;
    let pid = child.id().context("the consumer's pid")?;
    let mut io = ChildIo {
        stdin: child.stdin.take().context("stdin")?,
        stdout: BufReader::new(child.stdout.take().context("stdout")?).lines(),
    };
    let ready = tokio::time::timeout(Duration::from_secs(30), io.stdout.next_line())
        .await
        .context("the consumer did not start in time")??;
    if ready.as_deref() != Some("ready") {
        bail!("the consumer did not start: {ready:?}");
    }

    let send = |n: u64| {
        let publisher = &publisher;
        async move { publisher.publish(n, &user((n % 19_000) as usize)).await }
    };
    let warm = a.rate * a.warmup_seconds;
    schedule(0, warm, a.rate, a.publish_slot, &send).await?;
    io.wait_count(warm).await?;
    io.ask("reset").await?;

    let watch: Watch = vec![("rabbitmq", pids_named("beam.smp"))];
    let total = a.rate * a.seconds;
    let (u0, n0) = (usage(pid)?, io.count().await?);
    let (t0, c0) = (Instant::now(), ticks(&watch));
    let publish_seconds = schedule(warm, total, a.rate, a.publish_slot, &send).await?;
    let cpu = cpu_percent(&watch, &c0, t0.elapsed().as_secs_f64());
    io.wait_count(warm + total).await?;
    let (u1, n1) = (usage(pid)?, io.count().await?);
    let stats: Value = serde_json::from_str(&io.ask("stats").await?)?;
    let confirms = publisher.finish().await;
    drop(io);
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    let _ = connection.close(200, "done".into()).await;

    let messages = n1.saturating_sub(n0).max(1) as f64;
    let switches = (u1.voluntary + u1.nonvoluntary).saturating_sub(u0.voluntary + u0.nonvoluntary);
    let per = |v: f64| (v / messages * 1000.0).round() / 1000.0;
    Ok(json!({
        "scenario": "amqp_cost",
        "client": "lapin",
        "ack": a.ack.name(),
        "path": "RabbitMQ (persistent, publisher confirms) -> one consumer process on one runtime thread: consume, parse the JSON body, ack each",
        "rate": a.rate,
        "seconds": a.seconds,
        "prefetch": a.prefetch,
        "messages": total,
        "consumed_in_window": n1.saturating_sub(n0),
        "achieved_rate": total as f64 / publish_seconds.max(1e-9),
        "cpu_us_per_message": per(u1.run_ns.saturating_sub(u0.run_ns) as f64 / 1000.0),
        "cpu_us_per_message_from_ticks": per(u1.ticks.saturating_sub(u0.ticks) as f64 * 10_000.0),
        "context_switches_per_message": per(switches as f64),
        "voluntary_per_message": per(u1.voluntary.saturating_sub(u0.voluntary) as f64),
        "nonvoluntary_per_message": per(u1.nonvoluntary.saturating_sub(u0.nonvoluntary) as f64),
        "consumer_threads": u1.threads,
        "latency_p50_ms": stats["p50_ms"],
        "latency_p99_ms": stats["p99_ms"],
        "confirms_nacked": confirms.nacked,
        "rabbitmq_cpu_percent": cpu["rabbitmq"],
        "loadavg_before": loadavg_before,
    }))
}

/// The child: consumes `queue` on a runtime of one thread until its stdin closes.
pub fn consume(amqp_url: String, queue: String, prefetch: u16, ack: Ack) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(consume_on_this_thread(amqp_url, queue, prefetch, ack))
}

/// What the child counts: messages consumed, and their latency from the publish.
struct Tally {
    received: AtomicU64,
    latencies: std::sync::Mutex<Histogram<u64>>,
}

impl Tally {
    /// Parses a body as the consumer does (into a JSON value) and records its latency.
    fn record(&self, body: &[u8]) {
        let sent = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v["data"]["sent_us"].as_u64());
        if let Some(sent) = sent {
            let _ = self
                .latencies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(now_micros().saturating_sub(sent).max(1));
        }
    }
}

/// The sink of [`Ack::Source`]: parse, count, acknowledge.
struct ParseSink(Arc<Tally>);

#[async_trait::async_trait]
impl Sink for ParseSink {
    async fn route(&self, message: Incoming<'_>) -> Routed {
        self.0.record(message.body);
        Routed {
            outcome: Outcome::Ack,
            id: None,
            answered: Vec::new(),
        }
    }

    fn count(&self, _source: &str, outcome: &str) {
        if outcome == "delivered" {
            self.0.received.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn dead_lettered(&self, _dead: DeadLettered<'_>) {}
}

async fn consume_on_this_thread(
    amqp_url: String,
    queue: String,
    prefetch: u16,
    ack: Ack,
) -> Result<()> {
    let tally = Arc::new(Tally {
        received: AtomicU64::new(0),
        latencies: std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?),
    });
    let shutdown = CancellationToken::new();
    let mut consumer = if ack == Ack::Source {
        let source = AmqpSource::new(
            AmqpSettings {
                url: amqp_url,
                queue,
                prefetch,
            },
            Delivery {
                policy: RetryPolicy {
                    max_attempts: 5,
                    delays: vec![Duration::from_secs(1)],
                },
                concurrency: usize::from(prefetch.max(1)),
            },
        )?;
        let ready = Arc::new(AtomicBool::new(false));
        let sink: Arc<dyn Sink> = Arc::new(ParseSink(tally.clone()));
        let task = tokio::spawn(Box::new(source).run(sink, ready.clone(), shutdown.clone()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready.load(Ordering::Acquire) {
            if Instant::now() > deadline || task.is_finished() {
                bail!("the consumer's source did not start consuming");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::spawn(async move {
            let _ = task.await;
        })
    } else {
        let connection = amqp_connect(&amqp_url).await.context("connect")?;
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let deliveries = channel
            .basic_consume(
                queue.as_str().into(),
                "hermes-bench-amqp-cost".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let (tally, shutdown) = (tally.clone(), shutdown.clone());
        tokio::spawn(async move {
            let (tally, channel) = (&tally, &channel);
            let consumed =
                deliveries.try_for_each_concurrent(usize::from(prefetch.max(1)), |d| async move {
                    tally.record(&d.data);
                    let options = BasicAckOptions::default();
                    match ack {
                        Ack::Acker => {
                            d.ack(options).await?;
                        }
                        Ack::Channel => channel.basic_ack(d.delivery_tag, options).await?,
                        Ack::Handed | Ack::Source => {
                            if let Some(result) =
                                channel.basic_ack(d.delivery_tag, options).now_or_never()
                            {
                                result?;
                            }
                        }
                    }
                    tally.received.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                });
            tokio::select! {
                _ = consumed => {}
                () = shutdown.cancelled() => {}
            }
            let _ = connection.close(200, "done".into()).await;
        })
    };
    println!("ready");
    // The driver's commands, read by a thread of their own (blocked in read(2) but for them).
    let (tx, mut commands) = tokio::sync::mpsc::channel::<String>(4);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = commands.recv().await {
        let answer = match line.trim() {
            "count" => format!("count {}", tally.received.load(Ordering::Relaxed)),
            "reset" => {
                tally
                    .latencies
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .reset();
                "reset".to_owned()
            }
            "stats" => {
                let h = tally.latencies.lock().unwrap_or_else(|p| p.into_inner());
                json!({"p50_ms": ms(&h, 0.5), "p99_ms": ms(&h, 0.99), "samples": h.len()})
                    .to_string()
            }
            other => format!("unknown command {other:?}"),
        };
        // A line to a pipe: written at once (Rust's stdout is line-buffered).
        println!("{answer}");
    }
    shutdown.cancel();
    if tokio::time::timeout(Duration::from_secs(10), &mut consumer)
        .await
        .is_err()
    {
        consumer.abort();
    }
    Ok(())
}
