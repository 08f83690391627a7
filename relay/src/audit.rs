//! The audit trail: admin actions, logins, code issue / join / failure, consent decisions
//! and suspensions. Rows are only ever appended; each row's hash is an HMAC-SHA-256, under a
//! key kept outside the database ([`crate::keys`]), of its content and the previous row's
//! hash, so editing or deleting any row breaks the chain from there on and [`verify`] names
//! it, and someone who can write the database but not read the key cannot recompute it.
//!
//! Cutting rows from the very end leaves a shorter chain that is valid in itself: the relay
//! therefore appends a signed head (the newest row's `seq` and hash, Ed25519) to
//! `DATA/audit/checkpoints.jsonl`, outside the database, at start, every
//! `secrets.checkpoint_interval` (daily) and at shutdown, and the console's one-day zip
//! carries them too. [`verify`] checks the trail against every checkpoint.
//!
//! Trails written before the chain was keyed keep their rows: those rows (plain SHA-256,
//! no prefix) are verified the old way, but only as a prefix: once a keyed row (`k1:`)
//! appears every later row must be keyed, and the first keyed row's HMAC covers the last
//! unkeyed row's hash, so the old rows cannot be rewritten either. The relay marks the
//! switch with an `audit_chain_keyed` row at its first start with the key.

use sha2::{Digest, Sha256};

use crate::hex::hex;
use crate::keys::{KeyError, Keys};
use crate::store::{AuditRow, Store, StoreError};

pub use crate::keys::KEYED_PREFIX;

/// Newest rows [`Audit::check_key`] looks at: enough that an insider would have to edit
/// them all to pass for a wrong key, few enough to read at every start.
const KEY_CHECK_ROWS: i64 = 100;

/// Longest checkpoint file [`verify`] reads; a daily line is about 300 bytes, so this is
/// centuries of checkpoints, and a bigger file is reported instead of filling memory.
const MAX_CHECKPOINT_FILE: u64 = 64 << 20;

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

/// The unkeyed hash of a row, as trails were chained before the key: SHA-256 over every
/// field, each length-prefixed so no two different rows can serialise alike. (One argument
/// per stored column, in column order.) Only rows older than the first keyed row may carry
/// it.
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
    hex(&Sha256::digest(row_bytes(
        b"tsunagu-audit-v1",
        &[seq, at],
        &[actor, action, target, ip, detail, prev_hash],
    )))
}

/// The keyed hash of a row: `k1:` + HMAC-SHA-256 under the audit key over the same
/// length-prefixed fields.
pub fn keyed_row_hash(keys: &Keys, row: &AuditRow) -> String {
    let bytes = row_bytes(
        b"tsunagu-audit-v2",
        &[row.seq, row.at],
        &[
            &row.actor,
            &row.action,
            &row.target,
            &row.ip,
            &row.detail,
            &row.prev_hash,
        ],
    );
    format!("{KEYED_PREFIX}{}", keys.audit_mac(&bytes))
}

fn row_bytes(domain: &[u8], numbers: &[i64], texts: &[&str]) -> Vec<u8> {
    let mut out = domain.to_vec();
    let numbers: Vec<String> = numbers.iter().map(i64::to_string).collect();
    for field in numbers.iter().map(String::as_str).chain(texts.iter().copied()) {
        out.extend_from_slice(&(field.len() as u64).to_be_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    out
}

/// How many times an append reads the head again after another writer took its `seq`:
/// enough for every node of a busy grid writing at once (each retry is one round trip and
/// a pause of a few milliseconds).
const APPEND_ATTEMPTS: usize = 64;

/// A random pause of 1 to 16 ms after a collision.
fn collision_pause() -> std::time::Duration {
    let mut b = [0u8; 1];
    let _ = getrandom::fill(&mut b);
    std::time::Duration::from_millis(1 + u64::from(b[0] % 16))
}

impl Audit {
    /// A handle appending to `store`'s trail.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            lock: Default::default(),
        }
    }

    /// Appends one entry and returns the stored row. Needs the store's keys. Writers in
    /// several processes sharing one database (a grid) keep one chain: a row's `seq` is
    /// unique, so of two writers that read the same head one inserts and the other retries
    /// on the new head.
    pub async fn append(&self, entry: Entry) -> Result<AuditRow, StoreError> {
        let mut rows = self.append_all(std::slice::from_ref(&entry)).await?;
        rows.pop()
            .ok_or_else(|| StoreError::Db(sqlx::Error::Protocol("audit append wrote no row".into())))
    }

    /// Appends `entries` in order, chained one to the next, in one transaction: all of
    /// them or none. One head read and one write for the lot, so a busy relay's history
    /// (a few entries per session) costs the database one transaction per batch.
    pub async fn append_all(&self, entries: &[Entry]) -> Result<Vec<AuditRow>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let keys = self.store.keys().ok_or(StoreError::NoKeys)?.clone();
        let _guard = self.lock.lock().await;
        // Another process (a grid's other nodes) appending at the same moment takes our seq;
        // the loser reads the new head and tries again after a short random pause, so
        // writers that collided do not collide again in lockstep.
        let mut last_err = None;
        for _ in 0..APPEND_ATTEMPTS {
            let head = self.store.audit_head().await?;
            let (mut seq, mut prev) = match head {
                Some(h) => (h.seq + 1, h.hash),
                None => (1, GENESIS.to_string()),
            };
            let at = crate::time::now_ms();
            let mut rows = Vec::with_capacity(entries.len());
            for entry in entries {
                let mut row = AuditRow {
                    seq,
                    at,
                    actor: cut(&entry.actor),
                    action: entry.action.to_string(),
                    target: cut(&entry.target),
                    ip: cut(&entry.ip),
                    detail: cut(&entry.detail),
                    prev_hash: prev,
                    hash: String::new(),
                };
                row.hash = keyed_row_hash(&keys, &row);
                prev = row.hash.clone();
                seq += 1;
                rows.push(row);
            }
            match self.store.audit_insert_all(&rows).await {
                Ok(true) => return Ok(rows),
                Ok(false) => tokio::time::sleep(collision_pause()).await,
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

    /// Checks at start that the audit key is the one the trail was keyed with: when none of
    /// the newest keyed rows matches it, the key file is wrong ([`StoreError::WrongAuditKey`]);
    /// when only some do, rows were edited, which is logged and left to `audit verify`.
    pub async fn check_key(&self) -> Result<(), StoreError> {
        let keys = self.store.keys().ok_or(StoreError::NoKeys)?.clone();
        let recent = self.store.audit_recent(KEY_CHECK_ROWS).await?;
        let keyed: Vec<&AuditRow> = recent.iter().filter(|r| r.hash.starts_with(KEYED_PREFIX)).collect();
        let matching = keyed.iter().filter(|r| keyed_row_hash(&keys, r) == r.hash).count();
        if !keyed.is_empty() && matching == 0 {
            return Err(StoreError::WrongAuditKey(keys.files().audit.display().to_string()));
        }
        if matching < keyed.len() {
            tracing::error!(
                edited = keyed.len() - matching,
                "recent audit rows do not match their hashes: run `tsunagu-relay audit verify`"
            );
        }
        Ok(())
    }

    /// On a trail whose newest row is unkeyed (written before the chain was keyed), appends
    /// the `audit_chain_keyed` row that starts the keyed part; a no-op otherwise. The relay
    /// calls it at start.
    pub async fn mark_keyed(&self) -> Result<(), StoreError> {
        let Some(head) = self.store.audit_head().await? else {
            return Ok(());
        };
        if head.hash.starts_with(KEYED_PREFIX) {
            return Ok(());
        }
        self.append(Entry {
            actor: "relay".into(),
            action: "audit_chain_keyed",
            detail: format!("unkeyed_rows={}", head.seq),
            ..Default::default()
        })
        .await?;
        tracing::info!(unkeyed_rows = head.seq, "the audit chain is keyed from now on");
        Ok(())
    }

    /// Appends a signed head of the trail to the checkpoint file; `None` while the trail is
    /// empty.
    pub async fn checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        let keys = self.store.keys().ok_or(StoreError::NoKeys)?.clone();
        // Appends from this process wait, so the head is not overtaken while it is signed.
        let _guard = self.lock.lock().await;
        let Some(head) = self.store.audit_head().await? else {
            return Ok(None);
        };
        if !head.hash.starts_with(KEYED_PREFIX) {
            // Since `mark_keyed` every row is keyed: an unkeyed head was written without the
            // key. Signing it would vouch for the rewrite.
            return Err(StoreError::AuditRewritten(head.seq));
        }
        let mut c = Checkpoint {
            seq: head.seq,
            hash: head.hash,
            at: crate::time::now_ms(),
            key: keys.signing_public_hex(),
            sig: String::new(),
        };
        c.sig = keys.sign(&c.signed_bytes());
        let path = &keys.files().checkpoints;
        let io = |source| {
            StoreError::Keys(KeyError::Io {
                path: path.display().to_string(),
                source,
            })
        };
        if let Some(dir) = path.parent() {
            crate::keys::create_private_dir(dir).map_err(io)?;
        }
        let line = serde_json::to_string(&c).map_err(|e| io(std::io::Error::other(e)))? + "\n";
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = crate::keys::private_file_options()
                .append(true)
                .create(true)
                .open(path)?;
            f.write_all(line.as_bytes())?;
            f.sync_data()
        };
        write().map_err(io)?;
        Ok(Some(c))
    }

    /// [`Audit::checkpoint`], logging instead of failing (housekeeping and shutdown).
    pub async fn checkpoint_logged(&self) {
        match self.checkpoint().await {
            Ok(Some(c)) => tracing::info!(seq = c.seq, "wrote an audit checkpoint"),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "could not write an audit checkpoint"),
        }
    }
}

/// A signed head of the audit trail, one JSON line of `DATA/audit/checkpoints.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// The newest row's `seq` when the checkpoint was taken.
    pub seq: i64,
    /// That row's hash.
    pub hash: String,
    /// When (Unix ms).
    pub at: i64,
    /// The signing key's public half (hex), to tell which relay wrote it.
    pub key: String,
    /// Ed25519 signature (hex) of [`Checkpoint::signed_bytes`].
    pub sig: String,
}

impl Checkpoint {
    /// What the signature covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        format!("tsunagu-audit-checkpoint-v1\n{}\n{}\n{}", self.seq, self.hash, self.at).into_bytes()
    }
}

impl Audit {
    /// For the console's one-day zip: the checkpoints written in `[from_ms, to_ms)`, and
    /// one taken now (so the download always carries the current head).
    pub async fn day_checkpoints(&self, from_ms: i64, to_ms: i64) -> String {
        let fresh = match self.checkpoint().await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "could not write an audit checkpoint");
                None
            }
        };
        let Some(keys) = self.store.keys() else {
            return String::new();
        };
        let mut out = checkpoint_lines(keys, from_ms, to_ms);
        if let Some(c) = fresh.filter(|c| !(from_ms..to_ms).contains(&c.at)) {
            if let Ok(line) = serde_json::to_string(&c) {
                out.push_str(&line);
                out.push('\n');
            }
        }
        out
    }
}

/// The checkpoint file's lines written in `[from_ms, to_ms)`.
pub fn checkpoint_lines(keys: &Keys, from_ms: i64, to_ms: i64) -> String {
    let Ok(text) = std::fs::read_to_string(&keys.files().checkpoints) else {
        return String::new();
    };
    text.lines()
        .filter(|l| {
            serde_json::from_str::<Checkpoint>(l)
                .map(|c| (from_ms..to_ms).contains(&c.at))
                .unwrap_or(false)
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// What `audit verify` found.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub rows: u64,
    /// The newest row's hash.
    pub head: Option<String>,
    /// The first keyed row; rows before it are unkeyed (written before the key existed).
    pub keyed_from: Option<i64>,
    /// Signed checkpoints the trail was checked against.
    pub checkpoints: u64,
    /// One line per broken link, empty when the chain is intact.
    pub problems: Vec<String>,
}

/// Reads the checkpoint file: good checkpoints by the row they name, and a problem for
/// every line that is unreadable or not signed by this relay's key.
fn load_checkpoints(keys: &Keys, problems: &mut Vec<String>) -> std::collections::BTreeMap<i64, Vec<Checkpoint>> {
    let mut by_seq = std::collections::BTreeMap::<i64, Vec<Checkpoint>>::new();
    let path = &keys.files().checkpoints;
    let text = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return by_seq,
        Ok(m) if m.len() > MAX_CHECKPOINT_FILE => {
            problems.push(format!("{} is too large to be a checkpoint file", path.display()));
            return by_seq;
        }
        _ => match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("cannot read the checkpoints in {}: {e}", path.display()));
                return by_seq;
            }
        },
    };
    let own_key = keys.signing_public_hex();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        match serde_json::from_str::<Checkpoint>(line) {
            Ok(c) if c.key == own_key && keys.signature_ok(&c.signed_bytes(), &c.sig) => {
                by_seq.entry(c.seq).or_default().push(c)
            }
            Ok(_) => problems.push(format!("checkpoint line {}: not signed by this relay's key", i + 1)),
            Err(_) => problems.push(format!("checkpoint line {}: unreadable", i + 1)),
        }
    }
    by_seq
}

fn when(at_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(at_ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| at_ms.to_string())
}

/// Walks the whole trail and reports every row that was edited, every gap where rows were
/// deleted, and, against the signed checkpoints outside the database, rows cut from the
/// end or rewritten wholesale.
pub async fn verify(store: &Store) -> Result<Report, StoreError> {
    let mut report = Report::default();
    let keys = store.keys().cloned();
    let checkpoints = match &keys {
        Some(k) => load_checkpoints(k, &mut report.problems),
        None => Default::default(),
    };
    report.checkpoints = checkpoints.values().map(|v| v.len() as u64).sum();
    let mut expected_seq = 1i64;
    let mut prev = GENESIS.to_string();
    let mut missing_key_reported = false;
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
            let intact = if row.hash.starts_with(KEYED_PREFIX) {
                report.keyed_from.get_or_insert(row.seq);
                match &keys {
                    Some(k) => keyed_row_hash(k, &row) == row.hash,
                    None => {
                        if !missing_key_reported {
                            report
                                .problems
                                .push("the audit key is not loaded: keyed rows cannot be checked".into());
                            missing_key_reported = true;
                        }
                        true
                    }
                }
            } else if report.keyed_from.is_some() {
                report.problems.push(format!(
                    "row {}: unkeyed hash after the chain was keyed (rewritten without the key)",
                    row.seq
                ));
                true
            } else {
                row_hash(
                    row.seq,
                    row.at,
                    &row.actor,
                    &row.action,
                    &row.target,
                    &row.ip,
                    &row.detail,
                    &row.prev_hash,
                ) == row.hash
            };
            if !intact {
                report
                    .problems
                    .push(format!("row {}: its content was edited (hash mismatch)", row.seq));
            }
            for c in checkpoints.get(&row.seq).into_iter().flatten() {
                if c.hash != row.hash {
                    report.problems.push(format!(
                        "row {}: differs from the signed checkpoint of {} (rewritten)",
                        row.seq,
                        when(c.at)
                    ));
                }
            }
            expected_seq = row.seq + 1;
            prev = row.hash.clone();
            report.head = Some(row.hash);
        }
    }
    let last = expected_seq - 1;
    // The furthest checkpoint past the end says how much was cut.
    if let Some((seq, cs)) = checkpoints.range(last + 1..).next_back() {
        let newest = cs.iter().map(|c| c.at).max().unwrap_or_default();
        report.problems.push(format!(
            "rows {}..={seq} were cut from the end: the signed checkpoint of {} names row {seq}",
            last + 1,
            when(newest)
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::rehash_without_key;

    fn entry(action: &'static str, target: &str) -> Entry {
        Entry {
            actor: "admin:root".into(),
            action,
            target: target.into(),
            ip: "127.0.0.1".into(),
            detail: String::new(),
        }
    }

    use crate::testing::{keyed_store, keys};

    /// A keyed store in a fresh data dir, and the audit trail it holds.
    async fn keyed_trail() -> (tempfile::TempDir, Store, Audit) {
        let dir = tempfile::tempdir().unwrap();
        let store = keyed_store(dir.path()).await;
        (dir, store.clone(), Audit::new(store))
    }

    /// Appends `n` rows, `operator_created` of `{prefix}0`, `{prefix}1`, ...
    async fn append_rows(audit: &Audit, prefix: &str, n: usize) {
        for i in 0..n {
            audit
                .append(entry("operator_created", &format!("{prefix}{i}")))
                .await
                .unwrap();
        }
    }

    /// Three nodes of a grid, each with its own store handle on one PostgreSQL schema,
    /// append at once: one chain, every entry in it, nothing reported.
    #[tokio::test]
    async fn nodes_writing_at_once_keep_one_valid_chain() {
        let Some(pg) = crate::testing::TestPostgres::from_env("audit_nodes") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let keys = keys(dir.path());
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let store = pg.open().await.with_keys(keys.clone()).await.unwrap();
            nodes.push(Audit::new(store));
        }
        let per_node = 40;
        let writers: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(n, audit)| {
                let audit = audit.clone();
                tokio::spawn(async move { append_rows(&audit, &format!("node{n}-op"), per_node).await })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        let store = pg.open().await.with_keys(keys).await.unwrap();
        let report = verify(&store).await.unwrap();
        assert_eq!(report.rows, 3 * per_node as u64);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        store.close().await;
        pg.drop_schema().await;
    }

    /// Three nodes append batches (a history writer's lot) and single rows at once on one
    /// PostgreSQL schema: one valid chain, every entry in it, and each batch whole and in
    /// a row (a batch that lost the race to another node's row is written again on top).
    #[tokio::test]
    async fn batches_from_nodes_writing_at_once_stay_whole_in_one_valid_chain() {
        let Some(pg) = crate::testing::TestPostgres::from_env("audit_batches") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let keys = keys(dir.path());
        let (batches, per_batch) = (12, 5);
        let mut writers = Vec::new();
        for n in 0..3 {
            let audit = Audit::new(pg.open().await.with_keys(keys.clone()).await.unwrap());
            writers.push(tokio::spawn(async move {
                for b in 0..batches {
                    let lot: Vec<Entry> = (0..per_batch)
                        .map(|i| entry("code_issued", &format!("node{n}-b{b}-{i}")))
                        .collect();
                    let rows = audit.append_all(&lot).await.unwrap();
                    assert_eq!(rows.len(), per_batch);
                    audit
                        .append(entry("operator_created", &format!("node{n}-single{b}")))
                        .await
                        .unwrap();
                }
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        let store = pg.open().await.with_keys(keys).await.unwrap();
        let report = verify(&store).await.unwrap();
        assert_eq!(report.rows, 3 * batches as u64 * (per_batch as u64 + 1));
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        let rows = store.audit_rows(0, 10_000).await.unwrap();
        for n in 0..3 {
            for b in 0..batches {
                let seqs: Vec<i64> = rows
                    .iter()
                    .filter(|r| r.target.starts_with(&format!("node{n}-b{b}-")))
                    .map(|r| r.seq)
                    .collect();
                assert_eq!(seqs.len(), per_batch, "node {n} batch {b}");
                let targets: Vec<String> = (0..per_batch).map(|i| format!("node{n}-b{b}-{i}")).collect();
                let in_order: Vec<&String> = rows
                    .iter()
                    .filter(|r| seqs.contains(&r.seq))
                    .map(|r| &r.target)
                    .collect();
                assert_eq!(
                    in_order,
                    targets.iter().collect::<Vec<_>>(),
                    "node {n} batch {b}: out of order"
                );
                assert_eq!(
                    seqs[per_batch - 1] - seqs[0],
                    per_batch as i64 - 1,
                    "node {n} batch {b}: {seqs:?}"
                );
            }
        }
        store.close().await;
        pg.drop_schema().await;
    }

    /// A batch on SQLite: chained like single appends, cut and cleaned like them, and an
    /// empty batch writes nothing.
    #[tokio::test]
    async fn a_batch_is_chained_like_single_appends() {
        let (_dir, store, audit) = keyed_trail().await;
        append_rows(&audit, "before", 2).await;
        assert!(audit.append_all(&[]).await.unwrap().is_empty());
        let lot = [
            entry("code_issued", "s1"),
            entry("code_joined", "s1\u{1b}[2J"),
            entry("consent_granted", &"x".repeat(MAX_FIELD + 10)),
        ];
        let rows = audit.append_all(&lot).await.unwrap();
        assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(rows[1].target, "s1[2J");
        assert_eq!(rows[2].target.len(), MAX_FIELD);
        assert_eq!(rows[1].prev_hash, rows[0].hash);
        append_rows(&audit, "after", 1).await;
        let report = verify(&store).await.unwrap();
        assert_eq!((report.rows, report.problems.len()), (6, 0), "{:?}", report.problems);
        store.close().await;
    }

    #[tokio::test]
    async fn an_edit_rehashed_without_the_key_is_reported() {
        for keyed_looking in [false, true] {
            let (_dir, store, audit) = keyed_trail().await;
            append_rows(&audit, "op", 5).await;
            store
                .execute_raw("UPDATE audit SET target = 'mallory' WHERE seq = 3")
                .await
                .unwrap();
            rehash_without_key(&store, 3..=i64::MAX, keyed_looking).await;
            let report = verify(&store).await.unwrap();
            let expect = if keyed_looking {
                "row 3: its content was edited"
            } else {
                "row 3: unkeyed hash after the chain was keyed"
            };
            assert!(
                report.problems.iter().any(|p| p.starts_with(expect)),
                "{keyed_looking}: {:?}",
                report.problems
            );
            store.close().await;
        }
    }

    #[tokio::test]
    async fn rows_cut_from_the_end_are_reported_against_the_checkpoint() {
        let (_dir, store, audit) = keyed_trail().await;
        assert_eq!(audit.checkpoint().await.unwrap(), None, "nothing to sign yet");
        append_rows(&audit, "op", 5).await;
        let c = audit.checkpoint().await.unwrap().unwrap();
        assert_eq!(c.seq, 5);
        let ok = verify(&store).await.unwrap();
        assert_eq!((ok.checkpoints, ok.problems.len()), (1, 0), "{:?}", ok.problems);

        store.execute_raw("DELETE FROM audit WHERE seq >= 4").await.unwrap();
        let cut = verify(&store).await.unwrap();
        assert_eq!(cut.rows, 3);
        assert_eq!(cut.problems.len(), 1, "{:?}", cut.problems);
        assert!(
            cut.problems[0].starts_with("rows 4..=5 were cut from the end: the signed checkpoint of"),
            "{:?}",
            cut.problems
        );

        // Rows appended again up to the same seq do not match the signed head either.
        append_rows(&audit, "new", 2).await;
        let replaced = verify(&store).await.unwrap();
        assert!(
            replaced
                .problems
                .iter()
                .any(|p| p.starts_with("row 5: differs from the signed checkpoint")),
            "{:?}",
            replaced.problems
        );

        // A forged checkpoint line is reported, not trusted.
        let path = store.keys().unwrap().files().checkpoints.clone();
        let mut forged = c.clone();
        forged.seq = 99;
        let text = std::fs::read_to_string(&path).unwrap() + &serde_json::to_string(&forged).unwrap() + "\n";
        std::fs::write(&path, text).unwrap();
        let report = verify(&store).await.unwrap();
        assert!(
            report
                .problems
                .iter()
                .any(|p| p == "checkpoint line 2: not signed by this relay's key"),
            "{:?}",
            report.problems
        );
        store.close().await;
    }

    #[tokio::test]
    async fn a_wrong_audit_key_is_refused_but_an_edited_row_is_only_reported() {
        let (dir, store, audit) = keyed_trail().await;
        audit.check_key().await.unwrap();
        append_rows(&audit, "op", 3).await;
        store
            .execute_raw("UPDATE audit SET target = 'mallory' WHERE seq = 3")
            .await
            .unwrap();
        audit.check_key().await.unwrap();
        let other = tempfile::tempdir().unwrap();
        let wrong = Store::open(&dir.path().join("relay.db"))
            .await
            .unwrap()
            .with_keys(keys(other.path()))
            .await
            .unwrap();
        assert!(matches!(
            Audit::new(wrong.clone()).check_key().await,
            Err(StoreError::WrongAuditKey(_))
        ));
        wrong.close().await;
        store.close().await;
    }

    #[tokio::test]
    async fn an_unkeyed_trail_is_kept_and_continued_keyed() {
        let dir = tempfile::tempdir().unwrap();
        let store = keyed_store(dir.path()).await;
        // Two rows as an older relay wrote them.
        let mut prev = GENESIS.to_string();
        for seq in 1..=2 {
            let h = row_hash(seq, 10, "cli", "operator_created", "op", "", "", &prev);
            store
                .execute_raw(&format!(
                    "INSERT INTO audit VALUES ({seq}, 10, 'cli', 'operator_created', 'op', '', '', '{prev}', '{h}')"
                ))
                .await
                .unwrap();
            prev = h;
        }
        let audit = Audit::new(store.clone());
        audit.mark_keyed().await.unwrap();
        audit.mark_keyed().await.unwrap();
        audit.append(entry("operator_created", "op3")).await.unwrap();
        let report = verify(&store).await.unwrap();
        assert_eq!(
            (report.rows, report.keyed_from, report.problems.len()),
            (4, Some(3), 0),
            "{:?}",
            report.problems
        );
        let marker = store.audit_rows(2, 1).await.unwrap().remove(0);
        assert_eq!(
            (marker.action.as_str(), marker.detail.as_str()),
            ("audit_chain_keyed", "unkeyed_rows=2")
        );

        // The unkeyed rows cannot be rewritten either: the first keyed row covers them.
        store
            .execute_raw("UPDATE audit SET target = 'mallory' WHERE seq = 1")
            .await
            .unwrap();
        rehash_without_key(&store, 1..=2, false).await;
        let report = verify(&store).await.unwrap();
        assert!(!report.problems.is_empty(), "{report:?}");
        store.close().await;
    }

    #[tokio::test]
    async fn chain_detects_edits_and_deletions() {
        let (_dir, store, audit) = keyed_trail().await;
        append_rows(&audit, "op", 5).await;
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
