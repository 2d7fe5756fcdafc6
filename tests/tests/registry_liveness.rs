//! Liveness per gateway on the ScyllaDB registry (a real CQL server): a gateway's rows are
//! written on connect with a long TTL and renewed only at their turn, not on every
//! heartbeat; and a gateway that starts again under the id of a run that was killed
//! deletes what that run left before it claims the id.

use std::time::Duration;

use hermes_e2e::consumer::{env_refs, scylla_env};
use hermes_e2e::{Gateway, scylla_nodes, scylla_registry, unique, within};
use hermes_shared::registry::Registry as _;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

const TICK: Duration = Duration::from_millis(100);

async fn cql() -> Session {
    SessionBuilder::new()
        .known_node(scylla_nodes())
        .build()
        .await
        .expect("a CQL session")
}

/// The time (µs) of the last write of a connection row, or None once it is gone.
async fn written_at(cql: &Session, keyspace: &str, connection_id: &str) -> Option<i64> {
    let query =
        format!("SELECT WRITETIME(gateway_id) FROM {keyspace}.connections WHERE connection_id = ?");
    let rows = cql
        .query_unpaged(query, (connection_id,))
        .await
        .expect("select")
        .into_rows_result()
        .expect("rows");
    rows.maybe_first_row::<(Option<i64>,)>()
        .expect("a row")
        .and_then(|(at,)| at)
}

/// With a 2 s heartbeat TTL and a 4 s row TTL (each row renewed every 2 s at its own turn),
/// an idle socket's connection row is there throughout 12 s (three row TTLs), and it was
/// written about once per 2 s: not on every heartbeat (every 0.67 s), which is what rows
/// cost before liveness moved to the gateway's own row.
#[tokio::test]
async fn an_idle_sockets_row_outlives_its_ttl_renewed_at_its_turn_not_every_heartbeat() {
    let keyspace = unique("e2e_liveness");
    let mut env = scylla_env(&keyspace);
    for (k, v) in [
        ("HERMES_REGISTRY_TTL_SECONDS", "2"),
        ("HERMES_REGISTRY_ROW_TTL_SECONDS", "4"),
        ("HERMES_DRAIN_SECONDS", "1"),
    ] {
        env.push((k.into(), v.into()));
    }
    let gw = Gateway::start(&env_refs(&env)).await;
    let (_socket, id) = gw.connect_modern(&gw.token("idle", "room").await).await;
    let cql = cql().await;
    let mut writes = std::collections::BTreeSet::new();
    let start = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_secs(12) {
        let at = written_at(&cql, &keyspace, &id).await;
        let Some(at) = at else {
            panic!(
                "the idle socket's row expired {:?} after connect; gateway logs:\n{}",
                start.elapsed(),
                gw.logs()
            );
        };
        writes.insert(at);
        tokio::time::sleep(TICK).await;
    }
    // The write at connect and one per 2 s period since: 6 or 7. Every heartbeat: ~18.
    assert!(
        (5..=8).contains(&writes.len()),
        "{} writes of the row in 12 s: {writes:?}",
        writes.len()
    );
}

/// A gateway killed with SIGKILL leaves its rows (a 24-hour safety-net TTL). Started again
/// under the same id (a host name), it deletes them before its first heartbeat row, so
/// that they do not look alive again with it; then its own sockets are registered as ever.
#[tokio::test]
async fn a_gateway_started_again_under_a_killed_runs_id_deletes_what_that_run_left() {
    let keyspace = unique("e2e_same_id");
    let mut env = scylla_env(&keyspace);
    env.push(("HERMES_GATEWAY_ID".into(), "gw-same".into()));
    let env = env_refs(&env);
    let mut first = Gateway::start(&env).await;
    let (_old, old_id) = first
        .connect_modern(&first.token("u-old", "r-old").await)
        .await;
    let registry = scylla_registry(&keyspace, Duration::from_secs(5)).await;
    first.kill().await;
    assert!(
        registry.connection(&old_id).await.expect("get").is_some(),
        "the killed run's connection row is there"
    );
    let room = registry.room_gateways("r-old").await.expect("room");
    assert_eq!(room, ["gw-same"]);

    let second = Gateway::start(&env).await;
    // Ready means its first heartbeat is written, which comes after the reap.
    assert_eq!(registry.connection(&old_id).await.expect("get"), None);
    assert!(
        registry
            .room_gateways("r-old")
            .await
            .expect("room")
            .is_empty()
    );
    assert!(
        registry
            .user_gateways("u-old")
            .await
            .expect("user")
            .is_empty()
    );
    assert!(
        second
            .logs()
            .contains("deleted the rows an earlier run of this gateway id left"),
        "logs:\n{}",
        second.logs()
    );
    let (_new, new_id) = second
        .connect_modern(&second.token("u-new", "r-new").await)
        .await;
    let row = registry.connection(&new_id).await.expect("get");
    assert_eq!(row.map(|r| r.gateway_id), Some("gw-same".to_owned()));
    let keys = registry.gateway_keys("gw-same").await.expect("keys");
    assert_eq!(
        (keys.rooms, keys.users, keys.connections),
        (vec!["r-new".into()], vec!["u-new".into()], vec![new_id]),
    );
    // The index and the rows agree after the second run's exit too: nothing is left.
    second.terminate();
    let gone = within(Duration::from_secs(20), TICK, || async {
        registry
            .gateway_keys("gw-same")
            .await
            .is_ok_and(|k| k.rooms.is_empty() && k.users.is_empty() && k.connections.is_empty())
            && registry.gateway("gw-same").await.is_ok_and(|g| g.is_none())
    })
    .await;
    assert!(gone.is_some(), "logs:\n{}", second.logs());
    registry.drop_keyspace().await.expect("drop keyspace");
}
