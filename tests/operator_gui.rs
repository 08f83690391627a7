//! The operator window under Xvfb, as a technician uses it: it logs in and shows the code,
//! shows the client's (synthetic) screen with the right colours at the right places, sends
//! the pointer to the client in the client's coordinates, shows the pause banner, and ends
//! the session. Screenshots are kept in target/test-artifacts/.

mod support;

use std::path::PathBuf;

use serde_json::{json, Value};
use support::xvfb::Xvfb;
use support::*;

const OP_PASSWORD: &str = "Help-desk-2026";

/// An RGB screenshot of the whole X screen.
struct Shot {
    width: usize,
    rgb: Vec<u8>,
}

impl Shot {
    /// Takes a screenshot, keeping a PNG copy as a test artefact.
    fn take(x: &Xvfb, name: &str) -> Self {
        // The window reports its layout while it builds a frame; give it a few frames to
        // paint what it reported before the picture is kept.
        std::thread::sleep(std::time::Duration::from_millis(400));
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        x.screenshot(&dir.join(format!("{name}.png")));
        let out = x
            .command("import")
            .args(["-window", "root", "-depth", "8", "ppm:-"])
            .output()
            .unwrap();
        assert!(out.status.success());
        Self::parse_ppm(&out.stdout)
    }

    fn parse_ppm(data: &[u8]) -> Self {
        // "P6\n<w> <h>\n255\n" then RGB bytes.
        let mut fields = Vec::new();
        let mut i = 0;
        while fields.len() < 4 {
            while data[i].is_ascii_whitespace() {
                i += 1;
            }
            let start = i;
            while !data[i].is_ascii_whitespace() {
                i += 1;
            }
            fields.push(String::from_utf8_lossy(&data[start..i]).into_owned());
        }
        assert_eq!(fields[0], "P6");
        let width: usize = fields[1].parse().unwrap();
        Self {
            width,
            rgb: data[i + 1..].to_vec(),
        }
    }

    fn pixel(&self, x: i64, y: i64) -> [i64; 3] {
        let o = (y as usize * self.width + x as usize) * 3;
        [self.rgb[o] as i64, self.rgb[o + 1] as i64, self.rgb[o + 2] as i64]
    }
}

fn close(a: [i64; 3], b: [i64; 3]) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 60)
}

fn rect(report: &Value, widget: &str) -> [i64; 4] {
    let r = &report["widgets"][widget];
    [
        r[0].as_i64().unwrap(),
        r[1].as_i64().unwrap(),
        r[2].as_i64().unwrap(),
        r[3].as_i64().unwrap(),
    ]
}

/// Clicks the middle of `widget` as a user would: the pointer comes to rest on it first.
fn click_widget(x: &Xvfb, report: &Value, widget: &str) {
    let r = rect(report, widget);
    support::gui::click(x, (r[0], r[1], r[2], r[3]));
}

#[test]
fn the_operator_window_shows_and_controls_the_client_screen() {
    let x = Xvfb::start(1600, 1000);
    let relay = RelayProcess::start("", 1);
    assert!(relay.add_operator("alice", OP_PASSWORD).status.success());
    let spec = relay.spec();

    let args = ["--user", "alice", "--connect", "--events", "--lang", "ja"];
    let mut cmd = x.app("tsunagu-operator", &relay, &args);
    cmd.env("TSUNAGU_PASSWORD", OP_PASSWORD);
    let mut op = App::spawn("operator window", cmd);
    let code = op.code();
    let waiting = op.expect_where("gui", |v| v["screen"] == "waiting" && v["widgets"]["code"].is_array());
    assert_eq!(waiting["lang"], "ja");
    Shot::take(&x, "operator-code");

    let mut client = App::client(
        &spec,
        &relay.ca(),
        None,
        &code,
        &["--size", "1280x720", "--fps", "10", "--takeover-resume-ms", "60000"],
    );
    client.expect("consent_request");
    // The client has joined: the code and its countdown give way to who joined.
    op.expect("peer_joined");
    let joined = op.expect_where("gui", |v| v["screen"] == "waiting" && v["widgets"]["joined"].is_array());
    assert!(
        joined["widgets"]["countdown"].is_null() && joined["widgets"]["code"].is_null(),
        "no code or countdown once the client has joined: {joined}"
    );
    Shot::take(&x, "operator-joined");
    client.send(json!({"cmd": "consent", "grant": ["view", "control", "chat"]}));
    client.expect("connected");
    op.expect("consent");
    let session = op.expect_where("gui", |v| {
        v["screen"] == "session" && v["picture"] == json!([1280, 720]) && v["widgets"]["screen"].is_array()
    });
    for _ in 0..3 {
        op.expect("frame");
    }
    let screen = rect(&session, "screen");
    // The picture keeps the client's aspect ratio.
    let aspect = screen[2] as f64 / screen[3] as f64;
    assert!((aspect - 1280.0 / 720.0).abs() < 0.02, "aspect {aspect}");

    // The eight colour bars of the synthetic desktop, sampled in the middle of each bar.
    let shot = Shot::take(&x, "operator-session");
    for (i, bar) in tsunagu_client::synthetic::BAR_COLOURS.iter().enumerate() {
        let expected = bar.map(i64::from);
        let px = screen[0] + screen[2] * (2 * i as i64 + 1) / 16;
        let py = screen[1] + screen[3] / 3;
        let got = shot.pixel(px, py);
        assert!(
            close(got, expected),
            "bar {i} at ({px},{py}): expected {expected:?}, got {got:?}"
        );
    }

    // The pointer over the picture reaches the client in the client's coordinates.
    let (tx, ty) = (screen[0] + screen[2] / 4, screen[1] + screen[3] / 2);
    x.xdotool(&["mousemove", &tx.to_string(), &ty.to_string()]);
    x.xdotool(&["mousemove", &(tx + 1).to_string(), &ty.to_string()]);
    let moved = client.expect_where("input", |v| v["kind"] == "mouse_move");
    let scale = 1280.0 / screen[2] as f64;
    let want_x = ((tx - screen[0]) as f64 * scale) as i64;
    let want_y = ((ty - screen[1]) as f64 * scale) as i64;
    let (gx, gy) = (moved["x"].as_i64().unwrap(), moved["y"].as_i64().unwrap());
    assert!(
        (gx - want_x).abs() <= 4 && (gy - want_y).abs() <= 4,
        "client got ({gx},{gy}), expected about ({want_x},{want_y})"
    );
    x.xdotool(&["click", "1"]);
    client.expect_where("input", |v| {
        v["kind"] == "mouse_button" && v["button"] == "left" && v["down"] == true
    });
    client.expect_where("input", |v| {
        v["kind"] == "mouse_button" && v["button"] == "left" && v["down"] == false
    });

    // View only by the client's switch.
    client.send(json!({"cmd": "view_only", "on": true}));
    op.expect_where("gui", |v| v["banner_kind"] == "view_only");
    Shot::take(&x, "operator-view-only-ja");
    client.send(json!({"cmd": "view_only", "on": false}));
    op.expect_where("gui", |v| v["banner_kind"].is_null() && v["screen"] == "session");

    // Chat only: the picture goes blank, the banner says why.
    client.send(json!({"cmd": "chat_only", "on": true}));
    let chat_only = op.expect_where("gui", |v| {
        v["banner_kind"] == "chat_only" && v["picture"] == json!([0, 0]) && v["widgets"]["no_picture"].is_array()
    });
    assert!(
        chat_only["widgets"]["screen"].is_null(),
        "no picture in chat only: {chat_only}"
    );
    let mut shot = Shot::take(&x, "operator-chat-only-ja");
    let bars = |shot: &Shot| {
        tsunagu_client::synthetic::BAR_COLOURS
            .iter()
            .enumerate()
            .filter(|(i, bar)| {
                let px = screen[0] + screen[2] * (2 * *i as i64 + 1) / 16;
                close(shot.pixel(px, screen[1] + screen[3] / 3), bar.map(i64::from))
            })
            .count()
    };
    for _ in 0..20 {
        if bars(&shot) <= 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        shot = Shot::take(&x, "operator-chat-only-ja");
    }
    // One bar may match the window's own background by chance; the picture had eight.
    assert!(bars(&shot) <= 1, "the last picture stays on screen in chat only");
    client.send(json!({"cmd": "chat_only", "on": false}));
    op.expect_where("gui", |v| {
        v["banner_kind"].is_null() && v["picture"] == json!([1280, 720])
    });

    // The client's user takes the mouse: the window shows the banner, naming the mouse.
    client.send(json!({"cmd": "local_mouse", "x": 1, "y": 1}));
    op.expect("paused");
    assert_eq!(op.seen_or_expect("pause_cause", |_| true)["cause"], "local_input");
    let paused = op.expect_where("gui", |v| v["banner_kind"] == "paused_by_mouse");
    let banner = rect(&paused, "banner");
    // The window reports its layout while it builds the frame: the frame is on screen a
    // moment later (longer on a loaded machine), so the screen is read until it shows.
    let (bx, by) = (banner[0] + 3, banner[1] + 3);
    let mut shot = Shot::take(&x, "operator-paused");
    for _ in 0..20 {
        if close(shot.pixel(bx, by), [255, 200, 60]) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        shot = Shot::take(&x, "operator-paused");
    }
    assert!(
        close(shot.pixel(bx, by), [255, 200, 60]),
        "banner colour at ({bx},{by}): {:?}",
        shot.pixel(bx, by)
    );

    // The client presses Pause: the banner says so, not that they are using the mouse.
    client.send(json!({"cmd": "pause", "on": true}));
    op.expect_where("pause_cause", |v| v["cause"] == "button");
    op.expect_where("gui", |v| v["banner_kind"] == "paused_by_button");
    Shot::take(&x, "operator-paused-by-button-ja");
    click_widget(&x, &paused, "lang");
    op.expect_where("gui", |v| v["lang"] == "en" && v["banner_kind"] == "paused_by_button");
    Shot::take(&x, "operator-paused-by-button-en");
    // Released, the button no longer holds control: the mouse still does (a long resume
    // delay in this test), and the banner says so again.
    client.send(json!({"cmd": "pause", "on": false}));
    op.expect_where("pause_cause", |v| v["cause"] == "local_input");
    op.expect_where("gui", |v| v["banner_kind"] == "paused_by_mouse");

    // End from the window.
    click_widget(&x, &paused, "end");
    assert_eq!(client.expect("ended")["reason"], "operator_ended");
    op.expect_where("gui", |v| v["screen"] == "ended");
    assert_eq!(client.wait(), 0);
}

/// An operator who must present a client certificate starts the window with `--cert` and
/// no `TSUNAGU_CERT_PASSWORD`: the login screen asks for the certificate's password (in
/// Japanese and English), and with it typed the session starts.
#[test]
fn the_window_asks_for_the_certificate_password() {
    let x = Xvfb::start(1600, 1000);
    let relay = RelayProcess::start("", 1);
    assert!(relay.add_operator("alice", OP_PASSWORD).status.success());
    let work = tempfile::tempdir().unwrap();
    let p12 = work.path().join("alice.p12");
    let out = relay_cli(
        &relay.data_dir(),
        &[
            "cert",
            "issue",
            "alice",
            "--device",
            "desk",
            "--out",
            p12.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let issued: Value = serde_json::from_slice(&out.stdout).unwrap();
    let password = issued["password"].as_str().unwrap().to_string();
    assert!(
        relay_cli(&relay.data_dir(), &["admin", "require-cert", "alice", "on"], None)
            .status
            .success()
    );
    // The relay asks for certificates from its next read of the new client CA (1 s).
    std::thread::sleep(std::time::Duration::from_millis(1500));

    for lang in ["ja", "en"] {
        let args = [
            "--user",
            "alice",
            "--events",
            "--lang",
            lang,
            "--cert",
            p12.to_str().unwrap(),
        ];
        let mut cmd = x.app("tsunagu-operator", &relay, &args);
        cmd.env("TSUNAGU_PASSWORD", OP_PASSWORD)
            .env_remove("TSUNAGU_CERT_PASSWORD");
        let mut op = App::spawn("operator window", cmd);
        // The first frames lay the form out narrow; wait for the settled layout.
        let login = op.expect_where("gui", |v| {
            v["screen"] == "login" && v["widgets"]["cert_password"][2].as_i64().unwrap_or(0) > 100
        });
        // Xvfb runs without a window manager: give the window the keyboard focus as one would.
        let id = x.xdotool(&["search", "--sync", "--onlyvisible", "--class", "tsunagu-operator"]);
        let id = id.lines().next().unwrap_or_default().to_string();
        x.xdotool(&["windowfocus", "--sync", &id]);
        click_widget(&x, &login, "cert_password");
        x.xdotool(&["type", "--delay", "20", &password]);
        Shot::take(&x, &format!("operator-cert-password-{lang}"));
        click_widget(&x, &login, "new_session");
        op.expect("code");
        drop(op);
    }
}

/// After one successful login the window remembers the relay, its CA and the account in
/// `~/.config/tsunagu/operator.toml` (never the password), so the next start needs no flag.
#[test]
fn the_window_remembers_the_relay_and_account_after_a_login() {
    let x = Xvfb::start(1280, 800);
    let relay = RelayProcess::start("", 1);
    assert!(relay.add_operator("alice", OP_PASSWORD).status.success());
    let config = tempfile::tempdir().unwrap();

    let mut cmd = x.app(
        "tsunagu-operator",
        &relay,
        &["--user", "alice", "--connect", "--events"],
    );
    cmd.env("TSUNAGU_PASSWORD", OP_PASSWORD)
        .env("XDG_CONFIG_HOME", config.path());
    let mut first = App::spawn("operator window", cmd);
    first.code();
    let file = config.path().join("tsunagu/operator.toml");
    let deadline = std::time::Instant::now() + WAIT;
    while !file.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let saved = std::fs::read_to_string(&file).expect("operator.toml written after the login");
    let saved: toml::Value = toml::from_str(&saved).unwrap();
    assert_eq!(saved["relay"].as_str(), Some(relay.spec().as_str()));
    assert_eq!(saved["user"].as_str(), Some("alice"));
    assert_eq!(saved["ca"].as_str(), Some(relay.ca().to_str().unwrap()));
    assert!(
        !std::fs::read_to_string(&file).unwrap().contains(OP_PASSWORD),
        "the password is never written"
    );
    drop(first);

    // The next start: no --relay, --ca or --user.
    let mut cmd = x.command(bin("tsunagu-operator"));
    cmd.args(["--connect", "--events"])
        .env("TSUNAGU_PASSWORD", OP_PASSWORD)
        .env("XDG_CONFIG_HOME", config.path());
    let mut second = App::spawn("operator window", cmd);
    let code = second.code();
    assert_eq!(code.len(), 8, "logged in with the remembered settings");
}
