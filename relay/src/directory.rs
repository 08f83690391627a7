//! Which session codes are live, used or expired, and which session each one leads to.
//!
//! [`Directory`] is the seam between a relay node and the place codes are kept: in memory
//! for a single node ([`MemoryDirectory`]), Redis for the grid. It maps a code to a
//! [`SessionRef`] (a session id; in the grid also the node that runs it) and never holds
//! the session itself: the node's registry does. Its methods return boxed futures so that
//! an implementation that talks to a server fits behind the same `Arc<dyn Directory>`.
//!
//! Codes that were used or expired are remembered for a while as tombstones, so a replayed
//! or late code gets an exact error, and are never reissued meanwhile.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tsunagu_proto::SessionCode;

/// A future a [`Directory`] returns; `Send` so connection tasks can await it.
pub type DirFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a code did not lead to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinRefusal {
    /// No such code was issued recently.
    Unknown,
    /// The code was valid but ran out (or its operator left).
    Expired,
    /// The code was already used by a client.
    Used,
    /// The directory could not be asked (a grid's Redis is unreachable); nothing was taken.
    Unavailable,
}

/// Why no code could be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The OS random source failed.
    #[error(transparent)]
    Random(#[from] tsunagu_proto::CodeError),
    /// The directory could not be asked (a grid's Redis is unreachable or still
    /// re-asserting after a restart); no code was claimed.
    #[error("the grid's shared state is unavailable: {0}")]
    Unavailable(String),
}

/// What a code leads to: a session, by id, and in a grid the node that runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRef {
    pub session_id: String,
    /// The grid node that runs the session; `None` in a single node's own directory.
    pub node: Option<String>,
}

/// Where a code stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeState {
    /// Issued, waiting for a client.
    Live,
    /// A client used it; remembered until the tombstone runs out.
    Used,
    /// It ran out or its session ended before a client came; remembered likewise.
    Expired,
}

/// A session's entry, as [`Directory::lookup`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub code: SessionCode,
    pub state: CodeState,
}

/// The live state of session codes. Every method may wait on the network in a remote
/// implementation; `now` is passed in so the in-memory one runs on a fake clock in tests.
pub trait Directory: Send + Sync {
    /// Claims a fresh random code, unique among live and remembered codes, for `session`.
    fn issue(&self, session: SessionRef) -> DirFuture<'_, Result<SessionCode, IssueError>>;

    /// Takes the session behind `code` for a joining client; the code is used up.
    fn take(&self, code: SessionCode, now: Instant) -> DirFuture<'_, Result<SessionRef, JoinRefusal>>;

    /// The session behind `code` ended before a client joined: a live code expires.
    fn expire(&self, code: SessionCode, now: Instant) -> DirFuture<'_, ()>;

    /// Forgets tombstones whose time is up.
    fn sweep(&self, now: Instant) -> DirFuture<'_, ()>;

    /// The code of the session `session_id` and where it stands, while remembered.
    fn lookup<'a>(&'a self, session_id: &'a str) -> DirFuture<'a, Option<Listing>>;

    /// The session behind `code` got its client (here or through another node): a
    /// directory that re-asserts live codes (the grid's, after Redis restarted) stops
    /// doing so for this one.
    fn joined(&self, _code: SessionCode) {}

    /// This node took over `session_id` before its client joined: its live code leads here
    /// from now on. Returns the code, or `None` when it is no longer live (or the directory
    /// is one node's, which never takes a session over).
    fn repoint<'a>(&'a self, _session_id: &'a str) -> DirFuture<'a, Option<SessionCode>> {
        Box::pin(std::future::ready(None))
    }
}

struct Slot {
    session: SessionRef,
    state: CodeState,
    /// When a tombstone is forgotten; `None` while the code is live.
    forget_at: Option<Instant>,
}

/// The single-node directory, in memory. Cheap to share behind an `Arc`.
pub struct MemoryDirectory {
    slots: DashMap<u32, Slot>,
    /// Session id → code, for [`Directory::lookup`]; kept in step with `slots`.
    by_session: DashMap<String, SessionCode>,
    tombstone: Duration,
}

impl MemoryDirectory {
    /// `tombstone`: how long a used or expired code is remembered.
    pub fn new(tombstone: Duration) -> Self {
        Self {
            slots: DashMap::new(),
            by_session: DashMap::new(),
            tombstone,
        }
    }

    fn issue_now(&self, session: SessionRef) -> Result<SessionCode, IssueError> {
        loop {
            let code = SessionCode::random()?;
            if let Entry::Vacant(v) = self.slots.entry(code.as_u32()) {
                self.by_session.insert(session.session_id.clone(), code);
                v.insert(Slot {
                    session,
                    state: CodeState::Live,
                    forget_at: None,
                });
                return Ok(code);
            }
        }
    }

    fn take_now(&self, code: SessionCode, now: Instant) -> Result<SessionRef, JoinRefusal> {
        let Some(mut slot) = self.slots.get_mut(&code.as_u32()) else {
            return Err(JoinRefusal::Unknown);
        };
        match slot.state {
            CodeState::Used => Err(JoinRefusal::Used),
            CodeState::Expired => Err(JoinRefusal::Expired),
            CodeState::Live => {
                slot.state = CodeState::Used;
                slot.forget_at = Some(now + self.tombstone);
                Ok(slot.session.clone())
            }
        }
    }

    fn expire_now(&self, code: SessionCode, now: Instant) {
        if let Some(mut slot) = self.slots.get_mut(&code.as_u32()) {
            if slot.state == CodeState::Live {
                slot.state = CodeState::Expired;
                slot.forget_at = Some(now + self.tombstone);
            }
        }
    }

    fn sweep_now(&self, now: Instant) {
        self.slots.retain(|_, slot| {
            let keep = slot.forget_at.is_none_or(|at| at > now);
            if !keep {
                self.by_session.remove(&slot.session.session_id);
            }
            keep
        });
    }

    fn lookup_now(&self, session_id: &str) -> Option<Listing> {
        // The index guard is dropped before the slot is read: locks are taken one at a time.
        let code = *self.by_session.get(session_id)?;
        let state = self.slots.get(&code.as_u32())?.state;
        Some(Listing { code, state })
    }

    /// Live codes right now.
    pub fn live(&self) -> usize {
        self.slots.iter().filter(|s| s.state == CodeState::Live).count()
    }

    /// Entries held, live or remembered.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

impl Directory for MemoryDirectory {
    fn issue(&self, session: SessionRef) -> DirFuture<'_, Result<SessionCode, IssueError>> {
        let issued = self.issue_now(session);
        Box::pin(std::future::ready(issued))
    }

    fn take(&self, code: SessionCode, now: Instant) -> DirFuture<'_, Result<SessionRef, JoinRefusal>> {
        let taken = self.take_now(code, now);
        Box::pin(std::future::ready(taken))
    }

    fn expire(&self, code: SessionCode, now: Instant) -> DirFuture<'_, ()> {
        self.expire_now(code, now);
        Box::pin(std::future::ready(()))
    }

    fn sweep(&self, now: Instant) -> DirFuture<'_, ()> {
        self.sweep_now(now);
        Box::pin(std::future::ready(()))
    }

    fn lookup<'a>(&'a self, session_id: &'a str) -> DirFuture<'a, Option<Listing>> {
        Box::pin(std::future::ready(self.lookup_now(session_id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn session(id: &str) -> SessionRef {
        SessionRef {
            session_id: id.to_string(),
            node: None,
        }
    }

    #[tokio::test]
    async fn a_code_leads_to_its_session_once_then_says_used() {
        let dir: Arc<dyn Directory> = Arc::new(MemoryDirectory::new(Duration::from_secs(600)));
        let now = Instant::now();
        let code = dir.issue(session("s1")).await.unwrap();
        assert_eq!(
            dir.lookup("s1").await,
            Some(Listing {
                code,
                state: CodeState::Live
            })
        );
        assert_eq!(dir.take(code, now).await, Ok(session("s1")));
        assert_eq!(dir.take(code, now).await, Err(JoinRefusal::Used));
        assert_eq!(dir.lookup("s1").await.map(|l| l.state), Some(CodeState::Used));
        // Expiring a used code changes nothing: the client already has the session.
        dir.expire(code, now).await;
        assert_eq!(dir.take(code, now).await, Err(JoinRefusal::Used));
    }

    #[tokio::test]
    async fn an_expired_code_says_expired_and_an_unknown_one_unknown() {
        let dir = MemoryDirectory::new(Duration::from_secs(600));
        let now = Instant::now();
        let code = dir.issue(session("s1")).await.unwrap();
        dir.expire(code, now).await;
        assert_eq!(dir.take(code, now).await, Err(JoinRefusal::Expired));
        let other = (0..)
            .map(|_| SessionCode::random().unwrap())
            .find(|c| *c != code)
            .unwrap();
        assert_eq!(dir.take(other, now).await, Err(JoinRefusal::Unknown));
        assert_eq!(dir.live(), 0);
    }

    #[tokio::test]
    async fn tombstones_are_kept_until_their_time_then_forgotten() {
        let tombstone = Duration::from_secs(600);
        let dir = MemoryDirectory::new(tombstone);
        let t0 = Instant::now();
        let used = dir.issue(session("used")).await.unwrap();
        let live = dir.issue(session("live")).await.unwrap();
        assert_ne!(used, live, "codes are unique among live codes");
        dir.take(used, t0).await.unwrap();
        dir.sweep(t0 + tombstone - Duration::from_secs(1)).await;
        assert_eq!(dir.take(used, t0).await, Err(JoinRefusal::Used), "still remembered");
        dir.sweep(t0 + tombstone + Duration::from_secs(1)).await;
        assert_eq!(dir.take(used, t0).await, Err(JoinRefusal::Unknown), "forgotten");
        assert_eq!(dir.lookup("used").await, None);
        // A live code is never swept, however late.
        dir.sweep(t0 + 100 * tombstone).await;
        assert_eq!(dir.lookup("live").await.map(|l| l.state), Some(CodeState::Live));
        assert_eq!((dir.len(), dir.live()), (1, 1));
    }
}
