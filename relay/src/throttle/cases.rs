//! The rules of guessing protection as test cases that every [`Throttles`] must pass: one
//! relay's throttle in memory (`throttle.rs`) and the grid's in Redis (`grid::throttle`)
//! run the same cases through [`throttle_cases!`], so the two cannot drift apart.
//!
//! A case gets a [`Rig`]: the throttle under test and a clock the case can move forward.
//! In memory the clock is fake; in Redis it is the server's clock plus an offset the rig
//! sets, so a case that waits "an hour" takes no real time. Real time still passes while a
//! Redis case runs (milliseconds), which is why the cases compare waits within a second.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Barrier;

use super::{Outcome, ReserveError, Target, Throttled, Throttles, Ticket};
use crate::config::ThrottleConfig;

/// The throttle under test and the clock it is asked at.
pub(crate) struct Rig {
    pub throttles: Arc<dyn Throttles>,
    t0: Instant,
    offset: Mutex<Duration>,
    /// Moves the implementation's own clock to `t0 + offset` (Redis); nothing in memory,
    /// where the time is passed in.
    on_advance: Box<dyn Fn(Duration) + Send + Sync>,
    /// Whatever cleans up after the case when dropped (the Redis keys it made).
    _cleanup: Option<Box<dyn Send + Sync>>,
}

/// Opens a fresh, empty throttle with the given settings for one case.
pub(crate) type Open = Box<dyn Fn(ThrottleConfig) -> Pin<Box<dyn Future<Output = Rig> + Send>> + Send + Sync>;

impl Rig {
    pub fn new(throttles: Arc<dyn Throttles>, on_advance: Box<dyn Fn(Duration) + Send + Sync>) -> Self {
        Self {
            throttles,
            t0: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
            on_advance,
            _cleanup: None,
        }
    }

    /// Keeps `cleanup` until the case is over, then drops it (even when the case fails).
    pub fn cleaning_up_with(mut self, cleanup: impl Send + Sync + 'static) -> Self {
        self._cleanup = Some(Box::new(cleanup));
        self
    }

    fn offset(&self) -> Duration {
        *self.offset.lock().expect("no case panics while holding the clock")
    }

    /// The case's now.
    pub fn now(&self) -> Instant {
        self.t0 + self.offset()
    }

    /// Moves the clock `by` forward.
    pub fn advance(&self, by: Duration) {
        let offset = {
            let mut o = self.offset.lock().expect("no case panics while holding the clock");
            *o += by;
            *o
        };
        (self.on_advance)(offset);
    }

    pub async fn reserve_at(&self, target: Target<'_>, ip: &str) -> Result<Ticket, ReserveError> {
        self.throttles.reserve(target, ip_of(ip), self.now()).await
    }

    pub async fn reserve(&self, ip: &str) -> Result<Ticket, ReserveError> {
        self.reserve_at(Target::Codes, ip).await
    }

    pub async fn settle(&self, ticket: Ticket, outcome: Outcome) {
        self.throttles.settle(ticket, outcome, self.now()).await
    }

    /// One wrong attempt that the throttle lets through.
    pub async fn fail_at(&self, target: Target<'_>, ip: &str) {
        let ticket = self
            .reserve_at(target, ip)
            .await
            .unwrap_or_else(|e| panic!("an attempt from {ip} is allowed, got {e:?}"));
        self.settle(ticket, Outcome::Failed).await;
    }

    pub async fn fail(&self, ip: &str) {
        self.fail_at(Target::Codes, ip).await
    }
}

pub(crate) fn ip_of(s: &str) -> IpAddr {
    s.parse().expect("the cases' addresses are valid")
}

/// Small numbers so the cases read easily: a burst of 3 per address, a budget of 10 per
/// 100 s (one token back every 10 s).
pub(crate) fn cfg() -> ThrottleConfig {
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

/// Refused as throttled, told to wait `expected`, less whatever real time passed since
/// the wait began (under a second: a case runs in milliseconds).
#[track_caller]
fn assert_wait(reserved: Result<Ticket, ReserveError>, expected: Duration) {
    match reserved {
        Err(ReserveError::Throttled(Throttled { retry_after })) => assert!(
            retry_after <= expected && retry_after + Duration::from_secs(1) > expected,
            "told to wait {retry_after:?}, expected {expected:?}"
        ),
        other => panic!("expected throttled for {expected:?}, got {other:?}"),
    }
}

pub(crate) async fn burst_then_cooldown_per_address(open: &Open) {
    let rig = open(cfg()).await;
    let a = "192.0.2.1";
    for _ in 0..3 {
        rig.fail(a).await;
    }
    assert_wait(rig.reserve(a).await, Duration::from_secs(60));
    assert!(
        rig.reserve("192.0.2.2").await.is_ok(),
        "other addresses are not affected"
    );
    rig.advance(Duration::from_secs(59));
    assert!(rig.reserve(a).await.is_err(), "still locked after 59 s");
    rig.advance(Duration::from_secs(1));
    assert!(rig.reserve(a).await.is_ok(), "unlocked after the 60 s cool-down");
}

pub(crate) async fn parallel_reservations_cannot_exceed_the_burst(open: &Open) {
    let rig = open(cfg()).await;
    let a = ip_of("192.0.2.1");
    // 200 attempts arrive at the same moment, before any of them is checked.
    let barrier = Arc::new(Barrier::new(200));
    let now = rig.now();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (throttles, barrier) = (rig.throttles.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                throttles.reserve(Target::Codes, a, now).await
            })
        })
        .collect();
    let mut tickets = Vec::new();
    for t in tasks {
        if let Ok(ticket) = t.await.expect("a reservation task does not panic") {
            tickets.push(ticket);
        }
    }
    assert_eq!(tickets.len(), 3, "only the burst gets a real check");
    for ticket in tickets {
        rig.settle(ticket, Outcome::Failed).await;
    }
    assert!(
        rig.reserve("192.0.2.1").await.is_err(),
        "the right answer after them is throttled too"
    );
}

pub(crate) async fn success_refunds_everything(open: &Open) {
    let rig = open(cfg()).await;
    let a = "192.0.2.1";
    for _ in 0..50 {
        let ticket = rig.reserve(a).await.expect("successes never run out");
        rig.settle(ticket, Outcome::Succeeded).await;
    }
    rig.fail(a).await;
    rig.fail(a).await;
    assert!(rig.reserve(a).await.is_ok(), "successes never count as failures");
}

pub(crate) async fn a_refund_gives_every_token_back(open: &Open) {
    let rig = open(ThrottleConfig {
        global_failures: 2,
        global_window: Duration::from_secs(1_000_000),
        ..cfg()
    })
    .await;
    // The address: three reserved, one refunded, so one more may go ahead, and no more.
    let a = "192.0.2.1";
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(rig.reserve(a).await.expect("within the burst"));
    }
    assert!(rig.reserve(a).await.is_err(), "the burst is spent");
    rig.settle(held.pop().expect("three were reserved"), Outcome::Refund)
        .await;
    let again = rig.reserve(a).await.expect("the refunded token is back");
    assert!(rig.reserve(a).await.is_err(), "and only that one");
    for ticket in held.into_iter().chain([again]) {
        rig.settle(ticket, Outcome::Refund).await;
    }
    // The budget of 2: twenty attempts refunded take nothing from it.
    for i in 0..20 {
        let ticket = rig.reserve(&format!("198.51.{i}.1")).await.expect("allowed");
        assert!(ticket.delay.is_zero(), "from the budget, not a clean-network pass");
        rig.settle(ticket, Outcome::Refund).await;
    }
    rig.fail("198.51.100.1").await;
    let second = rig.reserve("198.51.101.1").await.expect("the budget's second token");
    assert!(second.delay.is_zero(), "the budget still had its second token");
    rig.settle(second, Outcome::Failed).await;
    let dry = rig.reserve("198.51.102.1").await.expect("a clean network passes");
    assert!(!dry.delay.is_zero(), "the budget is dry after two failures");
    rig.settle(dry, Outcome::Refund).await;
}

pub(crate) async fn tokens_come_back_one_per_refill_interval(open: &Open) {
    let rig = open(cfg()).await;
    let a = "192.0.2.1";
    rig.fail(a).await;
    rig.fail(a).await;
    rig.advance(Duration::from_secs(10));
    // One token left plus one back after 10 s: two may go ahead, then a wait of 10 s.
    let first = rig.reserve(a).await.expect("the token left");
    let second = rig.reserve(a).await.expect("the token that came back");
    assert_wait(rig.reserve(a).await, Duration::from_secs(10));
    rig.advance(Duration::from_secs(5));
    assert_wait(rig.reserve(a).await, Duration::from_secs(5));
    rig.advance(Duration::from_secs(5));
    let third = rig.reserve(a).await.expect("one more after another 10 s");
    for t in [first, second, third] {
        rig.settle(t, Outcome::Succeeded).await;
    }
}

pub(crate) async fn ipv6_addresses_in_one_slash_64_share_a_bucket(open: &Open) {
    let rig = open(cfg()).await;
    for i in 1..=3 {
        rig.fail(&format!("2001:db8::{i}")).await;
    }
    assert!(rig.reserve("2001:db8::ffff").await.is_err(), "one /64, one address");
    assert!(rig.reserve("2001:db8:0:1::1").await.is_ok(), "the next /64 is another");
    // IPv4-mapped IPv6 is the IPv4 address.
    for _ in 0..3 {
        rig.fail("192.0.2.1").await;
    }
    assert!(rig.reserve("::ffff:192.0.2.1").await.is_err());
}

pub(crate) async fn a_dry_budget_refuses_marked_prefixes_but_not_clean_ones(open: &Open) {
    let rig = open(cfg()).await;
    // Ten networks spend the global budget of 10.
    for i in 0..10 {
        rig.fail(&format!("198.51.{i}.1")).await;
    }
    // A fresh address in a network that failed is refused until a token returns.
    assert_wait(rig.reserve("198.51.3.200").await, Duration::from_secs(10));
    // A network that never failed still gets through, after the slow-down.
    let honest = rig.reserve("203.0.113.9").await.expect("clean prefix passes");
    assert_eq!(honest.delay, Duration::from_millis(500));
    // One pass at a time per prefix: a parallel attempt from its neighbour waits.
    assert!(rig.reserve("203.0.113.10").await.is_err());
    rig.settle(honest, Outcome::Succeeded).await;
    let next = rig.reserve("203.0.113.10").await.expect("a success keeps it clean");
    rig.settle(next, Outcome::Refund).await;
}

pub(crate) async fn a_clean_pass_that_fails_marks_the_prefix_for_prefix_memory(open: &Open) {
    let rig = open(ThrottleConfig {
        global_failures: 1,
        global_window: Duration::from_secs(1_000_000),
        ..cfg()
    })
    .await;
    rig.fail("198.51.100.1").await;
    rig.fail("203.0.113.9").await; // the clean pass, wrong
    assert!(rig.reserve("203.0.113.77").await.is_err(), "marked");
    rig.advance(Duration::from_secs(3599));
    assert!(rig.reserve("203.0.113.77").await.is_err(), "still marked");
    rig.advance(Duration::from_secs(1));
    rig.throttles.prune(rig.now()).await;
    assert!(
        rig.reserve("203.0.113.77").await.is_ok(),
        "forgotten after prefix_memory"
    );
}

pub(crate) async fn accounts_have_budgets_of_their_own(open: &Open) {
    let rig = open(cfg()).await;
    for i in 0..10 {
        rig.fail_at(Target::Account("alice"), &format!("198.51.{i}.1")).await;
    }
    assert!(
        rig.reserve_at(Target::Account("Alice"), "198.51.4.2").await.is_err(),
        "alice's budget is dry (names are case-insensitive)"
    );
    assert!(
        rig.reserve_at(Target::Account("bob"), "198.51.4.3").await.is_ok(),
        "bob is not affected"
    );
    assert!(
        rig.reserve_at(Target::Codes, "198.51.4.4").await.is_ok(),
        "nor are session codes"
    );
    assert!(
        rig.reserve_at(Target::Account("alice"), "192.0.2.1").await.is_ok(),
        "alice from her own network"
    );
}

pub(crate) async fn a_prefix_has_a_burst_of_its_own(open: &Open) {
    let rig = open(ThrottleConfig {
        per_prefix_burst: 4,
        global_failures: 1000,
        ..cfg()
    })
    .await;
    for i in 0..4 {
        rig.fail(&format!("198.51.100.{i}")).await;
    }
    assert_wait(rig.reserve("198.51.100.50").await, Duration::from_secs(60));
    assert!(rig.reserve("198.51.101.50").await.is_ok(), "the next /24 is another");
}

/// One `#[tokio::test]` per case, each opening its throttle with `$open`, an `async fn()
/// -> Option<Open>` (`None`: the implementation cannot run here, and said why).
macro_rules! throttle_cases {
    ($open:path) => {
        $crate::throttle::cases::throttle_cases!(@each $open;
            burst_then_cooldown_per_address,
            parallel_reservations_cannot_exceed_the_burst,
            success_refunds_everything,
            a_refund_gives_every_token_back,
            tokens_come_back_one_per_refill_interval,
            ipv6_addresses_in_one_slash_64_share_a_bucket,
            a_dry_budget_refuses_marked_prefixes_but_not_clean_ones,
            a_clean_pass_that_fails_marks_the_prefix_for_prefix_memory,
            accounts_have_budgets_of_their_own,
            a_prefix_has_a_burst_of_its_own
        );
    };
    (@each $open:path; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some(open) = $open().await {
                    $crate::throttle::cases::$case(&open).await;
                }
            }
        )*
    };
}
pub(crate) use throttle_cases;
