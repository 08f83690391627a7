//! The endpoint dialer shared by operator and client: TCP + TLS 1.3 to the relay, trying its
//! ports in order (7615, then 80, then 443 by default) and, for a name with several
//! addresses, each address in turn, each attempt under a short timeout, then the `Hello`
//! exchange. `--relay` may name several relays ([`parse_relay_list`]); the driver goes
//! through them when it dials and when it reconnects.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{lookup_host, TcpStream};

use tsunagu_proto::pb::frame::Body;
use tsunagu_proto::transport::{hello, remote_error, FrameReader, FrameWriter, TransportError};

/// Default time for one port attempt: TCP connect, TLS handshake and `Hello`.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Any byte stream a connection to the relay runs over: TLS over TCP from [`dial`], or an
/// in-memory pipe when tests play the relay.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static> ByteStream for T {}

/// A byte stream tests play the relay over (an in-memory pipe), for [`greet`].
pub type Stream = Box<dyn ByteStream>;
/// The reading half of a connection to the relay: TLS from [`dial`] (rustls' unbuffered
/// API with our own buffers, `tsunagu_proto::tls`), or half of a [`Stream`].
pub type ReadStream = Box<dyn AsyncRead + Send + Sync + Unpin>;
/// The writing half of a connection to the relay.
pub type WriteStream = Box<dyn AsyncWrite + Send + Sync + Unpin>;
/// Reads frames from the relay.
pub type Reader = FrameReader<ReadStream>;
/// Writes frames to the relay.
pub type Writer = FrameWriter<WriteStream>;

/// Where and how to reach the relay.
#[derive(Clone)]
pub struct DialConfig {
    pub host: String,
    /// Tried in this order.
    pub ports: Vec<u16>,
    pub tls: Arc<rustls::ClientConfig>,
    pub attempt_timeout: Duration,
    pub max_frame: usize,
    /// Sent in `Hello`, e.g. "tsunagu-client/0.1.0".
    pub agent: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("cannot use the CA certificate {path}: {reason}")]
    BadCa { path: String, reason: String },
    #[error("{0:?} is not a valid relay host name or address")]
    BadHost(String),
    #[error("could not reach the relay at {host} on any port: {}", .attempts.iter().map(|(p, e)| format!("{p}: {e}")).collect::<Vec<_>>().join("; "))]
    Unreachable { host: String, attempts: Vec<(u16, String)> },
    #[error(transparent)]
    Refused(TransportError),
    #[error("no relay port to try")]
    NoPorts,
    #[error("cannot use the client certificate: {0}")]
    BadCertificate(String),
}

/// A connection to the relay after the `Hello` exchange.
pub struct Connected {
    pub reader: Reader,
    pub writer: Writer,
    /// The port that answered.
    pub port: u16,
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

/// Splits `HOST[:PORT]` (IPv6 literals in brackets) into host and optional port.
pub fn parse_relay(spec: &str) -> Result<(String, Option<u16>), DialError> {
    let spec = spec.trim();
    let bad = || DialError::BadHost(spec.to_string());
    if let Some(rest) = spec.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().map_err(|_| bad())?),
            None if after.is_empty() => None,
            None => return Err(bad()),
        };
        return Ok((host.to_string(), port));
    }
    match spec.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => {
            if host.is_empty() {
                return Err(bad());
            }
            Ok((host.to_string(), Some(port.parse().map_err(|_| bad())?)))
        }
        _ if spec.is_empty() => Err(bad()),
        _ => Ok((spec.to_string(), None)),
    }
}

/// Resolves `--relay HOST[:PORT]` and `--ports`: explicit ports win; otherwise the port in
/// `--relay` alone; otherwise [`tsunagu_proto::DEFAULT_PORTS`] (7615, 80, 443).
pub fn resolve_target(spec: &str, ports: Option<Vec<u16>>) -> Result<(String, Vec<u16>), DialError> {
    let (host, port) = parse_relay(spec)?;
    let ports = match (ports, port) {
        (Some(p), _) => p,
        (None, Some(p)) => vec![p],
        (None, None) => tsunagu_proto::DEFAULT_PORTS.to_vec(),
    };
    if ports.is_empty() {
        return Err(DialError::NoPorts);
    }
    Ok((host, ports))
}

/// One relay of the `--relay` list: a host and the ports to try on it, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayEntry {
    /// Host name or address.
    pub host: String,
    /// Ports tried in this order.
    pub ports: Vec<u16>,
}

impl RelayEntry {
    /// The dial configuration for this relay, the rest as in `template`.
    pub fn dial_config(&self, template: &DialConfig) -> DialConfig {
        DialConfig {
            host: self.host.clone(),
            ports: self.ports.clone(),
            ..template.clone()
        }
    }
}

/// Resolves `--relay HOST[:PORT],HOST[:PORT],...` and `--ports`: each entry as
/// [`resolve_target`] resolves a single one (explicit ports win for every entry; else the
/// entry's own port; else 7615, 80, 443), in the order given. Empty entries are an error.
pub fn parse_relay_list(spec: &str, ports: Option<Vec<u16>>) -> Result<Vec<RelayEntry>, DialError> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err(DialError::BadHost(spec.to_string()));
    }
    spec.split(',')
        .map(|one| resolve_target(one, ports.clone()).map(|(host, ports)| RelayEntry { host, ports }))
        .collect()
}

/// A TLS 1.3 client configuration that trusts only the CA in `ca_pem` and offers ALPN
/// `tsunagu/1`.
pub fn client_tls(ca_pem_path: &Path) -> Result<Arc<rustls::ClientConfig>, DialError> {
    let bad = |reason: String| DialError::BadCa {
        path: ca_pem_path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(ca_pem_path).map_err(|e| bad(e.to_string()))?;
    client_tls_from_pem(&pem).map_err(bad)
}

/// A client certificate and its key, presented to the relay in the TLS handshake (an
/// operator whose account requires one). Its `Debug` shows no key material.
pub struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl ClientIdentity {
    /// Reads a `.p12` file (as `tsunagu-relay cert issue` writes it) with its import
    /// password. The error says what is wrong in words a user can act on.
    pub fn from_p12_file(path: &Path, password: &str) -> Result<Self, String> {
        let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::from_p12(&data, password).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// As [`ClientIdentity::from_p12_file`], from the file's bytes.
    pub fn from_p12(data: &[u8], password: &str) -> Result<Self, String> {
        let store = p12_keystore::KeyStore::from_pkcs12(data, password, p12_keystore::Pkcs12ImportPolicy::Strict)
            .map_err(|e| match e {
                p12_keystore::error::Error::MacError(_) => "wrong import password".to_string(),
                other => format!("not a usable PKCS#12 file: {other}"),
            })?;
        let (_, chain) = store
            .private_key_chain()
            .ok_or_else(|| "the file holds no private key".to_string())?;
        let certs: Vec<CertificateDer<'static>> = chain
            .certs()
            .iter()
            .map(|c| CertificateDer::from(c.as_der().to_vec()))
            .collect();
        if certs.is_empty() {
            return Err("the file holds no certificate for its key".into());
        }
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(chain.key().as_der().to_vec().into());
        Ok(Self { chain: certs, key })
    }
}

impl ClientIdentity {
    /// The certificate's validity period (`None` if it does not parse).
    pub fn validity(&self) -> Option<(std::time::SystemTime, std::time::SystemTime)> {
        let (_, cert) = x509_parser::parse_x509_certificate(self.chain.first()?).ok()?;
        let at = |t: i64| std::time::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
        Some((
            at(cert.validity().not_before.timestamp()),
            at(cert.validity().not_after.timestamp()),
        ))
    }

    /// A PKCS#10 signing request (DER) for this identity's key, for its renewal.
    pub fn signing_request(&self) -> Result<Vec<u8>, String> {
        let key = rcgen::KeyPair::try_from(self.key.secret_der()).map_err(|e| format!("the certificate's key: {e}"))?;
        let request = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .map_err(|e| format!("cannot make a signing request: {e}"))?;
        Ok(request.der().to_vec())
    }

    /// The same key with a new chain (leaf first), e.g. a renewed certificate; refused when
    /// the leaf is not for this key.
    pub fn with_chain(&self, chain: Vec<Vec<u8>>) -> Result<Self, String> {
        let leaf = chain.first().ok_or("no certificate")?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| format!("the new certificate: {e}"))?;
        let key = rcgen::KeyPair::try_from(self.key.secret_der()).map_err(|e| format!("the certificate's key: {e}"))?;
        if cert.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice() {
            return Err("the new certificate is not for this key".into());
        }
        Ok(Self {
            chain: chain.into_iter().map(CertificateDer::from).collect(),
            key: self.key.clone_key(),
        })
    }

    /// This identity as a `.p12` under `password`, encrypted as the relay writes them
    /// (PBES2: PBKDF2-HMAC-SHA-256, AES-256-CBC; HMAC-SHA-256 MAC).
    pub fn to_p12(&self, password: &str) -> Result<Vec<u8>, String> {
        use p12_keystore::{Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, PrivateKeyChain};
        let key = p12_keystore::PrivateKey::from_der(self.key.secret_der()).map_err(|e| e.to_string())?;
        let certs = self
            .chain
            .iter()
            .map(|c| Certificate::from_der(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let local_key_id = ring::digest::digest(&ring::digest::SHA256, &self.chain[0])
            .as_ref()
            .to_vec();
        let mut store = KeyStore::new();
        store.add_entry(
            "tsunagu client certificate",
            KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id, key, certs)),
        );
        store
            .writer(password)
            .encryption_algorithm(EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
            .encryption_iterations(P12_ITERATIONS)
            .mac_algorithm(MacAlgorithm::HmacSha256)
            .mac_iterations(P12_ITERATIONS)
            .write()
            .map_err(|e| e.to_string())
    }
}

/// PBKDF2 rounds of a renewed `.p12`: as the relay writes them (its import password is 100
/// random bits, so stretching adds nothing that matters).
const P12_ITERATIONS: u32 = 10_000;

/// The CA the apps trust besides the system's trust store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ExtraCa {
    /// None: a relay with a publicly trusted certificate needs none.
    #[default]
    None,
    /// A PEM file (`--ca`).
    File(PathBuf),
    /// PEM text that came with the program (the join bundle a relay's download page hands
    /// out, see [`tsunagu_proto::bundle`]).
    Bundled(Arc<str>),
}

impl ExtraCa {
    /// What is shown in messages about it.
    fn origin(&self) -> String {
        match self {
            ExtraCa::None => "the system's trust store".into(),
            ExtraCa::File(p) => p.display().to_string(),
            ExtraCa::Bundled(_) => "the relay's certificate inside the downloaded program".into(),
        }
    }
}

impl From<PathBuf> for ExtraCa {
    /// A `--ca` path; empty is none.
    fn from(path: PathBuf) -> Self {
        if path.as_os_str().is_empty() {
            ExtraCa::None
        } else {
            ExtraCa::File(path)
        }
    }
}

impl From<&Path> for ExtraCa {
    fn from(path: &Path) -> Self {
        path.to_path_buf().into()
    }
}

impl From<&str> for ExtraCa {
    fn from(path: &str) -> Self {
        PathBuf::from(path).into()
    }
}

/// The apps' TLS configuration: trusts the system's trust store (`SSL_CERT_FILE` and
/// `SSL_CERT_DIR` are honoured) plus `ca` (a relay with a publicly trusted certificate
/// needs none), and presents `identity` when the relay asks for a client certificate.
pub fn client_tls_with(
    ca: &ExtraCa,
    identity: Option<&ClientIdentity>,
) -> Result<Arc<rustls::ClientConfig>, DialError> {
    let bad = |reason: String| DialError::BadCa {
        path: ca.origin(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    let (system, _) = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let extra = match ca {
        ExtraCa::None => None,
        ExtraCa::File(path) => Some(std::fs::read(path).map_err(|e| bad(e.to_string()))?),
        ExtraCa::Bundled(pem) => Some(pem.as_bytes().to_vec()),
    };
    if let Some(pem) = extra {
        roots.roots.extend(roots_from_pem(&pem).map_err(bad)?.roots);
    } else if system == 0 {
        return Err(bad(
            "no --ca was given and the system's trust store holds no certificate".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| DialError::BadCertificate(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(|e| DialError::BadCertificate(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![tsunagu_proto::ALPN.to_vec()];
    Ok(Arc::new(config))
}

fn roots_from_pem(pem: &[u8]) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    let mut found = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| e.to_string())?;
        roots.add(cert).map_err(|e| e.to_string())?;
        found += 1;
    }
    if found == 0 {
        return Err("no certificate in the file".into());
    }
    Ok(roots)
}

/// As [`client_tls`], from PEM bytes.
pub fn client_tls_from_pem(pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = roots_from_pem(pem)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![tsunagu_proto::ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// Connects to the first port that completes TCP, TLS and `Hello` in time; for a host name
/// with several addresses, each address of a port is tried in turn, each under
/// `attempt_timeout`.
pub async fn dial(cfg: &DialConfig) -> Result<Connected, DialError> {
    let server_name = ServerName::try_from(cfg.host.clone()).map_err(|_| DialError::BadHost(cfg.host.clone()))?;
    let mut attempts = Vec::new();
    for &port in &cfg.ports {
        let addrs = match tokio::time::timeout(cfg.attempt_timeout, lookup_host((cfg.host.as_str(), port))).await {
            Ok(Ok(addrs)) => addrs.collect::<Vec<SocketAddr>>(),
            Ok(Err(e)) => {
                attempts.push((port, e.to_string()));
                continue;
            }
            Err(_) => {
                attempts.push((port, format!("no address within {:?}", cfg.attempt_timeout)));
                continue;
            }
        };
        if addrs.is_empty() {
            attempts.push((port, "the name has no address".into()));
        }
        for addr in addrs {
            let attempt = tokio::time::timeout(cfg.attempt_timeout, attempt(cfg, server_name.clone(), addr)).await;
            match attempt {
                Ok(Ok(connected)) => return Ok(connected),
                // The relay answered and refused: another port would answer the same.
                Ok(Err(AttemptError::Refused(e))) => return Err(DialError::Refused(e)),
                Ok(Err(AttemptError::Failed(e))) => attempts.push((port, failed_at(&cfg.host, addr, e))),
                Err(_) => attempts.push((
                    port,
                    failed_at(&cfg.host, addr, format!("no answer within {:?}", cfg.attempt_timeout)),
                )),
            }
        }
    }
    Err(DialError::Unreachable {
        host: cfg.host.clone(),
        attempts,
    })
}

/// An attempt's failure, naming the address when the host is a name (an address names itself).
fn failed_at(host: &str, addr: SocketAddr, error: String) -> String {
    if host.parse::<std::net::IpAddr>().is_ok() {
        error
    } else {
        format!("{} {error}", addr.ip())
    }
}

enum AttemptError {
    Failed(String),
    Refused(TransportError),
}

async fn attempt(cfg: &DialConfig, name: ServerName<'static>, addr: SocketAddr) -> Result<Connected, AttemptError> {
    let fail = |e: &dyn std::fmt::Display| AttemptError::Failed(e.to_string());
    let port = addr.port();
    let tcp = TcpStream::connect(addr).await.map_err(|e| fail(&e))?;
    tcp.set_nodelay(true).map_err(|e| fail(&e))?;
    let peer = tcp.peer_addr().map_err(|e| fail(&e))?;
    let local = tcp.local_addr().map_err(|e| fail(&e))?;
    let (r, w) = tcp.into_split();
    let tls = tsunagu_proto::tls::connect(cfg.tls.clone(), name, r, w)
        .await
        .map_err(|e| fail(&e))?;
    let (reader, writer) =
        hello_exchange(Box::new(tls.reader), Box::new(tls.writer), cfg.max_frame, &cfg.agent).await?;
    Ok(Connected {
        reader,
        writer,
        port,
        peer,
        local,
    })
}

/// The `Hello` exchange over a stream already connected to the relay (past TLS, when
/// there is TLS), as [`dial`] does on each port: how tests that play the relay over an
/// in-memory stream connect an app. A failure is reported as the relay being unreachable
/// at `peer`.
pub async fn greet(
    stream: impl ByteStream,
    max_frame: usize,
    agent: &str,
    peer: SocketAddr,
    local: SocketAddr,
) -> Result<Connected, DialError> {
    let (r, w) = tokio::io::split(stream);
    match hello_exchange(Box::new(r), Box::new(w), max_frame, agent).await {
        Ok((reader, writer)) => Ok(Connected {
            reader,
            writer,
            port: peer.port(),
            peer,
            local,
        }),
        Err(AttemptError::Refused(e)) => Err(DialError::Refused(e)),
        Err(AttemptError::Failed(e)) => Err(DialError::Unreachable {
            host: peer.ip().to_string(),
            attempts: vec![(peer.port(), e)],
        }),
    }
}

/// Sends our `Hello` and checks the relay's.
async fn hello_exchange(
    r: ReadStream,
    w: WriteStream,
    max_frame: usize,
    agent: &str,
) -> Result<(Reader, Writer), AttemptError> {
    let fail = |e: &dyn std::fmt::Display| AttemptError::Failed(e.to_string());
    let mut reader = FrameReader::new(r, max_frame);
    let mut writer = FrameWriter::new(w, max_frame);
    writer.send(&hello(agent)).await.map_err(|e| fail(&e))?;
    let first = reader.read().await.map_err(|e| fail(&e))?;
    match first.and_then(|raw| raw.frame.body) {
        Some(Body::Hello(h)) if h.version == tsunagu_proto::PROTOCOL_VERSION => Ok((reader, writer)),
        Some(Body::Hello(h)) => Err(AttemptError::Refused(TransportError::VersionMismatch {
            ours: tsunagu_proto::PROTOCOL_VERSION,
            theirs: h.version,
        })),
        Some(Body::Error(e)) => Err(AttemptError::Refused(remote_error(&e))),
        Some(_) => Err(fail(&"the relay did not answer with Hello")),
        None => Err(fail(&"the relay closed the connection")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_specs() {
        assert_eq!(parse_relay("relay.example").unwrap(), ("relay.example".into(), None));
        assert_eq!(parse_relay("127.0.0.1:7615").unwrap(), ("127.0.0.1".into(), Some(7615)));
        assert_eq!(parse_relay("[::1]:443").unwrap(), ("::1".into(), Some(443)));
        assert_eq!(parse_relay("[::1]").unwrap(), ("::1".into(), None));
        assert_eq!(parse_relay("::1").unwrap(), ("::1".into(), None));
        assert!(parse_relay("host:notaport").is_err());
        assert!(parse_relay("").is_err());
        assert!(parse_relay(":80").is_err());
        assert_eq!(resolve_target("r.example", None).unwrap().1, vec![7615, 80, 443]);
        assert_eq!(
            resolve_target("127.0.0.1:9000", None).unwrap(),
            ("127.0.0.1".into(), vec![9000])
        );
        assert_eq!(
            resolve_target("[::1]:9000", Some(vec![1, 2])).unwrap(),
            ("::1".into(), vec![1, 2])
        );
        assert!(resolve_target("r.example", Some(vec![])).is_err());
    }

    #[test]
    fn relay_lists() {
        let entry = |host: &str, ports: &[u16]| RelayEntry {
            host: host.into(),
            ports: ports.to_vec(),
        };
        // One host keeps today's behaviour: its own port, else 7615, 80, 443.
        assert_eq!(
            parse_relay_list("r.example", None).unwrap(),
            vec![entry("r.example", &[7615, 80, 443])]
        );
        assert_eq!(
            parse_relay_list("a.example:9000, [::1]:443,b.example", None).unwrap(),
            vec![
                entry("a.example", &[9000]),
                entry("::1", &[443]),
                entry("b.example", &[7615, 80, 443])
            ]
        );
        // --ports applies to every entry.
        assert_eq!(
            parse_relay_list("a:1,b", Some(vec![5, 6])).unwrap(),
            vec![entry("a", &[5, 6]), entry("b", &[5, 6])]
        );
        assert!(parse_relay_list("", None).is_err());
        assert!(parse_relay_list("a,,b", None).is_err());
        assert!(parse_relay_list("a,b:x", None).is_err());
        assert!(parse_relay_list("a", Some(vec![])).is_err());
    }

    /// A TLS configuration that trusts nothing (these dials never get as far as TLS).
    fn no_roots() -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        Arc::new(config)
    }

    #[tokio::test]
    async fn every_address_of_a_name_is_tried() {
        // `localhost` has 127.0.0.1 and often ::1; nothing listens on the port we take
        // and give back, so each address is tried and named in the error.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let cfg = DialConfig {
            host: "localhost".into(),
            ports: vec![port],
            tls: no_roots(),
            attempt_timeout: Duration::from_secs(2),
            max_frame: 1 << 20,
            agent: "dial-test".into(),
        };
        let expected = tokio::net::lookup_host(("localhost", port)).await.unwrap().count();
        match dial(&cfg).await {
            Err(DialError::Unreachable { attempts, .. }) => {
                assert_eq!(attempts.len(), expected, "{attempts:?}");
                assert!(attempts.iter().all(|(p, _)| *p == port));
            }
            Err(other) => panic!("expected unreachable, got {other}"),
            Ok(_) => panic!("nothing listens there"),
        }
    }
}
