//! What makes several relay nodes one relay (see docs/grid.md): the shared Redis state
//! (codes, node membership, throttles), the QUIC links between nodes that bridge a client
//! who landed on one node to the session on another, and the cluster CA those links
//! authenticate with. None of it is used by a single node, which keeps running on its
//! in-memory directory.

pub mod throttle;
