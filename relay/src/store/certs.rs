//! The certificate service's tables: the client CA (certificate, sealed key, CRL), the
//! certificates it issued, and whether an account must present one at login.

use sqlx::Row;

use super::{Store, StoreError};

/// Whose certificate: an operator's (relay logins) or an admin's (console logins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CertRole {
    Operator,
    Admin,
}

impl CertRole {
    /// The name stored and shown (`operator`, `admin`).
    pub fn name(self) -> &'static str {
        match self {
            CertRole::Operator => "operator",
            CertRole::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "operator" => Some(CertRole::Operator),
            "admin" => Some(CertRole::Admin),
            _ => None,
        }
    }

    fn table(self) -> &'static str {
        match self {
            CertRole::Operator => "operators",
            CertRole::Admin => "admins",
        }
    }
}

/// The stored client CA.
#[derive(Debug, Clone)]
pub struct CaRow {
    pub cert_pem: String,
    /// The CA's private key (PEM) sealed with the client CA key file. Secret at rest.
    pub key_sealed: String,
    pub crl_pem: Option<String>,
    pub crl_number: i64,
    /// Unix ms after which the stored CRL is out of date.
    pub crl_next_update: i64,
}

/// One issued certificate, as listed (never its key).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertRow {
    /// Lower-case hex.
    pub serial: String,
    pub role: CertRole,
    pub account: String,
    /// The label the admin gave the device it is for.
    pub device: String,
    /// SHA-256 of the certificate (DER), lower-case hex.
    pub fingerprint: String,
    pub not_before: i64,
    pub not_after: i64,
    pub issued_at: i64,
    pub issued_by: String,
    pub revoked_at: Option<i64>,
    pub revoked_by: Option<String>,
    /// The certificate that renewed this one.
    pub replaced_by: Option<String>,
}

impl CertRow {
    /// Neither revoked nor expired at `now_ms`.
    pub fn is_live(&self, now_ms: i64) -> bool {
        self.revoked_at.is_none() && self.not_after > now_ms
    }
}

/// What an issue came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueOutcome {
    Issued,
    /// The account already holds `live` live certificates, the cap; nothing was written.
    Full {
        live: u32,
    },
}

/// What a revocation came to.
#[derive(Debug, Clone)]
pub enum Revoked {
    /// Revoked now, with the serials of its renewal line (the certificates it renewed and
    /// those that renewed it) revoked with it.
    Now(CertRow, Vec<String>),
    /// It had been revoked before.
    Already(CertRow),
    NotFound,
}

/// Most certificates one revocation follows along a renewal line.
const MAX_RENEWAL_LINE: usize = 64;

const CERT_COLUMNS: &str =
    "serial, role, account, device, fingerprint, not_before, not_after, issued_at, issued_by, revoked_at, revoked_by";
/// What a listing reads: the columns written at issue, and the renewal.
const CERT_LISTED: &str = "serial, role, account, device, fingerprint, not_before, not_after, issued_at, issued_by, \
     revoked_at, revoked_by, replaced_by";

fn cert_from_row(r: &sqlx::any::AnyRow) -> CertRow {
    CertRow {
        serial: r.get("serial"),
        role: CertRole::parse(&r.get::<String, _>("role")).unwrap_or(CertRole::Operator),
        account: r.get("account"),
        device: r.get("device"),
        fingerprint: r.get("fingerprint"),
        not_before: r.get("not_before"),
        not_after: r.get("not_after"),
        issued_at: r.get("issued_at"),
        issued_by: r.get("issued_by"),
        revoked_at: r.get("revoked_at"),
        revoked_by: r.get("revoked_by"),
        replaced_by: r.get("replaced_by"),
    }
}

/// Writes a new certificate's row (neither revoked nor renewed) within `tx`.
async fn insert_cert(tx: &mut sqlx::Transaction<'_, sqlx::Any>, row: &CertRow) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO client_certs ({CERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, NULL)"
    ))
    .bind(&row.serial)
    .bind(row.role.name())
    .bind(&row.account)
    .bind(&row.device)
    .bind(&row.fingerprint)
    .bind(row.not_before)
    .bind(row.not_after)
    .bind(row.issued_at)
    .bind(&row.issued_by)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// The client CA, once one was created.
    pub async fn client_ca(&self) -> Result<Option<CaRow>, StoreError> {
        let row = sqlx::query(
            "SELECT cert_pem, key_sealed, crl_pem, crl_number, crl_next_update FROM client_ca WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| CaRow {
            cert_pem: r.get("cert_pem"),
            key_sealed: r.get("key_sealed"),
            crl_pem: r.get("crl_pem"),
            crl_number: r.get("crl_number"),
            crl_next_update: r.get("crl_next_update"),
        }))
    }

    /// Stores a new client CA unless one exists already (another process may have made one
    /// meanwhile: then theirs stays). Returns whether this one was stored.
    pub async fn insert_client_ca(&self, cert_pem: &str, key_sealed: &str, now_ms: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO client_ca (id, cert_pem, key_sealed, created_at) VALUES (1, $1, $2, $3) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(cert_pem)
        .bind(key_sealed)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Stores a newly signed CRL if `number` follows the stored one (two signers at once:
    /// the higher number stays). Returns whether it was stored.
    pub async fn set_client_crl(&self, pem: &str, number: i64, next_update_ms: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE client_ca SET crl_pem = $1, crl_number = $2, crl_next_update = $3 WHERE id = 1 AND crl_number < $2",
        )
        .bind(pem)
        .bind(number)
        .bind(next_update_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a new certificate for `row.account` unless the account already holds `max`
    /// live ones. One transaction whose first statement writes the account's row in
    /// `client_cert_accounts`: concurrent issues for one account take their turn there, so
    /// each counts what the one before it wrote and the cap holds under a burst.
    pub async fn issue_client_cert(&self, row: &CertRow, max: u32, now_ms: i64) -> Result<IssueOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO client_cert_accounts AS a (role, account, issued) VALUES ($1, $2, 0) \
             ON CONFLICT (role, account) DO UPDATE SET issued = a.issued",
        )
        .bind(row.role.name())
        .bind(&row.account)
        .execute(&mut *tx)
        .await?;
        let live: i64 = sqlx::query(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM client_certs \
             WHERE role = $1 AND account = $2 AND revoked_at IS NULL AND replaced_by IS NULL AND not_after > $3",
        )
        .bind(row.role.name())
        .bind(&row.account)
        .bind(now_ms)
        .fetch_one(&mut *tx)
        .await?
        .get("n");
        if live >= i64::from(max) {
            tx.rollback().await?;
            return Ok(IssueOutcome::Full {
                live: live.clamp(0, u32::MAX as i64) as u32,
            });
        }
        insert_cert(&mut tx, row).await?;
        sqlx::query("UPDATE client_cert_accounts SET issued = issued + 1 WHERE role = $1 AND account = $2")
            .bind(row.role.name())
            .bind(&row.account)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(IssueOutcome::Issued)
    }

    /// Records `row` as the renewal of certificate `old` (live, never renewed before), in one
    /// transaction; `false` when `old` was renewed or revoked meanwhile (nothing written).
    pub async fn renew_client_cert(&self, old: &str, row: &CertRow) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let marked = sqlx::query(
            "UPDATE client_certs SET replaced_by = $1 WHERE serial = $2 AND replaced_by IS NULL AND revoked_at IS NULL",
        )
        .bind(&row.serial)
        .bind(old)
        .execute(&mut *tx)
        .await?;
        if marked.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        insert_cert(&mut tx, row).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// One certificate by serial.
    pub async fn client_cert(&self, serial: &str) -> Result<Option<CertRow>, StoreError> {
        let row = sqlx::query(&format!("SELECT {CERT_LISTED} FROM client_certs WHERE serial = $1"))
            .bind(serial)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(cert_from_row))
    }

    /// The certificates of one account (or of every account), newest first.
    pub async fn client_certs(&self, account: Option<(CertRole, &str)>) -> Result<Vec<CertRow>, StoreError> {
        let rows = match account {
            Some((role, name)) => {
                sqlx::query(&format!(
                    "SELECT {CERT_LISTED} FROM client_certs WHERE role = $1 AND account = $2 \
                     ORDER BY issued_at DESC, serial"
                ))
                .bind(role.name())
                .bind(name)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {CERT_LISTED} FROM client_certs ORDER BY role, account, issued_at DESC, serial"
                ))
                .fetch_all(&self.pool)
                .await?
            }
        };
        Ok(rows.iter().map(cert_from_row).collect())
    }

    /// Revokes a certificate (once: a second revocation keeps the first time and admin), and
    /// with it every certificate of its renewal line: a device's certificate revoked after it
    /// renewed itself (or before an older one expired) leaves no valid one behind.
    pub async fn revoke_client_cert(&self, serial: &str, by: &str, now_ms: i64) -> Result<Revoked, StoreError> {
        let Some(row) = self.client_cert(serial).await? else {
            return Ok(Revoked::NotFound);
        };
        let mut tx = self.pool.begin().await?;
        // A write first, so SQLite takes the write lock before this transaction reads (a
        // read first could not be followed by a write once another process had committed).
        let first = sqlx::query(
            "UPDATE client_certs SET revoked_at = $1, revoked_by = $2 WHERE serial = $3 AND revoked_at IS NULL",
        )
        .bind(now_ms)
        .bind(by)
        .bind(serial)
        .execute(&mut *tx)
        .await?;
        let mut revoked_now = Vec::new();
        if first.rows_affected() == 1 {
            revoked_now.push(serial.to_string());
        }
        let mut line = vec![serial.to_string()];
        // Renewals follow `replaced_by` forward; the certificates this one renewed point at
        // it. A line is short (one renewal per two thirds of a lifetime); the bound only
        // guards against a malformed cycle.
        let mut next = row.replaced_by.clone();
        while let Some(s) = next.filter(|s| !line.contains(s) && line.len() < MAX_RENEWAL_LINE) {
            next = sqlx::query("SELECT replaced_by FROM client_certs WHERE serial = $1")
                .bind(&s)
                .fetch_optional(&mut *tx)
                .await?
                .and_then(|r| r.get::<Option<String>, _>("replaced_by"));
            line.push(s);
        }
        let mut back = serial.to_string();
        while line.len() < MAX_RENEWAL_LINE {
            let older: Option<String> = sqlx::query("SELECT serial FROM client_certs WHERE replaced_by = $1")
                .bind(&back)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.get("serial"));
            match older.filter(|s| !line.contains(s)) {
                Some(s) => {
                    line.push(s.clone());
                    back = s;
                }
                None => break,
            }
        }
        for s in line.iter().skip(1) {
            let done = sqlx::query(
                "UPDATE client_certs SET revoked_at = $1, revoked_by = $2 WHERE serial = $3 AND revoked_at IS NULL",
            )
            .bind(now_ms)
            .bind(by)
            .bind(s)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 1 {
                revoked_now.push(s.clone());
            }
        }
        tx.commit().await?;
        let row = self.client_cert(serial).await?.unwrap_or(row);
        Ok(if revoked_now.is_empty() {
            Revoked::Already(row)
        } else {
            Revoked::Now(row, revoked_now)
        })
    }

    /// Every revoked serial with its revocation time (for the CRL and every node's check).
    pub async fn revoked_client_certs(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows =
            sqlx::query("SELECT serial, revoked_at FROM client_certs WHERE revoked_at IS NOT NULL ORDER BY serial")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.iter().map(|r| (r.get("serial"), r.get("revoked_at"))).collect())
    }

    /// Requires (or not) a client certificate at the account's login.
    pub async fn set_cert_required(&self, role: CertRole, name: &str, required: bool) -> Result<(), StoreError> {
        let done = sqlx::query(&format!(
            "UPDATE {} SET cert_required = $1 WHERE name = $2",
            role.table()
        ))
        .bind(i64::from(required))
        .bind(name)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(match role {
                CertRole::Operator => StoreError::NoSuchOperator(name.to_string()),
                CertRole::Admin => StoreError::NoSuchAdmin(name.to_string()),
            });
        }
        if role == CertRole::Operator {
            self.forget_operator(name);
        }
        Ok(())
    }

    /// Whether the account must present a client certificate (`None`: no such account).
    pub async fn cert_required(&self, role: CertRole, name: &str) -> Result<Option<bool>, StoreError> {
        let row = sqlx::query(&format!("SELECT cert_required FROM {} WHERE name = $1", role.table()))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get::<i64, _>("cert_required") != 0))
    }
}
