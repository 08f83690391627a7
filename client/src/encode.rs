//! H.264 encoding of captured RGB frames with openh264 (built from source, no system
//! library). One call in, one Annex B access unit out.

use openh264::encoder::{BitRate, Encoder, EncoderConfig, FrameRate, FrameType, RateControlMode, UsageType};
use openh264::formats::{RgbSliceU8, YUVBuffer};
use openh264::OpenH264API;

/// Target bit rate: generous for desktop content at the default 640x360 so flat colours
/// survive compression; the frame-rate cap and the unacked window bound the real rate.
pub const DEFAULT_BITRATE_BPS: u32 = 2_000_000;

/// Errors from the encoder.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The frame size is not usable for H.264 4:2:0 (zero or odd).
    #[error("frame size {0}x{1} is not usable: both sides must be even and non-zero")]
    BadSize(usize, usize),
    /// The RGB buffer does not match the frame size.
    #[error("RGB buffer has {got} bytes, {want} expected")]
    BadBuffer {
        /// Bytes expected.
        want: usize,
        /// Bytes given.
        got: usize,
    },
    /// openh264 reported an error.
    #[error("openh264: {0}")]
    Codec(String),
}

/// One encoded access unit.
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    /// Annex B bytes (SPS/PPS included on keyframes).
    pub h264: Vec<u8>,
    /// Whether this is an IDR/I frame a decoder can start from.
    pub keyframe: bool,
}

/// Encodes RGB frames of a fixed size.
pub struct ScreenEncoder {
    encoder: Encoder,
    yuv: YUVBuffer,
    width: usize,
    height: usize,
}

impl ScreenEncoder {
    /// An encoder for `width` x `height` frames paced at `fps`.
    pub fn new(width: usize, height: usize, fps: f32) -> Result<Self, EncodeError> {
        if width == 0 || height == 0 || (width | height) & 1 != 0 {
            return Err(EncodeError::BadSize(width, height));
        }
        let config = EncoderConfig::new()
            .usage_type(UsageType::ScreenContentRealTime)
            .bitrate(BitRate::from_bps(DEFAULT_BITRATE_BPS))
            .max_frame_rate(FrameRate::from_hz(fps))
            .rate_control_mode(RateControlMode::Bitrate)
            // Neither is supported for screen content; openh264 warns and turns them off.
            .adaptive_quantization(false)
            .background_detection(false)
            // Skipping is our job (flow control); the encoder must encode what it is given.
            .skip_frames(false);
        let encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| EncodeError::Codec(e.to_string()))?;
        Ok(Self { encoder, yuv: YUVBuffer::new(width, height), width, height })
    }

    /// Encodes one packed RGB frame; `force_keyframe` makes it an IDR frame.
    pub fn encode(&mut self, rgb: &[u8], force_keyframe: bool) -> Result<EncodedFrame, EncodeError> {
        let want = self.width * self.height * 3;
        if rgb.len() != want {
            return Err(EncodeError::BadBuffer { want, got: rgb.len() });
        }
        self.yuv.read_rgb8(RgbSliceU8::new(rgb, (self.width, self.height)));
        if force_keyframe {
            self.encoder.force_intra_frame();
        }
        let stream = self.encoder.encode(&self.yuv).map_err(|e| EncodeError::Codec(e.to_string()))?;
        let keyframe = matches!(stream.frame_type(), FrameType::IDR | FrameType::I);
        Ok(EncodedFrame { h264: stream.to_vec(), keyframe })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::{expected_colour, SyntheticScreen};
    use openh264::decoder::Decoder;
    use openh264::formats::YUVSource;

    /// Colour distance tolerated after lossy H.264 and two colour-space conversions.
    const TOLERANCE: i32 = 40;

    #[test]
    fn synthetic_frames_round_trip_through_h264() {
        let (w, h) = (320, 180);
        let mut screen = SyntheticScreen::new(w, h);
        let mut enc = ScreenEncoder::new(w, h, 15.0).unwrap();
        let mut dec = Decoder::new().unwrap();
        for n in 0..5 {
            let frame = enc.encode(screen.next_frame(), false).unwrap();
            assert!(!frame.h264.is_empty());
            assert_eq!(frame.keyframe, n == 0, "only the first frame is a keyframe unless forced");
            let yuv = dec.decode(&frame.h264).unwrap().expect("a picture per access unit");
            assert_eq!(yuv.dimensions(), (w, h));
            let mut rgb = vec![0u8; w * h * 3];
            yuv.write_rgb8(&mut rgb);
            for bar in 0..8 {
                let (x, y) = (bar * w / 8 + w / 16, h / 3);
                let want = expected_colour(w, h, x, y).unwrap();
                let i = (y * w + x) * 3;
                for c in 0..3 {
                    let diff = (rgb[i + c] as i32 - want[c] as i32).abs();
                    assert!(diff <= TOLERANCE, "frame {n} bar {bar} channel {c}: {} vs {}", rgb[i + c], want[c]);
                }
            }
        }
    }

    #[test]
    fn forced_keyframe_is_a_keyframe() {
        let mut screen = SyntheticScreen::new(64, 48);
        let mut enc = ScreenEncoder::new(64, 48, 15.0).unwrap();
        assert!(enc.encode(screen.next_frame(), false).unwrap().keyframe);
        assert!(!enc.encode(screen.next_frame(), false).unwrap().keyframe);
        assert!(enc.encode(screen.next_frame(), true).unwrap().keyframe);
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(matches!(ScreenEncoder::new(63, 48, 15.0), Err(EncodeError::BadSize(..))));
        let mut enc = ScreenEncoder::new(64, 48, 15.0).unwrap();
        assert!(matches!(enc.encode(&[0; 10], false), Err(EncodeError::BadBuffer { .. })));
    }
}
