//! A node's fence: whether it may still forward its sessions' frames.
//!
//! Another node takes a session over only once this node's heartbeat key is gone from
//! Redis (see [`super::records`]), which is `cluster.node_ttl` after the last heartbeat
//! Redis received. The fence holds until the last heartbeat that *started* before Redis
//! answered it, plus that TTL: by this node's clock never later than Redis lets the key
//! live. A node frozen (SIGSTOP, a VM pause) or cut off from Redis for longer finds its
//! fence down when it runs again, and forwards nothing until a heartbeat and a records
//! refresh have told it which sessions are still its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// See the module documentation. Cheap to check: one atomic load.
#[derive(Debug)]
pub struct Fence {
    origin: Instant,
    /// Milliseconds after `origin` until which the fence holds; 0: it does not.
    until_ms: AtomicU64,
}

impl Fence {
    /// A fence that holds until `until`.
    pub fn holding_until(origin: Instant, until: Instant) -> Self {
        let fence = Self {
            origin,
            until_ms: AtomicU64::new(0),
        };
        fence.renew(until);
        fence
    }

    /// A heartbeat that started at `started` succeeded (and the sessions that moved were let
    /// go): the fence holds until `started + ttl`. Never moves backwards.
    pub fn renew_after(&self, started: Instant, ttl: Duration) {
        self.renew(started + ttl);
    }

    fn renew(&self, until: Instant) {
        let ms = until.saturating_duration_since(self.origin).as_millis() as u64;
        self.until_ms.fetch_max(ms, Ordering::AcqRel);
    }

    /// Whether the node may still forward at `now`.
    pub fn holds(&self, now: Instant) -> bool {
        let now_ms = now.saturating_duration_since(self.origin).as_millis() as u64;
        now_ms < self.until_ms.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_holds_for_the_ttl_after_the_last_beat_began() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(5);
        let f = Fence::holding_until(t0, t0 + ttl);
        assert!(f.holds(t0 + Duration::from_millis(4999)));
        assert!(!f.holds(t0 + ttl), "down once the heartbeat key may be gone");
        f.renew_after(t0 + Duration::from_secs(1), ttl);
        assert!(f.holds(t0 + Duration::from_millis(5999)));
        assert!(!f.holds(t0 + Duration::from_secs(6)));
        // A beat that began earlier (answered late) never shortens it.
        f.renew_after(t0, ttl);
        assert!(f.holds(t0 + Duration::from_millis(5999)));
    }
}
