//! The audit trail page: whether the hash chain is intact, and the entries a page at a
//! time, newest first, filtered by actor and by days in the console's time zone.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;

use super::history::{date_range, page_from, Paged};
use super::html::{self, esc, t, url, Text};
use super::ops::OpError;
use super::pages::{op_error, render, render_status};
use super::{Console, Ctx};
use crate::audit;
use crate::store::{AuditFilter, AuditRow, PageFrom};

/// Entries on one audit page.
pub const AUDIT_PAGE_ROWS: i64 = 50;

/// The audit filters as they come in a query string, and the page (`before` / `after` an
/// entry's number, from the Older / Newer links).
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub(super) struct AuditQuery {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    before: String,
    #[serde(default)]
    after: String,
}

impl AuditQuery {
    fn query_string(&self) -> String {
        format!(
            "actor={}&from={}&to={}",
            url(&self.actor),
            url(&self.from),
            url(&self.to)
        )
    }
}

/// An entry's page key: its number, as the links write it (no sign, no leading `+`).
fn parse_seq(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn filter_form(ctx: &Ctx, q: &AuditQuery) -> String {
    let lang = ctx.lang;
    format!(
        "<form method=\"get\" action=\"/audit\" id=\"audit-filter\">\
         <label>{} <input name=\"actor\" id=\"a-actor\" value=\"{}\" placeholder=\"admin:root\"></label> \
         <label>{} <input name=\"from\" id=\"a-from\" value=\"{}\" size=\"10\"></label> \
         <label>{} <input name=\"to\" id=\"a-to\" value=\"{}\" size=\"10\"></label> \
         <button id=\"apply-audit-filter\">{}</button> {}</form>",
        t(lang, Text::Actor),
        esc(&q.actor),
        t(lang, Text::From),
        esc(&q.from),
        t(lang, Text::To),
        esc(&q.to),
        t(lang, Text::Filter),
        html::dates_in_zone(lang, &ctx.zone),
    )
}

pub(super) async fn audit_page(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<AuditQuery>,
) -> Response {
    let lang = ctx.lang;
    let refused = |message: String| {
        let body = format!("{}{}", filter_form(&ctx, &q), html::form_error(&message));
        render_status(&ctx, StatusCode::BAD_REQUEST, t(lang, Text::Audit), &body)
    };
    let (from_ms, to_ms) = match date_range(lang, &ctx.zone, &q.from, &q.to) {
        Ok(range) => range,
        Err(message) => return refused(message),
    };
    let Ok(page) = page_from(&q.before, &q.after, parse_seq) else {
        return refused(t(lang, Text::BadPageLink).to_string());
    };
    let size = AUDIT_PAGE_ROWS as usize;
    let mut filter = AuditFilter {
        actor: Some(q.actor.trim().to_string()),
        from_ms,
        to_ms,
        page: page.clone(),
        // One more than a page: whether there is another page that way.
        limit: AUDIT_PAGE_ROWS + 1,
    };
    let mut paged = match console.shared.store.audit_page(&filter).await {
        Ok(rows) => Paged::of(rows, size, &page),
        Err(_) => return op_error(&ctx, &OpError::Internal),
    };
    if matches!(page, Some(PageFrom::Newer(_))) && !paged.newer {
        filter.page = None;
        paged = match console.shared.store.audit_page(&filter).await {
            Ok(rows) => Paged::of(rows, size, &None::<PageFrom<i64>>),
            Err(_) => return op_error(&ctx, &OpError::Internal),
        };
    }

    let report = audit::verify(&console.shared.store).await;
    let status = match &report {
        Ok(r) if r.problems.is_empty() => format!(
            "<p class=\"ok\" id=\"chain\">{} {}</p>",
            t(lang, Text::ChainIntact),
            r.rows
        ),
        Ok(r) => format!(
            "<p class=\"error\" id=\"chain\">{}</p>",
            r.problems.iter().map(|p| esc(p)).collect::<Vec<_>>().join("<br>")
        ),
        Err(_) => format!("<p class=\"error\" id=\"chain\">{}</p>", t(lang, Text::AuditUnreadable)),
    };
    let rows: String = paged
        .rows
        .iter()
        .map(|a| {
            format!(
                "<tr><td class=\"seq\">{}</td><td class=\"t\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                a.seq,
                html::time(&ctx.zone, Some(a.at)),
                esc(&a.actor),
                esc(&super::words::audit_action(lang, &a.action)),
                esc(&a.target),
                esc(&a.ip),
                esc(&super::words::detail(lang, &a.detail))
            )
        })
        .collect();
    let heads = [
        "#",
        t(lang, Text::Time),
        t(lang, Text::Actor),
        t(lang, Text::Action),
        t(lang, Text::Target),
        "IP",
        t(lang, Text::Detail),
    ];
    let base = format!("/audit?{}", q.query_string());
    let key = |a: &AuditRow| a.seq.to_string();
    let pager = paged.links(lang, &base, "", key);
    let pager_below = paged.links(lang, &base, "-below", key);
    let table = if paged.rows.is_empty() {
        format!("<p id=\"no-rows\">{}</p>", t(lang, Text::None))
    } else {
        html::table("audit", &heads, &rows)
    };
    let body = format!("{status}{}{pager}{table}{pager_below}", filter_form(&ctx, &q));
    render(&ctx, t(lang, Text::Audit), &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_keys_are_plain_numbers() {
        assert_eq!(parse_seq("42"), Some(42));
        for bad in ["", "-1", "+1", "1e3", "99999999999999999999", " 1"] {
            assert_eq!(parse_seq(bad), None, "{bad:?}");
        }
    }
}
