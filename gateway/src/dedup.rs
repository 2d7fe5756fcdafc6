//! The message ids this gateway delivered lately, so that a redelivery does not push twice.
//!
//! An id is remembered per stream (a room, a user in a room, a set of connections), so the
//! same id reused for another room is a new message, and for `window`: at least as long as
//! the longest path by which a queue can hand the same message over again (retry delays,
//! SQS visibility timeouts, attempts: `hermes_shared::config::Redelivery::window`). The
//! memory is bounded: at most `max` ids, each kept as a 64-bit keyed hash of its stream and
//! id (about 40 bytes with the index), the oldest forgotten first when the bound is reached
//! before the window ends (`hermes_dedup_evictions_total` counts those: a guarantee cut
//! short, which says `HERMES_DEDUP_WINDOW` is too small for the message rate).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use hermes_shared::wire::Target;

/// What [`SeenIds::check_and_insert`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time within the window: now remembered.
    New,
    /// Delivered here before, within the window.
    Duplicate,
}

/// Recently delivered (stream, id) pairs, bounded in time and number.
pub struct SeenIds {
    hasher: std::collections::hash_map::RandomState,
    /// Key → the instant it expires, in milliseconds since `start`.
    seen: HashMap<u64, u64>,
    /// Keys in the order they were remembered, with the expiry they were remembered with
    /// (a key forgotten and remembered again has a newer entry further back).
    order: VecDeque<(u64, u64)>,
    window_ms: u64,
    max: usize,
    start: Instant,
    /// Keys forgotten before their window ended because `max` was reached.
    pub evicted: u64,
}

/// The key of one message id in one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(u64);

impl SeenIds {
    /// Remembers ids for `window`, at most `max` of them (0: remembers nothing).
    pub fn new(window: Duration, max: usize) -> Self {
        Self {
            hasher: std::collections::hash_map::RandomState::new(),
            seen: HashMap::new(),
            order: VecDeque::new(),
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            max,
            start: Instant::now(),
            evicted: 0,
        }
    }

    /// The key of `id` delivered to `target`: the stream it belongs to (the room; the user
    /// and room; the connections) and the id.
    pub fn key(&self, target: &Target, id: &str) -> Key {
        let mut h = self.hasher.build_hasher();
        match target {
            Target::Room { room_id } => {
                h.write_u8(b'r');
                h.write(room_id.as_bytes());
            }
            Target::User { user_id, room_id } => {
                h.write_u8(b'u');
                h.write(user_id.as_bytes());
                h.write_u8(0xff);
                h.write(room_id.as_deref().unwrap_or_default().as_bytes());
            }
            Target::Connections(ids) => {
                h.write_u8(b'c');
                for c in ids {
                    h.write(c.as_bytes());
                    h.write_u8(0xff);
                }
            }
        }
        // 0xff never occurs in UTF-8: the parts cannot run into each other.
        h.write_u8(0xff);
        h.write(id.as_bytes());
        Key(h.finish())
    }

    /// Number of keys remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Whether `key` was delivered within the window; remembers it if not.
    pub fn check_and_insert(&mut self, key: Key) -> Seen {
        self.check_and_insert_at(key, Instant::now())
    }

    fn check_and_insert_at(&mut self, key: Key, now: Instant) -> Seen {
        if self.max == 0 {
            return Seen::New;
        }
        let now_ms = self.millis(now);
        self.expire(now_ms);
        if self.seen.get(&key.0).is_some_and(|&until| until > now_ms) {
            return Seen::Duplicate;
        }
        while self.seen.len() >= self.max {
            let Some((old, until)) = self.order.pop_front() else {
                break;
            };
            if self.seen.get(&old) == Some(&until) {
                self.seen.remove(&old);
                self.evicted += 1;
            }
        }
        let until = now_ms.saturating_add(self.window_ms);
        self.seen.insert(key.0, until);
        self.order.push_back((key.0, until));
        Seen::New
    }

    /// Forgets a key just remembered (the message reached no socket here: a retry may reach
    /// sockets that arrive meanwhile). Its entry in the order is dropped when it expires.
    pub fn forget(&mut self, key: Key) {
        self.seen.remove(&key.0);
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some(&(key, until)) = self.order.front() {
            if until > now_ms {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&key) == Some(&until) {
                self.seen.remove(&key);
            }
        }
        // Entries of forgotten keys wait in `order` until they expire; keep their share
        // bounded too.
        if self.order.len() > self.max.saturating_mul(2).max(1024) {
            let seen = &self.seen;
            self.order
                .retain(|(key, until)| seen.get(key).is_some_and(|u| u == until));
        }
    }

    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.start).as_millis()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(r: &str) -> Target {
        Target::Room { room_id: r.into() }
    }

    #[test]
    fn a_redelivery_within_the_window_is_a_duplicate_and_after_it_is_new() {
        let mut ids = SeenIds::new(Duration::from_secs(60), 1000);
        let t0 = Instant::now();
        let k = ids.key(&room("r"), "m-1");
        assert_eq!(ids.check_and_insert_at(k, t0), Seen::New);
        assert_eq!(
            ids.check_and_insert_at(k, t0 + Duration::from_secs(59)),
            Seen::Duplicate
        );
        assert_eq!(
            ids.check_and_insert_at(k, t0 + Duration::from_secs(61)),
            Seen::New,
            "the window is over"
        );
    }

    #[test]
    fn the_window_is_time_not_a_count_of_later_ids() {
        // Today's failure: 4,096 later ids pushed the first one out within a second.
        let mut ids = SeenIds::new(Duration::from_secs(300), 1_000_000);
        let t0 = Instant::now();
        let first = ids.key(&room("r"), "first");
        assert_eq!(ids.check_and_insert_at(first, t0), Seen::New);
        for n in 0..50_000 {
            let k = ids.key(&room("r"), &format!("m-{n}"));
            assert_eq!(ids.check_and_insert_at(k, t0), Seen::New);
        }
        assert_eq!(
            ids.check_and_insert_at(first, t0 + Duration::from_secs(36)),
            Seen::Duplicate,
            "a retry 36 s later is still recognised"
        );
    }

    #[test]
    fn the_same_id_in_another_stream_is_another_message() {
        let mut ids = SeenIds::new(Duration::from_secs(60), 1000);
        let t0 = Instant::now();
        let targets = [
            room("a"),
            room("b"),
            Target::User {
                user_id: "u".into(),
                room_id: Some("a".into()),
            },
            Target::User {
                user_id: "u".into(),
                room_id: Some("b".into()),
            },
            Target::Connections(vec!["c1".into()]),
            Target::Connections(vec!["c2".into()]),
        ];
        for t in &targets {
            assert_eq!(ids.check_and_insert_at(ids.key(t, "same"), t0), Seen::New);
        }
        for t in &targets {
            assert_eq!(
                ids.check_and_insert_at(ids.key(t, "same"), t0),
                Seen::Duplicate
            );
        }
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_go_first() {
        let mut ids = SeenIds::new(Duration::from_secs(600), 100);
        let t0 = Instant::now();
        let keys: Vec<Key> = (0..150)
            .map(|n| ids.key(&room("r"), &format!("m-{n}")))
            .collect();
        for k in &keys {
            ids.check_and_insert_at(*k, t0);
        }
        assert_eq!(ids.len(), 100);
        assert_eq!(ids.evicted, 50);
        assert_eq!(ids.check_and_insert_at(keys[149], t0), Seen::Duplicate);
        assert_eq!(
            ids.check_and_insert_at(keys[0], t0),
            Seen::New,
            "evicted early"
        );
    }

    #[test]
    fn a_forgotten_id_is_new_again_and_its_old_entry_does_not_expire_the_new_one() {
        let mut ids = SeenIds::new(Duration::from_secs(10), 1000);
        let t0 = Instant::now();
        let k = ids.key(&room("r"), "m");
        assert_eq!(ids.check_and_insert_at(k, t0), Seen::New);
        ids.forget(k);
        // Remembered again 5 s later: its first entry expires at 10 s, the new one at 15 s.
        assert_eq!(
            ids.check_and_insert_at(k, t0 + Duration::from_secs(5)),
            Seen::New
        );
        assert_eq!(
            ids.check_and_insert_at(k, t0 + Duration::from_secs(12)),
            Seen::Duplicate,
            "the stale entry's expiry did not take the new one with it"
        );
    }

    #[test]
    fn a_zero_bound_remembers_nothing() {
        let mut ids = SeenIds::new(Duration::from_secs(10), 0);
        let k = ids.key(&room("r"), "m");
        assert_eq!(ids.check_and_insert(k), Seen::New);
        assert_eq!(ids.check_and_insert(k), Seen::New);
    }
}
