//! The async shell of one endpoint connection: the TLS handshake, then the greeting machine
//! ([`crate::conn::Greeting`]) driven over the stream (its actions carried out: frames
//! written, the throttle, argon2, the account store, the directory), then the connection's
//! side of the session (its reader loop and writer task). Generic over the byte stream, so
//! tests drive it over `tokio::io::duplex` on tokio's paused clock.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tsunagu_proto::codec::encode;
use tsunagu_proto::pb::ErrorCode;
use tsunagu_proto::pb::{self, frame::Body, EndReason, Frame};
use tsunagu_proto::transport::{error_frame, FrameReader, FrameWriter, TransportError};
use tsunagu_proto::PermissionSet;

use crate::clock;
use crate::conn::{Action, AttemptKind, Due, Event, Greeting, Liveness, Refusal, Settle, Timeouts};
use crate::connlimit::ConnPermit;
use crate::directory::IssueError;
use crate::grid::bridge::{BoxFuture, BridgeHandler, BridgeHeader, IncomingStream};
use crate::history::HistoryEvent;
use crate::policy::Policy;
use crate::queue::OutQueue;
use crate::resume::ResumeRefusal;
use crate::session::{Hold, Role, Session};
use crate::shutdown::{SessionMark, Shutdown};
use crate::state::{Joined, Resumable, Shared};
use crate::throttle::{Outcome, ReserveError, Target, Throttles};
use crate::time::now_ms;

/// Everything one connection goes through, from TLS handshake to the end of its session;
/// `permit` holds its connection slot until then.
pub(super) async fn handle_connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    port: u16,
    permit: ConnPermit,
    mark: SessionMark,
) {
    let _ = tcp.set_nodelay(true);
    // The two halves of a socket need no lock between them.
    let (r, w) = tcp.into_split();
    let opened = Box::pin(serve_tls(shared, r, w, peer, port, permit, mark)).await;
    if let Some(opened) = opened {
        opened.run().await;
    }
}

/// What a connection runs for the rest of its life once its handshake and greeting are
/// over (its side of a session, a bridge to another node, a browser's page), each in an
/// allocation of its own: the greeting's state is freed before the session starts, and a
/// connection holds only what its session needs. This is what keeps memory per idle
/// session low.
type Phase = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A connection past its greeting: the phase it runs, and the connection slot and session
/// mark it holds until that is over.
struct Opened {
    phase: Phase,
    permit: ConnPermit,
    mark: SessionMark,
}

impl Opened {
    async fn run(self) {
        let Opened { phase, permit, mark } = self;
        phase.await;
        drop((permit, mark));
    }
}

/// The TLS handshake, under `timeouts.handshake` by tokio's clock, then the connection.
async fn serve_tls<R, W>(
    shared: Arc<Shared>,
    r: R,
    w: W,
    peer: SocketAddr,
    port: u16,
    permit: ConnPermit,
    mark: SessionMark,
) -> Option<Opened>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let handshake = shared.config.timeouts.handshake;
    let config = shared.acceptor.config().clone();
    // Boxed, like each later phase (see `serve_connection`): the handshake's state is
    // freed once it is over instead of weighing on the connection's task for its life.
    let tls = match tokio::time::timeout(handshake, Box::pin(tsunagu_proto::tls::accept(config, r, w))).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return None;
        }
    };
    if tls.alpn.as_deref() == Some(crate::acme::ACME_TLS_ALPN) {
        // An ACME CA's TLS-ALPN-01 validation: the handshake was all it needed.
        tracing::debug!(%peer, "answered an ACME validation handshake");
        return None;
    }
    if tls.alpn.as_deref() == Some(crate::join::HTTP_ALPN) {
        // A browser: the download page, under this connection's slot.
        let page = crate::join::serve(shared, tokio::io::join(tls.reader, tls.writer), peer);
        return Some(Opened {
            phase: Box::pin(page),
            permit,
            mark,
        });
    }
    let cert = crate::certs::PeerCert::of(tls.peer_certificates.as_deref());
    serve_connection(shared, tls.reader, tls.writer, peer, port, permit, mark, cert).await
}

/// Serves one endpoint connection from its first byte, TLS handshake included, over any
/// byte stream (tests use `tokio::io::duplex` on tokio's paused clock), as coming from
/// `peer` on relay port `port`, under the same connection caps as the listeners. Returns
/// false, at once, if the caps refuse it; otherwise when the connection is over.
pub async fn serve_tls_stream<S>(shared: Arc<Shared>, io: S, peer: SocketAddr, port: u16) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok(permit) = shared.connections.try_admit(peer.ip(), clock::now()) else {
        return false;
    };
    let (r, w) = tokio::io::split(io);
    if let Some(opened) = serve_tls(shared, r, w, peer, port, permit, SessionMark::untracked()).await {
        opened.run().await;
    }
    true
}

/// Serves one endpoint connection that is already past TLS, or any byte stream (tests
/// drive the relay over `tokio::io::duplex`, on tokio's paused clock), as coming from
/// `peer` on relay port `port`, under the same connection caps as the listeners. Returns
/// false, at once, if the caps refuse it; otherwise when the connection is over.
pub async fn serve_stream<S>(shared: Arc<Shared>, io: S, peer: SocketAddr, port: u16) -> bool
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let Ok(permit) = shared.connections.try_admit(peer.ip(), clock::now()) else {
        return false;
    };
    let (r, w) = tokio::io::split(io);
    let opened = serve_connection(shared, r, w, peer, port, permit, SessionMark::untracked(), None).await;
    if let Some(opened) = opened {
        opened.run().await;
    }
    true
}

/// Runs one connection over its two halves (TLS in the relay; any byte stream in tests): its greeting
/// (see [`greet`]), then its side of the session. `mark` tells the relay's shutdown when
/// the connection carries a session. The greeting and the session phase each run in an
/// allocation of their own, freed when that phase is over: a connection holds only the
/// phase it is in, and memory per idle session is a figure the relay is measured by.
/// `cert` is the client certificate its TLS handshake verified, if any.
#[allow(clippy::too_many_arguments)] // each is one fact of the accepted connection, given once by its listener
async fn serve_connection<R, W>(
    shared: Arc<Shared>,
    r: R,
    w: W,
    peer: SocketAddr,
    port: u16,
    mut permit: ConnPermit,
    mark: SessionMark,
    cert: Option<crate::certs::PeerCert>,
) -> Option<Opened>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let max_frame = shared.config.limits.max_frame;
    let mut reader = FrameReader::new(r, max_frame);
    let mut writer = FrameWriter::new(w, max_frame);
    let greeted = Box::pin(greet(
        &shared,
        &mut reader,
        &mut writer,
        peer,
        &mut permit,
        &mark,
        cert.as_ref(),
    ))
    .await;
    let next = greeted?;
    let phase: Phase = match next {
        Next::Operator {
            record,
            requested,
            asked,
            resume_key,
            cert,
        } => {
            let asking = Asking {
                record,
                requested,
                asked,
                resume_key,
                cert,
            };
            Box::pin(run_operator(shared, reader, writer, peer, port, asking)).await?
        }
        Next::Client(Joined::Here(session), host, resume_key) => {
            let client = JoiningClient {
                addr: peer,
                relay_port: port,
                host,
                resume_key,
            };
            Box::pin(run_client(shared, session, reader, writer, client)).await?
        }
        Next::Client(Joined::Elsewhere(target), host, resume_key) => {
            let client = super::bridged::Client {
                addr: peer,
                relay_port: port,
                host,
                resume_key,
            };
            Box::pin(super::bridged::bridge_client(shared, target, client, reader, writer))
        }
        Next::Resume(session, role) => Box::pin(run_resumed(shared, session, role, reader, writer, peer)).await?,
        Next::ResumeElsewhere(node, resume) => {
            let header = BridgeHeader::Resume {
                session_id: resume.session_id,
                operator: resume.operator,
                token: resume.token.to_vec(),
                signature: resume.signature.to_vec(),
                addr: peer,
            };
            Box::pin(async move { super::bridged::bridge_to(shared, &node, header, reader, writer).await })
        }
    };
    Some(Opened { phase, permit, mark })
}

/// Drives the connection's greeting machine ([`Greeting`]), carrying out what it asks for,
/// until it says where the connection goes next (`None`: it was refused or went away).
/// Every wait on the peer is bounded by the machine's deadline, measured by tokio's clock
/// (see [`crate::clock`]).
async fn greet<R, W>(
    shared: &Arc<Shared>,
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    peer: SocketAddr,
    permit: &mut ConnPermit,
    mark: &SessionMark,
    cert: Option<&crate::certs::PeerCert>,
) -> Option<Next>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let t = &shared.config.timeouts;
    let ip = peer.ip();
    let timeouts = Timeouts {
        greeting: t.greeting,
        idle: t.idle,
    };
    let mut machine = Greeting::new(ip, timeouts, clock::now());
    // The session a client's code led to, between `TakeCode` and `Join`.
    let mut taken: Option<Joined> = None;
    // The session whose seat a resume took, between `TakeSeat` and `Resume`.
    let mut resumed: Option<Resuming> = None;
    // The client certificate the operator's login counted (its sessions end if revoked).
    let mut login_cert: Option<String> = None;
    // What the connection does once its greeting is over.
    let next = 'greeting: loop {
        while let Some(action) = machine.poll_action() {
            match action {
                Action::Send(frame) => {
                    if writer.send(&frame).await.is_err() {
                        return None;
                    }
                }
                Action::Reserve { account } => {
                    let target = account.as_deref().map_or(Target::Codes, Target::Account);
                    let throttle = throttle_of(shared, account.is_some());
                    let reserved = throttle.reserve(target, ip, clock::now()).await;
                    match reserved {
                        Ok(_) => {}
                        Err(ReserveError::Throttled(_)) => {
                            tracing::info!(%peer, login = account.is_some(), "attempt refused: throttled")
                        }
                        Err(ReserveError::Unavailable) => {
                            tracing::warn!(%peer, login = account.is_some(), "attempt refused: throttle unavailable")
                        }
                    }
                    machine.handle_event(clock::now(), Event::Reserved(reserved));
                }
                Action::Authenticate(login) => {
                    let result = authenticate(shared, &login, ip, cert).await.map(|(record, serial)| {
                        login_cert = serial;
                        record
                    });
                    if result.is_err() {
                        tracing::info!(%peer, "operator login refused");
                    }
                    machine.handle_event(clock::now(), Event::Authenticated(result));
                }
                Action::Settle(kind, ticket, settle) => {
                    let outcome = match settle {
                        Settle::Succeeded => Outcome::Succeeded,
                        Settle::Failed => Outcome::Failed,
                        Settle::Refund => Outcome::Refund,
                    };
                    let throttle = throttle_of(shared, kind == AttemptKind::Login);
                    throttle.settle(ticket, outcome, clock::now()).await;
                }
                Action::Audit(entry) => shared.audit.record(entry).await,
                Action::Authenticated => permit.authenticated(),
                Action::CheckAccount { operator } => {
                    let checked = check_code_issue(shared, &operator, ip).await;
                    machine.handle_event(clock::now(), Event::AccountChecked(checked));
                }
                Action::TakeCode(code) => {
                    // Marked before the take: a stop that comes meanwhile waits for the
                    // client to hear why its session ended.
                    mark.carry();
                    let result = shared.join(code, clock::now()).await.map(|s| {
                        taken = Some(s);
                    });
                    if let Err(r) = result {
                        mark.release();
                        let code = Refusal::from(r).code();
                        tracing::info!(%peer, error = tsunagu_proto::types::error_code_name(code), "join refused");
                    }
                    machine.handle_event(clock::now(), Event::CodeTaken(result));
                }
                Action::TakeSeat(resume) => {
                    // The node's admission rate is taken before any lookup, so a reconnect
                    // storm is let in at the pace the node can take; the rest retry.
                    if !shared.resume_admission.try_take(Instant::now()) {
                        tracing::debug!(%peer, "resume put off: the node's resume admission rate is spent");
                        crate::metrics::resume_busy();
                        machine.handle_event(clock::now(), Event::ResumeBusy);
                        continue;
                    }
                    // As for a join: a stop that comes meanwhile waits for the endpoint.
                    mark.carry();
                    let role = if resume.operator { Role::Operator } else { Role::Client };
                    let result = match shared.find_for_resume(&resume.session_id).await {
                        Ok(Resumable::Here(session)) => session
                            .take_seat(role, &resume.token, &resume.signature)
                            .map(|()| resumed = Some(Resuming::Here(session)))
                            .map_err(Some),
                        Ok(Resumable::Elsewhere { node, seats }) => {
                            // Checked here against the record (the token is spent where the
                            // session runs), so a forged resume costs its sender here too.
                            let mut seat = seats[usize::from(!resume.operator)].clone();
                            let checked = match seat.as_mut() {
                                Some(seat) => {
                                    seat.take(&resume.session_id, resume.operator, &resume.token, &resume.signature)
                                }
                                None => Err(ResumeRefusal::NotResumable),
                            };
                            checked
                                .map(|()| resumed = Some(Resuming::Elsewhere(*node, resume.clone())))
                                .map_err(Some)
                        }
                        Err(refused) => Err(refused),
                    };
                    if let Err(r) = &result {
                        mark.release();
                        tracing::info!(%peer, ?role, reason = r.map_or("unavailable", |r| r.name()), "resume refused");
                    }
                    machine.handle_event(clock::now(), Event::SeatTaken(result));
                }
                Action::Resume { operator } => match resumed.take() {
                    Some(Resuming::Here(session)) => {
                        let role = if operator { Role::Operator } else { Role::Client };
                        break 'greeting Next::Resume(session, role);
                    }
                    Some(Resuming::Elsewhere(node, resume)) => break 'greeting Next::ResumeElsewhere(node, resume),
                    None => return None,
                },
                Action::Issue {
                    record,
                    requested,
                    asked,
                    resume_key,
                } => {
                    tracing::info!(%peer, operator = %record.name, "operator logged in");
                    // Marked before the session opens, so a stop either finds the session
                    // in the registry or is seen by `open_session`; both tell the operator.
                    mark.carry();
                    break 'greeting Next::Operator {
                        record,
                        requested,
                        asked,
                        resume_key,
                        cert: login_cert.take(),
                    };
                }
                Action::RenewCertificate { operator, csr } => {
                    let answer = renew_certificate(shared, &operator, login_cert.as_deref(), &csr, ip).await;
                    let _ = writer.send(&answer).await;
                    return None;
                }
                Action::Join { host, resume_key } => match taken.take() {
                    Some(joined) => break 'greeting Next::Client(joined, host, resume_key),
                    None => return None,
                },
                Action::Close(refusal) => {
                    if let Some(refusal) = refusal {
                        tracing::debug!(%peer, ?refusal, "connection refused");
                        crate::metrics::refused(tsunagu_proto::types::error_code_name(refusal.code()));
                        let _ = writer.send(&refusal.frame()).await;
                    }
                    return None;
                }
            }
        }
        let deadline = machine.poll_timeout().map(tokio::time::Instant::from_std);
        if machine.wants_frame() {
            let read = match deadline {
                Some(d) => tokio::time::timeout_at(d, reader.read()).await,
                None => Ok(reader.read().await),
            };
            match read {
                Err(_) => machine.handle_timeout(clock::now()),
                Ok(Ok(Some(raw))) => machine.handle_frame(clock::now(), raw.frame),
                Ok(Ok(None)) => machine.handle_close(None),
                Ok(Err(TransportError::Frame(e))) => machine.handle_close(Some(e.to_string())),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "greeting failed");
                    machine.handle_close(None);
                }
            }
        } else if let Some(d) = deadline {
            tokio::time::sleep_until(d).await;
            machine.handle_timeout(clock::now());
        } else if !machine.is_done() {
            // Waiting for neither the peer, nor time, nor an answer: cannot happen, as every
            // action that asks for an answer was answered above.
            tracing::error!(%peer, "the greeting stalled; closing");
            return None;
        }
    };
    Some(next)
}

/// A resume whose seat was taken, between `TakeSeat` and `Resume`.
enum Resuming {
    /// The session runs here.
    Here(Arc<Session>),
    /// It runs on another node; the resume is carried there.
    Elsewhere(crate::grid::nodes::NodeInfo, pb::Resume),
}

/// A logged-in operator's request for a code.
struct Asking {
    record: crate::store::OperatorRecord,
    requested: PermissionSet,
    asked: PermissionSet,
    /// Its resume key (empty: it cannot resume).
    resume_key: Vec<u8>,
    /// The client certificate its login counted.
    cert: Option<String>,
}

/// A client that took a code, as the node it connected to saw it.
pub(crate) struct JoiningClient {
    pub addr: SocketAddr,
    /// The relay port it reached.
    pub relay_port: u16,
    /// Its host name, already made inert and short.
    pub host: String,
    /// Its resume key (empty: it cannot resume).
    pub resume_key: Vec<u8>,
}

/// Where a connection goes after its greeting.
enum Next {
    /// A logged-in operator asked for a code.
    Operator {
        record: crate::store::OperatorRecord,
        requested: PermissionSet,
        asked: PermissionSet,
        resume_key: Vec<u8>,
        cert: Option<String>,
    },
    /// A client took a code; its host name and resume key.
    Client(Joined, String, Vec<u8>),
    /// An endpoint took its side of a session back.
    Resume(Arc<Session>, Role),
    /// An endpoint resumes a session another node runs.
    ResumeElsewhere(crate::grid::nodes::NodeInfo, pb::Resume),
}

/// The throttle an attempt goes through: logins or session codes.
fn throttle_of(shared: &Shared, login: bool) -> &dyn Throttles {
    if login {
        &*shared.login_throttle
    } else {
        &*shared.join_throttle
    }
}

/// A peer's side of a session ([`run_peer`]) as the phase its connection runs next, in an
/// allocation of its own.
fn peer_phase<R, W>(
    shared: Arc<Shared>,
    session: Arc<Session>,
    hold: Hold,
    reader: FrameReader<R>,
    writer: FrameWriter<W>,
    queue: OutQueue,
) -> Phase
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(run_peer(shared, session, hold, reader, writer, queue))
}

/// An operator passed the greeting and asked for a code: issues it, records it, tells the
/// operator, and gets its side of the session ready.
async fn run_operator<R, W>(
    shared: Arc<Shared>,
    reader: FrameReader<R>,
    mut writer: FrameWriter<W>,
    peer: SocketAddr,
    port: u16,
    asking: Asking,
) -> Option<Phase>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let Asking {
        record,
        requested,
        asked,
        resume_key,
        cert,
    } = asking;
    let operator = record.name;
    let operator_q = peer_queue(&shared);
    let t = &shared.config.timeouts;
    let policy = Policy::new(requested, record.permissions, clock::now(), t.code_ttl, t.consent);
    let issued = shared
        .open_session(operator.clone(), peer, port, policy, operator_q.clone())
        .await;
    let (code, session) = match issued {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "could not draw a session code");
            let refusal = match e {
                IssueError::Unavailable(_) => Refusal::Unavailable,
                IssueError::Random(_) => Refusal::NoCode,
            };
            let _ = writer.send(&refusal.frame()).await;
            return None;
        }
    };
    shared
        .history
        .record(HistoryEvent::Issued {
            id: session.id.clone(),
            operator: operator.clone(),
            operator_addr: peer,
            relay_port: port,
            requested: asked,
            at_ms: now_ms(),
        })
        .await;
    if let Some(serial) = cert {
        // Revoked between the login and now: the watcher has already passed this serial by.
        let revoked = shared.client_certs.is_revoked(&serial);
        session.set_operator_cert(serial);
        if revoked {
            session.finish(EndReason::CertificateRevoked).await;
        }
    }
    tracing::info!(session = %session.id, %operator, %peer, "session code issued");
    let issued = Frame {
        body: Some(Body::CodeIssued(pb::CodeIssued {
            code: code.reveal(),
            expires_in_ms: t.code_ttl.as_millis() as u64,
            session_id: session.id.clone(),
        })),
    };
    if writer.send(&issued).await.is_err() {
        session.finish(EndReason::OperatorDisconnected).await;
        return None;
    }
    // Queued behind `CodeIssued`: the operator's writer sends it first thing.
    session.open_seat(Role::Operator, &resume_key).await;
    tokio::spawn(session.clone().run_timer());
    let hold = session.hold(Role::Operator);
    Some(peer_phase(shared, session, hold, reader, writer, operator_q))
}

/// A client took a code: attaches it to the session and gets its side ready. In a grid
/// the client may have landed on another node, which bridges its stream here.
async fn run_client<R, W>(
    shared: Arc<Shared>,
    session: Arc<Session>,
    reader: FrameReader<R>,
    mut writer: FrameWriter<W>,
    client: JoiningClient,
) -> Option<Phase>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let client_q = peer_queue(&shared);
    if !session
        .attach_client(client_q.clone(), &client.host, client.addr, client.relay_port)
        .await
    {
        let _ = writer.send(&Refusal::ExpiredCode.frame()).await;
        return None;
    }
    // Queued behind the consent request.
    if !session.open_seat(Role::Client, &client.resume_key).await {
        // The operator's seat may need the client's part of the record all the same.
        session.save().await;
    }
    let hold = session.hold(Role::Client);
    Some(peer_phase(shared, session, hold, reader, writer, client_q))
}

/// An endpoint whose seat a resume took back: takes its side of the session over a new
/// queue (the session tells it the state and gives it a new token) and gets it ready.
async fn run_resumed<R, W>(
    shared: Arc<Shared>,
    session: Arc<Session>,
    role: Role,
    reader: FrameReader<R>,
    mut writer: FrameWriter<W>,
    peer: SocketAddr,
) -> Option<Phase>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let queue = peer_queue(&shared);
    let Some(hold) = session.reattach(role, queue.clone(), peer).await else {
        let _ = writer
            .send(&Refusal::ResumeRefused(ResumeRefusal::UnknownSession).frame())
            .await;
        return None;
    };
    Some(peer_phase(shared, session, hold, reader, writer, queue))
}

/// A new outbound queue for one peer, as large as the relay's limits allow.
fn peer_queue(shared: &Shared) -> OutQueue {
    let limits = &shared.config.limits;
    OutQueue::new(
        limits.screen_queue_frames,
        limits.data_queue_bytes,
        limits.control_queue_frames,
    )
}

/// Suspension, IP rules and the session cap, checked against the current account when a
/// code is asked for.
async fn check_code_issue(
    shared: &Shared,
    operator: &str,
    ip: IpAddr,
) -> Result<crate::store::OperatorRecord, Refusal> {
    let record = shared
        .store
        .operator_for_code(operator)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "account lookup failed");
            Refusal::CheckFailed
        })?
        .ok_or(Refusal::AccountGone)?;
    if record.suspended {
        return Err(Refusal::Suspended);
    }
    if !crate::store::ip_allowed(&record.ip_rules, ip) {
        return Err(Refusal::WorkAddressRefused);
    }
    if record.max_sessions > 0 && shared.sessions().live_of(operator).len() >= record.max_sessions as usize {
        return Err(Refusal::SessionCap {
            max: record.max_sessions,
        });
    }
    Ok(record)
}

/// Checks an operator's password (through the bounded verifier pool) and second factor,
/// then suspension and IP rules. A refusal comes with whether the name matched an account.
///
/// An account that must present a client certificate is refused without one of its valid
/// certificates whatever the password, and the answer is the same whether the password was
/// right or not (the password is still checked, so the answer takes as long). Returns the
/// record and the serial of the certificate the login counted, if any.
async fn authenticate(
    shared: &Shared,
    login: &pb::Login,
    ip: IpAddr,
    cert: Option<&crate::certs::PeerCert>,
) -> Result<(crate::store::OperatorRecord, Option<String>), (Refusal, bool)> {
    if login.user.len() > tsunagu_proto::limits::MAX_USER_NAME
        || login.password.len() > tsunagu_proto::limits::MAX_PASSWORD
    {
        return Err((Refusal::WrongPassword, false));
    }
    let record = shared.store.operator(&login.user).await.map_err(|e| {
        tracing::error!(error = %e, "account lookup failed");
        (Refusal::CheckFailed, false)
    })?;
    let known = record.is_some();
    let hash = record
        .as_ref()
        .map(|r| r.password_hash.clone())
        .unwrap_or_else(|| shared.dummy_hash.clone());
    let ok = shared
        .verifier
        .verify(login.password.clone(), hash)
        .await
        .map_err(|_| (Refusal::Busy, known))?;
    let mut serial = None;
    if let Some(r) = &record {
        serial = shared
            .check_login_cert(crate::store::CertRole::Operator, &r.name, cert, r.cert_required)
            .await
            .map_err(|why| (Refusal::Certificate(why), true))?;
    }
    let Some(r) = record.filter(|_| ok) else {
        return Err((Refusal::WrongPassword, known));
    };
    if r.suspended {
        return Err((Refusal::Suspended, true));
    }
    if !crate::store::ip_allowed(&r.ip_rules, ip) {
        return Err((Refusal::LoginAddressRefused, true));
    }
    if r.totp_required {
        let Some(secret) = &r.totp_secret else {
            return Err((Refusal::TotpNotEnrolled, true));
        };
        if !shared
            .operator_totp
            .accept(&r.name, secret, &login.totp, crate::totp::now_secs())
        {
            return Err((Refusal::WrongTotp, true));
        }
    }
    Ok((r, serial))
}

/// Renews the client certificate an operator's login presented (`serial`): the answer to
/// send, `CertificateRenewed` or an error the operator's app shows.
async fn renew_certificate(
    shared: &Arc<Shared>,
    operator: &str,
    serial: Option<&str>,
    csr: &[u8],
    ip: IpAddr,
) -> Frame {
    let Some(serial) = serial else {
        return error_frame(
            ErrorCode::Certificate,
            "log in with the client certificate to renew it".to_string(),
        );
    };
    let ops = crate::admin::ops::Ops::of_relay(shared);
    let actor = crate::admin::ops::Actor {
        name: format!("operator:{operator}"),
        ip: ip.to_string(),
    };
    match ops.renew_cert(&actor, serial, csr).await {
        Ok((row, der, ca)) => {
            tracing::info!(%operator, old = %serial, new = %row.serial, "renewed a client certificate");
            Frame {
                body: Some(Body::CertificateRenewed(pb::CertificateRenewed {
                    certificate: der.into(),
                    ca: ca.into(),
                    serial: row.serial,
                    not_after_unix_ms: row.not_after,
                })),
            }
        }
        Err(e) => {
            tracing::info!(%operator, error = %e, "client certificate renewal refused");
            let code = match e {
                crate::admin::ops::OpError::Internal | crate::admin::ops::OpError::Busy => ErrorCode::Internal,
                _ => ErrorCode::Certificate,
            };
            error_frame(code, e.to_string())
        }
    }
}

/// Runs one peer of a session: its writer task and its reader loop, until the session
/// ends or the peer goes away. Keepalive and idleness are decided by the peer's
/// [`Liveness`] machine, which the reader loop sleeps on and the writer tells of each flush.
async fn run_peer<R, W>(
    shared: Arc<Shared>,
    session: Arc<Session>,
    mut hold: Hold,
    mut reader: FrameReader<R>,
    writer: FrameWriter<W>,
    queue: OutQueue,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let t = &shared.config.timeouts;
    let liveness = Arc::new(Mutex::new(Liveness::new(t.idle, t.keepalive, clock::now())));
    let writer_task = tokio::spawn(write_loop(queue.clone(), writer, liveness.clone(), t.write));
    let role = hold.role;
    loop {
        let deadline = lock(&liveness).poll_timeout();
        let due = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        let read = tokio::select! {
            biased;
            _ = session.ended() => break,
            // A resume gave this side to a newer connection: this one just closes.
            _ = hold.replaced() => break,
            r = reader.read() => r,
            _ = due => {
                let due = lock(&liveness).handle_timeout(clock::now());
                match due {
                    Some(Due::SendPing) => {
                        // A full control queue means the peer stopped reading; the writer's
                        // timeout deals with that, so the ping is simply not added.
                        let _ = queue.push_control(ping_frame());
                        continue;
                    }
                    Some(Due::IdleOut) => {
                        tracing::info!(session = %session.id, ?role, "peer idle too long");
                        Box::pin(session.finish(EndReason::IdleTimeout)).await;
                        break;
                    }
                    // Woken for a deadline that frames have since moved.
                    None => continue,
                }
            }
        };
        match read {
            Ok(Some(raw)) => {
                lock(&liveness).on_received(clock::now());
                // Boxed, like every step this loop takes now and then: the loop's future
                // lives as long as the session, and a step's state inline would weigh on
                // every idle connection; one short allocation per frame costs less.
                if !Box::pin(session.on_frame(role, raw)).await {
                    break;
                }
            }
            Ok(None) => {
                Box::pin(session.peer_gone(&hold)).await;
                break;
            }
            Err(TransportError::Frame(e)) => {
                tracing::info!(session = %session.id, ?role, error = %e, "malformed frame; closing");
                let _ = queue.push_control(encode(&Refusal::Malformed(e.to_string()).frame()).unwrap_or_default());
                Box::pin(session.finish(EndReason::ProtocolError)).await;
                break;
            }
            Err(e) => {
                tracing::debug!(session = %session.id, ?role, error = %e, "connection lost");
                Box::pin(session.peer_gone(&hold)).await;
                break;
            }
        }
    }
    queue.close();
    // The writer delivers what is queued (at least `Ended`) and closes TLS, under its own
    // write timeout.
    let _ = writer_task.await;
    Box::pin(linger(&mut reader, shared.stop_signal())).await;
}

/// How long a closing connection keeps reading what its peer still sends.
const LINGER: Duration = Duration::from_secs(2);

/// How long it does so once the relay is stopping. By then `Ended` and TLS's close are
/// flushed to the socket; what is left to guard is the moment the peer needs to read them
/// before a reset could destroy them, which on a peer that is reading at all is a round trip
/// and its reaction time: a quarter second covers both on loopback and ordinary WAN links,
/// while a peer that never hangs up no longer holds the relay's stop up for the full linger.
const STOPPING_LINGER: Duration = Duration::from_millis(250);

/// Lingering close: a socket closed with unread data is reset, and a reset can destroy the
/// `Ended` frame still on its way to a peer that was busy sending. Read and discard until
/// the peer closes its side too, for [`LINGER`], or [`STOPPING_LINGER`] once the relay is
/// stopping.
async fn linger<R: AsyncRead + Unpin>(reader: &mut FrameReader<R>, mut stop: Shutdown) {
    let drain = async { while let Ok(Some(_)) = reader.read().await {} };
    tokio::pin!(drain);
    tokio::select! {
        _ = &mut drain => {}
        _ = tokio::time::sleep(LINGER) => {}
        _ = stop.recv() => {
            let _ = tokio::time::timeout(STOPPING_LINGER, &mut drain).await;
        }
    }
}

/// The keepalive `Ping`.
fn ping_frame() -> Bytes {
    // A relay-built frame with a body is never empty and far below any limit.
    encode(&Frame {
        body: Some(Body::Ping(pb::Ping { nonce: 0 })),
    })
    .expect("ping is never empty")
}

/// Writes what the session queues for this peer, in batches, each under `write_timeout`,
/// telling `liveness` of every flush; closes the stream when the queue is closed and empty.
async fn write_loop<W>(
    queue: OutQueue,
    mut writer: FrameWriter<W>,
    liveness: Arc<Mutex<Liveness>>,
    write_timeout: Duration,
) where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut batch: Vec<Bytes> = Vec::new();
    while queue.pop_batch(&mut batch).await {
        let write_all = async {
            for frame in batch.drain(..) {
                writer.write_raw(&frame).await?;
            }
            writer.flush().await
        };
        match tokio::time::timeout(write_timeout, write_all).await {
            Ok(Ok(())) => lock(&liveness).on_sent(clock::now()),
            Ok(Err(_)) | Err(_) => {
                queue.close();
                return;
            }
        }
    }
    let _ = tokio::time::timeout(write_timeout, writer.shutdown()).await;
}

/// The liveness machine is shared by a connection's reader and writer; a poisoned lock
/// (a panic elsewhere) still holds a usable machine.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves the streams other nodes open for clients that landed there: runs each client's
/// side of its session on this node.
pub(crate) struct Joins {
    shared: Weak<Shared>,
}

impl Joins {
    pub(crate) fn new(shared: &Arc<Shared>) -> Self {
        Self {
            shared: Arc::downgrade(shared),
        }
    }
}

impl BridgeHandler for Joins {
    fn handle(&self, stream: IncomingStream) -> BoxFuture {
        let shared = self.shared.clone();
        Box::pin(async move {
            let Some(shared) = shared.upgrade() else { return };
            let IncomingStream {
                peer: from,
                header,
                send,
                recv,
                mark,
                ..
            } = stream;
            let max_frame = shared.config.limits.max_frame;
            let reader = FrameReader::new(recv, max_frame);
            let mut writer = FrameWriter::new(send, max_frame);
            let (session_id, client_addr, relay_port, host, resume_key) = match header {
                BridgeHeader::Join {
                    session_id,
                    client_addr,
                    relay_port,
                    host,
                    resume_key,
                } => (session_id, client_addr, relay_port, host, resume_key),
                BridgeHeader::Resume {
                    session_id,
                    operator,
                    token,
                    signature,
                    addr,
                } => {
                    let role = if operator { Role::Operator } else { Role::Client };
                    let taken = match shared.sessions().get(&session_id) {
                        Some(session) => session.take_seat(role, &token, &signature).map(|()| session),
                        // Being taken over here right now: the endpoint tries again shortly.
                        None if shared.is_taking_over(&session_id) => {
                            let _ = writer.send(&Refusal::Unavailable.frame()).await;
                            let _ = writer.shutdown().await;
                            return;
                        }
                        None => Err(ResumeRefusal::UnknownSession),
                    };
                    match taken {
                        Ok(session) => {
                            tracing::info!(session = %session_id, %from, peer = %addr, ?role, "bridged endpoint resumed");
                            mark.carry();
                            let _counted = crate::metrics::BridgeStream::open("in");
                            if let Some(phase) = run_resumed(shared, session, role, reader, writer, addr).await {
                                phase.await;
                            }
                        }
                        Err(refusal) => {
                            tracing::info!(session = %session_id, %from, reason = refusal.name(), "bridged resume refused");
                            let _ = writer.send(&Refusal::ResumeRefused(refusal).frame()).await;
                            let _ = writer.shutdown().await;
                        }
                    }
                    return;
                }
            };
            let Some(session) = shared.sessions().get(&session_id) else {
                // It ended between the take on the other node and now.
                let _ = writer.send(&Refusal::ExpiredCode.frame()).await;
                let _ = writer.shutdown().await;
                return;
            };
            tracing::info!(session = %session_id, %from, peer = %client_addr, "bridged client joined");
            // Shutdown lets this stream finish like any connection that carries a session.
            mark.carry();
            let _counted = crate::metrics::BridgeStream::open("in");
            let client = JoiningClient {
                addr: client_addr,
                relay_port,
                host,
                resume_key,
            };
            if let Some(phase) = run_client(shared, session, reader, writer, client).await {
                phase.await;
            }
        })
    }
}

#[cfg(test)]
mod future_sizes {
    //! Every idle session holds, per connection, the connection's task, its session phase
    //! and its writer task for as long as it lasts: their sizes are memory per idle
    //! session. These budgets catch a change that makes one of them carry another's state
    //! (an inline `await` of a large future, a phase kept alive past its end).
    use super::*;
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

    type R = tsunagu_proto::tls::TlsReader<OwnedReadHalf, tsunagu_proto::tls::Server>;
    type W = tsunagu_proto::tls::TlsWriter<OwnedWriteHalf, tsunagu_proto::tls::Server>;

    fn size4<A, B, C, D, F>(_: impl FnOnce(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }
    fn size6<A, B, C, D, E, G, F>(_: impl FnOnce(A, B, C, D, E, G) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn what_a_connection_holds_for_its_whole_session_stays_small() {
        // Measured in the test build (release builds lay futures out the same way).
        let connection = size6(handle_connection);
        let phase = size6(run_peer::<R, W>);
        let writer = size4(write_loop::<W>);
        eprintln!("connection task {connection} B, session phase {phase} B, writer task {writer} B");
        assert!(connection <= 512, "the connection's task holds {connection} bytes");
        assert!(phase <= 1536, "the session phase holds {phase} bytes");
        assert!(writer <= 640, "the writer task holds {writer} bytes");
        // Before phases were handed on instead of awaited, the connection's task alone held
        // the greeting's and the session's state: about 1.9 KiB, plus 2.7 KiB of phase.
    }
}
