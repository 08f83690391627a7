//! The client on a real X11 desktop: each test starts its own Xvfb (1920x1080), paints it
//! from a second X connection, and runs the real relay, operator and client binaries with
//! `--screen x11 --input system`. What is checked is what the operator sees (the decoded
//! picture) and what the client's user sees (where the real pointer is).

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::xvfb::{Desk, Xvfb};
use support::*;

const OP_PASSWORD: &str = "Help-desk-2026";

/// The operator and a desktop client in an active session with all permissions.
struct Setup {
    // Field order is drop order: the apps go before the relay and the X server.
    op: App,
    client: App,
    desk: Desk,
    _relay: RelayProcess,
    _xvfb: Xvfb,
}

fn session(extra: &[&str]) -> Setup {
    session_with(&["--screen", "x11", "--input", "system"], extra)
}

/// [`session`] with `mode` (the screen and input flags, or none for the defaults).
fn session_with(mode: &[&str], extra: &[&str]) -> Setup {
    let xvfb = Xvfb::start(1920, 1080);
    let desk = Desk::open(&xvfb);
    let relay = RelayProcess::start("", 1);
    let out = relay.add_operator("alice", OP_PASSWORD);
    assert!(
        out.status.success(),
        "operator add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut op = relay.operator("alice", OP_PASSWORD);
    let code = op.code();
    let args = ["--headless", "--host-name", "desk"];
    let mut cmd = xvfb.app("tsunagu-client", &relay, &args);
    cmd.args(mode).args(extra).arg(&code);
    let mut client = App::spawn("client", cmd);
    client.expect("consent_request");
    client.send(json!({"cmd": "consent", "grant": ["view", "control", "chat"]}));
    op.expect("consent");
    client.expect("connected");
    Setup {
        op,
        client,
        desk,
        _relay: relay,
        _xvfb: xvfb,
    }
}

/// The decoded colour at (`x`, `y`) on the operator's side.
fn sample(op: &mut App, x: u32, y: u32) -> (i64, i64, i64) {
    op.send(json!({"cmd": "sample", "x": x, "y": y}));
    let px = op.expect("pixel");
    (
        px["r"].as_i64().unwrap(),
        px["g"].as_i64().unwrap(),
        px["b"].as_i64().unwrap(),
    )
}

fn close(a: (i64, i64, i64), b: (i64, i64, i64)) -> bool {
    // Lossy H.264 plus two colour conversions: 40 per channel is ample for flat colours.
    (a.0 - b.0).abs() <= 40 && (a.1 - b.1).abs() <= 40 && (a.2 - b.2).abs() <= 40
}

/// Waits (bounded by WAIT) until the operator's picture at (`x`, `y`) is `want`, taking
/// frames meanwhile; returns the colour last seen.
fn wait_for_colour(op: &mut App, x: u32, y: u32, want: (i64, i64, i64)) -> (i64, i64, i64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = sample(op, x, y);
        if close(got, want) || Instant::now() > deadline {
            return got;
        }
        op.drain_for(Duration::from_millis(100));
    }
}

#[test]
fn the_operator_sees_the_real_1080p_screen_change() {
    let mut s = session(&[]);
    // An orange left half and a teal right half.
    s.desk.fill(0xff8000, 0, 0, 960, 1080);
    s.desk.fill(0x008080, 960, 0, 960, 1080);

    let first = s.op.expect("frame");
    assert_eq!(first["keyframe"], true, "the stream starts with a keyframe");
    assert_eq!(
        (first["width"].as_u64(), first["height"].as_u64()),
        (Some(1920), Some(1080))
    );
    let got = wait_for_colour(&mut s.op, 480, 540, (255, 128, 0));
    assert!(close(got, (255, 128, 0)), "left half should be orange, got {got:?}");
    let got = wait_for_colour(&mut s.op, 1440, 540, (0, 128, 128));
    assert!(close(got, (0, 128, 128)), "right half should be teal, got {got:?}");

    // The screen changes: the operator's picture follows.
    s.desk.fill(0x2040ff, 0, 0, 960, 1080);
    let got = wait_for_colour(&mut s.op, 480, 540, (32, 64, 255));
    assert!(
        close(got, (32, 64, 255)),
        "left half should have turned blue, got {got:?}"
    );
    let later =
        s.op.seen
            .iter()
            .filter(|v| v["event"] == "frame" && v["seq"].as_u64() > first["seq"].as_u64())
            .count();
    assert!(later >= 1, "the change came as a new frame");

    // A still screen sends nothing: once the change has gone out, no frame follows.
    s.op.drain_for(Duration::from_millis(500));
    let idle: Vec<_> =
        s.op.drain_for(Duration::from_millis(1500))
            .into_iter()
            .filter(|v| v["event"] == "frame")
            .collect();
    assert!(idle.is_empty(), "frames sent for an unchanged screen: {idle:?}");

    // The operator asks for a keyframe: it comes although nothing changed.
    s.op.send(json!({"cmd": "request_keyframe"}));
    let kf = s.op.expect("frame");
    assert_eq!(kf["keyframe"], true);

    s.op.send(json!({"cmd": "end"}));
    assert_eq!(s.client.expect("ended")["reason"], "operator_ended");
    assert_eq!(s.client.wait(), 0);
}

/// Waits (bounded by WAIT) until the real pointer is at `want`; returns where it is.
fn wait_for_pointer(desk: &Desk, want: (i32, i32)) -> (i32, i32) {
    let deadline = Instant::now() + WAIT;
    loop {
        let at = desk.pointer();
        if at == want || Instant::now() > deadline {
            return at;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn moving_the_real_mouse_pauses_the_operator_until_it_rests() {
    let mut s = session(&["--takeover-resume-ms", "1500"]);

    // Operator input moves the real pointer, and the client's own injections never pause.
    for i in 0..10 {
        let (x, y) = (100 + i * 37, 100 + i * 23);
        s.op.send(json!({"cmd": "mouse_move", "x": x, "y": y}));
        assert_eq!(
            wait_for_pointer(&s.desk, (x, y)),
            (x, y),
            "operator input moves the pointer"
        );
    }
    // Input the client cannot apply is refused and counted, and the session goes on.
    s.op.send(json!({"cmd": "mouse_move", "x": 5000, "y": 5000}));
    let refused = s.client.expect("input_refused");
    assert_eq!(refused["refused"], 1);
    s.op.send(json!({"cmd": "key", "key": "Hyperdrive"}));
    assert_eq!(s.client.expect("input_refused")["refused"], 2);
    assert!(
        !s.client.seen.iter().any(|v| v["event"] == "paused"),
        "injected movement must not count as the user's: {:?}",
        s.client.seen
    );

    // The local user takes the mouse (XTest from another X connection).
    s.desk.user_moves_pointer(800, 600);
    s.client.expect("paused");
    s.op.expect("paused");

    // Operator input during the pause is not applied.
    s.op.send(json!({"cmd": "mouse_move", "x": 50, "y": 50}));
    s.op.send(json!({"cmd": "chat", "text": "after the move"}));
    s.client.expect_where("chat", |v| v["text"] == "after the move");
    assert_eq!(s.desk.pointer(), (800, 600), "the pointer stays where the user put it");

    // The user lets go; control returns after the delay.
    s.client.expect("resumed");
    s.op.expect("resumed");
    s.op.send(json!({"cmd": "mouse_move", "x": 321, "y": 123}));
    assert_eq!(
        wait_for_pointer(&s.desk, (321, 123)),
        (321, 123),
        "operator input applies again"
    );
    let pauses = s.client.seen.iter().filter(|v| v["event"] == "paused").count();
    assert_eq!(pauses, 1, "one pause for one takeover");

    s.client.send(json!({"cmd": "end"}));
    assert_eq!(s.op.expect("ended")["reason"], "client_ended");
    assert_eq!(s.client.wait(), 0);
}

/// A customer types no flags: with a display, the client shares the real desktop and applies
/// the operator's input to it.
#[test]
fn without_flags_the_client_shares_the_real_desktop_and_takes_input() {
    let mut s = session_with(&[], &[]);
    s.desk.fill(0xff8000, 0, 0, 1920, 1080);
    let first = s.op.expect("frame");
    assert_eq!(
        (first["width"].as_u64(), first["height"].as_u64()),
        (Some(1920), Some(1080)),
        "the real 1080p desktop, not the 640x360 test picture"
    );
    let got = wait_for_colour(&mut s.op, 960, 540, (255, 128, 0));
    assert!(close(got, (255, 128, 0)), "the desktop's own colour, got {got:?}");
    s.op.send(json!({"cmd": "mouse_move", "x": 700, "y": 400}));
    assert_eq!(
        wait_for_pointer(&s.desk, (700, 400)),
        (700, 400),
        "input reaches the desktop"
    );
    assert!(
        !s.client.seen.iter().any(|v| v["event"] == "input"),
        "input is applied, not logged"
    );
    s.op.send(json!({"cmd": "end"}));
    assert_eq!(s.client.expect("ended")["reason"], "operator_ended");
}

/// Without a display and without flags, the client says what is missing instead of quietly
/// sharing a test picture.
#[test]
fn without_a_display_the_client_explains_instead_of_faking_a_screen() {
    let relay = RelayProcess::start("", 1);
    let mut cmd = std::process::Command::new(bin("tsunagu-client"));
    cmd.args(["--relay", &relay.spec(), "--headless", "12345678"])
        .arg("--ca")
        .arg(relay.ca())
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY");
    let mut client = App::spawn("client", cmd);
    let err = client.expect("error");
    assert_eq!(err["code"], "no_screen", "{err}");
    let message = err["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("DISPLAY") && message.contains("--screen synthetic"),
        "the message says what to do: {message}"
    );
    assert_eq!(client.wait(), 2);
}

/// Tests start their X servers in parallel. Eight started at the same moment, all trying
/// the same display numbers in the same order, each get a server of their own: none is
/// handed the server another one won the number with (its test would lose its desktop
/// when the other test ends). Stopped, each leaves no lock file or socket behind.
#[test]
fn x_servers_started_at_once_on_the_same_numbers_each_get_their_own() {
    let seed = std::process::id().wrapping_mul(2_654_435_761);
    let start = std::sync::Barrier::new(8);
    let servers: Vec<Xvfb> = std::thread::scope(|s| {
        let started: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    Xvfb::start_from(64, 64, seed)
                })
            })
            .collect();
        started.into_iter().map(|t| t.join().expect("Xvfb starts")).collect()
    });
    let mut displays: Vec<&str> = servers.iter().map(|x| x.display.as_str()).collect();
    displays.sort();
    displays.dedup();
    assert_eq!(displays.len(), 8, "one server each: {displays:?}");
    let files: Vec<String> = servers
        .iter()
        .flat_map(|x| {
            let n = &x.display[1..];
            [format!("/tmp/.X{n}-lock"), format!("/tmp/.X11-unix/X{n}")]
        })
        .collect();
    drop(servers);
    for f in &files {
        assert!(
            !std::path::Path::new(f).exists(),
            "{f} is removed when its server stops"
        );
    }
}
