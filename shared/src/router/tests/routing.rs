//! Routing: a message reaches the gateways holding its targets, once each, and what is
//! found gone is removed; a broadcast reaches every live gateway.

use super::*;
use crate::registry::ConnectionRecord;

#[tokio::test]
async fn room_message_goes_once_to_the_local_gateway_holding_it() {
    let registry = Arc::new(MemoryRegistry::new());
    registry
        .add_room_gateway("r", "local", Duration::from_secs(60))
        .await
        .expect("add");
    let local = Arc::new(Recorder::default());
    let r = router(registry, local.clone());
    let outcome = r
        .publish(&message(r#"{"user_id":"u","room_id":"r","data":{"x":1}}"#))
        .await
        .expect("routed");
    assert_eq!((outcome.gateways, outcome.delivered), (1, 1));
    let requests = local.requests.lock();
    assert_eq!(requests.len(), 1);
    assert!(
        matches!(&requests[0].action, DeliverAction::Send { frame, .. } if frame.as_str() == r#"{"user_id":"u","data":{"x":1}}"#)
    );
}

#[tokio::test]
async fn unknown_connection_counts_as_gone_and_held_rows_are_cleaned() {
    let registry = Arc::new(MemoryRegistry::new());
    registry
        .put_connection(
            &ConnectionRecord {
                connection_id: "c1".into(),
                room_id: "r".into(),
                user_id: "u".into(),
                gateway_id: "local".into(),
                connected_at: 0,
                source_ip: String::new(),
                user_agent: String::new(),
            },
            Duration::from_secs(60),
        )
        .await
        .expect("put");
    let r = router(registry.clone(), Arc::new(Recorder::default()));
    let o = r
        .publish(&message(
            r#"{"user_id":"u","room_id":"r","data":1,"connection_id":"nope"}"#,
        ))
        .await
        .expect("routed");
    assert_eq!(o.gone, 1);
    // The local gateway says c1 is not there: the 410 path removes the row.
    let o = r
        .publish(&message(
            r#"{"user_id":"u","room_id":"r","data":1,"connection_id":"c1"}"#,
        ))
        .await
        .expect("routed");
    assert_eq!(o.gone, 1);
    assert_eq!(registry.connection("c1").await.expect("get"), None);
}

#[tokio::test]
async fn a_broadcast_reaches_the_listed_local_gateway_once_and_names_those_it_cannot_reach() {
    let registry = Arc::new(MemoryRegistry::new());
    live(&registry, "local", "http://unused").await;
    live(&registry, "far", "http://127.0.0.1:9").await;
    let local = Arc::new(Recorder::default());
    let r = router(registry, local.clone());
    let o = r.broadcast(revocation()).await.expect("broadcast");
    assert_eq!(o.failed, vec!["far".to_owned()]);
    assert_eq!((o.gateways, o.delivered), (1, 1), "{o:?}");
    assert_eq!(local.requests.lock().len(), 1);
}

#[tokio::test]
async fn a_retry_goes_only_to_the_gateways_that_did_not_answer_the_earlier_attempt() {
    let (far, far_requests) = fake_gateway_counting(1).await;
    let registry = Arc::new(MemoryRegistry::new());
    live(&registry, "far", &far).await;
    live(&registry, "frozen", "http://127.0.0.1:9").await;
    for g in ["local", "far", "frozen"] {
        registry
            .add_room_gateway("r", g, Duration::from_secs(60))
            .await
            .expect("add");
    }
    let local = Arc::new(Recorder::default());
    let r = router(registry, local.clone());
    let m = message(r#"{"user_id":"u","room_id":"r","data":1,"id":"m-1"}"#);
    let first = r.publish(&m).await.expect("routed");
    let mut answered = first.answered.clone();
    answered.sort();
    assert_eq!(answered, vec!["far".to_owned(), "local".to_owned()]);
    assert_eq!(first.failed, vec!["frozen".to_owned()]);

    let retry = r.publish_except(&m, &first.answered).await.expect("routed");
    assert_eq!(retry.failed, vec!["frozen".to_owned()], "tried again");
    assert!(retry.answered.is_empty());
    assert_eq!(
        local.requests.lock().len(),
        1,
        "the local gateway got it once"
    );
    assert_eq!(
        far_requests.load(Ordering::SeqCst),
        1,
        "the far gateway got it once"
    );
}

#[tokio::test]
async fn a_retry_asks_again_a_gateway_that_answered_but_reached_nobody() {
    let (empty, empty_requests) = fake_gateway_counting(0).await;
    let registry = Arc::new(MemoryRegistry::new());
    live(&registry, "empty", &empty).await;
    live(&registry, "frozen", "http://127.0.0.1:9").await;
    for g in ["empty", "frozen"] {
        registry
            .add_room_gateway("r", g, Duration::from_secs(60))
            .await
            .expect("add");
    }
    let r = router(registry, Arc::new(Recorder::default()));
    let m = message(r#"{"user_id":"u","room_id":"r","data":1,"id":"m-2"}"#);
    let first = r.publish(&m).await.expect("routed");
    assert!(
        !first.answered.contains(&"empty".to_owned()),
        "a gateway that delivered to no socket is not done: {first:?}"
    );
    r.publish_except(&m, &first.answered).await.expect("routed");
    assert_eq!(
        empty_requests.load(Ordering::SeqCst),
        2,
        "a socket that joined it meanwhile gets the retry"
    );
}

#[tokio::test]
async fn after_an_outage_long_enough_for_rows_to_expire_the_registry_is_not_trusted_for_a_while() {
    let registry = Arc::new(MemoryRegistry::new());
    let r =
        router(registry, Arc::new(Recorder::default())).with_registry_ttl(Duration::from_secs(30));
    let m = message(r#"{"user_id":"u","room_id":"nobody-here","data":1}"#);
    let now = crate::ids::now_millis();
    // A blip shorter than a third of the TTL: no row can have expired.
    r.health.failing_since.store(now - 2_000, Ordering::Relaxed);
    r.health.succeeded();
    assert_eq!(r.publish(&m).await.expect("trusted").delivered, 0);
    // An outage of 15 s: rows may have expired; the gateways write them again within
    // seconds, and until then an answer is not one.
    r.health
        .failing_since
        .store(now - 15_000, Ordering::Relaxed);
    r.health.succeeded();
    let error = r.publish(&m).await.expect_err("not trusted yet");
    assert!(error.is_transient(), "{error}");
    let connection = message(r#"{"user_id":"u","room_id":"r","connection_id":"c1","data":1}"#);
    assert!(
        r.publish(&connection).await.is_err(),
        "connection rows neither"
    );
    // Once the grace is over, nobody holding the room is an answer.
    r.health.distrust_until.store(now, Ordering::Relaxed);
    assert_eq!(r.publish(&m).await.expect("routed").delivered, 0);
}
