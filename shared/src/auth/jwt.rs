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

/// The claims of a connect token, as the original issues them. The ids may be JSON
/// integers (the original Ruby code signs `user_id: current_user.id`): they are read as
/// their decimal strings, as its token table stored them (`user_id.to_s`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(deserialize_with = "crate::wire::id::deserialize")]
    pub user_id: String,
    #[serde(deserialize_with = "crate::wire::id::deserialize")]
    pub room_id: String,
    /// The second-layer token whose bcrypt hash is stored for (user_id, room_id). Required
    /// with `HERMES_TOKEN_CHECK=bcrypt`; with `off` the JWT alone decides and it may be absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Expiry, seconds since the epoch. Required.
    pub exp: u64,
    /// When Hermes issued it, seconds since the epoch (the original's tokens have none): a
    /// JWT issued well before its (user, room) row was written is refused as revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
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
            #[serde(deserialize_with = "crate::wire::id::deserialize")]
            user_id: String,
            #[serde(deserialize_with = "crate::wire::id::deserialize")]
            room_id: String,
            #[serde(default)]
            token: Option<String>,
            exp: Option<u64>,
            #[serde(default)]
            iat: Option<u64>,
        }
        match jsonwebtoken::decode::<Decoded>(jwt, &self.decoding, &self.validation) {
            Ok(data) => {
                let d = data.claims;
                let exp = d.exp.ok_or(AuthError::MissingExp)?;
                Ok(Claims {
                    user_id: d.user_id,
                    room_id: d.room_id,
                    token: d.token,
                    exp,
                    iat: d.iat,
                })
            }
            Err(e) => Err(match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    AuthError::WrongAlgorithm(alg, String::new())
                }
                ErrorKind::MissingRequiredClaim(c) if c == "exp" => AuthError::MissingExp,
                ErrorKind::Json(_) => AuthError::Malformed(describe_claims_error(jwt)),
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

/// Says which claim of a (signature-checked) JWT could not be read, and why.
fn describe_claims_error(jwt: &str) -> String {
    use crate::wire::id;
    let shape = "the claims must be {user_id, room_id, token, exp}: ids strings or integers, \
                 token a string (optional with HERMES_TOKEN_CHECK=off), exp seconds since the epoch";
    let claims = jwt
        .split('.')
        .nth(1)
        .and_then(|payload| URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok())
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
    let Some(serde_json::Value::Object(claims)) = claims else {
        return shape.into();
    };
    for field in ["user_id", "room_id"] {
        match claims.get(field) {
            None => return format!("the claim `{field}` is missing; {shape}"),
            Some(v) if id::from_value(v).is_none() => {
                return format!(
                    "the claim `{field}` must be {}, not {}",
                    id::ID_EXPECTED,
                    id::describe(v)
                );
            }
            Some(_) => {}
        }
    }
    match claims.get("token") {
        Some(v) if !v.is_string() && !v.is_null() => {
            format!(
                "the claim `token` must be a string, not {}",
                id::describe(v)
            )
        }
        _ => shape.into(),
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

    /// As the original Ruby code signs them: `user_id: current_user.id` is an Integer.
    #[test]
    fn integer_ids_are_read_as_their_decimal_strings() {
        let codec = JwtCodec::new(SECRET, &[Algorithm::HS512], Duration::ZERO);
        let exp = crate::ids::now_secs() + 600;
        let jwt = jwt_with(
            jsonwebtoken::Algorithm::HS512,
            &serde_json::json!({"user_id": 42, "room_id": 7, "token": "t", "exp": exp}),
            SECRET,
        );
        let claims = codec.verify(&jwt).expect("accepted");
        assert_eq!(
            (claims.user_id.as_str(), claims.room_id.as_str()),
            ("42", "7")
        );
    }

    #[test]
    fn ids_that_are_neither_strings_nor_integers_are_refused_naming_the_claim() {
        let codec = JwtCodec::new(SECRET, &[Algorithm::HS512], Duration::ZERO);
        let exp = crate::ids::now_secs() + 600;
        let cases = [
            (
                serde_json::json!({"user_id": 4.2, "room_id": "r", "token": "t", "exp": exp}),
                "the claim `user_id` must be a string or an integer, not a fractional number",
            ),
            (
                serde_json::json!({"user_id": "u", "room_id": true, "token": "t", "exp": exp}),
                "the claim `room_id` must be a string or an integer, not a boolean",
            ),
            (
                serde_json::json!({"user_id": {"id": 1}, "room_id": "r", "token": "t", "exp": exp}),
                "the claim `user_id` must be a string or an integer, not an object",
            ),
            (
                serde_json::json!({"room_id": "r", "token": "t", "exp": exp}),
                "the claim `user_id` is missing",
            ),
            (
                serde_json::json!({"user_id": 1, "room_id": 2, "token": 3, "exp": exp}),
                "the claim `token` must be a string, not an integer",
            ),
        ];
        for (claims, expected) in cases {
            let jwt = jwt_with(jsonwebtoken::Algorithm::HS512, &claims, SECRET);
            match codec.verify(&jwt) {
                Err(AuthError::Malformed(message)) => {
                    assert!(message.starts_with(expected), "{claims}: {message}")
                }
                other => panic!("{claims}: expected a malformed-token refusal, got {other:?}"),
            }
        }
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
