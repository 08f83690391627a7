//! The screen worker: a thread that captures and encodes on request, so the session loop
//! never blocks on a 1080p capture or an encoder run and keeps answering pings and input.
//!
//! The session asks for one shot at a time ([`ScreenWorker::request`]) when the frame-rate
//! tick fires, the stream runs and the flow-control window has room; the worker answers with
//! a [`Shot`]. One request in flight at most ([`ShotGate`]): a tick that comes while the
//! worker is busy is taken as soon as it answers, and later ones are skipped, never queued.
//! An unchanged screen is answered with [`Shot::Unchanged`] and nothing is
//! encoded or sent, unless a keyframe is due.

use std::sync::mpsc as std_mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use crate::capture::Capturer;
use crate::encode::{EncodedFrame, ScreenEncoder, Tuning};
use crate::flow::RateTarget;
use crate::picture::Picture;

/// What the session asks the worker.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShotRequest {
    /// The frame must be a keyframe (and is sent even if the screen did not change).
    pub force_keyframe: bool,
    /// The bit rate and frame rate to aim at from now on; `None`: as before.
    pub rate: Option<RateTarget>,
}

/// The worker's answer.
#[derive(Debug)]
pub enum Shot {
    /// A changed picture, encoded.
    Frame {
        /// The access unit.
        encoded: EncodedFrame,
        /// Picture width.
        width: usize,
        /// Picture height.
        height: usize,
        /// Capture time, microseconds since the Unix epoch (for latency measurement).
        captured_at_us: u64,
    },
    /// The screen is as it was at the last frame: nothing to send.
    Unchanged,
    /// Capture or encoding failed; the session logs it and asks for a keyframe next time.
    Failed(String),
}

/// One shot at a time, at the ticks of the frame-rate cap. A tick that comes while the
/// worker is still busy is taken as soon as it answers: an encoder that needs 22 ms a frame
/// under a 60 frames/s cap (16.7 ms ticks) then makes 45 frames a second, not the 30 that
/// waiting for the next tick would leave. Ticks missed meanwhile count once: they are never
/// queued, and frames never come faster than the ticks.
#[derive(Debug, Default)]
pub struct ShotGate {
    pending: bool,
    missed: bool,
}

impl ShotGate {
    /// A tick came: whether a shot may be asked for now (else the tick is remembered).
    pub fn tick(&mut self) -> bool {
        self.missed |= self.pending;
        !self.pending
    }

    /// A shot was asked for.
    pub fn requested(&mut self) {
        self.pending = true;
        self.missed = false;
    }

    /// The worker answered: whether a tick came meanwhile (then it is taken now).
    pub fn answered(&mut self) -> bool {
        self.pending = false;
        std::mem::take(&mut self.missed)
    }

    /// The worker stopped: nothing is pending any more.
    pub fn stopped(&mut self) {
        *self = Self::default();
    }
}

/// Encoder settings for the worker.
#[derive(Debug, Clone, Copy)]
pub struct EncoderSettings {
    /// Frame-rate cap the encoder's rate control plans for.
    pub fps: u32,
    /// Target bit rate.
    pub bitrate_bps: u32,
}

/// Handle to the worker thread; the thread ends when this is dropped.
pub struct ScreenWorker {
    requests: std_mpsc::Sender<ShotRequest>,
    dimensions: (usize, usize),
    origin: (i32, i32),
    name: &'static str,
}

/// Whether two pictures differ (size or any pixel). A full compare of 8 MB is about a
/// millisecond: far cheaper than encoding a frame that did not change.
pub fn changed(previous: &Picture, current: &Picture) -> bool {
    changed_rows(previous, current).is_some()
}

/// The rows `first..last+1` that differ between two pictures of the same size (`None`: the
/// same picture). A different size counts as every row changed.
pub fn changed_rows(previous: &Picture, current: &Picture) -> Option<(usize, usize)> {
    if previous.width != current.width || previous.height != current.height || previous.stride != current.stride {
        return Some((0, current.height));
    }
    fn row(p: &Picture, y: usize) -> &[u8] {
        &p.bgrx[y * p.stride..(y + 1) * p.stride]
    }
    let first = (0..current.height).find(|&y| row(previous, y) != row(current, y))?;
    let last = (first..current.height)
        .rev()
        .find(|&y| row(previous, y) != row(current, y))
        .unwrap_or(first);
    Some((first, last + 1))
}

/// Captures into `picture`, and encodes it if it differs from `previous` or a keyframe is
/// forced; then keeps it as the new `previous`. The building block of the worker, public for
/// the benchmark.
pub fn shoot(
    capturer: &mut dyn Capturer,
    encoder: &mut Option<ScreenEncoder>,
    settings: EncoderSettings,
    previous: &mut Picture,
    picture: &mut Picture,
    request: ShotRequest,
) -> Shot {
    if let Err(e) = capturer.capture(picture) {
        return Shot::Failed(e.to_string());
    }
    let captured_at_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let rows = changed_rows(previous, picture);
    if rows.is_none() && !request.force_keyframe {
        return Shot::Unchanged;
    }
    let (w, h) = (picture.width, picture.height);
    let mut force = request.force_keyframe;
    let tuning = match (request.rate, encoder.as_ref()) {
        (Some(rate), _) => rate.tuning,
        (None, Some(e)) => e.tuning(),
        (None, None) => Tuning::default(),
    };
    let current = encoder.as_ref().map(|e| (e.dimensions(), e.tuning()));
    if current != Some(((w, h), tuning)) {
        // Another size, or another tuning (a new encoder: openh264 fixes it at start).
        match ScreenEncoder::tuned(w, h, settings.fps as f32, settings.bitrate_bps, tuning) {
            Ok(e) => *encoder = Some(e),
            Err(e) => return Shot::Failed(e.to_string()),
        }
        if current.is_some_and(|(size, was)| size == (w, h) && was != tuning) {
            tracing::info!(?tuning, "screen encoder retuned");
        }
        force = true;
    }
    let Some(enc) = encoder.as_mut() else {
        return Shot::Failed("no encoder".into());
    };
    if let Some(rate) = request.rate {
        // A retune the encoder refuses leaves it at the rate it had: the stream goes on.
        if let Err(e) = enc.set_rate(rate.bitrate_bps, rate.fps as f32) {
            tracing::warn!(error = %e, bitrate = rate.bitrate_bps, fps = rate.fps, "the encoder kept its rate");
        }
    }
    // After a new encoder, everything is converted; otherwise only the rows that changed.
    let result = enc.encode_picture_rows(
        picture,
        force,
        if force && rows.is_none() { Some((0, 0)) } else { rows },
    );
    std::mem::swap(previous, picture);
    match result {
        Ok(encoded) => Shot::Frame {
            encoded,
            width: w,
            height: h,
            captured_at_us,
        },
        Err(e) => Shot::Failed(e.to_string()),
    }
}

impl ScreenWorker {
    /// Starts the worker on `capturer`; answers arrive on the returned receiver.
    pub fn start(
        mut capturer: Box<dyn Capturer>,
        settings: EncoderSettings,
    ) -> std::io::Result<(Self, mpsc::Receiver<Shot>)> {
        let (req_tx, req_rx) = std_mpsc::channel::<ShotRequest>();
        // One answer per request and one request in flight: capacity 2 never blocks.
        let (shot_tx, shot_rx) = mpsc::channel(2);
        let dimensions = capturer.dimensions();
        let origin = capturer.origin();
        let name = capturer.name();
        std::thread::Builder::new().name("screen".into()).spawn(move || {
            let mut encoder: Option<ScreenEncoder> = None;
            let mut previous = Picture::default();
            let mut picture = Picture::default();
            while let Ok(request) = req_rx.recv() {
                let shot = shoot(
                    capturer.as_mut(),
                    &mut encoder,
                    settings,
                    &mut previous,
                    &mut picture,
                    request,
                );
                if shot_tx.blocking_send(shot).is_err() {
                    return;
                }
            }
        })?;
        Ok((
            Self {
                requests: req_tx,
                dimensions,
                origin,
                name,
            },
            shot_rx,
        ))
    }

    /// Asks for one shot. Returns false if the worker is gone.
    pub fn request(&self, request: ShotRequest) -> bool {
        self.requests.send(request).is_ok()
    }

    /// The captured area's size.
    pub fn dimensions(&self) -> (usize, usize) {
        self.dimensions
    }

    /// The captured area's origin on the X screen.
    pub fn origin(&self) -> (i32, i32) {
        self.origin
    }

    /// The capturer's name (`shm`, `xcap`, `synthetic`).
    pub fn name(&self) -> &'static str {
        self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::SyntheticCapturer;
    use std::time::Duration;

    /// Shots made in `run` with ticks every `tick` and a worker taking `work` a shot.
    fn shots_made(tick: Duration, work: Duration, run: Duration) -> u32 {
        let mut gate = ShotGate::default();
        let (mut next_tick, mut done_at, mut now) = (Duration::ZERO, None::<Duration>, Duration::ZERO);
        let mut shots = 0;
        while now < run {
            let mut ask = false;
            if done_at.is_some_and(|d| d <= now) {
                done_at = None;
                ask = gate.answered();
            }
            if next_tick <= now {
                next_tick += tick;
                ask |= gate.tick();
            }
            if ask {
                assert!(done_at.is_none(), "a shot asked for while one is made, at {now:?}");
                gate.requested();
                done_at = Some(now + work);
                shots += 1;
            }
            now += Duration::from_millis(1);
        }
        shots
    }

    #[test]
    fn a_worker_slower_than_the_ticks_starts_again_as_soon_as_it_is_done() {
        let ms = Duration::from_millis;
        // 60 frames/s ticks, 22 ms a shot: 45 a second, not every other tick (30).
        let slow = shots_made(ms(1000) / 60, ms(22), ms(10_000));
        assert!((440..=460).contains(&slow), "{slow} shots in 10 s at 22 ms each");
        // A fast worker makes a shot at every tick and no more.
        let fast = shots_made(ms(50), ms(10), ms(10_000));
        assert_eq!(fast, 200, "ticks every 50 ms for 10 s");
        // Ticks missed during a very slow shot count once.
        let slowest = shots_made(ms(10), ms(95), ms(9_500));
        assert_eq!(slowest, 100, "95 ms shots for 9.5 s");
    }

    #[test]
    fn a_stopped_worker_leaves_no_tick_behind() {
        let mut gate = ShotGate::default();
        assert!(gate.tick());
        gate.requested();
        assert!(!gate.tick(), "one shot at a time");
        gate.stopped();
        assert!(!gate.answered(), "the tick missed before the stop is forgotten");
        assert!(gate.tick());
    }

    /// A capturer that always returns the same picture.
    struct Still(SyntheticCapturer, Option<Picture>);

    impl Capturer for Still {
        fn dimensions(&self) -> (usize, usize) {
            self.0.dimensions()
        }
        fn capture(&mut self, into: &mut Picture) -> Result<(), crate::capture::CaptureError> {
            if self.1.is_none() {
                let mut p = Picture::default();
                self.0.capture(&mut p)?;
                self.1 = Some(p);
            }
            *into = self.1.clone().unwrap_or_default();
            Ok(())
        }
        fn name(&self) -> &'static str {
            "still"
        }
    }

    #[test]
    fn an_unchanged_screen_sends_nothing_unless_a_keyframe_is_due() {
        let mut cap = Still(SyntheticCapturer::new(64, 48), None);
        let settings = EncoderSettings {
            fps: 30,
            bitrate_bps: 1_000_000,
        };
        let (mut enc, mut prev, mut pic) = (None, Picture::default(), Picture::default());
        let plain = ShotRequest::default();
        let first = shoot(&mut cap, &mut enc, settings, &mut prev, &mut pic, plain);
        assert!(
            matches!(first, Shot::Frame { ref encoded, .. } if encoded.keyframe),
            "first frame: keyframe"
        );
        assert!(matches!(
            shoot(&mut cap, &mut enc, settings, &mut prev, &mut pic, plain),
            Shot::Unchanged
        ));
        let forced = shoot(
            &mut cap,
            &mut enc,
            settings,
            &mut prev,
            &mut pic,
            ShotRequest {
                force_keyframe: true,
                ..ShotRequest::default()
            },
        );
        assert!(matches!(forced, Shot::Frame { ref encoded, .. } if encoded.keyframe));
    }

    #[test]
    fn changed_rows_bound_the_difference() {
        let mut a = Picture {
            width: 4,
            height: 10,
            stride: 16,
            bgrx: vec![0; 160],
            captured_at: None,
        };
        let b = a.clone();
        assert_eq!(changed_rows(&a, &b), None);
        a.bgrx[5 * 16 + 3] = 1;
        a.bgrx[7 * 16] = 1;
        assert_eq!(changed_rows(&a, &b), Some((5, 8)));
        let c = Picture {
            width: 2,
            height: 10,
            stride: 8,
            bgrx: vec![0; 80],
            captured_at: None,
        };
        assert_eq!(changed_rows(&a, &c), Some((0, 10)));
    }

    /// The flow tunes the encoder for motion and back: each change is a new encoder whose
    /// first frame is a keyframe, and the operator's decoder goes on decoding the stream.
    #[test]
    fn a_new_tuning_starts_with_a_keyframe_and_the_stream_stays_decodable() {
        let mut cap = SyntheticCapturer::new(320, 180);
        let settings = EncoderSettings {
            fps: 30,
            bitrate_bps: 1_000_000,
        };
        let (mut enc, mut prev, mut pic) = (None, Picture::default(), Picture::default());
        let mut decoder = openh264::decoder::Decoder::new().unwrap();
        let at = |tuning| ShotRequest {
            force_keyframe: false,
            rate: Some(RateTarget {
                bitrate_bps: 1_000_000,
                fps: 30,
                tuning,
            }),
        };
        let plan = [
            (Tuning::Screen, true),
            (Tuning::Screen, false),
            (Tuning::Motion, true),
            (Tuning::Motion, false),
            (Tuning::Motion, false),
            (Tuning::Screen, true),
            (Tuning::Screen, false),
        ];
        for (n, (tuning, keyframe)) in plan.into_iter().enumerate() {
            let Shot::Frame { encoded, .. } = shoot(&mut cap, &mut enc, settings, &mut prev, &mut pic, at(tuning))
            else {
                panic!("frame {n}: the synthetic screen changes every frame");
            };
            assert_eq!(encoded.keyframe, keyframe, "frame {n} ({tuning:?})");
            assert_eq!(enc.as_ref().map(ScreenEncoder::tuning), Some(tuning));
            let picture = decoder.decode(&encoded.h264).unwrap();
            assert!(picture.is_some(), "frame {n} decodes to a picture");
        }
    }

    #[test]
    fn a_changing_screen_is_encoded_every_time() {
        let mut cap = SyntheticCapturer::new(64, 48);
        let settings = EncoderSettings {
            fps: 30,
            bitrate_bps: 1_000_000,
        };
        let (mut enc, mut prev, mut pic) = (None, Picture::default(), Picture::default());
        for _ in 0..3 {
            let shot = shoot(
                &mut cap,
                &mut enc,
                settings,
                &mut prev,
                &mut pic,
                ShotRequest::default(),
            );
            assert!(matches!(shot, Shot::Frame { .. }));
        }
    }
}
