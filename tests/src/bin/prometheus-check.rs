//! `prometheus-check --url URL --rules N [--exempt FAMILY]...`: the chart's PromQL on a
//! running Prometheus that scrapes an installed release (scripts/kube/prometheus-on-node.sh):
//! every query of the Grafana dashboard evaluates without error and returns data (except
//! queries naming an `--exempt` family), and Prometheus has loaded N alert rules, evaluated
//! each, all with health `ok`. Prints what it checked; exit 1 on a problem, 2 on a usage error.

use hermes_e2e::promql::Api;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (mut url, mut rules, mut exempt) = (None, None, Vec::new());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--url", Some(v)) => url = Some(v),
            ("--rules", Some(v)) => rules = v.parse::<usize>().ok(),
            ("--exempt", Some(v)) => exempt.push(v),
            _ => usage(),
        }
    }
    let (Some(url), Some(rules)) = (url, rules) else {
        usage()
    };
    let api = Api::new(&url);
    let exempt: Vec<&str> = exempt.iter().map(String::as_str).collect();
    let (evaluated, mut problems) = api.check_dashboard(&exempt).await;
    println!("prometheus-check: {evaluated} dashboard queries evaluated");
    let loaded = api.rules().await;
    if loaded.len() != rules {
        problems.push(format!(
            "{} alert rules loaded, {rules} expected",
            loaded.len()
        ));
    }
    for (name, rule) in &loaded {
        if !rule.evaluated || rule.health != "ok" {
            problems.push(format!(
                "alert {name}: health {} ({}), evaluated {}",
                rule.health, rule.error, rule.evaluated
            ));
        }
    }
    let firing: Vec<&str> = loaded
        .iter()
        .filter(|(_, r)| r.state == "firing")
        .map(|(n, _)| n.as_str())
        .collect();
    println!(
        "prometheus-check: {} alert rules loaded and evaluated; firing: {}",
        loaded.len(),
        if firing.is_empty() {
            "none".to_owned()
        } else {
            firing.join(", ")
        }
    );
    if !problems.is_empty() {
        for p in &problems {
            println!("prometheus-check: {p}");
        }
        std::process::exit(1);
    }
    println!("prometheus-check: ok");
}

fn usage() -> ! {
    eprintln!("usage: prometheus-check --url URL --rules N [--exempt FAMILY]...");
    std::process::exit(2);
}
