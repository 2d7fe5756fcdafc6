//! The consumer process, the ScyllaDB settings of a test cluster, and a RabbitMQ
//! publisher for the tests.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::process::{Child, Command};

use crate::{INTERNAL_SECRET, binary, spawn_announced};

/// A running `hermes-consumer` process.
pub struct Consumer {
    child: Child,
    /// Base URL of its `/metrics`, `/healthz`, `/readyz` listener.
    pub http: String,
    pub logs: Arc<Mutex<String>>,
}

impl Consumer {
    /// Starts `hermes-consumer` with the test internal secret and `env` on top, and waits
    /// until it consumes (`/readyz` 200).
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(binary("hermes-consumer"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HERMES_INTERNAL_SECRET", INTERNAL_SECRET)
            .env("HERMES_CONSUMER_LISTEN", "127.0.0.1:0")
            .env("HERMES_LOG", "info,hermes_consumer=debug");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let (child, banner, logs) = spawn_announced(cmd, "hermes-consumer listening http=").await;
        let http = banner
            .trim_start_matches("hermes-consumer listening http=")
            .trim()
            .to_owned();
        let consumer = Self { child, http, logs };
        let url = format!("{}/readyz", consumer.http);
        let client = reqwest::Client::new();
        crate::eventually(|| async {
            client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
        consumer
    }

    /// Value of a metric series, 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        crate::metric_value(&format!("{}/metrics", self.http), series).await
    }

    /// Value of a counter once it has reached `at_least` (or the deadline passed): counters
    /// move a moment after what a test can see (the socket has its frame before the
    /// gateway's answer reaches the consumer; a dead letter is on its queue before the
    /// original is acknowledged), so a test waits for the count, then checks it is exact.
    pub async fn counter_once_at(&self, series: &str, at_least: f64) -> f64 {
        let _ = crate::within(
            crate::DEADLINE,
            std::time::Duration::from_millis(100),
            || async { self.metric(series).await >= at_least },
        )
        .await;
        self.metric(series).await
    }

    pub fn logs(&self) -> String {
        self.logs.lock().expect("logs").clone()
    }

    /// Kills the process at once (SIGKILL), as a crash or an evicted node would, and reaps it.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill -9");
    }

    /// Sends SIGTERM without waiting (see [`Self::wait_exit`]).
    pub fn terminate(&self) {
        crate::sigterm(&self.child);
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        crate::wait_exit(&mut self.child, limit, "the consumer").await
    }

    /// Sends SIGTERM and waits for the exit.
    pub async fn stop(mut self) -> std::process::ExitStatus {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the consumer exits in time")
            .expect("wait")
    }
}

/// Environment that points a gateway or consumer at the test CQL server and `keyspace`.
pub fn scylla_env(keyspace: &str) -> Vec<(String, String)> {
    vec![
        ("HERMES_REGISTRY".into(), "scylla".into()),
        ("HERMES_SCYLLA_NODES".into(), crate::scylla_nodes()),
        ("HERMES_SCYLLA_KEYSPACE".into(), keyspace.into()),
        ("HERMES_SCYLLA_CONSISTENCY".into(), "ONE".into()),
    ]
}

/// Borrowed view of owned env pairs.
pub fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A gateway and a RabbitMQ consumer sharing a keyspace of their own, the consumer on a
/// queue of its own, and a publisher that declared that queue (names from `name`).
pub async fn gateway_with_amqp_consumer(
    name: &str,
) -> (crate::Gateway, Consumer, AmqpPublisher, String) {
    let keyspace = crate::unique(&format!("e2e_{name}"));
    let queue = crate::unique(&format!("hermes-e2e-{name}"));
    let env = scylla_env(&keyspace);
    let gateway = crate::Gateway::start(&env_refs(&env)).await;
    let mut publisher = AmqpPublisher::new();
    publisher.declare(&queue).await;
    let mut c = env;
    c.push(("HERMES_SOURCE".into(), "amqp".into()));
    c.push(("HERMES_AMQP_URL".into(), crate::amqp_url()));
    c.push(("HERMES_AMQP_QUEUE".into(), queue.clone()));
    let consumer = Consumer::start(&env_refs(&c)).await;
    (gateway, consumer, publisher, queue)
}

/// Publishes to RabbitMQ with publisher confirms, reconnecting when the broker goes away,
/// so every message it reports as sent was accepted by the broker.
pub struct AmqpPublisher {
    url: String,
    channel: Option<(Connection, Channel)>,
}

impl AmqpPublisher {
    pub fn new() -> Self {
        Self::with_url(crate::amqp_url())
    }

    /// A publisher to the broker at `url` (a proxy in front of the test RabbitMQ, say).
    pub fn with_url(url: String) -> Self {
        Self { url, channel: None }
    }

    async fn channel(&mut self) -> Result<&Channel, lapin::Error> {
        if self
            .channel
            .as_ref()
            .is_none_or(|(c, ch)| !c.status().connected() || !ch.status().connected())
        {
            let connection =
                Connection::connect(&self.url, ConnectionProperties::default()).await?;
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            self.channel = Some((connection, channel));
        }
        Ok(&self.channel.as_ref().expect("just set").1)
    }

    /// Declares a durable queue (what the consumer declares too).
    pub async fn declare(&mut self, queue: &str) {
        let ch = self
            .channel()
            .await
            .expect("RabbitMQ reachable: run scripts/services/up.sh");
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
        ch.queue_purge(queue.into(), QueuePurgeOptions::default())
            .await
            .expect("queue.purge");
    }

    /// Publishes one persistent message; retries (reconnecting) until the broker confirms
    /// it or the deadline passes.
    pub async fn publish(&mut self, queue: &str, body: &[u8]) {
        self.publish_with(
            queue,
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await;
    }

    /// Publishes one message with `properties`, as [`Self::publish`].
    pub async fn publish_with(&mut self, queue: &str, body: &[u8], properties: BasicProperties) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            match self.try_publish(queue, body, properties.clone()).await {
                Ok(()) => return,
                Err(error) => {
                    self.channel = None;
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "RabbitMQ did not accept a message: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    async fn try_publish(
        &mut self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), String> {
        let ch = self.channel().await.map_err(|e| e.to_string())?;
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        if confirm.is_ack() {
            Ok(())
        } else {
            Err("nack".into())
        }
    }

    /// Takes one message from `queue`: its body and its headers as strings.
    pub async fn get(&mut self, queue: &str) -> Option<(Vec<u8>, Vec<(String, String)>)> {
        let got = self.get_raw(queue).await?;
        let headers = got
            .delivery
            .properties
            .headers()
            .as_ref()
            .map(|h| {
                h.inner()
                    .iter()
                    .map(|(k, v)| {
                        let v = match v {
                            AMQPValue::LongString(s) => {
                                String::from_utf8_lossy(s.as_bytes()).into_owned()
                            }
                            other => format!("{other:?}"),
                        };
                        (k.as_str().to_owned(), v)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some((got.delivery.data.clone(), headers))
    }

    /// Takes one message from `queue` as lapin reads it.
    pub async fn get_raw(&mut self, queue: &str) -> Option<lapin::message::BasicGetMessage> {
        let ch = self.channel().await.expect("RabbitMQ reachable");
        ch.basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
    }
}

impl Default for AmqpPublisher {
    fn default() -> Self {
        Self::new()
    }
}
