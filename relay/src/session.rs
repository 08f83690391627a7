//! A live session at run time: the policy machine behind a lock, the two peers' outbound
//! queues, and the timer that expires codes and consent requests. Connection tasks feed it
//! frames; it decides with [`Policy`] and queues what may pass. No lock is held across an
//! await.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{watch, Notify};
use tsunagu_proto::codec::encode;
use tsunagu_proto::pb::{self, frame::Body, Channel, EndReason, Frame};
use tsunagu_proto::types::end_reason_name;
use tsunagu_proto::{PermissionSet, RawFrame, SessionCode};

use crate::history::{now_ms, HistoryEvent};
use crate::policy::{file_result_name, ClientModes, ConsentOutcome, Direction, FileRecord, Policy, Verdict};
use crate::queue::{OutQueue, QueueError};
use crate::server::Shared;

/// Which side a frame came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Operator,
    Client,
}

struct Inner {
    policy: Policy,
    /// Set once `finish` has run; the policy may have ended on its own before that.
    finished: bool,
    operator_q: OutQueue,
    client_q: Option<OutQueue>,
}

/// What [`Session::view`] returns.
#[derive(Debug, Clone, Copy)]
pub struct SessionView {
    pub phase: crate::policy::Phase,
    pub modes: ClientModes,
    pub granted: PermissionSet,
    pub counters: crate::policy::Counters,
}

/// One session, shared by its two connection tasks and its timer.
pub struct Session {
    pub id: String,
    pub operator: String,
    code: SessionCode,
    inner: Mutex<Inner>,
    ended_tx: watch::Sender<bool>,
    /// Wakes the timer when the deadline moves.
    kick: Notify,
    shared: Arc<Shared>,
}

fn frame(body: Body) -> Bytes {
    // Relay-built frames are small and well-formed; encoding them cannot exceed any limit.
    encode(&Frame { body: Some(body) }).expect("relay frames are never empty")
}

fn state_frame(policy: &Policy) -> Bytes {
    let m = policy.modes();
    frame(Body::SessionState(pb::SessionState {
        granted: policy.granted().to_wire(),
        paused: m.paused,
        view_only: m.view_only,
        chat_only: m.chat_only,
    }))
}

/// Random 128-bit session id in hex; not secret, just unique.
fn new_session_id() -> String {
    let mut b = [0u8; 16];
    // The OS CSPRNG failing is not recoverable in any useful way; fall back to time.
    if getrandom::fill(&mut b).is_err() {
        b[..8].copy_from_slice(&now_ms().to_le_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Session {
    pub(crate) fn new(
        shared: Arc<Shared>,
        operator: String,
        code: SessionCode,
        policy: Policy,
        operator_q: OutQueue,
    ) -> Arc<Self> {
        Arc::new(Self {
            id: new_session_id(),
            operator,
            code,
            inner: Mutex::new(Inner {
                policy,
                finished: false,
                operator_q,
                client_q: None,
            }),
            ended_tx: watch::channel(false).0,
            kick: Notify::new(),
            shared,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves when the session has ended.
    pub fn ended(&self) -> watch::Receiver<bool> {
        self.ended_tx.subscribe()
    }

    pub fn is_ended(&self) -> bool {
        *self.ended_tx.borrow()
    }

    pub fn asked(&self) -> PermissionSet {
        self.lock().policy.asked()
    }

    /// A snapshot of the session for the admin console: phase, client switches, grants and
    /// byte counters.
    pub fn view(&self) -> SessionView {
        let inner = self.lock();
        SessionView {
            phase: inner.policy.phase(),
            modes: inner.policy.modes(),
            granted: inner.policy.granted(),
            counters: inner.policy.counters(),
        }
    }

    /// A client with a valid code arrives. Returns false if the session ended meanwhile.
    pub async fn attach_client(&self, client_q: OutQueue, host: &str, addr: SocketAddr, relay_port: u16) -> bool {
        let now = Instant::now();
        let (asked, operator_q) = {
            let mut inner = self.lock();
            if !inner.policy.client_joined(now) {
                return false;
            }
            inner.client_q = Some(client_q.clone());
            (inner.policy.asked(), inner.operator_q.clone())
        };
        self.kick.notify_one();
        let consent_ms = self.shared.config.timeouts.consent.as_millis() as u64;
        let _ = client_q.push_control(frame(Body::ConsentRequest(pb::ConsentRequest {
            session_id: self.id.clone(),
            operator: self.operator.clone(),
            permissions: asked.to_wire(),
            timeout_ms: consent_ms,
        })));
        let _ = operator_q.push_control(frame(Body::PeerJoined(pb::PeerJoined {
            host_name: host.to_string(),
            ip: addr.ip().to_string(),
            port: addr.port() as u32,
        })));
        tracing::info!(session = %self.id, operator = %self.operator, client = %addr, "client joined");
        self.shared
            .history
            .record(HistoryEvent::Joined {
                id: self.id.clone(),
                client_host: host.to_string(),
                client_addr: addr,
                relay_port,
                at_ms: now_ms(),
            })
            .await;
        true
    }

    /// The queue of the peer a frame travelling `direction` goes to.
    fn target(inner: &Inner, direction: Direction) -> Option<OutQueue> {
        match direction {
            Direction::ToClient => inner.client_q.clone(),
            Direction::ToOperator => Some(inner.operator_q.clone()),
        }
    }

    /// Forwards a file-transfer frame the policy allowed, and records a finished transfer.
    async fn forward_file_frame(&self, target: Option<OutQueue>, wire: Bytes, record: Option<FileRecord>) {
        if let Some(q) = target {
            let _ = q.push_data(wire).await;
        }
        if let Some(r) = record {
            self.record_file(r).await;
        }
    }

    async fn record_file(&self, r: FileRecord) {
        tracing::info!(session = %self.id, size = r.size, bytes = r.bytes, direction = r.direction.name(), result = r.result, "file transfer over");
        self.shared
            .history
            .record(HistoryEvent::File {
                id: self.id.clone(),
                name: r.name,
                size: r.size,
                direction: r.direction.name(),
                bytes: r.bytes,
                result: r.result,
                at_ms: now_ms(),
            })
            .await;
    }

    /// Handles one frame from a peer. Returns false when the peer's connection should stop
    /// reading (the session ended).
    pub async fn on_frame(&self, from: Role, raw: RawFrame) -> bool {
        let Some(body) = raw.frame.body else { return true };
        let direction = match from {
            Role::Operator => Direction::ToClient,
            Role::Client => Direction::ToOperator,
        };
        match body {
            Body::FileOffer(offer) => {
                let target = {
                    let mut inner = self.lock();
                    let v = inner
                        .policy
                        .file_offer(direction, offer.transfer_id, &offer.name, offer.size);
                    (v == Verdict::Forward)
                        .then(|| Self::target(&inner, direction))
                        .flatten()
                };
                self.forward_file_frame(target, raw.wire, None).await;
            }
            Body::FileAnswer(answer) => {
                let (target, record) = {
                    let mut inner = self.lock();
                    let (v, record) = inner.policy.file_answer(direction, answer.transfer_id, answer.accept);
                    (
                        (v == Verdict::Forward)
                            .then(|| Self::target(&inner, direction))
                            .flatten(),
                        record,
                    )
                };
                self.forward_file_frame(target, raw.wire, record).await;
            }
            Body::FileCredit(credit) => {
                let target = {
                    let inner = self.lock();
                    (inner.policy.file_credit(direction, credit.transfer_id) == Verdict::Forward)
                        .then(|| Self::target(&inner, direction))
                        .flatten()
                };
                self.forward_file_frame(target, raw.wire, None).await;
            }
            Body::FileDone(done) => {
                let result = file_result_name(pb::FileResult::try_from(done.result).unwrap_or(pb::FileResult::Failed));
                let (target, record) = {
                    let mut inner = self.lock();
                    let (v, record) = inner
                        .policy
                        .file_done(direction, done.transfer_id, done.from_receiver, result);
                    (
                        (v == Verdict::Forward)
                            .then(|| Self::target(&inner, direction))
                            .flatten(),
                        record,
                    )
                };
                self.forward_file_frame(target, raw.wire, record).await;
            }
            Body::Data(data) => {
                let channel = Channel::try_from(data.channel).ok();
                let target = {
                    let mut inner = self.lock();
                    match inner.policy.check_data_in(
                        direction,
                        channel,
                        data.stream,
                        file_payload_len(channel, &data.payload),
                        raw.wire.len(),
                    ) {
                        Verdict::Forward => match direction {
                            Direction::ToClient => inner.client_q.clone(),
                            Direction::ToOperator => Some(inner.operator_q.clone()),
                        },
                        Verdict::Drop(reason) => {
                            tracing::debug!(session = %self.id, ?reason, ?channel, "dropped a data frame");
                            None
                        }
                    }
                };
                if let Some(q) = target {
                    let pushed = if channel == Some(Channel::Screen) {
                        q.push_screen(raw.wire)
                    } else {
                        q.push_data(raw.wire).await
                    };
                    if pushed == Err(QueueError::Closed) {
                        return !self.is_ended();
                    }
                }
            }
            Body::Consent(c) if from == Role::Client => {
                let granted = PermissionSet::from_wire(&c.granted);
                let (outcome, frames) = {
                    let mut inner = self.lock();
                    let outcome = inner.policy.consent(granted, c.denied);
                    let state = matches!(outcome, ConsentOutcome::Granted(_)).then(|| state_frame(&inner.policy));
                    (
                        outcome,
                        state.map(|s| (s, inner.operator_q.clone(), inner.client_q.clone())),
                    )
                };
                match outcome {
                    ConsentOutcome::Granted(g) => {
                        if let Some((state, op_q, cl_q)) = frames {
                            self.push_control_both(&op_q, cl_q.as_ref(), state).await;
                        }
                        tracing::info!(session = %self.id, granted = %g, "consent granted");
                        self.shared
                            .history
                            .record(HistoryEvent::Consented {
                                id: self.id.clone(),
                                granted: g,
                                at_ms: now_ms(),
                            })
                            .await;
                    }
                    ConsentOutcome::Denied => {
                        tracing::info!(session = %self.id, "consent denied");
                        self.finish(EndReason::ConsentDenied).await;
                        return false;
                    }
                    ConsentOutcome::Unexpected => {}
                }
            }
            Body::ClientState(cs) if from == Role::Client => {
                let modes = ClientModes {
                    paused: cs.paused,
                    view_only: cs.view_only,
                    chat_only: cs.chat_only,
                };
                let change = {
                    let mut inner = self.lock();
                    let was_paused = inner.policy.modes().paused;
                    if inner.policy.client_state(modes, PermissionSet::from_wire(&cs.revoke)) {
                        Some((
                            state_frame(&inner.policy),
                            inner.operator_q.clone(),
                            inner.client_q.clone(),
                            was_paused,
                        ))
                    } else {
                        None
                    }
                };
                if let Some((state, op_q, cl_q, was_paused)) = change {
                    if modes.paused != was_paused {
                        tracing::info!(session = %self.id, paused = modes.paused, "client changed control");
                    }
                    self.push_control_both(&op_q, cl_q.as_ref(), state).await;
                }
            }
            Body::End(_) => {
                let reason = match from {
                    Role::Operator => EndReason::OperatorEnded,
                    Role::Client => EndReason::ClientEnded,
                };
                self.finish(reason).await;
                return false;
            }
            Body::Ping(p) => {
                let q = match from {
                    Role::Operator => Some(self.lock().operator_q.clone()),
                    Role::Client => self.lock().client_q.clone(),
                };
                if let Some(q) = q {
                    if q.push_control(frame(Body::Pong(pb::Pong { nonce: p.nonce }))) == Err(QueueError::Overflow) {
                        self.finish(EndReason::ProtocolError).await;
                        return false;
                    }
                }
            }
            // Pong only proves liveness, which reading it already did. Anything else is
            // out of place at this stage and ignored.
            other => {
                tracing::debug!(session = %self.id, role = ?from, kind = body_name(&other), "ignored an unexpected message");
            }
        }
        true
    }

    async fn push_control_both(&self, op_q: &OutQueue, cl_q: Option<&OutQueue>, frame: Bytes) {
        let overflow = op_q.push_control(frame.clone()) == Err(QueueError::Overflow)
            || cl_q.is_some_and(|q| q.push_control(frame) == Err(QueueError::Overflow));
        if overflow {
            tracing::warn!(session = %self.id, "a peer stopped reading; ending the session");
            self.finish(EndReason::ProtocolError).await;
        }
    }

    /// Ends the session for `reason` (once): tells both peers, closes their queues,
    /// releases the code and writes the history.
    pub async fn finish(&self, reason: EndReason) {
        let (counters, granted, phase_before_client, queues, open_files) = {
            let mut inner = self.lock();
            let had_client = inner.client_q.is_some();
            if inner.finished {
                return;
            }
            inner.finished = true;
            inner.policy.end(reason);
            let open_files = inner.policy.close_all_transfers();
            (
                inner.policy.counters(),
                inner.policy.granted(),
                !had_client,
                (inner.operator_q.clone(), inner.client_q.clone()),
                open_files,
            )
        };
        for record in open_files {
            self.record_file(record).await;
        }
        let ended = frame(Body::Ended(pb::Ended { reason: reason as i32 }));
        for q in [Some(&queues.0), queues.1.as_ref()].into_iter().flatten() {
            let _ = q.push_control(ended.clone());
            q.close();
        }
        let _ = self.ended_tx.send(true);
        self.kick.notify_one();
        if phase_before_client {
            self.shared.directory.expire(self.code, Instant::now());
        }
        self.shared.sessions.remove(&self.id);
        tracing::info!(
            session = %self.id,
            operator = %self.operator,
            reason = end_reason_name(reason),
            bytes_to_client = counters.bytes_to_client,
            bytes_to_operator = counters.bytes_to_operator,
            pauses = counters.pauses,
            dropped = counters.dropped_frames,
            "session ended"
        );
        self.shared
            .history
            .record(HistoryEvent::Ended {
                id: self.id.clone(),
                reason: end_reason_name(reason),
                counters,
                granted: (!granted.is_empty()).then_some(granted),
                at_ms: now_ms(),
            })
            .await;
    }

    /// Runs the session's clock: code expiry and consent timeout. Returns when the session
    /// ends or no longer has a deadline.
    pub async fn run_timer(self: Arc<Self>) {
        let mut ended = self.ended();
        loop {
            let deadline = {
                let inner = self.lock();
                if inner.policy.is_ended() {
                    return;
                }
                inner.policy.deadline()
            };
            let Some(deadline) = deadline else { return };
            tokio::select! {
                _ = tokio::time::sleep_until(deadline.into()) => {
                    let reason = self.lock().policy.tick(Instant::now());
                    if let Some(reason) = reason {
                        self.finish(reason).await;
                        return;
                    }
                }
                _ = self.kick.notified() => {}
                _ = crate::server::until_true(&mut ended) => return,
            }
        }
    }
}

/// Content bytes of a file chunk (its whole payload); 0 on other channels.
fn file_payload_len(channel: Option<Channel>, payload: &Bytes) -> usize {
    if channel == Some(Channel::File) {
        payload.len()
    } else {
        0
    }
}

fn body_name(body: &Body) -> &'static str {
    match body {
        Body::Hello(_) => "hello",
        Body::Error(_) => "error",
        Body::Login(_) => "login",
        Body::LoginOk(_) => "login_ok",
        Body::RequestCode(_) => "request_code",
        Body::CodeIssued(_) => "code_issued",
        Body::Join(_) => "join",
        Body::ConsentRequest(_) => "consent_request",
        Body::PeerJoined(_) => "peer_joined",
        Body::Consent(_) => "consent",
        Body::SessionState(_) => "session_state",
        Body::ClientState(_) => "client_state",
        Body::Data(_) => "data",
        Body::End(_) => "end",
        Body::Ended(_) => "ended",
        Body::Ping(_) => "ping",
        Body::Pong(_) => "pong",
        Body::FileOffer(_) => "file_offer",
        Body::FileAnswer(_) => "file_answer",
        Body::FileCredit(_) => "file_credit",
        Body::FileDone(_) => "file_done",
    }
}
