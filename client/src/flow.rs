//! Screen flow control: at most `max_unacked` frames in flight, a keyframe when one is due,
//! and a guard against a window that never opens again.
//!
//! Sans-IO: the session asks [`ScreenFlow::may_send`] before capturing (skip, never queue),
//! reports what it sent and the operator's [`ScreenFeedback`](tsunagu_proto::pb::ScreenFeedback),
//! and the machine keeps the counts. Acks are cumulative: the operator acks the last frame it
//! consumed, and frames the relay dropped are covered by any later ack.

use std::time::{Duration, Instant};

/// Default number of frames that may be sent but not yet acknowledged. Three frames at 15 fps
/// is 200 ms of video: enough to keep the link busy, little enough that a slow link drops
/// frames instead of queueing seconds of them.
pub const DEFAULT_MAX_UNACKED: u64 = 3;

/// If the window stays full this long without any ack, the frames in flight are presumed lost
/// (e.g. dropped by the relay while view was withdrawn) and the window is reset with a
/// keyframe. Far above a healthy round trip, far below what a user calls frozen.
pub const DEFAULT_ACK_STALL: Duration = Duration::from_secs(2);

/// The flow-control state for the screen channel.
#[derive(Debug)]
pub struct ScreenFlow {
    max_unacked: u64,
    ack_stall: Duration,
    /// Sequence number of the last frame sent (0: none yet).
    sent: u64,
    /// Highest sequence number acknowledged.
    acked: u64,
    /// When the window last made progress (a send from empty, or an ack).
    last_progress: Option<Instant>,
    keyframe_due: bool,
}

impl ScreenFlow {
    /// A window of `max_unacked` frames (at least 1).
    pub fn new(max_unacked: u64, ack_stall: Duration) -> Self {
        Self {
            max_unacked: max_unacked.max(1),
            ack_stall,
            sent: 0,
            acked: 0,
            last_progress: None,
            keyframe_due: true,
        }
    }

    /// Frames sent and not yet acknowledged.
    pub fn unacked(&self) -> u64 {
        self.sent - self.acked
    }

    /// Whether a frame may be captured and sent now. Resets a window that has been full for
    /// longer than the stall limit (and asks for a keyframe).
    pub fn may_send(&mut self, now: Instant) -> bool {
        if self.unacked() < self.max_unacked {
            return true;
        }
        let stalled = self
            .last_progress
            .is_none_or(|t| now.saturating_duration_since(t) >= self.ack_stall);
        if stalled {
            self.acked = self.sent;
            self.keyframe_due = true;
            self.last_progress = Some(now);
            return true;
        }
        false
    }

    /// Whether the next frame must be a keyframe.
    pub fn keyframe_due(&self) -> bool {
        self.keyframe_due
    }

    /// Asks for a keyframe on the next frame (consent, keyframe request, view re-granted,
    /// resume).
    pub fn request_keyframe(&mut self) {
        self.keyframe_due = true;
    }

    /// Forgets the frames in flight: used when streaming restarts after a stop, since the
    /// relay may have dropped them. Also asks for a keyframe.
    pub fn restart(&mut self) {
        self.acked = self.sent;
        self.keyframe_due = true;
        self.last_progress = None;
    }

    /// Records that frame `seq` went out (`keyframe`: it was one).
    pub fn sent(&mut self, seq: u64, keyframe: bool, now: Instant) {
        if self.unacked() == 0 {
            self.last_progress = Some(now);
        }
        self.sent = seq;
        if keyframe {
            self.keyframe_due = false;
        }
    }

    /// Applies the operator's feedback. Acks beyond what was sent are ignored (a confused or
    /// hostile peer cannot open the window wider).
    pub fn feedback(&mut self, ack_seq: u64, keyframe_request: bool, now: Instant) {
        if ack_seq > self.acked && ack_seq <= self.sent {
            self.acked = ack_seq;
            self.last_progress = Some(now);
        }
        if keyframe_request {
            self.keyframe_due = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn window_limits_frames_in_flight_and_acks_open_it() {
        let t0 = Instant::now();
        let mut f = ScreenFlow::new(3, 2000 * MS);
        assert!(f.keyframe_due(), "the first frame is a keyframe");
        for seq in 1..=3 {
            assert!(f.may_send(t0));
            f.sent(seq, seq == 1, t0);
        }
        assert!(!f.keyframe_due());
        assert!(!f.may_send(t0 + 10 * MS), "three in flight: skip");
        f.feedback(2, false, t0 + 20 * MS);
        assert_eq!(f.unacked(), 1);
        assert!(f.may_send(t0 + 20 * MS));
    }

    #[test]
    fn cumulative_ack_covers_frames_the_relay_dropped() {
        let t0 = Instant::now();
        let mut f = ScreenFlow::new(3, 2000 * MS);
        for seq in 1..=3 {
            f.sent(seq, false, t0);
        }
        f.feedback(3, false, t0);
        assert_eq!(f.unacked(), 0);
    }

    #[test]
    fn acks_beyond_what_was_sent_are_ignored() {
        let t0 = Instant::now();
        let mut f = ScreenFlow::new(3, 2000 * MS);
        f.sent(1, true, t0);
        f.feedback(1000, false, t0);
        assert_eq!(f.unacked(), 1);
    }

    #[test]
    fn keyframe_request_is_remembered_until_a_keyframe_goes_out() {
        let t0 = Instant::now();
        let mut f = ScreenFlow::new(3, 2000 * MS);
        f.sent(1, true, t0);
        f.feedback(1, true, t0);
        assert!(f.keyframe_due());
        f.sent(2, false, t0);
        assert!(f.keyframe_due());
        f.sent(3, true, t0);
        assert!(!f.keyframe_due());
    }

    #[test]
    fn a_stalled_window_resets_with_a_keyframe() {
        let t0 = Instant::now();
        let mut f = ScreenFlow::new(2, 2000 * MS);
        f.sent(1, true, t0);
        f.sent(2, false, t0);
        assert!(!f.may_send(t0 + 1999 * MS));
        assert!(f.may_send(t0 + 2000 * MS));
        assert!(f.keyframe_due());
        assert_eq!(f.unacked(), 0);
    }
}
