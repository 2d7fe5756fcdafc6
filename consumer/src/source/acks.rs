//! Acknowledgements of one AMQP channel, gathered and sent in batches.
//!
//! lapin writes on a thread of its own, and every frame handed to it wakes that thread: one
//! wake per acknowledgement was most of what lapin cost per message (docs/consumer.md,
//! Measured). So a settled message's ack (or requeue) waits up to [`WINDOW`] for others, and
//! the batch is handed over at once: a run of consecutive delivery tags that leaves nothing
//! unsettled below it becomes one `basic.ack` with `multiple`, anything else one frame per
//! message. A message is still acknowledged only once its outcome is known: `multiple` never
//! covers a tag that is not settled.
//!
//! Delivery tags of a channel count its deliveries from 1, so the tags below the highest
//! settled one are known even before they are settled.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::FutureExt;
use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::mpsc;

/// How long a settled message waits for others before its batch is sent.
pub const WINDOW: Duration = Duration::from_millis(1);

/// What became of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    Ack(u64),
    /// Back to the queue (`basic.nack` with `requeue`).
    Requeue(u64),
}

/// A frame to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// `basic.ack`; with `multiple`, every unacknowledged tag up to `tag` too.
    Ack { tag: u64, multiple: bool },
    /// `basic.nack` with `requeue`, of this tag only.
    Requeue { tag: u64 },
}

/// Which tags are settled, and what a batch of settlements sends.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Every tag up to this one is settled and its frame sent.
    through: u64,
    /// Tags above `through` whose frame was sent one by one.
    sent_above: BTreeSet<u64>,
}

impl Ledger {
    /// The frames for `batch`: one `multiple` ack for the pending acks of the run of
    /// settled tags right above [`Self::through`], a frame per message for the rest.
    pub fn frames(&mut self, batch: &[Settle]) -> Vec<Frame> {
        let mut acks: BTreeSet<u64> = BTreeSet::new();
        let mut frames = Vec::new();
        for s in batch {
            match *s {
                Settle::Ack(tag) if tag > self.through && !self.sent_above.contains(&tag) => {
                    acks.insert(tag);
                }
                Settle::Requeue(tag)
                    if tag > self.through
                        && !self.sent_above.contains(&tag)
                        && !acks.contains(&tag) =>
                {
                    frames.push(Frame::Requeue { tag });
                    self.sent_above.insert(tag);
                }
                // Settled twice: the first settlement stands.
                _ => {}
            }
        }
        // The run of settled tags from `through + 1`: the acks in it go as one.
        let mut run_end = self.through;
        let mut last_ack = None;
        loop {
            let next = run_end + 1;
            if acks.remove(&next) {
                last_ack = Some(next);
            } else if !self.sent_above.remove(&next) {
                break;
            }
            run_end = next;
        }
        if let Some(tag) = last_ack {
            // Everything up to `tag` is settled, and `tag` itself is still outstanding.
            let multiple = tag > self.through + 1;
            frames.push(Frame::Ack { tag, multiple });
        }
        self.through = run_end;
        for tag in acks {
            frames.push(Frame::Ack {
                tag,
                multiple: false,
            });
            self.sent_above.insert(tag);
        }
        frames
    }
}

/// Hands `frames` to lapin without waiting for its I/O thread to write them: a failure means
/// the channel is gone, and the broker then redelivers whatever it did not get.
fn send(channel: &Channel, frames: &[Frame]) {
    let mut failed = 0usize;
    let mut first_error = None;
    for frame in frames {
        let handed = match *frame {
            Frame::Ack { tag, multiple } => channel
                .basic_ack(tag, BasicAckOptions { multiple })
                .now_or_never(),
            Frame::Requeue { tag } => channel
                .basic_nack(
                    tag,
                    BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    },
                )
                .now_or_never(),
        };
        if let Some(Err(error)) = handed {
            failed += 1;
            first_error.get_or_insert(error);
        }
    }
    if let Some(error) = first_error {
        tracing::warn!(%error, frames = failed, "acknowledgements not sent; the broker redelivers");
    }
}

/// Sends the settlements it receives in batches until every sender is gone, then sends what
/// is left. Await it before closing the channel.
pub async fn run(channel: Channel, mut settled: mpsc::UnboundedReceiver<Settle>) {
    let mut ledger = Ledger::default();
    let mut batch = Vec::new();
    while let Some(first) = settled.recv().await {
        batch.push(first);
        let window = tokio::time::sleep(WINDOW);
        tokio::pin!(window);
        loop {
            tokio::select! {
                biased;
                more = settled.recv() => match more {
                    Some(s) => batch.push(s),
                    None => break,
                },
                () = &mut window => break,
            }
        }
        send(&channel, &ledger.frames(&batch));
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use Settle::{Ack, Requeue};

    #[test]
    fn a_run_of_consecutive_acks_from_the_start_is_one_multiple_ack() {
        let mut l = Ledger::default();
        assert_eq!(
            l.frames(&[Ack(2), Ack(1), Ack(3)]),
            vec![Frame::Ack {
                tag: 3,
                multiple: true
            }]
        );
        assert_eq!(
            l.frames(&[Ack(4)]),
            vec![Frame::Ack {
                tag: 4,
                multiple: false
            }]
        );
    }

    #[test]
    fn acks_above_an_unsettled_tag_go_one_by_one_and_the_gap_closes_later() {
        let mut l = Ledger::default();
        // 2 is still being routed: 1 can go, 3 and 4 only on their own.
        assert_eq!(
            l.frames(&[Ack(1), Ack(3), Ack(4)]),
            vec![
                Frame::Ack {
                    tag: 1,
                    multiple: false
                },
                Frame::Ack {
                    tag: 3,
                    multiple: false
                },
                Frame::Ack {
                    tag: 4,
                    multiple: false
                },
            ]
        );
        // 2 settles: alone (3 and 4 are acknowledged already), and the ledger moves past 4.
        assert_eq!(
            l.frames(&[Ack(2), Ack(5), Ack(6)]),
            vec![Frame::Ack {
                tag: 6,
                multiple: true
            }]
        );
        assert_eq!(l.through, 6);
        assert!(l.sent_above.is_empty());
    }

    #[test]
    fn a_requeue_goes_on_its_own_and_counts_as_settled() {
        let mut l = Ledger::default();
        assert_eq!(
            l.frames(&[Ack(1), Requeue(2), Ack(3)]),
            vec![
                Frame::Requeue { tag: 2 },
                Frame::Ack {
                    tag: 3,
                    multiple: true
                },
            ]
        );
        assert_eq!(l.through, 3);
    }

    #[test]
    fn a_tag_settled_twice_is_sent_once() {
        let mut l = Ledger::default();
        assert_eq!(l.frames(&[Ack(2), Ack(2)]).len(), 1);
        assert_eq!(l.frames(&[Ack(2), Requeue(2)]), vec![]);
        assert_eq!(
            l.frames(&[Ack(1), Ack(1)]),
            vec![Frame::Ack {
                tag: 1,
                multiple: false
            }]
        );
        assert_eq!(l.frames(&[Ack(1), Ack(2)]), vec![]);
    }

    /// Every order of settlement, in batches of every size: each tag is settled by exactly
    /// one frame, and a `multiple` ack never covers a tag that was not settled yet.
    #[test]
    fn multiple_acks_never_cover_an_unsettled_tag_whatever_the_order() {
        let n = 12u64;
        for seed in 0..500u64 {
            // A deterministic shuffle of 1..=n, some of them requeued.
            let mut order: Vec<u64> = (1..=n).collect();
            let mut x = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            for i in (1..order.len()).rev() {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                order.swap(i, (x >> 33) as usize % (i + 1));
            }
            let batch_size = (seed % 5 + 1) as usize;
            let mut l = Ledger::default();
            let mut settled = BTreeSet::new();
            let mut covered = BTreeSet::new();
            for chunk in order.chunks(batch_size) {
                let batch: Vec<Settle> = chunk
                    .iter()
                    .map(|&t| if t % 7 == 0 { Requeue(t) } else { Ack(t) })
                    .collect();
                settled.extend(chunk.iter().copied());
                for f in l.frames(&batch) {
                    let tags: Vec<u64> = match f {
                        Frame::Ack {
                            tag,
                            multiple: true,
                        } => (1..=tag).filter(|t| !covered.contains(t)).collect(),
                        Frame::Ack { tag, .. } | Frame::Requeue { tag } => vec![tag],
                    };
                    for t in tags {
                        assert!(settled.contains(&t), "seed {seed}: {t} covered unsettled");
                        assert!(covered.insert(t), "seed {seed}: {t} covered twice");
                    }
                }
            }
            assert_eq!(covered.len() as u64, n, "seed {seed}: every tag settled");
            assert_eq!(l.through, n);
        }
    }
}
