//! Stopping the relay (after mini-redis's `shutdown.rs`): one stop signal that every
//! long-running task listens to, and the tracking of connection tasks, so that shutdown
//! waits for them to deliver `Ended` and close TLS instead of sleeping and hoping.
//!
//! A connection task is tracked by holding a clone of an `mpsc::Sender`; when every clone
//! is gone the receiver sees the channel close, which is the moment every tracked task has
//! finished. At the stop signal, a connection that does not carry a session yet (TLS
//! handshake, greeting, login, waiting for `RequestCode`) is closed at once: nothing is
//! promised to it. A connection that carries a session (its shell says so through its
//! [`SessionMark`]) keeps running until its session ends, which the relay brings about by
//! ending every session with `relay_shutdown`.

use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::level::Level;

/// Resolves once the watched flag is true (or its sender is gone).
pub async fn until_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Listens for the relay's stop signal. Cheap to clone; holding one keeps nothing alive.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// Whether the relay is stopping.
    pub fn is_shutdown(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once the relay is stopping.
    pub async fn recv(&mut self) {
        until_true(&mut self.rx).await
    }
}

/// Sends the stop signal and waits for the tracked tasks; owned by the running relay.
pub struct Stopper {
    stop_tx: watch::Sender<bool>,
    /// Dropped when draining starts, so that only the tasks' clones are left.
    done_tx: mpsc::Sender<()>,
    done_rx: mpsc::Receiver<()>,
}

impl Default for Stopper {
    fn default() -> Self {
        Self::new()
    }
}

impl Stopper {
    pub fn new() -> Self {
        let (done_tx, done_rx) = mpsc::channel(1);
        Self {
            stop_tx: watch::channel(false).0,
            done_tx,
            done_rx,
        }
    }

    /// A listener for the stop signal.
    pub fn listener(&self) -> Shutdown {
        Shutdown {
            rx: self.stop_tx.subscribe(),
        }
    }

    /// A handle that spawns tasks this stopper waits for.
    pub fn tracker(&self) -> ConnectionTasks {
        ConnectionTasks {
            done: self.done_tx.clone(),
            stop: self.listener(),
        }
    }

    /// Tells every listener the relay is stopping.
    pub fn signal(&self) {
        self.stop_tx.send_replace(true);
    }

    /// Waits until every tracked task has finished, or `deadline` has passed; returns how
    /// it ended (`true`: all finished). Trackers still held (an accept loop that has not
    /// returned yet) count as unfinished tasks.
    pub async fn drain(self, deadline: Duration) -> bool {
        let Self {
            stop_tx,
            done_tx,
            mut done_rx,
        } = self;
        drop(done_tx);
        // No task ever sends: `recv` returns `None` once every sender clone is dropped.
        let drained = tokio::time::timeout(deadline, done_rx.recv()).await.is_ok();
        drop(stop_tx);
        drained
    }
}

/// A tracked connection's word to the shutdown: whether it carries a session right now.
/// The connection shell marks it when its greeting hands over to a session (before the
/// session is opened or its code taken) and releases it when that fails. At the stop signal
/// a connection that is not marked is closed at once; a marked one runs until its session
/// has ended and its peer has heard `Ended`. Dropping the mark releases it.
#[derive(Debug)]
pub struct SessionMark {
    /// 1 while the connection carries a session.
    carries: Level,
}

impl SessionMark {
    /// A mark nobody watches: for a connection served outside the listeners' tracking
    /// (tests drive connections over in-memory streams).
    pub fn untracked() -> Self {
        Self { carries: Level::new(0) }
    }

    /// The connection carries a session from now on.
    pub fn carry(&self) {
        self.carries.set(1);
    }

    /// The connection carries no session (the code it tried was refused).
    pub fn release(&self) {
        self.carries.set(0);
    }
}

impl Drop for SessionMark {
    fn drop(&mut self) {
        self.release();
    }
}

/// Spawns connection tasks that the relay's shutdown waits for. Cheap to clone.
#[derive(Clone)]
pub struct ConnectionTasks {
    done: mpsc::Sender<()>,
    stop: Shutdown,
}

impl ConnectionTasks {
    /// Runs the connection `start` builds around its [`SessionMark`] as a tracked task:
    /// closed at the stop signal whenever it does not carry a session, run to its end when it
    /// does.
    pub fn spawn<F, Fut>(&self, start: F)
    where
        F: FnOnce(SessionMark) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut stop = self.stop.clone();
        let carries = Level::new(0);
        // Boxed: an async block keeps what it captures and what it awaits in separate
        // slots, so a connection future moved through this wrapper and `track` unboxed
        // would be stored three times over in every task: about 12 KiB more per
        // connection, for as long as its session lasts.
        let connection = Box::pin(start(SessionMark {
            carries: carries.clone(),
        }));
        self.track(async move {
            let cut_off = async {
                stop.recv().await;
                // A session being ended finishes by itself; a connection without one (or
                // whose code was refused meanwhile) is cut off. A dropped mark carries
                // nothing.
                carries.wait_until(|carrying| carrying == 0).await;
            };
            tokio::select! {
                _ = connection => {}
                _ = cut_off => {}
            }
        });
    }

    /// Runs the task `start` builds as a tracked task that is not cut off at the stop
    /// signal: it gets the signal and winds down by itself (a console connection answers
    /// the request in flight, then closes).
    pub fn spawn_winding_down<F, Fut>(&self, start: F)
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.track(start(self.stop.clone()));
    }

    /// Spawns `task` holding a clone of the tracking sender, dropped when the task ends,
    /// whichever way: that is what `drain` waits for.
    fn track(&self, task: impl Future<Output = ()> + Send + 'static) {
        let done = self.done.clone();
        tokio::spawn(async move {
            let _done = done;
            task.await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_a_session_connection_and_cuts_off_the_others() {
        let stopper = Stopper::new();
        let tasks = stopper.tracker();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let (cut_tx, mut cut_rx) = mpsc::channel::<&'static str>(2);
        // A connection with a session: finishes only when released.
        let (marked_tx, marked_rx) = tokio::sync::oneshot::channel::<()>();
        let cut = cut_tx.clone();
        tasks.spawn(|mark| async move {
            mark.carry();
            let _ = marked_tx.send(());
            let _ = release_rx.await;
            let _ = cut.send("session finished").await;
        });
        // A connection without one (waiting on its peer forever).
        tasks.spawn(|_mark| async move {
            std::future::pending::<()>().await;
            let _ = cut_tx.send("never").await;
        });
        drop(tasks);
        marked_rx.await.unwrap();
        stopper.signal();
        let drain = tokio::spawn(stopper.drain(Duration::from_secs(60)));
        // Still waiting for the session's connection.
        tokio::task::yield_now().await;
        assert!(!drain.is_finished());
        release_tx.send(()).unwrap();
        assert!(drain.await.unwrap(), "every tracked task finished");
        assert_eq!(cut_rx.recv().await, Some("session finished"));
        assert_eq!(cut_rx.recv().await, None, "the other connection was closed, not run on");
    }

    #[tokio::test]
    async fn a_connection_whose_code_was_refused_during_the_stop_is_cut_off() {
        let stopper = Stopper::new();
        let (marked_tx, marked_rx) = tokio::sync::oneshot::channel::<()>();
        let (refused_tx, refused_rx) = tokio::sync::oneshot::channel::<()>();
        let (after_tx, mut after_rx) = mpsc::channel::<&'static str>(1);
        stopper.tracker().spawn(|mark| async move {
            // Marked while its code is looked up; the stop comes meanwhile.
            mark.carry();
            let _ = marked_tx.send(());
            let _ = refused_rx.await;
            mark.release();
            // Back in the greeting, waiting for its peer's next attempt.
            std::future::pending::<()>().await;
            let _ = after_tx.send("never").await;
        });
        marked_rx.await.unwrap();
        stopper.signal();
        let drain = tokio::spawn(stopper.drain(Duration::from_secs(60)));
        tokio::task::yield_now().await;
        assert!(!drain.is_finished(), "a marked connection is waited for");
        refused_tx.send(()).unwrap();
        assert!(drain.await.unwrap(), "released, it is closed at once");
        assert_eq!(after_rx.recv().await, None);
    }

    #[tokio::test]
    async fn drain_gives_up_at_the_deadline() {
        let stopper = Stopper::new();
        let (marked_tx, marked_rx) = tokio::sync::oneshot::channel::<()>();
        stopper.tracker().spawn(|mark| async move {
            mark.carry();
            let _ = marked_tx.send(());
            std::future::pending::<()>().await;
        });
        marked_rx.await.unwrap();
        stopper.signal();
        assert!(!stopper.drain(Duration::from_millis(20)).await);
    }
}
