//! Wall-clock time as stored in the database and the audit trail. A leaf: it imports
//! nothing of the crate, so any module may use it without a circle.

/// Now, in Unix milliseconds (UTC).
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
