//! Liveness of a connection in the session phase, sans-IO: when the relay pings a quiet
//! link (keepalive) and when it gives up on a silent peer (idle). The shell reports each
//! frame it read and each write it flushed, with the time, and sleeps until
//! [`Liveness::poll_timeout`]; [`Liveness::handle_timeout`] then says what is due. The time
//! is always passed in, so tests run it on plain `Instant`s.
//!
//! Any frame from the peer proves it alive (a `Pong`, a `Ping`, data alike); any write of
//! ours keeps the link busy enough that no `Ping` is needed.

use std::time::{Duration, Instant};

/// What is due when the deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing was written for the keepalive interval: send a `Ping` (the machine counts it
    /// as sent, so the next one is due a keepalive interval later unless the shell reports
    /// a write sooner).
    SendPing,
    /// Nothing was read for the idle timeout: the peer is gone; end its session as
    /// `idle_timeout`.
    IdleOut,
}

/// Keepalive and idle decisions of one session-phase connection.
#[derive(Debug, Clone)]
pub struct Liveness {
    /// Silence from the peer that ends it (`timeouts.idle`).
    idle: Duration,
    /// Quiet on our side after which a `Ping` goes out (`timeouts.keepalive`).
    keepalive: Duration,
    last_received: Instant,
    last_sent: Instant,
    /// Set once the peer idled out; nothing more is due after that.
    idled_out: bool,
}

impl Liveness {
    /// A connection entering the session phase at `now`: both clocks start there.
    pub fn new(idle: Duration, keepalive: Duration, now: Instant) -> Self {
        Self {
            idle,
            keepalive,
            last_received: now,
            last_sent: now,
            idled_out: false,
        }
    }

    /// A frame arrived from the peer at `now`.
    pub fn on_received(&mut self, now: Instant) {
        self.last_received = self.last_received.max(now);
    }

    /// Frames were written to the peer (and flushed) at `now`.
    pub fn on_sent(&mut self, now: Instant) {
        self.last_sent = self.last_sent.max(now);
    }

    /// When [`Liveness::handle_timeout`] must next be called; `None` once the peer idled
    /// out. Reports of frames only ever move it later, so a shell that sleeps until an older
    /// deadline merely wakes early and asks again.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.idled_out {
            return None;
        }
        Some((self.last_received + self.idle).min(self.last_sent + self.keepalive))
    }

    /// Time is `now`: what is due, if anything. Idleness wins over a due `Ping`: a peer
    /// that is gone is not pinged.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Due> {
        if self.idled_out {
            return None;
        }
        if now >= self.last_received + self.idle {
            self.idled_out = true;
            return Some(Due::IdleOut);
        }
        if now >= self.last_sent + self.keepalive {
            self.last_sent = now;
            return Some(Due::SendPing);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The relay's defaults (`timeouts.idle`, `timeouts.keepalive`).
    const IDLE: Duration = Duration::from_secs(45);
    const KEEPALIVE: Duration = Duration::from_secs(15);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_quiet_link_is_pinged_every_keepalive_interval() {
        let t0 = Instant::now();
        let mut l = Liveness::new(IDLE, KEEPALIVE, t0);
        assert_eq!(l.poll_timeout(), Some(t0 + KEEPALIVE));
        assert_eq!(l.handle_timeout(t0 + secs(14)), None, "not due yet");
        assert_eq!(l.handle_timeout(t0 + KEEPALIVE), Some(Due::SendPing));
        assert_eq!(l.poll_timeout(), Some(t0 + 2 * KEEPALIVE), "the ping counts as sent");
        // The peer answers each ping, so it never idles out.
        for n in 1..=10u32 {
            l.on_received(t0 + KEEPALIVE * n + Duration::from_millis(5));
            assert_eq!(l.handle_timeout(t0 + KEEPALIVE * (n + 1)), Some(Due::SendPing));
        }
    }

    #[test]
    fn writes_put_the_ping_off() {
        let t0 = Instant::now();
        let mut l = Liveness::new(IDLE, KEEPALIVE, t0);
        l.on_sent(t0 + secs(10));
        l.on_received(t0 + secs(10));
        assert_eq!(l.handle_timeout(t0 + KEEPALIVE), None, "woke early: nothing due");
        assert_eq!(l.poll_timeout(), Some(t0 + secs(25)));
        assert_eq!(l.handle_timeout(t0 + secs(25)), Some(Due::SendPing));
    }

    #[test]
    fn a_silent_peer_idles_out_once_even_while_we_keep_writing() {
        let t0 = Instant::now();
        let mut l = Liveness::new(IDLE, KEEPALIVE, t0);
        // We stream frames to it all the time, it says nothing.
        for s in 1..45 {
            l.on_sent(t0 + secs(s));
            assert_eq!(l.handle_timeout(t0 + secs(s)), None, "at {s} s");
        }
        assert_eq!(l.poll_timeout(), Some(t0 + IDLE));
        assert_eq!(l.handle_timeout(t0 + IDLE), Some(Due::IdleOut));
        assert_eq!(l.poll_timeout(), None, "nothing more is due");
        assert_eq!(l.handle_timeout(t0 + secs(120)), None);
    }

    #[test]
    fn idleness_wins_over_a_due_ping() {
        let t0 = Instant::now();
        let mut l = Liveness::new(IDLE, KEEPALIVE, t0);
        // A shell that overslept both deadlines: the peer is gone, not pinged.
        assert_eq!(l.handle_timeout(t0 + secs(60)), Some(Due::IdleOut));
    }

    #[test]
    fn any_frame_from_the_peer_keeps_it_alive() {
        let t0 = Instant::now();
        let mut l = Liveness::new(IDLE, KEEPALIVE, t0);
        // It only ever sends its own pings, every 30 s, and never reads a thing of ours.
        let mut pings = 0;
        for s in 1..=300u64 {
            let now = t0 + secs(s);
            if s % 30 == 0 {
                l.on_received(now);
            }
            match l.handle_timeout(now) {
                Some(Due::IdleOut) => panic!("idled out at {s} s"),
                Some(Due::SendPing) => pings += 1,
                None => {}
            }
        }
        assert_eq!(pings, 20, "one of ours every 15 s");
    }

    #[test]
    fn reports_out_of_order_never_move_the_clocks_back() {
        let t0 = Instant::now();
        let mut l = Liveness::new(IDLE, KEEPALIVE, t0 + secs(5));
        l.on_received(t0);
        l.on_sent(t0);
        assert_eq!(l.poll_timeout(), Some(t0 + secs(5) + KEEPALIVE));
    }
}
