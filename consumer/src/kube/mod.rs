//! Kubernetes awareness of the consumer (on when `HERMES_KUBE_GATEWAY_SERVICE` is set):
//!
//! - [`directory`]: the gateways' EndpointSlices tell the router which replicas are ready
//!   and where, and which are terminating (skipped);
//! - [`lease`]: one consumer holds a `coordination.k8s.io` Lease;
//! - [`reaper`]: the holder deletes the registry rows of gateway pods that no longer exist.
//!
//! Without Kubernetes none of this runs and the registry's heartbeat TTLs do the same job,
//! more slowly. If the API server is unreachable, watches and the Lease retry with backoff
//! while the consumer goes on consuming.

pub mod directory;
pub mod lease;
pub mod reaper;

use hermes_shared::routes::Disconnects;
use std::sync::Arc;

use crate::config::{KUBE_GATEWAY_SERVICE, KubeConfig};
use hermes_shared::metrics::Metrics;
use hermes_shared::registry::Registry;
use kube::{Api, Client};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// The running Kubernetes tasks.
pub struct Kube {
    /// For the router.
    pub directory: Arc<directory::SliceDirectory>,
    tasks: Vec<JoinHandle<()>>,
}

impl Kube {
    /// Connects to the API server (in-cluster service account, else `KUBECONFIG`) and starts
    /// the EndpointSlice view, the Lease campaign and the reaper. They stop with `shutdown`.
    pub async fn start(
        config: &KubeConfig,
        registry: Arc<dyn Registry>,
        disconnects: Option<Arc<Disconnects>>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Self> {
        let client = Client::try_default().await.map_err(|source| Error::Kube {
            context: format!(
                "{KUBE_GATEWAY_SERVICE} is set but no Kubernetes API is configured \
                     (in-cluster service account or KUBECONFIG)"
            ),
            source,
        })?;
        let namespace = config
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let directory = directory::SliceDirectory::watch(
            client.clone(),
            &namespace,
            &config.gateway_service,
            config.gateway_port.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        let (leader_tx, leader_rx) = tokio::sync::watch::channel(false);
        let elector = lease::Elector::new(
            Api::namespaced(client.clone(), &namespace),
            &config.lease_name,
            &config.identity,
            config.lease_duration,
            config.renew_interval,
            metrics.clone(),
        );
        let reaper = reaper::Reaper {
            pods: Api::namespaced(client, &namespace),
            namespace: namespace.clone(),
            selector: config.gateway_selector.clone(),
            registry,
            disconnects,
            metrics,
            interval: config.reap_interval,
        };
        let tasks = vec![
            tokio::spawn(elector.run(leader_tx, shutdown.clone())),
            tokio::spawn(reaper.run(leader_rx, shutdown)),
        ];
        tracing::info!(
            namespace,
            service = %config.gateway_service,
            lease = %config.lease_name,
            identity = %config.identity,
            "Kubernetes awareness on: EndpointSlice view, Lease, reaper"
        );
        Ok(Self { directory, tasks })
    }

    /// Waits for the tasks to end (after `shutdown`): the Lease is released by then.
    pub async fn finished(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
