//! The operator's viewer under Xvfb, as a technician works in it: a 1920×1080 client screen
//! fitted into the window, the side panel hidden for more room, actual size with scroll
//! bars, a zoom step, every choice remembered for the next start; the pointer lands on the
//! client's pixel under it in every mode; Ctrl+C, Ctrl+V and Ctrl+Alt+Del reach the client;
//! and clipboard text moves both ways between two X displays when the client allows it.
//! Screenshots are kept in target/tmp/viewer-gui/.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::gui::{click, rect_of};
use support::xvfb::Xvfb;
use support::*;

const OP_PASSWORD: &str = "Help-desk-2026";
const CLIENT_SIZE: (i64, i64) = (1920, 1080);

fn shot(x: &Xvfb, name: &str) -> PathBuf {
    // The window reports its layout while it builds a frame; it paints a moment later.
    std::thread::sleep(Duration::from_millis(400));
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("viewer-gui");
    std::fs::create_dir_all(&dir).unwrap();
    x.screenshot(&dir.join(format!("{name}.png")))
}

/// A widget's rectangle on the X screen (the window may not be at the screen's corner
/// under a window manager).
fn widget(report: &Value, name: &str) -> (i64, i64, i64, i64) {
    let window = &report["window"];
    let origin = (window[0].as_i64().unwrap_or(0), window[1].as_i64().unwrap_or(0));
    rect_of(report, origin, name)
}

/// The picture's origin on the X screen and its scale, as the window drew them.
fn placement(report: &Value) -> (f64, f64, f64) {
    let view = &report["view"];
    let origin = view["origin"]
        .as_array()
        .unwrap_or_else(|| panic!("no picture origin in {report}"));
    let window = &report["window"];
    (
        window[0].as_f64().unwrap_or(0.0) + origin[0].as_f64().unwrap(),
        window[1].as_f64().unwrap_or(0.0) + origin[1].as_f64().unwrap(),
        view["scale"].as_f64().unwrap(),
    )
}

/// Moves the operator's pointer to (`px`, `py`) on the window's screen and checks that the
/// client's pointer went to the pixel under it: `floor((p - origin) / scale)`.
fn pointer_lands_exactly(x: &Xvfb, client: &mut App, report: &Value, px: i64, py: i64) {
    let (ox, oy, scale) = placement(report);
    // In f32, as the window computes it (its positions and scale are f32).
    let (ox, oy, scale) = (ox as f32, oy as f32, scale as f32);
    let want = (
        ((px as f32 - ox) / scale).floor() as i64,
        ((py as f32 - oy) / scale).floor() as i64,
    );
    assert!(
        want.0 >= 0 && want.1 >= 0 && want.0 < CLIENT_SIZE.0 && want.1 < CLIENT_SIZE.1,
        "({px},{py}) is not over the picture: {report}"
    );
    eprintln!("pointer at ({px},{py}) over a picture at ({ox},{oy}) × {scale}: expecting {want:?}");
    // From one pixel to the side first, so the move to the point is a change.
    x.xdotool(&["mousemove", &(px - 3).to_string(), &py.to_string()]);
    x.xdotool(&["mousemove", &px.to_string(), &py.to_string()]);
    let moved = client.expect_where("input", |v| {
        v["kind"] == "mouse_move" && v["x"] == want.0 && v["y"] == want.1
    });
    assert_eq!((moved["x"].as_i64(), moved["y"].as_i64()), (Some(want.0), Some(want.1)));
}

/// The window's last report once it has stopped changing for a second (a scroll glides
/// on for a moment after the bar is let go), starting from `latest`.
fn settled(op: &mut App, mut latest: Value) -> Value {
    loop {
        let more: Vec<Value> = op
            .drain_for(Duration::from_secs(1))
            .into_iter()
            .filter(|v| v["event"] == "gui")
            .collect();
        match more.into_iter().last() {
            Some(v) => latest = v,
            None => return latest,
        }
    }
}

/// Waits for the client's input events to show `keys` pressed and released in this order.
fn expect_keys(client: &mut App, keys: &[(&str, bool)]) {
    for (key, down) in keys {
        let got = client.expect_where("input", |v| v["kind"] == "key");
        assert_eq!(
            (got["key"].as_str(), got["down"].as_bool()),
            (Some(*key), Some(*down)),
            "expected {key} {}: {got}",
            if *down { "down" } else { "up" }
        );
    }
}

fn operator_window(x: &Xvfb, relay: &RelayProcess, config: &Path, lang: &str) -> App {
    let mut cmd = x.app(
        "tsunagu-operator",
        relay,
        &["--user", "alice", "--connect", "--events", "--lang", lang],
    );
    cmd.env("TSUNAGU_PASSWORD", OP_PASSWORD).env("XDG_CONFIG_HOME", config);
    App::spawn("operator window", cmd)
}

/// Starts a session: the window's code, a headless client with a synthetic screen of
/// `size` (`WxH`) granting `grant`, and the window's first report of the session with a
/// picture. Few frames a second: the static test picture needs no more, and each 1080p
/// frame costs the unoptimised test build's window a lot of the machine's two cores.
fn session(
    op: &mut App,
    relay: &RelayProcess,
    size: &str,
    grant: &[&str],
    client_display: Option<&Xvfb>,
) -> (App, Value) {
    let code = op.code();
    let args = [
        "--headless",
        "--screen",
        "synthetic",
        "--input",
        "log",
        "--size",
        size,
        "--fps",
        "2",
        "--host-name",
        "help-desk-pc",
        "--relay",
        &relay.spec(),
    ];
    let mut cmd = match client_display {
        Some(d) => d.command(bin("tsunagu-client")),
        None => std::process::Command::new(bin("tsunagu-client")),
    };
    cmd.args(args).arg("--ca").arg(relay.ca()).arg(&code);
    let mut client = App::spawn("client", cmd);
    client.expect("consent_request");
    client.send(json!({"cmd": "consent", "grant": grant}));
    client.expect("connected");
    let (w, h) = size.split_once('x').unwrap();
    let picture = json!([w.parse::<u32>().unwrap(), h.parse::<u32>().unwrap()]);
    let report = op.expect_where("gui", |v| {
        v["screen"] == "session" && v["picture"] == picture && v["widgets"]["screen"].is_array()
    });
    (client, report)
}

#[test]
fn the_viewer_fits_zooms_scrolls_keeps_the_pointer_exact_and_remembers() {
    let x = Xvfb::start(1280, 800);
    let relay = RelayProcess::start("", 1);
    assert!(relay.add_operator("alice", OP_PASSWORD).status.success());
    let config = tempfile::tempdir().unwrap();
    let mut op = operator_window(&x, &relay, config.path(), "en");
    let (mut client, fit) = session(&mut op, &relay, "1920x1080", &["view", "control"], None);

    // Fit: the whole 1920×1080 picture, shape kept, beside the side panel.
    assert_eq!(fit["view"]["mode"], "fit");
    assert_eq!(fit["view"]["panel"], true);
    let screen = widget(&fit, "screen");
    assert!(screen.2 < 1280 && screen.3 < 800, "the whole picture fits: {screen:?}");
    assert!(((screen.2 as f64 / screen.3 as f64) - 16.0 / 9.0).abs() < 0.02);
    assert!(fit["widgets"]["chat_field"].is_array() || fit["widgets"]["send_file"].is_array());
    shot(&x, "1-fit-en");
    pointer_lands_exactly(&x, &mut client, &fit, screen.0 + screen.2 / 3, screen.1 + screen.3 / 2);

    // Hide the panel: the picture gets the room.
    click(&x, widget(&fit, "panel_toggle"));
    let wide = op.expect_where("gui", |v| {
        v["view"]["panel"] == false && v["widgets"]["screen"].is_array()
    });
    let wider = widget(&wide, "screen");
    assert!(
        wider.2 > screen.2 + 100,
        "no panel, a larger picture: {screen:?} → {wider:?}"
    );
    assert!(wide["widgets"]["send_file"].is_null(), "the panel is gone: {wide}");
    shot(&x, "2-no-panel-en");

    // Actual size: one client pixel per screen pixel, the rest behind scroll bars.
    click(&x, widget(&wide, "view_actual"));
    let actual = op.expect_where("gui", |v| {
        v["view"]["mode"] == "actual" && v["view"]["origin"].is_array()
    });
    let actual = settled(&mut op, actual);
    assert_eq!(actual["view"]["scale"].as_f64(), Some(1.0));
    let pic = widget(&actual, "screen");
    assert_eq!((pic.2, pic.3), CLIENT_SIZE, "the picture at its own size");
    let visible = widget(&actual, "viewport");
    assert!(visible.2 < 1280 && visible.3 < 800, "only part is visible: {visible:?}");
    shot(&x, "3-actual-en");
    pointer_lands_exactly(&x, &mut client, &actual, visible.0 + 101, visible.1 + 57);

    // Scroll right with the horizontal bar: the picture moves, the pointer still lands on
    // the client pixel under it.
    let bar_y = visible.1 + visible.3 + 4;
    x.xdotool(&["mousemove", &(visible.0 + 40).to_string(), &bar_y.to_string()]);
    std::thread::sleep(Duration::from_millis(150));
    x.xdotool(&["mousedown", "1"]);
    for step in 1..=6 {
        x.xdotool(&[
            "mousemove",
            &(visible.0 + 40 + step * 60).to_string(),
            &bar_y.to_string(),
        ]);
        std::thread::sleep(Duration::from_millis(50));
    }
    x.xdotool(&["mouseup", "1"]);
    let moving = op.expect_where("gui", |v| {
        v["view"]["mode"] == "actual"
            && v["view"]["origin"][0]
                .as_f64()
                .is_some_and(|ox| ox < (pic.0 - 100) as f64)
    });
    let scrolled = settled(&mut op, moving);
    shot(&x, "4-actual-scrolled-en");
    let visible = widget(&scrolled, "viewport");
    pointer_lands_exactly(&x, &mut client, &scrolled, visible.0 + 200, visible.1 + 300);

    // One zoom step up from actual size: 110 %, and still exact.
    click(&x, widget(&scrolled, "zoom_in"));
    let zoomed = op.expect_where("gui", |v| v["view"]["mode"] == "zoom" && v["view"]["zoom"] == 110);
    let zoomed = settled(&mut op, zoomed);
    assert!((zoomed["view"]["scale"].as_f64().unwrap() - 1.1).abs() < 1e-4);
    let pic = widget(&zoomed, "screen");
    assert!((pic.2 - 2112).abs() <= 1, "1920 × 1.1: {pic:?}");
    let visible = widget(&zoomed, "viewport");
    // Not next to the edges: the floating scroll bars take the pointer there.
    for (dx, dy) in [(13, 17), (251, 333), (visible.2 - 25, visible.3 - 25)] {
        pointer_lands_exactly(&x, &mut client, &zoomed, visible.0 + dx, visible.1 + dy);
    }
    shot(&x, "5-zoom-110-en");

    // Keys with Ctrl reach the client's programs as combinations; so does Ctrl+Alt+Del
    // from its button (the operator's own system would take the real one).
    // Xvfb runs without a window manager here: give the window the keyboard focus as one
    // would on a click.
    let id = x.xdotool(&["search", "--sync", "--onlyvisible", "--class", "tsunagu-operator"]);
    x.xdotool(&["windowfocus", "--sync", id.lines().next().unwrap_or_default()]);
    x.xdotool(&[
        "mousemove",
        &(visible.0 + 300).to_string(),
        &(visible.1 + 200).to_string(),
    ]);
    std::thread::sleep(Duration::from_millis(200));
    x.xdotool(&["key", "ctrl+c"]);
    expect_keys(
        &mut client,
        &[("Control", true), ("c", true), ("c", false), ("Control", false)],
    );
    x.xdotool(&["key", "ctrl+v"]);
    expect_keys(
        &mut client,
        &[("Control", true), ("v", true), ("v", false), ("Control", false)],
    );
    click(&x, widget(&zoomed, "ctrl_alt_del"));
    expect_keys(
        &mut client,
        &[
            ("Control", true),
            ("Alt", true),
            ("Delete", true),
            ("Delete", false),
            ("Alt", false),
            ("Control", false),
        ],
    );

    // The choice is remembered: zoom 110 %, no panel.
    let file = config.path().join("tsunagu/operator.toml");
    let deadline = Instant::now() + WAIT;
    let saved = loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let value: toml::Value = toml::from_str(&text).unwrap_or(toml::Value::Table(Default::default()));
        if value
            .get("view")
            .and_then(|v| v.get("zoom"))
            .and_then(|z| z.as_integer())
            == Some(110)
        {
            break value;
        }
        assert!(Instant::now() < deadline, "the view was not remembered: {text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(saved["view"]["mode"].as_str(), Some("zoom"));
    assert_eq!(saved["view"]["panel"].as_bool(), Some(false));
    drop(client);
    drop(op);

    // The next start shows the next session the same way, in Japanese too; this time under
    // a window manager, which is what grants full screen.
    let mut wm = x.command("openbox");
    wm.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _wm = Reaped(wm.spawn().expect("openbox starts (apt-get install openbox)"));
    let mut op = operator_window(&x, &relay, config.path(), "ja");
    let (_client, again) = session(&mut op, &relay, "1920x1080", &["view", "control"], None);
    assert_eq!(again["view"]["mode"], "zoom");
    assert_eq!(again["view"]["zoom"], 110);
    assert_eq!(again["view"]["panel"], false);
    shot(&x, "6-remembered-ja");

    click(&x, widget(&again, "fullscreen"));
    let full = op.expect_where("gui", |v| {
        v["view"]["fullscreen"] == true && v["window"] == json!([0, 0, 1280, 800])
    });
    shot(&x, "7-fullscreen-ja");
    click(&x, widget(&full, "fullscreen"));
    let back = op.expect_where("gui", |v| {
        v["view"]["fullscreen"] == false && v["window"] != json!([0, 0, 1280, 800])
    });
    // Back to fit for the next start; the panel too.
    click(&x, widget(&back, "view_fit"));
    op.expect_where("gui", |v| v["view"]["mode"] == "fit");
}

/// Kills a helper process (the window manager) when the test ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Puts `text` on the clipboard of display `x` as another program would (xclip keeps
/// serving it in the background).
fn set_clipboard(x: &Xvfb, text: &str) {
    use std::io::Write;
    let mut child = x
        .command("xclip")
        .args(["-selection", "clipboard", "-i"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("xclip runs (apt-get install xclip)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
}

/// The clipboard text of display `x`, as another program reads it.
fn clipboard_of(x: &Xvfb) -> String {
    let out = x
        .command("timeout")
        .args(["5", "xclip", "-selection", "clipboard", "-o"])
        .output()
        .expect("xclip runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn clipboard_text_moves_both_ways_between_the_two_desktops_when_allowed() {
    let x = Xvfb::start(1280, 800);
    let desk = Xvfb::start(1024, 768);
    let relay = RelayProcess::start("", 1);
    assert!(relay.add_operator("alice", OP_PASSWORD).status.success());
    let config = tempfile::tempdir().unwrap();
    let mut op = operator_window(&x, &relay, config.path(), "en");
    let (mut client, report) = session(
        &mut op,
        &relay,
        "800x600",
        &["view", "control", "clipboard"],
        Some(&desk),
    );

    // The technician copies a line on their desktop and sends it.
    let text = "請求書 #42 — invoice ready\nsecond line";
    let chars = text.chars().count();
    set_clipboard(&x, text);
    click(&x, widget(&report, "clipboard_send"));
    client.expect_where("clipboard_received", |v| v["chars"] == chars);
    assert_eq!(clipboard_of(&desk), text, "the client's desktop has the text");
    op.expect_where("gui", |v| v["clipboard_note"]["chars"] == chars);
    shot(&x, "8-clipboard-sent-en");

    // The client's user copies a command; the technician fetches it onto their desktop.
    let back = "ssh admin@10.0.0.7 -p 2222";
    set_clipboard(&desk, back);
    click(&x, widget(&report, "clipboard_get"));
    let got = op.expect("clipboard");
    assert_eq!(got["text"], back);
    client.expect_where("clipboard_shared", |v| v["chars"] == back.len());
    let deadline = Instant::now() + WAIT;
    while clipboard_of(&x) != back {
        assert!(Instant::now() < deadline, "the operator's desktop never got the text");
        std::thread::sleep(Duration::from_millis(100));
    }
    click(&x, widget(&report, "end"));
    assert_eq!(client.expect("ended")["reason"], "operator_ended");
    drop(op);

    // A client that does not allow the clipboard: the buttons are off and say why.
    let mut op = operator_window(&x, &relay, config.path(), "ja");
    let (_client, report) = session(&mut op, &relay, "800x600", &["view", "control"], Some(&desk));
    let note = if report["widgets"]["clipboard_note"].is_array() {
        report.clone()
    } else {
        op.expect_where("gui", |v| {
            v["screen"] == "session" && v["widgets"]["clipboard_note"].is_array()
        })
    };
    set_clipboard(&x, "must not cross");
    click(&x, widget(&note, "clipboard_send"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(clipboard_of(&desk), back, "nothing crossed without the permission");
    assert!(report["widgets"]["clipboard_send"].is_array());
    shot(&x, "9-clipboard-not-allowed-ja");
}

/// A file dragged from another program (a GTK window standing in for the file manager)
/// and dropped onto the picture is offered to the client, as Send file… would.
#[test]
fn a_file_dropped_onto_the_picture_is_offered_to_the_client() {
    let x = Xvfb::start(1600, 1000);
    let relay = RelayProcess::start("", 1);
    assert!(relay.add_operator("alice", OP_PASSWORD).status.success());
    let config = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("report.txt");
    std::fs::write(&file, "quarterly numbers\n".repeat(100)).unwrap();
    let mut op = operator_window(&x, &relay, config.path(), "en");
    let (mut client, report) = session(&mut op, &relay, "800x600", &["view", "control", "files"], None);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/drag_source.py");
    let mut source = x.command("/usr/bin/python3");
    source
        .arg(&script)
        .arg(&file)
        .args(["1350", "100"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut source = Reaped(
        source
            .spawn()
            .expect("the drag source starts (python3-gi, gir1.2-gtk-3.0)"),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(source.0.stdout.take().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let id = x.xdotool(&["search", "--sync", "--onlyvisible", "--name", "drag-source"]);
    let geometry = x.xdotool(&["getwindowgeometry", "--shell", id.lines().next().unwrap()]);
    let value = |key: &str| -> i64 {
        geometry
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {geometry}"))
    };
    let (sx, sy) = (value("X") + value("WIDTH") / 2, value("Y") + value("HEIGHT") / 2);

    // Press on the source, move across in steps (XDND needs motion), release on the picture.
    let screen = widget(&report, "screen");
    let (tx, ty) = (screen.0 + screen.2 / 2, screen.1 + screen.3 / 2);
    x.xdotool(&["mousemove", &sx.to_string(), &sy.to_string()]);
    std::thread::sleep(Duration::from_millis(200));
    x.xdotool(&["mousedown", "1"]);
    for step in 1..=12 {
        let px = sx + (tx - sx) * step / 12;
        let py = sy + (ty - sy) * step / 12;
        x.xdotool(&["mousemove", &px.to_string(), &py.to_string()]);
        std::thread::sleep(Duration::from_millis(80));
    }
    std::thread::sleep(Duration::from_millis(300));
    shot(&x, "10-dragging-en");
    x.xdotool(&["mouseup", "1"]);

    let offer = client.expect("file_offer");
    assert_eq!(offer["name"], "report.txt");
    assert_eq!(offer["size"], 1800);
    op.expect_where("gui", |v| {
        v["transfers"]
            .as_array()
            .is_some_and(|t| t.iter().any(|r| r["sending"] == true))
    });
    shot(&x, "11-dropped-en");
}
