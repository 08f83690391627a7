//! The session policy machine, sans-IO: the rules the relay enforces on every session.
//! Events and time go in; decisions (forward or drop, what to tell the peers, when the
//! next deadline is) come out. The connection code only carries out what this decides.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tsunagu_proto::pb::{Channel, EndReason, Permission};
use tsunagu_proto::PermissionSet;

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Code issued; waiting for a client to join.
    AwaitingClient,
    /// Client joined; waiting for its consent.
    AwaitingConsent,
    /// Consent given; data flows as the grants allow.
    Active,
    Ended(EndReason),
}

/// Which way a data frame travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    ToClient,
    ToOperator,
}

impl Direction {
    pub fn opposite(self) -> Self {
        match self {
            Direction::ToClient => Direction::ToOperator,
            Direction::ToOperator => Direction::ToClient,
        }
    }

    /// The history's name for files moving this way.
    pub fn name(self) -> &'static str {
        match self {
            Direction::ToClient => "to_client",
            Direction::ToOperator => "to_operator",
        }
    }
}

/// How long a peer's vanished connection (end of stream, reset) waits before it becomes the
/// session's end reason. The two peers reach the relay on two sockets read by two tasks:
/// an operator that sends `End` and closes both its apps at once (or a client app that
/// closes right after the operator's `End`) makes the relay see one side's `End` and the
/// other side's close at nearly the same instant, in either order. An explicit end (`End`,
/// a denial, the admin, a timeout) that arrives within this window wins over the close.
/// A quarter second is far longer than the skew between two loopback or LAN reads, and
/// short enough that the remaining peer hardly waits to hear that the session ended.
pub const DISCONNECT_GRACE: Duration = Duration::from_millis(250);

/// Transfers open at once in one session (offered or accepted, both directions together).
/// Each holds a few bytes of bookkeeping; the cap keeps a peer from growing the table.
pub const MAX_OPEN_TRANSFERS: usize = 16;

/// Longest file name kept in the history, in characters.
pub const MAX_RECORDED_NAME: usize = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TransferState {
    Offered,
    Accepted,
}

#[derive(Debug, Clone)]
struct Transfer {
    name: String,
    size: u64,
    bytes: u64,
    state: TransferState,
    /// Carried over from a session record (a takeover): `bytes` is what the record last
    /// held, so the receiver's next `FileResume` may name more, up to the size.
    restored: bool,
}

/// A finished (or refused) transfer, for the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    /// The sender's transfer id.
    pub id: u32,
    pub name: String,
    pub size: u64,
    pub direction: Direction,
    pub bytes: u64,
    pub result: FileOutcome,
}

/// How a file transfer ended, as the history records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOutcome {
    /// The receiver checked the hash and kept the file.
    Completed,
    /// The receiver said no to the offer.
    Rejected,
    /// Stopped by a side, or because files stopped being allowed.
    Cancelled,
    /// Anything else: an error, a sender claiming completion, the session ending mid-way.
    Failed,
}

impl FileOutcome {
    /// The history's name for it (the `result` column, the console, the CSV export).
    pub fn name(self) -> &'static str {
        match self {
            FileOutcome::Completed => "completed",
            FileOutcome::Rejected => "rejected",
            FileOutcome::Cancelled => "cancelled",
            FileOutcome::Failed => "failed",
        }
    }
}

impl From<tsunagu_proto::pb::FileResult> for FileOutcome {
    fn from(result: tsunagu_proto::pb::FileResult) -> Self {
        use tsunagu_proto::pb::FileResult as R;
        match result {
            R::Completed => FileOutcome::Completed,
            R::Rejected => FileOutcome::Rejected,
            R::Cancelled => FileOutcome::Cancelled,
            R::Failed | R::Unspecified => FileOutcome::Failed,
        }
    }
}

/// Keeps a file name fit for the history: no control, format or bidi characters (see
/// `tsunagu_proto::names`), bounded length.
fn recorded_name(name: &str) -> String {
    let clean: String = tsunagu_proto::names::make_inert(name)
        .chars()
        .take(MAX_RECORDED_NAME)
        .collect();
    if clean.is_empty() {
        "unnamed".into()
    } else {
        clean
    }
}

/// Why a data frame was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    NoConsent,
    NotGranted,
    Paused,
    ViewOnly,
    ChatOnly,
    WrongDirection,
    UnknownChannel,
    /// A file frame for a transfer that was not offered, not accepted, or is over.
    NoTransfer,
    /// A file chunk beyond the offered size, or an offer with an id already in use.
    TransferMisuse,
    /// Too many transfers open at once.
    TooManyTransfers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    Drop(DropReason),
}

/// The client-controlled switches, as last reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientModes {
    pub paused: bool,
    pub view_only: bool,
    pub chat_only: bool,
}

/// What a consent answer led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentOutcome {
    Granted(PermissionSet),
    Denied,
    /// Consent arrived when none was asked (before join, or twice): ignored.
    Unexpected,
}

/// Counters kept for the history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub bytes_to_client: u64,
    pub bytes_to_operator: u64,
    pub pauses: u32,
    pub dropped_frames: u64,
}

/// Every (way, channel) pair that can carry traffic, in a fixed order: the bit positions of
/// [`Flows`].
const FLOW_PAIRS: [(Direction, Channel); 9] = [
    (Direction::ToClient, Channel::Input),
    (Direction::ToClient, Channel::ScreenFeedback),
    (Direction::ToOperator, Channel::Screen),
    (Direction::ToClient, Channel::Chat),
    (Direction::ToOperator, Channel::Chat),
    (Direction::ToClient, Channel::File),
    (Direction::ToOperator, Channel::File),
    (Direction::ToClient, Channel::Clipboard),
    (Direction::ToOperator, Channel::Clipboard),
];

/// Which traffic a session lets through at one moment, channel by channel and way by way.
/// Comparing two snapshots tells which frames already queued a change has made stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flows(u16);

impl Flows {
    /// Whether frames on `channel` may travel `direction`.
    pub fn allows(self, direction: Direction, channel: Channel) -> bool {
        FLOW_PAIRS
            .iter()
            .position(|p| *p == (direction, channel))
            .is_some_and(|i| self.0 & (1 << i) != 0)
    }

    /// What flowed in `earlier` and no longer flows in `self`.
    pub fn stopped_since(self, earlier: Flows) -> Vec<(Direction, Channel)> {
        FLOW_PAIRS
            .iter()
            .enumerate()
            .filter(|(i, _)| earlier.0 & (1 << i) != 0 && self.0 & (1 << i) == 0)
            .map(|(_, p)| *p)
            .collect()
    }
}

/// What a change of grants or client switches did, for the session to carry out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// The grants or switches changed: both peers are told the new state.
    pub changed: bool,
    /// Traffic that flowed before and no longer does: frames of these already queued are
    /// withdrawn before the new state is sent.
    pub stopped: Vec<(Direction, Channel)>,
    /// Transfers closed because files no longer flow (recorded as cancelled; both sides are
    /// told).
    pub closed: Vec<FileRecord>,
    /// The admin left the session nothing it may do (nothing asked before consent, nothing
    /// granted after): the session ends.
    pub emptied: bool,
}

/// A transfer still open, as another relay node needs it to carry the session on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenTransfer {
    /// The way the content moves.
    pub direction: Direction,
    /// The sender's transfer id.
    pub id: u32,
    /// The name as recorded (already cut to [`MAX_RECORDED_NAME`]).
    pub name: String,
    pub size: u64,
    /// Content bytes let through so far.
    pub bytes: u64,
    /// The receiver accepted it (otherwise it is only offered).
    pub accepted: bool,
}

/// Everything a [`Policy`] decides by, to rebuild it on another relay node after the one
/// that ran the session is gone (see [`Policy::restore`]). Deadlines are absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyState {
    /// `AwaitingClient`, `AwaitingConsent` or `Active`.
    pub phase: Phase,
    pub asked: PermissionSet,
    pub granted: PermissionSet,
    pub modes: ClientModes,
    pub counters: Counters,
    pub code_deadline: Instant,
    pub consent_deadline: Option<Instant>,
    pub transfers: Vec<OpenTransfer>,
}

/// One session's rules and state.
#[derive(Debug)]
pub struct Policy {
    phase: Phase,
    /// What the operator asked for, already clipped to what the admin allows.
    asked: PermissionSet,
    granted: PermissionSet,
    modes: ClientModes,
    counters: Counters,
    code_deadline: Instant,
    consent_timeout: Duration,
    consent_deadline: Option<Instant>,
    /// Open transfers by (direction the content moves, sender's transfer id).
    transfers: HashMap<(Direction, u32), Transfer>,
    /// A peer's connection went away: the reason it will be recorded with, and when, unless
    /// an explicit end comes first (see [`DISCONNECT_GRACE`]).
    closing: Option<(EndReason, Instant)>,
    /// Peers whose connection dropped and who may resume: the reason the session ends
    /// with, and when, unless they come back first (see [`Policy::peer_away`]).
    away: [Option<(EndReason, Instant)>; 2],
}

/// The slot in [`Policy`]'s `away` of the peer a disconnect reason names.
fn away_slot(reason: EndReason) -> usize {
    usize::from(reason == EndReason::ClientDisconnected)
}

impl Policy {
    /// A session whose code was issued at `now`, asking for `requested` (clipped to
    /// `allowed`), that expires after `code_ttl` unless a client joins.
    pub fn new(
        requested: PermissionSet,
        allowed: PermissionSet,
        now: Instant,
        code_ttl: Duration,
        consent_timeout: Duration,
    ) -> Self {
        Self {
            phase: Phase::AwaitingClient,
            asked: requested.intersect(allowed),
            granted: PermissionSet::EMPTY,
            modes: ClientModes::default(),
            counters: Counters::default(),
            code_deadline: now + code_ttl,
            consent_timeout,
            consent_deadline: None,
            transfers: HashMap::new(),
            closing: None,
            away: [None, None],
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// What this policy decides by, for [`Policy::restore`] elsewhere.
    pub fn state(&self) -> PolicyState {
        let mut transfers: Vec<OpenTransfer> = self
            .transfers
            .iter()
            .map(|(&(direction, id), t)| OpenTransfer {
                direction,
                id,
                name: t.name.clone(),
                size: t.size,
                bytes: t.bytes,
                accepted: t.state == TransferState::Accepted,
            })
            .collect();
        transfers.sort_by_key(|t| (t.direction == Direction::ToOperator, t.id));
        PolicyState {
            phase: self.phase,
            asked: self.asked,
            granted: self.granted,
            modes: self.modes,
            counters: self.counters,
            code_deadline: self.code_deadline,
            consent_deadline: self.consent_deadline,
            transfers,
        }
    }

    /// The policy a [`PolicyState`] describes, on a node taking the session over: both
    /// sides count as away until they resume (see [`Policy::peer_away`]). `None` for a state
    /// no live session has (ended, or more open transfers than one session may hold).
    pub fn restore(state: PolicyState, consent_timeout: Duration) -> Option<Self> {
        if matches!(state.phase, Phase::Ended(_)) || state.transfers.len() > MAX_OPEN_TRANSFERS {
            return None;
        }
        let transfers = state
            .transfers
            .into_iter()
            .map(|t| {
                let transfer = Transfer {
                    name: recorded_name(&t.name),
                    size: t.size,
                    bytes: t.bytes.min(t.size),
                    state: if t.accepted {
                        TransferState::Accepted
                    } else {
                        TransferState::Offered
                    },
                    restored: true,
                };
                ((t.direction, t.id), transfer)
            })
            .collect();
        Some(Self {
            phase: state.phase,
            asked: state.asked,
            granted: state.granted.intersect(state.asked),
            modes: state.modes,
            counters: state.counters,
            code_deadline: state.code_deadline,
            consent_timeout,
            consent_deadline: state.consent_deadline,
            transfers,
            closing: None,
            away: [None, None],
        })
    }

    pub fn asked(&self) -> PermissionSet {
        self.asked
    }

    pub fn granted(&self) -> PermissionSet {
        self.granted
    }

    pub fn modes(&self) -> ClientModes {
        self.modes
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// A client presented the code. Returns false if the session no longer takes one.
    pub fn client_joined(&mut self, now: Instant) -> bool {
        if self.phase != Phase::AwaitingClient {
            return false;
        }
        if now >= self.code_deadline {
            self.phase = Phase::Ended(EndReason::Expired);
            return false;
        }
        self.phase = Phase::AwaitingConsent;
        self.consent_deadline = Some(now + self.consent_timeout);
        true
    }

    /// The client answered the consent request. Grants are clipped to what was asked.
    pub fn consent(&mut self, granted: PermissionSet, denied: bool) -> ConsentOutcome {
        if self.phase != Phase::AwaitingConsent {
            return ConsentOutcome::Unexpected;
        }
        self.consent_deadline = None;
        let granted = granted.intersect(self.asked);
        if denied || granted.is_empty() {
            self.phase = Phase::Ended(EndReason::ConsentDenied);
            return ConsentOutcome::Denied;
        }
        self.granted = granted;
        self.phase = Phase::Active;
        ConsentOutcome::Granted(granted)
    }

    /// The client reported its switches and any permissions it withdraws. Says whether
    /// anything changed (then both peers are told the new state), which traffic stopped, and
    /// which transfers closed because files stopped.
    pub fn client_state(&mut self, modes: ClientModes, revoke: PermissionSet) -> Change {
        if self.phase != Phase::Active {
            return Change::default();
        }
        let before = (self.modes, self.granted);
        let flows = self.flows();
        if modes.paused && !self.modes.paused {
            self.counters.pauses = self.counters.pauses.saturating_add(1);
        }
        self.modes = modes;
        self.granted = self.granted.difference(revoke);
        self.change_since(before != (self.modes, self.granted), flows)
    }

    /// The admin lowered what the operator may do to `allowed` (it never raises anything):
    /// before consent the request is clipped, so the client can no longer grant the rest;
    /// after consent the grants are clipped. A session left with nothing to do ends.
    pub fn limit(&mut self, allowed: PermissionSet) -> Change {
        let flows = self.flows();
        let asked = self.asked;
        self.asked = self.asked.intersect(allowed);
        match self.phase {
            Phase::AwaitingClient | Phase::AwaitingConsent => Change {
                emptied: self.asked.is_empty() && !asked.is_empty(),
                ..Change::default()
            },
            Phase::Active => {
                let granted = self.granted;
                self.granted = self.granted.intersect(allowed);
                let changed = granted != self.granted;
                let mut change = self.change_since(changed, flows);
                change.emptied = changed && self.granted.is_empty();
                change
            }
            Phase::Ended(_) => Change::default(),
        }
    }

    /// The traffic the session lets through now.
    pub fn flows(&self) -> Flows {
        let mut bits = 0u16;
        for (i, (direction, channel)) in FLOW_PAIRS.iter().enumerate() {
            if self.decide(*direction, Some(*channel)) == Verdict::Forward {
                bits |= 1 << i;
            }
        }
        Flows(bits)
    }

    /// What changed since the traffic was `earlier`: when files stopped, every open transfer
    /// closes as cancelled, since its chunks can no longer arrive.
    fn change_since(&mut self, changed: bool, earlier: Flows) -> Change {
        let stopped = self.flows().stopped_since(earlier);
        let files_stopped = stopped.iter().any(|(_, c)| *c == Channel::File);
        let closed = if files_stopped {
            self.close_all_transfers_as(FileOutcome::Cancelled)
        } else {
            Vec::new()
        };
        Change {
            changed,
            stopped,
            closed,
            emptied: false,
        }
    }

    /// Frames the policy let through were taken back before they reached the peer (the
    /// traffic stopped while they were queued): they count as dropped, not as relayed.
    pub fn withdrawn(&mut self, direction: Direction, frames: u64, bytes: u64) {
        let relayed = match direction {
            Direction::ToClient => &mut self.counters.bytes_to_client,
            Direction::ToOperator => &mut self.counters.bytes_to_operator,
        };
        *relayed = relayed.saturating_sub(bytes);
        self.counters.dropped_frames = self.counters.dropped_frames.saturating_add(frames);
    }

    /// Decides whether a data frame of `len` wire bytes on `channel` may pass. File chunks
    /// (`stream` = transfer id, `payload` = content bytes claimed) pass only for an accepted
    /// transfer moving this way, up to its offered size.
    pub fn check_data(&mut self, direction: Direction, channel: Option<Channel>, len: usize) -> Verdict {
        self.check_data_in(direction, channel, 0, 0, len)
    }

    /// [`check_data`](Self::check_data) with the file-transfer header fields.
    pub fn check_data_in(
        &mut self,
        direction: Direction,
        channel: Option<Channel>,
        stream: u32,
        payload: usize,
        len: usize,
    ) -> Verdict {
        let mut verdict = self.decide(direction, channel);
        if verdict == Verdict::Forward && channel == Some(Channel::File) {
            verdict = match self.transfers.get_mut(&(direction, stream)) {
                Some(t) if t.state == TransferState::Accepted => {
                    // Checked: the size is the sender's word and may be `u64::MAX`.
                    match t.bytes.checked_add(payload as u64) {
                        Some(total) if total <= t.size => {
                            t.bytes = total;
                            Verdict::Forward
                        }
                        _ => Verdict::Drop(DropReason::TransferMisuse),
                    }
                }
                _ => Verdict::Drop(DropReason::NoTransfer),
            };
        }
        // Saturating: a counter that has reached its largest value stays there.
        let c = &mut self.counters;
        match verdict {
            Verdict::Forward => match direction {
                Direction::ToClient => c.bytes_to_client = c.bytes_to_client.saturating_add(len as u64),
                Direction::ToOperator => c.bytes_to_operator = c.bytes_to_operator.saturating_add(len as u64),
            },
            Verdict::Drop(_) => c.dropped_frames = c.dropped_frames.saturating_add(1),
        }
        verdict
    }

    fn decide(&self, direction: Direction, channel: Option<Channel>) -> Verdict {
        use Direction::*;
        use DropReason::*;
        if self.phase != Phase::Active {
            return Verdict::Drop(NoConsent);
        }
        let need = |p: Permission| {
            if self.granted.contains(p) {
                Verdict::Forward
            } else {
                Verdict::Drop(NotGranted)
            }
        };
        let m = self.modes;
        match (channel, direction) {
            (None | Some(Channel::Unspecified), _) => Verdict::Drop(UnknownChannel),
            (Some(Channel::Chat), _) => need(Permission::Chat),
            (Some(_), _) if m.chat_only => Verdict::Drop(ChatOnly),
            (Some(Channel::Screen), ToOperator) | (Some(Channel::ScreenFeedback), ToClient) => need(Permission::View),
            (Some(Channel::Input), ToClient) => match need(Permission::Control) {
                Verdict::Forward if m.view_only => Verdict::Drop(ViewOnly),
                Verdict::Forward if m.paused => Verdict::Drop(Paused),
                v => v,
            },
            (Some(Channel::File), _) => need(Permission::Files),
            (Some(Channel::Clipboard), _) => need(Permission::Clipboard),
            // Feedback and input never travel towards the operator, nor screen to the client.
            (Some(Channel::Screen | Channel::ScreenFeedback | Channel::Input), _) => Verdict::Drop(WrongDirection),
        }
    }

    /// Files may move now (consent, `files` granted, not chat-only).
    fn files_allowed(&self) -> Result<(), DropReason> {
        if self.phase != Phase::Active {
            return Err(DropReason::NoConsent);
        }
        if !self.granted.contains(Permission::Files) {
            return Err(DropReason::NotGranted);
        }
        if self.modes.chat_only {
            return Err(DropReason::ChatOnly);
        }
        Ok(())
    }

    /// A sender offers a file moving `direction`.
    pub fn file_offer(&mut self, direction: Direction, id: u32, name: &str, size: u64) -> Verdict {
        if let Err(r) = self.files_allowed() {
            return Verdict::Drop(r);
        }
        if self.transfers.contains_key(&(direction, id)) {
            return Verdict::Drop(DropReason::TransferMisuse);
        }
        if self.transfers.len() >= MAX_OPEN_TRANSFERS {
            return Verdict::Drop(DropReason::TooManyTransfers);
        }
        self.transfers.insert(
            (direction, id),
            Transfer {
                name: recorded_name(name),
                size,
                bytes: 0,
                state: TransferState::Offered,
                restored: false,
            },
        );
        Verdict::Forward
    }

    /// The receiver answers an offer; the answer travels `direction` (back to the sender).
    /// A rejection closes the transfer and yields its record.
    pub fn file_answer(&mut self, direction: Direction, id: u32, accept: bool) -> (Verdict, Option<FileRecord>) {
        let key = (direction.opposite(), id);
        let allowed = self.files_allowed();
        match self.transfers.get_mut(&key) {
            Some(t) if t.state == TransferState::Offered => {
                if accept {
                    if let Err(r) = allowed {
                        return (Verdict::Drop(r), None);
                    }
                    t.state = TransferState::Accepted;
                    (Verdict::Forward, None)
                } else {
                    let record = self.close_transfer(key, FileOutcome::Rejected);
                    (Verdict::Forward, record)
                }
            }
            _ => (Verdict::Drop(DropReason::NoTransfer), None),
        }
    }

    /// The receiver grants more credit; it travels `direction` (back to the sender).
    pub fn file_credit(&self, direction: Direction, id: u32) -> Verdict {
        match self.transfers.get(&(direction.opposite(), id)) {
            Some(t) if t.state == TransferState::Accepted => Verdict::Forward,
            _ => Verdict::Drop(DropReason::NoTransfer),
        }
    }

    /// Either side ends a transfer; the frame travels `direction`.
    pub fn file_done(
        &mut self,
        direction: Direction,
        id: u32,
        from_receiver: bool,
        result: FileOutcome,
    ) -> (Verdict, Option<FileRecord>) {
        let key = if from_receiver {
            (direction.opposite(), id)
        } else {
            (direction, id)
        };
        if !self.transfers.contains_key(&key) {
            return (Verdict::Drop(DropReason::NoTransfer), None);
        }
        // A sender cannot declare its own transfer completed: only the receiver, who
        // checked the hash, can.
        let result = if result == FileOutcome::Completed && !from_receiver {
            FileOutcome::Failed
        } else {
            result
        };
        let record = self.close_transfer(key, result);
        (Verdict::Forward, record)
    }

    fn close_transfer(&mut self, key: (Direction, u32), result: FileOutcome) -> Option<FileRecord> {
        self.transfers.remove(&key).map(|t| FileRecord {
            id: key.1,
            name: t.name,
            size: t.size,
            direction: key.0,
            bytes: t.bytes,
            result,
        })
    }

    /// Transfers still open (the session is ending): each is recorded as failed.
    pub fn close_all_transfers(&mut self) -> Vec<FileRecord> {
        self.close_all_transfers_as(FileOutcome::Failed)
    }

    fn close_all_transfers_as(&mut self, result: FileOutcome) -> Vec<FileRecord> {
        let mut keys: Vec<_> = self.transfers.keys().copied().collect();
        // A stable order, so the peers are told in the order the transfers were numbered.
        keys.sort_by_key(|(d, id)| (*d == Direction::ToOperator, *id));
        keys.into_iter()
            .filter_map(|k| self.close_transfer(k, result))
            .collect()
    }

    pub fn open_transfers(&self) -> usize {
        self.transfers.len()
    }

    /// The next moment something happens by itself (code expiry, consent timeout, the end
    /// of a vanished peer's grace window).
    pub fn deadline(&self) -> Option<Instant> {
        let phase = match self.phase {
            Phase::AwaitingClient => Some(self.code_deadline),
            Phase::AwaitingConsent => self.consent_deadline,
            _ => None,
        };
        if self.is_ended() {
            return phase;
        }
        let closing = self.closing.map(|(_, at)| at);
        [
            phase,
            closing,
            self.away[0].map(|(_, at)| at),
            self.away[1].map(|(_, at)| at),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Applies the passage of time; returns the end reason if the session just ended.
    pub fn tick(&mut self, now: Instant) -> Option<EndReason> {
        // A peer that stayed away past its window.
        let gone_for_good = self.away.iter().flatten().find(|(_, at)| now >= *at).map(|(r, _)| *r);
        let reason = match (self.phase, self.closing, gone_for_good) {
            (Phase::Ended(_), _, _) => return None,
            (_, Some((reason, at)), _) if now >= at => reason,
            (_, _, Some(reason)) => reason,
            (Phase::AwaitingClient, _, _) if now >= self.code_deadline => EndReason::Expired,
            (Phase::AwaitingConsent, _, _) if self.consent_deadline.is_some_and(|d| now >= d) => {
                EndReason::ConsentTimeout
            }
            _ => return None,
        };
        self.phase = Phase::Ended(reason);
        Some(reason)
    }

    /// A peer's connection went away without `End` (`reason` is `operator_disconnected` or
    /// `client_disconnected`). Returns the reason to end with at once, or `None` when the
    /// end waits out [`DISCONNECT_GRACE`] (see [`Policy::deadline`]) so that an explicit end
    /// the other peer sent at about the same time is the one recorded. With nobody left who
    /// could still say why (no client yet, or the other peer is gone too) the session ends
    /// at once, with the first peer's disconnect.
    pub fn peer_gone(&mut self, reason: EndReason, now: Instant) -> Option<EndReason> {
        if self.is_ended() {
            return None;
        }
        let first = match self.closing {
            Some((first, _)) => first,
            None if self.phase == Phase::AwaitingClient => reason,
            None => {
                self.closing = Some((reason, now + DISCONNECT_GRACE));
                return None;
            }
        };
        self.phase = Phase::Ended(first);
        Some(first)
    }

    /// A peer that may resume lost its connection (`reason`: `operator_disconnected` or
    /// `client_disconnected`): the session waits for it until `until`, then ends with
    /// `reason`. Its other peer and the rules carry on meanwhile; frames for the away peer
    /// are dropped (the endpoints re-send what matters after the resume).
    pub fn peer_away(&mut self, reason: EndReason, until: Instant) {
        if !self.is_ended() {
            self.away[away_slot(reason)] = Some((reason, until));
        }
    }

    /// The away peer named by `reason` (its disconnect reason) is back.
    pub fn peer_back(&mut self, reason: EndReason) {
        self.away[away_slot(reason)] = None;
    }

    /// Whether the peer named by `reason` (its disconnect reason) is away.
    pub fn is_away(&self, reason: EndReason) -> bool {
        self.away[away_slot(reason)].is_some()
    }

    /// The receiver of the transfer `id` moving `direction.opposite()` holds its first
    /// `offset` bytes after a resume and asks the sender to go on from there; the request
    /// travels `direction` (back to the sender). The relay counts the content again from
    /// `offset`, which cannot be more than what it let through.
    pub fn file_resume(&mut self, direction: Direction, id: u32, offset: u64) -> Verdict {
        if let Err(r) = self.files_allowed() {
            return Verdict::Drop(r);
        }
        match self.transfers.get_mut(&(direction.opposite(), id)) {
            Some(t) if t.state == TransferState::Accepted && (offset <= t.bytes || t.restored && offset <= t.size) => {
                t.bytes = offset;
                t.restored = false;
                Verdict::Forward
            }
            Some(_) => Verdict::Drop(DropReason::TransferMisuse),
            None => Verdict::Drop(DropReason::NoTransfer),
        }
    }

    /// Whether a peer's connection went away and the session waits out its grace window.
    pub fn is_closing(&self) -> bool {
        self.closing.is_some() && !self.is_ended()
    }

    /// Ends the session for `reason` unless it already ended; returns whether it did.
    pub fn end(&mut self, reason: EndReason) -> bool {
        if matches!(self.phase, Phase::Ended(_)) {
            return false;
        }
        self.phase = Phase::Ended(reason);
        true
    }

    pub fn is_ended(&self) -> bool {
        matches!(self.phase, Phase::Ended(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Direction::*;

    const TTL: Duration = Duration::from_secs(600);
    const CONSENT: Duration = Duration::from_secs(60);

    const PAUSED: ClientModes = ClientModes {
        paused: true,
        view_only: false,
        chat_only: false,
    };
    const VIEW_ONLY: ClientModes = ClientModes {
        paused: false,
        view_only: true,
        chat_only: false,
    };
    const CHAT_ONLY: ClientModes = ClientModes {
        paused: false,
        view_only: false,
        chat_only: true,
    };

    fn perms(names: &[&str]) -> PermissionSet {
        PermissionSet::parse_names(names.iter().copied()).unwrap()
    }

    fn active(granted: &[&str]) -> (Policy, Instant) {
        let t0 = Instant::now();
        let mut p = Policy::new(PermissionSet::ALL, PermissionSet::ALL, t0, TTL, CONSENT);
        assert!(p.client_joined(t0));
        assert_eq!(
            p.consent(perms(granted), false),
            ConsentOutcome::Granted(perms(granted))
        );
        (p, t0)
    }

    #[test]
    fn nothing_flows_before_consent() {
        let t0 = Instant::now();
        let mut p = Policy::new(PermissionSet::ALL, PermissionSet::ALL, t0, TTL, CONSENT);
        for ch in [Channel::Screen, Channel::Chat, Channel::File] {
            assert_eq!(
                p.check_data(ToOperator, Some(ch), 10),
                Verdict::Drop(DropReason::NoConsent)
            );
        }
        p.client_joined(t0);
        assert_eq!(
            p.check_data(ToClient, Some(Channel::Input), 10),
            Verdict::Drop(DropReason::NoConsent)
        );
        assert_eq!(p.counters().dropped_frames, 4);
        assert_eq!(p.counters().bytes_to_client, 0);
    }

    #[test]
    fn grants_are_clipped_to_what_the_admin_allows() {
        let t0 = Instant::now();
        let mut p = Policy::new(PermissionSet::ALL, perms(&["view", "chat"]), t0, TTL, CONSENT);
        assert_eq!(p.asked(), perms(&["view", "chat"]));
        p.client_joined(t0);
        assert_eq!(
            p.consent(PermissionSet::ALL, false),
            ConsentOutcome::Granted(perms(&["view", "chat"]))
        );
        assert_eq!(
            p.check_data(ToClient, Some(Channel::Input), 5),
            Verdict::Drop(DropReason::NotGranted)
        );
    }

    #[test]
    fn empty_grant_is_a_denial() {
        let t0 = Instant::now();
        let mut p = Policy::new(perms(&["control"]), PermissionSet::ALL, t0, TTL, CONSENT);
        p.client_joined(t0);
        assert_eq!(p.consent(perms(&["view"]), false), ConsentOutcome::Denied);
        assert_eq!(p.phase(), Phase::Ended(EndReason::ConsentDenied));
        assert_eq!(
            p.check_data(ToOperator, Some(Channel::Screen), 5),
            Verdict::Drop(DropReason::NoConsent)
        );
    }

    #[test]
    fn view_only_and_pause_drop_input_but_not_screen() {
        let (mut p, _) = active(&["view", "control", "chat"]);
        assert_eq!(p.check_data(ToClient, Some(Channel::Input), 5), Verdict::Forward);
        assert!(p.client_state(PAUSED, PermissionSet::EMPTY).changed);
        assert_eq!(
            p.check_data(ToClient, Some(Channel::Input), 5),
            Verdict::Drop(DropReason::Paused)
        );
        assert_eq!(p.check_data(ToOperator, Some(Channel::Screen), 5), Verdict::Forward);
        p.client_state(ClientModes::default(), PermissionSet::EMPTY);
        p.client_state(PAUSED, PermissionSet::EMPTY);
        assert_eq!(p.counters().pauses, 2);
        p.client_state(VIEW_ONLY, PermissionSet::EMPTY);
        assert_eq!(
            p.check_data(ToClient, Some(Channel::Input), 5),
            Verdict::Drop(DropReason::ViewOnly)
        );
        p.client_state(CHAT_ONLY, PermissionSet::EMPTY);
        assert_eq!(
            p.check_data(ToOperator, Some(Channel::Screen), 5),
            Verdict::Drop(DropReason::ChatOnly)
        );
        assert_eq!(p.check_data(ToOperator, Some(Channel::Chat), 5), Verdict::Forward);
    }

    #[test]
    fn clipboard_text_needs_its_own_permission_both_ways() {
        let (mut p, _) = active(&["view", "control", "chat"]);
        for way in [ToClient, ToOperator] {
            assert_eq!(
                p.check_data(way, Some(Channel::Clipboard), 5),
                Verdict::Drop(DropReason::NotGranted)
            );
        }
        let (mut p, _) = active(&["view", "clipboard"]);
        for way in [ToClient, ToOperator] {
            assert_eq!(p.check_data(way, Some(Channel::Clipboard), 5), Verdict::Forward);
        }
        // Paused or view only, the clipboard is not input: it still moves.
        p.client_state(PAUSED, PermissionSet::EMPTY);
        assert_eq!(p.check_data(ToClient, Some(Channel::Clipboard), 5), Verdict::Forward);
        p.client_state(CHAT_ONLY, PermissionSet::EMPTY);
        assert_eq!(
            p.check_data(ToClient, Some(Channel::Clipboard), 5),
            Verdict::Drop(DropReason::ChatOnly)
        );
        p.client_state(ClientModes::default(), perms(&["clipboard"]));
        assert_eq!(
            p.check_data(ToOperator, Some(Channel::Clipboard), 5),
            Verdict::Drop(DropReason::NotGranted)
        );
    }

    #[test]
    fn revoked_permissions_stay_revoked() {
        let (mut p, _) = active(&["view", "control"]);
        assert!(p.client_state(ClientModes::default(), perms(&["control"])).changed);
        assert_eq!(
            p.check_data(ToClient, Some(Channel::Input), 5),
            Verdict::Drop(DropReason::NotGranted)
        );
        p.client_state(ClientModes::default(), PermissionSet::EMPTY);
        assert_eq!(p.granted(), perms(&["view"]));
    }

    #[test]
    fn channels_only_flow_their_own_way() {
        let (mut p, _) = active(&["view", "control", "chat", "files"]);
        assert_eq!(
            p.check_data(ToClient, Some(Channel::Screen), 5),
            Verdict::Drop(DropReason::WrongDirection)
        );
        assert_eq!(
            p.check_data(ToOperator, Some(Channel::Input), 5),
            Verdict::Drop(DropReason::WrongDirection)
        );
        assert_eq!(
            p.check_data(ToOperator, None, 5),
            Verdict::Drop(DropReason::UnknownChannel)
        );
        assert_eq!(
            p.check_data(ToClient, Some(Channel::ScreenFeedback), 5),
            Verdict::Forward
        );
        assert_eq!(
            p.check_data(ToOperator, Some(Channel::File), 7),
            Verdict::Drop(DropReason::NoTransfer)
        );
        p.file_offer(ToOperator, 3, "f", 100);
        p.file_answer(ToClient, 3, true);
        assert_eq!(
            p.check_data_in(ToOperator, Some(Channel::File), 3, 5, 7),
            Verdict::Forward
        );
        assert_eq!(p.counters().bytes_to_client, 5);
        assert_eq!(p.counters().bytes_to_operator, 7);
    }

    #[test]
    fn code_expires_and_consent_times_out() {
        let t0 = Instant::now();
        let mut p = Policy::new(PermissionSet::ALL, PermissionSet::ALL, t0, TTL, CONSENT);
        assert_eq!(p.deadline(), Some(t0 + TTL));
        assert_eq!(p.tick(t0 + TTL - Duration::from_millis(1)), None);
        assert_eq!(p.tick(t0 + TTL), Some(EndReason::Expired));
        assert!(!p.client_joined(t0 + TTL), "an expired code takes no client");

        let mut p = Policy::new(PermissionSet::ALL, PermissionSet::ALL, t0, TTL, CONSENT);
        assert!(
            !p.client_joined(t0 + TTL + Duration::from_secs(1)),
            "joining after expiry fails even before the tick"
        );
        let mut p = Policy::new(PermissionSet::ALL, PermissionSet::ALL, t0, TTL, CONSENT);
        p.client_joined(t0 + Duration::from_secs(5));
        assert_eq!(p.deadline(), Some(t0 + Duration::from_secs(65)));
        assert_eq!(p.tick(t0 + Duration::from_secs(65)), Some(EndReason::ConsentTimeout));
        assert_eq!(p.consent(PermissionSet::ALL, false), ConsentOutcome::Unexpected);
    }

    #[test]
    fn file_chunks_need_an_accepted_transfer_and_stay_within_its_size() {
        let (mut p, _) = active(&["view", "files"]);
        let file = Some(Channel::File);
        assert_eq!(
            p.check_data_in(ToClient, file, 1, 10, 20),
            Verdict::Drop(DropReason::NoTransfer)
        );
        assert_eq!(p.file_offer(ToClient, 1, "report.pdf", 100), Verdict::Forward);
        assert_eq!(
            p.check_data_in(ToClient, file, 1, 10, 20),
            Verdict::Drop(DropReason::NoTransfer),
            "offered is not accepted"
        );
        // The sender cannot accept its own offer: the answer must travel back to it.
        assert_eq!(
            p.file_answer(ToClient, 1, true).0,
            Verdict::Drop(DropReason::NoTransfer)
        );
        assert_eq!(p.file_answer(ToOperator, 1, true), (Verdict::Forward, None));
        assert_eq!(p.check_data_in(ToClient, file, 1, 60, 70), Verdict::Forward);
        assert_eq!(
            p.check_data_in(ToOperator, file, 1, 10, 20),
            Verdict::Drop(DropReason::NoTransfer),
            "wrong direction"
        );
        assert_eq!(
            p.check_data_in(ToClient, file, 2, 10, 20),
            Verdict::Drop(DropReason::NoTransfer),
            "wrong stream"
        );
        assert_eq!(
            p.check_data_in(ToClient, file, 1, 50, 60),
            Verdict::Drop(DropReason::TransferMisuse),
            "beyond the size"
        );
        assert_eq!(p.check_data_in(ToClient, file, 1, 40, 50), Verdict::Forward);
        assert_eq!(p.file_credit(ToOperator, 1), Verdict::Forward);
        assert_eq!(p.file_credit(ToClient, 1), Verdict::Drop(DropReason::NoTransfer));
        let (v, rec) = p.file_done(ToOperator, 1, true, FileOutcome::Completed);
        assert_eq!(v, Verdict::Forward);
        let rec = rec.unwrap();
        assert_eq!(
            (rec.name.as_str(), rec.size, rec.bytes, rec.result, rec.direction),
            ("report.pdf", 100, 100, FileOutcome::Completed, ToClient)
        );
        assert_eq!(
            p.check_data_in(ToClient, file, 1, 1, 2),
            Verdict::Drop(DropReason::NoTransfer),
            "over is over"
        );
    }

    #[test]
    fn rejections_revocation_and_limits() {
        let (mut p, _) = active(&["view", "files"]);
        p.file_offer(ToOperator, 7, "a\u{1b}b.txt", 5);
        let (_, rec) = p.file_answer(ToClient, 7, false);
        assert_eq!(rec.unwrap().result, FileOutcome::Rejected);
        assert_eq!(p.open_transfers(), 0);

        // Only the receiver may call a transfer completed.
        p.file_offer(ToOperator, 8, "x", 5);
        p.file_answer(ToClient, 8, true);
        assert_eq!(
            p.file_done(ToOperator, 8, false, FileOutcome::Completed)
                .1
                .unwrap()
                .result,
            FileOutcome::Failed
        );

        for id in 0..MAX_OPEN_TRANSFERS as u32 {
            assert_eq!(p.file_offer(ToClient, id, "f", 1), Verdict::Forward);
        }
        assert_eq!(
            p.file_offer(ToClient, 99, "f", 1),
            Verdict::Drop(DropReason::TooManyTransfers)
        );
        assert_eq!(
            p.file_offer(ToClient, 0, "f", 1),
            Verdict::Drop(DropReason::TransferMisuse)
        );
        p.file_answer(ToOperator, 0, true);
        // Revoking files stops chunks at once and closes every open transfer as cancelled.
        let change = p.client_state(ClientModes::default(), perms(&["files"]));
        assert_eq!(change.closed.len(), MAX_OPEN_TRANSFERS);
        assert!(change.closed.iter().all(|r| r.result == FileOutcome::Cancelled));
        assert!(change.stopped.contains(&(ToClient, Channel::File)));
        assert_eq!(
            p.check_data_in(ToClient, Some(Channel::File), 0, 1, 2),
            Verdict::Drop(DropReason::NotGranted)
        );
        assert_eq!(
            p.file_offer(ToClient, 50, "f", 1),
            Verdict::Drop(DropReason::NotGranted)
        );
        assert_eq!(p.open_transfers(), 0);
        assert!(p.close_all_transfers().is_empty());

        let (mut q, _) = active(&["view"]);
        assert_eq!(q.file_offer(ToClient, 1, "f", 1), Verdict::Drop(DropReason::NotGranted));
    }

    #[test]
    fn an_admin_limit_clips_live_grants_and_stops_their_traffic() {
        let (mut p, _) = active(&["view", "control", "files", "chat"]);
        assert_eq!(p.file_offer(ToOperator, 4, "log.txt", 10), Verdict::Forward);
        p.file_answer(ToClient, 4, true);
        let change = p.limit(perms(&["view", "chat"]));
        assert!(change.changed && !change.emptied);
        assert_eq!(
            change.stopped,
            vec![
                (ToClient, Channel::Input),
                (ToClient, Channel::File),
                (ToOperator, Channel::File)
            ]
        );
        assert_eq!(change.closed.len(), 1);
        assert_eq!(
            (change.closed[0].name.as_str(), change.closed[0].result),
            ("log.txt", FileOutcome::Cancelled)
        );
        assert_eq!(p.granted(), perms(&["view", "chat"]));
        assert_eq!(p.asked(), perms(&["view", "chat"]));
        assert_eq!(
            p.check_data(ToClient, Some(Channel::Input), 5),
            Verdict::Drop(DropReason::NotGranted)
        );
        assert_eq!(
            p.check_data_in(ToOperator, Some(Channel::File), 4, 1, 2),
            Verdict::Drop(DropReason::NotGranted)
        );
        assert_eq!(p.check_data(ToOperator, Some(Channel::Screen), 5), Verdict::Forward);

        // The same limit again changes nothing; a wider one never gives anything back.
        assert_eq!(p.limit(perms(&["view", "chat"])), Change::default());
        assert!(!p.limit(PermissionSet::ALL).changed);
        assert_eq!(p.granted(), perms(&["view", "chat"]));

        // Nothing left: the session is told to end.
        let change = p.limit(PermissionSet::EMPTY);
        assert!(change.changed && change.emptied);
        assert_eq!(p.flows(), Flows::default());
    }

    #[test]
    fn an_admin_limit_before_consent_clips_what_the_client_can_grant() {
        let t0 = Instant::now();
        let mut p = Policy::new(PermissionSet::ALL, PermissionSet::ALL, t0, TTL, CONSENT);
        // Code issued, nobody joined yet: the consent request will offer only the rest.
        let change = p.limit(perms(&["view", "chat"]));
        assert!(!change.changed && !change.emptied);
        assert_eq!(p.asked(), perms(&["view", "chat"]));
        assert!(p.client_joined(t0));
        // Consent asked already: what the client grants is clipped.
        p.limit(perms(&["view"]));
        assert_eq!(
            p.consent(PermissionSet::ALL, false),
            ConsentOutcome::Granted(perms(&["view"]))
        );

        let mut p = Policy::new(perms(&["control"]), PermissionSet::ALL, t0, TTL, CONSENT);
        p.client_joined(t0);
        assert!(
            p.limit(perms(&["view", "chat"])).emptied,
            "nothing asked is allowed any more"
        );
    }

    #[test]
    fn client_switches_report_the_traffic_they_stop() {
        let (mut p, _) = active(&["view", "control", "files", "chat"]);
        assert_eq!(
            p.client_state(PAUSED, PermissionSet::EMPTY).stopped,
            vec![(ToClient, Channel::Input)]
        );
        assert!(
            p.client_state(PAUSED, PermissionSet::EMPTY).stopped.is_empty(),
            "no change, nothing stops"
        );
        let stopped = p.client_state(CHAT_ONLY, PermissionSet::EMPTY).stopped;
        assert_eq!(
            stopped,
            vec![
                (ToClient, Channel::ScreenFeedback),
                (ToOperator, Channel::Screen),
                (ToClient, Channel::File),
                (ToOperator, Channel::File)
            ]
        );
        p.client_state(ClientModes::default(), PermissionSet::EMPTY);
        let stopped = p.client_state(ClientModes::default(), perms(&["view"])).stopped;
        assert_eq!(
            stopped,
            vec![(ToClient, Channel::ScreenFeedback), (ToOperator, Channel::Screen)]
        );
        assert!(p.flows().allows(ToClient, Channel::Input));
        assert!(!p.flows().allows(ToOperator, Channel::Input));
    }

    #[test]
    fn withdrawn_frames_count_as_dropped_not_relayed() {
        let (mut p, _) = active(&["view", "control"]);
        p.check_data(ToClient, Some(Channel::Input), 30);
        p.check_data(ToClient, Some(Channel::Input), 30);
        p.withdrawn(ToClient, 1, 30);
        assert_eq!(p.counters().bytes_to_client, 30);
        assert_eq!(p.counters().dropped_frames, 1);
        p.withdrawn(ToClient, 1, 1000);
        assert_eq!(p.counters().bytes_to_client, 0, "never below zero");
    }

    #[test]
    fn recorded_file_names_lose_format_and_bidi_characters() {
        let (mut p, _) = active(&["view", "files"]);
        p.file_offer(ToOperator, 1, "invoice\u{202E}fdp.exe\u{200B}", 5);
        let (_, rec) = p.file_answer(ToClient, 1, false);
        assert_eq!(rec.unwrap().name, "invoicefdp.exe");
        p.file_offer(ToOperator, 2, "\u{FEFF}\u{2066}", 5);
        assert_eq!(p.file_answer(ToClient, 2, false).1.unwrap().name, "unnamed");
    }

    #[test]
    fn extreme_sizes_and_counters_never_overflow() {
        let (mut p, _) = active(&["view", "control", "files"]);
        let file = Some(Channel::File);
        // An offer of the largest size, accepted, already carried almost all of it.
        p.file_offer(ToClient, 1, "huge", u64::MAX);
        p.file_answer(ToOperator, 1, true);
        p.transfers.get_mut(&(ToClient, 1)).unwrap().bytes = u64::MAX - 3;
        assert_eq!(
            p.check_data_in(ToClient, file, 1, 5, 10),
            Verdict::Drop(DropReason::TransferMisuse),
            "past u64::MAX is past the offer"
        );
        assert_eq!(p.check_data_in(ToClient, file, 1, 3, 10), Verdict::Forward);
        assert_eq!(p.close_all_transfers()[0].bytes, u64::MAX);

        // Counters at their largest value stay there.
        p.counters = Counters {
            bytes_to_client: u64::MAX - 1,
            bytes_to_operator: u64::MAX,
            pauses: u32::MAX,
            dropped_frames: u64::MAX,
        };
        assert_eq!(
            p.check_data(ToClient, Some(Channel::Input), usize::MAX),
            Verdict::Forward
        );
        assert_eq!(p.check_data(ToOperator, Some(Channel::Screen), 100), Verdict::Forward);
        assert_eq!(
            p.check_data(ToOperator, Some(Channel::Input), 1),
            Verdict::Drop(DropReason::WrongDirection)
        );
        assert!(p.client_state(PAUSED, PermissionSet::EMPTY).changed);
        assert_eq!(
            p.counters(),
            Counters {
                bytes_to_client: u64::MAX,
                bytes_to_operator: u64::MAX,
                pauses: u32::MAX,
                dropped_frames: u64::MAX,
            }
        );
    }

    #[test]
    fn end_is_once() {
        let (mut p, _) = active(&["view"]);
        assert!(p.end(EndReason::ClientEnded));
        assert!(!p.end(EndReason::OperatorEnded));
        assert_eq!(p.phase(), Phase::Ended(EndReason::ClientEnded));
    }

    #[test]
    fn an_end_sent_as_the_other_peer_vanishes_is_the_one_recorded() {
        // The client's connection closes first; the operator's End, read a moment later
        // on the other socket, is what the history records.
        let (mut p, t0) = active(&["view"]);
        assert_eq!(p.peer_gone(EndReason::ClientDisconnected, t0), None);
        assert!(p.is_closing());
        assert_eq!(p.deadline(), Some(t0 + DISCONNECT_GRACE));
        assert_eq!(p.tick(t0 + DISCONNECT_GRACE / 2), None);
        assert!(p.end(EndReason::OperatorEnded));
        assert_eq!(p.phase(), Phase::Ended(EndReason::OperatorEnded));
        assert_eq!(
            p.tick(t0 + DISCONNECT_GRACE),
            None,
            "the grace window no longer matters"
        );
        assert_eq!(p.deadline(), None);

        // Nobody says anything within the window: the disconnect is the reason.
        let (mut p, t0) = active(&["view"]);
        assert_eq!(p.peer_gone(EndReason::OperatorDisconnected, t0), None);
        assert_eq!(p.tick(t0 + DISCONNECT_GRACE - Duration::from_millis(1)), None);
        assert_eq!(p.tick(t0 + DISCONNECT_GRACE), Some(EndReason::OperatorDisconnected));

        // Both peers gone: nobody is left to explain, the first close is the reason at once.
        let (mut p, t0) = active(&["view"]);
        assert_eq!(p.peer_gone(EndReason::ClientDisconnected, t0), None);
        assert_eq!(
            p.peer_gone(EndReason::OperatorDisconnected, t0 + Duration::from_millis(3)),
            Some(EndReason::ClientDisconnected)
        );

        // An operator that leaves before any client joined ends its session at once.
        let mut p = Policy::new(perms(&["view"]), PermissionSet::ALL, t0, TTL, CONSENT);
        assert_eq!(
            p.peer_gone(EndReason::OperatorDisconnected, t0),
            Some(EndReason::OperatorDisconnected)
        );
        assert_eq!(p.peer_gone(EndReason::ClientDisconnected, t0), None, "once");
    }

    #[test]
    fn an_away_peer_ends_the_session_only_when_its_window_runs_out() {
        let (mut p, t0) = active(&["view", "files"]);
        let window = Duration::from_secs(30);
        p.peer_away(EndReason::ClientDisconnected, t0 + window);
        assert!(p.is_away(EndReason::ClientDisconnected));
        assert!(!p.is_away(EndReason::OperatorDisconnected));
        assert_eq!(p.deadline(), Some(t0 + window));
        assert_eq!(p.tick(t0 + window - Duration::from_millis(1)), None);
        p.peer_back(EndReason::ClientDisconnected);
        assert_eq!(p.deadline(), None, "back in time: nothing is due");
        assert_eq!(p.tick(t0 + window * 2), None);
        assert_eq!(p.phase(), Phase::Active);

        // Not back in time: the disconnect is the end reason.
        p.peer_away(EndReason::OperatorDisconnected, t0 + window);
        assert_eq!(p.tick(t0 + window), Some(EndReason::OperatorDisconnected));
        assert_eq!(p.deadline(), None);
    }

    #[test]
    fn a_file_resumes_only_from_what_the_relay_let_through() {
        let (mut p, _) = active(&["files"]);
        assert_eq!(p.file_offer(ToClient, 1, "a.bin", 100), Verdict::Forward);
        assert_eq!(
            p.file_resume(ToOperator, 1, 0),
            Verdict::Drop(DropReason::TransferMisuse),
            "not accepted yet"
        );
        assert_eq!(p.file_answer(ToOperator, 1, true), (Verdict::Forward, None));
        assert_eq!(
            p.check_data_in(ToClient, Some(Channel::File), 1, 60, 70),
            Verdict::Forward
        );
        assert_eq!(
            p.file_resume(ToOperator, 1, 61),
            Verdict::Drop(DropReason::TransferMisuse)
        );
        assert_eq!(p.file_resume(ToOperator, 2, 0), Verdict::Drop(DropReason::NoTransfer));
        assert_eq!(p.file_resume(ToOperator, 1, 40), Verdict::Forward);
        // The sender goes on from byte 40: 60 more bytes fit the offered size, 61 do not.
        assert_eq!(
            p.check_data_in(ToClient, Some(Channel::File), 1, 61, 70),
            Verdict::Drop(DropReason::TransferMisuse)
        );
        assert_eq!(
            p.check_data_in(ToClient, Some(Channel::File), 1, 60, 70),
            Verdict::Forward
        );
    }

    #[test]
    fn a_restored_policy_decides_as_the_original_did() {
        let (mut p, t0) = active(&["view", "control", "files"]);
        p.client_state(PAUSED, PermissionSet::EMPTY);
        assert_eq!(p.file_offer(ToClient, 3, "report.pdf", 100), Verdict::Forward);
        assert_eq!(p.file_answer(ToOperator, 3, true), (Verdict::Forward, None));
        assert_eq!(
            p.check_data_in(ToClient, Some(Channel::File), 3, 40, 50),
            Verdict::Forward
        );
        assert_eq!(p.file_offer(ToOperator, 1, "log.txt", 10), Verdict::Forward);
        let state = p.state();
        assert_eq!(state.transfers.len(), 2);
        let mut q = Policy::restore(state.clone(), CONSENT).unwrap();
        assert_eq!(q.state(), state);
        assert_eq!(q.phase(), Phase::Active);
        assert_eq!(
            q.check_data(ToClient, Some(Channel::Input), 10),
            Verdict::Drop(DropReason::Paused)
        );
        assert_eq!(
            q.check_data_in(ToClient, Some(Channel::File), 3, 60, 70),
            Verdict::Forward
        );
        assert_eq!(
            q.check_data_in(ToClient, Some(Channel::File), 3, 1, 10),
            Verdict::Drop(DropReason::TransferMisuse),
            "the offered size still caps the content"
        );
        assert_eq!(q.file_answer(ToClient, 1, true), (Verdict::Forward, None));
        assert_eq!(q.deadline(), None);
        assert!(q.tick(t0 + TTL * 2).is_none());

        let mut ended = state.clone();
        ended.phase = Phase::Ended(EndReason::OperatorEnded);
        assert!(Policy::restore(ended, CONSENT).is_none());

        // The record held 40 of the 100 bytes; the receiver had written 90 when the node
        // died: its first FileResume after the takeover may name them, once.
        let mut r = Policy::restore(state, CONSENT).unwrap();
        assert_eq!(r.file_resume(ToOperator, 3, 90), Verdict::Forward);
        assert_eq!(
            r.file_resume(ToOperator, 3, 95),
            Verdict::Drop(DropReason::TransferMisuse),
            "past the takeover, no more than was forwarded"
        );
        assert_eq!(
            r.file_resume(ToOperator, 3, 101),
            Verdict::Drop(DropReason::TransferMisuse)
        );
    }

    #[test]
    fn the_grace_window_does_not_hide_the_consent_timeout() {
        let t0 = Instant::now();
        let mut p = Policy::new(perms(&["view"]), PermissionSet::ALL, t0, TTL, CONSENT);
        assert!(p.client_joined(t0));
        let late = t0 + CONSENT - Duration::from_millis(10);
        assert_eq!(p.peer_gone(EndReason::OperatorDisconnected, late), None);
        assert_eq!(p.deadline(), Some(t0 + CONSENT));
        assert_eq!(p.tick(t0 + CONSENT), Some(EndReason::ConsentTimeout));
    }
}
