//! Screen capture + H.264 encode throughput at 1080p, X11 shared memory against xcap, and
//! capture-to-decoded latency through the real relay on loopback.
//!
//! `cargo bench --bench capture` starts its own Xvfb (1920x1080x24) and prints one JSON line
//! per measurement:
//!
//! * `{"bench":"throughput","backend":"shm"|"xcap","scene":...}`: the client's capture +
//!   change check + encode loop ([`tsunagu_client::stream::shoot`]) run back to back on one
//!   thread (one core), while the scene changes the screen between shots. `fps` is shots per
//!   second of that thread's work; `bytes_per_s_at_cap` is what the stream would send at the
//!   default 30 fps cap (`bytes_per_shot` x min(fps, 30)); an idle screen encodes nothing.
//!   `capture_ms` and `convert_ms` are one capture and one whole-screen BGRX to I420
//!   conversion on their own, timed every tenth shot (the rest of a shot is the change
//!   check and the encoder).
//!   `psnr_db` is what the operator's decoder shows against what was captured (every fifth
//!   frame, RGB, higher is closer; lossless would be 99).
//!   `tuning` is what the encoder is tuned for (`screen`, `motion`: see
//!   [`tsunagu_client::encode::Tuning`]), both on shm.
//!   Scenes: `idle` (a still desktop), `typing` (glyph-sized cells appear one per frame in a
//!   terminal-like window), `scrolling` (a text-like page scrolls one line per frame).
//! * `{"bench":"latency",...}`: relay, operator and client release binaries, the client on
//!   the Xvfb with `--screen x11`, the page scrolling at 60 Hz; the operator's `frame` events
//!   carry `latency_us` = decoded on the operator − captured on the client (same clock).
//!
//! Set `CAPTURE_BENCH_SECONDS` to change the time per measurement (default 4).

#[path = "scene.rs"]
mod scene;
#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::time::{Duration, Instant};

use scene::{Canvas, Painter, Scene};
use serde_json::json;
use support::xvfb::Xvfb;
use tsunagu_client::capture::{open_x11, Capturer, MonitorChoice, Picture, X11Backend};
use tsunagu_client::encode::{bgrx_to_i420, EncodedFrame, I420Planes, Tuning, DESKTOP_BITRATE_BPS};
use tsunagu_client::flow::RateTarget;
use tsunagu_client::stream::{shoot, EncoderSettings, Shot, ShotRequest};
use tsunagu_operator::decode::{FrameResult, ScreenDecoder};

/// The stream's default frame-rate cap on a real desktop.
const CAP_FPS: f64 = tsunagu_client::config::DEFAULT_DESKTOP_FPS as f64;

fn seconds() -> Duration {
    let s: f64 = std::env::var("CAPTURE_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4.0);
    Duration::from_secs_f64(s)
}

fn throughput(desk: &Canvas, backend: X11Backend, scene: Scene, tuning: Tuning) {
    let mut capturer: Box<dyn Capturer> = open_x11(backend, MonitorChoice::Primary).expect("capturer opens");
    let mut painter = Painter::setup(desk);
    let settings = EncoderSettings {
        fps: CAP_FPS as u32,
        bitrate_bps: DESKTOP_BITRATE_BPS,
    };
    let (mut encoder, mut previous, mut picture) = (None, Picture::default(), Picture::default());
    // One shot of the stream's loop, and the time it took.
    let mut timed_shot = |capturer: &mut dyn Capturer, previous: &mut Picture| {
        let t = Instant::now();
        let plain = ShotRequest {
            force_keyframe: false,
            rate: Some(RateTarget {
                bitrate_bps: settings.bitrate_bps,
                fps: settings.fps,
                tuning,
            }),
        };
        let shot = shoot(capturer, &mut encoder, settings, previous, &mut picture, plain);
        (shot, t.elapsed())
    };
    // The first shot is the keyframe of a session start: measured apart.
    let (first, keyframe_time) = timed_shot(capturer.as_mut(), &mut previous);
    let keyframe_ms = keyframe_time.as_secs_f64() * 1e3;
    // What the operator sees, against what was captured (outside the timed work).
    let mut decoder = ScreenDecoder::new().expect("decoder");
    let mut seq = 0u64;
    let keyframe_bytes = match first {
        Shot::Frame { encoded, .. } => {
            show(&mut decoder, &mut seq, &encoded);
            encoded.h264.len()
        }
        _ => 0,
    };
    let mut psnr = Vec::new();
    let (mut shots, mut encoded_frames, mut bytes) = (0u64, 0u64, 0u64);
    let mut work = Duration::ZERO;
    let mut capture_only = Duration::ZERO;
    let mut scratch = Picture::default();
    let (mut planes, mut convert_only) = (Vec::new(), Duration::ZERO);
    let limit = seconds();
    let wall = Instant::now();
    while wall.elapsed() < limit && shots < 2000 {
        painter.step(desk, scene);
        let (shot, took) = timed_shot(capturer.as_mut(), &mut previous);
        work += took;
        shots += 1;
        match shot {
            Shot::Frame { encoded, .. } => {
                encoded_frames += 1;
                bytes += encoded.h264.len() as u64;
                if show(&mut decoder, &mut seq, &encoded) && encoded_frames % 5 == 0 {
                    psnr.push(psnr_db(&previous, decoder.rgb().0));
                }
            }
            Shot::Unchanged => {}
            Shot::Failed(e) => eprintln!("shot failed: {e}"),
        }
        if shots % 10 == 0 {
            let t = Instant::now();
            let _ = capturer.capture(&mut scratch);
            capture_only += t.elapsed();
            let (w, h) = (scratch.width, scratch.height);
            if w > 0 && h > 0 {
                planes.resize(w * h * 3 / 2, 0);
                let t = Instant::now();
                bgrx_to_i420(
                    &scratch.bgrx,
                    scratch.stride,
                    w,
                    h,
                    I420Planes::from_row(&mut planes, w, h, 0),
                );
                convert_only += t.elapsed();
            }
        }
    }
    let fps = shots as f64 / work.as_secs_f64();
    let bytes_per_shot = bytes as f64 / shots as f64;
    println!(
        "{}",
        json!({
            "bench": "throughput",
            "backend": capturer.name(),
            "tuning": format!("{tuning:?}").to_lowercase(),
            "scene": scene.name(),
            "width": capturer.dimensions().0,
            "height": capturer.dimensions().1,
            "shots": shots,
            "encoded": encoded_frames,
            "fps": (fps * 10.0).round() / 10.0,
            "ms_per_shot": (work.as_secs_f64() * 1e3 / shots as f64 * 100.0).round() / 100.0,
            "capture_ms": (capture_only.as_secs_f64() * 1e3 / (shots / 10).max(1) as f64 * 100.0).round() / 100.0,
            "convert_ms": (convert_only.as_secs_f64() * 1e3 / (shots / 10).max(1) as f64 * 100.0).round() / 100.0,
            "bytes_per_shot": bytes_per_shot.round(),
            "psnr_db": if psnr.is_empty() { serde_json::Value::Null } else {
                json!((psnr.iter().sum::<f64>() / psnr.len() as f64 * 10.0).round() / 10.0)
            },
            "bytes_per_s_at_cap": (bytes_per_shot * fps.min(CAP_FPS)).round(),
            "keyframe_bytes": keyframe_bytes,
            "keyframe_ms": (keyframe_ms * 100.0).round() / 100.0,
        })
    );
}

/// Hands the next frame to the operator's decoder; whether a picture came out.
fn show(decoder: &mut ScreenDecoder, seq: &mut u64, encoded: &EncodedFrame) -> bool {
    *seq += 1;
    let (result, _) = decoder.frame(*seq, encoded.keyframe, &encoded.h264, Instant::now());
    matches!(result, FrameResult::Decoded(_))
}

/// Peak signal-to-noise ratio in dB of what the operator decoded (`rgb`, 3 bytes a pixel)
/// against the captured BGRX picture, over all three colour channels; 99 for identical.
fn psnr_db(captured: &Picture, rgb: &[u8]) -> f64 {
    let (w, h) = (captured.width, captured.height);
    let mut sum = 0u64;
    for y in 0..h {
        let row = &captured.bgrx[y * captured.stride..y * captured.stride + w * 4];
        let shown = &rgb[y * w * 3..(y + 1) * w * 3];
        for (px, out) in row.chunks_exact(4).zip(shown.chunks_exact(3)) {
            for (a, b) in [(px[2], out[0]), (px[1], out[1]), (px[0], out[2])] {
                let d = i64::from(a) - i64::from(b);
                sum += (d * d) as u64;
            }
        }
    }
    let mse = sum as f64 / (w * h * 3) as f64;
    if mse == 0.0 {
        99.0
    } else {
        10.0 * (255.0 * 255.0 / mse).log10()
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn latency(xvfb: &Xvfb, desk: &Canvas) {
    use support::{App, RelayProcess};
    let relay = RelayProcess::start("", 1);
    let out = relay.add_operator("bench", "Bench-mark-2026");
    assert!(out.status.success());
    let mut op = relay.operator("bench", "Bench-mark-2026");
    let code = op.code();
    let mut cmd = xvfb.app(
        "tsunagu-client",
        &relay,
        &["--headless", "--screen", "x11", "--input", "log"],
    );
    cmd.arg(&code);
    let mut client = App::spawn("client", cmd);
    client.expect("consent_request");
    client.send(json!({"cmd": "consent", "grant": ["view"]}));
    op.expect("consent");
    let mut painter = Painter::setup(desk);
    let mut samples = Vec::new();
    let limit = seconds() * 2;
    let start = Instant::now();
    while start.elapsed() < limit {
        painter.step(desk, Scene::Scrolling);
        for v in op.drain_for(Duration::from_millis(16)) {
            if v["event"] == "frame" {
                if let Some(us) = v["latency_us"].as_u64() {
                    samples.push(us);
                }
            }
        }
    }
    op.send(json!({"cmd": "end"}));
    let _ = client.drain_for(Duration::from_millis(500));
    // The first frames include the session start (keyframe, decoder set-up): skip them.
    let steady: Vec<u64> = samples.iter().skip(10).copied().collect();
    let mut sorted = steady.clone();
    sorted.sort_unstable();
    let frames_per_s =
        steady.len() as f64 / (limit.as_secs_f64() * (steady.len() as f64 / samples.len().max(1) as f64));
    println!(
        "{}",
        json!({
            "bench": "latency",
            "scene": "scrolling",
            "frames": sorted.len(),
            "fps": (frames_per_s * 10.0).round() / 10.0,
            "p50_ms": percentile(&sorted, 0.5) as f64 / 1000.0,
            "p95_ms": percentile(&sorted, 0.95) as f64 / 1000.0,
            "max_ms": sorted.last().copied().unwrap_or(0) as f64 / 1000.0,
        })
    );
}

fn main() {
    // `cargo bench` passes --bench; a filter argument picks parts: `throughput`, `latency`,
    // or measurements such as `throughput/shm/scrolling` (both tunings) or
    // `throughput/shm/scrolling/motion`.
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let wants = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    let xvfb = Xvfb::start(1920, 1080);
    let desk = Canvas::open(&xvfb.display).expect("the bench's X server takes a window");
    // The capturers read $DISPLAY; this process only ever talks to its own Xvfb.
    std::env::set_var("DISPLAY", &xvfb.display);
    for scene in [Scene::Idle, Scene::Typing, Scene::Scrolling] {
        // xcap is measured for the capture only: the encoder's tunings are compared on shm.
        for (backend, tuning) in [
            (X11Backend::Shm, Tuning::Screen),
            (X11Backend::Shm, Tuning::Motion),
            (X11Backend::Xcap, Tuning::Screen),
        ] {
            let name = format!("throughput/{backend:?}/{}/{tuning:?}", scene.name()).to_lowercase();
            if wants(&name) {
                throughput(&desk, backend, scene, tuning);
            }
        }
    }
    if wants("latency") {
        support::build_binaries(true);
        latency(&xvfb, &desk);
    }
}
