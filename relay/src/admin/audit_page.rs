//! The audit trail page: whether the hash chain is intact, and the latest entries.

use axum::extract::State;
use axum::response::Response;
use axum::Extension;

use super::html::{self, esc, t, Text};
use super::pages::render;
use super::{Console, Ctx};
use crate::audit;

pub(super) async fn audit_page(State(console): State<Console>, Extension(ctx): Extension<Ctx>) -> Response {
    let lang = ctx.lang;
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
    let rows: String = console
        .shared
        .store
        .audit_recent(200)
        .await
        .unwrap_or_default()
        .iter()
        .map(|a| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                a.seq,
                html::time(Some(a.at)),
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
    let body = status + &html::table("audit", &heads, &rows);
    render(&ctx, t(lang, Text::Audit), &body)
}
