//! The grid's key material: what every node of a new grid shares ([`init_grid`]), and the
//! node certificate each node issues itself at start ([`node_identity`]).
//!
//! A grid has two CAs. The endpoint CA (`ca.pem`) signs the server certificates endpoints
//! see and is what operators and clients pin, whichever node they reach. The cluster CA
//! (`cluster-ca.pem`) signs only node certificates, used on the QUIC links between nodes
//! (see the `bridge` module): being separate, no endpoint-facing certificate can ever
//! pass as a node, and a node certificate is useless to an endpoint.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::RootCertStore;

use crate::config::ClusterConfig;
use crate::keys::{self, KeyError, KeyFiles, Keys, MayCreate};

/// Every node certificate names its node as `NODE` + this suffix (a DNS SAN). `.invalid`
/// is reserved (RFC 2606): the name can never be a real host, so a public CA never issues
/// it, and it says plainly that it names a node, not a place to connect to.
pub const NODE_NAME_SUFFIX: &str = ".node.tsunagu.invalid";

/// A node certificate lives 7 days: long enough that a node never runs near its end
/// between restarts in practice, short enough that a leaked one soon stops working.
/// Nodes issue a fresh one at every start; renewing it while a node runs is not done
/// yet (a node running for more than 7 days must be restarted).
pub const NODE_CERT_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// Both CAs outlive many node and server certificates: 10 years, as the relay's own CA.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Certificates start an hour in the past, so a peer whose clock is a little behind
/// accepts them at once.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// What went wrong creating or reading the grid's key material.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path} already exists: a grid's shared files are created once (pick an empty directory)")]
    Exists { path: PathBuf },
    #[error("cannot use {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not {expected}: {reason}")]
    BadFile {
        path: PathBuf,
        expected: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("certificate generation failed: {0}")]
    Generate(String),
}

/// The files [`init_grid`] created; copy them to every node (see docs/grid.md).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GridFiles {
    /// The endpoint CA certificate: `[tls] ca_file`, and what operators and clients pin.
    pub ca: PathBuf,
    /// The endpoint CA's key: `[tls] ca_key_file`.
    pub ca_key: PathBuf,
    /// The cluster CA certificate: `[cluster] ca_file`.
    pub cluster_ca: PathBuf,
    /// The cluster CA's key: `[cluster] ca_key_file`.
    pub cluster_ca_key: PathBuf,
    /// `[secrets] key_file`.
    pub secrets_key: PathBuf,
    /// `[secrets] audit_key_file`.
    pub audit_key: PathBuf,
    /// `[secrets] signing_key_file`.
    pub audit_signing_key: PathBuf,
}

impl GridFiles {
    /// Where the files of a grid go in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        let keys = dir.join("keys");
        Self {
            ca: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            cluster_ca: dir.join("cluster-ca.pem"),
            cluster_ca_key: dir.join("cluster-ca.key"),
            secrets_key: keys.join("secrets.key"),
            audit_key: keys.join("audit.key"),
            audit_signing_key: keys.join("audit-signing.key"),
        }
    }

    fn all(&self) -> [&Path; 7] {
        [
            &self.ca,
            &self.ca_key,
            &self.cluster_ca,
            &self.cluster_ca_key,
            &self.secrets_key,
            &self.audit_key,
            &self.audit_signing_key,
        ]
    }

    /// The config sections that use these files, as TOML (printed by `grid init`).
    pub fn config_example(&self) -> String {
        format!(
            "[tls]\nca_file = {:?}\nca_key_file = {:?}\n\n[secrets]\nkey_file = {:?}\naudit_key_file = {:?}\n\
             signing_key_file = {:?}\n\n[cluster]\nnode = \"a\"\nredis_url = \"redis://127.0.0.1:6379\"\n\
             quic_listen = \"0.0.0.0:7616\"\nquic_advertise = \"10.0.0.1:7616\"\nca_file = {:?}\nca_key_file = {:?}\n",
            self.ca,
            self.ca_key,
            self.secrets_key,
            self.audit_key,
            self.audit_signing_key,
            self.cluster_ca,
            self.cluster_ca_key
        )
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn generate(e: rcgen::Error) -> PkiError {
    PkiError::Generate(e.to_string())
}

/// Creates a new file, never replacing one (owner-only when `private`).
fn write_new(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    let mut options = if private {
        keys::private_file_options()
    } else {
        fs::OpenOptions::new()
    };
    let mut f = options
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => PkiError::Exists {
                path: path.to_path_buf(),
            },
            _ => io_err(path)(e),
        })?;
    f.write_all(contents.as_bytes()).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = SystemTime::now();
    params.not_before = time::OffsetDateTime::from(now - CLOCK_SKEW);
    params.not_after = time::OffsetDateTime::from(now + lifetime);
}

/// A new self-signed CA that signs end-entity certificates only; returns the certificate
/// and key as PEM.
fn new_ca(common_name: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(generate)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
    // Path length 0: it signs end-entity certificates, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, CA_LIFETIME);
    let cert = params.self_signed(&key).map_err(generate)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Creates in `dir` what every node of a new grid shares: the endpoint CA, the cluster CA
/// and the three key files of `[secrets]`, private files 0600 in 0700 directories. Refuses
/// (before writing anything) when any of them exists already: overwriting a grid's CA or
/// keys would lock every node and endpoint out of it.
pub fn init_grid(dir: &Path) -> Result<GridFiles, PkiError> {
    let files = GridFiles::in_dir(dir);
    for path in files.all() {
        // `symlink_metadata`: a dangling link counts as existing too.
        if fs::symlink_metadata(path).is_ok() {
            return Err(PkiError::Exists {
                path: path.to_path_buf(),
            });
        }
    }
    keys::create_private_dir(dir).map_err(io_err(dir))?;
    // Directory of the key files (the `in_dir` layout always has one).
    if let Some(keys_dir) = files.secrets_key.parent() {
        keys::create_private_dir(keys_dir).map_err(io_err(keys_dir))?;
    }
    let (ca, ca_key) = new_ca("tsunagu relay CA")?;
    let (cluster_ca, cluster_ca_key) = new_ca("tsunagu cluster CA")?;
    write_new(&files.ca_key, &ca_key, true)?;
    write_new(&files.ca, &ca, false)?;
    write_new(&files.cluster_ca_key, &cluster_ca_key, true)?;
    write_new(&files.cluster_ca, &cluster_ca, false)?;
    // The relay's own key file format, created by the relay's own code.
    Keys::load(
        &KeyFiles {
            secrets: files.secrets_key.clone(),
            audit: files.audit_key.clone(),
            signing: files.audit_signing_key.clone(),
            checkpoints: dir.join("audit").join("checkpoints.jsonl"),
        },
        MayCreate {
            secrets: true,
            audit: true,
            signing: true,
        },
    )?;
    tracing::info!(dir = %dir.display(), "created the shared files of a new grid");
    Ok(files)
}

/// The DNS name a node certificate carries for `node`.
pub fn node_dns_name(node: &str) -> String {
    format!("{node}{NODE_NAME_SUFFIX}")
}

/// The node a certificate names, if it is a node certificate (a DNS SAN ending in
/// [`NODE_NAME_SUFFIX`]). Only meaningful for a certificate already verified against the
/// cluster CA.
pub fn node_of_certificate(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::DNSName(dns) => dns
            .strip_suffix(NODE_NAME_SUFFIX)
            .filter(|n| !n.is_empty() && !n.contains('.'))
            .map(str::to_string),
        _ => None,
    })
}

/// A node's TLS identity on the QUIC links: its own node certificate, and the cluster CA
/// that every peer's certificate must chain to. Its `Debug` shows no key material.
pub struct NodeIdentity {
    node: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
    not_after: SystemTime,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("node", &self.node)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The node certificate (first) and what it chains through to the cluster CA.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The node certificate's private key.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    /// The cluster CA, the only root a peer node's certificate may chain to.
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    /// The same certificate, trusting other roots (tests: a node whose certificate and
    /// trust come from different grids).
    #[cfg(test)]
    pub(crate) fn trusting(mut self, roots: Arc<RootCertStore>) -> Self {
        self.roots = roots;
        self
    }

    /// When the node certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
}

/// Reads the cluster CA of `cluster` and issues this node a node certificate signed by
/// it (valid [`NODE_CERT_LIFETIME`], a fresh key every start, the node's name as a DNS SAN
/// `NODE.node.tsunagu.invalid`, client and server authentication), kept in memory only.
pub fn node_identity(cluster: &ClusterConfig) -> Result<NodeIdentity, PkiError> {
    let ca_path = &cluster.ca_file;
    let key_path = &cluster.ca_key_file;
    let bad = |path: &Path, expected, reason: String| PkiError::BadFile {
        path: path.to_path_buf(),
        expected,
        reason,
    };
    let ca_pem = fs::read_to_string(ca_path).map_err(io_err(ca_path))?;
    let ca_der = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .next()
        .ok_or_else(|| bad(ca_path, "a CA certificate", "no certificate in the file".into()))?
        .map_err(|e| bad(ca_path, "a CA certificate", e.to_string()))?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(&ca_der).map_err(|e| bad(ca_path, "a CA certificate", e.to_string()))?;
    if !parsed.is_ca() {
        return Err(bad(
            ca_path,
            "a CA certificate",
            "the certificate may not sign others (no CA basic constraint)".into(),
        ));
    }
    let key_pem = fs::read_to_string(key_path).map_err(io_err(key_path))?;
    let ca_key = KeyPair::from_pem(&key_pem).map_err(|e| bad(key_path, "a private key", e.to_string()))?;
    if ca_key.der_bytes() != parsed.public_key().subject_public_key.data.as_ref() {
        return Err(bad(
            key_path,
            "the cluster CA's key",
            format!("it does not match {}", ca_path.display()),
        ));
    }
    let issuer =
        Issuer::from_ca_cert_der(&ca_der, ca_key).map_err(|e| bad(ca_path, "a CA certificate", e.to_string()))?;

    let key = KeyPair::generate().map_err(generate)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
    let dns = node_dns_name(&cluster.node)
        .try_into()
        .map_err(|e: rcgen::Error| PkiError::Generate(format!("node name {:?}: {e}", cluster.node)))?;
    params.subject_alt_names = vec![SanType::DnsName(dns)];
    params
        .distinguished_name
        .push(DnType::CommonName, format!("tsunagu node {}", cluster.node));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Each node both dials (client) and answers (server) other nodes.
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut params, NODE_CERT_LIFETIME);
    let not_after = SystemTime::now() + NODE_CERT_LIFETIME;
    let cert = params.signed_by(&key, &issuer).map_err(generate)?;

    let mut roots = RootCertStore::empty();
    roots
        .add(ca_der)
        .map_err(|e| bad(ca_path, "a CA certificate", e.to_string()))?;
    tracing::info!(node = %cluster.node, valid_days = NODE_CERT_LIFETIME.as_secs() / 86400, "issued this node's certificate");
    Ok(NodeIdentity {
        node: cluster.node.clone(),
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        roots: Arc::new(roots),
        not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(node: &str, files: &GridFiles) -> ClusterConfig {
        ClusterConfig::new(
            node,
            "redis://127.0.0.1:6379",
            files.cluster_ca.clone(),
            files.cluster_ca_key.clone(),
        )
    }

    #[test]
    fn init_creates_private_files_once() {
        let dir = tempfile::tempdir().unwrap();
        let grid = dir.path().join("grid");
        let files = init_grid(&grid).unwrap();
        for path in files.all() {
            assert!(path.is_file(), "{path:?}");
        }
        // The key files are the relay's own format: the relay loads them without creating any.
        let none = MayCreate {
            secrets: false,
            audit: false,
            signing: false,
        };
        let loaded = KeyFiles {
            secrets: files.secrets_key.clone(),
            audit: files.audit_key.clone(),
            signing: files.audit_signing_key.clone(),
            checkpoints: grid.join("audit/checkpoints.jsonl"),
        };
        Keys::load(&loaded, none).unwrap();
        // The endpoint CA is the kind of CA the relay issues its server certificates from.
        let ca_pem = fs::read_to_string(&files.ca).unwrap();
        let ca_key = KeyPair::from_pem(&fs::read_to_string(&files.ca_key).unwrap()).unwrap();
        Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
        assert_ne!(
            ca_pem,
            fs::read_to_string(&files.cluster_ca).unwrap(),
            "two separate CAs"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
            for key in [
                &files.ca_key,
                &files.cluster_ca_key,
                &files.secrets_key,
                &files.audit_key,
                &files.audit_signing_key,
            ] {
                assert_eq!(mode(key), 0o600, "{key:?}");
            }
            assert_eq!(mode(&grid), 0o700);
            assert_eq!(mode(&grid.join("keys")), 0o700);
        }

        // A second init refuses and changes nothing.
        let before: Vec<_> = files.all().iter().map(|p| fs::read(p).unwrap()).collect();
        let err = init_grid(&grid).unwrap_err();
        assert!(matches!(err, PkiError::Exists { .. }), "{err}");
        assert!(err.to_string().contains("already exists"), "{err}");
        let after: Vec<_> = files.all().iter().map(|p| fs::read(p).unwrap()).collect();
        assert_eq!(before, after);

        // One existing file is enough to refuse, and nothing else is written.
        let other = dir.path().join("other");
        fs::create_dir_all(other.join("keys")).unwrap();
        fs::write(other.join("keys/audit.key"), "mine").unwrap();
        let err = init_grid(&other).unwrap_err().to_string();
        assert!(err.contains("audit.key"), "{err}");
        assert!(!other.join("ca.pem").exists() && !other.join("cluster-ca.key").exists());
        assert_eq!(fs::read_to_string(other.join("keys/audit.key")).unwrap(), "mine");
    }

    #[test]
    fn node_certificate_names_its_node_and_chains_to_the_cluster_ca() {
        let dir = tempfile::tempdir().unwrap();
        let files = init_grid(dir.path()).unwrap();
        let id = node_identity(&cluster("node-7", &files)).unwrap();
        assert_eq!(id.node(), "node-7");
        assert_eq!(node_of_certificate(&id.chain()[0]).as_deref(), Some("node-7"));
        assert!(!format!("{id:?}").contains("key:"), "no key material in Debug");
        let (_, cert) = x509_parser::parse_x509_certificate(&id.chain()[0]).unwrap();
        let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()) / 86400;
        assert_eq!(days, 7, "a short-lived certificate (plus the clock-skew hour)");
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && eku.server_auth);
        assert!(!cert.is_ca());
        // Chained to the cluster CA: the rustls verifier accepts it for that name.
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            id.roots(),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        use rustls::client::danger::ServerCertVerifier;
        let name = rustls::pki_types::ServerName::try_from(node_dns_name("node-7")).unwrap();
        let now = rustls::pki_types::UnixTime::now();
        verifier
            .verify_server_cert(&id.chain()[0], &[], &name, &[], now)
            .unwrap();
        let other = rustls::pki_types::ServerName::try_from(node_dns_name("node-8")).unwrap();
        assert!(verifier
            .verify_server_cert(&id.chain()[0], &[], &other, &[], now)
            .is_err());
    }

    #[test]
    fn unusable_cluster_ca_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let files = init_grid(&dir.path().join("g")).unwrap();
        let other = init_grid(&dir.path().join("h")).unwrap();
        let err_of = |c: ClusterConfig| node_identity(&c).unwrap_err().to_string();

        let mut c = cluster("a", &files);
        c.ca_file = dir.path().join("missing.pem");
        let err = err_of(c);
        assert!(err.contains("missing.pem") && err.contains("cannot use"), "{err}");

        // A file without a certificate, then a certificate that is not a CA.
        let leaf = dir.path().join("leaf.pem");
        fs::write(&leaf, "not a certificate").unwrap();
        let mut c = cluster("a", &files);
        c.ca_file = leaf.clone();
        let err = err_of(c.clone());
        assert!(err.contains("no certificate in the file"), "{err}");
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["x.node.tsunagu.invalid".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        fs::write(&leaf, cert.pem()).unwrap();
        let err = err_of(c);
        assert!(
            err.contains("not a CA certificate") && err.contains("leaf.pem"),
            "{err}"
        );

        // The key of another grid's CA.
        let mut c = cluster("a", &files);
        c.ca_key_file = other.cluster_ca_key.clone();
        let err = err_of(c);
        assert!(err.contains("does not match"), "{err}");

        // Not a key at all.
        let mut c = cluster("a", &files);
        c.ca_key_file = files.cluster_ca.clone();
        let err = err_of(c);
        assert!(err.contains("not a private key"), "{err}");
    }
}
