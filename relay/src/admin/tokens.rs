//! API tokens, the credential scripts present on `/api/v1` instead of a console session:
//! created and revoked by an admin (console, API with a console session, CLI), scoped
//! read-only or read-write, stored only as the SHA-256 of their secret, audited.
//!
//! A token reads `tsu_<id>_<secret>`: `tsu_` so that a leaked one is easy to grep for,
//! `id` (16 hex digits) its public part, by which it is found, listed and revoked, and
//! `secret` 256 bits from the OS CSPRNG (64 hex digits). The store is read at every use,
//! so a revocation holds on every node of a grid from the next request.

use sha2::Digest;

use super::ops::{Actor, OpError, Ops};
use crate::store::{TokenAdded, TokenRow, TokenScope, MAX_TOKENS};

/// What every token starts with.
pub const TOKEN_PREFIX: &str = "tsu_";
/// Hex digits of a token's id (64 bits: unique enough among [`MAX_TOKENS`], and public).
pub const ID_DIGITS: usize = 16;
/// Random bytes of a token's secret (256 bits).
const SECRET_BYTES: usize = 32;
/// Longest a token's lifetime may be set, in days (ten years: longer is no expiry).
pub const MAX_EXPIRY_DAYS: u32 = 3650;
/// Longest token name, in characters (the same rule as account names).
pub const MAX_TOKEN_NAME: usize = tsunagu_proto::limits::MAX_USER_NAME;

/// A token just created: its record and the token itself, shown once.
#[derive(Debug)]
pub struct CreatedToken {
    pub row: TokenRow,
    /// `tsu_<id>_<secret>`: never stored, never logged.
    pub token: String,
}

/// Why a presented token was refused, for the audit trail (never the token itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// Not `Bearer tsu_<16 hex>_<64 hex>`.
    Malformed,
    /// No token with this id, or the secret does not match.
    Unknown,
    Revoked,
    Expired,
}

impl TokenRefusal {
    /// The reason as the audit trail and the JSON error name it.
    pub fn reason(self) -> &'static str {
        match self {
            TokenRefusal::Malformed => "malformed",
            TokenRefusal::Unknown => "unknown",
            TokenRefusal::Revoked => "revoked",
            TokenRefusal::Expired => "expired",
        }
    }
}

/// Checks a token name: 1 to 64 letters, digits, `.`, `_`, `-` or `@` (as account names).
pub fn validate_token_name(name: &str) -> Result<(), OpError> {
    crate::accounts::validate_name(name).map_err(|_| {
        OpError::Invalid(format!(
            "a token name is 1 to {MAX_TOKEN_NAME} letters, digits, '.', '_', '-' or '@'"
        ))
    })
}

/// Checks a token id: [`ID_DIGITS`] lower-case hex digits.
pub fn validate_token_id(id: &str) -> Result<(), OpError> {
    if is_token_id(id) {
        Ok(())
    } else {
        Err(OpError::Invalid(format!(
            "a token id is {ID_DIGITS} lower-case hexadecimal digits"
        )))
    }
}

fn is_token_id(id: &str) -> bool {
    id.len() == ID_DIGITS && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The hash stored for a secret: SHA-256, hex. A secret of 256 random bits needs no salt
/// or slow hash: nobody can guess one, and the hash does not reveal it.
fn secret_hash(secret: &str) -> String {
    crate::hex::hex(&sha2::Sha256::digest(secret.as_bytes()))
}

/// Splits `tsu_<id>_<secret>` into id and secret.
fn split_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex_secret = secret.len() == SECRET_BYTES * 2 && secret.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (is_token_id(id) && hex_secret).then_some((id, secret))
}

/// The public id of a presented token when it is well formed (for the audit trail).
pub fn presented_id(token: &str) -> Option<&str> {
    split_token(token).map(|(id, _)| id)
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Ops {
    /// Creates a token named `name` with `scope`, valid for `expires_days` days (`None`:
    /// until revoked). The answer holds the token, which is shown only now.
    pub async fn create_token(
        &self,
        actor: &Actor,
        name: &str,
        scope: TokenScope,
        expires_days: Option<u32>,
    ) -> Result<CreatedToken, OpError> {
        validate_token_name(name)?;
        if let Some(days) = expires_days {
            if days == 0 || days > MAX_EXPIRY_DAYS {
                return Err(OpError::Invalid(format!(
                    "a token expires in 1 to {MAX_EXPIRY_DAYS} days"
                )));
            }
        }
        let mut id = [0u8; ID_DIGITS / 2];
        let mut secret = [0u8; SECRET_BYTES];
        if getrandom::fill(&mut id).is_err() || getrandom::fill(&mut secret).is_err() {
            // No token without the OS CSPRNG.
            tracing::error!("no randomness for an API token");
            return Err(OpError::Internal);
        }
        let (id, secret) = (crate::hex::hex(&id), crate::hex::hex(&secret));
        let now = crate::time::now_ms();
        let row = TokenRow {
            id: id.clone(),
            name: name.to_string(),
            scope,
            created_by: actor.name.clone(),
            created_at: now,
            expires_at: expires_days.map(|d| now + i64::from(d) * 86_400_000),
            last_used_at: None,
            revoked_at: None,
            revoked_by: None,
        };
        match self.store.add_api_token(&row, &secret_hash(&secret)).await? {
            TokenAdded::Added => {}
            TokenAdded::Full => {
                return Err(OpError::Conflict(format!(
                    "the relay holds {MAX_TOKENS} tokens, the most allowed"
                )))
            }
        }
        let expires = row
            .expires_at
            .map(crate::time::format_utc)
            .unwrap_or_else(|| "never".into());
        self.audit_entry(
            actor,
            "api_token_created",
            &id,
            format!("name={name} scope={} expires={expires}", scope.name()),
        )
        .await;
        Ok(CreatedToken {
            token: format!("{TOKEN_PREFIX}{id}_{secret}"),
            row,
        })
    }

    /// Every token, newest first (never a secret).
    pub async fn list_tokens(&self) -> Result<Vec<TokenRow>, OpError> {
        Ok(self.store.api_tokens().await?)
    }

    /// Revokes a token by id: it stops working at once, on every node. Revoking a revoked
    /// token changes nothing.
    pub async fn revoke_token(&self, actor: &Actor, id: &str) -> Result<TokenRow, OpError> {
        validate_token_id(id)?;
        let Some(before) = self.store.api_token(id).await?.map(|(row, _)| row) else {
            return Err(OpError::NotFound(format!("no token with id {id}")));
        };
        if before.revoked_at.is_some() {
            return Ok(before);
        }
        let row = self
            .store
            .revoke_api_token(id, &actor.name, crate::time::now_ms())
            .await?
            .ok_or_else(|| OpError::NotFound(format!("no token with id {id}")))?;
        self.audit_entry(actor, "api_token_revoked", id, format!("name={}", row.name))
            .await;
        Ok(row)
    }

    /// The live token `presented` is (`tsu_<id>_<secret>`), checked against the store in
    /// constant time; notes the use (coarsely).
    pub async fn authenticate_token(&self, presented: &str) -> Result<Result<TokenRow, TokenRefusal>, OpError> {
        let Some((id, secret)) = split_token(presented) else {
            return Ok(Err(TokenRefusal::Malformed));
        };
        let Some((row, stored)) = self.store.api_token(id).await? else {
            return Ok(Err(TokenRefusal::Unknown));
        };
        if !constant_eq(secret_hash(secret).as_bytes(), stored.as_bytes()) {
            return Ok(Err(TokenRefusal::Unknown));
        }
        let now = crate::time::now_ms();
        if row.revoked_at.is_some() {
            return Ok(Err(TokenRefusal::Revoked));
        }
        if !row.is_live(now) {
            return Ok(Err(TokenRefusal::Expired));
        }
        if let Err(e) = self.store.touch_api_token(id, now).await {
            // The use is allowed all the same; only the coarse "last used" lags.
            tracing::warn!(error = %e, "could not note an API token's use");
        }
        Ok(Ok(row))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_split_only_when_well_formed() {
        let secret = "ab".repeat(32);
        let good = format!("tsu_0123456789abcdef_{secret}");
        assert_eq!(split_token(&good), Some(("0123456789abcdef", secret.as_str())));
        assert_eq!(split_token(&good.replace("tsu_", "tsx_")), None);
        assert_eq!(split_token(&good.to_uppercase()), None);
        assert_eq!(split_token(&format!("tsu_0123456789abcde_{secret}")), None);
        assert_eq!(split_token(&format!("{good}0")), None);
        assert_eq!(split_token(""), None);
    }

    #[test]
    fn names_and_ids() {
        assert!(validate_token_name("helpdesk-sync").is_ok());
        assert!(validate_token_name("").is_err());
        assert!(validate_token_name("has space").is_err());
        assert!(validate_token_id("0123456789abcdef").is_ok());
        assert!(validate_token_id("0123456789ABCDEF").is_err());
        assert!(validate_token_id("0123").is_err());
    }
}
