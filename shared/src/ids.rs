//! Identifiers and random secrets.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;

/// A new connection id: 12 random bytes, base64url without padding (16 characters),
/// safe in URL paths such as `/@connections/{id}`, like API Gateway's ids.
pub fn new_connection_id() -> String {
    let mut bytes = [0u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A new message id (16 random bytes, hex).
pub fn new_message_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A message id derived from what identifies a queue message that carries none: the same
/// parts give the same id, so a redelivery of it is recognised as the same message.
/// SHA-256 of the parts, each preceded by its length, first 16 bytes in hex, after
/// `prefix` (`amqp-`, say).
pub fn content_id(prefix: &str, parts: &[&[u8]]) -> String {
    use sha2::{Digest as _, Sha256};
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    let digest = hash.finalize();
    format!("{prefix}{}", hex::encode(&digest[..16]))
}

/// A random secret of `len` bytes, base64url without padding.
pub fn random_secret(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    now_millis() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ids_are_the_same_for_the_same_parts_only() {
        let a = content_id("amqp-", &[b"queue", b"{\"data\":1}"]);
        assert_eq!(a, content_id("amqp-", &[b"queue", b"{\"data\":1}"]));
        assert!(a.starts_with("amqp-") && a.len() == 5 + 32);
        assert_ne!(a, content_id("amqp-", &[b"queue", b"{\"data\":2}"]));
        assert_ne!(a, content_id("amqp-", &[b"other", b"{\"data\":1}"]));
        // Lengths keep the parts apart: ("ab", "c") is not ("a", "bc").
        assert_ne!(
            content_id("", &[b"ab", b"c"]),
            content_id("", &[b"a", b"bc"])
        );
    }

    #[test]
    fn connection_ids_are_url_safe_and_unique() {
        let a = new_connection_id();
        let b = new_connection_id();
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
    }
}
