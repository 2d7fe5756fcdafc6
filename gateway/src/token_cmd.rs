//! `hermes-gateway token --user U --room R`: prints a connect token (JWT) for scripts and
//! ops, and stores its token row when the registry is shared.
//!
//! It reads the gateway's configuration like every other setting (`HERMES_*` variables,
//! completed by `HERMES_CONFIG_FILE`), except that the JWT secret is never generated: a
//! token signed with a secret of its own would be refused by every gateway.

use std::sync::Arc;
use std::time::Duration;

use hermes_shared::auth::config::JWT_SECRET;
use hermes_shared::auth::{Authenticator, Claims, TokenCheck, original_token};
use hermes_shared::config::Strings;
use hermes_shared::metrics::Metrics;
use hermes_shared::registry::RegistryKind;

use crate::Result;
use crate::config::{GatewayConfig, Mode};

/// How long the token command waits for a remote registry.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);

/// The `token` subcommand's arguments.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The user id.
    #[arg(long)]
    pub user: String,
    /// The room id.
    #[arg(long)]
    pub room: String,
    /// Lifetime of the token in seconds (default: HERMES_TOKEN_TTL_SECONDS).
    #[arg(long)]
    pub ttl_seconds: Option<u64>,
    /// Make the second-layer token as the original code does,
    /// hex(sha256(user + passcode + room)), with this passcode instead of
    /// HERMES_TOKEN_PASSCODE, and store nothing.
    #[arg(long)]
    pub passcode: Option<String>,
}

/// A validated `token` command.
pub struct TokenCommand {
    config: GatewayConfig,
    args: TokenArgs,
}

impl TokenCommand {
    /// Reads the configuration from `strings`. A missing or empty `HERMES_JWT_SECRET` is a
    /// configuration error, as is any bad value.
    pub fn new(strings: &dyn Strings, args: TokenArgs) -> Result<Self> {
        if strings.get(JWT_SECRET).is_none() {
            return Err(hermes_shared::Error::Config(format!(
                "{JWT_SECRET}: required to sign a token (unset or empty; set it in the \
                 environment or in the file named by HERMES_CONFIG_FILE)"
            ))
            .into());
        }
        // Standalone's defaults: no admin key or internal secret is needed to sign.
        let config = GatewayConfig::from_strings(strings, Mode::Standalone)?;
        Ok(Self { config, args })
    }

    /// Issues the token and prints it on stdout (a note on stderr when its hash could
    /// not be stored anywhere).
    pub async fn run(self) -> Result<()> {
        let Self { config, args } = self;
        let metrics = Arc::new(Metrics::new());
        let shared = !matches!(config.registry, RegistryKind::Memory);
        let registry = hermes_shared::registry::connect(
            &config.registry,
            &config.internal_secret,
            REGISTRY_TIMEOUT,
            metrics.clone(),
        )
        .await?;
        let ttl = args.ttl_seconds.map(Duration::from_secs);
        let auth = Authenticator::new(config.auth.clone(), registry, metrics);
        let jwt = match args.passcode {
            Some(passcode) => {
                let token = original_token(&args.user, &passcode, &args.room);
                let now = hermes_shared::ids::now_secs();
                let exp = now + ttl.unwrap_or(config.auth.token_ttl).as_secs();
                auth.codec().sign(&Claims {
                    user_id: args.user,
                    room_id: args.room,
                    token: Some(token),
                    exp,
                    iat: Some(now),
                })?
            }
            None => {
                let issued = auth.issue(&args.user, &args.room, ttl).await?;
                if !shared && config.auth.token_check == TokenCheck::Bcrypt {
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
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn args() -> TokenArgs {
        TokenArgs {
            user: "u".into(),
            room: "r".into(),
            ttl_seconds: None,
            passcode: None,
        }
    }

    #[test]
    fn a_missing_or_empty_secret_is_a_configuration_error_naming_it() {
        for env in [
            HashMap::<&str, &str>::new(),
            HashMap::from([(JWT_SECRET, "")]),
        ] {
            let error = TokenCommand::new(&env, args()).err().expect("refused");
            assert!(error.is_config(), "{error}");
            assert!(error.to_string().starts_with(JWT_SECRET), "{error}");
        }
        let env = HashMap::from([(JWT_SECRET, "0123456789abcdef0123456789abcdef")]);
        assert!(TokenCommand::new(&env, args()).is_ok());
    }
}
