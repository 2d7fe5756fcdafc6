//! `GET /{stage}`: the `$connect` route, the authorizer in front of `session::open`.
//! Every refusal happens before the upgrade, with its own status and a message a developer
//! can act on, and is counted in `hermes_connects_total` under its code. The token is
//! never logged.
//!
//! The same URL without upgrade headers answers the authorizer's verdict (426 when the
//! token would be accepted), so browser clients, which cannot read the status of a failed
//! WebSocket handshake, can learn why they were refused.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use hermes_shared::auth::AuthError;
use hermes_shared::ids::{new_connection_id, now_millis};
use hermes_shared::registry::ConnectionRecord;

use crate::error::HttpError;
use crate::routes::RouteError;
use crate::session;
use crate::state::Gateway;

/// The subprotocol Hermes speaks.
pub const PROTOCOL: &str = "hermes.v1";
const BEARER_PREFIX: &str = "bearer.";
const SINCE_PREFIX: &str = "since.";

/// Where the token came from.
#[derive(Debug, PartialEq, Eq)]
struct Credentials {
    token: Option<String>,
    /// The client offered `hermes.v1` (it gets the `connected` frame).
    modern: bool,
    /// The position it resumes from: the subprotocol item `since.<pos>`, else `?since=`.
    since: Option<String>,
}

fn credentials(req: &HttpRequest) -> Result<Credentials, HttpError> {
    let mut offered_modern = false;
    let mut bearer = None;
    let mut since = None;
    for value in req.headers().get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let Ok(value) = value.to_str() else { continue };
        for protocol in value.split(',').map(str::trim) {
            if protocol == PROTOCOL {
                offered_modern = true;
            } else if let Some(token) = protocol.strip_prefix(BEARER_PREFIX) {
                bearer = Some(token.to_owned());
            } else if let Some(pos) = protocol.strip_prefix(SINCE_PREFIX) {
                since = Some(pos.to_owned());
            }
        }
    }
    if bearer.is_some() && !offered_modern {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "protocol_missing",
            "offer the hermes.v1 subprotocol with bearer.<JWT>: new WebSocket(url, ['hermes.v1', 'bearer.' + jwt])",
        ));
    }
    let token = bearer
        .or_else(|| query_param(req.query_string(), "token"))
        .or_else(|| {
            req.headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(|t| t.trim().to_owned())
        });
    Ok(Credentials {
        token,
        modern: offered_modern,
        since: since
            .filter(|s| !s.is_empty())
            .or_else(|| query_param(req.query_string(), "since")),
    })
}

/// A query parameter, percent-decoded; `None` when absent or empty.
fn query_param(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// Counts a refused connect under its code.
fn refused(gw: &Gateway, error: HttpError) -> HttpError {
    gw.metrics.connects.with_label_values(&[error.code()]).inc();
    error
}

/// The authorizer's refusal, counted and logged (without the token).
fn auth_refusal(gw: &Gateway, error: &AuthError, origin: Option<&str>) -> HttpError {
    tracing::info!(
        reason = error.code(),
        status = error.status(),
        "connect refused"
    );
    refused(gw, HttpError::from(error).allow_origin(origin))
}

/// `GET /{stage}`.
pub async fn websocket(
    req: HttpRequest,
    body: web::Payload,
    stage: web::Path<String>,
    gw: web::Data<Arc<Gateway>>,
) -> Result<HttpResponse, HttpError> {
    let gw: Arc<Gateway> = gw.get_ref().clone();
    if *stage != gw.config.stage {
        return Err(refused(
            &gw,
            HttpError::new(
                StatusCode::NOT_FOUND,
                "unknown_stage",
                format!(
                    "there is no stage here by that name; connect to /{}",
                    gw.config.stage
                ),
            ),
        ));
    }
    if gw.draining.is_cancelled() {
        return Err(refused(
            &gw,
            HttpError::unavailable("draining", "this gateway is restarting; connect again"),
        ));
    }
    if !gw.is_accepting() {
        return Err(refused(
            &gw,
            HttpError::unavailable(
                "starting",
                "this gateway is starting; connect again in a second",
            ),
        ));
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if !gw.config.allowed_origins.allows(origin.as_deref()) {
        let error = AuthError::OriginNotAllowed(origin.unwrap_or_default());
        return Err(auth_refusal(&gw, &error, None));
    }
    let creds = credentials(&req).map_err(|e| refused(&gw, e))?;
    let Some(token) = creds.token else {
        return Err(auth_refusal(&gw, &AuthError::Missing, origin.as_deref()));
    };
    // Taken before the token is checked: a revocation from now on wins (session::open).
    let ticket = gw.auth.ticket();
    let identity = match gw.auth.authenticate(&token).await {
        Ok((identity, _path)) => identity,
        Err(error) => return Err(auth_refusal(&gw, &error, origin.as_deref())),
    };

    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_upgrade {
        // The verdict probe: the token is fine, but this is not a WebSocket handshake.
        let r = HttpResponse::build(StatusCode::UPGRADE_REQUIRED)
            .insert_header((header::UPGRADE, "websocket"))
            .json(serde_json::json!({"ok": true, "user_id": identity.user_id, "room_id": identity.room_id}));
        return Ok(with_cors(r, origin.as_deref()));
    }

    let source_ip = req
        .connection_info()
        .realip_remote_addr()
        .map(strip_port)
        .unwrap_or_default()
        .to_owned();
    let record = ConnectionRecord {
        connection_id: new_connection_id(),
        room_id: identity.room_id,
        user_id: identity.user_id,
        gateway_id: gw.record.gateway_id.clone(),
        connected_at: now_millis(),
        source_ip,
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(512).collect())
            .unwrap_or_default(),
    };
    let route_context = match &gw.routes {
        Some(routes) => match routes.connect(&record, &req).await {
            Ok(context) => context,
            Err(RouteError::Refused { status }) => {
                tracing::info!(status, "connect refused by the $connect route");
                return Err(refused(
                    &gw,
                    HttpError::new(
                        StatusCode::FORBIDDEN,
                        "connect_refused",
                        "the application's $connect route refused this connection",
                    )
                    .allow_origin(origin.as_deref()),
                ));
            }
            Err(error) => {
                tracing::warn!(%error, "the $connect route did not answer");
                return Err(refused(
                    &gw,
                    HttpError::new(
                        StatusCode::BAD_GATEWAY,
                        "connect_route_unavailable",
                        "the application's $connect route did not answer; connect again shortly",
                    )
                    .allow_origin(origin.as_deref()),
                ));
            }
        },
        None => None,
    };
    let admission = session::Admission {
        record,
        protocol: creds.modern.then_some(PROTOCOL),
        token_exp: identity.exp,
        since: creds.since,
        ticket,
        route_context,
    };
    session::open(gw.clone(), &req, body.into_inner(), admission)
        .await
        .map_err(|e| refused(&gw, e))
}

/// `OPTIONS /{stage}`: the CORS preflight of the verdict probe (it carries the token in
/// `Authorization`), answered for allowed origins only.
pub async fn preflight(req: HttpRequest, gw: web::Data<Arc<Gateway>>) -> HttpResponse {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    match origin {
        Some(o) if gw.config.allowed_origins.allows(Some(o)) => {
            let mut r = HttpResponse::NoContent()
                .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "GET"))
                .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, "Authorization"))
                .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
                .finish();
            r = with_cors(r, Some(o));
            r
        }
        _ => HttpResponse::Forbidden().finish(),
    }
}

/// `1.2.3.4:5` → `1.2.3.4`, `[::1]:5` → `::1`; bare addresses unchanged.
fn strip_port(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.split_once(':') {
        Some((host, port)) if !port.contains(':') => host,
        _ => addr,
    }
}

fn with_cors(mut response: HttpResponse, origin: Option<&str>) -> HttpResponse {
    if let Some(origin) = origin.and_then(|o| HeaderValue::from_str(o).ok()) {
        response
            .headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        response
            .headers_mut()
            .insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn token_comes_from_the_subprotocol_or_the_query() {
        let req = TestRequest::get()
            .uri("/production")
            .insert_header((
                header::SEC_WEBSOCKET_PROTOCOL,
                "hermes.v1, bearer.abc.def.ghi",
            ))
            .to_http_request();
        assert_eq!(
            credentials(&req).ok(),
            Some(Credentials {
                token: Some("abc.def.ghi".into()),
                modern: true,
                since: None,
            })
        );
        let req = TestRequest::get()
            .uri("/production?x=1&token=a%2Eb.c")
            .to_http_request();
        assert_eq!(
            credentials(&req).ok(),
            Some(Credentials {
                token: Some("a.b.c".into()),
                modern: false,
                since: None,
            })
        );
    }

    #[test]
    fn the_resume_position_comes_from_the_subprotocol_or_the_query() {
        let req = TestRequest::get()
            .uri("/production?since=q")
            .insert_header((
                header::SEC_WEBSOCKET_PROTOCOL,
                "hermes.v1, bearer.a.b.c, since.00000000000000010000000a",
            ))
            .to_http_request();
        let creds = credentials(&req).expect("valid");
        assert_eq!(creds.since.as_deref(), Some("00000000000000010000000a"));
        let req = TestRequest::get()
            .uri("/production?token=a.b.c&since=00000000000000010000000a")
            .insert_header((header::SEC_WEBSOCKET_PROTOCOL, "hermes.v1"))
            .to_http_request();
        let creds = credentials(&req).expect("valid");
        assert_eq!(creds.since.as_deref(), Some("00000000000000010000000a"));
        assert!(creds.modern);
    }

    #[test]
    fn ports_are_stripped_from_source_addresses() {
        assert_eq!(strip_port("1.2.3.4:5"), "1.2.3.4");
        assert_eq!(strip_port("[::1]:5"), "::1");
        assert_eq!(strip_port("::1"), "::1");
        assert_eq!(strip_port("10.0.0.1"), "10.0.0.1");
    }

    #[test]
    fn bearer_without_hermes_protocol_is_refused() {
        let req = TestRequest::get()
            .uri("/production")
            .insert_header((header::SEC_WEBSOCKET_PROTOCOL, "bearer.abc"))
            .to_http_request();
        let error = credentials(&req).expect_err("refused");
        assert_eq!(error.code(), "protocol_missing");
    }
}
