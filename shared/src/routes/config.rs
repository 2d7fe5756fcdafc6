//! The route integrations' settings (docs/configuration.md, "Route integrations").

use std::time::Duration;

use crate::config::{Strings, num, positive};
use crate::error::{Error, Result};

// The variables. Each is documented in docs/configuration.md.
pub const CONNECT_URL: &str = "HERMES_ROUTE_CONNECT_URL";
pub const DISCONNECT_URL: &str = "HERMES_ROUTE_DISCONNECT_URL";
pub const DEFAULT_URL: &str = "HERMES_ROUTE_DEFAULT_URL";
pub const ROUTES: &str = "HERMES_ROUTES";
pub const SELECTION: &str = "HERMES_ROUTE_SELECTION";
pub const SECRET: &str = "HERMES_ROUTE_SECRET";
pub const TIMEOUT: &str = "HERMES_ROUTE_TIMEOUT_MS";
pub const RETRIES: &str = "HERMES_ROUTE_RETRIES";
pub const CONCURRENCY: &str = "HERMES_ROUTE_CONCURRENCY";

/// API Gateway's default route selection expression, and Hermes's.
pub const DEFAULT_SELECTION: &str = "$request.body.action";
/// The shortest `HERMES_ROUTE_SECRET` accepted.
pub const MIN_SECRET_LEN: usize = 32;
/// Actions the gateway answers itself, whatever the routes: `ping` is `hermes.js`'s
/// liveness check.
pub const RESERVED_ACTIONS: &[&str] = &["ping"];

/// Where the route integrations send their events, and how.
#[derive(Clone, Default)]
pub struct RoutesConfig {
    pub connect: Option<String>,
    pub disconnect: Option<String>,
    /// `$default`: messages no other route takes.
    pub default: Option<String>,
    /// Custom action routes: route key → URL, in the order given.
    pub actions: Vec<(String, String)>,
    /// The path into a message's JSON body whose value selects its route
    /// (`$request.body.action` → `["action"]`).
    pub selection: Vec<String>,
    /// The key of `X-Hermes-Signature`.
    pub secret: String,
    /// Each attempt's deadline.
    pub timeout: Duration,
    /// Attempts after the first when the backend cannot be reached or answers 5xx or 429
    /// (`$disconnect` is retried until delivered, whatever this says).
    pub retries: u32,
    /// Calls in flight at once on this gateway.
    pub concurrency: usize,
}

impl std::fmt::Debug for RoutesConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret is never printed.
        f.debug_struct("RoutesConfig")
            .field("connect", &self.connect)
            .field("disconnect", &self.disconnect)
            .field("default", &self.default)
            .field("actions", &self.actions)
            .field("selection", &self.selection)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl RoutesConfig {
    /// Whether any route is configured.
    pub fn any(&self) -> bool {
        self.connect.is_some()
            || self.disconnect.is_some()
            || self.default.is_some()
            || !self.actions.is_empty()
    }

    /// The URL of the custom route `key`, if there is one.
    pub fn action(&self, key: &str) -> Option<&str> {
        self.actions
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, url)| url.as_str())
    }

    pub fn from_strings(s: &dyn Strings) -> Result<Self> {
        let connect = url(s, CONNECT_URL)?;
        let disconnect = url(s, DISCONNECT_URL)?;
        let default = url(s, DEFAULT_URL)?;
        let mut actions: Vec<(String, String)> = Vec::new();
        if let Some(list) = s.get(ROUTES).filter(|v| !v.trim().is_empty()) {
            for (n, entry) in list.split(',').map(str::trim).enumerate() {
                let Some((key, target)) = entry.split_once('=') else {
                    return Err(Error::Config(format!(
                        "{ROUTES}: entry {} must be action=URL",
                        n + 1
                    )));
                };
                let key = key.trim();
                if key.is_empty() || key.len() > 128 || key.chars().any(char::is_control) {
                    return Err(Error::Config(format!(
                        "{ROUTES}: entry {}: the action must be 1 to 128 printable characters",
                        n + 1
                    )));
                }
                if key.starts_with('$') {
                    return Err(Error::Config(format!(
                        "{ROUTES}: {key} is set with its own variable ({CONNECT_URL}, \
                         {DISCONNECT_URL}, {DEFAULT_URL}), not here"
                    )));
                }
                if RESERVED_ACTIONS.contains(&key) {
                    return Err(Error::Config(format!(
                        "{ROUTES}: {key} is answered by the gateway itself (the clients' liveness \
                         check) and cannot be routed"
                    )));
                }
                if actions.iter().any(|(k, _)| k == key) {
                    return Err(Error::Config(format!("{ROUTES}: {key} is listed twice")));
                }
                actions.push((key.to_owned(), check_url(ROUTES, target.trim())?));
            }
        }
        let selection = selection(s.get(SELECTION).as_deref().unwrap_or(DEFAULT_SELECTION))?;
        let mut config = Self {
            connect,
            disconnect,
            default,
            actions,
            selection,
            secret: String::new(),
            timeout: Duration::from_millis(positive(s, TIMEOUT, 5_000)? as u64),
            retries: num(s, RETRIES, 2u32)?,
            concurrency: positive(s, CONCURRENCY, 256)?,
        };
        if config.retries > 10 {
            return Err(Error::Config(format!("{RETRIES}: at most 10")));
        }
        if config.any() {
            let secret = s.get(SECRET).unwrap_or_default();
            if secret.len() < MIN_SECRET_LEN {
                return Err(Error::Config(format!(
                    "{SECRET}: required with route integrations, at least {MIN_SECRET_LEN} \
                     characters (the backends check X-Hermes-Signature with it)"
                )));
            }
            config.secret = secret;
        }
        Ok(config)
    }
}

/// An `http(s)://` URL variable, if set.
fn url(s: &dyn Strings, key: &str) -> Result<Option<String>> {
    s.get(key)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .map(|v| check_url(key, &v))
        .transpose()
}

fn check_url(key: &str, value: &str) -> Result<String> {
    match url::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            Ok(value.to_owned())
        }
        _ => Err(Error::Config(format!(
            "{key}: {value:?} is not an http:// or https:// URL"
        ))),
    }
}

/// `$request.body.a.b` → `["a", "b"]`.
fn selection(expression: &str) -> Result<Vec<String>> {
    let path = expression
        .trim()
        .strip_prefix("$request.body.")
        .ok_or_else(|| {
            Error::Config(format!(
                "{SELECTION}: {expression:?} must be $request.body.<field>[.<field>...], \
                 as API Gateway's WebSocket route selection"
            ))
        })?;
    let fields: Vec<String> = path.split('.').map(str::to_owned).collect();
    if fields.iter().any(|f| f.is_empty()) {
        return Err(Error::Config(format!(
            "{SELECTION}: {expression:?} has an empty field"
        )));
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(pairs: &[(&str, &str)]) -> Result<RoutesConfig> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        RoutesConfig::from_strings(&map)
    }

    const SECRET_OK: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn no_route_needs_no_secret_and_selects_by_action() {
        let c = parse(&[]).expect("valid");
        assert!(!c.any());
        assert_eq!(c.selection, vec!["action".to_owned()]);
        assert_eq!(c.timeout, Duration::from_secs(5));
    }

    #[test]
    fn routes_are_read_in_order_and_need_a_long_secret() {
        let routes = [
            (CONNECT_URL, "http://backend:8080/connect"),
            (
                ROUTES,
                "sendMessage=http://b/send, typing = https://b/typing",
            ),
            (SELECTION, "$request.body.message.kind"),
        ];
        let error = parse(&routes).expect_err("no secret");
        assert!(error.to_string().contains(SECRET), "{error}");
        let mut with_secret = routes.to_vec();
        with_secret.push((SECRET, SECRET_OK));
        let c = parse(&with_secret).expect("valid");
        assert_eq!(c.action("typing"), Some("https://b/typing"));
        assert_eq!(c.action("sendMessage"), Some("http://b/send"));
        assert_eq!(c.selection, vec!["message".to_owned(), "kind".to_owned()]);
        assert!(
            !format!("{c:?}").contains(SECRET_OK),
            "the secret is not printed"
        );
    }

    #[test]
    fn bad_routes_are_refused_with_the_variable_named() {
        for (pairs, expected) in [
            (vec![(CONNECT_URL, "ftp://x")], CONNECT_URL),
            (vec![(ROUTES, "nourl")], ROUTES),
            (vec![(ROUTES, "$connect=http://x")], ROUTES),
            (vec![(ROUTES, "ping=http://x")], ROUTES),
            (vec![(ROUTES, "a=http://x,a=http://y")], ROUTES),
            (vec![(SELECTION, "$request.header.x")], SELECTION),
            (vec![(SELECTION, "$request.body.a..b")], SELECTION),
            (vec![(RETRIES, "11")], RETRIES),
            (vec![(TIMEOUT, "0")], TIMEOUT),
        ] {
            let mut pairs = pairs;
            pairs.push((SECRET, SECRET_OK));
            let error = parse(&pairs).expect_err("refused");
            assert!(error.to_string().contains(expected), "{error}");
        }
    }
}
