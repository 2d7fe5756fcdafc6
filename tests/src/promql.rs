//! The PromQL the chart ships, read from its files: the Grafana dashboard's queries and the
//! `PrometheusRule`'s alert expressions (as the chart renders them for a release `hermes`
//! in namespace `ns`), and enough of a PromQL reader to list their metric selectors. Used
//! by `tests/tests/metrics_reference.rs` (every query names declared families and labels)
//! and `tests/tests/prometheus_queries.rs` (every query evaluates on a real Prometheus).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// The namespace the alert expressions select (the chart's `.Release.Namespace`).
pub const RULES_NAMESPACE: &str = "ns";
/// The gateways' internal Service the alert expressions select (release `hermes`).
pub const RULES_GATEWAY_SERVICE: &str = "hermes-internal";
/// The consumers' Service the alert expressions select (release `hermes`).
pub const RULES_CONSUMER_SERVICE: &str = "hermes-consumer";

/// A metric selector of a PromQL expression: the metric's name and its matchers' labels.
pub type Selector = (String, BTreeSet<String>);

/// The `hermes_*` and `process_*` selectors of a PromQL expression, and the labels of its
/// `by (…)` and `without (…)` clauses. Enough PromQL for the expressions the chart ships:
/// identifiers, `{…}` matchers with quoted values, grouping clauses.
pub fn selectors(expr: &str) -> (Vec<Selector>, BTreeSet<String>) {
    let chars: Vec<char> = expr.chars().collect();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let (mut found, mut grouping) = (Vec::new(), BTreeSet::new());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            // A quoted value outside matchers (none expected); skip it whole.
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        let starts = (c.is_ascii_alphabetic() || c == '_')
            && (i == 0 || !(ident(chars[i - 1]) || chars[i - 1] == '$' || chars[i - 1] == '.'));
        if !starts {
            i += 1;
            continue;
        }
        let begin = i;
        while i < chars.len() && ident(chars[i]) {
            i += 1;
        }
        let name: String = chars[begin..i].iter().collect();
        let mut j = i;
        while j < chars.len() && chars[j] == ' ' {
            j += 1;
        }
        let opens = |ch: char| chars.get(j) == Some(&ch);
        if (name == "by" || name == "without") && opens('(') {
            let end = chars[j..].iter().position(|&c| c == ')').map(|p| j + p);
            let end = end.unwrap_or_else(|| panic!("unclosed {name} ( in {expr}"));
            let inner: String = chars[j + 1..end].iter().collect();
            grouping.extend(inner.split(',').map(|l| l.trim().to_owned()));
            i = end + 1;
        } else if name.starts_with("hermes_") || name.starts_with("process_") {
            let mut labels = BTreeSet::new();
            if opens('{') {
                // Matchers: `label op "value"`, comma-separated; values may hold anything.
                let mut k = j + 1;
                loop {
                    while k < chars.len() && (chars[k] == ' ' || chars[k] == ',') {
                        k += 1;
                    }
                    if k >= chars.len() || chars[k] == '}' {
                        break;
                    }
                    let label_begin = k;
                    while k < chars.len() && ident(chars[k]) {
                        k += 1;
                    }
                    labels.insert(chars[label_begin..k].iter().collect::<String>());
                    let quote = chars[k..].iter().position(|&c| c == '"');
                    k += quote.unwrap_or_else(|| panic!("a matcher without a value in {expr}")) + 1;
                    while k < chars.len() && chars[k] != '"' {
                        k += if chars[k] == '\\' { 2 } else { 1 };
                    }
                    k += 1;
                }
                i = k + 1;
            }
            found.push((name, labels));
        }
    }
    (found, grouping)
}

/// Every `expr` of the Grafana dashboard.
pub fn dashboard_expressions() -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/hermes/dashboards/hermes.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard");
    let mut out = Vec::new();
    walk(
        &serde_json::from_str(&text).expect("the dashboard is JSON"),
        &mut out,
    );
    out
}

/// The alert rules' names and expressions, from the chart's template with its Helm
/// expressions filled in (the selectors as the chart renders them, thresholds as 1).
pub fn alert_rules() -> Vec<(String, String)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/hermes/templates/prometheusrule.yaml");
    let text = std::fs::read_to_string(&path).expect("the PrometheusRule template");
    let filled = |line: &str| {
        let mut out = String::new();
        let mut rest = line;
        while let Some(open) = rest.find("{{") {
            out.push_str(&rest[..open]);
            let close = rest[open..].find("}}").expect("}}") + open;
            let inner = rest[open + 2..close].trim_matches(|c| c == '-' || c == ' ');
            let (gw, cs, ns) = (
                RULES_GATEWAY_SERVICE,
                RULES_CONSUMER_SERVICE,
                RULES_NAMESPACE,
            );
            out.push_str(&match inner {
                "$gw" => format!(r#"namespace="{ns}", service="{gw}""#),
                "$cs" => format!(r#"namespace="{ns}", service="{cs}""#),
                "$all" => format!(r#"namespace="{ns}", service=~"{gw}|{cs}""#),
                _ => "1".to_owned(),
            });
            rest = &rest[close + 2..];
        }
        out.push_str(rest);
        out
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut rules = Vec::new();
    let mut alert = String::new();
    for (n, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("- alert: ") {
            alert = name.trim().to_owned();
        } else if let Some(expr) = trimmed.strip_prefix("expr: ") {
            let indent = line.len() - trimmed.len();
            let expr = if expr.trim() == "|-" {
                lines[n + 1..]
                    .iter()
                    .take_while(|l| l.len() - l.trim_start().len() > indent)
                    .map(|l| filled(l.trim()))
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                filled(expr)
            };
            rules.push((alert.clone(), expr));
        }
    }
    rules
}

/// A Prometheus server's HTTP API: instant queries and the loaded rules.
pub struct Api {
    pub url: String,
    http: reqwest::Client,
}

/// An alert rule as Prometheus reports it.
#[derive(Debug, Clone)]
pub struct Rule {
    /// `ok`, `err` or `unknown`.
    pub health: String,
    pub error: String,
    /// `inactive`, `pending` or `firing`.
    pub state: String,
    /// Evaluated at least once.
    pub evaluated: bool,
}

impl Api {
    pub fn new(url: &str) -> Self {
        Self {
            url: url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// `/-/ready` answers 200.
    pub async fn ready(&self) -> bool {
        self.http
            .get(format!("{}/-/ready", self.url))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    }

    /// An instant query: `Ok(result)` or the error Prometheus gave.
    pub async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let body: Value = self
            .http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The loaded rules by name (empty when Prometheus does not answer).
    pub async fn rules(&self) -> BTreeMap<String, Rule> {
        let body: Value = match self
            .http
            .get(format!("{}/api/v1/rules", self.url))
            .send()
            .await
        {
            Ok(answer) => answer.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let mut rules = BTreeMap::new();
        for group in body["data"]["groups"].as_array().into_iter().flatten() {
            for rule in group["rules"].as_array().into_iter().flatten() {
                let evaluated = rule["lastEvaluation"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001-"));
                let text = |key: &str| rule[key].as_str().unwrap_or_default().to_owned();
                rules.insert(
                    text("name"),
                    Rule {
                        health: text("health"),
                        error: text("lastError"),
                        state: text("state"),
                        evaluated,
                    },
                );
            }
        }
        rules
    }

    /// Evaluates every dashboard query (Grafana's variables filled in by [`grafana`]):
    /// answers how many were evaluated and the problems — an error, or no data for a query
    /// that names none of the `exempt` families.
    pub async fn check_dashboard(&self, exempt: &[&str]) -> (usize, Vec<String>) {
        let mut problems = Vec::new();
        let mut evaluated = 0;
        for expr in dashboard_expressions() {
            let query = grafana(&expr);
            match self.query(&query).await {
                Err(error) => problems.push(format!("{query}: {error}")),
                Ok(series) if series.is_empty() => {
                    if !exempt.iter().any(|family| query.contains(family)) {
                        problems.push(format!("{query}: no data"));
                    }
                }
                Ok(_) => {}
            }
            evaluated += 1;
        }
        (evaluated, problems)
    }
}

/// A dashboard query with Grafana's variables filled in: every namespace and pod, a rate
/// window of a few scrapes.
pub fn grafana(expr: &str) -> String {
    expr.replace("$namespace", ".*")
        .replace("$pod", ".*")
        .replace("$__rate_interval", "15s")
}
