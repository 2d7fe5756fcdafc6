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
    match hermes_consumer::run::block_on(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hermes-consumer: {e}");
            ExitCode::FAILURE
        }
    }
}
