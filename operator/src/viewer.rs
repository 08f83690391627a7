//! How the operator window shows the client's screen and what its keys send: fit to the
//! window, actual size (one client pixel to one screen pixel, scrolled), or a zoom step;
//! the side panel shown or hidden; full screen. The mode and the panel are remembered in
//! `operator.toml`. Kept free of drawing so the arithmetic that maps the pointer back to the
//! client's pixels, and the key combinations, are tested on their own.

use eframe::egui;
use serde::{Deserialize, Serialize};

use crate::api::Command;

/// The zoom steps, in percent of the client's pixels (at one screen pixel per point).
pub const ZOOM_STEPS: [u16; 14] = [25, 33, 50, 67, 75, 90, 100, 110, 125, 150, 175, 200, 300, 400];

/// How the picture is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// As large as the space allows, whole, aspect kept.
    #[default]
    Fit,
    /// One client pixel to one screen pixel, with scroll bars when larger than the space.
    Actual,
    /// A zoom step (percent), with scroll bars when larger than the space.
    Zoom,
}

/// What the window remembers of the viewer (`[view]` in `operator.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ViewSettings {
    pub mode: Mode,
    /// The zoom in percent for [`Mode::Zoom`] (one of [`ZOOM_STEPS`]; others are taken to
    /// the nearest).
    pub zoom: u16,
    /// Whether the side panel (chat, files) is shown.
    pub panel: bool,
}

impl Default for ViewSettings {
    fn default() -> Self {
        Self {
            mode: Mode::Fit,
            zoom: 100,
            panel: true,
        }
    }
}

/// The viewer's state in a running window.
#[derive(Debug, Clone, PartialEq)]
pub struct Viewer {
    pub mode: Mode,
    /// Index into [`ZOOM_STEPS`].
    step: usize,
    pub panel: bool,
    pub fullscreen: bool,
}

impl Viewer {
    pub fn new(settings: ViewSettings) -> Self {
        let step = ZOOM_STEPS
            .iter()
            .enumerate()
            .min_by_key(|(_, z)| z.abs_diff(settings.zoom))
            .map(|(i, _)| i)
            .unwrap_or(6);
        Self {
            mode: settings.mode,
            step,
            panel: settings.panel,
            fullscreen: false,
        }
    }

    /// What is remembered.
    pub fn settings(&self) -> ViewSettings {
        ViewSettings {
            mode: self.mode,
            zoom: self.zoom(),
            panel: self.panel,
        }
    }

    /// The zoom step in percent.
    pub fn zoom(&self) -> u16 {
        ZOOM_STEPS[self.step]
    }

    /// One step larger (from fit or actual size, the step above the current scale).
    pub fn zoom_in(&mut self, current_percent: f32) {
        self.step = match self.mode {
            Mode::Zoom => (self.step + 1).min(ZOOM_STEPS.len() - 1),
            _ => ZOOM_STEPS
                .iter()
                .position(|z| f32::from(*z) > current_percent + 0.5)
                .unwrap_or(ZOOM_STEPS.len() - 1),
        };
        self.mode = Mode::Zoom;
    }

    /// One step smaller (from fit or actual size, the step below the current scale).
    pub fn zoom_out(&mut self, current_percent: f32) {
        self.step = match self.mode {
            Mode::Zoom => self.step.saturating_sub(1),
            _ => ZOOM_STEPS
                .iter()
                .rposition(|z| f32::from(*z) < current_percent - 0.5)
                .unwrap_or(0),
        };
        self.mode = Mode::Zoom;
    }

    /// Points per client pixel for a picture of `picture` pixels in `space` points, with
    /// `pixels_per_point` screen pixels per point: fit scales to the space, actual size is
    /// one screen pixel per client pixel, a zoom step that many screen pixels per hundred.
    pub fn scale(&self, picture: (f32, f32), space: egui::Vec2, pixels_per_point: f32) -> f32 {
        let ppp = if pixels_per_point > 0.0 { pixels_per_point } else { 1.0 };
        match self.mode {
            Mode::Fit => (space.x / picture.0).min(space.y / picture.1).max(0.01),
            Mode::Actual => 1.0 / ppp,
            Mode::Zoom => f32::from(self.zoom()) / 100.0 / ppp,
        }
    }

    /// Whether the picture may be larger than the space (scroll bars).
    pub fn scrolls(&self) -> bool {
        self.mode != Mode::Fit
    }
}

/// The client's pixel under `pointer` for a picture drawn at `origin` (its top-left corner,
/// which may be outside the visible space when scrolled) at `scale` points per pixel; `None`
/// outside the picture. Rounds down, so every point inside a pixel's square maps to it.
pub fn to_remote(pointer: egui::Pos2, origin: egui::Pos2, scale: f32, picture: (usize, usize)) -> Option<(i32, i32)> {
    if scale <= 0.0 {
        return None;
    }
    let x = ((pointer.x - origin.x) / scale).floor();
    let y = ((pointer.y - origin.y) / scale).floor();
    let inside = x >= 0.0 && y >= 0.0 && x < picture.0 as f32 && y < picture.1 as f32;
    inside.then_some((x as i32, y as i32))
}

/// The input contract's name for keys that do not produce text.
pub fn special_key_name(key: egui::Key) -> Option<&'static str> {
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

/// The name a key has in a combination: its special name, or its character in lower case
/// (`c` for Ctrl+C, `-` for Ctrl+Minus).
fn combo_key_name(key: egui::Key) -> Option<String> {
    if let Some(name) = special_key_name(key) {
        return Some(name.to_string());
    }
    let symbol = key.symbol_or_name();
    let mut chars = symbol.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if !c.is_control() => Some(c.to_lowercase().collect()),
        _ => None,
    }
}

/// Presses the modifiers, presses and releases `key`, releases the modifiers in reverse.
pub fn combo(modifiers: &[&str], key: &str) -> Vec<Command> {
    let press = |k: &str, down: bool| Command::Key {
        key: k.to_string(),
        down: Some(down),
    };
    let mut out: Vec<Command> = modifiers.iter().map(|m| press(m, true)).collect();
    out.push(press(key, true));
    out.push(press(key, false));
    out.extend(modifiers.iter().rev().map(|m| press(m, false)));
    out
}

/// Ctrl+Alt+Del, from the window's button (the window's own keyboard never sends it: the
/// operator's system takes it first).
pub fn ctrl_alt_del() -> Vec<Command> {
    combo(&["Control", "Alt"], "Delete")
}

/// What a key event over the picture sends, and whether it was a combination (whose text,
/// if the system also reports any, is not typed again).
///
/// With Ctrl or Alt held (Ctrl+C, Ctrl+V, Alt+F4, Ctrl+Shift+Esc), and Shift with a key
/// that types nothing (Shift+Tab, Shift+ArrowLeft), the key goes as a whole combination when
/// pressed, modifiers first; its release sends nothing more. Plain special keys go down and
/// up as they happen; keys that type text arrive as text instead.
pub fn key_input(key: egui::Key, pressed: bool, modifiers: egui::Modifiers) -> (Vec<Command>, bool) {
    let command = modifiers.ctrl || modifiers.command || modifiers.alt;
    let special = special_key_name(key);
    if command || (modifiers.shift && special.is_some()) {
        if !pressed {
            return (Vec::new(), true);
        }
        let Some(name) = combo_key_name(key) else {
            return (Vec::new(), false);
        };
        let mut held = Vec::new();
        if modifiers.ctrl || modifiers.command {
            held.push("Control");
        }
        if modifiers.alt {
            held.push("Alt");
        }
        if modifiers.shift {
            held.push("Shift");
        }
        return (combo(&held, &name), true);
    }
    match special {
        Some(name) => (
            vec![Command::Key {
                key: name.to_string(),
                down: Some(pressed),
            }],
            false,
        ),
        None => (Vec::new(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(commands: &[Command]) -> Vec<(String, bool)> {
        commands
            .iter()
            .map(|c| match c {
                Command::Key { key, down } => (key.clone(), down.unwrap()),
                other => panic!("not a key: {other:?}"),
            })
            .collect()
    }

    fn k(list: &[(&str, bool)]) -> Vec<(String, bool)> {
        list.iter().map(|(n, d)| (n.to_string(), *d)).collect()
    }

    #[test]
    fn every_point_of_a_zoomed_pixel_maps_back_to_it() {
        let origin = egui::pos2(-300.0, 40.0);
        for percent in ZOOM_STEPS {
            let mut v = Viewer::new(ViewSettings::default());
            v.mode = Mode::Zoom;
            v.step = ZOOM_STEPS.iter().position(|z| *z == percent).unwrap();
            let scale = v.scale((1920.0, 1080.0), egui::vec2(800.0, 600.0), 1.0);
            for (px, py) in [(0, 0), (1, 1), (959, 540), (1919, 1079)] {
                // The middle of the pixel's square, and just inside its far corner.
                for frac in [0.5, 0.999] {
                    let p = egui::pos2(
                        origin.x + (px as f32 + frac) * scale,
                        origin.y + (py as f32 + frac) * scale,
                    );
                    assert_eq!(
                        to_remote(p, origin, scale, (1920, 1080)),
                        Some((px, py)),
                        "{percent}% pixel ({px},{py})"
                    );
                }
            }
        }
    }

    #[test]
    fn actual_size_is_one_screen_pixel_per_client_pixel() {
        let v = Viewer::new(ViewSettings {
            mode: Mode::Actual,
            ..Default::default()
        });
        assert_eq!(v.scale((1920.0, 1080.0), egui::vec2(800.0, 600.0), 1.0), 1.0);
        // On a display with two pixels per point, a client pixel is half a point.
        assert_eq!(v.scale((1920.0, 1080.0), egui::vec2(800.0, 600.0), 2.0), 0.5);
        let origin = egui::pos2(10.0, 20.0);
        assert_eq!(
            to_remote(egui::pos2(10.0, 20.0), origin, 1.0, (1920, 1080)),
            Some((0, 0))
        );
        assert_eq!(to_remote(egui::pos2(9.9, 20.0), origin, 1.0, (1920, 1080)), None);
        assert_eq!(to_remote(egui::pos2(1930.0, 20.0), origin, 1.0, (1920, 1080)), None);
    }

    #[test]
    fn fit_keeps_the_whole_picture_and_its_shape() {
        let v = Viewer::new(ViewSettings::default());
        let s = v.scale((1920.0, 1080.0), egui::vec2(1280.0, 900.0), 1.0);
        assert!((s - 1280.0 / 1920.0).abs() < 1e-6);
        assert!(!v.scrolls());
    }

    #[test]
    fn zoom_steps_from_fit_go_to_the_next_step_either_way() {
        let mut v = Viewer::new(ViewSettings::default());
        v.zoom_in(46.0);
        assert_eq!((v.mode, v.zoom()), (Mode::Zoom, 50));
        v.zoom_in(50.0);
        assert_eq!(v.zoom(), 67);
        let mut v = Viewer::new(ViewSettings::default());
        v.zoom_out(46.0);
        assert_eq!(v.zoom(), 33);
        for _ in 0..20 {
            v.zoom_out(0.0);
        }
        assert_eq!(v.zoom(), 25);
        for _ in 0..20 {
            v.zoom_in(0.0);
        }
        assert_eq!(v.zoom(), 400);
        // A remembered zoom that is no step is taken to the nearest.
        assert_eq!(
            Viewer::new(ViewSettings {
                mode: Mode::Zoom,
                zoom: 140,
                panel: false
            })
            .zoom(),
            150
        );
    }

    #[test]
    fn ctrl_c_and_ctrl_v_reach_the_client_as_combinations() {
        let ctrl = egui::Modifiers::CTRL;
        let (sent, combo) = key_input(egui::Key::C, true, ctrl);
        assert!(combo);
        assert_eq!(
            keys(&sent),
            k(&[("Control", true), ("c", true), ("c", false), ("Control", false)])
        );
        assert_eq!(keys(&key_input(egui::Key::V, true, ctrl).0)[1], ("v".to_string(), true));
        // The release sends nothing more.
        assert_eq!(key_input(egui::Key::C, false, ctrl), (Vec::new(), true));
        let (sent, _) = key_input(egui::Key::F4, true, egui::Modifiers::ALT);
        assert_eq!(
            keys(&sent),
            k(&[("Alt", true), ("F4", true), ("F4", false), ("Alt", false)])
        );
        let (sent, _) = key_input(egui::Key::Tab, true, egui::Modifiers::SHIFT);
        assert_eq!(
            keys(&sent),
            k(&[("Shift", true), ("Tab", true), ("Tab", false), ("Shift", false)])
        );
    }

    #[test]
    fn plain_keys_go_down_and_up_and_letters_come_as_text() {
        let none = egui::Modifiers::NONE;
        assert_eq!(keys(&key_input(egui::Key::Enter, true, none).0), k(&[("Enter", true)]));
        assert_eq!(
            keys(&key_input(egui::Key::Enter, false, none).0),
            k(&[("Enter", false)])
        );
        assert_eq!(key_input(egui::Key::A, true, none), (Vec::new(), false));
        assert_eq!(
            key_input(egui::Key::A, true, egui::Modifiers::SHIFT),
            (Vec::new(), false)
        );
    }

    #[test]
    fn ctrl_alt_del_presses_and_releases_in_order() {
        assert_eq!(
            keys(&ctrl_alt_del()),
            k(&[
                ("Control", true),
                ("Alt", true),
                ("Delete", true),
                ("Delete", false),
                ("Alt", false),
                ("Control", false)
            ])
        );
    }

    #[test]
    fn view_settings_read_back_from_toml() {
        let s = ViewSettings {
            mode: Mode::Zoom,
            zoom: 150,
            panel: false,
        };
        let text = toml::to_string(&s).unwrap();
        assert_eq!(toml::from_str::<ViewSettings>(&text).unwrap(), s);
        assert!(toml::from_str::<ViewSettings>("mode = \"huge\"").is_err());
    }
}
