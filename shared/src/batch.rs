//! Natural batching ("smart batching"): callers submit items one at a time and await their
//! own result; at most `max_in_flight` batches run at once, and whatever arrived while they
//! ran goes out together as the next batch. Under light load every item goes alone at once
//! (no timer, no added latency); under load the batches grow and the per-item cost of the
//! batched operation (a CQL request, an HTTP request) falls as the queue would otherwise grow.

use std::collections::VecDeque;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::oneshot;

/// Runs one batch: one result per item, in the items' order.
pub type BatchFn<T, R> = Arc<dyn Fn(Vec<T>) -> BoxFuture<'static, Vec<R>> + Send + Sync>;

/// Coalesces concurrent submissions into batches for `run`.
pub struct Batcher<T, R> {
    inner: Arc<Inner<T, R>>,
}

impl<T, R> Clone for Batcher<T, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T, R> std::fmt::Debug for Batcher<T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("max_batch", &self.inner.max_batch)
            .field("max_in_flight", &self.inner.max_in_flight)
            .finish_non_exhaustive()
    }
}

struct Inner<T, R> {
    state: Mutex<State<T, R>>,
    run: BatchFn<T, R>,
    max_batch: usize,
    max_in_flight: usize,
}

struct State<T, R> {
    pending: VecDeque<(T, oneshot::Sender<R>)>,
    /// Driver tasks running (each runs one batch at a time).
    in_flight: usize,
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// `max_batch` items per batch at most, `max_in_flight` batches at once (both ≥ 1).
    pub fn new(max_batch: usize, max_in_flight: usize, run: BatchFn<T, R>) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    pending: VecDeque::new(),
                    in_flight: 0,
                }),
                run,
                max_batch: max_batch.max(1),
                max_in_flight: max_in_flight.max(1),
            }),
        }
    }

    /// Items submitted and not yet taken into a batch.
    pub fn pending(&self) -> usize {
        self.inner.state.lock().pending.len()
    }

    /// Submits one item and waits for its result. `None` only if its batch was lost: `run`
    /// panicked or returned fewer results than items, or the runtime is shutting down.
    pub async fn submit(&self, item: T) -> Option<R> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut s = self.inner.state.lock();
            s.pending.push_back((item, tx));
            let start = s.in_flight < self.inner.max_in_flight;
            if start {
                s.in_flight += 1;
            }
            start
        };
        if start {
            tokio::spawn(drive(self.inner.clone()));
        }
        rx.await.ok()
    }
}

/// A driver's slot, given back when the driver ends, normally or because its batch
/// panicked; if items are still pending then, a replacement takes them over.
struct Slot<T: Send + 'static, R: Send + 'static> {
    inner: Option<Arc<Inner<T, R>>>,
}

impl<T: Send + 'static, R: Send + 'static> Drop for Slot<T, R> {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        let mut s = inner.state.lock();
        if s.pending.is_empty() {
            s.in_flight -= 1;
        } else if tokio::runtime::Handle::try_current().is_ok() {
            drop(s);
            tokio::spawn(drive(inner));
        } else {
            s.in_flight -= 1;
        }
    }
}

/// Runs batches until nothing is pending; its `Slot` then gives the slot back.
async fn drive<T: Send + 'static, R: Send + 'static>(inner: Arc<Inner<T, R>>) {
    let _slot = Slot {
        inner: Some(inner.clone()),
    };
    loop {
        let batch: Vec<(T, oneshot::Sender<R>)> = {
            let mut s = inner.state.lock();
            if s.pending.is_empty() {
                return;
            }
            let n = s.pending.len().min(inner.max_batch);
            s.pending.drain(..n).collect()
        };
        let (items, senders): (Vec<T>, Vec<oneshot::Sender<R>>) = batch.into_iter().unzip();
        let results = (inner.run)(items).await;
        // A missing result drops its sender: that caller gets `None`.
        for (tx, r) in senders.into_iter().zip(results) {
            let _ = tx.send(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A batch function that records batch sizes and waits for `gate` before answering
    /// each item with twice its value.
    fn doubling(
        sizes: Arc<Mutex<Vec<usize>>>,
        gate: Arc<tokio::sync::Semaphore>,
    ) -> BatchFn<u32, u32> {
        Arc::new(move |items: Vec<u32>| {
            let (sizes, gate) = (sizes.clone(), gate.clone());
            async move {
                sizes.lock().push(items.len());
                gate.acquire().await.expect("gate").forget();
                items.into_iter().map(|i| i * 2).collect()
            }
            .boxed()
        })
    }

    #[tokio::test]
    async fn an_item_alone_goes_at_once_in_a_batch_of_one() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Semaphore::new(100));
        let b = Batcher::new(8, 1, doubling(sizes.clone(), gate));
        assert_eq!(b.submit(21).await, Some(42));
        assert_eq!(b.submit(5).await, Some(10));
        assert_eq!(*sizes.lock(), vec![1, 1]);
    }

    #[tokio::test]
    async fn items_that_arrive_while_a_batch_runs_go_together_next_each_with_its_own_result() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let b = Batcher::new(3, 1, doubling(sizes.clone(), gate.clone()));
        let first = tokio::spawn({
            let b = b.clone();
            async move { b.submit(1).await }
        });
        // The first batch is running (blocked on the gate) once its size is recorded.
        while sizes.lock().is_empty() {
            tokio::task::yield_now().await;
        }
        let rest: Vec<_> = (2..=6)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { b.submit(i).await })
            })
            .collect();
        // Every later item is queued behind the running batch.
        while b.pending() < 5 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(3);
        assert_eq!(first.await.expect("join"), Some(2));
        for (i, h) in (2..=6).zip(rest) {
            assert_eq!(h.await.expect("join"), Some(i * 2));
        }
        // One alone, then the five queued ones in batches of at most three.
        assert_eq!(*sizes.lock(), vec![1, 3, 2]);
        assert_eq!(b.pending(), 0, "nothing waits once all are answered");
        assert_eq!(b.inner.state.lock().in_flight, 0);
    }

    #[tokio::test]
    async fn a_batch_that_panics_loses_only_its_items_and_later_items_still_run() {
        let calls = Arc::new(AtomicUsize::new(0));
        let run: BatchFn<u32, u32> = {
            let calls = calls.clone();
            Arc::new(move |items: Vec<u32>| {
                let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    assert!(!first, "the first batch fails");
                    items
                }
                .boxed()
            })
        };
        let b = Batcher::new(4, 1, run);
        assert_eq!(b.submit(7).await, None);
        assert_eq!(b.submit(8).await, Some(8));
        assert_eq!(b.inner.state.lock().in_flight, 0);
    }
}
