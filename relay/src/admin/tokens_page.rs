//! The API tokens page: every token with its scope, creator, times and state (a revoke
//! button on live ones), the form that creates one, and the page that shows a new token
//! once.

use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;

use super::html::{self, esc, t, Text};
use super::ops::OpError;
use super::pages::{csrf_field, op_error, render, render_status, see_other};
use super::tokens::{CreatedToken, MAX_EXPIRY_DAYS};
use super::{op_status, Console, Ctx};
use crate::store::TokenScope;

pub(super) async fn tokens_page(State(console): State<Console>, Extension(ctx): Extension<Ctx>) -> Response {
    tokens_view(&console, &ctx, None).await
}

/// A refused token creation: the status, why, and the fields as the admin sent them.
struct Refused {
    status: StatusCode,
    /// The refusal as shown (markup).
    error: String,
    fields: Vec<(String, String)>,
}

/// The tokens and the creation form; `refused`: the creation just refused, shown beside
/// the form with what was typed.
async fn tokens_view(console: &Console, ctx: &Ctx, refused: Option<Refused>) -> Response {
    let lang = ctx.lang;
    let tokens = match console.ops.list_tokens().await {
        Ok(rows) => rows,
        Err(e) => return op_error(ctx, &e),
    };
    let csrf = csrf_field(ctx);
    let typed = |name: &str| refused.as_ref().map(|r| field(&r.fields, name)).unwrap_or("");
    let write = typed("scope") == "write";
    let now = crate::time::now_ms();
    let rows: String = tokens
        .iter()
        .map(|tok| {
            let (state, live) = match tok.revoked_at {
                Some(_) => (Text::CertRevoked, false),
                None if !tok.is_live(now) => (Text::CertExpired, false),
                None => (Text::CertValid, true),
            };
            let revoke = if live {
                format!(
                    "<form method=\"post\" action=\"/tokens/{id}/revoke\" class=\"inline\">{csrf}<button id=\"revoke-{id}\">{}</button></form>",
                    t(lang, Text::RevokeCert),
                    id = esc(&tok.id),
                )
            } else {
                String::new()
            };
            let expires = match tok.expires_at {
                Some(e) => html::time(&ctx.zone, Some(e)),
                None => t(lang, Text::Never).to_string(),
            };
            format!(
                "<tr class=\"token\"><td>{}</td><td><code>{}</code></td><td class=\"token-scope\">{}</td><td class=\"token-state\">{}</td>\
                 <td>{}</td><td class=\"t\">{}</td><td class=\"t\">{}</td><td class=\"t\">{expires}</td><td>{revoke}</td></tr>",
                esc(&tok.name),
                esc(&tok.id),
                t(lang, scope_text(tok.scope)),
                t(lang, state),
                esc(&tok.created_by),
                html::time(&ctx.zone, Some(tok.created_at)),
                html::time(&ctx.zone, tok.last_used_at),
            )
        })
        .collect();
    let table = if tokens.is_empty() {
        format!("<p id=\"no-tokens\">{}</p>", t(lang, Text::NoTokens))
    } else {
        html::table(
            "tokens",
            &[
                t(lang, Text::Name),
                "ID",
                t(lang, Text::TokenScope),
                t(lang, Text::Status),
                t(lang, Text::CreatedBy),
                t(lang, Text::Created),
                t(lang, Text::LastUsed),
                t(lang, Text::Expires),
                "",
            ],
            &rows,
        )
    };
    let error = refused.as_ref().map(|r| r.error.clone()).unwrap_or_default();
    let body = format!(
        "<p>{}</p>{table}<h2>{}</h2>{error}<form method=\"post\" action=\"/tokens\" id=\"create-token\">{csrf}\
         <p><label>{} <input name=\"name\" id=\"token-name\" maxlength=\"64\" pattern=\"[A-Za-z0-9._@\\-]{{1,64}}\" required value=\"{}\"></label></p>\
         <fieldset><legend>{}</legend><label><input type=\"radio\" name=\"scope\" value=\"read\" id=\"scope-read\"{}> {}</label> \
         <label><input type=\"radio\" name=\"scope\" value=\"write\" id=\"scope-write\"{}> {}</label></fieldset>\
         <p><label>{} <input type=\"number\" name=\"expires_days\" id=\"token-expires\" min=\"1\" max=\"{MAX_EXPIRY_DAYS}\" value=\"{}\"></label></p>\
         <p><button id=\"create-token-button\">{}</button></p></form>",
        t(lang, Text::TokensHelp),
        t(lang, Text::NewToken),
        t(lang, Text::Name),
        esc(typed("name")),
        t(lang, Text::TokenScope),
        if write { "" } else { " checked" },
        t(lang, Text::ScopeRead),
        if write { " checked" } else { "" },
        t(lang, Text::ScopeWrite),
        t(lang, Text::ExpiresInDays),
        esc(typed("expires_days")),
        t(lang, Text::CreateToken),
    );
    let status = refused.as_ref().map(|r| r.status).unwrap_or(StatusCode::OK);
    render_status(ctx, status, t(lang, Text::ApiTokens), &body)
}

fn scope_text(scope: TokenScope) -> Text {
    match scope {
        TokenScope::Read => Text::ScopeRead,
        TokenScope::Write => Text::ScopeWrite,
    }
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

pub(super) async fn create_token(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    let result = async {
        let scope = TokenScope::parse(field(&fields, "scope"))
            .ok_or_else(|| OpError::Invalid("choose read only or read and write".into()))?;
        let days = match field(&fields, "expires_days").trim() {
            "" => None,
            d => Some(
                d.parse::<u32>()
                    .map_err(|_| OpError::Invalid(format!("a token expires in 1 to {MAX_EXPIRY_DAYS} days")))?,
            ),
        };
        console
            .ops
            .create_token(&ctx.actor(), field(&fields, "name").trim(), scope, days)
            .await
    };
    let outcome = result.await;
    match outcome {
        Ok(created) => created_page(&ctx, &created),
        Err(e) => {
            let (message, detail) = super::words::refusal(ctx.lang, "token", &e);
            let refused = Refused {
                status: op_status(&e),
                error: html::form_error_with(&message, detail.as_deref()),
                fields: fields.into_iter().filter(|(k, _)| k != "csrf").collect(),
            };
            tokens_view(&console, &ctx, Some(refused)).await
        }
    }
}

/// The page shown once after a token is created: the token itself (nothing of it is kept
/// on the relay but its hash).
fn created_page(ctx: &Ctx, created: &CreatedToken) -> Response {
    let lang = ctx.lang;
    let body = format!(
        "<p>{}</p><p><code class=\"secret\" id=\"new-token\">{}</code></p>\
         <p>{}: <strong>{}</strong>, {}: <code id=\"token-id\">{}</code></p><p><a id=\"continue\" href=\"/tokens\">{}</a></p>",
        t(lang, Text::TokenCreatedHelp),
        esc(&created.token),
        t(lang, Text::Name),
        esc(&created.row.name),
        "ID",
        esc(&created.row.id),
        t(lang, Text::Continue),
    );
    render(ctx, t(lang, Text::CreateToken), &body)
}

pub(super) async fn revoke_token(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    match console.ops.revoke_token(&ctx.actor(), &id).await {
        Ok(_) => see_other("/tokens"),
        Err(e) => op_error(&ctx, &e),
    }
}
