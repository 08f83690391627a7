//! What the operator and the client apps share on top of the wire protocol (`tsunagu_proto`).
//!
//! * [`dial`]: the endpoint dialer: TCP + TLS 1.3 to the relay, trying its ports in order
//!   (7615, then 80, then 443 by default), then the `Hello` exchange.
//! * [`link`]: an endpoint's live connection to the relay (reader task, send timeouts,
//!   sequence numbers).
//! * [`headless`]: the JSON-lines driver of both apps' `--headless` mode.
//! * [`transfer`]: file transfer as both apps do it: offers with SHA-256, the receiver's choice
//!   of folder, safe names, a credit window, verified saves.
//! * [`gui`] (feature `gui`): what both windows set up alike: the CJK font, text sizes, the
//!   session runtime.
//!
//! The relay never depends on this crate: it speaks the protocol through `tsunagu_proto` alone.

pub mod dial;
#[cfg(feature = "gui")]
pub mod gui;
pub mod headless;
pub mod link;
pub mod transfer;
