//! Wall-clock time as stored in the database and the audit trail. A leaf: it imports
//! nothing of the crate, so any module may use it without a circle.

/// Now, in Unix milliseconds (UTC).
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` (UTC); `-` when out of range.
pub fn format_utc(at_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(at_ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}
