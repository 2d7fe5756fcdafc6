//! One circuit breaker per gateway: a gateway that keeps failing deliveries (no answer in
//! time, connection refused or broken, a server error) stops being sent to for a while, so
//! a frozen or overloaded gateway costs each message that targets it one fast failure
//! instead of a deliver timeout and a slot of the consumer's concurrency.
//!
//! - closed: deliveries go out; [`FAILURES_TO_OPEN`] failures in a row open it.
//! - open: deliveries fail at once, for a cool-down that starts at [`FIRST_COOL_DOWN`] and
//!   doubles each time a probe fails, up to [`MAX_COOL_DOWN`].
//! - half-open: after the cool-down, one delivery goes out as a probe while the others
//!   still fail at once; its success closes the circuit, its failure opens it again. A probe
//!   that never reports (its caller gave up) lets another through after `probe_limit`.
//!
//! Only a delivery's own outcome counts: a gateway that answers, whatever it answers about
//! its sockets, is healthy.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// Failures in a row that open a gateway's circuit.
pub const FAILURES_TO_OPEN: u32 = 3;
/// How long a circuit stays open the first time.
pub const FIRST_COOL_DOWN: Duration = Duration::from_secs(1);
/// The longest a circuit stays open before the next probe.
pub const MAX_COOL_DOWN: Duration = Duration::from_secs(8);
/// Gateways with a breaker kept before the closed ones are forgotten.
const MAX_GATEWAYS: usize = 1_024;

/// How a delivery was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// The circuit is closed.
    Closed,
    /// The circuit was open long enough: this delivery is its probe.
    Probe,
}

/// Why a delivery was not let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// Failures in a row before the circuit opened.
    pub failures: u32,
    /// Until the next probe may go (zero: a probe is in flight).
    pub next_probe_in: Duration,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed,
    Open {
        until: Instant,
        cool_down: Duration,
    },
    HalfOpen {
        cool_down: Duration,
        probe_until: Instant,
    },
}

#[derive(Debug)]
struct Breaker {
    failures: u32,
    state: State,
    /// Until when an attempt that asked [`Breakers::refusing`] holds the due probe.
    probe_claimed_until: Option<Instant>,
}

/// The breakers of every gateway a router delivers to.
pub struct Breakers {
    gateways: Mutex<HashMap<String, Breaker>>,
    /// How long a probe may take before another is let through.
    probe_limit: Duration,
    metrics: Arc<Metrics>,
}

impl Breakers {
    pub fn new(probe_limit: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            gateways: Mutex::new(HashMap::new()),
            probe_limit,
            metrics,
        }
    }

    /// Whether a delivery to `gateway_id` may go out now.
    pub fn admit(&self, gateway_id: &str) -> Result<Pass, Open> {
        let now = Instant::now();
        let mut gateways = self.gateways.lock();
        let Some(b) = gateways.get_mut(gateway_id) else {
            return Ok(Pass::Closed);
        };
        let rejected = match b.state {
            State::Closed => return Ok(Pass::Closed),
            State::Open { until, cool_down } if now >= until => {
                b.state = State::HalfOpen {
                    cool_down,
                    probe_until: now + self.probe_limit,
                };
                self.set_state(gateway_id, 2);
                return Ok(Pass::Probe);
            }
            State::HalfOpen {
                cool_down,
                probe_until,
            } if now >= probe_until => {
                b.state = State::HalfOpen {
                    cool_down,
                    probe_until: now + self.probe_limit,
                };
                return Ok(Pass::Probe);
            }
            State::Open { until, .. } => Open {
                failures: b.failures,
                next_probe_in: until - now,
            },
            State::HalfOpen { .. } => Open {
                failures: b.failures,
                next_probe_in: Duration::ZERO,
            },
        };
        self.metrics
            .deliver_breaker_events
            .with_label_values(&["rejected"])
            .inc();
        Err(rejected)
    }

    /// Whether any gateway has a breaker that is not closed (or is counting failures).
    pub fn any(&self) -> bool {
        !self.gateways.lock().is_empty()
    }

    /// Whether deliveries to `gateway_id` keep failing: its circuit is not closed. Changes
    /// nothing (unlike [`Breakers::refusing`], it claims no probe).
    pub fn unreachable(&self, gateway_id: &str) -> bool {
        self.gateways
            .lock()
            .get(gateway_id)
            .is_some_and(|b| !matches!(b.state, State::Closed))
    }

    /// Whether a delivery to `gateway_id` would be refused now: its circuit is open and no
    /// probe is due, or a probe is in flight. When a probe is due, the first caller is
    /// told no (its delivery may become the probe) and the others yes for `probe_limit`:
    /// the attempts waiting for the probe do not all go ahead at once when it is due. Counts
    /// nothing.
    pub fn refusing(&self, gateway_id: &str) -> bool {
        let now = Instant::now();
        let mut gateways = self.gateways.lock();
        let Some(b) = gateways.get_mut(gateway_id) else {
            return false;
        };
        match b.state {
            State::Open { until, .. } if now < until => true,
            State::Open { .. } => {
                if b.probe_claimed_until.is_some_and(|t| now < t) {
                    return true;
                }
                b.probe_claimed_until = Some(now + self.probe_limit);
                false
            }
            State::HalfOpen { probe_until, .. } => now < probe_until,
            State::Closed => false,
        }
    }

    /// Counts deliveries not sent because their gateway's circuit is open, refused without
    /// asking [`Breakers::admit`] (a whole attempt held back: see `Router::publish_except`).
    pub fn count_rejected(&self, deliveries: usize) {
        self.metrics
            .deliver_breaker_events
            .with_label_values(&["rejected"])
            .inc_by(deliveries as u64);
    }

    /// Records what became of a delivery let through with `pass`.
    pub fn record(&self, gateway_id: &str, pass: Pass, ok: bool) {
        let mut gateways = self.gateways.lock();
        if ok {
            // Healthy: forget it (a closed breaker with no failures is no breaker).
            if gateways
                .remove(gateway_id)
                .is_some_and(|b| !matches!(b.state, State::Closed))
            {
                tracing::info!(gateway_id, "the gateway answers again; delivering to it");
                let _ = self
                    .metrics
                    .deliver_breaker_state
                    .remove_label_values(&[gateway_id]);
            }
            return;
        }
        if gateways.len() >= MAX_GATEWAYS && !gateways.contains_key(gateway_id) {
            gateways.retain(|_, b| !matches!(b.state, State::Closed));
        }
        let b = gateways.entry(gateway_id.to_owned()).or_insert(Breaker {
            failures: 0,
            state: State::Closed,
            probe_claimed_until: None,
        });
        let now = Instant::now();
        match (b.state, pass) {
            (State::Closed, _) => {
                b.failures += 1;
                if b.failures >= FAILURES_TO_OPEN {
                    self.open(gateway_id, b, now, FIRST_COOL_DOWN);
                }
            }
            (State::HalfOpen { cool_down, .. }, Pass::Probe) => {
                b.failures += 1;
                self.open(gateway_id, b, now, (cool_down * 2).min(MAX_COOL_DOWN));
            }
            // A delivery that went out before the circuit opened, failing late: the circuit
            // is already open (or probing) for it.
            (State::Open { .. } | State::HalfOpen { .. }, _) => {}
        }
    }

    fn open(&self, gateway_id: &str, b: &mut Breaker, now: Instant, cool_down: Duration) {
        b.state = State::Open {
            until: now + cool_down,
            cool_down,
        };
        b.probe_claimed_until = None;
        self.set_state(gateway_id, 1);
        self.metrics
            .deliver_breaker_events
            .with_label_values(&["opened"])
            .inc();
        tracing::warn!(
            gateway_id,
            failures = b.failures,
            probe_in_ms = cool_down.as_millis() as u64,
            "deliveries to the gateway keep failing; not sending to it until a probe succeeds"
        );
    }

    fn set_state(&self, gateway_id: &str, state: i64) {
        self.metrics
            .deliver_breaker_state
            .with_label_values(&[gateway_id])
            .set(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers() -> Breakers {
        Breakers::new(Duration::from_secs(3), Arc::new(Metrics::new()))
    }

    fn fail(b: &Breakers, times: u32) {
        for _ in 0..times {
            let pass = b.admit("g").expect("let through");
            b.record("g", pass, false);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failures_in_a_row_open_the_circuit_and_a_success_between_them_resets_the_count() {
        let b = breakers();
        fail(&b, FAILURES_TO_OPEN - 1);
        b.record("g", Pass::Closed, true);
        fail(&b, FAILURES_TO_OPEN - 1);
        assert_eq!(b.admit("g"), Ok(Pass::Closed), "a success reset the count");
        b.record("g", Pass::Closed, false);
        let open = b.admit("g").expect_err("open after failures in a row");
        assert_eq!(open.failures, FAILURES_TO_OPEN);
        assert_eq!(open.next_probe_in, FIRST_COOL_DOWN);
        assert_eq!(b.admit("other"), Ok(Pass::Closed), "per gateway");
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_cool_down_one_probe_goes_and_its_success_closes_the_circuit() {
        let b = breakers();
        fail(&b, FAILURES_TO_OPEN);
        tokio::time::advance(FIRST_COOL_DOWN).await;
        assert_eq!(b.admit("g"), Ok(Pass::Probe));
        let waiting = b.admit("g").expect_err("one probe at a time");
        assert_eq!(waiting.next_probe_in, Duration::ZERO);
        b.record("g", Pass::Probe, true);
        assert_eq!(b.admit("g"), Ok(Pass::Closed));
        assert!(
            !b.metrics.render().contains("hermes_deliver_breaker_state{"),
            "a closed circuit has no series"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn when_a_probe_is_due_one_asker_is_let_on_and_the_others_wait_for_it() {
        let b = breakers();
        assert!(!b.refusing("g"), "no breaker: not refusing");
        fail(&b, FAILURES_TO_OPEN);
        assert!(b.refusing("g"), "open");
        tokio::time::advance(FIRST_COOL_DOWN).await;
        assert!(
            !b.refusing("g"),
            "the probe is due: the first asker may make it"
        );
        assert!(b.refusing("g"), "the others wait for that probe");
        assert_eq!(
            b.admit("g"),
            Ok(Pass::Probe),
            "asking took nothing from admit"
        );
        assert!(b.refusing("g"), "the probe is in flight");
        b.record("g", Pass::Probe, false);
        assert!(b.refusing("g"), "open again after the failed probe");
        tokio::time::advance(FIRST_COOL_DOWN * 2).await;
        assert!(!b.refusing("g"), "a new claim after the next cool-down");
        b.record("g", Pass::Probe, true);
        assert!(!b.refusing("g"), "closed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_doubles_the_cool_down_up_to_its_maximum() {
        let b = breakers();
        fail(&b, FAILURES_TO_OPEN);
        let mut cool_down = FIRST_COOL_DOWN;
        for _ in 0..8 {
            tokio::time::advance(cool_down).await;
            let pass = b.admit("g").expect("a probe");
            assert_eq!(pass, Pass::Probe);
            b.record("g", pass, false);
            cool_down = (cool_down * 2).min(MAX_COOL_DOWN);
            assert_eq!(
                b.admit("g").expect_err("open again").next_probe_in,
                cool_down
            );
        }
        assert_eq!(cool_down, MAX_COOL_DOWN);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_never_reports_lets_another_through_after_the_probe_limit() {
        let b = breakers();
        fail(&b, FAILURES_TO_OPEN);
        tokio::time::advance(FIRST_COOL_DOWN).await;
        assert_eq!(b.admit("g"), Ok(Pass::Probe));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(b.admit("g"), Ok(Pass::Probe));
    }

    #[tokio::test(start_paused = true)]
    async fn late_failures_of_deliveries_sent_before_it_opened_do_not_extend_the_cool_down() {
        let b = breakers();
        fail(&b, FAILURES_TO_OPEN);
        for _ in 0..10 {
            b.record("g", Pass::Closed, false);
        }
        tokio::time::advance(FIRST_COOL_DOWN).await;
        assert_eq!(b.admit("g"), Ok(Pass::Probe));
    }
}
