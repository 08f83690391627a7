//! Publicly trusted server certificates from an ACME CA (RFC 8555): with `[tls.acme]` the
//! relay orders a certificate for its names, proves control of them with the TLS-ALPN-01
//! challenge (RFC 8737) on its own relay port (a handshake offering ALPN `acme-tls/1` gets a
//! challenge certificate instead of the server certificate), and renews it before it
//! expires, swapping it in without a restart. The certificate, its key and the ACME account
//! are kept in `DATA/tls/acme/`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::sign::CertifiedKey;

use crate::config::AcmeConfig;

/// The ALPN protocol of TLS-ALPN-01 validation connections.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

const ACCOUNT_FILE: &str = "account.json";
const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";

/// What went wrong while ordering a certificate.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME: {0}")]
    Protocol(#[from] instant_acme::Error),
    #[error("ACME: {0}")]
    Refused(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("ACME challenge certificate: {0}")]
    Generate(String),
}

/// The challenge certificates being validated now, by the name they are for.
#[derive(Default)]
pub struct Challenges {
    by_name: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Challenges")
    }
}

impl Challenges {
    /// The challenge certificate for `name`, while one is being validated.
    pub fn get(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.by_name
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&name.to_ascii_lowercase())
            .cloned()
    }

    fn set(&self, name: &str, cert: Arc<CertifiedKey>) {
        self.by_name
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_ascii_lowercase(), cert);
    }

    fn clear(&self) {
        self.by_name.write().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// Where the ACME certificate, its key and the account live.
pub fn dir(data_tls: &Path) -> PathBuf {
    data_tls.join("acme")
}

/// The stored certificate chain and key files.
pub fn files(data_tls: &Path) -> (PathBuf, PathBuf) {
    let d = dir(data_tls);
    (d.join(CERT_FILE), d.join(KEY_FILE))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AcmeError + '_ {
    move |source| AcmeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `contents` owner-only through a temporary file.
fn write_private(path: &Path, contents: &str) -> Result<(), AcmeError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = crate::keys::private_file_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(contents.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The challenge certificate for `name`: self-signed, with the `acmeIdentifier` extension
/// holding `digest` (the SHA-256 of the key authorization).
fn challenge_cert(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, AcmeError> {
    let gen = |e: rcgen::Error| AcmeError::Generate(e.to_string());
    let key = KeyPair::generate().map_err(gen)?;
    let mut params = CertificateParams::new(vec![name.to_string()]).map_err(gen)?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(gen)?;
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| AcmeError::Generate(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing)))
}

async fn account(acme: &AcmeConfig, dir: &Path) -> Result<Account, AcmeError> {
    let builder = || match &acme.ca_file {
        Some(root) => Account::builder_with_root(root),
        None => Account::builder(),
    };
    let path = dir.join(ACCOUNT_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(credentials) = serde_json::from_str::<AccountCredentials>(&text) {
            return Ok(builder()?.from_credentials(credentials).await?);
        }
        tracing::warn!(path = %path.display(), "the stored ACME account is unreadable; creating a new one");
    }
    let contact: Vec<&str> = acme.contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            acme.directory.clone(),
            None,
        )
        .await?;
    let text = serde_json::to_string(&credentials).map_err(|e| AcmeError::Refused(e.to_string()))?;
    write_private(&path, &text)?;
    Ok(account)
}

/// Orders a certificate for `acme.names`, answering the TLS-ALPN-01 challenges through
/// `challenges` (which the relay's listeners serve meanwhile); writes the chain and key to
/// `DATA/tls/acme/` and returns their paths.
pub async fn obtain(
    acme: &AcmeConfig,
    data_tls: &Path,
    challenges: &Challenges,
) -> Result<(PathBuf, PathBuf), AcmeError> {
    let dir = dir(data_tls);
    crate::keys::create_private_dir(&dir).map_err(io(&dir))?;
    let account = account(acme, &dir).await?;
    let identifiers: Vec<Identifier> = acme.names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let result = async {
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization?;
            match authorization.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(AcmeError::Refused(format!("an authorization is {other:?}"))),
            }
            let mut challenge = authorization
                .challenge(ChallengeType::TlsAlpn01)
                .ok_or_else(|| AcmeError::Refused("the CA offers no tls-alpn-01 challenge".into()))?;
            let name = match challenge.identifier().identifier {
                Identifier::Dns(name) => name.clone(),
                other => return Err(AcmeError::Refused(format!("unexpected identifier {other:?}"))),
            };
            let digest = challenge.key_authorization().digest();
            challenges.set(&name, challenge_cert(&name, digest.as_ref())?);
            challenge.set_ready().await?;
        }
        let retries = RetryPolicy::default();
        match order.poll_ready(&retries).await? {
            OrderStatus::Ready => {}
            other => return Err(AcmeError::Refused(format!("the order is {other:?}, not ready"))),
        }
        let key_pem = order.finalize().await?;
        let chain_pem = order.poll_certificate(&retries).await?;
        Ok((chain_pem, key_pem))
    }
    .await;
    challenges.clear();
    let (chain_pem, key_pem) = result?;
    let (cert_path, key_path) = files(data_tls);
    write_private(&key_path, &key_pem)?;
    write_private(&cert_path, &chain_pem)?;
    tracing::info!(names = ?acme.names, "obtained a certificate from the ACME CA");
    Ok((cert_path, key_path))
}
