//! What makes several relay nodes one relay (see docs/grid.md): the shared Redis state
//! (codes, node membership, throttles), the QUIC links between nodes that bridge a client
//! who landed on one node to the session on another, and the cluster CA those links
//! authenticate with. None of it is used by a single node, which keeps running on its
//! in-memory directory.
//!
//! * [`kv`]: the cheaply cloned Redis handle (prefix, per-call timeout, one error type).
//! * [`directory`]: [`directory::RedisDirectory`], the grid's code directory in Redis, and
//!   how it recovers when Redis restarts empty.
//! * [`nodes`]: node membership (heartbeats with a TTL) and the heartbeat task.
//! * [`bridge`] and [`pki`]: the QUIC links between nodes and the cluster CA.
//! * [`hints`]: "end this session", "this account changed", over Redis pub/sub.
//! * [`throttle`]: guessing protection (codes, logins) counted grid-wide.
//! * [`live`]: every node's live sessions, for the consoles of the others.
//! * [`fence`]: whether this node may still forward (its heartbeat key is surely alive).
//! * [`records`]: each session's record (snapshot, owner node, epoch), so a session outlives
//!   its node: another node takes it over with a higher epoch and the old one is fenced off.

use std::sync::Arc;

pub mod bridge;
pub mod directory;
pub mod fence;
pub mod hints;
pub mod kv;
pub mod live;
pub mod nodes;
pub mod pki;
pub mod records;
pub mod throttle;

/// This node's grid parts, as the relay's shared state holds them.
pub struct GridNode {
    name: String,
    redis: kv::Redis,
    nodes: Arc<nodes::Nodes>,
    bridge: bridge::Bridge,
    records: Arc<records::SessionRecords>,
    fence: Arc<fence::Fence>,
}

impl GridNode {
    pub fn new(
        name: String,
        redis: kv::Redis,
        nodes: Arc<nodes::Nodes>,
        bridge: bridge::Bridge,
        records: Arc<records::SessionRecords>,
        fence: Arc<fence::Fence>,
    ) -> Self {
        Self {
            name,
            redis,
            nodes,
            bridge,
            records,
            fence,
        }
    }

    /// The grid's session records, as this node writes them.
    pub fn records(&self) -> &Arc<records::SessionRecords> {
        &self.records
    }

    /// Whether this node may still forward.
    pub fn fence(&self) -> &Arc<fence::Fence> {
        &self.fence
    }

    /// The grid's Redis.
    pub fn redis(&self) -> &kv::Redis {
        &self.redis
    }

    /// This node's name in the grid.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The grid's members, as Redis knows them.
    pub fn nodes(&self) -> &nodes::Nodes {
        &self.nodes
    }

    /// The QUIC links to other nodes.
    pub fn bridge(&self) -> &bridge::Bridge {
        &self.bridge
    }
}
