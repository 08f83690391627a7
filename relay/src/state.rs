//! What every task of one relay shares: configuration, store, audit trail, history, the
//! code directory and the registry of this node's sessions. Connection tasks, the console
//! and housekeeping reach it through an `Arc<Shared>`; it imports none of them, so the
//! dependencies between the relay's modules go one way.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_rustls::TlsAcceptor;
use tsunagu_proto::pb::EndReason;
use tsunagu_proto::SessionCode;

use crate::audit::Audit;
use crate::config::Config;
use crate::connlimit::{ConnLimiter, ConnLimits};
use crate::directory::{Directory, IssueError, JoinRefusal, SessionRef};
use crate::history::{HistorySink, LiveMap};
use crate::policy::Policy;
use crate::queue::OutQueue;
use crate::registry::Registry;
use crate::resume::ResumeRefusal;
use crate::session::{new_session_id, Session, SessionShared};
use crate::shutdown::Shutdown;
use crate::store::Store;
use crate::throttle::{Throttle, Throttles};

/// Where a joining client's code led.
pub(crate) enum Joined {
    /// A session on this node.
    Here(Arc<Session>),
    /// A session another node of the grid runs: the client is bridged there.
    Elsewhere(SessionRef),
}

/// State shared by every task of one relay; reached through an `Arc`.
pub struct Shared {
    pub config: Config,
    pub history: HistorySink,
    pub store: Store,
    /// The audit trail.
    pub audit: Audit,
    /// The one bounded pool every argon2 computation of this relay goes through.
    pub verifier: crate::verifier::Verifier,
    /// Operator TOTP codes already used.
    pub(crate) operator_totp: crate::totp::ReplayGuard,
    /// What the console shows about live sessions (fed by the history writer).
    pub(crate) live: LiveMap,
    /// Guessing protection for session codes: this relay's in memory, or the grid's.
    pub(crate) join_throttle: Arc<dyn Throttles>,
    /// Guessing protection for operator logins, likewise.
    pub(crate) login_throttle: Arc<dyn Throttles>,
    /// Connection caps of the endpoint listeners (the console has its own).
    pub(crate) connections: ConnLimiter,
    /// The pace this node takes resumes at (`limits.resumes_per_second`).
    pub(crate) resume_admission: crate::connlimit::RateGate,
    pub(crate) dummy_hash: String,
    pub(crate) acceptor: TlsAcceptor,
    /// The client CA and the revoked certificates, as this node last read them.
    pub client_certs: Arc<crate::certs::CertState>,
    /// The download page's budget of downloads at once (`join.max_downloads`).
    pub(crate) join_downloads: Arc<tokio::sync::Semaphore>,
    directory: Arc<dyn Directory>,
    sessions: Registry,
    /// This node's grid parts (Redis, bridge, membership); unset on a single node.
    grid: std::sync::OnceLock<Arc<crate::grid::GridNode>>,
    /// What each session gets of the above.
    for_sessions: Arc<SessionShared>,
    stop: Shutdown,
    /// Set when the node drains: its relay ports close and its sessions move away.
    draining: tokio::sync::watch::Sender<bool>,
    /// Sessions this node is taking over right now (see [`Shared::find_for_resume`]).
    taking_over: Mutex<std::collections::HashSet<String>>,
    /// Nodes this node told the grid are gone, and when.
    told_gone: Mutex<std::collections::HashMap<String, Instant>>,
}

impl Shared {
    /// Checks the client certificate a login of `role` account `name` presented (see
    /// [`crate::certs::CertState::check_login`]) against this relay's store and its
    /// revocation list.
    pub(crate) async fn check_login_cert(
        &self,
        role: crate::store::CertRole,
        name: &str,
        presented: Option<&crate::certs::PeerCert>,
        required: bool,
    ) -> Result<Option<String>, crate::certs::CertRefusal> {
        self.client_certs
            .check_login(
                &self.store,
                self.config.certs.revocation_max_age,
                role,
                name,
                presented,
                required,
            )
            .await
    }

    /// The relay's state around `directory` (in memory on a single node) with an empty
    /// registry; `stop` is the relay's stop signal (no session opens once it is given).
    #[allow(clippy::too_many_arguments)] // each is one of the relay's parts, built by `Relay::start`
    pub(crate) fn new(
        config: Config,
        directory: Arc<dyn Directory>,
        store: Store,
        audit: Audit,
        history: HistorySink,
        live: LiveMap,
        acceptor: TlsAcceptor,
        client_certs: Arc<crate::certs::CertState>,
        stop: Shutdown,
    ) -> Self {
        let now = Instant::now();
        let sessions = Registry::new();
        let for_sessions = Arc::new(SessionShared {
            history: history.clone(),
            consent_timeout: config.timeouts.consent,
            directory: directory.clone(),
            leave: sessions.leave_hook(),
            resume_window: config.timeouts.resume,
            node: config.cluster.as_ref().map(|c| c.node.clone()).unwrap_or_default(),
            grid: Default::default(),
        });
        Self {
            verifier: crate::verifier::Verifier::new(
                config.limits.concurrent_logins,
                config.limits.login_queue,
                config.timeouts.login_wait,
            ),
            join_throttle: Arc::new(Mutex::new(Throttle::new(config.throttle.clone(), now))),
            login_throttle: Arc::new(Mutex::new(Throttle::new(config.login_throttle.clone(), now))),
            connections: ConnLimiter::new(ConnLimits::endpoints(&config.limits), "relay"),
            resume_admission: crate::connlimit::RateGate::new(
                f64::from(config.limits.resumes_per_second),
                f64::from(config.limits.resume_burst),
                now,
            ),
            dummy_hash: crate::accounts::dummy_hash(&config.accounts),
            join_downloads: Arc::new(tokio::sync::Semaphore::new(config.join.max_downloads)),
            operator_totp: Default::default(),
            history,
            store,
            audit,
            live,
            acceptor,
            client_certs,
            directory,
            sessions,
            grid: Default::default(),
            for_sessions,
            stop,
            draining: tokio::sync::watch::channel(false).0,
            taking_over: Default::default(),
            told_gone: Default::default(),
            config,
        }
    }

    /// Replaces the in-memory throttles (one relay's) with others: a grid node's, in Redis
    /// (`grid::throttle::for_grid`). Before the relay serves anything.
    pub fn with_throttles(mut self, join: Arc<dyn Throttles>, login: Arc<dyn Throttles>) -> Self {
        self.join_throttle = join;
        self.login_throttle = login;
        self
    }

    /// The sessions on this node: what the console lists and ends, what account changes
    /// are enforced on.
    pub fn sessions(&self) -> &Registry {
        &self.sessions
    }

    /// The relay's stop signal: connections close sooner once it is given.
    pub(crate) fn stop_signal(&self) -> Shutdown {
        self.stop.clone()
    }

    /// Where session codes are kept.
    pub fn directory(&self) -> &dyn Directory {
        &*self.directory
    }

    /// Opens a session for a logged-in operator: draws its code, builds it and registers
    /// it on this node (the calling connection has marked itself as carrying a session,
    /// see [`crate::shutdown::SessionMark`]). A session opened while the relay stops ends
    /// at once with `relay_shutdown`.
    pub(crate) async fn open_session(
        &self,
        operator: String,
        operator_addr: SocketAddr,
        operator_relay_port: u16,
        policy: Policy,
        operator_q: OutQueue,
    ) -> Result<(SessionCode, Arc<Session>), IssueError> {
        let id = new_session_id();
        let code = self
            .directory
            .issue(SessionRef {
                session_id: id.clone(),
                node: None,
            })
            .await?;
        let session = Session::new(
            self.for_sessions.clone(),
            id,
            operator,
            operator_addr,
            operator_relay_port,
            code,
            policy,
            operator_q,
        );
        crate::metrics::code_issued();
        self.sessions.insert(session.clone());
        // Checked after the insert: shutdown signals before it ends what the registry
        // holds, so either it sees this session or this sees the signal.
        if self.stop.is_shutdown() {
            session.finish(EndReason::RelayShutdown).await;
        }
        Ok((code, session))
    }

    /// Takes `code` for a joining client and finds its session: on this node, or in a grid
    /// on the node that runs it. A session that ended between the take and the lookup is an expired code.
    pub(crate) async fn join(&self, code: SessionCode, now: Instant) -> Result<Joined, JoinRefusal> {
        let found = self.directory.take(code, now).await?;
        let elsewhere = match (&found.node, self.grid.get()) {
            (Some(node), Some(grid)) => node != grid.name(),
            _ => false,
        };
        if elsewhere {
            crate::metrics::joined(true);
            return Ok(Joined::Elsewhere(found));
        }
        let session = self.sessions.get(&found.session_id).ok_or(JoinRefusal::Expired)?;
        crate::metrics::joined(false);
        Ok(Joined::Here(session))
    }

    /// Finds the session an endpoint resumes: on this node; or in a grid, through its
    /// record: a session whose node is gone (its heartbeat key expired, or nothing listens
    /// on its relay ports any more) is taken over here with a higher epoch and rebuilt from
    /// the record; a session whose node is alive is reached through that node.
    /// `Err(None)`: the grid's state could not be read.
    pub(crate) async fn find_for_resume(&self, id: &str) -> Result<Resumable, Option<ResumeRefusal>> {
        use crate::grid::records::TakeOver;
        if let Some(session) = self.sessions.get(id) {
            return Ok(Resumable::Here(session));
        }
        let Some(grid) = self.grid.get() else {
            return Err(Some(ResumeRefusal::UnknownSession));
        };
        if id.is_empty() || id.len() > 64 {
            return Err(Some(ResumeRefusal::UnknownSession));
        }
        // One takeover of a session at a time on this node: the other side of the same
        // session resuming here meanwhile would otherwise find the record already this
        // node's but the session not yet registered, and take it over a second time. It
        // tries again shortly (`unavailable`) and then finds the session here.
        let Some(_claim) = Claim::take(&self.taking_over, id) else {
            return Err(None);
        };
        if let Some(session) = self.sessions.get(id) {
            return Ok(Resumable::Here(session));
        }
        let records = grid.records();
        let unavailable = |e: crate::grid::records::RecordError| {
            tracing::warn!(error = %e, "cannot read a session record for a resume");
            None
        };
        let owned = records
            .load(id)
            .await
            .map_err(unavailable)?
            .ok_or(Some(ResumeRefusal::UnknownSession))?;
        let taken = if owned.owner == grid.name() {
            // Recorded as this node's but not running here: this node restarted.
            Some(
                records
                    .take_over(id, &owned.owner, owned.epoch)
                    .await
                    .map_err(unavailable)?,
            )
        } else {
            records
                .take_over_if_owner_gone(id, &owned.owner, owned.epoch)
                .await
                .map_err(unavailable)?
        };
        let taken = match taken {
            Some(t) => t,
            None => {
                // Its heartbeat key lives. A node whose process died (a crash, kill -9)
                // keeps that key for up to `cluster.node_ttl`; nothing listening on any of
                // its relay ports shows it is gone sooner.
                let info = grid.nodes().get(&owned.owner).await.map_err(|e| {
                    tracing::warn!(error = %e, "cannot look up a session's node");
                    None
                })?;
                match info {
                    Some(info) if !crate::grid::nodes::surely_dead(&info).await => {
                        let seats = Box::new([owned.snapshot.operator_seat, owned.snapshot.client_seat]);
                        return Ok(Resumable::Elsewhere {
                            node: Box::new(info),
                            seats,
                        });
                    }
                    _ => records
                        .take_over(id, &owned.owner, owned.epoch)
                        .await
                        .map_err(unavailable)?,
                }
            }
        };
        match taken {
            TakeOver::Taken { epoch, snapshot } => {
                // A session still waiting for its client keeps its code: it leads here now.
                let code = match snapshot.phase {
                    crate::grid::records::SnapshotPhase::AwaitingClient { .. } => self.directory.repoint(id).await,
                    _ => None,
                };
                let Some(session) = Session::restore(self.for_sessions.clone(), *snapshot, epoch, code) else {
                    tracing::warn!(session = %id, "a session record no live session could have");
                    return Err(Some(ResumeRefusal::UnknownSession));
                };
                tracing::info!(session = %id, from = %owned.owner, epoch = epoch.get(), "took the session over from a node that is gone");
                crate::metrics::taken_over();
                self.sessions.insert(session.clone());
                if owned.owner != grid.name() && self.first_to_tell_gone(&owned.owner) {
                    // Every node closes its links to the dead node, so endpoints bridged to
                    // it through them resume at once instead of at the link's idle timeout.
                    let (grid, node) = (grid.clone(), owned.owner.clone());
                    tokio::spawn(async move {
                        grid.bridge().forget(&node).await;
                        let hint = crate::grid::hints::Hint::NodeGone { node };
                        if let Err(e) = crate::grid::hints::publish(grid.redis(), &hint).await {
                            tracing::warn!(error = %e, "could not tell the grid a node is gone");
                        }
                    });
                }
                tokio::spawn(session.clone().run_timer());
                if self.stop.is_shutdown() {
                    session.finish(EndReason::RelayShutdown).await;
                }
                Ok(Resumable::Here(session))
            }
            // Another node took it first: the endpoint tries again and is led there.
            TakeOver::Moved { .. } => Err(None),
            TakeOver::Gone => Err(Some(ResumeRefusal::UnknownSession)),
        }
    }

    /// Starts draining: the relay ports close (see [`Shared::draining`]).
    pub(crate) fn start_draining(&self) {
        self.draining.send_replace(true);
    }

    /// Resolves its `wait_for(|d| *d)` when the node starts draining.
    pub(crate) fn draining(&self) -> tokio::sync::watch::Receiver<bool> {
        self.draining.subscribe()
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Endpoint connections open now.
    pub fn open_connections(&self) -> usize {
        self.connections.counts().0
    }

    /// Whether this node is taking session `id` over right now.
    pub(crate) fn is_taking_over(&self, id: &str) -> bool {
        self.taking_over.lock().unwrap_or_else(|p| p.into_inner()).contains(id)
    }

    /// Whether this node should tell the grid that `node` is gone: once, not for each of
    /// the dead node's sessions it takes over (again after a minute: a node of that name
    /// may have come back and died again).
    fn first_to_tell_gone(&self, node: &str) -> bool {
        let now = crate::clock::now();
        let mut told = self.told_gone.lock().unwrap_or_else(|p| p.into_inner());
        told.retain(|_, at| now.duration_since(*at) < std::time::Duration::from_secs(60));
        if told.contains_key(node) {
            return false;
        }
        told.insert(node.to_string(), now);
        true
    }

    /// Whether the relay was told to stop.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_shutdown()
    }

    /// This node's part of a grid; `None` on a single node.
    pub fn grid(&self) -> Option<&Arc<crate::grid::GridNode>> {
        self.grid.get()
    }

    /// Makes this relay a node of a grid (once, at start, before any listener accepts).
    pub(crate) fn join_grid(&self, node: Arc<crate::grid::GridNode>) {
        let for_sessions = crate::session::SessionGrid {
            records: node.records().clone(),
            fence: node.fence().clone(),
        };
        if self.grid.set(node).is_err() || self.for_sessions.grid.set(for_sessions).is_err() {
            tracing::error!("the relay joined a grid twice; the first stands");
        }
    }
}

/// A session id this node is taking over, released when dropped.
struct Claim<'a> {
    set: &'a Mutex<std::collections::HashSet<String>>,
    id: String,
}

impl<'a> Claim<'a> {
    /// Claims `id`, unless a takeover of it is under way already.
    fn take(set: &'a Mutex<std::collections::HashSet<String>>, id: &str) -> Option<Self> {
        let mut ids = set.lock().unwrap_or_else(|p| p.into_inner());
        ids.insert(id.to_string()).then(|| Self {
            set,
            id: id.to_string(),
        })
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.set.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

/// Where the session of a resuming endpoint runs.
pub(crate) enum Resumable {
    /// On this node (perhaps just taken over).
    Here(Arc<Session>),
    /// On another node, alive, reached over the bridge; `seats` as its record keeps them
    /// (the operator's, the client's), to check a resume before it is carried there.
    Elsewhere {
        node: Box<crate::grid::nodes::NodeInfo>,
        seats: Box<[Option<crate::resume::Seat>; 2]>,
    },
}
