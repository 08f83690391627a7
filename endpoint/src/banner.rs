//! What both windows show about the connection, without any drawing: a banner while the app
//! reconnects, a short "restored" once it is back, and one while the other side is away.
//! The windows draw it with `gui::connection_banner` (feature `gui`).

use std::time::{Duration, Instant};

use crate::lang::{Lang, Texts};
use crate::resume::ConnectionEvent;
use crate::standby::Site;

/// How long "Connection restored" stays up: long enough to read, short enough not to
/// linger over the session.
pub const RESTORED_SHOWN: Duration = Duration::from_secs(5);

/// The banner texts both windows share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionText {
    /// Our connection dropped; reconnecting.
    Reconnecting,
    /// Our connection is back.
    Restored,
    /// The other side's connection dropped.
    PeerAway,
    /// The app uses the standby (secondary) relay, as the primary does not answer.
    OnStandby,
    /// The primary relay answers again; new sessions go to it.
    BackOnPrimary,
}

impl Texts for ConnectionText {
    fn text(self, lang: Lang) -> &'static str {
        use ConnectionText as T;
        match (self, lang) {
            (T::Reconnecting, Lang::En) => "Connection lost — reconnecting…",
            (T::Reconnecting, Lang::Ja) => "接続が切れました — 再接続しています…",
            (T::Restored, Lang::En) => "Connection restored",
            (T::Restored, Lang::Ja) => "接続が復旧しました",
            (T::PeerAway, Lang::En) => "The other side's connection dropped — waiting for it",
            (T::PeerAway, Lang::Ja) => "相手の接続が切れました — 再接続を待っています",
            (T::OnStandby, Lang::En) => "Using the standby relay — the primary relay is not answering",
            (T::OnStandby, Lang::Ja) => "予備の中継サーバーを使っています — 主の中継サーバーが応答しません",
            (T::BackOnPrimary, Lang::En) => "The primary relay answers again — new sessions use it",
            (T::BackOnPrimary, Lang::Ja) => "主の中継サーバーが復旧しました — 新しいセッションはそちらを使います",
        }
    }
}

impl ConnectionText {
    /// Whether this is a warning (the session is held up) rather than good news.
    pub fn is_warning(self) -> bool {
        !matches!(self, ConnectionText::Restored | ConnectionText::BackOnPrimary)
    }
}

/// The connection banner's state, fed the session's connection events.
#[derive(Debug, Clone, Default)]
pub struct ConnectionBanner {
    reconnecting: bool,
    peer_away: bool,
    restored_until: Option<Instant>,
    /// The standby relay is in use (kept across sessions: it is the app's, not the session's).
    on_standby: bool,
    back_on_primary_until: Option<Instant>,
}

impl ConnectionBanner {
    /// No banner.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes in a connection event that arrived at `now`.
    pub fn on_event(&mut self, event: &ConnectionEvent, now: Instant) {
        match event {
            ConnectionEvent::Reconnecting { .. } => {
                self.reconnecting = true;
                self.restored_until = None;
            }
            ConnectionEvent::Reconnected { .. } => {
                self.reconnecting = false;
                self.restored_until = Some(now + RESTORED_SHOWN);
            }
            ConnectionEvent::PeerAway => self.peer_away = true,
            ConnectionEvent::PeerBack => self.peer_away = false,
            ConnectionEvent::RelaySite { site, .. } => self.on_standby = *site == Site::Secondary,
            ConnectionEvent::RelaySwitched { site, .. } => {
                self.on_standby = *site == Site::Secondary;
                self.back_on_primary_until = (*site == Site::Primary).then(|| now + RESTORED_SHOWN);
            }
        }
    }

    /// The session is over (or a new one starts): no banner about it. Which relay site is in
    /// use stays, as it outlives sessions.
    pub fn clear(&mut self) {
        *self = Self {
            on_standby: self.on_standby,
            ..Self::default()
        };
    }

    /// What to show at `now`: our own reconnect first, then the other side's absence, then
    /// a recent restore.
    pub fn current(&self, now: Instant) -> Option<ConnectionText> {
        if self.reconnecting {
            Some(ConnectionText::Reconnecting)
        } else if self.peer_away {
            Some(ConnectionText::PeerAway)
        } else if self.restored_until.is_some_and(|until| now < until) {
            Some(ConnectionText::Restored)
        } else if self.back_on_primary_until.is_some_and(|until| now < until) {
            Some(ConnectionText::BackOnPrimary)
        } else if self.on_standby {
            Some(ConnectionText::OnStandby)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reconnecting() -> ConnectionEvent {
        ConnectionEvent::Reconnecting {
            attempt: 1,
            window_ms: 30_000,
            reason: "the relay closed the connection".into(),
        }
    }

    #[test]
    fn the_banner_follows_the_connection() {
        let t0 = Instant::now();
        let mut b = ConnectionBanner::new();
        assert_eq!(b.current(t0), None);
        b.on_event(&reconnecting(), t0);
        assert_eq!(b.current(t0), Some(ConnectionText::Reconnecting));
        // While we reconnect, the peer's absence does not hide our own.
        b.on_event(&ConnectionEvent::PeerAway, t0);
        assert_eq!(b.current(t0), Some(ConnectionText::Reconnecting));
        let back = ConnectionEvent::Reconnected {
            session_id: "s".into(),
            resumes: 1,
            relay: "r:7615".into(),
        };
        b.on_event(&back, t0);
        assert_eq!(b.current(t0), Some(ConnectionText::PeerAway));
        b.on_event(&ConnectionEvent::PeerBack, t0);
        assert_eq!(b.current(t0), Some(ConnectionText::Restored));
        assert_eq!(b.current(t0 + RESTORED_SHOWN), None, "restored shows for a while only");
        b.on_event(&ConnectionEvent::PeerAway, t0);
        b.clear();
        assert_eq!(b.current(t0), None);
    }

    #[test]
    fn the_banner_shows_the_standby_site_across_sessions() {
        let t0 = Instant::now();
        let mut b = ConnectionBanner::new();
        let switched = |site| ConnectionEvent::RelaySwitched {
            site,
            relay: "r:7615".into(),
            reason: "checks".into(),
        };
        b.on_event(&switched(Site::Secondary), t0);
        assert_eq!(b.current(t0), Some(ConnectionText::OnStandby));
        b.clear();
        assert_eq!(
            b.current(t0),
            Some(ConnectionText::OnStandby),
            "the site outlives the session"
        );
        b.on_event(&reconnecting(), t0);
        assert_eq!(b.current(t0), Some(ConnectionText::Reconnecting));
        b.clear();
        b.on_event(&switched(Site::Primary), t0);
        assert_eq!(b.current(t0), Some(ConnectionText::BackOnPrimary));
        assert_eq!(b.current(t0 + RESTORED_SHOWN), None);
    }

    #[test]
    fn both_languages_have_every_banner() {
        for t in [
            ConnectionText::Reconnecting,
            ConnectionText::Restored,
            ConnectionText::PeerAway,
            ConnectionText::OnStandby,
            ConnectionText::BackOnPrimary,
        ] {
            let (en, ja) = (Lang::En.t(t), Lang::Ja.t(t));
            assert!(!en.is_empty() && !ja.is_empty() && en != ja);
            assert!(!ja.is_ascii(), "{ja:?} is Japanese");
        }
        assert_eq!(
            Lang::En.t(ConnectionText::Reconnecting),
            "Connection lost — reconnecting…"
        );
        assert!(!ConnectionText::Restored.is_warning());
    }
}
