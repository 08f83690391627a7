//! A standby relay for disaster recovery: besides its relays (the primary site), an endpoint
//! may be given a secondary site (`--standby-relay`). While the app runs it checks the
//! primary's health at an interval (a dial: TCP, TLS and `Hello`, then closed); after a
//! number of failed checks in a row it switches to the secondary, and it switches back only
//! once the primary has answered every check for a while, so a flapping primary does not
//! move endpoints back and forth. New connections go to the site in use first and to the
//! other after it; a live session stays where it is (a session lives on one grid, and a
//! working session is never broken to move it).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::dial::{self, DialConfig, RelayEntry};

/// Default time between two checks of the primary.
pub const DEFAULT_CHECK_EVERY: Duration = Duration::from_secs(10);
/// Default number of failed checks in a row that moves endpoints to the secondary.
pub const DEFAULT_FAILURES: u32 = 3;
/// Default time the primary must answer every check before endpoints move back to it.
pub const DEFAULT_FAILBACK_AFTER: Duration = Duration::from_secs(60);

/// Which site an endpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Site {
    /// The relays of `--relay`.
    Primary,
    /// The relays of `--standby-relay`.
    Secondary,
}

/// The standby settings of one endpoint.
#[derive(Debug, Clone)]
pub struct StandbySettings {
    /// The secondary site's relays, each with its ports.
    pub secondary: Vec<RelayEntry>,
    /// Time between two checks of the primary.
    pub check_every: Duration,
    /// Failed checks in a row that move the endpoint to the secondary.
    pub failures: u32,
    /// Time the primary must answer every check before the endpoint moves back.
    pub failback_after: Duration,
}

/// A change of site, as the user sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteChange {
    /// The site in use from now on.
    pub site: Site,
    /// Why, in words.
    pub reason: String,
}

/// Where an endpoint connects: the primary and secondary sites and which one is in use,
/// shared by every session of an app run.
#[derive(Debug)]
pub struct Standby {
    primary: Vec<RelayEntry>,
    settings: StandbySettings,
    state: Mutex<Health>,
}

/// What the checks have shown so far.
#[derive(Debug)]
struct Health {
    site: Site,
    /// Failed checks of the primary in a row.
    failed: u32,
    /// Since when the primary has answered every check (while on the secondary).
    healthy_since: Option<Instant>,
}

impl Standby {
    /// Starts on the primary.
    pub fn new(primary: Vec<RelayEntry>, settings: StandbySettings) -> Arc<Self> {
        Arc::new(Self {
            primary,
            settings,
            state: Mutex::new(Health {
                site: Site::Primary,
                failed: 0,
                healthy_since: None,
            }),
        })
    }

    /// The site in use now.
    pub fn site(&self) -> Site {
        self.health().site
    }

    /// The settings.
    pub fn settings(&self) -> &StandbySettings {
        &self.settings
    }

    /// The relays of `site`.
    pub fn relays_of(&self, site: Site) -> &[RelayEntry] {
        match site {
            Site::Primary => &self.primary,
            Site::Secondary => &self.settings.secondary,
        }
    }

    /// The order to dial a new connection in: the site in use, then the other, each entry
    /// with its site.
    pub fn dial_order(&self) -> Vec<(Site, RelayEntry)> {
        let first = self.site();
        let second = match first {
            Site::Primary => Site::Secondary,
            Site::Secondary => Site::Primary,
        };
        [first, second]
            .into_iter()
            .flat_map(|site| self.relays_of(site).iter().map(move |r| (site, r.clone())))
            .collect()
    }

    /// Takes in the result of one check of the primary made at `now`; returns the change of
    /// site it causes, if any.
    pub fn observe(&self, healthy: Result<(), String>, now: Instant) -> Option<SiteChange> {
        let mut h = self.health();
        match (h.site, healthy) {
            (Site::Primary, Ok(())) => {
                h.failed = 0;
                None
            }
            (Site::Primary, Err(e)) => {
                h.failed += 1;
                if h.failed < self.settings.failures.max(1) {
                    return None;
                }
                h.site = Site::Secondary;
                h.healthy_since = None;
                Some(SiteChange {
                    site: Site::Secondary,
                    reason: format!("the primary relay failed {} health checks in a row ({e})", h.failed),
                })
            }
            (Site::Secondary, Err(_)) => {
                h.healthy_since = None;
                None
            }
            (Site::Secondary, Ok(())) => {
                let since = *h.healthy_since.get_or_insert(now);
                if now.saturating_duration_since(since) < self.settings.failback_after {
                    return None;
                }
                h.site = Site::Primary;
                h.failed = 0;
                h.healthy_since = None;
                Some(SiteChange {
                    site: Site::Primary,
                    reason: format!(
                        "the primary relay has answered every health check for {:?}",
                        self.settings.failback_after
                    ),
                })
            }
        }
    }

    /// Checks the primary every [`StandbySettings::check_every`] until dropped, calling
    /// `changed` on every change of site. A check passes when any primary relay completes
    /// TCP, TLS and `Hello` within the template's attempt timeout.
    pub async fn watch(self: Arc<Self>, template: DialConfig, mut changed: impl FnMut(SiteChange)) {
        let mut ticks = tokio::time::interval(self.settings.check_every.max(Duration::from_millis(50)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let result = self.check(&template).await;
            if let Err(e) = &result {
                tracing::debug!(error = %e, "the primary relay failed a health check");
            }
            if let Some(change) = self.observe(result, Instant::now()) {
                tracing::warn!(site = ?change.site, reason = %change.reason, "relay site changed");
                changed(change);
            }
        }
    }

    /// One health check of the primary site.
    async fn check(&self, template: &DialConfig) -> Result<(), String> {
        let mut last = String::from("no primary relay");
        for entry in &self.primary {
            match dial::dial(&entry.dial_config(template)).await {
                Ok(conn) => {
                    drop(conn);
                    return Ok(());
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(host: &str) -> RelayEntry {
        RelayEntry {
            host: host.into(),
            ports: vec![7615],
        }
    }

    fn standby(failures: u32, failback: Duration) -> Arc<Standby> {
        Standby::new(
            vec![entry("primary")],
            StandbySettings {
                secondary: vec![entry("secondary")],
                check_every: Duration::from_secs(1),
                failures,
                failback_after: failback,
            },
        )
    }

    #[test]
    fn it_moves_after_failures_in_a_row_only() {
        let s = standby(3, Duration::from_secs(10));
        let t = Instant::now();
        assert!(s.observe(Err("down".into()), t).is_none());
        assert!(s.observe(Err("down".into()), t).is_none());
        // A passing check starts the count again.
        assert!(s.observe(Ok(()), t).is_none());
        assert!(s.observe(Err("down".into()), t).is_none());
        assert!(s.observe(Err("down".into()), t).is_none());
        let change = s.observe(Err("down".into()), t).expect("third failure in a row moves");
        assert_eq!(change.site, Site::Secondary);
        assert!(change.reason.contains("3 health checks"), "{}", change.reason);
        assert_eq!(s.site(), Site::Secondary);
        let order: Vec<_> = s.dial_order().into_iter().map(|(site, r)| (site, r.host)).collect();
        assert_eq!(
            order,
            vec![(Site::Secondary, "secondary".into()), (Site::Primary, "primary".into())]
        );
    }

    #[test]
    fn it_moves_back_only_after_the_primary_stayed_healthy() {
        let s = standby(1, Duration::from_secs(10));
        let t = Instant::now();
        s.observe(Err("down".into()), t).expect("moves");
        assert!(s.observe(Ok(()), t).is_none());
        assert!(s.observe(Ok(()), t + Duration::from_secs(9)).is_none());
        // A failure in between starts the healthy time again.
        assert!(s.observe(Err("flap".into()), t + Duration::from_secs(9)).is_none());
        assert!(s.observe(Ok(()), t + Duration::from_secs(11)).is_none());
        assert!(s.observe(Ok(()), t + Duration::from_secs(20)).is_none());
        let back = s
            .observe(Ok(()), t + Duration::from_secs(21))
            .expect("back after 10 s healthy");
        assert_eq!(back.site, Site::Primary);
        assert_eq!(s.site(), Site::Primary);
        assert_eq!(s.dial_order()[0].1.host, "primary");
    }
}
