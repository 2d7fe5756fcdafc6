//! The behaviour every `Registry` implementation must have, as one suite: [`run_all`].
//! The memory registry runs it in its unit tests, the ScyllaDB registry in the e2e tests
//! against a real CQL server (`tests/tests/scylla_registry.rs`, `scylla_restart.rs`, with
//! this crate's `test-support` feature).

use std::time::Duration;

use super::{
    ConnectionRecord, GatewayKeys, GatewayRecord, Holdings, Reaped, Registry, TokenRecord,
};
use crate::history::{Clock, HistoryEntry, Pos};

const TTL: Duration = Duration::from_secs(60);

fn conn(id: &str, gateway: &str) -> ConnectionRecord {
    ConnectionRecord {
        connection_id: id.into(),
        room_id: "room".into(),
        user_id: "user".into(),
        gateway_id: gateway.into(),
        connected_at: 1,
        source_ip: "127.0.0.1".into(),
        user_agent: "test".into(),
    }
}

pub async fn run_all(r: &dyn Registry) {
    gateways_are_listed_until_removed(r).await;
    room_and_user_lookups_return_holding_gateways(r).await;
    connections_are_found_by_id(r).await;
    fast_verifier_is_stored_only_for_the_same_hash(r).await;
    a_token_row_reads_back_as_put_and_a_put_replaces_it_whole(r).await;
    reap_gateway_deletes_every_row_of_that_gateway_only(r).await;
    history_is_read_after_a_position_in_order(r).await;
    history_read_says_when_more_came_than_the_limit(r).await;
}

async fn gateways_are_listed_until_removed(r: &dyn Registry) {
    let g = GatewayRecord {
        gateway_id: "g1".into(),
        internal_url: "http://a".into(),
        started_at: 1,
    };
    r.upsert_gateway(&g, TTL).await.expect("upsert");
    assert_eq!(r.gateway("g1").await.expect("get"), Some(g.clone()));
    assert!(r.gateways().await.expect("list").contains(&g));
    r.remove_gateway("g1").await.expect("remove");
    assert_eq!(r.gateway("g1").await.expect("get"), None);
}

async fn room_and_user_lookups_return_holding_gateways(r: &dyn Registry) {
    r.add_room_gateway("r1", "g1", TTL).await.expect("add");
    r.add_room_gateway("r1", "g2", TTL).await.expect("add");
    r.add_room_gateway("r1", "g2", TTL)
        .await
        .expect("idempotent");
    let mut gws = r.room_gateways("r1").await.expect("lookup");
    gws.sort();
    assert_eq!(gws, vec!["g1".to_owned(), "g2".to_owned()]);
    r.remove_room_gateway("r1", "g1").await.expect("remove");
    assert_eq!(
        r.room_gateways("r1").await.expect("lookup"),
        vec!["g2".to_owned()]
    );
    assert!(r.room_gateways("nobody").await.expect("lookup").is_empty());

    r.add_user_gateway("u1", "g3", TTL).await.expect("add");
    assert_eq!(
        r.user_gateways("u1").await.expect("lookup"),
        vec!["g3".to_owned()]
    );
    r.remove_user_gateway("u1", "g3").await.expect("remove");
    assert!(r.user_gateways("u1").await.expect("lookup").is_empty());
}

async fn connections_are_found_by_id(r: &dyn Registry) {
    r.put_connection(&conn("c1", "g1"), TTL).await.expect("put");
    assert_eq!(
        r.connection("c1").await.expect("get"),
        Some(conn("c1", "g1"))
    );
    r.remove_connection("c1", "g1").await.expect("remove");
    assert_eq!(r.connection("c1").await.expect("get"), None);
    r.remove_connection("c1", "g1")
        .await
        .expect("removing twice is fine");
}

async fn fast_verifier_is_stored_only_for_the_same_hash(r: &dyn Registry) {
    let t = TokenRecord {
        user_id: "u".into(),
        room_id: "r".into(),
        token_hash: "$2b$04$hash-one".into(),
        fast_verifier: None,
        created_at: 1,
    };
    r.put_token(&t).await.expect("put");
    assert!(
        !r.set_fast_verifier("u", "r", "$2b$04$other", "v")
            .await
            .expect("set")
    );
    assert!(
        r.set_fast_verifier("u", "r", "$2b$04$hash-one", "v")
            .await
            .expect("set")
    );
    let stored = r.token("u", "r").await.expect("get").expect("row");
    assert_eq!(stored.fast_verifier.as_deref(), Some("v"));
    assert!(r.delete_token("u", "r").await.expect("delete"));
    assert!(!r.delete_token("u", "r").await.expect("delete twice"));
    assert_eq!(r.token("u", "r").await.expect("get"), None);
}

/// The authorizer keeps a row that already holds the token it issues and compares a JWT's
/// `iat` with the row's `created_at`: both need the row exactly as it was put.
async fn a_token_row_reads_back_as_put_and_a_put_replaces_it_whole(r: &dyn Registry) {
    let first = TokenRecord {
        user_id: "42".into(),
        room_id: "company-7".into(),
        token_hash: "$2a$12$first-hash".into(),
        fast_verifier: Some("first-verifier".into()),
        created_at: 1_795_000_000_123,
    };
    r.put_token(&first).await.expect("put");
    assert_eq!(
        r.token("42", "company-7").await.expect("get"),
        Some(first.clone())
    );
    let second = TokenRecord {
        token_hash: "$2b$10$second-hash".into(),
        fast_verifier: None,
        created_at: 1_795_000_060_456,
        ..first
    };
    r.put_token(&second).await.expect("replace");
    assert_eq!(r.token("42", "company-7").await.expect("get"), Some(second));
    assert_eq!(r.token("42", "company-8").await.expect("get"), None);
    assert!(r.delete_token("42", "company-7").await.expect("delete"));
}

/// Two gateways hold the same room and user and a connection each. The first writes its
/// rows as connects and disconnects do (the index follows every write and delete at once,
/// no heartbeat needed); the second through a heartbeat's `refresh`. A third connection id
/// was put by the first gateway, then put again by the second. Reaping the first deletes
/// exactly its rows, and reaping it again finds nothing.
async fn reap_gateway_deletes_every_row_of_that_gateway_only(r: &dyn Registry) {
    let (g1, g2) = ("reap-g1", "reap-g2");
    let record = |g: &str| GatewayRecord {
        gateway_id: g.into(),
        internal_url: format!("http://{g}"),
        started_at: 1,
    };
    r.upsert_gateway(&record(g1), TTL).await.expect("g1 row");
    for id in ["reap-g1-conn", "reap-moved", "reap-closed"] {
        r.put_connection(&conn(id, g1), TTL).await.expect("connect");
    }
    for room in ["reap-room", "reap-left"] {
        r.add_room_gateway(room, g1, TTL).await.expect("room");
    }
    r.add_user_gateway("reap-user", g1, TTL)
        .await
        .expect("user");
    // A socket of g1 closes, and g1's last socket of a room leaves.
    r.remove_connection("reap-closed", g1)
        .await
        .expect("disconnect");
    r.remove_room_gateway("reap-left", g1)
        .await
        .expect("remove room");
    // g2's heartbeat writes its gateway row and the rows it is given.
    let g2_rows = Holdings {
        rooms: vec!["reap-room".into()],
        users: vec!["reap-user".into()],
        connections: ["reap-g2-conn", "reap-moved"].map(|id| conn(id, g2)).into(),
    };
    r.refresh(&record(g2), TTL, &g2_rows, TTL)
        .await
        .expect("heartbeat g2");

    let keys = r.gateway_keys(g1).await.expect("keys");
    assert_eq!(keys.rooms, vec!["reap-room".to_owned()]);
    assert_eq!(keys.users, vec!["reap-user".to_owned()]);
    assert!(keys.connections.contains(&"reap-g1-conn".to_owned()));
    assert!(
        !keys.connections.contains(&"reap-closed".to_owned()),
        "a removed connection leaves the index with its row: {keys:?}"
    );

    let reaped = r.reap_gateway(g1).await.expect("reap");
    assert_eq!(
        (
            reaped.gateway_row,
            reaped.rooms,
            reaped.users,
            reaped.connections
        ),
        (true, 1, 1, 1)
    );
    let gone: Vec<&str> = reaped
        .gone
        .iter()
        .map(|c| c.connection_id.as_str())
        .collect();
    assert_eq!(
        gone,
        ["reap-g1-conn"],
        "the rows it deleted, not the moved one"
    );
    assert_eq!(reaped.gone[0].gateway_id, g1);
    assert_eq!(r.gateway(g1).await.expect("get"), None);
    assert_eq!(r.connection("reap-g1-conn").await.expect("get"), None);
    assert_eq!(
        r.room_gateways("reap-room").await.expect("lookup"),
        vec![g2.to_owned()]
    );
    assert_eq!(
        r.user_gateways("reap-user").await.expect("lookup"),
        vec![g2.to_owned()]
    );
    assert_eq!(
        r.gateway_keys(g1).await.expect("keys"),
        GatewayKeys::default()
    );

    // The other gateway keeps everything, the moved connection included.
    assert!(r.gateway(g2).await.expect("get").is_some());
    assert_eq!(
        r.connection("reap-g2-conn").await.expect("get"),
        Some(conn("reap-g2-conn", g2))
    );
    assert_eq!(
        r.connection("reap-moved").await.expect("get"),
        Some(conn("reap-moved", g2))
    );
    let mut g2_connections = r.gateway_keys(g2).await.expect("keys").connections;
    g2_connections.sort();
    assert_eq!(g2_connections, vec!["reap-g2-conn", "reap-moved"]);

    assert_eq!(
        r.reap_gateway(g1).await.expect("reap again"),
        Reaped::default()
    );

    // Clean up, so that later checks on the same registry start empty.
    r.reap_gateway(g2).await.expect("reap g2");
    assert_eq!(r.connection("reap-moved").await.expect("get"), None);
    assert!(
        r.room_gateways("reap-room")
            .await
            .expect("lookup")
            .is_empty()
    );
}

fn history_entry(stream: &str, pos: Pos, id: &str, room: Option<&str>) -> HistoryEntry {
    HistoryEntry {
        stream: stream.into(),
        pos,
        id: id.into(),
        room_id: room.map(str::to_owned),
        frame: format!(r#"{{"user_id":"u","data":"{id}"}}"#),
        published_at: Some(7),
    }
}

/// Entries come back after the position asked, in position order (whatever order two
/// writers appended them in), with what was written; other streams' entries do not.
async fn history_is_read_after_a_position_in_order(r: &dyn Registry) {
    let (a, b) = (Clock::new(), Clock::new());
    let mut positions = [a.next(), b.next(), a.next()];
    positions.sort();
    let [first, second, third] = positions;
    let p1 = first;
    // Appended out of order, as racing writers may.
    for (pos, id) in [(third, "m3"), (second, "m2"), (first, "m1")] {
        r.append_history(&history_entry("room:h1", pos, id, None), TTL, 100)
            .await
            .expect("append");
    }
    r.append_history(&history_entry("user:h1", p1, "other", Some("r")), TTL, 100)
        .await
        .expect("append");
    let page = r
        .read_history("room:h1", first.minus(Duration::from_secs(1)), 10)
        .await
        .expect("read");
    assert!(page.complete);
    let ids: Vec<&str> = page.entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["m1", "m2", "m3"]);
    assert_eq!(page.entries[0], history_entry("room:h1", first, "m1", None));
    let after_first = r.read_history("room:h1", first, 10).await.expect("read");
    let ids: Vec<&str> = after_first.entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["m2", "m3"], "strictly after the position");
    let user = r
        .read_history("user:h1", Pos::default(), 10)
        .await
        .expect("read");
    assert_eq!(user.entries.len(), 1);
    assert_eq!(user.entries[0].room_id.as_deref(), Some("r"));
    let none = r
        .read_history("room:nobody", Pos::default(), 10)
        .await
        .expect("read");
    assert!(none.complete && none.entries.is_empty());
}

/// A read returns at most the limit, the oldest first, and says it is not complete.
async fn history_read_says_when_more_came_than_the_limit(r: &dyn Registry) {
    let clock = Clock::new();
    let start = clock.next();
    for n in 0..5 {
        r.append_history(
            &history_entry("room:h2", clock.next(), &format!("m{n}"), None),
            TTL,
            100,
        )
        .await
        .expect("append");
    }
    let page = r.read_history("room:h2", start, 3).await.expect("read");
    assert!(!page.complete);
    let ids: Vec<&str> = page.entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["m0", "m1", "m2"]);
    let all = r.read_history("room:h2", start, 5).await.expect("read");
    assert!(all.complete && all.entries.len() == 5);
}
