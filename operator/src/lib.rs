//! The tsunagu operator: logs in to the relay, gets a one-time session code, waits for the
//! client to join and consent, then shows (decodes) the client's screen and sends input,
//! chat and files, reporting the client's pauses and mode switches.
//!
//! The logic lives here so tests, the headless mode and the window drive the same calls:
//! [`run`] takes an [`OperatorConfig`], a channel of [`Command`]s and a channel for
//! [`Event`]s, and returns an [`Outcome`] that maps to the process exit code.
//!
//! Modules: [`decode`] (openh264 decoding, gap detection, acks), [`config`], [`api`]
//! (commands, events, outcome), [`picture`] (the newest picture for a viewer), [`gui`] (the
//! window), [`viewer`] (how the window sizes the picture and which keys it sends), [`chat`]
//! (the window's bounded chat log), [`i18n`] (its Japanese and English text).

pub mod api;
pub mod chat;
pub mod config;
pub mod decode;
pub mod gui;
pub mod i18n;
pub mod picture;
mod session;
pub mod viewer;

pub use api::{Button, Command, Event, Outcome};
pub use config::{OperatorConfig, Timeouts};
pub use session::run;
