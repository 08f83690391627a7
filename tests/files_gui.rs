//! Files both ways from the client window, on its own Xvfb with the real GTK file chooser
//! driven by xdotool: a file the operator offers opens a panel with Save and Reject fully
//! inside the window (checked on `import -window root` screenshots at the rectangles the
//! window reports with `TSUNAGU_GUI_REPORT=1`), Save creates a missing `~/Downloads`, a folder
//! chosen in the system's folder chooser that does not exist yet is created, a folder that
//! cannot be made is explained and the offer stays answerable, the saved path shows in the
//! window and the operator sees each file arrive; and a file chosen in the system's open-file
//! dialog reaches the operator, the window saying it was sent. Screenshots are kept in
//! `target/tmp/files-gui/` for people to look at.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::gui::{assert_drawn, click, click_until, rect_of};
use support::xvfb::Xvfb;
use support::*;

const OP_PASSWORD: &str = "Help-desk-2026";

fn shots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("files-gui");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The next `gui` report that satisfies `pred`.
fn report_where(gui: &mut App, pred: impl Fn(&Value) -> bool) -> Value {
    gui.expect_where("gui", pred)
}

/// Whether a report shows every widget in `widgets`.
fn shows(report: &Value, widgets: &[&str]) -> bool {
    widgets.iter().all(|w| report["widgets"][*w].is_array())
}

/// The id of the app's window (X class `class`), looked up while no file dialog is open
/// (GTK's dialogs share the app's class).
fn app_window(xvfb: &Xvfb, class: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = xvfb
            .command("xdotool")
            .args(["search", "--onlyvisible", "--class", class])
            .output()
            .unwrap();
        if let Some(id) = String::from_utf8_lossy(&out.stdout).lines().last() {
            return id.to_string();
        }
        assert!(Instant::now() < deadline, "the {class} window did not appear");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A window's top-left corner on the X screen.
fn window_origin(xvfb: &Xvfb, id: &str) -> (i64, i64) {
    let geo = xvfb.xdotool(&["getwindowgeometry", "--shell", id]);
    let get = |k: &str| {
        geo.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or_else(|| panic!("no {k} in {geo}"))
    };
    (get("X="), get("Y="))
}

/// Whether the report shows every widget in `widgets` wholly inside its window (the window
/// resizes a frame or two after its content changes, so tests wait for this).
fn fits(report: &Value, widgets: &[&str]) -> bool {
    let nums = |v: &Value| -> Option<Vec<i64>> { v.as_array()?.iter().map(Value::as_i64).collect() };
    let Some(win) = nums(&report["window"]) else {
        return false;
    };
    widgets.iter().all(|w| {
        nums(&report["widgets"][*w])
            .is_some_and(|r| r[0] >= 0 && r[1] >= 0 && r[0] + r[2] <= win[2] && r[1] + r[3] <= win[3])
    })
}

fn screenshot(xvfb: &Xvfb, name: &str) -> image::RgbImage {
    // Give the window a few frames to paint what it reported.
    std::thread::sleep(Duration::from_millis(500));
    let path = xvfb.screenshot(&shots_dir().join(name));
    image::open(&path).expect("a PNG").to_rgb8()
}

/// Visible windows of X class `class` other than `main`: the app's GTK dialogs.
fn dialogs_of(xvfb: &Xvfb, class: &str, main: &str) -> Vec<String> {
    let out = xvfb
        .command("xdotool")
        .args(["search", "--onlyvisible", "--class", class])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|id| *id != main)
        .map(str::to_string)
        .collect()
}

/// Picks `path` in the app's GTK file chooser, which must be titled `title`: waits for it,
/// focuses it, opens its location field (Ctrl+L), types the path and presses Enter; waits
/// until it has closed.
fn choose_in_gtk_dialog(xvfb: &Xvfb, (class, main): (&str, &str), title: &str, path: &Path, shot: &str) {
    let deadline = Instant::now() + WAIT;
    let id = loop {
        if let Some(id) = dialogs_of(xvfb, class, main).pop() {
            break id;
        }
        assert!(Instant::now() < deadline, "the file chooser {title:?} did not open");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(xvfb.xdotool(&["getwindowname", &id]).trim(), title);
    // The chooser builds its contents after mapping; let it settle before typing.
    std::thread::sleep(Duration::from_millis(800));
    xvfb.xdotool(&["windowfocus", "--sync", &id]);
    xvfb.xdotool(&["key", "--clearmodifiers", "ctrl+l"]);
    std::thread::sleep(Duration::from_millis(300));
    xvfb.xdotool(&["type", "--delay", "20", &path.display().to_string()]);
    std::thread::sleep(Duration::from_millis(300));
    screenshot(xvfb, shot);
    xvfb.xdotool(&["key", "Return"]);
    let deadline = Instant::now() + WAIT;
    while !dialogs_of(xvfb, class, main).is_empty() {
        assert!(Instant::now() < deadline, "the file chooser {title:?} did not close");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A session between the headless operator and the client window (everything granted),
/// with `home` as the client's home folder.
struct Session {
    _relay: RelayProcess,
    op: App,
    gui: App,
}

fn start_session(xvfb: &Xvfb, home: &Path, lang: &str) -> Session {
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
        "synthetic",
        "--input",
        "log",
        &code,
    ];
    let mut cmd = xvfb.app("tsunagu-client", &relay, &args);
    cmd.env("TSUNAGU_GUI_REPORT", "1")
        .env("HOME", home)
        // No accessibility bus or desktop services under Xvfb: GTK is told not to look.
        .env("NO_AT_BRIDGE", "1")
        .env("GTK_USE_PORTAL", "0")
        .env("GIO_USE_VFS", "local")
        .env_remove("DBUS_SESSION_BUS_ADDRESS");
    let mut gui = App::spawn("client window", cmd);
    let report = report_where(&mut gui, |v| v["screen"] == "code" && shows(v, &["connect"]));
    let origin = window_origin(xvfb, &app_window(xvfb, "tsunagu-client"));
    click(xvfb, rect_of(&report, origin, "connect"));
    gui.expect("consent_request");
    let report = report_where(&mut gui, |v| v["screen"] == "consent" && shows(v, &["allow"]));
    click(xvfb, rect_of(&report, origin, "allow"));
    op.expect("consent");
    gui.expect("connected");
    Session { _relay: relay, op, gui }
}

#[test]
fn a_file_offered_to_the_client_window_is_saved_into_folders_that_did_not_exist() {
    let xvfb = Xvfb::start(1280, 900);
    let home = tempfile::tempdir().unwrap();
    let outbox = tempfile::tempdir().unwrap();
    let mut s = start_session(&xvfb, home.path(), "en");
    let downloads = home.path().join("Downloads");
    assert!(!downloads.exists(), "a fresh account has no Downloads folder");

    // The operator offers a file: a panel opens under the bar, all of it inside the window.
    let first = outbox.path().join("invoice-march.txt");
    std::fs::write(&first, b"the first file, saved into a folder made for it").unwrap();
    s.op.send(serde_json::json!({"cmd": "send_file", "path": first}));
    let panel = [
        "offer_panel",
        "offer_name",
        "offer_folder",
        "offer_choose",
        "offer_save",
        "offer_reject",
    ];
    // The window grows with the panel, Save and Reject wholly inside it.
    let report = report_where(&mut s.gui, |v| v["screen"] == "session" && fits(v, &panel));
    assert_eq!(report["offer"]["dir"], downloads.display().to_string());
    let id = app_window(&xvfb, "tsunagu-client");
    let origin = window_origin(&xvfb, &id);
    let shot = screenshot(&xvfb, "1-offer-panel-en.png");
    assert_drawn(&shot, &report, origin, &panel, "offer panel");

    // Save into the default folder, which does not exist yet: it is made, the file lands
    // there, the window shows where, and the operator sees it arrive.
    click(&xvfb, rect_of(&report, origin, "offer_save"));
    let saved = s.gui.expect("file_saved");
    let path = PathBuf::from(saved["path"].as_str().unwrap());
    assert_eq!(path, downloads.join("invoice-march.txt"));
    assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&first).unwrap());
    s.op.expect_where("file_sent", |e| e["name"] == "invoice-march.txt");
    let report = report_where(&mut s.gui, |v| {
        fits(v, &["saved_path", "transfer"]) && v["offer"].is_null() && v["transfers"][0]["status"] == "saved"
    });
    assert_eq!(report["transfers"][0]["path"], path.display().to_string());
    let shot = screenshot(&xvfb, "2-saved-en.png");
    assert_drawn(&shot, &report, origin, &["saved_path", "transfer"], "saved path");

    // A second offer: the user picks a new folder in the system's folder chooser (typing a
    // folder that does not exist yet); Save makes it.
    let second = outbox.path().join("photo-list.csv");
    std::fs::write(&second, b"name,size\nbeach.jpg,12\n").unwrap();
    s.op.send(serde_json::json!({"cmd": "send_file", "path": second}));
    let report = report_where(&mut s.gui, |v| {
        fits(v, &panel) && v["offer"]["name"] == "photo-list.csv"
    });
    click(&xvfb, rect_of(&report, origin, "offer_choose"));
    let chosen = home.path().join("Received");
    std::fs::create_dir_all(&chosen).unwrap();
    let target = chosen.join("from-support");
    choose_in_gtk_dialog(
        &xvfb,
        ("tsunagu-client", &id),
        "Choose where to save",
        &target,
        "3-folder-chooser-en.png",
    );
    let report = report_where(&mut s.gui, |v| {
        shows(v, &panel) && v["offer"]["dir"] == target.display().to_string()
    });
    click(&xvfb, rect_of(&report, origin, "offer_save"));
    let saved = s.gui.expect_where("file_saved", |e| {
        e["path"].as_str().unwrap().ends_with("photo-list.csv")
    });
    assert_eq!(
        PathBuf::from(saved["path"].as_str().unwrap()),
        target.join("photo-list.csv")
    );
    s.op.expect_where("file_sent", |e| e["name"] == "photo-list.csv");

    // A folder that cannot be made (under a plain file): the window says why, the offer
    // stays; Reject then answers it and the operator is told.
    let third = outbox.path().join("notes.txt");
    std::fs::write(&third, b"notes").unwrap();
    let blocker = home.path().join("not-a-folder");
    std::fs::write(&blocker, b"x").unwrap();
    s.op.send(serde_json::json!({"cmd": "send_file", "path": third}));
    let report = report_where(&mut s.gui, |v| fits(v, &panel) && v["offer"]["name"] == "notes.txt");
    let bad = blocker.join("inbox");
    retype(
        &xvfb,
        &id,
        rect_of(&report, origin, "offer_folder"),
        &bad.display().to_string(),
    );
    let report = report_where(&mut s.gui, |v| v["offer"]["dir"] == bad.display().to_string());
    click(&xvfb, rect_of(&report, origin, "offer_save"));
    let report = report_where(&mut s.gui, |v| {
        fits(v, &["offer_error", "offer_save", "offer_reject"]) && v["offer"]["error"].is_string()
    });
    let shot = screenshot(&xvfb, "4-folder-error-en.png");
    assert_drawn(
        &shot,
        &report,
        origin,
        &["offer_error", "offer_save", "offer_reject"],
        "folder error",
    );
    click(&xvfb, rect_of(&report, origin, "offer_reject"));
    s.op.expect_where("file_rejected", |e| e["side"] == "send");
    report_where(&mut s.gui, |v| v["offer"].is_null());
}

/// A file chosen in the client window's open-file dialog reaches the operator; the window
/// shows it waiting for the operator, then sent; an offer the other way fits beside it.
fn a_file_sent_from_the_client_window_reaches_the_operator(lang: &str) {
    let xvfb = Xvfb::start(1280, 900);
    let home = tempfile::tempdir().unwrap();
    let inbox = tempfile::tempdir().unwrap();
    let mut s = start_session(&xvfb, home.path(), lang);
    let file = home.path().join("error-log.txt");
    let content = b"Printer says: paper jam in tray 2\n".repeat(2000);
    std::fs::write(&file, &content).unwrap();

    let report = report_where(&mut s.gui, |v| v["screen"] == "session" && shows(v, &["send_file"]));
    let id = app_window(&xvfb, "tsunagu-client");
    let origin = window_origin(&xvfb, &id);
    click(&xvfb, rect_of(&report, origin, "send_file"));
    let title = if lang == "ja" {
        "担当者に送るファイルを選ぶ"
    } else {
        "Choose a file to send to the support person"
    };
    choose_in_gtk_dialog(
        &xvfb,
        ("tsunagu-client", &id),
        title,
        &file,
        &format!("5-open-dialog-{lang}.png"),
    );

    // The operator is offered the file; the window shows it waiting for the answer.
    let offer = s.op.expect("file_offer");
    assert_eq!(offer["name"], "error-log.txt");
    assert_eq!(offer["size"], content.len());
    let report = report_where(&mut s.gui, |v| {
        fits(v, &["transfer"]) && v["transfers"][0]["status"] == "waiting"
    });
    let shot = screenshot(&xvfb, &format!("6-waiting-{lang}.png"));
    assert_drawn(&shot, &report, origin, &["transfer"], "waiting transfer");

    s.op.send(serde_json::json!({"cmd": "accept_file", "id": offer["id"], "dir": inbox.path()}));
    let saved = s.op.expect("file_saved");
    assert_eq!(std::fs::read(saved["path"].as_str().unwrap()).unwrap(), content);
    s.gui.expect("file_sent");
    let report = report_where(&mut s.gui, |v| {
        v["transfers"][0]["status"] == "sent" && fits(v, &["transfer"])
    });
    assert_eq!(report["transfers"][0]["bytes"], content.len());
    let shot = screenshot(&xvfb, &format!("7-sent-{lang}.png"));
    assert_drawn(&shot, &report, origin, &["transfer"], "sent transfer");

    // An offer the other way while the sent row shows: the panel fits above it, in this
    // language too; Reject answers it.
    let back = inbox.path().join("reply.txt");
    std::fs::write(&back, b"thanks").unwrap();
    s.op.send(serde_json::json!({"cmd": "send_file", "path": back}));
    let panel = [
        "offer_panel",
        "offer_folder",
        "offer_choose",
        "offer_save",
        "offer_reject",
        "transfer",
    ];
    let report = report_where(&mut s.gui, |v| v["offer"]["name"] == "reply.txt" && fits(v, &panel));
    let shot = screenshot(&xvfb, &format!("8-offer-panel-{lang}.png"));
    assert_drawn(&shot, &report, origin, &panel, "offer panel");
    click(&xvfb, rect_of(&report, origin, "offer_reject"));
    s.op.expect_where("file_rejected", |e| e["side"] == "send");
}

#[test]
fn a_file_sent_from_the_client_window_reaches_the_operator_in_english() {
    a_file_sent_from_the_client_window_reaches_the_operator("en");
}

#[test]
fn a_file_sent_from_the_client_window_reaches_the_operator_in_japanese() {
    a_file_sent_from_the_client_window_reaches_the_operator("ja");
}

/// The operator window with a headless client that granted everything.
struct OperatorSession {
    _relay: RelayProcess,
    op: App,
    client: App,
    window: String,
    origin: (i64, i64),
    /// The window's report once the session was on.
    report: Value,
}

fn start_operator_window(xvfb: &Xvfb, home: &Path, save_dir: &Path, lang: &str, dialogs: bool) -> OperatorSession {
    let relay = RelayProcess::start("", 1);
    assert!(relay.add_operator("alice", OP_PASSWORD).status.success());
    let save_dir = save_dir.display().to_string();
    let args = [
        "--user",
        "alice",
        "--connect",
        "--events",
        "--lang",
        lang,
        "--save-dir",
        &save_dir,
    ];
    let mut cmd = xvfb.app("tsunagu-operator", &relay, &args);
    cmd.env("TSUNAGU_PASSWORD", OP_PASSWORD)
        .env("HOME", home)
        .env("NO_AT_BRIDGE", "1")
        .env("GTK_USE_PORTAL", "0")
        .env("GIO_USE_VFS", "local")
        .env_remove("DBUS_SESSION_BUS_ADDRESS");
    if !dialogs {
        cmd.env("TSUNAGU_NO_FILE_DIALOG", "1");
    }
    let mut op = App::spawn("operator window", cmd);
    let code = op.code();
    let mut client = App::client(&relay.spec(), &relay.ca(), None, &code, &["--size", "640x360"]);
    client.expect("consent_request");
    client.send(serde_json::json!({"cmd": "consent", "grant": ["view", "control", "files", "chat"]}));
    client.expect("connected");
    op.expect("consent");
    // Reports come only when something changes: this one may be the last for a while.
    let report = report_where(&mut op, |v| {
        v["screen"] == "session" && shows(v, &["send_file", "save_dir"])
    });
    let window = app_window(xvfb, "tsunagu-operator");
    let origin = window_origin(xvfb, &window);
    OperatorSession {
        _relay: relay,
        op,
        client,
        window,
        origin,
        report,
    }
}

/// Replaces the text of the field at `rect` in window `id` with `text` (focus the window as
/// a window manager would, click, select all, type).
fn retype(xvfb: &Xvfb, id: &str, rect: (i64, i64, i64, i64), text: &str) {
    xvfb.xdotool(&["windowfocus", "--sync", id]);
    click(xvfb, rect);
    std::thread::sleep(Duration::from_millis(200));
    xvfb.xdotool(&["key", "--clearmodifiers", "ctrl+a"]);
    xvfb.xdotool(&["type", "--delay", "20", text]);
}

#[test]
fn the_operator_window_receives_into_a_chosen_folder_and_sends_through_the_dialog() {
    let xvfb = Xvfb::start(1600, 1000);
    let home = tempfile::tempdir().unwrap();
    let mut s = start_operator_window(&xvfb, home.path(), &home.path().join("Downloads"), "en", true);
    let origin = s.origin;

    // The client offers a file. A save folder that cannot be made (below a plain file) is
    // explained in the side panel while the session goes on, and the offer stays.
    let from_client = home.path().join("client-side.txt");
    std::fs::write(&from_client, b"settings exported by the client").unwrap();
    s.client
        .send(serde_json::json!({"cmd": "send_file", "path": from_client}));
    let report = report_where(&mut s.op, |v| shows(v, &["offer", "accept", "reject"]));
    let blocker = home.path().join("plain-file");
    std::fs::write(&blocker, b"x").unwrap();
    let bad = blocker.join("inbox").display().to_string();
    retype(&xvfb, &s.window, rect_of(&report, origin, "save_dir"), &bad);
    let report = report_where(&mut s.op, |v| v["save_dir"] == bad.as_str());
    click(&xvfb, rect_of(&report, origin, "accept"));
    let report = report_where(&mut s.op, |v| {
        v["screen"] == "session" && shows(v, &["offer_error", "accept"]) && v["offers"][0]["error"].is_string()
    });
    let shot = screenshot(&xvfb, "8-operator-folder-error-en.png");
    assert_drawn(
        &shot,
        &report,
        origin,
        &["offer_error", "accept", "reject"],
        "operator folder error",
    );

    // Choose… opens the folder chooser; a folder that does not exist yet is typed there,
    // and Accept makes it. The saved path shows; the client hears the file arrived.
    click(&xvfb, rect_of(&report, origin, "choose_folder"));
    let target = home.path().join("Cases").join("4711");
    std::fs::create_dir_all(home.path().join("Cases")).unwrap();
    choose_in_gtk_dialog(
        &xvfb,
        ("tsunagu-operator", &s.window),
        "Choose where to save",
        &target,
        "9-operator-folder-chooser-en.png",
    );
    let report = report_where(&mut s.op, |v| v["save_dir"] == target.display().to_string().as_str());
    click(&xvfb, rect_of(&report, origin, "accept"));
    let saved = s.op.expect("file_saved");
    assert_eq!(
        PathBuf::from(saved["path"].as_str().unwrap()),
        target.join("client-side.txt")
    );
    s.client.expect("file_sent");
    let report = report_where(&mut s.op, |v| {
        shows(v, &["saved_path"]) && v["transfers"][0]["status"] == "saved"
    });
    let shot = screenshot(&xvfb, "10-operator-saved-en.png");
    assert_drawn(
        &shot,
        &report,
        origin,
        &["saved_path", "transfer"],
        "operator saved path",
    );

    // Send file… opens the open-file dialog; the client rejects the file and the window
    // says so.
    let to_client = home.path().join("driver-setup.txt");
    std::fs::write(&to_client, b"run setup.exe").unwrap();
    click(&xvfb, rect_of(&report, origin, "send_file"));
    choose_in_gtk_dialog(
        &xvfb,
        ("tsunagu-operator", &s.window),
        "Choose a file to send to the client",
        &to_client,
        "11-operator-open-dialog-en.png",
    );
    let offer = s.client.expect("file_offer");
    assert_eq!(offer["name"], "driver-setup.txt");
    s.client
        .send(serde_json::json!({"cmd": "reject_file", "id": offer["id"]}));
    let report = report_where(&mut s.op, |v| {
        v["transfers"]
            .as_array()
            .is_some_and(|t| t.iter().any(|r| r["sending"] == true && r["status"] == "declined"))
    });
    let shot = screenshot(&xvfb, "12-operator-rejected-en.png");
    assert_drawn(&shot, &report, origin, &["transfer_status"], "rejected status");
}

/// Without a file chooser the window says so and takes a typed path; a file that does not
/// exist is reported in the side panel while the session goes on, in Japanese.
#[test]
fn the_operator_window_reports_a_missing_file_during_the_session() {
    let xvfb = Xvfb::start(1600, 1000);
    let home = tempfile::tempdir().unwrap();
    let mut s = start_operator_window(&xvfb, home.path(), home.path(), "ja", false);
    let origin = s.origin;
    click(&xvfb, rect_of(&s.report, origin, "send_file"));
    let report = report_where(&mut s.op, |v| shows(v, &["dialog_note", "send_path", "send_path_go"]));
    let missing = home.path().join("gone.txt").display().to_string();
    retype(&xvfb, &s.window, rect_of(&report, origin, "send_path"), &missing);
    // The field and the button stay where they are while the path is typed.
    std::thread::sleep(Duration::from_millis(300));
    let go = rect_of(&report, origin, "send_path_go");
    let err = click_until(&xvfb, go, &mut s.op, "error", |_| true);
    assert_eq!(err["code"], "file_error");
    let report = report_where(&mut s.op, |v| v["screen"] == "session" && shows(v, &["problem"]));
    let problem = report["problems"][0].as_str().unwrap();
    assert!(problem.starts_with("ファイルを扱えません"), "{problem}");
    assert!(problem.contains("gone.txt"), "{problem}");
    let shot = screenshot(&xvfb, "13-operator-missing-file-ja.png");
    assert_drawn(&shot, &report, origin, &["problem"], "problem line");
    // The session is still on: the client can chat.
    s.client.send(serde_json::json!({"cmd": "chat", "text": "still here"}));
    s.op.expect_where("chat", |e| e["text"] == "still here");
}
