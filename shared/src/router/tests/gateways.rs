//! The gateway-list cache: with few gateways, room and user messages go to all of them
//! without a lookup, and the list is read at most once per half its validity.

use super::*;

/// Two live gateways, "local" (the router's own) and "far" (answers `delivered: 2`);
/// user "v" is held where `v_held_at` says (no row when empty). Routes a message to "v"
/// sending to all gateways while there are at most `route_to_all_up_to`.
async fn route_to_v(
    v_held_at: &[&str],
    route_to_all_up_to: usize,
) -> (RouteOutcome, Arc<Recorder>) {
    let registry = Arc::new(MemoryRegistry::new());
    let far = fake_gateway(2).await;
    live(&registry, "local", "http://unused").await;
    live(&registry, "far", &far).await;
    for g in v_held_at {
        registry
            .add_user_gateway("v", g, Duration::from_secs(60))
            .await
            .expect("add");
    }
    let local = Arc::new(Recorder::default());
    let r = router(registry, local.clone()).with_route_to_all_up_to(route_to_all_up_to);
    let o = r
        .publish(&message(
            r#"{"user_id":"u","room_id":"r","data":1,"to_user_id":"v"}"#,
        ))
        .await
        .expect("routed");
    (o, local)
}

#[tokio::test]
async fn with_few_gateways_a_user_message_reaches_each_without_a_lookup() {
    // No user_gateways row at all: only sending to every gateway reaches them.
    let (o, local) = route_to_v(&[], 2).await;
    assert_eq!((o.gateways, o.delivered), (2, 3), "{o:?}");
    assert_eq!(local.requests.lock().len(), 1);
}

#[tokio::test]
async fn the_gateway_list_is_read_at_most_once_per_half_validity() {
    let memory = Arc::new(MemoryRegistry::new());
    live(&memory, "far", &fake_gateway(1).await).await;
    let metrics = Arc::new(Metrics::new());
    let registry = Arc::new(crate::registry::instrumented::Instrumented::new(
        memory,
        metrics.clone(),
    ));
    let client = GatewayClient::new(
        "secret-secret-secret",
        Duration::from_millis(200),
        metrics.clone(),
    )
    .expect("client");
    let r = Router::new(registry, client, None, metrics.clone()).with_route_to_all_up_to(2);
    let started = Instant::now();
    // 64 routings at once, as the consumer runs them.
    let routed: u32 = futures_util::future::join_all((0..64).map(|_| async {
        let mut routed = 0u32;
        while started.elapsed() < GATEWAY_LIST_VALIDITY + GATEWAY_LIST_VALIDITY / 5 {
            r.publish(&message(
                r#"{"user_id":"u","room_id":"r","data":1,"to_user_id":"v"}"#,
            ))
            .await
            .expect("routed");
            routed += 1;
            tokio::task::yield_now().await;
        }
        routed
    }))
    .await
    .into_iter()
    .sum();
    let reads = metrics
        .registry_duration
        .with_label_values(&["gateways"])
        .get_sample_count();
    // At 0, after half the validity and after the whole of it.
    assert!(reads <= 3, "{reads} list reads for {routed} messages");
}

#[tokio::test]
async fn with_more_gateways_than_the_maximum_targets_are_looked_up() {
    let (o, local) = route_to_v(&["far"], 1).await;
    assert_eq!((o.gateways, o.delivered), (1, 2), "{o:?}");
    assert!(
        local.requests.lock().is_empty(),
        "the local gateway holds no target"
    );
}

#[tokio::test]
async fn sent_to_all_an_unreachable_gateway_fails_the_message_only_if_it_holds_the_target() {
    let registry = Arc::new(MemoryRegistry::new());
    live(&registry, "local", "http://unused").await;
    live(&registry, "far", "http://127.0.0.1:9").await;
    registry
        .add_room_gateway("held-far", "far", Duration::from_secs(60))
        .await
        .expect("add");
    let r = router(registry, Arc::new(Recorder::default())).with_route_to_all_up_to(2);
    let elsewhere = r
        .publish(&message(
            r#"{"user_id":"u","room_id":"held-here","data":1}"#,
        ))
        .await
        .expect("routed");
    assert!(elsewhere.failed.is_empty(), "{elsewhere:?}");
    assert_eq!(elsewhere.delivered, 1);
    let there = r
        .publish(&message(r#"{"user_id":"u","room_id":"held-far","data":1}"#))
        .await
        .expect("routed");
    assert_eq!(there.failed, vec!["far".to_owned()]);
}
