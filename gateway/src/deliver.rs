//! `Deliveries`: the gateway's deliver handler, built once at start and shared by every
//! path a delivery takes into this gateway: the in-process router (`LocalDelivery`), `POST
//! /internal/v1/deliver` and `/deliver-batch` (`internal`), and routers' deliver streams
//! (`stream`). It delivers to the hub, drops the verdicts a revocation invalidates, and
//! counts the answered calls in `hermes_deliver_requests_total{side="server"}`.

use std::sync::Arc;

use hermes_shared::auth::Authenticator;
use hermes_shared::metrics::Metrics;
use hermes_shared::router::LocalDelivery;
use hermes_shared::wire::DELIVER_BATCH_MAX;
use hermes_shared::wire::{
    ConnectionInfo, DeliverAction, DeliverBatch, DeliverBatchReply, DeliverRequest, DeliverResponse,
};

use crate::error::HttpError;
use crate::hub::SessionHub;

/// The gateway's deliver handler.
pub struct Deliveries {
    hub: Arc<SessionHub>,
    auth: Arc<Authenticator>,
    metrics: Arc<Metrics>,
}

impl Deliveries {
    pub fn new(hub: Arc<SessionHub>, auth: Arc<Authenticator>, metrics: Arc<Metrics>) -> Self {
        Self { hub, auth, metrics }
    }

    /// Delivers a call's requests to this gateway's sockets; one answer per request, in
    /// order. Counted as one answered call.
    pub fn answer(&self, requests: &[DeliverRequest]) -> Vec<DeliverResponse> {
        let responses = requests.iter().map(|r| self.deliver(r)).collect();
        self.count("200");
        responses
    }

    /// Checks a batch's size against [`DELIVER_BATCH_MAX`] (a refusal is counted).
    pub fn check_batch(&self, len: usize) -> Result<(), HttpError> {
        match oversized(len) {
            Some(message) => Err(self.invalid(message)),
            None => Ok(()),
        }
    }

    /// Answers one frame of a deliver stream: a batch under a sequence number. The error
    /// is why the frame is not a batch (counted as a 400 call).
    pub fn answer_frame(&self, text: &str) -> Result<String, String> {
        let batch: DeliverBatch<Vec<DeliverRequest>> = serde_json::from_str(text).map_err(|e| {
            self.count("400");
            format!("invalid deliver batch: {e}")
        })?;
        if let Some(message) = oversized(batch.requests.len()) {
            self.count("400");
            return Err(message);
        }
        let reply = DeliverBatchReply {
            seq: batch.seq,
            responses: self.answer(&batch.requests),
        };
        serde_json::to_string(&reply).map_err(|e| format!("cannot encode the answer: {e}"))
    }

    /// The caller's credentials for a deliver call (`extract::InternalSecret`), passed
    /// through; a refusal is counted as a 401 call.
    pub fn authorized<T>(&self, caller: Result<T, HttpError>) -> Result<T, HttpError> {
        caller.inspect_err(|_| self.count("401"))
    }

    /// A 400 for a deliver call, counted.
    pub fn invalid(&self, message: impl Into<String>) -> HttpError {
        self.count("400");
        HttpError::invalid(message)
    }

    fn count(&self, status: &str) {
        self.metrics
            .deliver_requests
            .with_label_values(&["server", status])
            .inc();
    }
}

/// Why a batch of `len` requests is refused, if it is.
fn oversized(len: usize) -> Option<String> {
    (len > DELIVER_BATCH_MAX)
        .then(|| format!("a deliver batch holds at most {DELIVER_BATCH_MAX} requests, not {len}"))
}

impl LocalDelivery for Deliveries {
    fn deliver(&self, request: &DeliverRequest) -> DeliverResponse {
        match &request.action {
            DeliverAction::Revoke { user_id, room_id } => {
                self.auth.forget(user_id, room_id);
            }
            DeliverAction::Forget { user_id, room_id } => {
                self.auth.drop_cached(user_id, room_id);
            }
            DeliverAction::Send { .. } | DeliverAction::Close { .. } => {}
        }
        self.hub.deliver(request)
    }

    fn connection_info(&self, connection_id: &str) -> Option<ConnectionInfo> {
        self.hub.connection_info(connection_id)
    }
}
