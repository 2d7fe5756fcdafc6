//! A socket's bounded send queue: many producers (the hub, on any thread), one consumer (the
//! socket's task), `try_push` that never waits, and no memory held while it is empty.
//!
//! `tokio::sync::mpsc` allocates a block of 32 slots per channel up front (1.5 KiB for our
//! frames), which for tens of thousands of mostly idle sockets is a large share of what a
//! socket costs (`bench/RESULTS.md`, P1). Here the items live in a `VecDeque` that starts
//! without an allocation and is given back when a burst has drained.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Capacity a drained queue may keep (a socket that receives now and then keeps this
/// small buffer instead of allocating one per message).
const KEEP: usize = 4;

struct Shared<T> {
    state: Mutex<State<T>>,
    notify: Notify,
    capacity: usize,
}

struct State<T> {
    items: VecDeque<T>,
    /// The receiver is gone: pushes fail.
    closed: bool,
}

/// Why `try_push` refused an item (it is handed back).
#[derive(Debug, PartialEq, Eq)]
pub enum PushError<T> {
    Full(T),
    Closed(T),
}

/// The producing side; cheap to share.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// The consuming side; dropping it closes the queue.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// A queue holding at most `capacity` items.
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            closed: false,
        }),
        notify: Notify::new(),
        capacity: capacity.max(1),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

impl<T> Sender<T> {
    /// Queues `item` unless the queue is full or closed; never waits.
    pub fn try_push(&self, item: T) -> Result<(), PushError<T>> {
        {
            let mut state = self.shared.state.lock();
            if state.closed {
                return Err(PushError::Closed(item));
            }
            if state.items.len() >= self.shared.capacity {
                return Err(PushError::Full(item));
            }
            state.items.push_back(item);
        }
        self.shared.notify.notify_one();
        Ok(())
    }
}

impl<T> Receiver<T> {
    /// The next item, waiting for one. Cancel-safe: an item is only taken in the poll that
    /// returns it. Never `None` while a `Sender` may still push (the queue closes only when
    /// the receiver is dropped).
    pub async fn pop(&mut self) -> T {
        loop {
            if let Some(item) = self.try_pop() {
                return item;
            }
            // A push between `try_pop` and here leaves a permit: this returns at once.
            self.shared.notify.notified().await;
        }
    }

    /// The next item, if one is queued.
    pub fn try_pop(&mut self) -> Option<T> {
        let mut state = self.shared.state.lock();
        let item = state.items.pop_front();
        if state.items.is_empty() && state.items.capacity() > KEEP {
            state.items = VecDeque::new();
        }
        item
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock();
        state.closed = true;
        state.items = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_come_out_in_order_up_to_the_capacity() {
        let (tx, mut rx) = channel(2);
        assert_eq!(tx.try_push(1), Ok(()));
        assert_eq!(tx.try_push(2), Ok(()));
        assert_eq!(tx.try_push(3), Err(PushError::Full(3)));
        assert_eq!(rx.try_pop(), Some(1));
        assert_eq!(tx.try_push(3), Ok(()));
        assert_eq!(rx.try_pop(), Some(2));
        assert_eq!(rx.try_pop(), Some(3));
        assert_eq!(rx.try_pop(), None);
    }

    #[test]
    fn pushes_fail_once_the_receiver_is_gone() {
        let (tx, rx) = channel(8);
        drop(rx);
        assert_eq!(tx.try_push(1), Err(PushError::Closed(1)));
    }

    #[test]
    fn a_drained_queue_gives_its_memory_back() {
        let (tx, mut rx) = channel(1000);
        for i in 0..100 {
            tx.try_push(i).expect("room");
        }
        while rx.try_pop().is_some() {}
        assert_eq!(rx.shared.state.lock().items.capacity(), 0);
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_on_a_push_from_another_task() {
        let (tx, mut rx) = channel(8);
        let pusher = tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx.try_push("hello").expect("room");
            tx
        });
        assert_eq!(rx.pop().await, "hello");
        drop(pusher.await);
    }
}
