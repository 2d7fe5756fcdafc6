//! `installed-faults`: the fault checker against a release installed elsewhere (a
//! Kubernetes cluster), with one disruption that is a command: clients through the
//! gateways' Service and a RabbitMQ publisher at a steady rate, then the command (e.g.
//! `helm upgrade ... --wait`) under that publishing, then the same table as `faults`.
//! Exits 1 when anything was lost or duplicated, 2 when the command failed.
//!
//! Usage: installed-faults --ws URL --admin URL --queue QUEUE [--name TEXT] [--rate N]
//!        [--settle SECONDS] [--rust-clients N] [--node-clients N] -- COMMAND [ARGS...]
//! The admin key is read from `HERMES_ADMIN_KEY` (never from the command line: a process
//! list shows arguments); the broker from `HERMES_TEST_AMQP_URL`. Used by
//! `scripts/kube/upgrade-on-node.sh`.

use std::time::Duration;

use hermes_e2e::faults::{self, Installed, Settings};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut settings = Settings {
        faults: Vec::new(),
        ..Settings::default()
    };
    let (mut ws, mut admin, mut queue) = (None, None, None);
    let mut name = "the command".to_owned();
    let mut command: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--" {
            command = args.by_ref().collect();
            break;
        }
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--ws" => ws = Some(value()?),
            "--admin" => admin = Some(value()?),
            "--queue" => queue = Some(value()?),
            "--name" => name = value()?,
            "--rate" => settings.rate = value()?.parse()?,
            "--settle" => settings.settle = Duration::from_secs(value()?.parse()?),
            "--rust-clients" => settings.rust_clients = value()?.parse()?,
            "--node-clients" => settings.node_clients = value()?.parse()?,
            other => anyhow::bail!("unknown option {other}; see the file's header"),
        }
    }
    let need =
        |v: Option<String>, what: &str| v.ok_or_else(|| anyhow::anyhow!("{what} is required"));
    let installed = Installed {
        ws_url: need(ws, "--ws")?,
        admin_url: need(admin, "--admin")?,
        queue: need(queue, "--queue")?,
        admin_key: std::env::var("HERMES_ADMIN_KEY")
            .map_err(|_| anyhow::anyhow!("HERMES_ADMIN_KEY is not set"))?,
    };
    let Some((program, rest)) = command.split_first() else {
        anyhow::bail!("no command after --");
    };
    let run = faults::run_installed(&installed, &settings, &name, || async move {
        let status = tokio::process::Command::new(program)
            .args(rest)
            .status()
            .await
            .map_err(|e| format!("{program} did not start: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{program} failed: {status}"))
        }
    })
    .await;
    let reports = match run {
        Ok(reports) => reports,
        Err(failure) => {
            eprintln!("installed-faults: {failure}");
            std::process::exit(2);
        }
    };
    let (table, lost, duplicated) = faults::summary(&reports);
    println!("{table}");
    if lost + duplicated > 0 {
        std::process::exit(1);
    }
    Ok(())
}
