//! The client's configuration, validated before anything is dialled.

use std::time::Duration;

use tsunagu_endpoint::dial::DEFAULT_ATTEMPT_TIMEOUT;
use tsunagu_proto::SessionCode;

use crate::capture::{MonitorChoice, X11Backend};
use crate::flow::{DEFAULT_ACK_STALL, DEFAULT_MAX_UNACKED};
use crate::takeover::DEFAULT_RESUME_AFTER;

/// Default synthetic screen size: small enough to encode in real time in a debug build,
/// large enough to look like a desktop.
pub const DEFAULT_SIZE: (usize, usize) = (640, 360);

/// Default frame-rate cap for the synthetic desktop: smooth enough to follow a pointer,
/// light on CPU in debug-build tests.
pub const DEFAULT_FPS: u32 = 15;

/// Default frame-rate cap for a real desktop: pointer and scrolling look fluid at 30 fps,
/// and an idle desktop costs nothing (unchanged frames are not encoded).
pub const DEFAULT_DESKTOP_FPS: u32 = 30;

/// Highest frame-rate cap accepted.
pub const MAX_FPS: u32 = 60;

/// Largest synthetic screen side accepted (4K).
pub const MAX_SIDE: usize = 3840;

/// Where the screen picture comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScreenSource {
    /// The synthetic animated desktop ([`crate::synthetic`]).
    Synthetic {
        /// Width in pixels (even).
        width: usize,
        /// Height in pixels (even).
        height: usize,
    },
    /// The real X11 desktop (`$DISPLAY`).
    X11 {
        /// Shared memory, xcap, or shared memory with xcap as fallback.
        backend: X11Backend,
        /// Which monitor.
        monitor: MonitorChoice,
    },
}

/// Where operator input goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputSink {
    /// Emit each applied input as an `input` event; nothing is injected.
    Log,
    /// Inject into the desktop with enigo (XTest on X11), and pause the operator when the
    /// real pointer moves without us (takeover).
    System,
}

/// Every wait on the relay, with its limit.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// One port attempt: TCP connect, TLS handshake, `Hello`.
    pub attempt: Duration,
    /// Relay silence that counts as a lost connection. The relay pings every 15 s, so 45 s is
    /// three missed pings.
    pub idle: Duration,
    /// Waiting for the relay's answer to `Join`.
    pub join: Duration,
    /// One frame write.
    pub write: Duration,
    /// Waiting for `Ended` after sending `End`.
    pub end: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            attempt: DEFAULT_ATTEMPT_TIMEOUT,
            idle: Duration::from_secs(45),
            join: Duration::from_secs(15),
            write: Duration::from_secs(10),
            end: Duration::from_secs(5),
        }
    }
}

/// Everything [`crate::run`] needs.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The relays (`--relay`, possibly a list), each with its ports in order: dialled in
    /// order, and in turn to resume after a drop.
    pub relays: Vec<tsunagu_endpoint::dial::RelayEntry>,
    /// The relay's CA certificate (`--ca DATA/tls/ca.pem`, or inside a downloaded program),
    /// trusted besides the system's store.
    pub ca: tsunagu_endpoint::dial::ExtraCa,
    /// The session code the operator read out.
    pub code: SessionCode,
    /// Host name shown to the operator.
    pub host_name: String,
    /// Screen source.
    pub screen: ScreenSource,
    /// Input sink.
    pub input: InputSink,
    /// Frame-rate cap.
    pub fps: u32,
    /// H.264 target bit rate.
    pub bitrate_bps: u32,
    /// Frames that may be in flight unacknowledged.
    pub max_unacked: u64,
    /// Window reset after this long without acks while full.
    pub ack_stall: Duration,
    /// Takeover pause: resume after this long without local pointer movement.
    pub takeover_resume: Duration,
    /// Waits on the relay.
    pub timeouts: Timeouts,
    /// Largest frame accepted or sent.
    pub max_frame: usize,
    /// The standby relay site (`--standby-relay`), shared by the app's sessions.
    pub standby: Option<std::sync::Arc<tsunagu_endpoint::standby::Standby>>,
}

pub use tsunagu_endpoint::config::{relay_list, relay_target, ConfigError};

/// The relay's address and CA this program carries when it was downloaded from a relay's
/// page (`/join`): `Ok(None)` for a plain program; an error when the appended settings are
/// damaged (the customer is told to download it again rather than dial somewhere
/// half-read).
pub fn bundled() -> Result<Option<tsunagu_proto::bundle::JoinConfig>, tsunagu_proto::bundle::BundleError> {
    let exe = std::env::current_exe()?;
    let mut file = std::fs::File::open(exe)?;
    tsunagu_proto::bundle::read(&mut file)
}

/// This machine's host name, or `"unknown"`.
pub fn local_host_name() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}

impl ClientConfig {
    /// A configuration with the defaults a customer needs: the real X11 desktop on
    /// `$DISPLAY` (primary monitor, shared memory with xcap as fallback), input injected
    /// into it with takeover detection, 30 fps, 3 frames in flight, 3 s takeover resume,
    /// this machine's host name. The synthetic screen and logged input (for tests) are set
    /// explicitly.
    pub fn new(
        relay: &str,
        ports: Option<Vec<u16>>,
        ca: impl Into<tsunagu_endpoint::dial::ExtraCa>,
        code: SessionCode,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            relays: relay_list(relay, ports)?,
            ca: ca.into(),
            code,
            host_name: local_host_name(),
            screen: ScreenSource::X11 {
                backend: X11Backend::Auto,
                monitor: MonitorChoice::Primary,
            },
            input: InputSink::System,
            fps: DEFAULT_DESKTOP_FPS,
            bitrate_bps: crate::encode::DESKTOP_BITRATE_BPS,
            max_unacked: DEFAULT_MAX_UNACKED,
            ack_stall: DEFAULT_ACK_STALL,
            takeover_resume: DEFAULT_RESUME_AFTER,
            timeouts: Timeouts::default(),
            max_frame: tsunagu_proto::limits::DEFAULT_MAX_FRAME,
            standby: None,
        })
    }
}

/// Parses `WIDTHxHEIGHT` (both even, non-zero, at most [`MAX_SIDE`]).
pub fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("{s:?} is not WIDTHxHEIGHT"))?;
    let w: usize = w.trim().parse().map_err(|_| format!("{s:?} is not WIDTHxHEIGHT"))?;
    let h: usize = h.trim().parse().map_err(|_| format!("{s:?} is not WIDTHxHEIGHT"))?;
    if w < 16 || h < 16 || w > MAX_SIDE || h > MAX_SIDE || (w | h) & 1 != 0 {
        return Err(format!("{s:?}: both sides must be even, between 16 and {MAX_SIDE}"));
    }
    Ok((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_follow_the_relay_spec() {
        assert_eq!(
            relay_target("127.0.0.1:9000", None).unwrap(),
            ("127.0.0.1".into(), vec![9000])
        );
        assert!(relay_target("", None).is_err());
    }

    #[test]
    fn the_real_desktop_is_the_default() {
        let code = SessionCode::parse("12345678").unwrap();
        let config = ClientConfig::new("127.0.0.1:7615", None, "ca.pem", code).unwrap();
        assert!(matches!(config.screen, ScreenSource::X11 { .. }), "{:?}", config.screen);
        assert_eq!(config.input, InputSink::System);
        assert_eq!(config.fps, DEFAULT_DESKTOP_FPS);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("640x360").unwrap(), (640, 360));
        assert!(parse_size("641x360").is_err());
        assert!(parse_size("640").is_err());
        assert!(parse_size("0x0").is_err());
    }
}
