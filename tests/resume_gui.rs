//! What the operator window shows when connections drop, under Xvfb, in English and
//! Japanese: a banner while the client's connection is away, and one when its own
//! connection dropped and came back. Screenshots are kept in target/test-artifacts/.

mod support;

use std::path::PathBuf;

use serde_json::{json, Value};
use support::proxy::CutProxy;
use support::xvfb::Xvfb;
use support::*;

const OP_PASSWORD: &str = "Help-desk-2026";

fn shot(x: &Xvfb, name: &str) {
    // The window reports a layout as it builds the frame; it is on screen a moment later.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    x.screenshot(&dir.join(format!("{name}.png")));
}

/// The operator window on `x`, logged in as alice and asking for a code at once, with
/// `relays` (`--relay ...` and any standby options), in `lang`, reporting its layout.
fn operator_window(x: &Xvfb, relays: &[&str], ca: &std::path::Path, lang: &str) -> App {
    let mut cmd = x.command(bin("tsunagu-operator"));
    cmd.args(relays)
        .args(["--user", "alice", "--connect", "--events", "--lang", lang])
        .arg("--ca")
        .arg(ca)
        .env("TSUNAGU_PASSWORD", OP_PASSWORD);
    App::spawn("operator window", cmd)
}

fn banner_shown(report: &Value) -> bool {
    report["widgets"]["connection_banner"].is_array()
}

fn the_operator_window_tells_of_dropped_connections(lang: &str) {
    let x = Xvfb::start(1600, 1000);
    let relay = RelayProcess::start("", 1);
    assert!(relay.add_operator("alice", OP_PASSWORD).status.success());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let proxy = rt.block_on(CutProxy::start(relay.spec().parse().unwrap()));
    let spec = proxy.addr.to_string();

    let mut op = operator_window(&x, &["--relay", &spec], &relay.ca(), lang);
    let code = op.code();
    let mut client = App::client(&spec, &relay.ca(), None, &code, &["--size", "1280x720", "--fps", "10"]);
    client.expect("consent_request");
    client.send(json!({"cmd": "consent", "grant": ["view", "control", "chat"]}));
    client.expect("connected");
    let picture = |v: &Value| v["screen"] == "session" && v["picture"] == json!([1280, 720]);
    op.expect_where("gui", |v| picture(v) && !banner_shown(v));

    // The operator's own connection drops and comes back: the picture too.
    proxy.cut();
    op.expect("reconnected");
    op.expect("frame");
    // The window reports its layout when it changes: the banner that came with the drop
    // stays, with "restored" in it, until it goes a few seconds later.
    let last = op.seen.iter().rev().find(|v| v["event"] == "gui").cloned().unwrap();
    assert!(banner_shown(&last), "{last}");
    shot(&x, &format!("operator-connection-restored-{lang}"));
    // "Restored" goes after a few seconds.
    op.expect_where("gui", |v| picture(v) && !banner_shown(v));

    // The client's app goes away: the operator is told it is away.
    let _ = client.child.kill();
    op.expect("peer_away");
    op.expect_where("gui", |v| v["screen"] == "session" && banner_shown(v));
    shot(&x, &format!("operator-peer-away-{lang}"));
    drop(proxy);
}

#[test]
fn the_operator_window_tells_of_dropped_connections_in_english() {
    the_operator_window_tells_of_dropped_connections("en");
}

#[test]
fn the_operator_window_tells_of_dropped_connections_in_japanese() {
    the_operator_window_tells_of_dropped_connections("ja");
}

/// The operator window on the standby relay: the primary's port is closed, so the window
/// connects to the standby, and the banner says so once the health checks have moved it.
fn the_operator_window_shows_the_standby_relay(lang: &str) {
    let x = Xvfb::start(1280, 800);
    let standby = RelayProcess::start("", 1);
    assert!(standby.add_operator("alice", OP_PASSWORD).status.success());
    // A port nothing listens on: the primary is down.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let relays = [
        "--relay",
        &closed.to_string(),
        "--standby-relay",
        &standby.spec(),
        "--health-every",
        "0.2",
    ];
    let mut op = operator_window(&x, &relays, &standby.ca(), lang);
    op.code();
    op.seen_or_expect("relay_switched", |e| e["site"] == "secondary");
    op.seen_or_expect("gui", |v| v["screen"] == "waiting" && banner_shown(v));
    shot(&x, &format!("operator-standby-{lang}"));
}

#[test]
fn the_operator_window_shows_the_standby_relay_in_english() {
    the_operator_window_shows_the_standby_relay("en");
}

#[test]
fn the_operator_window_shows_the_standby_relay_in_japanese() {
    the_operator_window_shows_the_standby_relay("ja");
}
