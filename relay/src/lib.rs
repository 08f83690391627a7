//! The tsunagu relay: every byte between an operator and a client passes through it.
//!
//! * [`config`]: settings with defaults, loaded from TOML and validated before binding.
//! * [`tls`]: the self-generated CA and server certificate, renewal; [`acme`]: a publicly
//!   trusted one from an ACME CA instead.
//! * [`server`]: the running [`Relay`] (start, housekeeping, shutdown), its listeners, and
//!   the async shell of each connection (TLS, greeting driver, reader, writer).
//! * [`conn`]: a connection's greeting (login, code, join) as a sans-IO machine, and the
//!   refusals with what the peer is told.
//! * [`state`]: what every task of one relay shares ([`state::Shared`]).
//! * [`shutdown`]: the stop signal and the connection tasks shutdown waits for.
//! * [`session`], [`policy`]: the session rules; `policy` is the sans-IO state machine.
//! * [`queue`]: bounded outbound queues (drop-oldest screen, back-pressured data).
//! * [`directory`]: live and recently used session codes, each leading to a session id
//!   (the [`directory::Directory`] trait; in memory on a single node).
//! * [`registry`]: the sessions this node runs, by id.
//! * [`throttle`]: guessing protection for codes and logins.
//! * [`connlimit`]: connection caps per source and per pool, on every listener.
//! * [`accounts`], [`store`], [`history`]: operator accounts and the connection history;
//!   [`operator_cache`]: the accounts code issue checks, kept in memory until they change.
//! * [`totp`], [`audit`]: second factors; the hash-chained audit trail.
//! * [`certs`]: the certificate service (the client CA, client certificates, revocation).
//! * [`verifier`]: the one bounded pool every argon2 computation goes through.
//! * [`keys`]: keys kept outside the database (TOTP secrets at rest, the audit chain and
//!   its signed checkpoints) and the owner-only modes of the data dir.
//! * [`time`], [`hex`], [`clock`]: leaf helpers (Unix milliseconds, lower-case hex, the
//!   clock timeouts are measured by).
//! * `testing` (tests and the `test-support` feature only): PostgreSQL for tests, the
//!   audit rewrite an insider without the key could do.
//! * [`admin`]: the HTTPS admin console, its REST API, and the operations both share with
//!   `tsunagu-relay admin`.

pub mod accounts;
pub mod acme;
pub mod admin;
pub mod audit;
pub mod certs;
pub mod clock;
pub mod config;
pub mod conn;
pub mod connlimit;
pub mod directory;
pub mod grid;
pub mod hex;
pub mod history;
pub mod join;
pub mod keys;
pub mod level;
pub mod logs;
pub mod metrics;
pub mod operator_cache;
pub mod policy;
pub mod queue;
pub mod registry;
pub mod resume;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod state;
pub mod store;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod throttle;
pub mod time;
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

/// glibc's malloc settings below matter for what is allocated through glibc: everything
/// where the relay runs as a library (the tests), and C libraries' allocations (SQLite)
/// in the relay program, whose own heap is jemalloc's (see `main.rs`: it returns the
/// memory of ended sessions by itself).
///
/// Allocations at least this large get their own memory mapping, returned to the system
/// when freed. glibc's default (128 KiB, then raised dynamically up to 32 MiB once a large
/// block has been freed) lets argon2's 19 MiB blocks land in heap arenas that are never
/// given back; fixing it at 128 KiB (the default's starting value, so small allocations
/// are unchanged) keeps them mapped and unmapped per use.
pub const MMAP_THRESHOLD: usize = 128 * 1024;

/// Decides when the relay gives freed memory back to the system: after sessions have
/// ended in numbers (a wave of them closing, or the last one). Fed the live session count
/// now and then; sans-IO, so the rule is tested without an allocator.
#[derive(Debug, Default)]
pub struct GiveBack {
    /// The most sessions seen since memory was last given back.
    peak: usize,
}

impl GiveBack {
    /// Whether to give memory back now, with `live` sessions.
    pub fn observe(&mut self, live: usize) -> bool {
        self.peak = self.peak.max(live);
        let ended = self.peak - live;
        // A wave: at least 64 sessions, and an eighth of the peak, have ended since.
        let due = (live == 0 && self.peak > 0) || (ended >= 64 && ended >= self.peak / 8);
        if due {
            self.peak = live;
        }
        due
    }
}

/// Gives the whole pages of freed memory in the allocator's heaps back to the system
/// (glibc's `malloc_trim`, which also reaches the middle of heaps, not only their tops).
/// Memory a wave of ended sessions freed is spread through the heaps between what live
/// sessions still hold; without this the relay's resident size stays at its peak. Takes a
/// few milliseconds on a large heap: run it on a blocking thread. Elsewhere nothing is done.
pub fn trim_free_memory() {
    // SAFETY: malloc_trim takes a plain integer and is safe to call at any time, from any
    // thread; it only changes how the allocator holds its free memory.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Free memory at the top of an allocator heap beyond this is given back to the system.
/// glibc's default (128 KiB, and static once `M_MMAP_THRESHOLD` is set) made a streaming
/// connection's buffers — freed and taken again for every ~100 KiB forwarded — go back to
/// the kernel and be faulted in and zeroed again each time: page faults were a sixth of the
/// relay's CPU per forwarded gigabyte. 1 MiB per heap keeps them; what a flood leaves
/// beyond it still goes back.
pub const TRIM_THRESHOLD: usize = 1024 * 1024;

/// Makes the allocator give large freed blocks back to the system, so that the relay's
/// resident memory returns to its idle size after a login or password flood (every argon2
/// check takes and frees `accounts.argon2_memory_kib`), while the buffers of busy
/// connections are reused without the kernel's help. On glibc: `mallopt(M_MMAP_THRESHOLD,
/// MMAP_THRESHOLD)`, which also turns off the dynamic threshold, and
/// `mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)`. Elsewhere nothing is done. Returns whether
/// the settings took.
pub fn return_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; it takes plain integers and
        // is safe to call at any time, from any thread.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_goes_back_after_a_wave_of_ended_sessions_or_the_last_one() {
        let mut g = GiveBack::default();
        assert!(!g.observe(0), "nothing to give back before any session");
        assert!(!g.observe(1000));
        assert!(!g.observe(980), "20 ended: no wave");
        assert!(g.observe(870), "130 of 1000 ended");
        assert!(!g.observe(870), "nothing new since");
        assert!(!g.observe(2000));
        assert!(!g.observe(1800), "200 of 2000 is less than an eighth");
        assert!(g.observe(1700), "300 of 2000");
        assert!(!g.observe(1690));
        assert!(g.observe(0), "the last session ended");
        assert!(!g.observe(0));
        assert!(!g.observe(10));
        assert!(g.observe(0), "a few sessions, all ended");
    }
}
