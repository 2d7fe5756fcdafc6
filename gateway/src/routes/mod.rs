//! Route integrations, as API Gateway's WebSocket routes to Lambda: `$connect`,
//! `$disconnect`, `$default` and custom action routes POST API Gateway's WebSocket proxy
//! event to HTTP backends (docs/routes.md). The event, the signature and the calls are
//! `hermes_shared::routes`'; this is the gateway's side:
//!
//! - `$connect` runs after the authorizer, before the socket is admitted: an answer that is
//!   not 2xx (or a Lambda-style `{"statusCode": 4xx}`) refuses the upgrade with 403; a
//!   `context` object in the answer goes with the connection's later events, in
//!   `requestContext.authorizer`, as an authorizer's context does.
//! - A text frame is routed by the selection expression (`$request.body.action`): a custom
//!   route of that key, else the built-in `sendMessage`/`ping`, else `$default`. A route's
//!   answer with a body is sent back to the socket (a two-way route): the `body` of a
//!   Lambda-style `{"statusCode","body"}` answer, else the answer as it came.
//! - `$disconnect` is queued when the socket is gone and sent until a backend takes it (at
//!   least once while the gateway runs; a draining gateway waits for the queue within its
//!   shutdown grace).

use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpRequest;
use actix_web::http::header;
use hermes_shared::ids::new_message_id;
use hermes_shared::metrics::Metrics;
use hermes_shared::registry::ConnectionRecord;
pub use hermes_shared::routes::{Caller, RouteError, RoutesConfig, config};
use hermes_shared::routes::{Disconnects, RouteClient};
use serde_json::{Map, Value};

/// The largest `context` a `$connect` answer may give a connection (serialized).
pub const MAX_CONTEXT_BYTES: usize = 4 * 1024;
/// Query parameters and headers of the upgrade that never reach a backend: credentials.
const WITHHELD_QUERY: &[&str] = &["token"];
const WITHHELD_HEADERS: &[&str] = &["authorization", "cookie", "sec-websocket-protocol"];

/// Where a text frame goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Selected<'a> {
    /// To the built-in handling (`sendMessage`, `ping`, the error frames).
    BuiltIn,
    /// To a route: its key and URL.
    Route { key: String, url: &'a str },
}

/// The route integrations of one gateway.
pub struct Routes {
    client: Arc<RouteClient>,
    /// `None` without a `$disconnect` route.
    disconnects: Option<Arc<Disconnects>>,
}

impl Routes {
    /// `None` when no route is configured. Made on the process's main runtime: the
    /// `$disconnect` queue runs there.
    pub fn new(config: RoutesConfig, stage: &str, metrics: Arc<Metrics>) -> Option<Arc<Self>> {
        let client = RouteClient::new(config, stage, metrics)?;
        Some(Arc::new(Self {
            disconnects: Disconnects::new(client.clone()),
            client,
        }))
    }

    fn config(&self) -> &RoutesConfig {
        self.client.config()
    }

    /// Runs `$connect` for an authorized upgrade: `Ok(context)` to admit it (the context
    /// its answer set, if any), the refusal otherwise. Without a `$connect` route: admitted.
    pub async fn connect(
        &self,
        record: &ConnectionRecord,
        req: &HttpRequest,
    ) -> Result<Option<Arc<str>>, RouteError> {
        let Some(url) = self.config().connect.as_deref() else {
            return Ok(None);
        };
        let caller = Caller {
            record: record.clone(),
            context: None,
        };
        let mut event = self.client.event(&caller, "$connect", "CONNECT");
        event["headers"] = Value::Object(headers(req));
        event["queryStringParameters"] = Value::Object(query(req.query_string()));
        event["requestContext"]["domainName"] = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map_or(Value::Null, |h| Value::String(h.to_owned()));
        let timeout = self.config().timeout;
        let Ok(Ok(permit)) = tokio::time::timeout(timeout, self.client.slots().acquire()).await
        else {
            self.client.count("$connect", "busy");
            return Err(RouteError::Busy);
        };
        let answer = self
            .client
            .call("$connect", url, &event, self.config().retries)
            .await;
        drop(permit);
        match answer?.and_then(|a| a.get("context").cloned()) {
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
        let config = self.config();
        let key = serde_json::from_str::<Value>(text).ok().and_then(|v| {
            config
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
            if let Some(url) = config.action(&key) {
                return Selected::Route { key, url };
            }
            if key == "sendMessage" {
                return Selected::BuiltIn;
            }
        }
        match config.default.as_deref() {
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
        // Route keys are the configuration's (see `select`): a bounded label.
        let Ok(permit) = self.client.slots().clone().try_acquire_owned() else {
            self.client.count(key, "busy");
            return Err(RouteError::Busy);
        };
        let mut event = self.client.event(caller, key, "MESSAGE");
        event["requestContext"]["messageId"] = Value::String(new_message_id());
        event["body"] = Value::String(text.to_owned());
        let answer = self
            .client
            .call(key, url, &event, self.config().retries)
            .await;
        drop(permit);
        Ok(answer?.and_then(reply))
    }

    /// Queues `$disconnect` for a socket that is gone (nothing without a `$disconnect`
    /// route).
    pub fn disconnect(&self, caller: &Caller, code: u16, reason: &str) {
        if let Some(d) = &self.disconnects {
            d.send(caller, code, reason);
        }
    }

    /// Waits until no `$disconnect` is pending, or `limit`; the number still pending.
    pub async fn drained(&self, limit: Duration) -> usize {
        match &self.disconnects {
            Some(d) => d.drained(limit).await,
            None => 0,
        }
    }
}

/// What a route's answer sends back to the socket: the `body` of a Lambda-style answer
/// (a string as it is, anything else as JSON), else the whole answer.
fn reply(answer: Value) -> Option<String> {
    match answer {
        Value::Object(mut o) if o.contains_key("statusCode") => match o.remove("body") {
            Some(Value::String(s)) if !s.is_empty() => Some(s),
            Some(Value::Null | Value::String(_)) | None => None,
            Some(other) => Some(other.to_string()),
        },
        Value::Object(mut o) if o.len() == 1 && o.contains_key("raw") => {
            o.remove("raw").and_then(|v| v.as_str().map(str::to_owned))
        }
        other => Some(other.to_string()),
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
    use serde_json::json;
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
}
