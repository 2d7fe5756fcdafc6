//! The short history of every notification stream, and positions in it: what lets a
//! `hermes.v1` client that reconnects receive what it missed (DESIGN.md, "Recovery").
//!
//! - A **stream** is what a socket listens to: its room (`room:<room_id>`, every room
//!   message) and its user (`user:<user_id>`, the messages sent to that user with
//!   `to_user_id`, each recorded with its room). Messages addressed to connection ids have
//!   no stream: a connection id does not survive a reconnect.
//! - A **position** ([`Pos`]) is a hybrid logical clock reading of the router that wrote
//!   the entry: microseconds since the epoch, never below the router's previous reading,
//!   with the router's random writer id as a tie-break. Every router stamps each attempt
//!   at a message before it writes the entry, and writes the entry before any gateway
//!   sees the message (`Router::publish`).
//!
//! Several routers (consumers, gateways' `POST /v1/publish`, `sendMessage`) write the same
//! stream at once, so positions are not handed out by one sequencer: a notification may
//! reach a socket after one with a higher position. How late is bounded ([`Timing`]): an
//! entry's write must finish within the write timeout, each delivery carries the instant
//! it expires (`DeliverRequest::expires_at`), and a gateway drops a delivery that arrives
//! after it (the router has counted it failed and a retry stamps it anew). So no
//! notification reaches a socket later than [`Timing::lookback`] after its position, and
//! a resume reads from `since − lookback`: nothing a client has not seen can sort before
//! that. What it re-reads that the client already has (received just before `since`, or
//! again under a retry's new position) the client drops by id (`hermes.js` keeps the ids
//! it received; the protocol says so). The reasoning, with the alternatives weighed, is
//! in docs/decisions/0029-history-positions.md.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Strings, num};
use crate::error::{Error, Result};
use crate::wire::Target;

/// `HERMES_HISTORY_TTL_SECONDS` (default 300; 0 turns history off).
pub const HISTORY_TTL: &str = "HERMES_HISTORY_TTL_SECONDS";
/// `HERMES_HISTORY_MAX` (default 1000): notifications per stream a resume may replay.
pub const HISTORY_MAX: &str = "HERMES_HISTORY_MAX";

/// A position in the streams: a router's hybrid-clock reading (µs) and its writer id.
/// Ordered by time, then writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    pub micros: u64,
    pub writer: u32,
}

impl Pos {
    /// The position's text, as clients see it: 16 hex digits of time and 8 of writer, so
    /// text order is position order.
    pub fn encode(self) -> String {
        format!("{:016x}{:08x}", self.micros, self.writer)
    }

    /// Reads a position's text; `None` for anything that is not one of ours.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 24 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(Self {
            micros: u64::from_str_radix(&text[..16], 16).ok()?,
            writer: u32::from_str_radix(&text[16..], 16).ok()?,
        })
    }

    /// The first position `d` earlier than this one.
    pub fn minus(self, d: Duration) -> Self {
        Self {
            micros: self
                .micros
                .saturating_sub(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            writer: 0,
        }
    }

    /// Milliseconds since the epoch.
    pub fn millis(self) -> u64 {
        self.micros / 1000
    }
}

impl Serialize for Pos {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.encode())
    }
}

impl<'de> Deserialize<'de> for Pos {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).ok_or_else(|| serde::de::Error::custom("not a history position"))
    }
}

/// One router's clock for positions: microseconds since the epoch, strictly increasing
/// (a reading is never below the previous one, even if the wall clock steps back).
pub struct Clock {
    last: AtomicU64,
    writer: u32,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// A clock with a random writer id.
    pub fn new() -> Self {
        Self {
            last: AtomicU64::new(0),
            writer: rand::random(),
        }
    }

    /// The next position.
    pub fn next(&self) -> Pos {
        let now = now_micros();
        let mut prev = self.last.load(Ordering::Relaxed);
        loop {
            let next = now.max(prev + 1);
            match self
                .last
                .compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Pos {
                        micros: next,
                        writer: self.writer,
                    };
                }
                Err(seen) => prev = seen,
            }
        }
    }
}

/// Microseconds since the Unix epoch.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The stream a delivery target belongs to, if it has one: `room:<id>` for a room,
/// `user:<id>` for a user (in a room or not), none for connection ids.
pub fn stream_of(target: &Target) -> Option<String> {
    match target {
        Target::Room { room_id } => Some(room_stream(room_id)),
        Target::User { user_id, .. } => Some(user_stream(user_id)),
        Target::Connections(_) => None,
    }
}

/// The stream of a room.
pub fn room_stream(room_id: &str) -> String {
    format!("room:{room_id}")
}

/// The stream of a user.
pub fn user_stream(user_id: &str) -> String {
    format!("user:{user_id}")
}

/// One notification in a stream's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub stream: String,
    pub pos: Pos,
    /// The message id (what clients and gateways de-duplicate by).
    pub id: String,
    /// The room it was sent in (a user stream holds every room's messages to the user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    /// The notification as original clients receive it: `{"user_id","data"}`.
    pub frame: String,
    /// The producer's publish time, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<u64>,
}

impl HistoryEntry {
    /// The bytes of its column values in the registry's history table: the text columns,
    /// the position's clustering columns (8 bytes of time, 4 of writer) and, when set,
    /// `published_at` (8).
    pub fn column_bytes(&self) -> usize {
        self.stream.len()
            + self.id.len()
            + self.room_id.as_ref().map_or(0, String::len)
            + self.frame.len()
            + 12
            + self.published_at.map_or(0, |_| 8)
    }
}

/// What a read of one stream's history found after a position.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// The entries after the position, in position order, at most the limit asked for.
    pub entries: Vec<HistoryEntry>,
    /// False when entries after the position are no longer held (more than the limit
    /// came after it, or the oldest were trimmed): the client cannot be brought up to
    /// date from history.
    pub complete: bool,
}

/// History settings, read by every process that routes (writes) or resumes (reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistorySettings {
    /// How long an entry is kept; zero: no history.
    pub ttl: Duration,
    /// Entries per stream a resume may replay; a position further behind is not
    /// recoverable.
    pub max: usize,
}

impl HistorySettings {
    /// `HERMES_HISTORY_TTL_SECONDS` (default 300, 0: off) and `HERMES_HISTORY_MAX`
    /// (default 1000, at least 1).
    pub fn from_strings(s: &dyn Strings) -> Result<Self> {
        let ttl = Duration::from_secs(num(s, HISTORY_TTL, 300u64)?);
        let max = num(s, HISTORY_MAX, 1000usize)?;
        if max == 0 {
            return Err(Error::Config(format!(
                "{HISTORY_MAX}: must be greater than 0 (turn history off with {HISTORY_TTL}=0)"
            )));
        }
        if ttl > Duration::from_secs(7 * 24 * 3600) {
            return Err(Error::Config(format!(
                "{HISTORY_TTL}: at most a week (604800)"
            )));
        }
        Ok(Self { ttl, max })
    }

    /// True when notifications are recorded.
    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }
}

/// How late a notification can reach a socket after its position, from the deadlines
/// every step has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The history write must be done within this (the deliver timeout).
    pub write: Duration,
    /// A delivery expires this long after the write's deadline (the router's outer
    /// deadline: the deliver timeout plus 500 ms).
    pub deliver: Duration,
}

/// What the clocks of two Hermes processes may differ by, and a scheduler be late by.
pub const CLOCK_ALLOWANCE: Duration = Duration::from_secs(1);

impl Timing {
    /// The timing of a deployment whose deliver timeout is `deliver_timeout`.
    pub fn new(deliver_timeout: Duration) -> Self {
        Self {
            write: deliver_timeout,
            deliver: deliver_timeout + Duration::from_millis(500),
        }
    }

    /// When a delivery of a notification stamped at `pos` expires, ms since the epoch: a
    /// gateway drops it if it arrives later than this (plus [`CLOCK_ALLOWANCE`]).
    pub fn expires_at(&self, pos: Pos) -> u64 {
        pos.millis() + u64::try_from((self.write + self.deliver).as_millis()).unwrap_or(u64::MAX)
    }

    /// The longest a notification can reach a socket after its position: the write, the
    /// delivery, and the clock allowance twice (the router's clock against the gateway's,
    /// and a late scheduler). A resume reads this far back from its position.
    pub fn lookback(&self) -> Duration {
        self.write + self.deliver + CLOCK_ALLOWANCE * 2
    }
}

/// What a resuming socket is sent: the entries of its streams after `since − lookback`,
/// the user stream's only for its room, in position order, each id once.
pub fn replay(pages: Vec<HistoryPage>, room_id: &str) -> Vec<HistoryEntry> {
    let mut entries: Vec<HistoryEntry> = pages
        .into_iter()
        .flat_map(|p| p.entries)
        .filter(|e| e.room_id.as_deref().is_none_or(|r| r == room_id))
        .collect();
    entries.sort_by_key(|e| e.pos);
    let mut seen = std::collections::HashSet::new();
    entries.retain(|e| seen.insert(e.id.clone()));
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A client's `since` is the text of a position: it reads back as the same position,
        /// and text order is position order (clients and tests may compare the strings).
        #[test]
        fn a_positions_text_reads_back_as_it_and_sorts_as_it(
            a in (any::<u64>(), any::<u32>()),
            b in (any::<u64>(), any::<u32>()),
        ) {
            let (a, b) = (Pos { micros: a.0, writer: a.1 }, Pos { micros: b.0, writer: b.1 });
            prop_assert_eq!(Pos::parse(&a.encode()), Some(a));
            prop_assert_eq!(a.encode().cmp(&b.encode()), a.cmp(&b));
        }

        /// Anything else a client sends as `since` is not a position, and never a panic.
        #[test]
        fn text_that_is_not_a_position_is_refused(
            text in prop_oneof!["\\PC{0,30}", "[0-9a-fA-Fg ]{23,25}", "[0-9a-f\u{e9}]{22,24}"],
        ) {
            if let Some(pos) = Pos::parse(&text) {
                prop_assert_eq!(pos.encode(), text.to_ascii_lowercase());
            }
        }
    }

    fn entry(stream: &str, micros: u64, id: &str, room: Option<&str>) -> HistoryEntry {
        HistoryEntry {
            stream: stream.into(),
            pos: Pos { micros, writer: 1 },
            id: id.into(),
            room_id: room.map(str::to_owned),
            frame: "{}".into(),
            published_at: None,
        }
    }

    #[test]
    fn column_bytes_count_every_stored_value() {
        // 6 + 3 + 2 text bytes, the position's 12.
        let bare = entry("user:u", 1, "m-1", None);
        assert_eq!(bare.column_bytes(), 6 + 3 + 2 + 12);
        let full = HistoryEntry {
            room_id: Some("lobby".into()),
            published_at: Some(1),
            ..bare.clone()
        };
        assert_eq!(full.column_bytes(), bare.column_bytes() + 5 + 8);
    }

    #[test]
    fn positions_round_trip_as_text_and_sort_as_text() {
        let a = Pos {
            micros: 1_700_000_000_000_000,
            writer: 0xdead_beef,
        };
        let b = Pos {
            micros: 1_700_000_000_000_001,
            writer: 1,
        };
        assert_eq!(Pos::parse(&a.encode()), Some(a));
        assert!(a < b && a.encode() < b.encode());
        for foreign in [
            "",
            "12",
            "zzzzzzzzzzzzzzzzzzzzzzzz",
            "0000000000000000000000001",
        ] {
            assert_eq!(Pos::parse(foreign), None, "{foreign:?}");
        }
    }

    #[test]
    fn a_clock_never_repeats_or_goes_back() {
        let clock = Clock::new();
        let mut prev = clock.next();
        for _ in 0..10_000 {
            let next = clock.next();
            assert!(next > prev);
            prev = next;
        }
    }

    #[test]
    fn the_lookback_covers_the_write_and_the_delivery_deadline() {
        let t = Timing::new(Duration::from_secs(2));
        let pos = Pos {
            micros: 10_000_000,
            writer: 0,
        };
        assert_eq!(t.expires_at(pos), 10_000 + 4_500);
        assert_eq!(t.lookback(), Duration::from_millis(6_500));
        assert!(
            Duration::from_millis(t.expires_at(pos) - pos.millis()) + CLOCK_ALLOWANCE
                < t.lookback(),
            "a delivery that is not dropped arrives within the lookback"
        );
    }

    #[test]
    fn a_replay_merges_streams_in_order_keeps_the_room_and_each_id_once() {
        let room = HistoryPage {
            entries: vec![
                entry("room:r", 10, "a", None),
                entry("room:r", 30, "c", None),
                entry("room:r", 50, "c", None), // a retry's new position
            ],
            complete: true,
        };
        let user = HistoryPage {
            entries: vec![
                entry("user:u", 20, "b", Some("r")),
                entry("user:u", 25, "elsewhere", Some("other")),
            ],
            complete: true,
        };
        let ids: Vec<String> = replay(vec![room, user], "r")
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }

    #[test]
    fn history_settings_are_validated() {
        use std::collections::HashMap;
        let off = HashMap::from([(HISTORY_TTL, "0")]);
        assert!(
            !HistorySettings::from_strings(&off)
                .expect("valid")
                .enabled()
        );
        let defaults = HistorySettings::from_strings(&HashMap::<&str, &str>::new()).expect("ok");
        assert_eq!(defaults.ttl, Duration::from_secs(300));
        assert_eq!(defaults.max, 1000);
        let zero_max = HashMap::from([(HISTORY_MAX, "0")]);
        assert!(HistorySettings::from_strings(&zero_max).is_err());
    }
}
