//! The router's tests, one file per part of the router: routing (`routing`), hops and the
//! directory (`hops`), the gateway-list cache (`gateways`) and links (`links`). Here: a
//! local gateway that records what it is given, fake remote gateways on loopback, and a
//! fixed directory.

mod gateways;
mod hops;
mod links;
mod routing;

use super::*;
use crate::loopback_http::RequestReader;
use crate::registry::GatewayRecord;
use crate::registry::memory::MemoryRegistry;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[derive(Default)]
struct Recorder {
    requests: Mutex<Vec<DeliverRequest>>,
    held: Vec<String>,
}

impl LocalDelivery for Recorder {
    fn deliver(&self, request: &DeliverRequest) -> DeliverResponse {
        self.requests.lock().push(request.clone());
        let gone = match &request.target {
            Target::Connections(ids) => ids
                .iter()
                .filter(|i| !self.held.contains(i))
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        DeliverResponse {
            delivered: 1,
            gone,
            duplicate: false,
        }
    }
    fn connection_info(&self, _: &str) -> Option<ConnectionInfo> {
        None
    }
}

fn router(registry: Arc<MemoryRegistry>, local: Arc<Recorder>) -> Router {
    router_counting(registry, local, Arc::new(Metrics::new()))
}

/// [`router`], counting in `metrics`.
fn router_counting(
    registry: Arc<MemoryRegistry>,
    local: Arc<Recorder>,
    metrics: Arc<Metrics>,
) -> Router {
    let client = GatewayClient::new(
        "secret-secret-secret",
        Duration::from_millis(200),
        metrics.clone(),
    )
    .expect("client");
    Router::new(
        registry,
        client,
        Some(LocalGateway {
            gateway_id: "local".into(),
            delivery: local,
        }),
        metrics,
    )
}

fn message(json: &str) -> PublishMessage {
    PublishMessage::parse(json.as_bytes(), crate::config::DEFAULT_MAX_MESSAGE_BYTES).expect("valid")
}

/// A token revocation, as the admin API broadcasts it.
fn revocation() -> DeliverRequest {
    DeliverRequest {
        id: None,
        target: Target::User {
            user_id: "v".into(),
            room_id: Some("r".into()),
        },
        exclude_connection_id: None,
        published_at: None,
        action: DeliverAction::Revoke {
            user_id: "v".into(),
            room_id: "r".into(),
        },
        pos: None,
        expires_at: None,
    }
}

async fn live(registry: &MemoryRegistry, gateway_id: &str, internal_url: &str) {
    registry
        .upsert_gateway(
            &GatewayRecord {
                gateway_id: gateway_id.into(),
                internal_url: internal_url.into(),
                started_at: 0,
            },
            Duration::from_secs(60),
        )
        .await
        .expect("upsert");
}

/// A fixed directory: gateway id → presence.
struct Fixed(HashMap<String, Presence>);

impl GatewayDirectory for Fixed {
    fn presence(&self, gateway_id: &str) -> Presence {
        self.0.get(gateway_id).cloned().unwrap_or(Presence::Unknown)
    }
}

/// The one connection a fake gateway holds.
const HELD_HERE: &str = "held-there";

/// What a fake gateway says of [`HELD_HERE`].
fn held_here() -> ConnectionInfo {
    ConnectionInfo {
        connected_at: "2026-12-03T10:00:00.000Z".into(),
        identity: crate::wire::Identity {
            source_ip: "10.0.0.7".into(),
            user_agent: "test".into(),
        },
        last_active_at: "2026-12-03T10:00:01.000Z".into(),
    }
}

/// A deliver endpoint on loopback that answers every request with `delivered`.
async fn fake_gateway(delivered: usize) -> String {
    fake_gateway_counting(delivered).await.0
}

/// A deliver endpoint on loopback, as gateways before the deliver stream had it (its
/// upgrade is not found: routers deliver to it over HTTP): a request is answered with
/// `delivered`, a batch with as many such answers as it holds requests. Counts the HTTP
/// deliver requests it answered. Holds one connection, [`HELD_HERE`].
async fn fake_gateway_counting(delivered: usize) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let answer = format!(r#"{{"delivered":{delivered},"gone":[]}}"#);
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut socket, _)) = listener.accept().await {
            let (answer, counter) = (answer.clone(), counter.clone());
            tokio::spawn(async move {
                let mut requests = RequestReader::new();
                while let Ok(Some((head, body))) = requests.next(&mut socket).await {
                    if head.starts_with(&format!("GET /internal/v1/connections/{HELD_HERE} ")) {
                        let info = serde_json::to_string(&held_here()).expect("json");
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{info}",
                            info.len()
                        );
                        let _ = socket.write_all(response.as_bytes()).await;
                        continue;
                    }
                    if !head.starts_with("POST /internal/v1/deliver") {
                        // A gateway from before the deliver stream: routers fall back
                        // to HTTP when the upgrade is not found.
                        let _ = socket
                            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                            .await;
                        continue;
                    }
                    let reply = if head.starts_with("POST /internal/v1/deliver-batch ") {
                        let items: Vec<serde_json::Value> =
                            serde_json::from_slice(&body).expect("a JSON array");
                        format!("[{}]", vec![answer.as_str(); items.len()].join(","))
                    } else {
                        answer.clone()
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
                        reply.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                }
            });
        }
    });
    (url, requests)
}
