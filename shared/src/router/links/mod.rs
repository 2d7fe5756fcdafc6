//! Links: how a router reaches another gateway. It keeps one link per gateway (per
//! internal URL): its deliver stream ([`stream`], one WebSocket, requests pipelined and
//! batched per write) unless the router delivers over HTTP, the gateway's URL is not plain
//! `http://` or the gateway turns out to have no stream (an older version: the link then
//! becomes HTTP for good). Over HTTP ([`http`]), concurrent deliveries to one gateway share
//! requests: at most [`DELIVERIES_IN_FLIGHT`] at once, and what arrives meanwhile goes out
//! as one `POST /internal/v1/deliver-batch` (a delivery alone still goes out at once,
//! alone). Deliveries of routed messages and of broadcasts take the same link; a
//! connection lookup goes over HTTP on the links' client (the stream carries deliveries
//! only).
//!
//! Every delivery is bounded: it fails if no answer came within the client's timeout
//! (plus [`DEADLINE_MARGIN`], a backstop over the link's own deadlines), and a gateway that
//! keeps failing gets its circuit opened ([`breaker`]): its deliveries then fail at once
//! until a probe gets through. A gateway that stops reading therefore holds up only the
//! messages that target it, each for one fast failure.

pub mod breaker;
mod http;
mod stream;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use breaker::Breakers;
pub use http::GatewayClient;
use stream::{DeliverStream, StreamError};

use crate::batch::{BatchFn, Batcher};
use crate::error::{Error, Result};
use crate::wire::{ConnectionInfo, DELIVER_BATCH_MAX, DeliverRequest, DeliverResponse};

/// How a router sends deliveries to other gateways (`HERMES_DELIVER_TRANSPORT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliverTransport {
    /// One WebSocket per gateway (`GET /internal/v1/deliver-stream`), requests batched and
    /// pipelined on it; a gateway without the endpoint is delivered to over HTTP.
    #[default]
    Stream,
    /// `POST /internal/v1/deliver` and `/deliver-batch` over kept-alive HTTP/1.1.
    Http,
}

impl DeliverTransport {
    /// `stream` or `http`.
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "stream" => Some(Self::Stream),
            "http" => Some(Self::Http),
            _ => None,
        }
    }
}

/// Delivery requests to one gateway in flight at once (the rest wait and go out together).
const DELIVERIES_IN_FLIGHT: usize = 4;

/// How much longer than the client's timeout a delivery may take in all before it fails
/// (queueing in a batcher, a connect before the write).
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(500);

/// Gateways the router keeps a delivery link for before it forgets them all.
const MAX_DELIVERY_LINKS: usize = 256;

type DeliveryBatcher = Batcher<DeliverRequest, Result<DeliverResponse>>;

/// How deliveries reach one other gateway.
#[derive(Clone)]
enum Link {
    /// Its deliver stream (pipelined, batched per write).
    Stream(DeliverStream),
    /// `POST /internal/v1/deliver(-batch)`, batched naturally.
    Http(DeliveryBatcher),
}

/// The links to other gateways: everything the router sends to another gateway goes
/// through here.
pub(super) struct Links {
    client: GatewayClient,
    /// Internal URL → the gateway there and the link deliveries to it take (a URL taken
    /// over by another gateway gets a new link).
    links: Mutex<HashMap<String, (String, Link)>>,
    breakers: Breakers,
}

impl Links {
    pub(super) fn new(client: GatewayClient) -> Self {
        let breakers = Breakers::new(client.timeout() + DEADLINE_MARGIN, client.metrics().clone());
        Self {
            client,
            links: Mutex::new(HashMap::new()),
            breakers,
        }
    }

    /// The circuit breakers of the gateways this router delivers to.
    pub(super) fn breakers(&self) -> &Breakers {
        &self.breakers
    }

    /// Delivers to the gateway at `url` over its link, unless its circuit is open; fails
    /// after the client's timeout and [`DEADLINE_MARGIN`] whatever the link does.
    pub(super) async fn deliver(
        &self,
        gateway_id: &str,
        url: &str,
        request: DeliverRequest,
    ) -> Result<DeliverResponse> {
        let pass = self.breakers.admit(gateway_id).map_err(|open| {
            Error::unreachable(
                gateway_id,
                format!(
                    "not sent: its last {} deliveries failed (circuit open, next probe in {} ms)",
                    open.failures,
                    open.next_probe_in.as_millis()
                ),
            )
        })?;
        let limit = self.client.timeout() + DEADLINE_MARGIN;
        let result = tokio::time::timeout(limit, self.send(gateway_id, url, request))
            .await
            .unwrap_or_else(|_| {
                Err(Error::unreachable(
                    gateway_id,
                    format!("no answer within {} ms", limit.as_millis()),
                ))
            });
        let failed = matches!(result, Err(Error::GatewayUnreachable { .. }));
        self.breakers.record(gateway_id, pass, !failed);
        result
    }

    /// Sends one delivery over the gateway's link.
    async fn send(
        &self,
        gateway_id: &str,
        url: &str,
        request: DeliverRequest,
    ) -> Result<DeliverResponse> {
        let (batcher, request) = match self.link(gateway_id, url) {
            Link::Stream(stream) => match stream.submit(request).await {
                Ok(response) => return Ok(response),
                Err(StreamError::Failed(error)) => return Err(error),
                Err(StreamError::Unsupported(request)) => {
                    (self.fall_back_to_http(gateway_id, url), *request)
                }
            },
            Link::Http(batcher) => (batcher, request),
        };
        // The same bound as a stream's: a gateway that stops answering does not collect
        // every delivery of the router.
        if batcher.pending() >= stream::MAX_OUTSTANDING {
            self.client
                .metrics()
                .deliver_requests
                .with_label_values(&["client", "overloaded"])
                .inc();
            return Err(Error::unreachable(
                gateway_id,
                format!(
                    "{} deliveries are already waiting for it",
                    stream::MAX_OUTSTANDING
                ),
            ));
        }
        batcher.submit(request).await.unwrap_or_else(|| {
            Err(crate::Error::unreachable(
                gateway_id,
                "its delivery batch was lost",
            ))
        })
    }

    /// Asks the gateway at `url` about one of its connections. The deliver stream's
    /// protocol carries deliveries only, so this goes over HTTP whatever the link
    /// (`GET /internal/v1/connections/{id}`), with the client the links share.
    pub(super) async fn connection_info(
        &self,
        gateway_id: &str,
        url: &str,
        connection_id: &str,
    ) -> Result<Option<ConnectionInfo>> {
        self.client
            .connection_info(gateway_id, url, connection_id)
            .await
    }

    /// The link to one gateway at one URL, made on first use.
    fn link(&self, gateway_id: &str, url: &str) -> Link {
        let mut links = self.links.lock();
        if let Some((id, link)) = links.get(url)
            && id == gateway_id
        {
            return link.clone();
        }
        // Gateways come and go (new pods, new ids): forget them all now and then. A link
        // still in use lives on in its callers until they are done.
        if links.len() >= MAX_DELIVERY_LINKS {
            links.clear();
        }
        let stream = match self.client.transport() {
            DeliverTransport::Stream => DeliverStream::new(gateway_id, url, &self.client),
            DeliverTransport::Http => None,
        };
        let link = match stream {
            Some(stream) => Link::Stream(stream),
            None => Link::Http(self.http_batcher(gateway_id, url)),
        };
        links.insert(url.to_owned(), (gateway_id.to_owned(), link.clone()));
        link
    }

    /// Makes HTTP the link to a gateway without a deliver stream (once: the deliveries that
    /// learn it together share one batcher).
    fn fall_back_to_http(&self, gateway_id: &str, url: &str) -> DeliveryBatcher {
        let mut links = self.links.lock();
        if let Some((id, Link::Http(batcher))) = links.get(url)
            && id == gateway_id
        {
            return batcher.clone();
        }
        let batcher = self.http_batcher(gateway_id, url);
        links.insert(
            url.to_owned(),
            (gateway_id.to_owned(), Link::Http(batcher.clone())),
        );
        batcher
    }

    /// A batcher of HTTP deliveries to one gateway at one URL.
    fn http_batcher(&self, gateway_id: &str, url: &str) -> DeliveryBatcher {
        let client = self.client.clone();
        let (g, u) = (gateway_id.to_owned(), url.to_owned());
        let run: BatchFn<DeliverRequest, Result<DeliverResponse>> =
            Arc::new(move |requests: Vec<DeliverRequest>| {
                let (client, g, u) = (client.clone(), g.clone(), u.clone());
                Box::pin(async move {
                    if let [one] = requests.as_slice() {
                        return vec![client.deliver(&g, &u, one).await];
                    }
                    match client.deliver_batch(&g, &u, &requests).await {
                        Ok(answers) => answers.into_iter().map(Ok).collect(),
                        Err(error) => {
                            // Every request of the batch failed with it; each gets its
                            // words (an error's source cannot be shared).
                            let reason = match error {
                                // Refused for good: each request is.
                                crate::Error::GatewayRejected { status, reason, .. } => {
                                    return requests
                                        .iter()
                                        .map(|_| {
                                            Err(crate::Error::rejected(
                                                g.clone(),
                                                status,
                                                reason.clone(),
                                            ))
                                        })
                                        .collect();
                                }
                                crate::Error::GatewayUnreachable {
                                    reason,
                                    source: Some(cause),
                                    ..
                                } => format!("{reason}: {cause}"),
                                crate::Error::GatewayUnreachable { reason, .. } => reason,
                                other => other.to_string(),
                            };
                            requests
                                .iter()
                                .map(|_| Err(crate::Error::unreachable(g.clone(), reason.clone())))
                                .collect()
                        }
                    }
                })
            });
        Batcher::new(DELIVER_BATCH_MAX, DELIVERIES_IN_FLIGHT, run)
    }
}
