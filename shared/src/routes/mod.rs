//! Route integrations' calls, shared by the gateway (every route) and the consumer (the
//! reaper's `$disconnect` for the sockets of a gateway that died): API Gateway's WebSocket
//! proxy event, its signature, the HTTP call with its retries, and the `$disconnect` queue
//! (docs/routes.md, decision 0032).
//!
//! Every request is signed: `X-Hermes-Signature: sha256=<hex HMAC-SHA-256 of the body under
//! HERMES_ROUTE_SECRET>`; the event's `requestContext.requestTimeEpoch` lets a backend
//! refuse old ones. Calls share `HERMES_ROUTE_CONCURRENCY` slots; each attempt has
//! `HERMES_ROUTE_TIMEOUT_MS`; an unreachable backend, a 5xx or a 429 is tried again
//! `HERMES_ROUTE_RETRIES` times with a doubling backoff.

pub mod config;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{Map, Value, json};
use sha2::Sha256;
use tokio::sync::Semaphore;

pub use config::RoutesConfig;

use crate::ids::{new_message_id, now_millis};
use crate::metrics::Metrics;
use crate::registry::ConnectionRecord;

/// The signature header of every route request.
pub const SIGNATURE_HEADER: &str = "X-Hermes-Signature";
/// The largest answer read from a backend (API Gateway's frame limit).
pub const MAX_ANSWER_BYTES: usize = 128 * 1024;
/// `$disconnect` events waiting at once; beyond, new ones are dropped and logged.
pub const MAX_PENDING_DISCONNECTS: usize = 100_000;
/// The longest wait between two attempts at a `$disconnect`.
const MAX_DISCONNECT_BACKOFF: Duration = Duration::from_secs(30);

/// What a route call came to.
#[derive(Debug)]
pub enum RouteError {
    /// The backend answered, not 2xx (or a Lambda-style `statusCode` that is not 2xx).
    Refused { status: u16 },
    /// No answer within the timeout after the retries, unreachable, or an answer too large.
    Failed(String),
    /// No free slot.
    Busy,
}

impl RouteError {
    pub fn label(&self) -> &'static str {
        match self {
            RouteError::Refused { .. } => "refused",
            RouteError::Failed(_) => "failed",
            RouteError::Busy => "busy",
        }
    }
}

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteError::Refused { status } => write!(f, "the route's backend answered {status}"),
            RouteError::Failed(why) => write!(f, "the route's backend did not answer: {why}"),
            RouteError::Busy => write!(f, "too many route calls in flight"),
        }
    }
}

/// The connection an event is about.
#[derive(Clone)]
pub struct Caller {
    pub record: ConnectionRecord,
    /// What the `$connect` answer set, as JSON (an object).
    pub context: Option<Arc<str>>,
}

/// Calls the routes' backends.
pub struct RouteClient {
    config: RoutesConfig,
    stage: String,
    http: reqwest::Client,
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl RouteClient {
    /// `None` when no route is configured.
    pub fn new(config: RoutesConfig, stage: &str, metrics: Arc<Metrics>) -> Option<Arc<Self>> {
        if !config.any() {
            return None;
        }
        Some(Arc::new(Self {
            http: http_client(&config)?,
            slots: Arc::new(Semaphore::new(config.concurrency)),
            config,
            stage: stage.to_owned(),
            metrics,
        }))
    }

    pub fn config(&self) -> &RoutesConfig {
        &self.config
    }

    /// The calls' slots (`HERMES_ROUTE_CONCURRENCY`).
    pub fn slots(&self) -> &Arc<Semaphore> {
        &self.slots
    }

    pub fn count(&self, route: &str, result: &str) {
        self.metrics
            .route_calls
            .with_label_values(&[route, result])
            .inc();
    }

    /// API Gateway's WebSocket proxy event for `caller`, without the event's own fields.
    pub fn event(&self, caller: &Caller, route_key: &str, event_type: &str) -> Value {
        let r = &caller.record;
        let mut authorizer = Map::new();
        if let Some(context) = caller
            .context
            .as_deref()
            .and_then(|c| serde_json::from_str::<Map<String, Value>>(c).ok())
        {
            authorizer.extend(context);
        }
        authorizer.insert("principalId".into(), Value::String(r.user_id.clone()));
        authorizer.insert("user_id".into(), Value::String(r.user_id.clone()));
        authorizer.insert("room_id".into(), Value::String(r.room_id.clone()));
        json!({
            "requestContext": {
                "routeKey": route_key,
                "eventType": event_type,
                "messageDirection": "IN",
                "connectionId": r.connection_id,
                "connectedAt": r.connected_at,
                "requestTimeEpoch": now_millis(),
                "requestId": new_message_id(),
                "stage": self.stage,
                "apiId": "hermes",
                "identity": {"sourceIp": r.source_ip, "userAgent": r.user_agent},
                "authorizer": authorizer,
            },
            "isBase64Encoded": false,
        })
    }

    /// POSTs `event` to `url`, signed; the answer's JSON on 2xx (`None` for an empty body;
    /// a body that is not JSON as `{"raw": text}`). Tries again `retries` times after an
    /// unreachable backend, a timeout, a 5xx or a 429. Counted and timed under `route`.
    pub async fn call(
        &self,
        route: &str,
        url: &str,
        event: &Value,
        retries: u32,
    ) -> Result<Option<Value>, RouteError> {
        self.call_with(&self.http, route, url, event, retries).await
    }

    /// [`RouteClient::call`] with `http`.
    async fn call_with(
        &self,
        http: &reqwest::Client,
        route: &str,
        url: &str,
        event: &Value,
        retries: u32,
    ) -> Result<Option<Value>, RouteError> {
        let started = Instant::now();
        let body = event.to_string();
        let signature = sign(&self.config.secret, body.as_bytes());
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 0;
        let result = loop {
            let sent = http
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, &signature)
                .header("X-Hermes-Route", route)
                .body(body.clone())
                .send()
                .await;
            let outcome = match sent {
                Ok(response) => answer(response).await,
                Err(e) => Err(RouteError::Failed(without_url(&e))),
            };
            let retry = match &outcome {
                Err(RouteError::Failed(_)) => true,
                Err(RouteError::Refused { status }) => *status == 429 || *status >= 500,
                _ => false,
            };
            if !retry || attempt >= retries {
                break outcome;
            }
            attempt += 1;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        };
        self.metrics
            .route_duration
            .with_label_values(&[route])
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => self.count(route, "ok"),
            Err(e) => {
                self.count(route, e.label());
                tracing::warn!(route, error = %e, "route call failed");
            }
        }
        result
    }
}

/// The `$disconnect` queue: each event is sent, again with a backoff up to 30 s, until a
/// backend takes it (2xx) or refuses it for good (a 4xx other than 429). The sends run on
/// the runtime the queue was made on, with their own HTTP client: a gateway makes it on the
/// process's main runtime, which outlives its servers' workers through the drain.
pub struct Disconnects {
    client: Arc<RouteClient>,
    url: String,
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
    pending: AtomicUsize,
    /// Wakes [`Disconnects::drained`] when the last pending event is delivered.
    idle: tokio::sync::Notify,
}

impl Disconnects {
    /// `None` without a `$disconnect` route, or outside a Tokio runtime.
    pub fn new(client: Arc<RouteClient>) -> Option<Arc<Self>> {
        let url = client.config.disconnect.clone()?;
        Some(Arc::new(Self {
            http: http_client(&client.config)?,
            runtime: tokio::runtime::Handle::try_current().ok()?,
            client,
            url,
            pending: AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
        }))
    }

    /// Queues `$disconnect` for a socket that is gone: its close code and reason.
    pub fn send(self: &Arc<Self>, caller: &Caller, code: u16, reason: &str) {
        let c = &self.client;
        if self.pending.load(Ordering::Acquire) >= MAX_PENDING_DISCONNECTS {
            tracing::error!(
                connection_id = %caller.record.connection_id,
                "{MAX_PENDING_DISCONNECTS} $disconnect events are waiting already; this one is dropped"
            );
            c.count("$disconnect", "dropped");
            return;
        }
        let mut event = c.event(caller, "$disconnect", "DISCONNECT");
        event["requestContext"]["disconnectStatusCode"] = json!(code);
        event["requestContext"]["disconnectReason"] = Value::String(reason.to_owned());
        self.pending.fetch_add(1, Ordering::AcqRel);
        c.metrics.route_disconnects_pending.inc();
        let queue = self.clone();
        let connection_id = caller.record.connection_id.clone();
        self.runtime.spawn(async move {
            let c = &queue.client;
            let mut wait = Duration::from_millis(200);
            loop {
                let permit = c.slots.acquire().await;
                let sent = c
                    .call_with(&queue.http, "$disconnect", &queue.url, &event, 0)
                    .await;
                drop(permit);
                match sent {
                    Ok(_) => break,
                    Err(RouteError::Refused { status }) if status != 429 && status < 500 => {
                        tracing::warn!(
                            status,
                            connection_id,
                            "the $disconnect backend refused the event; not sent again"
                        );
                        break;
                    }
                    Err(_) => {
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(MAX_DISCONNECT_BACKOFF);
                    }
                }
            }
            c.metrics.route_disconnects_pending.dec();
            if queue.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                queue.idle.notify_waiters();
            }
        });
    }

    /// Waits until no event is pending, or `limit`; the number still pending.
    pub async fn drained(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let idle = self.idle.notified();
            if self.pending.load(Ordering::Acquire) == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.pending.load(Ordering::Acquire);
            }
        }
    }
}

fn http_client(config: &RoutesConfig) -> Option<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        .user_agent(concat!("hermes/", env!("CARGO_PKG_VERSION")))
        .build()
        .ok()
}

/// A 2xx answer's JSON; the refusal otherwise.
async fn answer(response: reqwest::Response) -> Result<Option<Value>, RouteError> {
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(RouteError::Refused { status });
    }
    let too_large = || RouteError::Failed(format!("an answer over {MAX_ANSWER_BYTES} bytes"));
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Err(too_large());
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|e| RouteError::Failed(without_url(&e)))?;
    if bytes.len() > MAX_ANSWER_BYTES {
        return Err(too_large());
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value = match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) => v,
        Err(_) => return Ok(Some(json!({"raw": String::from_utf8_lossy(&bytes)}))),
    };
    // A Lambda-style answer carries its own status.
    if let Some(code) = value.get("statusCode").and_then(Value::as_u64)
        && !(200..300).contains(&code)
    {
        return Err(RouteError::Refused {
            status: u16::try_from(code).unwrap_or(u16::MAX),
        });
    }
    Ok(Some(value))
}

/// `sha256=<hex>` of HMAC-SHA-256(body) under `secret`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    #[allow(clippy::expect_used)] // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A reqwest error without the URL (it may carry credentials in its user info).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    match std::error::Error::source(e) {
        Some(source) => format!("{kind}: {source}"),
        None => kind.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn the_signature_is_the_hmac_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn events_carry_api_gateways_fields_and_the_connect_context() {
        let map: HashMap<String, String> = [
            (config::DEFAULT_URL, "http://b/default"),
            (config::SECRET, &"s".repeat(32)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let config = RoutesConfig::from_strings(&map).expect("valid");
        let c = RouteClient::new(config, "production", Arc::new(Metrics::new())).expect("routes");
        let caller = Caller {
            record: ConnectionRecord {
                connection_id: "c1".into(),
                room_id: "42".into(),
                user_id: "7".into(),
                gateway_id: "gw".into(),
                connected_at: 1_000,
                source_ip: "10.0.0.1".into(),
                user_agent: "ua".into(),
            },
            context: Some(Arc::from(r#"{"plan":"pro"}"#)),
        };
        let e = c.event(&caller, "$default", "MESSAGE");
        let ctx = &e["requestContext"];
        assert_eq!(ctx["routeKey"], "$default");
        assert_eq!(ctx["eventType"], "MESSAGE");
        assert_eq!(ctx["connectionId"], "c1");
        assert_eq!(ctx["connectedAt"], 1_000);
        assert_eq!(ctx["stage"], "production");
        assert_eq!(ctx["identity"]["sourceIp"], "10.0.0.1");
        assert_eq!(ctx["authorizer"]["principalId"], "7");
        assert_eq!(ctx["authorizer"]["room_id"], "42");
        assert_eq!(ctx["authorizer"]["plan"], "pro");
        assert_eq!(e["isBase64Encoded"], false);
    }
}
