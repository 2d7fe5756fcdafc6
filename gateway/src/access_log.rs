//! The access log. Only the path is logged, never the query string: the original
//! clients put their token in `?token=`.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;

/// Logs method, path, status and duration of each request.
pub async fn log_request(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.path().to_owned();
    let result = next.call(req).await;
    let status = match &result {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.as_response_error().status_code().as_u16(),
    };
    let micros = started.elapsed().as_micros() as u64;
    if path.starts_with("/internal/")
        || path == "/metrics"
        || path == "/healthz"
        || path == "/readyz"
    {
        tracing::debug!(target: "hermes::access", %method, path, status, micros, "request");
    } else {
        tracing::info!(target: "hermes::access", %method, path, status, micros, "request");
    }
    result
}
