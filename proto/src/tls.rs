//! TLS over rustls' unbuffered API with our own buffers, for both ends of a connection to a
//! relay: [`accept`] on the relay, [`connect`] in the apps.
//!
//! A relay moves every byte through TLS twice (opened from one peer, sealed to the other),
//! so what the TLS layer costs per byte and per idle connection is what the relay costs;
//! the apps' file transfers and screens pay the same per byte at their end. The buffered
//! `rustls::ServerConnection`/`ClientConnection` read the socket a few KiB at a time into a
//! deframing buffer kept for the connection's life, and queue each outgoing record in an
//! allocation of its own. Here instead:
//!
//! * the reader takes as much ciphertext as the socket has in one `read` (up to
//!   [`MAX_READ`]) and lets rustls open the records in that buffer. A quiet connection
//!   reads into the stack first and holds no read buffer while it waits;
//! * the writer seals records straight into one outgoing buffer, written with one `write`
//!   per flush (a batch of frames is one system call), and given up after small batches.
//!
//! Buffers stay below glibc's default mapping threshold (128 KiB), so a buffer given up and
//! taken again comes from the heap, not from a fresh mapping.
//!
//! The two halves share the rustls state, the received ciphertext and the opened data
//! under one lock: rustls must always be handed the same received bytes (it keeps
//! positions into them between calls), whichever half calls it. The lock is held while
//! records are sealed or opened and for the reader's non-blocking socket read, never
//! across an await. TLS messages the reading side must answer after the handshake (a TLS
//! 1.3 key update) are left for the writing side, which sends them ahead of its next
//! record or at its next flush.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, ReadTraffic, UnbufferedStatus};
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// A quiet connection's read, into the stack: a ping or a control frame fits.
const QUIET_READ: usize = 4 * 1024;
/// The largest socket read, reached by doubling while reads keep filling the buffer.
const MAX_READ: usize = 96 * 1024;
/// Sealed bytes the writer holds at most before it writes them to the socket.
const HIGH_WATER: usize = 96 * 1024;
/// A flush of at most this many bytes gives the outgoing buffer up afterwards (a
/// connection that sends little keeps nothing between its messages); a larger one keeps it
/// for the next batch.
const SMALL_BATCH: usize = 4 * 1024;
/// Room for one record's header, content type and authentication tag.
const RECORD_OVERHEAD: usize = 64;
/// rustls' largest record payload.
const MAX_FRAGMENT: usize = 16 * 1024;

/// Which end of the connection this is: the relay's ([`Server`]) or an app's ([`Client`]).
/// rustls gives each end its own connection type; this names what the two share here.
pub trait Side: sealed::Sealed + Sized + Send + 'static {
    /// rustls' unbuffered connection for this end.
    type Conn: std::ops::DerefMut<Target = rustls::unbuffered::UnbufferedConnectionCommon<Self>> + Send;

    /// Opens or produces the next TLS messages (`process_tls_records`, which rustls
    /// defines for each end apart).
    fn process<'c, 'i>(conn: &'c mut Self::Conn, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self>;
}

/// The relay's end: [`accept`].
pub type Server = ServerConnectionData;
/// An app's end: [`connect`].
pub type Client = ClientConnectionData;

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Server {}
    impl Sealed for super::Client {}
}

impl Side for ServerConnectionData {
    type Conn = UnbufferedServerConnection;

    fn process<'c, 'i>(conn: &'c mut Self::Conn, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self> {
        conn.process_tls_records(incoming)
    }
}

impl Side for ClientConnectionData {
    type Conn = UnbufferedClientConnection;

    fn process<'c, 'i>(conn: &'c mut Self::Conn, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self> {
        conn.process_tls_records(incoming)
    }
}

struct State<S: Side> {
    conn: S::Conn,
    /// Ciphertext read from the socket and not yet opened.
    incoming: BytesMut,
    /// Opened data the reader has not taken yet (rustls hands out whole records; the
    /// reader's buffer may be smaller).
    plain: BytesMut,
    /// The peer closed its side (close_notify).
    closed: bool,
    /// TLS messages produced while reading (after the handshake) that the writer sends
    /// before its next record.
    to_send: Vec<u8>,
    /// The reader, waiting for the socket, to be woken when the writer opened records.
    reader: Option<Waker>,
}

type Shared<S> = Arc<Mutex<State<S>>>;

fn lock<S: Side>(shared: &Shared<S>) -> MutexGuard<'_, State<S>> {
    // A panic under the lock leaves rustls' state as it was between two calls.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

fn tls_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}"))
}

fn closed_in_handshake() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the peer closed the connection during the TLS handshake",
    )
}

impl<S: Side> State<S> {
    /// Opens the records `incoming` holds: into `out` while it has room and nothing is
    /// waiting before it, the rest into `plain`. Stops when rustls needs more bytes.
    fn open_records(&mut self, mut out: Option<&mut ReadBuf<'_>>) -> io::Result<()> {
        loop {
            let status = S::process(&mut self.conn, &mut self.incoming[..]);
            let discard = status.discard;
            let opened = match status.state {
                Ok(opened) => opened,
                Err(e) => {
                    // The alert saying why goes out with the writer's next flush.
                    self.incoming.advance(discard);
                    pending_alerts::<S>(&mut self.conn, &mut self.incoming, &mut self.to_send);
                    return Err(tls_error(e));
                }
            };
            let wait = match opened {
                ConnectionState::ReadTraffic(mut t) => {
                    take_records(&mut t, out.as_deref_mut(), &mut self.plain)?;
                    false
                }
                ConnectionState::EncodeTlsData(mut e) => {
                    encode_into(&mut self.to_send, MAX_FRAGMENT, |buf| e.encode(buf))?;
                    false
                }
                // The writer sends `to_send` before its next record.
                ConnectionState::TransmitTlsData(t) => {
                    t.done();
                    false
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    self.closed = true;
                    true
                }
                // Nothing more to open: wait for the socket.
                ConnectionState::WriteTraffic(_) | ConnectionState::BlockedHandshake => true,
                other => return Err(tls_error(format!("unexpected state {other:?}"))),
            };
            self.incoming.advance(discard);
            if wait {
                return Ok(());
            }
        }
    }
}

/// Takes the records rustls opened: into `out` while it has room and nothing waits before
/// it in `plain`, the rest into `plain`.
fn take_records<S: Side>(
    t: &mut ReadTraffic<'_, '_, S>,
    mut out: Option<&mut ReadBuf<'_>>,
    plain: &mut BytesMut,
) -> io::Result<()> {
    while let Some(record) = t.next_record() {
        let payload = record.map_err(tls_error)?.payload;
        let direct = match out.as_deref_mut() {
            Some(o) if plain.is_empty() => {
                let n = payload.len().min(o.remaining());
                o.put_slice(&payload[..n]);
                n
            }
            _ => 0,
        };
        plain.extend_from_slice(&payload[direct..]);
    }
    Ok(())
}

/// Encodes what rustls queued to send after an error (its alert) onto `out`. rustls is
/// called only while it has something queued, so it never looks at the received bytes
/// again (that would raise the same error a second time).
fn pending_alerts<S: Side>(conn: &mut S::Conn, incoming: &mut BytesMut, out: &mut Vec<u8>) {
    while conn.wants_write() {
        let status = S::process(conn, &mut incoming[..]);
        match status.state {
            Ok(ConnectionState::EncodeTlsData(mut e)) => {
                if encode_into(out, MAX_FRAGMENT, |buf| e.encode(buf)).is_err() {
                    return;
                }
            }
            _ => return,
        }
    }
}

/// A finished handshake: the connection's two halves, the protocol the peer chose and its
/// certificate chain.
pub struct Established<R, W, S: Side> {
    pub reader: TlsReader<R, S>,
    pub writer: TlsWriter<W, S>,
    pub alpn: Option<Vec<u8>>,
    pub peer_certificates: Option<Vec<CertificateDer<'static>>>,
}

/// What the handshake does after one step of rustls.
enum Step {
    Again,
    Read,
    Done,
    Closed,
    Failed(io::Error),
}

/// Runs the server side of a TLS handshake over `r` and `w` (the relay's); the two halves
/// of the connection once it is done.
pub async fn accept<R, W>(config: Arc<ServerConfig>, r: R, w: W) -> io::Result<Established<R, W, Server>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    handshake(conn, r, w).await
}

/// Runs the client side of a TLS handshake with the server called `name` over `r` and `w`
/// (an app's); the two halves of the connection once it is done.
pub async fn connect<R, W>(
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    r: R,
    w: W,
) -> io::Result<Established<R, W, Client>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let conn = UnbufferedClientConnection::new(config, name).map_err(tls_error)?;
    handshake(conn, r, w).await
}

/// Runs rustls' handshake for either end until rustls says it is over.
async fn handshake<R, W, S>(conn: S::Conn, r: R, mut w: W) -> io::Result<Established<R, W, S>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    S: Side,
{
    let shared: Shared<S> = Arc::new(Mutex::new(State {
        conn,
        incoming: BytesMut::new(),
        plain: BytesMut::new(),
        closed: false,
        to_send: Vec::new(),
        reader: None,
    }));
    let mut reader = TlsReader::new(r, shared.clone());
    let mut out: Vec<u8> = Vec::new();
    loop {
        let step = {
            let mut guard = lock(&shared);
            let state = &mut *guard;
            let status = S::process(&mut state.conn, &mut state.incoming[..]);
            let discard = status.discard;
            let step = match status.state {
                Err(e) => Step::Failed(tls_error(e)),
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    encode_into(&mut out, MAX_FRAGMENT, |buf| e.encode(buf))?;
                    Step::Again
                }
                // Written below, before anything else happens on the connection.
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    t.done();
                    Step::Again
                }
                Ok(ConnectionState::BlockedHandshake) => Step::Read,
                Ok(ConnectionState::ReadTraffic(mut t)) => {
                    // Application data sent with the handshake's last flight.
                    take_records(&mut t, None, &mut state.plain)?;
                    Step::Again
                }
                // TLS 1.3 lets the server send once its own Finished is out, before the
                // client's certificate and Finished have come: the handshake is over only
                // when rustls says so (below).
                Ok(ConnectionState::WriteTraffic(_)) => Step::Done,
                Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => Step::Closed,
                Ok(other) => Step::Failed(tls_error(format!("unexpected state {other:?} in the handshake"))),
            };
            state.incoming.advance(discard);
            match step {
                Step::Done if state.conn.is_handshaking() => Step::Read,
                Step::Failed(e) => {
                    // Refused (a certificate that is not accepted, a protocol error): the
                    // alert that says why goes to the peer before the connection closes.
                    pending_alerts::<S>(&mut state.conn, &mut state.incoming, &mut out);
                    Step::Failed(e)
                }
                other => other,
            }
        };
        if let Step::Failed(e) = step {
            let _ = w.write_all(&out).await;
            let _ = w.flush().await;
            return Err(e);
        }
        if !out.is_empty() {
            w.write_all(&out).await?;
            w.flush().await?;
            out = Vec::new();
        }
        match step {
            Step::Again => {}
            Step::Read => {
                if std::future::poll_fn(|cx| reader.poll_fill(cx)).await? == 0 {
                    return Err(closed_in_handshake());
                }
            }
            Step::Done => break,
            Step::Closed | Step::Failed(_) => return Err(closed_in_handshake()),
        }
    }
    let (alpn, peer_certificates) = {
        let guard = lock(&shared);
        (
            guard.conn.alpn_protocol().map(<[u8]>::to_vec),
            guard.conn.peer_certificates().map(<[CertificateDer<'static>]>::to_vec),
        )
    };
    reader.release_if_drained(&mut lock(&shared));
    let writer = TlsWriter {
        io: w,
        shared,
        out: Sealed::default(),
        written: 0,
        closed: false,
    };
    Ok(Established {
        reader,
        writer,
        alpn,
        peer_certificates,
    })
}

/// The two ways sealing or encoding fails that [`encode_into`] tells apart.
enum SizeError {
    Needs(usize),
    Other(String),
}

impl From<EncodeError> for SizeError {
    fn from(e: EncodeError) -> Self {
        match e {
            EncodeError::InsufficientSize(s) => SizeError::Needs(s.required_size),
            other => SizeError::Other(other.to_string()),
        }
    }
}

impl From<EncryptError> for SizeError {
    fn from(e: EncryptError) -> Self {
        match e {
            EncryptError::InsufficientSize(s) => SizeError::Needs(s.required_size),
            other => SizeError::Other(other.to_string()),
        }
    }
}

/// Where records are encoded or sealed: room at the end, then how much of it was used.
trait Room {
    /// `n` initialised bytes after what is filled.
    fn room(&mut self, n: usize) -> &mut [u8];
    /// Of the last `room` bytes handed out, the first `used` are filled.
    fn filled(&mut self, room: usize, used: usize);
}

impl Room for Vec<u8> {
    fn room(&mut self, n: usize) -> &mut [u8] {
        let start = self.len();
        if self.capacity() < start + n {
            self.reserve_exact(n);
        }
        self.resize(start + n, 0);
        &mut self[start..]
    }

    fn filled(&mut self, room: usize, used: usize) {
        self.truncate(self.len() - room + used);
    }
}

/// Sealed records waiting for the socket: `buf[..len]`. The bytes of `buf` past `len` were
/// used before and are handed to rustls again as they are, so only bytes never used are
/// zeroed (rustls seals into initialised room; zeroing all of it before every seal cost as
/// much CPU as a tenth of the copying).
#[derive(Debug, Default)]
struct Sealed {
    buf: Vec<u8>,
    len: usize,
}

impl Sealed {
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Room for `total` bytes in all without growing.
    fn reserve_total(&mut self, total: usize) {
        if self.buf.capacity() < total {
            self.buf.reserve_exact(total - self.buf.len());
        }
    }

    fn extend(&mut self, bytes: &[u8]) {
        self.room(bytes.len()).copy_from_slice(bytes);
        self.len += bytes.len();
    }
}

impl Room for Sealed {
    fn room(&mut self, n: usize) -> &mut [u8] {
        let end = self.len + n;
        if self.buf.len() < end {
            self.reserve_total(end);
            self.buf.resize(end, 0);
        }
        &mut self.buf[self.len..end]
    }

    fn filled(&mut self, _room: usize, used: usize) {
        self.len += used;
    }
}

/// Encodes or seals (`f`) onto the end of `out`, with `room` bytes to start with and once
/// more with as many as rustls says it needs.
fn encode_into<E: Into<SizeError>>(
    out: &mut impl Room,
    mut room: usize,
    mut f: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> io::Result<()> {
    for _ in 0..2 {
        let result = f(out.room(room)).map_err(Into::into);
        match result {
            Ok(n) => {
                out.filled(room, n.min(room));
                return Ok(());
            }
            Err(SizeError::Needs(n)) if n > room => {
                out.filled(room, 0);
                room = n;
            }
            Err(SizeError::Needs(n)) => {
                out.filled(room, 0);
                return Err(tls_error(format!("rustls asked for {n} bytes and was given {room}")));
            }
            Err(SizeError::Other(e)) => {
                out.filled(room, 0);
                return Err(tls_error(e));
            }
        }
    }
    Err(tls_error("no room to seal a record"))
}

/// The reading half: decrypted application data.
pub struct TlsReader<R, S: Side> {
    io: R,
    shared: Shared<S>,
    /// The next read's size: [`QUIET_READ`] into the stack, or more into `incoming`.
    read_size: usize,
    /// The socket ended.
    eof: bool,
}

impl<R: AsyncRead + Unpin, S: Side> TlsReader<R, S> {
    fn new(io: R, shared: Shared<S>) -> Self {
        Self {
            io,
            shared,
            read_size: QUIET_READ,
            eof: false,
        }
    }

    /// Reads what the socket has into `incoming`; how many bytes came (0: the socket ended).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let quiet = self.read_size == QUIET_READ && lock(&self.shared).incoming.is_empty();
        if quiet {
            // Quiet: no buffer is held while the socket has nothing.
            let mut stack = [0u8; QUIET_READ];
            let mut rb = ReadBuf::new(&mut stack);
            let polled = Pin::new(&mut self.io).poll_read(cx, &mut rb);
            let mut state = lock(&self.shared);
            if polled.is_pending() {
                state.reader = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let () = ready!(polled)?;
            let n = rb.filled().len();
            state.incoming.extend_from_slice(rb.filled());
            if n == QUIET_READ {
                self.read_size = QUIET_READ * 2;
            }
            return Poll::Ready(Ok(n));
        }
        let mut state = lock(&self.shared);
        // Room for `read_size` in all; `reserve` moves what is left to the front first
        // when that makes the room.
        let wanted = self.read_size.saturating_sub(state.incoming.len()).max(QUIET_READ);
        if state.incoming.capacity() - state.incoming.len() < wanted {
            state.incoming.reserve(wanted);
        }
        let spare = state.incoming.capacity() - state.incoming.len();
        // Held across the read: it does not wait (the socket says it would block), and the
        // writer must not hand rustls the buffer while it grows.
        let polled = tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut state.incoming);
        if polled.is_pending() {
            state.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = ready!(polled)?;
        if n >= spare {
            // The socket had at least as much as there was room for: read more at once.
            self.read_size = (self.read_size * 2).min(MAX_READ);
        } else if n < spare / 4 {
            self.read_size = (self.read_size / 2).max(QUIET_READ);
        }
        Poll::Ready(Ok(n))
    }

    /// Gives up the buffers a quiet connection does not need.
    fn release_if_drained(&self, state: &mut State<S>) {
        let quiet = self.read_size == QUIET_READ;
        if state.incoming.is_empty() && quiet {
            state.incoming = BytesMut::new();
        }
        if state.plain.is_empty() && (quiet || state.plain.capacity() > MAX_READ) {
            state.plain = BytesMut::new();
        }
    }
}

impl<R: AsyncRead + Unpin, S: Side> AsyncRead for TlsReader<R, S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            {
                let mut guard = lock(&this.shared);
                let state = &mut *guard;
                if !state.plain.is_empty() {
                    let n = state.plain.len().min(out.remaining());
                    out.put_slice(&state.plain[..n]);
                    state.plain.advance(n);
                    this.release_if_drained(state);
                    return Poll::Ready(Ok(()));
                }
                if state.closed || this.eof {
                    return Poll::Ready(Ok(()));
                }
                if !state.incoming.is_empty() {
                    let before = out.filled().len();
                    state.open_records(Some(out))?;
                    if out.filled().len() > before {
                        this.release_if_drained(state);
                        return Poll::Ready(Ok(()));
                    }
                    if !state.plain.is_empty() || state.closed {
                        continue;
                    }
                }
                this.release_if_drained(state);
            }
            if ready!(this.poll_fill(cx))? == 0 {
                if !lock(&this.shared).incoming.is_empty() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection in the middle of a TLS record",
                    )));
                }
                // The socket ended without close_notify: the end of the stream all the
                // same (the frame layer notices a frame cut short).
                this.eof = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// The writing half: seals what it is given into records and writes them in batches.
pub struct TlsWriter<W, S: Side> {
    io: W,
    shared: Shared<S>,
    /// Sealed records; `out.bytes()[written..]` is still to be written to the socket.
    out: Sealed,
    written: usize,
    closed: bool,
}

impl<W: AsyncWrite + Unpin, S: Side> TlsWriter<W, S> {
    /// Writes what is sealed to the socket.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out.bytes()[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        if self.written <= SMALL_BATCH {
            self.out = Sealed::default();
        } else {
            self.out.len = 0;
        }
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Seals `data` into `out` after any TLS messages the reading side left; `close`
    /// seals a close_notify alert instead.
    fn seal(&mut self, data: &[u8], close: bool) -> io::Result<()> {
        let mut guard = lock(&self.shared);
        let state = &mut *guard;
        if !state.to_send.is_empty() {
            self.out.extend(&state.to_send);
            state.to_send = Vec::new();
        }
        loop {
            let status = S::process(&mut state.conn, &mut state.incoming[..]);
            let discard = status.discard;
            let sealed = match status.state.map_err(tls_error)? {
                ConnectionState::WriteTraffic(mut t) => {
                    if close {
                        encode_into(&mut self.out, RECORD_OVERHEAD, |buf| t.queue_close_notify(buf))?;
                    } else if !data.is_empty() {
                        let room = data.len() + data.len().div_ceil(MAX_FRAGMENT) * RECORD_OVERHEAD;
                        encode_into(&mut self.out, room, |buf| t.encrypt(data, buf))?;
                    }
                    true
                }
                // Records the reader has read but not opened yet: opened here for it.
                ConnectionState::ReadTraffic(mut t) => {
                    take_records(&mut t, None, &mut state.plain)?;
                    if let Some(reader) = state.reader.take() {
                        reader.wake();
                    }
                    false
                }
                // A key update rustls decided to send goes ahead of the data.
                ConnectionState::EncodeTlsData(mut e) => {
                    encode_into(&mut self.out, MAX_FRAGMENT, |buf| e.encode(buf))?;
                    false
                }
                ConnectionState::TransmitTlsData(t) => {
                    t.done();
                    false
                }
                // The peer's close_notify is the reader's to see; sending may go on.
                ConnectionState::PeerClosed => {
                    state.closed = true;
                    if let Some(reader) = state.reader.take() {
                        reader.wake();
                    }
                    false
                }
                ConnectionState::Closed if close => true,
                ConnectionState::Closed => return Err(io::ErrorKind::BrokenPipe.into()),
                other => return Err(tls_error(format!("cannot send in state {other:?}"))),
            };
            state.incoming.advance(discard);
            if sealed {
                return Ok(());
            }
        }
    }
}

impl<W: AsyncWrite + Unpin, S: Side> AsyncWrite for TlsWriter<W, S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if this.out.len >= HIGH_WATER {
            ready!(this.poll_drain(cx))?;
        }
        // Taken in parts, so the buffer never grows past the high-water mark by more than
        // a record.
        let take = data.len().min((HIGH_WATER - this.out.len).max(MAX_FRAGMENT));
        if this.out.buf.capacity() < HIGH_WATER && this.out.len + take > SMALL_BATCH {
            // Streaming: one buffer for whole batches instead of growing by steps.
            this.out.reserve_total(HIGH_WATER + MAX_FRAGMENT + 8 * RECORD_OVERHEAD);
        }
        this.seal(&data[..take], false)?;
        Poll::Ready(Ok(take))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closed && !lock(&this.shared).to_send.is_empty() {
            // What the reading side left to answer goes out with a flush too.
            this.seal(&[], false)?;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closed {
            this.closed = true;
            // No close_notify after a failure (the connection is broken anyway); what was
            // sealed before still goes out.
            let _ = this.seal(&[], true);
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncReadExt, DuplexStream, ReadHalf, WriteHalf};
    use tokio_rustls::client::TlsStream;

    type Accepted = Established<ReadHalf<DuplexStream>, WriteHalf<DuplexStream>, Server>;

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A server config for `localhost` with a fresh self-signed certificate, speaking
    /// "tsunagu", and a client config that trusts it.
    fn configs() -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key_der)
            .unwrap();
        server.alpn_protocols = vec![b"tsunagu".to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"tsunagu".to_vec()];
        (Arc::new(server), Arc::new(client))
    }

    async fn pair() -> (Accepted, TlsStream<DuplexStream>) {
        let (server_cfg, client_cfg) = configs();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (r, w) = tokio::io::split(a);
        let connector = tokio_rustls::TlsConnector::from(client_cfg);
        let name = ServerName::try_from("localhost").unwrap();
        let (server, client) = tokio::join!(accept(server_cfg, r, w), connector.connect(name, b));
        (server.unwrap(), client.unwrap())
    }

    /// Deterministic bytes that differ from position to position.
    fn pattern(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    /// Reads exactly `len` bytes in pieces of at most `piece`.
    async fn read_all(r: &mut (impl AsyncRead + Unpin), len: usize, piece: usize) -> Vec<u8> {
        let mut got = Vec::with_capacity(len);
        let mut buf = vec![0u8; piece];
        while got.len() < len {
            let n = r.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream ended after {} of {len} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_intact_in_any_piece_sizes() {
        let (server, client) = pair().await;
        assert_eq!(server.alpn.as_deref(), Some(&b"tsunagu"[..]));
        assert!(server.peer_certificates.is_none());
        let (mut sr, mut sw) = (server.reader, server.writer);
        let (mut cr, mut cw) = tokio::io::split(client);
        let up = pattern(3_000_000, 1);
        let down = pattern(2_500_000, 2);
        let (up2, down2) = (up.clone(), down.clone());
        let client_writes = tokio::spawn(async move {
            // Writes of every size from 1 byte to 70 KiB, across record boundaries.
            let mut at = 0;
            let mut step = 1;
            while at < up2.len() {
                let end = (at + step).min(up2.len());
                cw.write_all(&up2[at..end]).await.unwrap();
                at = end;
                step = (step * 7 + 13) % (70 * 1024) + 1;
            }
            cw.flush().await.unwrap();
            cw
        });
        let server_writes = tokio::spawn(async move {
            for chunk in down2.chunks(64 * 1024 + 5) {
                sw.write_all(chunk).await.unwrap();
                sw.flush().await.unwrap();
            }
            sw
        });
        // The server reads in pieces smaller than a record, the client in larger ones.
        let got_up = read_all(&mut sr, up.len(), 1000).await;
        let got_down = read_all(&mut cr, down.len(), 200 * 1024).await;
        assert!(got_up == up, "the client's bytes arrived changed");
        assert!(got_down == down, "the server's bytes arrived changed");
        client_writes.await.unwrap();
        server_writes.await.unwrap();
    }

    #[tokio::test]
    async fn a_key_update_from_the_client_is_answered_and_both_ways_go_on() {
        let (mut server, mut client) = pair().await;
        client.write_all(b"before").await.unwrap();
        client.flush().await.unwrap();
        assert_eq!(read_all(&mut server.reader, 6, 64).await, b"before");
        // rustls' client asks the server to update its keys too.
        client.get_mut().1.refresh_traffic_keys().unwrap();
        client.write_all(b"after the update").await.unwrap();
        client.flush().await.unwrap();
        assert_eq!(read_all(&mut server.reader, 16, 64).await, b"after the update");
        server.writer.write_all(b"answer").await.unwrap();
        server.writer.flush().await.unwrap();
        assert_eq!(read_all(&mut client, 6, 64).await, b"answer");
        // Several updates in a row, with data in between.
        for i in 0..5u8 {
            client.get_mut().1.refresh_traffic_keys().unwrap();
            client.write_all(&[i; 100]).await.unwrap();
            client.flush().await.unwrap();
            assert_eq!(read_all(&mut server.reader, 100, 64).await, vec![i; 100]);
            server.writer.write_all(&[i; 50]).await.unwrap();
            server.writer.flush().await.unwrap();
            assert_eq!(read_all(&mut client, 50, 64).await, vec![i; 50]);
        }
    }

    #[tokio::test]
    async fn close_notify_ends_the_stream_each_way() {
        let (mut server, mut client) = pair().await;
        client.write_all(b"last words").await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(read_all(&mut server.reader, 10, 64).await, b"last words");
        let mut rest = [0u8; 16];
        assert_eq!(
            server.reader.read(&mut rest).await.unwrap(),
            0,
            "close_notify is the end"
        );
        // The server may still send after the client closed its side, then closes too.
        server.writer.write_all(b"bye").await.unwrap();
        server.writer.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye");
        assert!(
            server.writer.write_all(b"more").await.is_err(),
            "nothing is sent after close_notify"
        );
    }

    #[tokio::test]
    async fn garbage_after_the_handshake_is_an_error_not_a_panic() {
        let (mut server, client) = pair().await;
        let (mut raw, _) = client.into_inner();
        // An application-data record header followed by bytes that are not a sealed record.
        let mut bogus = vec![0x17, 0x03, 0x03, 0x00, 0x40];
        bogus.extend(pattern(0x40, 9));
        raw.write_all(&bogus).await.unwrap();
        let mut buf = [0u8; 64];
        let e = server.reader.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        // A header announcing a record larger than TLS allows.
        let (mut server, client) = pair().await;
        let (mut raw, _) = client.into_inner();
        raw.write_all(&[0x17, 0x03, 0x03, 0xff, 0xff]).await.unwrap();
        raw.write_all(&pattern(1000, 3)).await.unwrap();
        let e = server.reader.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }

    #[tokio::test]
    async fn a_record_cut_short_by_the_socket_is_an_error() {
        let (mut server, client) = pair().await;
        let (mut raw, _) = client.into_inner();
        raw.write_all(&[0x17, 0x03, 0x03, 0x01, 0x00, 1, 2, 3]).await.unwrap();
        drop(raw);
        let mut buf = [0u8; 64];
        let e = server.reader.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    }

    #[tokio::test]
    async fn a_handshake_the_client_gives_up_on_is_refused() {
        let (server_cfg, _) = configs();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (r, w) = tokio::io::split(a);
        // A client that trusts another certificate rejects this one and hangs up.
        let (_, other_client) = configs();
        let connector = tokio_rustls::TlsConnector::from(other_client);
        let name = ServerName::try_from("localhost").unwrap();
        let (server, client) = tokio::join!(accept(server_cfg.clone(), r, w), connector.connect(name, b));
        assert!(client.is_err());
        assert!(server.is_err());
        // A peer that sends half a ClientHello and closes.
        let (a, mut b) = tokio::io::duplex(1024);
        let (r, w) = tokio::io::split(a);
        b.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
        drop(b);
        let e = accept(server_cfg, r, w).await.err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    }

    /// A CA and a client certificate it signed, and a client config presenting it.
    fn client_with_cert(server_roots: &rustls::RootCertStore) -> (rcgen::Certificate, Arc<rustls::ClientConfig>) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(vec![]).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["laptop".into()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(server_roots.clone())
            .with_client_auth_cert(vec![leaf.der().clone()], key_der)
            .unwrap();
        (ca, Arc::new(client))
    }

    /// A server that asks for client certificates from one CA, a client with a certificate
    /// of that CA, and a stranger with a certificate of another.
    fn client_auth_configs() -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>, Arc<rustls::ClientConfig>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let server_cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut server_roots = rustls::RootCertStore::empty();
        server_roots.add(server_cert.der().clone()).unwrap();
        let (ca, client_cfg) = client_with_cert(&server_roots);
        let (_, stranger_cfg) = client_with_cert(&server_roots);
        let mut client_roots = rustls::RootCertStore::empty();
        client_roots.add(ca.der().clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(client_roots), provider())
            .build()
            .unwrap();
        let server_cfg = Arc::new(
            ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(
                    vec![server_cert.der().clone()],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
                )
                .unwrap(),
        );
        (server_cfg, client_cfg, stranger_cfg)
    }

    #[tokio::test]
    async fn a_client_certificate_is_known_when_the_handshake_ends_and_a_refused_one_is_told() {
        let (server_cfg, client_cfg, stranger_cfg) = client_auth_configs();
        let name = ServerName::try_from("localhost").unwrap();
        // Known: the chain is there as soon as `accept` returns, with the data sent right
        // after the handshake.
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (r, w) = tokio::io::split(a);
        let connector = tokio_rustls::TlsConnector::from(client_cfg);
        let client = async {
            let mut c = connector.connect(name.clone(), b).await.unwrap();
            c.write_all(b"hello").await.unwrap();
            c.flush().await.unwrap();
            c
        };
        let (server, _client) = tokio::join!(accept(server_cfg.clone(), r, w), client);
        let mut server = server.unwrap();
        assert_eq!(server.peer_certificates.as_ref().map(Vec::len), Some(1));
        assert_eq!(read_all(&mut server.reader, 5, 64).await, b"hello");
        // Refused: the client hears why (an alert), not a bare end of the stream.
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (r, w) = tokio::io::split(a);
        let connector = tokio_rustls::TlsConnector::from(stranger_cfg);
        let client = async {
            let mut c = connector.connect(name, b).await?;
            c.write_all(b"hello").await?;
            c.flush().await?;
            let mut buf = [0u8; 16];
            c.read(&mut buf).await
        };
        let (server, client) = tokio::join!(accept(server_cfg, r, w), client);
        assert!(server.is_err());
        let e = client.unwrap_err().to_string();
        assert!(e.contains("alert"), "the client was told: {e}");
    }

    #[tokio::test]
    async fn a_quiet_connection_gives_its_buffers_up() {
        let (mut server, client) = pair().await;
        let held = |s: &Accepted| {
            let state = lock(&s.reader.shared);
            (
                state.incoming.capacity(),
                state.plain.capacity(),
                s.writer.out.buf.capacity(),
            )
        };
        assert_eq!(held(&server), (0, 0, 0), "nothing held right after the handshake");
        // A burst in both directions grows the buffers...
        let big = pattern(2_000_000, 4);
        let send = big.clone();
        let (mut cr, mut cw) = tokio::io::split(client);
        let writer = tokio::spawn(async move {
            cw.write_all(&send).await.unwrap();
            cw.flush().await.unwrap();
            cw
        });
        assert!(read_all(&mut server.reader, big.len(), 128 * 1024).await == big);
        let mut cw = writer.await.unwrap();
        let (got, sent) = tokio::join!(read_all(&mut cr, big.len(), 128 * 1024), async {
            server.writer.write_all(&big).await.unwrap();
            server.writer.flush().await.unwrap();
        });
        let () = sent;
        assert!(got == big);
        // ...and a few small messages later the connection holds nothing while it waits.
        for i in 0..8u8 {
            cw.write_all(&[i; 40]).await.unwrap();
            cw.flush().await.unwrap();
            assert_eq!(read_all(&mut server.reader, 40, 64 * 1024).await, vec![i; 40]);
            server.writer.write_all(&[i; 30]).await.unwrap();
            server.writer.flush().await.unwrap();
            assert_eq!(read_all(&mut cr, 30, 64).await, vec![i; 30]);
        }
        assert_eq!(held(&server), (0, 0, 0), "a quiet connection holds no buffers");
    }

    // ---- The apps' end: `connect` ----

    type Connected = Established<ReadHalf<DuplexStream>, WriteHalf<DuplexStream>, Client>;

    /// Our client and our server over one in-memory pipe.
    async fn both_ours(
        server_cfg: Arc<ServerConfig>,
        client_cfg: Arc<rustls::ClientConfig>,
    ) -> (io::Result<Accepted>, io::Result<Connected>) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (sr, sw) = tokio::io::split(a);
        let (cr, cw) = tokio::io::split(b);
        let name = ServerName::try_from("localhost").unwrap();
        tokio::join!(accept(server_cfg, sr, sw), connect(client_cfg, name, cr, cw))
    }

    #[tokio::test]
    async fn our_client_and_our_server_carry_bytes_both_ways_intact() {
        let (server_cfg, client_cfg) = configs();
        let (server, client) = both_ours(server_cfg, client_cfg).await;
        let (server, client) = (server.unwrap(), client.unwrap());
        assert_eq!(server.alpn.as_deref(), Some(&b"tsunagu"[..]));
        assert_eq!(client.alpn.as_deref(), Some(&b"tsunagu"[..]));
        let (mut sr, mut sw) = (server.reader, server.writer);
        let (mut cr, mut cw) = (client.reader, client.writer);
        let up = pattern(3_000_000, 5);
        let down = pattern(2_000_000, 6);
        let (up2, down2) = (up.clone(), down.clone());
        let client_writes = tokio::spawn(async move {
            let mut at = 0;
            let mut step = 3;
            while at < up2.len() {
                let end = (at + step).min(up2.len());
                cw.write_all(&up2[at..end]).await.unwrap();
                if step % 3 == 0 {
                    cw.flush().await.unwrap();
                }
                at = end;
                step = (step * 11 + 7) % (90 * 1024) + 1;
            }
            cw.flush().await.unwrap();
            cw
        });
        let server_writes = tokio::spawn(async move {
            for chunk in down2.chunks(64 * 1024 + 9) {
                sw.write_all(chunk).await.unwrap();
                sw.flush().await.unwrap();
            }
            sw
        });
        let (got_up, got_down) = tokio::join!(
            read_all(&mut sr, up.len(), 70 * 1024),
            read_all(&mut cr, down.len(), 333)
        );
        assert!(got_up == up, "the client's bytes arrived changed");
        assert!(got_down == down, "the server's bytes arrived changed");
        let mut cw = client_writes.await.unwrap();
        let _sw = server_writes.await.unwrap();
        // The client closes: the server reads the end of the stream.
        cw.shutdown().await.unwrap();
        let mut rest = [0u8; 8];
        assert_eq!(sr.read(&mut rest).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn our_client_refuses_a_server_it_does_not_trust_and_says_why() {
        let (server_cfg, _) = configs();
        let (_, stranger) = configs();
        let (server, client) = both_ours(server_cfg, stranger).await;
        let e = client.err().expect("an untrusted server is refused");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert!(e.to_string().contains("certificate"), "the app is told why: {e}");
        // The server hears the client's alert, not just a closed pipe.
        let e = server.err().expect("the server's handshake fails too");
        assert!(e.to_string().contains("alert"), "the server was told: {e}");
    }

    #[tokio::test]
    async fn our_client_presents_its_certificate_to_our_server() {
        let (server_cfg, client_cfg, _) = client_auth_configs();
        let (server, client) = both_ours(server_cfg, client_cfg).await;
        let (mut server, mut client) = (server.unwrap(), client.unwrap());
        assert_eq!(server.peer_certificates.as_ref().map(Vec::len), Some(1));
        client.writer.write_all(b"signed in").await.unwrap();
        client.writer.flush().await.unwrap();
        assert_eq!(read_all(&mut server.reader, 9, 64).await, b"signed in");
    }

    #[tokio::test]
    async fn our_client_answers_a_key_update_from_a_buffered_server() {
        let (server_cfg, client_cfg) = configs();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (cr, cw) = tokio::io::split(b);
        let name = ServerName::try_from("localhost").unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server_cfg);
        let (server, client) = tokio::join!(acceptor.accept(a), connect(client_cfg, name, cr, cw));
        let (mut server, mut client) = (server.unwrap(), client.unwrap());
        for i in 0..4u8 {
            server.get_mut().1.refresh_traffic_keys().unwrap();
            server.write_all(&[i; 3000]).await.unwrap();
            server.flush().await.unwrap();
            assert_eq!(read_all(&mut client.reader, 3000, 1024).await, vec![i; 3000]);
            // More than the pipe holds: written while the server reads.
            let (got, ()) = tokio::join!(read_all(&mut server, 70_000, 4096), async {
                client.writer.write_all(&[i; 70_000]).await.unwrap();
                client.writer.flush().await.unwrap();
            });
            assert_eq!(got, vec![i; 70_000]);
        }
    }
}
