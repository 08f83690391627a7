//! What the window tests (client, operator, files, the download page) share: a widget's
//! rectangle from a window's `gui` report, a click on it, and whether a screenshot shows it
//! drawn.

use std::time::Duration;

use serde_json::Value;

use super::xvfb::Xvfb;
use super::App;

/// A widget's rectangle on the X screen.
pub fn rect_of(report: &Value, origin: (i64, i64), widget: &str) -> (i64, i64, i64, i64) {
    let r = &report["widgets"][widget];
    let v: Vec<i64> = r
        .as_array()
        .unwrap_or_else(|| panic!("no widget {widget} in {report}"))
        .iter()
        .map(|n| n.as_i64().unwrap())
        .collect();
    (origin.0 + v[0], origin.1 + v[1], v[2], v[3])
}

/// Clicks the middle of `rect`, as a user would.
pub fn click(xvfb: &Xvfb, rect: (i64, i64, i64, i64)) {
    let (x, y) = (rect.0 + rect.2 / 2, rect.1 + rect.3 / 2);
    xvfb.xdotool(&["mousemove", &x.to_string(), &y.to_string()]);
    // egui reacts to a press and release on the same widget, a frame apart at most.
    std::thread::sleep(Duration::from_millis(150));
    xvfb.xdotool(&["click", "1"]);
}

/// Clicks `rect` until `app` reports `event` (matching `pred`): a click the window missed
/// (it arrived while the window was busy laying out) is clicked again, as a user would, up
/// to three times; then waits as [`App::expect_where`] does.
pub fn click_until(
    xvfb: &Xvfb,
    rect: (i64, i64, i64, i64),
    app: &mut App,
    event: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..3 {
        click(xvfb, rect);
        if let Some(v) = app.expect_within(event, Duration::from_secs(3), &pred) {
            return v;
        }
    }
    app.expect_where(event, pred)
}

/// Share of pixels in `rect` that differ clearly from the rectangle's most common colour:
/// text and borders ("ink"). A blank rectangle has none.
pub fn ink(shot: &image::RgbImage, rect: (i64, i64, i64, i64)) -> f64 {
    let mut counts = std::collections::HashMap::new();
    let mut pixels = Vec::new();
    for y in rect.1.max(0)..(rect.1 + rect.3).min(shot.height() as i64) {
        for x in rect.0.max(0)..(rect.0 + rect.2).min(shot.width() as i64) {
            let p = shot.get_pixel(x as u32, y as u32).0;
            *counts.entry(p).or_insert(0u32) += 1;
            pixels.push(p);
        }
    }
    let Some((&bg, _)) = counts.iter().max_by_key(|(_, n)| **n) else {
        return 0.0;
    };
    let far = pixels
        .iter()
        .filter(|p| {
            p.iter()
                .zip(bg.iter())
                .map(|(a, b)| (*a as i32 - *b as i32).abs())
                .sum::<i32>()
                > 120
        })
        .count();
    far as f64 / pixels.len().max(1) as f64
}

/// Asserts that each of `widgets` is drawn (has ink) on `shot`.
pub fn assert_drawn(shot: &image::RgbImage, report: &Value, origin: (i64, i64), widgets: &[&str], what: &str) {
    for w in widgets {
        let r = rect_of(report, origin, w);
        let share = ink(shot, r);
        assert!(share > 0.01, "{what}: widget {w} at {r:?} looks blank ({share:.4} ink)");
    }
}
