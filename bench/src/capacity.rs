//! `hermes-bench capacity-sim`: the registry side of the capacity model
//! ([docs/capacity.md](../../docs/capacity.md)), counted on the real code paths.
//!
//! The real in-memory registry (`MemoryRegistry`) sits behind a wrapper that counts every
//! `Registry` call by kind. On it:
//!
//! - **setup**: N simulated gateways write their heartbeat rows, and M sockets are spread
//!   over them uniformly at random (what a load balancer does): one very large room, the
//!   other rooms of Pareto-distributed sizes, one user with many sockets and the other
//!   users with a geometric number of sockets, rooms and users independent of each other.
//!   Each connect and disconnect makes the calls `gateway/src/session.rs` makes (`admit`:
//!   the connection row, and the room / user edge when it is the gateway's first socket of
//!   that room / user; `release`: the same deleted, the edges when it was the last) — a
//!   mirror of that code, which lives in the gateway crate with its sockets;
//! - **publishes**: the real router (`hermes_shared::router::Router`, built as
//!   `hermes-consumer` builds it: no local gateway, route to all up to 2 gateways, history
//!   on) routes a stream of room and user notifications; each simulated gateway is a small
//!   HTTP server on loopback that answers `POST /internal/v1/deliver(-batch)` with the
//!   number of its simulated sockets the target matches, so the outcome's `gateways` and
//!   `delivered` are checked against the placement;
//! - **churn**: sockets disconnect and reconnect to another random gateway;
//! - **idle**: every gateway's heartbeat over a simulated window, one pass per heartbeat
//!   interval, with the rows chosen by the real `registry::refresh::due` (period
//!   `row_period(row_ttl)`) and written by the real `Registry::refresh`; then one gateway's
//!   full rewrite (`refresh::rewrite_all`: after its heartbeat row may have lapsed).
//!
//! The JSON gives each phase's calls per event beside the model's expectation computed from
//! the same placement, and the CQL statements the ScyllaDB registry makes for those calls
//! (a connection row or a room / user edge is written with its `gateway_index` entry: two
//! statements; everything else one).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use futures_util::stream::{self, StreamExt as _};
use hermes_shared::history::{HistoryEntry, HistoryPage, HistorySettings, Pos};
use hermes_shared::loopback_http::RequestReader;
use hermes_shared::metrics::Metrics;
use hermes_shared::registry::memory::MemoryRegistry;
use hermes_shared::registry::refresh::{due, rewrite_all, row_period};
use hermes_shared::registry::{
    ConnectionRecord, GatewayKeys, GatewayRecord, Holdings, Registry, TokenRecord,
    heartbeat_interval,
};
use hermes_shared::router::{DeliverTransport, GatewayClient, Router};
use hermes_shared::wire::{DeliverRequest, DeliverResponse, PublishMessage, Target};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

/// What to simulate (`hermes-bench capacity-sim --help`).
#[derive(clap::Args)]
pub struct SimArgs {
    /// Simulated gateways (heartbeat rows and loopback deliver endpoints).
    #[arg(long, default_value_t = 100)]
    pub gateways: usize,
    /// Registered sockets, spread uniformly over the gateways.
    #[arg(long, default_value_t = 1_000_000)]
    pub sockets: usize,
    /// Members of the one very large room (at least 1).
    #[arg(long, default_value_t = 100_000)]
    pub big_room: usize,
    /// The other rooms: Pareto sizes, smallest.
    #[arg(long, default_value_t = 2)]
    pub room_min: usize,
    /// The other rooms: largest size.
    #[arg(long, default_value_t = 10_000)]
    pub room_max: usize,
    /// The other rooms: Pareto shape (smaller: heavier tail).
    #[arg(long, default_value_t = 1.2)]
    pub room_alpha: f64,
    /// Sockets of the one user with many sockets (at least 1).
    #[arg(long, default_value_t = 1_000)]
    pub heavy_user: usize,
    /// Mean sockets of the other users (geometric, at least 1).
    #[arg(long, default_value_t = 1.5)]
    pub user_mean_sockets: f64,
    /// Notifications to ordinary rooms (each room equally likely).
    #[arg(long, default_value_t = 10_000)]
    pub room_publishes: usize,
    /// Notifications to ordinary users, all their rooms (each user equally likely).
    #[arg(long, default_value_t = 10_000)]
    pub user_publishes: usize,
    /// Notifications to the very large room.
    #[arg(long, default_value_t = 20)]
    pub big_room_publishes: usize,
    /// Notifications to the user with many sockets.
    #[arg(long, default_value_t = 20)]
    pub heavy_user_publishes: usize,
    /// Routings in flight at once (the consumer's default).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Sockets that disconnect and reconnect to another random gateway.
    #[arg(long, default_value_t = 100_000)]
    pub churn: usize,
    /// Simulated idle seconds: heartbeat passes of every gateway over them.
    #[arg(long, default_value_t = 3_600)]
    pub idle_seconds: u64,
    /// HERMES_REGISTRY_TTL_SECONDS (heartbeat every third of it).
    #[arg(long, default_value_t = 30)]
    pub registry_ttl_seconds: u64,
    /// HERMES_REGISTRY_ROW_TTL_SECONDS (each row renewed once per half of it).
    #[arg(long, default_value_t = 86_400)]
    pub row_ttl_seconds: u64,
    /// HERMES_ROUTE_TO_ALL_MAX_GATEWAYS of the router (the consumer's default).
    #[arg(long, default_value_t = 2)]
    pub route_to_all_up_to: usize,
    /// Seed of the placement.
    #[arg(long, default_value_t = 21)]
    pub seed: u64,
}

// ---------------------------------------------------------------------------------------
// The counting registry.

/// Every `Registry` call, in a fixed order (index into the counters).
#[derive(Clone, Copy)]
enum Op {
    UpsertGateway,
    RemoveGateway,
    Gateway,
    Gateways,
    PutConnection,
    RemoveConnection,
    Connection,
    AddRoomGateway,
    RemoveRoomGateway,
    RoomGateways,
    AddUserGateway,
    RemoveUserGateway,
    UserGateways,
    PutToken,
    Token,
    SetFastVerifier,
    DeleteToken,
    GatewayKeys,
    ClearGatewayKeys,
    AppendHistory,
    ReadHistory,
}

/// Name, whether it writes, and the CQL statements the ScyllaDB registry runs for one call
/// (`shared/src/registry/scylla/mod.rs`: a connection row and a room or user edge go with
/// their `gateway_index` entry; `clear_gateway_keys` is one partition delete per index
/// shard).
const OPS: [(&str, bool, u64); 21] = [
    ("upsert_gateway", true, 1),
    ("remove_gateway", true, 1),
    ("gateway", false, 1),
    ("gateways", false, 1),
    ("put_connection", true, 2),
    ("remove_connection", true, 2),
    ("connection", false, 1),
    ("add_room_gateway", true, 2),
    ("remove_room_gateway", true, 2),
    ("room_gateways", false, 1),
    ("add_user_gateway", true, 2),
    ("remove_user_gateway", true, 2),
    ("user_gateways", false, 1),
    ("put_token", true, 1),
    ("token", false, 1),
    ("set_fast_verifier", true, 1),
    ("delete_token", true, 1),
    ("gateway_keys", false, 64),
    ("clear_gateway_keys", true, 64),
    ("append_history", true, 1),
    ("read_history", false, 1),
];

/// The memory registry, counting every call. `refresh` and `reap_gateway` are the trait's
/// own default methods, so the calls they make are counted one by one.
struct Counting {
    inner: MemoryRegistry,
    counts: [AtomicU64; OPS.len()],
}

impl Counting {
    fn new() -> Self {
        Self {
            inner: MemoryRegistry::new(),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn count(&self, op: Op) {
        self.counts[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Counts {
        Counts(std::array::from_fn(|i| {
            self.counts[i].load(Ordering::Relaxed)
        }))
    }
}

/// The calls made so far, by kind.
#[derive(Clone, Copy)]
struct Counts([u64; OPS.len()]);

impl Counts {
    fn since(&self, earlier: &Counts) -> Counts {
        Counts(std::array::from_fn(|i| self.0[i] - earlier.0[i]))
    }

    fn get(&self, op: Op) -> u64 {
        self.0[op as usize]
    }

    fn total(&self, writes: bool) -> u64 {
        (0..OPS.len())
            .filter(|&i| OPS[i].1 == writes)
            .map(|i| self.0[i])
            .sum()
    }

    fn cql(&self, writes: bool) -> u64 {
        (0..OPS.len())
            .filter(|&i| OPS[i].1 == writes)
            .map(|i| self.0[i] * OPS[i].2)
            .sum()
    }

    /// Calls per event: every kind that was called, reads and writes summed, and the CQL
    /// statements the Scylla registry would run for them.
    fn per(&self, events: f64) -> Value {
        let per = |n: u64| if events > 0.0 { n as f64 / events } else { 0.0 };
        let by_op: BTreeMap<&str, f64> = (0..OPS.len())
            .filter(|&i| self.0[i] > 0)
            .map(|i| (OPS[i].0, round(per(self.0[i]))))
            .collect();
        json!({
            "events": events,
            "calls": by_op,
            "reads": round(per(self.total(false))),
            "writes": round(per(self.total(true))),
            "cql_reads": round(per(self.cql(false))),
            "cql_writes": round(per(self.cql(true))),
        })
    }
}

fn round(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

#[async_trait]
impl Registry for Counting {
    async fn upsert_gateway(
        &self,
        gateway: &GatewayRecord,
        ttl: Duration,
    ) -> hermes_shared::Result<()> {
        self.count(Op::UpsertGateway);
        self.inner.upsert_gateway(gateway, ttl).await
    }
    async fn remove_gateway(&self, gateway_id: &str) -> hermes_shared::Result<()> {
        self.count(Op::RemoveGateway);
        self.inner.remove_gateway(gateway_id).await
    }
    async fn gateway(&self, gateway_id: &str) -> hermes_shared::Result<Option<GatewayRecord>> {
        self.count(Op::Gateway);
        self.inner.gateway(gateway_id).await
    }
    async fn gateways(&self) -> hermes_shared::Result<Vec<GatewayRecord>> {
        self.count(Op::Gateways);
        self.inner.gateways().await
    }
    async fn put_connection(
        &self,
        connection: &ConnectionRecord,
        ttl: Duration,
    ) -> hermes_shared::Result<()> {
        self.count(Op::PutConnection);
        self.inner.put_connection(connection, ttl).await
    }
    async fn remove_connection(
        &self,
        connection_id: &str,
        gateway_id: &str,
    ) -> hermes_shared::Result<()> {
        self.count(Op::RemoveConnection);
        self.inner
            .remove_connection(connection_id, gateway_id)
            .await
    }
    async fn connection(
        &self,
        connection_id: &str,
    ) -> hermes_shared::Result<Option<ConnectionRecord>> {
        self.count(Op::Connection);
        self.inner.connection(connection_id).await
    }
    async fn add_room_gateway(
        &self,
        room_id: &str,
        gateway_id: &str,
        ttl: Duration,
    ) -> hermes_shared::Result<()> {
        self.count(Op::AddRoomGateway);
        self.inner.add_room_gateway(room_id, gateway_id, ttl).await
    }
    async fn remove_room_gateway(
        &self,
        room_id: &str,
        gateway_id: &str,
    ) -> hermes_shared::Result<()> {
        self.count(Op::RemoveRoomGateway);
        self.inner.remove_room_gateway(room_id, gateway_id).await
    }
    async fn room_gateways(&self, room_id: &str) -> hermes_shared::Result<Vec<String>> {
        self.count(Op::RoomGateways);
        self.inner.room_gateways(room_id).await
    }
    async fn add_user_gateway(
        &self,
        user_id: &str,
        gateway_id: &str,
        ttl: Duration,
    ) -> hermes_shared::Result<()> {
        self.count(Op::AddUserGateway);
        self.inner.add_user_gateway(user_id, gateway_id, ttl).await
    }
    async fn remove_user_gateway(
        &self,
        user_id: &str,
        gateway_id: &str,
    ) -> hermes_shared::Result<()> {
        self.count(Op::RemoveUserGateway);
        self.inner.remove_user_gateway(user_id, gateway_id).await
    }
    async fn user_gateways(&self, user_id: &str) -> hermes_shared::Result<Vec<String>> {
        self.count(Op::UserGateways);
        self.inner.user_gateways(user_id).await
    }
    async fn put_token(&self, token: &TokenRecord) -> hermes_shared::Result<()> {
        self.count(Op::PutToken);
        self.inner.put_token(token).await
    }
    async fn token(
        &self,
        user_id: &str,
        room_id: &str,
    ) -> hermes_shared::Result<Option<TokenRecord>> {
        self.count(Op::Token);
        self.inner.token(user_id, room_id).await
    }
    async fn set_fast_verifier(
        &self,
        user_id: &str,
        room_id: &str,
        token_hash: &str,
        verifier: &str,
    ) -> hermes_shared::Result<bool> {
        self.count(Op::SetFastVerifier);
        (self.inner)
            .set_fast_verifier(user_id, room_id, token_hash, verifier)
            .await
    }
    async fn delete_token(&self, user_id: &str, room_id: &str) -> hermes_shared::Result<bool> {
        self.count(Op::DeleteToken);
        self.inner.delete_token(user_id, room_id).await
    }
    async fn gateway_keys(&self, gateway_id: &str) -> hermes_shared::Result<GatewayKeys> {
        self.count(Op::GatewayKeys);
        self.inner.gateway_keys(gateway_id).await
    }
    async fn clear_gateway_keys(&self, gateway_id: &str) -> hermes_shared::Result<()> {
        self.count(Op::ClearGatewayKeys);
        self.inner.clear_gateway_keys(gateway_id).await
    }
    async fn append_history(
        &self,
        entry: &HistoryEntry,
        ttl: Duration,
        keep: usize,
    ) -> hermes_shared::Result<()> {
        self.count(Op::AppendHistory);
        self.inner.append_history(entry, ttl, keep).await
    }
    async fn read_history(
        &self,
        stream: &str,
        after: Pos,
        limit: usize,
    ) -> hermes_shared::Result<HistoryPage> {
        self.count(Op::ReadHistory);
        self.inner.read_history(stream, after, limit).await
    }
}

// ---------------------------------------------------------------------------------------
// The placement: rooms, users, sockets, gateways.

/// splitmix64: a small, seeded generator (the placement is the same for the same seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n).
    fn below(&mut self, n: usize) -> usize {
        (((self.next() >> 32) * n as u64) >> 32) as usize
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// Group sizes that add up to `total`: one of `first`, the rest drawn by `draw`.
fn sizes(total: usize, first: usize, mut draw: impl FnMut() -> usize) -> Vec<usize> {
    let mut sizes = vec![first.clamp(1, total)];
    let mut left = total - sizes[0];
    while left > 0 {
        let size = draw().clamp(1, left);
        sizes.push(size);
        left -= size;
    }
    sizes
}

/// One socket: its room, its user, its gateway.
#[derive(Clone, Copy)]
struct Socket {
    room: u32,
    user: u32,
    gateway: u32,
}

fn room_id(room: u32) -> String {
    format!("r{room}")
}
fn user_id(user: u32) -> String {
    format!("u{user}")
}
fn connection_id(socket: usize, generation: u32) -> String {
    format!("c{socket}.{generation}")
}
fn gateway_id(gateway: usize) -> String {
    format!("gw-{gateway:03}")
}

/// A simulated gateway's sockets, as its hub indexes them: what it answers deliveries from
/// and what its heartbeat renews.
#[derive(Default)]
struct Hub {
    rooms: HashMap<String, u32>,
    users: HashMap<String, u32>,
    /// Connection id → socket index.
    connections: HashMap<String, usize>,
}

impl Hub {
    fn delivered(&self, target: &Target) -> usize {
        let count = match target {
            Target::Room { room_id } => self.rooms.get(room_id),
            Target::User { user_id, .. } => self.users.get(user_id),
            Target::Connections(ids) => {
                return ids
                    .iter()
                    .filter(|id| self.connections.contains_key(*id))
                    .count();
            }
        };
        count.copied().unwrap_or(0) as usize
    }
}

/// What a connect or a disconnect changed in a hub: whether it was the gateway's first
/// (connect) or last (disconnect) socket of its room and of its user.
struct Edges {
    room: bool,
    user: bool,
}

fn add_one(map: &mut HashMap<String, u32>, key: &str) -> bool {
    let n = map.entry(key.to_owned()).or_insert(0);
    *n += 1;
    *n == 1
}

fn remove_one(map: &mut HashMap<String, u32>, key: &str) -> bool {
    match map.get_mut(key) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        Some(_) => {
            map.remove(key);
            true
        }
        None => false,
    }
}

struct Sim {
    registry: Arc<Counting>,
    hubs: Arc<Vec<Mutex<Hub>>>,
    records: Vec<GatewayRecord>,
    sockets: Vec<Socket>,
    /// Each socket's current connection id generation (a reconnect is a new connection).
    generations: Vec<u32>,
    row_ttl: Duration,
}

fn lock(hub: &Mutex<Hub>) -> std::sync::MutexGuard<'_, Hub> {
    hub.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Sim {
    fn record(&self, socket: usize) -> ConnectionRecord {
        let s = self.sockets[socket];
        ConnectionRecord {
            connection_id: connection_id(socket, self.generations[socket]),
            room_id: room_id(s.room),
            user_id: user_id(s.user),
            gateway_id: self.records[s.gateway as usize].gateway_id.clone(),
            connected_at: 0,
            source_ip: "10.0.0.1".into(),
            user_agent: "capacity-sim".into(),
        }
    }

    /// A socket admitted on its gateway: `gateway/src/session.rs` `admit`.
    async fn connect(&self, socket: usize) -> Result<()> {
        let r = self.record(socket);
        let gateway = self.sockets[socket].gateway as usize;
        let edges = {
            let mut hub = lock(&self.hubs[gateway]);
            hub.connections.insert(r.connection_id.clone(), socket);
            Edges {
                room: add_one(&mut hub.rooms, &r.room_id),
                user: add_one(&mut hub.users, &r.user_id),
            }
        };
        let registry = &self.registry;
        registry.put_connection(&r, self.row_ttl).await?;
        if edges.room {
            (registry.add_room_gateway(&r.room_id, &r.gateway_id, self.row_ttl)).await?;
        }
        if edges.user {
            (registry.add_user_gateway(&r.user_id, &r.gateway_id, self.row_ttl)).await?;
        }
        Ok(())
    }

    /// A socket closed: `gateway/src/session.rs` `release` (the room and user rows only
    /// when it was the gateway's last socket there).
    async fn disconnect(&self, socket: usize) -> Result<()> {
        let r = self.record(socket);
        let gateway = self.sockets[socket].gateway as usize;
        let edges = {
            let mut hub = lock(&self.hubs[gateway]);
            hub.connections.remove(&r.connection_id);
            Edges {
                room: remove_one(&mut hub.rooms, &r.room_id),
                user: remove_one(&mut hub.users, &r.user_id),
            }
        };
        let registry = &self.registry;
        registry
            .remove_connection(&r.connection_id, &r.gateway_id)
            .await?;
        if edges.room {
            (registry.remove_room_gateway(&r.room_id, &r.gateway_id)).await?;
        }
        if edges.user {
            (registry.remove_user_gateway(&r.user_id, &r.gateway_id)).await?;
        }
        Ok(())
    }

    /// The rows of `gateway` whose turn comes in `(after_ms, upto_ms]`: the gateway's
    /// `SessionHub::holdings_due`, over the simulated hub (everything when `all`).
    fn holdings(&self, gateway: usize, after_ms: u64, upto_ms: u64, all: bool) -> Holdings {
        let period_ms = u64::try_from(row_period(self.row_ttl).as_millis()).unwrap_or(u64::MAX);
        let keep = |key: &str| all || due(key, after_ms, upto_ms, period_ms);
        let hub = lock(&self.hubs[gateway]);
        Holdings {
            rooms: hub.rooms.keys().filter(|k| keep(k)).cloned().collect(),
            users: hub.users.keys().filter(|k| keep(k)).cloned().collect(),
            connections: hub
                .connections
                .iter()
                .filter(|(id, _)| keep(id))
                .map(|(_, socket)| self.record(*socket))
                .collect(),
        }
    }

    /// Rows the gateways hold: (connections, room edges, user edges).
    fn rows(&self) -> (usize, usize, usize) {
        self.hubs.iter().fold((0, 0, 0), |(c, r, u), hub| {
            let hub = lock(hub);
            (
                c + hub.connections.len(),
                r + hub.rooms.len(),
                u + hub.users.len(),
            )
        })
    }
}

// ---------------------------------------------------------------------------------------
// The simulated gateways' internal API.

/// A deliver endpoint on loopback for one simulated gateway: `POST /internal/v1/deliver`
/// and `/deliver-batch` answered from its hub; anything else 404. Returns its base URL.
async fn serve_gateway(hubs: Arc<Vec<Mutex<Hub>>>, gateway: usize) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let hubs = hubs.clone();
            tokio::spawn(async move {
                let _ = serve_connection(socket, &hubs[gateway]).await;
            });
        }
    });
    Ok(url)
}

async fn serve_connection(mut socket: tokio::net::TcpStream, hub: &Mutex<Hub>) -> Result<()> {
    let mut requests = RequestReader::new();
    while let Some((head, body)) = requests.next(&mut socket).await? {
        let reply = if head.starts_with("POST /internal/v1/deliver-batch ") {
            let requests: Vec<DeliverRequest> = serde_json::from_slice(&body)?;
            let hub = lock(hub);
            let answers: Vec<DeliverResponse> = requests.iter().map(|r| answer(&hub, r)).collect();
            Some(serde_json::to_string(&answers)?)
        } else if head.starts_with("POST /internal/v1/deliver ") {
            let request: DeliverRequest = serde_json::from_slice(&body)?;
            Some(serde_json::to_string(&answer(&lock(hub), &request))?)
        } else {
            None
        };
        let response = match reply {
            Some(reply) => format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
                reply.len()
            ),
            None => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_owned(),
        };
        socket.write_all(response.as_bytes()).await?;
    }
    Ok(())
}

fn answer(hub: &Hub, request: &DeliverRequest) -> DeliverResponse {
    DeliverResponse {
        delivered: hub.delivered(&request.target),
        gone: Vec::new(),
        duplicate: false,
    }
}

// ---------------------------------------------------------------------------------------
// The run.

/// Expected gateways holding a group of `k` sockets placed uniformly on `g` gateways.
fn spread(k: usize, g: usize) -> f64 {
    let g = g as f64;
    g * (1.0 - (1.0 - 1.0 / g).powf(k as f64))
}

/// Probability that a socket's group of `k` has no other socket on its gateway.
fn alone(k: usize, g: usize) -> f64 {
    (1.0 - 1.0 / g as f64).powf(k.saturating_sub(1) as f64)
}

/// Mean, p50, p99 and max of a sample.
fn summary(mut xs: Vec<usize>) -> Value {
    if xs.is_empty() {
        return Value::Null;
    }
    xs.sort_unstable();
    let at = |q: f64| xs[((xs.len() - 1) as f64 * q).round() as usize];
    let mean = xs.iter().sum::<usize>() as f64 / xs.len() as f64;
    json!({"mean": round(mean), "p50": at(0.5), "p99": at(0.99), "max": xs[xs.len() - 1]})
}

pub async fn capacity_sim(a: &SimArgs) -> Result<Value> {
    if a.gateways == 0 || a.sockets == 0 || a.room_min == 0 || a.room_max < a.room_min {
        bail!("--gateways, --sockets and --room-min must be positive, --room-max ≥ --room-min");
    }
    if a.registry_ttl_seconds == 0 || a.row_ttl_seconds < 2 * a.registry_ttl_seconds {
        bail!("--row-ttl-seconds must be at least twice --registry-ttl-seconds (> 0)");
    }
    let started = Instant::now();
    let mut rng = Rng(a.seed);
    let (g, s) = (a.gateways, a.sockets);
    let ttl = Duration::from_secs(a.registry_ttl_seconds);
    let row_ttl = Duration::from_secs(a.row_ttl_seconds);

    // Rooms and users, independent of each other; gateways uniform.
    let room_sizes = sizes(s, a.big_room, || {
        let x = a.room_min as f64 / (1.0 - rng.unit()).powf(1.0 / a.room_alpha);
        (x.floor() as usize).min(a.room_max)
    });
    let p = 1.0 / a.user_mean_sockets.max(1.0);
    let mut rng_users = Rng(a.seed ^ 0x5555);
    let user_sizes = sizes(s, a.heavy_user, || {
        let mut n = 1;
        while rng_users.unit() >= p {
            n += 1;
        }
        n
    });
    let mut users: Vec<u32> = Vec::with_capacity(s);
    for (u, &n) in user_sizes.iter().enumerate() {
        users.extend(std::iter::repeat_n(u as u32, n));
    }
    rng.shuffle(&mut users);
    let mut sockets = Vec::with_capacity(s);
    for (r, &n) in room_sizes.iter().enumerate() {
        for _ in 0..n {
            let user = users[sockets.len()];
            sockets.push(Socket {
                room: r as u32,
                user,
                gateway: rng.below(g) as u32,
            });
        }
    }

    // The gateways: heartbeat rows and deliver endpoints.
    let registry = Arc::new(Counting::new());
    let hubs: Arc<Vec<Mutex<Hub>>> = Arc::new((0..g).map(|_| Mutex::default()).collect());
    let mut records = Vec::with_capacity(g);
    for i in 0..g {
        records.push(GatewayRecord {
            gateway_id: gateway_id(i),
            internal_url: serve_gateway(hubs.clone(), i).await?,
            started_at: 0,
        });
    }
    let sim = Sim {
        registry: registry.clone(),
        hubs,
        records,
        generations: vec![0; s],
        sockets,
        row_ttl,
    };
    // The harness keeps the heartbeat rows alive for the whole (real-time) run; the
    // heartbeat's own writes are counted in the idle phase, in simulated time.
    for r in &sim.records {
        (registry.upsert_gateway(r, Duration::from_secs(24 * 3600))).await?;
    }

    // Setup: every socket connects.
    let before = registry.snapshot();
    let t = Instant::now();
    for i in 0..s {
        sim.connect(i).await?;
    }
    let setup_calls = registry.snapshot().since(&before);
    let setup_seconds = t.elapsed().as_secs_f64();
    let (connections, room_edges, user_edges) = sim.rows();
    let model_room_edges: f64 = room_sizes.iter().map(|&k| spread(k, g)).sum();
    let model_user_edges: f64 = user_sizes.iter().map(|&k| spread(k, g)).sum();

    // Publishes through the real router, as the consumer builds it.
    let metrics = Arc::new(Metrics::new());
    let client = GatewayClient::new(
        "capacity-sim-secret",
        Duration::from_secs(5),
        metrics.clone(),
    )
    .context("gateway client")?
    .with_transport(DeliverTransport::Http);
    let router = Router::new(registry.clone(), client, None, metrics)
        .with_route_to_all_up_to(a.route_to_all_up_to)
        .with_history(
            HistorySettings {
                ttl: Duration::from_secs(300),
                max: 1000,
            },
            Duration::from_secs(5),
        )
        .with_registry_ttl(ttl);
    let ordinary_rooms = room_sizes.len().saturating_sub(1).max(1);
    let ordinary_users = user_sizes.len().saturating_sub(1).max(1);
    let mut classes = Vec::new();
    let mut pick_room = Rng(a.seed ^ 0xa1);
    let rooms: Vec<u32> = (0..a.room_publishes)
        .map(|_| (1 + pick_room.below(ordinary_rooms)).min(room_sizes.len() - 1) as u32)
        .collect();
    let users_picked: Vec<u32> = (0..a.user_publishes)
        .map(|_| (1 + pick_room.below(ordinary_users)).min(user_sizes.len() - 1) as u32)
        .collect();
    classes.push((
        "room",
        rooms.iter().map(|&r| Pub::Room(r)).collect::<Vec<_>>(),
    ));
    classes.push(("user", users_picked.iter().map(|&u| Pub::User(u)).collect()));
    classes.push(("big_room", vec![Pub::Room(0); a.big_room_publishes]));
    classes.push(("heavy_user", vec![Pub::User(0); a.heavy_user_publishes]));
    let mut publishes = serde_json::Map::new();
    for (name, list) in classes {
        if list.is_empty() {
            continue;
        }
        let model_gateways: f64 = list
            .iter()
            .map(|p| match p {
                Pub::Room(r) => spread(room_sizes[*r as usize], g),
                Pub::User(u) => spread(user_sizes[*u as usize], g),
            })
            .sum::<f64>()
            / list.len() as f64;
        let before = registry.snapshot();
        let t = Instant::now();
        let outcomes: Vec<_> = stream::iter(list.iter().enumerate())
            .map(|(n, p)| {
                let router = &router;
                let expected = match p {
                    Pub::Room(r) => room_sizes[*r as usize],
                    Pub::User(u) => user_sizes[*u as usize],
                };
                async move {
                    let body = match p {
                        Pub::Room(r) => json!({
                            "user_id": "backend", "room_id": room_id(*r),
                            "id": format!("{name}-{n}"), "data": {"n": n},
                        }),
                        Pub::User(u) => json!({
                            "user_id": "backend", "to_user_id": user_id(*u),
                            "id": format!("{name}-{n}"), "data": {"n": n},
                        }),
                    };
                    let message = PublishMessage::parse(body.to_string().as_bytes(), 1 << 17)?;
                    let outcome = router.publish(&message).await?;
                    anyhow::Ok((outcome, expected))
                }
            })
            .buffer_unordered(a.concurrency.max(1))
            .collect()
            .await;
        let seconds = t.elapsed().as_secs_f64();
        let calls = registry.snapshot().since(&before);
        let (mut reached, mut delivered, mut short, mut failed) = (Vec::new(), Vec::new(), 0, 0);
        for outcome in outcomes {
            let (outcome, expected) = outcome?;
            failed += outcome.failed.len() + outcome.rejected.len();
            if outcome.delivered != expected {
                short += 1;
            }
            reached.push(outcome.gateways);
            delivered.push(outcome.delivered);
        }
        let mut per = calls.per(list.len() as f64);
        if let Some(obj) = per.as_object_mut() {
            obj.insert("gateways_reached".into(), summary(reached));
            obj.insert("model_gateways_mean".into(), json!(round(model_gateways)));
            obj.insert("delivered".into(), summary(delivered));
            obj.insert("publishes_not_delivered_whole".into(), json!(short));
            obj.insert("failed_gateway_shares".into(), json!(failed));
            obj.insert("seconds".into(), json!(round(seconds)));
            obj.insert(
                "gateway_list_reads_per_s".into(),
                json!(round(calls.get(Op::Gateways) as f64 / seconds.max(1e-9))),
            );
        }
        publishes.insert(name.into(), per);
    }

    // Churn: sockets disconnect and reconnect to another random gateway.
    let before = registry.snapshot();
    let mut churn_rng = Rng(a.seed ^ 0xc4);
    let model_alone: f64 = {
        let mut room_total = 0.0;
        let mut user_total = 0.0;
        for _ in 0..a.churn.min(10_000) {
            let i = churn_rng.below(s);
            let sk = sim.sockets[i];
            room_total += alone(room_sizes[sk.room as usize], g);
            user_total += alone(user_sizes[sk.user as usize], g);
        }
        (room_total + user_total) / a.churn.clamp(1, 10_000) as f64
    };
    let mut sim = sim;
    for _ in 0..a.churn {
        let i = churn_rng.below(s);
        sim.disconnect(i).await?;
        sim.generations[i] += 1;
        sim.sockets[i].gateway = churn_rng.below(g) as u32;
        sim.connect(i).await?;
    }
    let churn_calls = registry.snapshot().since(&before);
    let removes = [
        Op::RemoveConnection,
        Op::RemoveRoomGateway,
        Op::RemoveUserGateway,
    ];
    let adds = [Op::PutConnection, Op::AddRoomGateway, Op::AddUserGateway];
    let only = |ops: &[Op]| {
        let mut c = Counts([0; OPS.len()]);
        for op in ops {
            c.0[*op as usize] = churn_calls.get(*op);
        }
        c
    };

    // Idle: every gateway's heartbeat over the simulated window.
    let interval = heartbeat_interval(ttl);
    let interval_ms = u64::try_from(interval.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let passes = (a.idle_seconds * 1000 / interval_ms).max(1);
    const T0: u64 = 1_796_601_600_000; // 2026-12-07T00:00:00Z: the rows' turns are wall-clock
    let before = registry.snapshot();
    let t = Instant::now();
    let mut busiest_pass = 0usize;
    for (gw, record) in sim.records.iter().enumerate() {
        let mut last_ok = T0;
        for k in 1..=passes {
            let now_ms = T0 + k * interval_ms;
            let rows = sim.holdings(gw, last_ok, now_ms, false);
            busiest_pass =
                busiest_pass.max(rows.rooms.len() + rows.users.len() + rows.connections.len());
            registry.refresh(record, ttl, &rows, row_ttl).await?;
            last_ok = now_ms;
        }
    }
    let idle_calls = registry.snapshot().since(&before);
    let idle_real_seconds = t.elapsed().as_secs_f64();
    let socket_hours = s as f64 * passes as f64 * interval.as_secs_f64() / 3600.0;
    let period_s = row_period(row_ttl).as_secs_f64();
    let rows_now = {
        let (c, r, u) = sim.rows();
        (c + r + u) as f64
    };
    let model_idle_calls =
        (rows_now * 3600.0 / period_s + g as f64 * 3600.0 / interval.as_secs_f64()) / s as f64;
    let model_idle_cql = (2.0 * rows_now * 3600.0 / period_s
        + g as f64 * 3600.0 / interval.as_secs_f64())
        / s as f64;

    // One gateway's full rewrite: its first heartbeat, or one after its row may have lapsed.
    let lapse = interval * 2;
    let before = registry.snapshot();
    if rewrite_all(lapse, ttl) {
        let rows = sim.holdings(0, 0, 0, true);
        (registry.refresh(&sim.records[0], ttl, &rows, row_ttl)).await?;
    }
    let rewrite_calls = registry.snapshot().since(&before);

    let churn_events = a.churn as f64;
    Ok(json!({
        "scenario": "capacity_sim",
        "registry": "MemoryRegistry behind a counting wrapper; cql_* = statements the ScyllaDB registry runs for the same calls",
        "config": {
            "gateways": g, "sockets": s, "big_room": a.big_room,
            "room_sizes": format!("Pareto min {} alpha {} max {}", a.room_min, a.room_alpha, a.room_max),
            "heavy_user": a.heavy_user, "user_mean_sockets": a.user_mean_sockets,
            "registry_ttl_seconds": a.registry_ttl_seconds, "row_ttl_seconds": a.row_ttl_seconds,
            "route_to_all_up_to": a.route_to_all_up_to, "concurrency": a.concurrency,
            "seed": a.seed,
        },
        "placement": {
            "rooms": room_sizes.len(), "users": user_sizes.len(),
            "room_sizes": summary(room_sizes.clone()),
            "user_sockets": summary(user_sizes.clone()),
            "connection_rows": connections,
            "room_gateway_rows": room_edges, "model_room_gateway_rows": round(model_room_edges),
            "user_gateway_rows": user_edges, "model_user_gateway_rows": round(model_user_edges),
            "big_room_gateways": spread(a.big_room.min(s), g).round(),
        },
        "connect_setup": {
            "per_connect": setup_calls.per(s as f64),
            "model_writes_per_connect": round(1.0 + (model_room_edges + model_user_edges) / s as f64),
            "seconds": round(setup_seconds),
        },
        "churn": {
            "per_disconnect": only(&removes).per(churn_events),
            "per_connect": only(&adds).per(churn_events),
            "model_writes_per_event": round(1.0 + model_alone),
            "other_calls": churn_calls.total(false) + churn_calls.total(true)
                - only(&removes).total(true) - only(&adds).total(true),
        },
        "publish": publishes,
        "idle": {
            "simulated_seconds": passes * interval_ms / 1000,
            "heartbeat_passes_per_gateway": passes,
            "per_socket_hour": idle_calls.per(socket_hours),
            "model_writes_per_socket_hour": round(model_idle_calls),
            "model_cql_writes_per_socket_hour": round(model_idle_cql),
            "busiest_pass_rows": busiest_pass,
            "real_seconds": round(idle_real_seconds),
        },
        "rewrite_all_one_gateway": rewrite_calls.per(1.0),
        "seconds": round(started.elapsed().as_secs_f64()),
    }))
}

/// One notification of the stream: to a room or to a user (all their rooms).
#[derive(Clone, Copy)]
enum Pub {
    Room(u32),
    User(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The model's spread of a group over gateways against a placement drawn as the
    /// simulation draws it.
    #[test]
    fn a_groups_expected_gateways_matches_uniform_placement() {
        let mut rng = Rng(7);
        let (g, k, trials) = (100, 50, 2_000);
        let mut total = 0usize;
        for _ in 0..trials {
            let mut hit = vec![false; g];
            for _ in 0..k {
                hit[rng.below(g)] = true;
            }
            total += hit.iter().filter(|h| **h).count();
        }
        let mean = total as f64 / trials as f64;
        let model = spread(k, g);
        assert!((mean - model).abs() < 0.5, "mean {mean} model {model}");
    }

    /// Connect and disconnect make the calls the gateway's admit and release make: the
    /// edges only for a gateway's first and last socket of a room or user.
    #[tokio::test]
    async fn edges_are_written_by_the_first_socket_and_removed_by_the_last() -> Result<()> {
        let registry = Arc::new(Counting::new());
        let hubs = Arc::new(vec![Mutex::default()]);
        let sim = Sim {
            registry: registry.clone(),
            hubs,
            records: vec![GatewayRecord {
                gateway_id: gateway_id(0),
                internal_url: "http://127.0.0.1:9".into(),
                started_at: 0,
            }],
            sockets: vec![
                Socket {
                    room: 1,
                    user: 1,
                    gateway: 0
                };
                2
            ],
            generations: vec![0; 2],
            row_ttl: Duration::from_secs(3600),
        };
        sim.connect(0).await?;
        sim.connect(1).await?;
        let c = registry.snapshot();
        assert_eq!(c.get(Op::PutConnection), 2);
        assert_eq!(c.get(Op::AddRoomGateway), 1);
        assert_eq!(c.get(Op::AddUserGateway), 1);
        assert_eq!(registry.room_gateways("r1").await?, vec![gateway_id(0)]);
        sim.disconnect(0).await?;
        assert!(!registry.room_gateways("r1").await?.is_empty());
        sim.disconnect(1).await?;
        let c = registry.snapshot();
        assert_eq!(c.get(Op::RemoveConnection), 2);
        assert_eq!(c.get(Op::RemoveRoomGateway), 1);
        assert_eq!(c.get(Op::RemoveUserGateway), 1);
        assert!(registry.room_gateways("r1").await?.is_empty());
        assert!(registry.user_gateways("u1").await?.is_empty());
        Ok(())
    }
}
