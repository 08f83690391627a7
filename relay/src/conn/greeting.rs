//! The greeting of one connection, sans-IO: from the first byte after TLS to the moment the
//! connection becomes one side of a session (an operator with a fresh code, or a client
//! that took a code), or is refused.
//!
//! ```text
//! Hello ─▶ Login  ─▶ reserve ─▶ (slow-down) ─▶ authenticate ─▶ LoginOk ─▶ RequestCode ─▶ check account ─▶ issue
//!      ├─▶ Join   ─▶ reserve ─▶ (slow-down) ─▶ take code ─────────────────────────────────────────────▶ join
//!      └─▶ Resume ─▶ reserve ─▶ (slow-down) ─▶ take seat (token + signature) ─────────────────────────▶ resume
//! ```
//!
//! Frames and time go in ([`Greeting::handle_frame`], [`Greeting::handle_timeout`]); what
//! the relay must do comes out ([`Greeting::poll_action`]), with the next deadline
//! ([`Greeting::poll_timeout`]). Steps that need the outside world (the throttle, argon2,
//! the account store, the directory) are asked for as actions, and their results come back
//! as [`Event`]s, as quinn-proto's endpoint events do. The machine reads no clock and does
//! no I/O, so tests drive it with a fake clock and no sockets.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use tsunagu_proto::pb::{self, frame::Body, Frame};
use tsunagu_proto::{PermissionSet, SessionCode, PROTOCOL_VERSION};

use super::refusal::Refusal;
use crate::audit;
use crate::directory::JoinRefusal;
use crate::resume::ResumeRefusal;
use crate::store::OperatorRecord;
use crate::throttle::{ReserveError, Throttled, Ticket};

/// How long the relay waits for the peer at each step of the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// For `Hello`, then for `Login` or `Join` (`timeouts.greeting`).
    pub greeting: Duration,
    /// For `RequestCode` after a login: an operator may log in and wait (`timeouts.idle`).
    pub idle: Duration,
}

/// Which throttle an attempt goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptKind {
    /// An operator's login (password and second factor).
    Login,
    /// A client's session code.
    Code,
}

/// How a reserved attempt is settled with the throttle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// The code was right.
    Succeeded,
    /// A wrong code or secret: it counts against the source and the budget.
    Failed,
    /// A right password (even on a suspended account) or a check that could not run.
    Refund,
}

/// What the relay must do next for this connection, in order.
#[derive(Debug, Clone)]
pub enum Action {
    /// Write this frame to the peer.
    Send(Frame),
    /// Reserve an attempt with the throttle: for this account's login, or for a session
    /// code when `None`. Answer with [`Event::Reserved`].
    Reserve { account: Option<String> },
    /// Check the operator's password (through the verifier pool) and second factor, then
    /// suspension and IP rules. Answer with [`Event::Authenticated`].
    Authenticate(pb::Login),
    /// Settle a reserved attempt with its throttle.
    Settle(AttemptKind, Ticket, Settle),
    /// Append to the audit trail.
    Audit(audit::Entry),
    /// The peer proved who it is (a login, or a code taken): its connection leaves the
    /// unauthenticated pool.
    Authenticated,
    /// Look the operator's account up again (it may have changed since the login: the
    /// relay's copy is forgotten at every change, see `operator_cache`) and check it may run
    /// one more session from this address. Answer with [`Event::AccountChecked`].
    CheckAccount { operator: String },
    /// Take the session behind this code for the client. Answer with [`Event::CodeTaken`].
    TakeCode(SessionCode),
    /// Find the session and check the resume's token and signature against its side's
    /// seat (spending the token). Answer with [`Event::SeatTaken`].
    TakeSeat(pb::Resume),
    /// Done: issue a code for a session asking for `requested` (`asked` once clipped to
    /// what the admin allows), record it, tell the operator and run its side.
    Issue {
        record: OperatorRecord,
        requested: PermissionSet,
        asked: PermissionSet,
        /// The operator's resume key (empty: it cannot resume).
        resume_key: Vec<u8>,
    },
    /// Done: attach the client, whose host name is `host` (already made inert and short),
    /// to the session it took, and run its side.
    Join { host: String, resume_key: Vec<u8> },
    /// Done: the resumed endpoint takes its side (`operator`: the operator's) of the session
    /// whose seat it took back, and runs it.
    Resume { operator: bool },
    /// Done: renew the client certificate `operator` logged in with, for the key of the
    /// PKCS#10 request `csr`; answer `CertificateRenewed` or an error, and close.
    RenewCertificate { operator: String, csr: Vec<u8> },
    /// Done: tell the peer why, when there is something to tell, and close.
    Close(Option<Refusal>),
}

/// A result the relay feeds back for an action that needed the outside world.
#[derive(Debug, Clone)]
pub enum Event {
    Reserved(Result<Ticket, ReserveError>),
    /// The login's outcome; with a refusal, whether the name matched an account (which
    /// decides what the audit trail may record).
    Authenticated(Result<OperatorRecord, (Refusal, bool)>),
    AccountChecked(Result<OperatorRecord, Refusal>),
    CodeTaken(Result<(), JoinRefusal>),
    /// `Err(None)`: the grid's shared state could not be reached.
    SeatTaken(Result<(), Option<ResumeRefusal>>),
    /// The node takes no more resumes this instant (its admission rate is spent): the
    /// endpoint is told to try again shortly, and nothing was looked at.
    ResumeBusy,
}

/// What the attempt being reserved is for.
#[derive(Debug, Clone)]
enum Attempt {
    Login(pb::Login),
    Join(pb::Join),
    Resume(pb::Resume),
}

#[derive(Debug)]
enum State {
    AwaitHello,
    AwaitLoginOrJoin,
    /// Waiting for [`Event::Reserved`].
    Reserving(Attempt),
    /// Waiting out the slow-down the throttle asked for.
    SlowDown(Attempt, Ticket),
    Authenticating(pb::Login, Ticket),
    AwaitRequestCode(String),
    CheckingAccount(String, PermissionSet, Vec<u8>),
    TakingSeat(bool, Ticket),
    TakingCode(pb::Join, Ticket),
    /// An action that ends the greeting was handed out.
    Done,
}

/// One connection's greeting. See the module documentation.
#[derive(Debug)]
pub struct Greeting {
    state: State,
    timeouts: Timeouts,
    ip: IpAddr,
    deadline: Option<Instant>,
    actions: VecDeque<Action>,
}

/// What the relay tells about itself in its `Hello`.
pub const AGENT: &str = concat!("tsunagu-relay/", env!("CARGO_PKG_VERSION"));

impl Greeting {
    /// A connection from `ip` whose TLS handshake finished at `now`.
    pub fn new(ip: IpAddr, timeouts: Timeouts, now: Instant) -> Self {
        Self {
            state: State::AwaitHello,
            timeouts,
            ip,
            deadline: Some(now + timeouts.greeting),
            actions: VecDeque::new(),
        }
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Greeting::handle_timeout`] must be called, if nothing comes before.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether the machine waits for a frame from the peer (otherwise it waits for an
    /// [`Event`] or its deadline, and the peer's frames stay unread).
    pub fn wants_frame(&self) -> bool {
        matches!(
            self.state,
            State::AwaitHello | State::AwaitLoginOrJoin | State::AwaitRequestCode(_)
        )
    }

    /// Whether the greeting is over (an `Issue`, `Join` or `Close` was handed out).
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn finish(&mut self, last: Action) {
        self.state = State::Done;
        self.deadline = None;
        self.actions.push_back(last);
    }

    fn refuse(&mut self, refusal: Refusal) {
        self.finish(Action::Close(Some(refusal)));
    }

    /// A frame from the peer.
    pub fn handle_frame(&mut self, now: Instant, frame: Frame) {
        let body = frame.body;
        match std::mem::replace(&mut self.state, State::Done) {
            State::AwaitHello => match body {
                Some(Body::Hello(h)) if h.version == PROTOCOL_VERSION => {
                    self.actions
                        .push_back(Action::Send(tsunagu_proto::transport::hello(AGENT)));
                    self.state = State::AwaitLoginOrJoin;
                    self.deadline = Some(now + self.timeouts.greeting);
                }
                Some(Body::Hello(h)) => self.refuse(Refusal::VersionMismatch {
                    ours: PROTOCOL_VERSION,
                    theirs: h.version,
                }),
                _ => self.refuse(Refusal::NoHello),
            },
            State::AwaitLoginOrJoin => match body {
                Some(Body::Login(login)) => self.reserve(Attempt::Login(login)),
                Some(Body::Join(join)) => self.reserve(Attempt::Join(join)),
                Some(Body::Resume(resume)) => self.reserve(Attempt::Resume(resume)),
                _ => self.refuse(Refusal::ExpectedLoginOrJoin),
            },
            State::AwaitRequestCode(operator) => match body {
                Some(Body::RequestCode(rc)) => {
                    let asked = PermissionSet::from_wire(&rc.permissions);
                    // Asking for nothing in particular is asking for everything allowed.
                    let requested = if asked.is_empty() { PermissionSet::ALL } else { asked };
                    self.actions.push_back(Action::CheckAccount {
                        operator: operator.clone(),
                    });
                    self.state = State::CheckingAccount(operator, requested, rc.resume_key.to_vec());
                    self.deadline = None;
                }
                Some(Body::RenewCertificate(r)) if r.csr.len() <= tsunagu_proto::limits::MAX_CSR => {
                    self.finish(Action::RenewCertificate {
                        operator: operator.clone(),
                        csr: r.csr.to_vec(),
                    });
                }
                _ => self.refuse(Refusal::ExpectedRequestCode),
            },
            // Frames are not read while the machine waits for the outside world.
            other => self.state = other,
        }
    }

    /// The peer's stream ended, or a frame could not be decoded (`Some` with the decoder's
    /// explanation).
    pub fn handle_close(&mut self, malformed: Option<String>) {
        if self.is_done() {
            return;
        }
        match (&self.state, malformed) {
            // Before its Hello the peer may not speak this protocol at all: nothing to say.
            (State::AwaitHello, _) | (_, None) => self.finish(Action::Close(None)),
            (_, Some(why)) => self.refuse(Refusal::Malformed(why)),
        }
    }

    /// Time passed: call at [`Greeting::poll_timeout`] or later.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_none_or(|d| now < d) {
            return;
        }
        self.deadline = None;
        match std::mem::replace(&mut self.state, State::Done) {
            State::SlowDown(attempt, ticket) => self.check(attempt, ticket),
            // Before its Hello the peer may not speak this protocol at all: nothing to say.
            State::AwaitHello => self.finish(Action::Close(None)),
            State::AwaitLoginOrJoin => self.refuse(Refusal::Timeout(self.timeouts.greeting)),
            State::AwaitRequestCode(_) => self.refuse(Refusal::Timeout(self.timeouts.idle)),
            other => self.state = other,
        }
    }

    /// The result of an action that needed the outside world.
    pub fn handle_event(&mut self, now: Instant, event: Event) {
        match (std::mem::replace(&mut self.state, State::Done), event) {
            (State::Reserving(attempt), Event::Reserved(reserved)) => match reserved {
                Ok(ticket) if ticket.delay.is_zero() => self.check(attempt, ticket),
                Ok(ticket) => {
                    self.deadline = Some(now + ticket.delay);
                    self.state = State::SlowDown(attempt, ticket);
                }
                Err(ReserveError::Throttled(Throttled { retry_after })) => {
                    self.refuse(Refusal::Throttled { retry_after })
                }
                // Fail closed: an attempt the throttle could not count is never checked.
                Err(ReserveError::Unavailable) => self.refuse(Refusal::Unavailable),
            },
            (State::Authenticating(login, ticket), Event::Authenticated(result)) => {
                let settle = match &result {
                    Err((refusal, _)) if refusal.is_wrong_secret() => Settle::Failed,
                    _ => Settle::Refund,
                };
                self.actions
                    .push_back(Action::Settle(AttemptKind::Login, ticket, settle));
                match result {
                    Ok(record) => self.logged_in(now, record),
                    Err((refusal, account_known)) => {
                        // A name that matches no account may be a password typed into the
                        // wrong field: it is never written down.
                        let (actor, target) = if account_known {
                            (format!("operator:{}", login.user), login.user.clone())
                        } else {
                            ("operator:(unknown account)".to_string(), String::new())
                        };
                        self.audit(actor, "operator_login_failed", target, error_detail(&refusal));
                        self.refuse(refusal);
                    }
                }
            }
            (State::CheckingAccount(operator, requested, resume_key), Event::AccountChecked(checked)) => {
                let refused = |r: Refusal| Err(r);
                let outcome = checked.and_then(|record| {
                    let asked = requested.intersect(record.permissions);
                    if asked.is_empty() {
                        refused(Refusal::NothingAllowed)
                    } else {
                        Ok((record, asked))
                    }
                });
                match outcome {
                    Ok((record, asked)) => self.finish(Action::Issue {
                        record,
                        requested,
                        asked,
                        resume_key,
                    }),
                    Err(refusal) => {
                        let detail = refusal.told().1;
                        self.audit(format!("operator:{operator}"), "code_refused", operator.clone(), detail);
                        self.refuse(refusal);
                    }
                }
            }
            (State::TakingCode(join, ticket), Event::CodeTaken(taken)) => match taken {
                Ok(()) => {
                    self.actions
                        .push_back(Action::Settle(AttemptKind::Code, ticket, Settle::Succeeded));
                    self.actions.push_back(Action::Authenticated);
                    self.finish(Action::Join {
                        host: clean_host_name(&join.host_name),
                        resume_key: join.resume_key.to_vec(),
                    });
                }
                // Nothing was looked at: the attempt costs the client nothing.
                Err(JoinRefusal::Unavailable) => {
                    self.actions
                        .push_back(Action::Settle(AttemptKind::Code, ticket, Settle::Refund));
                    self.refuse(Refusal::Unavailable);
                }
                Err(r) => self.join_failed(ticket, r.into()),
            },
            (State::TakingSeat(_, ticket), Event::ResumeBusy) => {
                self.actions
                    .push_back(Action::Settle(AttemptKind::Code, ticket, Settle::Refund));
                self.refuse(Refusal::Busy);
            }
            (State::TakingSeat(operator, ticket), Event::SeatTaken(taken)) => match taken {
                Ok(()) => {
                    self.actions
                        .push_back(Action::Settle(AttemptKind::Code, ticket, Settle::Succeeded));
                    self.actions.push_back(Action::Authenticated);
                    self.finish(Action::Resume { operator });
                }
                Err(None) => {
                    self.actions
                        .push_back(Action::Settle(AttemptKind::Code, ticket, Settle::Refund));
                    self.refuse(Refusal::Unavailable);
                }
                Err(Some(r)) => {
                    // A session that is simply over costs the endpoint nothing; a wrong token
                    // or signature counts as a guess.
                    let settle = if r.is_wrong_secret() {
                        Settle::Failed
                    } else {
                        Settle::Refund
                    };
                    self.actions
                        .push_back(Action::Settle(AttemptKind::Code, ticket, settle));
                    let actor = if operator { "operator" } else { "client" };
                    self.audit(
                        actor.into(),
                        "session_resume_refused",
                        String::new(),
                        format!("reason={}", r.name()),
                    );
                    self.refuse(Refusal::ResumeRefused(r));
                }
            },
            // An event the machine did not ask for: a bug in the shell; ignore it.
            (state, _) => self.state = state,
        }
    }

    fn reserve(&mut self, attempt: Attempt) {
        // The attempt takes its token before the password, TOTP or code is looked at, so a
        // burst of parallel attempts gets no more real checks than the budget holds.
        let account = match &attempt {
            Attempt::Login(login) => Some(login.user.clone()),
            // Resumes share the codes' budget: a token is a secret like a code.
            Attempt::Join(_) | Attempt::Resume(_) => None,
        };
        self.actions.push_back(Action::Reserve { account });
        self.state = State::Reserving(attempt);
        self.deadline = None;
    }

    /// The attempt holds its token (and waited out any slow-down): check it.
    fn check(&mut self, attempt: Attempt, ticket: Ticket) {
        match attempt {
            Attempt::Login(login) => {
                self.actions.push_back(Action::Authenticate(login.clone()));
                self.state = State::Authenticating(login, ticket);
            }
            Attempt::Join(join) => match SessionCode::parse(&join.code) {
                Ok(code) => {
                    self.actions.push_back(Action::TakeCode(code));
                    self.state = State::TakingCode(join, ticket);
                }
                Err(_) => self.join_failed(ticket, Refusal::MalformedCode),
            },
            Attempt::Resume(resume) => {
                let operator = resume.operator;
                self.actions.push_back(Action::TakeSeat(resume));
                self.state = State::TakingSeat(operator, ticket);
            }
        }
    }

    fn logged_in(&mut self, now: Instant, record: OperatorRecord) {
        let operator = record.name.clone();
        self.actions.push_back(Action::Authenticated);
        self.audit(
            format!("operator:{operator}"),
            "operator_login",
            operator.clone(),
            String::new(),
        );
        self.actions.push_back(Action::Send(Frame {
            body: Some(Body::LoginOk(pb::LoginOk {
                operator: operator.clone(),
                allowed: record.permissions.to_wire(),
            })),
        }));
        // The operator asks for a code next; it may take its time (the idle timeout).
        self.state = State::AwaitRequestCode(operator);
        self.deadline = Some(now + self.timeouts.idle);
    }

    fn join_failed(&mut self, ticket: Ticket, refusal: Refusal) {
        self.actions
            .push_back(Action::Settle(AttemptKind::Code, ticket, Settle::Failed));
        self.audit(
            "client".into(),
            "code_join_failed",
            String::new(),
            error_detail(&refusal),
        );
        self.refuse(refusal);
    }

    fn audit(&mut self, actor: String, action: &'static str, target: String, detail: String) {
        self.actions.push_back(Action::Audit(audit::Entry {
            actor,
            action,
            target,
            ip: self.ip.to_string(),
            detail,
        }));
    }
}

/// The audit detail of a refused login or join: the error's name, never what was typed.
fn error_detail(refusal: &Refusal) -> String {
    format!("error={}", tsunagu_proto::types::error_code_name(refusal.code()))
}

/// Host names are chosen by the client: keep them short and free of control characters.
pub fn clean_host_name(raw: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ThrottleConfig;
    use crate::throttle::{Scope, Throttle};
    use tsunagu_proto::pb::ErrorCode;

    const GREETING: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(300);

    fn machine(now: Instant) -> Greeting {
        let timeouts = Timeouts {
            greeting: GREETING,
            idle: IDLE,
        };
        Greeting::new("192.0.2.7".parse().unwrap(), timeouts, now)
    }

    fn body(b: Body) -> Frame {
        Frame { body: Some(b) }
    }

    fn hello(version: u32) -> Frame {
        body(Body::Hello(pb::Hello {
            version,
            agent: "test".into(),
        }))
    }

    fn login(user: &str, password: &str) -> Frame {
        body(Body::Login(pb::Login {
            user: user.into(),
            password: password.into(),
            totp: String::new(),
        }))
    }

    fn join(code: &str, host_name: &str) -> Frame {
        body(Body::Join(pb::Join {
            code: code.into(),
            host_name: host_name.into(),
            ..Default::default()
        }))
    }

    fn ticket(now: Instant) -> Ticket {
        Throttle::new(ThrottleConfig::default(), now)
            .reserve(Scope::CODES, "192.0.2.7".parse().unwrap(), now)
            .unwrap()
    }

    fn record(name: &str, permissions: PermissionSet) -> OperatorRecord {
        OperatorRecord {
            name: name.into(),
            password_hash: String::new(),
            permissions,
            suspended: false,
            max_sessions: 0,
            totp_secret: None,
            totp_required: false,
            cert_required: false,
            ip_rules: Vec::new(),
            created_at: 0,
        }
    }

    fn drain(g: &mut Greeting) -> Vec<Action> {
        std::iter::from_fn(|| g.poll_action()).collect()
    }

    /// What the peer is told when the machine closes, or `None` for a silent close.
    fn closed_with(actions: &[Action]) -> Option<(ErrorCode, String)> {
        match actions.last() {
            Some(Action::Close(r)) => r.as_ref().map(Refusal::told),
            other => panic!("expected a close, got {other:?}"),
        }
    }

    /// What the peer is told when `frame` arrives at `g`, which closes on it.
    fn told_on(mut g: Greeting, now: Instant, frame: Frame) -> Option<(ErrorCode, String)> {
        g.handle_frame(now, frame);
        closed_with(&drain(&mut g))
    }

    /// A machine past `Hello`.
    fn greeted(now: Instant) -> Greeting {
        let mut g = machine(now);
        g.handle_frame(now, hello(PROTOCOL_VERSION));
        assert!(matches!(drain(&mut g)[..], [Action::Send(_)]));
        g
    }

    /// A machine past `Login` and `LoginOk`, for operator `ana`.
    fn logged_in(now: Instant) -> Greeting {
        let mut g = greeted(now);
        g.handle_frame(now, login("ana", "pw"));
        assert!(matches!(drain(&mut g)[..], [Action::Reserve { account: Some(ref a) }] if a == "ana"));
        g.handle_event(now, Event::Reserved(Ok(ticket(now))));
        assert!(matches!(drain(&mut g)[..], [Action::Authenticate(_)]));
        assert!(!g.wants_frame(), "the peer is not read while the password is checked");
        g.handle_event(now, Event::Authenticated(Ok(record("ana", PermissionSet::ALL))));
        let actions = drain(&mut g);
        assert!(matches!(
            actions[..],
            [
                Action::Settle(AttemptKind::Login, _, Settle::Refund),
                Action::Authenticated,
                Action::Audit(_),
                Action::Send(_)
            ]
        ));
        g
    }

    #[test]
    fn the_first_message_must_be_a_hello_of_this_version() {
        let t0 = Instant::now();
        let mut g = machine(t0);
        g.handle_frame(t0, hello(PROTOCOL_VERSION + 1));
        let (code, message) = closed_with(&drain(&mut g)).unwrap();
        assert_eq!(code, ErrorCode::VersionMismatch);
        assert!(message.contains("update the older side"), "{message}");
        assert!(g.is_done());

        assert_eq!(
            told_on(machine(t0), t0, body(Body::Join(pb::Join::default()))),
            Some((ErrorCode::Protocol, "the first message must be Hello".into()))
        );

        assert_eq!(
            told_on(greeted(t0), t0, body(Body::Ping(pb::Ping { nonce: 1 }))),
            Some((ErrorCode::Protocol, "expected Login or Join".into()))
        );
    }

    #[test]
    fn a_silent_peer_is_cut_off_at_each_step() {
        let t0 = Instant::now();
        // No Hello: closed without a word (it may not speak this protocol at all).
        let mut g = machine(t0);
        assert_eq!(g.poll_timeout(), Some(t0 + GREETING));
        g.handle_timeout(t0 + GREETING - Duration::from_millis(1));
        assert!(!g.is_done(), "not before the deadline");
        g.handle_timeout(t0 + GREETING);
        assert_eq!(closed_with(&drain(&mut g)), None);

        // Hello, then nothing: told it timed out.
        let t1 = t0 + Duration::from_secs(3);
        let mut g = machine(t0);
        g.handle_frame(t1, hello(PROTOCOL_VERSION));
        drain(&mut g);
        assert_eq!(g.poll_timeout(), Some(t1 + GREETING), "the greeting clock restarts");
        g.handle_timeout(t1 + GREETING);
        assert_eq!(
            closed_with(&drain(&mut g)),
            Some((
                ErrorCode::Timeout,
                format!("timed out after {GREETING:?} waiting for the peer")
            ))
        );

        // Logged in, then no RequestCode within the idle timeout.
        let mut g = logged_in(t0);
        assert_eq!(g.poll_timeout(), Some(t0 + IDLE));
        g.handle_timeout(t0 + IDLE);
        assert_eq!(closed_with(&drain(&mut g)).unwrap().0, ErrorCode::Timeout);
    }

    #[test]
    fn a_throttled_login_is_told_when_to_try_again_and_never_checked() {
        let t0 = Instant::now();
        let mut g = greeted(t0);
        g.handle_frame(t0, body(Body::Login(pb::Login::default())));
        drain(&mut g);
        g.handle_event(
            t0,
            Event::Reserved(Err(ReserveError::Throttled(Throttled {
                retry_after: Duration::from_secs(42),
            }))),
        );
        let actions = drain(&mut g);
        assert_eq!(actions.len(), 1, "no password check: {actions:?}");
        assert_eq!(
            closed_with(&actions),
            Some((
                ErrorCode::Throttled,
                "too many failed attempts; try again in 42 s".into()
            ))
        );
    }

    #[test]
    fn an_attempt_the_throttle_cannot_count_is_refused_as_unavailable_and_never_checked() {
        let t0 = Instant::now();
        let mut g = greeted(t0);
        g.handle_frame(t0, body(Body::Join(pb::Join::default())));
        drain(&mut g);
        g.handle_event(t0, Event::Reserved(Err(ReserveError::Unavailable)));
        let actions = drain(&mut g);
        assert_eq!(actions.len(), 1, "no code taken: {actions:?}");
        assert_eq!(closed_with(&actions).map(|c| c.0), Some(ErrorCode::Unavailable));
        // A node past its resume admission rate: try again, nothing charged.
        let mut g = taking_seat(t0, false);
        g.handle_event(t0, Event::ResumeBusy);
        let actions = drain(&mut g);
        assert!(matches!(
            actions[0],
            Action::Settle(AttemptKind::Code, _, Settle::Refund)
        ));
        assert_eq!(closed_with(&actions).map(|c| c.0), Some(ErrorCode::Busy));
    }

    #[test]
    fn a_slowed_attempt_is_checked_only_after_its_delay() {
        let t0 = Instant::now();
        let mut g = greeted(t0);
        g.handle_frame(t0, join("12345678", "pc\u{1b}-01"));
        drain(&mut g);
        let mut slowed = ticket(t0);
        slowed.delay = Duration::from_millis(700);
        g.handle_event(t0, Event::Reserved(Ok(slowed)));
        assert!(drain(&mut g).is_empty(), "nothing is checked during the slow-down");
        assert_eq!(g.poll_timeout(), Some(t0 + slowed.delay));
        g.handle_timeout(t0 + slowed.delay);
        let actions = drain(&mut g);
        assert!(matches!(actions[..], [Action::TakeCode(c)] if c.reveal() == "12345678"));
        g.handle_event(t0, Event::CodeTaken(Ok(())));
        let actions = drain(&mut g);
        assert!(matches!(
            actions[..],
            [
                Action::Settle(AttemptKind::Code, _, Settle::Succeeded),
                Action::Authenticated,
                Action::Join { ref host, .. }
            ] if host == "pc-01"
        ));
        assert!(g.is_done());
    }

    fn resume(operator: bool) -> Frame {
        body(Body::Resume(pb::Resume {
            session_id: "0123abcd".into(),
            operator,
            token: vec![1; 32].into(),
            signature: vec![2; 64].into(),
        }))
    }

    /// A machine past `Hello` that reserved and is taking the seat of a `Resume`.
    fn taking_seat(t0: Instant, operator: bool) -> Greeting {
        let mut g = machine(t0);
        g.handle_frame(t0, hello(PROTOCOL_VERSION));
        g.handle_frame(t0, resume(operator));
        let actions = drain(&mut g);
        assert!(matches!(
            actions[..],
            [Action::Send(_), Action::Reserve { account: None }]
        ));
        g.handle_event(t0, Event::Reserved(Ok(ticket(t0))));
        let actions = drain(&mut g);
        assert!(
            matches!(&actions[..], [Action::TakeSeat(r)] if r.session_id == "0123abcd" && r.operator == operator),
            "{actions:?}"
        );
        g
    }

    #[test]
    fn a_resume_takes_its_seat_after_the_throttle_and_hands_the_side_back() {
        let t0 = Instant::now();
        let mut g = taking_seat(t0, true);
        g.handle_event(t0, Event::SeatTaken(Ok(())));
        let actions = drain(&mut g);
        assert!(matches!(
            actions[..],
            [
                Action::Settle(AttemptKind::Code, _, Settle::Succeeded),
                Action::Authenticated,
                Action::Resume { operator: true }
            ]
        ));
        assert!(g.is_done());
    }

    #[test]
    fn a_refused_resume_is_audited_and_only_a_wrong_secret_costs_an_attempt() {
        let t0 = Instant::now();
        for (refusal, settle, code) in [
            (ResumeRefusal::WrongToken, Settle::Failed, ErrorCode::ResumeRefused),
            (ResumeRefusal::BadSignature, Settle::Failed, ErrorCode::ResumeRefused),
            (ResumeRefusal::NotResumable, Settle::Refund, ErrorCode::ResumeRefused),
            (ResumeRefusal::UnknownSession, Settle::Refund, ErrorCode::Expired),
        ] {
            let mut g = taking_seat(t0, false);
            g.handle_event(t0, Event::SeatTaken(Err(Some(refusal))));
            let actions = drain(&mut g);
            assert!(
                matches!(&actions[..], [Action::Settle(AttemptKind::Code, _, s), Action::Audit(e), Action::Close(Some(_))]
                    if *s == settle && e.action == "session_resume_refused" && e.actor == "client"
                        && e.detail == format!("reason={}", refusal.name()) && e.ip == "192.0.2.7"),
                "{refusal:?}: {actions:?}"
            );
            assert_eq!(closed_with(&actions).map(|c| c.0), Some(code));
        }
        // The grid's state out of reach: nothing decided, nothing charged.
        let mut g = taking_seat(t0, false);
        g.handle_event(t0, Event::SeatTaken(Err(None)));
        let actions = drain(&mut g);
        assert!(matches!(
            actions[0],
            Action::Settle(AttemptKind::Code, _, Settle::Refund)
        ));
        assert_eq!(closed_with(&actions).map(|c| c.0), Some(ErrorCode::Unavailable));
    }

    #[test]
    fn refused_codes_cost_an_attempt_and_are_audited_by_error_name() {
        let t0 = Instant::now();
        for (code, taken, expected) in [
            ("12ab", None, (ErrorCode::BadCode, "a session code has 8 digits")),
            (
                "12345678",
                Some(JoinRefusal::Unknown),
                (
                    ErrorCode::BadCode,
                    "no session has this code; check the digits with the operator",
                ),
            ),
            (
                "12345678",
                Some(JoinRefusal::Expired),
                (
                    ErrorCode::Expired,
                    "this code has expired; ask the operator for a new one",
                ),
            ),
            (
                "12345678",
                Some(JoinRefusal::Used),
                (
                    ErrorCode::Used,
                    "this code was already used; ask the operator for a new one",
                ),
            ),
        ] {
            let mut g = greeted(t0);
            g.handle_frame(t0, join(code, ""));
            drain(&mut g);
            g.handle_event(t0, Event::Reserved(Ok(ticket(t0))));
            if let Some(refusal) = taken {
                assert!(matches!(drain(&mut g)[..], [Action::TakeCode(_)]));
                g.handle_event(t0, Event::CodeTaken(Err(refusal)));
            }
            let actions = drain(&mut g);
            assert!(matches!(
                actions[0],
                Action::Settle(AttemptKind::Code, _, Settle::Failed)
            ));
            let Action::Audit(entry) = &actions[1] else {
                panic!("expected an audit entry, got {actions:?}")
            };
            assert_eq!(entry.action, "code_join_failed");
            assert!(!entry.detail.contains(code), "the code typed is never written down");
            assert_eq!(closed_with(&actions), Some((expected.0, expected.1.to_string())));
        }
    }

    #[test]
    fn logins_refused_for_unknown_names_do_not_write_the_name_down() {
        let t0 = Instant::now();
        for (refusal, known, settle) in [
            (Refusal::WrongPassword, false, Settle::Failed),
            (Refusal::WrongTotp, true, Settle::Failed),
            (Refusal::Suspended, true, Settle::Refund),
            (Refusal::Busy, false, Settle::Refund),
        ] {
            let mut g = greeted(t0);
            g.handle_frame(t0, login("Secret-Typed-Here", "x"));
            drain(&mut g);
            g.handle_event(t0, Event::Reserved(Ok(ticket(t0))));
            drain(&mut g);
            g.handle_event(t0, Event::Authenticated(Err((refusal.clone(), known))));
            let actions = drain(&mut g);
            assert!(
                matches!(actions[0], Action::Settle(AttemptKind::Login, _, s) if s == settle),
                "{refusal:?}"
            );
            let Action::Audit(entry) = &actions[1] else { panic!() };
            assert_eq!(entry.action, "operator_login_failed");
            assert_eq!(entry.actor.contains("Secret-Typed-Here"), known);
            assert_eq!(closed_with(&actions), Some(refusal.told()));
        }
    }

    #[test]
    fn a_logged_in_operator_may_ask_for_a_certificate_renewal_of_bounded_size() {
        let t0 = Instant::now();
        let mut g = logged_in(t0);
        g.handle_frame(
            t0,
            body(Body::RenewCertificate(pb::RenewCertificate {
                csr: vec![7u8; 300].into(),
            })),
        );
        assert!(matches!(
            drain(&mut g)[..],
            [Action::RenewCertificate { ref operator, ref csr }] if operator == "ana" && csr.len() == 300
        ));

        // A request larger than any real one is refused unread.
        let mut g = logged_in(t0);
        g.handle_frame(
            t0,
            body(Body::RenewCertificate(pb::RenewCertificate {
                csr: vec![7u8; tsunagu_proto::limits::MAX_CSR + 1].into(),
            })),
        );
        let actions = drain(&mut g);
        assert_eq!(closed_with(&actions), Some(Refusal::ExpectedRequestCode.told()));
    }

    #[test]
    fn a_code_is_issued_only_for_what_the_admin_allows() {
        let t0 = Instant::now();
        let view_chat = PermissionSet::parse_names(["view", "chat"]).unwrap();
        let control = PermissionSet::parse_names(["control"]).unwrap();

        let mut g = logged_in(t0);
        g.handle_frame(
            t0,
            body(Body::RequestCode(pb::RequestCode {
                permissions: vec![],
                ..Default::default()
            })),
        );
        assert!(matches!(drain(&mut g)[..], [Action::CheckAccount { ref operator }] if operator == "ana"));
        g.handle_event(t0, Event::AccountChecked(Ok(record("ana", view_chat))));
        let actions = drain(&mut g);
        assert!(matches!(
            actions[..],
            [Action::Issue { requested, asked, .. }] if requested == PermissionSet::ALL && asked == view_chat
        ));

        // Asking only for what the admin does not allow.
        let mut g = logged_in(t0);
        g.handle_frame(
            t0,
            body(Body::RequestCode(pb::RequestCode {
                permissions: control.to_wire(),
                ..Default::default()
            })),
        );
        drain(&mut g);
        g.handle_event(t0, Event::AccountChecked(Ok(record("ana", view_chat))));
        let actions = drain(&mut g);
        let Action::Audit(entry) = &actions[0] else { panic!() };
        assert_eq!(entry.action, "code_refused");
        assert_eq!(entry.detail, "the admin allows none of the permissions asked for");
        assert_eq!(
            closed_with(&actions),
            Some((ErrorCode::Forbidden, entry.detail.clone()))
        );

        // The account changed since the login.
        let mut g = logged_in(t0);
        g.handle_frame(
            t0,
            body(Body::RequestCode(pb::RequestCode {
                permissions: vec![],
                ..Default::default()
            })),
        );
        drain(&mut g);
        g.handle_event(t0, Event::AccountChecked(Err(Refusal::SessionCap { max: 2 })));
        assert_eq!(
            closed_with(&drain(&mut g)),
            Some((
                ErrorCode::Forbidden,
                "the admin allows this operator at most 2 session(s) at once".into()
            ))
        );

        // Something else than RequestCode.
        assert_eq!(
            told_on(logged_in(t0), t0, body(Body::Join(pb::Join::default()))),
            Some((ErrorCode::Protocol, "expected RequestCode".into()))
        );
    }

    #[test]
    fn a_malformed_frame_is_explained_after_hello_only() {
        let t0 = Instant::now();
        let mut g = machine(t0);
        g.handle_close(Some("bad frame".into()));
        assert_eq!(closed_with(&drain(&mut g)), None);
        let mut g = greeted(t0);
        g.handle_close(Some("bad frame".into()));
        assert_eq!(
            closed_with(&drain(&mut g)),
            Some((ErrorCode::Protocol, "bad frame".into()))
        );
        let mut g = greeted(t0);
        g.handle_close(None);
        assert_eq!(closed_with(&drain(&mut g)), None);
    }

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
