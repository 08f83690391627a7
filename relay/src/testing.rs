//! What the relay's own tests and the workspace's end-to-end tests share: the PostgreSQL
//! and Redis servers CI provides, and the audit-trail rewrite an insider without the key
//! could do. Built for `cargo test` and with the `test-support` feature only, never into
//! the relay.

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::audit::{row_hash, GENESIS, KEYED_PREFIX};
use crate::config::Config;
use crate::keys::{KeyFiles, Keys, MayCreate};
use crate::store::Store;

/// The keys of a data dir `dir`, created there if missing (the audit trail is keyed with
/// them, TOTP secrets sealed).
pub fn keys(dir: &std::path::Path) -> std::sync::Arc<Keys> {
    let all = MayCreate {
        secrets: true,
        audit: true,
        signing: true,
    };
    std::sync::Arc::new(Keys::load(&KeyFiles::in_data_dir(dir), all).expect("the test's keys"))
}

/// A SQLite store in `dir` with that dir's keys, as the relay opens it.
pub async fn keyed_store(dir: &std::path::Path) -> Store {
    let store = Store::open(&dir.join("relay.db")).await.expect("the test's store");
    store.with_keys(keys(dir)).await.expect("the test's keys on its store")
}

/// A schema of its own on the PostgreSQL server named by `TSUNAGU_TEST_POSTGRES` (the one
/// `.ci/run` starts), so tests running at the same time do not see each other's rows.
#[derive(Debug, Clone)]
pub struct TestPostgres {
    pub url: String,
    pub schema: String,
}

impl TestPostgres {
    /// The server and a schema `t_{what}_{pid}`; `None` when `TSUNAGU_TEST_POSTGRES` is not
    /// set, after saying that the PostgreSQL `what` test is skipped. CI must set it.
    pub fn from_env(what: &str) -> Option<Self> {
        let Ok(url) = std::env::var("TSUNAGU_TEST_POSTGRES") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must provide PostgreSQL (.ci/run starts it)"
            );
            eprintln!("TSUNAGU_TEST_POSTGRES is not set; skipping the PostgreSQL {what} test");
            return None;
        };
        let schema = format!("t_{what}_{}", std::process::id());
        Some(Self { url, schema })
    }

    /// Points a relay's store at this schema.
    pub fn configure(&self, config: &mut Config) {
        config.database.url = Some(self.url.clone());
        config.database.schema = Some(self.schema.clone());
    }

    /// Opens the store in this schema, running the migrations.
    pub async fn open(&self) -> Store {
        Store::open_postgres(&self.url, Some(&self.schema))
            .await
            .expect("test PostgreSQL (TSUNAGU_TEST_POSTGRES) reachable and the schema creatable")
    }

    /// Drops the schema and everything in it.
    pub async fn drop_schema(self) {
        Store::drop_postgres_schema(&self.url, &self.schema)
            .await
            .expect("the test's own PostgreSQL schema can be dropped");
    }
}

/// A key prefix of its own (`t:` and 16 random hex digits) on the Redis every test machine
/// runs at 127.0.0.1:6379 (`.ci/run` starts it), so tests running at the same time do not
/// see each other's keys. Every key under the prefix is deleted when this is dropped,
/// whether the test passed or not.
#[derive(Debug)]
pub struct TestRedis {
    pub url: String,
    pub prefix: String,
}

impl TestRedis {
    /// The longest a test waits on its Redis: generous for a busy machine.
    pub const TIMEOUT: Duration = Duration::from_secs(5);

    /// The test Redis and a fresh prefix; `None` when Redis does not answer, after saying
    /// that the Redis `what` test is skipped. With `TSUNAGU_REQUIRE_REDIS` set (CI), Redis
    /// must answer.
    pub fn reach(what: &str) -> Option<Self> {
        let url = "redis://127.0.0.1:6379".to_string();
        let reached = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Self::TIMEOUT))
            .and_then(|mut con| redis::cmd("PING").query::<String>(&mut con));
        if let Err(e) = reached {
            assert!(
                std::env::var_os("TSUNAGU_REQUIRE_REDIS").is_none(),
                "TSUNAGU_REQUIRE_REDIS is set but Redis at {url} is unreachable: {e}"
            );
            eprintln!("Redis at {url} is unreachable ({e}); skipping the Redis {what} test");
            return None;
        }
        let mut raw = [0u8; 8];
        getrandom::fill(&mut raw).expect("the OS random number generator is available");
        Some(Self {
            prefix: format!("t:{}:", crate::hex::hex(&raw)),
            url,
        })
    }

    fn connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url.as_str())?.get_connection_with_timeout(Self::TIMEOUT)
    }

    /// Every key under the prefix, with its time to live in ms (-1: none; -2: it expired
    /// between the scan and the question).
    pub fn keys_with_ttl(&self) -> Vec<(String, i64)> {
        self.scan().expect("the test Redis answered a moment ago")
    }

    fn scan(&self) -> redis::RedisResult<Vec<(String, i64)>> {
        let mut con = self.connection()?;
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query(&mut con)?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.into_iter()
            .map(|k| {
                let ttl: i64 = redis::cmd("PTTL").arg(&k).query(&mut con)?;
                Ok((k, ttl))
            })
            .collect()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        // Never a panic here: this may run while a failed test unwinds.
        let deleted = self.scan().and_then(|keys| {
            let keys: Vec<String> = keys.into_iter().map(|(k, _)| k).collect();
            if keys.is_empty() {
                return Ok(0);
            }
            redis::cmd("DEL").arg(&keys).query::<i64>(&mut self.connection()?)
        });
        if let Err(e) = deleted {
            eprintln!("could not delete the test keys under {}: {e}", self.prefix);
        }
    }
}

/// What an insider with write access to the database but not the audit key could do:
/// recompute the hashes of the rows in `which` (after editing one of them) with plain
/// SHA-256, each chained to the one before; `keyed_looking` puts the keyed prefix in front.
pub async fn rehash_without_key(store: &Store, which: RangeInclusive<i64>, keyed_looking: bool) {
    let rows = store
        .audit_rows(0, 1000)
        .await
        .expect("the test store's audit rows are readable");
    let mut prev = GENESIS.to_string();
    for r in rows {
        if which.contains(&r.seq) {
            let h = row_hash(r.seq, r.at, &r.actor, &r.action, &r.target, &r.ip, &r.detail, &prev);
            let h = if keyed_looking { format!("{KEYED_PREFIX}{h}") } else { h };
            store
                .execute_raw(&format!(
                    "UPDATE audit SET prev_hash = '{prev}', hash = '{h}' WHERE seq = {}",
                    r.seq
                ))
                .await
                .expect("the test store accepts the rewritten audit row");
            prev = h;
        } else {
            prev = r.hash;
        }
    }
}
