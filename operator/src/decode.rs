//! H.264 decoding of the client's screen with openh264 (built from source), plus the
//! bookkeeping the operator owes the client: detect gaps in the screen sequence (the relay
//! drops the oldest frames when we fall behind), ask for a keyframe, skip undecodable delta
//! frames until one arrives, and ack every frame consumed.

use std::time::{Duration, Instant};

use openh264::decoder::Decoder;
use openh264::formats::YUVSource;

/// Do not repeat a keyframe request sooner than this while waiting for the keyframe: one
/// round trip plus an encode, with margin.
pub const KEYFRAME_RETRY: Duration = Duration::from_millis(500);

/// A decoded picture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picture {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
}

/// What became of one screen frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameResult {
    /// Decoded; the picture is now [`ScreenDecoder::rgb`].
    Decoded(Picture),
    /// Skipped: a delta frame while waiting for a keyframe.
    Skipped,
    /// The decoder rejected it (a keyframe will be requested).
    Failed(String),
    /// The decoder took it but produced no picture yet.
    NoPicture,
}

/// What to tell the client after one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feedback {
    /// Cumulative ack: the last frame consumed.
    pub ack_seq: u64,
    /// Ask for a keyframe.
    pub keyframe_request: bool,
}

/// Decodes the screen stream and tracks sequence gaps.
pub struct ScreenDecoder {
    decoder: Decoder,
    last_seq: Option<u64>,
    awaiting_keyframe: bool,
    last_request: Option<Instant>,
    rgb: Vec<u8>,
    size: (usize, usize),
}

impl ScreenDecoder {
    /// A decoder waiting for its first keyframe.
    pub fn new() -> Result<Self, String> {
        Ok(Self {
            decoder: Decoder::new().map_err(|e| e.to_string())?,
            last_seq: None,
            awaiting_keyframe: true,
            last_request: None,
            rgb: Vec::new(),
            size: (0, 0),
        })
    }

    /// The last decoded picture as packed RGB, with its size (empty before the first).
    pub fn rgb(&self) -> (&[u8], usize, usize) {
        (&self.rgb, self.size.0, self.size.1)
    }

    /// The RGB colour at (`x`, `y`) of the last decoded picture.
    pub fn pixel(&self, x: usize, y: usize) -> Option<[u8; 3]> {
        let (w, h) = self.size;
        if x >= w || y >= h {
            return None;
        }
        let i = (y * w + x) * 3;
        Some([self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]])
    }

    /// Handles screen frame `seq` carrying `h264` (`keyframe` as the client flagged it) at
    /// `now`; returns what happened and the feedback to send.
    pub fn frame(&mut self, seq: u64, keyframe: bool, h264: &[u8], now: Instant) -> (FrameResult, Feedback) {
        if let Some(last) = self.last_seq {
            // Checked: the client picks the numbers, and nothing follows `u64::MAX`.
            let expected = last.checked_add(1);
            if expected != Some(seq) {
                tracing::debug!(?expected, got = seq, "gap in the screen stream");
                self.lose_sync();
            }
        }
        self.last_seq = Some(seq.max(self.last_seq.unwrap_or(0)));
        let result = if self.awaiting_keyframe && !keyframe {
            FrameResult::Skipped
        } else {
            match self.decoder.decode(h264) {
                Ok(Some(yuv)) => {
                    let (w, h) = yuv.dimensions();
                    self.rgb.resize(w * h * 3, 0);
                    yuv.write_rgb8(&mut self.rgb);
                    self.size = (w, h);
                    self.awaiting_keyframe = false;
                    self.last_request = None;
                    FrameResult::Decoded(Picture { width: w, height: h })
                }
                Ok(None) => FrameResult::NoPicture,
                Err(e) => {
                    self.lose_sync();
                    FrameResult::Failed(e.to_string())
                }
            }
        };
        let keyframe_request = self.awaiting_keyframe
            && self
                .last_request
                .is_none_or(|t| now.saturating_duration_since(t) >= KEYFRAME_RETRY);
        if keyframe_request {
            self.last_request = Some(now);
        }
        (
            result,
            Feedback {
                ack_seq: seq,
                keyframe_request,
            },
        )
    }

    /// Wants a keyframe now (the `request_keyframe` command, or a lost frame).
    pub fn lose_sync(&mut self) {
        if !self.awaiting_keyframe {
            self.last_request = None;
        }
        self.awaiting_keyframe = true;
    }

    /// Forces the next feedback to carry a keyframe request (user asked explicitly).
    pub fn request_now(&mut self) {
        self.awaiting_keyframe = true;
        self.last_request = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openh264::encoder::Encoder;
    use openh264::formats::{RgbSliceU8, YUVBuffer};

    /// Flat colours the test encodes, and how far decoded values may stray.
    const RED: [u8; 3] = [220, 30, 30];
    const BLUE: [u8; 3] = [30, 30, 220];
    const TOLERANCE: i32 = 40;

    /// Frames with a red left half and a blue right half; a white stripe moves so each
    /// frame differs.
    fn frames(n: usize, w: usize, h: usize) -> Vec<(Vec<u8>, bool)> {
        let mut enc = Encoder::new().unwrap();
        (0..n)
            .map(|i| {
                let mut rgb = vec![0u8; w * h * 3];
                for y in 0..h {
                    for x in 0..w {
                        let c = if y >= h - 8 && x / 8 == i % (w / 8) {
                            [255; 3]
                        } else if x < w / 2 {
                            RED
                        } else {
                            BLUE
                        };
                        rgb[(y * w + x) * 3..][..3].copy_from_slice(&c);
                    }
                }
                let yuv = YUVBuffer::from_rgb8_source(RgbSliceU8::new(&rgb, (w, h)));
                if i == 5 {
                    enc.force_intra_frame();
                }
                let out = enc.encode(&yuv).unwrap();
                let key = matches!(
                    out.frame_type(),
                    openh264::encoder::FrameType::IDR | openh264::encoder::FrameType::I
                );
                (out.to_vec(), key)
            })
            .collect()
    }

    fn close(a: [u8; 3], b: [u8; 3]) -> bool {
        a.iter().zip(b).all(|(x, y)| (*x as i32 - y as i32).abs() <= TOLERANCE)
    }

    #[test]
    fn decodes_in_order_frames_and_acks_each() {
        let (w, h) = (128, 64);
        let mut d = ScreenDecoder::new().unwrap();
        let t = Instant::now();
        for (i, (bytes, key)) in frames(4, w, h).into_iter().enumerate() {
            let seq = i as u64 + 1;
            let (result, fb) = d.frame(seq, key, &bytes, t);
            assert_eq!(result, FrameResult::Decoded(Picture { width: w, height: h }));
            assert_eq!(
                fb,
                Feedback {
                    ack_seq: seq,
                    keyframe_request: false
                }
            );
        }
        assert!(close(d.pixel(10, 10).unwrap(), RED), "{:?}", d.pixel(10, 10));
        assert!(close(d.pixel(100, 10).unwrap(), BLUE), "{:?}", d.pixel(100, 10));
        assert_eq!(d.pixel(w, 0), None);
    }

    #[test]
    fn a_gap_asks_for_a_keyframe_and_skips_deltas_until_it_comes() {
        let (w, h) = (128, 64);
        let stream = frames(7, w, h);
        let mut d = ScreenDecoder::new().unwrap();
        let t = Instant::now();
        let (r, _) = d.frame(1, stream[0].1, &stream[0].0, t);
        assert!(matches!(r, FrameResult::Decoded(_)));
        // Frames 2 and 3 were dropped by the relay.
        let (r, fb) = d.frame(4, stream[3].1, &stream[3].0, t);
        assert_eq!(r, FrameResult::Skipped);
        assert_eq!(
            fb,
            Feedback {
                ack_seq: 4,
                keyframe_request: true
            }
        );
        let (r, fb) = d.frame(5, stream[4].1, &stream[4].0, t + Duration::from_millis(10));
        assert_eq!(r, FrameResult::Skipped);
        assert!(!fb.keyframe_request, "not repeated within the retry interval");
        assert!(stream[5].1, "frame 6 was forced to be a keyframe");
        let (r, fb) = d.frame(6, stream[5].1, &stream[5].0, t + Duration::from_millis(20));
        assert!(matches!(r, FrameResult::Decoded(_)));
        assert!(!fb.keyframe_request);
        assert!(close(d.pixel(10, 10).unwrap(), RED));
    }

    #[test]
    fn the_largest_sequence_numbers_are_gaps_not_overflows() {
        let stream = frames(3, 64, 32);
        let mut d = ScreenDecoder::new().unwrap();
        let t = Instant::now();
        let (r, fb) = d.frame(u64::MAX - 1, stream[0].1, &stream[0].0, t);
        assert!(matches!(r, FrameResult::Decoded(_)), "{r:?}");
        assert_eq!(fb.ack_seq, u64::MAX - 1);
        let (r, fb) = d.frame(u64::MAX, stream[1].1, &stream[1].0, t);
        assert!(
            matches!(r, FrameResult::Decoded(_)),
            "in order up to the last number: {r:?}"
        );
        assert!(!fb.keyframe_request);
        // Nothing follows u64::MAX: a repeat or a wrap is a gap, and a keyframe is asked for.
        let (r, fb) = d.frame(u64::MAX, stream[2].1, &stream[2].0, t);
        assert_eq!(r, FrameResult::Skipped);
        assert!(fb.keyframe_request);
        let (r, fb) = d.frame(0, false, &[], t + KEYFRAME_RETRY);
        assert_eq!(r, FrameResult::Skipped);
        assert_eq!(fb.ack_seq, 0);
    }

    #[test]
    fn the_first_frame_must_be_a_keyframe() {
        let stream = frames(2, 64, 32);
        let mut d = ScreenDecoder::new().unwrap();
        let (r, fb) = d.frame(2, stream[1].1, &stream[1].0, Instant::now());
        assert_eq!(r, FrameResult::Skipped);
        assert!(fb.keyframe_request);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut d = ScreenDecoder::new().unwrap();
        let (r, fb) = d.frame(1, true, &[0, 0, 0, 1, 0x65, 1, 2, 3, 4, 5], Instant::now());
        assert!(matches!(r, FrameResult::Failed(_) | FrameResult::NoPicture), "{r:?}");
        assert_eq!(fb.ack_seq, 1);
    }
}
