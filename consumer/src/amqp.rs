//! The RabbitMQ source (lapin).
//!
//! Topology, declared at start (idempotently):
//! - the queue (`HERMES_AMQP_QUEUE`, durable; an existing queue is used as it is);
//! - `<queue>.retry.<ms>ms` per retry delay: durable, `x-message-ttl` = the delay, dead-lettered
//!   back to the queue through the default exchange. A transient failure republishes the
//!   message there (publisher-confirmed) with `x-hermes-attempts` incremented, then acks
//!   the original: backoff without a hot requeue loop, and nothing acked before it is
//!   safely elsewhere;
//! - `<queue>.dead-letter`: durable; invalid messages and exhausted retries are published
//!   there with `x-hermes-dead-reason` and `x-hermes-attempts` headers.
//!
//! A broken connection is re-established with exponential backoff; unacknowledged
//! messages are redelivered by the broker, and gateways drop repeated message ids.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::TryStreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

use crate::processor::{Processor, Verdict, reason};
use crate::{Error, Result};

/// The metric label of this source.
const SOURCE: &str = "amqp";
/// Header counting failed deliveries so far.
pub const ATTEMPTS_HEADER: &str = "x-hermes-attempts";
/// Header carrying the id a message was first routed under.
pub const ID_HEADER: &str = "x-hermes-id";
/// Header carrying the dead-letter reason.
pub const REASON_HEADER: &str = "x-hermes-dead-reason";

/// Settings of the RabbitMQ source.
#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// Contains credentials: never logged.
    pub url: String,
    pub queue: String,
    pub prefetch: u16,
    pub max_attempts: u32,
    pub retry_delays: Vec<Duration>,
    pub concurrency: usize,
}

impl AmqpSettings {
    /// The dead-letter queue's name.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead-letter", self.queue)
    }

    /// The retry queue for a delay.
    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}.retry.{}ms", self.queue, delay.as_millis())
    }
}

/// Consumes a RabbitMQ queue.
pub struct AmqpSource {
    settings: Arc<AmqpSettings>,
}

fn broker(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Broker(format!("{context}: {e}"))
}

impl AmqpSource {
    pub fn new(settings: AmqpSettings) -> Self {
        Self {
            settings: Arc::new(settings),
        }
    }

    /// Runs until `shutdown`, reconnecting with backoff. `ready` is true while consuming.
    pub async fn run(
        self,
        processor: Arc<Processor>,
        ready: Arc<AtomicBool>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let mut delay = Duration::from_millis(250);
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let consumed = self.session(&processor, &ready, &shutdown).await;
            ready.store(false, Ordering::Release);
            match consumed {
                Ok(true) => return Ok(()),
                Ok(false) => delay = Duration::from_millis(250),
                Err(error) => {
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "RabbitMQ session ended; reconnecting");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(jitter(delay)) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }

    /// One connection's life. `Ok(true)`: stopped for shutdown; `Ok(false)`: the broker
    /// ended the consumer; `Err`: the connection or channel failed.
    async fn session(
        &self,
        processor: &Arc<Processor>,
        ready: &AtomicBool,
        shutdown: &CancellationToken,
    ) -> Result<bool> {
        let s = &self.settings;
        let connection = Connection::connect(&s.url, ConnectionProperties::default())
            .await
            .map_err(|e| broker("cannot connect to RabbitMQ", e))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| broker("cannot open a channel", e))?;
        declare_topology(&connection, &channel, s).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| broker("confirm.select", e))?;
        channel
            .basic_qos(s.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| broker("basic.qos", e))?;
        let consumer = channel
            .basic_consume(
                s.queue.as_str().into(),
                ShortString::from(format!("hermes-consumer-{}", std::process::id())),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| broker("basic.consume", e))?;
        let tag = consumer.tag();
        ready.store(true, Ordering::Release);
        tracing::info!(queue = %s.queue, prefetch = s.prefetch, "consuming from RabbitMQ");

        // On shutdown, cancel the consumer: the stream ends once in-flight messages are done.
        let canceller = {
            let channel = channel.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                if let Err(error) = channel
                    .basic_cancel(tag, BasicCancelOptions::default())
                    .await
                {
                    tracing::warn!(%error, "basic.cancel failed");
                }
            })
        };
        let settings = self.settings.clone();
        let result = consumer
            .map_err(|e| broker("the consumer failed", e))
            .try_for_each_concurrent(s.concurrency, |delivery| {
                let channel = channel.clone();
                let settings = settings.clone();
                let processor = processor.clone();
                async move {
                    handle(&channel, &settings, &processor, delivery).await;
                    Ok(())
                }
            })
            .await;
        canceller.abort();
        let stopped = shutdown.is_cancelled();
        let _ = channel.close(200, "bye".into()).await;
        let _ = connection.close(200, "bye".into()).await;
        result.map(|()| stopped)
    }
}

/// Declares the queue (if absent), its retry queues and its dead-letter queue.
async fn declare_topology(
    connection: &Connection,
    channel: &Channel,
    s: &AmqpSettings,
) -> Result<()> {
    // A passive declare that fails closes its channel: probe on a throwaway one, so an
    // existing queue declared with other arguments is used as it is.
    let probe = connection
        .create_channel()
        .await
        .map_err(|e| broker("cannot open a channel", e))?;
    let exists = probe
        .queue_declare(
            s.queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok();
    if exists {
        let _ = probe.close(200, "probe".into()).await;
    } else {
        channel
            .queue_declare(
                s.queue.as_str().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| broker(&format!("cannot declare queue {}", s.queue), e))?;
    }
    channel
        .queue_declare(
            s.dead_letter_queue().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| broker("cannot declare the dead-letter queue", e))?;
    for delay in &s.retry_delays {
        let mut args = FieldTable::default();
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(delay.as_millis() as i64),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from("")),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(LongString::from(s.queue.as_str())),
        );
        channel
            .queue_declare(
                s.retry_queue(*delay).into(),
                QueueDeclareOptions::durable(),
                args,
            )
            .await
            .map_err(|e| broker("cannot declare a retry queue", e))?;
    }
    Ok(())
}

/// Routes one delivery and settles it: ack, retry later, or dead-letter.
async fn handle(
    channel: &Channel,
    s: &AmqpSettings,
    processor: &Processor,
    delivery: lapin::message::Delivery,
) {
    let headers = delivery.properties.headers().clone().unwrap_or_default();
    let failed_before = header_u32(&headers, ATTEMPTS_HEADER).unwrap_or(0);
    let fallback_id = header_string(&headers, ID_HEADER).or_else(|| {
        delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_owned())
    });
    let (verdict, id) = processor
        .process(&delivery.data, fallback_id.as_deref(), None)
        .await;

    let settled = match &verdict {
        Verdict::Delivered(_) => Ok(()),
        Verdict::Poison { reason: why } => {
            tracing::warn!(reason = %why, "dead-lettering an invalid message");
            processor.count_dead_letter(reason::INVALID);
            republish(
                channel,
                &s.dead_letter_queue(),
                &delivery,
                failed_before,
                id.as_deref(),
                Some(why),
            )
            .await
        }
        Verdict::Retry { reason: why } => {
            let attempts = failed_before + 1;
            if attempts >= s.max_attempts {
                tracing::warn!(reason = %why, attempts, "dead-lettering a message after its last attempt");
                processor.count_dead_letter(reason::EXHAUSTED);
                let why = format!("{}: {why}", reason::EXHAUSTED);
                republish(
                    channel,
                    &s.dead_letter_queue(),
                    &delivery,
                    attempts,
                    id.as_deref(),
                    Some(&why),
                )
                .await
            } else {
                let index = usize::try_from(failed_before)
                    .unwrap_or(usize::MAX)
                    .min(s.retry_delays.len() - 1);
                let delay = s.retry_delays[index];
                tracing::info!(reason = %why, attempts, retry_in_ms = delay.as_millis() as u64, "retrying a message later");
                republish(
                    channel,
                    &s.retry_queue(delay),
                    &delivery,
                    attempts,
                    id.as_deref(),
                    None,
                )
                .await
            }
        }
    };
    match settled {
        Ok(()) => {
            processor.count(SOURCE, verdict.label());
            if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
                // The connection is gone: the broker redelivers, gateways drop the repeat.
                tracing::warn!(%error, "ack failed");
            }
        }
        Err(error) => {
            tracing::warn!(%error, "could not move a message aside; returning it to the queue");
            processor.count(SOURCE, "requeued");
            let _ = delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await;
        }
    }
}

/// Publishes a copy of the delivery to `queue` (default exchange), waiting for the
/// broker's confirm.
async fn republish(
    channel: &Channel,
    queue: &str,
    delivery: &lapin::message::Delivery,
    attempts: u32,
    id: Option<&str>,
    dead_reason: Option<&str>,
) -> Result<()> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        ATTEMPTS_HEADER.into(),
        AMQPValue::LongLongInt(i64::from(attempts)),
    );
    if let Some(id) = id {
        headers.insert(
            ID_HEADER.into(),
            AMQPValue::LongString(LongString::from(id)),
        );
    }
    if let Some(why) = dead_reason {
        let why: String = why.chars().take(1000).collect();
        headers.insert(
            REASON_HEADER.into(),
            AMQPValue::LongString(LongString::from(why.as_str())),
        );
    }
    let properties = delivery
        .properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2);
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            &delivery.data,
            properties,
        )
        .await
        .map_err(|e| broker("publish", e))?
        .await
        .map_err(|e| broker("publisher confirm", e))?;
    if confirm.is_ack() {
        Ok(())
    } else {
        Err(Error::Broker(format!(
            "the broker refused a message for {queue}"
        )))
    }
}

fn header_u32(headers: &FieldTable, key: &str) -> Option<u32> {
    let value = headers.inner().get(key)?;
    let n: i64 = match value {
        AMQPValue::LongLongInt(v) => *v,
        AMQPValue::LongInt(v) => i64::from(*v),
        AMQPValue::LongUInt(v) => i64::from(*v),
        AMQPValue::ShortInt(v) => i64::from(*v),
        AMQPValue::ShortUInt(v) => i64::from(*v),
        AMQPValue::ShortShortInt(v) => i64::from(*v),
        AMQPValue::ShortShortUInt(v) => i64::from(*v),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok()?,
        _ => return None,
    };
    u32::try_from(n).ok()
}

fn header_string(headers: &FieldTable, key: &str) -> Option<String> {
    match headers.inner().get(key)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().map(str::to_owned),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// A random delay between half and all of `d` (spreads reconnects).
fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    half + half.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_headers_are_read_whatever_their_integer_type() {
        let mut h = FieldTable::default();
        h.insert(ATTEMPTS_HEADER.into(), AMQPValue::LongInt(3));
        assert_eq!(header_u32(&h, ATTEMPTS_HEADER), Some(3));
        h.insert(
            ATTEMPTS_HEADER.into(),
            AMQPValue::LongString(LongString::from("4")),
        );
        assert_eq!(header_u32(&h, ATTEMPTS_HEADER), Some(4));
        h.insert(ATTEMPTS_HEADER.into(), AMQPValue::LongLongInt(-1));
        assert_eq!(header_u32(&h, ATTEMPTS_HEADER), None);
        assert_eq!(header_u32(&FieldTable::default(), ATTEMPTS_HEADER), None);
    }

    #[test]
    fn queue_names_derive_from_the_main_queue() {
        let s = AmqpSettings {
            url: String::new(),
            queue: "hermes-messageQueue".into(),
            prefetch: 1,
            max_attempts: 3,
            retry_delays: vec![Duration::from_secs(1)],
            concurrency: 1,
        };
        assert_eq!(s.dead_letter_queue(), "hermes-messageQueue.dead-letter");
        assert_eq!(
            s.retry_queue(Duration::from_secs(1)),
            "hermes-messageQueue.retry.1000ms"
        );
    }
}
