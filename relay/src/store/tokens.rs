//! API tokens' table: a token's public id, name, scope, creator and times, and the SHA-256
//! of its secret (never the secret). Every node reads it on every use, so a revocation
//! holds on the whole grid from the next request.

use sqlx::Row;

use super::{Store, StoreError};

/// What a token may do on `/api/v1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenScope {
    /// `GET` only.
    Read,
    /// Every method (but never managing API tokens).
    Write,
}

impl TokenScope {
    /// The name stored and shown (`read`, `write`).
    pub fn name(self) -> &'static str {
        match self {
            TokenScope::Read => "read",
            TokenScope::Write => "write",
        }
    }

    /// From its name (`read`, `write`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(TokenScope::Read),
            "write" => Some(TokenScope::Write),
            _ => None,
        }
    }
}

/// One API token as listed (never its secret or hash).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenRow {
    /// The public part of the token (16 lower-case hex digits), in the token itself.
    pub id: String,
    pub name: String,
    pub scope: TokenScope,
    /// Who created it: `admin:NAME` or `cli`.
    pub created_by: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms after which it no longer works; `None`: never expires.
    pub expires_at: Option<i64>,
    /// Unix ms of a recent use (coarse: updated at most every [`LAST_USED_GRAIN_MS`]).
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub revoked_by: Option<String>,
}

impl TokenRow {
    /// Neither revoked nor expired at `now_ms`.
    pub fn is_live(&self, now_ms: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now_ms)
    }
}

/// How stale `last_used_at` may get: one write per token per five minutes at most, so
/// a busy script does not turn every read into a write.
pub const LAST_USED_GRAIN_MS: i64 = 5 * 60 * 1000;

/// Tokens kept at most (live and revoked together): a bound on the table and the page.
pub const MAX_TOKENS: i64 = 1_000;

const COLUMNS: &str = "id, name, scope, created_by, created_at, expires_at, last_used_at, revoked_at, revoked_by";

fn token_from_row(r: &sqlx::any::AnyRow) -> TokenRow {
    TokenRow {
        id: r.get("id"),
        name: r.get("name"),
        // Only `read` and `write` are ever written; anything else reads as the narrower.
        scope: TokenScope::parse(&r.get::<String, _>("scope")).unwrap_or(TokenScope::Read),
        created_by: r.get("created_by"),
        created_at: r.get("created_at"),
        expires_at: r.get("expires_at"),
        last_used_at: r.get("last_used_at"),
        revoked_at: r.get("revoked_at"),
        revoked_by: r.get("revoked_by"),
    }
}

/// What adding a token came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAdded {
    Added,
    /// [`MAX_TOKENS`] are stored already; nothing was written.
    Full,
}

impl Store {
    /// Records a new token with the SHA-256 (hex) of its secret, unless [`MAX_TOKENS`] are
    /// stored already.
    pub async fn add_api_token(&self, row: &TokenRow, secret_hash: &str) -> Result<TokenAdded, StoreError> {
        let done = sqlx::query(
            "INSERT INTO api_tokens (id, name, scope, secret_hash, created_by, created_at, expires_at) \
             SELECT $1, $2, $3, $4, $5, $6, NULLIF($7, 0) \
             WHERE (SELECT COUNT(*) FROM api_tokens) < $8",
        )
        .bind(&row.id)
        .bind(&row.name)
        .bind(row.scope.name())
        .bind(secret_hash)
        .bind(&row.created_by)
        .bind(row.created_at)
        .bind(row.expires_at.unwrap_or(0))
        .bind(MAX_TOKENS)
        .execute(&self.pool)
        .await?;
        Ok(if done.rows_affected() == 1 {
            TokenAdded::Added
        } else {
            TokenAdded::Full
        })
    }

    /// One token and the hash of its secret, by id.
    pub async fn api_token(&self, id: &str) -> Result<Option<(TokenRow, String)>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS}, secret_hash FROM api_tokens WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| (token_from_row(&r), r.get("secret_hash"))))
    }

    /// Every token, newest first.
    pub async fn api_tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM api_tokens ORDER BY created_at DESC, id LIMIT $1"
        ))
        .bind(MAX_TOKENS)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(token_from_row).collect())
    }

    /// Revokes a token; `Ok(None)`: no such token. A token revoked before keeps its first
    /// revocation.
    pub async fn revoke_api_token(&self, id: &str, by: &str, now_ms: i64) -> Result<Option<TokenRow>, StoreError> {
        sqlx::query("UPDATE api_tokens SET revoked_at = $1, revoked_by = $2 WHERE id = $3 AND revoked_at IS NULL")
            .bind(now_ms)
            .bind(by)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(self.api_token(id).await?.map(|(row, _)| row))
    }

    /// Notes a use of the token at `now_ms`, unless one was noted within
    /// [`LAST_USED_GRAIN_MS`].
    pub async fn touch_api_token(&self, id: &str, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE api_tokens SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $3)",
        )
        .bind(now_ms)
        .bind(id)
        .bind(now_ms - LAST_USED_GRAIN_MS)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
