//! The AMQP side of the queue scenarios (P3, queue-floor, amqp-cost): a connection, a
//! confirm-mode publisher, and a steady-rate schedule.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, PublisherConfirm};
use serde_json::json;

use crate::measure::now_micros;

/// The room every P3 user's token is issued for.
pub const ROOM: &str = "p3";
/// The sender of every notification.
pub const SENDER: &str = "p3-backend";

/// The user of socket `i` (each socket its own user).
pub fn user(i: usize) -> String {
    format!("p3-u{i}")
}

/// Opens a connection to the broker at `url` (`amqp://user:password@host:port/vhost`, read
/// by lapin: user, password and vhost percent-decoded, so `%2f` is the vhost `/`), on this
/// tokio runtime.
pub async fn amqp_connect(url: &str) -> Result<Connection> {
    Ok(Connection::connect(url, ConnectionProperties::default()).await?)
}

/// P3's publisher: one channel in confirm mode on a durable queue. Each publish's confirm is
/// awaited by a task of its own ([`Publisher::finish`] collects them), so the schedule never
/// waits for the broker.
pub struct Publisher {
    channel: Channel,
    queue: String,
    confirms: tokio::sync::mpsc::UnboundedSender<PublisherConfirm>,
    acked: Arc<AtomicU64>,
    nacked: Arc<AtomicU64>,
    confirmer: tokio::task::JoinHandle<()>,
}

/// What became of a publisher's messages.
pub struct Confirms {
    pub acked: u64,
    pub nacked: u64,
    /// Every confirm came within 30 s of the last publish.
    pub complete: bool,
}

impl Publisher {
    /// Declares `queue` (durable) on a new channel of `connection`, purges it and puts the
    /// channel in confirm mode.
    pub async fn new(connection: &Connection, queue: &str) -> Result<Self> {
        if queue.len() > 255 {
            bail!("the queue name is longer than AMQP's 255 bytes: {queue}");
        }
        let channel = connection.create_channel().await?;
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let (confirms, mut rx) = tokio::sync::mpsc::unbounded_channel::<PublisherConfirm>();
        let acked = Arc::new(AtomicU64::new(0));
        let nacked = Arc::new(AtomicU64::new(0));
        let confirmer = {
            let (acked, nacked) = (acked.clone(), nacked.clone());
            tokio::spawn(async move {
                // Confirms come in publishing order: awaiting them one after the other waits
                // no longer than the last one.
                while let Some(c) = rx.recv().await {
                    match c.await {
                        Ok(c) if c.is_ack() => acked.fetch_add(1, Ordering::SeqCst),
                        _ => nacked.fetch_add(1, Ordering::SeqCst),
                    };
                }
            })
        };
        Ok(Self {
            channel,
            queue: queue.to_owned(),
            confirms,
            acked,
            nacked,
            confirmer,
        })
    }

    /// Publishes notification `n` to `to_user`, persistent, its `sent_us` stamped now.
    pub async fn publish(&self, n: u64, to_user: &str) -> Result<()> {
        let body = json!({
            "user_id": SENDER,
            "room_id": ROOM,
            "to_user_id": to_user,
            "id": format!("p3-{n}"),
            "data": {"n": n, "sent_us": now_micros()},
        })
        .to_string();
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .context("basic.publish")?;
        let _ = self.confirms.send(confirm);
        Ok(())
    }

    /// Waits up to 30 s for the confirms still out.
    pub async fn finish(self) -> Confirms {
        drop(self.confirms);
        let complete = tokio::time::timeout(Duration::from_secs(30), self.confirmer)
            .await
            .is_ok();
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            self.channel.close(200, "done".into()),
        )
        .await;
        Confirms {
            acked: self.acked.load(Ordering::SeqCst),
            nacked: self.nacked.load(Ordering::SeqCst),
            complete,
        }
    }
}

/// Calls `send(n)` for `n` in `first..first + count` at `rate` per second: each turn, the
/// calls due by then together, turns at least `slot` apart (with 1 ms: below 1,000/s one
/// message a turn, at its time; at 5,000/s five a turn; with zero, each message at its own
/// time). The calls of a turn are awaited
/// together, so a client that writes from a thread of its own (lapin) gets them in one
/// wake-up instead of one each, as a producer publishing from several requests would hand
/// them over; each call must only hand its message off. Returns the seconds from the first
/// send to the return of the last.
pub async fn schedule<F, Fut>(
    first: u64,
    count: u64,
    rate: u64,
    slot: Duration,
    mut send: F,
) -> Result<f64>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let started = Instant::now();
    let due_at = |i: u64| started + Duration::from_secs_f64(i as f64 / rate as f64);
    let mut sent = 0;
    let mut turn = started;
    while sent < count {
        let now = Instant::now();
        // Every message whose time has come, at least the next one.
        let due = ((now - started).as_secs_f64() * rate as f64) as u64 + 1;
        let due = due.clamp(sent + 1, count);
        let calls: Vec<Fut> = (sent..due).map(|i| send(first + i)).collect();
        for result in futures_util::future::join_all(calls).await {
            result?;
        }
        sent = due;
        turn = (turn + slot).max(now);
        if sent < count {
            let next = due_at(sent).max(turn);
            if Instant::now() < next {
                tokio::time::sleep_until(next.into()).await;
            }
        }
    }
    Ok(started.elapsed().as_secs_f64())
}
