//! The SQS source (aws-sdk-sqs).
//!
//! - Client: the standard AWS environment (`AWS_REGION`, the credential chain,
//!   `AWS_ENDPOINT_URL_SQS` / `AWS_ENDPOINT_URL` for a local SQS-compatible server).
//! - Receiving: long polls (`WaitTimeSeconds` = `HERMES_SQS_WAIT_SECONDS`) of up to 10
//!   messages, with the `ApproximateReceiveCount` (and `MessageGroupId`) system attributes
//!   and all message attributes. At most `HERMES_CONSUMER_CONCURRENCY` messages are in
//!   flight: the next receive asks only for as many as there are free slots, so polling
//!   goes on while earlier batches are still being routed.
//! - Each message is routed with its SQS `MessageId` as the fallback de-duplication id
//!   (stable across redeliveries, so gateways drop a repeat).
//! - Settling, once every message of a batch has its verdict:
//!   - delivered → deleted (`DeleteMessageBatch`; entries the server reports as failed are
//!     logged and left: they come back after the visibility timeout);
//!   - transient failure → not deleted: `ChangeMessageVisibility` to the backoff delay of
//!     the attempt (`ApproximateReceiveCount`), so it comes back later; at
//!     `HERMES_MAX_ATTEMPTS` a copy goes to the dead-letter queue with
//!     `hermes-dead-reason` = `attempts_exhausted: <reason>` and `hermes-attempts`, then the
//!     original is deleted;
//!   - invalid → copied to the dead-letter queue with its reason at once, then deleted;
//!   - without `HERMES_SQS_DEAD_LETTER_QUEUE_URL`, invalid and exhausted messages are never
//!     deleted: they are logged and left to the queue's own redrive policy.
//! - Visibility: messages are received with `HERMES_SQS_VISIBILITY_TIMEOUT_SECONDS`; while a
//!   batch is still being routed or settled, its visibility is extended every half timeout.
//! - Failures of the SQS API itself are retried with exponential backoff (at most 30 s);
//!   `ready` is false while receiving fails.
//! - Shutdown: receiving stops (a pending long poll is abandoned: whatever it had taken
//!   comes back after the visibility timeout), in-flight messages are finished and settled.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
};
use futures_util::future::join_all;
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::policy::{self, Backoff, Decision};
use super::{DeadLettered, Delivery, Incoming, Sink, Source};
use crate::{Error, Result};

/// The metric label of this source.
const SOURCE: &str = "sqs";
/// Message attribute carrying the dead-letter reason.
pub const REASON_ATTRIBUTE: &str = "hermes-dead-reason";
/// Message attribute carrying the number of receives so far.
pub const ATTEMPTS_ATTRIBUTE: &str = "hermes-attempts";
/// SQS's limits.
const MAX_BATCH: usize = 10;
const MAX_MESSAGE_ATTRIBUTES: usize = 10;
const MAX_VISIBILITY_SECS: u64 = 43_200;

/// Settings of the SQS source.
#[derive(Debug, Clone)]
pub struct SqsSettings {
    pub queue_url: String,
    pub dead_letter_queue_url: Option<String>,
    pub wait: Duration,
    pub visibility: Duration,
}

/// Pulls messages from SQS.
pub struct SqsSource {
    client: Client,
    settings: Arc<SqsSettings>,
    delivery: Delivery,
}

fn broker(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Broker(format!("{context}: {e}"))
}

/// An SDK error in one line: the service's code and message when SQS answered, else the
/// error chain (connection, timeout, credentials). Credentials are never part of either.
fn sdk_error<E>(e: &SdkError<E>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match e {
        SdkError::ServiceError(service) => {
            let err = service.err();
            format!(
                "{}: {}",
                err.code().unwrap_or("unknown error"),
                err.message().unwrap_or("(no message)")
            )
        }
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    }
}

/// Whole seconds for an SQS visibility timeout: rounded up, within SQS's 0–12 h.
fn visibility_secs(d: Duration) -> i32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(secs.min(MAX_VISIBILITY_SECS)).unwrap_or(i32::MAX)
}

impl SqsSource {
    /// Builds the client from the standard `AWS_*` environment.
    pub async fn new(settings: SqsSettings, delivery: Delivery) -> Result<Self> {
        if settings.queue_url.trim().is_empty() {
            return Err(Error::Broker("the SQS queue URL is empty".into()));
        }
        if delivery.policy.delays.is_empty() {
            return Err(Error::Broker("no retry delays configured".into()));
        }
        let config = aws_config::defaults(BehaviorVersion::latest()).load().await;
        if config.region().is_none() {
            return Err(Error::Broker(
                "no AWS region: set AWS_REGION (or a region in the AWS profile)".into(),
            ));
        }
        Ok(Self {
            client: Client::new(&config),
            settings: Arc::new(settings),
            delivery,
        })
    }
}

#[async_trait::async_trait]
impl Source for SqsSource {
    fn name(&self) -> &'static str {
        SOURCE
    }

    /// Runs until `shutdown`; `ready` is true while messages are being received.
    async fn run(
        self: Box<Self>,
        sink: Arc<dyn Sink>,
        ready: Arc<AtomicBool>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let this = *self;
        let worker = Arc::new(Worker {
            client: this.client,
            settings: this.settings,
            delivery: this.delivery,
            sink,
            answered: AnsweredMemory::default(),
        });
        let s = &worker.settings;
        let concurrency = worker.delivery.concurrency;
        if worker.inspect_queue().await {
            ready.store(true, Ordering::Release);
        }
        tracing::info!(
            queue_url = %s.queue_url,
            dead_letter_queue_url = s.dead_letter_queue_url.as_deref().unwrap_or("(none)"),
            wait_s = s.wait.as_secs(),
            visibility_s = s.visibility.as_secs(),
            concurrency,
            "consuming from SQS"
        );

        let slots = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut batches = JoinSet::new();
        let mut backoff = Backoff::new();
        loop {
            // Reap finished batches (their panics are logged, never fatal).
            while let Some(done) = batches.try_join_next() {
                log_join(done);
            }
            // Wait for a free slot, then ask for as many messages as there are free slots.
            let first = tokio::select! {
                () = shutdown.cancelled() => break,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let mut permits = first;
            while permits.num_permits() < MAX_BATCH {
                match slots.clone().try_acquire_owned() {
                    Ok(more) => permits.merge(more),
                    Err(_) => break,
                }
            }
            let wanted = permits.num_permits();
            let received = tokio::select! {
                () = shutdown.cancelled() => break,
                r = worker.receive(wanted) => r,
            };
            match received {
                Ok(messages) => {
                    ready.store(true, Ordering::Release);
                    backoff.reset();
                    if messages.is_empty() {
                        continue;
                    }
                    // Give back the slots this batch does not use.
                    if messages.len() < wanted {
                        drop(permits.split(wanted - messages.len()));
                    }
                    let worker = worker.clone();
                    batches.spawn(async move {
                        worker.handle_batch(messages).await;
                        drop(permits);
                    });
                }
                Err(error) => {
                    ready.store(false, Ordering::Release);
                    drop(permits);
                    let wait = backoff.failed();
                    tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "receiving from SQS failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        ready.store(false, Ordering::Release);
        if !batches.is_empty() {
            tracing::info!(
                batches = batches.len(),
                "stopped receiving; finishing in-flight messages"
            );
        }
        while let Some(done) = batches.join_next().await {
            log_join(done);
        }
        tracing::info!("SQS source stopped");
        Ok(())
    }
}

fn log_join(done: std::result::Result<(), tokio::task::JoinError>) {
    if let Err(error) = done {
        tracing::error!(%error, "an SQS batch task failed; its messages come back after the visibility timeout");
    }
}

struct Worker {
    client: Client,
    settings: Arc<SqsSettings>,
    delivery: Delivery,
    sink: Arc<dyn Sink>,
    /// The gateways earlier attempts at a message reached, by SQS message id, while the
    /// message waits for its retry. SQS cannot change a message's attributes when it makes
    /// it visible again, so this consumer remembers them; a retry that another consumer
    /// receives goes to every holder again, and the gateways' de-duplication drops the
    /// repeat.
    answered: AnsweredMemory,
}

/// Gateways that answered a message, kept for the messages waiting for a retry: at most
/// [`AnsweredMemory::MAX`] messages, each for [`AnsweredMemory::KEEP`].
#[derive(Default)]
struct AnsweredMemory(parking_lot::Mutex<HashMap<String, (std::time::Instant, Vec<String>)>>);

impl AnsweredMemory {
    const MAX: usize = 100_000;
    /// Longer than the longest retry delay of the default policy (30 s) with room to spare.
    const KEEP: Duration = Duration::from_secs(15 * 60);

    fn get(&self, message_id: &str) -> Vec<String> {
        self.0
            .lock()
            .get(message_id)
            .map(|(_, ids)| ids.clone())
            .unwrap_or_default()
    }

    /// Remembers `ids` for a message that will be retried; forgets it when `ids` is `None`.
    fn set(&self, message_id: &str, ids: Option<Vec<String>>) {
        let mut map = self.0.lock();
        let Some(ids) = ids.filter(|ids| !ids.is_empty()) else {
            map.remove(message_id);
            return;
        };
        if map.len() >= Self::MAX {
            let now = std::time::Instant::now();
            map.retain(|_, (at, _)| now.duration_since(*at) < Self::KEEP);
            if map.len() >= Self::MAX {
                map.clear();
            }
        }
        map.insert(message_id.to_owned(), (std::time::Instant::now(), ids));
    }
}

/// A received message, reduced to what settling it needs.
struct Received {
    /// Id of the entry in batch requests (unique within the batch).
    entry_id: String,
    receipt: String,
    message_id: String,
    body: String,
    /// `ApproximateReceiveCount`: this delivery's attempt number (1 on the first).
    attempt: u32,
    group_id: Option<String>,
    /// `SentTimestamp`: when the producer sent it, ms since the epoch.
    sent_at: Option<u64>,
    attributes: HashMap<String, MessageAttributeValue>,
}

impl Received {
    fn from_message(index: usize, m: Message) -> Option<Self> {
        let Some(receipt) = m.receipt_handle else {
            tracing::error!(
                message_id = m.message_id.as_deref().unwrap_or("?"),
                "SQS returned a message without a receipt handle; it cannot be settled"
            );
            return None;
        };
        let system = m.attributes.unwrap_or_default();
        let attempt = system
            .get(&MessageSystemAttributeName::ApproximateReceiveCount)
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(1)
            .max(1);
        let sent_at = system
            .get(&MessageSystemAttributeName::SentTimestamp)
            .and_then(|v| v.trim().parse::<u64>().ok());
        Some(Self {
            entry_id: format!("m{index}"),
            receipt,
            message_id: m.message_id.unwrap_or_default(),
            body: m.body.unwrap_or_default(),
            attempt,
            sent_at,
            group_id: system
                .get(&MessageSystemAttributeName::MessageGroupId)
                .cloned(),
            attributes: m.message_attributes.unwrap_or_default(),
        })
    }
}

/// What settling one message decided.
enum Settled {
    /// Delete it; count `outcome` once deleted.
    Delete { outcome: &'static str },
    /// Leave it on the queue, visible again after `delay` (a retry, or the redrive policy's
    /// turn); released together with the batch's others.
    Release { delay: Duration },
}

impl Worker {
    /// Reads the queue's attributes once at start: proves the queue is reachable and warns
    /// about a missing dead-letter path. Returns whether the call succeeded.
    async fn inspect_queue(&self) -> bool {
        let s = &self.settings;
        let answer = self
            .client
            .get_queue_attributes()
            .queue_url(&s.queue_url)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .attribute_names(QueueAttributeName::VisibilityTimeout)
            .send()
            .await;
        let attributes = match answer {
            Ok(out) => out.attributes.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %sdk_error(&e), queue_url = %s.queue_url, "cannot read the SQS queue's attributes");
                return false;
            }
        };
        let redrive = attributes.get(&QueueAttributeName::RedrivePolicy);
        let max_receive = redrive
            .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
            .and_then(|p| match &p["maxReceiveCount"] {
                serde_json::Value::Number(n) => n.as_u64(),
                serde_json::Value::String(v) => v.parse().ok(),
                _ => None,
            });
        match (&s.dead_letter_queue_url, max_receive) {
            (None, None) => tracing::warn!(
                "no dead-letter queue configured and the queue has no redrive policy: invalid \
                 messages and exhausted retries stay on the queue and are received again and again"
            ),
            (None, Some(n)) => tracing::info!(
                max_receive_count = n,
                "no dead-letter queue configured: the queue's redrive policy dead-letters \
                 (without a reason attribute)"
            ),
            (Some(_), Some(n)) if n <= u64::from(self.delivery.policy.max_attempts) => {
                tracing::warn!(
                    max_receive_count = n,
                    max_attempts = self.delivery.policy.max_attempts,
                    "the queue's redrive policy moves messages before the consumer's last attempt: \
                 set maxReceiveCount above HERMES_MAX_ATTEMPTS"
                )
            }
            _ => {}
        }
        true
    }

    /// One long poll for up to `max` messages.
    async fn receive(&self, max: usize) -> Result<Vec<Message>> {
        let s = &self.settings;
        let max = i32::try_from(max.clamp(1, MAX_BATCH)).unwrap_or(1);
        let call = self
            .client
            .receive_message()
            .queue_url(&s.queue_url)
            .max_number_of_messages(max)
            .wait_time_seconds(i32::try_from(s.wait.as_secs().min(20)).unwrap_or(20))
            .visibility_timeout(visibility_secs(s.visibility))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_attribute_names("All")
            .send();
        // The SDK has no overall timeout by default: bound the long poll.
        let limit = s.wait + Duration::from_secs(30);
        match tokio::time::timeout(limit, call).await {
            Ok(Ok(out)) => Ok(out.messages.unwrap_or_default()),
            Ok(Err(e)) => Err(broker(
                &format!("ReceiveMessage on {}", s.queue_url),
                sdk_error(&e),
            )),
            Err(_) => Err(Error::Broker(format!(
                "ReceiveMessage on {} took more than {} s",
                s.queue_url,
                limit.as_secs()
            ))),
        }
    }

    /// Routes a received batch, keeping it invisible meanwhile, then settles every message.
    async fn handle_batch(&self, messages: Vec<Message>) {
        let received: Vec<Received> = messages
            .into_iter()
            .enumerate()
            .filter_map(|(i, m)| Received::from_message(i, m))
            .collect();
        // Messages whose visibility the extender keeps pushing back: entry id → receipt.
        let pending: Mutex<HashMap<String, String>> = Mutex::new(
            received
                .iter()
                .map(|m| (m.entry_id.clone(), m.receipt.clone()))
                .collect(),
        );
        let work = async {
            let decisions = join_all(received.iter().map(|m| async move {
                // An empty fallback id would make such messages duplicates of each other.
                let id = Some(m.message_id.as_str()).filter(|id| !id.is_empty());
                let answered = id.map(|id| self.answered.get(id)).unwrap_or_default();
                let routed = self
                    .sink
                    .route(Incoming {
                        body: m.body.as_bytes(),
                        fallback_id: id,
                        sent_at: m.sent_at,
                        answered: &answered,
                    })
                    .await;
                let decision = self.delivery.policy.decide(routed.outcome, m.attempt);
                if let Some(id) = id {
                    let retried = matches!(decision, Decision::Retry { .. });
                    self.answered.set(id, retried.then_some(routed.answered));
                }
                decision
            }))
            .await;
            let settled = join_all(
                received
                    .iter()
                    .zip(decisions)
                    .map(|(m, d)| self.settle(m, d)),
            )
            .await;
            let mut to_delete: Vec<(&Received, &'static str)> = Vec::new();
            let mut to_release: Vec<(&Received, Duration)> = Vec::new();
            for (m, settled) in received.iter().zip(settled) {
                match settled {
                    Settled::Delete { outcome } => to_delete.push((m, outcome)),
                    Settled::Release { delay } => to_release.push((m, delay)),
                }
            }
            tokio::join!(self.delete(&to_delete), self.release(&to_release, &pending));
        };
        tokio::pin!(work);
        tokio::select! {
            () = &mut work => {}
            () = self.extend_visibility(&pending) => work.await,
        }
    }

    /// Every half visibility timeout, pushes back the visibility of the pending messages.
    /// Never returns on its own.
    async fn extend_visibility(&self, pending: &Mutex<HashMap<String, String>>) {
        let visibility = self.settings.visibility;
        let half = (visibility / 2).max(Duration::from_millis(500));
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + half, half);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            // Held during the request, so a message released meanwhile (given its retry
            // delay) is not pushed back again after that.
            let pending = pending.lock().await;
            if pending.is_empty() {
                continue;
            }
            let entries: Vec<ChangeMessageVisibilityBatchRequestEntry> = pending
                .iter()
                .filter_map(|(id, receipt)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(id)
                        .receipt_handle(receipt)
                        .visibility_timeout(visibility_secs(visibility))
                        .build()
                        .ok()
                })
                .collect();
            let answer = self
                .client
                .change_message_visibility_batch()
                .queue_url(&self.settings.queue_url)
                .set_entries(Some(entries))
                .send()
                .await;
            match answer {
                Ok(out) => {
                    for failed in out.failed() {
                        tracing::warn!(
                            code = failed.code(),
                            message = failed.message().unwrap_or(""),
                            "cannot extend the visibility of a slow message"
                        );
                    }
                    tracing::debug!(
                        messages = out.successful().len(),
                        "extended the visibility of slow messages"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %sdk_error(&e), "cannot extend the visibility of slow messages")
                }
            }
        }
    }

    /// Performs what a decision asks, except the deletion and the release (batched by the
    /// caller).
    async fn settle(&self, m: &Received, decision: Decision) -> Settled {
        let s = &self.settings;
        let sink = &self.sink;
        match decision {
            Decision::Ack => Settled::Delete {
                outcome: "delivered",
            },
            Decision::Retry { delay, reason, .. } => {
                tracing::info!(
                    message_id = %m.message_id,
                    %reason,
                    attempt = m.attempt,
                    retry_in_ms = delay.as_millis() as u64,
                    "retrying a message later"
                );
                sink.count(SOURCE, "retried");
                Settled::Release { delay }
            }
            Decision::DeadLetter { label, reason, .. } => {
                if s.dead_letter_queue_url.is_none() {
                    tracing::error!(
                        message_id = %m.message_id,
                        %reason,
                        attempt = m.attempt,
                        "{} and no dead-letter queue configured \
                         (HERMES_SQS_DEAD_LETTER_QUEUE_URL): leaving it to the queue's redrive policy",
                        policy::describe(label)
                    );
                    sink.count(SOURCE, "left_to_redrive");
                    return Settled::Release {
                        delay: self.delivery.policy.delay(m.attempt),
                    };
                }
                self.move_to_dead_letter(m, &reason, label).await
            }
        }
    }

    /// Sends a copy to the dead-letter queue; the original is deleted only if that worked.
    async fn move_to_dead_letter(&self, m: &Received, why: &str, label: &str) -> Settled {
        match self.send_dead_letter(m, why).await {
            Ok(()) => {
                self.sink.dead_lettered(DeadLettered {
                    label,
                    reason: why,
                    attempts: m.attempt,
                    message_id: Some(&m.message_id),
                });
                Settled::Delete {
                    outcome: "dead_lettered",
                }
            }
            Err(error) => {
                tracing::warn!(
                    message_id = %m.message_id,
                    %error,
                    "cannot send a message to the dead-letter queue; it comes back later"
                );
                self.sink.count(SOURCE, "dead_letter_failed");
                Settled::Release {
                    delay: self.delivery.policy.delay(m.attempt),
                }
            }
        }
    }

    async fn send_dead_letter(&self, m: &Received, why: &str) -> Result<()> {
        let Some(dlq) = self.settings.dead_letter_queue_url.as_deref() else {
            return Err(Error::Broker("no dead-letter queue configured".into()));
        };
        let attributes = dead_letter_attributes(&m.attributes, why, m.attempt)?;
        let mut request = self
            .client
            .send_message()
            .queue_url(dlq)
            .message_body(&m.body)
            .set_message_attributes(Some(attributes));
        if dlq.ends_with(".fifo") {
            request = request
                .message_group_id(m.group_id.as_deref().unwrap_or("hermes-dead-letter"))
                .message_deduplication_id(&m.message_id);
        }
        request
            .send()
            .await
            .map(|_| ())
            .map_err(|e| broker(&format!("SendMessage to {dlq}"), sdk_error(&e)))
    }

    /// Stops extending the visibility of messages left on the queue and makes each visible
    /// again after its delay, in one `ChangeMessageVisibilityBatch` (a batch's retries are
    /// one request to the queue, not one each).
    async fn release(
        &self,
        released: &[(&Received, Duration)],
        pending: &Mutex<HashMap<String, String>>,
    ) {
        if released.is_empty() {
            return;
        }
        {
            let mut pending = pending.lock().await;
            for (m, _) in released {
                pending.remove(&m.entry_id);
            }
        }
        let entries: Vec<ChangeMessageVisibilityBatchRequestEntry> = released
            .iter()
            .filter_map(|(m, delay)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(&m.entry_id)
                    .receipt_handle(&m.receipt)
                    .visibility_timeout(visibility_secs(*delay))
                    .build()
                    .ok()
            })
            .collect();
        let answer = self
            .client
            .change_message_visibility_batch()
            .queue_url(&self.settings.queue_url)
            .set_entries(Some(entries))
            .send()
            .await;
        let failed = match &answer {
            Ok(out) => out.failed(),
            Err(e) => {
                tracing::warn!(
                    error = %sdk_error(e),
                    messages = released.len(),
                    "cannot set the retry delay; the messages come back after their visibility timeout"
                );
                return;
            }
        };
        for (m, _) in released {
            if let Some(f) = failed.iter().find(|f| f.id() == m.entry_id) {
                tracing::warn!(
                    message_id = %m.message_id,
                    code = f.code(),
                    message = f.message().unwrap_or(""),
                    "cannot set the retry delay; the message comes back after its visibility timeout"
                );
            }
        }
    }

    /// Deletes settled messages in one `DeleteMessageBatch`, counting each one's outcome.
    async fn delete(&self, settled: &[(&Received, &'static str)]) {
        if settled.is_empty() {
            return;
        }
        let p = &self.sink;
        let entries: Vec<DeleteMessageBatchRequestEntry> = settled
            .iter()
            .filter_map(|(m, _)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(&m.entry_id)
                    .receipt_handle(&m.receipt)
                    .build()
                    .ok()
            })
            .collect();
        let answer = self
            .client
            .delete_message_batch()
            .queue_url(&self.settings.queue_url)
            .set_entries(Some(entries))
            .send()
            .await;
        let out = match answer {
            Ok(out) => out,
            Err(e) => {
                tracing::warn!(
                    error = %sdk_error(&e),
                    messages = settled.len(),
                    "DeleteMessageBatch failed; the messages come back after the visibility timeout"
                );
                for _ in settled {
                    p.count(SOURCE, "delete_failed");
                }
                return;
            }
        };
        for (m, outcome) in settled {
            match out.failed().iter().find(|f| f.id() == m.entry_id) {
                Some(failed) => {
                    tracing::warn!(
                        message_id = %m.message_id,
                        code = failed.code(),
                        message = failed.message().unwrap_or(""),
                        "cannot delete a settled message; it comes back after the visibility timeout"
                    );
                    p.count(SOURCE, "delete_failed");
                }
                None => p.count(SOURCE, outcome),
            }
        }
    }
}

/// The dead-letter copy's message attributes: the reason (clipped by the policy) and the
/// attempts, then as many of the original's as SQS's limit of 10 allows (ours replace any of
/// the same name).
fn dead_letter_attributes(
    original: &HashMap<String, MessageAttributeValue>,
    why: &str,
    attempt: u32,
) -> Result<HashMap<String, MessageAttributeValue>> {
    let mut attributes = HashMap::new();
    attributes.insert(
        REASON_ATTRIBUTE.to_owned(),
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(why)
            .build()
            .map_err(|e| broker("dead-letter reason attribute", e))?,
    );
    attributes.insert(
        ATTEMPTS_ATTRIBUTE.to_owned(),
        MessageAttributeValue::builder()
            .data_type("Number")
            .string_value(attempt.to_string())
            .build()
            .map_err(|e| broker("dead-letter attempts attribute", e))?,
    );
    let mut names: Vec<&String> = original
        .keys()
        .filter(|k| !attributes.contains_key(k.as_str()))
        .collect();
    names.sort();
    let mut dropped = 0usize;
    for name in names {
        if attributes.len() >= MAX_MESSAGE_ATTRIBUTES {
            dropped += 1;
            continue;
        }
        if let Some(value) = original.get(name) {
            attributes.insert(name.clone(), value.clone());
        }
    }
    if dropped > 0 {
        tracing::warn!(
            dropped,
            "the dead-letter copy keeps only 10 message attributes (an SQS limit)"
        );
    }
    Ok(attributes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_is_rounded_up_to_whole_seconds_within_sqs_limits() {
        assert_eq!(visibility_secs(Duration::ZERO), 0);
        assert_eq!(visibility_secs(Duration::from_millis(1)), 1);
        assert_eq!(visibility_secs(Duration::from_millis(1500)), 2);
        assert_eq!(visibility_secs(Duration::from_secs(30)), 30);
        assert_eq!(visibility_secs(Duration::from_secs(100_000)), 43_200);
    }

    fn text(v: &str) -> MessageAttributeValue {
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(v)
            .build()
            .expect("attribute")
    }

    #[test]
    fn dead_letter_copies_carry_the_reason_and_keep_within_ten_attributes() {
        let mut original = HashMap::new();
        for i in 0..12 {
            original.insert(format!("a{i:02}"), text("x"));
        }
        original.insert(REASON_ATTRIBUTE.to_owned(), text("old"));
        let a = dead_letter_attributes(&original, "invalid: why", 3).expect("attributes");
        assert_eq!(a.len(), MAX_MESSAGE_ATTRIBUTES);
        assert_eq!(a[REASON_ATTRIBUTE].string_value(), Some("invalid: why"));
        assert_eq!(a[ATTEMPTS_ATTRIBUTE].data_type(), "Number");
        assert_eq!(a[ATTEMPTS_ATTRIBUTE].string_value(), Some("3"));
        assert!(a.contains_key("a00") && a.contains_key("a07") && !a.contains_key("a08"));
    }

    #[test]
    fn the_receive_count_is_the_attempt() {
        let m = Message::builder()
            .message_id("id-1")
            .receipt_handle("rh")
            .body("{}")
            .attributes(MessageSystemAttributeName::ApproximateReceiveCount, "4")
            .build();
        let r = Received::from_message(2, m).expect("settleable");
        assert_eq!((r.attempt, r.entry_id.as_str()), (4, "m2"));
        let m = Message::builder().message_id("id-2").body("{}").build();
        assert!(Received::from_message(0, m).is_none());
        let m = Message::builder().receipt_handle("rh").build();
        assert_eq!(Received::from_message(0, m).map(|r| r.attempt), Some(1));
    }
}
