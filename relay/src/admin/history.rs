//! The connection history pages: the filtered list and one session's details, and the
//! query-string filter the exports and the API share.

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Extension;

use super::html::{self, esc, t, url, Text};
use super::ops::OpError;
use super::pages::{op_error, render};
use super::words;
use super::{Console, Ctx};
use crate::store::HistoryFilter;

/// Rows shown on one history page.
pub const HISTORY_PAGE_ROWS: i64 = 500;

/// History filters as they come in a query string (dates as `YYYY-MM-DD`, UTC).
#[derive(Debug, Default, serde::Deserialize)]
pub struct HistoryQuery {
    #[serde(default)]
    pub operator: String,
    #[serde(default)]
    pub client_ip: String,
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
    #[serde(default)]
    pub end_reason: String,
}

/// The first millisecond of a `YYYY-MM-DD` day, UTC.
pub(super) fn day_start_ms(date: &str) -> Result<i64, OpError> {
    chrono::NaiveDate::parse_from_str(date.trim(), "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
        .ok_or_else(|| OpError::Invalid(format!("{date:?} is not a date like 2026-01-31")))
}

/// One day in milliseconds.
pub(super) const DAY_MS: i64 = 24 * 3600 * 1000;

impl HistoryQuery {
    pub(super) fn filter(&self, limit: i64) -> Result<HistoryFilter, OpError> {
        let bound = |s: &str, extra: i64| -> Result<Option<i64>, OpError> {
            if s.trim().is_empty() {
                Ok(None)
            } else {
                Ok(Some(day_start_ms(s)? + extra))
            }
        };
        Ok(HistoryFilter {
            operator: Some(self.operator.trim().to_string()),
            client_ip: Some(self.client_ip.trim().to_string()),
            from_ms: bound(&self.from, 0)?,
            // The "to" day is included.
            to_ms: bound(&self.to, DAY_MS)?,
            end_reason: Some(self.end_reason.trim().to_string()),
            limit: Some(limit),
        })
    }

    pub(super) fn query_string(&self) -> String {
        format!(
            "operator={}&client_ip={}&from={}&to={}&end_reason={}",
            url(&self.operator),
            url(&self.client_ip),
            url(&self.from),
            url(&self.to),
            url(&self.end_reason)
        )
    }
}

/// End reasons offered in the history filter.
pub(super) const END_REASONS: &[&str] = &[
    "live",
    "operator_ended",
    "client_ended",
    "consent_denied",
    "consent_timeout",
    "expired",
    "operator_disconnected",
    "client_disconnected",
    "idle_timeout",
    "relay_shutdown",
    "protocol_error",
    "admin_ended",
    "certificate_revoked",
];

pub(super) async fn history_page(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let lang = ctx.lang;
    let filter = match q.filter(HISTORY_PAGE_ROWS) {
        Ok(f) => f,
        Err(e) => return op_error(&ctx, &e),
    };
    let records = match console.shared.store.history(&filter).await {
        Ok(r) => r,
        Err(_) => return op_error(&ctx, &OpError::Internal),
    };
    let rows: String = records
        .iter()
        .map(|r| {
            format!(
                "<tr><td><a href=\"/history/{}\">{}</a></td><td class=\"operator\">{}</td><td class=\"client-host\">{}</td><td class=\"client-ip\">{}</td><td>{}</td><td class=\"end-reason\">{}</td><td>{}</td><td>{} / {}</td></tr>",
                url(&r.id),
                html::time(Some(r.issued_at)),
                esc(&r.operator),
                esc(r.client_host.as_deref().unwrap_or("")),
                esc(r.client_ip.as_deref().unwrap_or("")),
                html::time(r.ended_at),
                esc(&words::end_reason(lang, r.end_reason.as_deref().unwrap_or("live"))),
                esc(&words::permissions(lang, r.granted.as_deref().unwrap_or(""))),
                html::bytes(r.bytes_to_client.max(0) as u64),
                html::bytes(r.bytes_to_operator.max(0) as u64),
            )
        })
        .collect();
    let reasons: String = std::iter::once(String::from("<option value=\"\">—</option>"))
        .chain(END_REASONS.iter().map(|r| {
            format!(
                "<option value=\"{r}\"{}>{}</option>",
                if q.end_reason == *r { " selected" } else { "" },
                esc(&words::end_reason(lang, r))
            )
        }))
        .collect();
    let body = format!(
        "<form method=\"get\" action=\"/history\" id=\"history-filter\">\
         <label>{} <input name=\"operator\" id=\"f-operator\" value=\"{}\"></label> \
         <label>{} <input name=\"client_ip\" id=\"f-client-ip\" value=\"{}\"></label> \
         <label>{} <input name=\"from\" id=\"f-from\" value=\"{}\" size=\"10\"></label> \
         <label>{} <input name=\"to\" id=\"f-to\" value=\"{}\" size=\"10\"></label> \
         <label>{} <select name=\"end_reason\" id=\"f-end-reason\">{reasons}</select></label> \
         <button id=\"apply-filter\">{}</button></form>\
         <p><a id=\"export-csv\" href=\"/history/export.csv?{}\">{}</a></p>\
         <form method=\"get\" action=\"/history/day.zip\"><label>{} <input name=\"date\" id=\"zip-date\" size=\"10\"></label> <button id=\"download-zip\">zip</button></form>\
         {}",
        t(lang, Text::Operator),
        esc(&q.operator),
        t(lang, Text::ClientIp),
        esc(&q.client_ip),
        t(lang, Text::From),
        esc(&q.from),
        t(lang, Text::To),
        esc(&q.to),
        t(lang, Text::EndReason),
        t(lang, Text::Filter),
        esc(&q.query_string()),
        t(lang, Text::ExportCsv),
        t(lang, Text::DayZip),
        html::table(
            "history",
            &[
                t(lang, Text::Issued),
                t(lang, Text::Operator),
                t(lang, Text::ClientHost),
                t(lang, Text::ClientIp),
                t(lang, Text::Ended),
                t(lang, Text::EndReason),
                t(lang, Text::Granted),
                t(lang, Text::Bytes),
            ],
            &rows
        ),
    );
    render(&ctx, t(lang, Text::History), &body)
}

pub(super) async fn session_page(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    let lang = ctx.lang;
    let r = match console.shared.store.session(&id).await {
        Ok(Some(r)) => r,
        Ok(None) => return op_error(&ctx, &OpError::NotFound("no session with this id".into())),
        Err(e) => return op_error(&ctx, &e.into()),
    };
    let files = console.shared.store.session_files(&id).await.unwrap_or_default();
    let pairs: Vec<(&str, String)> = vec![
        ("session", r.id.clone()),
        ("operator", r.operator.clone()),
        (
            "operator_ip",
            format!("{}:{} → :{}", r.operator_ip, r.operator_port, r.operator_relay_port),
        ),
        ("client_host", r.client_host.clone().unwrap_or_default()),
        (
            "client_ip",
            format!(
                "{}:{} → :{}",
                r.client_ip.clone().unwrap_or_default(),
                r.client_port.unwrap_or(0),
                r.client_relay_port.unwrap_or(0)
            ),
        ),
        ("requested", words::permissions(lang, &r.requested)),
        (
            "granted",
            r.granted
                .as_deref()
                .map(|g| words::permissions(lang, g))
                .unwrap_or_default(),
        ),
        ("issued", html::time(Some(r.issued_at))),
        ("joined", html::time(r.joined_at)),
        ("consented", html::time(r.consented_at)),
        ("ended", html::time(r.ended_at)),
        (
            "end_reason",
            words::end_reason(lang, r.end_reason.as_deref().unwrap_or("live")),
        ),
        ("pauses", r.pauses.to_string()),
        ("bytes_to_client", html::bytes(r.bytes_to_client.max(0) as u64)),
        ("bytes_to_operator", html::bytes(r.bytes_to_operator.max(0) as u64)),
    ];
    let table: String = pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "<tr><th>{}</th><td id=\"d-{k}\">{}</td></tr>",
                words::session_field(lang, k),
                esc(v)
            )
        })
        .collect();
    let file_rows: String = files
        .iter()
        .map(|f| {
            format!(
                "<tr><td class=\"file-name\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&f.name),
                html::bytes(f.size.max(0) as u64),
                esc(&words::file_word(lang, &f.direction)),
                html::bytes(f.bytes.max(0) as u64),
                esc(&words::file_word(lang, &f.result)),
                html::time(Some(f.at))
            )
        })
        .collect();
    let files_html = if files.is_empty() {
        format!("<p>{}</p>", t(lang, Text::None))
    } else {
        let heads = [
            t(lang, Text::File),
            t(lang, Text::Size),
            t(lang, Text::Direction),
            t(lang, Text::Bytes),
            t(lang, Text::Result),
            t(lang, Text::Time),
        ];
        html::table("files", &heads, &file_rows)
    };
    render(
        &ctx,
        t(lang, Text::Detail),
        &format!(
            "<table id=\"session\">{table}</table><h2>{}</h2>{files_html}",
            t(lang, Text::Files)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(day_start_ms("2023-11-14").unwrap(), 1_699_920_000_000);
        assert!(day_start_ms("14/11/2023").is_err());
    }
}
