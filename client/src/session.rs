//! The client's phase machine, plugged into the shared session driver
//! ([`tsunagu_endpoint::driver`]): join with the code, ask the user for consent, then stream
//! the screen under the flow-control window, apply input unless paused, and keep the relay
//! told about the user's mode switches.

use std::time::{Duration, Instant};

use prost::bytes::Bytes;
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::{Interval, MissedTickBehavior};
use tracing::{debug, info, warn};
use tsunagu_endpoint::driver::{self, permission_names as names, Events, Handled, LinkSettings, Lost, Step};
use tsunagu_endpoint::resume::{Resync, Role};
use tsunagu_proto::pb::{self, frame::Body, Channel, Permission};
use tsunagu_proto::PermissionSet;

use crate::api::{Command, Event, InputLog, Outcome};
use crate::capture::{self, Capturer, SyntheticCapturer};
use crate::config::{ClientConfig, InputSink, ScreenSource};
use crate::flow::{RateControl, ScreenFlow};
use crate::inject::SystemInjector;
use crate::pointer::{PointerReport, PointerWatcher};
use crate::stream::{EncoderSettings, ScreenWorker, Shot, ShotGate, ShotRequest};
use crate::takeover::{Takeover, Transition, CONSENT_CLICK_SETTLE};

/// Sent in `Hello`.
const AGENT: &str = concat!("tsunagu-client/", env!("CARGO_PKG_VERSION"));

/// Room kept in a frame for the `Data` header and the `ScreenFrame` fields around the H.264
/// bytes; an access unit that does not fit with it is dropped (and a keyframe follows).
const FRAME_OVERHEAD: usize = 1024;

/// What to do when the desktop cannot be opened: the real desktop is the default, so this is
/// what someone who started the client outside it, or for a test, needs to know.
const NO_DISPLAY_HINT: &str = "run the client inside the desktop to share (DISPLAY must name a reachable X display), \
     or pass --screen synthetic --input log for a test picture";

/// A deadline far enough away to mean "never" in a `select!`.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365);

/// What the client's handlers get from the driver.
type Core = driver::Core<Event>;

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

/// Runs one client session to its end. `commands` may close at any time (that is not the
/// end of the session); `events` receives everything the user should see.
pub async fn run(config: ClientConfig, commands: mpsc::Receiver<Command>, events: mpsc::Sender<Event>) -> Outcome {
    let events = Events::new(events);
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
                Ok(Err(e)) => return no_screen(&events, format!("{e}; {NO_DISPLAY_HINT}")).await,
                Err(e) => return no_screen(&events, e.to_string()).await,
            }
        }
    };
    let settings = EncoderSettings {
        fps: config.fps,
        bitrate_bps: config.bitrate_bps,
    };
    let (worker, shots) = match ScreenWorker::start(capturer, settings) {
        Ok(w) => w,
        Err(e) => return no_screen(&events, e.to_string()).await,
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
            Err(e) => return no_input(&events, format!("{e}; {NO_DISPLAY_HINT}")).await,
        };
        match PointerWatcher::start(None) {
            Ok(p) => (Some(injector), Some(p)),
            Err(e) => return no_input(&events, format!("cannot watch the pointer: {e}")).await,
        }
    } else {
        (None, None)
    };
    let link = LinkSettings {
        identity: None,
        relays: config.relays.clone(),
        ca: config.ca.clone(),
        attempt_timeout: config.timeouts.attempt,
        idle_timeout: config.timeouts.idle,
        write_timeout: config.timeouts.write,
        max_frame: config.max_frame,
        agent: AGENT,
        standby: config.standby.clone(),
    };
    let (watcher, pointer_reports) = match pointer {
        Some((w, r)) => (Some(w), Some(r)),
        None => (None, None),
    };
    // Capture ticks at the frame-rate cap; ticks a busy worker missed are skipped, never
    // bunched up (see `ShotGate`).
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / config.fps.max(1));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let client = Client {
        phase: Phase::Joining,
        user_denied: false,
        answer: None,
        last_input_seq: 0,
        granted: PermissionSet::EMPTY,
        relay_chat_only: false,
        streaming: false,
        modes: Modes::default(),
        cause_shown: pb::PauseCause::Unspecified,
        takeover: Takeover::new(config.takeover_resume),
        // The bit rate and frame rate follow what the operator acknowledges, up to the caps.
        flow: ScreenFlow::new(config.max_unacked, config.ack_stall)
            .with_rate(RateControl::new(config.bitrate_bps, config.fps)),
        worker,
        gate: ShotGate::default(),
        injector,
        ticks,
        shots: Some(shots),
        pointer: pointer_reports,
        config,
    };
    let outcome = driver::run(client, link, commands, events).await;
    drop(watcher);
    outcome
}

/// The screen cannot be captured: reported, and the run ends as unusable.
async fn no_screen(events: &Events<Event>, message: String) -> Outcome {
    events.emit(Event::error("no_screen", message)).await;
    Outcome::Usage {
        code: "no_screen".into(),
    }
}

/// Input cannot be injected or the pointer not watched: reported, and the run ends as
/// unusable.
async fn no_input(events: &Events<Event>, message: String) -> Outcome {
    events.emit(Event::error("no_input", message)).await;
    Outcome::Usage {
        code: "no_input".into(),
    }
}

struct Client {
    config: ClientConfig,
    phase: Phase,
    user_denied: bool,
    /// The user's consent answer, sent again if the relay asks again after a resume.
    answer: Option<pb::Consent>,
    /// Sequence number of the last input event applied (input numbers go on across the
    /// operator's resumes).
    last_input_seq: u64,
    /// Permissions in force, from the last `SessionState`.
    granted: PermissionSet,
    relay_chat_only: bool,
    /// Whether screen frames are flowing now.
    streaming: bool,
    modes: Modes,
    /// The pause cause the operator was last sent a frame for (a change sends a keyframe).
    cause_shown: pb::PauseCause,
    takeover: Takeover,
    flow: ScreenFlow,
    /// The capture/encode thread.
    worker: ScreenWorker,
    /// One shot at a time, a tick missed while it is made taken when it is done.
    gate: ShotGate,
    /// Input into the real desktop (`--input system`).
    injector: Option<SystemInjector>,
    /// The frame-rate cap's ticks.
    ticks: Interval,
    /// What the worker made; `None` once the worker stopped (reported once).
    shots: Option<mpsc::Receiver<Shot>>,
    /// Local pointer reports (`--input system`); `None` without a watcher.
    pointer: Option<mpsc::Receiver<PointerReport>>,
}

/// The client's own wake-ups.
enum Wake {
    /// A frame-rate tick.
    Tick,
    /// The worker answered (`None`: it stopped).
    Shot(Option<Shot>),
    /// The pointer watcher reported (`None`: it stopped).
    Pointer(Option<PointerReport>),
    /// The takeover pause may be over.
    Takeover,
}

impl driver::App for Client {
    const ROLE: Role = Role::Client;
    type Event = Event;
    type Command = Command;
    type Wake = Wake;

    async fn start(&mut self, core: &mut Core) -> Result<(), Lost> {
        core.set_deadline(Some(Instant::now() + self.config.timeouts.join));
        core.send(Body::Join(pb::Join {
            code: self.config.code.reveal(),
            host_name: self.config.host_name.clone(),
            resume_key: core.resume_key(),
        }))
        .await
    }

    async fn on_frame(&mut self, core: &mut Core, body: Body) -> Handled {
        match body {
            Body::ConsentRequest(req) if self.phase == Phase::Joining => {
                self.phase = Phase::AwaitingConsent;
                core.set_deadline(None);
                let permissions = PermissionSet::from_wire(&req.permissions);
                info!(session = %req.session_id, operator = %req.operator, %permissions, "consent requested");
                core.emit(Event::ConsentRequest {
                    operator: req.operator,
                    permissions: names(permissions),
                    timeout_s: req.timeout_ms.div_ceil(1000),
                    session_id: req.session_id,
                })
                .await;
                Ok(Step::Continue)
            }
            // After a resume the relay asks again if our answer never reached it.
            Body::ConsentRequest(_) if self.phase == Phase::Answered => {
                if let Some(consent) = self.answer.clone() {
                    debug!("consent asked again after a resume; the answer goes again");
                    core.send(Body::Consent(consent)).await?;
                }
                Ok(Step::Continue)
            }
            Body::SessionState(state) => self.on_session_state(core, state).await,
            other => {
                debug!(frame = ?std::mem::discriminant(&other), phase = ?self.phase, "ignored an unexpected frame");
                Ok(Step::Continue)
            }
        }
    }

    async fn on_data(&mut self, core: &mut Core, channel: Channel, seq: u64, payload: Bytes) -> Handled {
        match channel {
            Channel::ScreenFeedback => match pb::ScreenFeedback::decode(payload) {
                Ok(fb) => self.flow.feedback(fb.ack_seq, fb.keyframe_request, Instant::now()),
                Err(e) => warn!(error = %e, "undecodable screen feedback; ignored"),
            },
            // Input numbers carry on across the operator's resumes: one not above the last
            // applied is a repeat or out of order, and is never applied.
            Channel::Input if seq <= self.last_input_seq => {
                debug!(seq, last = self.last_input_seq, "input out of sequence; ignored");
            }
            Channel::Input => {
                self.last_input_seq = seq;
                match pb::InputEvent::decode(payload) {
                    Ok(pb::InputEvent { kind: Some(kind) }) => {
                        if self.input_allowed() {
                            self.apply_input(core, kind).await;
                        } else {
                            debug!(seq, "input not applied: control paused or not granted");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "undecodable input event; ignored"),
                }
            }
            Channel::Clipboard if self.granted.contains(Permission::Clipboard) => {
                self.on_clipboard(core, payload).await?
            }
            _ => debug!(
                channel = channel as i32,
                "data on a channel the client does not handle; ignored"
            ),
        }
        Ok(Step::Continue)
    }

    async fn on_command(&mut self, core: &mut Core, cmd: Command) -> Handled {
        self.command(core, cmd).await
    }

    async fn next_wake(&mut self) -> Wake {
        let takeover_deadline = self
            .takeover
            .next_deadline()
            .unwrap_or_else(|| Instant::now() + FAR_FUTURE);
        tokio::select! {
            _ = self.ticks.tick() => Wake::Tick,
            shot = recv_or_never(&mut self.shots) => Wake::Shot(shot),
            report = recv_or_never(&mut self.pointer) => Wake::Pointer(report),
            _ = tokio::time::sleep_until(takeover_deadline.into()) => Wake::Takeover,
        }
    }

    async fn on_wake(&mut self, core: &mut Core, wake: Wake) -> Handled {
        match wake {
            Wake::Tick => self.on_tick(),
            Wake::Shot(Some(shot)) => self.on_shot(core, shot).await,
            Wake::Shot(None) => {
                // Reported once: a stopped worker stays stopped.
                self.shots = None;
                self.gate.stopped();
                core.emit(Event::error("no_screen", "the screen worker stopped")).await;
                Ok(Step::Continue)
            }
            Wake::Pointer(Some(report)) => self.on_pointer(core, report).await,
            Wake::Pointer(None) => {
                self.pointer = None;
                Ok(Step::Continue)
            }
            Wake::Takeover => self.on_takeover_timer(core).await,
        }
    }

    async fn on_deadline(&mut self, core: &mut Core) -> Handled {
        match self.phase {
            Phase::Joining => {
                let msg = format!(
                    "the relay did not answer the join within {:?}",
                    self.config.timeouts.join
                );
                core.emit(Event::error("timeout", msg)).await;
                Ok(Step::Done(Outcome::Refused { code: "timeout".into() }))
            }
            Phase::Ending => {
                debug!("no Ended from the relay in time; closing");
                core.emit(Event::Ended {
                    reason: "client_ended".into(),
                })
                .await;
                Ok(Step::Done(Outcome::Ended {
                    reason: "client_ended".into(),
                }))
            }
            _ => Ok(Step::Continue),
        }
    }

    /// An error during the session is reported; the relay's `Ended` follows. Before it, the
    /// relay refused the join.
    fn error_ends_run(&self) -> bool {
        self.phase != Phase::Active
    }

    async fn on_ended(&mut self, _core: &mut Core, _reason: pb::EndReason) -> bool {
        matches!(self.phase, Phase::Active | Phase::Ending) || self.user_denied
    }

    /// After a resume (ours or the operator's) the operator's picture has a gap: the stream
    /// restarts with a keyframe and a fresh window (the acks in flight were lost).
    async fn on_resync(&mut self, _core: &mut Core, why: Resync) -> Handled {
        debug!(?why, streaming = self.streaming, "resync: keyframe next");
        if self.streaming {
            self.flow.restart();
        }
        Ok(Step::Continue)
    }

    fn lost_ends_as(&self) -> Option<&'static str> {
        match self.phase {
            Phase::Ending => Some("client_ended"),
            // The user's denial is final; a relay that closes without `Ended` changes nothing.
            Phase::Answered if self.user_denied => Some("consent_denied"),
            _ => None,
        }
    }
}

impl Client {
    /// Clipboard text from the operator: onto this machine's clipboard; or the operator's
    /// request for ours: the text goes back, or why there is none.
    async fn on_clipboard(&mut self, core: &mut Core, payload: Bytes) -> Result<(), Lost> {
        use tsunagu_endpoint::clipboard;
        let message = match pb::ClipboardText::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "undecodable clipboard text; ignored");
                return Ok(());
            }
        };
        if message.request {
            let answer = match clipboard::read_text().await {
                Ok(text) => {
                    let chars = clipboard::chars(&text);
                    info!(chars, "clipboard text sent to the operator");
                    core.emit(Event::ClipboardShared { chars }).await;
                    pb::ClipboardText {
                        text,
                        ..Default::default()
                    }
                }
                Err(e) => {
                    warn!(error = %e, "the operator asked for the clipboard; none to give");
                    pb::ClipboardText {
                        error: e.code().into(),
                        ..Default::default()
                    }
                }
            };
            core.send_data(Channel::Clipboard, answer.encode_to_vec()).await?;
            return Ok(());
        }
        let chars = clipboard::chars(&message.text);
        match clipboard::write_text(message.text).await {
            Ok(()) => {
                info!(chars, "the operator's text is on the clipboard");
                core.emit(Event::ClipboardReceived { chars }).await;
            }
            Err(e) => {
                core.emit(Event::error(format!("clipboard_{}", e.code()), e.to_string()))
                    .await
            }
        }
        Ok(())
    }

    async fn on_session_state(&mut self, core: &mut Core, state: pb::SessionState) -> Handled {
        if !matches!(self.phase, Phase::Answered | Phase::Active | Phase::AwaitingConsent) {
            debug!(phase = ?self.phase, "SessionState outside the session; ignored");
            return Ok(Step::Continue);
        }
        self.granted = PermissionSet::from_wire(&state.granted);
        self.relay_chat_only = state.chat_only;
        let first = self.phase != Phase::Active;
        if first {
            self.phase = Phase::Active;
            info!(granted = %self.granted, "session active");
            core.emit(Event::Connected {
                granted: names(self.granted),
            })
            .await;
            // Mode switches made before consent are sent now.
            if self.modes.manual_pause || self.modes.view_only || self.modes.chat_only || !self.modes.revoked.is_empty()
            {
                self.send_client_state(core).await?;
            }
        }
        core.emit(Event::State {
            granted: names(self.granted),
            paused: state.paused,
            view_only: state.view_only,
            chat_only: state.chat_only,
        })
        .await;
        self.update_streaming();
        Ok(Step::Continue)
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

    /// Why control is paused, for the operator's banner: the Pause button wins over the
    /// mouse (it lasts until the user presses it again).
    fn pause_cause(&self) -> pb::PauseCause {
        if self.modes.manual_pause {
            pb::PauseCause::Button
        } else if self.takeover.is_paused() {
            pb::PauseCause::LocalInput
        } else {
            pb::PauseCause::Unspecified
        }
    }

    fn input_allowed(&self) -> bool {
        self.phase == Phase::Active
            && self.granted.contains(Permission::Control)
            && !self.modes.revoked.contains(Permission::Control)
            && !self.paused()
            && !self.modes.view_only
            && !self.modes.chat_only
    }

    /// Applies one input event: with `--input system`, injects it (a refused event is
    /// counted and reported as `input_refused`); with `--input log`, emits it.
    async fn apply_input(&mut self, core: &mut Core, kind: pb::input_event::Kind) {
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
                core.emit(Event::InputRefused {
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
        core.emit(Event::Input(log)).await;
    }

    async fn command(&mut self, core: &mut Core, cmd: Command) -> Handled {
        let result = match cmd {
            Command::Consent { grant, clicked } => match PermissionSet::parse_names(grant.iter().map(String::as_str)) {
                Ok(set) if set.is_empty() => self.answer_consent(core, None).await,
                Ok(set) => {
                    if clicked {
                        // The pointer movement of the click that gave it is not a takeover.
                        self.takeover.settle_until(Instant::now() + CONSENT_CLICK_SETTLE);
                    }
                    self.answer_consent(core, Some(set)).await
                }
                Err(e) => {
                    core.emit(Event::error("bad_command", e)).await;
                    Ok(())
                }
            },
            Command::Deny => self.answer_consent(core, None).await,
            Command::LocalMouse { x, y } => {
                if self.phase == Phase::Active {
                    let before = self.paused();
                    let _ = self.takeover.local_motion(Instant::now());
                    debug!(x, y, "local pointer movement");
                    self.mode_changed(core, before).await
                } else {
                    Ok(())
                }
            }
            Command::Pause { on } => {
                let before = self.paused();
                self.modes.manual_pause = on;
                self.mode_changed(core, before).await
            }
            Command::ViewOnly { on } => {
                let before = self.paused();
                self.modes.view_only = on;
                self.mode_changed(core, before).await
            }
            Command::ChatOnly { on } => {
                let before = self.paused();
                self.modes.chat_only = on;
                self.mode_changed(core, before).await
            }
            Command::Revoke { permissions } => match PermissionSet::parse_names(permissions.iter().map(String::as_str))
            {
                Ok(set) => {
                    let before = self.paused();
                    self.modes.revoked = PermissionSet::from_bits(self.modes.revoked.bits() | set.bits());
                    self.mode_changed(core, before).await
                }
                Err(e) => {
                    core.emit(Event::error("bad_command", e)).await;
                    Ok(())
                }
            },
            Command::Chat { text } => core.send_chat(text).await,
            Command::End => {
                if self.phase == Phase::Ending {
                    Ok(())
                } else {
                    info!("ending the session");
                    self.phase = Phase::Ending;
                    self.streaming = false;
                    core.set_deadline(Some(Instant::now() + self.config.timeouts.end));
                    core.send(Body::End(pb::End {})).await
                }
            }
            Command::File(fc) => {
                let files = self.phase == Phase::Active
                    && self.granted.contains(Permission::Files)
                    && !self.modes.revoked.contains(Permission::Files);
                if !files {
                    core.emit(Event::error(
                        "not_granted",
                        "file transfer is not granted in this session",
                    ))
                    .await;
                } else {
                    core.file_command(fc).await;
                }
                Ok(())
            }
        };
        result?;
        Ok(Step::Continue)
    }

    /// Sends the user's answer: `Some(grants)` or `None` for a denial.
    async fn answer_consent(&mut self, core: &mut Core, grant: Option<PermissionSet>) -> Result<(), Lost> {
        if self.phase != Phase::AwaitingConsent {
            core.emit(Event::error(
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
        self.answer = Some(consent.clone());
        core.send(Body::Consent(consent)).await
    }

    /// After a mode switch: tell the relay (if the session runs), report a pause change, and
    /// start or stop the stream.
    async fn mode_changed(&mut self, core: &mut Core, paused_before: bool) -> Result<(), Lost> {
        let paused_now = self.paused();
        if self.pause_cause() != self.cause_shown {
            // The operator learns the cause from the next frame: one goes out at once
            // (a keyframe, since an unchanged screen would send nothing).
            self.cause_shown = self.pause_cause();
            self.flow.request_keyframe();
        }
        if self.phase == Phase::Active {
            self.send_client_state(core).await?;
        }
        if paused_now != paused_before {
            info!(
                paused = paused_now,
                "remote control {}",
                if paused_now { "paused" } else { "resumed" }
            );
            core.emit(if paused_now { Event::Paused } else { Event::Resumed }).await;
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

    async fn send_client_state(&mut self, core: &mut Core) -> Result<(), Lost> {
        let state = pb::ClientState {
            paused: self.paused(),
            view_only: self.modes.view_only,
            chat_only: self.modes.chat_only,
            revoke: self.modes.revoked.to_wire(),
        };
        core.send(Body::ClientState(state)).await
    }

    async fn on_takeover_timer(&mut self, core: &mut Core) -> Handled {
        let before = self.paused();
        if self.takeover.poll(Instant::now()) == Some(Transition::Resumed) {
            self.mode_changed(core, before).await?;
        }
        Ok(Step::Continue)
    }

    /// On each frame-rate tick: asks the worker for a shot if the stream runs, the window
    /// has room and no shot is being made (then the tick is taken when it is done).
    fn on_tick(&mut self) -> Handled {
        if !self.gate.tick() {
            return Ok(Step::Continue);
        }
        self.take_tick()
    }

    /// Asks the worker for a shot if the stream runs and the window has room.
    fn take_tick(&mut self) -> Handled {
        if !self.streaming || self.phase != Phase::Active {
            return Ok(Step::Continue);
        }
        if !self.flow.may_send(Instant::now()) {
            return Ok(Step::Continue);
        }
        if self.worker.request(ShotRequest {
            force_keyframe: self.flow.keyframe_due(),
            rate: self.flow.target(),
        }) {
            self.gate.requested();
        }
        Ok(Step::Continue)
    }

    /// The real pointer moved: local movement (not an echo of our injection) pauses control.
    async fn on_pointer(&mut self, core: &mut Core, report: PointerReport) -> Handled {
        if self.phase != Phase::Active {
            return Ok(Step::Continue);
        }
        let before = self.paused();
        // Further movement during a pause only extends it; the relay hears of changes only.
        if self.takeover.pointer_moved(report.pos, report.at).is_some() && !before {
            debug!(x = report.pos.0, y = report.pos.1, "local pointer movement");
            self.mode_changed(core, before).await?;
        }
        Ok(Step::Continue)
    }

    /// Sends what the worker made, if the stream still runs; takes a tick that came while it
    /// was made.
    async fn on_shot(&mut self, core: &mut Core, shot: Shot) -> Handled {
        let missed = self.gate.answered();
        let step = self.send_shot(core, shot).await?;
        if missed && matches!(step, Step::Continue) {
            return self.take_tick();
        }
        Ok(step)
    }

    /// Sends what the worker made, if the stream still runs.
    async fn send_shot(&mut self, core: &mut Core, shot: Shot) -> Handled {
        let (encoded, width, height, captured_at_us) = match shot {
            Shot::Frame {
                encoded,
                width,
                height,
                captured_at_us,
            } => (encoded, width, height, captured_at_us),
            Shot::Unchanged => return Ok(Step::Continue),
            Shot::Failed(e) => {
                warn!(error = %e, "capture or encoding failed; frame skipped");
                self.flow.request_keyframe();
                return Ok(Step::Continue);
            }
        };
        if !self.streaming || self.phase != Phase::Active {
            // The stream stopped meanwhile; a restart asks for a keyframe anyway.
            return Ok(Step::Continue);
        }
        let now = Instant::now();
        if encoded.h264.len() + FRAME_OVERHEAD > self.config.max_frame {
            warn!(
                bytes = encoded.h264.len(),
                "encoded frame too large for one frame; skipped"
            );
            self.flow.request_keyframe();
            return Ok(Step::Continue);
        }
        let bytes = encoded.h264.len();
        let frame = pb::ScreenFrame {
            width: width as u32,
            height: height as u32,
            keyframe: encoded.keyframe,
            h264: encoded.h264.into(),
            captured_at_us,
            pause_cause: self.pause_cause() as i32,
        };
        let seq = core.send_data(Channel::Screen, frame.encode_to_vec()).await?;
        // How long ago the picture was taken (the capture time is wall-clock, for the operator).
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let age = Duration::from_micros(now_us.saturating_sub(captured_at_us).min(10_000_000));
        let captured = now.checked_sub(age).unwrap_or(now);
        self.flow.sent_frame(seq, bytes, encoded.keyframe, captured, now);
        Ok(Step::Continue)
    }
}

/// The next message of `rx`, or never if there is none.
async fn recv_or_never<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
