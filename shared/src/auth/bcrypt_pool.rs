//! The bcrypt pool: a few threads of their own, at a lower scheduling priority than the
//! socket workers, behind a bounded queue that refuses at once when full.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus::IntGauge;

use crate::error::{Error, Result};

/// How far the bcrypt threads step back from the threads that serve sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BcryptPriority {
    /// Linux's `SCHED_IDLE` policy: a bcrypt thread runs only on a core that no other
    /// thread wants, and a socket worker that wakes up takes the core from it at once.
    Idle,
    /// A nice value (1..=19) under the normal policy; 0 leaves the threads as they are.
    Nice(i32),
}

/// Applies `priority` to the calling thread; a failure is logged, never fatal.
fn lower_own_priority(priority: BcryptPriority) {
    match priority {
        BcryptPriority::Idle => {
            use thread_priority::unix::{
                NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
                thread_native_id, thread_schedule_policy,
            };
            let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
            // The call also sets the nice value to 0, which an unprivileged thread that
            // inherited a higher one may not do; the policy is set first, and under
            // SCHED_IDLE the nice value means nothing, so the policy is what counts.
            let set = set_thread_priority_and_policy(
                thread_native_id(),
                thread_priority::ThreadPriority::Min,
                idle,
            );
            if let Err(error) = set
                && thread_schedule_policy().ok() != Some(idle)
            {
                tracing::warn!(?error, "cannot move a bcrypt thread to SCHED_IDLE");
            }
        }
        BcryptPriority::Nice(nice) if nice > 0 => {
            let me = rustix::thread::gettid();
            if let Err(error) = rustix::process::setpriority_process(Some(me), nice) {
                tracing::warn!(%error, nice, "cannot lower a bcrypt thread's priority");
            }
        }
        BcryptPriority::Nice(_) => {}
    }
}

/// A small pool of threads for bcrypt with a bounded queue: bcrypt never runs on the
/// async workers, and a full queue refuses at once instead of piling up.
pub struct BcryptPool {
    sender: std::sync::mpsc::SyncSender<Job>,
    queued: Arc<Waiting>,
    workers: usize,
    capacity: usize,
}

type Job = Box<dyn FnOnce() + Send>;

/// Jobs waiting for a thread, mirrored in `hermes_bcrypt_queue` when the pool has that gauge:
/// the one place that knows the number sets it, on every enqueue and dequeue.
struct Waiting {
    count: AtomicUsize,
    gauge: Option<IntGauge>,
}

impl Waiting {
    fn add(&self) {
        let now = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        self.show(now);
    }

    fn remove(&self) {
        let now = self.count.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        self.show(now);
    }

    fn show(&self, now: usize) {
        if let Some(gauge) = &self.gauge {
            gauge.set(i64::try_from(now).unwrap_or(i64::MAX));
        }
    }
}

impl BcryptPool {
    /// Starts `workers` threads sharing a queue of `capacity` jobs, each at `priority`.
    /// Linux schedules threads, not processes: the bcrypt threads yield to the socket
    /// workers under contention and use idle cores at full speed. `waiting`, if given, is
    /// kept equal to the number of jobs waiting for a thread (`hermes_bcrypt_queue`).
    pub fn new(
        workers: usize,
        capacity: usize,
        priority: BcryptPriority,
        waiting: Option<IntGauge>,
    ) -> Self {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Job>(capacity);
        let receiver = Arc::new(std::sync::Mutex::new(receiver));
        let queued = Arc::new(Waiting {
            count: AtomicUsize::new(0),
            gauge: waiting,
        });
        for n in 0..workers.max(1) {
            let receiver = Arc::clone(&receiver);
            let queued = Arc::clone(&queued);
            let spawned = std::thread::Builder::new()
                .name(format!("hermes-bcrypt-{n}"))
                .spawn(move || {
                    lower_own_priority(priority);
                    loop {
                        let job = match receiver.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => {
                                queued.remove();
                                job();
                            }
                            Err(_) => return,
                        }
                    }
                });
            if let Err(error) = spawned {
                tracing::error!(%error, "cannot start a bcrypt thread");
            }
        }
        Self {
            sender,
            queued,
            workers: workers.max(1),
            capacity,
        }
    }

    /// Jobs waiting for a thread.
    pub fn queued(&self) -> usize {
        self.queued.count.load(Ordering::Relaxed)
    }

    /// Runs `f` on the pool, or refuses at once when the queue is full.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let rx = self.submit(f)?;
        rx.await
            .map_err(|e| Error::crypto("the bcrypt worker stopped", e))
    }

    /// Queues `f`; the receiver yields its result. Refuses when the queue is full.
    pub fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<tokio::sync::oneshot::Receiver<T>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.queued.add();
        if self.sender.try_send(job).is_err() {
            self.queued.remove();
            // About 60 ms per verify at cost 10: tell the client when the queue drains.
            let secs = ((self.capacity as u64 * 60) / (self.workers as u64 * 1000)).max(1);
            return Err(Error::Overloaded {
                retry_after: Duration::from_secs(secs),
            });
        }
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scheduling policy of the calling thread: field 41 of /proc/thread-self/stat.
    fn own_policy() -> u32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
        // After the command name, in parentheses, come the fields from 3 (state) on.
        let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
            .split(' ')
            .collect();
        fields[41 - 3].parse().expect("policy")
    }

    #[test]
    fn bcrypt_threads_run_under_sched_idle_when_asked() {
        const SCHED_IDLE: u32 = 5;
        let policy_of_worker = |priority| {
            BcryptPool::new(1, 1, priority, None)
                .submit(own_policy)
                .expect("the worker is free")
                .blocking_recv()
                .expect("the job ran")
        };
        assert_eq!(policy_of_worker(BcryptPriority::Idle), SCHED_IDLE);
        assert_eq!(policy_of_worker(BcryptPriority::Nice(10)), own_policy());
    }

    #[test]
    fn bcrypt_threads_run_at_the_configured_nice_value() {
        let nice_of_worker = |nice| {
            BcryptPool::new(1, 1, BcryptPriority::Nice(nice), None)
                .submit(|| {
                    rustix::process::getpriority_process(Some(rustix::thread::gettid()))
                        .expect("getpriority")
                })
                .expect("the worker is free")
                .blocking_recv()
                .expect("the job ran")
        };
        let inherited =
            rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("own");
        assert_eq!(nice_of_worker(0), inherited);
        assert_eq!(nice_of_worker(10), inherited.max(10));
    }

    #[test]
    fn full_bcrypt_queue_refuses_at_once() {
        let waiting = crate::metrics::Metrics::new().bcrypt_queue;
        let pool = BcryptPool::new(1, 1, BcryptPriority::Nice(0), Some(waiting.clone()));
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let running = pool
            .submit(move || {
                let _ = started_tx.send(());
                let _ = release_rx.recv();
            })
            .expect("the worker is free");
        started_rx.recv().expect("the worker runs the first job");
        assert_eq!(waiting.get(), 0, "the running job waits no more");
        let queued = pool.submit(|| 7).expect("one queue slot is free");
        assert!(matches!(pool.submit(|| 8), Err(Error::Overloaded { .. })));
        assert_eq!(
            (pool.queued(), waiting.get()),
            (1, 1),
            "the refused job is not counted"
        );
        release_tx.send(()).expect("release");
        assert_eq!(running.blocking_recv(), Ok(()));
        assert_eq!(queued.blocking_recv(), Ok(7));
        assert_eq!(waiting.get(), 0);
    }
}
