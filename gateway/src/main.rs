//! `hermes-gateway`: wiring only. See the library for the behaviour.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hermes_gateway::config::{GatewayConfig, Mode};
use hermes_shared::auth::TokenCheck;
use hermes_shared::auth::{Authenticator, Claims, original_token};
use hermes_shared::config::Env;
use hermes_shared::metrics::Metrics;
use hermes_shared::registry::RegistryKind;
use std::sync::Arc;

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
    Token {
        /// The user id.
        #[arg(long)]
        user: String,
        /// The room id.
        #[arg(long)]
        room: String,
        /// Lifetime of the token in seconds (default: HERMES_TOKEN_TTL_SECONDS).
        #[arg(long)]
        ttl_seconds: Option<u64>,
        /// Make the second-layer token as the original code does,
        /// hex(sha256(user + passcode + room)), instead of storing a new one.
        #[arg(long)]
        passcode: Option<String>,
    },
}

fn load(mode: Mode) -> Result<GatewayConfig, String> {
    let env = Env::load().map_err(|e| e.to_string())?;
    GatewayConfig::from_strings(&env, mode).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    hermes_shared::process::init_logging();
    let (mode, token_args) = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => (Mode::Serve, None),
        Command::Standalone => (Mode::Standalone, None),
        Command::Token {
            user,
            room,
            ttl_seconds,
            passcode,
        } => (Mode::Standalone, Some((user, room, ttl_seconds, passcode))),
    };
    if token_args.is_some() && std::env::var("HERMES_JWT_SECRET").is_err() {
        eprintln!("hermes-gateway: HERMES_JWT_SECRET: required to sign a token");
        return ExitCode::from(EXIT_CONFIG);
    }
    let config = match load(mode) {
        Ok(c) => c,
        Err(message) => {
            eprintln!("hermes-gateway: {message}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let workers = config.workers;
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
    let result = match token_args {
        Some((user, room, ttl, passcode)) => {
            system.block_on(token(config, user, room, ttl, passcode))
        }
        None => system.block_on(async move {
            hermes_gateway::server::run(config)
                .await
                .map_err(|e| e.to_string())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("hermes-gateway: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `hermes-gateway token`: prints a JWT; stores the token row when the registry is shared.
async fn token(
    config: GatewayConfig,
    user: String,
    room: String,
    ttl: Option<u64>,
    passcode: Option<String>,
) -> Result<(), String> {
    let metrics = Arc::new(Metrics::new());
    let shared = !matches!(config.registry, RegistryKind::Memory);
    let registry = hermes_shared::registry::connect(
        &config.registry,
        &config.internal_secret,
        Duration::from_secs(5),
        metrics.clone(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let check = config.auth.token_check;
    let auth = Authenticator::new(config.auth.clone(), registry, metrics);
    let ttl = ttl.map(Duration::from_secs);
    let jwt = match passcode {
        Some(passcode) => {
            let token = original_token(&user, &passcode, &room);
            let exp =
                hermes_shared::ids::now_secs() + ttl.unwrap_or(config.auth.token_ttl).as_secs();
            auth.codec()
                .sign(&Claims {
                    user_id: user,
                    room_id: room,
                    token,
                    exp,
                })
                .map_err(|e| e.to_string())?
        }
        None => {
            let issued = auth
                .issue(&user, &room, ttl)
                .await
                .map_err(|e| e.to_string())?;
            if !shared && check == TokenCheck::Bcrypt {
                eprintln!(
                    "note: the token's hash was not stored anywhere (HERMES_REGISTRY=memory); \
                     use POST /v1/tokens on a running gateway, HERMES_REGISTRY=remote, or HERMES_TOKEN_CHECK=off"
                );
            }
            issued.token
        }
    };
    println!("{jwt}");
    Ok(())
}
