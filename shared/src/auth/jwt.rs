//! The JWT layer: the accepted algorithms, the claims of a connect token, and the codec that
//! verifies (signature, pinned algorithm, required expiry) and signs them.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::verdict::AuthError;
use crate::error::{Error, Result};

/// The JWT algorithms Hermes accepts (shared-secret HMAC only: no `none`, and no
/// public-key algorithms whose key could be confused with the secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    HS256,
    HS384,
    HS512,
}

impl Algorithm {
    /// Parses `HS256`, `HS384` or `HS512`.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::HS256, Self::HS384, Self::HS512]
            .into_iter()
            .find(|a| a.name() == name)
    }

    /// The name as it appears in a JWT header.
    pub fn name(self) -> &'static str {
        match self {
            Self::HS256 => "HS256",
            Self::HS384 => "HS384",
            Self::HS512 => "HS512",
        }
    }

    fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Self::HS256 => jsonwebtoken::Algorithm::HS256,
            Self::HS384 => jsonwebtoken::Algorithm::HS384,
            Self::HS512 => jsonwebtoken::Algorithm::HS512,
        }
    }
}

/// The claims of a connect token, as the original issues them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub user_id: String,
    pub room_id: String,
    /// The second-layer token whose bcrypt hash is stored for (user_id, room_id).
    pub token: String,
    /// Expiry, seconds since the epoch. Required.
    pub exp: u64,
}

/// Verifies and issues JWTs.
#[derive(Clone)]
pub struct JwtCodec {
    decoding: jsonwebtoken::DecodingKey,
    encoding: jsonwebtoken::EncodingKey,
    validation: jsonwebtoken::Validation,
    algorithms: Vec<Algorithm>,
}

impl JwtCodec {
    /// A codec for the shared secret, the pinned algorithms and the leeway.
    pub fn new(secret: &str, algorithms: &[Algorithm], leeway: Duration) -> Self {
        let first = algorithms.first().copied().unwrap_or(Algorithm::HS512);
        let mut validation = jsonwebtoken::Validation::new(first.jwt());
        validation.algorithms = algorithms.iter().map(|a| a.jwt()).collect();
        validation.leeway = leeway.as_secs();
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp"]);
        Self {
            decoding: jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
            encoding: jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
            validation,
            algorithms: algorithms.to_vec(),
        }
    }

    /// Verifies signature, algorithm and expiry and returns the claims.
    pub fn verify(&self, jwt: &str) -> std::result::Result<Claims, AuthError> {
        let alg = header_algorithm(jwt)?;
        if !self.algorithms.iter().any(|a| a.name() == alg) {
            let allowed: Vec<&str> = self.algorithms.iter().map(|a| a.name()).collect();
            return Err(AuthError::WrongAlgorithm(alg, allowed.join(", ")));
        }
        use jsonwebtoken::errors::ErrorKind;
        #[derive(Deserialize)]
        struct Decoded {
            user_id: String,
            room_id: String,
            token: String,
            exp: Option<u64>,
        }
        match jsonwebtoken::decode::<Decoded>(jwt, &self.decoding, &self.validation) {
            Ok(data) => {
                let d = data.claims;
                let exp = d.exp.ok_or(AuthError::MissingExp)?;
                Ok(Claims { user_id: d.user_id, room_id: d.room_id, token: d.token, exp })
            }
            Err(e) => Err(match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    AuthError::WrongAlgorithm(alg, String::new())
                }
                ErrorKind::MissingRequiredClaim(c) if c == "exp" => AuthError::MissingExp,
                ErrorKind::Json(_) => AuthError::Malformed(
                    "the claims must be {user_id, room_id, token, exp} with string ids and a numeric exp"
                        .into(),
                ),
                _ => AuthError::Malformed("cannot decode the token".into()),
            }),
        }
    }

    /// Signs claims with the first pinned algorithm.
    pub fn sign(&self, claims: &Claims) -> Result<String> {
        let alg = self.algorithms.first().copied().unwrap_or(Algorithm::HS512);
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(alg.jwt()),
            claims,
            &self.encoding,
        )
        .map_err(|e| Error::crypto("cannot sign a JWT", e))
    }
}

/// Reads the `alg` of a JWT header without trusting anything else in it.
fn header_algorithm(jwt: &str) -> std::result::Result<String, AuthError> {
    let mut parts = jwt.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed(
            "expected three dot-separated parts".into(),
        ));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| AuthError::Malformed("the header is not base64url".into()))?;
    #[derive(Deserialize)]
    struct Header {
        alg: String,
    }
    let h: Header = serde_json::from_slice(&bytes)
        .map_err(|_| AuthError::Malformed("the header has no `alg`".into()))?;
    Ok(h.alg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-shared-secret-of-some-length";

    fn jwt_with(
        header_alg: jsonwebtoken::Algorithm,
        claims: &serde_json::Value,
        secret: &str,
    ) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(header_alg),
            claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encodes")
    }

    fn claims(exp: u64) -> serde_json::Value {
        serde_json::json!({"user_id": "u1", "room_id": "r1", "token": "t", "exp": exp})
    }

    #[test]
    fn jwt_refusals_are_distinguished() {
        let codec = JwtCodec::new(SECRET, &[Algorithm::HS512], Duration::ZERO);
        let future = crate::ids::now_secs() + 600;
        let ok = jwt_with(jsonwebtoken::Algorithm::HS512, &claims(future), SECRET);
        assert_eq!(
            codec.verify(&ok).map(|c| c.user_id).ok(),
            Some("u1".to_owned())
        );

        let expired = jwt_with(jsonwebtoken::Algorithm::HS512, &claims(1000), SECRET);
        assert!(matches!(codec.verify(&expired), Err(AuthError::Expired)));

        let wrong_key = jwt_with(
            jsonwebtoken::Algorithm::HS512,
            &claims(future),
            "another-secret-entirely",
        );
        assert!(matches!(
            codec.verify(&wrong_key),
            Err(AuthError::BadSignature)
        ));

        let hs256 = jwt_with(jsonwebtoken::Algorithm::HS256, &claims(future), SECRET);
        assert!(
            matches!(codec.verify(&hs256), Err(AuthError::WrongAlgorithm(a, _)) if a == "HS256")
        );

        let no_exp = jwt_with(
            jsonwebtoken::Algorithm::HS512,
            &serde_json::json!({"user_id":"u","room_id":"r","token":"t"}),
            SECRET,
        );
        assert!(matches!(codec.verify(&no_exp), Err(AuthError::MissingExp)));

        assert!(matches!(codec.verify("abc"), Err(AuthError::Malformed(_))));
    }

    #[test]
    fn alg_none_is_refused() {
        let codec = JwtCodec::new(SECRET, &[Algorithm::HS512], Duration::ZERO);
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&claims(crate::ids::now_secs() + 600)).expect("json"));
        let token = format!("{header}.{body}.");
        assert!(
            matches!(codec.verify(&token), Err(AuthError::WrongAlgorithm(a, _)) if a == "none")
        );
    }
}
