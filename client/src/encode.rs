//! H.264 encoding of captured frames with openh264 (built from source, no system
//! library). One call in, one Annex B access unit out.
//!
//! Captured [`Picture`]s (BGRX) are converted to I420 here with a plain integer BT.601 loop
//! (the colour space openh264's decoder assumes), which is several times faster than going
//! through a packed RGB copy first.

use openh264::encoder::{BitRate, Encoder, EncoderConfig, FrameRate, FrameType, RateControlMode, UsageType};
use openh264::formats::{RgbSliceU8, YUVBuffer, YUVSlices};

use crate::picture::Picture;
use openh264::OpenH264API;

/// Target bit rate: generous for desktop content at the default 640x360 so flat colours
/// survive compression; the frame-rate cap and the unacked window bound the real rate.
pub const DEFAULT_BITRATE_BPS: u32 = 2_000_000;

/// Target bit rate for a real desktop at up to 1080p: text stays legible at 4 Mbit/s, and
/// an idle desktop sends nothing at all (unchanged frames are skipped before the encoder).
pub const DESKTOP_BITRATE_BPS: u32 = 4_000_000;

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
    /// I420 planes for [`ScreenEncoder::encode_picture`], reused between frames.
    i420: Vec<u8>,
    width: usize,
    height: usize,
    /// The bit rate and frame rate aimed at now.
    rate: (u32, f32),
    tuning: Tuning,
}

/// What the encoder spends its time on. Measured at 1080p on one core
/// (`cargo bench --bench capture`): a page scrolling one line a frame costs about 13 ms of
/// encoding a frame tuned for the screen and 4 ms tuned for motion, with frames 2.4 times the
/// size (2.1 vs 4.8 KB); typing, 13 vs 3 ms, 51 vs 670 bytes. At the desktop's 4 Mbit/s cap
/// both show the operator the picture closely (PSNR 45.5 dB tuned for the screen, 47.5-48.5
/// tuned for motion).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tuning {
    /// openh264's screen-content mode: the smallest frames for text, windows and scrolling
    /// (a motion search over the whole picture finds content that moved far), at the most
    /// CPU a frame. For links that are the limit.
    #[default]
    Screen,
    /// openh264's camera mode: a local motion search, a third of the CPU a frame or less,
    /// larger frames. For links with room to spare: more frames a second and less delay.
    Motion,
}

impl ScreenEncoder {
    /// An encoder for `width` x `height` frames paced at `fps`, at [`DEFAULT_BITRATE_BPS`].
    pub fn new(width: usize, height: usize, fps: f32) -> Result<Self, EncodeError> {
        Self::with_bitrate(width, height, fps, DEFAULT_BITRATE_BPS)
    }

    /// An encoder for `width` x `height` frames paced at `fps`, aiming at `bitrate_bps`,
    /// tuned for [`Tuning::Screen`].
    pub fn with_bitrate(width: usize, height: usize, fps: f32, bitrate_bps: u32) -> Result<Self, EncodeError> {
        Self::tuned(width, height, fps, bitrate_bps, Tuning::Screen)
    }

    /// An encoder for `width` x `height` frames paced at `fps`, aiming at `bitrate_bps`,
    /// tuned as `tuning` says.
    pub fn tuned(width: usize, height: usize, fps: f32, bitrate_bps: u32, tuning: Tuning) -> Result<Self, EncodeError> {
        if width == 0 || height == 0 || (width | height) & 1 != 0 {
            return Err(EncodeError::BadSize(width, height));
        }
        let usage = match tuning {
            Tuning::Screen => UsageType::ScreenContentRealTime,
            Tuning::Motion => UsageType::CameraVideoRealTime,
        };
        let config = EncoderConfig::new()
            .usage_type(usage)
            .bitrate(BitRate::from_bps(bitrate_bps))
            .max_frame_rate(FrameRate::from_hz(fps))
            .rate_control_mode(RateControlMode::Bitrate)
            // Neither is supported for screen content; openh264 warns and turns them off.
            .adaptive_quantization(false)
            .background_detection(false)
            // Skipping is our job (flow control); the encoder must encode what it is given.
            .skip_frames(false);
        let encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| EncodeError::Codec(e.to_string()))?;
        Ok(Self {
            encoder,
            yuv: YUVBuffer::new(width, height),
            i420: Vec::new(),
            width,
            height,
            rate: (bitrate_bps, fps),
            tuning,
        })
    }

    /// What this encoder is tuned for.
    pub fn tuning(&self) -> Tuning {
        self.tuning
    }

    /// Aims the running encoder at another bit rate and frame rate, without a keyframe
    /// (the stream follows what its link carries). At most the rates it was made with.
    pub fn set_rate(&mut self, bitrate_bps: u32, fps: f32) -> Result<(), EncodeError> {
        if (bitrate_bps, fps) == self.rate {
            return Ok(());
        }
        let mut bitrate = openh264_sys2::SBitrateInfo {
            iLayer: openh264_sys2::SPATIAL_LAYER_ALL,
            iBitrate: i32::try_from(bitrate_bps).unwrap_or(i32::MAX),
        };
        let mut frame_rate = fps;
        // SAFETY: both options are documented as safe to change between frames (WebRTC does
        // so for every bandwidth estimate); each takes a pointer to a value of the type
        // passed (`SBitrateInfo`, `float`) that lives across the call, and neither changes
        // the frame size or anything else the wrapper relies on.
        let rc = unsafe {
            let api = self.encoder.raw_api();
            let a = api.set_option(openh264_sys2::ENCODER_OPTION_BITRATE, (&raw mut bitrate).cast());
            let b = api.set_option(openh264_sys2::ENCODER_OPTION_FRAME_RATE, (&raw mut frame_rate).cast());
            a | b
        };
        // Asked once per change: a refused retune is not asked again for every frame.
        self.rate = (bitrate_bps, fps);
        if rc != 0 {
            return Err(EncodeError::Codec(format!("cannot change the bit rate (error {rc})")));
        }
        Ok(())
    }

    /// The frame size this encoder takes.
    pub fn dimensions(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// Encodes one captured BGRX picture; `force_keyframe` makes it an IDR frame.
    pub fn encode_picture(&mut self, picture: &Picture, force_keyframe: bool) -> Result<EncodedFrame, EncodeError> {
        self.encode_picture_rows(picture, force_keyframe, None)
    }

    /// Like [`encode_picture`](Self::encode_picture), but only rows `changed.0..changed.1`
    /// differ from the picture encoded last: only those are converted to I420 again (typing
    /// changes a few rows of a 1080-row screen). `None`: convert everything.
    pub fn encode_picture_rows(
        &mut self,
        picture: &Picture,
        force_keyframe: bool,
        changed: Option<(usize, usize)>,
    ) -> Result<EncodedFrame, EncodeError> {
        let (w, h) = (self.width, self.height);
        if picture.width != w
            || picture.height != h
            || picture.stride < w * 4
            || picture.bgrx.len() < picture.stride * h
        {
            return Err(EncodeError::BadBuffer {
                want: w * h * 4,
                got: picture.bgrx.len(),
            });
        }
        let fresh = self.i420.len() != w * h * 3 / 2;
        self.i420.resize(w * h * 3 / 2, 0);
        // Whole 2-row blocks (chroma is shared by two rows).
        let (top, bottom) = match changed {
            Some((a, b)) if !fresh => (a & !1, (b.min(h) + 1) & !1),
            _ => (0, h),
        };
        if bottom > top {
            let band = I420Planes::from_row(&mut self.i420, w, h, top);
            bgrx_to_i420(
                &picture.bgrx[top * picture.stride..],
                picture.stride,
                w,
                bottom - top,
                band,
            );
        }
        let whole = I420Planes::from_row(&mut self.i420, w, h, 0);
        let source = YUVSlices::new((whole.y, whole.u, whole.v), (w, h), (w, w / 2, w / 2));
        if force_keyframe {
            self.encoder.force_intra_frame();
        }
        let stream = self
            .encoder
            .encode(&source)
            .map_err(|e| EncodeError::Codec(e.to_string()))?;
        let keyframe = matches!(stream.frame_type(), FrameType::IDR | FrameType::I);
        Ok(EncodedFrame {
            h264: stream.to_vec(),
            keyframe,
        })
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
        let stream = self
            .encoder
            .encode(&self.yuv)
            .map_err(|e| EncodeError::Codec(e.to_string()))?;
        let keyframe = matches!(stream.frame_type(), FrameType::IDR | FrameType::I);
        Ok(EncodedFrame {
            h264: stream.to_vec(),
            keyframe,
        })
    }
}

/// The three planes of an I420 picture `w` pixels wide, from the first row to convert on.
pub struct I420Planes<'a> {
    /// Luma, `w` bytes a row.
    pub y: &'a mut [u8],
    /// Blue-difference chroma, `w / 2` bytes a row, one row per two picture rows.
    pub u: &'a mut [u8],
    /// Red-difference chroma, as `u`.
    pub v: &'a mut [u8],
}

impl<'a> I420Planes<'a> {
    /// The planes of a whole I420 picture `w` x `h` in `buf` (at least `w * h * 3 / 2`
    /// bytes), from row `top` (even) on.
    pub fn from_row(buf: &'a mut [u8], w: usize, h: usize, top: usize) -> Self {
        let (y, chroma) = buf.split_at_mut(w * h);
        let (u, v) = chroma.split_at_mut(w * h / 4);
        let chroma_at = top / 2 * (w / 2);
        Self {
            y: &mut y[top * w..],
            u: &mut u[chroma_at..],
            v: &mut v[chroma_at..w * h / 4],
        }
    }
}

/// Converts `h` rows of BGRX (`stride` bytes per row) to I420 planes (BT.601, limited
/// range). `w` and `h` must be even. SIMD code picked for the CPU at run time does it
/// ([`yuvutils_rs`]); the plain loop is kept for sizes it refuses.
pub fn bgrx_to_i420(bgrx: &[u8], stride: usize, w: usize, h: usize, mut out: I420Planes<'_>) {
    if bgrx_to_i420_simd(bgrx, stride, w, h, &mut out).is_none() {
        bgrx_to_i420_plain(bgrx, stride, w, h, out);
    }
}

/// [`bgrx_to_i420`] through yuvutils; `None` if it refuses the sizes.
fn bgrx_to_i420_simd(bgrx: &[u8], stride: usize, w: usize, h: usize, out: &mut I420Planes<'_>) -> Option<()> {
    use yuvutils_rs::{BufferStoreMut, YuvConversionMode, YuvPlanarImageMut, YuvRange, YuvStandardMatrix};
    let width = u32::try_from(w).ok()?;
    let chroma_width = u32::try_from(w / 2).ok()?;
    let mut image = YuvPlanarImageMut {
        y_plane: BufferStoreMut::Borrowed(out.y.get_mut(..w * h)?),
        y_stride: width,
        u_plane: BufferStoreMut::Borrowed(out.u.get_mut(..w * h / 4)?),
        u_stride: chroma_width,
        v_plane: BufferStoreMut::Borrowed(out.v.get_mut(..w * h / 4)?),
        v_stride: chroma_width,
        width,
        height: u32::try_from(h).ok()?,
    };
    yuvutils_rs::bgra_to_yuv420(
        &mut image,
        bgrx.get(..h * stride)?,
        u32::try_from(stride).ok()?,
        YuvRange::Limited,
        YuvStandardMatrix::Bt601,
        YuvConversionMode::Balanced,
    )
    .ok()
}

/// [`bgrx_to_i420`] as a plain integer loop: chroma is the average of each 2x2 block.
pub fn bgrx_to_i420_plain(bgrx: &[u8], stride: usize, w: usize, h: usize, out: I420Planes<'_>) {
    let I420Planes {
        y: y_plane,
        u: u_plane,
        v: v_plane,
    } = out;
    let cw = w / 2;
    for row in (0..h).step_by(2) {
        let top = &bgrx[row * stride..row * stride + w * 4];
        let bottom = &bgrx[(row + 1) * stride..(row + 1) * stride + w * 4];
        let (y_top, y_rest) = y_plane[row * w..(row + 2) * w].split_at_mut(w);
        let u_row = &mut u_plane[(row / 2) * cw..(row / 2 + 1) * cw];
        let v_row = &mut v_plane[(row / 2) * cw..(row / 2 + 1) * cw];
        for cx in 0..cw {
            let mut sum = [0i32; 3];
            for (src, dst) in [(top, &mut *y_top), (bottom, &mut *y_rest)] {
                for dx in 0..2 {
                    let x = cx * 2 + dx;
                    let p = &src[x * 4..x * 4 + 3];
                    let (b, g, r) = (p[0] as i32, p[1] as i32, p[2] as i32);
                    dst[x] = (((66 * r + 129 * g + 25 * b + 128) >> 8) + 16) as u8;
                    sum[0] += r;
                    sum[1] += g;
                    sum[2] += b;
                }
            }
            let (r, g, b) = ((sum[0] + 2) >> 2, (sum[1] + 2) >> 2, (sum[2] + 2) >> 2);
            u_row[cx] = (((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128) as u8;
            v_row[cx] = (((112 * r - 94 * g - 18 * b + 128) >> 8) + 128) as u8;
        }
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
            assert_eq!(
                frame.keyframe,
                n == 0,
                "only the first frame is a keyframe unless forced"
            );
            let yuv = dec.decode(&frame.h264).unwrap().expect("a picture per access unit");
            assert_eq!(yuv.dimensions(), (w, h));
            assert_bars_survive(&yuv, w, h, &format!("frame {n}"));
        }
    }

    #[test]
    fn a_running_encoder_is_retuned_without_a_keyframe() {
        let (w, h) = (320, 180);
        let mut screen = SyntheticScreen::new(w, h);
        let mut enc = ScreenEncoder::with_bitrate(w, h, 30.0, 4_000_000).unwrap();
        let mut dec = Decoder::new().unwrap();
        let first = enc.encode(screen.next_frame(), false).unwrap();
        assert!(first.keyframe);
        dec.decode(&first.h264).unwrap();
        enc.set_rate(300_000, 8.0).unwrap();
        for n in 0..3 {
            let frame = enc.encode(screen.next_frame(), false).unwrap();
            assert!(!frame.keyframe, "frame {n} after the retune is no keyframe");
            let yuv = dec.decode(&frame.h264).unwrap().expect("a picture per access unit");
            assert_bars_survive(&yuv, w, h, &format!("frame {n} after the retune"));
        }
        // Back up to where it started.
        enc.set_rate(4_000_000, 30.0).unwrap();
        assert!(!enc.encode(screen.next_frame(), false).unwrap().keyframe);
    }

    #[test]
    fn captured_pictures_round_trip_through_h264() {
        use crate::capture::{Capturer, SyntheticCapturer};
        let (w, h) = (320, 180);
        let mut capturer = SyntheticCapturer::new(w, h);
        let mut picture = Picture::default();
        let mut enc = ScreenEncoder::new(w, h, 15.0).unwrap();
        let mut dec = Decoder::new().unwrap();
        capturer.capture(&mut picture).unwrap();
        let frame = enc.encode_picture(&picture, true).unwrap();
        assert!(frame.keyframe);
        let yuv = dec.decode(&frame.h264).unwrap().expect("a picture");
        assert_bars_survive(&yuv, w, h, "captured picture");
    }

    /// Every colour bar of the synthetic desktop comes out of the decoder within the tolerance.
    fn assert_bars_survive(yuv: &openh264::decoder::DecodedYUV<'_>, w: usize, h: usize, what: &str) {
        let mut rgb = vec![0u8; w * h * 3];
        yuv.write_rgb8(&mut rgb);
        for bar in 0..8 {
            let (x, y) = (bar * w / 8 + w / 16, h / 3);
            let want = expected_colour(w, h, x, y).unwrap();
            let i = (y * w + x) * 3;
            for c in 0..3 {
                let diff = (rgb[i + c] as i32 - want[c] as i32).abs();
                assert!(
                    diff <= TOLERANCE,
                    "{what} bar {bar} channel {c}: {} vs {}",
                    rgb[i + c],
                    want[c]
                );
            }
        }
    }

    /// The SIMD conversion gives what the plain BT.601 loop gives, within rounding: every
    /// sample of a picture of varied colours (saturated primaries, greys, random pixels),
    /// rows padded past the picture's width, and a band of rows in the middle converted on
    /// its own the way a partly changed screen is.
    #[test]
    fn the_fast_conversion_matches_the_plain_loop() {
        let (w, h, stride) = (96usize, 38usize, 96 * 4 + 32);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut bgrx = vec![0u8; stride * h];
        for y in 0..h {
            for x in 0..w {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let p = &mut bgrx[y * stride + x * 4..y * stride + x * 4 + 4];
                let pick = [
                    [0, 0, 255],
                    [0, 255, 0],
                    [255, 0, 0],
                    [255, 255, 255],
                    [0, 0, 0],
                    [128, 128, 128],
                ];
                if y < 12 {
                    // 2x2 blocks of one colour: chroma is exact there.
                    p[..3].copy_from_slice(&pick[(x / 2 + y / 2) % pick.len()]);
                } else {
                    p[..3].copy_from_slice(&seed.to_le_bytes()[..3]);
                }
                p[3] = 0xa5; // the X byte is anything
            }
        }
        let planes = |f: fn(&[u8], usize, usize, usize, I420Planes<'_>), top: usize, rows: usize| {
            let mut out = vec![7u8; w * h * 3 / 2];
            f(
                &bgrx[top * stride..],
                stride,
                w,
                rows,
                I420Planes::from_row(&mut out, w, h, top),
            );
            out
        };
        for (top, rows) in [(0, h), (10, 16)] {
            let fast = planes(bgrx_to_i420, top, rows);
            let plain = planes(bgrx_to_i420_plain, top, rows);
            for (i, (a, b)) in fast.iter().zip(&plain).enumerate() {
                let plane = if i < w * h { "Y" } else { "U/V" };
                // Outside the band both leave the buffer as it was.
                let limit = if i < w * h && i / w < 12 && top == 0 { 1 } else { 2 };
                assert!(
                    (*a as i32 - *b as i32).abs() <= limit,
                    "rows {top}..{}: {plane} sample {i} is {a}, the plain loop says {b}",
                    top + rows
                );
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
        assert!(matches!(
            ScreenEncoder::new(63, 48, 15.0),
            Err(EncodeError::BadSize(..))
        ));
        let mut enc = ScreenEncoder::new(64, 48, 15.0).unwrap();
        assert!(matches!(
            enc.encode(&[0; 10], false),
            Err(EncodeError::BadBuffer { .. })
        ));
    }
}
