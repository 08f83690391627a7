//! The download page on the relay ports: a customer opens `https://RELAY/join`, downloads
//! the client (the relay's address and trust anchor inside), runs it without a flag, types
//! the code, presses Connect and shares the real X11 desktop. Pages are fetched with curl
//! over the relay's TLS port and shown in headless Chromium (screenshots in
//! `target/tmp/join/`); the downloaded program runs on its own Xvfb.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::gui::{click, rect_of};
use support::xvfb::{Desk, Xvfb};
use support::*;

const OP_PASSWORD: &str = "Help-desk-2026";
const CHROMIUM: &str = "/usr/bin/chromium";

fn shots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("join");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `curl` over the relay's TLS port, trusting its CA; returns the HTTP status and the body.
fn curl(relay: &RelayProcess, path: &str, extra: &[&str], out: Option<&Path>) -> (u16, Vec<u8>) {
    let url = format!("https://127.0.0.1:{}{path}", relay.port());
    let mut cmd = Command::new("curl");
    cmd.args([
        "--silent",
        "--show-error",
        "--max-time",
        "60",
        "--write-out",
        "\n%{http_code}",
    ])
    .arg("--cacert")
    .arg(relay.ca())
    .args(extra);
    if let Some(out) = out {
        cmd.arg("--output").arg(out);
    }
    let done = cmd.arg(&url).output().expect("curl runs (CI installs it)");
    assert!(
        done.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    let mut body = done.stdout;
    let last = body.iter().rposition(|b| *b == b'\n').unwrap();
    let status = std::str::from_utf8(&body[last + 1..]).unwrap().trim().parse().unwrap();
    body.truncate(last);
    (status, body)
}

/// A PNG of `url` as headless Chromium renders it (skipped without Chromium outside CI).
fn browser_shot(url: &str, name: &str) {
    if !Path::new(CHROMIUM).exists() {
        assert!(std::env::var_os("CI").is_none(), "CI must provide chromium");
        return;
    }
    let path = shots_dir().join(name);
    let _ = std::fs::remove_file(&path);
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--ignore-certificate-errors",
            "--hide-scrollbars",
            "--window-size=1000,760",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", path.display()))
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        path.exists(),
        "chromium wrote no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_download_page_explains_the_steps_in_english_and_japanese() {
    let relay = RelayProcess::start("", 1);
    let (status, en) = curl(&relay, "/join", &["--header", "Accept-Language: en-US,en;q=0.8"], None);
    assert_eq!(status, 200);
    let en = String::from_utf8(en).unwrap();
    assert!(en.contains("Join a remote support session"), "{en}");
    assert!(en.contains("href=\"/join/tsunagu-client\""), "{en}");
    assert!(en.contains("Connect"), "{en}");

    let (status, ja) = curl(&relay, "/join", &["--header", "Accept-Language: ja,en;q=0.5"], None);
    assert_eq!(status, 200);
    let ja = String::from_utf8(ja).unwrap();
    assert!(ja.contains("リモートサポートに参加する"), "{ja}");
    assert!(ja.contains("「接続」"), "{ja}");
    assert!(ja.contains("lang=\"ja\""));

    // Other paths on the relay port are not found; the endpoints' protocol is unaffected.
    let (status, _) = curl(&relay, "/admin", &[], None);
    assert_eq!(status, 404);
    let mut op = relay.operator("nobody", "x");
    assert_eq!(
        op.expect("error")["code"],
        "auth_failed",
        "endpoints still speak to the relay port"
    );

    let base = format!("https://127.0.0.1:{}/join", relay.port());
    browser_shot(&format!("{base}?lang=en"), "1-page-en.png");
    browser_shot(&format!("{base}?lang=ja"), "1-page-ja.png");
}

#[test]
fn without_a_client_program_the_page_says_so() {
    let relay = RelayProcess::start("[join]\nclient_file = \"/nonexistent/tsunagu-client\"\n", 1);
    let (status, page) = curl(&relay, "/join?lang=en", &[], None);
    assert_eq!(status, 200);
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains("id=\"unavailable\""), "{page}");
    assert!(!page.contains("href=\"/join/tsunagu-client\""), "{page}");
    let (status, body) = curl(&relay, "/join/tsunagu-client", &[], None);
    assert_eq!(status, 503);
    assert!(String::from_utf8_lossy(&body).contains("not available"));
}

/// Downloads at once beyond `join.max_downloads` are refused while the others go on.
#[test]
fn a_burst_of_downloads_gets_only_the_allowed_slots() {
    let relay = RelayProcess::start("[join]\nmax_downloads = 2\n", 1);
    let dir = tempfile::tempdir().unwrap();
    let started: Vec<_> = (0..6)
        .map(|i| {
            let out = dir.path().join(format!("c{i}"));
            let (port, ca) = (relay.port(), relay.ca());
            std::thread::spawn(move || {
                let done = Command::new("curl")
                    // Slowly, and given up after 5 s: the allowed ones hold their slots meanwhile.
                    .args([
                        "--silent",
                        "--max-time",
                        "5",
                        "--limit-rate",
                        "1M",
                        "--write-out",
                        "%{http_code}",
                    ])
                    .arg("--cacert")
                    .arg(ca)
                    .arg("--output")
                    .arg(&out)
                    .arg(format!("https://127.0.0.1:{port}/join/tsunagu-client"))
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&done.stdout).trim().to_string()
            })
        })
        .collect();
    let codes: Vec<String> = started.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(codes.iter().filter(|c| *c == "200").count(), 2, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| *c == "503").count(), 4, "{codes:?}");
}

/// The next `gui` report for `screen` that has every widget in `widgets`.
fn expect_screen(gui: &mut App, screen: &str, widgets: &[&str]) -> Value {
    gui.expect_where("gui", |v| {
        v["screen"] == screen && widgets.iter().all(|w| v["widgets"][*w].is_array())
    })
}

/// The client's window id and its top-left corner, once it is visible.
fn client_window(xvfb: &Xvfb) -> (String, (i64, i64)) {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = xvfb
            .command("xdotool")
            .args(["search", "--onlyvisible", "--class", "tsunagu-client"])
            .output()
            .unwrap();
        if let Some(id) = String::from_utf8_lossy(&out.stdout).lines().last() {
            let geo = xvfb.xdotool(&["getwindowgeometry", "--shell", id]);
            let get = |k: &str| {
                geo.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .and_then(|v| v.trim().parse().ok())
            };
            if let (Some(x), Some(y)) = (get("X="), get("Y=")) {
                return (id.to_string(), (x, y));
            }
        }
        assert!(Instant::now() < deadline, "the client window did not appear");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The decoded colour at (`x`, `y`) on the operator's side.
fn sample(op: &mut App, x: u32, y: u32) -> (i64, i64, i64) {
    op.send(serde_json::json!({"cmd": "sample", "x": x, "y": y}));
    let px = op.expect("pixel");
    let c = |k: &str| px[k].as_i64().unwrap();
    (c("r"), c("g"), c("b"))
}

#[test]
fn a_customer_runs_the_downloaded_client_types_the_code_and_shares_the_desktop() {
    let xvfb = Xvfb::start(1920, 1080);
    let desk = Desk::open(&xvfb);
    let relay = RelayProcess::start("", 1);
    assert!(relay.add_operator("alice", OP_PASSWORD).status.success());

    // The download: the client program with this relay inside, as a browser saves it.
    let home = tempfile::tempdir().unwrap();
    let downloads = home.path().join("Downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let program = downloads.join("tsunagu-client");
    let (status, _) = curl(&relay, "/join/tsunagu-client", &[], Some(&program));
    assert_eq!(status, 200);
    let plain = std::fs::metadata(bin("tsunagu-client")).unwrap().len();
    let bundle = std::fs::metadata(&program).unwrap().len();
    assert!(bundle > plain, "the relay's address and CA are appended");
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut op = relay.operator("alice", OP_PASSWORD);
    let code = op.code();

    // The customer runs it with no flag at all: the window asks for the code.
    let mut cmd = xvfb.command(&program);
    cmd.current_dir(&downloads)
        .env("HOME", home.path())
        .env("TSUNAGU_GUI_REPORT", "1")
        .env("LANG", "en_US.UTF-8")
        .env_remove("LC_ALL")
        .env_remove("LC_MESSAGES")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR");
    let mut gui = App::spawn("gui", cmd);
    let report = expect_screen(&mut gui, "code", &["code_field", "connect"]);
    let (id, origin) = client_window(&xvfb);
    xvfb.xdotool(&["windowfocus", "--sync", &id]);
    click(&xvfb, rect_of(&report, origin, "code_field"));
    xvfb.xdotool(&["type", "--delay", "60", &code]);
    let report = gui.expect_where("gui", |v| v["screen"] == "code" && v["digits"] == 8);
    xvfb.screenshot(&shots_dir().join("2-code-typed.png"));
    click(&xvfb, rect_of(&report, origin, "connect"));

    gui.expect("consent_request");
    let report = expect_screen(&mut gui, "consent", &["allow"]);
    xvfb.screenshot(&shots_dir().join("3-consent.png"));
    click(&xvfb, rect_of(&report, origin, "allow"));
    op.expect("consent");
    gui.expect("connected");

    // What the operator sees is this X server's desktop, at its size and in its colour.
    desk.fill(0x20a040, 0, 0, 1920, 1080);
    let first = op.expect("frame");
    assert_eq!(
        (first["width"].as_u64(), first["height"].as_u64()),
        (Some(1920), Some(1080))
    );
    let deadline = Instant::now() + WAIT;
    let want = (0x20, 0xa0, 0x40);
    let mut got = sample(&mut op, 1700, 900);
    while (got.0 - want.0).abs() + (got.1 - want.1).abs() + (got.2 - want.2).abs() > 90 && Instant::now() < deadline {
        op.drain_for(Duration::from_millis(100));
        got = sample(&mut op, 1700, 900);
    }
    assert!(
        (got.0 - want.0).abs() <= 40 && (got.1 - want.1).abs() <= 40 && (got.2 - want.2).abs() <= 40,
        "the desktop's own colour, got {got:?}"
    );
    xvfb.screenshot(&shots_dir().join("4-sharing.png"));
    op.send(serde_json::json!({"cmd": "end"}));
    gui.expect("ended");
}

#[test]
fn a_damaged_download_is_refused_with_a_clear_message() {
    let relay = RelayProcess::start("", 1);
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("tsunagu-client");
    let (status, _) = curl(&relay, "/join/tsunagu-client", &[], Some(&program));
    assert_eq!(status, 200);
    // One byte of the appended settings changed on the way.
    let mut bytes = std::fs::read(&program).unwrap();
    let at = bytes.len() - 80;
    bytes[at] ^= 0x20;
    std::fs::write(&program, bytes).unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(&program)
        .args(["--headless", "12345678"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("damaged") && stderr.contains("download it again"),
        "{stderr}"
    );
}
