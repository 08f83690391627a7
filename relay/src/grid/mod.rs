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

pub mod directory;
pub mod kv;
pub mod nodes;
