//! The operator pages: the list with its creation form, one operator's page, and the
//! changes made from it (permissions, limits, IP rules, suspension, password, name, TOTP,
//! deletion), all through [`Ops`](super::ops::Ops).

use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use tsunagu_proto::PermissionSet;

use super::html::{self, esc, t, url, Text};
use super::ops::{self, OpError};
use super::pages::{csrf_field, op_error, render, render_status, see_other};
use super::{op_status, Console, Ctx};

fn permission_boxes(lang: html::Lang, prefix: &str, set: PermissionSet) -> String {
    ["view", "control", "files", "chat", "clipboard"]
        .iter()
        .map(|p| {
            let on = PermissionSet::parse_names([*p])
                .map(|one| set.intersect(one) == one)
                .unwrap_or(false);
            format!(
                "<label><input type=\"checkbox\" name=\"perm\" value=\"{p}\" id=\"{prefix}-{p}\"{}> {}</label> ",
                if on { " checked" } else { "" },
                super::words::permission(lang, p).unwrap_or(p)
            )
        })
        .collect()
}

/// `?done=ACTION`: the change just made, for its notice.
#[derive(serde::Deserialize, Default)]
pub(super) struct Done {
    pub(super) done: Option<String>,
}

/// A refused form, shown again beside the form it came from: which form (the action it
/// posts to), why, and the fields as the admin sent them (passwords are never sent back).
pub(super) struct Refused {
    status: StatusCode,
    action: String,
    /// The refusal as shown (markup).
    error: String,
    fields: Vec<(String, String)>,
}

impl Refused {
    fn new(lang: html::Lang, action: &str, e: &OpError, fields: Vec<(String, String)>) -> Self {
        let (message, detail) = super::words::refusal(lang, action, e);
        Self {
            status: op_status(e),
            action: action.to_string(),
            error: html::form_error_with(&message, detail.as_deref()),
            fields: fields
                .into_iter()
                .filter(|(k, _)| k != "password" && k != "csrf")
                .collect(),
        }
    }

    /// The error, when it came from the form posting to `action`.
    fn error_for(&self, action: &str) -> String {
        if self.action == action {
            self.error.clone()
        } else {
            String::new()
        }
    }

    /// What the admin typed into `name` of the form posting to `action`, if that form was
    /// refused.
    fn typed(&self, action: &str, name: &str) -> Option<&str> {
        (self.action == action).then(|| field(&self.fields, name))
    }

    /// The permissions ticked in the form posting to `action`, if that form was refused.
    fn ticked(&self, action: &str) -> Option<PermissionSet> {
        (self.action == action).then(|| {
            let names = self.fields.iter().filter(|(k, _)| k == "perm").map(|(_, v)| v.as_str());
            // Only the four known names can be ticked; anything else is dropped here.
            PermissionSet::parse_names(names.filter(|n| ["view", "control", "files", "chat"].contains(n)))
                .unwrap_or(PermissionSet::EMPTY)
        })
    }
}

pub(super) async fn operators_page(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Query(done): Query<Done>,
) -> Response {
    operators_view(&console, &ctx, done.done.as_deref(), None).await
}

/// The operator list and the creation form; `refused`: the creation just refused, shown
/// beside the form with what was typed.
async fn operators_view(console: &Console, ctx: &Ctx, done: Option<&str>, refused: Option<Refused>) -> Response {
    let lang = ctx.lang;
    let ops = match console.shared.store.operators().await {
        Ok(o) => o,
        Err(_) => return op_error(ctx, &OpError::Internal),
    };
    let rows: String = ops
        .iter()
        .map(|o| {
            format!(
                "<tr><td><a href=\"/operators/{}\">{}</a></td><td>{}</td><td class=\"status\">{}</td><td>{}</td><td>{}</td></tr>",
                url(&o.name),
                esc(&o.name),
                esc(&super::words::permissions(lang, &o.permissions.to_string())),
                t(lang, if o.suspended { Text::Suspended } else { Text::Active }),
                o.max_sessions,
                t(lang, if o.totp_secret.is_some() { Text::Enrolled } else { Text::NotEnrolled }),
            )
        })
        .collect();
    let (error, name, perms) = match &refused {
        Some(r) => (
            r.error_for("create"),
            r.typed("create", "name").unwrap_or(""),
            r.ticked("create").unwrap_or(PermissionSet::ALL),
        ),
        None => (String::new(), "", PermissionSet::ALL),
    };
    let body = format!(
        "{}{}<h2>{}</h2>{error}<form method=\"post\" action=\"/operators\" id=\"create-operator\">{}\
         <p><label>{} <input name=\"name\" id=\"new-name\" maxlength=\"64\" required value=\"{}\"></label></p>\
         <p><label>{} <input type=\"password\" name=\"password\" id=\"new-password\" maxlength=\"64\" required></label></p>\
         <fieldset><legend>{}</legend>{}</fieldset><p><button id=\"create\">{}</button></p></form>",
        html::notice(lang, done),
        html::table(
            "operators",
            &[
                t(lang, Text::Name),
                t(lang, Text::Permissions),
                t(lang, Text::Status),
                t(lang, Text::MaxSessions),
                "TOTP"
            ],
            &rows
        ),
        t(lang, Text::NewOperator),
        csrf_field(ctx),
        t(lang, Text::Name),
        esc(name),
        t(lang, Text::Password),
        t(lang, Text::Permissions),
        permission_boxes(lang, "new", perms),
        t(lang, Text::Create),
    );
    let status = refused.as_ref().map(|r| r.status).unwrap_or(StatusCode::OK);
    render_status(ctx, status, t(lang, Text::Operators), &body)
}

fn form_perms(fields: &[(String, String)]) -> Result<PermissionSet, OpError> {
    ops::parse_permissions(fields.iter().filter(|(k, _)| k == "perm").map(|(_, v)| v.as_str()))
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

pub(super) async fn create_operator(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    let name = field(&fields, "name").trim().to_string();
    let result = match form_perms(&fields) {
        Ok(perms) => {
            console
                .ops
                .create_operator(&ctx.actor(), &name, field(&fields, "password"), perms)
                .await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => see_other(&format!("/operators/{}?done=create", url(&name))),
        Err(e) => operators_view(&console, &ctx, None, Some(Refused::new(ctx.lang, "create", &e, fields))).await,
    }
}

pub(super) async fn operator_page(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
    Query(done): Query<Done>,
) -> Response {
    match console.shared.store.operator(&name).await {
        Ok(Some(o)) => operator_view(&console, &ctx, o, done.done.as_deref(), None).await,
        Ok(None) => op_error(&ctx, &OpError::NotFound(format!("no operator named {name:?}"))),
        Err(_) => op_error(&ctx, &OpError::Internal),
    }
}

/// One operator's page; `refused`: the change just refused, shown beside its form with
/// what was typed.
async fn operator_view(
    console: &Console,
    ctx: &Ctx,
    o: crate::store::OperatorRecord,
    done: Option<&str>,
    refused: Option<Refused>,
) -> Response {
    let lang = ctx.lang;
    let nothing = Refused {
        status: StatusCode::OK,
        action: String::new(),
        error: String::new(),
        fields: Vec::new(),
    };
    let r = refused.as_ref().unwrap_or(&nothing);
    let base = format!("/operators/{}", url(&o.name));
    let csrf = csrf_field(ctx);
    let button = |action: &str, label: Text| {
        format!("<form method=\"post\" action=\"{base}/{action}\" class=\"inline\">{csrf}<button id=\"{action}\">{}</button></form> ", t(lang, label))
    };
    let rules = match r.typed("ip-rules", "rules") {
        Some(typed) => typed.to_string(),
        None => o.ip_rules.iter().map(|r| r.to_line()).collect::<Vec<_>>().join("\n"),
    };
    let max_sessions = match r.typed("limits", "max_sessions") {
        Some(typed) => typed.to_string(),
        None => o.max_sessions.to_string(),
    };
    // An action with no form of its own (suspend, TOTP, revoke, ...) says why at the top.
    let with_form = ["permissions", "limits", "ip-rules", "password", "rename", "cert-issue"];
    let top_error = if refused.is_some() && !with_form.contains(&r.action.as_str()) {
        r.error.clone()
    } else {
        String::new()
    };
    let live = console.shared.sessions().live_of(&o.name).len();
    let certs = console
        .ops
        .list_certs(Some((crate::store::CertRole::Operator, &o.name)))
        .await
        .unwrap_or_default();
    let certs = cert_section(ctx, &base, &o, &certs, r);
    let body = format!(
        "{}{top_error}<p>{}: <strong id=\"status\">{}</strong> · {}: {live} · TOTP: {} ({})</p>\
         <p>{}{}</p>\
         {}<form method=\"post\" action=\"{base}/permissions\" id=\"permissions\">{csrf}<fieldset><legend>{}</legend>{}</fieldset><button id=\"save-permissions\">{}</button></form>\
         {}<form method=\"post\" action=\"{base}/limits\">{csrf}<p><label>{} <input name=\"max_sessions\" id=\"max-sessions\" value=\"{}\" size=\"5\"></label> <button id=\"save-limits\">{}</button></p></form>\
         {}<form method=\"post\" action=\"{base}/ip-rules\">{csrf}<p><label>{}<br><textarea name=\"rules\" id=\"ip-rules\">{}</textarea></label><br><button id=\"save-ip-rules\">{}</button></p></form>\
         {}<form method=\"post\" action=\"{base}/password\">{csrf}<p><label>{} <input type=\"password\" name=\"password\" id=\"op-password\" maxlength=\"64\"></label> <button id=\"set-password\">{}</button></p></form>\
         {}<form method=\"post\" action=\"{base}/rename\">{csrf}<p><label>{} <input name=\"new_name\" id=\"new-op-name\" maxlength=\"64\" value=\"{}\"></label> <button id=\"rename\">{}</button></p></form>\
         <p>{}{}{}</p>{certs}",
        html::notice(lang, done),
        t(lang, Text::Status),
        t(lang, if o.suspended { Text::Suspended } else { Text::Active }),
        t(lang, Text::Sessions),
        t(lang, if o.totp_secret.is_some() { Text::Enrolled } else { Text::NotEnrolled }),
        t(lang, if o.totp_required { Text::Required } else { Text::Optional }),
        if o.suspended { button("resume", Text::Resume) } else { button("suspend", Text::Suspend) },
        button("delete", Text::Delete),
        r.error_for("permissions"),
        t(lang, Text::Permissions),
        permission_boxes(lang, "perm", r.ticked("permissions").unwrap_or(o.permissions)),
        t(lang, Text::Save),
        r.error_for("limits"),
        t(lang, Text::MaxSessions),
        esc(&max_sessions),
        t(lang, Text::Save),
        r.error_for("ip-rules"),
        t(lang, Text::IpRules),
        esc(&rules),
        t(lang, Text::Save),
        r.error_for("password"),
        t(lang, Text::NewPassword),
        t(lang, Text::SetPassword),
        r.error_for("rename"),
        t(lang, Text::Rename),
        esc(r.typed("rename", "new_name").unwrap_or("")),
        t(lang, Text::Rename),
        button("totp-enrol", Text::EnrolTotp),
        button("totp-reset", Text::ResetTotp),
        if o.totp_required { button("totp-optional", Text::OptionalTotp) } else { button("totp-require", Text::RequireTotp) },
    );
    render_status(
        ctx,
        r.status,
        &format!("{}: {}", t(lang, Text::Operator), o.name),
        &body,
    )
}

pub(super) async fn operator_action(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Path((name, action)): Path<(String, String)>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    let actor = ctx.actor();
    let ops = &console.ops;
    let back = format!("/operators/{}", url(&name));
    // Suspending and deleting end live sessions: asked first, saying how many.
    if matches!(action.as_str(), "suspend" | "delete") && field(&fields, "confirm") != "yes" {
        return match console.shared.store.operator(&name).await {
            Ok(Some(_)) => confirm_page(&ctx, &name, &action, console.shared.sessions().live_of(&name).len()),
            Ok(None) => op_error(&ctx, &OpError::NotFound(format!("no operator named {name:?}"))),
            Err(_) => op_error(&ctx, &OpError::Internal),
        };
    }
    let result: Result<Option<String>, OpError> = match action.as_str() {
        "permissions" => match form_perms(&fields) {
            Ok(p) => ops.set_permissions(&actor, &name, p).await.map(|_| None),
            Err(e) => Err(e),
        },
        "limits" => match field(&fields, "max_sessions").trim().parse::<u32>() {
            Ok(n) => ops.set_max_sessions(&actor, &name, n).await.map(|_| None),
            Err(_) => Err(OpError::Invalid(
                "the session limit is a whole number (0 = no limit)".into(),
            )),
        },
        "ip-rules" => match ops::parse_ip_rules(field(&fields, "rules")) {
            Ok(rules) => ops.set_ip_rules(&actor, &name, &rules).await.map(|_| None),
            Err(e) => Err(e),
        },
        "suspend" => ops.suspend(&actor, &name).await.map(|_| None),
        "resume" => ops.resume(&actor, &name).await.map(|_| None),
        "password" => ops
            .set_password(&actor, &name, field(&fields, "password"))
            .await
            .map(|_| None),
        "rename" => {
            let new_name = field(&fields, "new_name").trim().to_string();
            ops.rename(&actor, &name, &new_name)
                .await
                .map(|_| Some(format!("/operators/{}?done=rename", url(&new_name))))
        }
        "delete" => ops
            .delete(&actor, &name)
            .await
            .map(|_| Some("/operators?done=delete".to_string())),
        "totp-reset" => ops.reset_operator_totp(&actor, &name).await.map(|_| None),
        "totp-require" => ops.require_operator_totp(&actor, &name, true).await.map(|_| None),
        "totp-optional" => ops.require_operator_totp(&actor, &name, false).await.map(|_| None),
        "cert-require" => ops
            .require_cert(&actor, crate::store::CertRole::Operator, &name, true)
            .await
            .map(|_| None),
        "cert-optional" => ops
            .require_cert(&actor, crate::store::CertRole::Operator, &name, false)
            .await
            .map(|_| None),
        "cert-revoke" => ops.revoke_cert(&actor, field(&fields, "serial")).await.map(|_| None),
        "cert-issue" => {
            let device = field(&fields, "device").trim().to_string();
            match ops
                .issue_cert(&actor, crate::store::CertRole::Operator, &name, &device)
                .await
            {
                Ok(issued) => return issued_page(&ctx, &back, &issued),
                Err(e) => Err(e),
            }
        }
        "totp-enrol" => match ops.enrol_operator_totp(&actor, &name).await {
            Ok(secret) => {
                let qr = crate::totp::qr_svg(&crate::totp::otpauth_url(&secret, &name)).unwrap_or_default();
                let body = format!(
                    "<p>{}</p><div class=\"qr\">{qr}</div><p>{}: <code class=\"secret\" id=\"secret\">{}</code></p><p><a href=\"{back}\">{}</a></p>",
                    t(ctx.lang, Text::EnrolHelp),
                    t(ctx.lang, Text::Secret),
                    esc(&secret),
                    t(ctx.lang, Text::Continue)
                );
                return render(&ctx, t(ctx.lang, Text::EnrolTotp), &body);
            }
            Err(e) => Err(e),
        },
        _ => Err(OpError::NotFound("no such action".into())),
    };
    match result {
        Ok(to) => see_other(&to.unwrap_or_else(|| format!("{back}?done={}", url(&action)))),
        // The operator's page again, the refusal beside the form, what was typed still in it.
        Err(e) => match console.shared.store.operator(&name).await {
            Ok(Some(o)) => {
                operator_view(
                    &console,
                    &ctx,
                    o,
                    None,
                    Some(Refused::new(ctx.lang, &action, &e, fields)),
                )
                .await
            }
            _ => op_error(&ctx, &e),
        },
    }
}

/// Asks before suspending or deleting `name`, saying how many live sessions end with it;
/// the same form posted with `confirm=yes` acts.
fn confirm_page(ctx: &Ctx, name: &str, action: &str, live: usize) -> Response {
    let lang = ctx.lang;
    let (question, label) = match action {
        "delete" => (Text::ConfirmDelete, Text::Delete),
        _ => (Text::ConfirmSuspend, Text::Suspend),
    };
    let sessions = if live == 0 {
        t(lang, Text::NoSessionWillEnd).to_string()
    } else {
        format!(
            "{} <strong id=\"ending\">{live}</strong>",
            t(lang, Text::SessionsWillEnd)
        )
    };
    let back = format!("/operators/{}", url(name));
    let body = format!(
        "<div class=\"confirm\"><p id=\"question\">{}</p><p>{sessions}</p>\
         <form method=\"post\" action=\"{back}/{action}\" class=\"inline\">{}<input type=\"hidden\" name=\"confirm\" value=\"yes\">\
         <button class=\"danger\" id=\"confirm\">{}</button></form> <a href=\"{back}\" id=\"cancel\">{}</a></div>",
        t(lang, question),
        csrf_field(ctx),
        t(lang, label),
        t(lang, Text::Cancel),
    );
    render(ctx, &format!("{}: {}", t(lang, Text::Operator), name), &body)
}

/// The operator page's certificate section: whether login needs one, the certificates with
/// their state (revoke buttons on live ones) and the form that issues one.
fn cert_section(
    ctx: &Ctx,
    base: &str,
    o: &crate::store::OperatorRecord,
    certs: &[crate::store::CertRow],
    refused: &Refused,
) -> String {
    let lang = ctx.lang;
    let csrf = csrf_field(ctx);
    let now = crate::time::now_ms();
    let rows: String = certs
        .iter()
        .map(|c| {
            let (state, live) = match c.revoked_at {
                Some(_) => (Text::CertRevoked, false),
                None if c.not_after <= now => (Text::CertExpired, false),
                None => (Text::CertValid, true),
            };
            let revoke = if live {
                format!(
                    "<form method=\"post\" action=\"{base}/cert-revoke\" class=\"inline\">{csrf}<input type=\"hidden\" name=\"serial\" value=\"{s}\"><button id=\"revoke-{s}\">{}</button></form>",
                    t(lang, Text::RevokeCert),
                    s = esc(&c.serial),
                )
            } else {
                String::new()
            };
            format!(
                "<tr class=\"cert\"><td>{}</td><td><code>{}</code></td><td class=\"cert-state\">{}</td><td class=\"t\">{}</td><td>{revoke}</td></tr>",
                esc(&c.device),
                esc(&c.serial),
                t(lang, state),
                html::time(&ctx.zone, Some(c.not_after)),
            )
        })
        .collect();
    let table = if certs.is_empty() {
        format!("<p>{}</p>", t(lang, Text::NoCertificates))
    } else {
        format!(
            "<table id=\"certificates\"><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th></th></tr>{rows}</table>",
            t(lang, Text::Device),
            t(lang, Text::Serial),
            t(lang, Text::Status),
            t(lang, Text::Expires),
        )
    };
    let toggle = if o.cert_required {
        ("cert-optional", Text::OptionalCert)
    } else {
        ("cert-require", Text::RequireCert)
    };
    format!(
        "<h2>{}</h2><p>{}: <strong id=\"cert-required\">{}</strong> \
         <form method=\"post\" action=\"{base}/{}\" class=\"inline\">{csrf}<button id=\"{}\">{}</button></form></p>{table}\
         {}<form method=\"post\" action=\"{base}/cert-issue\">{csrf}<p><label>{} <input name=\"device\" id=\"device\" maxlength=\"64\" required value=\"{}\"></label> <button id=\"cert-issue\">{}</button></p></form>",
        t(lang, Text::Certificates),
        t(lang, Text::CertificateLogin),
        t(lang, if o.cert_required { Text::Required } else { Text::Optional }),
        toggle.0,
        toggle.0,
        t(lang, toggle.1),
        refused.error_for("cert-issue"),
        t(lang, Text::Device),
        esc(refused.typed("cert-issue", "device").unwrap_or("")),
        t(lang, Text::IssueCert),
    )
}

/// The page shown once after a certificate is issued: the import password and the file as
/// a download link (nothing of either is kept on the relay).
fn issued_page(ctx: &Ctx, back: &str, issued: &super::certs::IssuedCert) -> Response {
    use base64::Engine as _;
    let lang = ctx.lang;
    let file = format!(
        "{}-{}.p12",
        issued.row.account,
        issued.row.serial.get(..8).unwrap_or("cert")
    );
    let body = format!(
        "<p>{}</p><p>{}: <code class=\"secret\" id=\"import-password\">{}</code></p>\
         <p><a id=\"download-p12\" download=\"{}\" href=\"data:application/x-pkcs12;base64,{}\">{}</a></p>\
         <p>{}: <code id=\"serial\">{}</code></p><p><a href=\"{back}\">{}</a></p>",
        t(lang, Text::CertIssuedHelp),
        t(lang, Text::ImportPassword),
        esc(&issued.file.password),
        esc(&file),
        base64::engine::general_purpose::STANDARD.encode(&issued.file.p12),
        t(lang, Text::DownloadP12),
        t(lang, Text::Serial),
        esc(&issued.row.serial),
        t(lang, Text::Continue),
    );
    render(ctx, t(lang, Text::IssueCert), &body)
}
