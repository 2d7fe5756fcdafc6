//! `HttpError`: every refusal the gateway answers over HTTP, as one `ResponseError`.
//!
//! The body is `{"error": {"code", "message"}}` (the code is what a developer greps for,
//! the message what they act on), except on the `@connections` API, which answers in API
//! Gateway's shape (`{"__type", "message"}`) because that is what AWS SDKs parse.

use std::borrow::Cow;
use std::fmt;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use hermes_shared::Error as SharedError;
use hermes_shared::auth::AuthError;

/// An HTTP error answer (boxed: results that carry it stay small on the success path).
#[derive(Debug, Clone)]
pub struct HttpError(Box<Answer>);

#[derive(Debug, Clone)]
struct Answer {
    status: StatusCode,
    code: Cow<'static, str>,
    message: String,
    /// `Retry-After`, seconds.
    retry_after: Option<u64>,
    /// `WWW-Authenticate: Bearer` (a missing or wrong admin key).
    bearer_challenge: bool,
    /// `Access-Control-Allow-Origin` (refusals a browser's script must be able to read).
    allow_origin: Option<HeaderValue>,
    /// API Gateway's `__type` instead of Hermes's error object.
    aws_type: Option<&'static str>,
}

impl HttpError {
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Self(Box::new(Answer {
            status,
            code: code.into(),
            message: message.into(),
            retry_after: None,
            bearer_challenge: false,
            allow_origin: None,
            aws_type: None,
        }))
    }

    /// 400 `invalid`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    /// 503 with `Retry-After: 1`.
    pub fn unavailable(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message).retry_after(1)
    }

    /// 500 `internal`; the details belong in the log, not in the answer.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// 401 for a missing or wrong admin key.
    pub fn admin_key_required() -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <HERMES_ADMIN_KEY>",
        );
        e.0.bearer_challenge = true;
        e
    }

    /// 401 for a missing or wrong internal secret.
    pub fn internal_secret_required() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong X-Hermes-Internal-Secret",
        )
    }

    /// An error in API Gateway's shape: `x-amzn-ErrorType: <aws_type>` and
    /// `{"__type", "message"}`, which the AWS SDKs turn into their typed exceptions.
    pub fn aws(status: StatusCode, aws_type: &'static str, message: impl Into<String>) -> Self {
        let mut e = Self::new(status, aws_type, message);
        e.0.aws_type = Some(aws_type);
        e
    }

    /// API Gateway's 410 for a connection that is not there.
    pub fn gone(connection_id: &str) -> Self {
        let mut e = Self::aws(
            StatusCode::GONE,
            "GoneException",
            format!("connection {connection_id} is not connected"),
        );
        e.0.code = "gone".into();
        e
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.0.retry_after = Some(seconds);
        self
    }

    /// Lets a page from `origin` read the answer (when `origin` is a valid header value).
    pub fn allow_origin(mut self, origin: Option<&str>) -> Self {
        self.0.allow_origin = origin.and_then(|o| HeaderValue::from_str(o).ok());
        self
    }

    /// The machine-readable code (also the metric label of refused connects).
    pub fn code(&self) -> &str {
        &self.0.code
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = &self.0;
        write!(f, "{} {}: {}", a.status.as_u16(), a.code, a.message)
    }
}

impl ResponseError for HttpError {
    fn status_code(&self) -> StatusCode {
        self.0.status
    }

    fn error_response(&self) -> HttpResponse {
        let a = &self.0;
        let mut response = HttpResponse::build(a.status);
        if let Some(secs) = a.retry_after {
            response.insert_header((header::RETRY_AFTER, HeaderValue::from(secs)));
        }
        if a.bearer_challenge {
            response.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        if let Some(origin) = &a.allow_origin {
            response
                .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()))
                .insert_header((header::VARY, HeaderValue::from_static("Origin")));
        }
        match a.aws_type {
            Some(aws_type) => {
                response.insert_header(("x-amzn-ErrorType", aws_type));
                response.json(serde_json::json!({"__type": aws_type, "message": a.message}))
            }
            None => {
                response.json(serde_json::json!({"error": {"code": a.code, "message": a.message}}))
            }
        }
    }
}

impl From<SharedError> for HttpError {
    fn from(e: SharedError) -> Self {
        match &e {
            SharedError::Invalid(m) => Self::invalid(m.clone()),
            SharedError::TooLarge { .. } => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                e.metric_label(),
                format!("{e} (HERMES_MAX_MESSAGE_BYTES)"),
            ),
            // Another gateway refused this one's request for good (its secret, say).
            SharedError::GatewayRejected { .. } => {
                Self::new(StatusCode::BAD_GATEWAY, e.metric_label(), e.to_string())
            }
            SharedError::Overloaded { retry_after } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", e.to_string())
                    .retry_after(retry_after.as_secs().max(1))
            }
            SharedError::RegistryUnavailable { .. } | SharedError::GatewayUnreachable { .. } => {
                Self::unavailable(e.metric_label(), e.to_string())
            }
            SharedError::Config(_)
            | SharedError::ConfigSource { .. }
            | SharedError::Crypto { .. } => {
                tracing::error!(error = %e, "request failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    e.metric_label(),
                    "internal error",
                )
            }
        }
    }
}

impl From<&AuthError> for HttpError {
    fn from(e: &AuthError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let error = Self::new(status, e.code(), e.to_string());
        match e.retry_after() {
            Some(secs) => error.retry_after(secs),
            None => error,
        }
    }
}

#[cfg(test)]
mod tests {
    use actix_web::body::MessageBody;

    use super::*;

    fn body(e: &HttpError) -> serde_json::Value {
        let bytes = e
            .error_response()
            .into_body()
            .try_into_bytes()
            .unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or_default()
    }

    #[test]
    fn an_error_answers_its_status_code_message_and_headers() {
        let e = HttpError::unavailable("draining", "connect again").allow_origin(Some("https://a"));
        let r = e.error_response();
        assert_eq!(r.status(), 503);
        assert_eq!(
            r.headers().get(header::RETRY_AFTER).map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        assert_eq!(
            r.headers()
                .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .map(|v| v.as_bytes()),
            Some(&b"https://a"[..])
        );
        assert_eq!(
            body(&e),
            serde_json::json!({"error": {"code": "draining", "message": "connect again"}})
        );
    }

    #[test]
    fn gone_speaks_api_gateways_error_shape() {
        let e = HttpError::gone("c1");
        let r = e.error_response();
        assert_eq!(r.status(), 410);
        assert_eq!(
            r.headers()
                .get("x-amzn-errortype")
                .map(HeaderValue::as_bytes),
            Some(&b"GoneException"[..])
        );
        assert_eq!(body(&e)["__type"], "GoneException");
        assert_eq!(body(&e)["message"], "connection c1 is not connected");
        assert_eq!(e.code(), "gone");
    }

    #[test]
    fn shared_errors_map_to_what_a_caller_can_do() {
        let cases = [
            (SharedError::Invalid("bad".into()), 400, None),
            (
                SharedError::Overloaded {
                    retry_after: std::time::Duration::from_millis(10),
                },
                503,
                Some("1"),
            ),
            (SharedError::registry_answer("x"), 503, Some("1")),
            (SharedError::crypto("x", std::fmt::Error), 500, None),
            (
                SharedError::TooLarge {
                    field: "data",
                    size: 2,
                    limit: 1,
                },
                413,
                None,
            ),
            (
                SharedError::rejected("g", 401, "401 Unauthorized"),
                502,
                None,
            ),
        ];
        for (error, status, retry) in cases {
            let r = HttpError::from(error).error_response();
            assert_eq!(r.status(), status);
            assert_eq!(
                r.headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()),
                retry
            );
        }
    }
}
