//! The REST API under `/api/v1` (JSON in and out, the same operations as the pages) and
//! its OpenAPI description, which states every status and every constraint the handlers
//! here enforce: request bodies are JSON objects with no unknown fields and no `null`
//! values (400 not JSON, 413 too large, 415 not `application/json`, 422 not the shape the
//! route takes), and every refusal is a JSON object with an `error` text.

use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use tsunagu_proto::PermissionSet;

use super::history::HistoryQuery;
use super::ops::{self, OpError};
use super::sessions::grid_rows;
use super::{op_status, Console, Ctx};
use crate::audit;

/// A refused operation as the API answers it: the status, and the reason as JSON.
fn api_error(e: OpError) -> Response {
    let status = op_status(&e);
    refusal(status, &e.to_string())
}

/// A JSON error answer.
pub(super) fn refusal(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// A JSON request body: an object of the route's shape, sent as `application/json`.
/// Refused with a JSON error: 415 another content type, 413 larger than
/// [`super::MAX_BODY`], 400 not JSON, 422 not an object, a `null` value, an unknown or
/// missing field, or a value of the wrong type.
pub(super) struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(refusal(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send the body as application/json",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| refusal(e.status(), &e.body_text()))?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| refusal(StatusCode::BAD_REQUEST, &format!("the body is not JSON: {e}")))?;
        let Some(fields) = value.as_object() else {
            return Err(refusal(
                StatusCode::UNPROCESSABLE_ENTITY,
                "the body must be a JSON object",
            ));
        };
        if let Some((name, _)) = fields.iter().find(|(_, v)| v.is_null()) {
            return Err(refusal(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("{name} must not be null: leave it out to keep it as it is"),
            ));
        }
        serde_json::from_value(value)
            .map(ApiJson)
            .map_err(|e| refusal(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()))
    }
}

/// A whole number as JSON Schema counts them (`211` and `211.0` alike), from 0 to
/// `u32::MAX`; the route checks its own range.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    use serde::de::Error as _;
    use serde::Deserialize as _;
    let n = serde_json::Number::deserialize(d)?;
    let whole = n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(f))
            .map(|f| f as u64)
    });
    whole
        .and_then(|v| u32::try_from(v).ok())
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("{n} is not a whole number from 0 to {}", u32::MAX)))
}

/// Permission names as the API takes them: each exactly `view`, `control`, `files`,
/// `chat` or `all` (no blanks, no padding); an empty list is none.
fn api_permissions(names: &[String]) -> Result<PermissionSet, OpError> {
    if let Some(bad) = names
        .iter()
        .find(|n| !matches!(n.as_str(), "view" | "control" | "files" | "chat" | "clipboard" | "all"))
    {
        return Err(OpError::Invalid(format!(
            "unknown permission {bad:?} (expected view, control, files, chat, clipboard or all)"
        )));
    }
    ops::parse_permissions(names.iter().map(String::as_str))
}

/// IP rules as the API takes them: each exactly `allow ADDRESS[/LEN]` or `deny ...` with
/// one space (no comments or blank entries, as the console's text box allows).
fn api_ip_rules(rules: &[String]) -> Result<Vec<crate::store::IpRule>, OpError> {
    if rules.len() > crate::store::MAX_IP_RULES {
        return Err(OpError::Invalid(format!(
            "at most {} rules per operator",
            crate::store::MAX_IP_RULES
        )));
    }
    rules
        .iter()
        .map(|line| {
            let strict = line.split(' ').count() == 2 && (line.starts_with("allow ") || line.starts_with("deny "));
            if !strict {
                return Err(OpError::Invalid(format!(
                    "{line:?}: write a rule as \"allow CIDR\" or \"deny CIDR\" with one space"
                )));
            }
            crate::store::IpRule::parse(line).map_err(OpError::Invalid)
        })
        .collect()
}

fn operator_json(o: &crate::store::OperatorRecord) -> serde_json::Value {
    serde_json::json!({
        "name": o.name,
        "permissions": o.permissions.names(),
        "suspended": o.suspended,
        "max_sessions": o.max_sessions,
        "ip_rules": o.ip_rules.iter().map(|r| r.to_line()).collect::<Vec<_>>(),
        "totp_enrolled": o.totp_secret.is_some(),
        "totp_required": o.totp_required,
        "cert_required": o.cert_required,
        "created_at": o.created_at,
    })
}

pub(super) async fn api_operators(State(console): State<Console>) -> Response {
    match console.shared.store.operators().await {
        Ok(ops) => Json(ops.iter().map(operator_json).collect::<Vec<_>>()).into_response(),
        Err(e) => api_error(e.into()),
    }
}

pub(super) async fn api_operator(State(console): State<Console>, Path(name): Path<String>) -> Response {
    match console.shared.store.operator(&name).await {
        Ok(Some(o)) => Json(operator_json(&o)).into_response(),
        Ok(None) => api_error(OpError::NotFound(format!("no operator named {name:?}"))),
        Err(e) => api_error(e.into()),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewOperator {
    name: String,
    password: String,
    #[serde(default)]
    permissions: Option<Vec<String>>,
}

pub(super) async fn api_create_operator(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    ApiJson(body): ApiJson<NewOperator>,
) -> Response {
    let perms = match &body.permissions {
        Some(p) => match api_permissions(p) {
            Ok(p) => p,
            Err(e) => return api_error(e),
        },
        None => PermissionSet::ALL,
    };
    match console
        .ops
        .create_operator(&ctx.actor(), &body.name, &body.password, perms)
        .await
    {
        Ok(()) => (StatusCode::CREATED, Json(serde_json::json!({"name": body.name}))).into_response(),
        Err(e) => api_error(e),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OperatorPatch {
    permissions: Option<Vec<String>>,
    #[serde(default, deserialize_with = "whole_number")]
    max_sessions: Option<u32>,
    ip_rules: Option<Vec<String>>,
    suspended: Option<bool>,
    totp_required: Option<bool>,
    cert_required: Option<bool>,
    password: Option<String>,
}

/// The largest `max_sessions` (a cap this high is no cap; refusing more catches typos).
const MAX_SESSIONS_CAP: u32 = 10_000;

pub(super) async fn api_update_operator(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
    ApiJson(p): ApiJson<OperatorPatch>,
) -> Response {
    let actor = ctx.actor();
    let ops = &console.ops;
    let nothing = p.permissions.is_none()
        && p.max_sessions.is_none()
        && p.ip_rules.is_none()
        && p.suspended.is_none()
        && p.totp_required.is_none()
        && p.cert_required.is_none()
        && p.password.is_none();
    if nothing {
        return refusal(
            StatusCode::UNPROCESSABLE_ENTITY,
            "nothing to change: send at least one field",
        );
    }
    let result = async {
        // Everything is checked before anything changes, so a refused request changes nothing.
        let perms = p.permissions.as_deref().map(api_permissions).transpose()?;
        let rules = p.ip_rules.as_deref().map(api_ip_rules).transpose()?;
        if p.max_sessions.is_some_and(|m| m > MAX_SESSIONS_CAP) {
            return Err(OpError::Invalid(format!(
                "the session limit is 0 (none) to {MAX_SESSIONS_CAP}"
            )));
        }
        if let Some(pw) = &p.password {
            crate::accounts::check_password(pw)?;
        }
        if ops.store.operator(&name).await?.is_none() {
            return Err(OpError::NotFound(format!("no operator named {name:?}")));
        }
        if let Some(perms) = perms {
            ops.set_permissions(&actor, &name, perms).await?;
        }
        if let Some(max) = p.max_sessions {
            ops.set_max_sessions(&actor, &name, max).await?;
        }
        if let Some(rules) = &rules {
            ops.set_ip_rules(&actor, &name, rules).await?;
        }
        if let Some(pw) = &p.password {
            ops.set_password(&actor, &name, pw).await?;
        }
        if let Some(req) = p.totp_required {
            ops.require_operator_totp(&actor, &name, req).await?;
        }
        if let Some(req) = p.cert_required {
            ops.require_cert(&actor, crate::store::CertRole::Operator, &name, req)
                .await?;
        }
        match p.suspended {
            Some(true) => {
                ops.suspend(&actor, &name).await?;
            }
            Some(false) => ops.resume(&actor, &name).await?,
            None => {}
        }
        Ok::<_, OpError>(())
    };
    match result.await {
        Ok(()) => api_operator(State(console.clone()), Path(name)).await,
        Err(e) => api_error(e),
    }
}

pub(super) async fn api_delete_operator(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
) -> Response {
    match console.ops.delete(&ctx.actor(), &name).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => api_error(e),
    }
}

pub(super) async fn api_sessions(State(console): State<Console>) -> Response {
    Json(grid_rows(&console.shared).await).into_response()
}

pub(super) async fn api_end_session(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    match console.ops.end_session(&ctx.actor(), &id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => api_error(e),
    }
}

/// `GET /api/v1/history` filters: each one sent is neither empty nor padded.
#[derive(serde::Deserialize)]
pub(super) struct ApiHistoryQuery {
    operator: Option<String>,
    client_ip: Option<String>,
    from: Option<String>,
    to: Option<String>,
    end_reason: Option<String>,
}

pub(super) async fn api_history(State(console): State<Console>, Query(q): Query<ApiHistoryQuery>) -> Response {
    let result = async {
        let given = |name: &str, v: Option<String>| -> Result<String, OpError> {
            match v {
                None => Ok(String::new()),
                Some(v) if v.is_empty() => Err(OpError::Invalid(format!("{name} is empty: leave it out instead"))),
                Some(v) if v.trim() != v => Err(OpError::Invalid(format!("{name} has surrounding spaces"))),
                Some(v) => Ok(v),
            }
        };
        let day = |name: &str, v: Option<String>| -> Result<String, OpError> {
            let v = given(name, v)?;
            let shape = v.is_empty()
                || (v.len() == 10
                    && !v.starts_with("0000")
                    && v.bytes().enumerate().all(|(i, b)| match i {
                        4 | 7 => b == b'-',
                        _ => b.is_ascii_digit(),
                    }));
            if shape {
                Ok(v)
            } else {
                Err(OpError::Invalid(format!("{name} is a day like 2026-01-31")))
            }
        };
        let end_reason = given("end_reason", q.end_reason)?;
        if !end_reason.is_empty() && !super::history::END_REASONS.contains(&end_reason.as_str()) {
            return Err(OpError::Invalid(format!(
                "end_reason is one of {}",
                super::history::END_REASONS.join(", ")
            )));
        }
        let q = HistoryQuery {
            operator: given("operator", q.operator)?,
            client_ip: given("client_ip", q.client_ip)?,
            from: day("from", q.from)?,
            to: day("to", q.to)?,
            end_reason,
            ..Default::default()
        };
        // Machine-read: days in UTC, whatever zone the console shows.
        let f = q.filter(&jiff::tz::TimeZone::UTC, crate::store::HISTORY_MAX_ROWS)?;
        Ok::<_, OpError>(console.shared.store.history(&f).await?)
    };
    match result.await {
        Ok(r) => Json(r).into_response(),
        Err(e) => api_error(e),
    }
}

pub(super) async fn api_audit_verify(State(console): State<Console>) -> Response {
    match audit::verify(&console.shared.store).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => api_error(e.into()),
    }
}

/// The OpenAPI 3.1 description of `/api/v1`.
pub const OPENAPI: &str = include_str!("openapi.json");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::ROUTES;

    #[test]
    fn openapi_is_json_and_lists_every_api_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for (method, path, _) in ROUTES
            .iter()
            .filter(|(_, p, _)| p.starts_with("/api/v1/") && *p != "/api/v1/openapi.json")
        {
            let templ = path
                .replace("/alice", "/{name}")
                .replace("/certificates/abc", "/certificates/{serial}")
                .replace("/abc", "/{id}")
                .replace("/0123456789abcdef", "/{id}");
            let templ = templ.trim_start_matches("/api/v1");
            let entry = paths
                .get(templ)
                .unwrap_or_else(|| panic!("{templ} missing from openapi.json"));
            assert!(
                entry.get(method.to_lowercase()).is_some(),
                "{method} {templ} missing from openapi.json"
            );
        }
    }

    #[test]
    fn every_operation_states_the_refusals_every_route_can_answer() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        for (path, entry) in doc["paths"].as_object().unwrap() {
            for (method, op) in entry.as_object().unwrap() {
                if method == "parameters" {
                    continue;
                }
                let statuses = op["responses"].as_object().unwrap();
                let mut needed = vec!["401", "403", "414", "429", "500", "503"];
                if op.get("requestBody").is_some() {
                    needed.extend(["400", "413", "415", "422"]);
                }
                for status in needed {
                    assert!(statuses.contains_key(status), "{method} {path} does not state {status}");
                }
            }
        }
    }
}

#[derive(serde::Deserialize)]
pub(super) struct CertQuery {
    account: Option<String>,
    role: Option<String>,
}

fn cert_role(role: Option<&str>) -> Result<crate::store::CertRole, OpError> {
    match role {
        None => Ok(crate::store::CertRole::Operator),
        Some(r) => {
            crate::store::CertRole::parse(r).ok_or_else(|| OpError::Invalid("role is \"operator\" or \"admin\"".into()))
        }
    }
}

/// `GET /api/v1/certificates[?account=NAME&role=operator|admin]`.
pub(super) async fn api_certificates(State(console): State<Console>, Query(q): Query<CertQuery>) -> Response {
    let role = match cert_role(q.role.as_deref()) {
        Ok(r) => r,
        Err(e) => return api_error(e),
    };
    if let Some(account) = q.account.as_deref() {
        if let Err(e) = crate::accounts::validate_name(account) {
            return api_error(e.into());
        }
    }
    match console.ops.list_certs(q.account.as_deref().map(|a| (role, a))).await {
        Ok(rows) => Json(rows).into_response(),
        Err(e) => api_error(e),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewCertificate {
    account: String,
    role: Option<String>,
    device: String,
}

/// `POST /api/v1/certificates`: issues one; the answer holds the `.p12` (base64) and its
/// import password, which are never shown again.
pub(super) async fn api_issue_certificate(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    ApiJson(body): ApiJson<NewCertificate>,
) -> Response {
    use base64::Engine as _;
    let role = match cert_role(body.role.as_deref()) {
        Ok(r) => r,
        Err(e) => return api_error(e),
    };
    match console
        .ops
        .issue_cert(&ctx.actor(), role, &body.account, &body.device)
        .await
    {
        Ok(issued) => (
            StatusCode::CREATED,
            Json(serde_json::json!({
                "certificate": issued.row,
                "password": issued.file.password,
                "p12_base64": base64::engine::general_purpose::STANDARD.encode(&issued.file.p12),
            })),
        )
            .into_response(),
        Err(e) => api_error(e),
    }
}

/// `DELETE /api/v1/certificates/{serial}`: revokes it.
pub(super) async fn api_revoke_certificate(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Path(serial): Path<String>,
) -> Response {
    match console.ops.revoke_cert(&ctx.actor(), &serial).await {
        Ok(row) => Json(row).into_response(),
        Err(e) => api_error(e),
    }
}

/// `GET /crl.pem`: the client CA's latest CRL (public, like any CRL).
pub(super) async fn crl(State(console): State<Console>) -> Response {
    match console.shared.client_certs.crl_pem() {
        Some(pem) => ([(axum::http::header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response(),
        None => (StatusCode::NOT_FOUND, "no certificate has been issued yet").into_response(),
    }
}

/// `GET /api/v1/tokens`: every API token, newest first (never a secret). A console
/// session only: the guard refuses tokens here.
pub(super) async fn api_tokens(State(console): State<Console>) -> Response {
    match console.ops.list_tokens().await {
        Ok(rows) => Json(rows).into_response(),
        Err(e) => api_error(e),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewToken {
    name: String,
    scope: String,
    #[serde(default, deserialize_with = "whole_number")]
    expires_days: Option<u32>,
}

/// `POST /api/v1/tokens`: creates one; the answer holds the token, never shown again.
pub(super) async fn api_create_token(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    ApiJson(body): ApiJson<NewToken>,
) -> Response {
    let Some(scope) = crate::store::TokenScope::parse(&body.scope) else {
        return api_error(OpError::Invalid("scope is \"read\" or \"write\"".into()));
    };
    match console
        .ops
        .create_token(&ctx.actor(), &body.name, scope, body.expires_days)
        .await
    {
        Ok(created) => (
            StatusCode::CREATED,
            Json(serde_json::json!({ "token": created.token, "details": created.row })),
        )
            .into_response(),
        Err(e) => api_error(e),
    }
}

/// `DELETE /api/v1/tokens/{id}`: revokes it at once, on every node.
pub(super) async fn api_revoke_token(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    match console.ops.revoke_token(&ctx.actor(), &id).await {
        Ok(row) => Json(row).into_response(),
        Err(e) => api_error(e),
    }
}
