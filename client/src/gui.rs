//! The client window (eframe/egui): code entry, consent, and the session bar.
//!
//! The window drives the same [`crate::run`] session as `--headless`, on a tokio runtime of
//! its own: a button press becomes a [`Command`], each [`Event`] changes what the window
//! shows. Screens, in order:
//!
//! 1. **Code**: an 8-digit field (digits only; pasted spaces and dashes are dropped) and
//!    Connect; clear messages for a wrong or expired code, throttling and an unreachable relay.
//! 2. **Consent**: the operator's name, each requested permission (all ticked; untick to
//!    refuse one), Allow and Deny, and a countdown. Deny has the keyboard focus, so Enter or
//!    Escape denies; when the countdown ends the window denies.
//! 3. **Session bar**: a small always-on-top strip: who is connected, Pause control, View
//!    only, Chat only, End, the operator's last chat line with a reply field, and Send a
//!    file (the system's open-file dialog). The bar grows to fit what it shows below:
//!    - a file offer (`file_offer`, [`Event::File`]) as a panel with the file's name and
//!      size, the folder it goes to (typed, or Choose… for the system's folder dialog), Save
//!      and Reject. Save creates the folder when missing (a fresh account has no
//!      `~/Downloads`); if that or the save fails, the panel stays with the error so the user
//!      can pick another folder and press Save again;
//!    - one row per transfer with its progress and how it ended: the path a file was saved
//!      at, sent, declined, failed and why;
//!    - the problems of the session (a file that cannot be read, file transfer not allowed),
//!      in the window's language, while the session goes on.
//!
//! Japanese and English ([`crate::i18n`]) follow the locale and switch with one button;
//! a system CJK font is loaded because egui ships none ([`gui::load_cjk_font`]).
//!
//! With `TSUNAGU_GUI_REPORT=1` the window writes one JSON line to stdout whenever the screen
//! or its widgets move (screen name, window rectangle and widget rectangles in physical
//! pixels), and every session event as in headless mode: the accessibility output the GUI
//! tests read.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use eframe::egui;
use tokio::sync::mpsc;
use tsunagu_endpoint::banner::ConnectionBanner;
use tsunagu_endpoint::dialog::{Pick, Picker};
use tsunagu_endpoint::files_view::{FileView, Problem, Row, RowStatus};
use tsunagu_endpoint::gui::{self, FromSession};
use tsunagu_endpoint::transfer::{human_size, FileCommand};
use tsunagu_proto::SessionCode;

use crate::api::{Command, Event, Outcome};
use crate::config::ClientConfig;
use crate::i18n::{permission_text, Lang, Text};

/// Size of the code and consent window, in points: room for the Japanese prompt at a size
/// older eyes read comfortably.
const MAIN_WINDOW: [f32; 2] = [560.0, 400.0];

/// Size of the session bar, in points: wide enough for every button in Japanese with the
/// longest pause label ("一時停止中（マウス）"). It grows downwards to fit a connection
/// banner, a file offer, transfers and problems, and shrinks back when they go.
const BAR_WINDOW: [f32; 2] = [780.0, 96.0];
/// The central panel's margin below the last widget, in points (egui's default frame).
const BAR_MARGIN: f32 = 8.0;

/// Base text size in points (egui's default is 12.5: too small for this audience).
const TEXT_SIZE: f32 = 18.0;

/// Default folder offered for received files.
fn default_download_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join("Downloads"))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// What the window needs besides the code it asks for.
#[derive(Debug, Clone)]
pub struct GuiOptions {
    /// The session settings; the code in it is replaced by what the user types.
    pub config: ClientConfig,
    /// Display language; `None`: from the locale.
    pub lang: Option<Lang>,
    /// A code to put in the field at start (e.g. from a link).
    pub prefill: Option<String>,
    /// Write the JSON-lines report (see the module docs).
    pub report: bool,
}

/// Runs the window until the user closes it.
pub fn run(options: GuiOptions) -> Result<(), String> {
    let runtime = gui::session_runtime()?;
    let lang = options.lang.unwrap_or_else(crate::i18n::from_env);
    let native = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title(lang.t(Text::Title))
            .with_app_id("tsunagu-client")
            .with_inner_size(MAIN_WINDOW)
            .with_resizable(false),
        ..Default::default()
    };
    eframe::run_native(
        "tsunagu-client",
        native,
        Box::new(move |cc| {
            gui::load_cjk_font(&cc.egui_ctx);
            // Dark grey on white reads best for the people this window is for.
            cc.egui_ctx.set_theme(egui::Theme::Light);
            cc.egui_ctx.all_styles_mut(|style| {
                gui::set_text_size(style, TEXT_SIZE);
                style.spacing.button_padding = egui::vec2(12.0, 6.0);
            });
            Ok(Box::new(ClientApp::new(options, lang, runtime)))
        }),
    )
    .map_err(|e| e.to_string())
}

/// What the window shows.
#[derive(Debug, Clone)]
enum Screen {
    Code,
    Connecting,
    Consent {
        operator: String,
        permissions: Vec<(String, bool)>,
        deadline: Instant,
        focused: bool,
    },
    Session,
    Finished {
        text: Text,
    },
}

impl Screen {
    fn name(&self) -> &'static str {
        match self {
            Screen::Code => "code",
            Screen::Connecting => "connecting",
            Screen::Consent { .. } => "consent",
            Screen::Session => "session",
            Screen::Finished { .. } => "finished",
        }
    }
}

/// What the native dialog was opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DialogFor {
    /// The file to send to the operator.
    Send,
    /// The folder offer `id` is saved in.
    Folder(u32),
}

/// The session state the bar shows.
#[derive(Debug, Default, Clone)]
struct SessionView {
    operator: String,
    granted: Vec<String>,
    paused: bool,
    manual_pause: bool,
    view_only: bool,
    chat_only: bool,
    last_chat: Option<String>,
    /// The last clipboard text that moved: which way and how many characters.
    clipboard_note: Option<(Text, usize)>,
    chat_draft: String,
    /// Reconnecting / restored / the operator away.
    connection: ConnectionBanner,
}

struct ClientApp {
    options: GuiOptions,
    lang: Lang,
    runtime: tokio::runtime::Runtime,
    screen: Screen,
    code: String,
    code_focused: bool,
    error: Option<String>,
    commands: Option<mpsc::Sender<Command>>,
    from_session: Option<std_mpsc::Receiver<FromSession<Event>>>,
    session: SessionView,
    /// File offers, transfers and the session's problems.
    files: FileView,
    /// The system's open-file or folder dialog, and the path to send typed when none opened.
    dialog: Picker<DialogFor>,
    /// Widget rectangles of this frame, for the report.
    widgets: BTreeMap<&'static str, egui::Rect>,
    last_report: String,
    /// The session bar's height now, in points (it fits its content).
    bar_height: f32,
}

impl ClientApp {
    fn new(options: GuiOptions, lang: Lang, runtime: tokio::runtime::Runtime) -> Self {
        let code = options.prefill.as_deref().map(clean_code).unwrap_or_default();
        Self {
            options,
            lang,
            runtime,
            screen: Screen::Code,
            code,
            code_focused: false,
            error: None,
            bar_height: BAR_WINDOW[1],
            commands: None,
            from_session: None,
            session: SessionView::default(),
            files: FileView::new(default_download_dir()),
            dialog: Picker::new(DialogFor::Send),
            widgets: BTreeMap::new(),
            last_report: String::new(),
        }
    }

    fn t(&self, id: Text) -> &'static str {
        self.lang.t(id)
    }

    fn send(&self, cmd: Command) {
        if let Some(tx) = &self.commands {
            if tx.try_send(cmd).is_err() {
                tracing::warn!("the session is not taking commands");
            }
        }
    }

    fn connect(&mut self, ctx: &egui::Context) {
        let code = match SessionCode::parse(&self.code) {
            Ok(c) => c,
            Err(_) => {
                self.error = Some(self.t(Text::CodeIncomplete).into());
                return;
            }
        };
        let mut config = self.options.config.clone();
        config.code = code;
        let capacities = (
            tsunagu_endpoint::headless::COMMAND_CAPACITY,
            tsunagu_endpoint::headless::EVENT_CAPACITY,
        );
        let (cmd_tx, from_session) = gui::start_session(
            &self.runtime,
            ctx,
            capacities,
            self.options.report,
            move |commands, events| crate::run(config, commands, events),
        );
        self.commands = Some(cmd_tx);
        self.from_session = Some(from_session);
        self.error = None;
        self.session = SessionView::default();
        self.files.clear();
        self.dialog.clear();
        self.screen = Screen::Connecting;
    }

    fn drain(&mut self, ctx: &egui::Context) {
        let Some(rx) = &self.from_session else { return };
        let messages: Vec<_> = rx.try_iter().collect();
        for message in messages {
            match message {
                FromSession::Event(event) => self.on_event(event, ctx),
                FromSession::Finished(outcome) => self.on_finished(outcome, ctx),
            }
        }
    }

    fn on_event(&mut self, event: Event, ctx: &egui::Context) {
        match event {
            Event::ConsentRequest {
                operator,
                permissions,
                timeout_s,
                ..
            } => {
                // The relay allows only ASCII operator names; shown inert all the same.
                let operator = tsunagu_proto::names::make_inert(&operator);
                self.session.operator = operator.clone();
                self.screen = Screen::Consent {
                    operator,
                    permissions: permissions.into_iter().map(|p| (p, true)).collect(),
                    deadline: Instant::now() + Duration::from_secs(timeout_s),
                    focused: false,
                };
            }
            Event::Connected { granted } => {
                self.session.granted = granted;
                self.screen = Screen::Session;
                self.bar_height = BAR_WINDOW[1];
                ctx.send_viewport_cmd(egui::ViewportCommand::InnerSize(BAR_WINDOW.into()));
                ctx.send_viewport_cmd(egui::ViewportCommand::WindowLevel(egui::WindowLevel::AlwaysOnTop));
            }
            Event::State {
                granted,
                view_only,
                chat_only,
                ..
            } => {
                self.session.granted = granted;
                self.session.view_only = view_only;
                self.session.chat_only = chat_only;
            }
            Event::Paused => self.session.paused = true,
            Event::Resumed => self.session.paused = false,
            Event::Chat { text } => self.session.last_chat = Some(text),
            Event::ClipboardReceived { chars } => {
                self.session.clipboard_note = Some((Text::ClipboardReceivedNote, chars))
            }
            Event::ClipboardShared { chars } => self.session.clipboard_note = Some((Text::ClipboardSharedNote, chars)),
            Event::File(f) => self.files.on_event(&f),
            // During the session: shown in the window while the session goes on. A lost
            // connection has its own banner.
            Event::Error { code, .. }
                if matches!(self.screen, Screen::Session)
                    && matches!(code.as_str(), "unreachable" | "connection_lost") => {}
            Event::Error { code, message } if matches!(self.screen, Screen::Session) => {
                self.files.on_error(&code, &message)
            }
            Event::Error { code, message } => {
                let text = match code.as_str() {
                    "bad_code" => Some(Text::BadCode),
                    "expired" => Some(Text::Expired),
                    "used" => Some(Text::Used),
                    "throttled" => Some(Text::Throttled),
                    "unreachable" | "connection_lost" => Some(Text::Unreachable),
                    "bad_command" | "not_supported" => None,
                    _ => {
                        self.error = Some(format!("{}: {message}", self.t(Text::OtherError)));
                        None
                    }
                };
                if let Some(text) = text {
                    self.error = Some(self.t(text).into());
                }
            }
            Event::Ended { reason } => {
                if matches!(self.screen, Screen::Session) || reason == "consent_denied" {
                    let text = if reason == "consent_denied" {
                        Text::Denied
                    } else {
                        Text::Ended
                    };
                    self.screen = Screen::Finished { text };
                    ctx.send_viewport_cmd(egui::ViewportCommand::WindowLevel(egui::WindowLevel::Normal));
                    ctx.send_viewport_cmd(egui::ViewportCommand::InnerSize(MAIN_WINDOW.into()));
                }
            }
            Event::Input(_) | Event::InputRefused { .. } => {}
            Event::Connection(c) => self.session.connection.on_event(&c, Instant::now()),
        }
    }

    fn on_finished(&mut self, outcome: Outcome, ctx: &egui::Context) {
        self.commands = None;
        self.from_session = None;
        self.dialog.typed_send = None;
        if !matches!(self.screen, Screen::Finished { .. }) {
            // The session never ran: back to the code, with the error the events gave.
            if self.error.is_none() {
                if let Outcome::Refused { code } | Outcome::Usage { code } = &outcome {
                    self.error = Some(format!("{}: {code}", self.t(Text::OtherError)));
                }
            }
            self.screen = Screen::Code;
            self.code_focused = false;
            ctx.send_viewport_cmd(egui::ViewportCommand::WindowLevel(egui::WindowLevel::Normal));
            ctx.send_viewport_cmd(egui::ViewportCommand::InnerSize(MAIN_WINDOW.into()));
        }
    }

    fn lang_switch(&mut self, ui: &mut egui::Ui) {
        let label = self.lang.other().native_name();
        let r = ui.small_button(label);
        self.widgets.insert("language", r.rect);
        if r.clicked() {
            self.lang = self.lang.other();
            ui.ctx()
                .send_viewport_cmd(egui::ViewportCommand::Title(self.t(Text::Title).into()));
        }
    }

    fn code_screen(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.heading(self.t(Text::Title));
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                self.lang_switch(ui)
            });
        });
        ui.add_space(16.0);
        let prompt = ui.label(self.t(Text::EnterCode));
        self.widgets.insert("prompt", prompt.rect);
        ui.add_space(8.0);
        let connecting = matches!(self.screen, Screen::Connecting);
        let field = ui.add_enabled(
            !connecting,
            egui::TextEdit::singleline(&mut self.code)
                .hint_text("1234 5678")
                .font(egui::FontId::monospace(TEXT_SIZE * 1.6))
                .desired_width(300.0),
        );
        self.widgets.insert("code_field", field.rect);
        if field.changed() {
            self.code = clean_code(&self.code);
            self.error = None;
        }
        if !self.code_focused && !connecting {
            field.request_focus();
            self.code_focused = true;
        }
        let enter = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        ui.add_space(12.0);
        let label = if connecting {
            self.t(Text::Connecting)
        } else {
            self.t(Text::Connect)
        };
        let button = ui.add_enabled(
            !connecting && self.code.len() == 8,
            egui::Button::new(egui::RichText::new(label).size(TEXT_SIZE * 1.2)).min_size(egui::vec2(160.0, 44.0)),
        );
        self.widgets.insert("connect", button.rect);
        if (button.clicked() || (enter && self.code.len() == 8)) && !connecting {
            self.connect(ui.ctx());
        }
        if let Some(error) = &self.error {
            ui.add_space(12.0);
            let r = ui.colored_label(egui::Color32::from_rgb(200, 40, 40), error);
            self.widgets.insert("error", r.rect);
        }
    }

    fn consent_screen(&mut self, ui: &mut egui::Ui) {
        let Screen::Consent {
            operator,
            mut permissions,
            deadline,
            mut focused,
        } = self.screen.clone()
        else {
            return;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            self.send(Command::Deny);
            self.screen = Screen::Connecting;
            return;
        }
        ui.horizontal(|ui| {
            ui.heading(self.t(Text::ConsentTitle));
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                self.lang_switch(ui)
            });
        });
        ui.add_space(12.0);
        let who = ui.horizontal_wrapped(|ui| {
            ui.label(self.t(Text::ConsentWho));
            ui.label(egui::RichText::new(&operator).strong());
            ui.label(self.t(Text::ConsentAsks));
        });
        self.widgets.insert("operator", who.response.rect);
        ui.add_space(8.0);
        for (name, on) in permissions.iter_mut() {
            let text = permission_text(name)
                .map(|t| self.t(t).to_string())
                .unwrap_or_else(|| name.clone());
            let r = tick_box(ui, on, &text);
            self.widgets.insert(permission_widget(name), r.rect);
        }
        ui.add_space(12.0);
        let mut answer = None;
        ui.horizontal(|ui| {
            let deny = ui.add(egui::Button::new(self.t(Text::Deny)).min_size(egui::vec2(140.0, 40.0)));
            let allow = ui.add(
                egui::Button::new(egui::RichText::new(self.t(Text::Allow)).color(egui::Color32::WHITE))
                    .fill(egui::Color32::from_rgb(30, 110, 200))
                    .min_size(egui::vec2(140.0, 40.0)),
            );
            self.widgets.insert("deny", deny.rect);
            self.widgets.insert("allow", allow.rect);
            if !focused {
                // Deny is the default action: it has the focus, so Enter or Space denies.
                deny.request_focus();
                focused = true;
            }
            if deny.clicked() || ui.input(|i| i.key_pressed(egui::Key::Escape)) {
                answer = Some(false);
            } else if allow.clicked() {
                answer = Some(true);
            }
        });
        ui.add_space(8.0);
        let countdown = ui.label(format!(
            "{}  {}",
            left.as_secs_f32().ceil() as u64,
            self.t(Text::SecondsLeft)
        ));
        self.widgets.insert("countdown", countdown.rect);
        ui.ctx().request_repaint_after(Duration::from_millis(250));
        match answer {
            Some(true) => {
                let grant: Vec<String> = permissions
                    .iter()
                    .filter(|(_, on)| *on)
                    .map(|(n, _)| n.clone())
                    .collect();
                self.send(if grant.is_empty() {
                    Command::Deny
                } else {
                    Command::Consent { grant, clicked: true }
                });
                self.screen = Screen::Connecting;
            }
            Some(false) => {
                self.send(Command::Deny);
                self.screen = Screen::Connecting;
            }
            None => {
                self.screen = Screen::Consent {
                    operator,
                    permissions,
                    deadline,
                    focused,
                }
            }
        }
    }

    fn session_bar(&mut self, ui: &mut egui::Ui) {
        // The bar fits its content: taller while an offer, transfers or problems show.
        let content = ui.vertical(|ui| self.session_content(ui)).response.rect;
        let wanted = (content.max.y + BAR_MARGIN).max(BAR_WINDOW[1]).ceil();
        if (wanted - self.bar_height).abs() >= 1.0 {
            self.bar_height = wanted;
            ui.ctx()
                .send_viewport_cmd(egui::ViewportCommand::InnerSize(egui::vec2(BAR_WINDOW[0], wanted)));
        }
    }

    fn session_content(&mut self, ui: &mut egui::Ui) {
        let banner = self.session.connection.current(Instant::now());
        if let Some(text) = banner {
            let r = gui::connection_banner(ui, self.lang, text);
            self.widgets.insert("connection_banner", r.rect);
        }
        ui.horizontal(|ui| {
            let who = ui.label(format!("{} {}", self.t(Text::ConnectedTo), self.session.operator));
            self.widgets.insert("operator", who.rect);
            ui.separator();
            let mut manual = self.session.manual_pause;
            let pause_label = if self.session.paused && !manual {
                self.t(Text::PausedByMouse)
            } else {
                self.t(Text::PauseControl)
            };
            let pause = ui.toggle_value(&mut manual, pause_label);
            self.widgets.insert("pause", pause.rect);
            if pause.changed() {
                self.session.manual_pause = manual;
                self.send(Command::Pause { on: manual });
            }
            let mut view_only = self.session.view_only;
            let view = ui.toggle_value(&mut view_only, self.t(Text::ViewOnly));
            self.widgets.insert("view_only", view.rect);
            if view.changed() {
                self.session.view_only = view_only;
                self.send(Command::ViewOnly { on: view_only });
            }
            let mut chat_only = self.session.chat_only;
            let chat = ui.toggle_value(&mut chat_only, self.t(Text::ChatOnly));
            self.widgets.insert("chat_only", chat.rect);
            if chat.changed() {
                self.session.chat_only = chat_only;
                self.send(Command::ChatOnly { on: chat_only });
            }
            let end = ui.add(
                egui::Button::new(egui::RichText::new(self.t(Text::End)).color(egui::Color32::WHITE))
                    .fill(egui::Color32::from_rgb(190, 40, 40)),
            );
            self.widgets.insert("end", end.rect);
            if end.clicked() {
                self.send(Command::End);
            }
            self.lang_switch(ui);
        });
        ui.horizontal(|ui| {
            if let Some(text) = &self.session.last_chat {
                // Words, not an emoji: the bundled fonts have no glyph for a speech balloon.
                let r = ui.label(format!("{} {text}", self.t(Text::FromOperator)));
                self.widgets.insert("last_chat", r.rect);
            }
            let hint = self.t(Text::ChatPlaceholder);
            let field = ui.add(
                egui::TextEdit::singleline(&mut self.session.chat_draft)
                    .hint_text(hint)
                    .desired_width(220.0),
            );
            self.widgets.insert("chat_field", field.rect);
            let send = ui.button(self.t(Text::Send));
            let enter = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            if (send.clicked() || enter) && !self.session.chat_draft.trim().is_empty() {
                let text = std::mem::take(&mut self.session.chat_draft);
                self.send(Command::Chat { text });
            }
            ui.separator();
            let files_ok = self.files_allowed();
            let r = ui.add_enabled(files_ok, egui::Button::new(self.t(Text::SendFile)));
            self.widgets.insert("send_file", r.rect);
            if r.clicked() {
                self.open_dialog(ui.ctx(), DialogFor::Send);
            }
        });
        // A line of its own: beside the chat field it pushed the file button out of the bar.
        if let Some((note, chars)) = self.session.clipboard_note {
            let r = ui.label(format!("{}: {chars}", self.t(note)));
            self.widgets.insert("clipboard_note", r.rect);
        }
        self.dialog_rows(ui);
        self.offer_panel(ui);
        self.transfer_rows(ui);
        self.problem_rows(ui);
    }

    /// Whether the session lets files move now.
    fn files_allowed(&self) -> bool {
        self.session.granted.iter().any(|p| p == "files") && !self.session.chat_only
    }

    /// Opens the system's dialog for `purpose`; when none can open, says why and offers a
    /// typed path instead.
    fn open_dialog(&mut self, ctx: &egui::Context, purpose: DialogFor) {
        let (kind, title, start) = match purpose {
            DialogFor::Send => (
                Pick::File,
                Text::SendFileTitle,
                std::env::var_os("HOME").map(PathBuf::from),
            ),
            DialogFor::Folder(id) => (
                Pick::Folder,
                Text::ChooseFolderTitle,
                self.files
                    .offers()
                    .find(|o| o.id == id)
                    .map(|o| PathBuf::from(o.dir.trim())),
            ),
        };
        let title = self.t(title);
        self.dialog.open(ctx, purpose, kind, title, start.as_deref());
    }

    /// Takes the dialog's answer once it has closed.
    fn poll_dialog(&mut self) {
        let Some(chosen) = self.dialog.poll() else {
            return;
        };
        match chosen {
            (DialogFor::Send, path) => self.send(Command::File(FileCommand::SendFile { path })),
            (DialogFor::Folder(id), dir) => self.files.set_dir(id, &dir),
        }
    }

    /// While the dialog is open, a line saying so (a dialog that never appears can be left
    /// for a typed path); the typed path to send when no dialog could open.
    fn dialog_rows(&mut self, ui: &mut egui::Ui) {
        if self.dialog.dialog.purpose().is_some() {
            ui.horizontal(|ui| {
                let r = ui.label(self.t(Text::DialogOpen));
                self.widgets.insert("dialog_open", r.rect);
                if ui.small_button(self.t(Text::TypePathInstead)).clicked() {
                    self.dialog.type_instead();
                }
            });
        }
        let Some(mut path) = self.dialog.typed_send.take() else {
            return;
        };
        if let Some(why) = &self.dialog.note {
            let r = ui.colored_label(ERROR_RED, format!("{} ({why})", self.t(Text::DialogUnavailable)));
            self.widgets.insert("dialog_note", r.rect);
        }
        let mut keep = true;
        ui.horizontal(|ui| {
            ui.label(self.t(Text::FileToSend));
            let field = ui.add(egui::TextEdit::singleline(&mut path).desired_width(360.0));
            self.widgets.insert("send_path", field.rect);
            let enter = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            let go = ui.add_enabled(
                self.files_allowed() && !path.trim().is_empty(),
                egui::Button::new(self.t(Text::Send)),
            );
            self.widgets.insert("send_path_go", go.rect);
            if (go.clicked() || enter) && !path.trim().is_empty() && self.files_allowed() {
                self.send(Command::File(FileCommand::SendFile {
                    path: PathBuf::from(path.trim()),
                }));
                keep = false;
            }
            if ui.small_button(self.t(Text::Close)).clicked() {
                keep = false;
            }
        });
        if keep {
            self.dialog.typed_send = Some(path);
        } else {
            self.dialog.note = None;
        }
    }

    /// The oldest file offer: name and size, the folder (typed or chosen), Save and Reject,
    /// and why the last Save failed.
    fn offer_panel(&mut self, ui: &mut egui::Ui) {
        let Some(offer) = self.files.offer().cloned() else {
            return;
        };
        let waiting = self.files.offers().count();
        let mut answer = None;
        let panel = egui::Frame::group(ui.style())
            .fill(egui::Color32::from_rgb(255, 248, 220))
            .inner_margin(10.0)
            .show(ui, |ui| {
                ui.set_width(BAR_WINDOW[0] - 4.0 * BAR_MARGIN);
                let r = ui.label(egui::RichText::new(self.t(Text::FileOfferTitle)).strong());
                self.widgets.insert("offer_title", r.rect);
                let r = ui.label(format!("{}  ({})", offer.name, human_size(offer.size)));
                self.widgets.insert("offer_name", r.rect);
                ui.horizontal(|ui| {
                    ui.label(self.t(Text::SaveIn));
                    if let Some(dir) = self.files.dir_mut(offer.id) {
                        let r = ui.add(egui::TextEdit::singleline(dir).desired_width(400.0));
                        self.widgets.insert("offer_folder", r.rect);
                    }
                    let r = ui.button(self.t(Text::Choose));
                    self.widgets.insert("offer_choose", r.rect);
                    if r.clicked() {
                        answer = Some(OfferAnswer::Choose);
                    }
                });
                if let Some(error) = &offer.error {
                    let r = ui.colored_label(ERROR_RED, format!("{}: {error}", self.t(Text::FolderError)));
                    self.widgets.insert("offer_error", r.rect);
                }
                ui.horizontal(|ui| {
                    let save = ui.add(
                        egui::Button::new(egui::RichText::new(self.t(Text::Save)).color(egui::Color32::WHITE))
                            .fill(egui::Color32::from_rgb(30, 110, 200))
                            .min_size(egui::vec2(140.0, 40.0)),
                    );
                    let reject = ui.add(egui::Button::new(self.t(Text::Reject)).min_size(egui::vec2(140.0, 40.0)));
                    self.widgets.insert("offer_save", save.rect);
                    self.widgets.insert("offer_reject", reject.rect);
                    if save.clicked() {
                        answer = Some(OfferAnswer::Save);
                    } else if reject.clicked() {
                        answer = Some(OfferAnswer::Reject);
                    }
                    if waiting > 1 {
                        ui.label(format!("{} {}", waiting - 1, self.t(Text::MoreOffers)));
                    }
                });
            });
        self.widgets.insert("offer_panel", panel.response.rect);
        match answer {
            Some(OfferAnswer::Save) => {
                if let Some(cmd) = self.files.save(offer.id) {
                    self.send(Command::File(cmd));
                }
            }
            Some(OfferAnswer::Reject) => {
                if let Some(cmd) = self.files.reject(offer.id) {
                    self.send(Command::File(cmd));
                }
            }
            Some(OfferAnswer::Choose) => self.open_dialog(ui.ctx(), DialogFor::Folder(offer.id)),
            None => {}
        }
    }

    /// One line per transfer: direction and name, progress, and how it ended.
    fn transfer_rows(&mut self, ui: &mut egui::Ui) {
        let rows: Vec<Row> = self.files.rows().cloned().collect();
        for row in rows {
            let line = ui.horizontal(|ui| {
                let way = if row.sending { Text::Sending } else { Text::Receiving };
                ui.label(format!("{}: {}", self.t(way), row.name));
                ui.add(
                    egui::ProgressBar::new(row.fraction())
                        .desired_width(160.0)
                        .text(format!("{} / {}", human_size(row.bytes), human_size(row.size))),
                );
                let status = match &row.status {
                    RowStatus::Waiting => self.t(Text::WaitingForAnswer),
                    RowStatus::Running if row.sending => "",
                    RowStatus::Running => self.t(Text::Saving),
                    RowStatus::Saved(_) => self.t(Text::SavedIn),
                    RowStatus::Sent => self.t(Text::Sent),
                    RowStatus::Declined => self.t(Text::Declined),
                    RowStatus::Cancelled => self.t(Text::Cancelled),
                    RowStatus::Failed(_) => self.t(Text::Failed),
                };
                if matches!(row.status, RowStatus::Failed(_) | RowStatus::Declined) {
                    ui.colored_label(ERROR_RED, status);
                } else {
                    ui.label(status);
                }
            });
            self.widgets.insert("transfer", line.response.rect);
            // The saved path or the reason on a line of its own, wrapped to the bar's width.
            match &row.status {
                RowStatus::Saved(path) => {
                    let r = ui.add(egui::Label::new(path.display().to_string()).wrap());
                    self.widgets.insert("saved_path", r.rect);
                }
                RowStatus::Failed(reason) => {
                    ui.add(egui::Label::new(egui::RichText::new(reason).color(ERROR_RED)).wrap());
                }
                _ => {}
            }
        }
    }

    /// The session's problems, newest last, each with a button that clears it.
    fn problem_rows(&mut self, ui: &mut egui::Ui) {
        let problems: Vec<Problem> = self.files.problems().cloned().collect();
        let mut dismiss = None;
        for (i, p) in problems.iter().enumerate() {
            ui.horizontal(|ui| {
                if ui.small_button("×").clicked() {
                    dismiss = Some(i);
                }
                let text = egui::RichText::new(self.problem_text(p)).color(ERROR_RED);
                let r = ui.add(egui::Label::new(text).wrap());
                self.widgets.insert("problem", r.rect);
            });
        }
        if let Some(i) = dismiss {
            self.files.dismiss_problem(i);
        }
    }

    /// A problem in the window's language, with the system's detail where it helps.
    fn problem_text(&self, p: &Problem) -> String {
        match p.code.as_str() {
            "not_granted" => self.t(Text::NotGranted).to_string(),
            "file_error" => format!("{}: {}", self.t(Text::FileError), p.detail),
            "file_failed" => format!("{}: {}", self.t(Text::Failed), p.detail),
            _ => format!("{}: {}", self.t(Text::Problem), p.detail),
        }
    }

    fn finished_screen(&mut self, ui: &mut egui::Ui, text: Text) {
        ui.horizontal(|ui| {
            ui.heading(self.t(Text::Title));
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                self.lang_switch(ui)
            });
        });
        ui.add_space(24.0);
        let r = ui.label(self.t(text));
        self.widgets.insert("message", r.rect);
        ui.add_space(12.0);
        if ui.button(self.t(Text::Close)).clicked() {
            ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
        }
    }

    /// Writes the report line if anything changed since the last one.
    fn report(&mut self, ctx: &egui::Context) {
        if !self.options.report {
            return;
        }
        let (window, widgets) = gui::geometry(ctx, &self.widgets);
        let line = serde_json::json!({
            "event": "gui",
            "screen": self.screen.name(),
            "lang": self.lang.code(),
            "window": window,
            "widgets": widgets,
            "file_offer": self.files.offer().is_some(),
            "offer": self.files.offer().map(|o| serde_json::json!({
                "id": o.id,
                "name": o.name,
                "dir": o.dir,
                "error": o.error,
            })),
            "transfers": self.files.rows().map(|r| serde_json::json!({
                "id": r.id,
                "sending": r.sending,
                "bytes": r.bytes,
                "size": r.size,
                "status": r.status.name(),
                "path": match &r.status {
                    RowStatus::Saved(p) => Some(p.display().to_string()),
                    _ => None,
                },
            })).collect::<Vec<_>>(),
            "problems": self.files.problems().map(|p| self.problem_text(p)).collect::<Vec<_>>(),
            "dialog_open": self.dialog.dialog.purpose().is_some(),
            "typed_send": self.dialog.typed_send.is_some(),
            "ticked": match &self.screen {
                Screen::Consent { permissions, .. } => permissions
                    .iter()
                    .map(|(n, on)| (n.clone(), serde_json::Value::Bool(*on)))
                    .collect::<serde_json::Map<_, _>>()
                    .into(),
                _ => serde_json::Value::Null,
            },
            "digits": self.code.len(),
            "error": self.error,
        })
        .to_string();
        gui::report_if_changed(&mut self.last_report, line);
    }
}

impl eframe::App for ClientApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        self.drain(&ctx);
        self.poll_dialog();
        self.widgets.clear();
        egui::CentralPanel::default().show(ui, |ui| match self.screen.clone() {
            Screen::Code | Screen::Connecting => self.code_screen(ui),
            Screen::Consent { .. } => self.consent_screen(ui),
            Screen::Session => self.session_bar(ui),
            Screen::Finished { text } => self.finished_screen(ui, text),
        });
        self.report(&ctx);
        if self.from_session.is_some() {
            // Events also wake the window; this only bounds a missed wake-up.
            ctx.request_repaint_after(Duration::from_millis(500));
        }
    }
}

/// What the user did in the offer panel.
enum OfferAnswer {
    Save,
    Reject,
    Choose,
}

/// Errors and failures: a red that reads on white and on the offer panel's cream.
const ERROR_RED: egui::Color32 = egui::Color32::from_rgb(200, 40, 40);

/// Fill of a ticked box: the same blue as Allow.
const TICKED: egui::Color32 = egui::Color32::from_rgb(30, 110, 200);
/// Border of an unticked box: dark enough to read on white at a glance.
const UNTICKED_BORDER: egui::Color32 = egui::Color32::from_rgb(60, 60, 60);

/// A permission's tick box, drawn so ticked and unticked read apart at a glance (egui's own
/// is a faint grey square): ticked is a filled blue box with a thick white tick, unticked an
/// empty white box with a dark border. Click, Space or Enter toggle it.
fn tick_box(ui: &mut egui::Ui, on: &mut bool, text: &str) -> egui::Response {
    let side = TEXT_SIZE * 1.4;
    let gap = 10.0;
    let galley = ui.painter().layout_no_wrap(
        text.to_string(),
        egui::FontId::proportional(TEXT_SIZE),
        ui.visuals().text_color(),
    );
    let desired = egui::vec2(side + gap + galley.size().x, side.max(galley.size().y) + 4.0);
    let (rect, mut response) = ui.allocate_exact_size(desired, egui::Sense::click());
    if response.clicked() {
        *on = !*on;
        response.mark_changed();
    }
    let checked = *on;
    response.widget_info(|| egui::WidgetInfo::selected(egui::Role::CheckBox, true, checked, text));
    let boxed = egui::Rect::from_min_size(
        egui::pos2(rect.min.x, rect.center().y - side / 2.0),
        egui::vec2(side, side),
    );
    let painter = ui.painter();
    if checked {
        painter.rect_filled(boxed, 4.0, TICKED);
        let at = |x: f32, y: f32| boxed.min + egui::vec2(x * side, y * side);
        let stroke = egui::Stroke::new(side * 0.13, egui::Color32::WHITE);
        painter.line_segment([at(0.22, 0.52), at(0.42, 0.72)], stroke);
        painter.line_segment([at(0.42, 0.72), at(0.80, 0.28)], stroke);
    } else {
        painter.rect_filled(boxed, 4.0, egui::Color32::WHITE);
        painter.rect_stroke(
            boxed,
            4.0,
            egui::Stroke::new(2.0, UNTICKED_BORDER),
            egui::StrokeKind::Inside,
        );
    }
    if response.has_focus() || response.hovered() {
        painter.rect_stroke(
            boxed.expand(3.0),
            6.0,
            egui::Stroke::new(2.0, TICKED.gamma_multiply(0.5)),
            egui::StrokeKind::Outside,
        );
    }
    let text_pos = egui::pos2(boxed.max.x + gap, rect.center().y - galley.size().y / 2.0);
    painter.galley(text_pos, galley, ui.visuals().text_color());
    response
}

/// The widget name reported for a permission's checkbox.
fn permission_widget(name: &str) -> &'static str {
    match name {
        "view" => "perm_view",
        "control" => "perm_control",
        "files" => "perm_files",
        "chat" => "perm_chat",
        "clipboard" => "perm_clipboard",
        _ => "perm_other",
    }
}

/// Keeps the digits of what was typed or pasted, at most 8: `"4815-1623"`, `"4815 1623"` and
/// `" 48151623\n"` all become `"48151623"`.
pub fn clean_code(input: &str) -> String {
    input.chars().filter(char::is_ascii_digit).take(8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pasted_codes_are_cleaned() {
        assert_eq!(clean_code("4815-1623"), "48151623");
        assert_eq!(clean_code(" 4815 1623\n"), "48151623");
        assert_eq!(clean_code("abc12"), "12");
        assert_eq!(clean_code("123456789"), "12345678");
    }
}
