//! Route integrations, as API Gateway's WebSocket routes to Lambda: `$connect`,
//! `$disconnect`, `$default` and custom action routes POST API Gateway's WebSocket proxy
//! event to HTTP backends (docs/routes.md).
//!
//! - `$connect` runs after the authorizer, before the socket is admitted: an answer that is
//!   not 2xx (or a Lambda-style `{"statusCode": 4xx}`) refuses the upgrade with 403; a
//!   `context` object in the answer goes with the connection's later events, in
//!   `requestContext.authorizer`, as an authorizer's context does.
//! - A text frame is routed by the selection expression (`$request.body.action`): a custom
//!   route of that key, else the built-in `sendMessage`/`ping`, else `$default`. A route's
//!   answer with a body is sent back to the socket (a two-way route): the `body` of a
//!   Lambda-style `{"statusCode","body"}` answer, else the answer as it came.
//! - `$disconnect` is queued when the socket is gone and sent until a backend answers it
//!   (at least once while the gateway runs; a draining gateway waits for the queue within
//!   its shutdown grace).
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

use actix_web::HttpRequest;
use actix_web::http::header;
use hermes_shared::ids::{new_message_id, now_millis};
use hermes_shared::metrics::Metrics;
use hermes_shared::registry::ConnectionRecord;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value, json};
use sha2::Sha256;
use tokio::sync::Semaphore;

pub use config::RoutesConfig;

/// The signature header of every route request.
pub const SIGNATURE_HEADER: &str = "X-Hermes-Signature";
/// The largest answer read from a backend (API Gateway's frame limit).
pub const MAX_ANSWER_BYTES: usize = 128 * 1024;
/// The largest `context` a `$connect` answer may give a connection (serialized).
pub const MAX_CONTEXT_BYTES: usize = 4 * 1024;
/// `$disconnect` events waiting at once; beyond, new ones are dropped and logged.
pub const MAX_PENDING_DISCONNECTS: usize = 100_000;
/// The longest wait between two attempts at a `$disconnect`.
const MAX_DISCONNECT_BACKOFF: Duration = Duration::from_secs(30);
/// Query parameters and headers of the upgrade that never reach a backend: credentials.
const WITHHELD_QUERY: &[&str] = &["token"];
const WITHHELD_HEADERS: &[&str] = &["authorization", "cookie", "sec-websocket-protocol"];

/// What a route call came to.
#[derive(Debug)]
pub enum RouteError {
    /// The backend answered, not 2xx (or a Lambda-style `statusCode` that is not 2xx).
    Refused { status: u16 },
    /// No answer within the timeout after the retries, unreachable, or an answer too large.
    Failed(String),
    /// No free slot for a message route.
    Busy,
}

impl RouteError {
    fn label(&self) -> &'static str {
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

/// Where a text frame goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Selected<'a> {
    /// To the built-in handling (`sendMessage`, `ping`, the error frames).
    BuiltIn,
    /// To a route: its key and URL.
    Route { key: String, url: &'a str },
}

/// The connection an event is about.
#[derive(Clone)]
pub struct Caller {
    pub record: ConnectionRecord,
    /// What the `$connect` answer set, as JSON (an object).
    pub context: Option<Arc<str>>,
}

/// The route integrations of one gateway.
pub struct Routes {
    config: RoutesConfig,
    stage: String,
    http: reqwest::Client,
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    pending: Arc<AtomicUsize>,
    /// Wakes [`Routes::drained`] when the last pending `$disconnect` is delivered.
    idle: Arc<tokio::sync::Notify>,
    /// The `$disconnect` deliveries' own client and runtime (the process's main one, which
    /// outlives the servers' workers and their runtimes through the drain).
    disconnects: Option<(reqwest::Client, tokio::runtime::Handle)>,
}

impl Routes {
    /// `None` when no route is configured.
    pub fn new(config: RoutesConfig, stage: &str, metrics: Arc<Metrics>) -> Option<Arc<Self>> {
        if !config.any() {
            return None;
        }
        let client = || {
            reqwest::Client::builder()
                .timeout(config.timeout)
                .connect_timeout(config.timeout)
                .user_agent(concat!("hermes-gateway/", env!("CARGO_PKG_VERSION")))
                .build()
                .ok()
        };
        let http = client()?;
        let disconnects = match tokio::runtime::Handle::try_current() {
            Ok(handle) => Some((client()?, handle)),
            Err(_) => None,
        };
        Some(Arc::new(Self {
            disconnects,
            slots: Arc::new(Semaphore::new(config.concurrency)),
            config,
            stage: stage.to_owned(),
            http,
            metrics,
            pending: Arc::new(AtomicUsize::new(0)),
            idle: Arc::new(tokio::sync::Notify::new()),
        }))
    }

    pub fn config(&self) -> &RoutesConfig {
        &self.config
    }

    /// Runs `$connect` for an authorized upgrade: `Ok(context)` to admit it (the context
    /// its answer set, if any), the refusal otherwise. Without a `$connect` route: admitted.
    pub async fn connect(
        &self,
        record: &ConnectionRecord,
        req: &HttpRequest,
    ) -> Result<Option<Arc<str>>, RouteError> {
        let Some(url) = self.config.connect.as_deref() else {
            return Ok(None);
        };
        let caller = Caller {
            record: record.clone(),
            context: None,
        };
        let mut event = self.event(&caller, "$connect", "CONNECT");
        event["headers"] = Value::Object(headers(req));
        event["queryStringParameters"] = Value::Object(query(req.query_string()));
        event["requestContext"]["domainName"] = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map_or(Value::Null, |h| Value::String(h.to_owned()));
        let permit = tokio::time::timeout(self.config.timeout, self.slots.acquire())
            .await
            .map_err(|_| RouteError::Busy)
            .and_then(|p| p.map_err(|_| RouteError::Busy));
        let permit = match permit {
            Ok(p) => p,
            Err(e) => {
                self.count("$connect", e.label());
                return Err(e);
            }
        };
        let answer = self
            .call("$connect", url, &event, self.config.retries)
            .await;
        drop(permit);
        let answer = answer?;
        match answer.and_then(|a| a.get("context").cloned()) {
            Some(Value::Object(context)) => {
                let text = Value::Object(context).to_string();
                if text.len() > MAX_CONTEXT_BYTES {
                    return Err(RouteError::Failed(format!(
                        "the $connect answer's context is over {MAX_CONTEXT_BYTES} bytes"
                    )));
                }
                Ok(Some(Arc::from(text)))
            }
            _ => Ok(None),
        }
    }

    /// Where a text frame goes: a custom route of its selection key, else the built-in
    /// handling for `ping` and `sendMessage`, else `$default` (also for a frame that is not
    /// JSON or has no key), else the built-in handling (its error frames).
    pub fn select(&self, text: &str) -> Selected<'_> {
        let key = serde_json::from_str::<Value>(text).ok().and_then(|v| {
            self.config
                .selection
                .iter()
                .try_fold(&v, |v, field| v.get(field))
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        if let Some(key) = key {
            if config::RESERVED_ACTIONS.contains(&key.as_str()) {
                return Selected::BuiltIn;
            }
            if let Some(url) = self.config.action(&key) {
                return Selected::Route { key, url };
            }
            if key == "sendMessage" {
                return Selected::BuiltIn;
            }
        }
        match self.config.default.as_deref() {
            Some(url) => Selected::Route {
                key: "$default".to_owned(),
                url,
            },
            None => Selected::BuiltIn,
        }
    }

    /// Sends a text frame to its route; the reply for the socket, if the answer has a body.
    pub async fn message(
        &self,
        caller: &Caller,
        key: &str,
        url: &str,
        text: &str,
    ) -> Result<Option<String>, RouteError> {
        let label = self.label(key);
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            self.count(label, "busy");
            return Err(RouteError::Busy);
        };
        let mut event = self.event(caller, key, "MESSAGE");
        event["requestContext"]["messageId"] = Value::String(new_message_id());
        event["body"] = Value::String(text.to_owned());
        let answer = self.call(label, url, &event, self.config.retries).await;
        drop(permit);
        Ok(answer?.and_then(reply))
    }

    /// Queues `$disconnect` for a socket that is gone, sent until a backend answers it.
    pub fn disconnect(self: &Arc<Self>, caller: Caller, code: u16, reason: &str) {
        let Some(url) = self.config.disconnect.clone() else {
            return;
        };
        if self.pending.load(Ordering::Acquire) >= MAX_PENDING_DISCONNECTS {
            tracing::error!(
                connection_id = %caller.record.connection_id,
                "{MAX_PENDING_DISCONNECTS} $disconnect events are waiting already; this one is dropped"
            );
            self.count("$disconnect", "dropped");
            return;
        }
        let mut event = self.event(&caller, "$disconnect", "DISCONNECT");
        event["requestContext"]["disconnectStatusCode"] = json!(code);
        event["requestContext"]["disconnectReason"] = Value::String(reason.to_owned());
        self.pending.fetch_add(1, Ordering::AcqRel);
        self.metrics.route_disconnects_pending.inc();
        let routes = self.clone();
        let task = async move {
            let mut wait = Duration::from_millis(200);
            loop {
                let permit = routes.slots.acquire().await;
                let http = routes.disconnects.as_ref().map_or(&routes.http, |(c, _)| c);
                let sent = routes.call_with(http, "$disconnect", &url, &event, 0).await;
                drop(permit);
                match sent {
                    Ok(_) => break,
                    // A backend that refuses it for good (4xx but 429) is not asked again.
                    Err(RouteError::Refused { status }) if status != 429 && status < 500 => {
                        tracing::warn!(
                            status,
                            connection_id = %caller.record.connection_id,
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
            routes.metrics.route_disconnects_pending.dec();
            if routes.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                routes.idle.notify_waiters();
            }
        };
        match &self.disconnects {
            Some((_, runtime)) => drop(runtime.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }

    /// Waits until no `$disconnect` is pending, or `limit`; the number still pending.
    pub async fn drained(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let idle = self.idle.notified();
            let pending = self.pending.load(Ordering::Acquire);
            if pending == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.pending.load(Ordering::Acquire);
            }
        }
    }

    /// The metric label of a route key: the configured ones are bounded; anything else is
    /// `$default`'s.
    fn label<'a>(&self, key: &'a str) -> &'a str {
        if key.starts_with('$') || self.config.action(key).is_some() {
            key
        } else {
            "$default"
        }
    }

    fn count(&self, route: &str, result: &str) {
        self.metrics
            .route_calls
            .with_label_values(&[route, result])
            .inc();
    }

    /// API Gateway's WebSocket proxy event for `caller`, without the event's own fields.
    fn event(&self, caller: &Caller, route_key: &str, event_type: &str) -> Value {
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

    /// POSTs `event` to `url`, signed; the answer's JSON (`None` for an empty or non-JSON
    /// body, kept as a string in `"raw"`) on 2xx. Tries again `retries` times after an
    /// unreachable backend, a 5xx or a 429.
    async fn call(
        &self,
        route: &str,
        url: &str,
        event: &Value,
        retries: u32,
    ) -> Result<Option<Value>, RouteError> {
        self.call_with(&self.http, route, url, event, retries).await
    }

    /// [`Routes::call`] with `http`.
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
                .header(header::CONTENT_TYPE.as_str(), "application/json")
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

/// A 2xx answer's JSON; the refusal otherwise.
async fn answer(response: reqwest::Response) -> Result<Option<Value>, RouteError> {
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(RouteError::Refused { status });
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Err(RouteError::Failed(format!(
            "an answer over {MAX_ANSWER_BYTES} bytes"
        )));
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|e| RouteError::Failed(without_url(&e)))?;
    if bytes.len() > MAX_ANSWER_BYTES {
        return Err(RouteError::Failed(format!(
            "an answer over {MAX_ANSWER_BYTES} bytes"
        )));
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

/// What a route's answer sends back to the socket: the `body` of a Lambda-style answer
/// (a string as it is, anything else as JSON), else the whole answer.
fn reply(answer: Value) -> Option<String> {
    match answer {
        Value::Object(mut o) if o.contains_key("statusCode") => match o.remove("body") {
            Some(Value::String(s)) if !s.is_empty() => Some(s),
            Some(Value::Null) | None => None,
            Some(Value::String(_)) => None,
            Some(other) => Some(other.to_string()),
        },
        Value::Object(mut o) if o.len() == 1 && o.contains_key("raw") => {
            o.remove("raw").and_then(|v| v.as_str().map(str::to_owned))
        }
        other => Some(other.to_string()),
    }
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

/// The upgrade's headers for `$connect`, lower-cased, credentials withheld.
fn headers(req: &HttpRequest) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, value) in req.headers() {
        let name = name.as_str().to_ascii_lowercase();
        if WITHHELD_HEADERS.contains(&name.as_str()) {
            continue;
        }
        if let Ok(v) = value.to_str() {
            out.insert(name, Value::String(v.to_owned()));
        }
    }
    out
}

/// The upgrade's query parameters for `$connect`, credentials withheld.
fn query(query: &str) -> Map<String, Value> {
    url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| !WITHHELD_QUERY.contains(&k.as_ref()))
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn routes(pairs: &[(&str, &str)]) -> Arc<Routes> {
        let mut map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        map.insert(config::SECRET.into(), "s".repeat(32));
        let config = RoutesConfig::from_strings(&map).expect("valid");
        Routes::new(config, "production", Arc::new(Metrics::new())).expect("routes")
    }

    #[test]
    fn frames_go_to_their_route_then_the_built_in_ones_then_default() {
        let r = routes(&[
            (config::ROUTES, "typing=http://b/typing"),
            (config::DEFAULT_URL, "http://b/default"),
        ]);
        let route = |key: &str, url: &'static str| Selected::Route {
            key: key.into(),
            url,
        };
        assert_eq!(
            r.select(r#"{"action":"typing","x":1}"#),
            route("typing", "http://b/typing")
        );
        assert_eq!(
            r.select(r#"{"action":"sendMessage","data":1}"#),
            Selected::BuiltIn
        );
        assert_eq!(r.select(r#"{"action":"ping"}"#), Selected::BuiltIn);
        for other in [r#"{"action":"fly"}"#, r#"{"action":5}"#, "not json", "[1]"] {
            assert_eq!(
                r.select(other),
                route("$default", "http://b/default"),
                "{other}"
            );
        }
        let overridden = routes(&[(config::ROUTES, "sendMessage=http://b/send")]);
        assert_eq!(
            overridden.select(r#"{"action":"sendMessage","data":1}"#),
            Selected::Route {
                key: "sendMessage".into(),
                url: "http://b/send"
            }
        );
        assert_eq!(overridden.select(r#"{"action":"fly"}"#), Selected::BuiltIn);
    }

    #[test]
    fn the_selection_expression_may_point_into_the_body() {
        let r = routes(&[
            (config::ROUTES, "typing=http://b/typing"),
            (config::SELECTION, "$request.body.meta.kind"),
        ]);
        assert!(matches!(
            r.select(r#"{"meta":{"kind":"typing"}}"#),
            Selected::Route { .. }
        ));
        assert_eq!(r.select(r#"{"action":"typing"}"#), Selected::BuiltIn);
    }

    #[test]
    fn a_lambda_style_answer_replies_with_its_body_and_a_plain_one_as_it_is() {
        assert_eq!(
            reply(json!({"statusCode": 200, "body": "hi"})),
            Some("hi".into())
        );
        assert_eq!(
            reply(json!({"statusCode": 200, "body": {"a": 1}})),
            Some(r#"{"a":1}"#.into())
        );
        assert_eq!(reply(json!({"statusCode": 200})), None);
        assert_eq!(
            reply(json!({"raw": "plain text"})),
            Some("plain text".into())
        );
        assert_eq!(reply(json!({"ok": true})), Some(r#"{"ok":true}"#.into()));
    }

    #[test]
    fn the_signature_is_the_hmac_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn credentials_never_reach_a_backend() {
        let q = query("token=secret&lang=en");
        assert_eq!(q.get("lang"), Some(&json!("en")));
        assert!(!q.contains_key("token"));
        let req = actix_web::test::TestRequest::get()
            .insert_header(("Authorization", "Bearer x"))
            .insert_header(("Sec-WebSocket-Protocol", "hermes.v1, bearer.x"))
            .insert_header(("X-Trace", "t"))
            .to_http_request();
        let h = headers(&req);
        assert_eq!(h.get("x-trace"), Some(&json!("t")));
        assert!(!h.contains_key("authorization") && !h.contains_key("sec-websocket-protocol"));
    }

    #[test]
    fn events_carry_api_gateways_fields_and_the_connect_context() {
        let r = routes(&[(config::DEFAULT_URL, "http://b/default")]);
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
        let e = r.event(&caller, "$default", "MESSAGE");
        let c = &e["requestContext"];
        assert_eq!(c["routeKey"], "$default");
        assert_eq!(c["eventType"], "MESSAGE");
        assert_eq!(c["connectionId"], "c1");
        assert_eq!(c["connectedAt"], 1_000);
        assert_eq!(c["stage"], "production");
        assert_eq!(c["identity"]["sourceIp"], "10.0.0.1");
        assert_eq!(c["authorizer"]["principalId"], "7");
        assert_eq!(c["authorizer"]["room_id"], "42");
        assert_eq!(c["authorizer"]["plan"], "pro");
        assert_eq!(e["isBase64Encoded"], false);
    }
}
