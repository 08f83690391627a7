//! What both app windows (eframe/egui) set up the same way (feature `gui`): a system CJK font
//! as a fallback after egui's own fonts (egui ships none, so Japanese would show as boxes),
//! the text sizes derived from one base size, the tokio runtime the session runs on beside
//! the window, and the event bridge that carries the session's events to the window.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use eframe::egui;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::headless::Outcome;

/// Places where Debian and other distributions keep a CJK font with Japanese glyphs; the
/// first that exists is used. Face 0 of Noto Sans CJK collections is the Japanese one.
pub const CJK_FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/ipafont-gothic/ipag.ttf",
    "/usr/share/fonts/truetype/fonts-japanese-gothic.ttf",
];

/// The name the CJK font is registered under in egui's font definitions.
const CJK_FONT_NAME: &str = "cjk";

/// Headings are this many times the base text size.
const HEADING_SCALE: f32 = 1.4;
/// Small text is this many times the base text size.
const SMALL_SCALE: f32 = 0.75;

/// Worker threads of the session runtime: one connection and its pumps need few, and the
/// window draws on its own thread.
const SESSION_WORKERS: usize = 2;

/// The first of `candidates` that can be read, with its bytes; `None` when none can.
pub fn first_readable<'a>(candidates: &[&'a str]) -> Option<(&'a str, Vec<u8>)> {
    candidates.iter().find_map(|p| std::fs::read(p).ok().map(|b| (*p, b)))
}

/// egui's own font definitions with `font` added as the last fallback of the proportional and
/// monospace families, so egui's fonts still draw Latin text and `font` draws the rest.
pub fn with_fallback_font(font: Vec<u8>) -> egui::FontDefinitions {
    let mut fonts = egui::FontDefinitions::default();
    fonts
        .font_data
        .insert(CJK_FONT_NAME.into(), Arc::new(egui::FontData::from_owned(font)));
    for family in [egui::FontFamily::Proportional, egui::FontFamily::Monospace] {
        fonts.families.entry(family).or_default().push(CJK_FONT_NAME.into());
    }
    fonts
}

/// Loads the first CJK font of [`CJK_FONT_CANDIDATES`] into `ctx` as a fallback after egui's
/// own fonts and logs which one. Returns the path used, or `None` (Japanese then shows as
/// boxes; logged as a warning).
pub fn load_cjk_font(ctx: &egui::Context) -> Option<&'static str> {
    let Some((path, bytes)) = first_readable(CJK_FONT_CANDIDATES) else {
        tracing::warn!("no CJK font found; Japanese text cannot be shown (install fonts-noto-cjk)");
        return None;
    };
    ctx.set_fonts(with_fallback_font(bytes));
    tracing::info!(font = path, "CJK font loaded");
    Some(path)
}

/// Sets every text style of `style` from one base size in points: headings larger, small text
/// smaller, all the others at `base`.
pub fn set_text_size(style: &mut egui::Style, base: f32) {
    for (text_style, font) in style.text_styles.iter_mut() {
        font.size = match text_style {
            egui::TextStyle::Heading => base * HEADING_SCALE,
            egui::TextStyle::Small => base * SMALL_SCALE,
            _ => base,
        };
    }
}

/// The multi-threaded tokio runtime a window runs its session on.
pub fn session_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(SESSION_WORKERS)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// What a running session tells its window, in order: its events, then how it ended.
#[derive(Debug)]
pub enum FromSession<E> {
    /// An event, as the headless mode would print it.
    Event(E),
    /// The session is over; nothing follows.
    Finished(Outcome),
}

/// Starts `session` on `runtime` with fresh command and event channels (of the given
/// capacities) and returns the window's ends: where to send commands, and what to drain on
/// each repaint. Every event wakes the window; with `print`, each is also printed as a JSON
/// line on stdout (for scripts and tests following the window). The outcome comes after the
/// session's last event.
pub fn start_session<C, E, F>(
    runtime: &tokio::runtime::Runtime,
    ctx: &egui::Context,
    (command_capacity, event_capacity): (usize, usize),
    print: bool,
    session: impl FnOnce(mpsc::Receiver<C>, mpsc::Sender<E>) -> F,
) -> (mpsc::Sender<C>, std_mpsc::Receiver<FromSession<E>>)
where
    C: Send + 'static,
    E: Serialize + Send + 'static,
    F: Future<Output = Outcome> + Send + 'static,
{
    let (cmd_tx, cmd_rx) = mpsc::channel(command_capacity);
    let (ev_tx, mut ev_rx) = mpsc::channel::<E>(event_capacity);
    let (to_window, from_session) = std_mpsc::channel();
    let repaint = ctx.clone();
    let session = runtime.spawn(session(cmd_rx, ev_tx));
    runtime.spawn(async move {
        while let Some(event) = ev_rx.recv().await {
            if print {
                if let Ok(line) = serde_json::to_string(&event) {
                    println!("{line}");
                }
            }
            let _ = to_window.send(FromSession::Event(event));
            repaint.request_repaint();
        }
        // The session dropped its sender: it has ended (or panicked, reported as unreachable).
        let outcome = session.await.unwrap_or(Outcome::Unreachable);
        let _ = to_window.send(FromSession::Finished(outcome));
        repaint.request_repaint();
    });
    (cmd_tx, from_session)
}

/// Draws the connection banner `text` (see [`crate::banner`]) across the window: amber while
/// the session is held up, green once restored. Returns its response (windows report its
/// place as `connection_banner`).
pub fn connection_banner(
    ui: &mut egui::Ui,
    lang: crate::lang::Lang,
    text: crate::banner::ConnectionText,
) -> egui::Response {
    let fill = if text.is_warning() {
        egui::Color32::from_rgb(255, 170, 60)
    } else {
        egui::Color32::from_rgb(120, 200, 120)
    };
    egui::Frame::new()
        .fill(fill)
        .inner_margin(6.0)
        .show(ui, |ui| {
            ui.set_min_width(ui.available_width());
            ui.colored_label(egui::Color32::BLACK, egui::RichText::new(lang.t(text)).strong());
        })
        .response
}

/// A rectangle in physical pixels, `[x, y, width, height]`, as window reports give them.
pub type PixelRect = [i64; 4];

/// `rect` (in points) in physical pixels.
pub fn to_pixels(ctx: &egui::Context, rect: egui::Rect) -> PixelRect {
    let ppp = ctx.pixels_per_point();
    [
        (rect.min.x * ppp).round() as i64,
        (rect.min.y * ppp).round() as i64,
        (rect.width() * ppp).round() as i64,
        (rect.height() * ppp).round() as i64,
    ]
}

/// Where the window is and where its named widgets are, in physical pixels, for a window
/// report.
pub fn geometry(
    ctx: &egui::Context,
    widgets: &BTreeMap<&'static str, egui::Rect>,
) -> (Option<PixelRect>, BTreeMap<&'static str, PixelRect>) {
    let window = ctx.input(|i| i.viewport().inner_rect).map(|r| to_pixels(ctx, r));
    let widgets = widgets.iter().map(|(k, r)| (*k, to_pixels(ctx, *r))).collect();
    (window, widgets)
}

/// Prints a window report (a `gui` JSON line) on stdout when it differs from the last one.
pub fn report_if_changed(last: &mut String, line: String) {
    if line != *last {
        println!("{line}");
        *last = line;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_readable_font_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.ttc");
        let second = dir.path().join("second.ttf");
        let third = dir.path().join("third.ttf");
        std::fs::write(&second, b"second font").unwrap();
        std::fs::write(&third, b"third font").unwrap();
        let (missing, second, third) = (
            missing.to_str().unwrap(),
            second.to_str().unwrap(),
            third.to_str().unwrap(),
        );
        assert_eq!(
            first_readable(&[missing, second, third]),
            Some((second, b"second font".to_vec()))
        );
        assert_eq!(first_readable(&[missing]), None);
        assert_eq!(first_readable(&[]), None);
    }

    #[test]
    fn the_cjk_font_comes_after_eguis_own() {
        let fonts = with_fallback_font(b"font bytes".to_vec());
        assert!(fonts.font_data.contains_key(CJK_FONT_NAME));
        for family in [egui::FontFamily::Proportional, egui::FontFamily::Monospace] {
            let names = &fonts.families[&family];
            assert_eq!(names.last().map(String::as_str), Some(CJK_FONT_NAME), "{family:?}");
            assert!(names.len() > 1, "egui's own fonts stay first in {family:?}");
        }
    }

    #[test]
    fn text_sizes_follow_the_base() {
        let mut style = egui::Style::default();
        set_text_size(&mut style, 20.0);
        assert_eq!(style.text_styles[&egui::TextStyle::Heading].size, 28.0);
        assert_eq!(style.text_styles[&egui::TextStyle::Small].size, 15.0);
        assert_eq!(style.text_styles[&egui::TextStyle::Body].size, 20.0);
        assert_eq!(style.text_styles[&egui::TextStyle::Button].size, 20.0);
        assert_eq!(style.text_styles[&egui::TextStyle::Monospace].size, 20.0);
    }

    #[test]
    fn the_bridge_delivers_every_event_before_the_outcome() {
        let runtime = session_runtime().unwrap();
        let ctx = egui::Context::default();
        let (commands, from_session) = start_session(&runtime, &ctx, (4, 4), false, |mut cmd_rx, ev_tx| async move {
            // Echo commands as events until the window stops sending, then end.
            while let Some(n) = cmd_rx.recv().await {
                let _ = ev_tx.send(n * 10).await;
            }
            Outcome::Ended {
                reason: "operator_ended".into(),
            }
        });
        for n in 1..=20u32 {
            commands.blocking_send(n).unwrap();
        }
        drop(commands);
        let mut seen = Vec::new();
        loop {
            match from_session.recv_timeout(std::time::Duration::from_secs(10)).unwrap() {
                FromSession::Event(e) => seen.push(e),
                FromSession::Finished(outcome) => {
                    assert_eq!(outcome.exit_code(), 0);
                    break;
                }
            }
        }
        assert_eq!(seen, (1..=20).map(|n| n * 10).collect::<Vec<u32>>());
    }

    #[test]
    fn the_session_runtime_runs_tasks() {
        let runtime = session_runtime().unwrap();
        assert_eq!(runtime.block_on(async { tokio::spawn(async { 7 }).await.unwrap() }), 7);
    }
}
