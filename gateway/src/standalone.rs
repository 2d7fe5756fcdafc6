//! Standalone-only routes on the public listener: the demo page and a demo token endpoint
//! (issuing tokens to anyone is only acceptable in a local demo). The browser client the
//! page loads is served in every mode (`crate::browser_client`).

use std::sync::Arc;

use actix_web::{HttpResponse, web};
use serde_json::Value;

use crate::error::HttpError;
use crate::state::Gateway;

/// The demo page.
pub const INDEX_HTML: &str = include_str!("../static/index.html");

/// `GET /`.
pub async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(INDEX_HTML)
}

/// `POST /demo/token` `{"user_id"?, "room_id"?}` → a token for the demo.
pub async fn demo_token(
    body: web::Bytes,
    gw: web::Data<Arc<Gateway>>,
) -> Result<HttpResponse, HttpError> {
    let map = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Map::new()
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(m)) => m,
            _ => return Err(HttpError::invalid("body must be a JSON object or empty")),
        }
    };
    let pick = |field: &str, default: String| -> Result<String, HttpError> {
        match map.get(field) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(HttpError::invalid(format!(
                "field `{field}` must be a string"
            ))),
        }
    };
    let suffix: String = hermes_shared::ids::new_connection_id()
        .chars()
        .take(6)
        .collect();
    let user_id = pick("user_id", format!("demo-{suffix}"))?;
    let room_id = pick("room_id", "demo".into())?;
    let issued = gw.auth.issue(&user_id, &room_id, None).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "token": issued.token,
        "user_id": user_id,
        "room_id": room_id,
        "stage": gw.config.stage,
        "expires_at": issued.expires_at,
    })))
}
