//! 1080p H.264 decoding on the operator, frames per second on one core: a 1920x1080 desktop
//! with a scrolling text-like region is encoded once by the client's encoder, then the
//! operator's decoder (openh264, the same path the viewer uses) decodes the whole clip.

use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tsunagu_client::encode::ScreenEncoder;
use tsunagu_operator::decode::{FrameResult, ScreenDecoder};

const W: usize = 1920;
const H: usize = 1080;
/// Frames in the clip: one keyframe and 59 deltas, two seconds at 30 frames/s.
const FRAMES: usize = 60;

/// A desktop-like picture: flat window backgrounds with stripes of "text" that scroll by
/// `shift` rows, so every frame changes the way a scrolling document does.
fn desktop(shift: usize) -> Vec<u8> {
    let mut rgb = vec![0u8; W * H * 3];
    for y in 0..H {
        for x in 0..W {
            let o = (y * W + x) * 3;
            let (r, g, b) = if x < 300 {
                (40, 44, 52)
            } else if y < 60 {
                (230, 230, 230)
            } else {
                let row = (y + shift) % 24;
                let ink = row < 14
                    && !(x / 9 + (y + shift) / 24).is_multiple_of(7)
                    && !(x * 31 + (y + shift) / 24 * 17).is_multiple_of(5);
                if ink {
                    (30, 30, 30)
                } else {
                    (250, 250, 250)
                }
            };
            rgb[o] = r;
            rgb[o + 1] = g;
            rgb[o + 2] = b;
        }
    }
    rgb
}

fn clip() -> Vec<(bool, Vec<u8>)> {
    let mut enc = ScreenEncoder::new(W, H, 30.0).expect("encoder");
    (0..FRAMES)
        .map(|i| {
            let f = enc.encode(&desktop(i * 4), i == 0).expect("encodes");
            (f.keyframe, f.h264)
        })
        .collect()
}

fn decode(c: &mut Criterion) {
    let clip = clip();
    let bytes: usize = clip.iter().map(|(_, b)| b.len()).sum();
    eprintln!("decode clip: {FRAMES} frames of {W}x{H}, {bytes} bytes of H.264");
    let mut group = c.benchmark_group("decode_1080p");
    group.sample_size(10).throughput(Throughput::Elements(FRAMES as u64));
    group.bench_function("operator_decoder", |b| {
        b.iter(|| {
            let mut dec = ScreenDecoder::new().expect("decoder");
            let now = Instant::now();
            for (i, (key, h264)) in clip.iter().enumerate() {
                let (result, _) = dec.frame(i as u64 + 1, *key, h264, now);
                assert!(matches!(result, FrameResult::Decoded(_)), "frame {i}: {result:?}");
            }
        })
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
