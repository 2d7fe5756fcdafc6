//! The admin API on the internal listener, `Authorization: Bearer $HERMES_ADMIN_KEY`:
//! tokens, publish, and API Gateway's `@connections` management API (which also accepts
//! AWS Signature Version 4: `ConnectionsCaller`).

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use hermes_shared::ids::new_message_id;
use hermes_shared::wire::{
    DeliverAction, DeliverRequest, Frame, PublishMessage, Target, check_id, id,
};
use serde_json::Value;

use crate::close;
use crate::error::HttpError;
use crate::extract::{AdminKey, ConnectionsCaller};
use crate::state::Gateway;

fn parse_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("body must be a JSON object".into()),
        Err(e) => Err(format!("body is not valid JSON: {e}")),
    }
}

/// An id field: a string, or an integer read as its decimal string (`wire::id`).
fn id_field(map: &serde_json::Map<String, Value>, field: &str) -> Result<String, String> {
    match map.get(field) {
        Some(value) => match id::from_value(value) {
            Some(s) => check_id(field, &s).map(|()| s).map_err(|e| e.to_string()),
            None => Err(format!(
                "field `{field}` must be {}, not {}",
                id::ID_EXPECTED,
                id::describe(value)
            )),
        },
        None => Err(format!("field `{field}` is required")),
    }
}

/// `POST /v1/tokens` `{"user_id","room_id","ttl_seconds"?}` → 201 `{"token","expires_at"}`.
pub async fn create_token(
    _: AdminKey,
    body: web::Bytes,
    gw: web::Data<Arc<Gateway>>,
) -> Result<HttpResponse, HttpError> {
    let map = parse_object(&body).map_err(HttpError::invalid)?;
    let user_id = id_field(&map, "user_id").map_err(HttpError::invalid)?;
    let room_id = id_field(&map, "room_id").map_err(HttpError::invalid)?;
    let ttl = match map.get("ttl_seconds") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(s) if (1..=31_536_000).contains(&s) => Some(Duration::from_secs(s)),
            _ => {
                return Err(HttpError::invalid(
                    "field `ttl_seconds` must be an integer between 1 and 31536000",
                ));
            }
        },
    };
    let issued = gw.auth.issue(&user_id, &room_id, ttl).await?;
    if issued.replaced {
        // The row held another token (another passcode): every replica drops the verdicts
        // it cached for it. Best effort: a replica not reached keeps them at most
        // HERMES_AUTH_CACHE_TTL_SECONDS, and its connects of the old token then fail the
        // second layer.
        let request = token_broadcast(
            &user_id,
            &room_id,
            DeliverAction::Forget {
                user_id: user_id.clone(),
                room_id: room_id.clone(),
            },
        );
        match gw.router.broadcast(request).await {
            Ok(outcome) if outcome.failed.is_empty() => {}
            Ok(outcome) => {
                tracing::warn!(failed = ?outcome.failed, "a replaced token's cached verdicts were not dropped on every gateway")
            }
            Err(error) => {
                tracing::warn!(%error, "cannot tell the gateways that a token was replaced")
            }
        }
    }
    Ok(HttpResponse::Created().json(serde_json::json!({
        "token": issued.token,
        "expires_at": issued.expires_at,
        "user_id": user_id,
        "room_id": room_id,
    })))
}

/// What every gateway is told about (user, room)'s token: `action` for that user's sockets
/// in that room.
fn token_broadcast(user_id: &str, room_id: &str, action: DeliverAction) -> DeliverRequest {
    DeliverRequest {
        id: None,
        target: Target::User {
            user_id: user_id.to_owned(),
            room_id: Some(room_id.to_owned()),
        },
        exclude_connection_id: None,
        published_at: None,
        action,
        pos: None,
        expires_at: None,
    }
}

/// `DELETE /v1/tokens/{room_id}/{user_id}`: revokes the token and closes that user's
/// sockets in that room on every replica (close code 4003).
pub async fn delete_token(
    _: AdminKey,
    path: web::Path<(String, String)>,
    gw: web::Data<Arc<Gateway>>,
) -> Result<HttpResponse, HttpError> {
    let (room_id, user_id) = path.into_inner();
    let existed = gw.auth.revoke(&user_id, &room_id).await?;
    let request = token_broadcast(
        &user_id,
        &room_id,
        DeliverAction::Revoke {
            user_id: user_id.clone(),
            room_id: room_id.clone(),
        },
    );
    let outcome = gw.router.broadcast(request).await?;
    if !outcome.failed.is_empty() {
        // The token row is gone, so no new connect passes anywhere; but the replicas that
        // were not reached still hold its sockets and cached verdicts: say which, so the
        // caller can call again (a revocation is idempotent).
        tracing::warn!(failed = ?outcome.failed, "revocation did not reach every gateway");
        return Ok(HttpResponse::BadGateway().json(serde_json::json!({
            "error": {
                "code": "revocation_incomplete",
                "message": "the token is deleted, but these gateways did not confirm that they closed its sockets; call again",
            },
            "failed": outcome.failed,
        })));
    }
    if existed {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "token_not_found",
            "no token was registered for this user and room",
        ))
    }
}

/// `POST /v1/publish`: a queue-message body → 202 with the routing outcome; 413 when its
/// `data` is longer than `HERMES_MAX_MESSAGE_BYTES` (the body than twice that and 64 KiB).
pub async fn publish(
    _: AdminKey,
    payload: web::Payload,
    gw: web::Data<Arc<Gateway>>,
) -> Result<HttpResponse, HttpError> {
    let max = gw.config.limits.max_message_bytes;
    let limit = crate::server::admin_body_limit(max);
    let body = match payload.to_bytes_limited(limit).await {
        Ok(Ok(body)) => body,
        Err(_) => {
            return Err(HttpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the body is larger than {limit} bytes; `data` may be at most {max} bytes \
                     (HERMES_MAX_MESSAGE_BYTES)"
                ),
            ));
        }
        Ok(Err(e)) => return Err(HttpError::invalid(format!("cannot read the body: {e}"))),
    };
    let message = PublishMessage::parse(&body, max)?;
    let outcome = gw.router.publish(&message).await?;
    Ok(
        if outcome.failed.is_empty() && outcome.rejected.is_empty() {
            HttpResponse::Accepted().json(outcome)
        } else {
            HttpResponse::BadGateway().json(outcome)
        },
    )
}

/// The stage of `/{stage}/@connections/{id}` must be this gateway's.
fn check_stage(gw: &Gateway, path: &ConnectionPath) -> Result<(), HttpError> {
    match path.stage.as_deref() {
        Some(s) if s != gw.config.stage => Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "unknown_stage",
            format!(
                "there is no stage here by that name; use /{}",
                gw.config.stage
            ),
        )),
        _ => Ok(()),
    }
}

/// Path parameters of `/@connections/{id}` and `/{stage}/@connections/{id}`.
#[derive(serde::Deserialize)]
pub struct ConnectionPath {
    stage: Option<String>,
    id: String,
}

/// `POST @connections/{id}`: the body is sent as-is as a text frame.
pub async fn post_to_connection(
    caller: ConnectionsCaller,
    path: web::Path<ConnectionPath>,
    gw: web::Data<Arc<Gateway>>,
) -> Result<HttpResponse, HttpError> {
    check_stage(&gw, &path)?;
    let text = std::str::from_utf8(&caller.body)
        .map_err(|_| HttpError::invalid("the data must be UTF-8 text"))?;
    let request = DeliverRequest {
        id: Some(new_message_id()),
        target: Target::Connections(vec![path.id.clone()]),
        exclude_connection_id: None,
        published_at: Some(hermes_shared::ids::now_millis()),
        action: DeliverAction::Send {
            frame: Frame::from_text(text.to_owned()),
            raw: true,
        },
        pos: None,
        expires_at: None,
    };
    connection_outcome(&gw, &path.id, request, HttpResponse::Ok().finish()).await
}

/// `DELETE @connections/{id}`: disconnects the client (close code 4004).
pub async fn delete_connection(
    _: ConnectionsCaller,
    path: web::Path<ConnectionPath>,
    gw: web::Data<Arc<Gateway>>,
) -> Result<HttpResponse, HttpError> {
    check_stage(&gw, &path)?;
    let request = DeliverRequest {
        id: None,
        target: Target::Connections(vec![path.id.clone()]),
        exclude_connection_id: None,
        published_at: None,
        action: DeliverAction::Close {
            code: close::DISCONNECTED,
            reason: "disconnected by the server".into(),
        },
        pos: None,
        expires_at: None,
    };
    connection_outcome(&gw, &path.id, request, HttpResponse::NoContent().finish()).await
}

async fn connection_outcome(
    gw: &Gateway,
    id: &str,
    request: DeliverRequest,
    success: HttpResponse,
) -> Result<HttpResponse, HttpError> {
    let outcome = gw.router.route(request).await?;
    if outcome.delivered > 0 {
        Ok(success)
    } else if !outcome.failed.is_empty() {
        Err(HttpError::new(
            StatusCode::BAD_GATEWAY,
            "gateway_unreachable",
            "the gateway holding this connection did not answer; retry",
        ))
    } else {
        Err(HttpError::gone(id))
    }
}

/// `GET @connections/{id}`: `{"connectedAt","identity":{"sourceIp","userAgent"},"lastActiveAt"}`.
pub async fn get_connection(
    _: ConnectionsCaller,
    path: web::Path<ConnectionPath>,
    gw: web::Data<Arc<Gateway>>,
) -> Result<HttpResponse, HttpError> {
    check_stage(&gw, &path)?;
    match gw.router.connection_info(&path.id).await? {
        Some(info) => Ok(HttpResponse::Ok().json(info)),
        None => Err(HttpError::gone(&path.id)),
    }
}
