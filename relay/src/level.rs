//! A shared number that tasks wait on until it says what they wait for: the part of
//! `tokio::sync::watch` the sessions use, in about 80 bytes where a watch channel takes
//! about 400. Every session holds several (its end, each side's resume generation, each
//! connection's mark for the shutdown), so this is memory per idle session.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Shared {
    value: AtomicU32,
    changed: Notify,
}

/// A number every clone sees, and a wait for it to satisfy a test.
#[derive(Debug, Clone, Default)]
pub struct Level(Arc<Shared>);

impl Level {
    pub fn new(value: u32) -> Self {
        Self(Arc::new(Shared {
            value: AtomicU32::new(value),
            changed: Notify::new(),
        }))
    }

    pub fn get(&self) -> u32 {
        self.0.value.load(Ordering::Acquire)
    }

    /// Sets the number and wakes every waiter.
    pub fn set(&self, value: u32) {
        self.0.value.store(value, Ordering::Release);
        self.0.changed.notify_waiters();
    }

    /// Resolves once the number satisfies `test` (at once if it does now).
    pub async fn wait_until(&self, test: impl Fn(u32) -> bool) {
        loop {
            let changed = self.0.changed.notified();
            tokio::pin!(changed);
            // Registered before the look, so a `set` between the two is not missed.
            changed.as_mut().enable();
            if test(self.get()) {
                return;
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waiters_wake_on_the_change_they_wait_for_and_not_before() {
        let level = Level::new(0);
        let waiter = {
            let level = level.clone();
            tokio::spawn(async move { level.wait_until(|v| v >= 2).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        level.set(1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "1 is not what it waits for");
        level.set(2);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the change")
            .unwrap();
        // Already true: no wait at all.
        tokio::time::timeout(Duration::from_millis(100), level.wait_until(|v| v == 2))
            .await
            .expect("resolves at once");
    }

    #[test]
    fn it_is_much_smaller_than_a_watch_channel() {
        // What a holder keeps: the shared part behind the Arc.
        assert!(std::mem::size_of::<Shared>() <= 96, "{}", std::mem::size_of::<Shared>());
    }
}
