//! Relay configuration: every setting has a documented default, can be set in a TOML file
//! (`--config`), and is validated before any port is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The whole relay configuration. `Config::default()` is what `tsunagu-relay serve` runs
/// with when no file is given.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the relay keeps its certificates (`tls/`) and database. Default `./tsunagu-data`.
    pub data_dir: PathBuf,
    /// Addresses of the endpoint listeners; all speak the same TLS protocol.
    /// Default `0.0.0.0:7615`, `0.0.0.0:443`, `0.0.0.0:80`.
    pub listen: Vec<SocketAddr>,
    pub tls: TlsConfig,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// Wrong session codes.
    pub throttle: ThrottleConfig,
    /// Wrong operator passwords and TOTP codes; the scope budget is per account.
    pub login_throttle: ThrottleConfig,
    pub accounts: AccountsConfig,
    pub database: DatabaseConfig,
    pub admin: AdminConfig,
    pub secrets: SecretsConfig,
    /// The certificate service (client certificates for operators and admins).
    pub certs: CertsConfig,
    /// The public download page on the relay ports (`/join`).
    pub join: JoinPageConfig,
    /// Set on every node of a grid (see docs/grid.md); unset runs one node on its own.
    pub cluster: Option<ClusterConfig>,
}

/// A node of a grid: the shared Redis, this node's name, where other nodes reach it over
/// QUIC and the cluster CA that node certificates chain to. Every node of a grid also
/// shares `database.url`, `tls.ca_file`/`tls.ca_key_file` and the `[secrets]` key files.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name, unique in the grid: 1 to 32 of `a-z`, `0-9` and `-`.
    pub node: String,
    /// The shared Redis (`redis://[:password@]host:port[/db]` or `rediss://`). Never
    /// logged: it may hold a password.
    pub redis_url: String,
    /// Prefix of every Redis key of this grid, so several grids (or tests) share one
    /// Redis. Default `tsunagu:`.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// UDP address the node-to-node QUIC listener binds. Default `0.0.0.0:7616`.
    #[serde(default = "default_quic_listen")]
    pub quic_listen: SocketAddr,
    /// Where other nodes reach this node's QUIC listener. Default `quic_listen`, which
    /// must then name a concrete address. Port 0 in either means the port bound at start.
    #[serde(default)]
    pub quic_advertise: Option<SocketAddr>,
    /// The cluster CA certificate (PEM): a node accepts a peer node only with a node
    /// certificate chained to it.
    pub ca_file: PathBuf,
    /// The cluster CA's private key (PEM): each node signs its own node certificate with
    /// it at start. Keep it as private as the database password.
    pub ca_key_file: PathBuf,
    /// How often a node tells Redis it is alive and re-asserts its codes and sessions.
    /// Default 1 s.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat: Duration,
    /// A node not heard from for this long is taken as gone. Default 5 s; more than
    /// twice `heartbeat`.
    #[serde(default = "default_node_ttl", with = "humantime_serde")]
    pub node_ttl: Duration,
    /// The longest a Redis call may take before the request it serves fails as
    /// unavailable. Default 1 s.
    #[serde(default = "default_redis_timeout", with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// The longest opening a bridge to another node may take (QUIC handshake, the
    /// session's header and the peer's acknowledgement), and the longest an incoming
    /// bridge stream may take to send its header. Default 2 s.
    #[serde(default = "default_bridge_timeout", with = "humantime_serde")]
    pub bridge_timeout: Duration,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The Redis URL may carry a password: show only that it is set.
        f.debug_struct("ClusterConfig")
            .field("node", &self.node)
            .field("redis_url", &"<set>")
            .field("key_prefix", &self.key_prefix)
            .field("quic_listen", &self.quic_listen)
            .field("quic_advertise", &self.quic_advertise)
            .field("ca_file", &self.ca_file)
            .field("ca_key_file", &self.ca_key_file)
            .field("heartbeat", &self.heartbeat)
            .field("node_ttl", &self.node_ttl)
            .field("redis_timeout", &self.redis_timeout)
            .field("bridge_timeout", &self.bridge_timeout)
            .finish()
    }
}

impl ClusterConfig {
    /// A cluster section with every default, for `node` on `redis_url` (tests, the CLI).
    pub fn new(node: &str, redis_url: &str, ca_file: PathBuf, ca_key_file: PathBuf) -> Self {
        Self {
            node: node.to_string(),
            redis_url: redis_url.to_string(),
            key_prefix: default_key_prefix(),
            quic_listen: default_quic_listen(),
            quic_advertise: None,
            ca_file,
            ca_key_file,
            heartbeat: default_heartbeat(),
            node_ttl: default_node_ttl(),
            redis_timeout: default_redis_timeout(),
            bridge_timeout: default_bridge_timeout(),
        }
    }

    /// Where other nodes reach this one.
    pub fn advertised(&self) -> SocketAddr {
        self.quic_advertise.unwrap_or(self.quic_listen)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |setting, reason: &str| {
            Err(ConfigError::Invalid {
                setting,
                reason: reason.to_string(),
            })
        };
        let name_ok = !self.node.is_empty()
            && self.node.len() <= 32
            && self
                .node
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return invalid("cluster.node", "1 to 32 of a-z, 0-9 and -");
        }
        if !(self.redis_url.starts_with("redis://") || self.redis_url.starts_with("rediss://")) {
            return invalid("cluster.redis_url", "must be a redis:// or rediss:// URL");
        }
        if self.key_prefix.is_empty() || self.key_prefix.len() > 64 || self.key_prefix.contains(char::is_whitespace) {
            return invalid("cluster.key_prefix", "1 to 64 characters, no spaces");
        }
        // Port 0 is allowed (a trial on one machine): the node advertises the port it bound.
        if self.advertised().ip().is_unspecified() {
            return invalid(
                "cluster.quic_advertise",
                "other nodes need a concrete address: set quic_advertise when quic_listen is 0.0.0.0 or ::",
            );
        }
        if self.heartbeat < Duration::from_millis(100) || self.heartbeat > Duration::from_secs(60) {
            return invalid("cluster.heartbeat", "100 ms to 60 s");
        }
        if self.node_ttl <= 2 * self.heartbeat {
            return invalid("cluster.node_ttl", "must be more than twice cluster.heartbeat");
        }
        if self.redis_timeout < Duration::from_millis(10) || self.redis_timeout > Duration::from_secs(30) {
            return invalid("cluster.redis_timeout", "10 ms to 30 s");
        }
        if self.bridge_timeout < Duration::from_millis(10) || self.bridge_timeout > Duration::from_secs(60) {
            return invalid("cluster.bridge_timeout", "10 ms to 60 s");
        }
        Ok(())
    }
}

fn default_key_prefix() -> String {
    "tsunagu:".to_string()
}

fn default_quic_listen() -> SocketAddr {
    "0.0.0.0:7616".parse().expect("literal address")
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(1)
}

fn default_node_ttl() -> Duration {
    Duration::from_secs(5)
}

fn default_redis_timeout() -> Duration {
    Duration::from_secs(1)
}

/// A QUIC handshake and one round trip take milliseconds between nodes of one site; 2 s
/// leaves room for a loaded peer yet keeps a client's join short when a node is gone.
fn default_bridge_timeout() -> Duration {
    Duration::from_secs(2)
}

/// Keys kept outside the database (see the `keys` module) and the audit checkpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsConfig {
    /// Encrypts TOTP secrets in the database. Default `DATA/keys/secrets.key` (created on
    /// first start). Losing it means every account enrols TOTP again.
    pub key_file: Option<PathBuf>,
    /// Keys the audit trail's HMAC chain. Default `DATA/keys/audit.key`.
    pub audit_key_file: Option<PathBuf>,
    /// Signs audit checkpoints (Ed25519 seed). Default `DATA/keys/audit-signing.key`.
    pub signing_key_file: Option<PathBuf>,
    /// How often the relay appends a signed head of the audit trail to
    /// `DATA/audit/checkpoints.jsonl` (also at start and at shutdown). Default 1 day.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        Self {
            key_file: None,
            audit_key_file: None,
            signing_key_file: None,
            checkpoint_interval: DAY,
        }
    }
}

/// The certificate service: the client CA, the certificates it issues to operators and
/// admins, and how fast every node learns of a revocation.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CertsConfig {
    /// Live (neither expired nor revoked) certificates one account may hold. Default 4: a
    /// desktop, a laptop and two spares, as device-bound logins usually allow. 1 to 100.
    pub max_per_account: u32,
    /// Lifetime of an issued client certificate. Default 365 days; at least 1 minute.
    #[serde(with = "humantime_serde")]
    pub client_lifetime: Duration,
    /// How often every node re-reads the revoked serials and the CA from the database, so a
    /// revocation made anywhere (console, API, CLI, another node) is refused everywhere
    /// within about this. Default 1 s; 100 ms to 1 minute.
    #[serde(with = "humantime_serde")]
    pub revocation_poll: Duration,
    /// A node whose list of revoked certificates is older than this (the database cannot be
    /// read) refuses certificate logins instead of trusting stale data. Default 30 s; at
    /// least twice `revocation_poll`.
    #[serde(with = "humantime_serde")]
    pub revocation_max_age: Duration,
    /// The key file that seals the client CA's private key in the database. Default
    /// `DATA/keys/client-ca.key`, created with the CA. Only nodes that issue certificates
    /// need it; the others check certificates with the CA's certificate alone.
    pub ca_key_file: Option<PathBuf>,
}

impl Default for CertsConfig {
    fn default() -> Self {
        Self {
            max_per_account: 4,
            client_lifetime: 365 * DAY,
            revocation_poll: Duration::from_secs(1),
            revocation_max_age: Duration::from_secs(30),
            ca_key_file: None,
        }
    }
}

/// `[join]`: the download page a customer opens at `https://RELAY/join` to get the client
/// program with this relay's address and trust anchor inside.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JoinPageConfig {
    /// Serve the page at all. Default on.
    pub enabled: bool,
    /// The client program handed out. Default: `tsunagu-client` beside the relay's own
    /// program (where a release puts both); the page says the download is unavailable when
    /// there is none.
    pub client_file: Option<PathBuf>,
    /// The address the downloaded client dials, as `--relay` takes it
    /// (`support.example.com` or `support.example.com:443,backup.example.com`). Default:
    /// the host (and port) the customer's browser used to reach the page.
    pub relay: Option<String>,
    /// Ports the downloaded client tries on every relay. Default: the port in `relay`, else
    /// the client's own (7615, 80, 443).
    pub ports: Vec<u16>,
    /// A CA certificate (PEM) the downloaded client trusts besides the system's. Default:
    /// the relay's own CA (`DATA/tls/ca.pem`) when its certificate is self-generated; none
    /// with `[tls.acme]` or `tls.cert_file` (a publicly trusted certificate).
    pub ca_file: Option<PathBuf>,
    /// Downloads served at once; more are told to try again. Default 16: the program is
    /// streamed from disk, so each holds one read buffer (256 KiB). 1 to 1000.
    pub max_downloads: usize,
    /// The longest one browser connection may last, download included. Default 10 min:
    /// a 30 MB program at 0.5 Mbit/s.
    #[serde(with = "humantime_serde")]
    pub connection_timeout: Duration,
}

impl Default for JoinPageConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            client_file: None,
            relay: None,
            ports: Vec::new(),
            ca_file: None,
            max_downloads: 16,
            connection_timeout: Duration::from_secs(600),
        }
    }
}

/// Where durable state lives and how long history is kept.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// A PostgreSQL URL (`postgres://user:password@host/db`) for nodes that share one store;
    /// unset means SQLite in the data dir (`relay.db`). Never logged: it may hold a password.
    pub url: Option<String>,
    /// PostgreSQL schema for every table (created when missing). Default: the server's
    /// `search_path`. Ignored for SQLite.
    pub schema: Option<String>,
    /// Ended sessions older than this are purged with their file records. Default 90 days.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// How often the purge job runs. Default 1 hour.
    #[serde(with = "humantime_serde")]
    pub purge_interval: Duration,
    /// How often the relay re-reads the accounts of operators with live sessions, to apply
    /// to those sessions what another process (the CLI, another node) changed: suspension,
    /// deletion, permissions, IP rules. Changes made through this relay's console or API
    /// apply at once. Default 30 s; 100 ms to 1 hour.
    #[serde(with = "humantime_serde")]
    pub account_poll: Duration,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: show only whether one is set.
        f.debug_struct("DatabaseConfig")
            .field("url", &self.url.as_ref().map(|_| "<set>"))
            .field("schema", &self.schema)
            .field("retention", &self.retention)
            .field("purge_interval", &self.purge_interval)
            .field("account_poll", &self.account_poll)
            .finish()
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            schema: None,
            retention: 90 * DAY,
            purge_interval: Duration::from_secs(3600),
            // Bounds how long a CLI suspension or permission change leaves a live session
            // as it was, at one account read per operator with sessions each time.
            account_poll: Duration::from_secs(30),
        }
    }
}

/// The admin web console and its REST API.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Whether the relay serves the console at all. Default true.
    pub enabled: bool,
    /// HTTPS address of the console; `None` turns it off. Default `127.0.0.1:8443`: admins
    /// reach it through an SSH tunnel or a reverse proxy unless this is widened on purpose.
    pub listen: Option<SocketAddr>,
    /// An admin session that is not used for this long is logged out. Default 30 minutes.
    #[serde(with = "humantime_serde")]
    pub session_idle: Duration,
    /// An admin session ends this long after login however busy it is. Default 12 hours.
    #[serde(with = "humantime_serde")]
    pub session_max: Duration,
    /// Failed login steps in a row from one source prefix (IPv4 /24, IPv6 /48) after which
    /// the account is locked for that prefix only. Default 5; each failure before that is
    /// answered a little slower (250 ms, doubling).
    pub lockout_after: u32,
    /// How long a locked account stays locked for that prefix; a counter quiet this long
    /// starts over. Default 15 minutes.
    #[serde(with = "humantime_serde")]
    pub lockout: Duration,
    /// An HTTP request (headers and body) must arrive within this. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Console connections open at once, in a pool of their own (the endpoint listeners'
    /// floods cannot take it, nor the other way round). Default 256: a browser opens about
    /// six connections per admin, so this serves dozens of admins at once.
    pub max_connections: usize,
    /// Console connections one source (an IPv4 address, an IPv6 /64) holds at once.
    /// Default 32: a few admins' browsers behind one NAT address.
    pub max_connections_per_source: usize,
    /// The time zone (an IANA name such as `Asia/Tokyo`) in which the console shows every
    /// time, each with the zone's abbreviation, and reads the dates an admin types in its
    /// filters. Default empty: the relay host's own zone (`TZ`, else `/etc/localtime`; UTC
    /// when the host has none). The CLI and the REST API keep UTC (RFC 3339): they are read
    /// by programs.
    pub time_zone: String,
}

impl AdminConfig {
    /// The console's time zone, from `time_zone`; an unknown name is refused with a reason
    /// an operator of the relay can act on.
    pub fn zone(&self) -> Result<jiff::tz::TimeZone, String> {
        let name = self.time_zone.trim();
        if name.is_empty() {
            return Ok(jiff::tz::TimeZone::try_system().unwrap_or(jiff::tz::TimeZone::UTC));
        }
        jiff::tz::TimeZone::get(name).map_err(|_| {
            format!("{name:?} is not a time zone this relay knows: use an IANA name such as \"Asia/Tokyo\", \"Europe/Berlin\" or \"UTC\"")
        })
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: Some("127.0.0.1:8443".parse().expect("literal address")),
            session_idle: Duration::from_secs(30 * 60),
            session_max: Duration::from_secs(12 * 3600),
            lockout_after: 5,
            lockout: Duration::from_secs(15 * 60),
            request_timeout: Duration::from_secs(30),
            max_connections: 256,
            max_connections_per_source: 32,
            time_zone: String::new(),
        }
    }
}

/// Certificates.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// A certificate chain (PEM) supplied by the operator of the relay; replaces the
    /// self-generated one. Needs `key_file` too.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// A CA (certificate and key, PEM) to sign the self-generated server certificate with,
    /// instead of the one the relay creates in `DATA/tls/`. The nodes of a grid share one,
    /// so endpoints pin one `ca.pem` whichever node they reach. Needs `ca_key_file` too.
    pub ca_file: Option<PathBuf>,
    pub ca_key_file: Option<PathBuf>,
    /// Extra DNS names or IP addresses for the self-generated server certificate, besides
    /// `localhost`, `127.0.0.1`, `::1` and this machine's host name.
    pub names: Vec<String>,
    /// Lifetime of a self-generated server certificate. Default 90 days.
    #[serde(with = "humantime_serde")]
    pub server_cert_lifetime: Duration,
    /// A self-generated server certificate is renewed when it has less than this left.
    /// Default 30 days.
    #[serde(with = "humantime_serde")]
    pub renew_before: Duration,
    /// A publicly trusted server certificate from an ACME CA instead of the self-generated
    /// one (see docs/certificates.md). Unset by default.
    pub acme: Option<AcmeConfig>,
}

/// `[tls.acme]`: where to order the relay's certificate and for which names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The ACME directory URL (`https://acme-v02.api.letsencrypt.org/directory`).
    pub directory: String,
    /// Contacts for the account (`mailto:ops@example.com`). Default none.
    #[serde(default)]
    pub contact: Vec<String>,
    /// The DNS names the certificate is for; the CA connects to each on the port it
    /// validates TLS-ALPN-01 on (443 in production), which must reach a relay listener.
    pub names: Vec<String>,
    /// A CA certificate (PEM) to trust for the directory's own HTTPS besides the system's
    /// (a test CA such as pebble's). Default none.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The certificate is renewed when it has less than this left. Default 30 days.
    #[serde(default = "AcmeConfig::default_renew_before", with = "humantime_serde")]
    pub renew_before: Duration,
    /// How often the relay checks whether the certificate is due. Default 1 hour.
    #[serde(default = "AcmeConfig::default_check_every", with = "humantime_serde")]
    pub check_every: Duration,
}

impl AcmeConfig {
    fn default_renew_before() -> Duration {
        30 * DAY
    }

    fn default_check_every() -> Duration {
        Duration::from_secs(3600)
    }
}

/// Every wait on a peer, with its default.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// TLS handshake. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub handshake: Duration,
    /// From the end of the handshake to the peer's `Hello`, and from `Hello` to its
    /// `Login` or `Join`. Default 15 s.
    #[serde(with = "humantime_serde")]
    pub greeting: Duration,
    /// How long a session code stays valid. Default 10 minutes.
    #[serde(with = "humantime_serde")]
    pub code_ttl: Duration,
    /// How long the client has to answer the consent request; silence is a denial.
    /// Default 60 s.
    #[serde(with = "humantime_serde")]
    pub consent: Duration,
    /// A connection that sends nothing (not even `Pong`) for this long is closed.
    /// Default 45 s.
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    /// The relay sends `Ping` on a connection that has been quiet this long. Default 15 s.
    #[serde(with = "humantime_serde")]
    pub keepalive: Duration,
    /// A write to a peer that makes no progress for this long closes it. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub write: Duration,
    /// On shutdown, sessions are told and history is flushed within this. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub shutdown: Duration,
    /// The longest a password check or hash waits for a worker of the verifier pool before
    /// it is refused as busy. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub login_wait: Duration,
    /// How long a session waits for an endpoint whose connection dropped to resume (with
    /// its resume token, on this or any node of the grid) before it ends as
    /// `operator_disconnected` / `client_disconnected`. `0s`: a drop ends the session at
    /// once, as for endpoints that cannot resume. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub resume: Duration,
    /// A grid node being stopped (SIGTERM, `tsunagu-relay drain`) first drains: it closes
    /// its relay ports, sends the endpoints of every session that can move to another node
    /// (`Ended(moved)`; they resume there) and waits this long for their connections to
    /// leave; sessions that cannot move end as on a single node. `0s`: no drain. Default
    /// 10 s. A single relay ignores it.
    #[serde(with = "humantime_serde")]
    pub drain: Duration,
}

/// Sizes and counts a peer cannot push beyond.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest frame accepted, in bytes. Default 1 MiB.
    pub max_frame: usize,
    /// Connections open at once (all endpoint listeners together, logged in or not); more
    /// are refused at accept. Default 20,000.
    pub max_connections: usize,
    /// Of `max_connections`, how many may not have logged in or joined yet; more are refused
    /// at accept, so strangers can never hold the slots live sessions need. Default 2,000
    /// (an honest connection is unauthenticated for well under a second, so this covers
    /// bursts of thousands of logins and joins per second; a flood needs 2,000 /
    /// `max_unauthenticated_per_source` addresses to fill it). Values above
    /// `max_connections` act as `max_connections`.
    pub max_unauthenticated: usize,
    /// Connections one source (an IPv4 address, an IPv6 /64) holds at once on the endpoint
    /// listeners. Default 64: a support desk of a few dozen operators behind one NAT
    /// address, each with a live session; raise it for larger desks behind one address.
    pub max_connections_per_source: usize,
    /// Connections one source holds before they log in or join. Default 16: a desk behind
    /// one NAT address whose people all connect in the same second; one address alone then
    /// holds under 1 % of `max_unauthenticated`. Values above `max_connections_per_source`
    /// act as `max_connections_per_source`.
    pub max_unauthenticated_per_source: usize,
    /// Screen frames queued for a slow operator; past this the oldest is dropped.
    /// Default 4 (a few frames of latency at 30 frames/s).
    pub screen_queue_frames: usize,
    /// Bytes of other data queued for one peer before the sender is no longer read
    /// (back-pressure). Default 256 KiB.
    pub data_queue_bytes: usize,
    /// Relay-generated control frames queued for one peer before it is disconnected as
    /// unresponsive. Default 256.
    pub control_queue_frames: usize,
    /// Password verifications running at once (each takes argon2's memory). Default 4.
    pub concurrent_logins: usize,
    /// Password checks and hashes waiting for one of the `concurrent_logins` workers; more
    /// are refused as busy at once, before any memory is taken. Default 64 (at 4 workers
    /// and about 50 ms per check, the last one waits under a second).
    pub login_queue: usize,
    /// Resumes this node takes per second, all endpoints together, after a burst of
    /// `resume_burst`: a reconnect storm (a node lost, its endpoints all coming here) is let
    /// in at this pace and the rest are told to try again shortly (`busy`), which the
    /// endpoints do with jittered backoff. Default 1,000.
    pub resumes_per_second: u32,
    /// Resumes taken at once before `resumes_per_second` applies. Default 2,000 (both sides
    /// of a thousand sessions coming back at once).
    pub resume_burst: u32,
}

/// Guessing protection for session codes (`[throttle]`) and operator logins
/// (`[login_throttle]`, where the scope budget is per account). See `throttle.rs` and the
/// README for how the levels combine and the guessing arithmetic.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Failures one IP address (IPv6: one /64) may have in a burst. Default 5.
    pub per_ip_burst: u32,
    /// One more attempt is allowed per address (and per prefix) every this long. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub per_ip_refill: Duration,
    /// An address that exhausts its burst is refused for this long. Default 5 minutes.
    #[serde(with = "humantime_serde")]
    pub per_ip_cooldown: Duration,
    /// Failures one network (IPv4 /24, IPv6 /48) may have in a burst within the scope.
    /// Default 20 for codes (a few hosts of one office); 5 for logins, which makes the
    /// lock-out per (account, network).
    pub per_prefix_burst: u32,
    /// A network that exhausts its burst is refused for this long. Default 15 minutes.
    #[serde(with = "humantime_serde")]
    pub per_prefix_cooldown: Duration,
    /// The scope budget: failures from all addresses together per `global_window` (codes:
    /// the whole relay; logins: one account). Default 300 for codes, 20 for logins. When it
    /// is dry, only networks without a failure in `prefix_memory` may try, one attempt at a
    /// time per network, after `dry_slowdown`.
    pub global_failures: u32,
    /// Default 1 hour.
    #[serde(with = "humantime_serde")]
    pub global_window: Duration,
    /// How long a network that failed stays marked (refused while the budget is dry).
    /// Default 24 hours: each attacking network buys at most one extra guess a day.
    #[serde(with = "humantime_serde")]
    pub prefix_memory: Duration,
    /// The wait before checking an attempt that passed on a clean network while the budget
    /// is dry. Default 1 s for codes, 2 s for logins (the slow-down per account).
    #[serde(with = "humantime_serde")]
    pub dry_slowdown: Duration,
    /// Addresses, networks and scopes tracked at once, each. When full, new addresses
    /// share one bucket, and a network that cannot be tracked is not taken for clean.
    /// Default 100,000 (a few MiB).
    pub max_tracked_ips: usize,
}

impl ThrottleConfig {
    /// The defaults for operator logins.
    pub fn logins() -> Self {
        Self {
            per_prefix_burst: 5,
            global_failures: 20,
            dry_slowdown: Duration::from_secs(2),
            ..Self::default()
        }
    }
}

/// Password hashing for operator accounts.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccountsConfig {
    /// argon2id memory cost in KiB for new passwords. Default 19,456 (OWASP's minimum for
    /// argon2id).
    pub argon2_memory_kib: u32,
    /// argon2id iterations. Default 2.
    pub argon2_iterations: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("tsunagu-data"),
            listen: vec![
                "0.0.0.0:7615".parse().expect("literal address"),
                "0.0.0.0:443".parse().expect("literal address"),
                "0.0.0.0:80".parse().expect("literal address"),
            ],
            tls: TlsConfig::default(),
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            throttle: ThrottleConfig::default(),
            login_throttle: ThrottleConfig::logins(),
            accounts: AccountsConfig::default(),
            database: DatabaseConfig::default(),
            admin: AdminConfig::default(),
            secrets: SecretsConfig::default(),
            certs: CertsConfig::default(),
            join: JoinPageConfig::default(),
            cluster: None,
        }
    }
}

const DAY: Duration = Duration::from_secs(24 * 3600);

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            ca_file: None,
            ca_key_file: None,
            names: Vec::new(),
            server_cert_lifetime: 90 * DAY,
            renew_before: 30 * DAY,
            acme: None,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            handshake: Duration::from_secs(10),
            greeting: Duration::from_secs(15),
            code_ttl: Duration::from_secs(600),
            consent: Duration::from_secs(60),
            idle: Duration::from_secs(45),
            keepalive: Duration::from_secs(15),
            write: Duration::from_secs(30),
            shutdown: Duration::from_secs(5),
            login_wait: Duration::from_secs(5),
            resume: Duration::from_secs(30),
            drain: Duration::from_secs(10),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame: tsunagu_proto::limits::DEFAULT_MAX_FRAME,
            max_connections: 20_000,
            max_unauthenticated: 2_000,
            max_connections_per_source: 64,
            max_unauthenticated_per_source: 16,
            screen_queue_frames: 4,
            data_queue_bytes: 256 * 1024,
            control_queue_frames: 256,
            concurrent_logins: 4,
            login_queue: 64,
            resumes_per_second: 1_000,
            resume_burst: 2_000,
        }
    }
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            per_ip_burst: 5,
            per_ip_refill: Duration::from_secs(30),
            per_ip_cooldown: Duration::from_secs(300),
            per_prefix_burst: 20,
            per_prefix_cooldown: Duration::from_secs(15 * 60),
            global_failures: 300,
            global_window: Duration::from_secs(3600),
            prefix_memory: DAY,
            dry_slowdown: Duration::from_secs(1),
            max_tracked_ips: 100_000,
        }
    }
}

impl Default for AccountsConfig {
    fn default() -> Self {
        Self {
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
        }
    }
}

/// A configuration that cannot work, with the setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting {setting}: {reason}")]
    Invalid { setting: &'static str, reason: String },
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        Ok(config)
    }

    /// Checks every setting; called before any port is bound.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |setting, reason: &str| {
            Err(ConfigError::Invalid {
                setting,
                reason: reason.to_string(),
            })
        };
        if self.listen.is_empty() {
            return invalid("listen", "at least one listen address is needed");
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return invalid("tls.cert_file", "cert_file and key_file go together");
        }
        if self.tls.ca_file.is_some() != self.tls.ca_key_file.is_some() {
            return invalid("tls.ca_file", "ca_file and ca_key_file go together");
        }
        if let Some(acme) = &self.tls.acme {
            if self.tls.cert_file.is_some() {
                return invalid("tls.acme", "a supplied cert_file and ACME exclude each other");
            }
            if !acme.directory.starts_with("https://") {
                return invalid("tls.acme.directory", "must be an https:// URL");
            }
            if acme.names.is_empty() {
                return invalid("tls.acme.names", "at least one DNS name is needed");
            }
            if acme.check_every < Duration::from_secs(1) || acme.check_every > DAY {
                return invalid("tls.acme.check_every", "must be between 1 s and one day");
            }
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
            if self.database.url.is_none() {
                return invalid(
                    "cluster",
                    "the nodes of a grid share one PostgreSQL database: set database.url",
                );
            }
            if self.tls.cert_file.is_none() && self.tls.ca_file.is_none() {
                return invalid(
                    "tls.ca_file",
                    "the nodes of a grid share one CA so endpoints pin one ca.pem: set tls.ca_file and tls.ca_key_file (or supply tls.cert_file)",
                );
            }
        }
        if self.tls.renew_before >= self.tls.server_cert_lifetime {
            return invalid("tls.renew_before", "must be shorter than tls.server_cert_lifetime");
        }
        if let Some(url) = &self.database.url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return invalid(
                    "database.url",
                    "only postgres:// URLs are supported; leave it unset for SQLite",
                );
            }
        }
        if let Some(schema) = &self.database.schema {
            let ok = !schema.is_empty()
                && schema.len() <= 63
                && schema
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !ok {
                return invalid("database.schema", "1 to 63 characters of a-z, 0-9 and _");
            }
        }
        if self.database.retention < DAY {
            return invalid("database.retention", "must be at least one day");
        }
        if self.database.purge_interval < Duration::from_secs(60) {
            return invalid("database.purge_interval", "must be at least one minute");
        }
        // Below 100 ms the reads load the database for nothing; past an hour a suspension
        // made with the CLI would leave sessions running far too long.
        if self.database.account_poll < Duration::from_millis(100)
            || self.database.account_poll > Duration::from_secs(3600)
        {
            return invalid("database.account_poll", "must be between 100ms and 1h");
        }
        if self.admin.lockout_after == 0 {
            return invalid("admin.lockout_after", "must be at least 1");
        }
        if let Err(reason) = self.admin.zone() {
            return Err(ConfigError::Invalid {
                setting: "admin.time_zone",
                reason,
            });
        }
        for (name, d) in [
            ("admin.session_idle", self.admin.session_idle),
            ("admin.session_max", self.admin.session_max),
            ("admin.request_timeout", self.admin.request_timeout),
            ("admin.lockout", self.admin.lockout),
        ] {
            if d.is_zero() {
                return invalid(name, "must be more than zero");
            }
        }
        let t = &self.timeouts;
        for (name, d) in [
            ("timeouts.handshake", t.handshake),
            ("timeouts.greeting", t.greeting),
            ("timeouts.code_ttl", t.code_ttl),
            ("timeouts.consent", t.consent),
            ("timeouts.idle", t.idle),
            ("timeouts.keepalive", t.keepalive),
            ("timeouts.write", t.write),
            ("timeouts.login_wait", t.login_wait),
        ] {
            if d.is_zero() {
                return invalid(name, "must be longer than zero");
            }
        }
        if t.keepalive >= t.idle {
            return invalid(
                "timeouts.keepalive",
                "must be shorter than timeouts.idle, or quiet peers are cut off",
            );
        }
        let l = &self.limits;
        if l.max_frame < 1024 || l.max_frame > 16 << 20 {
            return invalid("limits.max_frame", "must be between 1 KiB and 16 MiB");
        }
        if l.max_connections == 0 {
            return invalid("limits.max_connections", "must be at least 1");
        }
        for (name, n) in [
            ("limits.max_unauthenticated", l.max_unauthenticated),
            ("limits.max_connections_per_source", l.max_connections_per_source),
            (
                "limits.max_unauthenticated_per_source",
                l.max_unauthenticated_per_source,
            ),
            ("admin.max_connections", self.admin.max_connections),
            (
                "admin.max_connections_per_source",
                self.admin.max_connections_per_source,
            ),
        ] {
            if n == 0 {
                return invalid(name, "must be at least 1, or no connection could ever be accepted");
            }
        }
        if l.screen_queue_frames == 0 || l.control_queue_frames == 0 || l.concurrent_logins == 0 {
            return invalid("limits", "queue sizes and concurrent_logins must be at least 1");
        }
        // Each waiting check holds only its request; a bound keeps the wait (queue / workers
        // checks) reasonable.
        if l.login_queue > 100_000 {
            return invalid("limits.login_queue", "must be at most 100000");
        }
        if l.resumes_per_second == 0 || l.resume_burst == 0 {
            return invalid(
                "limits",
                "resumes_per_second and resume_burst must be at least 1, or no session could resume",
            );
        }
        if l.data_queue_bytes == 0 {
            return invalid(
                "limits.data_queue_bytes",
                "must be at least 1 (one frame always fits an empty queue)",
            );
        }
        for (name, th) in [("throttle", &self.throttle), ("login_throttle", &self.login_throttle)] {
            if th.per_ip_burst == 0 || th.per_prefix_burst == 0 || th.global_failures == 0 {
                return invalid(
                    name,
                    "per_ip_burst, per_prefix_burst and global_failures must be at least 1",
                );
            }
            if th.per_ip_refill.is_zero() || th.global_window.is_zero() || th.prefix_memory.is_zero() {
                return invalid(
                    name,
                    "per_ip_refill, global_window and prefix_memory must be longer than zero",
                );
            }
            if th.max_tracked_ips == 0 {
                return invalid(name, "max_tracked_ips must be at least 1");
            }
        }
        if self.accounts.argon2_memory_kib < 8 || self.accounts.argon2_iterations == 0 {
            return invalid(
                "accounts",
                "argon2 memory must be at least 8 KiB and iterations at least 1",
            );
        }
        self.validate_secrets()?;
        self.validate_certs()?;
        self.validate_join()?;
        Ok(())
    }

    /// Checks `[join]`.
    fn validate_join(&self) -> Result<(), ConfigError> {
        let j = &self.join;
        let invalid = |setting, reason: &str| {
            Err(ConfigError::Invalid {
                setting,
                reason: reason.to_string(),
            })
        };
        if !(1..=1000).contains(&j.max_downloads) {
            return invalid("join.max_downloads", "must be between 1 and 1000");
        }
        if j.connection_timeout < Duration::from_secs(10) || j.connection_timeout > Duration::from_secs(24 * 3600) {
            return invalid("join.connection_timeout", "must be between 10 s and one day");
        }
        if j.ports.contains(&0) {
            return invalid("join.ports", "a port must be between 1 and 65535");
        }
        if let Some(relay) = &j.relay {
            let probe = tsunagu_proto::bundle::JoinConfig {
                relay: relay.clone(),
                ports: j.ports.clone(),
                ca_pem: None,
            };
            if let Err(reason) = probe.validate() {
                return invalid("join.relay", reason);
            }
        }
        Ok(())
    }

    /// Checks `[certs]`.
    fn validate_certs(&self) -> Result<(), ConfigError> {
        let c = &self.certs;
        let invalid = |setting, reason: &str| {
            Err(ConfigError::Invalid {
                setting,
                reason: reason.to_string(),
            })
        };
        if !(1..=100).contains(&c.max_per_account) {
            return invalid("certs.max_per_account", "must be between 1 and 100");
        }
        if c.client_lifetime < Duration::from_secs(60) || c.client_lifetime > 10 * 365 * DAY {
            return invalid("certs.client_lifetime", "must be between one minute and ten years");
        }
        if c.revocation_poll < Duration::from_millis(100) || c.revocation_poll > Duration::from_secs(60) {
            return invalid("certs.revocation_poll", "must be between 100 ms and one minute");
        }
        if c.revocation_max_age < 2 * c.revocation_poll {
            return invalid(
                "certs.revocation_max_age",
                "must be at least twice certs.revocation_poll",
            );
        }
        Ok(())
    }

    /// The key file that seals the client CA's private key.
    pub fn client_ca_key_path(&self) -> PathBuf {
        self.certs
            .ca_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("keys").join("client-ca.key"))
    }

    /// Where every node writes the client CA's latest CRL (PEM), for other TLS servers.
    pub fn client_crl_path(&self) -> PathBuf {
        self.tls_dir().join("client-crl.pem")
    }

    /// Checks `[secrets]`: three distinct key files, a checkpoint at least every minute
    /// (more often would only grow the file) and at most daily.
    fn validate_secrets(&self) -> Result<(), ConfigError> {
        let [secrets, audit, signing] = self.key_paths();
        if secrets == audit || secrets == signing || audit == signing {
            return Err(ConfigError::Invalid {
                setting: "secrets",
                reason: "key_file, audit_key_file and signing_key_file must be three different files".into(),
            });
        }
        let i = self.secrets.checkpoint_interval;
        if i < Duration::from_secs(60) || i > DAY {
            return Err(ConfigError::Invalid {
                setting: "secrets.checkpoint_interval",
                reason: "must be between one minute and one day".into(),
            });
        }
        Ok(())
    }

    /// The secrets key, the audit chain key and the checkpoint signing key: the configured
    /// paths, or `DATA/keys/secrets.key`, `audit.key` and `audit-signing.key`.
    pub fn key_paths(&self) -> [PathBuf; 3] {
        let keys = self.data_dir.join("keys");
        let s = &self.secrets;
        [
            s.key_file.clone().unwrap_or_else(|| keys.join("secrets.key")),
            s.audit_key_file.clone().unwrap_or_else(|| keys.join("audit.key")),
            s.signing_key_file
                .clone()
                .unwrap_or_else(|| keys.join("audit-signing.key")),
        ]
    }

    /// Where the signed audit checkpoints are appended.
    pub fn checkpoints_path(&self) -> PathBuf {
        self.data_dir.join("audit").join("checkpoints.jsonl")
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("tls")
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("relay.db")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn the_console_time_zone_is_an_iana_name() {
        let zone = |name: &str| -> Result<Config, String> {
            let c: Config = toml::from_str(&format!("[admin]\ntime_zone = \"{name}\"")).map_err(|e| e.to_string())?;
            c.validate().map_err(|e| e.to_string())?;
            Ok(c)
        };
        // Unset: the host's own zone, as the system reports it.
        assert_eq!(Config::default().admin.time_zone, "");
        let host = jiff::tz::TimeZone::try_system().unwrap_or(jiff::tz::TimeZone::UTC);
        assert_eq!(Config::default().admin.zone().unwrap(), host);
        let tokyo = zone("Asia/Tokyo").unwrap();
        assert_eq!(tokyo.admin.zone().unwrap().iana_name(), Some("Asia/Tokyo"));
        let err = zone("Mars/Olympus_Mons").unwrap_err();
        assert!(
            err.contains("admin.time_zone") && err.contains("Mars/Olympus_Mons"),
            "{err}"
        );
    }

    #[test]
    fn a_grid_node_needs_its_shared_parts() {
        let named = |name: &str, extra: &str| -> Result<(), String> {
            let text = format!(
                "[database]\nurl = \"postgres://db/grid\"\n[tls]\nca_file = \"ca.pem\"\nca_key_file = \"ca.key\"\n\
                 [cluster]\nnode = \"{name}\"\nredis_url = \"redis://127.0.0.1:6379\"\nquic_listen = \"10.0.0.1:7616\"\n\
                 ca_file = \"cluster-ca.pem\"\nca_key_file = \"cluster-ca.key\"\n{extra}"
            );
            let c: Config = toml::from_str(&text).map_err(|e| e.to_string())?;
            c.validate().map_err(|e| e.to_string())
        };
        let node = |extra: &str| named("a", extra);
        node("").unwrap();
        named("node-2", "").unwrap();
        let c: Config = toml::from_str(
            "[cluster]\nnode = \"a\"\nredis_url = \"redis://r\"\nca_file = \"c\"\nca_key_file = \"k\"\n",
        )
        .unwrap();
        let cluster = c.cluster.as_ref().unwrap();
        assert_eq!(cluster.key_prefix, "tsunagu:");
        assert_eq!(cluster.heartbeat, Duration::from_secs(1));
        assert_eq!(cluster.bridge_timeout, Duration::from_secs(2));
        assert!(format!("{cluster:?}").contains("<set>"), "the Redis URL is never shown");
        // 0.0.0.0 cannot be reached by other nodes.
        assert!(c.validate().unwrap_err().to_string().contains("cluster.quic_advertise"));
        for (extra, setting) in [
            ("heartbeat = \"3s\"\n", "cluster.node_ttl"),
            ("key_prefix = \"a b\"\n", "cluster.key_prefix"),
            ("bridge_timeout = \"2m\"\n", "cluster.bridge_timeout"),
        ] {
            let err = node(extra).unwrap_err();
            assert!(err.contains(setting), "{extra}: {err}");
        }
        for bad_name in ["A", "", "a_b", &"x".repeat(33)] {
            let err = named(bad_name, "").unwrap_err();
            assert!(err.contains("cluster.node"), "{bad_name}: {err}");
        }
        let no_db: Config = toml::from_str(
            "[tls]\nca_file = \"ca.pem\"\nca_key_file = \"ca.key\"\n[cluster]\nnode = \"a\"\nredis_url = \"redis://r\"\n\
             quic_listen = \"10.0.0.1:0\"\nca_file = \"c\"\nca_key_file = \"k\"\n",
        )
        .unwrap();
        assert!(no_db.validate().unwrap_err().to_string().contains("database.url"));
    }

    #[test]
    fn toml_overrides_and_validation() {
        let c: Config = toml::from_str(
            "listen = [\"127.0.0.1:9000\"]\n[timeouts]\nconsent = \"5s\"\ncode_ttl = \"2m\"\n[limits]\nmax_frame = 65536\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.timeouts.consent, Duration::from_secs(5));
        assert_eq!(c.timeouts.code_ttl, Duration::from_secs(120));
        assert_eq!(c.limits.max_frame, 65536);
        assert_eq!(c.timeouts.idle, Duration::from_secs(45), "unset values keep defaults");

        assert!(toml::from_str::<Config>("no_such_setting = 1").is_err());
        let bad: Config = toml::from_str("[timeouts]\nkeepalive = \"60s\"\nidle = \"30s\"").unwrap();
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("timeouts.keepalive"), "{err}");

        let c: Config = toml::from_str("[database]\naccount_poll = \"5s\"").unwrap();
        c.validate().unwrap();
        assert_eq!(c.database.account_poll, Duration::from_secs(5));
        assert_eq!(Config::default().database.account_poll, Duration::from_secs(30));
        for bad in ["0s", "10ms", "2h"] {
            let c: Config = toml::from_str(&format!("[database]\naccount_poll = \"{bad}\"")).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("database.account_poll"), "{bad}: {err}");
        }
    }

    #[test]
    fn connection_limits_are_read_and_validated() {
        let c: Config = toml::from_str(
            "[limits]\nmax_unauthenticated = 10\nmax_connections_per_source = 4\nmax_unauthenticated_per_source = 2\n\
             [admin]\nmax_connections = 20\nmax_connections_per_source = 3\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(
            (
                c.limits.max_unauthenticated,
                c.limits.max_connections_per_source,
                c.limits.max_unauthenticated_per_source
            ),
            (10, 4, 2)
        );
        assert_eq!((c.admin.max_connections, c.admin.max_connections_per_source), (20, 3));
        for (text, setting) in [
            ("[limits]\nmax_unauthenticated = 0", "limits.max_unauthenticated"),
            (
                "[limits]\nmax_connections_per_source = 0",
                "limits.max_connections_per_source",
            ),
            (
                "[limits]\nmax_unauthenticated_per_source = 0",
                "limits.max_unauthenticated_per_source",
            ),
            ("[admin]\nmax_connections = 0", "admin.max_connections"),
            (
                "[admin]\nmax_connections_per_source = 0",
                "admin.max_connections_per_source",
            ),
        ] {
            let bad: Config = toml::from_str(text).unwrap();
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(setting), "{err}");
        }
    }
}
