//! The gateway's settings: every `HERMES_*` variable the gateway reads besides the
//! authorizer's (`hermes_shared::auth::config`), the registry's
//! (`hermes_shared::registry::config`) and SigV4's (`crate::sigv4::config`). Documented in
//! docs/configuration.md.

use std::net::SocketAddr;
use std::time::Duration;

use hermes_shared::auth::AuthConfig;
pub use hermes_shared::config::MAX_MESSAGE_BYTES;
use hermes_shared::config::{
    self, INTERNAL_SECRET, STAGE, Strings, addr, deliver_transport, host_name, num, positive,
    positive_f64, positive_secs, secret, secs,
};
use hermes_shared::history::HistorySettings;
use hermes_shared::registry::RegistryKind;
use hermes_shared::router::DeliverTransport;
use hermes_shared::{Error, Result};

use crate::routes::RoutesConfig;
use crate::sigv4::SigV4Config;

// The variables. Each is documented in docs/configuration.md.
pub const LISTEN: &str = "HERMES_LISTEN";
pub const INTERNAL_LISTEN: &str = "HERMES_INTERNAL_LISTEN";
pub const GATEWAY_ID: &str = "HERMES_GATEWAY_ID";
pub const INTERNAL_URL: &str = "HERMES_INTERNAL_URL";
pub const ADMIN_KEY: &str = "HERMES_ADMIN_KEY";
pub const ALLOWED_ORIGINS: &str = "HERMES_ALLOWED_ORIGINS";
pub use hermes_shared::config::REGISTRY_TTL;
pub const IDLE_TIMEOUT: &str = "HERMES_IDLE_TIMEOUT_SECONDS";
pub const PING_INTERVAL: &str = "HERMES_PING_INTERVAL_SECONDS";
pub const PONG_TIMEOUT: &str = "HERMES_PONG_TIMEOUT_SECONDS";
pub const SEND_QUEUE: &str = "HERMES_SEND_QUEUE";
pub const CLIENT_RATE: &str = "HERMES_CLIENT_MESSAGES_PER_SECOND";
pub const CLIENT_BURST: &str = "HERMES_CLIENT_MESSAGES_BURST";
pub const DRAIN: &str = "HERMES_DRAIN_SECONDS";
pub const SHUTDOWN_GRACE: &str = "HERMES_SHUTDOWN_GRACE_SECONDS";
pub const WORKERS: &str = "HERMES_WORKERS";
pub const LISTEN_BACKLOG: &str = "HERMES_LISTEN_BACKLOG";
pub const DEDUP_WINDOW: &str = "HERMES_DEDUP_WINDOW";
pub const DEDUP_SECONDS: &str = "HERMES_DEDUP_SECONDS";
pub const SERVE_CLIENT: &str = "HERMES_SERVE_CLIENT";

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
    /// Access keys whose AWS Signature Version 4 the `@connections` API accepts.
    pub sigv4: SigV4Config,
    pub internal_secret: String,
    pub allowed_origins: OriginPolicy,
    pub registry: RegistryKind,
    /// The heartbeat row's TTL (`HERMES_REGISTRY_TTL_SECONDS`).
    pub registry_ttl: Duration,
    /// The other rows' TTL (`HERMES_REGISTRY_ROW_TTL_SECONDS`).
    pub registry_row_ttl: Duration,
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
    pub dedup: DedupSettings,
    /// The streams' history: recorded by this gateway's router, replayed to resuming
    /// sockets.
    pub history: HistorySettings,
    /// Whether the public listener serves the browser client at `/hermes.js` and
    /// `/hermes.mjs` (`HERMES_SERVE_CLIENT`, default `on`, in every mode).
    pub serve_client: bool,
    /// The route integrations (`HERMES_ROUTE_*`, `HERMES_ROUTES`): none by default.
    pub routes: RoutesConfig,
}

/// How long and how many delivered message ids the gateway remembers (`crate::dedup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupSettings {
    /// At least the longest redelivery path: `HERMES_DEDUP_SECONDS`, by default
    /// [`hermes_shared::config::Redelivery::window`] of the queue settings the gateway
    /// sees (the chart gives the gateways and the consumer the same ones).
    pub window: Duration,
    /// At most this many ids (`HERMES_DEDUP_WINDOW`, 0: no de-duplication).
    pub max: usize,
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
        let stage = config::stage(s);
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
                    Error::config_source(format!("{INTERNAL_URL}: {u:?} is not a URL"), e)
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

        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let auth = AuthConfig::from_strings(s, standalone)?;

        let (admin_key, admin_key_generated) = match s.get(ADMIN_KEY) {
            Some(k) => (k, false),
            None if standalone => (hermes_shared::ids::random_secret(24), true),
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

        let registry = RegistryKind::from_strings(s, &stage)?;
        let registry_ttl = config::registry_ttl(s)?;
        let registry_row_ttl = config::registry_row_ttl(s, registry_ttl)?;
        let drain = secs(s, DRAIN, 10)?;
        check_drain_within_ttl(&registry, drain, registry_ttl)?;

        let limits = SocketLimits {
            max_message_bytes: config::max_message_bytes(s)?,
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
            sigv4: SigV4Config::from_strings(s)?,
            internal_secret,
            allowed_origins,
            registry,
            registry_ttl,
            registry_row_ttl,
            limits,
            drain,
            shutdown_grace: positive_secs(s, SHUTDOWN_GRACE, 25)?,
            deliver_timeout: config::deliver_timeout(s)?,
            deliver_transport: deliver_transport(s)?,
            workers: positive(s, WORKERS, cpus)?,
            listen_backlog: positive(s, LISTEN_BACKLOG, 4096)?.min(i32::MAX as usize),
            dedup: DedupSettings::from_strings(s)?,
            history: HistorySettings::from_strings(s)?,
            serve_client: on_off(s, SERVE_CLIENT, true)?,
            routes: RoutesConfig::from_strings(s)?,
        })
    }
}

/// An `on` | `off` switch; absent: `default`.
fn on_off(s: &dyn Strings, key: &str, default: bool) -> Result<bool> {
    match s.get(key).as_deref().map(str::trim) {
        None => Ok(default),
        Some("on") => Ok(true),
        Some("off") => Ok(false),
        Some(other) => Err(Error::Config(format!(
            "{key}: {other:?} must be `on` or `off`"
        ))),
    }
}

impl DedupSettings {
    fn from_strings(s: &dyn Strings) -> Result<Self> {
        // One attempt: its history write and its deliveries, each bounded by the deliver
        // timeout (the router's outer deadline adds 500 ms), and a second of margin.
        let attempt = config::deliver_timeout(s)? * 2 + Duration::from_millis(1500);
        let derived = config::Redelivery::from_strings(s)?.window(attempt);
        Ok(Self {
            window: match s.get(DEDUP_SECONDS) {
                None => derived,
                Some(_) => positive_secs(s, DEDUP_SECONDS, 1)?,
            },
            max: num(s, DEDUP_WINDOW, 1 << 20)?,
        })
    }
}

/// A shared registry's rows (`remote`, `scylla`) must not depend on the heartbeat for a
/// whole TTL of the drain: a drain at least as long as `HERMES_REGISTRY_TTL_SECONDS` is
/// refused. The heartbeat refreshes the rows of the sockets still open during the drain,
/// but the registry is another process: if it is slow or unreachable then, those rows
/// expire under open sockets, and other processes route around them. The gateway's own
/// in-process `memory` registry is exempt: its refresh cannot fail, and it lives and dies
/// with the drain.
fn check_drain_within_ttl(registry: &RegistryKind, drain: Duration, ttl: Duration) -> Result<()> {
    if matches!(registry, RegistryKind::Memory) || drain < ttl {
        return Ok(());
    }
    Err(Error::Config(format!(
        "{DRAIN}: {} s must be shorter than {REGISTRY_TTL} ({} s) with a shared registry; \
         lower {DRAIN} or raise {REGISTRY_TTL}",
        drain.as_secs(),
        ttl.as_secs()
    )))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use hermes_shared::auth::config::{
        BCRYPT_NICE, BCRYPT_PRIORITY, JWT_ALGORITHMS, JWT_SECRET, TOKEN_CHECK,
    };
    use hermes_shared::auth::{Algorithm, BcryptPriority};
    use hermes_shared::config::{DELIVER_TRANSPORT, INTERNAL_SECRET, STAGE};
    use hermes_shared::registry::config::{REGISTRY, REGISTRY_URL};

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
        assert_eq!(c.auth.bcrypt_priority, BcryptPriority::Idle);
    }

    #[test]
    fn the_browser_client_is_served_in_every_mode_unless_switched_off() {
        let serve = GatewayConfig::from_strings(&serve_env(), Mode::Serve).expect("serve");
        assert!(serve.serve_client, "served by default in serve mode");
        let standalone =
            GatewayConfig::from_strings(&HashMap::<&str, &str>::new(), Mode::Standalone)
                .expect("standalone");
        assert!(standalone.serve_client, "served by default in standalone");
        for (value, served) in [("on", true), ("off", false), (" off ", false)] {
            let mut env = serve_env();
            env.insert(SERVE_CLIENT, value);
            let c = GatewayConfig::from_strings(&env, Mode::Serve).expect("valid");
            assert_eq!(c.serve_client, served, "{SERVE_CLIENT}={value:?}");
        }
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
            (SERVE_CLIENT, "yes", "HERMES_SERVE_CLIENT"),
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
    fn a_drain_as_long_as_a_shared_registry_ttl_is_refused_naming_both_variables() {
        for (registry, drain, ttl) in [
            ("remote", "10", "10"),
            ("remote", "31", "30"),
            ("scylla", "30", "30"),
        ] {
            let mut env = serve_env();
            env.extend([
                (REGISTRY, registry),
                (REGISTRY_URL, "http://registry:8081"),
                (DRAIN, drain),
                (REGISTRY_TTL, ttl),
            ]);
            let err = GatewayConfig::from_strings(&env, Mode::Serve)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.starts_with("HERMES_DRAIN_SECONDS: "), "{err}");
            assert!(err.contains("HERMES_REGISTRY_TTL_SECONDS"), "{err}");
        }
        let mut env = serve_env();
        env.extend([
            (REGISTRY, "remote"),
            (REGISTRY_URL, "http://registry:8081"),
            (DRAIN, "29"),
        ]);
        let c = GatewayConfig::from_strings(&env, Mode::Serve).expect("shorter than the TTL");
        assert_eq!(
            (c.drain, c.registry_ttl),
            (Duration::from_secs(29), Duration::from_secs(30))
        );
    }

    #[test]
    fn a_row_ttl_under_twice_the_heartbeat_ttl_is_refused_naming_both_variables() {
        let row_ttl = hermes_shared::config::REGISTRY_ROW_TTL;
        let mut env = serve_env();
        env.extend([(REGISTRY_TTL, "30"), (row_ttl, "59")]);
        let err = GatewayConfig::from_strings(&env, Mode::Serve)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with("HERMES_REGISTRY_ROW_TTL_SECONDS: 59 s"),
            "{err}"
        );
        assert!(err.contains("HERMES_REGISTRY_TTL_SECONDS (30 s)"), "{err}");
        env.insert(row_ttl, "60");
        let c = GatewayConfig::from_strings(&env, Mode::Serve).expect("twice the TTL");
        assert_eq!(c.registry_row_ttl, Duration::from_secs(60));
        let c = GatewayConfig::from_strings(&serve_env(), Mode::Serve).expect("defaults");
        assert_eq!(
            (c.registry_ttl, c.registry_row_ttl),
            (Duration::from_secs(30), Duration::from_secs(24 * 3600))
        );
    }

    #[test]
    fn the_embedded_memory_registry_allows_a_drain_longer_than_its_ttl() {
        let mut env = serve_env();
        env.extend([(DRAIN, "60"), (REGISTRY_TTL, "3")]);
        let c = GatewayConfig::from_strings(&env, Mode::Serve).expect("memory: no limit");
        assert_eq!(
            (c.drain, c.registry_ttl),
            (Duration::from_secs(60), Duration::from_secs(3))
        );
        let env = HashMap::from([(DRAIN, "60"), (REGISTRY_TTL, "3")]);
        GatewayConfig::from_strings(&env, Mode::Standalone).expect("standalone: no limit");
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
    fn debug_output_hides_secrets() {
        let c = GatewayConfig::from_strings(&serve_env(), Mode::Serve).expect("valid");
        let text = format!("{c:?}");
        assert!(!text.contains("admin-key"));
        assert!(!text.contains("0123456789abcdef"));
    }

    /// Every variable the gateway reads, given each of a list of mistaken values in turn,
    /// is taken or refused with an error that names a variable and holds no secret.
    #[test]
    fn a_bad_value_of_any_variable_is_refused_naming_a_variable_and_no_secret() {
        let base: Vec<(&str, &str)> = serve_env().into_iter().collect();
        let secrets = [
            JWT_SECRET,
            ADMIN_KEY,
            INTERNAL_SECRET,
            crate::sigv4::config::CREDENTIALS,
            hermes_shared::registry::scylla::config::SCYLLA_PASSWORD,
        ];
        for mode in [Mode::Serve, Mode::Standalone] {
            let checked = hermes_shared::config::check_mistaken_values(&base, &secrets, |s| {
                GatewayConfig::from_strings(s, mode).map(drop)
            });
            // Reached: the remote registry's URL (read under HERMES_REGISTRY=remote).
            checked.assert_clean(REGISTRY_URL, 100);
        }
    }
}
