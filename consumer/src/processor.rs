//! From a queue message's bytes to its routing outcome: the [`Sink`] every source hands
//! its messages to.

use std::sync::Arc;

use hermes_shared::Error;
use hermes_shared::config::DEFAULT_MAX_MESSAGE_BYTES;
use hermes_shared::metrics::Metrics;
use hermes_shared::router::Router;
use hermes_shared::wire::{PublishMessage, RouteOutcome};

use crate::source::policy;
use crate::source::policy::reason;
use crate::source::{DeadLettered, Incoming, Outcome, Routed, Sink};

/// Validates and routes queue messages.
pub struct Processor {
    router: Router,
    metrics: Arc<Metrics>,
    max_message_bytes: usize,
}

impl Processor {
    pub fn new(router: Router, metrics: Arc<Metrics>) -> Self {
        Self {
            router,
            metrics,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }

    /// Dead-letters messages whose `data` is longer than `max` bytes of JSON text
    /// (`HERMES_MAX_MESSAGE_BYTES`; 128 KiB unless set).
    pub fn with_max_message_bytes(mut self, max: usize) -> Self {
        self.max_message_bytes = max;
        self
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

#[async_trait::async_trait]
impl Sink for Processor {
    /// Routes one message. The broker's id is used as the de-duplication id when the body
    /// carries none, so a redelivery is not pushed twice; the broker's send time stands in
    /// for a missing `published_at`, the start of the end-to-end latency the gateways
    /// measure.
    async fn route(&self, incoming: Incoming<'_>) -> Routed {
        let mut message = match PublishMessage::parse(incoming.body, self.max_message_bytes) {
            Ok(m) => m,
            Err(e) => {
                return Routed {
                    outcome: Outcome::DeadLetter {
                        label: dead_letter_label(&e),
                        reason: e.to_string(),
                    },
                    id: None,
                    answered: incoming.answered.to_vec(),
                };
            }
        };
        if message.id.is_none() {
            message.id = incoming.fallback_id.map(str::to_owned);
        }
        if message.published_at.is_none() {
            message.published_at = incoming.sent_at;
        }
        if message.id.is_none() {
            message.id = Some(hermes_shared::ids::new_message_id());
        }
        let mut answered = incoming.answered.to_vec();
        let routed = self
            .router
            .publish_except(&message, incoming.answered)
            .await
            .inspect(|outcome| answered.extend(outcome.answered.iter().cloned()));
        let outcome = match routed {
            // A refusal for good: retrying would be refused again (whatever else failed).
            Ok(outcome) if !outcome.rejected.is_empty() => Outcome::DeadLetter {
                label: reason::REJECTED,
                reason: rejections(&outcome),
            },
            Ok(outcome) if outcome.failed.is_empty() => Outcome::Ack,
            Ok(outcome) => Outcome::Retry {
                reason: format!("gateways did not answer: {}", outcome.failed.join(", ")),
            },
            Err(e) if e.is_transient() => Outcome::Retry {
                reason: e.to_string(),
            },
            Err(e) => Outcome::DeadLetter {
                label: dead_letter_label(&e),
                reason: e.to_string(),
            },
        };
        Routed {
            outcome,
            id: message.id,
            answered,
        }
    }

    fn count(&self, source: &str, outcome: &str) {
        self.metrics
            .queue_messages
            .with_label_values(&[source, outcome])
            .inc();
    }

    fn dead_lettered(&self, dead: DeadLettered<'_>) {
        tracing::warn!(
            message_id = dead.message_id.unwrap_or("-"),
            reason = %dead.reason,
            attempts = dead.attempts,
            "dead-lettered {}",
            policy::describe(dead.label)
        );
        self.metrics
            .dead_letters
            .with_label_values(&[dead.label])
            .inc();
    }
}

/// The dead-letter label of a message that failed for good with `error`.
fn dead_letter_label(error: &Error) -> &'static str {
    match error {
        Error::TooLarge { .. } => reason::TOO_LARGE,
        Error::GatewayRejected { .. } => reason::REJECTED,
        _ => reason::INVALID,
    }
}

/// The dead-letter reason of a message some gateways rejected: each refusal, then the
/// gateways that did not answer, if any.
fn rejections(outcome: &RouteOutcome) -> String {
    let mut why: Vec<String> = outcome
        .rejected
        .iter()
        .map(|r| Error::rejected(r.gateway_id.as_str(), r.status, r.reason.as_str()).to_string())
        .collect();
    if !outcome.failed.is_empty() {
        why.push(format!(
            "gateways did not answer: {}",
            outcome.failed.join(", ")
        ));
    }
    why.join("; ")
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

    async fn route(
        p: &Processor,
        body: &[u8],
        fallback_id: Option<&str>,
        sent_at: Option<u64>,
    ) -> Routed {
        p.route(Incoming {
            body,
            fallback_id,
            sent_at,
            answered: &[],
        })
        .await
    }

    #[tokio::test]
    async fn invalid_messages_are_dead_lettered_with_a_reason() {
        let p = processor(Arc::new(MemoryRegistry::new()));
        let r = route(&p, b"{\"user_id\":\"u\"}", None, None).await;
        assert!(
            matches!(r.outcome, Outcome::DeadLetter { label: reason::INVALID, reason } if reason.contains("room_id"))
        );
        let r = route(&p, b"\xff\xfe", None, None).await;
        assert!(matches!(
            r.outcome,
            Outcome::DeadLetter {
                label: reason::INVALID,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn a_room_nobody_holds_is_acknowledged_under_the_broker_id() {
        let p = processor(Arc::new(MemoryRegistry::new()));
        let r = route(
            &p,
            br#"{"user_id":"u","room_id":"r","data":1}"#,
            Some("mid-1"),
            None,
        )
        .await;
        assert_eq!(r.outcome, Outcome::Ack);
        assert_eq!(r.id.as_deref(), Some("mid-1"));
    }

    /// A registry in which room `r` is held by one live gateway, `g`, at `internal_url`.
    async fn room_r_held_by(internal_url: &str) -> Arc<MemoryRegistry> {
        let registry = Arc::new(MemoryRegistry::new());
        let ttl = Duration::from_secs(60);
        let record = GatewayRecord {
            gateway_id: "g".into(),
            internal_url: internal_url.into(),
            started_at: 0,
        };
        registry.upsert_gateway(&record, ttl).await.expect("upsert");
        registry.add_room_gateway("r", "g", ttl).await.expect("add");
        registry
    }

    #[tokio::test]
    async fn an_unreachable_live_gateway_means_retry() {
        let p = processor(room_r_held_by("http://127.0.0.1:9").await);
        let r = route(
            &p,
            br#"{"user_id":"u","room_id":"r","data":1,"id":"m"}"#,
            None,
            None,
        )
        .await;
        assert!(matches!(r.outcome, Outcome::Retry { .. }), "{r:?}");
    }

    #[tokio::test]
    async fn data_over_the_limit_is_dead_lettered_as_too_large_and_at_the_limit_is_routed() {
        let p = processor(Arc::new(MemoryRegistry::new())).with_max_message_bytes(10);
        // `data` is the JSON text "12345678": 10 bytes with its quotes.
        let r = route(
            &p,
            br#"{"user_id":"u","room_id":"r","data":"12345678"}"#,
            None,
            None,
        )
        .await;
        assert_eq!(r.outcome, Outcome::Ack);
        let r = route(
            &p,
            br#"{"user_id":"u","room_id":"r","data":"123456789"}"#,
            None,
            None,
        )
        .await;
        assert_eq!(
            r.outcome,
            Outcome::DeadLetter {
                label: reason::TOO_LARGE,
                reason: "field `data` is 11 bytes, more than the limit of 10 bytes".into()
            }
        );
    }

    /// A gateway on loopback that answers every request, the deliver stream's upgrade
    /// included, with 401 (another internal secret).
    async fn refusing_gateway() -> String {
        hermes_shared::loopback_http::answering("401 Unauthorized", "").await
    }

    #[tokio::test]
    async fn a_gateway_that_refuses_the_secret_dead_letters_the_message_as_rejected_at_once() {
        let p = processor(room_r_held_by(&refusing_gateway().await).await);
        let r = route(
            &p,
            br#"{"user_id":"u","room_id":"r","data":1,"id":"m"}"#,
            None,
            None,
        )
        .await;
        match r.outcome {
            Outcome::DeadLetter { label, reason } => {
                assert_eq!(label, reason::REJECTED);
                assert!(
                    reason.starts_with("gateway g rejected the request with 401: "),
                    "{reason}"
                );
            }
            other => panic!("expected a dead letter, got {other:?}"),
        }
        assert_eq!(p.metrics().internal_auth_failures.get(), 1);
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
        route(
            &p,
            br#"{"user_id":"u","room_id":"r","data":1}"#,
            None,
            Some(1234),
        )
        .await;
        route(
            &p,
            br#"{"user_id":"u","room_id":"r","data":1,"published_at":99}"#,
            None,
            Some(1234),
        )
        .await;
        let seen: Vec<Option<u64>> = recorder.0.lock().iter().map(|r| r.published_at).collect();
        assert_eq!(seen, vec![Some(1234), Some(99)]);
    }
}
