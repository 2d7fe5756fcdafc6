//! The command line: one subcommand per scenario, and the dispatch to it.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;

use crate::servers::{self, Kind};
use crate::{
    amqp_cost, capacity, floor, history_bytes, holder, p3, p5, p7, p8, queue_floor, report,
    scenarios, smoke, ws_floor,
};

#[derive(Parser)]
#[command(name = "hermes-bench")]
pub enum Cli {
    /// P1: idle sockets on one server process: RSS and CPU per socket.
    P1 {
        #[arg(long, value_enum)]
        server: Kind,
        #[command(flatten)]
        common: Common,
        /// Sockets to open.
        #[arg(long, default_value_t = 19_000)]
        sockets: usize,
        /// Seconds over which the idle CPU is measured with every socket open.
        #[arg(long, default_value_t = 30)]
        idle_seconds: u64,
        /// Seconds over which the idle CPU is measured before any socket (the baseline).
        #[arg(long, default_value_t = 10)]
        baseline_seconds: u64,
    },
    /// P2: one room of N sockets, publishes at increasing rates through the HTTP API.
    P2 {
        #[arg(long, value_enum)]
        server: Kind,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        room: RoomArgs,
    },
    /// P4: connects/s with the full auth (p50/p99 per connect), then a reconnect storm.
    P4 {
        #[arg(long, value_enum)]
        server: Kind,
        #[command(flatten)]
        common: Common,
        /// Clients: connected at the measured rate, then all dropped and reconnected.
        #[arg(long, default_value_t = 19_000)]
        sockets: usize,
        /// Connects in flight per holder process while the rate is measured.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Reconnects in flight per holder process in the storm.
        #[arg(long, default_value_t = 512)]
        storm_concurrency: usize,
        /// Seconds between the connects and the storm.
        #[arg(long, default_value_t = 3)]
        settle_seconds: u64,
    },
    /// The capacity model's registry figures (docs/capacity.md), counted on the real router
    /// and registry code: simulated gateways and sockets on the memory registry behind a
    /// counting wrapper; calls per connect, disconnect, publish and idle socket-hour.
    CapacitySim(capacity::SimArgs),
    /// The bytes one history entry takes in the CQL server's memtable and on its disk:
    /// entries appended through the ScyllaDB registry, the table flushed and measured with
    /// nodetool (Hermes only).
    HistoryBytes(history_bytes::HistoryBytesArgs),
    /// P8: what idle sockets cost the registry database: the CQL server's own count of the
    /// writes to the run's keyspace over a window, per socket and hour (Hermes only).
    P8 {
        #[command(flatten)]
        common: Common,
        /// Idle sockets (≤ 19,000: 20,000 open files per process).
        #[arg(long, default_value_t = 19_000)]
        sockets: usize,
        /// Seconds between the last connect and the first count.
        #[arg(long, default_value_t = 60)]
        settle_seconds: u64,
        /// Seconds whose writes are counted.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// HERMES_REGISTRY_TTL_SECONDS of the gateway: the default configuration's.
        #[arg(long, default_value_t = 30)]
        registry_ttl_seconds: u64,
        #[command(flatten)]
        cql: Cql,
    },
    /// P7: N server processes of 19,000 sockets each in one room; fan-out with all of them
    /// against one (Hermes: gateways on a shared ScyllaDB registry; Centrifugo: Redis engine).
    P7 {
        #[arg(long, value_enum)]
        server: Kind,
        #[command(flatten)]
        common: Common,
        /// Server processes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Sockets per server process (≤ 19,000: 20,000 open files per process).
        #[arg(long, default_value_t = 19_000)]
        sockets_per_node: usize,
        /// Offered deliveries per second (publishes/s × sockets) of the ramp's steps, tried
        /// in this order, the same with one process as with all of them.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "10000,25000,50000,100000,150000,200000,250000,300000,400000,500000,600000,800000,1000000,1200000,1500000"
        )]
        offered: Vec<f64>,
        /// Seconds of publishing at each step.
        #[arg(long, default_value_t = 5)]
        step_seconds: u64,
        /// Seconds after a step's last publish within which its messages must reach every
        /// socket (later ones count as lost and end the ramp).
        #[arg(long, default_value_t = 10)]
        drain_seconds: u64,
        /// The p99 publish → last receipt of the detail figures `*_within_p99_limit`.
        #[arg(long, default_value_t = 50.0)]
        p99_limit_ms: f64,
        /// Hermes: HERMES_REGISTRY_TTL_SECONDS of the gateways (the default configuration's:
        /// their heartbeat writes one row, not every row they hold, since issue 21; before it,
        /// the bench ran with 900 to keep a rewrite of 19,000 rows per gateway out of the
        /// measurement).
        #[arg(long, default_value_t = 30)]
        registry_ttl_seconds: u64,
        #[command(flatten)]
        cql: Cql,
    },
    /// P3: queue → socket latency, notifications to single users at a steady rate.
    P3 {
        #[arg(long, value_enum)]
        server: Kind,
        #[command(flatten)]
        common: Common,
        /// Sockets, one user each.
        #[arg(long, default_value_t = 19_000)]
        sockets: usize,
        /// Notifications per second, each to one user.
        #[arg(long, default_value_t = 5_000)]
        rate: u64,
        /// Seconds of measured publishing.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Seconds of publishing at the same rate before each measurement. The first one
        /// also lets the registry's server absorb the setup's writes (19,000 tokens and
        /// sockets: memtable flushes and compactions); 3 s measured those instead (p99 50 ms
        /// at 1,000/s against 6 ms after 40 s).
        #[arg(long, default_value_t = 20)]
        warmup_seconds: u64,
        /// The publisher's turn in milliseconds: each turn publishes the messages due by then
        /// together (5 a turn at 5,000/s); 0 publishes each at its own time (see
        /// bench/src/publisher.rs `schedule`).
        #[arg(long, default_value_t = 1)]
        publish_slot_ms: u64,
        /// Lower rates measured first on the same sockets (comma-separated, ascending):
        /// where the box still meets the target (`at_<rate>_*` keys).
        #[arg(long, value_delimiter = ',', default_value = "1000,2000")]
        ramp: Vec<u64>,
        /// Seconds to wait for the last notifications after the publishing.
        #[arg(long, default_value_t = 10)]
        drain_seconds: u64,
        /// Hermes: the consumer binary (a release build).
        #[arg(
            long,
            default_value = "/root/.cache/hermes/target/release/hermes-consumer"
        )]
        consumer_bin: String,
        #[command(flatten)]
        cql: Cql,
        /// Hermes: the RabbitMQ URL.
        #[arg(
            long,
            env = "HERMES_TEST_AMQP_URL",
            default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
        )]
        amqp_url: String,
        /// Hermes: the registry keyspace (created if absent, reused by later runs).
        #[arg(long, default_value = "hermes_bench_p3")]
        keyspace: String,
        /// Hermes: the queue (declared durable, purged before the run).
        #[arg(long, default_value = "hermes-bench-p3")]
        queue: String,
        /// Hermes: HERMES_REGISTRY_TTL_SECONDS of the gateway (the default configuration's:
        /// its heartbeat writes one row, not every row it holds, since issue 21; before it,
        /// the bench ran with 900 to keep that rewrite out of the measurement).
        #[arg(long, default_value_t = 30)]
        registry_ttl_seconds: u64,
        /// Hermes: token requests in flight while the users' tokens are issued.
        #[arg(long, default_value_t = 32)]
        token_concurrency: usize,
        /// Centrifugo: HTTP publishes in flight at most.
        #[arg(long, default_value_t = 256)]
        in_flight: usize,
    },
    /// P5: delivery p99 in a room during a flood of first-time connects, against a baseline.
    P5 {
        #[arg(long, value_enum)]
        server: Kind,
        #[command(flatten)]
        common: Common,
        /// Sockets in the room.
        #[arg(long, default_value_t = 2_000)]
        sockets: usize,
        /// Publishes per second into the room (HTTP API), in both windows.
        #[arg(long, default_value_t = 20)]
        rate: u64,
        /// Seconds of each measured window (baseline, then during the flood).
        #[arg(long, default_value_t = 10)]
        window_seconds: u64,
        /// Seconds of publishing before the baseline.
        #[arg(long, default_value_t = 2)]
        warmup_seconds: u64,
        /// Seconds the flood runs before its window starts.
        #[arg(long, default_value_t = 2)]
        ramp_seconds: u64,
        /// Hermes: first-time tokens (distinct users, bcrypt hash without fast verifier)
        /// issued before the measurement; each is used by one successful connect.
        #[arg(long, default_value_t = 500)]
        flood_tokens: usize,
        /// Flood connects in flight.
        #[arg(long, default_value_t = 256)]
        flood_concurrency: usize,
        /// Pause before a flood connect refused with 503 (or failed) is retried.
        #[arg(long, default_value_t = 200)]
        flood_retry_ms: u64,
        /// Flood connect attempts per second at most, retries included (0: no limit, only
        /// --flood-concurrency in flight).
        #[arg(long, default_value_t = 0)]
        flood_rate: u64,
    },
    /// (internal) the first-time connect flood of p5.
    #[command(hide = true)]
    Flood {
        #[arg(long, value_enum)]
        server: Kind,
        /// Centrifugo: the WebSocket URL (Hermes: the URLs are in --targets).
        #[arg(long)]
        url: String,
        /// Hermes: `<url> <token>` per line, one per first-time connect.
        #[arg(long)]
        targets: Option<std::path::PathBuf>,
        #[arg(long, value_delimiter = ',')]
        sources: Vec<std::net::IpAddr>,
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        #[arg(long, default_value_t = 200)]
        retry_ms: u64,
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
    /// Writes bench/results.json and bench/RESULTS.md from the JSON lines of a run directory.
    Report {
        /// Directory holding the runs' p<N>-<server>-<i>.json (one JSON object each) and the
        /// files scripts/bench/run.sh writes beside them.
        #[arg(long)]
        runs: std::path::PathBuf,
        /// Where results.json and RESULTS.md go.
        #[arg(long, default_value = "bench")]
        out: std::path::PathBuf,
    },
    /// (internal) a socket-holder process of the scenarios.
    #[command(hide = true)]
    Hold {
        #[arg(long, value_enum)]
        server: Kind,
        #[arg(long)]
        url: String,
        #[arg(long, default_value = "")]
        token: String,
        #[arg(long)]
        channel: String,
        #[arg(long)]
        count: usize,
        #[arg(long, value_delimiter = ',')]
        sources: Vec<std::net::IpAddr>,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Reconnects in flight after `storm` on stdin.
        #[arg(long, default_value_t = 64)]
        storm_concurrency: usize,
        /// Per-socket targets: `<url> <token>` per line, `count` lines.
        #[arg(long)]
        targets: Option<std::path::PathBuf>,
        /// Record the receipt latency of every frame carrying `sent_us`.
        #[arg(long)]
        latency: bool,
    },
    /// The floor under P3 on this box: P3's publisher into RabbitMQ and one consumer that only
    /// acknowledges, no server (see bench/src/queue_floor.rs).
    QueueFloor {
        /// Messages per second.
        #[arg(long, default_value_t = 5_000)]
        rate: u64,
        /// Seconds of measured publishing.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Seconds of publishing at the same rate before the measurement.
        #[arg(long, default_value_t = 3)]
        warmup_seconds: u64,
        /// The publisher's turn in milliseconds: each turn publishes the messages due by then
        /// together (5 a turn at 5,000/s); 0 publishes each at its own time (see
        /// bench/src/publisher.rs `schedule`).
        #[arg(long, default_value_t = 1)]
        publish_slot_ms: u64,
        /// The consumer's prefetch (the Hermes consumer's default).
        #[arg(long, default_value_t = 64)]
        prefetch: u16,
        /// The RabbitMQ URL.
        #[arg(
            long,
            env = "HERMES_TEST_AMQP_URL",
            default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
        )]
        amqp_url: String,
        /// The queue (declared durable, purged before the run).
        #[arg(long, default_value = "hermes-bench-queue-floor")]
        queue: String,
    },
    /// The AMQP client's cost per consumed and acknowledged message: CPU and context
    /// switches of a child process that consumes, parses and acks on one runtime thread
    /// (see bench/src/amqp_cost.rs).
    AmqpCost {
        /// Messages per second.
        #[arg(long, default_value_t = 5_000)]
        rate: u64,
        /// Seconds of measured publishing.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Seconds of publishing at the same rate before the measurement.
        #[arg(long, default_value_t = 3)]
        warmup_seconds: u64,
        /// The publisher's turn in milliseconds: each turn publishes the messages due by then
        /// together (5 a turn at 5,000/s); 0 publishes each at its own time (see
        /// bench/src/publisher.rs `schedule`).
        #[arg(long, default_value_t = 0)]
        publish_slot_ms: u64,
        /// The consumer's prefetch (the Hermes consumer's default).
        #[arg(long, default_value_t = 64)]
        prefetch: u16,
        /// The RabbitMQ URL.
        #[arg(
            long,
            env = "HERMES_TEST_AMQP_URL",
            default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
        )]
        amqp_url: String,
        /// The queue (declared durable, purged before the run).
        #[arg(long, default_value = "hermes-bench-amqp-cost")]
        queue: String,
        /// How each message is acknowledged.
        #[arg(long, value_enum, default_value = "source")]
        ack: amqp_cost::Ack,
    },
    /// The measured consumer of `amqp-cost` (started by it).
    #[command(hide = true)]
    AmqpCostConsumer {
        #[arg(long)]
        amqp_url: String,
        #[arg(long)]
        queue: String,
        #[arg(long)]
        prefetch: u16,
        #[arg(long, value_enum)]
        ack: amqp_cost::Ack,
    },
    /// The floor under a fan-out on this box: N loopback TCP pairs, one write and one read
    /// per pair, no server (see bench/src/floor.rs).
    Floor {
        /// Socket pairs (two descriptors each: at most 9,900 under a 20,000 limit).
        #[arg(long, default_value_t = 9_500)]
        pairs: usize,
        /// Fan-outs measured.
        #[arg(long, default_value_t = 100)]
        rounds: usize,
        /// Threads sharing the writes (the server side).
        #[arg(long, default_value_t = 1)]
        writers: usize,
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5"
        )]
        sources: Vec<std::net::IpAddr>,
    },
    /// P2's room and ramp against the least a WebSocket server can do: pre-encoded frames
    /// written by blocking threads, no auth, no tasks (see bench/src/ws_floor.rs).
    WsFloor {
        #[command(flatten)]
        room: RoomArgs,
        /// The server's writer threads (the box has 2 cores).
        #[arg(long, default_value_t = 2)]
        writers: usize,
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5"
        )]
        sources: Vec<std::net::IpAddr>,
    },
    /// The server process of ws-floor (started by it).
    #[command(hide = true)]
    WsFloorServer {
        #[arg(long, default_value_t = 2)]
        writers: usize,
    },
    /// Connect latency, RSS per idle socket, publish → receipt latency, one fan-out.
    Smoke {
        /// The gateway binary (a release build).
        #[arg(long)]
        bin: String,
        /// Idle sockets to open.
        #[arg(long, default_value_t = 1000)]
        sockets: usize,
        /// Sequential publishes for the latency measurement.
        #[arg(long, default_value_t = 1000)]
        messages: usize,
    },
}

/// P2's room and publish ramp (p2 and ws-floor).
#[derive(clap::Args)]
pub struct RoomArgs {
    /// Sockets in the room.
    #[arg(long, default_value_t = 10_000)]
    sockets: usize,
    /// Publishes per second, tried in this order until one is not sustained.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "2,5,10,20,30,50,75,100,150,200,300"
    )]
    rates: Vec<u64>,
    /// Seconds of publishing at each rate.
    #[arg(long, default_value_t = 5)]
    step_seconds: u64,
    /// The p99 publish → last receipt a sustained rate must stay within.
    #[arg(long, default_value_t = 50.0)]
    p99_limit_ms: f64,
}

impl RoomArgs {
    fn p2_args(self, sources: Vec<std::net::IpAddr>) -> scenarios::P2Args {
        scenarios::P2Args {
            sockets: self.sockets,
            sources,
            rates: self.rates,
            step_seconds: self.step_seconds,
            p99_limit_ms: self.p99_limit_ms,
        }
    }
}

/// Options shared by p1, p2 and p4.
/// The registry's CQL server (Hermes's scenarios that use the ScyllaDB registry).
#[derive(clap::Args)]
pub struct Cql {
    /// CQL contact points of the registry.
    #[arg(
        long,
        env = "HERMES_TEST_SCYLLA_NODES",
        default_value = "127.0.0.1:9042"
    )]
    scylla_nodes: String,
}

#[derive(clap::Args)]
pub struct Common {
    /// The gateway binary (a release build).
    #[arg(
        long,
        default_value = "/root/.cache/hermes/target/release/hermes-gateway"
    )]
    hermes_bin: String,
    /// scripts/bench/centrifugo.sh (builds, starts and stops Centrifugo).
    #[arg(long, default_value = "scripts/bench/centrifugo.sh")]
    centrifugo_script: String,
    /// Server → client heartbeat interval, the same for both servers.
    #[arg(long, default_value_t = 25)]
    heartbeat_seconds: u64,
    /// Source addresses of the generator's sockets, round robin.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5"
    )]
    sources: Vec<std::net::IpAddr>,
}

impl Common {
    fn options(&self) -> servers::Options {
        servers::Options {
            hermes_bin: self.hermes_bin.clone(),
            centrifugo_script: self.centrifugo_script.clone(),
            heartbeat_seconds: self.heartbeat_seconds,
        }
    }
}

/// Runs the scenario the command line names.
pub async fn run(cli: Cli) -> Result<()> {
    match cli {
        Cli::P1 {
            server,
            common,
            sockets,
            idle_seconds,
            baseline_seconds,
        } => {
            let args = scenarios::P1Args {
                sockets,
                sources: common.sources.clone(),
                idle_seconds,
                baseline_seconds,
            };
            let v = scenarios::p1(server, &common.options(), &args).await?;
            println!("{v}");
            Ok(())
        }
        Cli::P2 {
            server,
            common,
            room,
        } => {
            let args = room.p2_args(common.sources.clone());
            let v = scenarios::p2(server, &common.options(), &args).await?;
            println!("{v}");
            Ok(())
        }
        Cli::P4 {
            server,
            common,
            sockets,
            concurrency,
            storm_concurrency,
            settle_seconds,
        } => {
            let args = scenarios::P4Args {
                sockets,
                sources: common.sources.clone(),
                concurrency,
                storm_concurrency,
                settle_seconds,
            };
            let v = scenarios::p4(server, &common.options(), &args).await?;
            println!("{v}");
            Ok(())
        }
        Cli::P7 {
            server,
            common,
            nodes,
            sockets_per_node,
            offered,
            step_seconds,
            drain_seconds,
            p99_limit_ms,
            registry_ttl_seconds,
            cql,
        } => {
            let args = p7::P7Args {
                nodes,
                sockets_per_node,
                sources: common.sources.clone(),
                offered,
                step_seconds,
                drain_seconds,
                p99_limit_ms,
                registry_ttl_seconds,
                scylla_nodes: cql.scylla_nodes,
            };
            let v = p7::p7(server, &common.options(), &args).await?;
            println!("{v}");
            Ok(())
        }
        Cli::CapacitySim(args) => {
            let v = capacity::capacity_sim(&args).await?;
            println!("{v}");
            Ok(())
        }
        Cli::HistoryBytes(args) => {
            let v = history_bytes::history_bytes(&args).await?;
            println!("{v}");
            Ok(())
        }
        Cli::P8 {
            common,
            sockets,
            settle_seconds,
            seconds,
            registry_ttl_seconds,
            cql,
        } => {
            let args = p8::P8Args {
                sockets,
                sources: common.sources.clone(),
                settle_seconds,
                seconds,
                registry_ttl_seconds,
                scylla_nodes: cql.scylla_nodes,
            };
            let v = p8::p8(&common.options(), &args).await?;
            println!("{v}");
            Ok(())
        }
        Cli::P3 {
            server,
            common,
            sockets,
            rate,
            seconds,
            warmup_seconds,
            publish_slot_ms,
            ramp,
            drain_seconds,
            consumer_bin,
            cql,
            amqp_url,
            keyspace,
            queue,
            registry_ttl_seconds,
            token_concurrency,
            in_flight,
        } => {
            let args = p3::P3Args {
                sockets,
                sources: common.sources.clone(),
                rate,
                seconds,
                warmup_seconds,
                publish_slot: Duration::from_millis(publish_slot_ms),
                ramp,
                drain_seconds,
                consumer_bin,
                scylla_nodes: cql.scylla_nodes,
                amqp_url,
                keyspace,
                queue,
                registry_ttl_seconds,
                in_flight,
                token_concurrency,
            };
            let v = p3::p3(server, &common.options(), &args).await?;
            println!("{v}");
            Ok(())
        }
        Cli::P5 {
            server,
            common,
            sockets,
            rate,
            window_seconds,
            warmup_seconds,
            ramp_seconds,
            flood_tokens,
            flood_concurrency,
            flood_retry_ms,
            flood_rate,
        } => {
            let args = p5::P5Args {
                sockets,
                sources: common.sources.clone(),
                rate,
                window_seconds,
                warmup_seconds,
                ramp_seconds,
                flood_tokens,
                flood_concurrency,
                flood_retry_ms,
                flood_rate,
            };
            let v = p5::p5(server, &common.options(), &args).await?;
            println!("{v}");
            Ok(())
        }
        Cli::Flood {
            server,
            url,
            targets,
            sources,
            concurrency,
            retry_ms,
            rate,
        } => p5::flood(server, url, targets, sources, concurrency, retry_ms, rate).await,
        Cli::Report { runs, out } => report::write(&runs, &out),
        Cli::Hold {
            server,
            url,
            token,
            channel,
            count,
            sources,
            concurrency,
            storm_concurrency,
            targets,
            latency,
        } => {
            let target = servers::Target {
                kind: server,
                url,
                token,
                channel,
            };
            let extra = holder::HoldExtra { targets, latency };
            holder::hold(
                target,
                count,
                sources,
                concurrency,
                storm_concurrency,
                extra,
            )
            .await
        }
        Cli::QueueFloor {
            rate,
            seconds,
            warmup_seconds,
            publish_slot_ms,
            prefetch,
            amqp_url,
            queue,
        } => {
            let args = queue_floor::QueueFloorArgs {
                amqp_url,
                queue,
                rate,
                seconds,
                warmup_seconds,
                publish_slot: Duration::from_millis(publish_slot_ms),
                prefetch,
            };
            println!("{}", queue_floor::run(&args).await?);
            Ok(())
        }
        Cli::AmqpCost {
            rate,
            seconds,
            warmup_seconds,
            publish_slot_ms,
            prefetch,
            amqp_url,
            queue,
            ack,
        } => {
            let args = amqp_cost::AmqpCostArgs {
                amqp_url,
                queue,
                rate,
                seconds,
                warmup_seconds,
                publish_slot: Duration::from_millis(publish_slot_ms),
                prefetch,
                ack,
            };
            println!("{}", amqp_cost::run(&args).await?);
            Ok(())
        }
        // On a runtime of one thread of its own: this one's workers stay idle.
        Cli::AmqpCostConsumer {
            amqp_url,
            queue,
            prefetch,
            ack,
        } => {
            tokio::task::spawn_blocking(move || amqp_cost::consume(amqp_url, queue, prefetch, ack))
                .await
                .context("the consumer thread")?
        }
        Cli::Floor {
            pairs,
            rounds,
            writers,
            sources,
        } => {
            println!("{}", floor::run(pairs, rounds, writers, sources).await?);
            Ok(())
        }
        Cli::WsFloor {
            room,
            writers,
            sources,
        } => {
            let args = room.p2_args(sources);
            println!("{}", ws_floor::run(writers, &args).await?);
            Ok(())
        }
        Cli::WsFloorServer { writers } => ws_floor::serve(writers).await,
        Cli::Smoke {
            bin,
            sockets,
            messages,
        } => smoke::smoke(bin, sockets, messages).await,
    }
}
