//! The one bounded pool every argon2 computation of the process goes through: operator
//! login, console login, and password set and change through the console, the API and the
//! CLI.
//!
//! argon2id is made to be expensive (about 19 MiB and tens of milliseconds each with the
//! default settings), so an unbounded number of them at once is a memory and CPU flood any
//! unauthenticated peer can start. The pool runs at most `workers` computations at once on
//! blocking threads; at most `queue` more requests wait for a worker, each for at most
//! `wait`; anything beyond is answered [`Busy`] at once, before any memory is taken.
//!
//! A computation keeps its worker until it finishes, even when the request that asked for
//! it has gone away, so the bound holds however callers behave.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::accounts;
use crate::config::AccountsConfig;

/// Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    /// One permit per computation running at once.
    workers: Arc<Semaphore>,
    /// How many permits `workers` was made with.
    worker_total: usize,
    /// One permit per request admitted (running or waiting): `workers + queue`.
    admitted: Arc<Semaphore>,
    wait: Duration,
    /// argon2 computations started since the pool was made (verify and hash).
    computations: AtomicU64,
}

/// The pool is saturated: too many requests wait already, or none got a worker in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("too many password checks at once; try again shortly")
    }
}

impl std::error::Error for Busy {}

/// Why [`Verifier::hash`] gave no hash.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HashError {
    /// The pool is saturated; the caller may try again later.
    #[error(transparent)]
    Busy(#[from] Busy),
    /// The hash could not be computed (bad parameters, no randomness, a worker panicked).
    /// The text is for the log, never for a peer.
    #[error("password hashing failed: {0}")]
    Failed(String),
}

impl Verifier {
    /// `workers`: computations at once (config `limits.concurrent_logins`, default 4); `queue`: waiting requests beyond which `Busy` is returned at once; `wait`: the longest a request waits for a worker before `Busy`.
    pub fn new(workers: usize, queue: usize, wait: Duration) -> Self {
        // At least one worker, or nothing could ever run.
        let workers = workers.max(1);
        Self {
            inner: Arc::new(Inner {
                workers: Arc::new(Semaphore::new(workers)),
                worker_total: workers,
                admitted: Arc::new(Semaphore::new(workers.saturating_add(queue))),
                wait,
                computations: AtomicU64::new(0),
            }),
        }
    }

    /// Verifies `password` against a PHC string. Err(Busy) when the pool is saturated.
    pub async fn verify(&self, password: String, phc: String) -> Result<bool, Busy> {
        self.run(move || accounts::verify_password(&password, &phc))
            .await
            // A worker that panicked verified nothing: the password is not accepted.
            .map(|ok| ok.unwrap_or(false))
    }

    /// Hashes a password with the given settings.
    pub async fn hash(&self, password: String, config: AccountsConfig) -> Result<String, HashError> {
        match self.run(move || accounts::hash_password(&password, &config)).await? {
            Some(Ok(phc)) => Ok(phc),
            Some(Err(e)) => Err(HashError::Failed(e)),
            None => Err(HashError::Failed("the hashing worker panicked".into())),
        }
    }

    /// argon2 computations started since the pool was made; tests and metrics read it.
    pub fn computations(&self) -> u64 {
        self.inner.computations.load(Ordering::Relaxed)
    }

    /// Computations running right now.
    pub fn running(&self) -> usize {
        // Permits are handed out from the initial count; what is missing is in use.
        self.inner.worker_total - self.inner.workers.available_permits()
    }

    /// Takes a place, then a worker, then runs `work` on a blocking thread. `None` when
    /// the work panicked.
    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<Option<T>, Busy> {
        let place = self.inner.admitted.clone().try_acquire_owned().map_err(|_| Busy)?;
        let worker: OwnedSemaphorePermit =
            match tokio::time::timeout(self.inner.wait, self.inner.workers.clone().acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                // Timed out, or the semaphore was closed (it never is).
                _ => return Err(Busy),
            };
        self.inner.computations.fetch_add(1, Ordering::Relaxed);
        let task = tokio::task::spawn_blocking(move || {
            // Both permits live as long as the computation, not as long as the caller.
            let _held = (place, worker);
            work()
        });
        Ok(task.await.ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps a worker of `v` busy for `ms` milliseconds, from another task.
    fn sleep_on(v: &Verifier, ms: u64) -> tokio::task::JoinHandle<Result<Option<()>, Busy>> {
        let v = v.clone();
        tokio::spawn(async move { v.run(move || std::thread::sleep(Duration::from_millis(ms))).await })
    }

    /// Small argon2 settings: the pool's behaviour, not argon2's cost, is under test.
    fn cheap() -> AccountsConfig {
        AccountsConfig {
            argon2_memory_kib: 64,
            argon2_iterations: 1,
        }
    }

    #[tokio::test]
    async fn hashes_and_verifies() {
        let v = Verifier::new(2, 2, Duration::from_secs(5));
        let phc = v.hash("Correct-horse1".into(), cheap()).await.unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert_eq!(v.verify("Correct-horse1".into(), phc.clone()).await, Ok(true));
        assert_eq!(v.verify("Correct-horse2".into(), phc).await, Ok(false));
        assert_eq!(v.verify("x".into(), "not a hash".into()).await, Ok(false));
        assert_eq!(v.computations(), 4);
        assert_eq!(v.running(), 0);
    }

    #[tokio::test]
    async fn bad_settings_are_a_failure_not_a_panic() {
        let v = Verifier::new(1, 0, Duration::from_secs(1));
        let bad = AccountsConfig {
            argon2_memory_kib: 0,
            argon2_iterations: 0,
        };
        assert!(matches!(
            v.hash("Correct-horse1".into(), bad).await,
            Err(HashError::Failed(_))
        ));
    }

    /// A gate the test opens: work blocks on it, so "running" and "waiting" are states the
    /// test controls instead of races against the clock.
    #[derive(Clone, Default)]
    struct Gate(Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

    impl Gate {
        fn wait(&self) {
            let (open, cv) = &*self.0;
            let mut g = open.lock().unwrap();
            while !*g {
                g = cv.wait(g).unwrap();
            }
        }
        fn open(&self) {
            *self.0 .0.lock().unwrap() = true;
            self.0 .1.notify_all();
        }
    }

    /// The bound holds under a burst: never more than `workers` at once, the queue is
    /// bounded, and what is beyond it is refused at once without computing anything.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_is_bounded() {
        // 2 workers + 3 waiting; a long wait so that only the queue bound refuses.
        let v = Verifier::new(2, 3, Duration::from_secs(60));
        let gate = Gate::default();
        let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..40 {
            let (v, gate, busy) = (v.clone(), gate.clone(), busy.clone());
            tasks.push(tokio::spawn(async move {
                let r = v.run(move || gate.wait()).await;
                if r.is_err() {
                    busy.fetch_add(1, Ordering::SeqCst);
                }
                r
            }));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while busy.load(Ordering::SeqCst) < 35 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            busy.load(Ordering::SeqCst),
            35,
            "beyond 2 running + 3 waiting: Busy at once"
        );
        assert_eq!(v.running(), 2);
        assert_eq!(v.computations(), 2, "refused and waiting requests compute nothing");
        gate.open();
        let mut ok = 0;
        for t in tasks {
            if t.await.unwrap().is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, 5);
        assert_eq!(v.computations(), 5);
        assert_eq!(v.running(), 0);
    }

    #[tokio::test]
    async fn waiting_too_long_is_busy() {
        let v = Verifier::new(1, 10, Duration::from_millis(50));
        let slow = sleep_on(&v, 500);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(v.run(|| ()).await, Err(Busy), "no worker within the wait");
        assert_eq!(slow.await.unwrap(), Ok(Some(())));
        assert_eq!(v.run(|| ()).await, Ok(Some(())), "free again afterwards");
    }

    /// A caller that gives up does not free the worker before the computation ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abandoned_work_keeps_its_worker() {
        let v = Verifier::new(1, 0, Duration::from_millis(10));
        let abandoned = sleep_on(&v, 300);
        tokio::time::sleep(Duration::from_millis(50)).await;
        abandoned.abort();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(v.running(), 1);
        assert_eq!(v.run(|| ()).await, Err(Busy));
    }
}
