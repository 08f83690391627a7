//! Session records: what lets a session outlive the relay node that ran it.
//!
//! # Who owns a session
//! Every session of a grid has exactly one owner at a time: the node that forwards its
//! frames and applies its rules. Ownership is a pair (node, epoch):
//!
//! * The **node** holds the session for as long as the node itself is alive in the grid,
//!   that is, while its heartbeat key lives (see [`super::nodes`]: it expires
//!   `cluster.node_ttl` after the last heartbeat). There is no lease per session: one
//!   heartbeat keeps all of a node's sessions.
//! * The **epoch** is the session's fencing token. It starts at 1 when the session is
//!   created and grows by one at each takeover; it never goes down. Every write carries the
//!   epoch the writer believes it holds, and Redis refuses it unless the record still names
//!   that node *and* that epoch.
//!
//! When a node dies (crash, kill -9) or freezes (SIGSTOP, a VM pause) for longer than its
//! node TTL, its endpoints reconnect to another node of their relay list and show their
//! resume token. That node reads the record and takes the session over with a
//! compare-and-set on the (owner, epoch) it read, if the owner's heartbeat key is gone
//! ([`SessionRecords::take_over_if_owner_gone`] checks both in one atomic step;
//! [`SessionRecords::owner_alive`] and [`SessionRecords::take_over`] are the two halves, for
//! a caller that has proved the owner dead otherwise): of many nodes that try at once,
//! exactly one wins. A node that was only frozen wakes up still believing it owns its
//! sessions; its next write is refused as [`Saved::Stale`], and the [`SessionRecords::refresh`]
//! that follows each of its heartbeats lists the sessions that are no longer its own, so it
//! stops forwarding them.
//!
//! # What Redis holds per session
//! One hash, `record:<session id>` (under the grid's key prefix), with the fields `owner`
//! (a node name), `epoch` (decimal) and `snapshot` (a [`SessionSnapshot`] as JSON, versioned).
//! It expires `ttl` after the last write or refresh (the resume window plus a margin), so
//! the record of a session whose node died and that nobody resumed goes away by itself.
//! When a session ends, its record is replaced by a tombstone (`owner`, `epoch`, `ended`,
//! no snapshot) kept for `ttl`, so a frozen former owner that wakes up hears "moved", not
//! "missing".
//!
//! A snapshot holds who and where (operator, addresses, relay ports), the rules state
//! (phase, permissions asked, granted and allowed, the client's switches, open transfers'
//! metadata, counters) and both resume seats (the endpoint's public key and the *hash* of
//! its next token). It never holds a token, a session code, chat, screen, input or file
//! content.
//!
//! The key is `record:`, not `session:`, because [`super::directory`] already keeps each
//! session's code under `session:<id>`.

use std::net::SocketAddr;
use std::time::Duration;

use redis::Script;
use serde::{Deserialize, Serialize};
use tsunagu_proto::resume::KEY_LEN;
use tsunagu_proto::PermissionSet;

use super::kv::{GridError, Redis};
use crate::policy::{ClientModes, Counters, Direction, MAX_OPEN_TRANSFERS, MAX_RECORDED_NAME};
use crate::resume::Seat;

/// The snapshot format this relay writes and the only one it reads. Raise it when an older
/// relay could misread a newer record; fields an older relay may ignore keep the version.
pub const SNAPSHOT_VERSION: u8 = 1;

/// The largest snapshot written or read, in bytes. A real one is well under 10 KiB: at
/// most [`MAX_OPEN_TRANSFERS`] transfers with names of at most [`MAX_RECORDED_NAME`]
/// characters, two seats and a few dozen small fields.
pub const MAX_SNAPSHOT: usize = 64 * 1024;

/// How many records one refresh script carries: a script blocks Redis while it runs, so a
/// node with many sessions refreshes them in batches of this size (each well under a
/// millisecond of Redis time).
const REFRESH_BATCH: usize = 500;

/// A session's ownership epoch (fencing token): 1 when created, one more at each takeover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Epoch(u64);

impl Epoch {
    /// The epoch of a session that was just created.
    pub const FIRST: Epoch = Epoch(1);

    /// An epoch as a number (for logs, metrics and hints).
    pub fn get(self) -> u64 {
        self.0
    }

    /// The epoch numbered `n` (as read back from a log or a hint).
    pub fn new(n: u64) -> Self {
        Self(n)
    }
}

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for Epoch {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Epoch)
    }
}

/// Where a session is in its life, as a record keeps it. Deadlines are wall-clock Unix
/// milliseconds, since the node that reads them is another machine with another
/// monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotPhase {
    /// Code issued; no client yet. The code runs out at `code_deadline_unix_ms`.
    AwaitingClient { code_deadline_unix_ms: u64 },
    /// The client joined and has until `deadline_unix_ms` to answer the consent request.
    AwaitingConsent { deadline_unix_ms: u64 },
    /// Consent given.
    Active,
}

/// Whether an open transfer was only offered or accepted by its receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferStage {
    Offered,
    Accepted,
}

/// One open file transfer's metadata, as the relay counts it (never its content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferSnapshot {
    /// The way the content moves.
    pub direction: Direction,
    /// The sender's transfer id.
    pub id: u32,
    /// The name as the history records it (already made inert and bounded).
    pub name: String,
    /// The offered size.
    pub size: u64,
    /// Content bytes the relay let through so far.
    pub bytes: u64,
    pub stage: TransferStage,
}

/// The client's side of a session, once it joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSnapshot {
    /// The host name the client gave.
    pub host: String,
    /// Where its connection came from.
    pub addr: SocketAddr,
    /// The relay port it reached (7615, 443 or 80, for the history).
    pub relay_port: u16,
}

/// Everything another node needs to go on with a session, and nothing else: no token, no
/// session code, no content. Built by the session's owner from its live state and stored
/// (as versioned JSON) in the session's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSnapshot {
    /// The session id.
    pub id: String,
    /// The operator's account name.
    pub operator: String,
    /// Where the operator's connection came from (checked again against IP rules).
    pub operator_addr: SocketAddr,
    /// The relay port the operator reached.
    pub operator_relay_port: u16,
    /// The client, once one joined.
    pub client: Option<ClientSnapshot>,
    pub phase: SnapshotPhase,
    /// What the operator asked for (clipped to `allowed`).
    pub asked: PermissionSet,
    /// What the client granted.
    pub granted: PermissionSet,
    /// What the admin allows this operator.
    pub allowed: PermissionSet,
    /// The client's switches.
    pub modes: ClientModes,
    /// The operator's resume seat, if its app can resume.
    pub operator_seat: Option<Seat>,
    /// The client's resume seat, if its app can resume.
    pub client_seat: Option<Seat>,
    /// How many resumes the session has seen.
    pub resumes: u32,
    /// Open transfers (at most [`MAX_OPEN_TRANSFERS`]).
    pub transfers: Vec<TransferSnapshot>,
    /// The counters the history gets.
    pub counters: Counters,
    /// Serial of the client certificate the operator logged in with (the session ends on
    /// every node when it is revoked).
    pub operator_cert: Option<String>,
}

/// Why a stored snapshot cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// A relay of another version wrote it: this one cannot tell what it means.
    #[error("session record version {found} is not one this relay reads (it reads version {SNAPSHOT_VERSION})")]
    UnknownVersion { found: u64 },
    /// It is bigger than [`MAX_SNAPSHOT`].
    #[error("session record of {0} bytes is over the {MAX_SNAPSHOT} byte limit")]
    TooLarge(usize),
    /// It does not parse, or holds a value out of range.
    #[error("session record is malformed: {0}")]
    Malformed(String),
}

/// The JSON form of a seat: hex of the public key and of the next token's hash.
#[derive(Debug, Serialize, Deserialize)]
struct SeatJson {
    key: String,
    token_hash: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ClientJson {
    host: String,
    addr: SocketAddr,
    relay_port: u16,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum PhaseJson {
    AwaitingClient { code_deadline_unix_ms: u64 },
    AwaitingConsent { deadline_unix_ms: u64 },
    Active,
}

#[derive(Debug, Serialize, Deserialize)]
struct ModesJson {
    paused: bool,
    view_only: bool,
    chat_only: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum DirectionJson {
    ToClient,
    ToOperator,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StageJson {
    Offered,
    Accepted,
}

#[derive(Debug, Serialize, Deserialize)]
struct TransferJson {
    direction: DirectionJson,
    id: u32,
    name: String,
    size: u64,
    bytes: u64,
    stage: StageJson,
}

#[derive(Debug, Serialize, Deserialize)]
struct CountersJson {
    bytes_to_client: u64,
    bytes_to_operator: u64,
    pauses: u32,
    dropped_frames: u64,
}

/// Version 1 of the stored form. Permission sets are lists of names (`view`, `control`,
/// `files`, `chat`), so an empty set is `[]` and a reader never guesses at bit positions.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotJson {
    v: u8,
    id: String,
    /// Absent in records written before certificates existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    operator_cert: Option<String>,
    operator: String,
    operator_addr: SocketAddr,
    operator_relay_port: u16,
    client: Option<ClientJson>,
    phase: PhaseJson,
    asked: Vec<String>,
    granted: Vec<String>,
    allowed: Vec<String>,
    modes: ModesJson,
    operator_seat: Option<SeatJson>,
    client_seat: Option<SeatJson>,
    resumes: u32,
    transfers: Vec<TransferJson>,
    counters: CountersJson,
}

/// Only the version, read first so that a newer format is named as such rather than as
/// whichever field failed to parse.
#[derive(Deserialize)]
struct VersionOnly {
    v: u64,
}

fn names(set: PermissionSet) -> Vec<String> {
    set.names().into_iter().map(str::to_string).collect()
}

fn parse_set(what: &str, names: &[String]) -> Result<PermissionSet, SnapshotError> {
    PermissionSet::parse_names(names.iter().map(String::as_str))
        .map_err(|e| SnapshotError::Malformed(format!("{what}: {e}")))
}

fn bytes32(what: &str, hex: &str) -> Result<[u8; 32], SnapshotError> {
    let bad = || SnapshotError::Malformed(format!("{what} is not 64 hex digits"));
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

fn seat_json(seat: &Seat) -> SeatJson {
    let (key, token_hash) = seat.parts();
    SeatJson {
        key: crate::hex::hex(&key),
        token_hash: token_hash.map(|h| crate::hex::hex(&h)),
    }
}

fn seat_from(json: &SeatJson) -> Result<Seat, SnapshotError> {
    let key: [u8; KEY_LEN] = bytes32("a seat's key", &json.key)?;
    let token_hash = json
        .token_hash
        .as_deref()
        .map(|h| bytes32("a seat's token hash", h))
        .transpose()?;
    Ok(Seat::from_parts(key, token_hash))
}

impl SessionSnapshot {
    /// The stored form: JSON with `"v": SNAPSHOT_VERSION`.
    pub fn to_json(&self) -> Result<String, SnapshotError> {
        let json = SnapshotJson {
            v: SNAPSHOT_VERSION,
            id: self.id.clone(),
            operator_cert: self.operator_cert.clone(),
            operator: self.operator.clone(),
            operator_addr: self.operator_addr,
            operator_relay_port: self.operator_relay_port,
            client: self.client.as_ref().map(|c| ClientJson {
                host: c.host.clone(),
                addr: c.addr,
                relay_port: c.relay_port,
            }),
            phase: match self.phase {
                SnapshotPhase::AwaitingClient { code_deadline_unix_ms } => {
                    PhaseJson::AwaitingClient { code_deadline_unix_ms }
                }
                SnapshotPhase::AwaitingConsent { deadline_unix_ms } => PhaseJson::AwaitingConsent { deadline_unix_ms },
                SnapshotPhase::Active => PhaseJson::Active,
            },
            asked: names(self.asked),
            granted: names(self.granted),
            allowed: names(self.allowed),
            modes: ModesJson {
                paused: self.modes.paused,
                view_only: self.modes.view_only,
                chat_only: self.modes.chat_only,
            },
            operator_seat: self.operator_seat.as_ref().map(seat_json),
            client_seat: self.client_seat.as_ref().map(seat_json),
            resumes: self.resumes,
            transfers: self
                .transfers
                .iter()
                .map(|t| TransferJson {
                    direction: match t.direction {
                        Direction::ToClient => DirectionJson::ToClient,
                        Direction::ToOperator => DirectionJson::ToOperator,
                    },
                    id: t.id,
                    name: t.name.clone(),
                    size: t.size,
                    bytes: t.bytes,
                    stage: match t.stage {
                        TransferStage::Offered => StageJson::Offered,
                        TransferStage::Accepted => StageJson::Accepted,
                    },
                })
                .collect(),
            counters: CountersJson {
                bytes_to_client: self.counters.bytes_to_client,
                bytes_to_operator: self.counters.bytes_to_operator,
                pauses: self.counters.pauses,
                dropped_frames: self.counters.dropped_frames,
            },
        };
        let text = serde_json::to_string(&json).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
        if text.len() > MAX_SNAPSHOT {
            return Err(SnapshotError::TooLarge(text.len()));
        }
        Ok(text)
    }

    /// Reads a stored snapshot: its size is checked before parsing, its version before its
    /// fields, and its values (permission names, seat hex, transfer count and names) after.
    pub fn from_json(text: &str) -> Result<Self, SnapshotError> {
        if text.len() > MAX_SNAPSHOT {
            return Err(SnapshotError::TooLarge(text.len()));
        }
        let version: VersionOnly =
            serde_json::from_str(text).map_err(|e| SnapshotError::Malformed(format!("no version: {e}")))?;
        if version.v != u64::from(SNAPSHOT_VERSION) {
            return Err(SnapshotError::UnknownVersion { found: version.v });
        }
        let json: SnapshotJson = serde_json::from_str(text).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
        if json.transfers.len() > MAX_OPEN_TRANSFERS {
            return Err(SnapshotError::Malformed(format!(
                "{} open transfers (at most {MAX_OPEN_TRANSFERS})",
                json.transfers.len()
            )));
        }
        let transfers = json
            .transfers
            .into_iter()
            .map(|t| {
                if t.name.chars().count() > MAX_RECORDED_NAME {
                    return Err(SnapshotError::Malformed(format!(
                        "a transfer name is longer than {MAX_RECORDED_NAME} characters"
                    )));
                }
                Ok(TransferSnapshot {
                    direction: match t.direction {
                        DirectionJson::ToClient => Direction::ToClient,
                        DirectionJson::ToOperator => Direction::ToOperator,
                    },
                    id: t.id,
                    name: t.name,
                    size: t.size,
                    bytes: t.bytes,
                    stage: match t.stage {
                        StageJson::Offered => TransferStage::Offered,
                        StageJson::Accepted => TransferStage::Accepted,
                    },
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            id: json.id,
            operator_cert: json
                .operator_cert
                .filter(|s| s.len() <= 40 && s.bytes().all(|b| b.is_ascii_hexdigit())),
            operator: json.operator,
            operator_addr: json.operator_addr,
            operator_relay_port: json.operator_relay_port,
            client: json.client.map(|c| ClientSnapshot {
                host: c.host,
                addr: c.addr,
                relay_port: c.relay_port,
            }),
            phase: match json.phase {
                PhaseJson::AwaitingClient { code_deadline_unix_ms } => {
                    SnapshotPhase::AwaitingClient { code_deadline_unix_ms }
                }
                PhaseJson::AwaitingConsent { deadline_unix_ms } => SnapshotPhase::AwaitingConsent { deadline_unix_ms },
                PhaseJson::Active => SnapshotPhase::Active,
            },
            asked: parse_set("asked", &json.asked)?,
            granted: parse_set("granted", &json.granted)?,
            allowed: parse_set("allowed", &json.allowed)?,
            modes: ClientModes {
                paused: json.modes.paused,
                view_only: json.modes.view_only,
                chat_only: json.modes.chat_only,
            },
            operator_seat: json.operator_seat.as_ref().map(seat_from).transpose()?,
            client_seat: json.client_seat.as_ref().map(seat_from).transpose()?,
            resumes: json.resumes,
            transfers,
            counters: Counters {
                bytes_to_client: json.counters.bytes_to_client,
                bytes_to_operator: json.counters.bytes_to_operator,
                pauses: json.counters.pauses,
                dropped_frames: json.counters.dropped_frames,
            },
        })
    }
}

/// Why a session record could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Redis is down, slow or answered with an error: nothing was changed.
    #[error(transparent)]
    Grid(#[from] GridError),
    /// [`SessionRecords::create`] found a record (or a tombstone) with that id.
    #[error("a session record with this id exists already")]
    Exists,
    /// The stored snapshot cannot be read (another relay version wrote it), or the one to
    /// store cannot be written.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

/// A record as read: the snapshot and who owns it at which epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    pub snapshot: SessionSnapshot,
    pub owner: String,
    pub epoch: Epoch,
}

/// What a fenced write found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Saved {
    /// Written, and the record's TTL restarted.
    Stored,
    /// Another node owns the session now (or this node at a later epoch): nothing was
    /// written, and this node must stop forwarding the session.
    Stale { owner: String, epoch: Epoch },
    /// No record (it ended, ran out, or Redis lost it): nothing was written.
    Gone,
}

/// What a takeover found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakeOver {
    /// This node owns the session now, at `epoch`; `snapshot` is the state to go on with
    /// (boxed: it is by far the largest outcome).
    Taken {
        epoch: Epoch,
        snapshot: Box<SessionSnapshot>,
    },
    /// The record no longer shows the owner and epoch that were seen: someone else took it
    /// first (or its owner wrote a newer epoch). It is `owner`'s at `epoch` now.
    Moved { owner: String, epoch: Epoch },
    /// No live record: the session ended, or nobody resumed it within the TTL.
    Gone,
}

/// What [`SessionRecords::refresh`] found among the sessions this node believes it owns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refreshed {
    /// Another node owns these now, or they ended there: stop forwarding them and close
    /// their connections on this node without ending them (their new owner goes on).
    pub moved: Vec<String>,
    /// No record at all. Either Redis lost its state (it keeps nothing on disk), and then
    /// the owner writes the record back with [`SessionRecords::restore`]; or this node was
    /// frozen for longer than the record TTL, and then the session is over (the caller
    /// knows which: the time since its last successful refresh is longer than the TTL).
    pub missing: Vec<String>,
}

impl Refreshed {
    /// Every id that is not this node's any more (moved or missing), for a caller that does
    /// not restore records.
    pub fn not_ours(&self) -> Vec<String> {
        self.moved.iter().chain(&self.missing).cloned().collect()
    }
}

/// KEYS: record. ARGV: node, snapshot, ttl ms. Returns `"ok"` or `"exists"`.
const CREATE_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 'exists' end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'epoch', '1', 'snapshot', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 'ok'
"#;

/// KEYS: record. ARGV: node, epoch, snapshot, ttl ms. Returns `{"ok"}`, `{"gone"}` or
/// `{"stale", owner, epoch}`.
const SAVE_LUA: &str = r#"
local r = redis.call('HMGET', KEYS[1], 'owner', 'epoch', 'ended')
if not r[1] then return {'gone'} end
if r[1] ~= ARGV[1] or r[2] ~= ARGV[2] then return {'stale', r[1], r[2]} end
if r[3] then return {'gone'} end
redis.call('HSET', KEYS[1], 'snapshot', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {'ok'}
"#;

/// KEYS: record. ARGV: node, epoch, snapshot, ttl ms. Writes the record back as this
/// node's at `epoch` only where there is none. Returns like [`SAVE_LUA`].
const RESTORE_LUA: &str = r#"
local r = redis.call('HMGET', KEYS[1], 'owner', 'epoch', 'ended')
if r[1] then
  if r[1] ~= ARGV[1] or r[2] ~= ARGV[2] then return {'stale', r[1], r[2]} end
  if r[3] then return {'gone'} end
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'epoch', ARGV[2], 'snapshot', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {'ok'}
"#;

/// KEYS: record, and optionally the seen owner's node key. ARGV: seen owner, seen epoch,
/// node, ttl ms. Returns `{"alive"}` (the node key was given and exists), `{"taken", epoch,
/// snapshot}`, `{"moved", owner, epoch}` or `{"gone"}`.
const TAKE_OVER_LUA: &str = r#"
if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 1 then return {'alive'} end
local r = redis.call('HMGET', KEYS[1], 'owner', 'epoch', 'ended', 'snapshot')
if not r[1] or r[3] or not r[4] then return {'gone'} end
if r[1] ~= ARGV[1] or r[2] ~= ARGV[2] then return {'moved', r[1], r[2]} end
local epoch = string.format('%d', tonumber(r[2]) + 1)
redis.call('HSET', KEYS[1], 'owner', ARGV[3], 'epoch', epoch)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {'taken', epoch, r[4]}
"#;

/// KEYS: record. ARGV: node, epoch, ttl ms. Turns this node's record at `epoch` into a
/// tombstone; returns 1 when it did.
const REMOVE_LUA: &str = r#"
local r = redis.call('HMGET', KEYS[1], 'owner', 'epoch', 'ended')
if r[1] ~= ARGV[1] or r[2] ~= ARGV[2] or r[3] then return 0 end
redis.call('HDEL', KEYS[1], 'snapshot')
redis.call('HSET', KEYS[1], 'ended', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#;

/// KEYS: records. ARGV: node, ttl ms, then each record's epoch. Returns per record `kept`
/// (TTL restarted), `moved` (another owner or epoch, or ended) or `missing`.
const REFRESH_LUA: &str = r#"
local out = {}
for i, key in ipairs(KEYS) do
  local r = redis.call('HMGET', key, 'owner', 'epoch', 'ended')
  if not r[1] then
    out[i] = 'missing'
  elseif r[1] == ARGV[1] and r[2] == ARGV[2 + i] and not r[3] then
    redis.call('PEXPIRE', key, ARGV[2])
    out[i] = 'kept'
  else
    out[i] = 'moved'
  end
end
return out
"#;

/// This node's view of the grid's session records: create, save (fenced by epoch), load,
/// take over, remove and refresh. Cheap to share behind an `Arc`; every call is one Redis
/// round trip (a refresh of many sessions, one per [`REFRESH_BATCH`]) under the grid's
/// Redis timeout.
pub struct SessionRecords {
    redis: Redis,
    node: String,
    ttl: Duration,
    create_script: Script,
    save_script: Script,
    restore_script: Script,
    take_over_script: Script,
    remove_script: Script,
    refresh_script: Script,
}

impl std::fmt::Debug for SessionRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRecords")
            .field("node", &self.node)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn malformed(what: &str) -> RecordError {
    RecordError::Grid(GridError::Unavailable(format!("{what}: malformed answer")))
}

fn epoch_of(what: &str, text: &str) -> Result<Epoch, RecordError> {
    text.parse().map_err(|_| malformed(what))
}

impl SessionRecords {
    /// The records of node `node`; each record lives `ttl` after its last write or refresh
    /// (the resume window plus a margin for a takeover to happen).
    pub fn new(redis: Redis, node: &str, ttl: Duration) -> Self {
        Self {
            redis,
            node: node.to_string(),
            ttl,
            create_script: Script::new(CREATE_LUA),
            save_script: Script::new(SAVE_LUA),
            restore_script: Script::new(RESTORE_LUA),
            take_over_script: Script::new(TAKE_OVER_LUA),
            remove_script: Script::new(REMOVE_LUA),
            refresh_script: Script::new(REFRESH_LUA),
        }
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn record_key(&self, id: &str) -> String {
        self.redis.key(&format!("record:{id}"))
    }

    /// A node's heartbeat key, as [`super::nodes`] names it (the test
    /// `owner_alive_follows_the_node_heartbeat_key` keeps the two in step).
    fn node_key(&self, node: &str) -> String {
        self.redis.key(&format!("node:{node}"))
    }

    /// The first write of a new session: this node owns it at [`Epoch::FIRST`]. A record
    /// (or tombstone) with that id is [`RecordError::Exists`] and is left as it is.
    pub async fn create(&self, snapshot: &SessionSnapshot) -> Result<Epoch, RecordError> {
        let json = snapshot.to_json()?;
        let answer: String = self
            .redis
            .run_script(
                "creating a session record",
                self.create_script
                    .key(self.record_key(&snapshot.id))
                    .arg(&self.node)
                    .arg(json)
                    .arg(millis(self.ttl)),
            )
            .await?;
        match answer.as_str() {
            "ok" => Ok(Epoch::FIRST),
            "exists" => Err(RecordError::Exists),
            _ => Err(malformed("creating a session record")),
        }
    }

    /// Writes the session's state if this node still owns it at `epoch`; a stale owner's
    /// write is refused and changes nothing.
    pub async fn save(&self, snapshot: &SessionSnapshot, epoch: Epoch) -> Result<Saved, RecordError> {
        let json = snapshot.to_json()?;
        let answer: Vec<String> = self
            .redis
            .run_script(
                "saving a session record",
                self.save_script
                    .key(self.record_key(&snapshot.id))
                    .arg(&self.node)
                    .arg(epoch.get())
                    .arg(json)
                    .arg(millis(self.ttl)),
            )
            .await?;
        saved("saving a session record", &answer)
    }

    /// Writes this node's record back at `epoch` where Redis has none (it lost its state):
    /// see [`Refreshed::missing`]. A record that exists is left alone and answered as
    /// [`SessionRecords::save`] would (stored if it is this node's at `epoch`).
    pub async fn restore(&self, snapshot: &SessionSnapshot, epoch: Epoch) -> Result<Saved, RecordError> {
        let json = snapshot.to_json()?;
        let answer: Vec<String> = self
            .redis
            .run_script(
                "restoring a session record",
                self.restore_script
                    .key(self.record_key(&snapshot.id))
                    .arg(&self.node)
                    .arg(epoch.get())
                    .arg(json)
                    .arg(millis(self.ttl)),
            )
            .await?;
        saved("restoring a session record", &answer)
    }

    /// The live record of session `id`, or `None` (never created, ended, or expired).
    pub async fn load(&self, id: &str) -> Result<Option<Owned>, RecordError> {
        let fields: Vec<Option<String>> = self
            .redis
            .run(
                "reading a session record",
                redis::cmd("HMGET")
                    .arg(self.record_key(id))
                    .arg("owner")
                    .arg("epoch")
                    .arg("snapshot")
                    .arg("ended"),
            )
            .await?;
        match fields.as_slice() {
            [Some(owner), Some(epoch), Some(snapshot), None] => Ok(Some(Owned {
                snapshot: SessionSnapshot::from_json(snapshot)?,
                owner: owner.clone(),
                epoch: epoch_of("reading a session record", epoch)?,
            })),
            [_, _, _, _] => Ok(None),
            _ => Err(malformed("reading a session record")),
        }
    }

    /// Takes session `id` over for this node if its record still shows `seen_owner` at
    /// `seen_epoch` (what [`SessionRecords::load`] returned): the epoch grows by one. Of
    /// many nodes that try from the same sighting, exactly one gets [`TakeOver::Taken`].
    ///
    /// Whether a takeover is allowed is the caller's decision, made before: the owner's
    /// node is gone ([`SessionRecords::owner_alive`] is false) or proven dead. If the owner
    /// comes back between that check and this call, the takeover still stands; the owner
    /// then finds itself stale (its writes are refused, its refresh lists the session as
    /// moved), which is exactly what happens to a node frozen for longer than its TTL.
    pub async fn take_over(&self, id: &str, seen_owner: &str, seen_epoch: Epoch) -> Result<TakeOver, RecordError> {
        let taken = self.take_over_script(id, seen_owner, seen_epoch, false).await?;
        // Without the node key, the script never answers "alive".
        taken.ok_or_else(|| malformed("taking over a session record"))
    }

    /// [`SessionRecords::take_over`], but only if the seen owner's node is gone, checked in
    /// the same atomic step (no window between the check and the takeover): `None` when the
    /// owner is alive (then its session is reached through it, over the bridge).
    pub async fn take_over_if_owner_gone(
        &self,
        id: &str,
        seen_owner: &str,
        seen_epoch: Epoch,
    ) -> Result<Option<TakeOver>, RecordError> {
        self.take_over_script(id, seen_owner, seen_epoch, true).await
    }

    async fn take_over_script(
        &self,
        id: &str,
        seen_owner: &str,
        seen_epoch: Epoch,
        unless_owner_alive: bool,
    ) -> Result<Option<TakeOver>, RecordError> {
        let what = "taking over a session record";
        let mut invocation = self.take_over_script.key(self.record_key(id));
        if unless_owner_alive {
            invocation.key(self.node_key(seen_owner));
        }
        invocation
            .arg(seen_owner)
            .arg(seen_epoch.get())
            .arg(&self.node)
            .arg(millis(self.ttl));
        let answer: Vec<String> = self.redis.run_script(what, &invocation).await?;
        let outcome = match answer.as_slice() {
            [alive] if alive == "alive" && unless_owner_alive => return Ok(None),
            [taken, epoch, snapshot] if taken == "taken" => Ok(TakeOver::Taken {
                epoch: epoch_of(what, epoch)?,
                snapshot: Box::new(SessionSnapshot::from_json(snapshot)?),
            }),
            [moved, owner, epoch] if moved == "moved" => Ok(TakeOver::Moved {
                owner: owner.clone(),
                epoch: epoch_of(what, epoch)?,
            }),
            [gone] if gone == "gone" => Ok(TakeOver::Gone),
            _ => Err(malformed(what)),
        };
        outcome.map(Some)
    }

    /// The session ended on this node: its record becomes a tombstone (kept for the TTL, so
    /// a former owner that wakes up learns the session moved), if this node still owns it at
    /// `epoch`. Returns whether it did.
    pub async fn remove(&self, id: &str, epoch: Epoch) -> Result<bool, RecordError> {
        let done: i64 = self
            .redis
            .run_script(
                "removing a session record",
                self.remove_script
                    .key(self.record_key(id))
                    .arg(&self.node)
                    .arg(epoch.get())
                    .arg(millis(self.ttl)),
            )
            .await?;
        Ok(done == 1)
    }

    /// Restarts the TTL of every record in `owned` that this node still owns at the given
    /// epoch, and says which are not its own any more. Run after each heartbeat: it is how a
    /// node that was frozen learns which sessions to let go. One round trip per
    /// [`REFRESH_BATCH`] sessions.
    pub async fn refresh(&self, owned: &[(String, Epoch)]) -> Result<Refreshed, RecordError> {
        let what = "refreshing session records";
        let mut found = Refreshed::default();
        for batch in owned.chunks(REFRESH_BATCH) {
            let mut invocation = self.refresh_script.prepare_invoke();
            for (id, _) in batch {
                invocation.key(self.record_key(id));
            }
            invocation.arg(&self.node).arg(millis(self.ttl));
            for (_, epoch) in batch {
                invocation.arg(epoch.get());
            }
            let answer: Vec<String> = self.redis.run_script(what, &invocation).await?;
            if answer.len() != batch.len() {
                return Err(malformed(what));
            }
            for ((id, _), state) in batch.iter().zip(&answer) {
                match state.as_str() {
                    "kept" => {}
                    "moved" => found.moved.push(id.clone()),
                    "missing" => found.missing.push(id.clone()),
                    _ => return Err(malformed(what)),
                }
            }
        }
        Ok(found)
    }

    /// Whether node `node` is alive in the grid: its heartbeat key (`node:<name>`, see
    /// [`super::nodes`]) exists.
    pub async fn owner_alive(&self, node: &str) -> Result<bool, RecordError> {
        let exists: i64 = self
            .redis
            .run("checking a node", redis::cmd("EXISTS").arg(self.node_key(node)))
            .await?;
        Ok(exists == 1)
    }
}

fn saved(what: &str, answer: &[String]) -> Result<Saved, RecordError> {
    match answer {
        [ok] if ok == "ok" => Ok(Saved::Stored),
        [gone] if gone == "gone" => Ok(Saved::Gone),
        [stale, owner, epoch] if stale == "stale" => Ok(Saved::Stale {
            owner: owner.clone(),
            epoch: epoch_of(what, epoch)?,
        }),
        _ => Err(malformed(what)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::kv::test_redis::{TestPrefix, URL};
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    fn seat(key_byte: u8, token: Option<u8>) -> Seat {
        Seat::from_parts([key_byte; KEY_LEN], token.map(|b| [b; 32]))
    }

    fn perms(names: &[&str]) -> PermissionSet {
        PermissionSet::parse_names(names.iter().copied()).unwrap()
    }

    fn snapshot(id: &str) -> SessionSnapshot {
        SessionSnapshot {
            id: id.to_string(),
            operator: "alice".into(),
            operator_addr: "198.51.100.7:50123".parse().unwrap(),
            operator_relay_port: 7615,
            client: Some(ClientSnapshot {
                host: "reception-pc".into(),
                addr: "[2001:db8::5]:40000".parse().unwrap(),
                relay_port: 443,
            }),
            phase: SnapshotPhase::Active,
            asked: perms(&["view", "control", "files"]),
            granted: perms(&["view", "files"]),
            allowed: perms(&["all"]),
            modes: ClientModes {
                paused: true,
                view_only: false,
                chat_only: false,
            },
            operator_seat: Some(seat(1, Some(2))),
            client_seat: Some(seat(3, None)),
            resumes: 2,
            transfers: vec![
                TransferSnapshot {
                    direction: Direction::ToClient,
                    id: 7,
                    name: "report.pdf".into(),
                    size: 1000,
                    bytes: 600,
                    stage: TransferStage::Accepted,
                },
                TransferSnapshot {
                    direction: Direction::ToOperator,
                    id: 1,
                    name: "ログ.txt".into(),
                    size: 20,
                    bytes: 0,
                    stage: TransferStage::Offered,
                },
            ],
            operator_cert: None,
            counters: Counters {
                bytes_to_client: 12_345,
                bytes_to_operator: 9_876_543_210,
                pauses: 3,
                dropped_frames: 4,
            },
        }
    }

    #[test]
    fn a_snapshot_reads_back_as_written_and_holds_no_secret() {
        let mut snap = snapshot("s1");
        let text = snap.to_json().unwrap();
        assert!(text.starts_with(r#"{"v":1,"#), "{text}");
        assert_eq!(SessionSnapshot::from_json(&text).unwrap(), snap);
        // Seats are hex of the key and of the token's hash; nothing else of them.
        assert!(
            text.contains(&"01".repeat(32)) && text.contains(&"02".repeat(32)),
            "{text}"
        );
        assert!(text.contains(r#""token_hash":null"#), "{text}");
        assert!(!text.contains("code"), "no session code field: {text}");

        // The other phases, no client, no seats, empty permission sets.
        for phase in [
            SnapshotPhase::AwaitingClient {
                code_deadline_unix_ms: 1_800_000_000_000,
            },
            SnapshotPhase::AwaitingConsent {
                deadline_unix_ms: 1_800_000_060_000,
            },
        ] {
            snap.phase = phase;
            snap.client = None;
            snap.operator_seat = None;
            snap.client_seat = None;
            snap.granted = PermissionSet::EMPTY;
            snap.transfers.clear();
            let text = snap.to_json().unwrap();
            assert!(text.contains(r#""granted":[]"#), "{text}");
            assert_eq!(SessionSnapshot::from_json(&text).unwrap(), snap);
        }
    }

    #[test]
    fn a_snapshot_of_another_version_or_shape_is_refused_with_a_clear_error() {
        let text = snapshot("s1").to_json().unwrap();
        let newer = text.replacen(r#""v":1"#, r#""v":2"#, 1);
        let err = SessionSnapshot::from_json(&newer).unwrap_err();
        assert_eq!(err, SnapshotError::UnknownVersion { found: 2 });
        assert_eq!(
            err.to_string(),
            "session record version 2 is not one this relay reads (it reads version 1)"
        );
        // A newer format may change any field: the version is named, not the field.
        assert_eq!(
            SessionSnapshot::from_json(r#"{"v":3,"phase":42}"#),
            Err(SnapshotError::UnknownVersion { found: 3 })
        );
        assert!(matches!(
            SessionSnapshot::from_json(r#"{"id":"s1"}"#),
            Err(SnapshotError::Malformed(m)) if m.contains("no version")
        ));
        assert!(matches!(
            SessionSnapshot::from_json("not json"),
            Err(SnapshotError::Malformed(_))
        ));

        let bad_seat = text.replacen(&"01".repeat(32), &"zz".repeat(32), 1);
        assert!(matches!(
            SessionSnapshot::from_json(&bad_seat),
            Err(SnapshotError::Malformed(m)) if m.contains("seat's key")
        ));
        let short_hash = text.replacen(&"02".repeat(32), "0202", 1);
        assert!(matches!(
            SessionSnapshot::from_json(&short_hash),
            Err(SnapshotError::Malformed(m)) if m.contains("token hash")
        ));
        let bad_perm = text.replacen(r#""granted":["view","files"]"#, r#""granted":["root"]"#, 1);
        assert!(matches!(
            SessionSnapshot::from_json(&bad_perm),
            Err(SnapshotError::Malformed(m)) if m.contains("granted")
        ));

        let mut crowded = snapshot("s1");
        crowded.transfers = (0..=MAX_OPEN_TRANSFERS as u32)
            .map(|id| TransferSnapshot {
                direction: Direction::ToClient,
                id,
                name: "f".into(),
                size: 1,
                bytes: 0,
                stage: TransferStage::Offered,
            })
            .collect();
        let text = crowded.to_json().unwrap();
        assert!(matches!(
            SessionSnapshot::from_json(&text),
            Err(SnapshotError::Malformed(m)) if m.contains("open transfers")
        ));
        let huge = format!(r#"{{"v":1,"id":"{}"}}"#, "x".repeat(MAX_SNAPSHOT));
        assert_eq!(
            SessionSnapshot::from_json(&huge),
            Err(SnapshotError::TooLarge(huge.len()))
        );
    }

    #[test]
    fn epochs_order_print_and_parse_as_numbers() {
        assert!(Epoch::new(3) > Epoch::FIRST);
        assert_eq!(Epoch::new(12).to_string(), "12");
        assert_eq!("12".parse::<Epoch>().unwrap(), Epoch::new(12));
        assert_eq!(serde_json::to_string(&Epoch::new(5)).unwrap(), "5");
    }

    const TTL: Duration = Duration::from_secs(60);

    async fn records(t: &TestPrefix, node: &str, ttl: Duration) -> SessionRecords {
        SessionRecords::new(t.redis(Duration::from_secs(5)).await, node, ttl)
    }

    #[tokio::test]
    async fn a_created_record_loads_back_and_its_owner_saves_it() {
        let Some(t) = TestPrefix::new("records").await else {
            return;
        };
        let a = records(&t, "a", TTL).await;
        let b = records(&t, "b", TTL).await;
        assert_eq!(a.load("s1").await.unwrap(), None);

        let mut snap = snapshot("s1");
        assert_eq!(a.create(&snap).await.unwrap(), Epoch::FIRST);
        let seen = b.load("s1").await.unwrap().expect("another node reads it");
        assert_eq!(
            seen,
            Owned {
                snapshot: snap.clone(),
                owner: "a".into(),
                epoch: Epoch::FIRST
            }
        );
        assert_eq!(a.create(&snap).await, Err(RecordError::Exists), "an id is created once");
        assert_eq!(b.create(&snap).await, Err(RecordError::Exists));

        snap.counters.bytes_to_client += 1000;
        snap.modes.paused = false;
        assert_eq!(a.save(&snap, Epoch::FIRST).await.unwrap(), Saved::Stored);
        assert_eq!(b.load("s1").await.unwrap().unwrap().snapshot, snap);

        // Only the owner, at its epoch, writes.
        let mut other = snap.clone();
        other.granted = PermissionSet::ALL;
        assert_eq!(
            b.save(&other, Epoch::FIRST).await.unwrap(),
            Saved::Stale {
                owner: "a".into(),
                epoch: Epoch::FIRST
            }
        );
        assert_eq!(
            a.save(&other, Epoch::new(2)).await.unwrap(),
            Saved::Stale {
                owner: "a".into(),
                epoch: Epoch::FIRST
            }
        );
        assert_eq!(a.save(&snapshot("nobody"), Epoch::FIRST).await.unwrap(), Saved::Gone);
        assert_eq!(
            a.load("s1").await.unwrap().unwrap().snapshot,
            snap,
            "refused writes changed nothing"
        );

        // The record lives under the grid's prefix, as a hash scripts can compare.
        let redis = t.redis(Duration::from_secs(5)).await;
        let fields: Vec<Option<String>> = redis
            .run(
                "HMGET",
                redis::cmd("HMGET")
                    .arg(format!("{}record:s1", t.prefix))
                    .arg("owner")
                    .arg("epoch"),
            )
            .await
            .unwrap();
        assert_eq!(fields, vec![Some("a".to_string()), Some("1".to_string())]);
        let ttl_ms: i64 = redis
            .run("PTTL", redis::cmd("PTTL").arg(format!("{}record:s1", t.prefix)))
            .await
            .unwrap();
        assert!(ttl_ms > 50_000 && ttl_ms <= 60_000, "{ttl_ms}");
    }

    #[tokio::test]
    async fn after_a_takeover_the_old_owner_is_fenced_off() {
        let Some(t) = TestPrefix::new("records-fence").await else {
            return;
        };
        let a = records(&t, "a", TTL).await;
        let b = records(&t, "b", TTL).await;
        let snap = snapshot("s1");
        let epoch = a.create(&snap).await.unwrap();

        let seen = b.load("s1").await.unwrap().unwrap();
        let taken = b.take_over("s1", &seen.owner, seen.epoch).await.unwrap();
        assert_eq!(
            taken,
            TakeOver::Taken {
                epoch: Epoch::new(2),
                snapshot: Box::new(snap.clone())
            }
        );

        // a, frozen meanwhile, wakes up and writes with its old epoch: refused, not applied.
        let mut stale = snap.clone();
        stale.counters.bytes_to_operator = 1;
        stale.granted = PermissionSet::ALL;
        assert_eq!(
            a.save(&stale, epoch).await.unwrap(),
            Saved::Stale {
                owner: "b".into(),
                epoch: Epoch::new(2)
            }
        );
        assert!(!a.remove("s1", epoch).await.unwrap(), "nor can it remove the record");
        assert_eq!(
            a.restore(&stale, epoch).await.unwrap(),
            Saved::Stale {
                owner: "b".into(),
                epoch: Epoch::new(2)
            },
            "nor write it back"
        );
        let now = a.load("s1").await.unwrap().unwrap();
        assert_eq!((now.owner.as_str(), now.epoch), ("b", Epoch::new(2)));
        assert_eq!(now.snapshot, snap, "the stale writes changed nothing");

        // Nor can it take the session back from what it saw before.
        assert_eq!(
            a.take_over("s1", "a", epoch).await.unwrap(),
            TakeOver::Moved {
                owner: "b".into(),
                epoch: Epoch::new(2)
            }
        );
        // The new owner writes at its epoch.
        let mut newer = snap.clone();
        newer.resumes = 3;
        assert_eq!(b.save(&newer, Epoch::new(2)).await.unwrap(), Saved::Stored);
        assert_eq!(a.load("s1").await.unwrap().unwrap().snapshot, newer);
        assert_eq!(b.take_over("nobody", "a", Epoch::FIRST).await.unwrap(), TakeOver::Gone);
    }

    #[tokio::test]
    async fn of_many_nodes_racing_to_take_over_exactly_one_wins() {
        let Some(t) = TestPrefix::new("records-race").await else {
            return;
        };
        let nodes = [
            Arc::new(records(&t, "b", TTL).await),
            Arc::new(records(&t, "c", TTL).await),
        ];
        let a = records(&t, "a", TTL).await;
        a.create(&snapshot("s1")).await.unwrap();

        let barrier = Arc::new(tokio::sync::Barrier::new(50));
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let node = nodes[i % 2].clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    let outcome = node.take_over("s1", "a", Epoch::FIRST).await.unwrap();
                    (node.node().to_string(), outcome)
                })
            })
            .collect();
        let mut winners = Vec::new();
        let mut losers = HashSet::new();
        for task in tasks {
            match tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .unwrap()
                .unwrap()
            {
                (node, TakeOver::Taken { epoch, .. }) => winners.push((node, epoch)),
                (_, TakeOver::Moved { owner, epoch }) => {
                    losers.insert((owner, epoch));
                }
                (_, other) => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "{winners:?}");
        let (winner, epoch) = winners.pop().unwrap();
        assert_eq!(epoch, Epoch::new(2));
        // Every loser was told who won, at which epoch.
        assert_eq!(losers, HashSet::from([(winner.clone(), Epoch::new(2))]));
        let now = a.load("s1").await.unwrap().unwrap();
        assert_eq!((now.owner, now.epoch), (winner, Epoch::new(2)));
    }

    #[tokio::test]
    async fn refresh_tells_a_node_which_sessions_are_no_longer_its_own() {
        let Some(t) = TestPrefix::new("records-refresh").await else {
            return;
        };
        let short = Duration::from_secs(5);
        let a = records(&t, "a", short).await;
        let b = records(&t, "b", short).await;
        for id in ["kept", "taken", "taken-and-ended", "ended-here", "lost"] {
            a.create(&snapshot(id)).await.unwrap();
        }
        b.take_over("taken", "a", Epoch::FIRST).await.unwrap();
        b.take_over("taken-and-ended", "a", Epoch::FIRST).await.unwrap();
        assert!(b.remove("taken-and-ended", Epoch::new(2)).await.unwrap());
        assert!(a.remove("ended-here", Epoch::FIRST).await.unwrap());
        assert!(!a.remove("ended-here", Epoch::FIRST).await.unwrap(), "once");
        // Redis loses one record (restarted, flushed).
        let redis = t.redis(Duration::from_secs(5)).await;
        let _: i64 = redis
            .run("DEL", redis::cmd("DEL").arg(format!("{}record:lost", t.prefix)))
            .await
            .unwrap();

        // Some time passes: the refresh restarts the TTL of what a still owns.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let owned: Vec<(String, Epoch)> = ["kept", "taken", "taken-and-ended", "ended-here", "lost"]
            .into_iter()
            .map(|id| (id.to_string(), Epoch::FIRST))
            .collect();
        let found = a.refresh(&owned).await.unwrap();
        assert_eq!(
            found,
            Refreshed {
                moved: vec!["taken".into(), "taken-and-ended".into(), "ended-here".into()],
                missing: vec!["lost".into()],
            }
        );
        assert_eq!(found.not_ours().len(), 4);
        let pttl = |id: &str| {
            let redis = redis.clone();
            let key = format!("{}record:{id}", t.prefix);
            async move {
                let ms: i64 = redis.run("PTTL", redis::cmd("PTTL").arg(key)).await.unwrap();
                ms
            }
        };
        assert!(pttl("kept").await > 4_500, "refreshed");
        assert!(pttl("taken").await < 4_000, "b's record is b's to refresh");
        assert_eq!(
            a.load("taken-and-ended").await.unwrap(),
            None,
            "an ended session's record is gone"
        );
        assert_eq!(a.load("ended-here").await.unwrap(), None);

        // The owner writes the lost record back at its epoch; nobody else can.
        assert_eq!(a.restore(&snapshot("lost"), Epoch::FIRST).await.unwrap(), Saved::Stored);
        assert_eq!(a.refresh(&owned[4..]).await.unwrap(), Refreshed::default());
        let back = b.load("lost").await.unwrap().unwrap();
        assert_eq!((back.owner.as_str(), back.epoch), ("a", Epoch::FIRST));
        // An ended session is not brought back, nor created again.
        assert_eq!(
            a.restore(&snapshot("ended-here"), Epoch::FIRST).await.unwrap(),
            Saved::Gone
        );
        assert_eq!(a.create(&snapshot("ended-here")).await, Err(RecordError::Exists));
        assert_eq!(
            b.take_over("ended-here", "a", Epoch::FIRST).await.unwrap(),
            TakeOver::Gone
        );

        // More sessions than one script carries.
        let many: Vec<(String, Epoch)> = (0..REFRESH_BATCH + 20)
            .map(|i| (format!("m{i}"), Epoch::FIRST))
            .collect();
        for (id, _) in many.iter().step_by(2) {
            a.create(&snapshot(id)).await.unwrap();
        }
        let found = a.refresh(&many).await.unwrap();
        assert!(found.moved.is_empty());
        assert_eq!(found.missing.len(), many.len() / 2);
        assert!(found
            .missing
            .iter()
            .all(|id| id[1..].parse::<usize>().unwrap() % 2 == 1));
        assert_eq!(a.refresh(&[]).await.unwrap(), Refreshed::default());
    }

    #[tokio::test]
    async fn an_orphaned_record_expires_after_its_ttl() {
        let Some(t) = TestPrefix::new("records-ttl").await else {
            return;
        };
        let ttl = Duration::from_millis(400);
        let a = records(&t, "a", ttl).await;
        let b = records(&t, "b", ttl).await;
        a.create(&snapshot("orphan")).await.unwrap();
        a.create(&snapshot("kept")).await.unwrap();
        // a keeps refreshing one of them, then dies; nobody resumes either.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let found = a.refresh(&[("kept".to_string(), Epoch::FIRST)]).await.unwrap();
            assert_eq!(found, Refreshed::default());
        }
        assert_eq!(b.load("orphan").await.unwrap(), None, "600 ms without a refresh: gone");
        assert!(b.load("kept").await.unwrap().is_some(), "refreshed: still there");
        assert_eq!(b.take_over("orphan", "a", Epoch::FIRST).await.unwrap(), TakeOver::Gone);
        tokio::time::sleep(ttl + Duration::from_millis(200)).await;
        assert_eq!(b.load("kept").await.unwrap(), None);
        assert_eq!(t.clear(), 0, "nothing is left behind in Redis");
    }

    #[tokio::test]
    async fn owner_alive_follows_the_node_heartbeat_key() {
        use super::super::nodes::{NodeInfo, Nodes};
        use crate::config::ClusterConfig;

        let Some(t) = TestPrefix::new("records-alive").await else {
            return;
        };
        let mut cluster = ClusterConfig::new("a", URL, "ca.pem".into(), "ca.key".into());
        cluster.key_prefix = t.prefix.clone();
        cluster.heartbeat = Duration::from_millis(100);
        cluster.node_ttl = Duration::from_millis(400);
        let info = NodeInfo {
            name: "a".into(),
            quic: "127.0.0.1:7616".parse().unwrap(),
            relay: vec!["127.0.0.1:7615".parse().unwrap()],
            admin: None,
        };
        let b = records(&t, "b", TTL).await;
        assert!(!b.owner_alive("a").await.unwrap(), "not joined yet");

        let a = Nodes::join(t.redis(Duration::from_secs(5)).await, &cluster, info.clone())
            .await
            .unwrap();
        assert!(b.owner_alive("a").await.unwrap());
        assert!(!b.owner_alive("c").await.unwrap());
        let a_records = records(&t, "a", TTL).await;
        a_records.create(&snapshot("s1")).await.unwrap();
        a_records.create(&snapshot("s2")).await.unwrap();
        assert_eq!(
            b.take_over_if_owner_gone("s1", "a", Epoch::FIRST).await.unwrap(),
            None,
            "a is alive: its session stays a's"
        );
        assert_eq!(b.load("s1").await.unwrap().unwrap().owner, "a");

        // Silent (frozen or dead) for longer than node_ttl: gone.
        tokio::time::sleep(cluster.node_ttl + Duration::from_millis(200)).await;
        assert!(!b.owner_alive("a").await.unwrap());
        assert!(matches!(
            b.take_over_if_owner_gone("s1", "a", Epoch::FIRST).await.unwrap(),
            Some(TakeOver::Taken { epoch, .. }) if epoch == Epoch::new(2)
        ));
        // Its heartbeat brings it back (a frozen node waking up)...
        a.heartbeat().await.unwrap();
        assert!(b.owner_alive("a").await.unwrap());
        assert_eq!(b.take_over_if_owner_gone("s2", "a", Epoch::FIRST).await.unwrap(), None);
        assert_eq!(
            a_records
                .refresh(&[("s1".into(), Epoch::FIRST), ("s2".into(), Epoch::FIRST)])
                .await
                .unwrap()
                .moved,
            vec!["s1".to_string()],
            "the woken node learns which session moved while it slept"
        );
        // ...and leaving removes it at once.
        a.leave().await.unwrap();
        assert!(!b.owner_alive("a").await.unwrap());
    }
}
