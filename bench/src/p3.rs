//! P3: queue → socket. Notifications to single users among N sockets (each socket its own
//! user) at a steady rate, latency from the send (`sent_us` in the payload) to the receipt
//! on the user's socket, over every notification.
//!
//! - Hermes: RabbitMQ → `hermes-consumer` → `hermes-gateway serve` (another process) →
//!   socket, both processes on the ScyllaDB/Cassandra registry of `scripts/services/up.sh`.
//!   The publisher is pipelined: one AMQP channel in confirm mode, each publish's confirm
//!   awaited by a separate task, so the schedule never waits for the broker; the messages
//!   due in the same `--publish-slot-ms` turn (1 ms) are handed to lapin together.
//! - Centrifugo has no RabbitMQ consumer (v6.9.1: PostgreSQL outbox, Kafka, NATS JetStream,
//!   Redis Streams, Google Pub/Sub, AWS SQS, Azure Service Bus): its nearest path is the
//!   server HTTP API, `POST /api/publish` into each user's own channel (`bench:<user>`,
//!   subscribed server-side through the connection JWT's `channels` claim), many requests
//!   in flight over kept-alive connections.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::process::Command;

use hermes_e2e::spawn_announced_within;

use crate::holder::{HolderOpts, Holders};
use crate::measure::{Watch, cpu_percent, ms, now_micros, pids_named, ticks};
use crate::publisher::{Publisher, ROOM, amqp_connect, schedule, user};
use crate::servers::{
    self, ADMIN_KEY, INTERNAL_SECRET, Kind, Options, Server, Target, banner_field, issue_token,
    wait_ready,
};

/// The JWT secret of P3's gateway.
const JWT_SECRET: &str = "bench-jwt-secret-0123456789-abcdef";

pub struct P3Args {
    pub sockets: usize,
    pub sources: Vec<IpAddr>,
    /// Notifications per second.
    pub rate: u64,
    /// Seconds of measured publishing.
    pub seconds: u64,
    /// Seconds of publishing at the same rate before each measurement.
    pub warmup_seconds: u64,
    /// The publisher's turn (`schedule`); zero: each message at its own time.
    pub publish_slot: Duration,
    /// Rates measured before `rate`, in this order, on the same sockets.
    pub ramp: Vec<u64>,
    /// Seconds to wait for the last notifications after the publishing ends.
    pub drain_seconds: u64,
    pub consumer_bin: String,
    pub scylla_nodes: String,
    pub amqp_url: String,
    pub keyspace: String,
    pub queue: String,
    /// Hermes: HERMES_REGISTRY_TTL_SECONDS of the gateway.
    pub registry_ttl_seconds: u64,
    /// Centrifugo: HTTP publishes in flight at most.
    pub in_flight: usize,
    /// Hermes: `POST /v1/tokens` in flight while the tokens are issued.
    pub token_concurrency: usize,
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Notification `n` goes to user `(n × stride) mod sockets`: consecutive notifications land
/// on sockets of every holder, and each user gets the same share.
fn stride(sockets: usize) -> usize {
    let mut s = 7919;
    while gcd(s, sockets) != 1 {
        s += 1;
    }
    s
}

/// The user index of notification `n`.
fn target_of(n: u64, stride: usize, sockets: usize) -> usize {
    ((n as u128 * stride as u128) % sockets.max(1) as u128) as usize
}

/// Notifications `first..first + count` per holder.
fn expected(first: u64, count: u64, stride: usize, h: &Holders, sockets: usize) -> Vec<u64> {
    let mut out = vec![0u64; h.ranges.len()];
    for n in first..first + count {
        let u = target_of(n, stride, sockets);
        if let Some(p) = h.ranges.iter().position(|r| r.contains(&u)) {
            out[p] += 1;
        }
    }
    out
}

pub async fn p3(kind: Kind, o: &Options, a: &P3Args) -> Result<Value> {
    if a.sockets == 0 || a.rate == 0 || a.seconds == 0 || a.ramp.contains(&0) {
        bail!("--sockets, --rate, --ramp's rates and --seconds must be at least 1");
    }
    if a.sources.is_empty() {
        bail!("--sources is empty");
    }
    match kind {
        Kind::Hermes => hermes(o, a).await,
        Kind::Centrifugo => centrifugo(o, a).await,
    }
}

/// What the two paths share once the sockets are open: warm-up, measured window, drain.
struct Measured {
    rate: u64,
    /// The number of the next step's first notification.
    next: u64,
    messages: u64,
    publish_seconds: f64,
    received: u64,
    histogram: Histogram<u64>,
    warmup_received: u64,
    /// CPU % (of one core) of each watched process over the measured publishing.
    cpu_percent: Value,
}

/// One rate of the ramp: its notifications are numbered from `first` (ids stay unique
/// across steps, so no gateway drops one as a duplicate).
#[derive(Clone, Copy)]
struct Step {
    rate: u64,
    first: u64,
}

/// Measures every rate of `a.ramp` (ascending, each with its own warm-up), then `a.rate`:
/// the ramp's results are the `at_<rate>_*` keys of `extra`; the target rate's is returned.
async fn ramp<F, Fut, S, SFut>(
    a: &P3Args,
    holders: &mut Holders,
    stride: usize,
    mut send: F,
    mut settle: S,
    watch: &Watch,
    extra: &mut serde_json::Map<String, Value>,
) -> Result<Measured>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<()>>,
    S: FnMut() -> SFut,
    SFut: Future<Output = ()>,
{
    let mut first = 0;
    for &rate in a.ramp.iter().filter(|&&r| r != a.rate) {
        let step = Step { rate, first };
        let m = measure(a, step, holders, stride, &mut send, &mut settle, watch).await?;
        let h = &m.histogram;
        extra.insert(format!("at_{rate}_p50_ms"), json!(ms(h, 0.5)));
        extra.insert(format!("at_{rate}_p99_ms"), json!(ms(h, 0.99)));
        extra.insert(
            format!("at_{rate}_lost"),
            json!(m.messages.saturating_sub(m.received)),
        );
        extra.insert(format!("at_{rate}_cpu_percent"), m.cpu_percent.clone());
        first = m.next;
    }
    let step = Step {
        rate: a.rate,
        first,
    };
    measure(a, step, holders, stride, send, settle, watch).await
}

/// Runs the warm-up and the measured window with `send` and collects the latencies.
/// `settle` is awaited after each schedule, before the receipts are waited for.
async fn measure<F, Fut, S, SFut>(
    a: &P3Args,
    step: Step,
    holders: &mut Holders,
    stride: usize,
    mut send: F,
    mut settle: S,
    watch: &Watch,
) -> Result<Measured>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<()>>,
    S: FnMut() -> SFut,
    SFut: Future<Output = ()>,
{
    let Step { rate, first } = step;
    holders.lat_reset().await?;
    let warm = rate * a.warmup_seconds;
    schedule(first, warm, rate, a.publish_slot, &mut send).await?;
    settle().await;
    let warmup_received = holders
        .wait_received(
            &expected(first, warm, stride, holders, a.sockets),
            Duration::from_secs(a.drain_seconds),
        )
        .await?;
    holders.lat_reset().await?;
    let total = rate * a.seconds;
    let (t0, c0) = (Instant::now(), ticks(watch));
    let publish_seconds = schedule(first + warm, total, rate, a.publish_slot, &mut send).await?;
    let cpu_percent = cpu_percent(watch, &c0, t0.elapsed().as_secs_f64());
    settle().await;
    let want = expected(first + warm, total, stride, holders, a.sockets);
    holders
        .wait_received(&want, Duration::from_secs(a.drain_seconds))
        .await?;
    let (received, histogram) = holders.latencies().await?;
    Ok(Measured {
        rate,
        next: first + warm + total,
        messages: total,
        publish_seconds,
        received,
        histogram,
        warmup_received,
        cpu_percent,
    })
}

fn result(
    kind: Kind,
    a: &P3Args,
    holders: &Holders,
    m: &Measured,
    extra: Value,
    steps: serde_json::Map<String, Value>,
) -> Value {
    let h = &m.histogram;
    let mut v = json!({
        "scenario": "P3",
        "server": kind.name(),
        "sockets": holders.open,
        "connect_failures": holders.failed,
        "connect_seconds": holders.connect_seconds,
        "rate": m.rate,
        "seconds": a.seconds,
        "warmup_seconds": a.warmup_seconds,
        "warmup_received": m.warmup_received,
        "messages": m.messages,
        "publish_seconds": m.publish_seconds,
        "achieved_rate": if m.publish_seconds > 0.0 { m.messages as f64 / m.publish_seconds } else { 0.0 },
        "received": m.received,
        "lost": m.messages.saturating_sub(m.received),
        "p50_ms": ms(h, 0.5),
        "p90_ms": ms(h, 0.9),
        "p99_ms": ms(h, 0.99),
        "p999_ms": ms(h, 0.999),
        "max_ms": h.max() as f64 / 1000.0,
        "cpu_percent_while_publishing": m.cpu_percent,
    });
    if let (Value::Object(v), Value::Object(e)) = (&mut v, extra) {
        v.extend(e);
        v.extend(steps);
    }
    v
}

async fn hermes(o: &Options, a: &P3Args) -> Result<Value> {
    let registry = [
        ("HERMES_REGISTRY", "scylla"),
        ("HERMES_SCYLLA_NODES", a.scylla_nodes.as_str()),
        ("HERMES_SCYLLA_KEYSPACE", a.keyspace.as_str()),
        ("HERMES_SCYLLA_CONSISTENCY", "ONE"),
        ("HERMES_INTERNAL_SECRET", INTERNAL_SECRET),
        ("HERMES_LOG", "warn"),
    ];
    let mut cmd = Command::new(&o.hermes_bin);
    cmd.arg("serve")
        .envs(registry)
        .env("HERMES_LISTEN", "127.0.0.1:0")
        .env("HERMES_INTERNAL_LISTEN", "127.0.0.1:0")
        .env("HERMES_GATEWAY_ID", "bench-p3-gateway")
        .env(
            "HERMES_REGISTRY_TTL_SECONDS",
            a.registry_ttl_seconds.to_string(),
        )
        .env("HERMES_ADMIN_KEY", ADMIN_KEY)
        .env("HERMES_JWT_SECRET", JWT_SECRET)
        // P3 measures delivery, not auth: cheap hashes so that 19,000 tokens issue in seconds.
        .env("HERMES_BCRYPT_COST", "4")
        .env(
            "HERMES_PING_INTERVAL_SECONDS",
            o.heartbeat_seconds.to_string(),
        );
    let (gateway, banner, _logs) =
        spawn_announced_within(cmd, "hermes-gateway listening ", Duration::from_secs(120))
            .await
            .map_err(anyhow::Error::msg)
            .context("hermes-gateway serve")?;
    let field = |n: &str| banner_field(&banner, n);
    let public = field("public")?.replace("http://", "ws://");
    let internal = field("internal")?;
    let http = reqwest::Client::new();
    wait_ready(
        &http,
        &format!("{internal}/readyz"),
        Duration::from_secs(60),
    )
    .await?;

    // The queue, empty, before the consumer takes from it.
    let amqp = amqp_connect(&a.amqp_url)
        .await
        .context("connect to RabbitMQ (scripts/services/up.sh)")?;
    let publisher = Publisher::new(&amqp, &a.queue).await?;

    let mut cmd = Command::new(&a.consumer_bin);
    cmd.envs(registry)
        .env("HERMES_SOURCE", "amqp")
        .env("HERMES_AMQP_URL", &a.amqp_url)
        .env("HERMES_AMQP_QUEUE", &a.queue)
        .env("HERMES_CONSUMER_LISTEN", "127.0.0.1:0");
    let (consumer, banner, _logs) = spawn_announced_within(
        cmd,
        "hermes-consumer listening http=",
        Duration::from_secs(120),
    )
    .await
    .map_err(anyhow::Error::msg)
    .context("hermes-consumer")?;
    let consumer_http = banner
        .trim_start_matches("hermes-consumer listening http=")
        .trim()
        .to_owned();
    wait_ready(
        &http,
        &format!("{consumer_http}/readyz"),
        Duration::from_secs(60),
    )
    .await?;

    // One token per user (bcrypt cost 4), then one socket each.
    let started = Instant::now();
    let tokens: Vec<Result<String>> = futures_util::stream::iter(0..a.sockets)
        .map(|i| {
            let (http, internal) = (http.clone(), internal.clone());
            async move { issue_token(&http, &internal, &user(i), ROOM).await }
        })
        .buffered(a.token_concurrency.max(1))
        .collect()
        .await;
    let token_seconds = started.elapsed().as_secs_f64();
    let mut targets = Vec::with_capacity(a.sockets);
    for t in tokens {
        let token = t.context("issue the users' tokens")?;
        targets.push(Target {
            kind: Kind::Hermes,
            url: format!("{public}/production?token={token}"),
            token,
            channel: ROOM.into(),
        });
    }
    eprintln!(
        "[p3 hermes] {} tokens in {token_seconds:.1} s",
        targets.len()
    );
    let mut holders = open_sockets("hermes", targets, a).await?;

    let stride = stride(a.sockets);
    let sockets = a.sockets;
    let send = |n: u64| {
        let publisher = &publisher;
        async move {
            publisher
                .publish(n, &user(target_of(n, stride, sockets)))
                .await
        }
    };
    let watch: Watch = vec![
        ("gateway", gateway.id().into_iter().collect()),
        ("consumer", consumer.id().into_iter().collect()),
        ("rabbitmq", pids_named("beam.smp")),
        ("cassandra", pids_named("java")),
        ("holders", holders.pids()),
        ("driver", vec![std::process::id()]),
    ];
    // Confirms come in on their own: nothing to settle before the drain.
    let mut steps = serde_json::Map::new();
    let m = ramp(
        a,
        &mut holders,
        stride,
        send,
        || async {},
        &watch,
        &mut steps,
    )
    .await;
    let confirms = publisher.finish().await;
    let m = m?;
    let out = result(
        Kind::Hermes,
        a,
        &holders,
        &m,
        json!({
            "path": "RabbitMQ -> hermes-consumer -> hermes-gateway (another process) -> socket",
            "registry": "scylla",
            "registry_ttl_seconds": a.registry_ttl_seconds,
            "bcrypt_cost": 4,
            "token_seconds": token_seconds,
            "confirms_acked": confirms.acked,
            "confirms_nacked": confirms.nacked,
            "confirms_complete": confirms.complete,
        }),
        steps,
    );
    holders.stop().await;
    drop(consumer);
    drop(gateway);
    let _ = amqp.close(200, "done".into()).await;
    Ok(out)
}

async fn centrifugo(o: &Options, a: &P3Args) -> Result<Value> {
    let server = Server::start(Kind::Centrifugo, o).await?;
    let secret = servers::centrifugo_secret(&o.centrifugo_script).await?;
    let exp = now_micros() / 1_000_000 + 3600;
    let mut targets = Vec::with_capacity(a.sockets);
    for i in 0..a.sockets {
        let claims =
            json!({"sub": user(i), "exp": exp, "channels": [format!("bench:{}", user(i))]});
        targets.push(Target {
            kind: Kind::Centrifugo,
            url: server.target.url.clone(),
            token: servers::hs256_jwt_claims(&secret, &claims)?,
            // Subscribed server-side through the token: no subscribe command.
            channel: String::new(),
        });
    }
    let mut holders = open_sockets("centrifugo", targets, a).await?;
    let publisher = server.publisher();
    let permits = Arc::new(tokio::sync::Semaphore::new(a.in_flight.max(1)));
    let errors = Arc::new(AtomicU64::new(0));
    let tasks = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stride = stride(a.sockets);
    let sockets = a.sockets;
    let send = |n: u64| {
        let (publisher, permits, errors, tasks) = (
            publisher.clone(),
            permits.clone(),
            errors.clone(),
            tasks.clone(),
        );
        async move {
            let permit = permits.acquire_owned().await?;
            let u = target_of(n, stride, sockets);
            let data = json!({"n": n, "sent_us": now_micros()});
            let task = tokio::spawn(async move {
                let channel = format!("bench:{}", user(u));
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    publisher.publish_to_channel(&channel, data),
                )
                .await;
                if !matches!(r, Ok(Ok(()))) {
                    errors.fetch_add(1, Ordering::SeqCst);
                }
                drop(permit);
            });
            tasks.lock().unwrap_or_else(|p| p.into_inner()).push(task);
            Ok(())
        }
    };
    // Every request of a window has answered before its drain is waited for.
    let settle = || {
        let pending: Vec<_> = std::mem::take(&mut *tasks.lock().unwrap_or_else(|p| p.into_inner()));
        async move {
            for t in pending {
                let _ = t.await;
            }
        }
    };
    let watch: Watch = vec![
        ("centrifugo", vec![server.pid]),
        ("holders", holders.pids()),
        ("driver", vec![std::process::id()]),
    ];
    let mut steps = serde_json::Map::new();
    let m = ramp(a, &mut holders, stride, send, settle, &watch, &mut steps).await?;
    let out = result(
        Kind::Centrifugo,
        a,
        &holders,
        &m,
        json!({
            "path": "HTTP API POST /api/publish -> Centrifugo -> socket (no queue: Centrifugo has no RabbitMQ consumer)",
            "in_flight_max": a.in_flight,
            "publish_errors": errors.load(Ordering::SeqCst),
        }),
        steps,
    );
    holders.stop().await;
    server.stop().await?;
    Ok(out)
}

/// Opens one socket per target (its own user) through the holders, with per-frame latency.
async fn open_sockets(server: &str, targets: Vec<Target>, a: &P3Args) -> Result<Holders> {
    let template = targets.first().context("no sockets to open")?.clone();
    let holders = Holders::start_opts(
        &template,
        a.sockets,
        &a.sources,
        HolderOpts {
            per_socket: Some(targets),
            latency: true,
            ..HolderOpts::default()
        },
    )
    .await?;
    eprintln!(
        "[p3 {server}] {} sockets open ({} failed) in {:.1} s",
        holders.open, holders.failed, holders.connect_seconds
    );
    Ok(holders)
}
