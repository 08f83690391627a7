//! What the relay's own tests and the workspace's end-to-end tests share: the PostgreSQL
//! server CI provides, and the audit-trail rewrite an insider without the key could do.
//! Built for `cargo test` and with the `test-support` feature only, never into the relay.

use std::ops::RangeInclusive;

use crate::audit::{row_hash, GENESIS, KEYED_PREFIX};
use crate::config::Config;
use crate::store::Store;

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
