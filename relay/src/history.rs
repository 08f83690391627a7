//! The connection history: events the sessions emit, a single writer task that applies
//! them to the store in order, and the table/CSV/JSON views `tsunagu-relay history` prints.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use tokio::sync::mpsc;

use crate::audit::{self, Audit};
use crate::store::{SessionRecord, Store};

/// Pending history changes held at most, e.g. while the database is unreachable: at a
/// few events per session, minutes of a busy node's sessions.
pub const HISTORY_QUEUE: usize = 16_384;

/// How many queued changes the writer applies in one transaction.
const BATCH: usize = 512;

/// How long the writer gathers changes, from the first of them, before writing them: a
/// busy relay writes one transaction (and one for their audit entries) every so often
/// instead of one per change, and those writes keep out of the way of the sessions being
/// set up meanwhile. Nothing is lost by waiting (the last sink going away or a flush ends
/// the gathering); the console and `history` show a change at most this much later, and a
/// session's end without waiting.
const GATHER: std::time::Duration = std::time::Duration::from_millis(50);

/// How long an event waits for room in a full queue while the database is being written
/// (a wave of sessions ending at once): the session that records it waits, nothing is
/// lost. While the database is unreachable a full queue loses the event at once instead
/// (counted in `tsunagu_history_events_lost_total` and logged), so sessions never stall
/// behind a database that is down.
const ROOM_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The first pause before writing again to a database that could not be reached; it
/// doubles up to [`RETRY_MAX`].
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(100);
/// The longest pause between attempts, so a database that is back is used within this.
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// One change to a session's history row; the store defines what it can write.
pub use crate::store::SessionEvent as HistoryEvent;

/// What the writer task receives: a change, or a barrier answered once everything queued
/// before it is written.
enum Message {
    Event(HistoryEvent),
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// What the console shows about a live session, kept from the history events as they pass
/// (the session itself is owned by the session module).
#[derive(Debug, Clone, serde::Serialize)]
pub struct LiveInfo {
    pub id: String,
    pub operator: String,
    pub operator_ip: String,
    pub issued_at: i64,
    pub client_host: Option<String>,
    pub client_ip: Option<String>,
    pub joined_at: Option<i64>,
    pub consented_at: Option<i64>,
    pub granted: Option<String>,
}

/// Live sessions by id, as the history writer last saw them.
pub type LiveMap = Arc<DashMap<String, LiveInfo>>;

/// Sends history events to the writer task.
#[derive(Clone, Debug)]
pub struct HistorySink {
    tx: mpsc::Sender<Message>,
    /// Set by the writer while the database cannot be reached.
    unreachable: Arc<AtomicBool>,
}

impl HistorySink {
    /// Queues one event for the writer. A session never waits on the database itself:
    /// only when the queue is full and the writer is working through it does the event
    /// wait for room (up to [`ROOM_WAIT`]); when the database is unreachable and the queue
    /// full, the event is lost, counted and logged.
    pub async fn record(&self, event: HistoryEvent) {
        let event = match self.tx.try_send(Message::Event(event)) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("history writer has stopped; a history event was lost");
                return;
            }
            Err(mpsc::error::TrySendError::Full(event)) => event,
        };
        if !self.unreachable.load(Ordering::Relaxed) {
            metrics::counter!("tsunagu_history_waits_total").increment(1);
            match self.tx.send_timeout(event, ROOM_WAIT).await {
                Ok(()) => return,
                Err(mpsc::error::SendTimeoutError::Closed(_)) => {
                    tracing::error!("history writer has stopped; a history event was lost");
                    return;
                }
                Err(mpsc::error::SendTimeoutError::Timeout(_)) => {}
            }
        }
        metrics::counter!("tsunagu_history_events_lost_total").increment(1);
        tracing::error!(
            queued = HISTORY_QUEUE,
            "the history queue is full (is the database down?); a history event was lost"
        );
    }

    /// Waits until every event recorded so far is in the database.
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Message::Barrier(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Starts the writer; it ends when every sink is dropped, after writing what is queued.
/// Besides the history rows it keeps `live` current and audits code issue, join and the
/// client's consent decisions. Changes are gathered for [`GATHER`] after the first of them
/// (a session's end is written at once) and written together, up to [`BATCH`] in one
/// transaction, their audit entries in one more.
pub fn start_writer(store: Store, audit: Audit, live: LiveMap) -> (HistorySink, tokio::task::JoinHandle<()>) {
    start_writer_gathering(store, audit, live, GATHER)
}

/// [`start_writer`] with changes gathered for `gather`.
fn start_writer_gathering(
    store: Store,
    audit: Audit,
    live: LiveMap,
    gather: std::time::Duration,
) -> (HistorySink, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Message>(HISTORY_QUEUE);
    let unreachable = Arc::new(AtomicBool::new(false));
    let flag = unreachable.clone();
    let task = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(BATCH);
        let mut entries = Vec::new();
        while let Some(first) = rx.recv().await {
            // Take what else comes within the gathering time, up to a batch. A barrier ends
            // the batch at once (it is answered once what came before it is written), and
            // so does the last sink going away, and so does a session's end: whoever looks
            // at the history once a session is over finds it there.
            let until = tokio::time::Instant::now() + gather;
            let mut barrier = None;
            let mut ended = false;
            let mut next = Some(first);
            while let Some(message) = next {
                match message {
                    Message::Event(event) => {
                        ended |= matches!(event, HistoryEvent::Ended { .. });
                        batch.push(event);
                    }
                    Message::Barrier(done) => {
                        barrier = Some(done);
                        break;
                    }
                }
                next = if batch.len() >= BATCH {
                    None
                } else if ended {
                    rx.try_recv().ok()
                } else {
                    tokio::time::timeout_at(until, rx.recv()).await.ok().flatten()
                };
            }
            write(&store, &flag, &batch).await;
            entries.extend(batch.drain(..).filter_map(|event| track(&live, &event)));
            append_audit(&audit, &entries).await;
            entries.clear();
            if let Some(done) = barrier {
                let _ = done.send(());
            }
        }
    });
    (HistorySink { tx, unreachable }, task)
}

/// Writes `events` in one transaction. An unreachable database is waited out (the queue
/// holds what comes meanwhile, `unreachable` tells the sinks); when the database refuses
/// the batch, each change is written alone so one bad change costs only itself.
async fn write(store: &Store, unreachable: &AtomicBool, events: &[HistoryEvent]) {
    if events.is_empty() {
        return;
    }
    let mut pause = RETRY_FIRST;
    loop {
        match store.apply_all(events).await {
            Ok(()) => break,
            Err(e) if e.is_unavailable() => {
                unreachable.store(true, Ordering::Relaxed);
                tracing::warn!(error = %e, retry_in = ?pause, "the database is unreachable; history waits");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
            }
            Err(e) if events.len() > 1 => {
                tracing::warn!(error = %e, events = events.len(), "a history batch was refused; writing its changes one at a time");
                for event in events {
                    Box::pin(write(store, unreachable, std::slice::from_ref(event))).await;
                }
                break;
            }
            Err(e) => {
                tracing::error!(error = %e, "could not write history");
                break;
            }
        }
    }
    unreachable.store(false, Ordering::Relaxed);
}

/// Appends a batch's audit entries, waiting out an unreachable database.
async fn append_audit(audit: &Audit, entries: &[audit::Entry]) {
    let mut pause = RETRY_FIRST;
    loop {
        match audit.append_all(entries).await {
            Ok(_) => break,
            Err(e) if e.is_unavailable() => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
            }
            Err(e) => {
                tracing::error!(error = %e, entries = entries.len(), "could not write to the audit trail");
                break;
            }
        }
    }
}

/// Updates the live map from one event and says what to audit.
fn track(live: &LiveMap, event: &HistoryEvent) -> Option<audit::Entry> {
    use HistoryEvent as E;
    match event {
        E::File { .. } => None,
        E::Issued {
            id,
            operator,
            operator_addr,
            requested,
            at_ms,
            ..
        } => {
            live.insert(
                id.clone(),
                LiveInfo {
                    id: id.clone(),
                    operator: operator.clone(),
                    operator_ip: operator_addr.ip().to_string(),
                    issued_at: *at_ms,
                    client_host: None,
                    client_ip: None,
                    joined_at: None,
                    consented_at: None,
                    granted: None,
                },
            );
            Some(audit::Entry {
                actor: format!("operator:{operator}"),
                action: "code_issued",
                target: id.clone(),
                ip: operator_addr.ip().to_string(),
                detail: format!("requested={requested}"),
            })
        }
        E::Joined {
            id,
            client_host,
            client_addr,
            at_ms,
            ..
        } => {
            if let Some(mut info) = live.get_mut(id) {
                info.client_host = Some(client_host.clone());
                info.client_ip = Some(client_addr.ip().to_string());
                info.joined_at = Some(*at_ms);
            }
            Some(audit::Entry {
                actor: "client".into(),
                action: "code_joined",
                target: id.clone(),
                ip: client_addr.ip().to_string(),
                detail: format!("host={client_host}"),
            })
        }
        E::Consented { id, granted, at_ms } => {
            let ip = live.get_mut(id).map(|mut info| {
                info.consented_at = Some(*at_ms);
                info.granted = Some(granted.to_string());
                info.client_ip.clone().unwrap_or_default()
            });
            Some(audit::Entry {
                actor: "client".into(),
                action: "consent_granted",
                target: id.clone(),
                ip: ip.unwrap_or_default(),
                detail: format!("granted={granted}"),
            })
        }
        E::Resumed {
            id,
            role,
            addr,
            resumes,
            ..
        } => {
            let actor = match *role {
                "operator" => live
                    .get(id)
                    .map(|i| format!("operator:{}", i.operator))
                    .unwrap_or_else(|| "operator".into()),
                _ => "client".into(),
            };
            Some(audit::Entry {
                actor,
                action: "session_resumed",
                target: id.clone(),
                ip: addr.ip().to_string(),
                detail: format!("role={role} resumes={resumes}"),
            })
        }
        E::Ended { id, reason, .. } => {
            let info = live.remove(id).map(|(_, v)| v);
            matches!(*reason, "consent_denied" | "consent_timeout").then(|| audit::Entry {
                actor: "client".into(),
                action: "consent_denied",
                target: id.clone(),
                ip: info.and_then(|i| i.client_ip).unwrap_or_default(),
                detail: format!("reason={reason}"),
            })
        }
    }
}

pub use crate::time::now_ms;

fn time(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

/// The columns of the table and CSV views, in order.
const COLUMNS: [&str; 18] = [
    "session",
    "operator",
    "operator_ip",
    "client_host",
    "client_ip",
    "client_port",
    "relay_port",
    "issued",
    "joined",
    "consented",
    "ended",
    "granted",
    "pauses",
    "bytes_to_client",
    "bytes_to_operator",
    "end_reason",
    "requested",
    "resumes",
];

fn cells(r: &SessionRecord) -> [String; 18] {
    [
        r.id.clone(),
        r.operator.clone(),
        r.operator_ip.clone(),
        r.client_host.clone().unwrap_or_default(),
        r.client_ip.clone().unwrap_or_default(),
        r.client_port.map(|p| p.to_string()).unwrap_or_default(),
        r.client_relay_port
            .map(|p| p.to_string())
            .unwrap_or_else(|| r.operator_relay_port.to_string()),
        time(Some(r.issued_at)),
        time(r.joined_at),
        time(r.consented_at),
        time(r.ended_at),
        r.granted.clone().unwrap_or_default(),
        r.pauses.to_string(),
        r.bytes_to_client.to_string(),
        r.bytes_to_operator.to_string(),
        r.end_reason.clone().unwrap_or_else(|| "live".into()),
        r.requested.clone(),
        r.resumes.to_string(),
    ]
}

/// Quotes a CSV field when needed (RFC 4180), and defuses spreadsheet formulas: a host name
/// is chosen by the client and must not run as a formula when an admin opens the export.
pub(crate) fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// Renders the history in one of the formats of `tsunagu-relay history --format`.
/// One session as a JSON object, its times written as UTC text.
fn record_json(r: &SessionRecord) -> Result<serde_json::Value, String> {
    let mut v = serde_json::to_value(r).map_err(|e| e.to_string())?;
    if let Some(obj) = v.as_object_mut() {
        for key in ["issued_at", "joined_at", "consented_at", "ended_at"] {
            let ms = obj.get(key).and_then(|x| x.as_i64());
            obj.insert(
                key.to_string(),
                ms.map(|m| time(Some(m)).into()).unwrap_or(serde_json::Value::Null),
            );
        }
    }
    Ok(v)
}

pub fn render(records: &[SessionRecord], format: &str) -> Result<String, String> {
    match format {
        "json" => {
            let mut out = String::new();
            for r in records {
                out.push_str(&record_json(r)?.to_string());
                out.push('\n');
            }
            Ok(out)
        }
        "csv" => {
            let mut out = COLUMNS.join(",");
            out.push('\n');
            for r in records {
                out.push_str(&cells(r).iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(","));
                out.push('\n');
            }
            Ok(out)
        }
        "table" => {
            let rows: Vec<[String; 18]> = records.iter().map(cells).collect();
            // The table leaves out the long session id and the requested set to stay readable.
            let shown: Vec<usize> = (1..16).collect();
            let mut widths: Vec<usize> = shown.iter().map(|&i| COLUMNS[i].len()).collect();
            for row in &rows {
                for (w, &i) in widths.iter_mut().zip(&shown) {
                    *w = (*w).max(row[i].chars().count());
                }
            }
            let line = |vals: Vec<&str>| {
                let mut s = vals
                    .iter()
                    .zip(&widths)
                    .map(|(v, w)| format!("{v:<w$}", w = *w))
                    .collect::<Vec<_>>()
                    .join("  ");
                s.truncate(s.trim_end().len());
                s.push('\n');
                s
            };
            let mut out = line(shown.iter().map(|&i| COLUMNS[i]).collect());
            for row in &rows {
                // Control characters in a client-chosen host name must not move the cursor.
                let clean: Vec<String> = shown
                    .iter()
                    .map(|&i| row[i].chars().map(|c| if c.is_control() { '?' } else { c }).collect())
                    .collect();
                out.push_str(&line(clean.iter().map(String::as_str).collect()));
            }
            Ok(out)
        }
        other => Err(format!("unknown format {other:?}: use table, csv or json")),
    }
}

/// [`render`] with each session's file transfers (`files[i]` belongs to `records[i]`), as
/// `tsunagu-relay history` prints them: JSON gets a `files` array per session; CSV a last
/// column `files` (`name (size B, direction, result)`, separated by `; `); the table an
/// indented line per file under its session.
pub fn render_with_files(
    records: &[SessionRecord],
    files: &[Vec<crate::store::FileRecord>],
    format: &str,
) -> Result<String, String> {
    let none = Vec::new();
    let files_of = |i: usize| files.get(i).unwrap_or(&none);
    let one_line = |f: &crate::store::FileRecord| {
        let name: String = f.name.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
        format!("{name} ({} B, {}, {})", f.size, f.direction, f.result)
    };
    match format {
        "json" => {
            let mut out = String::new();
            for (i, r) in records.iter().enumerate() {
                let mut v = record_json(r)?;
                let list: Vec<serde_json::Value> = files_of(i)
                    .iter()
                    .map(|f| {
                        serde_json::json!({
                            "name": f.name, "size": f.size, "direction": f.direction,
                            "bytes": f.bytes, "result": f.result, "at": time(Some(f.at)),
                        })
                    })
                    .collect();
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("files".into(), list.into());
                }
                out.push_str(&v.to_string());
                out.push('\n');
            }
            Ok(out)
        }
        "csv" => {
            // Built from the cells again: a quoted cell may hold a line break.
            let mut out = COLUMNS.join(",");
            out.push_str(",files\n");
            for (i, r) in records.iter().enumerate() {
                let mut row: Vec<String> = cells(r).iter().map(|c| csv_field(c)).collect();
                let list: Vec<String> = files_of(i).iter().map(one_line).collect();
                row.push(csv_field(&list.join("; ")));
                out.push_str(&row.join(","));
                out.push('\n');
            }
            Ok(out)
        }
        _ => {
            let plain = render(records, format)?;
            let mut out = String::new();
            // One header line, then one line per session (control characters made inert).
            for (i, line) in plain.lines().enumerate() {
                out.push_str(line);
                out.push('\n');
                if i > 0 {
                    for f in files_of(i - 1) {
                        out.push_str(&format!("    file: {}\n", one_line(f)));
                    }
                }
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::keyed_store;

    /// A wave of sessions ending at once (more than the queue holds, recorded from many
    /// tasks at once) on SQLite: every end reaches the history, none is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wave_of_sessions_ending_at_once_loses_no_history() {
        use crate::store::SessionEvent as E;
        const SESSIONS: usize = HISTORY_QUEUE + 3_616;
        let dir = tempfile::tempdir().unwrap();
        // Ended sessions are not audited: the store needs no keys.
        let store = Store::open(&dir.path().join("h.db")).await.unwrap();
        let issued: Vec<E> = (0..SESSIONS)
            .map(|i| E::Issued {
                id: format!("s{i}"),
                operator: "alice".into(),
                operator_addr: "192.0.2.1:5000".parse().unwrap(),
                relay_port: 7615,
                requested: tsunagu_proto::PermissionSet::ALL,
                at_ms: 1_700_000_000_000 + i as i64,
            })
            .collect();
        store.apply_all(&issued).await.unwrap();
        let (sink, writer) = start_writer(store.clone(), Audit::new(store.clone()), LiveMap::default());
        let mut ends = Vec::new();
        for task in 0..64 {
            let sink = sink.clone();
            ends.push(tokio::spawn(async move {
                for i in (task..SESSIONS).step_by(64) {
                    sink.record(E::Ended {
                        id: format!("s{i}"),
                        reason: "client_ended",
                        counters: Default::default(),
                        granted: None,
                        at_ms: 1_700_000_100_000,
                    })
                    .await;
                }
            }));
        }
        for end in ends {
            end.await.unwrap();
        }
        sink.flush().await;
        let filter = crate::store::HistoryFilter {
            limit: Some(SESSIONS as i64 * 2),
            ..Default::default()
        };
        let rows = store.history(&filter).await.unwrap();
        assert_eq!(rows.len(), SESSIONS);
        let open: Vec<&str> = rows
            .iter()
            .filter(|r| r.ended_at.is_none())
            .map(|r| r.id.as_str())
            .collect();
        assert!(
            open.is_empty(),
            "{} sessions have no end in the history, e.g. {:?}",
            open.len(),
            &open[..open.len().min(5)]
        );
        drop(sink);
        writer.await.unwrap();
    }

    /// One session's code issue, join and consent, as a relay records them.
    fn pairing(id: &str) -> [HistoryEvent; 3] {
        use crate::store::SessionEvent as E;
        [
            E::Issued {
                id: id.into(),
                operator: "alice".into(),
                operator_addr: "192.0.2.1:5000".parse().unwrap(),
                relay_port: 7615,
                requested: tsunagu_proto::PermissionSet::ALL,
                at_ms: 1_700_000_000_000,
            },
            E::Joined {
                id: id.into(),
                client_host: "pc".into(),
                client_addr: "198.51.100.2:6000".parse().unwrap(),
                relay_port: 7615,
                at_ms: 1_700_000_000_010,
            },
            E::Consented {
                id: id.into(),
                granted: tsunagu_proto::PermissionSet::ALL,
                at_ms: 1_700_000_000_020,
            },
        ]
    }

    /// What the audit trail holds, as (action, target), oldest first.
    async fn audited(store: &Store) -> Vec<(String, String)> {
        let rows = store.audit_rows(0, 1_000).await.unwrap();
        rows.into_iter().map(|r| (r.action, r.target)).collect()
    }

    /// Changes recorded and left (no flush) reach the history, the audit trail (in order,
    /// a valid chain) and the console's live view on their own, soon after.
    #[tokio::test]
    async fn changes_reach_the_history_and_the_audit_trail_without_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let store = keyed_store(dir.path()).await;
        let live = LiveMap::default();
        let (sink, writer) = start_writer(store.clone(), Audit::new(store.clone()), live.clone());
        for id in ["s1", "s2"] {
            for event in pairing(id) {
                sink.record(event).await;
            }
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while audited(&store).await.len() < 6 {
            assert!(std::time::Instant::now() < deadline, "the changes were never written");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let expected: Vec<(String, String)> = ["s1", "s2"]
            .iter()
            .flat_map(|id| ["code_issued", "code_joined", "consent_granted"].map(|a| (a.to_string(), id.to_string())))
            .collect();
        assert_eq!(audited(&store).await, expected);
        let report = audit::verify(&store).await.unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        let rows = store.history(&crate::store::HistoryFilter::default()).await.unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows
            .iter()
            .all(|r| r.consented_at.is_some() && r.client_host.as_deref() == Some("pc")));
        assert_eq!(
            live.get("s2").and_then(|i| i.granted.clone()),
            Some(tsunagu_proto::PermissionSet::ALL.to_string())
        );
        drop(sink);
        writer.await.unwrap();
    }

    /// A session's end is written at once, with what was gathered before it; other changes
    /// wait for the gathering time (an hour here) or a flush.
    #[tokio::test]
    async fn a_sessions_end_is_written_at_once_and_other_changes_when_gathered() {
        let dir = tempfile::tempdir().unwrap();
        let store = keyed_store(dir.path()).await;
        let hour = std::time::Duration::from_secs(3600);
        let (sink, writer) = start_writer_gathering(store.clone(), Audit::new(store.clone()), LiveMap::default(), hour);
        let history = || async { store.history(&crate::store::HistoryFilter::default()).await.unwrap() };
        for event in pairing("s1") {
            sink.record(event).await;
        }
        sink.record(HistoryEvent::Ended {
            id: "s1".into(),
            reason: "operator_ended",
            counters: Default::default(),
            granted: None,
            at_ms: 1_700_000_000_030,
        })
        .await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // The rows first, then their audit entries, each soon after.
        while !history().await.iter().any(|r| r.ended_at.is_some()) || audited(&store).await.len() < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "the session's end waited for the gathering"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let rows = history().await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].end_reason.as_deref(), Some("operator_ended"));
        assert!(rows[0].consented_at.is_some());
        assert_eq!(audited(&store).await.len(), 3);
        // Another session's set-up, with no end: gathered, not yet written...
        for event in pairing("s2") {
            sink.record(event).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(history().await.len(), 1, "written before its gathering time");
        // ...until a flush.
        sink.flush().await;
        assert_eq!(history().await.len(), 2);
        assert_eq!(audited(&store).await.len(), 6);
        drop(sink);
        writer.await.unwrap();
    }

    /// A relay that stops while its writer is still gathering changes writes them all
    /// before the writer ends: none of what was recorded is lost.
    #[tokio::test]
    async fn a_relay_that_stops_writes_what_it_was_gathering() {
        let dir = tempfile::tempdir().unwrap();
        let store = keyed_store(dir.path()).await;
        let (sink, writer) = start_writer(store.clone(), Audit::new(store.clone()), LiveMap::default());
        for event in pairing("s1") {
            sink.record(event).await;
        }
        drop(sink);
        writer.await.unwrap();
        let rows = store.history(&crate::store::HistoryFilter::default()).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert!(rows[0].consented_at.is_some());
        assert_eq!(audited(&store).await.len(), 3);
    }

    /// A change the database refuses costs only itself: the rest of its batch is written.
    #[tokio::test]
    async fn a_refused_change_does_not_take_its_batch_with_it() {
        use crate::store::SessionEvent as E;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("h.db")).await.unwrap();
        let issued = |id: &str| E::Issued {
            id: id.into(),
            operator: "alice".into(),
            operator_addr: "192.0.2.1:5000".parse().unwrap(),
            relay_port: 7615,
            requested: tsunagu_proto::PermissionSet::ALL,
            at_ms: 1_700_000_000_000,
        };
        // The second `a` breaks the primary key: the batch is refused as a whole.
        let batch = [issued("a"), issued("a"), issued("b")];
        assert!(store.apply_all(&batch).await.is_err());
        write(&store, &AtomicBool::new(false), &batch).await;
        let filter = crate::store::HistoryFilter::default();
        let mut ids: Vec<String> = store
            .history(&filter)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        ids.sort();
        assert_eq!(ids, ["a", "b"]);
    }

    #[test]
    fn the_cli_history_shows_each_sessions_files_in_every_format() {
        let file = crate::store::FileRecord {
            session_id: "s1".into(),
            name: "report\u{1b}.pdf".into(),
            size: 1200,
            direction: "to_client".into(),
            bytes: 1200,
            result: "completed".into(),
            at: 1_700_000_000_000,
        };
        let records = [record()];
        let files = [vec![file]];
        let json = render_with_files(&records, &files, "json").unwrap();
        let v: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
        assert_eq!(v["files"][0]["name"], "report\u{1b}.pdf");
        assert_eq!(v["files"][0]["result"], "completed");
        let csv = render_with_files(&records, &files, "csv").unwrap();
        assert!(csv.lines().next().unwrap().ends_with(",files"));
        assert!(csv.contains("report?.pdf (1200 B, to_client, completed)"), "{csv}");
        let table = render_with_files(&records, &files, "table").unwrap();
        assert!(
            table.contains("    file: report?.pdf (1200 B, to_client, completed)"),
            "{table}"
        );
        assert!(render_with_files(&records, &files, "xml").is_err());
    }

    fn record() -> SessionRecord {
        SessionRecord {
            id: "s1".into(),
            operator: "alice".into(),
            operator_ip: "127.0.0.1".into(),
            operator_port: 5000,
            operator_relay_port: 7615,
            requested: "view,control".into(),
            client_host: Some("=HYPERLINK(\"x\"),\u{1b}[2J".into()),
            client_ip: Some("127.0.0.2".into()),
            client_port: Some(6000),
            client_relay_port: Some(443),
            granted: Some("view".into()),
            issued_at: 1_700_000_000_000,
            joined_at: Some(1_700_000_001_000),
            consented_at: None,
            ended_at: Some(1_700_000_002_000),
            pauses: 2,
            bytes_to_client: 10,
            bytes_to_operator: 20,
            end_reason: Some("client_ended".into()),
            resumes: 1,
        }
    }

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        let out = render(&[record()], "csv").unwrap();
        let line = out.lines().nth(1).unwrap();
        assert!(line.contains("\"'=HYPERLINK(\"\"x\"\"),\u{1b}[2J\""), "{line}");
        assert!(line.contains("2023-11-14T22:13:20.000Z"));
    }

    #[test]
    fn table_and_json() {
        let table = render(&[record()], "table").unwrap();
        assert!(table.starts_with("operator"));
        assert!(table.contains("client_ended") && !table.contains('\u{1b}'));
        let json: serde_json::Value = serde_json::from_str(render(&[record()], "json").unwrap().trim()).unwrap();
        assert_eq!(json["pauses"], 2);
        assert_eq!(json["consented_at"], serde_json::Value::Null);
        assert!(render(&[], "xml").is_err());
    }
}
