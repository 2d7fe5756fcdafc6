//! A request that asks for a WebSocket (`Upgrade: websocket`) on a route that is not a
//! WebSocket endpoint is refused with 400 before its handler runs.
//!
//! actix-http reads the body of such a request as the rest of the connection (what follows
//! a successful upgrade), whatever its `Content-Length`: a handler that reads its body would
//! wait until the client closes, so any client could hold a connection and a task for as
//! long as it likes, before its credentials were even looked at. The WebSocket endpoints
//! (the public `GET /{stage}` and the internal deliver stream) are not wrapped, or pass.

use actix_web::ResponseError;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::UPGRADE;
use actix_web::middleware::Next;
use hermes_shared::wire::DELIVER_STREAM_PATH;

use crate::error::HttpError;

/// Whether a request asks for a WebSocket upgrade, as actix-http's decoder reads it.
pub fn asks_for_websocket(req: &ServiceRequest) -> bool {
    req.headers().get_all(UPGRADE).any(|v| {
        v.to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
    })
}

/// The middleware: 400 `invalid` for an upgrade anywhere but the deliver stream.
pub async fn refuse(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    if asks_for_websocket(&req) && req.path() != DELIVER_STREAM_PATH {
        let refusal = HttpError::invalid(format!(
            "{} {} is not a WebSocket endpoint: send it without `Upgrade: websocket`",
            req.method(),
            req.path()
        ));
        return Ok(req
            .into_response(refusal.error_response())
            .map_into_right_body());
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}
