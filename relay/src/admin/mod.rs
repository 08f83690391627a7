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
//! * [`ROUTES`] lists every route with whether it is public; a test walks all of them.

pub mod html;
pub mod ops;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use dashmap::DashMap;
use sha2::Digest;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tsunagu_proto::PermissionSet;

use crate::audit;
use crate::history::now_ms;
use crate::server::Shared;
use crate::store::{HistoryFilter, SessionRecord};
use crate::tls::ServerCerts;
use html::{esc, page, t, url, Lang};
use ops::{Actor, OpError, Ops};

/// The session cookie. `__Host-` makes browsers insist on Secure, Path=/ and no Domain.
pub const SESSION_COOKIE: &str = "__Host-tsunagu_admin";
/// The language preference cookie.
pub const LANG_COOKIE: &str = "__Host-tsunagu_lang";
/// Largest request body accepted (forms, JSON); IP rule lists are the biggest input.
pub const MAX_BODY: usize = 64 * 1024;
/// A password-checked login must finish its second step within this.
pub const PENDING_LOGIN: Duration = Duration::from_secs(5 * 60);
/// Admin sessions held at once; the oldest are dropped beyond (bounds memory).
pub const MAX_SESSIONS: usize = 10_000;
/// Rows shown on one history page.
pub const HISTORY_PAGE_ROWS: i64 = 500;

/// Every route: method, path (with sample values for parameters), public or not.
pub const ROUTES: &[(&str, &str, bool)] = &[
    ("GET", "/login", true),
    ("POST", "/login", true),
    ("GET", "/lang?l=ja", true),
    ("GET", "/static/console.css", true),
    ("GET", "/api/v1/openapi.json", true),
    ("GET", "/login/totp", false),
    ("POST", "/login/totp", false),
    ("GET", "/login/enrol", false),
    ("POST", "/login/enrol", false),
    ("GET", "/", false),
    ("POST", "/logout", false),
    ("GET", "/operators", false),
    ("POST", "/operators", false),
    ("GET", "/operators/alice", false),
    ("POST", "/operators/alice/suspend", false),
    ("GET", "/sessions", false),
    ("POST", "/sessions/abc/end", false),
    ("GET", "/history", false),
    ("GET", "/history/export.csv", false),
    ("GET", "/history/day.zip?date=2026-01-01", false),
    ("GET", "/history/abc", false),
    ("GET", "/audit", false),
    ("GET", "/api/v1/operators", false),
    ("POST", "/api/v1/operators", false),
    ("GET", "/api/v1/operators/alice", false),
    ("PATCH", "/api/v1/operators/alice", false),
    ("DELETE", "/api/v1/operators/alice", false),
    ("GET", "/api/v1/sessions", false),
    ("DELETE", "/api/v1/sessions/abc", false),
    ("GET", "/api/v1/history", false),
    ("GET", "/api/v1/audit/verify", false),
];

#[derive(Debug, Clone)]
enum Stage {
    /// Password accepted; a TOTP or recovery code is next.
    NeedTotp,
    /// Password accepted; no TOTP yet: enrolling this secret.
    Enrol { secret: String },
    /// Fully logged in.
    Done,
}

#[derive(Debug, Clone)]
struct AdminSession {
    admin: String,
    stage: Stage,
    csrf: String,
    created: Instant,
    last_used: Instant,
}

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
}

/// The peer address of the HTTP connection.
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

/// The logged-in admin, put in the request by the guard.
#[derive(Debug, Clone)]
struct Ctx {
    admin: String,
    csrf: String,
    lang: Lang,
    ip: String,
}

impl Ctx {
    fn actor(&self) -> Actor {
        Actor {
            name: format!("admin:{}", self.admin),
            ip: self.ip.clone(),
        }
    }
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    // Without the OS CSPRNG no session could be safe: refuse rather than degrade.
    getrandom::fill(&mut b).expect("the OS random number generator is available");
    crate::totp::hex(&b)
}

fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    if getrandom::fill(&mut key).is_err() {
        // Without OS randomness the key is still unknown outside this process, just weaker:
        // mix in what is at hand rather than refuse to serve.
        let seed = format!("{:?}{:?}", Instant::now(), std::time::SystemTime::now());
        key.copy_from_slice(&sha2::Sha256::digest(seed.as_bytes()));
    }
    key
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then(|| v.to_string())
        })
}

fn lang_of(headers: &HeaderMap) -> Lang {
    Lang::pick(
        cookie(headers, LANG_COOKIE).as_deref(),
        headers.get(header::ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok()),
    )
}

fn session_cookie(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict"
    ))
    .expect("hex token is a valid header")
}

fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("__Host-tsunagu_admin=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

fn html_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

/// Starts the console on `addr`; returns the bound address and the accept task.
pub async fn serve(
    shared: Arc<Shared>,
    certs: Arc<ServerCerts>,
    addr: SocketAddr,
    stop: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let mut tls = (*certs.server_config().map_err(std::io::Error::other)?).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let console = Console::new(shared.clone());
    let app = router(console);
    let task = tokio::spawn(accept_loop(listener, acceptor, app, shared, stop));
    Ok((bound, task))
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Router,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let handshake = shared.config.timeouts.handshake;
    let request_timeout = shared.config.admin.request_timeout;
    let console_connections =
        crate::connlimit::ConnLimiter::new(crate::connlimit::ConnLimits::console(&shared.config.admin), "console");
    let mut prune = tokio::time::interval(PRUNE_FAILURES_EVERY);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = prune.tick() => {
                prune_failures(&shared).await;
                continue;
            }
            _ = crate::server::until_true(&mut stop) => return,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // The console's own pool and per-source cap, taken before the TLS handshake.
        let Ok(permit) = console_connections.try_admit(peer.ip(), Instant::now()) else {
            drop(tcp);
            continue;
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                _ => return,
            };
            let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(Peer(peer));
                let app = app.clone();
                async move { tower::ServiceExt::oneshot(app, req.map(Body::new)).await }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(request_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
            // A connection lives at most a few request timeouts' worth of keep-alive.
            let _ = tokio::time::timeout(request_timeout * 10, conn).await;
        });
    }
}

/// How often stale login failure counters are dropped; they only need to go eventually
/// (the table's size is what this bounds).
const PRUNE_FAILURES_EVERY: Duration = Duration::from_secs(60);

/// Drops failure counters that have been quiet and unlocked for longer than `admin.lockout`.
async fn prune_failures(shared: &Shared) {
    let before = now_ms() - shared.config.admin.lockout.as_millis() as i64;
    if let Err(e) = shared.store.prune_admin_failures(before).await {
        tracing::warn!(error = %e, "could not prune admin login failure counters");
    }
}

impl Console {
    fn new(shared: Arc<Shared>) -> Self {
        let ops = Ops {
            store: shared.store.clone(),
            audit: shared.audit.clone(),
            config: shared.config.clone(),
            shared: Some(shared.clone()),
            verifier: shared.verifier.clone(),
        };
        let dummy_hash = Arc::new(crate::accounts::dummy_hash(&shared.config.accounts));
        Self {
            shared,
            ops,
            sessions: Default::default(),
            dummy_hash,
            totp_used: Default::default(),
            name_key: Arc::new(random_key()),
        }
    }

    fn session(&self, headers: &HeaderMap) -> Option<(String, AdminSession)> {
        let token = cookie(headers, SESSION_COOKIE)?;
        let cfg = &self.shared.config.admin;
        let now = Instant::now();
        let s = self.sessions.get(&token)?.clone();
        let limit = if matches!(s.stage, Stage::Done) {
            cfg.session_idle
        } else {
            PENDING_LOGIN
        };
        if now.duration_since(s.last_used) > limit || now.duration_since(s.created) > cfg.session_max {
            self.sessions.remove(&token);
            return None;
        }
        if let Some(mut live) = self.sessions.get_mut(&token) {
            live.last_used = now;
        }
        Some((token, s))
    }

    fn new_session(&self, admin: &str, stage: Stage) -> (String, AdminSession) {
        if self.sessions.len() >= MAX_SESSIONS {
            // Drop expired ones first; if still full, the oldest.
            let idle = self.shared.config.admin.session_idle;
            self.sessions.retain(|_, s| s.last_used.elapsed() < idle);
            if self.sessions.len() >= MAX_SESSIONS {
                let oldest = self
                    .sessions
                    .iter()
                    .min_by_key(|e| e.value().last_used)
                    .map(|e| e.key().clone());
                if let Some(k) = oldest {
                    self.sessions.remove(&k);
                }
            }
        }
        let now = Instant::now();
        let s = AdminSession {
            admin: admin.to_string(),
            stage,
            csrf: random_token(),
            created: now,
            last_used: now,
        };
        let token = random_token();
        self.sessions.insert(token.clone(), s.clone());
        (token, s)
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

fn router(console: Console) -> Router {
    let protected = Router::new()
        .route("/", get(|| async { see_other("/operators") }))
        .route("/logout", post(logout))
        .route("/operators", get(operators_page).post(create_operator))
        .route("/operators/{name}", get(operator_page))
        .route("/operators/{name}/{action}", post(operator_action))
        .route("/sessions", get(sessions_page))
        .route("/sessions/{id}/end", post(end_session))
        .route("/history", get(history_page))
        .route("/history/export.csv", get(history_csv))
        .route("/history/day.zip", get(history_zip))
        .route("/history/{id}", get(session_page))
        .route("/audit", get(audit_page))
        .route("/api/v1/operators", get(api_operators).post(api_create_operator))
        .route(
            "/api/v1/operators/{name}",
            get(api_operator).patch(api_update_operator).delete(api_delete_operator),
        )
        .route("/api/v1/sessions", get(api_sessions))
        .route("/api/v1/sessions/{id}", axum::routing::delete(api_end_session))
        .route("/api/v1/history", get(api_history))
        .route("/api/v1/audit/verify", get(api_audit_verify))
        .route_layer(middleware::from_fn_with_state(console.clone(), guard));
    Router::new()
        .route("/login", get(login_page).post(login))
        .route("/login/totp", get(totp_page).post(totp_submit))
        .route("/login/enrol", get(enrol_page).post(enrol_submit))
        .route("/lang", get(set_lang))
        .route(
            "/static/console.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], html::CSS) }),
        )
        .route(
            "/api/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .merge(protected)
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(security_headers))
        .with_state(console)
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn peer_ip(req: &Request) -> String {
    req.extensions()
        .get::<Peer>()
        .map(|p| p.0.ip().to_string())
        .unwrap_or_default()
}

/// Refuses anyone not fully logged in (pages redirect to /login, the API answers 401), and
/// any change without the session's CSRF token (403).
async fn guard(State(console): State<Console>, req: Request, next: Next) -> Response {
    let api = req.uri().path().starts_with("/api/");
    let Some((_, s)) = console
        .session(req.headers())
        .filter(|(_, s)| matches!(s.stage, Stage::Done))
    else {
        return if api {
            (
                StatusCode::UNAUTHORIZED,
                Json(serde_json::json!({"error": "log in first"})),
            )
                .into_response()
        } else {
            see_other("/login")
        };
    };
    let ctx = Ctx {
        admin: s.admin.clone(),
        csrf: s.csrf.clone(),
        lang: lang_of(req.headers()),
        ip: peer_ip(&req),
    };
    let req = match check_csrf(req, &s.csrf).await {
        Ok(req) => req,
        Err(res) => return res,
    };
    let mut req = req;
    req.extensions_mut().insert(ctx);
    next.run(req).await
}

/// Non-GET requests must carry the token in `x-csrf-token` or a form field `csrf`.
async fn check_csrf(req: Request, expected: &str) -> Result<Request, Response> {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return Ok(req);
    }
    let refused = || (StatusCode::FORBIDDEN, "missing or wrong CSRF token").into_response();
    if let Some(h) = req.headers().get("x-csrf-token") {
        return if constant_eq(h.as_bytes(), expected.as_bytes()) {
            Ok(req)
        } else {
            Err(refused())
        };
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| (StatusCode::PAYLOAD_TOO_LARGE, "request too large").into_response())?;
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
    let ok = fields
        .iter()
        .any(|(k, v)| k == "csrf" && constant_eq(v.as_bytes(), expected.as_bytes()));
    if !ok {
        return Err(refused());
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ---------------------------------------------------------------- login

fn login_form(lang: Lang, error: Option<&str>) -> String {
    let err = error
        .map(|e| format!("<p class=\"error\" id=\"error\">{}</p>", esc(e)))
        .unwrap_or_default();
    page(
        lang,
        t(lang, "login"),
        None,
        &format!(
            "{err}<form method=\"post\" action=\"/login\"><p><label>{} <input name=\"name\" id=\"name\" autocomplete=\"username\" maxlength=\"64\" required></label></p>\
             <p><label>{} <input type=\"password\" name=\"password\" id=\"password\" autocomplete=\"current-password\" maxlength=\"128\" required></label></p>\
             <p><button id=\"submit\">{}</button></p></form>",
            t(lang, "name"),
            t(lang, "password"),
            t(lang, "login")
        ),
    )
}

async fn login_page(headers: HeaderMap) -> Response {
    html_response(StatusCode::OK, login_form(lang_of(&headers), None))
}

async fn set_lang(Query(q): Query<HashMap<String, String>>) -> Response {
    let l = if q.get("l").map(String::as_str) == Some("ja") {
        "ja"
    } else {
        "en"
    };
    let mut res = see_other("/");
    let v = HeaderValue::from_str(&format!(
        "{LANG_COOKIE}={l}; Path=/; Secure; SameSite=Strict; Max-Age=31536000"
    ))
    .expect("static cookie");
    res.headers_mut().insert(header::SET_COOKIE, v);
    res
}

#[derive(serde::Deserialize)]
struct LoginForm {
    name: String,
    password: String,
}

/// Delay before answering the n-th failure in a row: 250 ms doubling, at most 4 s.
fn failure_delay(failures: u32) -> Duration {
    Duration::from_millis(250u64 << failures.saturating_sub(1).min(4))
}

/// Failures against one account from all prefixes together, per `admin.lockout`, before the
/// account-wide slow-down starts, in multiples of `admin.lockout_after`: two places locked
/// out is still an accident; more is a spray.
const SLOWDOWN_FREE_LOCKOUTS: u64 = 2;
/// Extra wait per failure beyond that, before every login step for the account.
const SLOWDOWN_STEP: Duration = Duration::from_millis(100);
/// The longest extra wait: the owner still gets in (well within `admin.request_timeout`);
/// it slows a spray, it never refuses.
const SLOWDOWN_MAX: Duration = Duration::from_secs(5);

/// The extra wait before a login step for an account with `recent` failures from all
/// prefixes (each counted up to `lockout_after`).
fn account_slowdown(recent: u64, lockout_after: u32) -> Duration {
    let over = recent.saturating_sub(SLOWDOWN_FREE_LOCKOUTS * u64::from(lockout_after));
    SLOWDOWN_STEP
        .saturating_mul(over.min(u64::from(u32::MAX)) as u32)
        .min(SLOWDOWN_MAX)
}

/// The source prefix console login failures are counted by: the /24 of an IPv4 address,
/// the /48 of an IPv6 one (an IPv4-mapped address counts as IPv4). Everyone behind one
/// home or office network shares a budget, and an attacker there can lock its admins out
/// from there; an attacker anywhere else has a budget of their own and cannot. Per address
/// would give whoever holds a /24 (cheap at hosting providers) 256 budgets, and an IPv6
/// user whole /64s.
pub fn source_prefix(ip: IpAddr) -> String {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    let net = match ip {
        IpAddr::V4(v4) => ipnet::Ipv4Net::new(v4, 24).map(ipnet::IpNet::V4),
        IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, 48).map(ipnet::IpNet::V6),
    };
    // 24 and 48 are valid prefix lengths, so `new` cannot fail; the address itself is the
    // safe fallback all the same.
    net.map(|n| n.trunc().to_string()).unwrap_or_else(|_| ip.to_string())
}

/// Whose counter a login step runs on, and how the audit trail names it.
struct Account {
    /// The failure counters' key: the admin's name, or `unknown:HASH` for a name that
    /// matches no account.
    key: String,
    actor: String,
    target: String,
}

/// Why a login step was refused before its check.
enum Refused {
    /// This (account, prefix) is locked: answered 429.
    Locked,
    /// The counters could not be updated: refused rather than checked unbounded.
    Store,
}

impl Console {
    /// The account a typed name stands for. A name that matches no account is never kept
    /// as typed (a password typed into the name field must not be stored): it becomes a
    /// keyed hash, with a key that lives in this process only.
    fn account(&self, typed: &str, exists: bool) -> Account {
        if exists {
            return Account {
                key: typed.to_string(),
                actor: format!("admin:{typed}"),
                target: typed.to_string(),
            };
        }
        let mut h = sha2::Sha256::new();
        h.update(self.name_key.as_slice());
        h.update(typed.as_bytes());
        let hash = crate::totp::hex(&h.finalize()[..16]);
        Account {
            key: format!("unknown:{hash}"),
            actor: "unknown".into(),
            target: format!("unknown account (name hash {})", &hash[..16]),
        }
    }

    /// Starts a login step (password, TOTP, recovery code, enrolment) from `ip`: waits out
    /// the account's slow-down, then takes the step's attempt from the (account, prefix)
    /// budget in one store statement, before anything is checked. Parallel steps each take
    /// their own, so at most `admin.lockout_after` of them are ever checked.
    async fn begin_step(&self, account: &Account, ip: IpAddr) -> Result<crate::store::LoginAttempt, Refused> {
        let cfg = &self.shared.config.admin;
        let store = &self.shared.store;
        let lockout_ms = cfg.lockout.as_millis() as i64;
        let recent = store
            .admin_recent_failures(&account.key, now_ms() - lockout_ms, cfg.lockout_after)
            .await
            .unwrap_or(0);
        let slow = account_slowdown(recent, cfg.lockout_after);
        if !slow.is_zero() {
            tokio::time::sleep(slow).await;
        }
        let attempt = store
            .reserve_admin_attempt(
                &account.key,
                &source_prefix(ip),
                now_ms(),
                cfg.lockout_after,
                lockout_ms,
            )
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "could not count an admin login attempt");
                Refused::Store
            })?;
        if attempt.failures > cfg.lockout_after {
            return Err(Refused::Locked);
        }
        Ok(attempt)
    }

    /// Gives back a step's attempt: it succeeded, or it was never checked.
    async fn refund_step(&self, account: &Account, ip: IpAddr) {
        let after = self.shared.config.admin.lockout_after;
        if let Err(e) = self
            .shared
            .store
            .refund_admin_attempt(&account.key, &source_prefix(ip), after)
            .await
        {
            tracing::error!(error = %e, "could not refund an admin login attempt");
        }
    }

    /// A checked step failed (its attempt stays counted): answers after the failure delay
    /// and audits it. Returns true when this failure locked the account from this prefix.
    async fn step_failed(
        &self,
        account: &Account,
        ip: IpAddr,
        attempt: crate::store::LoginAttempt,
        reason: &str,
    ) -> bool {
        let locked = attempt.failures >= self.shared.config.admin.lockout_after;
        if !locked {
            tokio::time::sleep(failure_delay(attempt.failures)).await;
        }
        let detail = if locked {
            format!("reason={reason}; account locked from {}", source_prefix(ip))
        } else {
            format!("reason={reason}")
        };
        self.audit(
            account.actor.clone(),
            "admin_login_failed",
            &account.target,
            &ip.to_string(),
            detail,
        )
        .await;
        locked
    }

    /// A step refused before its check: audited, answered 429 (locked) or 503.
    async fn step_refused(&self, account: &Account, ip: IpAddr, why: Refused, lang: Lang) -> Response {
        let (status, reason, msg) = match why {
            Refused::Locked => (StatusCode::TOO_MANY_REQUESTS, "locked", "locked"),
            Refused::Store => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", "busy"),
        };
        self.audit(
            account.actor.clone(),
            "admin_login_failed",
            &account.target,
            &ip.to_string(),
            format!("reason={reason}"),
        )
        .await;
        html_response(status, login_form(lang, Some(t(lang, msg))))
    }
}

/// `POST /login`. A name that matches no account goes through exactly the same steps as
/// one that does (the same store statements, an argon2 check of the same cost through the
/// same pool, the same delays, the same lockout), so status, body and timing do not tell
/// them apart.
async fn login(
    State(console): State<Console>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let lang = lang_of(&headers);
    let ip = peer.ip();
    if form.name.len() > tsunagu_proto::limits::MAX_USER_NAME || form.password.len() > 256 {
        return html_response(
            StatusCode::UNAUTHORIZED,
            login_form(lang, Some(t(lang, "login_failed"))),
        );
    }
    let record = console.shared.store.admin(&form.name).await.ok().flatten();
    let account = console.account(&form.name, record.is_some());
    let attempt = match console.begin_step(&account, ip).await {
        Ok(a) => a,
        Err(why) => return console.step_refused(&account, ip, why, lang).await,
    };
    let hash = record
        .as_ref()
        .map(|r| r.password_hash.clone())
        .unwrap_or_else(|| console.dummy_hash.to_string());
    let ok = match console.shared.verifier.verify(form.password, hash).await {
        Ok(ok) => ok,
        Err(crate::verifier::Busy) => {
            // Nothing was checked: the attempt goes back.
            console.refund_step(&account, ip).await;
            return html_response(StatusCode::SERVICE_UNAVAILABLE, login_form(lang, Some(t(lang, "busy"))));
        }
    };
    let Some(record) = record.filter(|_| ok) else {
        let locked = console.step_failed(&account, ip, attempt, "password").await;
        let msg = if locked {
            t(lang, "locked")
        } else {
            t(lang, "login_failed")
        };
        return html_response(StatusCode::UNAUTHORIZED, login_form(lang, Some(msg)));
    };
    // The password is right: this step is no failure. The second step takes its own.
    console.refund_step(&account, ip).await;
    let (stage, next) = match &record.totp_secret {
        Some(_) => (Stage::NeedTotp, "/login/totp"),
        None => match crate::totp::new_secret() {
            Ok(secret) => (Stage::Enrol { secret }, "/login/enrol"),
            Err(_) => return (StatusCode::INTERNAL_SERVER_ERROR, "no randomness").into_response(),
        },
    };
    let (token, _) = console.new_session(&record.name, stage);
    let mut res = see_other(next);
    res.headers_mut().insert(header::SET_COOKIE, session_cookie(&token));
    res
}

fn totp_form(lang: Lang, csrf: &str, action: &str, error: Option<&str>, intro: &str) -> String {
    let err = error
        .map(|e| format!("<p class=\"error\" id=\"error\">{}</p>", esc(e)))
        .unwrap_or_default();
    format!(
        "{err}{intro}<form method=\"post\" action=\"{action}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <p><label>{} <input name=\"code\" id=\"code\" autocomplete=\"one-time-code\" maxlength=\"32\" required></label></p>\
         <p><button id=\"verify\">{}</button></p></form>",
        esc(csrf),
        t(lang, "totp_code"),
        t(lang, "verify")
    )
}

async fn totp_page(State(console): State<Console>, headers: HeaderMap) -> Response {
    let lang = lang_of(&headers);
    match console.session(&headers) {
        Some((_, s)) if matches!(s.stage, Stage::NeedTotp) => html_response(
            StatusCode::OK,
            page(
                lang,
                t(lang, "login"),
                None,
                &totp_form(lang, &s.csrf, "/login/totp", None, ""),
            ),
        ),
        _ => see_other("/login"),
    }
}

#[derive(Default, serde::Deserialize)]
struct CodeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    code: String,
}

impl CodeForm {
    /// Parsed after the session check, so a caller without a session learns nothing more
    /// than "log in" whatever it sends.
    fn parse(body: &[u8]) -> Self {
        serde_urlencoded::from_bytes(body).unwrap_or_default()
    }
}

impl Console {
    /// Ends the pending session and starts the full one under a fresh token (no fixation).
    async fn complete_login(&self, old_token: &str, admin: &str, ip: &str, how: &str, to: &str) -> (String, Response) {
        self.sessions.remove(old_token);
        // Both factors proved: the failures from this prefix are forgotten (not those from
        // elsewhere, or the owner would hand a stranger fresh guesses).
        let prefix = ip.parse().map(source_prefix).unwrap_or_else(|_| ip.to_string());
        if let Err(e) = self.shared.store.clear_admin_failures(admin, &prefix).await {
            tracing::error!(error = %e, "could not clear admin login failures");
        }
        let (token, s) = self.new_session(admin, Stage::Done);
        self.audit(
            format!("admin:{admin}"),
            "admin_login",
            admin,
            ip,
            format!("second_factor={how}"),
        )
        .await;
        let mut res = see_other(to);
        res.headers_mut().insert(header::SET_COOKIE, session_cookie(&token));
        (s.csrf, res)
    }
}

async fn totp_submit(
    State(console): State<Console>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let lang = lang_of(&headers);
    let ip = peer.ip().to_string();
    let Some((token, s)) = console
        .session(&headers)
        .filter(|(_, s)| matches!(s.stage, Stage::NeedTotp))
    else {
        return see_other("/login");
    };
    let form = CodeForm::parse(&body);
    if !constant_eq(form.csrf.as_bytes(), s.csrf.as_bytes()) {
        return (StatusCode::FORBIDDEN, "missing or wrong CSRF token").into_response();
    }
    let account = console.account(&s.admin, true);
    let attempt = match console.begin_step(&account, peer.ip()).await {
        Ok(a) => a,
        Err(why) => {
            console.sessions.remove(&token);
            return console.step_refused(&account, peer.ip(), why, lang).await;
        }
    };
    let record = console.shared.store.admin(&s.admin).await.ok().flatten();
    let secret = record.as_ref().and_then(|r| r.totp_secret.clone());
    let code = form.code.trim();
    let how = if secret
        .as_deref()
        .is_some_and(|sec| console.totp_used.accept(&s.admin, sec, code, crate::totp::now_secs()))
    {
        Some("totp")
    } else if code.len() >= 10
        && code.len() <= 32
        && console
            .shared
            .store
            .use_recovery_code(&s.admin, &crate::totp::recovery_hash(code), now_ms())
            .await
            .unwrap_or(false)
    {
        Some("recovery_code")
    } else {
        None
    };
    match how {
        Some(how) => console.complete_login(&token, &s.admin, &ip, how, "/operators").await.1,
        None => {
            if console.step_failed(&account, peer.ip(), attempt, "totp").await {
                console.sessions.remove(&token);
                return html_response(StatusCode::TOO_MANY_REQUESTS, login_form(lang, Some(t(lang, "locked"))));
            }
            html_response(
                StatusCode::UNAUTHORIZED,
                page(
                    lang,
                    t(lang, "login"),
                    None,
                    &totp_form(lang, &s.csrf, "/login/totp", Some(t(lang, "login_failed")), ""),
                ),
            )
        }
    }
}

fn enrol_body(lang: Lang, admin: &str, secret: &str, csrf: &str, error: Option<&str>) -> String {
    let url = crate::totp::otpauth_url(secret, admin);
    let qr = crate::totp::qr_svg(&url).unwrap_or_default();
    let intro = format!(
        "<p>{}</p><div class=\"qr\">{qr}</div><p>{}: <code class=\"secret\" id=\"secret\">{}</code></p>",
        t(lang, "enrol_help"),
        t(lang, "secret"),
        esc(secret)
    );
    totp_form(lang, csrf, "/login/enrol", error, &intro)
}

async fn enrol_page(State(console): State<Console>, headers: HeaderMap) -> Response {
    let lang = lang_of(&headers);
    match console.session(&headers) {
        Some((_, s)) => match &s.stage {
            Stage::Enrol { secret } => html_response(
                StatusCode::OK,
                page(
                    lang,
                    t(lang, "enrol"),
                    None,
                    &enrol_body(lang, &s.admin, secret, &s.csrf, None),
                ),
            ),
            _ => see_other("/login"),
        },
        None => see_other("/login"),
    }
}

async fn enrol_submit(
    State(console): State<Console>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let lang = lang_of(&headers);
    let ip = peer.ip().to_string();
    let Some((token, s)) = console.session(&headers) else {
        return see_other("/login");
    };
    let Stage::Enrol { secret } = &s.stage else {
        return see_other("/login");
    };
    let form = CodeForm::parse(&body);
    if !constant_eq(form.csrf.as_bytes(), s.csrf.as_bytes()) {
        return (StatusCode::FORBIDDEN, "missing or wrong CSRF token").into_response();
    }
    let account = console.account(&s.admin, true);
    let attempt = match console.begin_step(&account, peer.ip()).await {
        Ok(a) => a,
        Err(why) => {
            console.sessions.remove(&token);
            return console.step_refused(&account, peer.ip(), why, lang).await;
        }
    };
    if !console
        .totp_used
        .accept(&s.admin, secret, &form.code, crate::totp::now_secs())
    {
        if console
            .step_failed(&account, peer.ip(), attempt, "totp_enrolment")
            .await
        {
            console.sessions.remove(&token);
            return html_response(StatusCode::TOO_MANY_REQUESTS, login_form(lang, Some(t(lang, "locked"))));
        }
        return html_response(
            StatusCode::UNAUTHORIZED,
            page(
                lang,
                t(lang, "enrol"),
                None,
                &enrol_body(lang, &s.admin, secret, &s.csrf, Some(t(lang, "login_failed"))),
            ),
        );
    }
    let Ok((codes, hashes)) = crate::totp::new_recovery_codes() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "no randomness").into_response();
    };
    if console
        .shared
        .store
        .set_admin_totp(&s.admin, Some(secret))
        .await
        .is_err()
        || console
            .shared
            .store
            .replace_recovery_codes(&s.admin, &hashes)
            .await
            .is_err()
    {
        return (StatusCode::INTERNAL_SERVER_ERROR, "could not save").into_response();
    }
    console
        .audit(
            format!("admin:{}", s.admin),
            "admin_totp_enrolled",
            &s.admin,
            &ip,
            String::new(),
        )
        .await;
    let (_, redirect) = console
        .complete_login(&token, &s.admin, &ip, "totp_enrolment", "/operators")
        .await;
    // Show the recovery codes once, on this response, with the new session cookie.
    let list: String = codes
        .iter()
        .map(|c| format!("<li><code>{}</code></li>", esc(c)))
        .collect();
    let body = format!(
        "<h2>{}</h2><p>{}</p><ul id=\"recovery-codes\">{list}</ul><p><a id=\"continue\" href=\"/operators\">{}</a></p>",
        t(lang, "recovery"),
        t(lang, "recovery_help"),
        t(lang, "continue")
    );
    let mut res = html_response(StatusCode::OK, page(lang, t(lang, "enrol"), None, &body));
    if let Some(c) = redirect.headers().get(header::SET_COOKIE) {
        res.headers_mut().insert(header::SET_COOKIE, c.clone());
    }
    res
}

async fn logout(State(console): State<Console>, Extension(ctx): Extension<Ctx>, headers: HeaderMap) -> Response {
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        console.sessions.remove(&token);
    }
    console
        .audit(
            format!("admin:{}", ctx.admin),
            "admin_logout",
            &ctx.admin,
            &ctx.ip,
            String::new(),
        )
        .await;
    let mut res = see_other("/login");
    res.headers_mut().insert(header::SET_COOKIE, clear_cookie());
    res
}

// ---------------------------------------------------------------- pages

fn render(ctx: &Ctx, title: &str, body: &str) -> Response {
    html_response(
        StatusCode::OK,
        page(ctx.lang, title, Some((&ctx.admin, &ctx.csrf)), body),
    )
}

fn op_error(ctx: &Ctx, e: &OpError) -> Response {
    let status = match e {
        OpError::Invalid(_) => StatusCode::BAD_REQUEST,
        OpError::NotFound(_) => StatusCode::NOT_FOUND,
        OpError::Conflict(_) => StatusCode::CONFLICT,
        OpError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        OpError::Busy => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = format!(
        "<p class=\"error\" id=\"error\">{}</p><p><a href=\"/operators\">{}</a></p>",
        esc(&e.to_string()),
        t(ctx.lang, "operators")
    );
    html_response(
        status,
        page(ctx.lang, t(ctx.lang, "operators"), Some((&ctx.admin, &ctx.csrf)), &body),
    )
}

fn csrf_field(ctx: &Ctx) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(&ctx.csrf))
}

fn permission_boxes(prefix: &str, set: PermissionSet) -> String {
    ["view", "control", "files", "chat"]
        .iter()
        .map(|p| {
            let on = PermissionSet::parse_names([*p])
                .map(|one| set.intersect(one) == one)
                .unwrap_or(false);
            format!(
                "<label><input type=\"checkbox\" name=\"perm\" value=\"{p}\" id=\"{prefix}-{p}\"{}> {p}</label> ",
                if on { " checked" } else { "" }
            )
        })
        .collect()
}

async fn operators_page(State(console): State<Console>, Extension(ctx): Extension<Ctx>) -> Response {
    let lang = ctx.lang;
    let ops = match console.shared.store.operators().await {
        Ok(o) => o,
        Err(_) => return op_error(&ctx, &OpError::Internal),
    };
    let rows: String = ops
        .iter()
        .map(|o| {
            format!(
                "<tr><td><a href=\"/operators/{}\">{}</a></td><td>{}</td><td class=\"status\">{}</td><td>{}</td><td>{}</td></tr>",
                url(&o.name),
                esc(&o.name),
                esc(&o.permissions.to_string()),
                t(lang, if o.suspended { "suspended" } else { "active" }),
                o.max_sessions,
                t(lang, if o.totp_secret.is_some() { "enrolled" } else { "not_enrolled" }),
            )
        })
        .collect();
    let body = format!(
        "<table id=\"operators\"><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>TOTP</th></tr>{rows}</table>\
         <h2>{}</h2><form method=\"post\" action=\"/operators\" id=\"create-operator\">{}\
         <p><label>{} <input name=\"name\" id=\"new-name\" maxlength=\"64\" required></label></p>\
         <p><label>{} <input type=\"password\" name=\"password\" id=\"new-password\" maxlength=\"64\" required></label></p>\
         <fieldset><legend>{}</legend>{}</fieldset><p><button id=\"create\">{}</button></p></form>",
        t(lang, "name"),
        t(lang, "permissions"),
        t(lang, "status"),
        t(lang, "max_sessions"),
        t(lang, "new_operator"),
        csrf_field(&ctx),
        t(lang, "name"),
        t(lang, "password"),
        t(lang, "permissions"),
        permission_boxes("new", PermissionSet::ALL),
        t(lang, "create"),
    );
    render(&ctx, t(lang, "operators"), &body)
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

async fn create_operator(
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
        Ok(()) => see_other(&format!("/operators/{}", url(&name))),
        Err(e) => op_error(&ctx, &e),
    }
}

async fn operator_page(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
) -> Response {
    let lang = ctx.lang;
    let o = match console.shared.store.operator(&name).await {
        Ok(Some(o)) => o,
        Ok(None) => return op_error(&ctx, &OpError::NotFound(format!("no operator named {name:?}"))),
        Err(_) => return op_error(&ctx, &OpError::Internal),
    };
    let base = format!("/operators/{}", url(&o.name));
    let csrf = csrf_field(&ctx);
    let button = |action: &str, label: &str| {
        format!("<form method=\"post\" action=\"{base}/{action}\" class=\"inline\">{csrf}<button id=\"{action}\">{}</button></form> ", t(lang, label))
    };
    let rules: Vec<String> = o.ip_rules.iter().map(|r| r.to_line()).collect();
    let live = crate::server::live_sessions_of(&console.shared, &o.name).len();
    let body = format!(
        "<p>{}: <strong id=\"status\">{}</strong> · {}: {live} · TOTP: {} ({})</p>\
         <p>{}{}</p>\
         <form method=\"post\" action=\"{base}/permissions\" id=\"permissions\">{csrf}<fieldset><legend>{}</legend>{}</fieldset><button id=\"save-permissions\">{}</button></form>\
         <form method=\"post\" action=\"{base}/limits\">{csrf}<p><label>{} <input name=\"max_sessions\" id=\"max-sessions\" value=\"{}\" size=\"5\"></label> <button id=\"save-limits\">{}</button></p></form>\
         <form method=\"post\" action=\"{base}/ip-rules\">{csrf}<p><label>{}<br><textarea name=\"rules\" id=\"ip-rules\">{}</textarea></label><br><button id=\"save-ip-rules\">{}</button></p></form>\
         <form method=\"post\" action=\"{base}/password\">{csrf}<p><label>{} <input type=\"password\" name=\"password\" maxlength=\"64\"></label> <button id=\"set-password\">{}</button></p></form>\
         <form method=\"post\" action=\"{base}/rename\">{csrf}<p><label>{} <input name=\"new_name\" maxlength=\"64\"></label> <button id=\"rename\">{}</button></p></form>\
         <p>{}{}{}</p><p>{}</p>",
        t(lang, "status"),
        t(lang, if o.suspended { "suspended" } else { "active" }),
        t(lang, "sessions"),
        t(lang, if o.totp_secret.is_some() { "enrolled" } else { "not_enrolled" }),
        t(lang, if o.totp_required { "required" } else { "optional" }),
        if o.suspended { button("resume", "resume") } else { button("suspend", "suspend") },
        button("delete", "delete"),
        t(lang, "permissions"),
        permission_boxes("perm", o.permissions),
        t(lang, "save"),
        t(lang, "max_sessions"),
        o.max_sessions,
        t(lang, "save"),
        t(lang, "ip_rules"),
        esc(&rules.join("\n")),
        t(lang, "save"),
        t(lang, "new_password"),
        t(lang, "set_password"),
        t(lang, "rename"),
        t(lang, "rename"),
        button("totp-enrol", "enrol_totp"),
        button("totp-reset", "reset_totp"),
        if o.totp_required { button("totp-optional", "optional_totp") } else { button("totp-require", "require_totp") },
        "",
    );
    render(&ctx, &format!("{}: {}", t(lang, "operator"), o.name), &body)
}

async fn operator_action(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Path((name, action)): Path<(String, String)>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    let actor = ctx.actor();
    let ops = &console.ops;
    let back = format!("/operators/{}", url(&name));
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
                .map(|_| Some(format!("/operators/{}", url(&new_name))))
        }
        "delete" => ops.delete(&actor, &name).await.map(|_| Some("/operators".to_string())),
        "totp-reset" => ops.reset_operator_totp(&actor, &name).await.map(|_| None),
        "totp-require" => ops.require_operator_totp(&actor, &name, true).await.map(|_| None),
        "totp-optional" => ops.require_operator_totp(&actor, &name, false).await.map(|_| None),
        "totp-enrol" => match ops.enrol_operator_totp(&actor, &name).await {
            Ok(secret) => {
                let qr = crate::totp::qr_svg(&crate::totp::otpauth_url(&secret, &name)).unwrap_or_default();
                let body = format!(
                    "<p>{}</p><div class=\"qr\">{qr}</div><p>{}: <code class=\"secret\" id=\"secret\">{}</code></p><p><a href=\"{back}\">{}</a></p>",
                    t(ctx.lang, "enrol_help"),
                    t(ctx.lang, "secret"),
                    esc(&secret),
                    t(ctx.lang, "continue")
                );
                return render(&ctx, t(ctx.lang, "enrol_totp"), &body);
            }
            Err(e) => Err(e),
        },
        _ => Err(OpError::NotFound("no such action".into())),
    };
    match result {
        Ok(to) => see_other(&to.unwrap_or(back)),
        Err(e) => op_error(&ctx, &e),
    }
}

/// A live session as the console and API show it.
#[derive(Debug, serde::Serialize)]
pub struct LiveRow {
    pub id: String,
    pub operator: String,
    pub operator_ip: String,
    pub client_host: Option<String>,
    pub client_ip: Option<String>,
    pub since: i64,
    pub state: &'static str,
    pub granted: Option<String>,
    pub bytes_to_client: u64,
    pub bytes_to_operator: u64,
}

fn live_rows(shared: &Shared) -> Vec<LiveRow> {
    let mut rows: Vec<LiveRow> = shared
        .sessions
        .iter()
        .filter(|e| !e.value().is_ended())
        .map(|e| {
            let s = e.value();
            let info = shared.live.get(&s.id).map(|i| i.clone());
            let view = s.view();
            let state = match view.phase {
                crate::policy::Phase::Active if view.modes.chat_only => "chat_only",
                crate::policy::Phase::Active if view.modes.paused => "paused",
                crate::policy::Phase::Active if view.modes.view_only => "view_only",
                crate::policy::Phase::Active => "active",
                crate::policy::Phase::AwaitingConsent => "awaiting_consent",
                _ => "awaiting_client",
            };
            LiveRow {
                id: s.id.clone(),
                operator: s.operator.clone(),
                operator_ip: info.as_ref().map(|i| i.operator_ip.clone()).unwrap_or_default(),
                client_host: info.as_ref().and_then(|i| i.client_host.clone()),
                client_ip: info.as_ref().and_then(|i| i.client_ip.clone()),
                since: info.as_ref().map(|i| i.issued_at).unwrap_or_default(),
                state,
                granted: (!view.granted.is_empty())
                    .then(|| view.granted.to_string())
                    .or_else(|| info.and_then(|i| i.granted)),
                bytes_to_client: view.counters.bytes_to_client,
                bytes_to_operator: view.counters.bytes_to_operator,
            }
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.since));
    rows
}

async fn sessions_page(State(console): State<Console>, Extension(ctx): Extension<Ctx>) -> Response {
    let lang = ctx.lang;
    let rows: String = live_rows(&console.shared)
        .iter()
        .map(|r| {
            let state = match r.state {
                "active" => t(lang, "state_active"),
                "paused" => t(lang, "state_paused"),
                "view_only" => t(lang, "state_view_only"),
                "chat_only" => t(lang, "state_chat_only"),
                "awaiting_consent" => t(lang, "awaiting_consent"),
                _ => t(lang, "awaiting_client"),
            };
            format!(
                "<tr><td>{}</td><td class=\"client-host\">{}</td><td>{}</td><td>{}</td><td class=\"state\">{}</td><td>{}</td><td class=\"bytes\">{} / {}</td><td><form method=\"post\" action=\"/sessions/{}/end\" class=\"inline\">{}<button class=\"end\">{}</button></form></td></tr>",
                esc(&r.operator),
                esc(r.client_host.as_deref().unwrap_or("")),
                esc(r.client_ip.as_deref().unwrap_or("")),
                html::time(Some(r.since)),
                state,
                esc(r.granted.as_deref().unwrap_or("")),
                r.bytes_to_client,
                r.bytes_to_operator,
                url(&r.id),
                csrf_field(&ctx),
                t(lang, "end"),
            )
        })
        .collect();
    let body = format!(
        "<table id=\"live\"><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th></th></tr>{rows}</table>",
        t(lang, "operator"),
        t(lang, "client_host"),
        t(lang, "client_ip"),
        t(lang, "since"),
        t(lang, "state"),
        t(lang, "granted"),
        t(lang, "bytes_each_way"),
    );
    render(&ctx, t(lang, "sessions"), &body)
}

async fn end_session(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    match console.ops.end_session(&ctx.actor(), &id).await {
        Ok(()) => see_other("/sessions"),
        Err(e) => op_error(&ctx, &e),
    }
}

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

fn day_start_ms(date: &str) -> Result<i64, OpError> {
    chrono::NaiveDate::parse_from_str(date.trim(), "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
        .ok_or_else(|| OpError::Invalid(format!("{date:?} is not a date like 2026-01-31")))
}

const DAY_MS: i64 = 24 * 3600 * 1000;

impl HistoryQuery {
    fn filter(&self, limit: i64) -> Result<HistoryFilter, OpError> {
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

    fn query_string(&self) -> String {
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
const END_REASONS: &[&str] = &[
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
];

async fn history_page(
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
                esc(r.end_reason.as_deref().unwrap_or("live")),
                esc(r.granted.as_deref().unwrap_or("")),
                r.bytes_to_client,
                r.bytes_to_operator,
            )
        })
        .collect();
    let reasons: String = std::iter::once(String::from("<option value=\"\">—</option>"))
        .chain(END_REASONS.iter().map(|r| {
            format!(
                "<option value=\"{r}\"{}>{r}</option>",
                if q.end_reason == *r { " selected" } else { "" }
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
         <table id=\"history\"><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>{rows}</table>",
        t(lang, "operator"),
        esc(&q.operator),
        t(lang, "client_ip"),
        esc(&q.client_ip),
        t(lang, "from"),
        esc(&q.from),
        t(lang, "to"),
        esc(&q.to),
        t(lang, "end_reason"),
        t(lang, "filter"),
        esc(&q.query_string()),
        t(lang, "export_csv"),
        t(lang, "day_zip"),
        t(lang, "issued"),
        t(lang, "operator"),
        t(lang, "client_host"),
        t(lang, "client_ip"),
        t(lang, "ended"),
        t(lang, "end_reason"),
        t(lang, "granted"),
        t(lang, "bytes"),
    );
    render(&ctx, t(lang, "history"), &body)
}

fn csv_response(filename: &str, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        body,
    )
        .into_response()
}

async fn history_csv(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let records = match q.filter(crate::store::HISTORY_MAX_ROWS) {
        Ok(f) => console.shared.store.history(&f).await.map_err(OpError::from),
        Err(e) => Err(e),
    };
    match records.and_then(|r| crate::history::render(&r, "csv").map_err(|_| OpError::Internal)) {
        Ok(csv) => {
            console
                .audit(
                    format!("admin:{}", ctx.admin),
                    "history_exported",
                    "csv",
                    &ctx.ip,
                    q.query_string(),
                )
                .await;
            csv_response("tsunagu-history.csv", csv)
        }
        Err(e) => op_error(&ctx, &e),
    }
}

async fn files_csv(console: &Console, records: &[SessionRecord]) -> Result<String, OpError> {
    let mut out = String::from("session,name,size,direction,bytes,result,at\n");
    for r in records {
        for f in console.shared.store.session_files(&r.id).await? {
            let cells = [
                f.session_id,
                f.name,
                f.size.to_string(),
                f.direction,
                f.bytes.to_string(),
                f.result,
                html::time(Some(f.at)),
            ];
            out.push_str(
                &cells
                    .iter()
                    .map(|c| crate::history::csv_field(c))
                    .collect::<Vec<_>>()
                    .join(","),
            );
            out.push('\n');
        }
    }
    Ok(out)
}

async fn history_zip(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let date = q.get("date").cloned().unwrap_or_default();
    let start = match day_start_ms(&date) {
        Ok(s) => s,
        Err(e) => return op_error(&ctx, &e),
    };
    let filter = HistoryFilter {
        from_ms: Some(start),
        to_ms: Some(start + DAY_MS),
        limit: Some(crate::store::HISTORY_MAX_ROWS),
        ..Default::default()
    };
    let built = async {
        let records = console.shared.store.history(&filter).await?;
        let sessions = crate::history::render(&records, "csv").map_err(|_| OpError::Internal)?;
        let files = files_csv(&console, &records).await?;
        // Signed heads of the audit trail, so a copy outside the relay can later show rows
        // cut from its end.
        let checkpoints = console.shared.audit.day_checkpoints(start, start + DAY_MS).await;
        zip_files(&[
            ("sessions.csv", sessions.as_bytes()),
            ("files.csv", files.as_bytes()),
            ("audit-checkpoints.jsonl", checkpoints.as_bytes()),
        ])
        .map_err(|_| OpError::Internal)
    };
    match built.await {
        Ok(bytes) => {
            console
                .audit(
                    format!("admin:{}", ctx.admin),
                    "history_exported",
                    "zip",
                    &ctx.ip,
                    format!("date={date}"),
                )
                .await;
            (
                [
                    (header::CONTENT_TYPE, "application/zip".to_string()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"tsunagu-history-{}.zip\"", url(&date)),
                    ),
                ],
                bytes,
            )
                .into_response()
        }
        Err(e) => op_error(&ctx, &e),
    }
}

/// A zip archive of named files (deflated).
pub fn zip_files(files: &[(&str, &[u8])]) -> zip::result::ZipResult<Vec<u8>> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in files {
        w.start_file(*name, opts)?;
        w.write_all(data)?;
    }
    Ok(w.finish()?.into_inner())
}

async fn session_page(
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
        ("requested", r.requested.clone()),
        ("granted", r.granted.clone().unwrap_or_default()),
        ("issued", html::time(Some(r.issued_at))),
        ("joined", html::time(r.joined_at)),
        ("consented", html::time(r.consented_at)),
        ("ended", html::time(r.ended_at)),
        ("end_reason", r.end_reason.clone().unwrap_or_else(|| "live".into())),
        ("pauses", r.pauses.to_string()),
        ("bytes_to_client", r.bytes_to_client.to_string()),
        ("bytes_to_operator", r.bytes_to_operator.to_string()),
    ];
    let table: String = pairs
        .iter()
        .map(|(k, v)| format!("<tr><th>{k}</th><td id=\"d-{k}\">{}</td></tr>", esc(v)))
        .collect();
    let file_rows: String = files
        .iter()
        .map(|f| {
            format!(
                "<tr><td class=\"file-name\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&f.name),
                f.size,
                esc(&f.direction),
                f.bytes,
                esc(&f.result),
                html::time(Some(f.at))
            )
        })
        .collect();
    let files_html = if files.is_empty() {
        format!("<p>{}</p>", t(lang, "none"))
    } else {
        format!(
            "<table id=\"files\"><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>{file_rows}</table>",
            t(lang, "file"),
            t(lang, "size"),
            t(lang, "direction"),
            t(lang, "bytes"),
            t(lang, "result"),
            t(lang, "time")
        )
    };
    render(
        &ctx,
        t(lang, "detail"),
        &format!(
            "<table id=\"session\">{table}</table><h2>{}</h2>{files_html}",
            t(lang, "files")
        ),
    )
}

async fn audit_page(State(console): State<Console>, Extension(ctx): Extension<Ctx>) -> Response {
    let lang = ctx.lang;
    let report = audit::verify(&console.shared.store).await;
    let status = match &report {
        Ok(r) if r.problems.is_empty() => format!("<p class=\"ok\" id=\"chain\">chain intact: {} rows</p>", r.rows),
        Ok(r) => format!(
            "<p class=\"error\" id=\"chain\">{}</p>",
            r.problems.iter().map(|p| esc(p)).collect::<Vec<_>>().join("<br>")
        ),
        Err(_) => "<p class=\"error\" id=\"chain\">could not read the audit trail</p>".into(),
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
                esc(&a.action),
                esc(&a.target),
                esc(&a.ip),
                esc(&a.detail)
            )
        })
        .collect();
    let body = format!(
        "{status}<table id=\"audit\"><tr><th>#</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>IP</th><th>{}</th></tr>{rows}</table>",
        t(lang, "time"),
        t(lang, "actor"),
        t(lang, "action"),
        t(lang, "target"),
        t(lang, "detail")
    );
    render(&ctx, t(lang, "audit"), &body)
}

// ---------------------------------------------------------------- REST API

fn api_error(e: OpError) -> Response {
    let status = match e {
        OpError::Invalid(_) => StatusCode::BAD_REQUEST,
        OpError::NotFound(_) => StatusCode::NOT_FOUND,
        OpError::Conflict(_) => StatusCode::CONFLICT,
        OpError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        OpError::Busy => StatusCode::SERVICE_UNAVAILABLE,
    };
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
        "created_at": o.created_at,
    })
}

async fn api_operators(State(console): State<Console>) -> Response {
    match console.shared.store.operators().await {
        Ok(ops) => Json(ops.iter().map(operator_json).collect::<Vec<_>>()).into_response(),
        Err(e) => api_error(e.into()),
    }
}

async fn api_operator(State(console): State<Console>, Path(name): Path<String>) -> Response {
    match console.shared.store.operator(&name).await {
        Ok(Some(o)) => Json(operator_json(&o)).into_response(),
        Ok(None) => api_error(OpError::NotFound(format!("no operator named {name:?}"))),
        Err(e) => api_error(e.into()),
    }
}

#[derive(serde::Deserialize)]
struct NewOperator {
    name: String,
    password: String,
    #[serde(default)]
    permissions: Option<Vec<String>>,
}

async fn api_create_operator(
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
struct OperatorPatch {
    permissions: Option<Vec<String>>,
    max_sessions: Option<u32>,
    ip_rules: Option<Vec<String>>,
    suspended: Option<bool>,
    totp_required: Option<bool>,
    password: Option<String>,
}

async fn api_update_operator(
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

async fn api_delete_operator(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
) -> Response {
    match console.ops.delete(&ctx.actor(), &name).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => api_error(e),
    }
}

async fn api_sessions(State(console): State<Console>) -> Response {
    Json(live_rows(&console.shared)).into_response()
}

async fn api_end_session(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    match console.ops.end_session(&ctx.actor(), &id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => api_error(e),
    }
}

async fn api_history(State(console): State<Console>, Query(q): Query<HistoryQuery>) -> Response {
    let result = async {
        let f = q.filter(crate::store::HISTORY_MAX_ROWS)?;
        Ok::<_, OpError>(console.shared.store.history(&f).await?)
    };
    match result.await {
        Ok(r) => Json(r).into_response(),
        Err(e) => api_error(e),
    }
}

async fn api_audit_verify(State(console): State<Console>) -> Response {
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

    #[test]
    fn failure_delays_grow_then_cap() {
        assert_eq!(failure_delay(1), Duration::from_millis(250));
        assert_eq!(failure_delay(2), Duration::from_millis(500));
        assert_eq!(failure_delay(9), Duration::from_secs(4));
    }

    #[test]
    fn cookies_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-tsunagu_admin=tok; b=2"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("tok"));
        assert_eq!(day_start_ms("2023-11-14").unwrap(), 1_699_920_000_000);
        assert!(day_start_ms("14/11/2023").is_err());
        let zip = zip_files(&[("a.csv", b"x,y\n")]).unwrap();
        assert_eq!(&zip[..2], b"PK");
    }
}
