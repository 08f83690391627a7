//! The grid's handle on its shared Redis: one multiplexed connection that reconnects by
//! itself (redis's `ConnectionManager`), the grid's key prefix, and the per-call timeout.
//!
//! Every call goes through [`Redis::run`] (a command), [`Redis::run_pipe`] (a pipeline) or
//! [`Redis::run_script`] (a Lua script, loaded again by itself when a restarted Redis has
//! forgotten it), each under `cluster.redis_timeout`: a call while Redis is down or slow
//! fails within that time instead of hanging the request it serves, and every failure
//! (refused, dropped, timed out, an error reply) becomes one [`GridError::Unavailable`]
//! whose text names what was attempted and why it failed, never the Redis URL (it may
//! carry a password) nor a key (keys hold session codes).
//!
//! The handle is cheap to clone: clones share the connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, Pipeline, RedisError, Script, ScriptInvocation};

use crate::config::ClusterConfig;

/// Why the grid's shared state could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GridError {
    /// Redis is unreachable, too slow, or answered with an error. The text says what was
    /// attempted and why it failed; it never holds the Redis URL or a key.
    #[error("the grid's Redis is unavailable: {0}")]
    Unavailable(String),
    /// The cluster settings cannot work (a Redis URL that does not parse).
    #[error("invalid cluster setting: {0}")]
    Config(String),
    /// Another process is alive in the grid under this node's name: two nodes with one
    /// name would answer for each other's sessions.
    #[error(
        "a node named {node:?} is already alive in the grid (another process); give this node another \
         cluster.node, or wait cluster.node_ttl if that node has just stopped"
    )]
    NameTaken { node: String },
}

/// How many times the connection manager redials before a call fails; each later call
/// starts a fresh round. Small, because every call is bounded by `redis_timeout` anyway and
/// a quick fresh round is what brings a restarted Redis back promptly.
const RECONNECT_RETRIES: usize = 2;
/// The first redial waits about this long (jittered, doubling): enough not to spin on a
/// refused port.
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(50);
/// No redial waits longer than this, so a Redis that is back is found within about this.
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);

/// A cheaply cloned handle on the grid's Redis: the connection, the key prefix and the
/// per-call timeout.
#[derive(Clone)]
pub struct Redis {
    conn: ConnectionManager,
    prefix: Arc<str>,
    timeout: Duration,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection's own Debug names the server (and may show credentials): left out.
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// Connects to `cluster.redis_url` and checks that Redis answers, within
    /// `cluster.redis_timeout`: an unreachable Redis at start is an error that says so.
    pub async fn connect(cluster: &ClusterConfig) -> Result<Self, GridError> {
        Self::connect_to(&cluster.redis_url, &cluster.key_prefix, cluster.redis_timeout).await
    }

    /// [`Redis::connect`] from its parts (tests, tools).
    pub async fn connect_to(url: &str, prefix: &str, timeout: Duration) -> Result<Self, GridError> {
        // The parse error would echo the URL: say only which setting is wrong.
        let client = redis::Client::open(url)
            .map_err(|_| GridError::Config("cluster.redis_url is not a valid Redis URL".into()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_min_delay(RECONNECT_MIN_DELAY)
            .set_max_delay(RECONNECT_MAX_DELAY);
        let conn = match tokio::time::timeout(timeout, ConnectionManager::new_with_config(client, config)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(unavailable("connecting at start", &e)),
            Err(_) => return Err(timed_out("connecting at start", timeout)),
        };
        let redis = Self {
            conn,
            prefix: prefix.into(),
            timeout,
        };
        redis.ping().await?;
        Ok(redis)
    }

    /// The full key for `suffix`: the grid's prefix in front.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// The grid's key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The longest any one call may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// One `PING`: how long Redis took to answer (for `/readyz` and the latency metric).
    pub async fn ping(&self) -> Result<Duration, GridError> {
        let started = Instant::now();
        let pong: String = self.run("PING", &redis::cmd("PING")).await?;
        if pong != "PONG" {
            return Err(GridError::Unavailable("PING got an unexpected answer".into()));
        }
        Ok(started.elapsed())
    }

    /// Runs one command under the timeout; `what` names it in the error.
    pub async fn run<T: FromRedisValue>(&self, what: &'static str, cmd: &Cmd) -> Result<T, GridError> {
        let mut conn = self.conn.clone();
        self.bounded(what, async move { cmd.query_async(&mut conn).await })
            .await
    }

    /// Runs a pipeline under the timeout (the whole pipeline, not each command).
    pub async fn run_pipe<T: FromRedisValue>(&self, what: &'static str, pipe: &Pipeline) -> Result<T, GridError> {
        let mut conn = self.conn.clone();
        self.bounded(what, async move { pipe.query_async(&mut conn).await })
            .await
    }

    /// Runs a prepared script under the timeout, loading it first if Redis does not know it
    /// (after a restart).
    pub async fn run_script<T: FromRedisValue>(
        &self,
        what: &'static str,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, GridError> {
        let mut conn = self.conn.clone();
        self.bounded(what, async move { invocation.invoke_async(&mut conn).await })
            .await
    }

    /// Runs a script without keys or arguments under the timeout.
    pub async fn run_bare_script<T: FromRedisValue>(
        &self,
        what: &'static str,
        script: &Script,
    ) -> Result<T, GridError> {
        self.run_script(what, &script.prepare_invoke()).await
    }

    async fn bounded<T>(
        &self,
        what: &'static str,
        call: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, GridError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                let err = unavailable(what, &e);
                tracing::debug!(call = what, error = %err, "Redis call failed");
                Err(err)
            }
            Err(_) => {
                tracing::debug!(call = what, timeout = ?self.timeout, "Redis call timed out");
                Err(timed_out(what, self.timeout))
            }
        }
    }
}

fn timed_out(what: &str, timeout: Duration) -> GridError {
    GridError::Unavailable(format!("{what}: no answer within {timeout:?}"))
}

/// What went wrong, in words that hold neither the URL nor a key: the error's category, and
/// for an error reply the server's own message (which never quotes arguments).
fn unavailable(what: &str, e: &RedisError) -> GridError {
    let why = if e.is_connection_refusal() {
        "connection refused".to_string()
    } else if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connection_dropped() {
        "connection lost".to_string()
    } else if let (redis::ErrorKind::Server(_), Some(code)) = (e.kind(), e.code()) {
        format!("{code} {}", e.detail().unwrap_or_default())
    } else {
        e.category().to_string()
    };
    GridError::Unavailable(format!("{what}: {why}"))
}

/// What the grid's tests share: the real Redis, a key prefix of their own that is deleted
/// afterwards (even when the test panics), and a throwaway `redis-server` to kill.
#[cfg(test)]
pub(crate) mod test_redis {
    use super::*;
    use std::net::TcpListener;
    use std::process::{Child, Command, Stdio};

    /// The shared Redis the tests use (the one `.ci/run` starts).
    pub const URL: &str = "redis://127.0.0.1:6379";

    /// A test's own key prefix on the shared Redis; its keys are deleted on drop.
    pub struct TestPrefix {
        pub prefix: String,
    }

    impl TestPrefix {
        /// A fresh `t:<hex>:` prefix, or `None` (after saying why) when Redis is not
        /// reachable and `TSUNAGU_REQUIRE_REDIS` is unset. With it set, no Redis is a failure.
        pub async fn new(what: &str) -> Option<Self> {
            let reachable = Redis::connect_to(URL, "t:", Duration::from_secs(2)).await;
            if let Err(e) = reachable {
                assert!(
                    std::env::var_os("TSUNAGU_REQUIRE_REDIS").is_none(),
                    "TSUNAGU_REQUIRE_REDIS is set but Redis at {URL} is unreachable: {e}"
                );
                eprintln!("Redis at {URL} is unreachable ({e}); skipping the Redis {what} test");
                return None;
            }
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).expect("the OS random source works in tests");
            Some(Self {
                prefix: format!("t:{}:", crate::hex::hex(&b)),
            })
        }

        /// A handle with this prefix and `timeout`.
        pub async fn redis(&self, timeout: Duration) -> Redis {
            Redis::connect_to(URL, &self.prefix, timeout)
                .await
                .expect("the test Redis was reachable a moment ago")
        }

        /// Deletes every key under the prefix; returns how many there were.
        pub fn clear(&self) -> usize {
            let client = redis::Client::open(URL).expect("literal URL");
            let mut conn = client
                .get_connection_with_timeout(Duration::from_secs(5))
                .expect("the test Redis is reachable for clean-up");
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}*", self.prefix))
                .query(&mut conn)
                .expect("KEYS on the test prefix");
            for chunk in keys.chunks(1000) {
                let _: usize = redis::cmd("DEL")
                    .arg(chunk)
                    .query(&mut conn)
                    .expect("DEL the test's keys");
            }
            keys.len()
        }
    }

    impl Drop for TestPrefix {
        fn drop(&mut self) {
            // Synchronous on purpose: it also runs while a failed test unwinds.
            self.clear();
        }
    }

    /// A `redis-server` of the test's own on a free loopback port, without persistence,
    /// that the test can kill with SIGKILL and start again on the same port.
    pub struct OwnServer {
        pub port: u16,
        child: Option<Child>,
    }

    impl OwnServer {
        /// Starts one; `None` when `redis-server` is not installed and Redis is not required.
        pub async fn start() -> Option<Self> {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port();
            let mut server = Self { port, child: None };
            if !server.restart().await {
                assert!(
                    std::env::var_os("TSUNAGU_REQUIRE_REDIS").is_none(),
                    "TSUNAGU_REQUIRE_REDIS is set but redis-server cannot be run"
                );
                eprintln!("redis-server cannot be run; skipping");
                return None;
            }
            Some(server)
        }

        pub fn url(&self) -> String {
            format!("redis://127.0.0.1:{}", self.port)
        }

        /// Starts the server (again) on its port and waits until it answers.
        pub async fn restart(&mut self) -> bool {
            let child = Command::new("redis-server")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let Ok(child) = child else { return false };
            self.child = Some(child);
            // A loaded machine may take a while to start it: up to 10 s.
            for _ in 0..200 {
                if Redis::connect_to(&self.url(), "t:", Duration::from_millis(500))
                    .await
                    .is_ok()
                {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("redis-server on port {} did not answer within 10 s", self.port);
        }

        /// SIGKILL: the server vanishes without closing anything politely.
        pub fn kill(&mut self) {
            if let Some(mut child) = self.child.take() {
                child.kill().expect("the test's own redis-server can be killed");
                child.wait().expect("the killed redis-server is reaped");
            }
        }
    }

    impl Drop for OwnServer {
        fn drop(&mut self) {
            self.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_redis::*;
    use super::*;

    #[tokio::test]
    async fn a_handle_pings_and_prefixes_its_keys() {
        let Some(t) = TestPrefix::new("kv").await else { return };
        let redis = t.redis(Duration::from_secs(2)).await;
        let rtt = redis.ping().await.unwrap();
        assert!(rtt < Duration::from_secs(2));
        let key = redis.key("probe");
        assert_eq!(key, format!("{}probe", t.prefix));
        let _: () = redis
            .run("SET", redis::cmd("SET").arg(&key).arg("v").arg("PX").arg(60_000))
            .await
            .unwrap();
        let clone = redis.clone();
        let got: Option<String> = clone.run("GET", redis::cmd("GET").arg(&key)).await.unwrap();
        assert_eq!(got.as_deref(), Some("v"));
        assert_eq!(t.clear(), 1, "the key sits under the test's prefix");
    }

    #[tokio::test]
    async fn connecting_where_nothing_listens_fails_fast_and_shows_no_password() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let url = format!("redis://:hunter2secret@127.0.0.1:{port}");
        let started = Instant::now();
        let err = Redis::connect_to(&url, "t:", Duration::from_millis(500))
            .await
            .unwrap_err();
        // Generous for a loaded machine: the bound is the timeout, not this.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        let text = err.to_string();
        assert!(matches!(err, GridError::Unavailable(_)), "{text}");
        assert!(
            !text.contains("hunter2secret") && !text.contains(&port.to_string()),
            "{text}"
        );
        assert!(text.contains("connecting at start"), "{text}");

        let bad = Redis::connect_to("redis://:pw@[nonsense", "t:", Duration::from_millis(500)).await;
        assert!(
            matches!(bad, Err(GridError::Config(ref m)) if !m.contains("pw")),
            "{bad:?}"
        );
    }

    #[tokio::test]
    async fn calls_fail_within_the_timeout_while_redis_is_down_and_work_again_when_it_is_back() {
        let Some(mut server) = OwnServer::start().await else {
            return;
        };
        let timeout = Duration::from_millis(500);
        let redis = Redis::connect_to(&server.url(), "t:", timeout).await.unwrap();
        redis.ping().await.unwrap();

        server.kill();
        for _ in 0..5 {
            let started = Instant::now();
            let err = redis.ping().await.unwrap_err();
            assert!(matches!(err, GridError::Unavailable(_)), "{err}");
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "took {:?}",
                started.elapsed()
            );
            // Many calls at once fail just as fast: nothing queues behind a dead connection.
            let started = Instant::now();
            let burst: Vec<_> = (0..50)
                .map(|_| {
                    let r = redis.clone();
                    tokio::spawn(async move { r.ping().await })
                })
                .collect();
            for call in burst {
                assert!(call.await.unwrap().is_err());
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "took {:?}",
                started.elapsed()
            );
        }

        assert!(server.restart().await);
        // The handle reconnects by itself: within a few seconds calls work again.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match redis.ping().await {
                Ok(_) => break,
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("Redis is back but the handle still fails: {e}"),
            }
        }
        let _: () = redis.run("SET", redis::cmd("SET").arg("t:k").arg(1)).await.unwrap();
    }
}
