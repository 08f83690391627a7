//! The grid's code directory in Redis: [`RedisDirectory`] implements [`Directory`] for
//! every node of a grid, so a code issued on one node can be joined on any other.
//!
//! # Keys (under the grid's `key_prefix`)
//! * `code:<8 digits>`: `state|node|deadline|session id`. `state` is `live`, `used` or
//!   `expired`; `deadline` is when the code runs out, in Redis's own clock (Unix ms).
//! * `session:<session id>`: the session's code (for [`Directory::lookup`]).
//! * `grid:epoch`: when this copy of the grid's state was born (Redis `TIME`, Unix ms),
//!   without expiry; see "Redis restarted empty" below.
//!
//! # Rules
//! * **Issue** claims a random code with one script: `SET code:… NX PX (code_ttl +
//!   tombstone)` (a collision, with a live code or a tombstone, draws another code), then
//!   the session key with the same expiry. The deadline is Redis's clock plus `code_ttl`, so
//!   a code runs out at the same moment on every node; a dead node's codes vanish with
//!   their keys, `tombstone` after their deadline.
//! * **Take** is one script, atomic in Redis: a live code before its deadline becomes a
//!   `used` tombstone (kept for `tombstone`) and its session (with its node) is returned; a
//!   used tombstone answers `Used`; an `expired` one or a live one past its deadline answers
//!   `Expired`; no key answers `Unknown`. Concurrent takes of one code from many nodes get
//!   exactly one session.
//! * **Expire** turns a live code of *this node's* session into an `expired` tombstone.
//! * **Sweep** has nothing to do: Redis forgets keys by their TTLs.
//! * Every Redis failure (down, slow past `redis_timeout`, error reply) maps to
//!   `IssueError::Unavailable` / `JoinRefusal::Unavailable`: nothing was claimed or taken.
//!
//! # Redis restarted empty
//! Redis may come back with nothing (this product's Redis keeps nothing on disk), or be
//! flushed. Each node keeps its own live codes in memory (code → session and deadline;
//! removed on take, expire, or when Redis shows the code used), and on every heartbeat
//! re-asserts them with `SET NX` ([`RedisDirectory::reassert`]). Until every node has had
//! its heartbeat, a fresh code could collide with a live code not yet re-asserted, so:
//!
//! * The first node to notice that `grid:epoch` is missing (by a heartbeat, an issue or a
//!   take) creates it with Redis's `TIME` as its birth.
//! * No node issues a code until `2 × cluster.heartbeat` after that birth (`settle`): every
//!   live node re-asserts within one heartbeat, the second one is margin for a slow
//!   heartbeat. Meanwhile issue answers `Unavailable` and a take of a code Redis does not
//!   know answers `Unavailable` too (the code may be on its way back), not `Unknown`.
//! * A fresh grid starts the same way: its first `settle` has no codes to wait for, but it
//!   cannot be told apart from a restarted one.
//!
//! A node whose heartbeats stall for longer than `settle` exactly while Redis restarts may
//! find a code of its own claimed by another node; it then drops the code (the other claim
//! stands) and logs it (without the digits). A code used on another node shortly before a
//! restart, that its own node has not yet seen as used, comes back as live: the session's
//! node must refuse a second client for a session that has one.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redis::Script;
use tsunagu_proto::SessionCode;

use super::kv::{GridError, Redis};
use crate::config::ClusterConfig;
use crate::directory::{CodeState, DirFuture, Directory, IssueError, JoinRefusal, Listing, SessionRef};

/// How many random codes one issue tries before giving up. A collision needs a live or
/// remembered code on the same number out of 10^8; 32 in a row means the grid is
/// pathologically full, not unlucky.
const MAX_ISSUE_ATTEMPTS: usize = 32;

/// How many codes one re-assert script carries: a script blocks Redis while it runs, so a
/// node with many live codes re-asserts them in batches of this size (each well under a
/// millisecond of Redis time per hundred codes).
const REASSERT_BATCH: usize = 500;

/// Lua shared by the scripts: Redis's clock in Unix ms, and the state marker (created, with
/// that clock as its birth, by whoever finds it missing).
const LUA_PRELUDE: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function epoch_birth(key, now)
  local birth = redis.call('GET', key)
  if birth then return tonumber(birth) end
  redis.call('SET', key, string.format('%d', now))
  return now
end
local function parse(v)
  return string.match(v, '^(%a+)|([^|]*)|(%d+)|(.*)$')
end
"#;

/// KEYS: code, session, epoch. ARGV: node, session id, code ttl ms, tombstone ms, settle ms,
/// code digits. Returns `{"ok", deadline}`, `{"settling", ms left}` or `{"taken"}`.
const ISSUE_LUA: &str = r#"
local now = now_ms()
local birth = epoch_birth(KEYS[3], now)
local ready_at = birth + tonumber(ARGV[5])
if now < ready_at then return {'settling', string.format('%d', ready_at - now)} end
local deadline = now + tonumber(ARGV[3])
local px = tonumber(ARGV[3]) + tonumber(ARGV[4])
local value = 'live|' .. ARGV[1] .. '|' .. string.format('%d', deadline) .. '|' .. ARGV[2]
if not redis.call('SET', KEYS[1], value, 'NX', 'PX', px) then return {'taken'} end
redis.call('SET', KEYS[2], ARGV[6], 'PX', px)
return {'ok', string.format('%d', deadline)}
"#;

/// KEYS: epoch. ARGV: settle ms. Returns how many ms are left until codes may be issued.
const SETTLE_LUA: &str = r#"
local now = now_ms()
local left = epoch_birth(KEYS[1], now) + tonumber(ARGV[1]) - now
if left < 0 then return 0 end
return left
"#;

/// KEYS: code, epoch. ARGV: tombstone ms, settle ms. Returns `{"ok", node, session}`,
/// `{"used"}`, `{"expired"}`, `{"unknown"}` or `{"unavailable"}`.
const TAKE_LUA: &str = r#"
local now = now_ms()
local birth = epoch_birth(KEYS[2], now)
local v = redis.call('GET', KEYS[1])
if not v then
  if now < birth + tonumber(ARGV[2]) then return {'unavailable'} end
  return {'unknown'}
end
local state, node, deadline, sid = parse(v)
if not state then return {'unknown'} end
if state == 'used' then return {'used'} end
if state ~= 'live' or now >= tonumber(deadline) then return {'expired'} end
redis.call('SET', KEYS[1], 'used|' .. node .. '|' .. deadline .. '|' .. sid, 'PX', ARGV[1])
return {'ok', node, sid}
"#;

/// KEYS: code. ARGV: node, tombstone ms. A live code of `node` becomes expired; returns 1
/// when it did.
const EXPIRE_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local state, node, deadline, sid = parse(v)
if state ~= 'live' or node ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], 'expired|' .. node .. '|' .. deadline .. '|' .. sid, 'PX', ARGV[2])
return 1
"#;

/// KEYS: code. Returns `{state, session}` as a take would see it, or `{}`.
const STATE_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return {} end
local state, node, deadline, sid = parse(v)
if not state then return {} end
if state == 'live' and now_ms() >= tonumber(deadline) then state = 'expired' end
return {state, sid}
"#;

/// KEYS: code key. ARGV: this node, session id. A live code of that session is made to lead
/// to this node (its time left unchanged). Returns `ok` and the deadline, or the state it
/// is in instead (`used`, `expired`, or `gone` when another session holds the number).
const REPOINT_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return {'gone'} end
local state, node, deadline, sid = parse(v)
if not state or sid ~= ARGV[2] then return {'gone'} end
if state ~= 'live' then return {state} end
if now_ms() >= tonumber(deadline) then return {'expired'} end
redis.call('SET', KEYS[1], 'live|' .. ARGV[1] .. '|' .. deadline .. '|' .. sid, 'KEEPTTL')
return {'ok', deadline}
"#;

/// KEYS: epoch, then per code its code key and its session key. ARGV: node, tombstone ms,
/// then per code its deadline, session id and digits. Returns the epoch's birth, then per
/// code one of `kept` (Redis has it), `restored` (written back), `gone` (past its tombstone
/// time), `used` (Redis has it used or expired), `lost` (another session holds the code).
const REASSERT_LUA: &str = r#"
local now = now_ms()
local out = {string.format('%d', epoch_birth(KEYS[1], now))}
local tombstone = tonumber(ARGV[2])
for i = 0, (#KEYS - 1) / 2 - 1 do
  local code_key, session_key = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
  local deadline, sid, digits = ARGV[3 + 3 * i], ARGV[4 + 3 * i], ARGV[5 + 3 * i]
  local left = tonumber(deadline) + tombstone - now
  local v = redis.call('GET', code_key)
  if v then
    local state, node, _, held = parse(v)
    if node ~= ARGV[1] or held ~= sid then
      out[#out + 1] = 'lost'
    elseif state == 'live' then
      out[#out + 1] = 'kept'
    else
      out[#out + 1] = 'used'
    end
  elseif left <= 0 then
    out[#out + 1] = 'gone'
  else
    redis.call('SET', code_key, 'live|' .. ARGV[1] .. '|' .. deadline .. '|' .. sid, 'PX', left)
    redis.call('SET', session_key, digits, 'NX', 'PX', left)
    out[#out + 1] = 'restored'
  end
end
return out
"#;

/// A live code this node issued, as it re-asserts it.
#[derive(Debug, Clone)]
struct Claim {
    code: SessionCode,
    session_id: String,
    /// When the code runs out, in Redis's clock (Unix ms).
    deadline_ms: i64,
}

/// What one [`RedisDirectory::reassert`] found, code by code.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reassertion {
    /// Codes Redis still had.
    pub kept: usize,
    /// Codes written back (Redis had lost them).
    pub restored: usize,
    /// Codes now used or expired in Redis, or past their time: no longer re-asserted.
    pub finished: usize,
    /// Codes another session claimed meanwhile (see the module doc): dropped.
    pub lost: usize,
    /// Whether this re-assert found the grid's state marker new (Redis restarted or was
    /// flushed since the last one).
    pub restart_noticed: bool,
}

/// The grid's [`Directory`]: codes in the shared Redis, joinable from every node.
pub struct RedisDirectory {
    redis: Redis,
    node: String,
    code_ttl: Duration,
    tombstone: Duration,
    /// `2 × heartbeat`: how long after the state marker's birth no code is issued.
    settle: Duration,
    /// This node's live codes, by number, for re-assertion.
    claims: Mutex<HashMap<u32, Claim>>,
    /// The marker birth the last re-assert saw; a change means Redis lost its state.
    epoch_seen: Mutex<Option<i64>>,
    issue_script: Script,
    take_script: Script,
    expire_script: Script,
    state_script: Script,
    repoint_script: Script,
    reassert_script: Script,
    settle_script: Script,
}

impl RedisDirectory {
    /// The directory of node `cluster.node`: codes live for `code_ttl` and are remembered
    /// for `tombstone` after they are used or run out.
    pub fn new(redis: Redis, cluster: &ClusterConfig, code_ttl: Duration, tombstone: Duration) -> Self {
        let script = |body: &str| Script::new(&format!("{LUA_PRELUDE}{body}"));
        Self {
            redis,
            node: cluster.node.clone(),
            code_ttl,
            tombstone,
            settle: 2 * cluster.heartbeat,
            claims: Mutex::new(HashMap::new()),
            epoch_seen: Mutex::new(None),
            issue_script: script(ISSUE_LUA),
            take_script: script(TAKE_LUA),
            expire_script: script(EXPIRE_LUA),
            state_script: script(STATE_LUA),
            repoint_script: script(REPOINT_LUA),
            reassert_script: script(REASSERT_LUA),
            settle_script: script(SETTLE_LUA),
        }
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// How many live codes this node holds (and re-asserts).
    pub fn live_claims(&self) -> usize {
        self.claims().len()
    }

    /// Stops re-asserting `code` (its session got its client or ended): used when the
    /// session's node learns it otherwise than through this directory.
    pub fn forget(&self, code: SessionCode) {
        self.claims().remove(&code.as_u32());
    }

    /// Waits until the grid's state is known complete and codes can be issued (creating the
    /// state marker if Redis has none, which starts the `2 × heartbeat` wait; see the module
    /// doc), for at most `limit`. For a node's start, so that its first operator is not
    /// refused: a fresh grid waits like a restarted one.
    pub async fn wait_settled(&self, limit: Duration) -> Result<(), GridError> {
        let give_up = Instant::now() + limit;
        loop {
            let left: u64 = self
                .redis
                .run_script(
                    "checking the grid's state",
                    self.settle_script.key(self.epoch_key()).arg(millis(self.settle)),
                )
                .await?;
            if left == 0 {
                return Ok(());
            }
            let wait = Duration::from_millis(left);
            if Instant::now() + wait > give_up {
                return Err(GridError::Unavailable(format!(
                    "the grid's state is still being re-asserted ({left} ms left)"
                )));
            }
            tokio::time::sleep(wait).await;
        }
    }

    fn claims(&self) -> MutexGuard<'_, HashMap<u32, Claim>> {
        // A panic while holding the lock leaves a map that is still consistent (every
        // operation on it is a single insert or remove): keep using it.
        self.claims.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn code_key(&self, code: SessionCode) -> String {
        self.redis.key(&format!("code:{}", code.reveal()))
    }

    fn session_key(&self, session_id: &str) -> String {
        self.redis.key(&format!("session:{session_id}"))
    }

    fn epoch_key(&self) -> String {
        self.redis.key("grid:epoch")
    }

    async fn issue_now(&self, session: SessionRef) -> Result<SessionCode, IssueError> {
        for _ in 0..MAX_ISSUE_ATTEMPTS {
            let code = SessionCode::random()?;
            let answer: Vec<String> = self
                .redis
                .run_script(
                    "issuing a code",
                    self.issue_script
                        .key(self.code_key(code))
                        .key(self.session_key(&session.session_id))
                        .key(self.epoch_key())
                        .arg(&self.node)
                        .arg(&session.session_id)
                        .arg(millis(self.code_ttl))
                        .arg(millis(self.tombstone))
                        .arg(millis(self.settle))
                        .arg(code.reveal()),
                )
                .await
                .map_err(|e| IssueError::Unavailable(e.to_string()))?;
            match answer.as_slice() {
                [ok, deadline] if ok == "ok" => {
                    let deadline_ms = deadline
                        .parse()
                        .map_err(|_| IssueError::Unavailable("issuing a code: malformed answer".into()))?;
                    self.claims().insert(
                        code.as_u32(),
                        Claim {
                            code,
                            session_id: session.session_id,
                            deadline_ms,
                        },
                    );
                    return Ok(code);
                }
                [settling, left] if settling == "settling" => {
                    return Err(IssueError::Unavailable(format!(
                        "the grid is re-asserting its live codes after its Redis lost them; \
                         codes can be issued again in {left} ms"
                    )));
                }
                [taken] if taken == "taken" => continue,
                _ => return Err(IssueError::Unavailable("issuing a code: malformed answer".into())),
            }
        }
        Err(IssueError::Unavailable(format!(
            "no free code after {MAX_ISSUE_ATTEMPTS} attempts"
        )))
    }

    async fn take_now(&self, code: SessionCode) -> Result<SessionRef, JoinRefusal> {
        let answer: Vec<String> = self
            .redis
            .run_script(
                "taking a code",
                self.take_script
                    .key(self.code_key(code))
                    .key(self.epoch_key())
                    .arg(millis(self.tombstone))
                    .arg(millis(self.settle)),
            )
            .await
            .map_err(|e| {
                // The caller tells the client (and logs the refusal); a burst of joins during
                // an outage would repeat this line once per join.
                tracing::debug!(error = %e, "a code could not be taken: Redis unavailable");
                JoinRefusal::Unavailable
            })?;
        match answer.as_slice() {
            [ok, node, session_id] if ok == "ok" => {
                if *node == self.node {
                    self.forget(code);
                }
                Ok(SessionRef {
                    session_id: session_id.clone(),
                    node: Some(node.clone()),
                })
            }
            [s] if s == "used" => Err(JoinRefusal::Used),
            [s] if s == "expired" => Err(JoinRefusal::Expired),
            [s] if s == "unknown" => Err(JoinRefusal::Unknown),
            [s] if s == "unavailable" => Err(JoinRefusal::Unavailable),
            _ => {
                tracing::warn!("taking a code: malformed answer from Redis");
                Err(JoinRefusal::Unavailable)
            }
        }
    }

    async fn expire_now(&self, code: SessionCode) {
        self.forget(code);
        let done: Result<i64, GridError> = self
            .redis
            .run_script(
                "expiring a code",
                self.expire_script
                    .key(self.code_key(code))
                    .arg(&self.node)
                    .arg(millis(self.tombstone)),
            )
            .await;
        if let Err(e) = done {
            // The live key still runs out by itself at its deadline: the code cannot
            // outlive its TTL, only answer `Expired` a little later.
            tracing::warn!(error = %e, "a code could not be marked expired early");
        }
    }

    /// The code last issued to `session_id`, while Redis remembers it.
    async fn code_of(&self, session_id: &str) -> Result<Option<SessionCode>, GridError> {
        let digits: Option<String> = self
            .redis
            .run(
                "looking up a session",
                redis::cmd("GET").arg(self.session_key(session_id)),
            )
            .await?;
        Ok(digits.and_then(|d| SessionCode::parse(&d).ok()))
    }

    async fn lookup_now(&self, session_id: &str) -> Result<Option<Listing>, GridError> {
        let Some(code) = self.code_of(session_id).await? else {
            return Ok(None);
        };
        let answer: Vec<String> = self
            .redis
            .run_script("looking up a code", &self.state_script.key(self.code_key(code)))
            .await?;
        let state = match answer.as_slice() {
            [state, sid] if sid == session_id => match state.as_str() {
                "live" => CodeState::Live,
                "used" => CodeState::Used,
                _ => CodeState::Expired,
            },
            // Gone, or the number went to another session after this one's tombstone ran out.
            _ => return Ok(None),
        };
        Ok(Some(Listing { code, state }))
    }

    /// Makes the live code of `session_id` (a session this node took over before its client
    /// joined) lead to this node, and re-asserts it from here from now on.
    async fn repoint_now(&self, session_id: &str) -> Result<Option<SessionCode>, GridError> {
        let Some(code) = self.code_of(session_id).await? else {
            return Ok(None);
        };
        let answer: Vec<String> = self
            .redis
            .run_script(
                "re-pointing a code",
                self.repoint_script
                    .key(self.code_key(code))
                    .arg(&self.node)
                    .arg(session_id),
            )
            .await?;
        match answer.as_slice() {
            [ok, deadline] if ok == "ok" => {
                let deadline_ms = deadline.parse().unwrap_or_default();
                self.claims().insert(
                    code.as_u32(),
                    Claim {
                        code,
                        session_id: session_id.to_string(),
                        deadline_ms,
                    },
                );
                Ok(Some(code))
            }
            _ => Ok(None),
        }
    }

    /// Writes this node's live codes back into Redis where Redis lost them (`SET NX`, so a
    /// code Redis has is never overwritten), creating the state marker if it is missing.
    /// Codes Redis shows used or expired, or that are past their time, stop being
    /// re-asserted. Called on every heartbeat (by the node membership's heartbeat task).
    pub async fn reassert(&self) -> Result<Reassertion, GridError> {
        let snapshot: Vec<(u32, Claim)> = self.claims().iter().map(|(k, v)| (*k, v.clone())).collect();
        let mut report = Reassertion::default();
        // An empty batch still runs once: it is what notices a restart with no codes here.
        let batches: Vec<&[(u32, Claim)]> = if snapshot.is_empty() {
            vec![&[]]
        } else {
            snapshot.chunks(REASSERT_BATCH).collect()
        };
        for batch in batches {
            let mut invocation = self.reassert_script.key(self.epoch_key());
            invocation.arg(&self.node).arg(millis(self.tombstone));
            for (_, claim) in batch {
                let code = claim.code;
                invocation
                    .key(self.code_key(code))
                    .key(self.session_key(&claim.session_id))
                    .arg(claim.deadline_ms)
                    .arg(&claim.session_id)
                    .arg(code.reveal());
            }
            let answer: Vec<String> = self.redis.run_script("re-asserting codes", &invocation).await?;
            let (birth, outcomes) = answer
                .split_first()
                .ok_or_else(|| GridError::Unavailable("re-asserting codes: malformed answer".into()))?;
            if outcomes.len() != batch.len() {
                return Err(GridError::Unavailable("re-asserting codes: malformed answer".into()));
            }
            if let Ok(birth) = birth.parse::<i64>() {
                let mut seen = self.epoch_seen.lock().unwrap_or_else(|p| p.into_inner());
                if seen.is_some_and(|s| s != birth) {
                    report.restart_noticed = true;
                }
                *seen = Some(birth);
            }
            let mut claims = self.claims();
            for ((number, claim), outcome) in batch.iter().zip(outcomes) {
                match outcome.as_str() {
                    "kept" => report.kept += 1,
                    "restored" => report.restored += 1,
                    other => {
                        if other == "lost" {
                            report.lost += 1;
                        } else {
                            report.finished += 1;
                        }
                        // Only if it is still the claim we re-asserted (not reissued since).
                        if claims.get(number).is_some_and(|c| c.session_id == claim.session_id) {
                            claims.remove(number);
                        }
                    }
                }
            }
        }
        if report.restart_noticed || report.restored > 0 || report.lost > 0 {
            tracing::info!(
                node = %self.node,
                restored = report.restored,
                kept = report.kept,
                lost = report.lost,
                restart_noticed = report.restart_noticed,
                "re-asserted this node's live codes in Redis"
            );
        }
        if report.lost > 0 {
            tracing::error!(
                node = %self.node,
                lost = report.lost,
                "codes of this node were claimed by another session while Redis was restarting; they were dropped"
            );
        }
        Ok(report)
    }
}

impl Directory for RedisDirectory {
    fn joined(&self, code: SessionCode) {
        self.forget(code);
    }

    /// Claims a code for `session` on this node (its `node` field is set to this node).
    fn issue(&self, session: SessionRef) -> DirFuture<'_, Result<SessionCode, IssueError>> {
        Box::pin(self.issue_now(session))
    }

    /// `now` is not used: Redis's clock decides, the same for every node.
    fn take(&self, code: SessionCode, _now: Instant) -> DirFuture<'_, Result<SessionRef, JoinRefusal>> {
        Box::pin(self.take_now(code))
    }

    fn expire(&self, code: SessionCode, _now: Instant) -> DirFuture<'_, ()> {
        Box::pin(self.expire_now(code))
    }

    fn sweep(&self, _now: Instant) -> DirFuture<'_, ()> {
        // Redis forgets tombstones by their TTLs.
        Box::pin(std::future::ready(()))
    }

    fn lookup<'a>(&'a self, session_id: &'a str) -> DirFuture<'a, Option<Listing>> {
        Box::pin(async move {
            self.lookup_now(session_id).await.unwrap_or_else(|e| {
                tracing::debug!(error = %e, "session lookup failed: Redis unavailable");
                None
            })
        })
    }

    fn repoint<'a>(&'a self, session_id: &'a str) -> DirFuture<'a, Option<SessionCode>> {
        Box::pin(async move {
            self.repoint_now(session_id).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "a taken-over session's code could not be re-pointed: Redis unavailable");
                None
            })
        })
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::super::kv::test_redis::TestPrefix;
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    fn cluster(node: &str, prefix: &str, heartbeat: Duration) -> ClusterConfig {
        let mut c = ClusterConfig::new(
            node,
            super::super::kv::test_redis::URL,
            "ca.pem".into(),
            "ca.key".into(),
        );
        c.key_prefix = prefix.to_string();
        c.heartbeat = heartbeat;
        c.node_ttl = 3 * heartbeat;
        c
    }

    fn session(id: &str) -> SessionRef {
        SessionRef {
            session_id: id.to_string(),
            node: None,
        }
    }

    /// Three nodes' directories on one test prefix.
    async fn grid(
        t: &TestPrefix,
        heartbeat: Duration,
        code_ttl: Duration,
        tombstone: Duration,
        timeout: Duration,
    ) -> Vec<Arc<RedisDirectory>> {
        let mut dirs = Vec::new();
        for node in ["a", "b", "c"] {
            let redis = t.redis(timeout).await;
            let c = cluster(node, &t.prefix, heartbeat);
            dirs.push(Arc::new(RedisDirectory::new(redis, &c, code_ttl, tombstone)));
        }
        dirs
    }

    /// Issues on `dir` once the grid has settled (a fresh grid waits `settle` too).
    async fn issue_when_settled(dir: &RedisDirectory, s: SessionRef) -> SessionCode {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match dir.issue(s.clone()).await {
                Ok(code) => return code,
                Err(IssueError::Unavailable(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("issue failed: {e}"),
            }
        }
    }

    const HEARTBEAT: Duration = Duration::from_millis(100);
    const LONG: Duration = Duration::from_secs(600);

    #[tokio::test]
    async fn three_nodes_issuing_30000_codes_at_once_get_no_duplicate() {
        let Some(t) = TestPrefix::new("directory-unique").await else {
            return;
        };
        // A loaded machine may queue a burst of 30,000 scripts: a generous per-call bound.
        let dirs = grid(&t, HEARTBEAT, LONG, LONG, Duration::from_secs(20)).await;
        issue_when_settled(&dirs[0], session("warm-up")).await;

        const PER_NODE: usize = 10_000;
        const TASKS_PER_NODE: usize = 100;
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (n, dir) in dirs.iter().enumerate() {
            for task in 0..TASKS_PER_NODE {
                let dir = dir.clone();
                tasks.spawn(async move {
                    let mut codes = Vec::new();
                    for i in 0..PER_NODE / TASKS_PER_NODE {
                        let s = session(&format!("s-{n}-{task}-{i}"));
                        codes.push((dir.issue(s.clone()).await.expect("issue under a burst"), s.session_id));
                    }
                    codes
                });
            }
        }
        let mut all = Vec::new();
        while let Some(codes) = tasks.join_next().await {
            all.extend(codes.unwrap());
        }
        // A figure for the report, not a check: speed belongs in benchmarks.
        eprintln!("issued {} codes from 3 nodes in {:?}", all.len(), started.elapsed());
        assert_eq!(all.len(), 3 * PER_NODE);
        let distinct: HashSet<u32> = all.iter().map(|(c, _)| c.as_u32()).collect();
        let duplicates = all.len() - distinct.len();
        assert_eq!(duplicates, 0, "duplicate codes across the grid");
        assert_eq!(
            dirs.iter().map(|d| d.live_claims()).sum::<usize>(),
            3 * PER_NODE + 1,
            "every node holds its own codes for re-assertion"
        );
        // Every code leads to the session it was issued for, from any node.
        for (code, sid) in all.iter().step_by(997) {
            let listing = dirs[2].lookup(sid).await.expect("listed");
            assert_eq!((listing.code, listing.state), (*code, CodeState::Live));
        }
        // 30,001 codes and their session keys, plus the state marker.
        assert_eq!(t.clear(), 2 * (3 * PER_NODE + 1) + 1);

        // Redis lost them all: one heartbeat per node (in batches) brings every one back.
        let started = Instant::now();
        let mut restored = 0;
        for dir in &dirs {
            let report = dir.reassert().await.unwrap();
            assert_eq!(report.kept, 0, "Redis had none of them");
            restored += report.restored;
        }
        eprintln!("re-asserted {restored} codes from 3 nodes in {:?}", started.elapsed());
        assert_eq!(restored, 3 * PER_NODE + 1);
        for (code, sid) in all.iter().step_by(991) {
            let listing = dirs[0].lookup(sid).await.expect("back in Redis");
            assert_eq!((listing.code, listing.state), (*code, CodeState::Live));
        }
        assert_eq!(t.clear(), 2 * (3 * PER_NODE + 1) + 1);
    }

    #[tokio::test]
    async fn one_code_taken_at_once_from_three_nodes_leads_one_client_in() {
        let Some(t) = TestPrefix::new("directory-take").await else {
            return;
        };
        let dirs = grid(&t, HEARTBEAT, LONG, LONG, Duration::from_secs(5)).await;
        for round in 0..20 {
            let sid = format!("s{round}");
            let code = issue_when_settled(&dirs[round % 3], session(&sid)).await;
            let mut takes = tokio::task::JoinSet::new();
            // Several joiners on each node, all at once.
            for _ in 0..4 {
                for dir in &dirs {
                    let dir = dir.clone();
                    takes.spawn(async move { dir.take(code, Instant::now()).await });
                }
            }
            let mut ok = Vec::new();
            let mut used = 0;
            while let Some(r) = takes.join_next().await {
                match r.unwrap() {
                    Ok(s) => ok.push(s),
                    Err(JoinRefusal::Used) => used += 1,
                    Err(other) => panic!("unexpected refusal {other:?}"),
                }
            }
            let owner = ["a", "b", "c"][round % 3];
            assert_eq!(
                ok,
                vec![SessionRef {
                    session_id: sid.clone(),
                    node: Some(owner.to_string())
                }]
            );
            assert_eq!(used, 11);
            // The owner stops re-asserting the code once it sees it used: at once if the
            // client came in on it, else at its next heartbeat.
            dirs[round % 3].reassert().await.unwrap();
            assert_eq!(
                dirs[round % 3].live_claims(),
                0,
                "the owner stops re-asserting a used code"
            );
        }
    }

    #[tokio::test]
    async fn tombstones_answer_used_expired_and_unknown_on_every_node() {
        let Some(t) = TestPrefix::new("directory-tombstones").await else {
            return;
        };
        let tombstone = Duration::from_millis(1500);
        let dirs = grid(&t, HEARTBEAT, LONG, tombstone, Duration::from_secs(5)).await;
        let now = Instant::now();
        let used = issue_when_settled(&dirs[0], session("used")).await;
        let ended = issue_when_settled(&dirs[0], session("ended")).await;
        assert!(dirs[1].take(used, now).await.is_ok());

        // Another node cannot expire a's code; a can.
        dirs[1].expire(ended, now).await;
        assert_eq!(dirs[2].lookup("ended").await.map(|l| l.state), Some(CodeState::Live));
        dirs[0].expire(ended, now).await;
        // a still holds `used` (taken on b) until its next heartbeat shows it used.
        assert_eq!(dirs[0].live_claims(), 1);
        assert_eq!(dirs[0].reassert().await.unwrap().finished, 1);
        assert_eq!(dirs[0].live_claims(), 0);
        // Expiring a used code changes nothing.
        dirs[0].expire(used, now).await;
        for dir in &dirs {
            assert_eq!(dir.take(used, now).await, Err(JoinRefusal::Used));
            assert_eq!(dir.take(ended, now).await, Err(JoinRefusal::Expired));
            assert_eq!(
                dir.lookup("used").await,
                Some(Listing {
                    code: used,
                    state: CodeState::Used
                })
            );
            assert_eq!(dir.lookup("ended").await.map(|l| l.state), Some(CodeState::Expired));
        }
        let unknown = (0..)
            .map(|_| SessionCode::random().unwrap())
            .find(|c| *c != used && *c != ended)
            .unwrap();
        assert_eq!(dirs[2].take(unknown, now).await, Err(JoinRefusal::Unknown));
        assert_eq!(dirs[2].lookup("never-issued").await, None);

        // The tombstones run out in Redis by themselves; `sweep` has nothing to do.
        tokio::time::sleep(tombstone + Duration::from_millis(300)).await;
        for dir in &dirs {
            dir.sweep(Instant::now()).await;
            assert_eq!(dir.take(used, now).await, Err(JoinRefusal::Unknown));
            assert_eq!(dir.take(ended, now).await, Err(JoinRefusal::Unknown));
        }
    }

    #[tokio::test]
    async fn a_code_runs_out_on_every_node_at_its_deadline() {
        let Some(t) = TestPrefix::new("directory-expiry").await else {
            return;
        };
        let code_ttl = Duration::from_secs(2);
        let tombstone = Duration::from_secs(2);
        let dirs = grid(&t, HEARTBEAT, code_ttl, tombstone, Duration::from_secs(5)).await;
        // A fresh grid: issue waits 2 × heartbeat after the marker's birth, then works at once.
        assert!(matches!(
            dirs[1].issue(session("early")).await,
            Err(IssueError::Unavailable(_))
        ));
        dirs[0].wait_settled(Duration::from_secs(10)).await.unwrap();
        let code = dirs[1].issue(session("s")).await.unwrap();
        let issued = Instant::now();
        for dir in &dirs {
            assert_eq!(dir.lookup("s").await.map(|l| l.state), Some(CodeState::Live));
        }
        // Nobody called `expire`: Redis's clock alone ends the code, for every node alike.
        tokio::time::sleep_until((issued + code_ttl + Duration::from_millis(100)).into()).await;
        for dir in &dirs {
            assert_eq!(dir.lookup("s").await.map(|l| l.state), Some(CodeState::Expired));
            assert_eq!(dir.take(code, Instant::now()).await, Err(JoinRefusal::Expired));
        }
        // Then the tombstone runs out too, everywhere; the key's TTL was the code's plus it.
        tokio::time::sleep_until((issued + code_ttl + tombstone + Duration::from_millis(300)).into()).await;
        for dir in &dirs {
            assert_eq!(dir.take(code, Instant::now()).await, Err(JoinRefusal::Unknown));
            assert_eq!(dir.lookup("s").await, None);
        }
        // The issuing node stops re-asserting it on its next heartbeat.
        let report = dirs[1].reassert().await.unwrap();
        assert_eq!((report.finished, dirs[1].live_claims()), (1, 0));
        assert_eq!(t.clear(), 1, "only the state marker is left");
    }

    #[tokio::test]
    async fn after_redis_loses_everything_live_codes_come_back_and_no_code_is_issued_until_settled() {
        let Some(t) = TestPrefix::new("directory-flush").await else {
            return;
        };
        // Settling takes 2 s: the checks right after the loss have that long.
        let heartbeat = Duration::from_secs(1);
        let dirs = grid(&t, heartbeat, LONG, LONG, Duration::from_secs(5)).await;
        let mut issued = Vec::new();
        for (n, dir) in dirs.iter().enumerate() {
            for i in 0..40 {
                let sid = format!("s-{n}-{i}");
                issued.push((issue_when_settled(dir, session(&sid)).await, sid, n));
            }
        }
        // One of them is used before the loss: it must not come back as live.
        let (used_code, used_sid, _) = issued.pop().unwrap();
        assert!(dirs[0].take(used_code, Instant::now()).await.is_ok());
        for dir in &dirs {
            dir.reassert().await.unwrap();
        }

        // Redis loses everything under the grid's prefix.
        assert!(t.clear() > 0);
        let redis = t.redis(Duration::from_secs(5)).await;
        let epoch_key = redis.key("grid:epoch");

        // Before any heartbeat: joins are told to come back, not that the code is unknown,
        // and no node issues.
        assert_eq!(
            dirs[2].take(issued[0].0, Instant::now()).await,
            Err(JoinRefusal::Unavailable)
        );
        for dir in &dirs {
            assert!(matches!(
                dir.issue(session("too-early")).await,
                Err(IssueError::Unavailable(_))
            ));
        }

        // One heartbeat on each node.
        for dir in &dirs {
            let report = dir.reassert().await.unwrap();
            assert_eq!(report.restored, 40 - usize::from(dir.node() == "c"));
            assert!(report.restart_noticed);
        }
        for (code, sid, _) in &issued {
            assert_eq!(
                dirs[(code.as_u32() % 3) as usize].lookup(sid).await,
                Some(Listing {
                    code: *code,
                    state: CodeState::Live
                }),
                "every live code is back"
            );
        }
        assert_eq!(dirs[1].lookup(&used_sid).await, None, "a used code is not resurrected");

        // Issue keeps failing until 2 × heartbeat after the marker's birth (Redis's clock),
        // then works again; no issue succeeds inside the window.
        let birth: i64 = redis
            .run("GET", redis::cmd("GET").arg(&epoch_key))
            .await
            .map(|b: Option<String>| b.unwrap().parse().unwrap())
            .unwrap();
        let give_up = Instant::now() + Duration::from_secs(20);
        let mut refused = 0;
        let fresh = loop {
            match dirs[refused % 3].issue(session("fresh")).await {
                Ok(code) => break code,
                Err(IssueError::Unavailable(_)) => refused += 1,
                Err(e) => panic!("{e}"),
            }
            assert!(Instant::now() < give_up, "issue never came back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let (secs, micros): (i64, i64) = redis.run("TIME", &redis::cmd("TIME")).await.unwrap();
        let now_ms = secs * 1000 + micros / 1000;
        assert!(
            now_ms >= birth + 2 * heartbeat.as_millis() as i64,
            "issued inside the window"
        );
        assert!(refused > 0);
        assert!(
            issued.iter().all(|(c, _, _)| *c != fresh),
            "no duplicate of a live code"
        );

        // The re-asserted codes work as before, from any node.
        let (code, sid, n) = issued[7].clone();
        let taken = dirs[(n + 1) % 3].take(code, Instant::now()).await.unwrap();
        assert_eq!(taken.session_id, sid);
        assert_eq!(taken.node.as_deref(), Some(dirs[n].node()));
    }

    #[tokio::test]
    async fn with_redis_down_issue_and_take_are_unavailable_within_the_timeout() {
        let Some(mut server) = super::super::kv::test_redis::OwnServer::start().await else {
            return;
        };
        let timeout = Duration::from_millis(500);
        let redis = Redis::connect_to(&server.url(), "t:", timeout).await.unwrap();
        let mut c = cluster("a", "t:", HEARTBEAT);
        c.redis_url = server.url();
        let dir = RedisDirectory::new(redis, &c, LONG, LONG);
        let code = issue_when_settled(&dir, session("s")).await;

        server.kill();
        let started = Instant::now();
        assert!(matches!(
            dir.issue(session("s2")).await,
            Err(IssueError::Unavailable(_))
        ));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        let started = Instant::now();
        assert_eq!(dir.take(code, Instant::now()).await, Err(JoinRefusal::Unavailable));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        let started = Instant::now();
        assert!(dir.reassert().await.is_err());
        assert_eq!(dir.lookup("s").await, None);
        dir.expire(code, Instant::now()).await;
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "took {:?}",
            started.elapsed()
        );

        // Back, empty: the code was expired locally meanwhile, so it is not re-asserted.
        assert!(server.restart().await);
        let deadline = Instant::now() + Duration::from_secs(10);
        let report = loop {
            match dir.reassert().await {
                Ok(r) => break r,
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("Redis is back but re-assert fails: {e}"),
            }
        };
        assert_eq!(report.restored, 0);
        issue_when_settled(&dir, session("after")).await;
    }
}
