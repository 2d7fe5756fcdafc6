//! Counts and times the admin API's requests (`hermes_admin_requests_total`,
//! `hermes_admin_request_duration_seconds`), as a middleware of the internal listener.
//! Labels come from a fixed table of routes, never from the path: a caller cannot create
//! series by requesting paths or ids of its choosing.

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::web;

use crate::state::Gateway;

/// The `route` label of an admin request: its method and the route pattern it matched
/// (as registered in `server::internal_server`). `None` for every other request.
pub fn route_label(method: &Method, pattern: &str) -> Option<&'static str> {
    let route = match (method.as_str(), pattern) {
        ("POST", "/v1/tokens") => "tokens_create",
        ("DELETE", "/v1/tokens/{room_id}/{user_id}") => "tokens_delete",
        ("POST", "/v1/publish") => "publish",
        ("POST", "/@connections/{id}" | "/{stage}/@connections/{id}") => "connections_post",
        ("GET", "/@connections/{id}" | "/{stage}/@connections/{id}") => "connections_get",
        ("DELETE", "/@connections/{id}" | "/{stage}/@connections/{id}") => "connections_delete",
        _ => return None,
    };
    Some(route)
}

/// The `status` label: the status class (`2xx`, `4xx`, ...).
pub fn status_label(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Counts and times the request when it is one of the admin API's.
pub async fn count_admin_request(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    // Only an admin request pays for the gateway handle and the clock: the internal
    // listener also carries the routers' deliveries.
    let counted = req
        .match_pattern()
        .and_then(|pattern| route_label(req.method(), &pattern))
        .and_then(|route| {
            let gw = req.app_data::<web::Data<Arc<Gateway>>>()?.clone();
            Some((route, gw, Instant::now()))
        });
    let result = next.call(req).await;
    if let Some((route, gw, started)) = counted {
        let status = match &result {
            Ok(r) => r.status().as_u16(),
            Err(e) => e.as_response_error().status_code().as_u16(),
        };
        gw.metrics
            .admin_requests
            .with_label_values(&[route, status_label(status)])
            .inc();
        gw.metrics
            .admin_duration
            .with_label_values(&[route])
            .observe(started.elapsed().as_secs_f64());
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_admin_routes_get_a_label() {
        assert_eq!(route_label(&Method::POST, "/v1/publish"), Some("publish"));
        assert_eq!(
            route_label(&Method::GET, "/{stage}/@connections/{id}"),
            Some("connections_get")
        );
        assert_eq!(
            route_label(&Method::DELETE, "/v1/tokens/{room_id}/{user_id}"),
            Some("tokens_delete")
        );
        assert_eq!(route_label(&Method::GET, "/v1/publish"), None);
        assert_eq!(route_label(&Method::GET, "/metrics"), None);
        assert_eq!(route_label(&Method::POST, "/internal/v1/deliver"), None);
    }

    #[test]
    fn statuses_are_labelled_by_class() {
        assert_eq!(status_label(201), "2xx");
        assert_eq!(status_label(410), "4xx");
        assert_eq!(status_label(502), "5xx");
        assert_eq!(status_label(999), "5xx");
    }
}
