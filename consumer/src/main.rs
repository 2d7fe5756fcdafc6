//! `hermes-consumer`: wiring only. See the library for the behaviour.

use std::process::ExitCode;

use clap::Parser;
use hermes_consumer::config::ConsumerConfig;
use hermes_shared::config::Env;

/// Exit status for a configuration error (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "hermes-consumer",
    version,
    about = "Hermes consumer: routes RabbitMQ or SQS messages to the gateways holding their targets"
)]
struct Cli {}

fn main() -> ExitCode {
    let Cli {} = Cli::parse();
    hermes_shared::process::init_logging();
    let config = match Env::load().and_then(|env| ConsumerConfig::from_strings(&env)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hermes-consumer: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // One thread by default: routing a message is mostly waiting, and handing it between
    // threads costs more CPU than it saves (docs/consumer.md, Measured).
    let threads = config.threads;
    let system = actix_web::rt::System::with_tokio_rt(move || {
        let mut builder = if threads == 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(threads);
            b
        };
        builder
            .enable_all()
            .thread_name("hermes-consumer")
            .build()
            .unwrap_or_else(|e| {
                eprintln!("hermes-consumer: cannot start the runtime: {e}");
                std::process::exit(1)
            })
    });
    match system.block_on(hermes_consumer::run::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hermes-consumer: {e}");
            ExitCode::FAILURE
        }
    }
}
