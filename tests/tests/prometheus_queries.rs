//! The chart's PromQL on a real Prometheus (built from its Go module by
//! `scripts/prometheus.sh`; the test command exports `HERMES_PROMETHEUS_DIR`): a gateway and
//! a consumer on the test services are scraped every second, with the target labels the
//! chart's ServiceMonitor gives their series (`namespace`, `pod`, `service`), after traffic
//! that gives the labelled families their series. Then every query of the Grafana dashboard
//! evaluates without error and returns data (except the few named below, whose series only
//! exist after events this test does not make), and Prometheus itself loads the alert rules
//! and evaluates each without error.

use hermes_e2e::promql::{
    Api, RULES_CONSUMER_SERVICE, RULES_GATEWAY_SERVICE, RULES_NAMESPACE, alert_rules,
};
use hermes_e2e::*;
use serde_json::json;

/// Dashboard queries that may return no data here, by the family that has no series yet,
/// and why: they evaluate all the same.
const EVENT_ONLY: &[(&str, &str)] = &[
    (
        "hermes_messages_dropped_total",
        "labelled by reason: a series appears with the first dropped frame",
    ),
    (
        "hermes_kube_gateway_endpoints",
        "only a consumer watching Kubernetes exports it",
    ),
    (
        "hermes_kube_leader",
        "the query keeps the Lease holder only (> 0); no Kubernetes here",
    ),
    (
        "hermes_reaped_rows_total",
        "the reaper runs in Kubernetes only",
    ),
    (
        "hermes_reaper_runs_total",
        "the reaper runs in Kubernetes only",
    ),
    (
        "hermes_route_skipped_total",
        "labelled by reason: a series appears when a terminating gateway is skipped",
    ),
    (
        "hermes_route_calls_total",
        "labelled by route: no route integration is configured here",
    ),
];

/// A running Prometheus, killed when dropped.
struct Prometheus {
    child: tokio::process::Child,
    api: Api,
    _dir: TempDir,
}

impl std::ops::Deref for Prometheus {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `http://host:port` → `host:port`.
fn host_port(url: &str) -> &str {
    url.trim_start_matches("http://").trim_end_matches('/')
}

impl Prometheus {
    /// Scrapes `gateway` and `consumer` (base URLs) every second with the ServiceMonitor's
    /// target labels, and loads `rules` (alert name, expression) as one group.
    async fn start(gateway: &str, consumer: &str, rules: &[(String, String)]) -> Self {
        let bin = std::env::var("HERMES_PROMETHEUS_DIR").unwrap_or_else(|_| {
            panic!(
                "HERMES_PROMETHEUS_DIR is not set: run `scripts/prometheus.sh build` and export \
                 HERMES_PROMETHEUS_DIR=<the directory it prints> (./scripts/test.sh does)"
            )
        });
        let dir = std::env::temp_dir().join(unique("hermes-prometheus"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let dir = TempDir(dir);
        let target = |job: &str, url: &str, pod: &str, service: &str| {
            json!({
                "job_name": job,
                "scrape_interval": "1s",
                "static_configs": [{
                    "targets": [host_port(url)],
                    "labels": {"namespace": RULES_NAMESPACE, "pod": pod, "service": service},
                }],
            })
        };
        // JSON is YAML: no YAML writer needed.
        let config = json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [dir.0.join("rules.yml")],
            "scrape_configs": [
                target("gateway", gateway, "hermes-gateway-0", RULES_GATEWAY_SERVICE),
                target("consumer", consumer, "hermes-consumer-0", RULES_CONSUMER_SERVICE),
            ],
        });
        let groups = json!({"groups": [{
            "name": "hermes",
            "interval": "1s",
            "rules": rules.iter().map(|(alert, expr)| json!({"alert": alert, "expr": expr}))
                .collect::<Vec<_>>(),
        }]});
        std::fs::write(dir.0.join("prometheus.yml"), config.to_string()).expect("config");
        std::fs::write(dir.0.join("rules.yml"), groups.to_string()).expect("rules");
        let port = free_port();
        let child = tokio::process::Command::new(format!("{bin}/prometheus"))
            .arg(format!(
                "--config.file={}",
                dir.0.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start prometheus");
        let p = Self {
            child,
            api: Api::new(&format!("http://127.0.0.1:{port}")),
            _dir: dir,
        };
        eventually(|| async { p.ready().await }).await;
        p
    }
}

#[tokio::test]
async fn every_dashboard_query_and_alert_rule_evaluates_on_a_real_prometheus() {
    let (gw, consumer, mut publisher, queue) = gateway_with_amqp_consumer("prometheus").await;
    let rules = alert_rules();
    let prometheus = Prometheus::start(&gw.internal, &consumer.http, &rules).await;

    // Both targets up.
    eventually(|| async {
        prometheus
            .query("up == 1")
            .await
            .is_ok_and(|series| series.len() == 2)
    })
    .await;

    // Traffic that gives the dashboard's labelled families their series: a refused and an
    // accepted connect, admin calls, a queue message and an invalid one, a client frame, a
    // close.
    let (status, _, _) = gw
        .refused(format!("{}?token=not-a-jwt", gw.ws_url()), &[])
        .await;
    assert_eq!(status, 401);
    let token = gw.token("reader", "prometheus-room").await;
    let (mut ws, _) = gw.connect_modern(&token).await;
    for n in 0..3 {
        let (status, _) = gw
            .publish(json!({"user_id": "ops", "room_id": "prometheus-room", "data": {"n": n}}))
            .await;
        assert_eq!(status, 202);
        assert_eq!(recv_notification(&mut ws).await["data"], json!({"n": n}));
        publisher
            .publish(
                &queue,
                json!({"user_id": "ops", "room_id": "prometheus-room", "data": {"q": n}})
                    .to_string()
                    .as_bytes(),
            )
            .await;
        assert_eq!(recv_notification(&mut ws).await["data"], json!({"q": n}));
    }
    publisher.publish(&queue, b"not json").await;
    send_json(&mut ws, json!({"action": "ping"})).await;
    let closer = gw.token("closer", "prometheus-room").await;
    let (mut second, _) = gw.connect_modern(&closer).await;
    futures_util::SinkExt::close(&mut second)
        .await
        .expect("close");
    // Scraped after all of it, twice at least: the series the last events created (the
    // dead letter on the consumer, the close on the gateway) have a rate.
    eventually(|| async {
        let mut ready = true;
        for expr in [
            "rate(hermes_dead_letters_total{reason=\"invalid_message\"}[15s])",
            "rate(hermes_socket_closes_total[15s])",
        ] {
            ready &= prometheus.query(expr).await.is_ok_and(|s| !s.is_empty());
        }
        ready
    })
    .await;

    let exempt: Vec<&str> = EVENT_ONLY.iter().map(|(family, _)| *family).collect();
    let (evaluated, problems) = prometheus.check_dashboard(&exempt).await;
    assert!(evaluated >= 30, "{evaluated} dashboard queries");
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The alert rules, loaded and evaluated by Prometheus itself.
    eventually(|| async {
        let loaded = prometheus.rules().await;
        loaded.len() == rules.len() && loaded.values().all(|rule| rule.evaluated)
    })
    .await;
    let loaded = prometheus.rules().await;
    for (alert, _) in &rules {
        let rule = &loaded[alert];
        assert_eq!(rule.health, "ok", "alert {alert}: {}", rule.error);
    }
    // They mean what they say: the one invalid message dead-lettered above fires
    // HermesDeadLetters (its series appeared with that message: an increase() alone would
    // not see it), and both processes being up fires neither "down" alert.
    eventually(|| async { prometheus.rules().await["HermesDeadLetters"].state == "firing" }).await;
    let loaded = prometheus.rules().await;
    for alert in ["HermesGatewayDown", "HermesConsumerDown"] {
        assert_eq!(loaded[alert].state, "inactive", "{alert}");
    }
    // An expression Prometheus refuses is an error here too: the check can fail.
    assert!(
        prometheus
            .query("sum(rate(hermes_connects_total[5m]")
            .await
            .is_err()
    );
}
