//! What every console page shares: redirects, HTML responses, the frame around a logged-in
//! admin's page, the CSRF form field, and a refused operation shown as a page.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

use super::html::{esc, page, page_with_head, t, Text};
use super::ops::OpError;
use super::{op_status, Ctx};

/// A 303 redirect to `to`.
pub(super) fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// An HTML page with this status.
pub(super) fn html_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

/// A logged-in admin's page: the frame with navigation around `body`.
pub(super) fn render(ctx: &Ctx, title: &str, body: &str) -> Response {
    html_response(
        StatusCode::OK,
        page(ctx.lang, title, Some((&ctx.admin, &ctx.csrf)), body),
    )
}

/// [`render`] with another status: a form shown again with its refusal.
pub(super) fn render_status(ctx: &Ctx, status: StatusCode, title: &str, body: &str) -> Response {
    html_response(status, page(ctx.lang, title, Some((&ctx.admin, &ctx.csrf)), body))
}

/// [`render`] for a page that reloads itself every `seconds` (a meta refresh, which the
/// console's CSP allows where a script would not run).
pub(super) fn render_refreshing(ctx: &Ctx, title: &str, body: &str, seconds: u32) -> Response {
    let refresh = format!("<meta http-equiv=\"refresh\" content=\"{seconds}\">");
    html_response(
        StatusCode::OK,
        page_with_head(ctx.lang, title, Some((&ctx.admin, &ctx.csrf)), body, &refresh),
    )
}

/// A refused operation, shown as a page with a way back.
pub(super) fn op_error(ctx: &Ctx, e: &OpError) -> Response {
    let status = op_status(e);
    let body = format!(
        "<p class=\"error\" id=\"error\">{}</p><p><a href=\"/operators\">{}</a></p>",
        esc(&e.to_string()),
        t(ctx.lang, Text::Operators)
    );
    html_response(
        status,
        page(
            ctx.lang,
            t(ctx.lang, Text::Operators),
            Some((&ctx.admin, &ctx.csrf)),
            &body,
        ),
    )
}

/// The hidden form field that carries the session's CSRF token.
pub(super) fn csrf_field(ctx: &Ctx) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(&ctx.csrf))
}
