//! `faults`: the fault checker on its own (`scripts/faults.sh`), one line per fault and
//! last `faults: N lost, M duplicated across K faults`. Exits 1 when anything was lost or
//! duplicated. Options: `--rate N` (per publisher, default 10), `--settle SECONDS`
//! (default 4), `--only NAME` (a fault's words, e.g. `--only SIGSTOP`), repeatable.

use std::time::Duration;

use hermes_e2e::faults::{self, Fault, Settings};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut settings = Settings::default();
    let mut only: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--rate" => settings.rate = value()?.parse()?,
            "--settle" => settings.settle = Duration::from_secs(value()?.parse()?),
            "--only" => only.push(value()?.to_lowercase()),
            other => anyhow::bail!("unknown option {other}; see the file's header"),
        }
    }
    if !only.is_empty() {
        settings.faults = Fault::ALL
            .into_iter()
            .filter(|f| only.iter().any(|o| f.name().to_lowercase().contains(o)))
            .collect();
    }
    let reports = faults::run(&settings).await;
    let (table, lost, duplicated) = faults::summary(&reports);
    println!("{table}");
    if lost + duplicated > 0 {
        std::process::exit(1);
    }
    Ok(())
}
