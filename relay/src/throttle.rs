//! Guessing protection, sans-IO: time comes in as an argument so tests run on a fake clock.
//!
//! Each source address has a token bucket of failures (a short burst, then one more per
//! refill interval); emptying it locks the address out for a cool-down. A global bucket
//! caps failures from all addresses together, so a botnet gains nothing by spreading out.
//! IPv6 sources are grouped by /64, since one subscriber usually holds a whole /64.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::config::ThrottleConfig;

/// Whether a source may try now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Throttled { retry_after: Duration },
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
    locked_until: Option<Instant>,
}

impl Bucket {
    fn full(capacity: u32, now: Instant) -> Self {
        Self {
            tokens: capacity as f64,
            updated: now,
            locked_until: None,
        }
    }

    fn refill(&mut self, now: Instant, capacity: u32, per_token: Duration) {
        let elapsed = now.saturating_duration_since(self.updated);
        self.tokens = (self.tokens + elapsed.as_secs_f64() / per_token.as_secs_f64()).min(capacity as f64);
        self.updated = now;
    }
}

/// Key for a source: the IPv4 address, or the /64 an IPv6 address is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    V6(u64),
}

fn source(ip: IpAddr) -> Source {
    match ip {
        IpAddr::V4(v4) => Source::V4(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => Source::V4(u32::from(v4)),
            None => Source::V6((u128::from(v6) >> 64) as u64),
        },
    }
}

/// Failure throttle for one kind of attempt (session codes, or logins).
#[derive(Debug)]
pub struct Throttle {
    config: ThrottleConfig,
    sources: HashMap<Source, Bucket>,
    /// Shared by sources that arrive while `sources` is full.
    overflow: Bucket,
    global: Bucket,
}

impl Throttle {
    pub fn new(config: ThrottleConfig, now: Instant) -> Self {
        Self {
            overflow: Bucket::full(config.per_ip_burst, now),
            global: Bucket::full(config.global_failures, now),
            sources: HashMap::new(),
            config,
        }
    }

    fn global_per_token(&self) -> Duration {
        self.config.global_window / self.config.global_failures
    }

    /// May this address try now? Does not consume anything.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Verdict {
        let per_token = self.global_per_token();
        self.global.refill(now, self.config.global_failures, per_token);
        let mut wait = Duration::ZERO;
        if self.global.tokens < 1.0 {
            wait = per_token.mul_f64(1.0 - self.global.tokens);
        }
        let key = source(ip);
        let bucket = self
            .sources
            .get(&key)
            .or(if self.sources.len() >= self.config.max_tracked_ips {
                Some(&self.overflow)
            } else {
                None
            });
        if let Some(locked) = bucket.and_then(|b| b.locked_until) {
            if locked > now {
                wait = wait.max(locked - now);
            }
        }
        if wait.is_zero() {
            Verdict::Allowed
        } else {
            Verdict::Throttled { retry_after: wait }
        }
    }

    /// Records a failed attempt (wrong, expired or replayed code; wrong password).
    pub fn record_failure(&mut self, ip: IpAddr, now: Instant) {
        let per_token = self.global_per_token();
        self.global.refill(now, self.config.global_failures, per_token);
        self.global.tokens = (self.global.tokens - 1.0).max(0.0);

        let key = source(ip);
        if !self.sources.contains_key(&key) && self.sources.len() >= self.config.max_tracked_ips {
            self.prune(now);
        }
        let (burst, refill, cooldown) = (
            self.config.per_ip_burst,
            self.config.per_ip_refill,
            self.config.per_ip_cooldown,
        );
        let bucket = if self.sources.contains_key(&key) || self.sources.len() < self.config.max_tracked_ips {
            self.sources.entry(key).or_insert_with(|| Bucket::full(burst, now))
        } else {
            &mut self.overflow
        };
        bucket.refill(now, burst, refill);
        bucket.tokens -= 1.0;
        if bucket.tokens < 1.0 {
            bucket.tokens = bucket.tokens.max(0.0);
            bucket.locked_until = Some(now + cooldown);
        }
    }

    /// Forgets sources whose bucket is full again and not locked: they are no different
    /// from a source never seen. Call now and then; also called when the table is full.
    pub fn prune(&mut self, now: Instant) {
        let (burst, refill) = (self.config.per_ip_burst, self.config.per_ip_refill);
        self.sources.retain(|_, b| {
            b.refill(now, burst, refill);
            let locked = b.locked_until.is_some_and(|t| t > now);
            locked || b.tokens < burst as f64
        });
    }

    pub fn tracked(&self) -> usize {
        self.sources.len()
    }
}

/// Expected successful guesses per day for an attacker who uses the whole global failure
/// budget, with `live_codes` codes alive at any moment out of `space` possible codes.
pub fn expected_guesses_per_day(config: &ThrottleConfig, live_codes: u64, space: u64) -> f64 {
    let per_day = config.global_failures as f64 * (86_400.0 / config.global_window.as_secs_f64());
    per_day * live_codes as f64 / space as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ThrottleConfig {
        ThrottleConfig {
            per_ip_burst: 3,
            per_ip_refill: Duration::from_secs(10),
            per_ip_cooldown: Duration::from_secs(60),
            global_failures: 10,
            global_window: Duration::from_secs(100),
            max_tracked_ips: 4,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn burst_then_cooldown_per_address() {
        let t0 = Instant::now();
        let mut t = Throttle::new(cfg(), t0);
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert_eq!(t.check(a, t0), Verdict::Allowed);
            t.record_failure(a, t0);
        }
        assert_eq!(
            t.check(a, t0),
            Verdict::Throttled {
                retry_after: Duration::from_secs(60)
            }
        );
        assert_eq!(
            t.check(ip("192.0.2.2"), t0),
            Verdict::Allowed,
            "other addresses are not affected"
        );
        assert!(matches!(
            t.check(a, t0 + Duration::from_secs(59)),
            Verdict::Throttled { .. }
        ));
        assert_eq!(t.check(a, t0 + Duration::from_secs(60)), Verdict::Allowed);
    }

    #[test]
    fn ipv6_addresses_in_one_slash_64_share_a_bucket() {
        let t0 = Instant::now();
        let mut t = Throttle::new(cfg(), t0);
        for i in 1..=3 {
            t.record_failure(ip(&format!("2001:db8::{i}")), t0);
        }
        assert!(matches!(t.check(ip("2001:db8::ffff"), t0), Verdict::Throttled { .. }));
        assert_eq!(t.check(ip("2001:db8:0:1::1"), t0), Verdict::Allowed);
    }

    #[test]
    fn global_budget_stops_distributed_guessing() {
        let t0 = Instant::now();
        let mut t = Throttle::new(
            ThrottleConfig {
                max_tracked_ips: 1000,
                ..cfg()
            },
            t0,
        );
        for i in 0..10 {
            t.record_failure(ip(&format!("198.51.100.{i}")), t0);
        }
        let fresh = ip("203.0.113.9");
        match t.check(fresh, t0) {
            Verdict::Throttled { retry_after } => assert_eq!(retry_after, Duration::from_secs(10)),
            v => panic!("expected throttled, got {v:?}"),
        }
        assert_eq!(
            t.check(fresh, t0 + Duration::from_secs(10)),
            Verdict::Allowed,
            "one token refilled"
        );
    }

    #[test]
    fn table_stays_bounded() {
        let t0 = Instant::now();
        let mut t = Throttle::new(
            ThrottleConfig {
                global_failures: 1_000_000,
                ..cfg()
            },
            t0,
        );
        for i in 0..100u32 {
            t.record_failure(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(t.tracked() <= 4);
        // Once refilled, entries are pruned and new sources get their own bucket again.
        t.prune(t0 + Duration::from_secs(3600));
        assert_eq!(t.tracked(), 0);
    }

    #[test]
    fn default_guessing_figure() {
        let per_day = expected_guesses_per_day(&ThrottleConfig::default(), 1000, 100_000_000);
        assert!((per_day - 0.072).abs() < 1e-9, "{per_day}");
    }
}
