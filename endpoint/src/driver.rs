//! The session driver both apps run: one loop from dialling the relay to the session's end,
//! into which the operator and the client plug their own phase machines ([`App`]).
//!
//! The driver owns the [`Link`] to the relay and the select loop over incoming frames, app
//! commands, the app's own wake-ups (capture ticks, pointer reports, timers), the phase
//! deadline and the file pump. It answers pings, reports relay errors, hands file frames to
//! the shared [`Transfers`] engine, delivers chat once and in order ([`ReliableChat`]), ends
//! the run on `Ended`, and sends events out. The app decides what each phase means.
//!
//! **Resume.** Each run draws a session key ([`SessionKey`]); the app sends its public half
//! with `RequestCode` / `Join` ([`Core::resume_key`]) and the driver keeps the relay's latest
//! `ResumeToken`. When the link drops (or the relay says the session `MOVED`) while a token
//! is held and the app is not ending, the driver reconnects by itself: the relays of the list
//! in turn with jittered backoff ([`ReconnectPlan`]) until the token's window is over, then
//! `Resume`; on `Resumed` it goes on over the new link (sequence numbers carry on), re-sends
//! unacknowledged chat, tells file senders where to go on from, and calls
//! [`App::on_resync`]. Meanwhile commands and wake-ups wait (the wait is bounded by the
//! window). A refusal ends the run as a lost connection, with the relay's error.
//!
//! Where things are written once for both apps:
//! * a layer around data payloads (end-to-end encryption): [`crate::link::PayloadLayer`],
//!   which every data payload passes in [`Link`], both ways;
//! * a new app channel (a TCP tunnel): [`Driver::on_data`], the one dispatch of incoming data
//!   by channel (files and chat are handled there for both apps), plus a command on [`Core`]
//!   to send on it, as [`Core::send_chat`] does for chat.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use tsunagu_proto::pb::{self, frame::Body, Channel};
use tsunagu_proto::types::{end_reason_name, error_code_name, permission_name};
use tsunagu_proto::PermissionSet;

use crate::chat::ReliableChat;
use crate::dial::{self, Connected, DialConfig, DialError, RelayEntry};
use crate::headless::{dial_failure, Outcome};
use crate::link::{Incoming, Link, LinkError};
use crate::resume::{jitter_seed, ConnectionEvent, HeldToken, ReconnectPlan, Resync, Role, SessionKey};
use crate::standby::{Site, Standby};
use crate::transfer::{FileCommand, FileEvent, ProgressBars, TransferEvent, Transfers};

/// A deadline far enough away to mean "never" in a `select!`.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365);

/// The events every app has, so the driver can report what it handles itself.
pub trait AppEvent: Send + 'static {
    /// An `error` event.
    fn error(code: &str, message: String) -> Self;
    /// The `ended` event.
    fn ended(reason: &str) -> Self;
    /// A chat message from the other side.
    fn chat(text: String) -> Self;
    /// A file-transfer event.
    fn file(event: FileEvent) -> Self;
    /// A reconnect or the other side's connection state.
    fn connection(event: ConnectionEvent) -> Self;
}

/// Gives an app's event enum what the driver needs: an `error(code, message)` constructor and
/// [`AppEvent`]. The enum must have the variants `Error { code, message }`, `Ended { reason }`,
/// `Chat { text }` (all `String`s), `File(FileEvent)` and
/// `Connection(`[`ConnectionEvent`]`)`.
#[macro_export]
macro_rules! app_event {
    ($event:ty) => {
        impl $event {
            /// An `error` event.
            pub fn error(code: impl Into<String>, message: impl Into<String>) -> Self {
                Self::Error {
                    code: code.into(),
                    message: message.into(),
                }
            }
        }

        impl $crate::driver::AppEvent for $event {
            fn error(code: &str, message: String) -> Self {
                Self::Error {
                    code: code.into(),
                    message,
                }
            }

            fn ended(reason: &str) -> Self {
                Self::Ended {
                    reason: reason.into(),
                }
            }

            fn chat(text: String) -> Self {
                Self::Chat { text }
            }

            fn file(event: $crate::transfer::FileEvent) -> Self {
                Self::File(event)
            }

            fn connection(event: $crate::resume::ConnectionEvent) -> Self {
                Self::Connection(event)
            }
        }
    };
}

/// Sends events to the embedder; a dropped receiver just means nobody listens any more.
pub struct Events<E>(mpsc::Sender<E>);

impl<E> Clone for Events<E> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<E: Send> Events<E> {
    /// Events go to `tx`.
    pub fn new(tx: mpsc::Sender<E>) -> Self {
        Self(tx)
    }

    /// Sends `event`, waiting for room.
    pub async fn emit(&self, event: E) {
        let _ = self.0.send(event).await;
    }

    /// For high-rate events (screen frames): dropped rather than stalling the session when the
    /// consumer is behind.
    pub fn emit_lossy(&self, event: E) {
        let _ = self.0.try_send(event);
    }
}

/// The connection to the relay broke; what happened, for the `connection_lost` error.
#[derive(Debug)]
pub struct Lost(pub String);

impl From<LinkError> for Lost {
    fn from(e: LinkError) -> Self {
        Lost(e.to_string())
    }
}

/// What a handler decided.
#[derive(Debug)]
pub enum Step {
    /// The session goes on.
    Continue,
    /// The run is over.
    Done(Outcome),
}

/// A handler's result: a decision, or a lost connection (which the driver reports).
pub type Handled = Result<Step, Lost>;

/// Where and how to reach the relay.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// The relays, tried in order when dialling and in turn when reconnecting (each with
    /// its ports in order).
    pub relays: Vec<RelayEntry>,
    /// The relay's CA, trusted besides the system's store.
    pub ca: crate::dial::ExtraCa,
    /// One port attempt: TCP connect, TLS handshake, `Hello`.
    pub attempt_timeout: Duration,
    /// Relay silence that counts as a lost connection.
    pub idle_timeout: Duration,
    /// One frame write.
    pub write_timeout: Duration,
    /// Largest frame accepted or sent.
    pub max_frame: usize,
    /// Sent in `Hello` (`tsunagu-operator/0.1.0`).
    pub agent: &'static str,
    /// The client certificate presented to the relay (`--cert`), if any.
    pub identity: Option<Arc<dial::ClientIdentity>>,
    /// A standby relay site and the health checks of the primary (`relays`), shared by
    /// every session of the app; `None`: `relays` alone.
    pub standby: Option<Arc<Standby>>,
}

/// What an app's handlers get from the driver: sending, events, the file engine and the phase
/// deadline.
pub struct Core<E> {
    link: Link,
    events: Events<E>,
    transfers: Transfers,
    bars: ProgressBars,
    /// When the current phase gives up; the app's [`App::on_deadline`] runs then.
    deadline: Option<Instant>,
    /// Chat numbering, acknowledgements and re-sends.
    chat: ReliableChat,
    /// This session's resume key; `None` if none could be drawn (the session then ends on a
    /// drop, as with endpoints that cannot resume).
    key: Option<SessionKey>,
    /// The relay's latest resume token, until it is presented.
    token: Option<HeldToken>,
    /// Losses of this session so far.
    losses: u32,
}

impl<E: AppEvent> Core<E> {
    /// Sends a control frame to the relay.
    pub async fn send(&mut self, body: Body) -> Result<(), Lost> {
        Ok(self.link.send(body).await?)
    }

    /// Sends a data payload on `channel` (through the link's payload layer); returns its
    /// sequence number.
    pub async fn send_data(&mut self, channel: Channel, payload: Vec<u8>) -> Result<u64, Lost> {
        Ok(self.link.send_data(channel, payload).await?)
    }

    /// Sends a chat message, numbered and kept until the other side acknowledges it (so it
    /// arrives once even across a dropped connection); one longer than the protocol allows
    /// is refused with a `bad_command` error, one past the unacknowledged backlog with
    /// `chat_backlog`, and nothing is sent.
    pub async fn send_chat(&mut self, text: String) -> Result<(), Lost> {
        if text.len() > tsunagu_proto::limits::MAX_CHAT {
            let msg = format!("a chat message has at most {} bytes", tsunagu_proto::limits::MAX_CHAT);
            self.emit(E::error("bad_command", msg)).await;
            return Ok(());
        }
        match self.chat.send(text) {
            Ok(message) => self.send_data(Channel::Chat, message.encode_to_vec()).await.map(|_| ()),
            Err(backlog) => {
                self.emit(E::error("chat_backlog", backlog.to_string())).await;
                Ok(())
            }
        }
    }

    /// The public half of this session's resume key, for `RequestCode.resume_key` /
    /// `Join.resume_key` (empty when no key could be drawn: the relay then ends the session
    /// if the connection drops).
    pub fn resume_key(&self) -> Bytes {
        self.key.as_ref().map(SessionKey::public_key).unwrap_or_default()
    }

    /// Sends an event to the embedder.
    pub async fn emit(&self, event: E) {
        self.events.emit(event).await;
    }

    /// Sends a high-rate event, dropped when the embedder is behind.
    pub fn emit_lossy(&self, event: E) {
        self.events.emit_lossy(event);
    }

    /// Sets (or clears) when the current phase gives up.
    pub fn set_deadline(&mut self, at: Option<Instant>) {
        self.deadline = at;
    }

    /// Carries out a file command the app has allowed; a user mistake is reported as an
    /// `error` event and the session goes on.
    pub async fn file_command(&mut self, command: FileCommand) {
        match self.transfers.command(&mut self.link, command).await {
            Ok(events) => self.emit_files(events).await,
            Err((code, message)) => self.emit(E::error(code, message)).await,
        }
    }

    async fn emit_files(&mut self, events: Vec<TransferEvent>) {
        for e in events {
            self.bars.show(&e);
            self.emit(E::file(e.into())).await;
        }
    }

    async fn abort_files(&mut self, reason: &str) {
        let aborted = self.transfers.abort_all(reason).await;
        self.emit_files(aborted).await;
    }
}

/// An app's phase machine, driven by [`run`]. Every handler may send through the [`Core`];
/// a send that fails returns [`Lost`] (use `?`), and the driver ends the run as the app's
/// [`App::lost_ends_as`] says.
pub trait App: Send {
    /// Which place in a session this app holds (what a resume signs for).
    const ROLE: Role;
    /// The app's events.
    type Event: AppEvent;
    /// The app's commands.
    type Command: Send + 'static;
    /// The app's own wake-ups besides frames, commands and the phase deadline.
    type Wake: Send;

    /// The first frames once connected (`Login`, `Join`) and the first phase deadline.
    fn start(&mut self, core: &mut Core<Self::Event>) -> impl Future<Output = Result<(), Lost>> + Send;

    /// A control frame the driver does not handle itself (everything but pings, errors,
    /// `Ended`, file frames and data).
    fn on_frame(&mut self, core: &mut Core<Self::Event>, body: Body) -> impl Future<Output = Handled> + Send;

    /// A data payload on a channel the driver does not handle itself (not files, not chat).
    fn on_data(
        &mut self,
        core: &mut Core<Self::Event>,
        channel: Channel,
        seq: u64,
        payload: Bytes,
    ) -> impl Future<Output = Handled> + Send;

    /// A command from the embedder.
    fn on_command(
        &mut self,
        core: &mut Core<Self::Event>,
        command: Self::Command,
    ) -> impl Future<Output = Handled> + Send;

    /// The next of the app's own wake-ups; must be cancel-safe (it is raced in a `select!`).
    /// An app with none waits forever.
    fn next_wake(&mut self) -> impl Future<Output = Self::Wake> + Send;

    /// Handles a wake-up from [`App::next_wake`].
    fn on_wake(&mut self, core: &mut Core<Self::Event>, wake: Self::Wake) -> impl Future<Output = Handled> + Send;

    /// The phase deadline passed (it has been cleared).
    fn on_deadline(&mut self, core: &mut Core<Self::Event>) -> impl Future<Output = Handled> + Send;

    /// Whether an `Error` from the relay ends the run now (as refused) rather than being
    /// reported while the session goes on.
    fn error_ends_run(&self) -> bool;

    /// The relay ended the session with `reason` (file transfers are aborted already; the
    /// driver emits `ended` after this). Returns whether a session ran, which makes the run
    /// ended rather than refused.
    fn on_ended(&mut self, core: &mut Core<Self::Event>, reason: pb::EndReason) -> impl Future<Output = bool> + Send;

    /// When the connection breaks: `Some(reason)` if the run counts as ended with that reason
    /// anyway (the app was ending, or its user's denial stands), `None` for a lost connection
    /// (which is resumed when it can be).
    fn lost_ends_as(&self) -> Option<&'static str>;

    /// The session survived a dropped connection, ours ([`Resync::Resumed`], after the driver
    /// switched to the new link) or the other side's ([`Resync::PeerBack`]): bring what is
    /// not reliable by itself back in step (the client sends a keyframe). Chat and files
    /// are re-sent by the driver already. Default: nothing.
    fn on_resync(&mut self, core: &mut Core<Self::Event>, why: Resync) -> impl Future<Output = Handled> + Send {
        let _ = (core, why);
        async { Ok(Step::Continue) }
    }
}

/// Dials a relay of the list again for a resume (TLS in [`run`]; an in-memory stream in
/// tests). Each call is one attempt at relay `relay`, every port and address of it.
pub trait Redial: Send {
    /// How many relays the list has.
    fn relays(&self) -> usize;
    /// Relay `relay`'s host, as the `reconnected` event names it.
    fn host(&self, relay: usize) -> String;
    /// Connects to relay `relay`, past `Hello`.
    fn dial(&mut self, relay: usize) -> Pin<Box<dyn Future<Output = Result<Connected, String>> + Send + '_>>;
}

/// [`Redial`] over TLS to the configured relay list.
struct TlsRedial {
    relays: Vec<RelayEntry>,
    template: DialConfig,
}

impl Redial for TlsRedial {
    fn relays(&self) -> usize {
        self.relays.len()
    }

    fn host(&self, relay: usize) -> String {
        self.relays.get(relay).map(|r| r.host.clone()).unwrap_or_default()
    }

    fn dial(&mut self, relay: usize) -> Pin<Box<dyn Future<Output = Result<Connected, String>> + Send + '_>> {
        Box::pin(async move {
            let entry = self.relays.get(relay).ok_or("no such relay")?;
            dial::dial(&entry.dial_config(&self.template))
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// Dials the relay and runs `app` to its end, resuming over the relay list when the
/// connection drops. `commands` may close at any time (that is not the end of the session);
/// `events` receives everything the user should see.
pub async fn run<A: App>(
    app: A,
    settings: LinkSettings,
    commands: mpsc::Receiver<A::Command>,
    events: Events<A::Event>,
) -> Outcome {
    let (conn, redial) = match connect(&settings, &events).await {
        Ok(c) => c,
        Err(outcome) => return outcome,
    };
    // The primary's health is checked while the run lasts; the site in use outlives it.
    let _watch = settings.standby.clone().map(|standby| {
        let events = events.clone();
        let primary = standby
            .relays_of(Site::Primary)
            .first()
            .map(relay_name)
            .unwrap_or_default();
        let secondary = standby
            .relays_of(Site::Secondary)
            .first()
            .map(relay_name)
            .unwrap_or_default();
        AbortOnDrop(tokio::spawn(standby.watch(redial.template.clone(), move |change| {
            let relay = match change.site {
                Site::Primary => primary.clone(),
                Site::Secondary => secondary.clone(),
            };
            let events = events.clone();
            // Never lost behind a full event queue, never holding up the checks.
            tokio::spawn(async move {
                events
                    .emit(A::Event::connection(ConnectionEvent::RelaySwitched {
                        site: change.site,
                        relay,
                        reason: change.reason,
                    }))
                    .await;
            });
        })))
    });
    run_resumable(app, conn, &settings, Box::new(redial), commands, events).await
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `HOST:PORT` of a relay entry's first port (IPv6 in brackets).
fn relay_name(entry: &RelayEntry) -> String {
    let port = entry.ports.first().copied().unwrap_or_default();
    if entry.host.contains(':') {
        format!("[{}]:{port}", entry.host)
    } else {
        format!("{}:{port}", entry.host)
    }
}

/// Runs `app` to its end over a connection already past `Hello`, as [`run`] does once it
/// has dialled (`settings` gives the link's timeouts), without reconnecting: a drop ends the
/// run. Tests that play the relay connect over an in-memory stream with [`dial::greet`] and
/// drive an app through this.
pub async fn run_connected<A: App>(
    app: A,
    conn: Connected,
    settings: &LinkSettings,
    commands: mpsc::Receiver<A::Command>,
    events: Events<A::Event>,
) -> Outcome {
    drive(app, conn, settings, None, commands, events).await
}

/// As [`run_connected`], reconnecting through `redial` when the connection drops (tests
/// hand in further in-memory streams).
pub async fn run_resumable<A: App>(
    app: A,
    conn: Connected,
    settings: &LinkSettings,
    redial: Box<dyn Redial>,
    commands: mpsc::Receiver<A::Command>,
    events: Events<A::Event>,
) -> Outcome {
    drive(app, conn, settings, Some(redial), commands, events).await
}

async fn drive<A: App>(
    app: A,
    conn: Connected,
    settings: &LinkSettings,
    redial: Option<Box<dyn Redial>>,
    commands: mpsc::Receiver<A::Command>,
    events: Events<A::Event>,
) -> Outcome {
    info!(relay = %conn.peer, port = conn.port, agent = settings.agent, "connected to the relay");
    let key = match SessionKey::generate() {
        Ok(k) => Some(k),
        Err(e) => {
            warn!(error = %e, "no resume key: this session ends if the connection drops");
            None
        }
    };
    let mut driver = Driver {
        core: Core {
            link: Link::new(conn, settings.idle_timeout, settings.write_timeout),
            events,
            transfers: Transfers::new(),
            bars: ProgressBars::new(),
            deadline: None,
            chat: ReliableChat::new(),
            key,
            token: None,
            losses: 0,
        },
        app,
        redial,
        idle_timeout: settings.idle_timeout,
        answer_timeout: settings.attempt_timeout,
    };
    let outcome = driver.run(commands).await;
    driver.core.link.close().await;
    outcome
}

/// TLS set-up and the first dial, relay by relay in the list's order, with failures reported
/// as `error` events. Returns the connection and the redialler for resumes.
async fn connect<E: AppEvent>(settings: &LinkSettings, events: &Events<E>) -> Result<(Connected, TlsRedial), Outcome> {
    let tls = match dial::client_tls_with(&settings.ca, settings.identity.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            let (code, message, outcome) = crate::headless::dial_failure(e);
            events.emit(E::error(code, message)).await;
            return Err(outcome);
        }
    };
    let template = DialConfig {
        host: String::new(),
        ports: Vec::new(),
        tls,
        attempt_timeout: settings.attempt_timeout,
        max_frame: settings.max_frame,
        agent: settings.agent.into(),
    };
    let order: Vec<(Site, RelayEntry)> = match &settings.standby {
        Some(standby) => standby.dial_order(),
        None => settings.relays.iter().map(|r| (Site::Primary, r.clone())).collect(),
    };
    let mut failure = None;
    for (site, entry) in &order {
        match dial::dial(&entry.dial_config(&template)).await {
            Ok(conn) => {
                // A session resumes on its own site only: the other may be another grid.
                let relays = match &settings.standby {
                    Some(standby) => {
                        events
                            .emit(E::connection(ConnectionEvent::RelaySite {
                                site: *site,
                                relay: relay_name(entry),
                            }))
                            .await;
                        standby.relays_of(*site).to_vec()
                    }
                    None => settings.relays.clone(),
                };
                let redial = TlsRedial { relays, template };
                return Ok((conn, redial));
            }
            // A bad name or an answer from a relay ends the dial; an unreachable relay
            // passes to the next.
            Err(DialError::Unreachable { host, attempts }) => {
                failure = Some(match failure {
                    Some(DialError::Unreachable {
                        host: before,
                        attempts: mut all,
                    }) => {
                        all.extend(attempts);
                        DialError::Unreachable {
                            host: format!("{before}, {host}"),
                            attempts: all,
                        }
                    }
                    _ => DialError::Unreachable { host, attempts },
                });
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let (code, message, outcome) = dial_failure(failure.unwrap_or(DialError::NoPorts));
    events.emit(E::error(code, message)).await;
    Err(outcome)
}

/// How one resume attempt went.
enum ResumeFailure {
    /// Nothing decided (unreachable, a relay that closed or did not answer): try again.
    Retry(String),
    /// The relay refused the resume (`code`, the relay's message): the session is gone.
    Refused(&'static str, String),
    /// The relay answered that the session ended, with this reason.
    Ended(pb::EndReason),
}

struct Driver<A: App> {
    core: Core<A::Event>,
    app: A,
    /// How to reach a relay again; `None`: a drop ends the run.
    redial: Option<Box<dyn Redial>>,
    /// Relay silence that counts as lost, for links after a resume.
    idle_timeout: Duration,
    /// How long a relay may take to answer `Resume`.
    answer_timeout: Duration,
}

impl<A: App> Driver<A> {
    async fn run(&mut self, mut commands: mpsc::Receiver<A::Command>) -> Outcome {
        if let Err(lost) = self.app.start(&mut self.core).await {
            return self.lost(lost).await;
        }
        let mut lost_now: Option<Lost> = None;
        let mut commands_open = true;
        loop {
            if let Some(lost) = lost_now.take() {
                match self.resume(lost).await {
                    Ok(Step::Continue) => continue,
                    Ok(Step::Done(outcome)) => return outcome,
                    Err(again) => {
                        lost_now = Some(again);
                        continue;
                    }
                }
            }
            let phase_deadline = self.core.deadline.unwrap_or_else(|| Instant::now() + FAR_FUTURE);
            let handled = tokio::select! {
                incoming = self.core.link.recv() => self.on_incoming(incoming).await,
                cmd = commands.recv(), if commands_open => match cmd {
                    Some(cmd) => self.app.on_command(&mut self.core, cmd).await,
                    None => {
                        debug!("command channel closed; the session goes on");
                        commands_open = false;
                        Ok(Step::Continue)
                    }
                },
                wake = self.app.next_wake() => self.app.on_wake(&mut self.core, wake).await,
                _ = tokio::time::sleep_until(phase_deadline.into()) => {
                    self.core.deadline = None;
                    self.app.on_deadline(&mut self.core).await
                }
                // Outgoing file content, a few chunks at a time so frames and input interleave.
                _ = std::future::ready(()), if self.core.transfers.wants_pump() => self.pump_files().await,
            };
            match handled {
                Ok(Step::Continue) => {}
                Ok(Step::Done(outcome)) => return outcome,
                Err(lost) => lost_now = Some(lost),
            }
        }
    }

    /// The connection broke: resume when a token is held, a redialler is there and the app
    /// is not ending; otherwise end as [`Self::lost`] does. `Err` is a loss again right after
    /// a resume (the loop comes back here).
    async fn resume(&mut self, Lost(detail): Lost) -> Handled {
        let can_resume = self.app.lost_ends_as().is_none() && self.redial.is_some() && self.core.key.is_some();
        let token = match self.core.token.take() {
            Some(t) if can_resume => t,
            _ => return Ok(Step::Done(self.lost(Lost(detail)).await)),
        };
        self.core.losses += 1;
        warn!(error = %detail, window = ?token.window, "lost the connection to the relay; reconnecting");
        self.core
            .emit(A::Event::connection(ConnectionEvent::Reconnecting {
                attempt: self.core.losses,
                window_ms: token.window.as_millis() as u64,
                reason: detail.clone(),
            }))
            .await;
        // Chunks sent now would be lost with the link: senders wait for `FileResume`.
        self.core.transfers.hold_sending();
        let relays = self.redial.as_ref().map_or(1, |r| r.relays());
        let mut plan = ReconnectPlan::new(Instant::now(), token.window, relays);
        let mut last = detail;
        while let Some(attempt) = plan.next(Instant::now(), jitter_seed()) {
            tokio::time::sleep(attempt.delay).await;
            let remaining = plan.remaining(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let tried = tokio::time::timeout(remaining, self.try_resume(attempt.relay, &token)).await;
            match tried {
                Ok(Ok((conn, resumed))) => return self.resumed(attempt.relay, conn, resumed).await,
                Ok(Err(ResumeFailure::Retry(e))) => {
                    debug!(attempt = attempt.number, relay = attempt.relay, error = %e, "resume attempt failed");
                    last = e;
                }
                Ok(Err(ResumeFailure::Refused(code, message))) => {
                    warn!(code, "the relay refused the resume");
                    self.core.abort_files("the connection to the relay was lost").await;
                    self.core.emit(A::Event::error(code, message)).await;
                    self.core.emit(A::Event::ended("connection_lost")).await;
                    return Ok(Step::Done(Outcome::Unreachable));
                }
                Ok(Err(ResumeFailure::Ended(reason))) => {
                    let name = end_reason_name(reason);
                    info!(reason = name, "the session ended while we were away");
                    self.core.abort_files(&format!("the session ended ({name})")).await;
                    let ran = self.app.on_ended(&mut self.core, reason).await;
                    self.core.emit(A::Event::ended(name)).await;
                    return Ok(Step::Done(if ran {
                        Outcome::Ended { reason: name.into() }
                    } else {
                        Outcome::Refused { code: name.into() }
                    }));
                }
                Err(_) => break,
            }
        }
        let detail = format!("no relay took the session back within {:?} ({last})", token.window);
        Ok(Step::Done(self.lost(Lost(detail)).await))
    }

    /// One resume attempt at relay `relay`: dial, `Resume`, and the relay's first answer.
    async fn try_resume(&mut self, relay: usize, token: &HeldToken) -> Result<(Connected, pb::Resumed), ResumeFailure> {
        let (Some(redial), Some(key)) = (self.redial.as_mut(), self.core.key.as_ref()) else {
            return Err(ResumeFailure::Retry("cannot resume".into()));
        };
        let mut conn = redial.dial(relay).await.map_err(ResumeFailure::Retry)?;
        let resume = key.resume_frame(token, A::ROLE);
        let retry = |e: &dyn std::fmt::Display| ResumeFailure::Retry(e.to_string());
        tokio::time::timeout(self.answer_timeout, conn.writer.send_body(Body::Resume(resume)))
            .await
            .map_err(|_| ResumeFailure::Retry("the relay did not take Resume in time".into()))?
            .map_err(|e| retry(&e))?;
        let answer_by = tokio::time::Instant::now() + self.answer_timeout;
        loop {
            let left = answer_by.saturating_duration_since(tokio::time::Instant::now());
            let frame = conn.reader.read_timeout(left).await.map_err(|e| retry(&e))?;
            match frame.and_then(|raw| raw.frame.body) {
                Some(Body::Resumed(resumed)) => return Ok((conn, resumed)),
                Some(Body::Ping(p)) => {
                    conn.writer
                        .send_body(Body::Pong(pb::Pong { nonce: p.nonce }))
                        .await
                        .map_err(|e| retry(&e))?;
                }
                Some(Body::Error(e)) => {
                    let code = pb::ErrorCode::try_from(e.code).unwrap_or(pb::ErrorCode::Unspecified);
                    return Err(match code {
                        pb::ErrorCode::ResumeRefused | pb::ErrorCode::Expired => {
                            ResumeFailure::Refused(error_code_name(code), e.message)
                        }
                        _ => ResumeFailure::Retry(format!("{}: {}", error_code_name(code), e.message)),
                    });
                }
                Some(Body::Ended(ended)) => {
                    let reason = pb::EndReason::try_from(ended.reason).unwrap_or(pb::EndReason::Unspecified);
                    return Err(match reason {
                        pb::EndReason::Moved => ResumeFailure::Retry("the session moved to another relay".into()),
                        other => ResumeFailure::Ended(other),
                    });
                }
                Some(_) => return Err(ResumeFailure::Retry("the relay did not answer Resume".into())),
                None => return Err(ResumeFailure::Retry("the relay closed the connection".into())),
            }
        }
    }

    /// The relay took the session back: go on over `conn`, tell the user, and re-send what
    /// the other side may have missed.
    async fn resumed(&mut self, relay: usize, conn: Connected, resumed: pb::Resumed) -> Handled {
        let host = self.redial.as_ref().map(|r| r.host(relay)).unwrap_or_default();
        let relay_name = if host.contains(':') {
            format!("[{host}]:{}", conn.port)
        } else {
            format!("{host}:{}", conn.port)
        };
        info!(session = %resumed.session_id, resumes = resumed.resumes, relay = %relay_name, node = %resumed.node, "session resumed");
        self.core.link.reconnect(conn, self.idle_timeout);
        self.core
            .emit(A::Event::connection(ConnectionEvent::Reconnected {
                session_id: resumed.session_id.clone(),
                resumes: resumed.resumes,
                relay: relay_name,
            }))
            .await;
        self.resync(Resync::Resumed(resumed)).await
    }

    /// After our resume or the other side's return: unacknowledged chat again, file
    /// receivers' offsets, then the app's own catching up.
    async fn resync(&mut self, why: Resync) -> Handled {
        for message in self.core.chat.resend() {
            self.core.send_data(Channel::Chat, message.encode_to_vec()).await?;
        }
        self.core.transfers.resync(&mut self.core.link).await?;
        self.app.on_resync(&mut self.core, why).await
    }

    /// The connection broke: tell the user and end as unreachable, unless the app says the
    /// run ends normally anyway.
    async fn lost(&mut self, Lost(detail): Lost) -> Outcome {
        if let Some(reason) = self.app.lost_ends_as() {
            debug!(error = %detail, reason, "connection closed while the session was ending");
            self.core.emit(A::Event::ended(reason)).await;
            return Outcome::Ended { reason: reason.into() };
        }
        warn!(error = %detail, "lost the connection to the relay");
        self.core.abort_files("the connection to the relay was lost").await;
        self.core.emit(A::Event::error("connection_lost", detail)).await;
        self.core.emit(A::Event::ended("connection_lost")).await;
        Outcome::Unreachable
    }

    async fn on_incoming(&mut self, incoming: Incoming) -> Handled {
        let body = match incoming {
            Incoming::Frame(body) => body,
            Incoming::Closed => return Err(Lost("the relay closed the connection".into())),
            Incoming::Silent(d) => return Err(Lost(format!("no frame from the relay for {d:?}"))),
            Incoming::Failed(e) => return Err(Lost(e)),
        };
        match body {
            Body::Ping(p) => {
                self.core.send(Body::Pong(pb::Pong { nonce: p.nonce })).await?;
                Ok(Step::Continue)
            }
            Body::Error(e) => {
                let code = pb::ErrorCode::try_from(e.code).unwrap_or(pb::ErrorCode::Unspecified);
                let name = error_code_name(code);
                warn!(code = name, "the relay reported an error");
                self.core.emit(A::Event::error(name, e.message)).await;
                if self.app.error_ends_run() {
                    return Ok(Step::Done(Outcome::Refused { code: name.into() }));
                }
                Ok(Step::Continue)
            }
            Body::ResumeToken(token) => {
                debug!(session = %token.session_id, window_ms = token.window_ms, "resume token");
                self.core.token = Some(token.into());
                Ok(Step::Continue)
            }
            Body::PeerConnection(p) if p.away => {
                info!("the other side's connection dropped");
                self.core.transfers.hold_sending();
                self.core.emit(A::Event::connection(ConnectionEvent::PeerAway)).await;
                Ok(Step::Continue)
            }
            Body::PeerConnection(_) => {
                info!("the other side is back");
                self.core.emit(A::Event::connection(ConnectionEvent::PeerBack)).await;
                self.resync(Resync::PeerBack).await
            }
            Body::Ended(ended) if ended.reason == pb::EndReason::Moved as i32 => {
                Err(Lost("the session moved to another relay node".into()))
            }
            Body::Ended(ended) => {
                let reason = pb::EndReason::try_from(ended.reason).unwrap_or(pb::EndReason::Unspecified);
                let name = end_reason_name(reason);
                info!(reason = name, "session ended");
                self.core.abort_files(&format!("the session ended ({name})")).await;
                let ran = self.app.on_ended(&mut self.core, reason).await;
                self.core.emit(A::Event::ended(name)).await;
                Ok(Step::Done(if ran {
                    Outcome::Ended { reason: name.into() }
                } else {
                    Outcome::Refused { code: name.into() }
                }))
            }
            Body::FileOffer(_)
            | Body::FileAnswer(_)
            | Body::FileCredit(_)
            | Body::FileDone(_)
            | Body::FileResume(_) => self.on_file_frame(&body).await,
            Body::Data(data) => self.on_data(data).await,
            other => self.app.on_frame(&mut self.core, other).await,
        }
    }

    /// Incoming data, by channel: the one place a new channel (a tunnel) is added for both
    /// apps. Payloads arrive here already out of the link's payload layer.
    async fn on_data(&mut self, data: pb::Data) -> Handled {
        let channel = Channel::try_from(data.channel).unwrap_or(Channel::Unspecified);
        match channel {
            Channel::File => self.on_file_frame(&Body::Data(data)).await,
            Channel::Chat => {
                match pb::ChatMessage::decode(data.payload) {
                    Ok(m) => {
                        let wants_ack = ReliableChat::wants_ack(&m);
                        if let Some(text) = self.core.chat.receive(m) {
                            self.core.emit(A::Event::chat(text)).await;
                        }
                        // Acknowledged at once, repeats too (our earlier ack may have been
                        // lost); chat is slow enough that this costs nothing.
                        if wants_ack {
                            let ack = self.core.chat.ack();
                            self.core.send_data(Channel::Chat, ack.encode_to_vec()).await?;
                        }
                    }
                    Err(e) => warn!(error = %e, "undecodable chat message; ignored"),
                }
                Ok(Step::Continue)
            }
            _ => self.app.on_data(&mut self.core, channel, data.seq, data.payload).await,
        }
    }

    /// A file-transfer frame from the other side.
    async fn on_file_frame(&mut self, body: &Body) -> Handled {
        let core = &mut self.core;
        let events = core.transfers.on_frame(&mut core.link, body).await?;
        core.emit_files(events).await;
        Ok(Step::Continue)
    }

    async fn pump_files(&mut self) -> Handled {
        let core = &mut self.core;
        let events = core.transfers.pump(&mut core.link).await?;
        core.emit_files(events).await;
        Ok(Step::Continue)
    }
}

/// Permission names as events list them.
pub fn permission_names(set: PermissionSet) -> Vec<String> {
    set.iter().map(|p| permission_name(p).to_string()).collect()
}

#[cfg(test)]
mod tests {
    //! The driver loop over an in-memory stream, with the test playing the relay: the
    //! `Hello` exchange, a join, frames and data dispatched to the app, pings, the end and a
    //! vanished or silent relay.

    use std::convert::Infallible;
    use std::net::SocketAddr;

    use tokio::io::{DuplexStream, ReadHalf, WriteHalf};
    use tokio::task::JoinHandle;
    use tsunagu_proto::pb::{EndReason, ErrorCode, Frame};
    use tsunagu_proto::transport::{FrameReader, FrameWriter};

    use super::*;
    use crate::transfer::FileEvent;

    const CODE: &str = "12345678";
    const MAX_FRAME: usize = tsunagu_proto::limits::DEFAULT_MAX_FRAME;
    /// The apps' default relay silence before the link counts as lost.
    const IDLE: Duration = Duration::from_secs(45);

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Ev {
        Error {
            code: String,
            message: String,
        },
        Ended {
            reason: String,
        },
        Chat {
            text: String,
        },
        File(FileEvent),
        Connection(ConnectionEvent),
        /// The consent request reached the app.
        Asked {
            operator: String,
        },
        /// A screen payload reached the app.
        Screen {
            seq: u64,
            len: usize,
        },
    }
    crate::app_event!(Ev);

    enum Cmd {
        Chat(String),
        End,
    }

    /// A client-like app: joins with [`CODE`], reports what reaches it.
    #[derive(Default)]
    struct Joiner {
        joined: bool,
        ending: bool,
    }

    impl App for Joiner {
        const ROLE: Role = Role::Client;
        type Event = Ev;
        type Command = Cmd;
        type Wake = Infallible;

        async fn start(&mut self, core: &mut Core<Ev>) -> Result<(), Lost> {
            core.send(Body::Join(pb::Join {
                code: CODE.into(),
                host_name: "pc-01".into(),
                resume_key: core.resume_key(),
            }))
            .await
        }

        async fn on_frame(&mut self, core: &mut Core<Ev>, body: Body) -> Handled {
            if let Body::ConsentRequest(r) = body {
                self.joined = true;
                core.emit(Ev::Asked { operator: r.operator }).await;
            }
            Ok(Step::Continue)
        }

        async fn on_data(&mut self, core: &mut Core<Ev>, channel: Channel, seq: u64, payload: Bytes) -> Handled {
            if channel == Channel::Screen {
                core.emit(Ev::Screen {
                    seq,
                    len: payload.len(),
                })
                .await;
            }
            Ok(Step::Continue)
        }

        async fn on_command(&mut self, core: &mut Core<Ev>, command: Cmd) -> Handled {
            match command {
                Cmd::Chat(text) => core.send_chat(text).await?,
                Cmd::End => {
                    self.ending = true;
                    core.send(Body::End(pb::End {})).await?;
                }
            }
            Ok(Step::Continue)
        }

        async fn next_wake(&mut self) -> Infallible {
            std::future::pending().await
        }

        async fn on_wake(&mut self, _core: &mut Core<Ev>, wake: Infallible) -> Handled {
            match wake {}
        }

        async fn on_deadline(&mut self, _core: &mut Core<Ev>) -> Handled {
            Ok(Step::Continue)
        }

        fn error_ends_run(&self) -> bool {
            !self.joined
        }

        async fn on_ended(&mut self, _core: &mut Core<Ev>, _reason: pb::EndReason) -> bool {
            self.joined
        }

        fn lost_ends_as(&self) -> Option<&'static str> {
            self.ending.then_some("client_ended")
        }
    }

    /// The relay's side of the in-memory stream.
    struct Relay {
        reader: FrameReader<ReadHalf<DuplexStream>>,
        writer: FrameWriter<WriteHalf<DuplexStream>>,
    }

    impl Relay {
        async fn send(&mut self, body: Body) {
            self.writer.send(&Frame { body: Some(body) }).await.unwrap();
        }

        /// The next frame from the app; `None` once it closed the stream.
        async fn next(&mut self) -> Option<Body> {
            self.reader.read().await.unwrap()?.frame.body
        }
    }

    /// An app session against the test's relay.
    struct Run {
        relay: Relay,
        commands: mpsc::Sender<Cmd>,
        events: mpsc::Receiver<Ev>,
        outcome: JoinHandle<Outcome>,
    }

    impl Run {
        /// Connects the app (the `Hello` exchange, checked here as the relay does), starts
        /// the driver and takes the app's `Join`.
        async fn start() -> Run {
            let (relays, apps) = tokio::io::duplex(1 << 16);
            let (r, w) = tokio::io::split(relays);
            let mut relay = Relay {
                reader: FrameReader::new(r, MAX_FRAME),
                writer: FrameWriter::new(w, MAX_FRAME),
            };
            let (commands, command_rx) = mpsc::channel(8);
            let (event_tx, events) = mpsc::channel(64);
            let settings = LinkSettings {
                identity: None,
                relays: vec![RelayEntry {
                    host: "relay.test".into(),
                    ports: vec![7615],
                }],
                ca: crate::dial::ExtraCa::None,
                attempt_timeout: Duration::from_secs(5),
                idle_timeout: IDLE,
                write_timeout: Duration::from_secs(10),
                max_frame: MAX_FRAME,
                agent: "driver-test/1",
                standby: None,
            };
            let outcome = tokio::spawn(async move {
                let peer: SocketAddr = "192.0.2.10:7615".parse().unwrap();
                let local: SocketAddr = "192.0.2.20:50000".parse().unwrap();
                let conn = dial::greet(apps, MAX_FRAME, settings.agent, peer, local)
                    .await
                    .expect("the relay says Hello");
                assert_eq!(conn.port, 7615);
                run_connected(Joiner::default(), conn, &settings, command_rx, Events::new(event_tx)).await
            });
            match relay.next().await {
                Some(Body::Hello(h)) => {
                    assert_eq!(h.version, tsunagu_proto::PROTOCOL_VERSION);
                    assert_eq!(h.agent, "driver-test/1");
                }
                other => panic!("expected Hello, got {other:?}"),
            }
            relay
                .send(tsunagu_proto::transport::hello("relay-test").body.unwrap())
                .await;
            match relay.next().await {
                Some(Body::Join(j)) => assert_eq!((j.code.as_str(), j.host_name.as_str()), (CODE, "pc-01")),
                other => panic!("expected Join, got {other:?}"),
            }
            Run {
                relay,
                commands,
                events,
                outcome,
            }
        }

        async fn event(&mut self) -> Ev {
            next_event(&mut self.events).await
        }

        /// The relay asks for consent, as after a good code.
        async fn joined(&mut self) {
            self.relay
                .send(Body::ConsentRequest(pb::ConsentRequest {
                    session_id: "s1".into(),
                    operator: "alice".into(),
                    permissions: vec![],
                    timeout_ms: 60_000,
                }))
                .await;
            assert_eq!(
                self.event().await,
                Ev::Asked {
                    operator: "alice".into()
                }
            );
        }
    }

    async fn next_event(events: &mut mpsc::Receiver<Ev>) -> Ev {
        events.recv().await.expect("an event")
    }

    fn data(channel: Channel, seq: u64, payload: Vec<u8>) -> Body {
        Body::Data(pb::Data {
            channel: channel as i32,
            seq,
            payload: payload.into(),
            stream: 0,
        })
    }

    #[tokio::test]
    async fn a_session_runs_as_the_relay_drives_it() {
        let mut run = Run::start().await;
        run.joined().await;
        // Data by channel: the screen goes to the app, chat is decoded by the driver.
        run.relay.send(data(Channel::Screen, 3, vec![7; 1000])).await;
        assert_eq!(run.event().await, Ev::Screen { seq: 3, len: 1000 });
        let chat = pb::ChatMessage {
            text: "hello".into(),
            ..Default::default()
        }
        .encode_to_vec();
        run.relay.send(data(Channel::Chat, 1, chat)).await;
        assert_eq!(run.event().await, Ev::Chat { text: "hello".into() });
        // A ping is answered with its nonce.
        run.relay.send(Body::Ping(pb::Ping { nonce: 42 })).await;
        assert!(matches!(run.relay.next().await, Some(Body::Pong(p)) if p.nonce == 42));
        // A command goes out as a numbered data frame.
        run.commands.send(Cmd::Chat("hi there".into())).await.unwrap();
        match run.relay.next().await {
            Some(Body::Data(d)) => {
                assert_eq!((d.channel, d.seq), (Channel::Chat as i32, 1));
                assert_eq!(pb::ChatMessage::decode(d.payload).unwrap().text, "hi there");
            }
            other => panic!("expected chat data, got {other:?}"),
        }
        // `Ended` ends the run with its reason, and the app closes its side.
        run.relay
            .send(Body::Ended(pb::Ended {
                reason: EndReason::OperatorEnded as i32,
            }))
            .await;
        assert_eq!(
            run.event().await,
            Ev::Ended {
                reason: "operator_ended".into()
            }
        );
        assert_eq!(
            run.outcome.await.unwrap(),
            Outcome::Ended {
                reason: "operator_ended".into()
            }
        );
        assert!(run.relay.next().await.is_none(), "the app closed the connection");
    }

    #[tokio::test]
    async fn a_relay_that_vanishes_is_a_lost_connection() {
        let mut run = Run::start().await;
        run.joined().await;
        let Run {
            relay,
            mut events,
            outcome,
            ..
        } = run;
        drop(relay);
        match next_event(&mut events).await {
            Ev::Error { code, message } => {
                assert_eq!(code, "connection_lost");
                assert_eq!(message, "the relay closed the connection");
            }
            other => panic!("expected an error, got {other:?}"),
        }
        assert_eq!(
            next_event(&mut events).await,
            Ev::Ended {
                reason: "connection_lost".into()
            }
        );
        assert_eq!(outcome.await.unwrap(), Outcome::Unreachable);
    }

    #[tokio::test]
    async fn a_relay_that_goes_away_while_the_app_ends_is_an_end() {
        let mut run = Run::start().await;
        run.joined().await;
        run.commands.send(Cmd::End).await.unwrap();
        assert!(matches!(run.relay.next().await, Some(Body::End(_))));
        let Run {
            relay,
            commands,
            mut events,
            outcome,
        } = run;
        drop(relay);
        assert_eq!(
            next_event(&mut events).await,
            Ev::Ended {
                reason: "client_ended".into()
            }
        );
        drop(commands);
        assert_eq!(
            outcome.await.unwrap(),
            Outcome::Ended {
                reason: "client_ended".into()
            }
        );
    }

    #[tokio::test]
    async fn a_refused_code_refuses_the_run() {
        let mut run = Run::start().await;
        run.relay
            .send(Body::Error(pb::Error {
                code: ErrorCode::BadCode as i32,
                message: "no such code".into(),
            }))
            .await;
        assert_eq!(run.event().await, Ev::error("bad_code", "no such code"));
        assert_eq!(
            run.outcome.await.unwrap(),
            Outcome::Refused {
                code: "bad_code".into()
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_relay_is_lost_after_the_idle_timeout() {
        let mut run = Run::start().await;
        run.joined().await;
        let start = tokio::time::Instant::now();
        // The relay keeps the stream open and says nothing.
        match run.event().await {
            Ev::Error { code, message } => {
                assert_eq!(code, "connection_lost");
                assert_eq!(message, format!("no frame from the relay for {IDLE:?}"));
            }
            other => panic!("expected an error, got {other:?}"),
        }
        assert_eq!(start.elapsed(), IDLE);
        assert_eq!(run.outcome.await.unwrap(), Outcome::Unreachable);
    }
}
