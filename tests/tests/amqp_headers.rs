//! Whatever a publisher puts in a message's headers and properties, the consumer's connection
//! to RabbitMQ holds: bytes that are not UTF-8 in long strings, byte arrays, nested tables and
//! arrays, Hermes's own headers with the wrong type or content, and (written on the wire by a
//! proxy, since no client library sends them) header names and short-string properties that
//! are not UTF-8. (Floats that are not numbers are left out: RabbitMQ 3.10 closes the
//! publisher's connection on them, so they never reach a consumer.) Each such message is routed or dead-lettered like any other, and the ones
//! after it still flow, on the consumer's first and only connection.

use std::net::SocketAddr;

use hermes_e2e::*;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, DecimalValue, FieldArray, FieldTable, LongString};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Written by the publisher where the proxy puts [`NOT_UTF8`] (the same length, so every
/// AMQP length field stays right).
const MARKER: &[u8] = b"@@NOT-UTF8@@";
/// Bytes that are not UTF-8: stray continuation bytes, a truncated sequence, an overlong
/// encoding, a UTF-16 surrogate, 0xFF.
const NOT_UTF8: &[u8] = b"\xff\xfe\x80\xbf\xc3\x28\xc0\xaf\xed\xa0\x80\xf8";

/// A TCP proxy to `broker` that replaces every [`MARKER`] the client sends with [`NOT_UTF8`].
async fn rewriting_proxy(broker: SocketAddr) -> SocketAddr {
    assert_eq!(MARKER.len(), NOT_UTF8.len());
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("proxy listener");
    let addr = listener.local_addr().expect("proxy address");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(broker).await.expect("the broker");
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            });
            tokio::spawn(async move {
                let mut held: Vec<u8> = Vec::new();
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = client_read.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    held.extend_from_slice(&buf[..n]);
                    let mut i = 0;
                    while i + MARKER.len() <= held.len() {
                        if &held[i..i + MARKER.len()] == MARKER {
                            held[i..i + MARKER.len()].copy_from_slice(NOT_UTF8);
                            i += MARKER.len();
                        } else {
                            i += 1;
                        }
                    }
                    // Keep back only a tail that could be the start of a marker cut in two.
                    let keep = (1..MARKER.len())
                        .rev()
                        .find(|&k| held.len() >= k && held.ends_with(&MARKER[..k]))
                        .unwrap_or(0);
                    let send = held.len() - keep;
                    if server_write.write_all(&held[..send]).await.is_err() {
                        break;
                    }
                    held.drain(..send);
                }
            });
        }
    });
    addr
}

/// `host:port` of an `amqp://user:pass@host:port/vhost` URL.
fn broker_addr(url: &str) -> SocketAddr {
    let authority = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("an AMQP URL");
    let host_port = authority.rsplit('@').next().expect("host");
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5672")
    };
    host_port.parse().expect("an IP:port broker address")
}

fn long(bytes: &[u8]) -> AMQPValue {
    AMQPValue::LongString(LongString::from(bytes.to_vec()))
}

fn table(entries: Vec<(&str, AMQPValue)>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(k.into(), v);
    }
    t
}

fn with_headers(headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers)
}

/// The header tables the messages carry, each with a name for the failure message.
fn odd_headers() -> Vec<(&'static str, FieldTable)> {
    let mut array = FieldArray::default();
    for v in [
        long(NOT_UTF8),
        AMQPValue::ByteArray(NOT_UTF8.to_vec().into()),
        AMQPValue::Void,
        AMQPValue::Boolean(true),
        AMQPValue::DecimalValue(DecimalValue {
            scale: 2,
            value: 12345,
        }),
        AMQPValue::Timestamp(u64::MAX),
        AMQPValue::Double(-0.0),
        AMQPValue::Float(f32::MAX),
        AMQPValue::ShortShortInt(-1),
        AMQPValue::LongLongInt(i64::MIN),
        AMQPValue::FieldArray(FieldArray::default()),
    ] {
        array.push(v);
    }
    vec![
        (
            "a long string that is not UTF-8",
            table(vec![("x-odd", long(NOT_UTF8))]),
        ),
        (
            "a byte array that is not UTF-8",
            table(vec![(
                "x-odd",
                AMQPValue::ByteArray(NOT_UTF8.to_vec().into()),
            )]),
        ),
        (
            "nested tables and arrays of every type",
            table(vec![(
                "x-odd",
                AMQPValue::FieldTable(table(vec![
                    ("inner", long(NOT_UTF8)),
                    ("array", AMQPValue::FieldArray(array)),
                    (
                        "deeper",
                        AMQPValue::FieldTable(table(vec![("void", AMQPValue::Void)])),
                    ),
                ])),
            )]),
        ),
        (
            "Hermes's headers not UTF-8",
            table(vec![
                ("x-hermes-attempts", long(NOT_UTF8)),
                ("x-hermes-id", long(NOT_UTF8)),
                ("x-hermes-dead-reason", long(NOT_UTF8)),
            ]),
        ),
        (
            "Hermes's headers of other types",
            table(vec![
                (
                    "x-hermes-attempts",
                    AMQPValue::FieldTable(FieldTable::default()),
                ),
                ("x-hermes-id", AMQPValue::LongLongInt(-7)),
            ]),
        ),
        (
            "an attempts count out of range",
            table(vec![(
                "x-hermes-attempts",
                AMQPValue::LongLongInt(i64::MAX),
            )]),
        ),
        (
            "an empty header name",
            table(vec![("", long(b"empty name"))]),
        ),
        (
            "a 32 KiB header value",
            table(vec![("x-big", long(&[0xffu8; 32 * 1024]))]),
        ),
    ]
}

#[tokio::test]
async fn messages_with_headers_that_are_not_utf8_or_odd_are_routed_or_dead_lettered_on_one_connection()
 {
    let keyspace = unique("e2e_headers");
    let queue = unique("hermes-e2e-headers");
    let mut env = scylla_env(&keyspace);
    env.push(("HERMES_GATEWAY_ID".into(), "gw-headers".into()));
    let gateway = Gateway::start(&env_refs(&env)).await;
    let mut publisher = AmqpPublisher::new();
    publisher.declare(&queue).await;
    let mut c = scylla_env(&keyspace);
    c.push(("HERMES_SOURCE".into(), "amqp".into()));
    c.push(("HERMES_AMQP_URL".into(), amqp_url()));
    c.push(("HERMES_AMQP_QUEUE".into(), queue.clone()));
    let consumer = Consumer::start(&env_refs(&c)).await;
    let mut ws = gateway
        .connect(&gateway.token("watcher", "room").await)
        .await;

    // Through the proxy, the marker becomes bytes that are not UTF-8 on the wire: in a
    // header name, and in the message_id, type, app_id and content_type properties.
    let proxy = rewriting_proxy(broker_addr(&amqp_url())).await;
    let marker = std::str::from_utf8(MARKER).expect("ASCII");
    let mut raw = AmqpPublisher::with_url(format!("amqp://guest:guest@{proxy}/%2f"));
    let wire_odd = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(format!("mid-{marker}").into())
        .with_type(marker.into())
        .with_app_id(marker.into())
        .with_content_type(marker.into())
        .with_headers(table(vec![(&format!("x-name-{marker}"), long(b"v"))]));

    let body = |n: usize| json!({"user_id": "backend", "room_id": "room", "id": format!("odd-{n}"), "data": {"n": n}});
    let mut sent = Vec::new();
    for (n, (what, headers)) in odd_headers().into_iter().enumerate() {
        publisher
            .publish_with(
                &queue,
                body(n).to_string().as_bytes(),
                with_headers(headers),
            )
            .await;
        sent.push((n, what));
    }
    let n = sent.len();
    raw.publish_with(&queue, body(n).to_string().as_bytes(), wire_odd.clone())
        .await;
    sent.push((n, "a header name and properties that are not UTF-8"));
    // Invalid bodies with the same headers: dead-lettered, their headers kept.
    publisher
        .publish_with(
            &queue,
            b"not json",
            with_headers(table(vec![("x-odd", long(NOT_UTF8))])),
        )
        .await;
    raw.publish_with(&queue, b"not json either", wire_odd).await;
    // And one plain message after all of them.
    let last = sent.len();
    publisher
        .publish(&queue, body(last).to_string().as_bytes())
        .await;
    sent.push((last, "a plain message after the others"));

    // The consumer works on many at once: they arrive in any order, each once.
    let mut got = Vec::new();
    while got.len() < sent.len() {
        let Ok(frame) = tokio::time::timeout(DEADLINE / 2, recv_json(&mut ws)).await else {
            panic!(
                "got {got:?} of {sent:?}; consumer logs:\n{}",
                consumer.logs()
            );
        };
        got.push(frame["data"]["n"].as_u64().expect("n") as usize);
    }
    got.sort_unstable();
    let expected: Vec<usize> = sent.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        got, expected,
        "every message reached the socket once: {sent:?}"
    );

    let dlq = format!("{queue}.dead-letter");
    let mut dead = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while dead.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "two dead letters expected, got {}",
            dead.len()
        );
        match publisher.get_raw(&dlq).await {
            Some(m) => dead.push(m),
            None => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    dead.sort_by(|a, b| a.delivery.data.cmp(&b.delivery.data));
    let header = |m: &lapin::message::BasicGetMessage, k: &str| -> Option<AMQPValue> {
        m.delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(k).cloned())
    };
    assert_eq!(dead[0].delivery.data, b"not json");
    assert_eq!(
        header(&dead[0], "x-odd"),
        Some(long(NOT_UTF8)),
        "the dead letter keeps the original bytes"
    );
    assert!(
        matches!(header(&dead[0], "x-hermes-dead-reason"), Some(AMQPValue::LongString(r)) if String::from_utf8_lossy(r.as_bytes()).contains("not valid JSON")),
        "{:?}",
        dead[0].delivery.properties
    );
    assert_eq!(dead[1].delivery.data, b"not json either");
    assert!(header(&dead[1], "x-hermes-dead-reason").is_some());

    let count = sent.len() as f64;
    assert_eq!(
        consumer.counter_once_at(cluster::DELIVERED, count).await,
        count
    );
    assert_eq!(
        consumer
            .counter_once_at("hermes_dead_letters_total{reason=\"invalid_message\"}", 2.0)
            .await,
        2.0
    );
    let logs = consumer.logs();
    assert_eq!(
        logs.matches("consuming from RabbitMQ").count(),
        1,
        "one connection for all of it; logs:\n{logs}"
    );
    assert!(!logs.contains("session ended"), "logs:\n{logs}");
}
