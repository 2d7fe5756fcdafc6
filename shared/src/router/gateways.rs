//! The gateway-list cache: room and user messages go to every live gateway, without a
//! lookup of which hold the target, while there are few of them
//! ([`Router::with_route_to_all_up_to`](super::Router::with_route_to_all_up_to)). The list
//! is a lease rather than a cache to invalidate: a router trusts it for at most
//! [`GATEWAY_LIST_VALIDITY`] from before it was asked for, and a new gateway accepts sockets
//! only [`NEW_GATEWAY_GRACE`] after its row is written, so a gateway holding a socket is
//! always listed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::hops::UrlCache;
use crate::registry::Registry;

/// How long a router trusts its list of live gateways when it sends a message to all of
/// them instead of looking up its targets ([`Router::with_route_to_all_up_to`]). The age is
/// counted from before the list was asked for, so it bounds how late the list can be.
///
/// [`Router::with_route_to_all_up_to`]: super::Router::with_route_to_all_up_to
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
pub(super) struct RouteToAll {
    max: usize,
    registry: Arc<dyn Registry>,
    /// Filled with the URLs of the listed gateways.
    urls: UrlCache,
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

impl RouteToAll {
    /// `None` for `max` 0 (never route to all).
    pub(super) fn new(max: usize, registry: Arc<dyn Registry>, urls: UrlCache) -> Option<Self> {
        (max > 0).then(|| Self {
            max,
            registry,
            urls,
            state: Arc::new(ListState {
                list: Mutex::new(None),
                refreshing: AtomicBool::new(false),
                refresh: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The live gateways, when there are at most the maximum; `None`: look the targets up
    /// instead.
    pub(super) async fn gateways(&self) -> Option<Arc<[String]>> {
        let state = &self.state;
        let current = |within: Duration| self.listed_within(within);
        if let Some(ids) = current(GATEWAY_LIST_VALIDITY / 2) {
            return (ids.len() <= self.max).then_some(ids);
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
            return (ids.len() <= self.max).then_some(ids);
        }
        {
            let _one_at_a_time = state.refresh.lock().await;
            if current(GATEWAY_LIST_VALIDITY).is_none() {
                refresh_gateway_list(&self.registry, &self.urls, state).await;
            }
        }
        current(GATEWAY_LIST_VALIDITY).filter(|ids| ids.len() <= self.max)
    }
}

impl RouteToAll {
    /// The live gateways as last listed, whatever their number, while the list is still
    /// valid; `None` when there is no valid list (nothing is read here).
    pub(super) fn listed(&self) -> Option<Arc<[String]>> {
        self.listed_within(GATEWAY_LIST_VALIDITY)
    }

    /// The last list, if it was asked for less than `within` ago.
    fn listed_within(&self, within: Duration) -> Option<Arc<[String]>> {
        self.state
            .list
            .lock()
            .as_ref()
            .filter(|l| l.asked_at.elapsed() < within)
            .map(|l| l.ids.clone())
    }
}

/// Reads the live gateways into `state`'s list; their URLs go to the URL cache. On failure
/// the list is left as it was (it goes out of date, and messages are looked up instead).
async fn refresh_gateway_list(registry: &Arc<dyn Registry>, urls: &UrlCache, state: &ListState) {
    let asked_at = Instant::now();
    match registry.gateways().await {
        Ok(gateways) => {
            urls.put_listed(&gateways, asked_at);
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
