//! The router: resolve a message's targets in the registry, group them by the gateway
//! that holds them, deliver to each gateway once (in-process for the local gateway, over
//! its link for the others, concurrently), and clean up what it learns is gone.
//!
//! Cost per message is O(gateways holding targets): never O(members), and O(all gateways)
//! only when there are so few of them that asking each is cheaper than finding out which
//! hold the target (see [`Router::with_route_to_all_up_to`]) and for token revocation,
//! which must reach every replica's cache.
//!
//! This file routes (`publish`, `route`, `broadcast`, `connection_info`); `hops` finds
//! where each gateway's share goes (local, remote, draining, dead: the directory, the
//! registry's heartbeat rows and the URL cache); `gateways` keeps the list of live gateways
//! for routing to all of them; `links` carries everything sent to another gateway (the
//! deliver stream, the HTTP batcher, the HTTP client). Routed messages and broadcasts take
//! one delivery path (`Router::deliver`), and the router calls other gateways only through
//! its links.

mod gateways;
mod health;
mod hops;
mod links;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use gateways::RouteToAll;
pub use gateways::{GATEWAY_LIST_VALIDITY, NEW_GATEWAY_GRACE};
pub use health::REGISTRY_RECOVERY_GRACE;
use health::{RegistryHealth, Trust};
pub use hops::{GatewayDirectory, Presence};
use hops::{Hop, Hops};
use links::Links;
pub use links::{DeliverTransport, GatewayClient};

use crate::error::Result;
use crate::history::{self, Clock, HistoryEntry, HistorySettings, Timing};
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

/// Routes messages to the gateways that hold their targets.
pub struct Router {
    registry: Arc<dyn Registry>,
    local: Option<LocalGateway>,
    metrics: Arc<Metrics>,
    hops: Hops,
    to_all: Option<RouteToAll>,
    links: Links,
    history: Option<Recorder>,
    /// Whether the registry failed this router lately, and which gateways it awaits after
    /// an outage (see [`REGISTRY_RECOVERY_GRACE`]).
    health: RegistryHealth,
}

/// What a router needs to record notifications in their streams' history.
struct Recorder {
    settings: HistorySettings,
    timing: Timing,
    clock: Clock,
}

/// What became of one gateway's share of a message.
enum Delivery {
    Answered(DeliverResponse),
    /// The gateway is gone: these connections are gone with it.
    Dead(Vec<String>),
    Skipped,
    Failed(crate::Error),
}

impl Router {
    pub fn new(
        registry: Arc<dyn Registry>,
        client: GatewayClient,
        local: Option<LocalGateway>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let local_id = local.as_ref().map(|l| l.gateway_id.clone());
        Self {
            hops: Hops::new(registry.clone(), local_id),
            links: Links::new(client),
            registry,
            local,
            metrics,
            to_all: None,
            history: None,
            health: RegistryHealth::new(Duration::from_secs(30)),
        }
    }

    /// The TTL of the gateways' rows (`HERMES_REGISTRY_TTL_SECONDS`, default 30 s): an
    /// outage of the registry longer than a third of it is long enough for rows to expire
    /// (see [`REGISTRY_RECOVERY_GRACE`]).
    pub fn with_registry_ttl(self, ttl: Duration) -> Self {
        self.health.set_ttl(ttl);
        self
    }

    /// Notes how a registry call of this router went. The first failure of an outage
    /// records the gateways seen live within a TTL before it and reachable (a gateway whose
    /// circuit is open was killed, likely, its row not expired yet): they are awaited after
    /// it.
    fn registry_answered<T>(&self, result: &Result<T>) {
        match result {
            Ok(_) => self.health.succeeded(),
            Err(_) => {
                if self.health.failed() {
                    let breakers = self.links.breakers();
                    let mut seen = self.hops.urls().seen_within(self.health.ttl());
                    seen.retain(|g| !breakers.unreachable(g));
                    self.health.outage_began(seen);
                }
            }
        }
    }

    /// Whether the registry's membership answers are not trusted yet after an outage
    /// ([`REGISTRY_RECOVERY_GRACE`]). While gateways seen live before it are awaited, one
    /// caller every half second lists the live gateways to see which are back.
    async fn distrusted(&self) -> bool {
        match self.health.state() {
            Trust::Trusted => false,
            Trust::Grace | Trust::Awaiting { relist: false } => true,
            Trust::Awaiting { relist: true } => {
                let asked_at = Instant::now();
                let listed = self.registry.gateways().await;
                self.registry_answered(&listed);
                if let Ok(gateways) = listed {
                    self.hops.urls().put_listed(&gateways, asked_at);
                    let ids: Vec<String> = gateways.into_iter().map(|g| g.gateway_id).collect();
                    self.health.listed(&ids);
                }
                true
            }
        }
    }

    /// The error of a message routed while the registry's answers are not trusted.
    fn untrusted() -> crate::Error {
        crate::Error::registry_answer(format!(
            "the registry is back from an outage long enough for rows to expire; its answers \
             are trusted again {} s after it and every gateway seen live before it are back \
             (the message is retried)",
            REGISTRY_RECOVERY_GRACE.as_secs()
        ))
    }

    /// Records every room and user notification in its stream's history before any
    /// gateway sees it (nothing when `settings` turn history off). `deliver_timeout`
    /// bounds the write and, with it, how late a delivery may arrive ([`Timing`]).
    pub fn with_history(mut self, settings: HistorySettings, deliver_timeout: Duration) -> Self {
        self.history = settings.enabled().then(|| Recorder {
            settings,
            timing: Timing::new(deliver_timeout),
            clock: Clock::new(),
        });
        self
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
        self.to_all = RouteToAll::new(max, self.registry.clone(), self.hops.urls().clone());
        self
    }

    /// Consults `directory` before the registry for where gateways are and whether they
    /// are shutting down.
    pub fn with_directory(mut self, directory: Arc<dyn GatewayDirectory>) -> Self {
        self.hops.set_directory(directory);
        self
    }

    /// The registry the router reads.
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }

    /// Routes a published message. Its text is serialized here, once.
    pub async fn publish(&self, message: &PublishMessage) -> Result<RouteOutcome> {
        self.publish_except(message, &[]).await
    }

    /// Routes a published message to the gateways holding its targets except `done`, the
    /// gateways an earlier attempt at the same message reached ([`RouteOutcome::answered`]):
    /// a retry goes only to those that did not answer.
    pub async fn publish_except(
        &self,
        message: &PublishMessage,
        done: &[String],
    ) -> Result<RouteOutcome> {
        let id = message
            .id
            .clone()
            .unwrap_or_else(crate::ids::new_message_id);
        let mut request = DeliverRequest {
            id: Some(id),
            target: message.target(),
            exclude_connection_id: message.exclude_connection_id.clone(),
            published_at: Some(message.published_at.unwrap_or_else(crate::ids::now_millis)),
            action: DeliverAction::Send {
                frame: message.frame(),
                raw: false,
            },
            pos: None,
            expires_at: None,
        };
        if let Some(outcome) = self.held_back(&request, done) {
            return Ok(outcome);
        }
        // Not written to the history only to fail below.
        if self.distrusted().await {
            return Err(Self::untrusted());
        }
        self.record(&mut request).await?;
        self.route_except(request, done).await
    }

    /// An attempt that could reach nobody: every listed live gateway it has not reached yet
    /// refuses deliveries (its circuit is open). It is not made (no history write, no
    /// registry read, no delivery) and fails for those gateways, so the message is retried
    /// as it would have been after making it. The retries of the messages a frozen gateway
    /// holds then cost a queue round trip each, not a history write and a registry read
    /// that crowd the messages of the healthy gateways. Only with a valid gateway list
    /// ([`Router::with_route_to_all_up_to`] keeps one, whatever the number of gateways):
    /// a gateway that may hold a socket is always on it ([`NEW_GATEWAY_GRACE`]).
    fn held_back(&self, request: &DeliverRequest, done: &[String]) -> Option<RouteOutcome> {
        let breakers = self.links.breakers();
        if !breakers.any() {
            return None;
        }
        let listed = self.to_all.as_ref()?.listed()?;
        let rest: Vec<String> = listed
            .iter()
            .filter(|g| !done.contains(g))
            .cloned()
            .collect();
        if rest.is_empty() || !rest.iter().all(|g| breakers.refusing(g)) {
            return None;
        }
        breakers.count_rejected(rest.len());
        Some(RouteOutcome {
            id: request.id.clone().unwrap_or_default(),
            failed: rest,
            ..RouteOutcome::default()
        })
    }

    /// Writes a notification to its stream's history under a new position (every attempt
    /// at a message gets its own), and gives the request that position and the instant
    /// it expires. Fails (a transient error: the message is retried) when the write does
    /// not succeed within the write timeout: no gateway may see a notification that a
    /// resume could not find.
    async fn record(&self, request: &mut DeliverRequest) -> Result<()> {
        let Some(recorder) = &self.history else {
            return Ok(());
        };
        let (Some(stream), Some(id), DeliverAction::Send { frame, .. }) = (
            history::stream_of(&request.target),
            &request.id,
            &request.action,
        ) else {
            return Ok(());
        };
        let pos = recorder.clock.next();
        let entry = HistoryEntry {
            stream,
            pos,
            id: id.clone(),
            room_id: match &request.target {
                Target::User { room_id, .. } => room_id.clone(),
                _ => None,
            },
            frame: frame.as_str().to_owned(),
            published_at: request.published_at,
        };
        let write =
            self.registry
                .append_history(&entry, recorder.settings.ttl, recorder.settings.max);
        let result = match tokio::time::timeout(recorder.timing.write, write).await {
            Ok(result) => result,
            Err(_) => Err(crate::Error::registry_answer(format!(
                "history write of {} took longer than {} ms",
                entry.stream,
                recorder.timing.write.as_millis()
            ))),
        };
        self.metrics
            .history_writes
            .with_label_values(&[if result.is_ok() { "ok" } else { "error" }])
            .inc();
        self.registry_answered(&result);
        result?;
        request.pos = Some(pos.encode());
        request.expires_at = Some(recorder.timing.expires_at(pos));
        Ok(())
    }

    /// Routes a deliver request to the gateways holding its target.
    pub async fn route(&self, request: DeliverRequest) -> Result<RouteOutcome> {
        self.route_except(request, &[]).await
    }

    /// Routes a deliver request to the gateways holding its target, except `done`.
    async fn route_except(&self, request: DeliverRequest, done: &[String]) -> Result<RouteOutcome> {
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
        if self.distrusted().await {
            return Err(Self::untrusted());
        }
        // Gateway id → the request it receives.
        let groups: Vec<(String, DeliverRequest)> = match &request.target {
            _ if everyone.is_some() => everyone
                .iter()
                .flat_map(|ids| ids.iter())
                .map(|g| (g.clone(), request.clone()))
                .collect(),
            Target::Room { .. } | Target::User { .. } => {
                let holders = self.holders(&request.target).await?;
                holders.into_iter().map(|g| (g, request.clone())).collect()
            }
            Target::Connections(ids) => {
                let mut by_gateway: HashMap<String, Vec<String>> = HashMap::new();
                for id in ids {
                    let row = self.registry.connection(id).await;
                    self.registry_answered(&row);
                    match row? {
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

        let deliveries = groups.into_iter().filter(|(g, _)| !done.contains(g)).map(
            |(gateway_id, req)| async move {
                let hop = self.hops.hop(&gateway_id).await;
                self.registry_answered(&hop);
                let delivery = match hop {
                    // Its row may be missing because the registry came back a moment ago.
                    Ok(Hop::Dead) if self.distrusted().await => Delivery::Failed(Self::untrusted()),
                    Ok(hop) => self.deliver(&gateway_id, hop, req).await,
                    Err(error) => Delivery::Failed(error),
                };
                (gateway_id, delivery)
            },
        );

        let mut failures = Vec::new();
        for (gateway_id, delivery) in join_all(deliveries).await {
            let (gone, gateway_id) = match delivery {
                Delivery::Answered(response) => {
                    outcome.gateways += 1;
                    outcome.delivered += response.delivered;
                    // A gateway that reached nobody is not done with the message: a socket
                    // that joins it before the retry must get it, and asking it again
                    // cannot push a second copy to anyone.
                    if response.delivered > 0 || response.duplicate {
                        outcome.answered.push(gateway_id.clone());
                    }
                    (response.gone, gateway_id)
                }
                // Its rows were just removed; connections it held are gone with it.
                Delivery::Dead(gone) => {
                    outcome.answered.push(gateway_id.clone());
                    (gone, gateway_id)
                }
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
                let removed = self.registry.remove_connection(connection_id, &gateway_id);
                if let Err(error) = removed.await {
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
            match error {
                crate::Error::GatewayRejected { status, reason, .. } => {
                    outcome.rejected.push(crate::wire::Rejection {
                        gateway_id,
                        status,
                        reason,
                    });
                }
                _ => outcome.failed.push(gateway_id),
            }
        }
        self.metrics
            .routing_duration
            .observe(started.elapsed().as_secs_f64());
        Ok(outcome)
    }

    /// Delivers one gateway's share of a message where its hop says: in-process to the
    /// local gateway, over the link to any other. The one delivery path of `route` and
    /// `broadcast`.
    async fn deliver(&self, gateway_id: &str, hop: Hop, request: DeliverRequest) -> Delivery {
        match hop {
            Hop::Local => Delivery::Answered(self.deliver_local(&request)),
            Hop::Remote(url) => match self.links.deliver(gateway_id, &url, request).await {
                Ok(response) => Delivery::Answered(response),
                Err(error) => Delivery::Failed(error),
            },
            Hop::Draining(url) => match self.links.deliver(gateway_id, &url, request).await {
                Ok(response) => Delivery::Answered(response),
                Err(error) => {
                    tracing::debug!(%error, gateway_id, "a terminating gateway did not answer; skipped");
                    Delivery::Skipped
                }
            },
            Hop::Dead => {
                self.hops
                    .forget_dead_gateway(gateway_id, &request.target)
                    .await;
                Delivery::Dead(match request.target {
                    Target::Connections(ids) => ids,
                    _ => Vec::new(),
                })
            }
        }
    }

    fn deliver_local(&self, request: &DeliverRequest) -> DeliverResponse {
        self.local
            .as_ref()
            .map(|l| l.delivery.deliver(request))
            .unwrap_or_default()
    }

    /// The gateways the registry says hold a room's or a user's sockets.
    async fn holders(&self, target: &Target) -> Result<Vec<String>> {
        let holders = match target {
            Target::Room { room_id } => self.registry.room_gateways(room_id).await,
            Target::User { user_id, .. } => self.registry.user_gateways(user_id).await,
            Target::Connections(_) => return Ok(Vec::new()),
        };
        self.registry_answered(&holders);
        holders
    }

    /// The live gateways, when this router sends to all of them and there are at most its
    /// maximum; `None`: look the targets up instead.
    async fn all_gateways(&self) -> Option<Arc<[String]>> {
        self.to_all.as_ref()?.gateways().await
    }

    /// Sends a request to every live gateway (token revocation reaches every cache), each
    /// over the same path as a routed message: in-process to the local gateway, over its
    /// link to the others.
    pub async fn broadcast(&self, request: DeliverRequest) -> Result<RouteOutcome> {
        let gateways = self.registry.gateways().await?;
        let mut outcome = RouteOutcome {
            id: request.id.clone().unwrap_or_default(),
            ..Default::default()
        };
        let mut shares: Vec<(String, Hop)> = gateways
            .into_iter()
            .map(|g| {
                let hop = if self.hops.is_local(&g.gateway_id) {
                    Hop::Local
                } else {
                    Hop::Remote(g.internal_url)
                };
                (g.gateway_id, hop)
            })
            .collect();
        // The local gateway may not be registered yet (starting) or any more (draining).
        if let Some(local) = &self.local
            && !shares.iter().any(|(_, hop)| matches!(hop, Hop::Local))
        {
            shares.push((local.gateway_id.clone(), Hop::Local));
        }
        let deliveries = shares.into_iter().map(|(gateway_id, hop)| {
            let request = request.clone();
            async move {
                let delivery = self.deliver(&gateway_id, hop, request).await;
                (gateway_id, delivery)
            }
        });
        for (gateway_id, delivery) in join_all(deliveries).await {
            match delivery {
                Delivery::Answered(r) => {
                    outcome.gateways += 1;
                    outcome.delivered += r.delivered;
                }
                Delivery::Failed(error) => {
                    tracing::warn!(%error, gateway_id, "broadcast to a gateway failed");
                    outcome.failed.push(gateway_id);
                }
                // Not from a local or remote hop.
                Delivery::Dead(_) | Delivery::Skipped => {}
            }
        }
        Ok(outcome)
    }

    /// API Gateway's `GET @connections/{id}`: asks the holding gateway.
    pub async fn connection_info(&self, connection_id: &str) -> Result<Option<ConnectionInfo>> {
        let Some(row) = self.registry.connection(connection_id).await? else {
            return Ok(None);
        };
        match self.hops.hop(&row.gateway_id).await? {
            Hop::Local => Ok(self
                .local
                .as_ref()
                .and_then(|l| l.delivery.connection_info(connection_id))),
            // A terminating gateway still holds its sockets until its drain closes them.
            Hop::Remote(url) | Hop::Draining(url) => {
                self.links
                    .connection_info(&row.gateway_id, &url, connection_id)
                    .await
            }
            Hop::Dead => {
                (self.registry)
                    .remove_connection(connection_id, &row.gateway_id)
                    .await?;
                Ok(None)
            }
        }
    }
}
