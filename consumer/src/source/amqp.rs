//! The RabbitMQ source (lapin).
//!
//! Topology, declared at start (idempotently):
//! - the queue (`HERMES_AMQP_QUEUE`, durable; an existing queue is used as it is);
//! - `<queue>.retry.<ms>ms` per retry delay: durable, `x-message-ttl` = the delay, dead-lettered
//!   back to the queue through the default exchange. A transient failure republishes the
//!   message there (publisher-confirmed) with `x-hermes-attempts` incremented, then acks
//!   the original: backoff without a hot requeue loop, and nothing acked before it is
//!   safely elsewhere;
//! - `<queue>.dead-letter`: durable; invalid messages and exhausted retries are published
//!   there with `x-hermes-dead-reason` and `x-hermes-attempts` headers.
//!
//! A broken connection is re-established with exponential backoff; unacknowledged
//! messages are redelivered by the broker, and gateways drop repeated message ids.
//!
//! The client is lapin on the consumer's tokio runtime (`lapin::runtime::default_runtime`,
//! bound to the current runtime's handle): the socket is registered with that runtime's
//! reactor, and lapin's internal RPC and heartbeat tasks are spawned on it. lapin 4 still
//! reads and writes the socket on a thread of its own (`lapin-io-loop`, one per connection;
//! no lapin API moves it onto the runtime), so a delivery and its acknowledgement cross
//! threads (docs/consumer.md, Measured).
//!
//! Header values are whatever the publisher sent: long strings and byte arrays are bytes
//! (any content, UTF-8 or not), and Hermes's own headers are read only when they have a
//! type and content it understands; anything else in them is ignored, never an error.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::config::AmqpEndpoint;
use async_compat::CompatExt;
use futures_util::StreamExt;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::tcp::{AsyncTcpStream, RustlsConnector, RustlsConnectorConfig};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Event};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::acks;
use super::policy::{Backoff, Decision};
use super::{DeadLettered, Delivery, Incoming, Sink, Source};
use crate::{Error, Result};

/// The metric label of this source.
const SOURCE: &str = "amqp";
/// Header counting failed deliveries so far.
pub const ATTEMPTS_HEADER: &str = "x-hermes-attempts";
/// Header carrying the id a message was first routed under.
pub const ID_HEADER: &str = "x-hermes-id";
/// Header listing the gateways (comma-separated ids) earlier attempts reached; a retry goes
/// only to the others.
pub const ANSWERED_HEADER: &str = "x-hermes-answered";
/// Header carrying the dead-letter reason.
pub const REASON_HEADER: &str = "x-hermes-dead-reason";
/// How long a republished message may wait for the broker's confirm.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening a connection (TCP, TLS, AMQP handshake) may take before it is retried:
/// a broker that accepts the socket and never answers would otherwise hold the source forever.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// AMQP's persistent delivery mode.
const PERSISTENT: u8 = 2;
/// A session that consumed for this long starts the reconnect backoff over; one that ends
/// sooner (a connection that fails right after it opens) backs off like a failed connect.
const STEADY: Duration = Duration::from_secs(10);

/// Settings of the RabbitMQ source.
#[derive(Clone)]
pub struct AmqpSettings {
    /// Contains credentials: never logged.
    pub url: String,
    pub queue: String,
    pub prefetch: u16,
}

impl std::fmt::Debug for AmqpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSettings")
            .field("queue", &self.queue)
            .field("prefetch", &self.prefetch)
            .finish_non_exhaustive()
    }
}

impl AmqpSettings {
    /// The dead-letter queue's name.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead-letter", self.queue)
    }

    /// The retry queue for a delay.
    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}.retry.{}ms", self.queue, delay.as_millis())
    }
}

/// Consumes a RabbitMQ queue.
pub struct AmqpSource {
    settings: Arc<AmqpSettings>,
    endpoint: AmqpEndpoint,
    delivery: Arc<Delivery>,
}

fn broker(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Broker(format!("{context}: {e}"))
}

/// lapin's URI for `endpoint`, as Hermes decoded it (`AmqpEndpoint`).
fn amqp_uri(endpoint: &AmqpEndpoint) -> AMQPUri {
    AMQPUri {
        scheme: if endpoint.tls {
            AMQPScheme::AMQPS
        } else {
            AMQPScheme::AMQP
        },
        authority: AMQPAuthority {
            userinfo: AMQPUserInfo {
                username: endpoint.username.clone(),
                password: endpoint.password.clone(),
            },
            host: endpoint.host.clone(),
            port: endpoint.port,
        },
        vhost: endpoint.vhost.clone(),
        query: AMQPQueryString {
            heartbeat: endpoint.heartbeat,
            ..AMQPQueryString::default()
        },
    }
}

/// A TLS connector that checks the broker's certificate against the system's roots.
fn tls() -> Result<RustlsConnector> {
    RustlsConnectorConfig::new_with_native_certs()
        .and_then(RustlsConnectorConfig::connector_with_no_client_auth)
        .map_err(|e| broker("amqps: no usable root certificate in the system's store", e))
}

/// The socket of a connection being opened, so that it can be ended from outside lapin.
#[derive(Default)]
struct Opening {
    /// A second handle on the socket once it is connected.
    socket: Option<std::net::TcpStream>,
    /// Given up on: a socket connected from now on is closed at once.
    abandoned: bool,
}

impl Opening {
    /// Ends the attempt: its socket, connected now or later, is shut down.
    fn abandon(&mut self) {
        self.abandoned = true;
        if let Some(socket) = self.socket.take() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Opens a connection to `endpoint`, giving up after [`CONNECT_TIMEOUT`].
///
/// lapin reads and writes on its own thread from the first byte; a connection that is given
/// up on is ended by shutting its socket down, so that thread ends too.
pub(crate) async fn open_connection(endpoint: &AmqpEndpoint, name: &str) -> Result<Connection> {
    open_connection_within(endpoint, name, CONNECT_TIMEOUT).await
}

async fn open_connection_within(
    endpoint: &AmqpEndpoint,
    name: &str,
    limit: Duration,
) -> Result<Connection> {
    let tls = if endpoint.tls { Some(tls()?) } else { None };
    let opening: Arc<Mutex<Opening>> = Arc::default();
    let connect = {
        let opening = opening.clone();
        async move |uri: AMQPUri, _runtime| -> lapin::Result<_> {
            let host = uri.authority.host.as_str();
            let stream = tokio::net::TcpStream::connect((host, uri.authority.port)).await?;
            stream.set_nodelay(true)?;
            let handle = std::os::fd::AsFd::as_fd(&stream).try_clone_to_owned()?;
            {
                let mut opening = opening.lock();
                opening.socket = Some(std::net::TcpStream::from(handle));
                if opening.abandoned {
                    opening.abandon();
                    return Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into());
                }
            }
            let stream = AsyncTcpStream::Plain(stream.compat());
            Ok(match &tls {
                Some(connector) => stream.into_rustls(connector, host).await?,
                None => stream,
            })
        }
    };
    let runtime = lapin::runtime::default_runtime().map_err(|e| broker("lapin runtime", e))?;
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let opened = tokio::time::timeout(
        limit,
        Connection::connector(amqp_uri(endpoint), runtime, connect, properties),
    )
    .await;
    match opened {
        Ok(Ok(connection)) => {
            // lapin owns the socket now.
            opening.lock().socket = None;
            Ok(connection)
        }
        Ok(Err(e)) => Err(broker("cannot connect to RabbitMQ", e)),
        Err(_) => {
            opening.lock().abandon();
            Err(broker(
                "cannot connect to RabbitMQ",
                format!("no answer within {limit:?}"),
            ))
        }
    }
}

impl AmqpSource {
    /// Checks the URL (the error never repeats it: it may hold a password).
    pub fn new(settings: AmqpSettings, delivery: Delivery) -> Result<Self> {
        let endpoint = AmqpEndpoint::parse(&settings.url)
            .map_err(|why| Error::Broker(format!("HERMES_AMQP_URL: {why}")))?;
        if delivery.policy.delays.is_empty() {
            return Err(Error::Broker("no retry delays configured".into()));
        }
        Ok(Self {
            settings: Arc::new(settings),
            endpoint,
            delivery: Arc::new(delivery),
        })
    }
}

#[async_trait::async_trait]
impl Source for AmqpSource {
    fn name(&self) -> &'static str {
        SOURCE
    }

    /// Runs until `shutdown`, reconnecting with backoff. `ready` is true while consuming.
    async fn run(
        self: Box<Self>,
        sink: Arc<dyn Sink>,
        ready: Arc<AtomicBool>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let mut backoff = Backoff::new();
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let mut consuming_since = None;
            let consumed = self
                .session(&sink, &ready, &mut consuming_since, &shutdown)
                .await;
            ready.store(false, Ordering::Release);
            if consuming_since.is_some_and(|t: tokio::time::Instant| t.elapsed() >= STEADY) {
                backoff.reset();
            }
            if let Ok(true) = consumed {
                return Ok(());
            }
            let wait = backoff.failed();
            if let Err(error) = consumed {
                tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "RabbitMQ session ended; reconnecting");
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

impl AmqpSource {
    /// One connection's life. `Ok(true)`: stopped for shutdown; `Ok(false)`: the broker
    /// cancelled the consumer; `Err`: the connection or channel failed.
    async fn session(
        &self,
        sink: &Arc<dyn Sink>,
        ready: &AtomicBool,
        consuming_since: &mut Option<tokio::time::Instant>,
        shutdown: &CancellationToken,
    ) -> Result<bool> {
        let name = format!("hermes-consumer-{}", std::process::id());
        let connection = open_connection(&self.endpoint, &name).await?;
        let events = tokio::spawn(log_events(connection.events_listener()));
        let result = self
            .consume(&connection, &name, sink, ready, consuming_since, shutdown)
            .await;
        if connection.status().connected() {
            let _ = connection.close(200, "bye".into()).await;
        }
        events.abort();
        result
    }

    async fn consume(
        &self,
        connection: &Connection,
        tag: &str,
        sink: &Arc<dyn Sink>,
        ready: &AtomicBool,
        consuming_since: &mut Option<tokio::time::Instant>,
        shutdown: &CancellationToken,
    ) -> Result<bool> {
        let s = &self.settings;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| broker("cannot open a channel", e))?;
        declare_topology(connection, &channel, s, &self.delivery.policy.delays).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| broker("confirm.select", e))?;
        channel
            .basic_qos(s.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| broker("basic.qos", e))?;
        let consumer = channel
            .basic_consume(
                s.queue.as_str().into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| broker("basic.consume", e))?;
        ready.store(true, Ordering::Release);
        *consuming_since = Some(tokio::time::Instant::now());
        tracing::info!(queue = %s.queue, prefetch = s.prefetch, "consuming from RabbitMQ");

        // On shutdown, cancel the consumer: the stream ends once in-flight messages are done.
        let canceller = {
            let (channel, shutdown, tag) = (channel.clone(), shutdown.clone(), tag.to_owned());
            tokio::spawn(async move {
                shutdown.cancelled().await;
                if let Err(error) = channel
                    .basic_cancel(tag.into(), BasicCancelOptions::default())
                    .await
                {
                    tracing::warn!(%error, "basic.cancel failed");
                }
            })
        };
        // Deliveries until the consumer ends: with an error when the channel or the
        // connection failed, without one when it was cancelled (by us or by the broker).
        let failed: Mutex<Option<lapin::Error>> = Mutex::new(None);
        let deliveries = consumer.scan((), |(), delivery| {
            std::future::ready(match delivery {
                Ok(delivery) => Some(delivery),
                Err(error) => {
                    failed.lock().get_or_insert(error);
                    None
                }
            })
        });
        let (settled, batches) = tokio::sync::mpsc::unbounded_channel();
        let acker = tokio::spawn(acks::run(channel.clone(), batches));
        let session = Session {
            channel: channel.clone(),
            settings: self.settings.clone(),
            delivery: self.delivery.clone(),
            settled,
        };
        deliveries
            .for_each_concurrent(self.delivery.concurrency, |delivery| {
                handle(&session, sink.as_ref(), delivery)
            })
            .await;
        canceller.abort();
        // The last acknowledgements go out before the channel closes.
        drop(session);
        let _ = acker.await;
        if let Some(error) = failed.into_inner() {
            return Err(broker("the connection to RabbitMQ failed", error));
        }
        if shutdown.is_cancelled() {
            let _ = channel.close(200, "bye".into()).await;
            return Ok(true);
        }
        tracing::warn!("the broker cancelled the consumer");
        Ok(false)
    }
}

/// Logs what the broker says about the connection.
async fn log_events(events: impl futures_util::Stream<Item = Event>) {
    futures_util::pin_mut!(events);
    while let Some(event) = events.next().await {
        match event {
            Event::ConnectionBlocked(reason) => {
                tracing::warn!(%reason, "RabbitMQ blocked the connection: retries and dead letters wait");
            }
            Event::ConnectionUnblocked => tracing::info!("RabbitMQ unblocked the connection"),
            Event::Error(error) => tracing::debug!(%error, "RabbitMQ connection error"),
            _ => {}
        }
    }
}

/// What every delivery of one session shares.
struct Session {
    channel: Channel,
    settings: Arc<AmqpSettings>,
    delivery: Arc<Delivery>,
    /// To the channel's acknowledgements, sent in batches ([`acks`]).
    settled: tokio::sync::mpsc::UnboundedSender<acks::Settle>,
}

/// A durable queue declaration.
fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Declares the queue (if absent), its retry queues and its dead-letter queue.
async fn declare_topology(
    connection: &Connection,
    channel: &Channel,
    s: &AmqpSettings,
    retry_delays: &[Duration],
) -> Result<()> {
    // A passive declare that fails closes its channel: probe on a throwaway one, so an
    // existing queue declared with other arguments is used as it is.
    let probe = connection
        .create_channel()
        .await
        .map_err(|e| broker("cannot open a channel", e))?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let exists = probe
        .queue_declare(s.queue.as_str().into(), passive, FieldTable::default())
        .await
        .is_ok();
    if probe.status().connected() {
        let _ = probe.close(200, "probed".into()).await;
    }
    if !exists {
        channel
            .queue_declare(s.queue.as_str().into(), durable(), FieldTable::default())
            .await
            .map_err(|e| broker(&format!("cannot declare queue {}", s.queue), e))?;
    }
    channel
        .queue_declare(
            s.dead_letter_queue().into(),
            durable(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| broker("cannot declare the dead-letter queue", e))?;
    for delay in retry_delays {
        let mut args = FieldTable::default();
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(s.queue.as_str().into()),
        );
        channel
            .queue_declare(s.retry_queue(*delay).into(), durable(), args)
            .await
            .map_err(|e| broker("cannot declare a retry queue", e))?;
    }
    Ok(())
}

/// The id of a message that names none (no `id` in its body, no `message_id` property):
/// derived from its queue, the properties a producer sets per publish (`timestamp`,
/// `correlation_id`) and its body, so that the broker's redelivery of it (after a consumer
/// died holding it) is recognised by the gateways and not pushed twice. Two publishes of
/// the same body without any of these are one message to Hermes: give each an `id` (or a
/// `message_id`) to send the same body twice.
fn content_id(queue: &str, properties: &lapin::BasicProperties, body: &[u8]) -> String {
    let timestamp = properties.timestamp().unwrap_or_default().to_be_bytes();
    let correlation = properties
        .correlation_id()
        .as_ref()
        .map(|c| c.as_str().as_bytes().to_vec())
        .unwrap_or_default();
    hermes_shared::ids::content_id("amqp-", &[queue.as_bytes(), &timestamp, &correlation, body])
}

/// Routes one delivery and settles it: ack, retry later, or dead-letter.
async fn handle(session: &Session, sink: &dyn Sink, delivery: AmqpDelivery) {
    let s = &session.settings;
    let properties = &delivery.properties;
    let headers = properties.headers().as_ref();
    let failed_before = headers
        .and_then(|h| header_u32(h, ATTEMPTS_HEADER))
        .unwrap_or(0);
    let fallback_id = headers
        .and_then(|h| header_string(h, ID_HEADER))
        .or_else(|| properties.message_id().as_ref().map(|id| id.to_string()))
        .unwrap_or_else(|| content_id(&s.queue, properties, &delivery.data));
    let answered = headers
        .and_then(|h| header_string(h, ANSWERED_HEADER))
        .map(|list| answered_gateways(&list))
        .unwrap_or_default();
    let routed = sink
        .route(Incoming {
            body: &delivery.data,
            fallback_id: Some(&fallback_id),
            sent_at: None,
            answered: &answered,
        })
        .await;
    let id = routed.id;
    let decision = session
        .delivery
        .policy
        .decide(routed.outcome, failed_before.saturating_add(1));

    let republish = |queue: String, attempts: u32, why: Option<&str>| {
        let mut headers = headers.cloned().unwrap_or_default();
        headers.insert(
            ATTEMPTS_HEADER.into(),
            AMQPValue::LongLongInt(i64::from(attempts)),
        );
        if let Some(id) = id.as_deref() {
            headers.insert(ID_HEADER.into(), AMQPValue::LongString(id.into()));
        }
        if !routed.answered.is_empty() {
            headers.insert(
                ANSWERED_HEADER.into(),
                AMQPValue::LongString(routed.answered.join(",").into()),
            );
        }
        if let Some(why) = why {
            headers.insert(REASON_HEADER.into(), AMQPValue::LongString(why.into()));
        }
        let properties = properties
            .clone()
            .with_headers(headers)
            .with_delivery_mode(PERSISTENT);
        publish_confirmed(&session.channel, queue, properties, &delivery.data)
    };
    let settled = match &decision {
        Decision::Ack => Ok(()),
        Decision::Retry {
            delay,
            attempts,
            reason,
        } => {
            tracing::info!(%reason, attempts, retry_in_ms = delay.as_millis() as u64, "retrying a message later");
            republish(s.retry_queue(*delay), *attempts, None).await
        }
        Decision::DeadLetter {
            label,
            reason,
            attempts,
        } => {
            let settled = republish(s.dead_letter_queue(), *attempts, Some(reason)).await;
            if settled.is_ok() {
                sink.dead_lettered(DeadLettered {
                    label,
                    reason,
                    attempts: *attempts,
                    message_id: id.as_deref(),
                });
            }
            settled
        }
    };
    // Should the acknowledgement not make it (the connection is gone), the broker
    // redelivers and the gateways drop the repeat.
    let tag = delivery.delivery_tag;
    match settled {
        Ok(()) => {
            sink.count(SOURCE, decision.label());
            let _ = session.settled.send(acks::Settle::Ack(tag));
        }
        Err(error) => {
            tracing::warn!(%error, "could not move a message aside; returning it to the queue");
            sink.count(SOURCE, "requeued");
            let _ = session.settled.send(acks::Settle::Requeue(tag));
        }
    }
}

/// Publishes `body` to `queue` (default exchange) and waits for the broker's confirm.
async fn publish_confirmed(
    channel: &Channel,
    queue: String,
    properties: BasicProperties,
    body: &[u8],
) -> Result<()> {
    let published = async {
        channel
            .basic_publish(
                ShortString::default(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .map_err(|e| broker("publish", e))?
            .await
            .map_err(|e| broker("publisher confirm", e))
    };
    match tokio::time::timeout(CONFIRM_TIMEOUT, published).await {
        Err(_) => Err(Error::Broker("no publisher confirm in time".into())),
        Ok(Err(e)) => Err(e),
        Ok(Ok(Confirmation::Ack(_))) => Ok(()),
        Ok(Ok(Confirmation::Nack(_))) => Err(Error::Broker(format!(
            "the broker refused a message for {queue}"
        ))),
        Ok(Ok(Confirmation::NotRequested)) => {
            Err(Error::Broker("the channel is not in confirm mode".into()))
        }
    }
}

/// A header read as a number of attempts: any integer type, or a decimal string.
fn header_u32(headers: &FieldTable, key: &str) -> Option<u32> {
    let n: i64 = match headers.inner().get(key)? {
        AMQPValue::LongLongInt(v) => *v,
        AMQPValue::LongInt(v) => i64::from(*v),
        AMQPValue::LongUInt(v) => i64::from(*v),
        AMQPValue::ShortInt(v) => i64::from(*v),
        AMQPValue::ShortUInt(v) => i64::from(*v),
        AMQPValue::ShortShortInt(v) => i64::from(*v),
        AMQPValue::ShortShortUInt(v) => i64::from(*v),
        AMQPValue::LongString(v) => std::str::from_utf8(v.as_bytes())
            .ok()?
            .trim()
            .parse()
            .ok()?,
        AMQPValue::ShortString(v) => v.as_str().trim().parse().ok()?,
        _ => return None,
    };
    u32::try_from(n).ok()
}

/// A header read as text: a long or short string that is UTF-8 and not empty.
fn header_string(headers: &FieldTable, key: &str) -> Option<String> {
    let text = match headers.inner().get(key)? {
        AMQPValue::LongString(v) => std::str::from_utf8(v.as_bytes()).ok()?,
        AMQPValue::ShortString(v) => v.as_str(),
        _ => return None,
    };
    Some(text.to_owned()).filter(|t| !t.is_empty())
}

/// The gateway ids of an [`ANSWERED_HEADER`] value, each once.
fn answered_gateways(list: &str) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for id in list.split(',').map(str::trim).filter(|id| !id.is_empty()) {
        if !ids.iter().any(|known| known == id) {
            ids.push(id.to_owned());
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::LongString;

    #[test]
    fn the_answered_header_lists_each_gateway_once() {
        assert_eq!(
            answered_gateways("gw-a, gw-b,,gw-a"),
            vec!["gw-a".to_owned(), "gw-b".to_owned()]
        );
        assert!(answered_gateways("").is_empty());
    }

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    #[test]
    fn attempt_headers_are_read_whatever_their_integer_type() {
        let read = |v: AMQPValue| header_u32(&table(&[(ATTEMPTS_HEADER, v)]), ATTEMPTS_HEADER);
        assert_eq!(read(AMQPValue::LongInt(3)), Some(3));
        assert_eq!(read(AMQPValue::ShortShortUInt(2)), Some(2));
        assert_eq!(read(AMQPValue::LongString("4".into())), Some(4));
        assert_eq!(read(AMQPValue::ShortString("5".into())), Some(5));
        assert_eq!(read(AMQPValue::LongLongInt(-1)), None);
        assert_eq!(read(AMQPValue::LongLongInt(i64::MAX)), None);
        assert_eq!(header_u32(&FieldTable::default(), ATTEMPTS_HEADER), None);
    }

    #[test]
    fn hermes_headers_with_bytes_that_are_not_utf8_or_of_another_type_are_ignored() {
        let bad = || LongString::from(vec![0xff, 0xfe, b'7']);
        let h = table(&[
            (ATTEMPTS_HEADER, AMQPValue::LongString(bad())),
            (ID_HEADER, AMQPValue::ByteArray(vec![0xc3, 0x28].into())),
        ]);
        assert_eq!(header_u32(&h, ATTEMPTS_HEADER), None);
        assert_eq!(header_string(&h, ID_HEADER), None);
        let h = table(&[
            (
                ATTEMPTS_HEADER,
                AMQPValue::FieldTable(FieldTable::default()),
            ),
            (ID_HEADER, AMQPValue::LongString(bad())),
        ]);
        assert_eq!(header_u32(&h, ATTEMPTS_HEADER), None);
        assert_eq!(header_string(&h, ID_HEADER), None);
        let h = table(&[(ID_HEADER, AMQPValue::LongString("m-1".into()))]);
        assert_eq!(header_string(&h, ID_HEADER).as_deref(), Some("m-1"));
        let h = table(&[(ID_HEADER, AMQPValue::LongString("".into()))]);
        assert_eq!(header_string(&h, ID_HEADER), None);
    }

    /// A listener that accepts one socket and never says a word of AMQP; the task ends
    /// when the consumer closes the socket.
    async fn silent_broker() -> (AmqpEndpoint, tokio::task::JoinHandle<()>) {
        use tokio::io::AsyncReadExt;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback listener");
        let port = listener.local_addr().expect("its address").port();
        let held = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("the consumer connects");
            let mut buf = [0u8; 64];
            while socket.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        });
        let endpoint = AmqpEndpoint::parse(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f"))
            .expect("a valid URL");
        (endpoint, held)
    }

    #[tokio::test(start_paused = true)]
    async fn a_broker_that_accepts_and_never_answers_fails_the_connect_after_the_timeout() {
        let (endpoint, held) = silent_broker().await;
        let started = tokio::time::Instant::now();
        // Paused time runs ahead while everything waits: without its timeout the connect
        // would fail this guard, not hang the test.
        let error =
            match tokio::time::timeout(2 * CONNECT_TIMEOUT, open_connection(&endpoint, "test"))
                .await
                .expect("the connect gave up by itself")
            {
                Ok(_) => panic!("a silent broker gave a connection"),
                Err(e) => e.to_string(),
            };
        assert!(error.contains("no answer within 30s"), "{error}");
        assert!(started.elapsed() >= CONNECT_TIMEOUT, "gave up early");
        held.abort();
    }

    #[tokio::test]
    async fn a_connect_given_up_on_closes_its_socket() {
        let (endpoint, held) = silent_broker().await;
        let error = open_connection_within(&endpoint, "test", Duration::from_millis(300))
            .await
            .err()
            .map(|e| e.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.contains("no answer within 300ms")),
            "{error:?}"
        );
        // The broker side reads the end of the socket lapin's thread was holding.
        tokio::time::timeout(Duration::from_secs(10), held)
            .await
            .expect("the abandoned socket was closed")
            .expect("the broker side ran");
    }

    #[test]
    fn amqps_urls_get_a_tls_connector_from_the_system_roots_and_the_url_as_decoded() {
        assert!(tls().is_ok());
        let e = AmqpEndpoint::parse("amqps://us%40er:p%3Ass@mq.example.com/v%2Fx?heartbeat=7")
            .expect("valid");
        let uri = amqp_uri(&e);
        assert_eq!(uri.scheme, AMQPScheme::AMQPS);
        assert_eq!(
            (
                uri.authority.host.as_str(),
                uri.authority.port,
                uri.vhost.as_str()
            ),
            ("mq.example.com", 5671, "v/x")
        );
        assert_eq!(
            (
                uri.authority.userinfo.username.as_str(),
                uri.authority.userinfo.password.as_str()
            ),
            ("us@er", "p:ss")
        );
        assert_eq!(uri.query.heartbeat, Some(7));
        let plain = amqp_uri(&AmqpEndpoint::parse("amqp://rabbit").expect("valid"));
        assert_eq!(
            (plain.scheme, plain.authority.port, plain.vhost.as_str()),
            (AMQPScheme::AMQP, 5672, "/")
        );
    }

    #[test]
    fn settings_debug_never_shows_the_url() {
        let s = AmqpSettings {
            url: "amqp://u:hunter2@h/".into(),
            queue: "q".into(),
            prefetch: 1,
        };
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn queue_names_derive_from_the_main_queue() {
        let s = AmqpSettings {
            url: String::new(),
            queue: "hermes-messageQueue".into(),
            prefetch: 1,
        };
        assert_eq!(s.dead_letter_queue(), "hermes-messageQueue.dead-letter");
        assert_eq!(
            s.retry_queue(Duration::from_secs(1)),
            "hermes-messageQueue.retry.1000ms"
        );
    }
}
