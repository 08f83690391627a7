//! Who is in the grid: each node's [`NodeInfo`] in Redis under a TTL that its heartbeats
//! renew, so a node that stops (crash, network cut) disappears after `cluster.node_ttl`.
//!
//! # Keys (under the grid's `key_prefix`)
//! * `node:<name>`: the process's instance id (random, drawn at start), a newline, then the
//!   node's [`NodeInfo`] as JSON; expires `node_ttl` after the last heartbeat.
//! * `nodes`: a sorted set of names, scored by their last heartbeat (Redis clock), so
//!   [`Nodes::list`] reads the members without scanning the keyspace; names silent for
//!   longer than `node_ttl` are pruned by every heartbeat.
//!
//! A name belongs to one process at a time: joining under a name whose key holds another
//! instance id is refused ([`GridError::NameTaken`]), since two nodes with one name would
//! answer for each other's sessions. A heartbeat that finds its name taken over (this node
//! stalled past `node_ttl` and another process took the name) reports the same error.
//!
//! [`spawn_heartbeat`] runs a node's heartbeat every `cluster.heartbeat`, re-asserting the
//! node's live codes with it (see [`super::directory`]), until the relay's stop signal;
//! then it removes the node's key, so the others see it gone at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::directory::RedisDirectory;
use super::kv::{GridError, Redis};
use crate::config::ClusterConfig;
use crate::shutdown::Shutdown;

/// What the grid knows of one node: where other nodes, endpoints and admins reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's name (`cluster.node`).
    pub name: String,
    /// Where other nodes reach its QUIC listener (`cluster.quic_advertise`).
    pub quic: SocketAddr,
    /// Its relay listeners, as bound.
    pub relay: Vec<SocketAddr>,
    /// Its admin console, when it serves one.
    pub admin: Option<SocketAddr>,
}

/// KEYS: node key, members set. ARGV: instance id, stored value, ttl ms, name. Returns
/// `"ok"`, or `"taken"` when another instance holds the name.
const HEARTBEAT_LUA: &str = r#"
local held = redis.call('GET', KEYS[1])
if held and string.match(held, '^([^\n]*)\n') ~= ARGV[1] then return 'taken' end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
redis.call('ZADD', KEYS[2], now, ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('%d', now - ttl))
redis.call('PEXPIRE', KEYS[2], ttl)
return 'ok'
"#;

/// KEYS: node key, members set. ARGV: instance id, name. Removes the node if this instance
/// holds it.
const LEAVE_LUA: &str = r#"
local held = redis.call('GET', KEYS[1])
if held and string.match(held, '^([^\n]*)\n') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[2])
  return 1
end
return 0
"#;

/// This node's membership of the grid, and the view of the others.
pub struct Nodes {
    redis: Redis,
    info: NodeInfo,
    /// Random per process: tells this process's heartbeats from another's under one name.
    instance: String,
    heartbeat: Duration,
    node_ttl: Duration,
    heartbeat_script: Script,
    leave_script: Script,
}

impl std::fmt::Debug for Nodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nodes")
            .field("info", &self.info)
            .field("heartbeat", &self.heartbeat)
            .field("node_ttl", &self.node_ttl)
            .finish_non_exhaustive()
    }
}

impl Nodes {
    /// Joins the grid as `info` (its name is `cluster.node`) with a first heartbeat. A node
    /// of that name alive under another process is [`GridError::NameTaken`].
    pub async fn join(redis: Redis, cluster: &ClusterConfig, info: NodeInfo) -> Result<Self, GridError> {
        if info.name != cluster.node {
            return Err(GridError::Config(format!(
                "the node's info names {:?} but cluster.node is {:?}",
                info.name, cluster.node
            )));
        }
        let mut id = [0u8; 16];
        getrandom::fill(&mut id)
            .map_err(|e| GridError::Config(format!("no OS randomness for the instance id: {e}")))?;
        let nodes = Self {
            redis,
            info,
            instance: crate::hex::hex(&id),
            heartbeat: cluster.heartbeat,
            node_ttl: cluster.node_ttl,
            heartbeat_script: Script::new(HEARTBEAT_LUA),
            leave_script: Script::new(LEAVE_LUA),
        };
        nodes.heartbeat().await?;
        tracing::info!(node = %nodes.info.name, quic = %nodes.info.quic, "joined the grid");
        Ok(nodes)
    }

    /// This node's info.
    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    /// How often [`spawn_heartbeat`] beats.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat
    }

    fn node_key(&self, name: &str) -> String {
        self.redis.key(&format!("node:{name}"))
    }

    fn members_key(&self) -> String {
        self.redis.key("nodes")
    }

    /// Tells the grid this node is alive for another `node_ttl` (and re-creates its entry
    /// if Redis lost it).
    pub async fn heartbeat(&self) -> Result<(), GridError> {
        let info = serde_json::to_string(&self.info)
            .map_err(|e| GridError::Config(format!("the node's info cannot be encoded: {e}")))?;
        let answer: String = self
            .redis
            .run_script(
                "node heartbeat",
                self.heartbeat_script
                    .key(self.node_key(&self.info.name))
                    .key(self.members_key())
                    .arg(&self.instance)
                    .arg(format!("{}\n{info}", self.instance))
                    .arg(u64::try_from(self.node_ttl.as_millis()).unwrap_or(u64::MAX))
                    .arg(&self.info.name),
            )
            .await?;
        match answer.as_str() {
            "ok" => Ok(()),
            _ => Err(GridError::NameTaken {
                node: self.info.name.clone(),
            }),
        }
    }

    /// Leaves the grid at once (the others see this node gone without waiting `node_ttl`).
    pub async fn leave(&self) -> Result<(), GridError> {
        let _: i64 = self
            .redis
            .run_script(
                "leaving the grid",
                self.leave_script
                    .key(self.node_key(&self.info.name))
                    .key(self.members_key())
                    .arg(&self.instance)
                    .arg(&self.info.name),
            )
            .await?;
        Ok(())
    }

    /// The live node called `name`, if any.
    pub async fn get(&self, name: &str) -> Result<Option<NodeInfo>, GridError> {
        let value: Option<String> = self
            .redis
            .run("reading a node", redis::cmd("GET").arg(self.node_key(name)))
            .await?;
        Ok(value.as_deref().and_then(decode))
    }

    /// Every live node, by name (this one included while its heartbeats land).
    pub async fn list(&self) -> Result<Vec<NodeInfo>, GridError> {
        let names: Vec<String> = self
            .redis
            .run(
                "listing nodes",
                redis::cmd("ZRANGE").arg(self.members_key()).arg(0).arg(-1),
            )
            .await?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = names.iter().map(|n| self.node_key(n)).collect();
        let values: Vec<Option<String>> = self.redis.run("reading nodes", redis::cmd("MGET").arg(keys)).await?;
        // A name whose key has expired is a node that stopped: left out.
        let mut nodes: Vec<NodeInfo> = values.iter().flatten().filter_map(|v| decode(v)).collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(nodes)
    }
}

fn decode(value: &str) -> Option<NodeInfo> {
    let (_, json) = value.split_once('\n')?;
    serde_json::from_str(json).ok()
}

/// Whether a node whose heartbeat key still lives is surely gone: every one of its relay
/// ports refuses a TCP connection at once (its process died; its host answers for it).
/// A node that is frozen or cut off still looks alive here (its ports accept, or do not
/// answer), and is waited out by its heartbeat key instead.
pub async fn surely_dead(info: &NodeInfo) -> bool {
    /// Long enough for a refusal on a LAN, short enough for a resume to wait.
    const PROBE: Duration = Duration::from_millis(300);
    if info.relay.is_empty() {
        return false;
    }
    for bound in &info.relay {
        // A listener on every address is reached at the address other nodes know it by.
        let addr = if bound.ip().is_unspecified() {
            SocketAddr::new(info.quic.ip(), bound.port())
        } else {
            *bound
        };
        match tokio::time::timeout(PROBE, tokio::net::TcpStream::connect(addr)).await {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            _ => return false,
        }
    }
    true
}

/// What runs after each successful heartbeat, given the moment the beat began: a node's
/// sessions are checked against their records and its fence renewed (see `server.rs`).
pub type OnBeat =
    Arc<dyn Fn(std::time::Instant) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

/// Runs this node's heartbeat every `cluster.heartbeat` until `shutdown`: it renews the
/// node's membership and, with `directory`, re-asserts the node's live codes, then runs
/// `on_beat`. A failed beat is logged and the next one tries again (each is bounded by
/// `redis_timeout`). At the stop signal the node leaves the grid.
pub fn spawn_heartbeat(
    nodes: Arc<Nodes>,
    directory: Option<Arc<RedisDirectory>>,
    on_beat: Option<OnBeat>,
    mut shutdown: Shutdown,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(nodes.heartbeat);
        // A late beat (Redis slow) is followed by the next one a full interval later, not a
        // burst of catch-up beats.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.recv() => break,
                _ = tick.tick() => {}
            }
            let began = crate::clock::now();
            match nodes.heartbeat().await {
                Ok(()) => {
                    if let Some(on_beat) = &on_beat {
                        on_beat(began).await;
                    }
                }
                Err(e @ GridError::NameTaken { .. }) => {
                    tracing::error!(node = %nodes.info.name, error = %e, "this node's name was taken over")
                }
                Err(e) => tracing::warn!(node = %nodes.info.name, error = %e, "heartbeat failed"),
            }
            if let Some(directory) = &directory {
                if let Err(e) = directory.reassert().await {
                    tracing::warn!(node = %nodes.info.name, error = %e, "could not re-assert live codes");
                }
            }
        }
        if let Err(e) = nodes.leave().await {
            tracing::warn!(node = %nodes.info.name, error = %e, "could not leave the grid; it expires by itself");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::kv::test_redis::{TestPrefix, URL};
    use super::*;
    use crate::directory::{CodeState, Directory, IssueError, SessionRef};
    use crate::shutdown::Stopper;
    use std::time::Instant;

    const HEARTBEAT: Duration = Duration::from_millis(100);
    const NODE_TTL: Duration = Duration::from_millis(400);

    fn cluster(node: &str, prefix: &str) -> ClusterConfig {
        let mut c = ClusterConfig::new(node, URL, "ca.pem".into(), "ca.key".into());
        c.key_prefix = prefix.to_string();
        c.heartbeat = HEARTBEAT;
        c.node_ttl = NODE_TTL;
        c
    }

    fn info(name: &str, port: u16) -> NodeInfo {
        NodeInfo {
            name: name.to_string(),
            quic: SocketAddr::from(([127, 0, 0, 1], port)),
            relay: vec![SocketAddr::from(([127, 0, 0, 1], port + 1))],
            admin: port
                .is_multiple_of(2)
                .then(|| SocketAddr::from(([127, 0, 0, 1], port + 2))),
        }
    }

    async fn join(t: &TestPrefix, name: &str, port: u16) -> Result<Nodes, GridError> {
        Nodes::join(
            t.redis(Duration::from_secs(5)).await,
            &cluster(name, &t.prefix),
            info(name, port),
        )
        .await
    }

    #[tokio::test]
    async fn nodes_heartbeat_list_and_a_silent_node_disappears_after_node_ttl() {
        let Some(t) = TestPrefix::new("nodes").await else {
            return;
        };
        let stopper = Stopper::new();
        let a = Arc::new(join(&t, "a", 7000).await.unwrap());
        let b = Arc::new(join(&t, "b", 7010).await.unwrap());
        let c = join(&t, "c", 7021).await.unwrap();
        assert_eq!(
            a.list().await.unwrap(),
            vec![info("a", 7000), info("b", 7010), info("c", 7021)]
        );
        assert_eq!(c.get("b").await.unwrap(), Some(info("b", 7010)));
        assert_eq!(c.get("nobody").await.unwrap(), None);

        // a and b keep beating; c falls silent (as if it crashed).
        let beating = [
            spawn_heartbeat(a.clone(), None, None, stopper.listener()),
            spawn_heartbeat(b.clone(), None, None, stopper.listener()),
        ];
        let silent_since = Instant::now();
        tokio::time::sleep(NODE_TTL + Duration::from_millis(300)).await;
        let alive = a.list().await.unwrap();
        assert_eq!(
            alive.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"],
            "c is gone {:?} after its last heartbeat; a and b, beating, are not",
            silent_since.elapsed()
        );
        assert_eq!(a.get("c").await.unwrap(), None);

        // A stopping node leaves at once.
        stopper.signal();
        for task in beating {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .unwrap()
                .unwrap();
        }
        assert_eq!(c.list().await.unwrap(), Vec::new());
        // c comes back (restarted), under its name, once the old entry is gone.
        let c2 = join(&t, "c", 7031).await.unwrap();
        assert_eq!(c2.list().await.unwrap(), vec![info("c", 7031)]);
    }

    #[tokio::test]
    async fn a_name_alive_under_another_process_is_refused() {
        let Some(t) = TestPrefix::new("nodes-dup").await else {
            return;
        };
        let first = join(&t, "a", 7000).await.unwrap();
        let err = join(&t, "a", 7100).await.unwrap_err();
        assert_eq!(err, GridError::NameTaken { node: "a".into() });
        assert!(err.to_string().contains("already alive"), "{err}");
        // The first keeps its name and its address.
        first.heartbeat().await.unwrap();
        assert_eq!(first.get("a").await.unwrap(), Some(info("a", 7000)));
        // Once it is gone (no heartbeat for node_ttl), the name is free again.
        tokio::time::sleep(NODE_TTL + Duration::from_millis(200)).await;
        let second = join(&t, "a", 7100).await.unwrap();
        assert_eq!(second.list().await.unwrap(), vec![info("a", 7100)]);
        // And the old process's next heartbeat finds its name taken over.
        assert_eq!(first.heartbeat().await, Err(GridError::NameTaken { node: "a".into() }));
    }

    #[tokio::test]
    async fn the_heartbeat_task_brings_back_membership_and_codes_after_redis_loses_them() {
        let Some(t) = TestPrefix::new("nodes-flush").await else {
            return;
        };
        let stopper = Stopper::new();
        let redis = t.redis(Duration::from_secs(5)).await;
        let config = cluster("a", &t.prefix);
        let dir = Arc::new(RedisDirectory::new(
            redis.clone(),
            &config,
            Duration::from_secs(600),
            Duration::from_secs(600),
        ));
        let nodes = Arc::new(Nodes::join(redis, &config, info("a", 7000)).await.unwrap());
        let task = spawn_heartbeat(nodes.clone(), Some(dir.clone()), None, stopper.listener());
        let session = SessionRef {
            session_id: "s1".into(),
            node: None,
        };
        let give_up = Instant::now() + Duration::from_secs(20);
        let code = loop {
            match dir.issue(session.clone()).await {
                Ok(code) => break code,
                Err(IssueError::Unavailable(_)) if Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("{e}"),
            }
        };

        assert!(t.clear() > 0, "Redis loses the grid's state");
        let back = Instant::now() + Duration::from_secs(20);
        loop {
            let listed = dir.lookup("s1").await;
            let members = nodes.list().await.unwrap_or_default();
            if listed.is_some() && !members.is_empty() {
                assert_eq!(listed.map(|l| (l.code, l.state)), Some((code, CodeState::Live)));
                assert_eq!(members, vec![info("a", 7000)]);
                break;
            }
            assert!(Instant::now() < back, "the heartbeat did not bring the state back");
            tokio::time::sleep(HEARTBEAT / 2).await;
        }

        stopper.signal();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(nodes.get("a").await.unwrap(), None, "left the grid at the stop signal");
    }
}
