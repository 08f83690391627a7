//! The operator window (eframe/egui): log in, get a code to read to the client, see who
//! joined and what they granted, then watch and control the client's screen, chat, and move
//! files, with a banner whenever the client has paused control or limited the session.
//!
//! Files: Send file… opens the system's open-file dialog, and files dropped onto the window
//! are sent too; the save folder is typed or chosen in the system's folder dialog and is
//! created on Accept when missing. Each transfer shows its progress and how it ended (the
//! saved path, sent, rejected, failed and why), and the problems of the session (a file that
//! cannot be read, a folder that cannot be made) show in the side panel while the session
//! goes on. A typed path to send appears only when no dialog can open.
//!
//! The picture: fit to the window, actual size or a zoom step with scroll bars, the side
//! panel hidden, full screen (see [`crate::viewer`]); the mode and the panel are remembered in
//! `operator.toml`. Over the picture, keys with Ctrl or Alt go to the client as combinations
//! (Ctrl+C, Ctrl+V reach the client's programs); a button sends Ctrl+Alt+Del. With the
//! client's `clipboard` permission, the side panel sends this machine's clipboard text to
//! the client's clipboard and brings the client's text back onto this one.
//!
//! The window drives the same [`crate::run`] as the headless mode, on a tokio runtime of its
//! own; decoded pictures come through a [`PictureSink`]. With `events` set, every event is
//! also printed as a JSON line on stdout, and a `gui` line reports the screen and where its
//! widgets are, so scripts and tests can follow the window.

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
use tsunagu_proto::PermissionSet;

use crate::api::{Button, Command, Event};
use crate::chat::{Author, ChatLog};
use crate::config::OperatorConfig;
use crate::i18n::{Lang, Text};
use crate::picture::PictureSink;
use crate::viewer::{self, Mode, Viewer};

/// Base text size in points; support work is read from a little distance.
const TEXT_SIZE: f32 = 16.0;
/// Commands the window may queue for the session.
const COMMAND_QUEUE: usize = 256;
/// Events the session may queue for the window.
const EVENT_QUEUE: usize = 1024;

/// What the window starts with (from the command line).
#[derive(Debug, Clone, Default)]
pub struct GuiOptions {
    pub relay: String,
    pub ports: Option<Vec<u16>>,
    pub ca: PathBuf,
    pub user: String,
    /// From `TSUNAGU_PASSWORD`, if set.
    pub password: String,
    pub permissions: Option<PermissionSet>,
    pub lang: Option<Lang>,
    /// Start a session at once (needs user and password).
    pub connect: bool,
    /// Print events and `gui` reports as JSON lines on stdout.
    pub events: bool,
    /// Folder offered files are saved into unless the operator picks another.
    pub save_dir: PathBuf,
    /// The standby relay options (`--standby-relay`).
    pub standby: Option<tsunagu_endpoint::config::StandbyArgs>,
    /// The client certificate presented at login (`--cert`), renewed in place when due.
    pub cert: Option<PathBuf>,
    /// Its import password from `TSUNAGU_CERT_PASSWORD`, if set (else the window asks).
    pub cert_password: String,
    /// What `~/.config/tsunagu/operator.toml` held at start; rewritten after a login that
    /// used other settings.
    pub remembered: Option<crate::config::Remembered>,
}

/// Runs the window until the operator closes it (which ends a running session).
pub fn run(options: GuiOptions) -> Result<(), String> {
    let runtime = gui::session_runtime()?;
    let lang = options.lang.unwrap_or_else(crate::i18n::from_env);
    let native = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title(lang.t(Text::Title))
            .with_app_id("tsunagu-operator")
            .with_inner_size([1280.0, 800.0]),
        // Ctrl+C, Ctrl+X and Ctrl+V over the picture are the client's keys: they arrive as
        // keys with modifiers, not as this window's copy and paste.
        clipboard_shortcuts: false,
        ..Default::default()
    };
    eframe::run_native(
        "tsunagu-operator",
        native,
        Box::new(move |cc| {
            gui::load_cjk_font(&cc.egui_ctx);
            cc.egui_ctx.all_styles_mut(|style| gui::set_text_size(style, TEXT_SIZE));
            let mut app = OperatorApp::new(options, lang, runtime);
            if app.options.connect {
                app.start(&cc.egui_ctx);
            }
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| e.to_string())
}

#[derive(Debug, Clone, PartialEq)]
enum Screen {
    Login,
    Connecting,
    Waiting,
    Session,
    Ended,
}

impl Screen {
    fn name(&self) -> &'static str {
        match self {
            Screen::Login => "login",
            Screen::Connecting => "connecting",
            Screen::Waiting => "waiting",
            Screen::Session => "session",
            Screen::Ended => "ended",
        }
    }
}

/// What the native dialog was opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DialogFor {
    /// The file to send to the client.
    Send,
    /// The folder offered files are saved into.
    SaveFolder,
}

/// Errors and failures in the side panel.
const ERROR_RED: egui::Color32 = egui::Color32::from_rgb(200, 40, 40);

struct OperatorApp {
    options: GuiOptions,
    lang: Lang,
    runtime: tokio::runtime::Runtime,
    screen: Screen,
    relay: String,
    user: String,
    password: String,
    /// The import password of `--cert`, typed or from the environment.
    cert_password: String,
    totp: String,
    message: Option<String>,
    commands: Option<mpsc::Sender<Command>>,
    from_session: Option<std_mpsc::Receiver<FromSession<Event>>>,
    picture: PictureSink,
    texture: Option<egui::TextureHandle>,
    picture_size: (usize, usize),
    code: String,
    expires_at: Option<Instant>,
    peer: Option<(String, String)>,
    granted: PermissionSet,
    paused: bool,
    /// Why, as the client's frames say (`pause_cause` events).
    pause_cause: String,
    view_only: bool,
    chat_only: bool,
    /// Reconnecting / restored / the client away.
    connection: ConnectionBanner,
    chat: ChatLog,
    chat_draft: String,
    /// The folder offered files are saved into (typed or chosen).
    save_dir: String,
    /// File offers, transfers and the session's problems.
    files: FileView,
    /// The system's open-file or folder dialog, and the path to send typed when none opened.
    dialog: Picker<DialogFor>,
    last_pointer: Option<(i32, i32)>,
    /// How the picture is shown (fit, actual size, zoom; panel; full screen).
    viewer: Viewer,
    /// Points per client pixel the picture was last drawn at.
    last_scale: f32,
    /// Where the whole picture's top-left corner was last drawn (outside the visible space
    /// when scrolled).
    picture_origin: Option<egui::Pos2>,
    /// The last clipboard text that moved (which way, characters) or why it could not.
    clipboard_note: Option<Result<(Text, usize), String>>,
    widgets: BTreeMap<&'static str, egui::Rect>,
    picture_rect: Option<egui::Rect>,
    last_report: String,
    /// The standby site for the relay typed, kept across sessions.
    standby: Option<(String, std::sync::Arc<tsunagu_endpoint::standby::Standby>)>,
}

impl OperatorApp {
    fn new(options: GuiOptions, lang: Lang, runtime: tokio::runtime::Runtime) -> Self {
        Self {
            relay: options.relay.clone(),
            user: options.user.clone(),
            password: options.password.clone(),
            cert_password: options.cert_password.clone(),
            save_dir: options.save_dir.display().to_string(),
            files: FileView::new(options.save_dir.clone()),
            viewer: Viewer::new(options.remembered.as_ref().and_then(|r| r.view).unwrap_or_default()),
            options,
            lang,
            runtime,
            screen: Screen::Login,
            totp: String::new(),
            message: None,
            commands: None,
            from_session: None,
            picture: PictureSink::default(),
            texture: None,
            picture_size: (0, 0),
            code: String::new(),
            expires_at: None,
            peer: None,
            granted: PermissionSet::EMPTY,
            paused: false,
            pause_cause: String::new(),
            view_only: false,
            chat_only: false,
            connection: ConnectionBanner::new(),
            chat: ChatLog::new(),
            chat_draft: String::new(),
            dialog: Picker::new(DialogFor::Send),
            last_pointer: None,
            last_scale: 1.0,
            picture_origin: None,
            clipboard_note: None,
            widgets: BTreeMap::new(),
            picture_rect: None,
            last_report: String::new(),
            standby: None,
        }
    }

    fn t(&self, id: Text) -> &'static str {
        self.lang.t(id)
    }

    fn send(&self, cmd: Command) {
        if let Some(tx) = &self.commands {
            // A full queue means the session is far behind; dropping a pointer move is fine.
            let _ = tx.try_send(cmd);
        }
    }

    /// Starts a session: log in, ask for a code.
    fn start(&mut self, ctx: &egui::Context) {
        let mut config = match OperatorConfig::new(
            &self.relay,
            self.options.ports.clone(),
            self.options.ca.clone(),
            self.user.clone(),
            self.password.clone(),
        ) {
            Ok(c) => c,
            Err(e) => {
                self.message = Some(e.to_string());
                return;
            }
        };
        if let Some(p) = self.options.permissions {
            config.permissions = p;
        }
        if let Some(path) = self.options.cert.clone() {
            // Read at every start, so a session after a renewal presents the renewed file.
            match tsunagu_endpoint::renew::CertFile::open(&path, &self.cert_password) {
                Ok(file) => {
                    config.identity = Some(file.identity.clone());
                    config.cert_file = Some(file);
                }
                Err(e) => {
                    self.message = Some(e);
                    return;
                }
            }
        }
        // One standby per relay typed: which site is in use outlives each session.
        if let Some(args) = &self.options.standby {
            let kept = self.standby.as_ref().filter(|(relay, _)| *relay == self.relay);
            config.standby = match kept {
                Some((_, s)) => Some(s.clone()),
                None => match args.standby(&config.relays, self.options.ports.clone()) {
                    Ok(s) => s,
                    Err(e) => {
                        self.message = Some(e.to_string());
                        return;
                    }
                },
            };
            self.standby = config.standby.clone().map(|s| (self.relay.clone(), s));
        }
        config.totp = std::mem::take(&mut self.totp);
        let repaint = ctx.clone();
        self.picture = PictureSink::new(move || repaint.request_repaint());
        config.picture = Some(self.picture.clone());
        config.system_clipboard = true;
        let (cmd_tx, from_session) = gui::start_session(
            &self.runtime,
            ctx,
            (COMMAND_QUEUE, EVENT_QUEUE),
            self.options.events,
            move |commands, events| crate::run(config, commands, events),
        );
        self.commands = Some(cmd_tx);
        self.from_session = Some(from_session);
        self.reset_session_view();
        self.screen = Screen::Connecting;
        self.message = None;
    }

    fn reset_session_view(&mut self) {
        self.code.clear();
        self.expires_at = None;
        self.peer = None;
        self.granted = PermissionSet::EMPTY;
        self.paused = false;
        self.pause_cause.clear();
        self.view_only = false;
        self.chat_only = false;
        self.connection.clear();
        self.chat.clear();
        self.files.clear();
        self.dialog.clear();
        self.texture = None;
        self.picture_size = (0, 0);
        self.clipboard_note = None;
    }

    fn drain(&mut self, ctx: &egui::Context) {
        let mut finished = None;
        if let Some(rx) = &self.from_session {
            let mut batch = Vec::new();
            while let Ok(m) = rx.try_recv() {
                batch.push(m);
            }
            for m in batch {
                match m {
                    FromSession::Event(e) => self.on_event(e),
                    FromSession::Finished(o) => finished = Some(o),
                }
            }
        }
        if let Some(outcome) = finished {
            self.from_session = None;
            self.commands = None;
            if self.screen == Screen::Connecting {
                self.screen = Screen::Login;
            } else if self.screen != Screen::Login {
                self.screen = Screen::Ended;
            }
            tracing::info!(?outcome, "session finished");
        }
        if self.chat_only {
            // Chat only: the client stopped sharing; no picture stays on screen, and one
            // still in the pipe is not shown.
            self.picture.take();
            self.texture = None;
            self.picture_size = (0, 0);
        } else if let Some(p) = self.picture.take() {
            let image = egui::ColorImage::from_rgb([p.width, p.height], &p.rgb);
            self.picture_size = (p.width, p.height);
            match &mut self.texture {
                Some(t) => t.set(image, egui::TextureOptions::LINEAR),
                None => self.texture = Some(ctx.load_texture("remote-screen", image, egui::TextureOptions::LINEAR)),
            }
        }
    }

    fn error_text(&self, code: &str, message: &str) -> String {
        let known = match code {
            "auth_failed" => Some(Text::AuthFailed),
            "unreachable" => Some(Text::Unreachable),
            "throttled" => Some(Text::Throttled),
            "forbidden" => Some(Text::Forbidden),
            _ => None,
        };
        match known {
            Some(t) => format!("{} ({message})", self.t(t)),
            None => message.to_string(),
        }
    }

    /// After a successful login: writes the settings it used to `operator.toml`, so the
    /// next start needs no flags. Said in the window only when it fails.
    fn remember(&mut self) {
        let now = crate::config::Remembered {
            relay: self.relay.trim().to_string(),
            ports: self.options.ports.clone(),
            ca: (!self.options.ca.as_os_str().is_empty()).then(|| crate::config::absolute(&self.options.ca)),
            user: self.user.trim().to_string(),
            cert: self.options.cert.as_deref().map(crate::config::absolute),
            view: Some(self.viewer.settings()),
        };
        if self.options.remembered.as_ref() == Some(&now) {
            return;
        }
        match now.save() {
            Ok(path) => {
                tracing::info!(path = %path.display(), "remembered the relay and account");
                self.options.remembered = Some(now);
            }
            Err(e) => self.message = Some(format!("{}: {e}", self.t(Text::RememberFailed))),
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Code { code, expires_in_s, .. } => {
                self.remember();
                self.code = code;
                self.expires_at = Some(Instant::now() + Duration::from_secs(expires_in_s));
                self.screen = Screen::Waiting;
            }
            Event::PeerJoined { host, ip, .. } => self.peer = Some((tsunagu_proto::names::make_inert(&host), ip)),
            Event::Consent { granted: Some(g), .. } => {
                self.granted = PermissionSet::parse_names(g.iter().map(String::as_str)).unwrap_or_default();
                self.screen = Screen::Session;
            }
            Event::Consent { denied: Some(true), .. } => self.message = Some(self.t(Text::Denied).to_string()),
            Event::State {
                granted,
                paused,
                view_only,
                chat_only,
            } => {
                self.granted = PermissionSet::parse_names(granted.iter().map(String::as_str)).unwrap_or_default();
                self.paused = paused;
                self.view_only = view_only;
                self.chat_only = chat_only;
            }
            Event::Paused => self.paused = true,
            Event::Resumed => self.paused = false,
            Event::PauseCause { cause } => self.pause_cause = cause,
            Event::Chat { text } => self.chat.push(Author::Peer, text),
            Event::ClipboardSent { chars } => self.clipboard_note = Some(Ok((Text::ClipboardSent, chars))),
            Event::Clipboard { chars, .. } => self.clipboard_note = Some(Ok((Text::ClipboardReceived, chars))),
            Event::Error { code, message } if self.screen == Screen::Session && code.starts_with("clipboard_") => {
                self.clipboard_note = Some(Err(self.clipboard_error(&code, &message)))
            }
            // During the session: shown in the window while the session goes on. A lost
            // connection has its own banner.
            Event::Error { code, .. }
                if self.screen == Screen::Session && matches!(code.as_str(), "unreachable" | "connection_lost") => {}
            Event::Error { code, message } if self.screen == Screen::Session => self.files.on_error(&code, &message),
            Event::Error { code, message } => self.message = Some(self.error_text(&code, &message)),
            Event::Ended { .. } => {}
            Event::File(f) => self.files.on_event(&f),
            Event::Connection(c) => self.connection.on_event(&c, Instant::now()),
            _ => {}
        }
    }

    fn lang_switch(&mut self, ui: &mut egui::Ui) {
        let other = self.lang.other();
        let r = ui.button(other.native_name());
        self.widgets.insert("lang", r.rect);
        if r.clicked() {
            self.lang = other;
        }
    }

    fn login_screen(&mut self, ui: &mut egui::Ui, ctx: &egui::Context) {
        ui.heading(self.t(Text::Title));
        ui.add_space(12.0);
        egui::Grid::new("login")
            .num_columns(2)
            .spacing([12.0, 8.0])
            .show(ui, |ui| {
                ui.label(self.t(Text::Relay));
                let r = ui.text_edit_singleline(&mut self.relay);
                self.widgets.insert("relay", r.rect);
                ui.end_row();
                ui.label(self.t(Text::User));
                let r = ui.text_edit_singleline(&mut self.user);
                self.widgets.insert("user", r.rect);
                ui.end_row();
                ui.label(self.t(Text::Password));
                let r = ui.add(egui::TextEdit::singleline(&mut self.password).password(true));
                self.widgets.insert("password", r.rect);
                ui.end_row();
                ui.label(self.t(Text::Totp));
                let r = ui.add(egui::TextEdit::singleline(&mut self.totp).char_limit(8));
                self.widgets.insert("totp", r.rect);
                ui.end_row();
                if let Some(path) = &self.options.cert {
                    let name = path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    ui.label(format!("{} ({name})", self.t(Text::CertPassword)));
                    let r = ui.add(egui::TextEdit::singleline(&mut self.cert_password).password(true));
                    self.widgets.insert("cert_password", r.rect);
                    ui.end_row();
                }
            });
        ui.add_space(12.0);
        let ready = !self.relay.trim().is_empty()
            && !self.user.trim().is_empty()
            && !self.password.is_empty()
            && (self.options.cert.is_none() || !self.cert_password.is_empty());
        let r = ui.add_enabled(ready, egui::Button::new(self.t(Text::NewSession)));
        self.widgets.insert("new_session", r.rect);
        if r.clicked() {
            self.start(ctx);
        }
        if let Some(m) = &self.message {
            ui.add_space(8.0);
            ui.colored_label(egui::Color32::from_rgb(200, 40, 40), m);
        }
    }

    fn waiting_screen(&mut self, ui: &mut egui::Ui, ctx: &egui::Context) {
        if let Some(text) = self.connection.current(Instant::now()) {
            let r = gui::connection_banner(ui, self.lang, text);
            self.widgets.insert("connection_banner", r.rect);
        }
        if let Some((host, ip)) = self.peer.clone() {
            // The code is used up: no code and no countdown, but who joined.
            let r = ui.label(
                egui::RichText::new(self.t(Text::ClientJoined))
                    .size(TEXT_SIZE * 2.5)
                    .strong()
                    .color(egui::Color32::from_rgb(40, 150, 70)),
            );
            self.widgets.insert("joined", r.rect);
            ui.add_space(8.0);
            let r = ui.label(egui::RichText::new(format!("{host} ({ip})")).size(TEXT_SIZE * 1.4));
            self.widgets.insert("peer", r.rect);
            ui.label(self.t(Text::WaitingForConsent));
            if let Some(m) = &self.message {
                ui.colored_label(egui::Color32::from_rgb(200, 40, 40), m);
            }
            ui.add_space(8.0);
            let r = ui.button(self.t(Text::End));
            self.widgets.insert("end", r.rect);
            if r.clicked() {
                self.send(Command::End);
            }
            return;
        }
        ui.heading(self.t(Text::CodeForClient));
        ui.add_space(8.0);
        let shown = if self.code.len() == 8 {
            format!("{} {}", &self.code[..4], &self.code[4..])
        } else {
            self.code.clone()
        };
        ui.horizontal(|ui| {
            let r = ui.label(egui::RichText::new(&shown).monospace().size(TEXT_SIZE * 4.0).strong());
            self.widgets.insert("code", r.rect);
            let r = ui.button(self.t(Text::Copy));
            self.widgets.insert("copy", r.rect);
            if r.clicked() {
                ctx.copy_text(self.code.clone());
            }
        });
        if let Some(at) = self.expires_at {
            let left = at.saturating_duration_since(Instant::now()).as_secs();
            let r = ui.label(format!("{} {}:{:02}", self.t(Text::ExpiresIn), left / 60, left % 60));
            self.widgets.insert("countdown", r.rect);
            ctx.request_repaint_after(Duration::from_millis(500));
        }
        ui.add_space(8.0);
        ui.label(self.t(Text::WaitingForClient));
        if let Some(m) = &self.message {
            ui.colored_label(egui::Color32::from_rgb(200, 40, 40), m);
        }
        ui.add_space(8.0);
        let r = ui.button(self.t(Text::End));
        self.widgets.insert("end", r.rect);
        if r.clicked() {
            self.send(Command::End);
        }
    }

    fn top_bar(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            if let Some((host, ip)) = &self.peer {
                ui.label(egui::RichText::new(format!("{host} ({ip})")).strong());
            }
            ui.label(format!("{}: {}", self.t(Text::Permissions), self.granted));
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                let r = ui.button(self.t(Text::End));
                self.widgets.insert("end", r.rect);
                if r.clicked() {
                    self.send(Command::End);
                }
                self.lang_switch(ui);
            });
        });
        self.view_bar(ui);
        if let Some(b) = self.banner() {
            let r = egui::Frame::new()
                .fill(egui::Color32::from_rgb(255, 200, 60))
                .inner_margin(6.0)
                .show(ui, |ui| {
                    ui.colored_label(egui::Color32::BLACK, self.t(b));
                });
            self.widgets.insert("banner", r.response.rect);
        }
        if let Some(text) = self.connection.current(Instant::now()) {
            let r = gui::connection_banner(ui, self.lang, text);
            self.widgets.insert("connection_banner", r.rect);
        }
    }

    /// The banner that says why the operator cannot control the client now, naming the
    /// cause: chat only, paused by the client's button or by the client's mouse, view only
    /// by the client's switch or because control was never granted.
    fn banner(&self) -> Option<Text> {
        if self.chat_only {
            Some(Text::ChatOnlyBanner)
        } else if self.paused {
            Some(match self.pause_cause.as_str() {
                "button" => Text::PausedByButtonBanner,
                "local_input" => Text::PausedByMouseBanner,
                _ => Text::PausedBanner,
            })
        } else if self.view_only {
            Some(Text::ViewOnlyBanner)
        } else if !self.granted.contains(tsunagu_proto::pb::Permission::Control) {
            Some(Text::NoControlBanner)
        } else {
            None
        }
    }

    fn side_panel(&mut self, ui: &mut egui::Ui) {
        ui.heading(self.t(Text::Chat));
        egui::ScrollArea::vertical()
            .max_height(260.0)
            .stick_to_bottom(true)
            .show(ui, |ui| {
                for (author, text) in self.chat.iter() {
                    let who = if *author == Author::Me {
                        self.lang.t(Text::You)
                    } else {
                        self.lang.t(Text::Client)
                    };
                    ui.label(format!("{who}: {text}"));
                }
            });
        let mut send_chat = false;
        ui.horizontal(|ui| {
            let r = ui.add(egui::TextEdit::singleline(&mut self.chat_draft).desired_width(200.0));
            self.widgets.insert("chat_input", r.rect);
            if r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter)) {
                send_chat = true;
            }
            let b = ui.button(self.lang.t(Text::Send));
            self.widgets.insert("chat_send", b.rect);
            send_chat |= b.clicked();
        });
        if send_chat && !self.chat_draft.trim().is_empty() {
            let text = std::mem::take(&mut self.chat_draft);
            self.send(Command::Chat { text: text.clone() });
            self.chat.push(Author::Me, text);
        }
        self.clipboard_section(ui);
        ui.separator();
        ui.heading(self.t(Text::Files));
        self.files_section(ui);
    }

    /// Send my clipboard / Get the client's clipboard, and how the last one went.
    fn clipboard_section(&mut self, ui: &mut egui::Ui) {
        ui.separator();
        ui.heading(self.t(Text::Clipboard));
        let allowed = self.granted.contains(tsunagu_proto::pb::Permission::Clipboard) && !self.chat_only;
        ui.horizontal_wrapped(|ui| {
            let r = ui.add_enabled(allowed, egui::Button::new(self.t(Text::ClipboardSend)));
            self.widgets.insert("clipboard_send", r.rect);
            if r.clicked() {
                self.send(Command::ClipboardSend { text: None });
            }
            let r = ui.add_enabled(allowed, egui::Button::new(self.t(Text::ClipboardGet)));
            self.widgets.insert("clipboard_get", r.rect);
            if r.clicked() {
                self.send(Command::ClipboardGet);
            }
        });
        let note = match &self.clipboard_note {
            _ if !allowed => Some((self.t(Text::ClipboardNotGranted).to_string(), false)),
            Some(Ok((text, chars))) => Some((format!("{}: {chars}", self.t(*text)), false)),
            Some(Err(e)) => Some((e.clone(), true)),
            None => None,
        };
        if let Some((text, error)) = note {
            let r = if error {
                ui.colored_label(ERROR_RED, text)
            } else {
                ui.label(text)
            };
            self.widgets.insert("clipboard_note", r.rect);
        }
    }

    /// A clipboard error in the window's language, with the detail where it helps.
    fn clipboard_error(&self, code: &str, message: &str) -> String {
        match code {
            "clipboard_empty" => self.t(Text::ClipboardEmpty).to_string(),
            "clipboard_too_large" => self.t(Text::ClipboardTooLarge).to_string(),
            _ => format!("{}: {message}", self.t(Text::ClipboardUnavailable)),
        }
    }

    /// Whether the session lets files move now.
    fn files_allowed(&self) -> bool {
        self.granted.contains(tsunagu_proto::pb::Permission::Files) && !self.chat_only
    }

    /// Send file…, the save folder, offers, transfers and problems.
    fn files_section(&mut self, ui: &mut egui::Ui) {
        let files_ok = self.files_allowed();
        ui.horizontal(|ui| {
            let b = ui.add_enabled(files_ok, egui::Button::new(self.t(Text::SendFile)));
            self.widgets.insert("send_file", b.rect);
            if b.clicked() {
                self.open_dialog(ui.ctx(), DialogFor::Send);
            }
            ui.label(egui::RichText::new(self.t(Text::OrDropFiles)).small());
        });
        if self.dialog.dialog.purpose().is_some() {
            ui.horizontal(|ui| {
                let r = ui.label(self.t(Text::DialogOpen));
                self.widgets.insert("dialog_open", r.rect);
                if ui.small_button(self.t(Text::TypePathInstead)).clicked() {
                    self.dialog.type_instead();
                }
            });
        }
        self.typed_send_row(ui);
        ui.label(self.t(Text::SaveFolder));
        ui.horizontal(|ui| {
            let r = ui.add(egui::TextEdit::singleline(&mut self.save_dir).desired_width(220.0));
            self.widgets.insert("save_dir", r.rect);
            let r = ui.button(self.t(Text::Choose));
            self.widgets.insert("choose_folder", r.rect);
            if r.clicked() {
                self.open_dialog(ui.ctx(), DialogFor::SaveFolder);
            }
        });
        self.offer_rows(ui);
        self.transfer_rows(ui);
        self.problem_rows(ui);
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
            DialogFor::SaveFolder => (
                Pick::Folder,
                Text::ChooseFolderTitle,
                Some(PathBuf::from(self.save_dir.trim())),
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
            (DialogFor::SaveFolder, dir) => self.save_dir = dir.display().to_string(),
        }
    }

    /// The typed path to send, when no dialog could open.
    fn typed_send_row(&mut self, ui: &mut egui::Ui) {
        let Some(mut path) = self.dialog.typed_send.take() else {
            return;
        };
        if let Some(why) = &self.dialog.note {
            let r = ui.colored_label(ERROR_RED, format!("{} ({why})", self.t(Text::DialogUnavailable)));
            self.widgets.insert("dialog_note", r.rect);
        }
        ui.label(self.t(Text::FilePath));
        let mut keep = true;
        ui.horizontal(|ui| {
            let field = ui.add(egui::TextEdit::singleline(&mut path).desired_width(200.0));
            self.widgets.insert("send_path", field.rect);
            let enter = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            let ok = self.files_allowed() && !path.trim().is_empty();
            let go = ui.add_enabled(ok, egui::Button::new(self.t(Text::Send)));
            self.widgets.insert("send_path_go", go.rect);
            if (go.clicked() || enter) && ok {
                self.send(Command::File(FileCommand::SendFile {
                    path: PathBuf::from(path.trim()),
                }));
                keep = false;
            }
            if ui.small_button(self.t(Text::Cancel)).clicked() {
                keep = false;
            }
        });
        if keep {
            self.dialog.typed_send = Some(path);
        } else {
            self.dialog.note = None;
        }
    }

    /// Each offer of the client's: name and size, Accept (into the save folder, created
    /// when missing) and Reject, and why the last Accept failed.
    fn offer_rows(&mut self, ui: &mut egui::Ui) {
        let offers: Vec<_> = self.files.offers().cloned().collect();
        for offer in offers {
            let mut answer = None;
            let r = egui::Frame::group(ui.style()).show(ui, |ui| {
                ui.label(format!(
                    "{} {} {} ({})",
                    self.t(Text::Client),
                    self.t(Text::Offers),
                    offer.name,
                    human_size(offer.size)
                ));
                if let Some(error) = &offer.error {
                    let r = ui.colored_label(ERROR_RED, format!("{}: {error}", self.t(Text::FolderError)));
                    self.widgets.insert("offer_error", r.rect);
                }
                ui.horizontal(|ui| {
                    let a = ui.button(self.t(Text::Accept));
                    self.widgets.insert("accept", a.rect);
                    if a.clicked() {
                        answer = Some(true);
                    }
                    let r = ui.button(self.t(Text::Reject));
                    self.widgets.insert("reject", r.rect);
                    if r.clicked() {
                        answer = Some(false);
                    }
                });
            });
            self.widgets.insert("offer", r.response.rect);
            let cmd = match answer {
                Some(true) => {
                    self.files.set_dir(offer.id, std::path::Path::new(self.save_dir.trim()));
                    self.files.save(offer.id)
                }
                Some(false) => self.files.reject(offer.id),
                None => None,
            };
            if let Some(cmd) = cmd {
                self.send(Command::File(cmd));
            }
        }
    }

    /// One entry per transfer: direction and name, progress, and how it ended.
    fn transfer_rows(&mut self, ui: &mut egui::Ui) {
        let rows: Vec<Row> = self.files.rows().cloned().collect();
        for row in rows {
            let r = ui.label(format!("{} {}", if row.sending { "↑" } else { "↓" }, row.name));
            self.widgets.insert("transfer", r.rect);
            ui.horizontal(|ui| {
                ui.add(
                    egui::ProgressBar::new(row.fraction())
                        .desired_width(180.0)
                        .text(format!("{} / {}", human_size(row.bytes), human_size(row.size))),
                );
                let status = match &row.status {
                    RowStatus::Waiting => Some(self.t(Text::WaitingForAnswer)),
                    RowStatus::Running => None,
                    RowStatus::Saved(_) => Some(self.t(Text::Saved)),
                    RowStatus::Sent => Some(self.t(Text::Sent)),
                    RowStatus::Declined => Some(self.t(Text::Rejected)),
                    RowStatus::Cancelled => Some(self.t(Text::Cancelled)),
                    RowStatus::Failed(_) => Some(self.t(Text::Failed)),
                };
                if !row.status.finished() && ui.small_button(self.t(Text::Cancel)).clicked() {
                    let side = Some(if row.sending { "send" } else { "receive" }.to_string());
                    self.send(Command::File(FileCommand::CancelFile { id: row.id, side }));
                }
                if let Some(status) = status {
                    let r = if matches!(row.status, RowStatus::Failed(_) | RowStatus::Declined) {
                        ui.colored_label(ERROR_RED, status)
                    } else {
                        ui.label(status)
                    };
                    self.widgets.insert("transfer_status", r.rect);
                }
            });
            match &row.status {
                RowStatus::Saved(path) => {
                    let r = ui.small(path.display().to_string());
                    self.widgets.insert("saved_path", r.rect);
                }
                RowStatus::Failed(reason) => {
                    ui.small(reason.clone());
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
            ui.horizontal_wrapped(|ui| {
                let r = ui.colored_label(ERROR_RED, self.problem_text(p));
                self.widgets.insert("problem", r.rect);
                if ui.small_button("×").clicked() {
                    dismiss = Some(i);
                }
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
            "no_path" => self.t(Text::DropNoPath).to_string(),
            "file_error" => format!("{}: {}", self.t(Text::FileError), p.detail),
            "file_failed" => format!("{}: {}", self.t(Text::Failed), p.detail),
            _ => format!("{}: {}", self.t(Text::Problem), p.detail),
        }
    }

    /// Files dropped onto the window are sent to the client; while files hover over it, a
    /// note says they will be.
    fn dropped_files(&mut self, ctx: &egui::Context) {
        let dropped: Vec<PathBuf> = ctx.input(|i| i.raw.dropped_files.iter().map(|f| f.path().to_path_buf()).collect());
        for cmd in sends_for_drop(&dropped, self.files_allowed()) {
            match cmd {
                Ok(cmd) => self.send(Command::File(cmd)),
                Err(code) => self.files.add_problem(code, ""),
            }
        }
    }

    /// The picture's sizing, the side panel, full screen and Ctrl+Alt+Del, under the top bar.
    fn view_bar(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        if let Some(fullscreen) = ctx.input(|i| i.viewport().fullscreen) {
            self.viewer.fullscreen = fullscreen;
        }
        let before = self.viewer.settings();
        let current = self.last_scale * ctx.pixels_per_point() * 100.0;
        ui.horizontal(|ui| {
            let fit = egui::Button::selectable(self.viewer.mode == Mode::Fit, self.t(Text::Fit));
            if self.bar_button(ui, "view_fit", fit).clicked() {
                self.viewer.mode = Mode::Fit;
            }
            let actual = egui::Button::selectable(self.viewer.mode == Mode::Actual, self.t(Text::ActualSize));
            if self.bar_button(ui, "view_actual", actual).clicked() {
                self.viewer.mode = Mode::Actual;
            }
            let out = self.bar_button(ui, "zoom_out", egui::Button::new("−"));
            if out.on_hover_text(self.t(Text::ZoomOut)).clicked() {
                self.viewer.zoom_out(current);
            }
            let r = ui.label(format!("{current:.0}%"));
            self.widgets.insert("zoom_level", r.rect);
            let r = self.bar_button(ui, "zoom_in", egui::Button::new("+"));
            if r.on_hover_text(self.t(Text::ZoomIn)).clicked() {
                self.viewer.zoom_in(current);
            }
            ui.separator();
            let panel = if self.viewer.panel {
                Text::HidePanel
            } else {
                Text::ShowPanel
            };
            if self
                .bar_button(ui, "panel_toggle", egui::Button::new(self.t(panel)))
                .clicked()
            {
                self.viewer.panel = !self.viewer.panel;
            }
            let full = if self.viewer.fullscreen {
                Text::ExitFullScreen
            } else {
                Text::FullScreen
            };
            if self
                .bar_button(ui, "fullscreen", egui::Button::new(self.t(full)))
                .clicked()
            {
                self.viewer.fullscreen = !self.viewer.fullscreen;
                ctx.send_viewport_cmd(egui::ViewportCommand::Fullscreen(self.viewer.fullscreen));
            }
            ui.separator();
            let r = ui.add_enabled(self.control(), egui::Button::new(self.t(Text::SendCtrlAltDel)));
            self.widgets.insert("ctrl_alt_del", r.rect);
            if r.clicked() {
                for c in viewer::ctrl_alt_del() {
                    self.send(c);
                }
            }
        });
        if self.viewer.settings() != before {
            self.remember();
        }
    }

    /// A button of a bar, reported as widget `name`.
    fn bar_button(&mut self, ui: &mut egui::Ui, name: &'static str, button: egui::Button) -> egui::Response {
        let r = ui.add(button);
        self.widgets.insert(name, r.rect);
        r
    }

    /// Whether the operator controls the client now.
    fn control(&self) -> bool {
        self.granted.contains(tsunagu_proto::pb::Permission::Control)
            && !self.paused
            && !self.view_only
            && !self.chat_only
    }

    /// The remote screen as the viewer says (fit, actual size, zoom with scroll bars),
    /// taking input.
    fn remote_screen(&mut self, ui: &mut egui::Ui) {
        let Some(texture) = &self.texture else {
            let text = if self.chat_only {
                Text::ChatOnlyScreen
            } else {
                Text::NoPicture
            };
            let r = ui.centered_and_justified(|ui| ui.label(self.lang.t(text)));
            self.widgets.insert("no_picture", r.response.rect);
            self.picture_rect = None;
            self.picture_origin = None;
            return;
        };
        let texture = texture.id();
        let (pw, ph) = (self.picture_size.0 as f32, self.picture_size.1 as f32);
        let avail = ui.available_rect_before_wrap();
        let scale = self.viewer.scale((pw, ph), avail.size(), ui.ctx().pixels_per_point());
        self.last_scale = scale;
        let size = egui::vec2(pw * scale, ph * scale);
        let uv = egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0));
        let (rect, visible, response) = if self.viewer.scrolls() {
            let out = egui::ScrollArea::both()
                .id_salt("picture")
                .auto_shrink([false, false])
                // The wheel over the picture is the client's; the bars scroll the view.
                .scroll_source(egui::scroll_area::ScrollSource::SCROLL_BAR)
                .show(ui, |ui| {
                    let (rect, response) = ui.allocate_exact_size(size, egui::Sense::click_and_drag());
                    ui.painter().image(texture, rect, uv, egui::Color32::WHITE);
                    (rect, response)
                });
            (out.inner.0, out.inner_rect.intersect(out.inner.0), out.inner.1)
        } else {
            let rect = egui::Rect::from_center_size(avail.center(), size);
            let response = ui.allocate_rect(rect, egui::Sense::click_and_drag());
            ui.painter().image(texture, rect, uv, egui::Color32::WHITE);
            (rect, rect, response)
        };
        self.picture_rect = Some(rect);
        self.picture_origin = Some(rect.min);
        self.widgets.insert("screen", rect);
        self.widgets.insert("viewport", visible);
        if self.control() && response.hovered() {
            // Keys over the picture are the client's, not the chat field's.
            response.request_focus();
            self.forward_input(ui, rect.min, visible, scale);
        }
    }

    /// Maps the window's input over the visible picture to the client's pixels.
    fn forward_input(&mut self, ui: &egui::Ui, origin: egui::Pos2, visible: egui::Rect, scale: f32) {
        let size = self.picture_size;
        let to_remote = |p: egui::Pos2| {
            if visible.contains(p) {
                viewer::to_remote(p, origin, scale, size)
            } else {
                None
            }
        };
        let events = ui.input(|i| i.events.clone());
        let mut commands = Vec::new();
        // Text the system reports with a key sent as a combination (Alt+F) is not typed.
        let mut skip_text = false;
        for e in events {
            match e {
                egui::Event::PointerMoved(p) => {
                    if let Some(xy) = to_remote(p) {
                        if self.last_pointer != Some(xy) {
                            self.last_pointer = Some(xy);
                            commands.push(Command::MouseMove { x: xy.0, y: xy.1 });
                        }
                    }
                }
                egui::Event::PointerButton {
                    pos, button, pressed, ..
                } => {
                    let Some((x, y)) = to_remote(pos) else { continue };
                    let button = match button {
                        egui::PointerButton::Primary => Button::Left,
                        egui::PointerButton::Secondary => Button::Right,
                        egui::PointerButton::Middle => Button::Middle,
                        _ => continue,
                    };
                    commands.push(Command::MouseMove { x, y });
                    commands.push(Command::MouseButton {
                        button,
                        down: Some(pressed),
                    });
                }
                egui::Event::MouseWheel { delta, unit, .. } => {
                    // One notch per line; points are turned into lines of ~40 points.
                    let lines = match unit {
                        egui::MouseWheelUnit::Point => delta / 40.0,
                        egui::MouseWheelUnit::Line => delta,
                        egui::MouseWheelUnit::Page => delta * 10.0,
                    };
                    let (dx, dy) = (-lines.x.round() as i32, -lines.y.round() as i32);
                    if dx != 0 || dy != 0 {
                        commands.push(Command::Wheel { dx, dy });
                    }
                }
                egui::Event::Text(_) if skip_text => skip_text = false,
                egui::Event::Text(text) => commands.push(Command::Text { text }),
                egui::Event::Key {
                    key,
                    pressed,
                    modifiers,
                    ..
                } => {
                    let (sent, combination) = viewer::key_input(key, pressed, modifiers);
                    skip_text = combination && pressed;
                    commands.extend(sent);
                }
                _ => {}
            }
        }
        for c in commands {
            self.send(c);
        }
    }

    fn session_screen(&mut self, ui: &mut egui::Ui) {
        egui::Panel::top("session-top").show(ui, |ui| self.top_bar(ui));
        if self.viewer.panel {
            egui::Panel::right("session-side")
                .resizable(true)
                .default_size(360.0)
                .min_size(280.0)
                .show(ui, |ui| {
                    egui::ScrollArea::vertical().show(ui, |ui| self.side_panel(ui));
                });
        }
        egui::CentralPanel::default().show(ui, |ui| {
            let hovering = ui.ctx().input(|i| !i.raw.hovered_files.is_empty());
            if hovering {
                let text = if self.files_allowed() {
                    Text::DropToSend
                } else {
                    Text::NotGranted
                };
                let r = egui::Frame::new()
                    .fill(egui::Color32::from_rgb(30, 110, 200))
                    .inner_margin(8.0)
                    .show(ui, |ui| ui.colored_label(egui::Color32::WHITE, self.t(text)));
                self.widgets.insert("drop_note", r.response.rect);
            }
            self.remote_screen(ui)
        });
        self.dropped_files(ui.ctx());
    }

    fn ended_screen(&mut self, ui: &mut egui::Ui, ctx: &egui::Context) {
        ui.heading(self.t(Text::Ended));
        if let Some(m) = &self.message {
            ui.label(m.clone());
        }
        ui.add_space(8.0);
        let r = ui.button(self.t(Text::NewSession));
        self.widgets.insert("new_session", r.rect);
        if r.clicked() {
            self.start(ctx);
        }
    }

    /// With `events`, a JSON line with the screen and widget positions (in pixels) whenever
    /// they change.
    fn report(&mut self, ctx: &egui::Context) {
        if !self.options.events {
            return;
        }
        let (window, widgets) = gui::geometry(ctx, &self.widgets);
        let line = serde_json::json!({
            "event": "gui",
            "screen": self.screen.name(),
            "lang": self.lang.code(),
            "window": window,
            "widgets": widgets,
            "banner": self.widgets.contains_key("banner"),
            "banner_kind": self.banner().filter(|_| self.screen == Screen::Session).map(banner_kind),
            "picture": [self.picture_size.0, self.picture_size.1],
            "view": {
                "mode": self.viewer.mode,
                "zoom": self.viewer.zoom(),
                "scale": self.last_scale,
                "origin": self.picture_origin.map(|p| [p.x, p.y]),
                "panel": self.viewer.panel,
                "fullscreen": self.viewer.fullscreen,
            },
            "clipboard_note": self.clipboard_note.as_ref().map(|n| match n {
                Ok((_, chars)) => serde_json::json!({"chars": chars}),
                Err(e) => serde_json::json!({"error": e}),
            }),
            "offers": self.files.offers().map(|o| serde_json::json!({
                "id": o.id,
                "name": o.name,
                "error": o.error,
            })).collect::<Vec<_>>(),
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
            "save_dir": self.save_dir,
            "dialog_open": self.dialog.dialog.purpose().is_some(),
        })
        .to_string();
        gui::report_if_changed(&mut self.last_report, line);
    }
}

impl eframe::App for OperatorApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        self.drain(&ctx);
        self.poll_dialog();
        self.widgets.clear();
        if ctx.input(|i| i.viewport().close_requested()) && self.commands.is_some() {
            // Closing the window ends the session on the relay first.
            self.send(Command::End);
            std::thread::sleep(Duration::from_millis(300));
        }
        egui::CentralPanel::default().show(ui, |ui| match self.screen {
            Screen::Login | Screen::Connecting => {
                self.login_screen(ui, &ctx);
                if self.screen == Screen::Connecting {
                    ui.label(self.t(Text::Connecting));
                }
            }
            Screen::Waiting => self.waiting_screen(ui, &ctx),
            Screen::Session => self.session_screen(ui),
            Screen::Ended => self.ended_screen(ui, &ctx),
        });
        self.report(&ctx);
        if self.from_session.is_some() {
            ctx.request_repaint_after(Duration::from_millis(500));
        }
    }
}

/// The report's name for a banner.
fn banner_kind(text: Text) -> &'static str {
    match text {
        Text::ChatOnlyBanner => "chat_only",
        Text::PausedByButtonBanner => "paused_by_button",
        Text::PausedByMouseBanner => "paused_by_mouse",
        Text::PausedBanner => "paused",
        Text::ViewOnlyBanner => "view_only",
        Text::NoControlBanner => "no_control",
        _ => "other",
    }
}

/// The send commands for the paths of files dropped onto the window: one per file;
/// `not_granted` for each when the session does not let files move now, `no_path` for a
/// drop that carries no file path.
fn sends_for_drop(dropped: &[PathBuf], allowed: bool) -> Vec<Result<FileCommand, &'static str>> {
    dropped
        .iter()
        .map(|path| {
            if path.as_os_str().is_empty() {
                Err("no_path")
            } else if !allowed {
                Err("not_granted")
            } else {
                Ok(FileCommand::SendFile { path: path.clone() })
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_files_become_sends() {
        let dropped = [PathBuf::from("/home/op/a.txt"), PathBuf::new()];
        assert_eq!(
            sends_for_drop(&dropped, true),
            vec![
                Ok(FileCommand::SendFile {
                    path: PathBuf::from("/home/op/a.txt")
                }),
                Err("no_path")
            ]
        );
        assert_eq!(sends_for_drop(&dropped[..1], false), vec![Err("not_granted")]);
    }
}
