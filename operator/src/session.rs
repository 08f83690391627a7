//! The operator's phase machine, plugged into the shared session driver
//! ([`tsunagu_endpoint::driver`]): log in, get a code, wait for the client and its consent,
//! then decode the screen (acking every frame, asking for a keyframe after a gap), send input
//! and chat, and report the client's pauses and mode switches.

use std::convert::Infallible;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use tsunagu_endpoint::driver::{self, permission_names as names, Events, Handled, LinkSettings, Lost, Step};
use tsunagu_endpoint::resume::{Resync, Role};
use tsunagu_proto::pb::{self, frame::Body, Channel};
use tsunagu_proto::PermissionSet;

use crate::api::{Button, Command, Event, Outcome};
use crate::config::OperatorConfig;
use crate::decode::{FrameResult, ScreenDecoder};

/// Sent in `Hello`.
const AGENT: &str = concat!("tsunagu-operator/", env!("CARGO_PKG_VERSION"));

/// What the operator's handlers get from the driver.
type Core = driver::Core<Event>;

/// Where the session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// `Login` sent; waiting for `LoginOk` or an error.
    LoggingIn,
    /// `RequestCode` sent; waiting for `CodeIssued`.
    RequestingCode,
    /// The code is out; waiting for a client to join.
    WaitingForClient,
    /// A client joined; waiting for its consent.
    WaitingForConsent,
    /// Consent given; the session runs.
    Active,
    /// `End` sent; waiting for `Ended`.
    Ending,
}

/// Runs one operator session to its end. `commands` may close at any time (that is not the
/// end of the session); `events` receives everything the operator should see.
pub async fn run(config: OperatorConfig, commands: mpsc::Receiver<Command>, events: mpsc::Sender<Event>) -> Outcome {
    let events = Events::new(events);
    let decoder = match ScreenDecoder::new() {
        Ok(d) => d,
        Err(e) => {
            events
                .emit(Event::error("internal", format!("cannot start the H.264 decoder: {e}")))
                .await;
            return Outcome::Usage {
                code: "internal".into(),
            };
        }
    };
    let mut config = config;
    renew_if_due(&mut config, &events).await;
    let settings = LinkSettings {
        identity: config.identity.clone(),
        relays: config.relays.clone(),
        ca: config.ca.clone(),
        attempt_timeout: config.timeouts.attempt,
        idle_timeout: config.timeouts.idle,
        write_timeout: config.timeouts.write,
        max_frame: config.max_frame,
        agent: AGENT,
        standby: config.standby.clone(),
    };
    let operator = Operator {
        phase: Phase::LoggingIn,
        session_id: String::new(),
        paused: false,
        pause_cause: pb::PauseCause::Unspecified,
        decoder,
        last_decoded_seq: 0,
        granted: PermissionSet::EMPTY,
        config,
    };
    driver::run(operator, settings, commands, events).await
}

/// Renews the `--cert` certificate when about two thirds of its lifetime have passed
/// (see [`tsunagu_endpoint::renew`]), over a connection of its own to the first relay, before
/// the session dials. A failure is reported and the session goes on with the current one.
async fn renew_if_due(config: &mut OperatorConfig, events: &Events<Event>) {
    let Some(file) = config.cert_file.clone() else { return };
    if !tsunagu_endpoint::renew::is_due(
        &file.identity,
        std::time::SystemTime::now(),
        tsunagu_endpoint::renew::random_jitter(),
    ) {
        return;
    }
    let Some(relay) = config.relays.first() else { return };
    let tls = match tsunagu_endpoint::dial::client_tls_with(&config.ca, Some(&file.identity)) {
        Ok(t) => t,
        Err(e) => {
            events.emit(Event::CertRenewalFailed { message: e.to_string() }).await;
            return;
        }
    };
    let dial = tsunagu_endpoint::dial::DialConfig {
        host: relay.host.clone(),
        ports: relay.ports.clone(),
        tls,
        attempt_timeout: config.timeouts.attempt,
        max_frame: config.max_frame,
        agent: AGENT.to_string(),
    };
    let login = pb::Login {
        user: config.user.clone(),
        password: config.password.clone(),
        totp: config.totp.clone(),
    };
    match tsunagu_endpoint::renew::renew(&dial, login, &file).await {
        Ok((identity, renewed)) => {
            tracing::info!(serial = %renewed.serial, "renewed the client certificate");
            config.identity = Some(identity.clone());
            config.cert_file = Some(tsunagu_endpoint::renew::CertFile { identity, ..file });
            events
                .emit(Event::CertRenewed {
                    serial: renewed.serial,
                    not_after_ms: renewed.not_after_unix_ms,
                })
                .await;
        }
        Err(message) => {
            tracing::warn!(%message, "could not renew the client certificate");
            events.emit(Event::CertRenewalFailed { message }).await;
        }
    }
}

struct Operator {
    config: OperatorConfig,
    phase: Phase,
    session_id: String,
    /// Whether the client has paused control, from the last `SessionState`.
    paused: bool,
    /// Why, as the client's last screen frame said.
    pause_cause: pb::PauseCause,
    decoder: ScreenDecoder,
    last_decoded_seq: u64,
    /// Permissions in force, from the last `SessionState`.
    granted: PermissionSet,
}

impl driver::App for Operator {
    const ROLE: Role = Role::Operator;
    type Event = Event;
    type Command = Command;
    /// The operator has no wake-ups of its own.
    type Wake = Infallible;

    async fn start(&mut self, core: &mut Core) -> Result<(), Lost> {
        info!(user = %self.config.user, "logging in");
        core.set_deadline(Some(Instant::now() + self.config.timeouts.step));
        let login = pb::Login {
            user: self.config.user.clone(),
            password: self.config.password.clone(),
            totp: self.config.totp.clone(),
        };
        core.send(Body::Login(login)).await
    }

    async fn on_frame(&mut self, core: &mut Core, body: Body) -> Handled {
        match body {
            Body::LoginOk(ok) if self.phase == Phase::LoggingIn => {
                let allowed = PermissionSet::from_wire(&ok.allowed);
                info!(operator = %ok.operator, %allowed, "logged in");
                core.emit(Event::LoggedIn {
                    operator: ok.operator,
                    allowed: names(allowed),
                })
                .await;
                self.phase = Phase::RequestingCode;
                core.set_deadline(Some(Instant::now() + self.config.timeouts.step));
                let permissions = self.config.permissions.to_wire();
                let resume_key = core.resume_key();
                core.send(Body::RequestCode(pb::RequestCode {
                    permissions,
                    resume_key,
                }))
                .await?;
            }
            Body::CodeIssued(issued) if self.phase == Phase::RequestingCode => {
                self.phase = Phase::WaitingForClient;
                core.set_deadline(None);
                self.session_id = issued.session_id.clone();
                info!(session = %issued.session_id, expires_in_ms = issued.expires_in_ms, "code issued");
                core.emit(Event::Code {
                    code: issued.code,
                    expires_in_s: issued.expires_in_ms.div_ceil(1000),
                    session_id: issued.session_id,
                })
                .await;
            }
            Body::PeerJoined(peer) => {
                if self.phase == Phase::WaitingForClient {
                    self.phase = Phase::WaitingForConsent;
                }
                info!(session = %self.session_id, client_ip = %peer.ip, client_port = peer.port, "client joined");
                core.emit(Event::PeerJoined {
                    // The relay cleans host names already; inert here too, for every display.
                    host: tsunagu_proto::names::make_inert(&peer.host_name),
                    ip: peer.ip,
                    port: peer.port,
                })
                .await;
            }
            Body::SessionState(state) => self.on_session_state(core, state).await,
            other => {
                debug!(frame = ?std::mem::discriminant(&other), phase = ?self.phase, "ignored an unexpected frame");
            }
        }
        Ok(Step::Continue)
    }

    async fn on_data(&mut self, core: &mut Core, channel: Channel, seq: u64, payload: Bytes) -> Handled {
        match channel {
            Channel::Screen => self.on_screen(core, seq, payload).await?,
            Channel::Clipboard => self.on_clipboard(core, payload).await,
            _ => debug!(
                channel = channel as i32,
                "data on a channel the operator does not handle; ignored"
            ),
        }
        Ok(Step::Continue)
    }

    async fn next_wake(&mut self) -> Infallible {
        std::future::pending().await
    }

    async fn on_wake(&mut self, _core: &mut Core, wake: Infallible) -> Handled {
        match wake {}
    }

    async fn on_deadline(&mut self, core: &mut Core) -> Handled {
        match self.phase {
            Phase::LoggingIn | Phase::RequestingCode => {
                let what = if self.phase == Phase::LoggingIn {
                    "login"
                } else {
                    "code request"
                };
                let msg = format!(
                    "the relay did not answer the {what} within {:?}",
                    self.config.timeouts.step
                );
                core.emit(Event::error("timeout", msg)).await;
                Ok(Step::Done(Outcome::Refused { code: "timeout".into() }))
            }
            _ => {
                debug!("no Ended from the relay in time; closing");
                core.emit(Event::Ended {
                    reason: "operator_ended".into(),
                })
                .await;
                Ok(Step::Done(Outcome::Ended {
                    reason: "operator_ended".into(),
                }))
            }
        }
    }

    fn error_ends_run(&self) -> bool {
        self.phase < Phase::WaitingForClient
    }

    async fn on_ended(&mut self, core: &mut Core, reason: pb::EndReason) -> bool {
        let ran = self.phase >= Phase::Active;
        if !ran && matches!(reason, pb::EndReason::ConsentDenied | pb::EndReason::ConsentTimeout) {
            core.emit(Event::Consent {
                granted: None,
                denied: Some(true),
                reason: Some(tsunagu_proto::types::end_reason_name(reason).into()),
            })
            .await;
        }
        ran
    }

    fn lost_ends_as(&self) -> Option<&'static str> {
        (self.phase == Phase::Ending).then_some("operator_ended")
    }

    /// After our own resume the picture may be mid-gap: wait for the keyframe the client
    /// sends (and ask for one, in case the client's went out before we were back).
    async fn on_resync(&mut self, core: &mut Core, why: Resync) -> Handled {
        if matches!(why, Resync::Resumed(_))
            && self.phase == Phase::Active
            && self.granted.contains(pb::Permission::View)
        {
            self.decoder.request_now();
            let fb = pb::ScreenFeedback {
                ack_seq: 0,
                keyframe_request: true,
            };
            core.send_data(Channel::ScreenFeedback, fb.encode_to_vec()).await?;
        }
        Ok(Step::Continue)
    }

    async fn on_command(&mut self, core: &mut Core, cmd: Command) -> Handled {
        use pb::input_event::Kind;
        let sendable = self.phase >= Phase::WaitingForClient && self.phase != Phase::Ending;
        let needs_session = !matches!(cmd, Command::End | Command::Sample { .. });
        if needs_session && !sendable {
            core.emit(Event::error("not_active", "there is no session to send this to"))
                .await;
            return Ok(Step::Continue);
        }
        match cmd {
            Command::MouseMove { x, y } => send_input(core, vec![Kind::MouseMove(pb::MouseMove { x, y })]).await?,
            Command::MouseButton { button, down } => {
                let button = match button {
                    Button::Left => pb::MouseButton::Left,
                    Button::Right => pb::MouseButton::Right,
                    Button::Middle => pb::MouseButton::Middle,
                } as i32;
                let events = presses(down)
                    .map(|down| Kind::MouseButton(pb::MouseButtonEvent { button, down }))
                    .collect();
                send_input(core, events).await?
            }
            Command::Wheel { dx, dy } => send_input(core, vec![Kind::Wheel(pb::Wheel { dx, dy })]).await?,
            Command::Key { key, down } => {
                let events = presses(down)
                    .map(|down| Kind::Key(pb::KeyEvent { key: key.clone(), down }))
                    .collect();
                send_input(core, events).await?
            }
            Command::Text { text } => send_input(core, vec![Kind::Text(pb::TextInput { text })]).await?,
            Command::Chat { text } => core.send_chat(text).await?,
            Command::ClipboardSend { text } => self.clipboard_send(core, text).await?,
            Command::ClipboardGet => {
                if self.clipboard_granted(core).await {
                    let ask = pb::ClipboardText {
                        request: true,
                        ..Default::default()
                    };
                    core.send_data(Channel::Clipboard, ask.encode_to_vec()).await?;
                }
            }
            Command::RequestKeyframe => {
                self.decoder.request_now();
                let fb = pb::ScreenFeedback {
                    ack_seq: 0,
                    keyframe_request: true,
                };
                core.send_data(Channel::ScreenFeedback, fb.encode_to_vec()).await?;
            }
            Command::Sample { x, y } => match self.decoder.pixel(x, y) {
                Some([r, g, b]) => {
                    core.emit(Event::Pixel {
                        x,
                        y,
                        r,
                        g,
                        b,
                        seq: self.last_decoded_seq,
                    })
                    .await;
                }
                None => {
                    core.emit(Event::error("bad_command", "no decoded picture covers that point"))
                        .await;
                }
            },
            Command::End => return self.end(core).await,
            Command::File(fc) => {
                if self.phase != Phase::Active || !self.granted.contains(pb::Permission::Files) {
                    core.emit(Event::error("not_granted", "the client has not granted file transfer"))
                        .await;
                } else {
                    core.file_command(fc).await;
                }
            }
        }
        Ok(Step::Continue)
    }
}

impl Operator {
    /// Whether clipboard text may move now; says why not as an error event.
    async fn clipboard_granted(&self, core: &mut Core) -> bool {
        let granted = self.phase == Phase::Active && self.granted.contains(pb::Permission::Clipboard);
        if !granted {
            core.emit(Event::error("not_granted", "the client has not allowed clipboard text"))
                .await;
        }
        granted
    }

    /// Sends `text`, or this machine's clipboard text, to the client's clipboard.
    async fn clipboard_send(&mut self, core: &mut Core, text: Option<String>) -> Result<(), Lost> {
        if !self.clipboard_granted(core).await {
            return Ok(());
        }
        let text = match text {
            Some(t) => tsunagu_endpoint::clipboard::check(&t).map(|()| t),
            None => tsunagu_endpoint::clipboard::read_text().await,
        };
        match text {
            Ok(text) => {
                let chars = tsunagu_endpoint::clipboard::chars(&text);
                let message = pb::ClipboardText {
                    text,
                    ..Default::default()
                };
                core.send_data(Channel::Clipboard, message.encode_to_vec()).await?;
                info!(session = %self.session_id, chars, "clipboard text sent");
                core.emit(Event::ClipboardSent { chars }).await;
            }
            Err(e) => {
                core.emit(Event::error(format!("clipboard_{}", e.code()), e.to_string()))
                    .await
            }
        }
        Ok(())
    }

    /// The client's clipboard text (or why there is none), answering `clipboard_get`.
    async fn on_clipboard(&mut self, core: &mut Core, payload: Bytes) {
        use tsunagu_endpoint::clipboard::{self, ClipboardError};
        let message = match pb::ClipboardText::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "undecodable clipboard text; ignored");
                return;
            }
        };
        let text = if message.error.is_empty() {
            clipboard::check(&message.text).map(|()| message.text)
        } else {
            Err(ClipboardError::from_code(&message.error))
        };
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                let message = format!("the client's clipboard: {e}");
                core.emit(Event::error(format!("clipboard_{}", e.code()), message))
                    .await;
                return;
            }
        };
        let chars = clipboard::chars(&text);
        if self.config.system_clipboard {
            if let Err(e) = clipboard::write_text(text.clone()).await {
                core.emit(Event::error(format!("clipboard_{}", e.code()), e.to_string()))
                    .await;
                return;
            }
        }
        info!(session = %self.session_id, chars, "the client's clipboard text arrived");
        core.emit(Event::Clipboard { text, chars }).await;
    }

    async fn on_session_state(&mut self, core: &mut Core, state: pb::SessionState) {
        let granted = PermissionSet::from_wire(&state.granted);
        self.granted = granted;
        if self.phase < Phase::Active {
            self.phase = Phase::Active;
            info!(session = %self.session_id, %granted, "session active");
            core.emit(Event::Consent {
                granted: Some(names(granted)),
                denied: None,
                reason: None,
            })
            .await;
        }
        core.emit(Event::State {
            granted: names(granted),
            paused: state.paused,
            view_only: state.view_only,
            chat_only: state.chat_only,
        })
        .await;
        if state.paused != self.paused {
            self.paused = state.paused;
            info!(session = %self.session_id, paused = state.paused, "client {}", if state.paused { "paused control" } else { "resumed control" });
            core.emit(if state.paused { Event::Paused } else { Event::Resumed })
                .await;
        }
    }

    /// Decodes one screen frame, reports it, and acks it (with a keyframe request when the
    /// picture is out of sync).
    async fn on_screen(&mut self, core: &mut Core, seq: u64, payload: Bytes) -> Result<(), Lost> {
        let now = Instant::now();
        let (result, feedback, frame) = match pb::ScreenFrame::decode(payload) {
            Ok(frame) => {
                let (result, feedback) = self.decoder.frame(seq, frame.keyframe, &frame.h264, now);
                (result, feedback, Some(frame))
            }
            Err(e) => {
                self.decoder.lose_sync();
                let (_, feedback) = self.decoder.frame(seq, false, &[], now);
                (
                    FrameResult::Failed(format!("undecodable ScreenFrame: {e}")),
                    feedback,
                    None,
                )
            }
        };
        match (result, frame) {
            (FrameResult::Decoded(picture), Some(frame)) => {
                let cause = frame.pause_cause();
                if cause != self.pause_cause {
                    self.pause_cause = cause;
                    core.emit(Event::PauseCause {
                        cause: pause_cause_name(cause).into(),
                    })
                    .await;
                }
                self.last_decoded_seq = seq;
                if let Some(sink) = &self.config.picture {
                    let (rgb, width, height) = self.decoder.rgb();
                    sink.put(width, height, rgb, seq);
                }
                let now_us = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_micros() as i64)
                    .unwrap_or(0);
                core.emit_lossy(Event::Frame {
                    seq,
                    width: picture.width,
                    height: picture.height,
                    keyframe: frame.keyframe,
                    bytes: frame.h264.len(),
                    latency_us: now_us.saturating_sub(frame.captured_at_us as i64),
                });
            }
            (FrameResult::Failed(e), _) => warn!(seq, error = %e, "screen frame not decoded; keyframe requested"),
            (FrameResult::Skipped, _) => debug!(seq, "delta frame skipped while waiting for a keyframe"),
            _ => {}
        }
        let fb = pb::ScreenFeedback {
            ack_seq: feedback.ack_seq,
            keyframe_request: feedback.keyframe_request,
        };
        core.send_data(Channel::ScreenFeedback, fb.encode_to_vec()).await?;
        Ok(())
    }

    /// Ends the session. Ending is the operator's own choice, so the run counts as ended
    /// (exit 0) whatever phase it was in; before a code exists there is nothing to end on
    /// the relay and the run just stops.
    async fn end(&mut self, core: &mut Core) -> Handled {
        match self.phase {
            Phase::Ending => Ok(Step::Continue),
            Phase::LoggingIn | Phase::RequestingCode => {
                core.emit(Event::Ended {
                    reason: "operator_ended".into(),
                })
                .await;
                Ok(Step::Done(Outcome::Ended {
                    reason: "operator_ended".into(),
                }))
            }
            _ => {
                info!(session = %self.session_id, "ending the session");
                self.phase = Phase::Ending;
                core.set_deadline(Some(Instant::now() + self.config.timeouts.end));
                core.send(Body::End(pb::End {})).await?;
                Ok(Step::Continue)
            }
        }
    }
}

/// The contract's name for a pause cause (the `pause_cause` event).
pub fn pause_cause_name(cause: pb::PauseCause) -> &'static str {
    match cause {
        pb::PauseCause::Button => "button",
        pb::PauseCause::LocalInput => "local_input",
        pb::PauseCause::Unspecified => "none",
    }
}

/// Sends input events (the relay decides whether they reach the client).
async fn send_input(core: &mut Core, kinds: Vec<pb::input_event::Kind>) -> Result<(), Lost> {
    for kind in kinds {
        let payload = pb::InputEvent { kind: Some(kind) }.encode_to_vec();
        core.send_data(Channel::Input, payload).await?;
    }
    Ok(())
}

/// The `down` values to send: one if given, else press then release.
fn presses(down: Option<bool>) -> impl Iterator<Item = bool> {
    match down {
        Some(d) => vec![d],
        None => vec![true, false],
    }
    .into_iter()
}
