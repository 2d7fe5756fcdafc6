//! Settling RabbitMQ deliveries in fewer frames, in order.
//!
//! Messages are routed concurrently and finish out of order. Acknowledging each one on its
//! own costs the broker a frame per message, and lapin a task and two cross-thread wake-ups.
//! [`AckWindow`] instead holds a finished message's acknowledgement while an older delivery
//! is still being routed, and acknowledges every held one with a single `basic.ack
//! multiple=true` once the older ones are done. A held acknowledgement waits at most until
//! [`AckWindow`] holds `hold_max` of them (then each is sent on its own), so one slow message
//! delays the acknowledgements of at most `hold_max` others and never stalls the prefetch
//! window.
//!
//! The frames must reach the broker in the order the window emits them: a `multiple`
//! acknowledgement sent before a `requeue` of a tag it covers would acknowledge that tag
//! instead. One task sends them, in order ([`send_in_order`]).

use std::collections::BTreeSet;

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::mpsc::UnboundedReceiver;

/// A frame settling deliveries of one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// `basic.ack multiple=true`: every delivery up to and including the tag.
    AckUpTo(u64),
    /// `basic.ack`: this delivery.
    Ack(u64),
    /// `basic.nack requeue=true`: this delivery goes back to the queue.
    Requeue(u64),
}

/// The deliveries of one channel between their receipt and their settlement.
#[derive(Debug)]
pub struct AckWindow {
    /// Received, not settled yet.
    routing: BTreeSet<u64>,
    /// Settled positively, not acknowledged yet (all above the oldest routing tag).
    held: BTreeSet<u64>,
    hold_max: usize,
}

impl AckWindow {
    /// A window holding at most `hold_max` acknowledgements (at least 1).
    pub fn new(hold_max: usize) -> Self {
        Self {
            routing: BTreeSet::new(),
            held: BTreeSet::new(),
            hold_max: hold_max.max(1),
        }
    }

    /// Delivery `tag` arrived (tags arrive in increasing order).
    pub fn received(&mut self, tag: u64) {
        self.routing.insert(tag);
    }

    /// Delivery `tag` is done and must be acknowledged: the frames to send now, in order.
    pub fn ack(&mut self, tag: u64) -> Vec<Frame> {
        self.routing.remove(&tag);
        self.held.insert(tag);
        self.release()
    }

    /// Delivery `tag` must go back to the queue: the frames to send now, in order (its
    /// requeue first, before any acknowledgement that would cover it).
    pub fn requeue(&mut self, tag: u64) -> Vec<Frame> {
        self.routing.remove(&tag);
        let mut frames = vec![Frame::Requeue(tag)];
        frames.extend(self.release());
        frames
    }

    /// Acknowledgements held, waiting for an older delivery.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    fn release(&mut self) -> Vec<Frame> {
        let oldest_routing = self.routing.first().copied().unwrap_or(u64::MAX);
        let above = self.held.split_off(&oldest_routing);
        let below = std::mem::replace(&mut self.held, above);
        let mut frames = Vec::new();
        if let Some(&last) = below.last() {
            frames.push(Frame::AckUpTo(last));
        }
        if self.held.len() >= self.hold_max {
            frames.extend(std::mem::take(&mut self.held).into_iter().map(Frame::Ack));
        }
        frames
    }
}

/// Sends the frames of `rx` on `channel` in the order received, merging consecutive
/// `AckUpTo`s (and the `Ack`s they cover) that queued up meanwhile. Returns when every
/// sender is gone and everything is sent. A failure (the channel closed) is logged once:
/// the broker redelivers what was not acknowledged, and gateways drop repeated ids.
pub async fn send_in_order(channel: Channel, mut rx: UnboundedReceiver<Frame>) {
    let mut batch = Vec::new();
    let mut failed = false;
    while rx.recv_many(&mut batch, 256).await > 0 {
        for frame in merge(batch.drain(..)) {
            let sent = match frame {
                Frame::AckUpTo(tag) => {
                    channel
                        .basic_ack(tag, BasicAckOptions { multiple: true })
                        .await
                }
                Frame::Ack(tag) => channel.basic_ack(tag, BasicAckOptions::default()).await,
                Frame::Requeue(tag) => {
                    channel
                        .basic_nack(
                            tag,
                            BasicNackOptions {
                                requeue: true,
                                multiple: false,
                            },
                        )
                        .await
                }
            };
            if let Err(error) = sent
                && !failed
            {
                failed = true;
                tracing::warn!(%error, "settling deliveries failed; the broker redelivers them");
            }
        }
    }
}

/// `frames` with each run of `AckUpTo`s sent as its last one, and `Ack`s that a pending
/// `AckUpTo` covers left out. Order is otherwise kept.
fn merge(frames: impl Iterator<Item = Frame>) -> Vec<Frame> {
    let mut out: Vec<Frame> = Vec::new();
    for frame in frames {
        match (out.last_mut(), frame) {
            (Some(Frame::AckUpTo(last)), Frame::AckUpTo(tag)) => *last = (*last).max(tag),
            (Some(Frame::AckUpTo(last)), Frame::Ack(tag)) if tag <= *last => {}
            _ => out.push(frame),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(tags: std::ops::RangeInclusive<u64>, hold_max: usize) -> AckWindow {
        let mut w = AckWindow::new(hold_max);
        for t in tags {
            w.received(t);
        }
        w
    }

    #[test]
    fn in_order_completions_are_acknowledged_one_by_one_at_once() {
        let mut w = window(1..=3, 16);
        assert_eq!(w.ack(1), vec![Frame::AckUpTo(1)]);
        assert_eq!(w.ack(2), vec![Frame::AckUpTo(2)]);
        assert_eq!(w.ack(3), vec![Frame::AckUpTo(3)]);
        assert_eq!(w.held(), 0);
    }

    #[test]
    fn later_completions_wait_for_the_oldest_and_go_in_one_frame() {
        let mut w = window(1..=5, 16);
        assert_eq!(w.ack(3), vec![]);
        assert_eq!(w.ack(2), vec![]);
        assert_eq!(w.ack(5), vec![]);
        assert_eq!(w.held(), 3);
        // 1 done: 1, 2, 3 in one frame; 5 waits for 4.
        assert_eq!(w.ack(1), vec![Frame::AckUpTo(3)]);
        assert_eq!(w.ack(4), vec![Frame::AckUpTo(5)]);
        assert_eq!(w.held(), 0);
    }

    #[test]
    fn a_slow_delivery_holds_back_at_most_hold_max_acknowledgements() {
        let mut w = window(1..=10, 3);
        assert_eq!(w.ack(2), vec![]);
        assert_eq!(w.ack(3), vec![]);
        assert_eq!(
            w.ack(4),
            vec![Frame::Ack(2), Frame::Ack(3), Frame::Ack(4)],
            "the third held acknowledgement sends them all"
        );
        assert_eq!(w.held(), 0);
        assert_eq!(w.ack(5), vec![]);
        // The slow one finishes: it and the held 5 go together (2..4 are acknowledged
        // already; a multiple acknowledgement covers only what is still outstanding).
        assert_eq!(w.ack(1), vec![Frame::AckUpTo(5)]);
    }

    #[test]
    fn a_requeue_goes_before_any_acknowledgement_covering_it() {
        let mut w = window(1..=3, 16);
        assert_eq!(w.ack(2), vec![]);
        assert_eq!(w.ack(3), vec![]);
        assert_eq!(
            w.requeue(1),
            vec![Frame::Requeue(1), Frame::AckUpTo(3)],
            "1 is requeued, then 2 and 3 acknowledged"
        );
        let mut w = window(1..=3, 16);
        assert_eq!(w.requeue(2), vec![Frame::Requeue(2)]);
        assert_eq!(w.ack(1), vec![Frame::AckUpTo(1)]);
        assert_eq!(w.ack(3), vec![Frame::AckUpTo(3)]);
    }

    #[test]
    fn queued_frames_merge_without_reordering_a_requeue() {
        assert_eq!(
            merge(
                [
                    Frame::AckUpTo(3),
                    Frame::AckUpTo(7),
                    Frame::Ack(5),
                    Frame::Ack(9),
                    Frame::Requeue(10),
                    Frame::AckUpTo(12),
                ]
                .into_iter()
            ),
            vec![
                Frame::AckUpTo(7),
                Frame::Ack(9),
                Frame::Requeue(10),
                Frame::AckUpTo(12)
            ]
        );
    }
}
