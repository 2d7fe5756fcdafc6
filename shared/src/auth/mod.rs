//! The `$connect` authorizer: JWT with pinned algorithms, then the second layer
//! (`bcrypt(token)` stored per user and room), with a fast verifier and a cache in front.
//!
//! Costs, cheapest first: a per-process cache keyed by SHA-256 of the JWT; the JWT
//! signature; one registry read of the token row whose fast verifier (an HMAC-SHA-256 of
//! the token under a server-side key that is not in the database) is compared in constant
//! time; and only when no verifier is stored yet, bcrypt on a small bounded pool of
//! threads. After a bcrypt success the verifier is written beside the hash, so later
//! connects of that token on any replica skip bcrypt.

pub mod config;

pub use config::{AuthConfig, TokenCheck};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::registry::{Registry, TokenRecord};

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

/// Who a connection belongs to, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub room_id: String,
    /// JWT expiry, seconds since the epoch.
    pub exp: u64,
}

/// How an accepted connect was verified (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthPath {
    Cache,
    JwtOnly,
    FastVerifier,
    Bcrypt,
}

impl AuthPath {
    pub fn label(self) -> &'static str {
        match self {
            AuthPath::Cache => "cache",
            AuthPath::JwtOnly => "jwt_only",
            AuthPath::FastVerifier => "fast_verifier",
            AuthPath::Bcrypt => "bcrypt",
        }
    }
}

/// Why a connect was refused. Each maps to an HTTP status and a message a developer
/// can act on; none of them contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token: pass ?token=<JWT> or Sec-WebSocket-Protocol: hermes.v1, bearer.<JWT>")]
    Missing,
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("the token's algorithm {0} is not allowed (allowed: {1})")]
    WrongAlgorithm(String, String),
    #[error("the token's signature does not match the shared secret")]
    BadSignature,
    #[error("the token has expired; request a new one")]
    Expired,
    #[error("the token has no `exp` claim; tokens must expire")]
    MissingExp,
    #[error("no token is registered for this user and room (create one with POST /v1/tokens)")]
    NoTokenRow,
    #[error("the token does not match the one registered for this user and room")]
    Mismatch,
    #[error("the Origin {0:?} is not allowed to connect")]
    OriginNotAllowed(String),
    #[error("token verification is busy; retry after {0} s")]
    Overloaded(u64),
    #[error("token verification is unavailable: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Missing
            | AuthError::Malformed(_)
            | AuthError::WrongAlgorithm(..)
            | AuthError::BadSignature
            | AuthError::Expired
            | AuthError::MissingExp => 401,
            AuthError::NoTokenRow | AuthError::Mismatch | AuthError::OriginNotAllowed(_) => 403,
            AuthError::Overloaded(_) | AuthError::Unavailable(_) => 503,
        }
    }

    /// A stable machine-readable code (error bodies and metric labels).
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::Malformed(_) => "token_malformed",
            AuthError::WrongAlgorithm(..) => "token_algorithm",
            AuthError::BadSignature => "token_signature",
            AuthError::Expired => "token_expired",
            AuthError::MissingExp => "token_no_exp",
            AuthError::NoTokenRow => "token_not_registered",
            AuthError::Mismatch => "token_mismatch",
            AuthError::OriginNotAllowed(_) => "origin_not_allowed",
            AuthError::Overloaded(_) => "overloaded",
            AuthError::Unavailable(_) => "unavailable",
        }
    }

    /// Seconds for `Retry-After`, when the refusal is temporary.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            AuthError::Overloaded(s) => Some(*s),
            AuthError::Unavailable(_) => Some(1),
            _ => None,
        }
    }
}

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

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
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
        .map_err(|e| Error::Crypto(format!("cannot sign a JWT: {e}")))
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

/// How far the bcrypt threads step back from the threads that serve sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BcryptPriority {
    /// Linux's `SCHED_IDLE` policy: a bcrypt thread runs only on a core that no other
    /// thread wants, and a socket worker that wakes up takes the core from it at once.
    Idle,
    /// A nice value (1..=19) under the normal policy; 0 leaves the threads as they are.
    Nice(i32),
}

/// Applies `priority` to the calling thread; a failure is logged, never fatal.
fn lower_own_priority(priority: BcryptPriority) {
    match priority {
        BcryptPriority::Idle => {
            use thread_priority::unix::{
                NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
                thread_native_id, thread_schedule_policy,
            };
            let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
            // The call also sets the nice value to 0, which an unprivileged thread that
            // inherited a higher one may not do; the policy is set first, and under
            // SCHED_IDLE the nice value means nothing, so the policy is what counts.
            let set = set_thread_priority_and_policy(
                thread_native_id(),
                thread_priority::ThreadPriority::Min,
                idle,
            );
            if let Err(error) = set
                && thread_schedule_policy().ok() != Some(idle)
            {
                tracing::warn!(?error, "cannot move a bcrypt thread to SCHED_IDLE");
            }
        }
        BcryptPriority::Nice(nice) if nice > 0 => {
            let me = rustix::thread::gettid();
            if let Err(error) = rustix::process::setpriority_process(Some(me), nice) {
                tracing::warn!(%error, nice, "cannot lower a bcrypt thread's priority");
            }
        }
        BcryptPriority::Nice(_) => {}
    }
}

/// A small pool of threads for bcrypt with a bounded queue: bcrypt never runs on the
/// async workers, and a full queue refuses at once instead of piling up.
pub struct BcryptPool {
    sender: std::sync::mpsc::SyncSender<Job>,
    queued: Arc<AtomicUsize>,
    workers: usize,
    capacity: usize,
}

type Job = Box<dyn FnOnce() + Send>;

impl BcryptPool {
    /// Starts `workers` threads sharing a queue of `capacity` jobs, each at `priority`.
    /// Linux schedules threads, not processes: the bcrypt threads yield to the socket
    /// workers under contention and use idle cores at full speed.
    pub fn new(workers: usize, capacity: usize, priority: BcryptPriority) -> Self {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Job>(capacity);
        let receiver = Arc::new(std::sync::Mutex::new(receiver));
        let queued = Arc::new(AtomicUsize::new(0));
        for n in 0..workers.max(1) {
            let receiver = Arc::clone(&receiver);
            let queued = Arc::clone(&queued);
            let spawned = std::thread::Builder::new()
                .name(format!("hermes-bcrypt-{n}"))
                .spawn(move || {
                    lower_own_priority(priority);
                    loop {
                        let job = match receiver.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => {
                                queued.fetch_sub(1, Ordering::Relaxed);
                                job();
                            }
                            Err(_) => return,
                        }
                    }
                });
            if let Err(error) = spawned {
                tracing::error!(%error, "cannot start a bcrypt thread");
            }
        }
        Self {
            sender,
            queued,
            workers: workers.max(1),
            capacity,
        }
    }

    /// Jobs waiting for a thread.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Runs `f` on the pool, or refuses at once when the queue is full.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let rx = self.submit(f)?;
        rx.await
            .map_err(|_| Error::Crypto("the bcrypt worker stopped".into()))
    }

    /// Queues `f`; the receiver yields its result. Refuses when the queue is full.
    pub fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<tokio::sync::oneshot::Receiver<T>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.sender.try_send(job).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            // About 60 ms per verify at cost 10: tell the client when the queue drains.
            let secs = ((self.capacity as u64 * 60) / (self.workers as u64 * 1000)).max(1);
            return Err(Error::Overloaded {
                retry_after: Duration::from_secs(secs),
            });
        }
        Ok(rx)
    }
}

struct CacheEntry {
    user_id: String,
    room_id: String,
    exp: u64,
    inserted: Instant,
}

/// Verdicts of recent connects, keyed by SHA-256 of the JWT.
struct VerdictCache {
    entries: Mutex<HashMap<[u8; 32], CacheEntry>>,
    ttl: Duration,
    capacity: usize,
}

impl VerdictCache {
    fn get(&self, key: &[u8; 32], now_secs: u64) -> Option<Identity> {
        let entries = self.entries.lock();
        let e = entries.get(key)?;
        if e.inserted.elapsed() > self.ttl || e.exp <= now_secs {
            return None;
        }
        Some(Identity {
            user_id: e.user_id.clone(),
            room_id: e.room_id.clone(),
            exp: e.exp,
        })
    }

    fn insert(&self, key: [u8; 32], id: &Identity, now_secs: u64) {
        if self.capacity == 0 || self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock();
        if entries.len() >= self.capacity {
            let ttl = self.ttl;
            entries.retain(|_, e| e.inserted.elapsed() <= ttl && e.exp > now_secs);
            if entries.len() >= self.capacity {
                return;
            }
        }
        entries.insert(
            key,
            CacheEntry {
                user_id: id.user_id.clone(),
                room_id: id.room_id.clone(),
                exp: id.exp,
                inserted: Instant::now(),
            },
        );
    }

    fn forget(&self, user_id: &str, room_id: &str) -> usize {
        let mut entries = self.entries.lock();
        let before = entries.len();
        entries.retain(|_, e| !(e.user_id == user_id && e.room_id == room_id));
        before - entries.len()
    }
}

/// A freshly issued connect token.
#[derive(Debug, Clone, Serialize)]
pub struct IssuedToken {
    /// The JWT to connect with.
    pub token: String,
    /// Expiry, seconds since the epoch.
    pub expires_at: u64,
}

/// The authorizer.
pub struct Authenticator {
    codec: JwtCodec,
    config: AuthConfig,
    registry: Arc<dyn Registry>,
    pool: BcryptPool,
    cache: VerdictCache,
    metrics: Arc<Metrics>,
}

impl Authenticator {
    pub fn new(config: AuthConfig, registry: Arc<dyn Registry>, metrics: Arc<Metrics>) -> Self {
        let codec = JwtCodec::new(&config.jwt_secret, &config.algorithms, config.leeway);
        let pool = BcryptPool::new(
            config.bcrypt_workers,
            config.bcrypt_queue,
            config.bcrypt_priority,
        );
        let cache = VerdictCache {
            entries: Mutex::new(HashMap::new()),
            ttl: config.cache_ttl,
            capacity: config.cache_capacity,
        };
        Self {
            codec,
            config,
            registry,
            pool,
            cache,
            metrics,
        }
    }

    /// The JWT codec (for the `token` command and tests).
    pub fn codec(&self) -> &JwtCodec {
        &self.codec
    }

    /// Verifies a connect token through every layer.
    pub async fn authenticate(
        &self,
        jwt: &str,
    ) -> std::result::Result<(Identity, AuthPath), AuthError> {
        let started = Instant::now();
        let result = self.authenticate_inner(jwt).await;
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
        self.cache.insert(key, &identity, now);
        Ok((identity, path))
    }

    async fn check_second_layer(
        &self,
        claims: &Claims,
    ) -> std::result::Result<AuthPath, AuthError> {
        let row = self
            .registry
            .token(&claims.user_id, &claims.room_id)
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?
            .ok_or(AuthError::NoTokenRow)?;
        let verifier = fast_verifier(&self.config.verifier_key, &claims.token);
        if let Some(stored) = &row.fast_verifier {
            return if constant_time_eq(stored, &verifier) {
                Ok(AuthPath::FastVerifier)
            } else {
                Err(AuthError::Mismatch)
            };
        }
        let token = claims.token.clone();
        let hash = row.token_hash.clone();
        self.metrics.bcrypt_queue.set(self.pool.queued() as i64 + 1);
        let verified = self
            .pool
            .run(move || bcrypt::verify(token, &hash).unwrap_or(false))
            .await
            .map_err(|e| match e {
                Error::Overloaded { retry_after } => AuthError::Overloaded(retry_after.as_secs()),
                other => AuthError::Unavailable(other.to_string()),
            })?;
        self.metrics.bcrypt_queue.set(self.pool.queued() as i64);
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

    /// Issues a token for (user, room): a random second-layer token, its bcrypt hash and
    /// fast verifier stored in the registry, and the signed JWT.
    pub async fn issue(
        &self,
        user_id: &str,
        room_id: &str,
        ttl: Option<Duration>,
    ) -> Result<IssuedToken> {
        crate::wire::check_id("user_id", user_id)?;
        crate::wire::check_id("room_id", room_id)?;
        let passcode = crate::ids::random_secret(32);
        let token = original_token(user_id, &passcode, room_id);
        if self.config.token_check == TokenCheck::Bcrypt {
            let cost = self.config.bcrypt_cost;
            let plain = token.clone();
            let hash = self
                .pool
                .run(move || bcrypt::hash(plain, cost))
                .await?
                .map_err(|e| Error::Crypto(format!("bcrypt failed: {e}")))?;
            let record = TokenRecord {
                user_id: user_id.to_owned(),
                room_id: room_id.to_owned(),
                token_hash: hash,
                fast_verifier: Some(fast_verifier(&self.config.verifier_key, &token)),
                created_at: crate::ids::now_millis(),
            };
            self.registry.put_token(&record).await?;
            // A replaced token invalidates the verdicts cached for the old one.
            self.cache.forget(user_id, room_id);
        }
        let ttl = ttl.unwrap_or(self.config.token_ttl);
        let expires_at = crate::ids::now_secs() + ttl.as_secs();
        let jwt = self.codec.sign(&Claims {
            user_id: user_id.to_owned(),
            room_id: room_id.to_owned(),
            token,
            exp: expires_at,
        })?;
        Ok(IssuedToken {
            token: jwt,
            expires_at,
        })
    }

    /// Deletes the (user, room) token row. Returns whether one existed.
    pub async fn revoke(&self, user_id: &str, room_id: &str) -> Result<bool> {
        let existed = self.registry.delete_token(user_id, room_id).await?;
        self.forget(user_id, room_id);
        Ok(existed)
    }

    /// Drops cached verdicts of (user, room) in this process.
    pub fn forget(&self, user_id: &str, room_id: &str) -> usize {
        self.cache.forget(user_id, room_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::memory::MemoryRegistry;

    const SECRET: &str = "a-shared-secret-of-some-length";

    fn config(check: TokenCheck) -> AuthConfig {
        AuthConfig {
            jwt_secret: SECRET.into(),
            algorithms: vec![Algorithm::HS512],
            leeway: Duration::from_secs(0),
            verifier_key: derive_key(SECRET.as_bytes(), b"v"),
            token_check: check,
            token_ttl: Duration::from_secs(3600),
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
    fn original_token_is_hex_sha256_of_user_passcode_room() {
        // echo -n "u1secretr1" | sha256sum
        assert_eq!(
            original_token("u1", "secret", "r1"),
            hex::encode(Sha256::digest(b"u1secretr1"))
        );
    }

    #[test]
    fn jwt_refusals_are_distinguished() {
        let codec = JwtCodec::new(SECRET, &[Algorithm::HS512], Duration::ZERO);
        let future = crate::ids::now_secs() + 600;
        let ok = jwt_with(jsonwebtoken::Algorithm::HS512, &claims(future), SECRET);
        assert_eq!(codec.verify(&ok).map(|c| c.user_id), Ok("u1".to_owned()));

        let expired = jwt_with(jsonwebtoken::Algorithm::HS512, &claims(1000), SECRET);
        assert_eq!(codec.verify(&expired), Err(AuthError::Expired));

        let wrong_key = jwt_with(
            jsonwebtoken::Algorithm::HS512,
            &claims(future),
            "another-secret-entirely",
        );
        assert_eq!(codec.verify(&wrong_key), Err(AuthError::BadSignature));

        let hs256 = jwt_with(jsonwebtoken::Algorithm::HS256, &claims(future), SECRET);
        assert!(
            matches!(codec.verify(&hs256), Err(AuthError::WrongAlgorithm(a, _)) if a == "HS256")
        );

        let no_exp = jwt_with(
            jsonwebtoken::Algorithm::HS512,
            &serde_json::json!({"user_id":"u","room_id":"r","token":"t"}),
            SECRET,
        );
        assert_eq!(codec.verify(&no_exp), Err(AuthError::MissingExp));

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
                token: token.clone(),
                exp: crate::ids::now_secs() + 600,
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
        assert_eq!(
            auth.authenticate(&jwt).await.map(|r| r.1),
            Ok(AuthPath::Cache)
        );
        auth.forget("u1", "r1");
        assert_eq!(
            auth.authenticate(&jwt).await.map(|r| r.1),
            Ok(AuthPath::FastVerifier)
        );
    }

    #[tokio::test]
    async fn second_layer_refusals() {
        let (auth, _registry) = authenticator(TokenCheck::Bcrypt);
        let issued = auth.issue("u1", "r1", None).await.expect("issued");
        assert_eq!(
            auth.authenticate(&issued.token).await.map(|r| r.1),
            Ok(AuthPath::FastVerifier)
        );
        let forged = auth
            .codec()
            .sign(&Claims {
                user_id: "u1".into(),
                room_id: "r1".into(),
                token: "not-the-token".into(),
                exp: crate::ids::now_secs() + 600,
            })
            .expect("sign");
        assert_eq!(auth.authenticate(&forged).await, Err(AuthError::Mismatch));
        assert!(auth.revoke("u1", "r1").await.expect("revoke"));
        assert_eq!(
            auth.authenticate(&issued.token).await,
            Err(AuthError::NoTokenRow)
        );
    }

    #[tokio::test]
    async fn token_check_off_trusts_the_jwt_alone() {
        let (auth, _) = authenticator(TokenCheck::Off);
        let jwt = auth
            .codec()
            .sign(&Claims {
                user_id: "u".into(),
                room_id: "r".into(),
                token: "x".into(),
                exp: crate::ids::now_secs() + 60,
            })
            .expect("sign");
        assert_eq!(
            auth.authenticate(&jwt).await.map(|r| r.1),
            Ok(AuthPath::JwtOnly)
        );
    }

    /// The scheduling policy of the calling thread: field 41 of /proc/thread-self/stat.
    fn own_policy() -> u32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
        // After the command name, in parentheses, come the fields from 3 (state) on.
        let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
            .split(' ')
            .collect();
        fields[41 - 3].parse().expect("policy")
    }

    #[test]
    fn bcrypt_threads_run_under_sched_idle_when_asked() {
        const SCHED_IDLE: u32 = 5;
        let policy_of_worker = |priority| {
            BcryptPool::new(1, 1, priority)
                .submit(own_policy)
                .expect("the worker is free")
                .blocking_recv()
                .expect("the job ran")
        };
        assert_eq!(policy_of_worker(BcryptPriority::Idle), SCHED_IDLE);
        assert_eq!(policy_of_worker(BcryptPriority::Nice(10)), own_policy());
    }

    #[test]
    fn bcrypt_threads_run_at_the_configured_nice_value() {
        let nice_of_worker = |nice| {
            BcryptPool::new(1, 1, BcryptPriority::Nice(nice))
                .submit(|| {
                    rustix::process::getpriority_process(Some(rustix::thread::gettid()))
                        .expect("getpriority")
                })
                .expect("the worker is free")
                .blocking_recv()
                .expect("the job ran")
        };
        let inherited =
            rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("own");
        assert_eq!(nice_of_worker(0), inherited);
        assert_eq!(nice_of_worker(10), inherited.max(10));
    }

    #[test]
    fn full_bcrypt_queue_refuses_at_once() {
        let pool = BcryptPool::new(1, 1, BcryptPriority::Nice(0));
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let running = pool
            .submit(move || {
                let _ = started_tx.send(());
                let _ = release_rx.recv();
            })
            .expect("the worker is free");
        started_rx.recv().expect("the worker runs the first job");
        let queued = pool.submit(|| 7).expect("one queue slot is free");
        assert!(matches!(pool.submit(|| 8), Err(Error::Overloaded { .. })));
        release_tx.send(()).expect("release");
        assert_eq!(running.blocking_recv(), Ok(()));
        assert_eq!(queued.blocking_recv(), Ok(7));
    }
}
