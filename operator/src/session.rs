//! One operator session, from dialling the relay to `Ended`: log in, get a code, wait for the
//! client and its consent, then decode the screen (acking every frame, asking for a keyframe
//! after a gap), send input and chat, and report the client's pauses and mode switches.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use tsunagu_endpoint::dial::{self, DialConfig, DialError};
use tsunagu_proto::pb::{self, frame::Body, Channel};
use tsunagu_proto::types::{end_reason_name, error_code_name, permission_name};
use tsunagu_proto::PermissionSet;

use crate::api::{Button, Command, Event, Outcome};
use crate::config::OperatorConfig;
use crate::decode::{FrameResult, ScreenDecoder};
use tsunagu_endpoint::link::{Incoming, Link};
use tsunagu_endpoint::transfer::{ProgressBars, TransferEvent, Transfers};

/// Sent in `Hello`.
const AGENT: &str = concat!("tsunagu-operator/", env!("CARGO_PKG_VERSION"));

/// A deadline far enough away to mean "never" in a `select!`.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365);

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

/// Sends events to the embedder; a dropped receiver just means nobody listens any more.
struct Events(mpsc::Sender<Event>);

impl Events {
    async fn emit(&self, event: Event) {
        let _ = self.0.send(event).await;
    }

    /// For high-rate events (`frame`): dropped rather than stalling the session when the
    /// consumer is behind.
    fn emit_lossy(&self, event: Event) {
        let _ = self.0.try_send(event);
    }
}

/// Runs one operator session to its end. `commands` may close at any time (that is not the
/// end of the session); `events` receives everything the operator should see.
pub async fn run(config: OperatorConfig, commands: mpsc::Receiver<Command>, events: mpsc::Sender<Event>) -> Outcome {
    let events = Events(events);
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
    info!(relay = %conn.peer, port = conn.port, user = %config.user, "connected to the relay");
    let mut session = Session {
        link: Link::new(conn, config.timeouts.idle, config.timeouts.write),
        events,
        phase: Phase::LoggingIn,
        deadline: Some(Instant::now() + config.timeouts.step),
        session_id: String::new(),
        paused: false,
        decoder,
        last_decoded_seq: 0,
        granted: PermissionSet::EMPTY,
        transfers: Transfers::new(),
        bars: ProgressBars::new(),
        config,
    };
    let outcome = session.run(commands).await;
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
    config: OperatorConfig,
    link: Link,
    events: Events,
    phase: Phase,
    /// When the current phase gives up (login, code request, ending).
    deadline: Option<Instant>,
    session_id: String,
    /// Whether the client has paused control, from the last `SessionState`.
    paused: bool,
    decoder: ScreenDecoder,
    last_decoded_seq: u64,
    /// Permissions in force, from the last `SessionState`.
    granted: PermissionSet,
    transfers: Transfers,
    bars: ProgressBars,
}

/// What a handler decided.
enum Step {
    Continue,
    Done(Outcome),
}

impl Session {
    async fn run(&mut self, mut commands: mpsc::Receiver<Command>) -> Outcome {
        let login = pb::Login {
            user: self.config.user.clone(),
            password: self.config.password.clone(),
            totp: self.config.totp.clone(),
        };
        if let Err(outcome) = self.send(Body::Login(login)).await {
            return outcome;
        }
        let mut commands_open = true;
        loop {
            let phase_deadline = self.deadline.unwrap_or_else(|| Instant::now() + FAR_FUTURE);
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

    /// The connection broke: tell the operator, end as unreachable (or as ended if we were
    /// already ending).
    async fn lost(&mut self, detail: String) -> Outcome {
        if self.phase == Phase::Ending {
            self.events
                .emit(Event::Ended {
                    reason: "operator_ended".into(),
                })
                .await;
            return Outcome::Ended {
                reason: "operator_ended".into(),
            };
        }
        warn!(session = %self.session_id, error = %detail, "lost the connection to the relay");
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
        let result = match body {
            Body::Ping(p) => self.send(Body::Pong(pb::Pong { nonce: p.nonce })).await,
            Body::LoginOk(ok) if self.phase == Phase::LoggingIn => {
                let allowed = PermissionSet::from_wire(&ok.allowed);
                info!(operator = %ok.operator, %allowed, "logged in");
                self.events
                    .emit(Event::LoggedIn {
                        operator: ok.operator,
                        allowed: names(allowed),
                    })
                    .await;
                self.phase = Phase::RequestingCode;
                self.deadline = Some(Instant::now() + self.config.timeouts.step);
                let permissions = self.config.permissions.to_wire();
                self.send(Body::RequestCode(pb::RequestCode { permissions })).await
            }
            Body::CodeIssued(issued) if self.phase == Phase::RequestingCode => {
                self.phase = Phase::WaitingForClient;
                self.deadline = None;
                self.session_id = issued.session_id.clone();
                info!(session = %issued.session_id, expires_in_ms = issued.expires_in_ms, "code issued");
                self.events
                    .emit(Event::Code {
                        code: issued.code,
                        expires_in_s: issued.expires_in_ms.div_ceil(1000),
                        session_id: issued.session_id,
                    })
                    .await;
                Ok(())
            }
            Body::PeerJoined(peer) => {
                if self.phase == Phase::WaitingForClient {
                    self.phase = Phase::WaitingForConsent;
                }
                info!(session = %self.session_id, client_ip = %peer.ip, client_port = peer.port, "client joined");
                self.events
                    .emit(Event::PeerJoined {
                        // The relay cleans host names already; inert here too, for every display.
                        host: tsunagu_proto::names::make_inert(&peer.host_name),
                        ip: peer.ip,
                        port: peer.port,
                    })
                    .await;
                Ok(())
            }
            Body::SessionState(state) => {
                self.on_session_state(state).await;
                Ok(())
            }
            Body::Error(e) => {
                let code = pb::ErrorCode::try_from(e.code).unwrap_or(pb::ErrorCode::Unspecified);
                let name = error_code_name(code);
                warn!(session = %self.session_id, code = name, "the relay reported an error");
                self.events.emit(Event::error(name, e.message)).await;
                if self.phase < Phase::WaitingForClient {
                    return Step::Done(Outcome::Refused { code: name.into() });
                }
                Ok(())
            }
            Body::Ended(ended) => return Step::Done(self.on_ended(ended).await),
            Body::FileOffer(_) | Body::FileAnswer(_) | Body::FileCredit(_) | Body::FileDone(_) => {
                self.on_file_frame(&body).await
            }
            Body::Data(data) if data.channel == Channel::File as i32 => self.on_file_frame(&Body::Data(data)).await,
            Body::Data(data) => self.on_data(data).await,
            other => {
                debug!(frame = ?std::mem::discriminant(&other), phase = ?self.phase, "ignored an unexpected frame");
                Ok(())
            }
        };
        match result {
            Ok(()) => Step::Continue,
            Err(outcome) => Step::Done(outcome),
        }
    }

    /// A file-transfer frame from the client.
    async fn on_file_frame(&mut self, body: &Body) -> Result<(), Outcome> {
        match self.transfers.on_frame(&mut self.link, body).await {
            Ok(events) => {
                self.emit_files(events).await;
                Ok(())
            }
            Err(e) => Err(self.lost(e.to_string()).await),
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

    async fn on_session_state(&mut self, state: pb::SessionState) {
        let granted = PermissionSet::from_wire(&state.granted);
        self.granted = granted;
        if self.phase < Phase::Active {
            self.phase = Phase::Active;
            info!(session = %self.session_id, %granted, "session active");
            self.events
                .emit(Event::Consent {
                    granted: Some(names(granted)),
                    denied: None,
                    reason: None,
                })
                .await;
        }
        self.events
            .emit(Event::State {
                granted: names(granted),
                paused: state.paused,
                view_only: state.view_only,
                chat_only: state.chat_only,
            })
            .await;
        if state.paused != self.paused {
            self.paused = state.paused;
            info!(session = %self.session_id, paused = state.paused, "client {}", if state.paused { "paused control" } else { "resumed control" });
            self.events
                .emit(if state.paused { Event::Paused } else { Event::Resumed })
                .await;
        }
    }

    async fn on_ended(&mut self, ended: pb::Ended) -> Outcome {
        let reason = pb::EndReason::try_from(ended.reason).unwrap_or(pb::EndReason::Unspecified);
        let name = end_reason_name(reason);
        info!(session = %self.session_id, reason = name, "session ended");
        let aborted = self.transfers.abort_all(&format!("the session ended ({name})")).await;
        self.emit_files(aborted).await;
        let ran = self.phase >= Phase::Active;
        if !ran && matches!(reason, pb::EndReason::ConsentDenied | pb::EndReason::ConsentTimeout) {
            self.events
                .emit(Event::Consent {
                    granted: None,
                    denied: Some(true),
                    reason: Some(name.into()),
                })
                .await;
        }
        self.events.emit(Event::Ended { reason: name.into() }).await;
        if ran {
            Outcome::Ended { reason: name.into() }
        } else {
            Outcome::Refused { code: name.into() }
        }
    }

    async fn on_data(&mut self, data: pb::Data) -> Result<(), Outcome> {
        let channel = pb::Channel::try_from(data.channel).unwrap_or(pb::Channel::Unspecified);
        match channel {
            Channel::Screen => self.on_screen(data.seq, data.payload).await,
            Channel::Chat => {
                match pb::ChatMessage::decode(data.payload) {
                    Ok(m) => self.events.emit(Event::Chat { text: m.text }).await,
                    Err(e) => warn!(error = %e, "undecodable chat message; ignored"),
                }
                Ok(())
            }
            _ => {
                debug!(
                    channel = data.channel,
                    "data on a channel the operator does not handle; ignored"
                );
                Ok(())
            }
        }
    }

    /// Decodes one screen frame, reports it, and acks it (with a keyframe request when the
    /// picture is out of sync).
    async fn on_screen(&mut self, seq: u64, payload: bytes::Bytes) -> Result<(), Outcome> {
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
                self.last_decoded_seq = seq;
                if let Some(sink) = &self.config.picture {
                    let (rgb, width, height) = self.decoder.rgb();
                    sink.put(width, height, rgb, seq);
                }
                let now_us = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_micros() as i64)
                    .unwrap_or(0);
                self.events.emit_lossy(Event::Frame {
                    seq,
                    width: picture.width,
                    height: picture.height,
                    keyframe: frame.keyframe,
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
        self.send_data(Channel::ScreenFeedback, fb.encode_to_vec())
            .await
            .map(|_| ())
    }

    async fn on_command(&mut self, cmd: Command) -> Step {
        use pb::input_event::Kind;
        let sendable = self.phase >= Phase::WaitingForClient && self.phase != Phase::Ending;
        let needs_session = !matches!(cmd, Command::End | Command::Sample { .. });
        if needs_session && !sendable {
            self.events
                .emit(Event::error("not_active", "there is no session to send this to"))
                .await;
            return Step::Continue;
        }
        let result = match cmd {
            Command::MouseMove { x, y } => self.send_input(vec![Kind::MouseMove(pb::MouseMove { x, y })]).await,
            Command::MouseButton { button, down } => {
                let button = match button {
                    Button::Left => pb::MouseButton::Left,
                    Button::Right => pb::MouseButton::Right,
                    Button::Middle => pb::MouseButton::Middle,
                } as i32;
                let events = presses(down)
                    .map(|down| Kind::MouseButton(pb::MouseButtonEvent { button, down }))
                    .collect();
                self.send_input(events).await
            }
            Command::Wheel { dx, dy } => self.send_input(vec![Kind::Wheel(pb::Wheel { dx, dy })]).await,
            Command::Key { key, down } => {
                let events = presses(down)
                    .map(|down| Kind::Key(pb::KeyEvent { key: key.clone(), down }))
                    .collect();
                self.send_input(events).await
            }
            Command::Text { text } => self.send_input(vec![Kind::Text(pb::TextInput { text })]).await,
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
            Command::RequestKeyframe => {
                self.decoder.request_now();
                let fb = pb::ScreenFeedback {
                    ack_seq: 0,
                    keyframe_request: true,
                };
                self.send_data(Channel::ScreenFeedback, fb.encode_to_vec())
                    .await
                    .map(|_| ())
            }
            Command::Sample { x, y } => {
                match self.decoder.pixel(x, y) {
                    Some([r, g, b]) => {
                        self.events
                            .emit(Event::Pixel {
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
                        self.events
                            .emit(Event::error("bad_command", "no decoded picture covers that point"))
                            .await;
                    }
                }
                Ok(())
            }
            Command::End => self.end().await,
            Command::File(fc) => {
                if self.phase != Phase::Active || !self.granted.contains(pb::Permission::Files) {
                    self.events
                        .emit(Event::error("not_granted", "the client has not granted file transfer"))
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

    /// Sends input events (the relay decides whether they reach the client).
    async fn send_input(&mut self, kinds: Vec<pb::input_event::Kind>) -> Result<(), Outcome> {
        for kind in kinds {
            let payload = pb::InputEvent { kind: Some(kind) }.encode_to_vec();
            self.send_data(Channel::Input, payload).await?;
        }
        Ok(())
    }

    /// Ends the session. Ending is the operator's own choice, so the run counts as ended
    /// (exit 0) whatever phase it was in; before a code exists there is nothing to end on
    /// the relay and the run just stops.
    async fn end(&mut self) -> Result<(), Outcome> {
        match self.phase {
            Phase::Ending => Ok(()),
            Phase::LoggingIn | Phase::RequestingCode => {
                self.events
                    .emit(Event::Ended {
                        reason: "operator_ended".into(),
                    })
                    .await;
                Err(Outcome::Ended {
                    reason: "operator_ended".into(),
                })
            }
            _ => {
                info!(session = %self.session_id, "ending the session");
                self.phase = Phase::Ending;
                self.deadline = Some(Instant::now() + self.config.timeouts.end);
                self.send(Body::End(pb::End {})).await
            }
        }
    }

    async fn on_deadline(&mut self) -> Step {
        self.deadline = None;
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
                self.events.emit(Event::error("timeout", msg)).await;
                Step::Done(Outcome::Refused { code: "timeout".into() })
            }
            _ => {
                debug!("no Ended from the relay in time; closing");
                self.events
                    .emit(Event::Ended {
                        reason: "operator_ended".into(),
                    })
                    .await;
                Step::Done(Outcome::Ended {
                    reason: "operator_ended".into(),
                })
            }
        }
    }
}

/// The `down` values to send: one if given, else press then release.
fn presses(down: Option<bool>) -> impl Iterator<Item = bool> {
    match down {
        Some(d) => vec![d],
        None => vec![true, false],
    }
    .into_iter()
}

fn names(set: PermissionSet) -> Vec<String> {
    set.iter().map(|p| permission_name(p).to_string()).collect()
}
