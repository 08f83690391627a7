//! The certificate operations behind the console, the REST API and `tsunagu-relay cert`:
//! issue (up to `certs.max_per_account` live ones per account), list, revoke, and whether
//! an account must present one. Each is audited; no key or import password is ever
//! stored or logged.

use crate::certs::ca::{ClientCa, NewCert};
use crate::store::{CertRole, CertRow, IssueOutcome, Revoked};

use super::ops::{Actor, OpError, Ops};

/// Longest device label, in characters.
pub const MAX_DEVICE_LABEL: usize = 64;

/// A certificate just issued: its record and the `.p12` with its import password (shown
/// once).
#[derive(Debug)]
pub struct IssuedCert {
    pub row: CertRow,
    pub file: NewCert,
}

/// Checks a device label: 1 to 64 printable characters (letters of any script, digits,
/// spaces and punctuation), no control characters, none beyond U+FFFF (the certificate
/// holds the label as a BMPString, which has no room for emoji and the like).
pub fn validate_device(label: &str) -> Result<(), OpError> {
    let n = label.chars().count();
    if n == 0
        || n > MAX_DEVICE_LABEL
        || label.chars().any(|c| c.is_control() || u32::from(c) > 0xFFFF)
        || label.trim() != label
    {
        return Err(OpError::Invalid(format!(
            "a device label is 1 to {MAX_DEVICE_LABEL} characters without control characters, emoji (nothing beyond U+FFFF) or surrounding spaces"
        )));
    }
    Ok(())
}

/// What the CA signed, as the record of a new certificate needs it.
struct Signed<'a> {
    serial: &'a str,
    fingerprint: &'a str,
    not_before: i64,
    not_after: i64,
}

impl Signed<'_> {
    /// The record of this new certificate of `account`'s `device`, issued by `actor` at `now`.
    fn record(&self, role: CertRole, account: &str, device: &str, actor: &Actor, now: i64) -> CertRow {
        CertRow {
            serial: self.serial.to_string(),
            role,
            account: account.to_string(),
            device: device.to_string(),
            fingerprint: self.fingerprint.to_string(),
            not_before: self.not_before,
            not_after: self.not_after,
            issued_at: now,
            issued_by: actor.name.clone(),
            revoked_at: None,
            revoked_by: None,
            replaced_by: None,
        }
    }
}

fn ca_error(e: crate::certs::ca::CaError) -> OpError {
    match e {
        crate::certs::ca::CaError::NoCaKey(_) => OpError::Conflict(e.to_string()),
        crate::certs::ca::CaError::BadRequest(_) => OpError::Invalid(e.to_string()),
        other => {
            tracing::error!(error = %other, "certificate service error");
            OpError::Internal
        }
    }
}

impl Ops {
    async fn account_exists(&self, role: CertRole, name: &str) -> Result<(), OpError> {
        let exists = match role {
            CertRole::Operator => self.store.operator(name).await?.is_some(),
            CertRole::Admin => self.store.admin(name).await?.is_some(),
        };
        if exists {
            Ok(())
        } else {
            Err(OpError::NotFound(format!("no {} named {name:?}", role.name())))
        }
    }

    /// Issues a client certificate for an account's device. Refused when the account
    /// already holds `certs.max_per_account` live certificates, also when many requests
    /// come at once (the store counts and records in one serialised transaction).
    pub async fn issue_cert(
        &self,
        actor: &Actor,
        role: CertRole,
        name: &str,
        device: &str,
    ) -> Result<IssuedCert, OpError> {
        validate_device(device)?;
        self.account_exists(role, name).await?;
        let ca = ClientCa::load(&self.store, &self.config, true)
            .await
            .map_err(ca_error)?
            .ok_or(OpError::Internal)?;
        let file = ca
            .issue(role, name, device, self.config.certs.client_lifetime)
            .map_err(ca_error)?;
        let now = crate::time::now_ms();
        let signed = Signed {
            serial: &file.serial,
            fingerprint: &file.fingerprint,
            not_before: file.not_before_ms,
            not_after: file.not_after_ms,
        };
        let row = signed.record(role, name, device, actor, now);
        let max = self.config.certs.max_per_account;
        match self.store.issue_client_cert(&row, max, now).await? {
            IssueOutcome::Issued => {}
            IssueOutcome::Full { live } => {
                return Err(OpError::Conflict(format!(
                    "{name} already holds {live} valid certificates, the most allowed ({max}); revoke one first"
                )))
            }
        }
        self.audit_cert(actor, "cert_issued", &row, "").await;
        Ok(IssuedCert { row, file })
    }

    /// Renews the live certificate `old` of an operator who logged in with it: signs the
    /// request `csr` (same account and device, a new serial and lifetime) and records the new
    /// certificate as `old`'s renewal. The old one stays valid until it expires; a
    /// certificate is renewed once. Returns the new record and certificate (DER) and the
    /// CA's certificate (DER).
    pub async fn renew_cert(
        &self,
        actor: &Actor,
        old: &str,
        csr: &[u8],
    ) -> Result<(CertRow, Vec<u8>, Vec<u8>), OpError> {
        let gone = || OpError::Conflict("this certificate was already renewed, or is revoked or expired".into());
        let now = crate::time::now_ms();
        let current = self
            .store
            .client_cert(old)
            .await?
            .filter(|c| c.is_live(now) && c.replaced_by.is_none())
            .ok_or_else(gone)?;
        // Renewal is for a certificate past half its validity (the app asks at about two
        // thirds): a stolen one cannot be renewed over and over to outrun its expiry.
        if now < current.not_before + (current.not_after - current.not_before) / 2 {
            return Err(OpError::Conflict(
                "this certificate is not due for renewal yet (past half its validity)".into(),
            ));
        }
        let ca = ClientCa::load(&self.store, &self.config, false)
            .await
            .map_err(ca_error)?
            .ok_or(OpError::Internal)?;
        let signed = ca
            .sign_request(csr, current.role, &current.account, self.config.certs.client_lifetime)
            .map_err(ca_error)?;
        let row = Signed {
            serial: &signed.serial,
            fingerprint: &signed.fingerprint,
            not_before: signed.not_before_ms,
            not_after: signed.not_after_ms,
        }
        .record(current.role, &current.account, &current.device, actor, now);
        if !self.store.renew_client_cert(old, &row).await? {
            return Err(gone());
        }
        self.audit_cert(actor, "cert_renewed", &row, &format!(" renews={old}"))
            .await;
        Ok((row, signed.der, ca.cert_der().to_vec()))
    }

    /// The certificates of one account, or of every account.
    pub async fn list_certs(&self, account: Option<(CertRole, &str)>) -> Result<Vec<CertRow>, OpError> {
        if let Some((role, name)) = account {
            self.account_exists(role, name).await?;
        }
        Ok(self.store.client_certs(account).await?)
    }

    /// Revokes a certificate by serial: every node refuses it within
    /// `certs.revocation_poll` and ends the sessions that logged in with it; the CRL is
    /// signed again (here when this process holds the CA key, else by a node that does).
    pub async fn revoke_cert(&self, actor: &Actor, serial: &str) -> Result<CertRow, OpError> {
        let serial = serial
            .trim()
            .trim_start_matches("0x")
            .to_ascii_lowercase()
            .replace(':', "");
        if serial.is_empty() || serial.len() > 40 || !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(OpError::Invalid("a serial is 1 to 40 hexadecimal digits".into()));
        }
        let serial = serial.trim_start_matches("00").to_string();
        let (row, line) = match self
            .store
            .revoke_client_cert(&serial, &actor.name, crate::time::now_ms())
            .await?
        {
            Revoked::Now(row, line) => (row, line),
            Revoked::Already(row) => return Ok(row),
            Revoked::NotFound => return Err(OpError::NotFound(format!("no certificate with serial {serial}"))),
        };
        // The live sessions on this relay end now; the other nodes (and this one's console
        // sessions) follow within the revocation poll.
        if let Some(sessions) = &self.sessions {
            sessions.end_sessions_with_certs(&line).await;
        }
        if self.config.client_ca_key_path().exists() {
            match self.store.revoked_client_certs().await {
                Ok(revoked) => {
                    let number = self.store.client_ca().await?.map(|c| c.crl_number + 1).unwrap_or(1);
                    if let Err(e) = crate::certs::sign_crl(&self.store, &self.config, &revoked, number).await {
                        tracing::warn!(error = %e, "could not sign the CRL now; a node holding the CA key signs it");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not read the revoked certificates for the CRL"),
            }
        }
        let others: Vec<&String> = line.iter().filter(|s| **s != row.serial).collect();
        let also = if others.is_empty() {
            String::new()
        } else {
            format!(" with_renewal_line={others:?}")
        };
        self.audit_cert(actor, "cert_revoked", &row, &also).await;
        Ok(row)
    }

    /// Requires (or not) a client certificate at the account's login. An operator's live
    /// sessions are not ended: the requirement holds from their next login.
    pub async fn require_cert(&self, actor: &Actor, role: CertRole, name: &str, required: bool) -> Result<(), OpError> {
        self.store.set_cert_required(role, name, required).await?;
        let action = match role {
            CertRole::Operator => "operator_cert_required",
            CertRole::Admin => "admin_cert_required",
        };
        self.audit_entry(actor, action, name, format!("required={required}"))
            .await;
        Ok(())
    }

    /// One audit row for a certificate, `extra` appended to its detail.
    async fn audit_cert(&self, actor: &Actor, action: &'static str, row: &CertRow, extra: &str) {
        let detail = format!(
            "role={} serial={} device={:?} not_after={}{extra}",
            row.role.name(),
            row.serial,
            row.device,
            row.not_after
        );
        self.audit_entry(actor, action, &row.account, detail).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_labels() {
        assert!(validate_device("laptop").is_ok());
        assert!(validate_device("山田のノートPC").is_ok());
        assert!(validate_device("").is_err());
        assert!(validate_device(" padded").is_err());
        assert!(validate_device("line\nbreak").is_err());
        assert!(validate_device(&"x".repeat(65)).is_err());
        assert!(validate_device("phone \u{1F3FB}").is_err(), "beyond the BMP");
        assert!(validate_device("☺ phone").is_ok());
    }
}
