//! What a node tells Prometheus at `/metrics` on its console listener (docs/grid.md):
//! counters the relay bumps as things happen (codes issued, joins, refusals by reason,
//! sessions ended by reason, bytes forwarded and frames dropped when a session ends), and
//! gauges read when the page is asked for (live sessions, bridge streams, Redis and
//! database round trips).
//!
//! The recorder is process-wide (the `metrics` crate has one), installed by the first relay
//! that starts; several relays in one process (tests) share it.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder if nothing else did; the handle renders the page.
/// `None` when another recorder was installed first (an embedding program's own).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok().map(|()| handle)
        })
        .as_ref()
}

/// A code was issued to an operator.
pub fn code_issued() {
    metrics::counter!("tsunagu_codes_issued_total").increment(1);
}

/// A client joined a session: `bridged` when its session runs on another node.
pub fn joined(bridged: bool) {
    let place = if bridged { "bridged" } else { "local" };
    metrics::counter!("tsunagu_joins_total", "session" => place).increment(1);
}

/// An endpoint took its side of a session back after its connection dropped.
pub fn resumed() {
    metrics::counter!("tsunagu_resumes_total").increment(1);
}

/// A resume was put off because the node's resume admission rate was spent.
pub fn resume_busy() {
    metrics::counter!("tsunagu_resumes_put_off_total").increment(1);
}

/// This node took a session over from a node that is gone.
pub fn taken_over() {
    metrics::counter!("tsunagu_sessions_taken_over_total").increment(1);
}

/// A connection or request was refused; `code` is the automation contract's error name.
pub fn refused(code: &'static str) {
    metrics::counter!("tsunagu_refusals_total", "code" => code).increment(1);
}

/// A session ended: its reason, the bytes the relay forwarded each way and the frames it
/// dropped (full queues, paused or revoked traffic).
pub fn session_ended(reason: &'static str, bytes_to_client: u64, bytes_to_operator: u64, dropped: u64) {
    metrics::counter!("tsunagu_sessions_ended_total", "reason" => reason).increment(1);
    metrics::counter!("tsunagu_bytes_forwarded_total", "direction" => "to_client").increment(bytes_to_client);
    metrics::counter!("tsunagu_bytes_forwarded_total", "direction" => "to_operator").increment(bytes_to_operator);
    metrics::counter!("tsunagu_frames_dropped_total").increment(dropped);
}

/// Sessions live on this node right now.
pub fn set_live_sessions(n: usize) {
    metrics::gauge!("tsunagu_live_sessions").set(n as f64);
}

/// A client bridged through this node's QUIC links (either way) for as long as it lives.
pub struct BridgeStream(&'static str);

impl BridgeStream {
    /// `side`: `out` on the node the client landed on, `in` on the session's node.
    pub fn open(side: &'static str) -> Self {
        metrics::gauge!("tsunagu_bridge_streams", "side" => side).increment(1.0);
        Self(side)
    }
}

impl Drop for BridgeStream {
    fn drop(&mut self) {
        metrics::gauge!("tsunagu_bridge_streams", "side" => self.0).decrement(1.0);
    }
}

/// The last round trip to a backing service (`redis`, `database`), in seconds; a failed
/// check counts in `tsunagu_backend_failures_total` instead.
pub fn backend_round_trip(backend: &'static str, result: Result<std::time::Duration, ()>) {
    match result {
        Ok(took) => metrics::gauge!("tsunagu_backend_round_trip_seconds", "backend" => backend).set(took.as_secs_f64()),
        Err(()) => metrics::counter!("tsunagu_backend_failures_total", "backend" => backend).increment(1),
    }
}
