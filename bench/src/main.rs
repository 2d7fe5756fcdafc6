//! `hermes-bench`: measurements of real Hermes processes.
//!
//! `hermes-bench smoke` starts `hermes-gateway standalone` (release build), opens sockets
//! with the full authorizer on every connect (the verdict cache is disabled), and reports
//! connect latency, resident memory per idle socket after a heartbeat cycle, publish →
//! receipt latency to one socket, and the time to fan one message out to every socket.
//!
//! `hermes-bench p1` and `hermes-bench p2` measure Hermes and Centrifugo side by side
//! (`--server hermes|centrifugo`): P1 idle sockets (RSS and CPU per socket), P2 room fan-out
//! (deliveries/s while p99 publish → last receipt stays within 50 ms). Each prints one JSON
//! object; `hermes-bench report` turns a directory of them into `bench/results.json` and
//! `bench/RESULTS.md`. `hermes-bench p4` measures connects/s with the full auth and a
//! reconnect storm. `hermes-bench p3` measures queue → socket latency at a steady rate to
//! single users (Hermes: RabbitMQ → `hermes-consumer` → `hermes-gateway` in another process,
//! on the real services of `scripts/services/up.sh`; Centrifugo: its HTTP API, having no
//! RabbitMQ consumer), `hermes-bench p5` the delivery p99 during a flood of first-time
//! connects against its baseline. `scripts/bench/run.sh` runs it all. `hermes-bench
//! capacity-sim` counts the registry calls of the capacity model (docs/capacity.md) on the
//! real router and registry code, no server. `hermes-bench history-bytes` measures the bytes
//! one history entry takes in the CQL server's memtable and on its disk.

mod amqp_cost;
mod capacity;
mod cli;
mod floor;
mod history_bytes;
mod holder;
mod measure;
mod p3;
mod p5;
mod p7;
mod p8;
mod publisher;
mod queue_floor;
mod report;
mod scenarios;
mod servers;
mod smoke;
mod ws_floor;

use anyhow::Result;
use clap::Parser;

#[tokio::main]
async fn main() -> Result<()> {
    cli::run(cli::Cli::parse()).await
}
