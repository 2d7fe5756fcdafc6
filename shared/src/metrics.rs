//! Prometheus metrics, `hermes_*`. One [`Metrics`] per process, shared by `Arc`.
//!
//! Every family is declared once, in the `families!` table below, under the component that
//! owns it: the one that updates it and whose behaviour it describes. A family is a field
//! of [`Metrics`] (`metrics.connects`, the same path wherever it is updated), created and
//! registered by [`Metrics::new`]; [`Metrics::OWNERS`] lists the exported names by owner.
//!
//! | owner      | code that updates its families                                      |
//! |------------|---------------------------------------------------------------------|
//! | `sockets`  | the gateway's sockets: `upgrade`, `session`, `hub`, `ws`            |
//! | `auth`     | `auth` (the authorizer and its bcrypt pool)                         |
//! | `registry` | `registry::instrumented` (every registry call)                      |
//! | `history`  | the router's history writes, the gateway's resumes (`session`)      |
//! | `router`   | `router` and its links (`router::links`), and the gateway's deliver |
//! |            | endpoints (`deliver`)                                               |
//! | `queue`    | the consumer's sources and `processor`                              |
//! | `kube`     | the consumer's `kube` (EndpointSlice view, Lease, reaper)           |
//! | `admin`    | the gateway's admin API (`admin_metrics`, around `admin`)           |
//! | `routes`   | the gateway's route integrations (`routes`)                         |
//! | `process`  | [`Metrics::new`]: the build (`hermes_build_info`); beside it, the   |
//! |            | standard `process_*` families ([`PROCESS_FAMILIES`])                 |
//!
//! [`Metrics::FAMILIES`] describes each family (name, Prometheus type, labels, help): the
//! reference in `docs/metrics.md` is checked against it and against both processes'
//! `/metrics` by a test (`tests/tests/metrics_reference.rs`).

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, TextEncoder,
};

/// Latency buckets from 100 µs to 2 min. The top ones are for what waits out the consumer's
/// retry delays (by default 1, 5 and 30 s, the last repeating): a notification retried
/// once or twice reaches its socket that much later, and `hermes_end_to_end_seconds` must
/// tell "after a retry" from "after several" instead of putting them all in `+Inf`.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 120.0,
];

/// One family as [`Metrics::FAMILIES`] describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyInfo {
    /// The component that updates it (see the module's table).
    pub owner: &'static str,
    /// The exported name, `hermes_*`.
    pub name: &'static str,
    /// The Prometheus type: `counter`, `gauge` or `histogram`.
    pub kind: &'static str,
    /// Its label names, in declaration order.
    pub labels: &'static [&'static str],
    /// The `# HELP` text.
    pub help: &'static str,
}

/// Declares the families by owner: the [`Metrics`] struct with one field each,
/// [`Metrics::new`] that creates and registers them, and [`Metrics::OWNERS`].
/// Each family is `field: Type("hermes_name", "help", [labels])`.
macro_rules! families {
    ($(
        $owner:ident {
            $(
                $(#[doc = $doc:literal])*
                $field:ident: $kind:ident($name:literal, $help:literal $(, [$($label:literal),*])?),
            )*
        }
    )*) => {
        /// Every metric Hermes exports, grouped by owner (see the module's table).
        pub struct Metrics {
            registry: prometheus::Registry,
            $($(
                $(#[doc = $doc])*
                pub $field: $kind,
            )*)*
        }

        impl Metrics {
            /// Every family's exported name, by owner.
            pub const OWNERS: &'static [(&'static str, &'static [&'static str])] =
                &[$((stringify!($owner), &[$($name),*])),*];

            /// Every family: owner, name, type, labels and help.
            pub const FAMILIES: &'static [FamilyInfo] = &[$($(
                FamilyInfo {
                    owner: stringify!($owner),
                    name: $name,
                    kind: <$kind as Family>::KIND,
                    labels: &[$($($label),*)?],
                    help: $help,
                },
            )*)*];

            /// Creates and registers every metric.
            pub fn new() -> Self {
                let registry = prometheus::Registry::new();
                let m = Self {
                    registry: registry.clone(),
                    $($(
                        $field: <$kind as Family>::make($name, $help, &[$($($label),*)?]),
                    )*)*
                };
                $($(
                    register(&registry, &m.$field);
                )*)*
                m.build_info.with_label_values(&[VERSION]).set(1);
                register_process_collector(&registry);
                m
            }
        }
    };
}

families! {
    sockets {
        /// Open WebSocket connections.
        connections_open: IntGauge("hermes_connections_open", "Open WebSocket connections"),
        /// Upgrade attempts by result (`accepted` or the refusal code).
        connects: IntCounterVec(
            "hermes_connects_total",
            "WebSocket upgrade attempts by result",
            ["result"]
        ),
        /// Frames received from browsers, by kind.
        messages_received: IntCounterVec(
            "hermes_messages_received_total",
            "Frames received from browsers, by kind",
            ["kind"]
        ),
        /// Frames queued to sockets.
        messages_delivered: IntCounter(
            "hermes_messages_delivered_total",
            "Frames queued to sockets"
        ),
        /// Frames not delivered, by reason.
        messages_dropped: IntCounterVec(
            "hermes_messages_dropped_total",
            "Frames not delivered to a socket, by reason",
            ["reason"]
        ),
        /// Message ids remembered for de-duplication.
        dedup_ids: IntGauge(
            "hermes_dedup_ids",
            "Delivered message ids the gateway remembers to drop redeliveries"
        ),
        /// Ids forgotten before their window ended because the bound was reached.
        dedup_evictions: IntCounter(
            "hermes_dedup_evictions_total",
            "Delivered message ids forgotten before their de-duplication window ended (HERMES_DEDUP_WINDOW reached)"
        ),
        /// Sockets closed because their send queue was full.
        send_queue_overflows: IntCounter(
            "hermes_send_queue_overflows_total",
            "Sockets closed with 1013 because their send queue was full"
        ),
        /// Socket closes by code.
        closes: IntCounterVec(
            "hermes_socket_closes_total",
            "Socket closes by close code",
            ["code"]
        ),
        /// Producer publish time → frame handed to the socket writer.
        end_to_end: Histogram(
            "hermes_end_to_end_seconds",
            "Producer publish time to the frame reaching the socket writer"
        ),
    }
    auth {
        /// Time to authenticate a connect, by path (`cache`, `fast_verifier`, `bcrypt`, ...).
        auth_duration: HistogramVec(
            "hermes_auth_duration_seconds",
            "Time to authenticate a connect, by verification path",
            ["path"]
        ),
        /// Jobs waiting for a bcrypt thread.
        bcrypt_queue: IntGauge(
            "hermes_bcrypt_queue",
            "Token verifications waiting for a bcrypt thread"
        ),
    }
    registry {
        /// Registry call latency by operation.
        registry_duration: HistogramVec(
            "hermes_registry_duration_seconds",
            "Registry call latency, by operation",
            ["op"]
        ),
    }
    history {
        /// History writes by result (`ok`, `error`).
        history_writes: IntCounterVec(
            "hermes_history_writes_total",
            "Notifications written to their stream's history, by result",
            ["result"]
        ),
        /// History reads of resuming sockets, by result (`ok`, `error`).
        history_reads: IntCounterVec(
            "hermes_history_reads_total",
            "Stream history reads of resuming sockets, by result",
            ["result"]
        ),
        /// Resumes by outcome (`recovered`, `not_recovered`, `failed`).
        resumes: IntCounterVec(
            "hermes_resumes_total",
            "hermes.v1 sockets that asked to resume, by outcome",
            ["outcome"]
        ),
        /// Notifications replayed to resuming sockets.
        replayed: IntCounter(
            "hermes_replayed_messages_total",
            "Notifications sent from history to resuming sockets"
        ),
    }
    router {
        /// Time to route one message (lookup, group, deliver).
        routing_duration: Histogram(
            "hermes_routing_duration_seconds",
            "Time to route one message: registry lookup, grouping and delivery"
        ),
        /// Gateways skipped by the router, by reason (`terminating`).
        route_skipped: IntCounterVec(
            "hermes_route_skipped_total",
            "Gateways holding targets that the router skipped, by reason",
            ["reason"]
        ),
        /// Internal deliver requests, by side (`client`/`server`) and status.
        deliver_requests: IntCounterVec(
            "hermes_deliver_requests_total",
            "Internal deliver requests, by side and status",
            ["side", "status"]
        ),
        /// Deliver streams a router opened to gateways, by result (`ok`, `failed`,
        /// `unsupported`: the gateway has no stream endpoint and is delivered to over HTTP).
        deliver_stream_connects: IntCounterVec(
            "hermes_deliver_stream_connects_total",
            "Deliver streams opened from this router to gateways, by result",
            ["result"]
        ),
        /// Deliver-stream writes a gateway did not take in within the deliver timeout (the
        /// connection is then dropped and its requests fail).
        deliver_stalled_writes: IntCounter(
            "hermes_deliver_stalled_writes_total",
            "Deliver-stream writes that a gateway did not take in within the deliver timeout"
        ),
        /// Per gateway whose circuit is not closed: 1 open (deliveries fail at once), 2
        /// half-open (one probe delivery in flight). A gateway with a closed circuit has no
        /// series.
        deliver_breaker_state: IntGaugeVec(
            "hermes_deliver_breaker_state",
            "Circuit state of a gateway the router stopped sending to: 1 open, 2 half-open",
            ["gateway"]
        ),
        /// Circuits opened, and deliveries failed at once because their gateway's circuit
        /// was open (`event` = `opened` or `rejected`).
        deliver_breaker_events: IntCounterVec(
            "hermes_deliver_breaker_events_total",
            "Circuit breaker events of the router's links: opened, rejected",
            ["event"]
        ),
        /// Calls to a gateway's internal API (deliver, deliver stream, connection lookup)
        /// refused with 401: this process's `HERMES_INTERNAL_SECRET` is not the gateway's.
        internal_auth_failures: IntCounter(
            "hermes_internal_auth_failures_total",
            "Calls to a gateway's internal API refused with 401: HERMES_INTERNAL_SECRET differs"
        ),
    }
    queue {
        /// Queue messages by source and outcome.
        queue_messages: IntCounterVec(
            "hermes_queue_messages_total",
            "Queue messages by source and outcome",
            ["source", "outcome"]
        ),
        /// Dead-lettered messages by reason.
        dead_letters: IntCounterVec(
            "hermes_dead_letters_total",
            "Messages sent to the dead-letter queue, by reason",
            ["reason"]
        ),
    }
    kube {
        /// Gateway endpoints in the EndpointSlices, by state (`ready`, `not_ready`,
        /// `terminating`).
        kube_gateway_endpoints: IntGaugeVec(
            "hermes_kube_gateway_endpoints",
            "Gateway endpoints in the internal Service's EndpointSlices, by state",
            ["state"]
        ),
        /// 1 while this consumer holds the reaper's Lease.
        kube_leader: IntGauge(
            "hermes_kube_leader",
            "1 while this consumer holds the reaper's Lease"
        ),
        /// Lease acquisitions by this consumer.
        kube_leader_acquisitions: IntCounter(
            "hermes_kube_leader_acquisitions_total",
            "Times this consumer acquired the reaper's Lease"
        ),
        /// Reaper passes, by result (`ok`, `error`).
        reaper_runs: IntCounterVec(
            "hermes_reaper_runs_total",
            "Reaper passes over the registry's gateways, by result",
            ["result"]
        ),
        /// Gateways whose rows the reaper deleted.
        reaped_gateways: IntCounter(
            "hermes_reaped_gateways_total",
            "Gateways without a pod whose registry rows the reaper deleted"
        ),
        /// Registry rows the reaper deleted, by kind (`gateway`, `room`, `user`,
        /// `connection`).
        reaped_rows: IntCounterVec(
            "hermes_reaped_rows_total",
            "Registry rows the reaper deleted, by kind",
            ["kind"]
        ),
    }
    admin {
        /// Admin API requests (tokens, publish, `@connections`) by route and status class
        /// (`2xx`, `4xx`, `5xx`).
        admin_requests: IntCounterVec(
            "hermes_admin_requests_total",
            "Admin API requests, by route and status class",
            ["route", "status"]
        ),
        /// Admin API request latency by route, from the request read to the answer.
        admin_duration: HistogramVec(
            "hermes_admin_request_duration_seconds",
            "Admin API request latency, by route",
            ["route"]
        ),
    }
    routes {
        /// Route integration calls (`$connect`, `$disconnect`, `$default` and the custom
        /// action routes of `HERMES_ROUTES`), by route and result: `ok`, `refused` (the
        /// backend answered, not 2xx), `failed` (no answer within the timeout after the
        /// retries, or unreachable), `busy` (no free slot).
        route_calls: IntCounterVec(
            "hermes_route_calls_total",
            "Route integration calls, by route and result",
            ["route", "result"]
        ),
        /// Route integration call latency, all attempts of a call together.
        route_duration: HistogramVec(
            "hermes_route_duration_seconds",
            "Route integration call latency, by route",
            ["route"]
        ),
        /// `$disconnect` events waiting to be delivered (retried until they are).
        route_disconnects_pending: IntGauge(
            "hermes_route_disconnects_pending",
            "$disconnect events waiting to be delivered"
        ),
    }
    process {
        /// Always 1; its label says which release runs.
        build_info: IntGaugeVec(
            "hermes_build_info",
            "Always 1: the running build, by version",
            ["version"]
        ),
    }
}

/// The release, as `hermes_build_info` labels it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The process collector's families (Linux only: it reads `/proc/self`), exported beside
/// the `hermes_*` ones under Prometheus's standard names.
pub const PROCESS_FAMILIES: &[FamilyInfo] = &[
    process_family("process_cpu_seconds_total", "counter"),
    process_family("process_open_fds", "gauge"),
    process_family("process_max_fds", "gauge"),
    process_family("process_virtual_memory_bytes", "gauge"),
    process_family("process_resident_memory_bytes", "gauge"),
    process_family("process_start_time_seconds", "gauge"),
    process_family("process_threads", "gauge"),
];

const fn process_family(name: &'static str, kind: &'static str) -> FamilyInfo {
    FamilyInfo {
        owner: "process",
        name,
        kind,
        labels: &[],
        help: "",
    }
}

/// Registers the standard `process_*` families (open and maximum file descriptors,
/// resident and virtual memory, CPU seconds, threads, start time) of this process.
fn register_process_collector(registry: &prometheus::Registry) {
    #[cfg(target_os = "linux")]
    if let Err(error) = registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    )) {
        tracing::error!(%error, "cannot register the process metrics");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = registry;
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "cannot encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

/// A metric type [`families!`] can declare: made from a name, a help text and labels
/// (none for the scalar types; histograms get [`LATENCY_BUCKETS`]).
trait Family: Collector + Clone + 'static {
    /// The Prometheus type it is exported as.
    const KIND: &'static str;
    fn make(name: &str, help: &str, labels: &[&str]) -> Self;
}

// The names and labels are constants that are valid, so construction cannot fail; the
// fallbacks only keep `unwrap` out of library code.
fn unreachable_metric<T>() -> T {
    panic!("invalid metric definition")
}

impl Family for IntGauge {
    const KIND: &'static str = "gauge";
    fn make(name: &str, help: &str, _: &[&str]) -> Self {
        IntGauge::new(name, help).unwrap_or_else(|_| unreachable_metric())
    }
}

impl Family for IntCounter {
    const KIND: &'static str = "counter";
    fn make(name: &str, help: &str, _: &[&str]) -> Self {
        IntCounter::new(name, help).unwrap_or_else(|_| unreachable_metric())
    }
}

impl Family for IntGaugeVec {
    const KIND: &'static str = "gauge";
    fn make(name: &str, help: &str, labels: &[&str]) -> Self {
        IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|_| unreachable_metric())
    }
}

impl Family for IntCounterVec {
    const KIND: &'static str = "counter";
    fn make(name: &str, help: &str, labels: &[&str]) -> Self {
        IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|_| unreachable_metric())
    }
}

impl Family for Histogram {
    const KIND: &'static str = "histogram";
    fn make(name: &str, help: &str, _: &[&str]) -> Self {
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))
            .unwrap_or_else(|_| unreachable_metric())
    }
}

impl Family for HistogramVec {
    const KIND: &'static str = "histogram";
    fn make(name: &str, help: &str, labels: &[&str]) -> Self {
        HistogramVec::new(
            HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
            labels,
        )
        .unwrap_or_else(|_| unreachable_metric())
    }
}

fn register(registry: &prometheus::Registry, family: &impl Family) {
    if let Err(error) = registry.register(Box::new(family.clone())) {
        tracing::error!(%error, "cannot register a metric");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exported_with_the_hermes_prefix() {
        let m = Metrics::new();
        m.connects.with_label_values(&["accepted"]).inc();
        m.messages_dropped.with_label_values(&["queue_full"]).inc();
        m.deliver_requests
            .with_label_values(&["client", "ok"])
            .inc();
        m.auth_duration.with_label_values(&["cache"]).observe(0.001);
        m.closes.with_label_values(&["1000"]).inc();
        let text = m.render();
        for name in [
            "hermes_connections_open",
            "hermes_connects_total{result=\"accepted\"} 1",
            "hermes_auth_duration_seconds_bucket",
            "hermes_messages_delivered_total",
            "hermes_messages_dropped_total{reason=\"queue_full\"} 1",
            "hermes_send_queue_overflows_total",
            "hermes_deliver_requests_total",
            "hermes_routing_duration_seconds",
            "hermes_end_to_end_seconds",
        ] {
            assert!(text.contains(name), "missing {name}");
        }
    }

    #[test]
    fn every_family_is_registered_once_under_one_owner() {
        let m = Metrics::new();
        // A labelled family appears in the exposition once it has a child.
        for family in m.registry.gather() {
            assert!(
                family.name().starts_with("hermes_")
                    || PROCESS_FAMILIES.iter().any(|p| p.name == family.name()),
                "{}",
                family.name()
            );
        }
        let names: Vec<&str> = Metrics::OWNERS
            .iter()
            .flat_map(|(_, names)| names.iter().copied())
            .collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "a family declared twice");
        assert_eq!(names.len(), 39);
        // Registering a family again is refused: each one is in the registry already.
        assert!(
            m.registry
                .register(Box::new(IntGauge::make(
                    "hermes_bcrypt_queue",
                    "again",
                    &[]
                )))
                .is_err()
        );
        let owners: Vec<&str> = Metrics::OWNERS.iter().map(|(owner, _)| *owner).collect();
        assert_eq!(
            owners,
            [
                "sockets", "auth", "registry", "history", "router", "queue", "kube", "admin",
                "routes", "process"
            ]
        );
    }

    #[test]
    fn families_describe_what_the_registry_exports() {
        let m = Metrics::new();
        // Give every labelled family a child so that all of them are gathered.
        for family in Metrics::FAMILIES {
            assert_eq!(
                Metrics::OWNERS
                    .iter()
                    .find(|(owner, _)| *owner == family.owner)
                    .map(|(_, names)| names.contains(&family.name)),
                Some(true),
                "{} under {}",
                family.name,
                family.owner
            );
        }
        m.connects.with_label_values(&["accepted"]).inc();
        m.admin_duration
            .with_label_values(&["publish"])
            .observe(0.1);
        let gathered = m.registry.gather();
        for mf in &gathered {
            let kind = format!("{:?}", mf.get_field_type()).to_lowercase();
            if let Some(process) = PROCESS_FAMILIES.iter().find(|p| p.name == mf.name()) {
                assert_eq!(process.kind, kind, "{}", process.name);
                continue;
            }
            let info = Metrics::FAMILIES
                .iter()
                .find(|f| f.name == mf.name())
                .unwrap_or_else(|| panic!("{} is not in FAMILIES", mf.name()));
            assert_eq!(info.kind, kind, "{}", info.name);
            assert_eq!(info.help, mf.help(), "{}", info.name);
            for metric in mf.get_metric() {
                let labels: Vec<&str> = metric.get_label().iter().map(|l| l.name()).collect();
                let mut declared = info.labels.to_vec();
                declared.sort_unstable();
                assert_eq!(labels, declared, "{}", info.name);
            }
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_build_and_the_process_families_are_exported() {
        let text = Metrics::new().render();
        assert!(
            text.contains(&format!("hermes_build_info{{version=\"{VERSION}\"}} 1")),
            "{text}"
        );
        for family in PROCESS_FAMILIES {
            assert!(
                text.contains(&format!("# TYPE {} {}", family.name, family.kind)),
                "{} missing:\n{text}",
                family.name
            );
        }
        let open_fds = text
            .lines()
            .find_map(|l| l.strip_prefix("process_open_fds "))
            .and_then(|v| v.parse::<f64>().ok());
        assert!(open_fds.is_some_and(|n| n >= 3.0), "{open_fds:?}");
    }

    #[test]
    fn latency_buckets_reach_past_the_longest_default_retry_delay() {
        let defaults = crate::config::Redelivery::from_strings(&std::collections::HashMap::<
            &str,
            &str,
        >::new())
        .expect("the defaults are valid");
        let longest = defaults.delays.iter().max().expect("a delay");
        let top = LATENCY_BUCKETS.last().copied().unwrap_or_default();
        assert!(
            top >= longest.as_secs_f64() * 2.0,
            "top bucket {top} s, longest retry delay {longest:?}"
        );
        let m = Metrics::new();
        m.end_to_end.observe(31.0);
        let text = m.render();
        assert!(
            text.contains("hermes_end_to_end_seconds_bucket{le=\"60\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("hermes_end_to_end_seconds_bucket{le=\"30\"} 0"),
            "{text}"
        );
    }
}
