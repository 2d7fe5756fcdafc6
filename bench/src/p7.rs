//! P7 scale: several server processes (3 by default) on the box, 19,000 sockets each, all
//! in one room / channel, and room fan-out with every process against one.
//!
//! - Hermes: `hermes-gateway serve` × N sharing a ScyllaDB registry on the test CQL server
//!   (a fresh keyspace per run, dropped at the end); messages are published through the
//!   admin API of gateway 1 (`POST /v1/publish`), whose router delivers locally and forwards
//!   to the other gateways holding the room (`POST /internal/v1/deliver`).
//! - Centrifugo: N nodes with the Redis engine (`scripts/bench/centrifugo.sh start-cluster`,
//!   a fresh Redis from `scripts/bench/redis.sh`); messages are published through node 1's
//!   HTTP API, and reach the other nodes through Redis PUB/SUB.
//!
//! Phase 1: sockets on node 1 only (the others idle), P2's publish ramp. Phase 2: those
//! sockets are closed, fresh ones open on every node, the same ramp. The ramp's steps are
//! offered deliveries per second (publishes/s × sockets), the same in both phases; a step's
//! messages may arrive up to `drain_seconds` after its last publish. Each phase reports the
//! step with the most deliveries/s (over at least the step's length) among those in which
//! every message reached every socket with the publisher on schedule and no publish refused.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::holder::Holders;
use crate::measure::rss_kib;
use crate::scenarios::{Ramp, RampArgs, Receipts, ramp};
use crate::servers::{
    ADMIN_KEY, CENTRIFUGO_CHANNEL, HERMES_ROOM, Kind, Options, Publisher, Target, USER,
    banner_field, hs256_jwt, issue_token,
};

const JWT_SECRET: &str = "bench-jwt-secret-0123456789-abcdef";
const INTERNAL_SECRET: &str = "bench-internal-secret-0123456789";

pub struct P7Args {
    /// Server processes.
    pub nodes: usize,
    pub sockets_per_node: usize,
    pub sources: Vec<IpAddr>,
    /// Offered deliveries per second of each ramp step (publishes/s × sockets).
    pub offered: Vec<f64>,
    pub step_seconds: u64,
    /// How long after a step's last publish its messages may still arrive.
    pub drain_seconds: u64,
    pub p99_limit_ms: f64,
    /// Hermes: `HERMES_REGISTRY_TTL_SECONDS` of the gateways (the heartbeat runs every third).
    pub registry_ttl_seconds: u64,
    /// Hermes: the CQL contact points.
    pub scylla_nodes: String,
}

/// The server processes of one run.
pub(crate) struct Cluster {
    kind: Kind,
    pids: Vec<u32>,
    pub(crate) targets: Vec<Target>,
    /// Hermes: each gateway's internal URL (admin API, `/metrics`).
    pub(crate) internal_urls: Vec<String>,
    /// Through node 1.
    publisher: Publisher,
    /// Hermes: the gateways (killed by `stop`, and on drop) and their stderr.
    gateways: Vec<Child>,
    logs: Vec<Tail>,
    pub(crate) keyspace: Option<String>,
    scylla_nodes: String,
    script: String,
    /// What runs, for the JSON.
    setup: String,
}

pub async fn p7(kind: Kind, o: &Options, a: &P7Args) -> Result<Value> {
    if a.nodes == 0 || a.sockets_per_node == 0 || a.step_seconds == 0 || a.sources.is_empty() {
        bail!(
            "--nodes, --sockets-per-node, --step-seconds and --sources must not be zero or empty"
        );
    }
    let cluster = match kind {
        Kind::Hermes => start_hermes(o, a.nodes, a.registry_ttl_seconds, &a.scylla_nodes).await,
        Kind::Centrifugo => start_centrifugo(o, a).await,
    };
    let cluster = match cluster {
        Ok(c) => c,
        Err(e) => {
            if kind == Kind::Centrifugo {
                // Nodes that did start, and Redis.
                let _ = run_script(&o.centrifugo_script, &["stop"], &[]).await;
            }
            return Err(e);
        }
    };
    let outcome = measure(&cluster, a).await;
    // The servers go first: Hermes then has no 57,000 registry deletes to make while the
    // holders close their sockets.
    cluster.stop().await;
    let (result, holders) = outcome?;
    for h in holders {
        h.stop().await;
    }
    Ok(result)
}

async fn measure(c: &Cluster, a: &P7Args) -> Result<(Value, Vec<Holders>)> {
    let name = c.kind.name();
    let ramp_for = |sockets: usize| RampArgs {
        rates: a.offered.iter().map(|d| d / sockets as f64).collect(),
        step_seconds: a.step_seconds,
        p99_limit_ms: a.p99_limit_ms,
        drain: Duration::from_secs(a.drain_seconds),
    };
    let mut seq = 0usize;

    // Phase 1: one process holds the sockets.
    let mut receipts = Receipts::default();
    let mut one = Holders::start(&c.targets[0], a.sockets_per_node, &a.sources).await?;
    eprintln!(
        "[p7 {name}] 1 node: {} sockets open ({} failed) in {:.1} s",
        one.open, one.failed, one.connect_seconds
    );
    if one.open == 0 {
        bail!("no socket opened on node 1");
    }
    receipts.collect(&mut one);
    let one_processes = one.processes();
    seq += 1;
    receipts
        .warm_up(&c.publisher, seq, one_processes, Duration::from_secs(10))
        .await?;
    let one_sockets = one.open;
    let one_failed = one.failed;
    let one_ramp = ramp(
        &format!("p7 {name} 1 node"),
        &c.publisher,
        &receipts,
        one_processes,
        one_sockets,
        &mut seq,
        &ramp_for(one_sockets),
    )
    .await?;
    // Fresh sockets for phase 2: whatever the last step of phase 1 did to these (a server
    // that fell behind may have closed slow sockets) does not carry over.
    drop(receipts);
    one.stop().await;

    // Phase 2: every process holds its share.
    let mut receipts = Receipts::default();
    let mut groups = Vec::with_capacity(c.targets.len());
    let mut failed = 0;
    let mut processes = 0;
    let mut per_node = Vec::with_capacity(c.targets.len());
    let started = std::time::Instant::now();
    for (i, t) in c.targets.iter().enumerate() {
        let mut h = Holders::start(t, a.sockets_per_node, &a.sources).await?;
        eprintln!(
            "[p7 {name}] node {}: {} sockets open ({} failed) in {:.1} s",
            i + 1,
            h.open,
            h.failed,
            h.connect_seconds
        );
        receipts.collect(&mut h);
        failed += h.failed;
        processes += h.processes();
        per_node.push(h.open);
        groups.push(h);
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    let sockets: usize = per_node.iter().sum();
    if sockets == 0 {
        bail!("no socket opened");
    }
    seq += 1;
    receipts
        .warm_up(&c.publisher, seq, processes, Duration::from_secs(30))
        .await?;
    let all_ramp = ramp(
        &format!("p7 {name} {} nodes", c.targets.len()),
        &c.publisher,
        &receipts,
        processes,
        sockets,
        &mut seq,
        &ramp_for(sockets),
    )
    .await?;
    drop(receipts);
    let rss: Vec<Value> = c
        .pids
        .iter()
        .map(|&p| rss_kib(p).map_or(Value::Null, |v| json!(v)))
        .collect();

    let Ramp { steps, best, .. } = all_ramp;
    let Ramp {
        steps: one_steps,
        best: one_best,
        ..
    } = one_ramp;
    let (peak, one_peak) = (peak(&steps), peak(&one_steps));
    let ratio = match (
        peak["window_deliveries_per_s"].as_f64(),
        one_peak["window_deliveries_per_s"].as_f64(),
    ) {
        (Some(n), Some(one)) if one > 0.0 => json!(n / one),
        _ => Value::Null,
    };
    let result = json!({
        "scenario": "P7",
        "server": name,
        "nodes": c.targets.len(),
        "setup": c.setup,
        "sockets_total": sockets,
        "sockets_per_node": per_node,
        "connect_failures": failed,
        "connect_seconds": connect_seconds,
        "holder_processes": processes,
        "step_seconds": a.step_seconds,
        "drain_seconds": a.drain_seconds,
        // The most deliveries/s measured in a step in which every message reached every
        // socket (within the drain) with the publisher on schedule, whatever its p99:
        // deliveries / (first send → last receipt, at least the step's length).
        "deliveries_per_s": peak["window_deliveries_per_s"],
        "offered_deliveries_per_s": peak["offered_deliveries_per_s"],
        "publishes_per_s": peak["publishes_per_s"],
        "p50_ms": peak["p50_ms"],
        "p99_ms": peak["p99_ms"],
        "one_node_sockets": one_sockets,
        "one_node_connect_failures": one_failed,
        "one_node_deliveries_per_s": one_peak["window_deliveries_per_s"],
        "one_node_offered_deliveries_per_s": one_peak["offered_deliveries_per_s"],
        "one_node_publishes_per_s": one_peak["publishes_per_s"],
        "one_node_p50_ms": one_peak["p50_ms"],
        "one_node_p99_ms": one_peak["p99_ms"],
        "ratio_3_vs_1": ratio,
        // With the p99 limit of P2 as well.
        "p99_limit_ms": a.p99_limit_ms,
        "deliveries_per_s_within_p99_limit": best["window_deliveries_per_s"],
        "one_node_deliveries_per_s_within_p99_limit": one_best["window_deliveries_per_s"],
        "rss_kib_per_node": rss,
        // Hermes: lines each gateway logged at warn or above (printed on stderr at the end).
        "server_log_lines": (c.kind == Kind::Hermes)
            .then(|| c.logs.iter().map(log_lines).collect::<Vec<_>>()),
        "registry_ttl_seconds": (c.kind == Kind::Hermes).then_some(a.registry_ttl_seconds),
        "one_node_steps": one_steps,
        "steps": steps,
    });
    Ok((result, groups))
}

/// The delivered step (every message reached every socket, publisher on schedule) with the
/// most deliveries/s over at least the step's length (`window_deliveries_per_s`), or null.
fn peak(steps: &[Value]) -> Value {
    steps
        .iter()
        .filter(|s| s["delivered"] == json!(true))
        .max_by(|a, b| {
            let d = |s: &Value| s["window_deliveries_per_s"].as_f64().unwrap_or(0.0);
            d(a).total_cmp(&d(b))
        })
        .cloned()
        .unwrap_or(Value::Null)
}

impl Cluster {
    pub(crate) async fn stop(mut self) {
        for g in &mut self.gateways {
            let _ = g.kill().await;
        }
        for (i, log) in self.logs.iter().enumerate() {
            if log_lines(log) > 0 {
                eprintln!(
                    "[p7] gateway {} logged {} lines at warn or above; the last ones:\n{}",
                    i + 1,
                    log_lines(log),
                    tail_text(log)
                );
            }
        }
        if self.kind == Kind::Centrifugo
            && let Err(e) = run_script(&self.script, &["stop"], &[]).await
        {
            eprintln!("[p7] {e:#}");
        }
        if let Some(ks) = &self.keyspace
            && let Err(e) = drop_keyspace(ks, &self.scylla_nodes).await
        {
            eprintln!("[p7] could not drop the keyspace {ks}: {e:#}");
        }
    }
}

async fn drop_keyspace(keyspace: &str, nodes: &str) -> Result<()> {
    let config = hermes_e2e::scylla_config_at(nodes, keyspace, Duration::from_secs(30));
    let registry = hermes_shared::registry::scylla::ScyllaRegistry::connect(&config)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    registry
        .drop_keyspace()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// What a gateway wrote to stderr (its log at `warn`): the line count and the last lines.
#[derive(Default)]
struct Log {
    lines: usize,
    last: VecDeque<String>,
}

type Tail = Arc<Mutex<Log>>;

fn tail_text(t: &Tail) -> String {
    let log = t.lock().unwrap_or_else(|p| p.into_inner());
    log.last.iter().cloned().collect::<Vec<_>>().join("\n")
}

fn log_lines(t: &Tail) -> usize {
    t.lock().unwrap_or_else(|p| p.into_inner()).lines
}

/// Starts one `hermes-gateway serve` and waits for its banner and `/readyz`: (child, public
/// URL, internal URL).
async fn start_gateway(
    o: &Options,
    registry_ttl_seconds: u64,
    scylla_nodes: &str,
    id: &str,
    keyspace: &str,
    http: &reqwest::Client,
) -> Result<(Child, String, String, Tail)> {
    let mut cmd = Command::new(&o.hermes_bin);
    cmd.arg("serve")
        .env("HERMES_LISTEN", "127.0.0.1:0")
        .env("HERMES_INTERNAL_LISTEN", "127.0.0.1:0")
        .env("HERMES_GATEWAY_ID", id)
        .env("HERMES_ADMIN_KEY", ADMIN_KEY)
        .env("HERMES_JWT_SECRET", JWT_SECRET)
        .env("HERMES_INTERNAL_SECRET", INTERNAL_SECRET)
        .env("HERMES_REGISTRY", "scylla")
        .env("HERMES_SCYLLA_NODES", scylla_nodes)
        .env("HERMES_SCYLLA_KEYSPACE", keyspace)
        // One CQL node: replication factor 1, consistency ONE (as the e2e tests run it).
        .env("HERMES_SCYLLA_CONSISTENCY", "ONE")
        .env(
            "HERMES_REGISTRY_TTL_SECONDS",
            registry_ttl_seconds.to_string(),
        )
        .env(
            "HERMES_PING_INTERVAL_SECONDS",
            o.heartbeat_seconds.to_string(),
        )
        .env("HERMES_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("start {}", o.hermes_bin))?;
    let tail: Tail = Arc::default();
    let stderr = child.stderr.take().context("stderr")?;
    let sink = tail.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut t = sink.lock().unwrap_or_else(|p| p.into_inner());
            t.lines += 1;
            if t.last.len() == 20 {
                t.last.pop_front();
            }
            t.last.push_back(line);
        }
    });
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let banner = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("hermes-gateway listening ") {
                return Some(line);
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    let Some(banner) = banner else {
        bail!(
            "gateway {id} exited or did not announce its listeners within 60 s; its stderr:\n{}",
            tail_text(&tail)
        );
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let field = |n: &str| banner_field(&banner, n);
    let public = field("public")?.replace("http://", "ws://");
    let internal = field("internal")?;
    // Ready: registered in the registry (its first heartbeat went through).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ok = http
            .get(format!("{internal}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ok {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "gateway {id} is not ready after 60 s; its stderr:\n{}",
                tail_text(&tail)
            );
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "gateway {id} exited ({status}); its stderr:\n{}",
                tail_text(&tail)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((child, public, internal, tail))
}

/// `nodes` gateways on a fresh keyspace of the CQL server at `scylla_nodes`, with
/// `HERMES_REGISTRY_TTL_SECONDS=registry_ttl_seconds` (P7, and P8 with one gateway).
pub(crate) async fn start_hermes(
    o: &Options,
    nodes: usize,
    registry_ttl_seconds: u64,
    scylla_nodes: &str,
) -> Result<Cluster> {
    let keyspace = hermes_e2e::unique("bench_p7");
    let http = reqwest::Client::new();
    let mut cluster = Cluster {
        kind: Kind::Hermes,
        pids: Vec::new(),
        targets: Vec::new(),
        internal_urls: Vec::new(),
        publisher: Publisher::new(Kind::Hermes, String::new(), ADMIN_KEY.into()),
        gateways: Vec::new(),
        logs: Vec::new(),
        keyspace: Some(keyspace.clone()),
        scylla_nodes: scylla_nodes.to_owned(),
        script: String::new(),
        setup: format!(
            "{} x hermes-gateway serve, ScyllaDB registry on {} (keyspace {keyspace}, dropped after the run), publish through gateway 1's POST /v1/publish",
            nodes, scylla_nodes
        ),
    };
    let mut urls = Vec::new();
    // One after the other: the first creates the schema.
    for i in 1..=nodes {
        let id = format!("p7-gw-{i}");
        match start_gateway(o, registry_ttl_seconds, scylla_nodes, &id, &keyspace, &http).await {
            Ok((child, public, internal, log)) => {
                cluster.pids.push(child.id().context("a gateway's pid")?);
                cluster.gateways.push(child);
                cluster.logs.push(log);
                urls.push((public, internal));
            }
            Err(e) => {
                cluster.stop().await;
                return Err(e);
            }
        }
    }
    // One token for the benchmark user and room, issued on gateway 1: its bcrypt hash and
    // fast verifier are in the shared registry, so every gateway accepts it.
    let token = issue_token(&http, &urls[0].1, USER, HERMES_ROOM).await;
    let token = match token {
        Ok(t) => t,
        Err(e) => {
            cluster.stop().await;
            return Err(e.context("POST /v1/tokens on gateway 1"));
        }
    };
    cluster.targets = urls
        .iter()
        .map(|(public, _)| Target {
            kind: Kind::Hermes,
            url: format!("{public}/production?token={token}"),
            token: token.clone(),
            channel: HERMES_ROOM.into(),
        })
        .collect();
    cluster.publisher = Publisher::new(
        Kind::Hermes,
        format!("{}/v1/publish", urls[0].1),
        ADMIN_KEY.into(),
    );
    cluster.internal_urls = urls.into_iter().map(|(_, internal)| internal).collect();
    Ok(cluster)
}

/// Runs `script args...` with `env`; its stdout.
async fn run_script(script: &str, args: &[&str], env: &[(&str, String)]) -> Result<String> {
    let mut cmd = Command::new(script);
    cmd.args(args).stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .await
        .with_context(|| format!("run {script} {}", args.join(" ")))?;
    if !out.status.success() {
        bail!("{script} {} failed", args.join(" "));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn start_centrifugo(o: &Options, a: &P7Args) -> Result<Cluster> {
    let hb = o.heartbeat_seconds;
    let env = [
        ("HERMES_CENTRIFUGO_NODES", a.nodes.to_string()),
        ("HERMES_CENTRIFUGO_PING_INTERVAL", hb.to_string()),
        (
            "HERMES_CENTRIFUGO_PONG_TIMEOUT",
            (hb / 3).clamp(1, 8).to_string(),
        ),
    ];
    let started = run_script(&o.centrifugo_script, &["start-cluster"], &env).await?;
    // `node <i> <pid> <ws url> <api url>` per node.
    let mut nodes = Vec::new();
    for line in started.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let ["node", _, pid, ws, api] = f[..] {
            nodes.push((pid.parse::<u32>()?, ws.to_owned(), api.to_owned()));
        }
    }
    if nodes.len() != a.nodes {
        bail!(
            "centrifugo.sh start-cluster started {} nodes, not {}",
            nodes.len(),
            a.nodes
        );
    }
    let vars = run_script(&o.centrifugo_script, &["env"], &[]).await?;
    let var = |n: &str| {
        vars.lines()
            .find_map(|l| l.strip_prefix(&format!("{n}=")))
            .map(str::to_owned)
            .with_context(|| format!("no {n} from centrifugo.sh env"))
    };
    let token = hs256_jwt(&var("CENTRIFUGO_TOKEN_HMAC_SECRET")?, USER, 3600)?;
    let redis = started
        .lines()
        .find_map(|l| l.strip_prefix("redis "))
        .unwrap_or("?")
        .trim()
        .to_owned();
    Ok(Cluster {
        kind: Kind::Centrifugo,
        pids: nodes.iter().map(|n| n.0).collect(),
        targets: nodes
            .iter()
            .map(|(_, ws, _)| Target {
                kind: Kind::Centrifugo,
                url: ws.clone(),
                token: token.clone(),
                channel: CENTRIFUGO_CHANNEL.into(),
            })
            .collect(),
        internal_urls: Vec::new(),
        publisher: Publisher::new(
            Kind::Centrifugo,
            format!("{}/publish", nodes[0].2),
            var("CENTRIFUGO_API_KEY")?,
        ),
        gateways: Vec::new(),
        logs: Vec::new(),
        keyspace: None,
        scylla_nodes: String::new(),
        script: o.centrifugo_script.clone(),
        setup: format!(
            "{} centrifugo nodes, redis engine ({}), publish through node 1's POST /api/publish",
            a.nodes, redis
        ),
    })
}
