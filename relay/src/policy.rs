//! The session policy machine, sans-IO: the rules the relay enforces on every session.
//! Events and time go in; decisions (forward or drop, what to tell the peers, when the
//! next deadline is) come out. The connection code only carries out what this decides.

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToClient,
    ToOperator,
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
}

impl Policy {
    /// A session whose code was issued at `now`, asking for `requested` (clipped to
    /// `allowed`), that expires after `code_ttl` unless a client joins.
    pub fn new(requested: PermissionSet, allowed: PermissionSet, now: Instant, code_ttl: Duration, consent_timeout: Duration) -> Self {
        Self {
            phase: Phase::AwaitingClient,
            asked: requested.intersect(allowed),
            granted: PermissionSet::EMPTY,
            modes: ClientModes::default(),
            counters: Counters::default(),
            code_deadline: now + code_ttl,
            consent_timeout,
            consent_deadline: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
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

    /// The client reported its switches and any permissions it withdraws. Returns whether
    /// anything changed (then both peers are told the new state).
    pub fn client_state(&mut self, modes: ClientModes, revoke: PermissionSet) -> bool {
        if self.phase != Phase::Active {
            return false;
        }
        let before = (self.modes, self.granted);
        if modes.paused && !self.modes.paused {
            self.counters.pauses += 1;
        }
        self.modes = modes;
        self.granted = self.granted.difference(revoke);
        before != (self.modes, self.granted)
    }

    /// Decides whether a data frame of `len` wire bytes on `channel` may pass.
    pub fn check_data(&mut self, direction: Direction, channel: Option<Channel>, len: usize) -> Verdict {
        let verdict = self.decide(direction, channel);
        match verdict {
            Verdict::Forward => match direction {
                Direction::ToClient => self.counters.bytes_to_client += len as u64,
                Direction::ToOperator => self.counters.bytes_to_operator += len as u64,
            },
            Verdict::Drop(_) => self.counters.dropped_frames += 1,
        }
        verdict
    }

    fn decide(&self, direction: Direction, channel: Option<Channel>) -> Verdict {
        use Direction::*;
        use DropReason::*;
        if self.phase != Phase::Active {
            return Verdict::Drop(NoConsent);
        }
        let need = |p: Permission| if self.granted.contains(p) { Verdict::Forward } else { Verdict::Drop(NotGranted) };
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
            (Some(Channel::Screen | Channel::ScreenFeedback | Channel::Input), _) => Verdict::Drop(WrongDirection),
        }
    }

    /// The next moment something happens by itself (code expiry, consent timeout).
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::AwaitingClient => Some(self.code_deadline),
            Phase::AwaitingConsent => self.consent_deadline,
            _ => None,
        }
    }

    /// Applies the passage of time; returns the end reason if the session just ended.
    pub fn tick(&mut self, now: Instant) -> Option<EndReason> {
        let reason = match self.phase {
            Phase::AwaitingClient if now >= self.code_deadline => EndReason::Expired,
            Phase::AwaitingConsent if self.consent_deadline.is_some_and(|d| now >= d) => EndReason::ConsentTimeout,
            _ => return None,
        };
        self.phase = Phase::Ended(reason);
        Some(reason)
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

    fn perms(names: &[&str]) -> PermissionSet {
        PermissionSet::parse_names(names.iter().copied()).unwrap()
    }

    fn active(granted: &[&str]) -> (Policy, Instant) {
        let t0 = Instant::now();
        let mut p = Policy::new(PermissionSet::ALL, PermissionSet::ALL, t0, TTL, CONSENT);
        assert!(p.client_joined(t0));
        assert_eq!(p.consent(perms(granted), false), ConsentOutcome::Granted(perms(granted)));
        (p, t0)
    }

    #[test]
    fn nothing_flows_before_consent() {
        let t0 = Instant::now();
        let mut p = Policy::new(PermissionSet::ALL, PermissionSet::ALL, t0, TTL, CONSENT);
        for ch in [Channel::Screen, Channel::Chat, Channel::File] {
            assert_eq!(p.check_data(ToOperator, Some(ch), 10), Verdict::Drop(DropReason::NoConsent));
        }
        p.client_joined(t0);
        assert_eq!(p.check_data(ToClient, Some(Channel::Input), 10), Verdict::Drop(DropReason::NoConsent));
        assert_eq!(p.counters().dropped_frames, 4);
        assert_eq!(p.counters().bytes_to_client, 0);
    }

    #[test]
    fn grants_are_clipped_to_what_the_admin_allows() {
        let t0 = Instant::now();
        let mut p = Policy::new(PermissionSet::ALL, perms(&["view", "chat"]), t0, TTL, CONSENT);
        assert_eq!(p.asked(), perms(&["view", "chat"]));
        p.client_joined(t0);
        assert_eq!(p.consent(PermissionSet::ALL, false), ConsentOutcome::Granted(perms(&["view", "chat"])));
        assert_eq!(p.check_data(ToClient, Some(Channel::Input), 5), Verdict::Drop(DropReason::NotGranted));
    }

    #[test]
    fn empty_grant_is_a_denial() {
        let t0 = Instant::now();
        let mut p = Policy::new(perms(&["control"]), PermissionSet::ALL, t0, TTL, CONSENT);
        p.client_joined(t0);
        assert_eq!(p.consent(perms(&["view"]), false), ConsentOutcome::Denied);
        assert_eq!(p.phase(), Phase::Ended(EndReason::ConsentDenied));
        assert_eq!(p.check_data(ToOperator, Some(Channel::Screen), 5), Verdict::Drop(DropReason::NoConsent));
    }

    #[test]
    fn view_only_and_pause_drop_input_but_not_screen() {
        let (mut p, _) = active(&["view", "control", "chat"]);
        assert_eq!(p.check_data(ToClient, Some(Channel::Input), 5), Verdict::Forward);
        assert!(p.client_state(ClientModes { paused: true, ..Default::default() }, PermissionSet::EMPTY));
        assert_eq!(p.check_data(ToClient, Some(Channel::Input), 5), Verdict::Drop(DropReason::Paused));
        assert_eq!(p.check_data(ToOperator, Some(Channel::Screen), 5), Verdict::Forward);
        p.client_state(ClientModes::default(), PermissionSet::EMPTY);
        p.client_state(ClientModes { paused: true, ..Default::default() }, PermissionSet::EMPTY);
        assert_eq!(p.counters().pauses, 2);
        p.client_state(ClientModes { view_only: true, ..Default::default() }, PermissionSet::EMPTY);
        assert_eq!(p.check_data(ToClient, Some(Channel::Input), 5), Verdict::Drop(DropReason::ViewOnly));
        p.client_state(ClientModes { chat_only: true, ..Default::default() }, PermissionSet::EMPTY);
        assert_eq!(p.check_data(ToOperator, Some(Channel::Screen), 5), Verdict::Drop(DropReason::ChatOnly));
        assert_eq!(p.check_data(ToOperator, Some(Channel::Chat), 5), Verdict::Forward);
    }

    #[test]
    fn revoked_permissions_stay_revoked() {
        let (mut p, _) = active(&["view", "control"]);
        assert!(p.client_state(ClientModes::default(), perms(&["control"])));
        assert_eq!(p.check_data(ToClient, Some(Channel::Input), 5), Verdict::Drop(DropReason::NotGranted));
        p.client_state(ClientModes::default(), PermissionSet::EMPTY);
        assert_eq!(p.granted(), perms(&["view"]));
    }

    #[test]
    fn channels_only_flow_their_own_way() {
        let (mut p, _) = active(&["view", "control", "chat", "files"]);
        assert_eq!(p.check_data(ToClient, Some(Channel::Screen), 5), Verdict::Drop(DropReason::WrongDirection));
        assert_eq!(p.check_data(ToOperator, Some(Channel::Input), 5), Verdict::Drop(DropReason::WrongDirection));
        assert_eq!(p.check_data(ToOperator, None, 5), Verdict::Drop(DropReason::UnknownChannel));
        assert_eq!(p.check_data(ToClient, Some(Channel::ScreenFeedback), 5), Verdict::Forward);
        assert_eq!(p.check_data(ToOperator, Some(Channel::File), 7), Verdict::Forward);
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
        assert!(!p.client_joined(t0 + TTL + Duration::from_secs(1)), "joining after expiry fails even before the tick");
        let mut p = Policy::new(PermissionSet::ALL, PermissionSet::ALL, t0, TTL, CONSENT);
        p.client_joined(t0 + Duration::from_secs(5));
        assert_eq!(p.deadline(), Some(t0 + Duration::from_secs(65)));
        assert_eq!(p.tick(t0 + Duration::from_secs(65)), Some(EndReason::ConsentTimeout));
        assert_eq!(p.consent(PermissionSet::ALL, false), ConsentOutcome::Unexpected);
    }

    #[test]
    fn end_is_once() {
        let (mut p, _) = active(&["view"]);
        assert!(p.end(EndReason::ClientEnded));
        assert!(!p.end(EndReason::OperatorEnded));
        assert_eq!(p.phase(), Phase::Ended(EndReason::ClientEnded));
    }
}
