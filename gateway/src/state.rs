//! What every handler and task of a gateway shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::GatewayConfig;
use hermes_shared::auth::Authenticator;
use hermes_shared::metrics::Metrics;
use hermes_shared::registry::{GatewayRecord, Registry};
use hermes_shared::router::Router;
use tokio_util::sync::CancellationToken;

use crate::deliver::Deliveries;
use crate::hub::SessionHub;
use crate::routes::Routes;

/// Shared gateway state.
pub struct Gateway {
    pub config: GatewayConfig,
    pub metrics: Arc<Metrics>,
    pub registry: Arc<dyn Registry>,
    pub hub: Arc<SessionHub>,
    pub auth: Arc<Authenticator>,
    /// The deliver handler (the router's in-process delivery is the same one).
    pub deliveries: Arc<Deliveries>,
    pub router: Router,
    /// The route integrations, when any is configured.
    pub routes: Option<Arc<Routes>>,
    /// This gateway's registry row (its internal URL is known once bound).
    pub record: GatewayRecord,
    /// False while starting and while the registry fails; [`Gateway::is_ready`] is false
    /// once draining too, whatever this says (the heartbeat goes on during the drain).
    pub(crate) ready: AtomicBool,
    /// Set once the gateway may hold sockets (they are accepted from then on, until
    /// draining): [`hermes_shared::router::NEW_GATEWAY_GRACE`] after its row was first
    /// written, or at once when it serves its own registry (see `server`).
    pub(crate) accepting: AtomicBool,
    /// Cancelled when the gateway starts draining.
    pub draining: CancellationToken,
    /// Cancelled when the drain is over and the servers stop: long-lived internal
    /// connections (deliver streams) close then.
    pub stopping: CancellationToken,
    /// Deletes of this gateway's rows that failed (sockets closed while the registry was
    /// unreachable), tried again after each heartbeat (`session::retry_removals`): a row
    /// of a closed socket must not stay for the row TTL.
    pub(crate) unremoved: parking_lot::Mutex<Vec<Unremoved>>,
}

/// A row whose delete failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unremoved {
    Connection(String),
    Room(String),
    User(String),
}

impl Unremoved {
    /// What the row is, for a log line (room and user ids are not logged).
    pub fn kind(&self) -> &'static str {
        match self {
            Unremoved::Connection(_) => "connection",
            Unremoved::Room(_) => "room",
            Unremoved::User(_) => "user",
        }
    }
}

/// At most this many failed deletes are kept for a retry; past it, the oldest are left to
/// the rows' TTL (or a reap), with a warning.
pub const MAX_UNREMOVED: usize = 100_000;

impl Gateway {
    /// Registered, the registry reachable, and not draining.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.draining.is_cancelled()
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether sockets are accepted yet: every router that sends to all listed gateways
    /// lists this one by now.
    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }

    pub fn set_accepting(&self) {
        self.accepting.store(true, Ordering::Release);
    }

    /// Keeps a failed delete for the next heartbeat to try again.
    pub(crate) fn keep_unremoved(&self, row: Unremoved) {
        let mut unremoved = self.unremoved.lock();
        if unremoved.len() >= MAX_UNREMOVED {
            unremoved.remove(0);
            tracing::warn!(
                "more than {MAX_UNREMOVED} row deletes failed; the oldest is left to its TTL"
            );
        }
        unremoved.push(row);
    }
}
