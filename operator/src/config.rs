//! The operator's configuration, validated before anything is dialled.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use tsunagu_endpoint::dial::DEFAULT_ATTEMPT_TIMEOUT;
use tsunagu_proto::PermissionSet;

/// Environment variable holding the operator's password (never a flag: flags show in `ps`).
pub const PASSWORD_ENV: &str = "TSUNAGU_PASSWORD";

/// Environment variable holding the import password of the `--cert` file.
pub const CERT_PASSWORD_ENV: &str = "TSUNAGU_CERT_PASSWORD";

/// Every wait on the relay, with its limit.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// One port attempt: TCP connect, TLS handshake, `Hello`.
    pub attempt: Duration,
    /// Relay silence that counts as a lost connection. The relay pings every 15 s, so 45 s is
    /// three missed pings.
    pub idle: Duration,
    /// Waiting for the answer to `Login` and to `RequestCode` (password hashing on the relay
    /// takes a moment; throttling may delay the answer).
    pub step: Duration,
    /// One frame write.
    pub write: Duration,
    /// Waiting for `Ended` after sending `End`.
    pub end: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            attempt: DEFAULT_ATTEMPT_TIMEOUT,
            idle: Duration::from_secs(45),
            step: Duration::from_secs(15),
            write: Duration::from_secs(10),
            end: Duration::from_secs(5),
        }
    }
}

/// Everything [`crate::run`] needs.
#[derive(Clone)]
pub struct OperatorConfig {
    /// The relays (`--relay`, possibly a list), each with its ports in order: dialled in
    /// order, and in turn to resume after a drop.
    pub relays: Vec<tsunagu_endpoint::dial::RelayEntry>,
    /// PEM file with the relay's CA certificate (`DATA/tls/ca.pem`).
    pub ca: PathBuf,
    /// Operator account name.
    pub user: String,
    /// Operator password (not shown by `Debug`).
    pub password: String,
    /// Permissions to ask the client for.
    pub permissions: PermissionSet,
    /// Waits on the relay.
    pub timeouts: Timeouts,
    /// Largest frame accepted or sent.
    pub max_frame: usize,
    /// One-time code for 2-step login, when the account requires one.
    pub totp: String,
    /// Where a viewer takes decoded pictures from (the GUI); `None` headless.
    pub picture: Option<crate::picture::PictureSink>,
    /// The standby relay site (`--standby-relay`), shared by the app's sessions.
    pub standby: Option<std::sync::Arc<tsunagu_endpoint::standby::Standby>>,
    /// The client certificate presented at login (`--cert`), when the account needs one.
    pub identity: Option<std::sync::Arc<tsunagu_endpoint::dial::ClientIdentity>>,
    /// Its file and import password, so it can renew itself in place.
    pub cert_file: Option<tsunagu_endpoint::renew::CertFile>,
}

impl fmt::Debug for OperatorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperatorConfig")
            .field("relays", &self.relays)
            .field("ca", &self.ca)
            .field("user", &self.user)
            .field("password", &"********")
            .field("permissions", &self.permissions)
            .field("timeouts", &self.timeouts)
            .field("max_frame", &self.max_frame)
            .field("totp", &if self.totp.is_empty() { "" } else { "******" })
            .field("standby", &self.standby)
            .field("identity", &self.identity)
            .field("cert_file", &self.cert_file)
            .finish()
    }
}

pub use tsunagu_endpoint::config::{relay_list, relay_target, ConfigError};

impl OperatorConfig {
    /// A configuration asking for all permissions, with the default timeouts.
    pub fn new(
        relay: &str,
        ports: Option<Vec<u16>>,
        ca: impl Into<PathBuf>,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            relays: relay_list(relay, ports)?,
            ca: ca.into(),
            user: user.into(),
            password: password.into(),
            permissions: PermissionSet::ALL,
            timeouts: Timeouts::default(),
            max_frame: tsunagu_proto::limits::DEFAULT_MAX_FRAME,
            totp: String::new(),
            picture: None,
            standby: None,
            identity: None,
            cert_file: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_follow_the_relay_spec() {
        assert_eq!(
            relay_target("127.0.0.1:9000", None).unwrap(),
            ("127.0.0.1".into(), vec![9000])
        );
    }

    #[test]
    fn debug_hides_the_password() {
        let c = OperatorConfig::new("r:1", None, "ca.pem", "alice", "s3cret-pw").unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
