//! The relay server: binds the listeners and accepts connections under a connection cap;
//! each connection is served by [`connection`] (TLS, the greeting machine of
//! [`crate::conn`], then its side of the session). Accept loops only accept; every wait on
//! a peer has a timeout.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tsunagu_proto::pb::EndReason;

use crate::accounts;
use crate::audit::{self, Audit};
use crate::clock;
use crate::config::Config;
use crate::connlimit::{ConnLimiter, ConnLimits};
use crate::directory::Directory;
use crate::history::{self, HistorySink, LiveMap};
use crate::session::Session;
use crate::store::Store;
use crate::throttle::Throttle;
use crate::time::now_ms;
use crate::tls::ServerCerts;

mod connection;

pub use connection::{serve_stream, serve_tls_stream};

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
                tokio::spawn(connection::handle_connection(shared, tcp, peer, port, permit));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
