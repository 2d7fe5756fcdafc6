//! The router: resolve a message's targets in the registry, group them by the gateway
//! that holds them, deliver to each gateway once (in-process for the local gateway, over
//! the deliver stream — or `POST /internal/v1/deliver` — for the others, concurrently),
//! and clean up what it learns is gone.
//!
//! Cost per message is O(gateways holding targets): never O(members), and O(all gateways)
//! only when there are so few of them that asking each is cheaper than finding out which
//! hold the target (see [`Router::with_route_to_all_up_to`]) and for token revocation,
//! which must reach every replica's cache.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use parking_lot::Mutex;

use crate::batch::{BatchFn, Batcher};
use crate::deliver_stream::{DeliverStream, StreamError};
use crate::error::Result;
use crate::gateway_client::{DeliverTransport, GatewayClient};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::wire::{
    ConnectionInfo, DELIVER_BATCH_MAX, DeliverAction, DeliverRequest, DeliverResponse,
    PublishMessage, RouteOutcome, Target,
};

/// A gateway's own sockets, delivered to without a network hop.
pub trait LocalDelivery: Send + Sync {
    /// Delivers to the local sockets matching the request (never blocks).
    fn deliver(&self, request: &DeliverRequest) -> DeliverResponse;
    /// Details of a local connection.
    fn connection_info(&self, connection_id: &str) -> Option<ConnectionInfo>;
}

/// The gateway this router runs in, if any (the consumer has none).
#[derive(Clone)]
pub struct LocalGateway {
    pub gateway_id: String,
    pub delivery: Arc<dyn LocalDelivery>,
}

/// What the platform (Kubernetes EndpointSlices) says about a gateway replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// Ready, reachable at this internal URL.
    Ready(String),
    /// Its pod is terminating: the gateway is draining its sockets (closing them over its
    /// drain window). Delivered to at this URL (else the registry's) on a best-effort basis.
    Terminating(Option<String>),
    /// Not known or not ready: ask the registry (its heartbeat row decides).
    Unknown,
}

/// A live view of the gateway replicas, kept by watching the platform. The router asks it
/// before the registry: a ready gateway's URL comes from it without a registry read; a
/// terminating one still gets the message for the sockets it has not closed yet, but if it
/// does not answer it is skipped rather than failed (its sockets are going away and their
/// clients reconnect elsewhere: retrying the message for it would only delay it).
pub trait GatewayDirectory: Send + Sync {
    /// What is known of this gateway now (never blocks).
    fn presence(&self, gateway_id: &str) -> Presence;
}

/// How long a gateway id → internal URL lookup is reused.
const URL_CACHE_TTL: Duration = Duration::from_secs(2);

/// How long a router trusts its list of live gateways when it sends a message to all of
/// them instead of looking up its targets ([`Router::with_route_to_all_up_to`]). The age is
/// counted from before the list was asked for, so it bounds how late the list can be.
pub const GATEWAY_LIST_VALIDITY: Duration = Duration::from_millis(500);

/// How long a gateway waits after its row is first written before it accepts sockets:
/// longer than [`GATEWAY_LIST_VALIDITY`], so every router that sends to all listed gateways
/// lists it before it can hold a socket (twice as long: room for the clocks' rates).
pub const NEW_GATEWAY_GRACE: Duration = Duration::from_millis(1_000);

/// The live gateways, as last read, for routing a message to all of them.
struct GatewayList {
    /// Taken just before the registry was asked.
    asked_at: Instant,
    ids: Arc<[String]>,
}

/// Routing to every live gateway while there are at most `max` of them.
struct RouteToAll {
    max: usize,
    state: Arc<ListState>,
}

/// The list and its refreshes, shared with the background refresh a message starts.
struct ListState {
    list: Mutex<Option<GatewayList>>,
    /// One refresh of a list that is getting old runs at a time, in the background; the
    /// messages meanwhile use the list, still valid.
    refreshing: AtomicBool,
    /// Serializes the refreshes of callers that have no valid list to use.
    refresh: tokio::sync::Mutex<()>,
}

/// Gateway id → its internal URL and when that was read.
type UrlCache = Arc<Mutex<HashMap<String, (String, Instant)>>>;

/// Routes messages to the gateways that hold their targets.
pub struct Router {
    registry: Arc<dyn Registry>,
    client: GatewayClient,
    local: Option<LocalGateway>,
    metrics: Arc<Metrics>,
    urls: UrlCache,
    directory: Option<Arc<dyn GatewayDirectory>>,
    to_all: Option<RouteToAll>,
    /// Internal URL → the gateway there and the link deliveries to it take (a URL taken
    /// over by another gateway gets a new link).
    links: Mutex<HashMap<String, (String, Link)>>,
}

type DeliveryBatcher = Batcher<DeliverRequest, Result<DeliverResponse>>;

/// How deliveries reach one other gateway.
#[derive(Clone)]
enum Link {
    /// Its deliver stream (pipelined, batched per write).
    Stream(DeliverStream),
    /// `POST /internal/v1/deliver(-batch)`, batched naturally.
    Http(DeliveryBatcher),
}

/// Delivery requests to one gateway in flight at once (the rest wait and go out together).
const DELIVERIES_IN_FLIGHT: usize = 4;

/// Gateways the router keeps a delivery link for before it forgets them all.
const MAX_DELIVERY_LINKS: usize = 256;

/// The claim on refreshing the gateway list, given back when dropped (also when the
/// refresh task is dropped half-way).
struct Refreshing(Arc<ListState>);

impl Refreshing {
    fn claim(state: &Arc<ListState>) -> Option<Self> {
        (!state.refreshing.swap(true, Ordering::AcqRel)).then(|| Self(state.clone()))
    }
}

impl Drop for Refreshing {
    fn drop(&mut self) {
        self.0.refreshing.store(false, Ordering::Release);
    }
}

/// What became of one gateway's share of a message.
enum Delivery {
    Answered(DeliverResponse),
    /// The gateway is gone: these connections are gone with it.
    Dead(Vec<String>),
    Skipped,
    Failed(crate::Error),
}

/// Where one gateway's share of a message goes.
enum Hop {
    Local,
    Remote(String),
    /// No live gateway row: the rows pointing at it are stale.
    Dead,
    /// Shutting down: sent to, but not answering is not a failure.
    Draining(String),
}

impl Router {
    pub fn new(
        registry: Arc<dyn Registry>,
        client: GatewayClient,
        local: Option<LocalGateway>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            registry,
            client,
            local,
            metrics,
            urls: Arc::new(Mutex::new(HashMap::new())),
            directory: None,
            to_all: None,
            links: Mutex::new(HashMap::new()),
        }
    }

    /// Sends room and user messages to every live gateway, without looking up which hold
    /// the target, while there are at most `max` live gateways (0: never). With one or two
    /// gateways, a registry read per message costs more than the deliveries it saves (a
    /// gateway that holds no target answers from one hash lookup). A new gateway accepts
    /// sockets only [`NEW_GATEWAY_GRACE`] after its row is written, and this router uses a
    /// list for at most [`GATEWAY_LIST_VALIDITY`]: a gateway holding a socket is always
    /// listed. A gateway that fails to answer is a failure only if the registry says it
    /// holds the target.
    pub fn with_route_to_all_up_to(mut self, max: usize) -> Self {
        self.to_all = (max > 0).then(|| RouteToAll {
            max,
            state: Arc::new(ListState {
                list: Mutex::new(None),
                refreshing: AtomicBool::new(false),
                refresh: tokio::sync::Mutex::new(()),
            }),
        });
        self
    }

    /// Consults `directory` before the registry for where gateways are and whether they
    /// are shutting down.
    pub fn with_directory(mut self, directory: Arc<dyn GatewayDirectory>) -> Self {
        self.directory = Some(directory);
        self
    }

    /// The registry the router reads.
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }

    /// Routes a published message. Its text is serialized here, once.
    pub async fn publish(&self, message: &PublishMessage) -> Result<RouteOutcome> {
        let id = message
            .id
            .clone()
            .unwrap_or_else(crate::ids::new_message_id);
        let request = DeliverRequest {
            id: Some(id),
            target: message.target(),
            exclude_connection_id: message.exclude_connection_id.clone(),
            published_at: Some(message.published_at.unwrap_or_else(crate::ids::now_millis)),
            action: DeliverAction::Send {
                frame: message.frame(),
            },
        };
        self.route(request).await
    }

    /// Routes a deliver request to the gateways holding its target.
    pub async fn route(&self, request: DeliverRequest) -> Result<RouteOutcome> {
        let started = Instant::now();
        let mut outcome = RouteOutcome {
            id: request.id.clone().unwrap_or_default(),
            ..RouteOutcome::default()
        };
        // Room and user messages go to every live gateway when there are few of them.
        let everyone = match &request.target {
            Target::Connections(_) => None,
            Target::Room { .. } | Target::User { .. } => self.all_gateways().await,
        };
        // Gateway id → the request it receives.
        let groups: Vec<(String, DeliverRequest)> = match &request.target {
            _ if everyone.is_some() => everyone
                .iter()
                .flat_map(|ids| ids.iter())
                .map(|g| (g.clone(), request.clone()))
                .collect(),
            Target::Room { .. } | Target::User { .. } => self
                .holders(&request.target)
                .await?
                .into_iter()
                .map(|g| (g, request.clone()))
                .collect(),
            Target::Connections(ids) => {
                let mut by_gateway: HashMap<String, Vec<String>> = HashMap::new();
                for id in ids {
                    match self.registry.connection(id).await? {
                        Some(row) => by_gateway
                            .entry(row.gateway_id)
                            .or_default()
                            .push(id.clone()),
                        None => outcome.gone += 1,
                    }
                }
                by_gateway
                    .into_iter()
                    .map(|(g, ids)| {
                        let mut r = request.clone();
                        r.target = Target::Connections(ids);
                        (g, r)
                    })
                    .collect()
            }
        };

        let deliveries = groups.into_iter().map(|(gateway_id, req)| async move {
            let delivery = match self.hop(&gateway_id).await {
                Ok(Hop::Local) => Delivery::Answered(match &self.local {
                    Some(local) => local.delivery.deliver(&req),
                    None => DeliverResponse::default(),
                }),
                Ok(Hop::Remote(url)) => match self.deliver_remote(&gateway_id, &url, req).await {
                    Ok(response) => Delivery::Answered(response),
                    Err(error) => Delivery::Failed(error),
                },
                Ok(Hop::Draining(url)) => match self.deliver_remote(&gateway_id, &url, req).await {
                    Ok(response) => Delivery::Answered(response),
                    Err(error) => {
                        tracing::debug!(%error, gateway_id, "a terminating gateway did not answer; skipped");
                        Delivery::Skipped
                    }
                },
                Ok(Hop::Dead) => {
                    self.forget_dead_gateway(&gateway_id, &req.target).await;
                    Delivery::Dead(match &req.target {
                        Target::Connections(ids) => ids.clone(),
                        _ => Vec::new(),
                    })
                }
                Err(error) => Delivery::Failed(error),
            };
            (gateway_id, delivery)
        });

        let mut failures = Vec::new();
        for (gateway_id, delivery) in join_all(deliveries).await {
            let gone = match delivery {
                Delivery::Answered(response) => {
                    outcome.gateways += 1;
                    outcome.delivered += response.delivered;
                    response.gone
                }
                // Its rows were just removed; connections it held are gone with it.
                Delivery::Dead(gone) => gone,
                Delivery::Skipped => {
                    self.metrics
                        .route_skipped
                        .with_label_values(&["terminating"])
                        .inc();
                    outcome.skipped.push(gateway_id);
                    continue;
                }
                Delivery::Failed(error) => {
                    failures.push((gateway_id, error));
                    continue;
                }
            };
            outcome.gone += gone.len();
            for connection_id in &gone {
                if let Err(error) = self.registry.remove_connection(connection_id).await {
                    tracing::warn!(%error, connection_id, "cannot remove a gone connection");
                }
            }
        }
        if everyone.is_some() && !failures.is_empty() {
            // Sent to all: only a gateway that holds the target has failed it.
            let holders = self.holders(&request.target).await?;
            failures.retain(|(g, _)| holders.contains(g));
        }
        for (gateway_id, error) in failures {
            tracing::warn!(%error, gateway_id, "delivery to a gateway failed");
            outcome.failed.push(gateway_id);
        }
        self.metrics
            .routing_duration
            .observe(started.elapsed().as_secs_f64());
        Ok(outcome)
    }

    /// Delivers to another gateway: over its deliver stream (see [`crate::deliver_stream`])
    /// unless this router uses HTTP or the gateway has no stream. Over HTTP, concurrent
    /// deliveries to one gateway share requests: at most [`DELIVERIES_IN_FLIGHT`] at once,
    /// and what arrives meanwhile goes out as one `POST /internal/v1/deliver-batch` (a
    /// delivery alone still goes out at once, alone).
    async fn deliver_remote(
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
        batcher.submit(request).await.unwrap_or_else(|| {
            Err(crate::Error::GatewayUnreachable {
                gateway_id: gateway_id.to_owned(),
                reason: "its delivery batch was lost".into(),
            })
        })
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
                            let reason = match error {
                                crate::Error::GatewayUnreachable { reason, .. } => reason,
                                other => other.to_string(),
                            };
                            requests
                                .iter()
                                .map(|_| {
                                    Err(crate::Error::GatewayUnreachable {
                                        gateway_id: g.clone(),
                                        reason: reason.clone(),
                                    })
                                })
                                .collect()
                        }
                    }
                })
            });
        Batcher::new(DELIVER_BATCH_MAX, DELIVERIES_IN_FLIGHT, run)
    }

    /// The gateways the registry says hold a room's or a user's sockets.
    async fn holders(&self, target: &Target) -> Result<Vec<String>> {
        match target {
            Target::Room { room_id } => self.registry.room_gateways(room_id).await,
            Target::User { user_id, .. } => self.registry.user_gateways(user_id).await,
            Target::Connections(_) => Ok(Vec::new()),
        }
    }

    /// The live gateways, when this router sends to all of them and there are at most its
    /// maximum; `None`: look the targets up instead.
    async fn all_gateways(&self) -> Option<Arc<[String]>> {
        let to_all = self.to_all.as_ref()?;
        let state = &to_all.state;
        let current = |within: Duration| {
            state
                .list
                .lock()
                .as_ref()
                .filter(|l| l.asked_at.elapsed() < within)
                .map(|l| l.ids.clone())
        };
        if let Some(ids) = current(GATEWAY_LIST_VALIDITY / 2) {
            return (ids.len() <= to_all.max).then_some(ids);
        }
        if let Some(ids) = current(GATEWAY_LIST_VALIDITY) {
            // Getting old: one task refreshes it in the background; this message and the
            // others use it meanwhile, still valid. A message that waited for the read
            // would carry the registry's latency: one message per refresh, and under load
            // (slow reads, so lists that come back already old) many refreshes.
            if let Some(claim) = Refreshing::claim(state) {
                let (registry, urls) = (self.registry.clone(), self.urls.clone());
                tokio::spawn(async move {
                    refresh_gateway_list(&registry, &urls, &claim.0).await;
                    drop(claim);
                });
            }
            return (ids.len() <= to_all.max).then_some(ids);
        }
        {
            let _one_at_a_time = state.refresh.lock().await;
            if current(GATEWAY_LIST_VALIDITY).is_none() {
                refresh_gateway_list(&self.registry, &self.urls, state).await;
            }
        }
        current(GATEWAY_LIST_VALIDITY).filter(|ids| ids.len() <= to_all.max)
    }

    /// Sends a request to every live gateway (token revocation reaches every cache).
    pub async fn broadcast(&self, request: DeliverRequest) -> Result<RouteOutcome> {
        let gateways = self.registry.gateways().await?;
        let mut outcome = RouteOutcome {
            id: request.id.clone().unwrap_or_default(),
            ..Default::default()
        };
        let local_id = self.local.as_ref().map(|l| l.gateway_id.as_str());
        let mut local_done = false;
        let calls = gateways.iter().map(|g| {
            let request = &request;
            async move {
                if Some(g.gateway_id.as_str()) == local_id {
                    return (g.gateway_id.clone(), Ok(self.deliver_local(request)));
                }
                (
                    g.gateway_id.clone(),
                    self.client
                        .deliver(&g.gateway_id, &g.internal_url, request)
                        .await,
                )
            }
        });
        for (gateway_id, result) in join_all(calls).await {
            if Some(gateway_id.as_str()) == local_id {
                local_done = true;
            }
            match result {
                Ok(r) => {
                    outcome.gateways += 1;
                    outcome.delivered += r.delivered;
                }
                Err(error) => {
                    tracing::warn!(%error, gateway_id, "broadcast to a gateway failed");
                    outcome.failed.push(gateway_id);
                }
            }
        }
        // The local gateway may not be registered yet (starting) or any more (draining).
        if !local_done && self.local.is_some() {
            outcome.delivered += self.deliver_local(&request).delivered;
            outcome.gateways += 1;
        }
        Ok(outcome)
    }

    fn deliver_local(&self, request: &DeliverRequest) -> DeliverResponse {
        self.local
            .as_ref()
            .map(|l| l.delivery.deliver(request))
            .unwrap_or_default()
    }

    /// API Gateway's `GET @connections/{id}`: asks the holding gateway.
    pub async fn connection_info(&self, connection_id: &str) -> Result<Option<ConnectionInfo>> {
        let Some(row) = self.registry.connection(connection_id).await? else {
            return Ok(None);
        };
        match self.hop(&row.gateway_id).await? {
            Hop::Local => Ok(self
                .local
                .as_ref()
                .and_then(|l| l.delivery.connection_info(connection_id))),
            // A terminating gateway still holds its sockets until its drain closes them.
            Hop::Remote(url) | Hop::Draining(url) => {
                self.client
                    .connection_info(&row.gateway_id, &url, connection_id)
                    .await
            }
            Hop::Dead => {
                self.registry.remove_connection(connection_id).await?;
                Ok(None)
            }
        }
    }

    async fn hop(&self, gateway_id: &str) -> Result<Hop> {
        if self
            .local
            .as_ref()
            .is_some_and(|l| l.gateway_id == gateway_id)
        {
            return Ok(Hop::Local);
        }
        match self.directory.as_ref().map(|d| d.presence(gateway_id)) {
            Some(Presence::Ready(url)) => return Ok(Hop::Remote(url)),
            Some(Presence::Terminating(Some(url))) => return Ok(Hop::Draining(url)),
            Some(Presence::Terminating(None)) => {
                return Ok(match self.registry_hop(gateway_id).await? {
                    Hop::Remote(url) => Hop::Draining(url),
                    other => other,
                });
            }
            Some(Presence::Unknown) | None => {}
        }
        self.registry_hop(gateway_id).await
    }

    /// Where the registry's heartbeat row says a gateway is.
    async fn registry_hop(&self, gateway_id: &str) -> Result<Hop> {
        if let Some((url, at)) = self.urls.lock().get(gateway_id)
            && at.elapsed() < URL_CACHE_TTL
        {
            return Ok(Hop::Remote(url.clone()));
        }
        match self.registry.gateway(gateway_id).await? {
            Some(record) => {
                self.urls.lock().insert(
                    gateway_id.to_owned(),
                    (record.internal_url.clone(), Instant::now()),
                );
                Ok(Hop::Remote(record.internal_url))
            }
            None => {
                self.urls.lock().remove(gateway_id);
                Ok(Hop::Dead)
            }
        }
    }

    /// Removes rows that point at a gateway whose heartbeat row has expired.
    async fn forget_dead_gateway(&self, gateway_id: &str, target: &Target) {
        let result = match target {
            Target::Room { room_id } => {
                self.registry.remove_room_gateway(room_id, gateway_id).await
            }
            Target::User { user_id, .. } => {
                self.registry.remove_user_gateway(user_id, gateway_id).await
            }
            Target::Connections(ids) => {
                let mut last = Ok(());
                for id in ids {
                    if let Err(e) = self.registry.remove_connection(id).await {
                        last = Err(e);
                    }
                }
                last
            }
        };
        match result {
            Ok(()) => tracing::info!(
                gateway_id,
                "removed registry rows of a gateway that is gone"
            ),
            Err(error) => {
                tracing::warn!(%error, gateway_id, "cannot remove rows of a gone gateway")
            }
        }
    }
}

/// Reads the live gateways into `state`'s list; their URLs go to the URL cache. On failure
/// the list is left as it was (it goes out of date, and messages are looked up instead).
async fn refresh_gateway_list(registry: &Arc<dyn Registry>, urls: &UrlCache, state: &ListState) {
    let asked_at = Instant::now();
    match registry.gateways().await {
        Ok(gateways) => {
            let mut cached = urls.lock();
            for g in &gateways {
                cached.insert(g.gateway_id.clone(), (g.internal_url.clone(), asked_at));
            }
            drop(cached);
            let mut list = state.list.lock();
            // A slower, older read must not replace a newer list.
            if list.as_ref().is_none_or(|l| l.asked_at <= asked_at) {
                *list = Some(GatewayList {
                    asked_at,
                    ids: gateways.into_iter().map(|g| g.gateway_id).collect(),
                });
            }
        }
        Err(error) => {
            tracing::debug!(%error, "cannot list the live gateways; looking targets up")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::memory::MemoryRegistry;
    use crate::registry::{ConnectionRecord, GatewayRecord};
    use std::sync::atomic::AtomicUsize;

    #[derive(Default)]
    struct Recorder {
        requests: Mutex<Vec<DeliverRequest>>,
        held: Vec<String>,
    }

    impl LocalDelivery for Recorder {
        fn deliver(&self, request: &DeliverRequest) -> DeliverResponse {
            self.requests.lock().push(request.clone());
            let gone = match &request.target {
                Target::Connections(ids) => ids
                    .iter()
                    .filter(|i| !self.held.contains(i))
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            };
            DeliverResponse {
                delivered: 1,
                gone,
                duplicate: false,
            }
        }
        fn connection_info(&self, _: &str) -> Option<ConnectionInfo> {
            None
        }
    }

    fn router(registry: Arc<MemoryRegistry>, local: Arc<Recorder>) -> Router {
        let metrics = Arc::new(Metrics::new());
        let client = GatewayClient::new(
            "secret-secret-secret",
            Duration::from_millis(200),
            metrics.clone(),
        )
        .expect("client");
        Router::new(
            registry,
            client,
            Some(LocalGateway {
                gateway_id: "local".into(),
                delivery: local,
            }),
            metrics,
        )
    }

    fn message(json: &str) -> PublishMessage {
        PublishMessage::parse(json.as_bytes()).expect("valid")
    }

    #[tokio::test]
    async fn room_message_goes_once_to_the_local_gateway_holding_it() {
        let registry = Arc::new(MemoryRegistry::new());
        registry
            .add_room_gateway("r", "local", Duration::from_secs(60))
            .await
            .expect("add");
        let local = Arc::new(Recorder::default());
        let r = router(registry, local.clone());
        let outcome = r
            .publish(&message(r#"{"user_id":"u","room_id":"r","data":{"x":1}}"#))
            .await
            .expect("routed");
        assert_eq!((outcome.gateways, outcome.delivered), (1, 1));
        let requests = local.requests.lock();
        assert_eq!(requests.len(), 1);
        assert!(
            matches!(&requests[0].action, DeliverAction::Send { frame } if frame.as_str() == r#"{"user_id":"u","data":{"x":1}}"#)
        );
    }

    #[tokio::test]
    async fn rows_of_a_gateway_without_heartbeat_are_removed() {
        let registry = Arc::new(MemoryRegistry::new());
        registry
            .add_room_gateway("r", "ghost", Duration::from_secs(60))
            .await
            .expect("add");
        let r = router(registry.clone(), Arc::new(Recorder::default()));
        let outcome = r
            .publish(&message(r#"{"user_id":"u","room_id":"r","data":1}"#))
            .await
            .expect("routed");
        assert_eq!(outcome.gateways, 0);
        assert!(
            registry
                .room_gateways("r")
                .await
                .expect("lookup")
                .is_empty()
        );
    }

    #[tokio::test]
    async fn unknown_connection_counts_as_gone_and_held_rows_are_cleaned() {
        let registry = Arc::new(MemoryRegistry::new());
        registry
            .put_connection(
                &ConnectionRecord {
                    connection_id: "c1".into(),
                    room_id: "r".into(),
                    user_id: "u".into(),
                    gateway_id: "local".into(),
                    connected_at: 0,
                    source_ip: String::new(),
                    user_agent: String::new(),
                },
                Duration::from_secs(60),
            )
            .await
            .expect("put");
        let r = router(registry.clone(), Arc::new(Recorder::default()));
        let o = r
            .publish(&message(
                r#"{"user_id":"u","room_id":"r","data":1,"connection_id":"nope"}"#,
            ))
            .await
            .expect("routed");
        assert_eq!(o.gone, 1);
        // The local gateway says c1 is not there: the 410 path removes the row.
        let o = r
            .publish(&message(
                r#"{"user_id":"u","room_id":"r","data":1,"connection_id":"c1"}"#,
            ))
            .await
            .expect("routed");
        assert_eq!(o.gone, 1);
        assert_eq!(registry.connection("c1").await.expect("get"), None);
    }

    #[tokio::test]
    async fn unreachable_live_gateway_is_reported_as_failed() {
        let registry = Arc::new(MemoryRegistry::new());
        registry
            .upsert_gateway(
                &GatewayRecord {
                    gateway_id: "far".into(),
                    internal_url: "http://127.0.0.1:9".into(),
                    started_at: 0,
                },
                Duration::from_secs(60),
            )
            .await
            .expect("upsert");
        registry
            .add_user_gateway("v", "far", Duration::from_secs(60))
            .await
            .expect("add");
        let r = router(registry, Arc::new(Recorder::default()));
        let o = r
            .publish(&message(
                r#"{"user_id":"u","room_id":"r","data":1,"to_user_id":"v"}"#,
            ))
            .await
            .expect("routed");
        assert_eq!(o.failed, vec!["far".to_owned()]);
    }

    async fn live(registry: &MemoryRegistry, gateway_id: &str, internal_url: &str) {
        registry
            .upsert_gateway(
                &GatewayRecord {
                    gateway_id: gateway_id.into(),
                    internal_url: internal_url.into(),
                    started_at: 0,
                },
                Duration::from_secs(60),
            )
            .await
            .expect("upsert");
    }

    /// Two live gateways, "local" (the router's own) and "far" (answers `delivered: 2`);
    /// user "v" is held where `v_held_at` says (no row when empty). Routes a message to "v"
    /// sending to all gateways while there are at most `route_to_all_up_to`.
    async fn route_to_v(
        v_held_at: &[&str],
        route_to_all_up_to: usize,
    ) -> (RouteOutcome, Arc<Recorder>) {
        let registry = Arc::new(MemoryRegistry::new());
        let far = fake_gateway(2).await;
        live(&registry, "local", "http://unused").await;
        live(&registry, "far", &far).await;
        for g in v_held_at {
            registry
                .add_user_gateway("v", g, Duration::from_secs(60))
                .await
                .expect("add");
        }
        let local = Arc::new(Recorder::default());
        let r = router(registry, local.clone()).with_route_to_all_up_to(route_to_all_up_to);
        let o = r
            .publish(&message(
                r#"{"user_id":"u","room_id":"r","data":1,"to_user_id":"v"}"#,
            ))
            .await
            .expect("routed");
        (o, local)
    }

    #[tokio::test]
    async fn with_few_gateways_a_user_message_reaches_each_without_a_lookup() {
        // No user_gateways row at all: only sending to every gateway reaches them.
        let (o, local) = route_to_v(&[], 2).await;
        assert_eq!((o.gateways, o.delivered), (2, 3), "{o:?}");
        assert_eq!(local.requests.lock().len(), 1);
    }

    #[tokio::test]
    async fn the_gateway_list_is_read_at_most_once_per_half_validity() {
        let memory = Arc::new(MemoryRegistry::new());
        live(&memory, "far", &fake_gateway(1).await).await;
        let metrics = Arc::new(Metrics::new());
        let registry = Arc::new(crate::registry::instrumented::Instrumented::new(
            memory,
            metrics.clone(),
        ));
        let client = GatewayClient::new(
            "secret-secret-secret",
            Duration::from_millis(200),
            metrics.clone(),
        )
        .expect("client");
        let r = Router::new(registry, client, None, metrics.clone()).with_route_to_all_up_to(2);
        let started = Instant::now();
        // 64 routings at once, as the consumer runs them.
        let routed: u32 = futures_util::future::join_all((0..64).map(|_| async {
            let mut routed = 0u32;
            while started.elapsed() < GATEWAY_LIST_VALIDITY + GATEWAY_LIST_VALIDITY / 5 {
                r.publish(&message(
                    r#"{"user_id":"u","room_id":"r","data":1,"to_user_id":"v"}"#,
                ))
                .await
                .expect("routed");
                routed += 1;
                tokio::task::yield_now().await;
            }
            routed
        }))
        .await
        .into_iter()
        .sum();
        let reads = metrics
            .registry_duration
            .with_label_values(&["gateways"])
            .get_sample_count();
        // At 0, after half the validity and after the whole of it.
        assert!(reads <= 3, "{reads} list reads for {routed} messages");
    }

    #[tokio::test]
    async fn with_more_gateways_than_the_maximum_targets_are_looked_up() {
        let (o, local) = route_to_v(&["far"], 1).await;
        assert_eq!((o.gateways, o.delivered), (1, 2), "{o:?}");
        assert!(
            local.requests.lock().is_empty(),
            "the local gateway holds no target"
        );
    }

    #[tokio::test]
    async fn sent_to_all_an_unreachable_gateway_fails_the_message_only_if_it_holds_the_target() {
        let registry = Arc::new(MemoryRegistry::new());
        live(&registry, "local", "http://unused").await;
        live(&registry, "far", "http://127.0.0.1:9").await;
        registry
            .add_room_gateway("held-far", "far", Duration::from_secs(60))
            .await
            .expect("add");
        let r = router(registry, Arc::new(Recorder::default())).with_route_to_all_up_to(2);
        let elsewhere = r
            .publish(&message(
                r#"{"user_id":"u","room_id":"held-here","data":1}"#,
            ))
            .await
            .expect("routed");
        assert!(elsewhere.failed.is_empty(), "{elsewhere:?}");
        assert_eq!(elsewhere.delivered, 1);
        let there = r
            .publish(&message(r#"{"user_id":"u","room_id":"held-far","data":1}"#))
            .await
            .expect("routed");
        assert_eq!(there.failed, vec!["far".to_owned()]);
    }

    /// A fixed directory: gateway id → presence.
    struct Fixed(HashMap<String, Presence>);

    impl GatewayDirectory for Fixed {
        fn presence(&self, gateway_id: &str) -> Presence {
            self.0.get(gateway_id).cloned().unwrap_or(Presence::Unknown)
        }
    }

    #[tokio::test]
    async fn a_terminating_gateway_that_does_not_answer_is_skipped_not_failed_and_keeps_its_rows() {
        let registry = Arc::new(MemoryRegistry::new());
        let ttl = Duration::from_secs(60);
        // Alive by its heartbeat row, but its pod is terminating and nothing answers at its
        // URL any more.
        registry
            .upsert_gateway(
                &GatewayRecord {
                    gateway_id: "draining".into(),
                    internal_url: "http://127.0.0.1:9".into(),
                    started_at: 0,
                },
                ttl,
            )
            .await
            .expect("upsert");
        registry
            .add_room_gateway("r", "draining", ttl)
            .await
            .expect("add");
        registry
            .add_room_gateway("r", "local", ttl)
            .await
            .expect("add");
        let local = Arc::new(Recorder::default());
        let r = router(registry.clone(), local.clone()).with_directory(Arc::new(Fixed(
            HashMap::from([("draining".to_owned(), Presence::Terminating(None))]),
        )));
        let o = r
            .publish(&message(r#"{"user_id":"u","room_id":"r","data":1}"#))
            .await
            .expect("routed");
        assert_eq!(o.skipped, vec!["draining".to_owned()]);
        assert!(o.failed.is_empty(), "skipping is not a failure: {o:?}");
        assert_eq!((o.gateways, o.delivered), (1, 1));
        assert_eq!(local.requests.lock().len(), 1);
        let mut held = registry.room_gateways("r").await.expect("lookup");
        held.sort();
        assert_eq!(held, vec!["draining".to_owned(), "local".to_owned()]);
    }

    /// A deliver endpoint on loopback that answers every request with `delivered`.
    async fn fake_gateway(delivered: usize) -> String {
        fake_gateway_counting(delivered).await.0
    }

    /// A deliver endpoint on loopback, as gateways before the deliver stream had it (its
    /// upgrade is not found: routers deliver to it over HTTP): a request is answered with
    /// `delivered`, a batch with as many such answers as it holds requests. Counts the HTTP
    /// deliver requests it answered.
    async fn fake_gateway_counting(delivered: usize) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let answer = format!(r#"{{"delivered":{delivered},"gone":[]}}"#);
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut socket, _)) = listener.accept().await {
                let (answer, counter) = (answer.clone(), counter.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut seen = Vec::new();
                    loop {
                        let n = socket.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&seen).into_owned();
                        let Some(head_end) = text.find("\r\n\r\n") else {
                            continue;
                        };
                        let length = text[..head_end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if seen.len() < head_end + 4 + length {
                            continue;
                        }
                        if !text.starts_with("POST /internal/v1/deliver") {
                            // A gateway from before the deliver stream: routers fall back
                            // to HTTP when the upgrade is not found.
                            let _ = socket
                                .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                                .await;
                            seen.clear();
                            continue;
                        }
                        let body = &seen[head_end + 4..head_end + 4 + length];
                        let reply = if text.starts_with("POST /internal/v1/deliver-batch ") {
                            let items: Vec<serde_json::Value> =
                                serde_json::from_slice(body).expect("a JSON array");
                            format!("[{}]", vec![answer.as_str(); items.len()].join(","))
                        } else {
                            answer.clone()
                        };
                        counter.fetch_add(1, Ordering::SeqCst);
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
                            reply.len()
                        );
                        let _ = socket.write_all(response.as_bytes()).await;
                        seen.clear();
                    }
                });
            }
        });
        (url, requests)
    }

    #[tokio::test]
    async fn concurrent_deliveries_to_one_gateway_share_requests_and_each_gets_its_answer() {
        let (url, requests) = fake_gateway_counting(1).await;
        let registry = Arc::new(MemoryRegistry::new());
        live(&registry, "far", &url).await;
        for i in 0..200 {
            registry
                .add_user_gateway(&format!("v{i}"), "far", Duration::from_secs(60))
                .await
                .expect("add");
        }
        let r = router(registry, Arc::new(Recorder::default()));
        let messages: Vec<PublishMessage> = (0..200)
            .map(|i| {
                message(&format!(
                    r#"{{"user_id":"u","room_id":"r","data":{i},"to_user_id":"v{i}"}}"#
                ))
            })
            .collect();
        let outcomes = join_all(messages.iter().map(|m| r.publish(m))).await;
        for o in outcomes {
            let o = o.expect("routed");
            assert_eq!((o.gateways, o.delivered), (1, 1), "{o:?}");
            assert!(o.failed.is_empty(), "{o:?}");
        }
        let requests = requests.load(Ordering::SeqCst);
        assert!(
            requests <= 200 / 4,
            "200 concurrent deliveries took {requests} requests"
        );
    }

    #[tokio::test]
    async fn a_terminating_gateway_still_gets_the_message_for_the_sockets_it_has_not_closed() {
        let url = fake_gateway(3).await;
        let registry = Arc::new(MemoryRegistry::new());
        registry
            .add_room_gateway("r", "draining", Duration::from_secs(60))
            .await
            .expect("add");
        let r = router(registry, Arc::new(Recorder::default())).with_directory(Arc::new(Fixed(
            HashMap::from([("draining".to_owned(), Presence::Terminating(Some(url)))]),
        )));
        let o = r
            .publish(&message(r#"{"user_id":"u","room_id":"r","data":1}"#))
            .await
            .expect("routed");
        assert_eq!((o.gateways, o.delivered), (1, 3), "{o:?}");
        assert!(o.skipped.is_empty() && o.failed.is_empty(), "{o:?}");
    }

    #[tokio::test]
    async fn a_ready_gateway_is_reached_at_the_directory_url_even_without_a_registry_row() {
        let url = fake_gateway(7).await;
        let registry = Arc::new(MemoryRegistry::new());
        registry
            .add_room_gateway("r", "pod-a", Duration::from_secs(60))
            .await
            .expect("add");
        let r = router(registry.clone(), Arc::new(Recorder::default())).with_directory(Arc::new(
            Fixed(HashMap::from([("pod-a".to_owned(), Presence::Ready(url))])),
        ));
        let o = r
            .publish(&message(r#"{"user_id":"u","room_id":"r","data":1}"#))
            .await
            .expect("routed");
        assert_eq!((o.gateways, o.delivered), (1, 7), "{o:?}");
        // Without the directory the same gateway has no heartbeat row: it is dead.
        assert_eq!(
            registry.room_gateways("r").await.expect("lookup"),
            vec!["pod-a".to_owned()]
        );
    }
}
