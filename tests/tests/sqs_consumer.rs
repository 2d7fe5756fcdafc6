//! The SQS source end to end: a real SQS-compatible server (`scripts/services/sqs.sh`), a
//! real gateway process serving its memory registry, and a real `hermes-consumer` process
//! reading a queue created for each test (with its own dead-letter queue and a redrive
//! policy as the safety net).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry};
use hermes_e2e::sqs::{queues, send_body, sqs};
use hermes_e2e::{
    Consumer, DEADLINE, Gateway, INTERNAL_SECRET, Ws, eventually, recv_json, recv_notification,
    sqs_endpoint, unique,
};
use hermes_shared::registry::remote::RemoteRegistry;
use hermes_shared::registry::{GatewayRecord, Registry};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One test's world: a queue and its DLQ, a gateway, a consumer of the queue.
struct World {
    sqs: Client,
    queue_url: String,
    dlq_url: String,
    gateway: Gateway,
    consumer: Consumer,
}

/// The series of the consumer's SQS messages with `outcome`.
fn outcome_series(outcome: &str) -> String {
    format!("hermes_queue_messages_total{{outcome=\"{outcome}\",source=\"sqs\"}}")
}

impl World {
    /// A world with `env` added to the consumer's environment.
    async fn start(max_receive: u32, env: &[(&str, &str)]) -> Self {
        let sqs = sqs().await;
        let (queue_url, dlq_url) = queues(&sqs, &unique("hermes-sqs"), max_receive).await;
        let gateway = Gateway::start(&[]).await;
        let endpoint = sqs_endpoint();
        let mut consumer_env: Vec<(&str, &str)> = vec![
            ("HERMES_SOURCE", "sqs"),
            ("HERMES_SQS_QUEUE_URL", &queue_url),
            ("HERMES_SQS_DEAD_LETTER_QUEUE_URL", &dlq_url),
            ("HERMES_SQS_WAIT_SECONDS", "1"),
            ("HERMES_REGISTRY", "remote"),
            ("HERMES_REGISTRY_URL", &gateway.internal),
            ("HERMES_INTERNAL_SECRET", INTERNAL_SECRET),
            ("HERMES_CONSUMER_LISTEN", "127.0.0.1:0"),
            ("AWS_ENDPOINT_URL_SQS", &endpoint),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ];
        consumer_env.extend_from_slice(env);
        let consumer = Consumer::start(&consumer_env).await;
        Self {
            sqs,
            queue_url,
            dlq_url,
            gateway,
            consumer,
        }
    }

    /// A world whose consumer retries after 1 s and makes at most `max_attempts`, with a
    /// fresh room held only by a gateway ("broken-gateway") that answers 503:
    /// (the world, the room, that gateway).
    async fn with_a_broken_room(
        max_receive: u32,
        max_attempts: &str,
    ) -> (Self, String, FakeGateway) {
        let w = Self::start(
            max_receive,
            &[
                ("HERMES_RETRY_DELAYS_MS", "1000"),
                ("HERMES_MAX_ATTEMPTS", max_attempts),
                ("HERMES_DELIVER_TIMEOUT_MS", "1000"),
            ],
        )
        .await;
        let room = unique("room");
        let broken = FakeGateway::start(Duration::ZERO, UNAVAILABLE.0, UNAVAILABLE.1).await;
        fake_holds_room(&w.gateway, &broken, "broken-gateway", &room).await;
        (w, room, broken)
    }

    /// A socket of `user` in `room`, with its connection id.
    async fn socket(&self, user: &str, room: &str) -> (Ws, String) {
        let token = self.gateway.token(user, room).await;
        self.gateway.connect_modern(&token).await
    }

    async fn send(&self, body: &Value) {
        send_body(&self.sqs, &self.queue_url, &body.to_string()).await;
    }

    /// `hermes_queue_messages_total{source="sqs",outcome=...}` of the consumer.
    async fn outcome(&self, outcome: &str) -> f64 {
        self.consumer.metric(&outcome_series(outcome)).await
    }

    /// The outcome counter once it has reached `n` (see `Consumer::counter_once_at`).
    async fn outcome_once_at(&self, outcome: &str, n: f64) -> f64 {
        self.consumer
            .counter_once_at(&outcome_series(outcome), n)
            .await
    }

    /// Visible plus in-flight messages of a queue.
    async fn depth(&self, queue_url: &str) -> u64 {
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("GetQueueAttributes")
            .attributes
            .unwrap_or_default();
        [
            QueueAttributeName::ApproximateNumberOfMessages,
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
        ]
        .iter()
        .map(|k| {
            attributes
                .get(k)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
    }

    /// Waits until the main queue holds nothing, visible or in flight.
    async fn wait_drained(&self) {
        eventually(|| async { self.depth(&self.queue_url).await == 0 }).await;
    }

    /// Takes `n` messages from the DLQ: (body, message attributes as strings).
    async fn dead_letters(&self, n: usize) -> Vec<(String, HashMap<String, String>)> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while got.len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {n} dead letters arrived; consumer logs:\n{}",
                got.len(),
                self.consumer.logs()
            );
            let out = self
                .sqs
                .receive_message()
                .queue_url(&self.dlq_url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .message_attribute_names("All")
                .send()
                .await
                .expect("ReceiveMessage on the DLQ");
            for m in out.messages.unwrap_or_default() {
                let attributes = m
                    .message_attributes
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.string_value.unwrap_or_default()))
                    .collect();
                if let Some(receipt) = &m.receipt_handle {
                    self.sqs
                        .delete_message()
                        .queue_url(&self.dlq_url)
                        .receipt_handle(receipt)
                        .send()
                        .await
                        .expect("DeleteMessage on the DLQ");
                }
                got.push((m.body.unwrap_or_default(), attributes));
            }
        }
        got
    }
}

/// A stand-in for a gateway's internal listener without the deliver stream (its upgrade is
/// not found, so routers deliver over HTTP): counts the deliver requests it gets and answers
/// each after `delay` with `status` (e.g. `503 Service Unavailable`) and a JSON `body`.
struct FakeGateway {
    url: String,
    hits: Arc<AtomicUsize>,
}

impl FakeGateway {
    async fn start(delay: Duration, status: &str, body: &str) -> Self {
        let answer = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let counter = counter.clone();
                let answer = answer.clone();
                tokio::spawn(async move {
                    // Read the request head (and whatever body came with it).
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    if seen.starts_with(b"GET /internal/v1/deliver-stream") {
                        // A gateway from before the deliver stream: routers fall back to
                        // HTTP, so the delay and the answer below are what each delivery gets.
                        let _ = stream
                            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await;
                        return;
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    let _ = stream.write_all(answer.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self { url, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// What a gateway that cannot take deliveries answers.
const UNAVAILABLE: (&str, &str) = ("503 Service Unavailable", r#"{"error":"unavailable"}"#);
/// A gateway's answer when none of its sockets were targeted.
const DELIVERED_NONE: (&str, &str) = ("200 OK", r#"{"delivered":0,"gone":[],"duplicate":false}"#);

/// The test's view of the registry the gateway serves.
fn registry(gateway: &Gateway) -> RemoteRegistry {
    RemoteRegistry::new(&gateway.internal, INTERNAL_SECRET, Duration::from_secs(5))
        .expect("registry client")
}

/// Makes `fake` a live gateway holding `room`.
async fn fake_holds_room(gateway: &Gateway, fake: &FakeGateway, id: &str, room: &str) {
    let r = registry(gateway);
    r.upsert_gateway(
        &GatewayRecord {
            gateway_id: id.into(),
            internal_url: fake.url.clone(),
            started_at: 1,
        },
        Duration::from_secs(600),
    )
    .await
    .expect("upsert the fake gateway");
    r.add_room_gateway(room, id, Duration::from_secs(600))
        .await
        .expect("room row of the fake gateway");
}

#[tokio::test]
async fn an_sqs_message_reaches_every_socket_in_the_room() {
    let w = World::start(5, &[]).await;
    let room = unique("room");
    let other_room = unique("other");
    let (mut a, a_id) = w.socket("alice", &room).await;
    let (mut b, _) = w.socket("bob", &room).await;
    let (mut c, _) = w.socket("carol", &other_room).await;

    // The original body: every socket of the room gets exactly `{user_id, data}`.
    let data = json!({"type": "note", "text": "héllo", "n": 1});
    w.send(&json!({"user_id": "sender", "room_id": room, "data": data}))
        .await;
    let expected = json!({"user_id": "sender", "data": data});
    assert_eq!(recv_notification(&mut a).await, expected);
    assert_eq!(recv_notification(&mut b).await, expected);

    // To one user of the room.
    w.send(&json!({"user_id": "sender", "room_id": room, "to_user_id": "bob", "data": 2}))
        .await;
    assert_eq!(
        recv_notification(&mut b).await,
        json!({"user_id": "sender", "data": 2})
    );

    // To one connection: alice's next frame is this one, so she did not get the last.
    w.send(&json!({"user_id": "sender", "room_id": room, "connection_id": a_id, "data": 3}))
        .await;
    assert_eq!(
        recv_notification(&mut a).await,
        json!({"user_id": "sender", "data": 3})
    );

    // The room except one connection.
    w.send(
        &json!({"user_id": "sender", "room_id": room, "exclude_connection_id": a_id, "data": 4}),
    )
    .await;
    assert_eq!(
        recv_notification(&mut b).await,
        json!({"user_id": "sender", "data": 4})
    );
    w.send(&json!({"user_id": "sender", "room_id": room, "data": 5}))
        .await;
    assert_eq!(
        recv_notification(&mut a).await,
        json!({"user_id": "sender", "data": 5}),
        "the excluded connection got nothing in between"
    );
    assert_eq!(
        recv_notification(&mut b).await,
        json!({"user_id": "sender", "data": 5})
    );

    // Another room got none of it: its first frame is its own message.
    w.send(&json!({"user_id": "sender", "room_id": other_room, "data": 6}))
        .await;
    assert_eq!(
        recv_notification(&mut c).await,
        json!({"user_id": "sender", "data": 6})
    );

    eventually(|| async { w.outcome("delivered").await == 6.0 }).await;
    w.wait_drained().await;
    assert_eq!(w.depth(&w.dlq_url).await, 0);
}

#[tokio::test]
async fn an_invalid_sqs_message_lands_in_the_dead_letter_queue_with_its_reason_and_the_others_keep_flowing()
 {
    let w = World::start(5, &[]).await;
    let room = unique("room");
    let (mut ws, _) = w.socket("alice", &room).await;

    let missing_room = json!({"user_id": "u", "data": 1}).to_string();
    w.sqs
        .send_message()
        .queue_url(&w.queue_url)
        .message_body(&missing_room)
        .message_attributes(
            "trace-id",
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value("t-42")
                .build()
                .expect("attribute"),
        )
        .send()
        .await
        .expect("SendMessage");
    send_body(&w.sqs, &w.queue_url, "this is not JSON").await;
    w.send(&json!({"user_id": "sender", "room_id": room, "data": "still flowing"}))
        .await;
    assert_eq!(
        recv_notification(&mut ws).await,
        json!({"user_id": "sender", "data": "still flowing"})
    );

    let dead: HashMap<String, HashMap<String, String>> =
        w.dead_letters(2).await.into_iter().collect();
    let first = dead
        .get(&missing_room)
        .unwrap_or_else(|| panic!("the message without room_id is dead-lettered: {dead:?}"));
    assert!(
        first["hermes-dead-reason"].contains("room_id"),
        "reason: {first:?}"
    );
    assert_eq!(first["hermes-attempts"], "1");
    assert_eq!(
        first.get("trace-id").map(String::as_str),
        Some("t-42"),
        "the original's attributes are kept"
    );
    let second = dead
        .get("this is not JSON")
        .unwrap_or_else(|| panic!("the non-JSON message is dead-lettered: {dead:?}"));
    assert!(
        !second["hermes-dead-reason"].is_empty(),
        "reason: {second:?}"
    );

    w.wait_drained().await;
    assert_eq!(w.outcome_once_at("dead_lettered", 2.0).await, 2.0);
    assert_eq!(w.outcome_once_at("delivered", 1.0).await, 1.0);
    assert_eq!(
        w.consumer
            .counter_once_at("hermes_dead_letters_total{reason=\"invalid_message\"}", 2.0)
            .await,
        2.0
    );
}

/// The room is first held only by a gateway that answers 503: the consumer must not delete
/// the message but make it visible again after the retry delay. Once a real socket holds
/// the room (and the broken gateway lets it go), the retried message reaches it.
#[tokio::test]
async fn a_message_whose_gateway_does_not_answer_is_retried_then_delivered() {
    let (w, room, broken) = World::with_a_broken_room(20, "10").await;

    w.send(&json!({"user_id": "sender", "room_id": room, "data": {"type": "retry"}}))
        .await;
    eventually(|| async { broken.hits() >= 1 && w.outcome("retried").await >= 1.0 }).await;
    assert_eq!(
        w.outcome("delivered").await,
        0.0,
        "nothing acknowledged yet"
    );
    assert!(
        w.depth(&w.queue_url).await == 1,
        "the message stays on the queue"
    );

    let (mut ws, _) = w.socket("alice", &room).await;
    registry(&w.gateway)
        .remove_room_gateway(&room, "broken-gateway")
        .await
        .expect("the broken gateway lets the room go");
    assert_eq!(
        recv_notification(&mut ws).await,
        json!({"user_id": "sender", "data": {"type": "retry"}})
    );
    eventually(|| async { w.outcome("delivered").await == 1.0 }).await;
    w.wait_drained().await;

    // Exactly once: the next frame is the next message.
    w.send(&json!({"user_id": "sender", "room_id": room, "data": "next"}))
        .await;
    assert_eq!(
        recv_notification(&mut ws).await,
        json!({"user_id": "sender", "data": "next"})
    );
    assert_eq!(w.depth(&w.dlq_url).await, 0, "nothing was dead-lettered");
}

/// Retries run out: the message goes to the DLQ with `attempts_exhausted: <reason>`.
#[tokio::test]
async fn a_message_that_keeps_failing_is_dead_lettered_after_its_last_attempt() {
    let (w, room, broken) = World::with_a_broken_room(10, "2").await;
    let body = json!({"user_id": "sender", "room_id": room, "data": 1}).to_string();
    send_body(&w.sqs, &w.queue_url, &body).await;

    let dead = w.dead_letters(1).await;
    assert_eq!(dead[0].0, body);
    let reason = &dead[0].1["hermes-dead-reason"];
    assert!(
        reason.starts_with("attempts_exhausted: ") && reason.contains("broken-gateway"),
        "reason: {reason}"
    );
    assert_eq!(dead[0].1["hermes-attempts"], "2");
    assert_eq!(broken.hits(), 2);
    w.wait_drained().await;
    assert_eq!(w.outcome_once_at("retried", 1.0).await, 1.0);
    assert_eq!(w.outcome_once_at("dead_lettered", 1.0).await, 1.0);
    assert_eq!(
        w.consumer
            .counter_once_at(
                "hermes_dead_letters_total{reason=\"attempts_exhausted\"}",
                1.0
            )
            .await,
        1.0
    );
}

/// A route slower than the visibility timeout: the consumer keeps extending the message's
/// visibility, so SQS does not hand it out a second time while it is being routed.
#[tokio::test]
async fn a_slow_route_keeps_its_message_invisible_until_it_is_settled() {
    let w = World::start(
        5,
        &[
            ("HERMES_SQS_VISIBILITY_TIMEOUT_SECONDS", "2"),
            ("HERMES_DELIVER_TIMEOUT_MS", "10000"),
        ],
    )
    .await;
    let room = unique("room");
    let slow = FakeGateway::start(
        Duration::from_millis(4500),
        DELIVERED_NONE.0,
        DELIVERED_NONE.1,
    )
    .await;
    fake_holds_room(&w.gateway, &slow, "slow-gateway", &room).await;

    w.send(&json!({"user_id": "sender", "room_id": room, "data": 1}))
        .await;
    eventually(|| async { w.outcome("delivered").await == 1.0 }).await;
    // Without the extension the message would have been received again at ~2 s, while the
    // first route (4.5 s) was still waiting: a second request to the slow gateway.
    assert_eq!(slow.hits(), 1, "consumer logs:\n{}", w.consumer.logs());
    w.wait_drained().await;
    assert_eq!(w.outcome("delivered").await, 1.0);
}

#[tokio::test]
async fn a_batch_of_25_messages_arrives_exactly_once() {
    let w = World::start(5, &[("HERMES_CONSUMER_CONCURRENCY", "4")]).await;
    let room = unique("room");
    let (mut ws, _) = w.socket("alice", &room).await;

    for chunk in (0..25).collect::<Vec<u32>>().chunks(10) {
        let entries = chunk
            .iter()
            .map(|n| {
                SendMessageBatchRequestEntry::builder()
                    .id(format!("e{n}"))
                    .message_body(
                        json!({"user_id": "sender", "room_id": room, "data": {"n": n}}).to_string(),
                    )
                    .build()
                    .expect("entry")
            })
            .collect();
        let out = w
            .sqs
            .send_message_batch()
            .queue_url(&w.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .expect("SendMessageBatch");
        assert!(out.failed.is_empty(), "{:?}", out.failed);
    }

    let mut seen = BTreeSet::new();
    for _ in 0..25 {
        let frame = recv_json(&mut ws).await;
        assert_eq!(frame["user_id"], "sender");
        let n = frame["data"]["n"].as_u64().expect("n");
        assert!(seen.insert(n), "message {n} arrived twice");
    }
    assert_eq!(seen, (0..25).collect::<BTreeSet<u64>>());
    eventually(|| async { w.outcome("delivered").await == 25.0 }).await;
    w.wait_drained().await;

    // Nothing more comes: the next frame is the next message.
    w.send(&json!({"user_id": "sender", "room_id": room, "data": "end"}))
        .await;
    assert_eq!(
        recv_notification(&mut ws).await,
        json!({"user_id": "sender", "data": "end"})
    );
    eventually(|| async { w.outcome("delivered").await == 26.0 }).await;
    assert_eq!(w.outcome("delete_failed").await, 0.0);
}

/// SIGTERM while a message is being routed: the consumer finishes and deletes it, then exits.
#[tokio::test]
async fn a_consumer_stopped_mid_route_settles_its_message_before_exiting() {
    let w = World::start(5, &[("HERMES_DELIVER_TIMEOUT_MS", "10000")]).await;
    let room = unique("room");
    let slow = FakeGateway::start(
        Duration::from_millis(1500),
        DELIVERED_NONE.0,
        DELIVERED_NONE.1,
    )
    .await;
    fake_holds_room(&w.gateway, &slow, "slow-gateway", &room).await;

    w.send(&json!({"user_id": "sender", "room_id": room, "data": 1}))
        .await;
    eventually(|| async { slow.hits() == 1 }).await;
    let World {
        consumer,
        sqs,
        queue_url,
        ..
    } = w;
    let logs = consumer.logs.clone();
    let status = consumer.stop().await;
    assert!(
        status.success(),
        "{status}; logs:\n{}",
        logs.lock().map(|l| l.clone()).unwrap_or_default()
    );
    let depth = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .expect("GetQueueAttributes")
        .attributes
        .unwrap_or_default();
    assert_eq!(
        depth
            .get(&QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .map(String::as_str),
        Some("0"),
        "the in-flight message was deleted before the exit: {depth:?}"
    );
    assert_eq!(
        depth
            .get(&QueueAttributeName::ApproximateNumberOfMessages)
            .map(String::as_str),
        Some("0")
    );
}
