//! What the operator and the client apps share on top of the wire protocol (`tsunagu_proto`).
//!
//! * [`banner`]: the connection banner both windows show (reconnecting, restored, the other
//!   side away), in both languages, without drawing.
//! * [`chat`]: chat delivered once and in order across dropped connections (numbering,
//!   acknowledgements, re-sends), without I/O.
//! * [`clipboard`]: the system clipboard's text, read and written for the clipboard channel,
//!   within its size limit.
//! * [`config`]: what both apps' configurations share (the relay target, its errors).
//! * [`dial`]: the endpoint dialer: TCP + TLS 1.3 to the relay, trying its ports in order
//!   (7615, then 80, then 443 by default), then the `Hello` exchange.
//! * [`link`]: an endpoint's live connection to the relay (reader task, send timeouts,
//!   sequence numbers, the one layer every data payload passes).
//! * [`driver`]: the session driver loop both apps plug their phase machines into (and where
//!   a payload layer or a new channel is written once).
//! * [`headless`]: the JSON-lines driver of both apps' `--headless` mode and their shared
//!   start-up.
//! * [`lang`]: the display language of both windows (each app keeps its own strings).
//! * [`resume`]: the session's resume key and token, and the reconnect schedule (relay list,
//!   jittered backoff, window), without I/O.
//! * [`transfer`]: file transfer as both apps do it: offers with SHA-256, the receiver's choice
//!   of folder, safe names, a credit window, verified saves.
//! * [`files_view`]: what a window shows of file transfers (offers, progress rows, the saved
//!   path, problems), fed with the session's file events, without drawing.
//! * [`gui`] (feature `gui`): what both windows set up alike: the CJK font, text sizes, the
//!   session runtime, the event bridge from the session to the window.
//! * [`dialog`] (feature `gui`): the native open-file and choose-folder dialogs of both
//!   windows, run beside the window.
//!
//! The relay never depends on this crate: it speaks the protocol through `tsunagu_proto` alone.

pub mod banner;
pub mod chat;
pub mod clipboard;
pub mod config;
pub mod dial;
#[cfg(feature = "gui")]
pub mod dialog;
pub mod disk;
pub mod driver;
pub mod files_view;
#[cfg(feature = "gui")]
pub mod gui;
pub mod headless;
pub mod lang;
pub mod link;
pub mod renew;
pub mod resume;
pub mod standby;
pub mod transfer;
