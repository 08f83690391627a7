//! The relay's clock for everything it times on a connection (code expiry, consent, the
//! grace window of a vanished peer, throttles). A leaf like `time`.
//!
//! The sans-IO machines (`policy`, `conn`) never read a clock: the time
//! is passed in. The async shell reads it here, from tokio's clock, so that a test on
//! tokio's paused clock (`#[tokio::test(start_paused = true)]`) moves every timeout of the
//! relay at once, in milliseconds of real time. Outside a paused test this is
//! `std::time::Instant::now()`.

use std::time::Instant;

/// Now, by tokio's clock (paused and advanced by tests; the system's otherwise).
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}
