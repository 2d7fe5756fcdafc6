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
    use super::*;

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
