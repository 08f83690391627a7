//! Takeover pause: the local user moving the pointer pauses remote input at once, and
//! control returns after [`DEFAULT_RESUME_AFTER`] without local movement.
//!
//! Sans-IO: the caller feeds pointer observations and injections with their time and
//! calls [`Takeover::poll`]; the machine answers with [`Transition`]s and says when it next
//! needs to be polled. Tests drive it with a fake clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Quiet time after the last local movement before remote control resumes: long enough that
/// a user who grabbed the mouse is not fought over it, short enough that the operator is not
/// left waiting.
pub const DEFAULT_RESUME_AFTER: Duration = Duration::from_secs(3);

/// How long after an injection a pointer observation at the injected position counts as the
/// echo of that injection rather than local movement (the OS reports injected motion back
/// within a few milliseconds).
pub const INJECTION_ECHO_WINDOW: Duration = Duration::from_millis(250);

/// After the user answers the consent screen, pointer movement is still the hand that
/// clicked Allow: it lifts off and drifts for a moment after the click. Observed movement
/// within this time is that click, not someone taking the mouse back; a person's
/// follow-through lasts well under it, and an operator waits no longer than this for control.
pub const CONSENT_CLICK_SETTLE: Duration = Duration::from_millis(1500);

/// Injected positions remembered for echo matching: an operator dragging at 60 events/s
/// produces 15 within the echo window; 64 leaves room for bursts.
pub const RECENT_INJECTIONS: usize = 64;

/// A change of the takeover state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Local movement: remote input must stop now.
    Paused,
    /// No local movement for the resume delay: remote input may go on.
    Resumed,
}

/// The takeover state machine.
#[derive(Debug)]
pub struct Takeover {
    resume_after: Duration,
    /// When the last local movement was seen, while paused.
    paused_since_motion: Option<Instant>,
    /// Recent injected pointer positions and when each was injected (newest last, at most
    /// [`RECENT_INJECTIONS`]): the watcher may see any of them, not just the last.
    recent_injected: VecDeque<((i32, i32), Instant)>,
    /// Observed movement before this instant is not local movement (see
    /// [`Takeover::settle_until`]).
    settle_until: Option<Instant>,
}

impl Takeover {
    /// A machine that resumes `resume_after` after the last local movement.
    pub fn new(resume_after: Duration) -> Self {
        Self {
            resume_after,
            paused_since_motion: None,
            recent_injected: VecDeque::new(),
            settle_until: None,
        }
    }

    /// Whether remote input is paused by takeover now.
    pub fn is_paused(&self) -> bool {
        self.paused_since_motion.is_some()
    }

    /// The local user moved the pointer at `now` (known to be local, e.g. the `local_mouse`
    /// command). Returns `Paused` if this starts a pause.
    pub fn local_motion(&mut self, now: Instant) -> Option<Transition> {
        let was_paused = self.is_paused();
        self.paused_since_motion = Some(now);
        (!was_paused).then_some(Transition::Paused)
    }

    /// The client injected a pointer move to `pos` at `now` on the operator's behalf.
    pub fn injected(&mut self, pos: (i32, i32), now: Instant) {
        if self.recent_injected.len() == RECENT_INJECTIONS {
            self.recent_injected.pop_front();
        }
        self.recent_injected.push_back((pos, now));
    }

    /// Pointer movement observed before `until` does not count as local movement: the user's
    /// own click on the client's window (the consent screen's Allow) and its follow-through.
    /// Explicit [`local_motion`](Self::local_motion) still counts.
    pub fn settle_until(&mut self, until: Instant) {
        self.settle_until = Some(until);
    }

    /// The pointer was observed at `pos` at `now`, cause unknown: it is the echo of our own
    /// injection if it matches a position injected within [`INJECTION_ECHO_WINDOW`] before,
    /// the user's click on our own window while settling, otherwise local movement.
    pub fn pointer_moved(&mut self, pos: (i32, i32), now: Instant) -> Option<Transition> {
        if self.settle_until.is_some_and(|until| now < until) {
            return None;
        }
        while let Some(&(_, at)) = self.recent_injected.front() {
            if now.saturating_duration_since(at) > INJECTION_ECHO_WINDOW {
                self.recent_injected.pop_front();
            } else {
                break;
            }
        }
        if self.recent_injected.iter().any(|&(injected, _)| injected == pos) {
            return None;
        }
        self.local_motion(now)
    }

    /// Advances time: returns `Resumed` once the resume delay has passed without local
    /// movement.
    pub fn poll(&mut self, now: Instant) -> Option<Transition> {
        let last = self.paused_since_motion?;
        if now.saturating_duration_since(last) >= self.resume_after {
            self.paused_since_motion = None;
            return Some(Transition::Resumed);
        }
        None
    }

    /// When [`poll`](Self::poll) should next be called, if a pause is running.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.paused_since_motion.map(|last| last + self.resume_after)
    }
}

impl Default for Takeover {
    fn default() -> Self {
        Self::new(DEFAULT_RESUME_AFTER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn local_motion_pauses_at_once_and_resumes_after_quiet_time() {
        let t0 = Instant::now();
        let mut m = Takeover::new(3000 * MS);
        assert_eq!(m.poll(t0), None);
        assert_eq!(m.local_motion(t0), Some(Transition::Paused));
        assert!(m.is_paused());
        assert_eq!(m.poll(t0 + 2999 * MS), None);
        assert_eq!(m.next_deadline(), Some(t0 + 3000 * MS));
        assert_eq!(m.poll(t0 + 3000 * MS), Some(Transition::Resumed));
        assert!(!m.is_paused());
        assert_eq!(m.poll(t0 + 9000 * MS), None, "resumed only once");
        assert_eq!(m.next_deadline(), None);
    }

    #[test]
    fn further_motion_extends_the_pause_without_a_second_transition() {
        let t0 = Instant::now();
        let mut m = Takeover::new(3000 * MS);
        assert_eq!(m.local_motion(t0), Some(Transition::Paused));
        assert_eq!(m.local_motion(t0 + 2000 * MS), None);
        assert_eq!(m.poll(t0 + 3500 * MS), None, "the second motion restarted the delay");
        assert_eq!(m.poll(t0 + 5000 * MS), Some(Transition::Resumed));
        assert_eq!(
            m.local_motion(t0 + 6000 * MS),
            Some(Transition::Paused),
            "a new pause after resuming"
        );
    }

    #[test]
    fn echo_of_an_injection_is_not_local_motion() {
        let t0 = Instant::now();
        let mut m = Takeover::new(3000 * MS);
        m.injected((10, 20), t0);
        assert_eq!(m.pointer_moved((10, 20), t0 + 5 * MS), None);
        assert!(!m.is_paused());
        assert_eq!(
            m.pointer_moved((11, 20), t0 + 6 * MS),
            Some(Transition::Paused),
            "elsewhere: local"
        );
    }

    #[test]
    fn any_recent_injection_is_an_echo() {
        let t0 = Instant::now();
        let mut m = Takeover::new(3000 * MS);
        for i in 0..10 {
            m.injected((i, i), t0 + i as u32 * MS);
        }
        assert_eq!(m.pointer_moved((3, 3), t0 + 20 * MS), None, "an intermediate position");
        assert_eq!(m.pointer_moved((9, 9), t0 + 20 * MS), None);
        assert!(!m.is_paused());
    }

    #[test]
    fn the_click_on_allow_is_not_local_motion_but_later_movement_is() {
        let t0 = Instant::now();
        let mut m = Takeover::new(3000 * MS);
        m.settle_until(t0 + CONSENT_CLICK_SETTLE);
        assert_eq!(m.pointer_moved((5, 5), t0 + 10 * MS), None, "the hand leaving Allow");
        assert_eq!(m.pointer_moved((9, 7), t0 + CONSENT_CLICK_SETTLE - MS), None);
        assert!(!m.is_paused());
        assert_eq!(
            m.pointer_moved((40, 40), t0 + CONSENT_CLICK_SETTLE),
            Some(Transition::Paused),
            "after the settle time the mouse is the user's again"
        );
    }

    #[test]
    fn settling_does_not_hide_an_explicit_local_motion() {
        let t0 = Instant::now();
        let mut m = Takeover::new(3000 * MS);
        m.settle_until(t0 + CONSENT_CLICK_SETTLE);
        assert_eq!(m.local_motion(t0 + MS), Some(Transition::Paused));
    }

    #[test]
    fn stale_echo_counts_as_local_motion() {
        let t0 = Instant::now();
        let mut m = Takeover::new(3000 * MS);
        m.injected((10, 20), t0);
        assert_eq!(m.pointer_moved((10, 20), t0 + 1000 * MS), Some(Transition::Paused));
    }
}
