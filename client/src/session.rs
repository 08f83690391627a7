//! One client session, from dialling the relay to `Ended`: join with the code, ask the user
//! for consent, then stream the screen under the flow-control window, apply input unless
//! paused, and keep the relay told about the user's mode switches.

use std::time::{Duration, Instant};

use prost::Message;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};
use tsunagu_endpoint::dial::{self, DialConfig, DialError};
use tsunagu_proto::pb::{self, frame::Body, Channel, Permission};
use tsunagu_proto::types::{end_reason_name, error_code_name, permission_name};
use tsunagu_proto::PermissionSet;

use crate::api::{Command, Event, InputLog, Outcome};
use crate::capture::{self, Capturer, SyntheticCapturer};
use crate::config::{ClientConfig, InputSink, ScreenSource};
use crate::flow::ScreenFlow;
use crate::inject::SystemInjector;
use crate::pointer::{PointerReport, PointerWatcher};
use crate::stream::{EncoderSettings, ScreenWorker, Shot, ShotRequest};
use crate::takeover::{Takeover, Transition};
use tsunagu_endpoint::link::{Incoming, Link};
use tsunagu_endpoint::transfer::{ProgressBars, TransferEvent, Transfers};

/// Sent in `Hello`.
const AGENT: &str = concat!("tsunagu-client/", env!("CARGO_PKG_VERSION"));

/// Room kept in a frame for the `Data` header and the `ScreenFrame` fields around the H.264
/// bytes; an access unit that does not fit with it is dropped (and a keyframe follows).
const FRAME_OVERHEAD: usize = 1024;

/// A deadline far enough away to mean "never" in a `select!`.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365);

/// Where the session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `Join` sent; waiting for `ConsentRequest` or an error.
    Joining,
    /// The user is being asked.
    AwaitingConsent,
    /// The user answered; waiting for `SessionState` or `Ended`.
    Answered,
    /// Consent given; the session runs.
    Active,
    /// `End` sent; waiting for `Ended`.
    Ending,
}

/// The user's own mode switches; sent whole in every `ClientState`.
#[derive(Debug, Default)]
struct Modes {
    manual_pause: bool,
    view_only: bool,
    chat_only: bool,
    revoked: PermissionSet,
}

/// Sends events to the embedder; a dropped receiver just means nobody listens any more.
struct Events(mpsc::Sender<Event>);

impl Events {
    async fn emit(&self, event: Event) {
        let _ = self.0.send(event).await;
    }
}

/// Runs one client session to its end. `commands` may close at any time (that is not the
/// end of the session); `events` receives everything the user should see.
pub async fn run(config: ClientConfig, commands: mpsc::Receiver<Command>, events: mpsc::Sender<Event>) -> Outcome {
    let events = Events(events);
    let capturer: Box<dyn Capturer> = match config.screen {
        ScreenSource::Synthetic { width, height } => {
            if width == 0 || height == 0 || (width | height) & 1 != 0 {
                events
                    .emit(Event::error(
                        "bad_size",
                        format!("{width}x{height}: both sides must be even"),
                    ))
                    .await;
                return Outcome::Usage {
                    code: "bad_size".into(),
                };
            }
            Box::new(SyntheticCapturer::new(width, height))
        }
        ScreenSource::X11 { backend, monitor } => {
            // Opening xcap or the X connection may block briefly: keep it off the runtime.
            match tokio::task::spawn_blocking(move || capture::open_x11(backend, monitor)).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    events.emit(Event::error("no_screen", e.to_string())).await;
                    return Outcome::Usage {
                        code: "no_screen".into(),
                    };
                }
                Err(e) => {
                    events.emit(Event::error("no_screen", e.to_string())).await;
                    return Outcome::Usage {
                        code: "no_screen".into(),
                    };
                }
            }
        }
    };
    let settings = EncoderSettings {
        fps: config.fps,
        bitrate_bps: config.bitrate_bps,
    };
    let (worker, shots) = match ScreenWorker::start(capturer, settings) {
        Ok(w) => w,
        Err(e) => {
            events.emit(Event::error("no_screen", e.to_string())).await;
            return Outcome::Usage {
                code: "no_screen".into(),
            };
        }
    };
    info!(
        source = worker.name(),
        width = worker.dimensions().0,
        height = worker.dimensions().1,
        "screen source ready"
    );
    let (injector, pointer) = if config.input == InputSink::System {
        let injector = match SystemInjector::open(worker.origin(), worker.dimensions()) {
            Ok(i) => i,
            Err(e) => {
                events.emit(Event::error("no_input", e.to_string())).await;
                return Outcome::Usage {
                    code: "no_input".into(),
                };
            }
        };
        match PointerWatcher::start(None) {
            Ok(p) => (Some(injector), Some(p)),
            Err(e) => {
                events
                    .emit(Event::error("no_input", format!("cannot watch the pointer: {e}")))
                    .await;
                return Outcome::Usage {
                    code: "no_input".into(),
                };
            }
        }
    } else {
        (None, None)
    };
    let tls = match dial::client_tls(&config.ca) {
        Ok(t) => t,
        Err(e) => {
            events.emit(Event::error("bad_ca", e.to_string())).await;
            return Outcome::Usage { code: "bad_ca".into() };
        }
    };
    let dial_config = DialConfig {
        host: config.relay_host.clone(),
        ports: config.ports.clone(),
        tls,
        attempt_timeout: config.timeouts.attempt,
        max_frame: config.max_frame,
        agent: AGENT.into(),
    };
    let conn = match dial::dial(&dial_config).await {
        Ok(c) => c,
        Err(e) => return dial_failed(&events, e).await,
    };
    info!(relay = %conn.peer, port = conn.port, "connected to the relay");
    let mut session = Session {
        link: Link::new(conn, config.timeouts.idle, config.timeouts.write),
        events,
        phase: Phase::Joining,
        deadline: Some(Instant::now() + config.timeouts.join),
        user_denied: false,
        granted: PermissionSet::EMPTY,
        relay_chat_only: false,
        streaming: false,
        modes: Modes::default(),
        takeover: Takeover::new(config.takeover_resume),
        flow: ScreenFlow::new(config.max_unacked, config.ack_stall),
        worker,
        shot_pending: false,
        transfers: Transfers::new(),
        bars: ProgressBars::new(),
        injector,
        config,
    };
    let (watcher, pointer_reports) = match pointer {
        Some((w, r)) => (Some(w), Some(r)),
        None => (None, None),
    };
    let outcome = session.run(commands, shots, pointer_reports).await;
    drop(watcher);
    session.link.close().await;
    outcome
}

/// Reports a dial failure as an `error` event and returns how the run ends.
async fn dial_failed(events: &Events, e: DialError) -> Outcome {
    let (code, message, outcome) = tsunagu_endpoint::headless::dial_failure(e);
    events.emit(Event::error(code, message)).await;
    outcome
}

struct Session {
    config: ClientConfig,
    link: Link,
    events: Events,
    phase: Phase,
    /// When the current phase gives up (joining, ending).
    deadline: Option<Instant>,
    user_denied: bool,
    /// Permissions in force, from the last `SessionState`.
    granted: PermissionSet,
    relay_chat_only: bool,
    /// Whether screen frames are flowing now.
    streaming: bool,
    modes: Modes,
    takeover: Takeover,
    flow: ScreenFlow,
    /// The capture/encode thread.
    worker: ScreenWorker,
    /// A shot was requested and not answered yet (one at a time: skip, never queue).
    shot_pending: bool,
    /// Input into the real desktop (`--input system`).
    injector: Option<SystemInjector>,
    /// File transfers (the shared engine in `tsunagu_endpoint::transfer`).
    transfers: Transfers,
    bars: ProgressBars,
}

/// What a handler decided.
enum Step {
    Continue,
    Done(Outcome),
}

impl Session {
    async fn run(
        &mut self,
        mut commands: mpsc::Receiver<Command>,
        mut shots: mpsc::Receiver<Shot>,
        mut pointer: Option<mpsc::Receiver<PointerReport>>,
    ) -> Outcome {
        if let Err(outcome) = self
            .send(Body::Join(pb::Join {
                code: self.config.code.reveal(),
                host_name: self.config.host_name.clone(),
            }))
            .await
        {
            return outcome;
        }
        let mut commands_open = true;
        // Capture ticks at the frame-rate cap; a late tick is skipped, never bunched up.
        let mut ticks = tokio::time::interval(Duration::from_secs(1) / self.config.fps.max(1));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            let now = Instant::now();
            let phase_deadline = self.deadline.unwrap_or(now + FAR_FUTURE);
            let takeover_deadline = self.takeover.next_deadline().unwrap_or(now + FAR_FUTURE);
            let step = tokio::select! {
                incoming = self.link.recv() => self.on_incoming(incoming).await,
                cmd = commands.recv(), if commands_open => match cmd {
                    Some(cmd) => self.on_command(cmd).await,
                    None => {
                        debug!("command channel closed; the session goes on");
                        commands_open = false;
                        Step::Continue
                    }
                },
                _ = ticks.tick() => self.on_tick(),
                shot = shots.recv() => match shot {
                    Some(shot) => self.on_shot(shot).await,
                    None => {
                        self.events.emit(Event::error("no_screen", "the screen worker stopped")).await;
                        self.shot_pending = false;
                        Step::Continue
                    }
                },
                report = recv_pointer(&mut pointer) => match report {
                    Some(report) => self.on_pointer(report).await,
                    None => {
                        pointer = None;
                        Step::Continue
                    }
                },
                _ = tokio::time::sleep_until(takeover_deadline.into()) => self.on_takeover_timer().await,
                _ = tokio::time::sleep_until(phase_deadline.into()) => self.on_deadline().await,
                // Outgoing file content, a few chunks at a time so frames and input interleave.
                _ = std::future::ready(()), if self.transfers.wants_pump() => self.pump_files().await,
            };
            if let Step::Done(outcome) = step {
                return outcome;
            }
        }
    }

    /// Sends a frame; a failure ends the session as a lost connection.
    async fn send(&mut self, body: Body) -> Result<(), Outcome> {
        match self.link.send(body).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.lost(e.to_string()).await),
        }
    }

    async fn send_data(&mut self, channel: Channel, payload: Vec<u8>) -> Result<u64, Outcome> {
        match self.link.send_data(channel, payload).await {
            Ok(seq) => Ok(seq),
            Err(e) => Err(self.lost(e.to_string()).await),
        }
    }

    /// The connection broke: tell the user, end as unreachable (or as ended if we were
    /// already ending).
    async fn lost(&mut self, detail: String) -> Outcome {
        if self.phase == Phase::Ending {
            self.events
                .emit(Event::Ended {
                    reason: "client_ended".into(),
                })
                .await;
            return Outcome::Ended {
                reason: "client_ended".into(),
            };
        }
        if self.user_denied && self.phase == Phase::Answered {
            // The user's denial is final; a relay that closes without `Ended` changes nothing.
            debug!(error = %detail, "connection closed after the denial");
            self.events
                .emit(Event::Ended {
                    reason: "consent_denied".into(),
                })
                .await;
            return Outcome::Ended {
                reason: "consent_denied".into(),
            };
        }
        warn!(error = %detail, "lost the connection to the relay");
        let aborted = self.transfers.abort_all("the connection to the relay was lost").await;
        self.emit_files(aborted).await;
        self.events.emit(Event::error("connection_lost", detail)).await;
        self.events
            .emit(Event::Ended {
                reason: "connection_lost".into(),
            })
            .await;
        Outcome::Unreachable
    }

    async fn on_incoming(&mut self, incoming: Incoming) -> Step {
        let body = match incoming {
            Incoming::Frame(body) => body,
            Incoming::Closed => return Step::Done(self.lost("the relay closed the connection".into()).await),
            Incoming::Silent(d) => return Step::Done(self.lost(format!("no frame from the relay for {d:?}")).await),
            Incoming::Failed(e) => return Step::Done(self.lost(e).await),
        };
        match body {
            Body::Ping(p) => match self.send(Body::Pong(pb::Pong { nonce: p.nonce })).await {
                Ok(()) => Step::Continue,
                Err(outcome) => Step::Done(outcome),
            },
            Body::ConsentRequest(req) if self.phase == Phase::Joining => {
                self.phase = Phase::AwaitingConsent;
                self.deadline = None;
                let permissions = PermissionSet::from_wire(&req.permissions);
                info!(session = %req.session_id, operator = %req.operator, %permissions, "consent requested");
                self.events
                    .emit(Event::ConsentRequest {
                        operator: req.operator,
                        permissions: names(permissions),
                        timeout_s: req.timeout_ms.div_ceil(1000),
                        session_id: req.session_id,
                    })
                    .await;
                Step::Continue
            }
            Body::Error(e) => {
                let code = pb::ErrorCode::try_from(e.code).unwrap_or(pb::ErrorCode::Unspecified);
                let name = error_code_name(code);
                warn!(code = name, "the relay refused");
                self.events.emit(Event::error(name, e.message)).await;
                if self.phase == Phase::Active {
                    // An error during the session is reported; the relay's Ended follows.
                    return Step::Continue;
                }
                Step::Done(Outcome::Refused { code: name.into() })
            }
            Body::SessionState(state) => self.on_session_state(state).await,
            Body::FileOffer(_) | Body::FileAnswer(_) | Body::FileCredit(_) | Body::FileDone(_) => {
                self.on_file_frame(&body).await
            }
            Body::Data(data) if data.channel == Channel::File as i32 => self.on_file_frame(&Body::Data(data)).await,
            Body::Ended(ended) => {
                let reason =
                    end_reason_name(pb::EndReason::try_from(ended.reason).unwrap_or(pb::EndReason::Unspecified));
                info!(reason, "session ended");
                let aborted = self.transfers.abort_all(&format!("the session ended ({reason})")).await;
                self.emit_files(aborted).await;
                self.events.emit(Event::Ended { reason: reason.into() }).await;
                let ran = matches!(self.phase, Phase::Active | Phase::Ending) || self.user_denied;
                Step::Done(if ran {
                    Outcome::Ended { reason: reason.into() }
                } else {
                    Outcome::Refused { code: reason.into() }
                })
            }
            Body::Data(data) => {
                self.on_data(data).await;
                Step::Continue
            }
            other => {
                debug!(frame = ?std::mem::discriminant(&other), phase = ?self.phase, "ignored an unexpected frame");
                Step::Continue
            }
        }
    }

    async fn on_session_state(&mut self, state: pb::SessionState) -> Step {
        if !matches!(self.phase, Phase::Answered | Phase::Active | Phase::AwaitingConsent) {
            debug!(phase = ?self.phase, "SessionState outside the session; ignored");
            return Step::Continue;
        }
        self.granted = PermissionSet::from_wire(&state.granted);
        self.relay_chat_only = state.chat_only;
        let first = self.phase != Phase::Active;
        if first {
            self.phase = Phase::Active;
            info!(granted = %self.granted, "session active");
            self.events
                .emit(Event::Connected {
                    granted: names(self.granted),
                })
                .await;
            // Mode switches made before consent are sent now.
            if self.modes.manual_pause || self.modes.view_only || self.modes.chat_only || !self.modes.revoked.is_empty()
            {
                if let Err(o) = self.send_client_state().await {
                    return Step::Done(o);
                }
            }
        }
        self.events
            .emit(Event::State {
                granted: names(self.granted),
                paused: state.paused,
                view_only: state.view_only,
                chat_only: state.chat_only,
            })
            .await;
        self.update_streaming();
        Step::Continue
    }

    /// Starts or stops the screen stream to match the session state; a restart comes with a
    /// keyframe and a fresh window.
    fn update_streaming(&mut self) {
        let allowed = self.phase == Phase::Active
            && self.granted.contains(Permission::View)
            && !self.modes.revoked.contains(Permission::View)
            && !self.modes.chat_only
            && !self.relay_chat_only;
        if allowed && !self.streaming {
            self.flow.restart();
        }
        if allowed != self.streaming {
            debug!(streaming = allowed, "screen stream");
        }
        self.streaming = allowed;
    }

    fn paused(&self) -> bool {
        self.modes.manual_pause || self.takeover.is_paused()
    }

    fn input_allowed(&self) -> bool {
        self.phase == Phase::Active
            && self.granted.contains(Permission::Control)
            && !self.modes.revoked.contains(Permission::Control)
            && !self.paused()
            && !self.modes.view_only
            && !self.modes.chat_only
    }

    async fn on_data(&mut self, data: pb::Data) {
        let channel = pb::Channel::try_from(data.channel).unwrap_or(pb::Channel::Unspecified);
        match channel {
            Channel::ScreenFeedback => match pb::ScreenFeedback::decode(data.payload) {
                Ok(fb) => self.flow.feedback(fb.ack_seq, fb.keyframe_request, Instant::now()),
                Err(e) => warn!(error = %e, "undecodable screen feedback; ignored"),
            },
            Channel::Input => {
                let event = match pb::InputEvent::decode(data.payload) {
                    Ok(pb::InputEvent { kind: Some(kind) }) => kind,
                    Ok(_) => return,
                    Err(e) => {
                        warn!(error = %e, "undecodable input event; ignored");
                        return;
                    }
                };
                if !self.input_allowed() {
                    debug!(seq = data.seq, "input not applied: control paused or not granted");
                    return;
                }
                self.apply_input(event).await;
            }
            Channel::Chat => match pb::ChatMessage::decode(data.payload) {
                Ok(m) => self.events.emit(Event::Chat { text: m.text }).await,
                Err(e) => warn!(error = %e, "undecodable chat message; ignored"),
            },
            _ => debug!(
                channel = data.channel,
                "data on a channel the client does not handle; ignored"
            ),
        }
    }

    /// Applies one input event: with `--input system`, injects it (a refused event is
    /// counted and reported as `input_refused`); with `--input log`, emits it.
    async fn apply_input(&mut self, kind: pb::input_event::Kind) {
        use pb::input_event::Kind;
        if let Some(injector) = self.injector.as_mut() {
            if let Kind::MouseMove(m) = &kind {
                // Recorded before the injection so the pointer watcher can never see the
                // move before we know it is ours.
                if let Ok(pos) = injector.screen_point(m.x, m.y) {
                    self.takeover.injected(pos, Instant::now());
                }
            }
            if let Err(e) = injector.apply(&kind) {
                let refused = injector.stats().refused;
                debug!(error = %e, refused, "input refused");
                self.events
                    .emit(Event::InputRefused {
                        reason: e.to_string(),
                        refused,
                    })
                    .await;
            }
            return;
        }
        let log = match kind {
            Kind::MouseMove(m) => {
                self.takeover.injected((m.x, m.y), Instant::now());
                InputLog::MouseMove { x: m.x, y: m.y }
            }
            Kind::MouseButton(b) => {
                let button = match pb::MouseButton::try_from(b.button).unwrap_or(pb::MouseButton::Unspecified) {
                    pb::MouseButton::Left => "left",
                    pb::MouseButton::Right => "right",
                    pb::MouseButton::Middle => "middle",
                    pb::MouseButton::Unspecified => "unspecified",
                };
                InputLog::MouseButton {
                    button: button.into(),
                    down: b.down,
                }
            }
            Kind::Wheel(w) => InputLog::Wheel { dx: w.dx, dy: w.dy },
            Kind::Key(k) => InputLog::Key {
                key: k.key,
                down: k.down,
            },
            Kind::Text(t) => InputLog::Text { text: t.text },
        };
        self.events.emit(Event::Input(log)).await;
    }

    async fn on_command(&mut self, cmd: Command) -> Step {
        let result = match cmd {
            Command::Consent { grant } => match PermissionSet::parse_names(grant.iter().map(String::as_str)) {
                Ok(set) if set.is_empty() => self.answer_consent(None).await,
                Ok(set) => self.answer_consent(Some(set)).await,
                Err(e) => {
                    self.events.emit(Event::error("bad_command", e)).await;
                    Ok(())
                }
            },
            Command::Deny => self.answer_consent(None).await,
            Command::LocalMouse { x, y } => {
                if self.phase == Phase::Active {
                    let before = self.paused();
                    let _ = self.takeover.local_motion(Instant::now());
                    debug!(x, y, "local pointer movement");
                    self.mode_changed(before).await
                } else {
                    Ok(())
                }
            }
            Command::Pause { on } => {
                let before = self.paused();
                self.modes.manual_pause = on;
                self.mode_changed(before).await
            }
            Command::ViewOnly { on } => {
                let before = self.paused();
                self.modes.view_only = on;
                self.mode_changed(before).await
            }
            Command::ChatOnly { on } => {
                let before = self.paused();
                self.modes.chat_only = on;
                self.mode_changed(before).await
            }
            Command::Revoke { permissions } => match PermissionSet::parse_names(permissions.iter().map(String::as_str))
            {
                Ok(set) => {
                    let before = self.paused();
                    self.modes.revoked = PermissionSet::from_bits(self.modes.revoked.bits() | set.bits());
                    self.mode_changed(before).await
                }
                Err(e) => {
                    self.events.emit(Event::error("bad_command", e)).await;
                    Ok(())
                }
            },
            Command::Chat { text } => {
                if text.len() > tsunagu_proto::limits::MAX_CHAT {
                    let msg = format!("a chat message has at most {} bytes", tsunagu_proto::limits::MAX_CHAT);
                    self.events.emit(Event::error("bad_command", msg)).await;
                    Ok(())
                } else {
                    self.send_data(Channel::Chat, pb::ChatMessage { text }.encode_to_vec())
                        .await
                        .map(|_| ())
                }
            }
            Command::End => {
                if self.phase == Phase::Ending {
                    Ok(())
                } else {
                    info!("ending the session");
                    self.phase = Phase::Ending;
                    self.streaming = false;
                    self.deadline = Some(Instant::now() + self.config.timeouts.end);
                    self.send(Body::End(pb::End {})).await
                }
            }
            Command::File(fc) => {
                let files = self.phase == Phase::Active
                    && self.granted.contains(Permission::Files)
                    && !self.modes.revoked.contains(Permission::Files);
                if !files {
                    self.events
                        .emit(Event::error(
                            "not_granted",
                            "file transfer is not granted in this session",
                        ))
                        .await;
                } else {
                    match self.transfers.command(&mut self.link, fc).await {
                        Ok(events) => self.emit_files(events).await,
                        Err((code, message)) => self.events.emit(Event::error(code, message)).await,
                    }
                }
                Ok(())
            }
        };
        match result {
            Ok(()) => Step::Continue,
            Err(outcome) => Step::Done(outcome),
        }
    }

    /// A file-transfer frame from the operator.
    async fn on_file_frame(&mut self, body: &Body) -> Step {
        match self.transfers.on_frame(&mut self.link, body).await {
            Ok(events) => {
                self.emit_files(events).await;
                Step::Continue
            }
            Err(e) => Step::Done(self.lost(e.to_string()).await),
        }
    }

    async fn pump_files(&mut self) -> Step {
        match self.transfers.pump(&mut self.link).await {
            Ok(events) => {
                self.emit_files(events).await;
                Step::Continue
            }
            Err(e) => Step::Done(self.lost(e.to_string()).await),
        }
    }

    async fn emit_files(&mut self, events: Vec<TransferEvent>) {
        for e in events {
            self.bars.show(&e);
            self.events.emit(Event::File(e.into())).await;
        }
    }

    /// Sends the user's answer: `Some(grants)` or `None` for a denial.
    async fn answer_consent(&mut self, grant: Option<PermissionSet>) -> Result<(), Outcome> {
        if self.phase != Phase::AwaitingConsent {
            self.events
                .emit(Event::error(
                    "bad_command",
                    "no consent request is waiting for an answer",
                ))
                .await;
            return Ok(());
        }
        self.phase = Phase::Answered;
        let consent = match grant {
            Some(set) => {
                info!(granted = %set, "consent given");
                pb::Consent {
                    granted: set.to_wire(),
                    denied: false,
                }
            }
            None => {
                info!("consent denied");
                self.user_denied = true;
                pb::Consent {
                    granted: vec![],
                    denied: true,
                }
            }
        };
        self.send(Body::Consent(consent)).await
    }

    /// After a mode switch: tell the relay (if the session runs), report a pause change, and
    /// start or stop the stream.
    async fn mode_changed(&mut self, paused_before: bool) -> Result<(), Outcome> {
        let paused_now = self.paused();
        if self.phase == Phase::Active {
            self.send_client_state().await?;
        }
        if paused_now != paused_before {
            info!(
                paused = paused_now,
                "remote control {}",
                if paused_now { "paused" } else { "resumed" }
            );
            self.events
                .emit(if paused_now { Event::Paused } else { Event::Resumed })
                .await;
            if !paused_now {
                self.flow.request_keyframe();
            }
        }
        let was_streaming = self.streaming;
        self.update_streaming();
        if self.streaming && !was_streaming {
            self.flow.request_keyframe();
        }
        Ok(())
    }

    async fn send_client_state(&mut self) -> Result<(), Outcome> {
        let state = pb::ClientState {
            paused: self.paused(),
            view_only: self.modes.view_only,
            chat_only: self.modes.chat_only,
            revoke: self.modes.revoked.to_wire(),
        };
        self.send(Body::ClientState(state)).await
    }

    async fn on_takeover_timer(&mut self) -> Step {
        let before = self.paused();
        if self.takeover.poll(Instant::now()) == Some(Transition::Resumed) {
            if let Err(o) = self.mode_changed(before).await {
                return Step::Done(o);
            }
        }
        Step::Continue
    }

    async fn on_deadline(&mut self) -> Step {
        self.deadline = None;
        match self.phase {
            Phase::Joining => {
                let msg = format!(
                    "the relay did not answer the join within {:?}",
                    self.config.timeouts.join
                );
                self.events.emit(Event::error("timeout", msg)).await;
                Step::Done(Outcome::Refused { code: "timeout".into() })
            }
            Phase::Ending => {
                debug!("no Ended from the relay in time; closing");
                self.events
                    .emit(Event::Ended {
                        reason: "client_ended".into(),
                    })
                    .await;
                Step::Done(Outcome::Ended {
                    reason: "client_ended".into(),
                })
            }
            _ => Step::Continue,
        }
    }

    /// On each frame-rate tick: asks the worker for a shot if the stream runs, the window
    /// has room and no shot is being made (a late worker makes ticks skip, never queue).
    fn on_tick(&mut self) -> Step {
        if !self.streaming || self.phase != Phase::Active || self.shot_pending {
            return Step::Continue;
        }
        if !self.flow.may_send(Instant::now()) {
            return Step::Continue;
        }
        if self.worker.request(ShotRequest {
            force_keyframe: self.flow.keyframe_due(),
        }) {
            self.shot_pending = true;
        }
        Step::Continue
    }

    /// The real pointer moved: local movement (not an echo of our injection) pauses control.
    async fn on_pointer(&mut self, report: PointerReport) -> Step {
        if self.phase != Phase::Active {
            return Step::Continue;
        }
        let before = self.paused();
        // Further movement during a pause only extends it; the relay hears of changes only.
        if self.takeover.pointer_moved(report.pos, report.at).is_some() && !before {
            debug!(x = report.pos.0, y = report.pos.1, "local pointer movement");
            if let Err(o) = self.mode_changed(before).await {
                return Step::Done(o);
            }
        }
        Step::Continue
    }

    /// Sends what the worker made, if the stream still runs.
    async fn on_shot(&mut self, shot: Shot) -> Step {
        self.shot_pending = false;
        let (encoded, width, height, captured_at_us) = match shot {
            Shot::Frame {
                encoded,
                width,
                height,
                captured_at_us,
            } => (encoded, width, height, captured_at_us),
            Shot::Unchanged => return Step::Continue,
            Shot::Failed(e) => {
                warn!(error = %e, "capture or encoding failed; frame skipped");
                self.flow.request_keyframe();
                return Step::Continue;
            }
        };
        if !self.streaming || self.phase != Phase::Active {
            // The stream stopped meanwhile; a restart asks for a keyframe anyway.
            return Step::Continue;
        }
        let now = Instant::now();
        if encoded.h264.len() + FRAME_OVERHEAD > self.config.max_frame {
            warn!(
                bytes = encoded.h264.len(),
                "encoded frame too large for one frame; skipped"
            );
            self.flow.request_keyframe();
            return Step::Continue;
        }
        let frame = pb::ScreenFrame {
            width: width as u32,
            height: height as u32,
            keyframe: encoded.keyframe,
            h264: encoded.h264.into(),
            captured_at_us,
        };
        match self.send_data(Channel::Screen, frame.encode_to_vec()).await {
            Ok(seq) => {
                self.flow.sent(seq, encoded.keyframe, now);
                Step::Continue
            }
            Err(o) => Step::Done(o),
        }
    }
}

/// The next pointer report, or never if there is no watcher.
async fn recv_pointer(pointer: &mut Option<mpsc::Receiver<PointerReport>>) -> Option<PointerReport> {
    match pointer {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn names(set: PermissionSet) -> Vec<String> {
    set.iter().map(|p| permission_name(p).to_string()).collect()
}
