//! The sessions this node runs, by id. The directory says which session a code leads to;
//! the registry holds the session itself while it lives here. A session leaves it when it
//! ends. The console, the account poll and shutdown reach live sessions only through this
//! handle.

use std::sync::Arc;

use dashmap::DashMap;
use tsunagu_proto::pb::EndReason;

use crate::session::Session;
use crate::store::{ip_allowed, OperatorRecord};

/// Session id → session, for the sessions on this node. Cheap to clone.
#[derive(Clone, Default)]
pub struct Registry {
    sessions: Arc<DashMap<String, Arc<Session>>>,
}

/// What [`Registry::enforce_account`] did to an operator's live sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Enforced {
    /// Sessions ended (account gone or suspended, or an address the IP rules now refuse).
    pub ended: usize,
    /// Sessions whose request or grants were narrowed to the permissions now allowed.
    pub narrowed: usize,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a session that starts on this node.
    pub fn insert(&self, session: Arc<Session>) {
        self.sessions.insert(session.id.clone(), session);
    }

    /// The session `id`, while it is on this node.
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions.get(id).map(|e| e.value().clone())
    }

    /// Takes the session `id` out (it ended).
    pub fn remove(&self, id: &str) {
        self.sessions.remove(id);
    }

    /// What a session calls when it ends to leave this registry. Holds the registry
    /// weakly, so the sessions in it do not keep it alive.
    pub fn leave_hook(&self) -> Box<dyn Fn(&str) + Send + Sync> {
        let sessions = Arc::downgrade(&self.sessions);
        Box::new(move |id| {
            if let Some(sessions) = sessions.upgrade() {
                sessions.remove(id);
            }
        })
    }

    /// Sessions held right now, ended or not.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Every session that has not ended.
    pub fn live(&self) -> Vec<Arc<Session>> {
        self.sessions
            .iter()
            .filter(|e| !e.value().is_ended())
            .map(|e| e.value().clone())
            .collect()
    }

    /// Live sessions of `operator` that have not ended.
    pub fn live_of(&self, operator: &str) -> Vec<Arc<Session>> {
        self.sessions
            .iter()
            .filter(|e| e.value().operator == operator && !e.value().is_ended())
            .map(|e| e.value().clone())
            .collect()
    }

    /// The operators with a session on this node, each once.
    pub fn operators(&self) -> Vec<String> {
        let mut operators: Vec<String> = self.sessions.iter().map(|e| e.value().operator.clone()).collect();
        operators.sort();
        operators.dedup();
        operators
    }

    /// Ends every session on this node for `reason`; returns how many there were.
    pub async fn end_all(&self, reason: EndReason) -> usize {
        let sessions: Vec<Arc<Session>> = self.sessions.iter().map(|e| e.value().clone()).collect();
        for s in &sessions {
            s.finish(reason).await;
        }
        sessions.len()
    }

    /// Ends every live session of `operator` at once (suspension, deletion); returns how many.
    pub async fn end_sessions_of(&self, operator: &str) -> usize {
        let sessions = self.live_of(operator);
        for s in &sessions {
            s.finish(EndReason::AdminEnded).await;
        }
        sessions.len()
    }

    /// Ends every live session whose operator logged in with one of `serials` (revoked
    /// client certificates); returns how many.
    pub async fn end_sessions_with_certs(&self, serials: &[String]) -> usize {
        let sessions: Vec<Arc<Session>> = self
            .sessions
            .iter()
            .filter(|e| {
                !e.value().is_ended()
                    && e.value()
                        .operator_cert()
                        .is_some_and(|c| serials.iter().any(|s| s == c))
            })
            .map(|e| e.value().clone())
            .collect();
        for s in &sessions {
            tracing::info!(session = %s.id, operator = %s.operator, "the operator's client certificate was revoked; ending the session");
            s.finish(EndReason::CertificateRevoked).await;
        }
        sessions.len()
    }

    /// Brings the live sessions of `operator` (codes issued, consents pending, sessions
    /// running) in line with the account as stored now, `None` meaning deleted: every
    /// session ends if the account is gone or suspended; a session whose operator
    /// connection comes from an address the IP rules no longer allow ends; the others are
    /// clipped to the permissions the admin allows. Ended sessions get `admin_ended`.
    pub async fn enforce_account(&self, operator: &str, record: Option<&OperatorRecord>) -> Enforced {
        let mut done = Enforced::default();
        let record = match record {
            Some(r) if !r.suspended => r,
            _ => {
                done.ended = self.end_sessions_of(operator).await;
                if done.ended > 0 {
                    tracing::info!(%operator, sessions = done.ended, "ended the sessions of a suspended or deleted operator");
                }
                return done;
            }
        };
        for session in self.live_of(operator) {
            if !ip_allowed(&record.ip_rules, session.operator_addr.ip()) {
                tracing::info!(session = %session.id, %operator, peer = %session.operator_addr, "the operator's IP rules no longer allow this session's address; ending it");
                session.finish(EndReason::AdminEnded).await;
                done.ended += 1;
            } else if session.limit(record.permissions).await {
                done.narrowed += 1;
            }
        }
        done
    }
}
