//! The internal API (internal listener only, shared-secret header): deliveries routed
//! to this gateway, connection details, and — when this process holds the embedded
//! in-memory registry — the registry itself for other processes.
//! Also `/metrics`, `/healthz` and `/readyz` (no auth).

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use hermes_shared::registry::Registry;
use hermes_shared::registry::remote::{RegistryOp, execute};
use hermes_shared::router::LocalDelivery;
use hermes_shared::wire::DeliverRequest;

use crate::error::HttpError;
use crate::extract::InternalSecret;
use crate::state::Gateway;

/// The registry this process serves to others (`HERMES_REGISTRY=memory` only).
pub struct ServedRegistry(pub Option<Arc<dyn Registry>>);

/// Parses a deliver call's JSON body (a refusal is counted as a 400 call).
fn deliver_body<T: serde::de::DeserializeOwned>(
    gw: &Gateway,
    body: &[u8],
    what: &str,
) -> Result<T, HttpError> {
    serde_json::from_slice(body).map_err(|e| gw.deliveries.invalid(format!("invalid {what}: {e}")))
}

/// `POST /internal/v1/deliver`.
pub async fn deliver(
    caller: Result<InternalSecret, HttpError>,
    body: web::Bytes,
    gw: web::Data<Arc<Gateway>>,
) -> Result<HttpResponse, HttpError> {
    gw.deliveries.authorized(caller)?;
    let request: DeliverRequest = deliver_body(&gw, &body, "deliver request")?;
    let response = gw
        .deliveries
        .answer(std::slice::from_ref(&request))
        .pop()
        .unwrap_or_default();
    Ok(HttpResponse::Ok().json(response))
}

/// `POST /internal/v1/deliver-batch`: a JSON array of deliver requests (at most
/// `DELIVER_BATCH_MAX`), answered with one deliver response per request, in order.
pub async fn deliver_batch(
    caller: Result<InternalSecret, HttpError>,
    body: web::Bytes,
    gw: web::Data<Arc<Gateway>>,
) -> Result<HttpResponse, HttpError> {
    gw.deliveries.authorized(caller)?;
    let requests: Vec<DeliverRequest> = deliver_body(&gw, &body, "deliver batch")?;
    gw.deliveries.check_batch(requests.len())?;
    Ok(HttpResponse::Ok().json(gw.deliveries.answer(&requests)))
}

/// `GET /internal/v1/connections/{id}`.
pub async fn connection(
    _: InternalSecret,
    id: web::Path<String>,
    gw: web::Data<Arc<Gateway>>,
) -> Result<HttpResponse, HttpError> {
    match gw.hub.connection_info(&id) {
        Some(info) => Ok(HttpResponse::Ok().json(info)),
        None => Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such connection on this gateway",
        )),
    }
}

/// `POST /internal/v1/registry`: one registry operation against the embedded registry.
pub async fn registry(
    _: InternalSecret,
    body: web::Bytes,
    served: web::Data<ServedRegistry>,
) -> Result<HttpResponse, HttpError> {
    let Some(registry) = served.0.as_ref() else {
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "not_served",
            "this process does not serve its registry (HERMES_REGISTRY is not memory)",
        ));
    };
    let op: RegistryOp = serde_json::from_slice(&body)
        .map_err(|e| HttpError::invalid(format!("invalid registry operation: {e}")))?;
    let value = execute(registry.as_ref(), op).await?;
    Ok(HttpResponse::Ok().json(value))
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
