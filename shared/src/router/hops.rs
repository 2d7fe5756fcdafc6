//! Hops: where one gateway's share of a message goes. The local gateway is delivered to
//! in-process; another gateway at the internal URL the platform's live view of the replicas
//! ([`GatewayDirectory`]) gives, else the one its registry heartbeat row gives (read
//! through a short URL cache); a gateway with neither is dead, and the registry rows that
//! still point at it are removed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::Result;
use crate::registry::{GatewayRecord, Registry};
use crate::wire::Target;

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

/// Where one gateway's share of a message goes.
pub(super) enum Hop {
    Local,
    Remote(String),
    /// No live gateway row: the rows pointing at it are stale.
    Dead,
    /// Shutting down: sent to, but not answering is not a failure.
    Draining(String),
}

/// Gateway id → its internal URL and when that was read. Cheap to clone: the gateway-list
/// refresh fills the same cache.
#[derive(Clone, Default)]
pub(super) struct UrlCache(Arc<Mutex<HashMap<String, (String, Instant)>>>);

impl UrlCache {
    /// The URL of a gateway, if it was read less than [`URL_CACHE_TTL`] ago.
    fn fresh(&self, gateway_id: &str) -> Option<String> {
        self.0
            .lock()
            .get(gateway_id)
            .filter(|(_, at)| at.elapsed() < URL_CACHE_TTL)
            .map(|(url, _)| url.clone())
    }

    /// Remembers the URLs of gateways read at `at`.
    pub(super) fn put_all(&self, gateways: &[GatewayRecord], at: Instant) {
        insert_all(&mut self.0.lock(), gateways, at);
    }

    /// Remembers the URLs of the live gateways as listed by a read made at `at`, and forgets
    /// the gateways read before it that the list does not hold (their rows expired or were
    /// removed).
    pub(super) fn put_listed(&self, gateways: &[GatewayRecord], at: Instant) {
        let mut cached = self.0.lock();
        cached.retain(|id, (_, seen)| *seen >= at || gateways.iter().any(|g| &g.gateway_id == id));
        insert_all(&mut cached, gateways, at);
    }

    /// The gateways whose row was read live less than `within` ago (a gateway found dead
    /// is forgotten).
    pub(super) fn seen_within(&self, within: Duration) -> Vec<String> {
        self.0
            .lock()
            .iter()
            .filter(|(_, (_, at))| at.elapsed() < within)
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn forget(&self, gateway_id: &str) {
        self.0.lock().remove(gateway_id);
    }
}

/// Puts the URLs of gateways read at `at` into the cache's map.
fn insert_all(
    cached: &mut HashMap<String, (String, Instant)>,
    gateways: &[GatewayRecord],
    at: Instant,
) {
    for g in gateways {
        cached.insert(g.gateway_id.clone(), (g.internal_url.clone(), at));
    }
}

/// Finds the hop to each gateway.
pub(super) struct Hops {
    registry: Arc<dyn Registry>,
    /// The gateway this router runs in, if any.
    local_id: Option<String>,
    directory: Option<Arc<dyn GatewayDirectory>>,
    urls: UrlCache,
}

impl Hops {
    pub(super) fn new(registry: Arc<dyn Registry>, local_id: Option<String>) -> Self {
        Self {
            registry,
            local_id,
            directory: None,
            urls: UrlCache::default(),
        }
    }

    /// Consults `directory` before the registry.
    pub(super) fn set_directory(&mut self, directory: Arc<dyn GatewayDirectory>) {
        self.directory = Some(directory);
    }

    /// The URL cache, shared with the gateway-list refresh.
    pub(super) fn urls(&self) -> &UrlCache {
        &self.urls
    }

    /// True for the gateway this router runs in.
    pub(super) fn is_local(&self, gateway_id: &str) -> bool {
        self.local_id.as_deref() == Some(gateway_id)
    }

    pub(super) async fn hop(&self, gateway_id: &str) -> Result<Hop> {
        if self.is_local(gateway_id) {
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

    /// Where the registry's heartbeat row says a gateway is. No row: dead. The row lives
    /// [`HEARTBEATS_PER_TTL`] heartbeat intervals, so a gateway is dead only once it has
    /// missed two heartbeats in a row (see [`HEARTBEATS_PER_TTL`]).
    ///
    /// [`HEARTBEATS_PER_TTL`]: crate::registry::HEARTBEATS_PER_TTL
    async fn registry_hop(&self, gateway_id: &str) -> Result<Hop> {
        if let Some(url) = self.urls.fresh(gateway_id) {
            return Ok(Hop::Remote(url));
        }
        match self.registry.gateway(gateway_id).await? {
            Some(record) => {
                self.urls
                    .put_all(std::slice::from_ref(&record), Instant::now());
                Ok(Hop::Remote(record.internal_url))
            }
            None => {
                self.urls.forget(gateway_id);
                Ok(Hop::Dead)
            }
        }
    }

    /// Removes rows that point at a gateway whose heartbeat row has expired.
    pub(super) async fn forget_dead_gateway(&self, gateway_id: &str, target: &Target) {
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
                    if let Err(e) = self.registry.remove_connection(id, gateway_id).await {
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
