//! What both apps' configurations share: where the relay is, checked before anything is
//! dialled.

use crate::dial::{resolve_target, DialError};

/// Why a configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--relay` is not `HOST[:PORT]`.
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
    }
}
