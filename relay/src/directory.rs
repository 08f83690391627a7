//! Live state of a single relay: which session codes are live, used or expired. Codes
//! that were used or expired are remembered for a while as tombstones, so a replayed or
//! late code gets an exact error, and are never reissued meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tsunagu_proto::SessionCode;

use crate::session::Session;

/// Why a code did not lead to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinRefusal {
    /// No such code was issued recently.
    Unknown,
    /// The code was valid but ran out (or its operator left).
    Expired,
    /// The code was already used by a client.
    Used,
}

enum Slot {
    Live(Arc<Session>),
    Used { forget_at: Instant },
    Expired { forget_at: Instant },
}

/// The in-memory directory. Cheap to share behind an `Arc`.
pub struct Directory {
    slots: DashMap<u32, Slot>,
    tombstone: Duration,
}

impl Directory {
    /// `tombstone`: how long a used or expired code is remembered.
    pub fn new(tombstone: Duration) -> Self {
        Self {
            slots: DashMap::new(),
            tombstone,
        }
    }

    /// Claims a fresh random code, unique among live and remembered codes, for the session
    /// `make` builds from it.
    pub fn issue(
        &self,
        make: impl FnOnce(SessionCode) -> Arc<Session>,
    ) -> Result<(SessionCode, Arc<Session>), tsunagu_proto::CodeError> {
        loop {
            let code = SessionCode::random()?;
            if let Entry::Vacant(v) = self.slots.entry(code.as_u32()) {
                let session = make(code);
                v.insert(Slot::Live(session.clone()));
                return Ok((code, session));
            }
        }
    }

    /// Takes the session behind `code` for a joining client; the code is used up.
    pub fn take(&self, code: SessionCode, now: Instant) -> Result<Arc<Session>, JoinRefusal> {
        let Some(mut slot) = self.slots.get_mut(&code.as_u32()) else {
            return Err(JoinRefusal::Unknown);
        };
        match &*slot {
            Slot::Used { .. } => Err(JoinRefusal::Used),
            Slot::Expired { .. } => Err(JoinRefusal::Expired),
            Slot::Live(_) => {
                let Slot::Live(session) = std::mem::replace(
                    &mut *slot,
                    Slot::Used {
                        forget_at: now + self.tombstone,
                    },
                ) else {
                    unreachable!("matched Live above")
                };
                Ok(session)
            }
        }
    }

    /// The session behind `code` ended before a client joined: the code expires.
    pub fn expire(&self, code: SessionCode, now: Instant) {
        if let Some(mut slot) = self.slots.get_mut(&code.as_u32()) {
            if matches!(*slot, Slot::Live(_)) {
                *slot = Slot::Expired {
                    forget_at: now + self.tombstone,
                };
            }
        }
    }

    /// Forgets tombstones whose time is up.
    pub fn sweep(&self, now: Instant) {
        self.slots.retain(|_, slot| match slot {
            Slot::Live(_) => true,
            Slot::Used { forget_at } | Slot::Expired { forget_at } => *forget_at > now,
        });
    }

    /// Live codes right now.
    pub fn live(&self) -> usize {
        self.slots.iter().filter(|s| matches!(s.value(), Slot::Live(_))).count()
    }

    /// Entries held, live or remembered.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}
