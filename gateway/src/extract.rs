//! Who may call: the admin key and the internal secret as actix extractors. A handler
//! that takes [`AdminKey`] or [`InternalSecret`] runs only for callers that presented it;
//! the others get the 401 of [`HttpError`]. Both compare in constant time.
//! [`ConnectionsCaller`] admits `@connections` calls: the admin key, or an AWS Signature
//! Version 4 ([`crate::sigv4`]), whose refusals are API Gateway's 403s.

use std::future::{Ready, ready};
use std::sync::Arc;
use std::time::SystemTime;

use actix_web::dev::Payload;
use actix_web::http::{StatusCode, header};
use actix_web::{FromRequest, HttpRequest, web};
use bytes::Bytes;
use futures_util::future::LocalBoxFuture;
use hermes_shared::wire::SECRET_HEADER;
use subtle::ConstantTimeEq;

use crate::error::HttpError;
use crate::sigv4;
use crate::state::Gateway;

/// The caller sent `Authorization: Bearer $HERMES_ADMIN_KEY`.
#[derive(Debug, Clone, Copy)]
pub struct AdminKey;

/// The caller sent `X-Hermes-Internal-Secret: $HERMES_INTERNAL_SECRET`.
#[derive(Debug, Clone, Copy)]
pub struct InternalSecret;

impl FromRequest for AdminKey {
    type Error = HttpError;
    type Future = Ready<Result<Self, HttpError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(gateway(req).and_then(|gw| admin_key(req, gw)))
    }
}

/// The admin key, or the 401 that asks for it.
fn admin_key(req: &HttpRequest, gw: &Gateway) -> Result<AdminKey, HttpError> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(p) if same(p.as_bytes(), gw.config.admin_key.as_bytes()) => Ok(AdminKey),
        _ => Err(HttpError::admin_key_required()),
    }
}

/// A caller of `@connections` that presented the admin key (`Authorization: Bearer`) or
/// signed the request with AWS Signature Version 4 by a key of `HERMES_SIGV4_CREDENTIALS`,
/// as the AWS SDKs' `ApiGatewayManagementApi` clients do. Carries the request body (at most
/// `HERMES_MAX_MESSAGE_BYTES`, 413 beyond), which a signature covers.
#[derive(Debug, Clone)]
pub struct ConnectionsCaller {
    pub body: Bytes,
}

impl FromRequest for ConnectionsCaller {
    type Error = HttpError;
    type Future = LocalBoxFuture<'static, Result<Self, HttpError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let mut payload = payload.take();
        Box::pin(async move {
            let gw = gateway(&req)?.clone();
            let signed = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .is_some_and(sigv4::is_sigv4);
            if !signed {
                admin_key(&req, &gw)?;
            }
            let limit = gw.config.limits.max_message_bytes;
            let payload = web::Payload::from_request(&req, &mut payload)
                .await
                .map_err(|e| HttpError::invalid(format!("cannot read the body: {e}")))?;
            let body = match payload.to_bytes_limited(limit).await {
                Ok(Ok(body)) => body,
                Ok(Err(e)) => return Err(HttpError::invalid(format!("cannot read the body: {e}"))),
                Err(_) => {
                    return Err(HttpError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        "the data exceeds the maximum message size",
                    ));
                }
            };
            if signed {
                verify_signature(&req, &gw, &body)?;
            }
            Ok(ConnectionsCaller { body })
        })
    }
}

/// Verifies the request's SigV4 signature; a refusal is API Gateway's 403. Neither the
/// signature nor a secret is logged.
fn verify_signature(req: &HttpRequest, gw: &Gateway, body: &[u8]) -> Result<(), HttpError> {
    let config = &gw.config.sigv4;
    if !config.enabled() {
        return Err(HttpError::aws(
            StatusCode::FORBIDDEN,
            "UnrecognizedClientException",
            "The security token included in the request is invalid: this gateway accepts no \
             signed requests (HERMES_SIGV4_CREDENTIALS is not set); use its admin key",
        ));
    }
    let headers = req
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let request = sigv4::Request {
        method: req.method().as_str(),
        path: req.path(),
        query: req.query_string(),
        headers,
        body,
    };
    match sigv4::verify(config, &request, SystemTime::now()) {
        Ok(access_key_id) => {
            tracing::debug!(%access_key_id, "signed @connections call");
            Ok(())
        }
        Err(refusal) => {
            tracing::debug!(
                aws_type = refusal.aws_type,
                "refused a signed @connections call"
            );
            Err(HttpError::aws(
                StatusCode::FORBIDDEN,
                refusal.aws_type,
                refusal.message,
            ))
        }
    }
}

impl FromRequest for InternalSecret {
    type Error = HttpError;
    type Future = Ready<Result<Self, HttpError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            gateway(req).and_then(|gw| match req.headers().get(SECRET_HEADER) {
                Some(p) if same(p.as_bytes(), gw.config.internal_secret.as_bytes()) => {
                    Ok(InternalSecret)
                }
                _ => Err(HttpError::internal_secret_required()),
            }),
        )
    }
}

fn gateway(req: &HttpRequest) -> Result<&Arc<Gateway>, HttpError> {
    req.app_data::<web::Data<Arc<Gateway>>>()
        .map(|data| data.get_ref())
        .ok_or_else(|| HttpError::internal("the gateway's state is not registered"))
}

/// Equal, in time that depends only on the lengths.
fn same(presented: &[u8], expected: &[u8]) -> bool {
    presented.len() == expected.len() && bool::from(presented.ct_eq(expected))
}
