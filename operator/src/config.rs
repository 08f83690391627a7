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
    /// The relay's CA certificate (`--ca DATA/tls/ca.pem`), trusted besides the system's
    /// store.
    pub ca: tsunagu_endpoint::dial::ExtraCa,
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
    /// Whether the client's clipboard text goes onto this machine's clipboard when it
    /// arrives (the window), besides the `clipboard` event (headless: the event alone).
    pub system_clipboard: bool,
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
        ca: impl Into<tsunagu_endpoint::dial::ExtraCa>,
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
            system_clipboard: false,
        })
    }
}

/// What the operator window remembers after a successful login, so the next start needs no
/// flags: `$XDG_CONFIG_HOME/tsunagu/operator.toml` (by default
/// `~/.config/tsunagu/operator.toml`). Never a password. Flags override it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Remembered {
    /// The relay as typed (`--relay`).
    pub relay: String,
    /// `--ports`, when given.
    pub ports: Option<Vec<u16>>,
    /// The relay's CA file (`--ca`), as an absolute path.
    pub ca: Option<PathBuf>,
    /// The operator account.
    pub user: String,
    /// The client certificate file (`--cert`), as an absolute path.
    pub cert: Option<PathBuf>,
    /// How the window shows the client's screen (`[view]`).
    pub view: Option<crate::viewer::ViewSettings>,
}

impl Remembered {
    /// Where the file is, or `None` when neither `XDG_CONFIG_HOME` nor `HOME` is set.
    pub fn path() -> Option<PathBuf> {
        let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".config"),
        };
        Some(base.join("tsunagu").join("operator.toml"))
    }

    /// The remembered settings; `Ok(None)` when there are none yet, an error naming the file
    /// when it cannot be read or is not valid.
    pub fn load() -> Result<Option<Self>, String> {
        let Some(path) = Self::path() else { return Ok(None) };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        toml::from_str(&text)
            .map(Some)
            .map_err(|e| format!("{} is not valid: {}", path.display(), e.message()))
    }

    /// Writes the file (owner-only, replaced in one step so a crash leaves the old one);
    /// returns where.
    pub fn save(&self) -> Result<PathBuf, String> {
        use std::io::Write;
        let path = Self::path().ok_or("neither XDG_CONFIG_HOME nor HOME is set")?;
        let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
        let dir = path.parent().expect("the path has a folder");
        std::fs::create_dir_all(dir).map_err(fail)?;
        let text = toml::to_string(self).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let temp = dir.join(".operator.toml.new");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temp).map_err(fail)?;
        file.write_all(
            format!("# Written by tsunagu-operator after a successful login; flags override it.\n{text}").as_bytes(),
        )
        .map_err(fail)?;
        file.sync_all().map_err(fail)?;
        std::fs::rename(&temp, &path).map_err(fail)?;
        Ok(path)
    }
}

/// `path` made absolute (relative to the current folder), so a remembered file still
/// points at it when the window is started from elsewhere.
pub fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
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
    fn remembered_settings_round_trip_and_a_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        // Each test process has its own environment; this is the only test that sets it.
        std::env::set_var("XDG_CONFIG_HOME", dir.path());
        assert_eq!(Remembered::load().unwrap(), None);
        let r = Remembered {
            relay: "relay.example.com".into(),
            ports: Some(vec![443]),
            ca: Some("/srv/ca.pem".into()),
            user: "alice".into(),
            cert: None,
            view: Some(crate::viewer::ViewSettings {
                mode: crate::viewer::Mode::Actual,
                zoom: 100,
                panel: false,
            }),
        };
        let path = r.save().unwrap();
        assert_eq!(path, dir.path().join("tsunagu/operator.toml"));
        assert_eq!(Remembered::load().unwrap(), Some(r));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        std::fs::write(&path, "relay = [").unwrap();
        assert!(Remembered::load().unwrap_err().contains("operator.toml is not valid"));
    }

    #[test]
    fn debug_hides_the_password() {
        let c = OperatorConfig::new("r:1", None, "ca.pem", "alice", "s3cret-pw").unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
