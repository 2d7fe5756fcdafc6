//! Queue sources and the sink they hand messages to.
//!
//! - A [`Source`] takes messages from a broker ([`amqp`]: RabbitMQ, [`sqs`]: SQS), hands
//!   each to the [`Sink`] and settles it according to the [`Outcome`] it gets back, weighed
//!   by the shared [`policy::RetryPolicy`]: acknowledged, delivered again after a delay, or
//!   moved to the dead-letter queue with its reason. Nothing is acknowledged before its
//!   outcome is known.
//! - The [`Sink`] is the processor (`crate::processor::Processor`): validate and route.
//! - [`from_config`] builds the configured source.

pub mod acks;
pub mod amqp;
pub mod policy;
pub mod sqs;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::config::{ConsumerConfig, SourceConfig};
use tokio_util::sync::CancellationToken;

use crate::Result;
use policy::RetryPolicy;

/// One message, as a source hands it to the sink.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    pub body: &'a [u8],
    /// The broker's id of the message (AMQP `message_id` or the id its retry copies carry,
    /// SQS `MessageId`): the de-duplication id when the body carries none.
    pub fallback_id: Option<&'a str>,
    /// When the producer sent it, ms since the epoch, if the broker says.
    pub sent_at: Option<u64>,
    /// The gateways earlier attempts at this message reached (carried by the retry copy,
    /// or remembered by the source): not sent to again.
    pub answered: &'a [String],
}

/// The outcome of routing one message: what the sink asks the source to do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every target gateway answered (or its connections were proven gone): acknowledge.
    Ack,
    /// A transient failure: deliver again later (the message id makes it idempotent).
    Retry { reason: String },
    /// The message can never be delivered: dead-letter it at once with the reason, counted
    /// under `label` (one of [`policy::reason`]).
    DeadLetter { label: &'static str, reason: String },
}

/// What the sink answers for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub outcome: Outcome,
    /// The id the message was routed under (carried on retry copies so that a redelivery
    /// is de-duplicated), if it got that far.
    pub id: Option<String>,
    /// The gateways done with it, this attempt's and the earlier ones' (carried on a retry
    /// copy: the retry goes only to the others).
    pub answered: Vec<String>,
}

/// A message now on the dead-letter queue.
#[derive(Debug, Clone, Copy)]
pub struct DeadLettered<'a> {
    /// `hermes_dead_letters_total`'s reason label (see [`policy::describe`]).
    pub label: &'a str,
    /// Why, in words (also on the copy).
    pub reason: &'a str,
    pub attempts: u32,
    /// The message's id (SQS's message id, or the id Hermes routed it under), if known.
    pub message_id: Option<&'a str>,
}

/// Where sources hand their messages: routes one and says what became of it; counts what
/// the source then did.
#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    /// Routes one message.
    async fn route(&self, message: Incoming<'_>) -> Routed;
    /// Counts a message's final outcome (`hermes_queue_messages_total{source,outcome}`).
    fn count(&self, source: &str, outcome: &str);
    /// Logs and counts (`hermes_dead_letters_total{reason}`) a message the source has
    /// moved to its dead-letter queue: called once the copy is there, never before.
    fn dead_lettered(&self, dead: DeadLettered<'_>);
}

/// What every source is given besides its broker's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub policy: RetryPolicy,
    /// Messages routed at the same time.
    pub concurrency: usize,
}

/// A queue source: runs until `shutdown`, handing every message to `sink` and settling it;
/// `ready` is true while it takes messages. Broker failures are retried with
/// [`policy::Backoff`]; it returns an error only for what retrying cannot mend.
#[async_trait::async_trait]
pub trait Source: Send {
    /// The metric label of the source (`amqp`, `sqs`).
    fn name(&self) -> &'static str;

    async fn run(
        self: Box<Self>,
        sink: Arc<dyn Sink>,
        ready: Arc<AtomicBool>,
        shutdown: CancellationToken,
    ) -> Result<()>;
}

/// The source `config` names, with the retry policy and concurrency every source shares.
pub async fn from_config(config: &ConsumerConfig) -> Result<Box<dyn Source>> {
    let delivery = Delivery {
        policy: RetryPolicy {
            max_attempts: config.max_attempts,
            delays: config.retry_delays.clone(),
        },
        concurrency: config.concurrency,
    };
    Ok(match &config.source {
        SourceConfig::Amqp {
            url,
            queue,
            prefetch,
        } => Box::new(amqp::AmqpSource::new(
            amqp::AmqpSettings {
                url: url.clone(),
                queue: queue.clone(),
                prefetch: *prefetch,
            },
            delivery,
        )?),
        SourceConfig::Sqs {
            queue_url,
            dead_letter_queue_url,
            wait,
            visibility,
        } => Box::new(
            sqs::SqsSource::new(
                sqs::SqsSettings {
                    queue_url: queue_url.clone(),
                    dead_letter_queue_url: dead_letter_queue_url.clone(),
                    wait: *wait,
                    visibility: *visibility,
                },
                delivery,
            )
            .await?,
        ),
    })
}
