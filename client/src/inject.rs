//! Input injection: applies the operator's pointer, button, wheel, key and text events to the
//! real desktop with enigo (XTest on X11).
//!
//! Events arrive in the coordinates of the captured picture; [`SystemInjector`] offsets them
//! by the captured monitor's origin and refuses anything outside the picture or any key name
//! it does not know. A refused event is counted ([`InjectStats`]) and reported to the caller,
//! never a crash: the operator's side is a peer we do not trust to be well-formed.

use enigo::{Axis, Button, Coordinate, Direction, Enigo, Key, Keyboard, Mouse, Settings};
use thiserror::Error;
use tsunagu_proto::pb;

/// Longest text typed in one event; longer text is refused (an operator pasting a novel into
/// the client's machine is a mistake, and XTest types one character at a time).
pub const MAX_TEXT_CHARS: usize = 1024;

/// Largest wheel step count in one event; more is refused as nonsense.
pub const MAX_WHEEL_STEPS: i32 = 100;

/// Why an event was not applied.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum InjectError {
    /// The point is outside the captured screen.
    #[error("({0}, {1}) is outside the screen")]
    OutOfScreen(i32, i32),
    /// A key name we do not know.
    #[error("unknown key {0:?}")]
    UnknownKey(String),
    /// An unknown mouse button, or an event with nothing in it.
    #[error("malformed input event: {0}")]
    Malformed(String),
    /// The system refused the injection.
    #[error("injection failed: {0}")]
    System(String),
}

/// Counts of applied and refused events, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InjectStats {
    /// Events applied.
    pub applied: u64,
    /// Events refused (out of screen, unknown key, malformed, system error).
    pub refused: u64,
}

/// Injects input into the desktop.
pub struct SystemInjector {
    enigo: Enigo,
    origin: (i32, i32),
    size: (i32, i32),
    stats: InjectStats,
}

impl SystemInjector {
    /// Opens the injector on `$DISPLAY` for a captured area at `origin` of `size` pixels.
    pub fn open(origin: (i32, i32), size: (usize, usize)) -> Result<Self, InjectError> {
        // No artificial delay between X events: the operator's own pacing is what counts.
        let settings = Settings {
            linux_delay: 0,
            release_keys_when_dropped: true,
            ..Settings::default()
        };
        let enigo = Enigo::new(&settings).map_err(|e| InjectError::System(e.to_string()))?;
        Ok(Self {
            enigo,
            origin,
            size: (size.0 as i32, size.1 as i32),
            stats: InjectStats::default(),
        })
    }

    /// What was applied and refused so far.
    pub fn stats(&self) -> InjectStats {
        self.stats
    }

    /// Where a pointer move to picture point (`x`, `y`) puts the pointer on the X screen, or
    /// an error if it is outside the picture.
    pub fn screen_point(&self, x: i32, y: i32) -> Result<(i32, i32), InjectError> {
        screen_point(self.origin, self.size, x, y)
    }

    /// Applies one event, counting the result.
    pub fn apply(&mut self, kind: &pb::input_event::Kind) -> Result<(), InjectError> {
        let result = self.apply_inner(kind);
        match result {
            Ok(()) => self.stats.applied += 1,
            Err(_) => self.stats.refused += 1,
        }
        result
    }

    fn apply_inner(&mut self, kind: &pb::input_event::Kind) -> Result<(), InjectError> {
        use pb::input_event::Kind;
        let sys = |e: enigo::InputError| InjectError::System(e.to_string());
        match kind {
            Kind::MouseMove(m) => {
                let (x, y) = self.screen_point(m.x, m.y)?;
                self.enigo.move_mouse(x, y, Coordinate::Abs).map_err(sys)
            }
            Kind::MouseButton(b) => {
                let button = match pb::MouseButton::try_from(b.button).unwrap_or(pb::MouseButton::Unspecified) {
                    pb::MouseButton::Left => Button::Left,
                    pb::MouseButton::Right => Button::Right,
                    pb::MouseButton::Middle => Button::Middle,
                    pb::MouseButton::Unspecified => {
                        return Err(InjectError::Malformed(format!("mouse button {}", b.button)))
                    }
                };
                self.enigo
                    .button(button, if b.down { Direction::Press } else { Direction::Release })
                    .map_err(sys)
            }
            Kind::Wheel(w) => {
                check_wheel(w.dx, w.dy)?;
                if w.dy != 0 {
                    self.enigo.scroll(w.dy, Axis::Vertical).map_err(sys)?;
                }
                if w.dx != 0 {
                    self.enigo.scroll(w.dx, Axis::Horizontal).map_err(sys)?;
                }
                Ok(())
            }
            Kind::Key(k) => {
                let key = key_from_name(&k.key).ok_or_else(|| InjectError::UnknownKey(k.key.clone()))?;
                self.enigo
                    .key(key, if k.down { Direction::Press } else { Direction::Release })
                    .map_err(sys)
            }
            Kind::Text(t) => {
                if t.text.chars().count() > MAX_TEXT_CHARS {
                    return Err(InjectError::Malformed(format!(
                        "text longer than {MAX_TEXT_CHARS} characters"
                    )));
                }
                if t.text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
                    return Err(InjectError::Malformed("control characters in text".into()));
                }
                self.enigo.text(&t.text).map_err(sys)
            }
        }
    }
}

/// Maps a picture point to the X screen: `origin + (x, y)` if inside `size` (and if the sum
/// is a point at all: the addition is checked, so no value the operator sends can overflow).
pub fn screen_point(origin: (i32, i32), size: (i32, i32), x: i32, y: i32) -> Result<(i32, i32), InjectError> {
    if x < 0 || y < 0 || x >= size.0 || y >= size.1 {
        return Err(InjectError::OutOfScreen(x, y));
    }
    match (origin.0.checked_add(x), origin.1.checked_add(y)) {
        (Some(sx), Some(sy)) => Ok((sx, sy)),
        _ => Err(InjectError::OutOfScreen(x, y)),
    }
}

/// Checks a wheel event's step counts against [`MAX_WHEEL_STEPS`] in either direction.
/// `unsigned_abs`, because `i32::MIN.abs()` does not exist (it overflows).
pub fn check_wheel(dx: i32, dy: i32) -> Result<(), InjectError> {
    let limit = MAX_WHEEL_STEPS.unsigned_abs();
    if dx.unsigned_abs() > limit || dy.unsigned_abs() > limit {
        return Err(InjectError::Malformed(format!("wheel ({dx}, {dy})")));
    }
    Ok(())
}

/// The key a name stands for: one character is that character; otherwise the names of the
/// web's `KeyboardEvent.key` (`Enter`, `ArrowLeft`, `F5`, ...) and a few common aliases.
pub fn key_from_name(name: &str) -> Option<Key> {
    let mut chars = name.chars();
    if let (Some(c), None) = (chars.next(), chars.clone().next()) {
        if c == ' ' {
            return Some(Key::Space);
        }
        if !c.is_control() {
            return Some(Key::Unicode(c));
        }
        return None;
    }
    let key = match name {
        "Enter" | "Return" => Key::Return,
        "Tab" => Key::Tab,
        "Escape" | "Esc" => Key::Escape,
        "Backspace" => Key::Backspace,
        "Delete" | "Del" => Key::Delete,
        "Insert" => Key::Insert,
        "Space" | "Spacebar" => Key::Space,
        "ArrowLeft" | "Left" => Key::LeftArrow,
        "ArrowRight" | "Right" => Key::RightArrow,
        "ArrowUp" | "Up" => Key::UpArrow,
        "ArrowDown" | "Down" => Key::DownArrow,
        "Home" => Key::Home,
        "End" => Key::End,
        "PageUp" => Key::PageUp,
        "PageDown" => Key::PageDown,
        "Shift" => Key::Shift,
        "Control" | "Ctrl" => Key::Control,
        "Alt" => Key::Alt,
        "Meta" | "Super" | "OS" => Key::Meta,
        "CapsLock" => Key::CapsLock,
        "F1" => Key::F1,
        "F2" => Key::F2,
        "F3" => Key::F3,
        "F4" => Key::F4,
        "F5" => Key::F5,
        "F6" => Key::F6,
        "F7" => Key::F7,
        "F8" => Key::F8,
        "F9" => Key::F9,
        "F10" => Key::F10,
        "F11" => Key::F11,
        "F12" => Key::F12,
        _ => return None,
    };
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_outside_the_picture_are_refused() {
        assert_eq!(screen_point((100, 0), (1920, 1080), 0, 0), Ok((100, 0)));
        assert_eq!(screen_point((100, 0), (1920, 1080), 1919, 1079), Ok((2019, 1079)));
        assert!(screen_point((0, 0), (1920, 1080), 1920, 5).is_err());
        assert!(screen_point((0, 0), (1920, 1080), -1, 5).is_err());
        assert!(screen_point((0, 0), (1920, 1080), 5, i32::MAX).is_err());
    }

    #[test]
    fn extreme_wheel_steps_are_refused_not_overflowed() {
        assert_eq!(check_wheel(0, 0), Ok(()));
        assert_eq!(check_wheel(-MAX_WHEEL_STEPS, MAX_WHEEL_STEPS), Ok(()));
        for (dx, dy) in [
            (i32::MIN, 0),
            (0, i32::MIN),
            (i32::MAX, 0),
            (0, i32::MAX),
            (i32::MIN, i32::MIN),
            (MAX_WHEEL_STEPS + 1, 0),
            (0, -MAX_WHEEL_STEPS - 1),
        ] {
            assert!(
                matches!(check_wheel(dx, dy), Err(InjectError::Malformed(_))),
                "({dx}, {dy})"
            );
        }
    }

    #[test]
    fn extreme_points_never_overflow_the_screen_offset() {
        let origin = (i32::MAX - 10, i32::MAX - 10);
        assert_eq!(screen_point(origin, (100, 100), 10, 10), Ok((i32::MAX, i32::MAX)));
        assert_eq!(
            screen_point(origin, (100, 100), 50, 0),
            Err(InjectError::OutOfScreen(50, 0))
        );
        assert_eq!(
            screen_point(origin, (i32::MAX, i32::MAX), 0, 50),
            Err(InjectError::OutOfScreen(0, 50))
        );
        for (x, y) in [(i32::MIN, 0), (0, i32::MIN), (i32::MAX, i32::MAX)] {
            assert_eq!(
                screen_point((0, 0), (1920, 1080), x, y),
                Err(InjectError::OutOfScreen(x, y))
            );
        }
    }

    #[test]
    fn key_names() {
        assert_eq!(key_from_name("a"), Some(Key::Unicode('a')));
        assert_eq!(key_from_name("あ"), Some(Key::Unicode('あ')));
        assert_eq!(key_from_name("Enter"), Some(Key::Return));
        assert_eq!(key_from_name("ArrowLeft"), Some(Key::LeftArrow));
        assert_eq!(key_from_name("F5"), Some(Key::F5));
        assert_eq!(key_from_name(" "), Some(Key::Space));
        assert_eq!(key_from_name("\u{7}"), None);
        assert_eq!(key_from_name("Hyperdrive"), None);
        assert_eq!(key_from_name(""), None);
    }
}
