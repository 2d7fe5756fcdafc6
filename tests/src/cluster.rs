//! A test cluster: three gateway processes and one RabbitMQ consumer sharing a registry
//! on the real CQL server, and the exactly-once scenario run across a service restart.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    AmqpPublisher, Consumer, Gateway, Ws, amqp_url, env_refs, eventually, scylla_env, unique,
};

/// Three gateways, one consumer, one queue, one keyspace.
pub struct Cluster {
    pub gateways: Vec<Gateway>,
    pub consumer: Consumer,
    pub queue: String,
    pub keyspace: String,
    pub publisher: AmqpPublisher,
}

/// The metric series counting messages the consumer routed.
pub const DELIVERED: &str = "hermes_queue_messages_total{outcome=\"delivered\",source=\"amqp\"}";

impl Cluster {
    /// Starts the cluster with a RabbitMQ consumer; `extra` is added to every process's
    /// environment.
    pub async fn start(extra: &[(&str, &str)]) -> Self {
        Self::start_with(extra, None, &[]).await
    }

    /// Starts the cluster with a RabbitMQ consumer; `extra` is added to every process's
    /// environment, then `consumer_only` to the consumer's (a setting the gateways must
    /// not share, such as another internal secret).
    pub async fn start_with_consumer_env(
        extra: &[(&str, &str)],
        consumer_only: &[(&str, &str)],
    ) -> Self {
        Self::start_with(extra, None, consumer_only).await
    }

    /// Starts the cluster with a consumer of `sqs_source` (its environment, see
    /// [`crate::sqs::consumer_env`]) instead of RabbitMQ.
    pub async fn start_sqs(extra: &[(&str, &str)], sqs_source: Vec<(String, String)>) -> Self {
        Self::start_with(extra, Some(sqs_source), &[]).await
    }

    async fn start_with(
        extra: &[(&str, &str)],
        sqs_source: Option<Vec<(String, String)>>,
        consumer_only: &[(&str, &str)],
    ) -> Self {
        let keyspace = unique("e2e");
        let queue = unique("hermes-e2e-queue");
        let mut env = scylla_env(&keyspace);
        for (k, v) in extra {
            env.push(((*k).into(), (*v).into()));
        }
        let mut gateways = Vec::new();
        // One after the other: the first creates the schema.
        for i in 1..=3 {
            let mut g = env.clone();
            g.push(("HERMES_GATEWAY_ID".into(), format!("gw-{i}")));
            gateways.push(Gateway::start(&env_refs(&g)).await);
        }
        let mut publisher = AmqpPublisher::new();
        publisher.declare(&queue).await;
        let mut c = env.clone();
        match sqs_source {
            Some(source) => c.extend(source),
            None => {
                c.push(("HERMES_SOURCE".into(), "amqp".into()));
                c.push(("HERMES_AMQP_URL".into(), amqp_url()));
                c.push(("HERMES_AMQP_QUEUE".into(), queue.clone()));
            }
        }
        if !extra.iter().any(|(k, _)| *k == "HERMES_RETRY_DELAYS_MS") {
            c.push(("HERMES_RETRY_DELAYS_MS".into(), "1000,2000".into()));
        }
        for (k, v) in consumer_only {
            c.push(((*k).into(), (*v).into()));
        }
        let consumer = Consumer::start(&env_refs(&c)).await;
        Self {
            gateways,
            consumer,
            queue,
            keyspace,
            publisher,
        }
    }

    /// Publishes a message to the cluster's queue.
    pub async fn send(&mut self, message: Value) {
        let queue = self.queue.clone();
        self.publisher
            .publish(&queue, message.to_string().as_bytes())
            .await;
    }

    /// Publishes and waits until the consumer has routed it: the consumer works on many
    /// messages at once, so this is how a test fixes their order.
    pub async fn send_in_order(&mut self, message: Value) {
        let before = self.consumer.metric(DELIVERED).await;
        self.send(message).await;
        let consumer = &self.consumer;
        eventually(|| async { consumer.metric(DELIVERED).await > before }).await;
    }

    /// `per_gateway` sockets in `room` on each gateway.
    pub async fn members(&self, room: &str, per_gateway: usize) -> Vec<Ws> {
        let mut sockets = Vec::new();
        for (i, gw) in self.gateways.iter().enumerate() {
            for j in 0..per_gateway {
                let token = gw.token(&format!("member-{i}-{j}"), room).await;
                sockets.push(gw.connect(&token).await);
            }
        }
        sockets
    }
}

/// Publishes `count` messages with ids at about `rate` per second while `restart` runs
/// (started after a third of them), and checks that every socket that stayed connected
/// received every message exactly once. Returns the publish → receipt latencies (ms) of
/// the messages that were not held up by the restart window.
pub async fn exactly_once_across(
    restart: &str,
    count: usize,
    rate: u64,
    extra: &[(&str, &str)],
) -> Vec<f64> {
    let mut cluster = Cluster::start(extra).await;
    let room = "stream";
    let sockets = cluster.members(room, 2).await;
    let n = sockets.len();

    // Each socket counts the ids it receives until it has seen every one of them.
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut seen: HashMap<String, usize> = HashMap::new();
                let mut latencies = Vec::new();
                let mut distinct = 0usize;
                while distinct < count {
                    let msg = tokio::time::timeout(Duration::from_secs(180), ws.next())
                        .await
                        .expect("messages keep arriving")
                        .expect("the socket stays open")
                        .expect("no protocol error");
                    let Message::Text(text) = msg else { continue };
                    let v: Value = serde_json::from_str(&text).expect("JSON");
                    let id = v["data"]["id"].as_str().expect("id").to_owned();
                    let entry = seen.entry(id).or_insert(0);
                    *entry += 1;
                    if *entry == 1 {
                        distinct += 1;
                    }
                    if let Some(sent) = v["data"]["sent_ms"].as_u64() {
                        latencies.push(now_ms().saturating_sub(sent) as f64);
                    }
                }
                (seen, latencies, ws)
            })
        })
        .collect();

    let script = format!(
        "{}/../scripts/services/{restart}",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut restart_task = None;
    let interval = Duration::from_micros(1_000_000 / rate.max(1));
    let started = Instant::now();
    for i in 0..count {
        if i == count / 3 {
            let script = script.clone();
            restart_task = Some(tokio::spawn(async move {
                let out = tokio::process::Command::new("bash")
                    .arg(&script)
                    .arg("restart")
                    .output()
                    .await
                    .expect("the restart script runs");
                assert!(
                    out.status.success(),
                    "restart failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }));
        }
        let body = json!({"user_id": "backend", "room_id": room, "id": format!("m-{i}"),
                          "data": {"id": format!("m-{i}"), "sent_ms": now_ms()}});
        cluster.send(body).await;
        let next = started + interval * u32::try_from(i + 1).unwrap_or(u32::MAX);
        tokio::time::sleep_until(next.into()).await;
    }
    if let Some(task) = restart_task {
        task.await.expect("restart task");
    }

    let mut all_latencies = Vec::new();
    let mut sockets = Vec::new();
    for reader in readers {
        let (seen, latencies, ws) = reader.await.expect("reader");
        assert_eq!(seen.len(), count, "every message reached every socket");
        let duplicates: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
        assert!(
            duplicates.is_empty(),
            "delivered more than once: {duplicates:?}"
        );
        all_latencies.extend(latencies);
        sockets.push(ws);
    }
    // Nothing more arrives: a final marker is each socket's next frame.
    cluster
        .send(json!({"user_id": "backend", "room_id": room, "data": {"id": "end"}}))
        .await;
    for ws in &mut sockets {
        let v = crate::recv_json(ws).await;
        assert_eq!(v["data"]["id"], "end", "no duplicate after the stream: {v}");
    }
    println!("{n} sockets received all {count} messages exactly once across `{restart} restart`");
    all_latencies
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The `q` quantile (0..1) of `values`.
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let i = ((values.len() - 1) as f64 * q).round() as usize;
    values[i]
}
