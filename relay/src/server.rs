//! The relay server: binds the listeners, accepts TLS connections under a connection cap,
//! greets peers, logs operators in, pairs clients by code, and runs each connection's
//! reader and writer. Accept loops only accept; every wait on a peer has a timeout. The
//! state all of this shares lives in [`crate::state`]; stopping, in [`crate::shutdown`].

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tsunagu_proto::codec::encode;
use tsunagu_proto::pb::{self, frame::Body, EndReason, ErrorCode, Frame};
use tsunagu_proto::transport::{error_frame, hello, FrameReader, FrameWriter, TransportError};
use tsunagu_proto::{PermissionSet, SessionCode};

use crate::audit::{self, Audit};
use crate::config::Config;
use crate::connlimit::ConnPermit;
use crate::directory::{JoinRefusal, MemoryDirectory};
use crate::history::{self, HistoryEvent, LiveMap};
use crate::policy::Policy;
use crate::queue::OutQueue;
use crate::session::{Role, Session};
use crate::shutdown::{ConnectionTasks, Shutdown, Stopper};
use crate::state::Shared;
use crate::store::Store;
use crate::throttle::{Scope, Throttle, Throttled, Ticket};
use crate::time::now_ms;
use crate::tls::ServerCerts;

type Reader = FrameReader<ReadHalf<TlsStream<TcpStream>>>;
type Writer = FrameWriter<WriteHalf<TlsStream<TcpStream>>>;

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

/// A running relay. Dropping it does not stop it; call [`Relay::shutdown`].
pub struct Relay {
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    /// The stop signal, and the connection tasks shutdown waits for.
    stopper: Stopper,
    /// Accept loops, the console's and housekeeping: each returns at the stop signal.
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

        let stopper = Stopper::new();
        let directory = Arc::new(MemoryDirectory::new(config.timeouts.code_ttl));
        let shared = Arc::new(Shared::new(
            config,
            directory,
            store,
            audit,
            history,
            live,
            acceptor,
            stopper.listener(),
        ));
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
                stopper.tracker(),
                stopper.listener(),
            )));
        }
        let mut admin_addr = None;
        if let Some(addr) = shared.config.admin.listen.filter(|_| shared.config.admin.enabled) {
            match crate::admin::serve(
                shared.clone(),
                certs.clone(),
                addr,
                stopper.listener(),
                stopper.tracker(),
            )
            .await
            {
                Ok((bound, task)) => {
                    admin_addr = Some(bound);
                    tasks.push(task);
                }
                // Like the endpoint ports: a console that cannot bind is a warning, the relay runs.
                Err(e) => tracing::warn!(%addr, error = %e, "could not start the admin console"),
            }
        }
        tasks.push(tokio::spawn(housekeeping(
            shared.clone(),
            certs.clone(),
            stopper.listener(),
        )));
        Ok(Self {
            shared,
            addrs,
            stopper,
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
        self.shared.sessions().len()
    }

    /// Stops accepting, ends every session with `relay_shutdown` and waits for the
    /// connection tasks to deliver `Ended` and close TLS, all within the configured shutdown
    /// timeout; then writes the history, within it again. Connections that carry no session
    /// are closed at once.
    pub async fn shutdown(self) {
        let Self {
            shared,
            stopper,
            tasks,
            history_task,
            ..
        } = self;
        let deadline = shared.config.timeouts.shutdown;
        // Stopping, ending sessions and closing connections share one deadline; writing
        // the history gets its own.
        let until = tokio::time::Instant::now() + deadline;
        stopper.signal();
        // The accept loops, the console's and housekeeping return at the signal; the accept
        // loops take their connection trackers with them.
        let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
        let stopped = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout_at(until, stopped).await.is_err() {
            tracing::warn!("a listener or housekeeping did not stop before the shutdown deadline");
            aborts.iter().for_each(|t| t.abort());
        }
        // A session opened after the signal ends by itself (see `Shared::open_session`).
        let end_all = shared.sessions().end_all(EndReason::RelayShutdown);
        if tokio::time::timeout_at(until, end_all).await.is_err() {
            tracing::warn!("not every session ended before the shutdown deadline");
        }
        if !stopper
            .drain(until.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            tracing::warn!("not every connection closed before the shutdown deadline");
        }
        if tokio::time::timeout(deadline, shared.history.flush()).await.is_err() {
            tracing::warn!("history was not fully written before the shutdown deadline");
        }
        history_task.abort();
        shared.audit.checkpoint_logged().await;
        let store = shared.store.clone();
        store.close().await;
    }
}

async fn housekeeping(shared: Arc<Shared>, certs: Arc<ServerCerts>, mut stop: Shutdown) {
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
                shared.directory().sweep(now).await;
                lock(&shared.join_throttle).prune(now);
                lock(&shared.login_throttle).prune(now);
            }
            _ = account_poll.tick() => enforce_account_changes(&shared).await,
            _ = cert_check.tick() => match certs.renew_if_due() {
                Ok(true) => tracing::info!("renewed the server certificate"),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "could not renew the server certificate"),
            },
            _ = stop.recv() => return,
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
    for name in shared.sessions().operators() {
        match shared.store.operator(&name).await {
            Ok(record) => {
                shared.sessions().enforce_account(&name, record.as_ref()).await;
            }
            Err(e) => tracing::error!(error = %e, "account check failed"),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Accepts connections on one listener until the stop signal; every connection runs as a
/// task shutdown waits for.
async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    port: u16,
    connections: ConnectionTasks,
    mut stop: Shutdown,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.recv() => return,
        };
        match accepted {
            Ok((tcp, peer)) => {
                // The slot is taken before any work (TLS) is done; refusals are logged as
                // counts by the limiter.
                let Ok(permit) = shared.connections.try_admit(peer.ip(), Instant::now()) else {
                    drop(tcp);
                    continue;
                };
                let shared = shared.clone();
                connections.spawn(handle_connection(shared, tcp, peer, port, permit));
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
    let t = &shared.config.timeouts;
    let tls = match tokio::time::timeout(t.handshake, shared.acceptor.accept(tcp)).await {
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
    let (r, w) = tokio::io::split(tls);
    let max_frame = shared.config.limits.max_frame;
    let mut reader = FrameReader::new(r, max_frame);
    let mut writer = FrameWriter::new(w, max_frame);

    match greet(&mut reader, &mut writer, t.greeting).await {
        Ok(()) => {}
        Err(e) => {
            tracing::debug!(%peer, error = %e, "greeting failed");
            return;
        }
    }
    let first = match reader.read_timeout(t.greeting).await {
        Ok(Some(raw)) => raw.frame.body,
        Ok(None) => return,
        Err(e) => {
            refuse(&mut writer, &e).await;
            return;
        }
    };
    match first {
        Some(Body::Login(login)) => operator_connection(shared, reader, writer, peer, port, login, permit).await,
        Some(Body::Join(join)) => client_connection(shared, reader, writer, peer, port, join, permit).await,
        _ => {
            let _ = writer
                .send(&error_frame(ErrorCode::Protocol, "expected Login or Join"))
                .await;
        }
    }
}

async fn greet(reader: &mut Reader, writer: &mut Writer, limit: Duration) -> Result<(), TransportError> {
    match reader.read_timeout(limit).await?.and_then(|raw| raw.frame.body) {
        Some(Body::Hello(h)) if h.version == tsunagu_proto::PROTOCOL_VERSION => {
            writer
                .send(&hello(concat!("tsunagu-relay/", env!("CARGO_PKG_VERSION"))))
                .await
        }
        Some(Body::Hello(h)) => {
            let message = format!(
                "this relay speaks protocol version {}, the program connecting speaks {}; update the older side",
                tsunagu_proto::PROTOCOL_VERSION,
                h.version
            );
            let _ = writer.send(&error_frame(ErrorCode::VersionMismatch, message)).await;
            Err(TransportError::VersionMismatch {
                ours: tsunagu_proto::PROTOCOL_VERSION,
                theirs: h.version,
            })
        }
        _ => {
            let _ = writer
                .send(&error_frame(ErrorCode::Protocol, "the first message must be Hello"))
                .await;
            Err(TransportError::Protocol("no Hello".into()))
        }
    }
}

/// Tells a peer why its connection closes, when a frame can still be sent.
async fn refuse(writer: &mut Writer, e: &TransportError) {
    let (code, msg) = match e {
        TransportError::Frame(f) => (ErrorCode::Protocol, f.to_string()),
        TransportError::Timeout(_) => (ErrorCode::Timeout, e.to_string()),
        _ => return,
    };
    let _ = writer.send(&error_frame(code, msg)).await;
}

/// Reserves one attempt (see `throttle`) before anything is checked: for `account`'s
/// login, or for a session code when `None`. Waits out the slow-down the reservation asks
/// for; a throttled peer is told when to try again, and `None` comes back.
async fn reserve_attempt(
    throttle: &Mutex<Throttle>,
    account: Option<&str>,
    peer: SocketAddr,
    writer: &mut Writer,
) -> Option<Ticket> {
    let reserved = {
        let mut t = lock(throttle);
        let scope = account.map_or(Scope::CODES, |name| t.account(name));
        t.reserve(scope, peer.ip(), Instant::now())
    };
    match reserved {
        Ok(ticket) => {
            if !ticket.delay.is_zero() {
                tokio::time::sleep(ticket.delay).await;
            }
            Some(ticket)
        }
        Err(Throttled { retry_after }) => {
            tracing::info!(%peer, login = account.is_some(), "attempt refused: throttled");
            let message = format!(
                "too many failed attempts; try again in {} s",
                retry_after.as_secs().max(1)
            );
            let _ = writer.send(&error_frame(ErrorCode::Throttled, message)).await;
            None
        }
    }
}

async fn operator_connection(
    shared: Arc<Shared>,
    mut reader: Reader,
    mut writer: Writer,
    peer: SocketAddr,
    port: u16,
    login: pb::Login,
    mut permit: ConnPermit,
) {
    let ip = peer.ip();
    // The attempt takes its token before the password or TOTP code is checked, so a burst
    // of parallel logins gets no more real checks than the budget holds.
    let Some(ticket) = reserve_attempt(&shared.login_throttle, Some(&login.user), peer, &mut writer).await else {
        return;
    };
    let result = authenticate(&shared, &login, ip).await;
    {
        let mut throttle = lock(&shared.login_throttle);
        match &result {
            Err(e) if e.code == ErrorCode::AuthFailed => throttle.failed(ticket, Instant::now()),
            // A right password (even for a suspended account) and a check that could not
            // run cost the source nothing.
            Ok(_) | Err(_) => throttle.refund(ticket, Instant::now()),
        }
    }
    let record = match result {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(%peer, "operator login refused");
            // A name that matches no account may be a password typed into the wrong field:
            // it is never written down.
            let (actor, target) = if e.account_known {
                (format!("operator:{}", login.user), login.user.clone())
            } else {
                ("operator:(unknown account)".to_string(), String::new())
            };
            shared
                .audit
                .record(audit::Entry {
                    actor,
                    action: "operator_login_failed",
                    target,
                    ip: ip.to_string(),
                    detail: format!("error={}", tsunagu_proto::types::error_code_name(e.code)),
                })
                .await;
            let _ = writer.send(&error_frame(e.code, e.message)).await;
            return;
        }
    };
    // Logged in: the connection leaves the unauthenticated pool.
    permit.authenticated();
    let operator = record.name.clone();
    tracing::info!(%peer, %operator, "operator logged in");
    shared
        .audit
        .record(audit::Entry {
            actor: format!("operator:{operator}"),
            action: "operator_login",
            target: operator.clone(),
            ip: ip.to_string(),
            ..Default::default()
        })
        .await;
    let ok = Frame {
        body: Some(Body::LoginOk(pb::LoginOk {
            operator: operator.clone(),
            allowed: record.permissions.to_wire(),
        })),
    };
    if writer.send(&ok).await.is_err() {
        return;
    }

    // The operator asks for a code next.
    let requested = match reader.read_timeout(shared.config.timeouts.idle).await {
        Ok(Some(raw)) => match raw.frame.body {
            Some(Body::RequestCode(rc)) => {
                let p = PermissionSet::from_wire(&rc.permissions);
                if p.is_empty() {
                    PermissionSet::ALL
                } else {
                    p
                }
            }
            _ => {
                let _ = writer
                    .send(&error_frame(ErrorCode::Protocol, "expected RequestCode"))
                    .await;
                return;
            }
        },
        Ok(None) => return,
        Err(e) => {
            refuse(&mut writer, &e).await;
            return;
        }
    };
    // The admin may have changed the account since login: check it again at code issue.
    let record = match check_code_issue(&shared, &operator, ip).await {
        Ok(r) => r,
        Err((code, msg)) => {
            shared
                .audit
                .record(audit::Entry {
                    actor: format!("operator:{operator}"),
                    action: "code_refused",
                    target: operator.clone(),
                    ip: ip.to_string(),
                    detail: msg.clone(),
                })
                .await;
            let _ = writer.send(&error_frame(code, msg)).await;
            return;
        }
    };
    let asked = requested.intersect(record.permissions);
    if asked.is_empty() {
        let msg = "the admin allows none of the permissions asked for";
        shared
            .audit
            .record(audit::Entry {
                actor: format!("operator:{operator}"),
                action: "code_refused",
                target: operator.clone(),
                ip: ip.to_string(),
                detail: msg.into(),
            })
            .await;
        let _ = writer.send(&error_frame(ErrorCode::Forbidden, msg)).await;
        return;
    }

    let limits = &shared.config.limits;
    let operator_q = OutQueue::new(
        limits.screen_queue_frames,
        limits.data_queue_bytes,
        limits.control_queue_frames,
    );
    let t = &shared.config.timeouts;
    let policy = Policy::new(requested, record.permissions, Instant::now(), t.code_ttl, t.consent);
    let issued = shared
        .open_session(operator.clone(), peer, policy, operator_q.clone())
        .await;
    let (code, session) = match issued {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "could not draw a session code");
            let _ = writer
                .send(&error_frame(ErrorCode::Internal, "the relay could not create a code"))
                .await;
            return;
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

/// Suspension, IP rules and the session cap, checked against the current account when a
/// code is asked for.
async fn check_code_issue(
    shared: &Shared,
    operator: &str,
    ip: IpAddr,
) -> Result<crate::store::OperatorRecord, (ErrorCode, String)> {
    let record = shared
        .store
        .operator(operator)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "account lookup failed");
            (ErrorCode::Internal, "the relay could not check the account".to_string())
        })?
        .ok_or_else(|| {
            (
                ErrorCode::Forbidden,
                "this operator account no longer exists".to_string(),
            )
        })?;
    if record.suspended {
        return Err((ErrorCode::Forbidden, "this operator account is suspended".to_string()));
    }
    if !crate::store::ip_allowed(&record.ip_rules, ip) {
        return Err((
            ErrorCode::Forbidden,
            "this operator may not work from this address".to_string(),
        ));
    }
    if record.max_sessions > 0 && shared.sessions().live_of(operator).len() >= record.max_sessions as usize {
        return Err((
            ErrorCode::Forbidden,
            format!(
                "the admin allows this operator at most {} session(s) at once",
                record.max_sessions
            ),
        ));
    }
    Ok(record)
}

/// Why a login was refused, and whether the name matched an account (which decides what
/// the audit trail may record).
struct LoginError {
    code: ErrorCode,
    message: String,
    account_known: bool,
}

impl LoginError {
    fn new(code: ErrorCode, message: &str, account_known: bool) -> Self {
        Self {
            code,
            message: message.to_string(),
            account_known,
        }
    }
}

/// Checks an operator's password (through the bounded verifier pool) and second factor,
/// then suspension and IP rules.
async fn authenticate(
    shared: &Shared,
    login: &pb::Login,
    ip: IpAddr,
) -> Result<crate::store::OperatorRecord, LoginError> {
    let failed = |known| LoginError::new(ErrorCode::AuthFailed, "wrong user name or password", known);
    if login.user.len() > tsunagu_proto::limits::MAX_USER_NAME
        || login.password.len() > tsunagu_proto::limits::MAX_PASSWORD
    {
        return Err(failed(false));
    }
    let record = shared.store.operator(&login.user).await.map_err(|e| {
        tracing::error!(error = %e, "account lookup failed");
        LoginError::new(ErrorCode::Internal, "the relay could not check the account", false)
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
        .map_err(|_| LoginError::new(ErrorCode::Busy, "the relay is busy; try again shortly", known))?;
    let Some(r) = record.filter(|_| ok) else {
        return Err(failed(known));
    };
    if r.suspended {
        return Err(LoginError::new(
            ErrorCode::Forbidden,
            "this operator account is suspended",
            true,
        ));
    }
    if !crate::store::ip_allowed(&r.ip_rules, ip) {
        return Err(LoginError::new(
            ErrorCode::Forbidden,
            "this operator may not log in from this address",
            true,
        ));
    }
    if r.totp_required {
        let Some(secret) = &r.totp_secret else {
            return Err(LoginError::new(
                ErrorCode::Forbidden,
                "the admin requires a TOTP code but none is enrolled for this operator",
                true,
            ));
        };
        if !shared
            .operator_totp
            .accept(&r.name, secret, &login.totp, crate::totp::now_secs())
        {
            return Err(LoginError::new(
                ErrorCode::AuthFailed,
                "wrong or missing TOTP code",
                true,
            ));
        }
    }
    Ok(r)
}

async fn client_connection(
    shared: Arc<Shared>,
    reader: Reader,
    mut writer: Writer,
    peer: SocketAddr,
    port: u16,
    join: pb::Join,
    mut permit: ConnPermit,
) {
    let ip: IpAddr = peer.ip();
    // The attempt takes its token before the code is looked at.
    let Some(ticket) = reserve_attempt(&shared.join_throttle, None, peer, &mut writer).await else {
        return;
    };
    let now = Instant::now();
    let refused = |code: ErrorCode, msg: &str| (code, msg.to_string());
    let taken = match SessionCode::parse(&join.code) {
        Err(_) => Err(refused(ErrorCode::BadCode, "a session code has 8 digits")),
        Ok(code) => shared.join(code, now).await.map_err(|r| match r {
            JoinRefusal::Unknown => refused(
                ErrorCode::BadCode,
                "no session has this code; check the digits with the operator",
            ),
            JoinRefusal::Expired => refused(
                ErrorCode::Expired,
                "this code has expired; ask the operator for a new one",
            ),
            JoinRefusal::Used => refused(
                ErrorCode::Used,
                "this code was already used; ask the operator for a new one",
            ),
        }),
    };
    let session = match taken {
        Ok(s) => {
            lock(&shared.join_throttle).succeeded(ticket, now);
            s
        }
        Err((code, msg)) => {
            lock(&shared.join_throttle).failed(ticket, now);
            tracing::info!(%peer, error = tsunagu_proto::types::error_code_name(code), "join refused");
            shared
                .audit
                .record(audit::Entry {
                    actor: "client".into(),
                    action: "code_join_failed",
                    ip: ip.to_string(),
                    detail: format!("error={}", tsunagu_proto::types::error_code_name(code)),
                    ..Default::default()
                })
                .await;
            let _ = writer.send(&error_frame(code, msg)).await;
            return;
        }
    };
    // The code was taken: the connection leaves the unauthenticated pool.
    permit.authenticated();
    let host = clean_host_name(&join.host_name);
    let limits = &shared.config.limits;
    let client_q = OutQueue::new(
        limits.screen_queue_frames,
        limits.data_queue_bytes,
        limits.control_queue_frames,
    );
    if !session.attach_client(client_q.clone(), &host, peer, port).await {
        let _ = writer
            .send(&error_frame(
                ErrorCode::Expired,
                "this code has expired; ask the operator for a new one",
            ))
            .await;
        return;
    }
    run_peer(shared, session, Role::Client, reader, writer, client_q).await;
}

/// Host names are chosen by the client: keep them short and free of control characters.
fn clean_host_name(raw: &str) -> String {
    // No control, format or bidi characters: the name shows what it is (see `names`).
    let mut s: String = tsunagu_proto::names::make_inert(raw);
    let max = tsunagu_proto::limits::MAX_HOST_NAME;
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    if s.is_empty() {
        "unknown".into()
    } else {
        s
    }
}

/// Runs one peer of a session: its writer task and its reader loop, until the session
/// ends or the peer goes away.
async fn run_peer(
    shared: Arc<Shared>,
    session: Arc<Session>,
    role: Role,
    mut reader: Reader,
    writer: Writer,
    queue: OutQueue,
) {
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
            _ = crate::shutdown::until_true(&mut ended) => break,
            r = reader.read_timeout(t.idle) => r,
        };
        match read {
            Ok(Some(raw)) => {
                if !session.on_frame(role, raw).await {
                    break;
                }
            }
            Ok(None) => {
                session.finish(gone).await;
                break;
            }
            Err(TransportError::Timeout(_)) => {
                tracing::info!(session = %session.id, ?role, "peer idle too long");
                session.finish(EndReason::IdleTimeout).await;
                break;
            }
            Err(TransportError::Frame(e)) => {
                tracing::info!(session = %session.id, ?role, error = %e, "malformed frame; closing");
                let _ =
                    queue.push_control(encode(&error_frame(ErrorCode::Protocol, e.to_string())).unwrap_or_default());
                session.finish(EndReason::ProtocolError).await;
                break;
            }
            Err(e) => {
                tracing::debug!(session = %session.id, ?role, error = %e, "connection lost");
                session.finish(gone).await;
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

async fn write_loop(queue: OutQueue, mut writer: Writer, keepalive: Duration, write_timeout: Duration) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_cleaned() {
        assert_eq!(clean_host_name("pc-01"), "pc-01");
        assert_eq!(clean_host_name("a\u{1b}[2Jb\n"), "a[2Jb");
        assert_eq!(clean_host_name(""), "unknown");
        let long = "é".repeat(300);
        let cut = clean_host_name(&long);
        assert!(cut.len() <= 255 && cut.chars().all(|c| c == 'é'));
    }
}
