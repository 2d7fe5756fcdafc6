//! The floor under P3 on this box: RabbitMQ alone. The same publisher as P3 (the same JSON
//! body, persistent, one channel in confirm mode, confirms awaited off the schedule) at the
//! same rate, and the least any consumer must do: one AMQP consumer with P3's prefetch
//! that reads each message's `sent_us` and acknowledges it. No registry, no gateway, no
//! WebSocket. Any RabbitMQ-fed server's P3 latency on this box is at least this, and the CPU
//! it reports (the broker, and this process as publisher plus consumer) is not available to
//! the server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::TryStreamExt;
use hdrhistogram::Histogram;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use serde_json::{Value, json};

use crate::measure::{Watch, cpu_percent, pids_named, ticks};
use crate::measure::{ms, now_micros};
use crate::publisher::user;
use crate::publisher::{Publisher, amqp_connect, schedule};

pub struct QueueFloorArgs {
    pub amqp_url: String,
    pub queue: String,
    pub rate: u64,
    pub seconds: u64,
    pub warmup_seconds: u64,
    /// The publisher's turn (`schedule`); zero: each message at its own time.
    pub publish_slot: Duration,
    /// The consumer's `basic.qos` prefetch (the Hermes consumer's default).
    pub prefetch: u16,
}

/// The counts and latencies the consumer task shares with the driver.
#[derive(Default)]
struct Tally {
    received: AtomicU64,
    measured: std::sync::Mutex<Option<Histogram<u64>>>,
}

pub async fn run(a: &QueueFloorArgs) -> Result<Value> {
    if a.rate == 0 || a.seconds == 0 {
        bail!("--rate and --seconds must be at least 1");
    }
    let connection = amqp_connect(&a.amqp_url)
        .await
        .context("connect to RabbitMQ (scripts/services/up.sh)")?;
    let publisher = Publisher::new(&connection, &a.queue).await?;

    // The consumer: its own connection, as a separate consumer process would have.
    let consumer_conn = amqp_connect(&a.amqp_url)
        .await
        .context("connect the consumer")?;
    let consumer_channel = consumer_conn.create_channel().await?;
    consumer_channel
        .basic_qos(a.prefetch, BasicQosOptions::default())
        .await?;
    let deliveries = consumer_channel
        .basic_consume(
            a.queue.as_str().into(),
            "hermes-bench-queue-floor".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let tally = Arc::new(Tally::default());
    let consumer = {
        let tally = tally.clone();
        // No more than the prefetch can be unacknowledged at once anyway.
        let in_flight = usize::from(a.prefetch.max(1));
        tokio::spawn(async move {
            let tally = &tally;
            // Ends at the first failed delivery or ack, as a consumer whose channel is gone
            // would.
            let _ = deliveries
                .try_for_each_concurrent(in_flight, |d| async move {
                    let now = now_micros();
                    let sent = serde_json::from_slice::<Value>(&d.data)
                        .ok()
                        .and_then(|v| v["data"]["sent_us"].as_u64());
                    if let (Some(sent), Some(h)) = (
                        sent,
                        tally
                            .measured
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .as_mut(),
                    ) {
                        let _ = h.record(now.saturating_sub(sent).max(1));
                    }
                    tally.received.fetch_add(1, Ordering::SeqCst);
                    d.ack(BasicAckOptions::default()).await.map(|_| ())
                })
                .await;
        })
    };

    // P3's body, to the users of a 19,000-socket population in turn.
    let send = |n: u64| {
        let publisher = &publisher;
        async move { publisher.publish(n, &user((n % 19_000) as usize)).await }
    };

    let wait_received = |want: u64| {
        let tally = tally.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while tally.received.load(Ordering::SeqCst) < want {
                if Instant::now() > deadline {
                    bail!(
                        "the consumer got {} of {want} messages within 30 s",
                        tally.received.load(Ordering::SeqCst)
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(())
        }
    };

    let warm = a.rate * a.warmup_seconds;
    schedule(0, warm, a.rate, a.publish_slot, &send).await?;
    wait_received(warm).await?;
    *tally.measured.lock().unwrap_or_else(|p| p.into_inner()) =
        Some(Histogram::new_with_bounds(1, 60_000_000, 3)?);
    let watch: Watch = vec![
        ("rabbitmq", pids_named("beam.smp")),
        ("publisher_and_consumer", vec![std::process::id()]),
    ];
    let total = a.rate * a.seconds;
    let (t0, c0) = (Instant::now(), ticks(&watch));
    let publish_seconds = schedule(warm, total, a.rate, a.publish_slot, &send).await?;
    let cpu = cpu_percent(&watch, &c0, t0.elapsed().as_secs_f64());
    wait_received(warm + total).await?;
    let confirms = publisher.finish().await;
    let h = tally
        .measured
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .context("no histogram")?;
    consumer.abort();
    drop(consumer_channel);
    let _ = consumer_conn.close(200, "done".into()).await;
    let _ = connection.close(200, "done".into()).await;
    Ok(json!({
        "scenario": "queue_floor",
        "path": "RabbitMQ (persistent, publisher confirms) -> one AMQP consumer that acks; no server",
        "rate": a.rate,
        "seconds": a.seconds,
        "prefetch": a.prefetch,
        "messages": total,
        "received": h.len(),
        "achieved_rate": total as f64 / publish_seconds.max(1e-9),
        "confirms_nacked": confirms.nacked,
        "p50_ms": ms(&h, 0.5),
        "p90_ms": ms(&h, 0.9),
        "p99_ms": ms(&h, 0.99),
        "p999_ms": ms(&h, 0.999),
        "max_ms": h.max() as f64 / 1000.0,
        "rabbitmq_cpu_percent": cpu["rabbitmq"],
        "publisher_and_consumer_cpu_percent": cpu["publisher_and_consumer"],
        "cpu_percent_while_publishing": cpu,
    }))
}
