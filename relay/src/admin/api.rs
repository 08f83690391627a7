//! The REST API under `/api/v1` (JSON in and out, the same operations as the pages) and
//! its OpenAPI description.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
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
    (status, Json(serde_json::json!({"error": e.to_string()}))).into_response()
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
pub(super) struct NewOperator {
    name: String,
    password: String,
    #[serde(default)]
    permissions: Option<Vec<String>>,
}

pub(super) async fn api_create_operator(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Json(body): Json<NewOperator>,
) -> Response {
    let perms = match &body.permissions {
        Some(p) => match ops::parse_permissions(p.iter().map(String::as_str)) {
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
pub(super) struct OperatorPatch {
    permissions: Option<Vec<String>>,
    max_sessions: Option<u32>,
    ip_rules: Option<Vec<String>>,
    suspended: Option<bool>,
    totp_required: Option<bool>,
    cert_required: Option<bool>,
    password: Option<String>,
}

pub(super) async fn api_update_operator(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
    Json(p): Json<OperatorPatch>,
) -> Response {
    let actor = ctx.actor();
    let ops = &console.ops;
    let result = async {
        if let Some(perms) = &p.permissions {
            ops.set_permissions(&actor, &name, ops::parse_permissions(perms.iter().map(String::as_str))?)
                .await?;
        }
        if let Some(max) = p.max_sessions {
            ops.set_max_sessions(&actor, &name, max).await?;
        }
        if let Some(rules) = &p.ip_rules {
            ops.set_ip_rules(&actor, &name, &ops::parse_ip_rules(&rules.join("\n"))?)
                .await?;
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

pub(super) async fn api_history(State(console): State<Console>, Query(q): Query<HistoryQuery>) -> Response {
    let result = async {
        let f = q.filter(crate::store::HISTORY_MAX_ROWS)?;
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
            let templ = path.replace("/alice", "/{name}").replace("/abc", "/{id}");
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
    match console.ops.list_certs(q.account.as_deref().map(|a| (role, a))).await {
        Ok(rows) => Json(rows).into_response(),
        Err(e) => api_error(e),
    }
}

#[derive(serde::Deserialize)]
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
    Json(body): Json<NewCertificate>,
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
