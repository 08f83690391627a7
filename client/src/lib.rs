//! The tsunagu client: joins a session with the code the operator read out, asks its user for
//! consent, then streams the screen (H.264, flow-controlled) and applies the operator's input
//! unless the user paused it, switched to view-only or chat-only, or grabbed the mouse.
//!
//! The logic lives here so tests and the GUI ([`gui`]) drive it in-process:
//! [`run`] takes a [`ClientConfig`], a channel of [`Command`]s and a channel for [`Event`]s,
//! and returns an [`Outcome`] that maps to the process exit code. The `tsunagu-client`
//! binary only parses arguments and wires stdin/stdout to those channels ([`headless`]).
//!
//! Modules: [`picture`] (a captured BGRX picture), [`capture`] (X11 shared memory, xcap, synthetic), [`synthetic`] (the test
//! desktop), [`encode`] (openh264), [`stream`] (the capture/encode worker thread), [`flow`]
//! (the unacked-frame window), [`inject`] (enigo input), [`pointer`] and [`takeover`] (the
//! takeover pause), [`config`], [`api`] (commands, events, outcome), [`gui`] (the eframe
//! window) and [`i18n`] (Japanese and English text).

pub mod api;
pub mod capture;
pub mod config;
pub mod encode;
pub mod flow;
pub mod gui;
pub mod i18n;
pub mod inject;
pub mod picture;
pub mod pointer;
mod session;
pub mod stream;
pub mod synthetic;
pub mod takeover;

pub use api::{Command, Event, InputLog, Outcome};
pub use config::{ClientConfig, InputSink, ScreenSource, Timeouts};
pub use session::run;
