//! The consumer's settings: its source (RabbitMQ or SQS), retries, concurrency and
//! Kubernetes awareness, besides the registry's (`hermes_shared::registry::config`).
//! Documented in docs/configuration.md and docs/consumer.md.

use hermes_shared::routes::RoutesConfig;
use std::net::SocketAddr;
use std::time::Duration;

use hermes_shared::config::{
    self, INTERNAL_SECRET, Strings, addr, deliver_transport, host_name, num, positive,
    positive_secs, secs,
};
use hermes_shared::history::HistorySettings;
use hermes_shared::registry::RegistryKind;
use hermes_shared::router::DeliverTransport;
use hermes_shared::{Error, Result};

pub use hermes_shared::config::MAX_MESSAGE_BYTES;

// The variables. Each is documented in docs/configuration.md.
pub const CONSUMER_LISTEN: &str = "HERMES_CONSUMER_LISTEN";
pub const SOURCE: &str = "HERMES_SOURCE";
pub const AMQP_URL: &str = "HERMES_AMQP_URL";
pub const AMQP_QUEUE: &str = "HERMES_AMQP_QUEUE";
pub const AMQP_PREFETCH: &str = "HERMES_AMQP_PREFETCH";
pub const SQS_QUEUE_URL: &str = "HERMES_SQS_QUEUE_URL";
pub const SQS_DLQ_URL: &str = "HERMES_SQS_DEAD_LETTER_QUEUE_URL";
pub const SQS_WAIT: &str = "HERMES_SQS_WAIT_SECONDS";
pub use hermes_shared::config::{MAX_ATTEMPTS, RETRY_DELAYS, SQS_VISIBILITY};
pub const CONCURRENCY: &str = "HERMES_CONSUMER_CONCURRENCY";
pub const CONSUMER_THREADS: &str = "HERMES_CONSUMER_THREADS";
pub const ROUTE_TO_ALL_MAX_GATEWAYS: &str = "HERMES_ROUTE_TO_ALL_MAX_GATEWAYS";
pub const KUBE_GATEWAY_SERVICE: &str = "HERMES_KUBE_GATEWAY_SERVICE";
pub const KUBE_NAMESPACE: &str = "HERMES_KUBE_NAMESPACE";
pub const KUBE_IDENTITY: &str = "HERMES_KUBE_IDENTITY";
pub const KUBE_LEASE_NAME: &str = "HERMES_KUBE_LEASE_NAME";
pub const KUBE_GATEWAY_SELECTOR: &str = "HERMES_KUBE_GATEWAY_SELECTOR";
pub const KUBE_GATEWAY_PORT: &str = "HERMES_KUBE_GATEWAY_PORT";
pub const KUBE_LEASE_DURATION: &str = "HERMES_KUBE_LEASE_SECONDS";
pub const KUBE_RENEW_INTERVAL: &str = "HERMES_KUBE_RENEW_SECONDS";
pub const KUBE_REAP_INTERVAL: &str = "HERMES_KUBE_REAP_INTERVAL_SECONDS";

/// What an AMQP URL (`amqp[s]://user:password@host:port/vhost?heartbeat=N`) says, decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpEndpoint {
    /// `amqps://`: TLS, the server's certificate checked against the system's roots.
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub username: String,
    /// Never logged.
    pub password: String,
    pub vhost: String,
    /// Seconds; `None`: the client's default.
    pub heartbeat: Option<u16>,
}

impl std::fmt::Debug for AmqpEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpEndpoint")
            .field("tls", &self.tls)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("vhost", &self.vhost)
            .field("heartbeat", &self.heartbeat)
            .finish_non_exhaustive()
    }
}

impl AmqpEndpoint {
    /// Reads an AMQP URL as RabbitMQ's URI spec does: user and password default to
    /// `guest`, the port to 5672 (5671 for `amqps`), and the path is the vhost,
    /// percent-decoded (`%2f` is `/`); no path, or an empty one, is the default vhost `/`.
    /// The only query parameter read is `heartbeat`. The error never repeats the URL (it
    /// may hold a password).
    pub fn parse(url: &str) -> std::result::Result<Self, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("not a valid URL ({e})"))?;
        let (tls, default_port) = match parsed.scheme() {
            "amqp" => (false, 5672),
            "amqps" => (true, 5671),
            _ => return Err("must start with amqp:// or amqps://".into()),
        };
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("has no host")?
            .trim_matches(['[', ']'])
            .to_owned();
        let decode = |part: &str, what: &str| {
            percent_encoding::percent_decode_str(part)
                .decode_utf8()
                .map(|v| v.into_owned())
                .map_err(|_| format!("its {what} is not UTF-8 once percent-decoded"))
        };
        let username = match parsed.username() {
            "" => "guest".to_owned(),
            u => decode(u, "user name")?,
        };
        let password = match parsed.password() {
            None => "guest".to_owned(),
            Some(p) => decode(p, "password")?,
        };
        let vhost = match parsed.path().strip_prefix('/').unwrap_or("") {
            "" => "/".to_owned(),
            v => decode(v, "vhost")?,
        };
        let heartbeat = parsed
            .query_pairs()
            .find(|(k, _)| k == "heartbeat")
            .map(|(_, v)| {
                v.parse::<u16>()
                    .map_err(|_| format!("heartbeat={v} is not a number of seconds"))
            })
            .transpose()?;
        Ok(Self {
            tls,
            host,
            port: parsed.port().unwrap_or(default_port),
            username,
            password,
            vhost,
            heartbeat,
        })
    }
}

/// Where the consumer pulls messages from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceConfig {
    /// RabbitMQ.
    Amqp {
        /// `amqp://user:pass@host:5672/vhost` (never logged: it may hold a password).
        url: String,
        /// The queue (declared durable if absent).
        queue: String,
        /// Unacknowledged messages in flight (basic.qos).
        prefetch: u16,
    },
    /// Amazon SQS (or a compatible server through `AWS_ENDPOINT_URL_SQS`).
    Sqs {
        queue_url: String,
        /// Where invalid messages and exhausted retries go, with the reason; when unset,
        /// the queue's redrive policy is the only dead-letter path.
        dead_letter_queue_url: Option<String>,
        /// Long-polling wait (0–20 s).
        wait: Duration,
        /// How long a received message stays invisible; extended while routing is slow.
        visibility: Duration,
    },
}

/// The consumer's validated configuration.
#[derive(Clone)]
pub struct ConsumerConfig {
    pub stage: String,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
    pub registry: RegistryKind,
    pub internal_secret: String,
    pub deliver_timeout: Duration,
    /// How the router reaches the gateways.
    pub deliver_transport: DeliverTransport,
    pub source: SourceConfig,
    /// Deliveries of one message before it is dead-lettered.
    pub max_attempts: u32,
    /// Delay before each retry (the last one repeats).
    pub retry_delays: Vec<Duration>,
    /// Messages routed at the same time.
    pub concurrency: usize,
    /// The largest `data` a message may carry (its JSON text, bytes): a larger one is
    /// dead-lettered at once as `too_large`.
    pub max_message_bytes: usize,
    /// Runtime threads. 1: everything on one thread, so a message changes threads only
    /// between the broker client's reader and the router; more: a work-stealing runtime
    /// with this many workers, for more than one core's worth of routing per replica.
    pub threads: usize,
    /// Room and user messages go to every live gateway, without a registry lookup, while
    /// there are at most this many (0: always look up).
    pub route_to_all_max_gateways: usize,
    /// Kubernetes awareness (EndpointSlice view, Lease, reaper), when configured.
    pub kube: Option<KubeConfig>,
    /// The streams' history, which the router records every notification in.
    pub history: HistorySettings,
    /// The TTL of the gateways' registry rows (`HERMES_REGISTRY_TTL_SECONDS`): after an
    /// outage of the registry that long rows may have expired.
    pub registry_ttl: Duration,
    /// The route integrations: the reaper sends `$disconnect` for the sockets of a gateway
    /// whose pod is gone (`HERMES_ROUTE_DISCONNECT_URL`, `HERMES_ROUTE_SECRET`).
    pub routes: RoutesConfig,
}

/// The consumer's Kubernetes awareness. On when `HERMES_KUBE_GATEWAY_SERVICE` is set; the
/// API server is found the usual way (in-cluster service account, else `KUBECONFIG`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeConfig {
    /// The gateways' internal Service: its EndpointSlices carry
    /// `kubernetes.io/service-name=<this>`.
    pub gateway_service: String,
    /// Namespace of the gateways and the Lease; `None`: the client's default (in-cluster:
    /// the pod's own namespace).
    pub namespace: Option<String>,
    /// This consumer's name in the Lease (`holderIdentity`): the pod name in the chart.
    pub identity: String,
    /// The Lease whose holder runs the reaper.
    pub lease_name: String,
    /// Label selector of the gateway pods (`app.kubernetes.io/component=gateway,...`);
    /// `None`: every pod of the namespace is watched.
    pub gateway_selector: Option<String>,
    /// Name of the internal port in the EndpointSlices (`internal`).
    pub gateway_port: String,
    /// How long a Lease holder is trusted without renewing (`leaseDurationSeconds`).
    pub lease_duration: Duration,
    /// How often the holder renews and the others try to acquire.
    pub renew_interval: Duration,
    /// How often the leader compares the registry's gateways with the pods.
    pub reap_interval: Duration,
}

impl KubeConfig {
    /// `None` unless `HERMES_KUBE_GATEWAY_SERVICE` is set.
    pub fn from_strings(s: &dyn Strings) -> Result<Option<Self>> {
        let Some(gateway_service) = s.get(KUBE_GATEWAY_SERVICE).filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let lease_duration = positive_secs(s, KUBE_LEASE_DURATION, 15)?;
        let renew_interval = positive_secs(s, KUBE_RENEW_INTERVAL, 5)?;
        if renew_interval >= lease_duration {
            return Err(Error::Config(format!(
                "{KUBE_RENEW_INTERVAL}: must be shorter than {KUBE_LEASE_DURATION} ({} s), or \
                 the Lease expires between two renewals",
                lease_duration.as_secs()
            )));
        }
        let identity = s
            .get(KUBE_IDENTITY)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| {
                format!(
                    "{}-{}",
                    host_name("hermes-consumer"),
                    hermes_shared::ids::random_secret(6)
                )
            });
        Ok(Some(Self {
            gateway_service,
            namespace: s.get(KUBE_NAMESPACE).filter(|v| !v.is_empty()),
            identity,
            lease_name: s
                .get(KUBE_LEASE_NAME)
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "hermes-reaper".into()),
            gateway_selector: s.get(KUBE_GATEWAY_SELECTOR).filter(|v| !v.is_empty()),
            gateway_port: s
                .get(KUBE_GATEWAY_PORT)
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "internal".into()),
            lease_duration,
            renew_interval,
            reap_interval: positive_secs(s, KUBE_REAP_INTERVAL, 30)?,
        }))
    }
}

impl std::fmt::Debug for ConsumerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.source {
            SourceConfig::Amqp {
                queue, prefetch, ..
            } => format!("amqp queue={queue} prefetch={prefetch}"),
            SourceConfig::Sqs { queue_url, .. } => format!("sqs {queue_url}"),
        };
        f.debug_struct("ConsumerConfig")
            .field("stage", &self.stage)
            .field("listen", &self.listen)
            .field("registry", &self.registry)
            .field("source", &source)
            .field("max_attempts", &self.max_attempts)
            .field("retry_delays", &self.retry_delays)
            .finish_non_exhaustive()
    }
}

impl ConsumerConfig {
    /// Reads and validates the consumer's configuration.
    pub fn from_strings(s: &dyn Strings) -> Result<Self> {
        let stage = config::stage(s);
        let redelivery = config::Redelivery::from_strings(s)?;
        let source = match s.get(SOURCE).as_deref() {
            None | Some("amqp") => {
                let url = s
                    .get(AMQP_URL)
                    .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
                if let Err(why) = AmqpEndpoint::parse(&url) {
                    return Err(Error::Config(format!("{AMQP_URL}: {why}")));
                }
                let queue = s
                    .get(AMQP_QUEUE)
                    .unwrap_or_else(|| "hermes-messageQueue".into());
                if queue.len() > 200 {
                    return Err(Error::Config(format!("{AMQP_QUEUE}: at most 200 bytes")));
                }
                let prefetch: u16 = num(s, AMQP_PREFETCH, 64u16)?;
                if prefetch == 0 {
                    return Err(Error::Config(format!(
                        "{AMQP_PREFETCH}: must be greater than 0"
                    )));
                }
                SourceConfig::Amqp {
                    url,
                    queue,
                    prefetch,
                }
            }
            Some("sqs") => {
                let queue_url = s.get(SQS_QUEUE_URL).ok_or_else(|| {
                    Error::Config(format!("{SQS_QUEUE_URL}: required when {SOURCE}=sqs"))
                })?;
                let wait = secs(s, SQS_WAIT, 20)?;
                if wait > Duration::from_secs(20) {
                    return Err(Error::Config(format!("{SQS_WAIT}: at most 20")));
                }
                SourceConfig::Sqs {
                    queue_url,
                    dead_letter_queue_url: s.get(SQS_DLQ_URL),
                    wait,
                    visibility: redelivery.sqs_visibility,
                }
            }
            Some(other) => {
                return Err(Error::Config(format!(
                    "{SOURCE}: {other:?} must be amqp or sqs"
                )));
            }
        };
        let internal_secret = s
            .get(INTERNAL_SECRET)
            .ok_or_else(|| Error::Config(format!("{INTERNAL_SECRET}: required")))?;
        Ok(Self {
            listen: addr(s, CONSUMER_LISTEN, "127.0.0.1:8082")?,
            registry: RegistryKind::from_strings(s, &stage)?,
            stage,
            internal_secret,
            deliver_timeout: config::deliver_timeout(s)?,
            deliver_transport: deliver_transport(s)?,
            source,
            max_attempts: redelivery.max_attempts,
            retry_delays: redelivery.delays,
            concurrency: positive(s, CONCURRENCY, 64)?,
            max_message_bytes: config::max_message_bytes(s)?,
            threads: positive(s, CONSUMER_THREADS, 1)?,
            route_to_all_max_gateways: num(s, ROUTE_TO_ALL_MAX_GATEWAYS, 2usize)?,
            kube: KubeConfig::from_strings(s)?,
            history: HistorySettings::from_strings(s)?,
            registry_ttl: config::registry_ttl(s)?,
            routes: RoutesConfig::from_strings(s)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use hermes_shared::config::DELIVER_TRANSPORT;

    use super::*;

    #[test]
    fn kube_awareness_is_off_unless_the_gateway_service_is_named() {
        let env = HashMap::from([(INTERNAL_SECRET, "internal-secret-0123456789")]);
        assert_eq!(
            ConsumerConfig::from_strings(&env).expect("valid").kube,
            None
        );
        let mut kube = env.clone();
        kube.insert(KUBE_GATEWAY_SERVICE, "hermes-internal");
        kube.insert(KUBE_IDENTITY, "consumer-0");
        let k = ConsumerConfig::from_strings(&kube)
            .expect("valid")
            .kube
            .expect("on");
        assert_eq!(k.gateway_service, "hermes-internal");
        assert_eq!(k.identity, "consumer-0");
        assert_eq!(k.lease_name, "hermes-reaper");
        assert_eq!(k.gateway_port, "internal");
        assert_eq!(k.namespace, None);
        assert_eq!(
            (k.lease_duration, k.renew_interval),
            (Duration::from_secs(15), Duration::from_secs(5))
        );
    }

    #[test]
    fn a_renew_interval_not_shorter_than_the_lease_is_refused() {
        let env = HashMap::from([
            (INTERNAL_SECRET, "internal-secret-0123456789"),
            (KUBE_GATEWAY_SERVICE, "hermes-internal"),
            (KUBE_LEASE_DURATION, "5"),
            (KUBE_RENEW_INTERVAL, "5"),
        ]);
        let err = ConsumerConfig::from_strings(&env)
            .expect_err("refused")
            .to_string();
        assert!(err.contains(KUBE_RENEW_INTERVAL), "{err}");
    }

    #[test]
    fn consumer_defaults_to_the_original_queue_name() {
        let env = HashMap::from([(INTERNAL_SECRET, "internal-secret-0123456789")]);
        let c = ConsumerConfig::from_strings(&env).expect("valid");
        assert_eq!(
            c.source,
            SourceConfig::Amqp {
                url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
                queue: "hermes-messageQueue".into(),
                prefetch: 64
            }
        );
        assert_eq!(c.threads, 1, "one runtime thread unless asked");
        assert_eq!(c.deliver_transport, DeliverTransport::Stream);
        let mut http = env.clone();
        http.insert(DELIVER_TRANSPORT, "HTTP");
        let c = ConsumerConfig::from_strings(&http).expect("valid");
        assert_eq!(c.deliver_transport, DeliverTransport::Http);
        // One bad or missing setting each: the error names the variable.
        for (key, value, named) in [
            (SOURCE, "sqs", SQS_QUEUE_URL),
            (RETRY_DELAYS, "100,soon", RETRY_DELAYS),
            (CONSUMER_THREADS, "0", CONSUMER_THREADS),
            (DELIVER_TRANSPORT, "udp", DELIVER_TRANSPORT),
        ] {
            let mut bad = env.clone();
            bad.insert(key, value);
            let err = ConsumerConfig::from_strings(&bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.starts_with(named), "{key}={value}: {err}");
        }
    }

    #[test]
    fn amqp_urls_are_read_as_rabbitmq_reads_them() {
        let e = AmqpEndpoint::parse("amqp://guest:guest@127.0.0.1:5672/%2f").expect("valid");
        assert_eq!(
            (e.tls, e.host.as_str(), e.port, e.vhost.as_str()),
            (false, "127.0.0.1", 5672, "/")
        );
        let e = AmqpEndpoint::parse(
            "amqps://hermes:p%40ss%2Bw0rd@mq.example.com/tenant%2Fa?heartbeat=15",
        )
        .expect("valid");
        assert_eq!(
            (e.tls, e.port, e.username.as_str(), e.password.as_str()),
            (true, 5671, "hermes", "p@ss+w0rd")
        );
        assert_eq!((e.vhost.as_str(), e.heartbeat), ("tenant/a", Some(15)));
        let e = AmqpEndpoint::parse("amqp://[::1]").expect("valid");
        assert_eq!(
            (e.host.as_str(), e.username.as_str(), e.vhost.as_str()),
            ("::1", "guest", "/")
        );
        let e = AmqpEndpoint::parse("amqp://u:hunter2@h").expect("valid");
        assert_eq!(e.password, "hunter2");
        assert!(
            !format!("{e:?}").contains("hunter2"),
            "Debug hides the password"
        );
        for bad in [
            "http://h/",
            "amqp://",
            "amqp://u:secret-password@h/?heartbeat=soon",
            "not a url",
        ] {
            let why = AmqpEndpoint::parse(bad).expect_err(bad);
            assert!(!why.contains("secret-password"), "{why}");
        }
    }

    /// Every variable the consumer reads (the RabbitMQ source's and, through
    /// `HERMES_SOURCE=sqs`, the SQS source's), given each of a list of mistaken values in
    /// turn, is taken or refused with an error that names a variable and holds no secret
    /// (the internal secret, the AMQP URL with its password, the CQL password).
    #[test]
    fn a_bad_value_of_any_variable_is_refused_naming_a_variable_and_no_secret() {
        use hermes_shared::registry::scylla::config::SCYLLA_PASSWORD;
        let base = [
            (INTERNAL_SECRET, "internal-secret-0123456789"),
            (
                AMQP_URL,
                "amqp://hermes:amqp-password-42@127.0.0.1:5672/%2f",
            ),
            // Read only under HERMES_SOURCE=sqs, where it is required before the others.
            (SQS_QUEUE_URL, "http://127.0.0.1:9324/000000000000/hermes"),
        ];
        let secrets = [INTERNAL_SECRET, AMQP_URL, SCYLLA_PASSWORD];
        let checked = hermes_shared::config::check_mistaken_values(&base, &secrets, |s| {
            ConsumerConfig::from_strings(s).map(drop)
        });
        // Reached: the SQS source's variables (read under HERMES_SOURCE=sqs).
        checked.assert_clean(SQS_WAIT, 50);
    }
}
