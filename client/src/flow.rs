//! Screen flow control: at most `max_unacked` frames in flight, a keyframe when one is due,
//! and a guard against a window that never opens again.
//!
//! Sans-IO: the session asks [`ScreenFlow::may_send`] before capturing (skip, never queue),
//! reports what it sent and the operator's [`ScreenFeedback`](tsunagu_proto::pb::ScreenFeedback),
//! and the machine keeps the counts. Acks are cumulative: the operator acks the last frame it
//! consumed, and frames the relay dropped are covered by any later ack.
//!
//! [`RateControl`] follows what gets acknowledged. Frames queue somewhere on the way when a
//! frame's round trip (sent to acknowledged) grows past the shortest seen lately, or when
//! capture ticks keep finding the window full again right after acks opened it (the path
//! takes frames slower than they are made; a retransmission stall, where no ack comes for
//! a while, is not that).
//! Then the bit rate drops below what the acks show gets through; while neither happens, it
//! climbs back towards the cap. Frame rate and frame size share the cut (a quarter of the
//! bit rate: half the frames, each half the size), so a slow link gets fewer and smaller
//! frames rather than a growing queue. An encoder that does not shrink its frames when
//! asked (openh264's screen-content mode hardly does) would still overfill the link: once
//! the link has pushed the rate under the cap, frames much larger than the target's size
//! are paced further apart, so that what is sent fits the target bit rate
//! ([`RateControl::pace_fps`]).
//!
//! Once the link has carried the cap for [`MOTION_AFTER`] with no step down, the encoder is
//! tuned for motion ([`Tuning::Motion`]): a third of the CPU a frame or less and less delay,
//! for frames a few times larger. After a trial of [`MOTION_TRIAL`] it stays so unless its
//! frames take longer from capture to acknowledgement than the screen tuning's did (larger
//! frames crossing a link of a few Mbit/s) or queue; that tunes it for the screen again (the
//! smallest frames) at the rate it had, and doubles the wait before motion is tried on this
//! link. After the trial, a step down tunes it for the screen as well.
//!
//! A LAN (small frames back within [`LAN_RTT`]) is tried with motion after [`MOTION_SOON`]
//! instead of [`MOTION_AFTER`]. Beyond a LAN, keyframes weigh the link
//! ([`RateControl::link_capacity`]): the time a keyframe's round trip takes beyond a small
//! frame's is the time its bytes take to cross. A link they show carrying less than twice
//! the cap is not tried with motion (its larger frames would fill it) until the wait has
//! grown to its longest.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::encode::Tuning;

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
    /// Bit rate and frame rate from the acks; `None`: fixed settings.
    rate: Option<RateControl>,
    /// No frame before this (the frame rate the rate control aims at).
    next_frame_at: Option<Instant>,
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
            rate: None,
            next_frame_at: None,
        }
    }

    /// Lets `rate` set the bit rate and pace the frames at its frame rate (to within half a
    /// frame of the cap, so the session's capture ticks do not round it down).
    pub fn with_rate(mut self, rate: RateControl) -> Self {
        self.rate = Some(rate);
        self
    }

    /// What the encoder should aim at, when the rate follows the acks.
    pub fn target(&self) -> Option<RateTarget> {
        self.rate.as_ref().map(RateControl::target)
    }

    /// The rate control, when there is one.
    pub fn rate(&self) -> Option<&RateControl> {
        self.rate.as_ref()
    }

    /// Frames sent and not yet acknowledged.
    pub fn unacked(&self) -> u64 {
        self.sent - self.acked
    }

    /// Whether a frame may be captured and sent now (the caller captures at once when it
    /// may). Resets a window that has been full for longer than the stall limit (and asks
    /// for a keyframe).
    pub fn may_send(&mut self, now: Instant) -> bool {
        if self.next_frame_at.is_some_and(|t| now < t) {
            return false;
        }
        let stalled = self
            .last_progress
            .is_none_or(|t| now.saturating_duration_since(t) >= self.ack_stall);
        if self.unacked() >= self.max_unacked && !stalled {
            if let Some(rate) = &mut self.rate {
                rate.window_full(now);
            }
            return false;
        }
        if self.unacked() >= self.max_unacked {
            self.acked = self.sent;
            if let Some(rate) = &mut self.rate {
                rate.forget();
            }
            self.keyframe_due = true;
            self.last_progress = Some(now);
        }
        // The caller captures now: the next frame is paced from here, half a frame early at
        // most so the capture ticks of the cap do not round the rate down.
        if let Some(rate) = &self.rate {
            let interval = Duration::from_secs(1) / rate.pace_fps().max(1);
            let slack = Duration::from_secs(1) / (rate.max_fps * 2);
            self.next_frame_at = Some(now + interval.saturating_sub(slack));
        }
        true
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
        self.next_frame_at = None;
        if let Some(rate) = &mut self.rate {
            rate.forget();
        }
        self.keyframe_due = true;
        self.last_progress = None;
    }

    /// Records that frame `seq` of `bytes` went out (`keyframe`: it was one).
    pub fn sent(&mut self, seq: u64, bytes: usize, keyframe: bool, now: Instant) {
        self.sent_frame(seq, bytes, keyframe, now, now);
    }

    /// [`sent`](Self::sent) for a frame whose picture was captured at `captured`: the rate
    /// control weighs each tuning of the encoder by the time from capture to acknowledgement.
    pub fn sent_frame(&mut self, seq: u64, bytes: usize, keyframe: bool, captured: Instant, now: Instant) {
        if let Some(rate) = &mut self.rate {
            rate.sent_frame(seq, bytes, keyframe, captured, now);
        }
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
            if let Some(rate) = &mut self.rate {
                rate.acked(ack_seq, now);
            }
        }
        if keyframe_request {
            self.keyframe_due = true;
        }
    }
}

/// Frames may queue this much longer than the shortest round trip seen before the bit
/// rate is lowered: well under what a user notices, above the jitter of a busy machine.
pub const QUEUE_HIGH: Duration = Duration::from_millis(60);

/// Below this much queueing the bit rate climbs again.
pub const QUEUE_LOW: Duration = Duration::from_millis(25);

/// The lowest bit rate aimed at (unless the cap is lower): a readable, slowly updating
/// desktop.
pub const MIN_BITRATE_BPS: u32 = 250_000;

/// The lowest frame rate aimed at.
pub const MIN_FPS: u32 = 5;

/// How long the shortest round trip is trusted: a route that got slower for good is learnt
/// within this.
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);

/// Ticks finding the window full again after an ack, this many within [`FULL_SPAN`], mean
/// the path is slower than the frames.
const FULL_MARKS: usize = 3;
const FULL_SPAN: Duration = Duration::from_millis(500);

/// The span whose shortest round trip tells the queue that every frame went through.
const RECENT: Duration = Duration::from_millis(300);

/// The span over which the delivery rate is measured.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// Each step up multiplies the bit rate by this (every [`STEP_UP_EVERY`]).
const STEP_UP: f64 = 1.08;
const STEP_UP_EVERY: Duration = Duration::from_millis(200);
/// The step up close to the bit rate at which frames last queued.
const STEP_UP_NEAR: f64 = 1.02;

/// Frames this many times the target's frame size or more are paced by their size
/// ([`RateControl::pace_fps`]).
const OVERSIZE: f64 = 1.5;

/// A step down aims this far below what the acks show gets through.
const STEP_DOWN: f64 = 0.85;
/// The most one step down takes off.
const STEP_DOWN_MOST: f64 = 0.7;

/// The link must have carried the cap this long, with no step down, before the encoder is
/// tuned for motion (a new encoder and a keyframe): a link that has just recovered, or a
/// session that has just begun, stays tuned for the screen.
pub const MOTION_AFTER: Duration = Duration::from_secs(5);

/// How long frames tuned for motion are sent before their time from capture to
/// acknowledgement is compared with the screen tuning's.
pub const MOTION_TRIAL: Duration = Duration::from_secs(2);

/// Frames tuned for motion that reach the operator later than the screen tuning's by more
/// than this end the trial.
const MOTION_SLOWER_BY: Duration = Duration::from_millis(5);

/// A link that could not carry the frames tuned for motion waits twice as long each time
/// before they are tried again, up to this.
const MOTION_AFTER_MOST: Duration = Duration::from_secs(300);

/// A link beyond a LAN whose keyframes show that it carries less than this many times the
/// cap is not tried with frames tuned for motion (they come out a few times larger and
/// would fill it): the wait doubles as if a trial had failed, and once it is
/// [`MOTION_AFTER_MOST`] the trial runs anyway (a link that got faster is found within
/// minutes).
const MOTION_ROOM: f64 = 2.0;

/// A link whose small frames come back within this is a LAN (or the same machine): it is
/// tried with frames tuned for motion after [`MOTION_SOON`] at the cap rather than
/// [`MOTION_AFTER`], and its keyframes do not hold motion back (there, the time the apps
/// take to decode a keyframe is more of its round trip than the link's).
pub const LAN_RTT: Duration = Duration::from_millis(10);

/// See [`LAN_RTT`].
pub const MOTION_SOON: Duration = Duration::from_secs(1);

/// How many keyframes lately acknowledged weigh the link ([`RateControl::link_capacity`]).
const KEYFRAME_SAMPLES: usize = 4;

/// A keyframe weighs the link only if the cap takes at least this long to carry it: a
/// smaller one crosses any link in less time than the apps take to handle it.
const KEYFRAME_WEIGHS: Duration = Duration::from_millis(20);

/// Drops the entries of `queue` (oldest first) seen more than `span` before `now`.
fn expire<T>(queue: &mut VecDeque<T>, now: Instant, span: Duration, at: impl Fn(&T) -> Instant) {
    while queue
        .front()
        .is_some_and(|e| now.saturating_duration_since(at(e)) > span)
    {
        queue.pop_front();
    }
}

/// What the encoder should aim at now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateTarget {
    /// Bits per second.
    pub bitrate_bps: u32,
    /// Frames per second (at most the cap).
    pub fps: u32,
    /// What the encoder is tuned for: [`Tuning::Motion`] once the link has carried the cap
    /// for a while without frames queueing, [`Tuning::Screen`] otherwise.
    pub tuning: Tuning,
}

/// Bit rate and frame rate control from the acknowledgements (see the module's words).
#[derive(Debug)]
pub struct RateControl {
    max_bps: u32,
    /// [`MIN_BITRATE_BPS`], or the cap when that is lower.
    min_bps: u32,
    max_fps: u32,
    bitrate: f64,
    /// Frames sent and not yet acknowledged.
    in_flight: VecDeque<InFlight>,
    /// The shortest round trip lately, and when it was seen.
    min_rtt: Option<(Duration, Instant)>,
    /// Smoothed round trip.
    srtt: Option<Duration>,
    /// Round trips of the last [`RECENT`]: their shortest is what every frame went through.
    recent: VecDeque<(Instant, Duration)>,
    /// Bytes acknowledged so far, and `(when, bytes acknowledged by then)` over the last
    /// [`RATE_WINDOW`].
    delivered: u64,
    deliveries: VecDeque<(Instant, u64)>,
    last_change: Option<Instant>,
    /// The queueing seen at the last step down, while the queue has not emptied since: a
    /// queue that shrinks from there is draining and is left to drain.
    queue_at_step_down: Option<Duration>,
    /// Capture ticks that found the window full again after an ack had opened it, over the
    /// last [`FULL_SPAN`]: acks keep coming and the window keeps filling, so the path takes
    /// frames slower than they are made. (A retransmission stall fills the window once and
    /// no ack comes until it is over: one mark.)
    full_marks: VecDeque<Instant>,
    /// An ack came since the last tick that found the window full.
    acked_since_full: bool,
    /// The bit rate at which frames last began to queue: near it, steps up are small.
    trouble_at_bps: Option<f64>,
    /// The size of the frames lately sent (keyframes aside), smoothed.
    frame_bytes: Option<f64>,
    /// Since when the bit rate has been at the cap, without a step down.
    at_cap_since: Option<Instant>,
    /// How long at the cap before the encoder is tuned for motion.
    motion_after: Duration,
    tuning: Tuning,
    /// When the encoder was last tuned for motion, while the trial is on.
    motion_trial: Option<Instant>,
    /// Capture to acknowledgement, smoothed, of the frames of each tuning (by
    /// `Tuning as usize`).
    latency: [Option<Duration>; 2],
    /// The last [`KEYFRAME_SAMPLES`] keyframes that weigh the link, acknowledged on their
    /// own: `(bytes, round trip)`.
    keyframes: VecDeque<(usize, Duration)>,
}

/// A frame sent and not yet acknowledged.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    seq: u64,
    bytes: usize,
    sent: Instant,
    captured: Instant,
    keyframe: bool,
    /// A keyframe that weighs the link: large enough ([`KEYFRAME_WEIGHS`]) and sent once
    /// small frames had come back (the session's first keyframe waits on the operator
    /// setting up its decoder).
    weighs: bool,
    tuning: Tuning,
}

impl RateControl {
    /// Starts at the cap: most sessions run over links that carry it.
    pub fn new(max_bps: u32, max_fps: u32) -> Self {
        Self {
            max_bps: max_bps.max(1),
            min_bps: max_bps.clamp(1, MIN_BITRATE_BPS),
            max_fps: max_fps.max(1),
            bitrate: f64::from(max_bps.max(1)),
            in_flight: VecDeque::new(),
            min_rtt: None,
            srtt: None,
            recent: VecDeque::new(),
            delivered: 0,
            deliveries: VecDeque::new(),
            last_change: None,
            queue_at_step_down: None,
            full_marks: VecDeque::new(),
            acked_since_full: true,
            trouble_at_bps: None,
            frame_bytes: None,
            at_cap_since: None,
            motion_after: MOTION_AFTER,
            tuning: Tuning::Screen,
            motion_trial: None,
            latency: [None; 2],
            keyframes: VecDeque::new(),
        }
    }

    /// What the encoder should aim at.
    pub fn target(&self) -> RateTarget {
        // Fewer frames and smaller ones in equal measure: a slower link costs some
        // smoothness and some sharpness, and each frame crosses it sooner.
        let share = self.bitrate / f64::from(self.max_bps);
        let fps = (f64::from(self.max_fps) * share.sqrt()).round() as u32;
        RateTarget {
            bitrate_bps: self.bitrate as u32,
            fps: fps.clamp(MIN_FPS.min(self.max_fps), self.max_fps),
            tuning: self.tuning,
        }
    }

    /// Frames per second to send at: the target's, or fewer when the link has pushed the
    /// rate under the cap and the frames come out more than [`OVERSIZE`] times the target's
    /// frame size (the encoder does not shrink them): then as many as fit the target bit
    /// rate, at least [`MIN_FPS`]. An encoder that follows its target makes frames of the
    /// target's size, and is paced at the target's frame rate.
    pub fn pace_fps(&self) -> u32 {
        let target = self.target();
        let Some(frame_bytes) = self.frame_bytes else {
            return target.fps;
        };
        let aimed = f64::from(target.bitrate_bps) / 8.0 / f64::from(target.fps.max(1));
        if self.bitrate >= f64::from(self.max_bps) || frame_bytes <= aimed * OVERSIZE {
            return target.fps;
        }
        let fit = (self.bitrate / 8.0 / frame_bytes).floor() as u32;
        fit.clamp(MIN_FPS.min(target.fps), target.fps)
    }

    /// Frame `seq` of `bytes` went out.
    pub fn sent(&mut self, seq: u64, bytes: usize, keyframe: bool, now: Instant) {
        self.sent_frame(seq, bytes, keyframe, now, now);
    }

    /// Frame `seq` of `bytes`, captured at `captured`, went out at `now`.
    pub fn sent_frame(&mut self, seq: u64, bytes: usize, keyframe: bool, captured: Instant, now: Instant) {
        if !keyframe {
            let b = bytes as f64;
            self.frame_bytes = Some(self.frame_bytes.map_or(b, |f| f * 0.75 + b * 0.25));
        }
        // Bounded by the flow window; the cap guards against a window that never closes.
        if self.in_flight.len() >= 64 {
            self.in_flight.pop_front();
        }
        let weighty = f64::from(self.max_bps) / 8.0 * KEYFRAME_WEIGHS.as_secs_f64();
        self.in_flight.push_back(InFlight {
            seq,
            bytes,
            sent: now,
            captured,
            keyframe,
            weighs: keyframe && self.min_rtt.is_some() && bytes as f64 >= weighty,
            tuning: self.tuning,
        });
    }

    /// Frames in flight are forgotten (the window was reset).
    pub fn forget(&mut self) {
        self.in_flight.clear();
        self.full_marks.clear();
        self.recent.clear();
    }

    /// A capture tick found the window full: a frame was skipped.
    pub fn window_full(&mut self, now: Instant) {
        if self.acked_since_full {
            self.full_marks.push_back(now);
        }
        self.acked_since_full = false;
        expire(&mut self.full_marks, now, FULL_SPAN, |t| *t);
    }

    /// Bytes per second acknowledged over the last [`RATE_WINDOW`], if measurable.
    pub fn delivery_rate(&self) -> Option<f64> {
        let (first, last) = (self.deliveries.front()?, self.deliveries.back()?);
        let span = last.0.saturating_duration_since(first.0);
        (span >= Duration::from_millis(100)).then(|| (last.1 - first.1) as f64 / span.as_secs_f64())
    }

    /// How long every frame lately queued on the way: the shortest round trip of the last
    /// [`RECENT`] minus the shortest of the last 10 s. A queue that stays shows in every
    /// frame's round trip; a retransmission holds up only the frames behind it, and the
    /// frames before it still show the way clear.
    pub fn queueing(&self) -> Option<Duration> {
        let recent = self.recent.iter().map(|r| r.1).min()?;
        Some(recent.saturating_sub(self.min_rtt?.0))
    }

    /// What the link carries, in bits per second, as the keyframes lately acknowledged show
    /// it: a keyframe is many times a frame's size, and the time its round trip took beyond
    /// the shortest round trip of small frames is the time its bytes took to cross. The
    /// largest of the last [`KEYFRAME_SAMPLES`] (a keyframe delayed by anything else only
    /// makes the link look slower). `None` before a keyframe weighed it.
    pub fn link_capacity(&self) -> Option<f64> {
        let (floor, _) = self.min_rtt?;
        self.keyframes
            .iter()
            .map(|&(bytes, rtt)| {
                let crossing = rtt.saturating_sub(floor).max(Duration::from_millis(1));
                bytes as f64 * 8.0 / crossing.as_secs_f64()
            })
            .reduce(f64::max)
    }

    /// Frames up to `ack_seq` were acknowledged at `now`.
    pub fn acked(&mut self, ack_seq: u64, now: Instant) {
        let mut newest = None;
        while let Some(&frame) = self.in_flight.front() {
            if frame.seq > ack_seq {
                break;
            }
            self.in_flight.pop_front();
            self.delivered += frame.bytes as u64;
            newest = Some(frame);
        }
        let Some(InFlight {
            sent: sent_at,
            captured,
            keyframe,
            weighs,
            tuning,
            bytes,
            ..
        }) = newest
        else {
            return;
        };
        self.acked_since_full = true;
        self.deliveries.push_back((now, self.delivered));
        expire(&mut self.deliveries, now, RATE_WINDOW, |d| d.0);
        let rtt = now.saturating_duration_since(sent_at);
        // A keyframe's round trip is mostly its own size: it says nothing of queueing, but
        // tells how fast the link is.
        if keyframe {
            if !weighs {
                return;
            }
            if self.keyframes.len() >= KEYFRAME_SAMPLES {
                self.keyframes.pop_front();
            }
            self.keyframes.push_back((bytes, rtt));
            tracing::debug!(
                bytes,
                rtt_ms = rtt.as_millis() as u64,
                link_bps = self.link_capacity().map(|c| c as u64),
                "keyframe weighed the link"
            );
            return;
        }
        if self
            .min_rtt
            .is_none_or(|(m, at)| rtt <= m || now.saturating_duration_since(at) > MIN_RTT_WINDOW)
        {
            self.min_rtt = Some((rtt, now));
        }
        self.recent.push_back((now, rtt));
        expire(&mut self.recent, now, RECENT, |r| r.0);
        self.srtt = Some(match self.srtt {
            None => rtt,
            Some(s) => (s * 7 + rtt) / 8,
        });
        let latency = now.saturating_duration_since(captured);
        let slot = &mut self.latency[tuning as usize];
        *slot = Some(slot.map_or(latency, |l| (l * 7 + latency) / 8));
        self.adjust(now);
    }

    fn adjust(&mut self, now: Instant) {
        let (Some(queueing), Some(srtt)) = (self.queueing(), self.srtt) else {
            return;
        };
        let round = srtt.max(Duration::from_millis(100));
        let since = self.last_change.map(|t| now.saturating_duration_since(t));
        // Lately the window kept filling again as soon as acks opened it.
        expire(&mut self.full_marks, now, FULL_SPAN, |t| *t);
        let blocked = self.full_marks.len() >= FULL_MARKS;
        let queued = queueing > QUEUE_HIGH && self.queue_at_step_down.is_none_or(|q| queueing >= q);
        if blocked || queued {
            // Once per round trip at most: the acks must first show the last step's effect.
            if since.is_some_and(|s| s < round) {
                return;
            }
            if queued {
                self.queue_at_step_down = Some(queueing);
            }
            if self.motion_trial.is_some() {
                // The trial's larger frames made the queue, not a slower link: the screen
                // tuning's smaller frames go on at the rate they had.
                self.last_change = Some(now);
                self.back_to_screen();
                self.at_cap_since = Some(now);
                tracing::debug!(
                    queueing_ms = queueing.as_millis() as u64,
                    window_full = blocked,
                    "screen encoder tuned for the screen again: its frames queued when tuned for motion"
                );
                return;
            }
            // Down to under what got through, but by at most [`STEP_DOWN_MOST`] at once: an
            // encoder making less than its target (a desktop that compresses well) shows a
            // low delivery rate that says nothing of the link.
            let through = self.delivery_rate().map_or(self.bitrate, |b| b * 8.0);
            self.trouble_at_bps = Some(self.bitrate);
            let down = (self.bitrate.min(through) * STEP_DOWN).max(self.bitrate * STEP_DOWN_MOST);
            self.bitrate = down.max(f64::from(self.min_bps));
            self.last_change = Some(now);
            self.at_cap_since = None;
            if self.tuning == Tuning::Motion {
                // Frames tuned for motion were too much for this link: back to the
                // smaller ones, and a longer wait before they are tried again.
                self.back_to_screen();
            }
            tracing::debug!(
                bitrate = self.bitrate as u64,
                fps = self.target().fps,
                queueing_ms = queueing.as_millis() as u64,
                window_full = blocked,
                delivered_bps = through as u64,
                tuning = ?self.tuning,
                "screen rate down"
            );
        } else if queueing < QUEUE_LOW && self.bitrate < f64::from(self.max_bps) {
            self.queue_at_step_down = None;
            if since.is_some_and(|s| s < STEP_UP_EVERY) {
                return;
            }
            // Close to where frames last queued, the link is probed gently.
            let near_trouble = self.trouble_at_bps.is_some_and(|t| self.bitrate > t * 0.85);
            let step = if near_trouble { STEP_UP_NEAR } else { STEP_UP };
            self.bitrate = (self.bitrate * step).min(f64::from(self.max_bps));
            self.last_change = Some(now);
            tracing::trace!(bitrate = self.bitrate as u64, fps = self.target().fps, "screen rate up");
        }
        if self.bitrate >= f64::from(self.max_bps) {
            self.maybe_motion(now);
        }
        // At the end of the trial, motion stays unless its frames reach the operator later
        // than the screen's did: larger frames on a link of a few Mbit/s can take longer to
        // cross than the encoder saves.
        if let Some(trial) = self.motion_trial {
            if now.saturating_duration_since(trial) >= MOTION_TRIAL {
                self.motion_trial = None;
                if let [Some(screen), Some(motion)] = self.latency {
                    // Ties go to motion: it costs the client less CPU.
                    if motion > screen + MOTION_SLOWER_BY {
                        tracing::debug!(
                            screen_ms = screen.as_millis() as u64,
                            motion_ms = motion.as_millis() as u64,
                            "screen encoder tuned for the screen again: its frames arrive sooner"
                        );
                        self.back_to_screen();
                        self.at_cap_since = Some(now);
                    }
                }
            }
        }
    }

    /// At the cap: tunes the encoder for motion once the link has carried the cap long
    /// enough, unless its keyframes show it has too little room for the larger frames.
    fn maybe_motion(&mut self, now: Instant) {
        let since = *self.at_cap_since.get_or_insert(now);
        if self.tuning != Tuning::Screen {
            return;
        }
        let capacity = self.link_capacity();
        let room = capacity.map(|c| c / f64::from(self.max_bps));
        let lan = self.min_rtt.is_some_and(|(floor, _)| floor <= LAN_RTT);
        let cramped = !lan && room.is_some_and(|r| r < MOTION_ROOM);
        let wait = if self.motion_after == MOTION_AFTER && lan {
            MOTION_SOON
        } else {
            self.motion_after
        };
        if now.saturating_duration_since(since) < wait {
            return;
        }
        if cramped && self.motion_after < MOTION_AFTER_MOST {
            self.wait_longer();
            self.at_cap_since = Some(now);
            tracing::debug!(
                link_bps = capacity.unwrap_or_default() as u64,
                next_s = self.motion_after.as_secs(),
                "screen encoder stays tuned for the screen: the link carries less than twice the cap"
            );
            return;
        }
        self.tuning = Tuning::Motion;
        self.motion_trial = Some(now);
        self.latency[Tuning::Motion as usize] = None;
        tracing::debug!(
            after_ms = wait.as_millis() as u64,
            link_bps = capacity.map(|c| c as u64),
            "screen encoder tuned for motion: the link has room"
        );
    }

    /// Tunes the encoder for the screen again after motion did not fit the link; motion is
    /// tried again after twice the wait.
    fn back_to_screen(&mut self) {
        self.tuning = Tuning::Screen;
        self.motion_trial = None;
        self.wait_longer();
    }

    /// Twice the wait before motion is tried again on this link, up to
    /// [`MOTION_AFTER_MOST`].
    fn wait_longer(&mut self) {
        self.motion_after = (self.motion_after * 2).min(MOTION_AFTER_MOST);
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
            f.sent(seq, 0, seq == 1, t0);
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
            f.sent(seq, 0, false, t0);
        }
        f.feedback(3, false, t0);
        assert_eq!(f.unacked(), 0);
    }

    #[test]
    fn acks_beyond_what_was_sent_are_ignored() {
        let t0 = Instant::now();
        let mut f = ScreenFlow::new(3, 2000 * MS);
        f.sent(1, 0, true, t0);
        f.feedback(1000, false, t0);
        assert_eq!(f.unacked(), 1);
    }

    #[test]
    fn keyframe_request_is_remembered_until_a_keyframe_goes_out() {
        let t0 = Instant::now();
        let mut f = ScreenFlow::new(3, 2000 * MS);
        f.sent(1, 0, true, t0);
        f.feedback(1, true, t0);
        assert!(f.keyframe_due());
        f.sent(2, 0, false, t0);
        assert!(f.keyframe_due());
        f.sent(3, 0, true, t0);
        assert!(!f.keyframe_due());
    }

    #[test]
    fn a_stalled_window_resets_with_a_keyframe() {
        let t0 = Instant::now();
        let mut f = ScreenFlow::new(2, 2000 * MS);
        f.sent(1, 0, true, t0);
        f.sent(2, 0, false, t0);
        assert!(!f.may_send(t0 + 1999 * MS));
        assert!(f.may_send(t0 + 2000 * MS));
        assert!(f.keyframe_due());
        assert_eq!(f.unacked(), 0);
    }

    /// A link of `rate` bytes/s with `base` round trip: a frame's ack comes back after the
    /// frames ahead of it and itself have crossed the bottleneck.
    struct Bottleneck {
        rate: f64,
        base: Duration,
        free_at: Instant,
        /// Every this many frames one is lost and resent after this long, and the frames
        /// behind it wait for it (TCP delivers in order).
        stall: Option<(u32, Duration)>,
        frames: u32,
    }

    impl Bottleneck {
        fn new(rate_bps: f64, base: Duration, at: Instant) -> Self {
            Self {
                rate: rate_bps / 8.0,
                base,
                free_at: at,
                stall: None,
                frames: 0,
            }
        }

        fn ack_at(&mut self, bytes: usize, sent: Instant) -> Instant {
            let start = self.free_at.max(sent);
            self.free_at = start + Duration::from_secs_f64(bytes as f64 / self.rate);
            self.frames += 1;
            if let Some((every, pause)) = self.stall {
                if self.frames.is_multiple_of(every) {
                    self.free_at += pause;
                }
            }
            self.free_at + self.base
        }
    }

    /// The desktop's flow: three frames in flight, 4 Mbit/s and 30 frames/s at most.
    fn desktop_flow() -> ScreenFlow {
        ScreenFlow::new(3, 2000 * MS).with_rate(RateControl::new(4_000_000, 30))
    }

    /// What a simulated run ended with.
    struct Run {
        target: RateTarget,
        /// Mean bit rate aimed at over the run's second half.
        mean_bps: f64,
        /// The 95th percentile of the frames' round trips over the run's second half.
        p95_rtt: Duration,
    }

    /// The session's loop against a bottleneck: a capture tick at the frame-rate cap, a
    /// frame whenever the flow allows, sized by the target bit rate at the target frame rate;
    /// acks as the link delivers them.
    fn run(f: &mut ScreenFlow, cap_fps: u32, link: &mut Bottleneck, t0: Instant, seconds: u32) -> Run {
        run_sized(f, cap_fps, link, t0, seconds, |t| (t.bitrate_bps / 8 / t.fps) as usize)
    }

    /// [`run`] with frames of the size `size` gives for the target (an encoder that does
    /// or does not follow it).
    fn run_sized(
        f: &mut ScreenFlow,
        cap_fps: u32,
        link: &mut Bottleneck,
        t0: Instant,
        seconds: u32,
        size: impl Fn(RateTarget) -> usize,
    ) -> Run {
        let tick = Duration::from_secs(1) / cap_fps;
        let mut now = t0;
        let mut pending: VecDeque<(u64, Instant, Instant)> = VecDeque::new();
        let end = t0 + Duration::from_secs(seconds.into());
        let half = t0 + Duration::from_secs(seconds.into()) / 2;
        let (mut sum_bps, mut ticks, mut rtts) = (0.0, 0u32, Vec::new());
        while now < end {
            while let Some(&(seq, sent, at)) = pending.front() {
                if at > now {
                    break;
                }
                pending.pop_front();
                f.feedback(seq, false, at);
                if sent >= half {
                    rtts.push(at - sent);
                }
            }
            if f.may_send(now) {
                let bytes = size(f.target().unwrap());
                let seq = f.sent + 1;
                f.sent(seq, bytes, false, now);
                pending.push_back((seq, now, link.ack_at(bytes, now)));
            }
            if now >= half {
                sum_bps += f64::from(f.target().unwrap().bitrate_bps);
                ticks += 1;
            }
            now += tick;
        }
        rtts.sort_unstable();
        Run {
            target: f.target().unwrap(),
            mean_bps: sum_bps / f64::from(ticks.max(1)),
            p95_rtt: rtts.get(rtts.len() * 95 / 100).copied().unwrap_or_default(),
        }
    }

    #[test]
    fn a_slow_link_brings_the_rate_under_what_it_carries_and_keeps_the_queue_short() {
        let t0 = Instant::now();
        // 4 Mbit/s wanted, 2.5 Mbit/s carried, 40 ms round trip.
        let mut f = desktop_flow();
        let mut link = Bottleneck::new(2_500_000.0, 40 * MS, t0);
        let run = run(&mut f, 30, &mut link, t0, 30);
        assert!(
            run.mean_bps < 2_600_000.0 && run.mean_bps > 1_500_000.0,
            "aims at {} bit/s on average",
            run.mean_bps
        );
        assert!(run.target.fps < 30, "fewer frames on a slow link: {:?}", run.target);
        // A frame of the cap's size alone takes 53 ms to cross; the window's three frames
        // queued would be 160 ms on top of the 40.
        assert!(run.p95_rtt < 130 * MS, "p95 round trip {:?}", run.p95_rtt);
    }

    #[test]
    fn a_fast_link_keeps_the_cap_and_a_link_that_recovers_is_used_again() {
        let t0 = Instant::now();
        let mut f = ScreenFlow::new(3, 2000 * MS).with_rate(RateControl::new(4_000_000, 60));
        let mut fast = Bottleneck::new(100e6, MS, t0);
        let run1 = run(&mut f, 60, &mut fast, t0, 5);
        assert_eq!((run1.target.bitrate_bps, run1.target.fps), (4_000_000, 60));
        let mut slow = Bottleneck::new(1_000_000.0, MS, t0 + Duration::from_secs(5));
        let run2 = run(&mut f, 60, &mut slow, t0 + Duration::from_secs(5), 15);
        assert!(
            run2.mean_bps < 1_100_000.0,
            "aims at {} bit/s on average",
            run2.mean_bps
        );
        let t1 = t0 + Duration::from_secs(20);
        fast.free_at = t1;
        let run3 = run(&mut f, 60, &mut fast, t1, 30);
        assert_eq!(run3.target.bitrate_bps, 4_000_000, "back to the cap: {:?}", run3.target);
    }

    #[test]
    fn retransmission_stalls_on_a_fast_link_do_not_cut_the_rate() {
        let t0 = Instant::now();
        let mut f = desktop_flow();
        // 5 Mbit/s, 40 ms; one frame in 30 (one a second) waits 250 ms for a resend.
        let mut link = Bottleneck::new(5_000_000.0, 40 * MS, t0);
        link.stall = Some((30, 250 * MS));
        let run = run(&mut f, 30, &mut link, t0, 30);
        assert!(run.mean_bps > 3_000_000.0, "aims at {} bit/s on average", run.mean_bps);
    }

    #[test]
    fn frames_that_do_not_shrink_are_paced_to_fit_the_link() {
        let t0 = Instant::now();
        // An encoder that makes 28 KB frames whatever it is asked (a video in
        // openh264's screen-content mode), capped at 30 fps and 4 Mbit/s, over 2 Mbit/s and
        // 40 ms: 30 such frames a second would be 6.7 Mbit/s.
        let mut f = desktop_flow();
        let mut link = Bottleneck::new(2_000_000.0, 40 * MS, t0);
        let early = run_sized(&mut f, 30, &mut link, t0, 6, |_| 28_000);
        // From the third second on (the second half of the first six), each frame crosses
        // a link that is not queued: 112 ms to cross plus 40 ms; three frames queued would
        // be 376 ms.
        assert!(
            early.p95_rtt < 250 * MS,
            "p95 round trip {:?} in seconds 3-6",
            early.p95_rtt
        );
        let pace = f.rate().unwrap().pace_fps();
        assert!((5..=9).contains(&pace), "{pace} frames/s of 28 KB fit 2 Mbit/s");
        // A link that carries it all again: the cap's frame rate comes back.
        let t1 = t0 + Duration::from_secs(6);
        let mut fast = Bottleneck::new(100e6, MS, t1);
        run_sized(&mut f, 30, &mut fast, t1, 20, |_| 28_000);
        assert_eq!(f.rate().unwrap().pace_fps(), 30);
    }

    #[test]
    fn an_encoder_that_follows_its_target_is_paced_at_the_target_frame_rate() {
        let t0 = Instant::now();
        let mut f = desktop_flow();
        let mut link = Bottleneck::new(1_000_000.0, 40 * MS, t0);
        run(&mut f, 30, &mut link, t0, 20);
        let rate = f.rate().unwrap();
        assert!(rate.target().bitrate_bps < 1_100_000, "{:?}", rate.target());
        assert_eq!(rate.pace_fps(), rate.target().fps);
    }

    #[test]
    fn a_link_with_room_gets_frames_tuned_for_motion_and_one_without_goes_back_to_the_screen() {
        let t0 = Instant::now();
        let mut f = desktop_flow();
        // 100 Mbit/s beyond a LAN.
        let mut fast = Bottleneck::new(100e6, 20 * MS, t0);
        // A session starts tuned for the screen, and stays so until the link has carried
        // the cap for MOTION_AFTER.
        run(&mut f, 30, &mut fast, t0, 4);
        assert_eq!(f.target().unwrap().tuning, Tuning::Screen, "4 s into the session");
        let t1 = t0 + Duration::from_secs(4);
        run(&mut f, 30, &mut fast, t1, 4);
        assert_eq!(
            f.target().unwrap().tuning,
            Tuning::Motion,
            "8 s at the cap, the 2 s trial over"
        );
        // The link slows down: the first step down tunes for the screen again.
        let t2 = t1 + Duration::from_secs(4);
        let mut slow = Bottleneck::new(1_000_000.0, 40 * MS, t2);
        let mut now = t2;
        let mut seq = f.sent;
        while f.target().unwrap().tuning == Tuning::Motion && now < t2 + Duration::from_secs(5) {
            if f.may_send(now) {
                seq += 1;
                let bytes = 16_000;
                let acked = slow.ack_at(bytes, now);
                f.sent(seq, bytes, false, now);
                f.feedback(seq, false, acked);
            }
            now += 33 * MS;
        }
        let after = now - t2;
        assert_eq!(
            f.target().unwrap().tuning,
            Tuning::Screen,
            "still motion {after:?} into a slow link"
        );
        assert!(f.target().unwrap().bitrate_bps < 4_000_000);
        assert!(after < Duration::from_secs(1), "{after:?} to step down");
        // The link recovers: motion again only after twice the wait at the cap.
        let t3 = now + Duration::from_secs(1);
        fast.free_at = t3;
        let back = run(&mut f, 30, &mut fast, t3, 8);
        assert_eq!(back.target.bitrate_bps, 4_000_000, "back at the cap");
        assert_eq!(
            back.target.tuning,
            Tuning::Screen,
            "8 s after recovering: the wait doubled to 10 s"
        );
        let t4 = t3 + Duration::from_secs(8);
        run(&mut f, 30, &mut fast, t4, 6);
        assert_eq!(f.target().unwrap().tuning, Tuning::Motion, "14 s after recovering");
    }

    /// Frames of each tuning, `(bytes, encoding time)`, over `link` for `seconds`, with a
    /// keyframe of `key` bytes first and whenever the tuning changes (as the session
    /// sends; `None`: no keyframe, a link whose speed the flow does not know); when each
    /// tuning began, and the lowest bit rate aimed at.
    fn run_tuned(
        f: &mut ScreenFlow,
        link: &mut Bottleneck,
        t0: Instant,
        seconds: u64,
        key: Option<usize>,
        frame: impl Fn(Tuning) -> (usize, Duration),
    ) -> (Vec<(Tuning, Duration)>, u32) {
        let tick = Duration::from_secs(1) / 30;
        let (mut now, mut seq, mut seen) = (t0, f.sent, Vec::<(Tuning, Duration)>::new());
        let mut lowest = u32::MAX;
        let mut pending: VecDeque<(u64, Instant)> = VecDeque::new();
        while now < t0 + Duration::from_secs(seconds) {
            while let Some(&(n, at)) = pending.front() {
                if at > now {
                    break;
                }
                pending.pop_front();
                f.feedback(n, false, at);
            }
            if f.may_send(now) {
                let tuning = f.target().unwrap().tuning;
                lowest = lowest.min(f.target().unwrap().bitrate_bps);
                let changed = seen.last().is_none_or(|s| s.0 != tuning);
                if changed {
                    seen.push((tuning, now - t0));
                }
                let (mut bytes, encoding) = frame(tuning);
                let keyframe = changed && key.is_some();
                if keyframe {
                    bytes = key.unwrap_or(bytes);
                }
                seq += 1;
                // The picture was taken `encoding` before the frame went out.
                f.sent_frame(seq, bytes, keyframe, now, now + encoding);
                pending.push_back((seq, link.ack_at(bytes, now + encoding)));
            }
            now += tick;
        }
        (seen, lowest)
    }

    fn tunings(seen: &[(Tuning, Duration)]) -> Vec<Tuning> {
        seen.iter().map(|s| s.0).collect()
    }

    /// A scrolling page: 2 KB frames taking 15 ms to encode tuned for the screen, 15 KB
    /// taking 5 ms tuned for motion.
    fn scrolling_page(t: Tuning) -> (usize, Duration) {
        match t {
            Tuning::Screen => (2_000, 15 * MS),
            Tuning::Motion => (15_000, 5 * MS),
        }
    }

    /// A 1080p keyframe of a page of text.
    const KEY: Option<usize> = Some(100_000);

    #[test]
    fn motion_stays_where_its_frames_arrive_sooner_and_goes_where_they_arrive_later() {
        // On a LAN the larger frames cross in about a millisecond: motion stays.
        let t0 = Instant::now();
        let mut f = desktop_flow();
        let mut lan = Bottleneck::new(100e6, MS, t0);
        let (seen, _) = run_tuned(&mut f, &mut lan, t0, 30, KEY, scrolling_page);
        assert_eq!(tunings(&seen), [Tuning::Screen, Tuning::Motion], "on a LAN");
        // Over 10 Mbit/s and 40 ms (room for twice the cap) frames of 24 KB tuned for
        // motion take 19 ms to cross, more than the encoder saves: after the trial it is the
        // screen again, and the next trial comes after twice the wait (5 s, 2 s of trial,
        // 10 s, 2 s, 20 s: three trials in 50 s).
        let page = |t| match t {
            Tuning::Screen => (2_000, 15 * MS),
            Tuning::Motion => (24_000, 5 * MS),
        };
        let mut f = desktop_flow();
        let mut wan = Bottleneck::new(10e6, 40 * MS, t0);
        let (seen, _) = run_tuned(&mut f, &mut wan, t0, 50, KEY, page);
        assert_eq!(
            tunings(&seen),
            [
                Tuning::Screen,
                Tuning::Motion,
                Tuning::Screen,
                Tuning::Motion,
                Tuning::Screen,
                Tuning::Motion,
                Tuning::Screen
            ],
            "over 10 Mbit/s: {seen:?}"
        );
        assert_eq!(
            f.target().unwrap().bitrate_bps,
            4_000_000,
            "the link carried the cap all along"
        );
    }

    #[test]
    fn a_link_without_room_for_motion_keeps_the_screen_tuning_and_is_tried_every_few_minutes() {
        // 5 Mbit/s and 40 ms. The session's first keyframe does not weigh the link (the
        // operator is setting up); the first trial's keyframe does: under twice the 4 Mbit/s
        // cap, so after that trial the larger frames are not tried at 17, 37, 77, 157 and 317
        // s; once the wait has grown to 5 minutes they are, at about 617 s (a link that got
        // faster is found).
        let t0 = Instant::now();
        let mut f = desktop_flow();
        let mut wan = Bottleneck::new(5e6, 40 * MS, t0);
        let (seen, _) = run_tuned(&mut f, &mut wan, t0, 600, KEY, scrolling_page);
        assert_eq!(
            tunings(&seen),
            [Tuning::Screen, Tuning::Motion, Tuning::Screen],
            "ten minutes over 5 Mbit/s: {seen:?}"
        );
        assert!(seen[1].1 < 6 * MOTION_SOON, "the first trial at {:?}", seen[1].1);
        let capacity = f.rate().unwrap().link_capacity().unwrap();
        assert!(
            (4e6..=5.5e6).contains(&capacity),
            "the keyframe shows {capacity} bit/s for a 5 Mbit/s link"
        );
        let t1 = t0 + Duration::from_secs(600);
        let (seen, _) = run_tuned(&mut f, &mut wan, t1, 30, KEY, scrolling_page);
        let motion_at = seen.iter().find(|s| s.0 == Tuning::Motion).map(|s| s.1);
        assert!(
            motion_at.is_some_and(|at| (Duration::from_secs(10)..Duration::from_secs(25)).contains(&at)),
            "tried again {motion_at:?} after the tenth minute: {seen:?}"
        );
        assert_eq!(seen.last().unwrap().0, Tuning::Screen, "and the trial ended: {seen:?}");
        // Keyframes too small to weigh the link (a plain desktop's) leave the trials at
        // 5, 17 and 39 s.
        let mut f = desktop_flow();
        let mut wan = Bottleneck::new(5e6, 40 * MS, t0);
        let (seen, _) = run_tuned(&mut f, &mut wan, t0, 50, Some(8_000), scrolling_page);
        assert_eq!(f.rate().unwrap().link_capacity(), None);
        assert_eq!(seen.iter().filter(|s| s.0 == Tuning::Motion).count(), 3, "{seen:?}");
    }

    #[test]
    fn a_lan_is_tuned_for_motion_within_seconds_and_a_wan_after_the_usual_wait() {
        let t0 = Instant::now();
        let motion_at = |rate: f64, rtt: Duration, key: Option<usize>| {
            let mut f = desktop_flow();
            let mut link = Bottleneck::new(rate, rtt, t0);
            let (seen, _) = run_tuned(&mut f, &mut link, t0, 10, key, scrolling_page);
            let at = seen.iter().find(|s| s.0 == Tuning::Motion).map(|s| s.1);
            (at, f.rate().unwrap().link_capacity())
        };
        let soon = MOTION_SOON..MOTION_SOON * 2;
        let usual = MOTION_AFTER..MOTION_AFTER + MOTION_SOON;
        // 100 Mbit/s and 1 ms: a LAN.
        let (lan, capacity) = motion_at(100e6, MS, KEY);
        assert!(lan.is_some_and(|at| soon.contains(&at)), "motion at {lan:?} on a LAN");
        assert!(
            capacity.is_some_and(|c| c > 50e6),
            "{capacity:?} bit/s shown by the keyframe of motion on a LAN"
        );
        // Without keyframes to weigh it, too.
        let (lan, _) = motion_at(100e6, MS, None);
        assert!(lan.is_some_and(|at| soon.contains(&at)), "motion at {lan:?} on a LAN");
        // 100 Mbit/s and 40 ms, 20 Mbit/s and 20 ms: beyond a LAN, the usual wait.
        for (rate, rtt) in [(100e6, 40 * MS), (20e6, 20 * MS)] {
            let (wan, _) = motion_at(rate, rtt, KEY);
            assert!(
                wan.is_some_and(|at| usual.contains(&at)),
                "motion at {wan:?} over {rate} bit/s and {rtt:?}"
            );
        }
    }

    #[test]
    fn a_link_that_carries_the_screen_but_not_motion_keeps_its_rate_after_the_trial() {
        // 3 Mbit/s and 40 ms: 2 KB frames at 30 a second fit easily, 15 KB ones (3.6
        // Mbit/s) queue. No keyframe weighed the link (acknowledged together with later
        // frames), so the trial comes after the usual wait.
        let t0 = Instant::now();
        let mut f = desktop_flow();
        let mut link = Bottleneck::new(3e6, 40 * MS, t0);
        let (seen, lowest) = run_tuned(&mut f, &mut link, t0, 9, None, scrolling_page);
        assert_eq!(tunings(&seen), [Tuning::Screen, Tuning::Motion, Tuning::Screen]);
        assert_eq!(
            lowest, 4_000_000,
            "the rate stayed at the cap through the trial and after"
        );
    }

    #[test]
    fn a_cap_below_the_floor_is_kept() {
        let t0 = Instant::now();
        let mut f = ScreenFlow::new(3, 2000 * MS).with_rate(RateControl::new(100_000, 15));
        let mut link = Bottleneck::new(80_000.0, 40 * MS, t0);
        let run = run(&mut f, 15, &mut link, t0, 10);
        assert!(run.target.bitrate_bps <= 100_000, "{:?}", run.target);
    }

    #[test]
    fn keyframes_and_unknown_acks_do_not_move_the_rate() {
        let t0 = Instant::now();
        let mut rc = RateControl::new(4_000_000, 30);
        rc.sent(1, 300_000, true, t0);
        rc.acked(1, t0 + 600 * MS);
        rc.acked(99, t0 + 700 * MS);
        assert_eq!(rc.target().bitrate_bps, 4_000_000);
        assert_eq!(rc.queueing(), None);
    }
}
