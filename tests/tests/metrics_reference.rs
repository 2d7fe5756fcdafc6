//! `docs/metrics.md` cannot drift from the code: every family the programs declare
//! (`Metrics::FAMILIES`) and every family a real gateway and a real consumer export on
//! `/metrics` after some traffic is documented with its type and labels, and every family
//! documented still exists. Also the label rules the reference promises: a client's close
//! code outside the known set is counted under `other`, and admin API requests are counted
//! by route and status class.

use std::collections::{BTreeMap, BTreeSet};

use futures_util::SinkExt;
use hermes_e2e::promql::{alert_rules, dashboard_expressions, selectors};
use hermes_e2e::*;
use hermes_shared::metrics::Metrics;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// A family as the reference or an exposition describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Family {
    kind: String,
    labels: BTreeSet<String>,
}

/// The reference's tables: rows `| `hermes_x` | type | `label`, ... or — | meaning |`.
fn documented() -> BTreeMap<String, Family> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut families = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("| `hermes_") || l.starts_with("| `process_"))
    {
        let cells: Vec<&str> = line.split(" | ").map(|c| c.trim()).collect();
        assert!(cells.len() >= 4, "a row of docs/metrics.md: {line}");
        let name = cells[0].trim_start_matches('|').trim().trim_matches('`');
        let labels = if cells[2] == "—" {
            BTreeSet::new()
        } else {
            cells[2]
                .split(',')
                .map(|l| l.trim().trim_matches('`').to_owned())
                .collect()
        };
        let family = Family {
            kind: cells[1].to_owned(),
            labels,
        };
        assert!(
            families.insert(name.to_owned(), family).is_none(),
            "{name} is documented twice in docs/metrics.md"
        );
    }
    assert!(!families.is_empty(), "no family rows in docs/metrics.md");
    families
}

/// The families of a Prometheus text exposition with their types and label names
/// (a histogram's `le` and its `_bucket`/`_sum`/`_count` series folded into it).
fn exported(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            families.insert(
                name.to_owned(),
                Family {
                    kind: kind.to_owned(),
                    labels: BTreeSet::new(),
                },
            );
        } else if !line.starts_with('#') && !line.is_empty() {
            let series = line.rsplit_once(' ').expect("series value").0;
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, label_names(labels.trim_end_matches('}'))),
                None => (series, BTreeSet::new()),
            };
            let family = [name, "_bucket", "_sum", "_count"]
                .iter()
                .skip(1)
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|base| families.get(*base).is_some_and(|f| f.kind == "histogram"))
                })
                .unwrap_or(name);
            let entry = families
                .get_mut(family)
                .unwrap_or_else(|| panic!("series {series} without a # TYPE line"));
            entry
                .labels
                .extend(labels.into_iter().filter(|l| l != "le"));
        }
    }
    families
}

/// Label names of `a="x",b="y\"z"`.
fn label_names(labels: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = labels;
    while let Some((name, after)) = rest.split_once("=\"") {
        names.insert(name.trim_start_matches(',').to_owned());
        // Skip the quoted value, escapes included.
        let mut escaped = false;
        let end = after
            .char_indices()
            .find(|&(_, c)| {
                let closes = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                closes
            })
            .map_or(after.len(), |(i, _)| i + 1);
        rest = &after[end..];
    }
    names
}

async fn scrape(base: &str) -> String {
    metrics_text(&format!("{base}/metrics")).await
}

/// Differences between the reference and `actual`, as readable lines.
fn compare(
    what: &str,
    docs: &BTreeMap<String, Family>,
    actual: &BTreeMap<String, Family>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, family) in actual {
        match docs.get(name) {
            None => problems.push(format!(
                "{name} ({}, labels {:?}) is {what} but not in docs/metrics.md",
                family.kind, family.labels
            )),
            Some(doc) if doc.kind != family.kind => problems.push(format!(
                "{name} is a {} ({what}) but docs/metrics.md says {}",
                family.kind, doc.kind
            )),
            // An exposition shows only the labels of the series it has.
            Some(doc) if !family.labels.is_subset(&doc.labels) => problems.push(format!(
                "{name} has labels {:?} ({what}) but docs/metrics.md says {:?}",
                family.labels, doc.labels
            )),
            Some(_) => {}
        }
    }
    problems
}

#[test]
fn the_metrics_reference_lists_exactly_the_declared_families() {
    let docs = documented();
    let declared: BTreeMap<String, Family> = Metrics::FAMILIES
        .iter()
        .chain(hermes_shared::metrics::PROCESS_FAMILIES)
        .map(|f| {
            (
                f.name.to_owned(),
                Family {
                    kind: f.kind.to_owned(),
                    labels: f.labels.iter().map(|l| (*l).to_owned()).collect(),
                },
            )
        })
        .collect();
    let mut problems = compare("declared in shared/src/metrics.rs", &docs, &declared);
    for (name, doc) in &docs {
        match declared.get(name) {
            None => problems.push(format!(
                "{name} is in docs/metrics.md but no longer declared in shared/src/metrics.rs"
            )),
            Some(family) if family.labels != doc.labels => problems.push(format!(
                "{name} is declared with labels {:?} but docs/metrics.md says {:?}",
                family.labels, doc.labels
            )),
            Some(_) => {}
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test]
async fn every_family_a_gateway_and_a_consumer_export_is_in_the_metrics_reference() {
    let (gw, consumer, mut publisher, queue) = gateway_with_amqp_consumer("metrics").await;

    // Traffic that gives the labelled families their series: a refused and an accepted
    // connect, an admin publish, a queue message, an invalid one, a client frame, a close.
    let (status, _, _) = gw
        .refused(format!("{}?token=not-a-jwt", gw.ws_url()), &[])
        .await;
    assert_eq!(status, 401);
    let token = gw.token("reader", "metrics-room").await;
    let (mut ws, connection_id) = gw.connect_modern(&token).await;
    let (status, _) = gw
        .publish(json!({"user_id": "ops", "room_id": "metrics-room", "data": {"n": 1}}))
        .await;
    assert_eq!(status, 202);
    assert_eq!(recv_notification(&mut ws).await["data"], json!({"n": 1}));
    publisher
        .publish(
            &queue,
            json!({"user_id": "ops", "room_id": "metrics-room", "data": {"n": 2}})
                .to_string()
                .as_bytes(),
        )
        .await;
    assert_eq!(recv_notification(&mut ws).await["data"], json!({"n": 2}));
    publisher.publish(&queue, b"not json").await;
    let r = gw
        .admin(
            reqwest::Method::GET,
            &format!("/@connections/{connection_id}"),
        )
        .send()
        .await
        .expect("GET @connections");
    assert_eq!(r.status(), 200);
    send_json(&mut ws, json!({"action": "ping"})).await;
    ws.close(None).await.expect("close");
    eventually(|| async {
        consumer
            .metric("hermes_dead_letters_total{reason=\"invalid_message\"}")
            .await
            >= 1.0
            && gw.metric("hermes_socket_closes_total{code=\"1005\"}").await >= 1.0
    })
    .await;

    let docs = documented();
    let gateway = exported(&scrape(&gw.internal).await);
    let consumer_families = exported(&scrape(&consumer.http).await);
    // The traffic reached the families it was meant to: the check covers labelled ones.
    for name in [
        "hermes_connects_total",
        "hermes_auth_duration_seconds",
        "hermes_admin_requests_total",
        "hermes_admin_request_duration_seconds",
        "hermes_socket_closes_total",
        "hermes_deliver_requests_total",
        "hermes_build_info",
        "process_open_fds",
        "process_resident_memory_bytes",
    ] {
        assert!(gateway.contains_key(name), "the gateway exports {name}");
    }
    for name in [
        "hermes_queue_messages_total",
        "hermes_dead_letters_total",
        "hermes_registry_duration_seconds",
        "hermes_routing_duration_seconds",
        "hermes_build_info",
        "process_open_fds",
    ] {
        assert!(
            consumer_families.contains_key(name),
            "the consumer exports {name}"
        );
    }
    let mut problems = compare("exported by the gateway", &docs, &gateway);
    problems.extend(compare(
        "exported by the consumer",
        &docs,
        &consumer_families,
    ));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test]
async fn a_close_code_outside_the_known_set_is_counted_as_other() {
    let gw = Gateway::start(&[]).await;
    for code in [3999u16, 4321, 4999] {
        let token = gw.token(&format!("closer-{code}"), "room").await;
        let mut ws = gw.connect(&token).await;
        ws.send(Message::Close(Some(CloseFrame {
            code: close_code(code),
            reason: "bye".into(),
        })))
        .await
        .expect("close frame");
        assert_eq!(recv_close(&mut ws).await, code, "the server echoes it");
    }
    eventually(|| async {
        gw.metric("hermes_socket_closes_total{code=\"other\"}")
            .await
            >= 3.0
    })
    .await;
    let text = scrape(&gw.internal).await;
    for code in ["3999", "4321", "4999"] {
        assert!(
            !text.contains(&format!("hermes_socket_closes_total{{code=\"{code}\"}}")),
            "a client's close code {code} became a series:\n{text}"
        );
    }
}

#[tokio::test]
async fn admin_requests_are_counted_by_route_and_status_class() {
    let gw = Gateway::start(&[]).await;
    gw.token("user", "room").await;
    let (status, _) = gw
        .publish(json!({"user_id": "ops", "room_id": "room", "data": {}}))
        .await;
    assert_eq!(status, 202);
    let r = gw
        .admin(reqwest::Method::POST, "/v1/publish")
        .body("not json")
        .send()
        .await
        .expect("publish of a body that is not JSON");
    assert_eq!(r.status(), 400);
    let r = gw
        .admin(reqwest::Method::GET, "/production/@connections/nobody")
        .send()
        .await
        .expect("GET @connections");
    assert_eq!(r.status(), 410);
    let r = reqwest::Client::new()
        .post(format!("{}/v1/publish", gw.internal))
        .bearer_auth("a wrong key")
        .body("{}")
        .send()
        .await
        .expect("publish with a wrong key");
    assert_eq!(r.status(), 401);
    // Not an admin route: not counted.
    scrape(&gw.internal).await;

    let expected = [
        (
            "hermes_admin_requests_total{route=\"tokens_create\",status=\"2xx\"}",
            1.0,
        ),
        (
            "hermes_admin_requests_total{route=\"publish\",status=\"2xx\"}",
            1.0,
        ),
        (
            "hermes_admin_requests_total{route=\"publish\",status=\"4xx\"}",
            2.0,
        ),
        (
            "hermes_admin_requests_total{route=\"connections_get\",status=\"4xx\"}",
            1.0,
        ),
        (
            "hermes_admin_request_duration_seconds_count{route=\"publish\"}",
            3.0,
        ),
    ];
    for (series, value) in expected {
        assert_eq!(gw.metric(series).await, value, "{series}");
    }
    let text = scrape(&gw.internal).await;
    assert!(
        !text.contains("route=\"/"),
        "a path became a route label:\n{text}"
    );
    assert!(
        text.lines()
            .filter(|l| l.starts_with("hermes_admin_requests_total{"))
            .all(|l| !l.contains("metrics")),
        "/metrics is not an admin route:\n{text}"
    );
}

#[test]
fn the_dashboard_and_the_alert_rules_query_only_declared_families_and_labels() {
    // Labels Prometheus adds to every scraped series (the target's).
    let target_labels = [
        "namespace",
        "pod",
        "service",
        "job",
        "instance",
        "container",
    ];
    let families: BTreeMap<&str, &hermes_shared::metrics::FamilyInfo> = Metrics::FAMILIES
        .iter()
        .chain(hermes_shared::metrics::PROCESS_FAMILIES)
        .map(|f| (f.name, f))
        .collect();
    let rules = alert_rules();
    let alerts: BTreeSet<&str> = rules.iter().map(|(a, _)| a.as_str()).collect();
    for wanted in [
        "HermesGatewayDown",
        "HermesConnectRefusals",
        "HermesBcryptQueueSaturated",
        "HermesDeadLetters",
        "HermesDeliverFailures",
        "HermesNoReaperLeader",
        "HermesRegistryLatency",
    ] {
        assert!(alerts.contains(wanted), "no {wanted} alert in {alerts:?}");
    }
    let expressions: Vec<(String, String)> = dashboard_expressions()
        .into_iter()
        .map(|e| ("the dashboard".to_owned(), e))
        .chain(rules.into_iter().map(|(a, e)| (format!("alert {a}"), e)))
        .collect();
    let mut problems = Vec::new();
    for (whose, expr) in &expressions {
        let (found, grouping) = selectors(expr);
        let mut allowed: BTreeSet<String> = target_labels.iter().map(|l| (*l).to_owned()).collect();
        for (name, labels) in &found {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = name.strip_suffix(suffix)?;
                    families
                        .get(base)
                        .filter(|f| f.kind == "histogram")
                        .map(|f| (*f, *suffix == "_bucket"))
                })
                .or_else(|| families.get(name.as_str()).map(|f| (*f, false)));
            let Some((family, bucket)) = family else {
                problems.push(format!("{whose}: {name} is not a declared family: {expr}"));
                continue;
            };
            if family.kind == "histogram" && name == family.name {
                problems.push(format!(
                    "{whose}: {name} is a histogram: query its _bucket, _sum or _count: {expr}"
                ));
            }
            let mut declared: BTreeSet<String> =
                family.labels.iter().map(|l| (*l).to_owned()).collect();
            if bucket {
                declared.insert("le".to_owned());
            }
            for label in labels {
                if !declared.contains(label) && !target_labels.contains(&label.as_str()) {
                    problems.push(format!("{whose}: {name} has no label {label}: {expr}"));
                }
            }
            allowed.extend(declared);
        }
        if found.is_empty() && !expr.contains("up{") {
            problems.push(format!("{whose}: no Hermes metric in {expr}"));
        }
        for label in grouping.difference(&allowed) {
            problems.push(format!(
                "{whose}: grouped by {label}, which none of its metrics has: {expr}"
            ));
        }
    }
    assert!(expressions.len() >= 30, "{} expressions", expressions.len());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_promql_reader_finds_selectors_labels_and_grouping() {
    let (found, grouping) = selectors(
        r#"histogram_quantile(0.99, sum by (le, op) (rate(hermes_registry_duration_seconds_bucket{namespace=~"$ns", op!="a,}b"}[5m]))) / process_open_fds"#,
    );
    let labels: BTreeSet<String> = ["namespace", "op"]
        .iter()
        .map(|l| (*l).to_owned())
        .collect();
    assert_eq!(
        found,
        vec![
            ("hermes_registry_duration_seconds_bucket".to_owned(), labels),
            ("process_open_fds".to_owned(), BTreeSet::new()),
        ]
    );
    assert_eq!(
        grouping,
        ["le".to_owned(), "op".to_owned()].into_iter().collect()
    );
}
