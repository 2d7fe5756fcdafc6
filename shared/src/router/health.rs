//! What a router knows of the registry's health, and when it trusts the registry's
//! membership answers again after an outage.
//!
//! After an outage long enough for rows to expire (a third of the rows' TTL), the registry
//! answers before the gateways have written their rows again. Each gateway's heartbeat
//! retries every second, but its CQL driver reconnects on its own backoff (up to 10 s with
//! the scylla crate), so one gateway may be back seconds after the router is: a router that
//! trusted the registry a fixed time after its own return could send every message held
//! during a Cassandra restart to the gateways quickest to come back and acknowledge it (the
//! fault checker lost 2,264 to 4,248 that way in three full runs). So the router remembers
//! the gateways it saw live before the outage and, after it, waits for each of them to be
//! listed again (or for a full TTL, by which a gateway not back is dead by the heartbeat
//! rule), then [`REGISTRY_RECOVERY_GRACE`] more for the rows their heartbeats write after
//! their own row.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::ids::now_millis;

/// After an outage of the registry long enough for rows to expire (a third of
/// `HERMES_REGISTRY_TTL_SECONDS`), a router does not trust, for this long after the
/// registry and every gateway it saw live before the outage are back, what the registry
/// says holds a room, a user or a connection, or which gateways live: rows may have expired
/// during the outage, and a gateway writes its own row before the rows of its sockets.
/// Room, user and connection messages then fail as a transient error and are retried,
/// instead of reaching only the gateways that were quickest to come back (or being
/// acknowledged as delivered to nobody, or a live gateway's rows being deleted as a dead
/// one's).
pub const REGISTRY_RECOVERY_GRACE: Duration = Duration::from_secs(5);

/// How often, at most, a recovering router lists the live gateways to see which of those
/// it awaits are back.
const RELIST_EVERY_MS: u64 = 500;

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The registry's health as one router saw it.
pub(super) struct RegistryHealth {
    /// ms since the epoch of the first failure of the current run of failures; 0: healthy.
    pub(super) failing_since: AtomicU64,
    /// ms since the epoch until which answers are not trusted.
    pub(super) distrust_until: AtomicU64,
    /// The rows' TTL in ms: an outage of a third of it may have let rows expire.
    ttl_ms: AtomicU64,
    /// ms since the epoch of the last listing of the gateways made for a recovery.
    pub(super) last_relist: AtomicU64,
    /// While gateways are awaited after an outage: ms since the epoch after which they are
    /// no longer awaited (dead by the heartbeat rule if they are not back); 0: none is. Read
    /// by every message, so the lock is taken only while one is.
    awaited_until: AtomicU64,
    recovery: Mutex<Recovery>,
}

/// The gateways an outage may have hidden.
#[derive(Default)]
struct Recovery {
    /// The gateways seen live within a TTL before the current outage began.
    before: Vec<String>,
    /// After a long outage: those of `before` not listed since it ended.
    awaited: Vec<String>,
}

impl RegistryHealth {
    pub(super) fn new(ttl: Duration) -> Self {
        Self {
            failing_since: AtomicU64::new(0),
            distrust_until: AtomicU64::new(0),
            ttl_ms: AtomicU64::new(ms(ttl)),
            last_relist: AtomicU64::new(0),
            awaited_until: AtomicU64::new(0),
            recovery: Mutex::new(Recovery::default()),
        }
    }

    pub(super) fn set_ttl(&self, ttl: Duration) {
        self.ttl_ms.store(ms(ttl), Ordering::Relaxed);
    }

    /// The rows' TTL: how long before an outage a gateway seen live may still be alive.
    pub(super) fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed))
    }

    /// A registry call failed. True when this begins an outage: the caller then gives the
    /// gateways it saw live lately ([`Self::outage_began`]).
    pub(super) fn failed(&self) -> bool {
        self.failing_since
            .compare_exchange(0, now_millis(), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Records the gateways seen live within a TTL before the outage that just began.
    pub(super) fn outage_began(&self, seen_live: Vec<String>) {
        self.recovery.lock().before = seen_live;
    }

    /// A registry call succeeded. After an outage long enough for rows to expire, answers
    /// are not trusted for [`REGISTRY_RECOVERY_GRACE`] and until every gateway seen live
    /// before it is listed again (at most a TTL).
    pub(super) fn succeeded(&self) {
        // Every registry call of every message ends here: read before writing.
        if self.failing_since.load(Ordering::Relaxed) == 0 {
            return;
        }
        let since = self.failing_since.swap(0, Ordering::Relaxed);
        if since == 0 {
            return;
        }
        let now = now_millis();
        let ttl = self.ttl_ms.load(Ordering::Relaxed);
        let mut recovery = self.recovery.lock();
        let before = std::mem::take(&mut recovery.before);
        if now.saturating_sub(since) < ttl / 3 {
            return;
        }
        self.distrust_until
            .fetch_max(now + ms(REGISTRY_RECOVERY_GRACE), Ordering::Relaxed);
        let until = if before.is_empty() {
            0
        } else {
            now.saturating_add(ttl)
        };
        recovery.awaited = before;
        self.awaited_until.store(until, Ordering::Relaxed);
        self.last_relist.store(0, Ordering::Relaxed);
    }

    /// Whether answers are not trusted, and if so whether the caller should list the live
    /// gateways now ([`Self::listed`]) to see which of the awaited ones are back.
    pub(super) fn state(&self) -> Trust {
        let now = now_millis();
        if self.awaited_until.load(Ordering::Relaxed) != 0 {
            let mut recovery = self.recovery.lock();
            let until = self.awaited_until.load(Ordering::Relaxed);
            if until != 0 {
                if now >= until {
                    tracing::warn!(
                        gateways = ?recovery.awaited,
                        "gateways seen live before the registry's outage did not write their \
                         rows again within a TTL of its end; taken for gone"
                    );
                    recovery.awaited.clear();
                    self.awaited_until.store(0, Ordering::Relaxed);
                } else {
                    let last = self.last_relist.load(Ordering::Relaxed);
                    let claimed = now.saturating_sub(last) >= RELIST_EVERY_MS
                        && self
                            .last_relist
                            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                            .is_ok();
                    return Trust::Awaiting { relist: claimed };
                }
            }
        }
        if now < self.distrust_until.load(Ordering::Relaxed) {
            Trust::Grace
        } else {
            Trust::Trusted
        }
    }

    /// The live gateways as listed after the outage: those awaited are back. When the last
    /// one is, the grace runs again from now (its heartbeat writes its sockets' rows after
    /// its own).
    pub(super) fn listed(&self, live: &[String]) {
        let mut recovery = self.recovery.lock();
        if recovery.awaited.is_empty() {
            return;
        }
        recovery.awaited.retain(|g| !live.contains(g));
        if recovery.awaited.is_empty() {
            self.awaited_until.store(0, Ordering::Relaxed);
            self.distrust_until.fetch_max(
                now_millis() + ms(REGISTRY_RECOVERY_GRACE),
                Ordering::Relaxed,
            );
        }
    }

    /// The gateways still awaited after an outage.
    #[cfg(test)]
    pub(super) fn awaited(&self) -> Vec<String> {
        self.recovery.lock().awaited.clone()
    }

    /// Makes the wait for the awaited gateways end now, as a TTL after the outage would.
    #[cfg(test)]
    pub(super) fn awaited_for_a_ttl(&self) {
        let _recovery = self.recovery.lock();
        self.awaited_until.store(now_millis(), Ordering::Relaxed);
    }
}

/// Whether a router trusts the registry's membership answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Trust {
    Trusted,
    /// Back from a long outage less than [`REGISTRY_RECOVERY_GRACE`] ago.
    Grace,
    /// Gateways seen live before the outage are not listed again yet; `relist`: this
    /// caller lists them now (one caller per [`RELIST_EVERY_MS`]).
    Awaiting {
        relist: bool,
    },
}
