//! Hops: dead gateways' rows are removed; the directory's ready and terminating gateways
//! are sent to at its URLs, and a terminating one that does not answer is skipped.

use super::*;

#[tokio::test]
async fn rows_of_a_gateway_without_heartbeat_are_removed() {
    let registry = Arc::new(MemoryRegistry::new());
    registry
        .add_room_gateway("r", "ghost", Duration::from_secs(60))
        .await
        .expect("add");
    let r = router(registry.clone(), Arc::new(Recorder::default()));
    let outcome = r
        .publish(&message(r#"{"user_id":"u","room_id":"r","data":1}"#))
        .await
        .expect("routed");
    assert_eq!(outcome.gateways, 0);
    assert!(
        registry
            .room_gateways("r")
            .await
            .expect("lookup")
            .is_empty()
    );
}

#[tokio::test]
async fn a_terminating_gateway_that_does_not_answer_is_skipped_not_failed_and_keeps_its_rows() {
    let registry = Arc::new(MemoryRegistry::new());
    let ttl = Duration::from_secs(60);
    // Alive by its heartbeat row, but its pod is terminating and nothing answers at its
    // URL any more.
    live(&registry, "draining", "http://127.0.0.1:9").await;
    registry
        .add_room_gateway("r", "draining", ttl)
        .await
        .expect("add");
    registry
        .add_room_gateway("r", "local", ttl)
        .await
        .expect("add");
    let local = Arc::new(Recorder::default());
    let r = router(registry.clone(), local.clone()).with_directory(Arc::new(Fixed(HashMap::from(
        [("draining".to_owned(), Presence::Terminating(None))],
    ))));
    let o = r
        .publish(&message(r#"{"user_id":"u","room_id":"r","data":1}"#))
        .await
        .expect("routed");
    assert_eq!(o.skipped, vec!["draining".to_owned()]);
    assert!(o.failed.is_empty(), "skipping is not a failure: {o:?}");
    assert_eq!((o.gateways, o.delivered), (1, 1));
    assert_eq!(local.requests.lock().len(), 1);
    let mut held = registry.room_gateways("r").await.expect("lookup");
    held.sort();
    assert_eq!(held, vec!["draining".to_owned(), "local".to_owned()]);
}

#[tokio::test]
async fn a_terminating_gateway_still_gets_the_message_for_the_sockets_it_has_not_closed() {
    let url = fake_gateway(3).await;
    let registry = Arc::new(MemoryRegistry::new());
    registry
        .add_room_gateway("r", "draining", Duration::from_secs(60))
        .await
        .expect("add");
    let r = router(registry, Arc::new(Recorder::default())).with_directory(Arc::new(Fixed(
        HashMap::from([("draining".to_owned(), Presence::Terminating(Some(url)))]),
    )));
    let o = r
        .publish(&message(r#"{"user_id":"u","room_id":"r","data":1}"#))
        .await
        .expect("routed");
    assert_eq!((o.gateways, o.delivered), (1, 3), "{o:?}");
    assert!(o.skipped.is_empty() && o.failed.is_empty(), "{o:?}");
}

#[tokio::test]
async fn a_ready_gateway_is_reached_at_the_directory_url_even_without_a_registry_row() {
    let url = fake_gateway(7).await;
    let registry = Arc::new(MemoryRegistry::new());
    registry
        .add_room_gateway("r", "pod-a", Duration::from_secs(60))
        .await
        .expect("add");
    let r = router(registry.clone(), Arc::new(Recorder::default())).with_directory(Arc::new(
        Fixed(HashMap::from([("pod-a".to_owned(), Presence::Ready(url))])),
    ));
    let o = r
        .publish(&message(r#"{"user_id":"u","room_id":"r","data":1}"#))
        .await
        .expect("routed");
    assert_eq!((o.gateways, o.delivered), (1, 7), "{o:?}");
    // Without the directory the same gateway has no heartbeat row: it is dead.
    assert_eq!(
        registry.room_gateways("r").await.expect("lookup"),
        vec!["pod-a".to_owned()]
    );
}

#[test]
fn a_gateway_a_later_list_leaves_out_is_no_longer_seen_live() {
    let record = |id: &str| GatewayRecord {
        gateway_id: id.into(),
        internal_url: format!("http://{id}"),
        started_at: 0,
    };
    let urls = crate::router::hops::UrlCache::default();
    let first = Instant::now();
    urls.put_all(&[record("killed"), record("alive")], first);
    let listed_at = Instant::now();
    // A hop read made while the list was being read is newer than the list: kept.
    urls.put_all(
        &[record("read-meanwhile")],
        listed_at + Duration::from_millis(1),
    );
    urls.put_listed(&[record("alive")], listed_at);
    let mut seen = urls.seen_within(Duration::from_secs(30));
    seen.sort();
    assert_eq!(seen, ["alive", "read-meanwhile"]);
}
