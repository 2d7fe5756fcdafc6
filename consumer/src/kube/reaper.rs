//! The reaper: while this consumer holds the Lease, delete the registry rows of gateways
//! whose pod no longer exists.
//!
//! For each term of leadership it watches the gateway pods (a reflector over the pods of
//! `HERMES_KUBE_GATEWAY_SELECTOR`) and makes a pass over the registry's gateway rows after
//! every (re)list and every `reap_interval`; a pod deletion reaps that gateway at once,
//! even if its heartbeat row has already expired. The cache is only a hint: a gateway is
//! reaped only after a direct `GET` of its pod answers 404, so a stale cache or a relist in
//! progress never deletes a live gateway's rows. Reaping is idempotent (the registry's
//! `reap_gateway`), so two passes, or two leaders in the instant of a handover, are harmless.

use hermes_shared::routes::{Caller, Disconnects};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use hermes_shared::metrics::Metrics;
use hermes_shared::registry::Registry;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_pods};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub struct Reaper {
    pub pods: Api<Pod>,
    pub namespace: String,
    pub selector: Option<String>,
    pub registry: Arc<dyn Registry>,
    /// Sends `$disconnect` for the sockets the reaped gateway held, when that route is set.
    pub disconnects: Option<Arc<Disconnects>>,
    pub metrics: Arc<Metrics>,
    pub interval: Duration,
}

impl Reaper {
    /// Reaps during every term of leadership until `shutdown`.
    pub async fn run(self, mut leader: watch::Receiver<bool>, shutdown: CancellationToken) {
        loop {
            // Wait for a term.
            tokio::select! {
                () = shutdown.cancelled() => return,
                leading = leader.wait_for(|l| *l) => if leading.is_err() { return },
            }
            tracing::info!("reaper: leading, watching the gateway pods");
            if !self.term(&mut leader, &shutdown).await {
                return;
            }
            tracing::info!("reaper: no longer leading");
        }
    }

    /// One term of leadership. Returns false when the consumer is shutting down.
    async fn term(&self, leader: &mut watch::Receiver<bool>, shutdown: &CancellationToken) -> bool {
        let mut config = watcher::Config::default();
        if let Some(selector) = &self.selector {
            config = config.labels(selector);
        }
        let (cache, writer) = reflector::store();
        let mut events = watch_pods(self.pods.clone(), config)
            .default_backoff()
            .reflect(writer)
            .boxed();
        // The first pass follows the initial list; the periodic ones start an interval later.
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + self.interval, self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut synced = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return false,
                changed = leader.changed() => {
                    if changed.is_err() || !*leader.borrow() {
                        return changed.is_ok();
                    }
                }
                event = events.next() => match event {
                    None => return true,
                    Some(Ok(Event::InitDone)) => {
                        synced = true;
                        self.pass(&cache).await;
                    }
                    Some(Ok(Event::Delete(pod))) if synced => {
                        if let Some(name) = pod.metadata.name.as_deref() {
                            self.reap_if_gone(name).await;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => tracing::warn!(%error, "reaper: pod watch failed; retrying"),
                },
                _ = ticker.tick(), if synced => self.pass(&cache).await,
            }
        }
    }

    /// Compares the registry's live gateway rows with the pods.
    async fn pass(&self, cache: &Store<Pod>) {
        let gateways = match self.registry.gateways().await {
            Ok(g) => g,
            Err(error) => {
                tracing::warn!(%error, "reaper: cannot list the registry's gateways");
                self.metrics.reaper_runs.with_label_values(&["error"]).inc();
                return;
            }
        };
        for gateway in gateways {
            let key = ObjectRef::new(&gateway.gateway_id).within(&self.namespace);
            if cache.get(&key).is_none() {
                self.reap_if_gone(&gateway.gateway_id).await;
            }
        }
        self.metrics.reaper_runs.with_label_values(&["ok"]).inc();
    }

    /// Reaps a gateway if the API server confirms that its pod does not exist.
    async fn reap_if_gone(&self, gateway_id: &str) {
        match self.pods.get_opt(gateway_id).await {
            Ok(None) => {}
            Ok(Some(_)) => return,
            Err(error) => {
                tracing::warn!(%error, gateway_id, "reaper: cannot check the pod; not reaping");
                return;
            }
        }
        match self.registry.reap_gateway(gateway_id).await {
            Ok(reaped) => {
                let rows = &self.metrics.reaped_rows;
                rows.with_label_values(&["gateway"])
                    .inc_by(u64::from(reaped.gateway_row));
                rows.with_label_values(&["room"])
                    .inc_by(reaped.rooms as u64);
                rows.with_label_values(&["user"])
                    .inc_by(reaped.users as u64);
                rows.with_label_values(&["connection"])
                    .inc_by(reaped.connections as u64);
                // Their sockets went with the gateway, without a close: 1006.
                if let Some(disconnects) = &self.disconnects {
                    for record in &reaped.gone {
                        disconnects.send(
                            &Caller {
                                record: record.clone(),
                                context: None,
                            },
                            1006,
                            "the gateway holding the connection is gone",
                        );
                    }
                }
                if reaped != Default::default() {
                    self.metrics.reaped_gateways.inc();
                    tracing::info!(
                        gateway_id,
                        gateway_row = reaped.gateway_row,
                        rooms = reaped.rooms,
                        users = reaped.users,
                        connections = reaped.connections,
                        "reaper: deleted the registry rows of a gateway whose pod is gone"
                    );
                }
            }
            Err(error) => {
                tracing::warn!(%error, gateway_id, "reaper: cannot delete the rows of a gone gateway");
            }
        }
    }
}
