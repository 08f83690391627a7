//! What admins can do, in one place for the console, the REST API and `tsunagu-relay admin`:
//! each operation validates its input, changes the store, acts on the running relay when
//! there is one (ending sessions), and writes the audit trail.

use tsunagu_proto::PermissionSet;

use crate::accounts;
use crate::audit::{Audit, Entry};
use crate::config::Config;
use crate::registry::Registry;
use crate::store::{IpRule, Store, StoreError, MAX_IP_RULES};
use crate::verifier::{HashError, Verifier};

/// Why an operation was refused; the message is shown to the admin as is.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The admin's input is wrong (bad name, weak password, bad rule...).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The store failed; details are logged, not shown.
    #[error("the relay could not save the change")]
    Internal,
    /// Too many password hashes at once (the verifier pool is saturated); nothing changed.
    #[error("the relay is busy; try again shortly")]
    Busy,
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::OperatorExists(_) | StoreError::AdminExists(_) => OpError::Conflict(e.to_string()),
            StoreError::NoSuchOperator(_) | StoreError::NoSuchAdmin(_) => OpError::NotFound(e.to_string()),
            other => {
                tracing::error!(error = %other, "store error in an admin operation");
                OpError::Internal
            }
        }
    }
}

impl From<accounts::PolicyError> for OpError {
    fn from(e: accounts::PolicyError) -> Self {
        OpError::Invalid(e.to_string())
    }
}

/// Who is acting, for the audit trail: `admin:NAME` from the console or API, `cli` from
/// the command line.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub ip: String,
}

/// The handle operations run on: the store and audit, plus the live relay when there is
/// one (the CLI has none; a running relay applies its changes to live sessions within
/// `database.account_poll`).
#[derive(Clone)]
pub struct Ops {
    pub store: Store,
    pub audit: Audit,
    pub config: Config,
    /// The running relay's sessions, to end or narrow at once; `None` from the CLI.
    pub sessions: Option<Registry>,
    /// The argon2 pool password hashes go through: the relay's own when there is one
    /// (`Shared::verifier`), else one for this process.
    pub verifier: Verifier,
    /// The grid's Redis, to tell the other nodes about account changes and sessions to
    /// end; `None` on a single node.
    pub grid: Option<crate::grid::kv::Redis>,
}

impl Ops {
    /// The operations on a running relay: its store, audit trail, live sessions, argon2
    /// pool and, on a grid node, the grid's Redis.
    pub fn of_relay(shared: &crate::state::Shared) -> Self {
        Self {
            store: shared.store.clone(),
            audit: shared.audit.clone(),
            config: shared.config.clone(),
            sessions: Some(shared.sessions().clone()),
            verifier: shared.verifier.clone(),
            grid: shared.grid().map(|g| g.redis().clone()),
        }
    }
}

async fn hash(password: &str, config: &Config, verifier: &Verifier) -> Result<String, OpError> {
    accounts::check_password(password)?;
    match verifier.hash(password.to_string(), config.accounts.clone()).await {
        Ok(phc) => Ok(phc),
        Err(HashError::Busy(_)) => Err(OpError::Busy),
        Err(e) => {
            tracing::error!(error = %e, "password hashing failed");
            Err(OpError::Internal)
        }
    }
}

/// Parses permission names (`view`, `control`, `files`, `chat`, `all`); an empty list is none.
pub fn parse_permissions<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<PermissionSet, OpError> {
    let names: Vec<&str> = names.into_iter().map(str::trim).filter(|s| !s.is_empty()).collect();
    if names.is_empty() {
        return Ok(PermissionSet::from_bits(0));
    }
    PermissionSet::parse_names(names.iter().copied()).map_err(OpError::Invalid)
}

/// Parses IP rules, one per line (`allow CIDR` / `deny CIDR`); blank lines and `#` comments
/// are skipped.
pub fn parse_ip_rules(text: &str) -> Result<Vec<IpRule>, OpError> {
    let rules = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(IpRule::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(OpError::Invalid)?;
    if rules.len() > MAX_IP_RULES {
        return Err(OpError::Invalid(format!("at most {MAX_IP_RULES} rules per operator")));
    }
    Ok(rules)
}

impl Ops {
    /// Writes one audit row for `actor`'s `action` on `target`.
    pub(super) async fn audit_entry(&self, actor: &Actor, action: &'static str, target: &str, detail: String) {
        self.audit(actor, action, target, detail).await
    }

    async fn audit(&self, actor: &Actor, action: &'static str, target: &str, detail: String) {
        self.audit
            .record(Entry {
                actor: actor.name.clone(),
                action,
                target: target.to_string(),
                ip: actor.ip.clone(),
                detail,
            })
            .await;
    }

    /// Applies the operator's account as stored now to their live sessions on this relay
    /// (none from the CLI: a running relay picks the change up within
    /// `database.account_poll`).
    /// The change is saved already: a failed read here is logged, and the account poll
    /// applies it later.
    async fn enforce(&self, name: &str) {
        let Some(sessions) = &self.sessions else { return };
        match self.store.operator(name).await {
            Ok(record) => {
                sessions.enforce_account(name, record.as_ref()).await;
            }
            Err(e) => tracing::error!(error = %e, "could not apply an account change to live sessions"),
        }
    }

    async fn end_sessions(&self, name: &str) -> usize {
        match &self.sessions {
            Some(sessions) => sessions.end_sessions_of(name).await,
            None => 0,
        }
    }

    /// Tells the grid's other nodes (when there are any) that `name`'s account changed, so
    /// they apply it to their sessions within a second. A hint that cannot be sent is
    /// logged: the nodes' account poll applies the change later.
    async fn tell_grid(&self, hint: crate::grid::hints::Hint) {
        let Some(redis) = &self.grid else { return };
        if let Err(e) = crate::grid::hints::publish(redis, &hint).await {
            tracing::warn!(error = %e, "could not tell the other nodes; they apply the change within database.account_poll");
        }
    }

    async fn account_changed(&self, name: &str) {
        self.tell_grid(crate::grid::hints::Hint::AccountChanged {
            operator: name.to_string(),
        })
        .await;
    }

    /// Tells the grid's other nodes that `name`'s account changed in a way only code issue
    /// checks (this relay's store forgot its own copy when it wrote the change).
    async fn code_issue_changed(&self, name: &str) {
        self.tell_grid(crate::grid::hints::Hint::ForgetOperator {
            operator: name.to_string(),
        })
        .await;
    }

    /// Creates an operator after the name and password policies.
    pub async fn create_operator(
        &self,
        actor: &Actor,
        name: &str,
        password: &str,
        permissions: PermissionSet,
    ) -> Result<(), OpError> {
        accounts::validate_name(name)?;
        let hash = hash(password, &self.config, &self.verifier).await?;
        self.store
            .add_operator(name, &hash, permissions, crate::time::now_ms())
            .await?;
        self.audit(actor, "operator_created", name, format!("permissions={permissions}"))
            .await;
        Ok(())
    }

    /// Sets what the operator may ask for. A permission taken away is also taken from their
    /// live sessions at once: codes not yet joined and consents not yet given offer less,
    /// running sessions lose the grant (both peers see the new state). A permission added
    /// applies from their next code.
    pub async fn set_permissions(&self, actor: &Actor, name: &str, permissions: PermissionSet) -> Result<(), OpError> {
        self.store.set_operator_permissions(name, permissions).await?;
        self.enforce(name).await;
        self.account_changed(name).await;
        self.audit(
            actor,
            "operator_permissions",
            name,
            format!("permissions={permissions}"),
        )
        .await;
        Ok(())
    }

    /// Sets the live-session cap (0 = none), up to 10,000; it holds from the next code, on
    /// every node of a grid.
    pub async fn set_max_sessions(&self, actor: &Actor, name: &str, max: u32) -> Result<(), OpError> {
        // A cap this high is no cap; refusing it catches typos.
        if max > 10_000 {
            return Err(OpError::Invalid("the session limit is 0 (none) to 10000".into()));
        }
        self.store.set_operator_max_sessions(name, max).await?;
        self.code_issue_changed(name).await;
        self.audit(actor, "operator_max_sessions", name, format!("max_sessions={max}"))
            .await;
        Ok(())
    }

    /// Replaces the operator's ordered IP rules. Live sessions whose operator connection
    /// comes from an address the new rules refuse end at once.
    pub async fn set_ip_rules(&self, actor: &Actor, name: &str, rules: &[IpRule]) -> Result<(), OpError> {
        self.store.set_operator_ip_rules(name, rules).await?;
        self.enforce(name).await;
        self.account_changed(name).await;
        let lines: Vec<String> = rules.iter().map(IpRule::to_line).collect();
        self.audit(actor, "operator_ip_rules", name, lines.join("; ")).await;
        Ok(())
    }

    /// Suspends an operator: login and code issue are refused and every live session of
    /// theirs ends at once. Returns how many sessions ended.
    pub async fn suspend(&self, actor: &Actor, name: &str) -> Result<usize, OpError> {
        self.store.set_operator_suspended(name, true).await?;
        let ended = self.end_sessions(name).await;
        self.account_changed(name).await;
        self.audit(actor, "operator_suspended", name, format!("sessions_ended={ended}"))
            .await;
        Ok(ended)
    }

    /// Lifts a suspension.
    pub async fn resume(&self, actor: &Actor, name: &str) -> Result<(), OpError> {
        self.store.set_operator_suspended(name, false).await?;
        self.code_issue_changed(name).await;
        self.audit(actor, "operator_resumed", name, String::new()).await;
        Ok(())
    }

    /// Sets an operator's password after the password policy.
    pub async fn set_password(&self, actor: &Actor, name: &str, password: &str) -> Result<(), OpError> {
        let hash = hash(password, &self.config, &self.verifier).await?;
        self.store.set_operator_password(name, &hash).await?;
        self.audit(actor, "operator_password", name, String::new()).await;
        Ok(())
    }

    /// Renames an operator; their history keeps the old name.
    pub async fn rename(&self, actor: &Actor, name: &str, new_name: &str) -> Result<(), OpError> {
        accounts::validate_name(new_name)?;
        self.store.rename_operator(name, new_name).await?;
        self.code_issue_changed(name).await;
        self.audit(actor, "operator_renamed", name, format!("new_name={new_name}"))
            .await;
        Ok(())
    }

    /// Deletes an operator (their history stays) and ends their live sessions.
    pub async fn delete(&self, actor: &Actor, name: &str) -> Result<(), OpError> {
        self.store.delete_operator(name).await?;
        let ended = self.end_sessions(name).await;
        self.account_changed(name).await;
        self.audit(actor, "operator_deleted", name, format!("sessions_ended={ended}"))
            .await;
        Ok(())
    }

    /// Enrols a fresh TOTP secret for an operator and returns it (shown once, as a QR code).
    pub async fn enrol_operator_totp(&self, actor: &Actor, name: &str) -> Result<String, OpError> {
        let secret = crate::totp::new_secret().map_err(|_| OpError::Internal)?;
        self.store.set_operator_totp(name, Some(&secret)).await?;
        self.audit(actor, "operator_totp_enrolled", name, String::new()).await;
        Ok(secret)
    }

    /// Forgets the operator's TOTP secret.
    pub async fn reset_operator_totp(&self, actor: &Actor, name: &str) -> Result<(), OpError> {
        self.store.set_operator_totp(name, None).await?;
        self.audit(actor, "operator_totp_reset", name, String::new()).await;
        Ok(())
    }

    /// Requires (or not) a TOTP code at the operator's login.
    pub async fn require_operator_totp(&self, actor: &Actor, name: &str, required: bool) -> Result<(), OpError> {
        self.store.set_operator_totp_required(name, required).await?;
        self.audit(actor, "operator_totp_required", name, format!("required={required}"))
            .await;
        Ok(())
    }

    /// Ends one live session at once.
    pub async fn end_session(&self, actor: &Actor, id: &str) -> Result<(), OpError> {
        let session = self.sessions.as_ref().and_then(|s| s.get(id));
        let Some(session) = session else {
            return self.end_session_elsewhere(actor, id).await;
        };
        session.finish(tsunagu_proto::pb::EndReason::AdminEnded).await;
        self.audit(actor, "session_ended", id, format!("operator={}", session.operator))
            .await;
        Ok(())
    }

    /// Ends a session another node of the grid runs: the node that lists it is told.
    async fn end_session_elsewhere(&self, actor: &Actor, id: &str) -> Result<(), OpError> {
        let not_found = || OpError::NotFound("no live session with this id".into());
        let Some(redis) = &self.grid else {
            return Err(not_found());
        };
        let node = crate::grid::live::node_of(redis, id).await.map_err(|e| {
            tracing::warn!(error = %e, "cannot look up the grid's live sessions");
            OpError::Internal
        })?;
        let Some(node) = node else { return Err(not_found()) };
        crate::grid::hints::publish(
            redis,
            &crate::grid::hints::Hint::EndSession {
                session_id: id.to_string(),
            },
        )
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot tell the session's node");
            OpError::Internal
        })?;
        self.audit(actor, "session_ended", id, format!("node={node}")).await;
        Ok(())
    }

    /// Creates a console admin after the name and password policies.
    pub async fn create_admin(&self, actor: &Actor, name: &str, password: &str) -> Result<(), OpError> {
        accounts::validate_name(name)?;
        let hash = hash(password, &self.config, &self.verifier).await?;
        self.store.add_admin(name, &hash, crate::time::now_ms()).await?;
        self.audit(actor, "admin_created", name, String::new()).await;
        Ok(())
    }

    /// Lifts every console lockout of an admin (all source networks) and forgets their failed
    /// attempts; returns how many networks were locked or counting.
    pub async fn unlock_admin(&self, actor: &Actor, name: &str) -> Result<u64, OpError> {
        self.admin_exists(name).await?;
        let cleared = self.store.unlock_admin(name).await?;
        self.audit(actor, "admin_unlocked", name, format!("networks={cleared}"))
            .await;
        Ok(cleared)
    }

    /// Sets an admin's console password after the password policy (an admin who forgot
    /// theirs); their TOTP stays as it is.
    pub async fn set_admin_password(&self, actor: &Actor, name: &str, password: &str) -> Result<(), OpError> {
        self.admin_exists(name).await?;
        let hash = hash(password, &self.config, &self.verifier).await?;
        self.store.set_admin_password(name, &hash).await?;
        self.audit(actor, "admin_password", name, String::new()).await;
        Ok(())
    }

    async fn admin_exists(&self, name: &str) -> Result<(), OpError> {
        match self.store.admin(name).await? {
            Some(_) => Ok(()),
            None => Err(OpError::NotFound(format!("no admin named {name:?}"))),
        }
    }

    /// Clears an admin's TOTP so they enrol again at next login.
    pub async fn reset_admin_totp(&self, actor: &Actor, name: &str) -> Result<(), OpError> {
        self.store.set_admin_totp(name, None).await?;
        self.store.replace_recovery_codes(name, &[]).await?;
        self.audit(actor, "admin_totp_reset", name, String::new()).await;
        Ok(())
    }
}
