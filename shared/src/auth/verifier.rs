//! The fast verifier and the token derivations: the second-layer token as the original
//! code makes it, the HMAC stored beside its bcrypt hash, sub-keys of a secret, and the
//! constant-time comparison of verifiers.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The token as the original Ruby code makes it: hex SHA-256 of
/// `user_id + passcode + room_id`.
pub fn original_token(user_id: &str, passcode: &str, room_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(user_id.as_bytes());
    h.update(passcode.as_bytes());
    h.update(room_id.as_bytes());
    hex::encode(h.finalize())
}

/// The fast verifier stored beside the bcrypt hash: hex HMAC-SHA-256 of the token.
pub fn fast_verifier(key: &[u8], token: &str) -> String {
    hex::encode(hmac_sha256(key, token.as_bytes()))
}

/// Derives a sub-key from a secret for one purpose.
pub fn derive_key(secret: &[u8], purpose: &[u8]) -> Vec<u8> {
    hmac_sha256(secret, purpose).to_vec()
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length; the error branch cannot happen.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return [0; 32],
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Compares two verifiers in constant time (for equal lengths).
pub(super) fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_token_is_hex_sha256_of_user_passcode_room() {
        // echo -n "u1secretr1" | sha256sum
        assert_eq!(
            original_token("u1", "secret", "r1"),
            hex::encode(Sha256::digest(b"u1secretr1"))
        );
    }

    /// Hashes made by crypt_blowfish, the C code Ruby's `bcrypt` gem wraps (its own test
    /// vectors, `$2a$`): the second layer verifies rows the original wrote.
    #[test]
    fn hashes_made_by_rubys_bcrypt_verify() {
        for (password, hash) in [
            (
                "U*U",
                "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",
            ),
            (
                "U*U*",
                "$2a$05$CCCCCCCCCCCCCCCCCCCCC.VGOzA784oUp/Z0DY336zx7pLYAy0lwK",
            ),
            (
                "U*U*U",
                "$2a$05$XXXXXXXXXXXXXXXXXXXXXOAcXxm9kjPGEMsLznoKqmqw7tc8WCx4a",
            ),
            (
                "",
                "$2a$05$CCCCCCCCCCCCCCCCCCCCC.7uG0VCzI2bS7j6ymqJi9CdcdxiRTWNy",
            ),
        ] {
            assert_eq!(bcrypt::verify(password, hash).ok(), Some(true), "{hash}");
            assert_eq!(bcrypt::verify("wrong", hash).ok(), Some(false), "{hash}");
        }
    }

    #[test]
    fn verifiers_compare_equal_only_when_identical() {
        let key = derive_key(b"a-shared-secret-of-some-length", b"v");
        let v = fast_verifier(&key, "token");
        assert!(constant_time_eq(&v, &fast_verifier(&key, "token")));
        assert!(!constant_time_eq(&v, &fast_verifier(&key, "other")));
        assert!(!constant_time_eq(&v, &v[1..]));
    }
}
