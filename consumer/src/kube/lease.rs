//! Leader election on a `coordination.k8s.io/v1` Lease, with the semantics of client-go's
//! `leaderelection` package:
//!
//! - every `renew_interval` each candidate reads the Lease; the holder writes a new
//!   `renewTime`, the others take it over only once its record has not changed for a whole
//!   `leaseDurationSeconds` *as observed on their own clock* (so clock skew between pods
//!   does not matter), or at once if it has no holder (released);
//! - every write is an update carrying the `resourceVersion` that was read, so of two
//!   candidates racing for an expired Lease exactly one wins (the other gets 409 Conflict);
//! - a holder that cannot renew for `lease_duration - renew_interval` steps down before any
//!   other candidate can consider the Lease expired;
//! - on shutdown the holder releases the Lease (no holder, duration 1 s), so a successor
//!   takes over at its next try instead of waiting out the duration.
//!
//! The verbs used are exactly the chart's Role: `create` on leases, `get` and `update` on
//! the named Lease.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hermes_shared::metrics::Metrics;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One candidate for a Lease.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
    renew_interval: Duration,
    metrics: Arc<Metrics>,
    /// The Lease record as last read, and when (on our clock) it last changed.
    observed: Option<(Record, Instant)>,
}

/// The parts of a Lease that show its holder is alive.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    transitions: i32,
    duration: Duration,
}

impl Record {
    fn of(spec: &LeaseSpec, default_duration: Duration) -> Self {
        Self {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            renew_time: spec.renew_time.as_ref().map(|t| t.0),
            transitions: spec.lease_transitions.unwrap_or(0),
            duration: spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(default_duration, Duration::from_secs),
        }
    }
}

/// What a candidate does with the Lease it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// It is ours: write a new renew time.
    Renew,
    /// Free or expired: write ourselves in as holder.
    TakeOver,
    /// Someone else holds it and renews it.
    Wait,
}

fn decide(record: &Record, identity: &str, unchanged_for: Duration) -> Step {
    match record.holder.as_deref() {
        Some(holder) if holder == identity => Step::Renew,
        None => Step::TakeOver,
        Some(_) if unchanged_for >= record.duration => Step::TakeOver,
        Some(_) => Step::Wait,
    }
}

impl Elector {
    pub fn new(
        api: Api<Lease>,
        name: &str,
        identity: &str,
        lease_duration: Duration,
        renew_interval: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            api,
            name: name.to_owned(),
            identity: identity.to_owned(),
            lease_duration,
            renew_interval,
            metrics,
            observed: None,
        }
    }

    /// Campaigns until `shutdown`, publishing whether this candidate leads on `leader`.
    pub async fn run(mut self, leader: watch::Sender<bool>, shutdown: CancellationToken) {
        let renew_deadline = self.lease_duration.saturating_sub(self.renew_interval);
        let mut last_renewed: Option<Instant> = None;
        loop {
            // A round that hangs (an API server that accepts but never answers) must fail
            // in time for the holder to step down before others may take over.
            let round = tokio::time::timeout(renew_deadline, self.try_acquire_or_renew()).await;
            match round.unwrap_or(Err(Timeout)) {
                Ok(true) => {
                    if last_renewed.is_none() {
                        tracing::info!(lease = %self.name, identity = %self.identity, "acquired the Lease: this consumer runs the reaper");
                        self.metrics.kube_leader_acquisitions.inc();
                    }
                    last_renewed = Some(Instant::now());
                }
                Ok(false) => {
                    if last_renewed.take().is_some() {
                        tracing::warn!(lease = %self.name, "lost the Lease to another consumer");
                    }
                }
                Err(error) => {
                    match error {
                        Timeout => tracing::warn!(lease = %self.name, "the Lease round timed out"),
                        Kube(error) => {
                            tracing::warn!(%error, lease = %self.name, "cannot read or write the Lease")
                        }
                    }
                    if last_renewed.is_some_and(|at| at.elapsed() >= renew_deadline) {
                        tracing::warn!(lease = %self.name, "could not renew the Lease in time: stepping down");
                        last_renewed = None;
                    }
                }
            }
            let leading = last_renewed.is_some();
            self.metrics.kube_leader.set(i64::from(leading));
            leader.send_if_modified(|l| std::mem::replace(l, leading) != leading);
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.renew_interval) => {}
            }
        }
        if last_renewed.is_some() {
            leader.send_replace(false);
            self.metrics.kube_leader.set(0);
            match tokio::time::timeout(RELEASE_TIMEOUT, self.release()).await {
                Ok(Ok(())) => tracing::info!(lease = %self.name, "released the Lease"),
                Ok(Err(error)) => {
                    tracing::warn!(%error, lease = %self.name, "cannot release the Lease; it expires on its own")
                }
                Err(_) => {
                    tracing::warn!(lease = %self.name, "releasing the Lease timed out; it expires on its own")
                }
            }
        }
    }

    /// One round. `Ok(true)`: this candidate holds the Lease now.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, RoundError> {
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now.clone(), now, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(false),
                Err(e) => Err(Kube(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let record = Record::of(&spec, self.lease_duration);
        let changed_at = match &self.observed {
            Some((seen, at)) if *seen == record => *at,
            _ => Instant::now(),
        };
        self.observed = Some((record.clone(), changed_at));
        let spec = match decide(&record, &self.identity, changed_at.elapsed()) {
            Step::Wait => return Ok(false),
            Step::Renew => LeaseSpec {
                renew_time: Some(now),
                lease_duration_seconds: Some(seconds(self.lease_duration)),
                ..spec
            },
            Step::TakeOver => self.spec(now.clone(), now, record.transitions + 1),
        };
        lease.spec = Some(spec);
        // The update carries the resourceVersion read above: a concurrent writer wins, we
        // get 409 and read again next round.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                let spec = written.spec.unwrap_or_default();
                self.observed = Some((Record::of(&spec, self.lease_duration), Instant::now()));
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.is_conflict() => Ok(false),
            Err(e) => Err(Kube(e)),
        }
    }

    fn spec(&self, acquired: MicroTime, renewed: MicroTime, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(seconds(self.lease_duration)),
            acquire_time: Some(acquired),
            renew_time: Some(renewed),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Gives the Lease up if we still hold it.
    async fn release(&self) -> kube::Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map(drop)
    }
}

/// How long a stopping holder tries to release the Lease.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a round did not decide.
enum RoundError {
    Timeout,
    Kube(kube::Error),
}
use RoundError::{Kube, Timeout};

impl From<kube::Error> for RoundError {
    fn from(e: kube::Error) -> Self {
        Kube(e)
    }
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: Option<&str>) -> Record {
        Record {
            holder: holder.map(str::to_owned),
            renew_time: None,
            transitions: 0,
            duration: Duration::from_secs(15),
        }
    }

    #[test]
    fn the_holder_renews_its_own_lease() {
        assert_eq!(
            decide(&record(Some("me")), "me", Duration::ZERO),
            Step::Renew
        );
        // Even long unchanged: it is still ours to renew.
        assert_eq!(
            decide(&record(Some("me")), "me", Duration::from_secs(60)),
            Step::Renew
        );
    }

    #[test]
    fn another_holder_is_trusted_for_the_whole_lease_duration_as_observed_here() {
        let r = record(Some("other"));
        assert_eq!(decide(&r, "me", Duration::from_secs(14)), Step::Wait);
        assert_eq!(decide(&r, "me", Duration::from_secs(15)), Step::TakeOver);
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        assert_eq!(decide(&record(None), "me", Duration::ZERO), Step::TakeOver);
    }

    #[test]
    fn an_empty_holder_counts_as_released() {
        let spec = LeaseSpec {
            holder_identity: Some(String::new()),
            lease_duration_seconds: Some(4),
            ..LeaseSpec::default()
        };
        let r = Record::of(&spec, Duration::from_secs(15));
        assert_eq!(r.holder, None);
        assert_eq!(r.duration, Duration::from_secs(4));
    }
}
