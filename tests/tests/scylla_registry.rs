//! The ScyllaDB registry against the real CQL server (`scripts/services/up.sh` starts one):
//! the registry contract, idempotent schema creation, TTL expiry and a large heartbeat.
//! Each test uses its own keyspace, dropped when the test passes (kept for inspection when
//! it fails).

use std::time::{Duration, Instant};

use hermes_e2e::{scylla_registry, unique};
use hermes_shared::registry::{ConnectionRecord, GatewayRecord, Holdings, Registry};

const TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn scylla_registry_meets_the_registry_contract() {
    let registry = scylla_registry(&unique("hermes_test"), TIMEOUT).await;
    hermes_shared::registry::contract::run_all(&registry).await;
    registry.drop_keyspace().await.expect("drop keyspace");
}

#[tokio::test]
async fn schema_creation_is_idempotent() {
    let keyspace = unique("hermes_test");
    let first = scylla_registry(&keyspace, TIMEOUT).await;
    first
        .add_room_gateway("room", "g1", Duration::from_secs(60))
        .await
        .expect("write through the first registry");

    // A second start against the existing schema: no error, and the data is still there.
    let second = scylla_registry(&keyspace, TIMEOUT).await;
    assert_eq!(second.keyspace(), keyspace);
    assert_eq!(
        second.room_gateways("room").await.expect("lookup"),
        vec!["g1".to_owned()]
    );
    second.drop_keyspace().await.expect("drop keyspace");
}

/// Polls `gone` until it answers true, failing after `deadline`. Returns when it did.
async fn wait_until_gone<F, Fut>(what: &str, deadline: Duration, mut gone: F) -> Instant
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if gone().await {
            return Instant::now();
        }
        assert!(
            start.elapsed() < deadline,
            "{what} still there {deadline:?} after its TTL should have run out"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn rows_expire_with_their_ttl() {
    let registry = scylla_registry(&unique("hermes_test"), TIMEOUT).await;
    let deadline = Duration::from_secs(20);

    // Sub-second TTLs round up to 1 s (CQL TTLs are whole seconds; 0 would mean "forever").
    registry
        .add_room_gateway("short-room", "g1", Duration::from_millis(300))
        .await
        .expect("add room");
    registry
        .add_user_gateway("short-user", "g1", Duration::from_millis(300))
        .await
        .expect("add user");
    wait_until_gone("room row (1 s TTL)", deadline, || async {
        registry
            .room_gateways("short-room")
            .await
            .expect("lookup")
            .is_empty()
    })
    .await;
    wait_until_gone("user row (1 s TTL)", deadline, || async {
        registry
            .user_gateways("short-user")
            .await
            .expect("lookup")
            .is_empty()
    })
    .await;

    // A 3 s TTL: the rows are there right after the write, gone some seconds later, and
    // not before 2 s (CQL expiry has one-second granularity).
    let gateway = GatewayRecord {
        gateway_id: "g-ttl".into(),
        internal_url: "http://127.0.0.1:1".into(),
        started_at: 1_700_000_000_000,
    };
    let connection = ConnectionRecord {
        connection_id: "c-ttl".into(),
        room_id: "room".into(),
        user_id: "user".into(),
        gateway_id: "g-ttl".into(),
        connected_at: 1_700_000_000_123,
        source_ip: "10.0.0.1".into(),
        user_agent: "test".into(),
    };
    let ttl = Duration::from_secs(3);
    let written = Instant::now();
    registry
        .upsert_gateway(&gateway, ttl)
        .await
        .expect("gateway");
    registry
        .put_connection(&connection, ttl)
        .await
        .expect("connection");
    assert_eq!(registry.gateway("g-ttl").await.expect("get"), Some(gateway));
    assert_eq!(
        registry.connection("c-ttl").await.expect("get"),
        Some(connection)
    );
    let gone = wait_until_gone("gateway row (3 s TTL)", deadline, || async {
        registry.gateway("g-ttl").await.expect("get").is_none()
    })
    .await;
    wait_until_gone("connection row (3 s TTL)", deadline, || async {
        registry.connection("c-ttl").await.expect("get").is_none()
    })
    .await;
    assert!(
        gone - written >= Duration::from_secs(2),
        "a 3 s TTL expired after {:?}",
        gone - written
    );
    registry.drop_keyspace().await.expect("drop keyspace");
}

#[tokio::test]
async fn refresh_writes_thousands_of_rows_concurrently() {
    let registry = scylla_registry(&unique("hermes_test"), Duration::from_secs(10)).await;
    let gateway = GatewayRecord {
        gateway_id: "g-big".into(),
        internal_url: "http://10.0.0.9:8081".into(),
        started_at: 1_700_000_000_000,
    };
    // HERMES_TEST_REFRESH_CONNECTIONS=20000 measures a full-size gateway.
    let n: u64 = std::env::var("HERMES_TEST_REFRESH_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000)
        .max(5_000);
    let connections: Vec<ConnectionRecord> = (0..n)
        .map(|i| ConnectionRecord {
            connection_id: format!("conn-{i}"),
            room_id: format!("room-{}", i % 500),
            user_id: format!("user-{}", i % 2_000),
            gateway_id: gateway.gateway_id.clone(),
            connected_at: 1_700_000_000_000 + i,
            source_ip: "10.1.2.3".into(),
            user_agent: "load".into(),
        })
        .collect();
    let holdings = Holdings {
        rooms: (0..500).map(|i| format!("room-{i}")).collect(),
        users: (0..2_000).map(|i| format!("user-{i}")).collect(),
        connections,
    };
    let rows = 1 + holdings.rooms.len() + holdings.users.len() + holdings.connections.len();
    let ttl = Duration::from_secs(120);

    for round in ["first (cold)", "second (warm)"] {
        let start = Instant::now();
        registry
            .refresh(&gateway, ttl, &holdings, ttl)
            .await
            .expect("refresh");
        let took = start.elapsed();
        println!(
            "refresh {round}: {rows} rows ({} connections, {} rooms, {} users) in {took:?} \
             ({:.0} rows/s)",
            holdings.connections.len(),
            holdings.rooms.len(),
            holdings.users.len(),
            rows as f64 / took.as_secs_f64()
        );
    }

    assert_eq!(
        registry.gateway("g-big").await.expect("gateway"),
        Some(gateway.clone())
    );
    for i in [0usize, 1, 2_499, holdings.connections.len() - 1] {
        let expected = &holdings.connections[i];
        assert_eq!(
            registry
                .connection(&expected.connection_id)
                .await
                .expect("connection"),
            Some(expected.clone())
        );
    }
    for room in ["room-0", "room-250", "room-499"] {
        assert_eq!(
            registry.room_gateways(room).await.expect("room"),
            vec!["g-big".to_owned()]
        );
    }
    for user in ["user-0", "user-1999"] {
        assert_eq!(
            registry.user_gateways(user).await.expect("user"),
            vec!["g-big".to_owned()]
        );
    }
    // The reaper's index names every row, read back across its shards and pages.
    let keys = registry.gateway_keys("g-big").await.expect("gateway_keys");
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(sorted(keys.rooms), sorted(holdings.rooms.clone()));
    assert_eq!(sorted(keys.users), sorted(holdings.users.clone()));
    let ids = holdings.connections.iter().map(|c| c.connection_id.clone());
    assert_eq!(sorted(keys.connections), sorted(ids.collect()));
    registry.drop_keyspace().await.expect("drop keyspace");
}

/// Lookups made at the same moment share CQL requests (`WHERE key IN ?`): each caller must
/// still get exactly its own key's gateways — several, one, or none — duplicates included.
#[tokio::test]
async fn concurrent_lookups_each_get_their_own_keys_gateways() {
    let registry = scylla_registry(&unique("hermes_test"), TIMEOUT).await;
    let ttl = Duration::from_secs(600);
    // User i is held by gateways g0..g(i % 3) (user 0: g0; user 2: g0, g1, g2); users from
    // 300 on are held nowhere. Rooms the same.
    for i in 0..300 {
        for g in 0..=(i % 3) {
            let (user, room, gateway) = (format!("u{i}"), format!("r{i}"), format!("g{g}"));
            registry
                .add_user_gateway(&user, &gateway, ttl)
                .await
                .expect("add user row");
            registry
                .add_room_gateway(&room, &gateway, ttl)
                .await
                .expect("add room row");
        }
    }
    let expected = |i: usize| -> Vec<String> {
        if i >= 300 {
            return Vec::new();
        }
        (0..=(i % 3)).map(|g| format!("g{g}")).collect()
    };
    // 1,000 lookups at once (every key twice, some unknown): far more than one batch.
    let lookups = (0..1000).map(|n| {
        let (registry, i) = (&registry, n % 500);
        async move {
            let (user, room) = (format!("u{i}"), format!("r{i}"));
            let (users, rooms) =
                tokio::join!(registry.user_gateways(&user), registry.room_gateways(&room));
            let (mut users, mut rooms) = (users.expect("user lookup"), rooms.expect("room lookup"));
            users.sort();
            rooms.sort();
            (i, users, rooms)
        }
    });
    for (i, users, rooms) in futures_util::future::join_all(lookups).await {
        assert_eq!(users, expected(i), "gateways of user u{i}");
        assert_eq!(rooms, expected(i), "gateways of room r{i}");
    }
    registry.drop_keyspace().await.expect("drop keyspace");
}

/// `hermes-gateway import-tokens` into the real CQL server: the rows of an `aws dynamodb
/// scan` export land in the keyspace's `tokens` table, and a second run writes nothing.
#[tokio::test]
async fn import_tokens_writes_a_dynamodb_export_into_the_tokens_table() {
    let keyspace = unique("hermes_test");
    let registry = scylla_registry(&keyspace, TIMEOUT).await;
    let hash = "$2a$04$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW";
    let scan = format!(
        r#"{{"Items": [
  {{"user_id": {{"N": "42"}}, "company_code": {{"S": "acme"}}, "token": {{"S": "{hash}"}}}},
  {{"user_id": {{"S": "u-7"}}, "company_code": {{"S": "acme"}}, "token": {{"S": "not-a-hash"}}}}
], "Count": 2}}"#
    );
    let file = std::env::temp_dir()
        .join(unique("scan"))
        .with_extension("json");
    std::fs::write(&file, scan).expect("write the export");
    let import = || {
        let mut cmd = std::process::Command::new(hermes_e2e::binary("hermes-gateway"));
        cmd.env_clear()
            .arg("import-tokens")
            .arg(&file)
            .args(["--room-attribute", "company_code"])
            .envs(hermes_e2e::scylla_env(&keyspace));
        let out = cmd.output().expect("runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(
        import(),
        "import-tokens: 2 rows read: 1 written, 0 unchanged, 0 kept, 1 bad (skipped)"
    );
    let row = registry
        .token("42", "acme")
        .await
        .expect("read")
        .expect("imported row");
    assert_eq!(
        (row.token_hash.as_str(), row.fast_verifier, row.created_at),
        (hash, None, 0)
    );
    assert_eq!(
        import(),
        "import-tokens: 2 rows read: 0 written, 1 unchanged, 0 kept, 1 bad (skipped)"
    );
    let _ = std::fs::remove_file(&file);
    registry.drop_keyspace().await.expect("drop keyspace");
}

/// `HERMES_SCYLLA_SCHEMA=verify` (pods that may not CREATE, or whose schema one step made
/// before them): a start against a keyspace without the tables fails and names them and the
/// ways out; after a DBA applied `schema/hermes.cql` (here: `hermes-gateway schema`'s text,
/// statement by statement, through a session of its own) the same start succeeds and the
/// registry works.
#[tokio::test]
async fn verify_mode_refuses_a_missing_schema_and_accepts_the_dba_script() {
    use hermes_shared::registry::scylla::{SchemaMode, ScyllaRegistry, cql_script, table_names};

    let keyspace = unique("hermes_test");
    let mut config = hermes_e2e::scylla_config(&keyspace, TIMEOUT);
    config.schema = SchemaMode::Verify;
    let refused = match ScyllaRegistry::connect(&config).await {
        Ok(_) => panic!("a start without the schema is refused"),
        Err(error) => error.to_string(),
    };
    assert!(
        refused.contains(&format!("lacks the table(s) {}", table_names().join(", ")))
            && refused.contains("hermes-gateway migrate"),
        "{refused}"
    );

    let dba = scylla::client::session_builder::SessionBuilder::new()
        .known_nodes(&config.nodes)
        .build()
        .await
        .expect("a DBA's session");
    let script = cql_script(&keyspace, &config.replication);
    let without_comments: Vec<&str> = script
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect();
    for statement in without_comments
        .join("\n")
        .split(';')
        .filter(|s| !s.trim().is_empty())
    {
        dba.query_unpaged(statement, ())
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }

    let registry = ScyllaRegistry::connect(&config)
        .await
        .expect("the start succeeds once the schema exists");
    registry
        .add_room_gateway("room", "g1", Duration::from_secs(60))
        .await
        .expect("write");
    assert_eq!(
        registry.room_gateways("room").await.expect("lookup"),
        vec!["g1".to_owned()]
    );
    registry.drop_keyspace().await.expect("drop keyspace");
}

/// `hermes-gateway migrate` (the chart's schema Job): creates what is missing, and a
/// second run changes nothing; a `verify` start then succeeds.
#[tokio::test]
async fn migrate_creates_the_schema_once_and_verify_accepts_it() {
    use hermes_shared::registry::scylla::{SchemaMode, ScyllaRegistry, migrate, table_names};

    let keyspace = unique("hermes_test");
    let mut config = hermes_e2e::scylla_config(&keyspace, TIMEOUT);
    config.schema = SchemaMode::Verify;
    assert_eq!(migrate(&config).await.expect("migrate"), table_names());
    assert_eq!(
        migrate(&config).await.expect("migrate again"),
        table_names()
    );
    let registry = ScyllaRegistry::connect(&config)
        .await
        .expect("a verify start after migrate");
    registry.drop_keyspace().await.expect("drop keyspace");
}
