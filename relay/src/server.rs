//! The relay server: binds the listeners and accepts connections under a connection cap;
//! each connection is served by the private `connection` module (TLS, the greeting machine of
//! [`crate::conn`], then its side of the session). Accept loops only accept; every wait on
//! a peer has a timeout. The state all of this shares lives in [`crate::state`]; stopping,
//! in [`crate::shutdown`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tsunagu_proto::pb::EndReason;

use crate::audit::{self, Audit};
use crate::clock;
use crate::config::Config;
use crate::directory::MemoryDirectory;
use crate::history::{self, LiveMap};
use crate::shutdown::{ConnectionTasks, Shutdown, Stopper};
use crate::state::Shared;
use crate::store::Store;
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
                let Ok(permit) = shared.connections.try_admit(peer.ip(), clock::now()) else {
                    drop(tcp);
                    continue;
                };
                let shared = shared.clone();
                connections.spawn(|mark| connection::handle_connection(shared, tcp, peer, port, permit, mark));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
