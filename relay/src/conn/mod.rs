//! One endpoint connection's protocol logic, sans-IO, in the style of quinn-proto: frames
//! and time go in, actions and the next deadline come out; the async shell in
//! `server` reads, writes, and carries the actions out.
//!
//! * [`greeting`]: `Hello`, `Login` (with TOTP), `RequestCode` or `Join`, up to the session.
//! * [`liveness`]: in the session phase, when a quiet link is pinged and a silent peer is
//!   given up on.
//! * [`refusal`]: every reason a connection is refused, and the one mapping to what the
//!   peer is told.
//!
//! The byte stream all of it is carried on is `tsunagu_proto::tls` (rustls' unbuffered API
//! with our own buffers).
//!
//! Once paired, a connection's frames go to the session (`session`), whose rules
//! are the sans-IO `policy`.

pub mod greeting;
pub mod liveness;
pub mod refusal;

pub use greeting::{Action, AttemptKind, Event, Greeting, Settle, Timeouts};
pub use liveness::{Due, Liveness};
pub use refusal::Refusal;
