//! The certificate service: a client CA that issues certificates to operators and admins
//! ([`ca`]), and what every node needs to check them: the CA certificate and the revoked
//! serials, re-read from the database every `certs.revocation_poll` ([`CertState`],
//! [`refresh`]), and a TLS client-certificate verifier that refuses a revoked certificate
//! in the handshake ([`ClientVerifier`]).
//!
//! Listeners ask for a client certificate only once a client CA exists, and never require
//! one in the handshake: whether an account must present one is decided at its login. TLS
//! session resumption is off on every listener, so each connection's certificate is
//! checked afresh.

pub mod ca;

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::store::{CertRole, CertRow, Store};

/// Why a certificate login is refused (what the peer is told, by the caller's mapping).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertRefusal {
    #[error("this account must present its client certificate")]
    Missing,
    #[error("the client certificate presented is not one of this account's valid certificates")]
    NotThisAccounts,
    #[error(
        "this relay's list of revoked certificates is out of date ({age_s} s old): certificate logins \
         are refused until it can read the list again"
    )]
    Stale { age_s: u64 },
    #[error("the relay could not check the certificate")]
    CheckFailed,
}

/// A client certificate a connection presented and the handshake verified (signed by the
/// client CA, in its validity period, not revoked at that moment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// Lower-case hex, as stored.
    pub serial: String,
}

impl PeerCert {
    /// The certificate a TLS connection presented, if any.
    pub fn of(certs: Option<&[CertificateDer<'_>]>) -> Option<Self> {
        let leaf = certs?.first()?;
        ca::serial_of(leaf).map(|serial| Self { serial })
    }
}

#[derive(Default)]
struct Inner {
    ca_pem: Option<String>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    revoked: HashSet<String>,
    refreshed: Option<Instant>,
    crl_pem: Option<String>,
}

/// What every node knows of the client CA and the revoked serials; cheap to share.
#[derive(Default)]
pub struct CertState {
    inner: RwLock<Inner>,
}

impl std::fmt::Debug for CertState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertState")
    }
}

/// What one refresh changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Refreshed {
    /// Serials revoked since the refresh before (all of them at the first refresh).
    pub newly_revoked: Vec<String>,
    pub crl_changed: bool,
    pub ca_changed: bool,
}

impl CertState {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_revoked(&self, serial: &str) -> bool {
        self.read().revoked.contains(serial)
    }

    /// Whether the revocation list is recent enough to trust at `now`.
    pub fn check_fresh(&self, now: Instant, max_age: Duration) -> Result<(), CertRefusal> {
        match self.read().refreshed {
            Some(at) if now.saturating_duration_since(at) <= max_age => Ok(()),
            Some(at) => Err(CertRefusal::Stale {
                age_s: now.saturating_duration_since(at).as_secs(),
            }),
            None => Err(CertRefusal::Stale { age_s: 0 }),
        }
    }

    /// The CRL as last read, PEM.
    pub fn crl_pem(&self) -> Option<String> {
        self.read().crl_pem.clone()
    }

    /// Takes what was read from the database at `now`.
    pub fn update(
        &self,
        ca_pem: Option<&str>,
        revoked: HashSet<String>,
        crl_pem: Option<String>,
        now: Instant,
    ) -> Refreshed {
        let mut inner = self.write();
        let mut done = Refreshed::default();
        if inner.ca_pem.as_deref() != ca_pem {
            inner.verifier = ca_pem.and_then(build_verifier);
            inner.ca_pem = ca_pem.map(str::to_string);
            done.ca_changed = true;
        }
        done.newly_revoked = revoked.difference(&inner.revoked).cloned().collect();
        done.newly_revoked.sort();
        inner.revoked = revoked;
        if inner.crl_pem != crl_pem {
            inner.crl_pem = crl_pem;
            done.crl_changed = true;
        }
        inner.refreshed = Some(now);
        done
    }

    /// The verifier for this node's listeners.
    pub fn verifier(self: &Arc<Self>) -> Arc<ClientVerifier> {
        Arc::new(ClientVerifier { state: self.clone() })
    }

    /// Checks the certificate a login presented against the account: required or not, a
    /// certificate presented must be one of this account's live ones to count. Returns the
    /// serial to remember with the login (its sessions end if it is revoked), or why the
    /// login is refused when `required`.
    pub async fn check_login(
        &self,
        store: &Store,
        max_age: Duration,
        role: CertRole,
        account: &str,
        presented: Option<&PeerCert>,
        required: bool,
    ) -> Result<Option<String>, CertRefusal> {
        let refuse = |r: CertRefusal| if required { Err(r) } else { Ok(None) };
        let Some(cert) = presented else {
            return refuse(CertRefusal::Missing);
        };
        if let Err(stale) = self.check_fresh(Instant::now(), max_age) {
            tracing::warn!(%stale, "certificate login refused: the revocation list is out of date");
            return refuse(stale);
        }
        let row: Option<CertRow> = match store.client_cert(&cert.serial).await {
            Ok(row) => row,
            Err(e) => {
                tracing::error!(error = %e, "certificate lookup failed");
                return refuse(CertRefusal::CheckFailed);
            }
        };
        let ok = row.is_some_and(|r| {
            r.role == role && r.account == account && r.is_live(crate::time::now_ms()) && !self.is_revoked(&r.serial)
        });
        if ok {
            Ok(Some(cert.serial.clone()))
        } else {
            refuse(CertRefusal::NotThisAccounts)
        }
    }
}

fn build_verifier(ca_pem: &str) -> Option<Arc<dyn ClientCertVerifier>> {
    let der = match CertificateDer::from_pem_slice(ca_pem.as_bytes()) {
        Ok(der) => der,
        Err(e) => {
            tracing::error!(error = %e, "the stored client CA certificate is malformed; certificate logins fail");
            return None;
        }
    };
    let mut roots = rustls::RootCertStore::empty();
    if let Err(e) = roots.add(der) {
        tracing::error!(error = %e, "the stored client CA certificate is not usable; certificate logins fail");
        return None;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    match WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
    {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(error = %e, "cannot build the client certificate verifier");
            None
        }
    }
}

/// The listeners' client-certificate check: asks for a certificate once a client CA
/// exists (never requires one: accounts that must present one are refused at login), and
/// refuses in the handshake a certificate that is not the CA's, out of its validity
/// period, or revoked.
pub struct ClientVerifier {
    state: Arc<CertState>,
}

impl std::fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientVerifier")
    }
}

impl ClientVerifier {
    fn current(&self) -> Option<Arc<dyn ClientCertVerifier>> {
        self.state.read().verifier.clone()
    }
}

fn algorithms() -> rustls::crypto::WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.current().is_some()
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: the client offers whichever certificate it was given.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let Some(inner) = self.current() else {
            return Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
        };
        inner.verify_client_cert(end_entity, intermediates, now)?;
        let serial =
            ca::serial_of(end_entity).ok_or(rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if self.state.is_revoked(&serial) {
            tracing::info!(%serial, "refused a revoked client certificate");
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// Re-reads the CA, the revoked serials and the CRL once into `state`. On a node holding
/// the CA key, first signs a new CRL when the stored one is missing, lists fewer serials
/// than are revoked, or has less than half its lifetime left.
pub async fn refresh_once(
    state: &CertState,
    store: &Store,
    config: &crate::config::Config,
) -> Result<Refreshed, crate::store::StoreError> {
    let row = store.client_ca().await?;
    let revoked = store.revoked_client_certs().await?;
    let mut crl_pem = row.as_ref().and_then(|r| r.crl_pem.clone());
    if let Some(row) = &row {
        let listed = crl_pem.as_deref().map(crl_entries).unwrap_or(usize::MAX);
        let now = crate::time::now_ms();
        let half = (ca::CRL_LIFETIME / 2).as_millis() as i64;
        let due = crl_pem.is_none() || listed != revoked.len() || row.crl_next_update - now < half;
        if due && config.client_ca_key_path().exists() {
            match sign_crl(store, config, &revoked, row.crl_number + 1).await {
                Ok(Some(pem)) => crl_pem = Some(pem),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "could not sign a new CRL"),
            }
        }
    }
    let serials = revoked.into_iter().map(|(s, _)| s).collect();
    Ok(state.update(
        row.as_ref().map(|r| r.cert_pem.as_str()),
        serials,
        crl_pem,
        Instant::now(),
    ))
}

/// Signs and stores a CRL numbered `number`; `None` when another signer stored one first.
pub async fn sign_crl(
    store: &Store,
    config: &crate::config::Config,
    revoked: &[(String, i64)],
    number: i64,
) -> Result<Option<String>, ca::CaError> {
    let Some(ca) = ca::ClientCa::load(store, config, false).await? else {
        return Ok(None);
    };
    let (pem, next_update) = ca.sign_crl(revoked, number)?;
    if store.set_client_crl(&pem, number, next_update).await? {
        Ok(Some(pem))
    } else {
        Ok(None)
    }
}

/// How many serials a CRL (PEM) lists; 0 for one that does not parse.
fn crl_entries(pem: &str) -> usize {
    let Ok(der) = rustls::pki_types::CertificateRevocationListDer::from_pem_slice(pem.as_bytes()) else {
        return 0;
    };
    x509_parser::parse_x509_crl(&der)
        .map(|(_, crl)| crl.iter_revoked_certificates().count())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_list_older_than_the_limit_is_refused() {
        let state = CertState::default();
        let t0 = Instant::now();
        let max = Duration::from_secs(30);
        assert!(
            matches!(state.check_fresh(t0, max), Err(CertRefusal::Stale { .. })),
            "never read"
        );
        let done = state.update(None, ["aa".to_string()].into(), None, t0);
        assert_eq!(done.newly_revoked, vec!["aa".to_string()]);
        assert!(state.check_fresh(t0 + Duration::from_secs(30), max).is_ok());
        assert_eq!(
            state.check_fresh(t0 + Duration::from_secs(31), max),
            Err(CertRefusal::Stale { age_s: 31 })
        );
        let done = state.update(None, ["aa".to_string(), "bb".to_string()].into(), None, t0);
        assert_eq!(done.newly_revoked, vec!["bb".to_string()], "only what is new");
        assert!(state.is_revoked("bb") && !state.is_revoked("cc"));
    }
}
