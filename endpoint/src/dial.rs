//! The endpoint dialer shared by operator and client: TCP + TLS 1.3 to the relay, trying its
//! ports in order (7615, then 80, then 443 by default), each attempt under a short timeout,
//! then the `Hello` exchange.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use tsunagu_proto::pb::frame::Body;
use tsunagu_proto::transport::{hello, remote_error, FrameReader, FrameWriter, TransportError};

/// Default time for one port attempt: TCP connect, TLS handshake and `Hello`.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Any byte stream a connection to the relay runs over: TLS over TCP from [`dial`], or an
/// in-memory pipe when tests play the relay.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static> ByteStream for T {}

/// The stream under a [`Connected`].
pub type Stream = Box<dyn ByteStream>;
/// Reads frames from the relay.
pub type Reader = FrameReader<ReadHalf<Stream>>;
/// Writes frames to the relay.
pub type Writer = FrameWriter<WriteHalf<Stream>>;

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

/// As [`client_tls`], from PEM bytes.
pub fn client_tls_from_pem(pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, String> {
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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![tsunagu_proto::ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// Connects to the first port that completes TCP, TLS and `Hello` in time.
pub async fn dial(cfg: &DialConfig) -> Result<Connected, DialError> {
    let server_name = ServerName::try_from(cfg.host.clone()).map_err(|_| DialError::BadHost(cfg.host.clone()))?;
    let mut attempts = Vec::new();
    for &port in &cfg.ports {
        let attempt = tokio::time::timeout(cfg.attempt_timeout, attempt(cfg, server_name.clone(), port)).await;
        match attempt {
            Ok(Ok(connected)) => return Ok(connected),
            // The relay answered and refused: another port would answer the same.
            Ok(Err(AttemptError::Refused(e))) => return Err(DialError::Refused(e)),
            Ok(Err(AttemptError::Failed(e))) => attempts.push((port, e)),
            Err(_) => attempts.push((port, format!("no answer within {:?}", cfg.attempt_timeout))),
        }
    }
    Err(DialError::Unreachable {
        host: cfg.host.clone(),
        attempts,
    })
}

enum AttemptError {
    Failed(String),
    Refused(TransportError),
}

async fn attempt(cfg: &DialConfig, name: ServerName<'static>, port: u16) -> Result<Connected, AttemptError> {
    let fail = |e: &dyn std::fmt::Display| AttemptError::Failed(e.to_string());
    let tcp = TcpStream::connect((cfg.host.as_str(), port))
        .await
        .map_err(|e| fail(&e))?;
    tcp.set_nodelay(true).map_err(|e| fail(&e))?;
    let peer = tcp.peer_addr().map_err(|e| fail(&e))?;
    let local = tcp.local_addr().map_err(|e| fail(&e))?;
    let tls: TlsStream<TcpStream> = TlsConnector::from(cfg.tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| fail(&e))?;
    let (reader, writer) = hello_exchange(Box::new(tls), cfg.max_frame, &cfg.agent).await?;
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
    match hello_exchange(Box::new(stream), max_frame, agent).await {
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
async fn hello_exchange(stream: Stream, max_frame: usize, agent: &str) -> Result<(Reader, Writer), AttemptError> {
    let fail = |e: &dyn std::fmt::Display| AttemptError::Failed(e.to_string());
    let (r, w) = tokio::io::split(stream);
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
}
