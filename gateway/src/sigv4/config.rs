//! SigV4's settings: `HERMES_SIGV4_CREDENTIALS` and `HERMES_SIGV4_REGION`
//! (docs/configuration.md).

use std::collections::HashMap;

use hermes_shared::config::Strings;
use hermes_shared::{Error, Result};

// The variables. Each is documented in docs/configuration.md.
pub const CREDENTIALS: &str = "HERMES_SIGV4_CREDENTIALS";
pub const REGION: &str = "HERMES_SIGV4_REGION";

/// The region signatures must be scoped to unless `HERMES_SIGV4_REGION` says otherwise.
pub const DEFAULT_REGION: &str = "us-east-1";

/// The access keys that may sign `@connections` calls, and the region of their scope.
#[derive(Clone)]
pub struct SigV4Config {
    /// Access key id → secret access key.
    credentials: HashMap<String, String>,
    pub region: String,
}

impl std::fmt::Debug for SigV4Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets are never printed; the key ids are not secret.
        let mut ids: Vec<&String> = self.credentials.keys().collect();
        ids.sort();
        f.debug_struct("SigV4Config")
            .field("access_key_ids", &ids)
            .field("region", &self.region)
            .finish()
    }
}

impl SigV4Config {
    pub fn new(credentials: Vec<(String, String)>, region: String) -> Self {
        Self {
            credentials: credentials.into_iter().collect(),
            region,
        }
    }

    /// Reads `HERMES_SIGV4_CREDENTIALS` (`ACCESS_KEY_ID:SECRET_ACCESS_KEY`, comma-separated;
    /// unset: no key can sign, only the admin key works) and `HERMES_SIGV4_REGION`.
    pub fn from_strings(s: &dyn Strings) -> Result<Self> {
        let mut credentials = Vec::new();
        if let Some(list) = s.get(CREDENTIALS) {
            for (n, entry) in list.split(',').map(str::trim).enumerate() {
                let position = n + 1;
                let Some((id, secret)) = entry.split_once(':') else {
                    return Err(Error::Config(format!(
                        "{CREDENTIALS}: entry {position} must be ACCESS_KEY_ID:SECRET_ACCESS_KEY"
                    )));
                };
                let (id, secret) = (id.trim(), secret.trim());
                if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
                    return Err(Error::Config(format!(
                        "{CREDENTIALS}: the access key id of entry {position} must be letters and digits"
                    )));
                }
                if secret.len() < 16 || secret.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(Error::Config(format!(
                        "{CREDENTIALS}: the secret access key of {id} must be at least 16 characters, without spaces"
                    )));
                }
                if credentials.iter().any(|(known, _)| known == id) {
                    return Err(Error::Config(format!(
                        "{CREDENTIALS}: access key id {id} is listed twice"
                    )));
                }
                credentials.push((id.to_owned(), secret.to_owned()));
            }
        }
        let region = s.get(REGION).unwrap_or_else(|| DEFAULT_REGION.to_owned());
        if !region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(Error::Config(format!(
                "{REGION}: {region:?} must look like us-east-1"
            )));
        }
        Ok(Self::new(credentials, region))
    }

    /// The secret access key of an access key id.
    pub fn secret(&self, access_key_id: &str) -> Option<&str> {
        self.credentials.get(access_key_id).map(String::as_str)
    }

    /// Whether any access key may sign.
    pub fn enabled(&self) -> bool {
        !self.credentials.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(env: &[(&str, &str)]) -> Result<SigV4Config> {
        let env: HashMap<&str, &str> = env.iter().copied().collect();
        SigV4Config::from_strings(&env)
    }

    #[test]
    fn credentials_and_region_are_read() {
        let c = read(&[
            (
                CREDENTIALS,
                "AKIAONE:wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY, AKIATWO:another/secret+key0123",
            ),
            (REGION, "eu-west-1"),
        ])
        .expect("valid");
        assert_eq!(
            c.secret("AKIAONE"),
            Some("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
        );
        assert_eq!(c.secret("AKIATWO"), Some("another/secret+key0123"));
        assert_eq!(c.secret("AKIATHREE"), None);
        assert_eq!(c.region, "eu-west-1");
        let none = read(&[]).expect("valid");
        assert!(!none.enabled());
        assert_eq!(none.region, DEFAULT_REGION);
    }

    #[test]
    fn bad_values_name_the_variable_and_never_the_secret() {
        for (env, expected) in [
            (vec![(CREDENTIALS, "AKIAONE")], CREDENTIALS),
            (
                vec![(CREDENTIALS, "AKIA/ONE:wJalrXUtnFEMI/K7MDENG")],
                CREDENTIALS,
            ),
            (vec![(CREDENTIALS, "AKIAONE:short")], CREDENTIALS),
            (
                vec![(
                    CREDENTIALS,
                    "AKIAONE:secret-one-0123456789,AKIAONE:secret-two-0123456789",
                )],
                CREDENTIALS,
            ),
            (vec![(REGION, "US East")], REGION),
        ] {
            let error = read(&env).expect_err("refused").to_string();
            assert!(error.starts_with(expected), "{error}");
            assert!(
                !error.contains("secret-") && !error.contains("wJalr"),
                "{error}"
            );
        }
    }
}
