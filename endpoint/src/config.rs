//! What both apps' configurations share: where the relay is, checked before anything is
//! dialled.

use crate::dial::{parse_relay_list, resolve_target, DialError, RelayEntry};

/// Why a configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--relay` is not `HOST[:PORT]` or a comma-separated list of them.
    #[error("{0}")]
    BadRelay(String),
    /// An empty port list.
    #[error("no relay port to try")]
    NoPorts,
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
    }
}
