//! `hermes-bench report`: medians of the runs in a directory → `results.json` and
//! `RESULTS.md`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Map, Value, json};

const SERVERS: [&str; 2] = ["hermes", "centrifugo"];

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

fn runs(dir: &Path, scenario: &str, server: &str) -> Result<Vec<Value>> {
    runs_named(dir, &format!("{}-{server}-", scenario.to_ascii_lowercase()))
}

/// The JSON objects of `<prefix>*.json` in `dir`, in name order.
fn runs_named(dir: &Path, prefix: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".json"))
        })
        .collect();
    names.sort();
    for p in names {
        let text = std::fs::read_to_string(&p)?;
        if let Some(line) = text.lines().rev().find(|l| l.starts_with('{')) {
            let mut run: Value =
                serde_json::from_str(line).with_context(|| p.display().to_string())?;
            // `<prefix><n>.json`: which run of the script it was, so that figures measured in
            // the same run (a server's P2 and that run's ws-floor) can be paired.
            let n = p
                .file_stem()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(prefix))
                .and_then(|n| n.parse::<u64>().ok());
            if let (Some(o), Some(n)) = (run.as_object_mut(), n) {
                o.entry("run").or_insert(json!(n));
            }
            out.push(run);
        }
    }
    Ok(out)
}

/// Adds to each P2 run `lowest_step_p99_vs_floor`: its lowest step's p99 over the p99 of
/// the lowest step of the ws-floor measured in the same run of the script (pair by pair,
/// not a ratio of medians, so that a slow stretch of the box weighs on both sides of it).
fn pair_with_floor(p2_runs: &mut [Value], ws_floor_runs: &[Value]) {
    for run in p2_runs {
        let floor = ws_floor_runs
            .iter()
            .find(|f| !run["run"].is_null() && f["run"] == run["run"])
            .and_then(|f| f["lowest_step_p99_ms"].as_f64());
        let ratio = match (run["lowest_step_p99_ms"].as_f64(), floor) {
            (Some(p99), Some(floor)) if floor > 0.0 => json!(p99 / floor),
            _ => Value::Null,
        };
        if let Some(o) = run.as_object_mut() {
            o.insert("lowest_step_p99_vs_floor".into(), ratio);
        }
    }
}

fn medians(runs: &[Value], keys: &[&str]) -> Value {
    let mut m = Map::new();
    for k in keys {
        let v: Vec<f64> = runs.iter().filter_map(|r| r[*k].as_f64()).collect();
        m.insert(
            (*k).into(),
            median(v).map_or(Value::Null, |x| json!((x * 1000.0).round() / 1000.0)),
        );
    }
    m.insert("runs".into(), json!(runs.len()));
    Value::Object(m)
}

fn sh(cmd: &str) -> String {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

fn fmt(v: &Value) -> String {
    v.as_f64().map_or("—".into(), |x| {
        if x.abs() >= 1000.0 || x.fract() == 0.0 {
            format!("{x:.0}")
        } else {
            format!("{x:.2}")
        }
    })
}

fn ratio(h: &Value, c: &Value) -> String {
    match (h.as_f64(), c.as_f64()) {
        (Some(h), Some(c)) if c != 0.0 => format!("{:.2}", h / c),
        _ => "—".into(),
    }
}

/// Adds to a P2 run what its steps say beyond the sustained rate: `p99_limit_met` (1 or 0)
/// and the first (lowest-rate) step's latency as `lowest_step_*`.
fn p2_summary(run: &mut Value) {
    let met = !run["deliveries_per_s"].is_null();
    let first = run["steps"].get(0).cloned().unwrap_or(Value::Null);
    if let Some(o) = run.as_object_mut() {
        o.insert("p99_limit_met".into(), json!(u8::from(met)));
        for k in ["publishes_per_s", "p50_ms", "p99_ms"] {
            o.insert(format!("lowest_step_{k}"), first[k].clone());
        }
    }
}

pub fn write(dir: &Path, out: &Path) -> Result<()> {
    const P1_KEYS: [&str; 2] = ["rss_per_socket_kib", "cpu_us_per_socket_s"];
    const P1_EXTRA: [&str; 5] = [
        "sockets",
        "connect_seconds",
        "rss_before_kib",
        "rss_after_kib",
        "idle_cpu_us_per_s_after",
    ];
    // `deliveries_per_s`, `p50_ms`, `p99_ms`: the highest rate sustained within the p99 limit
    // (null when none is). The lowest step's latency and the highest lossless rate say how
    // far from the limit a server is, whatever it is.
    const P2_KEYS: [&str; 7] = [
        "deliveries_per_s",
        "p50_ms",
        "p99_ms",
        "p99_limit_met",
        "lowest_step_p99_ms",
        "lowest_step_p99_vs_floor",
        "max_deliveries_per_s_any_p99",
    ];
    const P2_EXTRA: [&str; 7] = [
        "sockets",
        "publishes_per_s",
        "lowest_step_publishes_per_s",
        "lowest_step_p50_ms",
        "max_step_p50_ms",
        "max_step_p99_ms",
        "max_step_publishes_per_s",
    ];
    const P4_KEYS: [&str; 4] = [
        "connects_per_s",
        "p99_ms",
        "storm_seconds",
        "storm_failures",
    ];
    const P4_EXTRA: [&str; 7] = [
        "sockets",
        "p50_ms",
        "connect_failures",
        "storm_reconnects",
        "storm_p50_ms",
        "storm_p99_ms",
        "open_after_storm",
    ];
    const P7_KEYS: [&str; 2] = ["sockets_total", "deliveries_per_s"];
    const P7_EXTRA: [&str; 12] = [
        "one_node_deliveries_per_s",
        "ratio_3_vs_1",
        "one_node_sockets",
        "p50_ms",
        "p99_ms",
        "publishes_per_s",
        "one_node_p50_ms",
        "one_node_p99_ms",
        "one_node_publishes_per_s",
        "connect_failures",
        "deliveries_per_s_within_p99_limit",
        "one_node_deliveries_per_s_within_p99_limit",
    ];
    const P3_KEYS: [&str; 2] = ["p50_ms", "p99_ms"];
    const P3_EXTRA: [&str; 8] = [
        "sockets",
        "rate",
        "achieved_rate",
        "messages",
        "lost",
        "p90_ms",
        "p999_ms",
        "max_ms",
    ];
    const P5_KEYS: [&str; 1] = ["p99_ratio"];
    const P5_EXTRA: [&str; 11] = [
        "sockets",
        "rate",
        "baseline_p50_ms",
        "baseline_p99_ms",
        "flood_p50_ms",
        "flood_p99_ms",
        "p50_ratio",
        "flood_ok",
        "flood_refused",
        "flood_failed",
        "flood_connects_per_s",
    ];
    let date = sh("date -u +%Y-%m-%dT%H:%M:%SZ");
    let cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-");
    let machine = format!(
        "{} CPUs ({}), {} MiB RAM, {}",
        sh("nproc"),
        cpu.trim(),
        sh("free -m | awk '/^Mem:/ {print $2}'"),
        sh("uname -sr")
    );
    // ws-floor is P2 against the leanest possible server: the same summary as P2's runs.
    let mut ws_floor_runs = runs_named(dir, "ws-floor-")?;
    ws_floor_runs.iter_mut().for_each(p2_summary);
    let mut scenarios = Map::new();
    let mut all_runs = Map::new();
    for (name, keys, extra) in [
        ("P1", &P1_KEYS[..], &P1_EXTRA[..]),
        ("P2", &P2_KEYS[..], &P2_EXTRA[..]),
        ("P3", &P3_KEYS[..], &P3_EXTRA[..]),
        ("P4", &P4_KEYS[..], &P4_EXTRA[..]),
        ("P5", &P5_KEYS[..], &P5_EXTRA[..]),
        ("P7", &P7_KEYS[..], &P7_EXTRA[..]),
    ] {
        let mut per = Map::new();
        for s in SERVERS {
            let mut r = runs(dir, name, s)?;
            if name == "P2" {
                r.iter_mut().for_each(p2_summary);
                pair_with_floor(&mut r, &ws_floor_runs);
            }
            let mut m = medians(&r, keys);
            // P3's ramp: one `at_<rate>_*` key per lower rate measured, as the runs name them.
            let ramp: Vec<String> = r
                .first()
                .and_then(Value::as_object)
                .map(|o| {
                    o.keys()
                        .filter(|k| k.starts_with("at_") && !k.ends_with("cpu_percent"))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            let extra: Vec<&str> = extra
                .iter()
                .copied()
                .chain(ramp.iter().map(String::as_str))
                .collect();
            if let (Value::Object(m), Value::Object(e)) = (&mut m, medians(&r, &extra)) {
                let mut detail = e;
                detail.remove("runs");
                m.insert("detail_medians".into(), Value::Object(detail));
            }
            per.insert(s.into(), m);
            all_runs.insert(format!("{name}/{s}"), Value::Array(r));
        }
        scenarios.insert(name.into(), Value::Object(per));
    }
    const FLOOR_KEYS: [&str; 5] = [
        "pairs",
        "fanout_p50_ms",
        "fanout_p99_ms",
        "writes_only_p50_ms",
        "us_per_delivery_p50",
    ];
    const QUEUE_FLOOR_KEYS: [&str; 6] = [
        "rate",
        "p50_ms",
        "p99_ms",
        "p999_ms",
        "rabbitmq_cpu_percent",
        "publisher_and_consumer_cpu_percent",
    ];
    let floor_runs = runs_named(dir, "floor-")?;
    let floor = medians(&floor_runs, &FLOOR_KEYS);
    all_runs.insert("floor".into(), Value::Array(floor_runs.clone()));
    let queue_floor_runs = runs_named(dir, "queue-floor-")?;
    let queue_floor = medians(&queue_floor_runs, &QUEUE_FLOOR_KEYS);
    all_runs.insert("queue_floor".into(), Value::Array(queue_floor_runs.clone()));
    let ws_floor = medians(
        &ws_floor_runs,
        &[
            "sockets",
            "writer_threads",
            "p99_limit_met",
            "lowest_step_publishes_per_s",
            "lowest_step_p50_ms",
            "lowest_step_p99_ms",
            "max_deliveries_per_s_any_p99",
        ],
    );
    all_runs.insert("ws_floor".into(), Value::Array(ws_floor_runs.clone()));
    // P8 (Hermes only: Centrifugo keeps no per-connection rows in a database).
    const P8_KEYS: [&str; 5] = [
        "sockets",
        "registry_ttl_seconds",
        "window_seconds",
        "writes_per_second",
        "registry_writes_per_socket_hour",
    ];
    let p8_runs = runs_named(dir, "p8-hermes-")?;
    let p8 = medians(&p8_runs, &P8_KEYS);
    all_runs.insert("p8".into(), Value::Array(p8_runs.clone()));
    let results = json!({"date": date, "machine": machine, "scenarios": scenarios, "floor": floor, "queue_floor": queue_floor, "ws_floor": ws_floor, "p8": p8});
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results)? + "\n",
    )?;

    let s = &results["scenarios"];
    let mut md = String::new();
    writeln!(md, "# Hermes vs Centrifugo: measurements\n")?;
    writeln!(
        md,
        "Generated by `scripts/bench/run.sh` (`hermes-bench report`). Raw runs: `results.json` keeps the medians; every run's JSON is listed at the end.\n"
    )?;
    writeln!(md, "- date: {date}")?;
    writeln!(md, "- machine: {machine}")?;
    writeln!(
        md,
        "- memory (`free -m` at report time):\n\n```\n{}\n```",
        sh("free -m")
    )?;
    let centrifugo = read(dir, "centrifugo-version.txt");
    if !centrifugo.trim().is_empty() {
        writeln!(md, "- Centrifugo: {}", centrifugo.trim())?;
    }
    let build = read(dir, "centrifugo-build.txt");
    if !build.trim().is_empty() {
        writeln!(md, "- Centrifugo build: {}", build.trim())?;
    }
    writeln!(md)?;
    writeln!(
        md,
        "## Medians (of {} runs per server, servers alternated)\n",
        s["P1"]["hermes"]["runs"]
    )?;
    writeln!(
        md,
        "| scenario | metric | Hermes | Centrifugo | Hermes / Centrifugo | target |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|")?;
    let rows = [
        ("P1", "rss_per_socket_kib", "≤ 8 KiB; ratio ≤ 0.4"),
        ("P1", "cpu_us_per_socket_s", "ratio ≤ 0.4"),
        ("P2", "deliveries_per_s", "≥ 200,000 and ≥ 2× Centrifugo"),
        ("P2", "p50_ms", ""),
        ("P2", "p99_ms", "≤ 50 ms"),
        (
            "P2",
            "p99_limit_met",
            "1 when some rate kept p99 ≤ 50 ms, 0 when none did",
        ),
        (
            "P2",
            "lowest_step_p99_ms",
            "p99 at the lowest rate tried (not always the least of the steps)",
        ),
        (
            "P2",
            "lowest_step_p99_vs_floor",
            "≤ 1.2: over the ws-floor of the same run, pair by pair (median of the pairs)",
        ),
        (
            "P2",
            "max_deliveries_per_s_any_p99",
            "the highest rate delivered whole and on schedule, whatever its p99",
        ),
        ("P3", "p50_ms", "≤ 2 ms"),
        ("P3", "p99_ms", "≤ 10 ms"),
        (
            "P4",
            "connects_per_s",
            "≥ 5,000/s, p99 ≤ 50 ms; storm ≤ 5 s, 0 failures",
        ),
        ("P4", "p99_ms", "≤ 50 ms"),
        ("P4", "storm_seconds", "≤ 5 s"),
        ("P4", "storm_failures", "0"),
        ("P5", "p99_ratio", "≤ 1.5"),
        ("P7", "sockets_total", "57,000 held by 3 processes"),
        (
            "P7",
            "deliveries_per_s",
            "3 processes against 1: `ratio_3_vs_1` in the details",
        ),
    ];
    for (sc, k, target) in rows {
        let h = &s[sc]["hermes"][k];
        let c = &s[sc]["centrifugo"][k];
        writeln!(
            md,
            "| {sc} | `{k}` | {} | {} | {} | {target} |",
            fmt(h),
            fmt(c),
            ratio(h, c)
        )?;
    }
    writeln!(md)?;
    if !floor_runs.is_empty() {
        let f = &results["floor"];
        writeln!(
            md,
            "The box's own floor under a fan-out (`hermes-bench floor`, no server, median of {} runs): {} loopback TCP pairs, one 64-byte `write` per pair from one thread and one blocking `read` per pair on another: first write → last read p50 **{} ms**, p99 {} ms; the writes alone p50 {} ms ({} µs per delivery). Any server's P2 fan-out to 10,000 sockets on this box costs at least that much, before WebSocket framing, task wake-ups and the generator's own work.\n",
            f["runs"],
            fmt(&f["pairs"]),
            fmt(&f["fanout_p50_ms"]),
            fmt(&f["fanout_p99_ms"]),
            fmt(&f["writes_only_p50_ms"]),
            fmt(&f["us_per_delivery_p50"]),
        )?;
    }
    if !ws_floor_runs.is_empty() {
        let f = &results["ws_floor"];
        writeln!(
            md,
            "The floor under P2 with P2's own generator (`hermes-bench ws-floor`, median of {} runs): P2's holders, publisher and ramp against a WebSocket server that does the least there is — no auth, each publish encoded once as one frame and written by {} blocking threads to {} sockets, no task or queue per socket. Its lowest step ({}/s) took p50 **{} ms**, p99 **{} ms** from publish to the last receipt (a rate within P2's 50 ms p99 limit: {}), and, with one `write` per message and socket, it delivered up to {} deliveries/s whole (a latency floor, not a throughput ceiling: a server that writes several queued frames in one call goes further). A real server adds its own work to this latency.\n",
            f["runs"],
            fmt(&f["writer_threads"]),
            fmt(&f["sockets"]),
            fmt(&f["lowest_step_publishes_per_s"]),
            fmt(&f["lowest_step_p50_ms"]),
            fmt(&f["lowest_step_p99_ms"]),
            if f["p99_limit_met"].as_f64() == Some(1.0) {
                "yes"
            } else {
                "none"
            },
            fmt(&f["max_deliveries_per_s_any_p99"]),
        )?;
    }
    if !queue_floor_runs.is_empty() {
        let f = &results["queue_floor"];
        writeln!(
            md,
            "The box's own floor under P3 (`hermes-bench queue-floor`, no server, median of {} runs): P3's publisher into RabbitMQ at {}/s (persistent, publisher confirms) and one AMQP consumer that only acknowledges: publish → consumer p50 **{} ms**, p99 {} ms, p99.9 {} ms, while RabbitMQ took {} % of a core and the publisher with that consumer {} %. A RabbitMQ-fed server's P3 latency starts there, on what CPU is left.\n",
            f["runs"],
            fmt(&f["rate"]),
            fmt(&f["p50_ms"]),
            fmt(&f["p99_ms"]),
            fmt(&f["p999_ms"]),
            fmt(&f["rabbitmq_cpu_percent"]),
            fmt(&f["publisher_and_consumer_cpu_percent"]),
        )?;
    }
    if !p8_runs.is_empty() {
        let f = &results["p8"];
        writeln!(
            md,
            "P8, what idle sockets cost the registry (`hermes-bench p8`, Hermes only, median of {} runs): {} sockets of one user in one room left idle on one gateway with `HERMES_REGISTRY_TTL_SECONDS={}`; the CQL server applied {} writes/s to the keyspace over {} s: **{} registry writes per socket-hour** (target ≤ 1).\n",
            f["runs"],
            fmt(&f["sockets"]),
            fmt(&f["registry_ttl_seconds"]),
            fmt(&f["writes_per_second"]),
            fmt(&f["window_seconds"]),
            fmt(&f["registry_writes_per_socket_hour"]),
        )?;
    }
    writeln!(md, "Details (medians):\n")?;
    writeln!(md, "| scenario | server | detail |")?;
    writeln!(md, "|---|---|---|")?;
    for sc in ["P1", "P2", "P3", "P4", "P5", "P7"] {
        for sv in SERVERS {
            writeln!(md, "| {sc} | {sv} | `{}` |", s[sc][sv]["detail_medians"])?;
        }
    }
    writeln!(md, "\n## What is measured, and how\n")?;
    writeln!(md, "{}", read(dir, "method.md").trim())?;
    writeln!(
        md,
        "\n## Commands\n\n```sh\n{}\n```",
        read(dir, "commands.txt").trim()
    )?;
    let load = read(dir, "load.txt");
    writeln!(
        md,
        "\n## Other load on the machine during the runs\n\nThe box is shared: `/proc/loadavg` and the count of other heavy processes (cargo, rustc, java, beam, chromium, other test binaries) before each run:\n\n```\n{}\n```",
        load.trim()
    )?;
    writeln!(md, "\n## Every run\n")?;
    for (k, v) in &all_runs {
        writeln!(md, "### {k}\n")?;
        for r in v.as_array().into_iter().flatten() {
            let mut r = r.clone();
            if let Some(o) = r.as_object_mut() {
                o.remove("steps");
                o.remove("one_node_steps");
            }
            writeln!(md, "- `{r}`")?;
        }
        writeln!(md)?;
    }
    std::fs::write(out.join("RESULTS.md"), md)?;
    println!(
        "wrote {} and {}",
        out.join("results.json").display(),
        out.join("RESULTS.md").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `runs` (file name, contents) into a fresh directory, runs the report on it and
    /// answers its `results.json` and `RESULTS.md`.
    fn report_of(test: &str, runs: &[(&str, String)]) -> Result<(Value, String)> {
        let dir = std::env::temp_dir().join(format!("hermes-report-{test}-{}", std::process::id()));
        let (runs_dir, out) = (dir.join("runs"), dir.join("out"));
        std::fs::create_dir_all(&runs_dir)?;
        std::fs::create_dir_all(&out)?;
        for (name, text) in runs {
            std::fs::write(runs_dir.join(name), text)?;
        }
        write(&runs_dir, &out)?;
        let results = serde_json::from_str(&std::fs::read_to_string(out.join("results.json"))?)?;
        let md = std::fs::read_to_string(out.join("RESULTS.md"))?;
        std::fs::remove_dir_all(&dir)?;
        Ok((results, md))
    }

    #[test]
    fn a_p2_run_without_a_sustained_rate_reports_the_limit_missed_and_its_lowest_step() {
        let mut run = json!({
            "deliveries_per_s": null,
            "steps": [
                {"publishes_per_s": 2, "p50_ms": 80.0, "p99_ms": 95.0},
                {"publishes_per_s": 5, "p50_ms": 90.0, "p99_ms": 120.0},
            ],
        });
        p2_summary(&mut run);
        assert_eq!(run["p99_limit_met"], json!(0));
        assert_eq!(run["lowest_step_publishes_per_s"], json!(2));
        assert_eq!(run["lowest_step_p50_ms"], json!(80.0));
        assert_eq!(run["lowest_step_p99_ms"], json!(95.0));
    }

    #[test]
    fn a_p8_run_gives_results_json_its_writes_per_socket_hour() -> Result<()> {
        let (results, md) = report_of(
            "p8",
            &[(
                "p8-hermes-1.json",
                "[p8 hermes] a log line\n{\"scenario\":\"p8\",\"sockets\":19000,\"registry_ttl_seconds\":30,\"window_seconds\":600.0,\"writes_per_second\":1902.3,\"registry_writes_per_socket_hour\":360.432}\n".into(),
            )],
        )?;
        assert_eq!(
            results["p8"]["registry_writes_per_socket_hour"],
            json!(360.432)
        );
        assert_eq!(results["p8"]["runs"], json!(1));
        assert!(
            md.contains("**360.43 registry writes per socket-hour**"),
            "{md}"
        );
        Ok(())
    }

    #[test]
    fn p2_lowest_step_is_compared_with_the_ws_floor_of_the_same_run() -> Result<()> {
        let p2 = |p99: f64| {
            format!(
                "[p2] a log line\n{{\"deliveries_per_s\":null,\"steps\":[{{\"publishes_per_s\":2,\"p50_ms\":50.0,\"p99_ms\":{p99}}}]}}\n"
            )
        };
        // Run 1: 120 over 100 (1.2); run 2: 200 over 250 (0.8). Paired, the median is 1.0;
        // a ratio of medians would say 160 / 175, and pairs crossed 1.24.
        let (results, md) = report_of(
            "p2",
            &[
                ("p2-hermes-1.json", p2(120.0)),
                ("p2-hermes-2.json", p2(200.0)),
                ("ws-floor-1.json", p2(100.0)),
                ("ws-floor-2.json", p2(250.0)),
            ],
        )?;
        let hermes = &results["scenarios"]["P2"]["hermes"];
        assert_eq!(hermes["lowest_step_p99_vs_floor"], json!(1.0));
        assert_eq!(hermes["lowest_step_p99_ms"], json!(160.0));
        assert!(
            md.contains("| P2 | `lowest_step_p99_vs_floor` | 1 | — |"),
            "{md}"
        );
        Ok(())
    }

    #[test]
    fn a_p2_run_with_a_sustained_rate_reports_the_limit_met() {
        let mut run = json!({
            "deliveries_per_s": 250_000.0,
            "steps": [{"publishes_per_s": 2, "p50_ms": 20.0, "p99_ms": 30.0}],
        });
        p2_summary(&mut run);
        assert_eq!(run["p99_limit_met"], json!(1));
        assert_eq!(run["lowest_step_p99_ms"], json!(30.0));
    }
}
