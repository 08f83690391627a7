//! Durable state: operator and admin accounts, per-operator limits, the session history and
//! the audit trail. SQLite in the data dir by default, PostgreSQL when `database.url` is
//! set; both run the same embedded migrations at open and the same SQL (`$N` placeholders,
//! which SQLite accepts too, and only integer and text columns, which both map alike).
//! The store never sees content, passwords (only argon2id hashes) or session codes.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor, Row};
use tsunagu_proto::PermissionSet;

mod certs;
mod console;
mod tokens;
pub use certs::{CaRow, CertRole, CertRow, IssueOutcome, Revoked};
pub use console::{AuditFilter, DayTotals, PageFrom, AUDIT_MAX_PAGE, MAX_BUCKETS};
pub use tokens::{TokenAdded, TokenRow, TokenScope, LAST_USED_GRAIN_MS, MAX_TOKENS};

use crate::config::Config;
use crate::keys::{KeyError, KeyFiles, Keys, MayCreate, SEALED_PREFIX};
use crate::operator_cache::{Lookup, OperatorCache};
use crate::policy::Counters;

/// What went wrong with the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("an operator named {0:?} already exists")]
    OperatorExists(String),
    #[error("no operator named {0:?}")]
    NoSuchOperator(String),
    #[error("an admin named {0:?} already exists")]
    AdminExists(String),
    #[error("no admin named {0:?}")]
    NoSuchAdmin(String),
    #[error("the database path {0:?} is not valid UTF-8")]
    BadPath(String),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("this store was opened without its keys (open it with Store::connect)")]
    NoKeys,
    #[error("the newest audit row ({0}) is not keyed: the trail was rewritten without the key (run `tsunagu-relay audit verify`)")]
    AuditRewritten(i64),
    #[error(
        "the audit key {0} matches none of the newest audit rows: it is not the key this trail was \
         written with (restore it from the backup of the data dir)"
    )]
    WrongAuditKey(String),
    #[error("cannot protect the database file {path}: {source}")]
    FileMode { path: String, source: std::io::Error },
}

/// The table of an account whose columns [`Store`] sets one at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AccountTable {
    Operators,
    Admins,
}

/// Which database engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One IP rule of an operator: `allow` or `deny` for a CIDR block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpRule {
    /// `true` allows, `false` denies.
    pub allow: bool,
    pub net: ipnet::IpNet,
}

impl IpRule {
    /// Parses `allow 10.0.0.0/8` or `deny 2001:db8::/32` (a bare address is a /32 or /128).
    pub fn parse(line: &str) -> Result<Self, String> {
        let mut words = line.split_whitespace();
        let (Some(action), Some(net), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!("{line:?}: write a rule as \"allow CIDR\" or \"deny CIDR\""));
        };
        let allow = match action {
            "allow" => true,
            "deny" => false,
            _ => return Err(format!("{line:?}: a rule starts with allow or deny")),
        };
        let net = net
            .parse::<ipnet::IpNet>()
            .or_else(|_| net.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| format!("{line:?}: {net:?} is not an IP address or CIDR block"))?;
        Ok(Self {
            allow,
            net: net.trunc(),
        })
    }

    /// `allow 10.0.0.0/8`.
    pub fn to_line(&self) -> String {
        format!("{} {}", if self.allow { "allow" } else { "deny" }, self.net)
    }
}

/// Rules per operator at most, so a rule list stays reviewable and checks stay cheap.
pub const MAX_IP_RULES: usize = 64;

/// Checks an address against ordered rules: the first matching rule decides; with rules
/// but no match the address is denied; with no rules everything is allowed.
pub fn ip_allowed(rules: &[IpRule], ip: std::net::IpAddr) -> bool {
    // An IPv4 peer on a dual-stack socket shows up as ::ffff:a.b.c.d.
    let ip = match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    if rules.is_empty() {
        return true;
    }
    rules
        .iter()
        .find(|r| r.net.contains(&ip))
        .map(|r| r.allow)
        .unwrap_or(false)
}

/// What the relay needs to know about an operator at login and code issue.
#[derive(Debug, Clone)]
pub struct OperatorRecord {
    pub name: String,
    pub password_hash: String,
    pub permissions: PermissionSet,
    pub suspended: bool,
    /// Live sessions at once; 0 is no limit.
    pub max_sessions: u32,
    /// Base32 TOTP secret when enrolled. A secret: never log it.
    pub totp_secret: Option<String>,
    /// Login needs a TOTP code too.
    pub totp_required: bool,
    /// Login needs a client certificate of this operator's too.
    pub cert_required: bool,
    pub ip_rules: Vec<IpRule>,
    pub created_at: i64,
}

/// A console account.
#[derive(Debug, Clone)]
pub struct AdminRecord {
    pub name: String,
    pub password_hash: String,
    /// Base32 TOTP secret once enrolment is confirmed. A secret: never log it.
    pub totp_secret: Option<String>,
    /// Login needs a client certificate of this admin's too.
    pub cert_required: bool,
}

/// One change to a session's history row, as the store writes it.
#[derive(Debug)]
pub enum SessionEvent {
    Issued {
        id: String,
        operator: String,
        operator_addr: SocketAddr,
        relay_port: u16,
        requested: PermissionSet,
        at_ms: i64,
    },
    Joined {
        id: String,
        client_host: String,
        client_addr: SocketAddr,
        relay_port: u16,
        at_ms: i64,
    },
    Consented {
        id: String,
        granted: PermissionSet,
        at_ms: i64,
    },
    Ended {
        id: String,
        reason: &'static str,
        counters: Counters,
        granted: Option<PermissionSet>,
        at_ms: i64,
    },
    /// An endpoint resumed its side (`role`: `operator` or `client`) from `addr`; `resumes`
    /// counts the session's resumes so far.
    Resumed {
        id: String,
        role: &'static str,
        addr: SocketAddr,
        resumes: u32,
        at_ms: i64,
    },
    /// A file transfer's outcome: `direction` is `to_client` or `to_operator`, `result` one of
    /// `completed`, `rejected`, `cancelled`, `failed`; `bytes` is what went through the relay.
    /// Only the metadata is recorded, never content.
    File {
        id: String,
        name: String,
        size: u64,
        direction: &'static str,
        bytes: u64,
        result: &'static str,
        at_ms: i64,
    },
}

/// One history row as read back.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionRecord {
    pub id: String,
    pub operator: String,
    pub operator_ip: String,
    pub operator_port: i64,
    pub operator_relay_port: i64,
    pub requested: String,
    pub client_host: Option<String>,
    pub client_ip: Option<String>,
    pub client_port: Option<i64>,
    pub client_relay_port: Option<i64>,
    pub granted: Option<String>,
    pub issued_at: i64,
    pub joined_at: Option<i64>,
    pub consented_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub pauses: i64,
    pub bytes_to_client: i64,
    pub bytes_to_operator: i64,
    pub end_reason: Option<String>,
    /// Resumes after a dropped connection, both sides together.
    pub resumes: i64,
}

/// One file event of a session, as read back.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FileRecord {
    pub session_id: String,
    pub name: String,
    pub size: i64,
    pub direction: String,
    pub bytes: i64,
    pub result: String,
    pub at: i64,
}

/// Which sessions a history query returns; unset fields do not filter.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct HistoryFilter {
    pub operator: Option<String>,
    pub client_ip: Option<String>,
    /// Issued at or after this (Unix ms).
    pub from_ms: Option<i64>,
    /// Issued before this (Unix ms).
    pub to_ms: Option<i64>,
    /// `live` matches sessions that have not ended.
    pub end_reason: Option<String>,
    pub limit: Option<i64>,
    /// Keyset paging by `(issued_at, id)`: the console's history pages.
    #[serde(skip)]
    pub page: Option<PageFrom<(i64, String)>>,
}

/// Most rows one history query returns.
pub const HISTORY_MAX_ROWS: i64 = 100_000;

/// One audit row as stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditRow {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub ip: String,
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

/// One admin login attempt taken by [`Store::reserve_admin_attempt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginAttempt {
    /// Attempts counted against this (account, prefix), this one included.
    pub failures: u32,
    /// 0, or when the lock ends (Unix milliseconds).
    pub locked_until: i64,
}

/// A handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The keys kept outside the database: TOTP secrets are sealed and opened with them,
    /// the audit chain is keyed with them. `None` only for raw opens (tests, tools).
    keys: Option<Arc<Keys>>,
    /// Operators' accounts as code issue reads them ([`Store::operator_for_code`]); every
    /// write to an operator here forgets that operator's copy.
    operators: OperatorCache<OperatorRecord>,
}

fn install_drivers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(sqlx::any::install_default_drivers);
}

impl StoreError {
    /// The database could not be reached (down, restarting, the network between): the
    /// same write may well succeed later. Anything else (a refused statement) would fail
    /// again.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Db(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_)) => true,
            // SQLSTATE class 08 (connection exception), 57P01-57P03 (the server is shutting
            // down, crashed or starting up).
            StoreError::Db(sqlx::Error::Database(e)) => e
                .code()
                .is_some_and(|c| c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03")),
            _ => false,
        }
    }
}

impl Store {
    /// Opens the store the config names: PostgreSQL when `database.url` is set, else SQLite
    /// at `DATA/relay.db` (created if needed). Applies migrations.
    ///
    /// Loads the keys of `[secrets]` (creating only those the database shows no trace of)
    /// and encrypts any TOTP secret still stored in plaintext.
    pub async fn connect(config: &Config) -> Result<Self, StoreError> {
        let store = match &config.database.url {
            Some(url) => Self::open_postgres(url, config.database.schema.as_deref()).await?,
            None => Self::open(&config.database_path()).await?,
        };
        let files = KeyFiles::from_config(config);
        let may_create = MayCreate {
            secrets: !store.has_sealed_secrets().await?,
            audit: !store.audit_is_keyed().await?,
            // Checkpoints signed with a lost key could never be checked again.
            signing: std::fs::metadata(&files.checkpoints)
                .map(|m| m.len() == 0)
                .unwrap_or(true),
        };
        let keys = Keys::load(&files, may_create)?;
        store.with_keys(Arc::new(keys)).await
    }

    /// Attaches the keys, then seals every TOTP secret still in plaintext (a store written
    /// before secrets were encrypted) and checks that every sealed one opens, so a wrong key
    /// fails here, at start, and never as a wrong answer later. Idempotent.
    pub async fn with_keys(mut self, keys: Arc<Keys>) -> Result<Self, StoreError> {
        let mut sealed_now = 0;
        for table in ["operators", "admins"] {
            let rows = sqlx::query(&format!(
                "SELECT name, totp_secret FROM {table} WHERE totp_secret IS NOT NULL"
            ))
            .fetch_all(&self.pool)
            .await?;
            for r in rows {
                let (name, stored): (String, String) = (r.get("name"), r.get("totp_secret"));
                if stored.starts_with(SEALED_PREFIX) {
                    keys.open(table, &name, &stored)?;
                    continue;
                }
                let sealed = keys.seal(table, &name, &stored)?;
                // Only if unchanged meanwhile: another process may be writing it right now.
                sqlx::query(&format!(
                    "UPDATE {table} SET totp_secret = $1 WHERE name = $2 AND totp_secret = $3"
                ))
                .bind(sealed)
                .bind(&name)
                .bind(&stored)
                .execute(&self.pool)
                .await?;
                sealed_now += 1;
                tracing::info!(table, "encrypted a TOTP secret stored in plaintext");
            }
        }
        if sealed_now > 0 && self.backend == Backend::Sqlite {
            // Plaintext may linger in free pages (from before `secure_delete`) and in the
            // write-ahead log: rebuild the file once, then empty the log.
            sqlx::query("VACUUM").execute(&self.pool).await?;
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&self.pool)
                .await?;
        }
        self.keys = Some(keys);
        Ok(self)
    }

    /// The keys this store was opened with (`None` for a raw open).
    pub fn keys(&self) -> Option<&Arc<Keys>> {
        self.keys.as_ref()
    }

    fn require_keys(&self) -> Result<&Keys, StoreError> {
        self.keys.as_deref().ok_or(StoreError::NoKeys)
    }

    /// Seals a secret for `table`'s row `account`; `None` stays `None`.
    fn seal_secret(&self, table: &str, account: &str, secret: Option<&str>) -> Result<Option<String>, StoreError> {
        match secret {
            Some(s) => Ok(Some(self.require_keys()?.seal(table, account, s)?)),
            None => Ok(None),
        }
    }

    /// Opens a stored secret; a plaintext one (written by an older relay since start) is
    /// passed through and sealed at the next start.
    fn open_secret(&self, table: &str, account: &str, stored: Option<String>) -> Result<Option<String>, StoreError> {
        match stored {
            Some(s) if s.starts_with(SEALED_PREFIX) => Ok(Some(self.require_keys()?.open(table, account, &s)?)),
            other => Ok(other),
        }
    }

    /// Whether any TOTP secret is stored sealed (then its key must exist).
    async fn has_sealed_secrets(&self) -> Result<bool, StoreError> {
        let pattern = format!("{SEALED_PREFIX}%");
        for table in ["operators", "admins"] {
            let row = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table} WHERE totp_secret LIKE $1"))
                .bind(&pattern)
                .fetch_one(&self.pool)
                .await?;
            if row.get::<i64, _>("n") > 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether any audit row is keyed (then the audit key must exist).
    async fn audit_is_keyed(&self) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM audit WHERE hash LIKE $1")
            .bind(format!("{}%", crate::keys::KEYED_PREFIX))
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get::<i64, _>("n") > 0)
    }

    /// Opens (creating if needed) the SQLite database at `path` and applies migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        install_drivers();
        let p = path
            .to_str()
            .ok_or_else(|| StoreError::BadPath(path.display().to_string()))?;
        // The URL form percent-decodes the path: escape what would be read as syntax.
        let p = p.replace('%', "%25").replace('?', "%3F").replace('#', "%23");
        // The database holds account data: created owner-only (SQLite gives its -wal and
        // -shm files the database file's mode), and tightened when an older relay made it.
        protect_db_file(path, true)?;
        let options: AnyConnectOptions = format!("sqlite://{p}?mode=rwc").parse()?;
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // WAL lets the admin CLI read while the relay writes; another process may
                    // hold the write lock briefly, hence the busy timeout.
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                    // Freed space is zeroed, so an old plaintext secret (or a purged session)
                    // does not linger in the file after it was rewritten or deleted.
                    conn.execute("PRAGMA secure_delete = ON").await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        for suffix in ["-wal", "-shm"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            protect_db_file(Path::new(&side), false)?;
        }
        Ok(Self {
            pool,
            backend: Backend::Sqlite,
            keys: None,
            operators: OperatorCache::default(),
        })
    }

    /// Opens a PostgreSQL store; with `schema`, every table lives in that schema (created
    /// when missing). Applies migrations.
    pub async fn open_postgres(url: &str, schema: Option<&str>) -> Result<Self, StoreError> {
        install_drivers();
        let options: AnyConnectOptions = url.parse()?;
        if let Some(s) = schema {
            let pool = AnyPoolOptions::new()
                .max_connections(1)
                .connect_with(options.clone())
                .await?;
            pool.execute(format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(s)).as_str())
                .await?;
            pool.close().await;
        }
        let set_path = schema.map(|s| format!("SET search_path TO {}", quote_ident(s)));
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                let set_path = set_path.clone();
                Box::pin(async move {
                    if let Some(sql) = set_path {
                        conn.execute(sql.as_str()).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self {
            pool,
            backend: Backend::Postgres,
            keys: None,
            operators: OperatorCache::default(),
        })
    }

    /// Drops a PostgreSQL schema and everything in it (tests clean up with this).
    pub async fn drop_postgres_schema(url: &str, schema: &str) -> Result<(), StoreError> {
        install_drivers();
        let pool = AnyPoolOptions::new().max_connections(1).connect(url).await?;
        pool.execute(format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(schema)).as_str())
            .await?;
        pool.close().await;
        Ok(())
    }

    /// The engine this store runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// One round trip to the database (`/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes every connection; pending writes finish first.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    // ---- operators ----

    /// Adds an operator; a taken name is [`StoreError::OperatorExists`].
    pub async fn add_operator(
        &self,
        name: &str,
        password_hash: &str,
        permissions: PermissionSet,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let result =
            sqlx::query("INSERT INTO operators (name, password_hash, permissions, created_at) VALUES ($1, $2, $3, $4)")
                .bind(name)
                .bind(password_hash)
                .bind(permissions.bits() as i64)
                .bind(now_ms)
                .execute(&self.pool)
                .await;
        self.operators.forget(name);
        match result {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::OperatorExists(name.to_string()))
            }
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    /// Sets `column` (always a literal of this module) of account `name` in `table`.
    async fn set_account_column<T>(
        &self,
        table: AccountTable,
        name: &str,
        column: &'static str,
        value: T,
    ) -> Result<(), StoreError>
    where
        T: 'static + Send + for<'q> sqlx::Encode<'q, sqlx::Any> + sqlx::Type<sqlx::Any>,
    {
        let (table_name, missing): (&str, fn(String) -> StoreError) = match table {
            AccountTable::Operators => ("operators", StoreError::NoSuchOperator),
            AccountTable::Admins => ("admins", StoreError::NoSuchAdmin),
        };
        let sql = format!("UPDATE {table_name} SET {column} = $1 WHERE name = $2");
        let done = sqlx::query(&sql)
            .bind(value)
            .bind(name.to_string())
            .execute(&self.pool)
            .await;
        // Forgotten after the write, whatever its outcome (a timed-out write may still
        // have landed), so no read from before it is kept.
        if table == AccountTable::Operators {
            self.operators.forget(name);
        }
        let done = done?;
        if done.rows_affected() == 0 {
            return Err(missing(name.to_string()));
        }
        Ok(())
    }

    /// What the operator may ask clients for (checked again at every code issue).
    pub async fn set_operator_permissions(&self, name: &str, permissions: PermissionSet) -> Result<(), StoreError> {
        self.set_account_column(AccountTable::Operators, name, "permissions", permissions.bits() as i64)
            .await
    }

    /// Replaces the argon2id hash of an operator's password.
    pub async fn set_operator_password(&self, name: &str, password_hash: &str) -> Result<(), StoreError> {
        self.set_account_column(
            AccountTable::Operators,
            name,
            "password_hash",
            password_hash.to_string(),
        )
        .await
    }

    /// Suspends or resumes an operator (the caller ends live sessions).
    pub async fn set_operator_suspended(&self, name: &str, suspended: bool) -> Result<(), StoreError> {
        self.set_account_column(AccountTable::Operators, name, "suspended", suspended as i64)
            .await
    }

    /// Live sessions an operator may hold at once; 0 is no limit.
    pub async fn set_operator_max_sessions(&self, name: &str, max: u32) -> Result<(), StoreError> {
        self.set_account_column(AccountTable::Operators, name, "max_sessions", max as i64)
            .await
    }

    /// Enrols (`Some`) or resets (`None`) an operator's TOTP secret.
    pub async fn set_operator_totp(&self, name: &str, secret: Option<&str>) -> Result<(), StoreError> {
        let s = self.seal_secret("operators", name, secret)?;
        self.set_account_column(AccountTable::Operators, name, "totp_secret", s)
            .await
    }

    /// Whether the operator's login needs a TOTP code.
    pub async fn set_operator_totp_required(&self, name: &str, required: bool) -> Result<(), StoreError> {
        self.set_account_column(AccountTable::Operators, name, "totp_required", required as i64)
            .await
    }

    /// Renames an operator; history rows keep the name they were written with.
    pub async fn rename_operator(&self, name: &str, new_name: &str) -> Result<(), StoreError> {
        let renamed = self.rename_operator_rows(name, new_name).await;
        self.operators.forget(name);
        self.operators.forget(new_name);
        renamed
    }

    async fn rename_operator_rows(&self, name: &str, new_name: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("UPDATE operators SET name = $1 WHERE name = $2")
            .bind(new_name)
            .bind(name)
            .execute(&mut *tx)
            .await;
        match done {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::OperatorExists(new_name.to_string()))
            }
            Err(e) => return Err(e.into()),
            Ok(d) if d.rows_affected() == 0 => return Err(StoreError::NoSuchOperator(name.to_string())),
            Ok(_) => {}
        }
        sqlx::query("UPDATE operator_ip_rules SET operator = $1 WHERE operator = $2")
            .bind(new_name)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        // Certificates stay the operator's under the new name (they are checked by serial).
        for table in ["client_certs", "client_cert_accounts"] {
            sqlx::query(&format!(
                "UPDATE {table} SET account = $1 WHERE role = 'operator' AND account = $2"
            ))
            .bind(new_name)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        }
        // A sealed secret is bound to the account name: seal it again for the new one.
        let row = sqlx::query("SELECT totp_secret FROM operators WHERE name = $1")
            .bind(new_name)
            .fetch_one(&mut *tx)
            .await?;
        let stored: Option<String> = row.get("totp_secret");
        if let Some(secret) = self.open_secret("operators", name, stored.filter(|s| s.starts_with(SEALED_PREFIX)))? {
            sqlx::query("UPDATE operators SET totp_secret = $1 WHERE name = $2")
                .bind(self.seal_secret("operators", new_name, Some(&secret))?)
                .bind(new_name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes an operator and its rules; its history stays.
    pub async fn delete_operator(&self, name: &str) -> Result<(), StoreError> {
        let deleted = self.delete_operator_rows(name).await;
        self.operators.forget(name);
        deleted
    }

    async fn delete_operator_rows(&self, name: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM operators WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NoSuchOperator(name.to_string()));
        }
        sqlx::query("DELETE FROM operator_ip_rules WHERE operator = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        // A deleted account's certificates are revoked, so a new account of the same name
        // does not inherit them.
        sqlx::query(
            "UPDATE client_certs SET revoked_at = $1, revoked_by = 'account deleted' \
             WHERE role = 'operator' AND account = $2 AND revoked_at IS NULL",
        )
        .bind(crate::time::now_ms())
        .bind(name)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces an operator's IP rules with `rules`, in order.
    pub async fn set_operator_ip_rules(&self, name: &str, rules: &[IpRule]) -> Result<(), StoreError> {
        let set = self.set_operator_ip_rules_rows(name, rules).await;
        self.operators.forget(name);
        set
    }

    async fn set_operator_ip_rules_rows(&self, name: &str, rules: &[IpRule]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // The first statement writes: on SQLite a transaction that reads first and writes
        // later fails with SQLITE_BUSY_SNAPSHOT when another connection (the history
        // writer) commits in between, while a write first simply waits for the lock.
        sqlx::query("DELETE FROM operator_ip_rules WHERE operator = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let exists = sqlx::query("SELECT name FROM operators WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NoSuchOperator(name.to_string()));
        }
        for (i, r) in rules.iter().enumerate() {
            sqlx::query("INSERT INTO operator_ip_rules (operator, position, action, cidr) VALUES ($1, $2, $3, $4)")
                .bind(name)
                .bind(i as i64)
                .bind(if r.allow { "allow" } else { "deny" })
                .bind(r.net.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn ip_rules(&self, name: &str) -> Result<Vec<IpRule>, StoreError> {
        let rows = sqlx::query("SELECT action, cidr FROM operator_ip_rules WHERE operator = $1 ORDER BY position")
            .bind(name)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let net = r.get::<String, _>("cidr").parse().ok()?;
                Some(IpRule {
                    allow: r.get::<String, _>("action") == "allow",
                    net,
                })
            })
            .collect())
    }

    fn operator_from_row(r: &sqlx::any::AnyRow) -> OperatorRecord {
        OperatorRecord {
            name: r.get("name"),
            password_hash: r.get("password_hash"),
            permissions: PermissionSet::from_bits(r.get::<i64, _>("permissions") as u8),
            suspended: r.get::<i64, _>("suspended") != 0,
            max_sessions: r.get::<i64, _>("max_sessions").clamp(0, u32::MAX as i64) as u32,
            totp_secret: r.get("totp_secret"),
            totp_required: r.get::<i64, _>("totp_required") != 0,
            cert_required: r.get::<i64, _>("cert_required") != 0,
            ip_rules: Vec::new(),
            created_at: r.get("created_at"),
        }
    }

    const OPERATOR_COLUMNS: &'static str =
        "name, password_hash, permissions, suspended, max_sessions, totp_secret, totp_required, cert_required, created_at";

    pub async fn operator(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM operators WHERE name = $1",
            Self::OPERATOR_COLUMNS
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let mut record = Self::operator_from_row(&row);
        record.totp_secret = self.open_secret("operators", &record.name, record.totp_secret.take())?;
        record.ip_rules = self.ip_rules(name).await?;
        Ok(Some(record))
    }

    /// The operator's account as code issue checks it: the copy this relay kept, else read
    /// (as [`Store::operator`]) and kept until a change to it is written or hinted (see
    /// [`crate::operator_cache`]). Logins read afresh with [`Store::operator`].
    pub async fn operator_for_code(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError> {
        let seen = match self.operators.lookup(name) {
            Lookup::Hit(record) => return Ok(Some(OperatorRecord::clone(&record))),
            Lookup::Miss(seen) => seen,
        };
        let record = self.operator(name).await?;
        if let Some(record) = &record {
            self.operators.keep(seen, record.name.clone(), record.clone());
        }
        Ok(record)
    }

    /// Forgets the kept copy of `name`'s account: another process (a grid node, the
    /// command line) changed it.
    pub fn forget_operator(&self, name: &str) {
        self.operators.forget(name);
    }

    /// Forgets every kept account (the account poll: changes no hint announced).
    pub fn forget_operators(&self) {
        self.operators.forget_all();
    }

    /// Every operator with its rules, by name.
    pub async fn operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM operators ORDER BY name",
            Self::OPERATOR_COLUMNS
        ))
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<OperatorRecord> = rows.iter().map(Self::operator_from_row).collect();
        for op in &mut out {
            op.totp_secret = self.open_secret("operators", &op.name, op.totp_secret.take())?;
            op.ip_rules = self.ip_rules(&op.name).await?;
        }
        Ok(out)
    }

    /// Names and permissions of every operator, by name.
    pub async fn operator_names(&self) -> Result<Vec<(String, PermissionSet)>, StoreError> {
        let rows = sqlx::query("SELECT name, permissions FROM operators ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    r.get("name"),
                    PermissionSet::from_bits(r.get::<i64, _>("permissions") as u8),
                )
            })
            .collect())
    }

    // ---- admins ----

    /// Adds a console admin; a taken name is [`StoreError::AdminExists`].
    pub async fn add_admin(&self, name: &str, password_hash: &str, now_ms: i64) -> Result<(), StoreError> {
        let result = sqlx::query("INSERT INTO admins (name, password_hash, created_at) VALUES ($1, $2, $3)")
            .bind(name)
            .bind(password_hash)
            .bind(now_ms)
            .execute(&self.pool)
            .await;
        match result {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(StoreError::AdminExists(name.to_string())),
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    /// One admin by name.
    pub async fn admin(&self, name: &str) -> Result<Option<AdminRecord>, StoreError> {
        let row = sqlx::query("SELECT name, password_hash, totp_secret, cert_required FROM admins WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(AdminRecord {
            name: r.get("name"),
            password_hash: r.get("password_hash"),
            totp_secret: self.open_secret("admins", name, r.get("totp_secret"))?,
            cert_required: r.get::<i64, _>("cert_required") != 0,
        }))
    }

    /// Every admin's name, sorted.
    pub async fn admin_names(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT name FROM admins ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| r.get("name")).collect())
    }

    /// Replaces the argon2id hash of an admin's password.
    pub async fn set_admin_password(&self, name: &str, password_hash: &str) -> Result<(), StoreError> {
        self.set_account_column(AccountTable::Admins, name, "password_hash", password_hash.to_string())
            .await
    }

    /// Confirms (`Some`) or resets (`None`) an admin's TOTP enrolment.
    pub async fn set_admin_totp(&self, name: &str, secret: Option<&str>) -> Result<(), StoreError> {
        let sealed = self.seal_secret("admins", name, secret)?;
        self.set_account_column(AccountTable::Admins, name, "totp_secret", sealed)
            .await
    }

    /// Replaces an admin's recovery codes with these SHA-256 hashes.
    pub async fn replace_recovery_codes(&self, admin: &str, hashes: &[String]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM admin_recovery_codes WHERE admin = $1")
            .bind(admin)
            .execute(&mut *tx)
            .await?;
        for h in hashes {
            sqlx::query("INSERT INTO admin_recovery_codes (admin, code_hash) VALUES ($1, $2)")
                .bind(admin)
                .bind(h)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Spends a recovery code: true when it existed and was unused.
    pub async fn use_recovery_code(&self, admin: &str, hash: &str, now_ms: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE admin_recovery_codes SET used_at = $1 WHERE admin = $2 AND code_hash = $3 AND used_at IS NULL",
        )
        .bind(now_ms)
        .bind(admin)
        .bind(hash)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    // ---- admin login failures ----

    /// Takes one login attempt for `account` from `prefix` before the password or code is
    /// checked: the attempt counts as a failure until [`Store::refund_admin_attempt`]. One
    /// statement (an upsert), so parallel attempts each see their own count. The counter
    /// starts over when its lock has ended, or when it has not moved for `lockout_ms` and is
    /// not locked; the attempt that brings it to `lockout_after` sets the lock. The caller
    /// refuses, without checking, an attempt whose count is above `lockout_after`.
    pub async fn reserve_admin_attempt(
        &self,
        account: &str,
        prefix: &str,
        now_ms: i64,
        lockout_after: u32,
        lockout_ms: i64,
    ) -> Result<LoginAttempt, StoreError> {
        const SQL: &str =
            "INSERT INTO admin_login_failures AS f (account, prefix, failures, locked_until, updated_at) \
             VALUES ($1, $2, 1, CASE WHEN 1 >= $4 THEN $3 + $5 ELSE 0 END, $3) \
             ON CONFLICT (account, prefix) DO UPDATE SET \
             failures = CASE WHEN (f.locked_until > 0 AND f.locked_until <= $3) \
                              OR (f.locked_until = 0 AND f.updated_at <= $3 - $5) THEN 1 \
                        ELSE f.failures + 1 END, \
             locked_until = CASE WHEN (f.locked_until > 0 AND f.locked_until <= $3) \
                                   OR (f.locked_until = 0 AND f.updated_at <= $3 - $5) \
                                 THEN (CASE WHEN 1 >= $4 THEN $3 + $5 ELSE 0 END) \
                            WHEN f.locked_until = 0 AND f.failures + 1 >= $4 THEN $3 + $5 \
                            ELSE f.locked_until END, \
             updated_at = $3 \
             RETURNING failures, locked_until";
        let row = sqlx::query(SQL)
            .bind(account)
            .bind(prefix)
            .bind(now_ms)
            .bind(i64::from(lockout_after))
            .bind(lockout_ms)
            .fetch_one(&self.pool)
            .await?;
        Ok(LoginAttempt {
            failures: row.get::<i64, _>("failures").clamp(0, u32::MAX as i64) as u32,
            locked_until: row.get("locked_until"),
        })
    }

    /// Gives back an attempt taken by [`Store::reserve_admin_attempt`] that succeeded or was
    /// never checked; a count that falls below `lockout_after` is unlocked again.
    pub async fn refund_admin_attempt(
        &self,
        account: &str,
        prefix: &str,
        lockout_after: u32,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE admin_login_failures SET \
             failures = CASE WHEN failures > 0 THEN failures - 1 ELSE 0 END, \
             locked_until = CASE WHEN failures - 1 < $3 THEN 0 ELSE locked_until END \
             WHERE account = $1 AND prefix = $2",
        )
        .bind(account)
        .bind(prefix)
        .bind(i64::from(lockout_after))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets the failures of `account` from `prefix` (after a complete login from there).
    pub async fn clear_admin_failures(&self, account: &str, prefix: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM admin_login_failures WHERE account = $1 AND prefix = $2")
            .bind(account)
            .bind(prefix)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets every failure and lock of `account`, from every prefix (an admin unlocking
    /// it); returns how many prefixes were counted.
    pub async fn unlock_admin(&self, account: &str) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM admin_login_failures WHERE account = $1")
            .bind(account)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Failures against `account` from every prefix that moved after `since_ms`, counting at
    /// most `per_prefix` from each (attempts refused while locked were never checked).
    pub async fn admin_recent_failures(
        &self,
        account: &str,
        since_ms: i64,
        per_prefix: u32,
    ) -> Result<u64, StoreError> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(CASE WHEN failures > $3 THEN $3 ELSE failures END), 0) AS BIGINT) AS n \
             FROM admin_login_failures WHERE account = $1 AND updated_at > $2",
        )
        .bind(account)
        .bind(since_ms)
        .bind(i64::from(per_prefix))
        .fetch_one(&self.pool)
        .await?;
        Ok(row.get::<i64, _>("n").max(0) as u64)
    }

    /// Drops failure counters that neither moved nor hold a lock after `before_ms`; returns
    /// how many went.
    pub async fn prune_admin_failures(&self, before_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM admin_login_failures WHERE updated_at < $1 AND locked_until < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    // ---- history ----

    /// Applies one history change.
    pub async fn apply(&self, event: &SessionEvent) -> Result<(), StoreError> {
        self.apply_all(std::slice::from_ref(event)).await
    }

    /// Applies history changes in order in one transaction: all of them or none (the
    /// history writer hands over what queued up meanwhile, so a wave of sessions ending at
    /// once costs one commit, not one per session).
    pub async fn apply_all(&self, events: &[SessionEvent]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for event in events {
            Self::apply_in(&mut tx, event).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Applies one history change on `conn` (a transaction's connection).
    async fn apply_in(conn: &mut sqlx::AnyConnection, event: &SessionEvent) -> Result<(), StoreError> {
        use SessionEvent as E;
        match event {
            E::Issued {
                id,
                operator,
                operator_addr,
                relay_port,
                requested,
                at_ms,
            } => {
                sqlx::query(
                    "INSERT INTO sessions (id, operator, operator_ip, operator_port, operator_relay_port, requested, issued_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(id)
                .bind(operator)
                .bind(operator_addr.ip().to_string())
                .bind(operator_addr.port() as i64)
                .bind(*relay_port as i64)
                .bind(requested.to_string())
                .bind(at_ms)
                .execute(&mut *conn)
                .await?;
            }
            E::Joined {
                id,
                client_host,
                client_addr,
                relay_port,
                at_ms,
            } => {
                sqlx::query(
                    "UPDATE sessions SET client_host = $1, client_ip = $2, client_port = $3, client_relay_port = $4, joined_at = $5 WHERE id = $6",
                )
                .bind(client_host)
                .bind(client_addr.ip().to_string())
                .bind(client_addr.port() as i64)
                .bind(*relay_port as i64)
                .bind(at_ms)
                .bind(id)
                .execute(&mut *conn)
                .await?;
            }
            E::Consented { id, granted, at_ms } => {
                sqlx::query("UPDATE sessions SET granted = $1, consented_at = $2 WHERE id = $3")
                    .bind(granted.to_string())
                    .bind(at_ms)
                    .bind(id)
                    .execute(&mut *conn)
                    .await?;
            }
            E::Ended {
                id,
                reason,
                counters,
                granted,
                at_ms,
            } => {
                sqlx::query(
                    "UPDATE sessions SET ended_at = $1, end_reason = $2, pauses = $3, bytes_to_client = $4, bytes_to_operator = $5, \
                     granted = COALESCE($6, granted) WHERE id = $7",
                )
                .bind(at_ms)
                .bind(*reason)
                .bind(counters.pauses as i64)
                .bind(counters.bytes_to_client as i64)
                .bind(counters.bytes_to_operator as i64)
                .bind(granted.map(|g| g.to_string()))
                .bind(id)
                .execute(&mut *conn)
                .await?;
            }
            E::Resumed { id, resumes, .. } => {
                sqlx::query("UPDATE sessions SET resumes = $1 WHERE id = $2")
                    .bind(i64::from(*resumes))
                    .bind(id)
                    .execute(&mut *conn)
                    .await?;
            }
            E::File {
                id,
                name,
                size,
                direction,
                bytes,
                result,
                at_ms,
            } => {
                sqlx::query("INSERT INTO session_files (session_id, name, size, direction, bytes, result, at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                    .bind(id)
                    .bind(name)
                    .bind(i64::try_from(*size).unwrap_or(i64::MAX))
                    .bind(*direction)
                    .bind(i64::try_from(*bytes).unwrap_or(i64::MAX))
                    .bind(*result)
                    .bind(at_ms)
                    .execute(&mut *conn)
                    .await?;
            }
        }
        Ok(())
    }

    fn session_from_row(r: sqlx::any::AnyRow) -> SessionRecord {
        SessionRecord {
            id: r.get("id"),
            operator: r.get("operator"),
            operator_ip: r.get("operator_ip"),
            operator_port: r.get("operator_port"),
            operator_relay_port: r.get("operator_relay_port"),
            requested: r.get("requested"),
            client_host: r.get("client_host"),
            client_ip: r.get("client_ip"),
            client_port: r.get("client_port"),
            client_relay_port: r.get("client_relay_port"),
            granted: r.get("granted"),
            issued_at: r.get("issued_at"),
            joined_at: r.get("joined_at"),
            consented_at: r.get("consented_at"),
            ended_at: r.get("ended_at"),
            pauses: r.get("pauses"),
            resumes: r.get("resumes"),
            bytes_to_client: r.get("bytes_to_client"),
            bytes_to_operator: r.get("bytes_to_operator"),
            end_reason: r.get("end_reason"),
        }
    }

    /// The newest `limit` sessions, newest first.
    pub async fn sessions(&self, limit: i64) -> Result<Vec<SessionRecord>, StoreError> {
        self.history(&HistoryFilter {
            limit: Some(limit),
            ..Default::default()
        })
        .await
    }

    /// The statement [`Store::history`] runs for `filter`, its parameters, and whether its
    /// rows come oldest first (a Newer page).
    fn history_query(filter: &HistoryFilter) -> (String, Vec<Bind>, bool) {
        let mut sql = String::from("SELECT * FROM sessions WHERE 1 = 1");
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        // Parameters are numbered in the order the conditions are appended.
        let mut binds: Vec<Bind> = Vec::new();
        if let Some(op) = filter.operator.as_ref().filter(|s| !s.is_empty()) {
            sql.push_str(&format!(" AND operator = ${}", next()));
            binds.push(Bind::Text(op.clone()));
        }
        if let Some(ip) = filter.client_ip.as_ref().filter(|s| !s.is_empty()) {
            sql.push_str(&format!(" AND client_ip = ${}", next()));
            binds.push(Bind::Text(ip.clone()));
        }
        match filter.end_reason.as_deref().filter(|s| !s.is_empty()) {
            Some("live") => sql.push_str(" AND end_reason IS NULL"),
            Some(reason) => {
                sql.push_str(&format!(" AND end_reason = ${}", next()));
                binds.push(Bind::Text(reason.to_string()));
            }
            None => {}
        }
        if let Some(from) = filter.from_ms {
            sql.push_str(&format!(" AND issued_at >= ${}", next()));
            binds.push(Bind::Int(from));
        }
        if let Some(to) = filter.to_ms {
            sql.push_str(&format!(" AND issued_at < ${}", next()));
            binds.push(Bind::Int(to));
        }
        // Row values compare as a keyset and walk the (issued_at, id) index on both engines.
        let newer = match &filter.page {
            Some(PageFrom::Older((at, id))) => {
                sql.push_str(&format!(" AND (issued_at, id) < (${}, ${})", next(), next()));
                binds.extend([Bind::Int(*at), Bind::Text(id.clone())]);
                sql.push_str(" ORDER BY issued_at DESC, id DESC");
                false
            }
            Some(PageFrom::Newer((at, id))) => {
                sql.push_str(&format!(" AND (issued_at, id) > (${}, ${})", next(), next()));
                binds.extend([Bind::Int(*at), Bind::Text(id.clone())]);
                sql.push_str(" ORDER BY issued_at ASC, id ASC");
                true
            }
            None => {
                sql.push_str(" ORDER BY issued_at DESC, id DESC");
                false
            }
        };
        sql.push_str(&format!(" LIMIT ${}", next()));
        binds.push(Bind::Int(filter.limit.unwrap_or(1000).clamp(1, HISTORY_MAX_ROWS)));
        (sql, binds, newer)
    }

    /// Sessions matching `filter`, newest first (ties by id, descending), at most
    /// `filter.limit` (capped at [`HISTORY_MAX_ROWS`]); with `filter.page`, those older or
    /// newer than its key.
    pub async fn history(&self, filter: &HistoryFilter) -> Result<Vec<SessionRecord>, StoreError> {
        let (sql, binds, newer) = Self::history_query(filter);
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = match b {
                Bind::Text(t) => q.bind(t),
                Bind::Int(i) => q.bind(i),
            };
        }
        let rows = q.fetch_all(&self.pool).await?;
        let mut rows: Vec<SessionRecord> = rows.into_iter().map(Self::session_from_row).collect();
        if newer {
            rows.reverse();
        }
        Ok(rows)
    }

    /// One session by id.
    pub async fn session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM sessions WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(Self::session_from_row))
    }

    /// The file events of a session, oldest first.
    pub async fn session_files(&self, id: &str) -> Result<Vec<FileRecord>, StoreError> {
        let rows = sqlx::query("SELECT session_id, name, size, direction, bytes, result, at FROM session_files WHERE session_id = $1 ORDER BY at")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| FileRecord {
                session_id: r.get("session_id"),
                name: r.get("name"),
                size: r.get("size"),
                direction: r.get("direction"),
                bytes: r.get("bytes"),
                result: r.get("result"),
                at: r.get("at"),
            })
            .collect())
    }

    /// Deletes ended sessions issued before `before_ms` and their file events; returns how
    /// many sessions went. Live sessions are never purged.
    pub async fn purge_history(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM session_files WHERE session_id IN \
             (SELECT id FROM sessions WHERE issued_at < $1 AND ended_at IS NOT NULL)",
        )
        .bind(before_ms)
        .execute(&mut *tx)
        .await?;
        let done = sqlx::query("DELETE FROM sessions WHERE issued_at < $1 AND ended_at IS NOT NULL")
            .bind(before_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    // ---- audit ----

    /// The newest audit row, if any.
    pub async fn audit_head(&self) -> Result<Option<AuditRow>, StoreError> {
        let row = sqlx::query("SELECT * FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(audit_from_row))
    }

    /// Inserts one audit row; false when `seq` was taken meanwhile (the caller retries).
    pub async fn audit_insert(&self, row: &AuditRow) -> Result<bool, StoreError> {
        Self::inserted(Self::insert_audit_row(&self.pool, row).await)
    }

    /// Inserts audit rows in one transaction, all or none; false when a `seq` was taken
    /// meanwhile (nothing is written and the caller retries).
    pub async fn audit_insert_all(&self, rows: &[AuditRow]) -> Result<bool, StoreError> {
        if let [row] = rows {
            return self.audit_insert(row).await;
        }
        let mut tx = self.pool.begin().await?;
        for row in rows {
            // The transaction is rolled back as it is dropped.
            if !Self::inserted(Self::insert_audit_row(&mut *tx, row).await)? {
                return Ok(false);
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn insert_audit_row<'e>(
        on: impl sqlx::Executor<'e, Database = sqlx::Any>,
        row: &AuditRow,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO audit (seq, at, actor, action, target, ip, detail, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(row.seq)
        .bind(row.at)
        .bind(&row.actor)
        .bind(&row.action)
        .bind(&row.target)
        .bind(&row.ip)
        .bind(&row.detail)
        .bind(&row.prev_hash)
        .bind(&row.hash)
        .execute(on)
        .await
        .map(|_| ())
    }

    /// Whether an audit row went in: false when its `seq` was taken.
    fn inserted(done: Result<(), sqlx::Error>) -> Result<bool, StoreError> {
        match done {
            Ok(()) => Ok(true),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Audit rows with `seq` greater than `after`, oldest first, at most `limit`.
    pub async fn audit_rows(&self, after: i64, limit: i64) -> Result<Vec<AuditRow>, StoreError> {
        let rows = sqlx::query("SELECT * FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(audit_from_row).collect())
    }

    /// The newest `limit` audit rows, newest first.
    pub async fn audit_recent(&self, limit: i64) -> Result<Vec<AuditRow>, StoreError> {
        let rows = sqlx::query("SELECT * FROM audit ORDER BY seq DESC LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(audit_from_row).collect())
    }

    /// Runs raw SQL; for tests that simulate tampering.
    #[doc(hidden)]
    pub async fn execute_raw(&self, sql: &str) -> Result<u64, StoreError> {
        Ok(sqlx::query(sql).execute(&self.pool).await?.rows_affected())
    }
}

enum Bind {
    Text(String),
    Int(i64),
}

fn audit_from_row(r: sqlx::any::AnyRow) -> AuditRow {
    AuditRow {
        seq: r.get("seq"),
        at: r.get("at"),
        actor: r.get("actor"),
        action: r.get("action"),
        target: r.get("target"),
        ip: r.get("ip"),
        detail: r.get("detail"),
        prev_hash: r.get("prev_hash"),
        hash: r.get("hash"),
    }
}

/// Creates the SQLite file owner-only when `create` and it is missing, and takes group and
/// other access away from it when it exists.
fn protect_db_file(path: &Path, create: bool) -> Result<(), StoreError> {
    let fail = |source| StoreError::FileMode {
        path: path.display().to_string(),
        source,
    };
    if create {
        crate::keys::private_file_options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(fail)?;
    }
    match crate::keys::tighten(path, false) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other.map_err(fail),
    }
}

/// Quotes a PostgreSQL identifier (the schema name is validated by the config too).
fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestPostgres;

    #[test]
    fn ip_rules_first_match_wins() {
        let rules: Vec<IpRule> = ["deny 10.1.0.0/16", "allow 10.0.0.0/8", "allow 2001:db8::/32"]
            .iter()
            .map(|l| IpRule::parse(l).unwrap())
            .collect();
        assert!(!ip_allowed(&rules, "10.1.2.3".parse().unwrap()));
        assert!(ip_allowed(&rules, "10.2.0.1".parse().unwrap()));
        assert!(
            ip_allowed(&rules, "::ffff:10.2.0.1".parse().unwrap()),
            "mapped IPv4 matches IPv4 rules"
        );
        assert!(ip_allowed(&rules, "2001:db8::5".parse().unwrap()));
        assert!(
            !ip_allowed(&rules, "192.168.0.1".parse().unwrap()),
            "no match with rules present is a denial"
        );
        assert!(
            ip_allowed(&[], "192.168.0.1".parse().unwrap()),
            "no rules allows everything"
        );
        assert_eq!(
            IpRule::parse("allow 127.0.0.1").unwrap().to_line(),
            "allow 127.0.0.1/32"
        );
        assert_eq!(IpRule::parse("deny 10.1.2.3/8").unwrap().to_line(), "deny 10.0.0.0/8");
        assert!(IpRule::parse("permit 10.0.0.0/8").is_err());
        assert!(IpRule::parse("allow nonsense").is_err());
        assert!(IpRule::parse("allow 10.0.0.0/8 extra").is_err());
    }

    #[tokio::test]
    async fn sqlite_round_trip_with_files_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        // A data dir may have spaces and URL syntax in its name.
        let sub = dir.path().join("my data?#%20");
        std::fs::create_dir_all(&sub).unwrap();
        let store = Store::open(&sub.join("t.db")).await.unwrap();
        round_trip(&store).await;
        assert!(sub.join("t.db").exists());
        store.close().await;
    }

    /// Runs against the PostgreSQL that `.ci/run` provides, in a schema of its own.
    #[tokio::test]
    async fn postgres_round_trip_with_files_and_purge() {
        let Some(pg) = TestPostgres::from_env("store") else {
            return;
        };
        let store = pg.open().await;
        round_trip(&store).await;
        store.close().await;
        // Opening again runs the migrations again: they must be recorded as applied.
        let again = pg.open().await;
        assert_eq!(again.operator_names().await.unwrap().len(), 1);
        again.close().await;
        pg.drop_schema().await;
    }

    async fn round_trip(store: &Store) {
        use SessionEvent as E;
        store
            .add_operator("alice", "$argon2id$x", PermissionSet::ALL, 1)
            .await
            .unwrap();
        assert!(matches!(
            store.add_operator("alice", "h", PermissionSet::ALL, 1).await,
            Err(StoreError::OperatorExists(_))
        ));
        store
            .set_operator_ip_rules("alice", &[IpRule::parse("allow 10.0.0.0/8").unwrap()])
            .await
            .unwrap();
        store.set_operator_max_sessions("alice", 3).await.unwrap();
        store.set_operator_suspended("alice", true).await.unwrap();
        let op = store.operator("alice").await.unwrap().unwrap();
        assert!(op.suspended);
        assert_eq!(op.max_sessions, 3);
        assert_eq!(op.ip_rules[0].to_line(), "allow 10.0.0.0/8");
        assert!(matches!(
            store.set_operator_suspended("bob", true).await,
            Err(StoreError::NoSuchOperator(_))
        ));

        let addr: std::net::SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let counters = crate::policy::Counters {
            bytes_to_client: 10,
            bytes_to_operator: 20,
            pauses: 1,
            dropped_frames: 0,
        };
        for (id, at) in [("old", 1_000), ("new", 10_000)] {
            store
                .apply(&E::Issued {
                    id: id.into(),
                    operator: "alice".into(),
                    operator_addr: addr,
                    relay_port: 7615,
                    requested: PermissionSet::ALL,
                    at_ms: at,
                })
                .await
                .unwrap();
            store
                .apply(&E::Joined {
                    id: id.into(),
                    client_host: "pc".into(),
                    client_addr: "10.0.0.2:6000".parse().unwrap(),
                    relay_port: 443,
                    at_ms: at + 1,
                })
                .await
                .unwrap();
            store
                .apply(&E::File {
                    id: id.into(),
                    name: "a.txt".into(),
                    size: 5,
                    direction: "to_client",
                    bytes: 5,
                    result: "completed",
                    at_ms: at + 2,
                })
                .await
                .unwrap();
            store
                .apply(&E::Ended {
                    id: id.into(),
                    reason: "client_ended",
                    counters,
                    granted: Some(PermissionSet::ALL),
                    at_ms: at + 3,
                })
                .await
                .unwrap();
        }
        let files = store.session_files("new").await.unwrap();
        assert_eq!(
            (
                files.len(),
                files[0].name.as_str(),
                files[0].direction.as_str(),
                files[0].result.as_str()
            ),
            (1, "a.txt", "to_client", "completed")
        );
        let by_ip = store
            .history(&HistoryFilter {
                client_ip: Some("10.0.0.2".into()),
                from_ms: Some(5_000),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(by_ip.len(), 1);
        assert_eq!(by_ip[0].id, "new");
        assert_eq!(by_ip[0].bytes_to_operator, 20);
        assert!(store
            .history(&HistoryFilter {
                end_reason: Some("live".into()),
                ..Default::default()
            })
            .await
            .unwrap()
            .is_empty());
        assert_eq!(store.purge_history(5_000).await.unwrap(), 1);
        assert!(store.session("old").await.unwrap().is_none());
        assert!(store.session_files("old").await.unwrap().is_empty());
        assert_eq!(store.sessions(10).await.unwrap().len(), 1);
    }

    /// Parallel reservations each get their own count (no lost update), the lock starts at
    /// `lockout_after` and ends on time, a refund unlocks, and prefixes are independent.
    async fn admin_attempts(store: &Store) {
        const MIN: i64 = 60_000;
        let now = 1_000 * MIN;
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .reserve_admin_attempt("root", "10.0.0.0/24", now, 5, 15 * MIN)
                    .await
                    .unwrap()
            }));
        }
        let mut counts = Vec::new();
        for t in tasks {
            counts.push(t.await.unwrap());
        }
        let mut seen: Vec<u32> = counts.iter().map(|a| a.failures).collect();
        seen.sort_unstable();
        assert_eq!(seen, (1..=50).collect::<Vec<u32>>(), "every attempt counted once");
        for a in &counts {
            let locked = if a.failures >= 5 { now + 15 * MIN } else { 0 };
            assert!(a.failures < 5 || a.locked_until == locked, "{a:?}");
        }
        // Another prefix, and another account, start from nothing.
        let other = store
            .reserve_admin_attempt("root", "10.0.1.0/24", now, 5, 15 * MIN)
            .await
            .unwrap();
        assert_eq!(
            other,
            LoginAttempt {
                failures: 1,
                locked_until: 0
            }
        );
        assert_eq!(store.admin_recent_failures("root", now - 15 * MIN, 5).await.unwrap(), 6);
        // A refund below the threshold unlocks; a complete login clears.
        store.clear_admin_failures("root", "10.0.0.0/24").await.unwrap();
        for expected in 1..=5 {
            let a = store
                .reserve_admin_attempt("root", "10.0.0.0/24", now, 5, 15 * MIN)
                .await
                .unwrap();
            assert_eq!(a.failures, expected);
        }
        store.refund_admin_attempt("root", "10.0.0.0/24", 5).await.unwrap();
        let a = store
            .reserve_admin_attempt("root", "10.0.0.0/24", now, 5, 15 * MIN)
            .await
            .unwrap();
        assert_eq!(
            a,
            LoginAttempt {
                failures: 5,
                locked_until: now + 15 * MIN
            }
        );
        // The lock ends on time and the count starts over; so does a quiet counter.
        let later = now + 15 * MIN;
        let a = store
            .reserve_admin_attempt("root", "10.0.0.0/24", later, 5, 15 * MIN)
            .await
            .unwrap();
        assert_eq!(
            a,
            LoginAttempt {
                failures: 1,
                locked_until: 0
            }
        );
        let quiet = later + 15 * MIN;
        let a = store
            .reserve_admin_attempt("root", "10.0.1.0/24", quiet, 5, 15 * MIN)
            .await
            .unwrap();
        assert_eq!(a.failures, 1);
        assert_eq!(
            store.prune_admin_failures(quiet).await.unwrap(),
            1,
            "the stale counter goes"
        );
    }

    #[tokio::test]
    async fn sqlite_admin_attempts_are_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        admin_attempts(&store).await;
        store.close().await;
    }

    #[tokio::test]
    async fn postgres_admin_attempts_are_atomic() {
        let Some(pg) = TestPostgres::from_env("attempts") else {
            return;
        };
        let store = pg.open().await;
        admin_attempts(&store).await;
        store.close().await;
        pg.drop_schema().await;
    }
}
