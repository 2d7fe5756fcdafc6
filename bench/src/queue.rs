//! `hermes-bench queue`: RabbitMQ → consumer → gateway → socket latency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use hermes_e2e::cluster::Cluster;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

pub async fn run(sockets: usize, rate: u64, seconds: u64) -> Result<()> {
    let cluster = Cluster::start(&[("HERMES_LOG", "warn")]).await;
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut users = Vec::with_capacity(sockets);
    for i in 0..sockets {
        // The token is issued on one gateway, the socket held by the next one.
        let issuer = &cluster.gateways[i % 3];
        let holder = &cluster.gateways[(i + 1) % 3];
        let user = format!("bench-user-{i}");
        let token = issuer.token(&user, "bench-room").await;
        let ws = holder.connect(&token).await;
        let h = histogram.clone();
        let done = done_tx.clone();
        tokio::spawn(async move {
            let (_, mut read) = ws.split();
            while let Some(Ok(m)) = read.next().await {
                if let Message::Text(t) = m {
                    let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                    if let Some(sent) = v["data"]["sent_us"].as_u64() {
                        let _ = h.lock().await.record(now_micros().saturating_sub(sent));
                        let _ = done.send(());
                    }
                }
            }
        });
        users.push(user);
    }
    let mut cluster = cluster;
    let total = rate * seconds;
    let interval = Duration::from_micros(1_000_000 / rate.max(1));
    let started = Instant::now();
    for n in 0..total {
        let user = &users[(n as usize) % users.len()];
        cluster
            .send(
                json!({"user_id": "bench", "room_id": "bench-room", "to_user_id": user,
                         "data": {"sent_us": now_micros()}}),
            )
            .await;
        tokio::time::sleep_until(
            (started + interval * u32::try_from(n + 1).unwrap_or(u32::MAX)).into(),
        )
        .await;
    }
    let publish_secs = started.elapsed().as_secs_f64();
    for _ in 0..total {
        tokio::time::timeout(Duration::from_secs(60), done_rx.recv()).await?;
    }
    let h = histogram.lock().await;
    println!(
        "sockets                  {sockets} (3 gateways, tokens issued on another replica than the holder)"
    );
    println!(
        "published                {total} notifications to single users in {publish_secs:.1} s ({:.0}/s)",
        total as f64 / publish_secs
    );
    println!(
        "RabbitMQ -> socket       p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
    Ok(())
}
