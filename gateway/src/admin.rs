//! The admin API on the internal listener, `Authorization: Bearer $HERMES_ADMIN_KEY`:
//! tokens, publish, and API Gateway's `@connections` management API.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use hermes_shared::Error as SharedError;
use hermes_shared::ids::new_message_id;
use hermes_shared::wire::{DeliverAction, DeliverRequest, Frame, PublishMessage, Target, check_id};
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::close;
use crate::state::Gateway;

/// `{"error": {"code", "message"}}` with a status.
pub fn error(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status)
        .json(serde_json::json!({"error": {"code": code, "message": message}}))
}

/// API Gateway's error shape for `@connections` (what AWS SDKs parse).
fn gone(connection_id: &str) -> HttpResponse {
    HttpResponse::Gone().json(serde_json::json!({
        "__type": "GoneException",
        "message": format!("connection {connection_id} is not connected"),
    }))
}

/// Checks the admin bearer key in constant time. `None` means authorized.
pub fn check_admin(req: &HttpRequest, gw: &Gateway) -> Option<HttpResponse> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = presented.is_some_and(|p| {
        let expected = gw.config.admin_key.as_bytes();
        p.len() == expected.len() && bool::from(p.as_bytes().ct_eq(expected))
    });
    if ok {
        return None;
    }
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "send Authorization: Bearer <HERMES_ADMIN_KEY>",
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(r)
}

fn shared_error(e: &SharedError) -> HttpResponse {
    match e {
        SharedError::Invalid(m) => error(StatusCode::BAD_REQUEST, "invalid", m),
        SharedError::Overloaded { retry_after } => {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                &e.to_string(),
            );
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after.as_secs().max(1)),
            );
            r
        }
        SharedError::RegistryUnavailable { .. } | SharedError::GatewayUnreachable { .. } => {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                e.metric_label(),
                &e.to_string(),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(1));
            r
        }
        SharedError::Config(_) | SharedError::ConfigSource { .. } | SharedError::Crypto { .. } => {
            tracing::error!(error = %e, "admin request failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                e.metric_label(),
                "internal error",
            )
        }
    }
}

/// A 400 answer for an invalid body.
pub fn bad_request(message: &str) -> HttpResponse {
    error(StatusCode::BAD_REQUEST, "invalid", message)
}

fn parse_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("body must be a JSON object".into()),
        Err(e) => Err(format!("body is not valid JSON: {e}")),
    }
}

fn string_field(map: &serde_json::Map<String, Value>, field: &str) -> Result<String, String> {
    match map.get(field) {
        Some(Value::String(s)) => check_id(field, s)
            .map(|()| s.clone())
            .map_err(|e| e.to_string()),
        Some(_) => Err(format!("field `{field}` must be a string")),
        None => Err(format!("field `{field}` is required")),
    }
}

/// `POST /v1/tokens` `{"user_id","room_id","ttl_seconds"?}` → 201 `{"token","expires_at"}`.
pub async fn create_token(
    req: HttpRequest,
    body: web::Bytes,
    gw: web::Data<Arc<Gateway>>,
) -> HttpResponse {
    if let Some(denied) = check_admin(&req, &gw) {
        return denied;
    }
    let map = match parse_object(&body) {
        Ok(m) => m,
        Err(m) => return bad_request(&m),
    };
    let (user_id, room_id) = match (string_field(&map, "user_id"), string_field(&map, "room_id")) {
        (Ok(u), Ok(r)) => (u, r),
        (Err(m), _) | (_, Err(m)) => return bad_request(&m),
    };
    let ttl = match map.get("ttl_seconds") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(s) if (1..=31_536_000).contains(&s) => Some(Duration::from_secs(s)),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    "field `ttl_seconds` must be an integer between 1 and 31536000",
                );
            }
        },
    };
    match gw.auth.issue(&user_id, &room_id, ttl).await {
        Ok(issued) => HttpResponse::Created().json(serde_json::json!({
            "token": issued.token,
            "expires_at": issued.expires_at,
            "user_id": user_id,
            "room_id": room_id,
        })),
        Err(e) => shared_error(&e),
    }
}

/// `DELETE /v1/tokens/{room_id}/{user_id}`: revokes the token and closes that user's
/// sockets in that room on every replica (close code 4003).
pub async fn delete_token(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    gw: web::Data<Arc<Gateway>>,
) -> HttpResponse {
    if let Some(denied) = check_admin(&req, &gw) {
        return denied;
    }
    let (room_id, user_id) = path.into_inner();
    let existed = match gw.auth.revoke(&user_id, &room_id).await {
        Ok(e) => e,
        Err(e) => return shared_error(&e),
    };
    let request = DeliverRequest {
        id: None,
        target: Target::User {
            user_id: user_id.clone(),
            room_id: Some(room_id.clone()),
        },
        exclude_connection_id: None,
        published_at: None,
        action: DeliverAction::Revoke { user_id, room_id },
    };
    match gw.router.broadcast(request).await {
        Ok(outcome) if outcome.failed.is_empty() => {}
        Ok(outcome) => {
            tracing::warn!(failed = ?outcome.failed, "revocation did not reach every gateway; their caches expire on their own");
        }
        Err(e) => return shared_error(&e),
    }
    if existed {
        HttpResponse::NoContent().finish()
    } else {
        error(
            StatusCode::NOT_FOUND,
            "token_not_found",
            "no token was registered for this user and room",
        )
    }
}

/// `POST /v1/publish`: a queue-message body → 202 with the routing outcome.
pub async fn publish(
    req: HttpRequest,
    body: web::Bytes,
    gw: web::Data<Arc<Gateway>>,
) -> HttpResponse {
    if let Some(denied) = check_admin(&req, &gw) {
        return denied;
    }
    let message = match PublishMessage::parse(&body) {
        Ok(m) => m,
        Err(e) => return shared_error(&e),
    };
    match gw.router.publish(&message).await {
        Ok(outcome) if outcome.failed.is_empty() => HttpResponse::Accepted().json(outcome),
        Ok(outcome) => HttpResponse::BadGateway().json(outcome),
        Err(e) => shared_error(&e),
    }
}

fn stage_ok(gw: &Gateway, stage: Option<&str>) -> Option<HttpResponse> {
    match stage {
        Some(s) if s != gw.config.stage => Some(error(
            StatusCode::NOT_FOUND,
            "unknown_stage",
            &format!(
                "there is no stage here by that name; use /{}",
                gw.config.stage
            ),
        )),
        _ => None,
    }
}

/// The admin key, then the stage of `/{stage}/@connections/{id}`. `None`: go ahead.
fn check_connections_call(
    req: &HttpRequest,
    gw: &Gateway,
    path: &ConnectionPath,
) -> Option<HttpResponse> {
    check_admin(req, gw).or_else(|| stage_ok(gw, path.stage.as_deref()))
}

/// Path parameters of `/@connections/{id}` and `/{stage}/@connections/{id}`.
#[derive(serde::Deserialize)]
pub struct ConnectionPath {
    stage: Option<String>,
    id: String,
}

/// `POST @connections/{id}`: the body is sent as-is as a text frame.
pub async fn post_to_connection(
    req: HttpRequest,
    path: web::Path<ConnectionPath>,
    body: web::Bytes,
    gw: web::Data<Arc<Gateway>>,
) -> HttpResponse {
    if let Some(refused) = check_connections_call(&req, &gw, &path) {
        return refused;
    }
    if body.len() > gw.config.limits.max_message_bytes {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the data exceeds the maximum message size",
        );
    }
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid",
            "the data must be UTF-8 text",
        );
    };
    let request = DeliverRequest {
        id: Some(new_message_id()),
        target: Target::Connections(vec![path.id.clone()]),
        exclude_connection_id: None,
        published_at: Some(hermes_shared::ids::now_millis()),
        action: DeliverAction::Send {
            frame: Frame::from_text(text.to_owned()),
        },
    };
    connection_outcome(&gw, &path.id, request, HttpResponse::Ok().finish()).await
}

/// `DELETE @connections/{id}`: disconnects the client (close code 4004).
pub async fn delete_connection(
    req: HttpRequest,
    path: web::Path<ConnectionPath>,
    gw: web::Data<Arc<Gateway>>,
) -> HttpResponse {
    if let Some(refused) = check_connections_call(&req, &gw, &path) {
        return refused;
    }
    let request = DeliverRequest {
        id: None,
        target: Target::Connections(vec![path.id.clone()]),
        exclude_connection_id: None,
        published_at: None,
        action: DeliverAction::Close {
            code: close::DISCONNECTED,
            reason: "disconnected by the server".into(),
        },
    };
    connection_outcome(&gw, &path.id, request, HttpResponse::NoContent().finish()).await
}

async fn connection_outcome(
    gw: &Gateway,
    id: &str,
    request: DeliverRequest,
    success: HttpResponse,
) -> HttpResponse {
    match gw.router.route(request).await {
        Ok(o) if o.delivered > 0 => success,
        Ok(o) if !o.failed.is_empty() => error(
            StatusCode::BAD_GATEWAY,
            "gateway_unreachable",
            "the gateway holding this connection did not answer; retry",
        ),
        Ok(_) => gone(id),
        Err(e) => shared_error(&e),
    }
}

/// `GET @connections/{id}`: `{"connectedAt","identity":{"sourceIp","userAgent"},"lastActiveAt"}`.
pub async fn get_connection(
    req: HttpRequest,
    path: web::Path<ConnectionPath>,
    gw: web::Data<Arc<Gateway>>,
) -> HttpResponse {
    if let Some(refused) = check_connections_call(&req, &gw, &path) {
        return refused;
    }
    match gw.router.connection_info(&path.id).await {
        Ok(Some(info)) => HttpResponse::Ok().json(info),
        Ok(None) => gone(&path.id),
        Err(e) => shared_error(&e),
    }
}
