//! The operator window (eframe/egui): log in, get a code to read to the client, see who
//! joined and what they granted, then watch and control the client's screen, chat, and move
//! files, with a banner whenever the client has paused control or limited the session.
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
use tsunagu_endpoint::gui::{self, FromSession};
use tsunagu_endpoint::transfer::{FileCommand, FileEvent};
use tsunagu_proto::PermissionSet;

use crate::api::{Button, Command, Event};
use crate::chat::{Author, ChatLog};
use crate::config::OperatorConfig;
use crate::i18n::{Lang, Text};
use crate::picture::PictureSink;

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

/// One file transfer as the window lists it.
#[derive(Debug, Clone)]
struct TransferRow {
    name: String,
    size: u64,
    bytes: u64,
    sending: bool,
    status: Option<Text>,
    detail: String,
}

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
    send_path: String,
    save_dir: String,
    offers: BTreeMap<u32, (String, u64)>,
    transfers: BTreeMap<(u32, bool), TransferRow>,
    last_pointer: Option<(i32, i32)>,
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
            send_path: String::new(),
            offers: BTreeMap::new(),
            transfers: BTreeMap::new(),
            last_pointer: None,
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
        self.offers.clear();
        self.transfers.clear();
        self.texture = None;
        self.picture_size = (0, 0);
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
            Event::Error { code, message } => self.message = Some(self.error_text(&code, &message)),
            Event::Ended { .. } => {}
            Event::File(f) => self.on_file_event(f),
            Event::Connection(c) => self.connection.on_event(&c, Instant::now()),
            _ => {}
        }
    }

    fn on_file_event(&mut self, f: FileEvent) {
        let row = |name: &str, size: u64, sending: bool| TransferRow {
            name: name.into(),
            size,
            bytes: 0,
            sending,
            status: None,
            detail: String::new(),
        };
        match f {
            FileEvent::FileOffer { id, name, size, .. } => {
                // Already sanitised by the transfer engine; inert whatever fed the event.
                self.offers.insert(id, (tsunagu_proto::names::make_inert(&name), size));
            }
            FileEvent::FileOffered { id, name, size, .. } => {
                self.transfers.insert((id, true), row(&name, size, true));
            }
            FileEvent::FileProgress { id, side, bytes, .. } => {
                if let Some(r) = self.transfers.get_mut(&(id, side == "send")) {
                    r.bytes = bytes;
                }
            }
            FileEvent::FileSaved { id, path, size, .. } => {
                if let Some(r) = self.transfers.get_mut(&(id, false)) {
                    r.bytes = size;
                    r.status = Some(Text::Saved);
                    r.detail = path.display().to_string();
                }
            }
            FileEvent::FileSent { id, size, .. } => {
                if let Some(r) = self.transfers.get_mut(&(id, true)) {
                    r.bytes = size;
                    r.status = Some(Text::Sent);
                }
            }
            FileEvent::FileRejected { id, side } => self.finish_row(id, &side, Text::Rejected, String::new()),
            FileEvent::FileCancelled { id, side } => self.finish_row(id, &side, Text::Cancelled, String::new()),
            FileEvent::FileFailed { id, side, reason } => self.finish_row(id, &side, Text::Failed, reason),
            FileEvent::FileAccepted { .. } => {}
        }
    }

    fn finish_row(&mut self, id: u32, side: &str, status: Text, detail: String) {
        self.offers.remove(&id);
        if let Some(r) = self.transfers.get_mut(&(id, side == "send")) {
            r.status = Some(status);
            r.detail = detail;
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
        ui.separator();
        ui.heading(self.t(Text::Files));
        let files_ok = self.granted.contains(tsunagu_proto::pb::Permission::Files) && !self.chat_only;
        ui.label(self.t(Text::FilePath));
        ui.horizontal(|ui| {
            ui.add(egui::TextEdit::singleline(&mut self.send_path).desired_width(200.0));
            let b = ui.add_enabled(
                files_ok && !self.send_path.trim().is_empty(),
                egui::Button::new(self.lang.t(Text::SendFile)),
            );
            if b.clicked() {
                let path = PathBuf::from(self.send_path.trim());
                self.send(Command::File(FileCommand::SendFile { path }));
            }
        });
        ui.label(self.t(Text::SaveFolder));
        ui.text_edit_singleline(&mut self.save_dir);
        let offers: Vec<(u32, (String, u64))> = self.offers.iter().map(|(k, v)| (*k, v.clone())).collect();
        for (id, (name, size)) in offers {
            ui.horizontal(|ui| {
                ui.label(format!(
                    "{} {} {name} ({})",
                    self.lang.t(Text::Client),
                    self.lang.t(Text::Offers),
                    human_size(size)
                ));
                if ui.button(self.lang.t(Text::Accept)).clicked() {
                    self.send(Command::File(FileCommand::AcceptFile {
                        id,
                        dir: PathBuf::from(self.save_dir.trim()),
                    }));
                    self.offers.remove(&id);
                    self.transfers.insert(
                        (id, false),
                        TransferRow {
                            name: name.clone(),
                            size,
                            bytes: 0,
                            sending: false,
                            status: None,
                            detail: String::new(),
                        },
                    );
                }
                if ui.button(self.lang.t(Text::Reject)).clicked() {
                    self.send(Command::File(FileCommand::RejectFile { id }));
                    self.offers.remove(&id);
                }
            });
        }
        let rows: Vec<((u32, bool), TransferRow)> = self.transfers.iter().map(|(k, v)| (*k, v.clone())).collect();
        for ((id, sending), row) in rows {
            ui.label(format!("{} {}", if row.sending { "↑" } else { "↓" }, row.name));
            let fraction = if row.size == 0 {
                1.0
            } else {
                row.bytes as f32 / row.size as f32
            };
            ui.horizontal(|ui| {
                ui.add(egui::ProgressBar::new(fraction).desired_width(180.0).text(format!(
                    "{} / {}",
                    human_size(row.bytes),
                    human_size(row.size)
                )));
                match row.status {
                    Some(s) => {
                        ui.label(self.lang.t(s));
                    }
                    None => {
                        if ui.small_button(self.lang.t(Text::Cancel)).clicked() {
                            let side = Some(if sending { "send" } else { "receive" }.to_string());
                            self.send(Command::File(FileCommand::CancelFile { id, side }));
                        }
                    }
                }
            });
            if !row.detail.is_empty() {
                ui.small(row.detail.clone());
            }
        }
    }

    /// The remote screen, scaled to the space with its aspect ratio, taking input.
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
            return;
        };
        let (pw, ph) = (self.picture_size.0 as f32, self.picture_size.1 as f32);
        let avail = ui.available_rect_before_wrap();
        let scale = (avail.width() / pw).min(avail.height() / ph).max(0.01);
        let size = egui::vec2(pw * scale, ph * scale);
        let rect = egui::Rect::from_center_size(avail.center(), size);
        let response = ui.allocate_rect(rect, egui::Sense::click_and_drag());
        ui.painter().image(
            texture.id(),
            rect,
            egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)),
            egui::Color32::WHITE,
        );
        self.picture_rect = Some(rect);
        self.widgets.insert("screen", rect);
        let control = self.granted.contains(tsunagu_proto::pb::Permission::Control)
            && !self.paused
            && !self.view_only
            && !self.chat_only;
        if control && response.hovered() {
            response.request_focus();
            self.forward_input(ui, rect, scale);
        }
    }

    /// Maps the window's input over the picture to the client's screen coordinates.
    fn forward_input(&mut self, ui: &egui::Ui, rect: egui::Rect, scale: f32) {
        let to_remote = |p: egui::Pos2| {
            (
                ((p.x - rect.min.x) / scale).floor() as i32,
                ((p.y - rect.min.y) / scale).floor() as i32,
            )
        };
        let events = ui.input(|i| i.events.clone());
        let mut commands = Vec::new();
        for e in events {
            match e {
                egui::Event::PointerMoved(p) if rect.contains(p) => {
                    let xy = to_remote(p);
                    if self.last_pointer != Some(xy) {
                        self.last_pointer = Some(xy);
                        commands.push(Command::MouseMove { x: xy.0, y: xy.1 });
                    }
                }
                egui::Event::PointerButton {
                    pos, button, pressed, ..
                } if rect.contains(pos) => {
                    let button = match button {
                        egui::PointerButton::Primary => Button::Left,
                        egui::PointerButton::Secondary => Button::Right,
                        egui::PointerButton::Middle => Button::Middle,
                        _ => continue,
                    };
                    let (x, y) = to_remote(pos);
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
                egui::Event::Text(text) => commands.push(Command::Text { text }),
                egui::Event::Key { key, pressed, .. } => {
                    if let Some(name) = special_key_name(key) {
                        commands.push(Command::Key {
                            key: name.to_string(),
                            down: Some(pressed),
                        });
                    }
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
        egui::Panel::right("session-side")
            .resizable(true)
            .default_size(360.0)
            .min_size(280.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| self.side_panel(ui));
            });
        egui::CentralPanel::default().show(ui, |ui| self.remote_screen(ui));
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
        })
        .to_string();
        gui::report_if_changed(&mut self.last_report, line);
    }
}

impl eframe::App for OperatorApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        self.drain(&ctx);
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

/// The input contract's name for keys that do not produce text.
fn special_key_name(key: egui::Key) -> Option<&'static str> {
    use egui::Key as K;
    Some(match key {
        K::Enter => "Enter",
        K::Tab => "Tab",
        K::Escape => "Escape",
        K::Backspace => "Backspace",
        K::Delete => "Delete",
        K::Insert => "Insert",
        K::ArrowLeft => "ArrowLeft",
        K::ArrowRight => "ArrowRight",
        K::ArrowUp => "ArrowUp",
        K::ArrowDown => "ArrowDown",
        K::Home => "Home",
        K::End => "End",
        K::PageUp => "PageUp",
        K::PageDown => "PageDown",
        K::F1 => "F1",
        K::F2 => "F2",
        K::F3 => "F3",
        K::F4 => "F4",
        K::F5 => "F5",
        K::F6 => "F6",
        K::F7 => "F7",
        K::F8 => "F8",
        K::F9 => "F9",
        K::F10 => "F10",
        K::F11 => "F11",
        K::F12 => "F12",
        _ => return None,
    })
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

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(1_500_000), "1.5 MB");
        assert_eq!(human_size(200_000_000), "200.0 MB");
    }

    #[test]
    fn special_keys_use_the_contract_names() {
        assert_eq!(special_key_name(egui::Key::Enter), Some("Enter"));
        assert_eq!(special_key_name(egui::Key::ArrowLeft), Some("ArrowLeft"));
        assert_eq!(special_key_name(egui::Key::A), None, "letters arrive as text");
    }
}
