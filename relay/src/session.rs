//! A live session at run time: the policy machine behind a lock, the two peers' outbound
//! queues, and the timer that expires codes and consent requests. Connection tasks feed it
//! frames; it decides with [`Policy`] and queues what may pass. No lock is held across an
//! await.
//!
//! A change of grants or switches (the client's `ClientState`, or an admin lowering what
//! the operator may do) is carried out under the lock in one step: frames of the traffic it
//! stops are withdrawn from both queues, transfers it stops are closed, and only then is the
//! new `SessionState` queued, so nothing the change forbids reaches a peer after the state
//! that announces it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;
use tsunagu_proto::codec::encode;
use tsunagu_proto::pb::{self, frame::Body, Channel, EndReason, Frame};
use tsunagu_proto::types::end_reason_name;
use tsunagu_proto::{PermissionSet, RawFrame, SessionCode};

use crate::directory::Directory;
use crate::grid::fence::Fence;
use crate::grid::records::{
    ClientSnapshot, Epoch, RecordError, Saved, SessionRecords, SessionSnapshot, SnapshotPhase, TransferSnapshot,
    TransferStage,
};
use crate::history::{HistoryEvent, HistorySink};
use crate::level::Level;
use crate::policy::{Change, ClientModes, ConsentOutcome, Direction, FileOutcome, FileRecord, Phase, Policy, Verdict};
use crate::policy::{OpenTransfer, PolicyState};
use crate::queue::{OutQueue, Pass, QueueError};
use crate::resume::{draw_token, ResumeRefusal, Seat};
use crate::time::now_ms;

/// Which side a frame came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Operator,
    Client,
}

impl Role {
    /// Index of this side in per-side arrays.
    fn slot(self) -> usize {
        match self {
            Role::Operator => 0,
            Role::Client => 1,
        }
    }

    /// The end reason when this side's connection is gone for good.
    pub fn gone(self) -> EndReason {
        match self {
            Role::Operator => EndReason::OperatorDisconnected,
            Role::Client => EndReason::ClientDisconnected,
        }
    }

    fn other(self) -> Role {
        match self {
            Role::Operator => Role::Client,
            Role::Client => Role::Operator,
        }
    }
}

/// A connection's hold on one side of a session: which connection it is (each resume
/// makes a new one), and a signal that changes when a newer connection takes the side.
pub struct Hold {
    pub role: Role,
    generation: u32,
    newer: Level,
}

impl Hold {
    /// Resolves when a newer connection has taken this side (a resume), so this one stops.
    pub async fn replaced(&mut self) {
        let mine = self.generation;
        self.newer.wait_until(|g| g != mine).await;
    }
}

struct Inner {
    policy: Policy,
    /// Set once `finish` has run; the policy may have ended on its own before that.
    finished: bool,
    operator_q: OutQueue,
    client_q: Option<OutQueue>,
    /// Each side's resume seat, if its endpoint can resume (by [`Role::slot`]).
    seats: [Option<Seat>; 2],
    /// Which connection holds each side now; bumped by every resume.
    generation: [u32; 2],
    /// Resumes so far, both sides together.
    resumes: u32,
    /// The client, once one joined (what another node needs to carry the session on).
    client: Option<ClientSnapshot>,
    /// In a grid: the epoch this node owns the session's record at, once it was written.
    epoch: Option<Epoch>,
    /// The counters as the record last written holds them.
    saved_counters: crate::policy::Counters,
    /// When the record was last written.
    saved_at: Instant,
}

/// What [`Session::view`] returns.
#[derive(Debug, Clone, Copy)]
pub struct SessionView {
    pub phase: crate::policy::Phase,
    pub modes: ClientModes,
    pub granted: PermissionSet,
    pub counters: crate::policy::Counters,
}

/// Where a frame the policy let through goes.
struct Route {
    queue: OutQueue,
    /// Taken with the decision; refused if the traffic stops before the frame is queued.
    pass: Pass,
    direction: Direction,
}

/// How a frame the policy lets through is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Passage {
    /// Screen frames: the oldest is dropped when the peer falls behind.
    Screen,
    /// Other data: back-pressured, withdrawn if its traffic stops before it is sent.
    Queued,
    /// Never withdrawn (the end of a transfer).
    Always,
}

/// What the policy decided about one frame from a peer.
struct Decided {
    /// Where it goes, if it may pass.
    route: Option<Route>,
    screen: bool,
    /// A transfer it finished, for the history.
    record: Option<FileRecord>,
}

/// What [`Session::carry_out`] did under the lock and leaves for after it.
struct Carried {
    changed: bool,
    emptied: bool,
    /// A peer's control queue was full: it stopped reading.
    overflow: bool,
    closed: Vec<FileRecord>,
}

/// The narrow part of the relay a session uses: where its history goes, the consent
/// timeout it announces, the directory its code expires in, and the registry it leaves when
/// it ends. One per relay, shared by all its sessions.
pub struct SessionShared {
    pub history: HistorySink,
    /// How long the client has to answer the consent request (`timeouts.consent`).
    pub consent_timeout: Duration,
    pub directory: Arc<dyn Directory>,
    /// Takes an ended session out of this node's registry, by id.
    pub leave: Box<dyn Fn(&str) + Send + Sync>,
    /// How long a side whose connection dropped may take to resume (`timeouts.resume`).
    pub resume_window: Duration,
    /// This relay node's name in a grid (empty on a single node), told to resumed endpoints.
    pub node: String,
    /// On a grid node: where session records are kept and the node's fence. Set once, when
    /// the relay joins its grid.
    pub grid: std::sync::OnceLock<SessionGrid>,
}

/// What a session on a grid node uses of the grid.
pub struct SessionGrid {
    /// Where the session's record is kept, so another node can take it over.
    pub records: Arc<SessionRecords>,
    /// Whether this node may still forward (see [`Fence`]).
    pub fence: Arc<Fence>,
}

/// One session, shared by its two connection tasks and its timer.
/// Counters that moved are written to the session's record at most this often.
pub const COUNTERS_SAVED_EVERY: Duration = Duration::from_secs(2);

pub struct Session {
    pub id: String,
    pub operator: String,
    /// Where the operator's connection comes from, checked again when the admin changes
    /// the operator's IP rules.
    pub operator_addr: SocketAddr,
    /// The relay port the operator reached (for the history and a node taking over).
    operator_relay_port: u16,
    /// The session's code; `None` on a node that took the session over after its join.
    code: Option<SessionCode>,
    inner: Mutex<Inner>,
    /// Taken across building and writing the session's record, so records are written in
    /// the order of the states they hold.
    saving: tokio::sync::Mutex<()>,
    ended_tx: Level,
    /// Each side's current connection generation, for [`Hold::replaced`].
    generation_tx: [Level; 2],
    /// Wakes the timer when the deadline moves.
    kick: Notify,
    /// Serial of the client certificate the operator logged in with, if any: the session
    /// ends when it is revoked.
    operator_cert: std::sync::OnceLock<String>,
    shared: Arc<SessionShared>,
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
pub fn new_session_id() -> String {
    let mut b = [0u8; 16];
    // The OS CSPRNG failing is not recoverable in any useful way; fall back to time.
    if getrandom::fill(&mut b).is_err() {
        b[..8].copy_from_slice(&now_ms().to_le_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Session {
    /// Remembers the client certificate the operator logged in with (once).
    pub fn set_operator_cert(&self, serial: String) {
        let _ = self.operator_cert.set(serial);
    }

    /// The serial of the client certificate the operator logged in with, if any.
    pub fn operator_cert(&self) -> Option<&str> {
        self.operator_cert.get().map(String::as_str)
    }

    /// A session `id` (see [`new_session_id`]) whose code the directory issued already.
    #[allow(clippy::too_many_arguments)] // each is one fact of the new session, given once by `Shared::open_session`
    pub(crate) fn new(
        shared: Arc<SessionShared>,
        id: String,
        operator: String,
        operator_addr: SocketAddr,
        operator_relay_port: u16,
        code: SessionCode,
        policy: Policy,
        operator_q: OutQueue,
    ) -> Arc<Self> {
        Arc::new(Self {
            id,
            operator,
            operator_addr,
            operator_relay_port,
            code: Some(code),
            inner: Mutex::new(Inner {
                policy,
                finished: false,
                operator_q,
                client_q: None,
                seats: [None, None],
                generation: [0, 0],
                resumes: 0,
                client: None,
                epoch: None,
                saved_counters: Default::default(),
                saved_at: crate::clock::now(),
            }),
            saving: tokio::sync::Mutex::new(()),
            ended_tx: Level::new(0),
            generation_tx: [Level::new(0), Level::new(0)],
            kick: Notify::new(),
            operator_cert: std::sync::OnceLock::new(),
            shared,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves when the session has ended.
    pub async fn ended(&self) {
        self.ended_tx.wait_until(|ended| ended != 0).await
    }

    pub fn is_ended(&self) -> bool {
        self.ended_tx.get() != 0
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
        let now = crate::clock::now();
        let (asked, operator_q) = {
            let mut inner = self.lock();
            if !inner.policy.client_joined(now) {
                return false;
            }
            inner.client_q = Some(client_q.clone());
            inner.client = Some(ClientSnapshot {
                host: host.to_string(),
                addr,
                relay_port,
            });
            (inner.policy.asked(), inner.operator_q.clone())
        };
        self.kick.notify_one();
        if let Some(code) = self.code {
            self.shared.directory.joined(code);
        }
        let consent_ms = self.shared.consent_timeout.as_millis() as u64;
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

    /// Queues a frame the policy let through. A frame whose traffic was stopped while it
    /// waited for room is not sent, and counts as dropped.
    async fn send(&self, route: Route, wire: Bytes, screen: bool) -> Result<(), QueueError> {
        let len = wire.len() as u64;
        let pushed = if screen {
            route.queue.push_screen(wire, route.pass)
        } else {
            route.queue.push_data(wire, route.pass).await
        };
        if pushed == Err(QueueError::Withdrawn) {
            self.lock().policy.withdrawn(route.direction, 1, len);
        }
        pushed
    }

    /// Carries out a change of grants or switches, under the session lock: withdraws the
    /// queued frames of the traffic it stopped, tells both sides about transfers it closed,
    /// then queues the new state for both peers (in that order, so nothing the change
    /// forbids follows the state that announces it).
    fn carry_out(inner: &mut Inner, change: Change) -> Carried {
        for direction in [Direction::ToClient, Direction::ToOperator] {
            let channels: Vec<Channel> = change
                .stopped
                .iter()
                .filter(|(d, _)| *d == direction)
                .map(|(_, c)| *c)
                .collect();
            if channels.is_empty() {
                continue;
            }
            if let Some(q) = Self::target(inner, direction) {
                let w = q.withdraw(&channels);
                inner.policy.withdrawn(direction, w.frames, w.bytes);
            }
        }
        let mut overflow = false;
        let mut push = |q: Option<OutQueue>, f: Bytes| {
            if let Some(q) = q {
                overflow |= q.push_control(f) == Err(QueueError::Overflow);
            }
        };
        if change.changed {
            let state = state_frame(&inner.policy);
            push(Some(inner.operator_q.clone()), state.clone());
            push(inner.client_q.clone(), state);
        }
        for r in &change.closed {
            // The receiver hears it as from the sender and the sender as from the receiver,
            // each in the id space of the transfer's sender.
            let done = |from_receiver| {
                frame(Body::FileDone(pb::FileDone {
                    transfer_id: r.id,
                    result: pb::FileResult::Cancelled as i32,
                    reason: "file transfer is no longer allowed in this session".into(),
                    from_receiver,
                }))
            };
            push(Self::target(inner, r.direction), done(false));
            push(Self::target(inner, r.direction.opposite()), done(true));
        }
        Carried {
            changed: change.changed,
            emptied: change.emptied,
            overflow,
            closed: change.closed,
        }
    }

    /// The async half of a change: history for closed transfers, and the end of a session
    /// a peer stopped reading or the admin left nothing to do. Returns whether it ended.
    async fn after_change(&self, carried: Carried) -> bool {
        for r in carried.closed {
            self.record_file(r).await;
        }
        if carried.overflow {
            tracing::warn!(session = %self.id, "a peer stopped reading; ending the session");
            self.finish(EndReason::ProtocolError).await;
            return true;
        }
        if carried.emptied {
            tracing::info!(session = %self.id, operator = %self.operator, "the admin allows nothing this session does; ending it");
            self.finish(EndReason::AdminEnded).await;
            return true;
        }
        false
    }

    /// Lowers what this session may do to what the admin now allows its operator (it never
    /// raises anything): a code not yet joined or a consent not yet given offers less, live
    /// grants are clipped, the traffic they no longer allow stops at once and both peers
    /// see the new state. A session left with nothing to do ends as `admin_ended`. Returns
    /// whether the session changed.
    pub async fn limit(&self, allowed: PermissionSet) -> bool {
        let carried = {
            let mut inner = self.lock();
            if inner.finished {
                return false;
            }
            let asked = inner.policy.asked();
            let change = inner.policy.limit(allowed);
            let narrowed = change.changed || inner.policy.asked() != asked;
            let carried = Self::carry_out(&mut inner, change);
            if !narrowed {
                return false;
            }
            tracing::info!(session = %self.id, operator = %self.operator, allowed = %allowed, granted = %inner.policy.granted(), "the admin narrowed the session's permissions");
            carried
        };
        if !self.after_change(carried).await {
            self.save().await;
        }
        true
    }

    async fn record_file(&self, r: FileRecord) {
        tracing::info!(session = %self.id, size = r.size, bytes = r.bytes, direction = r.direction.name(), result = r.result.name(), "file transfer over");
        self.shared
            .history
            .record(HistoryEvent::File {
                id: self.id.clone(),
                name: r.name,
                size: r.size,
                direction: r.direction.name(),
                bytes: r.bytes,
                result: r.result.name(),
                at_ms: now_ms(),
            })
            .await;
    }

    /// Handles one frame from a peer. Returns false when the peer's connection should stop
    /// reading (the session ended).
    pub async fn on_frame(&self, from: Role, raw: RawFrame) -> bool {
        let Some(body) = raw.frame.body else { return true };
        // A transfer's life changes what another node would need to carry it on.
        let transfer_changes = matches!(
            body,
            Body::FileOffer(_) | Body::FileAnswer(_) | Body::FileDone(_) | Body::FileResume(_)
        );
        let direction = match from {
            Role::Operator => Direction::ToClient,
            Role::Client => Direction::ToOperator,
        };
        // Frames for the other peer: the policy decides, one path carries it out.
        let decided = match body {
            Body::FileOffer(offer) => self.decide(direction, Some(Channel::File), Passage::Queued, |p| {
                (
                    p.file_offer(direction, offer.transfer_id, &offer.name, offer.size),
                    None,
                )
            }),
            Body::FileAnswer(answer) => self.decide(direction, Some(Channel::File), Passage::Queued, |p| {
                p.file_answer(direction, answer.transfer_id, answer.accept)
            }),
            Body::FileCredit(credit) => self.decide(direction, Some(Channel::File), Passage::Queued, |p| {
                (p.file_credit(direction, credit.transfer_id), None)
            }),
            Body::FileResume(resume) => self.decide(direction, Some(Channel::File), Passage::Queued, |p| {
                (p.file_resume(direction, resume.transfer_id, resume.offset), None)
            }),
            Body::FileDone(done) => {
                let result = FileOutcome::from(pb::FileResult::try_from(done.result).unwrap_or(pb::FileResult::Failed));
                // The end of a transfer is never withdrawn: the other side must hear it even
                // if files stop meanwhile (the transfer is closed already, so no
                // cancellation would follow).
                self.decide(direction, Some(Channel::File), Passage::Always, |p| {
                    p.file_done(direction, done.transfer_id, done.from_receiver, result)
                })
            }
            Body::Data(data) => {
                let channel = Channel::try_from(data.channel).ok();
                let passage = if channel == Some(Channel::Screen) {
                    Passage::Screen
                } else {
                    Passage::Queued
                };
                let content = file_payload_len(channel, &data.payload);
                let len = raw.wire.len();
                self.decide(direction, channel, passage, |p| {
                    (p.check_data_in(direction, channel, data.stream, content, len), None)
                })
            }
            control => return self.on_control(from, control).await,
        };
        let forwarded = self.forward(decided, raw.wire).await;
        if transfer_changes {
            self.save().await;
        }
        if forwarded == Err(QueueError::Closed) {
            return !self.is_ended();
        }
        true
    }

    /// Asks the policy (`rule`, under the session lock) about a frame travelling
    /// `direction` on `channel`, and takes its route when it may pass: the queue of the peer
    /// it goes to and a pass taken under the same lock as the decision.
    fn decide(
        &self,
        direction: Direction,
        channel: Option<Channel>,
        passage: Passage,
        rule: impl FnOnce(&mut Policy) -> (Verdict, Option<FileRecord>),
    ) -> Decided {
        let mut inner = self.lock();
        let (verdict, record) = rule(&mut inner.policy);
        let route = match (verdict, channel) {
            // The policy forwards only frames on a known channel.
            (Verdict::Forward, Some(channel)) => Self::target(&inner, direction).map(|queue| Route {
                pass: match passage {
                    Passage::Always => OutQueue::pass_always(),
                    Passage::Queued | Passage::Screen => queue.pass(channel),
                },
                queue,
                direction,
            }),
            (Verdict::Forward, None) => None,
            (Verdict::Drop(reason), _) => {
                tracing::debug!(session = %self.id, ?reason, ?channel, "dropped a frame");
                None
            }
        };
        Decided {
            route,
            screen: passage == Passage::Screen,
            record,
        }
    }

    /// Carries out a [`Session::decide`]: queues the frame if it may pass, then records a
    /// transfer it finished.
    async fn forward(&self, decided: Decided, wire: Bytes) -> Result<(), QueueError> {
        let pushed = match decided.route {
            // A node whose fence is down may have lost the session to another: it forwards
            // nothing until it knows.
            Some(_) if !self.may_forward() => Ok(()),
            Some(route) => self.send(route, wire, decided.screen).await,
            None => Ok(()),
        };
        if let Some(record) = decided.record {
            self.record_file(record).await;
        }
        pushed
    }

    /// Frames for the relay itself: consent, the client's switches, `End`, `Ping`.
    async fn on_control(&self, from: Role, body: Body) -> bool {
        match body {
            Body::Consent(c) if from == Role::Client => {
                let granted = PermissionSet::from_wire(&c.granted);
                let (outcome, carried) = {
                    let mut inner = self.lock();
                    let outcome = inner.policy.consent(granted, c.denied);
                    // Queued under the lock, so a change right after consent (an admin
                    // narrowing the grants) cannot be overtaken by this older state.
                    let change = Change {
                        changed: matches!(outcome, ConsentOutcome::Granted(_)),
                        ..Change::default()
                    };
                    (outcome, Self::carry_out(&mut inner, change))
                };
                match outcome {
                    ConsentOutcome::Granted(g) => {
                        if self.after_change(carried).await {
                            return false;
                        }
                        tracing::info!(session = %self.id, granted = %g, "consent granted");
                        self.save().await;
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
                let (carried, was_paused) = {
                    let mut inner = self.lock();
                    let was_paused = inner.policy.modes().paused;
                    let change = inner.policy.client_state(modes, PermissionSet::from_wire(&cs.revoke));
                    (Self::carry_out(&mut inner, change), was_paused)
                };
                if carried.changed && modes.paused != was_paused {
                    tracing::info!(session = %self.id, paused = modes.paused, "client changed control");
                }
                let changed = carried.changed;
                if self.after_change(carried).await {
                    return false;
                }
                if changed {
                    self.save().await;
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

    /// Ends the session for `reason` (once): queues the history's record of it, then tells
    /// both peers, closes their queues and releases the code.
    pub async fn finish(&self, reason: EndReason) {
        let (reason, counters, granted, phase_before_client, queues, open_files) = {
            let mut inner = self.lock();
            let had_client = inner.client_q.is_some();
            if inner.finished {
                return;
            }
            inner.finished = true;
            inner.policy.end(reason);
            // The machine's word is final: if it had already ended (a deadline it ticked
            // past, a disconnect it decided on), that reason stands over the caller's.
            let reason = match inner.policy.phase() {
                Phase::Ended(decided) => decided,
                _ => reason,
            };
            let open_files = inner.policy.close_all_transfers();
            (
                reason,
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
        // The history hears of the end before the peers do, so whoever saw `Ended` (an app
        // that printed `ended`, the script driving it) and then flushes or reads the history
        // finds the row ended. Queuing never waits (see `HistorySink::record`).
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
        let ended = frame(Body::Ended(pb::Ended { reason: reason as i32 }));
        for q in [Some(&queues.0), queues.1.as_ref()].into_iter().flatten() {
            let _ = q.push_control(ended.clone());
            q.close();
        }
        self.ended_tx.set(1);
        self.kick.notify_one();
        if let Some(code) = self.code.filter(|_| phase_before_client) {
            self.shared.directory.expire(code, crate::clock::now()).await;
        }
        if self.shared.grid.get().is_some() {
            Box::pin(self.forget_record()).await;
        }
        (self.shared.leave)(&self.id);
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
        crate::metrics::session_ended(
            end_reason_name(reason),
            counters.bytes_to_client,
            counters.bytes_to_operator,
            counters.dropped_frames,
        );
    }

    /// The connection behind `hold` went away without `End`. A side that can resume is
    /// waited for (`timeouts.resume`) while the other side is told it is away; otherwise the
    /// policy decides whether that ends the session now or after a grace window in which an
    /// explicit end from the other side still counts (see `policy::DISCONNECT_GRACE`). A
    /// connection a resume has replaced changes nothing.
    pub async fn peer_gone(&self, hold: &Hold) {
        let now = crate::clock::now();
        let role = hold.role;
        let reason = role.gone();
        let (decided, tell) = {
            let mut inner = self.lock();
            if inner.finished || inner.generation[role.slot()] != hold.generation {
                return;
            }
            let window = self.shared.resume_window;
            if inner.seats[role.slot()].is_some() && !window.is_zero() && !inner.policy.is_ended() {
                inner.policy.peer_away(reason, now + window);
                (None, Self::queue_of(&inner, role.other()))
            } else {
                (inner.policy.peer_gone(reason, now), None)
            }
        };
        if let Some(q) = tell {
            tracing::info!(session = %self.id, ?role, "peer connection dropped; waiting for it to resume");
            let _ = q.push_control(frame(Body::PeerConnection(pb::PeerConnection { away: true })));
        }
        match decided {
            Some(reason) => self.finish(reason).await,
            // The timer wakes for the new deadline.
            None => self.kick.notify_one(),
        }
    }

    /// The queue of `role`'s connection, if it has one.
    fn queue_of(inner: &Inner, role: Role) -> Option<OutQueue> {
        match role {
            Role::Operator => Some(inner.operator_q.clone()),
            Role::Client => inner.client_q.clone(),
        }
    }

    /// The first connection's hold on `role`'s side.
    pub fn hold(&self, role: Role) -> Hold {
        let inner = self.lock();
        Hold {
            role,
            generation: inner.generation[role.slot()],
            newer: self.generation_tx[role.slot()].clone(),
        }
    }

    /// Gives `role`'s side a resume seat for the endpoint's `key` and queues its first
    /// `ResumeToken` for it, once the grid (on a grid node) keeps the seat. Returns false
    /// (the side cannot resume; a drop ends the session as before) for an empty or
    /// malformed key, when resuming is off, or if no token could be drawn.
    pub async fn open_seat(&self, role: Role, key: &[u8]) -> bool {
        if key.is_empty() || self.shared.resume_window.is_zero() {
            return false;
        }
        let Some(mut seat) = Seat::new(key) else {
            tracing::info!(session = %self.id, ?role, "resume key of the wrong length; this side cannot resume");
            return false;
        };
        let token = match draw_token() {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(session = %self.id, error = %e, "could not draw a resume token");
                return false;
            }
        };
        seat.issue(&token);
        {
            let mut inner = self.lock();
            if inner.finished {
                return false;
            }
            inner.seats[role.slot()] = Some(seat);
        }
        // Kept before it is told: a token the endpoint holds always works on the node that
        // takes the session over.
        self.save().await;
        let q = Self::queue_of(&self.lock(), role);
        q.is_some_and(|q| q.push_control(self.token_frame(&token)).is_ok())
    }

    fn token_frame(&self, token: &[u8]) -> Bytes {
        frame(Body::ResumeToken(pb::ResumeToken {
            session_id: self.id.clone(),
            token: Bytes::copy_from_slice(token),
            window_ms: self.shared.resume_window.as_millis() as u64,
        }))
    }

    /// Checks a resume of `role`'s side with `token` and `signature` (see
    /// [`crate::resume::Seat::take`]); on success the token is spent and the caller goes
    /// on with [`Session::reattach`].
    pub fn take_seat(&self, role: Role, token: &[u8], signature: &[u8]) -> Result<(), ResumeRefusal> {
        let mut inner = self.lock();
        if inner.finished || inner.policy.is_ended() {
            return Err(ResumeRefusal::UnknownSession);
        }
        let seat = inner.seats[role.slot()].as_mut().ok_or(ResumeRefusal::NotResumable)?;
        seat.take(&self.id, role == Role::Operator, token, signature)
    }

    /// A resumed connection takes `role`'s side (after [`Session::take_seat`]): it gets the
    /// session's state, a fresh resume token and `queue` as its outbound queue; a connection
    /// that still held the side is closed; the other side hears that this one is back.
    /// `None` if the session ended meanwhile.
    pub async fn reattach(&self, role: Role, queue: OutQueue, addr: SocketAddr) -> Option<Hold> {
        let token = draw_token().ok();
        let state = {
            let mut inner = self.lock();
            if inner.finished || inner.policy.is_ended() {
                return None;
            }
            let slot = role.slot();
            let old = match role {
                Role::Operator => Some(std::mem::replace(&mut inner.operator_q, queue.clone())),
                Role::Client => inner.client_q.replace(queue.clone()),
            };
            inner.generation[slot] = inner.generation[slot].wrapping_add(1);
            inner.resumes = inner.resumes.saturating_add(1);
            inner.policy.peer_back(role.gone());
            let p = &inner.policy;
            let _ = queue.push_control(frame(Body::Resumed(pb::Resumed {
                session_id: self.id.clone(),
                resumes: inner.resumes,
                node: self.shared.node.clone(),
                operator: self.operator.clone(),
                consented: p.phase() == Phase::Active,
            })));
            match p.phase() {
                Phase::Active => {
                    let _ = queue.push_control(state_frame(p));
                }
                Phase::AwaitingConsent if role == Role::Client => {
                    let left = p.deadline().map(|d| d.saturating_duration_since(crate::clock::now()));
                    let _ = queue.push_control(frame(Body::ConsentRequest(pb::ConsentRequest {
                        session_id: self.id.clone(),
                        operator: self.operator.clone(),
                        permissions: p.asked().to_wire(),
                        timeout_ms: left.unwrap_or_default().as_millis() as u64,
                    })));
                }
                _ => {}
            }
            if p.is_away(role.other().gone()) {
                let _ = queue.push_control(frame(Body::PeerConnection(pb::PeerConnection { away: true })));
            }
            let seat = inner.seats[slot].as_mut();
            let token = match (seat, token) {
                (Some(seat), Some(token)) => {
                    seat.issue(&token);
                    Some(token)
                }
                _ => None,
            };
            let hold = Hold {
                role,
                generation: inner.generation[slot],
                newer: self.generation_tx[slot].clone(),
            };
            self.generation_tx[slot].set(inner.generation[slot]);
            (hold, inner.resumes, old, Self::queue_of(&inner, role.other()), token)
        };
        let (hold, resumes, old, other, token) = state;
        // Kept before it is told, as at the first token (see `open_seat`).
        self.save().await;
        if let Some(token) = token {
            let _ = queue.push_control(self.token_frame(&token));
        }
        if let Some(old) = old.filter(|o| !o.same_queue(&queue)) {
            old.close();
        }
        if let Some(q) = other {
            let _ = q.push_control(frame(Body::PeerConnection(pb::PeerConnection { away: false })));
        }
        self.kick.notify_one();
        tracing::info!(session = %self.id, ?role, resumes, "endpoint resumed");
        crate::metrics::resumed();
        self.shared
            .history
            .record(HistoryEvent::Resumed {
                id: self.id.clone(),
                role: match role {
                    Role::Operator => "operator",
                    Role::Client => "client",
                },
                addr,
                resumes,
                at_ms: now_ms(),
            })
            .await;
        Some(hold)
    }

    /// The session as its record keeps it (see [`crate::grid::records`]).
    fn snapshot_of(&self, inner: &Inner) -> SessionSnapshot {
        let state = inner.policy.state();
        let now = crate::clock::now();
        let unix = |at: Instant| unix_ms_of(at, now);
        let phase = match state.phase {
            Phase::AwaitingClient => SnapshotPhase::AwaitingClient {
                code_deadline_unix_ms: unix(state.code_deadline),
            },
            Phase::AwaitingConsent => SnapshotPhase::AwaitingConsent {
                deadline_unix_ms: unix(state.consent_deadline.unwrap_or(now)),
            },
            _ => SnapshotPhase::Active,
        };
        SessionSnapshot {
            id: self.id.clone(),
            operator: self.operator.clone(),
            operator_addr: self.operator_addr,
            operator_relay_port: self.operator_relay_port,
            client: inner.client.clone(),
            phase,
            asked: state.asked,
            granted: state.granted,
            allowed: state.asked,
            modes: state.modes,
            operator_seat: inner.seats[0].clone(),
            client_seat: inner.seats[1].clone(),
            resumes: inner.resumes,
            operator_cert: self.operator_cert.get().cloned(),
            transfers: state
                .transfers
                .into_iter()
                .map(|t| TransferSnapshot {
                    direction: t.direction,
                    id: t.id,
                    name: t.name,
                    size: t.size,
                    bytes: t.bytes,
                    stage: if t.accepted {
                        TransferStage::Accepted
                    } else {
                        TransferStage::Offered
                    },
                })
                .collect(),
            counters: state.counters,
        }
    }

    /// On a grid node, writes the session's record (creating it the first time), so another
    /// node can take the session over if this one dies. Only sessions an endpoint can
    /// resume are kept. A record this node no longer owns means the session moved: it is
    /// let go here. A Redis that cannot be reached is logged; the next change writes again.
    pub async fn save(&self) {
        if self.shared.grid.get().is_some() {
            // Boxed: Redis calls weigh a few KiB of future state, which every connection's
            // reader (it saves on some frames) would otherwise carry for its whole life.
            Box::pin(self.save_record()).await;
        }
    }

    /// Whether the session's counters moved since its record was last written, at least
    /// [`COUNTERS_SAVED_EVERY`] before `now` (the grid's live-view task writes such records,
    /// so a takeover loses at most that long's bytes from the history, and a burst of
    /// resumes is not slowed by a record write per session and heartbeat).
    pub fn counters_unsaved(&self, now: Instant) -> bool {
        let inner = self.lock();
        inner.epoch.is_some()
            && !inner.finished
            && inner.policy.counters() != inner.saved_counters
            && now.saturating_duration_since(inner.saved_at) >= COUNTERS_SAVED_EVERY
    }

    async fn save_record(&self) {
        let Some(grid) = self.shared.grid.get() else { return };
        let _order = self.saving.lock().await;
        let (snapshot, epoch) = {
            let inner = self.lock();
            if inner.finished || inner.seats.iter().all(Option::is_none) {
                return;
            }
            (self.snapshot_of(&inner), inner.epoch)
        };
        let written = match epoch {
            None => grid.records.create(&snapshot).await.map(|epoch| {
                self.lock().epoch = Some(epoch);
                Saved::Stored
            }),
            Some(epoch) => match grid.records.save(&snapshot, epoch).await {
                // Redis lost the record (it restarted empty): this node still owns it.
                Ok(Saved::Gone) => grid.records.restore(&snapshot, epoch).await,
                other => other,
            },
        };
        match written {
            Ok(Saved::Stored) => {
                let mut inner = self.lock();
                inner.saved_counters = snapshot.counters;
                inner.saved_at = crate::clock::now();
            }
            Ok(Saved::Stale { owner, epoch }) => {
                tracing::warn!(session = %self.id, %owner, epoch = epoch.get(), "the session moved to another node; letting it go");
                self.let_go().await;
            }
            Ok(Saved::Gone) => {
                tracing::warn!(session = %self.id, "the session's record is gone; it cannot move to another node")
            }
            Err(RecordError::Exists) => {
                tracing::error!(session = %self.id, "a record with this session's id exists already")
            }
            Err(e) => tracing::warn!(session = %self.id, error = %e, "could not save the session's record"),
        }
    }

    /// The session ended here: its record becomes a tombstone (see
    /// [`SessionRecords::remove`]), so no node takes it over.
    async fn forget_record(&self) {
        let Some(grid) = self.shared.grid.get() else { return };
        let epoch = self.lock().epoch;
        if let Some(epoch) = epoch {
            if let Err(e) = grid.records.remove(&self.id, epoch).await {
                tracing::warn!(session = %self.id, error = %e, "could not remove the session's record; it expires by itself");
            }
        }
    }

    /// Whether this node may forward the session's frames now: on a grid node, only while
    /// its fence holds (see [`Fence`]).
    fn may_forward(&self) -> bool {
        self.shared
            .grid
            .get()
            .is_none_or(|g| g.fence.holds(crate::clock::now()))
    }

    /// The epoch this node owns the session's record at, if it has one.
    pub fn epoch(&self) -> Option<Epoch> {
        self.lock().epoch
    }

    /// The session moved to another node (found stale here): closes its connections on
    /// this node with `Ended(moved)`, so their endpoints resume where it runs now, and
    /// forgets it here without a word to the history, which the new owner keeps writing.
    pub async fn let_go(&self) {
        let queues = {
            let mut inner = self.lock();
            if inner.finished {
                return;
            }
            inner.finished = true;
            inner.policy.end(EndReason::Moved);
            (inner.operator_q.clone(), inner.client_q.clone())
        };
        let moved = frame(Body::Ended(pb::Ended {
            reason: EndReason::Moved as i32,
        }));
        for q in [Some(&queues.0), queues.1.as_ref()].into_iter().flatten() {
            let _ = q.push_control(moved.clone());
            q.close();
        }
        self.ended_tx.set(1);
        self.kick.notify_one();
        (self.shared.leave)(&self.id);
        tracing::info!(session = %self.id, "the session moved to another node; its connections here are closed");
    }

    /// A session another node ran, rebuilt on this one from its record (taken over at
    /// `epoch`): both sides are away until they resume, within the resume window. `None` for
    /// a record no live session could have.
    pub(crate) fn restore(
        shared: Arc<SessionShared>,
        snapshot: SessionSnapshot,
        epoch: Epoch,
        code: Option<SessionCode>,
    ) -> Option<Arc<Self>> {
        let now = crate::clock::now();
        let at = |unix_ms: u64| instant_of_unix_ms(unix_ms, now);
        let counters = snapshot.counters;
        let (phase, code_deadline, consent_deadline) = match snapshot.phase {
            SnapshotPhase::AwaitingClient { code_deadline_unix_ms } => {
                (Phase::AwaitingClient, at(code_deadline_unix_ms), None)
            }
            SnapshotPhase::AwaitingConsent { deadline_unix_ms } => {
                (Phase::AwaitingConsent, now, Some(at(deadline_unix_ms)))
            }
            SnapshotPhase::Active => (Phase::Active, now, None),
        };
        let state = PolicyState {
            phase,
            asked: snapshot.asked,
            granted: snapshot.granted,
            modes: snapshot.modes,
            counters: snapshot.counters,
            code_deadline,
            consent_deadline,
            transfers: snapshot
                .transfers
                .into_iter()
                .map(|t| OpenTransfer {
                    direction: t.direction,
                    id: t.id,
                    name: t.name,
                    size: t.size,
                    bytes: t.bytes,
                    accepted: t.stage == TransferStage::Accepted,
                })
                .collect(),
        };
        let mut policy = Policy::restore(state, shared.consent_timeout)?;
        let until = now + shared.resume_window;
        policy.peer_away(EndReason::OperatorDisconnected, until);
        let client_q = snapshot.client.as_ref().map(|_| {
            policy.peer_away(EndReason::ClientDisconnected, until);
            closed_queue()
        });
        Some(Arc::new(Self {
            id: snapshot.id,
            operator: snapshot.operator,
            operator_addr: snapshot.operator_addr,
            operator_relay_port: snapshot.operator_relay_port,
            code,
            inner: Mutex::new(Inner {
                policy,
                finished: false,
                operator_q: closed_queue(),
                client_q,
                seats: [snapshot.operator_seat, snapshot.client_seat],
                generation: [0, 0],
                resumes: snapshot.resumes,
                client: snapshot.client,
                epoch: Some(epoch),
                saved_counters: counters,
                saved_at: now,
            }),
            saving: tokio::sync::Mutex::new(()),
            ended_tx: Level::new(0),
            generation_tx: [Level::new(0), Level::new(0)],
            kick: Notify::new(),
            operator_cert: snapshot
                .operator_cert
                .map(std::sync::OnceLock::from)
                .unwrap_or_default(),
            shared,
        }))
    }

    /// Runs the session's clock: code expiry, consent timeout and a vanished peer's grace
    /// window, by tokio's clock (see [`crate::clock`]). Returns when the session ends.
    pub async fn run_timer(self: Arc<Self>) {
        loop {
            let (deadline, decided) = {
                let inner = self.lock();
                if inner.finished {
                    return;
                }
                match inner.policy.phase() {
                    Phase::Ended(reason) => (None, Some(reason)),
                    _ => (inner.policy.deadline(), None),
                }
            };
            // The policy ended by itself (a code that ran out as a client presented it):
            // carry it out, so the operator is told.
            if let Some(reason) = decided {
                self.finish(reason).await;
                return;
            }
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    // No deadline now; a later change (a peer vanishing) kicks the timer.
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => {
                    let reason = self.lock().policy.tick(crate::clock::now());
                    if let Some(reason) = reason {
                        self.finish(reason).await;
                        return;
                    }
                }
                _ = self.kick.notified() => {}
                _ = self.ended() => return,
            }
        }
    }
}

/// The queue of a side nobody is connected to yet: closed, so what is sent to it is dropped.
fn closed_queue() -> OutQueue {
    let q = OutQueue::new(1, 1, 1);
    q.close();
    q
}

/// Wall-clock Unix milliseconds of `at` on this node's monotonic clock (`now` is the same
/// moment on both clocks), for a record another machine reads.
fn unix_ms_of(at: Instant, now: Instant) -> u64 {
    let now_unix = now_ms().max(0) as u64;
    if at >= now {
        now_unix.saturating_add(at.duration_since(now).as_millis() as u64)
    } else {
        now_unix.saturating_sub(now.duration_since(at).as_millis() as u64)
    }
}

/// The moment on this node's monotonic clock of wall-clock `unix_ms` (`now` is the present).
fn instant_of_unix_ms(unix_ms: u64, now: Instant) -> Instant {
    let now_unix = now_ms().max(0) as u64;
    if unix_ms >= now_unix {
        now + Duration::from_millis(unix_ms - now_unix)
    } else {
        now.checked_sub(Duration::from_millis(now_unix - unix_ms))
            .unwrap_or(now)
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
        Body::ResumeToken(_) => "resume_token",
        Body::Resume(_) => "resume",
        Body::Resumed(_) => "resumed",
        Body::PeerConnection(_) => "peer_connection",
        Body::FileResume(_) => "file_resume",
        Body::RenewCertificate(_) => "renew_certificate",
        Body::CertificateRenewed(_) => "certificate_renewed",
    }
}
