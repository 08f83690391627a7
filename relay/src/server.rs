//! The relay server: binds the listeners and accepts connections under a connection cap;
//! each connection is served by the private `connection` module (TLS, the greeting machine of
//! [`crate::conn`], then its side of the session). Accept loops only accept; every wait on
//! a peer has a timeout. The state all of this shares lives in [`crate::state`]; stopping,
//! in [`crate::shutdown`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tsunagu_proto::pb::EndReason;

use crate::audit::{self, Audit};
use crate::clock;
use crate::config::Config;
use crate::directory::{Directory, MemoryDirectory};
use crate::grid;
use crate::history::{self, LiveMap};
use crate::shutdown::{ConnectionTasks, Shutdown, Stopper};
use crate::state::Shared;
use crate::store::Store;
use crate::time::now_ms;
use crate::tls::ServerCerts;

mod bridged;
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
    #[error(transparent)]
    Grid(#[from] grid::kv::GridError),
    #[error(transparent)]
    GridPki(#[from] grid::pki::PkiError),
    #[error("cannot start the grid's QUIC listener: {0}")]
    Bridge(#[from] grid::bridge::BridgeError),
    /// The grid's guessing protection cannot be set up.
    #[error("the grid's guessing protection: {0}")]
    GridThrottle(String),
}

/// A running relay. Dropping it does not stop it; call [`Relay::shutdown`].
pub struct Relay {
    /// The accept loops of the relay ports (closed first when the node drains).
    accepting: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    /// The stop signal, and the connection tasks shutdown waits for.
    stopper: Stopper,
    /// Accept loops, the console's and housekeeping: each returns at the stop signal.
    tasks: Vec<JoinHandle<()>>,
    history_task: JoinHandle<()>,
    certs: Arc<ServerCerts>,
    admin_addr: Option<SocketAddr>,
    /// A grid node's QUIC links, closed last at shutdown.
    bridge: Option<grid::bridge::Bridge>,
}

impl Relay {
    /// Validates the config, prepares the data dir, certificates and database, binds the
    /// listeners (a port that cannot be bound is a warning as long as one is up) and
    /// starts serving.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        config.validate()?;
        crate::metrics::install();
        crate::keys::create_private_dir(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        let certs = ServerCerts::load(&config)?;
        let client_certs = crate::certs::CertState::new();
        let mut tls = (*certs.server_config(client_certs.verifier())?).clone();
        if config.join.enabled {
            // Browsers pick it; endpoints offer only their own protocol.
            tls.alpn_protocols.push(crate::join::HTTP_ALPN.to_vec());
        }
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let store = Store::connect(&config).await?;
        // Read before any listener accepts, so the first handshakes already know the client
        // CA and the revoked certificates.
        if let Err(e) = crate::certs::refresh_once(&client_certs, &store, &config).await {
            tracing::warn!(error = %e, "could not read the client CA and revoked certificates; certificate logins are refused until they are read");
        }
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
        let mut tasks = Vec::new();
        let mut addrs = Vec::new();
        for listener in &listeners {
            addrs.push(
                listener
                    .local_addr()
                    .map_err(|e| StartError::NoListener(e.to_string()))?,
            );
        }
        // A grid node keeps its codes in the grid's Redis; a single node in memory.
        let (directory, grid_parts): (Arc<dyn Directory>, _) = match &config.cluster {
            None => (Arc::new(MemoryDirectory::new(config.timeouts.code_ttl)), None),
            Some(cluster) => {
                let redis = grid::kv::Redis::connect(cluster).await.map_err(StartError::Grid)?;
                let directory = Arc::new(grid::directory::RedisDirectory::new(
                    redis.clone(),
                    cluster,
                    config.timeouts.code_ttl,
                    config.timeouts.code_ttl,
                ));
                // A grid whose Redis just (re)started refuses codes for two heartbeats (no
                // code is issued twice); a node waits that out before it takes operators.
                let settle = 2 * cluster.heartbeat + cluster.redis_timeout;
                if let Err(e) = directory.wait_settled(settle).await {
                    tracing::warn!(error = %e, "the grid's state has not settled; codes are refused until it has");
                }
                (directory.clone() as Arc<dyn Directory>, Some((redis, directory)))
            }
        };
        let shared = Shared::new(
            config,
            directory,
            store,
            audit,
            history,
            live,
            acceptor,
            client_certs,
            stopper.listener(),
        );
        let shared = Arc::new(with_grid_throttles(shared)?);
        // The grid is joined before any listener accepts, so every join already knows
        // where codes of other nodes lead.
        let mut bridge = None;
        if let Some((redis, directory)) = grid_parts {
            let (node, node_tasks) = join_grid(&shared, &addrs, redis, directory, &stopper).await?;
            bridge = Some(node.bridge().clone());
            shared.join_grid(node);
            tasks.extend(node_tasks);
        }
        let mut accepting = Vec::new();
        for (listener, addr) in listeners.into_iter().zip(addrs.iter().copied()) {
            accepting.push(tokio::spawn(accept_loop(
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
        tasks.push(tokio::spawn(watch_certificates(shared.clone(), stopper.listener())));
        if let Some(every) = certs.acme_check_every() {
            tasks.push(tokio::spawn(keep_acme_certificate(
                certs.clone(),
                every,
                stopper.listener(),
            )));
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
            accepting,
            tasks,
            history_task,
            certs,
            admin_addr,
            bridge,
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
    /// Drains a grid node before it stops: closes its relay ports (waiting until they are
    /// closed), sends the endpoints of every session that can move to another node
    /// `Ended(moved)` (they resume there, where the session is taken over at once because
    /// this node's ports refuse), and waits up to `timeouts.drain` for their connections to
    /// leave. Returns how many sessions were sent away. Sessions that cannot move stay
    /// until [`Relay::shutdown`]. Nothing to do on a single relay or with a zero drain time.
    pub async fn drain(&mut self) -> usize {
        let limit = self.shared.config.timeouts.drain;
        if self.shared.grid().is_none() || limit.is_zero() {
            return 0;
        }
        let until = tokio::time::Instant::now() + limit;
        tracing::info!("draining: closing the relay ports and moving sessions to other nodes");
        self.shared.start_draining();
        for t in self.accepting.drain(..) {
            let _ = t.await;
        }
        let movable: Vec<_> = self
            .shared
            .sessions()
            .live()
            .into_iter()
            .filter(|s| s.epoch().is_some())
            .collect();
        for session in &movable {
            session.let_go().await;
        }
        let staying = self.shared.sessions().len();
        while self.shared.open_connections() > staying * 2 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(moved = movable.len(), staying, "drained");
        movable.len()
    }

    pub async fn shutdown(self) {
        let Self {
            shared,
            stopper,
            accepting,
            mut tasks,
            history_task,
            bridge,
            ..
        } = self;
        tasks.extend(accepting);
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
        if let Some(bridge) = bridge {
            bridge.close();
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

/// Makes this relay a node of the grid: its node certificate, its QUIC listener (which
/// serves clients other nodes bridge here), its membership with heartbeats that also
/// re-assert its codes, its share of the grid's live view and its ear for hints. Returns
/// the node and its background tasks (each returns at the stop signal).
async fn join_grid(
    shared: &Arc<Shared>,
    relay_addrs: &[SocketAddr],
    redis: grid::kv::Redis,
    directory: Arc<grid::directory::RedisDirectory>,
    stopper: &Stopper,
) -> Result<(Arc<grid::GridNode>, Vec<JoinHandle<()>>), StartError> {
    let Some(cluster) = shared.config.cluster.clone() else {
        unreachable!("only called for a grid node")
    };
    let identity = grid::pki::node_identity(&cluster)?;
    let bridge = grid::bridge::Bridge::bind(
        &identity,
        cluster.quic_listen,
        grid::bridge::BridgeSettings::from_cluster(&cluster),
        connection::Joins::new(shared),
        stopper.tracker(),
    )?;
    // Port 0 (a trial on one machine) advertises the port bound.
    let mut quic = cluster.advertised();
    if quic.port() == 0 {
        quic.set_port(bridge.local_addr()?.port());
    }
    let admin = shared
        .config
        .admin
        .listen
        .filter(|a| a.port() != 0 && shared.config.admin.enabled);
    let info = grid::nodes::NodeInfo {
        name: cluster.node.clone(),
        quic,
        relay: relay_addrs.to_vec(),
        admin,
    };
    let joined_at = crate::clock::now();
    let nodes = Arc::new(grid::nodes::Nodes::join(redis.clone(), &cluster, info).await?);
    tracing::info!(node = %cluster.node, %quic, "joined the grid");
    // A record outlives its node by the resume window (the endpoints' time to come back)
    // plus the node TTL (the time before another node may take it).
    let record_ttl = shared.config.timeouts.resume + cluster.node_ttl + cluster.heartbeat;
    let records = Arc::new(grid::records::SessionRecords::new(
        redis.clone(),
        &cluster.node,
        record_ttl,
    ));
    let fence = Arc::new(grid::fence::Fence::holding_until(
        joined_at,
        joined_at + cluster.node_ttl,
    ));
    let on_beat: grid::nodes::OnBeat = {
        let shared = Arc::downgrade(shared);
        let (records, fence, ttl) = (records.clone(), fence.clone(), cluster.node_ttl);
        Arc::new(move |began| {
            let (shared, records, fence) = (shared.clone(), records.clone(), fence.clone());
            Box::pin(async move {
                if let Some(shared) = shared.upgrade() {
                    hold_sessions(&shared, &records, &fence, began, ttl).await;
                }
            })
        })
    };
    let mut tasks = vec![grid::nodes::spawn_heartbeat(
        nodes.clone(),
        Some(directory),
        Some(on_beat),
        stopper.listener(),
    )];
    tasks.push(tokio::spawn(publish_live(shared.clone(), stopper.listener())));
    let on_hint: grid::hints::OnHint = {
        let shared = Arc::downgrade(shared);
        Arc::new(move |hint| {
            let shared = shared.clone();
            Box::pin(async move {
                if let Some(shared) = shared.upgrade() {
                    apply_hint(&shared, hint).await;
                }
            })
        })
    };
    tasks.push(grid::hints::listen(&cluster, on_hint, stopper.listener()));
    let node = Arc::new(grid::GridNode::new(
        cluster.node.clone(),
        redis,
        nodes,
        bridge,
        records,
        fence,
    ));
    Ok((node, tasks))
}

/// After a heartbeat that began at `began`: checks this node's sessions against their
/// records, lets go of those another node took over (a node that was frozen or cut off
/// finds them here), writes back records Redis lost, and only then renews the fence.
async fn hold_sessions(
    shared: &Shared,
    records: &grid::records::SessionRecords,
    fence: &grid::fence::Fence,
    began: std::time::Instant,
    ttl: Duration,
) {
    let live = shared.sessions().live();
    let owned: Vec<(String, grid::records::Epoch)> = live
        .iter()
        .filter_map(|s| s.epoch().map(|e| (s.id.clone(), e)))
        .collect();
    let refreshed = match records.refresh(&owned).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "could not check this node's session records; the fence is not renewed");
            return;
        }
    };
    for id in &refreshed.moved {
        if let Some(session) = shared.sessions().get(id) {
            session.let_go().await;
        }
    }
    for id in &refreshed.missing {
        if let Some(session) = shared.sessions().get(id) {
            session.save().await;
        }
    }
    fence.renew_after(began, ttl);
}

/// Writes this node's live sessions to the grid's live view every heartbeat, so consoles
/// on other nodes list them.
async fn publish_live(shared: Arc<Shared>, mut stop: Shutdown) {
    let Some(cluster) = shared.config.cluster.clone() else {
        return;
    };
    let mut tick = tokio::time::interval(cluster.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.recv() => return,
        }
        let Some(grid) = shared.grid() else { continue };
        crate::metrics::set_live_sessions(shared.sessions().len());
        let rows = crate::admin::live_rows(&shared);
        let json = match serde_json::to_string(&rows) {
            Ok(json) => json,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the live sessions");
                continue;
            }
        };
        if let Err(e) = grid::live::publish(grid.redis(), grid.name(), json, cluster.node_ttl).await {
            tracing::debug!(error = %e, "cannot publish the live sessions");
        }
        // Bytes forwarded since a session's record was written: kept in the record, so a
        // node that takes the session over counts them in the history.
        for session in shared.sessions().live() {
            if session.counters_unsaved(crate::clock::now()) {
                session.save().await;
            }
        }
    }
}

/// What another node asked of this one: end a session it runs, apply an account change
/// (re-read from the shared database, so a hint never decides anything by itself), or
/// forget the copy of an account kept for code issue.
async fn apply_hint(shared: &Shared, hint: grid::hints::Hint) {
    match hint {
        grid::hints::Hint::EndSession { session_id } => {
            if let Some(session) = shared.sessions().get(&session_id) {
                tracing::info!(session = %session_id, "ending a session as another node's console asked");
                session.finish(EndReason::AdminEnded).await;
            }
        }
        grid::hints::Hint::NodeGone { node } => {
            if let Some(grid) = shared.grid() {
                grid.bridge().forget(&node).await;
            }
        }
        grid::hints::Hint::ForgetOperator { operator } => shared.store.forget_operator(&operator),
        grid::hints::Hint::AccountChanged { operator } => {
            shared.store.forget_operator(&operator);
            if shared.sessions().live_of(&operator).is_empty() {
                return;
            }
            match shared.store.operator(&operator).await {
                Ok(record) => {
                    shared.sessions().enforce_account(&operator, record.as_ref()).await;
                }
                Err(e) => tracing::error!(error = %e, "account check failed"),
            }
        }
    }
}

/// A grid node's guessing protection is the grid's, in Redis (`grid::throttle`); a single
/// relay keeps its own in memory.
fn with_grid_throttles(shared: Shared) -> Result<Shared, StartError> {
    let Some(cluster) = shared.config.cluster.as_ref() else {
        return Ok(shared);
    };
    let account_key = shared
        .store
        .keys()
        .map(|k| k.throttle_account_key())
        .ok_or_else(|| StartError::GridThrottle("the store was opened without its keys".into()))?;
    let throttles = crate::grid::throttle::for_grid(cluster, &shared.config, &account_key)
        .map_err(|e| StartError::GridThrottle(format!("cannot use cluster.redis_url: {e}")))?;
    Ok(shared.with_throttles(throttles.codes, throttles.logins))
}

async fn housekeeping(shared: Arc<Shared>, certs: Arc<ServerCerts>, mut stop: Shutdown) {
    // Tombstones and throttle entries are swept every 30 s; certificates checked hourly.
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    let mut cert_check = tokio::time::interval(Duration::from_secs(3600));
    let mut purge = tokio::time::interval(shared.config.database.purge_interval);
    let mut account_poll = tokio::time::interval(shared.config.database.account_poll);
    // The first tick is immediate: a checkpoint at start, then one per interval.
    let mut checkpoint = tokio::time::interval(shared.config.secrets.checkpoint_interval);
    // Memory freed by sessions that ended goes back to the system within seconds.
    let mut memory = tokio::time::interval(Duration::from_secs(5));
    let mut give_back = crate::GiveBack::default();
    loop {
        tokio::select! {
            _ = checkpoint.tick() => shared.audit.checkpoint_logged().await,
            _ = memory.tick() => {
                if give_back.observe(shared.sessions().len()) {
                    let _ = tokio::task::spawn_blocking(crate::trim_free_memory).await;
                }
            }
            _ = purge.tick() => purge_history(&shared).await,
            _ = tick.tick() => {
                let now = Instant::now();
                shared.directory().sweep(now).await;
                shared.join_throttle.prune(now).await;
                shared.login_throttle.prune(now).await;
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

/// Re-reads the client CA and the revoked certificates every `certs.revocation_poll`: a
/// certificate revoked anywhere is refused by this node's listeners from then on, the live
/// sessions that logged in with it end (console sessions at their next request), and the CRL in the data dir is
/// kept current.
async fn watch_certificates(shared: Arc<Shared>, mut stop: Shutdown) {
    let mut poll = tokio::time::interval(shared.config.certs.revocation_poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let crl_path = shared.config.client_crl_path();
    let mut crl_written = false;
    loop {
        tokio::select! {
            _ = poll.tick() => {}
            _ = stop.recv() => return,
        }
        let refreshed = match crate::certs::refresh_once(&shared.client_certs, &shared.store, &shared.config).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "could not re-read the revoked certificates");
                continue;
            }
        };
        if !refreshed.newly_revoked.is_empty() {
            // Console sessions that logged in with one end at their next request.
            let ended = shared
                .sessions()
                .end_sessions_with_certs(&refreshed.newly_revoked)
                .await;
            if ended > 0 {
                tracing::info!(
                    sessions = ended,
                    "ended the sessions revoked certificates had logged in"
                );
            }
        }
        if refreshed.crl_changed || !crl_written {
            if let Some(pem) = shared.client_certs.crl_pem() {
                match write_crl(&crl_path, &pem) {
                    Ok(()) => crl_written = true,
                    Err(e) => tracing::warn!(path = %crl_path.display(), error = %e, "could not write the CRL"),
                }
            }
        }
    }
}

/// With `[tls.acme]`: obtains the server certificate from the ACME CA once the listeners
/// are up, then checks every `check_every` whether it is due for renewal. A failure is
/// retried sooner (every 10 s at most, as the CA allows), and the certificate in use stays.
async fn keep_acme_certificate(certs: Arc<ServerCerts>, every: Duration, mut stop: Shutdown) {
    let retry = every.min(Duration::from_secs(10));
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.recv() => return,
        }
        wait = match certs.renew_acme_if_due().await {
            Ok(true) => {
                tracing::info!("the ACME certificate is in use");
                every
            }
            Ok(false) => every,
            Err(e) => {
                tracing::warn!(error = %e, "could not obtain the certificate from the ACME CA; trying again");
                retry
            }
        };
    }
}

/// Writes the CRL through a temporary file, so a reader never sees half of it.
fn write_crl(path: &std::path::Path, pem: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("pem.tmp");
    std::fs::write(&tmp, pem)?;
    std::fs::rename(&tmp, path)
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
/// `database.account_poll`, and first forgets every account kept for code issue, so codes
/// follow such changes within the same bound.
async fn enforce_account_changes(shared: &Shared) {
    shared.store.forget_operators();
    for name in shared.sessions().operators() {
        match shared.store.operator(&name).await {
            Ok(record) => {
                shared.sessions().enforce_account(&name, record.as_ref()).await;
            }
            Err(e) => tracing::error!(error = %e, "account check failed"),
        }
    }
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
    let mut draining = shared.draining();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.recv() => return,
            // The port closes: a node draining takes no one new, and the nodes its endpoints
            // resume on see it refuse (see `grid::nodes::surely_dead`).
            _ = crate::shutdown::until_true(&mut draining) => return,
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
