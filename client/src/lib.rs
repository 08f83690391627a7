//! The tsunagu client: joins a session with the code the operator read out, asks its user for
//! consent, then streams the screen (H.264, flow-controlled) and applies the operator's input
//! unless the user paused it, switched to view-only or chat-only, or grabbed the mouse.
//!
//! The logic lives here so tests and the future GUI drive it in-process:
//! [`run`] takes a [`ClientConfig`], a channel of [`Command`]s and a channel for [`Event`]s,
//! and returns an [`Outcome`] that maps to the process exit code. The `tsunagu-client`
//! binary only parses arguments and wires stdin/stdout to those channels ([`headless`]).
//!
//! Modules: [`synthetic`] (the `--screen synthetic` desktop), [`encode`] (openh264),
//! [`flow`] (the unacked-frame window), [`takeover`] (the takeover pause timer),
//! [`config`], [`api`] (commands, events, outcome), [`headless`] (JSON lines).

pub mod api;
pub mod config;
pub mod encode;
pub mod flow;
mod session;
pub mod synthetic;
pub mod takeover;

pub use api::{Command, Event, InputLog, Outcome};
pub use config::{ClientConfig, InputSink, ScreenSource, Timeouts};
pub use session::run;
