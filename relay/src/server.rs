//! The relay server: binds the listeners, accepts TLS connections under a connection cap,
//! greets peers, logs operators in, pairs clients by code, and runs each connection's
//! reader and writer. Accept loops only accept; every wait on a peer has a timeout.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tsunagu_proto::codec::encode;
use tsunagu_proto::pb::{self, frame::Body, EndReason, Frame};
use tsunagu_proto::transport::{FrameReader, FrameWriter, TransportError};
use tsunagu_proto::PermissionSet;

use crate::accounts;
use crate::audit::{self, Audit};
use crate::clock;
use crate::config::Config;
use crate::conn::{Action, AttemptKind, Event, Greeting, Refusal, Settle, Timeouts};
use crate::connlimit::{ConnLimiter, ConnLimits, ConnPermit};
use crate::directory::Directory;
use crate::history::{self, HistoryEvent, HistorySink, LiveMap};
use crate::policy::Policy;
use crate::queue::OutQueue;
use crate::session::{Role, Session};
use crate::store::Store;
use crate::throttle::{Scope, Throttle};
use crate::time::now_ms;
use crate::tls::ServerCerts;

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("no listener could be started: {0}")]
    NoListener(String),
}

/// State shared by every task of one relay; reached through an `Arc`.
pub struct Shared {
    pub config: Config,
    pub directory: Directory,
    pub history: HistorySink,
    pub store: Store,
    pub sessions: DashMap<String, Arc<Session>>,
    /// The audit trail.
    pub audit: Audit,
    /// Operator TOTP codes already used.
    pub(crate) operator_totp: crate::totp::ReplayGuard,
    /// What the console shows about live sessions (fed by the history writer).
    pub live: LiveMap,
    /// The one bounded pool every argon2 computation of this relay goes through.
    pub verifier: crate::verifier::Verifier,
    join_throttle: Mutex<Throttle>,
    login_throttle: Mutex<Throttle>,
    /// Connection caps of the endpoint listeners (the console has its own).
    pub(crate) connections: ConnLimiter,
    dummy_hash: String,
    acceptor: TlsAcceptor,
}

/// A running relay. Dropping it does not stop it; call [`Relay::shutdown`].
pub struct Relay {
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    stop_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    history_task: JoinHandle<()>,
    certs: Arc<ServerCerts>,
    admin_addr: Option<SocketAddr>,
}

impl Relay {
    /// Validates the config, prepares the data dir, certificates and database, binds the
    /// listeners (a port that cannot be bound is a warning as long as one is up) and
    /// starts serving.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        config.validate()?;
        crate::keys::create_private_dir(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        let certs = ServerCerts::load(&config)?;
        let acceptor = TlsAcceptor::from(certs.server_config()?);
        let store = Store::connect(&config).await?;
        let audit = Audit::new(store.clone());
        audit.check_key().await?;
        audit.mark_keyed().await?;
        let live: LiveMap = Default::default();
        let (history, history_task) = history::start_writer(store.clone(), audit.clone(), live.clone());

        let mut listeners = Vec::new();
        let mut failures = Vec::new();
        for addr in &config.listen {
            match TcpListener::bind(addr).await {
                Ok(l) => listeners.push(l),
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "could not listen on this address");
                    failures.push(format!("{addr}: {e}"));
                }
            }
        }
        if listeners.is_empty() {
            return Err(StartError::NoListener(failures.join("; ")));
        }

        let now = Instant::now();
        let shared = Arc::new(Shared {
            directory: Directory::new(config.timeouts.code_ttl),
            history,
            store,
            sessions: DashMap::new(),
            audit,
            operator_totp: Default::default(),
            live,
            verifier: crate::verifier::Verifier::new(
                config.limits.concurrent_logins,
                config.limits.login_queue,
                config.timeouts.login_wait,
            ),
            join_throttle: Mutex::new(Throttle::new(config.throttle.clone(), now)),
            login_throttle: Mutex::new(Throttle::new(config.login_throttle.clone(), now)),
            connections: ConnLimiter::new(ConnLimits::endpoints(&config.limits), "relay"),
            dummy_hash: accounts::dummy_hash(&config.accounts),
            acceptor,
            config,
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut addrs = Vec::new();
        let mut tasks = Vec::new();
        for listener in listeners {
            let addr = listener
                .local_addr()
                .map_err(|e| StartError::NoListener(e.to_string()))?;
            addrs.push(addr);
            tasks.push(tokio::spawn(accept_loop(
                shared.clone(),
                listener,
                addr.port(),
                stop_rx.clone(),
            )));
        }
        let mut admin_addr = None;
        if let Some(addr) = shared.config.admin.listen.filter(|_| shared.config.admin.enabled) {
            match crate::admin::serve(shared.clone(), certs.clone(), addr, stop_rx.clone()).await {
                Ok((bound, task)) => {
                    admin_addr = Some(bound);
                    tasks.push(task);
                }
                // Like the endpoint ports: a console that cannot bind is a warning, the relay runs.
                Err(e) => tracing::warn!(%addr, error = %e, "could not start the admin console"),
            }
        }
        tasks.push(tokio::spawn(housekeeping(shared.clone(), certs.clone(), stop_rx)));
        Ok(Self {
            shared,
            addrs,
            stop_tx,
            tasks,
            history_task,
            certs,
            admin_addr,
        })
    }

    /// The addresses actually bound (useful with port 0).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The admin console's address, when it is up.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The shared state, for tests and embedding.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn server_certs(&self) -> &Arc<ServerCerts> {
        &self.certs
    }

    /// Sessions live right now.
    pub fn live_sessions(&self) -> usize {
        self.shared.sessions.len()
    }

    /// Stops accepting, ends every session with `relay_shutdown`, and writes the history,
    /// all within the configured shutdown timeout.
    pub async fn shutdown(self) {
        let _ = self.stop_tx.send(true);
        for t in &self.tasks {
            t.abort();
        }
        let sessions: Vec<Arc<Session>> = self.shared.sessions.iter().map(|e| e.value().clone()).collect();
        let deadline = self.shared.config.timeouts.shutdown;
        let end_all = async {
            for s in sessions {
                s.finish(EndReason::RelayShutdown).await;
            }
        };
        if tokio::time::timeout(deadline, end_all).await.is_err() {
            tracing::warn!("not every session ended before the shutdown deadline");
        }
        // Give writers a moment to deliver `Ended`.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if tokio::time::timeout(deadline, self.shared.history.flush())
            .await
            .is_err()
        {
            tracing::warn!("history was not fully written before the shutdown deadline");
        }
        self.history_task.abort();
        self.shared.audit.checkpoint_logged().await;
        let store = self.shared.store.clone();
        store.close().await;
    }
}

async fn housekeeping(shared: Arc<Shared>, certs: Arc<ServerCerts>, mut stop: watch::Receiver<bool>) {
    // Tombstones and throttle entries are swept every 30 s; certificates checked hourly.
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    let mut cert_check = tokio::time::interval(Duration::from_secs(3600));
    let mut purge = tokio::time::interval(shared.config.database.purge_interval);
    let mut account_poll = tokio::time::interval(shared.config.database.account_poll);
    // The first tick is immediate: a checkpoint at start, then one per interval.
    let mut checkpoint = tokio::time::interval(shared.config.secrets.checkpoint_interval);
    loop {
        tokio::select! {
            _ = checkpoint.tick() => shared.audit.checkpoint_logged().await,
            _ = purge.tick() => purge_history(&shared).await,
            _ = tick.tick() => {
                let now = Instant::now();
                shared.directory.sweep(now);
                lock(&shared.join_throttle).prune(now);
                lock(&shared.login_throttle).prune(now);
            }
            _ = account_poll.tick() => enforce_account_changes(&shared).await,
            _ = cert_check.tick() => match certs.renew_if_due() {
                Ok(true) => tracing::info!("renewed the server certificate"),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "could not renew the server certificate"),
            },
            _ = crate::server::until_true(&mut stop) => return,
        }
    }
}

/// The retention job: ended sessions older than `database.retention` go, with their files.
pub async fn purge_history(shared: &Shared) {
    let cutoff = now_ms() - shared.config.database.retention.as_millis() as i64;
    match shared.store.purge_history(cutoff).await {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(sessions = n, "purged history past retention");
            shared
                .audit
                .record(audit::Entry {
                    actor: "relay".into(),
                    action: "history_purged",
                    detail: format!("sessions={n}"),
                    ..Default::default()
                })
                .await;
        }
        Err(e) => tracing::error!(error = %e, "history purge failed"),
    }
}

/// Applies to live sessions what another process (the CLI, or another relay node sharing
/// the database) changed in their operators' accounts: suspension, deletion, permissions and
/// IP rules; the console and API apply their own changes at once. Runs every
/// `database.account_poll`.
async fn enforce_account_changes(shared: &Shared) {
    let mut operators: Vec<String> = shared.sessions.iter().map(|e| e.value().operator.clone()).collect();
    operators.sort();
    operators.dedup();
    for name in operators {
        match shared.store.operator(&name).await {
            Ok(record) => {
                enforce_account(shared, &name, record.as_ref()).await;
            }
            Err(e) => tracing::error!(error = %e, "account check failed"),
        }
    }
}

/// What [`enforce_account`] did to an operator's live sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Enforced {
    /// Sessions ended (account gone or suspended, or an address the IP rules now refuse).
    pub ended: usize,
    /// Sessions whose request or grants were narrowed to the permissions now allowed.
    pub narrowed: usize,
}

/// Brings the live sessions of `operator` (codes issued, consents pending, sessions
/// running) in line with the account as stored now, `None` meaning deleted: every session
/// ends if the account is gone or suspended; a session whose operator connection comes from
/// an address the IP rules no longer allow ends; the others are clipped to the permissions
/// the admin allows. Ended sessions get `admin_ended`.
pub async fn enforce_account(
    shared: &Shared,
    operator: &str,
    record: Option<&crate::store::OperatorRecord>,
) -> Enforced {
    let mut done = Enforced::default();
    let record = match record {
        Some(r) if !r.suspended => r,
        _ => {
            done.ended = end_sessions_of(shared, operator).await;
            if done.ended > 0 {
                tracing::info!(%operator, sessions = done.ended, "ended the sessions of a suspended or deleted operator");
            }
            return done;
        }
    };
    for session in live_sessions_of(shared, operator) {
        if !crate::store::ip_allowed(&record.ip_rules, session.operator_addr.ip()) {
            tracing::info!(session = %session.id, %operator, peer = %session.operator_addr, "the operator's IP rules no longer allow this session's address; ending it");
            session.finish(EndReason::AdminEnded).await;
            done.ended += 1;
        } else if session.limit(record.permissions).await {
            done.narrowed += 1;
        }
    }
    done
}

/// Live sessions of `operator` that have not ended.
pub fn live_sessions_of(shared: &Shared, operator: &str) -> Vec<Arc<Session>> {
    shared
        .sessions
        .iter()
        .filter(|e| e.value().operator == operator && !e.value().is_ended())
        .map(|e| e.value().clone())
        .collect()
}

/// Ends every live session of `operator` at once (suspension, deletion); returns how many.
pub async fn end_sessions_of(shared: &Shared, operator: &str) -> usize {
    let sessions = live_sessions_of(shared, operator);
    for s in &sessions {
        s.finish(EndReason::AdminEnded).await;
    }
    sessions.len()
}

/// Resolves once the watched flag is true (or its sender is gone).
pub(crate) async fn until_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await.map(|_| ());
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, port: u16, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = crate::server::until_true(&mut stop) => return,
        };
        match accepted {
            Ok((tcp, peer)) => {
                // The slot is taken before any work (TLS) is done; refusals are logged as
                // counts by the limiter.
                let Ok(permit) = shared.connections.try_admit(peer.ip(), clock::now()) else {
                    drop(tcp);
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(handle_connection(shared, tcp, peer, port, permit));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Everything one connection goes through, from TLS handshake to the end of its session;
/// `permit` holds its connection slot until then.
async fn handle_connection(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, port: u16, permit: ConnPermit) {
    let _ = tcp.set_nodelay(true);
    serve_tls(shared, tcp, peer, port, permit).await;
}

/// The TLS handshake, under `timeouts.handshake` by tokio's clock, then the connection.
async fn serve_tls<S>(shared: Arc<Shared>, io: S, peer: SocketAddr, port: u16, permit: ConnPermit)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handshake = shared.config.timeouts.handshake;
    let tls = match tokio::time::timeout(handshake, shared.acceptor.accept(io)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    serve_connection(shared, tls, peer, port, permit).await;
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
    serve_tls(shared, io, peer, port, permit).await;
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
    serve_connection(shared, io, peer, port, permit).await;
    true
}

/// Runs one connection over `io` (TLS in the relay; any byte stream in tests): drives its
/// greeting machine ([`Greeting`]), carrying out what it asks for, then runs its side of
/// the session. Every wait on the peer is bounded by the machine's deadline, measured by
/// tokio's clock (see [`crate::clock`]).
async fn serve_connection<S>(shared: Arc<Shared>, io: S, peer: SocketAddr, port: u16, mut permit: ConnPermit)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let t = &shared.config.timeouts;
    let (r, w) = tokio::io::split(io);
    let max_frame = shared.config.limits.max_frame;
    let mut reader = FrameReader::new(r, max_frame);
    let mut writer = FrameWriter::new(w, max_frame);
    let ip = peer.ip();
    let timeouts = Timeouts {
        greeting: t.greeting,
        idle: t.idle,
    };
    let mut machine = Greeting::new(ip, timeouts, clock::now());
    // The session a client's code led to, between `TakeCode` and `Join`.
    let mut taken: Option<Arc<Session>> = None;
    loop {
        while let Some(action) = machine.poll_action() {
            match action {
                Action::Send(frame) => {
                    if writer.send(&frame).await.is_err() {
                        return;
                    }
                }
                Action::Reserve { account } => {
                    let reserved = {
                        let mut t = lock(throttle_of(&shared, account.is_some()));
                        let scope = account.as_deref().map_or(Scope::CODES, |name| t.account(name));
                        t.reserve(scope, ip, clock::now())
                    };
                    if reserved.is_err() {
                        tracing::info!(%peer, login = account.is_some(), "attempt refused: throttled");
                    }
                    machine.handle_event(clock::now(), Event::Reserved(reserved));
                }
                Action::Authenticate(login) => {
                    let result = authenticate(&shared, &login, ip).await;
                    if result.is_err() {
                        tracing::info!(%peer, "operator login refused");
                    }
                    machine.handle_event(clock::now(), Event::Authenticated(result));
                }
                Action::Settle(kind, ticket, outcome) => {
                    let mut t = lock(throttle_of(&shared, kind == AttemptKind::Login));
                    let now = clock::now();
                    match outcome {
                        Settle::Succeeded => t.succeeded(ticket, now),
                        Settle::Failed => t.failed(ticket, now),
                        Settle::Refund => t.refund(ticket, now),
                    }
                }
                Action::Audit(entry) => shared.audit.record(entry).await,
                Action::Authenticated => permit.authenticated(),
                Action::CheckAccount { operator } => {
                    let checked = check_code_issue(&shared, &operator, ip).await;
                    machine.handle_event(clock::now(), Event::AccountChecked(checked));
                }
                Action::TakeCode(code) => {
                    let result = shared.directory.take(code, clock::now()).map(|s| {
                        taken = Some(s);
                    });
                    if let Err(r) = result {
                        let code = Refusal::from(r).code();
                        tracing::info!(%peer, error = tsunagu_proto::types::error_code_name(code), "join refused");
                    }
                    machine.handle_event(clock::now(), Event::CodeTaken(result));
                }
                Action::Issue {
                    record,
                    requested,
                    asked,
                } => {
                    tracing::info!(%peer, operator = %record.name, "operator logged in");
                    run_operator(shared, reader, writer, peer, port, record, requested, asked).await;
                    return;
                }
                Action::Join { host } => {
                    let Some(session) = taken.take() else { return };
                    run_client(shared, session, reader, writer, peer, port, host).await;
                    return;
                }
                Action::Close(refusal) => {
                    if let Some(refusal) = refusal {
                        tracing::debug!(%peer, ?refusal, "connection refused");
                        let _ = writer.send(&refusal.frame()).await;
                    }
                    return;
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
            return;
        }
    }
}

/// The throttle an attempt goes through: logins or session codes.
fn throttle_of(shared: &Shared, login: bool) -> &Mutex<Throttle> {
    if login {
        &shared.login_throttle
    } else {
        &shared.join_throttle
    }
}

/// An operator passed the greeting and asked for a code: issues it, records it, tells the
/// operator and runs its side of the session.
#[allow(clippy::too_many_arguments)]
async fn run_operator<R, W>(
    shared: Arc<Shared>,
    reader: FrameReader<R>,
    mut writer: FrameWriter<W>,
    peer: SocketAddr,
    port: u16,
    record: crate::store::OperatorRecord,
    requested: PermissionSet,
    asked: PermissionSet,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let operator = record.name;
    let limits = &shared.config.limits;
    let operator_q = OutQueue::new(
        limits.screen_queue_frames,
        limits.data_queue_bytes,
        limits.control_queue_frames,
    );
    let t = &shared.config.timeouts;
    let policy = Policy::new(requested, record.permissions, clock::now(), t.code_ttl, t.consent);
    let issued = shared
        .directory
        .issue(|code| Session::new(shared.clone(), operator.clone(), peer, code, policy, operator_q.clone()));
    let (code, session) = match issued {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "could not draw a session code");
            let _ = writer.send(&Refusal::NoCode.frame()).await;
            return;
        }
    };
    shared.sessions.insert(session.id.clone(), session.clone());
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
        return;
    }
    tokio::spawn(session.clone().run_timer());
    run_peer(shared, session, Role::Operator, reader, writer, operator_q).await;
}

/// A client took a code: attaches it to the session and runs its side.
async fn run_client<R, W>(
    shared: Arc<Shared>,
    session: Arc<Session>,
    reader: FrameReader<R>,
    mut writer: FrameWriter<W>,
    peer: SocketAddr,
    port: u16,
    host: String,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let limits = &shared.config.limits;
    let client_q = OutQueue::new(
        limits.screen_queue_frames,
        limits.data_queue_bytes,
        limits.control_queue_frames,
    );
    if !session.attach_client(client_q.clone(), &host, peer, port).await {
        let _ = writer.send(&Refusal::ExpiredCode.frame()).await;
        return;
    }
    run_peer(shared, session, Role::Client, reader, writer, client_q).await;
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
        .operator(operator)
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
    if record.max_sessions > 0 && live_sessions_of(shared, operator).len() >= record.max_sessions as usize {
        return Err(Refusal::SessionCap {
            max: record.max_sessions,
        });
    }
    Ok(record)
}

/// Checks an operator's password (through the bounded verifier pool) and second factor,
/// then suspension and IP rules. A refusal comes with whether the name matched an account.
async fn authenticate(
    shared: &Shared,
    login: &pb::Login,
    ip: IpAddr,
) -> Result<crate::store::OperatorRecord, (Refusal, bool)> {
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
    Ok(r)
}

/// Runs one peer of a session: its writer task and its reader loop, until the session
/// ends or the peer goes away.
async fn run_peer<R, W>(
    shared: Arc<Shared>,
    session: Arc<Session>,
    role: Role,
    mut reader: FrameReader<R>,
    writer: FrameWriter<W>,
    queue: OutQueue,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let t = shared.config.timeouts.clone();
    let writer_task = tokio::spawn(write_loop(queue.clone(), writer, t.keepalive, t.write));
    let mut ended = session.ended();
    let gone = match role {
        Role::Operator => EndReason::OperatorDisconnected,
        Role::Client => EndReason::ClientDisconnected,
    };
    loop {
        let read = tokio::select! {
            biased;
            _ = crate::server::until_true(&mut ended) => break,
            r = reader.read_timeout(t.idle) => r,
        };
        match read {
            Ok(Some(raw)) => {
                if !session.on_frame(role, raw).await {
                    break;
                }
            }
            Ok(None) => {
                session.peer_gone(gone).await;
                break;
            }
            Err(TransportError::Timeout(_)) => {
                tracing::info!(session = %session.id, ?role, "peer idle too long");
                session.finish(EndReason::IdleTimeout).await;
                break;
            }
            Err(TransportError::Frame(e)) => {
                tracing::info!(session = %session.id, ?role, error = %e, "malformed frame; closing");
                let _ = queue.push_control(encode(&Refusal::Malformed(e.to_string()).frame()).unwrap_or_default());
                session.finish(EndReason::ProtocolError).await;
                break;
            }
            Err(e) => {
                tracing::debug!(session = %session.id, ?role, error = %e, "connection lost");
                session.peer_gone(gone).await;
                break;
            }
        }
    }
    queue.close();
    // The writer delivers what is queued (at least `Ended`) and closes TLS, under its own
    // write timeout.
    let _ = writer_task.await;
    // Lingering close: a socket closed with unread data is reset, and a reset can destroy the
    // `Ended` frame still on its way to a peer that was busy sending. Read and discard for a
    // moment, until the peer closes its side too.
    let linger = async { while let Ok(Some(_)) = reader.read().await {} };
    let _ = tokio::time::timeout(LINGER, linger).await;
}

/// How long a closing connection keeps reading what its peer still sends.
const LINGER: Duration = Duration::from_secs(2);

async fn write_loop<W>(queue: OutQueue, mut writer: FrameWriter<W>, keepalive: Duration, write_timeout: Duration)
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut batch: Vec<Bytes> = Vec::new();
    let ping = encode(&Frame {
        body: Some(Body::Ping(pb::Ping { nonce: 0 })),
    })
    .expect("ping is never empty");
    loop {
        match tokio::time::timeout(keepalive, queue.pop_batch(&mut batch)).await {
            Err(_) => batch.push(ping.clone()),
            Ok(false) => break,
            Ok(true) => {}
        }
        let write_all = async {
            for frame in batch.drain(..) {
                writer.write_raw(&frame).await?;
            }
            writer.flush().await
        };
        match tokio::time::timeout(write_timeout, write_all).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => {
                queue.close();
                return;
            }
        }
    }
    let _ = tokio::time::timeout(write_timeout, writer.shutdown()).await;
}
