//! Who may call: the admin key and the internal secret as actix extractors. A handler
//! that takes [`AdminKey`] or [`InternalSecret`] runs only for callers that presented it;
//! the others get the 401 of [`HttpError`]. Both compare in constant time.

use std::future::{Ready, ready};
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use hermes_shared::wire::SECRET_HEADER;
use subtle::ConstantTimeEq;

use crate::error::HttpError;
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
        ready(gateway(req).and_then(|gw| {
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
        }))
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
