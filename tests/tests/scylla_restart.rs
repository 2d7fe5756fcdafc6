//! The ScyllaDB registry across a restart of the CQL node (`scripts/services/cassandra.sh
//! restart`). In its own test file so that it never runs while other tests use the server:
//! cargo runs test files one after the other.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hermes_e2e::{scylla_registry, unique};
use hermes_shared::Error;
use hermes_shared::registry::{Registry, TokenRecord};

/// The registry's request timeout in this test: every call must end within it (plus slack).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const CALL_BOUND: Duration = Duration::from_secs(5);
/// How long the registry may take to work again once the node answers CQL.
const RECOVERY_BOUND: Duration = Duration::from_secs(60);
/// Stop and start of the node, at most (the script's own bounds are 60 s + 180 s).
const RESTART_BOUND: Duration = Duration::from_secs(300);

fn cassandra_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/services/cassandra.sh")
}

/// One registry call, bounded: `Ok` answered, `Err(reason)` failed cleanly with
/// `RegistryUnavailable`; anything else (another error, a hang) fails the test.
async fn probe(registry: &dyn Registry, i: usize) -> Result<(), String> {
    let call = async {
        registry
            .add_room_gateway(
                "restart-room",
                &format!("g{}", i % 4),
                Duration::from_secs(600),
            )
            .await?;
        registry.room_gateways("restart-room").await
    };
    match tokio::time::timeout(CALL_BOUND, call).await {
        Ok(Ok(gateways)) => {
            assert!(!gateways.is_empty(), "the room row just written is missing");
            Ok(())
        }
        Ok(Err(Error::RegistryUnavailable { context, source })) => {
            assert!(!context.is_empty());
            Err(match source {
                Some(cause) => format!("{context}: {cause}"),
                None => context,
            })
        }
        Ok(Err(other)) => panic!("a registry call failed with a non-transient error: {other}"),
        Err(_) => panic!(
            "a registry call hung for more than {CALL_BOUND:?} (request timeout {REQUEST_TIMEOUT:?})"
        ),
    }
}

#[tokio::test]
async fn the_registry_survives_a_node_restart() {
    let registry = scylla_registry(&unique("hermes_test"), REQUEST_TIMEOUT).await;
    let token = TokenRecord {
        user_id: "u-restart".into(),
        room_id: "r-restart".into(),
        token_hash: "$2b$04$restart".into(),
        fast_verifier: None,
        created_at: 1,
    };
    registry
        .put_token(&token)
        .await
        .expect("put token before the restart");
    if let Err(reason) = probe(&registry, 0).await {
        panic!("the registry fails before the restart: {reason}");
    }

    let script = cassandra_script();
    let started = Instant::now();
    let mut restart = tokio::process::Command::new(&script)
        .arg("restart")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));

    // Calls keep coming while the node stops and starts: each ends within the bound, as a
    // success or a clean `RegistryUnavailable`.
    let (mut ok, mut failed, mut i) = (0usize, 0usize, 1usize);
    let mut first_failure = None;
    let status = loop {
        tokio::select! {
            status = restart.wait() => break status.expect("wait for cassandra.sh restart"),
            () = tokio::time::sleep(Duration::from_millis(250)) => {
                match probe(&registry, i).await {
                    Ok(()) => ok += 1,
                    Err(reason) => {
                        failed += 1;
                        first_failure.get_or_insert(reason);
                    }
                }
                i += 1;
                assert!(
                    started.elapsed() < RESTART_BOUND,
                    "{} restart did not finish within {RESTART_BOUND:?}",
                    script.display()
                );
            }
        }
    };
    let restarted_in = started.elapsed();
    assert!(
        status.success(),
        "{} restart failed ({status}); is the node started by this script? \
         (scripts/services/up.sh)",
        script.display()
    );
    println!(
        "during the restart ({restarted_in:?}): {ok} calls succeeded, {failed} failed cleanly \
         (first failure: {})",
        first_failure.as_deref().unwrap_or("none")
    );
    assert!(
        failed > 0,
        "no call failed during the restart: was the node really restarted by {}?",
        script.display()
    );

    // The node answers CQL again: the driver reconnects by itself within the bound.
    let back = Instant::now();
    loop {
        if probe(&registry, i).await.is_ok() {
            break;
        }
        i += 1;
        assert!(
            back.elapsed() < RECOVERY_BOUND,
            "the registry still fails {RECOVERY_BOUND:?} after the node came back"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "registry usable again {:?} after the node was ready",
        back.elapsed()
    );

    // Everything works after the restart, prepared statements and LWTs included, and what
    // was written before is still there.
    assert_eq!(
        registry
            .token("u-restart", "r-restart")
            .await
            .expect("token"),
        Some(token)
    );
    hermes_shared::registry::contract::run_all(&registry).await;
    registry.drop_keyspace().await.expect("drop keyspace");
}
