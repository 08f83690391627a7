//! The audit trail: admin actions, logins, code issue / join / failure, consent decisions
//! and suspensions. Rows are only ever appended; each row's hash covers its content and the
//! previous row's hash, so editing or deleting any row breaks the chain from there on and
//! [`verify`] names it. (Removing rows from the very end leaves a shorter valid chain: keep
//! the head hash that `tsunagu-relay audit verify` prints somewhere else to catch that.)

use sha2::{Digest, Sha256};

use crate::store::{AuditRow, Store, StoreError};
use crate::totp::hex;

/// `prev_hash` of the first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Longest text kept in one audit field; longer input is cut (peers choose some of it).
pub const MAX_FIELD: usize = 512;

/// One thing to record. `actor` is who did it (`admin:NAME`, `operator:NAME`, `client`,
/// `cli`, `relay`), `target` what it was done to, `detail` a short machine-readable note.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub actor: String,
    pub action: &'static str,
    pub target: String,
    pub ip: String,
    pub detail: String,
}

/// Appends to the trail; cheap to clone. Appends from one process are serialised; appends
/// from two processes (the relay and the CLI) race on `seq` and the loser retries.
#[derive(Clone, Debug)]
pub struct Audit {
    store: Store,
    lock: std::sync::Arc<tokio::sync::Mutex<()>>,
}

fn cut(s: &str) -> String {
    let clean: String = s.chars().filter(|c| !c.is_control()).collect();
    if clean.len() <= MAX_FIELD {
        return clean;
    }
    let mut end = MAX_FIELD;
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    clean[..end].to_string()
}

/// The hash of a row: SHA-256 over every field, each length-prefixed so no two different
/// rows can serialise alike. (One argument per stored column, in column order.)
#[allow(clippy::too_many_arguments)]
pub fn row_hash(
    seq: i64,
    at: i64,
    actor: &str,
    action: &str,
    target: &str,
    ip: &str,
    detail: &str,
    prev_hash: &str,
) -> String {
    let mut h = Sha256::new();
    h.update(b"tsunagu-audit-v1");
    for field in [
        seq.to_string().as_str(),
        at.to_string().as_str(),
        actor,
        action,
        target,
        ip,
        detail,
        prev_hash,
    ] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    hex(&h.finalize())
}

impl Audit {
    /// A handle appending to `store`'s trail.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            lock: Default::default(),
        }
    }

    /// Appends one entry and returns the stored row.
    pub async fn append(&self, entry: Entry) -> Result<AuditRow, StoreError> {
        let _guard = self.lock.lock().await;
        let (actor, target, ip, detail) = (
            cut(&entry.actor),
            cut(&entry.target),
            cut(&entry.ip),
            cut(&entry.detail),
        );
        // Another process appending at the same moment takes our seq; a few retries settle it.
        let mut last_err = None;
        for _ in 0..8 {
            let head = self.store.audit_head().await?;
            let (seq, prev) = match head {
                Some(h) => (h.seq + 1, h.hash),
                None => (1, GENESIS.to_string()),
            };
            let at = crate::history::now_ms();
            let hash = row_hash(seq, at, &actor, entry.action, &target, &ip, &detail, &prev);
            let row = AuditRow {
                seq,
                at,
                actor: actor.clone(),
                action: entry.action.to_string(),
                target: target.clone(),
                ip: ip.clone(),
                detail: detail.clone(),
                prev_hash: prev,
                hash,
            };
            match self.store.audit_insert(&row).await {
                Ok(true) => return Ok(row),
                Ok(false) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| StoreError::Db(sqlx::Error::Protocol("audit append kept colliding".into()))))
    }

    /// Appends, logging (not failing) when the database refuses: an audit failure must not
    /// take down the session that caused it.
    pub async fn record(&self, entry: Entry) {
        let action = entry.action;
        if let Err(e) = self.append(entry).await {
            tracing::error!(error = %e, action, "could not write the audit trail");
        }
    }
}

/// What `audit verify` found.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub rows: u64,
    /// The newest row's hash: keep it elsewhere to detect truncation later.
    pub head: Option<String>,
    /// One line per broken link, empty when the chain is intact.
    pub problems: Vec<String>,
}

/// Walks the whole trail and reports every row that was edited, and every gap where rows
/// were deleted.
pub async fn verify(store: &Store) -> Result<Report, StoreError> {
    let mut report = Report::default();
    let mut expected_seq = 1i64;
    let mut prev = GENESIS.to_string();
    loop {
        // Pages keep memory flat on a long trail.
        let page = store.audit_rows(expected_seq - 1, 1000).await?;
        if page.is_empty() {
            break;
        }
        for row in page {
            report.rows += 1;
            if row.seq != expected_seq {
                report
                    .problems
                    .push(format!("rows {}..={} are missing (deleted)", expected_seq, row.seq - 1));
            }
            if row.prev_hash != prev {
                report.problems.push(format!(
                    "row {}: does not follow the row before it (a row was deleted or edited)",
                    row.seq
                ));
            }
            let recomputed = row_hash(
                row.seq,
                row.at,
                &row.actor,
                &row.action,
                &row.target,
                &row.ip,
                &row.detail,
                &row.prev_hash,
            );
            if recomputed != row.hash {
                report
                    .problems
                    .push(format!("row {}: its content was edited (hash mismatch)", row.seq));
            }
            expected_seq = row.seq + 1;
            prev = row.hash.clone();
            report.head = Some(row.hash);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &'static str, target: &str) -> Entry {
        Entry {
            actor: "admin:root".into(),
            action,
            target: target.into(),
            ip: "127.0.0.1".into(),
            detail: String::new(),
        }
    }

    #[tokio::test]
    async fn chain_detects_edits_and_deletions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("a.db")).await.unwrap();
        let audit = Audit::new(store.clone());
        for i in 0..5 {
            audit
                .append(entry("operator_created", &format!("op{i}")))
                .await
                .unwrap();
        }
        let ok = verify(&store).await.unwrap();
        assert_eq!((ok.rows, ok.problems.len()), (5, 0), "{:?}", ok.problems);

        store
            .execute_raw("UPDATE audit SET target = 'mallory' WHERE seq = 2")
            .await
            .unwrap();
        let edited = verify(&store).await.unwrap();
        assert_eq!(
            edited.problems,
            vec!["row 2: its content was edited (hash mismatch)".to_string()]
        );

        store.execute_raw("DELETE FROM audit WHERE seq = 4").await.unwrap();
        let deleted = verify(&store).await.unwrap();
        assert!(
            deleted.problems.iter().any(|p| p.contains("rows 4..=4 are missing")),
            "{:?}",
            deleted.problems
        );
        assert!(
            deleted.problems.iter().any(|p| p.starts_with("row 5: does not follow")),
            "{:?}",
            deleted.problems
        );
        store.close().await;
    }

    #[test]
    fn fields_are_cut_and_cleaned() {
        assert_eq!(cut("a\u{1b}[2Jb\n"), "a[2Jb");
        assert!(cut(&"é".repeat(400)).len() <= MAX_FIELD);
        assert_ne!(
            row_hash(1, 2, "ab", "c", "", "", "", GENESIS),
            row_hash(1, 2, "a", "bc", "", "", "", GENESIS)
        );
    }
}
