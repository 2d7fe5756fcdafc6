//! What every handler and task of a gateway shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::GatewayConfig;
use hermes_shared::auth::Authenticator;
use hermes_shared::metrics::Metrics;
use hermes_shared::registry::{GatewayRecord, Registry};
use hermes_shared::router::{LocalDelivery, Router};
use hermes_shared::wire::{ConnectionInfo, DeliverAction, DeliverRequest, DeliverResponse};
use tokio_util::sync::CancellationToken;

use crate::hub::SessionHub;

/// Shared gateway state.
pub struct Gateway {
    pub config: GatewayConfig,
    pub metrics: Arc<Metrics>,
    pub registry: Arc<dyn Registry>,
    pub hub: Arc<SessionHub>,
    pub auth: Arc<Authenticator>,
    pub router: Router,
    /// This gateway's registry row (its internal URL is known once bound).
    pub record: GatewayRecord,
    /// False while starting and once draining.
    ready: AtomicBool,
    /// Set once, [`hermes_shared::router::NEW_GATEWAY_GRACE`] after the gateway row was
    /// first written: sockets are accepted from then on (until draining).
    accepting: AtomicBool,
    /// Cancelled when the gateway starts draining.
    pub draining: CancellationToken,
    /// Cancelled when the drain is over and the servers stop: long-lived internal
    /// connections (deliver streams) close then.
    pub stopping: CancellationToken,
}

impl Gateway {
    pub fn new(
        config: GatewayConfig,
        metrics: Arc<Metrics>,
        registry: Arc<dyn Registry>,
        hub: Arc<SessionHub>,
        auth: Arc<Authenticator>,
        router: Router,
        record: GatewayRecord,
    ) -> Self {
        Self {
            config,
            metrics,
            registry,
            hub,
            auth,
            router,
            record,
            ready: AtomicBool::new(false),
            accepting: AtomicBool::new(false),
            draining: CancellationToken::new(),
            stopping: CancellationToken::new(),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
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
}

/// The gateway's in-process delivery: the hub, plus the authenticator for revocations.
pub struct GatewayDelivery {
    pub hub: Arc<SessionHub>,
    pub auth: Arc<Authenticator>,
}

impl LocalDelivery for GatewayDelivery {
    fn deliver(&self, request: &DeliverRequest) -> DeliverResponse {
        if let DeliverAction::Revoke { user_id, room_id } = &request.action {
            self.auth.forget(user_id, room_id);
        }
        self.hub.deliver(request)
    }

    fn connection_info(&self, connection_id: &str) -> Option<ConnectionInfo> {
        self.hub.connection_info(connection_id)
    }
}
