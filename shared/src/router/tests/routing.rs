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

/// An outage of the registry long enough for rows to expire, seen by `r` from its first
/// failure (which records the gateways seen live before it) to its end, 15 s later.
fn outage_of_15_s(r: &Router) {
    let failure: Result<()> = Err(crate::Error::registry_answer("down"));
    r.registry_answered(&failure);
    let began = crate::ids::now_millis() - 15_000;
    r.health.failing_since.store(began, Ordering::Relaxed);
    r.registry_answered(&Ok(()));
}

/// The local gateway's router (rows of a 30 s TTL, room messages sent to every listed
/// gateway) with the local gateway and `others` (id, internal URL) live in `registry`,
/// after it routed one room message, so it has seen them live; the message and what
/// became of it.
async fn routed_once(
    registry: &Arc<MemoryRegistry>,
    others: &[(&str, &str)],
) -> (Router, PublishMessage, Result<RouteOutcome>) {
    live(registry, "local", "http://127.0.0.1:9").await;
    for (id, url) in others {
        live(registry, id, url).await;
    }
    let r = router(registry.clone(), Arc::new(Recorder::default()))
        .with_registry_ttl(Duration::from_secs(30))
        .with_route_to_all_up_to(8);
    let m = message(r#"{"user_id":"u","room_id":"r","data":1}"#);
    let first = r.publish(&m).await;
    (r, m, first)
}

/// Ends the grace that follows the registry's return (as its 5 s passing would).
fn grace_over(r: &Router) {
    r.health
        .distrust_until
        .store(crate::ids::now_millis(), Ordering::Relaxed);
}

#[tokio::test]
async fn after_an_outage_a_gateway_seen_live_before_it_is_awaited_until_listed_again() {
    let registry = Arc::new(MemoryRegistry::new());
    let (late_url, late_requests) = fake_gateway_counting(1).await;
    let (r, m, first) = routed_once(&registry, &[("late", &late_url)]).await;
    assert_eq!(first.expect("routed").gateways, 2);
    let before = late_requests.load(Ordering::SeqCst);

    // The rows expired during the outage; the registry is back for this router, but the
    // late gateway's driver has not reconnected yet: its row is missing.
    registry.remove_gateway("late").await.expect("remove");
    outage_of_15_s(&r);
    let mut awaited = r.health.awaited();
    awaited.sort();
    assert_eq!(
        awaited,
        ["late", "local"],
        "every gateway seen live before it"
    );
    // Even once the grace after the registry's return is over, the message is not
    // acknowledged having reached only the gateways quickest to come back.
    grace_over(&r);
    let error = r.publish(&m).await.expect_err("late gateway awaited");
    assert!(error.is_transient(), "{error}");
    assert_eq!(r.health.awaited(), ["late"], "listed without it");

    // It writes its row again: the next listing sees it, and the grace runs from then (its
    // heartbeat writes its sockets' rows after its own).
    live(&registry, "late", &late_url).await;
    r.health.last_relist.store(0, Ordering::Relaxed);
    assert!(r.publish(&m).await.is_err(), "grace after the last return");
    assert!(r.health.awaited().is_empty());
    grace_over(&r);
    let outcome = r.publish(&m).await.expect("trusted again");
    assert_eq!(outcome.gateways, 2, "{outcome:?}");
    assert_eq!(late_requests.load(Ordering::SeqCst), before + 1);
}

#[tokio::test]
async fn a_gateway_not_back_within_a_ttl_of_the_outage_is_no_longer_awaited() {
    let registry = Arc::new(MemoryRegistry::new());
    let (r, m, first) = routed_once(&registry, &[("died-meanwhile", "http://127.0.0.1:9")]).await;
    first.expect("routed");
    registry
        .remove_gateway("died-meanwhile")
        .await
        .expect("remove");
    outage_of_15_s(&r);
    grace_over(&r);
    assert!(r.publish(&m).await.is_err(), "awaited");
    r.health.awaited_for_a_ttl();
    let outcome = r.publish(&m).await.expect("dead by the heartbeat rule");
    assert_eq!(outcome.gateways, 1, "{outcome:?}");
}

#[tokio::test]
async fn a_short_blip_awaits_no_gateway() {
    let registry = Arc::new(MemoryRegistry::new());
    let (r, m, first) = routed_once(&registry, &[("other", "http://127.0.0.1:9")]).await;
    first.expect("routed");
    registry.remove_gateway("other").await.expect("remove");
    let failure: Result<()> = Err(crate::Error::registry_answer("down"));
    r.registry_answered(&failure);
    r.registry_answered(&Ok(()));
    assert!(r.health.awaited().is_empty());
    assert_eq!(r.publish(&m).await.expect("trusted").gateways, 1);
}

#[tokio::test]
async fn a_gateway_whose_deliveries_kept_failing_before_the_outage_is_not_awaited() {
    let registry = Arc::new(MemoryRegistry::new());
    let (r, _, first) = routed_once(&registry, &[("killed", "http://127.0.0.1:9")]).await;
    first.expect("routed");
    // Killed: its row is still there, its circuit is open.
    for _ in 0..crate::router::links::breaker::FAILURES_TO_OPEN {
        r.links
            .breakers()
            .record("killed", crate::router::links::breaker::Pass::Closed, false);
    }
    outage_of_15_s(&r);
    assert_eq!(r.health.awaited(), ["local"]);
}
