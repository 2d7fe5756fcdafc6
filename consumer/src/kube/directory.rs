//! Which gateway replicas are ready and where, from the EndpointSlices of the gateways'
//! internal Service (label `kubernetes.io/service-name`).
//!
//! A watcher (list, then watch; relisted from scratch when the watch expires or breaks) feeds
//! a reflector store; after every event the store's snapshot is folded into an index
//! `gateway id (pod name) → Presence` that the router reads without blocking. Until the first
//! list has completed the index is empty, so every gateway is `Unknown` and the router falls
//! back to the registry's heartbeat rows, exactly as without Kubernetes.
//!
//! A terminating endpoint is a gateway draining its sockets: the router still delivers to it
//! (its sockets stay open for the rest of the drain window) but does not wait on it or retry
//! for it if it does not answer.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;
use hermes_shared::metrics::Metrics;
use hermes_shared::router::{GatewayDirectory, Presence};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector};
use kube::{Api, Client};
use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;

/// The EndpointSlice view the router consults ([`GatewayDirectory`]).
pub struct SliceDirectory {
    index: RwLock<Arc<HashMap<String, Presence>>>,
}

impl GatewayDirectory for SliceDirectory {
    fn presence(&self, gateway_id: &str) -> Presence {
        self.index
            .read()
            .get(gateway_id)
            .cloned()
            .unwrap_or(Presence::Unknown)
    }
}

impl SliceDirectory {
    fn new() -> Self {
        Self {
            index: RwLock::new(Arc::new(HashMap::new())),
        }
    }

    /// Starts watching the EndpointSlices of `service` in `namespace`; the watch ends with
    /// `shutdown`. Watch errors are logged and retried with backoff (the view keeps its
    /// last state meanwhile).
    pub fn watch(
        client: Client,
        namespace: &str,
        service: &str,
        port_name: String,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let directory = Arc::new(Self::new());
        let api: Api<EndpointSlice> = Api::namespaced(client, namespace);
        let config =
            watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}"));
        let (reader, writer) = reflector::store();
        let mut events = watcher::watcher(api, config)
            .default_backoff()
            .reflect(writer)
            .boxed();
        let view = directory.clone();
        let service = service.to_owned();
        tokio::spawn(async move {
            let mut synced = false;
            loop {
                let event = tokio::select! {
                    () = shutdown.cancelled() => break,
                    event = events.next() => event,
                };
                match event {
                    None => break,
                    Some(Err(error)) => {
                        tracing::warn!(%error, service, "EndpointSlice watch failed; retrying");
                        continue;
                    }
                    Some(Ok(Event::InitDone)) if !synced => {
                        synced = true;
                        tracing::info!(service, "EndpointSlice view synced");
                    }
                    Some(Ok(Event::Init | Event::InitApply(_))) => continue,
                    Some(Ok(_)) => {}
                }
                let index = index(&reader.state(), &port_name);
                count(&index, &metrics);
                *view.index.write() = Arc::new(index);
            }
        });
        directory
    }
}

fn count(index: &HashMap<String, Presence>, metrics: &Metrics) {
    let (mut ready, mut terminating, mut other) = (0, 0, 0);
    for presence in index.values() {
        match presence {
            Presence::Ready(_) => ready += 1,
            Presence::Terminating(_) => terminating += 1,
            Presence::Unknown => other += 1,
        }
    }
    let gauge = &metrics.kube_gateway_endpoints;
    gauge.with_label_values(&["ready"]).set(ready);
    gauge.with_label_values(&["terminating"]).set(terminating);
    gauge.with_label_values(&["not_ready"]).set(other);
}

/// Folds slices into `gateway id → Presence`. A gateway's id is its pod name (the
/// endpoint's `targetRef`, else its `hostname`). A pod listed in several slices (they overlap
/// briefly while the EndpointSlice controller moves endpoints) is `Terminating` if any slice
/// says so, else `Ready` if any says so.
pub fn index(slices: &[Arc<EndpointSlice>], port_name: &str) -> HashMap<String, Presence> {
    let mut index: HashMap<String, Presence> = HashMap::new();
    for slice in slices {
        let port = slice_port(slice, port_name);
        for endpoint in &slice.endpoints {
            let Some(id) = gateway_id(endpoint) else {
                continue;
            };
            let presence = presence(endpoint, &slice.address_type, port);
            let entry = index.entry(id.to_owned()).or_insert(Presence::Unknown);
            *entry = match (&*entry, presence) {
                (Presence::Terminating(a), Presence::Terminating(b)) => {
                    Presence::Terminating(a.clone().or(b))
                }
                (Presence::Terminating(a), Presence::Ready(b)) => {
                    Presence::Terminating(a.clone().or(Some(b)))
                }
                (Presence::Ready(a), Presence::Terminating(b)) => {
                    Presence::Terminating(b.or(Some(a.clone())))
                }
                (Presence::Terminating(a), Presence::Unknown) => Presence::Terminating(a.clone()),
                (Presence::Ready(url), _) => Presence::Ready(url.clone()),
                (_, p) => p,
            };
        }
    }
    index
}

/// The slice's port named `name`; a slice with a single port uses it whatever its name.
fn slice_port(slice: &EndpointSlice, name: &str) -> Option<i32> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    ports
        .iter()
        .find(|p| p.name.as_deref() == Some(name))
        .or(match ports {
            [only] => Some(only),
            _ => None,
        })
        .and_then(|p| p.port)
}

fn gateway_id(endpoint: &Endpoint) -> Option<&str> {
    match &endpoint.target_ref {
        Some(r) if r.kind.as_deref().is_none_or(|k| k == "Pod") => r.name.as_deref(),
        _ => endpoint.hostname.as_deref(),
    }
}

fn presence(endpoint: &Endpoint, address_type: &str, port: Option<i32>) -> Presence {
    let conditions = endpoint.conditions.clone().unwrap_or_default();
    let url = match (endpoint.addresses.first(), port) {
        (Some(address), Some(port)) => Some(match address_type {
            "IPv6" => format!("http://[{address}]:{port}"),
            _ => format!("http://{address}:{port}"),
        }),
        _ => None,
    };
    if conditions.terminating == Some(true) {
        return Presence::Terminating(url);
    }
    // The API says an unknown `ready` should be read as ready.
    match (conditions.ready, url) {
        (Some(false), _) | (_, None) => Presence::Unknown,
        (_, Some(url)) => Presence::Ready(url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointPort};

    fn endpoint(pod: &str, address: &str, ready: bool, terminating: bool) -> Endpoint {
        Endpoint {
            addresses: vec![address.into()],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(ready || terminating),
                terminating: Some(terminating),
            }),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: Some(pod.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn slice(
        address_type: &str,
        ports: &[(&str, i32)],
        endpoints: Vec<Endpoint>,
    ) -> Arc<EndpointSlice> {
        Arc::new(EndpointSlice {
            address_type: address_type.into(),
            endpoints,
            ports: Some(
                ports
                    .iter()
                    .map(|(name, port)| EndpointPort {
                        name: Some((*name).into()),
                        port: Some(*port),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        })
    }

    #[test]
    fn ready_endpoints_give_the_internal_url_and_terminating_ones_are_marked() {
        let slices = [slice(
            "IPv4",
            &[("metrics", 9090), ("internal", 8081)],
            vec![
                endpoint("gw-a", "10.0.0.5", true, false),
                endpoint("gw-b", "10.0.0.6", false, true),
                endpoint("gw-c", "10.0.0.7", false, false),
            ],
        )];
        let index = index(&slices, "internal");
        assert_eq!(
            index["gw-a"],
            Presence::Ready("http://10.0.0.5:8081".into())
        );
        assert_eq!(
            index["gw-b"],
            Presence::Terminating(Some("http://10.0.0.6:8081".into()))
        );
        assert_eq!(index["gw-c"], Presence::Unknown);
    }

    #[test]
    fn ipv6_addresses_are_bracketed_and_a_single_port_is_used_whatever_its_name() {
        let slices = [slice(
            "IPv6",
            &[("http", 8081)],
            vec![endpoint("gw-a", "fd00::5", true, false)],
        )];
        assert_eq!(
            index(&slices, "internal")["gw-a"],
            Presence::Ready("http://[fd00::5]:8081".into())
        );
    }

    #[test]
    fn a_pod_in_two_slices_is_terminating_if_either_says_so() {
        let slices = [
            slice(
                "IPv4",
                &[("internal", 8081)],
                vec![endpoint("gw-a", "10.0.0.5", true, false)],
            ),
            slice(
                "IPv4",
                &[("internal", 8081)],
                vec![endpoint("gw-a", "10.0.0.5", false, true)],
            ),
        ];
        assert_eq!(
            index(&slices, "internal")["gw-a"],
            Presence::Terminating(Some("http://10.0.0.5:8081".into()))
        );
    }

    #[test]
    fn without_the_named_port_among_several_a_ready_gateway_is_unknown() {
        let slices = [slice(
            "IPv4",
            &[("a", 1), ("b", 2)],
            vec![endpoint("gw-a", "10.0.0.5", true, false)],
        )];
        assert_eq!(index(&slices, "internal")["gw-a"], Presence::Unknown);
    }

    #[test]
    fn the_directory_answers_unknown_for_gateways_it_has_not_seen() {
        let d = SliceDirectory::new();
        assert_eq!(d.presence("gw-x"), Presence::Unknown);
    }
}
