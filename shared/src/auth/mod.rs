//! The `$connect` authorizer: JWT with pinned algorithms, then the second layer
//! (`bcrypt(token)` stored per user and room), with a fast verifier and a cache in front.
//!
//! Costs, cheapest first: a per-process cache keyed by SHA-256 of the JWT; the JWT
//! signature; one registry read of the token row whose fast verifier (an HMAC-SHA-256 of
//! the token under a server-side key that is not in the database) is compared in constant
//! time; and only when no verifier is stored yet, bcrypt on a small bounded pool of
//! threads. After a bcrypt success the verifier is written beside the hash, so later
//! connects of that token on any replica skip bcrypt.
//!
//! [`Authenticator`] runs those layers in that order; each layer is a module of its own:
//! `cache` (the verdict cache), `jwt` ([`JwtCodec`], [`Algorithm`], [`Claims`]), `verifier`
//! (the fast verifier, [`original_token`], [`derive_key`]), `bcrypt_pool` ([`BcryptPool`]),
//! `verdict` (what an authentication answers: [`Identity`], [`AuthPath`], [`AuthError`]) and
//! `config` ([`AuthConfig`]). The submodules depend on none of their parent.

mod bcrypt_pool;
mod cache;
pub mod config;
mod jwt;
pub mod revocations;
mod verdict;
mod verifier;

pub use bcrypt_pool::{BcryptPool, BcryptPriority};
pub use config::{AuthConfig, TokenCheck};
pub use jwt::{Algorithm, Claims, JwtCodec};
pub use revocations::{Revocations, Ticket};
pub use verdict::{AuthError, AuthPath, Identity};
pub use verifier::{derive_key, fast_verifier, original_token};

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};

use cache::VerdictCache;
use verifier::constant_time_eq;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::registry::{Registry, TokenRecord};

/// How much older than its token row a JWT issued by Hermes may be: a row is written
/// after the bcrypt of its token (which may queue for a while), and two replicas issuing the
/// first token of a (user, room) at once write it twice; their clocks differ a little too.
/// A JWT older than that was issued for a row since revoked (or replaced).
pub const ROW_WRITE_GRACE: Duration = Duration::from_secs(60);

/// Whether a JWT issued at `iat` (seconds) predates a row written at `created_at`
/// (milliseconds) by more than [`ROW_WRITE_GRACE`].
fn issued_before_row(iat: u64, created_at: u64) -> bool {
    iat.saturating_add(ROW_WRITE_GRACE.as_secs())
        .saturating_mul(1000)
        < created_at
}

/// A freshly issued connect token.
#[derive(Debug, Clone, Serialize)]
pub struct IssuedToken {
    /// The JWT to connect with.
    pub token: String,
    /// Expiry, seconds since the epoch.
    pub expires_at: u64,
    /// The (user, room) row held another token, now replaced: every replica must drop the
    /// verdicts it cached for the old one (the admin API broadcasts `DeliverAction::Forget`).
    #[serde(skip)]
    pub replaced: bool,
}

/// The authorizer.
pub struct Authenticator {
    codec: JwtCodec,
    config: AuthConfig,
    registry: Arc<dyn Registry>,
    pool: BcryptPool,
    cache: VerdictCache,
    revocations: Revocations,
    metrics: Arc<Metrics>,
}

impl Authenticator {
    pub fn new(config: AuthConfig, registry: Arc<dyn Registry>, metrics: Arc<Metrics>) -> Self {
        let codec = JwtCodec::new(&config.jwt_secret, &config.algorithms, config.leeway);
        let pool = BcryptPool::new(
            config.bcrypt_workers,
            config.bcrypt_queue,
            config.bcrypt_priority,
            Some(metrics.bcrypt_queue.clone()),
        );
        let cache = VerdictCache::new(config.cache_ttl, config.cache_capacity);
        Self {
            codec,
            config,
            registry,
            pool,
            cache,
            revocations: Revocations::default(),
            metrics,
        }
    }

    /// The JWT codec (for the `token` command and tests).
    pub fn codec(&self) -> &JwtCodec {
        &self.codec
    }

    /// What this process knew of revocations when a connect started: a socket admitted
    /// on a verdict reached after a revocation of its (user, room) must not stay
    /// ([`Self::revoked_since`]).
    pub fn ticket(&self) -> Ticket {
        self.revocations.ticket()
    }

    /// True when (user, room)'s token was revoked in this process after `ticket`.
    pub fn revoked_since(&self, user_id: &str, room_id: &str, ticket: Ticket) -> bool {
        self.revocations.revoked_since(user_id, room_id, ticket)
    }

    /// Verifies a connect token through every layer.
    pub async fn authenticate(
        &self,
        jwt: &str,
    ) -> std::result::Result<(Identity, AuthPath), AuthError> {
        let started = Instant::now();
        let ticket = self.ticket();
        let result = self.authenticate_inner(jwt, ticket).await;
        let label = match &result {
            Ok((_, path)) => path.label(),
            Err(_) => "refused",
        };
        self.metrics
            .auth_duration
            .with_label_values(&[label])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    async fn authenticate_inner(
        &self,
        jwt: &str,
        ticket: Ticket,
    ) -> std::result::Result<(Identity, AuthPath), AuthError> {
        if jwt.is_empty() {
            return Err(AuthError::Missing);
        }
        let now = crate::ids::now_secs();
        let key: [u8; 32] = Sha256::digest(jwt.as_bytes()).into();
        if let Some(identity) = self.cache.get(&key, now) {
            return Ok((identity, AuthPath::Cache));
        }
        let claims = self.codec.verify(jwt)?;
        crate::wire::check_id("user_id", &claims.user_id)
            .and_then(|()| crate::wire::check_id("room_id", &claims.room_id))
            .map_err(|e| AuthError::Malformed(e.to_string()))?;
        let identity = Identity {
            user_id: claims.user_id.clone(),
            room_id: claims.room_id.clone(),
            exp: claims.exp,
        };
        let path = match self.config.token_check {
            TokenCheck::Off => AuthPath::JwtOnly,
            TokenCheck::Bcrypt => self.check_second_layer(&claims).await?,
        };
        // A revocation that came while the token was checked wins: its verdict is
        // neither cached nor used.
        if self.revoked_since(&identity.user_id, &identity.room_id, ticket) {
            return Err(AuthError::Revoked);
        }
        self.cache.insert(key, &identity, now);
        Ok((identity, path))
    }

    async fn check_second_layer(
        &self,
        claims: &Claims,
    ) -> std::result::Result<AuthPath, AuthError> {
        let Some(token) = claims.token.as_deref() else {
            return Err(AuthError::Malformed(
                "the claim `token` is missing: HERMES_TOKEN_CHECK=bcrypt checks it against the \
                 token registered for the user and room (POST /v1/tokens)"
                    .into(),
            ));
        };
        let row = self
            .registry
            .token(&claims.user_id, &claims.room_id)
            .await
            .map_err(AuthError::Unavailable)?
            .ok_or(AuthError::NoTokenRow)?;
        // Issuing again gives the same token, so a JWT issued before a revocation would
        // come back to life with the next issue: its `iat` says it is older than the row.
        if let Some(iat) = claims.iat
            && issued_before_row(iat, row.created_at)
        {
            return Err(AuthError::Revoked);
        }
        let verifier = fast_verifier(&self.config.verifier_key, token);
        if let Some(stored) = &row.fast_verifier {
            return if constant_time_eq(stored, &verifier) {
                Ok(AuthPath::FastVerifier)
            } else {
                Err(AuthError::Mismatch)
            };
        }
        let verified = self
            .bcrypt_verify(token, &row.token_hash)
            .await
            .map_err(|e| match e {
                Error::Overloaded { retry_after } => AuthError::Overloaded(retry_after.as_secs()),
                other => AuthError::Unavailable(other),
            })?;
        if !verified {
            return Err(AuthError::Mismatch);
        }
        // Later connects of this token on any replica compare the verifier instead.
        if let Err(error) = self
            .registry
            .set_fast_verifier(&claims.user_id, &claims.room_id, &row.token_hash, &verifier)
            .await
        {
            tracing::warn!(%error, "cannot store the fast verifier; the next connect will use bcrypt again");
        }
        Ok(AuthPath::Bcrypt)
    }

    /// Whether `token` matches a bcrypt `hash`, on the bounded pool.
    async fn bcrypt_verify(&self, token: &str, hash: &str) -> Result<bool> {
        let (token, hash) = (token.to_owned(), hash.to_owned());
        self.pool
            .run(move || bcrypt::verify(token, &hash).unwrap_or(false))
            .await
    }

    /// Issues a token for (user, room): the signed JWT of the token the original code
    /// makes under the server passcode (`HERMES_TOKEN_PASSCODE`), its row made sure of.
    /// The token is the same every time, so the tokens issued earlier for (user, room), and
    /// their sockets' reconnects, stay valid (decision 0026).
    pub async fn issue(
        &self,
        user_id: &str,
        room_id: &str,
        ttl: Option<Duration>,
    ) -> Result<IssuedToken> {
        crate::wire::check_id("user_id", user_id)?;
        crate::wire::check_id("room_id", room_id)?;
        let token = original_token(user_id, &self.config.token_passcode, room_id);
        let replaced = if self.config.token_check == TokenCheck::Bcrypt {
            self.register(user_id, room_id, &token).await?
        } else {
            false
        };
        let ttl = ttl.unwrap_or(self.config.token_ttl);
        let now = crate::ids::now_secs();
        let expires_at = now + ttl.as_secs();
        let jwt = self.codec.sign(&Claims {
            user_id: user_id.to_owned(),
            room_id: room_id.to_owned(),
            token: Some(token),
            exp: expires_at,
            iat: Some(now),
        })?;
        Ok(IssuedToken {
            token: jwt,
            expires_at,
            replaced,
        })
    }

    /// Makes sure the row of (user, room) holds `token`. A row that already does is left
    /// as it is (a row the original system wrote, without a verifier, is bcrypt-checked once
    /// and gets its verifier); any other row is replaced by `bcrypt(token)` with its fast
    /// verifier, and the verdicts cached for the old token are dropped. Returns whether a
    /// row of another token was replaced.
    async fn register(&self, user_id: &str, room_id: &str, token: &str) -> Result<bool> {
        let verifier = fast_verifier(&self.config.verifier_key, token);
        let existing = self.registry.token(user_id, room_id).await?;
        let replaced = existing.is_some();
        if let Some(row) = existing {
            let holds_token = match &row.fast_verifier {
                Some(stored) => constant_time_eq(stored, &verifier),
                None => {
                    self.bcrypt_verify(token, &row.token_hash).await?
                        && self
                            .registry
                            .set_fast_verifier(user_id, room_id, &row.token_hash, &verifier)
                            .await?
                }
            };
            if holds_token {
                return Ok(false);
            }
        }
        let cost = self.config.bcrypt_cost;
        let plain = token.to_owned();
        let hash = self
            .pool
            .run(move || bcrypt::hash(plain, cost))
            .await?
            .map_err(|e| Error::crypto("bcrypt failed", e))?;
        let record = TokenRecord {
            user_id: user_id.to_owned(),
            room_id: room_id.to_owned(),
            token_hash: hash,
            fast_verifier: Some(verifier),
            created_at: crate::ids::now_millis(),
        };
        self.registry.put_token(&record).await?;
        // A replaced token invalidates the verdicts cached for the old one.
        self.cache.forget(user_id, room_id);
        Ok(replaced)
    }

    /// A replacement of (user, room)'s token reached this process (another replica issued
    /// it): the verdicts cached for the old token go; connects are not refused.
    pub fn drop_cached(&self, user_id: &str, room_id: &str) -> usize {
        self.cache.forget(user_id, room_id)
    }

    /// Deletes the (user, room) token row. Returns whether one existed.
    pub async fn revoke(&self, user_id: &str, room_id: &str) -> Result<bool> {
        let existed = self.registry.delete_token(user_id, room_id).await?;
        self.forget(user_id, room_id);
        Ok(existed)
    }

    /// A revocation of (user, room)'s token reached this process: its cached verdicts
    /// go, and connects being checked now are refused ([`Self::revoked_since`]).
    pub fn forget(&self, user_id: &str, room_id: &str) -> usize {
        self.revocations.record(user_id, room_id);
        self.cache.forget(user_id, room_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::memory::MemoryRegistry;

    const SECRET: &str = "a-shared-secret-of-some-length";
    const PASSCODE: &str = "the-original-apps-passcode";

    /// How a connect was accepted, or the code of its refusal.
    fn verdict(
        result: std::result::Result<(Identity, AuthPath), AuthError>,
    ) -> std::result::Result<AuthPath, &'static str> {
        result.map(|(_, path)| path).map_err(|e| e.code())
    }

    fn config(check: TokenCheck) -> AuthConfig {
        AuthConfig {
            jwt_secret: SECRET.into(),
            algorithms: vec![Algorithm::HS512],
            leeway: Duration::from_secs(0),
            verifier_key: derive_key(SECRET.as_bytes(), b"v"),
            token_check: check,
            token_ttl: Duration::from_secs(3600),
            token_passcode: PASSCODE.into(),
            bcrypt_cost: 4,
            bcrypt_workers: 1,
            bcrypt_queue: 4,
            bcrypt_priority: BcryptPriority::Nice(0),
            cache_ttl: Duration::from_secs(60),
            cache_capacity: 100,
        }
    }

    fn authenticator(check: TokenCheck) -> (Authenticator, Arc<MemoryRegistry>) {
        let registry = Arc::new(MemoryRegistry::new());
        let auth = Authenticator::new(config(check), registry.clone(), Arc::new(Metrics::new()));
        (auth, registry)
    }

    #[tokio::test]
    async fn bcrypt_success_stores_a_fast_verifier_used_next_time() {
        let (auth, registry) = authenticator(TokenCheck::Bcrypt);
        let token = original_token("u1", "pass", "r1");
        registry
            .put_token(&TokenRecord {
                user_id: "u1".into(),
                room_id: "r1".into(),
                token_hash: bcrypt::hash(&token, 4).expect("hash"),
                fast_verifier: None,
                created_at: 0,
            })
            .await
            .expect("put");
        let jwt = auth
            .codec()
            .sign(&Claims {
                user_id: "u1".into(),
                room_id: "r1".into(),
                token: Some(token.clone()),
                exp: crate::ids::now_secs() + 600,
                iat: None,
            })
            .expect("sign");
        let (_, path) = auth.authenticate(&jwt).await.expect("accepted");
        assert_eq!(path, AuthPath::Bcrypt);
        let row = registry
            .token("u1", "r1")
            .await
            .expect("read")
            .expect("row");
        assert_eq!(
            row.fast_verifier,
            Some(fast_verifier(&auth.config.verifier_key, &token))
        );
        assert_eq!(verdict(auth.authenticate(&jwt).await), Ok(AuthPath::Cache));
        auth.forget("u1", "r1");
        assert_eq!(
            verdict(auth.authenticate(&jwt).await),
            Ok(AuthPath::FastVerifier)
        );
    }

    #[tokio::test]
    async fn second_layer_refusals() {
        let (auth, _registry) = authenticator(TokenCheck::Bcrypt);
        let issued = auth.issue("u1", "r1", None).await.expect("issued");
        assert_eq!(
            verdict(auth.authenticate(&issued.token).await),
            Ok(AuthPath::FastVerifier)
        );
        let forged = auth
            .codec()
            .sign(&Claims {
                user_id: "u1".into(),
                room_id: "r1".into(),
                token: Some("not-the-token".into()),
                exp: crate::ids::now_secs() + 600,
                iat: None,
            })
            .expect("sign");
        assert_eq!(
            verdict(auth.authenticate(&forged).await),
            Err("token_mismatch")
        );
        let without_token = auth
            .codec()
            .sign(&Claims {
                user_id: "u1".into(),
                room_id: "r1".into(),
                token: None,
                exp: crate::ids::now_secs() + 600,
                iat: None,
            })
            .expect("sign");
        assert_eq!(
            verdict(auth.authenticate(&without_token).await),
            Err("token_malformed")
        );
        assert!(auth.revoke("u1", "r1").await.expect("revoke"));
        assert_eq!(
            verdict(auth.authenticate(&issued.token).await),
            Err("token_not_registered")
        );
    }

    /// With `HERMES_TOKEN_CHECK=off` the signed claims decide: no `token` claim is needed.
    #[tokio::test]
    async fn token_check_off_trusts_the_jwt_alone() {
        let (auth, _) = authenticator(TokenCheck::Off);
        let jwt = auth
            .codec()
            .sign(&Claims {
                user_id: "u".into(),
                room_id: "r".into(),
                token: None,
                exp: crate::ids::now_secs() + 60,
                iat: None,
            })
            .expect("sign");
        assert_eq!(
            verdict(auth.authenticate(&jwt).await),
            Ok(AuthPath::JwtOnly)
        );
    }

    /// A JWT of (user, room) carrying `token`, issued `age_secs` ago (`None`: no `iat`, as
    /// the original signs them).
    fn jwt_of(auth: &Authenticator, token: &str, age_secs: Option<u64>) -> String {
        let now = crate::ids::now_secs();
        auth.codec()
            .sign(&Claims {
                user_id: "u1".into(),
                room_id: "r1".into(),
                token: Some(token.into()),
                exp: now + 600,
                iat: age_secs.map(|age| now - age),
            })
            .expect("sign")
    }

    /// A connect whose token is being checked (its bcrypt verify waits behind another job)
    /// when the revocation comes is refused, and its verdict is not cached.
    #[tokio::test]
    async fn a_revocation_during_a_connects_check_refuses_it_and_caches_nothing() {
        let (auth, registry) = authenticator(TokenCheck::Bcrypt);
        let auth = Arc::new(auth);
        let token = original_token("u", "passcode", "r");
        registry
            .put_token(&TokenRecord {
                user_id: "u".into(),
                room_id: "r".into(),
                token_hash: bcrypt::hash(&token, 4).expect("hash"),
                fast_verifier: None,
                created_at: 0,
            })
            .await
            .expect("seed");
        let jwt = auth
            .codec()
            .sign(&Claims {
                user_id: "u".into(),
                room_id: "r".into(),
                token: Some(token),
                exp: crate::ids::now_secs() + 3600,
                iat: None,
            })
            .expect("sign");

        // The pool's only thread is busy until the test says so.
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let blocker = auth
            .pool
            .submit(move || {
                let _ = started_tx.send(());
                let _ = held.recv();
            })
            .expect("queued");
        started.await.expect("the blocker runs");
        let connect = tokio::spawn({
            let (auth, jwt) = (auth.clone(), jwt.clone());
            async move { auth.authenticate(&jwt).await }
        });
        // The connect has its ticket and waits for bcrypt.
        while auth.pool.queued() == 0 {
            tokio::task::yield_now().await;
        }
        auth.forget("u", "r");
        release.send(()).expect("release");
        blocker.await.expect("the blocker ended");
        let verdict = connect.await.expect("joined");
        assert!(matches!(verdict, Err(AuthError::Revoked)), "{verdict:?}");
        // A connect that starts after the revocation is checked afresh, not from a cache.
        let (_, path) = auth.authenticate(&jwt).await.expect("a later connect");
        assert_ne!(path, AuthPath::Cache);
    }

    #[tokio::test]
    async fn issuing_again_keeps_the_earlier_tokens_of_the_user_and_room_valid() {
        let (auth, registry) = authenticator(TokenCheck::Bcrypt);
        let first = auth.issue("u1", "r1", None).await.expect("first");
        let row = registry.token("u1", "r1").await.expect("read");
        let second = auth.issue("u1", "r1", None).await.expect("second");
        // The row is left as it was: same hash, same verifier, same age.
        assert_eq!(registry.token("u1", "r1").await.expect("read"), row);
        for jwt in [&first.token, &second.token] {
            auth.forget("u1", "r1");
            assert_eq!(
                verdict(auth.authenticate(jwt).await),
                Ok(AuthPath::FastVerifier)
            );
        }
        // The token is the original's, under the server passcode.
        let claims = auth.codec().verify(&second.token).expect("claims");
        assert_eq!(claims.token, Some(original_token("u1", PASSCODE, "r1")));
        assert!(
            !first.replaced && !second.replaced,
            "nothing to tell the replicas"
        );
    }

    #[tokio::test]
    async fn issuing_over_a_row_of_another_token_says_it_replaced_it() {
        let (auth, registry) = authenticator(TokenCheck::Bcrypt);
        registry
            .put_token(&TokenRecord {
                user_id: "u2".into(),
                room_id: "r2".into(),
                token_hash: bcrypt::hash(original_token("u2", "another", "r2"), 4).expect("hash"),
                fast_verifier: None,
                created_at: 0,
            })
            .await
            .expect("seed");
        let issued = auth.issue("u2", "r2", None).await.expect("issue");
        assert!(
            issued.replaced,
            "the admin API tells every replica to drop cached verdicts"
        );
        assert!(!auth.issue("u2", "r2", None).await.expect("again").replaced);
    }

    #[tokio::test]
    async fn revoking_refuses_every_token_and_a_new_issue_does_not_revive_older_ones() {
        let (auth, registry) = authenticator(TokenCheck::Bcrypt);
        let first = auth.issue("u1", "r1", None).await.expect("first");
        let second = auth.issue("u1", "r1", None).await.expect("second");
        assert!(auth.revoke("u1", "r1").await.expect("revoke"));
        for jwt in [&first.token, &second.token] {
            assert_eq!(
                verdict(auth.authenticate(jwt).await),
                Err("token_not_registered")
            );
        }
        // Issued again: the same token, in a row written now.
        let again = auth.issue("u1", "r1", None).await.expect("again");
        let token = original_token("u1", PASSCODE, "r1");
        let row = registry
            .token("u1", "r1")
            .await
            .expect("read")
            .expect("row");
        // A JWT of the same token issued before the revocation (two minutes ago) is refused.
        let before = jwt_of(&auth, &token, Some(ROW_WRITE_GRACE.as_secs() + 60));
        assert_eq!(
            verdict(auth.authenticate(&before).await),
            Err("token_revoked")
        );
        // One issued within the grace, and the new one, connect.
        let within = jwt_of(&auth, &token, Some(ROW_WRITE_GRACE.as_secs() - 30));
        for jwt in [&within, &again.token] {
            auth.forget("u1", "r1");
            assert_eq!(
                verdict(auth.authenticate(jwt).await),
                Ok(AuthPath::FastVerifier)
            );
        }
        assert!(row.created_at >= (crate::ids::now_secs() - 5) * 1000);
    }

    /// `HERMES_TOKEN_PASSCODE` set to the original app's passcode: a row the original
    /// wrote (no verifier) is the row of the token Hermes issues; it is kept, its JWTs go on
    /// connecting, and it gets its verifier.
    #[tokio::test]
    async fn a_row_of_the_same_token_written_by_the_original_is_kept() {
        let (auth, registry) = authenticator(TokenCheck::Bcrypt);
        let token = original_token("u1", PASSCODE, "r1");
        let original = TokenRecord {
            user_id: "u1".into(),
            room_id: "r1".into(),
            token_hash: bcrypt::hash(&token, 4).expect("hash"),
            fast_verifier: None,
            created_at: 0,
        };
        registry.put_token(&original).await.expect("put");
        let issued = auth.issue("u1", "r1", None).await.expect("issued");
        let row = registry
            .token("u1", "r1")
            .await
            .expect("read")
            .expect("row");
        assert_eq!(
            (row.token_hash.as_str(), row.created_at),
            (original.token_hash.as_str(), 0)
        );
        assert_eq!(
            row.fast_verifier,
            Some(fast_verifier(&auth.config.verifier_key, &token))
        );
        for jwt in [jwt_of(&auth, &token, None), issued.token] {
            auth.forget("u1", "r1");
            assert_eq!(
                verdict(auth.authenticate(&jwt).await),
                Ok(AuthPath::FastVerifier)
            );
        }
    }

    /// A row of another token (another passcode, or one from before this version): issuing
    /// replaces it, and its JWTs are refused from then on.
    #[tokio::test]
    async fn a_row_of_another_token_is_replaced() {
        let (auth, registry) = authenticator(TokenCheck::Bcrypt);
        let other = original_token("u1", "another-passcode", "r1");
        registry
            .put_token(&TokenRecord {
                user_id: "u1".into(),
                room_id: "r1".into(),
                token_hash: bcrypt::hash(&other, 4).expect("hash"),
                fast_verifier: None,
                created_at: 0,
            })
            .await
            .expect("put");
        let old = jwt_of(&auth, &other, None);
        assert_eq!(verdict(auth.authenticate(&old).await), Ok(AuthPath::Bcrypt));
        let issued = auth.issue("u1", "r1", None).await.expect("issued");
        assert_eq!(
            verdict(auth.authenticate(&old).await),
            Err("token_mismatch")
        );
        assert_eq!(
            verdict(auth.authenticate(&issued.token).await),
            Ok(AuthPath::FastVerifier)
        );
    }

    #[test]
    fn a_jwt_is_older_than_its_row_only_beyond_the_grace() {
        let grace = ROW_WRITE_GRACE.as_secs();
        let row_written = 1_000_000 * 1000;
        assert!(!issued_before_row(1_000_000, row_written));
        assert!(!issued_before_row(1_000_000 - grace, row_written));
        assert!(issued_before_row(1_000_000 - grace - 1, row_written));
        assert!(!issued_before_row(1_000_001, row_written));
        assert!(!issued_before_row(u64::MAX, row_written));
    }
}
