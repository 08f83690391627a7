//! Resuming a session after the connection to the relay drops, without I/O: the session's
//! resume key, the single-use token the relay hands out, and the schedule of reconnect
//! attempts (which relay of the list, after how long, until when).
//!
//! The session driver does the dialling and the waiting; everything it decides
//! comes from here, with time and randomness passed in so tests can fix both.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use tsunagu_proto::pb;

/// First backoff ceiling before the second attempt: short, since a relay node that restarts
/// or a balancer that moves us is usually back within a fraction of a second.
pub const BACKOFF_START: Duration = Duration::from_millis(200);
/// Largest backoff ceiling: past it attempts stay at most this far apart, so a relay that
/// comes back late in the window is still found in time.
pub const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// Which place in the session an endpoint holds (part of what a resume signs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The operator's place.
    Operator,
    /// The client's place.
    Client,
}

impl Role {
    /// `Resume.operator` for this role.
    pub fn is_operator(self) -> bool {
        self == Role::Operator
    }
}

/// The key pair one session resumes with: drawn fresh per session, its private half never
/// leaves this process (and is never logged: `Debug` shows the public half only).
pub struct SessionKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKey")
            .field("public", &crate::transfer::hex(self.pair.public_key().as_ref()))
            .finish()
    }
}

impl SessionKey {
    /// A fresh Ed25519 key pair from the OS CSPRNG.
    pub fn generate() -> Result<Self, String> {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| "cannot draw a resume key".to_string())?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| "cannot load the resume key".to_string())?;
        Ok(Self { pair })
    }

    /// The public half, as `RequestCode.resume_key` / `Join.resume_key` carry it.
    pub fn public_key(&self) -> Bytes {
        Bytes::copy_from_slice(self.pair.public_key().as_ref())
    }

    /// The `Resume` frame that presents `token` for this endpoint's place.
    pub fn resume_frame(&self, token: &HeldToken, role: Role) -> pb::Resume {
        let message = tsunagu_proto::resume::signed_message(&token.session_id, role.is_operator(), &token.token);
        pb::Resume {
            session_id: token.session_id.clone(),
            operator: role.is_operator(),
            token: token.token.clone(),
            signature: Bytes::copy_from_slice(self.pair.sign(&message).as_ref()),
        }
    }
}

/// The latest resume token from the relay. Single use: it is taken when presented.
#[derive(Clone, PartialEq, Eq)]
pub struct HeldToken {
    /// The session it resumes.
    pub session_id: String,
    /// The token bytes (never logged).
    pub token: Bytes,
    /// How long after a drop the relay keeps our place.
    pub window: Duration,
}

impl std::fmt::Debug for HeldToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldToken")
            .field("session_id", &self.session_id)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl From<pb::ResumeToken> for HeldToken {
    fn from(t: pb::ResumeToken) -> Self {
        Self {
            session_id: t.session_id,
            token: t.token,
            window: Duration::from_millis(t.window_ms),
        }
    }
}

/// Exponential backoff with full jitter: the `n`-th wait is uniform in `[0, min(cap, start *
/// 2^n)]`, so endpoints cut off together by one relay do not all come back at once.
#[derive(Debug, Clone)]
pub struct Backoff {
    start: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `start`, never above `cap`.
    pub fn new(start: Duration, cap: Duration) -> Self {
        Self { start, cap, attempt: 0 }
    }

    /// The next wait; `random` is any uniformly random number (the caller draws it).
    pub fn next(&mut self, random: u64) -> Duration {
        let ceiling = self
            .start
            .checked_mul(1u32.checked_shl(self.attempt).unwrap_or(u32::MAX))
            .unwrap_or(self.cap)
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let ceiling_ms = ceiling.as_millis() as u64;
        Duration::from_millis(random % (ceiling_ms + 1))
    }
}

/// One reconnect attempt: wait `delay`, then dial relay `relay` of the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Index into the relay list.
    pub relay: usize,
    /// How long to wait first.
    pub delay: Duration,
    /// 1 for the first attempt of this reconnect.
    pub number: u32,
}

/// The reconnect attempts after one loss: relays of the list in turn, waits from a
/// [`Backoff`], until the resume window since the loss is over.
#[derive(Debug, Clone)]
pub struct ReconnectPlan {
    deadline: Instant,
    relays: usize,
    next_relay: usize,
    attempts: u32,
    backoff: Backoff,
}

impl ReconnectPlan {
    /// The link was lost at `lost_at`; the relay keeps our place for `window`; `relays`
    /// entries are in the list (at least one is assumed).
    pub fn new(lost_at: Instant, window: Duration, relays: usize) -> Self {
        Self {
            deadline: lost_at + window,
            relays: relays.max(1),
            next_relay: 0,
            attempts: 0,
            backoff: Backoff::new(BACKOFF_START, BACKOFF_CAP),
        }
    }

    /// When the window ends.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The next attempt at `now`, or `None` once the window is over (an attempt whose wait
    /// would end past the window is not made).
    pub fn next(&mut self, now: Instant, random: u64) -> Option<Attempt> {
        if now >= self.deadline {
            return None;
        }
        let delay = self.backoff.next(random).min(self.deadline - now);
        let relay = self.next_relay;
        self.next_relay = (self.next_relay + 1) % self.relays;
        self.attempts += 1;
        Some(Attempt {
            relay,
            delay,
            number: self.attempts,
        })
    }

    /// Time left in the window at `now`.
    pub fn remaining(&self, now: Instant) -> Duration {
        self.deadline.saturating_duration_since(now)
    }
}

/// What the user sees of a dropped connection and its resume (both apps print these as they
/// are: `{"event":"reconnecting",...}`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ConnectionEvent {
    /// The connection to the relay dropped and the app is reconnecting by itself. Once per
    /// loss, not per dial: `attempt` counts the losses of this session (1 for the first),
    /// `window_ms` is how long the relay keeps our place, `reason` what broke.
    Reconnecting {
        /// Which reconnect of this session this is, from 1.
        attempt: u32,
        /// How long the relay keeps our place, in milliseconds.
        window_ms: u64,
        /// What broke.
        reason: String,
    },
    /// The session goes on over a new connection.
    Reconnected {
        /// The session.
        session_id: String,
        /// Resumes of this session so far, by either side (the relay's count).
        resumes: u32,
        /// The relay now connected, `HOST:PORT`.
        relay: String,
    },
    /// The other side's connection dropped; the relay waits for it to come back.
    PeerAway,
    /// The other side is back.
    PeerBack,
    /// Where the app connected, when it has a standby relay: the site and the relay that
    /// answered (`HOST:PORT`).
    RelaySite {
        /// The site the connection is on.
        site: crate::standby::Site,
        /// The relay that answered, `HOST:PORT`.
        relay: String,
    },
    /// The health checks moved the app to the other site: new connections go there first.
    /// A live session stays where it is.
    RelaySwitched {
        /// The site in use from now on.
        site: crate::standby::Site,
        /// Its first relay, `HOST:PORT`.
        relay: String,
        /// Why, in words.
        reason: String,
    },
}

/// Why the session is being brought back in step (the driver's `App::on_resync`).
#[derive(Debug, Clone)]
pub enum Resync {
    /// Our connection was resumed; the relay's answer.
    Resumed(pb::Resumed),
    /// The other side's connection was resumed.
    PeerBack,
}

/// A random number for the jitter (the OS CSPRNG; a failure gives no jitter, not an error).
pub fn jitter_seed() -> u64 {
    let mut b = [0u8; 8];
    match getrandom::fill(&mut b) {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => u64::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{UnparsedPublicKey, ED25519};

    #[test]
    fn backoff_doubles_to_the_cap_with_full_jitter() {
        // A draw equal to the ceiling waits the whole ceiling; one past it wraps to zero:
        // ceilings 200, 400, 800, 1600, then the 2000 cap.
        let mut b = Backoff::new(BACKOFF_START, BACKOFF_CAP);
        let mut wrap = Backoff::new(BACKOFF_START, BACKOFF_CAP);
        for ceiling in [200u64, 400, 800, 1600, 2000, 2000, 2000] {
            assert_eq!(b.next(ceiling), Duration::from_millis(ceiling));
            assert_eq!(wrap.next(ceiling + 1), Duration::ZERO);
        }
        // Full jitter: a zero draw waits nothing; a wait is never above the cap.
        let mut b = Backoff::new(BACKOFF_START, BACKOFF_CAP);
        assert_eq!(b.next(0), Duration::ZERO);
        for r in 0..1000u64 {
            assert!(b.next(r.wrapping_mul(0x9E37_79B9_7F4A_7C15)) <= BACKOFF_CAP);
        }
    }

    #[test]
    fn the_plan_cycles_relays_until_the_window_ends() {
        let t0 = Instant::now();
        let mut plan = ReconnectPlan::new(t0, Duration::from_secs(5), 3);
        let relays: Vec<usize> = (0..5).map(|_| plan.next(t0, 7).unwrap().relay).collect();
        assert_eq!(relays, vec![0, 1, 2, 0, 1]);
        // No wait runs past the window; after it, no attempt.
        let near_end = t0 + Duration::from_millis(4_900);
        let last = plan.next(near_end, u64::MAX).unwrap();
        assert!(last.delay <= Duration::from_millis(100));
        assert_eq!(last.number, 6);
        assert_eq!(plan.next(t0 + Duration::from_secs(5), 1), None);
        assert_eq!(plan.remaining(t0 + Duration::from_secs(9)), Duration::ZERO);
    }

    #[test]
    fn a_resume_signature_verifies_with_the_sent_key_only() {
        let key = SessionKey::generate().unwrap();
        let token = HeldToken {
            session_id: "s-1".into(),
            token: Bytes::from_static(&[9; tsunagu_proto::resume::TOKEN_LEN]),
            window: Duration::from_secs(30),
        };
        let frame = key.resume_frame(&token, Role::Client);
        assert!(!frame.operator);
        assert_eq!(frame.signature.len(), tsunagu_proto::resume::SIGNATURE_LEN);
        assert_eq!(key.public_key().len(), tsunagu_proto::resume::KEY_LEN);
        let public = UnparsedPublicKey::new(&ED25519, key.public_key());
        let signed = tsunagu_proto::resume::signed_message("s-1", false, &token.token);
        assert!(public.verify(&signed, &frame.signature).is_ok());
        // Not valid for the operator's place, nor under another session's key.
        let as_operator = tsunagu_proto::resume::signed_message("s-1", true, &token.token);
        assert!(public.verify(&as_operator, &frame.signature).is_err());
        let other = SessionKey::generate().unwrap();
        assert_ne!(other.public_key(), key.public_key(), "each session draws its own key");
        // The Debug forms keep the token and the private key out of logs.
        assert!(!format!("{token:?}").contains("9, 9"));
        assert!(format!("{key:?}").contains(&crate::transfer::hex(&key.public_key())));
    }
}
