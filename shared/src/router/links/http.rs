//! The HTTP client of a gateway's internal API (`POST /internal/v1/deliver`,
//! `POST /internal/v1/deliver-batch`, `GET /internal/v1/connections/{id}`), over kept-alive
//! connections.

use std::sync::Arc;
use std::time::Duration;

use super::DeliverTransport;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::wire::{
    CONNECTIONS_PATH, ConnectionInfo, DELIVER_BATCH_PATH, DELIVER_PATH, DeliverRequest,
    DeliverResponse, SECRET_HEADER,
};

/// Calls other gateways' internal APIs.
#[derive(Clone)]
pub struct GatewayClient {
    http: reqwest::Client,
    secret: Arc<str>,
    metrics: Arc<Metrics>,
    timeout: Duration,
    transport: DeliverTransport,
}

impl GatewayClient {
    pub fn new(secret: &str, timeout: Duration, metrics: Arc<Metrics>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            // Shorter than the gateways' internal keep-alive (120 s): a pooled connection is
            // never reused just as the server closes it ("error sending request").
            .pool_idle_timeout(Duration::from_secs(60))
            // At least the consumer's concurrency: a smaller pool closes connections that the next
            // burst has to open again (a handshake on the delivery path).
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            // A pooled connection whose data a gateway stops acknowledging fails in the kernel
            // after the timeout too (the request's own timeout bounds the call).
            .tcp_user_timeout(timeout)
            .build()
            .map_err(|e| Error::Config(format!("cannot build the gateway client: {e}")))?;
        Ok(Self {
            http,
            secret: secret.into(),
            metrics,
            timeout,
            transport: DeliverTransport::default(),
        })
    }

    /// Delivers to other gateways over `transport` ([`DeliverTransport::Stream`] unless set).
    pub fn with_transport(mut self, transport: DeliverTransport) -> Self {
        self.transport = transport;
        self
    }

    /// How deliveries to other gateways travel.
    pub fn transport(&self) -> DeliverTransport {
        self.transport
    }

    /// The shared secret of the internal API.
    pub fn secret(&self) -> &Arc<str> {
        &self.secret
    }

    /// How long a call may take, connecting included.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Delivers one target group to the gateway at `base_url`.
    pub async fn deliver(
        &self,
        gateway_id: &str,
        base_url: &str,
        request: &DeliverRequest,
    ) -> Result<DeliverResponse> {
        self.post(gateway_id, &format!("{base_url}{DELIVER_PATH}"), request)
            .await
    }

    /// Delivers several requests in one call (`POST /internal/v1/deliver-batch`, at most
    /// [`crate::wire::DELIVER_BATCH_MAX`]): one answer per request, in their order.
    pub async fn deliver_batch(
        &self,
        gateway_id: &str,
        base_url: &str,
        requests: &[DeliverRequest],
    ) -> Result<Vec<DeliverResponse>> {
        let answers: Vec<DeliverResponse> = self
            .post(
                gateway_id,
                &format!("{base_url}{DELIVER_BATCH_PATH}"),
                requests,
            )
            .await?;
        if answers.len() != requests.len() {
            return Err(Error::unreachable(
                gateway_id,
                format!(
                    "bad answer: {} answers to {} requests",
                    answers.len(),
                    requests.len()
                ),
            ));
        }
        Ok(answers)
    }

    /// POSTs `body` as JSON with the shared secret and decodes the JSON answer.
    async fn post<B: serde::Serialize + ?Sized, A: serde::de::DeserializeOwned>(
        &self,
        gateway_id: &str,
        url: &str,
        body: &B,
    ) -> Result<A> {
        let result = self
            .http
            .post(url)
            .header(SECRET_HEADER, &*self.secret)
            .json(body)
            .send()
            .await;
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                let label = if e.is_timeout() {
                    "timeout"
                } else {
                    "unreachable"
                };
                self.metrics
                    .deliver_requests
                    .with_label_values(&["client", label])
                    .inc();
                return Err(Error::unreachable_by(gateway_id, "POST failed", e));
            }
        };
        let status = response.status();
        self.metrics
            .deliver_requests
            .with_label_values(&["client", status.as_str()])
            .inc();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(self.refused(gateway_id, status, &body));
        }
        response
            .json()
            .await
            .map_err(|e| Error::unreachable_by(gateway_id, "bad answer", e))
    }

    /// Asks the holding gateway about one of its connections.
    pub async fn connection_info(
        &self,
        gateway_id: &str,
        base_url: &str,
        connection_id: &str,
    ) -> Result<Option<ConnectionInfo>> {
        let url = format!("{base_url}{CONNECTIONS_PATH}/{connection_id}");
        let response = self
            .http
            .get(&url)
            .header(SECRET_HEADER, &*self.secret)
            .send()
            .await
            .map_err(|e| Error::unreachable_by(gateway_id, "GET failed", e))?;
        match response.status().as_u16() {
            200 => response
                .json()
                .await
                .map(Some)
                .map_err(|e| Error::unreachable_by(gateway_id, "bad answer", e)),
            404 | 410 => Ok(None),
            _ => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                Err(self.refused(gateway_id, status, &body))
            }
        }
    }

    /// The error for a gateway's answer `status` (not a success) with `body`: rejected for
    /// good when retrying cannot help ([`Error::is_rejection`]), unreachable otherwise.
    fn refused(&self, gateway_id: &str, status: reqwest::StatusCode, body: &str) -> Error {
        let reason = format!("{status}: {}", body.chars().take(200).collect::<String>());
        if Error::is_rejection(status.as_u16()) {
            note_rejection(&self.metrics, gateway_id, status.as_u16());
            Error::rejected(gateway_id, status.as_u16(), reason)
        } else {
            Error::unreachable(gateway_id, reason)
        }
    }
}

/// Logs and counts what a rejection by gateway `gateway_id` with `status` says about this
/// process: a 401 means the two processes' `HERMES_INTERNAL_SECRET` differ, a configuration
/// error nothing mends but fixing it (logged at error level, counted in
/// `hermes_internal_auth_failures_total`; the secret itself is never logged). Other
/// rejections are the request's own fault and are reported with it.
pub(super) fn note_rejection(metrics: &Metrics, gateway_id: &str, status: u16) {
    if status == 401 {
        metrics.internal_auth_failures.inc();
        tracing::error!(
            gateway_id,
            status,
            "gateway {gateway_id} refused this process's internal secret: HERMES_INTERNAL_SECRET \
             is not the same here and there, a configuration error; deliveries to it are \
             rejected (dead-lettered as `rejected`, never retried) until it is fixed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loopback_http::answering;
    use crate::wire::{DeliverAction, Frame, Target};

    fn client(metrics: &Arc<Metrics>) -> GatewayClient {
        GatewayClient::new(
            "secret-secret-secret",
            Duration::from_secs(2),
            metrics.clone(),
        )
        .expect("client")
    }

    fn request() -> DeliverRequest {
        DeliverRequest {
            id: Some("m".into()),
            target: Target::Room {
                room_id: "r".into(),
            },
            exclude_connection_id: None,
            published_at: None,
            action: DeliverAction::Send {
                raw: false,
                frame: Frame::from_text("{}"),
            },
            pos: None,
            expires_at: None,
        }
    }

    #[tokio::test]
    async fn a_refusal_for_good_is_rejected_and_anything_else_stays_transient() {
        let cases = [
            ("400 Bad Request", Some(400)),
            ("401 Unauthorized", Some(401)),
            ("403 Forbidden", Some(403)),
            ("413 Payload Too Large", Some(413)),
            ("404 Not Found", None),
            ("408 Request Timeout", None),
            ("429 Too Many Requests", None),
            ("500 Internal Server Error", None),
            ("503 Service Unavailable", None),
        ];
        for (status, rejected) in cases {
            let metrics = Arc::new(Metrics::new());
            let url = answering(status, "what the gateway said").await;
            let error = client(&metrics)
                .deliver("g", &url, &request())
                .await
                .expect_err(status);
            match (rejected, &error) {
                (
                    Some(code),
                    Error::GatewayRejected {
                        gateway_id,
                        status: got,
                        reason,
                    },
                ) => {
                    assert_eq!((gateway_id.as_str(), *got), ("g", code));
                    assert_eq!(reason, &format!("{status}: what the gateway said"));
                    assert!(!error.is_transient());
                    assert_eq!(error.metric_label(), "gateway_rejected");
                }
                (None, Error::GatewayUnreachable { .. }) => assert!(error.is_transient()),
                _ => panic!("{status}: unexpected {error:?}"),
            }
            let auth_failures = if status.starts_with("401") { 1 } else { 0 };
            assert_eq!(
                metrics.internal_auth_failures.get(),
                auth_failures,
                "{status}"
            );
        }
    }

    #[tokio::test]
    async fn a_rejected_batch_and_connection_lookup_are_rejected_too() {
        let metrics = Arc::new(Metrics::new());
        let url = answering("401 Unauthorized", "missing or wrong secret").await;
        let c = client(&metrics);
        assert!(matches!(
            c.deliver_batch("g", &url, &[request(), request()]).await,
            Err(Error::GatewayRejected { status: 401, .. })
        ));
        assert!(matches!(
            c.connection_info("g", &url, "c1").await,
            Err(Error::GatewayRejected { status: 401, .. })
        ));
        assert_eq!(metrics.internal_auth_failures.get(), 2);

        let url = answering("500 Internal Server Error", "").await;
        assert!(matches!(
            c.connection_info("g", &url, "c1").await,
            Err(Error::GatewayUnreachable { .. })
        ));
        let url = answering("404 Not Found", "").await;
        assert!(matches!(c.connection_info("g", &url, "c1").await, Ok(None)));
    }
}
