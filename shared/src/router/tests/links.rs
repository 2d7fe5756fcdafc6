//! Links: a gateway that cannot be reached fails its share; concurrent deliveries to one
//! gateway share requests.

use super::*;

#[tokio::test]
async fn unreachable_live_gateway_is_reported_as_failed() {
    let registry = Arc::new(MemoryRegistry::new());
    registry
        .upsert_gateway(
            &GatewayRecord {
                gateway_id: "far".into(),
                internal_url: "http://127.0.0.1:9".into(),
                started_at: 0,
            },
            Duration::from_secs(60),
        )
        .await
        .expect("upsert");
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
