//! Links: a gateway that cannot be reached fails its share; concurrent deliveries to one
//! gateway share requests; broadcasts and connection lookups reach other gateways through
//! the same links as routed messages.

use super::*;
use crate::loopback_http::answering;
use crate::registry::ConnectionRecord;

#[tokio::test]
async fn unreachable_live_gateway_is_reported_as_failed() {
    let registry = Arc::new(MemoryRegistry::new());
    live(&registry, "far", "http://127.0.0.1:9").await;
    registry
        .add_user_gateway("v", "far", Duration::from_secs(60))
        .await
        .expect("add");
    let r = router(registry, Arc::new(Recorder::default()));
    let o = r
        .publish(&message(
            r#"{"user_id":"u","room_id":"r","data":1,"to_user_id":"v"}"#,
        ))
        .await
        .expect("routed");
    assert_eq!(o.failed, vec!["far".to_owned()]);
}

#[tokio::test]
async fn concurrent_deliveries_to_one_gateway_share_requests_and_each_gets_its_answer() {
    let (url, requests) = fake_gateway_counting(1).await;
    let registry = Arc::new(MemoryRegistry::new());
    live(&registry, "far", &url).await;
    for i in 0..200 {
        registry
            .add_user_gateway(&format!("v{i}"), "far", Duration::from_secs(60))
            .await
            .expect("add");
    }
    let r = router(registry, Arc::new(Recorder::default()));
    let messages: Vec<PublishMessage> = (0..200)
        .map(|i| {
            message(&format!(
                r#"{{"user_id":"u","room_id":"r","data":{i},"to_user_id":"v{i}"}}"#
            ))
        })
        .collect();
    let outcomes = join_all(messages.iter().map(|m| r.publish(m))).await;
    for o in outcomes {
        let o = o.expect("routed");
        assert_eq!((o.gateways, o.delivered), (1, 1), "{o:?}");
        assert!(o.failed.is_empty(), "{o:?}");
    }
    let requests = requests.load(Ordering::SeqCst);
    assert!(
        requests <= 200 / 4,
        "200 concurrent deliveries took {requests} requests"
    );
}

#[tokio::test]
async fn a_broadcast_takes_the_link_routed_messages_take_and_reaches_the_unlisted_local_gateway() {
    let (url, requests) = fake_gateway_counting(2).await;
    let registry = Arc::new(MemoryRegistry::new());
    // "local" has no gateway row yet (it is starting).
    live(&registry, "far", &url).await;
    registry
        .add_user_gateway("v", "far", Duration::from_secs(60))
        .await
        .expect("add");
    let metrics = Arc::new(Metrics::new());
    let local = Arc::new(Recorder::default());
    let r = router_counting(registry, local.clone(), metrics.clone());
    let no_stream = || {
        metrics
            .deliver_stream_connects
            .with_label_values(&["unsupported"])
            .get()
    };
    let o = r.broadcast(revocation()).await.expect("broadcast");
    assert_eq!((o.gateways, o.delivered), (2, 3), "{o:?}");
    assert!(o.failed.is_empty(), "{o:?}");
    assert_eq!(local.requests.lock().len(), 1);
    // The link tried the gateway's deliver stream first and, finding none, went over HTTP.
    assert_eq!((no_stream(), requests.load(Ordering::SeqCst)), (1, 1));
    // A message routed to that gateway takes the same link: HTTP at once.
    let o = r
        .publish(&message(
            r#"{"user_id":"u","room_id":"r","data":1,"to_user_id":"v"}"#,
        ))
        .await
        .expect("routed");
    assert_eq!((o.gateways, o.delivered), (1, 2), "{o:?}");
    assert_eq!((no_stream(), requests.load(Ordering::SeqCst)), (1, 2));
}

#[tokio::test]
async fn a_connection_lookup_asks_the_holding_gateway_and_forgets_rows_of_a_dead_one() {
    let (url, _) = fake_gateway_counting(1).await;
    let registry = Arc::new(MemoryRegistry::new());
    live(&registry, "far", &url).await;
    for (connection_id, gateway_id) in [(HELD_HERE, "far"), ("left", "far"), ("c", "ghost")] {
        registry
            .put_connection(
                &ConnectionRecord {
                    connection_id: connection_id.into(),
                    room_id: "r".into(),
                    user_id: "u".into(),
                    gateway_id: gateway_id.into(),
                    connected_at: 0,
                    source_ip: String::new(),
                    user_agent: String::new(),
                },
                Duration::from_secs(60),
            )
            .await
            .expect("put");
    }
    let r = router(registry.clone(), Arc::new(Recorder::default()));
    let asked = |id: &'static str| r.connection_info(id);
    assert_eq!(asked(HELD_HERE).await.expect("asked"), Some(held_here()));
    // Its gateway does not hold it (any more).
    assert_eq!(asked("left").await.expect("asked"), None);
    // Its gateway is gone: so is it.
    assert_eq!(asked("c").await.expect("asked"), None);
    assert_eq!(registry.connection("c").await.expect("get"), None);
}

/// A gateway that accepts connections and then does nothing (a frozen process); counts them.
async fn frozen_gateway() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    (url, accepted)
}

#[tokio::test]
async fn a_gateway_that_keeps_failing_is_not_sent_to_while_its_circuit_is_open() {
    let (url, accepted) = frozen_gateway().await;
    let registry = Arc::new(MemoryRegistry::new());
    live(&registry, "frozen", &url).await;
    registry
        .add_user_gateway("v", "frozen", Duration::from_secs(60))
        .await
        .expect("add");
    let metrics = Arc::new(Metrics::new());
    let r = router_counting(registry, Arc::new(Recorder::default()), metrics.clone());
    let to_v = message(r#"{"user_id":"u","room_id":"r","data":1,"to_user_id":"v"}"#);
    for _ in 0..crate::router::links::breaker::FAILURES_TO_OPEN {
        let o = r.publish(&to_v).await.expect("routed");
        assert_eq!(o.failed, vec!["frozen".to_owned()]);
    }
    let tried = accepted.load(Ordering::SeqCst);
    assert!(tried >= 1, "the first deliveries were tried");
    for _ in 0..20 {
        let o = r.publish(&to_v).await.expect("routed");
        assert_eq!(
            o.failed,
            vec!["frozen".to_owned()],
            "still reported as failed"
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        tried,
        "no delivery went out while the circuit was open"
    );
    let text = metrics.render();
    assert!(
        text.contains("hermes_deliver_breaker_state{gateway=\"frozen\"} 1"),
        "{text}"
    );
    assert!(text.contains("hermes_deliver_breaker_events_total{event=\"rejected\"} 20"));
}

#[tokio::test]
async fn a_retry_left_only_for_gateways_with_an_open_circuit_is_held_back_without_a_history_write()
{
    let (frozen, accepted) = frozen_gateway().await;
    let registry = Arc::new(MemoryRegistry::new());
    live(&registry, "frozen", &frozen).await;
    live(&registry, "healthy", &fake_gateway(1).await).await;
    for g in ["frozen", "healthy"] {
        registry
            .add_user_gateway("v", g, Duration::from_secs(60))
            .await
            .expect("add");
    }
    let metrics = Arc::new(Metrics::new());
    let client = GatewayClient::new(
        "secret-secret-secret",
        Duration::from_millis(200),
        metrics.clone(),
    )
    .expect("client");
    // As the consumer runs it: no local gateway, the list of live gateways kept.
    let r = Router::new(registry, client, None, metrics.clone())
        .with_route_to_all_up_to(2)
        .with_history(
            crate::history::HistorySettings {
                ttl: Duration::from_secs(60),
                max: 100,
            },
            Duration::from_millis(200),
        );
    let to_v = message(r#"{"user_id":"u","room_id":"r","data":1,"to_user_id":"v"}"#);
    let writes = |m: &Metrics| -> usize {
        let text = m.render();
        text.lines()
            .find_map(|l| l.strip_prefix("hermes_history_writes_total{result=\"ok\"} "))
            .map_or(0, |v| v.trim().parse().expect("a count"))
    };
    // The frozen gateway's deliveries time out together: its circuit opens.
    let opening = crate::router::links::breaker::FAILURES_TO_OPEN as usize;
    futures_util::future::join_all((0..opening).map(|_| r.publish(&to_v))).await;
    let tried = accepted.load(Ordering::SeqCst);

    // A first attempt still reaches the healthy gateway (and is written to the history).
    let first = r.publish(&to_v).await.expect("routed");
    assert_eq!(first.answered, vec!["healthy".to_owned()], "{first:?}");
    assert_eq!(first.failed, vec!["frozen".to_owned()], "{first:?}");
    assert_eq!(writes(&metrics), opening + 1);

    // Its retry is left with the frozen gateway only: not made, failed for it again.
    let retry = r
        .publish_except(&to_v, &first.answered)
        .await
        .expect("routed");
    assert_eq!(retry.failed, vec!["frozen".to_owned()], "{retry:?}");
    assert_eq!(retry.delivered, 0);
    assert_eq!(writes(&metrics), opening + 1, "no history write");
    assert_eq!(accepted.load(Ordering::SeqCst), tried, "nothing sent");
}

/// A gateway on loopback whose internal API refuses every request (the deliver stream's
/// upgrade included) with 401, as one with another internal secret does.
async fn refusing_gateway() -> String {
    answering(
        "401 Unauthorized",
        "missing or wrong X-Hermes-Internal-Secret",
    )
    .await
}

#[tokio::test]
async fn a_gateway_refusing_the_secret_rejects_the_message_over_the_stream_and_over_http() {
    for transport in [DeliverTransport::Stream, DeliverTransport::Http] {
        let url = refusing_gateway().await;
        let registry = Arc::new(MemoryRegistry::new());
        live(&registry, "far", &url).await;
        registry
            .add_room_gateway("r", "far", Duration::from_secs(60))
            .await
            .expect("add");
        let metrics = Arc::new(Metrics::new());
        let client = GatewayClient::new(
            "secret-secret-secret",
            Duration::from_secs(2),
            metrics.clone(),
        )
        .expect("client")
        .with_transport(transport);
        let r = Router::new(registry, client, None, metrics.clone());
        // Concurrent messages: over HTTP some share a batch request.
        let m = message(r#"{"user_id":"u","room_id":"r","data":1}"#);
        let outcomes = join_all((0..8).map(|_| r.publish(&m))).await;
        for o in outcomes {
            let o = o.expect("routed");
            assert!(o.failed.is_empty(), "{transport:?}: {o:?}");
            assert_eq!(o.rejected.len(), 1, "{transport:?}: {o:?}");
            assert_eq!(
                (o.rejected[0].gateway_id.as_str(), o.rejected[0].status),
                ("far", 401),
                "{transport:?}"
            );
        }
        assert!(
            metrics.internal_auth_failures.get() >= 1,
            "{transport:?}: the refusal is counted"
        );
    }
}
