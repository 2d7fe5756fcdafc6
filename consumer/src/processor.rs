//! From a queue message's bytes to a verdict: what the source must do with it.

use std::sync::Arc;

use hermes_shared::metrics::Metrics;
use hermes_shared::router::Router;
use hermes_shared::wire::{PublishMessage, RouteOutcome};

/// What the source does with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every target gateway answered (or its connections were proven gone): acknowledge.
    Delivered(RouteOutcome),
    /// A transient failure: deliver again later (the message id makes it idempotent).
    Retry { reason: String },
    /// The message can never be delivered: dead-letter it at once with the reason.
    Poison { reason: String },
}

impl Verdict {
    /// A metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Delivered(_) => "delivered",
            Verdict::Retry { .. } => "retried",
            Verdict::Poison { .. } => "dead_lettered",
        }
    }
}

/// Validates and routes queue messages.
pub struct Processor {
    router: Router,
    metrics: Arc<Metrics>,
}

/// Reasons a message is dead-lettered (metric labels of `hermes_dead_letters_total`).
pub mod reason {
    pub const INVALID: &str = "invalid_message";
    pub const EXHAUSTED: &str = "attempts_exhausted";
}

impl Processor {
    pub fn new(router: Router, metrics: Arc<Metrics>) -> Self {
        Self { router, metrics }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Routes one message. `fallback_id` (the broker's message id) is used as the
    /// de-duplication id when the body carries none, so a redelivery is not pushed twice;
    /// `sent_at` (the broker's send time, ms since the epoch) stands in for a missing
    /// `published_at`, the start of the end-to-end latency the gateways measure.
    /// Returns the verdict and the id the message was routed under.
    pub async fn process(
        &self,
        body: &[u8],
        fallback_id: Option<&str>,
        sent_at: Option<u64>,
    ) -> (Verdict, Option<String>) {
        let mut message = match PublishMessage::parse(body) {
            Ok(m) => m,
            Err(e) => {
                return (
                    Verdict::Poison {
                        reason: e.to_string(),
                    },
                    None,
                );
            }
        };
        if message.id.is_none() {
            message.id = fallback_id.map(str::to_owned);
        }
        if message.published_at.is_none() {
            message.published_at = sent_at;
        }
        if message.id.is_none() {
            message.id = Some(hermes_shared::ids::new_message_id());
        }
        let id = message.id.clone();
        let verdict = match self.router.publish(&message).await {
            Ok(outcome) if outcome.failed.is_empty() => Verdict::Delivered(outcome),
            Ok(outcome) => Verdict::Retry {
                reason: format!("gateways did not answer: {}", outcome.failed.join(", ")),
            },
            Err(e) if e.is_transient() => Verdict::Retry {
                reason: e.to_string(),
            },
            Err(e) => Verdict::Poison {
                reason: e.to_string(),
            },
        };
        (verdict, id)
    }

    /// Counts a message's final outcome for `source`.
    pub fn count(&self, source: &str, outcome: &str) {
        self.metrics
            .queue_messages
            .with_label_values(&[source, outcome])
            .inc();
    }

    /// Counts a dead letter.
    pub fn count_dead_letter(&self, reason: &str) {
        self.metrics.dead_letters.with_label_values(&[reason]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hermes_shared::registry::memory::MemoryRegistry;
    use hermes_shared::registry::{GatewayRecord, Registry};
    use hermes_shared::router::GatewayClient;
    use std::time::Duration;

    fn processor(registry: Arc<MemoryRegistry>) -> Processor {
        let metrics = Arc::new(Metrics::new());
        let client = GatewayClient::new(
            "secret-secret-secret",
            Duration::from_millis(300),
            metrics.clone(),
        )
        .expect("client");
        Processor::new(
            Router::new(registry, client, None, metrics.clone()),
            metrics,
        )
    }

    #[tokio::test]
    async fn invalid_messages_are_poison_with_a_reason() {
        let p = processor(Arc::new(MemoryRegistry::new()));
        let (v, _) = p.process(b"{\"user_id\":\"u\"}", None, None).await;
        assert!(matches!(v, Verdict::Poison { reason } if reason.contains("room_id")));
        let (v, _) = p.process(b"\xff\xfe", None, None).await;
        assert!(matches!(v, Verdict::Poison { .. }));
    }

    #[tokio::test]
    async fn a_room_nobody_holds_is_delivered_to_nobody() {
        let p = processor(Arc::new(MemoryRegistry::new()));
        let (v, id) = p
            .process(
                br#"{"user_id":"u","room_id":"r","data":1}"#,
                Some("mid-1"),
                None,
            )
            .await;
        assert!(matches!(v, Verdict::Delivered(o) if o.gateways == 0));
        assert_eq!(id.as_deref(), Some("mid-1"));
    }

    #[tokio::test]
    async fn an_unreachable_live_gateway_means_retry() {
        let registry = Arc::new(MemoryRegistry::new());
        registry
            .upsert_gateway(
                &GatewayRecord {
                    gateway_id: "g".into(),
                    internal_url: "http://127.0.0.1:9".into(),
                    started_at: 0,
                },
                Duration::from_secs(60),
            )
            .await
            .expect("upsert");
        registry
            .add_room_gateway("r", "g", Duration::from_secs(60))
            .await
            .expect("add");
        let p = processor(registry);
        let (v, _) = p
            .process(
                br#"{"user_id":"u","room_id":"r","data":1,"id":"m"}"#,
                None,
                None,
            )
            .await;
        assert!(matches!(v, Verdict::Retry { .. }), "{v:?}");
    }

    struct Recorder(parking_lot::Mutex<Vec<hermes_shared::wire::DeliverRequest>>);

    impl hermes_shared::router::LocalDelivery for Recorder {
        fn deliver(
            &self,
            request: &hermes_shared::wire::DeliverRequest,
        ) -> hermes_shared::wire::DeliverResponse {
            self.0.lock().push(request.clone());
            hermes_shared::wire::DeliverResponse::default()
        }
        fn connection_info(&self, _: &str) -> Option<hermes_shared::wire::ConnectionInfo> {
            None
        }
    }

    #[tokio::test]
    async fn a_missing_published_at_is_taken_from_the_broker_send_time() {
        let registry = Arc::new(MemoryRegistry::new());
        registry
            .add_room_gateway("r", "here", Duration::from_secs(60))
            .await
            .expect("add");
        let metrics = Arc::new(Metrics::new());
        let client = GatewayClient::new(
            "secret-secret-secret",
            Duration::from_millis(300),
            metrics.clone(),
        )
        .expect("client");
        let recorder = Arc::new(Recorder(parking_lot::Mutex::new(Vec::new())));
        let local = hermes_shared::router::LocalGateway {
            gateway_id: "here".into(),
            delivery: recorder.clone(),
        };
        let p = Processor::new(
            Router::new(registry, client, Some(local), metrics.clone()),
            metrics,
        );
        p.process(
            br#"{"user_id":"u","room_id":"r","data":1}"#,
            None,
            Some(1234),
        )
        .await;
        p.process(
            br#"{"user_id":"u","room_id":"r","data":1,"published_at":99}"#,
            None,
            Some(1234),
        )
        .await;
        let seen: Vec<Option<u64>> = recorder.0.lock().iter().map(|r| r.published_at).collect();
        assert_eq!(seen, vec![Some(1234), Some(99)]);
    }
}
