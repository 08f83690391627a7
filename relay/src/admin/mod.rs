//! The admin console: server-rendered pages and a REST API under `/api/v1`, over HTTPS
//! with the relay's own certificate.
//!
//! * Login is two steps: name and password, then a TOTP code (or a one-time recovery
//!   code); an admin without TOTP enrols on first login (QR code) and gets recovery codes.
//!   Failures are answered more and more slowly, then lock the account for
//!   `admin.lockout`; every attempt is audited.
//! * Sessions live in memory behind a `__Host-` cookie (Secure, HttpOnly,
//!   SameSite=Strict); every change needs the session's CSRF token (form field `csrf` or
//!   header `x-csrf-token`). Every response carries CSP, HSTS, nosniff and no-store.
//! * Scripts use `/api/v1` with an API token instead (`Authorization: Bearer tsu_...`, see
//!   [`tokens`]): no cookie, no CSRF token; a read-only token may only `GET`; no token may
//!   manage tokens; a wrong token counts against the source's failed-login budget.
//! * [`ROUTES`] lists every route with whether it is public; a test walks all of them.
//!
//! The rooms: `server` (listener, TLS, security headers, router), `auth` (console
//! sessions, cookies, CSRF, login, TOTP, enrolment, logout, login throttling), `pages`
//! (what every page shares), one module per page family (`operators`, `sessions`,
//! `history`, `export`, `audit_page`, `dashboard` with its SVG `charts`), `api` (REST API and OpenAPI), `ops` (the operations
//! behind pages, API and CLI) and `html` (escaping, the page frame, the wording). This
//! module holds only what they share: [`Console`], the request context, and the one
//! mapping from a refused operation to an HTTP status.

pub mod certs;
pub mod html;
pub mod ops;
pub mod tokens;

mod api;
mod audit_page;
mod auth;
mod charts;
mod dashboard;
mod export;
mod health;
mod history;
mod operators;
mod pages;
mod server;
mod sessions;
mod tokens_page;
mod words;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::StatusCode;
use dashmap::DashMap;

use crate::audit;
use crate::state::Shared;
use auth::{random_key, AdminSession};
use html::Lang;
use ops::{Actor, OpError, Ops};

pub use api::OPENAPI;
pub use auth::{source_prefix, LANG_COOKIE, MAX_SESSIONS, PENDING_LOGIN, SESSION_COOKIE};
pub use export::zip_files;
pub use history::{HistoryQuery, HISTORY_PAGE_ROWS};
pub use server::{serve, ROUTES};
pub(crate) use sessions::live_rows;
pub use sessions::LiveRow;

/// Largest request body accepted (forms, JSON); IP rule lists are the biggest input.
pub const MAX_BODY: usize = 64 * 1024;

/// The console's state; cheap to clone.
#[derive(Clone)]
pub struct Console {
    shared: Arc<Shared>,
    ops: Ops,
    sessions: Arc<DashMap<String, AdminSession>>,
    dummy_hash: Arc<String>,
    totp_used: Arc<crate::totp::ReplayGuard>,
    /// Key of the hash that stands for a typed name matching no account (in the failure
    /// counters and the audit trail); random per process, never stored.
    name_key: Arc<[u8; 32]>,
    /// `admin.time_zone`: every time a page shows, and the days an admin types.
    zone: jiff::tz::TimeZone,
}

/// The peer address of the HTTP connection.
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

/// The client certificate the HTTP connection's TLS handshake verified, if any.
#[derive(Debug, Clone)]
struct ConnCert(Option<crate::certs::PeerCert>);

/// The logged-in admin, put in the request by the guard.
#[derive(Debug, Clone)]
struct Ctx {
    admin: String,
    csrf: String,
    lang: Lang,
    ip: String,
    /// The API token the request came with (`/api/v1` only); `None`: a console session.
    token: Option<String>,
    /// The console's time zone (`admin.time_zone`).
    zone: jiff::tz::TimeZone,
}

impl Ctx {
    /// Who the audit trail names: `admin:NAME` for a console session, `token:ID` for an
    /// API token.
    fn actor(&self) -> Actor {
        let name = match &self.token {
            Some(id) => format!("token:{id}"),
            None => format!("admin:{}", self.admin),
        };
        Actor {
            name,
            ip: self.ip.clone(),
        }
    }
}

impl Console {
    fn new(shared: Arc<Shared>) -> Self {
        let ops = Ops::of_relay(&shared);
        let dummy_hash = Arc::new(crate::accounts::dummy_hash(&shared.config.accounts));
        // The relay validated the config before it got here, zone included; UTC stands in
        // only for a config built in code without validation.
        let zone = shared.config.admin.zone().unwrap_or(jiff::tz::TimeZone::UTC);
        Self {
            shared,
            ops,
            sessions: Default::default(),
            dummy_hash,
            totp_used: Default::default(),
            name_key: Arc::new(random_key()),
            zone,
        }
    }

    async fn audit(&self, actor: String, action: &'static str, target: &str, ip: &str, detail: String) {
        self.shared
            .audit
            .record(audit::Entry {
                actor,
                action,
                target: target.to_string(),
                ip: ip.to_string(),
                detail,
            })
            .await;
    }
}

/// The HTTP status a refused operation is answered with, for pages and API alike.
fn op_status(e: &OpError) -> StatusCode {
    match e {
        OpError::Invalid(_) => StatusCode::BAD_REQUEST,
        OpError::NotFound(_) => StatusCode::NOT_FOUND,
        OpError::Conflict(_) => StatusCode::CONFLICT,
        OpError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        OpError::Busy => StatusCode::SERVICE_UNAVAILABLE,
    }
}
