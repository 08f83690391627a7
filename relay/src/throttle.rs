//! Guessing protection, sans-IO: time comes in as an argument so tests run on a fake clock.
//!
//! An attempt (a session code, a password, a TOTP code) first **reserves** a token at every
//! level, *before* anything is checked, then is **settled**: a success refunds what it
//! took, a failure keeps it. So a burst of parallel attempts can never get more real checks
//! than the budget holds, however they interleave with the slow check itself.
//!
//! Three levels:
//! * the **source address** (an IPv4 address, or the IPv6 /64 one subscriber usually
//!   holds): a short burst, then one more per refill interval; emptying it locks the address
//!   out for a cool-down;
//! * the **prefix** (IPv4 /24, IPv6 /48) within the scope: a larger burst with its own
//!   cool-down, so an attacker gains little by hopping between the addresses of one network.
//!   A prefix that failed within `prefix_memory` is *marked*;
//! * the **scope budget**: for session codes one global budget for the whole relay, for
//!   logins one budget per account. It caps what many networks together can try.
//!
//! When the scope budget runs dry, the relay does not close its doors: an attempt from a
//! prefix with **no** recorded failure still gets through, one at a time per prefix (for
//! logins after a short slow-down). A stranger's spray therefore never locks out an honest
//! user whose network never failed, and each attacking prefix buys at most one extra guess
//! per `prefix_memory`: the README works out the arithmetic.
//!
//! [`Throttles`] is the seam the connections go through: one relay's [`Throttle`] behind
//! its mutex (this module), or the grid's throttles in Redis (`grid::throttle`), which
//! keep the same rules and arithmetic for all nodes together.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::ThrottleConfig;

/// Why an attempt may not go ahead now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// When trying again may succeed (at least the time until a token returns).
    pub retry_after: Duration,
}

/// What a reservation took; hand it back through [`Throttle::succeeded`] or
/// [`Throttle::failed`] once the attempt has been checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "settle the ticket with succeeded(), failed() or refund()"]
pub struct Ticket {
    pub(crate) scope: Scope,
    pub(crate) address: Address,
    pub(crate) prefix: Prefix,
    /// The address bucket (and not the shared overflow bucket) holds the token.
    pub(crate) tracked_address: bool,
    /// A token came from the scope budget; otherwise this is a clean-prefix pass.
    pub(crate) from_budget: bool,
    /// The grid's name for the clean-prefix pass this ticket holds, so that settling it
    /// frees that pass and no later one; 0 in memory, where the mutex orders everything.
    pub(crate) pass_id: u64,
    /// How long the caller should wait before checking: the slow-down for an attempt that
    /// passed on a clean prefix while the scope budget is dry.
    pub delay: Duration,
}

/// What an attempt is aimed at: the session-code space (one global budget), or one account
/// (its name hashed with a per-process key, so the table never holds names that a user
/// might have typed a password into).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scope(u64);

impl Scope {
    /// The one scope of session codes.
    pub const CODES: Scope = Scope(0);

    /// The scope of an account whose name hashed (under a key) to `hash`: never the codes'.
    pub(crate) fn of_account_hash(hash: u64) -> Scope {
        Scope(hash | 1)
    }

    /// The number behind the scope, for naming it outside the process (Redis keys).
    pub(crate) fn id(self) -> u64 {
        self.0
    }
}

/// Key of a source address: the IPv4 address, or the /64 an IPv6 address is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Address {
    V4(u32),
    V6(u64),
}

/// Key of a network: IPv4 /24, IPv6 /48.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Prefix {
    V4(u32),
    V6(u64),
}

impl Address {
    /// A stable text name (`4:` and 8 hex digits, or `6:` and the /64 in 16).
    pub(crate) fn key(self) -> String {
        match self {
            Address::V4(a) => format!("4:{a:08x}"),
            Address::V6(a) => format!("6:{a:016x}"),
        }
    }
}

impl Prefix {
    /// A stable text name (`4:` and the /24 in 6 hex digits, or `6:` and the /48 in 12).
    pub(crate) fn key(self) -> String {
        match self {
            Prefix::V4(p) => format!("4:{p:06x}"),
            Prefix::V6(p) => format!("6:{p:012x}"),
        }
    }
}

pub(crate) fn address(ip: IpAddr) -> Address {
    match canonical(ip) {
        IpAddr::V4(v4) => Address::V4(u32::from(v4)),
        IpAddr::V6(v6) => Address::V6((u128::from(v6) >> 64) as u64),
    }
}

pub(crate) fn prefix(ip: IpAddr) -> Prefix {
    match canonical(ip) {
        IpAddr::V4(v4) => Prefix::V4(u32::from(v4) >> 8),
        IpAddr::V6(v6) => Prefix::V6((u128::from(v6) >> 80) as u64),
    }
}

/// IPv4-mapped IPv6 addresses count as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// A token bucket with a lock-out.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
    locked_until: Option<Instant>,
}

/// Size and pace of one kind of bucket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub(crate) burst: u32,
    pub(crate) per_token: Duration,
    pub(crate) cooldown: Duration,
}

impl Bucket {
    fn full(shape: Shape, now: Instant) -> Self {
        Self {
            tokens: shape.burst as f64,
            updated: now,
            locked_until: None,
        }
    }

    fn refill(&mut self, now: Instant, shape: Shape) {
        let elapsed = now.saturating_duration_since(self.updated);
        self.tokens = (self.tokens + elapsed.as_secs_f64() / shape.per_token.as_secs_f64()).min(shape.burst as f64);
        self.updated = now;
    }

    /// How long until this bucket lets an attempt through; zero when it does now.
    fn wait(&mut self, now: Instant, shape: Shape) -> Duration {
        self.refill(now, shape);
        if let Some(until) = self.locked_until.filter(|t| *t > now) {
            return until - now;
        }
        if self.tokens < 1.0 {
            return shape.per_token.mul_f64(1.0 - self.tokens);
        }
        Duration::ZERO
    }

    fn take(&mut self) {
        self.tokens -= 1.0;
    }

    fn give_back(&mut self, shape: Shape) {
        self.tokens = (self.tokens + 1.0).min(shape.burst as f64);
    }

    /// After a failure: an empty bucket locks for the cool-down.
    fn settle_failure(&mut self, now: Instant, shape: Shape) {
        if self.tokens < 1.0 {
            self.tokens = self.tokens.max(0.0);
            self.locked_until = Some(now + shape.cooldown);
        }
    }

    /// Full again and not locked: no different from a bucket never seen.
    fn idle(&mut self, now: Instant, shape: Shape) -> bool {
        self.refill(now, shape);
        self.locked_until.is_none_or(|t| t <= now) && self.tokens >= shape.burst as f64
    }
}

/// A prefix within a scope: its bucket, when it last failed, and whether a clean-prefix
/// pass is being checked right now.
#[derive(Debug, Clone, Copy)]
struct PrefixState {
    bucket: Bucket,
    last_failure: Option<Instant>,
    pass_in_flight: bool,
}

/// Guessing protection for one kind of attempt (session codes, or logins).
#[derive(Debug)]
pub struct Throttle {
    config: ThrottleConfig,
    addresses: HashMap<Address, Bucket>,
    /// Shared by addresses that arrive while `addresses` is full: they are throttled
    /// together rather than not at all.
    overflow: Bucket,
    prefixes: HashMap<(Scope, Prefix), PrefixState>,
    budgets: HashMap<Scope, Bucket>,
    /// Keys the account-name hash; drawn per process.
    hasher: std::collections::hash_map::RandomState,
}

impl Throttle {
    /// An empty throttle (every bucket full) with these settings.
    pub fn new(config: ThrottleConfig, now: Instant) -> Self {
        let address_shape = Self::address_shape(&config);
        Self {
            overflow: Bucket::full(address_shape, now),
            addresses: HashMap::new(),
            prefixes: HashMap::new(),
            budgets: HashMap::new(),
            hasher: Default::default(),
            config,
        }
    }

    /// The scope of one account, by name (case-insensitive).
    pub fn account(&self, name: &str) -> Scope {
        // Never 0, which is the codes' scope.
        Scope(self.hasher.hash_one(name.to_ascii_lowercase()) | 1)
    }

    pub(crate) fn address_shape(c: &ThrottleConfig) -> Shape {
        Shape {
            burst: c.per_ip_burst,
            per_token: c.per_ip_refill,
            cooldown: c.per_ip_cooldown,
        }
    }

    pub(crate) fn prefix_shape(c: &ThrottleConfig) -> Shape {
        Shape {
            burst: c.per_prefix_burst,
            per_token: c.per_ip_refill,
            cooldown: c.per_prefix_cooldown,
        }
    }

    pub(crate) fn budget_shape(c: &ThrottleConfig) -> Shape {
        Shape {
            burst: c.global_failures,
            per_token: c.global_window / c.global_failures,
            cooldown: Duration::ZERO,
        }
    }

    /// Reserves one attempt from `ip` in `scope`, before anything is checked.
    pub fn reserve(&mut self, scope: Scope, ip: IpAddr, now: Instant) -> Result<Ticket, Throttled> {
        let (a_shape, p_shape, b_shape) = (
            Self::address_shape(&self.config),
            Self::prefix_shape(&self.config),
            Self::budget_shape(&self.config),
        );
        let (address, prefix) = (address(ip), prefix(ip));
        let refuse = |wait: Duration| {
            Err(Throttled {
                retry_after: wait.max(Duration::from_secs(1)),
            })
        };

        // The address and the prefix may each be spent or locked.
        let tracked_address = self.addresses.contains_key(&address) || self.has_room(self.addresses.len());
        let address_wait = match self.addresses.get_mut(&address) {
            Some(b) => b.wait(now, a_shape),
            None if tracked_address => Duration::ZERO,
            None => self.overflow.wait(now, a_shape),
        };
        if !address_wait.is_zero() {
            return refuse(address_wait);
        }
        let prefix_known = self.prefixes.contains_key(&(scope, prefix));
        let prefix_wait = match self.prefixes.get_mut(&(scope, prefix)) {
            Some(p) => p.bucket.wait(now, p_shape),
            None => Duration::ZERO,
        };
        if !prefix_wait.is_zero() {
            return refuse(prefix_wait);
        }

        // The scope budget; when it is dry, only a clean prefix passes, one at a time.
        // A scope the table has no room for counts as dry: it still has clean-prefix passes.
        let room = self.has_room(self.budgets.len());
        let budget_wait = match self.budgets.get_mut(&scope) {
            Some(b) => b.wait(now, b_shape),
            None if room => Duration::ZERO,
            None => b_shape.per_token,
        };
        let from_budget = budget_wait.is_zero();
        if from_budget {
            self.budgets
                .entry(scope)
                .or_insert_with(|| Bucket::full(b_shape, now))
                .take();
        } else {
            let memory = self.config.prefix_memory;
            let clean = match self.prefixes.get(&(scope, prefix)) {
                Some(p) => {
                    !p.pass_in_flight
                        && p.last_failure
                            .is_none_or(|t| now.saturating_duration_since(t) >= memory)
                }
                // A prefix the table has no room for cannot be shown to be clean.
                None => self.has_room(self.prefixes.len()),
            };
            if !clean {
                return refuse(budget_wait);
            }
        }

        if prefix_known || self.has_room(self.prefixes.len()) {
            let state = self.prefixes.entry((scope, prefix)).or_insert_with(|| PrefixState {
                bucket: Bucket::full(p_shape, now),
                last_failure: None,
                pass_in_flight: false,
            });
            state.bucket.take();
            if !from_budget {
                state.pass_in_flight = true;
            }
        }
        if tracked_address {
            self.addresses
                .entry(address)
                .or_insert_with(|| Bucket::full(a_shape, now))
                .take();
        } else {
            self.overflow.take();
        }
        Ok(Ticket {
            scope,
            address,
            prefix,
            tracked_address,
            from_budget,
            pass_id: 0,
            delay: if from_budget {
                Duration::ZERO
            } else {
                self.config.dry_slowdown
            },
        })
    }

    fn has_room(&self, len: usize) -> bool {
        len < self.config.max_tracked_ips
    }

    /// The attempt was right: everything it took is given back.
    pub fn succeeded(&mut self, ticket: Ticket, now: Instant) {
        self.refund(ticket, now);
    }

    /// The attempt could not be checked (the relay was busy, a store error): nothing is
    /// counted against the source.
    pub fn refund(&mut self, ticket: Ticket, _now: Instant) {
        let (a_shape, p_shape, b_shape) = (
            Self::address_shape(&self.config),
            Self::prefix_shape(&self.config),
            Self::budget_shape(&self.config),
        );
        if let Some(b) = self.address_bucket(&ticket) {
            b.give_back(a_shape);
        }
        if let Some(p) = self.prefixes.get_mut(&(ticket.scope, ticket.prefix)) {
            p.bucket.give_back(p_shape);
            if !ticket.from_budget {
                p.pass_in_flight = false;
            }
        }
        if ticket.from_budget {
            if let Some(b) = self.budgets.get_mut(&ticket.scope) {
                b.give_back(b_shape);
            }
        }
    }

    /// The attempt was wrong (a wrong, expired or replayed code; a wrong password or TOTP
    /// code): the tokens stay spent, the prefix is marked, empty buckets lock.
    pub fn failed(&mut self, ticket: Ticket, now: Instant) {
        let (a_shape, p_shape) = (Self::address_shape(&self.config), Self::prefix_shape(&self.config));
        if let Some(b) = self.address_bucket(&ticket) {
            b.settle_failure(now, a_shape);
        }
        if let Some(p) = self.prefixes.get_mut(&(ticket.scope, ticket.prefix)) {
            p.bucket.settle_failure(now, p_shape);
            p.last_failure = Some(now);
            if !ticket.from_budget {
                p.pass_in_flight = false;
            }
        }
    }

    fn address_bucket(&mut self, ticket: &Ticket) -> Option<&mut Bucket> {
        if ticket.tracked_address {
            self.addresses.get_mut(&ticket.address)
        } else {
            Some(&mut self.overflow)
        }
    }

    /// Forgets what is no different from never seen: full, unlocked buckets and prefixes
    /// whose last failure is older than `prefix_memory`. Call now and then.
    pub fn prune(&mut self, now: Instant) {
        let (a_shape, p_shape, b_shape) = (
            Self::address_shape(&self.config),
            Self::prefix_shape(&self.config),
            Self::budget_shape(&self.config),
        );
        let memory = self.config.prefix_memory;
        self.addresses.retain(|_, b| !b.idle(now, a_shape));
        self.prefixes.retain(|_, p| {
            let remembered = p
                .last_failure
                .is_some_and(|t| now.saturating_duration_since(t) < memory);
            p.pass_in_flight || remembered || !p.bucket.idle(now, p_shape)
        });
        self.budgets.retain(|_, b| !b.idle(now, b_shape));
    }

    /// Addresses, prefixes and scopes tracked right now.
    pub fn tracked(&self) -> usize {
        self.addresses.len() + self.prefixes.len() + self.budgets.len()
    }
}

/// Why a reservation did not go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReserveError {
    /// Too many failures from this source, network or scope: try again later.
    Throttled(Throttled),
    /// The throttle could not be asked (a grid's Redis is unreachable or too slow): the
    /// attempt is refused, never let through unchecked.
    Unavailable,
}

impl From<Throttled> for ReserveError {
    fn from(t: Throttled) -> Self {
        ReserveError::Throttled(t)
    }
}

/// How a checked attempt came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It was right: everything it took is given back.
    Succeeded,
    /// It was wrong: the tokens stay spent, the network is marked, empty buckets lock.
    Failed,
    /// It could not be checked: nothing counts against the source.
    Refund,
}

/// What an attempt is aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// A session code: one budget for the whole relay (or grid).
    Codes,
    /// One operator account's login, by name (case-insensitive): a budget per account.
    Account(&'a str),
}

/// A future a [`Throttles`] returns; `Send` so connection tasks can await it.
pub type ThrottleFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Guessing protection as the connections use it: reserve before checking, settle after.
/// One relay keeps it in memory (`Mutex<Throttle>`); a grid keeps it in Redis so that the
/// limits hold for all nodes together. `now` is passed in so the in-memory one runs on a
/// fake clock in tests; the grid's takes its time from Redis, which all nodes share.
pub trait Throttles: Send + Sync {
    /// Reserves one attempt from `ip` at `target`, before anything is checked.
    fn reserve<'a>(
        &'a self,
        target: Target<'a>,
        ip: IpAddr,
        now: Instant,
    ) -> ThrottleFuture<'a, Result<Ticket, ReserveError>>;

    /// Settles a reserved attempt once it has been checked.
    fn settle(&self, ticket: Ticket, outcome: Outcome, now: Instant) -> ThrottleFuture<'_, ()>;

    /// Forgets what is no different from never seen (the grid's keys expire by themselves).
    fn prune(&self, now: Instant) -> ThrottleFuture<'_, ()>;
}

/// One relay's throttle, in memory: every call is answered at once.
impl Throttles for Mutex<Throttle> {
    fn reserve<'a>(
        &'a self,
        target: Target<'a>,
        ip: IpAddr,
        now: Instant,
    ) -> ThrottleFuture<'a, Result<Ticket, ReserveError>> {
        let mut t = self.lock().unwrap_or_else(|p| p.into_inner());
        let scope = match target {
            Target::Codes => Scope::CODES,
            Target::Account(name) => t.account(name),
        };
        let reserved = t.reserve(scope, ip, now).map_err(ReserveError::from);
        Box::pin(std::future::ready(reserved))
    }

    fn settle(&self, ticket: Ticket, outcome: Outcome, now: Instant) -> ThrottleFuture<'_, ()> {
        let mut t = self.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Outcome::Succeeded => t.succeeded(ticket, now),
            Outcome::Failed => t.failed(ticket, now),
            Outcome::Refund => t.refund(ticket, now),
        }
        Box::pin(std::future::ready(()))
    }

    fn prune(&self, now: Instant) -> ThrottleFuture<'_, ()> {
        self.lock().unwrap_or_else(|p| p.into_inner()).prune(now);
        Box::pin(std::future::ready(()))
    }
}

/// Expected successful guesses per day at `live_codes` live codes out of `space`, for an
/// attacker who spends the whole global budget and, while it is dry, one clean-prefix pass
/// from each of `attacker_prefixes` networks per `prefix_memory` (the worst case: every
/// address of the attacker in a network of its own).
pub fn expected_guesses_per_day(config: &ThrottleConfig, live_codes: u64, space: u64, attacker_prefixes: u64) -> f64 {
    let day = 86_400.0;
    let budget = config.global_failures as f64 * (1.0 + day / config.global_window.as_secs_f64());
    let passes = attacker_prefixes as f64 * (day / config.prefix_memory.as_secs_f64()).ceil();
    (budget + passes) * live_codes as f64 / space as f64
}

/// The rules every implementation of [`Throttles`] must keep, as test cases both run.
#[cfg(test)]
pub(crate) mod cases;

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ThrottleConfig {
        ThrottleConfig {
            per_ip_burst: 3,
            per_ip_refill: Duration::from_secs(10),
            per_ip_cooldown: Duration::from_secs(60),
            per_prefix_burst: 100,
            per_prefix_cooldown: Duration::from_secs(60),
            global_failures: 10,
            global_window: Duration::from_secs(100),
            prefix_memory: Duration::from_secs(3600),
            dry_slowdown: Duration::from_millis(500),
            max_tracked_ips: 1000,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const S: Scope = Scope::CODES;

    fn fail(t: &mut Throttle, a: IpAddr, now: Instant) {
        let ticket = t.reserve(S, a, now).expect("allowed");
        t.failed(ticket, now);
    }

    #[test]
    fn burst_then_cooldown_per_address() {
        let t0 = Instant::now();
        let mut t = Throttle::new(cfg(), t0);
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            fail(&mut t, a, t0);
        }
        assert_eq!(
            t.reserve(S, a, t0),
            Err(Throttled {
                retry_after: Duration::from_secs(60)
            })
        );
        assert!(
            t.reserve(S, ip("192.0.2.2"), t0).is_ok(),
            "other addresses are not affected"
        );
        assert!(t.reserve(S, a, t0 + Duration::from_secs(59)).is_err());
        assert!(t.reserve(S, a, t0 + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn parallel_reservations_cannot_exceed_the_burst() {
        let t0 = Instant::now();
        let mut t = Throttle::new(cfg(), t0);
        let a = ip("192.0.2.1");
        // 200 attempts arrive before any of them is checked.
        let tickets: Vec<_> = (0..200).filter_map(|_| t.reserve(S, a, t0).ok()).collect();
        assert_eq!(tickets.len(), 3, "only the burst gets a real check");
        for ticket in tickets {
            t.failed(ticket, t0);
        }
        assert!(
            t.reserve(S, a, t0).is_err(),
            "the right answer after them is throttled too"
        );
    }

    #[test]
    fn success_refunds_everything() {
        let t0 = Instant::now();
        let mut t = Throttle::new(cfg(), t0);
        let a = ip("192.0.2.1");
        for _ in 0..50 {
            let ticket = t.reserve(S, a, t0).unwrap();
            t.succeeded(ticket, t0);
        }
        fail(&mut t, a, t0);
        fail(&mut t, a, t0);
        assert!(t.reserve(S, a, t0).is_ok(), "successes never count as failures");
    }

    #[test]
    fn ipv6_addresses_in_one_slash_64_share_a_bucket() {
        let t0 = Instant::now();
        let mut t = Throttle::new(cfg(), t0);
        for i in 1..=3 {
            fail(&mut t, ip(&format!("2001:db8::{i}")), t0);
        }
        assert!(t.reserve(S, ip("2001:db8::ffff"), t0).is_err());
        assert!(t.reserve(S, ip("2001:db8:0:1::1"), t0).is_ok());
        assert_eq!(
            prefix(ip("2001:db8:0:1::1")),
            prefix(ip("2001:db8:0:ffff::1")),
            "one /48"
        );
        assert_eq!(address(ip("::ffff:192.0.2.1")), address(ip("192.0.2.1")));
    }

    #[test]
    fn a_dry_budget_refuses_marked_prefixes_but_not_clean_ones() {
        let t0 = Instant::now();
        let mut t = Throttle::new(cfg(), t0);
        // Ten networks spend the global budget of 10.
        for i in 0..10 {
            fail(&mut t, ip(&format!("198.51.{i}.1")), t0);
        }
        // A fresh address in a network that failed is refused until a token returns.
        match t.reserve(S, ip("198.51.3.200"), t0) {
            Err(Throttled { retry_after }) => assert_eq!(retry_after, Duration::from_secs(10)),
            v => panic!("expected throttled, got {v:?}"),
        }
        // A network that never failed still gets through, after the slow-down.
        let honest = t.reserve(S, ip("203.0.113.9"), t0).expect("clean prefix passes");
        assert_eq!(honest.delay, Duration::from_millis(500));
        // One pass at a time per prefix: a parallel attempt from its neighbour waits.
        assert!(t.reserve(S, ip("203.0.113.10"), t0).is_err());
        t.succeeded(honest, t0);
        assert!(t.reserve(S, ip("203.0.113.10"), t0).is_ok(), "a success keeps it clean");
    }

    #[test]
    fn a_clean_pass_that_fails_marks_the_prefix_for_prefix_memory() {
        let t0 = Instant::now();
        let mut t = Throttle::new(
            ThrottleConfig {
                global_failures: 1,
                global_window: Duration::from_secs(1_000_000),
                ..cfg()
            },
            t0,
        );
        fail(&mut t, ip("198.51.100.1"), t0);
        fail(&mut t, ip("203.0.113.9"), t0); // the clean pass, wrong
        assert!(t.reserve(S, ip("203.0.113.77"), t0).is_err());
        let later = t0 + Duration::from_secs(3600);
        t.prune(later);
        assert!(
            t.reserve(S, ip("203.0.113.77"), later).is_ok(),
            "forgotten after prefix_memory"
        );
    }

    #[test]
    fn accounts_have_budgets_of_their_own() {
        let t0 = Instant::now();
        let mut t = Throttle::new(cfg(), t0);
        let (alice, bob) = (t.account("alice"), t.account("bob"));
        assert_eq!(t.account("Alice"), alice);
        assert_ne!(alice, Scope::CODES);
        for i in 0..10 {
            let ticket = t.reserve(alice, ip(&format!("198.51.{i}.1")), t0).unwrap();
            t.failed(ticket, t0);
        }
        assert!(t.reserve(alice, ip("198.51.4.2"), t0).is_err(), "alice's budget is dry");
        assert!(t.reserve(bob, ip("198.51.4.3"), t0).is_ok(), "bob is not affected");
        assert!(
            t.reserve(alice, ip("192.0.2.1"), t0).is_ok(),
            "alice from her own network"
        );
    }

    #[test]
    fn a_prefix_has_a_burst_of_its_own() {
        let t0 = Instant::now();
        let mut t = Throttle::new(
            ThrottleConfig {
                per_prefix_burst: 4,
                global_failures: 1000,
                ..cfg()
            },
            t0,
        );
        for i in 0..4 {
            fail(&mut t, ip(&format!("198.51.100.{i}")), t0);
        }
        assert!(t.reserve(S, ip("198.51.100.50"), t0).is_err(), "the /24 is locked");
        assert!(t.reserve(S, ip("198.51.101.50"), t0).is_ok());
    }

    #[test]
    fn tables_stay_bounded() {
        let t0 = Instant::now();
        let mut t = Throttle::new(
            ThrottleConfig {
                global_failures: 1_000_000,
                max_tracked_ips: 4,
                ..cfg()
            },
            t0,
        );
        for i in 0..100u32 {
            if let Ok(ticket) = t.reserve(S, IpAddr::from((i << 8).to_be_bytes()), t0) {
                t.failed(ticket, t0);
            }
        }
        assert!(t.addresses.len() <= 4 && t.prefixes.len() <= 4, "{}", t.tracked());
        t.prune(t0 + Duration::from_secs(3600 * 2));
        assert_eq!(t.tracked(), 0);
    }

    /// A day of spray with the default settings on a fake clock: 1,000 attacking
    /// addresses, each in a network of its own (the worst case for the clean-network rule),
    /// each trying again as soon as the relay lets it; an honest client from a network that
    /// never failed tries every 10 minutes and is always let through.
    #[test]
    fn a_day_of_spray_from_1000_networks_stays_below_the_guessing_target() {
        let t0 = Instant::now();
        let config = ThrottleConfig::default();
        let mut t = Throttle::new(config.clone(), t0);
        let mut admitted = 0u64;
        let step = Duration::from_secs(30);
        let steps = (86_400 / step.as_secs()) as u32;
        for n in 0..steps {
            let now = t0 + step * n;
            for i in 0..1000u32 {
                let attacker = IpAddr::from((0x0a00_0000 | (i << 8) | 1).to_be_bytes());
                if let Ok(ticket) = t.reserve(S, attacker, now) {
                    admitted += 1;
                    t.failed(ticket, now);
                }
            }
            if n % 20 == 0 {
                let honest = t
                    .reserve(S, ip("203.0.113.9"), now)
                    .expect("the honest client is let through");
                t.succeeded(honest, now);
            }
            if n % 4 == 0 {
                t.prune(now);
            }
        }
        let per_day = admitted as f64 * 1000.0 / 100_000_000.0;
        eprintln!(
            "figure: a day of spray from 1000 networks: {admitted} wrong codes checked, {per_day:.4} expected hits"
        );
        assert!(per_day < 0.1, "{admitted} guesses a day: {per_day} expected hits");
        let bound = expected_guesses_per_day(&config, 1000, 100_000_000, 1000);
        assert!(per_day <= bound + 1e-9, "{per_day} within the README's bound {bound}");
    }

    #[test]
    fn default_guessing_figures() {
        let c = ThrottleConfig::default();
        let quiet = expected_guesses_per_day(&c, 1000, 100_000_000, 0);
        assert!((quiet - 0.075).abs() < 1e-9, "{quiet}");
        let spray = expected_guesses_per_day(&c, 1000, 100_000_000, 1000);
        assert!(spray < 0.1, "{spray}");
    }
}

/// The shared cases on one relay's throttle, in memory on a fake clock.
#[cfg(test)]
mod memory_cases {
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use super::cases::{Open, Rig};
    use super::Throttle;

    async fn open() -> Option<Open> {
        Some(Box::new(|config| {
            Box::pin(async move {
                let throttle = Throttle::new(config, Instant::now());
                // The time is passed in: nothing to move.
                Rig::new(Arc::new(Mutex::new(throttle)), Box::new(|_| {}))
            })
        }))
    }

    super::cases::throttle_cases!(open);
}
