//! The tsunagu operator: logs in to the relay, gets a one-time session code, waits for the
//! client to join and consent, then shows (decodes) the client's screen and sends input and
//! chat, reporting the client's pauses and mode switches.
//!
//! The logic lives here so tests and the future GUI drive it in-process:
//! [`run`] takes an [`OperatorConfig`], a channel of [`Command`]s and a channel for
//! [`Event`]s, and returns an [`Outcome`] that maps to the process exit code. The
//! `tsunagu-operator` binary only parses arguments and wires stdin/stdout to those channels
//! ([`headless`]).
//!
//! Modules: [`decode`] (openh264 decoding, gap detection, acks), [`config`], [`api`]
//! (commands, events, outcome), [`headless`] (JSON lines).

pub mod api;
pub mod config;
pub mod decode;
mod session;

pub use api::{Button, Command, Event, Outcome};
pub use config::{OperatorConfig, Timeouts};
pub use session::run;
