//! The authorizer's settings: `HERMES_JWT_*`, `HERMES_TOKEN_*` (`HERMES_TOKEN_PASSCODE`
//! included), `HERMES_BCRYPT_*`,
//! `HERMES_AUTH_CACHE_*` and `HERMES_VERIFIER_KEY` (docs/configuration.md).

use std::time::Duration;

use super::bcrypt_pool::BcryptPriority;
use super::jwt::Algorithm;
use super::verifier::derive_key;
use crate::config::{Strings, num, positive, positive_secs, secret, secs};
use crate::error::{Error, Result};

// The variables. Each is documented in docs/configuration.md.
pub const JWT_SECRET: &str = "HERMES_JWT_SECRET";
pub const JWT_ALGORITHMS: &str = "HERMES_JWT_ALGORITHMS";
pub const JWT_LEEWAY: &str = "HERMES_JWT_LEEWAY_SECONDS";
pub const VERIFIER_KEY: &str = "HERMES_VERIFIER_KEY";
pub const TOKEN_CHECK: &str = "HERMES_TOKEN_CHECK";
pub const TOKEN_TTL: &str = "HERMES_TOKEN_TTL_SECONDS";
pub const TOKEN_PASSCODE: &str = "HERMES_TOKEN_PASSCODE";
pub const BCRYPT_COST: &str = "HERMES_BCRYPT_COST";
pub const BCRYPT_WORKERS: &str = "HERMES_BCRYPT_WORKERS";
pub const BCRYPT_QUEUE: &str = "HERMES_BCRYPT_QUEUE";
/// The former name of [`BCRYPT_PRIORITY`]; setting it is an error that names the new one.
pub const BCRYPT_NICE: &str = "HERMES_BCRYPT_NICE";
pub const BCRYPT_PRIORITY: &str = "HERMES_BCRYPT_PRIORITY";
pub const AUTH_CACHE_TTL: &str = "HERMES_AUTH_CACHE_TTL_SECONDS";
pub const AUTH_CACHE_CAPACITY: &str = "HERMES_AUTH_CACHE_CAPACITY";

/// The second-layer token check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    /// `bcrypt(token)` must be stored for (user, room) and match.
    Bcrypt,
    /// The JWT alone decides.
    Off,
}

/// The authorizer's settings.
#[derive(Clone)]
pub struct AuthConfig {
    pub jwt_secret: String,
    pub algorithms: Vec<Algorithm>,
    pub leeway: Duration,
    pub verifier_key: Vec<u8>,
    pub token_check: TokenCheck,
    pub token_ttl: Duration,
    /// The server passcode of issued tokens: the token of (user, room) is
    /// `hex(sha256(user_id + passcode + room_id))`, as the original makes it, so issuing
    /// again gives the same token (decision 0026). Never logged or stored.
    pub token_passcode: String,
    pub bcrypt_cost: u32,
    pub bcrypt_workers: usize,
    pub bcrypt_queue: usize,
    /// How the bcrypt threads yield to the sockets' threads under contention, so that a
    /// flood of first connects does not slow deliveries down.
    pub bcrypt_priority: BcryptPriority,
    pub cache_ttl: Duration,
    pub cache_capacity: usize,
}

impl AuthConfig {
    /// Reads and validates the authorizer's settings; `generate_secret`: a missing JWT
    /// secret is generated (standalone) instead of refused.
    pub fn from_strings(s: &dyn Strings, generate_secret: bool) -> Result<Self> {
        let jwt_secret = secret(s, JWT_SECRET, generate_secret, 48)?;
        if jwt_secret.len() < 16 {
            return Err(Error::Config(format!(
                "{JWT_SECRET}: must be at least 16 bytes"
            )));
        }
        let algorithms = match s.get(JWT_ALGORITHMS) {
            Some(list) => list
                .split(',')
                .map(|a| a.trim())
                .filter(|a| !a.is_empty())
                .map(|a| {
                    Algorithm::parse(a).ok_or_else(|| {
                        Error::Config(format!(
                            "{JWT_ALGORITHMS}: {a:?} is not supported (use HS256, HS384 or HS512)"
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            None => vec![Algorithm::HS512],
        };
        if algorithms.is_empty() {
            return Err(Error::Config(format!(
                "{JWT_ALGORITHMS}: the list is empty"
            )));
        }
        let verifier_key = match s.get(VERIFIER_KEY) {
            Some(k) if k.len() < 16 => {
                return Err(Error::Config(format!(
                    "{VERIFIER_KEY}: must be at least 16 bytes"
                )));
            }
            Some(k) => k.into_bytes(),
            // Derived from the JWT secret: identical on every replica, never stored.
            None => derive_key(jwt_secret.as_bytes(), b"hermes fast verifier v1"),
        };
        // Derived from the JWT secret unless set: identical on every replica, never stored.
        let token_passcode = s.get(TOKEN_PASSCODE).unwrap_or_else(|| {
            hex::encode(derive_key(
                jwt_secret.as_bytes(),
                b"hermes token passcode v1",
            ))
        });
        let token_check = match s.get(TOKEN_CHECK).as_deref() {
            None | Some("bcrypt") => TokenCheck::Bcrypt,
            Some("off") => TokenCheck::Off,
            Some(other) => {
                return Err(Error::Config(format!(
                    "{TOKEN_CHECK}: {other:?} must be bcrypt or off"
                )));
            }
        };
        let bcrypt_cost = num(s, BCRYPT_COST, 10u32)?;
        if !(4..=31).contains(&bcrypt_cost) {
            return Err(Error::Config(format!(
                "{BCRYPT_COST}: must be between 4 and 31"
            )));
        }
        if s.get(BCRYPT_NICE).is_some() {
            return Err(Error::Config(format!(
                "{BCRYPT_NICE} was replaced by {BCRYPT_PRIORITY}: `idle` (the default) or a nice value 0-19"
            )));
        }
        let bcrypt_priority = match s.get(BCRYPT_PRIORITY).as_deref().map(str::trim) {
            None | Some("idle") => BcryptPriority::Idle,
            Some(value) => match value.parse::<i32>() {
                Ok(nice) if (0..=19).contains(&nice) => BcryptPriority::Nice(nice),
                _ => {
                    return Err(Error::Config(format!(
                        "{BCRYPT_PRIORITY}: {value:?} must be `idle` or a nice value between 0 (no change) and 19"
                    )));
                }
            },
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Self {
            jwt_secret,
            algorithms,
            leeway: secs(s, JWT_LEEWAY, 30)?,
            verifier_key,
            token_check,
            token_ttl: positive_secs(s, TOKEN_TTL, 86_400)?,
            token_passcode,
            bcrypt_cost,
            bcrypt_workers: positive(s, BCRYPT_WORKERS, cpus.div_ceil(2))?,
            bcrypt_queue: positive(s, BCRYPT_QUEUE, 64)?,
            bcrypt_priority,
            cache_ttl: secs(s, AUTH_CACHE_TTL, 300)?,
            cache_capacity: num(s, AUTH_CACHE_CAPACITY, 100_000usize)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const SECRET: &str = "a-shared-secret-of-some-length";

    fn passcode(env: &[(&str, &str)]) -> String {
        let env: HashMap<&str, &str> = env.iter().copied().collect();
        AuthConfig::from_strings(&env, false)
            .map(|c| c.token_passcode)
            .unwrap_or_default()
    }

    /// Every replica issues the same token for (user, room): the passcode is the one set,
    /// else derived from the JWT secret they share, and never the secret itself.
    #[test]
    fn the_token_passcode_is_the_one_set_else_derived_from_the_jwt_secret() {
        let derived = passcode(&[(JWT_SECRET, SECRET)]);
        assert_eq!(derived.len(), 64);
        assert_ne!(derived, SECRET);
        assert_eq!(derived, passcode(&[(JWT_SECRET, SECRET)]));
        assert_ne!(
            derived,
            passcode(&[(JWT_SECRET, "another-shared-secret-entirely")])
        );
        assert_eq!(
            passcode(&[(JWT_SECRET, SECRET), (TOKEN_PASSCODE, "the-apps-passcode")]),
            "the-apps-passcode"
        );
    }
}
