//! The configuration reader: `HERMES_*` environment variables, optionally completed by a
//! file, and the parse helpers every owner of settings uses.
//!
//! Values are read through the [`Strings`] trait so tests pass a map and never touch the
//! process environment. Each component defines its own variables and settings type beside
//! its code (the gateway's in `hermes-gateway`, the consumer's in `hermes-consumer`, the
//! authorizer's in [`crate::auth::config`], the registry's in [`crate::registry::config`]);
//! this module keeps only the variables both binaries read. A bad value is an
//! [`Error::Config`] whose message names the variable, which the binaries print as one line
//! before exiting with status 64.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::router::DeliverTransport;

/// A source of configuration strings.
pub trait Strings {
    /// The value of `key`, if set. Empty values count as unset.
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment, completed by the `KEY=VALUE` file named in
/// `HERMES_CONFIG_FILE` (environment variables win over the file).
pub struct Env {
    file: HashMap<String, String>,
}

impl Env {
    /// Reads the environment and the optional config file.
    pub fn load() -> Result<Self> {
        let file = match std::env::var(CONFIG_FILE) {
            Ok(path) if !path.is_empty() => {
                let text = std::fs::read_to_string(&path).map_err(|error| {
                    Error::config_source(format!("{CONFIG_FILE}: cannot read {path}"), error)
                })?;
                parse_env_file(&text)
                    .map_err(|e| Error::Config(format!("{CONFIG_FILE}: {path}: {e}")))?
            }
            _ => HashMap::new(),
        };
        Ok(Self { file })
    }
}

impl Strings for Env {
    fn get(&self, key: &str) -> Option<String> {
        match std::env::var(key) {
            Ok(v) if !v.is_empty() => Some(v),
            _ => self.file.get(key).filter(|v| !v.is_empty()).cloned(),
        }
    }
}

impl Strings for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).filter(|v| !v.is_empty()).cloned()
    }
}

impl Strings for HashMap<&str, &str> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key)
            .filter(|v| !v.is_empty())
            .map(|v| (*v).to_owned())
    }
}

/// Strings from a map that remember every key asked for: which variables a configuration
/// reads.
#[cfg(any(test, feature = "test-support"))]
#[derive(Debug, Default)]
struct Recorded {
    values: HashMap<String, String>,
    asked: parking_lot::Mutex<std::collections::BTreeSet<String>>,
}

#[cfg(any(test, feature = "test-support"))]
impl Strings for Recorded {
    fn get(&self, key: &str) -> Option<String> {
        self.asked.lock().insert(key.to_owned());
        Strings::get(&self.values, key)
    }
}

/// Values a variable may be given by mistake (and a few it may rightly have).
#[cfg(any(test, feature = "test-support"))]
pub const MISTAKEN_VALUES: &[&str] = &[
    "0",
    "-1",
    "18446744073709551616",
    "1.5",
    "NaN",
    "true",
    "scylla",
    "memory",
    "remote",
    "sqs",
    "amqp",
    "stream",
    "http",
    "127.0.0.1:99999",
    "   ",
    ",",
    "a:b",
    "=",
    "é",
    "\u{0}",
    "notaurl",
    "abcdefghijklmnopqrstuvwxyz",
];

/// Checks a configuration reader against bad values: every variable `read` asks for (with
/// `base` set, or under a mistaken value of another variable, to any depth) is given each
/// of [`MISTAKEN_VALUES`] over `base`, one at a time.
/// Each refusal must name a `HERMES_` variable and hold no secret's value (the variables
/// in `secrets`, as set in `base` or as the mistaken value).
#[cfg(any(test, feature = "test-support"))]
pub fn check_mistaken_values(
    base: &[(&str, &str)],
    secrets: &[&str],
    read: impl Fn(&dyn Strings) -> Result<()>,
) -> MistakenValues {
    let with = |key: &str, value: &str| {
        let mut values: HashMap<String, String> = base
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        if !key.is_empty() {
            values.insert(key.to_owned(), value.to_owned());
        }
        Recorded {
            values,
            asked: Default::default(),
        }
    };
    // Each variable read is tried once with each value; the variables a try reads that were
    // not known yet (read only under another's value) are tried in turn, until none is new.
    let first = with("", "");
    let _ = read(&first);
    let mut variables = first.asked.into_inner();
    let mut untried: Vec<String> = variables.iter().cloned().collect();
    let (mut refused, mut violations) = (0, Vec::new());
    while let Some(key) = untried.pop() {
        for value in MISTAKEN_VALUES {
            let env = with(&key, value);
            let outcome = read(&env);
            for asked in std::mem::take(&mut *env.asked.lock()) {
                if variables.insert(asked.clone()) {
                    untried.push(asked);
                }
            }
            let Err(error) = outcome else { continue };
            refused += 1;
            let text = error.to_string();
            let leaks = env.values.iter().any(|(name, held)| {
                secrets.contains(&name.as_str())
                    && held.trim().chars().count() >= 8
                    && text.contains(held.trim())
            });
            if !text.contains("HERMES_") || leaks {
                violations.push(format!("{key}={value:?}: {text}"));
            }
        }
    }
    MistakenValues {
        variables: variables.into_iter().collect(),
        refused,
        violations,
    }
}

/// What [`check_mistaken_values`] tried and found.
#[cfg(any(test, feature = "test-support"))]
#[derive(Debug)]
pub struct MistakenValues {
    /// The variables read, sorted.
    pub variables: Vec<String>,
    /// How many of the tries were refused.
    pub refused: usize,
    /// Refusals that named no variable or held a secret, as `VARIABLE="value": error`.
    pub violations: Vec<String>,
}

#[cfg(any(test, feature = "test-support"))]
impl MistakenValues {
    /// Panics on any violation, or unless the check reached `variable` (one read only
    /// under another's value: the check got past the first layer) and saw at least
    /// `refusals` refusals (it tried bad values, not only good ones).
    pub fn assert_clean(&self, variable: &str, refusals: usize) {
        let v = &self.violations;
        assert!(v.is_empty(), "{}", v.join("\n"));
        assert!(self.variables.iter().any(|k| k == variable), "{self:?}");
        assert!(self.refused >= refusals, "{self:?}");
    }
}

/// Parses `KEY=VALUE` lines; `#` starts a comment line; values may be quoted.
fn parse_env_file(text: &str) -> std::result::Result<HashMap<String, String>, String> {
    let mut map = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected KEY=VALUE", n + 1));
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        map.insert(key.trim().to_owned(), value.to_owned());
    }
    Ok(map)
}

// The variables. Each is documented in docs/configuration.md.

// The variables both binaries read. Each is documented in docs/configuration.md.
pub const CONFIG_FILE: &str = "HERMES_CONFIG_FILE";
pub const STAGE: &str = "HERMES_STAGE";
pub const INTERNAL_SECRET: &str = "HERMES_INTERNAL_SECRET";
pub const DELIVER_TIMEOUT: &str = "HERMES_DELIVER_TIMEOUT_MS";
pub const DELIVER_TRANSPORT: &str = "HERMES_DELIVER_TRANSPORT";
pub const MAX_MESSAGE_BYTES: &str = "HERMES_MAX_MESSAGE_BYTES";

/// `HERMES_REGISTRY_TTL_SECONDS`: the TTL of a gateway's heartbeat row.
pub const REGISTRY_TTL: &str = "HERMES_REGISTRY_TTL_SECONDS";

/// `HERMES_REGISTRY_ROW_TTL_SECONDS`: the TTL of a gateway's other rows (connections, room
/// and user edges, its index), their safety net.
pub const REGISTRY_ROW_TTL: &str = "HERMES_REGISTRY_ROW_TTL_SECONDS";

/// `HERMES_REGISTRY_TTL_SECONDS` (default 30): gateways write their heartbeat row with it
/// (a gateway is dead once the row is gone); routers read it to know when an outage of the
/// registry was long enough for heartbeat rows to expire.
pub fn registry_ttl(s: &dyn Strings) -> Result<Duration> {
    positive_secs(s, REGISTRY_TTL, 30)
}

/// The default of `HERMES_REGISTRY_ROW_TTL_SECONDS`: 24 hours. Each row is written again
/// every half of it (`registry::refresh`): 2 writes (row and index entry) per row per 12
/// hours, so that even a socket with a room and a user of its own costs 0.5 writes an hour.
pub const DEFAULT_REGISTRY_ROW_TTL_SECS: u64 = 24 * 3600;

/// `HERMES_REGISTRY_ROW_TTL_SECONDS` (default [`DEFAULT_REGISTRY_ROW_TTL_SECS`]), at least
/// [`crate::registry::refresh::MIN_ROW_TTL_PER_TTL`] times `ttl` (the heartbeat row's).
pub fn registry_row_ttl(s: &dyn Strings, ttl: Duration) -> Result<Duration> {
    let row_ttl = positive_secs(s, REGISTRY_ROW_TTL, DEFAULT_REGISTRY_ROW_TTL_SECS)?;
    let min = ttl * crate::registry::refresh::MIN_ROW_TTL_PER_TTL;
    if row_ttl < min {
        return Err(Error::Config(format!(
            "{REGISTRY_ROW_TTL}: {} s must be at least {} x {REGISTRY_TTL} ({} s)",
            row_ttl.as_secs(),
            crate::registry::refresh::MIN_ROW_TTL_PER_TTL,
            ttl.as_secs()
        )));
    }
    Ok(row_ttl)
}

/// The default of `HERMES_MAX_MESSAGE_BYTES`: 128 KiB, API Gateway's message quota.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 128 * 1024;

/// `HERMES_STAGE` (default `production`).
pub fn stage(s: &dyn Strings) -> String {
    s.get(STAGE).unwrap_or_else(|| "production".into())
}

/// `HERMES_DELIVER_TIMEOUT_MS` (default 2,000): how long a delivery to another gateway may
/// take.
pub fn deliver_timeout(s: &dyn Strings) -> Result<Duration> {
    Ok(Duration::from_millis(
        num(s, DELIVER_TIMEOUT, 2_000u64)?.max(1),
    ))
}

/// `HERMES_MAX_MESSAGE_BYTES` (default [`DEFAULT_MAX_MESSAGE_BYTES`]): the largest message,
/// in bytes. The gateway bounds browsers' frames and `@connections` bodies with it, and
/// the consumer and `POST /v1/publish` a published message's `data` (its JSON text).
pub fn max_message_bytes(s: &dyn Strings) -> Result<usize> {
    positive(s, MAX_MESSAGE_BYTES, DEFAULT_MAX_MESSAGE_BYTES)
}

/// `HERMES_RETRY_DELAYS_MS`: the consumer's delays before each retry, comma-separated.
pub const RETRY_DELAYS: &str = "HERMES_RETRY_DELAYS_MS";
/// `HERMES_MAX_ATTEMPTS`: deliveries of one queue message before it is dead-lettered.
pub const MAX_ATTEMPTS: &str = "HERMES_MAX_ATTEMPTS";
/// `HERMES_SQS_VISIBILITY_TIMEOUT_SECONDS`: how long SQS hides a received message.
pub const SQS_VISIBILITY: &str = "HERMES_SQS_VISIBILITY_TIMEOUT_SECONDS";

/// How a queue hands a message over again: the consumer's retry policy and the SQS
/// visibility timeout. The consumer retries by it; a gateway derives from it how long it
/// must remember a delivered id so that no redelivery pushes twice ([`Self::window`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redelivery {
    /// Delay before each retry (the last one repeats).
    pub delays: Vec<Duration>,
    /// Deliveries of one message before it is dead-lettered.
    pub max_attempts: u32,
    /// SQS's visibility timeout: a message received by a consumer that then died is
    /// handed over again after it.
    pub sqs_visibility: Duration,
}

impl Redelivery {
    /// Reads `HERMES_RETRY_DELAYS_MS` (default 1000,5000,30000), `HERMES_MAX_ATTEMPTS`
    /// (default 5) and `HERMES_SQS_VISIBILITY_TIMEOUT_SECONDS` (default 30).
    pub fn from_strings(s: &dyn Strings) -> Result<Self> {
        let delays = match s.get(RETRY_DELAYS) {
            None => vec![
                Duration::from_secs(1),
                Duration::from_secs(5),
                Duration::from_secs(30),
            ],
            Some(list) => list
                .split(',')
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .ok()
                        .filter(|ms| *ms > 0)
                        .map(Duration::from_millis)
                        .ok_or_else(|| {
                            Error::Config(format!(
                                "{RETRY_DELAYS}: {v:?} is not a positive number of milliseconds"
                            ))
                        })
                })
                .collect::<Result<Vec<_>>>()?,
        };
        if delays.is_empty() || delays.len() > 10 {
            return Err(Error::Config(format!(
                "{RETRY_DELAYS}: give 1 to 10 delays"
            )));
        }
        let max_attempts: u32 = num(s, MAX_ATTEMPTS, 5u32)?;
        if max_attempts == 0 {
            return Err(Error::Config(format!(
                "{MAX_ATTEMPTS}: must be greater than 0"
            )));
        }
        Ok(Self {
            delays,
            max_attempts,
            sqs_visibility: positive_secs(s, SQS_VISIBILITY, 30)?,
        })
    }

    /// The delay before the retry that follows attempt `attempt` (1-based; the last delay
    /// repeats).
    pub fn delay(&self, attempt: u32) -> Duration {
        retry_delay(&self.delays, attempt)
    }

    /// The longest time between two hand-overs of one message to the gateways, with
    /// `attempt_time` the longest one attempt may take (its registry writes and its
    /// deliveries' deadlines): every retry delay, plus for every attempt its own time and
    /// an SQS visibility timeout (a consumer that died holding the message), plus a
    /// minute of margin for clocks and schedulers. With the defaults (1, 5 and 30 s
    /// delays, 5 attempts, a 30 s visibility) and 5 s attempts: 66 + 5 × 35 + 60 = 301 s.
    pub fn window(&self, attempt_time: Duration) -> Duration {
        let retries: Duration = (1..self.max_attempts).map(|a| self.delay(a)).sum();
        retries + (attempt_time + self.sqs_visibility) * self.max_attempts + Duration::from_secs(60)
    }
}

/// The delay before the retry that follows failed attempt `attempt` (1-based) under
/// `delays`: the last delay repeats; 1 s when there is none.
pub fn retry_delay(delays: &[Duration], attempt: u32) -> Duration {
    let at = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
    delays
        .get(at)
        .or_else(|| delays.last())
        .copied()
        .unwrap_or(Duration::from_secs(1))
}

/// The host name: `HOSTNAME`, else `/etc/hostname`, else `fallback`.
pub fn host_name(fallback: &str) -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| fallback.into())
}

/// A socket address like `0.0.0.0:8080`.
pub fn addr(s: &dyn Strings, key: &str, default: &str) -> Result<SocketAddr> {
    let value = s.get(key).unwrap_or_else(|| default.to_owned());
    value.parse().map_err(|_| {
        Error::Config(format!(
            "{key}: {value:?} is not an address like 0.0.0.0:8080"
        ))
    })
}

/// A required secret, generated (`len` characters) when `generate` and unset.
pub fn secret(s: &dyn Strings, key: &str, generate: bool, len: usize) -> Result<String> {
    match s.get(key) {
        Some(v) => Ok(v),
        None if generate => Ok(crate::ids::random_secret(len)),
        None => Err(Error::Config(format!("{key}: required"))),
    }
}

/// `HERMES_DELIVER_TRANSPORT`: `stream` (the default) or `http`.
pub fn deliver_transport(s: &dyn Strings) -> Result<DeliverTransport> {
    match s.get(DELIVER_TRANSPORT) {
        None => Ok(DeliverTransport::default()),
        Some(v) => DeliverTransport::parse(&v).ok_or_else(|| {
            Error::Config(format!("{DELIVER_TRANSPORT}: {v:?} must be stream or http"))
        }),
    }
}

/// A number, `default` when unset.
pub fn num<T: std::str::FromStr>(s: &dyn Strings, key: &str, default: T) -> Result<T> {
    match s.get(key) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| Error::Config(format!("{key}: {v:?} is not a valid number"))),
    }
}

/// A count greater than 0.
pub fn positive(s: &dyn Strings, key: &str, default: usize) -> Result<usize> {
    let v = num(s, key, default)?;
    if v == 0 {
        return Err(Error::Config(format!("{key}: must be greater than 0")));
    }
    Ok(v)
}

/// A finite number greater than 0.
pub fn positive_f64(s: &dyn Strings, key: &str, default: f64) -> Result<f64> {
    let v: f64 = num(s, key, default)?;
    if !(v.is_finite() && v > 0.0) {
        return Err(Error::Config(format!(
            "{key}: must be a number greater than 0"
        )));
    }
    Ok(v)
}

/// Whole seconds.
pub fn secs(s: &dyn Strings, key: &str, default: u64) -> Result<Duration> {
    Ok(Duration::from_secs(num(s, key, default)?))
}

/// Whole seconds, more than 0.
pub fn positive_secs(s: &dyn Strings, key: &str, default: u64) -> Result<Duration> {
    let d = secs(s, key, default)?;
    if d.is_zero() {
        return Err(Error::Config(format!("{key}: must be greater than 0")));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_lines_are_parsed() {
        let map = parse_env_file("# c\nexport HERMES_STAGE=dev\nHERMES_ADMIN_KEY=\"a b\"\n")
            .expect("valid file");
        assert_eq!(map.get("HERMES_STAGE").map(String::as_str), Some("dev"));
        assert_eq!(map.get("HERMES_ADMIN_KEY").map(String::as_str), Some("a b"));
        assert!(parse_env_file("novalue").is_err());
    }

    #[test]
    fn bad_numbers_name_the_variable() {
        let env = HashMap::from([("HERMES_X", "lots"), ("HERMES_Z", "0")]);
        let err = num::<u32>(&env, "HERMES_X", 1).expect_err("refused");
        assert_eq!(err.to_string(), "HERMES_X: \"lots\" is not a valid number");
        assert_eq!(num::<u32>(&env, "HERMES_Y", 7).expect("default"), 7);
        assert!(positive(&env, "HERMES_Z", 1).is_err());
        assert!(positive_secs(&env, "HERMES_Z", 1).is_err());
    }
}
