//! The router: resolve a message's targets in the registry, group them by the gateway
//! that holds them, deliver to each gateway once (in-process for the local gateway,
//! `POST /internal/v1/deliver` for the others, concurrently), and clean up what it
//! learns is gone.
//!
//! Cost per message is O(gateways holding targets): never O(members), never
//! O(all gateways) (except token revocation, which must reach every replica's cache).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use parking_lot::Mutex;

use crate::error::Result;
use crate::gateway_client::GatewayClient;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::wire::{
    ConnectionInfo, DeliverAction, DeliverRequest, DeliverResponse, PublishMessage, RouteOutcome,
    Target,
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

/// Routes messages to the gateways that hold their targets.
pub struct Router {
    registry: Arc<dyn Registry>,
    client: GatewayClient,
    local: Option<LocalGateway>,
    metrics: Arc<Metrics>,
    urls: Mutex<HashMap<String, (String, Instant)>>,
    directory: Option<Arc<dyn GatewayDirectory>>,
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
            urls: Mutex::new(HashMap::new()),
            directory: None,
        }
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
        // Gateway id → the request it receives.
        let groups: Vec<(String, DeliverRequest)> = match &request.target {
            Target::Room { room_id } => self
                .registry
                .room_gateways(room_id)
                .await?
                .into_iter()
                .map(|g| (g, request.clone()))
                .collect(),
            Target::User { user_id, .. } => self
                .registry
                .user_gateways(user_id)
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
                Ok(Hop::Remote(url)) => match self.client.deliver(&gateway_id, &url, &req).await {
                    Ok(response) => Delivery::Answered(response),
                    Err(error) => Delivery::Failed(error),
                },
                Ok(Hop::Draining(url)) => match self.client.deliver(&gateway_id, &url, &req).await {
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
                    tracing::warn!(%error, gateway_id, "delivery to a gateway failed");
                    outcome.failed.push(gateway_id);
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
        self.metrics
            .routing_duration
            .observe(started.elapsed().as_secs_f64());
        Ok(outcome)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::memory::MemoryRegistry;
    use crate::registry::{ConnectionRecord, GatewayRecord};

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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let body = format!(r#"{{"delivered":{delivered},"gone":[]}}"#);
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut socket, _)) = listener.accept().await {
                let body = body.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut seen = Vec::new();
                    loop {
                        let n = socket.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&seen);
                        if let Some(head_end) = text.find("\r\n\r\n") {
                            let length = text[..head_end]
                                .lines()
                                .find_map(|l| {
                                    let (k, v) = l.split_once(':')?;
                                    k.eq_ignore_ascii_case("content-length")
                                        .then(|| v.trim().parse::<usize>().ok())?
                                })
                                .unwrap_or(0);
                            if seen.len() >= head_end + 4 + length {
                                let response = format!(
                                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                                    body.len()
                                );
                                let _ = socket.write_all(response.as_bytes()).await;
                                seen.clear();
                            }
                        }
                    }
                });
            }
        });
        url
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
