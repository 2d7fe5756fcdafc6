//! Revocations this process has seen lately, so that a revoke wins against a connect that
//! was being checked when it came.
//!
//! A connect takes a [`Ticket`] before it reads anything, and asks
//! [`Revocations::revoked_since`] twice: before its verdict is cached, and once its socket
//! is in the hub. A revocation is recorded before the hub closes the (user, room)'s
//! sockets. So whichever comes second sees the other: the revoke finds the socket in the
//! hub and closes it, or the connect finds the revocation and refuses itself. Records are
//! kept for [`KEEP`], longer than any connect takes to be checked (its bcrypt queue and
//! registry reads are bounded far below that).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long a revocation is remembered.
pub const KEEP: Duration = Duration::from_secs(600);

/// At most this many revocations are remembered (the oldest go first).
const MAX: usize = 100_000;

/// What a connect knew of revocations when it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// Recent revocations by (user, room).
#[derive(Default)]
pub struct Revocations {
    seq: AtomicU64,
    recent: Mutex<HashMap<(String, String), (u64, Instant)>>,
}

impl Revocations {
    /// A ticket for a connect starting now.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.seq.load(Ordering::SeqCst))
    }

    /// Records that (user, room)'s token was revoked.
    pub fn record(&self, user_id: &str, room_id: &str) {
        let now = Instant::now();
        let mut recent = self.recent.lock();
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        if recent.len() >= MAX {
            recent.retain(|_, (_, at)| now.duration_since(*at) < KEEP);
            if recent.len() >= MAX
                && let Some(oldest) = recent
                    .iter()
                    .min_by_key(|(_, (s, _))| *s)
                    .map(|(k, _)| k.clone())
            {
                recent.remove(&oldest);
            }
        }
        recent.insert((user_id.to_owned(), room_id.to_owned()), (seq, now));
    }

    /// True when (user, room)'s token was revoked after `ticket` was taken.
    pub fn revoked_since(&self, user_id: &str, room_id: &str, ticket: Ticket) -> bool {
        self.recent
            .lock()
            .get(&(user_id.to_owned(), room_id.to_owned()))
            .is_some_and(|(seq, at)| *seq > ticket.0 && at.elapsed() < KEEP)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{
        Algorithm, AuthConfig, AuthError, AuthPath, Authenticator, BcryptPriority, Claims,
        TokenCheck, derive_key, original_token,
    };
    use super::*;
    use crate::metrics::Metrics;
    use crate::registry::memory::MemoryRegistry;
    use crate::registry::{Registry, TokenRecord};

    /// A connect whose token is being checked (its bcrypt verify waits behind another job)
    /// when the revocation comes is refused, and its verdict is not cached.
    #[tokio::test]
    async fn a_revocation_during_a_connects_check_refuses_it_and_caches_nothing() {
        let secret = "a-shared-secret-of-some-length";
        let registry = Arc::new(MemoryRegistry::new());
        let config = AuthConfig {
            jwt_secret: secret.into(),
            algorithms: vec![Algorithm::HS512],
            leeway: Duration::from_secs(0),
            verifier_key: derive_key(secret.as_bytes(), b"v"),
            token_check: TokenCheck::Bcrypt,
            token_ttl: Duration::from_secs(3600),
            bcrypt_cost: 4,
            bcrypt_workers: 1,
            bcrypt_queue: 4,
            bcrypt_priority: BcryptPriority::Nice(0),
            cache_ttl: Duration::from_secs(60),
            cache_capacity: 100,
            token_passcode: "passcode".into(),
        };
        let auth = Arc::new(Authenticator::new(
            config,
            registry.clone(),
            Arc::new(Metrics::new()),
        ));
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
                token,
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

    #[test]
    fn a_revocation_after_the_ticket_is_seen_and_one_before_is_not() {
        let r = Revocations::default();
        r.record("u", "r");
        let ticket = r.ticket();
        assert!(
            !r.revoked_since("u", "r", ticket),
            "revoked before the connect"
        );
        r.record("u", "other");
        assert!(!r.revoked_since("u", "r", ticket), "another room");
        r.record("u", "r");
        assert!(r.revoked_since("u", "r", ticket));
        assert!(!r.revoked_since("u", "r", r.ticket()), "a later connect");
    }
}
