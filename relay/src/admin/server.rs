//! The console's listener: TLS on the relay's own certificate, the accept loop with its
//! connection limits, the security headers every response carries, and the router, with
//! [`ROUTES`] listing every route and whether it is public (a test walks all of them).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::pages::see_other;
use super::{api, audit_page, auth, dashboard, export, history, html, operators, sessions, tokens_page};
use super::{ConnCert, Console, Peer, MAX_BODY};
use crate::shutdown::{ConnectionTasks, Shutdown};
use crate::state::Shared;
use crate::tls::ServerCerts;

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
    ("GET", "/dashboard", false),
    ("GET", "/api/v1/operators", false),
    ("POST", "/api/v1/operators", false),
    ("GET", "/api/v1/operators/alice", false),
    ("PATCH", "/api/v1/operators/alice", false),
    ("DELETE", "/api/v1/operators/alice", false),
    ("GET", "/crl.pem", true),
    ("GET", "/api/v1/certificates", false),
    ("POST", "/api/v1/certificates", false),
    ("DELETE", "/api/v1/certificates/abc", false),
    ("GET", "/api/v1/sessions", false),
    ("DELETE", "/api/v1/sessions/abc", false),
    ("GET", "/api/v1/history", false),
    ("GET", "/api/v1/audit/verify", false),
    ("GET", "/tokens", false),
    ("POST", "/tokens", false),
    ("POST", "/tokens/0123456789abcdef/revoke", false),
    ("GET", "/api/v1/tokens", false),
    ("POST", "/api/v1/tokens", false),
    ("DELETE", "/api/v1/tokens/0123456789abcdef", false),
];

/// Starts the console on `addr`; returns the bound address and the accept task. At the
/// stop signal the accept task returns and each connection answers the request in flight,
/// then closes; `connections` tracks them for the relay's shutdown.
pub async fn serve(
    shared: Arc<Shared>,
    certs: Arc<ServerCerts>,
    addr: SocketAddr,
    stop: Shutdown,
    connections: ConnectionTasks,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let mut tls = (*certs
        .server_config(shared.client_certs.verifier())
        .map_err(std::io::Error::other)?)
    .clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let console = Console::new(shared.clone());
    let app = router(console);
    let task = tokio::spawn(accept_loop(listener, acceptor, app, shared, stop, connections));
    Ok((bound, task))
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Router,
    shared: Arc<Shared>,
    mut stop: Shutdown,
    connections: ConnectionTasks,
) {
    let handshake = shared.config.timeouts.handshake;
    let request_timeout = shared.config.admin.request_timeout;
    let console_connections =
        crate::connlimit::ConnLimiter::new(crate::connlimit::ConnLimits::console(&shared.config.admin), "console");
    let mut prune = tokio::time::interval(auth::PRUNE_FAILURES_EVERY);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = prune.tick() => {
                auth::prune_failures(&shared).await;
                continue;
            }
            _ = stop.recv() => return,
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
        connections.spawn_winding_down(|mut stop| async move {
            let _permit = permit;
            let tls = tokio::select! {
                tls = tokio::time::timeout(handshake, acceptor.accept(tcp)) => match tls {
                    Ok(Ok(tls)) => tls,
                    _ => return,
                },
                _ = stop.recv() => return,
            };
            let cert = ConnCert(crate::certs::PeerCert::of(tls.get_ref().1.peer_certificates()));
            let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(Peer(peer));
                req.extensions_mut().insert(cert.clone());
                let app = app.clone();
                async move { tower::ServiceExt::oneshot(app, req.map(Body::new)).await }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(request_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
            let served = async {
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = stop.recv() => {
                        // The request in flight is answered; an idle connection closes now.
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            };
            // A connection lives at most a few request timeouts' worth of keep-alive.
            let _ = tokio::time::timeout(request_timeout * 10, served).await;
        });
    }
}

fn router(console: Console) -> Router {
    let protected = Router::new()
        .route("/", get(|| async { see_other("/operators") }))
        .route("/logout", post(auth::logout))
        .route(
            "/operators",
            get(operators::operators_page).post(operators::create_operator),
        )
        .route("/operators/{name}", get(operators::operator_page))
        .route("/operators/{name}/{action}", post(operators::operator_action))
        .route("/sessions", get(sessions::sessions_page))
        .route("/sessions/{id}/end", post(sessions::end_session))
        .route("/history", get(history::history_page))
        .route("/history/export.csv", get(export::history_csv))
        .route("/history/day.zip", get(export::history_zip))
        .route("/history/{id}", get(history::session_page))
        .route("/audit", get(audit_page::audit_page))
        .route("/dashboard", get(dashboard::dashboard_page))
        .route(
            "/api/v1/operators",
            get(api::api_operators).post(api::api_create_operator),
        )
        .route(
            "/api/v1/operators/{name}",
            get(api::api_operator)
                .patch(api::api_update_operator)
                .delete(api::api_delete_operator),
        )
        .route(
            "/api/v1/certificates",
            get(api::api_certificates).post(api::api_issue_certificate),
        )
        .route(
            "/api/v1/certificates/{serial}",
            axum::routing::delete(api::api_revoke_certificate),
        )
        .route("/api/v1/sessions", get(api::api_sessions))
        .route("/api/v1/sessions/{id}", axum::routing::delete(api::api_end_session))
        .route("/api/v1/history", get(api::api_history))
        .route("/api/v1/audit/verify", get(api::api_audit_verify))
        .route("/api/v1/tokens", get(api::api_tokens).post(api::api_create_token))
        .route("/api/v1/tokens/{id}", axum::routing::delete(api::api_revoke_token))
        .route("/tokens", get(tokens_page::tokens_page).post(tokens_page::create_token))
        .route("/tokens/{id}/revoke", post(tokens_page::revoke_token))
        .route_layer(middleware::from_fn_with_state(console.clone(), auth::guard));
    Router::new()
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/login/totp", get(auth::totp_page).post(auth::totp_submit))
        .route("/login/enrol", get(auth::enrol_page).post(auth::enrol_submit))
        .route("/lang", get(auth::set_lang))
        .route("/healthz", get(super::health::healthz))
        .route("/readyz", get(super::health::readyz))
        .route("/metrics", get(super::health::metrics))
        .route("/crl.pem", get(api::crl))
        .route(
            "/static/console.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], html::CSS) }),
        )
        .route(
            "/api/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], api::OPENAPI) }),
        )
        .merge(protected)
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
        .layer(middleware::from_fn(api_errors_as_json))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(security_headers))
        .with_state(console)
}

/// Longest error text kept when an answer under `/api/` is turned into JSON.
const MAX_ERROR_TEXT: usize = 4 * 1024;

/// Under `/api/`, every refusal is a JSON object with an `error` text, also those the
/// router and extractors make (404 for an unknown path, 405 for an unknown method, with
/// its `Allow` header, a query or path that does not parse).
async fn api_errors_as_json(req: Request, next: Next) -> Response {
    let api = req.uri().path().starts_with("/api/");
    let res = next.run(req).await;
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !api || res.status().as_u16() < 400 || is_json {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, MAX_ERROR_TEXT).await.unwrap_or_default();
    let mut message = String::from_utf8_lossy(&text).trim().to_string();
    if message.is_empty() {
        message = parts
            .status
            .canonical_reason()
            .unwrap_or("refused")
            .to_ascii_lowercase();
    }
    let body = serde_json::json!({ "error": message }).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(body))
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
