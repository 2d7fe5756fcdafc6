//! The verdict cache: recent accepted connects of this process, keyed by SHA-256 of the
//! JWT, so that a reconnect with the same token costs a hash and a map lookup.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::verdict::Identity;

struct CacheEntry {
    user_id: String,
    room_id: String,
    exp: u64,
    inserted: Instant,
}

/// Verdicts of recent connects, keyed by SHA-256 of the JWT.
pub(super) struct VerdictCache {
    entries: Mutex<HashMap<[u8; 32], CacheEntry>>,
    ttl: Duration,
    capacity: usize,
}

impl VerdictCache {
    /// Holds at most `capacity` verdicts, each for `ttl` at most (and never past the JWT's
    /// expiry); a zero capacity or TTL caches nothing.
    pub(super) fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            ttl,
            capacity,
        }
    }

    /// The cached identity for `key`, if fresh and not expired at `now_secs`.
    pub(super) fn get(&self, key: &[u8; 32], now_secs: u64) -> Option<Identity> {
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

    /// Caches a verdict; when full, expired entries go first, and if none did, nothing is
    /// cached.
    pub(super) fn insert(&self, key: [u8; 32], id: &Identity, now_secs: u64) {
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

    /// Drops the verdicts of (user, room); returns how many there were.
    pub(super) fn forget(&self, user_id: &str, room_id: &str) -> usize {
        let mut entries = self.entries.lock();
        let before = entries.len();
        entries.retain(|_, e| !(e.user_id == user_id && e.room_id == room_id));
        before - entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(user: &str, exp: u64) -> Identity {
        Identity {
            user_id: user.into(),
            room_id: "r".into(),
            exp,
        }
    }

    #[test]
    fn verdicts_expire_with_the_jwt_and_are_forgotten_per_user_and_room() {
        let cache = VerdictCache::new(Duration::from_secs(60), 10);
        cache.insert([1; 32], &identity("u1", 100), 50);
        cache.insert([2; 32], &identity("u2", 100), 50);
        assert_eq!(cache.get(&[1; 32], 99), Some(identity("u1", 100)));
        assert_eq!(cache.get(&[1; 32], 100), None, "the JWT has expired");
        assert_eq!(cache.forget("u1", "r"), 1);
        assert_eq!(cache.get(&[1; 32], 50), None);
        assert_eq!(cache.get(&[2; 32], 50), Some(identity("u2", 100)));
    }

    #[test]
    fn a_full_cache_or_a_zero_capacity_caches_nothing_more() {
        let full = VerdictCache::new(Duration::from_secs(60), 1);
        full.insert([1; 32], &identity("u1", 100), 50);
        full.insert([2; 32], &identity("u2", 100), 50);
        assert_eq!(full.get(&[2; 32], 50), None);
        assert!(full.get(&[1; 32], 50).is_some());
        let off = VerdictCache::new(Duration::from_secs(60), 0);
        off.insert([1; 32], &identity("u1", 100), 50);
        assert_eq!(off.get(&[1; 32], 50), None);
    }
}
