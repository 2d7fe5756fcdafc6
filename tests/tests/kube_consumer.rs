//! The consumer's Kubernetes awareness against a real API server (scripts/kube/control-plane.sh),
//! the real CQL server and RabbitMQ, and real gateway and consumer processes. Each test has
//! its own namespace, keyspace and queue. Every consumer authenticates as the chart's
//! ServiceAccount with exactly the chart's Role (rendered by helm, applied by kubectl), so
//! these tests also prove that the Role grants what the consumer uses.
//!
//! There are no controllers: the tests create the gateway Pods and play the EndpointSlice
//! controller (one slice per gateway, each test gateway having its own port, pointing at the
//! machine's non-loopback address since the API server refuses loopback ones in slices).
//!
//! Needs `KUBECONFIG` (or `HERMES_TEST_KUBECONFIG`), `HERMES_KUBECTL` and optionally
//! `HERMES_HELM`: see docs/dev/control-plane.md. Run alone with `cargo test -p hermes-e2e --test kube_consumer`.

use std::time::Duration;

use hermes_e2e::kube::{ConsumerAccess, Endpoint, KubeNamespace, node_ip};
use hermes_e2e::*;
use hermes_shared::registry::Registry;
use serde_json::json;

const LEADER: &str = "hermes_kube_leader";
const ACQUISITIONS: &str = "hermes_kube_leader_acquisitions_total";
const SKIPPED: &str = "hermes_route_skipped_total{reason=\"terminating\"}";
const READY: &str = "hermes_kube_gateway_endpoints{state=\"ready\"}";
const TERMINATING: &str = "hermes_kube_gateway_endpoints{state=\"terminating\"}";
const DELIVERED: &str = "hermes_queue_messages_total{outcome=\"delivered\",source=\"amqp\"}";
const RETRIED: &str = "hermes_queue_messages_total{outcome=\"retried\",source=\"amqp\"}";
const REAPER_OK: &str = "hermes_reaper_runs_total{result=\"ok\"}";
const REAPED: &str = "hermes_reaped_gateways_total";
/// How often the measuring loops look (the measured times are this precise).
const TICK: Duration = Duration::from_millis(20);

/// Waits (20 s at most) until `check` holds, else fails showing `consumer`'s logs.
async fn until<F, Fut>(consumer: &Consumer, what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    if within(Duration::from_secs(20), TICK, check).await.is_none() {
        let metrics = metrics_text(&format!("{}/metrics", consumer.http)).await;
        let metrics: Vec<_> = metrics
            .lines()
            .filter(|l| l.starts_with("hermes_") && !l.contains("_bucket"))
            .collect();
        panic!(
            "{what}: not within 20 s; consumer metrics:\n{}\nconsumer logs:\n{}",
            metrics.join("\n"),
            consumer.logs()
        );
    }
}

/// One test's namespace (with the chart's consumer access), keyspace and queue.
/// The identities (Lease holder names) of the consumers of the Lease tests.
const IDENTITIES: [&str; 2] = ["c1", "c2"];

struct Setup {
    ns: KubeNamespace,
    access: ConsumerAccess,
    keyspace: String,
    queue: String,
    publisher: AmqpPublisher,
}

impl Setup {
    async fn new(prefix: &str) -> Self {
        let ns = KubeNamespace::create(prefix).await;
        let access = ns.install_consumer_access().await;
        let queue = unique("hermes-e2e-kube");
        let mut publisher = AmqpPublisher::new();
        publisher.declare(&queue).await;
        Self {
            ns,
            access,
            keyspace: unique("e2e_kube"),
            queue,
            publisher,
        }
    }

    /// A gateway whose id is its pod's name, with its Pod.
    async fn gateway(&self, pod: &str, extra: &[(&str, &str)]) -> Gateway {
        let mut env = scylla_env(&self.keyspace);
        env.push(("HERMES_GATEWAY_ID".into(), pod.into()));
        env.extend(extra.iter().map(|(k, v)| ((*k).into(), (*v).into())));
        let gateway = Gateway::start(&env_refs(&env)).await;
        self.ns.create_gateway_pod(&self.access, pod).await;
        gateway
    }

    /// A RabbitMQ consumer with Kubernetes awareness, as `identity`.
    async fn consumer(&self, identity: &str, extra: &[(&str, &str)]) -> Consumer {
        let mut env = scylla_env(&self.keyspace);
        env.push(("HERMES_SOURCE".into(), "amqp".into()));
        env.push(("HERMES_AMQP_URL".into(), amqp_url()));
        env.push(("HERMES_AMQP_QUEUE".into(), self.queue.clone()));
        env.extend(self.ns.consumer_env(&self.access, identity));
        env.extend(extra.iter().map(|(k, v)| ((*k).into(), (*v).into())));
        Consumer::start(&env_refs(&env)).await
    }

    async fn send(&mut self, message: serde_json::Value) {
        self.publisher
            .publish(&self.queue, message.to_string().as_bytes())
            .await;
    }

    async fn holder(&self) -> Option<String> {
        self.ns.lease_holder(&self.access.lease_name).await
    }

    /// Waits until exactly one of `consumers` (named by `identities`) reports leading and
    /// the Lease names it; returns its index.
    async fn single_leader(&self, consumers: &[&Consumer], identities: &[&str]) -> usize {
        let leader = std::cell::Cell::new(None);
        let found = within(Duration::from_secs(30), TICK, || async {
            let mut leading = Vec::new();
            for (i, c) in consumers.iter().enumerate() {
                if c.metric(LEADER).await == 1.0 {
                    leading.push(i);
                }
            }
            let holder = self.holder().await;
            match leading[..] {
                [i] if holder.as_deref() == Some(identities[i]) => {
                    leader.set(Some(i));
                    true
                }
                _ => false,
            }
        })
        .await;
        if found.is_none() {
            let logs: Vec<_> = consumers.iter().map(|c| c.logs()).collect();
            panic!("no single leader named by the Lease; consumer logs:\n{logs:#?}");
        }
        leader.get().expect("set with found")
    }

    /// Starts consumers `c1` and `c2` with `timing` and waits for one of them to lead.
    /// Returns them (in that order) and the leader's index.
    async fn elect(&self, timing: &[(&str, &str)]) -> (Vec<Consumer>, usize) {
        let consumers = vec![
            self.consumer(IDENTITIES[0], timing).await,
            self.consumer(IDENTITIES[1], timing).await,
        ];
        let leader = self
            .single_leader(&[&consumers[0], &consumers[1]], &IDENTITIES)
            .await;
        (consumers, leader)
    }
}

#[tokio::test]
async fn terminating_gateways_are_skipped_and_ready_ones_receive() {
    let mut s = Setup::new("kube-skip").await;
    // The gateways listen where their slices point (not on loopback: the API server refuses
    // it in slices), and their registry rows point nowhere (port 9, closed): a message
    // reaches a gateway only through the URL in its EndpointSlice.
    let node = node_ip();
    let listen = format!("{node}:0");
    let nowhere = format!("http://{node}:9");
    let env = [
        ("HERMES_INTERNAL_LISTEN", listen.as_str()),
        ("HERMES_INTERNAL_URL", "http://127.0.0.1:9"),
    ];
    let a = s.gateway("gw-a", &env).await;
    let b = s.gateway("gw-b", &env).await;
    s.ns.put_gateway_slice(&s.access, "gw-a", &a.internal, Endpoint::Ready)
        .await;
    // B's pod is terminating and its endpoint no longer answers (its process has stopped
    // listening: here its slice points at a closed port while the test keeps its socket).
    s.ns.put_gateway_slice(&s.access, "gw-b", &nowhere, Endpoint::Terminating)
        .await;
    let mut on_a = a.connect(&a.token("user-a", "room").await).await;
    let mut on_b = b.connect(&b.token("user-b", "room").await).await;
    let consumer = s.consumer("c1", &[]).await;
    // The consumer's view of the slices: one ready, one terminating.
    until(
        &consumer,
        "one ready and one terminating endpoint",
        || async {
            consumer.metric(READY).await == 1.0 && consumer.metric(TERMINATING).await == 1.0
        },
    )
    .await;

    s.send(json!({"user_id": "backend", "room_id": "room", "data": {"n": 1}}))
        .await;
    assert_eq!(
        recv_json(&mut on_a).await,
        json!({"user_id": "backend", "data": {"n": 1}})
    );
    until(&consumer, "one gateway skipped", || async {
        consumer.metric(SKIPPED).await == 1.0
    })
    .await;
    // Skipped is not failed: the message was settled as delivered, not retried.
    until(&consumer, "the message settled as delivered", || async {
        consumer.metric(DELIVERED).await == 1.0
    })
    .await;
    assert_eq!(consumer.metric(RETRIED).await, 0.0);

    // B is ready again (its rollout was rolled back, say).
    s.ns.put_gateway_slice(&s.access, "gw-b", &b.internal, Endpoint::Ready)
        .await;
    until(&consumer, "two ready endpoints", || async {
        consumer.metric(READY).await == 2.0 && consumer.metric(TERMINATING).await == 0.0
    })
    .await;
    s.send(json!({"user_id": "backend", "room_id": "room", "data": {"n": 2}}))
        .await;
    // B's first frame is the second message: the first one never went to it.
    assert_eq!(
        recv_json(&mut on_b).await,
        json!({"user_id": "backend", "data": {"n": 2}}),
        "consumer logs:\n{}",
        consumer.logs()
    );
    assert_eq!(
        recv_json(&mut on_a).await,
        json!({"user_id": "backend", "data": {"n": 2}})
    );

    // A terminating gateway that still answers (draining: it closes its sockets over its
    // drain window) still gets the messages for the sockets it holds, at its slice's URL.
    s.ns.put_gateway_slice(&s.access, "gw-b", &b.internal, Endpoint::Terminating)
        .await;
    until(&consumer, "B terminating again", || async {
        consumer.metric(READY).await == 1.0 && consumer.metric(TERMINATING).await == 1.0
    })
    .await;
    s.send(json!({"user_id": "backend", "room_id": "room", "data": {"n": 3}}))
        .await;
    for ws in [&mut on_a, &mut on_b] {
        assert_eq!(
            recv_json(ws).await,
            json!({"user_id": "backend", "data": {"n": 3}})
        );
    }
    until(&consumer, "three messages delivered", || async {
        consumer.metric(DELIVERED).await == 3.0
    })
    .await;
    assert_eq!(consumer.metric(SKIPPED).await, 1.0, "only the first skip");
    assert_eq!(consumer.metric(RETRIED).await, 0.0);
}

#[tokio::test]
async fn one_consumer_leads_and_a_survivor_takes_over_after_the_leader_is_killed() {
    const LEASE: u64 = 4;
    const RENEW: u64 = 1;
    let s = Setup::new("kube-lease-kill").await;
    let timing = [
        ("HERMES_KUBE_LEASE_SECONDS", "4"),
        ("HERMES_KUBE_RENEW_SECONDS", "1"),
    ];
    let (mut consumers, leader) = s.elect(&timing).await;
    let survivor = 1 - leader;
    assert_eq!(consumers[leader].metric(ACQUISITIONS).await, 1.0);
    assert_eq!(consumers[survivor].metric(ACQUISITIONS).await, 0.0);

    let mut dead = consumers.remove(leader);
    let survivor = consumers.remove(0);
    let killed = tokio::time::Instant::now();
    dead.kill().await;
    // Bound on the takeover, from client-go's semantics (consumer/src/kube/lease.rs): the
    // dead leader's last renewal was at most one renew period before the kill; the survivor
    // sees that record at its next read, at most one renew period later; it takes over at
    // its first read once that record has stayed unchanged for a whole lease duration on its
    // own clock, at most one renew period after that. So kill → takeover ≤ lease + 2 × renew
    // (6 s), plus the API round trips of each read (a renew period is the sleep *after* a
    // round) and process scheduling on a loaded 2-core machine: 1 s of slack.
    // Conversely the takeover cannot come before lease - renew (3 s, less a round trip) after
    // the kill: the survivor must have seen the record unchanged for a whole lease duration.
    // Checked with 1 s of slack.
    let limit = Duration::from_secs(LEASE + 2 * RENEW + 1);
    let survivor_id = IDENTITIES[1 - leader];
    let polling = killed.elapsed();
    let took = within(limit + Duration::from_secs(10), TICK, || async {
        survivor.metric(LEADER).await == 1.0 && s.holder().await.as_deref() == Some(survivor_id)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "{survivor_id} did not take over; its logs:\n{}",
            survivor.logs()
        )
    }) + polling;
    eprintln!(
        "kill -9 takeover: {:.2} s (lease {LEASE} s, renew {RENEW} s, bound {} s)",
        took.as_secs_f64(),
        limit.as_secs()
    );
    assert!(
        took <= limit,
        "takeover after kill -9 took {took:?}, more than {limit:?}"
    );
    assert!(
        took >= Duration::from_secs(LEASE - RENEW - 1),
        "the survivor took over after {took:?}, before the dead leader's Lease could expire"
    );
    assert_eq!(survivor.metric(ACQUISITIONS).await, 1.0);
}

#[tokio::test]
async fn a_leader_that_stops_releases_the_lease_for_an_immediate_takeover() {
    let s = Setup::new("kube-lease-stop").await;
    // A long lease: waiting it out would take 30 s; a release makes the survivor take over
    // at its next try (renew period 1 s).
    let timing = [
        ("HERMES_KUBE_LEASE_SECONDS", "30"),
        ("HERMES_KUBE_RENEW_SECONDS", "1"),
    ];
    let (mut consumers, leader) = s.elect(&timing).await;
    let survivor_id = IDENTITIES[1 - leader];
    let mut stopping = consumers.remove(leader);
    let survivor = consumers.remove(0);

    stopping.terminate();
    let limit = Duration::from_secs(10);
    let took = within(limit, TICK, || async {
        survivor.metric(LEADER).await == 1.0 && s.holder().await.as_deref() == Some(survivor_id)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "{survivor_id} did not take over within {limit:?}; stopped leader's logs:\n{}\nsurvivor's logs:\n{}",
            stopping.logs(),
            survivor.logs()
        )
    });
    eprintln!(
        "SIGTERM takeover: {:.2} s (lease 30 s, renew 1 s)",
        took.as_secs_f64()
    );
    let status = stopping.wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "the stopped consumer exits cleanly: {status:?}"
    );
    assert!(
        stopping.logs().contains("released the Lease"),
        "logs:\n{}",
        stopping.logs()
    );
}

#[tokio::test]
async fn the_leader_reaps_the_rows_of_a_gateway_whose_pod_is_deleted() {
    let s = Setup::new("kube-reap").await;
    // The chart's TTLs: the heartbeat row lives 30 s past the last heartbeat, the other
    // rows 24 hours (their safety net; liveness is the heartbeat row's). The reaper deletes
    // what the per-gateway index names, which is written with each row at connect
    // (shared/src/registry/mod.rs, `gateway_keys`): B's rows are indexed before its
    // socket's 101, and nothing but the reaper can delete them within this test.
    let ttl = [("HERMES_REGISTRY_TTL_SECONDS", "30")];
    let a = s.gateway("gw-a", &ttl).await;
    let mut b = s.gateway("gw-b", &ttl).await;
    let (_on_a, conn_a) = a.connect_modern(&a.token("user", "room").await).await;
    let (_on_b, conn_b) = b.connect_modern(&b.token("user", "room").await).await;
    let registry = scylla_registry(&s.keyspace, Duration::from_secs(5)).await;
    let holds = |gateway: &'static str, connection: String| {
        let registry = &registry;
        async move {
            let row = registry.gateway(gateway).await.expect("gateway").is_some();
            let room = registry
                .room_gateways("room")
                .await
                .expect("room")
                .iter()
                .any(|g| g == gateway);
            let user = registry
                .user_gateways("user")
                .await
                .expect("user")
                .iter()
                .any(|g| g == gateway);
            let conn = registry
                .connection(&connection)
                .await
                .expect("connection")
                .is_some_and(|c| c.gateway_id == gateway);
            [row, room, user, conn]
        }
    };
    assert_eq!(holds("gw-a", conn_a.clone()).await, [true; 4]);
    assert_eq!(holds("gw-b", conn_b.clone()).await, [true; 4]);
    // B's room, user and socket were indexed with their rows, before the 101.
    let keys = registry.gateway_keys("gw-b").await.expect("gateway_keys");
    assert_eq!(
        (keys.rooms, keys.users, keys.connections),
        (
            vec!["room".into()],
            vec!["user".into()],
            vec![conn_b.clone()]
        ),
        "gw-b's index names its rows as soon as its socket is open"
    );

    // B crashes; its pod still exists (as while a kubelet restarts the container). Its
    // heartbeat row, written at most a heartbeat (10 s) before, lives 20 s more at least.
    let killed = tokio::time::Instant::now();
    b.kill().await;
    // The consumer starts after the crash, so its first pass sees B's live rows. The
    // periodic pass is 5 minutes away: within this test only that first pass and the pod
    // watch can reap.
    // With a `$disconnect` route: the reaper sends it for B's socket.
    let (backend, events) = http_sink().await;
    let disconnect_url = format!("{backend}/disconnect");
    let consumer = s
        .consumer(
            "c1",
            &[
                ("HERMES_KUBE_REAP_INTERVAL_SECONDS", "300"),
                ("HERMES_ROUTE_DISCONNECT_URL", &disconnect_url),
                ("HERMES_ROUTE_SECRET", "route-secret-0123456789-0123456789"),
            ],
        )
        .await;
    until(&consumer, "leading, a first reaper pass", || async {
        consumer.metric(LEADER).await == 1.0 && consumer.metric(REAPER_OK).await >= 1.0
    })
    .await;
    assert_eq!(
        holds("gw-b", conn_b.clone()).await,
        [true; 4],
        "a gateway whose pod exists is not reaped, even dead"
    );
    assert_eq!(consumer.metric(REAPED).await, 0.0);

    s.ns.delete_pod("gw-b").await;
    let limit = Duration::from_secs(10);
    let took = within(limit, TICK, || async {
        holds("gw-b", conn_b.clone()).await == [false; 4]
    })
    .await;
    let Some(took) = took else {
        panic!(
            "gw-b's rows [gateway, room, user, connection] are still {:?} {limit:?} after its \
             pod was deleted; consumer logs:\n{}",
            holds("gw-b", conn_b.clone()).await,
            consumer.logs()
        )
    };
    let age = killed.elapsed();
    eprintln!(
        "rows of gw-b reaped {:.2} s after its pod was deleted ({:.1} s after the kill; \
         heartbeat TTL 30 s, row TTL 24 h)",
        took.as_secs_f64(),
        age.as_secs_f64(),
    );
    assert!(
        age + Duration::from_secs(5) < Duration::from_secs(20),
        "the heartbeat row went {age:?} after the kill: too close to its TTL to tell"
    );
    assert_eq!(
        holds("gw-a", conn_a.clone()).await,
        [true; 4],
        "gw-a's pod exists: its rows stay"
    );
    // The reaper deleted them, and only them (A's rows are counted nowhere).
    until(&consumer, "one gateway reaped", || async {
        consumer.metric(REAPED).await == 1.0
    })
    .await;
    for kind in ["gateway", "room", "user", "connection"] {
        assert_eq!(
            consumer
                .metric(&format!("hermes_reaped_rows_total{{kind=\"{kind}\"}}"))
                .await,
            1.0,
            "{kind} rows reaped"
        );
    }
    // B's socket got its `$disconnect` (1006: it went without a close), A's did not.
    until(&consumer, "the reaped socket's $disconnect", || async {
        !events.lock().expect("events").is_empty()
    })
    .await;
    let events = events.lock().expect("events").clone();
    assert_eq!(events.len(), 1, "{events:?}");
    let ctx = &events[0]["requestContext"];
    assert_eq!(ctx["routeKey"], "$disconnect");
    assert_eq!(ctx["eventType"], "DISCONNECT");
    assert_eq!(ctx["connectionId"], conn_b.as_str());
    assert_eq!(ctx["disconnectStatusCode"], 1006);
    assert_eq!(ctx["authorizer"]["user_id"], "user");
}
