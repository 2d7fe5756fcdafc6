//! The internal API (internal listener only, shared-secret header): deliveries routed
//! to this gateway, connection details, and — when this process holds the embedded
//! in-memory registry — the registry itself for other processes.
//! Also `/metrics`, `/healthz` and `/readyz` (no auth).

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use hermes_shared::registry::Registry;
use hermes_shared::registry::remote::{RegistryOp, execute};
use hermes_shared::router::LocalDelivery;
use hermes_shared::wire::{DELIVER_BATCH_MAX, DeliverRequest, DeliverResponse, SECRET_HEADER};
use subtle::ConstantTimeEq;

use crate::admin::error;
use crate::state::{Gateway, GatewayDelivery};

/// The registry this process serves to others (`HERMES_REGISTRY=memory` only).
pub struct ServedRegistry(pub Option<Arc<dyn Registry>>);

pub(crate) fn check_secret(req: &HttpRequest, gw: &Gateway) -> Option<HttpResponse> {
    let ok = req
        .headers()
        .get(SECRET_HEADER)
        .map(|v| v.as_bytes())
        .is_some_and(|p| {
            let expected = gw.config.internal_secret.as_bytes();
            p.len() == expected.len() && bool::from(p.ct_eq(expected))
        });
    if ok {
        None
    } else {
        Some(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong X-Hermes-Internal-Secret",
        ))
    }
}

/// The body of a deliver call, once its secret is checked and its JSON parsed; else the
/// refusal (401 or 400, counted in `hermes_deliver_requests_total`).
fn deliver_body<T: serde::de::DeserializeOwned>(
    req: &HttpRequest,
    body: &[u8],
    gw: &Gateway,
    what: &str,
) -> Result<T, Box<HttpResponse>> {
    if let Some(denied) = check_secret(req, gw) {
        gw.metrics
            .deliver_requests
            .with_label_values(&["server", "401"])
            .inc();
        return Err(Box::new(denied));
    }
    serde_json::from_slice(body)
        .map_err(|e| Box::new(invalid_delivery(gw, &format!("invalid {what}: {e}"))))
}

/// A 400 for a deliver call, counted in `hermes_deliver_requests_total`.
fn invalid_delivery(gw: &Gateway, message: &str) -> HttpResponse {
    gw.metrics
        .deliver_requests
        .with_label_values(&["server", "400"])
        .inc();
    error(StatusCode::BAD_REQUEST, "invalid", message)
}

/// Delivers to this gateway's sockets and counts the answered call.
pub(crate) fn deliver_here(gw: &Gateway, requests: &[DeliverRequest]) -> Vec<DeliverResponse> {
    let delivery = GatewayDelivery {
        hub: gw.hub.clone(),
        auth: gw.auth.clone(),
    };
    let responses = requests.iter().map(|r| delivery.deliver(r)).collect();
    gw.metrics
        .deliver_requests
        .with_label_values(&["server", "200"])
        .inc();
    responses
}

/// `POST /internal/v1/deliver`.
pub async fn deliver(
    req: HttpRequest,
    body: web::Bytes,
    gw: web::Data<Arc<Gateway>>,
) -> HttpResponse {
    match deliver_body::<DeliverRequest>(&req, &body, &gw, "deliver request") {
        Ok(request) => HttpResponse::Ok().json(
            deliver_here(&gw, std::slice::from_ref(&request))
                .pop()
                .unwrap_or_default(),
        ),
        Err(refusal) => *refusal,
    }
}

/// `POST /internal/v1/deliver-batch`: a JSON array of deliver requests (at most
/// [`DELIVER_BATCH_MAX`]), answered with one deliver response per request, in order.
pub async fn deliver_batch(
    req: HttpRequest,
    body: web::Bytes,
    gw: web::Data<Arc<Gateway>>,
) -> HttpResponse {
    let requests = match deliver_body::<Vec<DeliverRequest>>(&req, &body, &gw, "deliver batch") {
        Ok(requests) => requests,
        Err(refusal) => return *refusal,
    };
    if requests.len() > DELIVER_BATCH_MAX {
        return invalid_delivery(
            &gw,
            &format!(
                "a deliver batch holds at most {DELIVER_BATCH_MAX} requests, not {}",
                requests.len()
            ),
        );
    }
    HttpResponse::Ok().json(deliver_here(&gw, &requests))
}

/// `GET /internal/v1/connections/{id}`.
pub async fn connection(
    req: HttpRequest,
    id: web::Path<String>,
    gw: web::Data<Arc<Gateway>>,
) -> HttpResponse {
    if let Some(denied) = check_secret(&req, &gw) {
        return denied;
    }
    match gw.hub.connection_info(&id) {
        Some(info) => HttpResponse::Ok().json(info),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such connection on this gateway",
        ),
    }
}

/// `POST /internal/v1/registry`: one registry operation against the embedded registry.
pub async fn registry(
    req: HttpRequest,
    body: web::Bytes,
    gw: web::Data<Arc<Gateway>>,
    served: web::Data<ServedRegistry>,
) -> HttpResponse {
    if let Some(denied) = check_secret(&req, &gw) {
        return denied;
    }
    let Some(registry) = served.0.as_ref() else {
        return error(
            StatusCode::NOT_FOUND,
            "not_served",
            "this process does not serve its registry (HERMES_REGISTRY is not memory)",
        );
    };
    let op: RegistryOp = match serde_json::from_slice(&body) {
        Ok(op) => op,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid",
                &format!("invalid registry operation: {e}"),
            );
        }
    };
    match execute(registry.as_ref(), op).await {
        Ok(value) => HttpResponse::Ok().json(value),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            e.metric_label(),
            &e.to_string(),
        ),
    }
}

/// `GET /metrics`.
pub async fn metrics(gw: web::Data<Arc<Gateway>>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(gw.metrics.render())
}

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// `GET /readyz`: registered and not draining.
pub async fn readyz(gw: web::Data<Arc<Gateway>>) -> HttpResponse {
    if gw.is_ready() {
        HttpResponse::Ok().json(serde_json::json!({"status": "ready"}))
    } else if gw.draining.is_cancelled() {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({"status": "draining"}))
    } else {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({"status": "starting"}))
    }
}
