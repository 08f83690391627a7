//! What load balancers and monitoring ask a node, without logging in (docs/grid.md):
//! `/healthz` (the process answers), `/readyz` (its listeners are up and the database and,
//! on a grid node, Redis answer within their timeouts) and `/metrics` (Prometheus text).
//! None of them shows a session, a name or an address.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::Console;

/// The longest `/readyz` waits for the database before calling it unreachable.
const DATABASE_CHECK: Duration = Duration::from_secs(2);

pub(super) async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

/// 200 with `ready` when every check passes; 503 with one line per failed check.
pub(super) async fn readyz(State(console): State<Console>) -> Response {
    let failures = checks(&console).await;
    if failures.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let body: String = failures.iter().map(|f| format!("{f}\n")).collect();
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

/// What is wrong, one line each; also feeds the round-trip gauges.
async fn checks(console: &Console) -> Vec<String> {
    let shared = &console.shared;
    let mut failures = Vec::new();
    if shared.is_stopping() {
        failures.push("stopping: the node no longer accepts connections".to_string());
    } else if shared.is_draining() {
        failures.push("draining: the node sends its sessions to other nodes".to_string());
    }
    let started = Instant::now();
    match tokio::time::timeout(DATABASE_CHECK, shared.store.ping()).await {
        Ok(Ok(())) => crate::metrics::backend_round_trip("database", Ok(started.elapsed())),
        Ok(Err(e)) => {
            crate::metrics::backend_round_trip("database", Err(()));
            failures.push(format!("database: {e}"));
        }
        Err(_) => {
            crate::metrics::backend_round_trip("database", Err(()));
            failures.push(format!("database: no answer within {DATABASE_CHECK:?}"));
        }
    }
    if let Some(grid) = shared.grid() {
        match grid.redis().ping().await {
            Ok(took) => crate::metrics::backend_round_trip("redis", Ok(took)),
            Err(e) => {
                crate::metrics::backend_round_trip("redis", Err(()));
                failures.push(format!("redis: {e}"));
            }
        }
    }
    failures
}

/// The Prometheus page: the counters as they stand, with the gauges read now.
pub(super) async fn metrics(State(console): State<Console>) -> Response {
    let Some(handle) = crate::metrics::install() else {
        return (StatusCode::NOT_FOUND, "metrics are recorded by the embedding program\n").into_response();
    };
    let shared = &console.shared;
    crate::metrics::set_live_sessions(shared.sessions().len());
    let _ = checks(&console).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
}
