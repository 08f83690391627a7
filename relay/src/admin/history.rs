//! The connection history pages: the filtered list and one session's details, and the
//! query-string filter the exports and the API share.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use jiff::tz::TimeZone;

use super::html::{self, esc, t, url, Lang, Text};
use super::ops::OpError;
use super::pages::{op_error, render, render_status};
use super::words;
use super::{Console, Ctx};
use crate::store::{HistoryFilter, PageFrom, SessionRecord};

/// Rows on one history page: a screenful or two, and one cheap indexed query.
pub const HISTORY_PAGE_ROWS: i64 = 50;

/// History filters as they come in a query string (dates as `YYYY-MM-DD`, days in the
/// console's time zone), and the page: `before` / `after` a session's key
/// (`ISSUED_MS.ID`, from the Older / Newer links).
#[derive(Debug, Default, Clone, serde::Deserialize)]
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
    #[serde(default)]
    pub before: String,
    #[serde(default)]
    pub after: String,
}

/// A `YYYY-MM-DD` day in `zone`: its first millisecond and the next day's (23, 24 or 25
/// hours later where the zone changes its clocks).
pub(super) fn day_bounds(zone: &TimeZone, date: &str) -> Result<(i64, i64), OpError> {
    let bad = || OpError::Invalid(format!("{date:?} is not a date like 2026-01-31"));
    let day = jiff::civil::Date::strptime("%Y-%m-%d", date.trim()).map_err(|_| bad())?;
    let start = day.to_zoned(zone.clone()).map_err(|_| bad())?;
    let next = day
        .tomorrow()
        .and_then(|d| d.to_zoned(zone.clone()))
        .map_err(|_| bad())?;
    Ok((start.timestamp().as_millisecond(), next.timestamp().as_millisecond()))
}

/// A date filter field (`from` or `to`) that does not read as a day, in the page's words.
pub(super) fn bad_date(lang: Lang, label: Text, value: &str) -> String {
    format!(
        "{}: \u{201c}{}\u{201d} {}",
        t(lang, label),
        value.trim(),
        t(lang, Text::BadDate)
    )
}

/// The optional `from` / `to` days of a filter as a `[from, to)` range of Unix ms (the "to"
/// day included), or which field is wrong, in the page's words.
pub(super) fn date_range(
    lang: Lang,
    zone: &TimeZone,
    from: &str,
    to: &str,
) -> Result<(Option<i64>, Option<i64>), String> {
    let bound = |s: &str, label: Text, end: bool| -> Result<Option<i64>, String> {
        if s.trim().is_empty() {
            return Ok(None);
        }
        day_bounds(zone, s)
            .map(|(start, next)| Some(if end { next } else { start }))
            .map_err(|_| bad_date(lang, label, s))
    };
    Ok((bound(from, Text::From, false)?, bound(to, Text::To, true)?))
}

/// Which page a `before` / `after` pair asks for; `Err` for a key that is not one the
/// console's links make, or both at once.
pub(super) fn page_from<K>(
    before: &str,
    after: &str,
    parse: impl Fn(&str) -> Option<K>,
) -> Result<Option<PageFrom<K>>, ()> {
    match (before.trim(), after.trim()) {
        ("", "") => Ok(None),
        (b, "") => parse(b).map(|k| Some(PageFrom::Older(k))).ok_or(()),
        ("", a) => parse(a).map(|k| Some(PageFrom::Newer(k))).ok_or(()),
        _ => Err(()),
    }
}

/// Longest session id a page key may carry (ids are far shorter).
const MAX_KEY_ID: usize = 128;

/// A session's page key: `ISSUED_MS.ID`.
fn session_key(r: &SessionRecord) -> String {
    format!("{}.{}", r.issued_at, r.id)
}

fn parse_session_key(s: &str) -> Option<(i64, String)> {
    let (ms, id) = s.split_once('.')?;
    if ms.is_empty() || ms.len() > 19 || !ms.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if id.is_empty() || id.len() > MAX_KEY_ID {
        return None;
    }
    Some((ms.parse().ok()?, id.to_string()))
}

/// One page of a keyset-paged list, newest first, and whether there are rows beyond it
/// each way.
pub(super) struct Paged<T> {
    pub rows: Vec<T>,
    pub newer: bool,
    pub older: bool,
}

impl<T> Paged<T> {
    /// From the rows a page query returned with one row more than `size` asked for:
    /// that extra row (the last going older, the first going newer) says there are more.
    pub(super) fn of<K>(mut rows: Vec<T>, size: usize, page: &Option<PageFrom<K>>) -> Self {
        let more = rows.len() > size;
        match page {
            Some(PageFrom::Newer(_)) => {
                if more {
                    rows.drain(..rows.len() - size);
                }
                Paged {
                    rows,
                    newer: more,
                    older: true,
                }
            }
            Some(PageFrom::Older(_)) | None => {
                rows.truncate(size);
                Paged {
                    rows,
                    newer: page.is_some(),
                    older: more,
                }
            }
        }
    }

    /// The Newer / Older links (`base` ends with the filters' query string), with the
    /// keys of this page's first and last rows; their ids end with `suffix` (a page shows
    /// them above and below its table).
    pub(super) fn links(&self, lang: Lang, base: &str, suffix: &str, key: impl Fn(&T) -> String) -> String {
        let mut out = String::from("<p class=\"pager\">");
        if let (true, Some(first)) = (self.newer, self.rows.first()) {
            out.push_str(&format!(
                "<a id=\"newer{suffix}\" rel=\"prev\" href=\"{}&amp;after={}\">{}</a>",
                esc(base),
                url(&key(first)),
                t(lang, Text::Newer)
            ));
        }
        if let (true, Some(last)) = (self.older, self.rows.last()) {
            out.push_str(&format!(
                "<a id=\"older{suffix}\" rel=\"next\" href=\"{}&amp;before={}\">{}</a>",
                esc(base),
                url(&key(last)),
                t(lang, Text::Older)
            ));
        }
        out.push_str("</p>");
        out
    }
}

impl HistoryQuery {
    /// The filter for exports and the API: at most `limit` rows, dates as days in `zone`,
    /// no paging.
    pub(super) fn filter(&self, zone: &TimeZone, limit: i64) -> Result<HistoryFilter, OpError> {
        let bound = |s: &str, end: bool| -> Result<Option<i64>, OpError> {
            if s.trim().is_empty() {
                Ok(None)
            } else {
                let (start, next) = day_bounds(zone, s)?;
                Ok(Some(if end { next } else { start }))
            }
        };
        Ok(HistoryFilter {
            operator: Some(self.operator.trim().to_string()),
            client_ip: Some(self.client_ip.trim().to_string()),
            from_ms: bound(&self.from, false)?,
            // The "to" day is included.
            to_ms: bound(&self.to, true)?,
            end_reason: Some(self.end_reason.trim().to_string()),
            limit: Some(limit),
            page: None,
        })
    }

    /// The filters (not the page) as a query string.
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

/// The history filter form, with what the admin typed.
fn filter_form(ctx: &Ctx, q: &HistoryQuery) -> String {
    let lang = ctx.lang;
    let reasons: String = std::iter::once(String::from("<option value=\"\">—</option>"))
        .chain(END_REASONS.iter().map(|r| {
            format!(
                "<option value=\"{r}\"{}>{}</option>",
                if q.end_reason == *r { " selected" } else { "" },
                esc(&words::end_reason(lang, r))
            )
        }))
        .collect();
    format!(
        "<form method=\"get\" action=\"/history\" id=\"history-filter\">\
         <label>{} <input name=\"operator\" id=\"f-operator\" value=\"{}\"></label> \
         <label>{} <input name=\"client_ip\" id=\"f-client-ip\" value=\"{}\"></label> \
         <label>{} <input name=\"from\" id=\"f-from\" value=\"{}\" size=\"10\"></label> \
         <label>{} <input name=\"to\" id=\"f-to\" value=\"{}\" size=\"10\"></label> \
         <label>{} <select name=\"end_reason\" id=\"f-end-reason\">{reasons}</select></label> \
         <button id=\"apply-filter\">{}</button> {}</form>",
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
        html::dates_in_zone(lang, &ctx.zone),
    )
}

pub(super) async fn history_page(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let lang = ctx.lang;
    let refused = |message: String| {
        let body = format!("{}{}", filter_form(&ctx, &q), html::form_error(&message));
        render_status(&ctx, StatusCode::BAD_REQUEST, t(lang, Text::History), &body)
    };
    let (from_ms, to_ms) = match date_range(lang, &ctx.zone, &q.from, &q.to) {
        Ok(range) => range,
        Err(message) => return refused(message),
    };
    let Ok(page) = page_from(&q.before, &q.after, parse_session_key) else {
        return refused(t(lang, Text::BadPageLink).to_string());
    };
    let size = HISTORY_PAGE_ROWS as usize;
    let mut filter = HistoryFilter {
        operator: Some(q.operator.trim().to_string()),
        client_ip: Some(q.client_ip.trim().to_string()),
        from_ms,
        to_ms,
        end_reason: Some(q.end_reason.trim().to_string()),
        // One more than a page: whether there is another page that way.
        limit: Some(HISTORY_PAGE_ROWS + 1),
        page: page.clone(),
    };
    let mut paged = match console.shared.store.history(&filter).await {
        Ok(r) => Paged::of(r, size, &page),
        Err(_) => return op_error(&ctx, &OpError::Internal),
    };
    if matches!(page, Some(PageFrom::Newer(_))) && !paged.newer {
        // Back at the top: the first page, full.
        filter.page = None;
        paged = match console.shared.store.history(&filter).await {
            Ok(r) => Paged::of(r, size, &None::<PageFrom<(i64, String)>>),
            Err(_) => return op_error(&ctx, &OpError::Internal),
        };
    }
    let rows: String = paged
        .rows
        .iter()
        .map(|r| {
            format!(
                "<tr><td class=\"t\"><a href=\"/history/{}\">{}</a></td><td class=\"operator\">{}</td><td class=\"client-host\">{}</td><td class=\"client-ip\">{}</td><td class=\"t\">{}</td><td class=\"end-reason\">{}</td><td>{}</td><td class=\"t\">{} / {}</td></tr>",
                url(&r.id),
                html::time(&ctx.zone, Some(r.issued_at)),
                esc(&r.operator),
                esc(r.client_host.as_deref().unwrap_or("")),
                esc(r.client_ip.as_deref().unwrap_or("")),
                html::time(&ctx.zone, r.ended_at),
                esc(&words::end_reason(lang, r.end_reason.as_deref().unwrap_or("live"))),
                esc(&words::permissions(lang, r.granted.as_deref().unwrap_or(""))),
                html::bytes(r.bytes_to_client.max(0) as u64),
                html::bytes(r.bytes_to_operator.max(0) as u64),
            )
        })
        .collect();
    let base = format!("/history?{}", q.query_string());
    let pager = paged.links(lang, &base, "", session_key);
    let pager_below = paged.links(lang, &base, "-below", session_key);
    let table = if paged.rows.is_empty() {
        format!("<p id=\"no-rows\">{}</p>", t(lang, Text::None))
    } else {
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
            &rows,
        )
    };
    let body = format!(
        "{}<p><a id=\"export-csv\" href=\"/history/export.csv?{}\">{}</a></p>\
         <form method=\"get\" action=\"/history/day.zip\"><label>{} <input name=\"date\" id=\"zip-date\" size=\"10\"></label> <button id=\"download-zip\">zip</button></form>\
         {pager}{table}{pager_below}",
        filter_form(&ctx, &q),
        esc(&q.query_string()),
        t(lang, Text::ExportCsv),
        t(lang, Text::DayZip),
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
        ("issued", html::time(&ctx.zone, Some(r.issued_at))),
        ("joined", html::time(&ctx.zone, r.joined_at)),
        ("consented", html::time(&ctx.zone, r.consented_at)),
        ("ended", html::time(&ctx.zone, r.ended_at)),
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
                "<tr><td class=\"file-name\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"t\">{}</td></tr>",
                esc(&f.name),
                html::bytes(f.size.max(0) as u64),
                esc(&words::file_word(lang, &f.direction)),
                html::bytes(f.bytes.max(0) as u64),
                esc(&words::file_word(lang, &f.result)),
                html::time(&ctx.zone, Some(f.at))
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
    fn days_are_days_in_the_console_zone() {
        assert_eq!(
            day_bounds(&TimeZone::UTC, "2023-11-14").unwrap(),
            (1_699_920_000_000, 1_700_006_400_000)
        );
        let tokyo = TimeZone::get("Asia/Tokyo").unwrap();
        // 2023-11-14 00:00 JST is 2023-11-13 15:00 UTC.
        assert_eq!(
            day_bounds(&tokyo, "2023-11-14").unwrap().0,
            1_699_920_000_000 - 9 * 3_600_000
        );
        // A day when the clocks go forward has 23 hours.
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let (start, next) = day_bounds(&berlin, "2026-03-29").unwrap();
        assert_eq!(next - start, 23 * 3_600_000);
        assert!(day_bounds(&TimeZone::UTC, "14/11/2023").is_err());
        assert!(day_bounds(&TimeZone::UTC, "2023-02-30").is_err());
    }

    #[test]
    fn page_keys_are_what_the_links_make_and_nothing_else() {
        assert_eq!(
            parse_session_key("1700000000000.s-a.b"),
            Some((1_700_000_000_000, "s-a.b".to_string()))
        );
        for bad in ["", ".", "12.", ".id", "-5.id", "x1.id", "99999999999999999999.id"] {
            assert_eq!(parse_session_key(bad), None, "{bad:?}");
        }
        assert_eq!(page_from("", "", parse_session_key), Ok(None));
        assert!(page_from("1.a", "2.b", parse_session_key).is_err());
        assert!(matches!(
            page_from("", "5.x", parse_session_key),
            Ok(Some(PageFrom::Newer((5, _))))
        ));
    }

    #[test]
    fn a_page_knows_what_lies_beyond_it() {
        let first = Paged::of((0..4).collect(), 3, &None::<PageFrom<i64>>);
        assert_eq!((first.rows, first.newer, first.older), (vec![0, 1, 2], false, true));
        let last = Paged::of(vec![7, 8], 3, &Some(PageFrom::Older(6)));
        assert_eq!((last.rows, last.newer, last.older), (vec![7, 8], true, false));
        let up = Paged::of(vec![1, 2, 3, 4], 3, &Some(PageFrom::Newer(5)));
        assert_eq!((up.rows, up.newer, up.older), (vec![2, 3, 4], true, true));
    }
}
