//! What every scenario measures with: clocks, a process's memory, histogram quantiles.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

/// The value at quantile `q` of a histogram of microseconds, in milliseconds.
pub fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// utime + stime of a process in clock ticks, 0 if it is gone.
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields are counted after the command name's closing parenthesis.
    let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// Processes whose command name is `comm` (RabbitMQ's `beam.smp`, Cassandra's `java`).
pub fn pids_named(comm: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .collect()
}

/// Named groups of processes whose CPU is measured over the publishing window.
pub type Watch = Vec<(&'static str, Vec<u32>)>;

pub fn ticks(watch: &Watch) -> Vec<u64> {
    watch
        .iter()
        .map(|(_, pids)| pids.iter().map(|&p| cpu_ticks(p)).sum())
        .collect()
}

/// CPU % (of one core) of each watched group since `c0` (its `ticks`), `wall` seconds ago.
pub fn cpu_percent(watch: &Watch, c0: &[u64], wall: f64) -> Value {
    let c1 = ticks(watch);
    // Clock ticks are 1/100 s on Linux (CLK_TCK).
    let cpu: serde_json::Map<String, Value> = watch
        .iter()
        .zip(c0.iter().zip(&c1))
        .map(|((name, _), (a, b))| {
            let pct = b.saturating_sub(*a) as f64 / wall.max(1e-9);
            ((*name).to_owned(), json!((pct * 10.0).round() / 10.0))
        })
        .collect();
    Value::Object(cpu)
}
