//! The tsunagu relay: every byte between an operator and a client passes through it.
//!
//! * [`config`]: settings with defaults, loaded from TOML and validated before binding.
//! * [`tls`]: the self-generated CA and server certificate, renewal.
//! * [`server`]: listeners, greeting, login, pairing, per-connection reader and writer.
//! * [`session`], [`policy`]: the session rules; `policy` is the sans-IO state machine.
//! * [`queue`]: bounded outbound queues (drop-oldest screen, back-pressured data).
//! * [`directory`]: live and recently used session codes.
//! * [`throttle`]: guessing protection for codes and logins.
//! * [`accounts`], [`store`], [`history`]: operator accounts and the connection history.
//! * [`totp`], [`audit`]: second factors; the hash-chained audit trail.
//! * [`verifier`]: the one bounded pool every argon2 computation goes through.
//! * [`admin`]: the HTTPS admin console, its REST API, and the operations both share with
//!   `tsunagu-relay admin`.

pub mod accounts;
pub mod admin;
pub mod audit;
pub mod config;
pub mod directory;
pub mod history;
pub mod policy;
pub mod queue;
pub mod server;
pub mod session;
pub mod store;
pub mod throttle;
pub mod tls;
pub mod totp;
pub mod verifier;

pub use config::Config;
pub use server::{Relay, StartError};

/// Raises the soft limit on open files to the hard limit: each session holds two
/// connections, and the default soft limit (often 1024) would cap a relay at a few hundred.
pub fn raise_fd_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}
