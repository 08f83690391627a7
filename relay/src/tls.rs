//! The relay's certificates: on first start it creates its own CA and a server certificate
//! signed by it in `DATA/tls/` (`ca.pem` is what endpoints pin); it renews the server
//! certificate by itself before it expires. A certificate supplied in the config replaces
//! the generated one (and is then the supplier's to renew).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("certificate generation failed: {0}")]
    Generate(String),
    #[error("TLS setup failed: {0}")]
    Rustls(String),
}

const CA_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";
const SERVER_FILE: &str = "server.pem";
const SERVER_KEY_FILE: &str = "server.key";
/// The generated CA outlives many server certificates: 10 years.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The CA that signs generated server certificates: the relay's own in `DATA/tls/`
/// (created on first start) or one supplied in `tls.ca_file` (shared by a grid's nodes).
#[derive(Debug, Clone)]
struct CaFiles {
    cert: PathBuf,
    key: PathBuf,
    may_create: bool,
}

impl CaFiles {
    fn of(config: &Config) -> Self {
        match (&config.tls.ca_file, &config.tls.ca_key_file) {
            (Some(cert), Some(key)) => Self {
                cert: cert.clone(),
                key: key.clone(),
                may_create: false,
            },
            _ => {
                let dir = config.tls_dir();
                Self {
                    cert: dir.join(CA_FILE),
                    key: dir.join(CA_KEY_FILE),
                    may_create: true,
                }
            }
        }
    }
}

/// Where the server certificate comes from.
enum Source {
    Generated {
        dir: PathBuf,
        ca: CaFiles,
        names: Vec<String>,
        lifetime: Duration,
        renew_before: Duration,
    },
    Supplied,
}

/// The live server certificate, swappable while the relay runs (renewal).
pub struct ServerCerts {
    current: RwLock<Arc<CertifiedKey>>,
    source: Source,
    /// `[tls.acme]` and the data dir's `tls/` folder, when the certificate comes from an
    /// ACME CA (the generated one serves until the first is obtained).
    acme: Option<(crate::config::AcmeConfig, PathBuf)>,
    /// TLS-ALPN-01 challenge certificates being validated now.
    challenges: crate::acme::Challenges,
}

impl std::fmt::Debug for ServerCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerCerts")
    }
}

impl ResolvesServerCert for ServerCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == crate::acme::ACME_TLS_ALPN));
        if acme {
            // An ACME CA validating TLS-ALPN-01: only its challenge certificate answers.
            return hello.server_name().and_then(|name| self.challenges.get(name));
        }
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_private(path: &Path, contents: &str) -> Result<(), TlsError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let tmp = path.with_extension("tmp");
    let mut f = options.open(&tmp).map_err(io_err(&tmp))?;
    f.write_all(contents.as_bytes()).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

fn write_public(path: &Path, contents: &str) -> Result<(), TlsError> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

/// Names the generated server certificate is valid for.
fn server_names(extra: &[String]) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if let Ok(h) = hostname::get() {
        if let Some(h) = h.to_str() {
            if !h.is_empty() {
                names.push(h.to_string());
            }
        }
    }
    names.extend(extra.iter().cloned());
    names.sort();
    names.dedup();
    names
}

/// Creates the CA if it does not exist yet (and may be created); returns its PEM and key.
fn ensure_ca(ca: &CaFiles) -> Result<(String, KeyPair), TlsError> {
    let ca_path = ca.cert.clone();
    let key_path = ca.key.clone();
    if !ca.may_create || (ca_path.exists() && key_path.exists()) {
        let pem = fs::read_to_string(&ca_path).map_err(io_err(&ca_path))?;
        let key_pem = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::BadFile {
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        return Ok((pem, key));
    }
    let key = KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| TlsError::Generate(e.to_string()))?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, "tsunagu relay CA");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = offset(now - Duration::from_secs(3600));
    params.not_after = offset(now + CA_LIFETIME);
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    write_private(&key_path, &key.serialize_pem())?;
    write_public(&ca_path, &cert.pem())?;
    tracing::info!(path = %ca_path.display(), "created the relay CA");
    Ok((cert.pem(), key))
}

/// Issues a new server certificate signed by `ca` and writes it to `dir`.
fn issue_server(dir: &Path, ca: &CaFiles, names: &[String], lifetime: Duration) -> Result<(), TlsError> {
    let (ca_pem, ca_key) = ensure_ca(ca)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| TlsError::BadFile {
        path: ca.cert.clone(),
        reason: e.to_string(),
    })?;
    let key = KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(|e| TlsError::Generate(e.to_string()))?;
    params.distinguished_name.push(DnType::CommonName, "tsunagu relay");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let now = SystemTime::now();
    params.not_before = offset(now - Duration::from_secs(3600));
    params.not_after = offset(now + lifetime);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    write_private(&dir.join(SERVER_KEY_FILE), &key.serialize_pem())?;
    write_public(&dir.join(SERVER_FILE), &format!("{}{}", cert.pem(), ca_pem))?;
    tracing::info!(
        valid_days = lifetime.as_secs() / 86400,
        "issued a new server certificate"
    );
    Ok(())
}

fn load_chain(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let bad = |p: &Path, reason: String| TlsError::BadFile {
        path: p.to_path_buf(),
        reason,
    };
    let cert_pem = fs::read(cert_path).map_err(io_err(cert_path))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(cert_path, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(cert_path, "no certificate in the file".into()));
    }
    let key_pem = fs::read(key_path).map_err(io_err(key_path))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => bad(key_path, "no private key in the file".into()),
        e => bad(key_path, e.to_string()),
    })?;
    Ok((certs, key))
}

fn certified_key(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(certs, signing)))
}

/// Seconds until the first certificate in `path` expires (negative when expired).
fn remaining(path: &Path) -> Result<Duration, TlsError> {
    let pem = fs::read(path).map_err(io_err(path))?;
    let der = CertificateDer::pem_slice_iter(&pem)
        .next()
        .ok_or_else(|| TlsError::BadFile {
            path: path.into(),
            reason: "no certificate".into(),
        })?
        .map_err(|e| TlsError::BadFile {
            path: path.into(),
            reason: e.to_string(),
        })?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| TlsError::BadFile {
        path: path.into(),
        reason: e.to_string(),
    })?;
    let not_after = cert.validity().not_after.timestamp();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    Ok(Duration::from_secs((not_after - now).max(0) as u64))
}

impl ServerCerts {
    /// Loads or creates the certificates the config asks for.
    pub fn load(config: &Config) -> Result<Arc<Self>, TlsError> {
        if let (Some(cert), Some(key)) = (&config.tls.cert_file, &config.tls.key_file) {
            let (certs, key) = load_chain(cert, key)?;
            return Ok(Arc::new(Self {
                current: RwLock::new(certified_key(certs, key)?),
                source: Source::Supplied,
                acme: None,
                challenges: Default::default(),
            }));
        }
        let dir = config.tls_dir();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let names = server_names(&config.tls.names);
        let source = Source::Generated {
            dir: dir.clone(),
            ca: CaFiles::of(config),
            names,
            lifetime: config.tls.server_cert_lifetime,
            renew_before: config.tls.renew_before,
        };
        let acme = config.tls.acme.clone().map(|a| (a, dir.clone()));
        // A certificate the ACME CA issued before serves from the start, while it is valid.
        let obtained = acme.as_ref().and_then(|(_, tls)| {
            let (cert, key) = crate::acme::files(tls);
            let valid = remaining(&cert).is_ok_and(|left| left > Duration::ZERO);
            valid.then(|| load_chain(&cert, &key).and_then(|(c, k)| certified_key(c, k)).ok())?
        });
        let current = match obtained {
            Some(c) => c,
            None => Self::load_generated(&source, true)?,
        };
        let this = Self {
            current: RwLock::new(current),
            source,
            acme,
            challenges: Default::default(),
        };
        Ok(Arc::new(this))
    }

    fn load_generated(source: &Source, allow_issue: bool) -> Result<Arc<CertifiedKey>, TlsError> {
        let Source::Generated {
            dir,
            ca,
            names,
            lifetime,
            renew_before,
        } = source
        else {
            unreachable!("only called for generated certificates")
        };
        let cert_path = dir.join(SERVER_FILE);
        let key_path = dir.join(SERVER_KEY_FILE);
        let needs_new = !cert_path.exists() || !key_path.exists() || remaining(&cert_path)? < *renew_before;
        if needs_new && allow_issue {
            issue_server(dir, ca, names, *lifetime)?;
        }
        let (certs, key) = load_chain(&cert_path, &key_path)?;
        certified_key(certs, key)
    }

    /// Renews the generated server certificate if it is due; returns whether it did. With
    /// ACME the certificate is the ACME CA's ([`ServerCerts::renew_acme_if_due`]).
    pub fn renew_if_due(&self) -> Result<bool, TlsError> {
        if self.acme.is_some() {
            return Ok(false);
        }
        let Source::Generated { dir, renew_before, .. } = &self.source else {
            return Ok(false);
        };
        if remaining(&dir.join(SERVER_FILE))? >= *renew_before {
            return Ok(false);
        }
        let fresh = Self::load_generated(&self.source, true)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(true)
    }

    /// How often the ACME certificate is checked for renewal; `None` without ACME.
    pub fn acme_check_every(&self) -> Option<Duration> {
        self.acme.as_ref().map(|(a, _)| a.check_every)
    }

    /// With `[tls.acme]`: orders a certificate when there is none from the ACME CA yet or the
    /// one there has less than `renew_before` left, and swaps it in (connections already
    /// open keep theirs). Returns whether it did.
    pub async fn renew_acme_if_due(&self) -> Result<bool, crate::acme::AcmeError> {
        let Some((acme, tls)) = &self.acme else {
            return Ok(false);
        };
        let (cert, _) = crate::acme::files(tls);
        let due = remaining(&cert).map_or(true, |left| left < acme.renew_before);
        if !due {
            return Ok(false);
        }
        let (cert, key) = crate::acme::obtain(acme, tls, &self.challenges).await?;
        let fresh = load_chain(&cert, &key)
            .and_then(|(c, k)| certified_key(c, k))
            .map_err(|e| crate::acme::AcmeError::Refused(e.to_string()))?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(true)
    }

    /// The rustls server configuration: TLS 1.3 only, ALPN `tsunagu/1` (and `acme-tls/1`
    /// with ACME, for the CA's validation connections).
    /// `clients` checks the client certificates endpoints present (see [`crate::certs`]).
    pub fn server_config(
        self: &Arc<Self>,
        clients: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_client_cert_verifier(clients)
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![tsunagu_proto::ALPN.to_vec()];
        if self.acme.is_some() {
            config.alpn_protocols.push(crate::acme::ACME_TLS_ALPN.to_vec());
        }
        // Session tickets would hold per-connection state; endpoints reconnect rarely. Off
        // also so that a resumed TLS session never skips the client certificate check.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }
}

/// Path of the CA certificate endpoints pin.
pub fn ca_path(config: &Config) -> PathBuf {
    CaFiles::of(config).cert
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_reuses_and_renews() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        let certs = ServerCerts::load(&config).unwrap();
        let ca1 = fs::read_to_string(ca_path(&config)).unwrap();
        let server1 = fs::read_to_string(config.tls_dir().join(SERVER_FILE)).unwrap();
        assert!(!certs.renew_if_due().unwrap(), "a fresh certificate is not due");

        // A second start keeps the same CA and certificate.
        ServerCerts::load(&config).unwrap();
        assert_eq!(fs::read_to_string(ca_path(&config)).unwrap(), ca1);
        assert_eq!(fs::read_to_string(config.tls_dir().join(SERVER_FILE)).unwrap(), server1);

        // With a renewal window longer than what is left, it renews under the same CA.
        config.tls.renew_before = Duration::from_secs(200 * 86400);
        config.tls.server_cert_lifetime = Duration::from_secs(365 * 86400);
        let certs = ServerCerts::load(&config).unwrap();
        let server2 = fs::read_to_string(config.tls_dir().join(SERVER_FILE)).unwrap();
        assert_ne!(server1, server2);
        assert_eq!(fs::read_to_string(ca_path(&config)).unwrap(), ca1);
        assert!(!certs.renew_if_due().unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(config.tls_dir().join(CA_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "private keys are readable by the owner only");
        }
    }
}
