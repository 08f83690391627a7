//! The client window on its own Xvfb: the code window, the consent screen and the session
//! bar render with their widgets (checked on `import -window root` screenshots, at the
//! rectangles the window reports with `TSUNAGU_GUI_REPORT=1`), and typing a code and
//! pressing Connect starts a session the operator sees. Screenshots are kept in
//! `target/tmp/client-gui/` for people to look at.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::gui::{assert_drawn, click, ink, rect_of};
use support::xvfb::Xvfb;
use support::*;

const OP_PASSWORD: &str = "Help-desk-2026";

fn shots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("client-gui");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The next `gui` report for `screen` that has every widget in `widgets`.
fn expect_screen(gui: &mut App, screen: &str, widgets: &[&str]) -> Value {
    gui.expect_where("gui", |v| {
        v["screen"] == screen && widgets.iter().all(|w| v["widgets"][*w].is_array())
    })
}

/// Gives the window the keyboard focus, as a window manager would on a click (Xvfb runs
/// without one).
fn focus(xvfb: &Xvfb) {
    let id = client_window(xvfb).expect("the client window exists");
    xvfb.xdotool(&["windowfocus", "--sync", &id]);
}

/// The client's window id, once it is visible.
fn client_window(xvfb: &Xvfb) -> Option<String> {
    let out = xvfb
        .command("xdotool")
        .args(["search", "--onlyvisible", "--class", "tsunagu-client"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().last().map(str::to_string)
}

/// The window's top-left corner on the X screen (from xdotool, the X server's view).
fn window_origin(xvfb: &Xvfb) -> (i64, i64) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(id) = client_window(xvfb) {
            let geo = xvfb.xdotool(&["getwindowgeometry", "--shell", &id]);
            let get = |k: &str| {
                geo.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .and_then(|v| v.trim().parse::<i64>().ok())
            };
            if let (Some(x), Some(y)) = (get("X="), get("Y=")) {
                return (x, y);
            }
        }
        assert!(Instant::now() < deadline, "the client window did not appear");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn screenshot(xvfb: &Xvfb, name: &str) -> image::RgbImage {
    // Give the window a few frames to paint what it reported.
    std::thread::sleep(Duration::from_millis(400));
    let path = xvfb.screenshot(&shots_dir().join(name));
    image::open(&path).expect("a PNG").to_rgb8()
}

#[test]
fn typing_a_code_and_pressing_connect_starts_a_session() {
    let xvfb = Xvfb::start(1280, 800);
    let relay = RelayProcess::start("", 1);
    let out = relay.add_operator("alice", OP_PASSWORD);
    assert!(out.status.success());
    let mut op = relay.operator("alice", OP_PASSWORD);
    let code = op.code();

    let args = ["--host-name", "gui-desk", "--screen", "synthetic", "--input", "log"];
    let mut cmd = xvfb.app("tsunagu-client", &relay, &args);
    cmd.env("TSUNAGU_GUI_REPORT", "1")
        .env("LANG", "ja_JP.UTF-8")
        .env_remove("LC_ALL")
        .env_remove("LC_MESSAGES");
    let mut gui = App::spawn("gui", cmd);

    // The code window, in Japanese (the locale), with its field and button.
    let report = expect_screen(&mut gui, "code", &["code_field", "connect", "prompt", "language"]);
    assert_eq!(report["lang"], "ja");
    let origin = window_origin(&xvfb);
    let shot = screenshot(&xvfb, "1-code.png");
    assert_drawn(
        &shot,
        &report,
        origin,
        &["prompt", "code_field", "connect", "language"],
        "code window",
    );

    // The user types the code as it was read out, with a dash: only the digits stay.
    focus(&xvfb);
    click(&xvfb, rect_of(&report, origin, "code_field"));
    let typed = format!("{}-{}", &code[..4], &code[4..]);
    xvfb.xdotool(&["type", "--delay", "60", &typed]);
    let report = gui.expect_where("gui", |v| v["screen"] == "code" && v["digits"] == 8);
    let shot = screenshot(&xvfb, "2-code-typed.png");
    assert_drawn(&shot, &report, origin, &["code_field", "connect"], "typed code");
    click(&xvfb, rect_of(&report, origin, "connect"));

    // The consent screen names the operator and each permission; Deny and Allow.
    let req = gui.expect("consent_request");
    assert_eq!(req["operator"], "alice");
    let widgets = [
        "operator",
        "perm_view",
        "perm_control",
        "perm_files",
        "perm_chat",
        "allow",
        "deny",
        "countdown",
    ];
    let report = expect_screen(&mut gui, "consent", &widgets);
    let shot = screenshot(&xvfb, "3-consent.png");
    assert_drawn(&shot, &report, origin, &widgets, "consent screen");
    assert!(op.expect("peer_joined")["host"] == "gui-desk");

    // Untick files, then Allow: the operator gets exactly what was left ticked.
    click(&xvfb, rect_of(&report, origin, "perm_files"));
    std::thread::sleep(Duration::from_millis(300));
    click(&xvfb, rect_of(&report, origin, "allow"));
    assert_eq!(
        op.expect("consent")["granted"],
        json!(["view", "control", "chat", "clipboard"])
    );
    gui.expect("connected");

    // The session bar: who, Pause control, View only, Chat only, End.
    let bar = ["operator", "pause", "view_only", "chat_only", "end"];
    let report = expect_screen(&mut gui, "session", &bar);
    let origin = window_origin(&xvfb);
    let shot = screenshot(&xvfb, "4-session-bar.png");
    assert_drawn(&shot, &report, origin, &bar, "session bar");
    op.expect("frame");

    // View only from the bar reaches the relay at once.
    click(&xvfb, rect_of(&report, origin, "view_only"));
    op.expect_where("state", |v| v["view_only"] == true);

    // English on request: the same bar, other words.
    click(&xvfb, rect_of(&report, origin, "language"));
    let report = gui.expect_where("gui", |v| {
        v["screen"] == "session" && v["lang"] == "en" && v["widgets"]["end"].is_array()
    });
    screenshot(&xvfb, "5-session-bar-en.png");

    // End from the bar ends the session for the operator.
    click(&xvfb, rect_of(&report, origin, "end"));
    assert_eq!(op.expect("ended")["reason"], "client_ended");
    let report = expect_screen(&mut gui, "finished", &["message"]);
    let shot = screenshot(&xvfb, "6-finished.png");
    assert_drawn(&shot, &report, window_origin(&xvfb), &["message"], "end message");
}

#[test]
fn a_wrong_code_is_explained_in_the_window() {
    let xvfb = Xvfb::start(1024, 768);
    let relay = RelayProcess::start("", 1);
    let args = ["--lang", "en", "--screen", "synthetic", "--input", "log"];
    let mut cmd = xvfb.app("tsunagu-client", &relay, &args);
    cmd.env("TSUNAGU_GUI_REPORT", "1");
    let mut gui = App::spawn("gui", cmd);
    let report = expect_screen(&mut gui, "code", &["code_field", "connect"]);
    assert_eq!(report["lang"], "en");
    let origin = window_origin(&xvfb);
    focus(&xvfb);
    click(&xvfb, rect_of(&report, origin, "code_field"));
    xvfb.xdotool(&["type", "--delay", "60", "1234 5678"]);
    let report = gui.expect_where("gui", |v| v["digits"] == 8);
    click(&xvfb, rect_of(&report, origin, "connect"));
    let err = gui.expect("error");
    assert_eq!(err["code"], "bad_code");
    let report = expect_screen(&mut gui, "code", &["error"]);
    assert!(report["error"].as_str().unwrap().contains("not right"), "{report}");
    let shot = screenshot(&xvfb, "7-wrong-code.png");
    assert_drawn(&shot, &report, origin, &["error"], "error message");
}

/// The client window on the standby relay: the primary's port is closed, the window
/// connects to the standby, and the session bar says the standby is in use.
fn the_client_window_shows_the_standby_relay(lang: &str) {
    let xvfb = Xvfb::start(1280, 800);
    let standby = RelayProcess::start("", 1);
    assert!(standby.add_operator("alice", OP_PASSWORD).status.success());
    let mut op = standby.operator("alice", OP_PASSWORD);
    let code = op.code();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cmd = xvfb.command(bin("tsunagu-client"));
    cmd.args(["--relay", &closed.to_string(), "--standby-relay", &standby.spec()])
        .args(["--health-every", "0.2", "--lang", lang])
        .args(["--host-name", "gui-desk", "--screen", "synthetic", "--input", "log"])
        .arg("--ca")
        .arg(standby.ca())
        .arg(&code)
        .env("TSUNAGU_GUI_REPORT", "1");
    let mut gui = App::spawn("gui", cmd);
    let report = expect_screen(&mut gui, "code", &["connect"]);
    let origin = window_origin(&xvfb);
    click(&xvfb, rect_of(&report, origin, "connect"));
    gui.expect("consent_request");
    let report = expect_screen(&mut gui, "consent", &["allow"]);
    click(&xvfb, rect_of(&report, origin, "allow"));
    gui.expect("connected");
    op.expect("frame");
    gui.seen_or_expect("relay_switched", |e| e["site"] == "secondary");
    let report = gui.seen_or_expect("gui", |v| {
        v["screen"] == "session" && v["widgets"]["connection_banner"].is_array()
    });
    let origin = window_origin(&xvfb);
    let shot = screenshot(&xvfb, &format!("7-standby-{lang}.png"));
    assert_drawn(&shot, &report, origin, &["connection_banner", "end"], "standby banner");
}

#[test]
fn the_client_window_shows_the_standby_relay_in_english() {
    the_client_window_shows_the_standby_relay("en");
}

#[test]
fn the_client_window_shows_the_standby_relay_in_japanese() {
    the_client_window_shows_the_standby_relay("ja");
}

/// Share of pixels in `rect` close to the ticked boxes' blue.
fn blue_share(shot: &image::RgbImage, rect: (i64, i64, i64, i64)) -> f64 {
    let (mut blue, mut all) = (0usize, 0usize);
    for y in rect.1.max(0)..(rect.1 + rect.3).min(shot.height() as i64) {
        for x in rect.0.max(0)..(rect.0 + rect.2).min(shot.width() as i64) {
            let [r, g, b] = shot.get_pixel(x as u32, y as u32).0;
            all += 1;
            if (r as i32 - 30).abs() < 40 && (g as i32 - 110).abs() < 40 && (b as i32 - 200).abs() < 40 {
                blue += 1;
            }
        }
    }
    blue as f64 / all.max(1) as f64
}

/// On the real desktop with real input (as a customer runs it): the tick boxes read ticked
/// or not at a glance; the click on Allow (and the hand drifting after it) starts no
/// takeover pause; the user's own mouse afterwards does, and the operator is told it is the
/// mouse; the Pause button is told as the button.
fn allowing_with_a_click_starts_no_pause(lang: &str) {
    let xvfb = Xvfb::start(1280, 800);
    let relay = RelayProcess::start("", 1);
    assert!(relay.add_operator("alice", OP_PASSWORD).status.success());
    let mut op = relay.operator("alice", OP_PASSWORD);
    let code = op.code();
    let args = [
        "--lang",
        lang,
        "--host-name",
        "gui-desk",
        "--screen",
        "x11",
        "--input",
        "system",
        &code,
    ];
    let mut cmd = xvfb.app("tsunagu-client", &relay, &args);
    cmd.env("TSUNAGU_GUI_REPORT", "1");
    let mut gui = App::spawn("gui", cmd);
    let report = expect_screen(&mut gui, "code", &["connect"]);
    let origin = window_origin(&xvfb);
    click(&xvfb, rect_of(&report, origin, "connect"));
    gui.expect("consent_request");
    let report = expect_screen(&mut gui, "consent", &["allow", "perm_view", "perm_files"]);

    // Untick files: its box turns white with a dark border, the others stay solid blue.
    click(&xvfb, rect_of(&report, origin, "perm_files"));
    let report = gui.expect_where("gui", |v| v["screen"] == "consent" && v["ticked"]["files"] == false);
    // Away from the boxes, so no hover ring is drawn.
    xvfb.xdotool(&["mousemove", "5", "5"]);
    let shot = screenshot(&xvfb, &format!("8-consent-ticks-{lang}.png"));
    for perm in ["perm_view", "perm_control", "perm_chat"] {
        let share = blue_share(&shot, rect_of(&report, origin, perm));
        assert!(
            share > 0.04,
            "{perm} is ticked but its box is not solid blue ({share:.3})"
        );
    }
    let files = rect_of(&report, origin, "perm_files");
    assert!(
        blue_share(&shot, files) < 0.005,
        "files is unticked but looks ticked ({:.3})",
        blue_share(&shot, files)
    );
    assert!(
        ink(&shot, (files.0, files.1, files.3, files.3)) > 0.05,
        "the empty box has a visible border"
    );

    // Allow with a click, the hand drifting on a little after it as hands do.
    let allow = rect_of(&report, origin, "allow");
    let (ax, ay) = (allow.0 + allow.2 / 2, allow.1 + allow.3 / 2);
    click(&xvfb, allow);
    for (dx, dy) in [(4, 2), (9, 5), (15, 9)] {
        xvfb.xdotool(&["mousemove", &(ax + dx).to_string(), &(ay + dy).to_string()]);
    }
    assert_eq!(
        op.expect("consent")["granted"],
        json!(["view", "control", "chat", "clipboard"])
    );
    gui.expect("connected");
    op.expect("frame");
    let quiet = Duration::from_millis(tsunagu_client::takeover::CONSENT_CLICK_SETTLE.as_millis() as u64 + 1500);
    let client_events = gui.drain_for(quiet);
    assert!(
        !client_events.iter().any(|e| e["event"] == "paused"),
        "the click on Allow paused control: {client_events:?}"
    );
    assert!(
        !op.drain_for(Duration::from_millis(200))
            .iter()
            .any(|e| e["event"] == "paused"),
        "the operator was told of a pause after Allow"
    );

    // Later, the user takes the mouse: that pauses, and the operator hears it is the mouse.
    xvfb.xdotool(&["mousemove", "600", "500"]);
    xvfb.xdotool(&["mousemove", "640", "520"]);
    gui.expect("paused");
    op.expect("paused");
    op.expect_where("pause_cause", |v| v["cause"] == "local_input");
    let report = gui.seen_or_expect("gui", |v| v["screen"] == "session" && v["widgets"]["pause"].is_array());
    let origin = window_origin(&xvfb);
    screenshot(&xvfb, &format!("9-paused-by-mouse-{lang}.png"));

    // The Pause button: the operator hears it is the button, even though pressing it moved
    // the mouse too.
    click(&xvfb, rect_of(&report, origin, "pause"));
    op.expect_where("pause_cause", |v| v["cause"] == "button");
    screenshot(&xvfb, &format!("10-paused-by-button-{lang}.png"));
}

#[test]
fn allowing_with_a_click_starts_no_pause_in_english() {
    allowing_with_a_click_starts_no_pause("en");
}

#[test]
fn allowing_with_a_click_starts_no_pause_in_japanese() {
    allowing_with_a_click_starts_no_pause("ja");
}
