//! Connection limits per source and per pool, so that a flood from one place cannot take
//! every connection slot of a listener.
//!
//! * A **source** is an IPv4 address or the /64 an IPv6 address is in (one subscriber
//!   usually holds a whole /64). One source holds at most `per_source` connections at
//!   once, and at most `unauthenticated_per_source` of them before they log in or join.
//! * Globally, every connection counts against `whole`, and connections that have not yet
//!   logged in or joined also count against the smaller `unauthenticated` pool. A
//!   connection leaves the unauthenticated pool when the relay accepts its `Login` or
//!   `Join` ([`ConnPermit::authenticated`]): the rest of the whole is kept for sessions,
//!   whatever strangers do, and a stranger needs many sources to fill the unauthenticated
//!   pool.
//!
//! [`ConnTable`] is the sans-IO counting core (no locks, time passed in); [`ConnLimiter`]
//! is the cheap cloneable handle the accept loops use; [`ConnPermit`] gives its slots back
//! when dropped. The table holds one entry per source with a live connection, so it never
//! has more entries than `whole`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{AdminConfig, Limits};

/// The caps one listener family enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections open at once, authenticated or not.
    pub whole: usize,
    /// Of those, connections that have not logged in or joined yet.
    pub unauthenticated: usize,
    /// Connections one source holds at once.
    pub per_source: usize,
    /// Connections one source holds before they log in or join.
    pub unauthenticated_per_source: usize,
}

impl ConnLimits {
    /// The endpoint listeners' caps (`[limits]`).
    pub fn endpoints(limits: &Limits) -> Self {
        Self {
            whole: limits.max_connections,
            unauthenticated: limits.max_unauthenticated,
            per_source: limits.max_connections_per_source,
            unauthenticated_per_source: limits.max_unauthenticated_per_source,
        }
    }

    /// The console's caps (`[admin]`). Console connections carry HTTP requests that are
    /// authenticated one by one (by cookie), so they are never promoted: the unauthenticated
    /// caps equal the whole ones.
    pub fn console(admin: &AdminConfig) -> Self {
        Self {
            whole: admin.max_connections,
            unauthenticated: admin.max_connections,
            per_source: admin.max_connections_per_source,
            unauthenticated_per_source: admin.max_connections_per_source,
        }
    }
}

/// Key for a source: the IPv4 address, or the /64 an IPv6 address is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// An IPv4 address.
    V4(u32),
    /// The upper 64 bits of an IPv6 address.
    V6(u64),
}

impl Source {
    /// The source `ip` counts against (an IPv4-mapped IPv6 address is its IPv4 address).
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Source::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(u32::from(v4)),
                // The upper 64 bits are the /64 prefix.
                None => Source::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every connection slot of the listener family is taken.
    Full,
    /// The pool of connections that have not logged in or joined is full.
    UnauthenticatedPoolFull,
    /// This source holds `per_source` connections already.
    SourceFull,
    /// This source holds `unauthenticated_per_source` connections that have not logged in.
    SourceUnauthenticatedFull,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SourceCount {
    whole: usize,
    unauthenticated: usize,
}

/// How many connections were refused, by reason, since the last report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefusalReport {
    /// Refused as [`Refusal::Full`].
    pub full: u64,
    /// Refused as [`Refusal::UnauthenticatedPoolFull`].
    pub unauthenticated_pool_full: u64,
    /// Refused as [`Refusal::SourceFull`].
    pub source_full: u64,
    /// Refused as [`Refusal::SourceUnauthenticatedFull`].
    pub source_unauthenticated_full: u64,
}

impl RefusalReport {
    fn add(&mut self, why: Refusal) {
        let n = match why {
            Refusal::Full => &mut self.full,
            Refusal::UnauthenticatedPoolFull => &mut self.unauthenticated_pool_full,
            Refusal::SourceFull => &mut self.source_full,
            Refusal::SourceUnauthenticatedFull => &mut self.source_unauthenticated_full,
        };
        *n = n.saturating_add(1);
    }
}

/// Refusals are logged at most once per this interval, as counts, so a flood of refused
/// connections cannot flood the log.
pub const REFUSAL_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// The counting core: no locks, no clock of its own.
#[derive(Debug)]
pub struct ConnTable {
    limits: ConnLimits,
    whole: usize,
    unauthenticated: usize,
    sources: HashMap<Source, SourceCount>,
    refused: RefusalReport,
    last_report: Option<Instant>,
}

impl ConnTable {
    /// An empty table enforcing `limits`.
    pub fn new(limits: ConnLimits) -> Self {
        Self {
            limits,
            whole: 0,
            unauthenticated: 0,
            sources: HashMap::new(),
            refused: RefusalReport::default(),
            last_report: None,
        }
    }

    /// Counts a new, unauthenticated connection from `source`, or says why it is refused.
    pub fn admit(&mut self, source: Source) -> Result<(), Refusal> {
        let l = &self.limits;
        let here = self.sources.get(&source).copied().unwrap_or_default();
        let refusal = if self.whole >= l.whole {
            Some(Refusal::Full)
        } else if self.unauthenticated >= l.unauthenticated {
            Some(Refusal::UnauthenticatedPoolFull)
        } else if here.whole >= l.per_source {
            Some(Refusal::SourceFull)
        } else if here.unauthenticated >= l.unauthenticated_per_source {
            Some(Refusal::SourceUnauthenticatedFull)
        } else {
            None
        };
        if let Some(why) = refusal {
            self.refused.add(why);
            return Err(why);
        }
        let entry = self.sources.entry(source).or_default();
        entry.whole += 1;
        entry.unauthenticated += 1;
        self.whole += 1;
        self.unauthenticated += 1;
        Ok(())
    }

    /// Moves one connection of `source` out of the unauthenticated counts. It keeps its
    /// slot of the whole, so this cannot be refused.
    pub fn authenticate(&mut self, source: Source) {
        if let Some(entry) = self.sources.get_mut(&source) {
            entry.unauthenticated = entry.unauthenticated.saturating_sub(1);
        }
        self.unauthenticated = self.unauthenticated.saturating_sub(1);
    }

    /// Gives back one connection of `source`; the entry goes when its count reaches zero.
    pub fn release(&mut self, source: Source, authenticated: bool) {
        if let Some(entry) = self.sources.get_mut(&source) {
            entry.whole = entry.whole.saturating_sub(1);
            if !authenticated {
                entry.unauthenticated = entry.unauthenticated.saturating_sub(1);
            }
            if entry.whole == 0 {
                self.sources.remove(&source);
            }
        }
        self.whole = self.whole.saturating_sub(1);
        if !authenticated {
            self.unauthenticated = self.unauthenticated.saturating_sub(1);
        }
    }

    /// The refusals counted since the last report, when there are any and the last report
    /// is at least [`REFUSAL_REPORT_INTERVAL`] old; the counts start again from zero.
    pub fn refusal_report(&mut self, now: Instant) -> Option<RefusalReport> {
        if self.refused == RefusalReport::default() {
            return None;
        }
        if let Some(last) = self.last_report {
            if now.saturating_duration_since(last) < REFUSAL_REPORT_INTERVAL {
                return None;
            }
        }
        self.last_report = Some(now);
        Some(std::mem::take(&mut self.refused))
    }

    /// Connections counted now.
    pub fn connections(&self) -> usize {
        self.whole
    }

    /// Connections counted now that have not logged in or joined.
    pub fn unauthenticated(&self) -> usize {
        self.unauthenticated
    }

    /// Sources with at least one connection (the size of the table).
    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    /// Connections `source` holds now: (all, unauthenticated).
    pub fn held_by(&self, source: Source) -> (usize, usize) {
        let c = self.sources.get(&source).copied().unwrap_or_default();
        (c.whole, c.unauthenticated)
    }
}

/// A cheap cloneable handle on one listener family's table.
#[derive(Debug, Clone)]
pub struct ConnLimiter {
    table: Arc<Mutex<ConnTable>>,
    /// Names the listener family in log lines (`relay` or `console`).
    service: &'static str,
}

impl ConnLimiter {
    /// A limiter enforcing `limits`; `service` names it in log lines.
    pub fn new(limits: ConnLimits, service: &'static str) -> Self {
        Self {
            table: Arc::new(Mutex::new(ConnTable::new(limits))),
            service,
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, ConnTable> {
        // The table's counts stay consistent whatever panicked while it was held (each
        // method finishes its updates without calling out), so a poisoned lock is usable.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a slot for a connection from `ip` before any work is done for it, or refuses
    /// (the caller closes the socket at once). Refusals are logged as counts, at most once
    /// per [`REFUSAL_REPORT_INTERVAL`].
    pub fn try_admit(&self, ip: IpAddr, now: Instant) -> Result<ConnPermit, Refusal> {
        let source = Source::of(ip);
        let (admitted, report) = {
            let mut table = self.table();
            let admitted = table.admit(source);
            let report = admitted.is_err().then(|| table.refusal_report(now)).flatten();
            (admitted, report)
        };
        if let Some(r) = report {
            tracing::warn!(
                service = self.service,
                full = r.full,
                unauthenticated_pool_full = r.unauthenticated_pool_full,
                source_full = r.source_full,
                source_unauthenticated_full = r.source_unauthenticated_full,
                "connection limits refused connections"
            );
        }
        admitted.map(|()| ConnPermit {
            limiter: self.clone(),
            source,
            authenticated: false,
        })
    }

    /// Connections counted now: (all, unauthenticated).
    pub fn counts(&self) -> (usize, usize) {
        let t = self.table();
        (t.connections(), t.unauthenticated())
    }
}

/// One connection's slot; dropping it gives the slot back.
#[derive(Debug)]
pub struct ConnPermit {
    limiter: ConnLimiter,
    source: Source,
    authenticated: bool,
}

impl ConnPermit {
    /// The relay accepted this connection's `Login` or `Join`: its slot leaves the
    /// unauthenticated pool (and its source's unauthenticated count). Calling it again does
    /// nothing.
    pub fn authenticated(&mut self) {
        if !self.authenticated {
            self.limiter.table().authenticate(self.source);
            self.authenticated = true;
        }
    }

    /// Whether [`ConnPermit::authenticated`] was called.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.limiter.table().release(self.source, self.authenticated);
    }
}

/// A token bucket for one node-wide pace (resumes per second): `burst` at once, then `rate`
/// per second. Taken before the work it guards; a refusal costs nothing.
#[derive(Debug)]
pub struct RateGate {
    rate: f64,
    burst: f64,
    /// Tokens left and when they were counted.
    state: std::sync::Mutex<(f64, Instant)>,
}

impl RateGate {
    /// Full at `now`.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            rate,
            burst,
            state: std::sync::Mutex::new((burst, now)),
        }
    }

    /// Takes one token if there is one at `now`.
    pub fn try_take(&self, now: Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, at) = *state;
        let refilled = (tokens + now.saturating_duration_since(at).as_secs_f64() * self.rate).min(self.burst);
        let at = at.max(now);
        if refilled >= 1.0 {
            *state = (refilled - 1.0, at);
            true
        } else {
            *state = (refilled, at);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_gate_takes_a_burst_then_its_pace() {
        let t0 = Instant::now();
        let gate = RateGate::new(10.0, 3.0, t0);
        assert_eq!((0..5).filter(|_| gate.try_take(t0)).count(), 3, "the burst");
        assert!(
            !gate.try_take(t0 + Duration::from_millis(50)),
            "half a token is not one"
        );
        assert!(gate.try_take(t0 + Duration::from_millis(100)));
        // Idle for long: never more than the burst.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| gate.try_take(later)).count(), 3);
    }

    fn limits() -> ConnLimits {
        ConnLimits {
            whole: 6,
            unauthenticated: 4,
            per_source: 3,
            unauthenticated_per_source: 2,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_source_is_capped_before_and_after_login() {
        let mut t = ConnTable::new(limits());
        let a = Source::of(ip("192.0.2.1"));
        t.admit(a).unwrap();
        t.admit(a).unwrap();
        assert_eq!(t.admit(a), Err(Refusal::SourceUnauthenticatedFull));
        // Logging in frees the unauthenticated slot, up to the source's whole cap.
        t.authenticate(a);
        t.admit(a).unwrap();
        assert_eq!(t.held_by(a), (3, 2));
        t.authenticate(a);
        assert_eq!(t.admit(a), Err(Refusal::SourceFull));
        // Another source is not affected.
        t.admit(Source::of(ip("192.0.2.2"))).unwrap();
    }

    #[test]
    fn unauthenticated_pool_is_smaller_than_the_whole() {
        let mut t = ConnTable::new(limits());
        let sources: Vec<Source> = (1..=6).map(|i| Source::of(ip(&format!("10.0.0.{i}")))).collect();
        for s in &sources[..4] {
            t.admit(*s).unwrap();
        }
        assert_eq!(t.admit(sources[4]), Err(Refusal::UnauthenticatedPoolFull));
        // Two log in: their slots move to the authenticated part, two strangers fit again.
        t.authenticate(sources[0]);
        t.authenticate(sources[1]);
        assert_eq!(t.unauthenticated(), 2);
        t.admit(sources[4]).unwrap();
        t.admit(sources[5]).unwrap();
        assert_eq!(t.connections(), 6);
        assert_eq!(t.admit(Source::of(ip("10.0.0.99"))), Err(Refusal::Full));
    }

    #[test]
    fn dropping_permits_frees_everything_and_empties_the_table() {
        let limiter = ConnLimiter::new(limits(), "test");
        let now = Instant::now();
        let mut a1 = limiter.try_admit(ip("192.0.2.1"), now).unwrap();
        let a2 = limiter.try_admit(ip("192.0.2.1"), now).unwrap();
        assert!(limiter.try_admit(ip("192.0.2.1"), now).is_err());
        a1.authenticated();
        a1.authenticated(); // idempotent
        assert!(a1.is_authenticated());
        assert_eq!(limiter.counts(), (2, 1));
        let a3 = limiter.try_admit(ip("192.0.2.1"), now).unwrap();
        let b = limiter.try_admit(ip("2001:db8::1"), now).unwrap();
        assert_eq!(limiter.table().sources(), 2);
        drop((a1, a2, a3, b));
        assert_eq!(limiter.counts(), (0, 0));
        assert_eq!(limiter.table().sources(), 0, "entries go when their count reaches zero");
        // Everything is available again.
        let again: Vec<ConnPermit> = (0..2)
            .map(|_| limiter.try_admit(ip("192.0.2.1"), now).unwrap())
            .collect();
        assert_eq!(limiter.counts(), (2, 2));
        drop(again);
    }

    #[test]
    fn ipv6_counts_per_slash_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(Source::of(ip("2001:db8:1:2::1")), Source::of(ip("2001:db8:1:3::1")));
        assert_eq!(Source::of(ip("::ffff:192.0.2.1")), Source::of(ip("192.0.2.1")));
        let mut t = ConnTable::new(limits());
        t.admit(Source::of(ip("2001:db8::1"))).unwrap();
        t.admit(Source::of(ip("2001:db8::2"))).unwrap();
        assert_eq!(
            t.admit(Source::of(ip("2001:db8::3"))),
            Err(Refusal::SourceUnauthenticatedFull)
        );
    }

    #[test]
    fn refusals_are_reported_as_counts_at_most_once_per_interval() {
        let mut t = ConnTable::new(limits());
        let now = Instant::now();
        assert_eq!(t.refusal_report(now), None, "nothing refused, nothing to say");
        let a = Source::of(ip("192.0.2.1"));
        for _ in 0..2 {
            t.admit(a).unwrap();
        }
        for _ in 0..100 {
            assert!(t.admit(a).is_err());
        }
        let first = t.refusal_report(now).expect("first refusals are reported at once");
        assert_eq!(first.source_unauthenticated_full, 100);
        assert!(t.admit(a).is_err());
        assert_eq!(t.refusal_report(now + Duration::from_secs(1)), None);
        let later = t
            .refusal_report(now + REFUSAL_REPORT_INTERVAL)
            .expect("reported after the interval");
        assert_eq!(later.source_unauthenticated_full, 1);
    }

    #[test]
    fn the_table_never_outgrows_the_whole() {
        let mut t = ConnTable::new(ConnLimits {
            whole: 100,
            unauthenticated: 100,
            per_source: 1,
            unauthenticated_per_source: 1,
        });
        for i in 0..1_000u32 {
            let _ = t.admit(Source::V4(i));
        }
        assert_eq!(t.sources(), 100);
        for i in 0..100u32 {
            t.release(Source::V4(i), false);
        }
        assert_eq!((t.sources(), t.connections(), t.unauthenticated()), (0, 0, 0));
    }
}
