//! Durable state: operator accounts and the session history, in SQLite in the data dir.
//! Migrations are embedded and applied at open. The store never sees content, passwords
//! (only argon2id hashes) or session codes.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tsunagu_proto::PermissionSet;

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
}

/// What the relay needs to know about an operator at login.
#[derive(Debug, Clone)]
pub struct OperatorRecord {
    pub name: String,
    pub password_hash: String,
    pub permissions: PermissionSet,
    pub suspended: bool,
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
}

/// A handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and applies migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            // Another process (the admin's CLI) may hold the write lock briefly.
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn add_operator(&self, name: &str, password_hash: &str, permissions: PermissionSet, now_ms: i64) -> Result<(), StoreError> {
        let result = sqlx::query("INSERT INTO operators (name, password_hash, permissions, created_at) VALUES (?, ?, ?, ?)")
            .bind(name)
            .bind(password_hash)
            .bind(permissions.bits() as i64)
            .bind(now_ms)
            .execute(&self.pool)
            .await;
        match result {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(StoreError::OperatorExists(name.to_string())),
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    pub async fn set_operator_permissions(&self, name: &str, permissions: PermissionSet) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE operators SET permissions = ? WHERE name = ?")
            .bind(permissions.bits() as i64)
            .bind(name)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NoSuchOperator(name.to_string()));
        }
        Ok(())
    }

    pub async fn operator(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError> {
        let row = sqlx::query("SELECT name, password_hash, permissions, suspended FROM operators WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| OperatorRecord {
            name: r.get("name"),
            password_hash: r.get("password_hash"),
            permissions: PermissionSet::from_bits(r.get::<i64, _>("permissions") as u8),
            suspended: r.get::<i64, _>("suspended") != 0,
        }))
    }

    pub async fn operator_names(&self) -> Result<Vec<(String, PermissionSet)>, StoreError> {
        let rows = sqlx::query("SELECT name, permissions FROM operators ORDER BY name").fetch_all(&self.pool).await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get("name"), PermissionSet::from_bits(r.get::<i64, _>("permissions") as u8)))
            .collect())
    }

    /// Applies one history change.
    pub async fn apply(&self, event: &crate::history::HistoryEvent) -> Result<(), StoreError> {
        use crate::history::HistoryEvent as E;
        match event {
            E::Barrier(_) => {}
            E::Issued { id, operator, operator_addr, relay_port, requested, at_ms } => {
                sqlx::query(
                    "INSERT INTO sessions (id, operator, operator_ip, operator_port, operator_relay_port, requested, issued_at) \
                     VALUES (?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(id)
                .bind(operator)
                .bind(operator_addr.ip().to_string())
                .bind(operator_addr.port() as i64)
                .bind(*relay_port as i64)
                .bind(requested.to_string())
                .bind(at_ms)
                .execute(&self.pool)
                .await?;
            }
            E::Joined { id, client_host, client_addr, relay_port, at_ms } => {
                sqlx::query(
                    "UPDATE sessions SET client_host = ?, client_ip = ?, client_port = ?, client_relay_port = ?, joined_at = ? WHERE id = ?",
                )
                .bind(client_host)
                .bind(client_addr.ip().to_string())
                .bind(client_addr.port() as i64)
                .bind(*relay_port as i64)
                .bind(at_ms)
                .bind(id)
                .execute(&self.pool)
                .await?;
            }
            E::Consented { id, granted, at_ms } => {
                sqlx::query("UPDATE sessions SET granted = ?, consented_at = ? WHERE id = ?")
                    .bind(granted.to_string())
                    .bind(at_ms)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
            }
            E::Ended { id, reason, counters, granted, at_ms } => {
                sqlx::query(
                    "UPDATE sessions SET ended_at = ?, end_reason = ?, pauses = ?, bytes_to_client = ?, bytes_to_operator = ?, \
                     granted = COALESCE(?, granted) WHERE id = ?",
                )
                .bind(at_ms)
                .bind(reason)
                .bind(counters.pauses as i64)
                .bind(counters.bytes_to_client as i64)
                .bind(counters.bytes_to_operator as i64)
                .bind(granted.map(|g| g.to_string()))
                .bind(id)
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(())
    }

    /// The newest `limit` sessions, newest first.
    pub async fn sessions(&self, limit: i64) -> Result<Vec<SessionRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM sessions ORDER BY issued_at DESC, id LIMIT ?")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| SessionRecord {
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
                bytes_to_client: r.get("bytes_to_client"),
                bytes_to_operator: r.get("bytes_to_operator"),
                end_reason: r.get("end_reason"),
            })
            .collect())
    }
}
