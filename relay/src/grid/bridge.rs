//! The QUIC links between relay nodes. When a client types a code on node B whose session
//! runs on node A, B opens a bridge stream to A ([`Bridge::open`]) and copies bytes between
//! the client's TLS stream and the QUIC stream; A's [`BridgeHandler`] gets the stream and
//! runs the relay's client side over it.
//!
//! One quinn endpoint per node, both server and client, bound on `cluster.quic_listen`.
//! Mutual TLS 1.3 with node certificates from the cluster CA (see the `pki` module): each
//! side verifies the other's chain to the cluster CA, the dialling side also that the peer
//! is the node it dialled, and the answering side reads the peer's node name from its
//! certificate. ALPN [`ALPN`]. One connection per pair of nodes, made on first use and
//! reused; one bidirectional stream per session.
//!
//! A stream begins with a [`BridgeHeader`]: a 2-byte big-endian length, then that many
//! bytes of JSON, at most [`MAX_HEADER_LEN`]. The answering node acknowledges a well-formed
//! header with one byte before anything else, so `open` returns only once the session's
//! node has the stream; a malformed header resets that stream and no other.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, RecvStream, SendStream, VarInt};
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;

use super::pki::{node_dns_name, node_of_certificate, NodeIdentity};
use crate::config::ClusterConfig;
use crate::shutdown::{ConnectionTasks, SessionMark, Shutdown};

/// ALPN of the links between nodes; a version bump changes it.
pub const ALPN: &[u8] = b"tsunagu-grid/1";

/// Largest header a stream may start with. A join header holds a session id, an address
/// and a host name (at most 255 bytes): well under 1 KiB; 4 KiB leaves room for later
/// kinds without letting a peer make us allocate much.
pub const MAX_HEADER_LEN: usize = 4096;

/// Sessions bridged at once between one pair of nodes. A node carries a few thousand
/// sessions; quinn keeps no state for streams not yet opened, so a high cap costs nothing
/// until used.
const MAX_STREAMS_PER_PEER: u32 = 4096;

/// Per stream (one session): 1 MiB holds the largest frame the relay forwards (1 MiB, see
/// `tsunagu_proto`), and at 10 ms between sites lets one session move ~800 Mbit/s, far
/// above a screen stream.
const STREAM_RECEIVE_WINDOW: u32 = 1 << 20;

/// Per connection (every session of a node pair): 16 sessions' full windows at once, so
/// many screen streams in flight share the link without one starving the rest; also the
/// most a peer can make us buffer.
const CONNECTION_RECEIVE_WINDOW: u32 = 16 << 20;

/// What we keep unacknowledged towards one peer: matched to its receive window.
const SEND_WINDOW: u64 = 16 << 20;

/// QUIC handshakes in progress at once. Only peer nodes connect, one connection each; the
/// cap keeps a flood of unauthenticated handshakes from growing memory.
const MAX_HANDSHAKES: usize = 256;

/// The answering node's acknowledgement of a well-formed header.
const HEADER_ACCEPTED: u8 = 1;

/// Application error codes on the wire (QUIC closes and resets carry a number).
mod code {
    use quinn::VarInt;
    /// The bridge is closing (shutdown).
    pub const CLOSING: VarInt = VarInt::from_u32(0);
    /// The stream's header was malformed or too large.
    pub const BAD_HEADER: VarInt = VarInt::from_u32(1);
    /// The peer's certificate names no node.
    pub const NO_NODE_NAME: VarInt = VarInt::from_u32(2);
    /// The peer node is gone (its sessions were taken over elsewhere).
    pub const NODE_GONE: VarInt = VarInt::from_u32(3);
}

/// What a bridge stream is for, sent first on every stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BridgeHeader {
    /// A client typed the code of a session this peer runs: attach it as the client.
    Join {
        /// The session the code led to.
        session_id: String,
        /// The client's address as the bridging node saw it (for the history).
        client_addr: SocketAddr,
        /// The relay port the client reached.
        relay_port: u16,
        /// The client's host name from its greeting.
        host: String,
        /// The client's resume key from its `Join` (empty: it cannot resume).
        #[serde(default)]
        resume_key: Vec<u8>,
    },
    /// An endpoint resumes its side of a session this peer runs (the node it reached
    /// checked the token and signature against the session's record; this peer checks
    /// them again and spends the token).
    Resume {
        session_id: String,
        /// The operator's side (else the client's).
        operator: bool,
        token: Vec<u8>,
        signature: Vec<u8>,
        /// The endpoint's address as the bridging node saw it.
        addr: SocketAddr,
    },
}

/// Why a bridge could not be opened or used, grouped by whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The peer node did not answer in time or the link to it was lost: it is down, or
    /// the network between us is.
    #[error("node {node} is unreachable: {reason}")]
    Unreachable { node: String, reason: String },
    /// TLS refused the link: a certificate not from this grid's cluster CA, or the peer
    /// is not the node dialled.
    #[error("the link to node {node} was refused by TLS: {reason}")]
    Refused { node: String, reason: String },
    /// The peer broke the bridge protocol (refused our header, wrong ALPN, bad stream).
    #[error("node {node} broke the bridge protocol: {reason}")]
    Protocol { node: String, reason: String },
    /// Our side: the bridge is closed, a bad node name given, or setup failed.
    #[error("bridge: {0}")]
    Local(String),
}

/// Bridge settings: the timeouts of `[cluster]` and what follows from `node_ttl`.
#[derive(Debug, Clone)]
pub struct BridgeSettings {
    /// The longest [`Bridge::open`] takes and the longest an incoming stream may take to
    /// send its header (`cluster.bridge_timeout`, default 2 s).
    pub timeout: Duration,
    /// How often an idle link sends a keep-alive (`cluster.heartbeat`, default 1 s).
    pub keep_alive: Duration,
    /// A link silent this long is dead and every stream on it fails
    /// (`cluster.node_ttl`, default 5 s: the same moment the grid takes the node as gone).
    pub idle_timeout: Duration,
}

impl BridgeSettings {
    /// The settings `[cluster]` implies. The config's validation keeps `node_ttl` above
    /// twice `heartbeat`, so at least two keep-alives fit in the idle timeout.
    pub fn from_cluster(cluster: &ClusterConfig) -> Self {
        Self {
            timeout: cluster.bridge_timeout,
            keep_alive: cluster.heartbeat,
            idle_timeout: cluster.node_ttl,
        }
    }
}

/// A stream another node opened to this one, with its header read and acknowledged.
#[derive(Debug)]
pub struct IncomingStream {
    /// The peer node, as its certificate names it.
    pub peer: String,
    /// The peer's address.
    pub peer_addr: SocketAddr,
    /// What the stream is for.
    pub header: BridgeHeader,
    /// Bytes to the peer (tokio `AsyncWrite`).
    pub send: SendStream,
    /// Bytes from the peer (tokio `AsyncRead`).
    pub recv: RecvStream,
    /// The stream's task mark: a handler that carries a session marks it, so shutdown lets
    /// the stream run until its session has ended.
    pub mark: SessionMark,
}

/// A boxed future, as handlers return.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Runs each incoming bridge stream; any `Fn(IncomingStream) -> impl Future` is one. Runs
/// as a tracked connection task (see the `shutdown` module): it is cut off at the stop
/// signal unless it has marked the stream's [`IncomingStream::mark`] as carrying a session.
pub trait BridgeHandler: Send + Sync + 'static {
    /// Serves one stream until it ends.
    fn handle(&self, stream: IncomingStream) -> BoxFuture;
}

impl<F, Fut> BridgeHandler for F
where
    F: Fn(IncomingStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn handle(&self, stream: IncomingStream) -> BoxFuture {
        Box::pin(self(stream))
    }
}

/// Counts of the links a bridge made and answered, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgeStats {
    /// Connections this node dialled that completed their handshake.
    pub dialled: u64,
    /// Connections from peer nodes this node accepted.
    pub accepted: u64,
    /// Incoming handshakes that failed (TLS refusal, timeout, wrong ALPN).
    pub refused: u64,
    /// Incoming streams handed to the handler.
    pub streams: u64,
    /// Incoming streams reset for a malformed or late header.
    pub bad_headers: u64,
}

#[derive(Default)]
struct Counters {
    dialled: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    streams: AtomicU64,
    bad_headers: AtomicU64,
}

/// The connection to one peer node, made by whichever `open` needs it first; the async
/// lock makes concurrent opens wait for that one handshake instead of making their own.
type PeerSlot = Arc<tokio::sync::Mutex<Option<quinn::Connection>>>;

struct Inner {
    node: String,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    settings: BridgeSettings,
    /// One slot per peer node name; as many entries as nodes ever dialled.
    peers: Mutex<HashMap<String, PeerSlot>>,
    counters: Counters,
}

/// This node's QUIC endpoint towards the other nodes. Cheap to clone.
#[derive(Clone)]
pub struct Bridge {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("node", &self.inner.node)
            .field("local_addr", &self.inner.endpoint.local_addr().ok())
            .finish()
    }
}

fn local(e: impl std::fmt::Display) -> BridgeError {
    BridgeError::Local(e.to_string())
}

/// Transport settings shared by both directions.
fn transport(settings: &BridgeSettings) -> Result<quinn::TransportConfig, BridgeError> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS_PER_PEER))
        // Nothing uses unidirectional streams.
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        .send_window(SEND_WINDOW)
        .keep_alive_interval(Some(settings.keep_alive))
        .max_idle_timeout(Some(settings.idle_timeout.try_into().map_err(local)?))
        // Batches of datagrams in one syscall where the kernel can: what makes bulk
        // screen traffic cheap on CPU.
        .enable_segmentation_offload(true);
    Ok(t)
}

impl Bridge {
    /// Binds the endpoint on `listen` and starts accepting links from peer nodes; every
    /// incoming stream runs `handler` as a task of `tasks`. Must run inside a tokio runtime.
    pub fn bind(
        identity: &NodeIdentity,
        listen: SocketAddr,
        settings: BridgeSettings,
        handler: impl BridgeHandler,
        tasks: ConnectionTasks,
    ) -> Result<Self, BridgeError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(identity.roots(), provider.clone())
            .build()
            .map_err(local)?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(local)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(identity.chain().to_vec(), identity.key())
            .map_err(local)?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(local)?
            .with_root_certificates(identity.roots())
            .with_client_auth_cert(identity.chain().to_vec(), identity.key())
            .map_err(local)?;
        client.alpn_protocols = vec![ALPN.to_vec()];

        let transport = Arc::new(transport(&settings)?);
        let mut server_config =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server).map_err(local)?));
        server_config
            .transport_config(transport.clone())
            .max_incoming(MAX_HANDSHAKES);
        let mut client_config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client).map_err(local)?));
        client_config.transport_config(transport);

        let endpoint = quinn::Endpoint::server(server_config, listen)
            .map_err(|e| BridgeError::Local(format!("cannot bind the QUIC listener on {listen}: {e}")))?;
        let inner = Arc::new(Inner {
            node: identity.node().to_string(),
            endpoint,
            client_config,
            settings,
            peers: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        });
        let handler: Arc<dyn BridgeHandler> = Arc::new(handler);
        let accepting = inner.clone();
        let conn_tasks = tasks.clone();
        tasks.spawn_winding_down(move |stop| accept_loop(accepting, handler, conn_tasks, stop));
        tracing::info!(node = %inner.node, addr = ?inner.endpoint.local_addr().ok(), "bridge listening");
        Ok(Self { inner })
    }

    /// The address the endpoint is bound to (the port, when `quic_listen` had port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, BridgeError> {
        self.inner.endpoint.local_addr().map_err(local)
    }

    /// The link counts so far.
    pub fn stats(&self) -> BridgeStats {
        let c = &self.inner.counters;
        BridgeStats {
            dialled: c.dialled.load(Ordering::Relaxed),
            accepted: c.accepted.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            streams: c.streams.load(Ordering::Relaxed),
            bad_headers: c.bad_headers.load(Ordering::Relaxed),
        }
    }

    /// Opens a stream to node `node` at `addr` and sends `header`; returns once the peer
    /// has acknowledged it, within `settings.timeout`. The connection to `node` is made on
    /// first use and reused by every later stream (concurrent opens share one handshake).
    pub async fn open(
        &self,
        node: &str,
        addr: SocketAddr,
        header: &BridgeHeader,
    ) -> Result<(SendStream, RecvStream), BridgeError> {
        let bytes = encode_header(header)?;
        let timeout = self.inner.settings.timeout;
        match tokio::time::timeout(timeout, self.open_within(node, addr, &bytes)).await {
            Ok(result) => result,
            Err(_) => Err(BridgeError::Unreachable {
                node: node.to_string(),
                reason: format!("no answer within {timeout:?}"),
            }),
        }
    }

    async fn open_within(
        &self,
        node: &str,
        addr: SocketAddr,
        header: &[u8],
    ) -> Result<(SendStream, RecvStream), BridgeError> {
        let conn = self.connection(node, addr).await?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| connection_error(node, e))?;
        send.write_all(header).await.map_err(|e| write_error(node, e))?;
        let mut ack = [0u8; 1];
        recv.read_exact(&mut ack).await.map_err(|e| read_error(node, e))?;
        if ack[0] != HEADER_ACCEPTED {
            return Err(BridgeError::Protocol {
                node: node.to_string(),
                reason: format!("unknown acknowledgement {}", ack[0]),
            });
        }
        Ok((send, recv))
    }

    /// The live connection to `node` at `addr`, made if there is none.
    async fn connection(&self, node: &str, addr: SocketAddr) -> Result<quinn::Connection, BridgeError> {
        let slot = {
            let mut peers = self.inner.peers.lock().unwrap_or_else(|p| p.into_inner());
            peers.entry(node.to_string()).or_default().clone()
        };
        let mut current = slot.lock().await;
        if let Some(conn) = current.as_ref() {
            // A node that moved (a new address in the membership) gets a new connection.
            if conn.close_reason().is_none() && conn.remote_address() == addr {
                return Ok(conn.clone());
            }
        }
        let connecting = self
            .inner
            .endpoint
            .connect_with(self.inner.client_config.clone(), addr, &node_dns_name(node))
            .map_err(|e| BridgeError::Local(format!("cannot dial node {node} at {addr}: {e}")))?;
        let conn = connecting.await.map_err(|e| connection_error(node, e))?;
        self.inner.counters.dialled.fetch_add(1, Ordering::Relaxed);
        tracing::info!(node = %self.inner.node, peer = %node, %addr, "bridge link up");
        // A replaced connection is not closed: its streams run to their end, and quinn
        // closes it once the last of them lets go.
        *current = Some(conn.clone());
        Ok(conn)
    }

    /// Node `node` is gone (it died; its sessions are being taken over): closes the link to
    /// it now, so every stream bridged to it ends at once and the endpoints behind them
    /// resume, instead of waiting for the link's idle timeout.
    pub async fn forget(&self, node: &str) {
        let slot = {
            let peers = self.inner.peers.lock().unwrap_or_else(|p| p.into_inner());
            peers.get(node).cloned()
        };
        if let Some(slot) = slot {
            if let Some(conn) = slot.lock().await.take() {
                tracing::info!(node = %self.inner.node, peer = %node, "closing the link to a node that is gone");
                conn.close(code::NODE_GONE, b"node gone");
            }
        }
    }

    /// Closes every link at once (streams still open fail on both sides) and stops
    /// accepting. Call after the relay's sessions have ended, then [`Bridge::wait_idle`].
    pub fn close(&self) {
        self.inner.endpoint.close(code::CLOSING, b"node shutting down");
    }

    /// Waits until the peers have been told of the close, at most `deadline`; returns
    /// whether they were.
    pub async fn wait_idle(&self, deadline: Duration) -> bool {
        tokio::time::timeout(deadline, self.inner.endpoint.wait_idle())
            .await
            .is_ok()
    }

    #[cfg(test)]
    async fn raw_connection(&self, node: &str, addr: SocketAddr) -> quinn::Connection {
        self.connection(node, addr).await.expect("test link")
    }
}

/// Whether a QUIC error code is a TLS alert (the crypto range 0x100..=0x1ff, RFC 9001).
fn is_tls_alert(code: quinn::TransportErrorCode) -> bool {
    (0x100..=0x1ff).contains(&u64::from(code))
}

fn connection_error(node: &str, e: ConnectionError) -> BridgeError {
    let node = node.to_string();
    match e {
        ConnectionError::TransportError(t) if is_tls_alert(t.code) => BridgeError::Refused {
            node,
            reason: format!("we refused its certificate: {t}"),
        },
        ConnectionError::ConnectionClosed(c) if is_tls_alert(c.error_code) => BridgeError::Refused {
            node,
            reason: format!("it refused our certificate: {c}"),
        },
        ConnectionError::ConnectionClosed(c) if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED => {
            BridgeError::Unreachable {
                node,
                reason: format!("it takes no new links (shutting down?): {c}"),
            }
        }
        ConnectionError::TimedOut | ConnectionError::Reset | ConnectionError::ApplicationClosed(_) => {
            BridgeError::Unreachable {
                node,
                reason: e.to_string(),
            }
        }
        ConnectionError::ConnectionClosed(_)
        | ConnectionError::TransportError(_)
        | ConnectionError::VersionMismatch => BridgeError::Protocol {
            node,
            reason: e.to_string(),
        },
        ConnectionError::LocallyClosed | ConnectionError::CidsExhausted => BridgeError::Local(e.to_string()),
    }
}

fn write_error(node: &str, e: quinn::WriteError) -> BridgeError {
    match e {
        quinn::WriteError::ConnectionLost(c) => connection_error(node, c),
        other => BridgeError::Protocol {
            node: node.to_string(),
            reason: other.to_string(),
        },
    }
}

fn read_error(node: &str, e: quinn::ReadExactError) -> BridgeError {
    match e {
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c)) => connection_error(node, c),
        quinn::ReadExactError::ReadError(quinn::ReadError::Reset(c)) if c == code::BAD_HEADER => {
            BridgeError::Protocol {
                node: node.to_string(),
                reason: "it refused the stream's header".into(),
            }
        }
        other => BridgeError::Protocol {
            node: node.to_string(),
            reason: other.to_string(),
        },
    }
}

/// The header as sent: 2-byte big-endian length, then JSON.
pub fn encode_header(header: &BridgeHeader) -> Result<Vec<u8>, BridgeError> {
    let json = serde_json::to_vec(header).map_err(local)?;
    if json.len() > MAX_HEADER_LEN {
        return Err(BridgeError::Local(format!(
            "a bridge header of {} bytes is over the {MAX_HEADER_LEN}-byte limit",
            json.len()
        )));
    }
    let mut out = Vec::with_capacity(2 + json.len());
    // Fits: at most MAX_HEADER_LEN, checked above.
    out.extend_from_slice(&(json.len() as u16).to_be_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

/// What [`decode_header`] made of the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderDecode {
    /// A header, and how many bytes it took.
    Header(BridgeHeader, usize),
    /// Not all of it yet: at least this many bytes in total are needed.
    NeedMore(usize),
    /// Not a header: the stream is reset.
    Invalid(String),
}

/// Decodes a header from the start of `buf`; checks the length against [`MAX_HEADER_LEN`]
/// before the body is looked at.
pub fn decode_header(buf: &[u8]) -> HeaderDecode {
    let Some(len) = buf.get(..2) else {
        return HeaderDecode::NeedMore(2);
    };
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    if len == 0 || len > MAX_HEADER_LEN {
        return HeaderDecode::Invalid(format!("header length {len} is not 1 to {MAX_HEADER_LEN}"));
    }
    let Some(body) = buf.get(2..2 + len) else {
        return HeaderDecode::NeedMore(2 + len);
    };
    match serde_json::from_slice(body) {
        Ok(header) => HeaderDecode::Header(header, 2 + len),
        Err(e) => HeaderDecode::Invalid(e.to_string()),
    }
}

/// Reads exactly one header off `recv`, never more than it needs (what follows belongs to
/// the handler).
async fn read_header(recv: &mut RecvStream) -> Result<BridgeHeader, String> {
    let mut buf = Vec::new();
    loop {
        match decode_header(&buf) {
            HeaderDecode::Header(header, _) => return Ok(header),
            HeaderDecode::Invalid(reason) => return Err(reason),
            HeaderDecode::NeedMore(total) => {
                // `total` is at most 2 + MAX_HEADER_LEN: decode checked the length.
                let start = buf.len();
                buf.resize(total, 0);
                recv.read_exact(&mut buf[start..]).await.map_err(|e| e.to_string())?;
            }
        }
    }
}

/// Node name of the peer of an accepted connection, from its verified certificate.
fn peer_node(conn: &quinn::Connection) -> Option<String> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    node_of_certificate(chain.first()?)
}

/// Accepts links until the stop signal or the endpoint's close. Streams already running
/// go on: sessions end by themselves at shutdown.
async fn accept_loop(inner: Arc<Inner>, handler: Arc<dyn BridgeHandler>, tasks: ConnectionTasks, mut stop: Shutdown) {
    loop {
        let incoming = tokio::select! {
            incoming = inner.endpoint.accept() => incoming,
            _ = stop.recv() => None,
        };
        let Some(incoming) = incoming else { return };
        let (inner, handler, conn_tasks) = (inner.clone(), handler.clone(), tasks.clone());
        // A link itself never carries a session (its streams do): it stops at the signal.
        tasks.spawn(move |_link| serve_connection(inner, incoming, handler, conn_tasks));
    }
}

async fn serve_connection(
    inner: Arc<Inner>,
    incoming: quinn::Incoming,
    handler: Arc<dyn BridgeHandler>,
    tasks: ConnectionTasks,
) {
    let peer_addr = incoming.remote_address();
    let conn = match tokio::time::timeout(inner.settings.timeout, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            inner.counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(node = %inner.node, %peer_addr, error = %e, "refused a bridge link");
            return;
        }
        Err(_) => {
            inner.counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(node = %inner.node, %peer_addr, "a bridge handshake timed out");
            return;
        }
    };
    let Some(peer) = peer_node(&conn) else {
        inner.counters.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(node = %inner.node, %peer_addr, "refused a bridge link: its certificate names no node");
        conn.close(code::NO_NODE_NAME, b"certificate names no node");
        return;
    };
    inner.counters.accepted.fetch_add(1, Ordering::Relaxed);
    tracing::info!(node = %inner.node, %peer, %peer_addr, "bridge link accepted");
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let (inner, handler, peer) = (inner.clone(), handler.clone(), peer.clone());
                tasks.spawn(move |mark| serve_stream(inner, handler, peer, peer_addr, send, recv, mark));
            }
            Err(e) => {
                tracing::info!(node = %inner.node, %peer, error = %e, "bridge link ended");
                return;
            }
        }
    }
}

async fn serve_stream(
    inner: Arc<Inner>,
    handler: Arc<dyn BridgeHandler>,
    peer: String,
    peer_addr: SocketAddr,
    mut send: SendStream,
    mut recv: RecvStream,
    mark: SessionMark,
) {
    let header = match tokio::time::timeout(inner.settings.timeout, read_header(&mut recv)).await {
        Ok(Ok(header)) => header,
        outcome => {
            let reason = match outcome {
                Ok(Err(reason)) => reason,
                _ => "no header in time".to_string(),
            };
            inner.counters.bad_headers.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(node = %inner.node, %peer, %reason, "reset a bridge stream with a bad header");
            // Either may already be closed by the peer; the stream is over either way.
            let _ = send.reset(code::BAD_HEADER);
            let _ = recv.stop(code::BAD_HEADER);
            return;
        }
    };
    if let Err(e) = send.write_all(&[HEADER_ACCEPTED]).await {
        tracing::info!(node = %inner.node, %peer, error = %e, "a bridge stream ended before its acknowledgement");
        return;
    }
    inner.counters.streams.fetch_add(1, Ordering::Relaxed);
    handler
        .handle(IncomingStream {
            peer,
            peer_addr,
            header,
            send,
            recv,
            mark,
        })
        .await;
}

#[cfg(test)]
mod tests;
