//! When a gateway writes its rows again.
//!
//! A gateway writes a connection row on connect, a room or user edge when its first socket
//! of that room or user arrives, and deletes them when they go. Their TTL
//! (`HERMES_REGISTRY_ROW_TTL_SECONDS`, hours) is only a safety net: liveness is the
//! gateway's heartbeat row. For a socket that stays open longer than that TTL, the row is
//! written again once per [`row_period`] (half the row TTL), each key at its own phase in
//! the period ([`stable_hash`] of the key), so that a million sockets opened in the same
//! minute are renewed spread over the whole period, never all at once.
//!
//! The heartbeat asks, on each pass, for the keys whose turn fell between its last
//! successful pass and now ([`due`]): a failed pass leaves them for the next one. A row is
//! written at the latest one period plus one heartbeat after its previous write, and lives
//! two periods: a whole period of margin. A pass that comes after the gateway row may have
//! lapsed (a registry outage, a process stopped for longer than
//! [`LAPSE_HEARTBEATS`] intervals) writes every row ([`rewrite_all`]): routers may have
//! taken the gateway for dead meanwhile and deleted rows that name it.

use std::time::Duration;

use super::heartbeat_interval;

/// FNV-1a over the key's bytes: the same value in every process and every build. The
/// index shard of a key ([`super::scylla`]) is computed by the gateway that writes the row
/// and by the router or reaper that deletes it; the refresh phase only by the gateway.
pub fn stable_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// How often each row is written again: half its TTL.
pub fn row_period(row_ttl: Duration) -> Duration {
    row_ttl / 2
}

/// The smallest row TTL, in heartbeat TTLs: a row's period must leave room for a
/// heartbeat's delay and a lapsed heartbeat's full rewrite.
pub const MIN_ROW_TTL_PER_TTL: u32 = 2;

/// Whether `key`'s turn comes in `(after_ms, upto_ms]` (milliseconds since the epoch),
/// its turns being at `stable_hash(key) % period_ms + k * period_ms`. Every key is due
/// when the window is a period or longer.
pub fn due(key: &str, after_ms: u64, upto_ms: u64, period_ms: u64) -> bool {
    if upto_ms <= after_ms {
        return false;
    }
    if period_ms == 0 || upto_ms - after_ms >= period_ms {
        return true;
    }
    let phase = stable_hash(key) % period_ms;
    // Turns at or before t: t + period - phase never underflows.
    let turns = |t: u64| (t.saturating_add(period_ms - phase)) / period_ms;
    turns(upto_ms) > turns(after_ms)
}

/// Missed heartbeats after which the next pass writes every row again.
pub const LAPSE_HEARTBEATS: u32 = 2;

/// Whether a pass `since_last_ok` after the last successful one must write every row: the
/// gateway row written then had less than a heartbeat left, so a router may have found it
/// gone and deleted rows that name the gateway.
pub fn rewrite_all(since_last_ok: Duration, ttl: Duration) -> bool {
    since_last_ok >= heartbeat_interval(ttl) * LAPSE_HEARTBEATS
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60_000;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("conn-{i:06}")).collect()
    }

    /// Consecutive passes every heartbeat: each key is due exactly once per period, at its
    /// own time, and the turns of many keys are spread over the period.
    #[test]
    fn every_key_is_due_once_per_period_spread_over_the_period() {
        let period = 60 * MINUTE;
        let beat = 10_000;
        let start = 1_765_000_000_000;
        let keys = keys(10_000);
        let mut count = vec![0u32; keys.len()];
        let mut per_pass = Vec::new();
        let mut t = start;
        while t < start + period {
            let mut n = 0;
            for (i, key) in keys.iter().enumerate() {
                if due(key, t, t + beat, period) {
                    count[i] += 1;
                    n += 1;
                }
            }
            per_pass.push(n);
            t += beat;
        }
        assert!(count.iter().all(|c| *c == 1), "each key once per period");
        // 360 passes, 10,000 keys: about 28 per pass; none is a burst.
        let most = per_pass.iter().max().copied().unwrap_or(0);
        assert!(most <= 80, "the busiest pass renews {most} rows");
    }

    /// A failed pass leaves its keys to the next successful one, which looks back to the
    /// last success; a window of a period or more renews everything.
    #[test]
    fn a_key_whose_turn_fell_in_a_failed_pass_is_due_in_the_next() {
        let period = 60 * MINUTE;
        let key = "conn-1";
        let phase = stable_hash(key) % period;
        let turn = 1_765_000_000_000 / period * period + period + phase;
        // Passes at turn - 5 s (ok), turn + 5 s (failed), turn + 15 s.
        assert!(!due(key, turn - 15_000, turn - 5_000, period));
        assert!(due(key, turn - 5_000, turn + 5_000, period));
        assert!(due(key, turn - 5_000, turn + 15_000, period));
        // Once done, not again until the next period.
        assert!(!due(key, turn + 5_000, turn + period - 1, period));
        assert!(due(key, turn + 5_000, turn + period, period));
        assert!(due("any", 0, period, period));
        assert!(!due("any", 5, 5, period));
    }

    /// A row written at any time is written again within a period and a heartbeat, so it
    /// never comes within half its TTL of expiring.
    #[test]
    fn a_row_is_renewed_long_before_its_ttl() {
        let row_ttl = Duration::from_secs(6 * 3600);
        let period = u64::try_from(row_period(row_ttl).as_millis()).expect("ms");
        let beat = 10_000;
        for key in keys(200) {
            let written = 1_765_000_000_000 + stable_hash(&key) % period;
            // Passes every heartbeat from the write on: the first one due.
            let mut t = written;
            while !due(&key, t, t + beat, period) {
                t += beat;
            }
            let renewed = t + beat - written;
            assert!(
                renewed <= period + beat,
                "{key}: renewed {renewed} ms after its write"
            );
        }
    }

    #[test]
    fn every_row_is_written_again_once_the_gateway_row_may_have_lapsed() {
        let ttl = Duration::from_secs(30);
        assert!(!rewrite_all(Duration::from_secs(10), ttl));
        assert!(!rewrite_all(Duration::from_secs(19), ttl));
        assert!(rewrite_all(Duration::from_secs(20), ttl));
        assert!(rewrite_all(Duration::from_secs(3600), ttl));
    }

    /// The shard of a key is part of the stored data: the hash must never change.
    #[test]
    fn the_stable_hash_is_fnv_1a() {
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(stable_hash("foobar"), 0x8594_4171_f739_67e8);
    }
}
