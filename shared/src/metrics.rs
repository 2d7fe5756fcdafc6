//! Prometheus metrics, `hermes_*`. One [`Metrics`] per process, shared by `Arc`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, TextEncoder,
};

/// Latency buckets from 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Every metric Hermes exports.
pub struct Metrics {
    registry: prometheus::Registry,
    /// Open WebSocket connections.
    pub connections_open: IntGauge,
    /// Upgrade attempts by result (`accepted` or the refusal code).
    pub connects: IntCounterVec,
    /// Time to authenticate a connect, by path (`cache`, `fast_verifier`, `bcrypt`, ...).
    pub auth_duration: HistogramVec,
    /// Jobs waiting for a bcrypt thread.
    pub bcrypt_queue: IntGauge,
    /// Frames received from browsers, by kind.
    pub messages_received: IntCounterVec,
    /// Frames queued to sockets.
    pub messages_delivered: IntCounter,
    /// Frames not delivered, by reason.
    pub messages_dropped: IntCounterVec,
    /// Sockets closed because their send queue was full.
    pub send_queue_overflows: IntCounter,
    /// Internal deliver requests, by side (`client`/`server`) and status.
    pub deliver_requests: IntCounterVec,
    /// Deliver streams a router opened to gateways, by result (`ok`, `failed`,
    /// `unsupported`: the gateway has no stream endpoint and is delivered to over HTTP).
    pub deliver_stream_connects: IntCounterVec,
    /// Time to route one message (lookup, group, deliver).
    pub routing_duration: Histogram,
    /// Producer publish time → frame handed to the socket writer.
    pub end_to_end: Histogram,
    /// Socket closes by code.
    pub closes: IntCounterVec,
    /// Queue messages by source and outcome.
    pub queue_messages: IntCounterVec,
    /// Dead-lettered messages by reason.
    pub dead_letters: IntCounterVec,
    /// Registry call latency by operation.
    pub registry_duration: HistogramVec,
    /// Gateways skipped by the router, by reason (`terminating`).
    pub route_skipped: IntCounterVec,
    /// Gateway endpoints in the EndpointSlices, by state (`ready`, `not_ready`, `terminating`).
    pub kube_gateway_endpoints: IntGaugeVec,
    /// 1 while this consumer holds the reaper's Lease.
    pub kube_leader: IntGauge,
    /// Lease acquisitions by this consumer.
    pub kube_leader_acquisitions: IntCounter,
    /// Reaper passes, by result (`ok`, `error`).
    pub reaper_runs: IntCounterVec,
    /// Gateways whose rows the reaper deleted.
    pub reaped_gateways: IntCounter,
    /// Registry rows the reaper deleted, by kind (`gateway`, `room`, `user`, `connection`).
    pub reaped_rows: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = prometheus::Registry::new();
        let m = Self {
            registry: registry.clone(),
            connections_open: IntGauge::new(
                "hermes_connections_open",
                "Open WebSocket connections",
            )
            .unwrap_or_else(|_| unreachable_metric()),
            connects: counter_vec(
                "hermes_connects_total",
                "WebSocket upgrade attempts by result",
                &["result"],
            ),
            auth_duration: histogram_vec(
                "hermes_auth_duration_seconds",
                "Time to authenticate a connect, by verification path",
                &["path"],
            ),
            bcrypt_queue: IntGauge::new(
                "hermes_bcrypt_queue",
                "Token verifications waiting for a bcrypt thread",
            )
            .unwrap_or_else(|_| unreachable_metric()),
            messages_received: counter_vec(
                "hermes_messages_received_total",
                "Frames received from browsers, by kind",
                &["kind"],
            ),
            messages_delivered: IntCounter::new(
                "hermes_messages_delivered_total",
                "Frames queued to sockets",
            )
            .unwrap_or_else(|_| unreachable_metric()),
            messages_dropped: counter_vec(
                "hermes_messages_dropped_total",
                "Frames not delivered to a socket, by reason",
                &["reason"],
            ),
            send_queue_overflows: IntCounter::new(
                "hermes_send_queue_overflows_total",
                "Sockets closed with 1013 because their send queue was full",
            )
            .unwrap_or_else(|_| unreachable_metric()),
            deliver_requests: counter_vec(
                "hermes_deliver_requests_total",
                "Internal deliver requests, by side and status",
                &["side", "status"],
            ),
            deliver_stream_connects: counter_vec(
                "hermes_deliver_stream_connects_total",
                "Deliver streams opened from this router to gateways, by result",
                &["result"],
            ),
            routing_duration: histogram(
                "hermes_routing_duration_seconds",
                "Time to route one message: registry lookup, grouping and delivery",
            ),
            end_to_end: histogram(
                "hermes_end_to_end_seconds",
                "Producer publish time to the frame reaching the socket writer",
            ),
            closes: counter_vec(
                "hermes_socket_closes_total",
                "Socket closes by close code",
                &["code"],
            ),
            queue_messages: counter_vec(
                "hermes_queue_messages_total",
                "Queue messages by source and outcome",
                &["source", "outcome"],
            ),
            dead_letters: counter_vec(
                "hermes_dead_letters_total",
                "Messages sent to the dead-letter queue, by reason",
                &["reason"],
            ),
            registry_duration: histogram_vec(
                "hermes_registry_duration_seconds",
                "Registry call latency, by operation",
                &["op"],
            ),
            route_skipped: counter_vec(
                "hermes_route_skipped_total",
                "Gateways holding targets that the router skipped, by reason",
                &["reason"],
            ),
            kube_gateway_endpoints: IntGaugeVec::new(
                Opts::new(
                    "hermes_kube_gateway_endpoints",
                    "Gateway endpoints in the internal Service's EndpointSlices, by state",
                ),
                &["state"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            kube_leader: IntGauge::new(
                "hermes_kube_leader",
                "1 while this consumer holds the reaper's Lease",
            )
            .unwrap_or_else(|_| unreachable_metric()),
            kube_leader_acquisitions: IntCounter::new(
                "hermes_kube_leader_acquisitions_total",
                "Times this consumer acquired the reaper's Lease",
            )
            .unwrap_or_else(|_| unreachable_metric()),
            reaper_runs: counter_vec(
                "hermes_reaper_runs_total",
                "Reaper passes over the registry's gateways, by result",
                &["result"],
            ),
            reaped_gateways: IntCounter::new(
                "hermes_reaped_gateways_total",
                "Gateways without a pod whose registry rows the reaper deleted",
            )
            .unwrap_or_else(|_| unreachable_metric()),
            reaped_rows: counter_vec(
                "hermes_reaped_rows_total",
                "Registry rows the reaper deleted, by kind",
                &["kind"],
            ),
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.connections_open.clone()),
            Box::new(m.connects.clone()),
            Box::new(m.auth_duration.clone()),
            Box::new(m.bcrypt_queue.clone()),
            Box::new(m.messages_received.clone()),
            Box::new(m.messages_delivered.clone()),
            Box::new(m.messages_dropped.clone()),
            Box::new(m.send_queue_overflows.clone()),
            Box::new(m.deliver_requests.clone()),
            Box::new(m.deliver_stream_connects.clone()),
            Box::new(m.routing_duration.clone()),
            Box::new(m.end_to_end.clone()),
            Box::new(m.closes.clone()),
            Box::new(m.queue_messages.clone()),
            Box::new(m.dead_letters.clone()),
            Box::new(m.registry_duration.clone()),
            Box::new(m.route_skipped.clone()),
            Box::new(m.kube_gateway_endpoints.clone()),
            Box::new(m.kube_leader.clone()),
            Box::new(m.kube_leader_acquisitions.clone()),
            Box::new(m.reaper_runs.clone()),
            Box::new(m.reaped_gateways.clone()),
            Box::new(m.reaped_rows.clone()),
        ];
        for c in collectors {
            if let Err(error) = registry.register(c) {
                tracing::error!(%error, "cannot register a metric");
            }
        }
        m
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "cannot encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

// The names and labels below are constants that are valid, so construction cannot fail;
// the fallbacks only keep `unwrap` out of library code.
fn unreachable_metric<T>() -> T {
    panic!("invalid metric definition")
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|_| unreachable_metric())
}

fn histogram(name: &str, help: &str) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))
        .unwrap_or_else(|_| unreachable_metric())
}

fn histogram_vec(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .unwrap_or_else(|_| unreachable_metric())
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
}
