//! Route integrations against HTTP backends that port the original stack's Lambdas: the
//! `$connect` Lambda (records the connection from `requestContext`, refuses a blocked user)
//! and the `sendMessage` Lambda (parses `body`, posts `{"user_id","data"}` to every
//! connection of the sender's room through `@connections`), with `$default` as a two-way
//! route and `$disconnect` (which removes the connection), each reading the same event
//! fields the Lambdas read.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use hermes_e2e::*;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const ROUTE_SECRET: &str = "route-secret-0123456789-0123456789";

/// The backends' shared state: the original's connections table (connection id → user,
/// room), every event received, and whether every signature checked out.
#[derive(Default)]
struct Backend {
    connections: HashMap<String, (String, String)>,
    events: Vec<Value>,
    bad_signatures: usize,
    /// `$disconnect` answers 503 this many more times before it takes the event.
    disconnect_failures: usize,
}

struct Shared {
    state: Mutex<Backend>,
    /// The gateway's `@connections` API: its internal URL.
    gateway: Mutex<String>,
    http: reqwest::Client,
}

/// Reads an event as a Lambda gets it, checking `X-Hermes-Signature` first.
fn event(shared: &Shared, req: &HttpRequest, body: &web::Bytes) -> Value {
    let mut mac = Hmac::<Sha256>::new_from_slice(ROUTE_SECRET.as_bytes()).expect("key");
    mac.update(body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let signed = req
        .headers()
        .get("x-hermes-signature")
        .and_then(|v| v.to_str().ok());
    let event: Value = serde_json::from_slice(body).expect("the event is JSON");
    let mut state = shared.state.lock().expect("state");
    if signed != Some(expected.as_str()) {
        state.bad_signatures += 1;
    }
    state.events.push(event.clone());
    event
}

/// The `$connect` Lambda: `connectionId` and the authorizer's ids into the table.
async fn connect(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let event = event(&shared, &req, &body);
    let ctx = &event["requestContext"];
    let user = ctx["authorizer"]["user_id"].as_str().unwrap_or_default();
    if user == "mallory" {
        return HttpResponse::Ok().json(json!({"statusCode": 403}));
    }
    let room = ctx["authorizer"]["room_id"].as_str().unwrap_or_default();
    let id = ctx["connectionId"].as_str().unwrap_or_default();
    shared
        .state
        .lock()
        .expect("state")
        .connections
        .insert(id.to_owned(), (user.to_owned(), room.to_owned()));
    HttpResponse::Ok().json(json!({"statusCode": 200, "context": {"plan": "pro"}}))
}

/// The `sendMessage` Lambda: `JSON.parse(event.body).data` to every connection of the
/// sender's room, through `@connections`.
async fn send_message(
    req: HttpRequest,
    body: web::Bytes,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let event = event(&shared, &req, &body);
    let ctx = &event["requestContext"];
    let sender = ctx["authorizer"]["user_id"].as_str().unwrap_or_default();
    let room = ctx["authorizer"]["room_id"].as_str().unwrap_or_default();
    let data = serde_json::from_str::<Value>(event["body"].as_str().unwrap_or("{}"))
        .map(|b| b["data"].clone())
        .unwrap_or(Value::Null);
    let targets: Vec<String> = shared
        .state
        .lock()
        .expect("state")
        .connections
        .iter()
        .filter(|(_, (_, r))| r == room)
        .map(|(id, _)| id.clone())
        .collect();
    let gateway = shared.gateway.lock().expect("gateway").clone();
    for id in targets {
        let posted = shared
            .http
            .post(format!("{gateway}/@connections/{id}"))
            .bearer_auth(ADMIN_KEY)
            .body(json!({"user_id": sender, "data": data}).to_string())
            .send()
            .await
            .expect("@connections");
        assert!(posted.status().is_success(), "{}", posted.status());
    }
    HttpResponse::Ok().json(json!({"statusCode": 200}))
}

/// `$default`, two-way: answers what it was sent and the connection's context.
async fn default(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let event = event(&shared, &req, &body);
    let ctx = &event["requestContext"];
    HttpResponse::Ok().json(json!({
        "statusCode": 200,
        "body": json!({
            "route": ctx["routeKey"],
            "plan": ctx["authorizer"]["plan"],
            "echo": event["body"],
        }).to_string(),
    }))
}

/// `$disconnect`: the connection out of the table (after the failures it was told to give).
async fn disconnect(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    {
        let mut state = shared.state.lock().expect("state");
        if state.disconnect_failures > 0 {
            state.disconnect_failures -= 1;
            return HttpResponse::ServiceUnavailable().finish();
        }
    }
    let event = event(&shared, &req, &body);
    let id = event["requestContext"]["connectionId"]
        .as_str()
        .unwrap_or_default();
    shared.state.lock().expect("state").connections.remove(id);
    HttpResponse::Ok().finish()
}

/// Starts the backends on loopback (their own thread and runtime); their base URL.
fn backends(shared: Arc<Shared>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let data = web::Data::from(shared);
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            HttpServer::new(move || {
                App::new()
                    .app_data(data.clone())
                    .route("/connect", web::post().to(connect))
                    .route("/send", web::post().to(send_message))
                    .route("/default", web::post().to(default))
                    .route("/disconnect", web::post().to(disconnect))
            })
            .workers(1)
            .listen(listener)
            .expect("listen")
            .run()
            .await
            .expect("backends");
        });
    });
    url
}

async fn start(disconnect_failures: usize) -> (Gateway, Arc<Shared>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(Backend {
            disconnect_failures,
            ..Backend::default()
        }),
        gateway: Mutex::new(String::new()),
        http: reqwest::Client::new(),
    });
    let base = backends(shared.clone());
    // A port nothing listens on: the `slow` route's backend is down.
    let down = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("addr"))
    };
    let routes = format!("sendMessage={base}/send,down={down}/down");
    let gw = Gateway::start(&[
        ("HERMES_ROUTE_CONNECT_URL", &format!("{base}/connect")),
        ("HERMES_ROUTE_DISCONNECT_URL", &format!("{base}/disconnect")),
        ("HERMES_ROUTE_DEFAULT_URL", &format!("{base}/default")),
        ("HERMES_ROUTES", &routes),
        ("HERMES_ROUTE_SECRET", ROUTE_SECRET),
        ("HERMES_ROUTE_RETRIES", "1"),
    ])
    .await;
    *shared.gateway.lock().expect("gateway") = gw.internal.clone();
    (gw, shared)
}

fn events_of(shared: &Shared, route: &str) -> Vec<Value> {
    shared
        .state
        .lock()
        .expect("state")
        .events
        .iter()
        .filter(|e| e["requestContext"]["routeKey"] == route)
        .cloned()
        .collect()
}

#[tokio::test]
async fn the_seed_lambdas_ported_to_http_backends_work_behind_the_routes() {
    let (gw, shared) = start(0).await;
    let mut alice = gw.connect(&gw.token("alice", "r1").await).await;
    let (mut bob, bob_id) = gw.connect_modern(&gw.token("bob", "r1").await).await;
    let mut carol = gw.connect(&gw.token("carol", "r2").await).await;

    // $connect saw each connection with the authorizer's ids, in API Gateway's shape.
    let connects = events_of(&shared, "$connect");
    assert_eq!(connects.len(), 3, "{connects:?}");
    let bob_event = connects
        .iter()
        .find(|e| e["requestContext"]["connectionId"] == bob_id.as_str())
        .expect("bob's $connect");
    let ctx = &bob_event["requestContext"];
    assert_eq!(ctx["eventType"], "CONNECT");
    assert_eq!(ctx["stage"], "production");
    assert_eq!(ctx["authorizer"]["principalId"], "bob");
    assert_eq!(ctx["identity"]["sourceIp"], "127.0.0.1");
    assert!(ctx["connectedAt"].as_u64().is_some_and(|t| t > 0));
    assert!(
        bob_event["headers"].get("sec-websocket-protocol").is_none(),
        "the bearer token is not passed on"
    );
    assert_eq!(shared.state.lock().expect("state").connections.len(), 3);

    // A refusal from $connect refuses the upgrade.
    let mallory = gw.token("mallory", "r1").await;
    let (status, body, _) = gw
        .refused(format!("{}?token={mallory}", gw.ws_url()), &[])
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("connect_refused"))
    );

    // sendMessage goes to the ported Lambda, which pushes through @connections.
    send_json(
        &mut alice,
        json!({"action": "sendMessage", "data": {"text": "hi"}}),
    )
    .await;
    let expected = json!({"user_id": "alice", "data": {"text": "hi"}});
    assert_eq!(recv_json(&mut alice).await, expected);
    assert_eq!(recv_json(&mut bob).await, expected);

    // Any other action goes to $default, whose answer comes back (with $connect's context).
    send_json(&mut carol, json!({"action": "whoami"})).await;
    let reply = recv_json(&mut carol).await;
    assert_eq!(
        reply["route"], "$default",
        "carol got nothing from room r1 first"
    );
    assert_eq!(reply["plan"], "pro");
    assert_eq!(reply["echo"], r#"{"action":"whoami"}"#);

    // A route whose backend is down: an error frame, nothing else.
    send_json(&mut carol, json!({"action": "down"})).await;
    let error = recv_json(&mut carol).await;
    assert_eq!(error["error"]["code"], "route_failed", "{error}");

    // $disconnect, with the close code; the ported Lambda removes the row.
    bob.close(None).await.expect("close");
    eventually(|| async { !events_of(&shared, "$disconnect").is_empty() }).await;
    let gone = events_of(&shared, "$disconnect");
    let ctx = &gone[0]["requestContext"];
    assert_eq!(ctx["connectionId"], bob_id.as_str());
    assert_eq!(ctx["eventType"], "DISCONNECT");
    assert_eq!(ctx["disconnectStatusCode"], 1005);
    assert!(
        !shared
            .state
            .lock()
            .expect("state")
            .connections
            .contains_key(&bob_id)
    );

    assert_eq!(shared.state.lock().expect("state").bad_signatures, 0);
    assert_eq!(
        gw.metric("hermes_route_calls_total{result=\"ok\",route=\"$connect\"}")
            .await,
        3.0
    );
    assert_eq!(
        gw.metric("hermes_route_calls_total{result=\"refused\",route=\"$connect\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_disconnect_is_sent_again_until_its_backend_takes_it() {
    let (gw, shared) = start(2).await;
    let (mut ws, id) = gw.connect_modern(&gw.token("dana", "r").await).await;
    ws.close(None).await.expect("close");
    eventually(|| async { !events_of(&shared, "$disconnect").is_empty() }).await;
    assert_eq!(
        events_of(&shared, "$disconnect")[0]["requestContext"]["connectionId"],
        id.as_str()
    );
    assert_eq!(
        shared.state.lock().expect("state").disconnect_failures,
        0,
        "both refusals were retried"
    );
    eventually(|| async { gw.metric("hermes_route_disconnects_pending").await == 0.0 }).await;
    assert_eq!(
        gw.metric("hermes_route_calls_total{result=\"refused\",route=\"$disconnect\"}")
            .await,
        2.0
    );
}
