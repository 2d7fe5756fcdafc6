//! `hermes-gateway`: wiring only. See the library for the behaviour.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hermes_gateway::config::{GatewayConfig, Mode};
use hermes_gateway::import_tokens::{ImportArgs, ImportCommand};
use hermes_gateway::token_cmd::{TokenArgs, TokenCommand};
use hermes_shared::config::Env;

/// Exit status for a configuration error (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(name = "hermes-gateway", version, about = "Hermes WebSocket gateway")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run one gateway replica (the default). Configuration: HERMES_* variables.
    Serve,
    /// Run everything in one process: memory registry, generated secrets, demo page.
    Standalone,
    /// Print a connect token (JWT) for a user in a room.
    Token(TokenArgs),
    /// Copy the original's DynamoDB token table (an export) into the registry's tokens table.
    ImportTokens(ImportArgs),
    /// Create the registry's keyspace and tables (HERMES_SCYLLA_*) if absent, then exit:
    /// one step before the replicas start (they may then run with HERMES_SCYLLA_SCHEMA=verify).
    Migrate,
    /// Print the registry's schema as CQL (HERMES_SCYLLA_KEYSPACE, HERMES_SCYLLA_REPLICATION)
    /// for a DBA to apply.
    Schema,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    hermes_shared::process::init_logging();
    let result = Env::load().map_err(Into::into).and_then(|env| {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => serve(GatewayConfig::from_strings(&env, Mode::Serve)?),
            Command::Standalone => serve(GatewayConfig::from_strings(&env, Mode::Standalone)?),
            Command::Token(args) => block_on(1, TokenCommand::new(&env, args)?.run()),
            Command::ImportTokens(args) => {
                block_on(2, ImportCommand::new(&env, args)?.run()).map(drop)
            }
            Command::Migrate => block_on(1, hermes_gateway::schema_cmd::migrate(&env)),
            Command::Schema => hermes_gateway::schema_cmd::schema(&env),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hermes-gateway: {error}");
            ExitCode::from(if error.is_config() { EXIT_CONFIG } else { 1 })
        }
    }
}

fn serve(config: GatewayConfig) -> hermes_gateway::Result<()> {
    block_on(config.workers, hermes_gateway::server::run(config))
}

/// Runs `task` on an actix system over a tokio runtime of up to 4 threads.
fn block_on<T>(workers: usize, task: impl Future<Output = T>) -> T {
    let system = actix_web::rt::System::with_tokio_rt(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.clamp(1, 4))
            .enable_all()
            .thread_name("hermes-rt")
            .build()
            .unwrap_or_else(|e| {
                eprintln!("hermes-gateway: cannot start the runtime: {e}");
                std::process::exit(1)
            })
    });
    system.block_on(task)
}
