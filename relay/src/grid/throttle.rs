//! Guessing protection for the whole grid, in Redis: the same three levels, rules and
//! arithmetic as one relay's [`Throttle`](crate::throttle::Throttle) (address, network,
//! scope budget; reserve before check; clean-network passes while the budget is dry), with
//! the counters shared by every node, so an attacker gains nothing by spreading guesses
//! over nodes and README's bounds hold for the grid as a whole.
//!
//! * **One script per step.** A reservation is one Lua script: it reads the address, the
//!   network and the budget, and either takes a token from each (or a clean-network pass)
//!   or refuses with the time to wait, atomically, in one round trip. Bursts from many
//!   nodes are therefore ordered by Redis, as a burst on one relay is by its mutex.
//!   Settling is one script too.
//! * **Time from Redis** (`TIME`, inside the scripts): nodes with skewed clocks agree.
//!   (Scripts that read the time before they write need Redis 5 or later.)
//! * **Keys expire.** A bucket is a hash (`t` tokens, `u` last update in µs, `l` locked
//!   until) whose TTL is the moment it is full and unlocked again, when it is no different
//!   from a key never written; a network's failure mark lives for `prefix_memory`, a
//!   clean-network pass for [`PASS_LEASE`]. Nothing grows without bound, so this needs no
//!   `max_tracked_ips`: Redis holds what the last cool-downs and `prefix_memory` touched.
//! * **Fail closed.** Redis unreachable, or slower than `redis_timeout`: the reservation is
//!   refused as [`ReserveError::Unavailable`] (the peer is told `unavailable`), never let
//!   through unchecked. A settle that cannot reach Redis leaves the tokens spent.
//!
//! Keys, under the grid's key prefix and `throttle:{codes|logins}:`: `a:{address}`,
//! `p:{scope}:{network}`, `b:{scope}`, `m:{scope}:{network}` (last failure),
//! `f:{scope}:{network}` (the pass in flight). An account's scope is its lower-case name
//! under HMAC-SHA-256 with a key every node shares, so Redis never holds a name a user may
//! have typed a password into.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, ScriptInvocation};
use ring::hmac;

use crate::config::{ClusterConfig, Config, ThrottleConfig};
use crate::throttle::{
    address, prefix, Address, Outcome, Prefix, ReserveError, Scope, Target, Throttle, ThrottleFuture, Throttled,
    Throttles, Ticket,
};

/// How long a clean-network pass blocks a second one from the same network when its node
/// never settles it (the node died mid-check). Far longer than a check takes (the
/// slow-down of 1 or 2 s, then a directory take bounded by `redis_timeout` or an argon2
/// check bounded by `timeouts.login_wait` plus well under a second of work), so a live
/// check never loses its pass; short enough that a dead node's pass is soon forgotten.
pub const PASS_LEASE: Duration = Duration::from_secs(60);

/// The least wait a throttled peer is told, as on one relay.
const MIN_RETRY: Duration = Duration::from_secs(1);

/// Reserve: KEYS address, network, budget, mark, pass; ARGV the three shapes (burst, µs
/// per token, µs of cool-down; the budget has none), `prefix_memory` and the pass lease in
/// µs, the test clock offset in µs. Returns `{1, from_budget, pass_id}` or `{0, wait_µs}`.
/// Mirrors `Throttle::reserve` and `Bucket` line by line.
const RESERVE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2]) + tonumber(ARGV[11])

local function load(key, burst)
  local v = redis.call('HMGET', key, 't', 'u', 'l')
  if not v[1] then return {t = burst, u = now, l = 0} end
  return {t = tonumber(v[1]), u = tonumber(v[2]), l = tonumber(v[3])}
end
local function refill(b, burst, per)
  local elapsed = math.max(now - b.u, 0)
  b.t = math.min(b.t + elapsed / per, burst)
  b.u = now
end
local function wait(b, burst, per)
  refill(b, burst, per)
  if b.l > now then return b.l - now end
  if b.t < 1 then return per * (1 - b.t) end
  return 0
end
-- Full and unlocked from idle_at on: no different from a key never written, so it
-- expires then (or goes now).
local function save(key, b, burst, per)
  local idle_at = math.max(b.u + (burst - b.t) * per, b.l)
  if idle_at <= now then
    redis.call('DEL', key)
    return
  end
  redis.call('HSET', key, 't', b.t, 'u', b.u, 'l', b.l)
  redis.call('PEXPIRE', key, math.ceil((idle_at - now) / 1000))
end

local a_burst, a_per = tonumber(ARGV[1]), tonumber(ARGV[2])
local p_burst, p_per = tonumber(ARGV[4]), tonumber(ARGV[5])
local b_burst, b_per = tonumber(ARGV[7]), tonumber(ARGV[8])
local memory, lease = tonumber(ARGV[9]), tonumber(ARGV[10])

-- The address and the network may each be spent or locked.
local a = load(KEYS[1], a_burst)
local a_wait = wait(a, a_burst, a_per)
if a_wait > 0 then return {0, math.ceil(a_wait)} end
local p = load(KEYS[2], p_burst)
local p_wait = wait(p, p_burst, p_per)
if p_wait > 0 then return {0, math.ceil(p_wait)} end

-- The scope budget; when it is dry, only a clean network passes, one at a time.
local b = load(KEYS[3], b_burst)
local b_wait = wait(b, b_burst, b_per)
local from_budget, pass_id = 0, 0
if b_wait == 0 then
  from_budget = 1
  b.t = b.t - 1
  save(KEYS[3], b, b_burst, b_per)
else
  local failed = redis.call('GET', KEYS[4])
  if failed and now - tonumber(failed) < memory then return {0, math.ceil(b_wait)} end
  local held = redis.call('HGET', KEYS[5], 'until')
  if held and tonumber(held) > now then return {0, math.ceil(b_wait)} end
  pass_id = now
  redis.call('HSET', KEYS[5], 'until', now + lease, 'id', pass_id)
  redis.call('PEXPIRE', KEYS[5], math.ceil(lease / 1000))
end

p.t = p.t - 1
save(KEYS[2], p, p_burst, p_per)
a.t = a.t - 1
save(KEYS[1], a, a_burst, a_per)
return {1, from_budget, pass_id}
"#;

/// Settle: KEYS as for reserve; ARGV `failed` or `refund`, from_budget (0/1), pass_id, the
/// shapes as for reserve (ARGV 4 to 11), `prefix_memory` in µs, the test clock offset.
/// Mirrors `Throttle::failed` and `Throttle::refund` (a success is a refund).
const SETTLE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2]) + tonumber(ARGV[13])

local function load(key)
  local v = redis.call('HMGET', key, 't', 'u', 'l')
  if not v[1] then return nil end
  return {t = tonumber(v[1]), u = tonumber(v[2]), l = tonumber(v[3])}
end
-- Full and unlocked from idle_at on: no different from a key never written, so it
-- expires then (or goes now).
local function save(key, b, burst, per)
  local idle_at = math.max(b.u + (burst - b.t) * per, b.l)
  if idle_at <= now then
    redis.call('DEL', key)
    return
  end
  redis.call('HSET', key, 't', b.t, 'u', b.u, 'l', b.l)
  redis.call('PEXPIRE', key, math.ceil((idle_at - now) / 1000))
end
-- A key that expired was full: giving back to it changes nothing.
local function give_back(key, burst, per)
  local b = load(key)
  if not b then return end
  b.t = math.min(b.t + 1, burst)
  save(key, b, burst, per)
end
-- After a failure: an empty bucket locks for the cool-down.
local function settle_failure(key, burst, per, cooldown)
  local b = load(key)
  if not b or b.t >= 1 then return end
  b.t = math.max(b.t, 0)
  b.l = now + cooldown
  save(key, b, burst, per)
end

local from_budget, pass_id = tonumber(ARGV[2]), tonumber(ARGV[3])
local a_burst, a_per, a_cool = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local p_burst, p_per, p_cool = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local b_burst, b_per = tonumber(ARGV[10]), tonumber(ARGV[11])
local memory = tonumber(ARGV[12])

if ARGV[1] == 'failed' then
  settle_failure(KEYS[1], a_burst, a_per, a_cool)
  settle_failure(KEYS[2], p_burst, p_per, p_cool)
  redis.call('SET', KEYS[4], now, 'PX', math.ceil(memory / 1000))
else
  give_back(KEYS[1], a_burst, a_per)
  give_back(KEYS[2], p_burst, p_per)
  if from_budget == 1 then give_back(KEYS[3], b_burst, b_per) end
end
-- This ticket's pass, and no later one that took over after the lease ran out.
if from_budget == 0 and tonumber(redis.call('HGET', KEYS[5], 'id')) == pass_id then
  redis.call('DEL', KEYS[5])
end
return {1}
"#;

/// A grid node's two throttles, in the grid's Redis.
pub struct GridThrottles {
    /// Session codes (`[throttle]`): one budget for the whole grid.
    pub codes: Arc<dyn Throttles>,
    /// Operator logins (`[login_throttle]`): a budget per account, grid-wide.
    pub logins: Arc<dyn Throttles>,
}

/// A grid node's throttles over one connection of their own; `account_key` is
/// [`Keys::throttle_account_key`](crate::keys::Keys::throttle_account_key), which every
/// node derives alike. Hand them to the relay's shared state in place of its own
/// (`Shared::with_throttles`).
pub fn for_grid(
    cluster: &ClusterConfig,
    config: &Config,
    account_key: &[u8],
) -> Result<GridThrottles, redis::RedisError> {
    let conn = connection(cluster)?;
    let throttle = |name, config: &ThrottleConfig| {
        let t = RedisThrottle::new(
            conn.clone(),
            &cluster.key_prefix,
            name,
            config.clone(),
            account_key,
            cluster.redis_timeout,
        );
        Arc::new(t) as Arc<dyn Throttles>
    };
    Ok(GridThrottles {
        codes: throttle("codes", &config.throttle),
        logins: throttle("logins", &config.login_throttle),
    })
}

/// A connection of the throttles' own to the grid's Redis, made on first use (so a node
/// starts while Redis is down, and refuses attempts as unavailable meanwhile).
fn connection(cluster: &ClusterConfig) -> Result<ConnectionManager, redis::RedisError> {
    let client = redis::Client::open(cluster.redis_url.as_str())?;
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(cluster.redis_timeout))
        .set_response_timeout(Some(cluster.redis_timeout))
        // Reconnection runs in the background; a call waits at most `redis_timeout` for
        // it, so its pace only decides how soon service returns.
        .set_max_delay(cluster.redis_timeout);
    ConnectionManager::new_lazy_with_config(client, manager_config)
}

/// Why a call to Redis did not answer.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply {0:?}")]
    Reply(Vec<i64>),
}

/// One kind of attempt's guessing protection (session codes, or logins) for the whole
/// grid, in Redis. Cheap to share behind an `Arc<dyn Throttles>`.
pub struct RedisThrottle {
    conn: ConnectionManager,
    /// `{key_prefix}throttle:{name}:`.
    base: String,
    /// `codes` or `logins`, for keys and logs.
    name: &'static str,
    config: ThrottleConfig,
    /// Burst, µs per token, µs of cool-down: address, network, budget (no cool-down).
    shapes: [u64; 8],
    account_key: hmac::Key,
    timeout: Duration,
    reserve: Script,
    settle: Script,
    /// Added to Redis's clock, in µs: zero except in tests, which move time forward.
    clock_offset_us: AtomicU64,
}

impl RedisThrottle {
    /// Opens a connection of its own to the grid's Redis (connected on first use, so a node
    /// starts while Redis is down and refuses attempts as unavailable meanwhile). `name`
    /// (`codes` or `logins`) keeps the two throttles' keys apart; `account_key` is a secret
    /// every node shares, which keys the hash of account names.
    pub fn connect(
        cluster: &ClusterConfig,
        name: &'static str,
        config: ThrottleConfig,
        account_key: &[u8],
    ) -> Result<Self, redis::RedisError> {
        let conn = connection(cluster)?;
        Ok(Self::new(
            conn,
            &cluster.key_prefix,
            name,
            config,
            account_key,
            cluster.redis_timeout,
        ))
    }

    /// Over an existing connection to the grid's Redis; every call waits at most `timeout`.
    pub fn new(
        conn: ConnectionManager,
        key_prefix: &str,
        name: &'static str,
        config: ThrottleConfig,
        account_key: &[u8],
        timeout: Duration,
    ) -> Self {
        let us = |d: Duration| d.as_micros() as u64;
        let (a, p, b) = (
            Throttle::address_shape(&config),
            Throttle::prefix_shape(&config),
            Throttle::budget_shape(&config),
        );
        let shapes = [
            a.burst.into(),
            us(a.per_token),
            us(a.cooldown),
            p.burst.into(),
            us(p.per_token),
            us(p.cooldown),
            b.burst.into(),
            us(b.per_token),
        ];
        Self {
            conn,
            base: format!("{key_prefix}throttle:{name}:"),
            name,
            shapes,
            account_key: hmac::Key::new(hmac::HMAC_SHA256, account_key),
            timeout,
            reserve: Script::new(RESERVE_LUA),
            settle: Script::new(SETTLE_LUA),
            clock_offset_us: AtomicU64::new(0),
            config,
        }
    }

    /// Moves this throttle's clock to Redis's plus `offset`, so a test can wait an hour in
    /// no time. Every node of a test grid must be given the same offset.
    #[cfg(test)]
    pub(crate) fn set_clock_offset(&self, offset: Duration) {
        self.clock_offset_us.store(offset.as_micros() as u64, Ordering::Relaxed);
    }

    fn scope(&self, target: Target<'_>) -> Scope {
        match target {
            Target::Codes => Scope::CODES,
            Target::Account(name) => {
                let tag = hmac::sign(&self.account_key, name.to_ascii_lowercase().as_bytes());
                let mut first = [0u8; 8];
                first.copy_from_slice(&tag.as_ref()[..8]);
                Scope::of_account_hash(u64::from_be_bytes(first))
            }
        }
    }

    /// The five keys a reservation touches, in the scripts' order.
    fn keys(&self, scope: Scope, address: Address, prefix: Prefix) -> [String; 5] {
        let (base, scope, net) = (&self.base, format!("{:016x}", scope.id()), prefix.key());
        [
            format!("{base}a:{}", address.key()),
            format!("{base}p:{scope}:{net}"),
            format!("{base}b:{scope}"),
            format!("{base}m:{scope}:{net}"),
            format!("{base}f:{scope}:{net}"),
        ]
    }

    fn memory_us(&self) -> u64 {
        self.config.prefix_memory.as_micros() as u64
    }

    /// Runs one script under the call timeout.
    async fn run(&self, invocation: &ScriptInvocation<'_>) -> Result<Vec<i64>, CallError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn)).await {
            Ok(reply) => Ok(reply?),
            Err(_) => Err(CallError::Timeout(self.timeout)),
        }
    }

    /// One reservation: a ticket or a wait (`Ok`), or no answer from Redis (`Err`).
    async fn reserve_now(&self, scope: Scope, ip: IpAddr) -> Result<Result<Ticket, Throttled>, CallError> {
        let (address, prefix) = (address(ip), prefix(ip));
        let mut invocation = self.reserve.prepare_invoke();
        for key in self.keys(scope, address, prefix) {
            invocation.key(key);
        }
        for shape in self.shapes {
            invocation.arg(shape);
        }
        invocation
            .arg(self.memory_us())
            .arg(PASS_LEASE.as_micros() as u64)
            .arg(self.clock_offset_us.load(Ordering::Relaxed));
        let reply = self.run(&invocation).await?;
        match reply[..] {
            [1, from_budget, pass_id] => Ok(Ok(Ticket {
                scope,
                address,
                prefix,
                tracked_address: true,
                from_budget: from_budget == 1,
                pass_id: pass_id as u64,
                delay: if from_budget == 1 {
                    Duration::ZERO
                } else {
                    self.config.dry_slowdown
                },
            })),
            [0, wait_us] => Ok(Err(Throttled {
                retry_after: Duration::from_micros(wait_us.max(0) as u64).max(MIN_RETRY),
            })),
            _ => Err(CallError::Reply(reply)),
        }
    }

    async fn settle_now(&self, ticket: Ticket, outcome: Outcome) -> Result<(), CallError> {
        let mut invocation = self.settle.prepare_invoke();
        for key in self.keys(ticket.scope, ticket.address, ticket.prefix) {
            invocation.key(key);
        }
        invocation
            .arg(match outcome {
                Outcome::Failed => "failed",
                Outcome::Succeeded | Outcome::Refund => "refund",
            })
            .arg(u8::from(ticket.from_budget))
            .arg(ticket.pass_id);
        for shape in self.shapes {
            invocation.arg(shape);
        }
        invocation
            .arg(self.memory_us())
            .arg(self.clock_offset_us.load(Ordering::Relaxed));
        match self.run(&invocation).await?[..] {
            [1] => Ok(()),
            ref other => Err(CallError::Reply(other.to_vec())),
        }
    }
}

impl Throttles for RedisThrottle {
    fn reserve<'a>(
        &'a self,
        target: Target<'a>,
        ip: IpAddr,
        _now: Instant,
    ) -> ThrottleFuture<'a, Result<Ticket, ReserveError>> {
        let scope = self.scope(target);
        Box::pin(async move {
            match self.reserve_now(scope, ip).await {
                Ok(reserved) => reserved.map_err(ReserveError::from),
                Err(e) => {
                    tracing::warn!(throttle = self.name, error = %e, "the grid's throttle did not answer; attempt refused");
                    Err(ReserveError::Unavailable)
                }
            }
        })
    }

    fn settle(&self, ticket: Ticket, outcome: Outcome, _now: Instant) -> ThrottleFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = self.settle_now(ticket, outcome).await {
                // Failing closed: the tokens stay spent, a pass is freed by its lease.
                tracing::warn!(throttle = self.name, ?outcome, error = %e, "could not settle an attempt with the grid's throttle");
            }
        })
    }

    fn prune(&self, _now: Instant) -> ThrottleFuture<'_, ()> {
        // Keys expire by themselves.
        Box::pin(std::future::ready(()))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::{Arc, Mutex};

    use tokio::sync::Barrier;

    use super::*;
    use crate::testing::TestRedis;
    use crate::throttle::cases::{self, Open, Rig};

    /// The account-hash key of the test grids.
    const ACCOUNT_KEY: &[u8] = b"the test grid's shared secret";

    /// A connection to the test Redis, which answered a moment ago.
    async fn connect(redis: &TestRedis) -> ConnectionManager {
        let client = redis::Client::open(redis.url.as_str()).expect("a valid URL");
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TestRedis::TIMEOUT))
            .set_response_timeout(Some(TestRedis::TIMEOUT));
        ConnectionManager::new_with_config(client, config)
            .await
            .expect("the test Redis answered a moment ago")
    }

    fn node(conn: &ConnectionManager, redis: &TestRedis, config: ThrottleConfig) -> Arc<RedisThrottle> {
        Arc::new(RedisThrottle::new(
            conn.clone(),
            &redis.prefix,
            "codes",
            config,
            ACCOUNT_KEY,
            TestRedis::TIMEOUT,
        ))
    }

    /// The rules of `throttle.rs`, on one Redis throttle with the clock moved by an offset.
    async fn open() -> Option<Open> {
        TestRedis::reach("throttle rules")?;
        Some(Box::new(move |config| {
            Box::pin(async move {
                let redis = TestRedis::reach("throttle rules").expect("the test Redis answered a moment ago");
                let throttle = node(&connect(&redis).await, &redis, config);
                let clock = throttle.clone();
                Rig::new(throttle, Box::new(move |offset| clock.set_clock_offset(offset))).cleaning_up_with(redis)
            })
        }))
    }

    cases::throttle_cases!(open);

    /// One relay's throttle, for the figures the grid must match.
    fn one_relay(config: ThrottleConfig) -> Arc<dyn Throttles> {
        Arc::new(Mutex::new(Throttle::new(config, Instant::now())))
    }

    /// `n` reservations released at the same moment, the i-th from `source(i)` on node
    /// `i % nodes.len()`; the tickets granted.
    async fn burst(nodes: &[Arc<dyn Throttles>], n: usize, source: impl Fn(usize) -> IpAddr) -> Vec<Ticket> {
        let barrier = Arc::new(Barrier::new(n));
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let (node, barrier, ip) = (nodes[i % nodes.len()].clone(), barrier.clone(), source(i));
                tokio::spawn(async move {
                    barrier.wait().await;
                    node.reserve(Target::Codes, ip, Instant::now()).await
                })
            })
            .collect();
        let mut granted = Vec::new();
        for t in tasks {
            match t.await.expect("a reservation task does not panic") {
                Ok(ticket) => granted.push(ticket),
                Err(ReserveError::Throttled(_)) => {}
                Err(ReserveError::Unavailable) => panic!("the test Redis stopped answering"),
            }
        }
        granted
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_600_from_one_address_over_three_nodes_gets_what_one_node_allows() {
        let Some(redis) = TestRedis::reach("grid throttle") else {
            return;
        };
        let conn = connect(&redis).await;
        let config = ThrottleConfig::default();
        let attacker = |_| IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
        let on_one = burst(&[one_relay(config.clone())], 600, attacker).await.len();

        let grid: Vec<Arc<RedisThrottle>> = (0..3).map(|_| node(&conn, &redis, config.clone())).collect();
        let nodes: Vec<Arc<dyn Throttles>> = grid.iter().map(|n| n.clone() as Arc<dyn Throttles>).collect();
        let granted = burst(&nodes, 600, attacker).await;
        eprintln!(
            "figure: 600 parallel attempts from one address: {on_one} checked on one relay, {} over three nodes",
            granted.len()
        );
        assert_eq!(
            on_one, config.per_ip_burst as usize,
            "one relay checks the address's burst"
        );
        assert_eq!(granted.len(), on_one, "three nodes together check exactly as many");
        for (i, ticket) in granted.into_iter().enumerate() {
            nodes[i % 3].settle(ticket, Outcome::Failed, Instant::now()).await;
        }
        for node in &nodes {
            assert!(
                node.reserve(Target::Codes, attacker(0), Instant::now()).await.is_err(),
                "the right code after them is throttled on every node"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_from_600_networks_over_three_nodes_spends_exactly_the_budget() {
        let Some(redis) = TestRedis::reach("grid throttle") else {
            return;
        };
        let conn = connect(&redis).await;
        let config = ThrottleConfig::default();
        // Each attempt from a /24 of its own: only the budget limits them.
        let network = |i: usize| IpAddr::V4(Ipv4Addr::new(10, (i / 256) as u8, (i % 256) as u8, 1));
        let split = |tickets: &[Ticket]| {
            let from_budget = tickets.iter().filter(|t| t.delay.is_zero()).count();
            (from_budget, tickets.len() - from_budget)
        };
        let on_one = split(&burst(&[one_relay(config.clone())], 600, network).await);

        let nodes: Vec<Arc<dyn Throttles>> = (0..3)
            .map(|_| node(&conn, &redis, config.clone()) as Arc<dyn Throttles>)
            .collect();
        let on_three = split(&burst(&nodes, 600, network).await);
        eprintln!(
            "figure: 600 parallel attempts from 600 networks: (budget, clean passes) {on_one:?} on one relay, \
             {on_three:?} over three nodes"
        );
        let budget = config.global_failures as usize;
        assert_eq!(
            on_one,
            (budget, 600 - budget),
            "one relay: the budget, then one pass per clean network"
        );
        assert_eq!(on_three, on_one, "three nodes share the one budget");
    }

    /// The spray of tests/guessing.rs at the throttle: 1,000 addresses in 100 networks
    /// (/24s), two rounds, 32 attempts at a time, every attempt wrong; on `nodes`, the i-th
    /// attempt of a round on node `i % nodes.len()`. Returns (checked, refused).
    async fn spray(nodes: &[Arc<dyn Throttles>]) -> (usize, usize) {
        let sources: Vec<IpAddr> = (0..100u8)
            .flat_map(|net| (1..=10u8).map(move |host| IpAddr::V4(Ipv4Addr::new(127, 10, net, host))))
            .collect();
        let (mut checked, mut refused) = (0, 0);
        for _round in 0..2 {
            for (c, chunk) in sources.chunks(32).enumerate() {
                let tasks: Vec<_> = chunk
                    .iter()
                    .enumerate()
                    .map(|(j, &ip)| {
                        let node = nodes[(c * 32 + j) % nodes.len()].clone();
                        tokio::spawn(async move {
                            match node.reserve(Target::Codes, ip, Instant::now()).await {
                                Ok(ticket) => {
                                    node.settle(ticket, Outcome::Failed, Instant::now()).await;
                                    true
                                }
                                Err(ReserveError::Throttled(_)) => false,
                                Err(ReserveError::Unavailable) => panic!("the test Redis stopped answering"),
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    if t.await.expect("a spray task does not panic") {
                        checked += 1;
                    } else {
                        refused += 1;
                    }
                }
            }
        }
        (checked, refused)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spray_over_three_nodes_is_refused_as_on_one_and_an_honest_client_gets_through() {
        let Some(redis) = TestRedis::reach("grid throttle") else {
            return;
        };
        let conn = connect(&redis).await;
        let config = ThrottleConfig::default();
        let started = Instant::now();
        let on_relay = spray(&[one_relay(config.clone())]).await;
        let one_redis = TestRedis::reach("grid throttle").expect("the test Redis answered a moment ago");
        let on_one_node = spray(&[node(&conn, &one_redis, config.clone()) as Arc<dyn Throttles>]).await;
        let grid: Vec<Arc<dyn Throttles>> = (0..3)
            .map(|_| node(&conn, &redis, config.clone()) as Arc<dyn Throttles>)
            .collect();
        let on_three = spray(&grid).await;
        let elapsed = started.elapsed();
        eprintln!(
            "figure: spray of 2000 wrong codes from 1000 addresses in 100 networks, (checked, refused): \
             one relay in memory {on_relay:?}, one Redis node {on_one_node:?}, three Redis nodes {on_three:?} \
             ({elapsed:?} for all three runs)"
        );

        // The budget (300) goes to the first 30 networks, then each of the 70 networks it
        // did not reach gets one clean-network pass; then nothing, as every network is
        // marked: 370. Attempts run 32 at a time, and 32 attempts span at most 5 networks
        // of 10 addresses, so at the moment the budget runs dry the order within a chunk
        // can move it by up to 5 either way: a later network may take a budget token (and
        // so lose its pass), or, where reserve and settle are separate round trips, a
        // network whose budgeted failure is still being settled may get one pass more. A
        // budget token that refills while the spray runs (one per 12 s) adds one. The same
        // holds on one node and on three.
        let budget = config.global_failures as usize;
        let expected = budget + 70;
        let per_token = config.global_window / config.global_failures;
        let refills = (elapsed.as_secs_f64() / per_token.as_secs_f64()).ceil() as usize;
        let order = 5;
        for (what, (checked, refused)) in [
            ("one relay", on_relay),
            ("one node", on_one_node),
            ("three nodes", on_three),
        ] {
            assert_eq!(checked + refused, 2000, "{what}: every attempt answered");
            assert!(
                (expected - order..=expected + order + refills).contains(&checked),
                "{what}: {checked} wrong codes checked, expected {expected} (- {order}, + {})",
                order + refills
            );
        }

        // An attacker address with the right code is still refused, on every node.
        for node in &grid {
            assert!(
                node.reserve(Target::Codes, "127.10.3.200".parse().unwrap(), Instant::now())
                    .await
                    .is_err(),
                "a marked network is refused while the budget is dry"
            );
        }
        // The honest client, from a network that never failed, on any node.
        let honest = grid[1]
            .reserve(Target::Codes, "127.200.0.1".parse().unwrap(), Instant::now())
            .await
            .expect("the honest client gets through during the spray");
        assert_eq!(honest.delay, config.dry_slowdown, "after the slow-down of a dry budget");
        grid[1].settle(honest, Outcome::Succeeded, Instant::now()).await;

        // Nothing grows without bound: every key the spray left expires, within
        // prefix_memory at the latest.
        let left = redis.keys_with_ttl();
        assert!(!left.is_empty(), "the spray left its counters in Redis");
        let limit = config.prefix_memory.as_millis() as i64;
        for (key, ttl) in &left {
            // -2: it expired between the scan and the question; -1 would be a key for ever.
            assert!(*ttl == -2 || (*ttl > 0 && *ttl <= limit), "{key} expires in {ttl} ms");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_accounts_budget_is_one_for_the_whole_grid() {
        let Some(redis) = TestRedis::reach("grid throttle") else {
            return;
        };
        let conn = connect(&redis).await;
        let config = ThrottleConfig::logins();
        let nodes: Vec<Arc<RedisThrottle>> = (0..3).map(|_| node(&conn, &redis, config.clone())).collect();
        let now = Instant::now();
        // Strangers on 20 networks fail once each, spread over the nodes and spelling the
        // name as they like: alice's budget of 20 is spent, grid-wide.
        for i in 0..config.global_failures as usize {
            let name = if i % 2 == 0 { "alice" } else { "ALICE" };
            let ip = IpAddr::V4(Ipv4Addr::new(198, 51, i as u8, 1));
            let ticket = nodes[i % 3]
                .reserve(Target::Account(name), ip, now)
                .await
                .expect("within alice's budget");
            assert!(ticket.delay.is_zero(), "attempt {i} came from the budget");
            nodes[i % 3].settle(ticket, Outcome::Failed, now).await;
        }
        for node in &nodes {
            assert!(
                node.reserve(Target::Account("Alice"), "198.51.4.2".parse().unwrap(), now)
                    .await
                    .is_err(),
                "a network that failed on alice is refused on every node"
            );
        }
        let bob = nodes[0]
            .reserve(Target::Account("bob"), "198.51.4.3".parse().unwrap(), now)
            .await
            .expect("bob's budget is his own");
        assert!(bob.delay.is_zero());
        let owner = nodes[2]
            .reserve(Target::Account("alice"), "192.0.2.1".parse().unwrap(), now)
            .await
            .expect("alice from her own network, after the slow-down");
        assert_eq!(owner.delay, config.dry_slowdown);
    }

    /// A cluster section for a Redis at `url` with a short call timeout.
    fn cluster_at(url: &str, timeout: Duration) -> ClusterConfig {
        let mut cluster = ClusterConfig::new("a", url, "unused-ca.pem".into(), "unused-ca.key".into());
        cluster.redis_timeout = timeout;
        cluster
    }

    #[tokio::test]
    async fn redis_down_refuses_as_unavailable_within_the_timeout() {
        let timeout = Duration::from_millis(300);
        // Nothing listens: the connection is refused at once.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let closed_url = format!("redis://{}", closed.local_addr().expect("bound"));
        drop(closed);
        // Something listens but never answers: the call times out.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let silent_url = format!("redis://{}", silent.local_addr().expect("bound"));
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                held.push(socket);
            }
        });

        for url in [closed_url, silent_url] {
            let throttle = RedisThrottle::connect(
                &cluster_at(&url, timeout),
                "codes",
                ThrottleConfig::default(),
                ACCOUNT_KEY,
            )
            .expect("a valid URL");
            for target in [Target::Codes, Target::Account("alice")] {
                let asked = Instant::now();
                let reserved = throttle.reserve(target, "192.0.2.1".parse().unwrap(), asked).await;
                let took = asked.elapsed();
                assert_eq!(
                    reserved,
                    Err(ReserveError::Unavailable),
                    "{url}: refused, never let through"
                );
                // The bound is the timeout, with room for a busy machine to schedule us.
                assert!(
                    took < timeout + Duration::from_secs(2),
                    "{url}: answered after {took:?}"
                );
            }
        }
        held.abort();
    }
}
