//! The client CA: created on first need, its certificate in the database for every node,
//! its private key sealed there with a key file only the issuing nodes hold. It issues
//! client certificates as PKCS#12 files and signs the CRL.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::config::Config;
use crate::hex::hex;
use crate::keys::{KeyError, SealingKey};
use crate::store::{CaRow, CertRole, Store, StoreError};

/// The purpose word of the key file that seals the CA's private key.
const KEY_PURPOSE: &str = "client-ca";
/// What the sealed key is bound to (associated data).
const KEY_LABEL: &str = "tsunagu client CA private key v1";
/// The CA outlives every certificate it issues: 20 years.
const CA_LIFETIME: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// Serial numbers: 16 random bytes (RFC 5280 allows 20; 128 bits never collide in practice).
const SERIAL_LEN: usize = 16;
/// A CRL is valid this long; nodes holding the CA key sign a fresh one when half is left,
/// so the published CRL never expires while one of them runs.
pub const CRL_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// PBKDF2-HMAC-SHA-256 rounds protecting a `.p12` file. The import password is 100 random
/// bits (never a person's choice), so stretching adds nothing an attacker would notice;
/// 10,000 (five times OpenSSL's own default) keeps the import instant on a slow machine.
const P12_ITERATIONS: u32 = 10_000;
/// Symbols of import passwords: upper case and digits without the look-alikes (0/O, 1/I),
/// 32 of them, so each is 5 bits.
const PASSWORD_ALPHABET: &[u8] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZ";
/// 20 symbols: 100 bits, typed as four groups of five.
const PASSWORD_SYMBOLS: usize = 20;

/// What went wrong with the certificate service. The message is shown as is.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(
        "this relay cannot issue certificates: the client CA's key file {0} is not here (copy it from \
         the node that created the CA, or issue certificates there)"
    )]
    NoCaKey(String),
    #[error("certificate generation failed: {0}")]
    Generate(String),
    #[error("the stored client CA is malformed: {0}")]
    Malformed(String),
    #[error("the certificate request is not valid: {0}")]
    BadRequest(String),
}

fn generate(e: impl std::fmt::Display) -> CaError {
    CaError::Generate(e.to_string())
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn from_unix_ms(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// A fresh import password: 20 symbols in four groups of five (`7KQMZ-...`).
pub fn new_password() -> Result<String, CaError> {
    let mut random = [0u8; PASSWORD_SYMBOLS];
    getrandom::fill(&mut random).map_err(|_| CaError::Key(KeyError::Random))?;
    let mut out = String::with_capacity(PASSWORD_SYMBOLS + 3);
    for (i, b) in random.iter().enumerate() {
        if i > 0 && i % 5 == 0 {
            out.push('-');
        }
        // 256 is a multiple of 32: every symbol is equally likely.
        out.push(PASSWORD_ALPHABET[usize::from(*b) % PASSWORD_ALPHABET.len()] as char);
    }
    Ok(out)
}

/// A new random serial: positive (top bit clear), lower-case hex as stored.
fn new_serial() -> Result<[u8; SERIAL_LEN], CaError> {
    let mut serial = [0u8; SERIAL_LEN];
    getrandom::fill(&mut serial).map_err(|_| CaError::Key(KeyError::Random))?;
    serial[0] &= 0x7f;
    // A leading zero byte would be dropped by DER; keep the length fixed.
    serial[0] |= 0x10;
    Ok(serial)
}

/// The serial of a certificate (DER) as stored: lower-case hex without leading zero bytes.
pub fn serial_of(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(serial_hex(cert.raw_serial()))
}

fn serial_hex(raw: &[u8]) -> String {
    let trimmed: &[u8] = match raw.iter().position(|b| *b != 0) {
        Some(i) => &raw[i..],
        None => &raw[raw.len().saturating_sub(1)..],
    };
    hex(trimmed)
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// SHA-256 of `der`, lower-case hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

/// A certificate just made, before it is recorded.
pub struct NewCert {
    pub serial: String,
    pub fingerprint: String,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
    /// The `.p12` file: key and certificate chain, AES-256-CBC under PBKDF2-HMAC-SHA-256,
    /// MAC HMAC-SHA-256.
    pub p12: Vec<u8>,
    /// The import password, shown once and never stored.
    pub password: String,
}

impl std::fmt::Debug for NewCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewCert")
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

/// The client CA as loaded: its certificate always, its key where this node holds the key
/// file.
pub struct ClientCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Option<Issuer<'static, KeyPair>>,
    key_path: String,
}

impl std::fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCa")
            .field("can_issue", &self.issuer.is_some())
            .finish_non_exhaustive()
    }
}

impl ClientCa {
    /// Loads the CA, creating it (and its key file) first when there is none and `create`.
    /// `Ok(None)`: there is no CA and none was to be made.
    pub async fn load(store: &Store, config: &Config, create: bool) -> Result<Option<Self>, CaError> {
        let key_path = config.client_ca_key_path();
        let row = match store.client_ca().await? {
            Some(row) => row,
            None if create => {
                let key = SealingKey::load(&key_path, KEY_PURPOSE, true)?;
                let (cert_pem, key_pem) = new_ca()?;
                let sealed = key.seal(KEY_LABEL, key_pem.as_bytes())?;
                if store
                    .insert_client_ca(&cert_pem, &sealed, crate::time::now_ms())
                    .await?
                {
                    tracing::info!(key = %key_path.display(), "created the client CA");
                }
                // Ours, or the one another process stored first.
                store
                    .client_ca()
                    .await?
                    .ok_or_else(|| CaError::Malformed("the client CA vanished after it was stored".into()))?
            }
            None => return Ok(None),
        };
        Self::from_row(&row, &key_path).map(Some)
    }

    fn from_row(row: &CaRow, key_path: &Path) -> Result<Self, CaError> {
        let cert_der = CertificateDer::from_pem_slice(row.cert_pem.as_bytes())
            .map_err(|e| CaError::Malformed(e.to_string()))?
            .into_owned();
        let issuer = if SealingKey::exists(key_path) {
            let key = SealingKey::load(key_path, KEY_PURPOSE, false)?;
            let pem = String::from_utf8(key.open(KEY_LABEL, &row.key_sealed)?)
                .map_err(|_| CaError::Malformed("the sealed key is not PEM".into()))?;
            let pair = KeyPair::from_pem(&pem).map_err(|e| CaError::Malformed(e.to_string()))?;
            Some(Issuer::from_ca_cert_pem(&row.cert_pem, pair).map_err(|e| CaError::Malformed(e.to_string()))?)
        } else {
            None
        };
        Ok(Self {
            cert_pem: row.cert_pem.clone(),
            cert_der,
            issuer,
            key_path: key_path.display().to_string(),
        })
    }

    /// The CA certificate (PEM), what servers that check these certificates trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Whether this node can issue (holds the CA key file).
    pub fn can_issue(&self) -> bool {
        self.issuer.is_some()
    }

    fn issuer(&self) -> Result<&Issuer<'static, KeyPair>, CaError> {
        self.issuer
            .as_ref()
            .ok_or_else(|| CaError::NoCaKey(self.key_path.clone()))
    }

    /// Makes a client certificate for `account` (subject CN = account, OU = role) valid
    /// from an hour ago (clock skew) for `lifetime`, with a fresh key pair, packed with the
    /// CA certificate into a `.p12` under a fresh import password.
    pub fn issue(&self, role: CertRole, account: &str, device: &str, lifetime: Duration) -> Result<NewCert, CaError> {
        let issuer = self.issuer()?;
        let key = KeyPair::generate().map_err(generate)?;
        let (params, serial, not_before, not_after) = leaf_params(role, account, lifetime)?;
        let cert = params.signed_by(&key, issuer).map_err(generate)?;
        let password = new_password()?;
        let p12 = pack_p12(
            &format!("tsunagu {} {account} ({device})", role.name()),
            &key.serialize_der(),
            &[cert.der().to_vec(), self.cert_der.to_vec()],
            &password,
        )?;
        Ok(NewCert {
            serial: serial_hex(&serial),
            fingerprint: fingerprint(cert.der()),
            not_before_ms: unix_ms(not_before),
            not_after_ms: unix_ms(not_after),
            p12,
            password,
        })
    }

    /// Signs a renewal: a certificate like [`ClientCa::issue`]'s for the public key of the
    /// PKCS#10 request `csr` (its signature checked; nothing else of it is taken).
    pub fn sign_request(
        &self,
        csr: &[u8],
        role: CertRole,
        account: &str,
        lifetime: Duration,
    ) -> Result<RenewedCert, CaError> {
        let issuer = self.issuer()?;
        let der = rustls::pki_types::CertificateSigningRequestDer::from(csr.to_vec());
        let mut request =
            rcgen::CertificateSigningRequestParams::from_der(&der).map_err(|e| CaError::BadRequest(e.to_string()))?;
        let (params, serial, not_before, not_after) = leaf_params(role, account, lifetime)?;
        request.params = params;
        let cert = request.signed_by(issuer).map_err(generate)?;
        Ok(RenewedCert {
            serial: serial_hex(&serial),
            fingerprint: fingerprint(cert.der()),
            not_before_ms: unix_ms(not_before),
            not_after_ms: unix_ms(not_after),
            der: cert.der().to_vec(),
        })
    }

    /// Signs a CRL listing `revoked` (serial hex, revocation time in Unix ms) under
    /// `number`; returns its PEM and when it stops being valid (Unix ms).
    pub fn sign_crl(&self, revoked: &[(String, i64)], number: i64) -> Result<(String, i64), CaError> {
        let issuer = self.issuer()?;
        let now = SystemTime::now();
        let revoked_certs = revoked
            .iter()
            .filter_map(|(serial, at)| {
                Some(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&unhex(serial)?),
                    revocation_time: offset(from_unix_ms(*at)),
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect();
        let params = CertificateRevocationListParams {
            this_update: offset(now - Duration::from_secs(60)),
            next_update: offset(now + CRL_LIFETIME),
            crl_number: SerialNumber::from_slice(&number.max(1).to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(issuer).map_err(generate)?;
        Ok((crl.pem().map_err(generate)?, unix_ms(now + CRL_LIFETIME)))
    }
}

/// A renewed certificate, before it is recorded.
#[derive(Debug)]
pub struct RenewedCert {
    pub serial: String,
    pub fingerprint: String,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
    pub der: Vec<u8>,
}

/// How far back a certificate's validity starts, for clocks that run behind: an hour, or a
/// tenth of a short lifetime (so that two thirds of the validity, when the app renews, stays
/// close to two thirds of the lifetime).
fn backdate(lifetime: Duration) -> Duration {
    Duration::from_secs(3600).min(lifetime / 10)
}

/// What every client certificate says: subject CN = account, OU = role, O = tsunagu; a
/// fresh serial; client authentication only; valid from a little before now (clock skew,
/// see [`backdate`]) for `lifetime`.
fn leaf_params(
    role: CertRole,
    account: &str,
    lifetime: Duration,
) -> Result<(CertificateParams, [u8; SERIAL_LEN], SystemTime, SystemTime), CaError> {
    let serial = new_serial()?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
    params.distinguished_name.push(DnType::CommonName, account);
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, role.name());
    params.distinguished_name.push(DnType::OrganizationName, "tsunagu");
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let now = SystemTime::now();
    let not_before = now - backdate(lifetime);
    let not_after = now + lifetime;
    params.not_before = offset(not_before);
    params.not_after = offset(not_after);
    Ok((params, serial, not_before, not_after))
}

/// A new self-signed CA: its certificate and private key, PEM.
fn new_ca() -> Result<(String, String), CaError> {
    let key = KeyPair::generate().map_err(generate)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, "tsunagu client CA");
    params.distinguished_name.push(DnType::OrganizationName, "tsunagu");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let mut serial = [0u8; SERIAL_LEN];
    getrandom::fill(&mut serial).map_err(|_| CaError::Key(KeyError::Random))?;
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let now = SystemTime::now();
    params.not_before = offset(now - Duration::from_secs(3600));
    params.not_after = offset(now + CA_LIFETIME);
    let cert = params.self_signed(&key).map_err(generate)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Packs a PKCS#8 key and its chain (leaf first) into a `.p12` that OpenSSL 3 (without
/// `-legacy`), NSS and Windows import: PBES2 with PBKDF2-HMAC-SHA-256 and AES-256-CBC for
/// the key and the certificates, an HMAC-SHA-256 MAC.
pub fn pack_p12(alias: &str, key_pkcs8: &[u8], chain: &[Vec<u8>], password: &str) -> Result<Vec<u8>, CaError> {
    use p12_keystore::{Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, PrivateKeyChain};
    let key = p12_keystore::PrivateKey::from_der(key_pkcs8).map_err(generate)?;
    let certs = chain
        .iter()
        .map(|der| Certificate::from_der(der))
        .collect::<Result<Vec<_>, _>>()
        .map_err(generate)?;
    let local_key_id = ring::digest::digest(&ring::digest::SHA256, &chain[0]).as_ref().to_vec();
    let mut store = KeyStore::new();
    store.add_entry(
        alias,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id, key, certs)),
    );
    store
        .writer(password)
        .encryption_algorithm(EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
        .encryption_iterations(P12_ITERATIONS)
        .mac_algorithm(MacAlgorithm::HmacSha256)
        .mac_iterations(P12_ITERATIONS)
        .write()
        .map_err(generate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_four_groups_of_five_unambiguous_symbols() {
        let p = new_password().unwrap();
        assert_eq!(p.len(), 23);
        let groups: Vec<&str> = p.split('-').collect();
        assert_eq!(groups.len(), 4);
        for g in groups {
            assert_eq!(g.len(), 5);
            assert!(g.bytes().all(|b| PASSWORD_ALPHABET.contains(&b)), "{g}");
        }
        assert_ne!(new_password().unwrap(), p);
    }

    #[test]
    fn serials_round_trip_through_a_certificate() {
        assert_eq!(serial_hex(&[0, 0, 0x1a, 0x02]), "1a02");
        assert_eq!(serial_hex(&[0]), "00");
        assert_eq!(unhex("1a02"), Some(vec![0x1a, 0x02]));
        assert_eq!(unhex("1a0"), None);
    }
}
