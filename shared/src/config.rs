//! Configuration: `HERMES_*` environment variables, optionally completed by a file.
//!
//! Values are read through the [`Strings`] trait so tests pass a map and never touch the
//! process environment. Every variable is a documented constant below; a bad value is an
//! [`Error::Config`] whose message names the variable, which the binaries print as one
//! line before exiting with status 64.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::auth::Algorithm;
use crate::error::{Error, Result};
use crate::gateway_client::DeliverTransport;

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
                    Error::Config(format!("{CONFIG_FILE}: cannot read {path}: {error}"))
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
pub const CONFIG_FILE: &str = "HERMES_CONFIG_FILE";
pub const STAGE: &str = "HERMES_STAGE";
pub const LISTEN: &str = "HERMES_LISTEN";
pub const INTERNAL_LISTEN: &str = "HERMES_INTERNAL_LISTEN";
pub const GATEWAY_ID: &str = "HERMES_GATEWAY_ID";
pub const INTERNAL_URL: &str = "HERMES_INTERNAL_URL";
pub const JWT_SECRET: &str = "HERMES_JWT_SECRET";
pub const JWT_ALGORITHMS: &str = "HERMES_JWT_ALGORITHMS";
pub const JWT_LEEWAY: &str = "HERMES_JWT_LEEWAY_SECONDS";
pub const ADMIN_KEY: &str = "HERMES_ADMIN_KEY";
pub const INTERNAL_SECRET: &str = "HERMES_INTERNAL_SECRET";
pub const VERIFIER_KEY: &str = "HERMES_VERIFIER_KEY";
pub const ALLOWED_ORIGINS: &str = "HERMES_ALLOWED_ORIGINS";
pub const REGISTRY: &str = "HERMES_REGISTRY";
pub const REGISTRY_URL: &str = "HERMES_REGISTRY_URL";
pub const REGISTRY_TTL: &str = "HERMES_REGISTRY_TTL_SECONDS";
pub const TOKEN_CHECK: &str = "HERMES_TOKEN_CHECK";
pub const TOKEN_TTL: &str = "HERMES_TOKEN_TTL_SECONDS";
pub const BCRYPT_COST: &str = "HERMES_BCRYPT_COST";
pub const BCRYPT_WORKERS: &str = "HERMES_BCRYPT_WORKERS";
pub const BCRYPT_QUEUE: &str = "HERMES_BCRYPT_QUEUE";
/// The former name of [`BCRYPT_PRIORITY`]; setting it is an error that names the new one.
pub const BCRYPT_NICE: &str = "HERMES_BCRYPT_NICE";
pub const BCRYPT_PRIORITY: &str = "HERMES_BCRYPT_PRIORITY";
pub const AUTH_CACHE_TTL: &str = "HERMES_AUTH_CACHE_TTL_SECONDS";
pub const AUTH_CACHE_CAPACITY: &str = "HERMES_AUTH_CACHE_CAPACITY";
pub const MAX_MESSAGE_BYTES: &str = "HERMES_MAX_MESSAGE_BYTES";
pub const IDLE_TIMEOUT: &str = "HERMES_IDLE_TIMEOUT_SECONDS";
pub const PING_INTERVAL: &str = "HERMES_PING_INTERVAL_SECONDS";
pub const PONG_TIMEOUT: &str = "HERMES_PONG_TIMEOUT_SECONDS";
pub const SEND_QUEUE: &str = "HERMES_SEND_QUEUE";
pub const CLIENT_RATE: &str = "HERMES_CLIENT_MESSAGES_PER_SECOND";
pub const CLIENT_BURST: &str = "HERMES_CLIENT_MESSAGES_BURST";
pub const DRAIN: &str = "HERMES_DRAIN_SECONDS";
pub const SHUTDOWN_GRACE: &str = "HERMES_SHUTDOWN_GRACE_SECONDS";
pub const DELIVER_TIMEOUT: &str = "HERMES_DELIVER_TIMEOUT_MS";
pub const DELIVER_TRANSPORT: &str = "HERMES_DELIVER_TRANSPORT";
pub const WORKERS: &str = "HERMES_WORKERS";
pub const LISTEN_BACKLOG: &str = "HERMES_LISTEN_BACKLOG";
pub const DEDUP_WINDOW: &str = "HERMES_DEDUP_WINDOW";
pub const SCYLLA_NODES: &str = "HERMES_SCYLLA_NODES";
pub const SCYLLA_KEYSPACE: &str = "HERMES_SCYLLA_KEYSPACE";
pub const SCYLLA_REPLICATION: &str = "HERMES_SCYLLA_REPLICATION";
pub const SCYLLA_CONSISTENCY: &str = "HERMES_SCYLLA_CONSISTENCY";
pub const SCYLLA_LOCAL_DC: &str = "HERMES_SCYLLA_LOCAL_DC";
pub const SCYLLA_USERNAME: &str = "HERMES_SCYLLA_USERNAME";
pub const SCYLLA_PASSWORD: &str = "HERMES_SCYLLA_PASSWORD";
pub const SCYLLA_TIMEOUT: &str = "HERMES_SCYLLA_TIMEOUT_MS";
pub const CONSUMER_LISTEN: &str = "HERMES_CONSUMER_LISTEN";
pub const SOURCE: &str = "HERMES_SOURCE";
pub const AMQP_URL: &str = "HERMES_AMQP_URL";
pub const AMQP_QUEUE: &str = "HERMES_AMQP_QUEUE";
pub const AMQP_PREFETCH: &str = "HERMES_AMQP_PREFETCH";
pub const SQS_QUEUE_URL: &str = "HERMES_SQS_QUEUE_URL";
pub const SQS_DLQ_URL: &str = "HERMES_SQS_DEAD_LETTER_QUEUE_URL";
pub const SQS_WAIT: &str = "HERMES_SQS_WAIT_SECONDS";
pub const SQS_VISIBILITY: &str = "HERMES_SQS_VISIBILITY_TIMEOUT_SECONDS";
pub const MAX_ATTEMPTS: &str = "HERMES_MAX_ATTEMPTS";
pub const RETRY_DELAYS: &str = "HERMES_RETRY_DELAYS_MS";
pub const CONCURRENCY: &str = "HERMES_CONSUMER_CONCURRENCY";
pub const CONSUMER_THREADS: &str = "HERMES_CONSUMER_THREADS";
pub const ROUTE_TO_ALL_MAX_GATEWAYS: &str = "HERMES_ROUTE_TO_ALL_MAX_GATEWAYS";
pub const KUBE_GATEWAY_SERVICE: &str = "HERMES_KUBE_GATEWAY_SERVICE";
pub const KUBE_NAMESPACE: &str = "HERMES_KUBE_NAMESPACE";
pub const KUBE_IDENTITY: &str = "HERMES_KUBE_IDENTITY";
pub const KUBE_LEASE_NAME: &str = "HERMES_KUBE_LEASE_NAME";
pub const KUBE_GATEWAY_SELECTOR: &str = "HERMES_KUBE_GATEWAY_SELECTOR";
pub const KUBE_GATEWAY_PORT: &str = "HERMES_KUBE_GATEWAY_PORT";
pub const KUBE_LEASE_DURATION: &str = "HERMES_KUBE_LEASE_SECONDS";
pub const KUBE_RENEW_INTERVAL: &str = "HERMES_KUBE_RENEW_SECONDS";
pub const KUBE_REAP_INTERVAL: &str = "HERMES_KUBE_REAP_INTERVAL_SECONDS";

/// Which registry implementation the process uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryKind {
    /// In-process memory (standalone mode, unit tests).
    Memory,
    /// The embedded registry of another Hermes process, reached over its internal API
    /// (development and tests without a database).
    Remote { url: String },
    /// ScyllaDB (or any CQL server): production.
    Scylla(ScyllaConfig),
}

/// CQL consistency levels accepted by `HERMES_SCYLLA_CONSISTENCY`.
pub const CONSISTENCY_LEVELS: &[&str] = &[
    "ONE",
    "TWO",
    "THREE",
    "QUORUM",
    "ALL",
    "LOCAL_QUORUM",
    "EACH_QUORUM",
    "LOCAL_ONE",
];

/// How to reach ScyllaDB and how to use it.
#[derive(Clone, PartialEq, Eq)]
pub struct ScyllaConfig {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// Keyspace, default `hermes_<stage>` (non-alphanumerics become `_`).
    pub keyspace: String,
    /// The CQL replication map used when the keyspace is created.
    pub replication: String,
    /// One of [`CONSISTENCY_LEVELS`], for reads and writes.
    pub consistency: String,
    /// Datacenter to prefer (DC-aware, token-aware load balancing).
    pub local_dc: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Per-request timeout.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for ScyllaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaConfig")
            .field("nodes", &self.nodes)
            .field("keyspace", &self.keyspace)
            .field("replication", &self.replication)
            .field("consistency", &self.consistency)
            .field("local_dc", &self.local_dc)
            .field("username", &self.username)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// Reads `HERMES_REGISTRY` and what the chosen registry needs.
pub fn registry_kind(s: &dyn Strings, stage: &str) -> Result<RegistryKind> {
    match s.get(REGISTRY).as_deref() {
        None | Some("memory") => Ok(RegistryKind::Memory),
        Some("remote") => match s.get(REGISTRY_URL) {
            Some(url) => Ok(RegistryKind::Remote {
                url: url.trim_end_matches('/').to_owned(),
            }),
            None => Err(Error::Config(format!(
                "{REGISTRY_URL}: required when {REGISTRY}=remote"
            ))),
        },
        Some("scylla") => {
            let nodes: Vec<String> = s
                .get(SCYLLA_NODES)
                .unwrap_or_else(|| "127.0.0.1:9042".into())
                .split(',')
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
                .collect();
            if nodes.is_empty() {
                return Err(Error::Config(format!("{SCYLLA_NODES}: the list is empty")));
            }
            for n in &nodes {
                if n.rsplit_once(':')
                    .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
                {
                    return Err(Error::Config(format!(
                        "{SCYLLA_NODES}: {n:?} must be host:port"
                    )));
                }
            }
            let keyspace = s.get(SCYLLA_KEYSPACE).unwrap_or_else(|| {
                let stage: String = stage
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() {
                            c.to_ascii_lowercase()
                        } else {
                            '_'
                        }
                    })
                    .collect();
                format!("hermes_{stage}")
            });
            if keyspace.is_empty()
                || keyspace.len() > 48
                || !keyspace
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
                || !keyspace.starts_with(|c: char| c.is_ascii_alphabetic())
            {
                return Err(Error::Config(format!(
                    "{SCYLLA_KEYSPACE}: {keyspace:?} must be a letter then up to 47 letters, digits or '_'"
                )));
            }
            let replication = s
                .get(SCYLLA_REPLICATION)
                .unwrap_or_else(|| "{'class': 'SimpleStrategy', 'replication_factor': 1}".into());
            if !(replication.trim_start().starts_with('{') && replication.trim_end().ends_with('}'))
                || replication.contains(';')
            {
                return Err(Error::Config(format!(
                    "{SCYLLA_REPLICATION}: must be a CQL map like {{'class': 'NetworkTopologyStrategy', 'dc1': 3}}"
                )));
            }
            let consistency = s
                .get(SCYLLA_CONSISTENCY)
                .unwrap_or_else(|| "LOCAL_QUORUM".into())
                .to_ascii_uppercase();
            if !CONSISTENCY_LEVELS.contains(&consistency.as_str()) {
                return Err(Error::Config(format!(
                    "{SCYLLA_CONSISTENCY}: {consistency:?} must be one of {}",
                    CONSISTENCY_LEVELS.join(", ")
                )));
            }
            let username = s.get(SCYLLA_USERNAME);
            let password = s.get(SCYLLA_PASSWORD);
            if username.is_some() != password.is_some() {
                return Err(Error::Config(format!(
                    "{SCYLLA_USERNAME} and {SCYLLA_PASSWORD}: set both or neither"
                )));
            }
            Ok(RegistryKind::Scylla(ScyllaConfig {
                nodes,
                keyspace,
                replication,
                consistency,
                local_dc: s.get(SCYLLA_LOCAL_DC),
                username,
                password,
                request_timeout: Duration::from_millis(num(s, SCYLLA_TIMEOUT, 2_000u64)?.max(1)),
            }))
        }
        Some(other) => Err(Error::Config(format!(
            "{REGISTRY}: {other:?} must be memory, remote or scylla"
        ))),
    }
}

/// The second-layer token check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    /// `bcrypt(token)` must be stored for (user, room) and match.
    Bcrypt,
    /// The JWT alone decides.
    Off,
}

/// Whether browsers from an Origin may connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPolicy {
    Any,
    List(Vec<String>),
}

impl OriginPolicy {
    /// True when a request with this `Origin` header (if any) may upgrade.
    /// Requests without an Origin (non-browser clients) are allowed.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        match (self, origin) {
            (OriginPolicy::Any, _) | (_, None) => true,
            (OriginPolicy::List(list), Some(origin)) => list
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(origin)),
        }
    }
}

/// How the gateway process was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One replica among many: secrets are required.
    Serve,
    /// Everything in one process with generated secrets and the demo page.
    Standalone,
}

/// The gateway's validated configuration.
#[derive(Clone)]
pub struct GatewayConfig {
    pub mode: Mode,
    pub stage: String,
    pub listen: SocketAddr,
    pub internal_listen: SocketAddr,
    pub gateway_id: String,
    /// Set explicitly, or derived from the bound internal address at start.
    pub internal_url: Option<String>,
    pub auth: AuthConfig,
    pub admin_key: String,
    /// True when the admin key was generated (standalone prints it once).
    pub admin_key_generated: bool,
    pub internal_secret: String,
    pub allowed_origins: OriginPolicy,
    pub registry: RegistryKind,
    pub registry_ttl: Duration,
    pub limits: SocketLimits,
    pub drain: Duration,
    pub shutdown_grace: Duration,
    pub deliver_timeout: Duration,
    /// How this gateway's router reaches other gateways.
    pub deliver_transport: DeliverTransport,
    pub workers: usize,
    /// Pending connections the kernel queues per listener before it drops SYNs (capped by
    /// net.core.somaxconn); a reconnect storm needs more than the usual 128.
    pub listen_backlog: usize,
    pub dedup_window: usize,
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets are never printed.
        f.debug_struct("GatewayConfig")
            .field("mode", &self.mode)
            .field("stage", &self.stage)
            .field("listen", &self.listen)
            .field("internal_listen", &self.internal_listen)
            .field("gateway_id", &self.gateway_id)
            .field("internal_url", &self.internal_url)
            .field("registry", &self.registry)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
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
    pub bcrypt_cost: u32,
    pub bcrypt_workers: usize,
    pub bcrypt_queue: usize,
    /// How the bcrypt threads yield to the sockets' threads under contention, so that a
    /// flood of first connects does not slow deliveries down.
    pub bcrypt_priority: crate::auth::BcryptPriority,
    pub cache_ttl: Duration,
    pub cache_capacity: usize,
}

/// Per-socket limits.
#[derive(Debug, Clone)]
pub struct SocketLimits {
    pub max_message_bytes: usize,
    pub idle_timeout: Duration,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub send_queue: usize,
    pub client_rate: f64,
    pub client_burst: f64,
}

impl GatewayConfig {
    /// Reads and validates the configuration.
    pub fn from_strings(s: &dyn Strings, mode: Mode) -> Result<Self> {
        let standalone = mode == Mode::Standalone;
        let stage = s.get(STAGE).unwrap_or_else(|| "production".into());
        if stage.is_empty()
            || !stage
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(Error::Config(format!(
                "{STAGE}: {stage:?} must be letters, digits, '-' or '_'"
            )));
        }
        let default_listen = if standalone {
            "127.0.0.1:8080"
        } else {
            "0.0.0.0:8080"
        };
        let listen = addr(s, LISTEN, default_listen)?;
        let internal_listen = addr(s, INTERNAL_LISTEN, "127.0.0.1:8081")?;
        let gateway_id = match s.get(GATEWAY_ID) {
            Some(id) => id,
            None => host_name("hermes-gateway"),
        };
        if gateway_id.is_empty() || gateway_id.len() > 253 {
            return Err(Error::Config(format!(
                "{GATEWAY_ID}: must be 1 to 253 characters"
            )));
        }
        let internal_url = match s.get(INTERNAL_URL) {
            Some(u) => {
                let parsed = url::Url::parse(&u).map_err(|e| {
                    Error::Config(format!("{INTERNAL_URL}: {u:?} is not a URL: {e}"))
                })?;
                if parsed.scheme() != "http" && parsed.scheme() != "https" {
                    return Err(Error::Config(format!(
                        "{INTERNAL_URL}: must be http:// or https://"
                    )));
                }
                Some(u.trim_end_matches('/').to_owned())
            }
            None => None,
        };

        let jwt_secret = secret(s, JWT_SECRET, standalone, 48)?;
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
            None => crate::auth::derive_key(jwt_secret.as_bytes(), b"hermes fast verifier v1"),
        };
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
            None | Some("idle") => crate::auth::BcryptPriority::Idle,
            Some(value) => match value.parse::<i32>() {
                Ok(nice) if (0..=19).contains(&nice) => crate::auth::BcryptPriority::Nice(nice),
                _ => {
                    return Err(Error::Config(format!(
                        "{BCRYPT_PRIORITY}: {value:?} must be `idle` or a nice value between 0 (no change) and 19"
                    )));
                }
            },
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let auth = AuthConfig {
            jwt_secret,
            algorithms,
            leeway: secs(s, JWT_LEEWAY, 30)?,
            verifier_key,
            token_check,
            token_ttl: positive_secs(s, TOKEN_TTL, 86_400)?,
            bcrypt_cost,
            bcrypt_workers: positive(s, BCRYPT_WORKERS, cpus.div_ceil(2))?,
            bcrypt_queue: positive(s, BCRYPT_QUEUE, 64)?,
            bcrypt_priority,
            cache_ttl: secs(s, AUTH_CACHE_TTL, 300)?,
            cache_capacity: num(s, AUTH_CACHE_CAPACITY, 100_000usize)?,
        };

        let (admin_key, admin_key_generated) = match s.get(ADMIN_KEY) {
            Some(k) => (k, false),
            None if standalone => (crate::ids::random_secret(24), true),
            None => return Err(Error::Config(format!("{ADMIN_KEY}: required"))),
        };
        if admin_key.len() < 16 {
            return Err(Error::Config(format!(
                "{ADMIN_KEY}: must be at least 16 characters"
            )));
        }
        let internal_secret = secret(s, INTERNAL_SECRET, standalone, 32)?;
        if internal_secret.len() < 16 {
            return Err(Error::Config(format!(
                "{INTERNAL_SECRET}: must be at least 16 characters"
            )));
        }

        let allowed_origins = match s.get(ALLOWED_ORIGINS) {
            None => OriginPolicy::Any,
            Some(list) if list.trim() == "*" => OriginPolicy::Any,
            Some(list) => {
                let origins: Vec<String> = list
                    .split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_owned())
                    .filter(|o| !o.is_empty())
                    .collect();
                for o in &origins {
                    if !(o.starts_with("http://") || o.starts_with("https://")) {
                        return Err(Error::Config(format!(
                            "{ALLOWED_ORIGINS}: {o:?} must look like https://app.example.com"
                        )));
                    }
                }
                OriginPolicy::List(origins)
            }
        };

        let registry = registry_kind(s, &stage)?;

        let limits = SocketLimits {
            max_message_bytes: positive(s, MAX_MESSAGE_BYTES, 128 * 1024)?,
            idle_timeout: positive_secs(s, IDLE_TIMEOUT, 600)?,
            ping_interval: positive_secs(s, PING_INTERVAL, 30)?,
            pong_timeout: positive_secs(s, PONG_TIMEOUT, 60)?,
            send_queue: positive(s, SEND_QUEUE, 256)?,
            client_rate: positive_f64(s, CLIENT_RATE, 20.0)?,
            client_burst: positive_f64(s, CLIENT_BURST, 40.0)?,
        };

        Ok(Self {
            mode,
            stage,
            listen,
            internal_listen,
            gateway_id,
            internal_url,
            auth,
            admin_key,
            admin_key_generated,
            internal_secret,
            allowed_origins,
            registry,
            registry_ttl: positive_secs(s, REGISTRY_TTL, 30)?,
            limits,
            drain: secs(s, DRAIN, 10)?,
            shutdown_grace: positive_secs(s, SHUTDOWN_GRACE, 25)?,
            deliver_timeout: Duration::from_millis(num(s, DELIVER_TIMEOUT, 2_000u64)?.max(1)),
            deliver_transport: deliver_transport(s)?,
            workers: positive(s, WORKERS, cpus)?,
            listen_backlog: positive(s, LISTEN_BACKLOG, 4096)?.min(i32::MAX as usize),
            dedup_window: num(s, DEDUP_WINDOW, 4096usize)?,
        })
    }
}

/// What an AMQP URL (`amqp[s]://user:password@host:port/vhost?heartbeat=N`) says, decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpEndpoint {
    /// `amqps://`: TLS, the server's certificate checked against the system's roots.
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub username: String,
    /// Never logged.
    pub password: String,
    pub vhost: String,
    /// Seconds; `None`: the client's default.
    pub heartbeat: Option<u16>,
}

impl std::fmt::Debug for AmqpEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpEndpoint")
            .field("tls", &self.tls)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("vhost", &self.vhost)
            .field("heartbeat", &self.heartbeat)
            .finish_non_exhaustive()
    }
}

impl AmqpEndpoint {
    /// Reads an AMQP URL as RabbitMQ's URI spec does: user and password default to
    /// `guest`, the port to 5672 (5671 for `amqps`), and the path is the vhost,
    /// percent-decoded (`%2f` is `/`); no path, or an empty one, is the default vhost `/`.
    /// The only query parameter read is `heartbeat`. The error never repeats the URL (it
    /// may hold a password).
    pub fn parse(url: &str) -> std::result::Result<Self, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("not a valid URL ({e})"))?;
        let (tls, default_port) = match parsed.scheme() {
            "amqp" => (false, 5672),
            "amqps" => (true, 5671),
            _ => return Err("must start with amqp:// or amqps://".into()),
        };
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("has no host")?
            .trim_matches(['[', ']'])
            .to_owned();
        let decode = |part: &str, what: &str| {
            percent_encoding::percent_decode_str(part)
                .decode_utf8()
                .map(|v| v.into_owned())
                .map_err(|_| format!("its {what} is not UTF-8 once percent-decoded"))
        };
        let username = match parsed.username() {
            "" => "guest".to_owned(),
            u => decode(u, "user name")?,
        };
        let password = match parsed.password() {
            None => "guest".to_owned(),
            Some(p) => decode(p, "password")?,
        };
        let vhost = match parsed.path().strip_prefix('/').unwrap_or("") {
            "" => "/".to_owned(),
            v => decode(v, "vhost")?,
        };
        let heartbeat = parsed
            .query_pairs()
            .find(|(k, _)| k == "heartbeat")
            .map(|(_, v)| {
                v.parse::<u16>()
                    .map_err(|_| format!("heartbeat={v} is not a number of seconds"))
            })
            .transpose()?;
        Ok(Self {
            tls,
            host,
            port: parsed.port().unwrap_or(default_port),
            username,
            password,
            vhost,
            heartbeat,
        })
    }
}

/// Where the consumer pulls messages from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceConfig {
    /// RabbitMQ.
    Amqp {
        /// `amqp://user:pass@host:5672/vhost` (never logged: it may hold a password).
        url: String,
        /// The queue (declared durable if absent).
        queue: String,
        /// Unacknowledged messages in flight (basic.qos).
        prefetch: u16,
    },
    /// Amazon SQS (or a compatible server through `AWS_ENDPOINT_URL_SQS`).
    Sqs {
        queue_url: String,
        /// Where invalid messages and exhausted retries go, with the reason; when unset,
        /// the queue's redrive policy is the only dead-letter path.
        dead_letter_queue_url: Option<String>,
        /// Long-polling wait (0–20 s).
        wait: Duration,
        /// How long a received message stays invisible; extended while routing is slow.
        visibility: Duration,
    },
}

/// The consumer's validated configuration.
#[derive(Clone)]
pub struct ConsumerConfig {
    pub stage: String,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
    pub registry: RegistryKind,
    pub internal_secret: String,
    pub deliver_timeout: Duration,
    /// How the router reaches the gateways.
    pub deliver_transport: DeliverTransport,
    pub source: SourceConfig,
    /// Deliveries of one message before it is dead-lettered.
    pub max_attempts: u32,
    /// Delay before each retry (the last one repeats).
    pub retry_delays: Vec<Duration>,
    /// Messages routed at the same time.
    pub concurrency: usize,
    /// Runtime threads. 1: everything on one thread, so a message changes threads only
    /// between the broker client's reader and the router; more: a work-stealing runtime
    /// with this many workers, for more than one core's worth of routing per replica.
    pub threads: usize,
    /// Room and user messages go to every live gateway, without a registry lookup, while
    /// there are at most this many (0: always look up).
    pub route_to_all_max_gateways: usize,
    /// Kubernetes awareness (EndpointSlice view, Lease, reaper), when configured.
    pub kube: Option<KubeConfig>,
}

/// The consumer's Kubernetes awareness. On when `HERMES_KUBE_GATEWAY_SERVICE` is set; the
/// API server is found the usual way (in-cluster service account, else `KUBECONFIG`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeConfig {
    /// The gateways' internal Service: its EndpointSlices carry
    /// `kubernetes.io/service-name=<this>`.
    pub gateway_service: String,
    /// Namespace of the gateways and the Lease; `None`: the client's default (in-cluster:
    /// the pod's own namespace).
    pub namespace: Option<String>,
    /// This consumer's name in the Lease (`holderIdentity`): the pod name in the chart.
    pub identity: String,
    /// The Lease whose holder runs the reaper.
    pub lease_name: String,
    /// Label selector of the gateway pods (`app.kubernetes.io/component=gateway,...`);
    /// `None`: every pod of the namespace is watched.
    pub gateway_selector: Option<String>,
    /// Name of the internal port in the EndpointSlices (`internal`).
    pub gateway_port: String,
    /// How long a Lease holder is trusted without renewing (`leaseDurationSeconds`).
    pub lease_duration: Duration,
    /// How often the holder renews and the others try to acquire.
    pub renew_interval: Duration,
    /// How often the leader compares the registry's gateways with the pods.
    pub reap_interval: Duration,
}

impl KubeConfig {
    /// `None` unless `HERMES_KUBE_GATEWAY_SERVICE` is set.
    pub fn from_strings(s: &dyn Strings) -> Result<Option<Self>> {
        let Some(gateway_service) = s.get(KUBE_GATEWAY_SERVICE).filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let lease_duration = positive_secs(s, KUBE_LEASE_DURATION, 15)?;
        let renew_interval = positive_secs(s, KUBE_RENEW_INTERVAL, 5)?;
        if renew_interval >= lease_duration {
            return Err(Error::Config(format!(
                "{KUBE_RENEW_INTERVAL}: must be shorter than {KUBE_LEASE_DURATION} ({} s), or \
                 the Lease expires between two renewals",
                lease_duration.as_secs()
            )));
        }
        let identity = s
            .get(KUBE_IDENTITY)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| {
                format!(
                    "{}-{}",
                    host_name("hermes-consumer"),
                    crate::ids::random_secret(6)
                )
            });
        Ok(Some(Self {
            gateway_service,
            namespace: s.get(KUBE_NAMESPACE).filter(|v| !v.is_empty()),
            identity,
            lease_name: s
                .get(KUBE_LEASE_NAME)
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "hermes-reaper".into()),
            gateway_selector: s.get(KUBE_GATEWAY_SELECTOR).filter(|v| !v.is_empty()),
            gateway_port: s
                .get(KUBE_GATEWAY_PORT)
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "internal".into()),
            lease_duration,
            renew_interval,
            reap_interval: positive_secs(s, KUBE_REAP_INTERVAL, 30)?,
        }))
    }
}

impl std::fmt::Debug for ConsumerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.source {
            SourceConfig::Amqp {
                queue, prefetch, ..
            } => format!("amqp queue={queue} prefetch={prefetch}"),
            SourceConfig::Sqs { queue_url, .. } => format!("sqs {queue_url}"),
        };
        f.debug_struct("ConsumerConfig")
            .field("stage", &self.stage)
            .field("listen", &self.listen)
            .field("registry", &self.registry)
            .field("source", &source)
            .field("max_attempts", &self.max_attempts)
            .field("retry_delays", &self.retry_delays)
            .finish_non_exhaustive()
    }
}

impl ConsumerConfig {
    /// Reads and validates the consumer's configuration.
    pub fn from_strings(s: &dyn Strings) -> Result<Self> {
        let stage = s.get(STAGE).unwrap_or_else(|| "production".into());
        let source = match s.get(SOURCE).as_deref() {
            None | Some("amqp") => {
                let url = s
                    .get(AMQP_URL)
                    .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
                if let Err(why) = AmqpEndpoint::parse(&url) {
                    return Err(Error::Config(format!("{AMQP_URL}: {why}")));
                }
                let queue = s
                    .get(AMQP_QUEUE)
                    .unwrap_or_else(|| "hermes-messageQueue".into());
                if queue.len() > 200 {
                    return Err(Error::Config(format!("{AMQP_QUEUE}: at most 200 bytes")));
                }
                let prefetch: u16 = num(s, AMQP_PREFETCH, 64u16)?;
                if prefetch == 0 {
                    return Err(Error::Config(format!(
                        "{AMQP_PREFETCH}: must be greater than 0"
                    )));
                }
                SourceConfig::Amqp {
                    url,
                    queue,
                    prefetch,
                }
            }
            Some("sqs") => {
                let queue_url = s.get(SQS_QUEUE_URL).ok_or_else(|| {
                    Error::Config(format!("{SQS_QUEUE_URL}: required when {SOURCE}=sqs"))
                })?;
                let wait = secs(s, SQS_WAIT, 20)?;
                if wait > Duration::from_secs(20) {
                    return Err(Error::Config(format!("{SQS_WAIT}: at most 20")));
                }
                SourceConfig::Sqs {
                    queue_url,
                    dead_letter_queue_url: s.get(SQS_DLQ_URL),
                    wait,
                    visibility: positive_secs(s, SQS_VISIBILITY, 30)?,
                }
            }
            Some(other) => {
                return Err(Error::Config(format!(
                    "{SOURCE}: {other:?} must be amqp or sqs"
                )));
            }
        };
        let retry_delays = match s.get(RETRY_DELAYS) {
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
        if retry_delays.is_empty() || retry_delays.len() > 10 {
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
        let internal_secret = s
            .get(INTERNAL_SECRET)
            .ok_or_else(|| Error::Config(format!("{INTERNAL_SECRET}: required")))?;
        Ok(Self {
            listen: addr(s, CONSUMER_LISTEN, "127.0.0.1:8082")?,
            registry: registry_kind(s, &stage)?,
            stage,
            internal_secret,
            deliver_timeout: Duration::from_millis(num(s, DELIVER_TIMEOUT, 2_000u64)?.max(1)),
            deliver_transport: deliver_transport(s)?,
            source,
            max_attempts,
            retry_delays,
            concurrency: positive(s, CONCURRENCY, 64)?,
            threads: positive(s, CONSUMER_THREADS, 1)?,
            route_to_all_max_gateways: num(s, ROUTE_TO_ALL_MAX_GATEWAYS, 2usize)?,
            kube: KubeConfig::from_strings(s)?,
        })
    }
}

/// The host name: `HOSTNAME`, else `/etc/hostname`, else `fallback`.
fn host_name(fallback: &str) -> String {
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

fn addr(s: &dyn Strings, key: &str, default: &str) -> Result<SocketAddr> {
    let value = s.get(key).unwrap_or_else(|| default.to_owned());
    value.parse().map_err(|_| {
        Error::Config(format!(
            "{key}: {value:?} is not an address like 0.0.0.0:8080"
        ))
    })
}

fn secret(s: &dyn Strings, key: &str, generate: bool, len: usize) -> Result<String> {
    match s.get(key) {
        Some(v) => Ok(v),
        None if generate => Ok(crate::ids::random_secret(len)),
        None => Err(Error::Config(format!("{key}: required"))),
    }
}

/// `HERMES_DELIVER_TRANSPORT`: `stream` (the default) or `http`.
fn deliver_transport(s: &dyn Strings) -> Result<DeliverTransport> {
    match s.get(DELIVER_TRANSPORT) {
        None => Ok(DeliverTransport::default()),
        Some(v) => DeliverTransport::parse(&v).ok_or_else(|| {
            Error::Config(format!("{DELIVER_TRANSPORT}: {v:?} must be stream or http"))
        }),
    }
}

fn num<T: std::str::FromStr>(s: &dyn Strings, key: &str, default: T) -> Result<T> {
    match s.get(key) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| Error::Config(format!("{key}: {v:?} is not a valid number"))),
    }
}

fn positive(s: &dyn Strings, key: &str, default: usize) -> Result<usize> {
    let v = num(s, key, default)?;
    if v == 0 {
        return Err(Error::Config(format!("{key}: must be greater than 0")));
    }
    Ok(v)
}

fn positive_f64(s: &dyn Strings, key: &str, default: f64) -> Result<f64> {
    let v: f64 = num(s, key, default)?;
    if !(v.is_finite() && v > 0.0) {
        return Err(Error::Config(format!(
            "{key}: must be a number greater than 0"
        )));
    }
    Ok(v)
}

fn secs(s: &dyn Strings, key: &str, default: u64) -> Result<Duration> {
    Ok(Duration::from_secs(num(s, key, default)?))
}

fn positive_secs(s: &dyn Strings, key: &str, default: u64) -> Result<Duration> {
    let d = secs(s, key, default)?;
    if d.is_zero() {
        return Err(Error::Config(format!("{key}: must be greater than 0")));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_env() -> HashMap<&'static str, &'static str> {
        HashMap::from([
            (JWT_SECRET, "0123456789abcdef0123456789abcdef"),
            (ADMIN_KEY, "admin-key-0123456789"),
            (INTERNAL_SECRET, "internal-secret-0123456789"),
        ])
    }

    #[test]
    fn serve_mode_requires_secrets() {
        let err = GatewayConfig::from_strings(&HashMap::<&str, &str>::new(), Mode::Serve)
            .err()
            .map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("HERMES_JWT_SECRET: required"));
    }

    #[test]
    fn standalone_generates_secrets_and_binds_loopback() {
        let c = GatewayConfig::from_strings(&HashMap::<&str, &str>::new(), Mode::Standalone)
            .expect("standalone needs no configuration");
        assert!(c.admin_key_generated);
        assert_eq!(c.listen, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(c.stage, "production");
        assert_eq!(c.auth.algorithms, vec![Algorithm::HS512]);
        assert_eq!(c.auth.bcrypt_priority, crate::auth::BcryptPriority::Idle);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let cases = [
            (MAX_MESSAGE_BYTES, "lots", "HERMES_MAX_MESSAGE_BYTES"),
            (JWT_ALGORITHMS, "none", "HERMES_JWT_ALGORITHMS"),
            (JWT_ALGORITHMS, "RS256", "HERMES_JWT_ALGORITHMS"),
            (LISTEN, "8080", "HERMES_LISTEN"),
            (STAGE, "a/b", "HERMES_STAGE"),
            (TOKEN_CHECK, "maybe", "HERMES_TOKEN_CHECK"),
            (ALLOWED_ORIGINS, "example.com", "HERMES_ALLOWED_ORIGINS"),
            (REGISTRY, "redis", "HERMES_REGISTRY"),
            (REGISTRY, "remote", "HERMES_REGISTRY_URL"),
            (SEND_QUEUE, "0", "HERMES_SEND_QUEUE"),
            (BCRYPT_PRIORITY, "20", "HERMES_BCRYPT_PRIORITY"),
            (BCRYPT_PRIORITY, "low", "HERMES_BCRYPT_PRIORITY"),
            (DELIVER_TRANSPORT, "grpc", "HERMES_DELIVER_TRANSPORT"),
            (
                BCRYPT_NICE,
                "10",
                "HERMES_BCRYPT_NICE was replaced by HERMES_BCRYPT_PRIORITY",
            ),
        ];
        for (key, value, named) in cases {
            let mut env = serve_env();
            env.insert(key, value);
            let err = GatewayConfig::from_strings(&env, Mode::Serve)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.starts_with(named), "{key}={value}: {err}");
        }
    }

    #[test]
    fn origins_are_matched_exactly_and_absent_origin_is_allowed() {
        let mut env = serve_env();
        env.insert(
            ALLOWED_ORIGINS,
            "https://app.example.com, https://admin.example.com/",
        );
        let c = GatewayConfig::from_strings(&env, Mode::Serve).expect("valid");
        assert!(c.allowed_origins.allows(Some("https://admin.example.com")));
        assert!(!c.allowed_origins.allows(Some("https://evil.example.com")));
        assert!(c.allowed_origins.allows(None));
    }

    #[test]
    fn scylla_registry_defaults_to_a_keyspace_per_stage() {
        let mut env = serve_env();
        env.insert(REGISTRY, "scylla");
        env.insert(STAGE, "blue-green");
        let c = GatewayConfig::from_strings(&env, Mode::Serve).expect("valid");
        let RegistryKind::Scylla(sc) = c.registry else {
            panic!("scylla expected")
        };
        assert_eq!(sc.keyspace, "hermes_blue_green");
        assert_eq!(sc.nodes, vec!["127.0.0.1:9042".to_owned()]);
        assert_eq!(sc.consistency, "LOCAL_QUORUM");
        for (key, value) in [
            (SCYLLA_NODES, "nohost"),
            (SCYLLA_CONSISTENCY, "SOME"),
            (SCYLLA_KEYSPACE, "9lives"),
            (SCYLLA_REPLICATION, "{'class': 'x'}; DROP TABLE t"),
            (SCYLLA_USERNAME, "only-user"),
        ] {
            let mut env = env.clone();
            env.insert(key, value);
            let err = GatewayConfig::from_strings(&env, Mode::Serve)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(key), "{key}={value}: {err}");
        }
    }

    #[test]
    fn kube_awareness_is_off_unless_the_gateway_service_is_named() {
        let env = HashMap::from([(INTERNAL_SECRET, "internal-secret-0123456789")]);
        assert_eq!(
            ConsumerConfig::from_strings(&env).expect("valid").kube,
            None
        );
        let mut kube = env.clone();
        kube.insert(KUBE_GATEWAY_SERVICE, "hermes-internal");
        kube.insert(KUBE_IDENTITY, "consumer-0");
        let k = ConsumerConfig::from_strings(&kube)
            .expect("valid")
            .kube
            .expect("on");
        assert_eq!(k.gateway_service, "hermes-internal");
        assert_eq!(k.identity, "consumer-0");
        assert_eq!(k.lease_name, "hermes-reaper");
        assert_eq!(k.gateway_port, "internal");
        assert_eq!(k.namespace, None);
        assert_eq!(
            (k.lease_duration, k.renew_interval),
            (Duration::from_secs(15), Duration::from_secs(5))
        );
    }

    #[test]
    fn a_renew_interval_not_shorter_than_the_lease_is_refused() {
        let env = HashMap::from([
            (INTERNAL_SECRET, "internal-secret-0123456789"),
            (KUBE_GATEWAY_SERVICE, "hermes-internal"),
            (KUBE_LEASE_DURATION, "5"),
            (KUBE_RENEW_INTERVAL, "5"),
        ]);
        let err = ConsumerConfig::from_strings(&env)
            .expect_err("refused")
            .to_string();
        assert!(err.contains(KUBE_RENEW_INTERVAL), "{err}");
    }

    #[test]
    fn consumer_defaults_to_the_original_queue_name() {
        let env = HashMap::from([(INTERNAL_SECRET, "internal-secret-0123456789")]);
        let c = ConsumerConfig::from_strings(&env).expect("valid");
        assert_eq!(
            c.source,
            SourceConfig::Amqp {
                url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
                queue: "hermes-messageQueue".into(),
                prefetch: 64
            }
        );
        assert_eq!(c.threads, 1, "one runtime thread unless asked");
        assert_eq!(c.deliver_transport, DeliverTransport::Stream);
        let mut http = env.clone();
        http.insert(DELIVER_TRANSPORT, "HTTP");
        let c = ConsumerConfig::from_strings(&http).expect("valid");
        assert_eq!(c.deliver_transport, DeliverTransport::Http);
        // One bad or missing setting each: the error names the variable.
        for (key, value, named) in [
            (SOURCE, "sqs", SQS_QUEUE_URL),
            (RETRY_DELAYS, "100,soon", RETRY_DELAYS),
            (CONSUMER_THREADS, "0", CONSUMER_THREADS),
            (DELIVER_TRANSPORT, "udp", DELIVER_TRANSPORT),
        ] {
            let mut bad = env.clone();
            bad.insert(key, value);
            let err = ConsumerConfig::from_strings(&bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.starts_with(named), "{key}={value}: {err}");
        }
    }

    #[test]
    fn amqp_urls_are_read_as_rabbitmq_reads_them() {
        let e = AmqpEndpoint::parse("amqp://guest:guest@127.0.0.1:5672/%2f").expect("valid");
        assert_eq!(
            (e.tls, e.host.as_str(), e.port, e.vhost.as_str()),
            (false, "127.0.0.1", 5672, "/")
        );
        let e = AmqpEndpoint::parse(
            "amqps://hermes:p%40ss%2Bw0rd@mq.example.com/tenant%2Fa?heartbeat=15",
        )
        .expect("valid");
        assert_eq!(
            (e.tls, e.port, e.username.as_str(), e.password.as_str()),
            (true, 5671, "hermes", "p@ss+w0rd")
        );
        assert_eq!((e.vhost.as_str(), e.heartbeat), ("tenant/a", Some(15)));
        let e = AmqpEndpoint::parse("amqp://[::1]").expect("valid");
        assert_eq!(
            (e.host.as_str(), e.username.as_str(), e.vhost.as_str()),
            ("::1", "guest", "/")
        );
        let e = AmqpEndpoint::parse("amqp://u:hunter2@h").expect("valid");
        assert_eq!(e.password, "hunter2");
        assert!(
            !format!("{e:?}").contains("hunter2"),
            "Debug hides the password"
        );
        for bad in [
            "http://h/",
            "amqp://",
            "amqp://u:secret-password@h/?heartbeat=soon",
            "not a url",
        ] {
            let why = AmqpEndpoint::parse(bad).expect_err(bad);
            assert!(!why.contains("secret-password"), "{why}");
        }
    }

    #[test]
    fn env_file_lines_are_parsed() {
        let map = parse_env_file("# c\nexport HERMES_STAGE=dev\nHERMES_ADMIN_KEY=\"a b\"\n")
            .expect("valid file");
        assert_eq!(map.get("HERMES_STAGE").map(String::as_str), Some("dev"));
        assert_eq!(map.get("HERMES_ADMIN_KEY").map(String::as_str), Some("a b"));
        assert!(parse_env_file("novalue").is_err());
    }

    #[test]
    fn debug_output_hides_secrets() {
        let c = GatewayConfig::from_strings(&serve_env(), Mode::Serve).expect("valid");
        let text = format!("{c:?}");
        assert!(!text.contains("admin-key"));
        assert!(!text.contains("0123456789abcdef"));
    }
}
