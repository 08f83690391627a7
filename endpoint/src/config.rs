//! What both apps' configurations share: where the relay is, checked before anything is
//! dialled.

use std::sync::Arc;
use std::time::Duration;

use crate::dial::{parse_relay_list, resolve_target, DialError, RelayEntry};
use crate::standby::{Standby, StandbySettings};

/// Why a configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--relay` is not `HOST[:PORT]` or a comma-separated list of them.
    #[error("{0}")]
    BadRelay(String),
    /// An empty port list.
    #[error("no relay port to try")]
    NoPorts,
    /// A standby setting out of range.
    #[error("{0}")]
    BadStandby(String),
}

/// Resolves `--relay HOST[:PORT]` and `--ports` (see [`resolve_target`]).
pub fn relay_target(spec: &str, ports: Option<Vec<u16>>) -> Result<(String, Vec<u16>), ConfigError> {
    resolve_target(spec, ports).map_err(|e| match e {
        DialError::NoPorts => ConfigError::NoPorts,
        other => ConfigError::BadRelay(other.to_string()),
    })
}

/// Resolves `--relay HOST[:PORT],HOST[:PORT],...` and `--ports` (see [`parse_relay_list`]):
/// the relays to dial, and to reconnect to, in order.
pub fn relay_list(spec: &str, ports: Option<Vec<u16>>) -> Result<Vec<RelayEntry>, ConfigError> {
    parse_relay_list(spec, ports).map_err(|e| match e {
        DialError::NoPorts => ConfigError::NoPorts,
        other => ConfigError::BadRelay(other.to_string()),
    })
}

/// The standby relay options both apps take (`--standby-relay` and its health checks).
#[cfg(feature = "cli")]
#[derive(Debug, Clone, clap::Args)]
pub struct StandbyArgs {
    /// A standby (secondary) relay or grid, HOST[:PORT] or a comma-separated list: used
    /// when the primary (--relay) fails --health-failures checks in a row, until it has
    /// answered every check for --failback-after seconds. Takes --ports as --relay does.
    #[arg(long, default_value = "")]
    pub standby_relay: String,
    /// Seconds between two health checks of the primary relay (fractions allowed).
    #[arg(long, default_value_t = crate::standby::DEFAULT_CHECK_EVERY.as_secs_f64())]
    pub health_every: f64,
    /// Failed health checks in a row that move the app to the standby relay.
    #[arg(long, default_value_t = crate::standby::DEFAULT_FAILURES)]
    pub health_failures: u32,
    /// Seconds the primary must answer every check before the app moves back to it.
    #[arg(long, default_value_t = crate::standby::DEFAULT_FAILBACK_AFTER.as_secs_f64())]
    pub failback_after: f64,
}

#[cfg(feature = "cli")]
impl StandbyArgs {
    /// The standby for the primary `relays`; `None` without `--standby-relay`.
    pub fn standby(&self, relays: &[RelayEntry], ports: Option<Vec<u16>>) -> Result<Option<Arc<Standby>>, ConfigError> {
        standby(
            relays,
            &self.standby_relay,
            ports,
            (self.health_every, self.health_failures, self.failback_after),
        )
    }
}

/// The standby for the primary `relays` from `--standby-relay SPEC` (empty: none) and the
/// health check settings (seconds between checks, failures in a row, seconds healthy before
/// moving back).
pub fn standby(
    relays: &[RelayEntry],
    spec: &str,
    ports: Option<Vec<u16>>,
    (every, failures, failback): (f64, u32, f64),
) -> Result<Option<Arc<Standby>>, ConfigError> {
    if spec.trim().is_empty() {
        return Ok(None);
    }
    let secondary = relay_list(spec, ports)?;
    let seconds = |name: &str, v: f64, min: f64| {
        if v.is_finite() && (min..=86_400.0).contains(&v) {
            Ok(Duration::from_secs_f64(v))
        } else {
            Err(ConfigError::BadStandby(format!(
                "{name} must be between {min} and 86400 seconds, not {v}"
            )))
        }
    };
    if failures == 0 {
        return Err(ConfigError::BadStandby("--health-failures must be at least 1".into()));
    }
    Ok(Some(Standby::new(
        relays.to_vec(),
        StandbySettings {
            secondary,
            check_every: seconds("--health-every", every, 0.05)?,
            failures,
            failback_after: seconds("--failback-after", failback, 0.0)?,
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_spec_gives_host_and_ports() {
        assert_eq!(
            relay_target("127.0.0.1:9000", None).unwrap(),
            ("127.0.0.1".into(), vec![9000])
        );
        assert!(matches!(relay_target("", None), Err(ConfigError::BadRelay(_))));
        assert!(matches!(relay_target("relay", Some(vec![])), Err(ConfigError::NoPorts)));
        assert_eq!(relay_list("a:1,b:2", None).unwrap().len(), 2);
        assert!(matches!(relay_list("a,", None), Err(ConfigError::BadRelay(_))));
        assert!(matches!(relay_list("a,b", Some(vec![])), Err(ConfigError::NoPorts)));
        let primary = relay_list("a:1", None).unwrap();
        assert!(standby(&primary, "", None, (10.0, 3, 60.0)).unwrap().is_none());
        let s = standby(&primary, "b:2,c:3", None, (0.5, 2, 5.0)).unwrap().unwrap();
        assert_eq!(s.settings().secondary.len(), 2);
        assert_eq!(s.settings().check_every, Duration::from_millis(500));
        assert!(matches!(
            standby(&primary, "b", None, (0.0, 3, 60.0)),
            Err(ConfigError::BadStandby(_))
        ));
        assert!(matches!(
            standby(&primary, "b", None, (10.0, 0, 60.0)),
            Err(ConfigError::BadStandby(_))
        ));
    }
}
