//! What the console reads beyond single rows: the audit trail a page at a time (keyset
//! paging by `seq`, with filters), and the dashboard's aggregates (sessions and bytes per
//! day, sessions per operator, how long sessions lasted). Every query here is an indexed
//! range with `LIMIT`, or an aggregate that returns a handful of rows: none of them loads
//! the history or the trail into memory, on SQLite and PostgreSQL alike (the same SQL).

use sqlx::Row;

use super::{audit_from_row, AuditRow, Bind, Store, StoreError};

/// Which end of a keyset a page starts from: rows strictly older than the key (the next
/// page down), or strictly newer (the page before).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageFrom<K> {
    Older(K),
    Newer(K),
}

/// Which audit rows a page shows; unset fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Exactly this actor (`admin:root`, `token:…`, `operator:alice`, …).
    pub actor: Option<String>,
    /// At or after this (Unix ms).
    pub from_ms: Option<i64>,
    /// Before this (Unix ms).
    pub to_ms: Option<i64>,
    /// Keyset paging by `seq`.
    pub page: Option<PageFrom<i64>>,
    /// Rows at most (1 to [`AUDIT_MAX_PAGE`]).
    pub limit: i64,
}

/// Most audit rows one page query returns.
pub const AUDIT_MAX_PAGE: i64 = 1_000;

/// Sessions and bytes (both ways) of one day of the dashboard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DayTotals {
    pub sessions: i64,
    pub bytes: i64,
}

/// Most buckets an aggregate by time range takes (the dashboard uses 30 days): each is a
/// branch of one `CASE`, and a bound parameter.
pub const MAX_BUCKETS: usize = 400;

fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    binds: Vec<Bind>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for b in binds {
        q = match b {
            Bind::Text(t) => q.bind(t),
            Bind::Int(i) => q.bind(i),
        };
    }
    q
}

/// `CASE WHEN col < $k THEN 0 WHEN col < $k+1 THEN 1 … END` over `edges` (ascending), the
/// last bucket open-ended; parameters numbered from `first`.
fn bucket_case(column: &str, edges: &[i64], first: usize) -> String {
    let mut sql = String::from("CASE");
    for (i, _) in edges.iter().enumerate() {
        sql.push_str(&format!(" WHEN {column} < ${} THEN {i}", first + i));
    }
    sql.push_str(&format!(" ELSE {} END", edges.len()));
    sql
}

impl Store {
    /// The statement [`Store::audit_page`] runs for `filter`, its parameters, and whether
    /// its rows come oldest first (a Newer page).
    fn audit_query(filter: &AuditFilter) -> (String, Vec<Bind>, bool) {
        let mut sql = String::from("SELECT * FROM audit WHERE 1 = 1");
        let mut binds = Vec::new();
        let param = |binds: &mut Vec<Bind>, b: Bind| {
            binds.push(b);
            binds.len()
        };
        if let Some(actor) = filter.actor.as_ref().filter(|a| !a.is_empty()) {
            let n = param(&mut binds, Bind::Text(actor.clone()));
            sql.push_str(&format!(" AND actor = ${n}"));
        }
        if let Some(from) = filter.from_ms {
            let n = param(&mut binds, Bind::Int(from));
            sql.push_str(&format!(" AND at >= ${n}"));
        }
        if let Some(to) = filter.to_ms {
            let n = param(&mut binds, Bind::Int(to));
            sql.push_str(&format!(" AND at < ${n}"));
        }
        let newer = match &filter.page {
            Some(PageFrom::Older(seq)) => {
                let n = param(&mut binds, Bind::Int(*seq));
                sql.push_str(&format!(" AND seq < ${n} ORDER BY seq DESC"));
                false
            }
            Some(PageFrom::Newer(seq)) => {
                let n = param(&mut binds, Bind::Int(*seq));
                sql.push_str(&format!(" AND seq > ${n} ORDER BY seq ASC"));
                true
            }
            None => {
                sql.push_str(" ORDER BY seq DESC");
                false
            }
        };
        let n = param(&mut binds, Bind::Int(filter.limit.clamp(1, AUDIT_MAX_PAGE)));
        sql.push_str(&format!(" LIMIT ${n}"));
        (sql, binds, newer)
    }

    /// One page of the audit trail matching `filter`, newest first.
    pub async fn audit_page(&self, filter: &AuditFilter) -> Result<Vec<AuditRow>, StoreError> {
        let (sql, binds, newer) = Self::audit_query(filter);
        let rows = bind_all(sqlx::query(&sql), binds).fetch_all(&self.pool).await?;
        let mut rows: Vec<AuditRow> = rows.into_iter().map(audit_from_row).collect();
        if newer {
            rows.reverse();
        }
        Ok(rows)
    }

    /// Sessions issued in each range `[bounds[i], bounds[i + 1])` and the bytes they moved
    /// (both ways), in one aggregate over the issued-at index. `bounds` ascending, at most
    /// [`MAX_BUCKETS`] + 1 of them; returns `bounds.len() - 1` totals.
    pub async fn totals_per_range(&self, bounds: &[i64]) -> Result<Vec<DayTotals>, StoreError> {
        let buckets = bounds.len().saturating_sub(1);
        if buckets == 0 {
            return Ok(Vec::new());
        }
        if buckets > MAX_BUCKETS || bounds.windows(2).any(|w| w[0] >= w[1]) {
            return Err(StoreError::Db(sqlx::Error::Protocol(
                "time ranges must ascend and be at most MAX_BUCKETS".into(),
            )));
        }
        // $1 and $2: the whole span; $3…: the inner edges.
        let inner = &bounds[1..buckets];
        let sql = format!(
            "SELECT CAST({} AS BIGINT) AS bucket, COUNT(*) AS n, \
             CAST(COALESCE(SUM(bytes_to_client + bytes_to_operator), 0) AS BIGINT) AS bytes \
             FROM sessions WHERE issued_at >= $1 AND issued_at < $2 GROUP BY 1",
            bucket_case("issued_at", inner, 3)
        );
        let mut binds = vec![Bind::Int(bounds[0]), Bind::Int(bounds[buckets])];
        binds.extend(inner.iter().map(|b| Bind::Int(*b)));
        let rows = bind_all(sqlx::query(&sql), binds).fetch_all(&self.pool).await?;
        let mut out = vec![DayTotals::default(); buckets];
        for r in rows {
            let i: i64 = r.get("bucket");
            if let Some(slot) = usize::try_from(i).ok().and_then(|i| out.get_mut(i)) {
                *slot = DayTotals {
                    sessions: r.get("n"),
                    bytes: r.get("bytes"),
                };
            }
        }
        Ok(out)
    }

    /// The `limit` operators with the most sessions issued since `from_ms`, most first (ties
    /// by name).
    pub async fn top_operators(&self, from_ms: i64, limit: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT operator, COUNT(*) AS n FROM sessions WHERE issued_at >= $1 \
             GROUP BY operator ORDER BY n DESC, operator LIMIT $2",
        )
        .bind(from_ms)
        .bind(limit.clamp(1, 100))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get("operator"), r.get("n"))).collect())
    }

    /// How long the sessions issued since `from_ms` that a client joined and that have ended
    /// lasted (joined to ended), counted per bucket: `[0, edges[0])`, `[edges[0],
    /// edges[1])`, …, `[edges[last], ∞)`; `edges` in ms, ascending, at most [`MAX_BUCKETS`].
    pub async fn duration_histogram(&self, from_ms: i64, edges: &[i64]) -> Result<Vec<i64>, StoreError> {
        if edges.len() > MAX_BUCKETS || edges.windows(2).any(|w| w[0] >= w[1]) {
            return Err(StoreError::Db(sqlx::Error::Protocol(
                "duration edges must ascend and be at most MAX_BUCKETS".into(),
            )));
        }
        let sql = format!(
            "SELECT CAST({} AS BIGINT) AS bucket, COUNT(*) AS n FROM sessions \
             WHERE issued_at >= $1 AND joined_at IS NOT NULL AND ended_at IS NOT NULL GROUP BY 1",
            bucket_case("(ended_at - joined_at)", edges, 2)
        );
        let mut binds = vec![Bind::Int(from_ms)];
        binds.extend(edges.iter().map(|e| Bind::Int(*e)));
        let rows = bind_all(sqlx::query(&sql), binds).fetch_all(&self.pool).await?;
        let mut out = vec![0i64; edges.len() + 1];
        for r in rows {
            let i: i64 = r.get("bucket");
            if let Some(slot) = usize::try_from(i).ok().and_then(|i| out.get_mut(i)) {
                *slot = r.get("n");
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Counters;
    use crate::store::{HistoryFilter, SessionEvent};
    use crate::testing::TestPostgres;
    use tsunagu_proto::PermissionSet;

    #[test]
    fn buckets_are_one_case() {
        assert_eq!(
            bucket_case("t", &[10, 20], 3),
            "CASE WHEN t < $3 THEN 0 WHEN t < $4 THEN 1 ELSE 2 END"
        );
    }

    /// 120 sessions, 1 s apart, two per issued-at time for ties: paging both ways sees each
    /// once; the aggregates count them.
    async fn pages_and_aggregates(store: &Store) {
        let t0 = 1_700_000_000_000i64;
        for i in 0..120i64 {
            let id = format!("s{i:03}");
            let at = t0 + (i / 2) * 1000;
            store
                .apply(&SessionEvent::Issued {
                    id: id.clone(),
                    operator: if i % 3 == 0 { "alice".into() } else { "bob".into() },
                    operator_addr: "10.0.0.1:4000".parse().unwrap(),
                    relay_port: 7615,
                    requested: PermissionSet::ALL,
                    at_ms: at,
                })
                .await
                .unwrap();
            store
                .apply(&SessionEvent::Joined {
                    id: id.clone(),
                    client_host: "pc".into(),
                    client_addr: "10.0.0.2:5000".parse().unwrap(),
                    relay_port: 443,
                    at_ms: at,
                })
                .await
                .unwrap();
            store
                .apply(&SessionEvent::Ended {
                    id,
                    reason: "client_ended",
                    counters: Counters {
                        bytes_to_client: 10,
                        bytes_to_operator: 5,
                        pauses: 0,
                        dropped_frames: 0,
                    },
                    granted: None,
                    at_ms: at + i * 60_000,
                })
                .await
                .unwrap();
        }
        // Older pages from the top, then back up with Newer pages.
        let mut seen = Vec::new();
        let mut page: Option<PageFrom<(i64, String)>> = None;
        let mut pages = Vec::new();
        loop {
            let rows = store
                .history(&HistoryFilter {
                    limit: Some(50),
                    page: page.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
            if rows.is_empty() {
                break;
            }
            let last = rows.last().unwrap();
            page = Some(PageFrom::Older((last.issued_at, last.id.clone())));
            pages.push(rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>());
            seen.extend(rows.into_iter().map(|r| r.id));
        }
        assert_eq!(seen.len(), 120);
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 120, "every session exactly once");
        assert_eq!(seen[0], "s119", "newest first, ties by id descending");
        let first_of_last = store.session(&pages[2][0]).await.unwrap().unwrap();
        let back = store
            .history(&HistoryFilter {
                limit: Some(50),
                page: Some(PageFrom::Newer((first_of_last.issued_at, first_of_last.id))),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            back.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
            pages[1],
            "Newer from the third page is the second page"
        );

        let days = store
            .totals_per_range(&[t0 - 1000, t0 + 30_000, t0 + 60_000, t0 + 90_000])
            .await
            .unwrap();
        assert_eq!(
            days,
            vec![
                DayTotals {
                    sessions: 60,
                    bytes: 900
                },
                DayTotals {
                    sessions: 60,
                    bytes: 900
                },
                DayTotals::default()
            ]
        );
        let top = store.top_operators(t0, 10).await.unwrap();
        assert_eq!(top, vec![("bob".to_string(), 80), ("alice".to_string(), 40)]);
        // Durations are i minutes: 0..120 min.
        let hist = store
            .duration_histogram(t0, &[60_000, 30 * 60_000, 3_600_000])
            .await
            .unwrap();
        assert_eq!(hist, vec![1, 29, 30, 60]);
    }

    async fn audit_pages(store: &Store) {
        for seq in 1..=130i64 {
            let row = AuditRow {
                seq,
                at: 1_700_000_000_000 + seq,
                actor: if seq % 2 == 0 {
                    "admin:root".into()
                } else {
                    "admin:other".into()
                },
                action: "operator_created".into(),
                target: format!("op{seq}"),
                ip: "10.0.0.1".into(),
                detail: String::new(),
                prev_hash: String::new(),
                hash: String::new(),
            };
            assert!(store.audit_insert(&row).await.unwrap());
        }
        let mut seen = Vec::new();
        let mut page = None;
        loop {
            let rows = store
                .audit_page(&AuditFilter {
                    actor: Some("admin:root".into()),
                    page: page.clone(),
                    limit: 20,
                    ..Default::default()
                })
                .await
                .unwrap();
            let Some(last) = rows.last() else { break };
            page = Some(PageFrom::Older(last.seq));
            seen.extend(rows.iter().map(|r| r.seq));
        }
        assert_eq!(seen, (1..=130).rev().filter(|s| s % 2 == 0).collect::<Vec<_>>());
        let newer = store
            .audit_page(&AuditFilter {
                page: Some(PageFrom::Newer(100)),
                from_ms: Some(1_700_000_000_000 + 90),
                limit: 3,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(newer.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![103, 102, 101]);
    }

    /// The page statements the console runs, for filters an admin sets.
    fn page_statements() -> Vec<(String, Vec<Bind>)> {
        let key = (1_700_000_000_000i64, "s050".to_string());
        let mut out = Vec::new();
        for (operator, client_ip, from) in [
            (None, None, None),
            (Some("alice"), None, None),
            (None, Some("10.0.0.2"), None),
            (None, None, Some(5)),
        ] {
            for page in [
                None,
                Some(PageFrom::Older(key.clone())),
                Some(PageFrom::Newer(key.clone())),
            ] {
                let (sql, binds, _) = Store::history_query(&HistoryFilter {
                    operator: operator.map(str::to_string),
                    client_ip: client_ip.map(str::to_string),
                    from_ms: from,
                    limit: Some(51),
                    page,
                    ..Default::default()
                });
                out.push((sql, binds));
            }
        }
        for (actor, from) in [(None, None), (Some("admin:root"), None), (None, Some(5))] {
            for page in [None, Some(PageFrom::Older(40)), Some(PageFrom::Newer(40))] {
                let (sql, binds, _) = Store::audit_query(&AuditFilter {
                    actor: actor.map(str::to_string),
                    from_ms: from,
                    page,
                    limit: 51,
                    ..Default::default()
                });
                out.push((sql, binds));
            }
        }
        out
    }

    /// Every page is a walk along an index in the page's order: no scan of the table, no
    /// sort (SQLite's query plans).
    #[tokio::test]
    async fn sqlite_pages_walk_an_index_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        for (sql, binds) in page_statements() {
            let explain = format!("EXPLAIN QUERY PLAN {sql}");
            let rows = bind_all(sqlx::query(&explain), binds)
                .fetch_all(&store.pool)
                .await
                .unwrap();
            let plan: Vec<String> = rows.iter().map(|r| r.get::<String, _>("detail")).collect();
            let plan = plan.join("; ");
            assert!(plan.contains("USING INDEX"), "{sql}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{sql} sorts: {plan}");
        }
        store.close().await;
    }

    /// The same on PostgreSQL. On a table this small the planner would rather read it all
    /// (or a bitmap of it) and sort; with both ruled out the plan shows the index walk it
    /// takes on a large table, and a sort would remain only where no index has the page's
    /// order.
    #[tokio::test]
    async fn postgres_pages_walk_an_index_in_order() {
        let Some(pg) = TestPostgres::from_env("console_plans") else {
            return;
        };
        let store = pg.open().await;
        // One connection, the settings its own; reset before it goes back to the pool.
        let mut conn = store.pool.acquire().await.unwrap();
        for off in ["enable_seqscan", "enable_bitmapscan"] {
            sqlx::query(&format!("SET {off} = off"))
                .execute(&mut *conn)
                .await
                .unwrap();
        }
        for (sql, binds) in page_statements() {
            let explain = format!("EXPLAIN {sql}");
            let rows = bind_all(sqlx::query(&explain), binds)
                .fetch_all(&mut *conn)
                .await
                .unwrap();
            let plan: Vec<String> = rows.iter().map(|r| r.get::<String, _>(0)).collect();
            let plan = plan.join("; ");
            assert!(plan.contains("Index"), "{sql}: {plan}");
            assert!(!plan.contains("Sort"), "{sql} sorts: {plan}");
        }
        for off in ["enable_seqscan", "enable_bitmapscan"] {
            sqlx::query(&format!("RESET {off}")).execute(&mut *conn).await.unwrap();
        }
        drop(conn);
        store.close().await;
        pg.drop_schema().await;
    }

    #[tokio::test]
    async fn sqlite_pages_and_aggregates() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        pages_and_aggregates(&store).await;
        audit_pages(&store).await;
        store.close().await;
    }

    #[tokio::test]
    async fn postgres_pages_and_aggregates() {
        let Some(pg) = TestPostgres::from_env("console") else {
            return;
        };
        let store = pg.open().await;
        pages_and_aggregates(&store).await;
        audit_pages(&store).await;
        store.close().await;
        pg.drop_schema().await;
    }
}
