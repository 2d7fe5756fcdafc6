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
            return Err(Error::unreachable(
                gateway_id,
                format!("{status}: {}", body.chars().take(200).collect::<String>()),
            ));
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
            status => Err(Error::unreachable(gateway_id, format!("status {status}"))),
        }
    }
}
