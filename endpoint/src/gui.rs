//! What both app windows (eframe/egui) set up the same way (feature `gui`): a system CJK font
//! as a fallback after egui's own fonts (egui ships none, so Japanese would show as boxes),
//! the text sizes derived from one base size, and the tokio runtime the session runs on
//! beside the window.

use std::sync::Arc;

use eframe::egui;

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
    fn the_session_runtime_runs_tasks() {
        let runtime = session_runtime().unwrap();
        assert_eq!(runtime.block_on(async { tokio::spawn(async { 7 }).await.unwrap() }), 7);
    }
}
