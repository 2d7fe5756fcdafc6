//! `GET /internal/v1/deliver-stream`: a router's deliver stream (internal listener only,
//! shared-secret header, subprotocol `hermes.deliver.v1`; the frames and names are in
//! `hermes_shared::wire`, the router's end of the stream is described in
//! `hermes_shared::router`'s links).
//!
//! Each text frame is a batch of deliver requests under a sequence number; it is delivered
//! to this gateway's sockets at once (delivery never blocks) and answered with one frame
//! under the same number, in order. A frame that is not a valid batch closes the stream
//! with 1007: both ends are Hermes, so it is a bug or a version mismatch, and the router
//! fails the requests it had in flight (they are retried as any failed delivery is).

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use hermes_shared::wire::{DELIVER_BATCH_MAX, DELIVER_STREAM_PROTOCOL as PROTOCOL};

use crate::close;
use crate::error::HttpError;
use crate::extract::InternalSecret;
use crate::state::Gateway;
use crate::ws::{self, Accepted, Inbound, Incoming, Outbox, SocketSettings};

/// Answer frames queued for a router that does not read them before the stream is closed.
const REPLY_QUEUE: usize = 1024;
/// How long a closed stream's router has to read the close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET /internal/v1/deliver-stream`.
pub async fn deliver_stream(
    caller: Result<InternalSecret, HttpError>,
    req: HttpRequest,
    body: web::Payload,
    gw: web::Data<Arc<Gateway>>,
) -> Result<HttpResponse, HttpError> {
    let gw: Arc<Gateway> = gw.get_ref().clone();
    gw.deliveries.authorized(caller)?;
    let offered = req
        .headers()
        .get_all(actix_web::http::header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == PROTOCOL);
    if !offered {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "protocol_missing",
            format!("offer the {PROTOCOL} subprotocol"),
        ));
    }
    let max_message = (gw.config.limits.max_message_bytes * 2 + 64 * 1024) * DELIVER_BATCH_MAX;
    let Accepted {
        response,
        outbox,
        incoming,
    } = ws::accept(
        &req,
        body.into_inner(),
        SocketSettings {
            protocol: Some(PROTOCOL),
            queue: REPLY_QUEUE,
            max_message,
            metrics: None,
        },
    )?;
    actix_web::rt::spawn(serve(gw, incoming, outbox));
    Ok(response)
}

/// Answers batches until the router closes the stream, it breaks, or the gateway stops.
async fn serve(gw: Arc<Gateway>, mut incoming: Incoming, outbox: Outbox) {
    let end: Option<(u16, String)> = loop {
        tokio::select! {
            biased;
            () = gw.stopping.cancelled() => {
                break Some((close::GOING_AWAY, "gateway stopping".into()));
            }
            () = outbox.gone() => break None,
            message = incoming.next() => match message {
                None => break None,
                Some(Err(e)) => break e.close(),
                Some(Ok(Inbound::Text(text))) => match gw.deliveries.answer_frame(&text) {
                    Ok(reply) => {
                        if outbox.push(ws::text_frame(&reply), None).is_err() {
                            break Some((close::TRY_AGAIN_LATER, "answers are not read".into()));
                        }
                    }
                    Err(reason) => {
                        tracing::warn!(%reason, "invalid frame on a deliver stream; closing it");
                        break Some((close::INVALID_PAYLOAD, reason));
                    }
                },
                Some(Ok(Inbound::Binary(_))) => {
                    break Some((close::UNSUPPORTED_DATA, "the deliver stream carries text frames".into()));
                }
                Some(Ok(Inbound::Ping(bytes))) => {
                    let _ = outbox.pong(&bytes);
                }
                Some(Ok(Inbound::Pong(_))) => {}
                Some(Ok(Inbound::Close(_))) => break Some((close::NORMAL, String::new())),
            },
        }
    };
    if let Some((code, reason)) = end {
        outbox.close(Some(code), &reason);
        if tokio::time::timeout(CLOSE_TIMEOUT, outbox.gone())
            .await
            .is_err()
        {
            outbox.abort();
        }
    }
}
