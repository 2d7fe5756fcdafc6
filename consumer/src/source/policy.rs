//! What both sources decide the same way: what a routing outcome means for the message at
//! its attempt (ack, retry after a delay, dead-letter with a reason), and how long to wait
//! before reconnecting or polling again after a failure.

use std::time::Duration;

use super::Outcome;

/// Reasons a message is dead-lettered (labels of `hermes_dead_letters_total`).
pub mod reason {
    /// Not a message: not JSON, a required field missing or of the wrong type.
    pub const INVALID: &str = "invalid_message";
    /// Its `data` is larger than `HERMES_MAX_MESSAGE_BYTES`.
    pub const TOO_LARGE: &str = "too_large";
    /// A gateway refused its delivery for good (400, 401, 403, 413).
    pub const REJECTED: &str = "rejected";
    /// Transient failures until the last attempt.
    pub const EXHAUSTED: &str = "attempts_exhausted";
}

/// Longest dead-letter reason carried on a dead-letter copy.
pub const MAX_REASON_CHARS: usize = 1000;

/// How often and how late a message that failed for a transient reason is delivered again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Deliveries of one message before it is dead-lettered (at least 1).
    pub max_attempts: u32,
    /// Delay before each retry; the last one repeats (at least one delay).
    pub delays: Vec<Duration>,
}

/// What the source does with a message, the outcome of its routing and its attempt weighed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Delivered: acknowledge (RabbitMQ `basic.ack`, SQS `DeleteMessage`).
    Ack,
    /// Deliver again after `delay`; `attempts` deliveries have failed so far, the last one
    /// for `reason`.
    Retry {
        delay: Duration,
        attempts: u32,
        reason: String,
    },
    /// Move it to the dead-letter queue with `reason` (at most [`MAX_REASON_CHARS`]),
    /// counted under `label` (one of [`reason`]); `attempts` deliveries were made.
    DeadLetter {
        label: &'static str,
        reason: String,
        attempts: u32,
    },
}

impl Decision {
    /// The `outcome` label of `hermes_queue_messages_total` once the decision is carried out.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Ack => "delivered",
            Decision::Retry { .. } => "retried",
            Decision::DeadLetter { .. } => "dead_lettered",
        }
    }
}

impl RetryPolicy {
    /// The backoff after failed attempt number `attempt` (1-based); the last delay repeats.
    pub fn delay(&self, attempt: u32) -> Duration {
        hermes_shared::config::retry_delay(&self.delays, attempt)
    }

    /// Weighs the routing outcome of delivery number `attempt` (1-based): a transient
    /// failure is retried until the attempt is the last one, then dead-lettered as
    /// exhausted; a message that can never be delivered (invalid, too large, rejected) is
    /// dead-lettered at once under its own label.
    pub fn decide(&self, outcome: Outcome, attempt: u32) -> Decision {
        let attempt = attempt.max(1);
        match outcome {
            Outcome::Ack => Decision::Ack,
            Outcome::DeadLetter { label, reason: why } => Decision::DeadLetter {
                label,
                reason: clip(&why),
                attempts: attempt,
            },
            Outcome::Retry { reason: why } if attempt >= self.max_attempts => {
                Decision::DeadLetter {
                    label: reason::EXHAUSTED,
                    reason: clip(&format!("{}: {why}", reason::EXHAUSTED)),
                    attempts: attempt,
                }
            }
            Outcome::Retry { reason: why } => Decision::Retry {
                delay: self.delay(attempt),
                attempts: attempt,
                reason: why,
            },
        }
    }
}

/// How logs name a message dead-lettered under `label`.
pub fn describe(label: &str) -> &'static str {
    match label {
        reason::EXHAUSTED => "a message after its last attempt",
        reason::TOO_LARGE => "a message larger than HERMES_MAX_MESSAGE_BYTES",
        reason::REJECTED => "a message a gateway refused",
        _ => "an invalid message",
    }
}

/// At most [`MAX_REASON_CHARS`] characters; never empty.
fn clip(why: &str) -> String {
    let clipped: String = why.chars().take(MAX_REASON_CHARS).collect();
    if clipped.is_empty() {
        "unknown".to_owned()
    } else {
        clipped
    }
}

/// The wait before reconnecting (or calling the broker again) after a failure: from 250 ms,
/// doubled at each failure up to 30 s, back to 250 ms after a success; each wait is jittered
/// so that consumers restarted together do not come back together.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(250);
    pub const MAX: Duration = Duration::from_secs(30);

    pub fn new() -> Self {
        Self { next: Self::FIRST }
    }

    /// The (unjittered) delay the next failure waits.
    pub fn current(&self) -> Duration {
        self.next
    }

    /// A failure: the jittered wait before the next try; the one after waits twice as long.
    pub fn failed(&mut self) -> Duration {
        let wait = jitter(self.next);
        self.next = (self.next * 2).min(Self::MAX);
        wait
    }

    /// A success: the next failure waits the least again.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// A random delay between half and all of `d`.
pub fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    half + half.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_attempts: u32, delays_ms: &[u64]) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            delays: delays_ms
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect(),
        }
    }

    #[test]
    fn the_retry_delay_follows_the_attempt_and_the_last_one_repeats() {
        let p = policy(5, &[1000, 5000, 30000]);
        assert_eq!(p.delay(0), Duration::from_secs(1));
        assert_eq!(p.delay(1), Duration::from_secs(1));
        assert_eq!(p.delay(2), Duration::from_secs(5));
        assert_eq!(p.delay(3), Duration::from_secs(30));
        assert_eq!(p.delay(9), Duration::from_secs(30));
        assert_eq!(p.delay(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn a_transient_failure_is_retried_until_the_last_attempt_then_dead_lettered_as_exhausted() {
        let p = policy(3, &[200, 400]);
        let retry = || Outcome::Retry {
            reason: "gateways did not answer: g".into(),
        };
        assert_eq!(
            p.decide(retry(), 1),
            Decision::Retry {
                delay: Duration::from_millis(200),
                attempts: 1,
                reason: "gateways did not answer: g".into()
            }
        );
        assert!(matches!(
            p.decide(retry(), 2),
            Decision::Retry { delay, attempts: 2, .. } if delay == Duration::from_millis(400)
        ));
        let last = p.decide(retry(), 3);
        assert_eq!(
            last,
            Decision::DeadLetter {
                label: reason::EXHAUSTED,
                reason: "attempts_exhausted: gateways did not answer: g".into(),
                attempts: 3
            }
        );
        assert_eq!(last.label(), "dead_lettered");
        assert!(matches!(
            p.decide(retry(), 40),
            Decision::DeadLetter { attempts: 40, .. }
        ));
    }

    #[test]
    fn an_invalid_message_is_dead_lettered_at_once_with_its_reason_clipped() {
        let p = policy(5, &[1000]);
        let long = "r".repeat(5000);
        let invalid = |reason: String| Outcome::DeadLetter {
            label: reason::INVALID,
            reason,
        };
        match p.decide(invalid(long), 1) {
            Decision::DeadLetter {
                label,
                reason,
                attempts,
            } => {
                assert_eq!((label, reason.len(), attempts), (reason::INVALID, 1000, 1));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            p.decide(invalid(String::new()), 1),
            Decision::DeadLetter { reason, .. } if reason == "unknown"
        ));
        assert_eq!(p.decide(Outcome::Ack, 7), Decision::Ack);
    }

    #[test]
    fn a_too_large_or_rejected_message_is_dead_lettered_at_once_under_its_label() {
        let p = policy(5, &[1000]);
        for label in [reason::TOO_LARGE, reason::REJECTED] {
            let outcome = Outcome::DeadLetter {
                label,
                reason: "why".into(),
            };
            assert_eq!(
                p.decide(outcome, 1),
                Decision::DeadLetter {
                    label,
                    reason: "why".into(),
                    attempts: 1
                }
            );
        }
        assert_eq!(
            describe(reason::TOO_LARGE),
            "a message larger than HERMES_MAX_MESSAGE_BYTES"
        );
        assert_eq!(describe(reason::REJECTED), "a message a gateway refused");
        assert_eq!(describe(reason::INVALID), "an invalid message");
    }

    #[test]
    fn one_attempt_allowed_dead_letters_the_first_transient_failure() {
        let p = policy(1, &[1000]);
        assert!(matches!(
            p.decide(Outcome::Retry { reason: "x".into() }, 1),
            Decision::DeadLetter {
                label: reason::EXHAUSTED,
                ..
            }
        ));
    }

    #[test]
    fn the_backoff_doubles_to_thirty_seconds_jittered_and_a_success_resets_it() {
        let mut b = Backoff::new();
        let mut expected = Backoff::FIRST;
        for _ in 0..12 {
            let wait = b.failed();
            assert!(
                wait >= expected / 2 && wait <= expected,
                "{wait:?} for {expected:?}"
            );
            expected = (expected * 2).min(Backoff::MAX);
            assert_eq!(b.current(), expected);
        }
        assert_eq!(b.current(), Backoff::MAX);
        b.reset();
        assert_eq!(b.current(), Backoff::FIRST);
    }
}
