//! Who is at the console: admin sessions behind a `__Host-` cookie, the CSRF guard in
//! front of every protected route, and the two-step login (password, then a TOTP or
//! recovery code, or TOTP enrolment), with its throttling: answers slow down with each
//! failure, an (account, source prefix) pair locks for `admin.lockout`, and an account
//! sprayed from many places slows down as a whole. Every attempt is audited.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Form, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use sha2::Digest;

use super::html::{esc, page, t, Lang, Text};
use super::pages::{html_response, see_other};
use super::{ConnCert, Console, Ctx, Peer, MAX_BODY};
use crate::state::Shared;
use crate::time::now_ms;

/// The session cookie. `__Host-` makes browsers insist on Secure, Path=/ and no Domain.
pub const SESSION_COOKIE: &str = "__Host-tsunagu_admin";
/// The language preference cookie.
pub const LANG_COOKIE: &str = "__Host-tsunagu_lang";
/// A password-checked login must finish its second step within this.
pub const PENDING_LOGIN: Duration = Duration::from_secs(5 * 60);
/// Admin sessions held at once; the oldest are dropped beyond (bounds memory).
pub const MAX_SESSIONS: usize = 10_000;
/// How far a console session has got through the login.
#[derive(Debug, Clone)]
enum Stage {
    /// Password accepted; a TOTP or recovery code is next.
    NeedTotp,
    /// Password accepted; no TOTP yet: enrolling this secret.
    Enrol { secret: String },
    /// Fully logged in.
    Done,
}

/// One console session, held in memory under its cookie token.
#[derive(Debug, Clone)]
pub(super) struct AdminSession {
    admin: String,
    stage: Stage,
    csrf: String,
    created: Instant,
    last_used: Instant,
    /// Serial of the client certificate the login counted: the session ends when it is
    /// revoked.
    cert: Option<String>,
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    // Without the OS CSPRNG no session could be safe: refuse rather than degrade.
    getrandom::fill(&mut b).expect("the OS random number generator is available");
    crate::hex::hex(&b)
}

/// A key for this process only (the hash of names that match no account).
pub(super) fn random_key() -> [u8; 32] {
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

/// How often stale login failure counters are dropped; they only need to go eventually
/// (the table's size is what this bounds).
pub(super) const PRUNE_FAILURES_EVERY: Duration = Duration::from_secs(60);

/// Drops failure counters that have been quiet and unlocked for longer than `admin.lockout`.
pub(super) async fn prune_failures(shared: &Shared) {
    let before = now_ms() - shared.config.admin.lockout.as_millis() as i64;
    if let Err(e) = shared.store.prune_admin_failures(before).await {
        tracing::warn!(error = %e, "could not prune admin login failure counters");
    }
}

impl Console {
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
        let revoked = s
            .cert
            .as_deref()
            .is_some_and(|c| self.shared.client_certs.is_revoked(c));
        if now.duration_since(s.last_used) > limit || now.duration_since(s.created) > cfg.session_max || revoked {
            self.sessions.remove(&token);
            return None;
        }
        if let Some(mut live) = self.sessions.get_mut(&token) {
            live.last_used = now;
        }
        Some((token, s))
    }

    fn new_session(&self, admin: &str, stage: Stage, cert: Option<String>) -> (String, AdminSession) {
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
            cert,
        };
        let token = random_token();
        self.sessions.insert(token.clone(), s.clone());
        (token, s)
    }
}

fn peer_ip(req: &Request) -> String {
    req.extensions()
        .get::<Peer>()
        .map(|p| p.0.ip().to_string())
        .unwrap_or_default()
}

/// Refuses anyone not fully logged in (pages redirect to /login, the API answers 401), and
/// any change without the session's CSRF token (403).
pub(super) async fn guard(State(console): State<Console>, req: Request, next: Next) -> Response {
    let api = req.uri().path().starts_with("/api/");
    if api && req.headers().contains_key(header::AUTHORIZATION) {
        return token_guard(console, req, next).await;
    }
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
        token: None,
        zone: console.zone.clone(),
    };
    let req = match check_csrf(req, &s.csrf).await {
        Ok(req) => req,
        Err(res) => return res,
    };
    let mut req = req;
    req.extensions_mut().insert(ctx);
    next.run(req).await
}

/// The failure counters' account for wrong API tokens: one budget per source prefix for
/// every token, beside each admin's own (a token names no account before it is checked).
pub(super) const TOKEN_ACCOUNT: &str = "api-token";

/// A JSON error answer of the API.
fn api_refusal(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// `/api/v1` with `Authorization: Bearer tsu_...`: the attempt is taken from the source
/// prefix's failed-login budget before the token is checked (so a burst of wrong tokens
/// gets at most `admin.lockout_after` checks, then 429 until `admin.lockout` ends), and
/// given back when the token is good. A wrong, revoked or expired token is answered 401
/// and audited (its public id at most, never the secret). A read-only token may only
/// `GET`; no token may list, create or revoke tokens (403): a leaked token cannot mint
/// more.
async fn token_guard(console: Console, req: Request, next: Next) -> Response {
    let Some(ip) = req.extensions().get::<Peer>().map(|p| p.0.ip()) else {
        return api_refusal(StatusCode::INTERNAL_SERVER_ERROR, "no peer address");
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    let audit_target = super::tokens::presented_id(&presented)
        .map(str::to_string)
        .unwrap_or_else(|| "malformed token".into());
    let cfg = &console.shared.config.admin;
    let prefix = source_prefix(ip);
    let attempt = console
        .shared
        .store
        .reserve_admin_attempt(
            TOKEN_ACCOUNT,
            &prefix,
            now_ms(),
            cfg.lockout_after,
            cfg.lockout.as_millis() as i64,
        )
        .await;
    let attempt = match attempt {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "could not count an API token attempt");
            return api_refusal(StatusCode::SERVICE_UNAVAILABLE, "the relay is busy; try again shortly");
        }
    };
    let ip_text = ip.to_string();
    let audit_refused =
        |detail: String| console.audit("unknown".into(), "api_token_refused", &audit_target, &ip_text, detail);
    if attempt.failures > cfg.lockout_after {
        audit_refused("reason=locked".into()).await;
        return api_refusal(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed logins from your network; try again later",
        );
    }
    let checked = console.ops.authenticate_token(&presented).await;
    let row = match checked {
        Ok(Ok(row)) => {
            console.refund_token_attempt(ip).await;
            row
        }
        Ok(Err(why)) => {
            let locked = attempt.failures >= cfg.lockout_after;
            let detail = if locked {
                format!("reason={}; tokens locked from {prefix}", why.reason())
            } else {
                format!("reason={}", why.reason())
            };
            audit_refused(detail).await;
            let message = match why {
                super::tokens::TokenRefusal::Malformed => {
                    "the Authorization header is not \"Bearer tsu_...\" with a token from the console"
                }
                super::tokens::TokenRefusal::Unknown => "unknown API token",
                super::tokens::TokenRefusal::Revoked => "this API token was revoked",
                super::tokens::TokenRefusal::Expired => "this API token has expired",
            };
            return api_refusal(StatusCode::UNAUTHORIZED, message);
        }
        Err(_) => {
            // Nothing was checked: the attempt goes back.
            console.refund_token_attempt(ip).await;
            return api_refusal(StatusCode::SERVICE_UNAVAILABLE, "the relay is busy; try again shortly");
        }
    };
    if req.uri().path().starts_with("/api/v1/tokens") {
        return api_refusal(
            StatusCode::FORBIDDEN,
            "API tokens cannot list, create or revoke tokens; use a console session",
        );
    }
    if row.scope == crate::store::TokenScope::Read && !matches!(*req.method(), Method::GET | Method::HEAD) {
        return api_refusal(StatusCode::FORBIDDEN, "this API token is read-only");
    }
    let ctx = Ctx {
        admin: format!("token {}", row.id),
        csrf: String::new(),
        lang: lang_of(req.headers()),
        ip: ip.to_string(),
        token: Some(row.id),
        zone: console.zone.clone(),
    };
    let mut req = req;
    req.extensions_mut().insert(ctx);
    next.run(req).await
}

impl Console {
    async fn refund_token_attempt(&self, ip: IpAddr) {
        let after = self.shared.config.admin.lockout_after;
        if let Err(e) = self
            .shared
            .store
            .refund_admin_attempt(TOKEN_ACCOUNT, &source_prefix(ip), after)
            .await
        {
            tracing::error!(error = %e, "could not refund an API token attempt");
        }
    }
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

/// The login form; after a refusal, with its reason and the name as typed (never the
/// password).
fn login_form(lang: Lang, error: Option<&str>, name: &str) -> String {
    let err = error
        .map(|e| format!("<p class=\"error\" id=\"error\">{}</p>", esc(e)))
        .unwrap_or_default();
    page(
        lang,
        t(lang, Text::Login),
        None,
        &format!(
            "{err}<form method=\"post\" action=\"/login\"><p><label>{} <input name=\"name\" id=\"name\" autocomplete=\"username\" maxlength=\"64\" required value=\"{}\"></label></p>\
             <p><label>{} <input type=\"password\" name=\"password\" id=\"password\" autocomplete=\"current-password\" maxlength=\"128\" required></label></p>\
             <p><button id=\"submit\">{}</button></p></form>",
            t(lang, Text::Name),
            esc(name),
            t(lang, Text::Password),
            t(lang, Text::Login)
        ),
    )
}

pub(super) async fn login_page(headers: HeaderMap) -> Response {
    html_response(StatusCode::OK, login_form(lang_of(&headers), None, ""))
}

pub(super) async fn set_lang(Query(q): Query<HashMap<String, String>>) -> Response {
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
pub(super) struct LoginForm {
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
    /// This (account, prefix) is locked until then (Unix milliseconds): answered 429.
    Locked(i64),
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
        let hash = crate::hex::hex(&h.finalize()[..16]);
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
            return Err(Refused::Locked(attempt.locked_until));
        }
        Ok(attempt)
    }

    /// What a login step that has just locked the account is told: locked until a lockout
    /// period from now.
    fn locked_now(&self, lang: Lang) -> String {
        let lockout = self.shared.config.admin.lockout.as_millis() as i64;
        super::html::locked_until(lang, &self.zone, now_ms() + lockout)
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
    /// [`Console::begin_step`] for a second step (TOTP, enrolment) of the half-logged-in
    /// session `token`: a refusal also ends that session.
    async fn begin_second_step(
        &self,
        token: &str,
        account: &Account,
        ip: IpAddr,
        lang: Lang,
    ) -> Result<crate::store::LoginAttempt, Response> {
        match self.begin_step(account, ip).await {
            Ok(a) => Ok(a),
            Err(why) => {
                self.sessions.remove(token);
                Err(self.step_refused(account, ip, why, lang, "").await)
            }
        }
    }

    /// `typed`: the name the login form shows again.
    async fn step_refused(&self, account: &Account, ip: IpAddr, why: Refused, lang: Lang, typed: &str) -> Response {
        let (status, reason, msg) = match why {
            Refused::Locked(until) => (
                StatusCode::TOO_MANY_REQUESTS,
                "locked",
                super::html::locked_until(lang, &self.zone, until),
            ),
            Refused::Store => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                t(lang, Text::Busy).to_string(),
            ),
        };
        self.audit(
            account.actor.clone(),
            "admin_login_failed",
            &account.target,
            &ip.to_string(),
            format!("reason={reason}"),
        )
        .await;
        html_response(status, login_form(lang, Some(&msg), typed))
    }
}

/// `POST /login`. A name that matches no account goes through exactly the same steps as
/// one that does (the same store statements, an argon2 check of the same cost through the
/// same pool, the same delays, the same lockout), so status, body and timing do not tell
/// them apart.
pub(super) async fn login(
    State(console): State<Console>,
    Extension(Peer(peer)): Extension<Peer>,
    Extension(ConnCert(cert)): Extension<ConnCert>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let lang = lang_of(&headers);
    let ip = peer.ip();
    if form.name.len() > tsunagu_proto::limits::MAX_USER_NAME || form.password.len() > 256 {
        return html_response(
            StatusCode::UNAUTHORIZED,
            login_form(lang, Some(t(lang, Text::LoginFailed)), &form.name),
        );
    }
    let record = console.shared.store.admin(&form.name).await.ok().flatten();
    let account = console.account(&form.name, record.is_some());
    let attempt = match console.begin_step(&account, ip).await {
        Ok(a) => a,
        Err(why) => return console.step_refused(&account, ip, why, lang, &form.name).await,
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
            return html_response(
                StatusCode::SERVICE_UNAVAILABLE,
                login_form(lang, Some(t(lang, Text::Busy)), &form.name),
            );
        }
    };
    // An admin who must present a client certificate is refused without one of theirs,
    // whatever the password, with the same answer either way.
    let mut serial = None;
    if let Some(r) = &record {
        let shared = &console.shared;
        match shared
            .check_login_cert(crate::store::CertRole::Admin, &r.name, cert.as_ref(), r.cert_required)
            .await
        {
            Ok(s) => serial = s,
            Err(why) => {
                let locked = console.step_failed(&account, ip, attempt, "certificate").await;
                tracing::info!(reason = %why, "console login refused: client certificate");
                let msg = if locked {
                    console.locked_now(lang)
                } else {
                    t(lang, Text::CertificateNeeded).to_string()
                };
                return html_response(StatusCode::UNAUTHORIZED, login_form(lang, Some(&msg), &form.name));
            }
        }
    }
    let Some(record) = record.filter(|_| ok) else {
        let locked = console.step_failed(&account, ip, attempt, "password").await;
        let msg = if locked {
            console.locked_now(lang)
        } else {
            t(lang, Text::LoginFailed).to_string()
        };
        return html_response(StatusCode::UNAUTHORIZED, login_form(lang, Some(&msg), &form.name));
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
    let (token, _) = console.new_session(&record.name, stage, serial);
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
        t(lang, Text::TotpCode),
        t(lang, Text::Verify)
    )
}

pub(super) async fn totp_page(State(console): State<Console>, headers: HeaderMap) -> Response {
    let lang = lang_of(&headers);
    match console.session(&headers) {
        Some((_, s)) if matches!(s.stage, Stage::NeedTotp) => html_response(
            StatusCode::OK,
            page(
                lang,
                t(lang, Text::Login),
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
    /// A second step's form (TOTP, recovery code, enrolment) posted in the half-logged-in
    /// session `s` under `token`: parsed, its CSRF token checked (403 otherwise), and the
    /// step's attempt taken from the budget ([`Console::begin_second_step`]).
    async fn second_step(
        &self,
        token: &str,
        s: &AdminSession,
        body: &[u8],
        ip: IpAddr,
        lang: Lang,
    ) -> Result<(CodeForm, Account, crate::store::LoginAttempt), Response> {
        let form = CodeForm::parse(body);
        if !constant_eq(form.csrf.as_bytes(), s.csrf.as_bytes()) {
            return Err((StatusCode::FORBIDDEN, "missing or wrong CSRF token").into_response());
        }
        let account = self.account(&s.admin, true);
        let attempt = self.begin_second_step(token, &account, ip, lang).await?;
        Ok((form, account, attempt))
    }

    /// [`Console::step_failed`] for a second step: when that locked the account, the
    /// half-logged-in session ends and the answer is the login form saying so (429).
    async fn second_step_failed(
        &self,
        token: &str,
        account: &Account,
        ip: IpAddr,
        attempt: crate::store::LoginAttempt,
        reason: &str,
        lang: Lang,
    ) -> Option<Response> {
        if !self.step_failed(account, ip, attempt, reason).await {
            return None;
        }
        self.sessions.remove(token);
        Some(html_response(
            StatusCode::TOO_MANY_REQUESTS,
            login_form(lang, Some(&self.locked_now(lang)), ""),
        ))
    }

    /// Ends the pending session and starts the full one under a fresh token (no fixation).
    async fn complete_login(&self, old_token: &str, admin: &str, ip: &str, how: &str, to: &str) -> (String, Response) {
        // The certificate the first step counted stays with the session.
        let cert = self.sessions.remove(old_token).and_then(|(_, s)| s.cert);
        // Both factors proved: the failures from this prefix are forgotten (not those from
        // elsewhere, or the owner would hand a stranger fresh guesses).
        let prefix = ip.parse().map(source_prefix).unwrap_or_else(|_| ip.to_string());
        if let Err(e) = self.shared.store.clear_admin_failures(admin, &prefix).await {
            tracing::error!(error = %e, "could not clear admin login failures");
        }
        let (token, s) = self.new_session(admin, Stage::Done, cert);
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

pub(super) async fn totp_submit(
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
    let (form, account, attempt) = match console.second_step(&token, &s, &body, peer.ip(), lang).await {
        Ok(step) => step,
        Err(refused) => return refused,
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
            if let Some(locked) = console
                .second_step_failed(&token, &account, peer.ip(), attempt, "totp", lang)
                .await
            {
                return locked;
            }
            html_response(
                StatusCode::UNAUTHORIZED,
                page(
                    lang,
                    t(lang, Text::Login),
                    None,
                    &totp_form(lang, &s.csrf, "/login/totp", Some(t(lang, Text::LoginFailed)), ""),
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
        t(lang, Text::EnrolHelp),
        t(lang, Text::Secret),
        esc(secret)
    );
    totp_form(lang, csrf, "/login/enrol", error, &intro)
}

pub(super) async fn enrol_page(State(console): State<Console>, headers: HeaderMap) -> Response {
    let lang = lang_of(&headers);
    match console.session(&headers) {
        Some((_, s)) => match &s.stage {
            Stage::Enrol { secret } => html_response(
                StatusCode::OK,
                page(
                    lang,
                    t(lang, Text::Enrol),
                    None,
                    &enrol_body(lang, &s.admin, secret, &s.csrf, None),
                ),
            ),
            _ => see_other("/login"),
        },
        None => see_other("/login"),
    }
}

pub(super) async fn enrol_submit(
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
    let (form, account, attempt) = match console.second_step(&token, &s, &body, peer.ip(), lang).await {
        Ok(step) => step,
        Err(refused) => return refused,
    };
    if !console
        .totp_used
        .accept(&s.admin, secret, &form.code, crate::totp::now_secs())
    {
        if let Some(locked) = console
            .second_step_failed(&token, &account, peer.ip(), attempt, "totp_enrolment", lang)
            .await
        {
            return locked;
        }
        return html_response(
            StatusCode::UNAUTHORIZED,
            page(
                lang,
                t(lang, Text::Enrol),
                None,
                &enrol_body(lang, &s.admin, secret, &s.csrf, Some(t(lang, Text::LoginFailed))),
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
        t(lang, Text::Recovery),
        t(lang, Text::RecoveryHelp),
        t(lang, Text::Continue)
    );
    let mut res = html_response(StatusCode::OK, page(lang, t(lang, Text::Enrol), None, &body));
    if let Some(c) = redirect.headers().get(header::SET_COOKIE) {
        res.headers_mut().insert(header::SET_COOKIE, c.clone());
    }
    res
}

pub(super) async fn logout(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    headers: HeaderMap,
) -> Response {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_delays_grow_then_cap() {
        assert_eq!(failure_delay(1), Duration::from_millis(250));
        assert_eq!(failure_delay(2), Duration::from_millis(500));
        assert_eq!(failure_delay(9), Duration::from_secs(4));
    }

    #[test]
    fn cookies() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-tsunagu_admin=tok; b=2"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("tok"));
    }
}
